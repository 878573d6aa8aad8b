//! Recordings: every byte an invocation exchanged with the world, on the
//! guest's side of the host, so it can be re-executed offline.
//!
//! A [`Recording`] (JSON, one per invocation; a *cassette* when kept as a test
//! case) holds the invocation's input and identity, the ordered capability
//! calls with what the guest asked and what it was answered (HTTP through
//! either door *before* credential injection and *after* redaction, so no
//! secret can be in it), the WASI reads that make a guest nondeterministic
//! (random bytes, wall and monotonic clocks) and the outcome.
//!
//! A [`Tape`] is attached to an invocation: [`Tape::record`] fills a
//! recording as calls happen, within a byte budget (past it the recording is
//! marked truncated, never silently cut); [`Tape::replay`] answers each call
//! from a recording instead of the world, checking that the guest asks the
//! same thing, and stops it at the first divergence, which it names precisely.

mod intercept;
pub use intercept::{BodyCheck, Intercepted, InterceptedStream, Made, Reserved};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::{Arc, Mutex};

pub const FORMAT: &str = "warden-recording/1";

/// One invocation, recorded.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Recording {
    pub format: String,
    pub plugin: String,
    #[serde(default)]
    pub plugin_sha256: String,
    pub invocation: Invocation,
    /// The input JSON.
    pub input: Value,
    pub calls: Vec<Call>,
    #[serde(default)]
    pub wasi: WasiReads,
    /// The output JSON, or why there was none.
    pub outcome: Outcome,
    /// Set when the budget ran out: nothing after the call it names was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncated: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Invocation {
    pub run_id: String,
    #[serde(default)]
    pub story: String,
    #[serde(default)]
    pub step: String,
    #[serde(default)]
    pub team: String,
    #[serde(default = "one")]
    pub attempt: u32,
}

fn one() -> u32 {
    1
}

/// A capability call: what the guest asked, what it was answered.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "call", rename_all = "snake_case")]
pub enum Call {
    /// An HTTP request through `warden:action/http` or `wasi:http`.
    Http { request: HttpRequest, answer: HttpAnswer },
    /// `clock.now`.
    Now { ms: u64 },
    /// `clock.sleep`.
    Sleep { ms: u64 },
    /// `smtp.send`: the message as the guest gave it, and the receipt or error.
    Smtp { message: Value, answer: Value },
}

impl Call {
    pub fn name(&self) -> &'static str {
        match self {
            Call::Http { .. } => "http",
            Call::Now { .. } => "clock.now",
            Call::Sleep { .. } => "clock.sleep",
            Call::Smtp { .. } => "smtp",
        }
    }
}

/// A request as the guest sent it (before the host injected any credential).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HttpRequest {
    pub method: String,
    pub url: String,
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Body>,
    /// The credential's *name*, when the guest named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// What came back, as the guest received it (after redaction).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum HttpAnswer {
    Response {
        status: u16,
        headers: Vec<(String, String)>,
        body: Body,
    },
    /// `denied`, `invalid-request`, `timeout`, `connection` or `too-large`.
    Error {
        kind: String,
        message: String,
    },
}

/// Bytes, kept as text when they are UTF-8 (readable, diffable cassettes).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Body {
    Text(String),
    Bytes { base64: String },
}

impl Body {
    pub fn of(bytes: &[u8]) -> Body {
        BodyOut::of(bytes).into()
    }

    pub fn bytes(&self) -> Vec<u8> {
        match self {
            Body::Text(t) => t.as_bytes().to_vec(),
            Body::Bytes { base64 } => base64::engine::general_purpose::STANDARD.decode(base64).unwrap_or_default(),
        }
    }

    fn len(&self) -> usize {
        match self {
            Body::Text(t) => t.len(),
            Body::Bytes { base64 } => base64.len(),
        }
    }
}

