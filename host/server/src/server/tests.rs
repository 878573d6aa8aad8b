//! The server in-process: webhooks, the run API, health and panics.
use super::*;
use crate::store::testing::Flaky;
use crate::store::SqliteStore;
use crate::story::invoke::PolicyInvoker;
use sha2::Sha256;

/// A served policy and its stories, in a folder of their own.
pub(super) struct Served {
    pub(super) base: String,
    pub(super) engine: Arc<StoryRunner>,
    dir: std::path::PathBuf,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub(super) const SECRET: &str = "webhook-secret-for-server-tests";

pub(super) async fn served(policy: &str, stories: &[(&str, &str)]) -> Served {
    let dir = std::env::temp_dir().join(format!("warden-server-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(dir.join("stories")).unwrap();
    for (name, text) in stories {
        std::fs::write(dir.join("stories").join(name), text).unwrap();
    }
    // SAFETY: every test sets the same values.
    unsafe {
        std::env::set_var("WARDEN_SERVER_TEST_SECRET", SECRET);
        std::env::set_var("WARDEN_SERVER_TEST_ADMIN", "admin-token");
        std::env::set_var("WARDEN_SERVER_TEST_RED", "red-token");
        std::env::set_var("WARDEN_SERVER_TEST_BLUE", "blue-token");
    }
    let policy = Arc::new(Policy::parse(policy, "warden.toml", &dir).unwrap_or_else(|e| panic!("{e}")));
    let library = Library::load_dir(&dir.join("stories")).unwrap();
    library.check(&policy).unwrap_or_else(|e| panic!("{e}"));
    let engine = Arc::new(StoryRunner::with_invoker(Arc::new(Panics), policy, Arc::new(library), Arc::new(SqliteStore::in_memory().unwrap())));
    let (router, _queue) =
        start(engine.clone(), &ServeOptions { workers: 2, drain: Duration::from_secs(1), role: Default::default(), telemetry: None }).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    Served { base, engine, dir }
}

async fn post(base: &str, path: &str, body: &str, headers: &[(&str, String)]) -> (u16, serde_json::Value) {
    let mut req = reqwest::Client::new().post(format!("{base}{path}")).header("content-type", "application/json").body(body.to_string());
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let r = req.send().await.unwrap();
    let code = r.status().as_u16();
    (code, serde_json::from_slice(&r.bytes().await.unwrap()).unwrap_or_default())
}

async fn get(base: &str, path: &str, token: Option<&str>) -> (u16, serde_json::Value) {
    let mut req = reqwest::Client::new().get(format!("{base}{path}"));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let r = req.send().await.unwrap();
    let code = r.status().as_u16();
    let bytes = r.bytes().await.unwrap();
    (code, serde_json::from_slice(&bytes).unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned())))
}

const ECHO: &str = "steps:\n  - id: e\n    transform: {set: {ok: true}}\n";

#[tokio::test]
async fn a_signed_webhook_cannot_be_replayed_or_reused_for_another_story() {
    let policy = "[triggers.a]\nsecret_env = \"WARDEN_SERVER_TEST_SECRET\"\n[triggers.b]\nsecret_env = \"WARDEN_SERVER_TEST_SECRET\"\n";
    let srv = served(policy, &[("a.yaml", &format!("name: a\n{ECHO}")), ("b.yaml", &format!("name: b\n{ECHO}"))]).await;
    let body = r#"{"event": 1}"#;
    let sig = sign(SECRET.as_bytes(), "a", body.as_bytes());
    let h = [(SIGNATURE_HEADER, sig.clone())];
    assert_eq!(post(&srv.base, "/webhooks/a", body, &h).await.0, 202);
    let (code, v) = post(&srv.base, "/webhooks/a", body, &h).await;
    assert_eq!(code, 409, "{v}");
    let (code, v) = post(&srv.base, "/webhooks/b", body, &h).await;
    assert_eq!((code, v["error"].as_str().unwrap()), (401, "signature does not match the body"), "signed for a, sent to b");
    let old = signature::sign_at(SECRET.as_bytes(), "a", body.as_bytes(), chrono::Utc::now().timestamp() - 3600);
    let (code, v) = post(&srv.base, "/webhooks/a", body, &[(SIGNATURE_HEADER, old)]).await;
    assert!(code == 401 && v["error"].as_str().unwrap().contains("from the server's clock"), "{code} {v}");
    let legacy = format!("sha256={}", hex::encode(signature_mac(body)));
    assert_eq!(post(&srv.base, "/webhooks/a", body, &[(SIGNATURE_HEADER, legacy)]).await.0, 401, "the body-only form is off unless chosen");
    assert_eq!(srv.engine.store.list_runs(None, None, true, 10, 0).unwrap().len(), 1, "one run in all");
}

fn signature_mac(body: &str) -> Vec<u8> {
    use hmac::{Hmac, Mac};
    let mut m = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    m.update(body.as_bytes());
    m.finalize().into_bytes().to_vec()
}

#[tokio::test]
async fn an_idempotency_key_returns_the_first_run() {
    let srv = served("[triggers.a]\nsecret_env = \"WARDEN_SERVER_TEST_SECRET\"\n", &[("a.yaml", &format!("name: a\n{ECHO}"))]).await;
    let mut ids = Vec::new();
    for n in 0..3 {
        let body = format!(r#"{{"attempt": {n}}}"#);
        let h = [(SIGNATURE_HEADER, sign(SECRET.as_bytes(), "a", body.as_bytes())), ("idempotency-key", "alert-7731".to_string())];
        let (code, v) = post(&srv.base, "/webhooks/a", &body, &h).await;
        assert_eq!(code, if n == 0 { 202 } else { 200 }, "{v}");
        ids.push(v["run_id"].as_str().unwrap().to_string());
    }
    assert!(ids.iter().all(|i| *i == ids[0]), "{ids:?}");
    assert_eq!(srv.engine.store.list_runs(None, None, true, 10, 0).unwrap().len(), 1);
}

#[tokio::test]
async fn github_style_triggers_verify_their_senders_scheme_and_delivery_id() {
    let srv = served("[triggers.a]\nsecret_env = \"WARDEN_SERVER_TEST_SECRET\"\nsignature = \"github\"\n", &[("a.yaml", &format!("name: a\n{ECHO}"))]).await;
    let body = r#"{"action": "opened"}"#;
    let h = [("x-hub-signature-256", format!("sha256={}", hex::encode(signature_mac(body)))), ("x-github-delivery", "72d3162e".to_string())];
    assert_eq!(post(&srv.base, "/webhooks/a", body, &h).await.0, 202);
    assert_eq!(post(&srv.base, "/webhooks/a", body, &h).await.0, 409, "a redelivery of the same id");
}

#[tokio::test]
async fn invented_webhook_names_do_not_grow_the_metrics() {
    let srv = served("[triggers.a]\nsecret_env = \"WARDEN_SERVER_TEST_SECRET\"\n", &[("a.yaml", &format!("name: a\n{ECHO}"))]).await;
    for n in 0..20 {
        post(&srv.base, &format!("/webhooks/{}{n}", "x".repeat(1000)), "{}", &[]).await;
    }
    let (_, m) = get(&srv.base, "/metrics", None).await;
    let m = m.as_str().unwrap();
    assert!(m.contains("warden_webhooks_total{story=\"(unknown)\",code=\"404\"} 20"), "{m}");
    assert!(!m.contains("xxxx"), "an invented name became a label");
}

#[tokio::test]
async fn a_team_token_reads_only_its_teams_runs() {
    let policy = "[server]\napi_token_env = \"WARDEN_SERVER_TEST_ADMIN\"\n[teams.red]\nstories = [\"stories/red.yaml\"]\napi_token_env = \"WARDEN_SERVER_TEST_RED\"\n[teams.blue]\nstories = [\"stories/blue.yaml\"]\napi_token_env = \"WARDEN_SERVER_TEST_BLUE\"\n";
    let srv = served(policy, &[("red.yaml", &format!("name: r\nteam: red\n{ECHO}")), ("blue.yaml", &format!("name: b\nteam: blue\n{ECHO}"))]).await;
    let red_run = srv.engine.run("r", json!({}), "test", &crate::story::engine::Quiet).await.unwrap().run_id;
    let blue_run = srv.engine.run("b", json!({}), "test", &crate::story::engine::Quiet).await.unwrap().run_id;
    assert_eq!(get(&srv.base, "/api/runs", None).await.0, 401);
    assert_eq!(get(&srv.base, "/api/runs", Some("guess")).await.0, 401);
    let ids = |v: &serde_json::Value| v["runs"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap().to_string()).collect::<Vec<_>>();
    assert_eq!(ids(&get(&srv.base, "/api/runs", Some("red-token")).await.1), vec![red_run.clone()]);
    assert_eq!(ids(&get(&srv.base, "/api/runs?team=blue", Some("red-token")).await.1), vec![red_run.clone()], "a team token cannot widen its view");
    assert_eq!(get(&srv.base, &format!("/api/runs/{red_run}"), Some("red-token")).await.0, 200);
    assert_eq!(get(&srv.base, &format!("/api/runs/{blue_run}"), Some("red-token")).await.0, 404);
    assert_eq!(ids(&get(&srv.base, "/api/runs", Some("admin-token")).await.1).len(), 2);
}

#[tokio::test]
async fn serve_refuses_to_listen_beyond_loopback_without_a_token() {
    let srv = served("", &[("a.yaml", &format!("name: a\n{ECHO}"))]).await;
    let e = serve(srv.engine.clone(), "0.0.0.0:0", ServeOptions { workers: 1, drain: Duration::from_secs(1), role: Default::default(), telemetry: None })
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("refusing to serve on 0.0.0.0") && e.contains("api_token_env"), "{e}");
}

/// An invoker with a bug: it panics.
struct Panics;

#[async_trait::async_trait]
impl crate::story::invoke::Invoke for Panics {
    async fn prepare(&self, _: &str, _: &str) -> Result<(), crate::story::StepError> {
        Ok(())
    }
    async fn invoke(
        &self,
        _: &str,
        _: &str,
        _: crate::invocation::InvocationInfo,
        _: &str,
        _: Option<tokio::sync::mpsc::UnboundedSender<crate::invocation::LogLine>>,
    ) -> Result<crate::runtime::InvocationReport, crate::story::StepError> {
        panic!("a bug in warden")
    }
}

#[tokio::test]
async fn a_run_that_panics_the_host_is_recorded_as_failed_and_its_neighbour_completes() {
    let parse = |t: &str, f: &str| Arc::new(crate::story::parse(t, std::path::Path::new(f)).unwrap());
    let mut library = Library::default();
    library.stories.insert("bad".into(), parse("name: bad\nsteps:\n  - id: a\n    action: p\n", "bad.yaml"));
    library.stories.insert("good".into(), parse("name: good\nsteps:\n  - id: a\n    transform: {set: {ok: true}}\n", "good.yaml"));
    let engine =
        Arc::new(StoryRunner::with_invoker(Arc::new(Panics), Arc::new(Policy::empty()), Arc::new(library), Arc::new(SqliteStore::in_memory().unwrap())));
    let (_router, queue) =
        start(engine.clone(), &ServeOptions { workers: 2, drain: Duration::from_secs(1), role: Default::default(), telemetry: None }).unwrap();
    let (bad, good) = (engine.submit("bad", json!({}), "test").await.unwrap(), engine.submit("good", json!({}), "test").await.unwrap());
    let (tx_bad, rx_bad) = tokio::sync::oneshot::channel();
    let (tx_good, rx_good) = tokio::sync::oneshot::channel();
    queue.push(bad.clone(), "bad", Start::FromStore, Some(tx_bad));
    queue.push(good.clone(), "good", Start::FromStore, Some(tx_good));
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
    let engine = Arc::new(StoryRunner::with_invoker(invoker, policy, Arc::new(library), store.clone()));
    let (router, _queue) =
        start(engine.clone(), &ServeOptions { workers: 1, drain: Duration::from_secs(1), role: Default::default(), telemetry: None }).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let health = || async {
        let r = reqwest::get(format!("{base}/healthz")).await.unwrap();
        let code = r.status().as_u16();
        (code, serde_json::from_slice::<serde_json::Value>(&r.bytes().await.unwrap()).unwrap())
    };
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
