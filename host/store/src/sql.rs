//! The run store's SQL, written once for both stores.
//!
//! Three layers, so that a new write, column or read is spelt in one place:
//!
//! - **Vocabulary** — [`statements`] turns each [`Write`] into the statements
//!   that keep it, with their arguments ([`Arg`]) and what a statement that
//!   touched no row means (a [`Conflict`]); the reads below are the statements
//!   the server, the CLI and the engine read with. Every statement is written
//!   with PostgreSQL's `$n` placeholders; [`lite`] turns them into SQLite's
//!   `?n` (a `$n` in SQLite is a *named* parameter, numbered in order of first
//!   use — `trace_id = $2 … id = $1` would bind the wrong values).
//! - **Dialect** — the few places where the stores differ are data
//!   ([`Dialect`]): the column that orders a run's parts, the planner hint on
//!   `state`, and whether runs carry cluster leases (PostgreSQL only).
//! - **Execution** — each store implements [`Db`] (run a statement, read its
//!   rows as dialect-free [`Row`]s) and its own transactions and pipelining;
//!   the reads here run on either. What the stores keep apart is only what
//!   really differs: connections, transactions, the PostgreSQL cluster queue
//!   (`postgres/cluster.rs`) and each dialect's migrations (one list each,
//!   checked against each other by `both_stores_keep_the_same_tables_and_columns`).

use super::*;
use std::borrow::Cow;
use std::sync::{Arc, OnceLock};

/// Where the two dialects differ in the statements both run.
pub(crate) struct Dialect {
    /// SQLite's `+state` keeps its planner off the state index, which would
    /// read every run in that state to sort them.
    pub state: &'static str,
    /// The column that breaks ties in creation time between runs.
    pub tiebreak: &'static str,
    /// The column that keeps a run's parts (steps, logs, audit, recordings)
    /// in the order they were written.
    pub order: &'static str,
    /// Runs carry a lease (PostgreSQL, whose nodes share a queue): a new run
    /// is reserved for the node that took it, a woken run's lease is cleared.
    pub leases: bool,
    /// An approval not resumed yet, spelt as its partial index is
    /// (`approvals_to_wake`), so that each planner uses it.
    pub unresumed: &'static str,
}

pub(crate) const SQLITE: Dialect = Dialect { state: "+state", tiebreak: "rowid", order: "rowid", leases: false, unresumed: "resumed = 0" };
pub(crate) const POSTGRES: Dialect = Dialect { state: "state", tiebreak: "id", order: "seq", leases: true, unresumed: "NOT resumed" };

/// A value bound to a placeholder. Owned, to cross into the PostgreSQL
/// store's runtime. PostgreSQL types its parameters by column: `Int` for an
/// `INTEGER` column, `BigInt` for a `BIGINT` one (and for `LIMIT`); SQLite
/// takes either as its integer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Arg {
    Text(String),
    MaybeText(Option<String>),
    Int(i32),
    BigInt(i64),
    Bool(bool),
    Bytes(Vec<u8>),
}

fn text(s: &str) -> Arg {
    Arg::Text(s.to_string())
}

fn maybe(s: Option<&str>) -> Arg {
    Arg::MaybeText(s.map(String::from))
}

/// Milliseconds and other counts kept as `BIGINT`.
fn big(v: u64) -> Arg {
    Arg::BigInt(v.min(i64::MAX as u64) as i64)
}

/// A `for_each` item's position as kept (`-1`: the step as a whole).
fn item(item: Option<usize>) -> Arg {
    Arg::Int(item.map_or(-1, |i| i.min(i32::MAX as usize) as i32))
}

fn count(n: u32) -> Arg {
    Arg::Int(n.min(i32::MAX as u32) as i32)
}

/// `sql` with SQLite's placeholders (`$3` → `?3`): a scan of the text, cheap
/// beside the statement (whose prepared form SQLite's cache keeps).
pub(crate) fn lite(sql: &str) -> Cow<'_, str> {
    if !sql.contains('$') {
        return Cow::Borrowed(sql);
    }
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        out.push(if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) { '?' } else { c });
    }
    Cow::Owned(out)
}

/// A write's statement in both dialects: written once with `$n`; SQLite's
/// `?n` spelling is made the first time it is needed and kept (the writer
/// runs these for every run: translating each time would allocate on its path).
pub(crate) struct Sql {
    pub pg: &'static str,
    sqlite: OnceLock<String>,
}

impl Sql {
    const fn new(pg: &'static str) -> Sql {
        Sql { pg, sqlite: OnceLock::new() }
    }

    pub fn sqlite(&self) -> &str {
        self.sqlite.get_or_init(|| lite(self.pg).into_owned())
    }
}

/// A statement of the write vocabulary, as a `static` [`Sql`] of its own.
macro_rules! sql {
    ($text:expr) => {{
        static SQL: Sql = Sql::new($text);
        &SQL
    }};
}

/// One statement of a write, with its arguments.
pub(crate) struct Stmt {
    pub sql: &'static Sql,
    pub args: Vec<Arg>,
    /// What it means when the statement touched no row: a conflict the
    /// caller is told of (and the batch goes on), or nothing (`None`).
    pub none_means: Option<Conflict>,
}

impl Stmt {
    fn new(sql: &'static Sql, args: Vec<Arg>) -> Stmt {
        Stmt { sql, args, none_means: None }
    }
}

/// How a new run is inserted: outside a cluster it is the inserting
/// process's alone; in one it is reserved for a moment for the node that
/// accepted it (it claims it, or offers it to the others at once); should that
/// node die first, the reservation lapses and any node claims it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Placement {
    /// SQLite: no leases.
    Unleased,
    /// PostgreSQL outside a cluster (`warden story run` on a shared
    /// database): no serving node ever claims it.
    Local,
    /// PostgreSQL, a node of a cluster.
    Clustered,
}

