//! How a guest's `http.send` is judged, every layer in order. Layers 1–7 are
//! pure checks here; 8–10 happen around the wire in [`super`].
//!
//! 1. **Quota** ([`quota`]): every attempt counts against `limits.http_requests`,
//!    so a flood of denied calls is bounded too.
//! 2. **Target** ([`target`]): the URL is parsed and normalised once;
//!    userinfo, non-HTTP schemes and over-long URLs stop here.
//! 3. **Headers** ([`headers`]): host-owned headers (`Host`, `Content-Length`, …)
//!    are refused, bad names and values (CR/LF) too.
//! 4. **Size** ([`request_size`]): the body within `limits.request_bytes`.
//! 5. **Rules** ([`decide`]): method, scheme, host, port and path must match one
//!    rule of the plugin's grant. No rule, no request.
//! 6. **Addresses** ([`screen_literal`] for IP literals; the transport's
//!    [`super::resolve::ScreeningResolver`] for names, at connect time): only
//!    public addresses, unless a rule names the address itself.
//! 7. **Credentials** ([`check_credential`]): granted to this plugin and bound to
//!    this origin; with none named, an `inject = "auto"` credential bound to the
//!    origin applies ([`auto_credential`]).
//! 8. **Injection** ([`super::inject`]): the value is read and added only now.
//! 9. **Transport** ([`super::transport`]): no proxy, no redirects followed,
//!    timeouts, capped body read.
//! 10. **Redaction** ([`super::inject::redact`]): any spelling of an injected
//!     secret is replaced by `[REDACTED]` in what goes back to the guest.

use super::address::{classify, AddressClass};
use super::resolve::AddressRefused;
use crate::capability::Denial;
use crate::invocation::guest_text;
use crate::limits::Bytes;
use crate::policy::credentials::CredentialSpec;
use crate::policy::rule::{ambiguous_sequence, EgressRule};
use crate::policy::target::{Target, TargetError, TargetHost};
use crate::policy::Grant;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use std::sync::Arc;

/// Why a request was refused before it reached the wire, and how the guest hears it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The policy said no (`http-error.denied`).
    Denied(Denial),
    /// The request is malformed (`http-error.invalid-request`), audited under `rule`.
    Invalid { rule: &'static str, message: String },
    /// The request is bigger than the grant allows (`http-error.too-large`).
    TooLarge { rule: &'static str, message: String },
}

impl From<Denial> for Refusal {
    fn from(d: Denial) -> Refusal {
        Refusal::Denied(d)
    }
}

fn invalid(message: String) -> Refusal {
    Refusal::Invalid { rule: "invalid-request", message }
}

/// Longest method a guest may name (the longest real one is 7 bytes).
pub const MAX_METHOD_BYTES: usize = 16;
/// Longest credential name a guest may name.
pub const MAX_CREDENTIAL_NAME_BYTES: usize = 128;
/// Most request headers a guest may send, and their total size (names and
/// values): checked before any header library sees them.
pub const MAX_HEADERS: usize = 100;
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// The request header a `wasi:http` guest names a policy credential with; the
/// wasi:http door takes it out before layer 3, which refuses it on the other door.
pub const CREDENTIAL_HEADER: &str = "warden-credential";

/// Headers the host owns. A guest setting them could smuggle a second request
/// or point a virtual host somewhere its URL does not say.
const HOST_OWNED_HEADERS: &[&str] =
    &["host", "content-length", "transfer-encoding", "connection", "upgrade", "te", "trailer", "keep-alive", "proxy-authorization", "proxy-connection"];

/// Headers that make common upstreams (and the proxies before them) act on
/// another method or path than the one the rules judged.
const OVERRIDE_HEADERS: &[&str] = &["x-http-method-override", "x-http-method", "x-method-override", "x-original-method", "x-original-url", "x-rewrite-url"];

/// Layer 1: the `sent`-th attempt (counting this one) within the grant's quota.
pub fn quota(grant: &Grant, sent: u32) -> Result<(), Refusal> {
    let max = grant.limits.http_requests;
    if sent > max {
        return Err(Denial::new(
            "limits.http_requests",
            format!("{} has used its {max} HTTP requests for this invocation (limits.http_requests)", grant.plugin),
        )
        .into());
    }
    Ok(())
}

/// Layer 2: the URL, parsed and normalised.
pub fn target(method: &str, url: &str) -> Result<Target, Refusal> {
    if method.len() > MAX_METHOD_BYTES {
        return Err(invalid(format!("method is {} bytes; no HTTP method is longer than {MAX_METHOD_BYTES}", method.len())));
    }
    Target::parse(method, url).map_err(|e| match e {
        TargetError::Invalid(m) => invalid(m),
        TargetError::Refused(m) => Denial::new("userinfo", m).into(),
    })
}

/// Layer 3: the guest's headers, with nothing the host owns.
pub fn headers(given: &[(String, String)]) -> Result<HeaderMap, Refusal> {
    if given.len() > MAX_HEADERS {
        return Err(invalid(format!("{} request headers; a request may carry at most {MAX_HEADERS}", given.len())));
    }
    let bytes: usize = given.iter().map(|(n, v)| n.len() + v.len()).sum();
    if bytes > MAX_HEADER_BYTES {
        return Err(invalid(format!("request headers are {}; at most {} in all", Bytes(bytes as u64), Bytes(MAX_HEADER_BYTES as u64))));
    }
    let mut headers = HeaderMap::new();
    for (name, value) in given {
        let lname = name.to_ascii_lowercase();
        if HOST_OWNED_HEADERS.contains(&lname.as_str()) || lname.starts_with("proxy-") {
            return Err(Denial::new(
                "host-owned-header",
                format!("header `{}` is set by warden from the URL and body; a step cannot choose it", guest_text(name, 64)),
            )
            .into());
        }
        if lname == CREDENTIAL_HEADER {
            return Err(invalid(format!(
                "header `{}` names a credential on wasi:http requests; with http.send, name it in the request's `credential` field",
                guest_text(name, 64)
            )));
        }
        if OVERRIDE_HEADERS.contains(&lname.as_str()) {
            return Err(Denial::new(
                "override-header",
                format!("header `{}` asks the upstream for another method or path than the rules allowed; refused", guest_text(name, 64)),
            )
            .into());
        }
        let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) else {
            return Err(invalid(format!(
                "header `{}` has a bad name or value (control characters such as CR/LF are refused)",
                guest_text(name, 64).escape_debug()
            )));
        };
        headers.append(n, v);
    }
    Ok(headers)
}

