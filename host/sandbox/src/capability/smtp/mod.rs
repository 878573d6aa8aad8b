//! The `smtp` capability: a guest hands over a message; the host checks it
//! against the grant's mail policy ([`check`]) and only then sends it through
//! the operator's relay ([`relay`]). One audit record per message, with
//! recipient counts per domain and never the addresses or the body.

pub mod check;
pub mod relay;

use super::Capabilities;
use crate::audit::Verdict;
use crate::bindings::warden::action::smtp;
use crate::recording::{Call, Intercepted};
use check::{Draft, MailError};
use serde_json::{json, Value};
use std::time::Instant;

/// Per-invocation mail state.
#[derive(Default)]
pub struct SmtpState {
    /// Messages sent so far (refused ones do not count).
    pub sent: u32,
}

impl smtp::Host for Capabilities {
    async fn send(&mut self, m: smtp::Message) -> wasmtime::Result<Result<smtp::Receipt, smtp::SmtpError>> {
        let _off = self.call.meter.off_cpu();
        let started = Instant::now();
        let grant = self.call.grant.mail.clone();
        let url = grant.as_ref().map_or("smtp://(none)".to_string(), |g| format!("smtp://{}:{}", g.relay.host, g.relay.port));
        let mut record = self.call.record("smtp", "SEND".into(), url);
        let message =
            json!({"from": m.from, "to": m.to, "cc": m.cc, "bcc": m.bcc, "reply_to": m.reply_to, "subject": m.subject, "text": m.text, "html": m.html});
        let made = match self.tape.intercept(|| Call::Smtp { message: message.clone(), answer: Value::Null }) {
            // A replayed message is compared, never sent.
            Intercepted::Answered(Ok(call @ Call::Smtp { .. })) => {
                super::taped::audit_replayed(&mut record, &call);
                self.call.keep(record, started);
                let Call::Smtp { answer, .. } = call else { unreachable!() };
                return Ok(replayed(&answer));
            }
            Intercepted::Answered(Ok(_)) => unreachable!("answer() returns a call of the kind asked"),
            Intercepted::Answered(Err(d)) => return Err(self.call.diverged(&d)),
            Intercepted::Proceed(made) => made,
        };
        let mut draft = Draft { from: m.from, to: m.to, cc: m.cc, bcc: m.bcc, reply_to: m.reply_to, subject: m.subject, text: m.text, html: m.html };
        // Placeholder credentials granted for this relay, filled in only now (the
        // audit, the recording and the guest keep the placeholder).
        let filled = match grant.as_ref() {
            Some(g) => fill_placeholders(&self.call.grant.credentials, &g.relay.name, &mut draft),
            None => Ok(Vec::new()),
        };
        // Approval links the step was handed, likewise put in only now.
        let links = put_links(&self.call.info.handed, &mut draft);
        let result = match filled.and_then(|names| {
            if !names.is_empty() {
                record.credential = Some(names.join(","));
            }
            check::check(&self.call.plugin, grant.as_ref(), self.smtp.sent, &draft)
        }) {
            Err(e) => Err(e),
            Ok(checked) => {
                self.smtp.sent += 1;
                record.rule = "smtp".into();
                record.recipient_domains = Some(checked.domains.clone());
                record.request_bytes = checked.message.formatted().len() as u64;
                let relay = grant.as_ref().expect("checked implies a grant").relay.clone();
                relay::send(&relay, &checked).await.map(|id| smtp::Receipt { message_id: id, accepted: checked.recipients })
            }
        };
        let result = match result {
            Ok(receipt) => {
                record.decision = Verdict::Allowed;
                Ok(receipt)
            }
            Err(MailError::Denied(d)) => {
                record.rule = d.rule;
                record.reason = Some(d.reason.clone());
                Err(smtp::SmtpError::Denied(d.reason))
            }
            Err(MailError::Invalid(m)) => {
                record.rule = "invalid-message".into();
                record.reason = Some(m.clone());
                Err(smtp::SmtpError::InvalidMessage(m))
            }
            Err(MailError::Timeout) => {
                record.decision = Verdict::Allowed;
                record.reason = Some("relay timeout".into());
                Err(smtp::SmtpError::Timeout)
            }
            Err(MailError::Connection(m)) => {
                let m = links.redact_str(&m);
                record.decision = Verdict::Allowed;
                record.reason = Some(m.clone());
                Err(smtp::SmtpError::Connection(m))
            }
            Err(MailError::Rejected(m)) => {
                let m = links.redact_str(&m);
                record.decision = Verdict::Allowed;
                record.reason = Some(m.clone());
                Err(smtp::SmtpError::Rejected(m))
            }
        };
        made.keep(|| Call::Smtp { message, answer: answer(&result) });
        self.call.answered(record, started)?;
        Ok(result)
    }
}

