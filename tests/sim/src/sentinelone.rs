//! SentinelOne Management API v2.1, Deep Visibility subset.
//!
//! * `GET  /web/api/v2.1/system/info` — cheap authenticated call
//! * `POST /web/api/v2.1/dv/init-query` — `{query, fromDate, toDate, limit?, …}` → `{data:{queryId}}`
//! * `GET  /web/api/v2.1/dv/query-status?queryId=Q` — `RUNNING` for a configured
//!   number of polls, then the configured outcome; 429 when polled faster than
//!   once a second per token; 404 for an unknown id
//! * `GET  /web/api/v2.1/dv/events?queryId=Q&limit=N[&cursor=C]` — cursor pages
//! * `POST /web/api/v2.1/dv/cancel-query`
//!   (a query `(<q>) AND endpointOs IN ("windows", "osx", "linux")` matches only
//!   those operating systems' events)
//! * `POST /web/api/v2.1/agents/actions/{disconnect|connect}` — `{filter: {uuids: […]}}`
//!   → `{data: {affected: N}}` (agents of the fleet named in the filter; an
//!   empty filter is refused here, where the real API would act on every agent)
//!
//! Every call needs `Authorization: ApiToken <token>`, else 401 with code 4010010.

use crate::{Recorder, Running};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How a query ends after its `RUNNING` polls.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Finished,
    /// A terminal state such as `FAILED` with its `responseError`.
    Ends {
        state: String,
        error: Option<String>,
    },
    /// Stays `RUNNING` forever.
    NeverFinishes,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub token: String,
    pub polls_before_finish: u32,
    pub outcome: Outcome,
    pub events: Vec<Value>,
    /// Answer this many query-status calls with 429 first.
    pub status_throttle: u32,
    /// Answer this many events calls with 429 (Retry-After: 1) first.
    pub events_throttle: u32,
    /// Answer this many events calls with 503 first.
    pub events_unavailable: u32,
    /// Refuse query-status calls less than this far apart (the documented 1/s).
    pub min_poll_gap: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            token: "s1-demo-token".into(),
            polls_before_finish: 2,
            outcome: Outcome::Finished,
            events: fleet_events(),
            status_throttle: 0,
            events_throttle: 0,
            events_unavailable: 0,
            min_poll_gap: Duration::from_millis(1000),
        }
    }
}

struct QueryState {
    query: String,
    polls: u32,
    limit: usize,
    cancelled: bool,
}

#[derive(Default)]
pub struct Counters {
    pub status_calls: u32,
    pub events_calls: u32,
    /// query-status calls refused for coming faster than once a second.
    pub poll_rate_violations: u32,
    pub auth_failures: u32,
}

/// The agents' network state as the sim keeps it.
#[derive(Default)]
pub struct Agents {
    /// UUIDs disconnected (isolated) now.
    pub isolated: std::collections::BTreeSet<String>,
    /// Every action, in order: (action, uuids).
    pub actions: Vec<(String, Vec<String>)>,
}

pub struct Sim {
    pub config: Mutex<Config>,
    queries: Mutex<HashMap<String, QueryState>>,
    last_status: Mutex<Option<Instant>>,
    pub counters: Mutex<Counters>,
    pub agents: Mutex<Agents>,
    pub recorder: Recorder,
}

impl Sim {
    pub fn new(config: Config) -> Arc<Sim> {
        Arc::new(Sim {
            config: Mutex::new(config),
            queries: Mutex::default(),
            last_status: Mutex::default(),
            counters: Mutex::default(),
            agents: Mutex::default(),
            recorder: Recorder::default(),
        })
    }
    pub fn status_calls(&self) -> u32 {
        self.counters.lock().unwrap().status_calls
    }
    pub fn poll_rate_violations(&self) -> u32 {
        self.counters.lock().unwrap().poll_rate_violations
    }
    /// The S1QL of every query started, in no particular order.
    pub fn queries(&self) -> Vec<String> {
        self.queries.lock().unwrap().values().map(|q| q.query.clone()).collect()
    }
    pub fn cancelled(&self) -> usize {
        self.queries.lock().unwrap().values().filter(|q| q.cancelled).count()
    }
}

pub fn router(sim: Arc<Sim>) -> Router {
    let rec = sim.recorder.clone();
    Router::new()
        .route("/web/api/v2.1/system/info", get(system_info))
        .route("/web/api/v2.1/dv/init-query", post(init_query))
        .route("/web/api/v2.1/dv/query-status", get(query_status))
        .route("/web/api/v2.1/dv/events", get(events))
        .route("/web/api/v2.1/dv/cancel-query", post(cancel_query))
        .route("/web/api/v2.1/agents/actions/{action}", post(agent_action))
        .with_state(sim)
        .layer(axum::middleware::from_fn_with_state(rec, crate::record))
}

