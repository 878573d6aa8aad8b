//! Executes stories: one step after another, each recorded in the run store.
//!
//! story → step (`if`, `for_each`, `retry`, `timeout_ms`, `on_error`) →
//! action (a plugin under its grant, via [`crate::runtime`]) | sub-story (its
//! own run, under its own team) | transform. Template errors name the step
//! and the expression. A run's record is complete whatever happens.

use super::template::{render_str, render_value, truthy};
use super::{schema, Library, OnError, Step, StepKind, Story};
use crate::policy::Policy;
use crate::runtime::{InvocationInfo, InvokeError, LogLine, Plugin, Runtime};
use crate::store::{NewRun, RunStore};
use futures::stream::{FuturesOrdered, StreamExt};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Why a step failed. `kind` is what `retry.on` matches.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct StepError {
    pub kind: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl StepError {
    fn new(kind: &str, message: impl Into<String>) -> StepError {
        StepError { kind: kind.into(), message: message.into(), retry_after_ms: None }
    }
}

impl From<InvokeError> for StepError {
    fn from(e: InvokeError) -> StepError {
        let kind = match &e {
            InvokeError::InvalidInput { .. } => "invalid-input",
            InvokeError::Denied { .. } => "denied",
            InvokeError::Upstream { .. } => "upstream",
            InvokeError::Failed { .. } | InvokeError::Instantiate { .. } => "failed",
            InvokeError::Limit { .. } => "limit",
            InvokeError::Trap { .. } => "trap",
        };
        let retry_after_ms = match &e {
            InvokeError::Upstream { retry_after_ms, .. } => *retry_after_ms,
            _ => None,
        };
        StepError { kind: kind.into(), message: e.to_string(), retry_after_ms }
    }
}

/// What an observer (the CLI's progress display, metrics) is told.
#[derive(Debug)]
pub enum Event<'a> {
    RunStarted { run: &'a str, story: &'a str, depth: usize },
    StepStarted { run: &'a str, step: &'a str, item: Option<usize>, attempt: u32, depth: usize },
    StepFinished { run: &'a str, step: &'a str, kind: &'static str, item: Option<usize>, state: &'a str, elapsed: Duration, error: Option<&'a StepError>, depth: usize },
    Log { run: &'a str, step: &'a str, line: &'a LogLine, depth: usize },
    /// One capability call's audit record (already stored).
    Audit { run: &'a str, step: &'a str, record: &'a crate::audit::AuditRecord },
    RunFinished { run: &'a str, story: &'a str, state: &'a str, elapsed: Duration, depth: usize },
}

pub trait Observer: Send + Sync {
    fn event(&self, event: &Event);
}

/// An observer that ignores everything.
pub struct Quiet;

impl Observer for Quiet {
    fn event(&self, _: &Event) {}
}

/// The end of a run.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub run_id: String,
    pub state: String,
    pub output: Option<Value>,
    /// The step that failed the run, and why.
    pub failed_step: Option<String>,
    pub error: Option<StepError>,
}

/// Refused before a run was created.
#[derive(Debug, Clone, PartialEq)]
pub enum SubmitError {
    UnknownStory(String),
    InvalidInput(String),
    Store(String),
}

impl std::fmt::Display for SubmitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SubmitError::UnknownStory(s) => write!(f, "unknown story `{s}`"),
            SubmitError::InvalidInput(m) => write!(f, "invalid input: {m}"),
            SubmitError::Store(m) => write!(f, "run store: {m}"),
        }
    }
}

impl std::error::Error for SubmitError {}

