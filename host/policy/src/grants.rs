//! Grants: `[grants.PLUGIN]` (and a team's own `[teams.T.grants.PLUGIN]`):
//! the rules, credentials, mail policy and limits one plugin runs with.

use super::credentials::CredentialSpec;
use super::mail::{parse_mail_grant, MailGrant, RawMailGrant, Relay};
use super::rule::EgressRule;
use super::{PluginEntry, PolicyError};
use crate::limits::{Bytes, Limits, SizeValue, MAX_MEMORY_BYTES};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use toml::Spanned;

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
    /// Whether outgoing HTTP carries the run's W3C `traceparent` (telemetry
    /// on): opt-in, since it tells the other side the call came from warden.
    pub traceparent: bool,
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
            traceparent: false,
        }
    }
}

pub(super) type ErrFn<'a> = dyn Fn(std::ops::Range<usize>, String) -> PolicyError + 'a;

pub(super) fn parse_grant(
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
        return Err(err(where_, format!("[{table}.{plugin}] grants a plugin that has no [plugins.{plugin}] entry; add the plugin or fix the name")));
    }
    let mut rules = Vec::new();
    for r in &g.allow {
        let rule = EgressRule::parse(r.get_ref()).map_err(|m| err(r.span(), m))?;
        if rule.is_any_host() && !g.allow_any_host {
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
        let spec = credentials
            .get(c.get_ref())
            .ok_or_else(|| err(c.span(), format!("grant {plugin} names credential `{}` but there is no [credentials.{}]", c.get_ref(), c.get_ref())))?;
        // Two auto credentials for one origin would leave the host to guess
        // which secret to send: refused here when their bindings are the same
        // spelling (overlaps such as a wildcard are refused per request).
        if spec.auto {
            let clash = granted.values().find(|o: &&Arc<CredentialSpec>| o.auto && o.hosts.iter().any(|b| spec.hosts.iter().any(|h| h.origin == b.origin)));
            if let Some(other) = clash {
                return Err(err(
                    c.span(),
                    format!(
                        "grant {plugin} has credentials `{}` and `{}` both inject = \"auto\" for the same host; make one of them \"named\" (the default), or bind them to different hosts",
                        other.name,
                        spec.name
                    ),
                ));
            }
        }
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
    Ok(Grant { plugin: plugin.to_string(), rules, credentials: granted, limits, allow_any_host: g.allow_any_host, mail, traceparent: g.traceparent })
}

pub(super) fn parse_limits(raw: RawLimits) -> Result<Limits, String> {
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
    size(&raw.recording_bytes, "recording_bytes", &mut l.recording_bytes)?;
    if let Some(v) = raw.cpu_ms {
        l.cpu_ms = v;
    }
    if let Some(v) = raw.wall_ms {
        l.wall_ms = v;
    }
    if let Some(v) = raw.http_requests {
        l.http_requests = v;
    }
    if let Some(v) = raw.denials {
        l.denials = v;
    }
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
pub(super) struct RawGrant {
    #[serde(default)]
    allow: Vec<Spanned<String>>,
    #[serde(default)]
    credentials: Vec<Spanned<String>>,
    limits: Option<Spanned<RawLimits>>,
    #[serde(default)]
    allow_any_host: bool,
    smtp: Option<Spanned<RawMailGrant>>,
    #[serde(default)]
    traceparent: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    memory: Option<SizeValue>,
    cpu_ms: Option<u64>,
    wall_ms: Option<u64>,
    http_requests: Option<u32>,
    denials: Option<u32>,
    request_bytes: Option<SizeValue>,
    response_bytes: Option<SizeValue>,
    log_bytes: Option<SizeValue>,
    output_bytes: Option<SizeValue>,
    recording_bytes: Option<SizeValue>,
}
