//! The `http` capability: a guest's `http.send`, judged by the layers in
//! [`check`] (numbered there), then injected ([`inject`]), sent ([`transport`],
//! names resolved through [`resolve`], addresses classed by [`address`]) and
//! scrubbed. One audit record per attempt, allowed or not.

pub mod address;
pub mod check;
pub mod inject;
pub mod resolve;
pub mod transport;

use super::{Call, Capabilities, Denial};
use crate::audit::{AuditRecord, Decision};
use crate::bindings::warden::action::http;
use crate::invocation::guest_text;
use crate::limits::Bytes;
use check::Refusal;
use inject::Redactor;
use reqwest::header::{HeaderName, HeaderValue};
use std::sync::Arc;
use std::time::{Duration, Instant};
use transport::{Transport, WireError, WireRequest};

/// Default per-request timeout when the guest gives none.
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest URL kept in an audit record.
const AUDIT_URL_BYTES: usize = 2048;

/// Per-invocation HTTP state.
pub struct HttpState {
    pub transport: Arc<Transport>,
    /// Attempts so far, allowed or not.
    pub sent: u32,
}

impl HttpState {
    pub fn new(transport: Arc<Transport>) -> HttpState {
        HttpState { transport, sent: 0 }
    }
}

impl http::Host for Capabilities {
    async fn send(&mut self, req: http::Request) -> wasmtime::Result<Result<http::Response, http::HttpError>> {
        let _off = self.call.meter.off_cpu();
        let started = Instant::now();
        let method = guest_text(&req.method, check::MAX_METHOD_BYTES).to_ascii_uppercase();
        let mut record = self.call.record("http", method, guest_text(&req.url, AUDIT_URL_BYTES));
        record.credential = req.credential.as_deref().map(|c| guest_text(c, check::MAX_CREDENTIAL_NAME_BYTES));
        record.request_bytes = req.body.as_ref().map_or(0, |b| b.len() as u64);
        self.http.sent += 1;
        let result = send(&self.call, &self.http, req, &mut record).await;
        self.call.answered(record, started)?;
        Ok(result)
    }
}

fn denied(record: &mut AuditRecord, d: Denial) -> http::HttpError {
    record.decision = Decision::Denied;
    record.rule = d.rule;
    record.reason = Some(d.reason.clone());
    http::HttpError::Denied(d.reason)
}

fn failed(record: &mut AuditRecord, rule: &str, reason: String, err: http::HttpError) -> http::HttpError {
    if record.rule.is_empty() {
        record.rule = rule.to_string();
    }
    record.reason = Some(reason);
    err
}

fn refused(record: &mut AuditRecord, r: Refusal) -> http::HttpError {
    match r {
        Refusal::Denied(d) => denied(record, d),
        Refusal::Invalid { rule, message } => failed(record, rule, message.clone(), http::HttpError::InvalidRequest(message)),
        Refusal::TooLarge { rule, message } => failed(record, rule, message.clone(), http::HttpError::TooLarge(message)),
    }
}

