//! What the capabilities record and replay (see [`crate::recording`]): the
//! guest's side of each call — the request before any credential is
//! injected, the answer after redaction — so a recording never holds a
//! secret and a replay needs no network.

use super::http::delivered::Delivered;
use crate::audit::{AuditRecord, Verdict};
use crate::bindings::warden::action::http::HttpError;
use crate::recording::{Body, BodyOut, Call, HttpAnswer, HttpAnswerOut, HttpRequest, HttpRequestOut};

/// A request as the guest spelled it.
pub fn request(method: &str, url: &str, headers: &[(String, String)], body: Option<&[u8]>, credential: Option<&str>) -> HttpRequest {
    HttpRequest {
        method: method.to_string(),
        url: url.to_string(),
        headers: headers.to_vec(),
        body: body.map(Body::of),
        credential: credential.map(String::from),
    }
}

/// A request as the guest spelled it, written as a recording keeps it (the
/// JSON of [`request`], without copying it first).
pub fn request_json(method: &str, url: &str, headers: &[(String, String)], body: Option<&[u8]>, credential: Option<&str>) -> String {
    let out = HttpRequestOut { method, url, headers, body: body.map(BodyOut::of), credential };
    let size = 96 + url.len() + headers.iter().map(|(k, v)| k.len() + v.len() + 8).sum::<usize>() + body.map_or(0, |b| b.len() + 8);
    let mut json = Vec::with_capacity(size);
    match serde_json::to_writer(&mut json, &out) {
        Ok(()) => String::from_utf8(json).unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// What the guest received, borrowed (see [`answer`]).
pub fn answer_out(result: &Result<Delivered, HttpError>) -> HttpAnswerOut<'_> {
    match result {
        Ok(d) => HttpAnswerOut::Response { status: d.status, headers: &d.headers, body: BodyOut::of(&d.body) },
        Err(e) => {
            let (kind, message) = match e {
                HttpError::Denied(m) => ("denied", m.as_str()),
                HttpError::InvalidRequest(m) => ("invalid-request", m.as_str()),
                HttpError::Timeout => ("timeout", ""),
                HttpError::Connection(m) => ("connection", m.as_str()),
                HttpError::TooLarge(m) => ("too-large", m.as_str()),
            };
            HttpAnswerOut::Error { kind, message }
        }
    }
}

/// What the guest received (the owned form of [`answer_out`]).
pub fn answer(result: &Result<Delivered, HttpError>) -> HttpAnswer {
    match answer_out(result) {
        HttpAnswerOut::Response { status, headers, body } => HttpAnswer::Response { status, headers: headers.to_vec(), body: body.into() },
        HttpAnswerOut::Error { kind, message } => HttpAnswer::Error { kind: kind.into(), message: message.into() },
    }
}

/// The recorded answer, as the guest receives it again.
pub fn replayed(answer: &HttpAnswer) -> Result<Delivered, HttpError> {
    match answer {
        HttpAnswer::Response { status, headers, body } => Ok(Delivered { status: *status, headers: headers.clone(), body: body.bytes() }),
        HttpAnswer::Error { kind, message } => Err(match kind.as_str() {
            "denied" => HttpError::Denied(message.clone()),
            "invalid-request" => HttpError::InvalidRequest(message.clone()),
            "timeout" => HttpError::Timeout,
            "too-large" => HttpError::TooLarge(message.clone()),
            _ => HttpError::Connection(message.clone()),
        }),
    }
}

/// The audit record of a replayed call: nothing left the host.
pub fn audit_replayed(record: &mut AuditRecord, call: &Call) {
    record.rule = "replay".into();
    record.reason = Some("answered from the recording; nothing left the host".into());
    record.decision = match call {
        Call::Http { answer: HttpAnswer::Error { kind, .. }, .. } if kind == "denied" => Verdict::Denied,
        _ => Verdict::Allowed,
    };
    if let Call::Http { answer: HttpAnswer::Response { status, .. }, .. } = call {
        record.status = Some(*status);
    }
}
