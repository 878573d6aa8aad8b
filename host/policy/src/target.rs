//! The target of a request: the URL a guest asked for, parsed and normalised
//! once, so every rule and binding judges the same thing.

use std::net::IpAddr;
use url::{Host, Url};

/// Longest URL the host accepts from a guest.
pub const MAX_URL_LEN: usize = 8 * 1024;

/// The methods a guest may use; anything else is refused before any rule is read.
pub const METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];

/// The scheme of a request (and of a rule or binding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn parse(s: &str) -> Option<Scheme> {
        match s {
            "http" => Some(Scheme::Http),
            "https" => Some(Scheme::Https),
            _ => None,
        }
    }
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// The host of a request, after URL normalisation (so `2130706433`, `0x7f.1`
/// and `127.1` all arrive here as the IP `127.0.0.1`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetHost {
    Name(String),
    Ip(IpAddr),
}

impl std::fmt::Display for TargetHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TargetHost::Name(n) => f.write_str(n),
            TargetHost::Ip(IpAddr::V4(ip)) => write!(f, "{ip}"),
            TargetHost::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
        }
    }
}

/// Where a request goes, parsed and normalised once.
#[derive(Debug, Clone)]
pub struct Target {
    pub method: String,
    pub scheme: Scheme,
    pub host: TargetHost,
    pub port: u16,
    /// Normalised path, without the query.
    pub path: String,
    pub url: Url,
}

/// Why a URL cannot even be judged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetError {
    /// Malformed: bad URL, unsupported scheme, too long.
    Invalid(String),
    /// Well-formed but refused on sight (userinfo).
    Refused(String),
}

impl Target {
    pub fn parse(method: &str, url: &str) -> Result<Target, TargetError> {
        if url.len() > MAX_URL_LEN {
            return Err(TargetError::Invalid(format!("URL is {} bytes; the limit is {MAX_URL_LEN}", url.len())));
        }
        let method = method.to_ascii_uppercase();
        if !METHODS.contains(&method.as_str()) {
            return Err(TargetError::Invalid(format!("method `{method}` is not supported")));
        }
        let parsed = Url::parse(url).map_err(|e| TargetError::Invalid(format!("URL `{url}`: {e}")))?;
        let scheme =
            Scheme::parse(parsed.scheme()).ok_or_else(|| TargetError::Invalid(format!("scheme `{}` is not supported; use http or https", parsed.scheme())))?;
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(TargetError::Refused("URLs with userinfo (user@host) are refused; name a credential instead".into()));
        }
        let host = match parsed.host() {
            Some(Host::Domain(d)) => TargetHost::Name(d.trim_end_matches('.').to_ascii_lowercase()),
            Some(Host::Ipv4(ip)) => TargetHost::Ip(IpAddr::V4(ip)),
            Some(Host::Ipv6(ip)) => TargetHost::Ip(IpAddr::V6(ip)),
            None => return Err(TargetError::Invalid(format!("URL `{url}` has no host"))),
        };
        let port = parsed.port().unwrap_or(scheme.default_port());
        Ok(Target { method, scheme, host, port, path: parsed.path().to_string(), url: parsed })
    }

    /// `scheme://host:port`, the origin a credential binding is judged against.
    pub fn origin(&self) -> String {
        format!("{}://{}:{}", self.scheme.as_str(), self.host, self.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_ipv4_spellings_arrive_as_one_address() {
        for url in ["http://2130706433/", "http://0x7f.1/", "http://127.1/", "http://0177.0.0.1/", "http://0x7f000001/"] {
            assert_eq!(Target::parse("GET", url).unwrap().host, TargetHost::Ip("127.0.0.1".parse().unwrap()), "{url}");
        }
    }

    #[test]
    fn userinfo_is_refused_before_anything_else() {
        assert!(matches!(Target::parse("GET", "https://allowed.example@evil.example/"), Err(TargetError::Refused(_))));
        assert!(matches!(Target::parse("GET", "https://u:p@evil.example/"), Err(TargetError::Refused(_))));
    }
}
