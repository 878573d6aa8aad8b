//! CrowdStrike Falcon API: OAuth2 client credentials and host containment.
//!
//! * `POST /oauth2/token` (form `client_id`, `client_secret`; or the pair as
//!   HTTP Basic) → 201 `{access_token, token_type: "bearer", expires_in}`;
//!   wrong client → 401 `{errors: [{code: 401, message: "access denied, invalid client"}]}`
//! * `POST /devices/entities/devices-actions/v2?action_name=contain|lift_containment`
//!   `{ids: [...]}` with `Authorization: Bearer <token>` → 202 `{meta, resources:
//!   [{id, path}], errors: []}`; unknown ids are listed in `errors` (code 404);
//!   a bad or expired token → 401 `{errors: [{code: 401, message: "access
//!   denied, invalid bearer token"}]}`; rate limiting → 429 with
//!   `X-RateLimit-RetryAfter` (epoch seconds) and `Retry-After`.
//!
//! [`Sim::expire_tokens`] makes every token issued so far invalid, as an
//! expiry or revocation would (a client must fetch a new one).

use crate::{Recorder, Running};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine as _;
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone)]
pub struct Config {
    pub client_id: String,
    pub client_secret: String,
    /// Lifetime of issued tokens (CrowdStrike's is 1799 s).
    pub expires_in: u64,
    /// Device ids of the fleet.
    pub devices: Vec<String>,
    pub throttle_next: u32,
}

pub const ALICE: &str = "4f9a6c1de2b34b0f9a1c2d3e4f5a6b01";
pub const BOB: &str = "4f9a6c1de2b34b0f9a1c2d3e4f5a6b02";

impl Default for Config {
    fn default() -> Self {
        Config {
            client_id: "cs-demo-client".into(),
            client_secret: "cs-demo-secret".into(),
            expires_in: 1799,
            devices: vec![ALICE.into(), BOB.into()],
            throttle_next: 0,
        }
    }
}

#[derive(Default)]
pub struct Fleet {
    /// Tokens valid now.
    pub tokens: BTreeSet<String>,
    /// How many tokens were issued.
    pub issued: u32,
    /// Device ids contained now.
    pub contained: BTreeSet<String>,
    /// Every action: (action_name, ids).
    pub actions: Vec<(String, Vec<String>)>,
}

pub struct Sim {
    pub config: Mutex<Config>,
    pub state: Mutex<Fleet>,
    pub recorder: Recorder,
}

impl Sim {
    pub fn new(config: Config) -> Arc<Sim> {
        Arc::new(Sim { config: Mutex::new(config), state: Mutex::default(), recorder: Recorder::default() })
    }
    pub fn tokens_issued(&self) -> u32 {
        self.state.lock().unwrap().issued
    }
    /// Every token issued so far stops working.
    pub fn expire_tokens(&self) {
        self.state.lock().unwrap().tokens.clear();
    }
    /// The tokens valid now (for tests that look for them where they must not be).
    pub fn valid_tokens(&self) -> Vec<String> {
        self.state.lock().unwrap().tokens.iter().cloned().collect()
    }
    pub fn contained(&self) -> Vec<String> {
        self.state.lock().unwrap().contained.iter().cloned().collect()
    }
    pub fn throttle_next(&self, n: u32) {
        self.config.lock().unwrap().throttle_next = n;
    }
}

pub fn router(sim: Arc<Sim>) -> Router {
    let rec = sim.recorder.clone();
    Router::new()
        .route("/oauth2/token", post(token))
        .route("/devices/entities/devices-actions/v2", post(device_action))
        .with_state(sim)
        .layer(axum::middleware::from_fn_with_state(rec, crate::record))
}

pub async fn spawn(config: Config) -> std::io::Result<(Running, Arc<Sim>)> {
    let sim = Sim::new(config);
    let running = crate::serve(router(sim.clone())).await?;
    Ok((running, sim))
}

fn meta() -> Value {
    json!({"query_time": 0.004, "powered_by": "device-actions", "trace_id": "9f8e7d6c-sim"})
}

fn errors(status: StatusCode, code: u16, message: &str) -> Response {
    (status, Json(json!({"meta": meta(), "resources": [], "errors": [{"code": code, "message": message}]}))).into_response()
}

