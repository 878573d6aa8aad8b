//! `warden serve`: webhooks start stories; runs are durable.
//!
//! webhook → signature (HMAC-SHA256, constant-time) → JSON → input schema →
//! the run is written to the store as `queued` → `202 {run_id}` → a bounded
//! worker pool executes it (per-story concurrency limits). On start, queued
//! runs start and interrupted runs resume (see [`crate::story::engine::Engine::resume`]).
//! SIGTERM stops intake and drains in-flight runs up to a deadline; whatever
//! is still running then resumes at the next start.

pub mod config;
pub mod metrics;
mod queue;
mod schedule;

use crate::policy::credentials::Secret;
use crate::policy::Policy;
use crate::runtime::{Runtime, RuntimeConfig};
use crate::store::RunStore;
use crate::story::engine::{Engine, SubmitError};
use crate::story::Library;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hmac::{Hmac, Mac};
use metrics::Metrics;
use queue::Queue;
use serde::Deserialize;
use serde_json::json;
use sha2::Sha256;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// The header carrying `sha256=<hex HMAC of the raw body>`.
pub const SIGNATURE_HEADER: &str = "x-warden-signature";

pub struct ServeOptions {
    pub workers: usize,
    pub drain: Duration,
}

#[derive(Clone)]
struct AppState {
    engine: Arc<Engine>,
    policy: Arc<Policy>,
    queue: Queue,
    metrics: Arc<Metrics>,
    api_token: Option<Secret>,
}

fn error(code: StatusCode, message: impl Into<String>) -> Response {
    (code, Json(json!({"error": message.into()}))).into_response()
}

/// Builds the app and starts the workers and schedules. Queued and
/// interrupted runs from the store are picked up first.
pub fn start(engine: Arc<Engine>, opts: &ServeOptions) -> anyhow::Result<(Router, Queue)> {
    let policy = engine.policy.clone();
    let metrics = Arc::new(Metrics::default());
    let queue = Queue::start(engine.clone(), metrics.clone(), opts.workers, &policy);
    for id in engine.store.runs_in_state("running")? {
        tracing::warn!(run = %id, "resuming a run interrupted by the last shutdown");
        let story = engine.store.run_input(&id)?.map(|(s, _)| s).unwrap_or_default();
        queue.push(id, &story, true, None);
    }
    for id in engine.store.runs_in_state("queued")? {
        let story = engine.store.run_input(&id)?.map(|(s, _)| s).unwrap_or_default();
        queue.push(id, &story, false, None);
    }
    schedule::start(engine.clone(), queue.clone(), &policy);
    let api_token = match &policy.server.api_token {
        Some(src) => Some(src.read().map_err(|e| anyhow::anyhow!("[server] api_token_env: {e}"))?),
        None => None,
    };
    let max_body = policy.triggers.values().map(|t| t.max_body).max().unwrap_or(crate::policy::triggers::DEFAULT_MAX_BODY) as usize;
    let state = AppState { engine, policy, queue: queue.clone(), metrics, api_token };
    let router = Router::new()
        .route("/webhooks/{story}", post(webhook))
        .route("/api/runs", get(list_runs))
        .route("/api/runs/{id}", get(get_run))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state);
    Ok((router, queue))
}

/// `warden serve`: resolves the settings, loads and checks the stories against
/// the policy, opens the store, then serves until SIGTERM.
pub async fn run(policy: Policy, flags: config::ServeFlags) -> anyhow::Result<()> {
    let settings = config::ServeSettings::resolve(flags, &policy.server)?;
    let library = Library::load_dir(&settings.stories)?;
    library.check(&policy)?;
    for name in policy.triggers.keys() {
        if library.get(name).is_none() {
            anyhow::bail!("{}: [triggers.{name}] names a story that is not in {}", policy.file, settings.stories.display());
        }
    }
    let store = Arc::new(RunStore::open(&settings.db)?);
    let max_instances = (settings.workers as u32 * 4).max(64);
    let rt = Arc::new(Runtime::new(RuntimeConfig { max_instances, ..Default::default() })?);
    let engine = Arc::new(Engine::new(rt, Arc::new(policy), Arc::new(library), store));
    serve(engine, &settings.listen, ServeOptions { workers: settings.workers, drain: settings.drain }).await
}

/// Serves until SIGTERM/SIGINT, then drains.
pub async fn serve(engine: Arc<Engine>, listen: &str, opts: ServeOptions) -> anyhow::Result<()> {
    let n = engine.preload().await.map_err(|e| anyhow::anyhow!("cannot serve: {e}"))?;
    tracing::info!("{n} plugin(s) loaded and vetted");
    let (router, queue) = start(engine, &opts)?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e} (pick another with --listen)"))?;
    tracing::info!("warden serving on http://{}", listener.local_addr()?);
    axum::serve(listener, router).with_graceful_shutdown(shutdown_signal()).await?;
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