/// Puts the value of each `placeholder` credential bound to `relay` where
/// the message holds its marker: as it is in the text, HTML-escaped in the
/// HTML, and in the subject only when it holds no line break (a header).
/// Returns the names of the credentials filled in.
fn fill_placeholders(
    granted: &std::collections::BTreeMap<String, std::sync::Arc<crate::policy::credentials::CredentialSpec>>,
    relay: &str,
    d: &mut Draft,
) -> Result<Vec<String>, MailError> {
    use crate::policy::credentials::CredentialKind;
    let mut names = Vec::new();
    for spec in granted.values() {
        let CredentialKind::Placeholder { marker } = &spec.kind else { continue };
        let held = d.subject.contains(marker.as_str()) || d.text.contains(marker.as_str()) || d.html.as_deref().is_some_and(|h| h.contains(marker.as_str()));
        if !held {
            continue;
        }
        let denied = |reason: String| MailError::Denied(crate::capability::Denial { rule: "credential".into(), reason });
        if !spec.relays.iter().any(|r| r == relay) {
            return Err(denied(format!("credential `{}` is not bound to relay {relay} (hosts = [\"relay:{relay}\"])", spec.name)));
        }
        let secret = spec.source.read().map_err(|_| denied(format!("credential `{}` has no value on this host", spec.name)))?;
        let value = secret.expose();
        if d.subject.contains(marker.as_str()) {
            if value.contains(['\r', '\n']) {
                return Err(denied(format!("credential `{}` holds a line break, which a subject cannot carry", spec.name)));
            }
            d.subject = d.subject.replace(marker.as_str(), value);
        }
        d.text = d.text.replace(marker.as_str(), value);
        if let Some(h) = d.html.as_mut() {
            let escaped = value.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;");
            *h = h.replace(marker.as_str(), &escaped);
        }
        names.push(spec.name.clone());
    }
    Ok(names)
}

/// Puts each approval link's token where the message holds its placeholder
/// (a token is letters, digits, `-` and `_`: the same in a subject, the text
/// and HTML); the redactor of those that went out, for what the relay says.
fn put_links(handed: &crate::invocation::Handed, d: &mut Draft) -> crate::capability::http::inject::Redactor {
    crate::capability::http::inject::put_handed(handed, |placeholder, token| {
        let mut put = false;
        for text in std::iter::once(&mut d.subject).chain(std::iter::once(&mut d.text)).chain(d.html.as_mut()) {
            if text.contains(placeholder) {
                *text = text.replace(placeholder, token);
                put = true;
            }
        }
        put
    })
    .unwrap_or_else(crate::capability::http::inject::Redactor::none)
}

/// A receipt or an error, as a recording keeps it.
fn answer(result: &Result<smtp::Receipt, smtp::SmtpError>) -> Value {
    match result {
        Ok(r) => json!({"message_id": r.message_id, "accepted": r.accepted}),
        Err(e) => {
            let (kind, message) = match e {
                smtp::SmtpError::Denied(m) => ("denied", m.clone()),
                smtp::SmtpError::InvalidMessage(m) => ("invalid-message", m.clone()),
                smtp::SmtpError::Timeout => ("timeout", String::new()),
                smtp::SmtpError::Connection(m) => ("connection", m.clone()),
                smtp::SmtpError::Rejected(m) => ("rejected", m.clone()),
            };
            json!({"error": kind, "message": message})
        }
    }
}

/// The recorded receipt or error, as the guest receives it again.
fn replayed(answer: &Value) -> Result<smtp::Receipt, smtp::SmtpError> {
    let text = |k: &str| answer[k].as_str().unwrap_or("").to_string();
    match answer["error"].as_str() {
        None => Ok(smtp::Receipt {
            message_id: text("message_id"),
            accepted: answer["accepted"].as_array().map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect()).unwrap_or_default(),
        }),
        Some("denied") => Err(smtp::SmtpError::Denied(text("message"))),
        Some("invalid-message") => Err(smtp::SmtpError::InvalidMessage(text("message"))),
        Some("timeout") => Err(smtp::SmtpError::Timeout),
        Some("rejected") => Err(smtp::SmtpError::Rejected(text("message"))),
        Some(_) => Err(smtp::SmtpError::Connection(text("message"))),
    }
}
