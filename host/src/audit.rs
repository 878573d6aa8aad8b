//! Audit records: one for every capability call that reaches for the outside
//! world, allowed or denied. They carry names and decisions, never secret values.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    Allowed,
    Denied,
}

/// One HTTP attempt.
#[derive(Debug, Clone, Serialize)]
pub struct AuditRecord {
    /// Unix milliseconds when the attempt started.
    pub at_ms: u64,
    pub capability: &'static str,
    pub plugin: String,
    pub run_id: String,
    pub story: String,
    pub step: String,
    pub team: String,
    pub method: String,
    /// The URL as the guest asked for it, with any secret spelling redacted.
    pub url: String,
    pub decision: Decision,
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
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
