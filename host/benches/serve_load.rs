//! `warden serve` under load, as a user runs it: the release binary in its own
//! process, driven over loopback by an HTTP/1.1 load generator in this one
//! (keep-alive connections, each sending its next request when the last was
//! answered). In the same run it measures the *ceiling* for this shape of work
//! on this machine — a bare axum handler doing one SQLite WAL insert per
//! request, also in its own process (this binary, re-executed) — so every
//! figure is also given as a fraction of a ceiling measured a minute apart.
//!
//!     cargo bench -p warden --bench serve_load
//!
//! Cases: one transform step and one Wasm action step with `?wait=true`
//! (answered after the run completed), the Wasm step without waiting (202,
//! completions per second), the 3-step story, the first two on PostgreSQL,
//! and many concurrent runs sleeping in a polling loop at the default
//! worker count.
//!
//! `WARDEN_BENCH_BIN=/path/to/warden` measures another build (an A/B pair);
//! `WARDEN_BENCH_ONLY=text` runs only the cases whose label contains `text`
//! (several: `a|b`);
//! `WARDEN_BENCH_RECORD=0` turns off the recording of action steps (`[server] record`).

mod common;

// The ceiling server (this binary re-executed) and the load generator use the
// allocator warden itself uses, so the comparison is of the work, not of mallocs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SECRET: &str = "bench-secret";
const CEILING_ENV: &str = "WARDEN_BENCH_CEILING_DB";

