//! Story transforms on large data: `deduplicate` and `aggregate` over N
//! events held in the story context (a hunt's results), at N = 1,000 and
//! 10,000. Time per transform; linear in N is the expectation (the context is
//! shared with each item's template, not copied per item). Then what one
//! step's templates cost per run: a text template and an expression, against
//! a small context and against one holding a hunt's N events.
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
        let ctx = warden::story::template::Bindings::from_json(&events(n));
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

    // A step's `with`, rendered as each run renders it: the story's templates
    // are the same every run, the context is new.
    // Plain paths (in an expression or in text) are looked up by the host;
    // a filter is rendered in the sandboxed evaluator, a fresh instance each.
    let plain = json!({"url": "http://127.0.0.1:8080/json?k={{ input.k }}", "ok": "{{ steps.prep.output.url }}", "op": "call"});
    let filtered = json!({"url": "http://127.0.0.1:8080/json?k={{ input.k | string | upper }}", "ok": "{{ steps.prep.output.url }}", "op": "call"});
    let renders = if common::full() { 20_000 } else { 200 };
    println!("a step's `with` (a text template, an expression, a literal), µs per render (median of {rounds} × {renders})");
    for (label, n, with) in [
        ("small context", 0, &plain),
        ("context holding 1,000 events", 1_000, &plain),
        ("with a filter (evaluator), small context", 0, &filtered),
        ("with a filter, 1,000 events held", 1_000, &filtered),
    ] {
        let mut ctx = events(n);
        ctx["input"] = json!({"k": 7});
        ctx["steps"]["prep"] = json!({"output": {"url": "http://127.0.0.1:8080/json?k=7"}});
        let ctx = warden::story::template::Bindings::from_json(&ctx);
        let mut times = Vec::new();
        for _ in 0..rounds {
            let started = Instant::now();
            for _ in 0..renders {
                std::hint::black_box(warden::story::template::render_value(with, &ctx).unwrap());
            }
            times.push(started.elapsed().as_secs_f64() * 1e6 / renders as f64);
        }
        println!("  {label:<42} {:>8.2} µs", common::median(times));
    }
}
