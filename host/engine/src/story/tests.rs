//! Story semantics through the [`Invoke`] seam: no guest is compiled; a
//! scripted invoker plays the plugins and a store can refuse writes on demand.

use super::engine::{Quiet, StoryRunner};
use super::invoke::Invoke;
use super::state::{ErrorKind, RunResult, RunState, StepError};
use super::{parse, Library};
use crate::audit::AuditRecord;
use crate::invocation::{InvocationInfo, InvokeError, LogLine};
use crate::policy::Policy;
use crate::runtime::InvocationReport;
use crate::store::testing::Flaky;
use crate::store::{RunDetail, RunStore, SqliteStore};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc::UnboundedSender;

/// One call the engine made.
#[derive(Debug, Clone)]
struct Call {
    plugin: String,
    team: String,
    info: InvocationInfo,
    input: Value,
}

type Script = Box<dyn Fn(&Call, u32) -> Result<Value, InvokeError> + Send + Sync>;

/// Plays plugins: each answers by its script (given the call and how many
/// times it was called before). An input `sleep_ms` delays the answer.
#[derive(Default)]
struct Scripted {
    scripts: HashMap<String, Script>,
    calls: Mutex<Vec<Call>>,
}

impl Scripted {
    fn with(mut self, plugin: &str, script: impl Fn(&Call, u32) -> Result<Value, InvokeError> + Send + Sync + 'static) -> Self {
        self.scripts.insert(plugin.to_string(), Box::new(script));
        self
    }
    fn calls(&self, plugin: &str) -> Vec<Call> {
        self.calls.lock().unwrap().iter().filter(|c| c.plugin == plugin).cloned().collect()
    }
}

#[async_trait::async_trait]
impl Invoke for Scripted {
    async fn prepare(&self, plugin: &str, _team: &str) -> Result<(), StepError> {
        match self.scripts.contains_key(plugin) {
            true => Ok(()),
            false => Err(StepError::new(ErrorKind::Failed, format!("plugin `{plugin}` is not in the policy"))),
        }
    }