/// Layer 4: the request body within `limits.request_bytes`.
pub fn request_size(grant: &Grant, len: u64) -> Result<(), Refusal> {
    let max = grant.limits.request_bytes;
    if len > max {
        return Err(Refusal::TooLarge {
            rule: "limits.request_bytes",
            message: format!("request body is {}; {}'s grant allows {} (limits.request_bytes)", Bytes(len), grant.plugin, Bytes(max)),
        });
    }
    Ok(())
}

/// Layer 5: the first rule that allows `t`, or a denial naming what did not match.
/// A path with an ambiguous sequence (see [`crate::policy::rule::AMBIGUOUS_PATH_SEQUENCES`]) needs a
/// rule that names that sequence: the upstream may not see the path the rule saw.
pub fn decide<'g>(grant: &'g Grant, t: &Target) -> Result<&'g EgressRule, Denial> {
    let mut matching = grant.rules.iter().filter(|r| r.matches_origin(t) && r.matches_path(t) && r.matches_method(t)).peekable();
    match (matching.peek().is_some(), ambiguous_sequence(&t.path)) {
        (true, None) => return Ok(matching.next().expect("peeked")),
        (true, Some(seq)) => {
            return matching.find(|r| r.names_sequence(seq)).ok_or_else(|| {
                Denial::new(
                    "ambiguous-path",
                    format!(
                        "path {} on {} contains `{seq}`, which an upstream may resolve as another path than the rule allows; refused unless a rule of {} names `{seq}` in its path",
                        t.path,
                        t.origin(),
                        grant.plugin
                    ),
                )
            });
        }
        (false, _) => {}
    }
    let plugin = &grant.plugin;
    let fix = format!("add a rule to [grants.{plugin}] allow if this is intended");
    let same_origin: Vec<&EgressRule> = grant.rules.iter().filter(|r| r.matches_origin(t)).collect();
    let reason = if grant.rules.is_empty() {
        format!("{plugin} has no egress grant, so {} {} is refused; {fix}", t.method, t.url)
    } else if same_origin.is_empty() {
        format!("no rule of {plugin} allows {} (scheme, host and port); {fix}", t.origin())
    } else if !same_origin.iter().any(|r| r.matches_path(t)) {
        format!("path {} on {} is outside {plugin}'s rules; {fix}", t.path, t.origin())
    } else {
        format!("method {} to {}{} is not allowed for {plugin}; {fix}", t.method, t.origin(), t.path)
    };
    Err(Denial::new("default-deny", reason))
}

/// Layer 6 for IP literals (names are screened by the resolver at connect time).
/// A non-public address passes only when the allowing rule names it exactly.
pub fn screen_literal(rule: &EgressRule, t: &Target) -> Result<(), Denial> {
    let TargetHost::Ip(ip) = &t.host else { return Ok(()) };
    let class = classify(*ip);
    if class == AddressClass::Public || rule.names_address(ip) {
        return Ok(());
    }
    Err(Denial::new(
        AddressRefused::RULE,
        format!("{} is a {} address; warden refuses it unless a rule names that address (rule `{}` does not)", t.host, class.as_str(), rule.text),
    ))
}

