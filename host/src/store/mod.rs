//! The run store: every story run, its steps (input, output, error, attempts,
//! timings), their logs and the audit records of every capability call. The
//! [`Store`] trait is what the engine (through its recorder), the server and
//! the CLI use; [`RunStore`] keeps it in embedded SQLite. Nothing
//! secret is written: inputs and outputs only ever hold credential *names*,
//! and responses were scrubbed by the host before a guest saw them.

use crate::audit::AuditRecord;
use crate::invocation::LogLine;
use serde::Serialize;
use serde_json::Value;

mod sqlite;
#[cfg(test)]
pub(crate) mod testing;

pub use sqlite::RunStore;

/// A write refused because it would break a uniqueness the caller relies on
/// (one run per story and `Idempotency-Key`): an answer, not a store failure.
#[derive(Debug, Clone, PartialEq)]
pub struct Conflict(pub String);

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Conflict {}


#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub id: String,
    pub story: String,
    pub team: String,
    pub state: String,
    pub trigger: String,
    pub error: Option<String>,
    pub failed_step: Option<String>,
    pub parent_run: Option<String>,
    pub created_ms: u64,
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepRecord {
    pub step_id: String,
    /// Position in a `for_each`, or `None` for the step as a whole.
    pub item: Option<u32>,
    pub kind: String,
    pub state: String,
    pub input: Option<Value>,
    pub output: Option<Value>,
    pub error: Option<Value>,
    pub attempts: u32,
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LogRecord {
    pub step_id: String,
    pub at_ms: u64,
    pub level: String,
    pub source: String,
    pub message: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunDetail {
    #[serde(flatten)]
    pub run: RunSummary,
    pub input: Value,
    pub output: Option<Value>,
    pub steps: Vec<StepRecord>,
    pub logs: Vec<LogRecord>,
    pub audit: Vec<Value>,
    pub children: Vec<RunSummary>,
}

pub struct NewRun<'a> {
    pub id: &'a str,
    pub story: &'a str,
    pub team: &'a str,
    pub trigger: &'a str,
    pub input: &'a Value,
    pub parent: Option<(&'a str, &'a str)>,
    /// A caller's `Idempotency-Key`: at most one run per story and key.
    pub idempotency_key: Option<&'a str>,
}

/// Which runs to list, newest first.
#[derive(Debug, Clone, Default)]
pub struct RunFilter<'a> {
    /// Only this team's runs (a team's API token sees no others).
    pub team: Option<&'a str>,
    pub story: Option<&'a str>,
    pub state: Option<&'a str>,
    /// Sub-story runs too (by default only top-level runs).
    pub include_children: bool,
    pub limit: usize,
    pub offset: usize,
}

/// The run store's interface: what the story engine writes (through its
/// recorder) and what the server and the CLI read. [`RunStore`] keeps it in
/// SQLite; tests use stores that fail on demand.
pub trait Store: Send + Sync {
    fn create_run(&self, r: &NewRun) -> anyhow::Result<()>;
    fn start_run(&self, id: &str) -> anyhow::Result<()>;
    fn finish_run(&self, id: &str, state: &str, output: Option<&Value>, error: Option<&str>, failed_step: Option<&str>) -> anyhow::Result<()>;
    fn step_started(&self, run: &str, step: &str, item: Option<usize>, kind: &str, input: Option<&Value>, attempt: u32) -> anyhow::Result<()>;
    #[allow(clippy::too_many_arguments)]
    fn step_finished(&self, run: &str, step: &str, item: Option<usize>, kind: &str, state: &str, output: Option<&Value>, error: Option<&Value>, attempts: u32) -> anyhow::Result<()>;
    fn add_logs(&self, run: &str, step: &str, lines: &[LogLine]) -> anyhow::Result<()>;
    fn add_audit(&self, run: &str, step: &str, records: &[AuditRecord]) -> anyhow::Result<()>;
    /// Runs matching `filter`, newest first.
    fn find_runs(&self, filter: &RunFilter) -> anyhow::Result<Vec<RunSummary>>;
    /// Newest first. `story` and `state` filter; top-level runs only unless `include_children`.
    fn list_runs(&self, story: Option<&str>, state: Option<&str>, include_children: bool, limit: usize, offset: usize) -> anyhow::Result<Vec<RunSummary>> {
        self.find_runs(&RunFilter { team: None, story, state, include_children, limit, offset })
    }
    /// The run of `story` created with this `Idempotency-Key`, if any.
    fn run_by_idempotency_key(&self, story: &str, key: &str) -> anyhow::Result<Option<String>>;
    fn run_summary(&self, id: &str) -> anyhow::Result<Option<RunSummary>>;
    /// The story and input of a run, to execute it (e.g. after a restart).
    fn run_input(&self, id: &str) -> anyhow::Result<Option<(String, Value)>>;
    fn runs_in_state(&self, state: &str) -> anyhow::Result<Vec<String>>;
    fn count_by_state(&self) -> anyhow::Result<Vec<(String, u64)>>;
    fn get_run(&self, id: &str) -> anyhow::Result<Option<RunDetail>>;
}

