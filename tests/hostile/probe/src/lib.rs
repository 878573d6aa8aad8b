//! `probe`: the adversarial guest. It does whatever its input says — loop,
//! allocate, recurse, reach for internal addresses, smuggle headers, follow
//! redirects, flood — so the host's tests (tests/e2e/tests/e2e/hostile.rs and
//! others) can check every way out from inside the sandbox. Not a plugin
//! anyone should grant anything to.

wit_bindgen::generate!({ path: "../../../wit", world: "action" });

use serde_json::{json, Value};
use warden::action::http::{self, HttpError, Request};
use warden::action::{clock, log, smtp};

struct Probe;

fn http_error(e: &HttpError) -> Value {
    match e {
        HttpError::Denied(m) => json!({"kind": "denied", "message": m}),
        HttpError::InvalidRequest(m) => json!({"kind": "invalid-request", "message": m}),
        HttpError::Timeout => json!({"kind": "timeout"}),
        HttpError::Connection(m) => json!({"kind": "connection", "message": m}),
        HttpError::TooLarge(m) => json!({"kind": "too-large", "message": m}),
    }
}

mod wasi_http;

/// Which door `fetch` uses for this run: `warden:action/http` (default) or,
/// with `"door": "wasi-http"` in the input, standard wasi:http.
static WASI_DOOR: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn fetch(v: &Value) -> Value {
    if WASI_DOOR.load(std::sync::atomic::Ordering::Relaxed) {
        return wasi_http::fetch(v);
    }
    let headers = v["headers"].as_object().map(|o| o.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string())).collect()).unwrap_or_default();
    let req = Request {
        method: v["method"].as_str().unwrap_or("GET").into(),
        url: v["url"].as_str().unwrap_or("").into(),
        headers,
        body: v["body"].as_str().map(|b| b.as_bytes().to_vec()),
        timeout_ms: v["timeout_ms"].as_u64().map(|t| t as u32),
        credential: v["credential"].as_str().map(String::from),
    };
    match http::send(&req) {
        Ok(r) => json!({
            "status": r.status,
            "headers": r.headers,
            "body": String::from_utf8_lossy(&r.body),
        }),
        Err(e) => json!({"error": http_error(&e)}),
    }
}

fn send_raw(req: Request) -> Value {
    match http::send(&req) {
        Ok(r) => json!({"status": r.status}),
        Err(e) => json!({"error": http_error(&e)}),
    }
}

fn mail_raw(m: smtp::Message) -> Value {
    match smtp::send(&m) {
        Ok(_) => json!({"sent": true}),
        Err(smtp::SmtpError::Denied(m)) => json!({"error": {"kind": "denied", "message": m}}),
        Err(smtp::SmtpError::InvalidMessage(m)) => json!({"error": {"kind": "invalid-message", "message": m}}),
        Err(e) => json!({"error": {"kind": "other", "message": format!("{e:?}")}}),
    }
}

/// Every import with the most extreme inputs a guest can build: counts and
/// sizes that, unchecked, would crash a header library or fill host memory.
fn extreme(v: &Value) -> Value {
    let url = v["url"].as_str().unwrap_or("").to_string();
    let req = |method: String, headers: Vec<(String, String)>, credential: Option<String>| Request {
        method,
        url: url.clone(),
        headers,
        body: None,
        timeout_ms: Some(2000),
        credential,
    };
    let mib = 1usize << 20;
    let many: Vec<(String, String)> = (0..25_000).map(|i| (format!("x-h{i}"), "v".into())).collect();
    let mut out = serde_json::Map::new();
    out.insert("headers_25000".into(), send_raw(req("GET".into(), many, None)));
    out.insert("header_1mib".into(), send_raw(req("GET".into(), vec![("x-big".into(), "v".repeat(mib))], None)));
    out.insert("method_1mib".into(), send_raw(req("G".repeat(mib), vec![], None)));
    out.insert("credential_8mib".into(), send_raw(req("GET".into(), vec![], Some("c".repeat(8 * mib)))));
    let message = |to: Vec<String>, reply_to: Option<String>, subject: String| smtp::Message {
        from: None,
        to,
        cc: vec![],
        bcc: vec![],
        reply_to,
        subject,
        text: "t".into(),
        html: None,
    };
    out.insert("recipients_100000".into(), mail_raw(message((0..100_000).map(|i| format!("r{i}@corp.example")).collect(), None, "s".into())));
    out.insert("subject_4mib".into(), mail_raw(message(vec!["a@corp.example".into()], None, "s".repeat(4 * mib))));
    out.insert("reply_to_1mib".into(), mail_raw(message(vec!["a@corp.example".into()], Some("r".repeat(mib)), "s".into())));
    log::log(log::Level::Warn, "\u{1b}]0;owned\u{7}\u{1b}[2Jcleared");
    for _ in 0..100_000 {
        log::log(log::Level::Info, "");
    }
    log::log(log::Level::Info, &"l".repeat(4 * mib));
    clock::sleep(0);
    out.insert("now".into(), json!(clock::now() > 0));
    Value::Object(out)
}

