//! Human approvals, end to end against `warden serve`: a run parks at an
//! approval step holding nothing but rows, a person decides through a link
//! or the API (or nobody does, and the timeout decides), and the run resumes
//! with the decision — across restarts too.

use crate::common;

use common::node::{Server, SECRET};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

const ADMIN: &str = "admin-token-for-approval-tests";
const SOC: &str = "soc-token-for-approval-tests";
const IR: &str = "ir-token-for-approval-tests";

/// Links first (a step before the approval carries them, as an email would),
/// then the question, then a step that branches on the answer.
const CONTAIN: &str = r#"
name: contain
team: soc
input: {type: object, required: [host]}
steps:
  - id: links
    transform:
      set:
        isolate: "{{ approval.confirm.links.isolate }}"
        ignore: "{{ approval.confirm.links.ignore }}"
        lead_isolate: "{{ approval.confirm.links_for['lead@corp.example'].isolate if 'lead@corp.example' in approval.confirm.links_for else none }}"
  - id: confirm
    approval:
      title: "Isolate <b>{{ input.host }}</b>?"
      details: {host: "{{ input.host }}", seen: 3}
      choices: [isolate, ignore]
      approvers: "{{ input.approvers | default([]) }}"
      timeout: "{{TIMEOUT}}"
      on_timeout: "{{ON_TIMEOUT}}"
  - id: act
    if: "{{ steps.confirm.output.choice == 'isolate' }}"
    transform: {set: {isolated: "{{ input.host }}"}}
output:
  decision: "{{ steps.confirm.output }}"
  isolated: "{{ steps.act.output.isolated if steps.act.status == 'succeeded' else none }}"
"#;

/// The same question asked inside a sub-story.
const PARENT: &str = r#"
name: parent
team: soc
input: {type: object, required: [host]}
steps:
  - id: before
    transform: {set: {n: 1}}
  - id: ask
    story: contain
    with: {host: "{{ input.host }}"}
  - id: after
    transform: {set: {child_said: "{{ steps.ask.output.decision.choice }}"}}
"#;

fn setup(name: &str, timeout: &str, on_timeout: &str) -> PathBuf {
    let dir = common::tempdir(&format!("approvals-{name}"));
    std::fs::create_dir_all(dir.join("stories")).unwrap();
    std::fs::write(dir.join("stories/contain.yaml"), CONTAIN.replace("{{TIMEOUT}}", timeout).replace("{{ON_TIMEOUT}}", on_timeout)).unwrap();
    std::fs::write(dir.join("stories/parent.yaml"), PARENT).unwrap();
    std::fs::write(
        dir.join("warden.toml"),
        r#"
[server]
api_token_env = "ADMIN_TOKEN"

[teams.soc]
stories = ["stories"]
api_token_env = "SOC_TOKEN"

[teams.ir]
stories = []
api_token_env = "IR_TOKEN"

[triggers.contain]
secret_env = "WEBHOOK_SECRET"

[triggers.parent]
secret_env = "WEBHOOK_SECRET"
"#,
    )
    .unwrap();
    dir
}

