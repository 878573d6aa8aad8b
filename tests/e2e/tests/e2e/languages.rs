//! Connectors in other languages, and in Rust without warden's SDK, reach HTTP
//! through standard wasi:http — `fetch()` in the JavaScript example
//! (plugins/js-fetch, componentize-js), the wasi:http helper in the Python one
//! (plugins/py-fetch, componentize-py), raw wasi:http in the Rust probe — and
//! are held to the same policy as warden's own http import: the credential
//! injected by the host and never seen by the guest, denials with their rule,
//! redirects not followed, response caps, address screening.

use serde_json::{json, Value};
use warden::runtime::InvocationReport;
use warden::InvokeError;
use warden_e2e::{everything, policy, run, runtime};
use warden_sim::origin;

const TOKEN: &str = "wasi-http-plugin-token-7d1e";

/// The three guests, each as a plugin with a strict grant and one (`-any`)
/// that may reach any public host.
const GUESTS: [&str; 3] = ["js-fetch", "py-fetch", "probe"];

fn the_policy(port: u16) -> warden::Policy {
    let mut text = String::new();
    for g in GUESTS {
        text.push_str(&format!(
            r#"
[plugins.{g}]
path = "{{{g}}}"
[plugins.{g}-any]
path = "{{{g}}}"
[grants.{g}]
allow = ["GET http://127.0.0.1:{port}/*", "POST http://127.0.0.1:{port}/echo"]
credentials = ["api"]
limits = {{ memory = "128MiB", cpu_ms = 5000, wall_ms = 20000, response_bytes = "64KiB" }}
[grants.{g}-any]
allow = ["GET http://*:*/**"]
allow_any_host = true
limits = {{ memory = "128MiB", cpu_ms = 5000, wall_ms = 20000 }}
"#
        ));
    }
    text.push_str(&format!(
        r#"
[credentials.api]
kind = "bearer"
env = "WARDEN_TEST_WASI_HTTP_TOKEN"
hosts = ["http://127.0.0.1:{port}"]
"#
    ));
    policy(&text)
}

/// The same request in each guest's input language.
fn input(guest: &str, method: &str, url: &str, body: Option<&str>, credential: Option<&str>) -> Value {
    let mut v = json!({"url": url, "method": method});
    if let Some(b) = body {
        v["body"] = json!(b);
    }
    if let Some(c) = credential {
        v["credential"] = json!(c);
    }
    if guest == "probe" {
        v["op"] = json!("fetch");
        v["door"] = json!("wasi-http");
    }
    v
}

