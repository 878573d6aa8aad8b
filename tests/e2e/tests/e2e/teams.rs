//! Vetted steps and teams: signed plugins, per-team grants and credentials,
//! cross-team sub-stories.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use warden::story::engine::Quiet;
use warden::story::Library;
use warden_e2e::{engine, guest, workspace_root, StoryDir};
use warden_sim::origin;

const BLUE_SECRET: &str = "blue-team-secret-5521";

struct Keys {
    trusted: (String, String),
    other: (String, String),
}

fn keys() -> Keys {
    Keys { trusted: warden::vetting::keygen().unwrap(), other: warden::vetting::keygen().unwrap() }
}

/// A private copy of the probe component (so its .sig is this test's own).
fn probe_copy(dir: &Path) -> PathBuf {
    let p = dir.join("probe.wasm");
    std::fs::copy(guest("probe"), &p).unwrap();
    p
}

fn sha(p: &Path) -> String {
    warden::runtime::sha256_hex(&std::fs::read(p).unwrap())
}

fn write_sig(wasm: &Path, secret: &str, key: &str, name: &str) {
    let sig = warden::vetting::sign(secret, key, name, "0.0.0", &sha(wasm)).unwrap();
    std::fs::write(warden::vetting::sig_path(wasm), serde_json::to_string(&sig).unwrap()).unwrap();
}

/// The story files in `dir` whose names start with `prefix`, as a TOML list.
fn files(dir: &Path, prefix: &str) -> String {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| format!("{:?}", e.path().display().to_string()))
        .collect();
    names.sort();
    format!("[{}]", names.join(", "))
}

/// The teams' policy; in `dir`, files named `red…` are red's stories and `blue…` blue's.
fn policy(wasm: &Path, k: &Keys, port: u16, dir: &Path) -> warden::Policy {
    let (red, blue) = (files(dir, "red"), files(dir, "blue"));
    let text = format!(
        r#"
[plugins.probe]
path = "{wasm}"

[grants.probe]
allow = ["* http://127.0.0.1:{port}/*"]
credentials = ["blue-token"]

[keys.release]
public_key = "{trusted}"

[keys.stranger]
public_key = "{other}"

[teams.red]
trusted_keys = ["release"]
stories = {red}
api_token_env = "WARDEN_TEST_RED_API"

[teams.blue]
trusted_keys = ["release"]
stories = {blue}
api_token_env = "WARDEN_TEST_BLUE_API"

[credentials.blue-token]
kind = "bearer"
env = "WARDEN_TEST_BLUE_TOKEN"
hosts = ["http://127.0.0.1:{port}"]
team = "blue"
"#,
        wasm = wasm.display(),
        trusted = k.trusted.1,
        other = k.other.1,
    );
    // SAFETY: every test sets the same value.
    unsafe {
        std::env::set_var("WARDEN_TEST_BLUE_TOKEN", BLUE_SECRET);
        std::env::set_var("WARDEN_TEST_RED_API", "red-api-token-for-tests");
        std::env::set_var("WARDEN_TEST_BLUE_API", "blue-api-token-for-tests");
    }
    warden::Policy::parse(&text, "teams.toml", &workspace_root()).unwrap_or_else(|e| panic!("{e}"))
}

const RED_ECHO: &str = "name: red-echo\nteam: red\nsteps:\n  - id: e\n    action: probe\n    with: {op: echo}\n";

async fn run_red(wasm: &Path, k: &Keys) -> warden::story::engine::RunResult {
    let dir = StoryDir::new(&[("red.yaml", RED_ECHO)]);
    let e = engine(policy(wasm, k, 1, &dir.0), &dir.0);
    e.run("red-echo", json!({}), "test", &Quiet).await.unwrap()
}

