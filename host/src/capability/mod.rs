//! Capabilities: everything a guest can reach beyond its own memory, each one
//! module with the same parts —
//!
//! * its **config** (parsed once, in [`crate::policy`]),
//! * a pure **check** that answers a call with a [`Denial`] naming the rule,
//! * its **per-invocation state** (a field of [`Capabilities`]),
//! * its bindgen **`Host` impl**, which checks, acts, and leaves one audit
//!   record through [`Call::record`].
//!
//! [`http`] (egress in numbered layers), [`smtp`] (mail through a relay),
//! [`log`] and [`clock`]. A new capability is one module here, one field in
//! [`Capabilities`] and one line in [`add_to_linker`].

pub mod clock;
pub mod http;
pub mod log;
pub mod smtp;

use crate::audit::{AuditRecord, Decision};
use crate::bindings::warden::action;
use crate::invocation::{CpuMeter, InvocationInfo, LogLine};
use crate::policy::Grant;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;
use wasmtime::component::{HasSelf, Linker};

/// A refusal: which rule decided, and a reason that says the consequence and the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// Names the deciding rule, e.g. `default-deny`, `address-screen`, `credential-binding`.
    pub rule: String,
    pub reason: String,
}

impl Denial {
    pub fn new(rule: &str, reason: String) -> Denial {
        Denial { rule: rule.to_string(), reason }
    }
}

/// What every capability call of one invocation shares: who is asking, under
/// which grant, until when, and the audit trail.
pub struct Call {
    pub plugin: String,
    pub grant: Arc<Grant>,
    pub info: InvocationInfo,
    pub audit: Vec<AuditRecord>,
    pub meter: CpuMeter,
    pub deadline: Instant,
    /// Calls refused so far (counted against `limits.denials`).
    pub denials: u32,
    /// Set when a capability stopped the invocation at a limit: (limit, message).
    pub stopped: Option<(&'static str, String)>,
}

impl Call {
    /// A new audit record of this invocation: denied until a check says otherwise.
    pub fn record(&self, capability: &'static str, method: String, url: String) -> AuditRecord {
        AuditRecord::new(capability, &self.plugin, &self.info, method, url)
    }

    /// Finishes `record` (its duration from `started`) and keeps it.
    pub fn keep(&mut self, mut record: AuditRecord, started: Instant) {
        record.duration_ms = started.elapsed().as_millis() as u64;
        self.audit.push(record);
    }

    /// [`Call::keep`] for the record of a capability call: a refusal counts
    /// against `limits.denials`, and past it the returned trap stops the
    /// invocation (the host call must return it).
    pub fn answered(&mut self, record: AuditRecord, started: Instant) -> wasmtime::Result<()> {
        let denied = record.decision == Decision::Denied;
        self.keep(record, started);
        let max = self.grant.limits.denials;
        if denied {
            self.denials += 1;
            if self.denials > max {
                let message = format!("{} had {max} capability calls refused; the host stopped it (limits.denials)", self.plugin);
                self.stopped = Some(("denials", message.clone()));
                return Err(wasmtime::Error::msg(message));
            }
        }
        Ok(())
    }
}

/// The per-invocation state of every capability.
pub struct Capabilities {
    pub call: Call,
    pub http: http::HttpState,
    pub smtp: smtp::SmtpState,
    pub logs: log::LogBuffer,
}

impl Capabilities {
    pub fn new(plugin: &str, grant: Arc<Grant>, info: InvocationInfo, transport: Arc<http::transport::Transport>, tap: Option<UnboundedSender<LogLine>>) -> Capabilities {
        let limits = &grant.limits;
        Capabilities {
            logs: log::LogBuffer::new(limits.log_bytes, tap),
            http: http::HttpState::new(transport),
            smtp: smtp::SmtpState::default(),
            call: Call {
                plugin: plugin.to_string(),
                deadline: Instant::now() + Duration::from_millis(limits.wall_ms),
                grant,
                info,
                audit: Vec::new(),
                meter: CpuMeter::start(),
                denials: 0,
                stopped: None,
            },
        }
    }
}

impl action::types::Host for Capabilities {}

/// Links every capability import of the `warden:action` world; `get` finds the
/// capabilities in the store's data.
pub fn add_to_linker<T: Send + 'static>(linker: &mut Linker<T>, get: fn(&mut T) -> &mut Capabilities) -> anyhow::Result<()> {
    action::types::add_to_linker::<T, HasSelf<Capabilities>>(linker, get)?;
    action::http::add_to_linker::<T, HasSelf<Capabilities>>(linker, get)?;
    action::smtp::add_to_linker::<T, HasSelf<Capabilities>>(linker, get)?;
    action::log::add_to_linker::<T, HasSelf<Capabilities>>(linker, get)?;
    action::clock::add_to_linker::<T, HasSelf<Capabilities>>(linker, get)?;
    Ok(())
}
