//! Serve settings: each one from the command line (or its environment
//! variable), else the policy's `[server]`, else the default named here.

use crate::policy::{Role, ServerConfig};
use anyhow::anyhow;
use std::path::PathBuf;
use std::time::Duration;

pub use crate::policy::triggers::DEFAULT_LISTEN;
/// The run store when neither a flag, `$WARDEN_DB` nor `[server] db` names one.
pub const DEFAULT_DB: &str = ".warden/runs.db";
/// The worker count's floor and ceiling when it is sized from memory.
pub const MIN_WORKERS: usize = 64;
pub const MAX_WORKERS: usize = 1024;
/// Memory set aside per worker when sizing the default: a run parked in a
/// polling sleep costs ~70 KiB (BENCHMARKS.md), a plugin that parses a
/// large response a few MiB. Each instance stays capped by its grant.
pub const MEMORY_PER_WORKER: u64 = 4 << 20;
pub const DEFAULT_DRAIN_SECS: u64 = 30;
/// How long a node's claim on a run lasts unless renewed (PostgreSQL): after
/// a node dies, its runs resume elsewhere within this time.
pub const DEFAULT_LEASE_SECS: u64 = 15;

/// What the command line asked for; `None` defers to `[server]`.
#[derive(Debug, Clone, Default)]
pub struct ServeFlags {
    pub listen: Option<String>,
    pub db: Option<PathBuf>,
    pub stories: Option<PathBuf>,
    pub workers: Option<usize>,
    pub drain_secs: Option<u64>,
    pub role: Option<Role>,
    pub lease_secs: Option<u64>,
}

/// The settings `warden serve` runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct ServeSettings {
    pub listen: String,
    pub db: PathBuf,
    pub stories: PathBuf,
    pub workers: usize,
    pub drain: Duration,
    pub role: Role,
    pub lease: Duration,
}

impl ServeSettings {
    /// Flag > `[server]` > default. Only the stories folder has no default.
    pub fn resolve(flags: ServeFlags, cfg: &ServerConfig) -> anyhow::Result<ServeSettings> {
        let stories = flags.stories.or_else(|| cfg.stories.clone()).ok_or_else(|| anyhow!("give --stories DIR (or [server] stories in the policy)"))?;
        Ok(ServeSettings {
            listen: flags.listen.or_else(|| cfg.listen.clone()).unwrap_or_else(|| DEFAULT_LISTEN.into()),
            db: flags.db.or_else(|| cfg.db.clone()).unwrap_or_else(|| PathBuf::from(DEFAULT_DB)),
            stories,
            workers: flags.workers.or(cfg.workers).unwrap_or_else(|| default_workers(available_memory())),
            drain: Duration::from_secs(flags.drain_secs.or(cfg.drain_secs).unwrap_or(DEFAULT_DRAIN_SECS)),
            role: flags.role.or(cfg.role).unwrap_or_default(),
            lease: Duration::from_secs(flags.lease_secs.or(cfg.lease_secs).unwrap_or(DEFAULT_LEASE_SECS)),
        })
    }
}

/// Memory the kernel says is available for new work (`MemAvailable`), if known.
pub fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = info.lines().find_map(|l| l.strip_prefix("MemAvailable:"))?.trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kib * 1024)
}

/// Workers when none is configured: half of the available memory at
/// [`MEMORY_PER_WORKER`] each, within [`MIN_WORKERS`]..=[`MAX_WORKERS`]
/// (the floor when the memory is unknown). Runs mostly wait — on HTTP, on a
/// polling sleep — so a few dozen workers leave a machine idle while a
/// backlog grows.
pub fn default_workers(available: Option<u64>) -> usize {
    available.map_or(MIN_WORKERS, |m| ((m / 2 / MEMORY_PER_WORKER) as usize).clamp(MIN_WORKERS, MAX_WORKERS))
}

/// Plugin instances that may be alive at once for `workers` (a `for_each`
/// step runs several): four per worker, at most 4,096 (each reserves address
/// space in the pooling allocator; memory is only used when touched).
pub fn instance_pool(workers: usize) -> u32 {
    (workers.saturating_mul(4)).clamp(64, 4096) as u32
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_default_worker_count_follows_memory_within_bounds() {
        assert_eq!(default_workers(None), MIN_WORKERS, "unknown memory: the floor");
        assert_eq!(default_workers(Some(256 << 20)), MIN_WORKERS, "a small machine keeps the floor");
        assert_eq!(default_workers(Some(2 << 30)), 256, "2 GiB available: half of it at 4 MiB per worker");
        assert_eq!(default_workers(Some(64 << 30)), MAX_WORKERS);
        assert_eq!(instance_pool(1024), 4096);
        assert_eq!(instance_pool(2), 64);
    }

    use super::*;

    #[test]
    fn a_flag_beats_the_policy_which_beats_the_default() {
        let cfg = ServerConfig { listen: Some("0.0.0.0:9000".into()), workers: Some(8), stories: Some("s".into()), ..Default::default() };
        let s = ServeSettings::resolve(ServeFlags { workers: Some(2), ..Default::default() }, &cfg).unwrap();
        assert_eq!((s.listen.as_str(), s.workers, s.db.to_str().unwrap()), ("0.0.0.0:9000", 2, DEFAULT_DB));
        let s = ServeSettings::resolve(ServeFlags::default(), &ServerConfig { stories: Some("s".into()), ..Default::default() }).unwrap();
        assert_eq!(s.workers, default_workers(available_memory()), "no flag, no [server] workers: sized from memory");
        assert_eq!(s.drain, Duration::from_secs(DEFAULT_DRAIN_SECS));
    }

    #[test]
    fn without_a_stories_folder_serve_says_how_to_give_one() {
        let e = ServeSettings::resolve(ServeFlags::default(), &ServerConfig::default()).unwrap_err();
        assert!(e.to_string().contains("--stories"), "{e}");
    }
}
