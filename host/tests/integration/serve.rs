//! `warden serve` as an operator runs it: webhooks, the run API, durability
//! across SIGKILL, schedules and metrics.

use crate::common;

use common::root;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::node::{pg_admin, PgSchema, Server, SECRET};

fn probe_wasm() -> PathBuf {
    common::guest("probe")
}

fn setup(name: &str, stories: &[(&str, &str)], triggers: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("warden-serve-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("stories")).unwrap();
    for (file, text) in stories {
        std::fs::write(dir.join("stories").join(file), text).unwrap();
    }
    std::fs::write(
        dir.join("warden.toml"),
        format!("[plugins.probe]\npath = \"{}\"\n[grants.probe]\nallow = [\"GET https://blocked.example/*\"]\n\n{triggers}", probe_wasm().display()),
    )
    .unwrap();
    dir
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

async fn post(base: &str, story: &str, body: &str, sig: Option<String>, ctype: &str) -> (u16, serde_json::Value) {
    let mut req = client().post(format!("{base}/webhooks/{story}")).header("content-type", ctype).body(body.to_string());
    if let Some(s) = sig {
        req = req.header("x-warden-signature", s);
    }
    let resp = req.send().await.unwrap();
    let code = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (code, serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
}

async fn get(base: &str, path: &str) -> serde_json::Value {
    let text = client().get(format!("{base}{path}")).send().await.unwrap().text().await.unwrap();
    serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))
}

fn sign(story: &str, body: &str) -> String {
    warden::server::sign(SECRET.as_bytes(), story, body.as_bytes())
}

/// Polls the run list until `done` holds (bounded), returning the runs.
async fn wait_for(base: &str, done: impl Fn(&[serde_json::Value]) -> bool) -> Vec<serde_json::Value> {
    for _ in 0..600 {
        let runs = get(base, "/api/runs?limit=500").await["runs"].as_array().cloned().unwrap_or_default();
        if done(&runs) {
            return runs;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("runs did not reach the expected state");
}

const QUICK: &str = "name: quick\ninput: {type: object, required: [num], properties: {num: {minimum: 0}}}\nsteps:\n  - id: echo\n    transform: {set: {num: \"{{ input.num }}\"}}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_answer_with_the_right_status_and_create_runs_only_when_valid() {
    let dir = setup("answers", &[("quick.yaml", QUICK)], "[triggers.quick]\nsecret_env = \"WEBHOOK_SECRET\"\nallow_sync = true\nmax_body = \"1KiB\"\n");
    let srv = Server::start(&dir, 4);
    let b = &srv.base;
    let body = r#"{"num": 1}"#;

    assert_eq!(post(b, "quick", body, None, "application/json").await.0, 401, "missing signature");
    assert_eq!(post(b, "quick", body, Some("sha256=00".into()), "application/json").await.0, 401, "bad signature");
    assert_eq!(post(b, "quick", body, Some(warden::server::sign(b"wrong", "quick", body.as_bytes())), "application/json").await.0, 401, "wrong key");
    let big = format!(r#"{{"num": "{}"}}"#, "x".repeat(2000));
    assert_eq!(post(b, "quick", &big, Some(sign("quick", &big)), "application/json").await.0, 413, "oversized");
    assert_eq!(post(b, "quick", "{not json", Some(sign("quick", "{not json")), "application/json").await.0, 400, "malformed");
    // A key named twice: one reader would take the first value, another the last.
    let twice = r#"{"num": -1, "num": 1}"#;
    let (code, said) = post(b, "quick", twice, Some(sign("quick", twice)), "application/json").await;
    assert_eq!(code, 400, "{said}");
    assert!(said["error"].as_str().unwrap().contains("key `num` appears twice"), "{said}");
    assert_eq!(post(b, "quick", body, Some(sign("quick", body)), "text/plain").await.0, 415, "not JSON content type");
    assert_eq!(post(b, "nope", body, Some(sign("nope", body)), "application/json").await.0, 404, "unknown story");
    let (code, err) = post(b, "quick", "{}", Some(sign("quick", "{}")), "application/json").await;
    assert_eq!((code, err["error"].as_str().unwrap()), (422, "input is missing required field `num`"));
    let below = r#"{"num": -1}"#;
    let (code, err) = post(b, "quick", below, Some(sign("quick", below)), "application/json").await;
    assert_eq!((code, err["error"].as_str().unwrap()), (422, "num must be at least 0 (got -1)"));
    assert_eq!(get(b, "/api/runs").await["runs"].as_array().unwrap().len(), 0, "a refused webhook created a run");

    let (code, accepted) = post(b, "quick", body, Some(sign("quick", body)), "application/json").await;
    assert_eq!(code, 202);
    let id = accepted["run_id"].as_str().unwrap().to_string();
    let runs = wait_for(b, |r| r.iter().any(|x| x["id"] == id.as_str() && x["state"] == "succeeded")).await;
    assert_eq!(runs.len(), 1);
    let detail = get(b, &format!("/api/runs/{id}")).await;
    assert_eq!(detail["output"], serde_json::json!({"num": 1}));
    assert_eq!(detail["trigger"], "webhook");

    // Another request (a byte differs): the same signed body twice is a replay.
    let again = r#"{"num": 1, "nonce": 2}"#;
    let (code, sync) = post(b, "quick?wait=true", again, Some(sign("quick", again)), "application/json").await;
    assert_eq!((code, sync["state"].as_str()), (200, Some("succeeded")));
    assert_eq!(sync["output"], serde_json::json!({"num": 1}));

    let metrics = get(b, "/metrics").await;
    let m = metrics.as_str().unwrap();
    assert!(m.contains("warden_webhooks_total{story=\"quick\",code=\"401\"} 3"), "{m}");
    assert!(m.contains("warden_webhooks_total{story=\"quick\",code=\"202\"} 1"), "{m}");
    assert!(m.contains("warden_runs_finished_total{story=\"quick\",state=\"succeeded\"} 2"), "{m}");
    // The gauge holds unfinished runs only, each state present (0 when none).
    assert!(m.contains("warden_runs{state=\"queued\"} 0") && m.contains("warden_runs{state=\"running\"} 0"), "{m}");
    assert!(!m.contains("warden_runs{state=\"succeeded\""), "{m}");
    assert!(m.contains("warden_step_duration_seconds_count{kind=\"transform\"} 2"), "{m}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_concurrent_webhooks_are_all_recorded_and_completed() {
    let dir = setup("flood", &[("quick.yaml", QUICK)], "[triggers.quick]\nsecret_env = \"WEBHOOK_SECRET\"\nconcurrency = 32\n");
    let srv = Server::start(&dir, 32);
    let mut tasks = Vec::new();
    for n in 0..500 {
        let base = srv.base.clone();
        tasks.push(tokio::spawn(async move {
            let body = format!(r#"{{"num": {n}}}"#);
            post(&base, "quick", &body, Some(sign("quick", &body)), "application/json").await.0
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 202);
    }
    let runs = wait_for(&srv.base, |r| r.len() == 500 && r.iter().all(|x| x["state"] == "succeeded")).await;
    let mut ns: Vec<i64> = Vec::new();
    for r in &runs {
        let d = get(&srv.base, &format!("/api/runs/{}", r["id"].as_str().unwrap())).await;
        ns.push(d["output"]["num"].as_i64().unwrap());
    }
    ns.sort();
    assert_eq!(ns, (0..500).collect::<Vec<_>>(), "every webhook's input produced its own run");
    // Group commit: under this load, commits carry several writes each.
    let metrics = get(&srv.base, "/metrics").await;
    let counter = |name: &str| -> u64 {
        let m = metrics.as_str().unwrap();
        m.lines().find_map(|l| l.strip_prefix(name)?.trim().parse().ok()).unwrap_or_else(|| panic!("{name} missing: {m}"))
    };
    let (commits, writes) = (counter("warden_store_commits_total "), counter("warden_store_writes_total "));
    assert!(writes >= 500 * 4, "every run's creation, start, step and end were committed: {writes} writes");
    assert!(commits < writes, "{commits} commits for {writes} writes: nothing was shared");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_survive_sigkill_and_complete_or_fail_with_a_reason_after_restart() {
    let slow = "name: slow\ninput: {type: object}\nsteps:\n  - id: wait\n    action: probe\n    retry: {attempts: 2, on: [upstream]}\n    with: {op: sleep, ms: 1500}\n";
    let once = "name: once\ninput: {type: object}\nsteps:\n  - id: wait\n    action: probe\n    with: {op: sleep, ms: 1500}\n";
    let dir = setup(
        "kill",
        &[("slow.yaml", slow), ("once.yaml", once)],
        "[triggers.slow]\nsecret_env = \"WEBHOOK_SECRET\"\n[triggers.once]\nsecret_env = \"WEBHOOK_SECRET\"\n",
    );
    let mut srv = Server::start(&dir, 2);
    let mut ids = Vec::new();
    for (story, n) in [("once", 1), ("slow", 5)] {
        for i in 0..n {
            let body = format!(r#"{{"n": {i}}}"#);
            let (code, v) = post(&srv.base, story, &body, Some(sign(story, &body)), "application/json").await;
            assert_eq!(code, 202);
            ids.push(v["run_id"].as_str().unwrap().to_string());
        }
    }
    // Kill while at least two runs are mid-step and others still wait.
    wait_for(&srv.base, |r| r.iter().filter(|x| x["state"] == "running").count() >= 2).await;
    srv.kill();

    let srv = Server::start(&srv.dir.clone(), 2);
    let runs = wait_for(&srv.base, |r| r.len() == 6 && r.iter().all(|x| x["state"] == "succeeded" || x["state"] == "failed")).await;
    let mut resumed = 0;
    for r in &runs {
        assert!(ids.contains(&r["id"].as_str().unwrap().to_string()));
        if r["state"] == "failed" {
            let why = r["error"].as_str().unwrap_or("");
            assert!(why.contains("interrupted by a restart during step wait"), "a run failed without a reason: {r}");
            assert_eq!(r["story"], "once", "a run whose retry policy allows another attempt must resume");
        }
        let d = get(&srv.base, &format!("/api/runs/{}", r["id"].as_str().unwrap())).await;
        if d["steps"][0]["attempts"] == 2 {
            resumed += 1;
        }
    }
    assert!(resumed >= 1, "no run was interrupted and resumed: {runs:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_fires_and_metrics_count_denials() {
    let denied = "name: denied\ninput: {type: object}\nsteps:\n  - id: try\n    action: probe\n    with: {op: fetch, url: \"http://169.254.169.254/latest/meta-data/\"}\n";
    let dir = setup("schedule", &[("denied.yaml", denied)], "[triggers.denied]\nschedule = \"* * * * * *\"\n");
    let srv = Server::start(&dir, 2);
    let runs = wait_for(&srv.base, |r| r.iter().any(|x| x["trigger"] == "schedule" && x["state"] == "succeeded")).await;
    assert_eq!(runs[0]["story"], "denied");
    let metrics = get(&srv.base, "/metrics").await;
    let m = metrics.as_str().unwrap();
    assert!(m.contains("warden_egress_denials_total{rule=\"default-deny\"}"), "{m}");
    assert!(m.contains("warden_instances_capacity"), "{m}");
    // What idle slots keep resident, by kind (its behaviour: host_runtime.rs, no_invocation_reads_…).
    for kind in ["memory", "tables"] {
        let line = format!("warden_instances_idle_resident_bytes{{kind=\"{kind}\"}} ");
        assert!(m.lines().any(|l| l.strip_prefix(&line).is_some_and(|v| v.parse::<u64>().is_ok())), "{m}");
    }
    // No webhook without a secret.
    assert_eq!(post(&srv.base, "denied", "{}", Some(sign("denied", "{}")), "application/json").await.0, 404);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_intake_and_drains_in_flight_runs() {
    let slow = "name: slow\ninput: {type: object}\nsteps:\n  - id: wait\n    action: probe\n    with: {op: sleep, ms: 1500}\n";
    let dir = setup("drain", &[("slow.yaml", slow)], "[triggers.slow]\nsecret_env = \"WEBHOOK_SECRET\"\n");
    let mut srv = Server::start(&dir, 2);
    let (code, v) = post(&srv.base, "slow", "{}", Some(sign("slow", "{}")), "application/json").await;
    assert_eq!(code, 202);
    let id = v["run_id"].as_str().unwrap().to_string();
    wait_for(&srv.base, |r| r.iter().any(|x| x["state"] == "running")).await;
    let pid = srv.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = tokio::task::spawn_blocking(move || {
        let s = srv.child.wait().unwrap();
        (s, srv)
    })
    .await
    .unwrap();
    assert!(status.0.success(), "serve exited with {:?}", status.0);
    // The run in flight finished before the process left; nothing is left to resume.
    let out = Command::new(env!("CARGO_BIN_EXE_warden")).args(["runs", "list", "--json", "--db"]).arg(dir.join("runs.db")).output().unwrap();
    let runs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(runs[0]["id"], id.as_str());
    assert_eq!(runs[0]["state"], "succeeded", "{runs}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Group commit under load, then SIGKILL: every answered promise holds. A 202
/// means the run is in the store; a `?wait=true` answer matches the stored
/// end; a step's start is durable before its side effect, so after the
/// restart no call is made twice past its retry policy (one attempt here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_breaks_no_answered_promise_and_repeats_no_side_effect() {
    let (origin, seen) = warden_sim::origin::spawn().await.unwrap();
    let story = format!(
        "name: side\ninput: {{type: object, required: [k]}}\nsteps:\n  - id: prep\n    transform: {{set: {{k: \"{{{{ input.k }}}}\"}}}}\n  - id: call\n    action: probe\n    with: {{op: call, url: \"http://127.0.0.1:{}/json?k={{{{ input.k }}}}\"}}\n  - id: done\n    transform: {{set: {{ok: \"{{{{ steps.call.output.ok }}}}\"}}}}\n",
        origin.port()
    );
    let dir = setup("kill-load", &[("side.yaml", &story)], "");
    std::fs::write(
        dir.join("warden.toml"),
        format!(
            "[plugins.probe]\npath = \"{}\"\n[grants.probe]\nallow = [\"GET http://127.0.0.1:{}/json\"]\n[triggers.side]\nsecret_env = \"WEBHOOK_SECRET\"\nallow_sync = true\nconcurrency = 64\n",
            probe_wasm().display(),
            origin.port()
        ),
    )
    .unwrap();
    let mut srv = Server::start(&dir, 8);
    let base = srv.base.clone();
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(16));
    let mut posts = Vec::new();
    for k in 0..400u32 {
        let (base, gate) = (base.clone(), gate.clone());
        posts.push(tokio::spawn(async move {
            let _p = gate.acquire().await.unwrap();
            let wait = k % 2 == 0;
            let body = format!(r#"{{"k": {k}}}"#);
            let url = format!("{base}/webhooks/side{}", if wait { "?wait=true" } else { "" });
            let sent = client().post(url).header("content-type", "application/json").header("x-warden-signature", sign("side", &body)).body(body).send().await;
            let Ok(resp) = sent else { return (k, None) };
            let code = resp.status().as_u16();
            match resp.bytes().await {
                Ok(b) => (k, Some((code, serde_json::from_slice(&b).unwrap_or(serde_json::Value::Null)))),
                Err(_) => (k, None),
            }
        }));
    }
    // Kill mid-stream: some runs answered, some mid-step, some not yet sent.
    for _ in 0..500 {
        if seen.count() >= 60 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    srv.kill();
    let mut accepted = Vec::new();
    let mut answered = Vec::new();
    for p in posts {
        match p.await.unwrap() {
            (_, Some((202, v))) => accepted.push(v["run_id"].as_str().unwrap().to_string()),
            (_, Some((200, v))) => answered.push((v["run_id"].as_str().unwrap().to_string(), v["state"].as_str().unwrap().to_string())),
            (_, Some((code, v))) => panic!("unexpected answer {code}: {v}"),
            (_, None) => {}
        }
    }
    assert!(!accepted.is_empty() && !answered.is_empty(), "the kill came too early or too late: {} accepted, {} answered", accepted.len(), answered.len());

    let srv = Server::start(&dir, 8);
    let runs = wait_for(&srv.base, |r| !r.is_empty() && r.iter().all(|x| x["state"] == "succeeded" || x["state"] == "failed")).await;
    let state_of = |id: &str| runs.iter().find(|r| r["id"] == id).map(|r| r["state"].as_str().unwrap().to_string());
    for id in &accepted {
        assert!(state_of(id).is_some(), "run {id} was answered 202 but is not in the store");
    }
    for (id, state) in &answered {
        assert_eq!(state_of(id).as_deref(), Some(state.as_str()), "run {id} was answered {state}; the store says otherwise");
    }
    let failed = runs.iter().filter(|r| r["state"] == "failed").count();
    eprintln!("{} accepted, {} answered, {} runs after the restart ({failed} failed), {} calls", accepted.len(), answered.len(), runs.len(), seen.count());
    let mut calls = std::collections::HashMap::<String, usize>::new();
    for s in seen.all() {
        *calls.entry(s.query).or_default() += 1;
    }
    assert!(
        calls.values().all(|&n| n == 1),
        "a call was made twice though the step allows one attempt: {:?}",
        calls.iter().filter(|(_, n)| **n > 1).collect::<Vec<_>>()
    );
    for r in &runs {
        if r["state"] == "failed" {
            let why = r["error"].as_str().unwrap_or("");
            assert!(why.contains("interrupted by a restart during step call"), "a run failed without the reason: {r}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_keeps_its_runs_in_postgres() {
    let pg = PgSchema::new("serve").await;
    let dir = setup("postgres", &[("quick.yaml", QUICK)], "[triggers.quick]\nsecret_env = \"WEBHOOK_SECRET\"\nallow_sync = true\n");
    let url = pg.url();
    let srv = Server::start_on(&dir, 2, std::ffi::OsStr::new(&url));
    let body = r#"{"num": 7}"#;
    let (code, v) = post(&srv.base, "quick?wait=true", body, Some(sign("quick", body)), "application/json").await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["state"], "succeeded", "{v}");
    let id = v["run_id"].as_str().unwrap().to_string();
    assert_eq!(get(&srv.base, &format!("/api/runs/{id}")).await["steps"][0]["output"]["num"], 7);

    // The CLI reads the same store.
    let listed = Command::new(env!("CARGO_BIN_EXE_warden")).args(["runs", "list", "--db", &url]).output().unwrap();
    assert!(String::from_utf8_lossy(&listed.stdout).contains(&id), "{}", String::from_utf8_lossy(&listed.stderr));
    drop(srv);
    pg_admin(&pg.base, &format!("DROP SCHEMA {} CASCADE", pg.name)).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn db_check_and_migrate_say_where_a_store_stands() {
    let warden = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_warden")).args(args).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
    };
    let pg = PgSchema::new("db").await;
    let dir = std::env::temp_dir().join(format!("warden-db-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let sqlite = dir.join("runs.db").to_string_lossy().into_owned();
    for db in [pg.url(), sqlite] {
        let (code, text) = warden(&["db", "check", "--db", &db]);
        assert_eq!(code, Some(1), "{text}");
        assert!(text.contains("schema 0, this warden's is") && text.contains("warden db migrate"), "{text}");
        let (code, text) = warden(&["db", "migrate", "--db", &db]);
        assert_eq!(code, Some(0), "{text}");
        let (code, text) = warden(&["db", "check", "--db", &db]);
        assert_eq!(code, Some(0), "{text}");
        assert!(text.contains("(this warden's)"), "{text}");
    }
    pg_admin(&pg.base, &format!("UPDATE {}.warden_schema SET version = 999", pg.name)).await;
    let (code, text) = warden(&["db", "check", "--db", &pg.url()]);
    assert_eq!(code, Some(1));
    assert!(text.contains("written by a newer warden"), "{text}");
    pg_admin(&pg.base, &format!("DROP SCHEMA {} CASCADE", pg.name)).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_client_that_hangs_up_does_not_cut_its_run_off() {
    let slow = "name: slow\ninput: {type: object}\nsteps:\n  - id: wait\n    action: probe\n    with: {op: sleep, ms: 600}\n  - id: after\n    transform: {set: {done: true}}\n";
    let dir = setup("hangup", &[("slow.yaml", slow)], "[triggers.slow]\nsecret_env = \"WEBHOOK_SECRET\"\nallow_sync = true\n");
    let srv = Server::start(&dir, 4);
    let body = r#"{"n": 1}"#;
    let gone = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(150))
        .build()
        .unwrap()
        .post(format!("{}/webhooks/slow?wait=true", srv.base))
        .header("content-type", "application/json")
        .header("x-warden-signature", sign("slow", body))
        .body(body)
        .send()
        .await;
    assert!(gone.is_err(), "the client gave up before the run ended");
    let runs = wait_for(&srv.base, |r| r.len() == 1 && r[0]["state"] != "running" && r[0]["state"] != "queued").await;
    assert_eq!(runs[0]["state"], "succeeded", "the run went on without its caller: {runs:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `warden serve --log-json` on `dir` at its default level, stderr into `log`;
/// returns once it listens, with its base URL.
fn serve_logging_json(dir: &Path, log: &Path) -> (std::process::Child, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["serve", "--log-json", "--listen", &format!("127.0.0.1:{port}"), "--db"])
        .arg(dir.join("runs.db"))
        .arg("--policy")
        .arg(dir.join("warden.toml"))
        .arg("--stories")
        .arg(dir.join("stories"))
        .env("WARDEN_CACHE_DIR", root().join("target/warden-test-cache"))
        .env("WEBHOOK_SECRET", SECRET)
        .env_remove("WARDEN_LOG")
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    (child, format!("http://127.0.0.1:{port}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_run_is_logged_as_json_lines_and_nothing_is_lost_at_shutdown() {
    let dir = setup("logs", &[("quick.yaml", QUICK)], "[triggers.quick]\nsecret_env = \"WEBHOOK_SECRET\"\nallow_sync = true\n");
    let log = dir.join("serve.log");
    let (mut child, base) = serve_logging_json(&dir, &log);
    let mut ids = Vec::new();
    for n in 0..50 {
        let body = format!(r#"{{"num": {n}}}"#);
        let (code, v) = post(&base, "quick?wait=true", &body, Some(sign("quick", &body)), "application/json").await;
        assert_eq!(code, 200, "{v}");
        ids.push(v["run_id"].as_str().unwrap().to_string());
    }
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    assert!(child.wait().unwrap().success());
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}"))).collect();
    for id in &ids {
        assert!(
            lines.iter().any(|l| l["fields"]["message"] == "run finished" && l["fields"]["run"] == id.as_str()),
            "no `run finished` line for {id} in:\n{text}"
        );
        assert!(lines.iter().all(|l| l["fields"].get("trace_id").is_none()), "no trace fields when nothing is traced");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Traced (`[telemetry]`): each run's JSON log lines carry its trace and span
/// ids, the caller's `traceparent` is continued, `runs show` names the trace,
/// and the spans reach the collector by the time `serve` has stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traced_runs_log_their_trace_ids_and_runs_show_names_the_trace() {
    // A collector that counts what it is sent (the e2e tests decode it).
    let exports = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = exports.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let counted = counted.clone();
            async move {
                if !body.is_empty() {
                    counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let triggers = format!("[triggers.quick]\nsecret_env = \"WEBHOOK_SECRET\"\nallow_sync = true\n[telemetry]\nendpoint = \"{otlp}\"\n");
    let dir = setup("traced", &[("quick.yaml", QUICK)], &triggers);
    let log = dir.join("serve.log");
    let (mut child, base) = serve_logging_json(&dir, &log);
    let caller = "0af7651916cd43dd8448eb211c80319c";
    let body = r#"{"num": 1}"#;
    let r = client()
        .post(format!("{base}/webhooks/quick?wait=true"))
        .header("content-type", "application/json")
        .header(warden::server::SIGNATURE_HEADER, sign("quick", body))
        .header("traceparent", format!("00-{caller}-b7ad6b7169203331-01"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let run: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    let id = run["run_id"].as_str().unwrap().to_string();
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    assert!(child.wait().unwrap().success());
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    for message in ["run started", "run finished"] {
        let line = lines
            .iter()
            .find(|l| l["fields"]["message"] == message && l["fields"]["run"] == id.as_str())
            .unwrap_or_else(|| panic!("no `{message}` line in:\n{text}"));
        assert_eq!(line["fields"]["trace_id"], caller, "{line}");
        assert_eq!(line["fields"]["span_id"].as_str().map(str::len), Some(16), "{line}");
    }
    assert!(exports.load(std::sync::atomic::Ordering::SeqCst) >= 1, "the spans were exported before serve stopped");
    let shown = Command::new(env!("CARGO_BIN_EXE_warden")).args(["runs", "show", &id, "--db"]).arg(dir.join("runs.db")).output().unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.contains(&format!("trace: {caller}")), "{shown}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The ticks (ms) of the scheduled runs in a SQLite store, oldest first.
fn ticks(db: &Path) -> Vec<u64> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn.prepare("SELECT idempotency_key FROM runs WHERE trigger = 'schedule' ORDER BY created_ms").unwrap();
    let keys: Vec<String> = stmt.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect();
    keys.iter().map(|k| warden::store::tick_of(k).unwrap_or_else(|| panic!("not a tick: {k}"))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticks_missed_while_down_are_skipped_unless_the_trigger_catches_up_once() {
    let tick = "name: tick\nsteps:\n  - id: now\n    transform: {set: {ok: true}}\n";
    let dir = setup("catch-up", &[("tick.yaml", tick)], "[triggers.tick]\nschedule = \"* * * * * *\"\n");
    let db = dir.join("runs.db");
    let now_ms = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    // Starts just after a second's tick, so the server is up before the next
    // one: a tick before `restarted` was missed, one after it is the server's own.
    let just_after_a_tick = || async {
        let into = now_ms() % 1000;
        tokio::time::sleep(Duration::from_millis(1000 - into + 20)).await;
        now_ms()
    };
    let missed_after_restart = |before: &[u64], restarted: u64| {
        let last = before.iter().max().copied().unwrap_or(0);
        ticks(&db).into_iter().filter(|&t| t > last && t < restarted).count()
    };
    // Down for 3 s with the default (skip): nothing fires for the gap.
    let mut srv = Server::start(&dir, 2);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    srv.kill();
    let before = ticks(&db);
    assert!(!before.is_empty(), "the schedule fired before the stop");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let restarted = just_after_a_tick().await;
    let mut srv = Server::start(&dir, 2);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    srv.kill();
    assert_eq!(missed_after_restart(&before, restarted), 0, "catch_up = skip fired a missed tick");
    // The same with catch_up = "once": one run, for the latest missed tick.
    let policy = std::fs::read_to_string(dir.join("warden.toml")).unwrap().replace("schedule = ", "catch_up = \"once\"\nschedule = ");
    std::fs::write(dir.join("warden.toml"), policy).unwrap();
    let before = ticks(&db);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let restarted = just_after_a_tick().await;
    let mut srv = Server::start(&dir, 2);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    srv.kill();
    assert_eq!(missed_after_restart(&before, restarted), 1, "catch_up = once fires the latest missed tick, once");
    let all = ticks(&db);
    let mut unique = all.clone();
    unique.dedup();
    assert_eq!(all.len(), unique.len(), "one run per tick");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A run whose execution ends the process (a host bug, an abort) is resumed
/// at the next start, and may end it again; after its last two resumes each
/// did, it is failed instead of resumed, so the server stays up and every
/// other run goes on. (The abort is injected by `WARDEN_TEST_ABORT_AT_STEP`,
/// which debug builds honour.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_keeps_ending_the_process_is_failed_not_resumed_forever() {
    let bomb = "name: bomb\nsteps:\n  - id: first\n    transform: {set: {a: 1}}\n  - id: boom\n    transform: {set: {b: 2}}\n";
    let dir = setup(
        "crashloop",
        &[("bomb.yaml", bomb), ("quick.yaml", QUICK)],
        "[triggers.bomb]\nsecret_env = \"WEBHOOK_SECRET\"\n[triggers.quick]\nsecret_env = \"WEBHOOK_SECRET\"\nallow_sync = true\n",
    );
    let db = dir.join("runs.db");
    let aborting = [("WARDEN_TEST_ABORT_AT_STEP", "boom")];
    let mut srv = common::node::Server::start_env(&dir, db.as_os_str(), &["--workers", "2"], &aborting);
    let (code, accepted) = post(&srv.base, "bomb", "{}", Some(sign("bomb", "{}")), "application/json").await;
    assert_eq!(code, 202);
    let id = accepted["run_id"].as_str().unwrap().to_string();
    let ended = |srv: &mut common::node::Server| {
        for _ in 0..200 {
            if let Some(status) = srv.child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the injected abort did not end the process");
    };
    assert!(!ended(&mut srv).success(), "the first execution ends the process");
    // Two starts: each resumes the run, and each resume ends the process.
    for start in 1..=2 {
        srv = common::node::Server::spawn_env(&dir, db.as_os_str(), &["--workers", "2"], &aborting);
        assert!(!ended(&mut srv).success(), "resume {start} ends the process too");
    }
    // The third start fails the run instead, and serves.
    srv = common::node::Server::start_env(&dir, db.as_os_str(), &["--workers", "2"], &aborting);
    let runs = wait_for(&srv.base, |r| r.iter().any(|x| x["id"] == id.as_str() && x["state"] == "failed")).await;
    assert_eq!(runs.iter().filter(|r| r["id"] == id.as_str()).count(), 1);
    let detail = get(&srv.base, &format!("/api/runs/{id}")).await;
    let error = detail["error"].as_str().unwrap_or_default();
    assert!(error.contains("each of its last 2 attempts to resume it"), "{detail}");
    assert!(srv.child.try_wait().unwrap().is_none(), "the server is up");
    let (code, quick) = post(&srv.base, "quick?wait=true", r#"{"num": 3}"#, Some(sign("quick", r#"{"num": 3}"#)), "application/json").await;
    assert_eq!((code, quick["state"].as_str()), (200, Some("succeeded")), "other runs go on: {quick}");
    drop(srv);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A drain that reaches its deadline leaves the runs still executing to
/// resume at the next start. That stop was the operator's, not the run's: a
/// run stopped so at several restarts in a row (a rolling upgrade during a
/// long hunt) is resumed every time, never failed as a run that keeps ending
/// the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_stopped_by_graceful_shutdowns_is_resumed_every_time() {
    let slow = "name: slow\nsteps:\n  - id: wait\n    action: probe\n    with: {op: sleep, ms: 3000}\n    retry: {attempts: 10, backoff_ms: 10}\n";
    let dir = setup("drained", &[("slow.yaml", slow)], "[triggers.slow]\nsecret_env = \"WEBHOOK_SECRET\"\n");
    let db = dir.join("runs.db");
    let flags = ["--workers", "2", "--drain-secs", "0"];
    let mut srv = common::node::Server::start_with(&dir, db.as_os_str(), &flags);
    let (code, accepted) = post(&srv.base, "slow", "{}", Some(sign("slow", "{}")), "application/json").await;
    assert_eq!(code, 202);
    let id = accepted["run_id"].as_str().unwrap().to_string();
    // Three times: the step is under way (its attempt n), then SIGTERM, with no time to drain.
    for attempt in 1..=3 {
        let mut seen = serde_json::Value::Null;
        for _ in 0..200 {
            seen = get(&srv.base, &format!("/api/runs/{id}")).await;
            if seen["steps"][0]["state"] == "running" && seen["steps"][0]["attempts"] == attempt {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!((seen["state"].as_str(), seen["steps"][0]["attempts"].as_u64()), (Some("running"), Some(attempt)), "{seen}");
        let stopped = std::process::Command::new("kill").args(["-TERM", &srv.child.id().to_string()]).status().unwrap();
        assert!(stopped.success());
        let mut ended = None;
        for _ in 0..200 {
            ended = srv.child.try_wait().unwrap();
            if ended.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(ended.is_some_and(|s| s.success()), "a drain ends the process cleanly: {ended:?}");
        srv = common::node::Server::start_with(&dir, db.as_os_str(), &flags);
    }
    // The fourth start resumes it again, and this time it finishes.
    let runs = wait_for(&srv.base, |r| r.iter().any(|x| x["id"] == id.as_str() && x["state"] != "running" && x["state"] != "queued")).await;
    let detail = get(&srv.base, &format!("/api/runs/{id}")).await;
    assert_eq!(detail["state"], "succeeded", "{detail} ({} runs)", runs.len());
    assert_eq!(detail["steps"][0]["attempts"], 4, "{detail}");
    drop(srv);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The hostile suite's host-evaluation section: what a sender controls is
/// fed to the host's own evaluators — minijinja in a YAML story, Liquid and
/// formulas in a graph story — by templates that grow it without bound. Each
/// arrives as a real signed webhook at `warden serve`; each fails its own run
/// with a one-line reason, and the server answers `/healthz` after every one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_host_evaluation_bombs_fail_their_run_and_the_server_stays_up() {
    let jinja = |name: &str, template: &str| {
        (format!("{name}.yaml"), format!("name: {name}\nsteps:\n  - id: grow\n    transform: {{set: {{v: {}}}}}\n", serde_json::to_string(template).unwrap()))
    };
    let graph = |name: &str, templates: &str, payload: &str| {
        (
            format!("{name}.yaml"),
            format!(
                "name: {name}\ngraph:\n  templates: {templates}\n  agents:\n    - id: start\n      kind: webhook\n      receivers: [grow]\n    - id: grow\n      kind: message\n      options: {{payload: {{v: {}}}}}\n",
                serde_json::to_string(payload).unwrap()
            ),
        )
    };
    let mut doubling = String::from("{% set a = input.s %}");
    for _ in 0..40 {
        doubling.push_str("{% set a = a ~ a %}");
    }
    doubling.push_str("{{ a | length }}");
    let liquid_loop = "{% assign s = start.s %}{% for i in (1..40) %}{% assign s = s | append: s %}{% endfor %}{{ s | size }}";
    let stories = [
        jinja("jinja_replace", "{{ input.s | replace('a', input.r) | replace('a', input.r) | replace('a', input.r) }}"),
        jinja("jinja_concat", &doubling),
        jinja("jinja_repeat", "{{ (input.s * 5000) * 5000 }}"),
        jinja("jinja_join", "{{ input.r | list | join(input.r) | length }}"),
        graph("liquid_append", "liquid", liquid_loop),
        graph("liquid_replace", "liquid", "{{ start.s | replace: 'a', start.r | replace: 'a', start.r | size }}"),
        graph("formula_replace", "formulas", "=SIZE(REPLACE(REPLACE(REPLACE(start.s, \"a\", start.r), \"a\", start.r), \"a\", start.r))"),
    ];
    let files: Vec<(&str, &str)> = stories.iter().map(|(f, t)| (f.as_str(), t.as_str())).collect();
    let names: Vec<String> = stories.iter().map(|(f, _)| f.trim_end_matches(".yaml").to_string()).collect();
    let triggers: String = names.iter().map(|n| format!("[triggers.{n}]\nsecret_env = \"WEBHOOK_SECRET\"\nallow_sync = true\nmax_body = \"1MiB\"\n")).collect();
    let dir = setup("hostile-eval", &files, &triggers);
    let srv = Server::start(&dir, 2);
    let b = &srv.base;
    let body = serde_json::json!({"s": "a".repeat(12_000), "r": "a".repeat(12_000)}).to_string();
    let big = serde_json::json!({"s": "a".repeat(200_000), "r": "a".repeat(200_000)}).to_string();
    for name in &names {
        let sent = if name == "liquid_replace" { &big } else { &body };
        let (code, run) = post(b, &format!("{name}?wait=true"), sent, Some(sign(name, sent)), "application/json").await;
        assert_eq!((code, run["state"].as_str()), (200, Some("failed")), "{name}: {run}");
        let error = run["error"].as_str().or(run["error"]["message"].as_str()).unwrap_or_default();
        // minijinja refuses a repeat past its own cap before allocating; every
        // other bomb is stopped by the evaluator's memory or CPU budget.
        assert!(
            error.contains("MiB of memory") || error.contains("too long to render") || (name == "jinja_repeat" && error.contains("too large")),
            "{name}: {error}"
        );
        assert!(!error.contains('\n'), "{name}: one line: {error}");
        let health = client().get(format!("{b}/healthz")).send().await.unwrap();
        assert_eq!(health.status().as_u16(), 200, "{name}: the server answers after the bomb");
    }
    // Webhook data that is itself a template is data: rendered once, never again.
    let echo = "name: echo\nsteps:\n  - id: say\n    transform: {set: {said: \"{{ input.t }}\", text: \"x {{ input.t }}\"}}\n";
    std::fs::write(dir.join("stories/echo.yaml"), echo).unwrap();
    drop(srv);
    std::fs::write(
        dir.join("warden.toml"),
        format!("{}\n[triggers.echo]\nsecret_env = \"WEBHOOK_SECRET\"\nallow_sync = true\n", std::fs::read_to_string(dir.join("warden.toml")).unwrap()),
    )
    .unwrap();
    let srv = Server::start(&dir, 2);
    let t = r#"{"t": "{{ 7 * 6 }}{% for i in range(3) %}x{% endfor %}"}"#;
    let (code, run) = post(&srv.base, "echo?wait=true", t, Some(sign("echo", t)), "application/json").await;
    assert_eq!((code, run["state"].as_str()), (200, Some("succeeded")), "{run}");
    assert_eq!(
        run["output"],
        serde_json::json!({"said": "{{ 7 * 6 }}{% for i in range(3) %}x{% endfor %}", "text": "x {{ 7 * 6 }}{% for i in range(3) %}x{% endfor %}"})
    );
    drop(srv);
    let _ = std::fs::remove_dir_all(&dir);
}
