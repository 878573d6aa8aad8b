//! Layers 8 and 10: a credential is injected into the request only after every
//! check passed, and every spelling of it is scrubbed from what comes back.
//!
//! What "every spelling" covers ([`Redactor`]): the value itself, and for the
//! value (and, for basic auth, `user:value`) its percent-encodings (minimal or
//! every byte, either hex case), JSON escapes (`\/`, every character as
//! `\u00XX` in either case), hex, and base64 (standard and URL-safe, at each of
//! the three alignments, so bytes before it cannot hide it). After that the
//! response is decoded once more — percent-decoding and JSON unescaping, in
//! both orders — and if a value still shows, the response is refused whole
//! ([`Redactor::leaks`]): mixed-case or partial escapes never reach the guest.

use crate::policy::credentials::{CredentialKind, CredentialSpec, Secret};
use aho_corasick::{AhoCorasick, MatchKind};
use base64::Engine as _;

/// What the host adds to a request, and how it scrubs the answer.
pub struct Injection {
    pub header: Option<(String, String)>,
    pub query: Option<(String, String)>,
    /// `(marker, value)`: the value put where the request holds the marker.
    pub substitute: Option<(String, String)>,
    pub redactor: Redactor,
}

/// Builds the injection of `spec` with `secret`, the value that goes on the
/// wire: the credential's own, or for `oauth2` the access token the host
/// obtained. `also_redact` are the exchange's other secrets (for `oauth2`:
/// the client secret, and any token this one replaced), scrubbed from the
/// answer too.
pub fn injection(spec: &CredentialSpec, secret: &Secret, also_redact: &[&Secret]) -> Injection {
    let value = secret.expose();
    let mut bases = vec![value.as_bytes().to_vec()];
    bases.extend(also_redact.iter().map(|s| s.expose().as_bytes().to_vec()));
    let mut substitute = None;
    let (header, query) = match &spec.kind {
        CredentialKind::Bearer | CredentialKind::OAuth2(_) => (Some(("authorization".to_string(), format!("Bearer {value}"))), None),
        CredentialKind::Header { name, prefix } => (Some((name.clone(), format!("{prefix}{value}"))), None),
        CredentialKind::Basic { user } => {
            let pair = format!("{user}:{value}");
            let encoded = base64::engine::general_purpose::STANDARD.encode(&pair);
            bases.push(pair.into_bytes());
            (Some(("authorization".to_string(), format!("Basic {encoded}"))), None)
        }
        CredentialKind::Query { param } => (None, Some((param.clone(), value.to_string()))),
        CredentialKind::Placeholder { marker } => {
            substitute = Some((marker.clone(), value.to_string()));
            (None, None)
        }
    };
    Injection { header, query, substitute, redactor: Redactor::new(&bases) }
}

/// Puts `value` where `url` and `body` hold `marker`: percent-encoded in the
/// URL (every byte but letters and digits, so the path keeps its segments
/// and the query its parameters), escaped for the body's content type (JSON
/// string, form field) or as it is. Returns how many were replaced.
pub fn substitute(marker: &str, value: &str, url: &mut url::Url, body: &mut Option<Vec<u8>>, content_type: &str) -> usize {
    let mut count = 0;
    let text = url.as_str();
    if text.contains(marker) {
        count += text.matches(marker).count();
        let encoded = percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC).to_string();
        if let Ok(u) = url::Url::parse(&text.replace(marker, &encoded)) {
            *url = u;
        }
    }
    if let Some(b) = body.as_mut() {
        let n = memchr::memmem::find_iter(b, marker.as_bytes()).count();
        if n > 0 {
            count += n;
            let ct = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
            let escaped = if ct == "application/json" || ct.ends_with("+json") {
                serde_json::to_string(value).unwrap_or_default().trim_matches('"').to_string()
            } else if ct == "application/x-www-form-urlencoded" {
                url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
            } else {
                value.to_string()
            };
            let finder = memchr::memmem::Finder::new(marker.as_bytes());
            let mut out = Vec::with_capacity(b.len() + n * escaped.len());
            let mut last = 0;
            for at in finder.find_iter(b) {
                out.extend_from_slice(&b[last..at]);
                out.extend_from_slice(escaped.as_bytes());
                last = at + marker.len();
            }
            out.extend_from_slice(&b[last..]);
            *b = out;
        }
    }
    count
}

