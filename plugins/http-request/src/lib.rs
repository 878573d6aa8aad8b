//! `http-request`: Tines' HTTP Request action (what `warden tines import`
//! turns those agents into), run under the policy like any plugin.
//!
//! Input: `url`, `method` (any case, default get), `content_type` (`json`,
//! `form`, `data`, or a MIME type; `application_json` spellings too),
//! `payload` (object or text), `headers`, `user_agent`, `basic_auth`
//! (`"user:pass"` or `[user, pass]`, for stories that carry no secret),
//! `credential` (a policy credential the host injects), `retry_on_status`
//! and `log_error_on_status` (`"429"`, `"5.."`, `"500-599"`).
//!
//! Output, as Tines emits it: `{body, headers, status}` — any status,
//! since a story decides what a 404 means. A status in `retry_on_status`
//! fails as `upstream` instead, so the step's retry policy tries again.

use serde::Deserialize;
use serde_json::{json, Map, Value};
use warden_sdk::{invalid, log, upstream, ActionError, Guest, HttpError, Invocation, Manifest, Request};

struct HttpRequest;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Input {
    pub url: String,
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub content_type: Option<String>,
    #[serde(default)]
    pub payload: Option<Value>,
    #[serde(default)]
    pub headers: Option<Map<String, Value>>,
    #[serde(default)]
    pub user_agent: Option<String>,
    #[serde(default)]
    pub basic_auth: Option<Value>,
    #[serde(default)]
    pub credential: Option<String>,
    #[serde(default)]
    pub retry_on_status: Vec<String>,
    #[serde(default)]
    pub log_error_on_status: Vec<String>,
    #[serde(default)]
    pub timeout_ms: Option<u32>,
}

const METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];

/// The request an input makes (no I/O: tested natively).
pub fn request(input: &Input) -> Result<Request, ActionError> {
    let method = input.method.as_deref().unwrap_or("get").trim().to_ascii_uppercase();
    if !METHODS.contains(&method.as_str()) {
        return Err(invalid(format!("method `{method}` is not one of {}", METHODS.join(", "))));
    }
    let url = input.url.trim();
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        return Err(invalid(format!("url `{url}` must be an http(s) URL")));
    }
    let mut headers: Vec<(String, String)> = Vec::new();
    for (k, v) in input.headers.iter().flatten() {
        let v = match v {
            Value::String(s) => s.clone(),
            Value::Null => continue,
            other => other.to_string(),
        };
        headers.push((k.clone(), v));
    }
    let has = |h: &[(String, String)], name: &str| h.iter().any(|(k, _)| k.eq_ignore_ascii_case(name));
    if let Some(ua) = &input.user_agent {
        if !has(&headers, "user-agent") {
            headers.push(("user-agent".into(), ua.clone()));
        }
    }
    if let Some(b) = &input.basic_auth {
        let pair = match b {
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            Value::Array(a) if a.len() == 2 => Some(format!("{}:{}", a[0].as_str().unwrap_or(""), a[1].as_str().unwrap_or(""))),
            Value::Null => None,
            Value::String(_) => None,
            _ => return Err(invalid("basic_auth must be \"user:password\" or [user, password]")),
        };
        if let Some(pair) = pair {
            headers.push(("authorization".into(), format!("Basic {}", base64(pair.as_bytes()))));
        }
    }
    let kind = content_kind(input.content_type.as_deref());
    let body = match (&input.payload, method.as_str()) {
        (None | Some(Value::Null), _) => None,
        // A GET's payload is its query string, as in Tines.
        (Some(Value::Object(o)), "GET" | "HEAD" | "DELETE") if !o.is_empty() => {
            let q = form(o);
            let sep = if url.contains('?') { '&' } else { '?' };
            return Ok(Request {
                method,
                url: format!("{url}{sep}{q}"),
                headers,
                body: None,
                timeout_ms: input.timeout_ms,
                credential: input.credential.clone(),
            });
        }
        (Some(Value::Object(o)), _) if o.is_empty() && matches!(method.as_str(), "GET" | "HEAD" | "DELETE") => None,
        (Some(p), _) => {
            let (ctype, bytes) = match (kind, p) {
                (Kind::Form, Value::Object(o)) => ("application/x-www-form-urlencoded".to_string(), form(o).into_bytes()),
                (Kind::Json, Value::String(s)) if serde_json::from_str::<Value>(s).is_ok() => ("application/json".to_string(), s.clone().into_bytes()),
                (Kind::Json, v) => ("application/json".to_string(), v.to_string().into_bytes()),
                (Kind::Other(t), Value::String(s)) => (t, s.clone().into_bytes()),
                (Kind::Other(t), v) => (t, v.to_string().into_bytes()),
                (Kind::Form, Value::String(s)) => ("application/x-www-form-urlencoded".to_string(), s.clone().into_bytes()),
                (Kind::Form, v) => return Err(invalid(format!("a form payload must be an object, not {v}"))),
            };
            if !has(&headers, "content-type") {
                headers.push(("content-type".into(), ctype));
            }
            Some(bytes)
        }
    };
    if !has(&headers, "accept") {
        headers.push(("accept".into(), "application/json, */*".into()));
    }
    Ok(Request { method, url: url.to_string(), headers, body, timeout_ms: input.timeout_ms, credential: input.credential.clone() })
}

