//! Graph stories: Tines' event semantics inside warden (what `warden tines
//! import` writes; see docs/tines.md).
//!
//! A graph story has `graph.agents` instead of `steps`. Each agent receives
//! events from the agents that name it in `receivers` and emits events to its
//! own receivers: a webhook emits the run's input, an HTTP request its answer,
//! a trigger the incoming event when its rules hold (else to `no_match`), an
//! explode one event per list item, an implode one list once it has all of
//! an explode's items. Options are Tines' own, rendered with Tines' Liquid
//! ([`warden_eval::liquid`]) against the event's context: every agent
//! upstream of it by snake_cased name, plus `META`.
//!
//! Execution (the `warden-graph` crate) takes events one at a
//! time in the order they were emitted, so a run is deterministic; each
//! agent's n-th execution is recorded as step `agent` item `n`. Actions (HTTP
//! requests, emails) run as plugins under the policy, like any action step,
//! with host-injected credentials.

use super::{ErrorKind, OnError, Retry, Step, StepKind};
use regex::Regex;
use serde::Deserialize;
use serde_json::{Map, Value};
use serde_saphyr::Spanned;
use std::sync::OnceLock;
use std::time::Duration;
use warden_eval::formula;
use warden_eval::liquid::Liquid;

/// Events one run may emit in all, unless `graph.max_events` says otherwise
/// (a paging loop that never ends stops here, failing the run).
pub const DEFAULT_MAX_EVENTS: usize = 10_000;
/// The most `graph.max_events` may be.
pub const MAX_EVENTS: usize = 1_000_000;
/// Longest delay an agent may hold a run for.
pub const MAX_DELAY: Duration = Duration::from_secs(3600);
/// Items a message_only `loop` renders its payload for.
pub const MAX_LOOP: usize = 10_000;
/// Items one explode may emit (Tines' default `limit`).
pub const DEFAULT_EXPLODE_LIMIT: usize = 500;

/// The plugin an imported HTTP Request agent runs as.
pub const HTTP_PLUGIN: &str = "http-request";
/// The plugin an imported Send Email agent runs as.
pub const EMAIL_PLUGIN: &str = "email";

#[derive(Debug, Clone)]
pub struct Graph {
    pub agents: Vec<Agent>,
    /// The agent that receives the run's input.
    pub entry: usize,
    /// Agents whose events are the run's output (the last one emitted).
    pub exits: Vec<usize>,
    pub max_events: usize,
    /// Options may hold Tines formulas (`=expr`, `<<expr>>`) beside Liquid.
    pub formulas: bool,
}

#[derive(Debug, Clone)]
pub struct Agent {
    pub id: String,
    /// The Tines name, for messages.
    pub name: String,
    pub line: u64,
    pub kind: AgentKind,
    /// Tines options, templates unrendered.
    pub options: Value,
    /// The policy credential the host injects into this agent's requests.
    pub credential: Option<String>,
    pub receivers: Vec<usize>,
    /// A trigger's receivers when its rules do not hold.
    pub no_match: Vec<usize>,
    /// Receivers of `{error}` when this agent fails (else the run fails).
    pub failure: Vec<usize>,
    /// The step an action or story agent runs as (its input set per event).
    pub step: Option<Step>,
    /// Every name its options could read (identifiers in its strings): only
    /// those upstream payloads are put in its template context, so an agent
    /// that does not read a large answer does not pay for copying it.
    pub reads: std::collections::BTreeSet<String>,
}

#[derive(Debug, Clone)]
pub enum AgentKind {
    Webhook,
    /// An HTTP Request agent, run as this plugin.
    Http(String),
    /// A Send Email agent, run as this plugin.
    Email(String),
    /// Send to Story: the called story's name.
    Story(String),
    Message,
    Extract(Vec<Matcher>),
    Explode {
        path: String,
        to: String,
        limit: usize,
    },
    Implode {
        guid_path: String,
        size_path: String,
    },
    /// `lookback` > 0: across runs, among the last that many values (in the
    /// run store); 0: within the run.
    Deduplicate {
        path: String,
        lookback: u64,
    },
    Delay(Duration),
    Trigger {
        rules: Vec<Rule>,
        must_match: usize,
    },
}

