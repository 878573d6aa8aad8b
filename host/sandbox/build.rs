//! Builds the template evaluator (`host/eval/guest`) as a Wasm component and
//! hands its bytes to the sandbox (`runtime::evaluator` embeds them), so the
//! `warden` binary carries the sandbox its templates render in.
//!
//! A nested `cargo build` for `wasm32-wasip2`, in its own target folder
//! (`target/evaluator`): the outer build holds the lock on its own folder,
//! and the evaluator's dependencies are built once whichever profile the host
//! is built with.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap());
    let eval = manifest.join("../eval");
    for watched in ["src", "Cargo.toml", "guest/src", "guest/wit", "guest/Cargo.toml"] {
        println!("cargo:rerun-if-changed={}", eval.join(watched).display());
    }
    println!("cargo:rerun-if-changed={}", manifest.join("../../Cargo.lock").display());

    let target_dir = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| manifest.join("../../target")).join("evaluator");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(manifest.join("../.."))
        .args(["build", "--quiet", "--locked", "-p", "warden-eval-guest", "--target", "wasm32-wasip2", "--profile", "guest"])
        .arg("--target-dir")
        .arg(&target_dir);
    // What the outer build set for itself (flags, wrappers such as clippy's,
    // coverage) is not for a Wasm guest.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_MAKEFLAGS",
        "MAKEFLAGS",
        "MFLAGS",
        "CARGO_LLVM_COV",
        "LLVM_PROFILE_FILE",
    ] {
        cmd.env_remove(var);
    }
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("CARGO_PROFILE_") || k.to_string_lossy().starts_with("CARGO_FEATURE_") {
            cmd.env_remove(k);
        }
    }
    let status = cmd.status().unwrap_or_else(|e| panic!("building the template evaluator: cannot run cargo: {e}"));
    if !status.success() {
        panic!("building the template evaluator (host/eval/guest) for wasm32-wasip2 failed; is the target installed? `rustup target add wasm32-wasip2`");
    }
    let built = target_dir.join("wasm32-wasip2/guest/warden_eval_guest.wasm");
    let wasm = std::fs::read(&built).unwrap_or_else(|e| panic!("reading the evaluator {}: {e}", built.display()));
    std::fs::write(out.join("evaluator.wasm"), &wasm).unwrap_or_else(|e| panic!("writing the evaluator: {e}"));
    // Its digest (the compile cache's key), so start-up need not hash it.
    use sha2::Digest as _;
    std::fs::write(out.join("evaluator.sha256"), hex::encode(sha2::Sha256::digest(&wasm))).unwrap_or_else(|e| panic!("writing the evaluator's digest: {e}"));
}
