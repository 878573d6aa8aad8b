//! The queue several `warden serve` nodes share in PostgreSQL (see
//! [`Cluster`]). Three layers, each a few statements:
//!
//! 1. **Claims.** A run is executed by the node holding its lease (`runs.
//!    lease_owner`, `lease_until_ms`, `lease_gen`). Free runs — never leased,
//!    or whose lease lapsed — are claimed oldest first with `FOR UPDATE SKIP
//!    LOCKED`, so nodes never wait on each other's candidates. A story's
//!    `concurrency` holds across the cluster: its live leases are counted
//!    under a transaction-scoped advisory lock on the story before more are
//!    taken — shared while the story is far from its limit, exclusive near
//!    it (`warden_story_room` in the migrations). Time is the database's
//!    clock, never a node's.
//! 2. **Leases.** A node renews its leases every third of the lease; a node
//!    that dies (SIGKILL, lost network) stops renewing, and once the lease
//!    lapses another node claims the run and resumes it (restart semantics:
//!    the interrupted step runs again only if its retry policy allows).
//! 3. **Fencing.** Every batch of writes first locks the lease rows of the
//!    runs it writes (`FOR NO KEY UPDATE`) and checks owner and generation: a node
//!    whose lease was taken has its writes refused, so the run's record has
//!    one author and no step's start is recorded twice.
//!
//! Idle nodes wake on `LISTEN warden_work`: a run left for any node wakes
//! the claimers, a run's end wakes callers waiting for it and claimers that
//! had runs held back by a story's limit. They poll slowly besides, since a
//! lapsed lease announces nothing.
//!
//! Claims and renewals commit with `synchronous_commit = off`: every write
//! that precedes a side effect is fenced and committed synchronously, which
//! makes the claim it depends on durable first (the WAL is flushed in
//! order); a claim lost in a database crash is one no side effect relied on.

use super::{i, t, PgStore};
use crate::{Claimed, Claims, Cluster, Conflict, NewRun, Write};
use anyhow::anyhow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::watch;
use tokio_postgres::NoTls;

/// The database's clock in milliseconds: leases never depend on a node's clock.
const NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

/// With the story's hash: held while a story's live leases are counted and more taken.
const LOCK_STORY: i32 = 0x7761_7273;

/// The channel idle nodes listen on. The payload is the store's schema (so
/// that stores in several schemas of one database do not wake each other)
/// and what happened: `SCHEMA work` or `SCHEMA ended`.
const CHANNEL: &str = "warden_work";

/// Runs that are someone's work: not yet ended.
const OPEN: &str = "state IN ('queued', 'running') AND parent_run IS NULL";

/// Runs any node may claim: offered (no lease, no reservation), or whose
/// lease (or the accepting node's reservation) lapsed.
const FREE: &str = "(lease_until_ms IS NULL OR lease_until_ms < (extract(epoch from clock_timestamp()) * 1000)::bigint)";

/// This node's place in the cluster.
pub(super) struct Membership {
    pub(super) node: String,
    lease: Duration,
    /// The runs this node executes: each run (and sub-story run) → the
    /// top-level run whose lease covers it, and that lease's generation.
    held: Mutex<HashMap<String, (String, i64)>>,
    work: watch::Sender<u64>,
    ended: watch::Sender<u64>,
}

impl Membership {
    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, i64)>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets `root` and every run its lease covered.
    fn forget(&self, root: &str) {
        self.held().retain(|_, (r, _)| r != root);
    }
}

/// Which writes of a batch this node may make, decided in the batch's
/// transaction before anything is written.
pub(super) struct Fence {
    /// (root run, generation) pairs to check and lock.
    leases: Vec<(String, i64)>,
    /// Per write: the root whose lease it needs (`None`: it needs none, a new run).
    needs: Vec<Option<String>>,
    /// Writes refused before asking: no lease of this node covers their run.
    refused: Vec<Option<Conflict>>,
}

