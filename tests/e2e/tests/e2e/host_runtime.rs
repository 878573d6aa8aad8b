//! The host runtime, end to end: a real guest (tests/hostile/probe) calling
//! through the policed capabilities to servers started on 127.0.0.1.

use serde_json::{json, Value};
use std::sync::Arc;
use warden::audit::Verdict;
use warden::capability::http::resolve::StaticResolver;
use warden::InvokeError;
use warden_e2e::{everything, output, policy, run, runtime};
use warden_sim::origin;

const SECRET: &str = "s3cr3t-token-value-4242";

fn probe_policy(port: u16, extra_rules: &str, limits: &str) -> String {
    format!(
        r#"
[plugins.probe]
path = "{{probe}}"

[grants.probe]
allow = ["* http://127.0.0.1:{port}/echo*", "GET http://127.0.0.1:{port}/**", {extra_rules}]
credentials = ["origin-token"]
limits = {{ {limits} }}

[credentials.origin-token]
kind = "bearer"
env = "WARDEN_TEST_ORIGIN_TOKEN"
hosts = ["http://127.0.0.1:{port}"]

[credentials.not-granted]
kind = "bearer"
env = "WARDEN_TEST_ORIGIN_TOKEN"
hosts = ["http://127.0.0.1:{port}"]
"#
    )
}

fn set_secret() {
    // SAFETY: every test sets the same value; no test reads it concurrently with a different one.
    unsafe { std::env::set_var("WARDEN_TEST_ORIGIN_TOKEN", SECRET) };
}

fn fetch(url: &str) -> Value {
    json!({"op": "fetch", "url": url})
}

fn error_kind(out: &Value) -> &str {
    out["error"]["kind"].as_str().unwrap_or("<no error>")
}

#[tokio::test]
async fn an_allowed_call_succeeds_and_is_audited() {
    let (srv, rec) = origin::spawn().await.unwrap();
    let p = policy(&probe_policy(srv.port(), "\"GET http://127.0.0.1:1/never\"", "wall_ms = 10000"));
    let rt = runtime(None);
    let report = run(&rt, &p, "probe", fetch(&srv.url("/json"))).await;
    let out = output(&report);
    assert_eq!(out["status"], 200, "{out}");
    assert_eq!(serde_json::from_str::<Value>(out["body"].as_str().unwrap()).unwrap(), json!({"ok": true}));
    assert_eq!(rec.paths(), vec!["/json"]);
    assert_eq!(report.audit.len(), 1);
    let a = &report.audit[0];
    assert_eq!(a.decision, Verdict::Allowed);
    assert_eq!(a.rule, format!("GET http://127.0.0.1:{}/**", srv.port()));
    assert_eq!(a.status, Some(200));
    assert_eq!(a.plugin, "probe");
    assert_eq!(a.invocation.run_id, "test-run");
}

#[tokio::test]
async fn the_server_receives_the_credential_but_the_guest_never_sees_it() {
    set_secret();
    let (srv, rec) = origin::spawn().await.unwrap();
    let p = policy(&probe_policy(srv.port(), "\"GET http://127.0.0.1:1/never\"", "wall_ms = 10000"));
    let rt = runtime(None);
    let report = run(&rt, &p, "probe", json!({"op": "fetch", "url": srv.url("/echo"), "credential": "origin-token"})).await;
    let out = output(&report);
    assert_eq!(out["status"], 200, "{out}");
    // The upstream got the real value...
    let seen = rec.all();
    assert_eq!(seen[0].headers.get("authorization").map(String::as_str), Some(format!("Bearer {SECRET}").as_str()));
    // ...and echoed it in a header and in the body; the guest saw neither.
    let text = out.to_string();
    assert!(!text.contains(SECRET), "guest output leaked the secret: {text}");
    assert!(text.contains("Bearer [REDACTED]"), "echo should show the redacted form: {text}");
    let echo_header = out["headers"].as_array().unwrap().iter().find(|h| h[0] == "x-echo-authorization").unwrap();
    assert_eq!(echo_header[1], "Bearer [REDACTED]");
    // Nor do the logs or the audit record.
    assert!(!everything(&report).contains(SECRET));
    assert_eq!(report.audit[0].credential.as_deref(), Some("origin-token"));
}

