//! The run store in PostgreSQL (`--db postgres://…`): the same record as the
//! SQLite store, in a database operations teams already run, back up and
//! monitor. tokio-postgres with a deadpool pool, on a small runtime of its
//! own so the [`RunStore`] trait stays synchronous for its callers (the group
//! commit's writer thread, the CLI, and async code through `block_in_place`).
//!
//! Migrations are versioned in `warden_schema`; a node refuses a schema newer
//! than it knows. JSON is kept as text, as in SQLite (key order is the
//! guest's). Text cannot hold NUL in Postgres: it is replaced, never allowed
//! to fail a batch that carries other runs' writes.

use super::*;
use crate::sql::{self, Arg, Cell};
use anyhow::{anyhow, Context as _};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use tokio_postgres::NoTls;

mod cluster;

/// Schema versions, applied in order; `warden_schema.version` records progress.
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
    created_ms BIGINT NOT NULL,
    started_ms BIGINT,
    finished_ms BIGINT,
    idempotency_key TEXT
);
CREATE INDEX runs_by_story ON runs(story, created_ms);
CREATE INDEX runs_by_state ON runs(state);
CREATE INDEX runs_by_parent ON runs(parent_run) WHERE parent_run IS NOT NULL;
CREATE UNIQUE INDEX runs_by_idempotency_key ON runs(story, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE TABLE steps (
    seq BIGSERIAL,
    run_id TEXT NOT NULL,
    step_id TEXT NOT NULL,
    item INTEGER NOT NULL,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    input TEXT,
    output TEXT,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    started_ms BIGINT,
    finished_ms BIGINT,
    PRIMARY KEY (run_id, step_id, item)
);
CREATE TABLE logs (
    seq BIGSERIAL PRIMARY KEY,
    run_id TEXT NOT NULL,
    step_id TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    level TEXT NOT NULL,
    source TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX logs_by_run ON logs(run_id);
CREATE TABLE audit (
    seq BIGSERIAL PRIMARY KEY,
    run_id TEXT NOT NULL,
    step_id TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX audit_by_run ON audit(run_id);
"#,
    r#"
ALTER TABLE runs ADD COLUMN lease_owner TEXT;
ALTER TABLE runs ADD COLUMN lease_gen BIGINT NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN lease_until_ms BIGINT;
CREATE INDEX runs_open ON runs(created_ms) WHERE state IN ('queued', 'running') AND parent_run IS NULL;
CREATE INDEX runs_open_by_story ON runs(story) WHERE state IN ('queued', 'running') AND parent_run IS NULL;
-- Whether one more run of p_story may be leased under p_limit across the
-- cluster; takes the story's lock for the rest of the transaction. A story
-- far from its limit (more room than there can be concurrent claims: one
-- per server connection) shares the lock, so its claims run in parallel;
-- near its limit the lock is exclusive and the count exact. Never upgraded,
-- so two claims never deadlock on it.
CREATE FUNCTION warden_story_room(p_story TEXT, p_limit BIGINT) RETURNS BOOLEAN
LANGUAGE plpgsql AS $$
DECLARE
    margin BIGINT := current_setting('max_connections')::bigint;
    live BIGINT;
BEGIN
    SELECT COUNT(*) INTO live FROM runs r WHERE r.story = p_story AND r.state IN ('queued', 'running') AND r.parent_run IS NULL
        AND r.lease_owner IS NOT NULL AND r.lease_until_ms >= (extract(epoch from clock_timestamp()) * 1000)::bigint;
    IF live + margin < p_limit THEN
        PERFORM pg_advisory_xact_lock_shared(2002874995, hashtext(p_story));
    ELSE
        PERFORM pg_advisory_xact_lock(2002874995, hashtext(p_story));
        margin := 0;
    END IF;
    -- A new statement, a new snapshot: every claim committed before the lock counts.
    SELECT COUNT(*) INTO live FROM runs r WHERE r.story = p_story AND r.state IN ('queued', 'running') AND r.parent_run IS NULL
        AND r.lease_owner IS NOT NULL AND r.lease_until_ms >= (extract(epoch from clock_timestamp()) * 1000)::bigint;
    RETURN live + margin < p_limit;
END
$$;
-- Claims the run a node just accepted, if no node holds it and its story
-- has room across the cluster. One statement for the client, so the story's
-- lock is held inside the server only, never across a round trip.
CREATE FUNCTION warden_claim_run(p_run TEXT, p_story TEXT, p_node TEXT, p_lease_ms BIGINT, p_limit BIGINT) RETURNS BIGINT
LANGUAGE plpgsql AS $$
DECLARE
    generation BIGINT;
BEGIN
    -- A lost claim is one no side effect relied on (see store/postgres/cluster.rs).
    PERFORM set_config('synchronous_commit', 'off', true);
    IF NOT warden_story_room(p_story, p_limit) THEN
        RETURN NULL;
    END IF;
    UPDATE runs SET lease_owner = p_node, lease_gen = lease_gen + 1,
                    lease_until_ms = (extract(epoch from clock_timestamp()) * 1000)::bigint + p_lease_ms
     WHERE id = (SELECT r.id FROM runs r WHERE r.id = p_run AND r.state IN ('queued', 'running') AND r.parent_run IS NULL
                 AND r.lease_owner IS NULL FOR UPDATE SKIP LOCKED)
    RETURNING lease_gen INTO generation;
    RETURN generation;
END
$$;
-- Records a run whose caller waits for its end, and claims it: one
-- statement, committed without waiting for the disk (the run's first awaited
-- write makes it durable; until then nobody was told it exists).
CREATE FUNCTION warden_create_run(p_id TEXT, p_story TEXT, p_team TEXT, p_trigger TEXT, p_input TEXT, p_created_ms BIGINT,
                                  p_node TEXT, p_lease_ms BIGINT, p_limit BIGINT) RETURNS BIGINT
LANGUAGE plpgsql AS $$
DECLARE
    room BOOLEAN := false;
    now_ms BIGINT;
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    IF p_limit > 0 THEN
        room := warden_story_room(p_story, p_limit);
    END IF;
    now_ms := (extract(epoch from clock_timestamp()) * 1000)::bigint;
    -- Leased to this node when its story has room; otherwise reserved for it for a moment.
    INSERT INTO runs (id, story, team, state, trigger, input, created_ms, lease_owner, lease_gen, lease_until_ms)
    VALUES (p_id, p_story, p_team, 'queued', p_trigger, p_input, p_created_ms,
            CASE WHEN room THEN p_node END, CASE WHEN room THEN 1 ELSE 0 END, now_ms + CASE WHEN room THEN p_lease_ms ELSE 1000 END);
    RETURN CASE WHEN room THEN 1 END;
END
$$;
"#,
    r#"
CREATE TABLE recordings (
    run_id TEXT NOT NULL,
    step_id TEXT NOT NULL,
    item INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    truncated BOOLEAN NOT NULL,
    recording TEXT NOT NULL,
    seq BIGSERIAL
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
    created_ms BIGINT NOT NULL,
    deadline_ms BIGINT NOT NULL,
    on_timeout TEXT,
    state TEXT NOT NULL,
    choice TEXT,
    decided_by TEXT,
    via TEXT,
    decided_from TEXT,
    comment TEXT,
    decided_ms BIGINT,
    resumed BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (run_id, step_id)
);
CREATE INDEX approvals_due ON approvals(deadline_ms) WHERE state = 'pending';
CREATE INDEX approvals_to_wake ON approvals(root_run) WHERE NOT resumed AND state <> 'pending';
CREATE TABLE approval_links (
    hash TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    step_id TEXT NOT NULL,
    choice TEXT NOT NULL,
    recipient TEXT NOT NULL
);
CREATE TABLE warden_keys (
    name TEXT PRIMARY KEY,
    value BYTEA NOT NULL
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
    seq BIGINT NOT NULL,
    PRIMARY KEY (scope, value)
);
CREATE INDEX dedupe_seq ON dedupe (scope, seq);
"#,
    r#"
CREATE INDEX runs_by_created ON runs(created_ms);
CREATE INDEX runs_schedule_ticks ON runs(story, created_ms) WHERE trigger = 'schedule' AND idempotency_key IS NOT NULL;
"#,
    r#"
ALTER TABLE runs ADD COLUMN resumes INTEGER NOT NULL DEFAULT 0;
DELETE FROM warden_keys WHERE name = 'approval-links';
"#,
    r#"
CREATE TABLE service_tokens (
    name TEXT PRIMARY KEY,
    digest BYTEA NOT NULL UNIQUE,
    team TEXT,
    role TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    revoked_ms BIGINT,
    last_used_ms BIGINT
);
CREATE TABLE activity (
    id BIGSERIAL PRIMARY KEY,
    at_ms BIGINT NOT NULL,
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

/// Serializes migrations across processes.
const LOCK_MIGRATE: i64 = 0x7761_7264_656e_0001;

/// Whether `db` names a PostgreSQL database rather than a SQLite file.
pub fn is_postgres_url(db: &str) -> bool {
    db.starts_with("postgres://") || db.starts_with("postgresql://")
}

/// The schema version of the database at `url`, read only.
pub(super) fn schema_status(url: &str) -> anyhow::Result<SchemaStatus> {
    let config: tokio_postgres::Config = url.parse().map_err(|e| anyhow!("--db {}: not a PostgreSQL URL: {e}", redact(url)))?;
    let read = async move {
        let (client, connection) = config.connect(NoTls).await.map_err(|e| anyhow!("cannot connect to {}: {e}", redact(url)))?;
        tokio::spawn(connection);
        let exists: bool = client.query_one("SELECT to_regclass('warden_schema') IS NOT NULL", &[]).await?.get(0);
        let found = match exists {
            true => client.query_opt("SELECT version FROM warden_schema", &[]).await?.map_or(0, |r| r.get::<_, i32>(0)) as usize,
            false => 0,
        };
        anyhow::Ok(SchemaStatus { found, known: MIGRATIONS.len() })
    };
    // Its own thread: the caller may be inside a runtime.
    std::thread::scope(|s| s.spawn(|| tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(read)).join())
        .map_err(|_| anyhow!("the schema check panicked"))?
}

pub struct PgStore {
    pool: Pool,
    rt: Option<tokio::runtime::Runtime>,
    /// Set once this node serves: its leases (see [`cluster`]).
    cluster: std::sync::OnceLock<cluster::Membership>,
    url: tokio_postgres::Config,
}

impl Drop for PgStore {
    fn drop(&mut self) {
        // Dropping a runtime inside another one's task would panic.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// Text as Postgres can hold it: NUL becomes U+FFFD.
fn t(s: &str) -> Cow<'_, str> {
    if s.contains('\0') {
        Cow::Owned(s.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(s)
    }
}

fn i(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

impl PgStore {
    /// Connects, creating and migrating the schema as needed.
    pub fn connect(url: &str) -> anyhow::Result<PgStore> {
        let config: tokio_postgres::Config = url.parse().map_err(|e| anyhow!("--db {}: not a PostgreSQL URL: {e}", redact(url)))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("warden-postgres")
            .enable_all()
            .build()
            .context("cannot start the PostgreSQL client's runtime")?;
        let manager = Manager::from_config(config.clone(), NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = {
            let _enter = rt.enter();
            Pool::builder(manager).max_size(16).runtime(deadpool_postgres::Runtime::Tokio1).build().context("cannot build the PostgreSQL pool")?
        };
        let store = PgStore { pool, rt: Some(rt), cluster: Default::default(), url: config };
        store.migrate().with_context(|| format!("run store {}", redact(url)))?;
        Ok(store)
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.rt.as_ref().expect("runtime present until drop")
    }

    /// Runs `fut` to its end on the calling thread, inside the store's
    /// runtime (whose threads drive the connections and the pool), from any
    /// thread: a plain thread, a current-thread runtime (blocked meanwhile),
    /// or a multi-thread runtime (its other tasks move elsewhere).
    fn block<T>(&self, fut: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
        let caller = tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor());
        let wait = || {
            let _inside = self.runtime().enter();
            futures::executor::block_on(fut)
        };
        match caller {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(wait),
            _ => wait(),
        }
    }

    /// A connection from the pool.
    async fn client(&self) -> anyhow::Result<deadpool_postgres::Object> {
        self.pool.get().await.map_err(|e| anyhow!("cannot connect to PostgreSQL: {e}"))
    }

    /// A read on a connection of the pool.
    fn read<T>(&self, f: impl AsyncFnOnce(&Pg<'_, deadpool_postgres::Client>) -> anyhow::Result<T>) -> anyhow::Result<T> {
        self.block(async {
            let client = self.client().await?;
            f(&Pg(&client)).await
        })
    }

    /// Statements that must be one decision, in one transaction.
    fn write<T>(&self, f: impl AsyncFnOnce(&Pg<'_, deadpool_postgres::Transaction<'_>>) -> anyhow::Result<T>) -> anyhow::Result<T> {
        self.block(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            let out = f(&Pg(&tx)).await?;
            tx.commit().await?;
            Ok(out)
        })
    }

    fn migrate(&self) -> anyhow::Result<()> {
        self.block(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_MIGRATE]).await?;
            tx.batch_execute("CREATE TABLE IF NOT EXISTS warden_schema (version INTEGER NOT NULL)").await?;
            let version = tx.query_opt("SELECT version FROM warden_schema", &[]).await?.map_or(0, |r| r.get::<_, i32>(0)) as usize;
            if version > MIGRATIONS.len() {
                anyhow::bail!(
                    "the run store was written by a newer warden (schema {version}, this one knows {}); upgrade warden or use another --db",
                    MIGRATIONS.len()
                );
            }
            for (n, sql) in MIGRATIONS.iter().enumerate().skip(version) {
                tx.batch_execute(sql).await.with_context(|| format!("run store migration {} failed", n + 1))?;
                tx.execute("DELETE FROM warden_schema", &[]).await?;
                tx.execute("INSERT INTO warden_schema (version) VALUES ($1)", &[&((n + 1) as i32)]).await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }
}

/// A URL with its password hidden, for messages; also when the URL does not
/// parse (a bad port must not print the password beside it).
pub(super) fn redact(url: &str) -> String {
    if let Ok(mut u) = url::Url::parse(url) {
        if u.password().is_some() {
            let _ = u.set_password(Some("***"));
        }
        return u.to_string();
    }
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

type Param = Box<dyn tokio_postgres::types::ToSql + Sync + Send>;

/// An argument as PostgreSQL takes it (text without NUL, see [`t`]).
fn param(a: &Arg) -> Param {
    match a {
        Arg::Text(s) => Box::new(t(s).into_owned()),
        Arg::MaybeText(s) => Box::new(s.as_deref().map(|s| t(s).into_owned())),
        Arg::Int(i) => Box::new(*i),
        Arg::BigInt(i) => Box::new(*i),
        Arg::Bool(b) => Box::new(*b),
        Arg::Bytes(b) => Box::new(b.clone()),
    }
}

fn refs(params: &[Param]) -> Vec<&(dyn tokio_postgres::types::ToSql + Sync)> {
    params.iter().map(|p| p.as_ref() as &(dyn tokio_postgres::types::ToSql + Sync)).collect()
}

/// A row as the shared reads take it; a column of a type warden never
/// writes is an error naming it.
fn row_of(r: &tokio_postgres::Row, columns: &Arc<[String]>) -> anyhow::Result<sql::Row> {
    use tokio_postgres::types::Type;
    let cells = r
        .columns()
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let ty = c.type_();
            Ok(if *ty == Type::BOOL {
                r.try_get::<_, Option<bool>>(i)?.map_or(Cell::Null, Cell::Bool)
            } else if *ty == Type::INT2 {
                r.try_get::<_, Option<i16>>(i)?.map_or(Cell::Null, |v| Cell::Int(v.into()))
            } else if *ty == Type::INT4 {
                r.try_get::<_, Option<i32>>(i)?.map_or(Cell::Null, |v| Cell::Int(v.into()))
            } else if *ty == Type::INT8 {
                r.try_get::<_, Option<i64>>(i)?.map_or(Cell::Null, Cell::Int)
            } else if *ty == Type::TEXT || *ty == Type::VARCHAR || *ty == Type::NAME || *ty == Type::BPCHAR {
                r.try_get::<_, Option<String>>(i)?.map_or(Cell::Null, Cell::Text)
            } else if *ty == Type::BYTEA {
                r.try_get::<_, Option<Vec<u8>>>(i)?.map_or(Cell::Null, Cell::Bytes)
            } else {
                anyhow::bail!("the run store's column {} is of type {ty}, which warden does not read", c.name())
            })
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(sql::Row { columns: columns.clone(), cells })
}

/// The shared statements (see [`sql`]) on a pooled connection or a transaction.
struct Pg<'a, C>(&'a C);

impl<C: deadpool_postgres::GenericClient> sql::Db for Pg<'_, C> {
    fn dialect(&self) -> &'static sql::Dialect {
        &sql::POSTGRES
    }

    async fn rows(&self, q: &str, args: &[Arg]) -> anyhow::Result<Vec<sql::Row>> {
        let stmt = self.0.prepare_cached(q).await?;
        let params: Vec<Param> = args.iter().map(param).collect();
        let rows = self.0.query(&stmt, &refs(&params)).await?;
        let columns: Arc<[String]> = stmt.columns().iter().map(|c| c.name().to_string()).collect();
        rows.iter().map(|r| row_of(r, &columns)).collect()
    }

    async fn exec(&self, q: &str, args: &[Arg]) -> anyhow::Result<u64> {
        let stmt = self.0.prepare_cached(q).await?;
        let params: Vec<Param> = args.iter().map(param).collect();
        Ok(self.0.execute(&stmt, &refs(&params)).await?)
    }
}

impl RunStore for PgStore {
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
        let fence = self.fence_of(batch);
        let node = self.cluster.get().map(|m| m.node.as_str());
        let (answers, lost) = self.block(async {
            let mut client = self.client().await?;
            let placement = if fence.is_some() { sql::Placement::Clustered } else { sql::Placement::Local };
            // Runs another node took over: none of their writes are made.
            let mut lost = std::collections::HashSet::new();
            loop {
                let tx = client.transaction().await?;
                let mut answers: Vec<Result<(), Conflict>> = match &fence {
                    Some(fence) => (0..batch.len()).map(|n| fence.verdict(n, &lost)).collect(),
                    None => vec![Ok(()); batch.len()],
                };
                // Every statement with its parameters, in the batch's order.
                let mut rows: Vec<(usize, sql::Stmt, Vec<Param>)> = Vec::new();
                for (n, w) in batch.iter().enumerate().filter(|(n, _)| answers[*n].is_ok()) {
                    for st in sql::statements(w, placement) {
                        let params = st.args.iter().map(param).collect();
                        rows.push((n, st, params));
                    }
                }
                let mut stmts = HashMap::new();
                for (_, st, _) in &rows {
                    if !stmts.contains_key(st.sql.pg) {
                        stmts.insert(st.sql.pg, tx.prepare_cached(st.sql.pg).await?);
                    }
                }
                // Pipelined: every statement is sent before the first answer is
                // awaited (one round trip for the batch, not one per row), and
                // they run in the order sent. In a cluster the lease check goes
                // first in the same pipeline: should a lease turn out lost (rare),
                // the transaction is rolled back and made again without its writes.
                let leases = async {
                    match (&fence, &node) {
                        (Some(fence), Some(node)) => cluster::check_fence(&tx, node, fence).await,
                        _ => Ok(Default::default()),
                    }
                };
                let sent = rows.iter().map(|(n, st, params)| {
                    let stmt = &stmts[st.sql.pg];
                    let tx = &tx;
                    async move { (*n, st, tx.execute(stmt, &refs(params)).await) }
                });
                // Other nodes may wait for a run's end: a slot of its story, or a caller's answer.
                let ends = fence.is_some() && batch.iter().zip(&answers).any(|(w, a)| a.is_ok() && matches!(w, Write::FinishRun { .. }));
                let notify = async {
                    match ends {
                        true => cluster::notify_ended(&tx).await,
                        false => Ok(()),
                    }
                };
                let (checked, done, notified) = futures::join!(leases, futures::future::join_all(sent), notify);
                let newly_lost: Vec<String> = checked?.into_iter().filter(|r| !lost.contains(r)).collect();
                if !newly_lost.is_empty() {
                    tx.rollback().await?;
                    lost.extend(newly_lost);
                    continue;
                }
                for (n, st, result) in done {
                    match (result, &st.none_means) {
                        (Ok(0), Some(conflict)) => answers[n] = Err(conflict.clone()),
                        (Ok(_), _) => {}
                        (Err(e), _) => return Err(anyhow::Error::from(e).context(format!("{} of run {}", batch[n].name(), batch[n].run()))),
                    }
                }
                notified?;
                tx.commit().await?;
                return Ok((answers, lost));
            }
        })?;
        if self.cluster.get().is_some() {
            self.after_fenced(batch, &answers, &lost);
        }
        Ok(answers)
    }

    fn cluster(&self) -> Option<&dyn Cluster> {
        self.cluster.get().map(|_| self as &dyn Cluster)
    }

    sql::store_reads!();

    /// One snapshot for the run and its parts.
    fn get_run(&self, id: &str) -> anyhow::Result<Option<RunDetail>> {
        self.block(async {
            let mut client = self.client().await?;
            let tx = client.build_transaction().isolation_level(tokio_postgres::IsolationLevel::RepeatableRead).read_only(true).start().await?;
            let detail = sql::run_detail(&Pg(&tx), id).await?;
            tx.commit().await?;
            Ok(detail)
        })
    }
}

impl ApprovalStore for PgStore {
    sql::approval_statements!();

    /// Every node must derive the same key: no secret of one node's own.
    fn local_secret(&self) -> anyhow::Result<Option<crate::policy::credentials::Secret>> {
        Ok(None)
    }
}

impl TokenStore for PgStore {
    sql::token_statements!();
}

impl ActivityLog for PgStore {
    sql::activity_statements!();
}