/// The WASI reads a guest's path may depend on, in the order they were served.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct WasiReads {
    /// Bytes from `wasi:random` (secure and insecure), concatenated.
    #[serde(default)]
    pub random: String,
    /// `wasi:clocks/wall-clock.now`, nanoseconds since the epoch.
    #[serde(default)]
    pub wall_clock_ns: Vec<u64>,
    /// `wasi:clocks/monotonic-clock.now`, nanoseconds.
    #[serde(default)]
    pub monotonic_ns: Vec<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Output(Value),
    Error { kind: String, message: String },
}

impl Outcome {
    /// How an invocation ended, as a recording keeps it.
    pub fn of(outcome: &Result<String, crate::invocation::InvokeError>) -> Outcome {
        match outcome {
            Ok(text) => Outcome::Output(serde_json::from_str(text).unwrap_or(Value::String(text.clone()))),
            Err(e) => Outcome::Error { kind: error_kind(e).into(), message: e.to_string() },
        }
    }
}

fn error_kind(e: &crate::invocation::InvokeError) -> &'static str {
    use crate::invocation::InvokeError as E;
    match e {
        E::InvalidInput { .. } => "invalid-input",
        E::Denied { .. } => "denied",
        E::Upstream { .. } => "upstream",
        E::Failed { .. } => "failed",
        E::Limit { .. } => "limit",
        E::Trap { .. } => "trap",
        E::Instantiate { .. } => "instantiate",
    }
}

/// A recording as the run store keeps it: its JSON, made straight from the
/// tape (the input and output copied as they came, not parsed and written
/// again), and whether it was truncated.
#[derive(Debug, Clone)]
pub struct Stored {
    pub json: String,
    pub truncated: bool,
}

/// [`Recording`] up to its calls, borrowed: the same JSON, written without building values.
#[derive(Serialize)]
struct HeadOut<'a> {
    format: &'static str,
    plugin: &'a str,
    plugin_sha256: &'a str,
    invocation: Invocation,
    input: Box<serde_json::value::RawValue>,
}

/// [`Recording`] after its calls.
#[derive(Serialize)]
struct TailOut {
    wasi: WasiReads,
    outcome: OutcomeOut,
    #[serde(skip_serializing_if = "Option::is_none")]
    truncated: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "snake_case")]
enum OutcomeOut {
    Output(Box<serde_json::value::RawValue>),
    Error { kind: &'static str, message: String },
}

/// `text` as JSON: itself when it is JSON, else the string holding it (as [`Outcome::of`] keeps it).
fn raw(text: &str) -> Box<serde_json::value::RawValue> {
    match serde_json::from_str::<&serde_json::value::RawValue>(text) {
        Ok(r) => r.to_owned(),
        Err(_) => serde_json::value::to_raw_value(text).expect("a string is JSON"),
    }
}

impl Invocation {
    pub fn of(info: &crate::invocation::InvocationInfo) -> Invocation {
        Invocation { run_id: info.run_id.clone(), story: info.story.clone(), step: info.step.clone(), team: info.team.clone(), attempt: info.attempt }
    }

    pub fn info(&self) -> crate::invocation::InvocationInfo {
        crate::invocation::InvocationInfo {
            run_id: self.run_id.clone(),
            story: self.story.clone(),
            step: self.step.clone(),
            team: self.team.clone(),
            attempt: self.attempt,
            traceparent: None,
            ..Default::default()
        }
    }
}

/// Where a replayed guest first asked something else than the recording holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Divergence {
    /// 1-based position of the capability call.
    pub call: usize,
    pub field: String,
    pub recorded: String,
    pub now: String,
}

impl std::fmt::Display for Divergence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "call #{}: {} differs: recorded {}, now {}", self.call, self.field, self.recorded, self.now)
    }
}

/// How an invocation meets the world: live, live and recorded, or replayed.
#[derive(Clone, Default)]
pub enum Tape {
    #[default]
    Live,
    Record(Arc<Mutex<TapeWriter>>),
    Replay(Arc<Mutex<Replayer>>),
}

impl Tape {
    /// Records, keeping at most `budget` bytes of calls and WASI reads.
    pub fn record(budget: u64) -> Tape {
        Tape::Record(Arc::new(Mutex::new(TapeWriter { calls: Vec::new(), wasi: WasiReads::default(), random: Vec::new(), used: 0, budget, truncated: None })))
    }

