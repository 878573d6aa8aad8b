//! Recording and replay: every capability call and WASI read of an invocation
//! recorded on the guest's side of the host, and re-executed offline from the
//! recording, with the first divergence named.

use serde_json::{json, Value};
use std::sync::Arc;
use warden::recording::{locked, Recording, Tape};
use warden::runtime::InvocationReport;
use warden::runtime::Runtime;
use warden::{InvocationInfo, Policy};
use warden_e2e::{info, policy, runtime};
use warden_sim::{origin, sentinelone};

const S1_TOKEN: &str = "s1-replay-token-4c2d90";

fn hunt_policy(port: u16, recording_bytes: &str) -> Policy {
    policy(&format!(
        r#"
[plugins.sentinelone-hunt]
path = "{{sentinelone-hunt}}"
[grants.sentinelone-hunt]
allow = [
  "GET http://127.0.0.1:{port}/web/api/v2.1/system/info",
  "POST http://127.0.0.1:{port}/web/api/v2.1/dv/init-query",
  "GET http://127.0.0.1:{port}/web/api/v2.1/dv/query-status",
  "GET http://127.0.0.1:{port}/web/api/v2.1/dv/events",
]
credentials = ["s1"]
limits = {{ wall_ms = 30000, recording_bytes = "{recording_bytes}" }}
[credentials.s1]
kind = "header"
header = "Authorization"
prefix = "ApiToken "
env = "WARDEN_TEST_REPLAY_S1"
hosts = ["http://127.0.0.1:{port}"]

[plugins.probe]
path = "{{probe}}"
"#
    ))
}

async fn record(rt: &Runtime, p: &Policy, plugin: &str, input: &Value) -> (InvocationReport, Recording) {
    let entry = &p.plugins[plugin];
    let loaded = rt.load_entry(entry).unwrap();
    let grant = p.grant_for(plugin);
    let tape = Tape::record(grant.limits.recording_bytes);
    let (info, input) = (info("replay-test"), input.to_string());
    let report = rt.invoke_taped(&loaded, grant, info.clone(), &input, None, tape.clone()).await;
    let rec = tape.finish(plugin, &loaded.sha256, &info, &input, &report.outcome).unwrap();
    (report, rec)
}

/// Replays `rec` against the plugin; the report and the divergence, if any.
async fn replay(rt: &Runtime, p: &Policy, plugin: &str, rec: Recording) -> (InvocationReport, Option<String>) {
    let loaded = rt.load_entry(&p.plugins[plugin]).unwrap();
    let input = rec.input.to_string();
    let tape = Tape::replay(rec).unwrap();
    let info = InvocationInfo { run_id: "replay-test".into(), team: "test".into(), attempt: 1, ..Default::default() };
    let report = rt.invoke_taped(&loaded, p.grant_for(plugin), info, &input, None, tape.clone()).await;
    let Tape::Replay(r) = &tape else { unreachable!() };
    let d = locked(r).divergence.as_ref().map(|d| d.to_string());
    (report, d)
}

