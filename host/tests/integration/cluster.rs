//! Several `warden serve` processes on one PostgreSQL store, as an operator
//! scales out: every run executed exactly once, a dead node's runs finished
//! by the others, schedules once per tick, a story's concurrency across the
//! cluster, and a database that drops every connection mid-load.

use crate::common;

use common::node::{PgSchema, Server, SECRET};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The restart test stops the database server for everyone: it runs alone,
/// the other tests of this file beside each other.
static DATABASE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

fn sign(story: &str, body: &str) -> String {
    warden::server::sign(SECRET.as_bytes(), story, body.as_bytes())
}

/// A folder with `story` (named `name`) calling the test origin through the
/// probe plugin, and its trigger with `trigger_extra` lines.
fn setup(tag: &str, name: &str, story: &str, origin_port: u16, trigger_extra: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("warden-cluster-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("stories")).unwrap();
    std::fs::write(dir.join("stories").join(format!("{name}.yaml")), story).unwrap();
    std::fs::write(
        dir.join("warden.toml"),
        format!(
            "[plugins.probe]\npath = \"{}\"\n[grants.probe]\nallow = [\"GET http://127.0.0.1:{origin_port}/**\"]\n[triggers.{name}]\nsecret_env = \"WEBHOOK_SECRET\"\nallow_sync = true\n{trigger_extra}\n",
            common::guest("probe").display()
        ),
    )
    .unwrap();
    dir
}

/// Sends a signed webhook; `None` when the connection failed.
async fn send(base: &str, story: &str, body: &str, wait: bool) -> Option<(u16, serde_json::Value)> {
    let url = format!("{base}/webhooks/{story}{}", if wait { "?wait=true" } else { "" });
    let resp = client()
        .post(url)
        .header("content-type", "application/json")
        .header("x-warden-signature", sign(story, body))
        .body(body.to_string())
        .send()
        .await
        .ok()?;
    let code = resp.status().as_u16();
    let v = serde_json::from_slice(&resp.bytes().await.ok()?).unwrap_or(serde_json::Value::Null);
    Some((code, v))
}

/// The runs of `story` this node finished, read off its `/metrics`.
async fn finished_here(base: &str, story: &str) -> u64 {
    let text = client().get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    warden::server::metrics::finished_runs(&text, story)
}

/// Waits (bounded) until no run in the schema is queued or running.
async fn all_ended(pg: &PgSchema, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let open = pg.count("SELECT COUNT(*) FROM runs WHERE state IN ('queued', 'running')").await;
        if open == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "{open} runs still open after {within:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn call_story(name: &str, path: &str, retry: &str) -> String {
    format!("name: {name}\ninput: {{type: object, required: [k]}}\nsteps:\n  - id: call\n    action: probe\n    with: {{op: call, url: \"{path}\"}}\n{retry}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_share_a_thousand_webhooks_and_execute_each_exactly_once() {
    let _shared = DATABASE.read().await;
    let (origin, seen) = warden_sim::origin::spawn().await.unwrap();
    let story = call_story("spread", &format!("http://127.0.0.1:{}/json?k={{{{ input.k }}}}", origin.port()), "");
    let dir = setup("spread", "spread", &story, origin.port(), "concurrency = 1000");
    let pg = PgSchema::new("spread").await;
    let url = pg.url();
    let nodes: Vec<Server> = (0..3).map(|_| Server::start_with(&dir, url.as_ref(), &["--workers", "16"])).collect();
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(24));
    let mut sent = Vec::new();
    for k in 0..1000u32 {
        let (base, gate) = (nodes[k as usize % 3].base.clone(), gate.clone());
        sent.push(tokio::spawn(async move {
            let _p = gate.acquire().await.unwrap();
            send(&base, "spread", &format!(r#"{{"k": {k}}}"#), k % 4 == 0).await
        }));
    }
    for s in sent {
        let (code, v) = s.await.unwrap().expect("every node answers");
        assert!(code == 202 || (code == 200 && v["state"] == "succeeded"), "{code}: {v}");
    }
    all_ended(&pg, Duration::from_secs(120)).await;
    assert_eq!(pg.count("SELECT COUNT(*) FROM runs WHERE state = 'succeeded'").await, 1000);
    assert_eq!(pg.count("SELECT COUNT(*) FROM steps WHERE step_id = 'call' AND attempts = 1 AND state = 'succeeded'").await, 1000, "one attempt per run");
    let mut calls = std::collections::HashMap::<String, usize>::new();
    for s in seen.all() {
        *calls.entry(s.query).or_default() += 1;
    }
    assert_eq!(calls.len(), 1000, "every run called the origin");
    assert!(calls.values().all(|&n| n == 1), "a run called twice: {:?}", calls.iter().filter(|(_, n)| **n > 1).collect::<Vec<_>>());
    let executors = pg.count("SELECT COUNT(DISTINCT lease_owner) FROM runs").await;
    assert_eq!(executors, 3, "every node executed runs");
    drop(nodes);
    pg.drop_now().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Approvals across nodes: runs parked by one node, decided through another
/// (two nodes racing for the same decision: one wins), each resumed exactly
/// once by whichever node claims it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvals_are_decided_once_and_resumed_once_across_nodes() {
    let _shared = DATABASE.read().await;
    let (origin, seen) = warden_sim::origin::spawn().await.unwrap();
    let story = format!(
        "name: gate\ninput: {{type: object, required: [k]}}\nsteps:\n  - id: ask\n    approval: {{title: 'Go on with {{{{ input.k }}}}?', timeout: 1h}}\n  - id: call\n    action: probe\n    with: {{op: call, url: \"http://127.0.0.1:{}/json?k={{{{ input.k }}}}\"}}\n",
        origin.port()
    );
    let dir = setup("approvals", "gate", &story, origin.port(), "concurrency = 100");
    let pg = PgSchema::new("approvals").await;
    let url = pg.url();
    // Every node derives the same link key: from the one operator secret they are given.
    let secret = [("WARDEN_LINK_SECRET", "cluster-link-secret-for-the-tests-0123")];
    let nodes: Vec<Server> = (0..2).map(|_| Server::start_env(&dir, url.as_ref(), &["--workers", "8"], &secret)).collect();
    let mut ids = Vec::new();
    for k in 0..20 {
        let (code, v) = send(&nodes[0].base, "gate", &format!(r#"{{"k": {k}}}"#), false).await.unwrap();
        assert_eq!(code, 202, "{v}");
        ids.push(v["run_id"].as_str().unwrap().to_string());
    }
    let t0 = Instant::now();
    while pg.count("SELECT COUNT(*) FROM approvals WHERE state = 'pending'").await < 20 {
        assert!(t0.elapsed() < Duration::from_secs(30), "the runs did not park");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(pg.count("SELECT COUNT(*) FROM runs WHERE state = 'waiting'").await, 20);
    assert_eq!(seen.count(), 0, "nothing ran past an approval");
    // Both nodes are asked to decide every approval at once, with different choices.
    let mut races = Vec::new();
    for id in &ids {
        for (n, choice) in [(0, "approve"), (1, "reject")] {
            let url = format!("{}/api/approvals/{id}/ask", nodes[n].base);
            races.push(tokio::spawn(async move {
                let resp = client().post(url).header("content-type", "application/json").body(format!(r#"{{"choice": "{choice}"}}"#)).send().await.unwrap();
                resp.status().as_u16()
            }));
        }
    }
    let mut codes = Vec::new();
    for r in races {
        codes.push(r.await.unwrap());
    }
    assert_eq!((codes.iter().filter(|c| **c == 200).count(), codes.iter().filter(|c| **c == 410).count()), (20, 20), "{codes:?}");
    all_ended(&pg, Duration::from_secs(60)).await;
    let t0 = Instant::now();
    while pg.count("SELECT COUNT(*) FROM runs WHERE state = 'succeeded'").await < 20 {
        assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", pg.texts("SELECT id, state, error FROM runs").await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(pg.count("SELECT COUNT(*) FROM audit WHERE record LIKE '%\"kind\":\"approval\"%'").await, 20, "one audited decision per approval");
    assert_eq!(
        pg.count("SELECT COUNT(*) FROM warden_keys WHERE name <> 'approval-links-salt'").await,
        0,
        "the store keeps a salt, never a key that mints links"
    );
    assert_eq!(pg.count("SELECT COUNT(*) FROM steps WHERE step_id = 'call' AND attempts = 1 AND state = 'succeeded'").await, 20, "each run resumed once");
    let mut calls = std::collections::HashMap::<String, usize>::new();
    for s in seen.all() {
        *calls.entry(s.query).or_default() += 1;
    }
    assert_eq!(calls.len(), 20);
    assert!(calls.values().all(|&n| n == 1), "a run continued twice: {calls:?}");
    drop(nodes);
    pg.drop_now().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_runs_are_finished_by_the_others_once_its_lease_lapses() {
    let _shared = DATABASE.read().await;
    let (origin, seen, counters) = warden_sim::origin::spawn_with_counters().await.unwrap();
    // Each run holds the origin 1 s under its own key; a second attempt is allowed.
    // (A lease of 3 s: a resumed call cannot overlap the dead node's own.)
    let story =
        call_story("held", &format!("http://127.0.0.1:{}/hold?key={{{{ input.k }}}}&ms=1000", origin.port()), "    retry: {attempts: 2, backoff_ms: 10}\n");
    let dir = setup("takeover", "held", &story, origin.port(), "concurrency = 100");
    let pg = PgSchema::new("takeover").await;
    let url = pg.url();
    let mut doomed = Server::start_with(&dir, url.as_ref(), &["--workers", "8", "--lease-secs", "3"]);
    let survivor = Server::start_with(&dir, url.as_ref(), &["--workers", "8", "--lease-secs", "3", "--role", "worker"]);
    // Twelve runs accepted by the node about to die: eight start there, four wait.
    let mut ids = Vec::new();
    for k in 0..12 {
        let (code, v) = send(&doomed.base, "held", &format!(r#"{{"k": "{k}"}}"#), false).await.unwrap();
        assert_eq!(code, 202, "{v}");
        ids.push(v["run_id"].as_str().unwrap().to_string());
    }
    let (code, v) = send(&survivor.base, "held", r#"{"k": "x"}"#, false).await.unwrap();
    assert_eq!(code, 503, "a worker takes no webhooks: {v}");
    assert!(v["error"].as_str().unwrap().contains("--role worker"), "{v}");
    let t0 = Instant::now();
    while seen.count() < 8 {
        assert!(t0.elapsed() < Duration::from_secs(30), "the runs did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    doomed.kill();
    let killed_at = Instant::now();
    all_ended(&pg, Duration::from_secs(60)).await;
    assert!(killed_at.elapsed() >= Duration::from_millis(1900), "runs were finished before the dead node's lease could lapse");
    assert_eq!(
        pg.count("SELECT COUNT(*) FROM runs WHERE state = 'succeeded'").await,
        12,
        "no run lost: {:?}",
        pg.texts("SELECT id, state, error FROM runs").await
    );
    let survivor_ran = pg.texts("SELECT DISTINCT lease_owner FROM runs").await;
    assert_eq!(survivor_ran.len(), 1, "every run ended under the survivor's lease: {survivor_ran:?}");
    assert!(pg.count("SELECT COUNT(*) FROM steps WHERE step_id = 'call' AND attempts > 2").await == 0);
    for k in 0..12 {
        assert!(counters.max_in_flight(&k.to_string()) <= 1, "run {k} executed twice at once");
    }
    drop(survivor);
    pg.drop_now().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_fires_once_per_tick_across_three_nodes() {
    let _shared = DATABASE.read().await;
    let (origin, _seen) = warden_sim::origin::spawn().await.unwrap();
    let story = "name: tick\nsteps:\n  - id: now\n    transform: {set: {ok: true}}\n";
    let dir = setup("tick", "tick", story, origin.port(), "schedule = \"* * * * * *\"");
    let pg = PgSchema::new("tick").await;
    let url = pg.url();
    let nodes: Vec<Server> = (0..3).map(|_| Server::start_with(&dir, url.as_ref(), &["--workers", "4"])).collect();
    tokio::time::sleep(Duration::from_millis(5500)).await;
    drop(nodes);
    let runs = pg.count("SELECT COUNT(*) FROM runs WHERE trigger = 'schedule'").await;
    let ticks = pg.count("SELECT COUNT(DISTINCT idempotency_key) FROM runs WHERE trigger = 'schedule'").await;
    assert_eq!(runs, ticks, "one run per tick");
    assert!((3..=7).contains(&runs), "{runs} runs in about 5.5 s of a schedule firing every second on three nodes");
    pg.drop_now().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storys_concurrency_holds_across_the_cluster() {
    let _shared = DATABASE.read().await;
    let (origin, _seen, counters) = warden_sim::origin::spawn_with_counters().await.unwrap();
    let story = call_story("two", &format!("http://127.0.0.1:{}/hold?key=together&ms=300", origin.port()), "");
    let dir = setup("two", "two", &story, origin.port(), "concurrency = 2");
    let pg = PgSchema::new("two").await;
    let url = pg.url();
    // The first node only takes webhooks: its callers are answered once another node ran their run.
    let nodes: Vec<Server> =
        (0..3).map(|n| Server::start_with(&dir, url.as_ref(), &["--workers", "8", "--role", if n == 0 { "intake" } else { "all" }])).collect();
    let mut sent = Vec::new();
    for k in 0..12 {
        let base = nodes[k % 3].base.clone();
        sent.push(tokio::spawn(async move { send(&base, "two", &format!(r#"{{"k": {k}}}"#), k % 2 == 0).await }));
    }
    for s in sent {
        let (code, v) = s.await.unwrap().unwrap();
        assert!(code == 202 || (code == 200 && v["state"] == "succeeded"), "{code}: {v}");
    }
    all_ended(&pg, Duration::from_secs(60)).await;
    assert_eq!(pg.count("SELECT COUNT(*) FROM runs WHERE state = 'succeeded'").await, 12);
    assert_eq!(counters.max_in_flight("together"), 2, "at most two at once across three nodes (and two did overlap)");
    // Which executing node took how many runs is the claims' race (one may take all twelve);
    // what holds is that the intake node finished none and the others all of them.
    // The counter moves just after the end is committed: read until it settles (bounded).
    let deadline = Instant::now() + Duration::from_secs(10);
    let finished = loop {
        let mut finished = Vec::new();
        for node in &nodes {
            finished.push(finished_here(&node.base, "two").await);
        }
        if finished.iter().sum::<u64>() >= 12 || Instant::now() > deadline {
            break finished;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(finished[0], 0, "the intake node executed nothing: {finished:?}");
    assert_eq!(finished[1] + finished[2], 12, "the two other nodes finished every run: {finished:?}");
    assert!(pg.count("SELECT COUNT(DISTINCT lease_owner) FROM runs").await <= 2, "runs leased by at most the two executing nodes");
    drop(nodes);
    pg.drop_now().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A database restart in the middle of the load: every connection dropped,
/// new ones refused until the server is back. A real restart of the local
/// cluster (`pg_ctlcluster`) when the tests use it; otherwise (another
/// `WARDEN_TEST_POSTGRES`) the nodes' own connections are cut for 1.5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_ride_out_a_database_restart() {
    let _alone = DATABASE.write().await;
    let (origin, _seen) = warden_sim::origin::spawn().await.unwrap();
    let story = call_story("calm", &format!("http://127.0.0.1:{}/json?k={{{{ input.k }}}}", origin.port()), "    retry: {attempts: 3, backoff_ms: 100}\n");
    let dir = setup("restart", "calm", &story, origin.port(), "concurrency = 100");
    let pg = PgSchema::new("restart").await;
    let url = pg.url();
    let nodes: Vec<Server> = (0..2).map(|_| Server::start_with(&dir, url.as_ref(), &["--workers", "8", "--lease-secs", "2"])).collect();
    let bases: Vec<String> = nodes.iter().map(|n| n.base.clone()).collect();
    let load = tokio::spawn(async move {
        let mut answers = Vec::new();
        for k in 0..300u32 {
            let wait = k % 3 == 0;
            answers.push((k, wait, send(&bases[k as usize % 2], "calm", &format!(r#"{{"k": {k}}}"#), wait).await));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        answers
    });
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let local = std::env::var("WARDEN_TEST_POSTGRES").is_err();
    let version = std::fs::read_dir("/etc/postgresql").ok().and_then(|mut d| d.next()).and_then(|e| e.ok()).map(|e| e.file_name());
    match (local, version) {
        (true, Some(v)) => {
            let restarted =
                std::process::Command::new("pg_ctlcluster").arg("--skip-systemctl-redirect").arg(&v).args(["main", "restart"]).output().expect("pg_ctlcluster");
            assert!(restarted.status.success(), "restarting PostgreSQL failed: {}", String::from_utf8_lossy(&restarted.stderr));
            eprintln!("PostgreSQL {} restarted", v.to_string_lossy());
        }
        _ => {
            let cut = format!("SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = '{}'", pg.name);
            let outage = Instant::now();
            while outage.elapsed() < Duration::from_millis(1500) {
                pg.count(&cut).await;
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            eprintln!("the nodes' connections were cut for 1.5 s");
        }
    }
    let answers = load.await.unwrap();
    all_ended(&pg, Duration::from_secs(90)).await;
    let mut accepted = 0;
    for (k, wait, answer) in &answers {
        let Some((code, v)) = answer else { panic!("run {k}: a node stopped answering") };
        match code {
            // Accepted: it must be in the store, and ended.
            202 | 200 => {
                accepted += 1;
                let id = v["run_id"].as_str().unwrap();
                let state = pg.texts(&format!("SELECT state, error FROM runs WHERE id = '{id}'")).await;
                assert_eq!(state.len(), 1, "run {k} was accepted ({code}) but is not in the store");
                // A run whose own record could not be written answers so; others match the store.
                if *wait && *code == 200 && v["error"]["kind"] != "store" {
                    assert_eq!(state[0][0].as_deref(), v["state"].as_str(), "run {k} was answered {v}; the store says {state:?}");
                }
                if state[0][0].as_deref() == Some("failed") {
                    let why = state[0][1].clone().unwrap_or_default();
                    assert!(why.contains("store") || why.contains("interrupted"), "run {k} failed without saying why the store or a restart stopped it: {why}");
                }
            }
            // Refused while the database was away, saying so: the sender retries.
            500 | 503 => assert!(v.to_string().contains("store"), "run {k}: {code} {v}"),
            _ => panic!("run {k}: unexpected {code}: {v}"),
        }
    }
    assert!(accepted > 200, "only {accepted} of 300 accepted");
    // After the outage, both nodes work as before.
    for n in &nodes {
        let (code, v) = send(&n.base, "calm", r#"{"k": 1000}"#, true).await.unwrap();
        assert_eq!((code, v["state"].as_str()), (200, Some("succeeded")), "{v}");
    }
    drop(nodes);
    pg.drop_now().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_role_other_than_all_needs_a_shared_store() {
    let dir = std::env::temp_dir().join(format!("warden-cluster-role-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("stories")).unwrap();
    std::fs::write(dir.join("warden.toml"), "").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["serve", "--role", "worker", "--listen", "127.0.0.1:0", "--policy"])
        .arg(dir.join("warden.toml"))
        .arg("--stories")
        .arg(dir.join("stories"))
        .arg("--db")
        .arg(dir.join("runs.db"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--role worker needs a store shared with other nodes") && err.contains("postgres://"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
