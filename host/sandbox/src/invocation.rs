//! The shared vocabulary of one invocation: who is asking ([`InvocationInfo`]),
//! what it logged ([`LogLine`]), how it describes itself ([`Manifest`]), why it
//! ended without output ([`InvokeError`]), and how much CPU it used
//! ([`CpuMeter`]). The runtime, the capabilities, the store and the story
//! engine all speak it; it imports nothing of warden.

use serde::Serialize;
use std::sync::{Arc, Mutex};

use std::time::{Duration, Instant};

/// Who is asking (carried into the guest and into every audit record).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct InvocationInfo {
    pub run_id: String,
    pub story: String,
    pub step: String,
    pub team: String,
    pub attempt: u32,
    /// The W3C `traceparent` of the step's span, sent on outgoing HTTP when
    /// the grant opts in (telemetry on). Not part of the audit record.
    #[serde(skip)]
    pub traceparent: Option<String>,
    /// Approval links' tokens the step's input holds as placeholders, put
    /// in their place only at egress. Not part of the audit record.
    #[serde(skip)]
    pub handed: Handed,
}

/// Secrets a step's input holds as placeholders — `(placeholder, value)`,
/// today approval links' tokens — which the host puts in place of the
/// placeholder in the step's HTTP requests and mails, and scrubs from what
/// comes back. The guest, the audit and the recording keep the placeholder.
/// Its `Debug` shows how many, never a value.
#[derive(Clone, Default, PartialEq)]
pub struct Handed(Arc<Vec<(String, String)>>);

impl Handed {
    pub fn new(pairs: Vec<(String, String)>) -> Handed {
        Handed(Arc::new(pairs))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(p, v)| (p.as_str(), v.as_str()))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Handed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Handed({} placeholders)", self.0.len())
    }
}

/// One log line of an invocation.
#[derive(Debug, Clone, Serialize)]
pub struct LogLine {
    pub at_ms: u64,
    pub level: &'static str,
    /// `guest` (log import), `stdout`, `stderr`, or `host` (warden's own notes).
    pub source: &'static str,
    pub message: String,
}

/// The manifest an action describes itself with.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    pub description: String,
    pub input_schema: serde_json::Value,
    pub output_schema: serde_json::Value,
    pub hosts: Vec<String>,
    pub credentials: Vec<String>,
}

/// Why an invocation did not return output.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum InvokeError {
    /// The action refused its input.
    InvalidInput { message: String },
    /// The action reported that the policy refused something it needed.
    Denied { message: String },
    /// The upstream service failed.
    Upstream { status: Option<u16>, message: String, retry_after_ms: Option<u64> },
    /// The action reported a failure.
    Failed { message: String },
    /// The host stopped the guest at a limit (`cpu`, `memory`, `wall`, `output`).
    Limit { limit: &'static str, message: String },
    /// The guest trapped or panicked.
    Trap { message: String },
    /// The component could not be instantiated (missing imports, pool exhausted).
    Instantiate { message: String },
}

impl InvokeError {
    /// Its kind, as the serialized `kind` field spells it.
    pub fn kind_name(&self) -> &'static str {
        match self {
            InvokeError::InvalidInput { .. } => "invalid-input",
            InvokeError::Denied { .. } => "denied",
            InvokeError::Upstream { .. } => "upstream",
            InvokeError::Failed { .. } => "failed",
            InvokeError::Limit { .. } => "limit",
            InvokeError::Trap { .. } => "trap",
            InvokeError::Instantiate { .. } => "instantiate",
        }
    }
}

