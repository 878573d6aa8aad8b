//! Vetting: a step is trusted because of who vetted it and what bytes it is,
//! not because of where the file lies.
//!
//! A signature (`<plugin>.wasm.sig`, JSON) is an Ed25519 signature over the
//! signing key's name, the component's sha256 and the name and version its
//! `describe()` returns. A team runs a plugin only if the policy pins its
//! digest, or a key the team trusts signed exactly these bytes under exactly
//! this manifest — and, with `require_signature`, only the latter. A signed
//! plugin runs only under its own name (`[plugins.NAME]` must be the name it
//! was signed as), never older than the policy's `min_version`, and never
//! with a revoked key, whatever alias the key is listed under.

use crate::policy::keys::parse_hex32;
use crate::policy::{PluginEntry, Policy, Team, Version};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

const CONTEXT: &str = "warden-plugin-signature-v2";

/// The `.sig` file that travels beside a `.wasm`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SignatureFile {
    /// Name of the key in the policy's `[keys.NAME]`.
    pub key: String,
    pub name: String,
    pub version: String,
    pub sha256: String,
    /// Hex Ed25519 signature over [`message`].
    pub signature: String,
}

/// What exactly is signed: context, the key's name, manifest name and version, and the digest.
pub fn message(key: &str, name: &str, version: &str, sha256: &str) -> Vec<u8> {
    format!("{CONTEXT}\n{key}\n{name}\n{version}\n{sha256}\n").into_bytes()
}

pub fn sig_path(wasm: &Path) -> PathBuf {
    let mut p = wasm.as_os_str().to_owned();
    p.push(".sig");
    PathBuf::from(p)
}

/// A new key pair: (secret seed hex, public key hex).
pub fn keygen() -> anyhow::Result<(String, String)> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no randomness for a key: {e}"))?;
    let key = SigningKey::from_bytes(&seed);
    Ok((hex::encode(seed), hex::encode(key.verifying_key().to_bytes())))
}

/// Signs a component's digest and manifest.
pub fn sign(secret_hex: &str, key_name: &str, name: &str, version: &str, sha256: &str) -> Result<SignatureFile, String> {
    let key = SigningKey::from_bytes(&parse_hex32("the secret key", secret_hex)?);
    let sig = key.sign(&message(key_name, name, version, sha256));
    Ok(SignatureFile { key: key_name.into(), name: name.into(), version: version.into(), sha256: sha256.into(), signature: hex::encode(sig.to_bytes()) })
}

/// Why a team will run a plugin.
#[derive(Debug, Clone, PartialEq)]
pub enum Trust {
    /// The policy pins this digest.
    Pinned,
    /// Signed by this trusted key.
    Signed { key: String },
}

impl std::fmt::Display for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Trust::Pinned => f.write_str("digest pinned in the policy"),
            Trust::Signed { key } => write!(f, "signed by trusted key {key}"),
        }
    }
}

/// Verifies a signature file against the policy's keys, for a team.
pub fn verify(policy: &Policy, team: Option<&Team>, sig: &SignatureFile, sha256: &str, name: &str, version: &str) -> Result<String, String> {
    if sig.sha256 != sha256 {
        return Err(format!("the signature covers sha256 {}, but the file is {sha256}: the component changed after signing", short(&sig.sha256)));
    }
    if sig.name != name || sig.version != version {
        return Err(format!("the signature is for {} {}, but the component describes itself as {name} {version}", sig.name, sig.version));
    }
    let Some(key) = policy.keys.get(&sig.key) else {
        return Err(format!("it is signed by key `{}`, which the policy does not know ([keys.{}])", sig.key, sig.key));
    };
    if key.revoked {
        return Err(format!("it is signed by key `{}`, which is revoked", sig.key));
    }
    // Revocation follows the key, not its alias.
    if let Some(alias) = policy.keys.values().find(|k| k.revoked && k.public == key.public) {
        return Err(format!("it is signed by key `{}`, the same key as `{}`, which is revoked", sig.key, alias.name));
    }
    if let Some(t) = team {
        if !t.trusted_keys.contains(&sig.key) {
            return Err(format!("it is signed by key `{}`, which team {} does not trust", sig.key, t.name));
        }
    }
    let bytes: [u8; 64] = hex::decode(&sig.signature).ok().and_then(|b| b.try_into().ok()).ok_or_else(|| "the signature is not 64 bytes of hex".to_string())?;
    key.public
        .verify(&message(&sig.key, name, version, sha256), &Signature::from_bytes(&bytes))
        .map_err(|_| format!("the signature does not verify with key `{}`", sig.key))?;
    Ok(sig.key.clone())
}