    async fn invoke(
        &self,
        plugin: &str,
        team: &str,
        info: InvocationInfo,
        input: &str,
        tap: Option<UnboundedSender<LogLine>>,
    ) -> Result<InvocationReport, StepError> {
        self.prepare(plugin, team).await?;
        let input: Value = serde_json::from_str(input).unwrap();
        if let Some(ms) = input["sleep_ms"].as_u64() {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        let call = Call { plugin: plugin.into(), team: team.into(), info: info.clone(), input };
        let before = self.calls(plugin).len() as u32;
        self.calls.lock().unwrap().push(call.clone());
        let line = LogLine { at_ms: 1, level: "info", source: "guest", message: format!("{plugin} called") };
        if let Some(tap) = tap {
            let _ = tap.send(line.clone());
        }
        let outcome = (self.scripts[plugin])(&call, before).map(|v| v.to_string());
        let audit = vec![AuditRecord::new("http", plugin, &info, "GET".into(), "https://api.example/".into())];
        Ok(InvocationReport { plugin: plugin.into(), sha256: String::new(), outcome, logs: vec![line], audit, http_requests: 1, duration_ms: 0, cpu_ms: 0 })
    }
}

fn library(stories: &[&str]) -> Library {
    let mut lib = Library::default();
    for (i, text) in stories.iter().enumerate() {
        let story = parse(text, Path::new(&format!("story{i}.yaml"))).unwrap_or_else(|e| panic!("{e}"));
        lib.stories.insert(story.name.clone(), Arc::new(story));
    }
    lib
}

fn engine_on(invoker: Scripted, store: Arc<dyn RunStore>, stories: &[&str]) -> (StoryRunner, Arc<Scripted>) {
    let invoker = Arc::new(invoker);
    let engine = StoryRunner::with_invoker(invoker.clone(), Arc::new(Policy::empty()), Arc::new(library(stories)), store);
    (engine, invoker)
}

fn engine(invoker: Scripted, stories: &[&str]) -> (StoryRunner, Arc<Scripted>) {
    engine_on(invoker, Arc::new(SqliteStore::in_memory().unwrap()), stories)
}

async fn run(e: &StoryRunner, story: &str, input: Value) -> RunResult {
    e.run(story, input, "test", &Quiet).await.unwrap()
}

fn detail(e: &StoryRunner, r: &RunResult) -> RunDetail {
    e.store.get_run(&r.run_id).unwrap().unwrap()
}

fn step_state(d: &RunDetail, step: &str) -> (String, u32) {
    let s = d.steps.iter().find(|s| s.step_id == step && s.item.is_none()).unwrap_or_else(|| panic!("no row for {step}: {:?}", d.steps));
    (s.state.clone(), s.attempts)
}

fn echo(call: &Call, _: u32) -> Result<Value, InvokeError> {
    Ok(json!({"echo": call.input}))
}

fn upstream(message: &str) -> InvokeError {
    InvokeError::Upstream { status: Some(503), message: message.into(), retry_after_ms: None }
}

const TWO_STEPS: &str = "
name: two
steps:
  - id: first
    action: echo
    with: {n: '{{ input.n }}'}
  - id: second
    action: echo
    with: {from_first: '{{ steps.first.output.echo.n }}'}
";

#[tokio::test]
async fn steps_run_in_order_and_the_last_output_is_the_runs() {
    let (e, inv) = engine(Scripted::default().with("echo", echo), &[TWO_STEPS]);
    let r = run(&e, "two", json!({"n": 7})).await;
    assert_eq!(r.state, RunState::Succeeded, "{:?}", r.error);
    assert_eq!(r.output, Some(json!({"echo": {"from_first": 7}})));
    let inputs: Vec<Value> = inv.calls("echo").into_iter().map(|c| c.input).collect();
    assert_eq!(inputs, vec![json!({"n": 7}), json!({"from_first": 7})]);
    assert_eq!(detail(&e, &r).run.state, "succeeded");
}

#[tokio::test]
async fn an_action_runs_for_its_story_team_with_the_run_step_and_attempt() {
    let story = "name: s\nteam: soc\nsteps:\n  - id: only\n    action: echo\n";
    let (e, inv) = engine(Scripted::default().with("echo", echo), &[story]);
    let r = run(&e, "s", json!({})).await;
    let call = &inv.calls("echo")[0];
    assert_eq!(call.team, "soc");
    assert_eq!(
        call.info,
        InvocationInfo {
            run_id: r.run_id.clone(),
            story: "s".into(),
            step: "only".into(),
            team: "soc".into(),
            attempt: 1,
            traceparent: None,
            ..Default::default()
        }
    );
    let d = detail(&e, &r);
    assert_eq!(d.logs.len(), 1, "the plugin's log line is recorded");
    assert_eq!(d.audit.len(), 1, "its audit record is recorded");
}

#[tokio::test]
async fn a_false_if_skips_the_step_and_records_it_as_skipped() {
    let story = "name: s\nsteps:\n  - id: a\n    action: echo\n    if: '{{ input.go }}'\n  - id: b\n    transform: {set: {a: '{{ steps.a.status }}'}}\n";
    let (e, inv) = engine(Scripted::default().with("echo", echo), &[story]);
    let r = run(&e, "s", json!({"go": false})).await;
    assert_eq!(r.output, Some(json!({"a": "skipped"})));
    assert!(inv.calls("echo").is_empty());
    assert_eq!(step_state(&detail(&e, &r), "a").0, "skipped");
}

#[tokio::test]
async fn a_failed_step_fails_the_run_and_names_the_step() {
    let (e, _) = engine(Scripted::default().with("echo", |_, _| Err(upstream("jira is down"))), &[TWO_STEPS]);
    let r = run(&e, "two", json!({"n": 1})).await;
    assert_eq!(r.state, RunState::Failed);
    assert_eq!(r.failed_step.as_deref(), Some("first"));
    assert_eq!(r.error.as_ref().unwrap().kind, ErrorKind::Upstream);
    let d = detail(&e, &r);
    assert_eq!(d.run.failed_step.as_deref(), Some("first"));
    assert!(d.run.error.unwrap().contains("step first: upstream error (HTTP 503): jira is down"));
    assert!(d.steps.iter().all(|s| s.step_id != "second"), "the second step never ran");
}

#[tokio::test]
async fn a_failed_step_with_on_error_continue_lets_the_next_step_run() {
    let story = "name: s\nsteps:\n  - id: a\n    action: broken\n    on_error: continue\n  - id: b\n    transform: {set: {a: '{{ steps.a.status }}', why: '{{ steps.a.error.kind }}'}}\n";
    let (e, _) = engine(Scripted::default().with("broken", |_, _| Err(InvokeError::Failed { message: "no".into() })), &[story]);
    let r = run(&e, "s", json!({})).await;
    assert_eq!(r.state, RunState::Succeeded, "{:?}", r.error);
    assert_eq!(r.output, Some(json!({"a": "failed", "why": "failed"})));
}

#[tokio::test]
async fn a_fallback_stands_in_for_a_failed_step_and_sees_its_error() {
    let story = "
name: s
steps:
  - id: a
    action: broken
    on_error: plan_b
fallbacks:
  - id: plan_b
    transform: {set: {recovered_from: '{{ error.step }}', kind: '{{ error.kind }}'}}
";
    let (e, _) = engine(Scripted::default().with("broken", |_, _| Err(upstream("x"))), &[story]);
    let r = run(&e, "s", json!({})).await;
    assert_eq!(r.output, Some(json!({"recovered_from": "a", "kind": "upstream"})));
}

#[tokio::test]
async fn a_failing_fallback_fails_the_run_naming_both_errors() {
    let story = "name: s\nsteps:\n  - id: a\n    action: broken\n    on_error: plan_b\nfallbacks:\n  - id: plan_b\n    action: broken\n";
    let (e, _) = engine(Scripted::default().with("broken", |_, n| Err(upstream(&format!("failure {n}")))), &[story]);
    let r = run(&e, "s", json!({})).await;
    let err = r.error.unwrap();
    assert!(
        err.message.contains("fallback plan_b failed too")
            && err.message.contains("failure 1")
            && err.message.contains("after: upstream error (HTTP 503): failure 0"),
        "{}",
        err.message
    );
}

#[tokio::test]
async fn a_retry_succeeds_on_a_later_attempt_and_the_attempts_are_recorded() {
    let story = "name: s\nsteps:\n  - id: a\n    action: flaky\n    retry: {attempts: 3, backoff_ms: 1}\n";
    let (e, inv) = engine(Scripted::default().with("flaky", |_, n| if n < 2 { Err(upstream("busy")) } else { Ok(json!({"ok": n})) }), &[story]);
    let r = run(&e, "s", json!({})).await;
    assert_eq!(r.output, Some(json!({"ok": 2})));
    let attempts: Vec<u32> = inv.calls("flaky").iter().map(|c| c.info.attempt).collect();
    assert_eq!(attempts, vec![1, 2, 3]);
    assert_eq!(step_state(&detail(&e, &r), "a"), ("succeeded".into(), 3));
}

#[tokio::test]
async fn only_the_kinds_in_retry_on_are_retried() {
    let story = "name: s\nsteps:\n  - id: a\n    action: denied\n    retry: {attempts: 5, backoff_ms: 1, on: [upstream]}\n";
    let (e, inv) = engine(Scripted::default().with("denied", |_, _| Err(InvokeError::Denied { message: "policy".into() })), &[story]);
    let r = run(&e, "s", json!({})).await;
    assert_eq!(r.error.unwrap().kind, ErrorKind::Denied);
    assert_eq!(inv.calls("denied").len(), 1, "a denial is not an upstream hiccup");
}

#[tokio::test]
async fn a_step_that_outlasts_timeout_ms_fails_with_kind_timeout() {
    let story = "name: s\nsteps:\n  - id: a\n    action: echo\n    with: {sleep_ms: 2000}\n    timeout_ms: 50\n";
    let (e, _) = engine(Scripted::default().with("echo", echo), &[story]);
    let r = run(&e, "s", json!({})).await;
    let err = r.error.unwrap();
    assert_eq!((err.kind, err.message.as_str()), (ErrorKind::Timeout, "no result within timeout_ms = 50"));
}

#[tokio::test]
async fn for_each_runs_every_item_and_keeps_their_order() {
    // Earlier items sleep longer, so with concurrency they finish last.
    let story = "
name: s
steps:
  - id: each
    action: echo
    for_each: '{{ input.items }}'
    concurrency: 4
    with: {sleep_ms: '{{ (4 - index) * 20 }}', item: '{{ item }}'}
";
    let (e, _) = engine(Scripted::default().with("echo", echo), &[story]);
    let r = run(&e, "s", json!({"items": ["a", "b", "c", "d"]})).await;
    let items: Vec<Value> = r.output.as_ref().unwrap().as_array().unwrap().iter().map(|o| o["echo"]["item"].clone()).collect();
    assert_eq!(items, vec![json!("a"), json!("b"), json!("c"), json!("d")]);
    let d = detail(&e, &r);
    assert_eq!(d.steps.iter().filter(|s| s.item.is_some() && s.state == "succeeded").count(), 4);
    assert_eq!(step_state(&d, "each").0, "succeeded");
}

#[tokio::test]
async fn for_each_fails_at_a_failing_item_and_names_it() {
    let story = "name: s\nsteps:\n  - id: each\n    action: picky\n    for_each: '{{ input.items }}'\n    with: {item: '{{ item }}'}\n";
    let (e, _) = engine(
        Scripted::default()
            .with("picky", |c, _| if c.input["item"] == "bad" { Err(InvokeError::InvalidInput { message: "bad item".into() }) } else { Ok(json!({})) }),
        &[story],
    );
    let r = run(&e, "s", json!({"items": ["ok", "bad", "ok"]})).await;
    let err = r.error.clone().unwrap();
    assert_eq!(err.kind, ErrorKind::InvalidInput);
    assert!(err.message.starts_with("item 1: "), "{}", err.message);
    assert_eq!(step_state(&detail(&e, &r), "each").0, "failed");
}

const CALLEE: &str = "name: callee\nteam: ir\nallow_callers: [soc]\ninput: {type: object, required: [host]}\nsteps:\n  - id: act\n    action: echo\n    with: {host: '{{ input.host }}'}\n";

#[tokio::test]
async fn a_sub_story_runs_as_its_own_run_under_its_own_team() {
    let caller = "name: caller\nteam: soc\nsteps:\n  - id: call\n    story: callee\n    with: {host: h1}\n";
    let (e, inv) = engine(Scripted::default().with("echo", echo), &[caller, CALLEE]);
    let r = run(&e, "caller", json!({})).await;
    assert_eq!(r.output, Some(json!({"echo": {"host": "h1"}})));
    assert_eq!(inv.calls("echo")[0].team, "ir", "the callee's grant, never the caller's");
    let d = detail(&e, &r);
    assert_eq!(d.children.len(), 1);
    assert_eq!((d.children[0].story.as_str(), d.children[0].state.as_str()), ("callee", "succeeded"));
}

#[tokio::test]
async fn a_sub_story_refuses_input_its_schema_does_not_accept() {
    let caller = "name: caller\nteam: soc\nsteps:\n  - id: call\n    story: callee\n    with: {nohost: 1}\n";
    let (e, inv) = engine(Scripted::default().with("echo", echo), &[caller, CALLEE]);
    let r = run(&e, "caller", json!({})).await;
    assert_eq!(r.error.unwrap().kind, ErrorKind::InvalidInput);
    assert!(inv.calls("echo").is_empty());
}

#[tokio::test]
async fn a_failed_sub_story_fails_the_calling_step_with_kind_story() {
    let caller = "name: caller\nteam: soc\nsteps:\n  - id: call\n    story: callee\n    with: {host: h1}\n";
    let (e, _) = engine(Scripted::default().with("echo", |_, _| Err(upstream("edr down"))), &[caller, CALLEE]);
    let r = run(&e, "caller", json!({})).await;
    let err = r.error.clone().unwrap();
    assert_eq!(err.kind, ErrorKind::Story);
    // The callee is team ir's: the caller (soc) learns that it failed and where to ask, not its steps or error text.
    assert!(
        err.message.contains("sub-story callee") && err.message.contains("team ir") && !err.message.contains("edr down") && !err.message.contains("act"),
        "{}",
        err.message
    );
    assert_eq!(detail(&e, &r).children[0].state, "failed");
}

#[tokio::test]
async fn the_output_template_shapes_the_run_output() {
    let story = format!("{TWO_STEPS}output: {{first: '{{{{ steps.first.output.echo.n }}}}', run: '{{{{ run.story }}}}'}}\n");
    let (e, _) = engine(Scripted::default().with("echo", echo), &[&story]);
    let r = run(&e, "two", json!({"n": 3})).await;
    assert_eq!(r.output, Some(json!({"first": 3, "run": "two"})));
}

#[tokio::test]
async fn input_that_fails_the_schema_is_refused_before_a_run_exists() {
    let (e, _) = engine(Scripted::default().with("echo", echo), &[CALLEE]);
    let err = e.run("callee", json!({}), "test", &Quiet).await.unwrap_err();
    assert!(matches!(err, super::engine::SubmitError::InvalidInput(_)), "{err:?}");
    assert!(e.store.list_runs(None, None, true, 10, 0).unwrap().is_empty());
}

#[tokio::test]
async fn resume_keeps_finished_steps_and_runs_the_interrupted_one_again() {
    let story = "name: s\nsteps:\n  - id: a\n    action: echo\n    with: {v: 1}\n  - id: b\n    action: echo\n    with: {a: '{{ steps.a.output.echo.v }}'}\n    retry: {attempts: 2, backoff_ms: 1}\n";
    let (e, inv) = engine(Scripted::default().with("echo", echo), &[story]);
    // A run cut off by a restart during step b's first attempt.
    let id = e.submit("s", json!({}), "test").await.unwrap();
    e.store.start_run(&id).unwrap();
    e.store.step_finished(&id, "a", None, "action", "succeeded", Some(&json!({"echo": {"v": 1}})), None, 1).unwrap();
    e.store.step_started(&id, "b", None, "action", Some(&json!({})), 1).unwrap();
    let r = e.resume(&id, &Quiet).await;
    assert_eq!(r.output, Some(json!({"echo": {"a": 1}})), "{:?}", r.error);
    let calls = inv.calls("echo");
    assert_eq!(calls.len(), 1, "step a is not run again");
    assert_eq!(calls[0].info.attempt, 2, "the retry count holds across the restart");
}

#[tokio::test]
async fn resume_fails_a_run_whose_interrupted_step_has_no_attempts_left() {
    let story = "name: s\nsteps:\n  - id: a\n    action: echo\n";
    let (e, inv) = engine(Scripted::default().with("echo", echo), &[story]);
    let id = e.submit("s", json!({}), "test").await.unwrap();
    e.store.start_run(&id).unwrap();
    e.store.step_started(&id, "a", None, "action", Some(&json!({})), 1).unwrap();
    let r = e.resume(&id, &Quiet).await;
    assert_eq!(r.error.as_ref().unwrap().kind, ErrorKind::Interrupted);
    assert!(inv.calls("echo").is_empty(), "an action with side effects is not repeated past its retry policy");
    let d = e.store.get_run(&id).unwrap().unwrap();
    assert_eq!(d.run.state, "failed");
    assert!(d.run.error.unwrap().contains("interrupted by a restart"));
}

#[tokio::test]
async fn a_store_that_refuses_writes_fails_the_run_loudly_and_reports_unhealthy() {
    let store = Arc::new(Flaky::new());
    let (e, _) = engine_on(Scripted::default().with("echo", echo), store.clone(), &[TWO_STEPS]);
    let id = e.submit("two", json!({"n": 1}), "test").await.unwrap();
    assert!(e.store_health().status().is_ok());
    store.fail(Some("step_finished"));
    let r = e.execute(&id, &Quiet).await;
    assert_eq!(r.state, RunState::Failed, "a run whose record is incomplete never claims success");
    let err = r.error.unwrap();
    assert_eq!(err.kind, ErrorKind::Store);
    // The first write of the run that is missing: the step's record (its
    // audit and log commit with it, in one transaction).
    assert!(err.message.starts_with("run store unavailable: cannot record ") && err.message.contains("step first of run"), "{}", err.message);
    assert!(err.message.contains("database or disk is full"), "{}", err.message);
    assert!(store.refused.load(Ordering::SeqCst) >= 4, "the write was retried before giving up");
    let why = e.store_health().status().unwrap_err();
    assert!(why.contains("database or disk is full"), "{why}");
    // The failure itself reached the store, which still takes other writes.
    let d = e.store.get_run(&id).unwrap().unwrap();
    assert_eq!(d.run.state, "failed");
    assert!(d.run.error.unwrap().contains("run store unavailable"));
}

#[tokio::test]
async fn a_store_failure_is_not_hidden_by_on_error_continue() {
    let store = Arc::new(Flaky::new());
    let story = "name: s\nsteps:\n  - id: a\n    action: echo\n    on_error: continue\n  - id: b\n    transform: {set: {done: true}}\n";
    let (e, _) = engine_on(Scripted::default().with("echo", echo), store.clone(), &[story]);
    let id = e.submit("s", json!({}), "test").await.unwrap();
    store.fail(Some("add_audit"));
    let r = e.execute(&id, &Quiet).await;
    assert_eq!((r.state, r.failed_step.as_deref()), (RunState::Failed, Some("a")));
    assert_eq!(r.error.unwrap().kind, ErrorKind::Store);
}

#[tokio::test]
async fn when_even_the_failure_cannot_be_written_the_result_still_says_so() {
    let store = Arc::new(Flaky::new());
    let (e, _) = engine_on(Scripted::default().with("echo", echo), store.clone(), &[TWO_STEPS]);
    let id = e.submit("two", json!({"n": 1}), "test").await.unwrap();
    store.fail(None);
    let r = e.execute(&id, &Quiet).await;
    assert_eq!(r.state, RunState::Failed);
    assert!(r.error.unwrap().message.starts_with("run store unavailable: cannot record the start of run"));
    store.heal();
    assert!(e.submit("two", json!({"n": 2}), "test").await.is_ok(), "the store takes writes again");
}

#[tokio::test]
async fn an_unhealthy_store_is_reported_for_the_window_then_healthy_again() {
    let store = Arc::new(Flaky::new());
    let (e, _) = engine_on(Scripted::default().with("echo", echo), store.clone(), &[TWO_STEPS]);
    let e = e.with_health_window(Duration::from_millis(300));
    store.fail(Some("create_run"));
    let err = e.submit("two", json!({"n": 1}), "test").await.unwrap_err();
    assert!(err.to_string().starts_with("run store unavailable: cannot record run"), "{err}");
    assert!(e.store_health().status().is_err());
    assert_eq!(e.store_health().failures(), 1);
    store.heal();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(e.store_health().status().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_slow_store_write_does_not_stall_the_other_tasks_of_its_thread() {
    let store = Arc::new(Flaky::new());
    let (e, _) = engine_on(Scripted::default().with("echo", echo), store.clone(), &[TWO_STEPS]);
    store.delay_ms.store(400, Ordering::SeqCst);
    let ticks = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let ticker = {
        let ticks = ticks.clone();
        tokio::spawn(async move {
            for _ in 0..1000 {
                tokio::time::sleep(Duration::from_millis(5)).await;
                ticks.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    // One worker thread, and the run's writes on it: a write that held it
    // would stop the ticker for 400 ms.
    let e = Arc::new(e);
    let submitted = tokio::spawn({
        let e = e.clone();
        async move { e.submit("two", json!({"n": 1}), "test").await }
    });
    assert!(submitted.await.unwrap().is_ok());
    let during = ticks.load(Ordering::SeqCst);
    ticker.abort();
    assert!(during >= 10, "only {during} ticks while one write took 400 ms: the write blocked the runtime's only worker");
}

#[tokio::test]
async fn two_submissions_racing_with_one_idempotency_key_share_one_run_and_leave_the_store_healthy() {
    let (e, _) = engine(Scripted::default().with("echo", echo), &[TWO_STEPS]);
    let (a, b) = tokio::join!(e.submit_once("two", json!({"n": 1}), "test", Some("k")), e.submit_once("two", json!({"n": 1}), "test", Some("k")));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.0, b.0);
    assert!(a.1 ^ b.1, "exactly one created it: {a:?} {b:?}");
    assert!(e.store_health().status().is_ok());
    assert_eq!(e.store.list_runs(None, None, true, 10, 0).unwrap().len(), 1);
}

#[tokio::test]
async fn a_conflicting_create_is_answered_at_once_and_is_not_a_store_failure() {
    use super::recorder::Recorder;
    use crate::store::NewRun;
    let rec = Recorder::new(Arc::new(SqliteStore::in_memory().unwrap()), Arc::default());
    let input = json!({});
    let run = |id| NewRun { id, story: "st", team: "t", trigger: "webhook", input: &input, parent: None, idempotency_key: Some("k") };
    rec.create_run(&run("r1")).await.unwrap();
    let refused = rec.create_run(&run("r2")).await.unwrap_err();
    assert!(refused.to_string().contains("already has a run for this Idempotency-Key"), "{refused}");
    assert!(rec.health.status().is_ok() && rec.health.failures() == 0, "a conflict is an answer, not a store failure");
}

const ASK: &str = "
name: ask
steps:
  - id: before
    action: echo
    with: {link: '{{ approval.confirm.links.approve }}'}
  - id: confirm
    approval:
      title: 'Go on with {{ input.n }}?'
      timeout: 1h
  - id: after
    action: echo
    with: {said: '{{ steps.confirm.output.choice }}'}
";

fn decision(choice: &str) -> crate::approval::Decision {
    crate::approval::Decision { choice: Some(choice.into()), decided_by: "tester".into(), via: "cli".into(), from: None, comment: None, decided_ms: 1 }
}

#[tokio::test]
async fn an_approval_parks_the_run_and_a_decision_resumes_it_after_the_step() {
    let (e, inv) = engine(Scripted::default().with("echo", echo), &[ASK]);
    let r = run(&e, "ask", json!({"n": 7})).await;
    assert_eq!((r.state, r.failed_step.as_deref()), (RunState::Waiting, Some("confirm")), "{:?}", r.error);
    let d = detail(&e, &r);
    assert_eq!(d.run.state, "waiting");
    assert_eq!(step_state(&d, "confirm").0, "waiting");
    let store = e.store.approvals().unwrap();
    let a = store.approval(&r.run_id, "confirm").unwrap().unwrap();
    assert_eq!((a.title.as_str(), a.choices.clone(), a.state.as_str()), ("Go on with 7?", vec!["approve".to_string(), "reject".to_string()], "pending"));
    // The earlier step's plugin got the link with its token sealed, and its
    // egress the token, which the store knows.
    let call = &inv.calls("echo")[0];
    let link = call.input["link"].as_str().unwrap().to_string();
    let sealed = link.rsplit('/').next().unwrap();
    assert!(sealed.starts_with(crate::approval::PLACEHOLDER_PREFIX), "{link}");
    let handed: Vec<(&str, &str)> = call.info.handed.iter().collect();
    assert_eq!(handed.len(), 1, "{handed:?}");
    assert_eq!(handed[0].0, sealed);
    let (found, l) = store.approval_by_link(&crate::approval::token_hash(handed[0].1)).unwrap().unwrap();
    assert_eq!((found.run.as_str(), l.choice.as_str(), l.recipient.as_str()), (r.run_id.as_str(), "approve", ""));
    // The run record (read by the whole team) keeps what the plugin got.
    let stored = d.steps.iter().find(|s| s.step_id == "before").unwrap().input.clone().unwrap();
    assert_eq!(stored["link"].as_str().unwrap(), link);
    // Woken before a decision: nothing to wake.
    assert!(store.runs_to_wake(10).unwrap().is_empty());

    let decided = crate::store::decide(store, &a, "reject", None, false, decision("x")).unwrap().unwrap();
    assert_eq!(decided.state, "decided");
    let again = crate::store::decide(store, &a, "approve", None, false, decision("x")).unwrap();
    assert!(matches!(again, Err(crate::approval::Refused::Over(_))), "decided twice: {again:?}");
    let stale = store.decide(&r.run_id, "confirm", &decision("approve")).unwrap();
    assert!(matches!(stale, Err(crate::approval::Refused::Over(_))), "the store decided twice: {stale:?}");
    assert_eq!(store.runs_to_wake(10).unwrap(), vec![r.run_id.clone()]);
    assert!(store.wake(&r.run_id).unwrap());
    assert!(!store.wake(&r.run_id).unwrap(), "woken twice");
    assert!(store.runs_to_wake(10).unwrap().is_empty());

    let r2 = e.resume(&r.run_id, &Quiet).await;
    assert_eq!(r2.state, RunState::Succeeded, "{:?}", r2.error);
    assert_eq!(r2.output, Some(json!({"echo": {"said": "reject"}})));
    assert_eq!(inv.calls("echo").len(), 2, "the step before the approval ran once");
    let d = detail(&e, &r2);
    assert_eq!(d.steps.iter().find(|s| s.step_id == "confirm").unwrap().output.as_ref().unwrap()["decided_by"], "tester");
    assert!(d.audit.iter().any(|a| a["kind"] == "approval" && a["choice"] == "reject"), "{:?}", d.audit);
}

#[tokio::test]
async fn an_expired_approval_fails_its_step_and_its_on_error_applies() {
    let story = "
name: s
steps:
  - id: confirm
    approval: {title: t, timeout: 1s}
    on_error: continue
  - id: after
    action: echo
    with: {status: '{{ steps.confirm.status }}'}
";
    let (e, _) = engine(Scripted::default().with("echo", echo), &[story]);
    let r = run(&e, "s", json!({})).await;
    assert_eq!(r.state, RunState::Waiting);
    let store = e.store.approvals().unwrap();
    let due = store.due_approvals(u64::MAX, 10).unwrap();
    assert_eq!(due.len(), 1);
    let expired = crate::approval::Decision { choice: None, decided_by: "timeout".into(), via: "timeout".into(), from: None, comment: None, decided_ms: 2 };
    assert_eq!(store.decide(&r.run_id, "confirm", &expired).unwrap().unwrap().state, "expired");
    assert!(store.wake(&r.run_id).unwrap());
    let r = e.resume(&r.run_id, &Quiet).await;
    assert_eq!(r.output, Some(json!({"echo": {"status": "failed"}})), "{:?}", r.error);
}

/// The load error of a story file `s.yaml` holding `story`.
fn bad(story: &str) -> String {
    parse(story, Path::new("s.yaml")).unwrap_err().to_string()
}

#[test]
fn approval_steps_are_checked_at_load() {
    let e = bad("name: s\nsteps:\n  - id: a\n    approval: {title: t, timeout: 1h, choices: [go, stop], on_timeout: later}\n");
    assert!(e.contains("s.yaml:3: step `a`: approval: on_timeout `later` is neither one of the choices (go, stop) nor fail"), "{e}");
    let e = bad("name: s\nsteps:\n  - id: a\n    approval: {title: t, timeout: soon}\n");
    assert!(e.contains("timeout: `soon` is not a duration"), "{e}");
    let e = bad("name: s\nsteps:\n  - id: a\n    for_each: '{{ input.x }}'\n    retry: {attempts: 2}\n    approval: {title: t, timeout: 1h}\n");
    assert!(e.contains("an approval step takes no for_each") && e.contains("an approval step takes no retry"), "{e}");
    let e = bad("name: s\nsteps:\n  - id: a\n    transform: {set: {x: '{{ approval.nope.links.approve }}'}}\n");
    assert!(e.contains("reads approval.nope, but this story has no approval step by that name"), "{e}");
    let e = bad("name: s\nsteps:\n  - id: a\n    approval: {title: t, timeout: 1h, approvers: '{{ steps.x.output }}'}\n");
    assert!(e.contains("approvers"), "{e}");
    let e = bad("name: s\nsteps:\n  - id: a\n    transform: {set: {}}\n    on_error: f\nfallbacks:\n  - id: f\n    approval: {title: t, timeout: 1h}\n");
    assert!(e.contains("fallback `f` is an approval"), "{e}");
    // A sub-story that can wait may not run per item.
    let waits = "name: w\nsteps:\n  - id: a\n    approval: {title: t, timeout: 1h}\n";
    let caller = "name: c\nsteps:\n  - id: each\n    for_each: '{{ input.xs }}'\n    story: w\n";
    let lib = library(&[waits, caller]);
    let e = lib.check(&Policy::empty()).unwrap_err().to_string();
    assert!(e.contains("story `w` can wait for an approval, which a for_each step cannot do"), "{e}");
}

#[test]
fn an_input_schema_keyword_that_would_go_unchecked_is_refused_at_load() {
    let e = bad("name: s\ninput: {type: object, properties: {who: {type: string, format: phone}}}\nsteps:\n  - id: a\n    transform: {set: {}}\n");
    assert!(e.contains("s.yaml:1: input schema: who: format \"phone\" is not one warden checks"), "{e}");
    let e = bad("name: s\ninput: {type: object, properties: {n: {maximum: ten}}}\nsteps:\n  - id: a\n    transform: {set: {}}\n");
    assert!(e.contains("n: maximum must be a number"), "{e}");
    parse("name: s\ninput: {type: object, additionalProperties: false, properties: {n: {type: integer, minimum: 1}}}\nsteps:\n  - id: a\n    transform: {set: {}}\n", Path::new("s.yaml")).unwrap();
}

#[test]
fn a_story_is_steps_or_a_graph_and_keeps_only_that_kinds_fields() {
    let graph = "name: g\ngraph:\n  agents:\n    - id: start\n      kind: webhook\n";
    let g = parse(graph, Path::new("g.yaml")).unwrap();
    assert!(g.graph().is_some() && g.steps().is_none());
    let s = parse(TWO_STEPS, Path::new("s.yaml")).unwrap();
    assert!(s.steps().is_some_and(|b| b.steps.len() == 2) && s.graph().is_none());
    // `output:` is a story of steps' own: on a graph story it would be dropped, so it is refused.
    let e = bad(&format!("{graph}output: '{{{{ input }}}}'\n"));
    assert!(e.contains("g.yaml:1") || e.contains("s.yaml:1"), "{e}");
    assert!(e.contains("`output:` belongs to a story of steps") && e.contains("remove `output:`"), "{e}");
    let e = bad(&format!("{graph}steps:\n  - id: a\n    transform: {{set: {{x: 1}}}}\n"));
    assert!(e.contains("has both steps and a graph"), "{e}");
}

#[test]
fn a_choice_may_be_marked_dangerous_and_to_be_confirmed_and_a_bad_mark_is_said_with_its_line() {
    let story = |choices: &str| format!("name: s\nsteps:\n  - id: ask\n    approval:\n      title: t\n      choices: {choices}\n      timeout: 1h\n");
    let s = parse(&story("[{name: isolate, style: danger, confirm: true}, ignore]"), Path::new("s.yaml")).unwrap();
    let crate::story::StepKind::Approval(spec) = &s.steps().unwrap().steps[0].kind else { panic!("an approval step") };
    assert_eq!(
        (spec.choices.clone(), spec.danger.clone(), spec.confirm.clone()),
        (vec!["isolate".to_string(), "ignore".into()], vec!["isolate".to_string()], vec!["isolate".to_string()])
    );
    let e = parse(&story("[{name: isolate, style: red}]"), Path::new("s.yaml")).unwrap_err().to_string();
    assert!(e.contains("s.yaml:") && e.contains("style `red` is not a style; use danger or default"), "{e}");
    let e = parse(&story("[{name: isolate, confirm: yes, colour: red}]"), Path::new("s.yaml")).unwrap_err().to_string();
    assert!(e.contains("s.yaml:"), "{e}");
}
