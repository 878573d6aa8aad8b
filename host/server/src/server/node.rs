//! This node's part in a cluster of `warden serve` nodes sharing one
//! PostgreSQL store (see [`crate::store::Cluster`]): claim runs from the
//! shared queue while workers are free, renew the leases of the runs held
//! here, and answer a `?wait=true` caller whose run executes elsewhere.

use super::queue::{Queue, Start};
use crate::store::RunDetail;
use crate::story::engine::{ErrorKind, RunResult, RunState, StepError};
use std::time::Duration;

/// Most runs claimed in one transaction.
const CLAIM_AT_ONCE: usize = 64;
/// The slowest a node looks for work without being told: a lapsed lease
/// announces nothing, so a dead node's runs are found by this poll.
const POLL: Duration = Duration::from_secs(2);
/// Wake-ups closer together than this share one claim.
const SETTLE: Duration = Duration::from_millis(2);

/// Starts claiming and renewing, when the store is shared.
pub fn start(queue: &Queue) {
    let Some(cluster) = queue.cluster() else { return };
    let lease = cluster.lease();
    tracing::info!(node = cluster.node(), role = queue.role.name(), "joined the cluster on the shared store (leases of {} s)", lease.as_secs());
    tokio::spawn(watch_ends(queue.clone()));
    if !queue.role.executes() {
        return;
    }
    tokio::spawn(claim_loop(queue.clone()));
    tokio::spawn(renew_loop(queue.clone(), lease / 3));
}

/// Claims as many runs as there are free workers, whenever work may be
/// waiting: another node announced some, a worker here became free, or the
/// slow poll came round. Stops when the queue closes (shutdown).
async fn claim_loop(q: Queue) {
    let cluster = q.cluster().expect("started only in a cluster");
    let (mut work, mut ended) = (cluster.work_announced(), cluster.runs_ended());
    let poll = POLL.min(cluster.lease() / 2);
    while !q.tracker.is_closed() {
        // As many as there are free workers now. No worker is held while
        // claiming: a webhook arriving meanwhile must find one free.
        let free = q.workers.available_permits().min(CLAIM_AT_ONCE);
        // Runs left waiting (a story at its limit, no worker free here):
        // a run's end anywhere, or a worker freed here, may let one start.
        let mut waiting = true;
        if free > 0 {
            match cluster.claim(free, &q.limits, crate::policy::triggers::DEFAULT_CONCURRENCY) {
                Ok(claims) => {
                    waiting = claims.more_waiting;
                    let filled = claims.runs.len() == free;
                    for c in claims.runs {
                        let start = if c.interrupted { Start::AfterRestart { started: c.started } } else { Start::FromStore };
                        if c.interrupted {
                            tracing::warn!(run = %c.id, "resuming a run whose node stopped renewing its lease");
                        }
                        // Held under this node's lease while it waits for a worker here.
                        q.push(c.id, &c.story, start, None);
                    }
                    if filled {
                        continue;
                    }
                }
                Err(e) => tracing::warn!("cannot claim runs from the shared queue: {e:#}; trying again"),
            }
        }
        tokio::select! {
            _ = work.changed() => {}
            _ = ended.changed(), if waiting => {}
            _ = q.freed.notified(), if waiting => {}
            _ = tokio::time::sleep(poll) => {}
        }
        tokio::time::sleep(SETTLE).await;
    }
}

/// Renews this node's leases every `every` (a third of the lease).
async fn renew_loop(q: Queue, every: Duration) {
    let cluster = q.cluster().expect("started only in a cluster");
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = cluster.renew() {
            tracing::warn!("cannot renew this node's leases: {e:#}; if this lasts {} s, other nodes take its runs over", cluster.lease().as_secs());
        }
    }
}

/// Wakes the waiting callers whose runs ended; the slow poll covers a lost notification.
async fn watch_ends(q: Queue) {
    let cluster = q.cluster().expect("started only in a cluster");
    let mut ended = cluster.runs_ended();
    loop {
        tokio::select! {
            _ = ended.changed() => {}
            _ = tokio::time::sleep(POLL) => {}
        }
        let waiting: Vec<String> = q.waiters.lock().keys().cloned().collect();
        if waiting.is_empty() {
            continue;
        }
        match cluster.ended_among(&waiting) {
            Ok(done) => {
                let mut waiters = q.waiters.lock();
                for id in done {
                    for tx in waiters.remove(&id).unwrap_or_default() {
                        let _ = tx.send(());
                    }
                }
            }
            Err(e) => tracing::warn!("cannot read which awaited runs ended: {e:#}; trying again"),
        }
        tokio::time::sleep(SETTLE).await;
    }
}

impl Queue {
    /// The result of run `id`, executed by whichever node: waits until the
    /// store records its end.
    pub(super) async fn await_end(&self, id: &str) -> RunResult {
        loop {
            let (tx, rx) = tokio::sync::oneshot::channel();
            {
                let mut waiters = self.waiters.lock();
                let list = waiters.entry(id.to_string()).or_default();
                // Callers that went away (a client hung up) are dropped here.
                list.retain(|tx| !tx.is_closed());
                list.push(tx);
            }
            // It may have ended before this caller was listed.
            let run = id.to_string();
            let ended = crate::store::off_runtime(&self.engine.store, move |st| match st.run_summary(&run)? {
                // A run parked for an approval answers its caller now, as waiting.
                Some(s) if [RunState::Succeeded, RunState::Failed, RunState::Waiting].iter().any(|state| s.state == state.as_str()) => st.get_run(&run),
                _ => Ok(None),
            });
            match ended.await {
                Ok(Some(detail)) => {
                    self.waiters.lock().remove(id);
                    return result_of(&detail);
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(run = %id, "cannot read a run a caller waits for: {e:#}; trying again"),
            }
            let _ = tokio::time::timeout(POLL * 5, rx).await;
        }
    }
}

/// A run's result as its record tells it (for a run that ended on another node).
fn result_of(detail: &RunDetail) -> RunResult {
    let run = &detail.run;
    if run.state == RunState::Succeeded.as_str() {
        return RunResult::succeeded(&run.id, detail.output.clone().unwrap_or_default());
    }
    if run.state == RunState::Waiting.as_str() {
        let at = detail.steps.iter().find(|s| s.state == RunState::Waiting.as_str() && s.item.is_none()).map(|s| s.step_id.clone());
        return RunResult::waiting(&run.id, at);
    }
    // The failed step's own record keeps the error's kind; the run's keeps its message.
    let step_error = run.failed_step.as_ref().and_then(|step| {
        let row = detail.steps.iter().rev().find(|s| &s.step_id == step && s.item.is_none())?;
        serde_json::from_value::<StepError>(row.error.clone()?).ok()
    });
    let error = step_error.unwrap_or_else(|| StepError::new(ErrorKind::Failed, run.error.clone().unwrap_or_default()));
    RunResult::failed(&run.id, run.failed_step.clone(), error)
}
