//! Human approvals: a run waits, parked in the store, for a person's decision.
//!
//! story step `approval` → the story engine (`story/engine/approve.rs`) renders the question,
//! records a pending [`Approval`] with the hashes of its links, and parks the
//! run (`waiting`: rows only — no worker, no instance, no memory) → a
//! decision arrives (a link's POST, `POST /api/approvals/{run}/{step}`,
//! `warden approvals decide`, or the scheduler's timeout) and is taken once,
//! atomically, by the store's `decide`, which audits it → the
//! server's sweep wakes the run (the store's `wake`) and it
//! resumes after the approval step with `{choice, decided_by, decided_at,
//! comment}`.
//!
//! Links: a token is HMAC-SHA256 under warden's link key of the run, step,
//! choice and recipient. The key is derived from an operator secret (given
//! by env or file, the same on every node) and a salt the run store keeps
//! ([`link_key`]): the store alone cannot mint a link, and every node and
//! every restart derives the same links. A step that runs *before* the approval
//! (an email carrying the links) therefore renders the very links the
//! approval will accept; only SHA-256 of each token is stored, and a token is
//! good for one decision (the approval is decided once).
//!
//! A template never sees a token: `approval.<step>.links…` hold a
//! [`placeholder`] sealed to the run tree, which the step's guest, the run
//! record, the audit and recordings keep. The host puts the token in its
//! place only at egress — in an HTTP request or a mail of a step whose
//! rendered input held that placeholder ([`handed_in`]) — and scrubs the
//! token from the answer. So the token reaches the approver's inbox (or
//! Slack) and nothing the team can read, and a guest cannot mint or leak one.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::time::Duration;

/// Choices when a story names none.
pub const DEFAULT_CHOICES: [&str; 2] = ["approve", "reject"];
/// Longest comment kept with a decision (characters).
pub const MAX_COMMENT: usize = 2000;
/// Most choices and approvers a step may name (each is a link).
pub const MAX_CHOICES: usize = 16;
pub const MAX_APPROVERS: usize = 64;
/// Longest timeout a story may give: 90 days.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(90 * 24 * 3600);
/// Longest rendered title and details kept with an approval (bytes).
pub const MAX_TITLE: usize = 500;
pub const MAX_DETAILS: usize = 64 * 1024;

/// An `approval` step as a story wrote it (templates not yet rendered).
#[derive(Debug, Clone, PartialEq)]
pub struct ApprovalSpec {
    /// Template.
    pub title: String,
    /// Template(s), shown to the approver.
    pub details: Value,
    pub choices: Vec<String>,
    /// Choices marked dangerous (`style: danger`): shown as such.
    pub danger: Vec<String>,
    /// Choices that take effect only once confirmed (`confirm: true`): the
    /// console asks again, the API needs `confirm: true`, a link's page is
    /// itself the confirmation, a Slack button cannot give one.
    pub confirm: Vec<String>,
    /// Who may decide: addresses (each gets links of their own) and
    /// `team:NAME` (that team's API token). Empty: anyone holding a link or
    /// the story team's token.
    pub approvers: Approvers,
    pub timeout: Duration,
    pub on_timeout: OnTimeout,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Approvers {
    List(Vec<String>),
    /// One `{{ expression }}` over `input` and `run`, giving a list or one address.
    Template(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum OnTimeout {
    /// The run goes on as if this choice was made (decided_by `timeout`).
    Choice(String),
    /// The step fails (kind `timeout`); its `on_error` applies.
    Fail,
}

/// A duration as stories write it: `90s`, `30m`, `4h`, `2d` (or a sum, `1h30m`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("`{text}` is not a duration; write it like 90s, 30m, 4h or 2d");
    let (mut total, mut digits) = (0u64, String::new());
    if text.trim().is_empty() {
        return Err(bad());
    }
    for c in text.trim().chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(bad()),
        };
        let n: u64 = digits.parse().map_err(|_| bad())?;
        total = total.saturating_add(n.saturating_mul(unit));
        digits.clear();
    }
    if !digits.is_empty() {
        return Err(bad());
    }
    Ok(Duration::from_secs(total))
}

