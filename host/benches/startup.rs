//! Start-up: `warden serve` with the example stories and plugins, from process
//! start to the first accepted webhook (202), and to that run's completion,
//! with a cold and then a warm compile cache.
//!
//!     cargo bench -p warden --bench startup

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn post(port: u16, body: &str, secret: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    let sig = warden::server::sign(secret.as_bytes(), "threat-hunt", body.as_bytes());
    let req = format!(
        "POST /webhooks/threat-hunt HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-Warden-Signature: {sig}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let code = out.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, out))
}

fn get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

fn one(cache: &std::path::Path, db: &std::path::Path) -> (Duration, Duration) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let secret = "startup-bench";
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--policy")
        .arg(common::root().join("examples/warden.toml"))
        .arg("--db")
        .arg(db)
        .env("WARDEN_CACHE_DIR", cache)
        .env("WARDEN_WEBHOOK_SECRET", secret)
        // The example policy verifies Slack's callbacks with it (read at start).
        .env("SLACK_SIGNING_SECRET", "startup-bench")
        .env("WARDEN_LOG", "error")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let body = r#"{"indicator": {"kind": "domain", "value": "nobody.example"}, "leads": ["a@corp.example"]}"#;
    let (accepted, reply) = loop {
        if let Some((202, reply)) = post(port, body, secret) {
            break (started.elapsed(), reply);
        }
        assert!(started.elapsed() < Duration::from_secs(120), "serve did not accept a webhook");
        std::thread::sleep(Duration::from_millis(1));
    };
    let id = reply.split("\"run_id\":\"").nth(1).and_then(|r| r.split('"').next()).unwrap().to_string();
    // The run itself needs the simulators; without them it fails fast, which still
    // shows when the first run was executed (plugins compiled and instantiated).
    let done = loop {
        let detail = get(port, &format!("/api/runs/{id}")).unwrap_or_default();
        if detail.contains("\"state\":\"succeeded\"") || detail.contains("\"state\":\"failed\"") {
            break started.elapsed();
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let _ = child.kill();
    let _ = child.wait();
    (accepted, done)
}

fn main() {
    let dir = std::env::temp_dir().join(format!("warden-bench-start-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cache = dir.join("cache");
    let rounds = if common::full() { 5 } else { 1 };
    println!("warden serve start-up (examples/warden.toml): to first 202 / to that run finished");
    let (a, d) = one(&cache, &dir.join("cold.db"));
    println!("  cold cache: {:>7.1} ms / {:>7.1} ms", a.as_secs_f64() * 1e3, d.as_secs_f64() * 1e3);
    let mut acc = Vec::new();
    let mut fin = Vec::new();
    for i in 0..rounds {
        let (a, d) = one(&cache, &dir.join(format!("warm{i}.db")));
        acc.push(a.as_secs_f64() * 1e3);
        fin.push(d.as_secs_f64() * 1e3);
    }
    println!("  warm cache: {:>7.1} ms / {:>7.1} ms (median of {rounds})", common::median(acc), common::median(fin));
    let _ = std::fs::remove_dir_all(&dir);
}
