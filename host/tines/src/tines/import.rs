//! From a Tines export to warden: one graph story per story (nested
//! `send_to_stories` become the stories they call), a policy skeleton, and a
//! report of what was converted, what was not and why — never a silent drop.
//!
//! Credentials: a `{% credential x %}` / `CREDENTIAL.x` in an HTTP Request's
//! header, `basic_auth` or query string is taken out of the request and
//! becomes that agent's host-injected credential, bound to the origin it was
//! used with. One used anywhere else (a payload, a URL path, an email) would
//! put the secret into what a step sees, so the agent is refused, naming it.

use super::export::{self, Export};
use crate::story::graph::{bool_of, Test, EMAIL_PLUGIN, HTTP_PLUGIN};
use regex::Regex;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::OnceLock;

#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// The team the stories belong to.
    pub team: String,
    /// Where the skeleton points `[plugins.*] path`.
    pub plugins_dir: String,
    /// A credential in an HTTP request's payload or URL path is put there by
    /// the host at egress (a `placeholder` credential) instead of refused.
    pub allow_credential_in_payload: bool,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions { team: "default".into(), plugins_dir: "target/wasm32-wasip2/guest".into(), allow_credential_in_payload: false }
    }
}

/// What an import produced.
#[derive(Debug, Clone)]
pub struct Imported {
    /// `(story name, story as JSON)`, the exported story first.
    pub stories: Vec<(String, Value)>,
    /// The policy skeleton (TOML).
    pub policy: String,
    pub report: Report,
    /// Credentials the policy needs, with the environment variable each reads.
    pub credentials: BTreeMap<String, Credential>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Converted,
    Note,
    Unsupported,
    Refused,
}

impl Level {
    fn word(self) -> &'static str {
        match self {
            Level::Converted => "converted",
            Level::Note => "note",
            Level::Unsupported => "unsupported",
            Level::Refused => "refused",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub level: Level,
    pub story: String,
    /// The agent's Tines name.
    pub agent: Option<String>,
    pub message: String,
}

#[derive(Debug, Clone, Default)]
pub struct Report {
    pub entries: Vec<Entry>,
}

impl Report {
    fn add(&mut self, level: Level, story: &str, agent: Option<&str>, message: impl Into<String>) {
        self.entries.push(Entry { level, story: story.into(), agent: agent.map(str::to_string), message: message.into() });
    }

    /// Agents refused (a credential where the step would see it).
    pub fn refused(&self) -> usize {
        self.entries.iter().filter(|e| e.level == Level::Refused).count()
    }

    pub fn count(&self, level: Level) -> usize {
        self.entries.iter().filter(|e| e.level == level).count()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for e in &self.entries {
            let at = match &e.agent {
                Some(a) => format!("{} / {a}", e.story),
                None => e.story.clone(),
            };
            writeln!(f, "{:<11} {at}: {}", e.level.word(), e.message)?;
        }
        write!(
            f,
            "{} converted, {} notes, {} unsupported, {} refused",
            self.count(Level::Converted),
            self.count(Level::Note),
            self.count(Level::Unsupported),
            self.count(Level::Refused)
        )
    }
}

/// How a credential goes into a request.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Injection {
    Bearer,
    Header {
        name: String,
        prefix: String,
    },
    Basic {
        user: String,
    },
    Query {
        param: String,
    },
    /// Put where the request holds `marker` (`--allow-credential-in-payload`).
    Placeholder {
        marker: String,
    },
}

impl Injection {
    fn word(&self) -> &'static str {
        match self {
            Injection::Bearer => "bearer",
            Injection::Header { .. } => "header",
            Injection::Basic { .. } => "basic",
            Injection::Query { .. } => "query",
            Injection::Placeholder { .. } => "placeholder",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Credential {
    /// The name the export used.
    pub tines_name: String,
    pub injection: Injection,
    /// Origins it was used with (the hosts it is bound to).
    pub hosts: BTreeSet<String>,
    /// The environment variable the skeleton reads it from.
    pub env: String,
}

/// Imports `export` (and the stories it sends to).
pub fn import(export: &Export, opts: &ImportOptions) -> Imported {
    let mut cx = Cx {
        opts,
        report: Report::default(),
        credentials: BTreeMap::new(),
        rules: BTreeSet::new(),
        stories: Vec::new(),
        names: HashMap::new(),
        emails: false,
        recipient_domains: BTreeSet::new(),
        webhooks: Vec::new(),
        schedules: Vec::new(),
        resources: BTreeSet::new(),
        email_credentials: BTreeSet::new(),
    };
    cx.name_stories(export);
    cx.story(export);
    let policy = cx.policy();
    Imported { stories: cx.stories, policy, report: cx.report, credentials: cx.credentials }
}

struct Cx<'o> {
    opts: &'o ImportOptions,
    report: Report,
    credentials: BTreeMap<String, Credential>,
    /// Egress rules of the http-request grant.
    rules: BTreeSet<String>,
    stories: Vec<(String, Value)>,
    /// Export title / slug / guid → warden story name.
    names: HashMap<String, String>,
    emails: bool,
    recipient_domains: BTreeSet<String>,
    /// Stories whose entry is a webhook: (story, webhook options).
    webhooks: Vec<(String, Value)>,
    /// Stories started on a schedule: (story, six-field cron, time zone).
    schedules: Vec<(String, String, Option<String>)>,
    /// Resources the stories read (`RESOURCE.x`, `{% global_resource x %}`).
    resources: BTreeSet<String>,
    /// Placeholder credentials email agents carry (granted to the email plugin).
    email_credentials: BTreeSet<String>,
}

/// `Alert Triage (v2)` → `alert-triage-v2`.
pub fn story_name(title: &str) -> String {
    let mut out = String::new();
    for c in title.trim().chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    let out = out.trim_end_matches('-').to_string();
    if out.is_empty() {
        "tines-story".into()
    } else {
        out
    }
}

/// An agent's name as Tines references it: `Get User Info` → `get_user_info`.
pub fn snake(name: &str) -> String {
    let mut out = String::new();
    for c in name.trim().chars() {
        if c.is_alphanumeric() {
            out.extend(c.to_lowercase());
        } else if !out.ends_with('_') {
            out.push('_');
        }
    }
    let mut out = out.trim_matches('_').to_string();
    if !out.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        out = out.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    }
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert_str(0, "agent_");
    }
    out
}

fn cred_regex() -> &'static Regex {
    static R: OnceLock<Regex> = OnceLock::new();
    R.get_or_init(|| {
        Regex::new(r"\{%-?\s*credential\s+([A-Za-z0-9_\-]+)\s*-?%\}|\{\{-?\s*\.?CREDENTIAL\.([A-Za-z0-9_\-]+)\s*-?\}\}|<<\s*CREDENTIAL\.([A-Za-z0-9_\-]+)\s*>>")
            .unwrap()
    })
}