impl ApprovalSpec {
    /// Checks what can be checked before any run: choices, approvers, timeout.
    pub fn validate(&self) -> Result<(), String> {
        if self.choices.is_empty() || self.choices.len() > MAX_CHOICES {
            return Err(format!("choices must name 1..{MAX_CHOICES} choices"));
        }
        for (i, c) in self.choices.iter().enumerate() {
            if c.is_empty() || c.len() > 40 || !c.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                return Err(format!("choice `{c}` must be 1..40 letters, digits, - or _ (it is a link's name)"));
            }
            if self.choices[..i].contains(c) {
                return Err(format!("choice `{c}` is listed twice"));
            }
        }
        for c in self.danger.iter().chain(&self.confirm) {
            if !self.choices.contains(c) {
                return Err(format!("`{c}` is marked but is not one of the choices ({})", self.choices.join(", ")));
            }
        }
        if let OnTimeout::Choice(c) = &self.on_timeout {
            if !self.choices.contains(c) {
                return Err(format!("on_timeout `{c}` is neither one of the choices ({}) nor fail", self.choices.join(", ")));
            }
        }
        if self.timeout.is_zero() || self.timeout > MAX_TIMEOUT {
            return Err("timeout must be between 1s and 90d".into());
        }
        if let Approvers::List(list) = &self.approvers {
            check_approvers(list)?;
        }
        Ok(())
    }
}

fn check_approvers(list: &[String]) -> Result<(), String> {
    if list.len() > MAX_APPROVERS {
        return Err(format!("at most {MAX_APPROVERS} approvers"));
    }
    for a in list {
        let ok = if let Some(team) = a.strip_prefix("team:") {
            !team.is_empty() && team.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        } else if let Some(user) = a.strip_prefix("slack:") {
            // A Slack user id (U…/W…), as a signed interaction names the presser.
            (1..=32).contains(&user.len()) && user.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        } else {
            a.len() <= 254 && a.contains('@') && !a.chars().any(|c| c.is_whitespace() || c.is_control())
        };
        if !ok {
            return Err(format!("approver `{}` is neither an address (name@domain), team:NAME nor slack:USERID", crate::invocation::guest_text(a, 80)));
        }
    }
    Ok(())
}

/// The approvers a run's approval step names, once rendered (see the
/// engine's `approve.rs`): a list of addresses, checked.
pub fn approvers_of(rendered: Value) -> Result<Vec<String>, String> {
    let list: Vec<String> = match rendered {
        Value::String(s) => vec![s],
        Value::Array(a) => {
            a.into_iter().map(|v| v.as_str().map(String::from).ok_or_else(|| format!("approvers must be addresses, got {v}"))).collect::<Result<_, _>>()?
        }
        Value::Null => Vec::new(),
        other => return Err(format!("approvers must give a list of addresses, not {other}")),
    };
    check_approvers(&list)?;
    Ok(list)
}

/// Whom a link speaks for: one approver, or whoever holds it (`""`).
pub fn recipients(approvers: &[String]) -> impl Iterator<Item = &str> {
    std::iter::once("").chain(approvers.iter().map(String::as_str).filter(|a| !a.starts_with("team:")))
}

/// The link key (see [`link_key`]).
pub type LinkKey = [u8; 32];

/// Shortest operator secret accepted (bytes).
pub const MIN_SECRET_BYTES: usize = 16;

/// The link key: HMAC-SHA256 under the operator's secret of the store's salt.
/// Console sessions are keyed from it too. Rotating the secret changes the
/// key: links already sent for pending approvals keep working (the store
/// keeps their hashes, not the key), links a run renders afterwards are new,
/// and everyone signed in to the console signs in again.
pub fn link_key(secret: &crate::policy::credentials::Secret, salt: &[u8; 32]) -> LinkKey {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes()).expect("HMAC takes any key length");
    mac.update(b"warden-link-key/1");
    mac.update(salt);
    mac.finalize().into_bytes().into()
}

/// The environment variable read for the operator secret when the policy
/// names no `[server] link_secret_env` / `link_secret_file`.
pub const SECRET_ENV: &str = "WARDEN_LINK_SECRET";

/// The operator secret: the policy's source, else `WARDEN_LINK_SECRET`, else
/// the store's own (a file beside a SQLite store). A shared store without
/// one is refused, with the fix.
/// `local` gives the store's own secret, if it keeps one.
pub fn operator_secret(
    config: &crate::policy::triggers::ServerConfig,
    local: impl FnOnce() -> anyhow::Result<Option<crate::policy::credentials::Secret>>,
) -> Result<crate::policy::credentials::Secret, String> {
    let secret = match &config.link_secret {
        Some(source) => source.read().map_err(|e| format!("[server] link secret: {e}"))?,
        None => match std::env::var(SECRET_ENV) {
            Ok(v) if !v.is_empty() => crate::policy::credentials::Secret::new(v),
            _ => local().map_err(|e| format!("the link secret: {e:#}"))?.ok_or_else(|| {
                format!("approval links and console sessions need an operator secret on a shared run store: set {SECRET_ENV} (the same value on every node) or [server] link_secret_env / link_secret_file")
            })?,
        },
    };
    if secret.expose().len() < MIN_SECRET_BYTES {
        return Err(format!("the link secret is {} bytes; give at least {MIN_SECRET_BYTES} (e.g. `openssl rand -hex 32`)", secret.expose().len()));
    }
    Ok(secret)
}

