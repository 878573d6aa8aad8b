//! The `log` capability: the guest's log lines, kept within `limits.log_bytes`
//! (captured stdout and stderr land here too), and forwarded live to a tap.

use super::Capabilities;
use crate::audit::now_ms;
use crate::bindings::warden::action::log;
use crate::invocation::LogLine;
use tokio::sync::mpsc::UnboundedSender;

/// The captured log of one invocation, capped by `limits.log_bytes`.
pub struct LogBuffer {
    pub lines: Vec<LogLine>,
    budget: u64,
    pub dropped_bytes: u64,
    tap: Option<UnboundedSender<LogLine>>,
}

impl LogBuffer {
    pub fn new(budget: u64, tap: Option<UnboundedSender<LogLine>>) -> LogBuffer {
        LogBuffer { lines: Vec::new(), budget, dropped_bytes: 0, tap }
    }

    pub fn push(&mut self, line: LogLine) {
        let size = line.message.len() as u64;
        if size > self.budget {
            self.dropped_bytes += size;
            return;
        }
        self.budget -= size;
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
