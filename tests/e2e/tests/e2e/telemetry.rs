//! Traces end to end: `warden serve`'s app in-process exports OTLP/HTTP
//! (protobuf) to a receiver in this test, which decodes what arrived. The
//! threat-hunt story, started by a webhook that carries the caller's W3C
//! `traceparent`, must give one tree: caller → webhook → run → steps →
//! sub-story runs → invocations → capability calls; a denial carries its
//! rule; the trace reaches an origin only through a grant that opted in; and
//! no secret, body or query string value appears in any attribute.

use opentelemetry_proto::tonic::trace::v1::Span;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use warden_e2e::otlp::{attr, receiver};
use warden_e2e::SmtpServer;
use warden_sim::{jira, origin, sentinelone};

const WEBHOOK_SECRET: &str = "telemetry-webhook-secret";
const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

const PROBE: &str = r#"name: probing
steps:
  - id: reach
    action: probe
    with: {op: fetch, url: "http://169.254.169.254/latest/meta-data/"}
  - id: echo
    action: probe
    with: {op: fetch, url: "{{ input.origin }}/echo?secret_q=abc123"}
  - id: spin
    action: probe
    with: {op: loop}
    on_error: continue
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_gives_one_trace_from_the_caller_down_to_each_call_with_no_secret_in_it() {
    let (otlp, spans, headers) = receiver().await;
    // SAFETY: set before the server starts; no other test in this binary reads them.
    unsafe {
        std::env::set_var("S1_API_TOKEN", "s1-demo-token");
        std::env::set_var("JIRA_API_TOKEN", "jira-demo-token");
        std::env::set_var("WARDEN_WEBHOOK_SECRET", WEBHOOK_SECRET);
        std::env::set_var("TELEMETRY_TEST_COLLECTOR_KEY", "collector-key-value");
    }
    let (s1, _) = sentinelone::spawn(sentinelone::Config { polls_before_finish: 1, ..Default::default() }).await.unwrap();
    let (j, _) = jira::spawn(jira::Config::default()).await.unwrap();
    let (o, _rec) = origin::spawn().await.unwrap();
    let smtp = SmtpServer::start();
    let (dir, mut text) = warden_e2e::example_files(s1.port(), j.port(), smtp.port, &[("probing.yaml", PROBE)]);
    text.push_str(&format!(
        "\n[telemetry]\nendpoint = \"{otlp}\"\nsample_ratio = 1.0\nservice_name = \"warden-test\"\nheaders_env = {{ \"x-collector-key\" = \"TELEMETRY_TEST_COLLECTOR_KEY\" }}\n\
         [plugins.probe]\npath = \"{}\"\n[grants.probe]\nallow = [\"GET http://127.0.0.1:{}/*\"]\ntraceparent = true\nlimits = {{ cpu_ms = 200 }}\n\
         [triggers.probing]\nsecret_env = \"WARDEN_WEBHOOK_SECRET\"\nallow_sync = true\n",
        warden_e2e::guest("probe").display(),
        o.port()
    ));
    let policy = warden_e2e::parse_example_policy(&text);
    let telemetry = warden::telemetry::Telemetry::start(&policy.telemetry).unwrap().map(Arc::new);
    assert!(telemetry.is_some(), "[telemetry] endpoint turns tracing on");
    let (base, engine) = warden_e2e::serve_traced(warden_e2e::engine(policy, &dir.0), telemetry.clone()).await;

    let send = |story: &'static str, body: Value, traceparent: Option<String>| {
        let base = base.clone();
        async move {
            let body = body.to_string();
            let mut req = reqwest::Client::new()
                .post(format!("{base}/webhooks/{story}?wait=true"))
                .header("content-type", "application/json")
                .header(warden::server::SIGNATURE_HEADER, warden::server::sign(WEBHOOK_SECRET.as_bytes(), story, body.as_bytes()));
            if let Some(tp) = traceparent {
                req = req.header("traceparent", tp);
            }
            let r = req.body(body).send().await.unwrap();
            assert_eq!(r.status(), 200);
            serde_json::from_slice::<Value>(&r.bytes().await.unwrap()).unwrap()
        }
    };
    let hunt = send(
        "threat-hunt",
        json!({"indicator": {"kind": "domain", "value": "evil.example"}, "leads": ["soc-lead@corp.example"]}),
        Some(format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01")),
    )
    .await;
    assert_eq!(hunt["state"], "succeeded", "{hunt}");
    let probing = send("probing", json!({"origin": format!("http://127.0.0.1:{}", o.port())}), None).await;
    assert_eq!(probing["state"], "succeeded", "{probing}");
    // A run that parks for an approval and resumes once decided stays in its trace.
    let asked = send(
        "threat-hunt",
        json!({"indicator": {"kind": "domain", "value": "evil.example"}, "leads": ["soc-lead@corp.example"], "ask_to_isolate": true}),
        None,
    )
    .await;
    assert_eq!(asked["state"], "waiting", "{asked}");
    let asked_id = asked["run_id"].as_str().unwrap().to_string();
    let approvals = engine.store.approvals().unwrap();
    let pending = approvals.approval(&asked_id, "contain").unwrap().unwrap();
    let by = warden::approval::Decision { choice: None, decided_by: "admin".into(), via: "api".into(), from: None, comment: None, decided_ms: 1 };
    warden::store::decide(approvals, &pending, "ignore", None, false, by).unwrap().unwrap();
    for _ in 0..100 {
        if engine.store.run_summary(&asked_id).unwrap().unwrap().state == "succeeded" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(engine.store.run_summary(&asked_id).unwrap().unwrap().state, "succeeded", "the sweep resumed the decided run");
    // Everything buffered is sent at shutdown.
    let t = telemetry.unwrap();
    tokio::task::spawn_blocking(move || t.shutdown()).await.unwrap();
    let spans = spans.lock().unwrap().clone();
    let headers = headers.lock().unwrap().clone();
    assert!(
        !headers.is_empty() && headers.iter().all(|h| h.get("x-collector-key").map(String::as_str) == Some("collector-key-value")),
        "headers_env reached every export"
    );
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let by_id: HashMap<String, &Span> = spans.iter().map(|s| (hex(&s.span_id), s)).collect();
    let parent_of = |s: &Span| by_id.get(&hex(&s.parent_span_id)).copied();
    let named = |name: &str| spans.iter().filter(|s| s.name == name).collect::<Vec<_>>();

    // The caller's trace continues: webhook → run → steps.
    let hook = *named("POST /webhooks/threat-hunt").iter().find(|h| hex(&h.trace_id) == CALLER_TRACE).expect("the webhook span in the caller's trace");
    assert_eq!((hex(&hook.trace_id), hex(&hook.parent_span_id)), (CALLER_TRACE.to_string(), CALLER_SPAN.to_string()));
    assert_eq!(attr(hook, "http.response.status_code").as_deref(), Some("200"));
    let run_id = hunt["run_id"].as_str().unwrap();
    let run = *named("run threat-hunt").iter().find(|r| attr(r, "warden.run.id").as_deref() == Some(run_id)).unwrap();
    assert_eq!(hex(&run.parent_span_id), hex(&hook.span_id), "the run is a child of its webhook");
    assert_eq!(attr(run, "warden.run.id").as_deref(), Some(run_id));
    assert_eq!(
        (attr(run, "warden.team").as_deref(), attr(run, "warden.trigger").as_deref(), attr(run, "warden.run.state").as_deref()),
        (Some("soc"), Some("webhook"), Some("succeeded"))
    );
    assert!(spans.iter().filter(|s| hex(&s.trace_id) == CALLER_TRACE).count() > 10, "the whole run is in the caller's trace");
    // The hunt step calls its sub-story, whose hunt step invokes the plugin, whose calls are spans.
    let hunt_step = spans.iter().find(|s| s.name == "step hunt" && hex(&s.parent_span_id) == hex(&run.span_id)).unwrap();
    let sub = *named("run sentinelone-hunt")
        .iter()
        .find(|s| hex(&s.parent_span_id) == hex(&hunt_step.span_id))
        .expect("a sub-story run is a child of the step that called it");
    let invoke = *named("invoke sentinelone-hunt").iter().find(|i| parent_of(i).is_some_and(|st| hex(&st.parent_span_id) == hex(&sub.span_id))).unwrap();
    assert_eq!(parent_of(parent_of(invoke).unwrap()).map(|r| r.name.as_str()), Some("run sentinelone-hunt"));
    assert_eq!(attr(invoke, "warden.plugin.sha256").map(|d| d.len()), Some(64));
    let calls: Vec<&Span> = spans.iter().filter(|s| hex(&s.parent_span_id) == hex(&invoke.span_id)).collect();
    let init = calls.iter().find(|c| attr(c, "url.path").as_deref() == Some("/web/api/v2.1/dv/init-query")).expect("the init-query call");
    assert_eq!(
        (init.name.as_str(), attr(init, "http.response.status_code").as_deref(), attr(init, "warden.credential").as_deref()),
        ("http POST", Some("200"), Some("sentinelone"))
    );
    assert!(attr(init, "warden.rule").unwrap().contains("/web/api/v2.1/dv/init-query"), "the allowing rule");
    let step_ids: Vec<String> = named("step notify")
        .iter()
        .filter(|s| hex(&s.parent_span_id) == hex(&run.span_id))
        .map(|s| attr(s, "warden.step.outcome").unwrap_or_default())
        .collect();
    assert_eq!(step_ids, vec!["succeeded".to_string()]);
    assert!(spans.iter().any(|s| s.name == "smtp" || s.name.starts_with("smtp ")), "the email's SMTP call");

    // A denial carries the rule that decided; the trace reaches an origin only through a grant that opted in.
    let denied = spans.iter().find(|s| attr(s, "warden.decision").as_deref() == Some("denied")).expect("the denied call");
    assert_eq!(attr(denied, "warden.rule").as_deref(), Some("default-deny"));
    assert_eq!(attr(denied, "warden.origin").as_deref(), Some("http://169.254.169.254"));
    let stored = engine.store.get_run(probing["run_id"].as_str().unwrap()).unwrap().unwrap();
    let echo_out = stored.steps.iter().find(|s| s.step_id == "echo").unwrap().output.clone().unwrap();
    let body: Value = serde_json::from_str(echo_out["body"].as_str().unwrap()).unwrap();
    let sent = body["headers"]["traceparent"].as_str().expect("the opted-in grant sends traceparent");
    let probing_run = named("run probing")[0];
    assert!(sent.starts_with(&format!("00-{}-", hex(&probing_run.trace_id))), "{sent}");
    let echo_call = spans.iter().find(|s| attr(s, "url.path").as_deref() == Some("/echo")).unwrap();
    assert_eq!(attr(echo_call, "warden.origin"), Some(format!("http://127.0.0.1:{}", o.port())));

    // An invocation stopped at a limit says which.
    let spun =
        spans.iter().find(|s| s.name == "invoke probe" && attr(s, "warden.error.kind").as_deref() == Some("limit")).expect("the spinning step's invocation");
    assert_eq!(attr(spun, "warden.limit").as_deref(), Some("cpu"));

    // Never a credential, a query string value, or a body in any attribute.
    for s in &spans {
        for a in &s.attributes {
            let v = format!("{:?}", a.value);
            for secret in ["s1-demo-token", "jira-demo-token", WEBHOOK_SECRET, "abc123", "collector-key-value", "secret_q"] {
                assert!(!v.contains(secret), "span {} attribute {} holds {secret}: {v}", s.name, a.key);
            }
            assert!(!a.key.contains("body") || a.key.ends_with(".size"), "span {} has a body attribute {}", s.name, a.key);
        }
    }
    // The resumed part: a run span in the same trace, child of the parked part's run span.
    let parts: Vec<&Span> = spans.iter().filter(|s| s.name == "run threat-hunt" && attr(s, "warden.run.id").as_deref() == Some(asked_id.as_str())).collect();
    assert_eq!(parts.len(), 2, "parked, then resumed");
    let (first, second) = if attr(parts[0], "warden.run.state").as_deref() == Some("waiting") { (parts[0], parts[1]) } else { (parts[1], parts[0]) };
    assert_eq!((attr(first, "warden.run.state").as_deref(), attr(second, "warden.run.state").as_deref()), (Some("waiting"), Some("succeeded")));
    assert_eq!(hex(&second.trace_id), hex(&first.trace_id));
    assert_eq!(hex(&second.parent_span_id), hex(&first.span_id));
    assert_eq!(attr(second, "warden.trigger").as_deref(), Some("resume"));
    // `runs show` and the API name the trace.
    let detail = engine.store.get_run(run_id).unwrap().unwrap();
    assert_eq!(detail.run.trace_id.as_deref(), Some(CALLER_TRACE));
    drop(smtp);
}
