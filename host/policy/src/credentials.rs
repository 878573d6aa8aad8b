//! Credentials: named in the policy, read by the host, injected at egress.
//!
//! A guest only ever names a credential. Its value is read from an environment
//! variable or a file on the host, added to the outgoing request after the
//! policy check, and scrubbed from whatever comes back.

use super::origin::{HostPattern, OriginPattern};
use super::target::Target;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use toml::Spanned;

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
    /// The value put in place of `marker` wherever the request carries it —
    /// URL (percent-encoded, so it cannot add a path segment), body (JSON- or
    /// form-escaped by its content type) — at egress, after every check: for
    /// stories imported with `--allow-credential-in-payload`, where Tines put
    /// a credential in a payload. The step only ever holds the marker.
    Placeholder { marker: String },
    /// OAuth2 client credentials: the host requests an access token with the
    /// client id and the secret value, caches it, and injects
    /// `Authorization: Bearer <token>`. The plugin never sees either.
    OAuth2(OAuth2),
}

/// How the host obtains an OAuth2 access token (RFC 6749 §4.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuth2 {
    /// Where the token is requested. https, or http to a loopback address.
    pub token_url: url::Url,
    pub client_id: ClientId,
    /// Sent as `scope`, space-separated, when not empty.
    pub scopes: Vec<String>,
    /// How the client authenticates at the token endpoint.
    pub client_auth: ClientAuth,
}

/// The client id: not a secret, but often kept beside one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientId {
    Literal(String),
    Env(String),
}

impl ClientId {
    pub fn read(&self) -> Result<String, String> {
        match self {
            ClientId::Literal(v) => Ok(v.clone()),
            ClientId::Env(var) => match std::env::var(var) {
                Ok(v) if !v.is_empty() => Ok(v),
                _ => Err(format!("environment variable {var} (the client id) is not set on the host")),
            },
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// `client_id` and `client_secret` as form fields (CrowdStrike, Microsoft).
    Post,
    /// HTTP Basic `client_id:client_secret` (RFC 6749's preferred form).
    Basic,
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
    pub origin: OriginPattern,
}

impl Binding {
    pub fn parse(text: &str) -> Result<Binding, String> {
        let (scheme, rest) = text.split_once("://").ok_or_else(|| format!("binding `{text}` needs a scheme, e.g. `https://api.example.com`"))?;
        let authority = rest.trim_end_matches('/');
        if authority.contains('/') {
            return Err(format!("binding `{text}` is an origin (scheme://host[:port]); drop the path"));
        }
        let origin = OriginPattern::parse(scheme, authority).map_err(|e| format!("binding `{text}`: {e}"))?;
        if origin.host == HostPattern::Any {
            return Err(format!("binding `{text}`: a credential bound to every host could be sent anywhere; name its hosts"));
        }
        Ok(Binding { text: text.to_string(), origin })
    }

    pub fn covers(&self, t: &Target) -> bool {
        self.origin.matches(t)
    }
}

/// One `[credentials.NAME]` table.
#[derive(Debug, Clone)]
pub struct CredentialSpec {
    pub name: String,
    pub kind: CredentialKind,
    pub source: SecretSource,
    pub hosts: Vec<Binding>,
    /// A `placeholder` credential's relays (`hosts = ["relay:NAME"]`): mail
    /// through them may carry it, filled in by the host at SMTP egress.
    pub relays: Vec<String>,
    /// Owning team, if any: only that team's runs may use it.
    pub team: Option<String>,
    /// `inject = "auto"`: added to every request of a plugin granted it to one
    /// of its hosts, without the plugin naming it (for code that cannot, such
    /// as an unmodified `fetch()`). The default, `"named"`, needs the name.
    pub auto: bool,
}

impl CredentialSpec {
    pub fn bound_to(&self, t: &Target) -> bool {
        self.hosts.iter().any(|b| b.covers(t))
    }

    pub fn bindings_text(&self) -> String {
        self.hosts.iter().map(|b| b.text.as_str()).collect::<Vec<_>>().join(", ")
    }
}

/// The marker a `placeholder` credential replaces unless it names one.
pub fn default_marker(name: &str) -> String {
    format!("__warden_credential_{name}__")
}

pub(super) fn parse(name: &str, c: RawCredential, base: &Path) -> Result<CredentialSpec, String> {
    let need = |field: Option<String>, what: &str| field.ok_or_else(|| format!("credentials.{name}: kind `{}` needs `{what}`", c.kind.get_ref()));
    let kind = match c.kind.get_ref().as_str() {
        "bearer" => CredentialKind::Bearer,
        "header" => CredentialKind::Header {
            name: need(c.header.clone(), "header = \"X-Api-Key\"")?.to_ascii_lowercase(),
            prefix: c.prefix.clone().unwrap_or_default(),
        },
        "basic" => CredentialKind::Basic { user: need(c.user.clone(), "user = \"name\"")? },
        "query" => CredentialKind::Query { param: need(c.param.clone(), "param = \"api_key\"")? },
        "oauth2" => CredentialKind::OAuth2(oauth2(name, &c)?),
        "placeholder" => {
            let marker = c.placeholder.clone().unwrap_or_else(|| default_marker(name));
            if marker.len() < 12 || !marker.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
                return Err(format!(
                    "credentials.{name}: placeholder `{marker}` must be at least 12 letters, digits, _ or - (it is found in URLs and bodies as it is)"
                ));
            }
            CredentialKind::Placeholder { marker }
        }
        other => return Err(format!("credentials.{name}: kind `{other}` is unknown; use header, bearer, basic, query, oauth2 or placeholder")),
    };
    if !matches!(kind, CredentialKind::OAuth2(_)) {
        let stray = [
            ("token_url", c.token_url.is_some()),
            ("client_id", c.client_id.is_some()),
            ("client_id_env", c.client_id_env.is_some()),
            ("scopes", c.scopes.is_some()),
            ("client_auth", c.client_auth.is_some()),
        ];
        if let Some((field, _)) = stray.iter().find(|(_, given)| *given) {
            return Err(format!("credentials.{name}: `{field}` belongs to kind \"oauth2\", not `{}`; remove it or change the kind", c.kind.get_ref()));
        }
    }
    if c.placeholder.is_some() && !matches!(kind, CredentialKind::Placeholder { .. }) {
        return Err(format!("credentials.{name}: `placeholder` belongs to kind \"placeholder\", not `{}`; remove it or change the kind", c.kind.get_ref()));
    }
    if let CredentialKind::Header { name: h, .. } = &kind {
        if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
            return Err(format!("credentials.{name}: `{h}` is not a valid header name"));
        }
    }
    let source = match (c.env, c.file) {
        (Some(v), None) => SecretSource::Env(v),
        (None, Some(f)) => SecretSource::File(base.join(f)),
        _ => return Err(format!("credentials.{name}: give exactly one of env = \"VAR\" or file = \"path\" for the secret value")),
    };
    if c.hosts.is_empty() {
        return Err(format!(
            "credentials.{name}: `hosts` is empty, so it could never be sent; list the origins it belongs to, e.g. hosts = [\"https://api.example.com\"]"
        ));
    }
    let (relays, origins): (Vec<&String>, Vec<&String>) = c.hosts.iter().partition(|h| h.starts_with("relay:"));
    if !relays.is_empty() && !matches!(kind, CredentialKind::Placeholder { .. }) {
        return Err(format!(
            "credentials.{name}: `{}` binds it to a mail relay, which only a kind = \"placeholder\" credential can be (filled into a message at SMTP egress)",
            relays[0]
        ));
    }
    let relays: Vec<String> = relays.iter().map(|r| r.trim_start_matches("relay:").to_string()).collect();
    let hosts = origins.into_iter().map(|h| Binding::parse(h)).collect::<Result<Vec<_>, _>>().map_err(|e| format!("credentials.{name}: {e}"))?;
    let auto = match c.inject.as_deref() {
        None | Some("named") => false,
        Some("auto") => true,
        Some(other) => {
            return Err(format!(
                "credentials.{name}: inject = \"{other}\" is unknown; use \"named\" (the plugin names it: the default) or \"auto\" (added to every request to its hosts)"
            ))
        }
    };
    Ok(CredentialSpec { name: name.to_string(), kind, source, hosts, relays, team: c.team, auto })
}