/// Whether a text names a credential in any spelling (also inside a larger expression).
fn mentions_credential(text: &str) -> bool {
    static R: OnceLock<Regex> = OnceLock::new();
    R.get_or_init(|| Regex::new(r"CREDENTIAL\.|\{%-?\s*credential\b").unwrap()).is_match(text)
}

/// `before{% credential x %}after` with exactly one plain reference: (before, x, after).
fn one_reference(text: &str) -> Option<(String, String, String)> {
    let r = cred_regex();
    let mut it = r.captures_iter(text);
    let c = it.next()?;
    if it.next().is_some() {
        return None;
    }
    let m = c.get(0)?;
    let name = c.get(1).or(c.get(2)).or(c.get(3))?.as_str().to_string();
    let (before, after) = (&text[..m.start()], &text[m.end()..]);
    if mentions_credential(before) || mentions_credential(after) {
        return None;
    }
    Some((before.to_string(), name, after.to_string()))
}

fn is_templated(text: &str) -> bool {
    text.contains("{{") || text.contains("{%") || text.contains("<<")
}

fn any_string(v: &Value, f: &mut dyn FnMut(&str) -> bool) -> bool {
    match v {
        Value::String(s) => f(s),
        Value::Array(a) => a.iter().any(|x| any_string(x, f)),
        Value::Object(o) => o.iter().any(|(k, x)| f(k) || any_string(x, f)),
        _ => false,
    }
}

/// Every plain credential reference in `v`'s strings replaced by the
/// placeholder the host fills in at egress; the names found.
fn replace_references(v: &mut Value, names: &mut BTreeSet<String>) {
    match v {
        Value::String(s) if mentions_credential(s) => {
            let replaced = cred_regex().replace_all(s, |c: &regex::Captures| {
                let name = c.get(1).or(c.get(2)).or(c.get(3)).map(|m| m.as_str()).unwrap_or("").to_string();
                let marker = crate::policy::credentials::default_marker(&snake(&name));
                names.insert(name);
                marker
            });
            *s = replaced.into_owned();
        }
        Value::Array(a) => a.iter_mut().for_each(|x| replace_references(x, names)),
        Value::Object(o) => o.values_mut().for_each(|x| replace_references(x, names)),
        _ => {}
    }
}

/// Whether a converted agent loads as warden loads a story (alone, links
/// aside): the one place that decides what a graph agent may be.
fn loads(agent: &Map<String, Value>, formulas: bool) -> Result<(), String> {
    let mut a = agent.clone();
    for k in ["receivers", "no_match", "failure"] {
        a.remove(k);
    }
    let mut graph = json!({"agents": [Value::Object(a)]});
    if formulas {
        graph["templates"] = json!("formulas");
    }
    let text = serde_saphyr::to_string(&json!({"name": "check", "graph": graph})).map_err(|e| e.to_string())?;
    crate::story::parse(&text, std::path::Path::new("agent")).map(|_| ()).map_err(|e| {
        e.0.iter().map(|l| l.message.split_once("`: ").map(|(_, m)| m.to_string()).unwrap_or_else(|| l.message.clone())).collect::<Vec<_>>().join("; ")
    })
}

/// Formulas (newer exports): `<<expr>>` in text, or a whole field `=expr`.
fn uses_formulas(v: &Value) -> bool {
    any_string(v, &mut |s| super::formula::is_formula(s))
}

/// The origin and path of a URL option (`None` origin when a template makes it).
fn split_url(url: &str) -> (Option<String>, String, String) {
    let url = url.trim();
    let Some((scheme, rest)) = url.split_once("://") else { return (None, url.to_string(), String::new()) };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let host = &rest[..end];
    let tail = &rest[end..];
    let (path, query) = match tail.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (tail.to_string(), String::new()),
    };
    if is_templated(scheme) || is_templated(host) || !(scheme.eq_ignore_ascii_case("https") || scheme.eq_ignore_ascii_case("http")) {
        return (None, path, query);
    }
    (Some(format!("{}://{}", scheme.to_ascii_lowercase(), host.to_ascii_lowercase())), path, query)
}

/// A path with its templated segments as `*` (one segment each).
fn path_glob(path: &str) -> String {
    let path = if path.is_empty() { "/" } else { path };
    path.split('/').map(|seg| if is_templated(seg) { "*" } else { seg }).collect::<Vec<_>>().join("/")
}

/// Options each agent type uses; any other is reported as not used.
/// How one Tines agent type (an event transformation: type and mode) becomes
/// a graph agent: the warden kind it becomes, the options it reads (any other
/// is reported, never dropped silently), and its converter, which gets the
/// agent's `id`/`name` map and its options and returns the agent (`None`:
/// reported, not converted). A type or mode with no row is reported as
/// unsupported; supporting one is a row and a function.
struct Converter {
    tines: &'static str,
    mode: Option<&'static str>,
    kind: &'static str,
    options: &'static [&'static str],
    convert: Convert,
}

/// A converter: the agent so far (`id`, `name`) and the Tines options in, the
/// graph agent out (`None`: reported, not converted).
type Convert = fn(&mut Cx<'_>, &At<'_>, Map<String, Value>, Map<String, Value>) -> Option<Map<String, Value>>;

/// The agent being converted, for the report.
struct At<'a> {
    story: &'a str,
    name: &'a str,
}

const TRANSFORM: &str = "Agents::EventTransformationAgent";

const CONVERTERS: &[Converter] = &[
    Converter {
        tines: "Agents::WebhookAgent",
        mode: None,
        kind: "webhook",
        options: &["path", "secret", "verbs", "include_headers", "response", "response_code", "response_headers"],
        convert: |cx, at, out, opts| cx.webhook(at, out, opts),
    },
    Converter {
        tines: "Agents::HTTPRequestAgent",
        mode: None,
        kind: "http",
        options: &[
            "url",
            "method",
            "content_type",
            "payload",
            "headers",
            "basic_auth",
            "retry_on_status",
            "log_error_on_status",
            "user_agent",
            "disable_ssl_verification",
        ],
        convert: |cx, at, out, opts| cx.http(at, out, opts),
    },
    Converter {
        tines: "Agents::TriggerAgent",
        mode: None,
        kind: "trigger",
        options: &["rules", "must_match", "emit_no_match"],
        convert: |cx, at, out, opts| cx.trigger(at, out, opts),
    },
    Converter {
        tines: "Agents::EmailAgent",
        mode: None,
        kind: "email",
        options: &["recipients", "subject", "body", "reply_to", "sender_name", "cc", "bcc", "sender_address", "advanced_html"],
        convert: |cx, at, out, opts| cx.email(at, out, opts),
    },
    Converter {
        tines: "Agents::SendToStoryAgent",
        mode: None,
        kind: "story",
        options: &["story", "payload", "send_payload_as_body"],
        convert: |cx, at, out, opts| cx.send_to_story(at, out, opts),
    },
    Converter {
        tines: TRANSFORM,
        mode: Some("message_only"),
        kind: "message",
        options: &["mode", "payload", "loop"],
        convert: |cx, at, out, opts| cx.transform(at, out, opts),
    },
    Converter {
        tines: TRANSFORM,
        mode: Some("extract"),
        kind: "extract",
        options: &["mode", "matchers", "emit_no_match"],
        convert: |cx, at, out, opts| cx.transform(at, out, opts),
    },
    Converter {
        tines: TRANSFORM,
        mode: Some("explode"),
        kind: "explode",
        options: &["mode", "path", "to", "limit"],
        convert: |cx, at, out, opts| cx.transform(at, out, opts),
    },
    Converter {
        tines: TRANSFORM,
        mode: Some("implode"),
        kind: "implode",
        options: &["mode", "guid_path", "size_path", "item_path", "seconds"],
        convert: |cx, at, out, opts| cx.transform(at, out, opts),
    },
    Converter {
        tines: TRANSFORM,
        mode: Some("deduplicate"),
        kind: "deduplicate",
        options: &["mode", "path", "lookback"],
        convert: |cx, at, out, opts| cx.deduplicate(at, out, opts),
    },
    Converter { tines: TRANSFORM, mode: Some("delay"), kind: "delay", options: &["mode", "seconds"], convert: |cx, at, out, opts| cx.transform(at, out, opts) },
];