#[tokio::test]
async fn each_rule_part_denies_and_the_audit_names_the_rule() {
    let (srv, rec) = origin::spawn().await.unwrap();
    let port = srv.port();
    let p = policy(&probe_policy(port, "\"GET https://api.example.test/v1/*\"", "wall_ms = 10000"));
    let rt = runtime(None);
    let cases = [
        ("host", json!({"op": "fetch", "url": "https://other.example.test/v1/x"})),
        ("port", json!({"op": "fetch", "url": format!("http://127.0.0.1:{}/json", port + 1)})),
        ("scheme", json!({"op": "fetch", "url": format!("https://127.0.0.1:{port}/json")})),
        ("method", json!({"op": "fetch", "method": "DELETE", "url": srv.url("/json")})),
        ("path", json!({"op": "fetch", "url": "https://api.example.test/v2/x"})),
    ];
    for (what, input) in cases {
        let report = run(&rt, &p, "probe", input).await;
        let out = output(&report);
        assert_eq!(error_kind(&out), "denied", "{what}: {out}");
        assert_eq!(report.audit.len(), 1, "{what}");
        assert_eq!(report.audit[0].decision, Verdict::Denied, "{what}");
        assert_eq!(report.audit[0].rule, "default-deny", "{what}");
        assert!(report.audit[0].reason.as_deref().unwrap().contains("add a rule"), "{what}");
    }
    assert_eq!(rec.count(), 0, "nothing denied may reach the server");
}

#[tokio::test]
async fn private_addresses_are_denied_in_every_spelling() {
    let (srv, rec) = origin::spawn().await.unwrap();
    // Any host on any port, yet no rule names an internal address.
    let p = policy(
        r#"
[plugins.probe]
path = "{probe}"
[grants.probe]
allow = ["GET http://*:*/**"]
allow_any_host = true
"#,
    );
    let rt = runtime(None);
    let port = srv.port();
    for host in [
        "127.0.0.1",
        "127.0.0.2",
        "2130706433",
        "0x7f.1",
        "127.1",
        "0177.0.0.1",
        "0x7f000001",
        "[::1]",
        "[::ffff:127.0.0.1]",
        "[::ffff:7f00:1]",
        "10.0.0.1",
        "192.168.1.1",
        "172.16.0.1",
        "169.254.169.254",
        "[fd00:ec2::254]",
        "100.64.0.1",
        "0.0.0.0",
        "[fe80::1]",
        "[::]",
    ] {
        let report = run(&rt, &p, "probe", fetch(&format!("http://{host}:{port}/json"))).await;
        let out = output(&report);
        assert_eq!(error_kind(&out), "denied", "{host}: {out}");
        assert_eq!(report.audit[0].rule, "address-screen", "{host}");
    }
    assert_eq!(rec.count(), 0);
}

#[tokio::test]
async fn a_name_that_resolves_to_loopback_is_denied_at_connect() {
    let (srv, rec) = origin::spawn().await.unwrap();
    let resolver = StaticResolver::default().with("sneaky.example.test", &["127.0.0.1"]);
    let p = policy(&probe_policy(srv.port(), &format!("\"GET http://sneaky.example.test:{}/*\"", srv.port()), "wall_ms = 10000"));
    let rt = runtime(Some(Arc::new(resolver)));
    let report = run(&rt, &p, "probe", fetch(&format!("http://sneaky.example.test:{}/json", srv.port()))).await;
    let out = output(&report);
    assert_eq!(error_kind(&out), "denied", "{out}");
    assert!(out["error"]["message"].as_str().unwrap().contains("resolves to 127.0.0.1 (loopback)"), "{out}");
    assert_eq!(report.audit[0].rule, "address-screen");
    assert_eq!(rec.count(), 0);
}

#[tokio::test]
async fn naming_an_address_in_a_rule_allows_it_in_any_spelling() {
    let (srv, rec) = origin::spawn().await.unwrap();
    let p = policy(&probe_policy(srv.port(), "\"GET http://127.0.0.1:1/never\"", "wall_ms = 10000"));
    let rt = runtime(None);
    let report = run(&rt, &p, "probe", fetch(&format!("http://2130706433:{}/json", srv.port()))).await;
    assert_eq!(output(&report)["status"], 200);
    assert_eq!(rec.count(), 1);
}

#[tokio::test]
async fn redirects_are_returned_not_followed() {
    let (srv, rec) = origin::spawn().await.unwrap();
    let p = policy(&probe_policy(srv.port(), "\"GET http://127.0.0.1:1/never\"", "wall_ms = 10000"));
    let rt = runtime(None);
    for to in ["http://169.254.169.254/latest/meta-data/", "https://evil.example/", &srv.url("/internal")] {
        let url = format!("{}?to={}", srv.url("/redirect"), to);
        let report = run(&rt, &p, "probe", fetch(&url)).await;
        let out = output(&report);
        assert_eq!(out["status"], 302, "{to}: {out}");
    }
    assert!(!rec.paths().contains(&"/internal".to_string()), "a redirect was followed");
}

