//! The run recorder: the one place that writes a run's record, through the
//! store's group commit ([`crate::store::group`]). Writes that must be
//! durable before the run goes on are awaited — the run's creation, a step's
//! start before its side effects, the run's end — and the step records in
//! between are queued and committed with the next of those. If the store
//! refuses, the recorder says so ([`StoreDown`]), the engine fails the run with
//! that error, and [`StoreHealth`] reports the store unhealthy for a while.
//! Never a run that claims success with a missing record.

use super::state::{ErrorKind, RunState, StepError, StepState};
use crate::audit::AuditRecord;
use crate::invocation::LogLine;
use crate::store::group::{GroupCommit, Refused};
use crate::store::{NewRun, RunStore, Write};
use serde_json::Value;
use std::sync::Arc;

pub use crate::store::group::{StoreHealth, UNHEALTHY_FOR};

/// A write the store refused after every retry (or that clashed).
#[derive(Debug, Clone, PartialEq)]
pub struct StoreDown {
    pub why: String,
    /// The step whose record is missing, when it is a step's.
    pub step: Option<String>,
}

impl std::fmt::Display for StoreDown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "run store unavailable: {}", self.why)
    }
}

impl From<StoreDown> for StepError {
    fn from(e: StoreDown) -> StepError {
        StepError::new(ErrorKind::Store, e.to_string())
    }
}

/// Writes one run's record (and its sub-runs').
#[derive(Clone)]
pub struct Recorder {
    writer: GroupCommit,
    pub health: Arc<StoreHealth>,
}

impl Recorder {
    pub fn new(store: Arc<dyn RunStore>, health: Arc<StoreHealth>) -> Recorder {
        Recorder { writer: GroupCommit::start(store, health.clone()), health }
    }

    /// Commits `write` and what was queued before it; `Ok` once durable.
    async fn commit(&self, write: Write) -> Result<(), StoreDown> {
        match self.writer.commit(write).await {
            Ok(()) => Ok(()),
            // A conflict is the store working: the message says what clashed.
            Err(Refused::Conflict(why)) => Err(StoreDown { why, step: None }),
            Err(Refused::Down { why, step }) => Err(StoreDown { why, step }),
        }
    }

    pub async fn create_run(&self, r: &NewRun<'_>) -> Result<(), StoreDown> {
        self.commit(Write::create_run(r)).await
    }

    /// Queued: for a run whose caller waits for its end (see `StoryRunner::accept`).
    pub fn create_run_queued(&self, r: &NewRun<'_>) {
        self.writer.queue(Write::create_run(r))
    }

    /// Queued: a run marked running that did nothing yet simply starts again.
    pub fn start_run(&self, run: &str) {
        self.writer.queue(Write::start_run(run))
    }

    pub async fn finish_run(
        &self,
        run: &str,
        state: RunState,
        output: Option<&Value>,
        error: Option<&str>,
        failed_step: Option<&str>,
    ) -> Result<(), StoreDown> {
        self.commit(Write::finish_run(run, state.as_str(), output, error, failed_step)).await
    }

    /// Awaited: a step's side effects start only once its start is durable.
    pub async fn step_started(&self, at: &StepAt<'_>, input: Option<&Value>, attempt: u32) -> Result<(), StoreDown> {
        self.commit(Write::step_started(at.run, at.step, at.item, at.kind, input, attempt)).await
    }

    /// Queued: committed with the run's next awaited write at the latest.
    pub fn step_finished(&self, at: &StepAt<'_>, state: StepState, output: Option<&Value>, error: Option<&StepError>, attempts: u32) {
        self.writer.queue(self.step_finished_write(at, state, output, error, attempts))
    }

    /// [`Recorder::step_finished`], awaited (when nothing else follows soon).
    pub async fn step_finished_now(
        &self,
        at: &StepAt<'_>,
        state: StepState,
        output: Option<&Value>,
        error: Option<&StepError>,
        attempts: u32,
    ) -> Result<(), StoreDown> {
        self.commit(self.step_finished_write(at, state, output, error, attempts)).await
    }

    fn step_finished_write(&self, at: &StepAt<'_>, state: StepState, output: Option<&Value>, error: Option<&StepError>, attempts: u32) -> Write {
        let error = error.map(|e| serde_json::to_value(e).unwrap_or(Value::Null));
        Write::step_finished(at.run, at.step, at.item, at.kind, state.as_str(), output, error.as_ref(), attempts)
    }

    /// Awaited: the run is parked at `at` (waiting, with its approval when
    /// the step is one) before its task lets go of it.
    pub async fn park(&self, at: &StepAt<'_>, approval: Option<(crate::approval::Approval, Vec<crate::approval::Link>)>) -> Result<(), StoreDown> {
        self.commit(Write::park(at.run, at.step, at.kind, approval)).await
    }

    /// Remembers `value` (a digest) for a deduplicate agent across runs:
    /// `Ok(true)` when it is new, `Ok(false)` when one of the last `lookback`
    /// values of `scope` was the same. Committed before the answer.
    pub async fn remember(&self, run: &str, scope: &str, value: &str, lookback: u64) -> Result<bool, StoreDown> {
        let write = Write::Remember { run: run.into(), scope: scope.into(), value: value.into(), lookback };
        match self.writer.commit(write).await {
            Ok(()) => Ok(true),
            Err(Refused::Conflict(_)) => Ok(false),
            Err(Refused::Down { why, step }) => Err(StoreDown { why, step }),
        }
    }

    /// The trace of a run's spans, queued.
    pub fn traced(&self, run: &str, (trace_id, span_id): (String, String)) {
        self.writer.queue(Write::Traced { run: run.into(), trace_id, span_id })
    }

    /// A step attempt's recording, queued like the step record it belongs to.
    pub fn recording(&self, at: &StepAt<'_>, attempt: u32, recording: crate::recording::Stored) {
        self.writer.queue(Write::recording(at.run, at.step, at.item, attempt, recording))
    }

    /// Queued, like the step record they belong to. Nothing is queued for an empty list.
    pub fn logs_and_audit(&self, run: &str, step: &str, logs: &[LogLine], audit: &[AuditRecord]) {
        if !logs.is_empty() {
            self.writer.queue(Write::logs(run, step, logs));
        }
        if !audit.is_empty() {
            match Write::audit(run, step, audit) {
                Ok(w) => self.writer.queue(w),
                // Serializing an audit record cannot fail (plain data); if it
                // ever did, losing it silently would be worse than a log line.
                Err(e) => tracing::error!(run, step, "cannot serialize an audit record: {e:#}"),
            }
        }
    }
}

/// Which row a step write goes to: run, step, `for_each` item, and step kind.
pub struct StepAt<'a> {
    pub run: &'a str,
    pub step: &'a str,
    pub item: Option<usize>,
    pub kind: &'static str,
}