#[derive(Debug, PartialEq)]
enum Kind {
    Json,
    Form,
    Other(String),
}

fn content_kind(t: Option<&str>) -> Kind {
    match t.map(|t| t.trim().to_ascii_lowercase()) {
        None => Kind::Json,
        Some(t) => match t.as_str() {
            "" | "json" | "application_json" | "application/json" => Kind::Json,
            "form" | "application_x_www_form_urlencoded" | "application/x-www-form-urlencoded" => Kind::Form,
            "data" | "text" | "text/plain" => Kind::Other("text/plain".into()),
            "xml" | "application_xml" | "application/xml" => Kind::Other("application/xml".into()),
            other => Kind::Other(other.replace('_', "/")),
        },
    }
}

fn form(o: &Map<String, Value>) -> String {
    o.iter()
        .map(|(k, v)| {
            let v = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            format!("{}={}", warden_sdk::client::percent_encode(k), warden_sdk::client::percent_encode(&v))
        })
        .collect::<Vec<_>>()
        .join("&")
}

fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Whether `status` is in a Tines status list: `"429"`, `"5.."`/`"5xx"`, `"500-599"`.
pub fn status_in(list: &[String], status: u16) -> bool {
    let s = status.to_string();
    list.iter().any(|p| {
        let p = p.trim();
        if let Some((lo, hi)) = p.split_once('-') {
            return matches!((lo.trim().parse::<u16>(), hi.trim().parse::<u16>()), (Ok(lo), Ok(hi)) if (lo..=hi).contains(&status));
        }
        p.len() == 3 && p.chars().zip(s.chars()).all(|(a, b)| a == b || a == '.' || a.eq_ignore_ascii_case(&'x'))
    })
}

impl Guest for HttpRequest {
    fn describe() -> Manifest {
        warden_sdk::manifest(
            "http-request",
            env!("CARGO_PKG_VERSION"),
            "Tines' HTTP Request: any method and body; answers {body, headers, status}.",
            json!({
                "type": "object",
                "required": ["url"],
                "properties": {
                    "url": {"type": "string"},
                    "method": {"type": "string"},
                    "content_type": {"type": "string"},
                    "payload": {},
                    "headers": {"type": "object"},
                    "user_agent": {"type": "string"},
                    "basic_auth": {},
                    "credential": {"type": "string"},
                    "retry_on_status": {"type": "array", "items": {"type": "string"}},
                    "log_error_on_status": {"type": "array", "items": {"type": "string"}},
                    "timeout_ms": {"type": "integer", "minimum": 1}
                }
            }),
            json!({
                "type": "object",
                "required": ["status", "headers", "body"],
                "properties": {"status": {"type": "integer"}, "headers": {"type": "object"}, "body": {}}
            }),
            &[],
            &[],
        )
    }

