//! The hostile suite: an adversarial guest (tests/hostile/probe) tries every
//! known way out. For every case: the exact answer reaches the caller, an
//! audit record exists, no secret appears anywhere (output, logs, audit, run
//! store), and a well-behaved run executing at the same time completes.

use serde_json::{json, Value};
use std::sync::Arc;
use warden::capability::http::resolve::StaticResolver;
use warden::story::engine::{Quiet, StoryRunner};
use warden::story::Library;
use warden_e2e::{guest, runtime, workspace_root, StoryDir};
use warden_sim::origin;

const SECRET: &str = "hostile-suite-secret-90f1c2";

enum Expect {
    /// The guest's request fails with this `http-error` kind, audited under `rule`
    /// (a request that was allowed and then failed is audited under its allow rule);
    /// the reason mentions `says`.
    Refused { kind: &'static str, rule: String, says: &'static str },
    /// The host stops the guest: step error kind (`limit`/`trap`), a phrase, and the sandbox audit rule.
    Stopped { kind: &'static str, says: &'static str, rule: &'static str },
    /// The run completes; the output must satisfy the check, and an audit record with `rule` exists.
    Completes { rule: &'static str, check: fn(&Value) -> Result<(), String> },
}

struct Case {
    name: &'static str,
    plugin: &'static str,
    input: Value,
    expect: Expect,
}

fn refused(kind: &'static str, rule: impl Into<String>, says: &'static str) -> Expect {
    Expect::Refused { kind, rule: rule.into(), says }
}

fn cases(port: u16) -> Vec<Case> {
    let o = |path: &str| format!("http://127.0.0.1:{port}{path}");
    let any = |host: &str| format!("http://{host}:{port}/echo");
    let fetch = |url: String| json!({"op": "fetch", "url": url});
    let mut c = vec![
        // CPU, memory, stack.
        Case {
            name: "cpu: infinite loop",
            plugin: "probe",
            input: json!({"op": "loop"}),
            expect: Expect::Stopped { kind: "limit", says: "CPU limit of 300 ms", rule: "limits.cpu_ms" },
        },
        Case {
            name: "cpu: busy between host calls",
            plugin: "probe",
            input: json!({"op": "spin_between_calls"}),
            expect: Expect::Stopped { kind: "limit", says: "CPU limit", rule: "limits.cpu_ms" },
        },
        Case {
            name: "memory: grow past the limit",
            plugin: "probe",
            input: json!({"op": "grow", "mib": 64}),
            expect: Expect::Stopped { kind: "limit", says: "grant allows 16 MiB", rule: "limits.memory" },
        },
        // 4,000 header sections of 200 empty headers would hold ~187 MiB of
        // host memory; each held resource is charged to the 16 MiB grant.
        Case {
            name: "memory: host resources held past the grant",
            plugin: "probe",
            input: json!({"op": "hold_fields", "count": 4000, "headers": 200}),
            expect: Expect::Stopped { kind: "limit", says: "memory limit exceeded", rule: "limits.memory" },
        },
        Case {
            name: "memory: one huge allocation",
            plugin: "probe",
            input: json!({"op": "huge_alloc", "bytes": 1u64 << 30}),
            expect: Expect::Stopped { kind: "limit", says: "memory limit exceeded", rule: "limits.memory" },
        },
        Case {
            name: "stack: overflow",
            plugin: "probe",
            input: json!({"op": "recurse_native", "depth": 100_000_000}),
            expect: Expect::Stopped { kind: "trap", says: "stack overflow", rule: "trap" },
        },
        Case {
            name: "stack: deep recursion on the guest's own stack",
            plugin: "probe",
            input: json!({"op": "recurse", "depth": 100_000_000}),
            expect: Expect::Stopped { kind: "trap", says: "out of bounds memory access", rule: "trap" },
        },
        // Egress rules.
        Case {
            name: "egress: disallowed host",
            plugin: "probe",
            input: fetch("http://example.com/".into()),
            expect: refused("denied", "default-deny", "no rule of probe allows http://example.com:80"),
        },
        Case {
            name: "egress: disallowed port",
            plugin: "probe",
            input: fetch(format!("http://127.0.0.1:{}/json", port + 1)),
            expect: refused("denied", "default-deny", "(scheme, host and port)"),
        },
        Case {
            name: "egress: disallowed scheme",
            plugin: "probe",
            input: fetch(format!("https://127.0.0.1:{port}/json")),
            expect: refused("denied", "default-deny", "no rule of probe allows https://"),
        },
        Case {
            name: "egress: disallowed method",
            plugin: "probe",
            input: json!({"op": "fetch", "method": "DELETE", "url": o("/json")}),
            expect: refused("denied", "default-deny", "method DELETE"),
        },
        Case { name: "egress: disallowed path", plugin: "probe", input: fetch(o("/admin")), expect: refused("denied", "default-deny", "path /admin") },
        Case {
            name: "egress: non-HTTP scheme",
            plugin: "probe",
            input: fetch("ftp://127.0.0.1/x".into()),
            expect: refused("invalid-request", "invalid-request", "scheme `ftp`"),
        },
    ];
    // The credential reflected in every spelling byte matching alone would miss.
    for (form, name) in [
        ("json-u", "JSON \\u escapes"),
        ("json-slash", "JSON \\/"),
        ("percent-lower", "percent-encoding, lower case"),
        ("percent-upper", "percent-encoding, upper case"),
        ("base64", "base64"),
        ("base64&offset=1", "base64 shifted by one byte"),
        ("base64&offset=2", "base64 shifted by two bytes"),
        ("base64url&offset=1", "base64url shifted"),
        ("hex", "hex"),
    ] {
        let url = o(&format!("/reflect?form={form}"));
        c.push(Case {
            name: Box::leak(format!("secret: reflected as {name}").into_boxed_str()),
            plugin: "probe",
            input: json!({"op": "fetch", "url": url, "credential": "origin-token"}),
            expect: Expect::Completes {
                rule: "GET",
                check: |out| {
                    if out["body"].as_str().unwrap_or("").contains("[REDACTED]") {
                        Ok(())
                    } else {
                        Err(format!("expected the reflected token redacted: {out}"))
                    }
                },
            },
        });
    }
    // Internal addresses, in every spelling, under a grant that allows any public host.
    for (name, host, says) in [
        ("loopback literal", "127.0.0.2", "loopback"),
        ("loopback decimal", "2130706433", "loopback"),
        ("loopback octal", "0177.0.0.1", "loopback"),
        ("loopback hex", "0x7f.0.0.1", "loopback"),
        ("loopback hex dword", "0x7f000001", "loopback"),
        ("loopback short", "127.1", "loopback"),
        ("loopback IPv6", "[::1]", "loopback"),
        ("IPv4-mapped IPv6 loopback", "[::ffff:127.0.0.1]", "loopback"),
        ("private 10/8", "10.0.0.1", "private"),
        ("private 192.168/16", "192.168.0.10", "private"),
        ("link-local", "169.254.1.1", "link-local"),
        ("cloud metadata IPv4", "169.254.169.254", "cloud metadata"),
        ("cloud metadata IPv4 as decimal", "2852039166", "cloud metadata"),
        ("cloud metadata IPv6", "[fd00:ec2::254]", "cloud metadata"),
        ("IPv4-mapped metadata", "[::ffff:169.254.169.254]", "cloud metadata"),
        ("unspecified", "0.0.0.0", "unspecified"),
    ] {
        c.push(Case {
            name: Box::leak(format!("address: {name}").into_boxed_str()),
            plugin: "probe-any",
            input: fetch(any(host)),
            expect: refused("denied", "address-screen", says),
        });
    }
    c.extend([
        Case {
            name: "dns: a name that resolves to 127.0.0.1",
            plugin: "probe-any",
            input: fetch(any("rebind.example.test")),
            expect: refused("denied", "address-screen", "resolves to 127.0.0.1 (loopback)"),
        },
        Case {
            name: "redirect: to the metadata service",
            plugin: "probe-any",
            input: json!({"op": "follow", "url": format!("{}?to=http://169.254.169.254/latest/meta-data/", o("/redirect"))}),
            expect: refused("denied", "address-screen", "cloud metadata"),
        },
        Case {
            name: "redirect: to a disallowed host",
            plugin: "probe",
            input: json!({"op": "follow", "url": format!("{}?to=https://evil.example/steal", o("/redirect"))}),
            expect: refused("denied", "default-deny", "evil.example"),
        },
        Case {
            name: "headers: CR/LF in a value",
            plugin: "probe",
            input: json!({"op": "fetch", "url": o("/echo"), "headers": {"x-a": "1\r\nx-injected: 2"}}),
            expect: refused("invalid-request", "invalid-request", "CR/LF"),
        },
        Case {
            name: "headers: CR/LF in a name",
            plugin: "probe",
            input: json!({"op": "fetch", "url": o("/echo"), "headers": {"x-a\r\nx-b": "1"}}),
            expect: refused("invalid-request", "invalid-request", "CR/LF"),
        },
        Case {
            name: "headers: a Host that differs from the URL",
            plugin: "probe",
            input: json!({"op": "fetch", "url": o("/echo"), "headers": {"Host": "169.254.169.254"}}),
            expect: refused("denied", "host-owned-header", "header `Host`"),
        },
        // Paths an upstream may read as another path, and headers that ask it to.
        Case {
            name: "path: a path parameter (`..;`, Tomcat)",
            plugin: "probe",
            input: fetch(o("/deep/..;/admin")),
            expect: refused("denied", "ambiguous-path", "contains `;`"),
        },
        Case { name: "path: an encoded slash", plugin: "probe", input: fetch(o("/deep/a%2Fb")), expect: refused("denied", "ambiguous-path", "contains `%2f`") },
        Case {
            name: "path: an encoded backslash",
            plugin: "probe",
            input: fetch(o("/deep/a%5cb")),
            expect: refused("denied", "ambiguous-path", "contains `%5c`"),
        },
        Case {
            name: "path: double-encoded dot-segments",
            plugin: "probe",
            input: fetch(o("/deep/%252e%252e/admin")),
            expect: refused("denied", "ambiguous-path", "contains `%25`"),
        },
        Case {
            name: "path: encoded dot-segments, mixed case",
            plugin: "probe",
            input: fetch(o("/deep/%2E%2e/.%2E/admin")),
            expect: refused("denied", "default-deny", "path /admin"),
        },
        Case { name: "path: an empty segment", plugin: "probe", input: fetch(o("/deep//admin")), expect: refused("denied", "ambiguous-path", "contains `//`") },
        Case {
            name: "path: `*` is one segment",
            plugin: "probe",
            input: fetch(o("/files/a/admin")),
            expect: refused("denied", "default-deny", "path /files/a/admin"),
        },
        Case {
            name: "headers: X-HTTP-Method-Override",
            plugin: "probe",
            input: json!({"op": "fetch", "url": o("/echo"), "headers": {"X-HTTP-Method-Override": "DELETE"}}),
            expect: refused("denied", "override-header", "another method or path"),
        },
        Case {
            name: "headers: X-Original-URL",
            plugin: "probe",
            input: json!({"op": "fetch", "url": o("/echo"), "headers": {"X-Original-URL": "/admin"}}),
            expect: refused("denied", "override-header", "another method or path"),
        },
        Case {
            name: "headers: X-Rewrite-URL",
            plugin: "probe",
            input: json!({"op": "fetch", "url": o("/echo"), "headers": {"x-rewrite-url": "/admin"}}),
            expect: refused("denied", "override-header", "another method or path"),
        },
        Case {
            name: "url: userinfo",
            plugin: "probe",
            input: fetch(format!("http://127.0.0.1:{port}@evil.example/echo")),
            expect: refused("denied", "userinfo", "userinfo"),
        },
        Case {
            name: "url: longer than any sane limit",
            plugin: "probe",
            input: fetch(format!("{}?q={}", o("/echo"), "a".repeat(20_000))),
            expect: refused("invalid-request", "invalid-request", "the limit is 8192"),
        },
        // Secrets.
        Case {
            name: "secret: a credential that is not granted",
            plugin: "probe",
            input: json!({"op": "fetch", "url": o("/echo"), "credential": "not-granted"}),
            expect: refused("denied", "credential-grant", "not granted to probe"),
        },
        Case {
            name: "secret: a granted credential toward another host",
            plugin: "probe-any",
            input: json!({"op": "fetch", "url": "http://93.184.216.34/", "credential": "origin-token"}),
            expect: refused("denied", "credential-binding", "is bound to"),
        },
        Case {
            name: "secret: an upstream that echoes the credential",
            plugin: "probe",
            input: json!({"op": "fetch", "url": o("/echo"), "credential": "origin-token"}),
            expect: Expect::Completes {
                rule: "GET",
                check: |out| {
                    let text = out.to_string();
                    if text.matches("[REDACTED]").count() >= 2 {
                        Ok(())
                    } else {
                        Err(format!("expected the echoed header and body redacted: {text}"))
                    }
                },
            },
        },
        Case {
            name: "secret: the guest asks for a compressed body",
            plugin: "probe",
            input: json!({"op": "fetch", "url": o("/echo"), "credential": "origin-token", "headers": {"Accept-Encoding": "gzip"}}),
            expect: Expect::Completes {
                rule: "GET",
                check: |out| {
                    let body: Value = serde_json::from_str(out["body"].as_str().unwrap_or("{}")).unwrap_or_default();
                    if body["headers"]["accept-encoding"] == "identity" {
                        Ok(())
                    } else {
                        Err(format!("the host must own content negotiation: {body}"))
                    }
                },
            },
        },
        Case {
            name: "secret: an upstream that compresses anyway",
            plugin: "probe",
            input: json!({"op": "fetch", "url": o("/reflect?form=gzip"), "credential": "origin-token"}),
            expect: refused("denied", "content-encoding", "asked for identity"),
        },
        Case {
            name: "secret: one slice per request (Range)",
            plugin: "probe",
            input: json!({"op": "fetch", "url": o("/reflect"), "credential": "origin-token", "headers": {"Range": "bytes=6-9"}}),
            expect: refused("denied", "credential-range", "part of a response"),
        },
        Case {
            name: "secret: reflected with mixed-case percent escapes",
            plugin: "probe",
            input: json!({"op": "fetch", "url": o("/reflect?form=percent-mixed"), "credential": "origin-token"}),
            expect: refused("denied", "redaction", "cannot redact"),
        },
        Case {
            name: "ambient: env vars, files, args, preopens, sockets",
            plugin: "probe",
            input: json!({"op": "ambient"}),
            expect: Expect::Completes {
                rule: "invalid-request",
                check: |out| {
                    let nothing = out["env"] == json!([])
                        && out["args"] == json!([])
                        && out["tcp"] == json!(false)
                        && out["files"].as_array().unwrap().iter().all(|f| f["read"] == json!(false) && f["list"] == json!(false))
                        && out["file_url"]["error"]["kind"] == json!("invalid-request");
                    if nothing {
                        Ok(())
                    } else {
                        Err(format!("the sandbox leaked ambient authority: {out}"))
                    }
                },
            },
        },
        // Floods.
        Case {
            name: "flood: an endless response body",
            plugin: "probe",
            input: fetch(o("/endless")),
            expect: refused("too-large", format!("GET http://127.0.0.1:{port}/endless"), "64 KiB"),
        },
        Case {
            name: "flood: a slow upstream (one byte a second)",
            plugin: "probe",
            input: json!({"op": "fetch", "url": o("/slow"), "timeout_ms": 1000}),
            expect: refused("timeout", format!("GET http://127.0.0.1:{port}/slow"), ""),
        },
        Case {
            name: "flood: more requests than the quota",
            plugin: "probe",
            input: json!({"op": "fetch_many", "count": 7, "url": o("/json")}),
            expect: refused("denied", "limits.http_requests", "used its 5 HTTP requests"),
        },
        Case {
            name: "flood: a huge request body",
            plugin: "probe",
            input: json!({"op": "fetch", "method": "POST", "url": o("/echo"), "body": "x".repeat(10_000), "content_length": true}),
            expect: refused("too-large", "limits.request_bytes", "grant allows 4 KiB"),
        },
        // Over wasi:http without a content-length, the cap holds as the body streams.
        Case {
            name: "flood: a huge request body, streamed without a length",
            plugin: "probe",
            input: json!({"op": "fetch", "method": "POST", "url": o("/echo"), "body": "x".repeat(100_000)}),
            expect: refused("too-large", "limits.request_bytes", "grant allows 4 KiB"),
        },
        Case {
            name: "flood: log spam",
            plugin: "probe",
            input: json!({"op": "log", "count": 5000, "then": "http://169.254.169.254/"}),
            expect: Expect::Completes {
                rule: "default-deny",
                check: |out| {
                    if out["logged"] == json!(5000) && out["then"]["error"]["kind"] == json!("denied") {
                        Ok(())
                    } else {
                        Err(format!("{out}"))
                    }
                },
            },
        },
        Case {
            name: "flood: a huge output",
            plugin: "probe",
            input: json!({"op": "output", "bytes": 1_000_000}),
            expect: Expect::Stopped { kind: "limit", says: "limits.output_bytes", rule: "limits.output_bytes" },
        },
        Case {
            name: "wall: sleeping past the wall-clock limit",
            plugin: "probe",
            input: json!({"op": "sleep", "ms": 60_000}),
            expect: Expect::Stopped { kind: "limit", says: "wall-clock limit of 3000 ms", rule: "limits.wall_ms" },
        },
    ]);
    c
}

fn engine(port: u16) -> (StoryRunner, StoryDir, Arc<warden::runtime::Runtime>, Arc<warden::Policy>) {
    let wasm = guest("probe");
    let policy = format!(
        r#"
[plugins.probe]
path = "{wasm}"
[plugins.probe-any]
path = "{wasm}"

[grants.probe]
allow = [
  "GET http://127.0.0.1:{port}/json", "GET http://127.0.0.1:{port}/echo", "POST http://127.0.0.1:{port}/echo",
  "GET http://127.0.0.1:{port}/redirect", "GET http://127.0.0.1:{port}/endless", "GET http://127.0.0.1:{port}/slow",
  "GET http://127.0.0.1:{port}/files/*", "GET http://127.0.0.1:{port}/deep/**", "GET http://127.0.0.1:{port}/reflect",
]
credentials = ["origin-token"]
limits = {{ memory = "16MiB", cpu_ms = 300, wall_ms = 3000, http_requests = 5, request_bytes = "4KiB", response_bytes = "64KiB", log_bytes = "4KiB", output_bytes = "64KiB" }}

[grants.probe-any]
allow = ["GET http://127.0.0.1:{port}/redirect", "GET http://*:*/**"]
allow_any_host = true
credentials = ["origin-token"]
limits = {{ wall_ms = 3000 }}

[credentials.origin-token]
kind = "bearer"
env = "WARDEN_HOSTILE_SECRET"
hosts = ["http://127.0.0.1:{port}"]

[credentials.not-granted]
kind = "bearer"
env = "WARDEN_HOSTILE_SECRET"
hosts = ["http://127.0.0.1:{port}"]
"#,
        wasm = wasm.display()
    );
    // SAFETY: only this suite reads this variable.
    unsafe { std::env::set_var("WARDEN_HOSTILE_SECRET", SECRET) };
    let policy = warden::Policy::parse(&policy, "hostile.toml", &workspace_root()).unwrap();
    let dir = StoryDir::new(&[
        ("strict.yaml", "name: strict\nsteps:\n  - id: attack\n    action: probe\n    with: \"{{ input }}\"\n"),
        ("any.yaml", "name: any\nsteps:\n  - id: attack\n    action: probe-any\n    with: \"{{ input }}\"\n"),
        ("good.yaml", &format!("name: good\nsteps:\n  - id: fetch\n    action: probe\n    with: {{op: fetch, url: \"http://127.0.0.1:{port}/json\"}}\n")),
    ]);
    let library = Library::load_dir(&dir.0).unwrap();
    library.check(&policy).unwrap();
    let resolver = StaticResolver::default().with("rebind.example.test", &["127.0.0.1"]);
    let rt = Arc::new(runtime(Some(Arc::new(resolver))));
    let policy = Arc::new(policy);
    let e = StoryRunner::new(rt.clone(), policy.clone(), Arc::new(library), Arc::new(warden::store::SqliteStore::in_memory().unwrap()));
    (e, dir, rt, policy)
}

/// The first `error` object the probe reported, wherever its op put it.
fn reported_error(out: &Value) -> Option<&Value> {
    [&out["error"], &out["last"]["error"], &out["then"]["error"]]
        .into_iter()
        .chain(out["results"].as_array().and_then(|r| r.last()).map(|r| &r["error"]))
        .find(|e| e.is_object())
}

/// The secret as hex, percent-encoded byte by byte, and base64 at every alignment
/// (the characters that depend on its bytes alone).
fn encoded_spellings() -> Vec<String> {
    use base64::Engine as _;
    let mut out = vec![SECRET.bytes().map(|b| format!("{b:02x}")).collect::<String>()];
    out.push(SECRET.bytes().map(|b| format!("%{b:02x}")).collect());
    out.push(SECRET.bytes().map(|b| format!("%{b:02X}")).collect());
    for engine in [&base64::engine::general_purpose::STANDARD_NO_PAD, &base64::engine::general_purpose::URL_SAFE_NO_PAD] {
        for k in 0..3usize {
            let padded: Vec<u8> = std::iter::repeat_n(b'x', k).chain(SECRET.bytes()).collect();
            let encoded = engine.encode(&padded);
            out.push(encoded[4 * k.div_ceil(3)..4 * (padded.len() / 3)].to_string());
        }
    }
    out
}

/// Which requests a case makes: those that make any go through both front
/// doors, `warden:action/http` and standard `wasi:http`.
fn makes_requests(case: &Case) -> bool {
    matches!(case.input["op"].as_str(), Some("fetch" | "follow" | "fetch_many")) || case.input.get("then").is_some()
}

/// wasi:http's own `fields` resource refuses these headers before a request
/// exists, so on that door the guest hears a header error and nothing reaches
/// the host's egress layers.
fn refused_by_wasi_fields(case: &Case) -> bool {
    case.name.starts_with("headers: CR/LF") || case.name == "headers: a Host that differs from the URL"
}

fn input_for(case: &Case, door: &str) -> Value {
    let mut input = case.input.clone();
    if door == "wasi:http" {
        input["door"] = json!("wasi-http");
    }
    input
}

/// The case run once more, recorded: the recording as JSON text.
async fn recorded(rt: &warden::runtime::Runtime, policy: &warden::Policy, plugin: &str, input: &Value) -> String {
    use warden::recording::Tape;
    let loaded = rt.load_entry(&policy.plugins[plugin]).unwrap();
    let grant = policy.grant_for(plugin);
    let tape = Tape::record(grant.limits.recording_bytes);
    let info = warden_e2e::info("hostile-recording");
    let input = input.to_string();
    let report = rt.invoke_taped(&loaded, grant, info.clone(), &input, None, tape.clone()).await;
    let recording = tape.finish(plugin, &loaded.sha256, &info, &input, &report.outcome).unwrap();
    serde_json::to_string(&recording).unwrap()
}

/// What one run of a case showed: the error the guest reported, the step
/// error, and the rules of its audit records.
struct Seen {
    error: Option<Value>,
    audit_rules: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sandbox_holds_against_every_hostile_case() {
    let (srv, rec, _counters) = origin::spawn_with_counters().await.unwrap();
    let (e, _dir, rt, policy) = engine(srv.port());
    let all = cases(srv.port());
    assert!(all.len() >= 30, "the suite must keep at least 30 cases");
    // Every hostile run is also traced: what an operator's collector would receive is checked too.
    let (otlp, spans, _) = warden_e2e::otlp::receiver().await;
    let config = warden::policy::TelemetryConfig { endpoint: Some(otlp), sample_ratio: Some(1.0), ..Default::default() };
    let telemetry = warden::telemetry::Telemetry::start(&config).unwrap().expect("tracing on");
    let mut failures = Vec::new();
    let mut runs = 0;
    for case in &all {
        let doors: &[&str] = if makes_requests(case) { &["warden:action/http", "wasi:http"] } else { &["warden:action/http"] };
        let mut seen: Vec<Seen> = Vec::new();
        for &door in doors {
            runs += 1;
            let input = input_for(case, door);
            let story = if case.plugin == "probe" { "strict" } else { "any" };
            let (hostile, good) = tokio::join!(e.run(story, input, "hostile", &telemetry), e.run("good", json!({}), "hostile", &Quiet));
            let (hostile, good) = (hostile.unwrap(), good.unwrap());
            let mut problems = Vec::new();
            if good.state != "succeeded" || good.output.as_ref().map(|o| o["status"].clone()) != Some(json!(200)) {
                problems.push(format!("the well-behaved run beside it did not complete: {:?}", good.error));
            }
            let detail = e.store.get_run(&hostile.run_id).unwrap().unwrap();
            let audit_rules: Vec<String> = detail.audit.iter().map(|a| a["rule"].as_str().unwrap_or("").to_string()).collect();
            let out = hostile.output.clone().unwrap_or(Value::Null);
            let error = reported_error(&out).cloned();
            match &case.expect {
                Expect::Refused { .. } if door == "wasi:http" && refused_by_wasi_fields(case) => {
                    if error.as_ref().map(|e| e["kind"].clone()) != Some(json!("header-error")) {
                        problems.push(format!("expected wasi:http's fields to refuse the header, got {error:?}"));
                    }
                    if detail.audit.iter().any(|a| a["capability"] == "http") {
                        problems.push(format!("a header wasi:http refused still reached the egress layers: {audit_rules:?}"));
                    }
                }
                Expect::Refused { kind, rule, says } => {
                    match &error {
                        Some(err) if err["kind"] == *kind && err["message"].as_str().unwrap_or("").contains(says) => {}
                        other => problems.push(format!("expected {kind} mentioning `{says}`, got {other:?} (run {}: {:?})", hostile.state, hostile.error)),
                    }
                    if !audit_rules.iter().any(|r| r == rule) {
                        problems.push(format!("no audit record with rule {rule}: {audit_rules:?}"));
                    }
                }
                Expect::Stopped { kind, says, rule } => match &hostile.error {
                    Some(err) if err.kind == *kind && err.message.contains(says) => {
                        if !audit_rules.iter().any(|r| r == rule) {
                            problems.push(format!("no sandbox audit record {rule}: {audit_rules:?}"));
                        }
                    }
                    other => problems.push(format!("expected a {kind} stop mentioning `{says}`, got {other:?}")),
                },
                Expect::Completes { rule, check } => {
                    match &hostile.output {
                        Some(out) => {
                            if let Err(why) = check(out) {
                                problems.push(why);
                            }
                        }
                        None => problems.push(format!("the run failed: {:?}", hostile.error)),
                    }
                    if !audit_rules.iter().any(|r| r.contains(rule)) {
                        problems.push(format!("no audit record matching {rule}: {audit_rules:?}"));
                    }
                }
            }
            let everywhere = format!(
                "{} {} {}",
                serde_json::to_string(&hostile).unwrap(),
                serde_json::to_string(&detail).unwrap(),
                serde_json::to_string(&e.store.get_run(&good.run_id).unwrap()).unwrap()
            );
            if everywhere.contains(SECRET) {
                problems.push("the secret appears in the output, logs, audit or run store".into());
            }
            if let Some(form) = encoded_spellings().into_iter().find(|f| everywhere.contains(f.as_str())) {
                problems.push(format!("the secret appears encoded ({form}) in the output, logs, audit or run store"));
            }
            // A recording of a call that carries a credential never holds it.
            if case.input.get("credential").is_some() {
                let recording = recorded(&rt, &policy, case.plugin, &input_for(case, door)).await;
                if recording.contains(SECRET) {
                    problems.push("the secret appears in the recording".into());
                }
                if let Some(form) = encoded_spellings().into_iter().find(|f| recording.contains(f.as_str())) {
                    problems.push(format!("the secret appears encoded ({form}) in the recording"));
                }
            }
            if !problems.is_empty() {
                failures.push(format!("{} (through {door}):\n    {}", case.name, problems.join("\n    ")));
            }
            seen.push(Seen { error, audit_rules });
        }
        // Both doors, the same answer: the same audit rules, the same kind of
        // error, and warden's reason word for word.
        if let [action, wasi] = &seen[..] {
            if refused_by_wasi_fields(case) {
                continue;
            }
            let mut problems = Vec::new();
            if action.audit_rules != wasi.audit_rules {
                problems.push(format!("audit rules differ: {:?} vs {:?}", action.audit_rules, wasi.audit_rules));
            }
            let kind = |s: &Seen| s.error.as_ref().map(|e| e["kind"].clone());
            if kind(action) != kind(wasi) {
                problems.push(format!("error kinds differ: {:?} vs {:?}", action.error, wasi.error));
            }
            // wasi:http lowercases header names; a streamed body's size is not known up front.
            let message = |s: &Seen| s.error.as_ref().and_then(|e| e["message"].as_str().map(str::to_ascii_lowercase)).unwrap_or_default();
            if !case.name.contains("streamed") && !message(wasi).contains(&message(action)) {
                problems.push(format!("wasi:http does not carry warden's reason `{}`: `{}`", message(action), message(wasi)));
            }
            if !problems.is_empty() {
                failures.push(format!("{} (both doors):\n    {}", case.name, problems.join("\n    ")));
            }
        }
    }
    // The spans of every hostile run: never the secret, in any spelling, in any attribute.
    tokio::task::spawn_blocking(move || telemetry.shutdown()).await.unwrap();
    let spans = spans.lock().unwrap().clone();
    assert!(spans.iter().filter(|s| s.name.starts_with("run ")).count() >= runs, "every hostile run was exported");
    let exported = warden_e2e::otlp::all_attributes(&spans);
    if exported.contains(SECRET) {
        failures.push("the secret appears in an exported span".into());
    }
    if let Some(form) = encoded_spellings().into_iter().find(|f| exported.contains(f.as_str())) {
        failures.push(format!("the secret appears encoded ({form}) in an exported span"));
    }
    assert!(exported.contains("warden.decision=Some(AnyValue { value: Some(StringValue(\"denied\")) })"), "denials are exported");
    assert!(failures.is_empty(), "{} of {runs} hostile runs broke out:\n  {}", failures.len(), failures.join("\n  "));
    // Nothing refused ever reached the origin's internal route.
    assert!(!rec.paths().contains(&"/internal".to_string()));
}