async fn token(State(sim): State<Arc<Sim>>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let cfg = sim.config.lock().unwrap().clone();
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let mut id = form.get("client_id").cloned();
    let mut secret = form.get("client_secret").cloned();
    if let Some(basic) = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Basic ")) {
        if let Some((i, s)) = base64::engine::general_purpose::STANDARD
            .decode(basic)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|p| p.split_once(':').map(|(a, b)| (a.to_string(), b.to_string())))
        {
            id = Some(i);
            secret = Some(s);
        }
    }
    if form.get("grant_type").is_some_and(|g| g != "client_credentials") {
        return errors(StatusCode::BAD_REQUEST, 400, "unsupported grant_type");
    }
    if id.as_deref() != Some(&cfg.client_id) || secret.as_deref() != Some(&cfg.client_secret) {
        return errors(StatusCode::UNAUTHORIZED, 401, "access denied, invalid client");
    }
    let mut st = sim.state.lock().unwrap();
    st.issued += 1;
    let token = format!("eyJhbGciOiJSUzI1NiJ9.cs-sim-{:04}-{}", st.issued, "k3J9qZx7LmT2vB8n");
    st.tokens.insert(token.clone());
    (StatusCode::CREATED, Json(json!({"access_token": token, "token_type": "bearer", "expires_in": cfg.expires_in}))).into_response()
}

async fn device_action(State(sim): State<Arc<Sim>>, headers: HeaderMap, Query(q): Query<HashMap<String, String>>, body: axum::body::Bytes) -> Response {
    {
        let mut cfg = sim.config.lock().unwrap();
        if cfg.throttle_next > 0 {
            cfg.throttle_next -= 1;
            let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 1;
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [
                    ("x-ratelimit-limit", "6000".to_string()),
                    ("x-ratelimit-remaining", "0".to_string()),
                    ("x-ratelimit-retryafter", at.to_string()),
                    ("retry-after", "1".to_string()),
                ],
                Json(json!({"meta": meta(), "resources": [], "errors": [{"code": 429, "message": "API rate limit exceeded."}]})),
            )
                .into_response();
        }
    }
    let bearer = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).unwrap_or("");
    if !sim.state.lock().unwrap().tokens.contains(bearer) {
        return errors(StatusCode::UNAUTHORIZED, 401, "access denied, invalid bearer token");
    }
    let action = q.get("action_name").cloned().unwrap_or_default();
    if !["contain", "lift_containment"].contains(&action.as_str()) {
        return errors(
            StatusCode::BAD_REQUEST,
            400,
            "action_name must be one of: contain, lift_containment, hide_host, unhide_host, detection_suppress, detection_unsuppress",
        );
    }
    let Ok(body) = serde_json::from_slice::<Value>(&body) else { return errors(StatusCode::BAD_REQUEST, 400, "invalid JSON body") };
    let Some(ids) = body["ids"].as_array() else { return errors(StatusCode::BAD_REQUEST, 400, "ids is required") };
    if ids.is_empty() || ids.len() > 100 {
        return errors(StatusCode::BAD_REQUEST, 400, "ids must hold 1 to 100 device ids");
    }
    let devices = sim.config.lock().unwrap().devices.clone();
    let mut st = sim.state.lock().unwrap();
    let mut resources = Vec::new();
    let mut errs = Vec::new();
    let mut acted = Vec::new();
    for id in ids.iter().filter_map(Value::as_str) {
        if devices.iter().any(|d| d == id) {
            if action == "contain" {
                st.contained.insert(id.to_string());
            } else {
                st.contained.remove(id);
            }
            acted.push(id.to_string());
            resources.push(json!({"id": id, "path": format!("/devices/entities/devices/v1?ids={id}")}));
        } else {
            errs.push(json!({"code": 404, "message": format!("Device {id} not found"), "id": id}));
        }
    }
    st.actions.push((action, acted));
    let status = if resources.is_empty() { StatusCode::NOT_FOUND } else { StatusCode::ACCEPTED };
    (status, Json(json!({"meta": meta(), "resources": resources, "errors": errs}))).into_response()
}
