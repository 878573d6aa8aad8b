//! Origin patterns: `scheme://host[:port]`, one type for egress rules and for
//! credential bindings, so both judge a request's origin the same way.
//!
//! * `scheme` is `http` or `https`.
//! * `host` is a name (`api.example.com`), a suffix (`*.example.com`, which does
//!   not match `example.com` itself), an IP literal (`127.0.0.1`, `[::1]`), or `*`.
//! * `port` defaults from the scheme; `:*` means any port.

use super::target::{Scheme, Target, TargetHost};
use std::net::IpAddr;
use url::Host;

/// Which hosts a rule (or a credential binding) covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// `*`: every host (public addresses only).
    Any,
    /// `*.example.com`, stored as `.example.com`.
    Suffix(String),
    /// An exact DNS name, lower-case, without a trailing dot.
    Name(String),
    /// An IP literal. Naming an address is how an operator opts in to a
    /// loopback or private network (tests use `http://127.0.0.1:PORT`).
    Ip(IpAddr),
}

impl HostPattern {
    pub fn parse(text: &str) -> Result<HostPattern, String> {
        if text == "*" {
            return Ok(HostPattern::Any);
        }
        if let Some(rest) = text.strip_prefix("*.") {
            if rest.is_empty() || rest.contains('*') {
                return Err(format!("host pattern `{text}` is not `*.domain`"));
            }
            return match Host::parse(rest) {
                Ok(Host::Domain(d)) => Ok(HostPattern::Suffix(format!(".{}", d.trim_end_matches('.')))),
                _ => Err(format!("`{text}`: a `*.` suffix must be followed by a domain name")),
            };
        }
        if text.contains('*') {
            return Err(format!("host `{text}`: `*` may only stand alone or as a leading `*.`"));
        }
        match Host::parse(text) {
            Ok(Host::Domain(d)) => Ok(HostPattern::Name(d.trim_end_matches('.').to_string())),
            Ok(Host::Ipv4(ip)) => Ok(HostPattern::Ip(IpAddr::V4(ip))),
            Ok(Host::Ipv6(ip)) => Ok(HostPattern::Ip(IpAddr::V6(ip))),
            Err(e) => Err(format!("host `{text}` is not valid: {e}")),
        }
    }

    pub fn matches(&self, host: &TargetHost) -> bool {
        match (self, host) {
            (HostPattern::Any, _) => true,
            (HostPattern::Suffix(s), TargetHost::Name(n)) => n.ends_with(s.as_str()),
            (HostPattern::Name(p), TargetHost::Name(n)) => p == n,
            (HostPattern::Ip(p), TargetHost::Ip(ip)) => p == ip,
            _ => false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortPattern {
    Any,
    One(u16),
}

/// `scheme://host[:port]`, parsed once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginPattern {
    pub scheme: Scheme,
    pub host: HostPattern,
    pub port: PortPattern,
}

impl OriginPattern {
    /// Parses a scheme and an authority (`host[:port]`, `[v6][:port]`).
    /// Errors say what is wrong without naming the owner; callers prefix it.
    pub fn parse(scheme: &str, authority: &str) -> Result<OriginPattern, String> {
        let scheme = Scheme::parse(scheme).ok_or_else(|| format!("scheme `{scheme}` is not http or https"))?;
        if authority.contains('@') {
            return Err("userinfo (`user@`) has no place here".into());
        }
        let (host, port) = split_host_port(authority).ok_or_else(|| format!("bad host or port in `{authority}`"))?;
        let host = HostPattern::parse(host)?;
        let port = match port {
            None => PortPattern::One(scheme.default_port()),
            Some("*") => PortPattern::Any,
            Some(p) => PortPattern::One(p.parse().map_err(|_| format!("port `{p}` is not a number from 1 to 65535"))?),
        };
        Ok(OriginPattern { scheme, host, port })
    }

    /// True when `t`'s scheme, host and port fall under this pattern.
    pub fn matches(&self, t: &Target) -> bool {
        self.scheme == t.scheme
            && self.host.matches(&t.host)
            && match self.port {
                PortPattern::Any => true,
                PortPattern::One(p) => p == t.port,
            }
    }
}

/// Splits `host[:port]` and `[v6][:port]`.
fn split_host_port(authority: &str) -> Option<(&str, Option<&str>)> {
    if authority.is_empty() {
        return None;
    }
    if authority.starts_with('[') {
        let end = authority.find(']')?;
        let host = &authority[..=end];
        let rest = &authority[end + 1..];
        return match rest.strip_prefix(':') {
            Some(p) => Some((host, Some(p))),
            None if rest.is_empty() => Some((host, None)),
            None => None,
        };
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() => Some((h, Some(p))),
        Some(_) => None,
        None => Some((authority, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(url: &str) -> Target {
        Target::parse("GET", url).unwrap()
    }

    #[test]
    fn an_origin_pattern_covers_its_scheme_host_and_port_only() {
        let o = OriginPattern::parse("https", "api.example.com").unwrap();
        assert!(o.matches(&t("https://api.example.com/x")));
        assert!(!o.matches(&t("http://api.example.com/x")));
        assert!(!o.matches(&t("https://api.example.com:8443/x")));
        assert!(!o.matches(&t("https://evil.example.com/x")));
    }

    #[test]
    fn ipv6_authorities_keep_their_port() {
        let o = OriginPattern::parse("http", "[::1]:8080").unwrap();
        assert_eq!(o.port, PortPattern::One(8080));
        assert!(o.matches(&t("http://[::1]:8080/")));
        assert!(OriginPattern::parse("http", ":80").is_err());
    }
}
