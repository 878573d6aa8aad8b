//! A test origin that records every request and answers in the ways an
//! upstream can misbehave.
//!
//! Routes:
//! * `GET /json` — `{"ok": true}`
//! * `GET /reflect?form=…` — reflects the bearer token in an encoded form (see [`reflect`]).
//! * `ANY /echo` — echoes method, path, query, headers and body as JSON, and
//!   repeats the `authorization` header back in an `x-echo-authorization` header
//! * `GET /bytes/{n}` — `n` bytes with a Content-Length
//! * `GET /endless` — a chunked body that never ends
//! * `GET /slow` — one byte per second
//! * `GET /redirect?to=URL` — 302 to URL
//! * `GET /internal` — marks that it was reached (redirect targets)

use crate::Recorder;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Counters behind `/flaky` and `/hold`.
#[derive(Default)]
pub struct Counters {
    flaky: Mutex<HashMap<String, u32>>,
    in_flight: Mutex<HashMap<String, (usize, usize)>>,
}

impl Counters {
    /// Most `/hold` requests with `key` in flight at once.
    pub fn max_in_flight(&self, key: &str) -> usize {
        self.in_flight.lock().unwrap().get(key).map_or(0, |v| v.1)
    }
    /// Calls made to `/flaky` with `key`.
    pub fn flaky_calls(&self, key: &str) -> u32 {
        self.flaky.lock().unwrap().get(key).copied().unwrap_or(0)
    }
}

pub fn router(rec: Recorder) -> Router {
    router_with(rec, Arc::new(Counters::default()))
}

pub fn router_with(rec: Recorder, counters: Arc<Counters>) -> Router {
    Router::new()
        .route("/json", get(|| async { Json(json!({"ok": true})) }))
        .route("/echo", any(echo))
        .route("/echo/{*rest}", any(echo))
        .route("/reflect", get(reflect))
        .route("/bytes/{n}", get(bytes))
        .route("/endless", get(endless))
        .route("/slow", get(slow))
        .route("/redirect", get(redirect))
        .route("/internal", get(|| async { "internal" }))
        .route("/flaky", get(flaky))
        .route("/hold", get(hold))
        .fallback(|| async { (StatusCode::NOT_FOUND, "no such route") })
        .layer(axum::extract::Extension(counters))
        .layer(axum::middleware::from_fn_with_state(rec, crate::record))
}

async fn echo(method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let hdrs: HashMap<String, String> = headers.iter().map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned())).collect();
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

/// `GET /reflect?form=F&offset=N`: an upstream that reflects the bearer token
/// it received in a form plain byte matching cannot see — the spellings a
/// hostile guest would ask for. Forms: `json-u` (every character `\u00XX`),
/// `json-slash`, `percent-lower`, `percent-upper`, `percent-mixed`, `base64`
/// and `base64url` (after `offset` bytes of padding, to shift the alignment),
/// `hex`, `gzip` (labelled gzip whatever was asked). A `Range` header gets
/// that slice of `token=<token>` as 206.
async fn reflect(headers: HeaderMap, Query(q): Query<HashMap<String, String>>) -> Response {
    use base64::Engine as _;
    let auth = headers.get("authorization").map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()).unwrap_or_default();
    let token = auth.strip_prefix("Bearer ").unwrap_or(&auth).to_string();
    if let Some(range) = headers.get("range").and_then(|v| v.to_str().ok()) {
        let full = format!("token={token}");
        let (a, b) = range.trim_start_matches("bytes=").split_once('-').unwrap_or(("0", ""));
        let a: usize = a.parse().unwrap_or(0).min(full.len());
        let b: usize = b.parse::<usize>().map(|b| b + 1).unwrap_or(full.len()).clamp(a, full.len());
        return (StatusCode::PARTIAL_CONTENT, full[a..b].to_string()).into_response();
    }
    let offset: usize = q.get("offset").and_then(|o| o.parse().ok()).unwrap_or(0);
    let padded: Vec<u8> = std::iter::repeat_n(b'x', offset).chain(token.bytes()).collect();
    let pct = |upper: bool, mixed: bool| -> String {
        token.bytes().enumerate().map(|(i, b)| if upper || (mixed && i % 2 == 0) { format!("%{b:02X}") } else { format!("%{b:02x}") }).collect()
    };
    let body = match q.get("form").map(String::as_str).unwrap_or("") {
        "json-u" => format!("{{\"token\":\"{}\"}}", token.chars().map(|c| format!("\\u{:04x}", c as u32)).collect::<String>()),
        "json-slash" => format!("{{\"token\":\"{}\"}}", token.replace('/', "\\/")),
        "percent-lower" => pct(false, false),
        "percent-upper" => pct(true, false),
        "percent-mixed" => pct(false, true),
        "base64" => base64::engine::general_purpose::STANDARD.encode(&padded),
        "base64url" => base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&padded),
        "hex" => token.bytes().map(|b| format!("{b:02x}")).collect(),
        "gzip" => return ([("content-encoding", "gzip")], format!("pretend-compressed:{}", token.chars().rev().collect::<String>())).into_response(),
        _ => token,
    };
    body.into_response()
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

