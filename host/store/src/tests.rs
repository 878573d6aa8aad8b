//! One suite, every store: SQLite in memory, SQLite on disk, and PostgreSQL
//! (the database of `WARDEN_TEST_POSTGRES`, default the local `test`
//! database; each test in a schema of its own, dropped after).

use super::group::GroupCommit;
use super::*;
use serde_json::json;
use std::sync::Arc;

const DEFAULT_PG: &str = "postgres://postgres@127.0.0.1:5432/test";

/// A PostgreSQL store in a fresh schema, dropped with the guard.
pub(crate) struct PgSchema {
    base: String,
    schema: String,
    pub store: Arc<PgStore>,
}

/// Set (CI sets it) to make a missing PostgreSQL fail these tests rather than skip them.
const REQUIRE: &str = "WARDEN_REQUIRE_POSTGRES";

impl PgSchema {
    /// `None` (the test is skipped, saying so) when no PostgreSQL answers
    /// and [`REQUIRE`] is not set: the unit layer needs no server.
    pub(crate) fn new() -> Option<PgSchema> {
        let base = std::env::var("WARDEN_TEST_POSTGRES").unwrap_or_else(|_| DEFAULT_PG.into());
        if let Err(e) = reachable(&base) {
            if std::env::var_os(REQUIRE).is_some() {
                panic!("PostgreSQL at {base} is needed for these tests ({REQUIRE} is set): {e}");
            }
            // Past the test harness's capture, so it is seen even when the test passes.
            use std::io::Write as _;
            let _ = writeln!(
                std::io::stderr(),
                "skipped: no PostgreSQL answers at {base} ({e}); set WARDEN_TEST_POSTGRES to a server to run the PostgreSQL store's tests"
            );
            return None;
        }
        let schema = format!("warden_t_{}", uuid::Uuid::new_v4().simple());
        admin(&base, &format!("CREATE SCHEMA {schema}"));
        let url = format!("{base}?options=-c%20search_path%3D{schema}");
        let store = Arc::new(PgStore::connect(&url).unwrap_or_else(|e| panic!("{e:#}")));
        Some(PgSchema { base, schema, store })
    }

    pub(crate) fn url(&self) -> String {
        format!("{}?options=-c%20search_path%3D{}", self.base, self.schema)
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        admin(&self.base, &format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema));
    }
}

/// Whether a PostgreSQL server answers at `url` (within a few seconds).
fn reachable(url: &str) -> Result<(), String> {
    let url = url.to_string();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
        rt.block_on(async {
            match tokio::time::timeout(std::time::Duration::from_secs(5), tokio_postgres::connect(&url, tokio_postgres::NoTls)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("no answer within 5 s".to_string()),
            }
        })
    })
    .join()
    .unwrap_or_else(|_| Err("the check panicked".to_string()))
}

/// Runs one statement on the test database, outside any store.
pub(crate) fn admin(url: &str, sql: &str) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (url, sql) = (url.to_string(), sql.to_string());
    std::thread::spawn(move || {
        rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap_or_else(|e| panic!("PostgreSQL at {url} is needed for these tests (set WARDEN_TEST_POSTGRES): {e}"));
            tokio::spawn(conn);
            client.batch_execute(&sql).await.unwrap();
        })
    })
    .join()
    .unwrap();
}

fn run<'a>(id: &'a str, story: &'a str, team: &'a str, input: &'a Value, key: Option<&'a str>) -> NewRun<'a> {
    NewRun { id, story, team, trigger: "test", input, parent: None, idempotency_key: key }
}

/// What every store must do.
/// A deduplicate agent's memory: the last `lookback` values of a scope.
fn remembers(s: &dyn RunStore) {
    let fresh = |scope: &str, v: &str| {
        let w = Write::Remember { run: "r-dedupe".into(), scope: scope.into(), value: v.into(), lookback: 2 };
        s.apply(&[w]).unwrap().pop().unwrap().is_ok()
    };
    assert!(fresh("s/a", "x"), "a value never seen is new");
    assert!(!fresh("s/a", "x"), "the same value again is a duplicate");
    assert!(fresh("s/b", "x"), "another agent's memory is its own");
    assert!(fresh("s/a", "y"));
    assert!(fresh("s/a", "z"));
    assert!(fresh("s/a", "x"), "x fell out of the last two values (y, z)");
    assert!(!fresh("s/a", "z"), "z is still among them");
}

