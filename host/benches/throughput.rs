//! Story throughput: signed webhook → 3-step story (transform, an action that
//! calls the local origin, transform) → completed run, at concurrency 1, 16
//! and 256. Runs per second from the first webhook to the last completion.
//!
//!     cargo bench -p warden --bench throughput

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};
use warden::runtime::{Runtime, RuntimeConfig};
use warden::store::RunStore;
use warden::story::engine::StoryRunner;
use warden::story::Library;
use warden::Policy;

const SECRET: &str = "bench-secret";

async fn measure(runs: usize, concurrency: usize) -> f64 {
    let (origin, _rec) = warden_sim::origin::spawn().await.unwrap();
    let dir = std::env::temp_dir().join(format!("warden-bench-tp-{}-{concurrency}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("stories")).unwrap();
    std::fs::write(
        dir.join("stories/bench3.yaml"),
        format!(
            "name: bench3\ninput: {{type: object, required: [k]}}\nsteps:\n  - id: prep\n    transform: {{set: {{url: \"http://127.0.0.1:{}/json?k={{{{ input.k }}}}\"}}}}\n  - id: call\n    action: probe\n    with: {{op: call, url: \"{{{{ steps.prep.output.url }}}}\"}}\n  - id: done\n    transform: {{set: {{ok: \"{{{{ steps.call.output.ok }}}}\"}}}}\n",
            origin.port()
        ),
    )
    .unwrap();
    // SAFETY: set before any thread reads it.
    unsafe { std::env::set_var("BENCH_WEBHOOK_SECRET", SECRET) };
    let policy = Policy::parse(
        &format!(
            "[plugins.probe]\npath = \"{}\"\n[grants.probe]\nallow = [\"GET http://127.0.0.1:{}/json\"]\n[triggers.bench3]\nsecret_env = \"BENCH_WEBHOOK_SECRET\"\nconcurrency = {}\n",
            common::guest("probe").display(),
            origin.port(),
            concurrency.max(64)
        ),
        "bench.toml",
        &dir,
    )
    .unwrap();
    let library = Library::load_dir(&dir.join("stories")).unwrap();
    let store = Arc::new(warden::store::SqliteStore::open(&dir.join("runs.db")).unwrap());
    let rt = Arc::new(Runtime::new(RuntimeConfig { max_instances: 512, ..Default::default() }).unwrap());
    let engine = Arc::new(StoryRunner::new(rt, Arc::new(policy), Arc::new(library), store.clone()));
    let (router, _queue) =
        warden::server::start(engine, &warden::server::ServeOptions { workers: 64, drain: Duration::from_secs(5), role: Default::default(), telemetry: None })
            .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });

    let client = reqwest::Client::builder().no_proxy().pool_max_idle_per_host(concurrency).build().unwrap();
    let url = format!("http://{addr}/webhooks/bench3");
    let gate = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(runs);
    for k in 0..runs {
        let (client, url, gate) = (client.clone(), url.clone(), gate.clone());
        tasks.push(tokio::spawn(async move {
            let _p = gate.acquire_owned().await.unwrap();
            let body = format!(r#"{{"k": {k}}}"#);
            let sig = warden::server::sign(SECRET.as_bytes(), "bench3", body.as_bytes());
            let r = client.post(&url).header("content-type", "application/json").header("x-warden-signature", sig).body(body).send().await.unwrap();
            assert_eq!(r.status(), 202);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    loop {
        let counts = store.count_by_state().unwrap();
        let finished: u64 = counts.iter().filter(|(s, _)| s == "succeeded" || s == "failed").map(|(_, n)| n).sum();
        if finished as usize >= runs {
            assert!(counts.iter().all(|(s, _)| s != "failed"), "bench runs failed: {counts:?}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = started.elapsed();
    let _ = std::fs::remove_dir_all(&dir);
    runs as f64 / elapsed.as_secs_f64()
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let runs = if common::full() { 3000 } else { 50 };
    println!("story throughput: webhook → 3-step story → completed, {runs} runs each");
    for c in [1, 16, 256] {
        let rps = rt.block_on(measure(runs, c));
        println!("  concurrency {c:>3}: {rps:>8.0} runs/s");
    }
}
