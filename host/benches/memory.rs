//! Memory per sleeping run: N invocations concurrently parked in the host's
//! `clock.sleep` (a polling loop between polls); resident memory growth / N.
//! Then memory per run waiting for an approval: N story runs parked at an
//! approval step (SQLite store on disk); resident memory growth / N, with no
//! instance alive (`WARDEN_BENCH_ONLY=waiting` for this part alone).
//!
//!     cargo bench -p warden --bench memory

mod common;

use std::sync::Arc;
use std::time::Duration;
use warden::runtime::{Runtime, RuntimeConfig};
use warden::{InvocationInfo, Policy};

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    // WARDEN_BENCH_ONLY=waiting: only the approval part, in a fresh process.
    let only_waiting = std::env::var("WARDEN_BENCH_ONLY").is_ok_and(|o| o == "waiting");
    let sizes: &[usize] = if only_waiting {
        &[]
    } else if common::full() {
        &[1_000, 10_000]
    } else {
        &[50]
    };
    println!("memory per sleeping run (probe guest parked in clock.sleep)");
    for &n in sizes {
        let runtime = Arc::new(Runtime::new(RuntimeConfig { cache_dir: None, max_instances: n as u32 + 16, ..Default::default() }).unwrap());
        let policy = Policy::parse(
            &format!("[plugins.probe]\npath = \"{}\"\n[grants.probe]\nlimits = {{ wall_ms = 120000 }}\n", common::guest("probe").display()),
            "bench.toml",
            std::path::Path::new("."),
        )
        .unwrap();
        let plugin = runtime.load_entry(&policy.plugins["probe"]).unwrap();
        let grant = policy.grant_for("probe");
        // Warm: one run first so code and caches are resident before the baseline.
        rt.block_on(runtime.invoke(&plugin, grant.clone(), InvocationInfo::default(), r#"{"op":"echo"}"#, None));
        let before = common::rss_kib();
        let sleep_ms = if common::full() { 8_000 } else { 1_000 };
        let input = format!(r#"{{"op":"sleep","ms":{sleep_ms}}}"#);
        let handles: Vec<_> = (0..n)
            .map(|_| {
                let (runtime, plugin, grant, input) = (runtime.clone(), plugin.clone(), grant.clone(), input.clone());
                rt.spawn(async move { runtime.invoke(&plugin, grant, InvocationInfo::default(), &input, None).await })
            })
            .collect();
        // Wait until every invocation is alive and parked.
        let mut alive = 0;
        for _ in 0..2000 {
            alive = runtime.instances().in_use;
            if alive >= n {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(200));
        let during = common::rss_kib();
        let per_run = (during.saturating_sub(before)) as f64 / n as f64;
        println!("  {n:>6} sleeping runs ({alive} alive): RSS {before} KiB → {during} KiB, {per_run:.1} KiB per run");
        for h in handles {
            let r = rt.block_on(h).unwrap();
            assert!(r.outcome.is_ok(), "{:?}", r.outcome);
        }
    }
    waiting_runs(&rt, if common::full() { &[10_000, 20_000] } else { &[50] });
}

/// Runs parked at an approval step: what they cost while they wait.
fn waiting_runs(rt: &tokio::runtime::Runtime, sizes: &[usize]) {
    use warden::story::engine::{Quiet, StoryRunner};
    println!("memory per run waiting for an approval (an echo step, then the approval; SQLite store on disk)");
    let story = "name: ask\nsteps:\n  - id: before\n    action: probe\n    with: {op: echo}\n  - id: confirm\n    approval: {title: 'Go on?', timeout: 4h}\n";
    for &n in sizes {
        let dir = std::env::temp_dir().join(format!("warden-bench-waiting-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let runtime = Arc::new(Runtime::new(RuntimeConfig { cache_dir: None, max_instances: 64, ..Default::default() }).unwrap());
        let policy =
            Policy::parse(&format!("[plugins.probe]\npath = \"{}\"\n", common::guest("probe").display()), "bench.toml", std::path::Path::new(".")).unwrap();
        let mut library = warden::story::Library::default();
        let parsed = warden::story::parse(story, std::path::Path::new("ask.yaml")).unwrap();
        library.stories.insert(parsed.name.clone(), Arc::new(parsed));
        let store = warden::store::open(&dir.join("runs.db")).unwrap();
        let engine = Arc::new(StoryRunner::new(runtime.clone(), Arc::new(policy), Arc::new(library), store.clone()));
        // Warm: one parked run first, so code, caches and the store's pages are resident.
        let first = rt.block_on(engine.run("ask", serde_json::json!({}), "bench", &Quiet)).unwrap();
        assert_eq!(first.state, warden::story::RunState::Waiting);
        let before = common::rss_kib();
        let started = std::time::Instant::now();
        rt.block_on(async {
            let mut tasks = tokio::task::JoinSet::new();
            for chunk in 0..16 {
                let engine = engine.clone();
                tasks.spawn(async move {
                    for _ in (chunk..n).step_by(16) {
                        let r = engine.run("ask", serde_json::json!({}), "bench", &Quiet).await.unwrap();
                        assert_eq!(r.state, warden::story::RunState::Waiting, "{:?}", r.error);
                    }
                });
            }
            while let Some(done) = tasks.join_next().await {
                done.unwrap();
            }
        });
        let took = started.elapsed();
        let during = common::rss_kib();
        // count_unfinished: every waiting run (count_by_state reads only the latest COUNT_CAP).
        let waiting = store.count_unfinished().unwrap().into_iter().find(|(s, _)| s == "waiting").map_or(0, |(_, c)| c);
        let pending = store.approvals().unwrap().list_approvals(&warden::store::ApprovalFilter { limit: n + 10, ..Default::default() }).unwrap().len();
        assert_eq!((waiting as usize, pending), (n + 1, n + 1));
        let alive = runtime.instances().in_use;
        let per_run = (during.saturating_sub(before)) as f64 / n as f64;
        let db_kib =
            std::fs::metadata(dir.join("runs.db")).map_or(0, |m| m.len() / 1024) + std::fs::metadata(dir.join("runs.db-wal")).map_or(0, |m| m.len() / 1024);
        println!(
            "  {n:>6} waiting runs ({alive} instances alive, parked in {:.1} s): RSS {before} KiB → {during} KiB, {per_run:.2} KiB per run; store {db_kib} KiB on disk",
            took.as_secs_f64()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