pub struct Engine {
    pub runtime: Arc<Runtime>,
    pub policy: Arc<Policy>,
    pub library: Arc<Library>,
    pub store: Arc<RunStore>,
    plugins: Mutex<HashMap<String, Arc<Plugin>>>,
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The template context of a run.
struct Context {
    value: Value,
}

impl Context {
    fn new(run: &str, story: &Story, input: Value) -> Context {
        Context { value: json!({"input": input, "steps": {}, "run": {"id": run, "story": story.name, "team": story.team}}) }
    }
    fn set_step(&mut self, id: &str, status: &str, output: Value, error: Option<&StepError>) {
        self.value["steps"][id] = json!({"status": status, "output": output, "error": error});
    }
    fn with_item(&self, item: &Value, index: usize) -> Value {
        let mut v = self.value.clone();
        v["item"] = item.clone();
        v["index"] = json!(index);
        v
    }
}

/// Where a resumed run picks up: the finished steps' results, and the index of
/// the first step still to run.
#[derive(Default)]
struct Resume {
    done: Vec<(String, String, Value, Option<StepError>)>,
    from: usize,
    /// Attempts the interrupted step already used (recorded for the audit trail).
    attempts_used: u32,
}

pub fn new_run_id() -> String {
    format!("r{}", uuid::Uuid::new_v4().simple())
}

impl Engine {
    pub fn new(runtime: Arc<Runtime>, policy: Arc<Policy>, library: Arc<Library>, store: Arc<RunStore>) -> Engine {
        Engine { runtime, policy, library, store, plugins: Mutex::default() }
    }

    /// Validates the input and records a queued run. The run is durable from here.
    pub fn submit(&self, story: &str, mut input: Value, trigger: &str) -> Result<String, SubmitError> {
        let s = self.library.get(story).ok_or_else(|| SubmitError::UnknownStory(story.to_string()))?;
        schema::validate(&s.input_schema, &mut input, "").map_err(SubmitError::InvalidInput)?;
        let id = new_run_id();
        self.store
            .create_run(&NewRun { id: &id, story: &s.name, team: &s.team, trigger, input: &input, parent: None })
            .map_err(|e| SubmitError::Store(e.to_string()))?;
        Ok(id)
    }

    /// Submits and executes, waiting for the end.
    pub async fn run(&self, story: &str, input: Value, trigger: &str, observer: &dyn Observer) -> Result<RunResult, SubmitError> {
        let id = self.submit(story, input, trigger)?;
        Ok(self.execute(&id, observer).await)
    }

    /// Executes a recorded run from its first step.
    pub async fn execute(&self, run_id: &str, observer: &dyn Observer) -> RunResult {
        let fail = |msg: String| RunResult {
            run_id: run_id.to_string(),
            state: "failed".into(),
            output: None,
            failed_step: None,
            error: Some(StepError::new("failed", msg)),
        };
        let (story_name, input) = match self.store.run_input(run_id) {
            Ok(Some(x)) => x,
            Ok(None) => return fail(format!("no run {run_id}")),
            Err(e) => return fail(e.to_string()),
        };
        let Some(story) = self.library.get(&story_name) else {
            let msg = format!("story `{story_name}` is no longer loaded");
            let _ = self.store.finish_run(run_id, "failed", None, Some(&msg), None);
            return fail(msg);
        };
        self.run_story(story, run_id.to_string(), input, 0, observer, Resume::default()).await
    }

