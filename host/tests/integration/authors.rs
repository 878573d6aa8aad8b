//! The connector author's path: scaffold, build, test, check.

use crate::common;

use common::{root, tempdir, text};
use std::process::Command;

fn warden(args: &[&str]) -> std::process::Output {
    common::warden(args, &[])
}

fn cargo(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO"))
        .args(args)
        .current_dir(dir)
        // Shared so repeated runs reuse the build; separate from the workspace's target.
        .env("CARGO_TARGET_DIR", root().join("target/authors-test"))
        .output()
        .unwrap()
}

#[test]
fn a_scaffolded_plugin_builds_passes_its_tests_and_checks_out() {
    let dir = tempdir("new");
    let out = warden(&["plugin", "new", "ticket-lookup", "--dir", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let plugin = moved(&dir, "ticket-lookup");

    let test = cargo(&plugin, &["test", "--quiet"]);
    assert!(test.status.success(), "{}{}", text(&test.stdout), text(&test.stderr));
    assert!(text(&test.stdout).contains("2 passed"), "{}", text(&test.stdout));

    let build = cargo(&plugin, &["build", "--quiet", "--release", "--target", "wasm32-wasip2"]);
    assert!(build.status.success(), "{}", text(&build.stderr));
    let wasm = root().join("target/authors-test/wasm32-wasip2/release/ticket_lookup.wasm");
    let out = warden(&["plugin", "check", wasm.to_str().unwrap(), "--policy", plugin.join("warden.toml").to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("exports: describe, run"), "{stdout}");
    assert!(stdout.contains("manifest: ticket-lookup 0.1.0"), "{stdout}");
    assert!(stdout.contains("http: warden:action/http (warden's own import"), "{stdout}");
    passes_its_cassette(&plugin, &wasm);
    // The scaffold's policy points at its own target dir, not this one.
    assert!(stdout.contains("no [plugins.*] entry points at this file"), "{stdout}");

    let again = warden(&["plugin", "new", "ticket-lookup", "--dir", plugin.parent().unwrap().to_str().unwrap()]);
    assert!(text(&again.stderr).contains("already exists"), "{}", text(&again.stderr));
    let bad = warden(&["plugin", "new", "Bad_Name", "--dir", dir.to_str().unwrap()]);
    assert!(text(&bad.stderr).contains("must be lower-case"), "{}", text(&bad.stderr));
}

#[test]
fn check_refuses_what_is_not_a_warden_action() {
    let dir = tempdir("check");
    // A core module, not a component.
    let core = dir.join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let out = warden(&["plugin", "check", core.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("not a WebAssembly component"), "{}", text(&out.stderr));

    // A component for another world: a wasi:cli command.
    let cmd = dir.join("cmd");
    std::fs::create_dir_all(cmd.join("src")).unwrap();
    std::fs::write(cmd.join("Cargo.toml"), "[package]\nname = \"cli-tool\"\nversion = \"0.1.0\"\nedition = \"2021\"\n[workspace]\n").unwrap();
    std::fs::write(cmd.join("src/main.rs"), "fn main() { println!(\"hi\"); }\n").unwrap();
    let build = cargo(&cmd, &["build", "--quiet", "--release", "--target", "wasm32-wasip2"]);
    assert!(build.status.success(), "{}", text(&build.stderr));
    let wasm = root().join("target/authors-test/wasm32-wasip2/release/cli-tool.wasm");
    let out = warden(&["plugin", "check", wasm.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("does not export `describe`: it targets another world (exports: wasi:cli/run@"), "{stderr}");
}

/// Moves a freshly written scaffold to another folder: it must carry all it
/// needs (WIT, SDK, helpers) and point at nothing outside itself.
fn moved(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    let to = dir.join("elsewhere");
    std::fs::create_dir_all(&to).unwrap();
    std::fs::rename(dir.join(name), to.join(name)).unwrap();
    let plugin = to.join(name);
    for file in ["Cargo.toml", "build.mjs", "build.sh", "warden.toml", "package.json"] {
        if let Ok(text) = std::fs::read_to_string(plugin.join(file)) {
            assert!(!text.contains(root().to_str().unwrap()), "{file} points into warden's checkout: {text}");
        }
    }
    plugin
}

/// The scaffold's cassette replays against the component it built: offline, same output.
fn passes_its_cassette(plugin: &std::path::Path, wasm: &std::path::Path) {
    let cassette = plugin.join("tests/cassettes/get-ticket.json");
    let out = warden(&["plugin", "test", wasm.to_str().unwrap(), "--cassette", cassette.to_str().unwrap()]);
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    assert!(text(&out.stdout).contains("1 call(s) replayed, same output"), "{}", text(&out.stdout));
}

fn sh(dir: &std::path::Path, program: &str, args: &[&str]) -> std::process::Output {
    Command::new(program).args(args).current_dir(dir).output().unwrap_or_else(|e| panic!("{program}: {e}"))
}

#[test]
fn a_scaffolded_javascript_plugin_tests_builds_and_checks_out() {
    let dir = tempdir("js");
    let out = warden(&["plugin", "new", "lookup-js", "--lang", "js", "--dir", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let plugin = moved(&dir, "lookup-js");
    // Reuse the example's componentize-js install instead of a fresh npm install.
    let deps = root().join("plugins/js-fetch/node_modules");
    assert!(deps.exists(), "run scripts/build-guests.sh (it installs plugins/js-fetch's node_modules)");
    std::os::unix::fs::symlink(&deps, plugin.join("node_modules")).unwrap();
    let test = sh(&plugin, "npm", &["test", "--silent"]);
    assert!(test.status.success() && text(&test.stdout).contains("# pass 2"), "{}{}", text(&test.stdout), text(&test.stderr));
    let build = sh(&plugin, "node", &["build.mjs"]);
    assert!(build.status.success(), "{}", text(&build.stderr));
    let out = warden(&["plugin", "check", plugin.join("lookup_js.wasm").to_str().unwrap(), "--policy", plugin.join("warden.toml").to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("manifest: lookup-js 0.1.0") && stdout.contains("grant: [grants.lookup-js]"), "{stdout}");
    // componentize-js imports every interface of the world, so warden's own http shows too.
    assert!(stdout.lines().any(|l| l.starts_with("  http: ") && l.contains("wasi:http")), "fetch() is the JavaScript scaffold's HTTP: {stdout}");
    passes_its_cassette(&plugin, &plugin.join("lookup_js.wasm"));
}

#[test]
fn a_scaffolded_python_plugin_tests_builds_and_checks_out() {
    let dir = tempdir("py");
    let out = warden(&["plugin", "new", "lookup-py", "--lang", "python", "--dir", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let plugin = moved(&dir, "lookup-py");
    let test = sh(&plugin, "python3", &["-m", "unittest"]);
    assert!(test.status.success(), "{}", text(&test.stderr));
    assert!(text(&test.stderr).contains("Ran 2 tests"), "{}", text(&test.stderr));
    let build = sh(&plugin, "./build.sh", &[]);
    assert!(build.status.success(), "componentize-py failed (pip install componentize-py): {}{}", text(&build.stdout), text(&build.stderr));
    let out = warden(&["plugin", "check", plugin.join("lookup_py.wasm").to_str().unwrap(), "--policy", plugin.join("warden.toml").to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("manifest: lookup-py 0.1.0") && stdout.contains("grant: [grants.lookup-py]"), "{stdout}");
    assert!(stdout.lines().any(|l| l.starts_with("  http: ") && l.contains("wasi:http")), "the Python scaffold's HTTP is wasi:http: {stdout}");
    passes_its_cassette(&plugin, &plugin.join("lookup_py.wasm"));
}
