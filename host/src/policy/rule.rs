//! Egress rules: `METHOD scheme://host[:port]/path-glob`, parsed once at load.
//!
//! * `METHOD` is an HTTP method or `*`.
//! * `scheme` is `http` or `https`.
//! * `host` is a name (`api.example.com`), a suffix (`*.example.com`, which does
//!   not match `example.com` itself), an IP literal (`127.0.0.1`, `[::1]`), or `*`
//!   (any host, only with `allow_any_host = true` on the grant).
//! * `port` defaults from the scheme; `:*` means any port.
//! * the path glob is matched against the normalised path (dot segments
//!   resolved, query excluded); `*` matches any run of characters, `/` included.

use std::net::IpAddr;
use url::{Host, Url};

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
            return Err(format!(
                "host `{text}`: `*` may only stand alone or as a leading `*.`"
            ));
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

/// Longest URL the host accepts from a guest.
pub const MAX_URL_LEN: usize = 8 * 1024;

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
            return Err(TargetError::Invalid(format!(
                "URL is {} bytes; the limit is {MAX_URL_LEN}",
                url.len()
            )));
        }
        let method = method.to_ascii_uppercase();
        if !matches!(
            method.as_str(),
            "GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS"
        ) {
            return Err(TargetError::Invalid(format!("method `{method}` is not supported")));
        }
        let parsed = Url::parse(url).map_err(|e| TargetError::Invalid(format!("URL `{url}`: {e}")))?;
        let scheme = Scheme::parse(parsed.scheme()).ok_or_else(|| {
            TargetError::Invalid(format!("scheme `{}` is not supported; use http or https", parsed.scheme()))
        })?;
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(TargetError::Refused(
                "URLs with userinfo (user@host) are refused; name a credential instead".into(),
            ));
        }
        let host = match parsed.host() {
            Some(Host::Domain(d)) => TargetHost::Name(d.trim_end_matches('.').to_ascii_lowercase()),
            Some(Host::Ipv4(ip)) => TargetHost::Ip(IpAddr::V4(ip)),
            Some(Host::Ipv6(ip)) => TargetHost::Ip(IpAddr::V6(ip)),
            None => return Err(TargetError::Invalid(format!("URL `{url}` has no host"))),
        };
        let port = parsed.port().unwrap_or(scheme.default_port());
        Ok(Target {
            method,
            scheme,
            host,
            port,
            path: parsed.path().to_string(),
            url: parsed,
        })
    }

    /// `scheme://host:port`, the origin a credential binding is judged against.
    pub fn origin(&self) -> String {
        format!("{}://{}:{}", self.scheme.as_str(), self.host, self.port)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum MethodPattern {
    Any,
    One(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortPattern {
    Any,
    One(u16),
}

/// One `allow` entry of a grant.
#[derive(Debug, Clone)]
pub struct EgressRule {
    /// The rule as written, for audit records and `policy explain`.
    pub text: String,
    method: MethodPattern,
    pub scheme: Scheme,
    pub host: HostPattern,
    pub port: PortPattern,
    path: String,
}

impl EgressRule {
    pub fn parse(text: &str) -> Result<EgressRule, String> {
        let mut parts = text.split_whitespace();
        let (Some(method), Some(pattern), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(format!(
                "rule `{text}` must be `METHOD scheme://host[:port]/path`, e.g. `GET https://api.example.com/v1/*`"
            ));
        };
        let method = if method == "*" {
            MethodPattern::Any
        } else {
            let m = method.to_ascii_uppercase();
            if !matches!(m.as_str(), "GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS") {
                return Err(format!("rule `{text}`: `{method}` is not an HTTP method or `*`"));
            }
            MethodPattern::One(m)
        };
        let (scheme, rest) = pattern
            .split_once("://")
            .ok_or_else(|| format!("rule `{text}`: the URL needs a scheme, e.g. `https://`"))?;
        let scheme = Scheme::parse(scheme)
            .ok_or_else(|| format!("rule `{text}`: scheme `{scheme}` is not http or https"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, "/*"),
        };
        if authority.contains('@') {
            return Err(format!("rule `{text}`: userinfo (`user@`) has no place in a rule"));
        }
        let (host, port) = split_host_port(authority)
            .ok_or_else(|| format!("rule `{text}`: bad host or port in `{authority}`"))?;
        let host = HostPattern::parse(host).map_err(|e| format!("rule `{text}`: {e}"))?;
        let port = match port {
            None => PortPattern::One(scheme.default_port()),
            Some("*") => PortPattern::Any,
            Some(p) => PortPattern::One(
                p.parse()
                    .map_err(|_| format!("rule `{text}`: port `{p}` is not a number from 1 to 65535"))?,
            ),
        };
        if path.contains('?') || path.contains('#') {
            return Err(format!("rule `{text}`: a rule matches paths only; drop the query or fragment"));
        }
        Ok(EgressRule {
            text: text.to_string(),
            method,
            scheme,
            host,
            port,
            path: path.to_string(),
        })
    }

    pub fn matches_origin(&self, t: &Target) -> bool {
        self.scheme == t.scheme
            && self.host.matches(&t.host)
            && match self.port {
                PortPattern::Any => true,
                PortPattern::One(p) => p == t.port,
            }
    }

    pub fn matches_path(&self, t: &Target) -> bool {
        wildcard_match(&self.path, &t.path)
    }

    pub fn matches_method(&self, t: &Target) -> bool {
        match &self.method {
            MethodPattern::Any => true,
            MethodPattern::One(m) => *m == t.method,
        }
    }

    /// True when this rule names `ip` literally, which opts in to reaching it
    /// even if it is loopback or private.
    pub fn names_address(&self, ip: &IpAddr) -> bool {
        matches!(&self.host, HostPattern::Ip(p) if p == ip)
    }
}

/// Splits `host[:port]` and `[v6][:port]`.
pub(crate) fn split_host_port(authority: &str) -> Option<(&str, Option<&str>)> {
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

/// `*` matches any run of characters (including `/`); everything else is literal.
pub fn wildcard_match(pattern: &str, text: &str) -> bool {
    let p = pattern.as_bytes();
    let t = text.as_bytes();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(method: &str, url: &str) -> Target {
        Target::parse(method, url).unwrap()
    }

    fn allows(rule: &str, method: &str, url: &str) -> bool {
        let r = EgressRule::parse(rule).unwrap();
        let t = target(method, url);
        r.matches_origin(&t) && r.matches_path(&t) && r.matches_method(&t)
    }

    #[test]
    fn rule_allows_its_method_host_port_and_path() {
        assert!(allows("GET http://127.0.0.1:8080/*", "GET", "http://127.0.0.1:8080/x/y?q=1"));
        assert!(allows("POST https://*.example.com/api/*", "post", "https://a.b.example.com/api/v1"));
        assert!(allows("* https://api.example.com/v1/*", "DELETE", "https://api.example.com/v1/z"));
    }

    #[test]
    fn each_part_of_a_rule_can_refuse() {
        let rule = "GET https://api.example.com/v1/*";
        assert!(!allows(rule, "POST", "https://api.example.com/v1/x"), "method");
        assert!(!allows(rule, "GET", "http://api.example.com/v1/x"), "scheme");
        assert!(!allows(rule, "GET", "https://api.example.com:8443/v1/x"), "port");
        assert!(!allows(rule, "GET", "https://evil.example.com/v1/x"), "host");
        assert!(!allows(rule, "GET", "https://api.example.com/v2/x"), "path");
    }

    #[test]
    fn suffix_rule_does_not_match_the_bare_domain_or_lookalikes() {
        let rule = "GET https://*.example.com/*";
        assert!(!allows(rule, "GET", "https://example.com/"));
        assert!(!allows(rule, "GET", "https://evilexample.com/"));
        assert!(!allows(rule, "GET", "https://example.com.evil.org/"));
    }

    #[test]
    fn dot_segments_cannot_escape_the_path_glob() {
        let rule = "GET https://api.example.com/v1/*";
        assert!(!allows(rule, "GET", "https://api.example.com/v1/../admin"));
        assert!(!allows(rule, "GET", "https://api.example.com/v1/%2e%2e/admin"));
    }

    #[test]
    fn trailing_dot_and_case_are_normalised() {
        assert!(allows("GET https://api.example.com/*", "GET", "https://API.Example.COM./x"));
    }

    #[test]
    fn default_ports_come_from_the_scheme() {
        assert!(allows("GET https://api.example.com/*", "GET", "https://api.example.com:443/x"));
        assert!(!allows("GET https://api.example.com/*", "GET", "https://api.example.com:80/x"));
        assert!(allows("GET https://api.example.com:*/*", "GET", "https://api.example.com:9/x"));
    }

    #[test]
    fn numeric_ipv4_spellings_arrive_as_one_address() {
        for url in ["http://2130706433/", "http://0x7f.1/", "http://127.1/", "http://0177.0.0.1/", "http://0x7f000001/"] {
            assert_eq!(target("GET", url).host, TargetHost::Ip("127.0.0.1".parse().unwrap()), "{url}");
        }
    }

    #[test]
    fn userinfo_is_refused_before_anything_else() {
        assert!(matches!(
            Target::parse("GET", "https://allowed.example@evil.example/"),
            Err(TargetError::Refused(_))
        ));
        assert!(matches!(Target::parse("GET", "https://u:p@evil.example/"), Err(TargetError::Refused(_))));
    }

    #[test]
    fn bad_rules_are_explained() {
        assert!(EgressRule::parse("https://x.example/").unwrap_err().contains("METHOD scheme://host"));
        assert!(EgressRule::parse("FETCH https://x.example/").unwrap_err().contains("not an HTTP method"));
        assert!(EgressRule::parse("GET ftp://x.example/").unwrap_err().contains("not http or https"));
        assert!(EgressRule::parse("GET https://x.example:99999/").unwrap_err().contains("port"));
        assert!(EgressRule::parse("GET https://a*.example/").unwrap_err().contains("`*` may only"));
    }

    #[test]
    fn wildcard_matching() {
        assert!(wildcard_match("/api/*", "/api/"));
        assert!(wildcard_match("/api/*/x", "/api/a/b/x"));
        assert!(!wildcard_match("/api/*/x", "/api/a/b/y"));
        assert!(wildcard_match("/*", "/"));
        assert!(!wildcard_match("/exact", "/exact/more"));
    }
}