fn refused(r: &warden::story::engine::RunResult) -> String {
    assert_eq!(r.state, "failed", "expected a refusal");
    let e = r.error.as_ref().unwrap();
    assert_eq!(e.kind, "denied", "{e:?}");
    e.message.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_signed_by_a_trusted_key_runs_and_every_other_signature_is_refused() {
    let k = keys();
    let tmp = StoryDir::new(&[]);
    let wasm = probe_copy(&tmp.0);

    write_sig(&wasm, &k.trusted.0, "release", "probe");
    assert_eq!(run_red(&wasm, &k).await.state, "succeeded");

    // Revoked key: same files, the policy marks the key revoked.
    let dir = StoryDir::new(&[("red.yaml", RED_ECHO)]);
    let mut p = policy(&wasm, &k, 1, &dir.0);
    p.keys.get_mut("release").unwrap().revoked = true;
    let m = refused(&engine(p, &dir.0).run("red-echo", json!({}), "test", &Quiet).await.unwrap());
    assert!(m.contains("key `release`, which is revoked"), "{m}");

    // Wrong (untrusted) key.
    write_sig(&wasm, &k.other.0, "stranger", "probe");
    let m = refused(&run_red(&wasm, &k).await);
    assert!(m.contains("key `stranger`, which team red does not trust"), "{m}");

    // Unknown key name.
    write_sig(&wasm, &k.other.0, "ghost", "probe");
    let m = refused(&run_red(&wasm, &k).await);
    assert!(m.contains("key `ghost`, which the policy does not know"), "{m}");

    // A key name that is trusted, but the signature made with another key.
    write_sig(&wasm, &k.other.0, "release", "probe");
    let m = refused(&run_red(&wasm, &k).await);
    assert!(m.contains("does not verify with key `release`"), "{m}");

    // A different manifest than the component describes.
    write_sig(&wasm, &k.trusted.0, "release", "jira-ticket");
    let m = refused(&run_red(&wasm, &k).await);
    assert!(m.contains("the signature is for jira-ticket 0.0.0, but the component describes itself as probe 0.0.0"), "{m}");

    // A changed byte: a valid component with one more custom section.
    write_sig(&wasm, &k.trusted.0, "release", "probe");
    let mut bytes = std::fs::read(&wasm).unwrap();
    bytes.extend_from_slice(&[0x00, 0x05, 0x04, b'e', b'v', b'i', b'l']);
    std::fs::write(&wasm, bytes).unwrap();
    let m = refused(&run_red(&wasm, &k).await);
    assert!(m.contains("the component changed after signing"), "{m}");

    // Unsigned.
    std::fs::remove_file(warden::vetting::sig_path(&wasm)).unwrap();
    let m = refused(&run_red(&wasm, &k).await);
    assert!(m.contains("neither pinned"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_digest_is_enough_unless_the_team_requires_a_signature() {
    let k = keys();
    let tmp = StoryDir::new(&[]);
    let wasm = probe_copy(&tmp.0);
    let dir = StoryDir::new(&[("red.yaml", RED_ECHO)]);
    let mut p = policy(&wasm, &k, 1, &dir.0);
    p.plugins.get_mut("probe").unwrap().sha256 = Some(sha(&wasm));
    let e = engine(p.clone(), &dir.0);
    assert_eq!(e.run("red-echo", json!({}), "test", &Quiet).await.unwrap().state, "succeeded");

    p.teams.get_mut("red").unwrap().require_signature = true;
    let e = engine(p, &dir.0);
    let m = refused(&e.run("red-echo", json!({}), "test", &Quiet).await.unwrap());
    assert!(m.contains("a signature is required"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_team_never_uses_another_teams_credential_but_its_sub_story_does() {
    let k = keys();
    let tmp = StoryDir::new(&[]);
    let wasm = probe_copy(&tmp.0);
    write_sig(&wasm, &k.trusted.0, "release", "probe");
    let (srv, rec) = origin::spawn().await.unwrap();
    let url = srv.url("/echo");
    let red_direct =
        format!("name: red-direct\nteam: red\nsteps:\n  - id: use\n    action: probe\n    with: {{op: fetch, url: \"{url}\", credential: blue-token}}\n");
    let red_via_blue = "name: red-via-blue\nteam: red\nsteps:\n  - id: ask\n    story: blue-lookup\n    with: {}\noutput: \"{{ steps.ask.output }}\"\n";
    let blue = format!("name: blue-lookup\nteam: blue\nallow_callers: [red]\nsteps:\n  - id: use\n    action: probe\n    with: {{op: fetch, url: \"{url}\", credential: blue-token}}\noutput: {{status: \"{{{{ steps.use.output.status }}}}\"}}\n");
    let dir = StoryDir::new(&[("red-a.yaml", &red_direct), ("red-b.yaml", red_via_blue), ("blue-c.yaml", &blue)]);
    let e = engine(policy(&wasm, &k, srv.port(), &dir.0), &dir.0);

    // Red's own step: the global grant lists blue-token, but it belongs to blue.
    let r = e.run("red-direct", json!({}), "test", &Quiet).await.unwrap();
    assert_eq!(r.state, "succeeded");
    let out = r.output.unwrap();
    assert_eq!(out["error"]["kind"], "denied", "{out}");
    assert!(out["error"]["message"].as_str().unwrap().contains("credential `blue-token` is not granted"), "{out}");
    assert_eq!(rec.count(), 0);

    // Through blue's sub-story, blue's credential works; red sees only the output.
    let r = e.run("red-via-blue", json!({}), "test", &Quiet).await.unwrap();
    assert_eq!(r.state, "succeeded", "{:?}", r.error);
    assert_eq!(r.output, Some(json!({"status": 200})));
    assert_eq!(rec.all()[0].headers["authorization"], format!("Bearer {BLUE_SECRET}"));
    let d = e.store.get_run(&r.run_id).unwrap().unwrap();
    assert!(d.audit.is_empty(), "the caller's run must not hold the callee's audit");
    let child = e.store.get_run(&d.children[0].id).unwrap().unwrap();
    assert_eq!(child.audit[0]["team"], "blue");
    assert_eq!(child.audit[0]["credential"], "blue-token");
    assert!(!serde_json::to_string(&d).unwrap().contains(BLUE_SECRET));
    assert!(!serde_json::to_string(&child).unwrap().contains(BLUE_SECRET));
}

/// The caller team sees what another team's sub-story gave it, not how:
/// not the sub-story's recordings, its error text or the step it failed at,
/// through the API or the console. The owning team sees all of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_team_sees_another_teams_sub_story_output_only() {
    let k = keys();
    let tmp = StoryDir::new(&[]);
    let wasm = probe_copy(&tmp.0);
    write_sig(&wasm, &k.trusted.0, "release", "probe");
    let (srv, _rec) = origin::spawn().await.unwrap();
    let url = srv.url("/echo");
    let red = "name: red-calls\nteam: red\nsteps:\n  - id: look\n    story: blue-lookup\n    with: {}\n  - id: check\n    story: blue-checks\n    with: {}\n    on_error: continue\n";
    let blue = format!("name: blue-lookup\nteam: blue\nallow_callers: [red]\nsteps:\n  - id: blue_internal_fetch\n    action: probe\n    with: {{op: fetch, url: \"{url}\", credential: blue-token}}\noutput: {{status: \"{{{{ steps.blue_internal_fetch.output.status }}}}\"}}\n");
    let checks = "name: blue-checks\nteam: blue\nallow_callers: [red]\nsteps:\n  - id: blue_internal_assert\n    transform: {assert: {that: \"{{ false }}\", message: \"blue internal detail 7f3a\"}}\n";
    let dir = StoryDir::new(&[("red-a.yaml", red), ("blue-c.yaml", &blue), ("blue-d.yaml", checks)]);
    let (base, e) = warden_e2e::serve(engine(policy(&wasm, &k, srv.port(), &dir.0), &dir.0)).await;
    let r = e.run("red-calls", json!({}), "test", &Quiet).await.unwrap();
    assert_eq!(r.state, "succeeded", "{:?}", r.error);
    let get = |path: String, token: &'static str| {
        let base = base.clone();
        async move { reqwest::Client::new().get(format!("{base}{path}")).bearer_auth(token).send().await.unwrap().text().await.unwrap() }
    };
    let as_red = get(format!("/api/runs/{}", r.run_id), "red-api-token-for-tests").await;
    let shown: Value = serde_json::from_str(&as_red).unwrap();
    assert_eq!(shown["steps"][0]["output"], json!({"status": 200}), "red sees what the sub-story gave it: {as_red}");
    for hidden in ["blue_internal_fetch", "blue_internal_assert", "blue internal detail 7f3a"] {
        assert!(!as_red.contains(hidden), "red's view of its run shows blue's `{hidden}`: {as_red}");
    }
    assert_eq!(shown["children"].as_array().unwrap().len(), 2, "the sub-story runs are listed: {as_red}");
    assert!(shown["recordings"].as_array().unwrap().is_empty(), "{as_red}");
    let page = get(format!("/console/runs/{}", r.run_id), "red-api-token-for-tests").await;
    assert!(page.contains(&r.run_id), "{page}");
    for hidden in ["blue_internal_fetch", "blue_internal_assert", "blue internal detail 7f3a"] {
        assert!(!page.contains(hidden), "red's console page shows blue's `{hidden}`");
    }
    // The whole tree, for whoever sees every team.
    let child = &e.store.get_run(&r.run_id).unwrap().unwrap().children;
    let as_blue = get(format!("/api/runs/{}", child[1].id), "blue-api-token-for-tests").await;
    assert!(as_blue.contains("blue internal detail 7f3a") && as_blue.contains("blue_internal_assert"), "{as_blue}");
}

#[test]
fn a_sub_story_that_does_not_allow_the_caller_team_is_refused_at_load() {
    let k = keys();
    let tmp = StoryDir::new(&[]);
    let wasm = probe_copy(&tmp.0);
    let dir = StoryDir::new(&[
        ("red-a.yaml", "name: a\nteam: red\nsteps:\n  - id: x\n    story: b\n"),
        ("blue-b.yaml", "name: b\nteam: blue\nsteps:\n  - id: y\n    transform: {set: {}}\n"),
        ("purple-c.yaml", "name: c\nteam: purple\nsteps:\n  - id: y\n    transform: {set: {}}\n"),
    ]);
    let lib = Library::load_dir(&dir.0).unwrap();
    let errors = lib.check(&policy(&wasm, &k, 1, &dir.0)).unwrap_err().to_string();
    assert!(errors.contains("story `b` belongs to team blue and does not allow team red"), "{errors}");
    assert!(errors.contains("story `c` belongs to team `purple`, which has no [teams.purple]"), "{errors}");
}

#[test]
fn a_story_cannot_claim_another_team() {
    let k = keys();
    let tmp = StoryDir::new(&[]);
    let wasm = probe_copy(&tmp.0);
    // A file among red's stories that says it is blue's, and one nobody listed.
    let dir = StoryDir::new(&[
        ("red-claims-blue.yaml", "name: sneaky\nteam: blue\nsteps:\n  - id: use\n    action: probe\n    with: {op: echo}\n"),
        ("red-ok.yaml", "name: fine\nteam: red\nsteps:\n  - id: y\n    transform: {set: {}}\n"),
    ]);
    let stray = StoryDir::new(&[("stray.yaml", "name: stray\nteam: red\nsteps:\n  - id: y\n    transform: {set: {}}\n")]);
    let errors = Library::load_dir(&dir.0).unwrap().check(&policy(&wasm, &k, 1, &dir.0)).unwrap_err().to_string();
    let file = dir.0.join("red-claims-blue.yaml");
    assert!(errors.contains(&format!("{}:1: story `sneaky` says team `blue`, but teams.toml gives this file to team `red`", file.display())), "{errors}");
    assert!(!errors.contains("`fine`"), "{errors}");
    let errors = Library::load_dir(&stray.0).unwrap().check(&policy(&wasm, &k, 1, &dir.0)).unwrap_err().to_string();
    assert!(errors.contains("story `stray` is in no team's `stories` in teams.toml"), "{errors}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_plugin_cannot_impersonate_another_or_an_older_self() {
    let k = keys();
    let tmp = StoryDir::new(&[]);
    let wasm = probe_copy(&tmp.0);
    write_sig(&wasm, &k.trusted.0, "release", "probe");
    let dir = StoryDir::new(&[
        ("red-jira.yaml", "name: red-jira\nteam: red\nsteps:\n  - id: t\n    action: jira-ticket\n    with: {op: echo}\n"),
        ("red.yaml", RED_ECHO),
    ]);
    let mut base = policy(&wasm, &k, 1, &dir.0);
    let mut jira = base.plugins["probe"].clone();
    jira.name = "jira-ticket".into();
    base.plugins.insert("jira-ticket".into(), jira);

    // Another plugin signed by a trusted key, dropped in as jira-ticket, gets nothing of Jira's.
    let m = refused(&engine(base.clone(), &dir.0).run("red-jira", json!({}), "test", &Quiet).await.unwrap());
    assert!(m.contains("it is signed as plugin `probe`, but the policy runs it as [plugins.jira-ticket]"), "{m}");

    // An older signed build than the policy accepts.
    let mut p = base.clone();
    p.plugins.get_mut("probe").unwrap().min_version = warden::policy::Version::parse("1.2.0");
    let m = refused(&engine(p, &dir.0).run("red-echo", json!({}), "test", &Quiet).await.unwrap());
    assert!(m.contains("is version 0.0.0, older than plugins.probe.min_version 1.2.0"), "{m}");

    // The key's name is signed: a .sig relabelled to another alias of the same key does not verify.
    let mut p = base.clone();
    let mut alias = p.keys["release"].clone();
    alias.name = "alias".into();
    p.keys.insert("alias".into(), alias);
    p.teams.get_mut("red").unwrap().trusted_keys.push("alias".into());
    let mut sig: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(warden::vetting::sig_path(&wasm)).unwrap()).unwrap();
    sig["key"] = json!("alias");
    std::fs::write(warden::vetting::sig_path(&wasm), sig.to_string()).unwrap();
    let m = refused(&engine(p.clone(), &dir.0).run("red-echo", json!({}), "test", &Quiet).await.unwrap());
    assert!(m.contains("does not verify with key `alias`"), "{m}");

    // Revocation follows the key: revoked as `release`, it is refused under `alias` too.
    write_sig(&wasm, &k.trusted.0, "alias", "probe");
    assert_eq!(engine(p.clone(), &dir.0).run("red-echo", json!({}), "test", &Quiet).await.unwrap().state, "succeeded");
    p.keys.get_mut("release").unwrap().revoked = true;
    let m = refused(&engine(p, &dir.0).run("red-echo", json!({}), "test", &Quiet).await.unwrap());
    assert!(m.contains("the same key as `release`, which is revoked"), "{m}");
}
