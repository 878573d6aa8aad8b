//! ServiceNow Table API for `incident`, the subset the `servicenow-incident`
//! plugin speaks.
//!
//! * `POST  /api/now/table/incident` → 201 `{result: {sys_id, number, state, …}}`
//! * `PATCH /api/now/table/incident/{sys_id}` (`work_notes`, `comments`, fields)
//!   → 200 `{result}`; journal fields are appended to the record's journal
//! * `GET   /api/now/table/incident/{sys_id}` → 200 `{result}`; 404 when unknown
//! * `GET   /api/now/table/incident?sysparm_query=number=INC…&sysparm_limit=1`
//!   → 200 `{result: […]}`
//!
//! `sysparm_fields` narrows a result. Values are strings, as ServiceNow sends
//! them. Auth: Basic `user:password` or `Bearer <token>`; otherwise 401
//! `{error: {message: "User Not Authenticated", detail: "Required to provide
//! Auth information"}, status: "failure"}`. `throttle_next` answers 429 with
//! `Retry-After` (a rate-limit rule).

use crate::{Recorder, Running};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine as _;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone)]
pub struct Config {
    pub user: String,
    pub password: String,
    /// Accepted as `Authorization: Bearer …` (an OAuth token) besides basic.
    pub bearer: Option<String>,
    pub throttle_next: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config { user: "warden.integration".into(), password: "snow-demo-password".into(), bearer: None, throttle_next: 0 }
    }
}

/// An incident as stored: its fields, and the journal (work notes and comments).
#[derive(Debug, Clone)]
pub struct Incident {
    pub fields: Map<String, Value>,
    pub work_notes: Vec<String>,
    pub comments: Vec<String>,
}

pub struct Sim {
    pub config: Mutex<Config>,
    pub incidents: Mutex<BTreeMap<String, Incident>>,
    pub recorder: Recorder,
}

impl Sim {
    pub fn new(config: Config) -> Arc<Sim> {
        Arc::new(Sim { config: Mutex::new(config), incidents: Mutex::default(), recorder: Recorder::default() })
    }
    pub fn incident(&self, number: &str) -> Option<Incident> {
        self.incidents.lock().unwrap().values().find(|i| i.fields["number"] == number).cloned()
    }
    pub fn count(&self) -> usize {
        self.incidents.lock().unwrap().len()
    }
    pub fn throttle_next(&self, n: u32) {
        self.config.lock().unwrap().throttle_next = n;
    }
    /// Moves an incident to another state code (as an analyst would).
    pub fn set_state(&self, number: &str, state: &str) {
        for i in self.incidents.lock().unwrap().values_mut() {
            if i.fields["number"] == number {
                i.fields.insert("state".into(), json!(state));
            }
        }
    }
}

pub fn router(sim: Arc<Sim>) -> Router {
    let rec = sim.recorder.clone();
    Router::new()
        .route("/api/now/table/incident", get(query).post(create))
        .route("/api/now/table/incident/{sys_id}", get(read).patch(update))
        .layer(axum::middleware::from_fn_with_state(sim.clone(), gate))
        .with_state(sim)
        .layer(axum::middleware::from_fn_with_state(rec, crate::record))
}

pub async fn spawn(config: Config) -> std::io::Result<(Running, Arc<Sim>)> {
    let sim = Sim::new(config);
    let running = crate::serve(router(sim.clone())).await?;
    Ok((running, sim))
}

fn failure(status: StatusCode, message: &str, detail: &str) -> Response {
    (status, Json(json!({"error": {"message": message, "detail": detail}, "status": "failure"}))).into_response()
}

async fn gate(State(sim): State<Arc<Sim>>, req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    {
        let mut cfg = sim.config.lock().unwrap();
        if cfg.throttle_next > 0 {
            cfg.throttle_next -= 1;
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", "1"), ("x-ratelimit-rule", "warden-integration")],
                Json(json!({"error": {"message": "Too many requests", "detail": "Rate limit rule warden-integration exceeded"}, "status": "failure"})),
            )
                .into_response();
        }
        let basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", cfg.user, cfg.password)));
        let given = req.headers().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
        let ok = given == basic || cfg.bearer.as_ref().is_some_and(|b| given == format!("Bearer {b}"));
        if !ok {
            return failure(StatusCode::UNAUTHORIZED, "User Not Authenticated", "Required to provide Auth information");
        }
    }
    next.run(req).await
}

const STATES: [(&str, &str); 6] = [("1", "New"), ("2", "In Progress"), ("3", "On Hold"), ("6", "Resolved"), ("7", "Closed"), ("8", "Canceled")];

fn fields_of(inc: &Incident, q: &HashMap<String, String>) -> Value {
    match q.get("sysparm_fields") {
        Some(list) => {
            let wanted: Vec<&str> = list.split(',').map(str::trim).collect();
            Value::Object(inc.fields.iter().filter(|(k, _)| wanted.contains(&k.as_str())).map(|(k, v)| (k.clone(), v.clone())).collect())
        }
        None => Value::Object(inc.fields.clone()),
    }
}

fn body_object(headers: &HeaderMap, body: &[u8]) -> Result<Map<String, Value>, Response> {
    let ct = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
    if !ct.starts_with("application/json") {
        return Err(failure(StatusCode::UNSUPPORTED_MEDIA_TYPE, "Invalid media type", "Content-Type must be application/json"));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(failure(StatusCode::BAD_REQUEST, "Exception while reading request", "The payload is not valid JSON.")),
    }
}

