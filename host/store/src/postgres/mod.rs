//! The run store in PostgreSQL (`--db postgres://…`): the same record as the
//! SQLite store, in a database operations teams already run, back up and
//! monitor. tokio-postgres with a deadpool pool, on a small runtime of its
//! own so the [`Store`] trait stays synchronous for its callers (the group
//! commit's writer thread, the CLI, and async code through `block_in_place`).
//!
//! Migrations are versioned in `warden_schema`; a node refuses a schema newer
//! than it knows. JSON is kept as text, as in SQLite (key order is the
//! guest's). Text cannot hold NUL in Postgres: it is replaced, never allowed
//! to fail a batch that carries other runs' writes.

use super::*;
use anyhow::{anyhow, Context as _};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
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

/// How the listing statements are written for PostgreSQL (see [`Dialect`]).
const POSTGRES: Dialect = Dialect { placeholder: '$', state: "state", tiebreak: "id" };

/// A filter's values, owned to cross into the store's runtime.
enum OwnedArg {
    Text(String),
    Int(i64),
}

fn owned_args(args: &[FilterArg]) -> Vec<OwnedArg> {
    args.iter()
        .map(|a| match a {
            FilterArg::Text(s) => OwnedArg::Text(t(s).into_owned()),
            FilterArg::Int(i) => OwnedArg::Int(*i),
        })
        .collect()
}

