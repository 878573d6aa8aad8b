//! The worker pool: at most `workers` runs execute at once, and at most the
//! trigger's `concurrency` runs of one story. Runs wait in memory only after
//! they are durable in the store, so a crash loses nothing.

use super::metrics::{Metrics, MetricsObserver};
use crate::policy::Policy;
use crate::story::engine::{Engine, RunResult};
use futures::FutureExt as _;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{oneshot, Semaphore};
use tokio_util::task::TaskTracker;

#[derive(Clone)]
pub struct Queue {
    engine: Arc<Engine>,
    metrics: Arc<Metrics>,
    workers: Arc<Semaphore>,
    per_story: Arc<Mutex<HashMap<String, Arc<Semaphore>>>>,
    limits: Arc<HashMap<String, usize>>,
    tracker: TaskTracker,
}

impl Queue {
    pub fn start(engine: Arc<Engine>, metrics: Arc<Metrics>, workers: usize, policy: &Policy) -> Queue {
        let limits = policy.triggers.iter().map(|(s, t)| (s.clone(), t.concurrency)).collect();
        Queue {
            engine,
            metrics,
            workers: Arc::new(Semaphore::new(workers.max(1))),
            per_story: Arc::default(),
            limits: Arc::new(limits),
            tracker: TaskTracker::new(),
        }
    }

    fn story_gate(&self, story: &str) -> Arc<Semaphore> {
        let mut map = self.per_story.lock().unwrap();
        map.entry(story.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(*self.limits.get(story).unwrap_or(&crate::policy::triggers::DEFAULT_CONCURRENCY))))
            .clone()
    }

    /// Schedules a recorded run of `story`. `resume` continues an interrupted one.
    pub fn push(&self, run_id: String, story: &str, resume: bool, done: Option<oneshot::Sender<RunResult>>) {
        let gate = self.story_gate(story);
        let q = self.clone();
        self.metrics.runs_queued.fetch_add(1, Ordering::Relaxed);
        self.tracker.spawn(async move {
            let _story_permit = gate.acquire_owned().await;
            let _worker = q.workers.clone().acquire_owned().await;
            q.metrics.runs_queued.fetch_sub(1, Ordering::Relaxed);
            q.metrics.runs_in_flight.fetch_add(1, Ordering::Relaxed);
            let observer = MetricsObserver(&q.metrics);
            let run = async { if resume { q.engine.resume(&run_id, &observer).await } else { q.engine.execute(&run_id, &observer).await } };
            // A bug in warden that panics one run fails that run, recorded, and nothing else.
            let result = match std::panic::AssertUnwindSafe(run).catch_unwind().await {
                Ok(result) => result,
                Err(panic) => q.engine.failed_by_host_bug(&run_id, &crate::runtime::panic_text(&panic)).await,
            };
            q.metrics.runs_in_flight.fetch_sub(1, Ordering::Relaxed);
            if let Some(tx) = done {
                let _ = tx.send(result);
            }
        });
    }

    /// Waits for every accepted run to finish, up to `deadline`. True when all did.
    pub async fn drain(&self, deadline: Duration) -> bool {
        self.tracker.close();
        tokio::time::timeout(deadline, self.tracker.wait()).await.is_ok()
    }
}
