//! The operator's policy (`warden.toml`): which plugins exist, what each may
//! reach, with which credentials and within which limits.
//!
//! The file is parsed once into typed rules. Anything wrong is refused with
//! `file:line: what is wrong; how to fix it`. Deny by default: a plugin without
//! a grant reaches nothing.

pub mod credential;
pub mod rule;

use crate::limits::{Bytes, Limits, SizeValue, MAX_MEMORY_BYTES};
use crate::mail::{MailGrant, Relay, RelayTls};
use credential::{Binding, CredentialKind, CredentialSpec, SecretSource};
use rule::{EgressRule, HostPattern};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use toml::Spanned;

/// A policy error: where, what, and the fix, on one line.
pub type PolicyError = crate::located::Located;

#[derive(Debug, Clone)]
pub struct PluginEntry {
    pub name: String,
    /// Absolute, or relative to the policy file's folder as written.
    pub path: PathBuf,
    /// Lower-case hex sha256 the component must have, when pinned.
    pub sha256: Option<String>,
    pub line: u64,
}

/// What one plugin may do.
#[derive(Debug, Clone)]
pub struct Grant {
    pub plugin: String,
    pub rules: Vec<EgressRule>,
    /// The credentials this plugin may name, by name.
    pub credentials: BTreeMap<String, Arc<CredentialSpec>>,
    pub limits: Limits,
    pub allow_any_host: bool,
    /// Email through a relay, when granted.
    pub mail: Option<MailGrant>,
}

impl Grant {
    /// The grant of a plugin the policy does not mention: nothing, within default limits.
    pub fn deny_all(plugin: &str) -> Grant {
        Grant {
            plugin: plugin.to_string(),
            rules: Vec::new(),
            credentials: BTreeMap::new(),
            limits: Limits::default(),
            allow_any_host: false,
            mail: None,
        }
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
    /// Signing keys plugins may be signed with.
    pub keys: BTreeMap<String, TrustedKey>,
    /// Teams: their own grants, the keys they trust. With any team defined,
    /// every story must belong to one and plugins must be pinned or signed.
    pub teams: BTreeMap<String, Team>,
}

#[derive(Debug, Clone)]
pub struct TrustedKey {
    pub name: String,
    pub public: ed25519_dalek::VerifyingKey,
    pub revoked: bool,
}

#[derive(Debug, Clone)]
pub struct Team {
    pub name: String,
    pub trusted_keys: Vec<String>,
    /// A pinned digest is not enough: the plugin must be signed by a trusted key.
    pub require_signature: bool,
    /// Grants that replace the global `[grants.PLUGIN]` for this team's runs.
    pub grants: BTreeMap<String, Arc<Grant>>,
}

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
            keys: BTreeMap::new(),
            teams: BTreeMap::new(),
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
        let err = |span: std::ops::Range<usize>, message: String| PolicyError {
            file: file.to_string(),
            line: line_of(text, span.start),
            message,
        };
        let raw: RawPolicy = toml::from_str(text).map_err(|e| {
            let msg = e.message().trim().to_string();
            err(e.span().unwrap_or(0..0), format!("{msg} (see the policy example in README.md)"))
        })?;

        let mut credentials = BTreeMap::new();
        for (name, c) in raw.credentials {
            let span = c.kind.span();
            let spec = parse_credential(&name, c, base).map_err(|m| err(span.clone(), m))?;
            credentials.insert(name, Arc::new(spec));
        }

        let mut relays = BTreeMap::new();
        for (name, r) in raw.relays {
            let span = r.host.span();
            let relay = parse_relay(&name, r, base).map_err(|m| err(span.clone(), m))?;
            relays.insert(name, Arc::new(relay));
        }

        let mut plugins = BTreeMap::new();
        for (name, p) in raw.plugins {
            let span = p.path.span();
            let sha256 = match p.sha256 {
                Some(s) => {
                    let v = s.get_ref().to_ascii_lowercase();
                    if v.len() != 64 || !v.bytes().all(|b| b.is_ascii_hexdigit()) {
                        return Err(err(
                            s.span(),
                            format!("plugins.{name}.sha256 must be 64 hex digits; `warden plugin digest <wasm>` prints it"),
                        ));
                    }
                    Some(v)
                }
                None => None,
            };
            let path = base.join(p.path.into_inner());
            plugins.insert(name.clone(), PluginEntry { name, path, sha256, line: line_of(text, span.start) });
        }

