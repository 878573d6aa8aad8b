//! The `log` capability: the guest's log lines, kept within `limits.log_bytes`
//! (captured stdout and stderr land here too), and forwarded live to a tap.

use super::Capabilities;
use crate::audit::now_ms;
use crate::bindings::warden::action::log;
use crate::invocation::{guest_text, LogLine};
use tokio::sync::mpsc::UnboundedSender;

/// The captured log of one invocation, capped by `limits.log_bytes`.
pub struct LogBuffer {
    pub lines: Vec<LogLine>,
    budget: u64,
    pub dropped_bytes: u64,
    pub dropped_lines: u64,
    tap: Option<UnboundedSender<LogLine>>,
}

/// What one kept line costs beyond its text (its record, its row).
pub const LINE_OVERHEAD: u64 = 64;

impl LogBuffer {
    pub fn new(budget: u64, tap: Option<UnboundedSender<LogLine>>) -> LogBuffer {
        LogBuffer { lines: Vec::new(), budget, dropped_bytes: 0, dropped_lines: 0, tap }
    }

    /// Keeps `line` if the budget allows: every line costs its bytes plus
    /// [`LINE_OVERHEAD`], so a flood of empty lines is bounded too. Control
    /// characters are escaped here, once for every reader (store, terminal).
    pub fn push(&mut self, mut line: LogLine) {
        let size = line.message.len() as u64 + LINE_OVERHEAD;
        if size > self.budget {
            self.dropped_bytes += line.message.len() as u64;
            self.dropped_lines += 1;
            return;
        }
        self.budget -= size;
        if line.message.contains(|c: char| c.is_control() && c != '\n' && c != '\t') {
            line.message = guest_text(&line.message, usize::MAX);
        }
        if let Some(tap) = &self.tap {
            let _ = tap.send(line.clone());
        }
        self.lines.push(line);
    }
}

impl log::Host for Capabilities {
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