/// The secret kept beside a SQLite store at `<db>.link-secret` (created
/// `0600` with 32 random bytes on first use): not inside the store, so a copy
/// of the database alone cannot mint links.
pub fn secret_beside(db: &std::path::Path) -> anyhow::Result<crate::policy::credentials::Secret> {
    use anyhow::Context as _;
    let mut name = db.as_os_str().to_owned();
    name.push(".link-secret");
    let path = std::path::PathBuf::from(name);
    let mut fresh = [0u8; 32];
    getrandom::fill(&mut fresh).map_err(|e| anyhow::anyhow!("no randomness for the link secret: {e}"))?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(&path) {
        Ok(mut f) => {
            use std::io::Write as _;
            f.write_all(hex::encode(fresh).as_bytes()).with_context(|| format!("cannot write the link secret {}", path.display()))?;
            tracing::info!(path = %path.display(), "made the approval link secret (keep it with the store; set {SECRET_ENV} to use another)");
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("cannot create the link secret {}", path.display())),
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt as _;
        let meta = std::fs::symlink_metadata(&path).with_context(|| format!("cannot read {}", path.display()))?;
        if meta.file_type().is_symlink() || meta.mode() & 0o077 != 0 {
            anyhow::bail!("the link secret {} must be a plain file only its owner can read (chmod 600 it)", path.display());
        }
    }
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read the link secret {}", path.display()))?;
    Ok(crate::policy::credentials::Secret::new(text.trim().to_string()))
}

/// A secret for this process alone (an in-memory store's).
pub fn process_secret() -> crate::policy::credentials::Secret {
    static S: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let s = S.get_or_init(|| {
        let mut b = [0u8; 32];
        getrandom::fill(&mut b).expect("the OS gives random bytes");
        hex::encode(b)
    });
    crate::policy::credentials::Secret::new(s.clone())
}

/// A link's token: unguessable without the key, the same every time it is derived.
/// Every token minted is remembered for [`withhold_tokens`].
pub fn token(key: &LinkKey, run: &str, step: &str, choice: &str, recipient: &str) -> String {
    use base64::Engine as _;
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    for part in ["warden-approval-link/1", run, step, choice, recipient] {
        mac.update(&(part.len() as u64).to_be_bytes());
        mac.update(part.as_bytes());
    }
    let t = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    remember_live([t.as_str()]);
    t
}

/// What the store keeps of a token.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Whether `text` has the shape of a token (checked before any lookup).
pub fn looks_like_token(text: &str) -> bool {
    text.len() == 43 && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// What the run record shows in place of an approval link's token.
pub const WITHHELD: &str = "(token-withheld)";

/// `text` with the token of every approval link in it withheld. A link decides
/// as the person it was made for, so it is for that person's inbox only: the
/// run record (its step inputs, outputs and errors, the run's error, logs,
/// audit, recordings, an approval's title and details), which the API and
/// the console show to the whole team, keeps the link's shape and drops its
/// token.
///
/// Two nets, so that no spelling of a link lets its token through:
///
/// 1. **Every token this process minted** ([`remember_live`]) is withheld
///    wherever it appears, whatever surrounds it. A token is 43 characters of
///    base64url, which no escaping changes: JSON (`\/approvals\/…`), URL
///    encoding once or twice, HTML entities and `\u002F` all leave it as it
///    is. The text is scanned for token-shaped words, each looked up.
/// 2. **Any token-shaped word after `approvals` and a path separator** in any
///    of those spellings, for tokens minted before this process started.
pub fn withhold_tokens(text: String) -> String {
    let bytes = text.as_bytes();
    let is_token_byte = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
    let live = LIVE.read().unwrap_or_else(|p| p.into_inner());
    let mut out: Option<String> = None;
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        if !is_token_byte(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && is_token_byte(bytes[i]) {
            i += 1;
        }
        // A word of token bytes. A token ends it (token bytes after it would
        // make it another word), and may be all of it or its end: `2F<token>`,
        // where a URL-encoded slash runs into it.
        // A placeholder of a link ([`placeholder`]) is no token: kept as it is.
        let sealed = |w: &str| w.len() >= PLACEHOLDER_LEN && w[w.len() - PLACEHOLDER_LEN..].starts_with(PLACEHOLDER_PREFIX);
        if i - start >= 43 && !sealed(&text[start..i]) {
            let token_start = i - 43;
            if live.set.contains(&text[token_start..i]) || after_approvals(bytes, token_start) {
                let o = out.get_or_insert_with(|| String::with_capacity(text.len()));
                o.push_str(&text[copied..token_start]);
                o.push_str(WITHHELD);
                copied = i;
            }
        }
    }
    drop(live);
    match out {
        None => text,
        Some(mut o) => {
            o.push_str(&text[copied..]);
            o
        }
    }
}

/// Whether the bytes before `at` end with `approvals` and a path separator in
/// one of its spellings: `/`, `\/`, `%2F`, `%252F`, `\u002F`, `&#x2F;`, `&#47;`
/// (any case), repeated.
fn after_approvals(bytes: &[u8], at: usize) -> bool {
    // Longest first: `\/` must not be taken for `/` with a stray `\` before it.
    const SEPARATORS: [&[u8]; 7] = [b"\\u002f", b"&#x2f;", b"%252f", b"&#47;", b"%2f", b"\\/", b"/"];
    let mut end = at;
    let mut seen = false;
    'strip: loop {
        for sep in SEPARATORS {
            if end >= sep.len() && bytes[end - sep.len()..end].eq_ignore_ascii_case(sep) {
                end -= sep.len();
                seen = true;
                continue 'strip;
            }
        }
        break;
    }
    seen && end >= 9 && bytes[end - 9..end].eq_ignore_ascii_case(b"approvals")
}