        let mut grants = BTreeMap::new();
        for (plugin, g) in raw.grants {
            let grant = parse_grant(&plugin, g, &plugins, &credentials, &relays, &err, "grants")?;
            grants.insert(plugin.clone(), Arc::new(grant));
        }

        let mut keys = BTreeMap::new();
        for (name, k) in raw.keys {
            let span = k.public_key.span();
            let public = crate::vetting::parse_public_key(k.public_key.get_ref()).map_err(|m| err(span, format!("keys.{name}: {m}")))?;
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
            teams.insert(name.clone(), Team { name, trusted_keys: t.trusted_keys, require_signature: t.require_signature, grants: team_grants });
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
            Some(s) => ServerConfig {
                listen: s.listen,
                db: s.db.map(|d| base.join(d)),
                stories: s.stories.map(|d| base.join(d)),
                workers: s.workers,
                drain_secs: s.drain_secs,
                api_token: s.api_token_env.map(SecretSource::Env),
            },
            None => ServerConfig::default(),
        };
        Ok(Policy { file: file.to_string(), plugins, grants, credentials, relays, triggers, server, keys, teams })
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

fn parse_credential(name: &str, c: RawCredential, base: &Path) -> Result<CredentialSpec, String> {
    let need = |field: Option<String>, what: &str| {
        field.ok_or_else(|| format!("credentials.{name}: kind `{}` needs `{what}`", c.kind.get_ref()))
    };
    let kind = match c.kind.get_ref().as_str() {
        "bearer" => CredentialKind::Bearer,
        "header" => CredentialKind::Header {
            name: need(c.header.clone(), "header = \"X-Api-Key\"")?.to_ascii_lowercase(),
            prefix: c.prefix.clone().unwrap_or_default(),
        },
        "basic" => CredentialKind::Basic { user: need(c.user.clone(), "user = \"name\"")? },
        "query" => CredentialKind::Query { param: need(c.param.clone(), "param = \"api_key\"")? },
        other => {
            return Err(format!(
                "credentials.{name}: kind `{other}` is unknown; use header, bearer, basic or query"
            ))
        }
    };
    if let CredentialKind::Header { name: h, .. } = &kind {
        if reqwest::header::HeaderName::from_bytes(h.as_bytes()).is_err() {
            return Err(format!("credentials.{name}: `{h}` is not a valid header name"));
        }
    }
    let source = match (c.env, c.file) {
        (Some(v), None) => SecretSource::Env(v),
        (None, Some(f)) => SecretSource::File(base.join(f)),
        _ => {
            return Err(format!(
                "credentials.{name}: give exactly one of env = \"VAR\" or file = \"path\" for the secret value"
            ))
        }
    };
    if c.hosts.is_empty() {
        return Err(format!(
            "credentials.{name}: `hosts` is empty, so it could never be sent; list the origins it belongs to, e.g. hosts = [\"https://api.example.com\"]"
        ));
    }
    let hosts = c.hosts.iter().map(|h| Binding::parse(h)).collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("credentials.{name}: {e}"))?;
    Ok(CredentialSpec { name: name.to_string(), kind, source, hosts, team: c.team })
}

type ErrFn<'a> = dyn Fn(std::ops::Range<usize>, String) -> PolicyError + 'a;

fn parse_grant(
    plugin: &str,
    g: Spanned<RawGrant>,
    plugins: &BTreeMap<String, PluginEntry>,
    credentials: &BTreeMap<String, Arc<CredentialSpec>>,
    relays: &BTreeMap<String, Arc<Relay>>,
    err: &ErrFn,
    table: &str,
) -> Result<Grant, PolicyError> {
    let where_ = g.span();
    let g = g.into_inner();
    if !plugins.contains_key(plugin) {
        return Err(err(
            where_,
            format!("[{table}.{plugin}] grants a plugin that has no [plugins.{plugin}] entry; add the plugin or fix the name"),
        ));
    }
    let mut rules = Vec::new();
    for r in &g.allow {
        let rule = EgressRule::parse(r.get_ref()).map_err(|m| err(r.span(), m))?;
        if rule.host == HostPattern::Any && !g.allow_any_host {
            return Err(err(
                r.span(),
                format!(
                    "rule `{}` lets {plugin} reach every host on the internet; if that is really meant, set allow_any_host = true in [{table}.{plugin}]",
                    rule.text
                ),
            ));
        }
        rules.push(rule);
    }
    let mut granted = BTreeMap::new();
    for c in &g.credentials {
        let spec = credentials.get(c.get_ref()).ok_or_else(|| {
            err(c.span(), format!("grant {plugin} names credential `{}` but there is no [credentials.{}]", c.get_ref(), c.get_ref()))
        })?;
        granted.insert(c.get_ref().clone(), spec.clone());
    }
    let limits = match g.limits {
        Some(l) => {
            let span = l.span();
            parse_limits(l.into_inner()).map_err(|m| err(span, format!("{table}.{plugin}.limits: {m}")))?
        }
        None => Limits::default(),
    };
    let mail = match g.smtp {
        Some(m) => {
            let span = m.span();
            Some(parse_mail_grant(plugin, m.into_inner(), relays).map_err(|msg| err(span, msg))?)
        }
        None => None,
    };
    Ok(Grant { plugin: plugin.to_string(), rules, credentials: granted, limits, allow_any_host: g.allow_any_host, mail })
}

