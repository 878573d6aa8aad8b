//! The `smtp` capability: a guest hands over a message; the host checks it
//! against the grant's mail policy ([`check`]) and only then sends it through
//! the operator's relay ([`relay`]). One audit record per message, with
//! recipient counts per domain and never the addresses or the body.

pub mod check;
pub mod relay;

use super::Capabilities;
use crate::audit::Decision;
use crate::bindings::warden::action::smtp;
use check::{Draft, MailError};
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
        let draft = Draft { from: m.from, to: m.to, cc: m.cc, bcc: m.bcc, reply_to: m.reply_to, subject: m.subject, text: m.text, html: m.html };
        let result = match check::check(&self.call.plugin, grant.as_ref(), self.smtp.sent, &draft) {
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
                record.decision = Decision::Allowed;
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
                record.decision = Decision::Allowed;
                record.reason = Some("relay timeout".into());
                Err(smtp::SmtpError::Timeout)
            }
            Err(MailError::Connection(m)) => {
                record.decision = Decision::Allowed;
                record.reason = Some(m.clone());
                Err(smtp::SmtpError::Connection(m))
            }
            Err(MailError::Rejected(m)) => {
                record.decision = Decision::Allowed;
                record.reason = Some(m.clone());
                Err(smtp::SmtpError::Rejected(m))
            }
        };
        self.call.answered(record, started)?;
        Ok(result)
    }
}
