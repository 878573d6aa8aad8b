//! The wasmtime engines: pooling allocators sized for the worker count, epoch
//! interruption for the CPU limit, and the thread that ticks the epochs.
//!
//! A finished instance's slot is reset for the next one in place where the
//! kernel can say which pages it dirtied ([`resets_memory_in_place`]).
//!
//! Two engines that differ only in how a fresh instance's linear memory gets
//! its initial data ([`MemoryInit`]): a component whose data segments are
//! small has them *copied* in; a large one (an interpreter with its heap
//! snapshot) has them *mapped* copy-on-write. Each component is compiled for
//! the one its data calls for ([`memory_init_for`]).

use crate::limits::MAX_MEMORY_BYTES;
use std::time::Duration;
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the epoch advances; the CPU limit is checked at this granularity.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// How a fresh instance's linear memory receives the component's data segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryInit {
    /// Copied at instantiation into zeroed memory. For small data: a guest's
    /// first write to a mapped image page is a copy-on-write fault whose TLB
    /// flush interrupts every core the process runs on; under load that was
    /// 17 % of the workers' time for a trivial Rust plugin (BENCHMARKS.md).
    Copy,
    /// Mapped copy-on-write from the compiled image: only the pages a guest
    /// touches are copied. For large data (the Python example's 11 MiB of
    /// interpreter snapshot would otherwise be copied at every invocation).
    CopyOnWrite,
}

/// Components with at most this many bytes of active data segments are
/// copied in ([`MemoryInit::Copy`]); larger ones are mapped.
pub const COPY_DATA_MAX_BYTES: u64 = 256 << 10;

/// Which engine a component belongs on, from the active data segments of all
/// its core modules. Bytes that do not parse go to the copying engine, whose
/// compiler then says what is wrong with them.
pub fn memory_init_for(component: &[u8]) -> MemoryInit {
    let mut data: u64 = 0;
    for payload in wasmparser::Parser::new(0).parse_all(component) {
        let Ok(payload) = payload else { return MemoryInit::Copy };
        if let wasmparser::Payload::DataSection(reader) = payload {
            for segment in reader {
                let Ok(segment) = segment else { return MemoryInit::Copy };
                if matches!(segment.kind, wasmparser::DataKind::Active { .. }) {
                    data = data.saturating_add(segment.data.len() as u64);
                }
            }
        }
    }
    if data <= COPY_DATA_MAX_BYTES {
        MemoryInit::Copy
    } else {
        MemoryInit::CopyOnWrite
    }
}

/// Instances the copy-on-write engine's pool holds for `max_instances` in the
/// copying one: a quarter (at least 16, or all of a smaller pool). Large
/// components are interpreters at tens of MiB each, and every memory slot of
/// a pool reserves ~4 GiB of address space, so two full pools would double it.
pub fn mapped_pool(max_instances: u32) -> u32 {
    (max_instances / 4).max(max_instances.min(16))
}

/// Bytes of a finished instance's dirtied linear memory that its slot keeps
/// resident, zeroed (or restored from the image) in place, for the next
/// instance. A trivial SDK plugin dirties well under it; a guest that dirties
/// more has the rest returned to the kernel as before. What idle slots hold
/// is bounded by the pool: slots ever used at once × 256 KiB (at most the
/// pool's capacity × 256 KiB, 250 MiB for 1,000 instances), the high-water
/// mark of memory those instances had dirtied anyway; it is not returned
/// after a burst. `/metrics` shows it (`warden_instances_idle_resident_bytes`).
pub const MEMORY_KEEP_RESIDENT: usize = 256 << 10;

/// Whether finished instances' memory is reset in place: the kernel's
/// `PAGEMAP_SCAN` (Linux 6.7 and later) tells wasmtime which pages a guest
/// dirtied, so only those are zeroed and the slot's pages stay mapped. The
/// next instance then takes no page faults on them, and no `madvise` shoots
/// down every core's TLB: half the invocation's time and ~97 % of a loaded
/// server's page faults (BENCHMARKS.md). Without the scan, keeping memory
/// resident would zero its *first* bytes, but a Rust guest's touched pages
/// sit at the top of its 1 MiB stack, so warden returns memory to the kernel.
pub fn resets_memory_in_place() -> bool {
    static AVAILABLE: std::sync::LazyLock<bool> = std::sync::LazyLock::new(PoolingAllocationConfig::is_pagemap_scan_available);
    *AVAILABLE
}

pub(super) fn build_engine(max_instances: u32, init: MemoryInit) -> anyhow::Result<Engine> {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    config.max_wasm_stack(512 * 1024);
    config.memory_init_cow(init == MemoryInit::CopyOnWrite);
    let n = max_instances.max(1);
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(n)
        .total_core_instances(n.saturating_mul(4))
        .total_memories(n.saturating_mul(2))
        .total_tables(n.saturating_mul(4))
        .total_stacks(n)
        .max_memory_size(MAX_MEMORY_BYTES as usize)
        .max_unused_warm_slots(n.min(100))
        // Reuse a slot's tables by zeroing them instead of madvise + page
        // faults: kernel time was half of a trivial invocation (BENCHMARKS.md).
        // Linear memory too where the kernel can say which pages were dirtied
        // (below). Fiber stacks are reused as they are (wasmtime's default,
        // no `async_stack_zeroing`): they hold the host's and the compiled
        // code's frames, which a guest cannot address; its data lives in
        // linear memory, which is always reset.
        .table_keep_resident(64 << 10)
        // Return finished instances' memory to the kernel 64 at a time: each
        // madvise shoots down TLBs on every core, which under load took 13 %
        // of the workers' time one by one, and 3 % still at 16 a time
        // (BENCHMARKS.md). Slots are only reused after their batch is
        // decommitted, so nothing leaks between invocations (the residue
        // test runs more invocations than a batch); at most 64 dead
        // instances' touched pages wait (a few MiB for Rust plugins).
        .decommit_batch_size(64);
    if resets_memory_in_place() {
        // Every dirtied page is still zeroed (or restored from the image)
        // before the slot is reused: only the page-table churn goes.
        pool.pagemap_scan(Enabled::Yes).linear_memory_keep_resident(MEMORY_KEEP_RESIDENT);
    }
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    match Engine::new(&config) {
        Ok(engine) => Ok(engine),
        Err(e) => {
            // Some hosts cap virtual memory; fall back rather than refuse to start.
            tracing::warn!("pooling allocator unavailable ({e}); using on-demand allocation");
            config.allocation_strategy(InstanceAllocationStrategy::OnDemand);
            Engine::new(&config).map_err(anyhow::Error::from)
        }
    }
}

/// Ticks the epoch of every engine in `engines` until they are all dropped.
pub(super) fn start_epoch_ticker(engines: &[&Engine]) {
    let weak: Vec<_> = engines.iter().map(|e| e.weak()).collect();
    std::thread::Builder::new()
        .name("warden-epoch".into())
        .spawn(move || loop {
            std::thread::sleep(EPOCH_TICK);
            let mut alive = false;
            for engine in weak.iter().filter_map(|w| w.upgrade()) {
                engine.increment_epoch();
                alive = true;
            }
            if !alive {
                break;
            }
        })
        .expect("spawn epoch thread");
}
