//! The run store in embedded SQLite (WAL, `synchronous = NORMAL`): created and
//! migrated by warden itself, statements prepared once and cached.

use super::*;
use crate::sql::{self, Arg, Cell};
use anyhow::Context as _;
#[cfg(test)]
use rusqlite::params;
use rusqlite::Connection;
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
    r#"
CREATE TABLE service_tokens (
    name TEXT PRIMARY KEY,
    digest BLOB NOT NULL UNIQUE,
    team TEXT,
    role TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    created_by TEXT NOT NULL,
    revoked_ms INTEGER,
    last_used_ms INTEGER
);
CREATE TABLE activity (
    id INTEGER PRIMARY KEY,
    at_ms INTEGER NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    team TEXT,
    target TEXT,
    outcome TEXT NOT NULL,
    detail TEXT,
    from_addr TEXT
);
CREATE INDEX activity_by_team ON activity (team, id);
ALTER TABLE approvals ADD COLUMN choice_marks TEXT;
"#,
];

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

pub struct SqliteStore {
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

impl SqliteStore {
    /// Opens (creating and migrating as needed) the store at `path`.
    pub fn open(path: &Path) -> anyhow::Result<SqliteStore> {
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
        let mut store = SqliteStore::with(conn)?;
        store._checkpointer = Some(Checkpointer::start(path)?);
        let read = Connection::open(path).with_context(|| format!("cannot open the run store {}", path.display()))?;
        read.busy_timeout(std::time::Duration::from_secs(5))?;
        read.pragma_update(None, "query_only", true)?;
        store.read = Some(Mutex::new(read));
        store.path = Some(path.to_path_buf());
        Ok(store)
    }

    pub fn in_memory() -> anyhow::Result<SqliteStore> {
        SqliteStore::with(Connection::open_in_memory()?)
    }

    fn with(conn: Connection) -> anyhow::Result<SqliteStore> {
        let version: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > MIGRATIONS.len() {
            anyhow::bail!("the run store was written by a newer warden (schema {version}); upgrade warden or use another --db");
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
            conn.execute_batch(&format!("BEGIN; {sql}; PRAGMA user_version = {}; COMMIT;", i + 1))
                .with_context(|| format!("run store migration {} failed", i + 1))?;
        }
        Ok(SqliteStore { conn: Mutex::new(conn), read: None, _checkpointer: None, path: None })
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
}

/// The shared statements (see [`sql`]) on a SQLite connection or transaction.
struct Lite<'a>(&'a Connection);

impl rusqlite::ToSql for Arg {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, Value as V, ValueRef};
        Ok(match self {
            Arg::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            Arg::MaybeText(None) => ToSqlOutput::Owned(V::Null),
            Arg::MaybeText(Some(s)) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            Arg::Int(i) => ToSqlOutput::Owned(V::Integer(*i as i64)),
            Arg::BigInt(i) => ToSqlOutput::Owned(V::Integer(*i)),
            Arg::Bool(b) => ToSqlOutput::Owned(V::Integer(*b as i64)),
            Arg::Bytes(b) => ToSqlOutput::Borrowed(ValueRef::Blob(b)),
        })
    }
}

impl sql::Db for Lite<'_> {
    fn dialect(&self) -> &'static sql::Dialect {
        &sql::SQLITE
    }

    async fn rows(&self, q: &str, args: &[Arg]) -> anyhow::Result<Vec<sql::Row>> {
        use rusqlite::types::ValueRef;
        let mut stmt = self.0.prepare_cached(&sql::lite(q))?;
        let columns: Arc<[String]> = stmt.column_names().into_iter().map(String::from).collect();
        let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let cells = (0..columns.len())
                .map(|i| {
                    Ok(match r.get_ref(i)? {
                        ValueRef::Null => Cell::Null,
                        ValueRef::Integer(v) => Cell::Int(v),
                        ValueRef::Real(v) => Cell::Text(v.to_string()),
                        ValueRef::Text(t) => Cell::Text(String::from_utf8_lossy(t).into_owned()),
                        ValueRef::Blob(b) => Cell::Bytes(b.to_vec()),
                    })
                })
                .collect::<rusqlite::Result<_>>()?;
            out.push(sql::Row { columns: columns.clone(), cells });
        }
        Ok(out)
    }

    async fn exec(&self, q: &str, args: &[Arg]) -> anyhow::Result<u64> {
        Ok(self.0.prepare_cached(&sql::lite(q))?.execute(rusqlite::params_from_iter(args))? as u64)
    }
}