#[tokio::test]
async fn credentials_are_checked_against_grant_and_binding() {
    set_secret();
    let (srv, rec) = origin::spawn().await.unwrap();
    let (other, other_rec) = origin::spawn().await.unwrap();
    let p = policy(&probe_policy(srv.port(), &format!("\"GET http://127.0.0.1:{}/*\"", other.port()), "wall_ms = 10000"));
    let rt = runtime(None);

    let report = run(&rt, &p, "probe", json!({"op": "fetch", "url": srv.url("/echo"), "credential": "not-granted"})).await;
    assert_eq!(error_kind(&output(&report)), "denied");
    assert_eq!(report.audit[0].rule, "credential-grant");

    let report = run(&rt, &p, "probe", json!({"op": "fetch", "url": other.url("/echo"), "credential": "origin-token"})).await;
    let out = output(&report);
    assert_eq!(error_kind(&out), "denied", "{out}");
    assert!(out["error"]["message"].as_str().unwrap().contains("is bound to"), "{out}");
    assert_eq!(report.audit[0].rule, "credential-binding");

    let report = run(&rt, &p, "probe", json!({"op": "fetch", "url": srv.url("/echo"), "credential": "no-such"})).await;
    assert_eq!(error_kind(&output(&report)), "denied");

    assert_eq!(rec.count() + other_rec.count(), 0, "a refused credential must not send the request");
}

#[tokio::test]
async fn header_smuggling_and_userinfo_are_refused() {
    let (srv, rec) = origin::spawn().await.unwrap();
    let p = policy(&probe_policy(srv.port(), "\"GET http://127.0.0.1:1/never\"", "wall_ms = 10000"));
    let rt = runtime(None);
    let url = srv.url("/echo");
    let crlf = run(&rt, &p, "probe", json!({"op": "fetch", "url": url, "headers": {"x-a": "1\r\nx-injected: 2"}})).await;
    assert_eq!(error_kind(&output(&crlf)), "invalid-request");
    let crlf_name = run(&rt, &p, "probe", json!({"op": "fetch", "url": url, "headers": {"x-a\r\nx-b": "1"}})).await;
    assert_eq!(error_kind(&output(&crlf_name)), "invalid-request");
    let host = run(&rt, &p, "probe", json!({"op": "fetch", "url": url, "headers": {"Host": "internal.corp"}})).await;
    assert_eq!(error_kind(&output(&host)), "denied");
    assert_eq!(host.audit[0].rule, "host-owned-header");
    let te = run(&rt, &p, "probe", json!({"op": "fetch", "url": url, "headers": {"Transfer-Encoding": "chunked"}})).await;
    assert_eq!(error_kind(&output(&te)), "denied");
    let userinfo = format!("http://127.0.0.1:{}@evil.example/echo", srv.port());
    let ui = run(&rt, &p, "probe", fetch(&userinfo)).await;
    assert_eq!(error_kind(&output(&ui)), "denied");
    assert_eq!(ui.audit[0].rule, "userinfo");
    let long = run(&rt, &p, "probe", fetch(&format!("{url}?q={}", "a".repeat(10_000)))).await;
    assert_eq!(error_kind(&output(&long)), "invalid-request");
    assert_eq!(rec.count(), 0);
}