#[inline(never)]
fn recurse(n: u64, pad: &mut [u8; 256]) -> u64 {
    pad[(n % 256) as usize] = n as u8;
    let mut p = *pad;
    if n == 0 {
        0
    } else {
        recurse(n - 1, &mut p) + p[3] as u64
    }
}

/// Recursion that lives on the wasm stack only (no shadow-stack frames).
#[inline(never)]
fn deep(n: u64) -> u64 {
    if n == 0 {
        0
    } else {
        1 + deep(std::hint::black_box(n - 1))
    }
}

impl Guest for Probe {
    fn describe() -> Manifest {
        Manifest {
            name: "probe".into(),
            version: "0.0.0".into(),
            description: "test guest".into(),
            input_schema: "{}".into(),
            output_schema: "{}".into(),
            hosts: vec![],
            credentials: vec![],
        }
    }

    fn run(inv: Invocation, input: String) -> Result<String, ActionError> {
        let v: Value = serde_json::from_str(&input).map_err(|e| ActionError::InvalidInput(e.to_string()))?;
        WASI_DOOR.store(v["door"] == "wasi-http", std::sync::atomic::Ordering::Relaxed);
        let mut out = match v["op"].as_str().unwrap_or("") {
            "counter" => {
                // A fresh store per invocation means this always starts at 0.
                static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                json!({"count": COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1})
            }
            "residue" => {
                // `leave`: fills `kib` KiB (default 2 MiB) of heap with a marker and frees it.
                // `find`: grows the heap by as much without writing it, then
                // counts the marker anywhere in linear memory (its own copy aside).
                let bytes = (v["kib"].as_u64().unwrap_or(2048).clamp(1, 64 << 10) as usize) << 10;
                if let Some(m) = v["leave"].as_str() {
                    let marker = format!("WARDEN-RESIDUE-{m}");
                    let mut block = Vec::with_capacity(bytes);
                    while block.len() + marker.len() <= bytes {
                        block.extend_from_slice(marker.as_bytes());
                    }
                    std::hint::black_box(&block);
                }
                let found = v["find"].as_str().map(|m| {
                    let hold: Vec<u8> = Vec::with_capacity(bytes);
                    std::hint::black_box(&hold);
                    let marker = format!("WARDEN-RESIDUE-{m}");
                    occurrences_in_memory(marker.as_bytes())
                });
                json!({"found": found})
            }
            "echo" => json!({"input": v, "run_id": inv.run_id, "attempt": inv.attempt}),
            "hold_fields" => wasi_http::hold_fields(v["count"].as_u64().unwrap_or(1), v["headers"].as_u64().unwrap_or(1)),
            "fetch" => fetch(&v),
            "call" => {
                // Like a connector: a non-2xx answer is an upstream error.
                let r = fetch(&v);
                if let Some(e) = r.get("error") {
                    return Err(ActionError::Failed(e.to_string()));
                }
                let status = r["status"].as_u64().unwrap_or(0) as u16;
                if status >= 400 {
                    let retry_after_ms = r["headers"]
                        .as_array()
                        .and_then(|hs| hs.iter().find(|h| h[0] == "retry-after").and_then(|h| h[1].as_str()?.parse::<u64>().ok()).map(|s| s * 1000));
                    return Err(ActionError::Upstream(warden::action::types::UpstreamError {
                        status: Some(status),
                        message: format!("HTTP {status}"),
                        retry_after_ms,
                    }));
                }
                serde_json::from_str::<Value>(r["body"].as_str().unwrap_or("null")).unwrap_or(Value::Null)
            }
            "follow" => {
                // Follows redirects itself: each hop is a new request the host judges again.
                let mut cur = v.clone();
                let mut hops = 0;
                loop {
                    let r = fetch(&cur);
                    let status = r["status"].as_u64().unwrap_or(0);
                    if !(300..400).contains(&status) || hops >= 5 {
                        break json!({"hops": hops, "last": r});
                    }
                    let location = r["headers"].as_array().and_then(|hs| hs.iter().find(|h| h[0] == "location").and_then(|h| h[1].as_str().map(String::from)));
                    match location {
                        Some(l) => cur["url"] = json!(l),
                        None => break json!({"hops": hops, "last": r}),
                    }
                    hops += 1;
                }
            }
            "fetch_many" => {
                let n = v["count"].as_u64().unwrap_or(1);
                let results: Vec<Value> = (0..n).map(|_| fetch(&v)).collect();
                // `quiet`: only the last result, so the output does not grow with the calls.
                match v["quiet"].as_bool() {
                    Some(true) => json!({"count": results.len(), "last": results.last()}),
                    _ => json!({"results": results}),
                }
            }
            "loop" => loop {
                std::hint::black_box(0u64);
            },
            "spin_between_calls" => {
                // Busy between host calls: the CPU limit must still hold.
                let mut x = 0u64;
                loop {
                    for i in 0..1_000_000u64 {
                        x = std::hint::black_box(x.wrapping_add(i));
                    }
                    clock::now();
                }
            }
            "grow" => {
                let mib = v["mib"].as_u64().unwrap_or(1) as usize;
                let mut chunks = Vec::new();
                for _ in 0..mib {
                    chunks.push(vec![1u8; 1024 * 1024]);
                }
                json!({"grew_mib": chunks.len()})
            }
            "huge_alloc" => {
                let bytes = v["bytes"].as_u64().unwrap_or(1 << 30) as usize;
                let big = vec![7u8; bytes];
                json!({"len": big.len()})
            }
            "recurse" => {
                let mut pad = [0u8; 256];
                json!({"depth": recurse(v["depth"].as_u64().unwrap_or(10_000_000), &mut pad)})
            }
            "mail" => {
                // Hands the message to the host as is: the host alone must refuse.
                let list =
                    |k: &str| -> Vec<String> { v[k].as_array().map(|a| a.iter().filter_map(|x| x.as_str().map(String::from)).collect()).unwrap_or_default() };
                let m = smtp::Message {
                    from: v["from"].as_str().map(String::from),
                    to: list("to"),
                    cc: list("cc"),
                    bcc: list("bcc"),
                    reply_to: None,
                    subject: v["subject"].as_str().unwrap_or("").into(),
                    text: v["text"].as_str().unwrap_or("").into(),
                    html: None,
                };
                match smtp::send(&m) {
                    Ok(r) => json!({"message_id": r.message_id, "accepted": r.accepted}),
                    Err(smtp::SmtpError::Denied(m)) => json!({"error": {"kind": "denied", "message": m}}),
                    Err(smtp::SmtpError::InvalidMessage(m)) => json!({"error": {"kind": "invalid-message", "message": m}}),
                    Err(e) => json!({"error": {"kind": "other", "message": format!("{e:?}")}}),
                }
            }
            "recurse_native" => json!({"depth": deep(v["depth"].as_u64().unwrap_or(100_000_000))}),
            "sleep" => {
                let ms = v["ms"].as_u64().unwrap_or(1000);
                let before = clock::now();
                clock::sleep(ms);
                json!({"slept_ms": clock::now() - before})
            }
            "panic" => panic!("probe was asked to panic"),
            "fail" => return Err(ActionError::Failed(v["message"].as_str().unwrap_or("failed").into())),
            "log" => {
                let n = v["count"].as_u64().unwrap_or(1);
                for i in 0..n {
                    // A hostile plugin says whatever it likes in its log.
                    match v["message"].as_str() {
                        Some(m) => log::log(log::Level::Warn, m),
                        None => log::log(log::Level::Info, &format!("line {i} {}", "x".repeat(100))),
                    }
                    println!("stdout line {i}");
                }
                json!({"logged": n})
            }
            "output" => json!({"data": "x".repeat(v["bytes"].as_u64().unwrap_or(10) as usize)}),
            "not_json" => return Ok("this is not json".into()),
            "extreme" => extreme(&v),
            "random" => {
                // Asks the host for random bytes directly; a huge length must be refused, not allocated.
                let len = v["len"].as_u64().unwrap_or(16);
                json!({"got": wasi::random::random::get_random_bytes(len).len()})
            }
            "entropy" => {
                // Everything that makes a run differ from the last: replay must serve it all back.
                use std::collections::hash_map::RandomState;
                use std::hash::BuildHasher;
                let bytes = wasi::random::random::get_random_bytes(16);
                let wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
                let mono = wasi::clocks::monotonic_clock::now();
                json!({
                    "random": bytes.iter().map(|b| format!("{b:02x}")).collect::<String>(),
                    "hash": RandomState::new().hash_one("warden"),
                    "wall_ns": wall,
                    "monotonic_ns": mono,
                    "now_ms": clock::now(),
                })
            }
            "handles" => {
                // Holds WASI resources without end: the host's table must stop it.
                let mut held = Vec::new();
                for _ in 0..v["count"].as_u64().unwrap_or(10) {
                    held.push(wasi::clocks::monotonic_clock::subscribe_duration(1_000_000_000));
                }
                json!({"held": held.len()})
            }
            "fail_big" => return Err(ActionError::Failed(format!("\u{1b}[2J{}", "e".repeat(v["bytes"].as_u64().unwrap_or(1 << 20) as usize)))),
            "ambient" => {
                // What the sandbox lets a guest see without any capability.
                let env: Vec<String> = std::env::vars().map(|(k, _)| k).collect();
                let args: Vec<String> = std::env::args().collect();
                let files: Vec<Value> = ["/etc/passwd", "/proc/self/environ", ".", "/"]
                    .iter()
                    .map(|p| json!({"path": p, "read": std::fs::read(p).is_ok(), "list": std::fs::read_dir(p).is_ok()}))
                    .collect();
                let tcp = std::net::TcpStream::connect("127.0.0.1:80").is_ok();
                // And through the capability, a scheme that is not HTTP.
                let file = fetch(&json!({"url": "file:///etc/passwd"}));
                json!({"env": env, "args": args, "files": files, "tcp": tcp, "file_url": file})
            }
            other => return Err(ActionError::InvalidInput(format!("unknown op `{other}`"))),
        };
        // `then`: one more request after the op, to show the guest is still policed.
        if let Some(url) = v["then"].as_str() {
            out["then"] = fetch(&json!({"url": url}));
        }
        Ok(out.to_string())
    }
}

export!(Probe);

/// How often `needle` occurs in the whole of linear memory, not counting
/// `needle` itself: what a guest could read of an earlier one's data.
fn occurrences_in_memory(needle: &[u8]) -> usize {
    let end = core::arch::wasm32::memory_size(0) * 65536;
    let own = needle.as_ptr() as usize;
    // SAFETY: every address below memory.size is readable in wasm; the reads
    // are volatile because the bytes belong to no live Rust value.
    let byte = |addr: usize| unsafe { core::ptr::read_volatile(addr as *const u8) };
    (8..end.saturating_sub(needle.len()))
        .filter(|&addr| addr != own && byte(addr) == needle[0] && (1..needle.len()).all(|i| byte(addr + i) == needle[i]))
        .count()
}
