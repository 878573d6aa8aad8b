//! The step engine: runs the body of a story of steps ([`Body::Steps`]).
//!
//! Steps run in order; each may have `if`, `for_each` (+ `concurrency`) and
//! `on_error` (`fail`, `continue`, or a fallback step); the story's `output`
//! is rendered from the steps' results. Running any one step — its retries,
//! its timeout, the action, sub-story or approval it is — is asked of the
//! run's engine through [`StepRunner`]: this crate is only the order.
//!
//! [`Body::Steps`]: warden_story::story::Body::Steps

use futures::stream::{FuturesOrdered, StreamExt};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use warden_story::story::observe::Observer;
use warden_story::story::run::{Resume, RunOutcome, StepRun, StepRunner};
use warden_story::story::state::{ErrorKind, StepError, StepState};
use warden_story::story::template::{render_str, render_value, truthy, Bindings};
use warden_story::story::{OnError, Steps, Story};

/// The template context of a run: what its templates can read so far.
struct Context {
    bindings: Bindings,
}

impl Context {
    fn new(run: &str, story: &Story, input: &Value) -> Context {
        let mut bindings = Bindings::default();
        bindings.set("input", input);
        bindings.set("run", &json!({"id": run, "story": story.name, "team": story.team}));
        Context { bindings }
    }
    fn set_step(&mut self, id: &str, status: StepState, output: Value, error: Option<&StepError>) {
        self.bindings.set_step(id, &json!({"status": status, "output": output, "error": error}));
    }
    fn with_item(&self, item: &Value, index: usize) -> Bindings {
        let mut b = self.bindings.with("item", item);
        b.set("index", &json!(index));
        b
    }
}

/// Runs (or resumes, from `resume`) the steps of `story` as run `run_id`.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    runner: &dyn StepRunner,
    story: &Story,
    body: &Steps,
    run_id: &str,
    root: &str,
    input: Value,
    depth: usize,
    observer: &dyn Observer,
    resume: Resume,
) -> RunOutcome {
    let mut ctx = Context::new(run_id, story, &input);
    if let Some(links) = runner.approval_links(story, run_id, root, &ctx.bindings).map_err(|e| (None, e))? {
        ctx.bindings.set("approval", &links);
    }
    let mut last_output = Value::Null;
    for (id, status, output, error) in &resume.done {
        ctx.set_step(id, *status, output.clone(), error.as_ref());
        last_output = output.clone();
    }
    for (i, step) in body.steps.iter().enumerate().skip(resume.from) {
        // A resumed step continues its attempt count, so the retry policy holds across restarts.
        let first_attempt = if i == resume.from { resume.attempts_used + 1 } else { 1 };
        let waiting_child = if i == resume.from { resume.waiting_child.as_deref() } else { None };
        let sr = StepRun { story, step, run: run_id, root, depth, observer, waiting_child };
        match run_step(runner, body, &sr, &mut ctx, first_attempt).await {
            Ok(Some(out)) => last_output = out,
            Ok(None) => {}
            Err(e) => return Err((Some(step.id.clone()), e)),
        }
    }
    match &body.output {
        Some(template) => {
            render_value(template, &ctx.bindings).map_err(|e| (Some("output".to_string()), StepError::new(ErrorKind::Template, format!("output: {e}"))))
        }
        None => Ok(last_output),
    }
}

/// One step: condition, items, retries, error policy. `Ok(None)` when it
/// adds no output (skipped, or failed with `on_error: continue`).
async fn run_step(runner: &dyn StepRunner, body: &Steps, sr: &StepRun<'_>, ctx: &mut Context, first_attempt: u32) -> Result<Option<Value>, StepError> {
    let step = sr.step;
    let recorder = runner.recorder();
    if let Some(cond) = &step.condition {
        match render_str(cond, &ctx.bindings) {
            Ok(v) if !truthy(&v) => {
                recorder.step_finished(&sr.at(None), StepState::Skipped, None, None, 0);
                sr.finished(None, StepState::Skipped, Duration::ZERO, None);
                ctx.set_step(&step.id, StepState::Skipped, Value::Null, None);
                return Ok(None);
            }
            Ok(_) => {}
            Err(e) => {
                let e = StepError::new(ErrorKind::Template, format!("if `{cond}`: {e}"));
                recorder.step_finished(&sr.at(None), StepState::Failed, None, Some(&e), 0);
                return Err(e);
            }
        }
    }
    let started = Instant::now();
    let result = match &step.for_each {
        None => runner.attempts(sr, &ctx.bindings, None, first_attempt).await,
        Some(list) => {
            let result = for_each(runner, sr, ctx, list, first_attempt).await;
            // The step as a whole, beside its items' rows.
            let (state, out, err) = match &result {
                Ok(out) => (StepState::Succeeded, Some(out), None),
                Err(e) => (StepState::Failed, None, Some(e)),
            };
            recorder.step_finished(&sr.at(None), state, out, err, 1);
            result
        }
    };
    let e = match result {
        Ok(out) => {
            ctx.set_step(&step.id, StepState::Succeeded, out.clone(), None);
            return Ok(Some(out));
        }
        // No error policy may hide a run the store could not record, and
        // a parked run is not a failure.
        Err(e) if e.kind == ErrorKind::Store || e.kind == ErrorKind::Waiting => return Err(e),
        Err(e) => e,
    };
    match &step.on_error {
        OnError::Fail => Err(e),
        OnError::Continue => {
            sr.finished(None, StepState::Continued, started.elapsed(), Some(&e));
            ctx.set_step(&step.id, StepState::Failed, Value::Null, Some(&e));
            Ok(None)
        }
        OnError::Fallback(name) => {
            let fb = body.fallback(name).expect("checked at load");
            let fctx = ctx.bindings.with("error", &json!({"step": step.id, "kind": e.kind, "message": e.message}));
            let fsr = StepRun { step: fb, ..*sr };
            let out = runner.attempts(&fsr, &fctx, None, 1).await.map_err(|fe| match fe.kind {
                ErrorKind::Store => fe,
                _ => StepError::new(fe.kind, format!("fallback {name} failed too: {} (after: {})", fe.message, e.message)),
            })?;
            ctx.set_step(&step.id, StepState::Recovered, out.clone(), Some(&e));
            Ok(Some(out))
        }
    }
}

async fn for_each(runner: &dyn StepRunner, sr: &StepRun<'_>, ctx: &Context, list: &str, first_attempt: u32) -> Result<Value, StepError> {
    let items = match render_str(list, &ctx.bindings).map_err(|e| StepError::new(ErrorKind::Template, format!("for_each `{list}`: {e}")))? {
        Value::Array(a) => a,
        other => return Err(StepError::new(ErrorKind::Template, format!("for_each `{list}` must give a list, not {other}"))),
    };
    // At most `concurrency` items in flight; results kept in item order.
    let mut pending = FuturesOrdered::new();
    let mut next = items.iter().enumerate();
    let mut outputs = Vec::with_capacity(items.len());
    loop {
        while pending.len() < sr.step.concurrency {
            let Some((i, item)) = next.next() else { break };
            let ictx = ctx.with_item(item, i);
            pending.push_back(async move { (i, runner.attempts(sr, &ictx, Some(i), first_attempt).await) });
        }
        match pending.next().await {
            Some((_, Ok(v))) => outputs.push(v),
            Some((_, Err(e))) if e.kind == ErrorKind::Store => return Err(e),
            Some((i, Err(e))) => return Err(StepError { message: format!("item {i}: {}", e.message), ..e }),
            None => break,
        }
    }
    Ok(Value::Array(outputs))
}
