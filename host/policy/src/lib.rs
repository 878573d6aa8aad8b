//! The operator's policy (`warden.toml`): which plugins exist, what each may
//! reach, with which credentials and within which limits — plain, validated
//! configuration data, with no runtime state (a capability keeps its own,
//! such as the OAuth token caches, in the sandbox crate).
//!
//! The file is parsed once into typed rules. Anything wrong is refused with
//! `file:line: what is wrong; how to fix it`. Deny by default: a plugin without
//! a grant reaches nothing.

//! Layout: one file per section — [`credentials`], [`mail`] (relays and smtp
//! grants), [`grants`] (rules and limits), [`keys`] (keys and teams),
//! [`triggers`] (triggers and `[server]`) — over [`origin`], [`target`] and
//! [`rule`], which say how a request is matched; [`limits`] (sizes as
//! operators write them) and [`located`] (a value with its `file:line`)
//! beneath them. This crate is warden's ground floor: it depends on no other
//! warden crate, and everything else builds on it.

pub mod access;
pub mod credentials;
pub mod grants;
pub mod keys;
pub mod limits;
pub mod located;
pub mod mail;
pub mod origin;
pub mod rule;
pub mod target;
pub mod telemetry;
pub mod triggers;

pub use grants::Grant;
pub use keys::{Team, TrustedKey};
pub use telemetry::TelemetryConfig;
pub use triggers::{CatchUp, Role, ServerConfig, Trigger};

use credentials::{CredentialSpec, SecretSource};
use grants::{parse_grant, RawGrant};
use keys::{RawKey, RawTeam};
use mail::{parse_relay, RawRelay, Relay};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use toml::Spanned;
use triggers::{parse_trigger, RawServer, RawTrigger};

/// A policy error: where, what, and the fix, on one line.
pub type PolicyError = crate::located::Located;

#[derive(Debug, Clone)]
pub struct PluginEntry {
    pub name: String,
    /// Absolute, or relative to the policy file's folder as written.
    pub path: PathBuf,
    /// Lower-case hex sha256 the component must have, when pinned.
    pub sha256: Option<String>,
    /// The lowest version its manifest may report (an older signed build is refused).
    pub min_version: Option<Version>,
    pub line: u64,
}

/// A `major.minor.patch` version (a pre-release or build suffix is ignored for ordering).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u64, pub u64, pub u64);

