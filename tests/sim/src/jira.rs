//! Jira Cloud REST v2/v3 and Jira Service Management, the subset the
//! `jira-ticket` plugin speaks.
//!
//! * `POST /rest/api/{2,3}/issue` → 201 `{id, key, self}`; 400 `{errorMessages, errors}`
//! * `POST /rest/api/{2,3}/issue/{key}/comment` → 201 `{id, self, author, body, created, updated}`
//! * `GET  /rest/api/{2,3}/issue/{key}?fields=status` → `{id, key, self, fields:{status}}`
//! * `POST /rest/servicedeskapi/request` → 201 `{issueId, issueKey, currentStatus, _links}`
//!
//! v2 bodies are strings, v3 bodies Atlassian Document Format. Auth is Basic
//! `email:api_token`; anything else is 401. `throttle_next` answers the next N
//! requests with 429 and `Retry-After: 1`.

use crate::{Recorder, Running};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone)]
pub struct Config {
    pub email: String,
    pub token: String,
    pub projects: Vec<String>,
    pub service_desks: Vec<(String, String)>,
    /// Answer the next N requests with 429 (Retry-After: 1).
    pub throttle_next: u32,
    /// The site's public base URL, used in `self` and `_links`.
    pub site: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            email: "warden-bot@corp.example".into(),
            token: "jira-demo-token".into(),
            projects: vec!["SEC".into()],
            service_desks: vec![("1".into(), "10".into())],
            throttle_next: 0,
            site: String::new(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Issue {
    pub id: u64,
    pub key: String,
    pub fields: Value,
    pub comments: Vec<Value>,
    pub status: (String, String, String),
}

pub struct Sim {
    pub config: Mutex<Config>,
    pub issues: Mutex<BTreeMap<String, Issue>>,
    next_id: Mutex<u64>,
    pub recorder: Recorder,
}

impl Sim {
    pub fn new(config: Config) -> Arc<Sim> {
        Arc::new(Sim { config: Mutex::new(config), issues: Mutex::default(), next_id: Mutex::new(10_000), recorder: Recorder::default() })
    }
    pub fn issue(&self, key: &str) -> Option<Issue> {
        self.issues.lock().unwrap().get(key).cloned()
    }
    pub fn issue_count(&self) -> usize {
        self.issues.lock().unwrap().len()
    }
    pub fn throttle_next(&self, n: u32) {
        self.config.lock().unwrap().throttle_next = n;
    }
    fn site(&self) -> String {
        self.config.lock().unwrap().site.clone()
    }
}

pub fn router(sim: Arc<Sim>) -> Router {
    let rec = sim.recorder.clone();
    Router::new()
        .route("/rest/api/{version}/issue", post(create_issue))
        .route("/rest/api/{version}/issue/{key}/comment", post(add_comment))
        .route("/rest/api/{version}/issue/{key}", get(get_issue))
        .route("/rest/servicedeskapi/request", post(create_request))
        .with_state(sim.clone())
        .layer(axum::middleware::from_fn_with_state(sim, gate))
        .layer(axum::middleware::from_fn_with_state(rec, crate::record))
}

pub async fn spawn(config: Config) -> std::io::Result<(Running, Arc<Sim>)> {
    let sim = Sim::new(config);
    let running = crate::serve(router(sim.clone())).await?;
    if sim.config.lock().unwrap().site.is_empty() {
        sim.config.lock().unwrap().site = format!("http://{}", running.addr);
    }
    Ok((running, sim))
}

fn errors(status: StatusCode, messages: &[&str], fields: &[(&str, &str)]) -> Response {
    let errs: Map<String, Value> = fields.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
    (status, Json(json!({"errorMessages": messages, "errors": errs}))).into_response()
}

/// Auth and throttling, before any route.
async fn gate(State(sim): State<Arc<Sim>>, req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    {
        let mut cfg = sim.config.lock().unwrap();
        if cfg.throttle_next > 0 {
            cfg.throttle_next -= 1;
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", "1"), ("x-ratelimit-limit", "100"), ("x-ratelimit-remaining", "0")],
                Json(json!({"errorMessages": ["Rate limit exceeded."], "errors": {}})),
            )
                .into_response();
        }
        let expected = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", cfg.email, cfg.token)));
        if req.headers().get("authorization").and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
            return errors(StatusCode::UNAUTHORIZED, &["You are not authenticated. Authentication required to perform this operation."], &[]);
        }
    }
    next.run(req).await
}

