//! The `http` capability: one set of egress layers with two front doors.
//!
//! * `warden:action/http.send` ([`http::Host`] below), warden's own import;
//! * standard `wasi:http/outgoing-handler` ([`wasi`]), so `fetch()` in
//!   JavaScript and ordinary HTTP clients in Python and Rust work unchanged.
//!
//! Both doors turn the guest's request into an [`Outgoing`] and call the same
//! two functions: [`admit`] (layers 1–7 of [`check`], pure, in the guest's
//! store) and [`deliver`] (layers 8–10: [`inject`], [`transport`] with names
//! resolved through [`resolve`] and addresses classed by [`address`], then
//! redaction), which owns everything it needs so it can also run as a
//! detached future. One audit record per attempt, allowed or not.

pub mod address;
pub mod check;
pub mod delivered;
pub mod inject;
pub mod oauth;
pub mod resolve;
pub mod transport;
pub mod wasi;

use super::{taped, CallState, Capabilities, Denial};
use crate::audit::{AuditRecord, Verdict};
use crate::bindings::warden::action::http;
use crate::invocation::guest_text;
use crate::limits::Bytes;
use crate::policy::credentials::{CredentialKind, CredentialSpec, OAuth2, Secret};
use crate::policy::target::Target;
use crate::recording::{self, Call, Intercepted};
use check::Refusal;
use inject::Redactor;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use std::sync::Arc;
use std::time::{Duration, Instant};
use transport::{Transport, WireError, WireRequest};

pub use delivered::Delivered;

/// wasi:http exchanges of one invocation alive at once (on the wire, or
/// answered and not yet read or dropped by the guest); more wait their turn.
/// Each may hold up to `limits.response_bytes` of host memory, so this bounds
/// what a guest can make the host buffer.
pub const WASI_IN_FLIGHT: usize = 4;

/// Default per-request timeout when the guest gives none.
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest URL kept in an audit record.
const AUDIT_URL_BYTES: usize = 2048;

/// What all HTTP egress of a runtime shares: the wire, and the access
/// tokens the host obtained for `oauth2` credentials.
pub struct Egress {
    pub transport: Transport,
    pub tokens: oauth::Tokens,
}

impl Egress {
    pub fn new(transport: Transport) -> Egress {
        Egress { transport, tokens: oauth::Tokens::default() }
    }
}

/// Per-invocation HTTP state.
pub struct HttpState {
    pub egress: Arc<Egress>,
    /// Attempts so far, allowed or not, through either door.
    pub sent: u32,
    /// Turns on the wire for wasi:http exchanges (see [`WASI_IN_FLIGHT`]).
    pub wasi_turns: Arc<tokio::sync::Semaphore>,
}

impl HttpState {
    pub fn new(egress: Arc<Egress>) -> HttpState {
        HttpState { egress, sent: 0, wasi_turns: Arc::new(tokio::sync::Semaphore::new(WASI_IN_FLIGHT)) }
    }
}

/// A guest's request as the layers see it, whichever door it came through.
pub struct Outgoing<'a> {
    pub method: &'a str,
    pub url: &'a str,
    pub headers: &'a [(String, String)],
    /// The body's size when it is known before the body is read (layer 4
    /// checks it then; a streamed body is capped again as it is read).
    pub body_len: Option<u64>,
    /// The credential the guest named; `None` lets an `inject = "auto"`
    /// credential bound to the origin apply.
    pub credential: Option<&'a str>,
    pub timeout: Option<Duration>,
}

/// A request the policy admitted (layers 1–7), owning all that the later
/// layers need.
pub struct Admitted {
    plugin: String,
    target: Target,
    headers: HeaderMap,
    credential: Option<Arc<CredentialSpec>>,
    /// Approval links the step was handed (see [`crate::invocation::Handed`]).
    handed: crate::invocation::Handed,
    timeout: Duration,
    max_request_bytes: u64,
    max_response_bytes: u64,
    egress: Arc<Egress>,
}

impl Admitted {
    /// Most body bytes the grant lets this request carry.
    pub fn max_request_bytes(&self) -> u64 {
        self.max_request_bytes
    }
}

