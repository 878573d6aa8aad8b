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

impl PgSchema {
    pub(crate) fn new() -> PgSchema {
        let base = std::env::var("WARDEN_TEST_POSTGRES").unwrap_or_else(|_| DEFAULT_PG.into());
        let schema = format!("warden_t_{}", uuid::Uuid::new_v4().simple());
        admin(&base, &format!("CREATE SCHEMA {schema}"));
        let url = format!("{base}?options=-c%20search_path%3D{schema}");
        let store = Arc::new(PgStore::connect(&url).unwrap_or_else(|e| panic!("{e:#}")));
        PgSchema { base, schema, store }
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
fn suite(s: &dyn Store) {
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
    let answers = s.apply(&[Write::create_run(&run("r3", "st", "soc", &input, Some("k1"))), Write::create_run(&run("r4", "other", "red", &input, None))]).unwrap();
    assert!(answers[0].is_err() && answers[1].is_ok(), "{answers:?}");

    // A sub-story run, listed under its parent and not at the top level.
    s.create_run(&NewRun { id: "c1", story: "sub", team: "soc", trigger: "story:st", input: &input, parent: Some(("r1", "a")), idempotency_key: None }).unwrap();
    assert_eq!(s.get_run("r1").unwrap().unwrap().children[0].id, "c1");
    let top: Vec<String> = s.list_runs(None, None, false, 10, 0).unwrap().into_iter().map(|r| r.id).collect();
    assert!(!top.contains(&"c1".to_string()) && top.len() == 3, "{top:?}");
    assert_eq!(s.find_runs(&RunFilter { team: Some("red"), limit: 10, ..Default::default() }).unwrap().len(), 1);
    assert_eq!(s.list_runs(Some("st"), Some("queued"), false, 10, 0).unwrap()[0].id, "r2");
    assert_eq!(s.runs_in_state("queued").unwrap(), vec!["r2".to_string(), "r4".to_string()]);
    assert_eq!(s.count_by_state().unwrap(), vec![("queued".to_string(), 2), ("succeeded".to_string(), 1)]);
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
}

#[test]
fn sqlite_in_memory_keeps_the_record() {
    suite(&RunStore::in_memory().unwrap());
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
fn postgres_keeps_the_record() {
    let pg = PgSchema::new();
    suite(pg.store.as_ref());
    // Reopening migrates nothing twice and finds what was written.
    let again = open(std::path::Path::new(&pg.url())).unwrap();
    assert_eq!(again.run_summary("r1").unwrap().unwrap().state, "succeeded");
}

#[test]
fn postgres_refuses_a_schema_newer_than_it_knows() {
    let pg = PgSchema::new();
    admin(&pg.base, &format!("UPDATE {}.warden_schema SET version = 999", pg.schema));
    let e = PgStore::connect(&pg.url()).err().expect("a newer schema must be refused");
    let msg = format!("{e:#}");
    assert!(msg.contains("newer warden (schema 999") && msg.contains("upgrade warden"), "{msg}");
}

#[test]
fn postgres_serves_one_node_per_database_until_the_cluster_queue_exists() {
    let pg = PgSchema::new();
    // The claim is per database, so this test takes its own.
    pg.store.claim_single_node().unwrap();
    let second = PgStore::connect(&pg.url()).unwrap();
    let e = second.claim_single_node().unwrap_err().to_string();
    assert!(e.contains("another `warden serve` is using this PostgreSQL database"), "{e}");
    drop(pg);
}

#[test]
fn a_node_whose_claim_connection_drops_takes_the_claim_again() {
    let pg = PgSchema::new();
    pg.store.claim_single_node().unwrap();
    // Cut the claim's connection, as a Postgres restart or a network cut would.
    let cut = format!(
        "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND classid = {} AND objid = hashtext('{}')::oid AND objsubid = 2",
        0x7761_7264u32, pg.schema
    );
    admin(&pg.base, &cut);
    // Within a few seconds the node holds it again (asked of Postgres, not
    // raced: a second node winning the gap would stop the first by design)...
    let held = format!(
        "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = {} AND objid = hashtext('{}')::oid AND objsubid = 2 AND granted",
        0x7761_7264u32, pg.schema
    );
    let mut again = false;
    for _ in 0..40 {
        std::thread::sleep(std::time::Duration::from_millis(250));
        if admin_count(&pg.base, &held) == 1 {
            again = true;
            break;
        }
    }
    assert!(again, "the claim was not taken again");
    // ...so a second node is still refused.
    let second = PgStore::connect(&pg.url()).unwrap();
    assert!(second.claim_single_node().is_err());
}

/// One number from the test database, outside any store.
fn admin_count(url: &str, sql: &str) -> i64 {
    let (url, sql) = (url.to_string(), sql.to_string());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(conn);
            client.query_one(&sql, &[]).await.unwrap().get::<_, i64>(0)
        })
    })
    .join()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_takes_group_commits_from_async_callers() {
    let pg = PgSchema::new();
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
    for url in ["postgres://warden:s3cret@127.0.0.1:1/runs", "postgresql://warden:s3cret@127.0.0.1:1/runs?sslmode=disable", "postgres://warden:s3cret@127.0.0.1:notaport/runs"] {
        let shown = describe(std::path::Path::new(url));
        assert!(!shown.contains("s3cret") && shown.contains("***"), "{url} shown as {shown}");
        let e = match PgStore::connect(url) {
            Ok(_) => panic!("{url} connected"),
            Err(e) => format!("{e:#}"),
        };
        assert!(!e.contains("s3cret"), "{url}: {e}");
    }
}
