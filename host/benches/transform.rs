//! Story transforms on large data: `deduplicate` and `aggregate` over N
//! events held in the story context (a hunt's results), at N = 1,000 and
//! 10,000. Time per transform; linear in N is the expectation (the context is
//! shared with each item's template, not copied per item).
//!
//!     cargo bench -p warden --bench transform

mod common;

use serde_json::{json, Value};
use std::time::Instant;
use warden::story::transform::Transform;

fn events(n: usize) -> Value {
    let events: Vec<Value> = (0..n).map(|i| json!({"agent": format!("host-{}", i % 97), "pid": i, "cmdline": "powershell -enc AAAA"})).collect();
    json!({"input": {}, "steps": {"hunt": {"output": {"events": events}}}})
}

fn main() {
    let rounds = if common::full() { 5 } else { 1 };
    let dedup: Transform = serde_json::from_value(json!({"deduplicate": {"items": "{{ steps.hunt.output.events }}", "by": "{{ item.agent }}"}})).unwrap();
    let agg: Transform = serde_json::from_value(json!({"aggregate": {"items": "{{ steps.hunt.output.events }}", "group_by": "{{ item.agent }}"}})).unwrap();
    println!("transforms over N events held in the context (median of {rounds})");
    for n in [1_000, 10_000] {
        let ctx = events(n);
        for (name, t) in [("deduplicate", &dedup), ("aggregate", &agg)] {
            let mut times = Vec::new();
            for _ in 0..rounds {
                let started = Instant::now();
                let out = t.apply(&ctx).unwrap();
                times.push(started.elapsed().as_secs_f64() * 1e3);
                std::hint::black_box(out);
            }
            println!("  {name:<12} N = {n:>6}: {:>8.2} ms", common::median(times));
        }
    }
}