    pub fn replay(recording: Recording) -> Result<Tape, String> {
        if recording.format != FORMAT {
            return Err(format!("this recording is `{}`; this warden replays `{FORMAT}`", recording.format));
        }
        let random = base64::engine::general_purpose::STANDARD.decode(&recording.wasi.random).map_err(|e| format!("wasi.random is not base64: {e}"))?;
        Ok(Tape::Replay(Arc::new(Mutex::new(Replayer { recording, next: 0, random, random_at: 0, wall_at: 0, mono_at: 0, divergence: None }))))
    }

    /// The recording this tape made of one invocation as the store keeps it
    /// (None unless recording): what [`Tape::finish`] gives, as JSON, for
    /// less work on the invocation's path.
    pub fn finish_stored(
        &self,
        plugin: &str,
        sha256: &str,
        info: &crate::invocation::InvocationInfo,
        input: &str,
        outcome: &Result<String, crate::invocation::InvokeError>,
    ) -> Option<Stored> {
        let Tape::Record(recorder) = self else { return None };
        let (calls, wasi, truncated) = lock(recorder).take_kept();
        let outcome = match outcome {
            Ok(text) => OutcomeOut::Output(raw(text)),
            Err(e) => OutcomeOut::Error { kind: error_kind(e), message: e.to_string() },
        };
        let stored = truncated.is_some();
        let head = HeadOut { format: FORMAT, plugin, plugin_sha256: sha256, invocation: Invocation::of(info), input: raw(input) };
        let tail = TailOut { wasi, outcome, truncated };
        // {head…, "calls": [each call's JSON], tail…}: the fields in Recording's order.
        let json = (|| -> serde_json::Result<String> {
            let mut json = serde_json::to_string(&head)?;
            json.pop();
            json.push_str(",\"calls\":[");
            for (i, call) in calls.iter().enumerate() {
                if i > 0 {
                    json.push(',');
                }
                match call {
                    Kept::Json(j) => json.push_str(j),
                    Kept::Call(c) => json.push_str(&serde_json::to_string(c)?),
                }
            }
            json.push_str("],");
            json.push_str(&serde_json::to_string(&tail)?[1..]);
            Ok(json)
        })();
        match json {
            Ok(json) => Some(Stored { json, truncated: stored }),
            Err(e) => {
                tracing::error!(plugin, "cannot serialize a recording: {e}");
                None
            }
        }
    }