/// One load generator connection: sends a request, waits for the answer, repeats.
struct Conn {
    send: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Conn {
    async fn open(port: u16) -> Conn {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
        tokio::spawn(conn);
        Conn { send }
    }

    /// A plain GET's body.
    async fn get(&mut self, path: &str) -> String {
        let req = hyper::Request::get(path).header("host", "127.0.0.1").body(Full::new(Bytes::new())).unwrap();
        self.send.ready().await.unwrap();
        let resp = self.send.send_request(req).await.unwrap();
        String::from_utf8_lossy(&resp.into_body().collect().await.unwrap().to_bytes()).into_owned()
    }

    async fn post(&mut self, path: &str, story: &str, body: String) -> (u16, Bytes) {
        let sig = warden::server::sign(SECRET.as_bytes(), story, body.as_bytes());
        let req = hyper::Request::post(path)
            .header("host", "127.0.0.1")
            .header("content-type", "application/json")
            .header("x-warden-signature", sig)
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        self.send.ready().await.unwrap();
        let resp = self.send.send_request(req).await.unwrap();
        let code = resp.status().as_u16();
        (code, resp.into_body().collect().await.unwrap().to_bytes())
    }
}

/// Requests answered per second and their latencies.
struct Load {
    per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// Closed loop: `conns` connections post to `path` for `secs`; every answer
/// must carry `want`. Bodies are unique (a signed replay would be refused).
async fn closed_loop(port: u16, path: &str, story: &str, want: u16, conns: usize, secs: f64) -> Load {
    closed_loop_spread(&[port], path, story, want, conns, secs).await
}

/// [`closed_loop`] with the connections spread over several servers.
async fn closed_loop_spread(ports: &[u16], path: &str, story: &str, want: u16, conns: usize, secs: f64) -> Load {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for i in 0..conns {
        let port = ports[i % ports.len()];
        let (stop, path, story) = (stop.clone(), path.to_string(), story.to_string());
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::open(port).await;
            let mut lat = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let body = format!(r#"{{"k": {}}}"#, SEQ.fetch_add(1, Ordering::Relaxed));
                let t = Instant::now();
                let (code, reply) = c.post(&path, &story, body).await;
                assert_eq!(code, want, "{path}: {}", String::from_utf8_lossy(&reply));
                lat.push(t.elapsed().as_secs_f64() * 1e3);
            }
            lat
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut lat: Vec<f64> = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let at = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)];
    Load { per_sec: lat.len() as f64 / elapsed, p50_ms: at(0.5), p99_ms: at(0.99) }
}

/// User and system CPU seconds of a process (`self` or a pid), from /proc.
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command's closing parenthesis: utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// The server's cost per run over a case: CPU µs (and the load generator's),
/// KiB written, writes per commit.
fn per_run(before: Usage, after: Usage, runs: f64) -> String {
    let commits = (after.commits - before.commits).max(1.0);
    format!(
        "server {:.0} µs CPU/run (load generator {:.0}), {:.1} KiB written/run, {:.1} writes/commit",
        1e6 * (after.cpu_s - before.cpu_s) / runs,
        1e6 * (after.client_cpu_s - before.client_cpu_s) / runs,
        (after.write_bytes - before.write_bytes) / 1024.0 / runs,
        (after.writes - before.writes) / commits
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn wait_listening(port: u16, child: &mut Child) {
    let started = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the server exited before listening: {status}");
        }
        assert!(started.elapsed() < Duration::from_secs(120), "the server did not listen on {port}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

struct Server {
    child: Child,
    port: u16,
    db: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the server process had used at one moment: CPU, bytes written to
/// storage, and the store's commits and the writes they carried.
#[derive(Clone, Copy, Default)]
struct Usage {
    cpu_s: f64,
    /// This process's (the load generator's) CPU.
    client_cpu_s: f64,
    write_bytes: f64,
    commits: f64,
    writes: f64,
}

impl Server {
    async fn usage(&self) -> Usage {
        let pid = self.child.id();
        let cpu_s = cpu_seconds(&pid.to_string());
        let client_cpu_s = cpu_seconds("self");
        let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
        let write_bytes = io.lines().find_map(|l| l.strip_prefix("write_bytes: ")).and_then(|v| v.trim().parse().ok()).unwrap_or(0.0);
        let metrics = Conn::open(self.port).await.get("/metrics").await;
        let metric = |name: &str| metrics.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok())).unwrap_or(0.0);
        Usage { cpu_s, client_cpu_s, write_bytes, commits: metric("warden_store_commits_total "), writes: metric("warden_store_writes_total ") }
    }

    /// Peak resident memory of the server process so far (VmHWM), in MiB.
    fn peak_rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        let kib: f64 = status.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()).unwrap_or(0.0);
        kib / 1024.0
    }

    /// Runs in the store that reached an end state.
    fn finished_runs(&self) -> u64 {
        let c = rusqlite::Connection::open_with_flags(&self.db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        c.busy_timeout(Duration::from_secs(5)).unwrap();
        c.query_row("SELECT COUNT(*) FROM runs WHERE state IN ('succeeded', 'failed') AND parent_run IS NULL", [], |r| r.get(0)).unwrap()
    }

    fn failed_runs(&self) -> u64 {
        let c = rusqlite::Connection::open_with_flags(&self.db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        c.query_row("SELECT COUNT(*) FROM runs WHERE state = 'failed'", [], |r| r.get(0)).unwrap()
    }
}

/// The ceiling: this binary re-executed as a bare axum + SQLite server.
async fn start_ceiling(dir: &Path) -> Server {
    let port = free_port();
    let db = dir.join("ceiling.db");
    let mut child =
        Command::new(std::env::current_exe().unwrap()).env(CEILING_ENV, &db).env("WARDEN_BENCH_PORT", port.to_string()).stdout(Stdio::null()).spawn().unwrap();
    wait_listening(port, &mut child).await;
    Server { child, port, db }
}

fn ceiling_server(db: &str, port: u16) {
    use axum::routing::post;
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.pragma_update(None, "synchronous", "NORMAL").unwrap();
    conn.execute_batch("CREATE TABLE IF NOT EXISTS runs (id TEXT PRIMARY KEY, input TEXT NOT NULL, created_ms INTEGER NOT NULL)").unwrap();
    let conn = Arc::new(std::sync::Mutex::new(conn));
    let app = axum::Router::new().route(
        "/webhooks/{story}",
        post(move |body: Bytes| {
            let conn = conn.clone();
            async move {
                // Time-ordered ids, as warden's own: the fairest ceiling.
                let id = format!("r{}", uuid::Uuid::now_v7().simple());
                let input: serde_json::Value = serde_json::from_slice(&body).unwrap();
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
                let c = conn.lock().unwrap();
                c.prepare_cached("INSERT INTO runs (id, input, created_ms) VALUES (?1, ?2, ?3)")
                    .unwrap()
                    .execute(rusqlite::params![id, input.to_string(), now])
                    .unwrap();
                axum::Json(serde_json::json!({"run_id": id}))
            }
        }),
    );
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        axum::serve(listener, app).await.unwrap();
    });
}

fn write_setup(dir: &Path, origin_port: u16, sleep_ms: u64) -> PathBuf {
    let stories = dir.join("stories");
    std::fs::create_dir_all(&stories).unwrap();
    std::fs::write(
        stories.join("t1.yaml"),
        "name: t1\ninput: {type: object, required: [k]}\nsteps:\n  - id: seen\n    transform: {set: {k: \"{{ input.k }}\"}}\n",
    )
    .unwrap();
    std::fs::write(
        stories.join("a1.yaml"),
        "name: a1\ninput: {type: object, required: [k]}\nsteps:\n  - id: echo\n    action: probe\n    with: {op: echo, k: \"{{ input.k }}\"}\n",
    )
    .unwrap();
    std::fs::write(
        stories.join("bench3.yaml"),
        format!(
            "name: bench3\ninput: {{type: object, required: [k]}}\nsteps:\n  - id: prep\n    transform: {{set: {{url: \"http://127.0.0.1:{origin_port}/json?k={{{{ input.k }}}}\"}}}}\n  - id: call\n    action: probe\n    with: {{op: call, url: \"{{{{ steps.prep.output.url }}}}\"}}\n  - id: done\n    transform: {{set: {{ok: \"{{{{ steps.call.output.ok }}}}\"}}}}\n"
        ),
    )
    .unwrap();
    std::fs::write(
        stories.join("poll.yaml"),
        format!("name: poll\ninput: {{type: object}}\nsteps:\n  - id: wait\n    action: probe\n    with: {{op: sleep, ms: {sleep_ms}}}\n"),
    )
    .unwrap();
    let mut policy =
        format!("[plugins.probe]\npath = \"{}\"\n[grants.probe]\nallow = [\"GET http://127.0.0.1:{origin_port}/json\"]\n", common::guest("probe").display());
    // Recording is on by default; WARDEN_BENCH_RECORD=0 measures without it.
    if std::env::var("WARDEN_BENCH_RECORD").is_ok_and(|v| v == "0") {
        policy.push_str("[server]\nrecord = false\n");
    }
    for story in ["t1", "a1", "bench3", "poll"] {
        policy.push_str(&format!("[triggers.{story}]\nsecret_env = \"BENCH_WEBHOOK_SECRET\"\nallow_sync = true\nconcurrency = 100000\n"));
    }
    let path = dir.join("warden.toml");
    std::fs::write(&path, policy).unwrap();
    path
}

async fn start_warden(dir: &Path, policy: &Path, name: &str) -> Server {
    let db = dir.join(format!("{name}.db"));
    start_warden_on(dir, policy, db).await
}

/// `db`: a SQLite file, or a PostgreSQL URL (then `finished_runs` cannot be read).
async fn start_warden_on(dir: &Path, policy: &Path, db: PathBuf) -> Server {
    let port = free_port();
    // Another build for an A/B comparison: WARDEN_BENCH_BIN=path/to/warden.
    let bin = std::env::var_os("WARDEN_BENCH_BIN").map(PathBuf::from).unwrap_or_else(|| env!("CARGO_BIN_EXE_warden").into());
    let mut child = Command::new(bin)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--policy")
        .arg(policy)
        .arg("--stories")
        .arg(dir.join("stories"))
        .arg("--db")
        .arg(&db)
        .env("WARDEN_CACHE_DIR", dir.join("cache"))
        .env("BENCH_WEBHOOK_SECRET", SECRET)
        // The two per-run info lines off unless asked for: WARDEN_BENCH_LOG=info.
        .env("WARDEN_LOG", std::env::var("WARDEN_BENCH_LOG").unwrap_or_else(|_| "error".into()))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_listening(port, &mut child).await;
    Server { child, port, db }
}

/// Runs of `story` this server has finished (their end committed), from /metrics.
async fn finished_per_metrics(metrics: &mut Conn, story: &str) -> u64 {
    warden::server::metrics::finished_runs(&metrics.get("/metrics").await, story)
}

/// Posts `runs` webhooks without waiting for the runs, then waits until all
/// finished: completions per second, first webhook to last completion.
async fn completions(server: &Server, story: &str, runs: usize, conns: usize) -> f64 {
    static SEQ: AtomicU64 = AtomicU64::new(1 << 40);
    // Watched through /metrics (a counter bumped once a run's end is
    // committed): counting the store every 10 ms instead took the better part
    // of a core from the server. The store is counted once, at the end.
    let before = server.finished_runs();
    let mut metrics = Conn::open(server.port).await;
    let metrics_before = finished_per_metrics(&mut metrics, story).await;
    let started = Instant::now();
    let left = Arc::new(AtomicU64::new(runs as u64));
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (left, port, story) = (left.clone(), server.port, story.to_string());
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::open(port).await;
            let path = format!("/webhooks/{story}");
            while left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok() {
                let body = format!(r#"{{"k": {}}}"#, SEQ.fetch_add(1, Ordering::Relaxed));
                let (code, reply) = c.post(&path, &story, body).await;
                assert_eq!(code, 202, "{}", String::from_utf8_lossy(&reply));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    loop {
        let done = finished_per_metrics(&mut metrics, story).await - metrics_before;
        if done >= runs as u64 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(600), "runs did not finish: {done} of {runs}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let stored = server.finished_runs() - before;
    assert!(stored >= runs as u64, "/metrics counted {runs} finished runs, the store has {stored}");
    runs as f64 / elapsed
}

fn main() {
    if let Ok(db) = std::env::var(CEILING_ENV) {
        let port = std::env::var("WARDEN_BENCH_PORT").unwrap().parse().unwrap();
        return ceiling_server(&db, port);
    }
    let full = common::full();
    let secs = if full { 5.0 } else { 0.3 };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let (origin, _rec) = warden_sim::origin::spawn().await.unwrap();
        let dir = std::env::temp_dir().join(format!("warden-bench-load-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (sleepers, sleep_ms) = if full { (1500, 3000) } else { (20, 100) };
        let policy = write_setup(&dir, origin.port(), sleep_ms);
        println!("warden serve under load ({} s per case; load generator on the same cores)", secs);

        let ceiling = start_ceiling(&dir).await;
        let c16 = closed_loop(ceiling.port, "/webhooks/x", "x", 200, 16, secs).await;
        let c2 = closed_loop(ceiling.port, "/webhooks/x", "x", 200, 2, secs).await;
        drop(ceiling);
        println!("  ceiling (axum + one SQLite insert)    c=16 {:>7.0}/s   c=2 {:>7.0}/s  p50 {:.3} ms", c16.per_sec, c2.per_sec, c2.p50_ms);

        let show = |what: &str, l: &Load| {
            println!("  {what:<38} {:>7.0}/s  {:>5.1} % of ceiling  p50 {:.3} ms  p99 {:.3} ms", l.per_sec, 100.0 * l.per_sec / c16.per_sec, l.p50_ms, l.p99_ms)
        };
        let w = start_warden(&dir, &policy, "runs").await;
        // Warm up: plugin instantiation, the page cache, the connection pool.
        closed_loop(w.port, "/webhooks/a1?wait=true", "a1", 200, 4, secs / 5.0).await;
        // WARDEN_BENCH_ONLY=text[|text…]: only the cases whose label contains one of them (the ceiling always runs).
        let only = std::env::var("WARDEN_BENCH_ONLY").ok();
        let want = |label: &str| only.as_deref().is_none_or(|o| o.split('|').any(|part| label.contains(part)));
        let closed = [
            ("1 transform, wait, c=16", "t1", 16),
            ("1 transform, wait, c=2", "t1", 2),
            ("1 Wasm action, wait, c=16", "a1", 16),
            ("1 Wasm action, wait, c=2", "a1", 2),
            ("3 steps (transform, HTTP action, transform), c=16", "bench3", 16),
        ];
        for (label, story, conns) in closed {
            if want(label) {
                let before = w.usage().await;
                let l = closed_loop(w.port, &format!("/webhooks/{story}?wait=true"), story, 200, conns, secs).await;
                let after = w.usage().await;
                show(label, &l);
                println!("  {:<38} {}", "", per_run(before, after, l.per_sec * secs));
            }
        }
        let label = "1 Wasm action, 202, completions";
        if want(label) {
            let runs = if full { 30_000 } else { 200 };
            let before = w.usage().await;
            let rate = completions(&w, "a1", runs, 16).await;
            let after = w.usage().await;
            println!("  {label:<38} {rate:>7.0}/s  {:>5.1} % of ceiling  ({runs} runs)", 100.0 * rate / c16.per_sec);
            println!("  {:<38} {}", "", per_run(before, after, runs as f64));
        }
        assert_eq!(w.failed_runs(), 0, "bench runs failed");
        drop(w);

        // The same closed-loop cases on PostgreSQL (`WARDEN_BENCH_POSTGRES`, default
        // the local `test` database), one node, in a schema of its own.
        if want("PostgreSQL") {
            let base = std::env::var("WARDEN_BENCH_POSTGRES").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
            let schema = format!("warden_bench_{}", std::process::id());
            pg_admin(&base, &format!("DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}")).await;
            let url = format!("{base}?options=-c%20search_path%3D{schema}");
            let w = start_warden_on(&dir, &policy, PathBuf::from(&url)).await;
            for (label, story, conns) in [("1 transform, wait, c=16, PostgreSQL", "t1", 16), ("1 Wasm action, wait, c=16, PostgreSQL", "a1", 16)] {
                show(label, &closed_loop(w.port, &format!("/webhooks/{story}?wait=true"), story, 200, conns, secs).await);
            }
            // Scale-out: 1, 2 and 3 nodes on the one database, the same 16
            // connections spread over them (every node takes webhooks and executes).
            let mut nodes = vec![w];
            for n in 1..=3 {
                while nodes.len() < n {
                    nodes.push(start_warden_on(&dir, &policy, PathBuf::from(&url)).await);
                }
                let ports: Vec<u16> = nodes.iter().map(|s| s.port).collect();
                closed_loop_spread(&ports, "/webhooks/t1?wait=true", "t1", 200, 16, secs / 5.0).await;
                show(
                    &format!("1 transform, wait, c=16, PostgreSQL, {n} node(s)"),
                    &closed_loop_spread(&ports, "/webhooks/t1?wait=true", "t1", 200, 16, secs).await,
                );
            }
            drop(nodes);
            pg_admin(&base, &format!("DROP SCHEMA {schema} CASCADE")).await;
        }

        if want("sleeping") {
            // Many runs parked in a polling sleep, at the default worker count.
            let w = start_warden(&dir, &policy, "sleepers").await;
            let rate = completions(&w, "poll", sleepers, 16).await;
            let took = sleepers as f64 / rate;
            println!("  {sleepers} runs sleeping {sleep_ms} ms each, default workers: all done in {took:.1} s, server peak RSS {:.0} MiB", w.peak_rss_mib());
            assert_eq!(w.failed_runs(), 0, "sleeping runs failed");
        }
        let _ = std::fs::remove_dir_all(&dir);
    });
}

async fn pg_admin(url: &str, sql: &str) {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {url} is needed for the PostgreSQL cases (WARDEN_BENCH_POSTGRES, or WARDEN_BENCH_ONLY to skip them): {e}"));
    tokio::spawn(conn);
    client.batch_execute(sql).await.unwrap();
}
