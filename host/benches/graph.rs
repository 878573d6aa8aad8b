//! Graph stories (imported Tines stories): a webhook's list exploded into N
//! events, each rendered by a message agent, collected again by an implode,
//! summarised — every event carrying a 1 MiB upstream answer (shared between
//! events, not copied per event). Time per run and events per second, with
//! the run store in memory.
//!
//!     cargo bench -p warden --bench graph

mod common;

use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Instant;
use warden::story::engine::{Quiet, StoryRunner};

const STORY: &str = r#"
name: fan-out
graph:
  entry: start
  max_events: 100000
  agents:
    - {id: start, kind: webhook, receivers: [each]}
    - {id: each, kind: explode, options: {path: "{{ .start.items | as_object }}", to: item, limit: 20000}, receivers: [shape]}
    - {id: shape, kind: message, options: {payload: {id: "{{ .each.item.id }}", host: "{{ .each.item.host | upcase }}"}}, receivers: [all]}
    - {id: all, kind: implode, options: {guid_path: "{{ .each.guid }}", size_path: "{{ .each.size }}"}, receivers: [summary]}
    - {id: summary, kind: message, options: {payload: {count: "{{ .all | size }}"}}}
"#;

fn main() {
    let rounds = if common::full() { 5 } else { 1 };
    let story = warden::story::parse(STORY, std::path::Path::new("fan-out.yaml")).unwrap();
    let mut library = warden::story::Library::default();
    library.stories.insert(story.name.clone(), Arc::new(story));
    let rt = Arc::new(warden::runtime::Runtime::new(warden::runtime::RuntimeConfig::default()).unwrap());
    let store = Arc::new(warden::store::SqliteStore::in_memory().unwrap());
    let engine = StoryRunner::new(rt, Arc::new(warden::Policy::empty()), Arc::new(library), store);
    let tokio = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    // An upstream answer of about 1 MiB that every event carries.
    let blob: Vec<Value> = (0..8_000).map(|i| json!({"id": i, "text": "x".repeat(100)})).collect();
    println!("graph story: explode N → message each → implode → summary (median of {rounds})");
    for n in [500usize, 5_000] {
        let items: Vec<Value> = (0..n).map(|i| json!({"id": format!("e{i}"), "host": format!("host-{}", i % 50)})).collect();
        let input = json!({"items": items, "blob": blob});
        let mut times = Vec::new();
        for _ in 0..rounds {
            let started = Instant::now();
            let r = tokio.block_on(engine.run("fan-out", input.clone(), "bench", &Quiet)).unwrap();
            times.push(started.elapsed().as_secs_f64());
            assert_eq!(r.output.unwrap(), json!({"count": n.to_string()}), "{:?}", r.error);
        }
        let t = common::median(times);
        let events = 2 * n + 3;
        println!("  N = {n:>5}: {:>8.1} ms a run, {:>8.0} events/s", t * 1e3, events as f64 / t);
    }
}