    /// The recording this tape made of one invocation (None unless recording).
    pub fn finish(
        &self,
        plugin: &str,
        sha256: &str,
        info: &crate::invocation::InvocationInfo,
        input: &str,
        outcome: &Result<String, crate::invocation::InvokeError>,
    ) -> Option<Recording> {
        let Tape::Record(recorder) = self else { return None };
        let input = serde_json::from_str(input).unwrap_or_else(|_| Value::String(input.to_string()));
        Some(lock(recorder).finish(plugin, sha256, Invocation::of(info), input, Outcome::of(outcome)))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A recording being made.
pub struct TapeWriter {
    calls: Vec<Option<Kept>>,
    wasi: WasiReads,
    random: Vec<u8>,
    used: u64,
    budget: u64,
    truncated: Option<String>,
}

/// A call as the recorder keeps it: the value, or — for `http.send`, the
/// call made most — its JSON, written from the exchange itself (no copy of
/// the request and answer is made to be written later).
enum Kept {
    Call(Call),
    Json(String),
}

impl Kept {
    fn into_call(self) -> Option<Call> {
        match self {
            Kept::Call(c) => Some(c),
            Kept::Json(j) => serde_json::from_str(&j).ok(),
        }
    }
}

/// An HTTP call's parts as [`Call::Http`] writes them, borrowed.
#[derive(Serialize)]
pub struct HttpRequestOut<'a> {
    pub method: &'a str,
    pub url: &'a str,
    pub headers: &'a [(String, String)],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<BodyOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HttpAnswerOut<'a> {
    Response { status: u16, headers: &'a [(String, String)], body: BodyOut<'a> },
    Error { kind: &'a str, message: &'a str },
}

/// [`Body`], borrowed.
#[derive(Serialize)]
#[serde(untagged)]
pub enum BodyOut<'a> {
    Text(&'a str),
    Bytes { base64: String },
}

impl From<BodyOut<'_>> for Body {
    fn from(b: BodyOut<'_>) -> Body {
        match b {
            BodyOut::Text(t) => Body::Text(t.to_string()),
            BodyOut::Bytes { base64 } => Body::Bytes { base64 },
        }
    }
}

impl<'a> BodyOut<'a> {
    pub fn of(bytes: &'a [u8]) -> BodyOut<'a> {
        match std::str::from_utf8(bytes) {
            Ok(t) => BodyOut::Text(t),
            Err(_) => BodyOut::Bytes { base64: base64::engine::general_purpose::STANDARD.encode(bytes) },
        }
    }
}

impl TapeWriter {
    /// An `http.send` call: `request` is the JSON of [`HttpRequestOut`] (written
    /// before the body went on the wire), `answer` what the guest received.
    pub fn put_http(&mut self, request: &str, answer: HttpAnswerOut<'_>) {
        // {"call": "http", "request": …, "answer": …}, as Call::Http writes it
        // (`request` is serde_json's own output: it is not read again).
        if request.is_empty() {
            self.truncated = self.truncated.take().or(Some("an http request could not be written".into()));
            return;
        }
        // One buffer, sized once: this runs for every request a recorded guest makes.
        let mut json = Vec::with_capacity(request.len() + 256);
        json.extend_from_slice(b"{\"call\":\"http\",\"request\":");
        json.extend_from_slice(request.as_bytes());
        json.extend_from_slice(b",\"answer\":");
        match serde_json::to_writer(&mut json, &answer) {
            Ok(()) => {
                json.push(b'}');
                let json = String::from_utf8(json).expect("serde_json writes UTF-8");
                self.keep(None, "http", json.len(), Kept::Json(json))
            }
            Err(e) => tracing::error!("cannot record an http call: {e}"),
        }
    }

    fn charge(&mut self, bytes: usize, what: impl FnOnce() -> String) -> bool {
        if self.truncated.is_some() {
            return false;
        }
        self.used += bytes as u64;
        if self.used > self.budget {
            self.truncated = Some(format!("the recording passed its budget of {} bytes (limits.recording_bytes) at {}", self.budget, what()));
            return false;
        }
        true
    }

    /// Reserves the place of a call made now and answered later.
    pub fn reserve(&mut self) -> Option<usize> {
        if self.truncated.is_some() {
            return None;
        }
        self.calls.push(None);
        Some(self.calls.len() - 1)
    }

    /// Fills a reserved place (or adds the call at the end).
    pub fn put(&mut self, slot: Option<usize>, call: Call) {
        let (size, name) = (approximate_size(&call), call.name());
        self.keep(slot, name, size, Kept::Call(call));
    }

    fn keep(&mut self, slot: Option<usize>, name: &str, size: usize, call: Kept) {
        let n = slot.map_or(self.calls.len() + 1, |s| s + 1);
        if !self.charge(size, || format!("call #{n} ({name})")) {
            return;
        }
        match slot {
            Some(s) => self.calls[s] = Some(call),
            None => self.calls.push(Some(call)),
        }
    }

    pub fn random(&mut self, bytes: &[u8]) {
        if self.charge(bytes.len() * 4 / 3 + 4, || "a wasi:random read".into()) {
            self.random.extend_from_slice(bytes);
        }
    }

    pub fn wall(&mut self, ns: u64) {
        if self.charge(20, || "a wall-clock read".into()) {
            self.wasi.wall_clock_ns.push(ns);
        }
    }

    pub fn monotonic(&mut self, ns: u64) {
        if self.charge(20, || "a monotonic-clock read".into()) {
            self.wasi.monotonic_ns.push(ns);
        }
    }