    fn run(_inv: Invocation, input: String) -> Result<String, ActionError> {
        let input: Input = warden_sdk::parse_input(&input)?;
        let req = request(&input)?;
        let (method, url) = (req.method.clone(), req.url.clone());
        let resp = warden_sdk::bindings::warden::action::http::send(&req).map_err(|e| match e {
            HttpError::Denied(why) => ActionError::Denied(why),
            HttpError::InvalidRequest(why) => invalid(format!("{method} {url}: {why}")),
            HttpError::Timeout => upstream(None, format!("{method} {url} did not answer in time"), None),
            HttpError::Connection(why) => upstream(None, format!("{method} {url}: {why}"), None),
            HttpError::TooLarge(why) => ActionError::Failed(why),
        })?;
        if status_in(&input.retry_on_status, resp.status) {
            let retry_after = warden_sdk::client::retry_after_ms(&resp);
            return Err(upstream(Some(resp.status), format!("{method} {url} answered {} (in retry_on_status)", resp.status), retry_after));
        }
        if status_in(&input.log_error_on_status, resp.status) {
            log::error(&format!("{method} {url} answered {} (in log_error_on_status)", resp.status));
        }
        let mut headers = Map::new();
        for (k, v) in &resp.headers {
            headers.insert(k.to_ascii_lowercase(), Value::String(v.clone()));
        }
        let body = match serde_json::from_slice::<Value>(&resp.body) {
            Ok(v) => v,
            Err(_) => Value::String(String::from_utf8_lossy(&resp.body).into_owned()),
        };
        warden_sdk::output(&json!({"body": body, "headers": headers, "status": resp.status}))
    }
}

warden_sdk::export_action!(HttpRequest);

#[cfg(test)]
mod tests {
    use super::*;

    fn input(v: Value) -> Input {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn json_payloads_are_sent_as_json() {
        let r = request(&input(json!({"url": "https://api.example.com/x", "method": "post", "payload": {"a": 1}}))).unwrap();
        assert_eq!(r.method, "POST");
        assert_eq!(r.body.unwrap(), br#"{"a":1}"#);
        assert!(r.headers.contains(&("content-type".into(), "application/json".into())));
    }

    #[test]
    fn form_and_data_payloads() {
        let r = request(&input(json!({"url": "https://x.example/f", "method": "POST", "content_type": "form", "payload": {"a b": "c&d"}}))).unwrap();
        assert_eq!(String::from_utf8(r.body.unwrap()).unwrap(), "a%20b=c%26d");
        let r = request(&input(json!({"url": "https://x.example/f", "method": "POST", "content_type": "data", "payload": "raw text"}))).unwrap();
        assert_eq!(r.body.unwrap(), b"raw text");
        assert!(r.headers.contains(&("content-type".into(), "text/plain".into())));
    }

    #[test]
    fn a_get_payload_is_the_query() {
        let r = request(&input(json!({"url": "https://x.example/s?x=1", "payload": {"q": "a b"}}))).unwrap();
        assert_eq!(r.url, "https://x.example/s?x=1&q=a%20b");
        assert!(r.body.is_none());
    }

    #[test]
    fn basic_auth_without_a_secret_and_headers() {
        let r = request(&input(json!({"url": "https://x.example/", "basic_auth": ["user", "pass"], "headers": {"X-N": 5}}))).unwrap();
        assert!(r.headers.contains(&("authorization".into(), "Basic dXNlcjpwYXNz".into())));
        assert!(r.headers.contains(&("X-N".into(), "5".into())));
    }

    #[test]
    fn bad_methods_and_urls_are_refused() {
        assert!(request(&input(json!({"url": "https://x.example/", "method": "TRACE"}))).is_err());
        assert!(request(&input(json!({"url": "file:///etc/passwd"}))).is_err());
    }

    #[test]
    fn status_lists_as_tines_writes_them() {
        let l = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(status_in(&l(&["429"]), 429));
        assert!(status_in(&l(&["5.."]), 503));
        assert!(status_in(&l(&["5xx"]), 500));
        assert!(status_in(&l(&["500-599"]), 599));
        assert!(!status_in(&l(&["429", "5.."]), 404));
    }
}
