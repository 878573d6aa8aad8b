//! Group commit: one writer thread owns the store's writes and commits
//! whatever arrived while the previous commit ran, in one transaction. Under
//! load many runs share a commit; alone, an awaited write waits for no timer,
//! and queued writes wait at most [`QUEUED_FLUSH`] (1 ms).
//!
//! A write is either *awaited* (its caller continues only once it is
//! committed: a run's creation before its `202`, a step's start before its
//! side effect, a run's end before its result is reported) or *queued* (the
//! step records in between). Writes commit in the order they were made, so
//! an awaited write also commits every write its run queued before it.
//!
//! A refused batch is retried for about a third of a second (a lock held by a
//! checkpoint or a busy neighbour clears); if the store still refuses it,
//! [`StoreHealth`] reports unhealthy, awaited writes get the error, and a run
//! whose *queued* write was lost learns it at its next awaited write, which
//! is refused with that error instead of being applied — so a run whose
//! record is incomplete never records success. Recording its failure is
//! always allowed.

use super::{Conflict, RunStore, Write};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Pauses between the attempts of one batch.
const RETRY_PAUSES: [Duration; 3] = [Duration::from_millis(10), Duration::from_millis(50), Duration::from_millis(250)];

/// Most writes in one transaction: bounds how long one commit holds the lock.
const MAX_BATCH: usize = 1024;

/// How long one refused write keeps the store reported unhealthy: long
/// enough for a health check polling every few seconds to see it.
pub const UNHEALTHY_FOR: Duration = Duration::from_secs(60);

/// Why a write was not applied.
#[derive(Debug, Clone, PartialEq)]
pub enum Refused {
    /// A uniqueness the caller relies on (an answer, not a store failure).
    Conflict(String),
    /// The store refused after every retry: `why` is "cannot record …: cause",
    /// `step` the step whose record is missing (`None`: the run's own).
    Down { why: String, step: Option<String> },
}

/// Whether writes reach the store; read by `/healthz` and metrics.
pub struct StoreHealth {
    last_failure: Mutex<Option<(Instant, String)>>,
    failures: AtomicU64,
    /// Transactions committed, and the writes they carried: their ratio is
    /// how much group commit is sharing (for metrics).
    commits: AtomicU64,
    writes: AtomicU64,
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
        StoreHealth { last_failure: Mutex::new(None), failures: AtomicU64::new(0), commits: AtomicU64::new(0), writes: AtomicU64::new(0), window }
    }

    /// `Err(why)` while a write was refused within the window.
    pub fn status(&self) -> Result<(), String> {
        match &*self.last_failure.lock().unwrap_or_else(|p| p.into_inner()) {
            Some((at, why)) if at.elapsed() < self.window => Err(why.clone()),
            _ => Ok(()),
        }
    }

    /// Batches that failed after every retry, since start.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Transactions committed and the writes in them, since start.
    pub fn commits(&self) -> (u64, u64) {
        (self.commits.load(Ordering::Relaxed), self.writes.load(Ordering::Relaxed))
    }

    fn refused(&self, why: String) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        *self.last_failure.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), why));
    }
}

type Answer = oneshot::Sender<Result<(), Refused>>;

struct Pending {
    write: Write,
    /// `Some` for an awaited write.
    answer: Option<Answer>,
}

/// How long a queued write may wait for an awaited one to share its commit.
const QUEUED_FLUSH: Duration = Duration::from_millis(1);

/// Writes waiting for the writer. The writer is woken for an awaited write
/// (or the first queued write into an empty inbox, to start the
/// [`QUEUED_FLUSH`] clock), not for every write: under load a run's queued
/// writes ride along with the next commit without a wake-up of their own.
#[derive(Default)]
struct Inbox {
    state: Mutex<InboxState>,
    ready: std::sync::Condvar,
}

#[derive(Default)]
struct InboxState {
    writes: Vec<Pending>,
    /// Commit without waiting longer: an awaited write is waiting, or the
    /// queued ones have waited [`QUEUED_FLUSH`].
    commit_now: bool,
    /// The writer is waiting on `ready`.
    idle: bool,
    /// Every handle is gone: commit what is left, then stop.
    closed: bool,
    /// The writer thread ended (it only does after `closed`, or by a bug).
    stopped: bool,
}

impl Inbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, InboxState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The last handle's drop closes the inbox.
struct Handle(Arc<Inbox>);

impl Drop for Handle {
    fn drop(&mut self) {
        self.0.lock().closed = true;
        self.0.ready.notify_one();
    }
}