/// The `oauth2` fields of a credential table, checked.
fn oauth2(name: &str, c: &RawCredential) -> Result<OAuth2, String> {
    let text = c.token_url.as_deref().ok_or_else(|| format!("credentials.{name}: kind `oauth2` needs `token_url = \"https://…/oauth2/token\"`"))?;
    let token_url = url::Url::parse(text).map_err(|e| format!("credentials.{name}: token_url `{text}` is not a URL: {e}"))?;
    if !token_url.username().is_empty() || token_url.password().is_some() {
        return Err(format!("credentials.{name}: token_url must not carry a user or password; the client secret comes from env or file"));
    }
    let loopback = match token_url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    };
    match token_url.scheme() {
        "https" => {}
        "http" if loopback => {}
        _ => {
            return Err(format!(
                "credentials.{name}: token_url `{text}` would send the client secret in clear; use https (plain http only to a loopback address)"
            ))
        }
    }
    let client_id = match (&c.client_id, &c.client_id_env) {
        (Some(id), None) if !id.is_empty() => ClientId::Literal(id.clone()),
        (None, Some(var)) if !var.is_empty() => ClientId::Env(var.clone()),
        _ => return Err(format!("credentials.{name}: kind `oauth2` needs exactly one of client_id = \"…\" or client_id_env = \"VAR\"")),
    };
    let scopes = c.scopes.clone().unwrap_or_default();
    if let Some(bad) = scopes.iter().find(|s| s.is_empty() || s.chars().any(|ch| ch.is_whitespace() || ch.is_control())) {
        return Err(format!("credentials.{name}: scope `{}` is empty or holds a space; list each scope on its own", bad.escape_debug()));
    }
    let client_auth = match c.client_auth.as_deref() {
        None | Some("post") => ClientAuth::Post,
        Some("basic") => ClientAuth::Basic,
        Some(other) => {
            return Err(format!(
                "credentials.{name}: client_auth = \"{other}\" is unknown; use \"post\" (client id and secret as form fields: the default) or \"basic\""
            ))
        }
    };
    Ok(OAuth2 { token_url, client_id, scopes, client_auth })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCredential {
    pub(super) kind: Spanned<String>,
    header: Option<String>,
    prefix: Option<String>,
    /// kind = "placeholder": the text the host replaces (default `__warden_credential_<name>__`).
    placeholder: Option<String>,
    user: Option<String>,
    param: Option<String>,
    env: Option<String>,
    file: Option<String>,
    #[serde(default)]
    hosts: Vec<String>,
    /// The team that owns it; other teams' runs can never use it.
    team: Option<String>,
    /// `named` (default) or `auto`.
    inject: Option<String>,
    // kind = "oauth2"
    token_url: Option<String>,
    client_id: Option<String>,
    client_id_env: Option<String>,
    scopes: Option<Vec<String>>,
    client_auth: Option<String>,
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
}
