//! No guest input may panic the host or make it hold more than the grant
//! allows: every import is called with the most extreme counts and sizes a
//! guest can build (tests/hostile/probe, op `extreme`), beside a well-behaved
//! invocation that must complete.

use serde_json::{json, Value};
use warden_e2e::{output, policy, run, runtime};
use warden_sim::origin;

fn grant(port: u16) -> String {
    format!(
        r#"
[plugins.probe]
path = "{{probe}}"

[grants.probe]
allow = ["GET http://127.0.0.1:{port}/*"]
limits = {{ memory = "64MiB", cpu_ms = 10000, wall_ms = 30000, log_bytes = "256KiB" }}
smtp = {{ relay = "nowhere", recipient_domains = ["corp.example"], max_recipients = 10 }}

[relays.nowhere]
host = "127.0.0.1"
port = 1
tls = "none"
default_from = "warden@corp.example"
"#
    )
}

fn kind(v: &Value) -> &str {
    v["error"]["kind"].as_str().unwrap_or("<answered>")
}

#[tokio::test]
async fn extreme_inputs_to_every_import_are_refused_without_harm_to_the_host() {
    let (srv, _rec) = origin::spawn().await.unwrap();
    let p = policy(&grant(srv.port()));
    let rt = runtime(None);
    let url = srv.url("/json");
    let (hostile, bystander) =
        tokio::join!(run(&rt, &p, "probe", json!({"op": "extreme", "url": url})), run(&rt, &p, "probe", json!({"op": "fetch", "url": url})),);
    assert_eq!(output(&bystander)["status"], 200, "a well-behaved invocation beside it completes");
    let out = output(&hostile);
    for (call, expected, says) in [
        ("headers_25000", "invalid-request", "at most 100"),
        ("header_1mib", "invalid-request", "at most 64 KiB in all"),
        ("method_1mib", "invalid-request", "no HTTP method is longer"),
        ("credential_8mib", "denied", "is not granted"),
        ("recipients_100000", "denied", "may address at most 10"),
        ("subject_4mib", "denied", "smtp.max_message_bytes"),
        ("reply_to_1mib", "invalid-message", "not an email address"),
    ] {
        assert_eq!(kind(&out[call]), expected, "{call}: {}", out[call]);
        let message = out[call]["error"]["message"].as_str().unwrap_or("");
        assert!(message.contains(says), "{call}: {message}");
        assert!(message.len() < 2048, "{call}: the answer quotes the guest's input whole ({} bytes)", message.len());
    }
    assert_eq!(out["now"], true);
    // Every record the host keeps is small, whatever the guest sent.
    assert_eq!(hostile.audit.len(), 7);
    for rec in &hostile.audit {
        let size = serde_json::to_string(rec).unwrap().len();
        assert!(size < 8 * 1024, "an audit record of {size} bytes: {rec:?}");
    }
    // Logs: within limits.log_bytes, floods of empty lines included, and no raw control characters.
    let kept: usize = hostile.logs.iter().map(|l| l.message.len()).sum();
    assert!(kept <= 256 * 1024 + 512, "{kept} bytes of log kept");
    assert!(hostile.logs.iter().all(|l| !l.message.contains('\u{1b}') && !l.message.contains('\u{7}')));
    assert!(hostile.logs.iter().any(|l| l.message.contains("\\u{1b}[2Jcleared")), "the control line is kept, escaped");
    let note = hostile.logs.last().unwrap();
    assert!(note.source == "host" && note.message.contains("lines) dropped past limits.log_bytes"), "{note:?}");
}

#[tokio::test]
async fn a_huge_error_message_is_capped_and_escaped() {
    let (srv, _rec) = origin::spawn().await.unwrap();
    let p = policy(&grant(srv.port()));
    let rt = runtime(None);
    let report = run(&rt, &p, "probe", json!({"op": "fail_big", "bytes": 8 << 20})).await;
    let e = report.outcome.unwrap_err().to_string();
    assert!(e.len() < 5000, "{} bytes", e.len());
    assert!(e.contains("\\u{1b}[2J") && !e.contains('\u{1b}'), "{}", &e[..80]);
}

#[tokio::test]
async fn refused_calls_past_limits_denials_stop_the_invocation() {
    let (srv, _rec) = origin::spawn().await.unwrap();
    let p = policy(&grant(srv.port()).replace("log_bytes = \"256KiB\"", "log_bytes = \"256KiB\", denials = 5, http_requests = 1000"));
    let rt = runtime(None);
    let report = run(&rt, &p, "probe", json!({"op": "fetch_many", "count": 50, "url": "http://169.254.169.254/"})).await;
    match &report.outcome {
        Err(warden::InvokeError::Limit { limit: "denials", message }) => assert!(message.contains("limits.denials"), "{message}"),
        other => panic!("expected the denials limit, got {other:?}"),
    }
    let denied = report.audit.iter().filter(|r| r.capability == "http").count();
    assert_eq!(denied, 6, "five refusals answered, the sixth stops it");
    assert_eq!(report.audit.last().unwrap().rule, "limits.denials");
}

#[tokio::test]
async fn a_missing_credential_value_is_explained_to_the_operator_not_the_guest() {
    let (srv, rec) = origin::spawn().await.unwrap();
    let text = format!(
        "{}\n[credentials.unset]\nkind = \"bearer\"\nenv = \"WARDEN_TEST_NEVER_SET_4417\"\nhosts = [\"http://127.0.0.1:{port}\"]\n",
        grant(srv.port()).replace("allow = [", "credentials = [\"unset\"]\nallow = ["),
        port = srv.port()
    );
    let p = policy(&text);
    let rt = runtime(None);
    let report = run(&rt, &p, "probe", json!({"op": "fetch", "url": srv.url("/json"), "credential": "unset"})).await;
    let out = output(&report);
    let told = out["error"]["message"].as_str().unwrap();
    assert_eq!(kind(&out), "denied");
    assert!(
        told.contains("credential `unset` has no value on this host") && !told.contains("WARDEN_TEST_NEVER_SET_4417"),
        "the guest learns the operator's env var: {told}"
    );
    let audited = report.audit[0].reason.as_deref().unwrap();
    assert!(audited.contains("WARDEN_TEST_NEVER_SET_4417"), "the operator's audit record says where: {audited}");
    assert_eq!(report.audit[0].rule, "credential-value");
    assert_eq!(rec.count(), 0, "nothing was sent");
}

#[tokio::test]
async fn wasi_random_and_resource_handles_are_bounded_by_the_host() {
    let (srv, _rec) = origin::spawn().await.unwrap();
    let p = policy(&grant(srv.port()));
    let rt = runtime(None);
    let ok = run(&rt, &p, "probe", json!({"op": "random", "len": 4096})).await;
    assert_eq!(output(&ok)["got"], 4096);
    // 4 GiB of random bytes would be host memory far past the 64 MiB grant.
    let huge = run(&rt, &p, "probe", json!({"op": "random", "len": 4u64 << 30})).await;
    assert!(matches!(&huge.outcome, Err(warden::InvokeError::Trap { message }) if message.contains("exceeds limit")), "{:?}", huge.outcome);
    let held = run(&rt, &p, "probe", json!({"op": "handles", "count": 100})).await;
    assert_eq!(output(&held)["held"], 100);
    let flood = run(&rt, &p, "probe", json!({"op": "handles", "count": 1_000_000})).await;
    // Each held handle is charged to the grant's memory: stopped, naming the limit.
    assert!(
        matches!(&flood.outcome, Err(warden::InvokeError::Limit { limit: "memory", message }) if message.contains("host resources")),
        "{:?}",
        flood.outcome
    );
}