/// The handle writes are sent through; the writer thread stops when the last
/// handle is dropped, after committing what was sent.
#[derive(Clone)]
pub struct GroupCommit {
    handle: Arc<Handle>,
}

impl GroupCommit {
    pub fn start(store: Arc<dyn RunStore>, health: Arc<StoreHealth>) -> GroupCommit {
        let inbox = Arc::new(Inbox::default());
        let writer = Writer { store, health, lost: HashMap::new(), inbox: inbox.clone() };
        std::thread::Builder::new().name("warden-store-writer".into()).spawn(move || writer.run()).expect("cannot start the run store's writer thread");
        GroupCommit { handle: Arc::new(Handle(inbox)) }
    }

    /// Commits `write` (with whatever else is waiting) and answers once it is durable.
    pub async fn commit(&self, write: Write) -> Result<(), Refused> {
        let (answer, rx) = oneshot::channel();
        let inbox = &self.handle.0;
        {
            let mut st = inbox.lock();
            if st.stopped {
                return Err(writer_stopped(&write));
            }
            st.writes.push(Pending { write, answer: Some(answer) });
            st.commit_now = true;
            if st.idle {
                inbox.ready.notify_one();
            }
        }
        // Dropped unanswered only if the writer thread died.
        rx.await.unwrap_or_else(|_| Err(Refused::Down { why: "cannot record a write: the run store's writer has stopped".into(), step: None }))
    }

    /// Queues `write` for the next commit without waiting for it: at the
    /// latest [`QUEUED_FLUSH`] later, sooner with an awaited write.
    pub fn queue(&self, write: Write) {
        let inbox = &self.handle.0;
        let mut st = inbox.lock();
        // If the writer has stopped, the run's next awaited write says so.
        if st.stopped {
            return;
        }
        st.writes.push(Pending { write, answer: None });
        if st.idle && (st.writes.len() == 1 || st.writes.len() >= MAX_BATCH) {
            inbox.ready.notify_one();
        }
    }
}

fn writer_stopped(w: &Write) -> Refused {
    Refused::Down { why: format!("cannot record {}: the run store's writer has stopped", describe(w)), step: w.step().map(String::from) }
}

/// Whether `w` records a run's failure: always allowed, even for a run with a lost write.
fn records_failure(w: &Write) -> bool {
    matches!(w, Write::FinishRun { state, .. } if state == "failed")
}

/// What a write records, for error messages.
fn describe(w: &Write) -> String {
    match w {
        Write::CreateRun { id, .. } => format!("run {id}"),
        Write::StartRun { id, .. } => format!("the start of run {id}"),
        Write::NoteResume { id } | Write::NoteShutdown { id } => format!("the resume count of run {id}"),
        Write::Traced { run, .. } => format!("the trace id of run {run}"),
        Write::FinishRun { id, .. } => format!("the end of run {id}"),
        Write::StepStarted { run, step, .. } | Write::StepFinished { run, step, .. } => format!("step {step} of run {run}"),
        Write::Logs { run, step, .. } => format!("the log of step {step} of run {run}"),
        Write::Audit { run, step, .. } => format!("the audit of step {step} of run {run}"),
        Write::Recording { run, step, .. } => format!("the recording of step {step} of run {run}"),
        Write::Park { run, step, .. } => format!("run {run} waiting at step {step}"),
        Write::Remember { run, scope, .. } => format!("a value {scope} saw in run {run}"),
    }
}

struct Writer {
    inbox: Arc<Inbox>,
    store: Arc<dyn RunStore>,
    health: Arc<StoreHealth>,
    /// Runs with a queued write that was lost: why, and the step it recorded.
    lost: HashMap<String, (String, Option<String>)>,
}

impl Writer {
    fn run(mut self) {
        /// Marks the writer stopped however it ends, and drops what waits
        /// unanswered (each awaited caller then hears the writer stopped).
        struct Stopped(Arc<Inbox>);
        impl Drop for Stopped {
            fn drop(&mut self) {
                let mut st = self.0.lock();
                st.stopped = true;
                st.writes.clear();
            }
        }
        let _stopped = Stopped(self.inbox.clone());
        while let Some(batch) = self.next_batch() {
            self.commit(batch);
        }
    }