/// A SQLite [`sql::Db`] future has nothing to wait for: it is done when first polled.
fn now<T>(fut: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    futures::executor::block_on(fut)
}

impl SqliteStore {
    /// A read on the reader connection.
    fn read<T>(&self, f: impl AsyncFnOnce(&Lite<'_>) -> anyhow::Result<T>) -> anyhow::Result<T> {
        let conn = self.reader();
        now(f(&Lite(&conn)))
    }

    /// Statements that must be one decision (two deciders, one wins), in a
    /// transaction that takes the write lock up front (waiting up to the busy
    /// timeout) rather than fail to upgrade a read lock half-way.
    fn write<T>(&self, f: impl AsyncFnOnce(&Lite<'_>) -> anyhow::Result<T>) -> anyhow::Result<T> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let out = now(f(&Lite(&tx)))?;
        tx.commit()?;
        Ok(out)
    }
}

impl RunStore for SqliteStore {
    fn approvals(&self) -> Option<&dyn ApprovalStore> {
        Some(self)
    }

    fn tokens(&self) -> Option<&dyn TokenStore> {
        Some(self)
    }

    fn activity(&self) -> Option<&dyn ActivityLog> {
        Some(self)
    }

    fn apply(&self, batch: &[Write]) -> anyhow::Result<Vec<Result<(), Conflict>>> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut answers = Vec::with_capacity(batch.len());
        for w in batch {
            let mut answer = Ok(());
            for st in sql::statements(w, sql::Placement::Unleased) {
                // A failed statement fails the batch: dropping `tx` rolls it back.
                let changed = tx
                    .prepare_cached(st.sql.sqlite())
                    .and_then(|mut s| s.execute(rusqlite::params_from_iter(&st.args)))
                    .map_err(|e| anyhow::Error::from(e).context(format!("{} of run {}", w.name(), w.run())))?;
                if let (0, Some(conflict)) = (changed, st.none_means) {
                    answer = Err(conflict);
                }
            }
            answers.push(answer);
        }
        tx.commit()?;
        Ok(answers)
    }

    sql::store_reads!();

    /// In one read transaction: the parts agree with the run.
    fn get_run(&self, id: &str) -> anyhow::Result<Option<RunDetail>> {
        let conn = self.reader();
        let tx = conn.unchecked_transaction()?;
        let detail = now(sql::run_detail(&Lite(&tx), id))?;
        tx.commit()?;
        Ok(detail)
    }
}

impl ApprovalStore for SqliteStore {
    sql::approval_statements!();

    fn local_secret(&self) -> anyhow::Result<Option<crate::policy::credentials::Secret>> {
        match &self.path {
            Some(db) => crate::approval::secret_beside(db).map(Some),
            None => Ok(Some(crate::approval::process_secret())),
        }
    }
}

impl TokenStore for SqliteStore {
    sql::token_statements!();
}

impl ActivityLog for SqliteStore {
    sql::activity_statements!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_run_is_recorded_with_its_steps() {
        let s = SqliteStore::in_memory().unwrap();
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
        let s = SqliteStore::in_memory().unwrap();
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
        let unfinished = vm_steps(&s, (sql::COUNT_UNFINISHED.clone(), vec![]));
        assert!(unfinished < 200, "counting 5 unfinished runs took {unfinished} VM steps: it reads finished runs");
        let every = vm_steps(&s, ("SELECT state, COUNT(*) FROM runs WHERE parent_run IS NULL GROUP BY state".to_string(), vec![]));
        assert!(every > 2000, "the measure tells a scan apart ({every} steps for every run)");
    }

