//! The run store: every story run, its steps (input, output, error, attempts,
//! timings), their logs and the audit records of every capability call. The
//! [`RunStore`] trait is what the engine (through its recorder), the server and
//! the CLI use; [`SqliteStore`] keeps it in embedded SQLite, [`PgStore`] in
//! PostgreSQL, and [`group`] commits the engine's writes in groups. Nothing
//! secret is written: inputs and outputs only ever hold credential *names*,
//! and responses were scrubbed by the host before a guest saw them.
//!
//! A crate of its own (`warden-store`) above the policy and the sandbox;
//! [`approval`] (human approvals: links, decisions) is here because the
//! store is what keeps and decides them.

// A refusal (`approval::Refused`) carries the approval it refers to: rare, and not worth boxing.
#![allow(clippy::result_large_err)]

use crate::audit::AuditRecord;
use crate::invocation::LogLine;

// What the store builds on (the policy, the sandbox's vocabulary), under the
// names its modules use.
use serde::Serialize;
use serde_json::Value;
pub(crate) use warden_policy as policy;
pub(crate) use warden_sandbox::{audit, invocation, recording, runtime};

pub mod approval;
pub mod group;
pub mod postgres;
mod sql;
mod sqlite;
/// A store that fails writes on purpose, for the engine's and the server's tests.
pub mod testing;
#[cfg(test)]
mod tests;

pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// Where a run store is, read once from `--db` / `$WARDEN_DB` / `[server] db`:
/// a PostgreSQL URL (`postgres://…`, `postgresql://…`), or a SQLite file
/// (`sqlite://PATH` or a plain path).
pub enum Location {
    Postgres(String),
    Sqlite(std::path::PathBuf),
}

impl Location {
    pub fn of(db: &std::path::Path) -> Location {
        let text = db.to_string_lossy();
        if postgres::is_postgres_url(&text) {
            return Location::Postgres(text.into_owned());
        }
        Location::Sqlite(text.strip_prefix("sqlite://").map(std::path::PathBuf::from).unwrap_or_else(|| db.to_path_buf()))
    }

    /// How to name it in a message: a PostgreSQL URL without its password.
    pub fn describe(&self) -> String {
        match self {
            Location::Postgres(url) => postgres::redact(url),
            Location::Sqlite(path) => path.display().to_string(),
        }
    }
}

/// Opens (creating and migrating as needed) the run store `db` names.
pub fn open(db: &std::path::Path) -> anyhow::Result<std::sync::Arc<dyn RunStore>> {
    Ok(match Location::of(db) {
        Location::Postgres(url) => std::sync::Arc::new(PgStore::connect(&url)?),
        Location::Sqlite(path) => std::sync::Arc::new(SqliteStore::open(&path)?),
    })
}

/// [`open`], for `warden serve`: on PostgreSQL this node joins the cluster
/// of nodes sharing the database (see [`Cluster`]), holding each run it
/// executes under a lease of `lease`.
pub fn open_for_serving(db: &std::path::Path, lease: std::time::Duration) -> anyhow::Result<std::sync::Arc<dyn RunStore>> {
    match Location::of(db) {
        Location::Postgres(url) => {
            let store = PgStore::connect(&url)?;
            store.join_cluster(lease)?;
            Ok(std::sync::Arc::new(store))
        }
        Location::Sqlite(_) => open(db),
    }
}

/// A run this node claimed from the shared queue.
#[derive(Debug, Clone, PartialEq)]
pub struct Claimed {
    pub id: String,
    pub story: String,
    /// It was `running`, or held by a node whose lease lapsed: counted as
    /// a resume after the end of a process (see `Write::NoteResume`).
    pub interrupted: bool,
    /// Its start was recorded (`running`): resume it; else execute it from its start.
    pub started: bool,
}

/// What one claim took, and whether runs were left waiting (for a story's
/// limit, or beyond what was asked).
#[derive(Debug, Clone, Default)]
pub struct Claims {
    pub runs: Vec<Claimed>,
    pub more_waiting: bool,
}