    /// Waits for an awaited write, [`MAX_BATCH`] writes, or queued writes
    /// [`QUEUED_FLUSH`] old; takes everything waiting. `None` once closed and empty.
    fn next_batch(&self) -> Option<Vec<Pending>> {
        let mut st = self.inbox.lock();
        loop {
            if st.commit_now || st.writes.len() >= MAX_BATCH || (st.closed && !st.writes.is_empty()) {
                st.commit_now = false;
                let take = st.writes.len().min(MAX_BATCH);
                let rest = st.writes.split_off(take);
                let batch = std::mem::replace(&mut st.writes, rest);
                // What is left over (past MAX_BATCH) may hold an awaited write.
                st.commit_now = st.writes.iter().any(|p| p.answer.is_some());
                return Some(batch);
            }
            if st.closed {
                return None;
            }
            st.idle = true;
            if st.writes.is_empty() {
                st = self.inbox.ready.wait(st).unwrap_or_else(|p| p.into_inner());
                st.idle = false;
            } else {
                let (next, waited) = self.inbox.ready.wait_timeout(st, QUEUED_FLUSH).unwrap_or_else(|p| p.into_inner());
                st = next;
                st.idle = false;
                if waited.timed_out() && !st.writes.is_empty() {
                    st.commit_now = true;
                }
            }
        }
    }

    fn commit(&mut self, batch: Vec<Pending>) {
        let mut writes = Vec::with_capacity(batch.len());
        let mut answers = Vec::with_capacity(batch.len());
        for Pending { write, answer } in batch {
            match answer {
                // The run learns of its lost write here, instead of this write being applied.
                Some(answer) if !records_failure(&write) => {
                    if let Some((why, step)) = self.lost.remove(write.run()) {
                        let _ = answer.send(Err(Refused::Down { why, step }));
                        continue;
                    }
                    answers.push(Some(answer));
                }
                answer => answers.push(answer),
            }
            if let Write::FinishRun { id, .. } = &write {
                self.lost.remove(id);
            }
            writes.push(write);
        }
        if writes.is_empty() {
            return;
        }
        match self.apply_with_retries(&writes) {
            Ok(results) => {
                self.health.commits.fetch_add(1, Ordering::Relaxed);
                self.health.writes.fetch_add(writes.len() as u64, Ordering::Relaxed);
                for (answer, result) in answers.into_iter().zip(results) {
                    if let Some(answer) = answer {
                        let _ = answer.send(result.map_err(|Conflict(m)| Refused::Conflict(m)));
                    }
                }
            }
            Err(e) => {
                let first = format!("cannot record {}: {e:#}", describe(&writes[0]));
                tracing::error!("run store unavailable: {first}");
                self.health.refused(first);
                for (write, answer) in writes.iter().zip(answers) {
                    let lost = (format!("cannot record {}: {e:#}", describe(write)), write.step().map(String::from));
                    // A run's failure is worth one more try on its own: the
                    // write that failed the batch may have been another's.
                    if records_failure(write) && answer.is_some() && self.apply_once(std::slice::from_ref(write)).is_ok() {
                        self.lost.remove(write.run());
                        let _ = answer.map(|a| a.send(Ok(())));
                        continue;
                    }
                    match answer {
                        // The first write of its run missing is the one to report.
                        Some(answer) => {
                            let (why, step) = self.lost.remove(write.run()).unwrap_or(lost);
                            let _ = answer.send(Err(Refused::Down { why, step }));
                        }
                        None => {
                            self.lost.entry(write.run().to_string()).or_insert(lost);
                        }
                    }
                }
            }
        }
    }

