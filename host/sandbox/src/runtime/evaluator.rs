//! The template evaluator: every template, Liquid string and formula a story
//! holds is rendered inside a fresh instance of one Wasm component
//! (`host/eval/guest`, built and embedded by `host/sandbox/build.rs`), never in the
//! host process.
//!
//! Why: rendering is the host's own work on data it received (a webhook's
//! body, a step's output), and template languages build values — `replace`,
//! `~`, `append` in a loop — far larger than what they were given. Rust
//! aborts the process when an allocation fails, so a cap checked after the
//! fact cannot save the host. Inside an instance the limit acts before
//! anything is allocated: growing linear memory past [`EVAL_MEMORY_BYTES`]
//! is refused, the guest's allocator fails, the instance traps, and the one
//! render fails with a one-line error. Fuel bounds the CPU the same way.
//! Nothing here depends on which filters the languages have.
//!
//! Phases: compiled once per process (from the on-disk cache when it has
//! it), pre-linked once; per render a fresh `Store` with its limits.

use crate::limits::MIB;
use crate::runtime::cache;
use std::sync::{Mutex, OnceLock};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

wasmtime::component::bindgen!({ path: "../eval/guest/wit", world: "evaluator" });

/// Linear memory one render may use: the story's context (as JSON and as
/// values), the template and everything it builds. The default grant's memory.
pub const EVAL_MEMORY_BYTES: u64 = 64 * MIB;
/// Wasm instructions one render may execute (about a second of CPU).
pub const EVAL_FUEL: u64 = 2_000_000_000;
/// Largest answer (a rendered value as JSON text) the host parses: a value
/// of many small items is several times its text once parsed, and the host's
/// parse is outside the instance's limit. A step's default output limit.
pub const MAX_ANSWER_BYTES: usize = 4 * MIB as usize;
/// Most renders at once (a slot each in the instance pool); more wait their turn.
const SLOTS: u32 = 64;

static WASM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/evaluator.wasm"));
/// Its sha256, worked out by build.rs.
const DIGEST: &str = include_str!(concat!(env!("OUT_DIR"), "/evaluator.sha256"));

struct Sandbox {
    engine: Engine,
    pre: EvaluatorPre<State>,
}

struct State {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: Limiter,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// Refuses memory growth past the limit and remembers that it did, so the
/// trap that follows (the guest's allocator aborting) is reported as what it is.
#[derive(Default)]
struct Limiter {
    refused: Option<u64>,
}

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        if desired as u64 > EVAL_MEMORY_BYTES {
            self.refused = Some(desired as u64);
            return Ok(false);
        }
        Ok(true)
    }
    fn table_growing(&mut self, _current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

fn build() -> anyhow::Result<Sandbox> {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.consume_fuel(true);
    config.max_wasm_stack(1 << 20);
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(SLOTS)
        .total_core_instances(SLOTS * 8)
        .total_memories(SLOTS * 2)
        .total_tables(SLOTS * 8)
        .total_stacks(SLOTS)
        .max_memory_size(EVAL_MEMORY_BYTES as usize)
        .max_unused_warm_slots(SLOTS.min(8))
        .table_keep_resident(64 << 10);
    // As the plugins' engines do (see `engine::resets_memory_in_place`):
    // where the kernel says which pages an instance dirtied, only those are
    // zeroed for the next one; else the slot's memory goes back to the kernel.
    // (Keeping a fixed amount resident without the scan zeroed all of it
    // after every render: the largest cost of a render, measured.)
    if crate::runtime::resets_memory_in_place() {
        pool.pagemap_scan(wasmtime::Enabled::Yes).linear_memory_keep_resident(crate::runtime::MEMORY_KEEP_RESIDENT);
    }
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    let engine = match Engine::new(&config) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!("template evaluator: pooling allocator unavailable ({e}); using on-demand allocation");
            config.allocation_strategy(InstanceAllocationStrategy::OnDemand);
            Engine::new(&config)?
        }
    };
    let component: Component = cache::compile(&engine, crate::runtime::default_cache_dir().as_deref(), DIGEST, WASM)?;
    let mut linker = Linker::<State>::new(&engine);
    // The guest's standard library imports WASI; its context grants nothing
    // (no files, no environment, no network; stdout and stderr go nowhere).
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    let pre = EvaluatorPre::new(linker.instantiate_pre(&component)?)?;
    Ok(Sandbox { engine, pre })
}

fn evaluator() -> Result<&'static Sandbox, String> {
    static E: OnceLock<Result<Sandbox, String>> = OnceLock::new();
    E.get_or_init(|| build().map_err(|e| format!("the template evaluator could not be loaded: {e:#}"))).as_ref().map_err(Clone::clone)
}