static CREATE_RUN: Sql = Sql::new(
    "INSERT INTO runs (id, story, team, state, trigger, input, parent_run, parent_step, created_ms, idempotency_key)
     VALUES ($1, $2, $3, 'queued', $4, $5, $6, $7, $8, $9)
     ON CONFLICT (story, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING",
);
static CREATE_RUN_LOCAL: Sql = Sql::new(
    "INSERT INTO runs (id, story, team, state, trigger, input, parent_run, parent_step, created_ms, idempotency_key, lease_owner, lease_until_ms)
     VALUES ($1, $2, $3, 'queued', $4, $5, $6, $7, $8, $9, 'local', 9223372036854775807)
     ON CONFLICT (story, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING",
);
static CREATE_RUN_CLUSTERED: Sql = Sql::new(
    "INSERT INTO runs (id, story, team, state, trigger, input, parent_run, parent_step, created_ms, idempotency_key, lease_until_ms)
     VALUES ($1, $2, $3, 'queued', $4, $5, $6, $7, $8, $9, (extract(epoch from clock_timestamp()) * 1000)::bigint + 1000)
     ON CONFLICT (story, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING",
);

/// The statements that keep `w`, in order.
pub(crate) fn statements(w: &Write, placement: Placement) -> Vec<Stmt> {
    match w {
        Write::CreateRun { id, story, team, trigger, input, parent, idempotency_key, at_ms } => {
            let sql = match placement {
                Placement::Unleased => &CREATE_RUN,
                Placement::Local => &CREATE_RUN_LOCAL,
                Placement::Clustered => &CREATE_RUN_CLUSTERED,
            };
            let args = vec![
                text(id),
                text(story),
                text(team),
                text(trigger),
                text(input),
                maybe(parent.as_ref().map(|p| p.0.as_str())),
                maybe(parent.as_ref().map(|p| p.1.as_str())),
                big(*at_ms),
                maybe(idempotency_key.as_deref()),
            ];
            // ON CONFLICT DO NOTHING: no row means the key had its run.
            vec![Stmt { sql, args, none_means: Some(Conflict(format!("story {story} already has a run for this Idempotency-Key"))) }]
        }
        Write::StartRun { id, at_ms } => {
            vec![Stmt::new(sql!("UPDATE runs SET state = 'running', started_ms = COALESCE(started_ms, $2) WHERE id = $1"), vec![text(id), big(*at_ms)])]
        }
        Write::Traced { run, trace_id, span_id } => {
            vec![Stmt::new(sql!("UPDATE runs SET trace_id = $2, trace_span = $3 WHERE id = $1"), vec![text(run), text(trace_id), text(span_id)])]
        }
        Write::NoteResume { id } => vec![Stmt::new(sql!("UPDATE runs SET resumes = resumes + 1 WHERE id = $1"), vec![text(id)])],
        Write::NoteShutdown { id } => vec![Stmt::new(sql!("UPDATE runs SET resumes = 0 WHERE id = $1"), vec![text(id)])],
        Write::FinishRun { id, state, output, error, failed_step, at_ms } => vec![Stmt::new(
            sql!("UPDATE runs SET state = $2, output = $3, error = $4, failed_step = $5, finished_ms = $6, resumes = 0 WHERE id = $1"),
            vec![text(id), text(state), maybe(output.as_deref()), maybe(error.as_deref()), maybe(failed_step.as_deref()), big(*at_ms)],
        )],
        Write::StepStarted { run, step, item: it, kind, input, attempt, at_ms } => vec![Stmt::new(
            sql!("INSERT INTO steps (run_id, step_id, item, kind, state, input, attempts, started_ms) VALUES ($1, $2, $3, $4, 'running', $5, $6, $7)
             ON CONFLICT (run_id, step_id, item) DO UPDATE SET state = 'running', input = COALESCE(excluded.input, steps.input), attempts = excluded.attempts"),
            vec![text(run), text(step), item(*it), text(kind), maybe(input.as_deref()), count(*attempt), big(*at_ms)],
        )],
        Write::StepFinished { run, step, item: it, kind, state, output, error, attempts, at_ms } => vec![Stmt::new(
            sql!("INSERT INTO steps (run_id, step_id, item, kind, state, output, error, attempts, started_ms, finished_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)
             ON CONFLICT (run_id, step_id, item) DO UPDATE SET state = excluded.state, output = excluded.output, error = excluded.error,
             attempts = CASE WHEN steps.attempts > excluded.attempts THEN steps.attempts ELSE excluded.attempts END, finished_ms = excluded.finished_ms"),
            vec![
                text(run),
                text(step),
                item(*it),
                text(kind),
                text(state),
                maybe(output.as_deref()),
                maybe(error.as_deref()),
                count(*attempts),
                big(*at_ms),
            ],
        )],
        Write::Logs { run, step, lines } => lines
            .iter()
            .map(|l| {
                Stmt::new(
                    sql!("INSERT INTO logs (run_id, step_id, at_ms, level, source, message) VALUES ($1, $2, $3, $4, $5, $6)"),
                    vec![text(run), text(step), big(l.at_ms), text(l.level), text(l.source), text(&l.message)],
                )
            })
            .collect(),
        Write::Audit { run, step, records } => records.iter().map(|(at, record)| Stmt::new(&ADD_AUDIT, vec![text(run), text(step), big(*at), text(record)])).collect(),
        Write::Recording { run, step, item: it, attempt, truncated, recording } => vec![Stmt::new(
            sql!("INSERT INTO recordings (run_id, step_id, item, attempt, truncated, recording) VALUES ($1, $2, $3, $4, $5, $6)"),
            vec![text(run), text(step), item(*it), count(*attempt), Arg::Bool(*truncated), text(recording)],
        )],
        Write::Park { run, step, kind, approval, at_ms } => {
            let mut out = vec![
                Stmt::new(
                    sql!("INSERT INTO steps (run_id, step_id, item, kind, state, attempts, started_ms) VALUES ($1, $2, -1, $3, 'waiting', 1, $4)
                     ON CONFLICT (run_id, step_id, item) DO UPDATE SET state = 'waiting', finished_ms = NULL"),
                    vec![text(run), text(step), text(kind), big(*at_ms)],
                ),
                Stmt::new(sql!("UPDATE runs SET state = 'waiting', started_ms = COALESCE(started_ms, $2) WHERE id = $1"), vec![text(run), big(*at_ms)]),
            ];
            // Once: a run parked again at the same approval keeps the first.
            if let Some(pair) = approval {
                let (a, links) = pair.as_ref();
                out.push(Stmt::new(
                    sql!("INSERT INTO approvals (run_id, step_id, root_run, story, team, title, details, choices, approvers, created_ms, deadline_ms, on_timeout, state, choice_marks)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 'pending', $13) ON CONFLICT (run_id, step_id) DO NOTHING"),
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
                        big(a.created_ms),
                        big(a.deadline_ms),
                        maybe(a.on_timeout.as_deref()),
                        text(&serde_json::json!({"danger": a.danger, "confirm": a.confirm}).to_string()),
                    ],
                ));
                for l in links {
                    out.push(Stmt::new(
                        sql!("INSERT INTO approval_links (hash, run_id, step_id, choice, recipient) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (hash) DO NOTHING"),
                        vec![text(&l.hash), text(&a.run), text(&a.step), text(&l.choice), text(&l.recipient)],
                    ));
                }
            }
            out
        }
        Write::Remember { scope, value, lookback, .. } => vec![
            // No row inserted: the value was kept already.
            Stmt {
                sql: sql!("INSERT INTO dedupe (scope, value, seq) SELECT $1, $2, COALESCE(MAX(seq), 0) + 1 FROM dedupe WHERE scope = $1 ON CONFLICT (scope, value) DO NOTHING"),
                args: vec![text(scope), text(value)],
                none_means: Some(Conflict(format!("{scope} saw this value before"))),
            },
            Stmt::new(sql!("DELETE FROM dedupe WHERE scope = $1 AND seq <= (SELECT MAX(seq) FROM dedupe WHERE scope = $1) - $2"), vec![text(scope), big(*lookback)]),
        ],
    }
}

static ADD_AUDIT: Sql = Sql::new("INSERT INTO audit (run_id, step_id, at_ms, record) VALUES ($1, $2, $3, $4)");

// ---------------------------------------------------------------------------
// Reading: rows without a dialect, and the statements both stores read with.

/// One cell of a row read back.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Cell {
    Null,
    Int(i64),
    Text(String),
    Bool(bool),
    Bytes(Vec<u8>),
}

/// A row read back, its cells by column name. A column missing or of another
/// type than asked is an error naming it, never a panic.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub columns: Arc<[String]>,
    pub cells: Vec<Cell>,
}

impl Row {
    fn cell(&self, name: &str) -> anyhow::Result<&Cell> {
        self.columns.iter().position(|c| c == name).map(|i| &self.cells[i]).ok_or_else(|| anyhow::anyhow!("the run store's row has no column {name}"))
    }

    /// Names the kind of value found, never the value: a stored input or
    /// output may be large, and is not a message's to repeat.
    fn wrong(name: &str, want: &str, got: &Cell) -> anyhow::Error {
        let found = match got {
            Cell::Null => "nothing",
            Cell::Int(_) => "an integer",
            Cell::Text(_) => "text",
            Cell::Bool(_) => "a boolean",
            Cell::Bytes(_) => "bytes",
        };
        anyhow::anyhow!("the run store's column {name} holds {found}, not {want}")
    }

    pub fn text(&self, name: &str) -> anyhow::Result<String> {
        self.opt_text(name)?.ok_or_else(|| anyhow::anyhow!("the run store's column {name} is empty"))
    }

    pub fn opt_text(&self, name: &str) -> anyhow::Result<Option<String>> {
        match self.cell(name)? {
            Cell::Null => Ok(None),
            Cell::Text(s) => Ok(Some(s.clone())),
            other => Err(Row::wrong(name, "text", other)),
        }
    }

    pub fn opt_int(&self, name: &str) -> anyhow::Result<Option<i64>> {
        match self.cell(name)? {
            Cell::Null => Ok(None),
            Cell::Int(i) => Ok(Some(*i)),
            other => Err(Row::wrong(name, "an integer", other)),
        }
    }

    pub fn int(&self, name: &str) -> anyhow::Result<i64> {
        self.opt_int(name)?.ok_or_else(|| anyhow::anyhow!("the run store's column {name} is empty"))
    }

    /// A count or time as kept (never negative in a sound store).
    pub fn u64(&self, name: &str) -> anyhow::Result<u64> {
        Ok(self.int(name)?.max(0) as u64)
    }

    pub fn opt_u64(&self, name: &str) -> anyhow::Result<Option<u64>> {
        Ok(self.opt_int(name)?.map(|v| v.max(0) as u64))
    }

    /// SQLite keeps a boolean as an integer.
    pub fn bool(&self, name: &str) -> anyhow::Result<bool> {
        match self.cell(name)? {
            Cell::Bool(b) => Ok(*b),
            Cell::Int(i) => Ok(*i != 0),
            other => Err(Row::wrong(name, "a boolean", other)),
        }
    }

    pub fn bytes(&self, name: &str) -> anyhow::Result<Vec<u8>> {
        match self.cell(name)? {
            Cell::Bytes(b) => Ok(b.clone()),
            other => Err(Row::wrong(name, "bytes", other)),
        }
    }

    /// A JSON column: text that does not parse reads as `None`.
    fn json(&self, name: &str) -> anyhow::Result<Option<Value>> {
        Ok(self.opt_text(name)?.and_then(|s| serde_json::from_str(&s).ok()))
    }
}

/// What a store runs the shared statements on: a connection or a transaction.
/// `sql` is written with `$n` placeholders (see [`lite`]).
#[allow(async_fn_in_trait)]
pub(crate) trait Db {
    fn dialect(&self) -> &'static Dialect;
    async fn rows(&self, sql: &str, args: &[Arg]) -> anyhow::Result<Vec<Row>>;
    async fn exec(&self, sql: &str, args: &[Arg]) -> anyhow::Result<u64>;

    async fn row(&self, sql: &str, args: &[Arg]) -> anyhow::Result<Option<Row>> {
        Ok(self.rows(sql, args).await?.into_iter().next())
    }
}

/// The columns of a [`RunSummary`].
pub(crate) const SUMMARY: &str =
    "id, story, team, state, trigger, error, failed_step, parent_run, parent_step, created_ms, started_ms, finished_ms, trace_id, trace_span";

fn summary(r: &Row) -> anyhow::Result<RunSummary> {
    Ok(RunSummary {
        id: r.text("id")?,
        story: r.text("story")?,
        team: r.text("team")?,
        state: r.text("state")?,
        trigger: r.text("trigger")?,
        error: r.opt_text("error")?,
        failed_step: r.opt_text("failed_step")?,
        parent_run: r.opt_text("parent_run")?,
        parent_step: r.opt_text("parent_step")?,
        created_ms: r.u64("created_ms")?,
        started_ms: r.opt_u64("started_ms")?,
        finished_ms: r.opt_u64("finished_ms")?,
        trace_id: r.opt_text("trace_id")?,
        trace_span: r.opt_text("trace_span")?,
    })
}

fn all<T>(rows: Vec<Row>, decode: impl Fn(&Row) -> anyhow::Result<T>) -> anyhow::Result<Vec<T>> {
    rows.iter().map(decode).collect()
}

fn filter_args(args: &[FilterArg]) -> Vec<Arg> {
    args.iter()
        .map(|a| match a {
            FilterArg::Text(s) => text(s),
            FilterArg::Int(i) => Arg::BigInt(*i),
        })
        .collect()
}

pub(crate) async fn find_runs(db: &impl Db, f: &RunFilter<'_>) -> anyhow::Result<Vec<RunSummary>> {
    let (sql, args) = f.listing_sql(db.dialect(), SUMMARY);
    all(db.rows(&sql, &filter_args(&args)).await?, summary)
}

fn state_counts(rows: Vec<Row>) -> anyhow::Result<Vec<(String, u64)>> {
    rows.iter().map(|r| Ok((r.text("state")?, r.u64("n")?))).collect()
}

pub(crate) async fn count_runs(db: &impl Db, f: &RunFilter<'_>) -> anyhow::Result<Vec<(String, u64)>> {
    let (sql, args) = f.counting_sql(db.dialect());
    state_counts(db.rows(&sql, &filter_args(&args)).await?)
}

/// [`RunStore::count_unfinished`]: the `IN` list of [`UNFINISHED_STATES`] lets
/// each store use its index on `state` and never read a finished run.
pub(crate) static COUNT_UNFINISHED: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let states: Vec<String> = UNFINISHED_STATES.iter().map(|s| format!("'{s}'")).collect();
    format!("SELECT state, COUNT(*) AS n FROM runs WHERE state IN ({}) AND parent_run IS NULL GROUP BY state ORDER BY state", states.join(", "))
});

pub(crate) async fn count_unfinished(db: &impl Db) -> anyhow::Result<Vec<(String, u64)>> {
    state_counts(db.rows(&COUNT_UNFINISHED, &[]).await?)
}

pub(crate) async fn run_by_idempotency_key(db: &impl Db, story: &str, key: &str) -> anyhow::Result<Option<String>> {
    db.row("SELECT id FROM runs WHERE story = $1 AND idempotency_key = $2", &[text(story), text(key)]).await?.map(|r| r.text("id")).transpose()
}

/// A scheduled story's latest tick (`runs_schedule_ticks`: only scheduled runs are in it).
pub(crate) fn last_tick_sql(d: &Dialect) -> String {
    format!(
        "SELECT idempotency_key FROM runs WHERE story = $1 AND trigger = 'schedule' AND idempotency_key IS NOT NULL ORDER BY created_ms DESC, {} DESC LIMIT 1",
        d.tiebreak
    )
}

pub(crate) async fn last_schedule_tick(db: &impl Db, story: &str) -> anyhow::Result<Option<u64>> {
    Ok(db.row(&last_tick_sql(db.dialect()), &[text(story)]).await?.map(|r| r.text("idempotency_key")).transpose()?.as_deref().and_then(tick_of))
}

pub(crate) async fn recordings(db: &impl Db, run: &str) -> anyhow::Result<Vec<StoredRecording>> {
    let sql = format!("SELECT step_id, item, attempt, truncated, recording FROM recordings WHERE run_id = $1 ORDER BY {}", db.dialect().order);
    all(db.rows(&sql, &[text(run)]).await?, |r| {
        let item = r.int("item")?;
        Ok(StoredRecording {
            step: r.text("step_id")?,
            item: (item >= 0).then_some(item as usize),
            attempt: r.u64("attempt")?.min(u32::MAX as u64) as u32,
            truncated: r.bool("truncated")?,
            recording: r.text("recording")?,
        })
    })
}

pub(crate) async fn run_summary(db: &impl Db, id: &str) -> anyhow::Result<Option<RunSummary>> {
    db.row(&format!("SELECT {SUMMARY} FROM runs WHERE id = $1"), &[text(id)]).await?.as_ref().map(summary).transpose()
}

/// The story and input of a run, to execute it (e.g. after a restart).
pub(crate) async fn run_input(db: &impl Db, id: &str) -> anyhow::Result<Option<(String, Value)>> {
    let Some(r) = db.row("SELECT story, input FROM runs WHERE id = $1", &[text(id)]).await? else { return Ok(None) };
    Ok(Some((r.text("story")?, r.json("input")?.unwrap_or(Value::Null))))
}

pub(crate) async fn resumes(db: &impl Db, id: &str) -> anyhow::Result<u32> {
    let n = db.row("SELECT resumes FROM runs WHERE id = $1", &[text(id)]).await?.map(|r| r.int("resumes")).transpose()?;
    Ok(n.unwrap_or(0).clamp(0, u32::MAX as i64) as u32)
}

pub(crate) async fn runs_in_state(db: &impl Db, state: &str) -> anyhow::Result<Vec<String>> {
    let sql = format!("SELECT id FROM runs WHERE state = $1 AND parent_run IS NULL ORDER BY created_ms, {}", db.dialect().tiebreak);
    all(db.rows(&sql, &[text(state)]).await?, |r| r.text("id"))
}

/// A run's sub-story runs (`runs_by_parent`: only sub-story runs are in it).
pub(crate) fn children_sql(d: &Dialect) -> String {
    format!("SELECT {SUMMARY} FROM runs WHERE parent_run = $1 ORDER BY created_ms, {}", d.tiebreak)
}

/// A run with its parts. The caller runs it in one snapshot (a read
/// transaction), so the parts agree with the run.
pub(crate) async fn run_detail(db: &impl Db, id: &str) -> anyhow::Result<Option<RunDetail>> {
    let Some(row) = db.row(&format!("SELECT {SUMMARY}, input, output FROM runs WHERE id = $1"), &[text(id)]).await? else { return Ok(None) };
    let order = db.dialect().order;
    let this = [text(id)];
    let steps_sql =
        format!("SELECT step_id, item, kind, state, input, output, error, attempts, started_ms, finished_ms FROM steps WHERE run_id = $1 ORDER BY {order}");
    let steps = db.rows(&steps_sql, &this);
    let steps = all(steps.await?, |r| {
        let item = r.int("item")?;
        Ok(StepRecord {
            step_id: r.text("step_id")?,
            item: (item >= 0).then_some(item as u32),
            kind: r.text("kind")?,
            state: r.text("state")?,
            input: r.json("input")?,
            output: r.json("output")?,
            error: r.json("error")?,
            attempts: r.u64("attempts")?.min(u32::MAX as u64) as u32,
            started_ms: r.opt_u64("started_ms")?,
            finished_ms: r.opt_u64("finished_ms")?,
        })
    })?;
    let logs_sql = format!("SELECT step_id, at_ms, level, source, message FROM logs WHERE run_id = $1 ORDER BY {order}");
    let logs = all(db.rows(&logs_sql, &this).await?, |r| {
        Ok(LogRecord { step_id: r.text("step_id")?, at_ms: r.u64("at_ms")?, level: r.text("level")?, source: r.text("source")?, message: r.text("message")? })
    })?;
    let audit = db.rows(&format!("SELECT record FROM audit WHERE run_id = $1 ORDER BY {order}"), &[text(id)]).await?;
    let audit = all(audit, |r| r.json("record"))?.into_iter().flatten().collect();
    let children = db.rows(&children_sql(db.dialect()), &[text(id)]).await?;
    Ok(Some(RunDetail {
        run: summary(&row)?,
        input: row.json("input")?.unwrap_or(Value::Null),
        output: row.json("output")?,
        steps,
        logs,
        audit,
        children: all(children, summary)?,
    }))
}

// Approvals.

const APPROVAL: &str = "run_id, step_id, root_run, story, team, title, details, choices, choice_marks, approvers, created_ms, deadline_ms, on_timeout, state, choice, decided_by, via, decided_from, comment, decided_ms";

fn approval_row(r: &Row) -> anyhow::Result<crate::approval::Approval> {
    let list = |name: &str| -> anyhow::Result<Vec<String>> { Ok(r.opt_text(name)?.and_then(|s| serde_json::from_str(&s).ok()).unwrap_or_default()) };
    // `{"danger": […], "confirm": […]}`; an approval parked before marks existed has none.
    let marks_of: Option<Value> = r.opt_text("choice_marks")?.and_then(|s| serde_json::from_str(&s).ok());
    let marks = |name: &str| -> anyhow::Result<Vec<String>> {
        Ok(marks_of.as_ref().and_then(|m| m.get(name)).and_then(|v| serde_json::from_value(v.clone()).ok()).unwrap_or_default())
    };
    let decision = match r.opt_text("decided_by")? {
        None => None,
        Some(decided_by) => Some(crate::approval::Decision {
            choice: r.opt_text("choice")?,
            decided_by,
            via: r.opt_text("via")?.unwrap_or_default(),
            from: r.opt_text("decided_from")?,
            comment: r.opt_text("comment")?,
            decided_ms: r.opt_u64("decided_ms")?.unwrap_or(0),
        }),
    };
    Ok(crate::approval::Approval {
        run: r.text("run_id")?,
        step: r.text("step_id")?,
        root_run: r.text("root_run")?,
        story: r.text("story")?,
        team: r.text("team")?,
        title: r.text("title")?,
        details: r.json("details")?.unwrap_or(Value::Null),
        choices: list("choices")?,
        danger: marks("danger")?,
        confirm: marks("confirm")?,
        approvers: list("approvers")?,
        created_ms: r.u64("created_ms")?,
        deadline_ms: r.u64("deadline_ms")?,
        on_timeout: r.opt_text("on_timeout")?,
        state: r.text("state")?,
        decision,
    })
}

/// The salt of the approval links' key: made once by whichever process
/// gets there first, then read by every process on the store.
pub(crate) async fn key_salt(db: &impl Db, fresh: [u8; 32]) -> anyhow::Result<[u8; 32]> {
    db.exec("INSERT INTO warden_keys (name, value) VALUES ('approval-links-salt', $1) ON CONFLICT (name) DO NOTHING", &[Arg::Bytes(fresh.to_vec())]).await?;
    let row = db.row("SELECT value FROM warden_keys WHERE name = 'approval-links-salt'", &[]).await?;
    let salt = row.ok_or_else(|| anyhow::anyhow!("the run store lost its approval link salt"))?.bytes("value")?;
    salt.try_into().map_err(|_| anyhow::anyhow!("the run store's approval link salt is damaged (not 32 bytes)"))
}

pub(crate) async fn approval(db: &impl Db, run: &str, step: &str) -> anyhow::Result<Option<crate::approval::Approval>> {
    db.row(&format!("SELECT {APPROVAL} FROM approvals WHERE run_id = $1 AND step_id = $2"), &[text(run), text(step)])
        .await?
        .as_ref()
        .map(approval_row)
        .transpose()
}

pub(crate) async fn approval_by_link(db: &impl Db, hash: &str) -> anyhow::Result<Option<(crate::approval::Approval, crate::approval::Link)>> {
    let Some(r) = db.row("SELECT run_id, step_id, choice, recipient FROM approval_links WHERE hash = $1", &[text(hash)]).await? else { return Ok(None) };
    let link = crate::approval::Link { hash: hash.to_string(), choice: r.text("choice")?, recipient: r.text("recipient")? };
    Ok(approval(db, &r.text("run_id")?, &r.text("step_id")?).await?.map(|a| (a, link)))
}

/// Approvals, oldest first; pending only (the usual view) unless `all`,
/// through the partial index of pending ones: decided ones pile up with age.
pub(crate) fn approvals_sql(all: bool) -> String {
    let which = if all { "1 = 1" } else { "state = 'pending'" };
    format!(
        "SELECT {APPROVAL} FROM approvals WHERE {which} AND (CAST($1 AS TEXT) IS NULL OR team = $1) AND (CAST($2 AS TEXT) IS NULL OR story = $2) ORDER BY created_ms, run_id LIMIT $3"
    )
}

pub(crate) async fn list_approvals(db: &impl Db, f: &ApprovalFilter<'_>) -> anyhow::Result<Vec<crate::approval::Approval>> {
    all(db.rows(&approvals_sql(f.all), &[maybe(f.team), maybe(f.story), big(f.limit as u64)]).await?, approval_row)
}

/// Records `d` on a pending approval and audits it; the approval as it is
/// afterwards, with whether this decision was the one taken (the caller runs
/// it in a transaction: two deciders, one decision).
pub(crate) async fn decide(db: &impl Db, run: &str, step: &str, d: &crate::approval::Decision) -> anyhow::Result<crate::approval::Decided> {
    let state = if d.choice.is_some() { "decided" } else { "expired" };
    let changed = db
        .exec(
            "UPDATE approvals SET state = $3, choice = $4, decided_by = $5, via = $6, decided_from = $7, comment = $8, decided_ms = $9
             WHERE run_id = $1 AND step_id = $2 AND state = 'pending'",
            &[
                text(run),
                text(step),
                text(state),
                maybe(d.choice.as_deref()),
                text(&d.decided_by),
                text(&d.via),
                maybe(d.from.as_deref()),
                maybe(d.comment.as_deref()),
                big(d.decided_ms),
            ],
        )
        .await?;
    if changed == 1 {
        db.exec(ADD_AUDIT.pg, &[text(run), text(step), big(d.decided_ms), text(&decision_audit(step, d))]).await?;
    }
    Ok(match (changed, approval(db, run, step).await?) {
        (1, Some(a)) => Ok(a),
        (_, Some(a)) => Err(crate::approval::Refused::Over(a)),
        (_, None) => Err(crate::approval::Refused::Unknown(format!("run {run} has no approval step `{step}` waiting"))),
    })
}

pub(crate) async fn due_approvals(db: &impl Db, now_ms: u64, limit: usize) -> anyhow::Result<Vec<crate::approval::Approval>> {
    let sql = format!("SELECT {APPROVAL} FROM approvals WHERE state = 'pending' AND deadline_ms <= $1 ORDER BY deadline_ms LIMIT $2");
    all(db.rows(&sql, &[big(now_ms), big(limit as u64)]).await?, approval_row)
}

/// Runs with a decided approval not resumed yet (`approvals_to_wake`: only those are in it).
pub(crate) async fn runs_to_wake(db: &impl Db, limit: usize) -> anyhow::Result<Vec<String>> {
    let sql = format!("SELECT DISTINCT root_run FROM approvals WHERE {} AND state <> 'pending' LIMIT $1", db.dialect().unresumed);
    let rows = db.rows(&sql, &[big(limit as u64)]).await?;
    all(rows, |r| r.text("root_run"))
}

/// Sets a waiting run going again and marks its decided approvals resumed
/// (the caller runs it in a transaction); whether the run was waiting. With
/// leases, the lease is cleared: whichever node has room claims it as an
/// interrupted run and resumes it.
pub(crate) async fn wake(db: &impl Db, root: &str) -> anyhow::Result<bool> {
    let sql = match db.dialect().leases {
        true => "UPDATE runs SET state = 'running', lease_owner = NULL, lease_until_ms = NULL WHERE id = $1 AND state = 'waiting'",
        false => "UPDATE runs SET state = 'running' WHERE id = $1 AND state = 'waiting'",
    };
    let woke = db.exec(sql, &[text(root)]).await? == 1;
    db.exec(&mark_resumed_sql(db.dialect()), &[text(root)]).await?;
    Ok(woke)
}

/// A woken run's decided approvals, marked resumed (`approvals_to_wake`:
/// only those not resumed yet are in it).
pub(crate) fn mark_resumed_sql(d: &Dialect) -> String {
    format!("UPDATE approvals SET resumed = TRUE WHERE root_run = $1 AND {} AND state <> 'pending'", d.unresumed)
}

/// The [`RunStore`] reads both stores make the same way: each one shared
/// statement above, on the store's own `read` (its reader connection, or a
/// pooled connection). What differs (writing, a run's snapshot) each store
/// spells itself.
macro_rules! store_reads {
    () => {
        fn find_runs(&self, f: &RunFilter) -> anyhow::Result<Vec<RunSummary>> {
            self.read(async |db| sql::find_runs(db, f).await)
        }

        fn count_runs(&self, f: &RunFilter) -> anyhow::Result<Vec<(String, u64)>> {
            self.read(async |db| sql::count_runs(db, f).await)
        }

        fn count_unfinished(&self) -> anyhow::Result<Vec<(String, u64)>> {
            self.read(async |db| sql::count_unfinished(db).await)
        }

        fn run_by_idempotency_key(&self, story: &str, key: &str) -> anyhow::Result<Option<String>> {
            self.read(async |db| sql::run_by_idempotency_key(db, story, key).await)
        }

        fn last_schedule_tick(&self, story: &str) -> anyhow::Result<Option<u64>> {
            self.read(async |db| sql::last_schedule_tick(db, story).await)
        }

        fn recordings(&self, run: &str) -> anyhow::Result<Vec<StoredRecording>> {
            self.read(async |db| sql::recordings(db, run).await)
        }

        fn run_summary(&self, id: &str) -> anyhow::Result<Option<RunSummary>> {
            self.read(async |db| sql::run_summary(db, id).await)
        }

        fn run_input(&self, id: &str) -> anyhow::Result<Option<(String, Value)>> {
            self.read(async |db| sql::run_input(db, id).await)
        }

        fn resumes(&self, id: &str) -> anyhow::Result<u32> {
            self.read(async |db| sql::resumes(db, id).await)
        }

        fn runs_in_state(&self, state: &str) -> anyhow::Result<Vec<String>> {
            self.read(async |db| sql::runs_in_state(db, state).await)
        }
    };
}
pub(crate) use store_reads;

/// The columns of a [`ServiceToken`].
const SERVICE_TOKEN: &str = "name, team, role, created_ms, created_by, revoked_ms, last_used_ms";

fn service_token(r: &Row) -> anyhow::Result<ServiceToken> {
    Ok(ServiceToken {
        name: r.text("name")?,
        team: r.opt_text("team")?,
        role: r.text("role")?,
        created_ms: r.u64("created_ms")?,
        created_by: r.text("created_by")?,
        revoked_ms: r.opt_u64("revoked_ms")?,
        last_used_ms: r.opt_u64("last_used_ms")?,
    })
}

pub(crate) async fn create_token(db: &impl Db, t: &ServiceToken, digest: &[u8; 32]) -> anyhow::Result<bool> {
    let held = db.row("SELECT COUNT(*) AS n FROM service_tokens", &[]).await?.map_or(Ok(0), |r| r.u64("n"))?;
    if held >= crate::MAX_SERVICE_TOKENS as u64 {
        return Ok(false);
    }
    let args = [text(&t.name), Arg::Bytes(digest.to_vec()), maybe(t.team.as_deref()), text(&t.role), big(t.created_ms), text(&t.created_by)];
    let added = db
        .exec("INSERT INTO service_tokens (name, digest, team, role, created_ms, created_by) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING", &args)
        .await?;
    Ok(added == 1)
}

pub(crate) async fn list_tokens(db: &impl Db) -> anyhow::Result<Vec<ServiceToken>> {
    let rows = db.rows(&format!("SELECT {SERVICE_TOKEN} FROM service_tokens ORDER BY name LIMIT $1"), &[big(crate::MAX_SERVICE_TOKENS as u64)]).await?;
    all(rows, service_token)
}

pub(crate) async fn revoke_token(db: &impl Db, name: &str, now_ms: u64) -> anyhow::Result<bool> {
    let n = db.exec("UPDATE service_tokens SET revoked_ms = $2 WHERE name = $1 AND revoked_ms IS NULL", &[text(name), big(now_ms)]).await?;
    Ok(n == 1)
}

pub(crate) async fn use_token(db: &impl Db, digest: &[u8; 32], now_ms: u64) -> anyhow::Result<Option<ServiceToken>> {
    let sql = format!("UPDATE service_tokens SET last_used_ms = $2 WHERE digest = $1 AND revoked_ms IS NULL RETURNING {SERVICE_TOKEN}");
    db.row(&sql, &[Arg::Bytes(digest.to_vec()), big(now_ms)]).await?.as_ref().map(service_token).transpose()
}

/// The [`TokenStore`] methods, the same for both stores: every one a write
/// but the list (a use is noted where the token is found).
macro_rules! token_statements {
    () => {
        fn create_token(&self, token: &ServiceToken, digest: &[u8; 32]) -> anyhow::Result<bool> {
            self.write(async |db| sql::create_token(db, token, digest).await)
        }

        fn list_tokens(&self) -> anyhow::Result<Vec<ServiceToken>> {
            self.read(async |db| sql::list_tokens(db).await)
        }

        fn revoke_token(&self, name: &str, now_ms: u64) -> anyhow::Result<bool> {
            self.write(async |db| sql::revoke_token(db, name, now_ms).await)
        }

        fn use_token(&self, digest: &[u8; 32], now_ms: u64) -> anyhow::Result<Option<ServiceToken>> {
            self.write(async |db| sql::use_token(db, digest, now_ms).await)
        }
    };
}
pub(crate) use token_statements;

/// The columns of an [`Activity`].
const ACTIVITY: &str = "id, at_ms, actor, action, team, target, outcome, detail, from_addr";

fn activity_row(r: &Row) -> anyhow::Result<Activity> {
    Ok(Activity {
        id: r.u64("id")?,
        at_ms: r.u64("at_ms")?,
        actor: r.text("actor")?,
        action: r.text("action")?,
        team: r.opt_text("team")?,
        target: r.opt_text("target")?,
        outcome: r.text("outcome")?,
        detail: r.opt_text("detail")?,
        from: r.opt_text("from_addr")?,
    })
}

/// A field of an entry as kept: at most `max` characters.
fn capped(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

pub(crate) async fn note(db: &impl Db, e: &Activity) -> anyhow::Result<()> {
    let opt = |s: &Option<String>, max| maybe(s.as_deref().map(|v| capped(v, max)).as_deref());
    let args = [
        big(e.at_ms),
        text(&capped(&e.actor, 200)),
        text(&capped(&e.action, 64)),
        opt(&e.team, 200),
        opt(&e.target, 400),
        text(&capped(&e.outcome, 16)),
        opt(&e.detail, 2000),
        opt(&e.from, 200),
    ];
    db.exec("INSERT INTO activity (at_ms, actor, action, team, target, outcome, detail, from_addr) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)", &args).await?;
    Ok(())
}

pub(crate) async fn read_activity(db: &impl Db, f: &ActivityFilter<'_>) -> anyhow::Result<Vec<Activity>> {
    let sql = format!(
        "SELECT {ACTIVITY} FROM activity WHERE id > $1 AND at_ms >= $2 AND (CAST($3 AS TEXT) IS NULL OR actor = $3) AND (CAST($4 AS TEXT) IS NULL OR action = $4) AND (CAST($5 AS TEXT) IS NULL OR team = $5) ORDER BY id LIMIT $6"
    );
    let args =
        [big(f.after_id), big(f.since_ms.unwrap_or(0)), maybe(f.actor), maybe(f.action), maybe(f.team), big(f.limit.min(crate::MAX_ACTIVITY_READ) as u64)];
    all(db.rows(&sql, &args).await?, activity_row)
}

/// The [`ActivityLog`] methods, the same for both stores.
macro_rules! activity_statements {
    () => {
        fn note(&self, entry: &Activity) -> anyhow::Result<()> {
            self.write(async |db| sql::note(db, entry).await)
        }

        fn read_activity(&self, filter: &ActivityFilter) -> anyhow::Result<Vec<Activity>> {
            self.read(async |db| sql::read_activity(db, filter).await)
        }
    };
}
pub(crate) use activity_statements;

/// The [`ApprovalStore`] methods both stores make the same way: reads on
/// `read`, decisions in one transaction on `write` (two deciders, one
/// decision; a wake and its approvals marked together).
macro_rules! approval_statements {
    () => {
        fn key_salt(&self) -> anyhow::Result<[u8; 32]> {
            let mut fresh = [0u8; 32];
            getrandom::fill(&mut fresh).map_err(|e| anyhow::anyhow!("no randomness for the approval link salt: {e}"))?;
            self.write(async |db| sql::key_salt(db, fresh).await)
        }

        fn approval(&self, run: &str, step: &str) -> anyhow::Result<Option<crate::approval::Approval>> {
            self.read(async |db| sql::approval(db, run, step).await)
        }

        fn approval_by_link(&self, hash: &str) -> anyhow::Result<Option<(crate::approval::Approval, crate::approval::Link)>> {
            self.read(async |db| sql::approval_by_link(db, hash).await)
        }

        fn list_approvals(&self, f: &ApprovalFilter) -> anyhow::Result<Vec<crate::approval::Approval>> {
            self.read(async |db| sql::list_approvals(db, f).await)
        }

        fn decide(&self, run: &str, step: &str, d: &crate::approval::Decision) -> anyhow::Result<crate::approval::Decided> {
            self.write(async |db| sql::decide(db, run, step, d).await)
        }

        fn due_approvals(&self, now_ms: u64, limit: usize) -> anyhow::Result<Vec<crate::approval::Approval>> {
            self.read(async |db| sql::due_approvals(db, now_ms, limit).await)
        }

        fn runs_to_wake(&self, limit: usize) -> anyhow::Result<Vec<String>> {
            self.read(async |db| sql::runs_to_wake(db, limit).await)
        }

        fn wake(&self, root: &str) -> anyhow::Result<bool> {
            self.write(async |db| sql::wake(db, root).await)
        }
    };
}
pub(crate) use approval_statements;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cell_of_the_wrong_type_is_named_by_its_kind_never_by_its_value() {
        let row = Row { columns: vec!["input".to_string()].into(), cells: vec![Cell::Text("s3cret-input".into())] };
        let e = row.int("input").unwrap_err().to_string();
        assert_eq!(e, "the run store's column input holds text, not an integer");
        assert!(row.text("missing").unwrap_err().to_string().contains("no column missing"));
    }

    #[test]
    fn placeholders_become_sqlites_numbered_ones_in_any_order() {
        assert_eq!(lite("UPDATE runs SET trace_id = $2, trace_span = $3 WHERE id = $1"), "UPDATE runs SET trace_id = ?2, trace_span = ?3 WHERE id = ?1");
        assert_eq!(lite("VALUES ($10, $11)"), "VALUES (?10, ?11)");
        assert!(matches!(lite("SELECT 1"), Cow::Borrowed(_)));
    }

    /// One write of every kind (a park with an approval and a link, a log line).
    fn one_of_each() -> Vec<Write> {
        let s = |v: &str| v.to_string();
        let approval = crate::approval::Approval {
            run: s("r"),
            root_run: s("r"),
            step: s("ok"),
            story: s("st"),
            team: s("soc"),
            title: s("t"),
            details: Value::Null,
            choices: vec![s("yes")],
            danger: vec![],
            confirm: vec![],
            approvers: vec![],
            created_ms: 1,
            deadline_ms: 2,
            on_timeout: None,
            state: s("pending"),
            decision: None,
        };
        let link = crate::approval::Link { hash: s("h"), choice: s("yes"), recipient: s("") };
        let line = LogLine { at_ms: 1, level: "info", source: "guest", message: s("m") };
        vec![
            Write::CreateRun {
                id: s("r"),
                story: s("st"),
                team: s("soc"),
                trigger: s("cli"),
                input: s("{}"),
                parent: Some((s("p"), s("call"))),
                idempotency_key: Some(s("k")),
                at_ms: 1,
            },
            Write::StartRun { id: s("r"), at_ms: 1 },
            Write::NoteResume { id: s("r") },
            Write::NoteShutdown { id: s("r") },
            Write::Traced { run: s("r"), trace_id: s("t"), span_id: s("s") },
            Write::FinishRun { id: s("r"), state: s("failed"), output: None, error: Some(s("e")), failed_step: Some(s("a")), at_ms: 2 },
            Write::StepStarted { run: s("r"), step: s("a"), item: Some(3), kind: s("action"), input: None, attempt: 1, at_ms: 1 },
            Write::StepFinished {
                run: s("r"),
                step: s("a"),
                item: None,
                kind: s("action"),
                state: s("succeeded"),
                output: Some(s("{}")),
                error: None,
                attempts: 2,
                at_ms: 2,
            },
            Write::Logs { run: s("r"), step: s("a"), lines: vec![line] },
            Write::Audit { run: s("r"), step: s("a"), records: vec![(1, s("{}"))] },
            Write::Recording { run: s("r"), step: s("a"), item: None, attempt: 1, truncated: false, recording: s("{}") },
            Write::Park { run: s("r"), step: s("ok"), kind: s("approval"), approval: Some(Box::new((approval, vec![link]))), at_ms: 3 },
            Write::Remember { run: s("r"), scope: s("st/dedupe"), value: s("v"), lookback: 10 },
        ]
    }

    #[test]
    fn every_write_has_statements_and_each_placeholder_an_argument() {
        for w in &one_of_each() {
            for placement in [Placement::Unleased, Placement::Local, Placement::Clustered] {
                let stmts = statements(w, placement);
                assert!(!stmts.is_empty(), "{} has no statement", w.name());
                for st in stmts {
                    let highest = (1..=st.args.len() + 1).filter(|n| st.sql.pg.contains(&format!("${n}"))).max().unwrap_or(0);
                    assert_eq!(highest, st.args.len(), "{}: {highest} placeholders, {} arguments in {}", w.name(), st.args.len(), st.sql.pg);
                }
            }
        }
    }

    /// Every write of every kind runs on a real SQLite store through the
    /// shared statements (the PostgreSQL suite does the same on a server).
    #[test]
    fn every_write_runs_on_sqlite() {
        let store = crate::SqliteStore::in_memory().unwrap();
        let answers = store.apply(&one_of_each()).unwrap();
        assert!(answers.iter().all(Result::is_ok), "{answers:?}");
        let mut second = one_of_each().remove(0);
        if let Write::CreateRun { id, .. } = &mut second {
            *id = "r2".into();
        }
        let again = store.apply(&[second]).unwrap();
        assert!(matches!(&again[0], Err(Conflict(m)) if m.contains("Idempotency-Key")), "{again:?}");
    }
}
