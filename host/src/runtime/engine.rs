//! The one wasmtime `Engine`: pooling allocator sized for the worker count,
//! epoch interruption for the CPU limit, and the thread that ticks the epoch.

use crate::limits::MAX_MEMORY_BYTES;
use std::time::Duration;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the epoch advances; the CPU limit is checked at this granularity.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

pub(super) fn build_engine(max_instances: u32) -> anyhow::Result<Engine> {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    config.max_wasm_stack(512 * 1024);
    let n = max_instances.max(1);
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(n)
        .total_core_instances(n.saturating_mul(4))
        .total_memories(n.saturating_mul(2))
        .total_tables(n.saturating_mul(4))
        .total_stacks(n)
        .max_memory_size(MAX_MEMORY_BYTES as usize)
        .max_unused_warm_slots(n.min(100))
        // Reuse a slot's tables and fiber stack by zeroing them instead of
        // madvise + page faults: kernel time was half of a trivial invocation
        // (BENCHMARKS.md). Linear memory is left to madvise: a Rust guest's
        // touched pages are not at the start, so keeping them resident only
        // added memset time. Bounded: warm slots × 128 KiB stay resident.
        .table_keep_resident(64 << 10)
        .async_stack_keep_resident(64 << 10)
        // Return finished instances' memory to the kernel 16 at a time: each
        // madvise shoots down TLBs on every core, which under load took 13 %
        // of the workers' time one by one (BENCHMARKS.md). Slots are only
        // reused after their batch is decommitted, so nothing leaks between
        // invocations; at most 16 dead instances' touched pages wait.
        .decommit_batch_size(16);
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

pub(super) fn start_epoch_ticker(engine: &Engine) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("warden-epoch".into())
        .spawn(move || loop {
            std::thread::sleep(EPOCH_TICK);
            match weak.upgrade() {
                Some(engine) => engine.increment_epoch(),
                None => break,
            }
        })
        .expect("spawn epoch thread");
}
