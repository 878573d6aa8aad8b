//! The `warden` binary as a user runs it: exit codes, stdout, one-line errors.

use crate::common;

use common::{guest, root, tempdir, text, warden};
use std::path::PathBuf;
use std::process::Command;

fn http_fetch_wasm() -> PathBuf {
    common::guest("http_fetch")
}

fn write_policy(dir: &std::path::Path, port: u16) -> PathBuf {
    let path = dir.join("warden.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[plugins.http-fetch]
path = "{wasm}"

[grants.http-fetch]
allow = ["GET http://127.0.0.1:{port}/*"]
credentials = ["demo"]

[credentials.demo]
kind = "bearer"
env = "CLI_TEST_TOKEN"
hosts = ["http://127.0.0.1:{port}"]
"#,
            wasm = http_fetch_wasm().display()
        ),
    )
    .unwrap();
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn action_run_prints_the_output_and_the_audit() {
    let (srv, rec) = warden_sim::origin::spawn().await.unwrap();
    let dir = tempdir("run");
    let policy = write_policy(&dir, srv.port());
    let input = format!(r#"{{"url": "{}", "credential": "demo"}}"#, srv.url("/echo"));
    let out = tokio::task::spawn_blocking(move || {
        warden(&["action", "run", "http-fetch", "--policy", policy.to_str().unwrap(), "--input", &input, "--audit"], &[("CLI_TEST_TOKEN", "cli-secret-123")])
    })
    .await
    .unwrap();
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["status"], 200);
    assert_eq!(json["body"]["headers"]["authorization"], "Bearer [REDACTED]");
    assert_eq!(rec.all()[0].headers["authorization"], "Bearer cli-secret-123");
    let stderr = text(&out.stderr);
    assert!(stderr.contains(r#""decision":"allowed""#), "{stderr}");
    assert!(!stderr.contains("cli-secret-123") && !text(&out.stdout).contains("cli-secret-123"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_denied_call_exits_non_zero_with_one_clear_line() {
    let (srv, rec) = warden_sim::origin::spawn().await.unwrap();
    let dir = tempdir("deny");
    let policy = write_policy(&dir, srv.port());
    let out = tokio::task::spawn_blocking(move || {
        warden(
            &["action", "run", "http-fetch", "-q", "--policy", policy.to_str().unwrap(), "--input", r#"{"url":"http://169.254.169.254/latest/meta-data/"}"#],
            &[],
        )
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("warden: http-fetch: denied: no rule of http-fetch allows http://169.254.169.254:80"), "{stderr}");
    assert_eq!(rec.count(), 0);
}

#[test]
fn a_bad_policy_is_refused_with_file_and_line() {
    let dir = tempdir("bad");
    let path = dir.join("warden.toml");
    std::fs::write(&path, "[plugins.x]\npath = \"x.wasm\"\n\n[grants.x]\nallow = [\"GET ftp://files.example/*\"]\n").unwrap();
    let out = warden(&["policy", "check", path.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains(&format!("{}:5: rule `GET ftp://files.example/*`: scheme `ftp` is not http or https", path.display())), "{stderr}");
}

#[test]
fn bad_input_and_unknown_plugins_are_explained() {
    let out = warden(&["action", "run", "nope", "--input", "{not json"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("--input is not JSON"), "{}", text(&out.stderr));
    let out = warden(&["action", "run", "nope"], &[]);
    assert!(text(&out.stderr).contains("`nope` is neither a plugin"), "{}", text(&out.stderr));
}

#[test]
fn a_plugin_run_by_path_without_a_grant_reaches_nothing() {
    let wasm = http_fetch_wasm();
    let dir = tempdir("nogrant");
    let out = Command::new(env!("CARGO_BIN_EXE_warden"))
        .current_dir(&dir)
        .env("WARDEN_CACHE_DIR", root().join("target/warden-test-cache"))
        .args(["action", "run", wasm.to_str().unwrap(), "-q", "--input", r#"{"url":"https://example.com/"}"#])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("has no egress grant"), "{}", text(&out.stderr));
}

#[test]
fn describe_prints_the_manifest() {
    let out = warden(&["action", "describe", http_fetch_wasm().to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let m: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(m["name"], "http-fetch");
    assert_eq!(m["input_schema"]["required"][0], "url");
}

#[test]
fn story_check_reports_problems_with_file_and_line() {
    let dir = tempdir("storycheck");
    let file = dir.join("a.yaml");
    std::fs::write(&file, "name: a\nsteps:\n  - id: x\n    transform: {set: {}}\n  - id: y\n    transform: {set: {v: \"{{ steps.q.output }}\"}}\n  - id: z\n    transform: {set: {v: \"{{ steps.r.output }}\"}}\n").unwrap();
    let out = warden(&["story", "check", dir.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    let f = file.display();
    assert!(stderr.contains(&format!("{f}:5: step `y`: `{{{{ steps.q.output }}}}` reads steps.q, but there is no step `q`")), "{stderr}");
    assert!(stderr.contains(&format!("{f}:7: step `z`: `{{{{ steps.r.output }}}}` reads steps.r")), "{stderr}");

    std::fs::write(&file, "name: a\nsteps:\n  - id: x\n    action: ghost\n").unwrap();
    let out = warden(&["story", "check", file.to_str().unwrap()], &[]);
    assert!(text(&out.stderr).contains(&format!("{f}:3: step `x`: unknown plugin `ghost`")), "{}", text(&out.stderr));
}

#[test]
fn story_run_records_the_run_for_runs_list_and_show() {
    let dir = tempdir("storyrun");
    std::fs::write(
        dir.join("t.yaml"),
        "name: t\ninput: {type: object, required: [who]}\nsteps:\n  - id: greet\n    transform: {set: {hello: \"{{ input.who }}\"}}\n",
    )
    .unwrap();
    let db = dir.join("runs.db");
    let out = warden(&["story", "run", dir.join("t.yaml").to_str().unwrap(), "--db", db.to_str().unwrap(), "--input", r#"{"who":"soc"}"#], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap(), serde_json::json!({"hello": "soc"}));
    assert!(text(&out.stderr).contains("✓ greet succeeded"), "{}", text(&out.stderr));

    let list = warden(&["runs", "list", "--db", db.to_str().unwrap(), "--json"], &[]);
    let runs: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(runs[0]["story"], "t");
    assert_eq!(runs[0]["state"], "succeeded");
    let id = runs[0]["id"].as_str().unwrap();
    let show = warden(&["runs", "show", id, "--db", db.to_str().unwrap(), "--json"], &[]);
    let run: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(run["steps"][0]["output"], serde_json::json!({"hello": "soc"}));

    let bad = warden(&["story", "run", dir.join("t.yaml").to_str().unwrap(), "--db", db.to_str().unwrap(), "--input", "{}"], &[]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(text(&bad.stderr).contains("invalid input: input is missing required field `who`"), "{}", text(&bad.stderr));
}

#[test]
fn keygen_sign_verify_and_explain() {
    let dir = tempdir("sign");
    let wasm = dir.join("http_fetch.wasm");
    std::fs::copy(http_fetch_wasm(), &wasm).unwrap();
    let out = warden(&["plugin", "keygen", "release", "--dir", dir.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let snippet = text(&out.stdout);
    assert!(snippet.starts_with("[keys.release]\npublic_key = \""), "{snippet}");
    let key_file = dir.join("release.key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let out = warden(&["plugin", "sign", wasm.to_str().unwrap(), "--key", key_file.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let policy = dir.join("warden.toml");
    std::fs::write(
        &policy,
        format!("{snippet}\n[plugins.http-fetch]\npath = \"{}\"\n[grants.http-fetch]\nallow = [\"GET https://api.example.com/*\"]\n[teams.soc]\ntrusted_keys = [\"release\"]\n", wasm.display()),
    )
    .unwrap();
    let out = warden(&["plugin", "verify", wasm.to_str().unwrap(), "--policy", policy.to_str().unwrap(), "--team", "soc"], &[]);
    assert!(text(&out.stdout).starts_with("ok: http-fetch 0.1.0"), "{}{}", text(&out.stdout), text(&out.stderr));
    let out = warden(&["policy", "explain", "soc", "--policy", policy.to_str().unwrap()], &[]);
    let explained = text(&out.stdout);
    assert!(explained.contains("trusted: signed by trusted key release"), "{explained}");
    assert!(explained.contains("http: allow `GET https://api.example.com/*`"), "{explained}");
    assert!(explained.contains("grant: [grants.http-fetch]"), "{explained}");

    let out = warden(&["plugin", "keygen", "release", "--dir", dir.to_str().unwrap()], &[]);
    assert!(text(&out.stderr).contains("refusing to overwrite"), "{}", text(&out.stderr));

    let mut bytes = std::fs::read(&wasm).unwrap();
    bytes.extend_from_slice(&[0x00, 0x02, 0x01, b'x']);
    std::fs::write(&wasm, bytes).unwrap();
    let out = warden(&["plugin", "verify", wasm.to_str().unwrap(), "--policy", policy.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("the component changed after signing"), "{}", text(&out.stderr));
}

#[test]
fn with_teams_the_cli_vets_plugins_as_a_story_would() {
    let dir = tempdir("cli-teams");
    let wasm = dir.join("probe.wasm");
    std::fs::copy(guest("probe"), &wasm).unwrap();
    std::fs::create_dir_all(dir.join("stories/soc")).unwrap();
    let story = dir.join("stories/soc/echo.yaml");
    std::fs::write(&story, "name: echo\nteam: soc\nsteps:\n  - id: say\n    action: probe\n    with: {op: echo}\n").unwrap();
    let policy = dir.join("warden.toml");
    let write_policy = |pin: &str| {
        std::fs::write(&policy, format!("[plugins.probe]\npath = \"probe.wasm\"\n{pin}\n[teams.soc]\nstories = [\"stories/soc\"]\n")).unwrap();
    };
    write_policy("");
    let p = policy.to_str().unwrap();
    let (w, input) = (wasm.to_str().unwrap(), r#"{"op":"echo"}"#);

    let out = warden(&["action", "run", "probe", "--input", input, "--policy", p], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("has teams: give --team TEAM"), "{}", text(&out.stderr));

    // Neither pinned nor signed: refused, from the CLI as from a story.
    let out = warden(&["action", "run", w, "--team", "soc", "--input", input, "--policy", p], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("team soc refuses plugin probe: it is neither pinned"), "{}", text(&out.stderr));
    assert!(text(&out.stdout).is_empty(), "the plugin never ran");

    let out = warden(&["plugin", "check", w, "--team", "soc", "--policy", p], &[]);
    assert!(text(&out.stdout).contains("REFUSED"), "{}", text(&out.stdout));
    assert_eq!(out.status.code(), Some(1), "a REFUSED plugin fails the check, so it can gate CI");

    let out = warden(&["story", "check", story.to_str().unwrap(), "--policy", p], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains(&format!("{}:4: step `say`: team soc refuses plugin probe", story.display())), "{}", text(&out.stderr));

    // Pinned: all three agree it may run.
    let digest = text(&warden(&["plugin", "digest", w], &[]).stdout).trim().to_string();
    write_policy(&format!("sha256 = \"{digest}\""));
    let out = warden(&["action", "run", "probe", "--team", "soc", "--input", input, "--policy", p], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("\"op\": \"echo\""), "{}", text(&out.stdout));
    assert!(warden(&["plugin", "check", w, "--team", "soc", "--policy", p], &[]).status.success());
    assert!(warden(&["story", "check", story.to_str().unwrap(), "--policy", p], &[]).status.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_recorded_call_becomes_a_cassette_that_plugin_test_replays_offline() {
    let (srv, rec) = warden_sim::origin::spawn().await.unwrap();
    let dir = tempdir("cassette");
    let policy = write_policy(&dir, srv.port());
    let cassette = dir.join("echo.json");
    let input = format!(r#"{{"url": "{}", "credential": "demo"}}"#, srv.url("/echo"));
    let (p, c) = (policy.clone(), cassette.clone());
    let out = tokio::task::spawn_blocking(move || {
        warden(
            &["action", "run", "http-fetch", "--policy", p.to_str().unwrap(), "--input", &input, "--record", c.to_str().unwrap()],
            &[("CLI_TEST_TOKEN", "cli-cassette-secret-77")],
        )
    })
    .await
    .unwrap();
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert!(text(&out.stderr).contains("recorded 1 call(s)"), "{}", text(&out.stderr));
    let recorded = std::fs::read_to_string(&cassette).unwrap();
    assert!(!recorded.contains("cli-cassette-secret-77"), "a credential value in the cassette: {recorded}");
    assert!(recorded.contains("[REDACTED]"), "the answer as the guest saw it, redacted");
    assert_eq!(rec.count(), 1);

    // Offline: no origin, no token; the same output, exit 0.
    drop(srv);
    let test = |cassettes: &[&std::path::Path]| {
        let mut args = vec!["plugin", "test", "http-fetch", "--policy", policy.to_str().unwrap()];
        for c in cassettes {
            args.extend(["--cassette", c.to_str().unwrap()]);
        }
        warden(&args, &[])
    };
    let ok = test(&[&cassette]);
    assert!(ok.status.success(), "{}{}", text(&ok.stdout), text(&ok.stderr));
    assert!(text(&ok.stdout).contains("ok    ") && text(&ok.stdout).contains("1 call(s) replayed"), "{}", text(&ok.stdout));

    // A cassette whose plugin would now ask for another URL: exit 1, the call and field named.
    let other = dir.join("other.json");
    let mut changed: serde_json::Value = serde_json::from_str(&recorded).unwrap();
    changed["input"]["url"] = serde_json::json!(format!("{}/elsewhere", changed["input"]["url"].as_str().unwrap()));
    std::fs::write(&other, changed.to_string()).unwrap();
    let out = test(&[&cassette, &other]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("FAIL  ") && stdout.contains("call #1: url differs"), "{stdout}");
    assert!(stdout.contains("1 of 2 cassette(s) failed"), "{stdout}");

    // Not a recording: one line naming the file.
    let bad = dir.join("bad.json");
    std::fs::write(&bad, "{\"format\": 1}").unwrap();
    let out = test(&[&bad]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("bad.json:1: not a warden recording"), "{}", text(&out.stderr));
}

#[test]
fn the_bundled_connectors_replay_their_cassettes() {
    let cassettes: Vec<PathBuf> = std::fs::read_dir(root().join("plugins"))
        .unwrap()
        .flat_map(|d| std::fs::read_dir(d.unwrap().path().join("tests/cassettes")).into_iter().flatten())
        .map(|f| f.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    assert!(cassettes.len() >= 3, "{cassettes:?}");
    let policy = root().join("examples/warden.toml");
    for c in &cassettes {
        let plugin = c.parent().unwrap().parent().unwrap().parent().unwrap().file_name().unwrap().to_str().unwrap().to_string();
        let out = warden(&["plugin", "test", &plugin, "--policy", policy.to_str().unwrap(), "--cassette", c.to_str().unwrap()], &[]);
        assert!(
            out.status.success(),
            "{}: {}{}\n(if the connector changed on purpose, run scripts/record-cassettes.sh)",
            c.display(),
            text(&out.stdout),
            text(&out.stderr)
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_story_run_is_recorded_and_runs_replay_re_executes_it_offline() {
    let (srv, rec) = warden_sim::origin::spawn().await.unwrap();
    let dir = tempdir("runs-replay");
    let policy = write_policy(&dir, srv.port());
    let story = dir.join("fetch.yaml");
    std::fs::write(
        &story,
        format!("name: fetch\nsteps:\n  - id: get\n    action: http-fetch\n    with: {{url: \"{}\", credential: demo}}\noutput: \"{{{{ steps.get.output.status }}}}\"\n", srv.url("/echo")),
    )
    .unwrap();
    let db = dir.join("runs.db");
    let (p, s, d) = (policy.clone(), story.clone(), db.clone());
    let out = tokio::task::spawn_blocking(move || {
        warden(
            &["story", "run", s.to_str().unwrap(), "--policy", p.to_str().unwrap(), "--db", d.to_str().unwrap(), "--json", "-q"],
            &[("CLI_TEST_TOKEN", "cli-replay-secret-31")],
        )
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let run: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = run["run_id"].as_str().unwrap().to_string();
    assert_eq!(rec.count(), 1);
    drop(srv);

    let show = warden(&["runs", "show", &id, "--db", db.to_str().unwrap(), "--json"], &[]);
    let shown: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(shown["recording"], "complete", "{shown}");
    assert_eq!(shown["recordings"][0]["step"], "get");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let stored: String = conn.query_row("SELECT recording FROM recordings", [], |r| r.get(0)).unwrap();
    assert!(stored.contains("\"credential\":\"demo\"") && !stored.contains("cli-replay-secret-31"), "the name, never the value: {stored}");

    let replay = warden(&["runs", "replay", &id, "--db", db.to_str().unwrap(), "--policy", policy.to_str().unwrap()], &[]);
    assert!(replay.status.success(), "{}{}", text(&replay.stdout), text(&replay.stderr));
    assert!(text(&replay.stdout).contains("1 of 1 recorded step attempt(s) replayed identically"), "{}", text(&replay.stdout));

    // With another component in the step's place: exit 1, the divergence named.
    let other = warden(
        &[
            "runs",
            "replay",
            &id,
            "--db",
            db.to_str().unwrap(),
            "--policy",
            policy.to_str().unwrap(),
            "--step",
            "get",
            "--plugin",
            guest("probe").to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(other.status.code(), Some(1), "{}", text(&other.stdout));
    assert!(text(&other.stdout).contains("DIFFERS"), "{}", text(&other.stdout));
}

#[test]
fn tines_import_writes_stories_a_policy_and_a_report_and_says_what_it_did_not_convert() {
    let dir = tempdir("tines-import");
    let out_dir = dir.join("out");
    let export = root().join("tests/e2e/fixtures/tines/leaky.json");
    let plugins = root().join("target/wasm32-wasip2/guest");
    let args = ["tines", "import", export.to_str().unwrap(), "--out", out_dir.to_str().unwrap(), "--plugins", plugins.to_str().unwrap()];
    let out = warden(&args, &[]);
    // Something was refused or unsupported: exit 2, files written all the same.
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("refused     leaky-credentials / Post the token"), "{stdout}");
    assert!(stdout.contains("credential jira_password: set $WARDEN_CREDENTIAL_JIRA_PASSWORD"), "{stdout}");
    let report = std::fs::read_to_string(out_dir.join("import-report.txt")).unwrap();
    assert!(report.contains("unsupported leaky-credentials / Read the phishing inbox"), "{report}");
    // What it wrote checks as a story and a policy do.
    let check = warden(&["story", "check", out_dir.join("stories").to_str().unwrap(), "--policy", out_dir.join("warden.toml").to_str().unwrap()], &[]);
    assert!(check.status.success(), "{}{}", text(&check.stdout), text(&check.stderr));
    assert!(text(&check.stdout).contains("ok leaky-credentials"), "{}", text(&check.stdout));
    // A second import into the same folder does not overwrite without --force.
    let again = warden(&args, &[]);
    assert_eq!(again.status.code(), Some(1));
    assert!(text(&again.stderr).contains("--force"), "{}", text(&again.stderr));
    // Not an export at all: one line naming the file.
    let bad = dir.join("bad.json");
    std::fs::write(&bad, "[1, 2]").unwrap();
    let out = warden(&["tines", "import", bad.to_str().unwrap(), "--out", dir.join("o2").to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("bad.json: line 1: not a Tines story export"), "{}", text(&out.stderr));
}

#[test]
fn tines_run_imports_in_memory_and_runs_and_refuses_what_it_could_not_convert() {
    let dir = tempdir("tines-run");
    let export = root().join("tests/e2e/fixtures/tines/dedupe-across-runs.json");
    let db = dir.join("runs.db");
    let args = |id: &str| {
        vec![
            "tines".to_string(),
            "run".into(),
            export.display().to_string(),
            "--input".into(),
            format!(r#"{{"id": "{id}"}}"#),
            "--db".into(),
            db.display().to_string(),
            "-q".into(),
        ]
    };
    let run = |id: &str| {
        let a = args(id);
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        warden(&refs, &[])
    };
    let out = run("A-9");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap(), serde_json::json!({"new": "A-9"}));
    // The same store: the second run of the same id is a duplicate (no output).
    let out = run("A-9");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "null");
    // An export with refused agents does not run; the report says why.
    let leaky = root().join("tests/e2e/fixtures/tines/leaky.json");
    let out = warden(&["tines", "run", leaky.to_str().unwrap(), "--db", db.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("refused     leaky-credentials / Post the token") && stderr.contains("not every agent was converted"), "{stderr}");
}

#[test]
fn service_tokens_are_made_shown_once_listed_without_their_secret_and_revoked() {
    let dir = tempdir("tokens");
    let db = dir.join("runs.db");
    let db = db.to_str().unwrap();
    let out = warden(&["tokens", "create", "ci-bot", "--team", "soc", "--role", "operator", "--db", db], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let secret = text(&out.stdout).trim().to_string();
    assert!(secret.starts_with("wdn_") && secret.len() == 68, "{secret}");
    assert!(text(&out.stderr).contains("operator of team soc; shown once"), "{}", text(&out.stderr));
    // The store keeps its digest: the secret printed is the one it accepts.
    let store = warden::store::open(std::path::Path::new(db)).unwrap();
    let found = store.tokens().unwrap().use_token(&warden::store::service_token_digest(&secret), 1).unwrap().expect("the printed token is the stored one");
    assert_eq!((found.name.as_str(), found.team.as_deref(), found.role.as_str()), ("ci-bot", Some("soc"), "operator"));
    drop(store);

    let out = warden(&["tokens", "create", "ci-bot", "--all-teams", "--role", "viewer", "--db", db], &[]);
    assert!(!out.status.success() && text(&out.stderr).contains("a token named `ci-bot` exists"), "{}", text(&out.stderr));
    let out = warden(&["tokens", "create", "x", "--team", "soc", "--role", "owner", "--db", db], &[]);
    assert!(text(&out.stderr).contains("--role: `owner` is not a role; a role is one of viewer, approver, operator, admin"), "{}", text(&out.stderr));
    let out = warden(&["tokens", "create", "bad name", "--team", "soc", "--role", "viewer", "--db", db], &[]);
    assert!(text(&out.stderr).contains("token name `bad name` must be"), "{}", text(&out.stderr));

    let out = warden(&["tokens", "list", "--db", db], &[]);
    let listed = text(&out.stdout);
    assert!(listed.contains("ci-bot") && listed.contains("operator") && !listed.contains(&secret[4..]), "{listed}");
    let out = warden(&["tokens", "revoke", "ci-bot", "--db", db], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = warden(&["tokens", "revoke", "ci-bot", "--db", db], &[]);
    assert_eq!(out.status.code(), Some(1), "revoked once");
    let out = warden(&["tokens", "list", "--json", "--db", db], &[]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(list[0]["revoked_ms"].is_u64(), "{list}");
    let store = warden::store::open(std::path::Path::new(db)).unwrap();
    assert!(store.tokens().unwrap().use_token(&warden::store::service_token_digest(&secret), 2).unwrap().is_none(), "a revoked token is no one");
    drop(store);
    // What was done to tokens is in the audit log of people, as JSON lines.
    let out = warden(&["audit-log", "tail", "--action", "token.create", "--db", db], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<serde_json::Value> = text(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let outcomes: Vec<(&str, &str)> = lines.iter().map(|e| (e["target"].as_str().unwrap(), e["outcome"].as_str().unwrap())).collect();
    assert_eq!(outcomes, vec![("ci-bot", "ok"), ("ci-bot", "refused")], "{lines:?}");
    assert!(lines[0]["actor"].as_str().unwrap().starts_with("cli:") && lines[0]["detail"] == "role operator");
    let out = warden(&["audit-log", "tail", "--action", "token.revoke", "--db", db], &[]);
    assert_eq!(text(&out.stdout).lines().count(), 2, "revoked, then refused: {}", text(&out.stdout));
    assert!(!text(&out.stdout).contains(&secret[4..]));
}
