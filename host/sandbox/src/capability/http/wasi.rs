//! The `wasi:http` front door: a standard `wasi:http/outgoing-handler`
//! request (what `fetch()` in componentize-js, Python's wasi:http helpers and
//! Rust clients such as `wstd` or `waki` send) goes through exactly the layers
//! of `warden:action/http.send` — [`super::admit`] then [`super::deliver`].
//!
//! What differs is only how the request is spelled:
//!
//! * **Credential**: the guest names it with the request header
//!   [`CREDENTIAL_HEADER`], which is removed before anything else sees it; or
//!   the operator marks a credential `inject = "auto"` and it is added to every
//!   request to its hosts with no change to the guest's code.
//! * **Body**: a stream. Its declared `content-length` is judged at admission;
//!   the stream itself is read by the host with the grant's cap, so a body that
//!   grows past it stops being read and the request fails.
//! * **Answer**: the response reaches the guest only once it is complete,
//!   capped and scrubbed (redaction needs every byte); the guest then streams
//!   it from memory. A refusal arrives as `internal-error` carrying warden's
//!   reason and the deciding rule (wasi:http's error codes have no other field
//!   for text); a timeout as `connection-read-timeout`.
//! * **Memory**: at most [`MAX_IN_FLIGHT`] exchanges of one invocation are
//!   alive at once, so the host holds at most that many capped responses for
//!   it; a header section is capped at [`MAX_FIELDS_BYTES`] and a body slice
//!   written at once at [`BODY_CHUNK_BYTES`].
//! * **Timing**: the exchange runs as a future beside the guest, so its audit
//!   record is completed in [`super::super::LateAudit`]; the invocation's
//!   wall-clock limit ends it with the guest.

use super::{admit, deliver, Delivered, Outgoing};
use crate::audit::Verdict;
use crate::bindings::warden::action::http::HttpError;
use crate::capability::{taped, Capabilities};
use crate::limits::Bytes;
use crate::recording::{Body, BodyCheck, Call, HttpRequest, InterceptedStream};
use bytes::Bytes as Buf;
use http_body_util::{BodyExt, Full, Limited};
use std::future::Future;
use std::time::{Duration, Instant};
use wasmtime_wasi_http::{Error as WasiError, RequestOptions, WasiBody, WasiHttpHooks};

pub use super::check::CREDENTIAL_HEADER;

pub use super::WASI_IN_FLIGHT as MAX_IN_FLIGHT;

/// The most host memory one wasi:http `fields` resource (a header section
/// being built) may use; with the store's cap on resources this bounds what
/// a guest can make the host hold in headers (real header sections are a few KiB).
pub const MAX_FIELDS_BYTES: usize = 16 * 1024;

/// The largest slice of a request body a guest may write at once; a body
/// waiting for its turn on the wire holds one such slice in host memory.
pub const BODY_CHUNK_BYTES: usize = 64 * 1024;

type Answer = Result<(http::Response<WasiBody>, Box<dyn Future<Output = Result<(), WasiError>> + Send>), WasiError>;

impl WasiHttpHooks for Capabilities {
    /// The URL's authority is the host; a guest's own `Host` header is refused
    /// by layer 3 like on the other door.
    fn set_host_header(&mut self) -> bool {
        false
    }

    /// A request must say `http` or `https`: rules are written per scheme.
    fn default_scheme(&mut self) -> Option<http::uri::Scheme> {
        None
    }

    fn p2_outgoing_body_chunk_size(&mut self) -> usize {
        BODY_CHUNK_BYTES
    }