/// Offers each secret the step was handed to `put` (which puts it where its
/// placeholder stands, and says whether it did), and returns the redactor of
/// those that went out, if any did: for HTTP and SMTP egress alike.
pub fn put_handed(handed: &crate::invocation::Handed, mut put: impl FnMut(&str, &str) -> bool) -> Option<Redactor> {
    let sent: Vec<Vec<u8>> = handed.iter().filter(|(placeholder, value)| put(placeholder, value)).map(|(_, value)| value.as_bytes().to_vec()).collect();
    (!sent.is_empty()).then(|| Redactor::new(&sent))
}

pub const REDACTED: &[u8] = b"[REDACTED]";

/// How many layers of escaping [`Redactor::leaks`] takes off.
pub const DECODE_ROUNDS: usize = 4;

/// Shorter spellings than this are not matched on their own (a base64 core
/// of a few characters would strike innocent text); the whole value always is.
const MIN_DERIVED_LEN: usize = 8;

/// Finds and replaces every spelling of some secrets in one pass.
pub struct Redactor {
    matcher: Option<AhoCorasick>,
    /// The plain secrets, for the check after decoding.
    plain: Vec<Vec<u8>>,
}

impl Redactor {
    /// Redacts nothing (no credential was injected).
    pub fn none() -> Redactor {
        Redactor { matcher: None, plain: Vec::new() }
    }

    pub fn new(secrets: &[Vec<u8>]) -> Redactor {
        let mut needles: Vec<Vec<u8>> = Vec::new();
        for s in secrets.iter().filter(|s| !s.is_empty()) {
            needles.push(s.clone());
            needles.extend(spellings(s).into_iter().filter(|n| n.len() >= MIN_DERIVED_LEN && n != s));
        }
        needles.sort();
        needles.dedup();
        // Leftmost-longest: a spelling that contains another is replaced whole.
        let matcher = AhoCorasick::builder().match_kind(MatchKind::LeftmostLongest).build(&needles).ok();
        Redactor { matcher: matcher.filter(|_| !needles.is_empty()), plain: secrets.to_vec() }
    }

    /// Every spelling replaced by `[REDACTED]`.
    pub fn redact(&self, haystack: &[u8]) -> Vec<u8> {
        match &self.matcher {
            None => haystack.to_vec(),
            Some(m) => m.replace_all_bytes(haystack, &vec![REDACTED; m.patterns_len()]),
        }
    }

    /// [`Redactor::redact`] for text.
    pub fn redact_str(&self, text: &str) -> String {
        String::from_utf8_lossy(&self.redact(text.as_bytes())).into_owned()
    }

    /// True when `redacted` still holds a secret once decoded (percent-encoding,
    /// JSON escapes, in either order, nested up to [`DECODE_ROUNDS`] deep: a
    /// JSON document quoted inside another escapes a secret's `"` and `\`
    /// twice): a spelling the needles did not know.
    pub fn leaks(&self, redacted: &[u8]) -> bool {
        if self.plain.is_empty() {
            return false;
        }
        let found = |d: &[u8]| self.plain.iter().any(|s| memchr::memmem::find(d, s).is_some());
        let (mut a, mut b) = (redacted.to_vec(), redacted.to_vec());
        for _ in 0..DECODE_ROUNDS {
            let (next_a, next_b) = (percent_decode(&json_unescape(&a)), json_unescape(&percent_decode(&b)));
            if found(&next_a) || found(&next_b) {
                return true;
            }
            if next_a == a && next_b == b {
                return false;
            }
            (a, b) = (next_a, next_b);
        }
        false
    }
}

