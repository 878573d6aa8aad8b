//! Capabilities: everything a guest can reach beyond its own memory, each one
//! module with the same parts —
//!
//! * its **config** (parsed once, in [`crate::policy`]),
//! * a pure **check** that answers a call with a [`Denial`] naming the rule,
//! * its **per-invocation state** (a field of [`Capabilities`]),
//! * its bindgen **`Host` impl**, which checks, acts, and leaves one audit
//!   record through [`CallState::record`].
//!
//! [`http`] (egress in numbered layers), [`smtp`] (mail through a relay),
//! [`log`] and [`clock`]. A new capability is one module here, one field in
//! [`Capabilities`] and one line in [`add_to_linker`].

pub mod clock;
pub mod http;
pub mod log;
pub mod smtp;
pub mod taped;

use crate::audit::{AuditRecord, Verdict};
use crate::bindings::warden::action;
use crate::invocation::{CpuMeter, InvocationInfo, LogLine};
use crate::policy::Grant;
use crate::recording::Tape;
use std::sync::{Arc, Mutex};
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
pub struct CallState {
    pub plugin: String,
    pub grant: Arc<Grant>,
    pub info: InvocationInfo,
    pub audit: Vec<AuditRecord>,
    pub meter: CpuMeter,
    pub deadline: Instant,
    /// Calls refused so far (counted against `limits.denials`).
    pub denials: u32,
    /// Set when a capability stopped the invocation: (limit, message), the
    /// limit being e.g. `denials`, or `replay` for a replay that diverged.
    pub stopped: Option<(&'static str, String)>,
    /// Records of calls answered after the host call that made them returned.
    pub late: LateAudit,
}

impl CallState {
    /// A new audit record of this invocation: denied until a check says otherwise.
    pub fn record(&self, capability: &'static str, method: String, url: String) -> AuditRecord {
        AuditRecord::new(capability, &self.plugin, &self.info, method, url)
    }

    /// Finishes `record` (its duration from `started`) and keeps it.
    pub fn keep(&mut self, mut record: AuditRecord, started: Instant) {
        record.duration_ms = started.elapsed().as_millis() as u64;
        self.audit.push(record);
    }

    /// [`CallState::keep`] for the record of a capability call: a refusal counts
    /// against `limits.denials`, and past it the returned trap stops the
    /// invocation (the host call must return it).
    pub fn answered(&mut self, record: AuditRecord, started: Instant) -> wasmtime::Result<()> {
        if record.decision == Verdict::Denied {
            self.denials += 1;
        }
        self.keep(record, started);
        self.check_denials()
    }

    /// Past `limits.denials` refusals (counting late ones), or once a
    /// capability stopped it (a replay that diverged), the invocation is
    /// stopped: the returned trap ends it. Checked as every host call returns
    /// and on every epoch tick, since a late refusal has no host call of its own.
    pub fn check_denials(&mut self) -> wasmtime::Result<()> {
        if let Some((_, message)) = &self.stopped {
            return Err(wasmtime::Error::msg(message.clone()));
        }
        let max = self.grant.limits.denials;
        if self.denials + self.late.denied() > max {
            let message = format!("{} had {max} capability calls refused; the host stopped it (limits.denials)", self.plugin);
            self.stopped = Some(("denials", message.clone()));
            return Err(wasmtime::Error::msg(message));
        }
        Ok(())
    }

    /// Every audit record of the invocation, in the order the calls were made.
    pub fn take_audit(&mut self) -> Vec<AuditRecord> {
        let made = std::mem::take(&mut self.audit);
        let mut late = self.late.take().into_iter().peekable();
        let mut all = Vec::with_capacity(made.len() + late.len());
        for (i, record) in made.into_iter().enumerate() {
            while let Some((_, l)) = late.next_if(|(at, _)| *at <= i) {
                all.push(l);
            }
            all.push(record);
        }
        all.extend(late.map(|(_, l)| l));
        all
    }

