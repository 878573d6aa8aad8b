//! Layers 8 and 10: a credential is injected into the request only after every
//! check passed, and every spelling of it is scrubbed from what comes back.

use crate::policy::credentials::{CredentialKind, CredentialSpec, Secret};
use base64::Engine as _;

/// What the host adds to a request, and what it must scrub from the answer.
pub struct Injection {
    pub header: Option<(String, String)>,
    pub query: Option<(String, String)>,
    /// Every spelling of the secret that could come back.
    pub redact: Vec<Vec<u8>>,
}

/// Builds the injection of `spec` with its value `secret`.
pub fn injection(spec: &CredentialSpec, secret: &Secret) -> Injection {
    let value = secret.expose();
    let mut redact = vec![value.as_bytes().to_vec()];
    let percent = url::form_urlencoded::byte_serialize(value.as_bytes()).collect::<String>();
    if percent != value {
        redact.push(percent.into_bytes());
    }
    let (header, query) = match &spec.kind {
        CredentialKind::Bearer => (Some(("authorization".to_string(), format!("Bearer {value}"))), None),
        CredentialKind::Header { name, prefix } => (Some((name.clone(), format!("{prefix}{value}"))), None),
        CredentialKind::Basic { user } => {
            let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{value}"));
            redact.push(encoded.clone().into_bytes());
            (Some(("authorization".to_string(), format!("Basic {encoded}"))), None)
        }
        CredentialKind::Query { param } => (None, Some((param.clone(), value.to_string()))),
    };
    // Longest first so a spelling containing another is replaced whole.
    redact.sort_by_key(|n| std::cmp::Reverse(n.len()));
    Injection { header, query, redact }
}

pub const REDACTED: &[u8] = b"[REDACTED]";

/// Layer 10: replaces every occurrence of every needle with `[REDACTED]`.
/// Needles should be ordered longest first.
pub fn redact(haystack: &[u8], needles: &[Vec<u8>]) -> Vec<u8> {
    let mut out = haystack.to_vec();
    for needle in needles.iter().filter(|n| !n.is_empty()) {
        if out.len() < needle.len() {
            continue;
        }
        let mut result = Vec::with_capacity(out.len());
        let mut i = 0;
        while i < out.len() {
            if out[i..].starts_with(needle) {
                result.extend_from_slice(REDACTED);
                i += needle.len();
            } else {
                result.push(out[i]);
                i += 1;
            }
        }
        out = result;
    }
    out
}

/// [`redact`] for text.
pub fn redact_str(text: &str, needles: &[Vec<u8>]) -> String {
    String::from_utf8_lossy(&redact(text.as_bytes(), needles)).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::credentials::SecretSource;

    #[test]
    fn basic_injection_redacts_the_encoded_form_too() {
        let spec = CredentialSpec {
            name: "j".into(),
            kind: CredentialKind::Basic { user: "bot@corp.example".into() },
            source: SecretSource::Env("X".into()),
            hosts: vec![],
            team: None,
        };
        let inj = injection(&spec, &Secret::new("tok".into()));
        let (_, v) = inj.header.unwrap();
        let encoded = v.strip_prefix("Basic ").unwrap();
        assert!(inj.redact.iter().any(|r| r == encoded.as_bytes()));
        assert!(inj.redact.iter().any(|r| r == b"tok"));
    }

    #[test]
    fn redaction_replaces_every_occurrence() {
        let out = redact(b"a SECRET b SECRETSECRET", &[b"SECRET".to_vec()]);
        assert_eq!(out, b"a [REDACTED] b [REDACTED][REDACTED]");
        assert_eq!(redact(b"short", &[b"much longer needle".to_vec()]), b"short");
    }
}