fn version_ok(v: &str) -> bool {
    v == "2" || v == "3"
}

fn is_adf(v: &Value) -> bool {
    v["type"] == "doc" && v["version"] == 1 && v["content"].is_array()
}

/// v2 wants a string body, v3 an Atlassian Document.
fn body_error(version: &str, v: &Value) -> Option<&'static str> {
    match version {
        "2" if !v.is_string() => Some("Operation value must be a string"),
        "3" if !is_adf(v) => Some("Operation value must be an Atlassian Document (see the Atlassian Document Format)"),
        _ => None,
    }
}

fn new_issue(sim: &Sim, project: &str, fields: Value, status: (&str, &str, &str)) -> Issue {
    let mut next = sim.next_id.lock().unwrap();
    *next += 1;
    let mut issues = sim.issues.lock().unwrap();
    let n = issues.keys().filter(|k| k.starts_with(&format!("{project}-"))).count() + 1;
    let issue = Issue { id: *next, key: format!("{project}-{n}"), fields, comments: vec![], status: (status.0.into(), status.1.into(), status.2.into()) };
    issues.insert(issue.key.clone(), issue.clone());
    issue
}

async fn create_issue(State(sim): State<Arc<Sim>>, Path(version): Path<String>, body: Option<Json<Value>>) -> Response {
    if !version_ok(&version) {
        return errors(StatusCode::NOT_FOUND, &["No such API version."], &[]);
    }
    let Some(Json(body)) = body else {
        return errors(StatusCode::BAD_REQUEST, &["Request body must be JSON."], &[]);
    };
    let f = &body["fields"];
    let cfg = sim.config.lock().unwrap().clone();
    let mut errs: Vec<(&str, &str)> = vec![];
    let project = f["project"]["key"].as_str().unwrap_or("");
    if project.is_empty() {
        errs.push(("project", "project is required"));
    } else if !cfg.projects.iter().any(|p| p == project) {
        errs.push(("project", "valid project is required"));
    }
    if f["summary"].as_str().is_none_or(|s| s.trim().is_empty()) {
        errs.push(("summary", "You must specify a summary of the issue."));
    }
    match f["issuetype"]["name"].as_str() {
        None => errs.push(("issuetype", "issue type is required")),
        Some(t) if !["Task", "Bug", "Incident", "Story", "Service Request"].contains(&t) => errs.push(("issuetype", "Specify a valid issue type")),
        _ => {}
    }
    if let Some(p) = f.get("priority") {
        if !["Highest", "High", "Medium", "Low", "Lowest"].contains(&p["name"].as_str().unwrap_or("")) {
            errs.push(("priority", "Specify a valid priority name"));
        }
    }
    if let Some(d) = f.get("description") {
        if let Some(e) = body_error(&version, d) {
            errs.push(("description", e));
        }
    }
    if let Some(labels) = f["labels"].as_array() {
        if labels.iter().any(|l| l.as_str().is_none_or(|s| s.contains(char::is_whitespace))) {
            errs.push(("labels", "The label must not contain spaces."));
        }
    }
    if !errs.is_empty() {
        return errors(StatusCode::BAD_REQUEST, &[], &errs);
    }
    let issue = new_issue(&sim, project, f.clone(), ("To Do", "new", "To Do"));
    let site = sim.site();
    (StatusCode::CREATED, Json(json!({"id": issue.id.to_string(), "key": issue.key, "self": format!("{site}/rest/api/{version}/issue/{}", issue.id)})))
        .into_response()
}