impl PgStore {
    /// Joins the cluster of nodes sharing this database: leases of `lease`,
    /// and a connection listening for work.
    pub fn join_cluster(&self, lease: Duration) -> anyhow::Result<()> {
        let member = Membership {
            node: format!("n{}", uuid::Uuid::new_v4().simple()),
            lease,
            held: Mutex::default(),
            work: watch::Sender::new(0),
            ended: watch::Sender::new(0),
        };
        let (work, ended) = (member.work.clone(), member.ended.clone());
        self.cluster.set(member).map_err(|_| anyhow!("this store already joined the cluster"))?;
        let config = self.url.clone();
        self.runtime().spawn(listen(config, work, ended));
        Ok(())
    }

    fn member(&self) -> &Membership {
        self.cluster.get().expect("called only through RunStore::cluster, once joined")
    }

    /// What [`Fence`] a batch needs: `None` outside a cluster.
    pub(super) fn fence_of(&self, batch: &[Write]) -> Option<Fence> {
        let member = self.cluster.get()?;
        let held = member.held();
        let mut fence = Fence { leases: Vec::new(), needs: Vec::with_capacity(batch.len()), refused: Vec::with_capacity(batch.len()) };
        let mut seen = HashSet::new();
        for w in batch {
            let covering = match w {
                Write::CreateRun { parent: None, .. } => {
                    fence.needs.push(None);
                    fence.refused.push(None);
                    continue;
                }
                Write::CreateRun { parent: Some((parent, _)), .. } => held.get(parent),
                w => held.get(w.run()),
            };
            match covering {
                Some((root, generation)) => {
                    if seen.insert(root.clone()) {
                        fence.leases.push((root.clone(), *generation));
                    }
                    fence.needs.push(Some(root.clone()));
                    fence.refused.push(None);
                }
                None => {
                    fence.needs.push(None);
                    fence.refused.push(Some(not_held(w.run())));
                }
            }
        }
        Some(fence)
    }

    /// After a fenced batch committed: sub-story runs join their root's
    /// lease, ended runs leave it, and lost roots are forgotten.
    pub(super) fn after_fenced(&self, batch: &[Write], answers: &[Result<(), Conflict>], lost: &HashSet<String>) {
        let member = self.member();
        for root in lost {
            tracing::warn!(run = %root, "another node holds this run's lease now; this node's writes to it are refused");
            member.forget(root);
        }
        let mut held = member.held();
        for (w, answer) in batch.iter().zip(answers) {
            if answer.is_err() {
                continue;
            }
            match w {
                Write::CreateRun { id, parent: Some((parent, _)), .. } => {
                    if let Some(lease) = held.get(parent).cloned() {
                        held.insert(id.clone(), lease);
                    }
                }
                // A sub-story run's end; the top-level run leaves at release.
                Write::FinishRun { id, .. } if held.get(id).is_some_and(|(root, _)| root != id) => {
                    held.remove(id);
                }
                _ => {}
            }
        }
    }
}

fn not_held(run: &str) -> Conflict {
    Conflict(format!("run {run} is not held by this node (its lease lapsed and another node took it over); this node stops writing to it"))
}

/// Locks the lease rows `fence` names and answers which roots this node no
/// longer holds. Runs inside the batch's transaction, before its writes.
pub(super) async fn check_fence(tx: &deadpool_postgres::Transaction<'_>, node: &str, fence: &Fence) -> anyhow::Result<HashSet<String>> {
    if fence.leases.is_empty() {
        return Ok(HashSet::new());
    }
    let ids: Vec<&str> = fence.leases.iter().map(|(r, _)| r.as_str()).collect();
    let gens: Vec<i64> = fence.leases.iter().map(|(_, g)| *g).collect();
    // By primary key, locked the way the batch's own updates of these rows
    // lock them (a weaker lock, then an update, would cost a MultiXact per
    // row); every claim locks its rows `FOR UPDATE` first, so it waits for
    // (or skips) this lock.
    let stmt = tx.prepare_cached("SELECT id, lease_gen, lease_owner FROM runs WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE").await?;
    let rows = tx.query(&stmt, &[&ids]).await?;
    let wanted: HashMap<&str, i64> = ids.iter().copied().zip(gens.iter().copied()).collect();
    let kept: HashSet<String> = rows
        .iter()
        .filter(|r| r.get::<_, Option<&str>>(2) == Some(node) && wanted.get(r.get::<_, &str>(0)) == Some(&r.get::<_, i64>(1)))
        .map(|r| r.get(0))
        .collect();
    Ok(ids.into_iter().filter(|r| !kept.contains(*r)).map(String::from).collect())
}