    /// Opens a late record for `record` (see [`LateAudit`]), placed after the
    /// records kept so far.
    pub fn open_late(&self, record: &AuditRecord) -> usize {
        self.late.open(record, self.audit.len())
    }
}

/// Audit records of requests whose exchange runs beside the guest (a
/// `wasi:http` future): opened when admitted, completed when answered. One
/// never completed — the invocation ended first — says so.
#[derive(Clone, Default)]
pub struct LateAudit(Arc<Mutex<LateRecords>>);

#[derive(Default)]
struct LateRecords {
    /// Each with the number of ordinary records kept before it was opened.
    records: Vec<(usize, AuditRecord)>,
    denied: u32,
}

impl LateAudit {
    /// Keeps a provisional copy of `record`, to be placed after the first
    /// `position` ordinary records; returns its slot.
    fn open(&self, record: &AuditRecord, position: usize) -> usize {
        let mut provisional = record.clone();
        provisional.decision = Verdict::Allowed;
        provisional.reason = Some("the invocation ended before this request was answered".into());
        let mut late = self.0.lock().unwrap_or_else(|p| p.into_inner());
        late.records.push((position, provisional));
        late.records.len() - 1
    }

    /// The final form of the record in `slot`.
    pub fn close(&self, slot: usize, record: AuditRecord) {
        let mut late = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if record.decision == Verdict::Denied {
            late.denied += 1;
        }
        if let Some((_, r)) = late.records.get_mut(slot) {
            *r = record;
        }
    }

    pub fn denied(&self) -> u32 {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).denied
    }

    fn take(&self) -> Vec<(usize, AuditRecord)> {
        std::mem::take(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()).records)
    }
}

/// The per-invocation state of every capability.
pub struct Capabilities {
    pub call: CallState,
    /// The interceptor every capability asks before a call and hands the
    /// call made: live, recorded or replayed (see [`crate::recording::intercept`]).
    pub tape: Tape,
    pub http: http::HttpState,
    pub smtp: smtp::SmtpState,
    pub logs: log::LogBuffer,
}

impl Capabilities {
    pub fn new(
        plugin: &str,
        grant: Arc<Grant>,
        info: InvocationInfo,
        egress: Arc<http::Egress>,
        tap: Option<UnboundedSender<LogLine>>,
        tape: Tape,
    ) -> Capabilities {
        let limits = &grant.limits;
        Capabilities {
            tape,
            logs: log::LogBuffer::new(limits.log_bytes, tap),
            http: http::HttpState::new(egress),
            smtp: smtp::SmtpState::default(),
            call: CallState {
                plugin: plugin.to_string(),
                deadline: Instant::now() + Duration::from_millis(limits.wall_ms),
                grant,
                info,
                audit: Vec::new(),
                meter: CpuMeter::start(),
                denials: 0,
                stopped: None,
                late: LateAudit::default(),
            },
        }
    }
}

impl Capabilities {
    /// Whether the invocation must stop now: past `limits.denials`, or a
    /// replay that diverged (possibly in a wasi:http body checked late).
    pub fn check_stopped(&mut self) -> wasmtime::Result<()> {
        if let (Some(d), None) = (self.tape.divergence(), &self.call.stopped) {
            return Err(self.call.diverged(&d));
        }
        self.call.check_denials()
    }
}

impl action::types::Host for Capabilities {}

/// Links every capability import of the `warden:action` world; `get` finds the
/// capabilities in the store's data. (`wasi:http`, the other door to
/// [`http`], is linked by the runtime with WASI: see [`http::wasi`].)
pub fn add_to_linker<T: Send + 'static>(linker: &mut Linker<T>, get: fn(&mut T) -> &mut Capabilities) -> anyhow::Result<()> {
    action::types::add_to_linker::<T, HasSelf<Capabilities>>(linker, get)?;
    action::http::add_to_linker::<T, HasSelf<Capabilities>>(linker, get)?;
    action::smtp::add_to_linker::<T, HasSelf<Capabilities>>(linker, get)?;
    action::log::add_to_linker::<T, HasSelf<Capabilities>>(linker, get)?;
    action::clock::add_to_linker::<T, HasSelf<Capabilities>>(linker, get)?;
    Ok(())
}

impl CallState {
    /// Stops the invocation because a replay diverged: the guest is trapped
    /// as the host call returns, and the step error says where it diverged.
    pub fn diverged(&mut self, d: &crate::recording::Divergence) -> wasmtime::Error {
        let message = format!("replay diverged at {d}");
        self.stopped = Some(("replay", message.clone()));
        wasmtime::Error::msg(message)
    }
}