/// The manifest's version is not below the policy's `min_version` for `entry`.
pub fn version_allowed(entry: &PluginEntry, version: &str) -> Result<(), String> {
    let Some(min) = entry.min_version else { return Ok(()) };
    match Version::parse(version) {
        Some(v) if v >= min => Ok(()),
        Some(v) => Err(format!("plugin {} is version {v}, older than plugins.{}.min_version {min}", entry.name, entry.name)),
        None => Err(format!(
            "plugin {} reports version `{}`, which is not major.minor.patch, and plugins.{}.min_version is set",
            entry.name,
            version.escape_debug(),
            entry.name
        )),
    }
}

/// Decides whether `team` may run the plugin of `entry`, whose bytes have this
/// digest and whose manifest says this name and version.
pub fn check(policy: &Policy, team: &Team, entry: &PluginEntry, sha256: &str, name: &str, version: &str) -> Result<Trust, String> {
    let plugin = &entry.name;
    let refuse = |why: String| Err(format!("team {} refuses plugin {plugin}: {why}", team.name));
    if let Err(why) = version_allowed(entry, version) {
        return refuse(why);
    }
    if !team.require_signature && entry.sha256.as_deref() == Some(sha256) {
        return Ok(Trust::Pinned);
    }
    let wasm = &entry.path;
    let path = sig_path(wasm);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(_) => {
            let need = if team.require_signature { "a signature is required" } else { "it is neither pinned (plugins.*.sha256) nor signed" };
            return refuse(format!("{need}, and there is no {} (sign it with `warden plugin sign`)", path.display()));
        }
    };
    let sig: SignatureFile = match serde_json::from_str(&text) {
        Ok(s) => s,
        Err(e) => return refuse(format!("{} is not a warden signature file: {e}", path.display())),
    };
    if let Err(why) = verify(policy, Some(team), &sig, sha256, name, version) {
        return refuse(why);
    }
    // A signature vouches for the plugin it names, so it runs under that name's grant only.
    if name != plugin.as_str() {
        return refuse(format!(
            "it is signed as plugin `{}`, but the policy runs it as [plugins.{plugin}]; a signed plugin gets only its own name's grant (rename the table or use the right file)",
            name.escape_debug()
        ));
    }
    Ok(Trust::Signed { key: sig.key })
}

fn short(h: &str) -> &str {
    &h[..h.floor_char_boundary(12)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::keys::parse_public_key;

    #[test]
    fn a_signature_binds_the_digest_and_the_manifest() {
        let (secret, public) = keygen().unwrap();
        let vk = parse_public_key(&public).unwrap();
        let sig = sign(&secret, "k", "jira-ticket", "1.0.0", "ab").unwrap();
        let bytes: [u8; 64] = hex::decode(&sig.signature).unwrap().try_into().unwrap();
        let s = Signature::from_bytes(&bytes);
        assert!(vk.verify(&message("k", "jira-ticket", "1.0.0", "ab"), &s).is_ok());
        assert!(vk.verify(&message("k", "jira-ticket", "1.0.1", "ab"), &s).is_err());
        assert!(vk.verify(&message("k", "jira-ticket", "1.0.0", "ac"), &s).is_err());
        assert!(vk.verify(&message("k", "evil", "1.0.0", "ab"), &s).is_err());
        assert!(vk.verify(&message("other-alias", "jira-ticket", "1.0.0", "ab"), &s).is_err(), "the key's name is signed too");
    }
}