impl Fence {
    /// Whether write `n` may be applied, given the roots lost; else why not.
    pub(super) fn verdict(&self, n: usize, lost: &HashSet<String>) -> Result<(), Conflict> {
        if let Some(c) = &self.refused[n] {
            return Err(c.clone());
        }
        match &self.needs[n] {
            Some(root) if lost.contains(root) => Err(not_held(root)),
            _ => Ok(()),
        }
    }
}

/// Keeps a connection listening on [`CHANNEL`], re-made when it drops, and
/// counts up `work` or `ended` for each notification about this store's schema.
async fn listen(config: tokio_postgres::Config, work: watch::Sender<u64>, ended: watch::Sender<u64>) {
    use futures::StreamExt as _;
    loop {
        let attempt = async {
            let (client, mut connection) = config.connect(NoTls).await?;
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            // Notifications arrive only through the connection's own stream.
            let pump = tokio::spawn(async move {
                let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
                while let Some(Ok(message)) = messages.next().await {
                    if let tokio_postgres::AsyncMessage::Notification(n) = message {
                        let _ = tx.send(n.payload().to_string());
                    }
                }
            });
            let schema: String = client.query_one("SELECT current_schema()::text", &[]).await?.get(0);
            client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
            // Anything may have happened while this node was not listening.
            work.send_modify(|n| *n += 1);
            ended.send_modify(|n| *n += 1);
            let (is_work, is_ended) = (format!("{schema} work"), format!("{schema} ended"));
            while let Some(payload) = rx.recv().await {
                if payload == is_work {
                    work.send_modify(|n| *n += 1);
                } else if payload == is_ended {
                    ended.send_modify(|n| *n += 1);
                }
            }
            pump.abort();
            anyhow::Ok(())
        };
        match attempt.await {
            Ok(()) => tracing::warn!("the connection listening for cluster work closed; listening again"),
            Err(e) => tracing::warn!("cannot listen for cluster work: {e:#}; trying again"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

impl Cluster for PgStore {
    fn node(&self) -> &str {
        &self.member().node
    }

    fn lease(&self) -> Duration {
        self.member().lease
    }

    fn claim(&self, n: usize, limits: &HashMap<String, usize>, default_limit: usize) -> anyhow::Result<Claims> {
        let member = self.member();
        let (node, lease_ms) = (member.node.clone(), i(member.lease.as_millis() as u64));
        // Candidates beyond `n`: some may belong to stories at their limit.
        let candidates = (n.saturating_mul(4)).clamp(16, 1024) as i64;
        let limits: HashMap<String, i64> = limits.iter().map(|(s, l)| (s.clone(), (*l).min(i64::MAX as usize) as i64)).collect();
        let otherwise = default_limit.min(i64::MAX as usize) as i64;
        let claimed: Claims = self
            .block(async {
                let mut client = self.client().await?;
                let tx = client.transaction().await?;
                tx.batch_execute("SET LOCAL synchronous_commit = off").await?;
                // Only stories below their limit: a story's backlog at its limit
                // must not hide the runs of others behind it.
                let sql = format!(
                    "SELECT story, COUNT(*) FILTER (WHERE lease_owner IS NOT NULL AND lease_until_ms >= {NOW_MS}),
                        COUNT(*) FILTER (WHERE {FREE}) FROM runs WHERE {OPEN} GROUP BY story"
                );
                let by_story = tx.query(&sql, &[]).await?;
                // Runs no live node holds, before this claim.
                let free: i64 = by_story.iter().map(|r| r.get::<_, i64>(2)).sum();
                let open: Vec<String> =
                    by_story.iter().filter(|r| r.get::<_, i64>(1) < limits.get(r.get::<_, &str>(0)).copied().unwrap_or(otherwise)).map(|r| r.get(0)).collect();
                if open.is_empty() || n == 0 {
                    return Ok((Vec::new(), Vec::new(), free, HashSet::new()));
                }
                let sql = format!(
                    "SELECT id, story, lease_owner IS NOT NULL FROM runs WHERE {OPEN} AND story = ANY($2) AND {FREE}
                 ORDER BY created_ms, id LIMIT $1 FOR UPDATE SKIP LOCKED"
                );
                let rows = tx.query(&sql, &[&candidates, &open]).await?;
                let mut by_story: BTreeMap<String, Vec<String>> = BTreeMap::new();
                // Held by a node whose lease lapsed: even a run still `queued`
                // may have been executing there (its start not yet committed).
                let mut lapsed: HashSet<String> = HashSet::new();
                for r in &rows {
                    by_story.entry(r.get(1)).or_default().push(r.get(0));
                    if r.get::<_, bool>(2) {
                        lapsed.insert(r.get(0));
                    }
                }
                let mut take: Vec<String> = Vec::new();
                // Story by story in a fixed order, so two claiming nodes never deadlock.
                for (story, ids) in by_story {
                    if take.len() >= n {
                        break;
                    }
                    let limit = limits.get(&story).copied().unwrap_or(otherwise);
                    // Exclusive: several runs at once are counted exactly (see warden_story_room).
                    tx.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", &[&LOCK_STORY, &story]).await?;
                    let live = format!("SELECT COUNT(*) FROM runs WHERE story = $1 AND {OPEN} AND lease_owner IS NOT NULL AND lease_until_ms >= {NOW_MS}");
                    let held: i64 = tx.query_one(&live, &[&story]).await?.get(0);
                    let room = (limit - held).max(0) as usize;
                    take.extend(ids.into_iter().take(room.min(n - take.len())));
                }
                let sql = format!(
                    "UPDATE runs SET lease_owner = $1, lease_gen = lease_gen + 1, lease_until_ms = {NOW_MS} + $2 WHERE id = ANY($3)
                 RETURNING id, story, state, lease_gen"
                );
                let rows = tx.query(&sql, &[&node, &lease_ms, &take]).await?;
                let interrupted: Vec<String> = rows.iter().filter(|r| r.get::<_, &str>(2) == "running").map(|r| r.get(0)).collect();
                // Sub-story runs of interrupted runs: resuming ends them, under the root's lease.
                let children = tx.query("SELECT id, parent_run FROM runs WHERE parent_run = ANY($1)", &[&interrupted]).await?;
                tx.commit().await?;
                Ok((rows, children, free, lapsed))
            })
            .map(|(rows, children, free, lapsed)| {
                let mut held = member.held();
                let mut out = Vec::with_capacity(rows.len());
                for r in &rows {
                    let id: String = r.get(0);
                    held.insert(id.clone(), (id.clone(), r.get(3)));
                    let started = r.get::<_, &str>(2) == "running";
                    out.push(Claimed { interrupted: started || lapsed.contains(&id), started, id, story: r.get(1) });
                }
                for c in &children {
                    let (child, parent): (String, String) = (c.get(0), c.get(1));
                    if let Some(lease) = held.get(&parent).cloned() {
                        held.insert(child, lease);
                    }
                }
                Claims { more_waiting: free > out.len() as i64, runs: out }
            })?;
        Ok(claimed)
    }

    fn create_and_claim(&self, run: &NewRun, limit: usize) -> anyhow::Result<bool> {
        let member = self.member();
        let (node, lease_ms) = (member.node.clone(), i(member.lease.as_millis() as u64));
        let (id, story, team, trigger) = (t(run.id).into_owned(), t(run.story).into_owned(), t(run.team).into_owned(), t(run.trigger).into_owned());
        let (input, created, limit) = (t(&run.input.to_string()).into_owned(), i(crate::audit::now_ms()), limit.min(i64::MAX as usize) as i64);
        let generation: Option<i64> = self.block(async {
            let client = self.client().await?;
            let stmt = client.prepare_cached("SELECT warden_create_run($1, $2, $3, $4, $5, $6, $7, $8, $9)").await?;
            Ok(client.query_one(&stmt, &[&id, &story, &team, &trigger, &input, &created, &node, &lease_ms, &limit]).await?.get(0))
        })?;
        if let Some(g) = generation {
            member.held().insert(run.id.to_string(), (run.id.to_string(), g));
        }
        Ok(generation.is_some())
    }

    fn claim_run(&self, id: &str, story: &str, limit: usize) -> anyhow::Result<bool> {
        let member = self.member();
        let (node, lease_ms) = (member.node.clone(), i(member.lease.as_millis() as u64));
        let (run, story_name, limit) = (t(id).into_owned(), t(story).into_owned(), limit.min(i64::MAX as usize) as i64);
        let generation: Option<i64> = self.block(async {
            let client = self.client().await?;
            let stmt = client.prepare_cached("SELECT warden_claim_run($1, $2, $3, $4, $5)").await?;
            Ok(client.query_one(&stmt, &[&run, &story_name, &node, &lease_ms, &limit]).await?.get(0))
        })?;
        if let Some(g) = generation {
            member.held().insert(id.to_string(), (id.to_string(), g));
        }
        Ok(generation.is_some())
    }

    fn release(&self, id: &str) {
        self.member().forget(id);
    }

    fn renew(&self) -> anyhow::Result<Vec<String>> {
        let member = self.member();
        let leases: Vec<(String, i64)> = member.held().iter().filter(|(run, (root, _))| run == &root).map(|(_, (root, g))| (root.clone(), *g)).collect();
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let (node, lease_ms) = (member.node.clone(), i(member.lease.as_millis() as u64));
        let ids: Vec<String> = leases.iter().map(|(r, _)| r.clone()).collect();
        let kept: HashSet<String> = self.block(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            tx.batch_execute("SET LOCAL synchronous_commit = off").await?;
            // By primary key. A lease this node holds again after losing it
            // was claimed again, with a new generation in `held`, so the owner
            // alone tells whether it is still this node's.
            let sql = format!("UPDATE runs SET lease_until_ms = {NOW_MS} + $2 WHERE id = ANY($3) AND lease_owner = $1 RETURNING id");
            let rows = tx.query(&sql, &[&node, &lease_ms, &ids]).await?;
            tx.commit().await?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })?;
        let lost: Vec<String> = leases.into_iter().map(|(r, _)| r).filter(|r| !kept.contains(r)).collect();
        for root in &lost {
            tracing::warn!(run = %root, "this node's lease on the run was taken by another node; its writes are refused from now on");
            member.forget(root);
        }
        Ok(lost)
    }

    fn offer(&self, id: &str) -> anyhow::Result<()> {
        let id = t(id).into_owned();
        self.block(async {
            let client = self.client().await?;
            let (run, channel): ([&(dyn tokio_postgres::types::ToSql + Sync); 1], [&(dyn tokio_postgres::types::ToSql + Sync); 1]) = ([&id], [&CHANNEL]);
            // Pipelined; the notification goes out once the offer is committed.
            let (a, b) = futures::join!(
                client.execute("UPDATE runs SET lease_until_ms = NULL WHERE id = $1 AND lease_owner IS NULL", &run),
                client.execute("SELECT pg_notify($1, current_schema()::text || ' work')", &channel)
            );
            a?;
            b?;
            Ok(())
        })
    }

    fn ended_among(&self, ids: &[String]) -> anyhow::Result<Vec<String>> {
        let ids = ids.iter().map(|i| t(i).into_owned()).collect::<Vec<String>>();
        self.block(async {
            let client = self.client().await?;
            let stmt = client.prepare_cached("SELECT id FROM runs WHERE id = ANY($1) AND state IN ('succeeded', 'failed', 'waiting')").await?;
            Ok(client.query(&stmt, &[&ids]).await?.iter().map(|r| r.get(0)).collect())
        })
    }

    fn work_announced(&self) -> watch::Receiver<u64> {
        self.member().work.subscribe()
    }

    fn runs_ended(&self) -> watch::Receiver<u64> {
        self.member().ended.subscribe()
    }
}

/// Tells listening nodes that a run ended (a story's slot freed, a waiting
/// caller's answer ready); sent in the batch's transaction, so it is
/// delivered only if the batch commits.
pub(super) async fn notify_ended(tx: &deadpool_postgres::Transaction<'_>) -> Result<(), tokio_postgres::Error> {
    let stmt = tx.prepare_cached("SELECT pg_notify($1, current_schema()::text || ' ended')").await?;
    tx.execute(&stmt, &[&CHANNEL]).await.map(|_| ())
}