    /// The recording, given what the invocation was and how it ended.
    pub fn finish(&mut self, plugin: &str, sha256: &str, invocation: Invocation, input: Value, outcome: Outcome) -> Recording {
        let (calls, wasi, truncated) = self.take();
        Recording { format: FORMAT.into(), plugin: plugin.into(), plugin_sha256: sha256.into(), invocation, input, calls, wasi, outcome, truncated }
    }

    /// The calls, the WASI reads and why the recording is truncated, if it is.
    fn take(&mut self) -> (Vec<Call>, WasiReads, Option<String>) {
        let (kept, wasi, truncated) = self.take_kept();
        (kept.into_iter().filter_map(Kept::into_call).collect(), wasi, truncated)
    }

    fn take_kept(&mut self) -> (Vec<Kept>, WasiReads, Option<String>) {
        let mut wasi = std::mem::take(&mut self.wasi);
        if !self.random.is_empty() {
            wasi.random = base64::engine::general_purpose::STANDARD.encode(&self.random);
        }
        let mut truncated = self.truncated.clone();
        // A place reserved and never filled: the invocation ended before the answer.
        let slots = self.calls.len();
        let calls: Vec<Kept> = self.calls.drain(..).map_while(|c| c).collect();
        if truncated.is_none() && calls.len() < slots {
            truncated = Some(format!("call #{} was never answered before the invocation ended", calls.len() + 1));
        }
        (calls, wasi, truncated)
    }
}

fn approximate_size(call: &Call) -> usize {
    match call {
        Call::Http { request, answer } => {
            let headers = |h: &[(String, String)]| h.iter().map(|(k, v)| k.len() + v.len() + 8).sum::<usize>();
            let answer = match answer {
                HttpAnswer::Response { headers: h, body, .. } => headers(h) + body.len(),
                HttpAnswer::Error { message, .. } => message.len(),
            };
            64 + request.url.len() + headers(&request.headers) + request.body.as_ref().map_or(0, Body::len) + answer
        }
        Call::Now { .. } | Call::Sleep { .. } => 32,
        Call::Smtp { message, answer } => 32 + message.to_string().len() + answer.to_string().len(),
    }
}

/// A recording being replayed.
pub struct Replayer {
    pub recording: Recording,
    next: usize,
    random: Vec<u8>,
    random_at: usize,
    wall_at: usize,
    mono_at: usize,
    pub divergence: Option<Divergence>,
}

impl Replayer {
    /// The recorded answer to the guest's next call, which must be `asked`
    /// (compared field by field); otherwise the divergence, which is kept.
    pub fn answer(&mut self, asked: &Call) -> Result<Call, Divergence> {
        if let Some(d) = &self.divergence {
            return Err(d.clone());
        }
        let n = self.next + 1;
        let d = match self.recording.calls.get(self.next) {
            None => {
                let why = match &self.recording.truncated {
                    Some(t) => format!("nothing (the recording was truncated: {t})"),
                    None => "no more calls".into(),
                };
                Some(Divergence { call: n, field: "call".into(), recorded: why, now: describe(asked) })
            }
            Some(recorded) => compare(n, recorded, asked),
        };
        if let Some(d) = d {
            self.divergence = Some(d.clone());
            return Err(d);
        }
        self.next += 1;
        Ok(self.recording.calls[n - 1].clone())
    }

    /// The recorded call the guest's next call will be compared with.
    pub fn peek(&self) -> Option<&Call> {
        self.recording.calls.get(self.next)
    }

    /// Checks a part of a call that arrives after the call was answered (a
    /// streamed request body): a difference is a divergence like any other.
    pub fn check_body(&mut self, call: usize, recorded: &Option<Body>, now: &Option<Body>) -> Result<(), Divergence> {
        if recorded == now || self.divergence.is_some() {
            return self.divergence.clone().map_or(Ok(()), Err);
        }
        let d = Divergence { call, field: "body".into(), recorded: short(recorded), now: short(now) };
        self.divergence = Some(d.clone());
        Err(d)
    }

