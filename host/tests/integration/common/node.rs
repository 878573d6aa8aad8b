//! `warden serve` processes and PostgreSQL schemas for the tests that run
//! the server as an operator would.

use super::root;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

/// The webhook secret every test trigger reads from `WEBHOOK_SECRET`.
pub const SECRET: &str = "webhook-secret-for-tests";

/// A `warden serve` process, SIGKILLed when dropped.
pub struct Server {
    pub child: Child,
    pub base: String,
    pub dir: PathBuf,
}

impl Server {
    /// With the SQLite store `runs.db` in `dir`.
    pub fn start(dir: &Path, workers: usize) -> Server {
        Server::start_on(dir, workers, dir.join("runs.db").as_os_str())
    }

    pub fn start_on(dir: &Path, workers: usize, db: &std::ffi::OsStr) -> Server {
        Server::start_with(dir, db, &["--workers", &workers.to_string()])
    }

    /// With the policy `dir/warden.toml`, the stories in `dir/stories`, the
    /// store `db` and more flags.
    pub fn start_with(dir: &Path, db: &std::ffi::OsStr, flags: &[&str]) -> Server {
        Server::start_env(dir, db, flags, &[])
    }

    /// As [`Server::start_with`], with more environment variables.
    pub fn start_env(dir: &Path, db: &std::ffi::OsStr, flags: &[&str], envs: &[(&str, &str)]) -> Server {
        let s = Server::spawn_env(dir, db, flags, envs);
        let port: u16 = s.base.rsplit(':').next().unwrap().parse().unwrap();
        for _ in 0..400 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return s;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("warden serve did not start");
    }

    /// Starts the process without waiting for it to listen (it may end first).
    pub fn spawn_env(dir: &Path, db: &std::ffi::OsStr, flags: &[&str], envs: &[(&str, &str)]) -> Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(env!("CARGO_BIN_EXE_warden"))
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(flags)
            .arg("--db")
            .arg(db)
            .arg("--policy")
            .arg(dir.join("warden.toml"))
            .arg("--stories")
            .arg(dir.join("stories"))
            .env("WARDEN_CACHE_DIR", root().join("target/warden-test-cache"))
            .env("WEBHOOK_SECRET", SECRET)
            .env("WARDEN_LOG", "warn")
            .envs(envs.iter().copied())
            .spawn()
            .unwrap();
        Server { child, base: format!("http://127.0.0.1:{port}"), dir: dir.to_path_buf() }
    }

    /// SIGKILL: no drain, no goodbye.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A schema of its own in the test PostgreSQL database (`WARDEN_TEST_POSTGRES`,
/// default the local `test` database), dropped by [`PgSchema::drop_now`].
pub struct PgSchema {
    pub base: String,
    pub name: String,
}

impl PgSchema {
    pub async fn new(tag: &str) -> PgSchema {
        let base = std::env::var("WARDEN_TEST_POSTGRES").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let name = format!("warden_{tag}_{}", std::process::id());
        pg_admin(&base, &format!("DROP SCHEMA IF EXISTS {name} CASCADE; CREATE SCHEMA {name}")).await;
        PgSchema { base, name }
    }

    /// The store's URL: its tables in this schema, its connections named `application_name`.
    pub fn url(&self) -> String {
        format!("{}?options=-c%20search_path%3D{}&application_name={}", self.base, self.name, self.name)
    }

    /// One number from a query on the schema's tables.
    pub async fn count(&self, sql: &str) -> i64 {
        let client = connect(&self.base).await;
        client.batch_execute(&format!("SET search_path = {}", self.name)).await.unwrap();
        client.query_one(sql, &[]).await.unwrap().get::<_, i64>(0)
    }

    /// Rows of text from a query on the schema's tables.
    pub async fn texts(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        let client = connect(&self.base).await;
        client.batch_execute(&format!("SET search_path = {}", self.name)).await.unwrap();
        let rows = client.query(sql, &[]).await.unwrap();
        rows.iter().map(|r| (0..r.len()).map(|i| r.get::<_, Option<String>>(i)).collect()).collect()
    }

    pub async fn drop_now(self) {
        pg_admin(&self.base, &format!("DROP SCHEMA {} CASCADE", self.name)).await;
    }
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {url} is needed for this test (set WARDEN_TEST_POSTGRES): {e}"));
    tokio::spawn(conn);
    client
}

/// Runs SQL on the test database, outside any store.
pub async fn pg_admin(url: &str, sql: &str) {
    connect(url).await.batch_execute(sql).await.unwrap();
}