impl http::Host for Capabilities {
    async fn send(&mut self, req: http::Request) -> wasmtime::Result<Result<http::Response, http::HttpError>> {
        let _off = self.call.meter.off_cpu();
        let started = Instant::now();
        let mut record = self.call.record("http", String::new(), String::new());
        let asked = || taped::request(&req.method, &req.url, &req.headers, req.body.as_deref(), req.credential.as_deref());
        let answered = || Call::Http { request: asked(), answer: recording::HttpAnswer::Error { kind: String::new(), message: String::new() } };
        let made = match self.tape.intercept(answered) {
            // Answered from the recording: nothing is judged or sent again.
            Intercepted::Answered(answer) => {
                self.http.sent += 1;
                record.method = guest_text(&req.method, check::MAX_METHOD_BYTES).to_ascii_uppercase();
                record.url = guest_text(&req.url, AUDIT_URL_BYTES);
                return match answer {
                    Ok(call @ Call::Http { .. }) => {
                        taped::audit_replayed(&mut record, &call);
                        self.call.keep(record, started);
                        let Call::Http { answer, .. } = call else { unreachable!() };
                        Ok(taped::replayed(&answer).map(|d| http::Response { status: d.status, headers: d.headers, body: d.body }))
                    }
                    Ok(_) => unreachable!("answer() returns a call of the kind asked"),
                    Err(d) => Err(self.call.diverged(&d)),
                };
            }
            Intercepted::Proceed(made) => made,
        };
        let outgoing = Outgoing {
            method: &req.method,
            url: &req.url,
            headers: &req.headers,
            body_len: Some(req.body.as_ref().map_or(0, |b| b.len() as u64)),
            credential: req.credential.as_deref(),
            timeout: req.timeout_ms.map(|ms| Duration::from_millis(ms as u64)),
        };
        // Written now: the body goes on the wire below.
        let request = made.keeps().then(|| taped::request_json(&req.method, &req.url, &req.headers, req.body.as_deref(), req.credential.as_deref()));
        let result = match admit(&self.call, &mut self.http, &outgoing, &mut record) {
            Ok(admitted) => deliver(admitted, req.body, &mut record).await,
            Err(e) => Err(e),
        };
        // Kept before the audit's verdict, which may end the invocation (past limits.denials).
        if let Some(request) = request {
            made.keep_http(&request, taped::answer_out(&result));
        }
        self.call.answered(record, started)?;
        Ok(result.map(|d| http::Response { status: d.status, headers: d.headers, body: d.body }))
    }
}