/// The queue that several `warden serve` nodes share (PostgreSQL): which node
/// executes which run. A node executes a run only while it holds its
/// *lease*, renewed while it works; a lease that lapses (its node died or lost
/// the database) is taken by another node, and every write the old node
/// still sends for that run is refused (fenced by the lease's generation), so
/// a run is never executed by two nodes at once. A SQLite store serves one
/// node and has no cluster.
pub trait Cluster: Send + Sync {
    /// This node's name in leases: unique per process.
    fn node(&self) -> &str;
    /// How long a lease lasts unless renewed.
    fn lease(&self) -> std::time::Duration;
    /// Claims up to `n` runs that no live node holds, oldest first, keeping
    /// each story within its limit (`limits`, else `default_limit`) of runs
    /// held at once across the cluster.
    fn claim(&self, n: usize, limits: &std::collections::HashMap<String, usize>, default_limit: usize) -> anyhow::Result<Claims>;
    /// Records the new run `run` (committed without waiting for the disk: its
    /// caller waits for its end, and the run's first awaited write makes it
    /// durable) and claims it like [`Cluster::claim_run`] with `limit`
    /// (0: only records it, reserved for this node for a moment).
    fn create_and_claim(&self, run: &NewRun, limit: usize) -> anyhow::Result<bool>;
    /// Claims the run `id` of `story` (just accepted here, so reserved for
    /// this node for a moment) if no node holds it and the story has room
    /// under `limit` across the cluster.
    fn claim_run(&self, id: &str, story: &str, limit: usize) -> anyhow::Result<bool>;
    /// This node stops executing `id` (its run ended here, however): its
    /// lease is no longer renewed, so an unfinished run lapses to another node.
    fn release(&self, id: &str);
    /// Renews every lease this node holds; answers the runs it lost to
    /// another node (their writes are refused from now on).
    fn renew(&self) -> anyhow::Result<Vec<String>>;
    /// Offers the run `id` (just accepted here, not claimed) to every node at
    /// once, and wakes the idle ones.
    fn offer(&self, id: &str) -> anyhow::Result<()>;
    /// Which of the runs `ids` have ended (succeeded or failed) or parked (waiting for an approval).
    fn ended_among(&self, ids: &[String]) -> anyhow::Result<Vec<String>>;
    /// Changes when a node announced a run for any node (and when the
    /// listening connection was re-made): may change without cause.
    fn work_announced(&self) -> tokio::sync::watch::Receiver<u64>;
    /// Changes when a node recorded a run's end: a story's slot is free, a
    /// waiting caller's answer may be ready. May change without cause.
    fn runs_ended(&self) -> tokio::sync::watch::Receiver<u64>;
}

/// How to name the store `db` in a message: a PostgreSQL URL without its password.
pub fn describe(db: &std::path::Path) -> String {
    Location::of(db).describe()
}

/// A store's schema version, and the one this warden writes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SchemaStatus {
    pub found: usize,
    pub known: usize,
}

/// The schema version of the store `db` names, changing nothing (0: no store there yet).
pub fn schema_status(db: &std::path::Path) -> anyhow::Result<SchemaStatus> {
    match Location::of(db) {
        Location::Postgres(url) => postgres::schema_status(&url),
        Location::Sqlite(path) => sqlite::schema_status(&path),
    }
}

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
    /// The step of `parent_run` that called this sub-story.
    pub parent_step: Option<String>,
    pub created_ms: u64,
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
    /// The OpenTelemetry trace its spans are in (when telemetry is on).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// Its latest run span, the parent of the run's next part (resumed after an approval).
    #[serde(skip)]
    pub trace_span: Option<String>,
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
    /// Only runs started by this trigger (`webhook`, `schedule`, `cli`, …).
    pub trigger: Option<&'a str>,
    /// Only runs created at or after this time (Unix ms).
    pub since_ms: Option<u64>,
    /// Sub-story runs too (by default only top-level runs).
    pub include_children: bool,
    pub limit: usize,
    pub offset: usize,
}

/// Most runs [`RunStore::count_runs`] reads: it counts the latest this many that
/// match. A live console view counts every 0.7 s; counting a store's whole
/// history each time would grow without bound.
pub const COUNT_CAP: u64 = 10_000;

/// A value a [`RunFilter`] binds, in the order of its placeholders.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum FilterArg<'a> {
    Text(&'a str),
    Int(i64),
}

use sql::Dialect;

impl<'a> RunFilter<'a> {
    /// The `WHERE` clause of the filters that are set (and only those, so each
    /// store can use its index by story or by creation time).
    fn where_clause(&self, d: &Dialect) -> (String, Vec<FilterArg<'a>>) {
        let mut clause = String::from("WHERE 1 = 1");
        let mut args = Vec::new();
        let mut add = |column: &str, op: &str, arg| {
            args.push(arg);
            clause.push_str(&format!(" AND {column} {op} ${}", args.len()));
        };
        if let Some(team) = self.team {
            add("team", "=", FilterArg::Text(team));
        }
        if let Some(story) = self.story {
            add("story", "=", FilterArg::Text(story));
        }
        if let Some(s) = self.state {
            add(d.state, "=", FilterArg::Text(s));
        }
        if let Some(trigger) = self.trigger {
            add("trigger", "=", FilterArg::Text(trigger));
        }
        if let Some(since) = self.since_ms {
            add("created_ms", ">=", FilterArg::Int(since.min(i64::MAX as u64) as i64));
        }
        if !self.include_children {
            clause.push_str(" AND parent_run IS NULL");
        }
        (clause, args)
    }