#[derive(Deserialize)]
struct WebhookQuery {
    #[serde(default)]
    wait: bool,
}

/// Verifies `sha256=<hex>` over the raw body, in constant time.
pub fn verify_signature(secret: &[u8], body: &[u8], header: &str) -> bool {
    let Some(hex_sig) = header.trim().strip_prefix("sha256=") else { return false };
    let Ok(sig) = hex::decode(hex_sig) else { return false };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else { return false };
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

/// Signs a body the way callers must (for tests, docs and the README's curl line).
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

async fn webhook(State(s): State<AppState>, Path(story): Path<String>, Query(q): Query<WebhookQuery>, headers: HeaderMap, body: Bytes) -> Response {
    let resp = webhook_inner(&s, &story, q.wait, &headers, &body).await;
    s.metrics.webhook(&story, resp.status().as_u16());
    resp
}

async fn webhook_inner(s: &AppState, story: &str, wait: bool, headers: &HeaderMap, body: &[u8]) -> Response {
    let Some(trigger) = s.policy.triggers.get(story).filter(|t| t.secret.is_some()) else {
        return error(StatusCode::NOT_FOUND, format!("no webhook for story `{story}`"));
    };
    if s.engine.library.get(story).is_none() {
        return error(StatusCode::NOT_FOUND, format!("story `{story}` is not loaded"));
    }
    if body.len() as u64 > trigger.max_body {
        return error(StatusCode::PAYLOAD_TOO_LARGE, format!("body is {} bytes; this webhook takes at most {}", body.len(), trigger.max_body));
    }
    let is_json = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "send Content-Type: application/json");
    }
    let Some(sig) = headers.get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok()) else {
        return error(StatusCode::UNAUTHORIZED, format!("missing {SIGNATURE_HEADER}: sha256=<hex HMAC-SHA256 of the body>"));
    };
    let secret = match trigger.secret.as_ref().expect("filtered above").read() {
        Ok(v) => v,
        Err(why) => {
            tracing::error!(story, "webhook secret unavailable: {why}");
            return error(StatusCode::SERVICE_UNAVAILABLE, "this webhook's secret is not configured on the server");
        }
    };
    if !verify_signature(secret.expose().as_bytes(), body, sig) {
        return error(StatusCode::UNAUTHORIZED, "signature does not match the body");
    }
    let input: serde_json::Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("body is not JSON: {e}")),
    };
    if wait && !trigger.allow_sync {
        return error(StatusCode::BAD_REQUEST, format!("story `{story}` does not allow ?wait=true (allow_sync in its trigger)"));
    }
    let run_id = match s.engine.submit(story, input, "webhook").await {
        Ok(id) => id,
        Err(SubmitError::InvalidInput(m)) => return error(StatusCode::UNPROCESSABLE_ENTITY, m),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    if wait {
        let (tx, rx) = tokio::sync::oneshot::channel();
        s.queue.push(run_id.clone(), story, false, Some(tx));
        return match rx.await {
            Ok(result) => (StatusCode::OK, Json(result)).into_response(),
            Err(_) => (StatusCode::ACCEPTED, Json(json!({"run_id": run_id}))).into_response(),
        };
    }
    s.queue.push(run_id.clone(), story, false, None);
    (StatusCode::ACCEPTED, Json(json!({"run_id": run_id, "status_url": format!("/api/runs/{run_id}")}))).into_response()
}

fn authorized(s: &AppState, headers: &HeaderMap) -> Result<(), Response> {
    let Some(token) = &s.api_token else { return Ok(()) };
    let given = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    // Compare digests so timing says nothing about the token.
    use sha2::Digest;
    let ok = given.is_some_and(|g| Sha256::digest(g.as_bytes()) == Sha256::digest(token.expose().as_bytes()));
    if ok { Ok(()) } else { Err(error(StatusCode::UNAUTHORIZED, "send Authorization: Bearer <api token>")) }
}