/// Loads the evaluator now instead of at the first render (which waits for
/// it if it is still loading).
pub fn warm() -> Result<(), String> {
    evaluator().map(|_| ())
}

type Job = Box<dyn FnOnce(&'static Sandbox) + Send>;

/// The threads renders run on. Not the caller's: WASI's synchronous host
/// calls (a guest printing why it aborted) drive their own Tokio runtime,
/// which may not start on a thread that is already driving one, as every
/// step of a story is. At most [`SLOTS`] of them, one instance each.
fn workers(e: &'static Sandbox) -> &'static std::sync::mpsc::Sender<Job> {
    static POOL: OnceLock<std::sync::mpsc::Sender<Job>> = OnceLock::new();
    POOL.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let rx = std::sync::Arc::new(Mutex::new(rx));
        let n = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(2, SLOTS as usize);
        for i in 0..n {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("warden-eval-{i}"))
                .spawn(move || loop {
                    let job = match rx.lock().unwrap_or_else(|p| p.into_inner()).recv() {
                        Ok(job) => job,
                        Err(_) => return,
                    };
                    job(e);
                })
                .expect("the OS starts a thread");
        }
        tx
    })
}

/// Runs `call` in a fresh instance on an evaluator thread and says why it
/// failed in one line.
fn with_instance(call: impl FnOnce(&Evaluator, &mut Store<State>) -> wasmtime::Result<Result<String, String>> + Send + 'static) -> Result<String, String> {
    let e = evaluator()?;
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let job: Job = Box::new(move |e| {
        let _ = tx.send(in_instance(e, call));
    });
    workers(e).send(job).map_err(|_| "the template evaluator has stopped".to_string())?;
    rx.recv().map_err(|_| "the template evaluator failed (its thread ended)".to_string())?
}

fn in_instance(e: &Sandbox, call: impl FnOnce(&Evaluator, &mut Store<State>) -> wasmtime::Result<Result<String, String>>) -> Result<String, String> {
    let state = State { wasi: WasiCtx::builder().build(), table: ResourceTable::new(), limiter: Limiter::default() };
    let mut store = Store::new(&e.engine, state);
    store.limiter(|s| &mut s.limiter);
    store.set_fuel(EVAL_FUEL).map_err(|e| e.to_string())?;
    let instance = e.pre.instantiate(&mut store).map_err(|e| format!("the template evaluator could not start: {e}"))?;
    match call(&instance, &mut store) {
        Ok(result) => result,
        Err(trap) => Err(if let Some(asked) = store.data().limiter.refused {
            format!(
                "the template needs more than {} MiB of memory to render (it asked for {} MiB); make it build smaller values",
                EVAL_MEMORY_BYTES / MIB,
                asked.div_ceil(MIB)
            )
        } else if matches!(trap.downcast_ref::<wasmtime::Trap>(), Some(wasmtime::Trap::OutOfFuel)) {
            "the template takes too long to render (its CPU budget ran out); loops within loops?".to_string()
        } else {
            format!("the template could not be rendered ({})", one_line(&trap.to_string()))
        }),
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn parse(text: &str) -> Result<serde_json::Value, String> {
    if text.len() > MAX_ANSWER_BYTES {
        return Err(format!(
            "the template rendered {} MiB of JSON; at most {} MiB is taken (make it build smaller values)",
            text.len().div_ceil(MIB as usize),
            MAX_ANSWER_BYTES / MIB as usize
        ));
    }
    serde_json::from_str(text).map_err(|e| format!("the template evaluator answered what is not JSON: {e}"))
}

/// Renders every template string inside `value` against `context` (a JSON
/// object's text: callers send only what the templates read).
pub fn render(language: Language, value: &serde_json::Value, context: String) -> Result<serde_json::Value, String> {
    let value = value.to_string();
    let out = with_instance(move |i, store| i.call_render(store, language, &value, &context))?;
    parse(&out)
}

/// Renders `value` once per item of `items`: Jinja binds `item` and `index`,
/// Liquid and formulas `LOOP` (`value`, `index`).
pub fn render_each(language: Language, value: &serde_json::Value, context: String, items: &[serde_json::Value]) -> Result<Vec<serde_json::Value>, String> {
    let (value, items) = (value.to_string(), serde_json::to_string(items).map_err(|e| e.to_string())?);
    let out = with_instance(move |i, store| i.call_render_each(store, language, &value, &context, &items))?;
    match parse(&out)? {
        serde_json::Value::Array(values) => Ok(values),
        _ => Err("the template evaluator answered what is not a list".into()),
    }
}
