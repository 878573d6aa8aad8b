//! `virustotal-lookup`: what VirusTotal (API v3) knows about an indicator.
//!
//! The indicator has the threat-hunt story's shape, `{kind, value}` with kind
//! `domain`, `ip`, `url`, `sha256`, `sha1` or `md5`, and is looked up with
//! `GET /api/v3/{domains|ip_addresses|urls|files}/{id}` (a URL's id is its
//! unpadded base64url). The answer is summarised: the engines' verdict counts
//! (`last_analysis_stats`), reputation, categories, and one `verdict`
//! (`unknown` when no engine has analysed it yet, never `clean` by default).
//!
//! A 404 is an answer, not an error: VirusTotal has never seen it
//! (`found: false`, verdict `unknown`). A 429 (the public API's 4 lookups a
//! minute, or a daily quota) is not retried here — that would burn the quota
//! — but returned as `upstream` with the retry-after, for the step's `retry`.
//! The API key is a credential *name* (`kind = "header"`, `header = "x-apikey"`).

use serde::Deserialize;
use serde_json::{json, Value};
use warden_sdk::client::{body_snippet, retry_after_ms};
use warden_sdk::{invalid, log, output, parse_input, upstream, ActionError, Client, Guest, Invocation, Manifest};

/// When VirusTotal gives no Retry-After on a quota answer: its quotas are per minute.
const QUOTA_WAIT_MS: u64 = 60_000;

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct Input {
    #[serde(default = "default_api")]
    pub api_url: String,
    pub credential: String,
    pub indicator: Indicator,
    /// `malicious` engine count from which the verdict is `malicious` (default 3).
    #[serde(default = "default_threshold")]
    pub malicious_at: u64,
}