impl Cx<'_> {
    fn name_stories(&mut self, e: &Export) {
        let mut name = story_name(&e.title());
        let taken: BTreeSet<&String> = self.names.values().collect();
        if taken.contains(&name) {
            let mut i = 2;
            while taken.contains(&format!("{name}-{i}")) {
                i += 1;
            }
            name = format!("{name}-{i}");
        }
        for key in [Some(e.title()), e.slug.clone(), e.guid.clone(), e.name.clone()].into_iter().flatten() {
            self.names.entry(key.to_ascii_lowercase()).or_insert_with(|| name.clone());
            self.names.entry(story_name(&key)).or_insert_with(|| name.clone());
        }
        for s in &e.send_to_stories {
            self.name_stories(s);
        }
    }

    fn story_of(&self, e: &Export) -> String {
        self.names.get(&e.title().to_ascii_lowercase()).cloned().unwrap_or_else(|| story_name(&e.title()))
    }

    /// A `story` option (`{% story Name %}`, `{{ .STORY.slug }}`, a name) → the warden story it names.
    fn called_story(&self, option: &Value) -> Option<String> {
        static R: OnceLock<Regex> = OnceLock::new();
        let r = R.get_or_init(|| {
            Regex::new(r"\{%-?\s*story\s+(.+?)\s*-?%\}|\{\{-?\s*\.?STORY\.([A-Za-z0-9_\-]+)\s*-?\}\}|<<\s*STORY\.([A-Za-z0-9_\-]+)\s*>>").unwrap()
        });
        let text = option.as_str()?.trim();
        let key = match r.captures(text) {
            Some(c) => c.get(1).or(c.get(2)).or(c.get(3))?.as_str().trim().trim_matches(|c| c == '"' || c == '\'').to_string(),
            None => text.to_string(),
        };
        self.names.get(&key.to_ascii_lowercase()).or_else(|| self.names.get(&story_name(&key))).or_else(|| self.names.get(&key.replace('_', "-"))).cloned()
    }

    fn story(&mut self, e: &Export) {
        let story = self.story_of(e);
        if self.stories.iter().any(|(n, _)| *n == story) {
            return;
        }
        let title = e.title();
        let known_top: BTreeSet<&str> = export::LAYOUT_FIELDS.iter().copied().collect();
        for k in e.other.keys().filter(|k| !known_top.contains(k.as_str())) {
            self.report.add(Level::Note, &story, None, format!("top-level field `{k}` is not used by warden"));
        }
        // Template actions keep their inputs at the top level: say which agents lose them.
        for i in e.other.get("integrations").and_then(|v| v.as_array()).into_iter().flatten() {
            let guid = i.get("action_guid").and_then(|g| g.as_str()).unwrap_or("");
            let agent = e.agents.iter().find(|a| a.guid.as_deref() == Some(guid)).map(|a| a.name.clone()).unwrap_or_else(|| format!("guid {guid}"));
            let product = i.get("product").and_then(|p| p.as_str()).unwrap_or("a template");
            self.report.add(Level::Unsupported, &story, Some(&agent), format!("its {product} template inputs (integrations) are not converted"));
        }
        // Agent ids: snake-cased names, as templates reference them; a repeated name is ambiguous.
        let mut ids: Vec<String> = Vec::new();
        let mut first_of: HashMap<String, usize> = HashMap::new();
        for (i, a) in e.agents.iter().enumerate() {
            let base = snake(&a.name);
            let mut id = base.clone();
            if let Some(&first) = first_of.get(&base) {
                let mut k = 2;
                while ids.contains(&format!("{base}_{k}")) {
                    k += 1;
                }
                id = format!("{base}_{k}");
                self.report.add(
                    Level::Note,
                    &story,
                    Some(&a.name),
                    format!("two agents are named `{}` (agents {first} and {i}): references `.{base}` resolve to the first; this one is `{id}` — rename one in Tines or edit the references", a.name),
                );
            } else {
                first_of.insert(base, i);
            }
            ids.push(id);
        }
        let mut kept: Vec<Option<Map<String, Value>>> = Vec::new();
        let formulas = e.agents.iter().any(|a| uses_formulas(&a.options));
        for (i, a) in e.agents.iter().enumerate() {
            // What an agent adds to the skeleton stays only if the agent is written.
            let before = (
                self.rules.clone(),
                self.credentials.clone(),
                self.email_credentials.clone(),
                self.recipient_domains.clone(),
                self.emails,
                self.report.entries.len(),
            );
            let converted = self.agent(&story, &ids[i], a);
            // Written only if it loads as warden will load it (templates, formulas, options).
            let converted = match converted.map(|m| loads(&m, formulas).map(|()| m)) {
                Some(Err(why)) => {
                    (self.rules, self.credentials, self.email_credentials, self.recipient_domains, self.emails) =
                        (before.0, before.1, before.2, before.3, before.4);
                    self.report.entries.truncate(before.5);
                    self.report.add(Level::Unsupported, &story, Some(&a.name), format!("{why}; not converted"));
                    None
                }
                Some(Ok(m)) => Some(m),
                None => None,
            };
            kept.push(converted);
        }
        // Links: receivers (or a trigger's no-match path) among the agents kept.
        for l in &e.links {
            let (s, r) = (l.source, l.receiver);
            let (sn, rn) = (&e.agents[s].name, &e.agents[r].name);
            if kept[r].is_none() {
                if kept[s].is_some() {
                    self.report.add(Level::Note, &story, Some(sn), format!("its link to `{rn}` is cut: `{rn}` was not converted"));
                }
                continue;
            }
            let no_match = l.link_type.as_deref().is_some_and(|t| t.eq_ignore_ascii_case("no_match"));
            let failure = l.link_type.as_deref().is_some_and(|t| t.eq_ignore_ascii_case("failure"));
            let Some(src) = kept[s].as_mut() else { continue };
            let key = if failure {
                "failure"
            } else if no_match && src.get("kind") == Some(&json!("trigger")) {
                "no_match"
            } else {
                "receivers"
            };
            let list = src.entry(key).or_insert_with(|| json!([]));
            if let Value::Array(a) = list {
                let id = Value::String(ids[r].clone());
                if !a.contains(&id) {
                    a.push(id);
                }
            }
        }
        let guid_index = |g: &str| e.agents.iter().position(|a| a.guid.as_deref() == Some(g));
        let scheduled = |a: &export::Agent| a.schedule.as_ref().and_then(|s| s.as_array()).is_some_and(|l| !l.is_empty());
        let entry = e
            .entry_agent_guid
            .as_deref()
            .and_then(guid_index)
            .filter(|&i| kept[i].is_some())
            .or_else(|| e.agents.iter().enumerate().position(|(i, a)| kept[i].is_some() && a.kind == "Agents::WebhookAgent"))
            // No webhook: a scheduled agent starts the story.
            .or_else(|| e.agents.iter().enumerate().position(|(i, a)| kept[i].is_some() && scheduled(a)));
        for (i, a) in e.agents.iter().enumerate().filter(|(_, a)| scheduled(a) && !a.is_disabled()) {
            let list = a.schedule.as_ref().and_then(|s| s.as_array()).cloned().unwrap_or_default();
            if Some(i) != entry || kept[i].is_none() {
                self.report.add(
                    Level::Unsupported,
                    &story,
                    Some(&a.name),
                    "its schedule is not converted: in warden a schedule starts the story at its entry, and this agent is not the entry",
                );
                continue;
            }
            for (k, sch) in list.iter().enumerate() {
                let cron = sch.get("cron").and_then(|c| c.as_str()).unwrap_or("").trim().to_string();
                let tz = sch.get("timezone").and_then(|c| c.as_str()).map(str::to_string).filter(|t| !t.is_empty());
                let fields = cron.split_whitespace().count();
                let cron6 = match fields {
                    5 => format!("0 {cron}"),
                    6 => cron.clone(),
                    _ => {
                        self.report.add(Level::Unsupported, &story, Some(&a.name), format!("schedule `{cron}` is not a cron expression; not converted"));
                        continue;
                    }
                };
                if k > 0 {
                    self.report.add(
                        Level::Unsupported,
                        &story,
                        Some(&a.name),
                        format!("second schedule `{cron}`: a warden trigger has one schedule; not converted"),
                    );
                    continue;
                }
                self.report.add(
                    Level::Converted,
                    &story,
                    Some(&a.name),
                    format!("schedule `{cron}`{} → [triggers.{story}] schedule", tz.as_ref().map(|t| format!(" ({t})")).unwrap_or_default()),
                );
                self.schedules.push((story.clone(), cron6, tz));
            }
        }
        let exits: Vec<String> = e.exits().iter().filter_map(|g| guid_index(g)).filter(|&i| kept[i].is_some()).map(|i| ids[i].clone()).collect();
        let mut agents: Vec<Value> = kept.into_iter().flatten().map(Value::Object).collect();
        // The run's input reaches the entry agent; without a webhook one stands in.
        let entry_id = match entry {
            Some(i) => ids[i].clone(),
            None => {
                let receivers: Vec<Value> = e
                    .agents
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| !e.links.iter().any(|l| l.receiver == *i))
                    .filter(|(i, _)| agents.iter().any(|a| a["id"] == json!(ids[*i])))
                    .map(|(i, _)| Value::String(ids[i].clone()))
                    .collect();
                self.report.add(
                    Level::Note,
                    &story,
                    None,
                    "no webhook starts this story: an entry agent `input` stands in, sending the run's input to every agent that nothing links to",
                );
                agents.insert(0, json!({"id": "input", "kind": "webhook", "receivers": receivers}));
                "input".to_string()
            }
        };
        if let Some(i) = entry.filter(|&i| e.agents[i].kind == "Agents::WebhookAgent") {
            self.webhooks.push((story.clone(), e.agents[i].options.clone()));
        }
        // Resources the story reads, for the skeleton's [resources].
        static RES: OnceLock<Regex> = OnceLock::new();
        let res = RES.get_or_init(|| Regex::new(r"\{%-?\s*global_resource\s+([A-Za-z0-9_]+)|RESOURCE\.([A-Za-z0-9_]+)").unwrap());
        for a in &e.agents {
            any_string(&a.options, &mut |t| {
                for c in res.captures_iter(t) {
                    let name = c.get(1).or(c.get(2)).map(|m| m.as_str().to_string()).unwrap_or_default();
                    if self.resources.insert(name.clone()) {
                        self.report.add(
                            Level::Note,
                            &story,
                            Some(&a.name),
                            format!("reads resource `{name}`: give it a value under [resources] in the policy"),
                        );
                    }
                }
                false
            });
        }
        let mut graph = json!({"entry": entry_id, "agents": agents});
        if e.agents.iter().any(|a| uses_formulas(&a.options)) {
            graph["templates"] = json!("formulas");
        }
        if !exits.is_empty() {
            graph["exit"] = json!(exits);
        }
        let description = match &e.description {
            Some(d) if !d.trim().is_empty() => format!("{} (imported from the Tines story \"{title}\")", d.trim()),
            _ => format!("Imported from the Tines story \"{title}\"."),
        };
        let doc = json!({"name": story, "description": description, "team": self.opts.team, "input": {"type": "object"}, "graph": graph});
        self.stories.push((story, doc));
        for s in &e.send_to_stories {
            self.story(s);
        }
    }

    /// One agent, or `None` (reported) when it is not converted.
    fn agent(&mut self, story: &str, id: &str, a: &export::Agent) -> Option<Map<String, Value>> {
        let name = a.name.as_str();
        if a.is_disabled() {
            self.report.add(Level::Note, story, Some(name), "disabled in Tines: not converted (links through it are cut)");
            return None;
        }
        let opts = match &a.options {
            Value::Object(o) => o.clone(),
            Value::Null => Map::new(),
            other => {
                self.report.add(Level::Unsupported, story, Some(name), format!("options are {other}, not an object"));
                return None;
            }
        };
        let mode = (a.kind == TRANSFORM).then(|| opts.get("mode").and_then(|m| m.as_str())).flatten();
        let Some(converter) = CONVERTERS.iter().find(|c| c.tines == a.kind && c.mode == mode) else {
            let why = match (a.kind.as_str(), mode) {
                (TRANSFORM, Some(other)) => format!("event transformation mode `{other}` is not supported; not converted"),
                (TRANSFORM, None) => "event transformation without a mode; not converted".to_string(),
                (other, _) => format!("agent type `{other}` is not supported by warden; not converted"),
            };
            self.report.add(Level::Unsupported, story, Some(name), why);
            return None;
        };
        let kind = converter.kind;
        // Formulas must parse and call only functions warden has.
        let mut formula_problems = Vec::new();
        any_string(&a.options, &mut |s| {
            if super::formula::is_formula(s) {
                for src in super::formula::sources(s) {
                    match super::formula::parse(&src) {
                        Ok(e) => {
                            let mut unknown = Vec::new();
                            super::formula::unknown_functions(&e, &mut unknown);
                            if !unknown.is_empty() {
                                formula_problems.push(format!("formula `{src}` calls {}, which warden does not have yet", unknown.join(", ")));
                            }
                        }
                        Err(e) => formula_problems.push(format!("formula `{src}` does not parse: {e}")),
                    }
                }
            }
            false
        });
        if !formula_problems.is_empty() {
            self.report.add(Level::Unsupported, story, Some(name), format!("{}; not converted", formula_problems.join("; ")));
            return None;
        }
        let mut out = Map::new();
        out.insert("id".into(), json!(id));
        if name != id {
            out.insert("name".into(), json!(name));
        }
        // Options outside what the type uses are said, not dropped silently.
        for k in opts.keys().filter(|k| !converter.options.contains(&k.as_str())) {
            self.report.add(Level::Note, story, Some(name), format!("option `{k}` is not used by warden"));
        }
        // A credential anywhere but an HTTP request's header, basic_auth or query would reach the step.
        let mut opts = opts;
        let mut email_credential = None;
        if kind == "email" && self.opts.allow_credential_in_payload && any_string(&a.options, &mut |s| mentions_credential(s)) {
            // In the subject or body: the host fills it in at SMTP egress, through the relay it is bound to.
            let addresses = ["recipients", "cc", "bcc", "reply_to", "sender_address", "sender_name"];
            if !addresses.iter().any(|k| opts.get(*k).is_some_and(|v| any_string(v, &mut |s| mentions_credential(s)))) {
                let mut names = BTreeSet::new();
                for k in ["subject", "body"] {
                    if let Some(v) = opts.get_mut(k) {
                        replace_references(v, &mut names);
                    }
                }
                if names.len() == 1 && !any_string(&Value::Object(opts.clone()), &mut |s| mentions_credential(s)) {
                    let cred = names.into_iter().next().unwrap_or_default();
                    let marker = crate::policy::credentials::default_marker(&snake(&cred));
                    email_credential = Some(self.credential(&cred, Injection::Placeholder { marker }, "relay:default"));
                }
            }
        }
        if kind != "http" && email_credential.is_none() && any_string(&Value::Object(opts.clone()), &mut |s| mentions_credential(s)) {
            let why = match (self.opts.allow_credential_in_payload, kind) {
                (true, "email") => " (--allow-credential-in-payload fills in one credential in an email's subject or body, never in an address)",
                (true, _) => " (--allow-credential-in-payload covers HTTP requests and email bodies only: the host fills credentials in at egress)",
                _ => "",
            };
            self.report.add(Level::Refused, story, Some(name), format!("uses a credential outside an HTTP request's header, basic_auth or query string, where the step would see its value; not converted (move the credential into a header){why}"));
            return None;
        }
        if let Some(c) = &email_credential {
            self.email_credentials.insert(c.clone());
            self.report.add(Level::Note, story, Some(name), format!("credential moved out of the message: the host fills in {c} (placeholder) at SMTP egress"));
        }
        out.insert("kind".into(), json!(converter.kind));
        (converter.convert)(self, &At { story, name }, out, opts)
    }

    /// The agent with its options (none when empty).
    fn with_options(mut out: Map<String, Value>, options: Option<Value>) -> Option<Map<String, Value>> {
        if let Some(o) = options {
            out.insert("options".into(), o);
        }
        Some(out)
    }

    fn webhook(&mut self, at: &At<'_>, out: Map<String, Value>, opts: Map<String, Value>) -> Option<Map<String, Value>> {
        let At { story, name } = *at;
        let verbs = opts.get("verbs").and_then(|v| v.as_str()).unwrap_or("post").to_ascii_lowercase();
        if verbs.split(',').any(|v| !v.trim().is_empty() && v.trim() != "post") {
            self.report.add(Level::Note, story, Some(name), format!("verbs `{verbs}`: a warden webhook takes POST (signed JSON) only"));
        }
        if opts.get("include_headers").and_then(bool_of).unwrap_or(false) {
            self.report.add(Level::Note, story, Some(name), "include_headers: the request's headers are not part of the event in warden");
        }
        let mut o = Map::new();
        for k in ["response", "response_code"] {
            if let Some(v) = opts.get(k).filter(|v| !v.is_null() && *v != "") {
                o.insert(k.to_string(), v.clone());
            }
        }
        let answers = if o.contains_key("response") { "; it answers with its own response at once (the run goes on, its id in X-Warden-Run)" } else { "" };
        self.report.add(
            Level::Converted,
            story,
            Some(name),
            format!("webhook → the story's trigger (its HMAC secret in the policy, not Tines' path secret){answers}"),
        );
        Self::with_options(out, (!o.is_empty()).then_some(Value::Object(o)))
    }

    fn trigger(&mut self, at: &At<'_>, out: Map<String, Value>, opts: Map<String, Value>) -> Option<Map<String, Value>> {
        let At { story, name } = *at;
        for r in opts.get("rules").and_then(|r| r.as_array()).into_iter().flatten() {
            let ty = r.get("type").and_then(|t| t.as_str()).unwrap_or("");
            if Test::parse(ty).is_none() {
                self.report.add(Level::Unsupported, story, Some(name), format!("rule type `{ty}` is not supported; not converted"));
                return None;
            }
        }
        if opts.get("emit_no_match").and_then(bool_of).unwrap_or(false) {
            self.report.add(Level::Note, story, Some(name), "emit_no_match: a non-matching event goes down the no-match links only");
        }
        self.report.add(Level::Converted, story, Some(name), "trigger");
        Self::with_options(out, Some(Value::Object(opts)))
    }

    fn email(&mut self, at: &At<'_>, out: Map<String, Value>, opts: Map<String, Value>) -> Option<Map<String, Value>> {
        let At { story, name } = *at;
        self.emails = true;
        let mut recipients = Vec::new();
        any_string(opts.get("recipients").unwrap_or(&Value::Null), &mut |s| {
            recipients.push(s.to_string());
            false
        });
        for r in recipients.iter().flat_map(|r| r.split([',', ';'])) {
            match r.trim().rsplit_once('@') {
                Some((_, d)) if !is_templated(d) => {
                    self.recipient_domains.insert(d.trim_end_matches('>').to_ascii_lowercase());
                }
                _ if is_templated(r) => self.report.add(
                    Level::Note,
                    story,
                    Some(name),
                    format!("recipient `{}` is templated: add its domain to grants.email recipient_domains", r.trim()),
                ),
                _ => {}
            }
        }
        if opts.get("sender_address").is_some_and(|v| v != "" && !v.is_null()) {
            self.report.add(Level::Note, story, Some(name), "sender_address: add it to grants.email senders, or the relay refuses the message");
        }
        self.report.add(Level::Converted, story, Some(name), "email → the email plugin under the SMTP grant");
        Self::with_options(out, Some(Value::Object(opts)))
    }

    fn send_to_story(&mut self, at: &At<'_>, mut out: Map<String, Value>, opts: Map<String, Value>) -> Option<Map<String, Value>> {
        let At { story, name } = *at;
        let called = opts.get("story").and_then(|s| self.called_story(s));
        let Some(called) = called else {
            self.report.add(
                Level::Unsupported,
                story,
                Some(name),
                format!("sends to a story this export does not include ({}); export it with its sub-stories", opts.get("story").unwrap_or(&Value::Null)),
            );
            return None;
        };
        out.insert("story".into(), json!(called));
        self.report.add(Level::Converted, story, Some(name), format!("send to story → sub-story {called}"));
        let mut o = Map::new();
        if let Some(p) = opts.get("payload") {
            o.insert("payload".into(), p.clone());
        }
        Self::with_options(out, Some(Value::Object(o)))
    }

    /// An event transformation whose options carry over as they are (but its `mode`).
    fn transform(&mut self, at: &At<'_>, out: Map<String, Value>, mut opts: Map<String, Value>) -> Option<Map<String, Value>> {
        let mode = opts.remove("mode").and_then(|m| m.as_str().map(String::from)).unwrap_or_default();
        self.report.add(Level::Converted, at.story, Some(at.name), format!("event transformation ({mode})"));
        Self::with_options(out, Some(Value::Object(opts)))
    }

    fn deduplicate(&mut self, at: &At<'_>, out: Map<String, Value>, mut opts: Map<String, Value>) -> Option<Map<String, Value>> {
        let lookback = opts.get("lookback").and_then(crate::story::graph::number_of).unwrap_or(0.0);
        let how = if lookback > 0.0 {
            format!("across runs, among the last {lookback} values (their digests kept in the run store)")
        } else {
            "within each run (lookback 0)".to_string()
        };
        self.report.add(Level::Converted, at.story, Some(at.name), format!("event transformation (deduplicate) {how}"));
        opts.remove("mode");
        Self::with_options(out, Some(Value::Object(opts)))
    }

    fn http(&mut self, at: &At<'_>, mut out: Map<String, Value>, mut opts: Map<String, Value>) -> Option<Map<String, Value>> {
        let At { story, name } = *at;
        let url = opts.get("url").and_then(|u| u.as_str()).unwrap_or("").to_string();
        let (origin, path, query) = split_url(&url);
        let mut found: Vec<(String, Injection)> = Vec::new();
        let refuse = |cx: &mut Self, why: String| {
            cx.report.add(Level::Refused, story, Some(name), format!("{why}; not converted"));
            None
        };
        // Headers: `Authorization: Bearer <cred>` → bearer; `<Header>: <prefix><cred>` → header.
        if let Some(Value::Object(headers)) = opts.get_mut("headers") {
            let mut taken = Vec::new();
            for (h, v) in headers.iter() {
                let Some(text) = v.as_str() else { continue };
                if !mentions_credential(text) {
                    continue;
                }
                match one_reference(text) {
                    Some((before, cred, after)) if after.trim().is_empty() && !is_templated(&before) => {
                        let inj = if h.eq_ignore_ascii_case("authorization") && before.trim().eq_ignore_ascii_case("bearer") {
                            Injection::Bearer
                        } else {
                            Injection::Header { name: h.clone(), prefix: before.clone() }
                        };
                        found.push((cred, inj));
                        taken.push(h.clone());
                    }
                    _ => {
                        return refuse(
                            self,
                            format!("header `{h}` uses a credential inside a larger expression, which would have to be rendered where the step sees it"),
                        )
                    }
                }
            }
            for h in taken {
                headers.remove(&h);
            }
        }
        // basic_auth: "user:<cred>" or [user, <cred>].
        if let Some(b) = opts.get("basic_auth").cloned() {
            let (user, pass) = match &b {
                Value::String(s) => match s.split_once(':') {
                    Some((u, p)) => (u.to_string(), p.to_string()),
                    None => (s.clone(), String::new()),
                },
                Value::Array(a) if a.len() == 2 => (a[0].as_str().unwrap_or("").to_string(), a[1].as_str().unwrap_or("").to_string()),
                _ => (String::new(), String::new()),
            };
            if mentions_credential(&user) {
                return refuse(
                    self,
                    "basic_auth takes its user name from a credential; warden's basic credential has a fixed user and a secret password".into(),
                );
            }
            if mentions_credential(&pass) {
                match one_reference(&pass) {
                    Some((before, cred, after)) if before.is_empty() && after.is_empty() && !is_templated(&user) => {
                        found.push((cred, Injection::Basic { user }));
                        opts.remove("basic_auth");
                    }
                    _ => return refuse(self, "basic_auth's password is more than one credential (or the user is templated)".into()),
                }
            } else if !pass.is_empty() || !user.is_empty() {
                self.report.add(Level::Note, story, Some(name), "basic_auth without a credential: kept as written in the story (consider a credential)");
            }
        }
        // The query string: `key=<cred>`.
        let mut url_out = url.clone();
        if mentions_credential(&query) {
            let mut kept_params = Vec::new();
            for p in query.split('&') {
                match p.split_once('=') {
                    Some((k, v)) if mentions_credential(v) => match one_reference(v) {
                        Some((b, cred, a)) if b.is_empty() && a.is_empty() && !is_templated(k) => found.push((cred, Injection::Query { param: k.to_string() })),
                        _ => return refuse(self, format!("query parameter `{k}` uses a credential inside a larger expression")),
                    },
                    _ if mentions_credential(p) => return refuse(self, "the query string uses a credential outside a `name=value` parameter".into()),
                    _ => kept_params.push(p.to_string()),
                }
            }
            let base = &url[..url.find('?').unwrap_or(url.len())];
            url_out = if kept_params.is_empty() { base.to_string() } else { format!("{base}?{}", kept_params.join("&")) };
            opts.insert("url".into(), json!(url_out));
        }
        // Anywhere else (URL path or host, payload, other options) it would reach
        // the step — unless the operator asked the host to put it there at egress.
        if self.opts.allow_credential_in_payload {
            let mut names = BTreeSet::new();
            let mut mark = |v: &mut Value| replace_references(v, &mut names);
            for (k, v) in opts.iter_mut() {
                if k != "basic_auth" {
                    mark(v);
                }
            }
            url_out = opts.get("url").and_then(|u| u.as_str()).unwrap_or("").to_string();
            for cred in names {
                let marker = crate::policy::credentials::default_marker(&snake(&cred));
                found.push((cred, Injection::Placeholder { marker }));
            }
        }
        let rest_mentions = mentions_credential(&url_out)
            || opts.iter().any(|(k, v)| k != "headers" && any_string(v, &mut |s| mentions_credential(s)))
            || opts.get("headers").is_some_and(|h| any_string(h, &mut |s| mentions_credential(s)));
        if rest_mentions {
            let how = if self.opts.allow_credential_in_payload {
                "uses a credential inside a larger expression in its payload or URL, which the host cannot fill in at egress"
            } else {
                "uses a credential in its payload or URL path, where the step would see its value (only a header, basic_auth or a query parameter can be injected by the host; --allow-credential-in-payload lets the host fill it in at egress)"
            };
            return refuse(self, how.into());
        }
        if found.len() > 1 {
            return refuse(self, format!("uses {} credentials in one request; warden injects one per request", found.len()));
        }
        if opts.get("disable_ssl_verification").and_then(bool_of).unwrap_or(false) {
            self.report.add(Level::Note, story, Some(name), "disable_ssl_verification is ignored: warden always verifies TLS");
        }
        let method = opts.get("method").and_then(|m| m.as_str()).unwrap_or("get").trim().to_ascii_uppercase();
        let method = if is_templated(&method) || method.is_empty() { "*".to_string() } else { method };
        let mut line = format!("{method} {url_out}");
        // Only what the policy can say: a rule it parses, an origin a credential can be bound to.
        if let Some(o) = &origin {
            let rule = format!("{method} {o}{}", path_glob(&path));
            if let Err(why) = crate::policy::rule::EgressRule::parse(&rule).and(crate::policy::credentials::Binding::parse(o).map(|_| ())) {
                self.report.add(Level::Unsupported, story, Some(name), format!("its URL `{url}` cannot be granted ({why}); not converted"));
                return None;
            }
        }
        for (_, inj) in &found {
            if let Injection::Header { name: h, .. } = inj {
                if reqwest::header::HeaderName::from_bytes(h.as_bytes()).is_err() {
                    return refuse(self, format!("header `{h}` carries a credential but is not a valid header name"));
                }
            }
        }
        match &origin {
            Some(o) => {
                let rule = format!("{method} {o}{}", path_glob(&path));
                line = rule.clone();
                self.rules.insert(rule);
            }
            None => self.report.add(
                Level::Note,
                story,
                Some(name),
                format!("its URL `{url}` takes its origin from a template: add the rule for it to grants.{HTTP_PLUGIN} by hand"),
            ),
        }
        if let Some((cred, inj)) = found.pop() {
            let Some(origin) = origin else {
                return refuse(self, format!("sends credential `{cred}` to a URL whose origin is templated, so it cannot be bound to a host"));
            };
            let wname = self.credential(&cred, inj, &origin);
            out.insert("credential".into(), json!(wname));
            let c = &self.credentials[&wname];
            line = format!("{line}, credential `{cred}` moved out of the request: injected by the host as {} ({}) for {origin}", wname, c.injection.word());
        }
        let retry = opts.get("retry_on_status").is_some_and(|v| !v.is_null() && v.as_array().is_none_or(|a| !a.is_empty()) && v != "");
        if retry {
            line.push_str("; retry_on_status → up to 3 attempts");
        }
        self.report.add(Level::Converted, story, Some(name), format!("HTTP request → {HTTP_PLUGIN}: {line}"));
        opts.remove("disable_ssl_verification");
        out.insert("options".into(), Value::Object(opts));
        Some(out)
    }

    /// The policy credential for a Tines credential used this way (a second
    /// way of using the same one gets a name of its own).
    fn credential(&mut self, tines: &str, injection: Injection, origin: &str) -> String {
        let base = snake(tines);
        let mut name = base.clone();
        let mut k = 1;
        loop {
            match self.credentials.get_mut(&name) {
                Some(c) if c.injection == injection => {
                    c.hosts.insert(origin.to_string());
                    return name;
                }
                Some(_) => {
                    k += 1;
                    name = if k == 2 { format!("{base}_{}", injection.word()) } else { format!("{base}_{}_{k}", injection.word()) };
                }
                None => {
                    let env = format!("WARDEN_CREDENTIAL_{}", name.to_ascii_uppercase());
                    self.credentials
                        .insert(name.clone(), Credential { tines_name: tines.to_string(), injection, hosts: BTreeSet::from([origin.to_string()]), env });
                    return name;
                }
            }
        }
    }

    /// The policy skeleton: plugins, the grants the stories need, credentials
    /// bound to the origins they were used with, a relay to fill in, triggers.
    fn policy(&self) -> String {
        // TOML's own quoting (JSON's leaves DEL and such raw, which TOML refuses).
        let q = |s: &str| toml::Value::String(s.to_string()).to_string();
        let mut t = String::new();
        t.push_str("# Policy skeleton written by `warden tines import`. Read it before use:\n");
        t.push_str("# every rule below is one the imported stories' HTTP requests need, and no more.\n\n");
        let dir = self.opts.plugins_dir.trim_end_matches('/');
        let uses_http = self.stories.iter().any(|(_, s)| s.to_string().contains("\"kind\":\"http\""));
        if uses_http {
            t.push_str(&format!("[plugins.{HTTP_PLUGIN}]\npath = {}\n\n", q(&format!("{dir}/http_request.wasm"))));
            t.push_str(&format!(
                "[grants.{HTTP_PLUGIN}]\n# One rule per method, origin and path the HTTP Request agents use (`*`: a templated segment).\nallow = [\n"
            ));
            for r in &self.rules {
                t.push_str(&format!("  {},\n", q(r)));
            }
            t.push_str("]\n");
            if !self.credentials.is_empty() {
                let names: Vec<String> = self.credentials.keys().map(|k| q(k)).collect();
                t.push_str(&format!("credentials = [{}]\n", names.join(", ")));
            }
            t.push_str("limits = { memory = \"32MiB\", cpu_ms = 2000, wall_ms = 60000, http_requests = 1, response_bytes = \"8MiB\" }\n\n");
        }
        if self.emails {
            t.push_str(&format!("[plugins.{EMAIL_PLUGIN}]\npath = {}\n\n", q(&format!("{dir}/email.wasm"))));
            let mut domains: Vec<String> = self.recipient_domains.iter().map(|d| q(d)).collect();
            if domains.is_empty() {
                // None were literal: a domain that delivers nowhere, until the operator names the real ones.
                domains.push(q("example.invalid"));
            }
            t.push_str(&format!("[grants.{EMAIL_PLUGIN}]\n# Recipients' domains seen in the export; add those templated recipients use.\nsmtp = {{ relay = \"default\", senders = [\"warden@example.com\"], recipient_domains = [{}], max_recipients = 20, max_messages = 1 }}\n", domains.join(", ")));
            if !self.email_credentials.is_empty() {
                let names: Vec<String> = self.email_credentials.iter().map(|k| q(k)).collect();
                t.push_str(&format!("credentials = [{}]\n", names.join(", ")));
            }
            t.push_str("limits = { memory = \"32MiB\", cpu_ms = 1000, wall_ms = 30000 }\n\n");
            t.push_str("[relays.default]\n# Your SMTP relay.\nhost = \"127.0.0.1\"\nport = 25\ntls = \"starttls\"\ndefault_from = \"warden@example.com\"\n\n");
        }
        for (name, c) in &self.credentials {
            t.push_str(&format!("[credentials.{name}]\n# Tines credential `{}`; its value is read from ${} and never enters a step.\n", c.tines_name, c.env));
            match &c.injection {
                Injection::Bearer => t.push_str("kind = \"bearer\"\n"),
                Injection::Header { name, prefix } => {
                    t.push_str(&format!("kind = \"header\"\nheader = {}\n", q(name)));
                    if !prefix.is_empty() {
                        t.push_str(&format!("prefix = {}\n", q(prefix)));
                    }
                }
                Injection::Basic { user } => t.push_str(&format!("kind = \"basic\"\nuser = {}\n", q(user))),
                Injection::Query { param } => t.push_str(&format!("kind = \"query\"\nparam = {}\n", q(param))),
                Injection::Placeholder { marker } => t.push_str(&format!("# Put by the host where the request holds the placeholder (the story has it in place of the credential).\nkind = \"placeholder\"\nplaceholder = {}\n", q(marker))),
            }
            let hosts: Vec<String> = c.hosts.iter().map(|h| q(h)).collect();
            t.push_str(&format!("env = {}\nhosts = [{}]\n\n", q(&c.env), hosts.join(", ")));
        }
        let mut started: BTreeSet<&String> = self.webhooks.iter().map(|(s, _)| s).collect();
        started.extend(self.schedules.iter().map(|(s, _, _)| s));
        for story in started {
            t.push_str(&format!("[triggers.{story}]\n"));
            if self.webhooks.iter().any(|(s, _)| s == story) {
                t.push_str("# Webhooks are signed with this secret (X-Warden-Signature); Tines' path secret is not used.\nsecret_env = \"WARDEN_WEBHOOK_SECRET\"\nallow_sync = true\n");
            }
            if let Some((_, cron, tz)) = self.schedules.iter().find(|(s, _, _)| s == story) {
                t.push_str(&format!("schedule = {}\n", q(cron)));
                if let Some(tz) = tz {
                    t.push_str(&format!("schedule_timezone = {}\n", q(tz)));
                }
            }
            t.push('\n');
        }
        if !self.resources.is_empty() {
            t.push_str("[resources]\n# Values the stories read as RESOURCE.name; fill them in (or name = { file = \"path\" }).\n");
            for r in &self.resources {
                t.push_str(&format!("{r} = \"\"\n"));
            }
            t.push('\n');
        }
        t
    }
}

