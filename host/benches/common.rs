//! Shared by the bench binaries: full mode under `cargo bench` (which passes
//! `--bench`), a quick smoke run otherwise (`cargo test --benches`, in CI).

#![allow(dead_code)]

use std::path::PathBuf;

pub fn full() -> bool {
    std::env::args().any(|a| a == "--bench")
}

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().unwrap()
}

pub fn guest(name: &str) -> PathBuf {
    let p = root().join("target/wasm32-wasip2/guest").join(format!("{name}.wasm"));
    assert!(p.exists(), "build the guests first: scripts/build-guests.sh");
    p
}

/// Resident set size of this process, from /proc (Linux).
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}