impl Version {
    pub fn parse(text: &str) -> Option<Version> {
        let core = text.trim().trim_start_matches('v').split(['-', '+']).next()?;
        let mut parts = core.split('.').map(|p| p.parse::<u64>().ok());
        let v = Version(parts.next()??, parts.next().unwrap_or(Some(0))?, parts.next().unwrap_or(Some(0))?);
        parts.next().is_none().then_some(v)
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

#[derive(Debug, Clone)]
pub struct Policy {
    /// The file it came from, as shown in errors.
    pub file: String,
    pub plugins: BTreeMap<String, PluginEntry>,
    pub grants: BTreeMap<String, Arc<Grant>>,
    pub credentials: BTreeMap<String, Arc<CredentialSpec>>,
    pub relays: BTreeMap<String, Arc<Relay>>,
    /// How stories are started from outside: webhooks and schedules, by story name.
    pub triggers: BTreeMap<String, Trigger>,
    pub server: ServerConfig,
    /// `[telemetry]`: traces (off unless configured here or by OTEL_* variables).
    pub telemetry: TelemetryConfig,
    /// Signing keys plugins may be signed with.
    pub keys: BTreeMap<String, TrustedKey>,
    /// Teams: their own grants, the keys they trust. With any team defined,
    /// every story must belong to one and plugins must be pinned or signed.
    pub teams: BTreeMap<String, Team>,
    /// `[resources]`: values imported Tines stories read as `RESOURCE.name`.
    pub resources: Arc<serde_json::Map<String, serde_json::Value>>,
}

impl Policy {
    /// An empty policy: no plugins, no grants. Everything is denied.
    pub fn empty() -> Policy {
        Policy {
            file: "<no policy>".into(),
            plugins: BTreeMap::new(),
            grants: BTreeMap::new(),
            credentials: BTreeMap::new(),
            relays: BTreeMap::new(),
            triggers: BTreeMap::new(),
            server: ServerConfig::default(),
            telemetry: TelemetryConfig::default(),
            keys: BTreeMap::new(),
            teams: BTreeMap::new(),
            resources: Arc::default(),
        }
    }

    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|e| PolicyError {
            file: path.display().to_string(),
            line: 0,
            message: format!("cannot read the policy file: {e}"),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Policy::parse(&text, &path.display().to_string(), base)
    }

    /// Parses policy text; relative paths are resolved against `base`.
    pub fn parse(text: &str, file: &str, base: &Path) -> Result<Policy, PolicyError> {
        let err = |span: std::ops::Range<usize>, message: String| PolicyError { file: file.to_string(), line: line_of(text, span.start), message };
        let raw: RawPolicy = toml::from_str(text).map_err(|e| {
            let msg = e.message().trim().to_string();
            err(e.span().unwrap_or(0..0), format!("{msg} (see the policy example in README.md)"))
        })?;

        let mut credentials = BTreeMap::new();
        for (name, c) in raw.credentials {
            let span = c.kind.span();
            let spec = credentials::parse(&name, c, base).map_err(|m| err(span.clone(), m))?;
            credentials.insert(name, Arc::new(spec));
        }

        let mut relays = BTreeMap::new();
        for (name, r) in raw.relays {
            let span = r.host.span();
            let relay = parse_relay(&name, r, base).map_err(|m| err(span.clone(), m))?;
            relays.insert(name, Arc::new(relay));
        }

        for c in credentials.values() {
            if let Some(r) = c.relays.iter().find(|r| !relays.contains_key(*r)) {
                return Err(err(0..0, format!("credentials.{} is bound to relay:{r}, but there is no [relays.{r}]", c.name)));
            }
        }

        let mut plugins = BTreeMap::new();
        for (name, p) in raw.plugins {
            let span = p.path.span();
            let sha256 = match p.sha256 {
                Some(s) => {
                    let v = s.get_ref().to_ascii_lowercase();
                    if v.len() != 64 || !v.bytes().all(|b| b.is_ascii_hexdigit()) {
                        return Err(err(s.span(), format!("plugins.{name}.sha256 must be 64 hex digits; `warden plugin digest <wasm>` prints it")));
                    }
                    Some(v)
                }
                None => None,
            };
            let min_version = match p.min_version {
                Some(v) => Some(Version::parse(v.get_ref()).ok_or_else(|| {
                    err(v.span(), format!("plugins.{name}.min_version `{}` is not a version; write major.minor.patch, e.g. \"1.3.0\"", v.get_ref()))
                })?),
                None => None,
            };
            let path = base.join(p.path.into_inner());
            plugins.insert(name.clone(), PluginEntry { name, path, sha256, min_version, line: line_of(text, span.start) });
        }

        let mut grants = BTreeMap::new();
        for (plugin, g) in raw.grants {
            let grant = parse_grant(&plugin, g, &plugins, &credentials, &relays, &err, "grants")?;
            grants.insert(plugin.clone(), Arc::new(grant));
        }

        let mut keys = BTreeMap::new();
        for (name, k) in raw.keys {
            let span = k.public_key.span();
            let public = keys::parse_public_key(k.public_key.get_ref()).map_err(|m| err(span, format!("keys.{name}: {m}")))?;
            keys.insert(name.clone(), TrustedKey { name, public, revoked: k.revoked });
        }

        let mut teams = BTreeMap::new();
        for (name, t) in raw.teams {
            let span = t.span();
            let t = t.into_inner();
            for k in &t.trusted_keys {
                if !keys.contains_key(k) {
                    return Err(err(span.clone(), format!("teams.{name} trusts key `{k}` but there is no [keys.{k}]")));
                }
            }
            let mut team_grants = BTreeMap::new();
            for (plugin, g) in t.grants {
                let grant = parse_grant(&plugin, g, &plugins, &credentials, &relays, &err, &format!("teams.{name}.grants"))?;
                team_grants.insert(plugin, Arc::new(grant));
            }
            let stories = t.stories.iter().map(|s| base.join(s)).collect();
            let api_token = t.api_token_env.map(SecretSource::Env);
            teams.insert(
                name.clone(),
                Team { name, trusted_keys: t.trusted_keys, require_signature: t.require_signature, grants: team_grants, stories, api_token },
            );
        }
        for (cname, c) in &credentials {
            if let Some(owner) = &c.team {
                if !teams.contains_key(owner) {
                    return Err(err(0..0, format!("credentials.{cname} belongs to team `{owner}`, which has no [teams.{owner}]")));
                }
            }
        }

        let mut triggers = BTreeMap::new();
        for (story, t) in raw.triggers {
            let span = t.span();
            let line = line_of(text, span.start);
            let t = t.into_inner();
            let trigger = parse_trigger(&story, t, base, line).map_err(|m| err(span, m))?;
            triggers.insert(story, trigger);
        }
        let server = match raw.server {
            Some(s) => {
                let span = s.span();
                let s = s.into_inner();
                let role = match &s.role {
                    Some(r) => Some(Role::parse(r).map_err(|m| err(span.clone(), format!("[server] {m}")))?),
                    None => None,
                };
                if let Some(u) = &s.public_url {
                    let ok = url::Url::parse(u)
                        .is_ok_and(|p| matches!(p.scheme(), "http" | "https") && p.host().is_some() && p.query().is_none() && p.fragment().is_none());
                    if !ok {
                        return Err(err(
                            span,
                            format!("[server] public_url `{u}` must be an http(s) URL like https://warden.corp.example (approval links start with it)"),
                        ));
                    }
                }
                if let Some(u) = &s.slack_hooks_url {
                    let ok = url::Url::parse(u)
                        .is_ok_and(|p| matches!(p.scheme(), "http" | "https") && p.host().is_some() && p.path() == "/" && p.query().is_none());
                    if !ok {
                        return Err(err(
                            span,
                            format!("[server] slack_hooks_url `{u}` must be an origin like https://hooks.slack.com (Slack's response_urls must start with it)"),
                        ));
                    }
                }
                let link_secret = match (s.link_secret_env, s.link_secret_file) {
                    (Some(e), None) => Some(SecretSource::Env(e)),
                    (None, Some(f)) => Some(SecretSource::File(base.join(f))),
                    (None, None) => None,
                    _ => return Err(err(span, "[server] give one of link_secret_env or link_secret_file, not both".into())),
                };
                if s.lease_secs.is_some_and(|l| !(1..=3600).contains(&l)) {
                    return Err(err(span, "[server] lease_secs must be 1..3600 (seconds a node's claim on a run lasts unless renewed)".into()));
                }
                ServerConfig {
                    listen: s.listen,
                    db: s.db.map(|d| base.join(d)),
                    stories: s.stories.map(|d| base.join(d)),
                    workers: s.workers,
                    drain_secs: s.drain_secs,
                    role,
                    lease_secs: s.lease_secs,
                    record: s.record,
                    api_token: s.api_token_env.map(SecretSource::Env),
                    public_url: s.public_url.map(|u| u.trim_end_matches('/').to_string()),
                    slack_signing_secret: s.slack_signing_secret_env.map(SecretSource::Env),
                    slack_hooks_url: s.slack_hooks_url.map(|u| u.trim_end_matches('/').to_string()),
                    link_secret,
                }
            }
            None => ServerConfig::default(),
        };
        let telemetry = match raw.telemetry {
            Some(t) => {
                let span = t.span();
                telemetry::parse(t.into_inner()).map_err(|m| err(span, m))?
            }
            None => TelemetryConfig::default(),
        };
        let mut resources = serde_json::Map::new();
        for (name, v) in raw.resources {
            let span = v.span();
            let value = resource(&name, v.into_inner(), base).map_err(|m| err(span, m))?;
            resources.insert(name, value);
        }
        Ok(Policy { file: file.to_string(), plugins, grants, credentials, relays, triggers, server, telemetry, keys, teams, resources: Arc::new(resources) })
    }

    /// The `[plugins.*]` entry whose file is `path` (compared after resolving links).
    pub fn plugin_at(&self, path: &Path) -> Option<&PluginEntry> {
        let canonical = path.canonicalize().ok()?;
        self.plugins.values().find(|e| e.path.canonicalize().ok().as_deref() == Some(canonical.as_path()))
    }

    /// The team whose `stories` hold the story file `file` (the most specific
    /// entry wins: a file named outright over the folder it lies in).
    pub fn team_of_story(&self, file: &Path) -> Option<&str> {
        let file = file.canonicalize().ok()?;
        self.teams
            .values()
            .flat_map(|t| t.stories.iter().map(move |entry| (t, entry)))
            .filter_map(|(t, entry)| entry.canonicalize().ok().filter(|e| file.starts_with(e)).map(|e| (e.components().count(), t)))
            .max_by_key(|(depth, _)| *depth)
            .map(|(_, t)| t.name.as_str())
    }

    /// The grant for `plugin`, or deny-all when the policy has none.
    pub fn grant_for(&self, plugin: &str) -> Arc<Grant> {
        self.grants.get(plugin).cloned().unwrap_or_else(|| Arc::new(Grant::deny_all(plugin)))
    }

    /// The grant `plugin` has when it runs for `team`: the team's own grant if
    /// it has one, else the global one — and never a credential that belongs
    /// to another team, whatever either grant lists.
    pub fn grant_for_team(&self, plugin: &str, team: &str) -> Arc<Grant> {
        let base = self.teams.get(team).and_then(|t| t.grants.get(plugin)).cloned().unwrap_or_else(|| self.grant_for(plugin));
        if base.credentials.values().all(|c| c.team.as_deref().is_none_or(|owner| owner == team)) {
            return base;
        }
        let mut g = (*base).clone();
        g.credentials.retain(|_, c| c.team.as_deref().is_none_or(|owner| owner == team));
        Arc::new(g)
    }

    /// Where `plugin`'s grant for `team` comes from, for `policy explain`.
    pub fn grant_source(&self, plugin: &str, team: &str) -> String {
        if self.teams.get(team).is_some_and(|t| t.grants.contains_key(plugin)) {
            format!("[teams.{team}.grants.{plugin}]")
        } else if self.grants.contains_key(plugin) {
            format!("[grants.{plugin}]")
        } else {
            "no grant (deny all)".into()
        }
    }
}

fn line_of(text: &str, offset: usize) -> u64 {
    text[..offset.min(text.len())].bytes().filter(|b| *b == b'\n').count() as u64 + 1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    plugins: BTreeMap<String, RawPlugin>,
    #[serde(default)]
    grants: BTreeMap<String, Spanned<RawGrant>>,
    #[serde(default)]
    credentials: BTreeMap<String, credentials::RawCredential>,
    #[serde(default)]
    relays: BTreeMap<String, RawRelay>,
    #[serde(default)]
    triggers: BTreeMap<String, Spanned<RawTrigger>>,
    server: Option<Spanned<RawServer>>,
    telemetry: Option<Spanned<telemetry::RawTelemetry>>,
    #[serde(default)]
    keys: BTreeMap<String, RawKey>,
    #[serde(default)]
    teams: BTreeMap<String, Spanned<RawTeam>>,
    #[serde(default)]
    resources: BTreeMap<String, Spanned<toml::Value>>,
}

/// Largest resource read from a file.
const MAX_RESOURCE_FILE: u64 = 1024 * 1024;

/// One `[resources]` entry: its value, or `{ file = "path" }` — a JSON file's
/// value, or a text file's text.
fn resource(name: &str, v: toml::Value, base: &Path) -> Result<serde_json::Value, String> {
    if let toml::Value::Table(t) = &v {
        if let (Some(toml::Value::String(f)), 1) = (t.get("file"), t.len()) {
            let path = base.join(f);
            let size = std::fs::metadata(&path).map_err(|e| format!("resources.{name}: cannot read {}: {e}", path.display()))?.len();
            if size > MAX_RESOURCE_FILE {
                return Err(format!("resources.{name}: {} is {size} bytes; a resource file is at most {MAX_RESOURCE_FILE}", path.display()));
            }
            let text = std::fs::read_to_string(&path).map_err(|e| format!("resources.{name}: cannot read {}: {e}", path.display()))?;
            return Ok(serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text.trim_end_matches('\n').to_string())));
        }
    }
    serde_json::to_value(v).map_err(|e| format!("resources.{name}: {e}"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlugin {
    path: Spanned<String>,
    sha256: Option<Spanned<String>>,
    min_version: Option<Spanned<String>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Policy, PolicyError> {
        Policy::parse(text, "warden.toml", Path::new("/etc/warden"))
    }

    const GOOD: &str = r#"
[plugins.http-fetch]
path = "plugins/http_fetch.wasm"

[grants.http-fetch]
allow = ["GET http://127.0.0.1:8080/*", "POST https://*.example.com/api/*"]
credentials = ["demo"]
limits = { memory = "32MiB", cpu_ms = 1000, wall_ms = 10000, http_requests = 10, response_bytes = "1MiB" }

[credentials.demo]
kind = "bearer"
env = "DEMO_TOKEN"
hosts = ["http://127.0.0.1:8080"]
"#;

    #[test]
    fn the_documented_example_parses() {
        let p = parse(GOOD).unwrap();
        let g = p.grant_for("http-fetch");
        assert_eq!(g.rules.len(), 2);
        assert_eq!(g.limits.memory_bytes, 32 * 1024 * 1024);
        assert_eq!(g.limits.http_requests, 10);
        assert!(g.credentials.contains_key("demo"));
        assert_eq!(p.plugins["http-fetch"].path, Path::new("/etc/warden/plugins/http_fetch.wasm"));
    }

    #[test]
    fn a_plugin_without_a_grant_reaches_nothing() {
        let p = parse(GOOD).unwrap();
        let g = p.grant_for("unknown");
        assert!(g.rules.is_empty() && g.credentials.is_empty());
    }

    #[test]
    fn a_bad_rule_is_reported_with_its_line() {
        let text = GOOD.replace("\"GET http://127.0.0.1:8080/*\"", "\"GET ftp://x/*\"");
        let e = parse(&text).unwrap_err();
        assert_eq!(e.line, 6, "{e}");
        assert!(e.to_string().starts_with("warden.toml:6: rule `GET ftp://x/*`"), "{e}");
    }

    #[test]
    fn any_host_needs_a_loud_opt_in() {
        let text = GOOD.replace("\"POST https://*.example.com/api/*\"", "\"GET https://*/*\"");
        let e = parse(&text).unwrap_err();
        assert!(e.message.contains("allow_any_host = true"), "{e}");
        let ok = text.replace("credentials = [\"demo\"]", "credentials = [\"demo\"]\nallow_any_host = true");
        assert!(parse(&ok).is_ok());
    }

    #[test]
    fn unknown_credentials_and_fields_are_refused() {
        let e = parse(&GOOD.replace("credentials = [\"demo\"]", "credentials = [\"nope\"]")).unwrap_err();
        assert!(e.message.contains("no [credentials.nope]"), "{e}");
        let e = parse(&GOOD.replace("env = \"DEMO_TOKEN\"", "env = \"DEMO_TOKEN\"\ntoken = \"x\"")).unwrap_err();
        assert!(e.message.contains("unknown field `token`"), "{e}");
        assert_eq!(e.line, 13);
    }

    #[test]
    fn grants_for_undeclared_plugins_are_refused() {
        let e = parse(&GOOD.replace("[grants.http-fetch]", "[grants.http-fetc]")).unwrap_err();
        assert!(e.message.contains("no [plugins.http-fetc] entry"), "{e}");
    }

    #[test]
    fn limits_are_bounded() {
        let e = parse(&GOOD.replace("\"32MiB\"", "\"8GiB\"")).unwrap_err();
        assert!(e.message.contains("above warden's maximum"), "{e}");
        let e = parse(&GOOD.replace("\"32MiB\"", "\"32 parsecs\"")).unwrap_err();
        assert!(e.message.contains("memory"), "{e}");
    }

    #[test]
    fn credential_kinds_need_their_fields() {
        let e = parse(&GOOD.replace("kind = \"bearer\"", "kind = \"header\"")).unwrap_err();
        assert!(e.message.contains("needs `header"), "{e}");
        let e = parse(&GOOD.replace("hosts = [\"http://127.0.0.1:8080\"]", "hosts = []")).unwrap_err();
        assert!(e.message.contains("could never be sent"), "{e}");
        let e = parse(&GOOD.replace("env = \"DEMO_TOKEN\"", "")).unwrap_err();
        assert!(e.message.contains("exactly one of env"), "{e}");
    }

    #[test]
    fn mail_grants_name_a_relay_and_domains() {
        let text = format!("{GOOD}\n[relays.corp]\nhost = \"127.0.0.1\"\nport = 2525\ntls = \"none\"\ndefault_from = \"warden@corp.example\"\n");
        let ok = text.replace("credentials = [\"demo\"]", "credentials = [\"demo\"]\nsmtp = { relay = \"corp\", recipient_domains = [\"corp.example\"] }");
        let p = parse(&ok).unwrap();
        let m = p.grant_for("http-fetch").mail.clone().unwrap();
        assert_eq!(m.relay.port, 2525);
        assert_eq!(m.senders, vec!["warden@corp.example"]);
        let e = parse(&ok.replace("relay = \"corp\"", "relay = \"nope\"")).unwrap_err();
        assert!(e.message.contains("no [relays.nope]"), "{e}");
        let e = parse(&ok.replace("recipient_domains = [\"corp.example\"]", "recipient_domains = []")).unwrap_err();
        assert!(e.message.contains("every message would be refused"), "{e}");
        let clear = ok.replace("host = \"127.0.0.1\"", "host = \"smtp.corp.example\"\nuser = \"u\"\npassword_env = \"P\"");
        let e = parse(&clear).unwrap_err();
        assert!(e.message.contains("in clear"), "{e}");
    }

    #[test]
    fn triggers_need_a_secret_or_a_schedule() {
        let ok =
            format!("{GOOD}\n[triggers.hunt]\nsecret_env = \"S\"\nallow_sync = true\nschedule = \"0 */5 * * * *\"\nschedule_input = {{ indicator = \"x\" }}\n");
        let p = parse(&ok).unwrap();
        let t = &p.triggers["hunt"];
        assert!(t.allow_sync);
        assert_eq!(t.schedule_input["indicator"], "x");
        let e = parse(&format!("{GOOD}\n[triggers.hunt]\nallow_sync = false\n")).unwrap_err();
        assert!(e.message.contains("nothing can start it"), "{e}");
        let e = parse(&format!("{GOOD}\n[triggers.hunt]\nschedule = \"every minute\"\n")).unwrap_err();
        assert!(e.message.contains("is not a cron expression"), "{e}");
        assert_eq!(e.line, 15);
    }

    #[test]
    fn a_bad_pin_is_explained() {
        let text = GOOD.replace("path = \"plugins/http_fetch.wasm\"", "path = \"x.wasm\"\nsha256 = \"abc\"");
        let e = parse(&text).unwrap_err();
        assert!(e.message.contains("64 hex digits"), "{e}");
    }

    #[test]
    fn the_public_url_of_approval_links_is_an_http_origin() {
        let p = parse(&format!("{GOOD}\n[server]\npublic_url = \"https://warden.corp.example/\"\n")).unwrap();
        assert_eq!(p.server.public_url.as_deref(), Some("https://warden.corp.example"));
        for bad in ["warden.corp.example", "ftp://warden.corp.example", "https://warden.corp.example/?a=1", "https://"] {
            let e = parse(&format!("{GOOD}\n[server]\npublic_url = \"{bad}\"\n")).unwrap_err().to_string();
            assert!(e.contains("warden.toml:") && e.contains("public_url") && e.contains("approval links"), "{bad}: {e}");
        }
    }

    #[test]
    fn telemetry_is_off_unless_configured_and_checked_with_its_line() {
        let p = parse(GOOD).unwrap();
        assert!(p.telemetry.endpoint.is_none());
        let p = parse(&format!(
            "{GOOD}\n[telemetry]\nendpoint = \"http://127.0.0.1:4318/\"\nsample_ratio = 0.25\nheaders_env = {{ \"x-api-key\" = \"OTLP_KEY\" }}\n"
        ))
        .map(|p| p.telemetry);
        let t = p.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((t.endpoint.as_deref(), t.sample_ratio), (Some("http://127.0.0.1:4318"), Some(0.25)));
        for (bad, says) in [
            ("endpoint = \"127.0.0.1:4318\"", "OTLP/HTTP base URL"),
            ("sample_ratio = 1.5", "between 0 and 1"),
            ("headers_env = { \"bad header\" = \"X\" }", "environment variable"),
            ("endpoint_url = \"http://x\"", "unknown field"),
        ] {
            let e = parse(&format!("{GOOD}\n[telemetry]\n{bad}\n")).unwrap_err().to_string();
            assert!(e.contains("warden.toml:") && e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn cluster_settings_and_catch_up_are_checked_with_their_line() {
        let p = parse(&format!("{GOOD}\n[server]\nrole = \"worker\"\nlease_secs = 5\n")).unwrap();
        assert_eq!((p.server.role, p.server.lease_secs), (Some(Role::Worker), Some(5)));
        let e = parse(&format!("{GOOD}\n[server]\nrole = \"boss\"\n")).unwrap_err().to_string();
        assert!(e.contains("role `boss` is unknown; use all") && e.contains("warden.toml:"), "{e}");
        let e = parse(&format!("{GOOD}\n[server]\nlease_secs = 0\n")).unwrap_err().to_string();
        assert!(e.contains("lease_secs must be 1..3600"), "{e}");
        let e = parse(&format!("{GOOD}\n[triggers.hunt]\nschedule = \"0 * * * * *\"\ncatch_up = \"all\"\n")).unwrap_err().to_string();
        assert!(e.contains("catch_up `all` is unknown; use skip (the default) or once"), "{e}");
        let e = parse(&format!("{GOOD}\n[triggers.hunt]\nsecret_env = \"S\"\ncatch_up = \"once\"\n")).unwrap_err().to_string();
        assert!(e.contains("catch_up needs a schedule"), "{e}");
        let p = parse(&format!("{GOOD}\n[triggers.hunt]\nschedule = \"0 * * * * *\"\ncatch_up = \"once\"\n")).unwrap();
        assert_eq!(p.triggers["hunt"].catch_up, CatchUp::Once);
    }

    #[test]
    fn resources_are_values_or_files_and_a_missing_file_is_named() {
        let dir = std::env::temp_dir().join(format!("warden-resources-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("teams.json"), r#"{"soc": ["a@corp.example"]}"#).unwrap();
        std::fs::write(dir.join("banner.txt"), "Handle with care\n").unwrap();
        let text =
            "[resources]\nbase = \"https://api.example.com\"\nlimits = { n = 3 }\nteams = { file = \"teams.json\" }\nbanner = { file = \"banner.txt\" }\n";
        let p = Policy::parse(text, "warden.toml", &dir).unwrap();
        assert_eq!(p.resources["base"], "https://api.example.com");
        assert_eq!(p.resources["limits"], serde_json::json!({"n": 3}));
        assert_eq!(p.resources["teams"], serde_json::json!({"soc": ["a@corp.example"]}));
        assert_eq!(p.resources["banner"], "Handle with care");
        let e = Policy::parse("[resources]\nx = { file = \"nope.json\" }\n", "warden.toml", &dir).unwrap_err().to_string();
        assert!(e.starts_with("warden.toml:2: resources.x: cannot read") && e.contains("nope.json"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_schedule_time_zone_must_be_a_real_one() {
        let ok = parse("[triggers.s]\nschedule = \"0 0 9 * * *\"\nschedule_timezone = \"Europe/Dublin\"\n").unwrap();
        assert_eq!(ok.triggers["s"].timezone, chrono_tz::Europe::Dublin);
        let e = parse("[triggers.s]\nschedule = \"0 0 9 * * *\"\nschedule_timezone = \"Mars/Olympus\"\n").unwrap_err().to_string();
        assert!(e.contains("schedule_timezone `Mars/Olympus` is not an IANA time zone"), "{e}");
        let e = parse("[triggers.s]\nschedule_timezone = \"UTC\"\nsecret_env = \"X\"\n").unwrap_err().to_string();
        assert!(e.contains("schedule_timezone needs a schedule"), "{e}");
    }

    #[test]
    fn a_placeholder_credential_has_a_marker_that_cannot_be_mistaken() {
        let base = "[credentials.c]\nkind = \"placeholder\"\nenv = \"C\"\nhosts = [\"https://api.example.com\"]\n";
        let p = parse(base).unwrap();
        assert_eq!(p.credentials["c"].kind, credentials::CredentialKind::Placeholder { marker: "__warden_credential_c__".into() });
        let e = parse(&format!("{base}placeholder = \"{{{{x}}}}\"\n")).unwrap_err().to_string();
        assert!(e.contains("placeholder `{{x}}` must be at least 12 letters, digits, _ or -"), "{e}");
        let e = parse("[credentials.c]\nkind = \"bearer\"\nplaceholder = \"__long_enough_marker__\"\nenv = \"C\"\nhosts = [\"https://a.example\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`placeholder` belongs to kind \"placeholder\""), "{e}");
    }
}
