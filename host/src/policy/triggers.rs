//! Triggers (`[triggers.STORY]`: webhook secret, schedule, concurrency) and
//! `[server]` (defaults for `warden serve`).

use super::credentials::SecretSource;
use crate::limits::SizeValue;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Largest webhook body a trigger accepts unless it sets `max_body`.
pub const DEFAULT_MAX_BODY: u64 = 256 * 1024;
/// Runs of one story executing at once unless its trigger sets `concurrency`.
pub const DEFAULT_CONCURRENCY: usize = 16;

/// `[triggers.STORY]`: a webhook (with its HMAC secret) and/or a schedule.
#[derive(Debug, Clone)]
pub struct Trigger {
    pub story: String,
    /// The webhook's HMAC-SHA256 key; without one the story has no webhook.
    pub secret: Option<SecretSource>,
    /// Callers may ask to wait for the output (`?wait=true`).
    pub allow_sync: bool,
    pub max_body: u64,
    /// Runs of this story executing at once.
    pub concurrency: usize,
    /// Cron expression (with seconds: `sec min hour day month weekday`).
    pub schedule: Option<String>,
    pub schedule_input: serde_json::Value,
    pub line: u64,
}

/// `[server]`: defaults for `warden serve` (flags override them).
#[derive(Debug, Clone, Default)]
pub struct ServerConfig {
    pub listen: Option<String>,
    pub db: Option<PathBuf>,
    pub stories: Option<PathBuf>,
    pub workers: Option<usize>,
    pub drain_secs: Option<u64>,
    /// When set, `/api/*` requires `Authorization: Bearer <this secret>`.
    pub api_token: Option<SecretSource>,
}

pub(super) fn parse_trigger(story: &str, t: RawTrigger, base: &Path, line: u64) -> Result<Trigger, String> {
    let secret = match (t.secret_env, t.secret_file) {
        (Some(e), None) => Some(SecretSource::Env(e)),
        (None, Some(f)) => Some(SecretSource::File(base.join(f))),
        (None, None) => None,
        _ => return Err(format!("triggers.{story}: give one of secret_env or secret_file, not both")),
    };
    if secret.is_none() && t.schedule.is_none() {
        return Err(format!(
            "triggers.{story} has neither a webhook secret (secret_env/secret_file) nor a schedule, so nothing can start it"
        ));
    }
    if t.allow_sync && secret.is_none() {
        return Err(format!("triggers.{story}: allow_sync needs a webhook (secret_env or secret_file)"));
    }
    if let Some(cron) = &t.schedule {
        use std::str::FromStr;
        cron::Schedule::from_str(cron).map_err(|e| {
            format!("triggers.{story}.schedule `{cron}` is not a cron expression ({e}); use `sec min hour day month weekday`, e.g. \"0 */15 * * * *\"")
        })?;
    }
    let max_body = match &t.max_body {
        Some(v) => v.to_bytes().map_err(|e| format!("triggers.{story}.max_body: {e}"))?,
        None => DEFAULT_MAX_BODY,
    };
    let concurrency = t.concurrency.unwrap_or(DEFAULT_CONCURRENCY);
    if concurrency == 0 {
        return Err(format!("triggers.{story}.concurrency must be at least 1"));
    }
    Ok(Trigger {
        story: story.to_string(),
        secret,
        allow_sync: t.allow_sync,
        max_body,
        concurrency,
        schedule: t.schedule,
        schedule_input: t.schedule_input.map(|v| serde_json::to_value(v).unwrap_or_default()).unwrap_or(serde_json::json!({})),
        line,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTrigger {
    pub(super) secret_env: Option<String>,
    pub(super) secret_file: Option<String>,
    #[serde(default)]
    pub(super) allow_sync: bool,
    pub(super) max_body: Option<SizeValue>,
    pub(super) concurrency: Option<usize>,
    pub(super) schedule: Option<String>,
    pub(super) schedule_input: Option<toml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub(super) listen: Option<String>,
    pub(super) db: Option<String>,
    pub(super) stories: Option<String>,
    pub(super) workers: Option<usize>,
    pub(super) drain_secs: Option<u64>,
    pub(super) api_token_env: Option<String>,
}

