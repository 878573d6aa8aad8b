//! The connector plugins end to end: real components, the host's policy and
//! credential injection, and the local SentinelOne and Jira simulators.

use serde_json::{json, Value};
use warden::runtime::InvocationReport;
use warden::InvokeError;
use warden_e2e::{everything, output, policy, run, runtime};
use warden_sim::{jira, sentinelone};

const S1_TOKEN: &str = "s1-test-token-0b7c41";
const JIRA_TOKEN: &str = "jira-test-token-9f2e88";

fn set_tokens() {
    // SAFETY: all tests set the same values.
    unsafe {
        std::env::set_var("WARDEN_TEST_S1_TOKEN", S1_TOKEN);
        std::env::set_var("WARDEN_TEST_JIRA_TOKEN", JIRA_TOKEN);
        std::env::set_var("WARDEN_TEST_WRONG_TOKEN", "not-the-token");
    }
}

/// Grants each plugin only its simulator's routes and methods.
fn connectors_policy(s1_port: u16, jira_port: u16, s1_env: &str) -> warden::Policy {
    policy(&format!(
        r#"
[plugins.sentinelone-hunt]
path = "{{sentinelone-hunt}}"

[grants.sentinelone-hunt]
allow = [
  "GET http://127.0.0.1:{s1_port}/web/api/v2.1/system/info",
  "POST http://127.0.0.1:{s1_port}/web/api/v2.1/dv/init-query",
  "GET http://127.0.0.1:{s1_port}/web/api/v2.1/dv/query-status",
  "GET http://127.0.0.1:{s1_port}/web/api/v2.1/dv/events",
  "POST http://127.0.0.1:{s1_port}/web/api/v2.1/dv/cancel-query",
]
credentials = ["s1"]
limits = {{ wall_ms = 30000, http_requests = 100 }}

[credentials.s1]
kind = "header"
header = "Authorization"
prefix = "ApiToken "
env = "{s1_env}"
hosts = ["http://127.0.0.1:{s1_port}"]

[plugins.sentinelone-isolate]
path = "{{sentinelone-isolate}}"

[grants.sentinelone-isolate]
allow = [
  "POST http://127.0.0.1:{s1_port}/web/api/v2.1/agents/actions/disconnect",
  "POST http://127.0.0.1:{s1_port}/web/api/v2.1/agents/actions/connect",
]
credentials = ["s1"]
limits = {{ wall_ms = 10000, http_requests = 2 }}

[plugins.jira-ticket]
path = "{{jira-ticket}}"

[grants.jira-ticket]
allow = [
  "POST http://127.0.0.1:{jira_port}/rest/api/*/issue",
  "POST http://127.0.0.1:{jira_port}/rest/api/*/issue/*/comment",
  "GET http://127.0.0.1:{jira_port}/rest/api/*/issue/*",
  "POST http://127.0.0.1:{jira_port}/rest/servicedeskapi/request",
]
credentials = ["jira"]
limits = {{ wall_ms = 20000, http_requests = 20 }}

[credentials.jira]
kind = "basic"
user = "warden-bot@corp.example"
env = "WARDEN_TEST_JIRA_TOKEN"
hosts = ["http://127.0.0.1:{jira_port}"]
"#
    ))
}

fn s1_config() -> sentinelone::Config {
    sentinelone::Config { token: S1_TOKEN.into(), polls_before_finish: 1, ..Default::default() }
}

fn jira_config() -> jira::Config {
    jira::Config { token: JIRA_TOKEN.into(), ..Default::default() }
}

fn hunt_input(s1: &warden_sim::Running, extra: Value) -> Value {
    let mut input = json!({
        "console_url": format!("http://{}", s1.addr),
        "credential": "s1",
        "ioc": {"kind": "domain", "value": "evil.example"},
        "from": "-24h",
        "page_size": 4,
    });
    for (k, v) in extra.as_object().unwrap() {
        input[k] = v.clone();
    }
    input
}