impl AgentKind {
    pub fn name(&self) -> &'static str {
        match self {
            AgentKind::Webhook => "webhook",
            AgentKind::Http(_) => "http",
            AgentKind::Email(_) => "email",
            AgentKind::Story(_) => "story",
            AgentKind::Message => "message",
            AgentKind::Extract(_) => "extract",
            AgentKind::Explode { .. } => "explode",
            AgentKind::Implode { .. } => "implode",
            AgentKind::Deduplicate { .. } => "deduplicate",
            AgentKind::Delay(_) => "delay",
            AgentKind::Trigger { .. } => "trigger",
        }
    }

    /// The step kind its rows are stored under.
    pub fn step_kind(&self) -> &'static str {
        match self {
            AgentKind::Http(_) | AgentKind::Email(_) => "action",
            AgentKind::Story(_) => "story",
            _ => "transform",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Matcher {
    pub path: String,
    pub regex: Regex,
    pub to: String,
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub test: Test,
    pub path: String,
    pub value: String,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Test {
    Regex,
    NotRegex,
    Equal,
    NotEqual,
    Greater,
    GreaterOrEqual,
    Less,
    LessOrEqual,
    Contains,
    NotContains,
}

impl Test {
    /// Tines' rule type names.
    pub const NAMES: &'static [(&'static str, Test)] = &[
        ("regex", Test::Regex),
        ("!regex", Test::NotRegex),
        ("field==value", Test::Equal),
        ("field!=value", Test::NotEqual),
        ("field>value", Test::Greater),
        ("field>=value", Test::GreaterOrEqual),
        ("field<value", Test::Less),
        ("field<=value", Test::LessOrEqual),
        ("contains", Test::Contains),
        ("field_contains", Test::Contains),
        ("!contains", Test::NotContains),
        ("not_contains", Test::NotContains),
    ];

    pub fn parse(name: &str) -> Option<Test> {
        Test::NAMES.iter().find(|(n, _)| *n == name.trim()).map(|(_, t)| *t)
    }
}

impl Rule {
    /// Whether the rule holds for the rendered field and value. A rule whose
    /// regex does not compile, or that compares numbers with text, does not.
    pub fn holds(&self, field: &str, value: &str) -> bool {
        let number = |s: &str| s.trim().parse::<f64>().ok();
        let cmp = |f: fn(f64, f64) -> bool| matches!((number(field), number(value)), (Some(a), Some(b)) if f(a, b));
        match self.test {
            Test::Regex => regex(value).is_some_and(|r| r.is_match(field)),
            Test::NotRegex => regex(value).is_some_and(|r| !r.is_match(field)),
            Test::Equal => field == value || matches!((number(field), number(value)), (Some(a), Some(b)) if a == b),
            Test::NotEqual => !(field == value || matches!((number(field), number(value)), (Some(a), Some(b)) if a == b)),
            Test::Greater => cmp(|a, b| a > b),
            Test::GreaterOrEqual => cmp(|a, b| a >= b),
            Test::Less => cmp(|a, b| a < b),
            Test::LessOrEqual => cmp(|a, b| a <= b),
            Test::Contains => field.contains(value),
            Test::NotContains => !field.contains(value),
        }
    }
}

/// A regex from an export (Ruby's syntax is mostly Rust's), size-capped.
pub use warden_eval::regex;

/// Strings as Tines means them: `"true"`, `"1"`, `"60"`.
pub fn number_of(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

pub fn bool_of(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => Some(true),
            "false" | "0" | "no" | "" => Some(false),
            _ => None,
        },
        Value::Number(n) => Some(n.as_f64() != Some(0.0)),
        Value::Null => Some(false),
        _ => None,
    }
}

