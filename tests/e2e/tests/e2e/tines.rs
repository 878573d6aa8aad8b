//! Tines story exports, imported and run: each fixture (written here in the
//! export format) against a local API and a real SMTP server, its effects
//! asserted — the requests received (with the credentials the host injected),
//! the emails delivered, the run's output — and its report.

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use warden::story::engine::{Quiet, StoryRunner};
use warden::tines::export::Export;
use warden::tines::import::{import, story_files, ImportOptions, Imported, Level};
use warden_e2e::{runtime, workspace_root, SmtpServer};
use warden_sim::{jira, sentinelone};

/// What the local API received: method, path and query, the credential
/// headers, and the body.
#[derive(Clone, Debug)]
struct Seen {
    uri: String,
    auth: Option<String>,
    api_key: Option<String>,
    body: Value,
}

#[derive(Clone, Default)]
struct Api {
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Api {
    fn note(&self, method: &str, uri: String, h: &HeaderMap, body: Value) {
        let header = |n: &str| h.get(n).map(|v| v.to_str().unwrap().to_string());
        self.seen.lock().unwrap().push(Seen { uri: format!("{method} {uri}"), auth: header("authorization"), api_key: header("x-api-key"), body });
    }
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn users(State(api): State<Api>, Path(name): Path<String>, h: HeaderMap) -> (axum::http::StatusCode, Json<Value>) {
    api.note("GET", format!("/users/{name}"), &h, Value::Null);
    if h.get("authorization").map(|v| v.to_str().unwrap()) != Some("Bearer directory-s3cret") {
        return (axum::http::StatusCode::UNAUTHORIZED, Json(json!({"error": "bad token"})));
    }
    let admin = name == "ana";
    (
        axum::http::StatusCode::OK,
        Json(
            json!({"name": name, "role": if admin { "admin" } else { "user" }, "manager": "lead@corp.example", "groups": if admin { json!(["domain-admins", "it"]) } else { json!(["staff"]) }}),
        ),
    )
}

async fn alerts(State(api): State<Api>, h: HeaderMap) -> Json<Value> {
    api.note("GET", "/alerts".into(), &h, Value::Null);
    Json(json!({"alerts": [
        {"id": "al-1", "host": "web-1", "tags": ["a"]},
        {"id": "al-2", "host": "db-1", "tags": []},
        {"id": "al-3", "host": "web-1", "tags": ["b", "c"]}
    ]}))
}

async fn enrich(State(api): State<Api>, h: HeaderMap, Json(body): Json<Value>) -> Json<Value> {
    api.note("POST", "/enrich".into(), &h, body.clone());
    let id = body["id"].as_str().unwrap_or("");
    let score = id.trim_start_matches("al-").parse::<i64>().unwrap_or(0) * 10;
    Json(json!({"id": id, "score": score}))
}

async fn items(State(api): State<Api>, Query(q): Query<HashMap<String, String>>, h: HeaderMap) -> Json<Value> {
    let page: u32 = q.get("page").and_then(|p| p.parse().ok()).unwrap_or(0);
    api.note("GET", format!("/items?page={page}&per={}", q.get("per").cloned().unwrap_or_default()), &h, Value::Null);
    Json(json!({"page": page, "items": [format!("item-{page}")], "next": if page < 3 { json!(page + 1) } else { Value::Null }}))
}

async fn reputation(
    State(api): State<Api>,
    Path(ip): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    h: HeaderMap,
) -> (axum::http::StatusCode, Json<Value>) {
    let mut keys: Vec<_> = q.iter().map(|(k, v)| format!("{k}={v}")).collect();
    keys.sort();
    api.note("GET", format!("/reputation/{ip}?{}", keys.join("&")), &h, Value::Null);
    if q.get("key").map(String::as_str) != Some("rep-s3cret") {
        return (axum::http::StatusCode::FORBIDDEN, Json(json!({"error": "key"})));
    }
    (axum::http::StatusCode::OK, Json(json!({"verdict": if ip.starts_with("10.") { "internal" } else { "malicious" }, "score": 87})))
}

/// Echoes what it was sent (the path's id and the body), as a careless API might.
async fn hook(State(api): State<Api>, Path(id): Path<String>, h: HeaderMap, body: String) -> Json<Value> {
    api.note("POST", format!("/hook/{id}"), &h, Value::String(body.clone()));
    Json(json!({"id": id, "echo": body}))
}

async fn start_api() -> (Api, u16) {
    let api = Api::default();
    let app = Router::new()
        .route("/users/{name}", get(users))
        .route("/alerts", get(alerts))
        .route("/enrich", post(enrich))
        .route("/items", get(items))
        .route("/reputation/{ip}", get(reputation))
        .route("/hook/{id}", post(hook))
        .with_state(api.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (api, port)
}

fn fixture(name: &str, port: u16) -> Export {
    let text = std::fs::read_to_string(workspace_root().join("tests/e2e/fixtures/tines").join(name)).unwrap();
    Export::parse(&text.replace("{{PORT}}", &port.to_string())).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn import_here(e: &Export) -> Imported {
    import_with(e, false)
}

fn import_with(e: &Export, allow_credential_in_payload: bool) -> Imported {
    let plugins_dir = workspace_root().join("target/wasm32-wasip2/guest").display().to_string();
    import(e, &ImportOptions { team: "default".into(), plugins_dir, allow_credential_in_payload })
}

/// The skeleton policy as the import wrote it, with the test's SMTP relay
/// (the one thing an operator must fill in).
fn skeleton_policy(imported: &Imported, smtp: Option<u16>) -> warden::Policy {
    let mut text = imported.policy.clone();
    if let Some(port) = smtp {
        text = text
            .replace("port = 25", &format!("port = {port}"))
            .replace("tls = \"starttls\"", "tls = \"none\"")
            .replace("\"warden@example.com\"", "\"warden@corp.example\"");
    }
    warden::Policy::parse(&text, "imported-warden.toml", &workspace_root()).unwrap_or_else(|e| panic!("the skeleton does not load: {e}\n{text}"))
}

fn engine(imported: &Imported, policy: warden::Policy) -> StoryRunner {
    let library = warden::tines::library(imported, std::path::Path::new("imported")).unwrap_or_else(|e| panic!("{e}"));
    library.check(&policy).unwrap_or_else(|e| panic!("{e}"));
    StoryRunner::new(Arc::new(runtime(None)), Arc::new(policy), Arc::new(library), Arc::new(warden::store::SqliteStore::in_memory().unwrap()))
}

#[tokio::test]
async fn webhook_http_trigger_email_runs_with_the_credential_injected_by_the_host() {
    let (api, port) = start_api().await;
    let smtp = SmtpServer::start();
    let imported = import_here(&fixture("alert-triage.json", port));
    let report = imported.report.to_string();
    assert_eq!(imported.report.count(Level::Refused) + imported.report.count(Level::Unsupported), 0, "{report}");
    assert!(report.contains("credential `directory_api` moved out of the request"), "{report}");
    // The header is gone from the story: the step never sees the credential.
    let story = &imported.stories[0].1;
    assert_eq!(story["name"], "alert-triage");
    let get_user = story["graph"]["agents"].as_array().unwrap().iter().find(|a| a["id"] == "get_user").unwrap();
    assert_eq!(get_user["credential"], "directory_api");
    assert!(get_user["options"]["headers"].get("Authorization").is_none(), "{get_user}");
    assert!(imported.policy.contains(&format!("\"GET http://127.0.0.1:{port}/users/*\"")), "{}", imported.policy);
    assert!(imported.policy.contains("[credentials.directory_api]\n") && imported.policy.contains("kind = \"bearer\""), "{}", imported.policy);
    assert!(imported.policy.contains("[resources]\n") && imported.policy.contains("subject_prefix = \"\""), "{}", imported.policy);
    // SAFETY: only this test reads this variable.
    unsafe { std::env::set_var("WARDEN_CREDENTIAL_DIRECTORY_API", "directory-s3cret") };
    let mut policy = imported.policy.replace("subject_prefix = \"\"", "subject_prefix = \"[SOC]\"");
    policy = policy
        .replace("port = 25", &format!("port = {}", smtp.port))
        .replace("tls = \"starttls\"", "tls = \"none\"")
        .replace("\"warden@example.com\"", "\"warden@corp.example\"");
    let engine = engine(&imported, warden::Policy::parse(&policy, "imported.toml", &workspace_root()).unwrap());

    // An admin, severity 4, a login alert: 3 of 3 rules hold → the email.
    let r = engine.run("alert-triage", json!({"id": "A-17", "user": "ana", "severity": 4, "kind": "login"}), "test", &Quiet).await.unwrap();
    assert!(r.error.is_none(), "{:?}", r.error);
    assert_eq!(r.output.clone().unwrap(), json!({"alert": "A-17", "notified": "2", "status": "200"}));
    let mails = smtp.messages();
    assert_eq!(mails.len(), 1, "{mails:?}");
    let m = &mails[0];
    let rcpt = m["rcpt_tos"].to_string();
    assert!(rcpt.contains("soc-leads@corp.example") && rcpt.contains("lead@corp.example"), "{m}");
    assert_eq!(m["subject"], "[SOC] [sev 4] admin ana: LOGIN", "the subject reads a resource");
    let from = m["from"].as_str().unwrap();
    assert!(from.contains("Tines SOC") && from.contains("<warden@corp.example>"), "sender_name on the relay's sender: {from}");
    let data = m["text"].as_str().unwrap();
    assert!(data.contains("Domain admin! ana (domain-admins, it) triggered alert A-17."), "{data}");
    assert!(data.contains("1. domain-admins; 2. it"), "{data}");
    let seen = api.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].uri, "GET /users/ana");
    assert_eq!(seen[0].auth.as_deref(), Some("Bearer directory-s3cret"), "the host injected the credential");

    // A plain user at severity 1: 1 of 3 → the no-match path, no email.
    let r = engine.run("alert-triage", json!({"id": "A-18", "user": "bo", "severity": 1, "kind": "login"}), "test", &Quiet).await.unwrap();
    assert!(r.error.is_none(), "{:?}", r.error);
    let out = r.output.unwrap();
    assert_eq!(out["ignored"], "A-18");
    assert_eq!(out["user_record"]["groups"], json!(["staff"]), "as_object passes the object itself: {out}");
    assert_eq!(smtp.messages().len(), 1);
    // Nothing the run recorded holds the credential.
    let detail = engine.store.get_run(&r.run_id).unwrap().unwrap();
    assert!(!serde_json::to_string(&detail).unwrap().contains("directory-s3cret"));
}

#[tokio::test]
async fn a_recent_export_with_formulas_runs_them() {
    let (api, port) = start_api().await;
    let imported = import_here(&fixture("formulas.json", port));
    assert_eq!(imported.report.count(Level::Refused) + imported.report.count(Level::Unsupported), 0, "{}", imported.report);
    let story = &imported.stories[0].1;
    assert_eq!(story["graph"]["templates"], "formulas");
    assert!(imported.report.to_string().contains("credential `directory_api` moved out"), "{}", imported.report);
    unsafe { std::env::set_var("WARDEN_CREDENTIAL_DIRECTORY_API", "directory-s3cret") };
    // A resource given as a table in the policy.
    let policy = imported.policy.replace("team = \"\"", "team = { name = \"blue\", lead = \"kim\" }");
    let engine = engine(&imported, warden::Policy::parse(&policy, "imported.toml", &workspace_root()).unwrap());
    let r = engine.run("admin-check-formulas", json!({"user": "ana", "severity": 4}), "test", &Quiet).await.unwrap();
    assert!(r.error.is_none(), "{:?}", r.error);
    assert_eq!(
        r.output.unwrap(),
        json!({"name": "ANA", "groups": "domain-admins+it", "admin_groups": ["domain-admins"], "severity": "high", "line": "user ana (2 groups), status 200", "run": true, "team": "blue (kim)"})
    );
    let r = engine.run("admin-check-formulas", json!({"user": "bo", "severity": 1}), "test", &Quiet).await.unwrap();
    assert_eq!(r.output.unwrap(), json!({"user": "bo", "role": "user"}), "the no-match path");
    let seen = api.seen();
    assert_eq!(seen.iter().map(|s| s.uri.as_str()).collect::<Vec<_>>(), ["GET /users/ana", "GET /users/bo"]);
    assert!(seen.iter().all(|s| s.auth.as_deref() == Some("Bearer directory-s3cret")));
}

#[tokio::test]
async fn a_formula_calling_a_function_warden_lacks_is_reported_not_run() {
    let mut e = fixture("formulas.json", 1);
    e.agents[3].options["payload"]["extra"] = json!("=SHA512_HMAC(get_user.body.name)");
    let imported = import_here(&e);
    let report = imported.report.to_string();
    assert!(report.lines().any(|l| l.starts_with("unsupported") && l.contains("/ Summary:") && l.contains("SHA512_HMAC")), "{report}");
}

#[tokio::test]
async fn a_scheduled_agent_starts_the_story_on_its_schedule_in_its_time_zone() {
    let (api, port) = start_api().await;
    let text = r#"{"schema_version": 3, "name": "Poll alerts", "agents": [
        {"type": "Agents::HTTPRequestAgent", "name": "Fetch", "guid": "h1", "options": {"url": "http://127.0.0.1:PORT/alerts", "method": "get"},
         "schedule": [{"cron": "*/15 9-17 * * 1-5", "timezone": "Europe/Dublin"}]},
        {"type": "Agents::EventTransformationAgent", "name": "Count", "guid": "h2", "options": {"mode": "message_only", "payload": {"n": "{{ .fetch.body.alerts | size }}"}}, "schedule": null}
    ], "links": [{"source": 0, "receiver": 1}]}"#;
    let imported = import_here(&Export::parse(&text.replace("PORT", &port.to_string())).unwrap());
    assert_eq!(imported.report.count(Level::Refused) + imported.report.count(Level::Unsupported), 0, "{}", imported.report);
    assert!(
        imported.policy.contains("[triggers.poll-alerts]\nschedule = \"0 */15 9-17 * * 1-5\"\nschedule_timezone = \"Europe/Dublin\""),
        "{}",
        imported.policy
    );
    let policy = skeleton_policy(&imported, None);
    assert_eq!(policy.triggers["poll-alerts"].timezone, "Europe/Dublin".parse().unwrap());
    // A tick's run starts at the scheduled agent (there is no webhook).
    let engine = engine(&imported, policy);
    let r = engine.run("poll-alerts", json!({}), "schedule", &Quiet).await.unwrap();
    assert!(r.error.is_none(), "{:?}", r.error);
    assert_eq!(r.output.unwrap(), json!({"n": "3"}));
    assert_eq!(api.seen().len(), 1);
}