/// The tokens minted in this process, withheld wherever they appear.
struct Live {
    set: std::collections::HashSet<String>,
    order: std::collections::VecDeque<String>,
}

static LIVE: std::sync::LazyLock<std::sync::RwLock<Live>> =
    std::sync::LazyLock::new(|| std::sync::RwLock::new(Live { set: Default::default(), order: Default::default() }));

/// Most tokens remembered (oldest forgotten first; ~10 MiB). Older ones are
/// still caught by their shape after `approvals`.
const LIVE_MAX: usize = 100_000;

/// Remembers tokens just minted so that [`withhold_tokens`] withholds them
/// in any spelling.
pub fn remember_live<'a>(tokens: impl IntoIterator<Item = &'a str>) {
    let mut live = LIVE.write().unwrap_or_else(|p| p.into_inner());
    for t in tokens {
        if live.set.insert(t.to_string()) {
            live.order.push_back(t.to_string());
        }
    }
    while live.order.len() > LIVE_MAX {
        if let Some(old) = live.order.pop_front() {
            live.set.remove(&old);
        }
    }
}

/// A link of an approval: its token after `/approvals/` (as the approver
/// opens it), or its placeholder (as a template sees it).
pub fn link_url(base: &str, token: &str) -> String {
    format!("{}/approvals/{token}", base.trim_end_matches('/'))
}

/// How a placeholder of a link's token begins.
pub const PLACEHOLDER_PREFIX: &str = "wardenlink";

/// A placeholder's length: the prefix, then 44 bytes in hex.
pub const PLACEHOLDER_LEN: usize = PLACEHOLDER_PREFIX.len() + 88;

/// Most placeholders one step's input hands to its egress (a choice for each
/// of 64 approvers of 16 choices is 1,024; past this many the rest go out as
/// they are).
pub const MAX_HANDED: usize = 4096;

/// What a template sees in place of a link's token: the token sealed to the
/// run tree `root`, so that the guest of a step never holds a link that
/// decides. The host puts the token back only at egress (an HTTP request
/// or a mail the step sends; see [`handed_in`]) and scrubs it from the
/// answer, as it does a `placeholder` credential.
///
/// `wardenlink<nonce><sealed>` in lower-case hex: `nonce` is 12 bytes of
/// HMAC(link key, token), `sealed` the token's 32 bytes XORed with
/// HMAC(link key, root, nonce). Without the key it says nothing of the
/// token; it opens only with the key and the same root, and only to the
/// token it was made from (the nonce is checked after opening), so neither
/// a webhook sender nor a guest can forge one, and one seen in another
/// run's record does not open in theirs. Letters and digits only: no
/// escaping a guest may apply (JSON, URL or form encoding of every byte,
/// HTML) changes it.
pub fn placeholder(key: &LinkKey, root: &str, token: &str) -> String {
    use base64::Engine as _;
    let Ok(bytes) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token) else { return token.to_string() };
    let nonce = &mac(key, &[b"warden-link-nonce/1", token.as_bytes()])[..12];
    let mask = mac(key, &[b"warden-link-mask/1", root.as_bytes(), nonce]);
    let sealed: Vec<u8> = bytes.iter().zip(mask.iter()).map(|(b, m)| b ^ m).collect();
    format!("{PLACEHOLDER_PREFIX}{}{}", hex::encode(nonce), hex::encode(sealed))
}