/// The encoded forms of `s` an upstream might hand back.
fn spellings(s: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    // Percent-encoding: minimal (as a form or query encodes it) and of every byte, in both hex cases.
    let minimal: String = url::form_urlencoded::byte_serialize(s).collect();
    out.push(minimal.clone().into_bytes());
    out.push(lower_escapes(&minimal, '%').into_bytes());
    // As [`substitute`] puts a value in a URL: every byte but letters and digits.
    let host_encoded = percent_encoding::percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string();
    out.push(lower_escapes(&host_encoded, '%').into_bytes());
    out.push(host_encoded.into_bytes());
    let every_upper: String = s.iter().map(|b| format!("%{b:02X}")).collect();
    out.push(every_upper.to_ascii_lowercase().into_bytes());
    out.push(every_upper.into_bytes());
    // Hex.
    out.push(hex::encode(s).into_bytes());
    out.push(hex::encode_upper(s).into_bytes());
    // JSON: as serde writes it, with `\/`, and every character as `\u00XX`;
    // and escaped twice, as a JSON document quoted inside another has it.
    if let Ok(text) = std::str::from_utf8(s) {
        let json = serde_json::to_string(text).unwrap_or_default();
        let inner = json.trim_matches('"').to_string();
        let twice = serde_json::to_string(&inner).unwrap_or_default();
        out.push(twice[1..twice.len().saturating_sub(1).max(1)].to_string().into_bytes());
        out.push(inner.replace('/', "\\/").into_bytes());
        out.push(inner.into_bytes());
        let u: String = text.encode_utf16().map(|c| format!("\\u{c:04x}")).collect();
        out.push(u.to_ascii_uppercase().replace("\\U", "\\u").into_bytes());
        out.push(u.into_bytes());
    }
    // Base64, standard and URL-safe, at each alignment: the characters that
    // depend on the secret's bytes alone, whatever comes before or after.
    out.push(base64::engine::general_purpose::STANDARD.encode(s).into_bytes());
    out.push(base64::engine::general_purpose::URL_SAFE.encode(s).into_bytes());
    for engine in [&base64::engine::general_purpose::STANDARD_NO_PAD, &base64::engine::general_purpose::URL_SAFE_NO_PAD] {
        for k in 0..3usize {
            let mut padded = vec![0u8; k];
            padded.extend_from_slice(s);
            let encoded = engine.encode(&padded);
            let start = 4 * k.div_ceil(3);
            let end = 4 * (padded.len() / 3);
            if end > start {
                out.push(encoded.as_bytes()[start..end].to_vec());
            }
            if k == 0 {
                out.push(encoded.into_bytes()); // the whole value, unpadded
            }
        }
    }
    out
}

/// `%2F` → `%2f`: the same escapes in lower-case hex.
fn lower_escapes(text: &str, mark: char) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == mark {
            out.extend(chars.by_ref().take(2).map(|h| h.to_ascii_lowercase()));
        }
    }
    out
}

fn percent_decode(bytes: &[u8]) -> Vec<u8> {
    percent_encoding::percent_decode(bytes).collect()
}

