//! The same requests as `fetch`, sent through standard `wasi:http` instead of
//! `warden:action/http`, answering in the same JSON shape so the hostile suite
//! can hold both doors to the same expectations.

use serde_json::{json, Value};
use wasi::http::outgoing_handler;
use wasi::http::types::{ErrorCode, Fields, Method, OutgoingBody, OutgoingRequest, RequestOptions, Scheme};
use wasi::io::streams::StreamError;

/// warden's refusals arrive as `internal-error` with its reason; the prefix says which kind.
fn classify(e: &ErrorCode) -> Value {
    match e {
        ErrorCode::ConnectionReadTimeout | ErrorCode::ConnectionTimeout | ErrorCode::HttpResponseTimeout => json!({"kind": "timeout"}),
        ErrorCode::InternalError(Some(text)) => {
            let kind = if text.starts_with("warden refused") {
                "denied"
            } else if text.starts_with("warden: invalid request") {
                "invalid-request"
            } else if text.starts_with("warden: too large") {
                "too-large"
            } else {
                "connection"
            };
            json!({"kind": kind, "message": text})
        }
        other => json!({"kind": "wasi", "message": format!("{other:?}")}),
    }
}

fn split(url: &str) -> (Scheme, String, String) {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let scheme = match scheme {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        other => Scheme::Other(other.to_string()),
    };
    let cut = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(cut);
    let path = if path.is_empty() {
        "/".to_string()
    } else if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_string()
    };
    (scheme, authority.to_string(), path)
}

pub fn fetch(v: &Value) -> Value {
    let fields = Fields::new();
    if let Some(o) = v["headers"].as_object() {
        for (k, val) in o {
            if let Err(e) = fields.append(k, &val.as_str().unwrap_or("").as_bytes().to_vec()) {
                // Refused by the wasi:http fields resource before any request exists.
                return json!({"error": {"kind": "header-error", "message": format!("{e:?}")}});
            }
        }
    }
    if let Some(c) = v["credential"].as_str() {
        fields.append("warden-credential", &c.as_bytes().to_vec()).unwrap();
    }
    let body = v["body"].as_str().map(|b| b.as_bytes().to_vec());
    if let (Some(b), true) = (&body, v["content_length"].as_bool().unwrap_or(false)) {
        fields.append("content-length", &b.len().to_string().into_bytes()).unwrap();
    }
    let req = OutgoingRequest::new(fields);
    let method = match v["method"].as_str().unwrap_or("GET") {
        "GET" => Method::Get,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "HEAD" => Method::Head,
        other => Method::Other(other.to_string()),
    };
    let (scheme, authority, path) = split(v["url"].as_str().unwrap_or(""));
    if req.set_method(&method).is_err()
        || req.set_scheme(Some(&scheme)).is_err()
        || req.set_authority(Some(&authority)).is_err()
        || req.set_path_with_query(Some(&path)).is_err()
    {
        return json!({"error": {"kind": "invalid-request", "message": "wasi:http refused the method, scheme, authority or path"}});
    }
    let outgoing = req.body().unwrap();
    let options = RequestOptions::new();
    if let Some(ms) = v["timeout_ms"].as_u64() {
        let _ = options.set_first_byte_timeout(Some(ms * 1_000_000));
    }
    let future = match outgoing_handler::handle(req, Some(options)) {
        Ok(f) => f,
        Err(e) => return json!({"error": classify(&e)}),
    };
    if let Some(b) = body {
        let stream = outgoing.write().unwrap();
        for chunk in b.chunks(4096) {
            // The host stops reading a body past the cap; the answer says why.
            if stream.blocking_write_and_flush(chunk).is_err() {
                break;
            }
        }
        drop(stream);
    }
    let _ = OutgoingBody::finish(outgoing, None);
    future.subscribe().block();
    let response = match future.get() {
        Some(Ok(Ok(r))) => r,
        Some(Ok(Err(e))) => return json!({"error": classify(&e)}),
        other => return json!({"error": {"kind": "wasi", "message": format!("{other:?}")}}),
    };
    let headers: Vec<(String, String)> = response.headers().entries().into_iter().map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned())).collect();
    let status = response.status();
    let incoming = response.consume().unwrap();
    let stream = incoming.stream().unwrap();
    let mut data = Vec::new();
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) => data.extend_from_slice(&chunk),
            Err(StreamError::Closed) => break,
            Err(e) => return json!({"error": {"kind": "connection", "message": format!("{e:?}")}}),
        }
    }
    json!({"status": status, "headers": headers, "body": String::from_utf8_lossy(&data)})
}

/// Holds `count` header sections of `headers` empty values each, all alive at
/// once: host memory a guest can make the host keep for it. Stops at the
/// first refusal (or the host stops the guest).
pub fn hold_fields(count: u64, headers: u64) -> Value {
    let mut held = Vec::new();
    let mut refused = None;
    'all: for _ in 0..count {
        let f = Fields::new();
        for _ in 0..headers {
            if let Err(e) = f.append("x-a", b"") {
                refused = Some(format!("{e:?}"));
                held.push(f);
                break 'all;
            }
        }
        held.push(f);
    }
    json!({"held": held.len(), "refused": refused})
}
