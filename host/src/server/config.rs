//! Serve settings: each one from the command line (or its environment
//! variable), else the policy's `[server]`, else the default named here.

use crate::policy::ServerConfig;
use anyhow::anyhow;
use std::path::PathBuf;
use std::time::Duration;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// The run store when neither a flag, `$WARDEN_DB` nor `[server] db` names one.
pub const DEFAULT_DB: &str = ".warden/runs.db";
pub const DEFAULT_WORKERS: usize = 64;
pub const DEFAULT_DRAIN_SECS: u64 = 30;

/// What the command line asked for; `None` defers to `[server]`.
#[derive(Debug, Clone, Default)]
pub struct ServeFlags {
    pub listen: Option<String>,
    pub db: Option<PathBuf>,
    pub stories: Option<PathBuf>,
    pub workers: Option<usize>,
    pub drain_secs: Option<u64>,
}

/// The settings `warden serve` runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct ServeSettings {
    pub listen: String,
    pub db: PathBuf,
    pub stories: PathBuf,
    pub workers: usize,
    pub drain: Duration,
}

impl ServeSettings {
    /// Flag > `[server]` > default. Only the stories folder has no default.
    pub fn resolve(flags: ServeFlags, cfg: &ServerConfig) -> anyhow::Result<ServeSettings> {
        let stories = flags
            .stories
            .or_else(|| cfg.stories.clone())
            .ok_or_else(|| anyhow!("give --stories DIR (or [server] stories in the policy)"))?;
        Ok(ServeSettings {
            listen: flags.listen.or_else(|| cfg.listen.clone()).unwrap_or_else(|| DEFAULT_LISTEN.into()),
            db: flags.db.or_else(|| cfg.db.clone()).unwrap_or_else(|| PathBuf::from(DEFAULT_DB)),
            stories,
            workers: flags.workers.or(cfg.workers).unwrap_or(DEFAULT_WORKERS),
            drain: Duration::from_secs(flags.drain_secs.or(cfg.drain_secs).unwrap_or(DEFAULT_DRAIN_SECS)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flag_beats_the_policy_which_beats_the_default() {
        let cfg = ServerConfig { listen: Some("0.0.0.0:9000".into()), workers: Some(8), stories: Some("s".into()), ..Default::default() };
        let s = ServeSettings::resolve(ServeFlags { workers: Some(2), ..Default::default() }, &cfg).unwrap();
        assert_eq!((s.listen.as_str(), s.workers, s.db.to_str().unwrap()), ("0.0.0.0:9000", 2, DEFAULT_DB));
        assert_eq!(s.drain, Duration::from_secs(DEFAULT_DRAIN_SECS));
    }

    #[test]
    fn without_a_stories_folder_serve_says_how_to_give_one() {
        let e = ServeSettings::resolve(ServeFlags::default(), &ServerConfig::default()).unwrap_err();
        assert!(e.to_string().contains("--stories"), "{e}");
    }
}
