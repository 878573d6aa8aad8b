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

/// Seconds a signed webhook's timestamp may differ from the server's clock.
pub const DEFAULT_TOLERANCE_SECS: u64 = 300;

/// How a webhook's sender signs it (`signature = "…"` on a trigger).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureScheme {
    /// `X-Warden-Signature: t=<unix secs>,v1=<hex HMAC-SHA256 of "<t>.<story>.<body>">`:
    /// bound to the story and a time window; replays are refused. The default.
    Warden,
    /// GitHub: `X-Hub-Signature-256: sha256=<hex HMAC of the body>`; replays
    /// are refused by `X-GitHub-Delivery`.
    GitHub,
    /// Slack: `X-Slack-Signature: v0=<hex HMAC of "v0:<ts>:<body>">` with `X-Slack-Request-Timestamp`.
    Slack,
    /// Stripe-style: `Stripe-Signature: t=<ts>,v1=<hex HMAC of "<t>.<body>">`.
    Stripe,
    /// `X-Warden-Signature: sha256=<hex HMAC of the body>`: no timestamp, so a
    /// captured request stays valid; only for senders that can do nothing else.
    BodyOnly,
}

impl SignatureScheme {
    fn parse(text: &str) -> Option<SignatureScheme> {
        Some(match text {
            "warden" => SignatureScheme::Warden,
            "github" => SignatureScheme::GitHub,
            "slack" => SignatureScheme::Slack,
            "stripe" => SignatureScheme::Stripe,
            "body-hmac" => SignatureScheme::BodyOnly,
            _ => return None,
        })
    }
}

/// What a schedule does about ticks missed while no node was running
/// (`catch_up = "skip" | "once"` on a trigger).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CatchUp {
    /// Missed ticks are gone; the next tick fires as usual. The default.
    #[default]
    Skip,
    /// At start, one run for the latest missed tick, however many were missed.
    Once,
}

/// What one `warden serve` node does in a cluster (`--role`, `[server] role`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    /// Takes webhooks and executes runs. The default; a SQLite store allows only this.
    #[default]
    All,
    /// Takes webhooks and answers the API; leaves every run to worker nodes.
    Intake,
    /// Executes runs from the shared queue and answers the API; takes no webhooks.
    Worker,
}

impl Role {
    pub fn parse(text: &str) -> Result<Role, String> {
        match text {
            "all" => Ok(Role::All),
            "intake" => Ok(Role::Intake),
            "worker" => Ok(Role::Worker),
            _ => Err(format!("role `{text}` is unknown; use all (the default), intake or worker")),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Role::All => "all",
            Role::Intake => "intake",
            Role::Worker => "worker",
        }
    }
    /// Whether this node executes runs.
    pub fn executes(self) -> bool {
        self != Role::Intake
    }
    /// Whether this node takes webhooks.
    pub fn takes_webhooks(self) -> bool {
        self != Role::Worker
    }
}

/// `[triggers.STORY]`: a webhook (with its HMAC secret) and/or a schedule.
#[derive(Debug, Clone)]
pub struct Trigger {
    pub story: String,
    /// The webhook's HMAC-SHA256 key; without one the story has no webhook.
    pub secret: Option<SecretSource>,
    pub signature: SignatureScheme,
    /// How far a signed timestamp may be from now, and how long a seen request is remembered.
    pub tolerance_secs: u64,
    /// Callers may ask to wait for the output (`?wait=true`).
    pub allow_sync: bool,
    pub max_body: u64,
    /// Runs of this story executing at once.
    pub concurrency: usize,
    /// Cron expression (with seconds: `sec min hour day month weekday`).
    pub schedule: Option<String>,
    /// The zone the schedule's hours are in (`schedule_timezone`, default UTC).
    pub timezone: chrono_tz::Tz,
    pub schedule_input: serde_json::Value,
    pub catch_up: CatchUp,
    pub line: u64,
}