#[tokio::test]
async fn deduplicate_with_a_lookback_drops_what_earlier_runs_saw() {
    let imported = import_here(&fixture("dedupe-across-runs.json", 1));
    assert!(imported.report.to_string().contains("across runs, among the last 2 values"), "{}", imported.report);
    // One store on disk for all the runs, as `warden serve` has.
    let db = std::env::temp_dir().join(format!("warden-dedupe-{}.db", std::process::id()));
    let _ = std::fs::remove_file(&db);
    let library = warden::tines::library(&imported, std::path::Path::new("imported")).unwrap();
    let policy = Arc::new(skeleton_policy(&imported, None));
    let new_engine = || StoryRunner::new(Arc::new(runtime(None)), policy.clone(), Arc::new(library.clone()), warden::store::open(&db).unwrap());
    let engine = new_engine();
    let mut outputs = Vec::new();
    for id in ["A-1", "A-1", "A-2", "A-3"] {
        let r = engine.run("new-alerts-only", json!({"id": id}), "test", &Quiet).await.unwrap();
        assert!(r.error.is_none(), "{:?}", r.error);
        outputs.push(r.output.unwrap());
    }
    assert_eq!(outputs, [json!({"new": "A-1"}), Value::Null, json!({"new": "A-2"}), json!({"new": "A-3"})]);
    // A restarted server remembers too; A-1 has fallen out of the last two (A-2, A-3).
    drop(engine);
    let engine = new_engine();
    let r = engine.run("new-alerts-only", json!({"id": "A-3"}), "test", &Quiet).await.unwrap();
    assert_eq!(r.output.unwrap(), Value::Null, "A-3 was seen by a run before the restart");
    let r = engine.run("new-alerts-only", json!({"id": "A-1"}), "test", &Quiet).await.unwrap();
    assert_eq!(r.output.unwrap(), json!({"new": "A-1"}));
    let detail = engine.store.get_run(&r.run_id).unwrap().unwrap();
    assert!(!serde_json::to_string(&detail).unwrap().contains("duplicate"));
    let _ = std::fs::remove_file(&db);
}

