//! A test origin that records every request and answers in the ways an
//! upstream can misbehave.
//!
//! Routes:
//! * `GET /json` — `{"ok": true}`
//! * `ANY /echo` — echoes method, path, query, headers and body as JSON, and
//!   repeats the `authorization` header back in an `x-echo-authorization` header
//! * `GET /bytes/{n}` — `n` bytes with a Content-Length
//! * `GET /endless` — a chunked body that never ends
//! * `GET /slow` — one byte per second
//! * `GET /redirect?to=URL` — 302 to URL
//! * `GET /internal` — marks that it was reached (redirect targets)

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query};
use crate::Recorder;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use serde_json::json;
use std::collections::HashMap;
use std::time::Duration;

pub fn router(rec: Recorder) -> Router {
    Router::new()
        .route("/json", get(|| async { Json(json!({"ok": true})) }))
        .route("/echo", any(echo))
        .route("/echo/{*rest}", any(echo))
        .route("/bytes/{n}", get(bytes))
        .route("/endless", get(endless))
        .route("/slow", get(slow))
        .route("/redirect", get(redirect))
        .route("/internal", get(|| async { "internal" }))
        .fallback(|| async { (StatusCode::NOT_FOUND, "no such route") })
        .layer(axum::middleware::from_fn_with_state(rec, crate::record))
}

async fn echo(method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let hdrs: HashMap<String, String> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    let auth = hdrs.get("authorization").cloned().unwrap_or_default();
    let body = json!({
        "method": method.to_string(),
        "path": uri.path(),
        "query": uri.query().unwrap_or(""),
        "headers": hdrs,
        "body": String::from_utf8_lossy(&body),
    });
    ([("x-echo-authorization", auth)], Json(body)).into_response()
}

async fn bytes(Path(n): Path<usize>) -> Vec<u8> {
    vec![b'a'; n]
}

async fn endless() -> Response {
    let stream = futures_stream(|| Bytes::from(vec![b'z'; 64 * 1024]), Duration::ZERO);
    Response::new(Body::from_stream(stream))
}

async fn slow() -> Response {
    let stream = futures_stream(|| Bytes::from_static(b"."), Duration::from_secs(1));
    Response::new(Body::from_stream(stream))
}

fn futures_stream(
    chunk: impl Fn() -> Bytes + Send + 'static,
    every: Duration,
) -> impl tokio_stream::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        loop {
            if tx.send(Ok(chunk())).await.is_err() {
                break;
            }
            if !every.is_zero() {
                tokio::time::sleep(every).await;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

async fn redirect(Query(q): Query<HashMap<String, String>>) -> Response {
    let to = q.get("to").cloned().unwrap_or_else(|| "/json".into());
    (StatusCode::FOUND, [("location", to)], "").into_response()
}

/// Convenience: spawn an origin and hand back its recorder.
pub async fn spawn() -> std::io::Result<(crate::Running, Recorder)> {
    let rec = Recorder::default();
    let running = crate::serve(router(rec.clone())).await?;
    Ok((running, rec))
}