fn parse_trigger(story: &str, t: RawTrigger, base: &Path, line: u64) -> Result<Trigger, String> {
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
        None => 256 * 1024,
    };
    let concurrency = t.concurrency.unwrap_or(16);
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

fn parse_relay(name: &str, r: RawRelay, base: &Path) -> Result<Relay, String> {
    let host = r.host.into_inner();
    let tls = match r.tls.as_deref().unwrap_or("starttls") {
        "none" => RelayTls::None,
        "starttls" => RelayTls::StartTls,
        "tls" => RelayTls::Tls,
        other => return Err(format!("relays.{name}: tls `{other}` is unknown; use none, starttls or tls")),
    };
    let port = r.port.unwrap_or(match tls {
        RelayTls::None => 25,
        RelayTls::StartTls => 587,
        RelayTls::Tls => 465,
    });
    let auth = match (r.user, r.password_env, r.password_file) {
        (None, None, None) => None,
        (Some(u), Some(e), None) => Some((u, SecretSource::Env(e))),
        (Some(u), None, Some(f)) => Some((u, SecretSource::File(base.join(f)))),
        _ => return Err(format!("relays.{name}: give user with exactly one of password_env or password_file")),
    };
    let local = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if auth.is_some() && tls == RelayTls::None && !local {
        return Err(format!(
            "relays.{name}: tls = \"none\" would send the relay password in clear to {host}; use starttls or tls"
        ));
    }
    Ok(Relay {
        name: name.to_string(),
        host,
        port,
        tls,
        auth,
        default_from: r.default_from,
        timeout: std::time::Duration::from_millis(r.timeout_ms.unwrap_or(15_000)),
    })
}

fn parse_mail_grant(plugin: &str, m: RawMailGrant, relays: &BTreeMap<String, Arc<Relay>>) -> Result<MailGrant, String> {
    let relay = relays.get(&m.relay).cloned().ok_or_else(|| {
        format!("grants.{plugin}.smtp names relay `{}` but there is no [relays.{}]", m.relay, m.relay)
    })?;
    if m.recipient_domains.is_empty() {
        return Err(format!(
            "grants.{plugin}.smtp.recipient_domains is empty, so every message would be refused; list the domains it may write to"
        ));
    }
    if m.senders.is_empty() && relay.default_from.is_none() {
        return Err(format!("grants.{plugin}.smtp.senders is empty; list the addresses (or @domains) it may send as"));
    }
    let mut senders = m.senders;
    if let Some(d) = &relay.default_from {
        if senders.is_empty() {
            senders.push(d.clone());
        }
    }
    let max_message_bytes = match &m.max_message_bytes {
        Some(v) => v.to_bytes().map_err(|e| format!("grants.{plugin}.smtp.max_message_bytes: {e}"))?,
        None => 1024 * 1024,
    };
    Ok(MailGrant {
        relay,
        senders,
        recipient_domains: m.recipient_domains.iter().map(|d| d.to_ascii_lowercase()).collect(),
        max_recipients: m.max_recipients.unwrap_or(10),
        max_message_bytes,
        max_messages: m.max_messages.unwrap_or(5),
    })
}