fn limit_of(report: &warden::runtime::InvocationReport) -> &'static str {
    match &report.outcome {
        Err(InvokeError::Limit { limit, .. }) => limit,
        other => panic!("expected a limit error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runaway_guests_are_stopped_and_the_host_keeps_serving() {
    let (srv, _rec) = origin::spawn().await.unwrap();
    let p = policy(&probe_policy(
        srv.port(),
        "\"GET http://127.0.0.1:1/never\"",
        "memory = \"16MiB\", cpu_ms = 300, wall_ms = 2000, http_requests = 3, response_bytes = \"64KiB\", log_bytes = \"4KiB\", output_bytes = \"64KiB\"",
    ));
    let rt = runtime(None);

    let r = run(&rt, &p, "probe", json!({"op": "loop"})).await;
    assert_eq!(limit_of(&r), "cpu");
    let r = run(&rt, &p, "probe", json!({"op": "spin_between_calls"})).await;
    assert_eq!(limit_of(&r), "cpu");
    let r = run(&rt, &p, "probe", json!({"op": "grow", "mib": 64})).await;
    assert_eq!(limit_of(&r), "memory");
    assert!(r.outcome.as_ref().unwrap_err().to_string().contains("limits.memory"));
    let r = run(&rt, &p, "probe", json!({"op": "huge_alloc", "bytes": 1u64 << 30})).await;
    assert_eq!(limit_of(&r), "memory");
    let r = run(&rt, &p, "probe", json!({"op": "sleep", "ms": 60_000})).await;
    assert_eq!(limit_of(&r), "wall");
    let r = run(&rt, &p, "probe", json!({"op": "output", "bytes": 100_000})).await;
    assert_eq!(limit_of(&r), "output");

    // Too many requests: the 4th is denied by quota, and only 3 went out.
    let r = run(&rt, &p, "probe", json!({"op": "fetch_many", "count": 5, "url": srv.url("/json")})).await;
    let out = output(&r);
    let kinds: Vec<Value> = out["results"].as_array().unwrap().iter().map(|x| x["status"].clone()).collect();
    assert_eq!(kinds[..3], [json!(200), json!(200), json!(200)]);
    assert_eq!(out["results"][3]["error"]["kind"], "denied");
    assert_eq!(r.audit.iter().filter(|a| a.rule == "limits.http_requests").count(), 2);

    // Oversized responses, announced or streamed without end.
    for path in ["/bytes/100000", "/endless"] {
        let r = run(&rt, &p, "probe", fetch(&srv.url(path))).await;
        assert_eq!(error_kind(&output(&r)), "too-large", "{path}");
    }
    // A slow upstream is cut off by the request timeout.
    let r = run(&rt, &p, "probe", json!({"op": "fetch", "url": srv.url("/slow"), "timeout_ms": 1500})).await;
    assert_eq!(error_kind(&output(&r)), "timeout");

    // And a well-behaved call right after all of that works.
    let r = run(&rt, &p, "probe", fetch(&srv.url("/json"))).await;
    assert_eq!(output(&r)["status"], 200);
}

#[tokio::test]
async fn traps_fail_one_invocation_with_a_clear_message() {
    let p = policy(&probe_policy(1, "\"GET http://127.0.0.1:1/never\"", "wall_ms = 10000"));
    let rt = runtime(None);
    let r = run(&rt, &p, "probe", json!({"op": "panic"})).await;
    match &r.outcome {
        Err(InvokeError::Trap { message }) => {
            assert!(message.starts_with("the plugin panicked: probe was asked to panic (at "), "{message}")
        }
        other => panic!("{other:?}"),
    }
    let r = run(&rt, &p, "probe", json!({"op": "recurse_native", "depth": 100_000_000})).await;
    match &r.outcome {
        Err(InvokeError::Trap { message }) => assert!(message.starts_with("stack overflow"), "{message}"),
        other => panic!("{other:?}"),
    }
    let r = run(&rt, &p, "probe", json!({"op": "recurse", "depth": 100_000_000})).await;
    match &r.outcome {
        Err(InvokeError::Trap { message }) => assert!(message.contains("own stack overflowing"), "{message}"),
        other => panic!("{other:?}"),
    }
    let r = run(&rt, &p, "probe", json!({"op": "not_json"})).await;
    assert!(matches!(r.outcome, Err(InvokeError::Failed { .. })), "{:?}", r.outcome);
    let r = run(&rt, &p, "probe", json!({"op": "fail", "message": "nope"})).await;
    assert_eq!(r.outcome, Err(InvokeError::Failed { message: "nope".into() }));
    let r = run(&rt, &p, "probe", json!({"op": "echo"})).await;
    assert_eq!(output(&r)["input"]["op"], "echo");
}

#[tokio::test]
async fn every_invocation_starts_from_a_fresh_instance() {
    let p = policy(&probe_policy(1, "\"GET http://127.0.0.1:1/never\"", "wall_ms = 10000"));
    let rt = runtime(None);
    for _ in 0..3 {
        let r = run(&rt, &p, "probe", json!({"op": "counter"})).await;
        assert_eq!(output(&r)["count"], 1);
    }
}

/// A small plugin's instances have their data copied in (no copy-on-write
/// image) and their slots reused: nothing one invocation left in its memory,
/// freed heap or grown pages alike, is readable by the next. Both ways a slot
/// is reset: a guest that dirtied less than `MEMORY_KEEP_RESIDENT` has its
/// pages zeroed in place (they stay mapped), one that dirtied more has the
/// rest returned to the kernel.
#[tokio::test]
async fn no_invocation_reads_what_an_earlier_one_left_in_memory() {
    let p = policy(&probe_policy(1, "\"GET http://127.0.0.1:1/never\"", "wall_ms = 10000"));
    let rt = runtime(None);
    assert_eq!(rt.load_entry(&p.plugins["probe"]).unwrap().memory_init, warden::runtime::MemoryInit::Copy);
    const { assert!(64 << 10 < warden::runtime::MEMORY_KEEP_RESIDENT && 2 << 20 > warden::runtime::MEMORY_KEEP_RESIDENT) };
    for kib in [64, 2048] {
        // The probe can see freed data within one instance, so a zero below is a finding.
        let same = run(&rt, &p, "probe", json!({"op": "residue", "kib": kib, "leave": "7f3a", "find": "7f3a"})).await;
        assert!(output(&same)["found"].as_u64().unwrap() >= 1, "{}", output(&same));
        // More invocations than a decommit batch (64), so later ones reuse earlier slots.
        for i in 0..150 {
            run(&rt, &p, "probe", json!({"op": "residue", "kib": kib, "leave": format!("c0de{kib}-{i}")})).await;
        }
        for i in 0..150 {
            let r = run(&rt, &p, "probe", json!({"op": "residue", "kib": kib, "find": format!("c0de{kib}-{i}")})).await;
            assert_eq!(output(&r)["found"], 0, "invocation {i} found an earlier one's {kib} KiB");
        }
    }
    // Idle slots keep memory only where the kernel resets it in place, and
    // only so much: each slot at most its kept bytes.
    let pool = rt.instances();
    let idle = pool.idle_resident.memory;
    assert_eq!(idle > 0, warden::runtime::resets_memory_in_place(), "{idle} bytes of memory resident in idle slots");
    assert!(idle <= pool.capacity as usize * warden::runtime::MEMORY_KEEP_RESIDENT, "{idle} bytes of memory resident in idle slots");
}

#[tokio::test]
async fn the_sandbox_has_no_ambient_authority() {
    std::env::set_var("WARDEN_AMBIENT_CANARY", "visible?");
    let p = policy(&probe_policy(1, "\"GET http://127.0.0.1:1/never\"", "wall_ms = 10000"));
    let rt = runtime(None);
    let out = output(&run(&rt, &p, "probe", json!({"op": "ambient"})).await);
    assert_eq!(out["env"], json!([]), "{out}");
    assert_eq!(out["args"], json!([]), "{out}");
    for f in out["files"].as_array().unwrap() {
        assert_eq!(f["read"], false, "{f}");
        assert_eq!(f["list"], false, "{f}");
    }
    assert_eq!(out["tcp"], false);
}

#[tokio::test]
async fn log_spam_is_capped_and_the_run_still_completes() {
    let p = policy(&probe_policy(1, "\"GET http://127.0.0.1:1/never\"", "wall_ms = 10000, log_bytes = \"4KiB\""));
    let rt = runtime(None);
    let r = run(&rt, &p, "probe", json!({"op": "log", "count": 2000})).await;
    assert_eq!(output(&r)["logged"], 2000);
    let kept: usize = r.logs.iter().filter(|l| l.source == "guest").map(|l| l.message.len()).sum();
    assert!(kept <= 4096, "kept {kept} bytes of guest log");
    assert!(r.logs.iter().any(|l| l.source == "host" && l.message.contains("dropped")), "{:?}", r.logs.last());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_guest_does_not_stall_a_well_behaved_one() {
    let (srv, _rec) = origin::spawn().await.unwrap();
    let p = policy(&probe_policy(srv.port(), "\"GET http://127.0.0.1:1/never\"", "cpu_ms = 1500, wall_ms = 5000"));
    let rt = Arc::new(runtime(None));
    let p = Arc::new(p);
    let spinners: Vec<_> = (0..4)
        .map(|_| {
            let (rt, p) = (rt.clone(), p.clone());
            tokio::spawn(async move { run(&rt, &p, "probe", json!({"op": "loop"})).await })
        })
        .collect();
    let good = run(&rt, &p, "probe", fetch(&srv.url("/json"))).await;
    assert_eq!(output(&good)["status"], 200);
    for s in spinners {
        assert_eq!(limit_of(&s.await.unwrap()), "cpu");
    }
}
