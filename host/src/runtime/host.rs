//! The capability imports of the `action` world, implemented by the host.
//!
//! `http.send` walks the egress layers (see [`crate::egress`]) and leaves one
//! audit record per attempt; `log` lands in the invocation's record; `clock`
//! sleeps without burning the guest's CPU budget.

use super::bindings::warden::action::{clock, http, log, smtp, types};
use crate::mail::{self, Draft, MailError};
use super::state::InvocationState;
use super::LogLine;
use crate::audit::{now_ms, AuditRecord, Decision};
use crate::egress::transport::{WireError, WireRequest};
use crate::egress::{self, redact, redact_str, Denial};
use crate::limits::Bytes;
use crate::policy::rule::{Target, TargetError};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use std::time::{Duration, Instant};

/// Default per-request timeout when the guest gives none.
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Headers the host owns. A guest setting them could smuggle a second request
/// or point a virtual host somewhere its URL does not say.
const HOST_OWNED_HEADERS: &[&str] = &[
    "host", "content-length", "transfer-encoding", "connection", "upgrade", "te", "trailer",
    "keep-alive", "proxy-authorization", "proxy-connection",
];

impl types::Host for InvocationState {}

impl http::Host for InvocationState {
    async fn send(&mut self, req: http::Request) -> wasmtime::Result<Result<http::Response, http::HttpError>> {
        let _off = self.meter.off_cpu();
        let started = Instant::now();
        let mut record = self.audit_record("http", req.method.to_ascii_uppercase(), truncate(&req.url, 2048));
        record.credential = req.credential.clone();
        record.request_bytes = req.body.as_ref().map_or(0, |b| b.len() as u64);
        let result = self.send_checked(req, &mut record).await;
        record.duration_ms = started.elapsed().as_millis() as u64;
        self.audit.push(record);
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

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

impl InvocationState {
    async fn send_checked(
        &mut self,
        req: http::Request,
        record: &mut AuditRecord,
    ) -> Result<http::Response, http::HttpError> {
        let limits = self.limits().clone();
        let plugin = self.plugin.clone();

        // Quota first: every attempt counts, so a denied flood is bounded too.
        self.http_sent += 1;
        if self.http_sent > limits.http_requests {
            return Err(denied(record, Denial {
                rule: "limits.http_requests".into(),
                reason: format!(
                    "{plugin} has used its {} HTTP requests for this invocation (limits.http_requests)",
                    limits.http_requests
                ),
            }));
        }

        // Layer 1: the target.
        let target = match Target::parse(&req.method, &req.url) {
            Ok(t) => t,
            Err(TargetError::Invalid(m)) => {
                return Err(failed(record, "invalid-request", m.clone(), http::HttpError::InvalidRequest(m)))
            }
            Err(TargetError::Refused(m)) => {
                return Err(denied(record, Denial { rule: "userinfo".into(), reason: m }))
            }
        };

        let mut headers = HeaderMap::new();
        for (name, value) in &req.headers {
            let lname = name.to_ascii_lowercase();
            if HOST_OWNED_HEADERS.contains(&lname.as_str()) || lname.starts_with("proxy-") {
                return Err(denied(record, Denial {
                    rule: "host-owned-header".into(),
                    reason: format!("header `{name}` is set by warden from the URL and body; a step cannot choose it"),
                }));
            }
            let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) else {
                let m = format!("header `{}` has a bad name or value (control characters such as CR/LF are refused)", name.escape_debug());
                return Err(failed(record, "invalid-request", m.clone(), http::HttpError::InvalidRequest(m)));
            };
            headers.append(n, v);
        }
        if let Some(body) = &req.body {
            if body.len() as u64 > limits.request_bytes {
                let m = format!(
                    "request body is {}; {plugin}'s grant allows {} (limits.request_bytes)",
                    Bytes(body.len() as u64),
                    Bytes(limits.request_bytes)
                );
                return Err(failed(record, "limits.request_bytes", m.clone(), http::HttpError::TooLarge(m)));
            }
        }

        // Layers 2 and 3: rules, then literal addresses.
        let rule = egress::decide(&self.grant, &target).map_err(|d| denied(record, d))?;
        egress::screen_literal(rule, &target).map_err(|d| denied(record, d))?;
        record.rule = rule.text.clone();

        // Layer 4: credential, injected only now.
        let mut url = target.url.clone();
        let mut needles = Vec::new();
        if let Some(name) = &req.credential {
            let spec = egress::check_credential(&self.grant, name, &target).map_err(|d| denied(record, d))?;
            let secret = spec.source.read().map_err(|why| {
                denied(record, Denial {
                    rule: "credential-value".into(),
                    reason: format!("credential `{name}` has no value on this host: {why}"),
                })
            })?;
            let injection = spec.injection(&secret);
            if let Some((h, v)) = injection.header {
                let n = HeaderName::from_bytes(h.as_bytes()).expect("validated at policy load");
                let mut v = HeaderValue::from_str(&v).map_err(|_| {
                    denied(record, Denial {
                        rule: "credential-value".into(),
                        reason: format!("credential `{name}` has a value that cannot be sent in a header"),
                    })
                })?;
                v.set_sensitive(true);
                headers.remove(&n);
                headers.insert(n, v);
            }
            if let Some((param, value)) = injection.query {
                url.query_pairs_mut().append_pair(&param, &value);
            }
            needles = injection.redact;
        }

        // Layer 5: the wire.
        let remaining = self.deadline.saturating_duration_since(Instant::now());
        let asked = req.timeout_ms.map(|ms| Duration::from_millis(ms as u64)).unwrap_or(DEFAULT_REQUEST_TIMEOUT);
        let method = reqwest::Method::from_bytes(target.method.as_bytes()).expect("validated by Target::parse");
        let wire = WireRequest {
            method,
            url,
            headers,
            body: req.body,
            timeout: asked.min(remaining),
            max_response_bytes: limits.response_bytes,
        };
        let response = match self.transport.send(wire).await {
            Ok(r) => r,
            Err(WireError::AddressRefused(refused)) => {
                return Err(denied(record, Denial { rule: crate::egress::resolve::AddressRefused::RULE.into(), reason: refused.to_string() }))
            }
            Err(WireError::Timeout) => {
                return Err(failed(record, "timeout", "no complete response before the timeout".into(), http::HttpError::Timeout))
            }
            Err(WireError::Connection(m)) => {
                let m = redact_str(&m, &needles);
                return Err(failed(record, "connection", m.clone(), http::HttpError::Connection(m)));
            }
            Err(WireError::TooLarge { cap, seen }) => {
                record.response_bytes = seen;
                let m = format!(
                    "response body passed {}, the most {plugin}'s grant lets it read (limits.response_bytes)",
                    Bytes(cap)
                );
                return Err(failed(record, "limits.response_bytes", m.clone(), http::HttpError::TooLarge(m)));
            }
        };

        // Layer 6: nothing the guest sees carries the secret.
        record.decision = Decision::Allowed;
        record.status = Some(response.status);
        record.response_bytes = response.body.len() as u64;
        let headers = response
            .headers
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8_lossy(&redact(&v, &needles)).into_owned()))
            .collect();
        let body = if needles.is_empty() { response.body } else { redact(&response.body, &needles) };
        Ok(http::Response { status: response.status, headers, body })
    }
}