fn suite(s: &dyn RunStore) {
    remembers(s);
    service_tokens(s.tokens().expect("a real store keeps service tokens"));
    audit_log_of_people(s.activity().expect("a real store keeps the audit log of people"));
    let input = json!({"x": 1});
    s.create_run(&run("r1", "st", "soc", &input, None)).unwrap();
    s.start_run("r1").unwrap();
    s.step_started("r1", "a", None, "action", Some(&json!({"in": 1})), 1).unwrap();
    s.apply(&[
        Write::logs("r1", "a", &[crate::invocation::LogLine { at_ms: 1, level: "info", source: "guest", message: "hello".into() }]),
        Write::step_finished("r1", "a", None, "action", "succeeded", Some(&json!({"out": 2})), None, 1),
        Write::step_finished("r1", "each", Some(0), "transform", "succeeded", Some(&json!(0)), None, 1),
    ])
    .unwrap();
    s.finish_run("r1", "succeeded", Some(&json!({"done": true})), None, None).unwrap();
    let d = s.get_run("r1").unwrap().unwrap();
    assert_eq!((d.run.state.as_str(), d.run.team.as_str(), d.input.clone()), ("succeeded", "soc", input.clone()));
    assert_eq!(d.steps[0].input, Some(json!({"in": 1})));
    assert_eq!(d.steps[0].output, Some(json!({"out": 2})));
    assert_eq!((d.steps[1].step_id.as_str(), d.steps[1].item), ("each", Some(0)));
    assert_eq!(d.logs[0].message, "hello");
    assert_eq!(d.output, Some(json!({"done": true})));
    assert!(d.run.started_ms.is_some() && d.run.finished_ms.is_some());

    // Idempotency: a second run with one key is a conflict, and the first is found.
    s.create_run(&run("r2", "st", "soc", &input, Some("k1"))).unwrap();
    let e = s.create_run(&run("r3", "st", "soc", &input, Some("k1"))).unwrap_err();
    assert!(e.is::<Conflict>(), "{e:#}");
    assert_eq!(s.run_by_idempotency_key("st", "k1").unwrap().as_deref(), Some("r2"));
    // A conflict in a batch refuses that write only.
    let answers =
        s.apply(&[Write::create_run(&run("r3", "st", "soc", &input, Some("k1"))), Write::create_run(&run("r4", "other", "red", &input, None))]).unwrap();
    assert!(answers[0].is_err() && answers[1].is_ok(), "{answers:?}");

    // A sub-story run, listed under its parent and not at the top level.
    s.create_run(&NewRun { id: "c1", story: "sub", team: "soc", trigger: "story:st", input: &input, parent: Some(("r1", "a")), idempotency_key: None })
        .unwrap();
    assert_eq!(s.get_run("r1").unwrap().unwrap().children[0].id, "c1");
    let top: Vec<String> = s.list_runs(None, None, false, 10, 0).unwrap().into_iter().map(|r| r.id).collect();
    assert!(!top.contains(&"c1".to_string()) && top.len() == 3, "{top:?}");
    assert_eq!(s.find_runs(&RunFilter { team: Some("red"), limit: 10, ..Default::default() }).unwrap().len(), 1);
    assert_eq!(s.list_runs(Some("st"), Some("queued"), false, 10, 0).unwrap()[0].id, "r2");
    assert_eq!(s.runs_in_state("queued").unwrap(), vec!["r2".to_string(), "r4".to_string()]);
    assert_eq!(s.count_by_state().unwrap(), vec![("queued".to_string(), 2), ("succeeded".to_string(), 1)]);
    assert_eq!(s.count_unfinished().unwrap(), vec![("queued".to_string(), 2)], "unfinished top-level runs only");
    assert_eq!(s.run_input("r4").unwrap(), Some(("other".to_string(), input.clone())));
    assert!(s.get_run("nope").unwrap().is_none());

    // Whatever text a guest wrote is kept or safely replaced, never a failed batch.
    s.apply(&[
        Write::logs("r4", "a", &[crate::invocation::LogLine { at_ms: 2, level: "info", source: "guest", message: "nul \0 byte".into() }]),
        Write::step_finished("r4", "a\0b", None, "action", "failed", None, Some(&json!({"m": "\u{0}"})), 1),
    ])
    .unwrap();
    let d = s.get_run("r4").unwrap().unwrap();
    assert!(d.logs[0].message.starts_with("nul ") && d.logs[0].message.ends_with(" byte"), "{:?}", d.logs[0].message);
    assert_eq!(d.steps[0].error, Some(json!({"m": "\u{0}"})));

    // A schedule's ticks: the latest one that started a run of the story.
    assert_eq!(s.last_schedule_tick("tick").unwrap(), None);
    for (id, tick) in [("t1", 60_000u64), ("t2", 120_000)] {
        let key = schedule_key(tick);
        s.create_run(&NewRun { id, story: "tick", team: "soc", trigger: "schedule", input: &input, parent: None, idempotency_key: Some(&key) }).unwrap();
    }
    assert_eq!(s.last_schedule_tick("tick").unwrap(), Some(120_000));
    let again = schedule_key(120_000);
    let e = s.create_run(&NewRun { id: "t3", story: "tick", team: "soc", trigger: "schedule", input: &input, parent: None, idempotency_key: Some(&again) });
    assert!(e.is_err(), "a tick starts one run");

    // Recordings of step attempts, in the order they were made, and what they allow.
    assert_eq!(crate::recording_state(&s.recordings("r4").unwrap()), "none");
    s.apply(&[
        Write::Recording { run: "r4".into(), step: "a".into(), item: None, attempt: 1, truncated: false, recording: "{\"n\":1}".into() },
        Write::Recording { run: "r4".into(), step: "a".into(), item: Some(2), attempt: 2, truncated: true, recording: "{\"n\":2}".into() },
    ])
    .unwrap();
    let r = s.recordings("r4").unwrap();
    assert_eq!(
        r.iter().map(|r| (r.step.as_str(), r.item, r.attempt, r.truncated, r.recording.as_str())).collect::<Vec<_>>(),
        vec![("a", None, 1, false, "{\"n\":1}"), ("a", Some(2), 2, true, "{\"n\":2}")]
    );
    assert_eq!(crate::recording_state(&r), "truncated");

    // What the console asks: by trigger, since a time, and counts by state under a filter.
    let by = |trigger: Option<&'static str>, since_ms: Option<u64>| {
        let f = RunFilter { trigger, since_ms, limit: 50, ..Default::default() };
        let mut ids: Vec<String> = s.find_runs(&f).unwrap().into_iter().map(|r| r.id).collect();
        ids.sort();
        (ids, s.count_runs(&f).unwrap())
    };
    let (ids, counts) = by(Some("schedule"), None);
    assert_eq!((ids, counts), (vec!["t1".to_string(), "t2".to_string()], vec![("queued".to_string(), 2)]));
    assert_eq!(by(None, Some(u64::MAX >> 1)), (vec![], vec![]), "nothing was created in the far future");
    let (all, counts) = by(None, Some(0));
    assert_eq!(all.len(), 5, "top-level runs only: {all:?}");
    assert_eq!(counts, vec![("queued".to_string(), 4), ("succeeded".to_string(), 1)]);
    let red = RunFilter { team: Some("red"), trigger: Some("test"), limit: 5, ..Default::default() };
    assert_eq!(s.count_runs(&red).unwrap(), vec![("queued".to_string(), 1)]);

    approvals(s);
}