/// Where `warden serve` listens when neither `--listen` nor `[server] listen` says.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// `[server]`: defaults for `warden serve` (flags override them).
#[derive(Debug, Clone, Default)]
pub struct ServerConfig {
    pub listen: Option<String>,
    pub db: Option<PathBuf>,
    pub stories: Option<PathBuf>,
    pub workers: Option<usize>,
    pub drain_secs: Option<u64>,
    pub role: Option<Role>,
    pub lease_secs: Option<u64>,
    /// Whether action steps are recorded for `warden runs replay` (default true).
    pub record: Option<bool>,
    /// When set, `/api/*` requires `Authorization: Bearer <this secret>`.
    pub api_token: Option<SecretSource>,
    /// Where people reach this server: the base of approval links
    /// (default `http://` + `listen`).
    pub public_url: Option<String>,
    /// The Slack app's signing secret: with it, `POST /slack/interactions`
    /// lets a button pressed in Slack decide an approval.
    pub slack_signing_secret: Option<SecretSource>,
    /// Where Slack's `response_url`s may point (default `https://hooks.slack.com`):
    /// warden answers a button press there (the decision, or why not).
    pub slack_hooks_url: Option<String>,
    /// The operator secret approval links and console sessions are keyed
    /// from (`link_secret_env` / `link_secret_file`; default the environment
    /// variable `WARDEN_LINK_SECRET`). See `warden::approval::operator_secret`.
    pub link_secret: Option<SecretSource>,
}

pub(super) fn parse_trigger(story: &str, t: RawTrigger, base: &Path, line: u64) -> Result<Trigger, String> {
    let secret = match (t.secret_env, t.secret_file) {
        (Some(e), None) => Some(SecretSource::Env(e)),
        (None, Some(f)) => Some(SecretSource::File(base.join(f))),
        (None, None) => None,
        _ => return Err(format!("triggers.{story}: give one of secret_env or secret_file, not both")),
    };
    if secret.is_none() && t.schedule.is_none() {
        return Err(format!("triggers.{story} has neither a webhook secret (secret_env/secret_file) nor a schedule, so nothing can start it"));
    }
    let signature = match t.signature.as_deref() {
        None => SignatureScheme::Warden,
        Some(s) => SignatureScheme::parse(s)
            .ok_or_else(|| format!("triggers.{story}.signature `{s}` is unknown; use warden (timestamped, the default), github, slack, stripe or body-hmac"))?,
    };
    let tolerance_secs = t.tolerance_secs.unwrap_or(DEFAULT_TOLERANCE_SECS);
    if tolerance_secs == 0 || tolerance_secs > 3600 {
        return Err(format!("triggers.{story}.tolerance_secs must be 1..3600"));
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
    let timezone = match &t.schedule_timezone {
        None => chrono_tz::Tz::UTC,
        Some(_) if t.schedule.is_none() => return Err(format!("triggers.{story}: schedule_timezone needs a schedule")),
        Some(z) => z.parse::<chrono_tz::Tz>().map_err(|_| {
            format!("triggers.{story}.schedule_timezone `{z}` is not an IANA time zone; write one like \"Europe/Dublin\" or \"America/New_York\"")
        })?,
    };
    let max_body = match &t.max_body {
        Some(v) => v.to_bytes().map_err(|e| format!("triggers.{story}.max_body: {e}"))?,
        None => DEFAULT_MAX_BODY,
    };
    let catch_up = match t.catch_up.as_deref() {
        None | Some("skip") => CatchUp::Skip,
        Some("once") => CatchUp::Once,
        Some(other) => return Err(format!("triggers.{story}.catch_up `{other}` is unknown; use skip (the default) or once")),
    };
    if t.catch_up.is_some() && t.schedule.is_none() {
        return Err(format!("triggers.{story}: catch_up needs a schedule"));
    }
    let concurrency = t.concurrency.unwrap_or(DEFAULT_CONCURRENCY);
    if concurrency == 0 {
        return Err(format!("triggers.{story}.concurrency must be at least 1"));
    }
    Ok(Trigger {
        story: story.to_string(),
        secret,
        signature,
        tolerance_secs,
        allow_sync: t.allow_sync,
        max_body,
        concurrency,
        schedule: t.schedule,
        timezone,
        schedule_input: t.schedule_input.map(|v| serde_json::to_value(v).unwrap_or_default()).unwrap_or(serde_json::json!({})),
        catch_up,
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
    pub(super) schedule_timezone: Option<String>,
    pub(super) schedule_input: Option<toml::Value>,
    pub(super) catch_up: Option<String>,
    pub(super) signature: Option<String>,
    pub(super) tolerance_secs: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub(super) listen: Option<String>,
    pub(super) db: Option<String>,
    pub(super) stories: Option<String>,
    pub(super) workers: Option<usize>,
    pub(super) drain_secs: Option<u64>,
    pub(super) role: Option<String>,
    pub(super) lease_secs: Option<u64>,
    pub(super) record: Option<bool>,
    pub(super) api_token_env: Option<String>,
    pub(super) public_url: Option<String>,
    pub(super) slack_signing_secret_env: Option<String>,
    pub(super) slack_hooks_url: Option<String>,
    pub(super) link_secret_env: Option<String>,
    pub(super) link_secret_file: Option<String>,
}