fn default_api() -> String {
    "https://www.virustotal.com".into()
}
fn default_threshold() -> u64 {
    3
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct Indicator {
    pub kind: String,
    pub value: String,
}

/// The API path of an indicator, after checking that its value is one.
pub fn path(ind: &Indicator) -> Result<(&'static str, String), ActionError> {
    let v = ind.value.trim();
    let hex_of = |len: usize| v.len() == len && v.chars().all(|c| c.is_ascii_hexdigit());
    let (collection, id) = match ind.kind.as_str() {
        "domain" => {
            let ok = !v.is_empty()
                && v.len() <= 253
                && v.contains('.')
                && v.split('.').all(|l| !l.is_empty() && l.len() <= 63 && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
            if !ok {
                return Err(invalid(format!("`{}` is not a domain name", v.escape_debug())));
            }
            ("domains", v.to_ascii_lowercase())
        }
        "ip" => {
            let ip: std::net::IpAddr = v.parse().map_err(|_| invalid(format!("`{}` is not an IP address", v.escape_debug())))?;
            ("ip_addresses", ip.to_string())
        }
        "url" => {
            if !(v.starts_with("http://") || v.starts_with("https://")) || v.len() > 4096 || v.chars().any(char::is_control) {
                return Err(invalid(format!("`{}` is not an http(s) URL", v.escape_debug())));
            }
            ("urls", base64url(v.as_bytes()))
        }
        "sha256" if hex_of(64) => ("files", v.to_ascii_lowercase()),
        "sha1" if hex_of(40) => ("files", v.to_ascii_lowercase()),
        "md5" if hex_of(32) => ("files", v.to_ascii_lowercase()),
        "sha256" | "sha1" | "md5" => return Err(invalid(format!("`{}` is not a {} hash", v.escape_debug(), ind.kind))),
        other => return Err(invalid(format!("indicator.kind `{}` is not one of domain, ip, url, sha256, sha1, md5", other.escape_debug()))),
    };
    Ok((collection, id))
}

/// Unpadded base64url (RFC 4648 §5), VirusTotal's URL identifier.
pub fn base64url(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len() * 4 / 3 + 3);
    for chunk in bytes.chunks(3) {
        let n = (chunk[0] as u32) << 16 | (*chunk.get(1).unwrap_or(&0) as u32) << 8 | *chunk.get(2).unwrap_or(&0) as u32;
        let take = chunk.len() + 1;
        for i in 0..take {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// The summary of a `data` object.
pub fn summarise(ind: &Indicator, data: &Value, malicious_at: u64) -> Value {
    let a = &data["attributes"];
    let stat = |k: &str| a["last_analysis_stats"][k].as_u64().unwrap_or(0);
    let (malicious, suspicious) = (stat("malicious"), stat("suspicious"));
    // Known but never analysed (a fresh submission, or stats VirusTotal left out): no verdict, not "clean".
    let analysed = a["last_analysis_stats"].as_object().is_some_and(|m| m.values().any(|v| v.as_u64().unwrap_or(0) > 0));
    let verdict = if !analysed {
        "unknown"
    } else if malicious >= malicious_at {
        "malicious"
    } else if malicious > 0 || suspicious > 0 {
        "suspicious"
    } else {
        "clean"
    };
    let mut categories: Vec<String> =
        a["categories"].as_object().map(|m| m.values().filter_map(Value::as_str).map(str::to_string).collect()).unwrap_or_default();
    categories.sort();
    categories.dedup();
    let id = data["id"].as_str().unwrap_or_default();
    let gui = match data["type"].as_str() {
        Some("ip_address") => "ip-address",
        Some(t) => t,
        None => "search",
    };
    json!({
        "found": true,
        "kind": ind.kind,
        "value": ind.value,
        "verdict": verdict,
        "malicious": malicious,
        "suspicious": suspicious,
        "harmless": stat("harmless"),
        "undetected": stat("undetected"),
        "stats": a["last_analysis_stats"],
        "reputation": a["reputation"].as_i64().unwrap_or(0),
        "categories": categories,
        "tags": a["tags"].as_array().cloned().unwrap_or_default(),
        "threat_label": a["popular_threat_classification"]["suggested_threat_label"],
        "last_analysis_date": a["last_analysis_date"],
        "link": format!("https://www.virustotal.com/gui/{gui}/{id}"),
    })
}

fn not_found(ind: &Indicator) -> Value {
    json!({"found": false, "kind": ind.kind, "value": ind.value, "verdict": "unknown", "malicious": 0, "suspicious": 0, "harmless": 0, "undetected": 0, "stats": null, "reputation": 0, "categories": [], "tags": [], "threat_label": null, "last_analysis_date": null, "link": null})
}

/// VirusTotal's error code and message from an error body.
fn vt_error(body: &[u8]) -> Option<(String, String)> {
    let v: Value = serde_json::from_slice(body).ok()?;
    Some((v["error"]["code"].as_str()?.to_string(), v["error"]["message"].as_str().unwrap_or("").to_string()))
}

struct Lookup;

impl Guest for Lookup {
    fn describe() -> Manifest {
        warden_sdk::manifest(
            "virustotal-lookup",
            env!("CARGO_PKG_VERSION"),
            "Look a domain, IP address, URL or file hash up in VirusTotal API v3: engine verdict counts, reputation, categories and one verdict; unknown indicators are found: false.",
            json!({
                "type": "object",
                "required": ["credential", "indicator"],
                "additionalProperties": false,
                "properties": {
                    "api_url": {"type": "string", "default": "https://www.virustotal.com"},
                    "credential": {"type": "string", "description": "policy credential holding the API key (kind header, header x-apikey)"},
                    "indicator": {"type": "object", "required": ["kind", "value"], "properties": {"kind": {"enum": ["domain", "ip", "url", "sha256", "sha1", "md5"]}, "value": {"type": "string"}}},
                    "malicious_at": {"type": "integer", "minimum": 1, "default": 3}
                }
            }),
            json!({
                "type": "object",
                "required": ["found", "verdict"],
                "properties": {
                    "found": {"type": "boolean"},
                    "verdict": {"enum": ["malicious", "suspicious", "clean", "unknown"]},
                    "malicious": {"type": "integer"}, "suspicious": {"type": "integer"},
                    "reputation": {"type": "integer"}, "categories": {"type": "array", "items": {"type": "string"}},
                    "link": {"type": ["string", "null"]}
                }
            }),
            &["https://www.virustotal.com"],
            &["virustotal"],
        )
    }

    fn run(_inv: Invocation, input: String) -> Result<String, ActionError> {
        let input: Input = parse_input(&input)?;
        warden_sdk::base_url("api_url", &input.api_url, "https://www.virustotal.com")?;
        if input.credential.trim().is_empty() {
            return Err(invalid("credential must name the policy credential that holds the API key"));
        }
        let (collection, id) = path(&input.indicator)?;
        let mut client = Client::new("VirusTotal", &input.api_url, Some(input.credential.clone()));
        // A quota answer goes back to the story (its retry, its schedule), not into a loop here.
        client.max_retries = 0;
        let resp = client.get(&format!("/api/v3/{collection}/{id}"))?;
        if resp.status == 404 {
            log::info(&format!("VirusTotal has no {} {}", input.indicator.kind, input.indicator.value));
            return output(&not_found(&input.indicator));
        }
        let cred = input.credential.clone();
        let answer = client.json(resp, |r| {
            let (code, message) = vt_error(&r.body).unwrap_or_else(|| (String::new(), body_snippet(r)));
            match r.status {
                400 => invalid(format!("VirusTotal refused the lookup: {code} {message}")),
                401 | 403 => upstream(Some(r.status), format!("VirusTotal rejected credential `{cred}`: {code} {message}"), None),
                429 => upstream(Some(429), format!("VirusTotal quota exceeded ({code}); try again later"), Some(retry_after_ms(r).unwrap_or(QUOTA_WAIT_MS))),
                s => upstream(Some(s), format!("VirusTotal answered {s}: {code} {message}"), retry_after_ms(r)),
            }
        })?;
        let summary = summarise(&input.indicator, &answer["data"], input.malicious_at);
        log::info(&format!(
            "{} {}: {} ({} malicious, {} suspicious)",
            input.indicator.kind,
            input.indicator.value,
            summary["verdict"].as_str().unwrap_or(""),
            summary["malicious"],
            summary["suspicious"]
        ));
        output(&summary)
    }
}

warden_sdk::export_action!(Lookup);

#[cfg(test)]
mod tests {
    use super::*;

    fn ind(kind: &str, value: &str) -> Indicator {
        Indicator { kind: kind.into(), value: value.into() }
    }

    #[test]
    fn urls_are_identified_by_unpadded_base64url() {
        assert_eq!(base64url(b"http://evil.example/dropper.php"), "aHR0cDovL2V2aWwuZXhhbXBsZS9kcm9wcGVyLnBocA");
        assert_eq!(base64url(b"a?b>"), "YT9iPg");
        assert_eq!(path(&ind("url", "http://evil.example/dropper.php")).unwrap().0, "urls");
    }

    #[test]
    fn values_that_are_not_their_kind_never_reach_the_path() {
        for (k, v) in [
            ("domain", "../users/me"),
            ("domain", "evil example"),
            ("ip", "1.2.3"),
            ("sha256", "abc"),
            ("md5", "g".repeat(32).as_str()),
            ("url", "file:///etc/passwd"),
            ("cve", "x"),
        ] {
            assert!(matches!(path(&ind(k, v)), Err(ActionError::InvalidInput(_))), "{k} {v}");
        }
        assert_eq!(path(&ind("domain", "Evil.Example")).unwrap(), ("domains", "evil.example".to_string()));
        assert_eq!(path(&ind("ip", "2001:db8::1")).unwrap(), ("ip_addresses", "2001:db8::1".to_string()));
    }

    #[test]
    fn the_verdict_follows_the_engine_counts() {
        let data = |m: u64, s: u64| json!({"id": "x.example", "type": "domain", "attributes": {"last_analysis_stats": {"malicious": m, "suspicious": s, "harmless": 1, "undetected": 1}, "categories": {"a": "phishing", "b": "phishing", "c": "malware"}}});
        assert_eq!(summarise(&ind("domain", "x.example"), &data(5, 0), 3)["verdict"], "malicious");
        assert_eq!(summarise(&ind("domain", "x.example"), &data(1, 0), 3)["verdict"], "suspicious");
        assert_eq!(summarise(&ind("domain", "x.example"), &data(0, 0), 3)["verdict"], "clean");
        let unanalysed = json!({"id": "x.example", "type": "domain", "attributes": {"last_analysis_stats": {"malicious": 0, "suspicious": 0, "harmless": 0, "undetected": 0}}});
        assert_eq!(summarise(&ind("domain", "x.example"), &unanalysed, 3)["verdict"], "unknown", "no engine looked: no verdict");
        assert_eq!(summarise(&ind("domain", "x.example"), &json!({"id": "x.example", "attributes": {}}), 3)["verdict"], "unknown");
        let s = summarise(&ind("domain", "x.example"), &data(0, 0), 3);
        assert_eq!(s["categories"], json!(["malware", "phishing"]));
        assert_eq!(s["link"], "https://www.virustotal.com/gui/domain/x.example");
    }
}
