//! Stories: what security teams build and share.
//!
//! A story file (YAML, JSON accepted) holds one story: `name`, `description`,
//! `team`, an `input` schema, `steps`, optional `fallbacks`, and `output`. A
//! step is an `action` (a plugin), a `story` (send to another story), or a
//! built-in `transform`; any step may have `if`, `for_each` (+ `concurrency`),
//! `retry`, `timeout_ms` and `on_error`. Everything that can be checked is
//! checked at load, with `file:line`: unknown plugins and stories, duplicate or
//! misspelt step ids, references to later or unknown steps, bad templates,
//! cycles between stories.

pub mod graph;
mod library;
pub mod observe;
pub mod recorder;
pub mod run;
pub mod schema;
pub mod state;
pub mod template;
pub mod transform;

pub use library::Library;
use serde::Deserialize;
use serde_json::Value;
use serde_saphyr::Spanned;
pub use state::{ErrorKind, RunResult, RunState, StepError, StepState};
use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;
pub use transform::Transform;

/// A story error: `file:line: what; the fix`.
pub type StoryError = crate::located::Located;

/// All errors of a check, one per line.
#[derive(Debug, Clone)]
pub struct StoryErrors(pub Vec<StoryError>);

impl fmt::Display for StoryErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<String> = self.0.iter().map(|e| e.to_string()).collect();
        f.write_str(&lines.join("\n"))
    }
}

impl std::error::Error for StoryErrors {}

#[derive(Debug, Clone, PartialEq)]
pub enum StepKind {
    Action(String),
    Story(String),
    Transform(Transform),
    /// Waits for a person's decision (see [`crate::approval`]).
    Approval(Box<crate::approval::ApprovalSpec>),
}