/// `\/`, `\\`, `\"` and `\uXXXX` (UTF-16, surrogate pairs joined) decoded;
/// anything else kept as it is. Lenient: this looks for secrets, it does not
/// validate JSON.
fn json_unescape(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut units: Vec<u16> = Vec::new();
    let flush = |units: &mut Vec<u16>, out: &mut Vec<u8>| {
        out.extend(String::from_utf16_lossy(units).into_bytes());
        units.clear();
    };
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 1 < bytes.len() {
            let unit = (bytes[i + 1] == b'u' || bytes[i + 1] == b'U')
                .then(|| bytes.get(i + 2..i + 6))
                .flatten()
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u16::from_str_radix(h, 16).ok());
            if let Some(u) = unit {
                units.push(u);
                i += 6;
                continue;
            }
            flush(&mut units, &mut out);
            match bytes[i + 1] {
                c @ (b'/' | b'\\' | b'"') => out.push(c),
                c => out.extend([b'\\', c]),
            }
            i += 2;
            continue;
        }
        flush(&mut units, &mut out);
        out.push(bytes[i]);
        i += 1;
    }
    flush(&mut units, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::credentials::SecretSource;

    const SECRET: &str = "s3cr3t/t0ken+value=42";

    fn redactor() -> Redactor {
        Redactor::new(&[SECRET.as_bytes().to_vec()])
    }

    #[test]
    fn basic_injection_redacts_the_encoded_pair_too() {
        let spec = CredentialSpec {
            name: "j".into(),
            kind: CredentialKind::Basic { user: "bot@corp.example".into() },
            source: SecretSource::Env("X".into()),
            hosts: vec![],
            relays: vec![],
            team: None,
            auto: false,
        };
        let inj = injection(&spec, &Secret::new("tok-long-enough".into()), &[]);
        let (_, v) = inj.header.unwrap();
        let encoded = v.strip_prefix("Basic ").unwrap();
        assert_eq!(inj.redactor.redact(format!("x {encoded} y").as_bytes()), b"x [REDACTED] y");
        assert_eq!(inj.redactor.redact(b"tok-long-enough"), REDACTED);
    }

    #[test]
    fn a_value_spelled_as_the_host_puts_it_in_a_url_is_redacted() {
        // `substitute` encodes every byte but letters and digits: `-`, `_` and `.` too.
        let secret = "Ab-cd_ef.gh-0123456789";
        let r = Redactor::new(&[secret.as_bytes().to_vec()]);
        let mut url = url::Url::parse("https://api.example/x?k=MARKER_0123456789").unwrap();
        assert_eq!(substitute("MARKER_0123456789", secret, &mut url, &mut None, ""), 1);
        let echoed = format!("{{\"query\":\"{}\"}}", url.query().unwrap());
        for answer in [echoed.clone(), echoed.to_ascii_lowercase().replace("k=ab", "k=Ab")] {
            let redacted = r.redact(answer.as_bytes());
            assert!(!r.leaks(&redacted), "{}", String::from_utf8_lossy(&redacted));
        }
        assert_eq!(r.redact(echoed.as_bytes()), b"{\"query\":\"k=[REDACTED]\"}");
    }

    #[test]
    fn redaction_replaces_every_occurrence() {
        let r = Redactor::new(&[b"SECRET".to_vec()]);
        assert_eq!(r.redact(b"a SECRET b SECRETSECRET"), b"a [REDACTED] b [REDACTED][REDACTED]");
        assert_eq!(Redactor::new(&[b"much longer needle".to_vec()]).redact(b"short"), b"short");
    }

    #[test]
    fn every_encoded_spelling_is_redacted() {
        use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
        let r = redactor();
        let every_byte: String = SECRET.bytes().map(|b| format!("%{b:02x}")).collect();
        let json_u: String = SECRET.chars().map(|c| format!("\\u{:04X}", c as u32)).collect();
        let mut forms = vec![
            SECRET.to_string(),
            url::form_urlencoded::byte_serialize(SECRET.as_bytes()).collect(),
            every_byte.clone(),
            every_byte.to_ascii_uppercase(),
            SECRET.replace('/', "\\/"),
            json_u.clone(),
            json_u.to_ascii_lowercase(),
            hex::encode(SECRET),
            hex::encode_upper(SECRET),
        ];
        for prefix in ["", "a", "ab", "abc"] {
            forms.push(STANDARD.encode(format!("{prefix}{SECRET}")));
            forms.push(URL_SAFE_NO_PAD.encode(format!("Bearer {prefix}{SECRET} trailing")));
        }
        for form in forms {
            let out = r.redact(format!("<<{form}>>").as_bytes());
            let text = String::from_utf8_lossy(&out);
            assert!(text.contains("[REDACTED]"), "not redacted: {form} -> {text}");
            assert!(!r.leaks(&out), "{form} -> {text}");
        }
    }

    #[test]
    fn a_secret_quoted_in_json_inside_json_is_redacted_and_deeper_nesting_refused() {
        let secret = "s3cret/../\"x\"?y=1";
        let r = Redactor::new(&[secret.as_bytes().to_vec()]);
        // An echo of a JSON body, as a string field of the JSON answer.
        let inner = serde_json::json!({"token": secret}).to_string();
        let answer = serde_json::json!({"echo": inner}).to_string();
        let out = r.redact(answer.as_bytes());
        assert!(!String::from_utf8_lossy(&out).contains("s3cret"), "{}", String::from_utf8_lossy(&out));
        assert!(!r.leaks(&out));
        // Once more quoted: no needle for it, but decoding finds it, so the answer is refused.
        let deeper = serde_json::json!({"outer": answer}).to_string();
        let out = r.redact(deeper.as_bytes());
        assert!(String::from_utf8_lossy(&out).contains("s3cret") && r.leaks(&out));
    }

    #[test]
    fn a_spelling_the_needles_miss_is_caught_after_decoding() {
        let r = redactor();
        // Percent-encoding with the hex case mixed byte by byte.
        let mixed: String = SECRET.bytes().enumerate().map(|(i, b)| if i % 2 == 0 { format!("%{b:02X}") } else { format!("%{b:02x}") }).collect();
        let out = r.redact(mixed.as_bytes());
        assert!(r.leaks(&out), "mixed-case escapes decode to the secret");
        // JSON escapes inside percent-encoding.
        let nested: String = url::form_urlencoded::byte_serialize(SECRET.replace('/', "\\/").as_bytes()).collect();
        assert!(r.leaks(&r.redact(nested.as_bytes())) || !String::from_utf8_lossy(&r.redact(nested.as_bytes())).contains("t0ken"));
        assert!(!r.leaks(b"nothing to see here"));
    }
}