pub async fn spawn(config: Config) -> std::io::Result<(Running, Arc<Sim>)> {
    let sim = Sim::new(config);
    let running = crate::serve(router(sim.clone())).await?;
    Ok((running, sim))
}

fn error(status: StatusCode, code: u32, title: &str, detail: Option<&str>) -> Response {
    (status, Json(json!({"errors": [{"code": code, "detail": detail, "title": title}]}))).into_response()
}

fn authorized(sim: &Sim, headers: &HeaderMap) -> Result<(), Response> {
    let expected = format!("ApiToken {}", sim.config.lock().unwrap().token);
    match headers.get("authorization").and_then(|v| v.to_str().ok()) {
        Some(v) if v == expected => Ok(()),
        _ => {
            sim.counters.lock().unwrap().auth_failures += 1;
            Err(error(StatusCode::UNAUTHORIZED, 4010010, "Authentication Failed", None))
        }
    }
}

async fn system_info(State(sim): State<Arc<Sim>>, headers: HeaderMap) -> Response {
    if let Err(r) = authorized(&sim, &headers) {
        return r;
    }
    Json(json!({"data": {"version": "23.4.2", "build": "sim", "patch": "0"}})).into_response()
}

async fn init_query(State(sim): State<Arc<Sim>>, headers: HeaderMap, body: Option<Json<Value>>) -> Response {
    if let Err(r) = authorized(&sim, &headers) {
        return r;
    }
    let Some(Json(body)) = body else {
        return error(StatusCode::BAD_REQUEST, 4000010, "Validation Error", Some("body must be JSON"));
    };
    for field in ["query", "fromDate", "toDate"] {
        if body[field].as_str().is_none_or(str::is_empty) {
            return error(StatusCode::BAD_REQUEST, 4000010, "Validation Error", Some(&format!("{field} is required")));
        }
    }
    let limit = match &body["limit"] {
        Value::Null => 20_000,
        v => match v.as_u64() {
            Some(n) if (1..=100_000).contains(&n) => n as usize,
            _ => return error(StatusCode::BAD_REQUEST, 4000010, "Validation Error", Some("limit must be 1..100000")),
        },
    };
    let mut queries = sim.queries.lock().unwrap();
    let id = format!("q{:08x}", 0x7f20_0000 + queries.len() as u32);
    queries.insert(id.clone(), QueryState { query: body["query"].as_str().unwrap().to_string(), polls: 0, limit, cancelled: false });
    Json(json!({"data": {"queryId": id, "queryModeInfo": {"mode": "scalyr", "lastActivatedAt": "2024-05-01T00:00:00Z"}}})).into_response()
}

async fn agent_action(
    State(sim): State<Arc<Sim>>,
    axum::extract::Path(action): axum::extract::Path<String>,
    headers: HeaderMap,
    body: Option<Json<Value>>,
) -> Response {
    if let Err(r) = authorized(&sim, &headers) {
        return r;
    }
    if action != "disconnect" && action != "connect" {
        return error(StatusCode::NOT_FOUND, 4040010, "Not Found", None);
    }
    let uuids: Vec<String> =
        body.and_then(|Json(b)| b["filter"]["uuids"].as_array().map(|a| a.iter().filter_map(|u| u.as_str().map(String::from)).collect())).unwrap_or_default();
    if uuids.is_empty() {
        return error(StatusCode::BAD_REQUEST, 4000010, "Validation Error", Some("filter.uuids is required"));
    }
    let fleet: std::collections::BTreeSet<String> =
        sim.config.lock().unwrap().events.iter().filter_map(|e| e["agentUuid"].as_str().map(String::from)).collect();
    let mut agents = sim.agents.lock().unwrap();
    let mut affected = 0;
    for u in uuids.iter().filter(|u| fleet.contains(*u)) {
        affected += 1;
        if action == "disconnect" {
            agents.isolated.insert(u.clone());
        } else {
            agents.isolated.remove(u);
        }
    }
    agents.actions.push((action, uuids));
    Json(json!({"data": {"affected": affected}})).into_response()
}

fn query_id(q: &HashMap<String, String>) -> Option<String> {
    q.get("queryId").or_else(|| q.get("query_id")).cloned()
}