    /// A page of `columns`, newest first, through the index by story or by
    /// creation time: it costs its own rows (and its offset), not the store's history.
    pub(crate) fn listing_sql(&self, d: &Dialect, columns: &str) -> (String, Vec<FilterArg<'a>>) {
        let (clause, mut args) = self.where_clause(d);
        args.push(FilterArg::Int(self.limit.min(i64::MAX as usize) as i64));
        args.push(FilterArg::Int(self.offset.min(i64::MAX as usize) as i64));
        let n = args.len();
        let sql = format!("SELECT {columns} FROM runs {clause} ORDER BY created_ms DESC, {} DESC LIMIT ${} OFFSET ${n}", d.tiebreak, n - 1);
        (sql, args)
    }

    /// The latest [`COUNT_CAP`] runs of the listing (whatever its state
    /// filter), counted by state.
    pub(crate) fn counting_sql(&self, d: &Dialect) -> (String, Vec<FilterArg<'a>>) {
        let (clause, args) = RunFilter { state: None, ..self.clone() }.where_clause(d);
        let sql = format!(
            "SELECT state, COUNT(*) AS n FROM (SELECT state FROM runs {clause} ORDER BY created_ms DESC, {} DESC LIMIT {COUNT_CAP}) latest GROUP BY state ORDER BY state",
            d.tiebreak
        );
        (sql, args)
    }
}

/// One write to a run's record, owned so that it can wait in a group commit
/// (see [`group`]). Timestamps are taken when the write is made, not when it
/// is committed.
#[derive(Debug, Clone)]
pub enum Write {
    CreateRun {
        id: String,
        story: String,
        team: String,
        trigger: String,
        input: String,
        parent: Option<(String, String)>,
        idempotency_key: Option<String>,
        at_ms: u64,
    },
    StartRun {
        id: String,
        at_ms: u64,
    },
    /// A run interrupted by the end of the process is about to be resumed:
    /// counted (and committed) before it is, so that a run whose resumption
    /// ends the process again and again is failed instead of resumed forever.
    /// Reset when the run rests (finishes or parks).
    NoteResume {
        id: String,
    },
    /// The process is stopping on purpose (a drain that reached its
    /// deadline) while the run executes: that end was not the run's doing,
    /// so its resume count starts again.
    NoteShutdown {
        id: String,
    },
    /// The trace a run's spans are in (telemetry on).
    Traced {
        run: String,
        trace_id: String,
        span_id: String,
    },
    FinishRun {
        id: String,
        state: String,
        output: Option<String>,
        error: Option<String>,
        failed_step: Option<String>,
        at_ms: u64,
    },
    StepStarted {
        run: String,
        step: String,
        item: Option<usize>,
        kind: String,
        input: Option<String>,
        attempt: u32,
        at_ms: u64,
    },
    StepFinished {
        run: String,
        step: String,
        item: Option<usize>,
        kind: String,
        state: String,
        output: Option<String>,
        error: Option<String>,
        attempts: u32,
        at_ms: u64,
    },
    Logs {
        run: String,
        step: String,
        lines: Vec<LogLine>,
    },
    /// Audit records, each already serialized.
    Audit {
        run: String,
        step: String,
        records: Vec<(u64, String)>,
    },
    /// The recording of one attempt of an action step (see [`crate::recording`]).
    Recording {
        run: String,
        step: String,
        item: Option<usize>,
        attempt: u32,
        truncated: bool,
        recording: String,
    },
    /// Parks a run at `step` (an approval, or a sub-story waiting for one):
    /// the step and the run become `waiting`; an approval step's pending
    /// approval and link hashes are recorded with them (once: a run parked
    /// again at the same approval keeps the first).
    Park {
        run: String,
        step: String,
        kind: String,
        approval: Option<Box<(crate::approval::Approval, Vec<crate::approval::Link>)>>,
        at_ms: u64,
    },
    /// A value a Tines-style deduplicate agent has seen (its SHA-256, never the
    /// value), kept among the last `lookback` of its `scope`. A value already
    /// kept is a [`Conflict`]: the caller drops the event as a duplicate.
    Remember {
        run: String,
        scope: String,
        value: String,
        lookback: u64,
    },
}

