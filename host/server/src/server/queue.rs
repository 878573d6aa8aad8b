//! The worker pool: at most `workers` runs execute at once, and at most the
//! trigger's `concurrency` runs of one story. Runs wait in memory only after
//! they are durable in the store, so a crash loses nothing. On a store shared
//! by several nodes, a run executes here only under this node's lease (see
//! [`crate::store::Cluster`] and [`super::node`]).

use super::metrics::{Metrics, MetricsObserver};
use crate::policy::{Policy, Role};
use crate::store::Cluster;
use crate::store::NewRun;
use crate::story::engine::{NewlyAccepted, RunResult, StoryRunner, SubmitError};
use futures::FutureExt as _;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{oneshot, Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::task::TaskTracker;

type PermitResult = Result<tokio::sync::OwnedSemaphorePermit, tokio::sync::AcquireError>;

/// How a queued run starts.
pub enum Start {
    /// Just accepted: its story and input are at hand.
    Accepted(NewlyAccepted),
    /// Recorded earlier (queued at a restart): read from the store.
    FromStore,
    /// Woken (an approval decided): resumed (see [`StoryRunner::resume`]).
    Resume,
    /// Found unfinished when the process started (or its node's lease
    /// lapsed): counted, then resumed (`started`) or executed, unless its
    /// resumes keep ending the process (see [`StoryRunner::resume_after_restart`]).
    AfterRestart { started: bool },
}

#[derive(Clone)]
pub struct Queue {
    pub(super) engine: Arc<StoryRunner>,
    metrics: Arc<Metrics>,
    pub(super) workers: Arc<Semaphore>,
    per_story: Arc<Mutex<HashMap<String, Arc<Semaphore>>>>,
    /// Each story's `concurrency` (others: the default).
    pub(super) limits: Arc<HashMap<String, usize>>,
    pub(super) tracker: TaskTracker,
    /// Notified whenever a run ends here: a worker is free.
    pub(super) freed: Arc<Notify>,
    pub(super) role: Role,
    /// Callers waiting for runs that execute on other nodes.
    pub(super) waiters: Arc<Waiters>,
    /// The runs executing here now (for a drain that reaches its deadline).
    executing: Arc<Mutex<std::collections::HashSet<String>>>,
    /// Run spans, made from the engine's events (`[telemetry]`).
    telemetry: Option<Arc<crate::telemetry::Telemetry>>,
}

impl Queue {
    pub fn start(
        engine: Arc<StoryRunner>,
        metrics: Arc<Metrics>,
        workers: usize,
        policy: &Policy,
        role: Role,
        telemetry: Option<Arc<crate::telemetry::Telemetry>>,
    ) -> Queue {
        let limits = policy.triggers.iter().map(|(s, t)| (s.clone(), t.concurrency)).collect();
        Queue {
            engine,
            metrics,
            workers: Arc::new(Semaphore::new(workers.max(1))),
            per_story: Arc::default(),
            limits: Arc::new(limits),
            tracker: TaskTracker::new(),
            freed: Arc::new(Notify::new()),
            role,
            waiters: Arc::default(),
            executing: Arc::default(),
            telemetry,
        }
    }

    /// The queue shared with other nodes, when the store has one.
    pub(super) fn cluster(&self) -> Option<&dyn Cluster> {
        self.engine.store.cluster()
    }

    /// Runs of `story` allowed at once (here, and across the cluster).
    pub(super) fn limit(&self, story: &str) -> usize {
        *self.limits.get(story).unwrap_or(&crate::policy::triggers::DEFAULT_CONCURRENCY)
    }

    fn story_gate(&self, story: &str) -> Arc<Semaphore> {
        let mut map = self.per_story.lock().unwrap();
        map.entry(story.to_string()).or_insert_with(|| Arc::new(Semaphore::new(self.limit(story)))).clone()
    }

    /// A worker and a place in the story's gate, if both are free now.
    fn try_permits(&self, story: &str) -> Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)> {
        let gate = self.story_gate(story);
        gate.try_acquire_owned().ok().and_then(|s| Some((s, self.workers.clone().try_acquire_owned().ok()?)))
    }

    /// Where a run just accepted executes, and — when the caller `wait`s —
    /// its result. Alone (SQLite): here, at once or queued. In a cluster: here
    /// if this node executes runs, has a free worker and the story has room
    /// across the cluster (this node then holds the run's lease); otherwise
    /// it waits in the shared queue for whichever node has room, and a
    /// waiting caller is answered when the store records its end.
    ///
    /// `Err` only for a run the caller was to record ([`crate::story::engine::Creation::ByCaller`])
    /// that could not be: it does not exist.
    pub async fn dispatch(&self, run: NewlyAccepted, wait: bool) -> Result<Option<RunResult>, SubmitError> {
        let (id, story) = (run.id.clone(), run.story.name.clone());
        let Some(cluster) = self.cluster() else {
            if wait {
                return Ok(self.run_now(id, &story, Start::Accepted(run)).await);
            }
            self.push(id, &story, Start::Accepted(run), None);
            return Ok(None);
        };
        let permits = if self.role.executes() { self.try_permits(&story) } else { None };
        let claimed = match (run.recorded, &permits) {
            (true, Some(_)) => cluster.claim_run(&id, &story, self.limit(&story)).unwrap_or_else(|e| {
                tracing::warn!(run = %id, "cannot claim a run just accepted: {e:#}; it waits in the shared queue");
                false
            }),
            (true, None) => false,
            (false, _) => {
                let limit = if permits.is_some() { self.limit(&story) } else { 0 };
                let new =
                    NewRun { id: &id, story: &story, team: &run.story.team, trigger: &run.trigger, input: &run.input, parent: None, idempotency_key: None };
                cluster.create_and_claim(&new, limit).map_err(|e| SubmitError::Store(format!("run store unavailable: {e:#}")))?
            }
        };
        if let (true, Some((story_permit, worker))) = (claimed, permits) {
            let q = self.clone();
            let task = self.tracker.spawn(async move { q.execute(id, Start::Accepted(run), (Ok(story_permit), Ok(worker))).await });
            return Ok(if wait { task.await.ok() } else { None });
        }
        if let Err(e) = cluster.offer(&id) {
            tracing::warn!(run = %id, "cannot offer a run to the other nodes: {e:#}; they find it at their next poll");
        }
        Ok(if wait { Some(self.await_end(&id).await) } else { None })
    }

    /// Schedules a recorded run of `story`: it starts when a worker and the
    /// story's gate have room.
    pub fn push(&self, run_id: String, story: &str, start: Start, done: Option<oneshot::Sender<RunResult>>) {
        let gate = self.story_gate(story);
        let q = self.clone();
        self.metrics.runs_queued.fetch_add(1, Ordering::Relaxed);
        self.tracker.spawn(async move {
            let story_permit = gate.acquire_owned().await;
            let worker = q.workers.clone().acquire_owned().await;
            q.metrics.runs_queued.fetch_sub(1, Ordering::Relaxed);
            let result = q.execute(run_id, start, (story_permit, worker)).await;
            if let Some(tx) = done {
                let _ = tx.send(result);
            }
        });
    }

    /// Starts a recorded run at once when a worker and the story's gate have
    /// room (no wait in the queue, no hand-over through a channel);
    /// otherwise queues it like [`Queue::push`]. Answers with its result.
    /// The run is a task of its own either way: a caller that goes away (a
    /// webhook client hanging up) never cuts a run off half-way.
    pub async fn run_now(&self, run_id: String, story: &str, start: Start) -> Option<RunResult> {
        match self.try_permits(story) {
            // Tracked, so a shutdown drains it like any other run.
            Some((story_permit, worker)) => {
                let q = self.clone();
                self.tracker.spawn(async move { q.execute(run_id, start, (Ok(story_permit), Ok(worker))).await }).await.ok()
            }
            None => {
                let (tx, rx) = oneshot::channel();
                self.push(run_id, story, start, Some(tx));
                rx.await.ok()
            }
        }
    }

    /// Executes one run holding its permits; a panic in warden's own code
    /// fails that run, recorded, and nothing else.
    async fn execute(&self, run_id: String, start: Start, permits: (PermitResult, PermitResult)) -> RunResult {
        self.metrics.runs_in_flight.fetch_add(1, Ordering::Relaxed);
        self.executing.lock().unwrap_or_else(|p| p.into_inner()).insert(run_id.clone());
        let observer = MetricsObserver(&self.metrics, self.telemetry.as_deref());
        let engine = &self.engine;
        let run = async {
            match start {
                Start::Accepted(run) => engine.execute_accepted(run, &observer).await,
                Start::FromStore => engine.execute(&run_id, &observer).await,
                Start::Resume => engine.resume(&run_id, &observer).await,
                Start::AfterRestart { started } => engine.resume_after_restart(&run_id, started, &observer).await,
            }
        };
        let result = match std::panic::AssertUnwindSafe(run).catch_unwind().await {
            Ok(result) => result,
            Err(panic) => engine.failed_by_host_bug(&run_id, &crate::runtime::panic_text(&panic)).await,
        };
        self.metrics.runs_in_flight.fetch_sub(1, Ordering::Relaxed);
        self.executing.lock().unwrap_or_else(|p| p.into_inner()).remove(&run_id);
        if let Some(cluster) = self.cluster() {
            cluster.release(&run_id);
        }
        drop(permits);
        self.freed.notify_one();
        result
    }

    /// Waits for every accepted run to finish, up to `deadline`. True when all did.
    ///
    /// Past the deadline, each run still executing is noted as stopped by
    /// the shutdown: it resumes at the next start (or on another node), and
    /// this end, which was not its doing, does not count towards failing it
    /// as a run that keeps ending the process.
    pub async fn drain(&self, deadline: Duration) -> bool {
        self.tracker.close();
        if tokio::time::timeout(deadline, self.tracker.wait()).await.is_ok() {
            return true;
        }
        let executing: Vec<String> = self.executing.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect();
        for id in executing {
            if let Err(e) = self.engine.store.apply_one(crate::store::Write::NoteShutdown { id: id.clone() }) {
                tracing::warn!(run = %id, "cannot note that the shutdown stopped the run: {e:#}; its next resume counts as if it had ended the process");
            }
        }
        false
    }
}

/// The callers on this node waiting for runs that execute elsewhere. One
/// task asks the store which of them ended — once per run-end notification,
/// for all of them at once — so a thousand waiting callers cost one query,
/// not a thousand.
#[derive(Default)]
pub(super) struct Waiters(std::sync::Mutex<std::collections::HashMap<String, Vec<tokio::sync::oneshot::Sender<()>>>>);

impl Waiters {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Vec<tokio::sync::oneshot::Sender<()>>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}