#[tokio::test]
async fn explode_implode_and_deduplicate_fan_out_and_collect() {
    let (api, port) = start_api().await;
    let imported = import_here(&fixture("fan-out.json", port));
    let report = imported.report.to_string();
    assert_eq!(imported.report.count(Level::Refused) + imported.report.count(Level::Unsupported), 0, "{report}");
    assert!(report.contains("top-level field `a_field_from_the_future` is not used"), "unknown top-level keys are reported: {report}");
    assert!(imported.policy.contains("kind = \"header\"\nheader = \"x-api-key\""), "{}", imported.policy);
    unsafe { std::env::set_var("WARDEN_CREDENTIAL_ALERTS_KEY", "alerts-s3cret") };
    let engine = engine(&imported, skeleton_policy(&imported, None));
    let r = engine.run("enrich-every-alert", json!({}), "test", &Quiet).await.unwrap();
    assert!(r.error.is_none(), "{:?}", r.error);
    assert_eq!(r.output.unwrap(), json!({"count": "3", "scores": [10, 20, 30], "max": "30"}));
    let seen = api.seen();
    let enriched: Vec<&Seen> = seen.iter().filter(|s| s.uri == "POST /enrich").collect();
    assert_eq!(enriched.len(), 3, "one request per exploded alert");
    assert_eq!(enriched[2].body, json!({"id": "al-3", "host": "web-1", "tags": ["b", "c"]}));
    assert!(seen.iter().all(|s| s.api_key.as_deref() == Some("alerts-s3cret")));
    // Deduplicate: web-1 twice, db-1 once → two hosts noted.
    let detail = engine.store.get_run(&r.run_id).unwrap().unwrap();
    let hosts: Vec<&Value> = detail.steps.iter().filter(|s| s.step_id == "host_seen").filter_map(|s| s.output.as_ref()).collect();
    assert_eq!(hosts, vec![&json!({"host": "web-1"}), &json!({"host": "db-1"})]);
}

