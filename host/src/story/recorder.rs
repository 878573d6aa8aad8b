//! The run recorder: the one place that writes a run's record. A write that
//! fails is retried briefly; if the store still refuses, the recorder says so
//! ([`StoreDown`]), the engine fails the run with that error, and
//! [`StoreHealth`] reports the store unhealthy for a while ([`UNHEALTHY_FOR`]).
//! Never a run that claims success with a missing record.

use super::state::{ErrorKind, RunState, StepError, StepState};
use crate::audit::AuditRecord;
use crate::invocation::LogLine;
use crate::store::{NewRun, Store};
use serde_json::Value;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Pauses between the attempts of one write: about a third of a second in all,
/// enough for a lock held by a checkpoint or a busy neighbour to clear.
const RETRY_PAUSES: [Duration; 3] = [Duration::from_millis(10), Duration::from_millis(50), Duration::from_millis(250)];

/// A write the store refused after every retry.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreDown(pub String);

impl std::fmt::Display for StoreDown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "run store unavailable: {}", self.0)
    }
}

impl From<StoreDown> for StepError {
    fn from(e: StoreDown) -> StepError {
        StepError::new(ErrorKind::Store, e.to_string())
    }
}

/// How long one refused write keeps the store reported unhealthy: long
/// enough for a health check polling every few seconds to see it.
pub const UNHEALTHY_FOR: Duration = Duration::from_secs(60);

/// Whether writes reach the store; read by `/healthz` and metrics.
pub struct StoreHealth {
    last_failure: Mutex<Option<(Instant, String)>>,
    failures: AtomicU64,
    window: Duration,
}

impl Default for StoreHealth {
    fn default() -> Self {
        StoreHealth::with_window(UNHEALTHY_FOR)
    }
}

impl StoreHealth {
    /// Reports unhealthy for `window` after each refused write.
    pub fn with_window(window: Duration) -> StoreHealth {
        StoreHealth { last_failure: Mutex::new(None), failures: AtomicU64::new(0), window }
    }

    /// `Err(why)` while a write was refused within the window.
    pub fn status(&self) -> Result<(), String> {
        match &*self.last_failure.lock().unwrap_or_else(|p| p.into_inner()) {
            Some((at, why)) if at.elapsed() < self.window => Err(why.clone()),
            _ => Ok(()),
        }
    }

    /// Writes that failed after every retry, since start.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    fn refused(&self, why: String) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        *self.last_failure.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), why));
    }
}

/// Runs a store call (SQLite takes a lock and may wait on the disk) without
/// stalling the other tasks of this worker thread: on a multi-threaded
/// runtime they move to another thread meanwhile.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Writes one run's record (and its sub-runs').
#[derive(Clone)]
pub struct Recorder {
    store: Arc<dyn Store>,
    pub health: Arc<StoreHealth>,
}

impl Recorder {
    pub fn new(store: Arc<dyn Store>, health: Arc<StoreHealth>) -> Recorder {
        Recorder { store, health }
    }

    /// Runs `write` until it succeeds or the retries are spent.
    async fn write(&self, what: &str, write: impl Fn(&dyn Store) -> anyhow::Result<()>) -> Result<(), StoreDown> {
        let mut pauses = RETRY_PAUSES.iter();
        loop {
            match blocking(|| write(self.store.as_ref())) {
                Ok(()) => return Ok(()),
                // A conflict is the store working: no retry, and not unhealthy.
                Err(e) if e.is::<crate::store::Conflict>() => return Err(StoreDown(format!("{e}"))),
                Err(e) => match pauses.next() {
                    Some(pause) => tokio::time::sleep(*pause).await,
                    None => {
                        let why = format!("cannot record {what}: {e:#}");
                        tracing::error!("run store unavailable: {why}");
                        self.health.refused(why.clone());
                        return Err(StoreDown(why));
                    }
                },
            }
        }
    }

    pub async fn create_run(&self, r: &NewRun<'_>) -> Result<(), StoreDown> {
        self.write(&format!("run {}", r.id), |s| s.create_run(r)).await
    }

    pub async fn start_run(&self, run: &str) -> Result<(), StoreDown> {
        self.write(&format!("the start of run {run}"), |s| s.start_run(run)).await
    }

    pub async fn finish_run(&self, run: &str, state: RunState, output: Option<&Value>, error: Option<&str>, failed_step: Option<&str>) -> Result<(), StoreDown> {
        self.write(&format!("the end of run {run}"), |s| s.finish_run(run, state.as_str(), output, error, failed_step)).await
    }

    pub async fn step_started(&self, at: &StepAt<'_>, input: Option<&Value>, attempt: u32) -> Result<(), StoreDown> {
        self.write(&format!("step {} of run {}", at.step, at.run), |s| s.step_started(at.run, at.step, at.item, at.kind, input, attempt)).await
    }

    pub async fn step_finished(&self, at: &StepAt<'_>, state: StepState, output: Option<&Value>, error: Option<&StepError>, attempts: u32) -> Result<(), StoreDown> {
        let error = error.map(|e| serde_json::to_value(e).unwrap_or(Value::Null));
        self.write(&format!("step {} of run {}", at.step, at.run), |s| s.step_finished(at.run, at.step, at.item, at.kind, state.as_str(), output, error.as_ref(), attempts))
            .await
    }

    pub async fn logs_and_audit(&self, run: &str, step: &str, logs: &[LogLine], audit: &[AuditRecord]) -> Result<(), StoreDown> {
        self.write(&format!("the log of step {step} of run {run}"), |s| s.add_logs(run, step, logs)).await?;
        self.write(&format!("the audit of step {step} of run {run}"), |s| s.add_audit(run, step, audit)).await
    }
}

/// Which row a step write goes to: run, step, `for_each` item, and step kind.
pub struct StepAt<'a> {
    pub run: &'a str,
    pub step: &'a str,
    pub item: Option<usize>,
    pub kind: &'static str,
}