/// The token a placeholder ([`placeholder`]) was made from, if it was made
/// with `key` for `root`.
pub fn open_placeholder(key: &LinkKey, root: &str, placeholder: &str) -> Option<String> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let body = placeholder.strip_prefix(PLACEHOLDER_PREFIX)?;
    if placeholder.len() != PLACEHOLDER_LEN || !body.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return None;
    }
    let (nonce, sealed) = (hex::decode(&body[..24]).ok()?, hex::decode(&body[24..]).ok()?);
    let mask = mac(key, &[b"warden-link-mask/1", root.as_bytes(), &nonce]);
    let bytes: Vec<u8> = sealed.iter().zip(mask.iter()).map(|(b, m)| b ^ m).collect();
    let token = b64.encode(bytes);
    let expected = &mac(key, &[b"warden-link-nonce/1", token.as_bytes()])[..12];
    // Constant time: the nonce is what authenticates the opening.
    let same = expected.iter().zip(nonce.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
    same.then(|| {
        remember_live([token.as_str()]);
        token
    })
}

/// Every placeholder of a link in `text` (a step's rendered input) that
/// opens for `root`, with its token: what the step's HTTP requests and mails
/// may carry in their place. Placeholders that do not open are left alone.
pub fn handed_in(key: &LinkKey, root: &str, text: &str) -> Vec<(String, String)> {
    let mut found = std::collections::BTreeMap::new();
    let mut looked = 0;
    for at in memchr::memmem::find_iter(text.as_bytes(), PLACEHOLDER_PREFIX.as_bytes()) {
        if looked >= MAX_HANDED {
            break;
        }
        let Some(candidate) = text.get(at..at + PLACEHOLDER_LEN) else { continue };
        if found.contains_key(candidate) {
            continue;
        }
        looked += 1;
        if let Some(token) = open_placeholder(key, root, candidate) {
            found.insert(candidate.to_string(), token);
        }
    }
    found.into_iter().collect()
}

fn mac(key: &LinkKey, parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    for part in parts {
        mac.update(&(part.len() as u64).to_be_bytes());
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// `{links: {choice: url}, links_for: {address: {choice: url}}}` for one
/// approval step of a run in the run tree `root`, each link's token as its
/// [`placeholder`].
pub fn links_value(key: &LinkKey, base: &str, root: &str, run: &str, step: &str, choices: &[String], approvers: &[String]) -> Value {
    let per = |recipient: &str| -> Value {
        choices
            .iter()
            .map(|c| (c.clone(), Value::String(link_url(base, &placeholder(key, root, &token(key, run, step, c, recipient))))))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    let links_for: serde_json::Map<String, Value> = recipients(approvers).filter(|r| !r.is_empty()).map(|r| (r.to_string(), per(r))).collect();
    json!({"links": per(""), "links_for": links_for})
}

/// One link's row: its hash, and what it decides for whom.
#[derive(Debug, Clone, PartialEq)]
pub struct Link {
    pub hash: String,
    pub choice: String,
    /// `""`: whoever holds it.
    pub recipient: String,
}

/// Every link of an approval (a choice × each recipient), hashed.
pub fn links(key: &LinkKey, run: &str, step: &str, choices: &[String], approvers: &[String]) -> Vec<Link> {
    let mut out = Vec::new();
    for r in recipients(approvers) {
        for c in choices {
            out.push(Link { hash: token_hash(&token(key, run, step, c, r)), choice: c.clone(), recipient: r.to_string() });
        }
    }
    out
}

/// An approval as the store keeps it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Approval {
    pub run: String,
    /// The top-level run (the one that is woken): `run` itself unless the
    /// approval is in a sub-story.
    pub root_run: String,
    pub step: String,
    pub story: String,
    pub team: String,
    pub title: String,
    pub details: Value,
    pub choices: Vec<String>,
    /// Choices marked dangerous.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub danger: Vec<String>,
    /// Choices that need a confirmation (see [`ApprovalSpec::confirm`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub confirm: Vec<String>,
    pub approvers: Vec<String>,
    pub created_ms: u64,
    pub deadline_ms: u64,
    /// The choice a timeout makes; `None`: a timeout fails the step.
    pub on_timeout: Option<String>,
    /// `pending`, `decided` or `expired`.
    pub state: String,
    #[serde(flatten)]
    pub decision: Option<Decision>,
}

/// A decision, as audited: who, when, from where, which choice.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Decision {
    /// `None`: the approval expired with `on_timeout: fail`.
    pub choice: Option<String>,
    pub decided_by: String,
    /// `link`, `api`, `cli` or `timeout`.
    pub via: String,
    /// The address the decision came from (links and the API).
    pub from: Option<String>,
    pub comment: Option<String>,
    pub decided_ms: u64,
}

impl Approval {
    /// The approval step's output once decided (`None` while pending or expired).
    pub fn output(&self) -> Option<Value> {
        let d = self.decision.as_ref()?;
        let choice = d.choice.as_ref()?;
        Some(json!({
            "choice": choice,
            "decided_by": d.decided_by,
            "decided_at": rfc3339(d.decided_ms),
            "comment": d.comment,
        }))
    }

    /// What happened to it, in one line (for a 410 and the CLI).
    pub fn what_happened(&self) -> String {
        match (&self.state[..], &self.decision) {
            ("pending", _) => format!("waiting for a decision until {}", rfc3339(self.deadline_ms)),
            (_, Some(d)) if d.via == "timeout" => match &d.choice {
                Some(c) => format!("no decision came before {}; the timeout chose `{c}`", rfc3339(d.decided_ms)),
                None => format!("no decision came before {}; the step failed", rfc3339(d.decided_ms)),
            },
            (_, Some(d)) => format!("decided `{}` by {} at {}", d.choice.as_deref().unwrap_or("?"), d.decided_by, rfc3339(d.decided_ms)),
            (state, None) => state.to_string(),
        }
    }

    /// Whether `approver` (an address, or `team:NAME`) may decide.
    pub fn allows(&self, approver: &str) -> bool {
        self.approvers.is_empty() || self.approvers.iter().any(|a| a.eq_ignore_ascii_case(approver))
    }
}

pub fn rfc3339(ms: u64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms as i64).map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)).unwrap_or_default()
}