fn futures_stream(chunk: impl Fn() -> Bytes + Send + 'static, every: Duration) -> impl tokio_stream::Stream<Item = Result<Bytes, std::io::Error>> + Send {
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

/// `GET /flaky?key=K&fail=N`: 503 (Retry-After: 1) for the first N calls with K, then 200.
async fn flaky(axum::extract::Extension(c): axum::extract::Extension<Arc<Counters>>, Query(q): Query<HashMap<String, String>>) -> Response {
    let key = q.get("key").cloned().unwrap_or_default();
    let fail: u32 = q.get("fail").and_then(|f| f.parse().ok()).unwrap_or(1);
    let calls = {
        let mut m = c.flaky.lock().unwrap();
        let n = m.entry(key).or_default();
        *n += 1;
        *n
    };
    if calls <= fail {
        return (StatusCode::SERVICE_UNAVAILABLE, [("retry-after", "1")], "try again").into_response();
    }
    Json(json!({"ok": true, "calls": calls})).into_response()
}

/// `GET /hold?key=K&ms=M&tag=T`: holds the request M ms, counting how many with K overlap.
/// A request whose caller went away (a killed node) stops counting then.
async fn hold(axum::extract::Extension(c): axum::extract::Extension<Arc<Counters>>, Query(q): Query<HashMap<String, String>>) -> Response {
    struct InFlight(Arc<Counters>, String);
    impl Drop for InFlight {
        fn drop(&mut self) {
            if let Some(e) = self.0.in_flight.lock().unwrap().get_mut(&self.1) {
                e.0 -= 1;
            }
        }
    }
    let key = q.get("key").cloned().unwrap_or_default();
    let ms: u64 = q.get("ms").and_then(|f| f.parse().ok()).unwrap_or(100);
    {
        let mut m = c.in_flight.lock().unwrap();
        let e = m.entry(key.clone()).or_default();
        e.0 += 1;
        e.1 = e.1.max(e.0);
    }
    let _counted = InFlight(c.clone(), key);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    Json(json!({"tag": q.get("tag")})).into_response()
}

/// An origin with its counters exposed.
pub async fn spawn_with_counters() -> std::io::Result<(crate::Running, Recorder, Arc<Counters>)> {
    let rec = Recorder::default();
    let counters = Arc::new(Counters::default());
    let running = crate::serve(router_with(rec.clone(), counters.clone())).await?;
    Ok((running, rec, counters))
}

/// Convenience: spawn an origin and hand back its recorder.
pub async fn spawn() -> std::io::Result<(crate::Running, Recorder)> {
    let rec = Recorder::default();
    let running = crate::serve(router(rec.clone())).await?;
    Ok((running, rec))
}