const WRITABLE: [&str; 12] = [
    "short_description",
    "description",
    "urgency",
    "impact",
    "category",
    "subcategory",
    "assignment_group",
    "caller_id",
    "contact_type",
    "state",
    "close_code",
    "close_notes",
];

fn apply(inc: &mut Incident, body: Map<String, Value>) -> Result<(), Response> {
    for (k, v) in body {
        let text = match &v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => return Err(failure(StatusCode::BAD_REQUEST, "Invalid value", &format!("field {k} must be a string"))),
        };
        match k.as_str() {
            "work_notes" => inc.work_notes.push(text),
            "comments" => inc.comments.push(text),
            "urgency" | "impact" if !["1", "2", "3"].contains(&text.as_str()) => {
                return Err(failure(StatusCode::BAD_REQUEST, "Invalid value", &format!("{k} must be 1, 2 or 3")));
            }
            "state" if !STATES.iter().any(|(c, _)| *c == text) => {
                return Err(failure(StatusCode::BAD_REQUEST, "Invalid value", "state is not a valid choice"));
            }
            f if WRITABLE.contains(&f) => {
                inc.fields.insert(k, json!(text));
            }
            // Unknown fields are ignored by the Table API, as here.
            _ => {}
        }
    }
    // Priority follows impact × urgency, as ServiceNow's default lookup does.
    let n = |f: &str| inc.fields.get(f).and_then(Value::as_str).and_then(|s| s.parse::<u32>().ok()).unwrap_or(3);
    let priority = (n("impact") + n("urgency") - 1).min(5);
    inc.fields.insert("priority".into(), json!(priority.to_string()));
    Ok(())
}

async fn create(State(sim): State<Arc<Sim>>, headers: HeaderMap, Query(q): Query<HashMap<String, String>>, body: axum::body::Bytes) -> Response {
    let body = match body_object(&headers, &body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    if body.get("short_description").and_then(Value::as_str).is_none_or(str::is_empty) {
        return failure(StatusCode::BAD_REQUEST, "Mandatory field missing", "short_description is mandatory");
    }
    let mut incidents = sim.incidents.lock().unwrap();
    let n = incidents.len() + 1;
    let sys_id = format!("{:032x}", 0x9d38_5017_c611_2280_0000_0000_0000_0000u128 + n as u128);
    let mut fields = Map::new();
    fields.insert("sys_id".into(), json!(sys_id));
    fields.insert("number".into(), json!(format!("INC{:07}", 10_000 + n)));
    fields.insert("state".into(), json!("1"));
    fields.insert("impact".into(), json!("3"));
    fields.insert("urgency".into(), json!("3"));
    fields.insert("sys_created_on".into(), json!("2024-05-01 10:15:00"));
    let mut inc = Incident { fields, work_notes: Vec::new(), comments: Vec::new() };
    if let Err(r) = apply(&mut inc, body) {
        return r;
    }
    let answer = fields_of(&inc, &q);
    incidents.insert(sys_id.clone(), inc);
    (StatusCode::CREATED, [("location", format!("/api/now/table/incident/{sys_id}"))], Json(json!({"result": answer}))).into_response()
}

async fn read(State(sim): State<Arc<Sim>>, Path(sys_id): Path<String>, Query(q): Query<HashMap<String, String>>) -> Response {
    match sim.incidents.lock().unwrap().get(&sys_id) {
        Some(inc) => Json(json!({"result": fields_of(inc, &q)})).into_response(),
        None => failure(StatusCode::NOT_FOUND, "No Record found", "Record doesn't exist or ACL restricts the record retrieval"),
    }
}

async fn update(
    State(sim): State<Arc<Sim>>,
    Path(sys_id): Path<String>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    body: axum::body::Bytes,
) -> Response {
    let body = match body_object(&headers, &body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let mut incidents = sim.incidents.lock().unwrap();
    let Some(inc) = incidents.get_mut(&sys_id) else {
        return failure(StatusCode::NOT_FOUND, "No Record found", "Record doesn't exist or ACL restricts the record retrieval");
    };
    if let Err(r) = apply(inc, body) {
        return r;
    }
    Json(json!({"result": fields_of(inc, &q)})).into_response()
}

async fn query(State(sim): State<Arc<Sim>>, Query(q): Query<HashMap<String, String>>) -> Response {
    // Only `number=<value>` queries, which is what the plugin sends.
    let wanted = q.get("sysparm_query").and_then(|s| s.strip_prefix("number=")).map(str::to_string);
    let limit: usize = q.get("sysparm_limit").and_then(|l| l.parse().ok()).unwrap_or(10_000);
    let incidents = sim.incidents.lock().unwrap();
    let found: Vec<Value> =
        incidents.values().filter(|i| wanted.as_ref().is_none_or(|n| i.fields["number"] == n.as_str())).take(limit).map(|i| fields_of(i, &q)).collect();
    Json(json!({"result": found})).into_response()
}

/// The display name of a state code.
pub fn state_name(code: &str) -> Option<&'static str> {
    STATES.iter().find(|(c, _)| *c == code).map(|(_, n)| *n)
}