/// A step attempt's recording as the store keeps it.
#[derive(Debug, Clone, Serialize)]
pub struct StoredRecording {
    pub step: String,
    pub item: Option<usize>,
    pub attempt: u32,
    pub truncated: bool,
    /// The recording's JSON.
    #[serde(skip)]
    pub recording: String,
}

/// The recordings of a run and of its sub-story runs, depth first.
pub fn recordings_of_tree(store: &dyn RunStore, run: &str) -> anyhow::Result<Vec<StoredRecording>> {
    recordings_seen_by(store, run, None)
}

/// [`recordings_of_tree`] as `team` may see it: another team's sub-story
/// runs (and theirs in turn) are that team's; the caller gets their output only.
pub fn recordings_seen_by(store: &dyn RunStore, run: &str, team: Option<&str>) -> anyhow::Result<Vec<StoredRecording>> {
    let mut all = store.recordings(run)?;
    if let Some(detail) = store.get_run(run)? {
        for child in detail.children.iter().filter(|c| team.is_none_or(|t| c.team == t)) {
            all.extend(recordings_seen_by(store, &child.id, team)?);
        }
    }
    Ok(all)
}

/// A run as `team` may see it (`None`: everything): a sub-story run of
/// another team keeps its id, story, team and state, not its error text or
/// the step it failed at. What the caller's step received (its output) is in
/// the caller's own step record.
pub fn seen_by(mut detail: RunDetail, team: Option<&str>) -> RunDetail {
    if let Some(team) = team {
        for child in detail.children.iter_mut().filter(|c| c.team != team) {
            child.error = child.error.as_ref().map(|_| format!("(a run of team {}: its details are that team's)", child.team));
            child.failed_step = None;
        }
    }
    detail
}

/// What a run's recordings allow: `complete` (every recorded step attempt
/// whole), `truncated` (some stopped at their budget), or `none`.
pub fn recording_state(recordings: &[StoredRecording]) -> &'static str {
    match (recordings.is_empty(), recordings.iter().any(|r| r.truncated)) {
        (true, _) => "none",
        (false, true) => "truncated",
        (false, false) => "complete",
    }
}

// Every text a run's record keeps goes through this (see `crate::approval::withhold_tokens`).
use crate::approval::withhold_tokens;

impl Write {
    pub fn create_run(r: &NewRun) -> Write {
        Write::CreateRun {
            id: r.id.into(),
            story: r.story.into(),
            team: r.team.into(),
            trigger: r.trigger.into(),
            input: withhold_tokens(r.input.to_string()),
            parent: r.parent.map(|(run, step)| (run.into(), step.into())),
            idempotency_key: r.idempotency_key.map(Into::into),
            at_ms: now_ms(),
        }
    }

    pub fn start_run(id: &str) -> Write {
        Write::StartRun { id: id.into(), at_ms: now_ms() }
    }

    pub fn finish_run(id: &str, state: &str, output: Option<&Value>, error: Option<&str>, failed_step: Option<&str>) -> Write {
        Write::FinishRun {
            id: id.into(),
            state: state.into(),
            output: output.map(|o| withhold_tokens(o.to_string())),
            error: error.map(|e| withhold_tokens(e.to_string())),
            failed_step: failed_step.map(Into::into),
            at_ms: now_ms(),
        }
    }