/// The Liquid renderer every graph story shares (parsed templates cached).
pub fn liquid() -> &'static Liquid {
    static L: OnceLock<Liquid> = OnceLock::new();
    L.get_or_init(Liquid::new)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGraph {
    #[serde(default)]
    entry: Option<String>,
    #[serde(default)]
    exit: Vec<String>,
    #[serde(default)]
    max_events: Option<usize>,
    /// `liquid` (default) or `formulas` (Liquid too, and `=expr` / `<<expr>>`).
    #[serde(default)]
    templates: Option<String>,
    agents: Vec<Spanned<RawAgent>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    id: String,
    #[serde(default)]
    name: Option<String>,
    kind: String,
    #[serde(default)]
    options: Option<Value>,
    #[serde(default)]
    credential: Option<String>,
    #[serde(default)]
    story: Option<String>,
    /// The plugin for `http` and `email` (default http-request, email).
    #[serde(default)]
    plugin: Option<String>,
    #[serde(default)]
    receivers: Vec<String>,
    #[serde(default)]
    no_match: Vec<String>,
    #[serde(default)]
    failure: Vec<String>,
}

/// The kinds an agent may be.
pub const KINDS: &[&str] = &["webhook", "http", "email", "story", "message", "extract", "explode", "implode", "deduplicate", "delay", "trigger"];

/// Every identifier-like word in `texts`: a superset of the roots their
/// templates and formulas can name (both name a root only by its name).
fn identifiers(texts: &[String]) -> std::collections::BTreeSet<String> {
    // Tines' tags name these without spelling them (`{% global_resource x %}`, `{% story_run_guid %}`).
    let mut out: std::collections::BTreeSet<String> = ["META", "RESOURCE"].into_iter().map(String::from).collect();
    for t in texts {
        let mut word = String::new();
        for c in t.chars().chain(std::iter::once(' ')) {
            if c.is_ascii_alphanumeric() || c == '_' {
                word.push(c);
            } else if !word.is_empty() {
                out.insert(std::mem::take(&mut word));
            }
        }
    }
    out
}

/// Every string in `v` (templates, formulas and plain text alike).
fn every_string(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| every_string(x, out)),
        Value::Object(o) => o.values().for_each(|x| every_string(x, out)),
        _ => {}
    }
}

