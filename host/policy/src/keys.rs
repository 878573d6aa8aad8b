//! Signing keys (`[keys.NAME]`) and teams (`[teams.NAME]`): who vets plugins,
//! and which keys and grants each team's runs use.

use super::credentials::SecretSource;
use super::grants::{Grant, RawGrant};
use ed25519_dalek::VerifyingKey;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use toml::Spanned;

#[derive(Debug, Clone)]
pub struct TrustedKey {
    pub name: String,
    pub public: VerifyingKey,
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
    /// Story files, or folders of them, that belong to this team: the policy,
    /// not a story's own `team:`, decides whose grants and credentials it uses.
    pub stories: Vec<PathBuf>,
    /// A token for `/api/*` that sees this team's runs only.
    pub api_token: Option<SecretSource>,
}

/// 32 bytes from hex (a key or a seed), with an error naming `what`.
pub fn parse_hex32(what: &str, text: &str) -> Result<[u8; 32], String> {
    let bytes = hex::decode(text.trim()).map_err(|_| format!("{what} is not hex"))?;
    bytes.try_into().map_err(|_| format!("{what} must be 32 bytes (64 hex digits)"))
}

pub fn parse_public_key(text: &str) -> Result<VerifyingKey, String> {
    VerifyingKey::from_bytes(&parse_hex32("public_key", text)?).map_err(|e| format!("public_key is not an Ed25519 key: {e}"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKey {
    pub(super) public_key: Spanned<String>,
    #[serde(default)]
    pub(super) revoked: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTeam {
    #[serde(default)]
    pub(super) trusted_keys: Vec<String>,
    #[serde(default)]
    pub(super) require_signature: bool,
    #[serde(default)]
    pub(super) grants: BTreeMap<String, Spanned<RawGrant>>,
    #[serde(default)]
    pub(super) stories: Vec<String>,
    pub(super) api_token_env: Option<String>,
}
