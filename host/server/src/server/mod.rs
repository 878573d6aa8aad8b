//! `warden serve`: webhooks start stories; runs are durable.
//!
//! webhook → signature (HMAC-SHA256, constant-time) → JSON → input schema →
//! the run is written to the store as `queued` → `202 {run_id}` → a bounded
//! worker pool executes it (per-story concurrency limits). On start, queued
//! runs start and interrupted runs resume (see [`crate::story::engine::StoryRunner::resume`]).
//! SIGTERM stops intake and drains in-flight runs up to a deadline; whatever
//! is still running then resumes at the next start.

pub mod access;
mod approvals;
pub mod config;
pub mod console;
pub mod metrics;
mod node;
mod queue;
pub mod received;
mod schedule;
pub mod signature;
mod slack;
mod webhook;

use crate::policy::{Policy, Role};
use crate::runtime::{Runtime, RuntimeConfig};
use crate::store::{off_runtime, RunFilter};
use crate::story::engine::StoryRunner;
use crate::story::Library;
pub use access::{ApiTokens, Principal, Scope};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics::Metrics;
use queue::{Queue, Start};
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// The header of warden's webhook signature (see [`signature`]).
pub const SIGNATURE_HEADER: &str = signature::WARDEN_HEADER;

/// Longest `Idempotency-Key` accepted.
const MAX_IDEMPOTENCY_KEY: usize = 256;

pub struct ServeOptions {
    pub workers: usize,
    pub drain: Duration,
    /// What this node does in a cluster (a SQLite store: always [`Role::All`]).
    pub role: Role,
    /// Traces (`[telemetry]`): webhook spans here, run spans from the
    /// queue's observer. The engine gets the same as its trace context.
    pub telemetry: Option<Arc<crate::telemetry::Telemetry>>,
}

#[derive(Clone)]
struct AppState {
    engine: Arc<StoryRunner>,
    policy: Arc<Policy>,
    queue: Queue,
    metrics: Arc<Metrics>,
    tokens: Arc<ApiTokens>,
    replays: Arc<signature::ReplayCache>,
    /// Wakes the approval sweep at once (after a decision here).
    approvals_poke: Arc<tokio::sync::Notify>,
    console: Arc<console::Console>,
    /// Verifies Slack's interaction callbacks (`[server] slack_signing_secret_env`).
    slack: Option<Arc<slack::Slack>>,
    /// Traces (`[telemetry]`): the webhook's span.
    telemetry: Option<Arc<crate::telemetry::Telemetry>>,
}

fn error(code: StatusCode, message: impl Into<String>) -> Response {
    (code, Json(json!({"error": message.into()}))).into_response()
}

/// Builds the app and starts the workers and schedules. Queued and
/// interrupted runs from the store are picked up first.
pub fn start(engine: Arc<StoryRunner>, opts: &ServeOptions) -> anyhow::Result<(Router, Queue)> {
    let policy = engine.policy.clone();
    let metrics = Arc::new(Metrics::default());
    let queue = Queue::start(engine.clone(), metrics.clone(), opts.workers, &policy, opts.role, opts.telemetry.clone());
    if engine.store.cluster().is_some() {
        // Queued runs, and runs of nodes that stopped, are claimed from the shared queue.
        node::start(&queue);
    } else {
        for id in engine.store.runs_in_state("running")? {
            tracing::warn!(run = %id, "resuming a run interrupted by the last shutdown");
            let story = engine.store.run_input(&id)?.map(|(s, _)| s).unwrap_or_default();
            queue.push(id, &story, Start::AfterRestart { started: true }, None);
        }
        for id in engine.store.runs_in_state("queued")? {
            let story = engine.store.run_input(&id)?.map(|(s, _)| s).unwrap_or_default();
            // Queued when the process ended: perhaps executing already (its
            // start not yet committed), so counted as a resume is.
            queue.push(id, &story, Start::AfterRestart { started: false }, None);
        }
    }
    schedule::start(engine.clone(), queue.clone(), &policy);
    let approvals_poke = approvals::start_sweep(queue.clone());
    let tokens = Arc::new(ApiTokens::load(&policy)?);
    let max_body = policy.triggers.values().map(|t| t.max_body).max().unwrap_or(crate::policy::triggers::DEFAULT_MAX_BODY) as usize;
    let slack = match &policy.server.slack_signing_secret {
        Some(src) => {
            let secret = src.read().map_err(|e| anyhow::anyhow!("[server] slack_signing_secret_env: {e}"))?;
            Some(Arc::new(slack::Slack::new(secret, policy.server.slack_hooks_url.as_deref())?))
        }
        None => None,
    };
    let state = AppState {
        engine,
        policy,
        queue: queue.clone(),
        metrics,
        tokens,
        replays: Arc::default(),
        approvals_poke,
        console: Arc::default(),
        slack,
        telemetry: opts.telemetry.clone(),
    };
    let router = Router::new()
        .route("/webhooks/{story}", post(webhook))
        .route("/api/runs", get(list_runs))
        .route("/api/runs/{id}", get(get_run))
        .route("/api/approvals", get(approvals::list))
        .route("/api/audit-log", get(access::audit_log))
        .route("/api/approvals/{run}/{step}", post(approvals::decide_by_api))
        .route("/approvals/{token}", get(approvals::show).post(approvals::decide_by_link))
        .route("/slack/interactions", post(slack::interactions))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .merge(console::routes())
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state);
    Ok((router, queue))
}