impl std::fmt::Display for InvokeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InvokeError::InvalidInput { message } => write!(f, "invalid input: {message}"),
            InvokeError::Denied { message } => write!(f, "denied: {message}"),
            InvokeError::Upstream { status, message, retry_after_ms } => {
                write!(f, "upstream error")?;
                if let Some(s) = status {
                    write!(f, " (HTTP {s})")?;
                }
                write!(f, ": {message}")?;
                if let Some(ms) = retry_after_ms {
                    write!(f, " (retry after {ms} ms)")?;
                }
                Ok(())
            }
            InvokeError::Failed { message } => write!(f, "failed: {message}"),
            InvokeError::Limit { message, .. } => write!(f, "stopped: {message}"),
            InvokeError::Trap { message } => write!(f, "trapped: {message}"),
            InvokeError::Instantiate { message } => write!(f, "cannot start the plugin: {message}"),
        }
    }
}

impl std::error::Error for InvokeError {}

/// Guest CPU time = wall time since start minus time spent off the CPU: in
/// host calls (every one, WASI's `poll` waiting on a wasi:http response
/// included, counted by the store's call hook) or yielded to other tasks.
/// Off-CPU spans may nest (a guard inside a host call); only the outermost counts.
#[derive(Clone)]
pub struct CpuMeter {
    started: Instant,
    off: Arc<Mutex<OffCpuSpans>>,
}

#[derive(Default)]
struct OffCpuSpans {
    depth: u32,
    since: Option<Instant>,
    total: Duration,
}

impl CpuMeter {
    pub fn start() -> CpuMeter {
        CpuMeter { started: Instant::now(), off: Arc::default() }
    }

    pub fn guest_cpu(&self) -> Duration {
        let spans = self.off.lock().unwrap_or_else(|p| p.into_inner());
        let open = spans.since.map_or(Duration::ZERO, |t| t.elapsed());
        self.started.elapsed().saturating_sub(spans.total + open)
    }

    /// The guest's CPU time stops until the matching [`CpuMeter::resume`].
    pub fn pause(&self) {
        let mut spans = self.off.lock().unwrap_or_else(|p| p.into_inner());
        if spans.depth == 0 {
            spans.since = Some(Instant::now());
        }
        spans.depth += 1;
    }

    pub fn resume(&self) {
        let mut spans = self.off.lock().unwrap_or_else(|p| p.into_inner());
        spans.depth = spans.depth.saturating_sub(1);
        if spans.depth == 0 {
            if let Some(t) = spans.since.take() {
                spans.total += t.elapsed();
            }
        }
    }

    /// Time from now until the guard drops is not the guest's CPU time.
    pub fn off_cpu(&self) -> OffCpu {
        self.pause();
        OffCpu { meter: self.clone() }
    }
}

pub struct OffCpu {
    meter: CpuMeter,
}

impl Drop for OffCpu {
    fn drop(&mut self) {
        self.meter.resume();
    }
}

#[cfg(test)]
mod meter_tests {
    use super::*;

    #[test]
    fn nested_off_cpu_spans_count_once() {
        let m = CpuMeter::start();
        m.pause();
        {
            let _inner = m.off_cpu();
            std::thread::sleep(Duration::from_millis(30));
        }
        std::thread::sleep(Duration::from_millis(30));
        m.resume();
        assert!(m.guest_cpu() < Duration::from_millis(20), "{:?}", m.guest_cpu());
    }
}

/// Guest text made safe to keep and to show: at most `max` bytes (cut on a
/// character boundary and marked with `…`), and every control character but
/// newline and tab escaped (`\u{1b}`), so a guest can neither drive the
/// operator's terminal nor grow a record past what its grant allows.
pub fn guest_text(s: &str, max: usize) -> String {
    let cut = if s.len() > max { &s[..s.floor_char_boundary(max)] } else { s };
    let mut out = String::with_capacity(cut.len() + 3);
    for c in cut.chars() {
        if c.is_control() && c != '\n' && c != '\t' {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    if cut.len() < s.len() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_text_is_capped_on_a_character_boundary_and_controls_are_escaped() {
        assert_eq!(guest_text("héllo", 2), "h…");
        assert_eq!(guest_text("a\u{1b}[2Jb\r\nc\td", 100), "a\\u{1b}[2Jb\\u{d}\nc\td");
        assert_eq!(guest_text("short", 100), "short");
    }
}
