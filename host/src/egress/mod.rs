//! Egress: how a guest's `http.send` is judged, in layers.
//!
//! 1. **Target** ([`crate::policy::rule::Target`]): the URL is parsed and
//!    normalised once; userinfo, non-HTTP schemes and over-long URLs stop here.
//! 2. **Rules** ([`decide`]): method, scheme, host, port and path must match one
//!    rule of the plugin's grant. No rule, no request.
//! 3. **Addresses** ([`screen_literal`] for IP literals; the transport's
//!    [`resolve::ScreeningResolver`] for names): only public addresses, unless a
//!    rule names the address itself.
//! 4. **Credentials** ([`check_credential`]): granted to this plugin and bound to
//!    this origin; the value is injected only after every check passed.
//! 5. **Transport** ([`transport::Transport`]): no proxy, no redirects followed,
//!    timeouts, capped body read.
//! 6. **Redaction** ([`redact`]): any spelling of an injected secret is replaced
//!    by `[REDACTED]` in what goes back to the guest.

pub mod address;
pub mod resolve;
pub mod transport;

use crate::policy::credential::CredentialSpec;
use crate::policy::rule::{EgressRule, Target, TargetHost};
use crate::policy::Grant;
use address::{classify, AddressClass};
use std::sync::Arc;

/// A refusal: which rule decided, and a reason that says the consequence and the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// Names the deciding rule, e.g. `default-deny`, `address-screen`, `credential-binding`.
    pub rule: String,
    pub reason: String,
}

impl Denial {
    fn new(rule: &str, reason: String) -> Denial {
        Denial { rule: rule.to_string(), reason }
    }
}

/// Layer 2: the first rule that allows `t`, or a denial naming what did not match.
pub fn decide<'g>(grant: &'g Grant, t: &Target) -> Result<&'g EgressRule, Denial> {
    if let Some(rule) = grant
        .rules
        .iter()
        .find(|r| r.matches_origin(t) && r.matches_path(t) && r.matches_method(t))
    {
        return Ok(rule);
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

/// Layer 3 for IP literals (names are screened by the resolver at connect time).
/// A non-public address passes only when the allowing rule names it exactly.
pub fn screen_literal(rule: &EgressRule, t: &Target) -> Result<(), Denial> {
    let TargetHost::Ip(ip) = &t.host else { return Ok(()) };
    let class = classify(*ip);
    if class == AddressClass::Public || rule.names_address(ip) {
        return Ok(());
    }
    Err(Denial::new(
        resolve::AddressRefused::RULE,
        format!(
            "{} is a {} address; warden refuses it unless a rule names that address (rule `{}` does not)",
            t.host,
            class.as_str(),
            rule.text
        ),
    ))
}

/// Layer 4: the named credential must be granted to this plugin and bound to this origin.
pub fn check_credential(grant: &Grant, name: &str, t: &Target) -> Result<Arc<CredentialSpec>, Denial> {
    let Some(spec) = grant.credentials.get(name) else {
        return Err(Denial::new(
            "credential-grant",
            format!(
                "credential `{name}` is not granted to {}; add it to credentials in [grants.{}] if this is intended",
                grant.plugin, grant.plugin
            ),
        ));
    };
    if !spec.bound_to(t) {
        return Err(Denial::new(
            "credential-binding",
            format!(
                "credential `{name}` is bound to {}, not {}; it is never sent elsewhere",
                spec.bindings_text(),
                t.origin()
            ),
        ));
    }
    Ok(spec.clone())
}

pub const REDACTED: &[u8] = b"[REDACTED]";

/// Layer 6: replaces every occurrence of every needle with `[REDACTED]`.
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
    use crate::policy::Policy;
    use std::path::Path;

    fn grant(rules: &[&str]) -> Grant {
        let text = format!(
            "[plugins.p]\npath = \"p.wasm\"\n[grants.p]\nallow = [{}]\n",
            rules.iter().map(|r| format!("\"{r}\"")).collect::<Vec<_>>().join(",")
        );
        (*Policy::parse(&text, "t.toml", Path::new(".")).unwrap().grant_for("p")).clone()
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

    #[test]
    fn redaction_replaces_every_occurrence() {
        let out = redact(b"a SECRET b SECRETSECRET", &[b"SECRET".to_vec()]);
        assert_eq!(out, b"a [REDACTED] b [REDACTED][REDACTED]");
        assert_eq!(redact(b"short", &[b"much longer needle".to_vec()]), b"short");
    }
}