fn parse_limits(raw: RawLimits) -> Result<Limits, String> {
    let mut l = Limits::default();
    let size = |v: &Option<SizeValue>, field: &str, into: &mut u64| -> Result<(), String> {
        if let Some(v) = v {
            *into = v.to_bytes().map_err(|e| format!("{field}: {e}"))?;
        }
        Ok(())
    };
    size(&raw.memory, "memory", &mut l.memory_bytes)?;
    size(&raw.request_bytes, "request_bytes", &mut l.request_bytes)?;
    size(&raw.response_bytes, "response_bytes", &mut l.response_bytes)?;
    size(&raw.log_bytes, "log_bytes", &mut l.log_bytes)?;
    size(&raw.output_bytes, "output_bytes", &mut l.output_bytes)?;
    if let Some(v) = raw.cpu_ms { l.cpu_ms = v; }
    if let Some(v) = raw.wall_ms { l.wall_ms = v; }
    if let Some(v) = raw.http_requests { l.http_requests = v; }
    if l.memory_bytes > MAX_MEMORY_BYTES {
        return Err(format!("memory {} is above warden's maximum of {}", Bytes(l.memory_bytes), Bytes(MAX_MEMORY_BYTES)));
    }
    if l.memory_bytes < 1024 * 1024 {
        return Err(format!("memory {} is too small to instantiate a component; give at least 1MiB", Bytes(l.memory_bytes)));
    }
    if l.cpu_ms == 0 || l.wall_ms == 0 {
        return Err("cpu_ms and wall_ms must be above 0".into());
    }
    Ok(l)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    plugins: BTreeMap<String, RawPlugin>,
    #[serde(default)]
    grants: BTreeMap<String, Spanned<RawGrant>>,
    #[serde(default)]
    credentials: BTreeMap<String, RawCredential>,
    #[serde(default)]
    relays: BTreeMap<String, RawRelay>,
    #[serde(default)]
    triggers: BTreeMap<String, Spanned<RawTrigger>>,
    server: Option<RawServer>,
    #[serde(default)]
    keys: BTreeMap<String, RawKey>,
    #[serde(default)]
    teams: BTreeMap<String, Spanned<RawTeam>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    public_key: Spanned<String>,
    #[serde(default)]
    revoked: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTeam {
    #[serde(default)]
    trusted_keys: Vec<String>,
    #[serde(default)]
    require_signature: bool,
    #[serde(default)]
    grants: BTreeMap<String, Spanned<RawGrant>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrigger {
    secret_env: Option<String>,
    secret_file: Option<String>,
    #[serde(default)]
    allow_sync: bool,
    max_body: Option<SizeValue>,
    concurrency: Option<usize>,
    schedule: Option<String>,
    schedule_input: Option<toml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
    db: Option<String>,
    stories: Option<String>,
    workers: Option<usize>,
    drain_secs: Option<u64>,
    api_token_env: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRelay {
    host: Spanned<String>,
    port: Option<u16>,
    tls: Option<String>,
    user: Option<String>,
    password_env: Option<String>,
    password_file: Option<String>,
    default_from: Option<String>,
    timeout_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMailGrant {
    relay: String,
    #[serde(default)]
    senders: Vec<String>,
    #[serde(default)]
    recipient_domains: Vec<String>,
    max_recipients: Option<usize>,
    max_message_bytes: Option<SizeValue>,
    max_messages: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlugin {
    path: Spanned<String>,
    sha256: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGrant {
    #[serde(default)]
    allow: Vec<Spanned<String>>,
    #[serde(default)]
    credentials: Vec<Spanned<String>>,
    limits: Option<Spanned<RawLimits>>,
    #[serde(default)]
    allow_any_host: bool,
    smtp: Option<Spanned<RawMailGrant>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    memory: Option<SizeValue>,
    cpu_ms: Option<u64>,
    wall_ms: Option<u64>,
    http_requests: Option<u32>,
    request_bytes: Option<SizeValue>,
    response_bytes: Option<SizeValue>,
    log_bytes: Option<SizeValue>,
    output_bytes: Option<SizeValue>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCredential {
    kind: Spanned<String>,
    header: Option<String>,
    prefix: Option<String>,
    user: Option<String>,
    param: Option<String>,
    env: Option<String>,
    file: Option<String>,
    #[serde(default)]
    hosts: Vec<String>,
    /// The team that owns it; other teams' runs can never use it.
    team: Option<String>,
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
        let ok = format!("{GOOD}\n[triggers.hunt]\nsecret_env = \"S\"\nallow_sync = true\nschedule = \"0 */5 * * * *\"\nschedule_input = {{ indicator = \"x\" }}\n");
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
}
