//! Credentials: named in the policy, read by the host, injected at egress.
//!
//! A guest only ever names a credential. Its value is read from an environment
//! variable or a file on the host, added to the outgoing request after the
//! policy check, and scrubbed from whatever comes back.

use super::rule::{HostPattern, PortPattern, Scheme, Target};
use base64::Engine as _;
use std::path::PathBuf;

/// A secret value. Debug and Display never show it.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Secret {
        Secret(value)
    }
    /// The value, for injection into a request. Never log what this returns.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret([hidden])")
    }
}

/// How a credential is put on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialKind {
    /// `Authorization: Bearer <value>`.
    Bearer,
    /// `<header>: <prefix><value>`, e.g. SentinelOne's `Authorization: ApiToken <t>`.
    Header { name: String, prefix: String },
    /// `Authorization: Basic base64(user:value)`.
    Basic { user: String },
    /// `?<param>=<value>` appended to the URL.
    Query { param: String },
}

/// Where the value lives on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    Env(String),
    File(PathBuf),
}

impl SecretSource {
    /// Reads the value. Errors name the source, never the value.
    pub fn read(&self) -> Result<Secret, String> {
        match self {
            SecretSource::Env(var) => match std::env::var(var) {
                Ok(v) if !v.is_empty() => Ok(Secret(v)),
                Ok(_) => Err(format!("environment variable {var} is empty")),
                Err(_) => Err(format!("environment variable {var} is not set on the host")),
            },
            SecretSource::File(path) => match std::fs::read_to_string(path) {
                Ok(v) => {
                    let v = v.trim_end_matches(['\r', '\n']).to_string();
                    if v.is_empty() {
                        Err(format!("secret file {} is empty", path.display()))
                    } else {
                        Ok(Secret(v))
                    }
                }
                Err(e) => Err(format!("cannot read secret file {}: {e}", path.display())),
            },
        }
    }

    pub fn describe(&self) -> String {
        match self {
            SecretSource::Env(v) => format!("env {v}"),
            SecretSource::File(p) => format!("file {}", p.display()),
        }
    }
}

/// An origin a credential may be sent to.
#[derive(Debug, Clone)]
pub struct Binding {
    pub text: String,
    pub scheme: Scheme,
    pub host: HostPattern,
    pub port: PortPattern,
}

impl Binding {
    pub fn parse(text: &str) -> Result<Binding, String> {
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| format!("binding `{text}` needs a scheme, e.g. `https://api.example.com`"))?;
        let scheme = Scheme::parse(scheme)
            .ok_or_else(|| format!("binding `{text}`: scheme `{scheme}` is not http or https"))?;
        let authority = rest.trim_end_matches('/');
        if authority.contains('/') {
            return Err(format!("binding `{text}` is an origin (scheme://host[:port]); drop the path"));
        }
        let (host, port) = super::rule::split_host_port(authority)
            .ok_or_else(|| format!("binding `{text}`: bad host or port"))?;
        let host = HostPattern::parse(host).map_err(|e| format!("binding `{text}`: {e}"))?;
        if host == HostPattern::Any {
            return Err(format!(
                "binding `{text}`: a credential bound to every host could be sent anywhere; name its hosts"
            ));
        }
        let port = match port {
            None => PortPattern::One(scheme.default_port()),
            Some("*") => PortPattern::Any,
            Some(p) => PortPattern::One(p.parse().map_err(|_| format!("binding `{text}`: bad port `{p}`"))?),
        };
        Ok(Binding { text: text.to_string(), scheme, host, port })
    }

    pub fn covers(&self, t: &Target) -> bool {
        self.scheme == t.scheme
            && self.host.matches(&t.host)
            && match self.port {
                PortPattern::Any => true,
                PortPattern::One(p) => p == t.port,
            }
    }
}

/// One `[credentials.NAME]` table.
#[derive(Debug, Clone)]
pub struct CredentialSpec {
    pub name: String,
    pub kind: CredentialKind,
    pub source: SecretSource,
    pub hosts: Vec<Binding>,
    /// Owning team, if any: only that team's runs may use it.
    pub team: Option<String>,
}

/// What the host adds to a request, and what it must scrub from the answer.
pub struct Injection {
    pub header: Option<(String, String)>,
    pub query: Option<(String, String)>,
    /// Every spelling of the secret that could come back.
    pub redact: Vec<Vec<u8>>,
}

impl CredentialSpec {
    pub fn bound_to(&self, t: &Target) -> bool {
        self.hosts.iter().any(|b| b.covers(t))
    }

    pub fn bindings_text(&self) -> String {
        self.hosts.iter().map(|b| b.text.as_str()).collect::<Vec<_>>().join(", ")
    }

    /// Builds the injection for this credential's value.
    pub fn injection(&self, secret: &Secret) -> Injection {
        let value = secret.expose();
        let mut redact = vec![value.as_bytes().to_vec()];
        let percent = url::form_urlencoded::byte_serialize(value.as_bytes()).collect::<String>();
        if percent != value {
            redact.push(percent.into_bytes());
        }
        let (header, query) = match &self.kind {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2".into());
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn bindings_cover_their_origin_only() {
        let b = Binding::parse("https://api.example.com").unwrap();
        assert!(b.covers(&Target::parse("GET", "https://api.example.com/x").unwrap()));
        assert!(!b.covers(&Target::parse("GET", "http://api.example.com/x").unwrap()));
        assert!(!b.covers(&Target::parse("GET", "https://api.example.com:8443/x").unwrap()));
        assert!(!b.covers(&Target::parse("GET", "https://evil.example.com/x").unwrap()));
    }

    #[test]
    fn a_credential_cannot_be_bound_to_every_host() {
        assert!(Binding::parse("https://*").unwrap_err().contains("sent anywhere"));
    }

    #[test]
    fn basic_injection_redacts_the_encoded_form_too() {
        let spec = CredentialSpec {
            name: "j".into(),
            kind: CredentialKind::Basic { user: "bot@corp.example".into() },
            source: SecretSource::Env("X".into()),
            hosts: vec![],
            team: None,
        };
        let inj = spec.injection(&Secret::new("tok".into()));
        let (_, v) = inj.header.unwrap();
        let encoded = v.strip_prefix("Basic ").unwrap();
        assert!(inj.redact.iter().any(|r| r == encoded.as_bytes()));
        assert!(inj.redact.iter().any(|r| r == b"tok"));
    }
}