/// What the guest got: a status and a body (JSON when it was), or the error
/// (kind, message) the guest reported or failed with.
fn answer(report: &InvocationReport) -> Result<(u16, Value), (String, String)> {
    match &report.outcome {
        Ok(text) => {
            let out: Value = serde_json::from_str(text).unwrap();
            if let Some(e) = out.get("error") {
                return Err((e["kind"].as_str().unwrap_or("").into(), e["message"].as_str().unwrap_or("").into()));
            }
            let body = match &out["body"] {
                Value::String(s) => serde_json::from_str(s).unwrap_or(Value::String(s.clone())),
                other => other.clone(),
            };
            Ok((out["status"].as_u64().unwrap() as u16, body))
        }
        Err(InvokeError::Denied { message }) => Err(("denied".into(), message.clone())),
        Err(other) => Err(("failed".into(), other.to_string())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wasi_http_guests_in_every_language_are_held_to_the_same_policy() {
    // SAFETY: only this test reads it.
    unsafe { std::env::set_var("WARDEN_TEST_WASI_HTTP_TOKEN", TOKEN) };
    let (srv, rec) = origin::spawn().await.unwrap();
    let p = the_policy(srv.port());
    let rt = runtime(None);
    let mut failures = Vec::new();
    for g in GUESTS {
        let mut check = |what: &str, ok: bool, detail: String| {
            if !ok {
                failures.push(format!("{g}: {what}: {detail}"));
            }
        };
        let seen_before = rec.count();

        // GET with an injected credential: the origin receives it, the guest does not.
        let r = run(&rt, &p, g, input(g, "GET", &srv.url("/echo"), None, Some("api"))).await;
        match answer(&r) {
            Ok((200, body)) => {
                check("the guest sees the echoed credential redacted", body["headers"]["authorization"] == "Bearer [REDACTED]", body.to_string())
            }
            other => check("GET with a credential", false, format!("{other:?} {:?}", r.logs)),
        }
        let last = rec.all().last().cloned().unwrap();
        check(
            "the origin received the injected credential",
            last.headers.get("authorization") == Some(&format!("Bearer {TOKEN}")),
            format!("{:?}", last.headers),
        );
        check("the credential header never reaches the origin", !last.headers.contains_key("warden-credential"), format!("{:?}", last.headers));
        check("the audit names the credential", r.audit.first().and_then(|a| a.credential.clone()).as_deref() == Some("api"), format!("{:?}", r.audit));
        check("the token appears nowhere in the report", !everything(&r).contains(TOKEN), String::new());

        // POST with a body and the credential.
        let r = run(&rt, &p, g, input(g, "POST", &srv.url("/echo"), Some(r#"{"summary":"ioc"}"#), Some("api"))).await;
        match answer(&r) {
            Ok((200, body)) => check("the POST body arrives", body["method"] == "POST" && body["body"] == r#"{"summary":"ioc"}"#, body.to_string()),
            other => check("POST with a credential", false, format!("{other:?}")),
        }
        check("the POST carried the credential", rec.all().last().unwrap().headers.get("authorization") == Some(&format!("Bearer {TOKEN}")), String::new());

        // A denial names the rule and the reason.
        let r = run(&rt, &p, g, input(g, "GET", "http://169.254.169.254/latest/meta-data/", None, None)).await;
        match answer(&r) {
            // (A JavaScript fetch() rejects with a bare NetworkError, so the example
            // cannot tell a denial from a failure; the host names the refusal in the
            // step error either way.)
            Err((kind, m)) => check(
                "a denial says the rule and why",
                m.contains("rule `default-deny`") && m.contains(&format!("no rule of {g} allows http://169.254.169.254:80")),
                format!("{kind}: {m}"),
            ),
            other => check("a denial", false, format!("{other:?}")),
        }
        check("the denial is audited", r.audit.iter().any(|a| a.rule == "default-deny"), format!("{:?}", r.audit));

        // A redirect is never followed by the host: the guest gets the 3xx, and
        // a client that follows it on its own asks again and is judged again.
        let to = "http://evil.example/steal";
        let r = run(&rt, &p, g, input(g, "GET", &format!("{}?to={to}", srv.url("/redirect")), None, None)).await;
        let first = r.audit.first().map(|a| (a.status, a.decision.clone()));
        check("the 3xx reaches the guest's side", first.as_ref().map(|f| f.0) == Some(Some(302)), format!("{:?}", r.audit));
        let followed = r.audit.iter().skip(1).find(|a| a.url.starts_with(to));
        if let Some(hop) = followed {
            check("a hop the guest's client follows is judged again", hop.rule == "default-deny", format!("{hop:?}"));
        }
        check("no hop reached the origin beyond the redirect", rec.all().last().map(|r| r.path.clone()).as_deref() == Some("/redirect"), String::new());

        // A response over the grant's cap stops being read.
        let r = run(&rt, &p, g, input(g, "GET", &srv.url("/endless"), None, None)).await;
        match answer(&r) {
            Err((_, m)) => check("an endless body fails with the cap named", m.contains("limits.response_bytes"), m),
            other => check("an endless body", false, format!("{other:?}")),
        }

        // Address screening: a grant for any public host still refuses internal addresses.
        let r = run(&rt, &p, &format!("{g}-any"), input(g, "GET", "http://10.0.0.1/latest", None, None)).await;
        match answer(&r) {
            Err((_, m)) => check("a private address is screened", m.contains("rule `address-screen`") && m.contains("private"), m),
            other => check("a private address", false, format!("{other:?}")),
        }
        let _ = seen_before;
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A small component's data is copied into each fresh instance; an
/// interpreter's multi-MiB heap snapshot is mapped copy-on-write instead of
/// being copied at every invocation (and both kinds run: the test above).
#[test]
fn interpreters_get_copy_on_write_memory_and_small_plugins_copied_data() {
    let p = the_policy(1);
    let rt = runtime(None);
    let init = |g: &str| rt.load_entry(&p.plugins[g]).unwrap().memory_init;
    assert_eq!(init("probe"), warden::runtime::MemoryInit::Copy);
    assert_eq!(init("js-fetch"), warden::runtime::MemoryInit::CopyOnWrite);
    assert_eq!(init("py-fetch"), warden::runtime::MemoryInit::CopyOnWrite);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uncaught_exception_reaches_the_step_error_with_the_guests_own_words() {
    let (srv, _rec) = origin::spawn().await.unwrap();
    let p = the_policy(srv.port());
    let rt = runtime(None);
    let js = run(&rt, &p, "js-fetch", json!({"url": srv.url("/json"), "throw": "ticket key missing"})).await;
    match &js.outcome {
        Err(e) => assert!(e.to_string().contains("ticket key missing"), "{e}"),
        Ok(o) => panic!("{o}"),
    }
    let py = run(&rt, &p, "py-fetch", json!({"url": srv.url("/json"), "raise": "no ticket key"})).await;
    match &py.outcome {
        Err(e) => {
            let m = e.to_string();
            assert!(m.contains("ValueError: no ticket key") && m.contains("app.py"), "{m}");
        }
        Ok(o) => panic!("{o}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auto_credential_is_added_without_the_guest_naming_it() {
    unsafe { std::env::set_var("WARDEN_TEST_WASI_HTTP_AUTO", "auto-token-55aa") };
    let (srv, rec) = origin::spawn().await.unwrap();
    let port = srv.port();
    let p = policy(&format!(
        r#"
[plugins.js-fetch]
path = "{{js-fetch}}"
[grants.js-fetch]
allow = ["GET http://127.0.0.1:{port}/*"]
credentials = ["auto"]
limits = {{ memory = "128MiB", cpu_ms = 5000, wall_ms = 20000 }}
[credentials.auto]
kind = "header"
header = "x-api-key"
env = "WARDEN_TEST_WASI_HTTP_AUTO"
hosts = ["http://127.0.0.1:{port}"]
inject = "auto"
"#
    ));
    let rt = runtime(None);
    let r = run(&rt, &p, "js-fetch", json!({"url": srv.url("/echo")})).await;
    assert!(r.outcome.is_ok(), "{:?}", r.outcome);
    assert_eq!(rec.all().last().unwrap().headers.get("x-api-key").map(String::as_str), Some("auto-token-55aa"));
    assert_eq!(r.audit[0].credential.as_deref(), Some("auto"));
    assert!(!everything(&r).contains("auto-token-55aa"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_wasi_http_requests_are_bounded_by_the_wall_clock_and_refusals_by_the_denials_limit() {
    let (srv, _rec) = origin::spawn().await.unwrap();
    let port = srv.port();
    let p = policy(&format!(
        r#"
[plugins.probe]
path = "{{probe}}"
[grants.probe]
allow = ["GET http://127.0.0.1:{port}/*"]
limits = {{ wall_ms = 1500, http_requests = 1000 }}
"#
    ));
    let rt = runtime(None);
    // An upstream that never finishes: the guest waits in wasi:io's poll, off
    // the CPU, and the wall-clock limit ends the invocation.
    let started = std::time::Instant::now();
    let r = run(&rt, &p, "probe", json!({"op": "fetch", "door": "wasi-http", "url": srv.url("/slow")})).await;
    let took = started.elapsed();
    assert!(took < std::time::Duration::from_secs(5), "{took:?}");
    match &r.outcome {
        Err(InvokeError::Limit { limit: "wall", .. }) => {}
        Ok(out) => assert!(out.contains("timeout"), "{out}"),
        other => panic!("expected the wall-clock limit or a timeout, not the CPU limit: {other:?}"),
    }
    // Refusals through wasi:http count against limits.denials like any other.
    let r = run(&rt, &p, "probe", json!({"op": "fetch_many", "door": "wasi-http", "count": 100, "url": "http://example.com/"})).await;
    match &r.outcome {
        Err(InvokeError::Limit { limit: "denials", message }) => assert!(message.contains("limits.denials"), "{message}"),
        other => panic!("{other:?}"),
    }
    assert!(r.audit.iter().filter(|a| a.rule == "default-deny").count() <= 34, "{}", r.audit.len());
}