#[tokio::test]
async fn a_paging_loop_with_a_delay_follows_next_until_the_last_page() {
    let (api, port) = start_api().await;
    let imported = import_here(&fixture("paging.json", port));
    assert_eq!(imported.report.count(Level::Refused) + imported.report.count(Level::Unsupported), 0, "{}", imported.report);
    let engine = engine(&imported, skeleton_policy(&imported, None));
    let started = std::time::Instant::now();
    let r = engine.run("page-through-items", json!({"per": 50}), "test", &Quiet).await.unwrap();
    assert!(r.error.is_none(), "{:?}", r.error);
    assert_eq!(r.output.unwrap(), json!({"last_page": "3", "pages_waited": "3"}));
    let uris: Vec<String> = api.seen().into_iter().map(|s| s.uri).collect();
    assert_eq!(uris, ["GET /items?page=1&per=50", "GET /items?page=2&per=50", "GET /items?page=3&per=50"]);
    assert!(started.elapsed() >= std::time::Duration::from_secs(2), "two delays of a second each");
}

#[tokio::test]
async fn send_to_story_runs_the_nested_export_with_a_query_credential() {
    let (api, port) = start_api().await;
    let imported = import_here(&fixture("send-to-story.json", port));
    assert_eq!(imported.report.count(Level::Refused) + imported.report.count(Level::Unsupported), 0, "{}", imported.report);
    let names: Vec<&str> = imported.stories.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["check-an-ip", "ip-reputation"]);
    assert!(imported.policy.contains("kind = \"query\"\nparam = \"key\""), "{}", imported.policy);
    unsafe { std::env::set_var("WARDEN_CREDENTIAL_REP_KEY", "rep-s3cret") };
    let engine = engine(&imported, skeleton_policy(&imported, None));
    let r = engine.run("check-an-ip", json!({"ip": "203.0.113.9"}), "test", &Quiet).await.unwrap();
    assert!(r.error.is_none(), "{:?}", r.error);
    assert_eq!(r.output.unwrap(), json!({"ip": "203.0.113.9", "verdict": "malicious", "score": "87"}));
    let seen = api.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].uri, "GET /reputation/203.0.113.9?fmt=json&key=rep-s3cret", "the key was injected as the query parameter it was");
    let detail = engine.store.get_run(&r.run_id).unwrap().unwrap();
    assert_eq!(detail.children.len(), 1, "the nested story ran as a sub-story run");
}