    /// Every scheme reaches layer 2, which refuses what is not `http`/`https`
    /// with a reason and an audit record, as on the other door.
    fn is_supported_scheme(&mut self, _scheme: &http::uri::Scheme) -> bool {
        true
    }

    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _response_errors: Box<dyn Future<Output = Result<(), WasiError>> + Send>,
    ) -> Box<dyn Future<Output = Answer> + Send> {
        let started = Instant::now();
        let (parts, body) = request.into_parts();
        let head = match RequestHead::read(&parts.headers) {
            Ok(h) => h,
            Err(message) => {
                let mut record = self.call.record("http", parts.method.to_string(), crate::invocation::guest_text(&parts.uri.to_string(), 2048));
                record.rule = "invalid-request".into();
                record.reason = Some(message.clone());
                self.http.sent += 1;
                let _ = self.call.answered(record, started);
                return Box::new(async move { Err(WasiError::InternalError(Some(format!("warden: invalid request: {message}")))) });
            }
        };
        let method = parts.method.to_string();
        let url = parts.uri.to_string();
        let outgoing = Outgoing {
            method: &method,
            url: &url,
            headers: &head.headers,
            body_len: head.content_length,
            credential: head.credential.as_deref(),
            timeout: options.and_then(|o| o.first_byte_timeout),
        };
        let mut record = self.call.record("http", String::new(), String::new());
        let asked = |body: Option<Body>| HttpRequest { body, ..taped::request(&method, &url, &head.headers, None, head.credential.as_deref()) };
        let made = match self.tape.intercept_streamed(asked) {
            InterceptedStream::Answered(answer, body_check) => return self.replay(*answer, body_check, body, record, started),
            InterceptedStream::Proceed(made) => made,
        };
        // The request's place on the recording is taken now: it is answered later, beside the guest.
        let recording = made.reserve();
        let request = recording.keeps().then(|| asked(None));
        let admitted = match admit(&self.call, &mut self.http, &outgoing, &mut record) {
            Ok(a) => a,
            Err(e) => {
                if let Some(request) = request {
                    recording.keep(|| Call::Http { request, answer: taped::answer(&Err(e.clone())) });
                }
                let error = to_wasi_error(e, &record.rule);
                // Past `limits.denials` this marks the invocation stopped; the
                // guest is stopped at its next instruction (see Call::check_denials).
                let _ = self.call.answered(record, started);
                return Box::new(async move { Err(error) });
            }
        };
        let slot = self.call.open_late(&record);
        let late = self.call.late.clone();
        let deadline = self.call.deadline;
        let plugin = self.call.plugin.clone();
        let turns = self.http.wasi_turns.clone();
        Box::new(async move {
            // The semaphore is never closed; the turn is held by the response body.
            let turn = turns.acquire_owned().await.expect("never closed");
            let cap = admitted.max_request_bytes();
            let read = read_body(body, cap, deadline).await;
            let mut sent_body = None;
            let result = match read {
                Ok(bytes) => {
                    let body = (!bytes.is_empty() || head.content_length.is_some()).then(|| bytes.to_vec());
                    sent_body = body.as_deref().map(Body::of);
                    deliver(admitted, body, &mut record).await
                }
                Err(BodyError::TooLarge) => {
                    record.request_bytes = cap + 1;
                    let why = format!("request body is more than {}; {plugin}'s grant allows {} (limits.request_bytes)", Bytes(cap), Bytes(cap));
                    Err(body_failure(&mut record, "limits.request_bytes", why, true))
                }
                Err(BodyError::Timeout) => {
                    Err(body_failure(&mut record, "timeout", "the request body was not finished before the wall-clock limit".into(), false))
                }
                Err(BodyError::Broken(why)) => Err(body_failure(&mut record, "invalid-request", format!("the request body could not be read: {why}"), false)),
            };
            record.duration_ms = started.elapsed().as_millis() as u64;
            let rule = record.rule.clone();
            late.close(slot, record);
            if let Some(request) = request {
                recording.keep(|| Call::Http { request: HttpRequest { body: sent_body, ..request }, answer: taped::answer(&result) });
            }
            match result {
                Ok(d) => Ok((response(d, turn), Box::new(async { Ok(()) }) as Box<dyn Future<Output = Result<(), WasiError>> + Send>)),
                Err(e) => Err(to_wasi_error(e, &rule)),
            }
        })
    }
}

impl Capabilities {
    /// A wasi:http request answered from the recording: compared with the
    /// recorded one (its body once the guest has written it), never sent.
    fn replay(
        &mut self,
        answered: Result<Call, crate::recording::Divergence>,
        body_check: BodyCheck,
        body: WasiBody,
        mut record: crate::audit::AuditRecord,
        started: Instant,
    ) -> Box<dyn Future<Output = Answer> + Send> {
        self.http.sent += 1;
        let call = match answered {
            Ok(call) => call,
            Err(d) => {
                let message = self.call.diverged(&d).to_string();
                return Box::new(async move { Err(WasiError::InternalError(Some(message))) });
            }
        };
        if let Call::Http { request, .. } = &call {
            record.method = request.method.clone();
            record.url = crate::invocation::guest_text(&request.url, 2048);
        }
        taped::audit_replayed(&mut record, &call);
        self.call.keep(record, started);
        let deadline = self.call.deadline;
        let turns = self.http.wasi_turns.clone();
        let cap = self.call.grant.limits.request_bytes;
        Box::new(async move {
            let turn = turns.acquire_owned().await.expect("never closed");
            let now = match read_body(body, cap, deadline).await {
                Ok(b) if b.is_empty() && body_check.recorded().is_none() => None,
                Ok(b) => Some(Body::of(&b)),
                Err(BodyError::TooLarge) => Some(Body::Text(format!("(more than the {} limits.request_bytes allows)", Bytes(cap)))),
                Err(_) => Some(Body::Text("(unfinished or unreadable)".into())),
            };
            if let Err(d) = body_check.check(&now) {
                return Err(WasiError::InternalError(Some(format!("replay diverged at {d}"))));
            }
            let Call::Http { answer, .. } = call else { unreachable!("answer() returns a call of the kind asked") };
            match taped::replayed(&answer) {
                Ok(d) => Ok((response(d, turn), Box::new(async { Ok(()) }) as Box<dyn Future<Output = Result<(), WasiError>> + Send>)),
                Err(e) => Err(to_wasi_error(e, "replay")),
            }
        })
    }
}

