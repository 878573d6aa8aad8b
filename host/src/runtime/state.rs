//! Per-invocation state: everything a guest can touch lives in one `Store`
//! built fresh for each call, so nothing leaks between runs.

use super::stdio::CappedPipe;
use crate::capability::http::transport::Transport;
use crate::capability::Capabilities;
use crate::invocation::{InvocationInfo, LogLine};
use crate::limits::{Bytes, Limits};
use crate::policy::Grant;
use crate::recording::{Tape, TapedMonotonicClock, TapedRandom, TapedWallClock};
use std::sync::Arc;
use tokio::sync::mpsc::UnboundedSender;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

/// Most bytes one `wasi:random` call may ask the host for.
const MAX_RANDOM_BYTES: u64 = 1024 * 1024;
/// Most WASI resources (streams, pollables, …) a guest may hold at once.
const MAX_WASI_RESOURCES: usize = 4096;

/// Which limit stopped the guest, so the error can say so plainly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    Cpu,
    Memory { desired: u64 },
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

/// The data of one invocation's `Store`: WASI (which grants nothing), the
/// memory limiter, the captured stdio, and the capabilities' state.
pub struct InvocationState {
    wasi: WasiCtx,
    wasi_http: WasiHttpCtx,
    table: ResourceTable,
    pub memory: MemoryLimiter,
    pub caps: Capabilities,
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
        tape: Tape,
    ) -> InvocationState {
        let limits: &Limits = &grant.limits;
        let stdout = CappedPipe::new(limits.log_bytes as usize);
        let stderr = CappedPipe::new(limits.log_bytes as usize);
        // WASI is linked so ordinary toolchains work, but it grants nothing:
        // no preopens, env, args or sockets; stdio is captured.
        // Random bytes and resource handles are host memory a guest asks for:
        // bounded here, not by the guest's own memory limit.
        let mut wasi = WasiCtx::builder();
        wasi.stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .max_random_size(MAX_RANDOM_BYTES.min(limits.memory_bytes));
        // Recorded or replayed: what makes a guest take another path on
        // another run (randomness, the time) is read from the tape.
        if !matches!(tape, Tape::Live) {
            wasi.secure_random(TapedRandom(tape.clone()))
                .insecure_random(TapedRandom(tape.clone()))
                .insecure_random_seed(0x5eed_0f_7a9e_u128)
                .wall_clock(TapedWallClock(tape.clone()))
                .monotonic_clock(TapedMonotonicClock { tape: tape.clone(), started: std::time::Instant::now() });
        }
        let wasi = wasi.build();
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_WASI_RESOURCES);
        InvocationState {
            wasi,
            wasi_http: {
                let mut ctx = WasiHttpCtx::new();
                ctx.set_field_size_limit(crate::capability::http::wasi::MAX_FIELDS_BYTES);
                ctx
            },
            table,
            memory: MemoryLimiter { limit: limits.memory_bytes, used: 0, refused: None },
            stop: None,
            stdout,
            stderr,
            caps: Capabilities::new(plugin, grant, info, transport, tap, tape),
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.caps.call.grant.limits
    }
}

impl WasiView for InvocationState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// `wasi:http`: its resources live in the same capped table as WASI's, and
/// every request goes to the capabilities' hooks (`capability::http::wasi`).
impl WasiHttpView for InvocationState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { hooks: &mut self.caps, table: &mut self.table, ctx: &mut self.wasi_http }
    }
}