    /// How many calls were answered so far.
    pub fn answered(&self) -> usize {
        self.next
    }

    /// Calls the recording holds that the guest never made.
    pub fn unmade(&self) -> usize {
        self.recording.calls.len().saturating_sub(self.next)
    }

    /// The next recorded random bytes; past the recording, a stream seeded
    /// from it (deterministic too).
    pub fn random(&mut self, dst: &mut [u8]) {
        for b in dst.iter_mut() {
            *b = match self.random.get(self.random_at) {
                Some(v) => *v,
                None => {
                    let x = (self.random_at as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29) ^ 0xA5A5_5A5A_C3C3_3C3C;
                    (x >> 24) as u8
                }
            };
            self.random_at += 1;
        }
    }

    pub fn wall(&mut self) -> u64 {
        let v = &self.recording.wasi.wall_clock_ns;
        let at = self.wall_at;
        self.wall_at += 1;
        v.get(at).copied().unwrap_or_else(|| v.last().copied().unwrap_or(0) + (at + 1 - v.len()) as u64 * 1_000)
    }

    pub fn monotonic(&mut self) -> u64 {
        let v = &self.recording.wasi.monotonic_ns;
        let at = self.mono_at;
        self.mono_at += 1;
        v.get(at).copied().unwrap_or_else(|| v.last().copied().unwrap_or(0) + (at + 1 - v.len()) as u64 * 1_000)
    }
}

fn describe(call: &Call) -> String {
    match call {
        Call::Http { request, .. } => format!("http {} {}", request.method, request.url),
        other => other.name().to_string(),
    }
}

/// The first field in which the guest's call differs from the recorded one.
fn compare(n: usize, recorded: &Call, asked: &Call) -> Option<Divergence> {
    let d = |field: &str, r: String, a: String| Some(Divergence { call: n, field: field.into(), recorded: r, now: a });
    match (recorded, asked) {
        (Call::Http { request: r, .. }, Call::Http { request: a, .. }) => {
            if r.method != a.method {
                return d("method", r.method.clone(), a.method.clone());
            }
            if r.url != a.url {
                return d("url", r.url.clone(), a.url.clone());
            }
            if r.credential != a.credential {
                return d("credential", format!("{:?}", r.credential), format!("{:?}", a.credential));
            }
            if r.headers != a.headers {
                let first = r.headers.iter().zip(&a.headers).position(|(x, y)| x != y).unwrap_or(r.headers.len().min(a.headers.len()));
                return d(&format!("headers[{first}]"), format!("{:?}", r.headers.get(first)), format!("{:?}", a.headers.get(first)));
            }
            if r.body != a.body {
                return d("body", short(&r.body), short(&a.body));
            }
            None
        }
        (Call::Sleep { ms: r }, Call::Sleep { ms: a }) if r != a => d("ms", r.to_string(), a.to_string()),
        (Call::Smtp { message: r, .. }, Call::Smtp { message: a, .. }) if r != a => d("message", short_json(r), short_json(a)),
        (r, a) if r.name() != a.name() => d("call", describe(r), describe(a)),
        _ => None,
    }
}

fn short(b: &Option<Body>) -> String {
    match b {
        None => "no body".into(),
        Some(Body::Text(t)) => crate::invocation::guest_text(&format!("{t:?}"), 200),
        Some(Body::Bytes { base64 }) => format!("{} base64 bytes", base64.len()),
    }
}

fn short_json(v: &Value) -> String {
    crate::invocation::guest_text(&v.to_string(), 200)
}

/// The first place two JSON values differ, as a path (`$.hosts[2]`), or None.
pub fn json_diff(recorded: &Value, now: &Value) -> Option<String> {
    fn walk(path: &str, a: &Value, b: &Value) -> Option<String> {
        match (a, b) {
            (Value::Object(x), Value::Object(y)) => {
                for (k, v) in x {
                    match y.get(k) {
                        None => return Some(format!("{path}.{k}: recorded {}, now absent", short_json(v))),
                        Some(w) => {
                            if let Some(d) = walk(&format!("{path}.{k}"), v, w) {
                                return Some(d);
                            }
                        }
                    }
                }
                y.keys().find(|k| !x.contains_key(*k)).map(|k| format!("{path}.{k}: recorded absent, now {}", short_json(&y[k])))
            }
            (Value::Array(x), Value::Array(y)) => {
                for (i, (v, w)) in x.iter().zip(y).enumerate() {
                    if let Some(d) = walk(&format!("{path}[{i}]"), v, w) {
                        return Some(d);
                    }
                }
                (x.len() != y.len()).then(|| format!("{path}: recorded {} items, now {}", x.len(), y.len()))
            }
            (x, y) if x != y => Some(format!("{path}: recorded {}, now {}", short_json(x), short_json(y))),
            _ => None,
        }
    }
    walk("$", recorded, now)
}

/// `wasi:random`, recorded or replayed (live bytes from the thread's CSPRNG,
/// seeded by the OS, as wasmtime-wasi's own default).
pub struct TapedRandom(pub Tape);

impl rand_core::TryRng for TapedRandom {
    type Error = std::convert::Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        let mut b = [0u8; 4];
        self.try_fill_bytes(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        let mut b = [0u8; 8];
        self.try_fill_bytes(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        match &self.0 {
            Tape::Replay(r) => lock(r).random(dst),
            tape => {
                rand::Rng::fill_bytes(&mut rand::rng(), dst);
                if let Tape::Record(r) = tape {
                    lock(r).random(dst);
                }
            }
        }
        Ok(())
    }
}

/// `wasi:clocks/wall-clock`, recorded or replayed.
pub struct TapedWallClock(pub Tape);

impl wasmtime_wasi::HostWallClock for TapedWallClock {
    fn resolution(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(1)
    }

