//! Audit records: one for every capability call that reaches for the outside
//! world, allowed or denied, and for every stop of the sandbox. They carry
//! names and decisions, never secret values.

use crate::invocation::InvocationInfo;
use serde::{Deserialize, Serialize};

/// What the policy said of a call (an approval's decision by a person is
/// `approval::Decision` in the store, a different thing).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allowed,
    Denied,
}

/// One capability call (or sandbox stop).
#[derive(Debug, Clone, Serialize)]
pub struct AuditRecord {
    /// Unix milliseconds when the attempt started.
    pub at_ms: u64,
    /// `http`, `smtp` or `sandbox`.
    pub capability: &'static str,
    pub plugin: String,
    /// Run, story, step, team and attempt of the invocation.
    #[serde(flatten)]
    pub invocation: InvocationInfo,
    pub method: String,
    /// The URL as the guest asked for it, with any secret spelling redacted.
    pub url: String,
    pub decision: Verdict,
    /// The rule that decided: the allow rule's text, or the name of the denying check.
    pub rule: String,
    /// Why it was denied, or how it failed after being allowed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Credential *name* injected, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// For mail: how many recipients per domain (never the addresses or the body).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recipient_domains: Option<std::collections::BTreeMap<String, u32>>,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub duration_ms: u64,
    /// The OAuth2 token exchanges the host made for this request (an
    /// `oauth2` credential's first use, expiry, or a 401): never the token.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub oauth: Vec<TokenExchange>,
}

/// One OAuth2 client-credentials exchange made by the host.
#[derive(Debug, Clone, Serialize)]
pub struct TokenExchange {
    /// The token endpoint.
    pub url: String,
    /// Why a token was requested: first use, expiry, a 401.
    pub why: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_in_s: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub duration_ms: u64,
}

impl AuditRecord {
    /// A new record for `invocation`: denied until a check says otherwise.
    pub fn new(capability: &'static str, plugin: &str, invocation: &InvocationInfo, method: String, url: String) -> AuditRecord {
        AuditRecord {
            at_ms: now_ms(),
            capability,
            plugin: plugin.to_string(),
            invocation: invocation.clone(),
            method,
            url,
            decision: Verdict::Denied,
            rule: String::new(),
            reason: None,
            credential: None,
            status: None,
            recipient_domains: None,
            request_bytes: 0,
            response_bytes: 0,
            duration_ms: 0,
            oauth: Vec::new(),
        }
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