impl log::Host for InvocationState {
    async fn log(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        let level = match level {
            log::Level::Trace => "trace",
            log::Level::Debug => "debug",
            log::Level::Info => "info",
            log::Level::Warn => "warn",
            log::Level::Error => "error",
        };
        self.logs.push(LogLine { at_ms: now_ms(), level, source: "guest", message });
        Ok(())
    }
}

impl clock::Host for InvocationState {
    async fn sleep(&mut self, ms: u64) -> wasmtime::Result<()> {
        let _off = self.meter.off_cpu();
        // The invocation's wall-clock timeout ends a sleep that outlasts it.
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(())
    }

    async fn now(&mut self) -> wasmtime::Result<u64> {
        Ok(now_ms())
    }
}

impl smtp::Host for InvocationState {
    async fn send(&mut self, m: smtp::Message) -> wasmtime::Result<Result<smtp::Receipt, smtp::SmtpError>> {
        let _off = self.meter.off_cpu();
        let started = Instant::now();
        let grant = self.grant.mail.clone();
        let url = grant.as_ref().map_or("smtp://(none)".to_string(), |g| format!("smtp://{}:{}", g.relay.host, g.relay.port));
        let mut record = self.audit_record("smtp", "SEND".into(), url);
        let draft = Draft {
            from: m.from,
            to: m.to,
            cc: m.cc,
            bcc: m.bcc,
            reply_to: m.reply_to,
            subject: m.subject,
            text: m.text,
            html: m.html,
        };
        let checked = mail::check(&self.plugin, grant.as_ref(), self.mail_sent, &draft);
        let result = match checked {
            Err(e) => Err(e),
            Ok(checked) => {
                self.mail_sent += 1;
                record.rule = "smtp".into();
                record.recipient_domains = Some(checked.domains.clone());
                record.request_bytes = checked.message.formatted().len() as u64;
                let relay = grant.as_ref().expect("checked implies a grant").relay.clone();
                mail::send(&relay, &checked).await.map(|id| smtp::Receipt { message_id: id, accepted: checked.recipients })
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
        record.duration_ms = started.elapsed().as_millis() as u64;
        self.audit.push(record);
        Ok(result)
    }
}
