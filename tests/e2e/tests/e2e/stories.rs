//! Stories end to end: every step kind and failure path through the real
//! engine, runtime and run store, and the threat-hunt example against the
//! simulators.

use serde_json::{json, Value};
use std::path::Path;
use warden::story::engine::{Quiet, SubmitError};
use warden::story::Library;
use warden_e2e::{engine, policy, SmtpServer, StoryDir};
use warden_sim::{jira, origin, sentinelone};

fn probe_policy(port: u16) -> warden::Policy {
    policy(&format!("[plugins.probe]\npath = \"{{probe}}\"\n[grants.probe]\nallow = [\"GET http://127.0.0.1:{port}/*\"]\nlimits = {{ wall_ms = 20000 }}\n"))
}

async fn run(e: &warden::story::engine::StoryRunner, story: &str, input: Value) -> warden::story::engine::RunResult {
    e.run(story, input, "test", &Quiet).await.expect("submit")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_false_condition_skips_the_step() {
    let dir = StoryDir::new(&[(
        "t.yaml",
        r#"
name: t
steps:
  - id: a
    transform: {set: {n: 0}}
  - id: b
    if: "{{ steps.a.output.n > 0 }}"
    action: probe
    with: {op: echo}
output:
  b: "{{ steps.b.status }}"
"#,
    )]);
    let e = engine(probe_policy(1), &dir.0);
    let r = run(&e, "t", json!({})).await;
    assert_eq!(r.state, "succeeded", "{:?}", r.error);
    assert_eq!(r.output, Some(json!({"b": "skipped"})));
    let d = e.store.get_run(&r.run_id).unwrap().unwrap();
    assert_eq!(d.steps.iter().find(|s| s.step_id == "b").unwrap().state, "skipped");
    assert!(d.audit.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_until_success_and_records_the_attempts() {
    let (srv, _rec, counters) = origin::spawn_with_counters().await.unwrap();
    let dir = StoryDir::new(&[(
        "t.yaml",
        &format!(
            r#"
name: t
steps:
  - id: call
    action: probe
    retry: {{attempts: 3, backoff_ms: 10, max_backoff_ms: 50, on: [upstream]}}
    with: {{op: call, url: "http://127.0.0.1:{}/flaky?key=ok&fail=2"}}
"#,
            srv.port()
        ),
    )]);
    let e = engine(probe_policy(srv.port()), &dir.0);
    let r = run(&e, "t", json!({})).await;
    assert_eq!(r.state, "succeeded", "{:?}", r.error);
    assert_eq!(r.output, Some(json!({"ok": true, "calls": 3})));
    assert_eq!(counters.flaky_calls("ok"), 3);
    let d = e.store.get_run(&r.run_id).unwrap().unwrap();
    assert_eq!(d.steps[0].attempts, 3);
    assert_eq!(d.audit.len(), 3, "one audit record per attempt");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_retries_fail_the_run_and_the_record_is_complete() {
    let (srv, _rec, counters) = origin::spawn_with_counters().await.unwrap();
    let dir = StoryDir::new(&[(
        "t.yaml",
        &format!(
            r#"
name: t
steps:
  - id: call
    action: probe
    retry: {{attempts: 2, backoff_ms: 10, max_backoff_ms: 20}}
    with: {{op: call, url: "http://127.0.0.1:{}/flaky?key=never&fail=99"}}
  - id: never
    transform: {{set: {{x: 1}}}}
"#,
            srv.port()
        ),
    )]);
    let e = engine(probe_policy(srv.port()), &dir.0);
    let r = run(&e, "t", json!({})).await;
    assert_eq!(r.state, "failed");
    assert_eq!(r.failed_step.as_deref(), Some("call"));
    let err = r.error.unwrap();
    assert_eq!(err.kind, "upstream");
    assert_eq!(counters.flaky_calls("never"), 2);

    let d = e.store.get_run(&r.run_id).unwrap().unwrap();
    assert_eq!(d.run.state, "failed");
    assert_eq!(d.run.failed_step.as_deref(), Some("call"));
    assert!(d.run.error.as_deref().unwrap().starts_with("step call: upstream error (HTTP 503)"), "{:?}", d.run.error);
    let step = &d.steps[0];
    assert_eq!((step.state.as_str(), step.attempts), ("failed", 2));
    assert_eq!(step.error.as_ref().unwrap()["kind"], "upstream");
    assert!(step.input.as_ref().unwrap()["url"].as_str().unwrap().contains("/flaky"));
    assert_eq!(d.audit.len(), 2);
    assert!(d.steps.iter().all(|s| s.step_id != "never"), "a step after the failure ran");
    assert!(d.run.finished_ms.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_listed_error_kinds_are_retried() {
    let dir = StoryDir::new(&[(
        "t.yaml",
        r#"
name: t
steps:
  - id: bad
    action: probe
    retry: {attempts: 5, backoff_ms: 10, on: [upstream]}
    with: {op: fail, message: not retryable}
"#,
    )]);
    let e = engine(probe_policy(1), &dir.0);
    let r = run(&e, "t", json!({})).await;
    assert_eq!(r.error.as_ref().unwrap().kind, "failed");
    assert_eq!(e.store.get_run(&r.run_id).unwrap().unwrap().steps[0].attempts, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_error_continue_and_fallback() {
    let dir = StoryDir::new(&[(
        "t.yaml",
        r#"
name: t
steps:
  - id: bad
    action: probe
    with: {op: fail, message: boom}
    on_error: continue
  - id: bad2
    action: probe
    with: {op: fail, message: bang}
    on_error: recover
  - id: after
    transform:
      set:
        saw: "{{ steps.bad.status }}"
        err: "{{ steps.bad.error.message }}"
        rec: "{{ steps.bad2.output.note }}"
        st: "{{ steps.bad2.status }}"
fallbacks:
  - id: recover
    transform:
      set: {note: "recovered from {{ error.step }}: {{ error.message }}"}
"#,
    )]);
    let e = engine(probe_policy(1), &dir.0);
    let r = run(&e, "t", json!({})).await;
    assert_eq!(r.state, "succeeded", "{:?}", r.error);
    assert_eq!(r.output, Some(json!({"saw": "failed", "err": "failed: boom", "rec": "recovered from bad2: failed: bang", "st": "recovered"})));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_timeout_stops_the_step() {
    let dir = StoryDir::new(&[(
        "t.yaml",
        r#"
name: t
steps:
  - id: slow
    action: probe
    timeout_ms: 200
    with: {op: sleep, ms: 10000}
"#,
    )]);
    let e = engine(probe_policy(1), &dir.0);
    let r = run(&e, "t", json!({})).await;
    let err = r.error.unwrap();
    assert_eq!(err.kind, "timeout");
    assert_eq!(err.message, "no result within timeout_ms = 200");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undefined_variable_names_the_step_and_the_expression() {
    let dir = StoryDir::new(&[(
        "t.yaml",
        r#"
name: t
steps:
  - id: a
    transform: {set: {n: 1}}
  - id: b
    action: probe
    with: {op: echo, x: "{{ steps.a.output.nope }}"}
"#,
    )]);
    let e = engine(probe_policy(1), &dir.0);
    let r = run(&e, "t", json!({})).await;
    assert_eq!(r.failed_step.as_deref(), Some("b"));
    let err = r.error.unwrap();
    assert_eq!(err.kind, "template");
    assert!(err.message.contains("`{{ steps.a.output.nope }}`") && err.message.contains("undefined"), "{}", err.message);
    let d = e.store.get_run(&r.run_id).unwrap().unwrap();
    assert!(d.run.error.unwrap().starts_with("step b: with: `{{ steps.a.output.nope }}`"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_sub_story_fails_the_caller_and_both_runs_are_recorded() {
    let dir = StoryDir::new(&[
        (
            "parent.yaml",
            r#"
name: parent
steps:
  - id: call
    story: child
    with: {what: kaboom}
"#,
        ),
        (
            "child.yaml",
            r#"
name: child
input: {type: object, required: [what]}
steps:
  - id: boom
    action: probe
    with: {op: fail, message: "{{ input.what }}"}
"#,
        ),
    ]);
    let e = engine(probe_policy(1), &dir.0);
    let r = run(&e, "parent", json!({})).await;
    assert_eq!(r.state, "failed");
    let err = r.error.unwrap();
    assert_eq!(err.kind, "story");
    assert!(err.message.starts_with("sub-story child (run r") && err.message.ends_with("failed at boom: failed: kaboom"), "{}", err.message);
    let d = e.store.get_run(&r.run_id).unwrap().unwrap();
    assert_eq!(d.children.len(), 1);
    assert_eq!(d.children[0].state, "failed");
    let child = e.store.get_run(&d.children[0].id).unwrap().unwrap();
    assert_eq!(child.run.parent_run.as_deref(), Some(r.run_id.as_str()));
    assert_eq!(child.input, json!({"what": "kaboom"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn for_each_keeps_item_order_within_its_concurrency_bound() {
    let (srv, _rec, counters) = origin::spawn_with_counters().await.unwrap();
    let dir = StoryDir::new(&[(
        "t.yaml",
        &format!(
            r#"
name: t
input: {{type: object, properties: {{tags: {{type: array}}}}}}
steps:
  - id: each
    for_each: "{{{{ input.tags }}}}"
    concurrency: 2
    action: probe
    with:
      op: call
      url: "http://127.0.0.1:{}/hold?key=fe&ms={{{{ 250 - index * 40 }}}}&tag={{{{ item }}}}"
output: "{{{{ steps.each.output | map(attribute='tag') | list }}}}"
"#,
            srv.port()
        ),
    )]);
    let e = engine(probe_policy(srv.port()), &dir.0);
    let tags = json!(["a", "b", "c", "d", "e", "f"]);
    let r = run(&e, "t", json!({"tags": tags})).await;
    assert_eq!(r.state, "succeeded", "{:?}", r.error);
    assert_eq!(r.output, Some(tags));
    assert_eq!(counters.max_in_flight("fe"), 2, "for_each ran more (or fewer) items at once than its concurrency");
    let d = e.store.get_run(&r.run_id).unwrap().unwrap();
    assert_eq!(d.steps.iter().filter(|s| s.item.is_some()).count(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_is_validated_before_a_run_exists() {
    let dir = StoryDir::new(&[(
        "t.yaml",
        r#"
name: t
input: {type: object, required: [ioc], properties: {ioc: {type: string}}}
steps:
  - id: a
    transform: {set: {x: "{{ input.ioc }}"}}
"#,
    )]);
    let e = engine(probe_policy(1), &dir.0);
    let err = e.run("t", json!({"ioc": 5}), "test", &Quiet).await.unwrap_err();
    assert_eq!(err, SubmitError::InvalidInput("ioc must be string (got number)".into()));
    assert!(e.store.list_runs(None, None, true, 10, 0).unwrap().is_empty());
}

fn load_errors(files: &[(&str, &str)]) -> Vec<String> {
    let dir = StoryDir::new(files);
    let p = probe_policy(1);
    match Library::load_dir(&dir.0) {
        Err(e) => e.0.iter().map(|e| format!("{}:{}: {}", Path::new(&e.file).file_name().unwrap().to_string_lossy(), e.line, e.message)).collect(),
        Ok(lib) => match lib.check(&p) {
            Err(e) => e.0.iter().map(|e| format!("{}:{}: {}", Path::new(&e.file).file_name().unwrap().to_string_lossy(), e.line, e.message)).collect(),
            Ok(()) => vec![],
        },
    }
}

#[test]
fn stories_are_validated_at_load_with_file_and_line() {
    let e = load_errors(&[("a.yaml", "name: a\nsteps:\n  - id: x\n    action: nope\n")]);
    assert!(e[0].starts_with("a.yaml:3: step `x`: unknown plugin `nope`"), "{e:?}");

    let e = load_errors(&[("a.yaml", "name: a\nsteps:\n  - id: x\n    story: ghost\n")]);
    assert!(e[0].starts_with("a.yaml:3: step `x`: unknown story `ghost`"), "{e:?}");

    let e = load_errors(&[("a.yaml", "name: a\nsteps:\n  - id: x\n    transform: {set: {}}\n  - id: x\n    transform: {set: {}}\n")]);
    assert_eq!(e, vec!["a.yaml:5: duplicate step id `x`; ids must be unique in a story"]);

    let e =
        load_errors(&[("a.yaml", "name: a\nsteps:\n  - id: x\n    transform: {set: {v: \"{{ steps.y.output }}\"}}\n  - id: y\n    transform: {set: {}}\n")]);
    assert!(e[0].starts_with("a.yaml:3: step `x`: `{{ steps.y.output }}` reads steps.y, which runs later"), "{e:?}");

    let e = load_errors(&[("a.yaml", "name: a\nsteps:\n  - id: x\n    transform: {set: {v: \"{{ steps.zz.output }}\"}}\n")]);
    assert!(e[0].contains("there is no step `zz`"), "{e:?}");

    let e = load_errors(&[("a.yaml", "name: a\nsteps:\n  - id: x\n    transform: {set: {v: \"{{ input.a | \"}}\n")]);
    assert!(e[0].starts_with("a.yaml:3: step `x`: bad template"), "{e:?}");

    let e = load_errors(&[("a.yaml", "name: a\nsteps:\n  - id: x\n    transform: {set: {v: \"{{ secrets.token }}\"}}\n")]);
    assert!(e[0].contains("reads `secrets`, which is not defined here"), "{e:?}");

    let e = load_errors(&[("a.yaml", "name: a\nsteps:\n  - id: x\n    story: b\n"), ("b.yaml", "name: b\nsteps:\n  - id: y\n    story: a\n")]);
    assert!(e.iter().any(|l| l.contains("story calls form a cycle: a → b → a")), "{e:?}");

    let e = load_errors(&[
        ("a.yaml", "name: a\nteam: red\nsteps:\n  - id: x\n    story: b\n"),
        ("b.yaml", "name: b\nteam: blue\nsteps:\n  - id: y\n    transform: {set: {}}\n"),
    ]);
    assert!(e[0].contains("belongs to team blue and does not allow team red"), "{e:?}");

    let e = load_errors(&[("a.yaml", "name: a\nsteps:\n  - id: x\n    transform: {set: {}}\n    on_error: elsewhere\n")]);
    assert!(e[0].contains("on_error `elsewhere` is not fail, continue, or a fallback id"), "{e:?}");

    let e = load_errors(&[("a.yaml", "name: a\nsteps:\n  - id: x\n    actoin: probe\n")]);
    assert!(e[0].starts_with("a.yaml:4:") && e[0].contains("actoin"), "{e:?}");
}

/// The example stories and policy, with the simulators' ports swapped in.
fn example_fixture(s1: u16, jira: u16, smtp: u16) -> (StoryDir, warden::Policy) {
    let (dir, text) = warden_e2e::example_files(s1, jira, smtp, &[]);
    (dir, warden_e2e::parse_example_policy(&text))
}

/// The example stories against the simulators and a real SMTP server.
struct Example {
    s1: warden_sim::Running,
    s1_sim: std::sync::Arc<sentinelone::Sim>,
    j: warden_sim::Running,
    jira_sim: std::sync::Arc<jira::Sim>,
    smtp: SmtpServer,
    _dir: StoryDir,
    e: warden::story::engine::StoryRunner,
}

async fn example() -> Example {
    // SAFETY: the example policy reads these; every test sets the same values.
    unsafe {
        std::env::set_var("S1_API_TOKEN", "s1-demo-token");
        std::env::set_var("JIRA_API_TOKEN", "jira-demo-token");
    }
    let (s1, s1_sim) = sentinelone::spawn(sentinelone::Config { polls_before_finish: 1, ..Default::default() }).await.unwrap();
    let (j, jira_sim) = jira::spawn(jira::Config::default()).await.unwrap();
    let smtp = SmtpServer::start();
    let (dir, p) = example_fixture(s1.port(), j.port(), smtp.port);
    let e = engine(p, &dir.0);
    Example { s1, s1_sim, j, jira_sim, smtp, _dir: dir, e }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_threat_hunt_story_opens_a_ticket_and_emails_the_leads_only_when_hosts_were_seen() {
    let Example { s1, s1_sim, j, jira_sim, smtp, _dir, e } = example().await;

    let hit = run(
        &e,
        "threat-hunt",
        json!({
            "indicator": {"kind": "domain", "value": "evil.example"},
            "leads": ["soc-lead@corp.example", "ir-lead@corp.example"]
        }),
    )
    .await;
    assert_eq!(hit.state, "succeeded", "{:?}", hit.error);
    let out = hit.output.unwrap();
    assert_eq!(out["hosts_seen"], 3);
    assert_eq!(out["hosts"], json!(["WS-ALICE-01", "WS-BOB-07", "SRV-DB-01"]));
    assert_eq!(out["ticket"], "SEC-1");
    assert_eq!(out["ticket_status"], "To Do");
    let url = format!("http://{}/browse/SEC-1", j.addr);
    assert_eq!(out["ticket_url"], url.as_str());
    assert_eq!(out["emailed"], json!(["soc-lead@corp.example", "ir-lead@corp.example"]));

    let issue = jira_sim.issue("SEC-1").unwrap();
    assert_eq!(issue.fields["summary"], "IOC evil.example seen on 3 host(s)");
    let description = issue.fields["description"].as_str().unwrap();
    assert!(description.contains("- WS-ALICE-01 (windows, 10.20.1.15, site HQ): 5 event(s)"), "{description}");
    assert!(issue.comments[0]["body"].as_str().unwrap().contains(&hit.run_id));

    let mail = smtp.messages();
    assert_eq!(mail.len(), 1);
    assert_eq!(mail[0]["subject"], "[warden] evil.example seen on 3 host(s): SEC-1");
    assert!(mail[0]["html"].as_str().unwrap().contains(&format!("<a href=\"{url}\">")));
    assert_eq!(s1_sim.poll_rate_violations(), 0);

    let miss = run(
        &e,
        "threat-hunt",
        json!({
            "indicator": {"kind": "domain", "value": "benign.example"},
            "leads": ["soc-lead@corp.example"]
        }),
    )
    .await;
    assert_eq!(miss.state, "succeeded", "{:?}", miss.error);
    let out = miss.output.unwrap();
    assert_eq!((out["hosts_seen"].clone(), out["ticket"].clone()), (json!(0), Value::Null));
    assert_eq!(jira_sim.issue_count(), 1, "no hits must not open a ticket");
    assert_eq!(smtp.messages().len(), 1, "no hits must not send email");
    let d = e.store.get_run(&miss.run_id).unwrap().unwrap();
    let states: Vec<(&str, &str)> = d.steps.iter().map(|s| (s.step_id.as_str(), s.state.as_str())).collect();
    assert_eq!(
        states,
        vec![
            ("hunt", "succeeded"),
            ("verify", "succeeded"),
            ("findings", "succeeded"),
            ("ticket", "skipped"),
            ("notify", "skipped"),
            ("ask", "skipped"),
            ("contain", "skipped"),
            ("isolate", "skipped"),
            ("record_decision", "skipped")
        ]
    );
    // Recorded by default: with the simulators gone (and the SMTP server checked for new mail), every
    // action step of the run and of its sub-stories replays to the same output.
    let (issues, mails) = (jira_sim.issue_count(), smtp.messages().len());
    let recordings = e.store.recordings(&hit.run_id).unwrap();
    assert_eq!(recordings.iter().map(|r| r.step.as_str()).collect::<Vec<_>>(), vec!["notify"], "the email step of the top run");
    let rt = warden_e2e::runtime(None);
    drop((s1, j));
    let replayed = warden::story::replay::replay_run(&rt, &e.policy, e.store.as_ref(), &hit.run_id, None, None).await.unwrap();
    let steps: Vec<(&str, &str, Option<&String>)> = replayed.iter().map(|r| (r.step.as_str(), r.plugin.as_str(), r.differs.as_ref())).collect();
    assert_eq!(steps, vec![("notify", "email", None), ("hunt", "sentinelone-hunt", None), ("ticket", "jira-ticket", None)], "{replayed:?}");
    assert_eq!((jira_sim.issue_count(), smtp.messages().len()), (issues, mails), "a replay opens no ticket and sends no mail");
    // Another component in place of the hunt's: the first divergent call, named.
    let other = rt.load_file(&warden_e2e::guest("http-fetch")).unwrap();
    let replayed = warden::story::replay::replay_run(&rt, &e.policy, e.store.as_ref(), &hit.run_id, Some("hunt"), Some(&other)).await.unwrap();
    let why = replayed.iter().find_map(|r| r.differs.clone()).expect("a divergence");
    assert!(why.contains("#1"), "{why}");
}

/// The example's containment branch: each lead's email carries links of their
/// own; the run parks until one is confirmed, then isolates exactly the hosts
/// that saw the indicator and says so on the ticket. Without a decision, the
/// timeout chooses `ignore`: nothing is isolated, and the ticket says that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_threat_hunt_asks_the_leads_before_isolating_and_does_nothing_on_timeout() {
    let Example { s1: _s1, s1_sim, j: _j, jira_sim, smtp, _dir, e } = example().await;
    let input = json!({
        "indicator": {"kind": "domain", "value": "evil.example"},
        "leads": ["soc-lead@corp.example", "ir-lead@corp.example"],
        "ask_to_isolate": true
    });
    let approvals = e.store.approvals().unwrap();
    let link_of = |to: &str, choice: &str| -> String {
        let mail = smtp
            .messages()
            .into_iter()
            .rev()
            .find(|m| m["rcpt_tos"] == json!([to]) && m["subject"].as_str().unwrap().starts_with("[warden] Isolate"))
            .expect("the lead's email");
        let label = if choice == "isolate" { "Isolate them from the network: " } else { "Do nothing:" };
        let text = mail["text"].as_str().unwrap();
        let line = text.lines().find(|l| l.starts_with(label)).unwrap_or_else(|| panic!("{text}"));
        line.rsplit('/').next().unwrap().trim().to_string()
    };

    // Asked, parked, decided by the IR lead's own isolate link.
    let asked = run(&e, "threat-hunt", input.clone()).await;
    assert_eq!((asked.state, asked.failed_step.as_deref()), (warden::story::RunState::Waiting, Some("contain")), "{:?}", asked.error);
    assert!(s1_sim.agents.lock().unwrap().actions.is_empty(), "nothing is isolated before the decision");
    let token = link_of("ir-lead@corp.example", "isolate");
    // The mail carried the token; the run record (the email step's input
    // included) holds only its placeholder.
    let record = serde_json::to_string(&e.store.get_run(&asked.run_id).unwrap().unwrap()).unwrap();
    assert!(!record.contains(&token) && record.contains("/approvals/wardenlink"), "{record}");
    let (approval, link) = approvals.approval_by_link(&warden::approval::token_hash(&token)).unwrap().expect("the emailed link is known");
    assert_eq!((link.choice.as_str(), link.recipient.as_str()), ("isolate", "ir-lead@corp.example"));
    assert_eq!(approval.title, "Isolate 3 host(s) that saw evil.example?");
    assert_eq!(approval.approvers, vec!["soc-lead@corp.example".to_string(), "ir-lead@corp.example".to_string()]);
    let by_link = warden::approval::Decision {
        choice: None,
        decided_by: link.recipient.clone(),
        via: "link".into(),
        from: Some("127.0.0.1".into()),
        comment: None,
        decided_ms: 1,
    };
    warden::store::decide(approvals, &approval, &link.choice, Some(&link.recipient), false, by_link).unwrap().unwrap();
    assert!(approvals.wake(&asked.run_id).unwrap());
    let done = e.resume(&asked.run_id, &Quiet).await;
    assert_eq!(done.state, "succeeded", "{:?}", done.error);
    let out = done.output.unwrap();
    assert_eq!((out["containment"].as_str(), out["isolated"].as_u64()), (Some("isolate"), Some(3)));
    let isolated: Vec<String> = s1_sim.agents.lock().unwrap().isolated.iter().cloned().collect();
    assert_eq!(isolated.len(), 3, "exactly the hosts that saw it: {isolated:?}");
    let comments = jira_sim.issue(out["ticket"].as_str().unwrap()).unwrap().comments;
    let last = comments.last().unwrap()["body"].as_str().unwrap().to_string();
    assert!(last.contains("Isolation: isolate, decided by ir-lead@corp.example (3 agent(s) disconnected)"), "{last}");

    // Asked again; nobody answers; the timeout chooses ignore.
    let asked = run(&e, "threat-hunt", input).await;
    assert_eq!(asked.state, warden::story::RunState::Waiting);
    let due = approvals.due_approvals(u64::MAX, 10).unwrap();
    assert_eq!(due.len(), 1);
    let timeout = warden::approval::Decision {
        choice: due[0].on_timeout.clone(),
        decided_by: "timeout".into(),
        via: "timeout".into(),
        from: None,
        comment: None,
        decided_ms: 2,
    };
    approvals.decide(&due[0].run, &due[0].step, &timeout).unwrap().unwrap();
    assert!(approvals.wake(&asked.run_id).unwrap());
    let done = e.resume(&asked.run_id, &Quiet).await;
    assert_eq!(done.state, "succeeded", "{:?}", done.error);
    let out = done.output.unwrap();
    assert_eq!((out["containment"].as_str(), out["isolated"].as_u64()), (Some("ignore"), Some(0)));
    assert_eq!(s1_sim.agents.lock().unwrap().actions.len(), 1, "no second isolation");
    let comments = jira_sim.issue(out["ticket"].as_str().unwrap()).unwrap().comments;
    assert!(comments.last().unwrap()["body"].as_str().unwrap().contains("No decision on isolating the hosts within 4 hours; nothing was done."));
    // The lead's link of that run now answers that it is over.
    let late = link_of("soc-lead@corp.example", "isolate");
    let (over, _) = approvals.approval_by_link(&warden::approval::token_hash(&late)).unwrap().unwrap();
    assert!(over.what_happened().contains("the timeout chose `ignore`"), "{}", over.what_happened());
}

/// An approval link's token reaches only the egress of a step whose input
/// held its placeholder: the guest, the run record and the audit see the
/// placeholder; the upstream gets the token (in a body and in a URL); what
/// the upstream says back is scrubbed of it; and a placeholder from another
/// run, sent in as data, goes out as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_links_token_is_put_in_only_at_egress_and_scrubbed_from_the_answer() {
    let (srv, rec) = origin::spawn().await.unwrap();
    let echo = srv.url("/echo");
    let ask = format!(
        r#"
name: ask-in-chat
steps:
  - id: post
    action: probe
    with:
      op: fetch
      method: POST
      url: "{echo}?go={{{{ approval.ask.links.go }}}}"
      headers: {{content-type: text/plain}}
      body: "Approve: {{{{ approval.ask.links.go }}}}"
  - id: look
    action: probe
    with: {{op: echo, link: "{{{{ approval.ask.links.go }}}}"}}
  - id: ask
    approval:
      title: "Go?"
      choices: [go, stop]
      timeout: 1h
      on_timeout: stop
"#
    );
    let relay = format!("name: relay\nsteps:\n  - id: post\n    action: probe\n    with: {{op: fetch, method: POST, url: \"{echo}\", headers: {{content-type: text/plain}}, body: \"{{{{ input.link }}}}\"}}\n");
    let dir = StoryDir::new(&[("ask.yaml", &ask), ("relay.yaml", &relay)]);
    let policy = policy(&format!("[plugins.probe]\npath = \"{{probe}}\"\n[grants.probe]\nallow = [\"POST http://127.0.0.1:{}/*\"]\n", srv.port()));
    let e = engine(policy, &dir.0);
    let r = run(&e, "ask-in-chat", json!({})).await;
    assert_eq!((r.state, r.failed_step.as_deref()), (warden::story::RunState::Waiting, Some("ask")), "{:?}", r.error);

    let key = e.link_key().unwrap();
    let token = warden::approval::token(&key, &r.run_id, "ask", "go", "");
    let link = warden::approval::link_url(e.links_base(), &token);
    // The upstream got the token, in the body and (percent-encoded) in the URL.
    let sent = &rec.all()[0];
    assert_eq!(String::from_utf8_lossy(&sent.body), format!("Approve: {link}"));
    let query: std::collections::HashMap<String, String> = url::form_urlencoded::parse(sent.query.as_bytes()).into_owned().collect();
    assert_eq!(query["go"], link, "{sent:?}");
    // What the guest and the record hold: the placeholder; the echoed answer, scrubbed.
    let d = e.store.get_run(&r.run_id).unwrap().unwrap();
    let step = |id: &str| d.steps.iter().find(|s| s.step_id == id).unwrap().clone();
    let placeholder = step("look").output.unwrap()["input"]["link"].as_str().unwrap().to_string();
    assert!(placeholder.starts_with(&format!("{}/approvals/wardenlink", e.links_base().trim_end_matches('/'))), "{placeholder}");
    let post = step("post").output.unwrap();
    let answer = post["body"].as_str().unwrap_or_else(|| panic!("{post}")).to_string();
    assert!(answer.contains("Approve: ") && answer.contains("[REDACTED]") && !answer.contains(&token), "{answer}");
    assert!(d.audit[0]["url"].as_str().unwrap().contains("wardenlink"), "the audit keeps the placeholder: {:?}", d.audit[0]);
    let record = serde_json::to_string(&d).unwrap();
    assert!(!record.contains(&token), "{record}");

    // Another run handed the placeholder as data: it is not sealed to that run, so it goes out as it is.
    let r2 = run(&e, "relay", json!({"link": placeholder})).await;
    assert_eq!(r2.state, "succeeded", "{:?}", r2.error);
    let relayed = rec.all().last().unwrap().body.clone();
    assert_eq!(String::from_utf8_lossy(&relayed), placeholder);
}