/// `warden serve`: resolves the settings, loads and checks the stories against
/// the policy, opens the store, then serves until SIGTERM.
pub async fn run(policy: Policy, flags: config::ServeFlags) -> anyhow::Result<()> {
    let flags_workers = flags.workers.is_some() || policy.server.workers.is_some();
    let available = config::available_memory();
    let settings = config::ServeSettings::resolve(flags, &policy.server)?;
    let library = Library::load_dir(&settings.stories)?;
    library.check(&policy)?;
    for name in policy.triggers.keys() {
        if library.get(name).is_none() {
            anyhow::bail!("{}: [triggers.{name}] names a story that is not in {}", policy.file, settings.stories.display());
        }
    }
    if settings.role != Role::All && !matches!(crate::store::Location::of(&settings.db), crate::store::Location::Postgres(_)) {
        anyhow::bail!(
            "--role {} needs a store shared with other nodes: give --db postgres://… (a SQLite store serves one node, which takes webhooks and executes runs)",
            settings.role.name()
        );
    }
    let store = crate::store::open_for_serving(&settings.db, settings.lease)?;
    let max_instances = config::instance_pool(settings.workers);
    let largest_grant = policy.grants.values().map(|g| g.limits.memory_bytes).max().unwrap_or(crate::limits::Limits::default().memory_bytes);
    tracing::info!(
        "{} workers, {max_instances} plugin instances at most, {} of large components ({}; each instance capped by its grant's memory, largest {} MiB)",
        settings.workers,
        crate::runtime::mapped_pool(max_instances),
        match (flags_workers, available) {
            (true, _) => "as configured".to_string(),
            (false, Some(m)) => format!("sized from {:.1} GiB available memory; --workers to change", m as f64 / (1u64 << 30) as f64),
            (false, None) => "available memory unknown; --workers to change".to_string(),
        },
        largest_grant >> 20
    );
    if crate::runtime::resets_memory_in_place() {
        tracing::info!(
            "finished instances' memory is reset in place (PAGEMAP_SCAN): up to {} KiB of each idle slot stays resident, wiped (zeroed, or restored from the module image)",
            crate::runtime::MEMORY_KEEP_RESIDENT >> 10
        );
    } else {
        tracing::info!("finished instances' memory is returned to the kernel (no PAGEMAP_SCAN: Linux older than 6.7, or /proc/self/pagemap unreadable); invocations take page faults on fresh pages");
    }
    let rt = Arc::new(Runtime::new(RuntimeConfig { max_instances, ..Default::default() })?);
    let telemetry = crate::telemetry::Telemetry::start(&policy.telemetry).map_err(|e| anyhow::anyhow!("{}: {e}", policy.file))?.map(Arc::new);
    if let Some(t) = &telemetry {
        tracing::info!("traces exported over OTLP/HTTP to {}", t.destination());
    }
    let engine = Arc::new(
        StoryRunner::new(rt, Arc::new(policy), Arc::new(library), store).with_links_base(&settings.listen).with_traces(telemetry.clone().map(|t| t as _)),
    );
    let served =
        serve(engine, &settings.listen, ServeOptions { workers: settings.workers, drain: settings.drain, role: settings.role, telemetry: telemetry.clone() })
            .await;
    if let Some(t) = telemetry {
        // Sends what is still buffered (the exporter blocks: off the runtime's threads).
        let _ = tokio::task::spawn_blocking(move || t.shutdown()).await;
    }
    served
}