fn pg_args(args: &[OwnedArg]) -> Vec<&(dyn tokio_postgres::types::ToSql + Sync)> {
    args.iter()
        .map(|a| match a {
            OwnedArg::Text(s) => s as &(dyn tokio_postgres::types::ToSql + Sync),
            OwnedArg::Int(i) => i,
        })
        .collect()
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

fn summary(r: &tokio_postgres::Row) -> RunSummary {
    RunSummary {
        id: r.get("id"),
        story: r.get("story"),
        team: r.get("team"),
        state: r.get("state"),
        trigger: r.get("trigger"),
        error: r.get("error"),
        failed_step: r.get("failed_step"),
        parent_run: r.get("parent_run"),
        parent_step: r.get("parent_step"),
        created_ms: r.get::<_, i64>("created_ms") as u64,
        started_ms: r.get::<_, Option<i64>>("started_ms").map(|v| v as u64),
        finished_ms: r.get::<_, Option<i64>>("finished_ms").map(|v| v as u64),
        trace_id: r.get("trace_id"),
        trace_span: r.get("trace_span"),
    }
}

const SUMMARY: &str = "id, story, team, state, trigger, error, failed_step, parent_run, parent_step, created_ms, started_ms, finished_ms, trace_id, trace_span";

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

    /// Runs `fut` on the store's runtime and waits for it, from any thread:
    /// a plain thread, a current-thread runtime (blocked meanwhile), or a
    /// multi-thread runtime (its other tasks move elsewhere).
    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.rt.as_ref().expect("runtime present until drop")
    }

    fn block<T: Send + 'static>(&self, fut: impl Future<Output = anyhow::Result<T>> + Send + 'static) -> anyhow::Result<T> {
        let rt = self.runtime();
        let task = rt.spawn(fut);
        let wait = || futures::executor::block_on(task).map_err(|e| anyhow!("the PostgreSQL task failed: {e}"))?;
        match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(wait),
            _ => wait(),
        }
    }

    fn migrate(&self) -> anyhow::Result<()> {
        let pool = self.pool.clone();
        self.block(async move {
            let mut client = pool.get().await.map_err(|e| anyhow!("cannot connect: {e}"))?;
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

fn text(s: &str) -> Param {
    Box::new(t(s).into_owned())
}

fn opt_text(s: &Option<String>) -> Param {
    Box::new(s.as_deref().map(|s| t(s).into_owned()))
}

/// The statement a write runs (once per row for logs and audit); `clustered`:
/// this store serves as a node of a cluster.
fn sql_of(w: &Write, clustered: bool) -> &'static str {
    match w {
        // In a cluster, a new run is reserved for the node that accepted it for
        // a moment (it claims it, or offers it to the others at once); should
        // that node die first, the reservation lapses and any node claims it.
        Write::CreateRun { .. } if clustered => {
            "INSERT INTO runs (id, story, team, state, trigger, input, parent_run, parent_step, created_ms, idempotency_key, lease_until_ms)
             VALUES ($1, $2, $3, 'queued', $4, $5, $6, $7, $8, $9, (extract(epoch from clock_timestamp()) * 1000)::bigint + 1000)
             ON CONFLICT (story, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING"
        }
        // Outside a cluster (`warden story run` on a shared database) the run
        // is this process's alone: no serving node ever claims it.
        Write::CreateRun { .. } => {
            "INSERT INTO runs (id, story, team, state, trigger, input, parent_run, parent_step, created_ms, idempotency_key, lease_owner, lease_until_ms)
             VALUES ($1, $2, $3, 'queued', $4, $5, $6, $7, $8, $9, 'local', 9223372036854775807)
             ON CONFLICT (story, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING"
        }
        Write::StartRun { .. } => "UPDATE runs SET state = 'running', started_ms = COALESCE(started_ms, $2) WHERE id = $1",
        Write::Traced { .. } => "UPDATE runs SET trace_id = $2, trace_span = $3 WHERE id = $1",
        Write::NoteResume { .. } => "UPDATE runs SET resumes = resumes + 1 WHERE id = $1",
        Write::NoteShutdown { .. } => "UPDATE runs SET resumes = 0 WHERE id = $1",
        Write::FinishRun { .. } => "UPDATE runs SET state = $2, output = $3, error = $4, failed_step = $5, finished_ms = $6, resumes = 0 WHERE id = $1",
        Write::StepStarted { .. } => {
            "INSERT INTO steps (run_id, step_id, item, kind, state, input, attempts, started_ms) VALUES ($1, $2, $3, $4, 'running', $5, $6, $7)
             ON CONFLICT (run_id, step_id, item) DO UPDATE SET state = 'running', input = COALESCE(EXCLUDED.input, steps.input), attempts = EXCLUDED.attempts"
        }
        Write::StepFinished { .. } => {
            "INSERT INTO steps (run_id, step_id, item, kind, state, output, error, attempts, started_ms, finished_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)
             ON CONFLICT (run_id, step_id, item) DO UPDATE SET state = EXCLUDED.state, output = EXCLUDED.output, error = EXCLUDED.error, attempts = GREATEST(steps.attempts, EXCLUDED.attempts), finished_ms = EXCLUDED.finished_ms"
        }
        Write::Logs { .. } => "INSERT INTO logs (run_id, step_id, at_ms, level, source, message) VALUES ($1, $2, $3, $4, $5, $6)",
        Write::Audit { .. } => "INSERT INTO audit (run_id, step_id, at_ms, record) VALUES ($1, $2, $3, $4)",
        Write::Recording { .. } => "INSERT INTO recordings (run_id, step_id, item, attempt, truncated, recording) VALUES ($1, $2, $3, $4, $5, $6)",
        Write::Park { .. } | Write::Remember { .. } => unreachable!("rows_of spells a park and a remember"),
    }
}

/// Each statement a write runs, with its parameters.
/// A remember's insert: no row inserted means the value was kept already.
const REMEMBER_SQL: &str =
    "INSERT INTO dedupe (scope, value, seq) SELECT $1, $2, COALESCE(MAX(seq), 0) + 1 FROM dedupe WHERE scope = $1 ON CONFLICT (scope, value) DO NOTHING";

fn rows_of(w: &Write, clustered: bool) -> Vec<(&'static str, Vec<Param>)> {
    if let Write::Remember { scope, value, lookback, .. } = w {
        return vec![
            (REMEMBER_SQL, vec![text(scope), text(value)]),
            (
                "DELETE FROM dedupe WHERE scope = $1 AND seq <= (SELECT MAX(seq) FROM dedupe WHERE scope = $1) - $2",
                vec![text(scope), Box::new(*lookback as i64) as Param],
            ),
        ];
    }
    let Write::Park { run, step, kind, approval, at_ms } = w else {
        let sql = sql_of(w, clustered);
        return params_of(w).into_iter().map(|p| (sql, p)).collect();
    };
    let mut rows: Vec<(&'static str, Vec<Param>)> = vec![
        (
            "INSERT INTO steps (run_id, step_id, item, kind, state, attempts, started_ms) VALUES ($1, $2, -1, $3, 'waiting', 1, $4)
             ON CONFLICT (run_id, step_id, item) DO UPDATE SET state = 'waiting', finished_ms = NULL",
            vec![text(run), text(step), text(kind), Box::new(i(*at_ms))],
        ),
        ("UPDATE runs SET state = 'waiting', started_ms = COALESCE(started_ms, $2) WHERE id = $1", vec![text(run), Box::new(i(*at_ms))]),
    ];
    if let Some(pair) = approval {
        let (a, links) = pair.as_ref();
        rows.push((
            "INSERT INTO approvals (run_id, step_id, root_run, story, team, title, details, choices, approvers, created_ms, deadline_ms, on_timeout, state)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 'pending') ON CONFLICT (run_id, step_id) DO NOTHING",
            vec![
                text(&a.run),
                text(&a.step),
                text(&a.root_run),
                text(&a.story),
                text(&a.team),
                text(&a.title),
                text(&a.details.to_string()),
                text(&serde_json::to_string(&a.choices).unwrap_or_default()),
                text(&serde_json::to_string(&a.approvers).unwrap_or_default()),
                Box::new(i(a.created_ms)),
                Box::new(i(a.deadline_ms)),
                opt_text(&a.on_timeout),
            ],
        ));
        for l in links {
            rows.push((
                "INSERT INTO approval_links (hash, run_id, step_id, choice, recipient) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (hash) DO NOTHING",
                vec![text(&l.hash), text(&a.run), text(&a.step), text(&l.choice), text(&l.recipient)],
            ));
        }
    }
    rows
}

/// The parameters of each row a write inserts or updates.
fn params_of(w: &Write) -> Vec<Vec<Param>> {
    let item = |item: &Option<usize>| -> Param { Box::new(item.map_or(-1, |i| i.min(i32::MAX as usize) as i32)) };
    let count = |n: u32| -> Param { Box::new(n.min(i32::MAX as u32) as i32) };
    match w {
        Write::CreateRun { id, story, team, trigger, input, parent, idempotency_key, at_ms } => vec![vec![
            text(id),
            text(story),
            text(team),
            text(trigger),
            text(input),
            opt_text(&parent.as_ref().map(|p| p.0.clone())),
            opt_text(&parent.as_ref().map(|p| p.1.clone())),
            Box::new(i(*at_ms)),
            opt_text(idempotency_key),
        ]],
        Write::StartRun { id, at_ms } => vec![vec![text(id), Box::new(i(*at_ms))]],
        Write::NoteResume { id } | Write::NoteShutdown { id } => vec![vec![text(id)]],
        Write::Traced { run, trace_id, span_id } => vec![vec![text(run), text(trace_id), text(span_id)]],
        Write::FinishRun { id, state, output, error, failed_step, at_ms } => {
            vec![vec![text(id), text(state), opt_text(output), opt_text(error), opt_text(failed_step), Box::new(i(*at_ms))]]
        }
        Write::StepStarted { run, step, item: it, kind, input, attempt, at_ms } => {
            vec![vec![text(run), text(step), item(it), text(kind), opt_text(input), count(*attempt), Box::new(i(*at_ms))]]
        }
        Write::StepFinished { run, step, item: it, kind, state, output, error, attempts, at_ms } => {
            vec![vec![text(run), text(step), item(it), text(kind), text(state), opt_text(output), opt_text(error), count(*attempts), Box::new(i(*at_ms))]]
        }
        Write::Logs { run, step, lines } => {
            lines.iter().map(|l| vec![text(run), text(step), Box::new(i(l.at_ms)) as Param, text(l.level), text(l.source), text(&l.message)]).collect()
        }
        Write::Audit { run, step, records } => records.iter().map(|(at, r)| vec![text(run), text(step), Box::new(i(*at)) as Param, text(r)]).collect(),
        Write::Recording { run, step, item: it, attempt, truncated, recording } => {
            vec![vec![text(run), text(step), item(it), count(*attempt), Box::new(*truncated) as Param, text(recording)]]
        }
        Write::Park { .. } | Write::Remember { .. } => unreachable!("rows_of spells a park and a remember"),
    }
}

impl Store for PgStore {
    fn approvals(&self) -> Option<&dyn ApprovalStore> {
        Some(self)
    }

    fn apply(&self, batch: &[Write]) -> anyhow::Result<Vec<Result<(), Conflict>>> {
        let pool = self.pool.clone();
        let fence = self.fence_of(batch);
        let node = self.cluster.get().map(|m| m.node.clone());
        let batch_owned = batch.to_vec();
        let (answers, lost) = self.block(async move {
            let batch = batch_owned;
            let mut client = pool.get().await.map_err(|e| anyhow!("cannot connect to PostgreSQL: {e}"))?;
            let clustered = fence.is_some();
            // Runs another node took over: none of their writes are made.
            let mut lost = std::collections::HashSet::new();
            loop {
                let tx = client.transaction().await?;
                let mut answers: Vec<Result<(), Conflict>> = match &fence {
                    Some(fence) => (0..batch.len()).map(|n| fence.verdict(n, &lost)).collect(),
                    None => vec![Ok(()); batch.len()],
                };
                // Every row's statement with its parameters, in the batch's order.
                let mut rows: Vec<(usize, &'static str, Vec<Param>)> = Vec::new();
                for (n, w) in batch.iter().enumerate().filter(|(n, _)| answers[*n].is_ok()) {
                    for (sql, params) in rows_of(w, clustered) {
                        rows.push((n, sql, params));
                    }
                }
                let mut stmts = HashMap::new();
                for (_, sql, _) in &rows {
                    if !stmts.contains_key(sql) {
                        stmts.insert(*sql, tx.prepare_cached(sql).await?);
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
                let sent = rows.iter().map(|(n, sql, params)| {
                    let stmt = &stmts[sql];
                    let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
                        params.iter().map(|p| p.as_ref() as &(dyn tokio_postgres::types::ToSql + Sync)).collect();
                    let tx = &tx;
                    async move { (*n, *sql, tx.execute(stmt, &refs).await) }
                });
                // Other nodes may wait for a run's end: a slot of its story, or a caller's answer.
                let ends = clustered && batch.iter().zip(&answers).any(|(w, a)| a.is_ok() && matches!(w, Write::FinishRun { .. }));
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
                for (n, sql, result) in done {
                    match (result, &batch[n]) {
                        // ON CONFLICT DO NOTHING: no row means the key had its run.
                        (Ok(0), Write::CreateRun { story, .. }) => {
                            answers[n] = Err(Conflict(format!("story {story} already has a run for this Idempotency-Key")))
                        }
                        (Ok(0), Write::Remember { scope, .. }) if sql == REMEMBER_SQL => answers[n] = Err(Conflict(format!("{scope} saw this value before"))),
                        (Ok(_), _) => {}
                        (Err(e), w) => return Err(anyhow::Error::from(e).context(format!("{} of run {}", w.name(), w.run()))),
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

    fn last_schedule_tick(&self, story: &str) -> anyhow::Result<Option<u64>> {
        let (pool, story) = (self.pool.clone(), story.to_string());
        self.block(async move {
            let client = pool.get().await.map_err(|e| anyhow!("cannot connect to PostgreSQL: {e}"))?;
            let row = client
                .query_opt(
                    "SELECT idempotency_key FROM runs WHERE story = $1 AND trigger = 'schedule' AND idempotency_key IS NOT NULL ORDER BY created_ms DESC, id DESC LIMIT 1",
                    &[&t(&story)],
                )
                .await?;
            Ok(row.and_then(|r| tick_of(r.get::<_, &str>(0))))
        })
    }

    fn recordings(&self, run: &str) -> anyhow::Result<Vec<StoredRecording>> {
        let (pool, run) = (self.pool.clone(), run.to_string());
        self.block(async move {
            let client = pool.get().await.map_err(|e| anyhow!("cannot connect to PostgreSQL: {e}"))?;
            let rows = client.query("SELECT step_id, item, attempt, truncated, recording FROM recordings WHERE run_id = $1 ORDER BY seq", &[&t(&run)]).await?;
            Ok(rows
                .iter()
                .map(|r| {
                    let item: i32 = r.get(1);
                    let attempt: i32 = r.get(2);
                    StoredRecording {
                        step: r.get(0),
                        item: (item >= 0).then_some(item as usize),
                        attempt: attempt.max(0) as u32,
                        truncated: r.get(3),
                        recording: r.get(4),
                    }
                })
                .collect())
        })
    }

    fn cluster(&self) -> Option<&dyn Cluster> {
        self.cluster.get().map(|_| self as &dyn Cluster)
    }

    fn find_runs(&self, f: &RunFilter) -> anyhow::Result<Vec<RunSummary>> {
        let (sql, args) = f.listing_sql(&POSTGRES, SUMMARY);
        let args = owned_args(&args);
        let pool = self.pool.clone();
        self.block(async move {
            let client = pool.get().await.map_err(|e| anyhow!("cannot connect to PostgreSQL: {e}"))?;
            let stmt = client.prepare_cached(&sql).await?;
            let rows = client.query(&stmt, &pg_args(&args)).await?;
            Ok(rows.iter().map(summary).collect())
        })
    }

    fn count_runs(&self, f: &RunFilter) -> anyhow::Result<Vec<(String, u64)>> {
        let (sql, args) = f.counting_sql(&POSTGRES);
        let args = owned_args(&args);
        let pool = self.pool.clone();
        self.block(async move {
            let client = pool.get().await.map_err(|e| anyhow!("cannot connect to PostgreSQL: {e}"))?;
            let stmt = client.prepare_cached(&sql).await?;
            let rows = client.query(&stmt, &pg_args(&args)).await?;
            Ok(rows.iter().map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1) as u64)).collect())
        })
    }

    fn count_unfinished(&self) -> anyhow::Result<Vec<(String, u64)>> {
        let pool = self.pool.clone();
        self.block(async move {
            let client = pool.get().await.map_err(|e| anyhow!("cannot connect to PostgreSQL: {e}"))?;
            let rows = client.query(COUNT_UNFINISHED.as_str(), &[]).await?;
            Ok(rows.iter().map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1) as u64)).collect())
        })
    }

    fn run_by_idempotency_key(&self, story: &str, key: &str) -> anyhow::Result<Option<String>> {
        let (pool, story, key) = (self.pool.clone(), story.to_string(), key.to_string());
        self.block(async move {
            let client = pool.get().await.map_err(|e| anyhow!("cannot connect to PostgreSQL: {e}"))?;
            let row = client.query_opt("SELECT id FROM runs WHERE story = $1 AND idempotency_key = $2", &[&t(&story), &t(&key)]).await?;
            Ok(row.map(|r| r.get(0)))
        })
    }

    fn run_summary(&self, id: &str) -> anyhow::Result<Option<RunSummary>> {
        let (pool, id) = (self.pool.clone(), id.to_string());
        self.block(async move {
            let client = pool.get().await.map_err(|e| anyhow!("cannot connect to PostgreSQL: {e}"))?;
            Ok(client.query_opt(&format!("SELECT {SUMMARY} FROM runs WHERE id = $1"), &[&t(&id)]).await?.as_ref().map(summary))
        })
    }

    fn run_input(&self, id: &str) -> anyhow::Result<Option<(String, Value)>> {
        let (pool, id) = (self.pool.clone(), id.to_string());
        self.block(async move {
            let client = pool.get().await.map_err(|e| anyhow!("cannot connect to PostgreSQL: {e}"))?;
            let row = client.query_opt("SELECT story, input FROM runs WHERE id = $1", &[&t(&id)]).await?;
            Ok(row.map(|r| (r.get::<_, String>(0), serde_json::from_str(r.get::<_, &str>(1)).unwrap_or(Value::Null))))
        })
    }

    fn resumes(&self, id: &str) -> anyhow::Result<u32> {
        let (pool, id) = (self.pool.clone(), id.to_string());
        self.block(async move {
            let client = pool.get().await.map_err(|e| anyhow!("cannot connect to PostgreSQL: {e}"))?;
            let row = client.query_opt("SELECT resumes FROM runs WHERE id = $1", &[&t(&id)]).await?;
            Ok(row.map(|r| r.get::<_, i32>(0)).unwrap_or(0).max(0) as u32)
        })
    }

    fn runs_in_state(&self, state: &str) -> anyhow::Result<Vec<String>> {
        let (pool, state) = (self.pool.clone(), state.to_string());
        self.block(async move {
            let client = pool.get().await.map_err(|e| anyhow!("cannot connect to PostgreSQL: {e}"))?;
            let rows = client.query("SELECT id FROM runs WHERE state = $1 AND parent_run IS NULL ORDER BY created_ms, id", &[&t(&state)]).await?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
    }

    fn get_run(&self, id: &str) -> anyhow::Result<Option<RunDetail>> {
        let (pool, id) = (self.pool.clone(), id.to_string());
        self.block(async move {
            let mut client = pool.get().await.map_err(|e| anyhow!("cannot connect to PostgreSQL: {e}"))?;
            // One snapshot for the run and its parts.
            let tx = client.build_transaction().isolation_level(tokio_postgres::IsolationLevel::RepeatableRead).read_only(true).start().await?;
            let Some(row) = tx.query_opt(&format!("SELECT {SUMMARY}, input, output FROM runs WHERE id = $1"), &[&t(&id)]).await? else {
                return Ok(None);
            };
            let json = |s: Option<String>| s.and_then(|s| serde_json::from_str(&s).ok());
            let steps = tx
                .query("SELECT * FROM steps WHERE run_id = $1 ORDER BY seq", &[&t(&id)])
                .await?
                .iter()
                .map(|r| {
                    let item: i32 = r.get("item");
                    StepRecord {
                        step_id: r.get("step_id"),
                        item: (item >= 0).then_some(item as u32),
                        kind: r.get("kind"),
                        state: r.get("state"),
                        input: json(r.get("input")),
                        output: json(r.get("output")),
                        error: json(r.get("error")),
                        attempts: r.get::<_, i32>("attempts") as u32,
                        started_ms: r.get::<_, Option<i64>>("started_ms").map(|v| v as u64),
                        finished_ms: r.get::<_, Option<i64>>("finished_ms").map(|v| v as u64),
                    }
                })
                .collect();
            let logs = tx
                .query("SELECT step_id, at_ms, level, source, message FROM logs WHERE run_id = $1 ORDER BY seq", &[&t(&id)])
                .await?
                .iter()
                .map(|r| LogRecord { step_id: r.get(0), at_ms: r.get::<_, i64>(1) as u64, level: r.get(2), source: r.get(3), message: r.get(4) })
                .collect();
            let audit = tx
                .query("SELECT record FROM audit WHERE run_id = $1 ORDER BY seq", &[&t(&id)])
                .await?
                .iter()
                .filter_map(|r| serde_json::from_str(r.get::<_, &str>(0)).ok())
                .collect();
            let children =
                tx.query(&format!("SELECT {SUMMARY} FROM runs WHERE parent_run = $1 ORDER BY created_ms, id"), &[&t(&id)]).await?.iter().map(summary).collect();
            tx.commit().await?;
            Ok(Some(RunDetail {
                run: summary(&row),
                input: serde_json::from_str(row.get::<_, &str>("input")).unwrap_or(Value::Null),
                output: json(row.get("output")),
                steps,
                logs,
                audit,
                children,
            }))
        })
    }
}

const APPROVAL: &str = "run_id, step_id, root_run, story, team, title, details, choices, approvers, created_ms, deadline_ms, on_timeout, state, choice, decided_by, via, decided_from, comment, decided_ms";

fn approval_row(r: &tokio_postgres::Row) -> crate::approval::Approval {
    let list = |i: usize| -> Vec<String> { serde_json::from_str(r.get::<_, &str>(i)).unwrap_or_default() };
    let decision = r.get::<_, Option<String>>(14).map(|decided_by| crate::approval::Decision {
        choice: r.get(13),
        decided_by,
        via: r.get::<_, Option<String>>(15).unwrap_or_default(),
        from: r.get(16),
        comment: r.get(17),
        decided_ms: r.get::<_, Option<i64>>(18).unwrap_or(0).max(0) as u64,
    });
    crate::approval::Approval {
        run: r.get(0),
        step: r.get(1),
        root_run: r.get(2),
        story: r.get(3),
        team: r.get(4),
        title: r.get(5),
        details: serde_json::from_str(r.get::<_, &str>(6)).unwrap_or(Value::Null),
        choices: list(7),
        approvers: list(8),
        created_ms: r.get::<_, i64>(9).max(0) as u64,
        deadline_ms: r.get::<_, i64>(10).max(0) as u64,
        on_timeout: r.get(11),
        state: r.get(12),
        decision,
    }
}

impl PgStore {
    async fn approval_on(client: &impl deadpool_postgres::GenericClient, run: &str, step: &str) -> anyhow::Result<Option<crate::approval::Approval>> {
        let row = client.query_opt(&format!("SELECT {APPROVAL} FROM approvals WHERE run_id = $1 AND step_id = $2"), &[&t(run), &t(step)]).await?;
        Ok(row.as_ref().map(approval_row))
    }
}

impl ApprovalStore for PgStore {
    fn key_salt(&self) -> anyhow::Result<[u8; 32]> {
        let mut fresh = [0u8; 32];
        getrandom::fill(&mut fresh).map_err(|e| anyhow!("no randomness for the approval link salt: {e}"))?;
        let pool = self.pool.clone();
        self.block(async move {
            let client = pool.get().await.map_err(|e| anyhow!("cannot connect to PostgreSQL: {e}"))?;
            client
                .execute("INSERT INTO warden_keys (name, value) VALUES ('approval-links-salt', $1) ON CONFLICT (name) DO NOTHING", &[&fresh.as_slice()])
                .await?;
            let salt: Vec<u8> = client.query_one("SELECT value FROM warden_keys WHERE name = 'approval-links-salt'", &[]).await?.get(0);
            salt.try_into().map_err(|_| anyhow!("the run store's approval link salt is damaged (not 32 bytes)"))
        })
    }

    /// Every node must derive the same key: no secret of one node's own.
    fn local_secret(&self) -> anyhow::Result<Option<crate::policy::credentials::Secret>> {
        Ok(None)
    }

    fn approval(&self, run: &str, step: &str) -> anyhow::Result<Option<crate::approval::Approval>> {
        let (pool, run, step) = (self.pool.clone(), run.to_string(), step.to_string());
        self.block(async move {
            let client = pool.get().await.map_err(|e| anyhow!("cannot connect to PostgreSQL: {e}"))?;
            PgStore::approval_on(&client, &run, &step).await
        })
    }

    fn approval_by_link(&self, hash: &str) -> anyhow::Result<Option<(crate::approval::Approval, crate::approval::Link)>> {
        let (pool, hash) = (self.pool.clone(), hash.to_string());
        self.block(async move {
            let client = pool.get().await.map_err(|e| anyhow!("cannot connect to PostgreSQL: {e}"))?;
            let Some(row) = client.query_opt("SELECT run_id, step_id, choice, recipient FROM approval_links WHERE hash = $1", &[&t(&hash)]).await? else {
                return Ok(None);
            };
            let link = crate::approval::Link { hash: hash.clone(), choice: row.get(2), recipient: row.get(3) };
            Ok(PgStore::approval_on(&client, row.get(0), row.get(1)).await?.map(|a| (a, link)))
        })
    }

    fn list_approvals(&self, f: &ApprovalFilter) -> anyhow::Result<Vec<crate::approval::Approval>> {
        let pool = self.pool.clone();
        let (team, story, limit) = (f.team.map(String::from), f.story.map(String::from), f.limit.min(i64::MAX as usize) as i64);
        // Pending only through the partial index of pending approvals (see the SQLite store).
        let which = if f.all { "TRUE" } else { "state = 'pending'" };
        self.block(async move {
            let client = pool.get().await.map_err(|e| anyhow!("cannot connect to PostgreSQL: {e}"))?;
            let sql = format!(
                "SELECT {APPROVAL} FROM approvals WHERE {which} AND ($1::text IS NULL OR team = $1) AND ($2::text IS NULL OR story = $2) ORDER BY created_ms, run_id LIMIT $3"
            );
            Ok(client.query(&sql, &[&team, &story, &limit]).await?.iter().map(approval_row).collect())
        })
    }

    fn decide(&self, run: &str, step: &str, d: &crate::approval::Decision) -> anyhow::Result<crate::approval::Decided> {
        let (pool, run, step, d) = (self.pool.clone(), run.to_string(), step.to_string(), d.clone());
        self.block(async move {
            let mut client = pool.get().await.map_err(|e| anyhow!("cannot connect to PostgreSQL: {e}"))?;
            let tx = client.transaction().await?;
            let state = if d.choice.is_some() { "decided" } else { "expired" };
            let changed = tx
                .execute(
                    "UPDATE approvals SET state = $3, choice = $4, decided_by = $5, via = $6, decided_from = $7, comment = $8, decided_ms = $9
                     WHERE run_id = $1 AND step_id = $2 AND state = 'pending'",
                    &[
                        &t(&run),
                        &t(&step),
                        &state,
                        &d.choice.as_deref().map(t),
                        &t(&d.decided_by),
                        &t(&d.via),
                        &d.from.as_deref().map(t),
                        &d.comment.as_deref().map(t),
                        &i(d.decided_ms),
                    ],
                )
                .await?;
            if changed == 1 {
                tx.execute(
                    "INSERT INTO audit (run_id, step_id, at_ms, record) VALUES ($1, $2, $3, $4)",
                    &[&t(&run), &t(&step), &i(d.decided_ms), &t(&decision_audit(&step, &d))],
                )
                .await?;
            }
            let now = PgStore::approval_on(&tx, &run, &step).await?;
            tx.commit().await?;
            Ok(match (changed, now) {
                (1, Some(a)) => Ok(a),
                (_, Some(a)) => Err(crate::approval::Refused::Over(a)),
                (_, None) => Err(crate::approval::Refused::Unknown(format!("run {run} has no approval step `{step}` waiting"))),
            })
        })
    }

    fn due_approvals(&self, now_ms: u64, limit: usize) -> anyhow::Result<Vec<crate::approval::Approval>> {
        let (pool, now, limit) = (self.pool.clone(), i(now_ms), limit.min(i64::MAX as usize) as i64);
        self.block(async move {
            let client = pool.get().await.map_err(|e| anyhow!("cannot connect to PostgreSQL: {e}"))?;
            let sql = format!("SELECT {APPROVAL} FROM approvals WHERE state = 'pending' AND deadline_ms <= $1 ORDER BY deadline_ms LIMIT $2");
            Ok(client.query(&sql, &[&now, &limit]).await?.iter().map(approval_row).collect())
        })
    }

    fn runs_to_wake(&self, limit: usize) -> anyhow::Result<Vec<String>> {
        let (pool, limit) = (self.pool.clone(), limit.min(i64::MAX as usize) as i64);
        self.block(async move {
            let client = pool.get().await.map_err(|e| anyhow!("cannot connect to PostgreSQL: {e}"))?;
            let rows = client.query("SELECT DISTINCT root_run FROM approvals WHERE NOT resumed AND state <> 'pending' LIMIT $1", &[&limit]).await?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
    }

    fn wake(&self, root: &str) -> anyhow::Result<bool> {
        let (pool, root) = (self.pool.clone(), root.to_string());
        self.block(async move {
            let mut client = pool.get().await.map_err(|e| anyhow!("cannot connect to PostgreSQL: {e}"))?;
            let tx = client.transaction().await?;
            // Lease cleared: whichever node has room claims it as an interrupted run and resumes it.
            let woke = tx
                .execute("UPDATE runs SET state = 'running', lease_owner = NULL, lease_until_ms = NULL WHERE id = $1 AND state = 'waiting'", &[&t(&root)])
                .await?
                == 1;
            tx.execute("UPDATE approvals SET resumed = TRUE WHERE root_run = $1 AND NOT resumed AND state <> 'pending'", &[&t(&root)]).await?;
            tx.commit().await?;
            Ok(woke)
        })
    }
}