/// Layer 7: the named credential must be granted to this plugin and bound to this origin.
pub fn check_credential(grant: &Grant, name: &str, t: &Target) -> Result<Arc<CredentialSpec>, Denial> {
    let Some(spec) = grant.credentials.get(name) else {
        return Err(Denial::new(
            "credential-grant",
            format!(
                "credential `{}` is not granted to {}; add it to credentials in [grants.{}] if this is intended",
                guest_text(name, MAX_CREDENTIAL_NAME_BYTES),
                grant.plugin,
                grant.plugin
            ),
        ));
    };
    if !spec.bound_to(t) {
        return Err(Denial::new(
            "credential-binding",
            format!("credential `{name}` is bound to {}, not {}; it is never sent elsewhere", spec.bindings_text(), t.origin()),
        ));
    }
    Ok(spec.clone())
}

/// Layer 7 when the guest named no credential: the grant's `inject = "auto"`
/// credential bound to this origin, if there is one. Two would make the host
/// guess which secret to send, so that is refused.
pub fn auto_credential(grant: &Grant, t: &Target) -> Result<Option<Arc<CredentialSpec>>, Denial> {
    let mut bound = grant.credentials.values().filter(|c| c.auto && c.bound_to(t));
    let Some(first) = bound.next() else { return Ok(None) };
    if let Some(second) = bound.next() {
        return Err(Denial::new(
            "credential-ambiguous",
            format!(
                "credentials `{}` and `{}` of {} are both `inject = \"auto\"` for {}; name one on the request (header `warden-credential`), or bind them to different hosts",
                first.name,
                second.name,
                grant.plugin,
                t.origin()
            ),
        ));
    }
    Ok(Some(first.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::rule::EgressRule;
    use crate::policy::Policy;
    use std::path::Path;

    fn grant(rules: &[&str]) -> Grant {
        let text =
            format!("[plugins.p]\npath = \"p.wasm\"\n[grants.p]\nallow = [{}]\n", rules.iter().map(|r| format!("\"{r}\"")).collect::<Vec<_>>().join(","));
        (*Policy::parse(&text, "t.toml", Path::new(".")).unwrap().grant_for("p")).clone()
    }

    #[test]
    fn host_owned_headers_are_refused_whatever_their_case() {
        for name in ["Host", "CONTENT-LENGTH", "Transfer-Encoding", "proxy-anything"] {
            let r = headers(&[(name.to_string(), "x".to_string())]).unwrap_err();
            assert!(matches!(&r, Refusal::Denied(d) if d.rule == "host-owned-header"), "{name}: {r:?}");
        }
        assert!(matches!(headers(&[("x-a".into(), "1\r\nx-b: 2".into())]), Err(Refusal::Invalid { .. })));
    }

    #[test]
    fn ambiguous_paths_need_a_rule_that_names_their_sequence() {
        let g = grant(&["GET https://jira.example/rest/api/**", "GET https://jira.example/files/*;jsessionid=*"]);
        for url in [
            "https://jira.example/rest/api/..;/admin",
            "https://jira.example/rest/api/a%2Fb",
            "https://jira.example/rest/api/%252e%252e/x",
            "https://jira.example/rest/api//secure/admin",
        ] {
            assert_eq!(decide(&g, &t("GET", url)).unwrap_err().rule, "ambiguous-path", "{url}");
        }
        assert!(decide(&g, &t("GET", "https://jira.example/files/a;jsessionid=1")).is_ok(), "a rule may name `;` explicitly");
        // Encoded dot-segments never reach the rules at all: the URL parser resolves them.
        assert_eq!(t("GET", "https://jira.example/rest/api/%2e%2E/%2E./admin").path, "/admin");
    }

    #[test]
    fn method_and_url_override_headers_are_refused() {
        for name in ["X-HTTP-Method-Override", "x-original-url", "X-Rewrite-URL", "X-HTTP-Method"] {
            let r = headers(&[(name.to_string(), "DELETE".to_string())]).unwrap_err();
            assert!(matches!(&r, Refusal::Denied(d) if d.rule == "override-header"), "{name}: {r:?}");
        }
    }

    #[test]
    fn header_counts_and_sizes_are_capped_before_a_header_map_exists() {
        let many: Vec<(String, String)> = (0..25_000).map(|i| (format!("x-h{i}"), "v".into())).collect();
        assert!(matches!(headers(&many), Err(Refusal::Invalid { message, .. }) if message.contains("at most 100")));
        let big = vec![("x-big".to_string(), "v".repeat(70_000))];
        assert!(matches!(headers(&big), Err(Refusal::Invalid { message, .. }) if message.contains("at most 64 KiB")));
        assert!(matches!(target(&"GET".repeat(1000), "http://x.example/"), Err(Refusal::Invalid { .. })));
    }

    #[test]
    fn every_attempt_counts_against_the_quota() {
        let mut g = grant(&[]);
        g.limits.http_requests = 2;
        assert!(quota(&g, 2).is_ok());
        assert!(matches!(quota(&g, 3), Err(Refusal::Denied(d)) if d.rule == "limits.http_requests"));
    }

    #[test]
    fn an_auto_credential_applies_only_to_its_own_hosts_and_never_ambiguously() {
        let text = |second_host: &str| {
            format!(
                "[plugins.p]\npath = \"p.wasm\"\n[grants.p]\nallow = [\"GET https://*.example.com/*\"]\ncredentials = [\"a\", \"b\", \"named\"]\n\
                 [credentials.a]\nkind = \"bearer\"\nenv = \"A\"\nhosts = [\"https://api.example.com\"]\ninject = \"auto\"\n\
                 [credentials.b]\nkind = \"bearer\"\nenv = \"B\"\nhosts = [\"{second_host}\"]\ninject = \"auto\"\n\
                 [credentials.named]\nkind = \"bearer\"\nenv = \"N\"\nhosts = [\"https://api.example.com\"]\n"
            )
        };
        let g = Policy::parse(&text("https://other.example.com"), "t.toml", Path::new(".")).unwrap().grant_for("p");
        assert_eq!(auto_credential(&g, &t("GET", "https://api.example.com/x")).unwrap().unwrap().name, "a");
        assert_eq!(auto_credential(&g, &t("GET", "https://other.example.com/x")).unwrap().unwrap().name, "b");
        assert!(auto_credential(&g, &t("GET", "https://third.example.com/x")).unwrap().is_none(), "no credential goes where none is bound");
        // The same host spelled twice is refused when the policy loads; overlaps, per request.
        let e = Policy::parse(&text("https://api.example.com"), "t.toml", Path::new(".")).unwrap_err().to_string();
        assert!(e.contains("t.toml:") && e.contains("both inject = \"auto\" for the same host"), "{e}");
        let g = Policy::parse(&text("https://*.example.com"), "t.toml", Path::new(".")).unwrap().grant_for("p");
        assert_eq!(auto_credential(&g, &t("GET", "https://api.example.com/x")).unwrap_err().rule, "credential-ambiguous");
        let wrong = text("https://x.example.com").replace("https://x.example.com\"]\ninject = \"auto\"", "https://x.example.com\"]\ninject = \"always\"");
        let e = Policy::parse(&wrong, "t.toml", Path::new(".")).unwrap_err().to_string();
        assert!(e.contains("t.toml:") && e.contains("inject = \"always\" is unknown"), "{e}");
    }

    fn t(m: &str, u: &str) -> Target {
        Target::parse(m, u).unwrap()
    }

    #[test]
    fn denials_say_which_part_failed() {
        let g = grant(&["GET https://api.example.com/v1/*"]);
        assert!(decide(&g, &t("GET", "https://other.example.com/v1/x")).unwrap_err().reason.contains("no rule of p allows https://other.example.com:443"));
        assert!(decide(&g, &t("GET", "https://api.example.com/v2")).unwrap_err().reason.contains("path /v2"));
        assert!(decide(&g, &t("POST", "https://api.example.com/v1/x")).unwrap_err().reason.contains("method POST"));
        assert!(decide(&Grant::deny_all("p"), &t("GET", "https://x.example/")).unwrap_err().reason.contains("no egress grant"));
    }

    #[test]
    fn private_literals_pass_only_when_a_rule_names_them() {
        let g = grant(&["GET http://127.0.0.1:8080/*", "GET http://*.example.com:*/*"]);
        let named = t("GET", "http://127.0.0.1:8080/x");
        assert!(screen_literal(decide(&g, &named).unwrap(), &named).is_ok());
        // A suffix rule cannot match an IP, so only `*` can let a literal through
        // decide(); the screen still refuses it.
        let any = EgressRule::parse("GET http://*:*/*").unwrap();
        for url in ["http://127.0.0.2:8080/", "http://[::ffff:10.0.0.1]/", "http://0x7f.1/"] {
            let d = screen_literal(&any, &t("GET", url)).unwrap_err();
            assert_eq!(d.rule, "address-screen", "{url}");
        }
        assert!(screen_literal(&any, &t("GET", "http://8.8.8.8/")).is_ok());
    }
}