/// Serves until SIGTERM/SIGINT, then drains.
pub async fn serve(engine: Arc<StoryRunner>, listen: &str, opts: ServeOptions) -> anyhow::Result<()> {
    let n = engine.preload().await.map_err(|e| anyhow::anyhow!("cannot serve: {e}"))?;
    tracing::info!("{n} plugin(s) loaded and vetted");
    let unguarded = ApiTokens::load(&engine.policy)?.is_open();
    let (router, queue) = start(engine, &opts)?;
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e} (pick another with --listen)"))?;
    let addr = listener.local_addr()?;
    if unguarded && !addr.ip().is_loopback() {
        anyhow::bail!(
            "refusing to serve on {addr}: it is reachable beyond this machine and no API token is set, so anyone could read every run; set [server] api_token_env (and [teams.T] api_token_env for per-team tokens), or listen on 127.0.0.1"
        );
    }
    tracing::info!("warden serving on http://{addr} (web console: http://{addr}/console)");
    // With each peer's address: an approval decision records where it came from.
    axum::serve(listener, router.into_make_service_with_connect_info::<std::net::SocketAddr>()).with_graceful_shutdown(shutdown_signal()).await?;
    tracing::info!("stopped accepting; draining in-flight runs for up to {} s", opts.drain.as_secs());
    if !queue.drain(opts.drain).await {
        tracing::warn!("drain deadline reached; unfinished runs resume at the next start");
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

/// Signs a body for `story` with warden's scheme, now: the `X-Warden-Signature`
/// value (for tests, docs and clients written in Rust).
pub fn sign(secret: &[u8], story: &str, body: &[u8]) -> String {
    signature::sign_at(secret, story, body, chrono::Utc::now().timestamp())
}

async fn webhook(State(s): State<AppState>, Path(story): Path<String>, headers: HeaderMap, request: Result<webhook::Verified, Response>) -> Response {
    // Only stories with a webhook get their own label: a caller cannot grow
    // the metrics (or the span names) by inventing names.
    let label = if s.policy.triggers.get(&story).is_some_and(|t| t.secret.is_some()) { story.as_str() } else { "(unknown)" };
    // Traced: the span continues the caller's trace (W3C traceparent) and parents the run.
    let span = s.telemetry.as_ref().map(|t| t.webhook(label, &crate::telemetry::Telemetry::caller(&headers)));
    let parent = span.as_ref().map(|sp| {
        use opentelemetry::trace::Span as _;
        sp.span_context().clone()
    });
    let resp = match request {
        Ok(verified) => match webhook::accept(&s, verified).await {
            Ok(accepted) => webhook::dispatch(&s, accepted, parent).await,
            Err(answer) => answer,
        },
        Err(rejected) => rejected,
    };
    s.metrics.webhook(label, resp.status().as_u16());
    if let Some(span) = span {
        crate::telemetry::Telemetry::webhook_answered(span, resp.status().as_u16());
    }
    resp
}

async fn list_runs(State(s): State<AppState>, headers: HeaderMap, Query(q): Query<HashMap<String, String>>) -> Response {
    let who = match s.principal(&headers).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let scope = who.scope.clone();
    let limit = q.get("limit").and_then(|l| l.parse().ok()).unwrap_or(50usize).min(500);
    let offset = q.get("offset").and_then(|l| l.parse().ok()).unwrap_or(0usize);
    let since_ms = match q.get("since").map(|t| t.parse::<u64>()) {
        None => None,
        Some(Ok(t)) => Some(t),
        Some(Err(_)) => return error(StatusCode::BAD_REQUEST, "since is a time in Unix milliseconds"),
    };
    let listed = off_runtime(&s.engine.store, move |st| {
        let team = scope.team().or(q.get("team").map(String::as_str));
        let filter = RunFilter {
            team,
            story: q.get("story").map(String::as_str),
            state: q.get("state").map(String::as_str),
            trigger: q.get("trigger").map(String::as_str),
            since_ms,
            include_children: false,
            limit,
            offset,
        };
        st.find_runs(&filter)
    });
    match listed.await {
        Ok(runs) => Json(json!({"runs": runs, "limit": limit, "offset": offset})).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn get_run(State(s): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let who = match s.principal(&headers).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let team = who.scope.team().map(String::from);
    let read = off_runtime(&s.engine.store, {
        let id = id.clone();
        move |st| {
            let Some(run) = st.get_run(&id)? else { return Ok(None) };
            // Another team's run is answered as if it did not exist.
            if team.as_ref().is_some_and(|t| *t != run.run.team) {
                return Ok(None);
            }
            // Whether `warden runs replay` can re-execute it, and its steps' recordings.
            let recordings = crate::store::recordings_seen_by(st, &id, team.as_deref()).unwrap_or_default();
            Ok(Some((crate::store::seen_by(run, team.as_deref()), recordings)))
        }
    });
    match read.await {
        Ok(Some((run, recordings))) => {
            let mut body = serde_json::to_value(&run).unwrap_or_default();
            body["recording"] = json!(crate::store::recording_state(&recordings));
            body["recordings"] = json!(recordings);
            Json(body).into_response()
        }
        Ok(_) => error(StatusCode::NOT_FOUND, format!("no run `{}`", crate::invocation::guest_text(&id, 64))),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `200 ok` while the run store takes writes; `503` with the reason while it
/// refuses them (runs then fail rather than go on unrecorded).
async fn healthz(State(s): State<AppState>) -> Response {
    match s.engine.store_health().status() {
        Ok(()) => Json(json!({"status": "ok"})).into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "unhealthy", "reason": format!("run store unavailable: {why}")}))).into_response(),
    }
}

async fn metrics_text(State(s): State<AppState>) -> Response {
    let unfinished = off_runtime(&s.engine.store, |st| st.count_unfinished()).await.unwrap_or_default();
    let body = s.metrics.render(s.engine.invoker.instances(), &unfinished, s.engine.store_health());
    ([("content-type", "text/plain; version=0.0.4")], body).into_response()
}

#[cfg(test)]
mod tests;