fn no_secret(report: &InvocationReport) {
    let all = everything(report);
    assert!(!all.contains(S1_TOKEN) && !all.contains(JIRA_TOKEN), "a token leaked into the report");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_page_hunt_with_duplicates_yields_the_unique_hosts() {
    set_tokens();
    let (s1, sim) = sentinelone::spawn(s1_config()).await.unwrap();
    let p = connectors_policy(s1.port(), 1, "WARDEN_TEST_S1_TOKEN");
    let rt = runtime(None);
    let report = run(&rt, &p, "sentinelone-hunt", hunt_input(&s1, json!({}))).await;
    let out = output(&report);

    assert_eq!(out["query"], r#"dnsRequest in contains anycase ("evil.example")"#);
    assert_eq!(out["total_events"], 9, "{out:#}");
    assert_eq!(out["duplicates_dropped"], 5);
    assert_eq!(out["truncated"], false);
    let hosts = out["unique_hosts"].as_array().unwrap();
    let counts: Vec<(&str, u64)> = hosts.iter().map(|h| (h["agent_name"].as_str().unwrap(), h["event_count"].as_u64().unwrap())).collect();
    assert_eq!(counts, vec![("WS-ALICE-01", 5), ("WS-BOB-07", 3), ("SRV-DB-01", 1)]);
    let alice = &hosts[0];
    assert_eq!(alice["os"], "windows");
    assert_eq!(alice["ip"], "10.20.1.15");
    assert_eq!(alice["first_seen"], "2024-05-01T10:01:00.000Z");
    assert_eq!(alice["last_seen"], "2024-05-01T10:09:00.000Z");
    assert_eq!(alice["processes"], json!(["chrome.exe", "powershell.exe", "svchost.exe"]));
    assert_eq!(alice["dns_requests"], json!(["cdn.evil.example", "evil.example"]));
    assert_eq!(out["events_sample"].as_array().unwrap().len(), 9);

    // The simulator saw the injected token on every call, and 4 event pages.
    let seen = sim.recorder.all();
    assert!(seen.iter().all(|s| s.headers["authorization"] == format!("ApiToken {S1_TOKEN}")));
    assert_eq!(seen.iter().filter(|s| s.path.ends_with("/dv/events")).count(), 4);
    assert_eq!(sim.poll_rate_violations(), 0, "the plugin polled faster than once a second");
    assert!(report.logs.iter().any(|l| l.message.contains("RUNNING 50%")), "{:?}", report.logs);
    no_secret(&report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_indicators_build_quoted_queries_and_unsafe_values_are_refused() {
    set_tokens();
    let (s1, sim) = sentinelone::spawn(s1_config()).await.unwrap();
    let p = connectors_policy(s1.port(), 1, "WARDEN_TEST_S1_TOKEN");
    let rt = runtime(None);
    let h = "A".repeat(64);
    let report = run(&rt, &p, "sentinelone-hunt", hunt_input(&s1, json!({"ioc": {"kind": "sha256", "value": h}}))).await;
    let out = output(&report);
    let want = format!(r#"tgtFileSha256 = "{0}" OR srcProcImageSha256 = "{0}""#, h.to_ascii_lowercase());
    assert_eq!(out["query"], want.as_str());
    assert_eq!(sim.queries(), vec![want]);
    assert_eq!(out["total_events"], 0);
    assert_eq!(out["unique_hosts"], json!([]));

    for (kind, value, why) in [
        ("domain", r#"evil.example") OR ("x"#, "not a domain"),
        ("url", "https://evil.example/\"x", "cannot be quoted"),
        ("ip", "1.2.3.4 OR 1=1", "not an IP"),
        ("md5", "abc", "md5"),
    ] {
        let r = run(&rt, &p, "sentinelone-hunt", hunt_input(&s1, json!({"ioc": {"kind": kind, "value": value}}))).await;
        match &r.outcome {
            Err(InvokeError::InvalidInput { message }) => assert!(message.contains(why), "{kind}: {message}"),
            other => panic!("{kind}: {other:?}"),
        }
    }
    assert_eq!(sim.queries().len(), 1, "a refused indicator must not start a query");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_query_ends_with_its_state_and_error() {
    set_tokens();
    let cfg =
        sentinelone::Config { outcome: sentinelone::Outcome::Ends { state: "FAILED".into(), error: Some("S1QL syntax error at 12".into()) }, ..s1_config() };
    let (s1, _sim) = sentinelone::spawn(cfg).await.unwrap();
    let p = connectors_policy(s1.port(), 1, "WARDEN_TEST_S1_TOKEN");
    let report = run(&runtime(None), &p, "sentinelone-hunt", hunt_input(&s1, json!({}))).await;
    match &report.outcome {
        Err(InvokeError::Upstream { message, .. }) => {
            assert!(message.ends_with("ended FAILED: S1QL syntax error at 12"), "{message}")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_that_never_finishes_times_out_and_is_cancelled() {
    set_tokens();
    let cfg = sentinelone::Config { outcome: sentinelone::Outcome::NeverFinishes, ..s1_config() };
    let (s1, sim) = sentinelone::spawn(cfg).await.unwrap();
    let p = connectors_policy(s1.port(), 1, "WARDEN_TEST_S1_TOKEN");
    let report = run(&runtime(None), &p, "sentinelone-hunt", hunt_input(&s1, json!({"max_wait_ms": 2500}))).await;
    match &report.outcome {
        Err(InvokeError::Failed { message }) => {
            assert!(message.contains("still RUNNING") && message.contains("max_wait_ms = 2500"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(sim.cancelled(), 1);
    assert_eq!(sim.poll_rate_violations(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_names_the_credential() {
    set_tokens();
    let (s1, sim) = sentinelone::spawn(s1_config()).await.unwrap();
    let p = connectors_policy(s1.port(), 1, "WARDEN_TEST_WRONG_TOKEN");
    let report = run(&runtime(None), &p, "sentinelone-hunt", hunt_input(&s1, json!({}))).await;
    match &report.outcome {
        Err(InvokeError::Upstream { status: Some(401), message, .. }) => {
            assert!(message.starts_with("SentinelOne rejected credential `s1` (401 Authentication Failed (code 4010010))"), "{message}");
            assert!(!message.contains('{'), "raw JSON in the message: {message}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(sim.queries().len(), 0, "a failed connection test must stop the hunt");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_and_unavailability_are_retried() {
    set_tokens();
    let cfg = sentinelone::Config { status_throttle: 1, events_throttle: 1, events_unavailable: 1, ..s1_config() };
    let (s1, sim) = sentinelone::spawn(cfg).await.unwrap();
    let p = connectors_policy(s1.port(), 1, "WARDEN_TEST_S1_TOKEN");
    let report = run(&runtime(None), &p, "sentinelone-hunt", hunt_input(&s1, json!({"page_size": 1000}))).await;
    let out = output(&report);
    assert_eq!(out["total_events"], 9);
    assert!(report.logs.iter().any(|l| l.message.contains("answered 429")), "{:?}", report.logs);
    assert!(report.logs.iter().any(|l| l.message.contains("answered 503")), "{:?}", report.logs);
    assert_eq!(sim.poll_rate_violations(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limit_truncates_the_hunt() {
    set_tokens();
    let (s1, _sim) = sentinelone::spawn(s1_config()).await.unwrap();
    let p = connectors_policy(s1.port(), 1, "WARDEN_TEST_S1_TOKEN");
    let report = run(&runtime(None), &p, "sentinelone-hunt", hunt_input(&s1, json!({"limit": 4, "page_size": 2}))).await;
    let out = output(&report);
    assert_eq!(out["truncated"], true);
    assert!(out["total_events"].as_u64().unwrap() <= 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hunt_input_is_validated() {
    set_tokens();
    let p = connectors_policy(1, 1, "WARDEN_TEST_S1_TOKEN");
    let rt = runtime(None);
    let base = json!({"console_url": "http://127.0.0.1:1", "credential": "s1", "ioc": {"kind": "domain", "value": "x.example"}});
    for (patch, why) in [
        (json!({"poll_interval_ms": 200}), "at least 1000"),
        (json!({"page_size": 5000}), "page_size"),
        (json!({"query": "x"}), "exactly one of ioc"),
        (json!({"from": "yesterday"}), "from"),
        (json!({"from": "-1h", "to": "-2h"}), "must be before"),
        (json!({"colour": "red"}), "unknown field `colour`"),
        (json!({"os_types": ["beos"]}), "os_types: `beos` is not one of windows, macos, linux"),
    ] {
        let mut input = base.clone();
        for (k, v) in patch.as_object().unwrap() {
            input[k] = v.clone();
        }
        match run(&rt, &p, "sentinelone-hunt", input).await.outcome {
            Err(InvokeError::InvalidInput { message }) => assert!(message.contains(why), "{patch}: {message}"),
            other => panic!("{patch}: {other:?}"),
        }
    }
}

fn jira_input(jira: &warden_sim::Running, op: &str, extra: Value) -> Value {
    let mut input = json!({"operation": op, "site_url": format!("http://{}", jira.addr), "credential": "jira"});
    for (k, v) in extra.as_object().unwrap() {
        input[k] = v.clone();
    }
    input
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jira_create_comment_status_and_request() {
    set_tokens();
    let (j, sim) = jira::spawn(jira_config()).await.unwrap();
    let p = connectors_policy(1, j.port(), "WARDEN_TEST_S1_TOKEN");
    let rt = runtime(None);
    let site = format!("http://{}", j.addr);

    let created = run(
        &rt,
        &p,
        "jira-ticket",
        jira_input(
            &j,
            "create",
            json!({
                "project": "SEC", "summary": "IOC evil.example seen on 3 hosts", "description": "Hosts:\nWS-ALICE-01",
                "priority": "Highest", "labels": ["ioc", "warden"]
            }),
        ),
    )
    .await;
    let out = output(&created);
    assert_eq!(out["key"], "SEC-1");
    assert_eq!(out["url"], format!("{site}/browse/SEC-1"));
    let issue = sim.issue("SEC-1").unwrap();
    assert_eq!(issue.fields["description"], "Hosts:\nWS-ALICE-01");
    assert_eq!(issue.fields["priority"]["name"], "Highest");
    assert_eq!(issue.fields["labels"], json!(["ioc", "warden"]));

    let c = output(&run(&rt, &p, "jira-ticket", jira_input(&j, "comment", json!({"key": "SEC-1", "comment": "hunt attached", "internal": true}))).await);
    assert_eq!(c["key"], "SEC-1");
    let issue = sim.issue("SEC-1").unwrap();
    assert_eq!(issue.comments[0]["id"], c["id"]);
    assert_eq!(issue.comments[0]["properties"][0]["value"]["internal"], true);

    let s = output(&run(&rt, &p, "jira-ticket", jira_input(&j, "status", json!({"key": "SEC-1"}))).await);
    assert_eq!(s["name"], "To Do");
    assert_eq!(s["category"], "new");

    let r = output(
        &run(
            &rt,
            &p,
            "jira-ticket",
            jira_input(
                &j,
                "request",
                json!({
                    "service_desk_id": "1", "request_type_id": "10", "summary": "Please isolate WS-ALICE-01"
                }),
            ),
        )
        .await,
    );
    assert_eq!(r["key"], "SEC-2");
    assert_eq!(r["status"], "Waiting for support");
    assert_eq!(r["portal_url"], format!("{site}/servicedesk/customer/portal/1/SEC-2"));

    let auth = sim.recorder.all()[0].headers["authorization"].clone();
    assert!(auth.starts_with("Basic "), "{auth}");
    assert!(!everything(&created).contains(&auth[6..]), "the encoded credential leaked");
    no_secret(&created);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jira_open_creates_comments_and_reads_status_in_one_call() {
    set_tokens();
    let (j, sim) = jira::spawn(jira_config()).await.unwrap();
    let p = connectors_policy(1, j.port(), "WARDEN_TEST_S1_TOKEN");
    let report = run(
        &runtime(None),
        &p,
        "jira-ticket",
        jira_input(
            &j,
            "open",
            json!({
                "project": "SEC", "summary": "Hunt: evil.example", "description": "d", "comment": "3 hosts", "api_version": 3
            }),
        ),
    )
    .await;
    let out = output(&report);
    assert_eq!(out["key"], "SEC-1");
    assert_eq!(out["status"], json!({"name": "To Do", "category": "new"}));
    assert!(out["comment_id"].is_string());
    let issue = sim.issue("SEC-1").unwrap();
    assert_eq!(issue.fields["description"]["type"], "doc", "v3 sends Atlassian Document Format");
    assert_eq!(issue.comments[0]["body"]["content"][0]["content"][0]["text"], "3 hosts");
    assert!(sim.recorder.paths().iter().all(|p| !p.contains("/api/2/")));
    no_secret(&report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jira_errors_are_mapped() {
    set_tokens();
    let (j, sim) = jira::spawn(jira_config()).await.unwrap();
    let p = connectors_policy(1, j.port(), "WARDEN_TEST_S1_TOKEN");
    let rt = runtime(None);

    let bad = run(&rt, &p, "jira-ticket", jira_input(&j, "create", json!({"project": "NOPE", "summary": "x", "priority": "Urgent"}))).await;
    match &bad.outcome {
        Err(InvokeError::InvalidInput { message }) => {
            assert!(message.contains("project: valid project is required") && message.contains("priority: Specify a valid priority name"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    let missing = run(&rt, &p, "jira-ticket", jira_input(&j, "status", json!({"key": "SEC-404"}))).await;
    assert!(matches!(&missing.outcome, Err(InvokeError::InvalidInput { message }) if message.contains("does not exist")), "{:?}", missing.outcome);
    let bad_key = run(&rt, &p, "jira-ticket", jira_input(&j, "status", json!({"key": "../../admin"}))).await;
    assert!(matches!(&bad_key.outcome, Err(InvokeError::InvalidInput { .. })));

    // A brief throttle is retried; a long one ends as upstream with retry-after.
    sim.throttle_next(2);
    let ok = run(&rt, &p, "jira-ticket", jira_input(&j, "create", json!({"project": "SEC", "summary": "x"}))).await;
    assert_eq!(output(&ok)["key"], "SEC-1");
    sim.throttle_next(10);
    let throttled = run(&rt, &p, "jira-ticket", jira_input(&j, "create", json!({"project": "SEC", "summary": "x"}))).await;
    assert_eq!(
        throttled.outcome,
        Err(InvokeError::Upstream {
            status: Some(429),
            message: "Jira answered 429 during the new issue: Rate limit exceeded.".into(),
            retry_after_ms: Some(1000)
        })
    );
    sim.throttle_next(0);

    // SAFETY: same value as elsewhere except in this policy's env name.
    let wrong = policy_with_wrong_jira_token(j.port());
    let unauth = run(&rt, &wrong, "jira-ticket", jira_input(&j, "create", json!({"project": "SEC", "summary": "x"}))).await;
    match &unauth.outcome {
        Err(InvokeError::Upstream { status: Some(401), message, .. }) => assert!(message.contains("credential `jira`"), "{message}"),
        other => panic!("{other:?}"),
    }
}

fn policy_with_wrong_jira_token(port: u16) -> warden::Policy {
    let text = format!(
        r#"
[plugins.jira-ticket]
path = "{{jira-ticket}}"
[grants.jira-ticket]
allow = ["* http://127.0.0.1:{port}/rest/**"]
credentials = ["jira"]
[credentials.jira]
kind = "basic"
user = "warden-bot@corp.example"
env = "WARDEN_TEST_WRONG_TOKEN"
hosts = ["http://127.0.0.1:{port}"]
"#
    );
    policy(&text)
}

/// Containment acts on the agents named, never on an empty filter (which the
/// real API reads as every agent), and says how many SentinelOne affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolation_disconnects_exactly_the_named_agents_and_refuses_an_empty_list() {
    set_tokens();
    let (s1, sim) = sentinelone::spawn(s1_config()).await.unwrap();
    let p = connectors_policy(s1.port(), 1, "WARDEN_TEST_S1_TOKEN");
    let rt = runtime(None);
    let input = |action: &str, uuids: Value| json!({"console_url": format!("http://{}", s1.addr), "credential": "s1", "action": action, "uuids": uuids});
    let alice = "a1f0c9e2-0000-4000-8000-000000000001";
    let bob = "b2e1d8f3-0000-4000-8000-000000000002";

    let report = run(&rt, &p, "sentinelone-isolate", input("disconnect", json!([]))).await;
    match &report.outcome {
        Err(InvokeError::InvalidInput { message }) => assert!(message.contains("an empty filter would act on every agent"), "{message}"),
        other => panic!("{other:?}"),
    }
    let report = run(&rt, &p, "sentinelone-isolate", input("disconnect", json!([alice, "../agents"]))).await;
    assert!(matches!(&report.outcome, Err(InvokeError::InvalidInput { message }) if message.contains("is not an agent UUID")), "{:?}", report.outcome);
    assert!(sim.agents.lock().unwrap().actions.is_empty(), "nothing was sent for refused input");

    let report = run(&rt, &p, "sentinelone-isolate", input("disconnect", json!([alice, bob, "ffffffff-0000-4000-8000-00000000dead"]))).await;
    assert_eq!(output(&report), json!({"action": "disconnect", "affected": 2, "uuids": [alice, bob, "ffffffff-0000-4000-8000-00000000dead"]}));
    no_secret(&report);
    assert_eq!(sim.agents.lock().unwrap().isolated.iter().cloned().collect::<Vec<_>>(), vec![alice.to_string(), bob.to_string()]);
    let report = run(&rt, &p, "sentinelone-isolate", input("connect", json!([bob]))).await;
    assert_eq!(output(&report)["affected"], 1);
    assert_eq!(sim.agents.lock().unwrap().isolated.iter().cloned().collect::<Vec<_>>(), vec![alice.to_string()]);

    let p = connectors_policy(s1.port(), 1, "WARDEN_TEST_WRONG_TOKEN");
    let report = run(&rt, &p, "sentinelone-isolate", input("disconnect", json!([bob]))).await;
    assert!(
        matches!(&report.outcome, Err(InvokeError::Upstream { status: Some(401), message, .. }) if message.contains("credential `s1`")),
        "{:?}",
        report.outcome
    );
}
