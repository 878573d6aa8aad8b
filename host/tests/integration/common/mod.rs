//! Helpers shared by the tests that drive the `warden` binary.

#![allow(dead_code)]

pub mod node;

use std::path::PathBuf;
use std::process::{Command, Output};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().unwrap()
}

/// A guest built by scripts/build-guests.sh, e.g. `guest("http_fetch")`.
pub fn guest(file_stem: &str) -> PathBuf {
    let p = root().join("target/wasm32-wasip2/guest").join(format!("{file_stem}.wasm"));
    assert!(p.exists(), "run scripts/build-guests.sh first");
    p
}

/// Runs `warden` with the test compile cache and no ambient policy.
pub fn warden(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_warden"));
    cmd.args(args).env("WARDEN_CACHE_DIR", root().join("target/warden-test-cache")).env_remove("WARDEN_POLICY");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// A fresh folder for one test.
pub fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("warden-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
