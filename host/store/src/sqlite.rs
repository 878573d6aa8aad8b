//! The run store in embedded SQLite (WAL, `synchronous = NORMAL`): created and
//! migrated by warden itself, statements prepared once and cached.

use super::*;
use anyhow::Context as _;
use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Schema versions, applied in order; `PRAGMA user_version` records progress.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE runs (
    id TEXT PRIMARY KEY,
    story TEXT NOT NULL,
    team TEXT NOT NULL,
    state TEXT NOT NULL,
    trigger TEXT NOT NULL,
    input TEXT NOT NULL,
    output TEXT,
    error TEXT,
    failed_step TEXT,
    parent_run TEXT,
    parent_step TEXT,
    created_ms INTEGER NOT NULL,
    started_ms INTEGER,
    finished_ms INTEGER
);
CREATE INDEX runs_by_story ON runs(story, created_ms);
CREATE INDEX runs_by_state ON runs(state);
CREATE TABLE steps (
    run_id TEXT NOT NULL,
    step_id TEXT NOT NULL,
    item INTEGER NOT NULL,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    input TEXT,
    output TEXT,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    started_ms INTEGER,
    finished_ms INTEGER,
    PRIMARY KEY (run_id, step_id, item)
);
CREATE TABLE logs (
    run_id TEXT NOT NULL,
    step_id TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    level TEXT NOT NULL,
    source TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX logs_by_run ON logs(run_id);
CREATE TABLE audit (
    run_id TEXT NOT NULL,
    step_id TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX audit_by_run ON audit(run_id);
"#,
    r#"
ALTER TABLE runs ADD COLUMN idempotency_key TEXT;
CREATE UNIQUE INDEX runs_by_idempotency_key ON runs(story, idempotency_key) WHERE idempotency_key IS NOT NULL;
"#,
    r#"
CREATE TABLE recordings (
    run_id TEXT NOT NULL,
    step_id TEXT NOT NULL,
    item INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    truncated INTEGER NOT NULL,
    recording TEXT NOT NULL
);
CREATE INDEX recordings_by_run ON recordings(run_id);
"#,
    r#"
CREATE TABLE approvals (
    run_id TEXT NOT NULL,
    step_id TEXT NOT NULL,
    root_run TEXT NOT NULL,
    story TEXT NOT NULL,
    team TEXT NOT NULL,
    title TEXT NOT NULL,
    details TEXT NOT NULL,
    choices TEXT NOT NULL,
    approvers TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    deadline_ms INTEGER NOT NULL,
    on_timeout TEXT,
    state TEXT NOT NULL,
    choice TEXT,
    decided_by TEXT,
    via TEXT,
    decided_from TEXT,
    comment TEXT,
    decided_ms INTEGER,
    resumed INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, step_id)
);
CREATE INDEX approvals_due ON approvals(deadline_ms) WHERE state = 'pending';
CREATE INDEX approvals_to_wake ON approvals(root_run) WHERE resumed = 0 AND state <> 'pending';
CREATE TABLE approval_links (
    hash TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    step_id TEXT NOT NULL,
    choice TEXT NOT NULL,
    recipient TEXT NOT NULL
);
CREATE TABLE warden_keys (
    name TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
"#,
    r#"
ALTER TABLE runs ADD COLUMN trace_id TEXT;
ALTER TABLE runs ADD COLUMN trace_span TEXT;
"#,
    r#"
CREATE TABLE dedupe (
    scope TEXT NOT NULL,
    value TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (scope, value)
);
CREATE INDEX dedupe_seq ON dedupe (scope, seq);
"#,
    r#"
CREATE INDEX runs_by_created ON runs(created_ms);
CREATE INDEX runs_by_parent ON runs(parent_run) WHERE parent_run IS NOT NULL;
CREATE INDEX runs_schedule_ticks ON runs(story, created_ms) WHERE trigger = 'schedule' AND idempotency_key IS NOT NULL;
"#,
    r#"
ALTER TABLE runs ADD COLUMN resumes INTEGER NOT NULL DEFAULT 0;
DELETE FROM warden_keys WHERE name = 'approval-links';
"#,
];

/// A run's sub-story runs (`runs_by_parent`: only sub-story runs are in it).
const CHILDREN: &str = "SELECT * FROM runs WHERE parent_run = ?1 ORDER BY created_ms";

/// A scheduled story's latest tick (`runs_schedule_ticks`: only scheduled runs are in it).
const LAST_TICK: &str =
    "SELECT idempotency_key FROM runs WHERE story = ?1 AND trigger = 'schedule' AND idempotency_key IS NOT NULL ORDER BY created_ms DESC, rowid DESC LIMIT 1";

/// The schema version of the SQLite file at `path`, read only.
pub(super) fn schema_status(path: &Path) -> anyhow::Result<SchemaStatus> {
    let known = MIGRATIONS.len();
    if !path.exists() {
        return Ok(SchemaStatus { found: 0, known });
    }
    let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .with_context(|| format!("cannot open the run store {}", path.display()))?;
    let found: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    Ok(SchemaStatus { found, known })
}

pub struct RunStore {
    /// Every write goes through this one connection.
    conn: Mutex<Connection>,
    /// Reads, on their own connection so that they never wait for a write
    /// (WAL lets a reader see the last commit while the writer works).
    /// `None` in memory, where a second connection would be another database.
    read: Option<Mutex<Connection>>,
    /// Copies the WAL into the database off the writer's path (file stores only).
    _checkpointer: Option<Checkpointer>,
    /// The store's file (`None` in memory): its link secret sits beside it.
    path: Option<std::path::PathBuf>,
}

/// How often the checkpointer copies committed WAL pages into the database.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(50);

/// The writer's own (blocking) checkpoint, only when the WAL reaches this many
/// pages: the checkpointer fell behind, or a reader kept it from finishing.
const WRITER_CHECKPOINT_PAGES: i64 = 16_384;

/// A thread with its own connection that checkpoints the WAL every
/// [`CHECKPOINT_EVERY`] (`PASSIVE`: it never blocks the writer or readers).
///
/// Why: with SQLite's default, the commit that takes the WAL past 1,000 pages
/// copies them into the database and fsyncs both files on the writer thread,
/// and every run waiting for a commit waits for those fsyncs too. Durability
/// is the same either way (`synchronous = NORMAL`: commits reach the WAL,
/// checkpoints are synced); only the thread that pays for it changes.
struct Checkpointer {
    stop: Arc<(Mutex<bool>, std::sync::Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    fn start(path: &Path) -> anyhow::Result<Checkpointer> {
        let conn = Connection::open(path).with_context(|| format!("cannot open the run store {}", path.display()))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let stop: Arc<(Mutex<bool>, std::sync::Condvar)> = Arc::default();
        let flag = stop.clone();
        let thread = std::thread::Builder::new().name("warden-checkpoint".into()).spawn(move || {
            let (lock, wake) = &*flag;
            let mut stopped = lock.lock().unwrap_or_else(|p| p.into_inner());
            let mut failing = false;
            while !*stopped {
                stopped = wake.wait_timeout(stopped, CHECKPOINT_EVERY).unwrap_or_else(|p| p.into_inner()).0;
                // PASSIVE: copies what no reader still needs, waits for nobody.
                match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                    Ok(()) => failing = false,
                    // Another connection (another warden process on this file) is checkpointing.
                    Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::DatabaseBusy => {}
                    // Said once per spell of failures, not every 50 ms.
                    Err(e) if !failing => {
                        failing = true;
                        tracing::warn!("run store checkpoint failed; the writer checkpoints itself past {WRITER_CHECKPOINT_PAGES} WAL pages: {e}");
                    }
                    Err(_) => {}
                }
            }
        })?;
        Ok(Checkpointer { stop, thread: Some(thread) })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        *self.stop.0.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.stop.1.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn json_col(v: Option<String>) -> Option<Value> {
    v.and_then(|s| serde_json::from_str(&s).ok())
}

impl RunStore {
    /// Opens (creating and migrating as needed) the store at `path`.
    pub fn open(path: &Path) -> anyhow::Result<RunStore> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let conn = Connection::open(path).with_context(|| format!("cannot open the run store {}", path.display()))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // The writer's page cache: 32 MiB, so a busy store's hot pages stay in memory.
        conn.pragma_update(None, "cache_size", -32768)?;
        // Checkpoints happen on their own thread (see Checkpointer); the
        // writer only steps in when the WAL has grown this large.
        conn.pragma_update(None, "wal_autocheckpoint", WRITER_CHECKPOINT_PAGES)?;
        // And the WAL file shrinks back after such a burst.
        conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
        let mut store = RunStore::with(conn)?;
        store._checkpointer = Some(Checkpointer::start(path)?);
        let read = Connection::open(path).with_context(|| format!("cannot open the run store {}", path.display()))?;
        read.busy_timeout(std::time::Duration::from_secs(5))?;
        read.pragma_update(None, "query_only", true)?;
        store.read = Some(Mutex::new(read));
        store.path = Some(path.to_path_buf());
        Ok(store)
    }

    pub fn in_memory() -> anyhow::Result<RunStore> {
        RunStore::with(Connection::open_in_memory()?)
    }

    fn with(conn: Connection) -> anyhow::Result<RunStore> {
        let version: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > MIGRATIONS.len() {
            anyhow::bail!("the run store was written by a newer warden (schema {version}); upgrade warden or use another --db");
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
            conn.execute_batch(&format!("BEGIN; {sql}; PRAGMA user_version = {}; COMMIT;", i + 1))
                .with_context(|| format!("run store migration {} failed", i + 1))?;
        }
        Ok(RunStore { conn: Mutex::new(conn), read: None, _checkpointer: None, path: None })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn reader(&self) -> std::sync::MutexGuard<'_, Connection> {
        match &self.read {
            Some(read) => read.lock().unwrap_or_else(|p| p.into_inner()),
            None => self.conn(),
        }
    }

    fn summary(row: &rusqlite::Row) -> rusqlite::Result<RunSummary> {
        Ok(RunSummary {
            id: row.get("id")?,
            story: row.get("story")?,
            team: row.get("team")?,
            state: row.get("state")?,
            trigger: row.get("trigger")?,
            error: row.get("error")?,
            failed_step: row.get("failed_step")?,
            parent_run: row.get("parent_run")?,
            parent_step: row.get("parent_step")?,
            created_ms: row.get("created_ms")?,
            started_ms: row.get("started_ms")?,
            finished_ms: row.get("finished_ms")?,
            trace_id: row.get("trace_id")?,
            trace_span: row.get("trace_span")?,
        })
    }
}

/// How the listing statements are written for SQLite (see [`Dialect`]).
const SQLITE: Dialect = Dialect { placeholder: '?', state: "+state", tiebreak: "rowid" };

/// A woken run's decided approvals, marked resumed (`approvals_to_wake`:
/// only those not resumed yet are in it).
const MARK_RESUMED: &str = "UPDATE approvals SET resumed = 1 WHERE root_run = ?1 AND resumed = 0 AND state <> 'pending'";

/// Approvals, oldest first; pending only (the usual view) unless `all`,
/// through the partial index of pending ones: decided ones pile up with age.
fn approvals_sql(all: bool) -> String {
    let which = if all { "1 = 1" } else { "state = 'pending'" };
    format!("SELECT {APPROVAL} FROM approvals WHERE {which} AND (?1 IS NULL OR team = ?1) AND (?2 IS NULL OR story = ?2) ORDER BY created_ms, run_id LIMIT ?3")
}

fn arg<'a>(a: &'a FilterArg<'a>) -> &'a dyn rusqlite::ToSql {
    match a {
        FilterArg::Text(t) => t,
        FilterArg::Int(i) => i,
    }
}

impl RunStore {
    /// Keeps `value` among the last `lookback` of `scope`; `false` when it was kept already.
    fn remember(tx: &rusqlite::Transaction, scope: &str, value: &str, lookback: u64) -> rusqlite::Result<bool> {
        let added = tx
            .prepare_cached("INSERT INTO dedupe (scope, value, seq) SELECT ?1, ?2, COALESCE(MAX(seq), 0) + 1 FROM dedupe WHERE scope = ?1 ON CONFLICT (scope, value) DO NOTHING")?
            .execute(params![scope, value])?;
        tx.prepare_cached("DELETE FROM dedupe WHERE scope = ?1 AND seq <= (SELECT MAX(seq) FROM dedupe WHERE scope = ?1) - ?2")?
            .execute(params![scope, lookback as i64])?;
        Ok(added == 1)
    }

    /// One write inside the batch's transaction. A failed statement undoes
    /// only itself (SQLite's default `ABORT`); the caller decides the rest.
    fn write_one(tx: &rusqlite::Transaction, w: &Write) -> rusqlite::Result<()> {
        match w {
            Write::CreateRun { id, story, team, trigger, input, parent, idempotency_key, at_ms } => {
                tx.prepare_cached(
                    "INSERT INTO runs (id, story, team, state, trigger, input, parent_run, parent_step, created_ms, idempotency_key) VALUES (?1, ?2, ?3, 'queued', ?4, ?5, ?6, ?7, ?8, ?9)",
                )?
                .execute(params![id, story, team, trigger, input, parent.as_ref().map(|p| &p.0), parent.as_ref().map(|p| &p.1), at_ms, idempotency_key])?;
            }
            Write::Traced { run, trace_id, span_id } => {
                tx.prepare_cached("UPDATE runs SET trace_id = ?2, trace_span = ?3 WHERE id = ?1")?.execute(params![run, trace_id, span_id])?;
            }
            Write::StartRun { id, at_ms } => {
                tx.prepare_cached("UPDATE runs SET state = 'running', started_ms = COALESCE(started_ms, ?2) WHERE id = ?1")?.execute(params![id, at_ms])?;
            }
            Write::NoteResume { id } => {
                tx.prepare_cached("UPDATE runs SET resumes = resumes + 1 WHERE id = ?1")?.execute(params![id])?;
            }
            Write::NoteShutdown { id } => {
                tx.prepare_cached("UPDATE runs SET resumes = 0 WHERE id = ?1")?.execute(params![id])?;
            }
            Write::FinishRun { id, state, output, error, failed_step, at_ms } => {
                tx.prepare_cached("UPDATE runs SET state = ?2, output = ?3, error = ?4, failed_step = ?5, finished_ms = ?6, resumes = 0 WHERE id = ?1")?
                    .execute(params![id, state, output, error, failed_step, at_ms])?;
            }
            Write::StepStarted { run, step, item, kind, input, attempt, at_ms } => {
                tx.prepare_cached(
                    "INSERT INTO steps (run_id, step_id, item, kind, state, input, attempts, started_ms) VALUES (?1, ?2, ?3, ?4, 'running', ?5, ?6, ?7)
                     ON CONFLICT(run_id, step_id, item) DO UPDATE SET state = 'running', input = COALESCE(excluded.input, input), attempts = excluded.attempts",
                )?
                .execute(params![run, step, item.map_or(-1, |i| i as i64), kind, input, attempt, at_ms])?;
            }
            Write::StepFinished { run, step, item, kind, state, output, error, attempts, at_ms } => {
                tx.prepare_cached(
                    "INSERT INTO steps (run_id, step_id, item, kind, state, output, error, attempts, started_ms, finished_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9)
                     ON CONFLICT(run_id, step_id, item) DO UPDATE SET state = excluded.state, output = excluded.output, error = excluded.error, attempts = MAX(attempts, excluded.attempts), finished_ms = excluded.finished_ms",
                )?
                .execute(params![run, step, item.map_or(-1, |i| i as i64), kind, state, output, error, attempts, at_ms])?;
            }
            Write::Logs { run, step, lines } => {
                let mut stmt = tx.prepare_cached("INSERT INTO logs (run_id, step_id, at_ms, level, source, message) VALUES (?1, ?2, ?3, ?4, ?5, ?6)")?;
                for l in lines {
                    stmt.execute(params![run, step, l.at_ms, l.level, l.source, l.message])?;
                }
            }
            Write::Audit { run, step, records } => {
                let mut stmt = tx.prepare_cached("INSERT INTO audit (run_id, step_id, at_ms, record) VALUES (?1, ?2, ?3, ?4)")?;
                for (at_ms, record) in records {
                    stmt.execute(params![run, step, at_ms, record])?;
                }
            }
            Write::Recording { run, step, item, attempt, truncated, recording } => {
                tx.prepare_cached("INSERT INTO recordings (run_id, step_id, item, attempt, truncated, recording) VALUES (?1, ?2, ?3, ?4, ?5, ?6)")?
                    .execute(params![run, step, item.map_or(-1, |i| i as i64), attempt, truncated, recording])?;
            }
            Write::Remember { .. } => unreachable!("apply remembers values itself"),
            Write::Park { run, step, kind, approval, at_ms } => {
                tx.prepare_cached(
                    "INSERT INTO steps (run_id, step_id, item, kind, state, attempts, started_ms) VALUES (?1, ?2, -1, ?3, 'waiting', 1, ?4)
                     ON CONFLICT(run_id, step_id, item) DO UPDATE SET state = 'waiting', finished_ms = NULL",
                )?
                .execute(params![run, step, kind, at_ms])?;
                tx.prepare_cached("UPDATE runs SET state = 'waiting', started_ms = COALESCE(started_ms, ?2) WHERE id = ?1")?.execute(params![run, at_ms])?;
                if let Some(pair) = approval {
                    let (a, links) = pair.as_ref();
                    tx.prepare_cached(
                        "INSERT INTO approvals (run_id, step_id, root_run, story, team, title, details, choices, approvers, created_ms, deadline_ms, on_timeout, state)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, 'pending') ON CONFLICT(run_id, step_id) DO NOTHING",
                    )?
                    .execute(params![
                        a.run,
                        a.step,
                        a.root_run,
                        a.story,
                        a.team,
                        a.title,
                        a.details.to_string(),
                        serde_json::to_string(&a.choices).unwrap_or_default(),
                        serde_json::to_string(&a.approvers).unwrap_or_default(),
                        a.created_ms,
                        a.deadline_ms,
                        a.on_timeout
                    ])?;
                    let mut stmt = tx.prepare_cached(
                        "INSERT INTO approval_links (hash, run_id, step_id, choice, recipient) VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT(hash) DO NOTHING",
                    )?;
                    for l in links {
                        stmt.execute(params![l.hash, a.run, a.step, l.choice, l.recipient])?;
                    }
                }
            }
        }
        Ok(())
    }
}

impl Store for RunStore {
    fn approvals(&self) -> Option<&dyn ApprovalStore> {
        Some(self)
    }

    fn apply(&self, batch: &[Write]) -> anyhow::Result<Vec<Result<(), Conflict>>> {
        let mut conn = self.conn();
        // IMMEDIATE: take the write lock up front (waiting up to the busy
        // timeout) rather than fail to upgrade a read lock half-way.
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut answers = Vec::with_capacity(batch.len());
        for w in batch {
            if let Write::Remember { scope, value, lookback, .. } = w {
                let fresh =
                    RunStore::remember(&tx, scope, value, *lookback).map_err(|e| anyhow::Error::from(e).context(format!("{} of run {}", w.name(), w.run())))?;
                answers.push(if fresh { Ok(()) } else { Err(Conflict(format!("{scope} saw this value before"))) });
                continue;
            }
            match RunStore::write_one(&tx, w) {
                Ok(()) => answers.push(Ok(())),
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE && matches!(w, Write::CreateRun { idempotency_key: Some(_), .. }) =>
                {
                    let Write::CreateRun { story, .. } = w else { unreachable!() };
                    answers.push(Err(Conflict(format!("story {story} already has a run for this Idempotency-Key"))));
                }
                // Anything else fails the batch: dropping `tx` rolls it back.
                Err(e) => return Err(anyhow::Error::from(e).context(format!("{} of run {}", w.name(), w.run()))),
            }
        }
        tx.commit()?;
        Ok(answers)
    }

    /// Newest first. `story` and `state` filter; top-level runs only unless `include_children`.
    fn find_runs(&self, f: &RunFilter) -> anyhow::Result<Vec<RunSummary>> {
        let (sql, args) = f.listing_sql(&SQLITE, "*");
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(args.iter().map(arg)), RunStore::summary)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn count_runs(&self, f: &RunFilter) -> anyhow::Result<Vec<(String, u64)>> {
        let (sql, args) = f.counting_sql(&SQLITE);
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(args.iter().map(arg)), |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn count_unfinished(&self) -> anyhow::Result<Vec<(String, u64)>> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&super::COUNT_UNFINISHED)?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn run_by_idempotency_key(&self, story: &str, key: &str) -> anyhow::Result<Option<String>> {
        Ok(self.reader().query_row("SELECT id FROM runs WHERE story = ?1 AND idempotency_key = ?2", params![story, key], |r| r.get(0)).optional()?)
    }

    fn last_schedule_tick(&self, story: &str) -> anyhow::Result<Option<u64>> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(LAST_TICK)?;
        let key: Option<String> = stmt.query_row(params![story], |r| r.get(0)).optional()?;
        Ok(key.as_deref().and_then(tick_of))
    }

    fn recordings(&self, run: &str) -> anyhow::Result<Vec<StoredRecording>> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached("SELECT step_id, item, attempt, truncated, recording FROM recordings WHERE run_id = ?1 ORDER BY rowid")?;
        let rows = stmt.query_map(params![run], |r| {
            let item: i64 = r.get(1)?;
            Ok(StoredRecording { step: r.get(0)?, item: (item >= 0).then_some(item as usize), attempt: r.get(2)?, truncated: r.get(3)?, recording: r.get(4)? })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    fn run_summary(&self, id: &str) -> anyhow::Result<Option<RunSummary>> {
        Ok(self.reader().query_row("SELECT * FROM runs WHERE id = ?1", params![id], RunStore::summary).optional()?)
    }

    /// The story and input of a run, to execute it (e.g. after a restart).
    fn run_input(&self, id: &str) -> anyhow::Result<Option<(String, Value)>> {
        let row: Option<(String, String)> =
            self.reader().query_row("SELECT story, input FROM runs WHERE id = ?1", params![id], |r| Ok((r.get(0)?, r.get(1)?))).optional()?;
        Ok(row.map(|(s, i)| (s, serde_json::from_str(&i).unwrap_or(Value::Null))))
    }

    fn resumes(&self, id: &str) -> anyhow::Result<u32> {
        let n: Option<i64> = self.reader().query_row("SELECT resumes FROM runs WHERE id = ?1", params![id], |r| r.get(0)).optional()?;
        Ok(n.unwrap_or(0).clamp(0, u32::MAX as i64) as u32)
    }

    fn runs_in_state(&self, state: &str) -> anyhow::Result<Vec<String>> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached("SELECT id FROM runs WHERE state = ?1 AND parent_run IS NULL ORDER BY created_ms")?;
        let rows = stmt.query_map(params![state], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn get_run(&self, id: &str) -> anyhow::Result<Option<RunDetail>> {
        let conn = self.reader();
        let Some((run, input, output)) = conn
            .query_row("SELECT *, input, output FROM runs WHERE id = ?1", params![id], |r| {
                Ok((RunStore::summary(r)?, r.get::<_, String>("input")?, r.get::<_, Option<String>>("output")?))
            })
            .optional()?
        else {
            return Ok(None);
        };
        let mut stmt = conn.prepare_cached("SELECT * FROM steps WHERE run_id = ?1 ORDER BY rowid")?;
        let steps = stmt
            .query_map(params![id], |r| {
                let item: i64 = r.get("item")?;
                Ok(StepRecord {
                    step_id: r.get("step_id")?,
                    item: (item >= 0).then_some(item as u32),
                    kind: r.get("kind")?,
                    state: r.get("state")?,
                    input: json_col(r.get("input")?),
                    output: json_col(r.get("output")?),
                    error: json_col(r.get("error")?),
                    attempts: r.get("attempts")?,
                    started_ms: r.get("started_ms")?,
                    finished_ms: r.get("finished_ms")?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let mut stmt = conn.prepare_cached("SELECT * FROM logs WHERE run_id = ?1 ORDER BY rowid")?;
        let logs = stmt
            .query_map(params![id], |r| {
                Ok(LogRecord {
                    step_id: r.get("step_id")?,
                    at_ms: r.get("at_ms")?,
                    level: r.get("level")?,
                    source: r.get("source")?,
                    message: r.get("message")?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let mut stmt = conn.prepare_cached("SELECT record FROM audit WHERE run_id = ?1 ORDER BY rowid")?;
        let audit = stmt.query_map(params![id], |r| r.get::<_, String>(0))?.filter_map(|r| r.ok().and_then(|s| serde_json::from_str(&s).ok())).collect();
        let mut stmt = conn.prepare_cached(CHILDREN)?;
        let children = stmt.query_map(params![id], RunStore::summary)?.collect::<Result<Vec<_>, _>>()?;
        Ok(Some(RunDetail { run, input: serde_json::from_str(&input).unwrap_or(Value::Null), output: json_col(output), steps, logs, audit, children }))
    }
}

const APPROVAL: &str = "run_id, step_id, root_run, story, team, title, details, choices, approvers, created_ms, deadline_ms, on_timeout, state, choice, decided_by, via, decided_from, comment, decided_ms";

fn approval_row(r: &rusqlite::Row) -> rusqlite::Result<crate::approval::Approval> {
    let json = |i: usize| -> rusqlite::Result<Value> { Ok(serde_json::from_str(&r.get::<_, String>(i)?).unwrap_or(Value::Null)) };
    let list = |i: usize| -> rusqlite::Result<Vec<String>> { Ok(serde_json::from_str(&r.get::<_, String>(i)?).unwrap_or_default()) };
    let decided_by: Option<String> = r.get(14)?;
    let decision = match decided_by {
        None => None,
        Some(decided_by) => Some(crate::approval::Decision {
            choice: r.get(13)?,
            decided_by,
            via: r.get::<_, Option<String>>(15)?.unwrap_or_default(),
            from: r.get(16)?,
            comment: r.get(17)?,
            decided_ms: r.get::<_, Option<u64>>(18)?.unwrap_or(0),
        }),
    };
    Ok(crate::approval::Approval {
        run: r.get(0)?,
        step: r.get(1)?,
        root_run: r.get(2)?,
        story: r.get(3)?,
        team: r.get(4)?,
        title: r.get(5)?,
        details: json(6)?,
        choices: list(7)?,
        approvers: list(8)?,
        created_ms: r.get(9)?,
        deadline_ms: r.get(10)?,
        on_timeout: r.get(11)?,
        state: r.get(12)?,
        decision,
    })
}

impl ApprovalStore for RunStore {
    fn key_salt(&self) -> anyhow::Result<[u8; 32]> {
        let mut fresh = [0u8; 32];
        getrandom::fill(&mut fresh).map_err(|e| anyhow::anyhow!("no randomness for the approval link salt: {e}"))?;
        let conn = self.conn();
        conn.execute("INSERT INTO warden_keys (name, value) VALUES ('approval-links-salt', ?1) ON CONFLICT(name) DO NOTHING", params![fresh.as_slice()])?;
        let salt: Vec<u8> = conn.query_row("SELECT value FROM warden_keys WHERE name = 'approval-links-salt'", [], |r| r.get(0))?;
        salt.try_into().map_err(|_| anyhow::anyhow!("the run store's approval link salt is damaged (not 32 bytes)"))
    }

    fn local_secret(&self) -> anyhow::Result<Option<crate::policy::credentials::Secret>> {
        match &self.path {
            Some(db) => crate::approval::secret_beside(db).map(Some),
            None => Ok(Some(crate::approval::process_secret())),
        }
    }

    fn approval(&self, run: &str, step: &str) -> anyhow::Result<Option<crate::approval::Approval>> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&format!("SELECT {APPROVAL} FROM approvals WHERE run_id = ?1 AND step_id = ?2"))?;
        Ok(stmt.query_row(params![run, step], approval_row).optional()?)
    }

    fn approval_by_link(&self, hash: &str) -> anyhow::Result<Option<(crate::approval::Approval, crate::approval::Link)>> {
        let link = self
            .reader()
            .query_row("SELECT run_id, step_id, choice, recipient FROM approval_links WHERE hash = ?1", params![hash], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, crate::approval::Link { hash: hash.to_string(), choice: r.get(2)?, recipient: r.get(3)? }))
            })
            .optional()?;
        let Some((run, step, link)) = link else { return Ok(None) };
        Ok(self.approval(&run, &step)?.map(|a| (a, link)))
    }

    fn list_approvals(&self, f: &ApprovalFilter) -> anyhow::Result<Vec<crate::approval::Approval>> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&approvals_sql(f.all))?;
        let rows = stmt.query_map(params![f.team, f.story, f.limit as i64], approval_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn decide(&self, run: &str, step: &str, d: &crate::approval::Decision) -> anyhow::Result<crate::approval::Decided> {
        {
            let mut conn = self.conn();
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let state = if d.choice.is_some() { "decided" } else { "expired" };
            let changed = tx
                .prepare_cached(
                    "UPDATE approvals SET state = ?3, choice = ?4, decided_by = ?5, via = ?6, decided_from = ?7, comment = ?8, decided_ms = ?9
                     WHERE run_id = ?1 AND step_id = ?2 AND state = 'pending'",
                )?
                .execute(params![run, step, state, d.choice, d.decided_by, d.via, d.from, d.comment, d.decided_ms])?;
            if changed == 1 {
                tx.prepare_cached("INSERT INTO audit (run_id, step_id, at_ms, record) VALUES (?1, ?2, ?3, ?4)")?.execute(params![
                    run,
                    step,
                    d.decided_ms,
                    decision_audit(step, d)
                ])?;
            }
            tx.commit()?;
            if changed == 0 {
                drop(conn);
                return Ok(match self.approval(run, step)? {
                    Some(a) => Err(crate::approval::Refused::Over(a)),
                    None => Err(crate::approval::Refused::Unknown(format!("run {run} has no approval step `{step}` waiting"))),
                });
            }
        }
        self.approval(run, step)?.ok_or_else(|| anyhow::anyhow!("approval {step} of run {run} vanished")).map(Ok)
    }

    fn due_approvals(&self, now_ms: u64, limit: usize) -> anyhow::Result<Vec<crate::approval::Approval>> {
        let conn = self.reader();
        let mut stmt =
            conn.prepare_cached(&format!("SELECT {APPROVAL} FROM approvals WHERE state = 'pending' AND deadline_ms <= ?1 ORDER BY deadline_ms LIMIT ?2"))?;
        let rows = stmt.query_map(params![now_ms.min(i64::MAX as u64), limit as i64], approval_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn runs_to_wake(&self, limit: usize) -> anyhow::Result<Vec<String>> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached("SELECT DISTINCT root_run FROM approvals WHERE resumed = 0 AND state <> 'pending' LIMIT ?1")?;
        let rows = stmt.query_map(params![limit as i64], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn wake(&self, root: &str) -> anyhow::Result<bool> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let woke = tx.prepare_cached("UPDATE runs SET state = 'running' WHERE id = ?1 AND state = 'waiting'")?.execute(params![root])? == 1;
        tx.prepare_cached(MARK_RESUMED)?.execute(params![root])?;
        tx.commit()?;
        Ok(woke)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_run_is_recorded_with_its_steps() {
        let s = RunStore::in_memory().unwrap();
        let input = json!({"x": 1});
        s.create_run(&NewRun { id: "r1", story: "st", team: "soc", trigger: "cli", input: &input, parent: None, idempotency_key: None }).unwrap();
        s.start_run("r1").unwrap();
        s.step_started("r1", "a", None, "action", Some(&json!({"in": 1})), 1).unwrap();
        s.step_finished("r1", "a", None, "action", "succeeded", Some(&json!({"out": 2})), None, 1).unwrap();
        s.finish_run("r1", "succeeded", Some(&json!({"done": true})), None, None).unwrap();
        let d = s.get_run("r1").unwrap().unwrap();
        assert_eq!(d.run.state, "succeeded");
        assert_eq!(d.steps[0].input, Some(json!({"in": 1})));
        assert_eq!(d.steps[0].output, Some(json!({"out": 2})));
        assert_eq!(d.output, Some(json!({"done": true})));
        assert_eq!(s.list_runs(Some("st"), None, false, 10, 0).unwrap().len(), 1);
        assert_eq!(s.count_by_state().unwrap(), vec![("succeeded".to_string(), 1)]);
    }

    #[test]
    fn counting_unfinished_runs_reads_the_state_index_not_the_stores_history() {
        let s = RunStore::in_memory().unwrap();
        {
            let mut conn = s.conn();
            let tx = conn.transaction().unwrap();
            let mut add = tx
                .prepare("INSERT INTO runs (id, story, team, state, trigger, input, parent_run, created_ms) VALUES (?1, 'st', 'soc', ?2, 'cli', '{}', ?3, 0)")
                .unwrap();
            for i in 0..2000 {
                add.execute(params![format!("done{i}"), if i % 3 == 0 { "failed" } else { "succeeded" }, None::<String>]).unwrap();
            }
            for (id, state, parent) in
                [("q1", "queued", None), ("q2", "queued", None), ("q3", "queued", Some("q1")), ("r1", "running", None), ("w1", "waiting", None)]
            {
                add.execute(params![id, state, parent]).unwrap();
            }
            drop(add);
            tx.commit().unwrap();
        }
        let counts = s.count_unfinished().unwrap();
        assert_eq!(counts, vec![("queued".to_string(), 2), ("running".to_string(), 1), ("waiting".to_string(), 1)], "top-level runs only");

        // 2,000 finished runs must not show in what the statement reads.
        let unfinished = vm_steps(&s, (super::super::COUNT_UNFINISHED.clone(), vec![]));
        assert!(unfinished < 200, "counting 5 unfinished runs took {unfinished} VM steps: it reads finished runs");
        let every = vm_steps(&s, ("SELECT state, COUNT(*) FROM runs WHERE parent_run IS NULL GROUP BY state".to_string(), vec![]));
        assert!(every > 2000, "the measure tells a scan apart ({every} steps for every run)");
    }

    /// `n` webhook runs of three stories, each with an idempotency key, 1 ms
    /// apart; the oldest 2,000 failed.
    fn long_history(n: i64) -> RunStore {
        let s = RunStore::in_memory().unwrap();
        let mut conn = s.conn();
        let tx = conn.transaction().unwrap();
        let mut add = tx.prepare("INSERT INTO runs (id, story, team, state, trigger, input, created_ms, idempotency_key) VALUES (?1, ?2, 'soc', ?3, 'webhook', '{}', ?4, 'k' || ?1)").unwrap();
        for i in 0..n {
            add.execute(params![format!("r{i:05}"), format!("st{}", i % 3), if i < 2_000 { "failed" } else { "succeeded" }, 1_000_000 + i]).unwrap();
        }
        drop(add);
        tx.commit().unwrap();
        drop(conn);
        s
    }

    /// Steps of SQLite's VM for one statement: they grow with every row it reads.
    fn vm_steps(s: &RunStore, (sql, args): (String, Vec<FilterArg>)) -> i32 {
        let conn = s.reader();
        let mut stmt = conn.prepare(&sql).unwrap();
        let n = stmt.query_map(rusqlite::params_from_iter(args.iter().map(arg)), |_| Ok(())).unwrap().count();
        assert!(n > 0, "{sql}");
        stmt.get_status(rusqlite::StatementStatus::VmStep)
    }

    /// What a statement costs on the longer store, against the shorter one.
    fn growth(small: &RunStore, big: &RunStore, statement: impl Fn() -> (String, Vec<FilterArg<'static>>)) -> f64 {
        vm_steps(big, statement()) as f64 / vm_steps(small, statement()) as f64
    }

    #[test]
    fn a_page_of_runs_costs_the_page_not_the_stores_history() {
        let (small, big) = (long_history(6_000), long_history(24_000));
        // The measure tells: sorting every run costs 4× on a 4× longer store.
        let everything = growth(&small, &big, || ("SELECT * FROM runs NOT INDEXED ORDER BY +created_ms DESC LIMIT 20".to_string(), vec![]));
        assert!(everything > 3.5, "{everything}");
        let filters = [
            RunFilter { limit: 20, ..Default::default() },
            RunFilter { story: Some("st1"), limit: 20, ..Default::default() },
            RunFilter { since_ms: Some(1_000_000 + 5_000), limit: 20, ..Default::default() },
            RunFilter { state: Some("succeeded"), team: Some("soc"), trigger: Some("webhook"), limit: 20, offset: 20, ..Default::default() },
        ];
        for f in &filters {
            let g = growth(&small, &big, || f.listing_sql(&SQLITE, "*"));
            assert!(g < 1.1, "{f:?}: a page costs {g:.2}× on a 4× longer store");
        }
        let ids = |f: RunFilter| big.find_runs(&f).unwrap().into_iter().map(|r| r.id).collect::<Vec<_>>();
        assert_eq!(ids(RunFilter { limit: 3, ..Default::default() }), ["r23999", "r23998", "r23997"], "newest first");
        assert_eq!(ids(RunFilter { story: Some("st1"), limit: 2, ..Default::default() }), ["r23998", "r23995"]);
        assert_eq!(ids(RunFilter { since_ms: Some(1_023_998), limit: 20, ..Default::default() }), ["r23999", "r23998"]);
        assert_eq!(
            ids(RunFilter { state: Some("succeeded"), team: Some("soc"), trigger: Some("webhook"), limit: 2, offset: 1, ..Default::default() }),
            ["r23998", "r23997"]
        );
        assert_eq!(ids(RunFilter { story: Some("st2"), state: Some("failed"), limit: 1, ..Default::default() }), ["r01997"]);
    }

    #[test]
    fn a_runs_children_and_a_storys_last_tick_cost_their_own_rows() {
        let (small, big) = (long_history(6_000), long_history(24_000));
        for s in [&small, &big] {
            let mut conn = s.conn();
            let tx = conn.transaction().unwrap();
            for (id, parent, trigger, key, at) in [
                ("c1", Some("r05999"), "story:st2", None::<String>, 2_000_000),
                ("c2", Some("r05999"), "story:st2", None, 2_000_001),
                ("t1", None, "schedule", Some(super::super::schedule_key(60_000)), 500_000),
            ] {
                tx.execute(
                    "INSERT INTO runs (id, story, team, state, trigger, input, parent_run, idempotency_key, created_ms) VALUES (?1, 'st0', 'soc', 'succeeded', ?2, '{}', ?3, ?4, ?5)",
                    params![id, trigger, parent, key, at],
                )
                .unwrap();
            }
            tx.commit().unwrap();
        }
        let children = growth(&small, &big, || (CHILDREN.to_string(), vec![FilterArg::Text("r05999")]));
        assert!(children < 1.1, "a run's children cost {children:.2}× on a 4× longer store");
        let tick = growth(&small, &big, || (LAST_TICK.to_string(), vec![FilterArg::Text("st0")]));
        assert!(tick < 1.1, "the last tick costs {tick:.2}× on a 4× longer store");
        let run = big.get_run("r05999").unwrap().unwrap();
        assert_eq!(run.children.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), ["c1", "c2"]);
        assert_eq!(big.last_schedule_tick("st0").unwrap(), Some(60_000));
    }

    #[test]
    fn pending_approvals_cost_the_pending_ones_not_every_decision() {
        let with = |decided: i64| {
            let s = RunStore::in_memory().unwrap();
            let mut conn = s.conn();
            let tx = conn.transaction().unwrap();
            let mut add = tx
                .prepare(
                    "INSERT INTO approvals (run_id, step_id, root_run, story, team, title, details, choices, approvers, created_ms, deadline_ms, state, resumed)
                     VALUES (?1, 'ask', ?1, 'st', 'soc', 't', '{}', '[]', '[]', ?2, ?2, ?3, ?4)",
                )
                .unwrap();
            for i in 0..decided {
                add.execute(params![format!("d{i:06}"), i, "decided", 1]).unwrap();
            }
            for i in 0..3 {
                add.execute(params![format!("p{i}"), 1_000_000 + i, "pending", 0]).unwrap();
            }
            drop(add);
            tx.commit().unwrap();
            drop(conn);
            s
        };
        let (small, big) = (with(2_000), with(8_000));
        let pending = |s: &RunStore| {
            let conn = s.reader();
            let mut stmt = conn.prepare(&approvals_sql(false)).unwrap();
            let n = stmt.query_map(params![None::<String>, None::<String>, 50], |_| Ok(())).unwrap().count();
            assert_eq!(n, 3);
            stmt.get_status(rusqlite::StatementStatus::VmStep)
        };
        let g = pending(&big) as f64 / pending(&small) as f64;
        assert!(g < 1.1, "listing 3 pending approvals costs {g:.2}× beside 4× more decided ones");
        // Waking a run whose approval was decided: its own rows, not every decision.
        let mark = |s: &RunStore| {
            let conn = s.conn();
            conn.execute("UPDATE approvals SET state = 'decided' WHERE run_id = 'p1'", []).unwrap();
            let mut stmt = conn.prepare(MARK_RESUMED).unwrap();
            assert_eq!(stmt.execute(params!["p1"]).unwrap(), 1);
            stmt.get_status(rusqlite::StatementStatus::VmStep)
        };
        let g = mark(&big) as f64 / mark(&small) as f64;
        assert!(g < 1.1, "marking one run's approvals resumed costs {g:.2}× beside 4× more decided ones");
    }

    #[test]
    fn run_counts_read_the_latest_runs_only() {
        let (small, big) = (long_history(12_000), long_history(24_000));
        // The 2,000 failed runs are the oldest: past the cap, not counted.
        assert_eq!(big.count_runs(&RunFilter::default()).unwrap(), vec![("succeeded".to_string(), COUNT_CAP)]);
        let g = growth(&small, &big, || RunFilter::default().counting_sql(&SQLITE));
        assert!(g < 1.1, "counting costs {g:.2}× on a 2× longer store");
        // A filter narrower than the cap counts all it matches.
        let st0 = small.count_runs(&RunFilter { story: Some("st0"), since_ms: Some(1_000_000), ..Default::default() }).unwrap();
        assert_eq!(st0, vec![("failed".to_string(), 667), ("succeeded".to_string(), 3_333)]);
    }

    #[test]
    fn a_second_run_with_one_idempotency_key_is_a_conflict_not_a_failure() {
        let s = RunStore::in_memory().unwrap();
        let input = json!({});
        let run = |id| NewRun { id, story: "st", team: "t", trigger: "webhook", input: &input, parent: None, idempotency_key: Some("k1") };
        s.create_run(&run("r1")).unwrap();
        let e = s.create_run(&run("r2")).unwrap_err();
        assert!(e.is::<Conflict>(), "{e:#}");
        assert_eq!(s.run_by_idempotency_key("st", "k1").unwrap().as_deref(), Some("r1"));
    }

    #[test]
    fn reopening_migrates_once() {
        let dir = std::env::temp_dir().join(format!("warden-store-{}", std::process::id()));
        let path = dir.join("runs.db");
        let _ = std::fs::remove_file(&path);
        {
            let s = RunStore::open(&path).unwrap();
            s.create_run(&NewRun { id: "r", story: "s", team: "t", trigger: "cli", input: &json!({}), parent: None, idempotency_key: None }).unwrap();
        }
        let s = RunStore::open(&path).unwrap();
        assert!(s.run_summary("r").unwrap().is_some());
        let _ = std::fs::remove_dir_all(dir);
    }
}