fn start(dir: &Path) -> Server {
    // SAFETY: set before any server starts; every test sets the same values.
    unsafe {
        std::env::set_var("ADMIN_TOKEN", ADMIN);
        std::env::set_var("SOC_TOKEN", SOC);
        std::env::set_var("IR_TOKEN", IR);
    }
    Server::start(dir, 4)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

async fn api(base: &str, token: &str, path: &str) -> Value {
    let resp = client().get(format!("{base}{path}")).bearer_auth(token).send().await.unwrap();
    serde_json::from_str(&resp.text().await.unwrap()).unwrap()
}

async fn submit(srv: &Server, story: &str, input: Value) -> String {
    let body = input.to_string();
    let sig = warden::server::sign(SECRET.as_bytes(), story, body.as_bytes());
    let resp = client()
        .post(format!("{}/webhooks/{story}", srv.base))
        .header("content-type", "application/json")
        .header("x-warden-signature", sig)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let body: Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    body["run_id"].as_str().unwrap().to_string()
}

/// Polls the run until its state is `state` (bounded), answering its detail.
async fn until(srv: &Server, run: &str, state: &str) -> Value {
    let mut last = Value::Null;
    for _ in 0..300 {
        last = api(&srv.base, ADMIN, &format!("/api/runs/{run}")).await;
        if last["state"] == state {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("run {run} never became {state}: {last:#}");
}

fn token_of(link: &str) -> String {
    link.rsplit('/').next().unwrap().to_string()
}

/// The page a link shows (GET) or the answer to confirming it (POST).
async fn open(srv: &Server, link: &str, confirm: Option<&str>) -> (u16, String) {
    let url = format!("{}/approvals/{}", srv.base, token_of(link));
    let resp = match confirm {
        None => client().get(url).send().await.unwrap(),
        Some(comment) => {
            client().post(url).header("content-type", "application/x-www-form-urlencoded").body(format!("comment={comment}")).send().await.unwrap()
        }
    };
    let code = resp.status().as_u16();
    (code, resp.text().await.unwrap())
}

async fn decide_api(srv: &Server, token: &str, run: &str, step: &str, body: Value) -> (u16, Value) {
    let resp = client()
        .post(format!("{}/api/approvals/{run}/{step}", srv.base))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let code = resp.status().as_u16();
    (code, serde_json::from_str(&resp.text().await.unwrap()).unwrap_or(Value::Null))
}

/// The links the `links` step carried: derived as warden derives them, since
/// the run record (which the whole team reads) keeps their shape, not their tokens.
fn links_of(srv: &Server, detail: &Value) -> Value {
    let stored = detail["steps"].as_array().unwrap().iter().find(|s| s["step_id"] == "links").unwrap()["output"].clone();
    let run = detail["id"].as_str().unwrap();
    let store = warden::store::open(&srv.dir.join("runs.db")).unwrap();
    // The server's link key: its secret (kept beside the store) over the store's salt.
    let secret = warden::approval::secret_beside(&srv.dir.join("runs.db")).unwrap();
    let key = warden::approval::link_key(&secret, &store.approvals().unwrap().key_salt().unwrap());
    let token = |choice: &str, to: &str| warden::approval::token(&key, run, "confirm", choice, to);
    // The record (a transform's output here) holds the link with its token sealed, opened only with the key, for this run.
    let sealed = stored["isolate"].as_str().unwrap().strip_prefix(&format!("{}/approvals/", srv.base)).unwrap_or_else(|| panic!("{stored}")).to_string();
    assert!(sealed.starts_with(warden::approval::PLACEHOLDER_PREFIX), "{stored}");
    assert_eq!(warden::approval::open_placeholder(&key, run, &sealed), Some(token("isolate", "")));
    let link = |choice: &str, to: &str| format!("{}/approvals/{}", srv.base, token(choice, to));
    let lead = if stored["lead_isolate"].is_null() { Value::Null } else { json!(link("isolate", "lead@corp.example")) };
    json!({"isolate": link("isolate", ""), "ignore": link("ignore", ""), "lead_isolate": lead})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_waits_for_a_link_and_continues_with_the_decision() {
    let dir = setup("link", "1h", "ignore");
    let srv = start(&dir);
    let run = submit(&srv, "contain", json!({"host": "WS-ALICE-01"})).await;
    let waiting = until(&srv, &run, "waiting").await;
    let links = links_of(&srv, &waiting);
    assert!(links["isolate"].as_str().unwrap().starts_with(&format!("{}/approvals/", srv.base)), "{links}");
    // The record's copy of a link decides nothing, and says so.
    let recorded = waiting["steps"].as_array().unwrap().iter().find(|s| s["step_id"] == "links").unwrap()["output"]["isolate"].as_str().unwrap().to_string();
    let (code, page) = open(&srv, &recorded, Some("from+the+record")).await;
    assert_eq!(code, 404, "{page}");
    assert!(page.contains("it decides nothing"), "{page}");
    let pending = api(&srv.base, ADMIN, "/api/approvals").await;
    assert_eq!(pending["approvals"].as_array().unwrap().len(), 1, "{pending}");
    assert_eq!(pending["approvals"][0]["title"], "Isolate <b>WS-ALICE-01</b>?");
    assert_eq!(pending["approvals"][0]["state"], "pending");

    // A GET (a mail gateway scanning the link) shows the question, escaped, and decides nothing.
    let (code, page) = open(&srv, links["isolate"].as_str().unwrap(), None).await;
    assert_eq!(code, 200, "{page}");
    assert!(page.contains("Isolate &lt;b&gt;WS-ALICE-01&lt;"), "the title is not escaped: {page}");
    assert!(!page.contains("<b>WS-ALICE-01</b>"), "{page}");
    assert!(page.contains("Confirm: isolate"), "{page}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(api(&srv.base, ADMIN, &format!("/api/runs/{run}")).await["state"], "waiting", "a GET decided");
    assert_eq!(api(&srv.base, ADMIN, "/api/approvals").await["approvals"][0]["state"], "pending");

    // POST decides, once.
    let (code, page) = open(&srv, links["isolate"].as_str().unwrap(), Some("go+ahead")).await;
    assert_eq!(code, 200, "{page}");
    let done = until(&srv, &run, "succeeded").await;
    assert_eq!(done["output"]["decision"]["choice"], "isolate");
    assert_eq!(done["output"]["decision"]["decided_by"], "link holder");
    assert_eq!(done["output"]["decision"]["comment"], "go ahead");
    assert_eq!(done["output"]["isolated"], "WS-ALICE-01");
    // Audited: who, when, from where, which choice.
    let audit: Vec<&Value> = done["audit"].as_array().unwrap().iter().filter(|a| a["kind"] == "approval").collect();
    assert_eq!(audit.len(), 1, "{:#}", done["audit"]);
    assert_eq!((audit[0]["choice"].as_str(), audit[0]["via"].as_str(), audit[0]["from"].as_str()), (Some("isolate"), Some("link"), Some("127.0.0.1")));
    assert!(audit[0]["at_ms"].as_u64().unwrap() > 0);

    // Every link of a decided approval is over: 410 saying what happened, GET or POST.
    for (link, confirm) in [(&links["ignore"], Some("late")), (&links["isolate"], None), (&links["isolate"], Some("again"))] {
        let (code, page) = open(&srv, link.as_str().unwrap(), confirm).await;
        assert_eq!(code, 410, "{page}");
        assert!(page.contains("decided `isolate` by link holder"), "{page}");
    }
    // Unknown and malformed tokens.
    // The real token with its last character changed (to one that still decodes).
    let real = token_of(links["ignore"].as_str().unwrap());
    let forged = format!("{}{}", &real[..42], if real.ends_with('A') { 'E' } else { 'A' });
    for bad in [forged.as_str(), "short", "../../etc/passwd", "a%20b"] {
        let (code, _) = open(&srv, &format!("x/{bad}"), Some("x")).await;
        assert_eq!(code, 404, "{bad}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvers_restrict_who_decides_by_link_and_by_api_token() {
    let dir = setup("who", "1h", "fail");
    let srv = start(&dir);
    let run = submit(&srv, "contain", json!({"host": "h1", "approvers": ["lead@corp.example", "team:ir"]})).await;
    let links = links_of(&srv, &until(&srv, &run, "waiting").await);

    // A link addressed to nobody decides nothing when approvers are named (and says so on GET).
    let (code, page) = open(&srv, links["isolate"].as_str().unwrap(), None).await;
    assert_eq!(code, 403, "{page}");
    assert!(page.contains("each of them has links of their own"), "{page}");
    let (code, page) = open(&srv, links["isolate"].as_str().unwrap(), Some("x")).await;
    assert_eq!(code, 403, "{page}");
    assert!(page.contains("restricted to lead@corp.example, team:ir"), "{page}");
    // The story's own team is not listed: its token may not decide either.
    let (code, body) = decide_api(&srv, SOC, &run, "confirm", json!({"choice": "ignore"})).await;
    assert_eq!(code, 403, "{body}");
    // Not a choice.
    let (code, body) = decide_api(&srv, IR, &run, "confirm", json!({"choice": "nuke"})).await;
    assert_eq!(code, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("choose one of isolate, ignore"), "{body}");
    assert_eq!(api(&srv.base, ADMIN, &format!("/api/runs/{run}")).await["state"], "waiting");
    // A listed team's token decides; the lead's own link then finds it over.
    let (code, body) = decide_api(&srv, IR, &run, "confirm", json!({"choice": "ignore", "comment": "false positive"})).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["approval"]["decided_by"], "team:ir");
    let done = until(&srv, &run, "succeeded").await;
    assert_eq!(done["output"]["decision"]["choice"], "ignore");
    assert_eq!(done["output"]["isolated"], Value::Null);
    let (code, _) = open(&srv, links["lead_isolate"].as_str().unwrap(), Some("x")).await;
    assert_eq!(code, 410);
    let (code, body) = decide_api(&srv, IR, &run, "confirm", json!({"choice": "isolate"})).await;
    assert_eq!(code, 410, "{body}");

    // The approver's own link decides as that approver.
    let run = submit(&srv, "contain", json!({"host": "h2", "approvers": ["lead@corp.example"]})).await;
    let links = links_of(&srv, &until(&srv, &run, "waiting").await);
    let (code, page) = open(&srv, links["lead_isolate"].as_str().unwrap(), Some("")).await;
    assert_eq!(code, 200, "{page}");
    let done = until(&srv, &run, "succeeded").await;
    assert_eq!(done["output"]["decision"]["decided_by"], "lead@corp.example");
    assert_eq!(done["output"]["isolated"], "h2");

    // A team sees only its own approvals; another team's is answered as absent.
    let run = submit(&srv, "contain", json!({"host": "h3"})).await;
    until(&srv, &run, "waiting").await;
    assert_eq!(api(&srv.base, IR, "/api/approvals").await["approvals"].as_array().unwrap().len(), 0);
    assert_eq!(api(&srv.base, SOC, "/api/approvals").await["approvals"].as_array().unwrap().len(), 1);
    let (code, _) = decide_api(&srv, IR, &run, "confirm", json!({"choice": "isolate"})).await;
    assert_eq!(code, 404);
    let (code, _) = decide_api(&srv, "not-a-token", &run, "confirm", json!({"choice": "isolate"})).await;
    assert_eq!(code, 401);
    let (code, body) = decide_api(&srv, SOC, &run, "confirm", json!({"choice": "isolate"})).await;
    assert_eq!((code, body["approval"]["decided_by"].as_str()), (200, Some("team:soc")));
    until(&srv, &run, "succeeded").await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_chooses_on_timeout_or_fails_the_step() {
    let dir = setup("timeout", "1s", "ignore");
    let srv = start(&dir);
    let run = submit(&srv, "contain", json!({"host": "h"})).await;
    let links = links_of(&srv, &until(&srv, &run, "waiting").await);
    let done = until(&srv, &run, "succeeded").await;
    assert_eq!(done["output"]["decision"]["choice"], "ignore");
    assert_eq!(done["output"]["decision"]["decided_by"], "timeout");
    let (code, page) = open(&srv, links["isolate"].as_str().unwrap(), Some("late")).await;
    assert_eq!(code, 410, "{page}");
    assert!(page.contains("the timeout chose `ignore`"), "{page}");
    drop(srv);

    let dir = setup("timeout-fail", "1s", "fail");
    let srv = start(&dir);
    let run = submit(&srv, "contain", json!({"host": "h"})).await;
    let links = links_of(&srv, &until(&srv, &run, "waiting").await);
    let failed = until(&srv, &run, "failed").await;
    assert_eq!(failed["failed_step"], "confirm");
    assert!(failed["error"].as_str().unwrap().contains("no decision within 1s"), "{failed}");
    let (code, page) = open(&srv, links["ignore"].as_str().unwrap(), None).await;
    assert_eq!(code, 410);
    assert!(page.contains("the step failed"), "{page}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_run_survives_a_restart_and_a_decision_made_while_the_server_was_down() {
    let dir = setup("restart", "1h", "fail");
    let mut srv = start(&dir);
    let first = submit(&srv, "contain", json!({"host": "a"})).await;
    let second = submit(&srv, "parent", json!({"host": "b"})).await;
    let links = links_of(&srv, &until(&srv, &first, "waiting").await);
    let parent = until(&srv, &second, "waiting").await;
    let child = parent["children"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(parent["children"][0]["state"], "waiting");
    srv.kill();

    // While no server runs, the operator decides the sub-story's approval from the command line.
    let db = dir.join("runs.db");
    let out = common::warden(&["approvals", "list", "--db", db.to_str().unwrap()], &[]);
    let listed = common::text(&out.stdout);
    assert!(out.status.success() && listed.contains(&first) && listed.contains(&child), "{listed}{}", common::text(&out.stderr));
    let out = common::warden(&["approvals", "decide", &child, "confirm", "isolate", "--comment", "from the console", "--db", db.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    let out = common::warden(&["approvals", "decide", &child, "confirm", "ignore", "--db", db.to_str().unwrap()], &[]);
    assert!(!out.status.success() && common::text(&out.stderr).contains("is over: decided `isolate` by cli:"), "{}", common::text(&out.stderr));

    let srv = start(&dir);
    // The decided sub-story resumes under its parent, which completes with its answer.
    let done = until(&srv, &second, "succeeded").await;
    let after = done["steps"].as_array().unwrap().iter().find(|s| s["step_id"] == "after").unwrap()["output"].clone();
    assert_eq!(after, json!({"child_said": "isolate"}));
    let child_run = api(&srv.base, ADMIN, &format!("/api/runs/{child}")).await;
    assert_eq!(child_run["state"], "succeeded");
    assert_eq!(child_run["output"]["decision"]["comment"], "from the console");
    // The other run still waits, and its links (derived before the restart) still work.
    assert_eq!(api(&srv.base, ADMIN, &format!("/api/runs/{first}")).await["state"], "waiting");
    let (code, page) = open(&srv, links["ignore"].as_str().unwrap(), Some("after+restart")).await;
    assert_eq!(code, 200, "{page}");
    let done = until(&srv, &first, "succeeded").await;
    assert_eq!(done["output"]["decision"]["choice"], "ignore");
    let _ = std::fs::remove_dir_all(&dir);
}