/// Approvals: parked with their links, decided exactly once, woken once.
fn approvals(s: &dyn RunStore) {
    use crate::approval::{Approval, Decision, Refused};
    let a = s.approvals().expect("every real store keeps approvals");
    let salt = a.key_salt().unwrap();
    assert_eq!(a.key_salt().unwrap(), salt, "one salt per store");
    // The key comes from the operator's secret and the salt: the store holds no key.
    let key = crate::approval::link_key(&crate::policy::credentials::Secret::new("operator-secret-of-32-characters".into()), &salt);
    assert_ne!(key, crate::approval::link_key(&crate::policy::credentials::Secret::new("another-secret-of-32-characters!".into()), &salt));
    assert_ne!(&key[..], &salt[..]);
    let input = json!({});
    s.create_run(&run("w1", "ask", "soc", &input, None)).unwrap();
    s.create_run(&NewRun { id: "w1c", story: "sub", team: "soc", trigger: "story:ask", input: &input, parent: Some(("w1", "call")), idempotency_key: None })
        .unwrap();
    let pending = Approval {
        run: "w1c".into(),
        root_run: "w1".into(),
        step: "confirm".into(),
        story: "sub".into(),
        team: "soc".into(),
        title: "Go?".into(),
        details: json!({"hosts": 3}),
        choices: vec!["go".into(), "stop".into()],
        danger: vec![],
        confirm: vec!["stop".into()],
        approvers: vec!["lead@corp.example".into()],
        created_ms: 10,
        deadline_ms: 1_000,
        on_timeout: Some("stop".into()),
        state: "pending".into(),
        decision: None,
    };
    let links = crate::approval::links(&key, "w1c", "confirm", &pending.choices, &pending.approvers);
    assert_eq!(links.len(), 4, "two choices, for the link holder and the one approver");
    let park = |run: &str, step: &str, kind: &str, approval: Option<(Approval, Vec<crate::approval::Link>)>| Write::Park {
        run: run.into(),
        step: step.into(),
        kind: kind.into(),
        approval: approval.map(Box::new),
        at_ms: 5,
    };
    s.apply(&[park("w1c", "confirm", "approval", Some((pending.clone(), links.clone()))), park("w1", "call", "story", None)]).unwrap();
    // Parked again (woken without a decision): the first approval is kept.
    s.apply(&[park("w1c", "confirm", "approval", Some((Approval { title: "changed".into(), ..pending.clone() }, links.clone())))]).unwrap();
    assert_eq!(s.run_summary("w1").unwrap().unwrap().state, "waiting");
    let child = s.get_run("w1c").unwrap().unwrap();
    assert_eq!((child.run.state.as_str(), child.steps[0].state.as_str(), child.run.parent_step.as_deref()), ("waiting", "waiting", Some("call")));
    assert_eq!(a.approval("w1c", "confirm").unwrap().unwrap(), pending);
    let by_link = a.approval_by_link(&links[3].hash).unwrap().unwrap();
    assert_eq!((by_link.0.run.as_str(), by_link.1.choice.as_str(), by_link.1.recipient.as_str()), ("w1c", "stop", "lead@corp.example"));
    assert!(a.approval_by_link(&"0".repeat(64)).unwrap().is_none());
    let listed = a.list_approvals(&ApprovalFilter { limit: 10, ..Default::default() }).unwrap();
    assert_eq!(listed.len(), 1);
    assert!(a.list_approvals(&ApprovalFilter { team: Some("red"), limit: 10, ..Default::default() }).unwrap().is_empty());
    assert!(a.list_approvals(&ApprovalFilter { story: Some("other"), limit: 10, ..Default::default() }).unwrap().is_empty());
    assert!(a.due_approvals(999, 10).unwrap().is_empty());
    assert_eq!(a.due_approvals(1_000, 10).unwrap().len(), 1);
    assert!(a.runs_to_wake(10).unwrap().is_empty(), "nothing to wake while pending");
    // Not waiting for anything decided yet: waking it would be wrong, and harmless.
    assert!(a.runs_to_wake(10).unwrap().is_empty());

    let d = Decision {
        choice: Some("go".into()),
        decided_by: "lead@corp.example".into(),
        via: "link".into(),
        from: Some("10.0.0.9".into()),
        comment: Some("ok".into()),
        decided_ms: 20,
    };
    let decided = a.decide("w1c", "confirm", &d).unwrap().unwrap();
    assert_eq!((decided.state.as_str(), decided.decision.as_ref()), ("decided", Some(&d)));
    assert_eq!(decided.output().unwrap()["choice"], "go");
    let again = a.decide("w1c", "confirm", &Decision { choice: Some("stop".into()), ..d.clone() }).unwrap();
    assert!(matches!(&again, Err(Refused::Over(x)) if x.decision.as_ref().unwrap().choice.as_deref() == Some("go")), "{again:?}");
    assert!(matches!(a.decide("w1c", "nope", &d).unwrap(), Err(Refused::Unknown(_))));
    assert!(a.due_approvals(u64::MAX, 10).unwrap().is_empty(), "a decided approval never times out");
    let audit = s.get_run("w1c").unwrap().unwrap().audit;
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!((audit[0]["kind"].as_str(), audit[0]["choice"].as_str(), audit[0]["from"].as_str()), (Some("approval"), Some("go"), Some("10.0.0.9")));
    assert_eq!(a.list_approvals(&ApprovalFilter { limit: 10, ..Default::default() }).unwrap().len(), 0, "pending only by default");
    assert_eq!(a.list_approvals(&ApprovalFilter { all: true, limit: 10, ..Default::default() }).unwrap().len(), 1);

    // The top-level run wakes, once.
    assert_eq!(a.runs_to_wake(10).unwrap(), vec!["w1".to_string()]);
    assert!(a.wake("w1").unwrap());
    assert!(!a.wake("w1").unwrap());
    assert!(a.runs_to_wake(10).unwrap().is_empty());
    assert_eq!(s.run_summary("w1").unwrap().unwrap().state, "running");
}