/// Converts and checks a parsed `graph`: `(line, message)` per error.
pub(super) fn convert(raw: &RawGraph, story_line: u64) -> Result<Graph, Vec<(u64, String)>> {
    let mut errors = Vec::new();
    let formulas = match raw.templates.as_deref() {
        None | Some("liquid") => false,
        Some("formulas") => true,
        Some(other) => {
            errors.push((story_line, format!("graph.templates `{other}` is unknown; use liquid or formulas")));
            false
        }
    };
    let ids: Vec<&str> = raw.agents.iter().map(|a| a.value.id.as_str()).collect();
    let index = |id: &str| ids.iter().position(|x| *x == id);
    let mut agents = Vec::new();
    for (i, ra) in raw.agents.iter().enumerate() {
        let (line, a) = (ra.referenced.line(), &ra.value);
        let mut err = |m: String| errors.push((line, format!("agent `{}`: {m}", a.id)));
        if !super::valid_id(&a.id) {
            err("an agent id must be letters, digits and _ (templates name it as `.id`)".into());
        }
        if ids[..i].contains(&a.id.as_str()) {
            err("duplicate agent id; ids must be unique in a story".into());
        }
        let options = a.options.clone().unwrap_or(Value::Object(Map::new()));
        let Some(opts) = options.as_object() else {
            err("options must be a mapping".into());
            continue;
        };
        let text = |k: &str| opts.get(k).and_then(|v| v.as_str()).map(str::to_string);
        let links = |names: &[String], what: &str, err: &mut dyn FnMut(String)| -> Vec<usize> {
            names
                .iter()
                .filter_map(|n| {
                    let found = index(n);
                    if found.is_none() {
                        err(format!("{what} `{n}` is not an agent of this story (agents: {})", ids.join(", ")));
                    }
                    found
                })
                .collect()
        };
        let receivers = links(&a.receivers, "receiver", &mut err);
        let no_match = links(&a.no_match, "no_match receiver", &mut err);
        let failure = links(&a.failure, "failure receiver", &mut err);
        let mut attempts = 1;
        let kind = match a.kind.as_str() {
            "webhook" => {
                if let Some(c) = opts.get("response_code").filter(|c| !c.is_null() && **c != "") {
                    if !number_of(c).is_some_and(|n| (200.0..300.0).contains(&n) && n.fract() == 0.0) {
                        err(format!("webhook response_code {c} must be a 2xx status: the run was created, whatever the story answers"));
                    }
                }
                AgentKind::Webhook
            }
            "http" => {
                if text("url").is_none_or(|u| u.trim().is_empty()) {
                    err("an http agent needs options.url".into());
                }
                let retry = opts.get("retry_on_status").map(|v| !matches!(v, Value::Null) && v.as_array().is_none_or(|a| !a.is_empty())).unwrap_or(false);
                if retry {
                    attempts = 3;
                }
                AgentKind::Http(a.plugin.clone().unwrap_or_else(|| HTTP_PLUGIN.into()))
            }
            "email" => {
                if opts.get("recipients").is_none() {
                    err("an email agent needs options.recipients".into());
                }
                AgentKind::Email(a.plugin.clone().unwrap_or_else(|| EMAIL_PLUGIN.into()))
            }
            "story" => match &a.story {
                Some(s) => AgentKind::Story(s.clone()),
                None => {
                    err("a story agent names the story it sends to: story: NAME".into());
                    continue;
                }
            },
            "message" => AgentKind::Message,
            "extract" => {
                let mut matchers = Vec::new();
                for m in opts.get("matchers").and_then(|m| m.as_array()).into_iter().flatten() {
                    let (path, re, to) =
                        (m.get("path").and_then(|v| v.as_str()), m.get("regexp").and_then(|v| v.as_str()), m.get("to").and_then(|v| v.as_str()));
                    match (path, re.map(|r| (r, regex(r))), to) {
                        (Some(path), Some((_, Some(regex))), Some(to)) => matchers.push(Matcher { path: path.into(), regex, to: to.into() }),
                        (_, Some((r, None)), _) => err(format!("extract: regexp `{r}` does not compile")),
                        _ => err("extract: each matcher needs path, regexp and to".into()),
                    }
                }
                if matchers.is_empty() {
                    err("extract needs options.matchers".into());
                }
                AgentKind::Extract(matchers)
            }
            "explode" => {
                let limit = opts.get("limit").and_then(number_of).map(|n| n as usize).unwrap_or(DEFAULT_EXPLODE_LIMIT);
                match (text("path"), text("to")) {
                    (Some(path), Some(to)) => AgentKind::Explode { path, to, limit: limit.clamp(1, 100_000) },
                    _ => {
                        err("explode needs options.path (the list) and options.to (the key for each item)".into());
                        continue;
                    }
                }
            }
            "implode" => match (text("guid_path"), text("size_path")) {
                (Some(guid_path), Some(size_path)) => AgentKind::Implode { guid_path, size_path },
                _ => {
                    err("implode needs options.guid_path and options.size_path".into());
                    continue;
                }
            },
            "deduplicate" => match text("path") {
                Some(path) => {
                    let lookback = opts.get("lookback").and_then(number_of).unwrap_or(0.0);
                    if !(0.0..=1_000_000.0).contains(&lookback) {
                        err("deduplicate lookback must be 0..1000000 (values remembered across runs; 0: within the run)".into());
                    }
                    AgentKind::Deduplicate { path, lookback: lookback.clamp(0.0, 1_000_000.0) as u64 }
                }
                None => {
                    err("deduplicate needs options.path".into());
                    continue;
                }
            },
            "delay" => match opts.get("seconds").and_then(number_of) {
                Some(s) if s >= 0.0 && s <= MAX_DELAY.as_secs_f64() => AgentKind::Delay(Duration::from_secs_f64(s)),
                _ => {
                    err(format!("delay needs options.seconds, 0 to {}", MAX_DELAY.as_secs()));
                    continue;
                }
            },
            "trigger" => {
                let mut rules = Vec::new();
                for r in opts.get("rules").and_then(|m| m.as_array()).into_iter().flatten() {
                    let ty = r.get("type").and_then(|v| v.as_str()).unwrap_or("");
                    let Some(test) = Test::parse(ty) else {
                        let known: Vec<&str> = Test::NAMES.iter().map(|(n, _)| *n).collect();
                        err(format!("trigger rule type `{ty}` is unknown; use {}", known.join(", ")));
                        continue;
                    };
                    let s = |k: &str| r.get(k).map(|v| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())).unwrap_or_default();
                    rules.push(Rule { test, path: s("path"), value: s("value") });
                }
                let must_match = match opts.get("must_match") {
                    None | Some(Value::Null) => rules.len(),
                    Some(v) => match number_of(v) {
                        Some(n) if n >= 1.0 && (n as usize) <= rules.len().max(1) => n as usize,
                        _ => {
                            err(format!("trigger must_match must be 1..{} (its rules)", rules.len()));
                            rules.len()
                        }
                    },
                };
                AgentKind::Trigger { rules, must_match }
            }
            other => {
                err(format!("kind `{other}` is unknown; use {}", KINDS.join(", ")));
                continue;
            }
        };
        if !matches!(kind, AgentKind::Trigger { .. }) && !a.no_match.is_empty() {
            err("only a trigger has no_match receivers".into());
        }
        if a.credential.is_some() && !matches!(kind, AgentKind::Http(_)) {
            err("only an http agent takes a credential".into());
        }
        // Every template must parse now, not at the run that reaches it.
        let mut texts = Vec::new();
        every_string(&options, &mut texts);
        for t in &texts {
            if formulas && formula::is_formula(t) {
                for src in formula::sources(t) {
                    match formula::parse(&src) {
                        Ok(e) => {
                            let mut unknown = Vec::new();
                            formula::unknown_functions(&e, &mut unknown);
                            if !unknown.is_empty() {
                                err(format!("formula `{}` calls {}, which warden does not have", crate::story::template::excerpt(&src), unknown.join(", ")));
                            }
                        }
                        Err(e) => err(format!("bad formula `{}`: {e}", crate::story::template::excerpt(&src))),
                    }
                }
            } else if t.contains("{{") || t.contains("{%") {
                if let Err(e) = liquid().check(t) {
                    err(format!("bad template `{}`: {e}", crate::story::template::excerpt(t)));
                }
            }
        }
        let step_kind = match &kind {
            AgentKind::Http(p) | AgentKind::Email(p) => Some(StepKind::Action(p.clone())),
            AgentKind::Story(s) => Some(StepKind::Story(s.clone())),
            _ => None,
        };
        let step = step_kind.map(|kind| Step {
            id: a.id.clone(),
            line,
            kind,
            with: Value::Null,
            condition: None,
            for_each: None,
            concurrency: 1,
            // An HTTP request answered with a status in its `retry_on_status` fails as upstream: tried again.
            retry: Retry { attempts, backoff_ms: 1000, max_backoff_ms: 30_000, on: vec![ErrorKind::Upstream] },
            timeout: None,
            on_error: OnError::Fail,
            literal: true,
        });
        let reads = identifiers(&texts);
        agents.push(Agent {
            id: a.id.clone(),
            name: a.name.clone().unwrap_or_else(|| a.id.clone()),
            line,
            kind,
            options,
            credential: a.credential.clone(),
            receivers,
            no_match,
            failure,
            step,
            reads,
        });
    }
    let entry = match &raw.entry {
        Some(e) => index(e).unwrap_or_else(|| {
            errors.push((story_line, format!("graph.entry `{e}` is not an agent of this story")));
            0
        }),
        None => agents.iter().position(|a| matches!(a.kind, AgentKind::Webhook)).unwrap_or(0),
    };
    let exits = raw
        .exit
        .iter()
        .filter_map(|e| {
            let found = index(e);
            if found.is_none() {
                errors.push((story_line, format!("graph.exit `{e}` is not an agent of this story")));
            }
            found
        })
        .collect();
    let max_events = raw.max_events.unwrap_or(DEFAULT_MAX_EVENTS);
    if max_events == 0 || max_events > MAX_EVENTS {
        errors.push((story_line, format!("graph.max_events must be 1..{MAX_EVENTS}")));
    }
    if agents.is_empty() && errors.is_empty() {
        errors.push((story_line, "graph.agents is empty; a graph story needs at least its entry agent".into()));
    }
    if errors.is_empty() {
        Ok(Graph { agents, entry, exits, max_events, formulas })
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(test: Test) -> Rule {
        Rule { test, path: String::new(), value: String::new() }
    }

    #[test]
    fn trigger_rules_compare_as_tines_does() {
        assert!(rule(Test::Regex).holds("Critical alert", "(?i)critical"));
        assert!(!rule(Test::NotRegex).holds("Critical alert", "(?i)critical"));
        assert!(rule(Test::Equal).holds("5", "5.0"), "numbers compare as numbers");
        assert!(rule(Test::Equal).holds("abc", "abc"));
        assert!(rule(Test::NotEqual).holds("abc", "abd"));
        assert!(rule(Test::Greater).holds("10", "9"), "not as text, where 10 < 9");
        assert!(!rule(Test::Greater).holds("ten", "9"), "text is never greater than a number");
        assert!(rule(Test::GreaterOrEqual).holds("9", "9"));
        assert!(rule(Test::Less).holds("-1", "0"));
        assert!(rule(Test::LessOrEqual).holds("0", "0"));
        assert!(rule(Test::Contains).holds("evil.example.com", "evil"));
        assert!(rule(Test::NotContains).holds("good.example.com", "evil"));
        assert!(!rule(Test::Regex).holds("x", "(unclosed"), "a regex that does not compile holds for nothing");
    }

    #[test]
    fn a_graph_story_is_checked_at_load_formulas_and_templates_alike() {
        let story = |opts: &str| {
            format!("name: g\ngraph:\n  templates: formulas\n  agents:\n    - id: start\n      kind: webhook\n      receivers: [m]\n    - id: m\n      kind: message\n      options: {opts}\n")
        };
        let err = |opts: &str| crate::story::parse(&story(opts), std::path::Path::new("g.yaml")).unwrap_err().to_string();
        let e = err("{payload: {x: \"=NOPE(1)\"}}");
        assert!(e.contains("agent `m`: formula `NOPE(1)` calls NOPE, which warden does not have"), "{e}");
        assert!(err("{payload: {x: \"=IF(1, \"}}").contains("bad formula"));
        assert!(err("{payload: {x: \"{{ .a | }}\"}}").contains("bad template"));
        assert!(crate::story::parse(&story("{payload: {x: \"=UPPER(start.name)\", y: \"{{ .start.n }}\"}}"), std::path::Path::new("g.yaml")).is_ok());
        let e = crate::story::parse("name: g\ngraph:\n  agents:\n    - id: a\n      kind: webhook\n      receivers: [nope]\n", std::path::Path::new("g.yaml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("receiver `nope` is not an agent of this story (agents: a)"), "{e}");
    }

    #[test]
    fn tines_strings_mean_what_tines_means() {
        assert_eq!(bool_of(&Value::from("true")), Some(true));
        assert_eq!(bool_of(&Value::from("1")), Some(true));
        assert_eq!(bool_of(&Value::from("false")), Some(false));
        assert_eq!(number_of(&Value::from("60")), Some(60.0));
        assert_eq!(number_of(&Value::from(" 2.5 ")), Some(2.5));
    }
}