async fn list_runs(State(s): State<AppState>, headers: HeaderMap, Query(q): Query<HashMap<String, String>>) -> Response {
    if let Err(r) = authorized(&s, &headers) {
        return r;
    }
    let limit = q.get("limit").and_then(|l| l.parse().ok()).unwrap_or(50usize).min(500);
    let offset = q.get("offset").and_then(|l| l.parse().ok()).unwrap_or(0usize);
    match s.engine.store.list_runs(q.get("story").map(String::as_str), q.get("state").map(String::as_str), false, limit, offset) {
        Ok(runs) => Json(json!({"runs": runs, "limit": limit, "offset": offset})).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn get_run(State(s): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Err(r) = authorized(&s, &headers) {
        return r;
    }
    match s.engine.store.get_run(&id) {
        Ok(Some(run)) => Json(run).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no run `{id}`")),
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
    let stored = s.engine.store.count_by_state().unwrap_or_default();
    let body = s.metrics.render(s.engine.invoker.instances(), &stored, s.engine.store_health().failures());
    ([("content-type", "text/plain; version=0.0.4")], body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::Flaky;
    use crate::story::invoke::PolicyInvoker;

    /// An invoker with a bug: it panics.
    struct Panics;

    #[async_trait::async_trait]
    impl crate::story::invoke::Invoke for Panics {
        async fn prepare(&self, _: &str, _: &str) -> Result<(), crate::story::StepError> {
            Ok(())
        }
        async fn invoke(&self, _: &str, _: &str, _: crate::invocation::InvocationInfo, _: &str, _: Option<tokio::sync::mpsc::UnboundedSender<crate::invocation::LogLine>>) -> Result<crate::runtime::InvocationReport, crate::story::StepError> {
            panic!("a bug in warden")
        }
    }

    #[tokio::test]
    async fn a_run_that_panics_the_host_is_recorded_as_failed_and_its_neighbour_completes() {
        let parse = |t: &str, f: &str| Arc::new(crate::story::parse(t, std::path::Path::new(f)).unwrap());
        let mut library = Library::default();
        library.stories.insert("bad".into(), parse("name: bad\nsteps:\n  - id: a\n    action: p\n", "bad.yaml"));
        library.stories.insert("good".into(), parse("name: good\nsteps:\n  - id: a\n    transform: {set: {ok: true}}\n", "good.yaml"));
        let engine = Arc::new(Engine::with_invoker(Arc::new(Panics), Arc::new(Policy::empty()), Arc::new(library), Arc::new(RunStore::in_memory().unwrap())));
        let (_router, queue) = start(engine.clone(), &ServeOptions { workers: 2, drain: Duration::from_secs(1) }).unwrap();
        let (bad, good) = (engine.submit("bad", json!({}), "test").await.unwrap(), engine.submit("good", json!({}), "test").await.unwrap());
        let (tx_bad, rx_bad) = tokio::sync::oneshot::channel();
        let (tx_good, rx_good) = tokio::sync::oneshot::channel();
        queue.push(bad.clone(), "bad", false, Some(tx_bad));
        queue.push(good.clone(), "good", false, Some(tx_good));
        let (bad_result, good_result) = (rx_bad.await.unwrap(), rx_good.await.unwrap());
        assert_eq!(bad_result.state, crate::story::RunState::Failed);
        assert!(bad_result.error.unwrap().message.contains("host bug"));
        assert_eq!(good_result.state, crate::story::RunState::Succeeded);
        let stored = engine.store.get_run(&bad).unwrap().unwrap();
        assert_eq!(stored.run.state, "failed", "never left running");
    }

    #[tokio::test]
    async fn healthz_reports_a_store_that_refuses_writes() {
        let store = Arc::new(Flaky::new());
        let story = crate::story::parse("name: s\nsteps:\n  - id: a\n    transform: {set: {x: 1}}\n", std::path::Path::new("s.yaml")).unwrap();
        let mut library = Library::default();
        library.stories.insert("s".into(), Arc::new(story));
        let policy = Arc::new(Policy::empty());
        let rt = Arc::new(Runtime::new(RuntimeConfig { cache_dir: None, max_instances: 4, ..Default::default() }).unwrap());
        let invoker = Arc::new(PolicyInvoker::new(rt, policy.clone()));
        let engine = Arc::new(Engine::with_invoker(invoker, policy, Arc::new(library), store.clone()));
        let (router, _queue) = start(engine.clone(), &ServeOptions { workers: 1, drain: Duration::from_secs(1) }).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        let health = || async { let r = reqwest::get(format!("{base}/healthz")).await.unwrap(); let code = r.status().as_u16(); (code, serde_json::from_slice::<serde_json::Value>(&r.bytes().await.unwrap()).unwrap()) };
        assert_eq!(health().await.0, 200);
        store.fail(None);
        let refused = engine.submit("s", json!({}), "test").await.unwrap_err();
        assert!(refused.to_string().starts_with("run store unavailable"), "{refused}");
        let (code, body) = health().await;
        assert_eq!(code, 503, "{body}");
        assert_eq!(body["status"], "unhealthy");
        assert!(body["reason"].as_str().unwrap().contains("database or disk is full"), "{body}");
        let metrics = reqwest::get(format!("{base}/metrics")).await.unwrap().text().await.unwrap();
        assert!(metrics.contains("warden_store_write_failures_total 1"), "{metrics}");
    }

    #[test]
    fn signatures_verify_and_tampering_fails() {
        let sig = sign(b"k", b"{\"a\":1}");
        assert!(verify_signature(b"k", b"{\"a\":1}", &sig));
        assert!(!verify_signature(b"k", b"{\"a\":2}", &sig));
        assert!(!verify_signature(b"other", b"{\"a\":1}", &sig));
        assert!(!verify_signature(b"k", b"{\"a\":1}", sig.trim_start_matches("sha256=")));
        assert!(!verify_signature(b"k", b"{\"a\":1}", "sha256=zz"));
    }
}