fn denied(record: &mut AuditRecord, d: Denial) -> http::HttpError {
    record.decision = Verdict::Denied;
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

/// Layers 1–7: counts the attempt and judges it. Pure apart from the count;
/// `record` (fresh from [`Call::record`]) says what was asked and decided.
pub fn admit(call: &CallState, state: &mut HttpState, req: &Outgoing, record: &mut AuditRecord) -> Result<Admitted, http::HttpError> {
    let grant = &call.grant;
    record.method = guest_text(req.method, check::MAX_METHOD_BYTES).to_ascii_uppercase();
    record.url = guest_text(req.url, AUDIT_URL_BYTES);
    record.credential = req.credential.map(|c| guest_text(c, check::MAX_CREDENTIAL_NAME_BYTES));
    record.request_bytes = req.body_len.unwrap_or(0);
    state.sent += 1;

    check::quota(grant, state.sent).map_err(|r| refused(record, r))?;
    let target = check::target(req.method, req.url).map_err(|r| refused(record, r))?;
    let mut headers = check::headers(req.headers).map_err(|r| refused(record, r))?;
    // The run's trace, to a grant that opted in (it tells the other side who called).
    if let (true, Some(tp)) = (grant.traceparent, &call.info.traceparent) {
        if let Ok(v) = HeaderValue::from_str(tp) {
            headers.insert(HeaderName::from_static("traceparent"), v);
        }
    }
    if let Some(len) = req.body_len {
        check::request_size(grant, len).map_err(|r| refused(record, r))?;
    }
    let rule = check::decide(grant, &target).map_err(|d| denied(record, d))?;
    check::screen_literal(rule, &target).map_err(|d| denied(record, d))?;
    record.rule = rule.text.clone();
    let credential = match req.credential {
        Some(name) => Some(check::check_credential(grant, name, &target).map_err(|d| denied(record, d))?),
        None => check::auto_credential(grant, &target).map_err(|d| denied(record, d))?,
    };
    if let Some(spec) = &credential {
        record.credential = Some(spec.name.clone());
    }
    let remaining = call.deadline.saturating_duration_since(Instant::now());
    Ok(Admitted {
        plugin: call.plugin.clone(),
        target,
        headers,
        credential,
        handed: call.info.handed.clone(),
        timeout: req.timeout.unwrap_or(DEFAULT_REQUEST_TIMEOUT).min(remaining),
        max_request_bytes: grant.limits.request_bytes,
        max_response_bytes: grant.limits.response_bytes,
        egress: state.egress.clone(),
    })
}

/// Puts each approval link's token where the request holds its placeholder
/// (as [`inject::substitute`] does a placeholder credential's value), and
/// returns the redactor of the tokens that went out, if any did.
fn put_links(handed: &crate::invocation::Handed, url: &mut url::Url, body: &mut Option<Vec<u8>>, content_type: &str) -> Option<Redactor> {
    inject::put_handed(handed, |placeholder, token| inject::substitute(placeholder, token, url, body, content_type) > 0)
}

/// An `oauth2` credential whose cached token went on the wire: if the API
/// refuses it, the request is sent again, once, with a new token.
struct OAuthUse {
    spec: Arc<CredentialSpec>,
    client_secret: Secret,
    token: oauth::Token,
    /// The request as it was before the token was injected.
    unsent: (HeaderMap, url::Url, Option<Vec<u8>>),
}

/// The credential's access token for this request; the exchange, if one was
/// made, is audited on `record`. The guest hears only that there is none.
async fn oauth_token(
    spec: &CredentialSpec,
    cfg: &OAuth2,
    client_secret: &Secret,
    egress: &Egress,
    stale: Option<u64>,
    record: &mut AuditRecord,
) -> Result<oauth::Token, http::HttpError> {
    let name = &spec.name;
    egress.tokens.of(spec, cfg).get(name, cfg, client_secret, &egress.transport, stale, &mut record.oauth).await.map_err(|oauth::TokenFailure(why)| {
        let e = denied(
            record,
            Denial::new("credential-token", format!("credential `{name}` could not obtain an access token; the operator's audit record says why")),
        );
        record.reason = Some(format!("credential `{name}` could not obtain an access token from {}: {why}", cfg.token_url));
        e
    })
}

/// Applies `injection` to the request's headers and URL.
fn inject_into(
    headers: &mut HeaderMap,
    url: &mut url::Url,
    injection: &inject::Injection,
    name: &str,
    record: &mut AuditRecord,
) -> Result<(), http::HttpError> {
    if let Some((h, v)) = &injection.header {
        let n = HeaderName::from_bytes(h.as_bytes()).expect("validated at policy load");
        let mut v = HeaderValue::from_str(v)
            .map_err(|_| denied(record, Denial::new("credential-value", format!("credential `{name}` has a value that cannot be sent in a header"))))?;
        v.set_sensitive(true);
        headers.remove(&n);
        headers.insert(n, v);
    }
    if let Some((param, value)) = &injection.query {
        url.query_pairs_mut().append_pair(param, value);
    }
    Ok(())
}

/// Layers 8–10 for an admitted request: the credential injected, the wire,
/// and nothing coming back that carries the secret. Owns what it uses, so a
/// `wasi:http` request can run it as a future beside the guest.
pub async fn deliver(a: Admitted, mut body: Option<Vec<u8>>, record: &mut AuditRecord) -> Result<Delivered, http::HttpError> {
    let Admitted { plugin, target, mut headers, credential, handed, timeout, max_request_bytes, max_response_bytes, egress } = a;
    let len = body.as_ref().map_or(0, |b| b.len() as u64);
    record.request_bytes = len;
    // Layer 4 again, for a body whose size was not known at admission.
    if len > max_request_bytes {
        let message = format!("request body is {}; {plugin}'s grant allows {} (limits.request_bytes)", Bytes(len), Bytes(max_request_bytes));
        return Err(failed(record, "limits.request_bytes", message.clone(), http::HttpError::TooLarge(message)));
    }

    // Layer 8: the secrets, put in only now: approval links whose
    // placeholders the step was handed, and the credential. With a secret on
    // the request the host owns content negotiation and refuses partial
    // content: a compressed body or one slice per request would hide the
    // secret from redaction.
    let mut url = target.url.clone();
    let content_type = headers.get(reqwest::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let links = put_links(&handed, &mut url, &mut body, &content_type);
    if links.is_some() {
        headers.remove(reqwest::header::CONTENT_LENGTH);
    }
    let mut redactor = Redactor::none();
    let injected = credential.is_some() || links.is_some();
    if injected {
        let carries = match &credential {
            Some(spec) => format!("credential `{}`", spec.name),
            None => "an approval link".to_string(),
        };
        if let Some(h) = ["range", "if-range"].into_iter().find(|h| headers.contains_key(*h)) {
            return Err(denied(
                record,
                Denial::new(
                    "credential-range",
                    format!("header `{h}` asks for part of a response; refused on a request that carries {carries}, so redaction sees every byte"),
                ),
            ));
        }
        headers.insert(reqwest::header::ACCEPT_ENCODING, HeaderValue::from_static("identity"));
    }
    let links = links.unwrap_or_else(Redactor::none);
    let mut oauth: Option<OAuthUse> = None;
    if let Some(spec) = &credential {
        let name = &spec.name;
        // The guest hears that the value is missing; only the operator's audit
        // record says where it should have come from.
        let secret = spec.source.read().map_err(|why| {
            let e =
                denied(record, Denial::new("credential-value", format!("credential `{name}` has no value on this host; the operator's audit record says why")));
            record.reason = Some(format!("credential `{name}` has no value on this host: {why}"));
            e
        })?;
        let injection = match &spec.kind {
            // The secret value is the client secret; what goes on the wire is the token.
            CredentialKind::OAuth2(cfg) => {
                let token = oauth_token(spec, cfg, &secret, &egress, None, record).await?;
                let injection = inject::injection(spec, &token.secret, &[&secret]);
                // A token minted for this request is not worth another exchange on a 401.
                if !token.fresh {
                    oauth = Some(OAuthUse { spec: spec.clone(), client_secret: secret, token, unsent: (headers.clone(), url.clone(), body.clone()) });
                }
                injection
            }
            _ => inject::injection(spec, &secret, &[]),
        };
        inject_into(&mut headers, &mut url, &injection, name, record)?;
        if let Some((marker, value)) = &injection.substitute {
            inject::substitute(marker, value, &mut url, &mut body, &content_type);
            // The body grew or shrank by the value: the wire sets its length.
            headers.remove(reqwest::header::CONTENT_LENGTH);
        }
        redactor = injection.redactor;
    }

    // Layer 9: the wire (names are screened by its resolver at connect time).
    let method = reqwest::Method::from_bytes(target.method.as_bytes()).expect("validated by Target::parse");
    let resend_method = oauth.as_ref().map(|_| method.clone());
    let wire = WireRequest { method, url, headers, body, timeout, max_response_bytes };
    let mut sent = egress.transport.send(wire).await;
    let refused = matches!(&sent, Ok(r) if r.status == 401);
    if let (true, Some(used), Some(method)) = (refused, oauth, resend_method) {
        let OAuthUse { spec, client_secret, token: old, unsent: (mut headers, mut url, body) } = used;
        let CredentialKind::OAuth2(cfg) = &spec.kind else { unreachable!("an OAuthUse holds an oauth2 credential") };
        let token = oauth_token(&spec, cfg, &client_secret, &egress, Some(old.generation), record).await?;
        // The same token back: the host just replaced one after a 401; this 401 stands.
        if token.generation != old.generation {
            let injection = inject::injection(&spec, &token.secret, &[&old.secret, &client_secret]);
            inject_into(&mut headers, &mut url, &injection, &spec.name, record)?;
            redactor = injection.redactor;
            sent = egress.transport.send(WireRequest { method, url, headers, body, timeout, max_response_bytes }).await;
        }
    }
    let response = match sent {
        Ok(r) => r,
        Err(WireError::AddressRefused(refused)) => return Err(denied(record, Denial::new(resolve::AddressRefused::RULE, refused.to_string()))),
        Err(WireError::Timeout) => return Err(failed(record, "timeout", "no complete response before the timeout".into(), http::HttpError::Timeout)),
        Err(WireError::Connection(m)) => {
            let m = links.redact_str(&redactor.redact_str(&m));
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
            let why = format!(
                "the upstream sent a `{}`-encoded body although warden asked for identity; refused, since redaction cannot see into it",
                guest_text(&enc, 32)
            );
            return Err(denied(record, Denial::new("content-encoding", why)));
        }
    }
    let headers: Vec<(String, String)> =
        response.headers.into_iter().map(|(k, v)| (k, String::from_utf8_lossy(&links.redact(&redactor.redact(&v))).into_owned())).collect();
    let body = links.redact(&redactor.redact(&response.body));
    let leaks = |r: &Redactor| r.leaks(&body) || headers.iter().any(|(_, v)| r.leaks(v.as_bytes()));
    if leaks(&redactor) {
        return Err(denied(record, Denial::new("redaction", "the response carries the credential in a form warden cannot redact; refused whole".into())));
    }
    if leaks(&links) {
        return Err(denied(
            record,
            Denial::new("redaction", "the response carries an approval link's token in a form warden cannot redact; refused whole".into()),
        ));
    }
    record.decision = Verdict::Allowed;
    Ok(Delivered { status: response.status, headers, body })
}
