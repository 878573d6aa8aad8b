//! HTTP mail APIs: SendGrid v3 and Mailgun.
//!
//! * `POST /v3/mail/send` (SendGrid) — `Authorization: Bearer <key>`, JSON →
//!   202 with an `X-Message-Id` header; 400/401 `{"errors":[{message, field, help}]}`
//! * `POST /v3/{domain}/messages` (Mailgun) — Basic `api:<key>`, form fields →
//!   200 `{"id":"<…>","message":"Queued. Thank you."}`; errors `{"message":"…"}`

use crate::{Recorder, Running};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Form, Json, Router};
use base64::Engine as _;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone)]
pub struct Config {
    pub sendgrid_key: String,
    pub mailgun_key: String,
    pub mailgun_domain: String,
}

impl Default for Config {
    fn default() -> Self {
        Config { sendgrid_key: "SG.demo-key".into(), mailgun_key: "mg-demo-key".into(), mailgun_domain: "mg.corp.example".into() }
    }
}

/// A message an API accepted, as JSON (SendGrid body, or Mailgun fields).
pub struct Sim {
    pub config: Config,
    pub accepted: Mutex<Vec<Value>>,
    pub recorder: Recorder,
}

pub fn router(sim: Arc<Sim>) -> Router {
    let rec = sim.recorder.clone();
    Router::new()
        .route("/v3/mail/send", post(sendgrid))
        .route("/v3/{domain}/messages", post(mailgun))
        .with_state(sim)
        .layer(axum::middleware::from_fn_with_state(rec, crate::record))
}

pub async fn spawn(config: Config) -> std::io::Result<(Running, Arc<Sim>)> {
    let sim = Arc::new(Sim { config, accepted: Mutex::default(), recorder: Recorder::default() });
    let running = crate::serve(router(sim.clone())).await?;
    Ok((running, sim))
}

fn sg_error(status: StatusCode, message: &str, field: Option<&str>) -> Response {
    (status, Json(json!({"errors": [{"message": message, "field": field, "help": null}]}))).into_response()
}

async fn sendgrid(State(sim): State<Arc<Sim>>, headers: HeaderMap, body: Option<Json<Value>>) -> Response {
    let expected = format!("Bearer {}", sim.config.sendgrid_key);
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
        return sg_error(StatusCode::UNAUTHORIZED, "The provided authorization grant is invalid, expired, or revoked", None);
    }
    let Some(Json(b)) = body else {
        return sg_error(StatusCode::BAD_REQUEST, "Bad Request", None);
    };
    let to = &b["personalizations"][0]["to"];
    if to.as_array().is_none_or(|a| a.is_empty() || a.iter().any(|t| !t["email"].as_str().unwrap_or("").contains('@'))) {
        return sg_error(StatusCode::BAD_REQUEST, "The to array is required and must contain valid email addresses.", Some("personalizations.0.to"));
    }
    if !b["from"]["email"].as_str().unwrap_or("").contains('@') {
        return sg_error(StatusCode::BAD_REQUEST, "The from email does not contain a valid address.", Some("from.email"));
    }
    if b["subject"].as_str().is_none_or(str::is_empty) {
        return sg_error(StatusCode::BAD_REQUEST, "The subject is required.", Some("subject"));
    }
    if b["content"].as_array().is_none_or(|c| c.is_empty()) {
        return sg_error(StatusCode::BAD_REQUEST, "The content value must be a string at least one character in length.", Some("content.0.value"));
    }
    let mut accepted = sim.accepted.lock().unwrap();
    accepted.push(b);
    let id = format!("sg-{:06}", accepted.len());
    (StatusCode::ACCEPTED, [("x-message-id", id)]).into_response()
}

async fn mailgun(
    State(sim): State<Arc<Sim>>,
    Path(domain): Path<String>,
    headers: HeaderMap,
    form: Result<Form<Vec<(String, String)>>, axum::extract::rejection::FormRejection>,
) -> Response {
    let expected = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("api:{}", sim.config.mailgun_key)));
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
        return (StatusCode::UNAUTHORIZED, Json(json!({"message": "Invalid private key"}))).into_response();
    }
    if domain != sim.config.mailgun_domain {
        return (StatusCode::NOT_FOUND, Json(json!({"message": format!("Domain not found: {domain}")}))).into_response();
    }
    let Ok(Form(fields)) = form else {
        return (StatusCode::BAD_REQUEST, Json(json!({"message": "form body required"}))).into_response();
    };
    let get = |k: &str| fields.iter().find(|(f, _)| f == k).map(|(_, v)| v.clone());
    for required in ["from", "to", "subject"] {
        if get(required).is_none_or(|v| v.is_empty()) {
            return (StatusCode::BAD_REQUEST, Json(json!({"message": format!("{required} parameter is missing")}))).into_response();
        }
    }
    let value: serde_json::Map<String, Value> = fields.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
    let mut accepted = sim.accepted.lock().unwrap();
    accepted.push(Value::Object(value));
    let id = format!("<{:06}.mg@{domain}>", accepted.len());
    Json(json!({"id": id, "message": "Queued. Thank you."})).into_response()
}