/// The audit log of people: kept in order, read on from an id, narrowed by
/// actor, action and team, every field capped.
fn audit_log_of_people(log: &dyn ActivityLog) {
    let entry = |actor: &str, action: &str, team: Option<&str>, detail: &str| Activity {
        id: 0,
        at_ms: 1_000,
        actor: actor.into(),
        action: action.into(),
        team: team.map(String::from),
        target: Some("r1/confirm".into()),
        outcome: "ok".into(),
        detail: Some(detail.into()),
        from: Some("127.0.0.1".into()),
    };
    log.note(&entry("team:soc", "approval.decide", Some("soc"), "choice contain via api")).unwrap();
    log.note(&entry("token:ci", "token.use", Some("intel"), &"x".repeat(10_000))).unwrap();
    log.note(&entry("admin", "console.sign_in", None, "")).unwrap();
    let all = log.read_activity(&ActivityFilter { limit: 10, ..Default::default() }).unwrap();
    assert_eq!(all.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(), vec!["approval.decide", "token.use", "console.sign_in"]);
    assert!(all[0].id < all[1].id && all[1].id < all[2].id, "kept in order");
    assert_eq!(all[1].detail.as_ref().unwrap().len(), 2000, "a long detail is capped");
    let after = log.read_activity(&ActivityFilter { after_id: all[0].id, limit: 10, ..Default::default() }).unwrap();
    assert_eq!(after.len(), 2, "read on from an id");
    let soc = log.read_activity(&ActivityFilter { team: Some("soc"), limit: 10, ..Default::default() }).unwrap();
    assert_eq!(soc, vec![all[0].clone()], "a team's only");
    let by = log.read_activity(&ActivityFilter { actor: Some("admin"), action: Some("console.sign_in"), limit: 10, ..Default::default() }).unwrap();
    assert_eq!(by.len(), 1);
    assert!(log.read_activity(&ActivityFilter { since_ms: Some(1_001), limit: 10, ..Default::default() }).unwrap().is_empty());
}

