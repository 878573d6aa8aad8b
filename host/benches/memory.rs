//! Memory per sleeping run: N invocations concurrently parked in the host's
//! `clock.sleep` (a polling loop between polls); resident memory growth / N.
//!
//!     cargo bench -p warden --bench memory

mod common;

use std::sync::Arc;
use std::time::Duration;
use warden::{InvocationInfo, Policy, Runtime, RuntimeConfig};

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let sizes: &[usize] = if common::full() { &[1_000, 10_000] } else { &[50] };
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
            alive = runtime.instances().0;
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
}