#[tokio::test]
async fn credentials_where_a_step_would_see_them_are_refused_and_unsupported_agents_reported() {
    let imported = import_here(&fixture("leaky.json", 1));
    let report = imported.report.to_string();
    // The agent's line of that level (an agent may have several lines).
    let said = |level: &str, agent: &str, words: &str| report.lines().any(|l| l.starts_with(level) && l.contains(&format!("/ {agent}:")) && l.contains(words));
    assert!(said("refused", "Post the token", "payload"), "{report}");
    assert!(said("refused", "Mail the password", "credential"), "{report}");
    assert!(said("refused", "Token in the path", "URL path"), "{report}");
    assert!(said("refused", "Encoded key", "larger expression"), "{report}");
    assert!(said("unsupported", "Encoded key", "schedule"), "{report}");
    assert!(said("unsupported", "Read the phishing inbox", "Agents::IMAPAgent"), "{report}");
    // basic_auth moved out, bound to the origin it was used with.
    assert!(report.lines().any(|l| l.starts_with("converted") && l.contains("Jira search") && l.contains("jira_password")), "{report}");
    assert!(imported.policy.contains("kind = \"basic\"\nuser = \"svc-tines\""), "{}", imported.policy);
    assert!(imported.policy.contains("hosts = [\"https://jira.example.com\"]"), "{}", imported.policy);
    assert!(imported.policy.contains("\"POST https://jira.example.com/rest/api/2/search\""), "{}", imported.policy);
    // Nothing refused reaches a story file; the refused agents' links are cut and said.
    let files = story_files(&imported);
    let text: String = files.iter().map(|(_, t)| t.as_str()).collect();
    assert!(!text.contains("slack_token") && !text.contains("smtp_password") && !text.contains("hook_id"), "{text}");
    assert!(!text.contains("jira_password }") && text.contains("credential: jira_password"), "{text}");
    assert!(report.contains("is cut"), "{report}");
}

/// The seed's main job written as a Tines export (formulas era: a polling
/// loop with a delay, a paging loop that accumulates, a summary, Jira over
/// three HTTP requests, an email) and run against the same simulators as the
/// native story: the same ticket, comment and email.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_threat_hunt_as_a_tines_export_opens_the_same_ticket_and_sends_the_same_email_as_the_native_story() {
    // SAFETY: every test that reads these sets the same values.
    unsafe {
        std::env::set_var("S1_API_TOKEN", "s1-demo-token");
        std::env::set_var("JIRA_API_TOKEN", "jira-demo-token");
        std::env::set_var("WARDEN_CREDENTIAL_SENTINELONE", "s1-demo-token");
        std::env::set_var("WARDEN_CREDENTIAL_JIRA", "jira-demo-token");
    }
    let input = json!({"indicator": {"kind": "domain", "value": "evil.example"}, "leads": ["soc-lead@corp.example", "ir-lead@corp.example"]});
    let sims = || async {
        let (s1, s1_sim) = sentinelone::spawn(sentinelone::Config { polls_before_finish: 1, ..Default::default() }).await.unwrap();
        let (j, jira_sim) = jira::spawn(jira::Config::default()).await.unwrap();
        (s1, s1_sim, j, jira_sim, SmtpServer::start())
    };

    // The native story.
    let (s1, _s1_sim, j, jira_sim, smtp) = sims().await;
    let (dir, text) = warden_e2e::example_files(s1.port(), j.port(), smtp.port, &[]);
    let native_engine = warden_e2e::engine(warden_e2e::parse_example_policy(&text), &dir.0);
    let native = native_engine.run("threat-hunt", input.clone(), "test", &Quiet).await.unwrap();
    assert!(native.error.is_none(), "{:?}", native.error);

    // The export, imported, against simulators of its own.
    let (s1b, s1b_sim, jb, jira_b, smtp_b) = sims().await;
    let text = std::fs::read_to_string(workspace_root().join("tests/e2e/fixtures/tines/threat-hunt.json")).unwrap();
    let text = text.replace("{{S1PORT}}", &s1b.port().to_string()).replace("{{JIRAPORT}}", &jb.port().to_string());
    let imported = import_here(&Export::parse(&text).unwrap());
    let report = imported.report.to_string();
    assert_eq!(imported.report.count(Level::Refused) + imported.report.count(Level::Unsupported), 0, "{report}");
    assert!(
        imported.policy.contains("[credentials.sentinelone]\n") && imported.policy.contains("header = \"Authorization\"\nprefix = \"ApiToken \""),
        "{}",
        imported.policy
    );
    assert!(imported.policy.contains("kind = \"basic\"\nuser = \"warden-bot@corp.example\""), "{}", imported.policy);
    for rule in ["POST http://127.0.0.1:PORT/web/api/v2.1/dv/init-query", "GET http://127.0.0.1:PORT/web/api/v2.1/dv/events"] {
        assert!(imported.policy.contains(&rule.replace("PORT", &s1b.port().to_string())), "{rule}: {}", imported.policy);
    }
    assert!(imported.policy.contains(&format!("\"POST http://127.0.0.1:{}/rest/api/2/issue/*/comment\"", jb.port())), "{}", imported.policy);
    // The operator fills in the recipients' domain (the leads come from the webhook).
    let policy_text = imported.policy.replace("recipient_domains = [\"example.invalid\"]", "recipient_domains = [\"corp.example\"]");
    assert_ne!(policy_text, imported.policy, "the skeleton names a domain that delivers nowhere until the operator sets one");
    let mut fixed = imported.clone();
    fixed.policy = policy_text;
    let engine = engine(&imported, skeleton_policy(&fixed, Some(smtp_b.port)));
    let tines = engine.run("threat-hunt", input, "test", &Quiet).await.unwrap();
    assert!(tines.error.is_none(), "{:?}", tines.error);

    let (n, t) = (native.output.unwrap(), tines.output.unwrap());
    for k in ["indicator", "hosts_seen", "hosts", "ticket", "ticket_status", "emailed"] {
        assert_eq!(n[k], t[k], "{k}: native {n} tines {t}");
    }
    assert_eq!(t["ticket"], "SEC-1");
    assert_eq!(t["ticket_url"], format!("http://{}/browse/SEC-1", jb.addr).as_str());
    // The same ticket: fields, description lines, the internal comment (run ids aside).
    let (a, b) = (jira_sim.issue("SEC-1").unwrap(), jira_b.issue("SEC-1").unwrap());
    for f in ["summary", "issuetype", "priority", "labels", "project"] {
        assert_eq!(a.fields[f], b.fields[f], "{f}");
    }
    let desc = b.fields["description"].as_str().unwrap();
    for line in [
        "- WS-ALICE-01 (windows, 10.20.1.15, site HQ): 5 event(s)",
        "- WS-BOB-07 (osx, 10.20.4.77, site HQ): 3 event(s)",
        "- SRV-DB-01 (linux, 10.30.0.5, site Datacenter): 1 event(s)",
    ] {
        assert!(a.fields["description"].as_str().unwrap().contains(line) && desc.contains(line), "{line}\nnative: {}\ntines: {desc}", a.fields["description"]);
    }
    let comment = |c: &Value, run: &str| c["body"].as_str().unwrap().replace(run, "RUN");
    assert_eq!(comment(&a.comments[0], &native.run_id), comment(&b.comments[0], &tines.run_id));
    assert_eq!(a.comments[0]["properties"], b.comments[0]["properties"], "internal, as the native comment");
    // The same email, to the same leads.
    let (ma, mb) = (smtp.messages(), smtp_b.messages());
    assert_eq!((ma.len(), mb.len()), (1, 1));
    for k in ["subject", "rcpt_tos", "to"] {
        assert_eq!(ma[0][k], mb[0][k], "{k}");
    }
    let body = |m: &Value, run: &str, port: u16| m["text"].as_str().unwrap().replace(run, "RUN").replace(&port.to_string(), "PORT");
    assert_eq!(body(&ma[0], &native.run_id, j.port()), body(&mb[0], &tines.run_id, jb.port()));
    assert!(mb[0]["html"].as_str().unwrap().contains(&format!("<a href=\"http://{}/browse/SEC-1\">", jb.addr)));
    assert_eq!(s1b_sim.poll_rate_violations(), 0, "the export's delay keeps to one status poll a second");
}

