//! Per-invocation state: everything a guest can touch lives in one `Store`
//! built fresh for each call, so nothing leaks between runs.

use super::stdio::CappedPipe;
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
/// Resources a guest may hold however little memory its grant has left
/// (WASI's own stdio and a request's handles need a few).
const MIN_WASI_RESOURCES: usize = 16;

/// What one resource a guest holds may cost the host, charged against the
/// grant's memory while it is held. The largest are a wasi:http `fields`
/// (16 KiB as wasmtime counts names and values, about 47 KiB as a
/// `HeaderMap` really holds it: measured with empty headers, the worst case)
/// and a request body's pending chunk (64 KiB).
pub const HOST_RESOURCE_BYTES: u64 = 64 * 1024;

/// How many resources fit in `free` bytes of a grant.
fn resource_capacity(free: u64) -> usize {
    ((free / HOST_RESOURCE_BYTES) as usize).clamp(MIN_WASI_RESOURCES, MAX_WASI_RESOURCES)
}

/// Which limit stopped the guest, so the error can say so plainly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    Cpu,
    Memory { desired: u64 },
}

/// Enforces the grant's memory limit across all of the component's memories
/// and the host resources it holds ([`HOST_RESOURCE_BYTES`] each).
pub struct MemoryLimiter {
    limit: u64,
    used: u64,
    /// Host memory charged for resources held when memory last grew.
    held: u64,
    pub refused: Option<u64>,
}

impl MemoryLimiter {
    pub fn message(&self) -> String {
        let held = if self.held > 0 { format!(" while holding {} of host resources", Bytes(self.held)) } else { String::new() };
        format!(
            "memory limit exceeded: the plugin asked for {} of linear memory{held}; its grant allows {} (limits.memory)",
            Bytes(self.refused.unwrap_or(self.used)),
            Bytes(self.limit)
        )
    }

    /// What the guest has not used of its grant (linear memory only).
    pub fn free(&self) -> u64 {
        self.limit.saturating_sub(self.used)
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    fn growing(&mut self, current: usize, desired: usize, held: u64) -> wasmtime::Result<bool> {
        let after = self.used - current as u64 + desired as u64;
        self.held = held;
        if after.saturating_add(held) > self.limit {
            self.refused = Some(after);
            // Trap rather than return -1: guests abort on allocation failure
            // anyway, and a trap lets the host name the limit.
            return Err(wasmtime::Error::msg(self.message()));
        }
        self.used = after;
        Ok(true)
    }
}

/// Linear memory and host resources draw on one budget, the grant's memory:
/// memory may grow only into what the held resources leave, and after it
/// grows, the resource table may hold only as many as the rest pays for.
impl wasmtime::ResourceLimiter for InvocationState {
    fn memory_growing(&mut self, current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        let held = self.table.iter_mut().count() as u64 * HOST_RESOURCE_BYTES;
        let grown = self.memory.growing(current, desired, held)?;
        self.table.set_max_capacity(resource_capacity(self.memory.free()));
        Ok(grown)
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
        egress: Arc<crate::capability::http::Egress>,
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
        if !tape.is_live() {
            wasi.secure_random(TapedRandom(tape.clone()))
                .insecure_random(TapedRandom(tape.clone()))
                .insecure_random_seed(0x005e_ed0f_7a9e_u128)
                .wall_clock(TapedWallClock(tape.clone()))
                .monotonic_clock(TapedMonotonicClock { tape: tape.clone(), started: std::time::Instant::now() });
        }
        let wasi = wasi.build();
        let mut table = ResourceTable::new();
        table.set_max_capacity(resource_capacity(limits.memory_bytes));
        InvocationState {
            wasi,
            wasi_http: {
                let mut ctx = WasiHttpCtx::new();
                ctx.set_field_size_limit(crate::capability::http::wasi::MAX_FIELDS_BYTES);
                ctx
            },
            table,
            memory: MemoryLimiter { limit: limits.memory_bytes, used: 0, held: 0, refused: None },
            stop: None,
            stdout,
            stderr,
            caps: Capabilities::new(plugin, grant, info, egress, tap, tape),
        }
    }

    /// Resources the guest may hold now (its grant's memory pays for them).
    pub fn resource_capacity(&self) -> usize {
        self.table.max_capacity()
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    /// Counts this thread's live heap bytes (other tests' threads are not counted).
    struct Counting;
    thread_local! { static LIVE: Cell<isize> = const { Cell::new(0) }; }
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, l: Layout) -> *mut u8 {
            let _ = LIVE.try_with(|c| c.set(c.get() + l.size() as isize));
            unsafe { System.alloc(l) }
        }
        unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
            let _ = LIVE.try_with(|c| c.set(c.get() - l.size() as isize));
            unsafe { System.dealloc(p, l) }
        }
    }
    #[global_allocator]
    static COUNTING: Counting = Counting;

    /// The charge per resource is at least what the largest one really
    /// holds: a header section filled to wasmtime's limit in its worst
    /// shapes (one name repeated with empty values, many short names).
    #[test]
    fn a_full_header_section_costs_the_host_no_more_than_its_charge() {
        use wasmtime_wasi_http::FieldMap;
        for shape in ["one name, empty values", "many names, empty values", "many names, short values"] {
            let before = LIVE.with(Cell::get);
            let mut f = FieldMap::new_mutable(crate::capability::http::wasi::MAX_FIELDS_BYTES);
            for i in 0.. {
                let name = match shape {
                    "one name, empty values" => http::HeaderName::from_static("x-a"),
                    _ => http::HeaderName::from_bytes(format!("x{i}").as_bytes()).unwrap(),
                };
                let value = if shape.ends_with("short values") { http::HeaderValue::from_static("v") } else { http::HeaderValue::from_static("") };
                if f.append_raw(name, value).is_err() {
                    break;
                }
            }
            let held = (LIVE.with(Cell::get) - before) as u64;
            assert!(held <= HOST_RESOURCE_BYTES, "{shape}: a full header section holds {held} bytes, more than the {HOST_RESOURCE_BYTES} charged for it");
            assert!(held > HOST_RESOURCE_BYTES / 8, "{shape}: {held} bytes: the section was not filled");
            drop(f);
        }
    }

    #[test]
    fn the_resources_a_guest_may_hold_are_paid_for_by_its_grant() {
        assert_eq!(resource_capacity(16 << 20), 256);
        assert_eq!(resource_capacity(64 << 20), 1024);
        assert_eq!(resource_capacity(1 << 30), MAX_WASI_RESOURCES);
        assert_eq!(resource_capacity(0), MIN_WASI_RESOURCES);
    }
}