    pub fn step_started(run: &str, step: &str, item: Option<usize>, kind: &str, input: Option<&Value>, attempt: u32) -> Write {
        Write::StepStarted {
            run: run.into(),
            step: step.into(),
            item,
            kind: kind.into(),
            input: input.map(|i| withhold_tokens(i.to_string())),
            attempt,
            at_ms: now_ms(),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn step_finished(
        run: &str,
        step: &str,
        item: Option<usize>,
        kind: &str,
        state: &str,
        output: Option<&Value>,
        error: Option<&Value>,
        attempts: u32,
    ) -> Write {
        Write::StepFinished {
            run: run.into(),
            step: step.into(),
            item,
            kind: kind.into(),
            state: state.into(),
            output: output.map(|o| withhold_tokens(o.to_string())),
            error: error.map(|e| withhold_tokens(e.to_string())),
            attempts,
            at_ms: now_ms(),
        }
    }

    pub fn logs(run: &str, step: &str, lines: &[LogLine]) -> Write {
        let lines = lines
            .iter()
            .map(|l| {
                let mut l = l.clone();
                l.message = withhold_tokens(std::mem::take(&mut l.message));
                l
            })
            .collect();
        Write::Logs { run: run.into(), step: step.into(), lines }
    }

    /// A run parked at `step`. An approval's title and details are shown to
    /// the team (API, console): a link token rendered into them is withheld.
    pub fn park(run: &str, step: &str, kind: &str, approval: Option<(crate::approval::Approval, Vec<crate::approval::Link>)>) -> Write {
        let approval = approval.map(|(mut a, links)| {
            a.title = withhold_tokens(std::mem::take(&mut a.title));
            let details = withhold_tokens(a.details.to_string());
            a.details = serde_json::from_str(&details).unwrap_or(Value::String(details));
            Box::new((a, links))
        });
        Write::Park { run: run.into(), step: step.into(), kind: kind.into(), approval, at_ms: now_ms() }
    }

    /// A step attempt's recording (see [`crate::recording`]).
    pub fn recording(run: &str, step: &str, item: Option<usize>, attempt: u32, stored: crate::recording::Stored) -> Write {
        Write::Recording { run: run.into(), step: step.into(), item, attempt, truncated: stored.truncated, recording: withhold_tokens(stored.json) }
    }

    pub fn audit(run: &str, step: &str, records: &[AuditRecord]) -> anyhow::Result<Write> {
        let records = records.iter().map(|r| Ok((r.at_ms, withhold_tokens(serde_json::to_string(r)?)))).collect::<anyhow::Result<_>>()?;
        Ok(Write::Audit { run: run.into(), step: step.into(), records })
    }

    /// The run whose record this is part of.
    pub fn run(&self) -> &str {
        match self {
            Write::CreateRun { id, .. } | Write::StartRun { id, .. } | Write::NoteResume { id } | Write::NoteShutdown { id } | Write::FinishRun { id, .. } => {
                id
            }
            Write::Traced { run, .. } => run,
            Write::StepStarted { run, .. }
            | Write::StepFinished { run, .. }
            | Write::Logs { run, .. }
            | Write::Audit { run, .. }
            | Write::Recording { run, .. }
            | Write::Park { run, .. }
            | Write::Remember { run, .. } => run,
        }
    }

    /// The step whose record this is, if any.
    pub fn step(&self) -> Option<&str> {
        match self {
            Write::CreateRun { .. }
            | Write::StartRun { .. }
            | Write::NoteResume { .. }
            | Write::NoteShutdown { .. }
            | Write::FinishRun { .. }
            | Write::Traced { .. }
            | Write::Remember { .. } => None,
            Write::StepStarted { step, .. }
            | Write::StepFinished { step, .. }
            | Write::Logs { step, .. }
            | Write::Audit { step, .. }
            | Write::Recording { step, .. }
            | Write::Park { step, .. } => Some(step),
        }
    }

    /// The kind of write, as tests name it to fail it on purpose.
    pub fn name(&self) -> &'static str {
        match self {
            Write::CreateRun { .. } => "create_run",
            Write::StartRun { .. } => "start_run",
            Write::NoteResume { .. } => "note_resume",
            Write::NoteShutdown { .. } => "note_shutdown",
            Write::Traced { .. } => "traced",
            Write::FinishRun { .. } => "finish_run",
            Write::StepStarted { .. } => "step_started",
            Write::StepFinished { .. } => "step_finished",
            Write::Logs { .. } => "add_logs",
            Write::Audit { .. } => "add_audit",
            Write::Recording { .. } => "add_recording",
            Write::Park { .. } => "park",
            Write::Remember { .. } => "remember",
        }
    }
}

fn now_ms() -> u64 {
    crate::audit::now_ms()
}

/// The states of a run that has not finished, which `/metrics` reports as a
/// gauge (finished runs are `warden_runs_finished_total`, a counter).
pub const UNFINISHED_STATES: [&str; 3] = ["queued", "running", "waiting"];

/// Runs `read` of `store` on tokio's blocking pool, for async callers (the
/// server's handlers and sweeps): a store's reads block — SQLite's calls, the
/// PostgreSQL client's wait on its own runtime — and must not hold one of the
/// runtime's few worker threads while they do.
pub async fn off_runtime<T: Send + 'static>(
    store: &std::sync::Arc<dyn RunStore>,
    read: impl FnOnce(&dyn RunStore) -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || read(store.as_ref())).await.map_err(|e| anyhow::anyhow!("a run store read stopped: {e}"))?
}

/// The run store's interface: what the story engine writes (through its
/// recorder and [`group::GroupCommit`]) and what the server and the CLI read.
/// [`SqliteStore`] keeps it in SQLite; tests use stores that fail on demand.
pub trait RunStore: Send + Sync {
    /// Applies `batch` in one transaction. `Err` means nothing was committed;
    /// `Ok` holds one answer per write: a [`Conflict`] was not applied (and
    /// did not stop the others).
    fn apply(&self, batch: &[Write]) -> anyhow::Result<Vec<Result<(), Conflict>>>;