/// Served: the story's webhook answers as the Tines webhook did (its
/// `response` rendered against the request, its `response_code`), at once,
/// and the run goes on; an extract agent pulls matches out of the text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_a_webhook_answers_with_its_tines_response_and_the_run_goes_on() {
    let text = r#"{"schema_version": 3, "name": "Phish report", "agents": [
        {"type": "Agents::WebhookAgent", "name": "Report", "guid": "w1", "options": {"path": "p", "secret": "s", "verbs": "get,post",
          "response": "{\"received\": \"{{ .report.subject }}\", \"ticket\": \"PH-{{ .report.id }}\"}", "response_code": "201"}},
        {"type": "Agents::EventTransformationAgent", "name": "Indicators", "guid": "w2", "options": {"mode": "extract", "matchers": [
          {"path": "{{ .report.body }}", "regexp": "https?://[^\\s\"]+", "to": "urls"},
          {"path": "{{ .report.body }}", "regexp": "\\b(\\d{1,3}(?:\\.\\d{1,3}){3})\\b", "to": "ips"}]}}
    ], "links": [{"source": 0, "receiver": 1}], "exit_agent_guids": ["w2"]}"#;
    let imported = import_here(&Export::parse(text).unwrap());
    let report = imported.report.to_string();
    assert!(report.contains("verbs `get,post`: a warden webhook takes POST"), "{report}");
    assert!(report.contains("answers with its own response"), "{report}");
    const SECRET: &str = "tines-webhook-secret";
    unsafe { std::env::set_var("WARDEN_WEBHOOK_SECRET", SECRET) };
    let (base, engine) = warden_e2e::serve(engine(&imported, skeleton_policy(&imported, None))).await;
    let body = json!({"id": 42, "subject": "Invoice overdue", "body": "click https://evil.example/pay?x=1 or mail 203.0.113.7, not 10.0.0.300x"}).to_string();
    let r = reqwest::Client::new()
        .post(format!("{base}/webhooks/phish-report"))
        .header("content-type", "application/json")
        .header(warden::server::SIGNATURE_HEADER, warden::server::sign(SECRET.as_bytes(), "phish-report", body.as_bytes()))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let run = r.headers()["x-warden-run"].to_str().unwrap().to_string();
    assert_eq!(serde_json::from_slice::<Value>(&r.bytes().await.unwrap()).unwrap(), json!({"received": "Invoice overdue", "ticket": "PH-42"}));
    // The run goes on and ends with the extract's matches.
    let mut output = Value::Null;
    for _ in 0..100 {
        if let Some(d) = engine.store.get_run(&run).unwrap() {
            if d.run.state == "succeeded" {
                output = d.output.unwrap();
                break;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(output, json!({"urls": ["https://evil.example/pay?x=1"], "ips": ["203.0.113.7"]}));
}

/// A failure link takes a failed agent's error instead of failing the run;
/// message_only with `loop` renders its payload once per item.
#[tokio::test]
async fn failure_links_and_loops() {
    let (api, port) = start_api().await;
    let text = r#"{"schema_version": 3, "name": "Careful", "agents": [
        {"type": "Agents::WebhookAgent", "name": "Start", "guid": "x1", "options": {}},
        {"type": "Agents::HTTPRequestAgent", "name": "Forbidden", "guid": "x2", "options": {"url": "http://127.0.0.1:PORT/alerts", "method": "delete"}},
        {"type": "Agents::EventTransformationAgent", "name": "Handle failure", "guid": "x3", "options": {"mode": "message_only", "payload": {"kind": "{{ .forbidden.error.kind }}", "items": "{{ .start.items | size }}"}}},
        {"type": "Agents::EventTransformationAgent", "name": "Names", "guid": "x4", "options": {"mode": "message_only", "loop": "{{ .start.items | as_object }}", "payload": {"name": "{{ .LOOP.value.name | upcase }}", "at": "{{ .LOOP.index }}"}}}
    ], "links": [{"source": 0, "receiver": 1}, {"source": 1, "receiver": 2, "link_type": "FAILURE"}, {"source": 2, "receiver": 3}]}"#;
    let imported = import_here(&Export::parse(&text.replace("PORT", &port.to_string())).unwrap());
    assert_eq!(imported.report.count(Level::Refused) + imported.report.count(Level::Unsupported), 0, "{}", imported.report);
    // The operator took the DELETE out of the grant: the request is denied, and that is the failure.
    let text = imported.policy.replace(&format!("  \"DELETE http://127.0.0.1:{port}/alerts\",\n"), "");
    assert_ne!(text, imported.policy);
    let policy = warden::Policy::parse(&text, "imported.toml", &workspace_root()).unwrap();
    let engine = engine(&imported, policy);
    let r = engine.run("careful", json!({"items": [{"name": "a"}, {"name": "b"}]}), "test", &Quiet).await.unwrap();
    assert!(r.error.is_none(), "{:?}", r.error);
    assert_eq!(r.output.unwrap(), json!([{"name": "A", "at": "0"}, {"name": "B", "at": "1"}]));
    assert!(api.seen().is_empty(), "the denied request never left");
    let detail = engine.store.get_run(&r.run_id).unwrap().unwrap();
    let handled = detail.steps.iter().find(|s| s.step_id == "handle_failure").unwrap();
    assert_eq!(handled.output.clone().unwrap(), json!({"kind": "denied", "items": "2"}));
    let forbidden = detail.steps.iter().find(|s| s.step_id == "forbidden").unwrap();
    assert_eq!(forbidden.state, "failed");
}