    /// `n` webhook runs of three stories, each with an idempotency key, 1 ms
    /// apart; the oldest 2,000 failed.
    fn long_history(n: i64) -> SqliteStore {
        let s = SqliteStore::in_memory().unwrap();
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
    fn vm_steps(s: &SqliteStore, (sql, args): (String, Vec<FilterArg>)) -> i32 {
        let conn = s.reader();
        let mut stmt = conn.prepare(&sql::lite(&sql)).unwrap();
        let arg = |a: &FilterArg| match a {
            FilterArg::Text(t) => rusqlite::types::Value::Text(t.to_string()),
            FilterArg::Int(i) => rusqlite::types::Value::Integer(*i),
        };
        let n = stmt.query_map(rusqlite::params_from_iter(args.iter().map(arg)), |_| Ok(())).unwrap().count();
        assert!(n > 0, "{sql}");
        stmt.get_status(rusqlite::StatementStatus::VmStep)
    }

    /// What a statement costs on the longer store, against the shorter one.
    fn growth(small: &SqliteStore, big: &SqliteStore, statement: impl Fn() -> (String, Vec<FilterArg<'static>>)) -> f64 {
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
            let g = growth(&small, &big, || f.listing_sql(&sql::SQLITE, "*"));
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
        let children = growth(&small, &big, || (sql::children_sql(&sql::SQLITE), vec![FilterArg::Text("r05999")]));
        assert!(children < 1.1, "a run's children cost {children:.2}× on a 4× longer store");
        let tick = growth(&small, &big, || (sql::last_tick_sql(&sql::SQLITE), vec![FilterArg::Text("st0")]));
        assert!(tick < 1.1, "the last tick costs {tick:.2}× on a 4× longer store");
        let run = big.get_run("r05999").unwrap().unwrap();
        assert_eq!(run.children.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), ["c1", "c2"]);
        assert_eq!(big.last_schedule_tick("st0").unwrap(), Some(60_000));
    }

    #[test]
    fn pending_approvals_cost_the_pending_ones_not_every_decision() {
        let with = |decided: i64| {
            let s = SqliteStore::in_memory().unwrap();
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
        let pending = |s: &SqliteStore| {
            let conn = s.reader();
            let mut stmt = conn.prepare(&sql::lite(&sql::approvals_sql(false))).unwrap();
            let n = stmt.query_map(params![None::<String>, None::<String>, 50], |_| Ok(())).unwrap().count();
            assert_eq!(n, 3);
            stmt.get_status(rusqlite::StatementStatus::VmStep)
        };
        let g = pending(&big) as f64 / pending(&small) as f64;
        assert!(g < 1.1, "listing 3 pending approvals costs {g:.2}× beside 4× more decided ones");
        // Waking a run whose approval was decided: its own rows, not every decision.
        let mark = |s: &SqliteStore| {
            let conn = s.conn();
            conn.execute("UPDATE approvals SET state = 'decided' WHERE run_id = 'p1'", []).unwrap();
            let mut stmt = conn.prepare(&sql::lite(&sql::mark_resumed_sql(&sql::SQLITE))).unwrap();
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
        let g = growth(&small, &big, || RunFilter::default().counting_sql(&sql::SQLITE));
        assert!(g < 1.1, "counting costs {g:.2}× on a 2× longer store");
        // A filter narrower than the cap counts all it matches.
        let st0 = small.count_runs(&RunFilter { story: Some("st0"), since_ms: Some(1_000_000), ..Default::default() }).unwrap();
        assert_eq!(st0, vec![("failed".to_string(), 667), ("succeeded".to_string(), 3_333)]);
    }

    #[test]
    fn a_second_run_with_one_idempotency_key_is_a_conflict_not_a_failure() {
        let s = SqliteStore::in_memory().unwrap();
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
            let s = SqliteStore::open(&path).unwrap();
            s.create_run(&NewRun { id: "r", story: "s", team: "t", trigger: "cli", input: &json!({}), parent: None, idempotency_key: None }).unwrap();
        }
        let s = SqliteStore::open(&path).unwrap();
        assert!(s.run_summary("r").unwrap().is_some());
        let _ = std::fs::remove_dir_all(dir);
    }
}