    /// [`RunStore::apply`] of one write; a conflict is an error.
    fn apply_one(&self, w: Write) -> anyhow::Result<()> {
        match self.apply(std::slice::from_ref(&w))?.pop() {
            Some(Err(conflict)) => Err(conflict.into()),
            _ => Ok(()),
        }
    }
    fn create_run(&self, r: &NewRun) -> anyhow::Result<()> {
        self.apply_one(Write::create_run(r))
    }
    fn start_run(&self, id: &str) -> anyhow::Result<()> {
        self.apply_one(Write::start_run(id))
    }
    fn finish_run(&self, id: &str, state: &str, output: Option<&Value>, error: Option<&str>, failed_step: Option<&str>) -> anyhow::Result<()> {
        self.apply_one(Write::finish_run(id, state, output, error, failed_step))
    }
    fn step_started(&self, run: &str, step: &str, item: Option<usize>, kind: &str, input: Option<&Value>, attempt: u32) -> anyhow::Result<()> {
        self.apply_one(Write::step_started(run, step, item, kind, input, attempt))
    }
    #[allow(clippy::too_many_arguments)]
    fn step_finished(
        &self,
        run: &str,
        step: &str,
        item: Option<usize>,
        kind: &str,
        state: &str,
        output: Option<&Value>,
        error: Option<&Value>,
        attempts: u32,
    ) -> anyhow::Result<()> {
        self.apply_one(Write::step_finished(run, step, item, kind, state, output, error, attempts))
    }
    /// Runs matching `filter`, newest first.
    fn find_runs(&self, filter: &RunFilter) -> anyhow::Result<Vec<RunSummary>>;
    /// Newest first. `story` and `state` filter; top-level runs only unless `include_children`.
    fn list_runs(&self, story: Option<&str>, state: Option<&str>, include_children: bool, limit: usize, offset: usize) -> anyhow::Result<Vec<RunSummary>> {
        self.find_runs(&RunFilter { story, state, include_children, limit, offset, ..Default::default() })
    }
    /// The run of `story` created with this `Idempotency-Key`, if any.
    fn run_by_idempotency_key(&self, story: &str, key: &str) -> anyhow::Result<Option<String>>;
    fn run_summary(&self, id: &str) -> anyhow::Result<Option<RunSummary>>;
    /// The story and input of a run, to execute it (e.g. after a restart).
    fn run_input(&self, id: &str) -> anyhow::Result<Option<(String, Value)>>;
    fn runs_in_state(&self, state: &str) -> anyhow::Result<Vec<String>>;
    /// How many times the run was resumed after the process ended since it
    /// last rested (finished or parked): see [`Write::NoteResume`].
    fn resumes(&self, id: &str) -> anyhow::Result<u32>;
    /// How many of the latest [`COUNT_CAP`] top-level runs are in each state
    /// ([`RunStore::count_runs`] unfiltered). Every unfinished run, however many:
    /// [`RunStore::count_unfinished`].
    fn count_by_state(&self) -> anyhow::Result<Vec<(String, u64)>> {
        self.count_runs(&RunFilter::default())
    }
    /// How many top-level runs are queued, running or waiting (`/metrics`).
    /// Read through the state index, so its cost follows the unfinished runs,
    /// not the store's history: `/metrics` is scraped every few seconds and
    /// answers anyone who can reach the port.
    fn count_unfinished(&self) -> anyhow::Result<Vec<(String, u64)>>;
    /// How many of the latest [`COUNT_CAP`] runs `filter` matches are in each
    /// state (its `state`, `limit` and `offset` aside): at most `COUNT_CAP`
    /// in all, whatever the store holds.
    fn count_runs(&self, filter: &RunFilter) -> anyhow::Result<Vec<(String, u64)>>;
    fn get_run(&self, id: &str) -> anyhow::Result<Option<RunDetail>>;
    /// The recordings of a run's step attempts, in the order they were made.
    fn recordings(&self, run: &str) -> anyhow::Result<Vec<StoredRecording>>;
    /// The latest schedule tick (ms since the epoch) that started a run of
    /// `story`: see [`schedule_key`].
    fn last_schedule_tick(&self, story: &str) -> anyhow::Result<Option<u64>>;
    /// The queue shared with other nodes, when this store has one.
    fn cluster(&self) -> Option<&dyn Cluster> {
        None
    }
    /// Where approvals are kept (both real stores keep them).
    fn approvals(&self) -> Option<&dyn ApprovalStore> {
        None
    }
    /// Where service accounts' tokens are kept (both real stores keep them).
    fn tokens(&self) -> Option<&dyn TokenStore> {
        None
    }
    /// Where what people did is kept (both real stores keep it).
    fn activity(&self) -> Option<&dyn ActivityLog> {
        None
    }
}