/// What the guest's headers say, with warden's own header taken out.
struct RequestHead {
    headers: Vec<(String, String)>,
    credential: Option<String>,
    content_length: Option<u64>,
}

impl RequestHead {
    fn read(given: &http::HeaderMap) -> Result<RequestHead, String> {
        let mut head = RequestHead { headers: Vec::with_capacity(given.len()), credential: None, content_length: None };
        for (name, value) in given {
            let text = value.to_str().map_err(|_| format!("header `{name}` has a value that is not visible ASCII"))?;
            match name.as_str() {
                CREDENTIAL_HEADER => {
                    if head.credential.replace(text.to_string()).is_some() {
                        return Err(format!("header `{CREDENTIAL_HEADER}` is given twice; a request names at most one credential"));
                    }
                }
                // wasi:http has already checked it against the body; warden
                // judges the size it announces and sets the header itself.
                "content-length" => {
                    head.content_length = Some(text.trim().parse().map_err(|_| format!("content-length `{text}` is not a number"))?);
                }
                _ => head.headers.push((name.as_str().to_string(), text.to_string())),
            }
        }
        Ok(head)
    }
}

enum BodyError {
    TooLarge,
    Timeout,
    Broken(String),
}

/// Reads the guest's body stream, never holding more than `cap` bytes.
async fn read_body(body: WasiBody, cap: u64, deadline: Instant) -> Result<Buf, BodyError> {
    let limited = Limited::new(body, usize::try_from(cap).unwrap_or(usize::MAX));
    let remaining = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    match tokio::time::timeout(remaining, limited.collect()).await {
        Err(_) => Err(BodyError::Timeout),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(BodyError::TooLarge),
        Ok(Err(e)) => Err(BodyError::Broken(e.to_string())),
    }
}

fn body_failure(record: &mut crate::audit::AuditRecord, rule: &str, reason: String, too_large: bool) -> HttpError {
    record.decision = Verdict::Denied;
    if record.rule.is_empty() || too_large {
        record.rule = rule.to_string();
    }
    record.reason = Some(reason.clone());
    if too_large {
        HttpError::TooLarge(reason)
    } else {
        HttpError::InvalidRequest(reason)
    }
}

/// A response body that keeps its exchange's turn until the guest has read
/// or dropped it.
struct HeldBody {
    body: Full<Buf>,
    _turn: tokio::sync::OwnedSemaphorePermit,
}

impl http_body::Body for HeldBody {
    type Data = Buf;
    type Error = std::convert::Infallible;

    fn poll_frame(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<Result<http_body::Frame<Buf>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// The guest's view of a delivered response: complete, so its length is known.
fn response(d: Delivered, turn: tokio::sync::OwnedSemaphorePermit) -> http::Response<WasiBody> {
    let mut builder = http::Response::builder().status(d.status);
    for (name, value) in &d.headers {
        // The body is whole and may have been redacted: warden states its length.
        if matches!(name.as_str(), "content-length" | "transfer-encoding") {
            continue;
        }
        if let (Ok(n), Ok(v)) = (http::HeaderName::from_bytes(name.as_bytes()), http::HeaderValue::from_bytes(value.as_bytes())) {
            builder = builder.header(n, v);
        }
    }
    builder = builder.header(http::header::CONTENT_LENGTH, d.body.len());
    let body = HeldBody { body: Full::new(Buf::from(d.body)), _turn: turn }.map_err(|never| match never {}).boxed_unsync();
    builder.body(body).unwrap_or_else(|_| http::Response::new(Full::new(Buf::new()).map_err(|never| match never {}).boxed_unsync()))
}

/// How a refusal reads on this door: wasi:http has no error code with room
/// for a reason, so warden's text travels in `internal-error`.
fn to_wasi_error(e: HttpError, rule: &str) -> WasiError {
    let text = match e {
        HttpError::Timeout => return WasiError::ConnectionReadTimeout,
        HttpError::Denied(reason) => format!("warden refused this request (rule `{rule}`): {reason}"),
        HttpError::InvalidRequest(m) => format!("warden: invalid request: {m}"),
        HttpError::Connection(m) => format!("warden: connection failed: {m}"),
        HttpError::TooLarge(m) => format!("warden: too large: {m}"),
    };
    WasiError::InternalError(Some(text))
}
