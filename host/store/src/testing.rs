//! A store that fails (or is slow) on demand, for tests of what happens when
//! the disk is full or the database locked.

use super::*;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Mutex;

/// A SQLite store whose writes fail while `down` is set (optionally only
/// writes of one kind), as a full disk or a locked database would.
pub struct Flaky {
    inner: SqliteStore,
    down: AtomicBool,
    only: Mutex<Option<&'static str>>,
    /// Writes refused so far.
    pub refused: AtomicU32,
    /// Milliseconds every write takes (a slow disk, a long checkpoint).
    pub delay_ms: std::sync::atomic::AtomicU64,
}

impl Default for Flaky {
    fn default() -> Self {
        Self::new()
    }
}

impl Flaky {
    pub fn new() -> Flaky {
        Flaky {
            inner: SqliteStore::in_memory().unwrap(),
            down: AtomicBool::new(false),
            only: Mutex::new(None),
            refused: AtomicU32::new(0),
            delay_ms: Default::default(),
        }
    }
    pub fn fail(&self, only: Option<&'static str>) {
        *self.only.lock().unwrap() = only;
        self.down.store(true, Ordering::SeqCst);
    }
    pub fn heal(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
    fn gate(&self, op: &'static str) -> anyhow::Result<()> {
        let delay = self.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            std::thread::sleep(std::time::Duration::from_millis(delay));
        }
        let only = *self.only.lock().unwrap();
        if self.down.load(Ordering::SeqCst) && only.is_none_or(|o| o == op) {
            self.refused.fetch_add(1, Ordering::SeqCst);
            anyhow::bail!("database or disk is full");
        }
        Ok(())
    }
}

impl RunStore for Flaky {
    fn approvals(&self) -> Option<&dyn ApprovalStore> {
        self.inner.approvals()
    }
    fn apply(&self, batch: &[Write]) -> anyhow::Result<Vec<Result<(), Conflict>>> {
        for w in batch {
            self.gate(w.name())?;
        }
        self.inner.apply(batch)
    }
    fn find_runs(&self, filter: &RunFilter) -> anyhow::Result<Vec<RunSummary>> {
        self.inner.find_runs(filter)
    }
    fn run_by_idempotency_key(&self, story: &str, key: &str) -> anyhow::Result<Option<String>> {
        self.inner.run_by_idempotency_key(story, key)
    }
    fn run_summary(&self, id: &str) -> anyhow::Result<Option<RunSummary>> {
        self.inner.run_summary(id)
    }
    fn resumes(&self, id: &str) -> anyhow::Result<u32> {
        self.inner.resumes(id)
    }
    fn run_input(&self, id: &str) -> anyhow::Result<Option<(String, Value)>> {
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
    fn get_run(&self, id: &str) -> anyhow::Result<Option<RunDetail>> {
        self.inner.get_run(id)
    }
    fn recordings(&self, run: &str) -> anyhow::Result<Vec<super::StoredRecording>> {
        self.inner.recordings(run)
    }
    fn last_schedule_tick(&self, story: &str) -> anyhow::Result<Option<u64>> {
        self.inner.last_schedule_tick(story)
    }
}