/// One thing a person or a service account did (or tried): the audit log of
/// people, apart from runs' records.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Activity {
    /// Its place in the log (0 until kept): `since` reads on from one.
    pub id: u64,
    pub at_ms: u64,
    /// Who: `admin`, `team:soc`, `token:ci-bot`, or what a failed sign-in claimed (`unknown`).
    pub actor: String,
    /// What, as `noun.verb`: `console.sign_in`, `console.sign_in_failed`,
    /// `console.sign_out`, `approval.decide`, `token.create`, `token.revoke`, `token.use`.
    pub action: String,
    /// The team it concerns (`None`: no one team).
    pub team: Option<String>,
    /// What it was done to (`run/step`, a token's name, a route).
    pub target: Option<String>,
    /// `ok`, `refused` or `failed`.
    pub outcome: String,
    /// A choice, a reason: never a secret.
    pub detail: Option<String>,
    /// The address it came from, when it came over the network.
    pub from: Option<String>,
}

impl Activity {
    /// An entry of now: `actor` did `action` (to something of `team`), with `outcome`.
    pub fn now(action: &str, actor: &str, team: Option<&str>, outcome: &str) -> Activity {
        Activity {
            id: 0,
            at_ms: now_ms(),
            actor: actor.into(),
            action: action.into(),
            team: team.map(String::from),
            target: None,
            outcome: outcome.into(),
            detail: None,
            from: None,
        }
    }
}

/// What a read of the audit log of people asks for.
#[derive(Debug, Clone, Default)]
pub struct ActivityFilter<'a> {
    /// Entries after this one (`warden audit-log tail` follows with it).
    pub after_id: u64,
    /// At or after this time (Unix milliseconds).
    pub since_ms: Option<u64>,
    pub actor: Option<&'a str>,
    pub action: Option<&'a str>,
    /// Only this team's (a team admin's view).
    pub team: Option<&'a str>,
    pub limit: usize,
}

/// The most entries one read returns.
pub const MAX_ACTIVITY_READ: usize = 1000;

/// The audit log of what people did: written once per thing done, read in order.
pub trait ActivityLog: Send + Sync {
    /// Keeps `entry` (its fields capped: a sender's text never grows the log unbounded).
    fn note(&self, entry: &Activity) -> anyhow::Result<()>;
    /// Entries in the order they were kept, oldest first.
    fn read_activity(&self, filter: &ActivityFilter) -> anyhow::Result<Vec<Activity>>;
}

/// A service account: a named API token with one role, in one team or in
/// every team. The store keeps the token's SHA-256 digest, never the token.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ServiceToken {
    pub name: String,
    /// `None`: every team.
    pub team: Option<String>,
    /// A role name (see `warden_policy::access::TeamRole`).
    pub role: String,
    pub created_ms: u64,
    /// Who made it (`cli:<user>`, or the principal that asked).
    pub created_by: String,
    pub revoked_ms: Option<u64>,
    /// When it was last accepted (every use moves it).
    pub last_used_ms: Option<u64>,
}

/// A new service token's secret (`wdn_` and 64 hex digits: 256 random
/// bits) and the digest the store keeps of it. Shown once; never stored.
pub fn new_service_token() -> anyhow::Result<(String, [u8; 32])> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness for a new token: {e}"))?;
    let token = format!("wdn_{}", hex::encode(bytes));
    let digest = service_token_digest(&token);
    Ok((token, digest))
}

/// What the store keeps of a token, and looks it up by.
pub fn service_token_digest(token: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes()).into()
}

/// Most service tokens one store keeps (revoked ones count): a bound on
/// what `list` reads and shows.
pub const MAX_SERVICE_TOKENS: usize = 1000;

/// Service accounts' tokens in the run store, shared by every node.
pub trait TokenStore: Send + Sync {
    /// Adds `token` with the digest of its secret. `Ok(false)`: its name is
    /// taken (revoked names stay taken, so a name means one token forever),
    /// or the store holds [`MAX_SERVICE_TOKENS`] already.
    fn create_token(&self, token: &ServiceToken, digest: &[u8; 32]) -> anyhow::Result<bool>;
    /// Every token, revoked ones too, by name.
    fn list_tokens(&self) -> anyhow::Result<Vec<ServiceToken>>;
    /// Revokes the token named `name`; `Ok(false)`: no such unrevoked token.
    fn revoke_token(&self, name: &str, now_ms: u64) -> anyhow::Result<bool>;
    /// The unrevoked token whose secret has `digest`, its use noted.
    fn use_token(&self, digest: &[u8; 32], now_ms: u64) -> anyhow::Result<Option<ServiceToken>>;
}