    /// A panic in a store is a failed batch, not a dead writer.
    fn apply_once(&self, writes: &[Write]) -> anyhow::Result<Vec<Result<(), Conflict>>> {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.store.apply(writes)))
            .unwrap_or_else(|p| Err(anyhow::anyhow!("the store panicked: {}", crate::runtime::panic_text(&*p))))
    }

    fn apply_with_retries(&self, writes: &[Write]) -> anyhow::Result<Vec<Result<(), Conflict>>> {
        let mut pauses = RETRY_PAUSES.iter();
        loop {
            match self.apply_once(writes) {
                Ok(results) => return Ok(results),
                Err(e) => match pauses.next() {
                    Some(pause) => std::thread::sleep(*pause),
                    None => return Err(e),
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Flaky;
    use crate::{NewRun, SqliteStore};
    use serde_json::json;
    use std::sync::atomic::AtomicUsize;

    /// Counts the transactions a store is asked for.
    struct Counting {
        inner: Flaky,
        batches: AtomicUsize,
    }

    impl RunStore for Counting {
        fn apply(&self, batch: &[Write]) -> anyhow::Result<Vec<Result<(), Conflict>>> {
            self.batches.fetch_add(1, Ordering::SeqCst);
            self.inner.apply(batch)
        }
        fn find_runs(&self, f: &crate::RunFilter) -> anyhow::Result<Vec<crate::RunSummary>> {
            self.inner.find_runs(f)
        }
        fn run_by_idempotency_key(&self, story: &str, key: &str) -> anyhow::Result<Option<String>> {
            self.inner.run_by_idempotency_key(story, key)
        }
        fn run_summary(&self, id: &str) -> anyhow::Result<Option<crate::RunSummary>> {
            self.inner.run_summary(id)
        }
        fn resumes(&self, id: &str) -> anyhow::Result<u32> {
            self.inner.resumes(id)
        }
        fn run_input(&self, id: &str) -> anyhow::Result<Option<(String, serde_json::Value)>> {
            self.inner.run_input(id)
        }
        fn runs_in_state(&self, state: &str) -> anyhow::Result<Vec<String>> {
            self.inner.runs_in_state(state)
        }
        fn count_runs(&self, f: &crate::RunFilter) -> anyhow::Result<Vec<(String, u64)>> {
            self.inner.count_runs(f)
        }
        fn count_unfinished(&self) -> anyhow::Result<Vec<(String, u64)>> {
            self.inner.count_unfinished()
        }
        fn get_run(&self, id: &str) -> anyhow::Result<Option<crate::RunDetail>> {
            self.inner.get_run(id)
        }
        fn recordings(&self, run: &str) -> anyhow::Result<Vec<crate::StoredRecording>> {
            self.inner.recordings(run)
        }
        fn last_schedule_tick(&self, story: &str) -> anyhow::Result<Option<u64>> {
            self.inner.last_schedule_tick(story)
        }
    }

    fn create(id: &str, key: Option<&str>) -> Write {
        Write::create_run(&NewRun { id, story: "s", team: "t", trigger: "test", input: &json!({}), parent: None, idempotency_key: key })
    }

    #[tokio::test]
    async fn concurrent_awaited_writes_share_commits() {
        let store = Arc::new(Counting { inner: Flaky::new(), batches: AtomicUsize::new(0) });
        // A slow commit, as under load: writes pile up behind it.
        store.inner.delay_ms.store(20, Ordering::SeqCst);
        let writer = GroupCommit::start(store.clone(), Arc::default());
        let all: Vec<_> = (0..50).map(|i| writer.commit(create(&format!("r{i}"), None))).collect();
        for r in futures::future::join_all(all).await {
            r.unwrap();
        }
        let batches = store.batches.load(Ordering::SeqCst);
        assert!(batches < 10, "50 concurrent writes took {batches} transactions");
        assert_eq!(store.count_by_state().unwrap(), vec![("queued".to_string(), 50)], "every write committed");
    }

    #[tokio::test]
    async fn an_awaited_write_commits_what_its_run_queued_before_it() {
        let store = Arc::new(SqliteStore::in_memory().unwrap());
        let writer = GroupCommit::start(store.clone(), Arc::default());
        writer.queue(create("r1", None));
        writer.queue(Write::start_run("r1"));
        writer.queue(Write::step_finished("r1", "a", None, "transform", "succeeded", Some(&json!({"x": 1})), None, 1));
        writer.commit(Write::finish_run("r1", "succeeded", Some(&json!({"x": 1})), None, None)).await.unwrap();
        let d = store.get_run("r1").unwrap().expect("the queued creation is committed");
        assert_eq!((d.run.state.as_str(), d.steps.len()), ("succeeded", 1));
    }

    #[tokio::test]
    async fn queued_writes_commit_soon_without_an_awaited_one() {
        let store = Arc::new(SqliteStore::in_memory().unwrap());
        let writer = GroupCommit::start(store.clone(), Arc::default());
        writer.queue(create("r1", None));
        for _ in 0..200 {
            if store.run_summary("r1").unwrap().is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(store.run_summary("r1").unwrap().is_some(), "a queued write waited for an awaited one that never came");
    }

    #[tokio::test]
    async fn dropping_the_last_handle_commits_what_was_queued() {
        let store = Arc::new(SqliteStore::in_memory().unwrap());
        let writer = GroupCommit::start(store.clone(), Arc::default());
        for i in 0..100 {
            writer.queue(create(&format!("r{i}"), None));
        }
        drop(writer);
        for _ in 0..200 {
            if store.count_by_state().unwrap() == vec![("queued".to_string(), 100)] {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("queued writes were lost at shutdown: {:?}", store.count_by_state().unwrap());
    }

    #[tokio::test]
    async fn a_conflict_refuses_its_write_only() {
        let store = Arc::new(SqliteStore::in_memory().unwrap());
        let writer = GroupCommit::start(store.clone(), Arc::default());
        let (a, b, c) = tokio::join!(writer.commit(create("r1", Some("k"))), writer.commit(create("r2", Some("k"))), writer.commit(create("r3", None)));
        assert!(a.is_ok() ^ b.is_ok(), "one run per key: {a:?} {b:?}");
        assert!(matches!(a.or(b), Ok(())));
        c.unwrap();
        assert!(store.run_summary("r3").unwrap().is_some(), "the other writes of the batch committed");
    }

    #[tokio::test]
    async fn a_lost_queued_write_refuses_the_runs_next_awaited_write_but_not_its_failure() {
        let store = Arc::new(Flaky::new());
        let health = Arc::new(StoreHealth::default());
        let writer = GroupCommit::start(store.clone(), health.clone());
        writer.commit(create("r1", None)).await.unwrap();
        writer.commit(create("r2", None)).await.unwrap();
        store.fail(Some("step_finished"));
        writer.queue(Write::step_finished("r1", "a", None, "action", "succeeded", Some(&json!({})), None, 1));
        // Let that batch fail on its own, retries included.
        tokio::time::sleep(Duration::from_millis(600)).await;
        store.heal();
        assert!(health.status().is_err(), "the refusal is reported");
        let refused = writer.commit(Write::finish_run("r1", "succeeded", Some(&json!({})), None, None)).await.unwrap_err();
        let Refused::Down { why, step } = refused else { panic!("{refused:?}") };
        assert!(why.starts_with("cannot record step a of run r1: database or disk is full"), "{why}");
        assert_eq!(step.as_deref(), Some("a"));
        assert_eq!(store.run_summary("r1").unwrap().unwrap().state, "queued", "a run with a missing step never records success");
        writer.commit(Write::finish_run("r1", "failed", None, Some("run store unavailable"), Some("a"))).await.unwrap();
        assert_eq!(store.run_summary("r1").unwrap().unwrap().state, "failed", "its failure is recorded");
        writer.commit(Write::finish_run("r2", "succeeded", None, None, None)).await.unwrap();
        assert_eq!(store.run_summary("r2").unwrap().unwrap().state, "succeeded", "other runs go on");
    }

    #[tokio::test]
    async fn a_panicking_store_fails_the_batch_and_the_writer_goes_on() {
        struct Panics(SqliteStore, std::sync::atomic::AtomicBool);
        impl RunStore for Panics {
            fn apply(&self, batch: &[Write]) -> anyhow::Result<Vec<Result<(), Conflict>>> {
                if self.1.load(Ordering::SeqCst) {
                    panic!("store bug");
                }
                self.0.apply(batch)
            }
            fn find_runs(&self, f: &crate::RunFilter) -> anyhow::Result<Vec<crate::RunSummary>> {
                self.0.find_runs(f)
            }
            fn run_by_idempotency_key(&self, s: &str, k: &str) -> anyhow::Result<Option<String>> {
                self.0.run_by_idempotency_key(s, k)
            }
            fn run_summary(&self, id: &str) -> anyhow::Result<Option<crate::RunSummary>> {
                self.0.run_summary(id)
            }
            fn resumes(&self, id: &str) -> anyhow::Result<u32> {
                self.0.resumes(id)
            }
            fn run_input(&self, id: &str) -> anyhow::Result<Option<(String, serde_json::Value)>> {
                self.0.run_input(id)
            }
            fn runs_in_state(&self, s: &str) -> anyhow::Result<Vec<String>> {
                self.0.runs_in_state(s)
            }
            fn count_runs(&self, f: &crate::RunFilter) -> anyhow::Result<Vec<(String, u64)>> {
                self.0.count_runs(f)
            }
            fn count_unfinished(&self) -> anyhow::Result<Vec<(String, u64)>> {
                self.0.count_unfinished()
            }
            fn get_run(&self, id: &str) -> anyhow::Result<Option<crate::RunDetail>> {
                self.0.get_run(id)
            }
            fn recordings(&self, run: &str) -> anyhow::Result<Vec<crate::StoredRecording>> {
                self.0.recordings(run)
            }
            fn last_schedule_tick(&self, story: &str) -> anyhow::Result<Option<u64>> {
                self.0.last_schedule_tick(story)
            }
        }
        let store = Arc::new(Panics(SqliteStore::in_memory().unwrap(), true.into()));
        let writer = GroupCommit::start(store.clone(), Arc::default());
        let e = writer.commit(create("r1", None)).await.unwrap_err();
        assert!(matches!(&e, Refused::Down { why, .. } if why.contains("the store panicked: store bug")), "{e:?}");
        store.1.store(false, Ordering::SeqCst);
        writer.commit(create("r2", None)).await.unwrap();
    }
}