    /// Continues a run that a restart interrupted. Finished steps keep their
    /// results; the interrupted step runs again if its retry policy allows
    /// another attempt, otherwise the run fails saying so. Never silent.
    pub async fn resume(&self, run_id: &str, observer: &dyn Observer) -> RunResult {
        let detail = match self.store.get_run(run_id) {
            Ok(Some(d)) => d,
            _ => return self.execute(run_id, observer).await,
        };
        let Some(story) = self.library.get(&detail.run.story) else {
            let msg = format!("interrupted by a restart, and story `{}` is no longer loaded", detail.run.story);
            let _ = self.store.finish_run(run_id, "failed", None, Some(&msg), None);
            return RunResult { run_id: run_id.into(), state: "failed".into(), output: None, failed_step: None, error: Some(StepError::new("failed", msg)) };
        };
        // Sub-story runs cut off mid-way are over; their step runs again below.
        for child in detail.children.iter().filter(|c| c.state == "running" || c.state == "queued") {
            let _ = self.store.finish_run(&child.id, "failed", None, Some("interrupted by a restart; the calling step runs again"), None);
        }
        let mut resume = Resume::default();
        for step in &story.steps {
            let row = detail.steps.iter().find(|r| r.step_id == step.id && r.item.is_none());
            match row.map(|r| (r.state.as_str(), r)) {
                Some(("succeeded" | "skipped" | "recovered", r)) => {
                    resume.done.push((step.id.clone(), r.state.clone(), r.output.clone().unwrap_or(Value::Null), None));
                    resume.from += 1;
                }
                Some(("failed", r)) if step.on_error == OnError::Continue => {
                    let e: Option<StepError> = r.error.clone().and_then(|e| serde_json::from_value(e).ok());
                    resume.done.push((step.id.clone(), "failed".into(), Value::Null, e));
                    resume.from += 1;
                }
                Some((_, r)) => {
                    if r.attempts >= step.retry.attempts {
                        let msg = format!(
                            "interrupted by a restart during step {} (attempt {}); its retry policy allows no further attempt",
                            step.id, r.attempts
                        );
                        let _ = self.store.step_finished(run_id, &step.id, None, kind_name(&step.kind), "failed", None, Some(&json!(StepError::new("interrupted", &msg))), r.attempts);
                        let _ = self.store.finish_run(run_id, "failed", None, Some(&msg), Some(&step.id));
                        return RunResult { run_id: run_id.into(), state: "failed".into(), output: None, failed_step: Some(step.id.clone()), error: Some(StepError::new("interrupted", msg)) };
                    }
                    resume.attempts_used = r.attempts;
                    break;
                }
                None => break,
            }
        }
        self.run_story(story, run_id.to_string(), detail.input, 0, observer, resume).await
    }

    fn run_story<'a>(&'a self, story: Arc<Story>, run_id: String, input: Value, depth: usize, observer: &'a dyn Observer, resume: Resume) -> BoxFuture<'a, RunResult> {
        Box::pin(async move {
            let started = Instant::now();
            let _ = self.store.start_run(&run_id);
            observer.event(&Event::RunStarted { run: &run_id, story: &story.name, depth });
            let mut ctx = Context::new(&run_id, &story, input);
            let mut last_output = Value::Null;
            for (id, status, output, error) in &resume.done {
                ctx.set_step(id, status, output.clone(), error.as_ref());
                last_output = output.clone();
            }
            let mut failure: Option<(String, StepError)> = None;
            for (i, step) in story.steps.iter().enumerate().skip(resume.from) {
                // A resumed step continues its attempt count, so the retry policy holds across restarts.
                let first_attempt = if i == resume.from { resume.attempts_used + 1 } else { 1 };
                match self.run_step(&story, step, &run_id, &mut ctx, depth, observer, first_attempt).await {
                    Ok(Some(out)) => last_output = out,
                    Ok(None) => {}
                    Err(e) => {
                        failure = Some((step.id.clone(), e));
                        break;
                    }
                }
            }
            let result = match failure {
                Some((step, e)) => {
                    let msg = format!("step {step}: {}", e.message);
                    let _ = self.store.finish_run(&run_id, "failed", None, Some(&msg), Some(&step));
                    RunResult { run_id: run_id.clone(), state: "failed".into(), output: None, failed_step: Some(step), error: Some(e) }
                }
                None => {
                    let output = match &story.output {
                        Some(template) => render_value(template, &ctx.value).map_err(|e| StepError::new("template", format!("output: {e}"))),
                        None => Ok(last_output),
                    };
                    match output {
                        Ok(out) => {
                            let _ = self.store.finish_run(&run_id, "succeeded", Some(&out), None, None);
                            RunResult { run_id: run_id.clone(), state: "succeeded".into(), output: Some(out), failed_step: None, error: None }
                        }
                        Err(e) => {
                            let _ = self.store.finish_run(&run_id, "failed", None, Some(&e.message), Some("output"));
                            RunResult { run_id: run_id.clone(), state: "failed".into(), output: None, failed_step: Some("output".into()), error: Some(e) }
                        }
                    }
                }
            };
            observer.event(&Event::RunFinished { run: &run_id, story: &story.name, state: &result.state, elapsed: started.elapsed(), depth });
            result
        })
    }

