//! Building S1QL from an indicator, and resolving time bounds.
//!
//! Values are quoted. A value that could break out of its quotes (a quote,
//! backslash or control character) is refused rather than escaped: an
//! indicator must never be able to change the query.

use serde::Deserialize;
use warden_sdk::{invalid, ActionError};

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct Ioc {
    pub kind: IocKind,
    pub value: String,
}

#[derive(Deserialize, Debug, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub enum IocKind {
    Domain,
    Ip,
    Url,
    Sha256,
    Sha1,
    Md5,
}

fn quoted(v: &str) -> Result<String, ActionError> {
    if let Some(c) = v.chars().find(|c| *c == '"' || *c == '\\' || c.is_control()) {
        return Err(invalid(format!("ioc.value contains {:?}, which cannot be quoted safely in S1QL; refusing to build the query", c)));
    }
    Ok(format!("\"{v}\""))
}

fn hex_of_len(v: &str, len: usize, kind: &str) -> Result<String, ActionError> {
    let v = v.trim();
    if v.len() != len || !v.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid(format!("ioc.value is not a {kind} ({len} hex digits)")));
    }
    Ok(v.to_ascii_lowercase())
}

pub fn build(ioc: &Ioc) -> Result<String, ActionError> {
    let v = ioc.value.trim();
    if v.is_empty() {
        return Err(invalid("ioc.value is empty"));
    }
    Ok(match ioc.kind {
        IocKind::Domain => {
            let d = v.trim_end_matches('.').to_ascii_lowercase();
            if !d.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_') {
                return Err(invalid(format!("ioc.value `{}` is not a domain name", v.escape_debug())));
            }
            format!("dnsRequest in contains anycase ({})", quoted(&d)?)
        }
        IocKind::Ip => {
            let ip: std::net::IpAddr = v.parse().map_err(|_| invalid(format!("ioc.value `{}` is not an IP address", v.escape_debug())))?;
            let q = quoted(&ip.to_string())?;
            format!("dstIp = {q} OR srcIp = {q}")
        }
        IocKind::Url => {
            if !(v.starts_with("http://") || v.starts_with("https://")) || v.contains(char::is_whitespace) {
                return Err(invalid(format!("ioc.value `{}` is not an http(s) URL", v.escape_debug())));
            }
            format!("url in contains anycase ({})", quoted(v)?)
        }
        IocKind::Sha256 => {
            let q = quoted(&hex_of_len(v, 64, "sha256")?)?;
            format!("tgtFileSha256 = {q} OR srcProcImageSha256 = {q}")
        }
        IocKind::Sha1 => {
            let q = quoted(&hex_of_len(v, 40, "sha1")?)?;
            format!("tgtFileSha1 = {q} OR srcProcImageSha1 = {q}")
        }
        IocKind::Md5 => {
            let q = quoted(&hex_of_len(v, 32, "md5")?)?;
            format!("tgtFileMd5 = {q} OR srcProcImageMd5 = {q}")
        }
    })
}

/// `now`, `-30m`, `-24h`, `-7d`, or an ISO-8601 / RFC 3339 timestamp → UTC ISO-8601.
pub fn resolve_time(field: &str, text: &str, now_ms: u64) -> Result<String, ActionError> {
    let t = text.trim();
    let ms = if t == "now" {
        now_ms as i64
    } else if let Some(rel) = t.strip_prefix('-') {
        let (n, unit) = rel.split_at(rel.len().saturating_sub(1));
        let n: i64 = n.parse().map_err(|_| invalid(format!("{field}: `{t}` is not like -30m, -24h or -7d")))?;
        let unit_ms = match unit {
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(invalid(format!("{field}: unit of `{t}` must be s, m, h or d"))),
        };
        now_ms as i64 - n * unit_ms
    } else {
        chrono::DateTime::parse_from_rfc3339(t)
            .map_err(|e| invalid(format!("{field}: `{t}` is not ISO-8601 ({e}); e.g. 2024-05-01T00:00:00Z or -24h")))?
            .timestamp_millis()
    };
    let dt = chrono::DateTime::from_timestamp_millis(ms).ok_or_else(|| invalid(format!("{field}: `{t}` is out of range")))?;
    Ok(dt.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
}

/// The S1QL clause keeping only endpoints of `os_types` (`windows`, `macos`,
/// `linux`; SentinelOne calls macOS `osx`), or `None` for every endpoint.
pub fn os_filter(os_types: &[String]) -> Result<Option<String>, ActionError> {
    if os_types.is_empty() {
        return Ok(None);
    }
    let mut names: Vec<&str> = Vec::new();
    for os in os_types {
        let name = match os.to_ascii_lowercase().as_str() {
            "windows" => "windows",
            "macos" | "osx" | "mac" => "osx",
            "linux" => "linux",
            _ => return Err(invalid(format!("os_types: `{}` is not one of windows, macos, linux", os.escape_debug()))),
        };
        if !names.contains(&name) {
            names.push(name);
        }
    }
    let quoted: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
    Ok(Some(format!("endpointOs IN ({})", quoted.join(", "))))
}