/// Service accounts: kept by digest, a name is one token forever, a revoked
/// token is refused, every use is noted.
fn service_tokens(t: &dyn TokenStore) {
    let token = |name: &str, team: Option<&str>| ServiceToken {
        name: name.into(),
        team: team.map(String::from),
        role: "operator".into(),
        created_ms: 1_000,
        created_by: "cli:tester".into(),
        revoked_ms: None,
        last_used_ms: None,
    };
    let (ci, ops) = ([1u8; 32], [2u8; 32]);
    assert!(t.create_token(&token("ci-bot", Some("soc")), &ci).unwrap());
    assert!(t.create_token(&token("ops", None), &ops).unwrap());
    assert!(!t.create_token(&token("ci-bot", Some("intel")), &[3u8; 32]).unwrap(), "a name in use is refused");
    assert!(t.use_token(&[9u8; 32], 2_000).unwrap().is_none(), "an unknown digest is no one");
    let used = t.use_token(&ci, 2_000).unwrap().expect("the token is found by its digest");
    assert_eq!((used.name.as_str(), used.team.as_deref(), used.last_used_ms), ("ci-bot", Some("soc"), Some(2_000)));
    assert!(t.revoke_token("ci-bot", 3_000).unwrap());
    assert!(!t.revoke_token("ci-bot", 4_000).unwrap(), "revoked once");
    assert!(t.use_token(&ci, 5_000).unwrap().is_none(), "a revoked token is refused");
    assert!(!t.create_token(&token("ci-bot", Some("soc")), &[4u8; 32]).unwrap(), "a revoked name stays taken");
    let listed = t.list_tokens().unwrap();
    assert_eq!(listed.iter().map(|t| (t.name.as_str(), t.revoked_ms)).collect::<Vec<_>>(), vec![("ci-bot", Some(3_000)), ("ops", None)]);
    assert_eq!(listed[0].last_used_ms, Some(2_000));
}

#[test]
fn sqlite_in_memory_keeps_the_record() {
    suite(&SqliteStore::in_memory().unwrap());
}