/// Why a decision was not taken.
// `Over` carries the approval so the page can say what happened; a refusal
// is rare and answered once, so its size costs nothing worth boxing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Refused {
    /// No such approval (or link).
    Unknown(String),
    /// Already decided or expired: what happened.
    Over(Approval),
    /// Not one of the approvers.
    NotAnApprover(String),
    /// Not one of the choices.
    BadChoice(String),
    /// A choice that must be confirmed, not confirmed.
    Unconfirmed(String),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Unknown(m) | Refused::NotAnApprover(m) | Refused::BadChoice(m) | Refused::Unconfirmed(m) => f.write_str(m),
            Refused::Over(a) => write!(f, "approval {} of run {} is over: {}", a.step, a.run, a.what_happened()),
        }
    }
}

/// A decision taken by the store's atomic update, or why none was.
pub type Decided = Result<Approval, Refused>;

impl Approval {
    /// Whether a decision for `choice` by `approver` may be taken now: the
    /// approval is pending, the choice one of its own, the approver allowed.
    /// `approver`: an address or `team:NAME`, or `None` for the operator
    /// (admin token, CLI), who may always decide. (The once-only is the
    /// store's: see `store::decide`.) `confirmed`: whether the decider
    /// confirmed it, which a choice in [`Approval::confirm`] needs.
    pub fn check_decision(&self, choice: &str, approver: Option<&str>, confirmed: bool) -> Result<(), Refused> {
        if self.state != "pending" {
            return Err(Refused::Over(self.clone()));
        }
        if !self.choices.iter().any(|c| c == choice) {
            return Err(Refused::BadChoice(format!(
                "`{}` is not a choice of this approval; choose one of {}",
                crate::invocation::guest_text(choice, 40),
                self.choices.join(", ")
            )));
        }
        if !confirmed && self.confirm.iter().any(|c| c == choice) {
            return Err(Refused::Unconfirmed(format!("`{choice}` is marked to be confirmed: confirm it (the console asks; the API takes \"confirm\": true)")));
        }
        match approver {
            Some(who) if !self.allows(who) => {
                Err(Refused::NotAnApprover(format!("{who} may not decide this approval: it is restricted to {}", self.approvers.join(", "))))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_run_record_keeps_an_approval_links_shape_but_not_its_token() {
        let key = [7u8; 32];
        let t = token(&key, "r1", "confirm", "isolate", "lead@corp.example");
        let link = link_url("https://warden.corp.example/", &t);
        let said = withhold_tokens(format!("{{\"text\":\"Isolate: {link}\\nIgnore: {link}\"}}"));
        assert!(!said.contains(&t), "{said}");
        assert_eq!(said.matches("https://warden.corp.example/approvals/(token-withheld)").count(), 2, "{said}");
        // URL-encoded (a chat API's form body), in either case.
        for enc in ["%2Fapprovals%2F", "%2fapprovals%2f"] {
            let said = withhold_tokens(format!("text=go+https%3A%2F%2Fw{enc}{t}&x=1"));
            assert_eq!(said, format!("text=go+https%3A%2F%2Fw{enc}(token-withheld)&x=1"));
        }
        // Not a token: other lengths, other words, and text without links, untouched.
        let other = "A".repeat(43);
        for text in [
            format!("/approvals/{}", &t[..42]),
            format!("/approvals/{t}x"),
            format!("/approval/{other}"),
            format!("id {other}"),
            "approvals everywhere/approvals/".into(),
            "plain".into(),
        ] {
            assert_eq!(withhold_tokens(text.clone()), text);
        }
    }

    /// Every spelling of a link that keeps its token (which no escaping
    /// changes) has the token withheld: minted here or not.
    #[test]
    fn a_token_is_withheld_in_every_spelling_of_its_link() {
        let minted = token(&[9u8; 32], "r9", "confirm", "isolate", "lead@corp.example");
        // One never minted in this process (as after a restart), found by its place after `approvals`.
        let foreign = "Zx9_-".repeat(8) + "abc";
        assert_eq!(foreign.len(), 43);
        let spellings = |t: &str| {
            vec![
                format!("https://w.example/approvals/{t}"),
                format!(r#"{{"text":"https:\/\/w.example\/approvals\/{t}"}}"#),
                format!("https%3A%2F%2Fw.example%2Fapprovals%2F{t}"),
                format!("https%253A%252F%252Fw.example%252Fapprovals%252F{t}"),
                format!(r#"https:\u002F\u002Fw.example\u002Fapprovals\u002F{t}"#),
                format!("https:&#x2F;&#x2F;w.example&#x2F;approvals&#x2F;{t}"),
                format!("https:&#47;&#47;w.example&#47;APPROVALS&#47;{t}"),
                format!("<https://w.example/approvals/{t}|Isolate>"),
            ]
        };
        for t in [minted.as_str(), foreign.as_str()] {
            for text in spellings(t) {
                let said = withhold_tokens(text.clone());
                assert!(!said.contains(t) && said.contains(WITHHELD), "{text} -> {said}");
            }
        }
        // A minted token is withheld even with no link around it at all.
        let bare = withhold_tokens(format!("token={minted}; done"));
        assert_eq!(bare, format!("token={WITHHELD}; done"));
    }

    #[test]
    fn a_placeholder_opens_to_its_token_only_with_the_key_and_the_run_tree_it_was_sealed_to() {
        let key = [7u8; 32];
        let t = token(&key, "r1", "confirm", "isolate", "lead@corp.example");
        let p = placeholder(&key, "root-1", &t);
        assert!(p.starts_with(PLACEHOLDER_PREFIX) && !p.contains(&t), "{p}");
        assert_eq!(open_placeholder(&key, "root-1", &p).as_deref(), Some(t.as_str()));
        // Another run tree, another key: it does not open.
        assert_eq!(open_placeholder(&key, "root-2", &p), None);
        assert_eq!(open_placeholder(&[8u8; 32], "root-1", &p), None);
        // Changed in any character, it does not open (the nonce authenticates it).
        assert_eq!(p.len(), PLACEHOLDER_LEN);
        for i in PLACEHOLDER_PREFIX.len()..p.len() {
            let mut forged = p.clone().into_bytes();
            forged[i] = if forged[i] == b'a' { b'b' } else { b'a' };
            let forged = String::from_utf8(forged).unwrap();
            assert_eq!(open_placeholder(&key, "root-1", &forged), None, "{forged}");
        }
        // The same token sealed twice is the same placeholder (a resumed run renders the same links).
        assert_eq!(placeholder(&key, "root-1", &t), p);
    }

    #[test]
    fn a_placeholder_is_left_as_it_is_by_escaping_and_by_the_record() {
        let key = [7u8; 32];
        let p = placeholder(&key, "root-1", &token(&key, "r1", "ask", "go", ""));
        let link = link_url("https://w.example", &p);
        // The run record keeps it as it is, in any spelling.
        assert_eq!(withhold_tokens(link.clone()), link);
        let encoded = percent_encoding::utf8_percent_encode(&link, percent_encoding::NON_ALPHANUMERIC).to_string();
        assert_eq!(withhold_tokens(encoded.clone()), encoded);
        for spelled in [
            serde_json::to_string(&link).unwrap(),
            link.replace('/', "\\/"),
            url::form_urlencoded::byte_serialize(link.as_bytes()).collect::<String>(),
            percent_encoding::utf8_percent_encode(&link, percent_encoding::NON_ALPHANUMERIC).to_string(),
        ] {
            let handed = handed_in(&key, "root-1", &spelled);
            assert_eq!(handed.len(), 1, "{spelled}");
            assert_eq!(handed[0].0, p);
        }
    }

    #[test]
    fn only_placeholders_sealed_to_the_run_tree_are_handed_to_its_egress() {
        let key = [7u8; 32];
        let mine = token(&key, "r1", "ask", "go", "");
        let theirs = token(&key, "r9", "ask", "go", "");
        let (p_mine, p_theirs) = (placeholder(&key, "root-1", &mine), placeholder(&key, "root-9", &theirs));
        let input = format!(r#"{{"a":"{p_mine}","b":"{p_theirs}","c":"{PLACEHOLDER_PREFIX}{}","d":"{p_mine}"}}"#, "0".repeat(88));
        assert_eq!(handed_in(&key, "root-1", &input), vec![(p_mine.clone(), mine)]);
        // A flood of forged placeholders costs a bounded number of openings.
        let forged: String = (0..MAX_HANDED + 10).map(|i| format!("{PLACEHOLDER_PREFIX}{i:088} ")).collect();
        assert!(handed_in(&key, "root-1", &format!("{forged}{p_mine}")).is_empty(), "past MAX_HANDED the rest go out as they are");
        assert_eq!(handed_in(&key, "root-1", "no links here"), vec![]);
    }

    #[test]
    fn durations_read_like_people_write_them() {
        assert_eq!(parse_duration("4h").unwrap(), Duration::from_secs(4 * 3600));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        for bad in ["", "4", "h", "4x", "-1h", "4 h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tokens_differ_per_run_step_choice_and_recipient_and_key() {
        let key = [7u8; 32];
        let t = token(&key, "r1", "confirm", "isolate", "");
        assert!(looks_like_token(&t), "{t}");
        assert_eq!(t, token(&key, "r1", "confirm", "isolate", ""));
        for other in [
            token(&key, "r2", "confirm", "isolate", ""),
            token(&key, "r1", "confirm2", "isolate", ""),
            token(&key, "r1", "confirm", "ignore", ""),
            token(&key, "r1", "confirm", "isolate", "a@corp.example"),
            token(&[8u8; 32], "r1", "confirm", "isolate", ""),
            // Boundaries between parts are part of what is signed.
            token(&key, "r1c", "onfirm", "isolate", ""),
        ] {
            assert_ne!(t, other);
        }
        assert_eq!(token_hash(&t).len(), 64);
        assert_ne!(token_hash(&t), t);
    }

    #[test]
    fn specs_are_checked_before_any_run() {
        let spec = |choices: &[&str], on: OnTimeout| ApprovalSpec {
            title: "t".into(),
            details: Value::Null,
            choices: choices.iter().map(|c| c.to_string()).collect(),
            danger: vec![],
            confirm: vec![],
            approvers: Approvers::List(vec![]),
            timeout: Duration::from_secs(60),
            on_timeout: on,
        };
        assert!(spec(&["isolate", "ignore"], OnTimeout::Choice("ignore".into())).validate().is_ok());
        assert!(spec(&["isolate"], OnTimeout::Choice("later".into())).validate().unwrap_err().contains("on_timeout `later`"));
        assert!(spec(&["a b"], OnTimeout::Fail).validate().is_err());
        assert!(spec(&["a", "a"], OnTimeout::Fail).validate().unwrap_err().contains("twice"));
        assert!(check_approvers(&["lead@corp.example".into(), "team:soc".into()]).is_ok());
        assert!(check_approvers(&["not an address".into()]).is_err());
    }

    #[test]
    fn a_choice_marked_to_be_confirmed_is_refused_unconfirmed_and_the_others_are_not() {
        let a = Approval {
            run: "r".into(),
            root_run: "r".into(),
            step: "ask".into(),
            story: "s".into(),
            team: "soc".into(),
            title: "t".into(),
            details: Value::Null,
            choices: vec!["isolate".into(), "ignore".into()],
            danger: vec!["isolate".into()],
            confirm: vec!["isolate".into()],
            approvers: vec![],
            created_ms: 0,
            deadline_ms: 1,
            on_timeout: None,
            state: "pending".into(),
            decision: None,
        };
        assert!(matches!(a.check_decision("isolate", None, false), Err(Refused::Unconfirmed(m)) if m.contains("confirm")));
        assert!(a.check_decision("isolate", None, true).is_ok());
        assert!(a.check_decision("ignore", None, false).is_ok());
        // Confirming does not stand in for anything else.
        assert!(matches!(a.check_decision("wipe", None, true), Err(Refused::BadChoice(_))));
    }
}