async fn add_comment(State(sim): State<Arc<Sim>>, Path((version, key)): Path<(String, String)>, body: Option<Json<Value>>) -> Response {
    if !version_ok(&version) {
        return errors(StatusCode::NOT_FOUND, &["No such API version."], &[]);
    }
    let Some(Json(body)) = body else {
        return errors(StatusCode::BAD_REQUEST, &["Request body must be JSON."], &[]);
    };
    if let Some(e) = body_error(&version, &body["body"]) {
        return errors(StatusCode::BAD_REQUEST, &[], &[("comment", e)]);
    }
    let site = sim.site();
    let email = sim.config.lock().unwrap().email.clone();
    let mut issues = sim.issues.lock().unwrap();
    let Some(issue) = issues.get_mut(&key) else {
        return errors(StatusCode::NOT_FOUND, &["Issue does not exist or you do not have permission to see it."], &[]);
    };
    let id = format!("{}", 20_000 + issue.comments.len() as u64 + issue.id * 10);
    let comment = json!({
        "id": id,
        "self": format!("{site}/rest/api/{version}/issue/{}/comment/{id}", issue.id),
        "author": {"emailAddress": email, "displayName": "warden bot"},
        "body": body["body"],
        "properties": body.get("properties").cloned().unwrap_or(json!([])),
        "created": "2024-05-01T10:00:00.000+0000",
        "updated": "2024-05-01T10:00:00.000+0000",
    });
    issue.comments.push(comment.clone());
    (StatusCode::CREATED, Json(comment)).into_response()
}

async fn get_issue(State(sim): State<Arc<Sim>>, Path((version, key)): Path<(String, String)>, Query(_q): Query<HashMap<String, String>>) -> Response {
    if !version_ok(&version) {
        return errors(StatusCode::NOT_FOUND, &["No such API version."], &[]);
    }
    let site = sim.site();
    let issues = sim.issues.lock().unwrap();
    let Some(issue) = issues.get(&key) else {
        return errors(StatusCode::NOT_FOUND, &["Issue does not exist or you do not have permission to see it."], &[]);
    };
    let (name, cat_key, cat_name) = &issue.status;
    Json(json!({
        "id": issue.id.to_string(),
        "key": issue.key,
        "self": format!("{site}/rest/api/{version}/issue/{}", issue.id),
        "fields": {"status": {
            "name": name, "id": "10000",
            "statusCategory": {"key": cat_key, "name": cat_name, "colorName": "blue-gray"}
        }}
    }))
    .into_response()
}

async fn create_request(State(sim): State<Arc<Sim>>, body: Option<Json<Value>>) -> Response {
    let Some(Json(body)) = body else {
        return errors(StatusCode::BAD_REQUEST, &["Request body must be JSON."], &[]);
    };
    let desk = body["serviceDeskId"].as_str().unwrap_or("").to_string();
    let rtype = body["requestTypeId"].as_str().unwrap_or("").to_string();
    let cfg = sim.config.lock().unwrap().clone();
    if !cfg.service_desks.iter().any(|(d, t)| *d == desk && *t == rtype) {
        return errors(StatusCode::BAD_REQUEST, &["The request type you are trying to use does not exist for this service desk."], &[]);
    }
    let values = &body["requestFieldValues"];
    if values["summary"].as_str().is_none_or(|s| s.trim().is_empty()) {
        return errors(StatusCode::BAD_REQUEST, &[], &[("summary", "You must specify a summary of the issue.")]);
    }
    let project = cfg.projects.first().cloned().unwrap_or_else(|| "SD".into());
    let issue = new_issue(&sim, &project, values.clone(), ("Waiting for support", "new", "To Do"));
    let site = sim.site();
    (
        StatusCode::CREATED,
        Json(json!({
            "issueId": issue.id.to_string(),
            "issueKey": issue.key,
            "requestTypeId": rtype,
            "serviceDeskId": desk,
            "currentStatus": {"status": "Waiting for support", "statusCategory": "NEW"},
            "_links": {
                "web": format!("{site}/servicedesk/customer/portal/{desk}/{}", issue.key),
                "self": format!("{site}/rest/servicedeskapi/request/{}", issue.id)
            }
        })),
    )
        .into_response()
}