/// The stories as YAML files: `(file name, text)`, keys in reading order.
pub fn story_files(imported: &Imported) -> Vec<(String, String)> {
    imported
        .stories
        .iter()
        .map(|(name, doc)| {
            let yaml = serde_saphyr::to_string(&StoryDoc::of(doc)).unwrap_or_else(|_| doc.to_string());
            (format!("{name}.yaml"), format!("# Imported from a Tines export by `warden tines import`: a graph story (see docs/tines.md).\n{yaml}"))
        })
        .collect()
}

/// A story as written: the fields in the order a reader wants them.
#[derive(serde::Serialize)]
struct StoryDoc<'a> {
    name: &'a Value,
    description: &'a Value,
    team: &'a Value,
    input: &'a Value,
    graph: GraphDoc<'a>,
}

#[derive(serde::Serialize)]
struct GraphDoc<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    templates: Option<&'a Value>,
    entry: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    exit: Option<&'a Value>,
    agents: Vec<AgentDoc<'a>>,
}

#[derive(serde::Serialize)]
struct AgentDoc<'a> {
    id: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a Value>,
    kind: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    story: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    credential: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    options: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    receivers: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    no_match: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    failure: Option<&'a Value>,
}

impl<'a> StoryDoc<'a> {
    fn of(doc: &'a Value) -> StoryDoc<'a> {
        let g = &doc["graph"];
        let agents = g["agents"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|x| AgentDoc {
                        id: &x["id"],
                        name: x.get("name"),
                        kind: &x["kind"],
                        story: x.get("story"),
                        credential: x.get("credential"),
                        options: x.get("options"),
                        receivers: x.get("receivers"),
                        no_match: x.get("no_match"),
                        failure: x.get("failure"),
                    })
                    .collect()
            })
            .unwrap_or_default();
        StoryDoc {
            name: &doc["name"],
            description: &doc["description"],
            team: &doc["team"],
            input: &doc["input"],
            graph: GraphDoc { templates: g.get("templates"), entry: &g["entry"], exit: g.get("exit"), agents },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_what_tines_references() {
        assert_eq!(snake("Get User Info"), "get_user_info");
        assert_eq!(snake("  Check: severity >= 3 "), "check_severity_3");
        assert_eq!(snake("1st step"), "agent_1st_step");
        assert_eq!(story_name("Alert Triage (v2)"), "alert-triage-v2");
    }

    #[test]
    fn a_credential_reference_is_found_in_every_spelling() {
        assert_eq!(one_reference("Bearer {% credential okta %}"), Some(("Bearer ".into(), "okta".into(), "".into())));
        assert_eq!(one_reference("{{ .CREDENTIAL.vt_key }}"), Some(("".into(), "vt_key".into(), "".into())));
        assert_eq!(one_reference("<<CREDENTIAL.jira>>"), Some(("".into(), "jira".into(), "".into())));
        assert_eq!(one_reference("{{ .CREDENTIAL.x | base64_encode }}"), None, "inside an expression: not a plain reference");
        assert!(mentions_credential("{{ .CREDENTIAL.x | base64_encode }}"));
        assert!(mentions_credential("{%credential x%}"));
    }

    #[test]
    fn repeated_names_and_template_inputs_are_said() {
        let e = Export::parse(
            r#"{"name": "Dupes", "agents": [
            {"type": "Agents::EventTransformationAgent", "name": "Send a message", "guid": "a", "options": {"mode": "message_only", "payload": {}}},
            {"type": "Agents::EventTransformationAgent", "name": "Send a message", "guid": "b", "options": {"mode": "message_only", "payload": {}}}
        ], "links": [{"source": 0, "receiver": 1}], "integrations": [{"action_guid": "b", "product": "Slack", "action_inputs": []}]}"#,
        )
        .unwrap();
        let i = import(&e, &ImportOptions::default());
        let r = i.report.to_string();
        assert!(
            r.contains(
                "two agents are named `Send a message` (agents 0 and 1): references `.send_a_message` resolve to the first; this one is `send_a_message_2`"
            ),
            "{r}"
        );
        assert!(r.contains("unsupported dupes / Send a message: its Slack template inputs (integrations) are not converted"), "{r}");
        let ids: Vec<&Value> = i.stories[0].1["graph"]["agents"].as_array().unwrap().iter().map(|a| &a["id"]).collect();
        assert_eq!(ids, [&json!("input"), &json!("send_a_message"), &json!("send_a_message_2")]);
    }

    #[test]
    fn urls_split_into_origin_and_a_path_glob() {
        let (o, p, q) = split_url("https://API.example.com/users/{{ .a.id }}/groups?x=1");
        assert_eq!(o.as_deref(), Some("https://api.example.com"));
        assert_eq!(path_glob(&p), "/users/*/groups");
        assert_eq!(q, "x=1");
        assert_eq!(split_url("{% global_resource base %}/x").0, None);
        assert_eq!(split_url("https://{{ .a.host }}/x").0, None);
    }
}