/// Which approvals to list, oldest first.
#[derive(Debug, Clone, Default)]
pub struct ApprovalFilter<'a> {
    pub team: Option<&'a str>,
    pub story: Option<&'a str>,
    /// Decided and expired ones too (by default only pending ones).
    pub all: bool,
    pub limit: usize,
}

/// Approvals in the run store (see [`crate::approval`]). Every decision is
/// taken by one atomic update, whichever node or process asks, so an approval
/// is decided exactly once.
pub trait ApprovalStore: Send + Sync {
    /// The key links are derived with: made at first use, then the same for
    /// every node and restart. (Whoever can read it can write decisions into
    /// the store directly anyway.)
    /// A random value kept in the store (not a secret on its own): mixed
    /// into the link key so that two stores under one operator secret still
    /// have different keys. See [`crate::approval::link_key`].
    fn key_salt(&self) -> anyhow::Result<[u8; 32]>;
    /// The link secret this store keeps outside itself when the operator
    /// gives none: a file beside a SQLite store; `None` for a shared store,
    /// whose nodes must be given one.
    fn local_secret(&self) -> anyhow::Result<Option<crate::policy::credentials::Secret>>;
    fn approval(&self, run: &str, step: &str) -> anyhow::Result<Option<crate::approval::Approval>>;
    /// The approval a link opens (by the token's hash), and the link.
    fn approval_by_link(&self, hash: &str) -> anyhow::Result<Option<(crate::approval::Approval, crate::approval::Link)>>;
    fn list_approvals(&self, filter: &ApprovalFilter) -> anyhow::Result<Vec<crate::approval::Approval>>;
    /// Decides a pending approval (its choice already checked) and audits
    /// it, in one transaction; an approval that is not pending is answered
    /// with what happened to it.
    fn decide(&self, run: &str, step: &str, decision: &crate::approval::Decision) -> anyhow::Result<crate::approval::Decided>;
    /// Pending approvals whose deadline passed by `now_ms`, oldest first.
    fn due_approvals(&self, now_ms: u64, limit: usize) -> anyhow::Result<Vec<crate::approval::Approval>>;
    /// Top-level runs still `waiting` though an approval of theirs is over.
    fn runs_to_wake(&self, limit: usize) -> anyhow::Result<Vec<String>>;
    /// Moves the waiting run `root` back to `running` (to be resumed) and
    /// marks its finished approvals as handled. True for the one caller that
    /// moved it.
    fn wake(&self, root: &str) -> anyhow::Result<bool>;
}

/// Takes a decision on `approval` for `choice` (checked by
/// [`crate::approval::Approval::check_decision`], then made once by the store).
pub fn decide(
    store: &dyn ApprovalStore,
    approval: &crate::approval::Approval,
    choice: &str,
    approver: Option<&str>,
    confirmed: bool,
    mut decision: crate::approval::Decision,
) -> anyhow::Result<crate::approval::Decided> {
    if let Err(refused) = approval.check_decision(choice, approver, confirmed) {
        return Ok(Err(refused));
    }
    decision.choice = Some(choice.to_string());
    decision.comment = decision.comment.map(|c| c.chars().take(crate::approval::MAX_COMMENT).collect());
    store.decide(&approval.run, &approval.step, &decision)
}

/// The audit record of a decision (who, when, from which address, which choice).
pub fn decision_audit(step: &str, d: &crate::approval::Decision) -> String {
    serde_json::json!({
        "kind": "approval",
        "step": step,
        "at_ms": d.decided_ms,
        "decision": if d.choice.is_some() { "decided" } else { "expired" },
        "choice": d.choice,
        "decided_by": d.decided_by,
        "via": d.via,
        "from": d.from,
        "comment": d.comment,
    })
    .to_string()
}

/// The idempotency key of the run a schedule starts at `tick_ms`: one run per
/// story and tick, however many nodes fire it. The `·` keeps it apart from
/// every `Idempotency-Key` a webhook can send (header values are ASCII).
pub fn schedule_key(tick_ms: u64) -> String {
    format!("schedule\u{b7}{tick_ms}")
}

/// The tick a [`schedule_key`] names.
pub fn tick_of(key: &str) -> Option<u64> {
    key.strip_prefix("schedule\u{b7}")?.parse().ok()
}
