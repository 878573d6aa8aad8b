//! `POST /webhooks/{story}` in three parts a newcomer can read in order:
//!
//! 1. [`Verified`] — an axum extractor: every check a request passes before
//!    it may start anything (this node takes webhooks, the story has one and
//!    is loaded, the body's size and type, the signature, the
//!    `Idempotency-Key`'s spelling). Its rejection is the HTTP answer.
//! 2. [`accept`] — a retry that names its run gets that run; the body as
//!    JSON; `?wait=true` only where the trigger allows it; a replayed
//!    signature starts nothing; then the engine accepts the run.
//! 3. [`dispatch`] — the queue runs it; the caller is answered now (`202`),
//!    at its end (`?wait=true`), or as an imported Tines webhook answers.

use super::signature::{self, Rejected};
use super::{error, received, AppState, MAX_IDEMPOTENCY_KEY};
use crate::store::off_runtime;
use crate::story::engine::{Accepted, Creation, NewlyAccepted, SubmitError};
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize)]
struct WebhookQuery {
    #[serde(default)]
    wait: bool,
}

/// A webhook request that passed every check: signed by the holder of its
/// story's secret, within the trigger's limits.
pub(super) struct Verified {
    story: String,
    /// `?wait=true`: answer at the run's end.
    wait: bool,
    body: Bytes,
    idempotency_key: Option<String>,
    /// What the replay cache knows this request by.
    signed: signature::Verified,
    /// When it was verified (Unix seconds).
    at: i64,
}

impl FromRequest<AppState> for Verified {
    type Rejection = Response;

    async fn from_request(req: Request, s: &AppState) -> Result<Self, Response> {
        let (mut parts, body) = req.into_parts();
        let Path(story) = Path::<String>::from_request_parts(&mut parts, s).await.map_err(IntoResponse::into_response)?;
        let Query(q) = Query::<WebhookQuery>::from_request_parts(&mut parts, s).await.map_err(IntoResponse::into_response)?;
        if !s.queue.role.takes_webhooks() {
            return Err(error(StatusCode::SERVICE_UNAVAILABLE, "this node takes no webhooks (--role worker); send them to a node with --role intake or all"));
        }
        let Some(trigger) = s.policy.triggers.get(&story).filter(|t| t.secret.is_some()) else {
            return Err(error(StatusCode::NOT_FOUND, format!("no webhook for story `{}`", crate::invocation::guest_text(&story, 64))));
        };
        if s.engine.library.get(&story).is_none() {
            return Err(error(StatusCode::NOT_FOUND, format!("story `{story}` is not loaded")));
        }
        let headers = parts.headers.clone();
        // Read within the server's body limit (its own rejection, 413, past it).
        let body = Bytes::from_request(Request::from_parts(parts, body), s).await.map_err(IntoResponse::into_response)?;
        if body.len() as u64 > trigger.max_body {
            return Err(error(StatusCode::PAYLOAD_TOO_LARGE, format!("body is {} bytes; this webhook takes at most {}", body.len(), trigger.max_body)));
        }
        let is_json = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case("application/json"));
        if !is_json {
            return Err(error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "send Content-Type: application/json"));
        }
        let secret = match trigger.secret.as_ref().expect("filtered above").read() {
            Ok(v) => v,
            Err(why) => {
                tracing::error!(story, "webhook secret unavailable: {why}");
                return Err(error(StatusCode::SERVICE_UNAVAILABLE, "this webhook's secret is not configured on the server"));
            }
        };
        let at = chrono::Utc::now().timestamp();
        let signed = match signature::verify(trigger.signature, secret.expose().as_bytes(), &story, &headers, &body, at, trigger.tolerance_secs) {
            Ok(v) => v,
            Err(Rejected::Unsigned(m) | Rejected::Invalid(m)) => return Err(error(StatusCode::UNAUTHORIZED, m)),
            Err(Rejected::Replayed) => unreachable!("verify does not judge replays"),
        };
        let idempotency_key = match headers.get("idempotency-key").map(|v| v.to_str()) {
            None => None,
            Some(Ok(k)) if !k.is_empty() && k.len() <= MAX_IDEMPOTENCY_KEY => Some(k.to_string()),
            Some(_) => return Err(error(StatusCode::BAD_REQUEST, format!("Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"))),
        };
        Ok(Verified { story, wait: q.wait, body, idempotency_key, signed, at })
    }
}

/// A run the engine accepted for a webhook, still to be dispatched.
pub(super) struct Started {
    run: NewlyAccepted,
    wait: bool,
    /// To forget the request when the run could not be recorded after all
    /// (the sender may send it again).
    story: String,
    signed: signature::Verified,
}