/// `--allow-credential-in-payload`: a credential Tines put in a payload or a
/// URL path is filled in by the host at egress — the API gets it, the step
/// holds only a placeholder, and an echo of it comes back redacted. Where the
/// host cannot fill it in (an email, an expression) it is still refused.
#[tokio::test]
async fn with_allow_credential_in_payload_the_host_fills_the_credential_in_at_egress() {
    let (api, port) = start_api().await;
    let text = r#"{"schema_version": 3, "name": "Payload secrets", "agents": [
        {"type": "Agents::WebhookAgent", "name": "Start", "guid": "y1", "options": {}},
        {"type": "Agents::HTTPRequestAgent", "name": "Post the token", "guid": "y2", "options": {
            "url": "http://127.0.0.1:PORT/hook/{% credential hook_id %}", "method": "post", "content_type": "json",
            "payload": {"token": "{% credential hook_id %}", "text": "{{ .start.text }}"}}}
    ], "links": [{"source": 0, "receiver": 1}], "exit_agent_guids": ["y2"]}"#;
    let export = Export::parse(&text.replace("PORT", &port.to_string())).unwrap();
    // Without the flag: refused.
    assert_eq!(import_here(&export).report.count(Level::Refused), 1);
    let imported = import_with(&export, true);
    assert_eq!(imported.report.count(Level::Refused) + imported.report.count(Level::Unsupported), 0, "{}", imported.report);
    assert!(imported.policy.contains("kind = \"placeholder\"\nplaceholder = \"__warden_credential_hook_id__\""), "{}", imported.policy);
    assert!(imported.policy.contains(&format!("\"POST http://127.0.0.1:{port}/hook/*\"")), "{}", imported.policy);
    let files: String = story_files(&imported).into_iter().map(|(_, t)| t).collect();
    assert!(files.contains("__warden_credential_hook_id__") && !files.contains("credential hook_id"), "{files}");
    // A value with characters that would change the path or break the JSON if pasted raw.
    let secret = "s3cret/../\"x\"?y=1";
    unsafe { std::env::set_var("WARDEN_CREDENTIAL_HOOK_ID", secret) };
    let engine = engine(&imported, skeleton_policy(&imported, None));
    let r = engine.run("payload-secrets", json!({"text": "hello"}), "test", &Quiet).await.unwrap();
    assert!(r.error.is_none(), "{:?}", r.error);
    let seen = api.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].uri, format!("POST /hook/{secret}"), "percent-encoded in the path: one segment, decoded by the API");
    let sent: Value = serde_json::from_str(seen[0].body.as_str().unwrap()).unwrap();
    assert_eq!(sent, json!({"token": secret, "text": "hello"}), "JSON-escaped in the body");
    // The step's output (the echo) and the whole run record hold no secret.
    let out = r.output.unwrap();
    assert_eq!(out["body"]["id"], "[REDACTED]", "{out}");
    let detail = engine.store.get_run(&r.run_id).unwrap().unwrap();
    let record = serde_json::to_string(&detail).unwrap();
    assert!(!record.contains("s3cret"), "{record}");
    assert!(record.contains("__warden_credential_hook_id__"), "the step's input holds the placeholder");
    // An expression still cannot carry one; an email body can (next test).
    let leaky = import_with(&fixture("leaky.json", 1), true);
    let report = leaky.report.to_string();
    assert!(report.lines().any(|l| l.starts_with("refused") && l.contains("Encoded key")), "{report}");
    assert!(report.lines().any(|l| l.starts_with("note") && l.contains("Mail the password") && l.contains("SMTP egress")), "{report}");
    assert!(report.lines().any(|l| l.starts_with("converted") && l.contains("Post the token") && l.contains("placeholder")), "{report}");
}

