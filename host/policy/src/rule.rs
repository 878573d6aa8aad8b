//! Egress rules: `METHOD scheme://host[:port]/path-glob`, parsed once at load.
//!
//! * `METHOD` is an HTTP method or `*`.
//! * the origin is an [`OriginPattern`]; a host of `*` (any host) needs
//!   `allow_any_host = true` on the grant.
//! * the path glob is matched against the normalised path (dot segments
//!   resolved, query excluded); `*` matches within one segment, `**` across
//!   any number. A path with an ambiguous sequence (`;`, `%2F`, `%2e`, …, see
//!   [`AMBIGUOUS_PATH_SEQUENCES`]) matches only a rule whose path names it.

use super::origin::{HostPattern, OriginPattern};
use super::target::{Target, METHODS};
use std::net::IpAddr;

#[derive(Debug, Clone, PartialEq, Eq)]
enum MethodPattern {
    Any,
    One(String),
}

/// One `allow` entry of a grant.
#[derive(Debug, Clone)]
pub struct EgressRule {
    /// The rule as written, for audit records and `policy explain`.
    pub text: String,
    method: MethodPattern,
    pub origin: OriginPattern,
    path: String,
}

impl EgressRule {
    pub fn parse(text: &str) -> Result<EgressRule, String> {
        let mut parts = text.split_whitespace();
        let (Some(method), Some(pattern), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(format!("rule `{text}` must be `METHOD scheme://host[:port]/path`, e.g. `GET https://api.example.com/v1/*`"));
        };
        let method = if method == "*" {
            MethodPattern::Any
        } else {
            let m = method.to_ascii_uppercase();
            if !METHODS.contains(&m.as_str()) {
                return Err(format!("rule `{text}`: `{method}` is not an HTTP method or `*`"));
            }
            MethodPattern::One(m)
        };
        let (scheme, rest) = pattern.split_once("://").ok_or_else(|| format!("rule `{text}`: the URL needs a scheme, e.g. `https://`"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, "/*"),
        };
        let origin = OriginPattern::parse(scheme, authority).map_err(|e| format!("rule `{text}`: {e}"))?;
        if path.contains('?') || path.contains('#') {
            return Err(format!("rule `{text}`: a rule matches paths only; drop the query or fragment"));
        }
        Ok(EgressRule { text: text.to_string(), method, origin, path: path.to_string() })
    }

    pub fn matches_origin(&self, t: &Target) -> bool {
        self.origin.matches(t)
    }

    /// True when this rule reaches every host (`*`).
    pub fn is_any_host(&self) -> bool {
        self.origin.host == HostPattern::Any
    }

    pub fn matches_path(&self, t: &Target) -> bool {
        wildcard_match(&self.path, &t.path)
    }

    /// True when this rule's path names `seq` itself, which opts in to paths carrying it.
    pub fn names_sequence(&self, seq: &str) -> bool {
        self.path.to_ascii_lowercase().contains(seq)
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
        matches!(&self.origin.host, HostPattern::Ip(p) if p == ip)
    }
}

/// Path sequences that a common upstream (Tomcat, Spring, IIS, a proxy that
/// decodes twice) may resolve as another path than the one a rule sees:
/// path parameters, encoded dots, slashes and backslashes, encoded `%`, NUL,
/// and empty segments. A request carrying one matches only a rule whose
/// path names the same sequence.
pub const AMBIGUOUS_PATH_SEQUENCES: &[&str] = &[";", "%2e", "%2f", "%5c", "%25", "%00", "//"];

/// The first ambiguous sequence in `path` (case-insensitive), if any.
pub fn ambiguous_sequence(path: &str) -> Option<&'static str> {
    let lower = path.to_ascii_lowercase();
    AMBIGUOUS_PATH_SEQUENCES.iter().copied().find(|seq| lower.contains(seq))
}

/// A path glob: `*` matches within one segment (never `/`), `**` matches any
/// run of characters across segments; everything else is literal.
pub fn wildcard_match(pattern: &str, text: &str) -> bool {
    enum Token {
        Byte(u8),
        Star,
        DoubleStar,
    }
    let p = pattern.as_bytes();
    let mut tokens = Vec::with_capacity(p.len());
    let mut i = 0;
    while i < p.len() {
        match (p[i], p.get(i + 1)) {
            (b'*', Some(b'*')) => {
                tokens.push(Token::DoubleStar);
                i += 2;
            }
            (b'*', _) => {
                tokens.push(Token::Star);
                i += 1;
            }
            (b, _) => {
                tokens.push(Token::Byte(b));
                i += 1;
            }
        }
    }
    // can[j]: the tokens so far match text[..j]. One row per token: linear in
    // the path's length, whatever the pattern.
    let t = text.as_bytes();
    let mut can = vec![false; t.len() + 1];
    can[0] = true;
    for token in &tokens {
        let mut next = vec![false; t.len() + 1];
        for j in 0..=t.len() {
            next[j] = match token {
                Token::Byte(b) => j > 0 && can[j - 1] && t[j - 1] == *b,
                Token::Star => can[j] || (j > 0 && next[j - 1] && t[j - 1] != b'/'),
                Token::DoubleStar => can[j] || (j > 0 && next[j - 1]),
            };
        }
        can = next;
    }
    can[t.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::Target;

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
        assert!(allows("GET http://127.0.0.1:8080/**", "GET", "http://127.0.0.1:8080/x/y?q=1"));
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
    fn bad_rules_are_explained() {
        assert!(EgressRule::parse("https://x.example/").unwrap_err().contains("METHOD scheme://host"));
        assert!(EgressRule::parse("FETCH https://x.example/").unwrap_err().contains("not an HTTP method"));
        assert!(EgressRule::parse("GET ftp://x.example/").unwrap_err().contains("not http or https"));
        assert!(EgressRule::parse("GET https://x.example:99999/").unwrap_err().contains("port"));
        assert!(EgressRule::parse("GET https://a*.example/").unwrap_err().contains("`*` may only"));
    }

    #[test]
    fn one_star_matches_one_segment_and_two_stars_any_depth() {
        assert!(wildcard_match("/api/*", "/api/"));
        assert!(wildcard_match("/api/*", "/api/x"));
        assert!(!wildcard_match("/api/*", "/api/x/admin"));
        assert!(!wildcard_match("/api/*/x", "/api/a/b/x"));
        assert!(wildcard_match("/api/**", "/api/a/b/x"));
        assert!(wildcard_match("/api/**/x", "/api/a/b/x"));
        assert!(!wildcard_match("/api/**/x", "/api/a/b/y"));
        assert!(wildcard_match("/rest/api/*/issue/*", "/rest/api/2/issue/SOC-1"));
        assert!(!wildcard_match("/rest/api/*/issue/*", "/rest/api/2/issue/SOC-1/transitions"));
        assert!(wildcard_match("/echo*", "/echo-json"));
        assert!(wildcard_match("/*", "/"));
        assert!(!wildcard_match("/exact", "/exact/more"));
    }

    #[test]
    fn ambiguous_path_sequences_are_found_in_any_case() {
        for path in ["/api/..;/admin", "/api/%2E%2e/admin", "/api/a%2Fb", "/api/a%5cb", "/api/%252e%252e/x", "/api//admin", "/a%00b"] {
            assert!(ambiguous_sequence(path).is_some(), "{path}");
        }
        assert_eq!(ambiguous_sequence("/web/api/v2.1/dv/events"), None);
    }
}