fn existing(id: &str) -> Response {
    (StatusCode::OK, Json(json!({"run_id": id, "status_url": format!("/api/runs/{id}"), "existing": true}))).into_response()
}

/// Makes the run a verified request asks for; `Err` is the answer when none
/// is made (a retry of an earlier run, a bad body, a replay).
pub(super) async fn accept(s: &AppState, v: Verified) -> Result<Started, Response> {
    let Verified { story, wait, body, idempotency_key, signed, at } = v;
    // A retry that names its run gets that run; otherwise a request seen before is a replay.
    if let Some(key) = idempotency_key.clone() {
        let named = story.clone();
        match off_runtime(&s.engine.store, move |st| st.run_by_idempotency_key(&named, &key)).await {
            Ok(Some(id)) => return Err(existing(&id)),
            Ok(None) => {}
            Err(e) => return Err(error(StatusCode::INTERNAL_SERVER_ERROR, format!("run store unavailable: {e:#}"))),
        }
    }
    let input: serde_json::Value = match received::json(&body) {
        Ok(v) => v,
        Err(e) => return Err(error(StatusCode::BAD_REQUEST, format!("body is not JSON: {e}"))),
    };
    let allow_sync = s.policy.triggers.get(&story).is_some_and(|t| t.allow_sync);
    if wait && !allow_sync {
        return Err(error(StatusCode::BAD_REQUEST, format!("story `{story}` does not allow ?wait=true (allow_sync in its trigger)")));
    }
    if s.replays.first_time(&story, &signed, at).is_err() {
        return Err(error(
            StatusCode::CONFLICT,
            "this signed request was already received; a replay starts no run (send an Idempotency-Key to get the first run back)",
        ));
    }
    // A waiting caller is told of the run only at its end, so its creation
    // need not be durable on its own: alone, it commits with the run's first
    // awaited write; in a cluster, this node creates and claims it in one go.
    let creation = match (wait, s.engine.store.cluster().is_some()) {
        (false, _) => Creation::Durable,
        (true, false) => Creation::WithFirstWrite,
        (true, true) => Creation::ByCaller,
    };
    match s.engine.accept(&story, input, "webhook", idempotency_key.as_deref(), creation).await {
        Ok(Accepted::Existing(id)) => Err(existing(&id)),
        Ok(Accepted::New(run)) => Ok(Started { run, wait, story, signed }),
        Err(e) => {
            // No run was made: the sender may send the same request again.
            s.replays.forget(&story, &signed);
            Err(match e {
                SubmitError::InvalidInput(m) => error(StatusCode::UNPROCESSABLE_ENTITY, m),
                e => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            })
        }
    }
}

/// Hands the run to the queue and answers the caller.
pub(super) async fn dispatch(s: &AppState, started: Started, trace: Option<opentelemetry::trace::SpanContext>) -> Response {
    let Started { run, wait, story, signed } = started;
    let run_id = run.id.clone();
    let graph_response = run.story.graph().is_some().then(|| (run.story.clone(), run.input.clone()));
    if let (Some(t), Some(parent)) = (&s.telemetry, trace) {
        t.adopt(&run_id, parent, "webhook");
    }
    match s.queue.dispatch(run, wait).await {
        Ok(Some(result)) => (StatusCode::OK, Json(result)).into_response(),
        Ok(None) => {
            match graph_response.as_ref().and_then(|(story, input)| warden_graph::webhook_response(story, input, &run_id, &s.engine.policy.resources)) {
                // An imported Tines webhook's own answer (the run goes on; its id in a header).
                Some(Ok((code, body))) => {
                    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::CREATED);
                    let mut response = match body {
                        serde_json::Value::String(text) => match serde_json::from_str::<serde_json::Value>(&text) {
                            Ok(v) if v.is_object() || v.is_array() => (status, Json(v)).into_response(),
                            _ => (status, text).into_response(),
                        },
                        other => (status, Json(other)).into_response(),
                    };
                    if let Ok(v) = axum::http::HeaderValue::from_str(&run_id) {
                        response.headers_mut().insert("x-warden-run", v);
                    }
                    response
                }
                Some(Err(why)) => {
                    tracing::warn!(story, run = %run_id, "the webhook's response did not render: {why}");
                    (StatusCode::ACCEPTED, Json(json!({"run_id": run_id, "status_url": format!("/api/runs/{run_id}"), "response_error": why}))).into_response()
                }
                None => (StatusCode::ACCEPTED, Json(json!({"run_id": run_id, "status_url": format!("/api/runs/{run_id}")}))).into_response(),
            }
        }
        Err(e) => {
            // Not recorded: the sender may send the same request again.
            s.replays.forget(&story, &signed);
            if let Some(t) = &s.telemetry {
                t.forget(&run_id);
            }
            error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
    }
}
