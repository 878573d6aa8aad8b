//! Executes stories: one step after another, each recorded by the run recorder.
//!
//! story → step (`if`, `for_each`, `retry`, `timeout_ms`, `on_error`) →
//! action (a plugin under its team's grant, through [`Invoke`]) | sub-story
//! (its own run, under its own team) | transform. Template errors name the
//! step and the expression. A run's record is complete, or the run fails
//! saying the store is unavailable: see [`super::recorder`].

use crate::story::invoke::{Invoke, PolicyInvoker};
pub use crate::story::observe::{Event, Observer, Quiet};
pub use crate::story::run::{Resume, RunOutcome, StepRun, StepRunner};

mod approve;
mod resume;
use crate::invocation::{InvocationInfo, LogLine};
use crate::policy::Policy;
use crate::runtime::Runtime;
use crate::store::{NewRun, RunStore};
use crate::story::recorder::{Recorder, StoreHealth};
pub use crate::story::state::{ErrorKind, RunResult, RunState, StepError, StepState};
use crate::story::template::{render_value, Bindings};
use crate::story::{schema, Body, Library, StepKind, Story};
use serde_json::Value;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

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
            SubmitError::Store(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for SubmitError {}

pub struct StoryRunner {
    pub invoker: Arc<dyn Invoke>,
    pub policy: Arc<Policy>,
    pub library: Arc<Library>,
    /// For reading runs; every write goes through the recorder.
    pub store: Arc<dyn RunStore>,
    recorder: Recorder,
    /// Record every action step attempt (on by default; see [`crate::recording`]).
    record: bool,
    /// The approval link key, read from the store at first need.
    link_key: std::sync::OnceLock<crate::approval::LinkKey>,
    /// Where approval links point (`[server] public_url`).
    links_base: String,
    /// Where runs' trace context comes from (`warden serve` with
    /// `[telemetry]`); `None`: off. The spans themselves are made by an
    /// observer from the engine's events.
    pub traces: Option<Arc<dyn crate::story::observe::TraceContext>>,
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What [`StoryRunner::accept`] did with a submission.
pub enum Accepted {
    /// A new run, not yet started: durable in the store, or — when its caller
    /// waits for its end — queued to commit with its first awaited write.
    New(NewlyAccepted),
    /// The run this `Idempotency-Key` created before.
    Existing(String),
}

/// A run just accepted, with what executing it needs.
pub struct NewlyAccepted {
    pub id: String,
    pub story: Arc<Story>,
    pub input: Value,
    pub trigger: String,
    /// Whether [`StoryRunner::accept`] recorded (or queued) its creation; with
    /// [`Creation::ByCaller`] the caller records it.
    pub recorded: bool,
}

/// How [`StoryRunner::accept`] records a new run's creation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Creation {
    /// Durable before `accept` answers (a `202`, a schedule's tick).
    Durable,
    /// Committed with the run's first awaited write: its caller executes
    /// it now and answers only with its end (`?wait=true`), so nobody is
    /// told it exists before then.
    WithFirstWrite,
    /// Not at all: the caller records it (a cluster node creates and claims
    /// a waited-for run in one statement). Like `WithFirstWrite`, only for a
    /// caller that answers with the run's end.
    ByCaller,
}

/// A new run id: time-ordered (UUIDv7: milliseconds, then 74 random bits), so
/// the store's indexes grow at their end instead of being written all over.
pub fn new_run_id() -> String {
    format!("r{}", uuid::Uuid::now_v7().simple())
}

impl StoryRunner {
    /// An engine that runs plugins on `runtime` under `policy`.
    pub fn new(runtime: Arc<Runtime>, policy: Arc<Policy>, library: Arc<Library>, store: Arc<dyn RunStore>) -> StoryRunner {
        let invoker = Arc::new(PolicyInvoker::new(runtime, policy.clone()));
        StoryRunner::with_invoker(invoker, policy, library, store)
    }

    /// An engine that runs actions through `invoker` (tests script one).
    pub fn with_invoker(invoker: Arc<dyn Invoke>, policy: Arc<Policy>, library: Arc<Library>, store: Arc<dyn RunStore>) -> StoryRunner {
        let record = policy.server.record.unwrap_or(true);
        let links_base = policy
            .server
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", policy.server.listen.as_deref().unwrap_or(crate::policy::triggers::DEFAULT_LISTEN)));
        StoryRunner {
            invoker,
            policy,
            library,
            recorder: Recorder::new(store.clone(), Arc::default()),
            store,
            record,
            link_key: Default::default(),
            links_base,
            traces: None,
        }
    }

    /// Where approval links point, unless `[server] public_url` says (the
    /// server's own address).
    pub fn with_links_base(mut self, listen: &str) -> StoryRunner {
        if self.policy.server.public_url.is_none() {
            self.links_base = format!("http://{listen}");
        }
        self
    }

    /// Traces runs through `telemetry` (its events come from the observer
    /// `warden serve` gives each run).
    pub fn with_traces(mut self, traces: Option<Arc<dyn crate::story::observe::TraceContext>>) -> StoryRunner {
        self.traces = traces;
        self
    }

    /// Where approval links (and the console's webhook URLs) point.
    pub fn links_base(&self) -> &str {
        &self.links_base
    }

    /// Whether action steps are recorded for replay (on by default).
    pub fn with_recording(mut self, on: bool) -> StoryRunner {
        self.record = on;
        self
    }

    /// Whether the run store takes writes (for `/healthz`).
    pub fn store_health(&self) -> &StoreHealth {
        &self.recorder.health
    }

    /// Reports the store unhealthy for `window` after a refused write (default [`super::recorder::UNHEALTHY_FOR`]).
    pub fn with_health_window(mut self, window: std::time::Duration) -> StoryRunner {
        self.recorder = Recorder::new(self.store.clone(), Arc::new(StoreHealth::with_window(window)));
        self
    }

    /// Validates the input and records a queued run. The run is durable from here.
    pub async fn submit(&self, story: &str, input: Value, trigger: &str) -> Result<String, SubmitError> {
        self.submit_once(story, input, trigger, None).await.map(|(id, _)| id)
    }

    /// [`StoryRunner::submit`], at most once per story and `idempotency_key`: a key
    /// seen before answers with its run, `(id, false)`, and records nothing.
    pub async fn submit_once(&self, story: &str, input: Value, trigger: &str, idempotency_key: Option<&str>) -> Result<(String, bool), SubmitError> {
        self.accept(story, input, trigger, idempotency_key, Creation::Durable).await.map(|a| match a {
            Accepted::New(run) => (run.id, true),
            Accepted::Existing(id) => (id, false),
        })
    }

    /// [`StoryRunner::submit_once`], keeping what executing the new run needs.
    ///
    /// `creation`: see [`Creation`]. With an `Idempotency-Key` the creation
    /// is always durable first, since its answer decides which run the
    /// caller gets.
    pub async fn accept(
        &self,
        story: &str,
        mut input: Value,
        trigger: &str,
        idempotency_key: Option<&str>,
        creation: Creation,
    ) -> Result<Accepted, SubmitError> {
        let s = self.library.get(story).ok_or_else(|| SubmitError::UnknownStory(story.to_string()))?;
        let existing = |key: &str| self.store.run_by_idempotency_key(&s.name, key).map_err(|e| SubmitError::Store(format!("run store unavailable: {e:#}")));
        if let Some(key) = idempotency_key {
            if let Some(id) = existing(key)? {
                return Ok(Accepted::Existing(id));
            }
        }
        schema::validate(&s.input_schema, &mut input, "").map_err(SubmitError::InvalidInput)?;
        let id = new_run_id();
        let run = NewRun { id: &id, story: &s.name, team: &s.team, trigger, input: &input, parent: None, idempotency_key };
        let creation = if idempotency_key.is_some() { Creation::Durable } else { creation };
        let accepted = |id: String, s: Arc<Story>, input: Value, recorded: bool| {
            Accepted::New(NewlyAccepted { id, story: s, input, trigger: trigger.to_string(), recorded })
        };
        match creation {
            Creation::ByCaller => return Ok(accepted(id, s, input, false)),
            Creation::WithFirstWrite => {
                self.recorder.create_run_queued(&run);
                return Ok(accepted(id, s, input, true));
            }
            Creation::Durable => {}
        }
        let created = self.recorder.create_run(&run).await;
        match (created, idempotency_key) {
            (Ok(()), _) => Ok(accepted(id, s, input, true)),
            // Two callers raced with one key: the store kept the first.
            (Err(e), Some(key)) => existing(key)?.map(Accepted::Existing).ok_or_else(|| SubmitError::Store(e.to_string())),
            (Err(e), None) => Err(SubmitError::Store(e.to_string())),
        }
    }

    /// Executes a run just accepted, from its first step, with the story and
    /// input it was accepted with (nothing is read back from the store).
    pub async fn execute_accepted(&self, run: NewlyAccepted, observer: &dyn Observer) -> RunResult {
        self.run_story(run.story, run.id, run.input, 0, observer, Resume::default(), None, None).await
    }

    /// Submits and executes, waiting for the end.
    pub async fn run(&self, story: &str, input: Value, trigger: &str, observer: &dyn Observer) -> Result<RunResult, SubmitError> {
        let id = self.submit(story, input, trigger).await?;
        Ok(self.execute(&id, observer).await)
    }

    /// Executes a recorded run from its first step.
    pub async fn execute(&self, run_id: &str, observer: &dyn Observer) -> RunResult {
        let (story_name, input) = match self.store.run_input(run_id) {
            Ok(Some(x)) => x,
            Ok(None) => return RunResult::failed(run_id, None, StepError::new(ErrorKind::Failed, format!("no run {run_id}"))),
            Err(e) => return RunResult::failed(run_id, None, StepError::new(ErrorKind::Store, format!("run store unavailable: {e:#}"))),
        };
        let Some(story) = self.library.get(&story_name) else {
            let msg = format!("story `{story_name}` is no longer loaded");
            return self.fail_run(run_id, None, StepError::new(ErrorKind::Failed, msg)).await;
        };
        self.run_story(story, run_id.to_string(), input, 0, observer, Resume::default(), None, None).await
    }

    /// Records a run that warden itself broke off (a panic in its own code),
    /// so it is never left `running`.
    pub async fn failed_by_host_bug(&self, run_id: &str, why: &str) -> RunResult {
        tracing::error!(run = %run_id, "warden panicked while executing a run: {why}");
        let e = StepError::new(ErrorKind::Failed, "warden failed while executing this run (a host bug, logged for the operator)");
        self.fail_run(run_id, None, e).await
    }

    /// Runs (or resumes) a story's steps as run `run_id`; `root`: the
    /// top-level run when this is a sub-story's, `caller` the run and step
    /// that called it.
    #[allow(clippy::too_many_arguments)]
    fn run_story<'a>(
        &'a self,
        story: Arc<Story>,
        run_id: String,
        input: Value,
        depth: usize,
        observer: &'a dyn Observer,
        resume: Resume,
        root: Option<String>,
        caller: Option<(String, String)>,
    ) -> BoxFuture<'a, RunResult> {
        Box::pin(async move {
            let started = Instant::now();
            let caller = caller.as_ref().map(|(r, s)| (r.as_str(), s.as_str()));
            observer.event(&Event::RunStarted { run: &run_id, story: &story.name, team: &story.team, depth, caller });
            // The run's trace id, for `runs show` and the API (queued with the run's next write).
            if let Some(trace) = self.traces.as_ref().and_then(|t| t.trace_of(&run_id)) {
                self.recorder.traced(&run_id, trace);
            }
            let root = root.unwrap_or_else(|| run_id.clone());
            let outcome = self.run_body(&story, &run_id, &root, input, depth, observer, resume).await;
            let result = match outcome {
                // Parked (recorded as `waiting` already): it resumes once decided.
                Err((step, e)) if e.kind == ErrorKind::Waiting => RunResult::waiting(&run_id, step),
                Ok(output) => match self.recorder.finish_run(&run_id, RunState::Succeeded, Some(&output), None, None).await {
                    Ok(()) => RunResult::succeeded(&run_id, output),
                    // A step record lost on the way fails the run at that step.
                    Err(down) => self.fail_run(&run_id, down.step.clone(), down.into()).await,
                },
                Err((step, e)) => self.fail_run(&run_id, step, e).await,
            };
            observer.event(&Event::RunFinished { run: &run_id, story: &story.name, state: result.state, elapsed: started.elapsed(), depth });
            result
        })
    }

    /// Records a run's failure. If the store refuses that too, the result says
    /// so: the record is incomplete and the caller must not think otherwise.
    async fn fail_run(&self, run_id: &str, step: Option<String>, e: StepError) -> RunResult {
        let msg = match step.as_deref() {
            Some(s) if s != "output" => format!("step {s}: {}", e.message),
            _ => e.message.clone(),
        };
        match self.recorder.finish_run(run_id, RunState::Failed, None, Some(&msg), step.as_deref()).await {
            Ok(()) => RunResult::failed(run_id, step, e),
            Err(_) if e.kind == ErrorKind::Store => RunResult::failed(run_id, step, e),
            Err(down) => RunResult::failed(run_id, step, StepError::new(ErrorKind::Store, format!("{down} (the run had failed: {msg})"))),
        }
    }

    /// Hands the run's body to the engine of its kind.
    #[allow(clippy::too_many_arguments)]
    async fn run_body(&self, story: &Story, run_id: &str, root: &str, input: Value, depth: usize, observer: &dyn Observer, resume: Resume) -> RunOutcome {
        self.recorder.start_run(run_id);
        match &story.body {
            Body::Steps(body) => warden_steps::run(self, story, body, run_id, root, input, depth, observer, resume).await,
            // A graph run resumes from its own record, not from a step index.
            Body::Graph(graph) => warden_graph::run(self, story, graph, run_id, root, input, depth, observer, resume.resumed).await,
        }
    }

    /// Runs a step (or one item of it) with its retry policy and timeout.
    async fn step_attempts(&self, sr: &StepRun<'_>, ctx: &Bindings, item: Option<usize>, first_attempt: u32) -> Result<Value, StepError> {
        let step = sr.step;
        let at = sr.at(item);
        let mut attempt = first_attempt;
        loop {
            let started = Instant::now();
            sr.observer.event(&Event::StepStarted { run: sr.run, step: &step.id, item, attempt, depth: sr.depth });
            let once = self.once(sr, ctx, item, attempt);
            let result = match step.timeout {
                Some(t) => tokio::time::timeout(t, once)
                    .await
                    .unwrap_or_else(|_| Err(StepError::new(ErrorKind::Timeout, format!("no result within timeout_ms = {}", t.as_millis())))),
                None => once.await,
            };
            let elapsed = started.elapsed();
            match result {
                // Parked: the step's row already says `waiting`.
                Err(e) if e.kind == ErrorKind::Waiting => {
                    sr.finished(item, StepState::Waiting, elapsed, None);
                    return Err(e);
                }
                Ok(out) => {
                    self.recorder.step_finished(&at, StepState::Succeeded, Some(&out), None, attempt);
                    sr.finished(item, StepState::Succeeded, elapsed, None);
                    return Ok(out);
                }
                Err(e) => {
                    let retry = step.retry.again(attempt, e.kind);
                    let state = if retry { StepState::Retrying } else { StepState::Failed };
                    self.recorder.step_finished(&at, state, None, Some(&e), attempt);
                    sr.finished(item, state, elapsed, Some(&e));
                    if !retry {
                        return Err(e);
                    }
                    tokio::time::sleep(step.retry.wait(attempt, e.retry_after_ms)).await;
                    attempt += 1;
                }
            }
        }
    }

    async fn once(&self, sr: &StepRun<'_>, ctx: &Bindings, item: Option<usize>, attempt: u32) -> Result<Value, StepError> {
        let (story, step, run) = (sr.story, sr.step, sr.run);
        // Fault injection for the tests of crash-loop protection (debug
        // builds only): a step that ends the process, as a host bug would.
        #[cfg(debug_assertions)]
        if std::env::var("WARDEN_TEST_ABORT_AT_STEP").is_ok_and(|s| s == step.id) {
            eprintln!("WARDEN_TEST_ABORT_AT_STEP: aborting at step {}", step.id);
            std::process::abort();
        }
        let input = match &step.kind {
            // No "running" row: a transform has no side effects, so after a
            // crash it simply runs again.
            StepKind::Transform(t) => return t.apply(ctx).map_err(|e| StepError::new(e.kind(), e.into_message())),
            // Nor for an approval: asking again after a crash asks the same question.
            StepKind::Approval(spec) => return self.approval(sr, spec, ctx).await,
            // A graph agent's input, rendered already (never rendered twice: event data is not a template).
            _ if step.literal => step.with.clone(),
            _ => render_value(&step.with, ctx).map_err(|e| StepError::new(ErrorKind::Template, format!("with: {e}")))?,
        };
        // A sub-story this step left waiting resumes where it parked.
        if let (StepKind::Story(_), Some(child)) = (&step.kind, sr.waiting_child) {
            let result = self.resume_child(child, sr.root, sr.depth + 1, sr.observer).await;
            return self.sub_story_result(sr, child, result).await;
        }
        self.recorder.step_started(&sr.at(item), Some(&input), attempt).await?;
        match &step.kind {
            StepKind::Transform(_) | StepKind::Approval(_) => unreachable!("returned above"),
            StepKind::Action(plugin) => {
                let traceparent = self.traces.as_ref().and_then(|t| t.traceparent_of_step(run, &step.id, item));
                let input_text = input.to_string();
                let handed = self.handed_links(sr.root, &input_text);
                let info = InvocationInfo {
                    run_id: run.into(),
                    story: story.name.clone(),
                    step: step.id.clone(),
                    team: story.team.clone(),
                    attempt,
                    traceparent,
                    handed,
                };
                let (tap, mut rx) = tokio::sync::mpsc::unbounded_channel::<LogLine>();
                let invoke = async {
                    if self.record {
                        self.invoker.invoke_recorded(plugin, &story.team, info, &input_text, Some(tap)).await
                    } else {
                        self.invoker.invoke(plugin, &story.team, info, &input_text, Some(tap)).await.map(|r| (r, None))
                    }
                };
                tokio::pin!(invoke);
                // Forward log lines live (a long poll shows its progress) while the step runs.
                let report = loop {
                    tokio::select! {
                        report = &mut invoke => break report?,
                        Some(line) = rx.recv() => sr.observer.event(&Event::Log { run, step: &step.id, line: &line, depth: sr.depth }),
                    }
                };
                while let Ok(line) = rx.try_recv() {
                    sr.observer.event(&Event::Log { run, step: &step.id, line: &line, depth: sr.depth });
                }
                let (report, recording) = report;
                self.recorder.logs_and_audit(run, &step.id, &report.logs, &report.audit);
                if let Some(recording) = recording {
                    self.recorder.recording(&sr.at(item), attempt, recording);
                }
                let elapsed = std::time::Duration::from_millis(report.duration_ms);
                sr.observer.event(&Event::Invoked { run, step: &step.id, item, plugin, digest: &report.sha256, elapsed, error: report.outcome.as_ref().err() });
                for record in &report.audit {
                    sr.observer.event(&Event::Audit { run, step: &step.id, item, record });
                }
                match report.outcome {
                    Ok(text) => serde_json::from_str(&text).map_err(|e| StepError::new(ErrorKind::Failed, format!("output is not JSON: {e}"))),
                    Err(e) => Err(e.into()),
                }
            }
            StepKind::Story(name) => {
                let callee = self.library.get(name).ok_or_else(|| StepError::new(ErrorKind::Failed, format!("story `{name}` is not loaded")))?;
                let mut input = input;
                schema::validate(&callee.input_schema, &mut input, "")
                    .map_err(|m| StepError::new(ErrorKind::InvalidInput, format!("sub-story {name}: {m}")))?;
                let child = new_run_id();
                let trigger = format!("story:{}", story.name);
                self.recorder
                    .create_run(&NewRun {
                        id: &child,
                        story: &callee.name,
                        team: &callee.team,
                        trigger: &trigger,
                        input: &input,
                        parent: Some((run, &step.id)),
                        idempotency_key: None,
                    })
                    .await?;
                let result = self
                    .run_story(
                        callee,
                        child.clone(),
                        input,
                        sr.depth + 1,
                        sr.observer,
                        Resume::default(),
                        Some(sr.root.to_string()),
                        Some((run.to_string(), step.id.clone())),
                    )
                    .await;
                self.sub_story_result(sr, &child, result).await
            }
        }
    }

    /// A sub-story run's end as its calling step's result; a sub-story that
    /// parked parks its caller too (the approval wakes the top-level run).
    async fn sub_story_result(&self, sr: &StepRun<'_>, child: &str, result: RunResult) -> Result<Value, StepError> {
        let StepKind::Story(name) = &sr.step.kind else { unreachable!("only story steps call sub-stories") };
        match (result.state, result.output, result.error) {
            (RunState::Succeeded, Some(out), _) => Ok(out),
            (RunState::Waiting, _, _) => {
                self.recorder.park(&sr.at(None), None).await?;
                Err(StepError::new(ErrorKind::Waiting, format!("sub-story {name} (run {child}) waits for an approval")))
            }
            (_, _, Some(e)) if e.kind == ErrorKind::Store => Err(e),
            (_, _, Some(e)) => {
                // Another team's sub-story: the caller learns that it failed and
                // how to ask, not its steps or its error text (that team's).
                let callee_team = self.library.get(name).map(|c| c.team.clone()).unwrap_or_default();
                let message = if callee_team == sr.story.team {
                    format!("sub-story {name} (run {child}) failed at {}: {}", result.failed_step.unwrap_or_default(), e.message)
                } else {
                    format!("sub-story {name} (run {child}, team {callee_team}) failed ({}); its details are team {callee_team}'s", e.kind.as_str())
                };
                Err(StepError { kind: ErrorKind::Story, message, retry_after_ms: e.retry_after_ms })
            }
            _ => Err(StepError::new(ErrorKind::Story, format!("sub-story {name} (run {child}) failed"))),
        }
    }

    /// Loads (compiles or fetches from the cache) and vets every plugin the
    /// stories use, for the team of each story that uses it, so a broken or
    /// untrusted plugin stops the server at start rather than a run later.
    /// The template evaluator starts loading beside them, off the path to
    /// the first accepted webhook (a render waits for it if it must; a
    /// failure is said here and by every render).
    pub async fn preload(&self) -> Result<usize, String> {
        tokio::task::spawn_blocking(|| {
            if let Err(e) = crate::runtime::evaluator::warm() {
                tracing::error!("{e}; every template that needs it fails its step");
            }
        });
        let mut pairs = std::collections::BTreeSet::new();
        for story in self.library.stories.values() {
            for s in story.all_steps() {
                if let StepKind::Action(p) = &s.kind {
                    pairs.insert((story.team.clone(), p.clone()));
                }
            }
        }
        for (team, plugin) in &pairs {
            self.invoker.prepare(plugin, team).await.map_err(|e| format!("plugin {plugin} for team {team}: {}", e.message))?;
        }
        Ok(pairs.len())
    }
}

/// What the engine of a story's kind asks of this one: one step run, the
/// record, the policy.
#[async_trait::async_trait]
impl StepRunner for StoryRunner {
    async fn attempts(&self, sr: &StepRun<'_>, ctx: &Bindings, item: Option<usize>, first_attempt: u32) -> Result<Value, StepError> {
        self.step_attempts(sr, ctx, item, first_attempt).await
    }

    fn recorder(&self) -> &Recorder {
        &self.recorder
    }

    fn policy(&self) -> &Policy {
        &self.policy
    }

    fn store(&self) -> &dyn RunStore {
        self.store.as_ref()
    }

    fn approval_links(&self, story: &Story, run: &str, root: &str, ctx: &Bindings) -> Result<Option<Value>, StepError> {
        self.approval_links_of(story, run, root, ctx)
    }
}
