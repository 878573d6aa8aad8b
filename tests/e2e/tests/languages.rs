//! Connectors in other languages run under the same policy: the JavaScript
//! example (plugins/js-fetch, built with componentize-js) and the Python one
//! (plugins/py-fetch, built with componentize-py).

use serde_json::json;
use warden::InvokeError;
use warden_e2e::{everything, output, policy, run, runtime};
use warden_sim::origin;

const TOKEN: &str = "js-plugin-token-7d1e";

async fn injected_and_denied(plugin: &str) {
    // SAFETY: only these tests read it, and they set the same value.
    unsafe { std::env::set_var("WARDEN_TEST_JS_TOKEN", TOKEN) };
    let (srv, rec) = origin::spawn().await.unwrap();
    let p = policy(&format!(
        r#"
[plugins.{plugin}]
path = "{{{plugin}}}"
[grants.{plugin}]
allow = ["GET http://127.0.0.1:{port}/*"]
credentials = ["api"]
limits = {{ memory = "128MiB", cpu_ms = 5000, wall_ms = 20000 }}
[credentials.api]
kind = "bearer"
env = "WARDEN_TEST_JS_TOKEN"
hosts = ["http://127.0.0.1:{port}"]
"#,
        port = srv.port()
    ));
    let rt = runtime(None);

    let ok = run(&rt, &p, plugin, json!({"url": srv.url("/echo"), "credential": "api"})).await;
    let out = output(&ok);
    assert_eq!(out["status"], 200, "{out}");
    assert_eq!(out["body"]["headers"]["authorization"], "Bearer [REDACTED]");
    assert_eq!(rec.all()[0].headers["authorization"], format!("Bearer {TOKEN}"));
    assert!(ok.logs.iter().any(|l| l.message.starts_with("GET http://127.0.0.1")), "{:?}", ok.logs);
    assert!(!everything(&ok).contains(TOKEN));

    let denied = run(&rt, &p, plugin, json!({"url": "http://169.254.169.254/latest/meta-data/"})).await;
    match &denied.outcome {
        Err(InvokeError::Denied { message }) => assert!(message.contains(&format!("no rule of {plugin} allows http://169.254.169.254:80")), "{message}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(denied.audit[0].rule, "default-deny");
    assert_eq!(rec.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_javascript_connector_gets_its_credential_injected_and_is_denied_off_policy() {
    injected_and_denied("js-fetch").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_connector_gets_its_credential_injected_and_is_denied_off_policy() {
    injected_and_denied("py-fetch").await;
}