#[test]
fn sqlite_on_disk_keeps_the_record() {
    let dir = std::env::temp_dir().join(format!("warden-suite-{}", uuid::Uuid::new_v4().simple()));
    let s = open(&dir.join("runs.db")).unwrap();
    suite(s.as_ref());
    drop(s);
    let again = open(std::path::Path::new(&format!("sqlite://{}", dir.join("runs.db").display()))).unwrap();
    assert_eq!(again.run_summary("r1").unwrap().unwrap().state, "succeeded", "reopened by its sqlite:// URL");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn sqlite_checkpoints_the_wal_off_the_writers_path() {
    // The writer checkpoints only past 16,384 WAL pages; far fewer reach the
    // database file here only if the checkpointer thread copies them.
    let dir = std::env::temp_dir().join(format!("warden-ckpt-{}", uuid::Uuid::new_v4().simple()));
    let path = dir.join("runs.db");
    let s = open(&path).unwrap();
    let before = std::fs::metadata(&path).unwrap().len();
    let input = json!({"payload": "x".repeat(2000)});
    for i in 0..200 {
        s.create_run(&run(&format!("r{i}"), "hunt", "soc", &input, None)).unwrap();
    }
    let wal = dir.join("runs.db-wal");
    assert!(std::fs::metadata(&wal).unwrap().len() > 400_000, "the writes went to the WAL");
    let started = std::time::Instant::now();
    while std::fs::metadata(&path).unwrap().len() < before + 400_000 {
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "the WAL was never checkpointed into the database file");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    drop(s);
    let again = open(&path).unwrap();
    assert_eq!(again.run_summary("r199").unwrap().unwrap().state, "queued");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn postgres_keeps_the_record() {
    let Some(pg) = PgSchema::new() else { return };
    suite(pg.store.as_ref());
    // Reopening migrates nothing twice and finds what was written.
    let again = open(std::path::Path::new(&pg.url())).unwrap();
    assert_eq!(again.run_summary("r1").unwrap().unwrap().state, "succeeded");
}

#[test]
fn postgres_refuses_a_schema_newer_than_it_knows() {
    let Some(pg) = PgSchema::new() else { return };
    admin(&pg.base, &format!("UPDATE {}.warden_schema SET version = 999", pg.schema));
    let e = PgStore::connect(&pg.url()).err().expect("a newer schema must be refused");
    let msg = format!("{e:#}");
    assert!(msg.contains("newer warden (schema 999") && msg.contains("upgrade warden"), "{msg}");
}

/// A node of a cluster on the test schema, with leases of `lease_ms`.
fn node(pg: &PgSchema, lease_ms: u64) -> PgStore {
    let s = PgStore::connect(&pg.url()).unwrap();
    s.join_cluster(std::time::Duration::from_millis(lease_ms)).unwrap();
    s
}

/// Runs accepted by node `s` and offered to every node.
fn queued(s: &PgStore, ids: &[&str], story: &str) {
    let input = json!({});
    let batch: Vec<Write> = ids.iter().map(|id| Write::create_run(&run(id, story, "t", &input, None))).collect();
    assert!(s.apply(&batch).unwrap().iter().all(Result::is_ok));
    for id in ids {
        s.offer(id).unwrap();
    }
}

fn ids(claimed: &[Claimed]) -> Vec<String> {
    let mut v: Vec<String> = claimed.iter().map(|c| c.id.clone()).collect();
    v.sort();
    v
}

#[test]
fn two_nodes_claiming_at_once_never_get_the_same_run() {
    let Some(pg) = PgSchema::new() else { return };
    let (a, b) = (Arc::new(node(&pg, 10_000)), Arc::new(node(&pg, 10_000)));
    let names: Vec<String> = (0..40).map(|i| format!("q{i:02}")).collect();
    queued(&a, &names.iter().map(String::as_str).collect::<Vec<_>>(), "st");
    let limits = std::collections::HashMap::new();
    let claim = |s: Arc<PgStore>| {
        let limits = limits.clone();
        std::thread::spawn(move || (0..8).flat_map(|_| s.claim(5, &limits, 100).unwrap().runs).collect::<Vec<_>>())
    };
    let (ga, gb) = (claim(a.clone()), claim(b.clone()));
    let (ga, gb) = (ga.join().unwrap(), gb.join().unwrap());
    let mut all = ids(&ga);
    all.extend(ids(&gb));
    all.sort();
    assert_eq!(all, names, "every run claimed exactly once");
    assert!(ga.iter().all(|c| !c.interrupted));
}

#[test]
fn a_run_just_accepted_is_its_nodes_for_a_moment_unless_offered() {
    let Some(pg) = PgSchema::new() else { return };
    let (a, b) = (node(&pg, 10_000), node(&pg, 10_000));
    a.apply_one(Write::create_run(&run("mine", "st", "t", &json!({}), None))).unwrap();
    assert!(b.claim(5, &Default::default(), 16).unwrap().runs.is_empty(), "reserved for the node that accepted it");
    assert!(a.claim_run("mine", "st", 16).unwrap());
    a.apply_one(Write::create_run(&run("left", "st", "t", &json!({}), None))).unwrap();
    a.offer("left").unwrap();
    assert_eq!(ids(&b.claim(5, &Default::default(), 16).unwrap().runs), vec!["left"], "offered: any node claims it");
    // Should the accepting node die before either, the reservation lapses.
    a.apply_one(Write::create_run(&run("orphan", "st", "t", &json!({}), None))).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let orphan = b.claim(5, &Default::default(), 16).unwrap().runs;
    assert_eq!(
        orphan,
        vec![Claimed { id: "orphan".into(), story: "st".into(), interrupted: false, started: false }],
        "reserved, never held: not an interrupted run"
    );
    // A run made outside the cluster (`warden story run` on this database) is never claimed.
    let cli = PgStore::connect(&pg.url()).unwrap();
    cli.apply_one(Write::create_run(&run("cli", "st", "t", &json!({}), None))).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert!(b.claim(5, &Default::default(), 16).unwrap().runs.is_empty());
}

#[test]
fn a_story_keeps_its_concurrency_across_nodes() {
    let Some(pg) = PgSchema::new() else { return };
    let (a, b) = (node(&pg, 10_000), node(&pg, 10_000));
    queued(&a, &["s1", "s2", "s3", "s4"], "slow");
    queued(&a, &["o1"], "other");
    let limits: std::collections::HashMap<String, usize> = [("slow".to_string(), 2)].into();
    let first = a.claim(10, &limits, 16).unwrap().runs;
    assert_eq!(ids(&first), vec!["o1", "s1", "s2"], "two of `slow`, oldest first, and the other story");
    let none = b.claim(10, &limits, 16).unwrap();
    assert!(none.runs.is_empty() && none.more_waiting, "`slow` is at its limit across the cluster, its runs wait");
    assert!(!b.claim_run("s3", "slow", 2).unwrap(), "nor can a node claim one by name");
    // One ends on node a: its slot is free for any node.
    a.apply_one(Write::finish_run("s1", "succeeded", None, None, None)).unwrap();
    assert_eq!(ids(&b.claim(10, &limits, 16).unwrap().runs), vec!["s3"]);
}

#[test]
fn a_lapsed_lease_is_taken_over_and_the_old_node_is_fenced() {
    let Some(pg) = PgSchema::new() else { return };
    let (a, b) = (node(&pg, 400), node(&pg, 400));
    queued(&a, &["r1"], "st");
    assert!(a.claim_run("r1", "st", 16).unwrap());
    a.apply_one(Write::start_run("r1")).unwrap();
    a.apply_one(Write::step_started("r1", "call", None, "action", None, 1)).unwrap();
    assert!(b.claim(5, &Default::default(), 16).unwrap().runs.is_empty(), "a live lease is not taken");
    // Renewed, the lease outlives its first term.
    std::thread::sleep(std::time::Duration::from_millis(250));
    assert!(a.renew().unwrap().is_empty());
    std::thread::sleep(std::time::Duration::from_millis(250));
    assert!(b.claim(5, &Default::default(), 16).unwrap().runs.is_empty(), "a renewed lease is not taken");
    // Node a stops renewing (it hangs, or lost the network): node b resumes the run.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let taken = b.claim(5, &Default::default(), 16).unwrap().runs;
    assert_eq!(taken, vec![Claimed { id: "r1".into(), story: "st".into(), interrupted: true, started: true }]);
    // Whatever node a still sends for the run is refused; node b's writes land.
    let late = a
        .apply(&[
            Write::step_finished("r1", "call", None, "action", "succeeded", Some(&json!({"late": true})), None, 1),
            Write::finish_run("r1", "succeeded", None, None, None),
        ])
        .unwrap();
    assert!(late.iter().all(|r| r.as_ref().is_err_and(|c| c.0.contains("not held by this node"))), "{late:?}");
    assert_eq!(a.renew().unwrap(), Vec::<String>::new(), "node a already forgot the run");
    b.apply_one(Write::finish_run("r1", "failed", None, Some("interrupted"), Some("call"))).unwrap();
    let d = b.get_run("r1").unwrap().unwrap();
    assert_eq!(d.run.state, "failed");
    assert_eq!(d.steps[0].output, None, "node a's late step record was not written");
}

/// A node that claimed a run and died before its start was committed may
/// have been executing it: the node that takes it over counts a resume, as
/// a restart does a run found `queued` (see `StoryRunner::resume_after_restart`).
#[test]
fn a_queued_run_whose_node_died_is_taken_over_as_interrupted() {
    let Some(pg) = PgSchema::new() else { return };
    let (a, b) = (node(&pg, 300), node(&pg, 300));
    queued(&a, &["q1"], "st");
    assert_eq!(a.claim(1, &Default::default(), 16).unwrap().runs, vec![Claimed { id: "q1".into(), story: "st".into(), interrupted: false, started: false }]);
    // Node a never renews (it died): node b takes the run, still queued, over.
    std::thread::sleep(std::time::Duration::from_millis(450));
    let taken = b.claim(5, &Default::default(), 16).unwrap().runs;
    assert_eq!(taken, vec![Claimed { id: "q1".into(), story: "st".into(), interrupted: true, started: false }]);
}

#[test]
fn a_node_learns_at_renewal_that_its_lease_was_taken() {
    let Some(pg) = PgSchema::new() else { return };
    let (a, b) = (node(&pg, 300), node(&pg, 300));
    queued(&a, &["r1"], "st");
    assert_eq!(a.claim(1, &Default::default(), 16).unwrap().runs.len(), 1);
    std::thread::sleep(std::time::Duration::from_millis(450));
    assert_eq!(b.claim(1, &Default::default(), 16).unwrap().runs.len(), 1);
    assert_eq!(a.renew().unwrap(), vec!["r1".to_string()]);
    // Sub-story runs of a held run are covered by its lease; of a lost one, refused.
    b.apply_one(Write::create_run(&NewRun {
        id: "c1",
        story: "sub",
        team: "t",
        trigger: "story:st",
        input: &json!({}),
        parent: Some(("r1", "call")),
        idempotency_key: None,
    }))
    .unwrap();
    b.apply_one(Write::finish_run("c1", "succeeded", None, None, None)).unwrap();
    let e = a.apply_one(Write::create_run(&NewRun {
        id: "c2",
        story: "sub",
        team: "t",
        trigger: "story:st",
        input: &json!({}),
        parent: Some(("r1", "call")),
        idempotency_key: None,
    }));
    assert!(e.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_takes_group_commits_from_async_callers() {
    let Some(pg) = PgSchema::new() else { return };
    let writer = GroupCommit::start(pg.store.clone(), Arc::default());
    let input = json!({});
    let all: Vec<_> = (0..40).map(|i| writer.commit(Write::create_run(&run(&format!("g{i}"), "st", "t", &input, None)))).collect();
    for r in futures::future::join_all(all).await {
        r.unwrap();
    }
    assert_eq!(pg.store.count_by_state().unwrap(), vec![("queued".to_string(), 40)]);
}

#[test]
fn a_postgres_password_never_reaches_a_message() {
    // Nothing listens on port 1; the last URL does not parse as a URL at all.
    for url in [
        "postgres://warden:s3cret@127.0.0.1:1/runs",
        "postgresql://warden:s3cret@127.0.0.1:1/runs?sslmode=disable",
        "postgres://warden:s3cret@127.0.0.1:notaport/runs",
    ] {
        let shown = describe(std::path::Path::new(url));
        assert!(!shown.contains("s3cret") && shown.contains("***"), "{url} shown as {shown}");
        let e = match PgStore::connect(url) {
            Ok(_) => panic!("{url} connected"),
            Err(e) => format!("{e:#}"),
        };
        assert!(!e.contains("s3cret"), "{url}: {e}");
    }
}

/// What a team reads of a run holds no live approval token: the run's error,
/// an approval's title and its details, as they are written to the store.
#[test]
fn a_runs_error_and_an_approvals_title_and_details_withhold_link_tokens() {
    let s = sqlite::SqliteStore::in_memory().unwrap();
    let token = crate::approval::token(&[3u8; 32], "t1", "ask", "go", "lead@corp.example");
    let link = crate::approval::link_url("https://w.example", &token);
    let escaped = link.replace('/', "\\/");
    let input = json!({});
    s.create_run(&run("t1", "ask", "soc", &input, None)).unwrap();
    let a = crate::approval::Approval {
        run: "t1".into(),
        root_run: "t1".into(),
        step: "ask".into(),
        story: "ask".into(),
        team: "soc".into(),
        title: format!("Go? {link}"),
        danger: vec![],
        confirm: vec![],
        details: json!({"slack_said": escaped, "links": [link]}),
        choices: vec!["go".into()],
        approvers: vec![],
        created_ms: 1,
        deadline_ms: 1_000_000,
        on_timeout: None,
        state: "pending".into(),
        decision: None,
    };
    s.apply(&[Write::park("t1", "ask", "approval", Some((a, vec![])))]).unwrap();
    let kept = s.approval("t1", "ask").unwrap().unwrap();
    let shown = format!("{} {}", kept.title, kept.details);
    assert!(!shown.contains(&token) && shown.contains(crate::approval::WITHHELD), "{shown}");
    s.apply_one(Write::finish_run("t1", "failed", None, Some(&format!("step tell: Slack answered {escaped}")), Some("tell"))).unwrap();
    let error = s.get_run("t1").unwrap().unwrap().run.error.unwrap();
    assert!(!error.contains(&token) && error.contains(crate::approval::WITHHELD), "{error}");
}

/// The two dialects' migrations, checked against each other: every table and
/// column one store keeps, the other keeps too — but for what one dialect
/// alone needs, listed here with why. A migration added to one store only
/// fails this test.
#[test]
fn both_stores_keep_the_same_tables_and_columns() {
    use std::collections::{BTreeMap, BTreeSet};
    let Some(pg) = PgSchema::new() else { return };
    type Tables = BTreeMap<String, BTreeSet<String>>;
    let dir = std::env::temp_dir().join(format!("warden-schemas-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("runs.db");
    drop(open(&path).unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    let names: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut sqlite = Tables::new();
    for table in names {
        let columns: Vec<String> =
            conn.prepare(&format!("PRAGMA table_info({table})")).unwrap().query_map([], |r| r.get(1)).unwrap().collect::<Result<_, _>>().unwrap();
        sqlite.insert(table, columns.into_iter().collect());
    }
    let mut postgres = Tables::new();
    let sql = format!("SELECT table_name::text, column_name::text FROM information_schema.columns WHERE table_schema = '{}'", pg.schema);
    for (table, column) in rows(&pg.base, &sql) {
        postgres.entry(table).or_default().insert(column);
    }
    // PostgreSQL alone: `seq` orders rows that SQLite orders by rowid; the
    // leases are the cluster's; its schema version is a table where SQLite
    // keeps `PRAGMA user_version`.
    let postgres_only = [
        ("audit", "seq"),
        ("logs", "seq"),
        ("recordings", "seq"),
        ("steps", "seq"),
        ("runs", "lease_gen"),
        ("runs", "lease_owner"),
        ("runs", "lease_until_ms"),
    ];
    for (table, column) in postgres_only {
        assert!(postgres.get_mut(table).is_some_and(|c| c.remove(column)), "{table}.{column} is no longer PostgreSQL's alone: update this list");
    }
    assert!(postgres.remove("warden_schema").is_some());
    assert_eq!(sqlite, postgres, "the two stores' migrations disagree");
    let _ = std::fs::remove_dir_all(dir);
}

/// The rows of a two-column query on the test database.
fn rows(url: &str, sql: &str) -> Vec<(String, String)> {
    let (url, sql) = (url.to_string(), sql.to_string());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(conn);
            client.query(&sql, &[]).await.unwrap().iter().map(|r| (r.get(0), r.get(1))).collect()
        })
    })
    .join()
    .unwrap()
}
