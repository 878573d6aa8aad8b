//! A small JSON-over-HTTP client on top of the host's `http.send`: base URL,
//! credential name, bounded retries on 429/503 honouring `Retry-After`, and
//! mapping of transport errors to `action-error`.

use crate::bindings::warden::action::http::{self, HttpError, Request, Response};
use crate::{log, sleep_ms, upstream, ActionError};
use serde_json::Value;

pub type Json = Value;

#[derive(Clone, Debug)]
pub struct Client {
    /// e.g. `https://usea1.sentinelone.net` (no trailing slash).
    pub base: String,
    /// Name of the policy credential the host injects.
    pub credential: Option<String>,
    /// How many times a 429/503 is retried before giving up.
    pub max_retries: u32,
    /// First backoff when the upstream gives no `Retry-After`.
    pub backoff_ms: u64,
    /// Longest wait honoured from a `Retry-After`.
    pub max_wait_ms: u64,
    pub timeout_ms: Option<u32>,
    /// Name of the service, for error messages (`SentinelOne`, `Jira`).
    pub service: String,
}

impl Client {
    pub fn new(service: &str, base: &str, credential: Option<String>) -> Client {
        Client {
            base: base.trim_end_matches('/').to_string(),
            credential,
            max_retries: 3,
            backoff_ms: 1000,
            max_wait_ms: 60_000,
            timeout_ms: Some(30_000),
            service: service.to_string(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Sends once; transport errors become `action-error`s.
    pub fn send_once(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Response, ActionError> {
        let body = body.map(|b| Body { content_type: "application/json".into(), bytes: b.to_string().into_bytes() });
        self.send_body_once(method, path, body.as_ref())
    }

    /// Sends once with any body.
    pub fn send_body_once(&self, method: &str, path: &str, body: Option<&Body>) -> Result<Response, ActionError> {
        let mut headers = vec![("accept".to_string(), "application/json".to_string())];
        if let Some(b) = body {
            headers.push(("content-type".into(), b.content_type.clone()));
        }
        let req = Request {
            method: method.into(),
            url: self.url(path),
            headers,
            body: body.map(|b| b.bytes.clone()),
            timeout_ms: self.timeout_ms,
            credential: self.credential.clone(),
        };
        http::send(&req).map_err(|e| self.transport_error(e))
    }

    /// Sends a JSON body (or none), retrying 429 and 503 up to `max_retries`
    /// times. The final response is returned whatever its status.
    pub fn send(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Response, ActionError> {
        let body = body.map(|b| Body { content_type: "application/json".into(), bytes: b.to_string().into_bytes() });
        self.send_body(method, path, body.as_ref())
    }

    /// POSTs `application/x-www-form-urlencoded` fields, with the same retries.
    pub fn post_form(&self, path: &str, fields: &[(&str, &str)]) -> Result<Response, ActionError> {
        let encoded: Vec<String> = fields.iter().map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v))).collect();
        let body = Body { content_type: "application/x-www-form-urlencoded".into(), bytes: encoded.join("&").into_bytes() };
        self.send_body("POST", path, Some(&body))
    }

    /// [`Client::send`] for any body.
    pub fn send_body(&self, method: &str, path: &str, body: Option<&Body>) -> Result<Response, ActionError> {
        let mut attempt = 0;
        loop {
            let resp = self.send_body_once(method, path, body)?;
            if !(resp.status == 429 || resp.status == 503) || attempt >= self.max_retries {
                return Ok(resp);
            }
            let wait = retry_after_ms(&resp).unwrap_or(self.backoff_ms.saturating_mul(1 << attempt)).min(self.max_wait_ms);
            log::warn(&format!("{} answered {} to {method} {path}; retrying in {wait} ms ({}/{})", self.service, resp.status, attempt + 1, self.max_retries));
            sleep_ms(wait);
            attempt += 1;
        }
    }

    pub fn get(&self, path: &str) -> Result<Response, ActionError> {
        self.send("GET", path, None)
    }

    pub fn post(&self, path: &str, body: &Value) -> Result<Response, ActionError> {
        self.send("POST", path, Some(body))
    }

    /// A 2xx response's body as JSON, or the error the status calls for.
    /// `on_error` turns a non-2xx response into the connector's own error.
    pub fn json(&self, resp: Response, on_error: impl FnOnce(&Response) -> ActionError) -> Result<Value, ActionError> {
        if !(200..300).contains(&resp.status) {
            return Err(on_error(&resp));
        }
        if resp.body.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&resp.body).map_err(|e| upstream(Some(resp.status), format!("{} returned a body that is not JSON: {e}", self.service), None))
    }

    fn transport_error(&self, e: HttpError) -> ActionError {
        match e {
            HttpError::Denied(why) => ActionError::Denied(why),
            HttpError::InvalidRequest(why) => ActionError::InvalidInput(format!("{} URL: {why}", self.service)),
            HttpError::Timeout => upstream(None, format!("{} did not answer in time", self.service), None),
            HttpError::Connection(why) => upstream(None, format!("cannot reach {}: {why}", self.service), None),
            HttpError::TooLarge(why) => ActionError::Failed(why),
        }
    }
}

/// A request body and its content type.
pub struct Body {
    pub content_type: String,
    pub bytes: Vec<u8>,
}

/// Percent-encodes everything but RFC 3986 unreserved characters (for query
/// values and form fields).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// `Retry-After` in milliseconds (the seconds form; an HTTP date gives `None`).
pub fn retry_after_ms(resp: &Response) -> Option<u64> {
    header(resp, "retry-after")?.trim().parse::<u64>().ok().map(|s| s * 1000)
}

/// A response header, case-insensitively.
pub fn header<'a>(resp: &'a Response, name: &str) -> Option<&'a str> {
    resp.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

/// The body as lossy text, shortened for error messages.
pub fn body_snippet(resp: &Response) -> String {
    let text = String::from_utf8_lossy(&resp.body);
    let mut s: String = text.chars().take(300).collect();
    if text.chars().count() > 300 {
        s.push('…');
    }
    s
}

/// Follows an opaque cursor until the upstream says there is no next page or
/// `max_items` were collected. `fetch(cursor)` returns one page and the next
/// cursor (`None` or empty when done). Returns the items and whether it
/// stopped at `max_items` with more pages left.
pub fn paginate<T>(
    max_items: usize,
    mut fetch: impl FnMut(Option<&str>) -> Result<(Vec<T>, Option<String>), ActionError>,
) -> Result<(Vec<T>, bool), ActionError> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let (page, next) = fetch(cursor.as_deref())?;
        items.extend(page);
        let next = next.filter(|c| !c.is_empty());
        if items.len() >= max_items {
            let more = next.is_some() || items.len() > max_items;
            items.truncate(max_items);
            return Ok((items, more));
        }
        match next {
            Some(c) => cursor = Some(c),
            None => return Ok((items, false)),
        }
    }
}