    /// One step: condition, items, retries, error policy. `Ok(None)` when skipped.
    #[allow(clippy::too_many_arguments)]
    async fn run_step(&self, story: &Story, step: &Step, run: &str, ctx: &mut Context, depth: usize, observer: &dyn Observer, first_attempt: u32) -> Result<Option<Value>, StepError> {
        let kind = kind_name(&step.kind);
        if let Some(cond) = &step.condition {
            let go = render_str(cond, &ctx.value).map_err(|e| StepError::new("template", format!("if `{cond}`: {e}")));
            match go {
                Ok(v) if !truthy(&v) => {
                    let _ = self.store.step_finished(run, &step.id, None, kind, "skipped", None, None, 0);
                    observer.event(&Event::StepFinished { run, step: &step.id, kind, item: None, state: "skipped", elapsed: Duration::ZERO, error: None, depth });
                    ctx.set_step(&step.id, "skipped", Value::Null, None);
                    return Ok(None);
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = self.store.step_finished(run, &step.id, None, kind, "failed", None, Some(&json!(e)), 0);
                    return Err(e);
                }
            }
        }
        let started = Instant::now();
        let result = match &step.for_each {
            None => self.attempts(story, step, run, &ctx.value, None, depth, observer, first_attempt).await,
            Some(list) => self.for_each(story, step, run, ctx, list, depth, observer, first_attempt).await,
        };
        match result {
            Ok(out) => {
                if step.for_each.is_some() {
                    let _ = self.store.step_finished(run, &step.id, None, kind, "succeeded", Some(&out), None, 1);
                }
                ctx.set_step(&step.id, "succeeded", out.clone(), None);
                Ok(Some(out))
            }
            Err(e) => {
                if step.for_each.is_some() {
                    let _ = self.store.step_finished(run, &step.id, None, kind, "failed", None, Some(&json!(e)), 1);
                }
                match &step.on_error {
                    OnError::Fail => Err(e),
                    OnError::Continue => {
                        observer.event(&Event::StepFinished { run, step: &step.id, kind, item: None, state: "continued", elapsed: started.elapsed(), error: Some(&e), depth });
                        ctx.set_step(&step.id, "failed", Value::Null, Some(&e));
                        Ok(None)
                    }
                    OnError::Fallback(name) => {
                        let fb = story.fallback(name).expect("checked at load");
                        let mut fctx = ctx.value.clone();
                        fctx["error"] = json!({"step": step.id, "kind": e.kind, "message": e.message});
                        let out = self.attempts(story, fb, run, &fctx, None, depth, observer, 1).await.map_err(|fe| {
                            StepError::new(&fe.kind, format!("fallback {name} failed too: {} (after: {})", fe.message, e.message))
                        })?;
                        ctx.set_step(&step.id, "recovered", out.clone(), Some(&e));
                        Ok(Some(out))
                    }
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn for_each(&self, story: &Story, step: &Step, run: &str, ctx: &Context, list: &str, depth: usize, observer: &dyn Observer, first_attempt: u32) -> Result<Value, StepError> {
        let items = match render_str(list, &ctx.value).map_err(|e| StepError::new("template", format!("for_each `{list}`: {e}")))? {
            Value::Array(a) => a,
            other => return Err(StepError::new("template", format!("for_each `{list}` must give a list, not {other}"))),
        };
        // At most `concurrency` items in flight; results kept in item order.
        let mut pending = FuturesOrdered::new();
        let mut next = items.iter().enumerate();
        let mut outputs = Vec::with_capacity(items.len());
        loop {
            while pending.len() < step.concurrency {
                let Some((i, item)) = next.next() else { break };
                let ictx = ctx.with_item(item, i);
                pending.push_back(async move { (i, self.attempts(story, step, run, &ictx, Some(i), depth, observer, first_attempt).await) });
            }
            match pending.next().await {
                Some((_, Ok(v))) => outputs.push(v),
                Some((i, Err(e))) => return Err(StepError { message: format!("item {i}: {}", e.message), ..e }),
                None => break,
            }
        }
        Ok(Value::Array(outputs))
    }

    /// Runs a step (or one item of it) with its retry policy and timeout.
    #[allow(clippy::too_many_arguments)]
    async fn attempts(&self, story: &Story, step: &Step, run: &str, ctx: &Value, item: Option<usize>, depth: usize, observer: &dyn Observer, first_attempt: u32) -> Result<Value, StepError> {
        let kind = kind_name(&step.kind);
        let mut attempt = first_attempt;
        loop {
            let started = Instant::now();
            observer.event(&Event::StepStarted { run, step: &step.id, item, attempt, depth });
            let once = self.once(story, step, run, ctx, item, attempt, depth, observer);
            let result = match step.timeout {
                Some(t) => tokio::time::timeout(t, once)
                    .await
                    .unwrap_or_else(|_| Err(StepError::new("timeout", format!("no result within timeout_ms = {}", t.as_millis())))),
                None => once.await,
            };
            let elapsed = started.elapsed();
            match result {
                Ok(out) => {
                    let _ = self.store.step_finished(run, &step.id, item, kind, "succeeded", Some(&out), None, attempt);
                    observer.event(&Event::StepFinished { run, step: &step.id, kind, item, state: "succeeded", elapsed, error: None, depth });
                    return Ok(out);
                }
                Err(e) => {
                    let retry = attempt < step.retry.attempts && step.retry.on.iter().any(|k| *k == e.kind);
                    let state = if retry { "retrying" } else { "failed" };
                    let _ = self.store.step_finished(run, &step.id, item, kind, state, None, Some(&json!(e)), attempt);
                    observer.event(&Event::StepFinished { run, step: &step.id, kind, item, state, elapsed, error: Some(&e), depth });
                    if !retry {
                        return Err(e);
                    }
                    let backoff = step.retry.backoff_ms.saturating_mul(1 << (attempt - 1).min(16)).min(step.retry.max_backoff_ms);
                    let wait = backoff.max(e.retry_after_ms.unwrap_or(0).min(step.retry.max_backoff_ms));
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                    attempt += 1;
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn once(&self, story: &Story, step: &Step, run: &str, ctx: &Value, item: Option<usize>, attempt: u32, depth: usize, observer: &dyn Observer) -> Result<Value, StepError> {
        let kind = kind_name(&step.kind);
        match &step.kind {
            StepKind::Transform(t) => {
                // No "running" row: a transform has no side effects, so after a
                // crash it simply runs again.
                t.apply(ctx).map_err(|e| StepError::new(e.kind(), e.into_message()))
            }
            StepKind::Action(plugin) => {
                let input = render_value(&step.with, ctx).map_err(|e| StepError::new("template", format!("with: {e}")))?;
                let _ = self.store.step_started(run, &step.id, item, kind, Some(&input), attempt);
                let p = self.plugin(plugin, &story.team).await?;
                let info = InvocationInfo { run_id: run.into(), story: story.name.clone(), step: step.id.clone(), team: story.team.clone(), attempt };
                let (tap, mut rx) = tokio::sync::mpsc::unbounded_channel::<LogLine>();
                let input_text = input.to_string();
                // The grant of the story's own team: a sub-story runs under its team, never the caller's.
                let invoke = self.runtime.invoke(&p, self.policy.grant_for_team(plugin, &story.team), info, &input_text, Some(tap));
                tokio::pin!(invoke);
                // Forward log lines live (a long poll shows its progress) while the step runs.
                let report = loop {
                    tokio::select! {
                        report = &mut invoke => break report,
                        Some(line) = rx.recv() => observer.event(&Event::Log { run, step: &step.id, line: &line, depth }),
                    }
                };
                while let Ok(line) = rx.try_recv() {
                    observer.event(&Event::Log { run, step: &step.id, line: &line, depth });
                }
                let _ = self.store.add_logs(run, &step.id, &report.logs);
                let _ = self.store.add_audit(run, &step.id, &report.audit);
                for record in &report.audit {
                    observer.event(&Event::Audit { run, step: &step.id, record });
                }
                match report.outcome {
                    Ok(text) => serde_json::from_str(&text).map_err(|e| StepError::new("failed", format!("output is not JSON: {e}"))),
                    Err(e) => Err(e.into()),
                }
            }
            StepKind::Story(name) => {
                let input = render_value(&step.with, ctx).map_err(|e| StepError::new("template", format!("with: {e}")))?;
                let _ = self.store.step_started(run, &step.id, item, kind, Some(&input), attempt);
                let callee = self.library.get(name).ok_or_else(|| StepError::new("failed", format!("story `{name}` is not loaded")))?;
                let mut input = input;
                schema::validate(&callee.input_schema, &mut input, "")
                    .map_err(|m| StepError::new("invalid-input", format!("sub-story {name}: {m}")))?;
                let child = new_run_id();
                self.store
                    .create_run(&NewRun { id: &child, story: &callee.name, team: &callee.team, trigger: &format!("story:{}", story.name), input: &input, parent: Some((run, &step.id)) })
                    .map_err(|e| StepError::new("failed", e.to_string()))?;
                let result = self.run_story(callee, child.clone(), input, depth + 1, observer, Resume::default()).await;
                match (result.state.as_str(), result.output, result.error) {
                    ("succeeded", Some(out), _) => Ok(out),
                    (_, _, Some(e)) => Err(StepError {
                        kind: "story".into(),
                        message: format!("sub-story {name} (run {child}) failed at {}: {}", result.failed_step.unwrap_or_default(), e.message),
                        retry_after_ms: e.retry_after_ms,
                    }),
                    _ => Err(StepError::new("story", format!("sub-story {name} (run {child}) failed"))),
                }
            }
        }
    }

    /// Loads (compiles or fetches from the cache) and vets every plugin the
    /// stories use, for the team of each story that uses it, so a broken or
    /// untrusted plugin stops the server at start rather than a run later.
    pub async fn preload(&self) -> Result<usize, String> {
        let mut pairs = std::collections::BTreeSet::new();
        for story in self.library.stories.values() {
            for s in story.steps.iter().chain(&story.fallbacks) {
                if let StepKind::Action(p) = &s.kind {
                    pairs.insert((story.team.clone(), p.clone()));
                }
            }
        }
        for (team, plugin) in &pairs {
            self.plugin(plugin, team).await.map_err(|e| format!("plugin {plugin} for team {team}: {}", e.message))?;
        }
        Ok(pairs.len())
    }

    /// The plugin, vetted for `team` when the policy has teams: pinned, or
    /// signed by a key the team trusts (see [`crate::vetting`]).
    async fn plugin(&self, name: &str, team: &str) -> Result<Arc<Plugin>, StepError> {
        let key = format!("{team}/{name}");
        if let Some(p) = self.plugins.lock().unwrap().get(&key) {
            return Ok(p.clone());
        }
        let entry = self.policy.plugins.get(name).ok_or_else(|| StepError::new("failed", format!("plugin `{name}` is not in the policy")))?;
        let p = self.runtime.load_entry(entry).map_err(|e| StepError::new("denied", format!("{e:#}")))?;
        if !self.policy.teams.is_empty() {
            let t = self.policy.teams.get(team).ok_or_else(|| StepError::new("denied", format!("team `{team}` is not in the policy, so it may run nothing")))?;
            let m = self.runtime.describe(&p).await.map_err(|e| StepError::new("failed", format!("{e:#}")))?;
            let trust = crate::vetting::check(&self.policy, t, name, &entry.path, entry.sha256.as_deref(), &p.sha256, &m.name, &m.version)
                .map_err(|why| StepError::new("denied", why))?;
            tracing::debug!(team, plugin = name, "plugin trusted: {trust}");
        }
        self.plugins.lock().unwrap().insert(key, p.clone());
        Ok(p)
    }
}

fn kind_name(k: &StepKind) -> &'static str {
    match k {
        StepKind::Action(_) => "action",
        StepKind::Story(_) => "story",
        StepKind::Transform(_) => "transform",
    }
}
