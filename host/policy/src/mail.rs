//! Mail policy: `[relays.NAME]` (where mail goes, with which login) and a
//! grant's `smtp = { relay, senders, recipient_domains, … }` (what a plugin may send).

use super::credentials::SecretSource;
use crate::limits::SizeValue;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use toml::Spanned;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayTls {
    /// Plain SMTP (only sensible to a relay on this machine).
    None,
    /// Upgrade with STARTTLS (submission, port 587).
    StartTls,
    /// TLS from the first byte (port 465).
    Tls,
}

/// One `[relays.NAME]` table.
#[derive(Debug, Clone)]
pub struct Relay {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub tls: RelayTls,
    pub auth: Option<(String, SecretSource)>,
    pub default_from: Option<String>,
    pub timeout: Duration,
}

/// A grant's `smtp = { … }`.
#[derive(Debug, Clone)]
pub struct MailGrant {
    pub relay: Arc<Relay>,
    /// `user@domain` exactly, or `@domain` for any sender at that domain.
    pub senders: Vec<String>,
    /// `domain` exactly, or `*.domain` for its subdomains.
    pub recipient_domains: Vec<String>,
    pub max_recipients: usize,
    pub max_message_bytes: u64,
    pub max_messages: u32,
}

pub(super) fn parse_relay(name: &str, r: RawRelay, base: &Path) -> Result<Relay, String> {
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
        return Err(format!("relays.{name}: tls = \"none\" would send the relay password in clear to {host}; use starttls or tls"));
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

pub(super) fn parse_mail_grant(plugin: &str, m: RawMailGrant, relays: &BTreeMap<String, Arc<Relay>>) -> Result<MailGrant, String> {
    let relay = relays.get(&m.relay).cloned().ok_or_else(|| format!("grants.{plugin}.smtp names relay `{}` but there is no [relays.{}]", m.relay, m.relay))?;
    if m.recipient_domains.is_empty() {
        return Err(format!("grants.{plugin}.smtp.recipient_domains is empty, so every message would be refused; list the domains it may write to"));
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRelay {
    pub(super) host: Spanned<String>,
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
pub(super) struct RawMailGrant {
    relay: String,
    #[serde(default)]
    senders: Vec<String>,
    #[serde(default)]
    recipient_domains: Vec<String>,
    max_recipients: Option<usize>,
    max_message_bytes: Option<SizeValue>,
    max_messages: Option<u32>,
}
