//! Per-invocation state: everything a guest can touch lives in one `Store`
//! built fresh for each call, so nothing leaks between runs.

use super::stdio::CappedPipe;
use super::{InvocationInfo, LogLine};
use crate::audit::AuditRecord;
use crate::egress::transport::Transport;
use crate::limits::{Bytes, Limits};
use crate::policy::Grant;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// Which limit stopped the guest, so the error can say so plainly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    Cpu,
    Memory { desired: u64 },
}

/// Guest CPU time = wall time since start minus time spent off the CPU
/// (in host calls such as `sleep` and `http.send`, or yielded to other tasks).
#[derive(Clone)]
pub struct CpuMeter {
    started: Instant,
    off_cpu_ns: Arc<AtomicU64>,
}

impl CpuMeter {
    pub fn start() -> CpuMeter {
        CpuMeter { started: Instant::now(), off_cpu_ns: Arc::default() }
    }
    pub fn guest_cpu(&self) -> Duration {
        let off = Duration::from_nanos(self.off_cpu_ns.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(off)
    }
    /// Time from now until the guard drops is not the guest's CPU time.
    pub fn off_cpu(&self) -> OffCpu {
        OffCpu { since: Instant::now(), off: self.off_cpu_ns.clone() }
    }
}

pub struct OffCpu {
    since: Instant,
    off: Arc<AtomicU64>,
}

impl Drop for OffCpu {
    fn drop(&mut self) {
        self.off.fetch_add(self.since.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }
}

/// Enforces the grant's memory limit across all of the component's memories.
pub struct MemoryLimiter {
    limit: u64,
    used: u64,
    pub refused: Option<u64>,
}

impl MemoryLimiter {
    pub fn message(&self) -> String {
        format!(
            "memory limit exceeded: the plugin asked for {} of linear memory; its grant allows {} (limits.memory)",
            Bytes(self.refused.unwrap_or(self.used)),
            Bytes(self.limit)
        )
    }
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        let after = self.used - current as u64 + desired as u64;
        if after > self.limit {
            self.refused = Some(after);
            // Trap rather than return -1: guests abort on allocation failure
            // anyway, and a trap lets the host name the limit.
            return Err(wasmtime::Error::msg(self.message()));
        }
        self.used = after;
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

/// The captured log of one invocation, capped by `limits.log_bytes`.
pub struct LogBuffer {
    pub lines: Vec<LogLine>,
    budget: u64,
    pub dropped_bytes: u64,
    tap: Option<UnboundedSender<LogLine>>,
}

impl LogBuffer {
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

pub struct InvocationState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub memory: MemoryLimiter,
    pub plugin: String,
    pub grant: Arc<Grant>,
    pub info: InvocationInfo,
    pub transport: Arc<Transport>,
    pub http_sent: u32,
    pub mail_sent: u32,
    pub logs: LogBuffer,
    pub audit: Vec<AuditRecord>,
    pub meter: CpuMeter,
    pub deadline: Instant,
    pub stop: Option<Stop>,
    pub stdout: CappedPipe,
    pub stderr: CappedPipe,
}

impl InvocationState {
    pub fn new(
        plugin: &str,
        grant: Arc<Grant>,
        info: InvocationInfo,
        transport: Arc<Transport>,
        tap: Option<UnboundedSender<LogLine>>,
    ) -> InvocationState {
        let limits: &Limits = &grant.limits;
        let stdout = CappedPipe::new(limits.log_bytes as usize);
        let stderr = CappedPipe::new(limits.log_bytes as usize);
        // WASI is linked so ordinary toolchains work, but it grants nothing:
        // no preopens, env, args or sockets; stdio is captured.
        let wasi = WasiCtx::builder()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        InvocationState {
            wasi,
            table: ResourceTable::new(),
            memory: MemoryLimiter { limit: limits.memory_bytes, used: 0, refused: None },
            plugin: plugin.to_string(),
            info,
            transport,
            http_sent: 0,
            mail_sent: 0,
            logs: LogBuffer { lines: Vec::new(), budget: limits.log_bytes, dropped_bytes: 0, tap },
            audit: Vec::new(),
            meter: CpuMeter::start(),
            deadline: Instant::now() + Duration::from_millis(limits.wall_ms),
            stop: None,
            stdout,
            stderr,
            grant,
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.grant.limits
    }

    /// A new audit record of this invocation: denied until a check says otherwise.
    pub fn audit_record(&self, capability: &'static str, method: String, url: String) -> AuditRecord {
        AuditRecord {
            at_ms: crate::audit::now_ms(),
            capability,
            plugin: self.plugin.clone(),
            run_id: self.info.run_id.clone(),
            story: self.info.story.clone(),
            step: self.info.step.clone(),
            team: self.info.team.clone(),
            method,
            url,
            decision: crate::audit::Decision::Denied,
            rule: String::new(),
            reason: None,
            credential: None,
            recipient_domains: None,
            status: None,
            request_bytes: 0,
            response_bytes: 0,
            duration_ms: 0,
        }
    }
}

impl WasiView for InvocationState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}