impl StepKind {
    /// `action`, `story` or `transform`, as stored and in metrics.
    pub fn name(&self) -> &'static str {
        match self {
            StepKind::Action(_) => "action",
            StepKind::Story(_) => "story",
            StepKind::Transform(_) => "transform",
            StepKind::Approval(_) => "approval",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum OnError {
    Fail,
    Continue,
    /// Run the named fallback; its output stands in for the step's.
    Fallback(String),
}

/// Which failures a retry policy retries, by [`ErrorKind`].
#[derive(Debug, Clone, PartialEq)]
pub struct Retry {
    pub attempts: u32,
    pub backoff_ms: u64,
    pub max_backoff_ms: u64,
    pub on: Vec<ErrorKind>,
}

impl Default for Retry {
    fn default() -> Self {
        Retry { attempts: 1, backoff_ms: 1000, max_backoff_ms: 60_000, on: vec![ErrorKind::Upstream, ErrorKind::Timeout] }
    }
}

impl Retry {
    /// Whether a failure of `kind` at attempt `attempt` gets another attempt.
    pub fn again(&self, attempt: u32, kind: ErrorKind) -> bool {
        attempt < self.attempts && self.on.contains(&kind)
    }

    /// How long to wait before attempt `attempt + 1`: exponential backoff, or
    /// longer when the upstream asked (`Retry-After`), never past `max_backoff_ms`.
    pub fn wait(&self, attempt: u32, retry_after_ms: Option<u64>) -> Duration {
        let backoff = self.backoff_ms.saturating_mul(1 << (attempt.saturating_sub(1)).min(16)).min(self.max_backoff_ms);
        Duration::from_millis(backoff.max(retry_after_ms.unwrap_or(0).min(self.max_backoff_ms)))
    }
}

#[derive(Debug, Clone)]
pub struct Step {
    pub id: String,
    pub line: u64,
    pub kind: StepKind,
    pub with: Value,
    pub condition: Option<String>,
    pub for_each: Option<String>,
    pub concurrency: usize,
    pub retry: Retry,
    pub timeout: Option<Duration>,
    pub on_error: OnError,
    /// `with` is the input as it is (a graph agent's, rendered already with
    /// Liquid), never a template to render.
    pub literal: bool,
}

#[derive(Debug, Clone)]
pub struct Story {
    pub name: String,
    pub description: String,
    pub team: String,
    pub input_schema: Value,
    /// Teams (other than its own) that may call this story as a sub-story.
    pub allow_callers: Vec<String>,
    /// What it runs.
    pub body: Body,
    pub file: PathBuf,
    pub line: u64,
}

/// What a story runs: one kind or the other, never fields of both.
#[derive(Debug, Clone)]
pub enum Body {
    /// `steps:` in order (with fallbacks and an `output:`), run by [`engine`].
    Steps(Steps),
    /// `graph:` agents and the events between them (Tines' model): see [`graph`].
    Graph(graph::Graph),
}

/// A story of steps.
#[derive(Debug, Clone, Default)]
pub struct Steps {
    pub steps: Vec<Step>,
    /// Steps that stand in for a failed one (`on_error: <fallback id>`).
    pub fallbacks: Vec<Step>,
    /// The run's output (templates over the steps); `None`: the last step's.
    pub output: Option<Value>,
}

impl Steps {
    pub fn fallback(&self, id: &str) -> Option<&Step> {
        self.fallbacks.iter().find(|s| s.id == id)
    }
}

impl Story {
    /// The steps of a story of steps (`None` for a graph story).
    pub fn steps(&self) -> Option<&Steps> {
        match &self.body {
            Body::Steps(s) => Some(s),
            Body::Graph(_) => None,
        }
    }

    /// The graph of a graph story (`None` for a story of steps).
    pub fn graph(&self) -> Option<&graph::Graph> {
        match &self.body {
            Body::Graph(g) => Some(g),
            Body::Steps(_) => None,
        }
    }

    /// Every step that may run: the steps and the fallbacks, or a graph's
    /// agents that run a plugin or a story (for the checks and preloading
    /// that look at what a story uses).
    pub fn all_steps(&self) -> Box<dyn Iterator<Item = &Step> + '_> {
        match &self.body {
            Body::Steps(s) => Box::new(s.steps.iter().chain(&s.fallbacks)),
            Body::Graph(g) => Box::new(g.agents.iter().filter_map(|a| a.step.as_ref())),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStory {
    name: Spanned<String>,
    #[serde(default)]
    description: String,
    #[serde(default)]
    team: Option<String>,
    #[serde(default)]
    input: Option<Value>,
    #[serde(default)]
    steps: Vec<Spanned<RawStep>>,
    #[serde(default)]
    graph: Option<graph::RawGraph>,
    #[serde(default)]
    fallbacks: Vec<Spanned<RawStep>>,
    #[serde(default)]
    output: Option<Value>,
    #[serde(default)]
    allow_callers: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    id: String,
    action: Option<String>,
    story: Option<String>,
    transform: Option<serde_json::Map<String, Value>>,
    approval: Option<RawApproval>,
    #[serde(default)]
    with: Option<Value>,
    #[serde(rename = "if")]
    condition: Option<String>,
    for_each: Option<String>,
    concurrency: Option<usize>,
    retry: Option<RawRetry>,
    timeout_ms: Option<u64>,
    on_error: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApproval {
    title: String,
    #[serde(default)]
    details: Option<Value>,
    #[serde(default)]
    choices: Option<Vec<RawChoice>>,
    /// A list of addresses / `team:NAME`, or one `{{ expression }}` over the input.
    #[serde(default)]
    approvers: Option<Value>,
    timeout: String,
    #[serde(default)]
    on_timeout: Option<String>,
}

/// A choice: its name, or `{name, style: danger, confirm: true}`.
#[derive(Deserialize, Clone)]
#[serde(untagged)]
enum RawChoice {
    Name(String),
    Marked(MarkedChoice),
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct MarkedChoice {
    name: String,
    /// `danger` (shown as dangerous) or `default`.
    #[serde(default)]
    style: Option<String>,
    /// Taken only once confirmed.
    #[serde(default)]
    confirm: bool,
}

impl RawApproval {
    fn spec(&self) -> Result<crate::approval::ApprovalSpec, String> {
        use crate::approval::{ApprovalSpec, Approvers, OnTimeout, DEFAULT_CHOICES};
        let (mut choices, mut danger, mut confirm) = (Vec::new(), Vec::new(), Vec::new());
        match &self.choices {
            None => choices = DEFAULT_CHOICES.iter().map(|c| c.to_string()).collect(),
            Some(list) => {
                for c in list {
                    match c {
                        RawChoice::Name(n) => choices.push(n.clone()),
                        RawChoice::Marked(m) => {
                            match m.style.as_deref() {
                                None | Some("default") => {}
                                Some("danger") => danger.push(m.name.clone()),
                                Some(other) => return Err(format!("choice `{}`: style `{other}` is not a style; use danger or default", m.name)),
                            }
                            if m.confirm {
                                confirm.push(m.name.clone());
                            }
                            choices.push(m.name.clone());
                        }
                    }
                }
            }
        }
        let approvers = match &self.approvers {
            None | Some(Value::Null) => Approvers::List(Vec::new()),
            Some(Value::String(t)) if template::is_template(t) => Approvers::Template(t.clone()),
            Some(Value::String(one)) => Approvers::List(vec![one.clone()]),
            Some(Value::Array(a)) => Approvers::List(
                a.iter().map(|v| v.as_str().map(String::from).ok_or_else(|| format!("approvers: `{v}` is not an address"))).collect::<Result<_, _>>()?,
            ),
            Some(other) => return Err(format!("approvers must be a list of addresses (or team:NAME), not {other}")),
        };
        let on_timeout = match self.on_timeout.as_deref() {
            None | Some("fail") => OnTimeout::Fail,
            Some(choice) => OnTimeout::Choice(choice.to_string()),
        };
        let spec = ApprovalSpec {
            title: self.title.clone(),
            details: self.details.clone().unwrap_or(Value::Null),
            choices,
            danger,
            confirm,
            approvers,
            timeout: crate::approval::parse_duration(&self.timeout).map_err(|e| format!("timeout: {e}"))?,
            on_timeout,
        };
        spec.validate()?;
        Ok(spec)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    attempts: u32,
    backoff_ms: Option<u64>,
    max_backoff_ms: Option<u64>,
    on: Option<Vec<String>>,
}

fn valid_id(id: &str) -> bool {
    let mut chars = id.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_') && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Parses one story file (no cross-story checks; see [`Library::check`]).
pub fn parse(text: &str, file: &Path) -> Result<Story, StoryErrors> {
    let fname = file.display().to_string();
    let err = |line: u64, message: String| StoryError { file: fname.clone(), line, message };
    let raw: RawStory = serde_saphyr::from_str(text).map_err(|e| {
        let line = e.location().map(|l| l.line()).unwrap_or(0);
        let msg = e.to_string();
        let first = msg.lines().next().unwrap_or("").to_string();
        StoryErrors(vec![err(line, format!("{first} (a story needs name, steps; each step an id and one of action, story, transform, approval)"))])
    })?;
    let mut errors = Vec::new();
    let name = raw.name.value.clone();
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        errors.push(err(raw.name.referenced.line(), format!("story name `{}` must be letters, digits, - and _", template::excerpt(&name))));
    }
    let convert = |raw: &Spanned<RawStep>, errors: &mut Vec<StoryError>| -> Option<Step> {
        let line = raw.referenced.line();
        let r = &raw.value;
        if !valid_id(&r.id) {
            errors.push(err(
                line,
                format!("step id `{}` must be an identifier (letters, digits, _) so templates can name it as steps.{}", r.id, r.id.replace('-', "_")),
            ));
        }
        let kinds = [r.action.is_some(), r.story.is_some(), r.transform.is_some(), r.approval.is_some()].iter().filter(|b| **b).count();
        if kinds != 1 {
            errors.push(err(line, format!("step `{}` needs exactly one of action, story, transform or approval", r.id)));
            return None;
        }
        let kind = if let Some(a) = &r.approval {
            match a.spec() {
                Ok(spec) => StepKind::Approval(Box::new(spec)),
                Err(m) => {
                    errors.push(err(line, format!("step `{}`: approval: {m}", r.id)));
                    return None;
                }
            }
        } else if let Some(a) = &r.action {
            StepKind::Action(a.clone())
        } else if let Some(s) = &r.story {
            StepKind::Story(s.clone())
        } else {
            let t = match Transform::from_map(r.transform.clone().unwrap_or_default()) {
                Ok(t) => t,
                Err(m) => {
                    errors.push(err(line, format!("step `{}`: {m}", r.id)));
                    return None;
                }
            };
            if let Err(m) = t.validate() {
                errors.push(err(line, format!("step `{}`: {m}", r.id)));
            }
            if r.with.is_some() {
                errors.push(err(line, format!("step `{}`: a transform takes its arguments inside `transform`, not `with`", r.id)));
            }
            StepKind::Transform(t)
        };
        let retry = match &r.retry {
            None => Retry::default(),
            Some(rr) => {
                let mut on = Vec::new();
                match &rr.on {
                    None => on = Retry::default().on,
                    Some(kinds) => {
                        for k in kinds {
                            match ErrorKind::parse(k).filter(|k| ErrorKind::RETRYABLE.contains(k)) {
                                Some(kind) => on.push(kind),
                                None => {
                                    let known: Vec<&str> = ErrorKind::RETRYABLE.iter().map(|k| k.as_str()).collect();
                                    errors.push(err(line, format!("step `{}`: retry.on kind `{k}` is unknown; use {}", r.id, known.join(", "))))
                                }
                            }
                        }
                    }
                }
                if rr.attempts == 0 || rr.attempts > 20 {
                    errors.push(err(line, format!("step `{}`: retry.attempts must be 1..20", r.id)));
                }
                Retry { attempts: rr.attempts, backoff_ms: rr.backoff_ms.unwrap_or(1000), max_backoff_ms: rr.max_backoff_ms.unwrap_or(60_000), on }
            }
        };
        let on_error = match r.on_error.as_deref() {
            None | Some("fail") => OnError::Fail,
            Some("continue") => OnError::Continue,
            Some(other) => OnError::Fallback(other.to_string()),
        };
        let concurrency = r.concurrency.unwrap_or(1);
        if concurrency == 0 || concurrency > 64 {
            errors.push(err(line, format!("step `{}`: concurrency must be 1..64", r.id)));
        }
        if r.concurrency.is_some() && r.for_each.is_none() {
            errors.push(err(line, format!("step `{}`: concurrency only applies with for_each", r.id)));
        }
        if let StepKind::Approval(_) = kind {
            // One decision per step: a run waits for one approval at a time.
            let not_here =
                [("for_each", r.for_each.is_some()), ("retry", r.retry.is_some()), ("timeout_ms", r.timeout_ms.is_some()), ("with", r.with.is_some())];
            for (what, _) in not_here.iter().filter(|(_, given)| *given) {
                let fix = if *what == "timeout_ms" {
                    "give the approval its own timeout (e.g. timeout: 4h)"
                } else {
                    "an approval asks once; put it in its own step"
                };
                errors.push(err(line, format!("step `{}`: an approval step takes no {what}; {fix}", r.id)));
            }
        }
        Some(Step {
            id: r.id.clone(),
            line,
            kind,
            with: r.with.clone().unwrap_or(Value::Object(Default::default())),
            condition: r.condition.clone(),
            for_each: r.for_each.clone(),
            concurrency: concurrency.clamp(1, 64),
            retry,
            timeout: r.timeout_ms.map(Duration::from_millis),
            on_error,
            literal: false,
        })
    };
    let steps: Vec<Step> = raw.steps.iter().filter_map(|s| convert(s, &mut errors)).collect();
    let fallbacks: Vec<Step> = raw.fallbacks.iter().filter_map(|s| convert(s, &mut errors)).collect();
    for f in fallbacks.iter().filter(|f| matches!(f.kind, StepKind::Approval(_))) {
        errors.push(err(
            f.line,
            format!("fallback `{}` is an approval; a fallback stands in for a failed step at once, so it cannot wait (make it a step of its own)", f.id),
        ));
    }
    let story_line = raw.name.referenced.line();
    let body = match &raw.graph {
        None => Body::Steps(Steps { steps, fallbacks, output: raw.output }),
        Some(_) if !steps.is_empty() || !fallbacks.is_empty() => {
            errors.push(err(story_line, format!("story `{name}` has both steps and a graph; a story is one or the other")));
            Body::Steps(Steps::default())
        }
        Some(_) if raw.output.is_some() => {
            errors.push(err(
                story_line,
                format!("story `{name}`: `output:` belongs to a story of steps; a graph story's output is the event its exit agent emits (remove `output:`)"),
            ));
            Body::Steps(Steps::default())
        }
        Some(g) => match graph::convert(g, story_line) {
            Ok(g) => Body::Graph(g),
            Err(es) => {
                errors.extend(es.into_iter().map(|(line, m)| err(line, m)));
                Body::Steps(Steps::default())
            }
        },
    };
    if matches!(&body, Body::Steps(s) if s.steps.is_empty()) && errors.is_empty() {
        errors.push(err(story_line, format!("story `{name}` has no steps")));
    }
    if let Some(schema) = &raw.input {
        if let Err(m) = schema::check_schema(schema) {
            errors.push(err(raw.name.referenced.line(), format!("input schema: {m}")));
        }
    }
    let story = Story {
        name,
        description: raw.description,
        team: raw.team.unwrap_or_else(|| "default".into()),
        input_schema: raw.input.unwrap_or(Value::Null),
        allow_callers: raw.allow_callers,
        body,
        file: file.to_path_buf(),
        line: raw.name.referenced.line(),
    };
    check_references(&story, &mut errors);
    if errors.is_empty() {
        Ok(story)
    } else {
        Err(StoryErrors(errors))
    }
}

/// Template syntax and step references within one story of steps (a graph
/// story's are checked by [`graph::convert`]).
fn check_references(story: &Story, errors: &mut Vec<StoryError>) {
    let Body::Steps(body) = &story.body else { return };
    let file = story.file.display().to_string();
    let ids: Vec<&str> = body.steps.iter().map(|s| s.id.as_str()).collect();
    let mut seen = BTreeSet::new();
    for s in body.steps.iter().chain(&body.fallbacks) {
        if !seen.insert(s.id.as_str()) {
            errors.push(StoryError { file: file.clone(), line: s.line, message: format!("duplicate step id `{}`; ids must be unique in a story", s.id) });
        }
    }
    let fallback_ids: Vec<&str> = body.fallbacks.iter().map(|s| s.id.as_str()).collect();
    // `approval.<id>.links…` may be read anywhere, before the approval runs too.
    let approval_ids: Vec<&str> = body.steps.iter().filter(|s| matches!(s.kind, StepKind::Approval(_))).map(|s| s.id.as_str()).collect();
    let check = |line: u64, owner: &str, earlier: &[&str], full: &str, roots: &[&str], errors: &mut Vec<StoryError>| {
        let text = template::excerpt(full);
        let text = text.as_str();
        let refs = match template::references(full) {
            Ok(r) => r,
            Err(e) => {
                errors.push(StoryError { file: file.clone(), line, message: format!("{owner}: bad template `{text}`: {e}") });
                return;
            }
        };
        for r in refs {
            let mut parts = r.split('.');
            let root = parts.next().unwrap_or("");
            if root == "steps" {
                match parts.next() {
                    Some(id) if earlier.contains(&id) => {}
                    Some(id) if ids.contains(&id) => errors.push(StoryError {
                        file: file.clone(),
                        line,
                        message: format!("{owner}: `{text}` reads steps.{id}, which runs later; a step can only read earlier steps"),
                    }),
                    Some(id) => errors.push(StoryError {
                        file: file.clone(),
                        line,
                        message: format!("{owner}: `{text}` reads steps.{id}, but there is no step `{id}` (steps: {})", ids.join(", ")),
                    }),
                    None => {}
                }
            } else if root == "approval" {
                match parts.next() {
                    Some(id) if approval_ids.contains(&id) => {}
                    other => errors.push(StoryError {
                        file: file.clone(),
                        line,
                        message: format!(
                            "{owner}: `{text}` reads approval.{}, but this story has no approval step by that name (approval steps: {})",
                            other.unwrap_or(""),
                            if approval_ids.is_empty() { "none".to_string() } else { approval_ids.join(", ") }
                        ),
                    }),
                }
            } else if !roots.contains(&root) {
                errors.push(StoryError {
                    file: file.clone(),
                    line,
                    message: format!("{owner}: `{text}` reads `{root}`, which is not defined here (available: {})", roots.join(", ")),
                });
            }
        }
    };
    for (i, s) in body.steps.iter().enumerate() {
        let earlier = &ids[..i];
        let owner = format!("step `{}`", s.id);
        let mut roots = vec!["input", "steps", "run"];
        if let StepKind::Approval(a) = &s.kind {
            if let crate::approval::Approvers::Template(t) = &a.approvers {
                // Rendered when the run starts, so that links exist before the approval does.
                check(s.line, &format!("{owner} approvers"), &[], t, &["input", "run"], errors);
            }
        }
        if let Some(f) = &s.for_each {
            check(s.line, &owner, earlier, f, &roots, errors);
            roots.extend(["item", "index"]);
        }
        if let Some(c) = &s.condition {
            check(s.line, &owner, earlier, c, &["input", "steps", "run"], errors);
        }
        for t in step_templates(s) {
            check(s.line, &owner, earlier, &t, &roots, errors);
        }
        if let OnError::Fallback(f) = &s.on_error {
            if !fallback_ids.contains(&f.as_str()) {
                errors.push(StoryError {
                    file: file.clone(),
                    line: s.line,
                    message: format!(
                        "step `{}`: on_error `{f}` is not fail, continue, or a fallback id (fallbacks: {})",
                        s.id,
                        if fallback_ids.is_empty() { "none".into() } else { fallback_ids.join(", ") }
                    ),
                });
            }
        }
    }
    for f in &body.fallbacks {
        let owner = format!("fallback `{}`", f.id);
        for t in step_templates(f) {
            // A fallback may read any step (it runs when one fails) and the error.
            check(f.line, &owner, &ids, &t, &["input", "steps", "run", "error", "item", "index"], errors);
        }
    }
    if let Some(out) = &body.output {
        let mut texts = Vec::new();
        template::strings(out, &mut texts);
        for t in texts {
            check(story.line, "output", &ids, &t, &["input", "steps", "run"], errors);
        }
    }
}

/// Template strings of a step's arguments (not its `if`/`for_each`).
fn step_templates(s: &Step) -> Vec<String> {
    let mut out = Vec::new();
    template::strings(&s.with, &mut out);
    if let StepKind::Transform(t) = &s.kind {
        t.templates(&mut out);
    }
    if let StepKind::Approval(a) = &s.kind {
        out.push(a.title.clone());
        template::strings(&a.details, &mut out);
    }
    out
}