    fn now(&self) -> std::time::Duration {
        let ns = match &self.0 {
            Tape::Replay(r) => lock(r).wall(),
            tape => {
                let ns = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
                if let Tape::Record(r) = tape {
                    lock(r).wall(ns);
                }
                ns
            }
        };
        std::time::Duration::from_nanos(ns)
    }
}

/// `wasi:clocks/monotonic-clock`, recorded or replayed.
pub struct TapedMonotonicClock {
    pub tape: Tape,
    pub started: std::time::Instant,
}

impl wasmtime_wasi::HostMonotonicClock for TapedMonotonicClock {
    fn resolution(&self) -> u64 {
        1
    }

    fn now(&self) -> u64 {
        match &self.tape {
            Tape::Replay(r) => lock(r).monotonic(),
            tape => {
                let ns = self.started.elapsed().as_nanos() as u64;
                if let Tape::Record(r) = tape {
                    lock(r).monotonic(ns);
                }
                ns
            }
        }
    }
}

/// Locks a recorder or replayer (poisoning is survived: a tape is data).
pub fn locked<T>(m: &Arc<Mutex<T>>) -> std::sync::MutexGuard<'_, T> {
    lock(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(url: &str) -> Call {
        Call::Http {
            request: HttpRequest { method: "GET".into(), url: url.into(), headers: vec![], body: None, credential: None },
            answer: HttpAnswer::Response { status: 200, headers: vec![], body: Body::Text("{}".into()) },
        }
    }

    fn recording(calls: Vec<Call>, truncated: Option<String>) -> Recording {
        Recording {
            format: FORMAT.into(),
            plugin: "p".into(),
            plugin_sha256: String::new(),
            invocation: Invocation::default(),
            input: Value::Null,
            calls,
            wasi: WasiReads::default(),
            outcome: Outcome::Output(Value::Null),
            truncated,
        }
    }

    #[test]
    fn the_first_divergent_call_is_named_by_its_number_and_field() {
        let Tape::Replay(r) = Tape::replay(recording(vec![get("https://a/1"), get("https://a/2")], None)).unwrap() else { unreachable!() };
        let mut r = locked(&r);
        assert!(r.answer(&get("https://a/1")).is_ok());
        let d = r.answer(&get("https://a/3")).unwrap_err();
        assert_eq!((d.call, d.field.as_str()), (2, "url"));
        assert_eq!(d.to_string(), "call #2: url differs: recorded https://a/2, now https://a/3");
    }

    #[test]
    fn a_truncated_recording_refuses_to_answer_past_its_end() {
        let Tape::Replay(r) = Tape::replay(recording(vec![get("https://a/1")], Some("at call #2 (http)".into()))).unwrap() else { unreachable!() };
        let mut r = locked(&r);
        assert!(r.answer(&get("https://a/1")).is_ok());
        let d = r.answer(&get("https://a/2")).unwrap_err();
        assert!(d.recorded.contains("truncated"), "{d}");
    }

    #[test]
    fn the_budget_truncates_visibly() {
        let Tape::Record(r) = Tape::record(200) else { unreachable!() };
        let mut r = locked(&r);
        r.put(None, get("https://a/1"));
        r.put(None, get(&format!("https://a/{}", "x".repeat(500))));
        let rec = r.finish("p", "", Invocation::default(), Value::Null, Outcome::Output(Value::Null));
        assert_eq!(rec.calls.len(), 1);
        assert!(rec.truncated.unwrap().contains("call #2"));
    }

    #[test]
    fn the_stored_json_is_the_recording() {
        let info = crate::invocation::InvocationInfo {
            run_id: "r1".into(),
            story: "s".into(),
            step: "a".into(),
            team: "t".into(),
            attempt: 2,
            traceparent: None,
            ..Default::default()
        };
        let outcomes = [
            Ok(r#"{"hosts": ["a", "b"], "n": 1.5}"#.to_string()),
            Ok("not json".to_string()),
            Err(crate::invocation::InvokeError::Upstream { status: Some(503), message: "down".into(), retry_after_ms: None }),
        ];
        for (input, outcome) in [r#"{"op": "echo"}"#, "plain text", r#"[1,2]"#].into_iter().zip(outcomes) {
            let (a, b) = (Tape::record(10_000), Tape::record(10_000));
            for t in [&a, &b] {
                let Tape::Record(r) = t else { unreachable!() };
                let mut r = locked(r);
                r.put(None, get("https://a/1"));
                let req = serde_json::to_string(&HttpRequestOut {
                    method: "POST",
                    url: "https://a/2",
                    headers: &[("x".into(), "y".into())],
                    body: Some(BodyOut::of(&[0xff, 0])),
                    credential: Some("c"),
                })
                .unwrap();
                if std::ptr::eq(t, &a) {
                    r.put_http(&req, HttpAnswerOut::Response { status: 201, headers: &[], body: BodyOut::of(b"{\"ok\":true}") });
                } else {
                    r.put(
                        None,
                        Call::Http {
                            request: HttpRequest {
                                method: "POST".into(),
                                url: "https://a/2".into(),
                                headers: vec![("x".into(), "y".into())],
                                body: Some(Body::of(&[0xff, 0])),
                                credential: Some("c".into()),
                            },
                            answer: HttpAnswer::Response { status: 201, headers: vec![], body: Body::of(b"{\"ok\":true}") },
                        },
                    );
                }
                r.random(&[1, 2, 3]);
                r.wall(7);
            }
            let stored = a.finish_stored("p", "abc", &info, input, &outcome).unwrap();
            let parsed: Recording = serde_json::from_str(&stored.json).unwrap();
            assert_eq!(parsed, b.finish("p", "abc", &info, input, &outcome).unwrap(), "{}", stored.json);
            assert!(!stored.truncated);
        }
    }

    #[test]
    fn json_diff_names_the_path() {
        let a = serde_json::json!({"hosts": ["a", "b"], "n": 1});
        let b = serde_json::json!({"hosts": ["a", "c"], "n": 1});
        assert_eq!(json_diff(&a, &b).unwrap(), "$.hosts[1]: recorded \"b\", now \"c\"");
        assert!(json_diff(&a, &a).is_none());
    }
}