/// A run cut off mid-way (here: dropped while it waits out a delay) resumes
/// from its record: the requests it already made are not made again.
#[tokio::test]
async fn a_graph_run_resumed_after_an_interruption_sends_nothing_twice() {
    let (api, port) = start_api().await;
    let imported = import_here(&fixture("paging.json", port));
    let engine = engine(&imported, skeleton_policy(&imported, None));
    let run_id = engine.submit("page-through-items", json!({"per": 7}), "test").await.unwrap();
    // The first page is fetched, then the run waits a second: cut it off there,
    // once its record holds the fetch (however slow the machine is to get there).
    let fetched = || {
        let run = engine.store.get_run(&run_id).unwrap().unwrap();
        run.steps.iter().any(|s| s.step_id.contains("get_page") && s.state == "succeeded")
    };
    let mut execution = Box::pin(engine.execute(&run_id, &Quiet));
    let give_up = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !fetched() {
        assert!(std::time::Instant::now() < give_up, "the first page was not fetched in 60 s");
        tokio::select! {
            _ = &mut execution => panic!("the run ended; it should be waiting at its delay"),
            _ = tokio::time::sleep(std::time::Duration::from_millis(5)) => {}
        }
    }
    drop(execution); // what a crash does to it
    assert_eq!(api.seen().len(), 1, "cut off during the delay, before the second page");
    // What a restart does with a run left `running`.
    let r = engine.resume(&run_id, &Quiet).await;
    assert!(r.error.is_none(), "{:?}", r.error);
    assert_eq!(r.output.unwrap(), json!({"last_page": "3", "pages_waited": "3"}));
    let uris: Vec<String> = api.seen().into_iter().map(|s| s.uri).collect();
    assert_eq!(uris, ["GET /items?page=1&per=7", "GET /items?page=2&per=7", "GET /items?page=3&per=7"], "page 1 was not fetched again");
}

/// `--allow-credential-in-payload` and an email: the host fills the credential
/// in at SMTP egress, through the relay it is bound to; the step and the run
/// record hold the placeholder; never in an address.
#[tokio::test]
async fn with_allow_credential_in_payload_an_email_body_gets_the_credential_at_smtp_egress() {
    let smtp = SmtpServer::start();
    let text = r#"{"schema_version": 3, "name": "Door code", "agents": [
        {"type": "Agents::WebhookAgent", "name": "Start", "guid": "z1", "options": {}},
        {"type": "Agents::EmailAgent", "name": "Mail the code", "guid": "z2", "options": {"recipients": "guard@corp.example", "subject": "Door code for {{ .start.door }}",
            "body": "Today's code: {% credential door_code %}"}}
    ], "links": [{"source": 0, "receiver": 1}]}"#;
    let imported = import_with(&Export::parse(text).unwrap(), true);
    assert_eq!(imported.report.count(Level::Refused) + imported.report.count(Level::Unsupported), 0, "{}", imported.report);
    assert!(imported.policy.contains("hosts = [\"relay:default\"]") && imported.policy.contains("credentials = [\"door_code\"]"), "{}", imported.policy);
    unsafe { std::env::set_var("WARDEN_CREDENTIAL_DOOR_CODE", "door-4711-<b>") };
    let engine = engine(&imported, skeleton_policy(&imported, Some(smtp.port)));
    let r = engine.run("door-code", json!({"door": "B2"}), "test", &Quiet).await.unwrap();
    assert!(r.error.is_none(), "{:?}", r.error);
    let mail = smtp.messages();
    assert_eq!(mail.len(), 1);
    assert_eq!(mail[0]["text"].as_str().unwrap().trim(), "Today's code: door-4711-<b>");
    let record = serde_json::to_string(&engine.store.get_run(&r.run_id).unwrap().unwrap()).unwrap();
    // (Not the digits alone: a timestamp in the record may hold them.)
    assert!(!record.contains("door-4711"), "{record}");
    assert!(record.contains("__warden_credential_door_code__"));
    // In an address it would decide where mail goes: refused.
    let text = text.replace("guard@corp.example", "{% credential door_code %}@corp.example");
    let imported = import_with(&Export::parse(&text).unwrap(), true);
    assert!(imported.report.to_string().contains("never in an address"), "{}", imported.report);
}