async fn query_status(State(sim): State<Arc<Sim>>, headers: HeaderMap, Query(q): Query<HashMap<String, String>>) -> Response {
    if let Err(r) = authorized(&sim, &headers) {
        return r;
    }
    let cfg = sim.config.lock().unwrap().clone();
    {
        let mut c = sim.counters.lock().unwrap();
        c.status_calls += 1;
        if c.status_calls <= cfg.status_throttle {
            return (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")], Json(json!({"errors": [{"code": 4290010, "title": "Too Many Requests"}]})))
                .into_response();
        }
    }
    {
        let mut last = sim.last_status.lock().unwrap();
        let now = Instant::now();
        if let Some(prev) = *last {
            if now.duration_since(prev) < cfg.min_poll_gap {
                sim.counters.lock().unwrap().poll_rate_violations += 1;
                return (
                    StatusCode::TOO_MANY_REQUESTS,
                    Json(json!({"errors": [{"code": 4290010, "title": "Too Many Requests", "detail": "query-status is limited to one call per second"}]})),
                )
                    .into_response();
            }
        }
        *last = Some(now);
    }
    let Some(id) = query_id(&q) else {
        return error(StatusCode::BAD_REQUEST, 4000010, "Validation Error", Some("queryId is required"));
    };
    let mut queries = sim.queries.lock().unwrap();
    let Some(query) = queries.get_mut(&id) else {
        return error(StatusCode::NOT_FOUND, 4040010, "Query not found", None);
    };
    query.polls += 1;
    let running = |progress: u32| json!({"data": {"responseState": "RUNNING", "progressStatus": progress, "warnings": null}});
    let body = if query.cancelled {
        json!({"data": {"responseState": "QUERY_CANCELLED", "progressStatus": 0}})
    } else if query.polls <= cfg.polls_before_finish || cfg.outcome == Outcome::NeverFinishes {
        running((query.polls * 100 / (cfg.polls_before_finish + 1)).min(99))
    } else {
        match &cfg.outcome {
            Outcome::Finished => json!({"data": {"responseState": "FINISHED", "progressStatus": 100, "warnings": null}}),
            Outcome::Ends { state, error } => {
                json!({"data": {"responseState": state, "progressStatus": 100, "responseError": error}})
            }
            Outcome::NeverFinishes => unreachable!(),
        }
    };
    Json(body).into_response()
}

/// Events whose string fields contain one of the query's quoted values; a
/// query of the form `(<q>) AND endpointOs IN ("windows", …)` (what the hunt
/// sends for `os_types`) also keeps only events of those operating systems.
fn matching(events: &[Value], query: &str) -> Vec<Value> {
    if let Some((inner, os)) = query.strip_prefix('(').and_then(|q| q.rsplit_once(") AND endpointOs IN (")) {
        let os: Vec<String> = os.split('"').skip(1).step_by(2).map(str::to_string).collect();
        return matching(events, inner).into_iter().filter(|e| e["endpointOs"].as_str().is_some_and(|o| os.iter().any(|x| x == o))).collect();
    }
    let values: Vec<String> = query.split('"').skip(1).step_by(2).map(str::to_ascii_lowercase).collect();
    events
        .iter()
        .filter(|e| {
            e.as_object().is_some_and(|o| {
                o.values().filter_map(Value::as_str).any(|s| {
                    let s = s.to_ascii_lowercase();
                    values.iter().any(|v| !v.is_empty() && s.contains(v.as_str()))
                })
            })
        })
        .cloned()
        .collect()
}

async fn events(State(sim): State<Arc<Sim>>, headers: HeaderMap, Query(q): Query<HashMap<String, String>>) -> Response {
    if let Err(r) = authorized(&sim, &headers) {
        return r;
    }
    let cfg = sim.config.lock().unwrap().clone();
    let call = {
        let mut c = sim.counters.lock().unwrap();
        c.events_calls += 1;
        c.events_calls
    };
    if call <= cfg.events_throttle {
        return (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")], Json(json!({"errors": [{"code": 4290010, "title": "Too Many Requests"}]})))
            .into_response();
    }
    if call <= cfg.events_throttle + cfg.events_unavailable {
        return (StatusCode::SERVICE_UNAVAILABLE, "upstream busy").into_response();
    }
    let Some(id) = query_id(&q) else {
        return error(StatusCode::BAD_REQUEST, 4000010, "Validation Error", Some("queryId is required"));
    };
    let limit = match q.get("limit").map(|l| l.parse::<usize>()) {
        None => 100,
        Some(Ok(n)) if (1..=1000).contains(&n) => n,
        _ => return error(StatusCode::BAD_REQUEST, 4000010, "Validation Error", Some("limit must be 1..1000")),
    };
    let queries = sim.queries.lock().unwrap();
    let Some(query) = queries.get(&id) else {
        return error(StatusCode::NOT_FOUND, 4040010, "Query not found", None);
    };
    if query.polls <= cfg.polls_before_finish || cfg.outcome != Outcome::Finished {
        return error(StatusCode::BAD_REQUEST, 4000010, "Validation Error", Some("query is not finished"));
    }
    let offset = match q.get("cursor") {
        None => 0,
        Some(c) => match base64::engine::general_purpose::STANDARD
            .decode(c)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| s.strip_prefix("offset:").and_then(|n| n.parse::<usize>().ok()))
        {
            Some(n) => n,
            None => return error(StatusCode::BAD_REQUEST, 4000010, "Validation Error", Some("invalid cursor")),
        },
    };
    let mut all = matching(&cfg.events, &query.query);
    all.truncate(query.limit);
    let page: Vec<Value> = all.iter().skip(offset).take(limit).cloned().collect();
    let next = offset + page.len();
    let next_cursor = if next < all.len() { Value::String(base64::engine::general_purpose::STANDARD.encode(format!("offset:{next}"))) } else { Value::Null };
    Json(json!({"data": page, "pagination": {"nextCursor": next_cursor, "totalItems": all.len()}})).into_response()
}

async fn cancel_query(State(sim): State<Arc<Sim>>, headers: HeaderMap, body: Option<Json<Value>>) -> Response {
    if let Err(r) = authorized(&sim, &headers) {
        return r;
    }
    let id = body.and_then(|Json(b)| b["queryId"].as_str().map(String::from)).unwrap_or_default();
    match sim.queries.lock().unwrap().get_mut(&id) {
        Some(q) => {
            q.cancelled = true;
            Json(json!({"data": {"success": true}})).into_response()
        }
        None => error(StatusCode::NOT_FOUND, 4040010, "Query not found", None),
    }
}

fn event(id: u32, host: usize, process: &str, user: &str, domain: &str, time: &str) -> Value {
    let hosts = [
        ("WS-ALICE-01", "a1f0c9e2-0000-4000-8000-000000000001", "windows", "10.20.1.15", "HQ"),
        ("WS-BOB-07", "b2e1d8f3-0000-4000-8000-000000000002", "osx", "10.20.4.77", "HQ"),
        ("SRV-DB-01", "c3d2e7a4-0000-4000-8000-000000000003", "linux", "10.30.0.5", "Datacenter"),
    ];
    let (name, uuid, os, ip, site) = hosts[host];
    json!({
        "id": format!("{id}"),
        "createdAt": time,
        "eventTime": time,
        "eventType": "DNS Resolved",
        "objectType": "dns",
        "agentName": name,
        "agentUuid": uuid,
        "agentId": format!("{}", 9_000_000 + host),
        "agentOs": os,
        "agentIp": ip,
        "agentDomain": "CORP",
        "siteName": site,
        "siteId": format!("{}", 100 + host),
        "endpointName": name,
        "endpointOs": os,
        "user": user,
        "processName": process,
        "pid": format!("{}", 4000 + id),
        "dnsRequest": domain,
        "dnsResponse": "203.0.113.66",
        "srcProcName": process,
        "srcProcUser": user,
        "srcProcCmdLine": format!("{process} --silent"),
    })
}

/// The seeded fleet: 14 raw events about `evil.example` (and one about
/// `other.example`) that hold 9 unique ones on 3 hosts — 5 on WS-ALICE-01,
/// 3 on WS-BOB-07, 1 on SRV-DB-01 — plus 3 repeated ids and 2 repeats of the
/// same host/process/request/time under new ids, spread across pages.
pub fn fleet_events() -> Vec<Value> {
    let d = "evil.example";
    let t = |m: u32| format!("2024-05-01T10:{m:02}:00.000Z");
    let mut e = vec![
        event(1, 0, "chrome.exe", "CORP\\alice", d, &t(1)),
        event(2, 0, "chrome.exe", "CORP\\alice", &format!("cdn.{d}"), &t(2)),
        event(3, 1, "curl", "bob", d, &t(3)),
        event(4, 0, "powershell.exe", "CORP\\alice", d, &t(4)),
    ];
    e.push(e[0].clone()); // repeated id 1 (page 2 when paging by 4)
    e.push(event(5, 2, "python3", "svc-db", d, &t(5)));
    e.push(event(6, 1, "Safari", "bob", d, &t(6)));
    e.push(event(7, 0, "chrome.exe", "CORP\\alice", d, &t(7)));
    let mut same_shape = e[2].clone(); // host+process+request+time of id 3, new id
    same_shape["id"] = json!("103");
    e.push(same_shape);
    e.push(e[5].clone()); // repeated id 5
    e.push(event(8, 1, "curl", "bob", d, &t(8)));
    e.push(event(9, 0, "svchost.exe", "SYSTEM", d, &t(9)));
    let mut same_shape = e[3].clone(); // repeat of id 4's shape
    same_shape["id"] = json!("104");
    e.push(same_shape);
    e.push(e[6].clone()); // repeated id 6
    e.push(event(50, 2, "nginx", "www-data", "other.example", &t(30)));
    e
}