fn hunt_input(port: u16, page_size: u32) -> Value {
    json!({"console_url": format!("http://127.0.0.1:{port}"), "credential": "s1", "ioc": {"kind": "domain", "value": "evil.example"}, "from": "-24h", "page_size": page_size})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_hunt_replays_offline_to_the_same_output_and_names_the_first_divergence() {
    // SAFETY: only this test reads it.
    unsafe { std::env::set_var("WARDEN_TEST_REPLAY_S1", S1_TOKEN) };
    let (s1, sim) = sentinelone::spawn(sentinelone::Config { token: S1_TOKEN.into(), polls_before_finish: 1, ..Default::default() }).await.unwrap();
    let port = s1.port();
    let p = hunt_policy(port, "8MiB");
    let rt = runtime(None);
    let (live, rec) = record(&rt, &p, "sentinelone-hunt", &hunt_input(port, 2)).await;
    let live_output: Value = serde_json::from_str(live.outcome.as_ref().expect("the live hunt")).unwrap();
    assert!(rec.truncated.is_none());
    assert!(rec.calls.iter().filter(|c| c.name() == "http").count() >= 5, "{:?}", rec.calls.len());
    // No credential value in the recording: it is made on the guest's side of injection.
    let text = serde_json::to_string(&rec).unwrap();
    assert!(!text.contains(S1_TOKEN), "the recording holds the token");
    assert!(text.contains("\"credential\": \"s1\"") || text.contains("\"credential\":\"s1\""), "the credential's name is kept");
    let seen_live = sim.recorder.count();

    // The simulator is gone: a replay that touched the network would fail.
    drop(s1);
    let (replayed, divergence) = replay(&rt, &p, "sentinelone-hunt", rec.clone()).await;
    assert_eq!(divergence, None);
    let out: Value = serde_json::from_str(replayed.outcome.as_ref().expect("the replayed hunt")).unwrap();
    assert_eq!(out, live_output);
    assert!(replayed.audit.iter().filter(|a| a.capability == "http").all(|a| a.rule == "replay"), "{:?}", replayed.audit);
    assert_eq!(sim.recorder.count(), seen_live, "replay made no request");
    // It did not sleep through the polling either.
    assert!(replayed.duration_ms < live.duration_ms, "{} vs {}", replayed.duration_ms, live.duration_ms);

    // The same recording against a plugin that pages differently: the first
    // divergent call, precisely.
    let mut other = rec.clone();
    other.input = hunt_input(port, 3);
    let (failed, divergence) = replay(&rt, &p, "sentinelone-hunt", other).await;
    let d = divergence.expect("a divergence");
    assert!(d.contains("url differs") && d.contains("limit=2") && d.contains("limit=3"), "{d}");
    assert!(d.starts_with("call #"), "{d}");
    assert!(failed.outcome.unwrap_err().to_string().contains("replay diverged at call #"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_reading_random_bytes_and_clocks_behaves_identically_under_replay() {
    let p = hunt_policy(1, "8MiB");
    let rt = runtime(None);
    let input = json!({"op": "entropy"});
    let (first, rec) = record(&rt, &p, "probe", &input).await;
    let (second, _) = record(&rt, &p, "probe", &input).await;
    let a: Value = serde_json::from_str(first.outcome.as_ref().unwrap()).unwrap();
    let b: Value = serde_json::from_str(second.outcome.as_ref().unwrap()).unwrap();
    assert_ne!(a["random"], b["random"], "two live runs differ");
    for _ in 0..2 {
        let (replayed, divergence) = replay(&rt, &p, "probe", rec.clone()).await;
        assert_eq!(divergence, None);
        let c: Value = serde_json::from_str(replayed.outcome.as_ref().unwrap()).unwrap();
        assert_eq!(c, a, "random bytes, hashing seeds, wall and monotonic clocks and clock.now all replay");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_recording_says_so_and_refuses_to_replay_past_its_end() {
    unsafe { std::env::set_var("WARDEN_TEST_REPLAY_S1", S1_TOKEN) };
    let (s1, _sim) = sentinelone::spawn(sentinelone::Config { token: S1_TOKEN.into(), polls_before_finish: 1, ..Default::default() }).await.unwrap();
    let port = s1.port();
    let p = hunt_policy(port, "2KiB");
    let rt = runtime(None);
    let (_, rec) = record(&rt, &p, "sentinelone-hunt", &hunt_input(port, 2)).await;
    let why = rec.truncated.clone().expect("truncated at 2 KiB");
    assert!(why.contains("limits.recording_bytes") && why.contains("call #"), "{why}");
    drop(s1);
    let (_, divergence) = replay(&rt, &p, "sentinelone-hunt", rec).await;
    let d = divergence.expect("replay stops at the truncation");
    assert!(d.contains("truncated"), "{d}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wasi_http_requests_record_and_replay_too() {
    let (srv, rec_origin) = origin::spawn().await.unwrap();
    let port = srv.port();
    let p = policy(&format!(
        "[plugins.probe]\npath = \"{{probe}}\"\n[grants.probe]\nallow = [\"GET http://127.0.0.1:{port}/*\", \"POST http://127.0.0.1:{port}/*\"]\n"
    ));
    let rt = runtime(None);
    let input = json!({"op": "fetch_many", "count": 2, "door": "wasi-http", "method": "POST", "url": srv.url("/echo"), "body": "{\"n\":1}"});
    let (live, rec) = record(&rt, &p, "probe", &input).await;
    assert_eq!(rec.calls.len(), 2, "{rec:?}");
    let seen = rec_origin.count();
    drop(srv);
    let (replayed, divergence) = replay(&rt, &p, "probe", rec.clone()).await;
    assert_eq!(divergence, None);
    assert_eq!(replayed.outcome.as_ref().unwrap(), live.outcome.as_ref().unwrap());
    assert_eq!(rec_origin.count(), seen);
    // A different body is a divergence in the body.
    let mut other = rec;
    other.input["body"] = json!("{\"n\":2}");
    let (_, divergence) = replay(&rt, &p, "probe", other).await;
    assert!(divergence.expect("a body divergence").contains("call #1: body differs"));
    let _ = Arc::new(());
}