/// One attempt through every layer; `record` says what happened.
async fn send(call: &Call, state: &HttpState, req: http::Request, record: &mut AuditRecord) -> Result<http::Response, http::HttpError> {
    let grant = &call.grant;
    let limits = &grant.limits;
    let plugin = &call.plugin;

    // Layers 1–7: pure checks.
    check::quota(grant, state.sent).map_err(|r| refused(record, r))?;
    let target = check::target(&req.method, &req.url).map_err(|r| refused(record, r))?;
    let mut headers = check::headers(&req.headers).map_err(|r| refused(record, r))?;
    check::request_size(grant, req.body.as_deref()).map_err(|r| refused(record, r))?;
    let rule = check::decide(grant, &target).map_err(|d| denied(record, d))?;
    check::screen_literal(rule, &target).map_err(|d| denied(record, d))?;
    record.rule = rule.text.clone();
    let spec = match &req.credential {
        Some(name) => Some(check::check_credential(grant, name, &target).map_err(|d| denied(record, d))?),
        None => None,
    };

    // Layer 8: the credential's value, injected only now. With a credential on
    // the request the host owns content negotiation and refuses partial
    // content: a compressed body or one slice per request would hide the
    // secret from redaction.
    let mut url = target.url.clone();
    let mut redactor = Redactor::none();
    let injected = spec.is_some();
    if let Some(spec) = spec {
        let name = &spec.name;
        if let Some(h) = ["range", "if-range"].into_iter().find(|h| headers.contains_key(*h)) {
            return Err(denied(record, Denial::new("credential-range", format!("header `{h}` asks for part of a response; refused on a request that carries credential `{name}`, so redaction sees every byte"))));
        }
        headers.insert(reqwest::header::ACCEPT_ENCODING, HeaderValue::from_static("identity"));
        // The guest hears that the value is missing; only the operator's audit
        // record says where it should have come from.
        let secret = spec.source.read().map_err(|why| {
            let e = denied(record, Denial::new("credential-value", format!("credential `{name}` has no value on this host; the operator's audit record says why")));
            record.reason = Some(format!("credential `{name}` has no value on this host: {why}"));
            e
        })?;
        let injection = inject::injection(&spec, &secret);
        if let Some((h, v)) = injection.header {
            let n = HeaderName::from_bytes(h.as_bytes()).expect("validated at policy load");
            let mut v = HeaderValue::from_str(&v).map_err(|_| {
                denied(record, Denial::new("credential-value", format!("credential `{name}` has a value that cannot be sent in a header")))
            })?;
            v.set_sensitive(true);
            headers.remove(&n);
            headers.insert(n, v);
        }
        if let Some((param, value)) = injection.query {
            url.query_pairs_mut().append_pair(&param, &value);
        }
        redactor = injection.redactor;
    }

    // Layer 9: the wire (names are screened by its resolver at connect time).
    let remaining = call.deadline.saturating_duration_since(Instant::now());
    let asked = req.timeout_ms.map(|ms| Duration::from_millis(ms as u64)).unwrap_or(DEFAULT_REQUEST_TIMEOUT);
    let method = reqwest::Method::from_bytes(target.method.as_bytes()).expect("validated by Target::parse");
    let wire = WireRequest { method, url, headers, body: req.body, timeout: asked.min(remaining), max_response_bytes: limits.response_bytes };
    let response = match state.transport.send(wire).await {
        Ok(r) => r,
        Err(WireError::AddressRefused(refused)) => {
            return Err(denied(record, Denial::new(resolve::AddressRefused::RULE, refused.to_string())))
        }
        Err(WireError::Timeout) => {
            return Err(failed(record, "timeout", "no complete response before the timeout".into(), http::HttpError::Timeout))
        }
        Err(WireError::Connection(m)) => {
            let m = redactor.redact_str(&m);
            return Err(failed(record, "connection", m.clone(), http::HttpError::Connection(m)));
        }
        Err(WireError::TooLarge { cap, seen }) => {
            record.response_bytes = seen;
            let m = format!("response body passed {}, the most {plugin}'s grant lets it read (limits.response_bytes)", Bytes(cap));
            return Err(failed(record, "limits.response_bytes", m.clone(), http::HttpError::TooLarge(m)));
        }
    };

    // Layer 10: nothing the guest sees carries the secret.
    record.status = Some(response.status);
    record.response_bytes = response.body.len() as u64;
    if injected {
        let encoding = response.headers.iter().find(|(k, _)| k == "content-encoding").map(|(_, v)| String::from_utf8_lossy(v).to_ascii_lowercase());
        if let Some(enc) = encoding.filter(|e| e.trim() != "identity") {
            let why = format!("the upstream sent a `{}`-encoded body although warden asked for identity; refused, since redaction cannot see into it", guest_text(&enc, 32));
            return Err(denied(record, Denial::new("content-encoding", why)));
        }
    }
    let headers: Vec<(String, String)> = response.headers.into_iter().map(|(k, v)| (k, String::from_utf8_lossy(&redactor.redact(&v)).into_owned())).collect();
    let body = redactor.redact(&response.body);
    if redactor.leaks(&body) || headers.iter().any(|(_, v)| redactor.leaks(v.as_bytes())) {
        return Err(denied(record, Denial::new("redaction", "the response carries the credential in a form warden cannot redact; refused whole".into())));
    }
    record.decision = Decision::Allowed;
    Ok(http::Response { status: response.status, headers, body })
}
