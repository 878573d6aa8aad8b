//! The runtime: two wasmtime engines (one copies a component's initial data
//! into a fresh instance, one maps it copy-on-write: see [`engine`]),
//! components compiled once for the engine their data calls for (cached on
//! disk by content hash and engine), one `InstancePre` per component, and a
//! fresh `Store` per invocation with the grant's limits.

mod cache;
mod engine;
pub mod evaluator;
mod state;
mod stdio;

use crate::audit::{now_ms, AuditRecord};
use crate::bindings;
use crate::bindings::warden::action::types;
use crate::capability::http::resolve::{HostResolver, SystemResolver};
use crate::capability::http::transport::Transport;
use crate::invocation::guest_text;
pub use crate::invocation::{InvocationInfo, InvokeError, LogLine, Manifest};
use crate::limits::Bytes;
use crate::policy::{Grant, PluginEntry};
use crate::recording::Tape;
use anyhow::{anyhow, Context as _};
use engine::{build_engine, memory_init_for, start_epoch_ticker};
pub use engine::{mapped_pool, resets_memory_in_place, MemoryInit, COPY_DATA_MAX_BYTES, EPOCH_TICK, MEMORY_KEEP_RESIDENT};
use futures::FutureExt as _;
use serde::Serialize;
use sha2::{Digest, Sha256};
use state::{InvocationState, Stop};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;
use wasmtime::component::Linker;
use wasmtime::{CallHook, Engine, Store, UpdateDeadline};

/// Most hosts or credentials a manifest lists, and the largest schema it may give.
const MAX_MANIFEST_ENTRIES: usize = 64;
const MAX_SCHEMA_BYTES: usize = 64 * 1024;

/// Longest error message a guest's `action-error` keeps (it lands in the
/// run store and on the operator's terminal).
const MAX_ERROR_MESSAGE_BYTES: usize = 4096;

impl From<types::ActionError> for InvokeError {
    fn from(e: types::ActionError) -> InvokeError {
        let text = |m: String| guest_text(&m, MAX_ERROR_MESSAGE_BYTES);
        match e {
            types::ActionError::InvalidInput(message) => InvokeError::InvalidInput { message: text(message) },
            types::ActionError::Denied(message) => InvokeError::Denied { message: text(message) },
            types::ActionError::Upstream(u) => InvokeError::Upstream { status: u.status, message: text(u.message), retry_after_ms: u.retry_after_ms },
            types::ActionError::Failed(message) => InvokeError::Failed { message: text(message) },
        }
    }
}

/// Everything one invocation produced.
#[derive(Debug, Clone, Serialize)]
pub struct InvocationReport {
    pub plugin: String,
    /// The component's sha256 (hex).
    pub sha256: String,
    /// The output JSON text, or why there is none.
    pub outcome: Result<String, InvokeError>,
    pub logs: Vec<LogLine>,
    pub audit: Vec<AuditRecord>,
    pub http_requests: u32,
    pub duration_ms: u64,
    pub cpu_ms: u64,
}

/// The version of the `warden:action` package this host implements.
pub const WIT_VERSION: &str = "0.1.0";

/// What `warden plugin check` reports about a component.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    pub sha256: String,
    pub imports: Vec<String>,
    pub exports: Vec<String>,
    /// Why it cannot run here; empty when it fits.
    pub problems: Vec<String>,
}

impl Inspection {
    /// Which HTTP front doors the component uses: warden's own
    /// `warden:action/http`, standard `wasi:http`, both or neither. Both go
    /// through the same policy; the answer tells an operator how the plugin
    /// names credentials.
    pub fn http_doors(&self) -> Vec<&'static str> {
        let mut doors = Vec::new();
        if self.imports.iter().any(|i| i.starts_with("warden:action/http@")) {
            doors.push("warden:action/http");
        }
        if self.imports.iter().any(|i| i.starts_with("wasi:http/outgoing-handler@")) {
            doors.push("wasi:http");
        }
        doors
    }
}

/// A compiled component, ready to instantiate.
pub struct Plugin {
    pub name: String,
    pub sha256: String,
    /// Which engine it was compiled for.
    pub memory_init: MemoryInit,
    pre: bindings::ActionPre<InvocationState>,
}

/// Engine-wide settings.
#[derive(Clone)]
pub struct RuntimeConfig {
    /// Where compiled components are cached; `None` disables the disk cache.
    pub cache_dir: Option<PathBuf>,
    /// Resolves host names for egress (injectable for tests).
    pub resolver: Arc<dyn HostResolver>,
    /// How many invocations of small components may be instantiated at once
    /// (pooling allocator slots); large ones get [`mapped_pool`] of it.
    pub max_instances: u32,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig { cache_dir: default_cache_dir(), resolver: Arc::new(SystemResolver), max_instances: 1000 }
    }
}

/// `$WARDEN_CACHE_DIR`, else `$XDG_CACHE_HOME/warden`, else `~/.cache/warden`.
pub fn default_cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("WARDEN_CACHE_DIR") {
        return Some(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(d).join("warden"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/warden"))
}

/// One engine and the host's imports linked for it.
struct Lane {
    engine: Engine,
    linker: Linker<InvocationState>,
}

impl Lane {
    fn new(max_instances: u32, init: MemoryInit) -> anyhow::Result<Lane> {
        let engine = build_engine(max_instances, init)?;
        let mut linker = Linker::<InvocationState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(anyhow::Error::from)?;
        // Standard wasi:http, answered by the same egress layers as warden:action/http.
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(anyhow::Error::from)?;
        crate::capability::add_to_linker(&mut linker, |s: &mut InvocationState| &mut s.caps)?;
        Ok(Lane { engine, linker })
    }
}

pub struct Runtime {
    copied: Lane,
    mapped: Lane,
    /// The wire and the OAuth tokens, shared by every invocation.
    egress: Arc<crate::capability::http::Egress>,
    cache_dir: Option<PathBuf>,
    loaded: Mutex<std::collections::HashMap<String, Arc<Plugin>>>,
    /// Invocations alive right now, and the pool's capacity (for metrics).
    live: Arc<std::sync::atomic::AtomicUsize>,
    capacity: u32,
}

/// What the instance pools hold now (for metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolGauges {
    /// Invocations alive.
    pub in_use: usize,
    /// Invocations the pools can hold at once.
    pub capacity: u32,
    /// What finished instances' slots keep resident for the next ones,
    /// wiped (zeroed, or restored from the module image): linear memory and
    /// tables, in bytes (fiber stacks are reused as they are, see `engine.rs`).
    pub idle_resident: IdleResident,
}

/// Bytes idle pool slots keep resident, by what they hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IdleResident {
    pub memory: usize,
    pub tables: usize,
}

/// Counts an invocation as live until dropped.
struct Live(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Runtime {
    pub fn new(config: RuntimeConfig) -> anyhow::Result<Runtime> {
        let copied = Lane::new(config.max_instances, MemoryInit::Copy)?;
        let mapped = Lane::new(mapped_pool(config.max_instances), MemoryInit::CopyOnWrite)?;
        start_epoch_ticker(&[&copied.engine, &mapped.engine]);
        Ok(Runtime {
            copied,
            mapped,
            egress: Arc::new(crate::capability::http::Egress::new(Transport::new(config.resolver)?)),
            cache_dir: config.cache_dir,
            loaded: Mutex::default(),
            live: Arc::default(),
            capacity: config.max_instances.saturating_add(mapped_pool(config.max_instances)),
        })
    }

    fn lane(&self, init: MemoryInit) -> &Lane {
        match init {
            MemoryInit::Copy => &self.copied,
            MemoryInit::CopyOnWrite => &self.mapped,
        }
    }

    /// Invocations running now, how many the pools hold, and what their
    /// idle slots keep resident.
    pub fn instances(&self) -> PoolGauges {
        let mut idle_resident = IdleResident::default();
        for m in [&self.copied, &self.mapped].iter().filter_map(|lane| lane.engine.pooling_allocator_metrics()) {
            idle_resident.memory += m.unused_memory_bytes_resident();
            idle_resident.tables += m.unused_table_bytes_resident();
        }
        PoolGauges { in_use: self.live.load(std::sync::atomic::Ordering::Relaxed), capacity: self.capacity, idle_resident }
    }

    /// Loads the plugin a policy entry names, checking its sha256 pin.
    pub fn load_entry(&self, entry: &PluginEntry) -> anyhow::Result<Arc<Plugin>> {
        let bytes = std::fs::read(&entry.path).with_context(|| {
            format!(
                "plugin {}: cannot read {} (build the plugins with scripts/build-guests.sh, or fix plugins.{}.path)",
                entry.name,
                entry.path.display(),
                entry.name
            )
        })?;
        let digest = sha256_hex(&bytes);
        if let Some(pin) = &entry.sha256 {
            if *pin != digest {
                anyhow::bail!(
                    "plugin {}: {} has sha256 {digest} but the policy pins {pin}; refusing to load it (if you rebuilt it on purpose, update plugins.{}.sha256)",
                    entry.name,
                    entry.path.display(),
                    entry.name
                );
            }
        }
        self.load_bytes(&entry.name, &bytes)
    }

    /// Loads a component from a file, named after its file stem.
    pub fn load_file(&self, path: &Path) -> anyhow::Result<Arc<Plugin>> {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read plugin {}", path.display()))?;
        let name = path.file_stem().map(|s| s.to_string_lossy().replace('_', "-")).unwrap_or_default();
        self.load_bytes(&name, &bytes)
    }

    /// Compiles (or fetches from the caches) and pre-links a component.
    pub fn load_bytes(&self, name: &str, bytes: &[u8]) -> anyhow::Result<Arc<Plugin>> {
        let digest = sha256_hex(bytes);
        let key = format!("{name}@{digest}");
        if let Some(p) = self.loaded.lock().unwrap().get(&key) {
            return Ok(p.clone());
        }
        let memory_init = memory_init_for(bytes);
        let lane = self.lane(memory_init);
        let component = cache::compile(&lane.engine, self.cache_dir.as_deref(), &digest, bytes)
            .with_context(|| format!("plugin {name}: not a valid WebAssembly component"))?;
        let pre = lane.linker.instantiate_pre(&component).map_err(|e| {
            anyhow!("plugin {name} does not fit the warden:action world: {e}; build it against wit/ with wit-bindgen (see README, Writing a plugin)")
        })?;
        let pre = bindings::ActionPre::new(pre).map_err(|e| anyhow!("plugin {name} does not export the warden:action world (describe, run): {e}"))?;
        let plugin = Arc::new(Plugin { name: name.to_string(), sha256: digest, memory_init, pre });
        self.loaded.lock().unwrap().insert(key, plugin.clone());
        Ok(plugin)
    }

    /// What a component imports and exports, and whether it fits the
    /// `warden:action` world this host provides — with a reason when not.
    pub fn inspect(&self, bytes: &[u8]) -> anyhow::Result<Inspection> {
        let digest = sha256_hex(bytes);
        let engine = &self.lane(memory_init_for(bytes)).engine;
        let component = cache::compile(engine, self.cache_dir.as_deref(), &digest, bytes)
            .map_err(|e| anyhow!("not a WebAssembly component ({e}); build it for wasm32-wasip2 (a cdylib for that target is a component)"))?;
        let ty = component.component_type();
        let imports: Vec<String> = ty.imports(engine).map(|(n, _)| n.to_string()).collect();
        let exports: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_string()).collect();
        let mut problems = Vec::new();
        for want in ["describe", "run"] {
            if !exports.iter().any(|e| e == want) {
                problems.push(format!(
                    "it does not export `{want}`: it targets another world (exports: {}); a warden plugin implements warden:action/action",
                    if exports.is_empty() { "nothing".into() } else { exports.join(", ") }
                ));
            }
        }
        for i in &imports {
            if let Some(rest) = i.strip_prefix("warden:action/") {
                let version = rest.split('@').nth(1).unwrap_or("");
                if !version.starts_with("0.1.") {
                    problems.push(format!("it imports {i}, but this host provides warden:action@{WIT_VERSION}; rebuild it against this host's wit/"));
                }
            } else if let Some(version) = i.strip_prefix("wasi:").and_then(|rest| rest.split('@').nth(1)) {
                if !version.starts_with("0.2.") {
                    problems.push(format!("it imports {i}; warden provides WASI 0.2 (wasip2) only; build it for wasm32-wasip2"));
                }
            } else {
                problems.push(format!("it imports {i}, which warden does not provide"));
            }
        }
        Ok(Inspection { sha256: digest, imports, exports, problems })
    }

    /// Calls `describe` in a fresh, deny-all store.
    pub async fn describe(&self, plugin: &Plugin) -> anyhow::Result<Manifest> {
        let grant = Arc::new(Grant::deny_all(&plugin.name));
        let mut store = self.store(plugin, grant, InvocationInfo::default(), None, Tape::Live);
        let wall = Duration::from_millis(store.data().limits().wall_ms);
        let call = async {
            let action = plugin.pre.instantiate_async(&mut store).await?;
            action.call_describe(&mut store).await
        };
        let m = tokio::time::timeout(wall, call)
            .await
            .map_err(|_| anyhow!("plugin {}: describe() did not return in time", plugin.name))?
            .map_err(|e| anyhow!("plugin {}: describe() trapped: {e}", plugin.name))?;
        let schema = |text: &str, what: &str| {
            if text.len() > MAX_SCHEMA_BYTES {
                anyhow::bail!("plugin {}: {what} is {} bytes; a schema may have at most {MAX_SCHEMA_BYTES}", plugin.name, text.len());
            }
            serde_json::from_str(text).with_context(|| format!("plugin {}: {what} is not JSON", plugin.name))
        };
        // A manifest is guest text shown to operators: capped and escaped.
        let list = |v: Vec<String>| v.iter().take(MAX_MANIFEST_ENTRIES).map(|s| guest_text(s, 256)).collect();
        Ok(Manifest {
            input_schema: schema(&m.input_schema, "input-schema")?,
            output_schema: schema(&m.output_schema, "output-schema")?,
            name: guest_text(&m.name, 128),
            version: guest_text(&m.version, 64),
            description: guest_text(&m.description, 1024),
            hosts: list(m.hosts),
            credentials: list(m.credentials),
        })
    }

    /// Runs the action once under `grant`. Never panics on guest behaviour:
    /// whatever the guest does ends up in the report.
    pub async fn invoke(
        &self,
        plugin: &Plugin,
        grant: Arc<Grant>,
        info: InvocationInfo,
        input: &str,
        log_tap: Option<UnboundedSender<LogLine>>,
    ) -> InvocationReport {
        self.invoke_taped(plugin, grant, info, input, log_tap, Tape::Live).await
    }

    /// [`Runtime::invoke`] with its capability calls and WASI reads recorded
    /// on, or answered from, `tape` (see [`crate::recording`]).
    pub async fn invoke_taped(
        &self,
        plugin: &Plugin,
        grant: Arc<Grant>,
        info: InvocationInfo,
        input: &str,
        log_tap: Option<UnboundedSender<LogLine>>,
        tape: Tape,
    ) -> InvocationReport {
        let started = Instant::now();
        self.live.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let _live = Live(self.live.clone());
        let limits = grant.limits.clone();
        let mut store = self.store(plugin, grant, info.clone(), log_tap, tape);
        let wit_info = types::Invocation { run_id: info.run_id, story: info.story, step: info.step, team: info.team, attempt: info.attempt };
        let call = async {
            let action = plugin.pre.instantiate_async(&mut store).await.map_err(Failure::Instantiate)?;
            action.call_run(&mut store, &wit_info, input).await.map_err(Failure::Trap)
        };
        // A panic in warden's own code while serving this guest ends this
        // invocation only, never the process or the runs beside it.
        let call = async { std::panic::AssertUnwindSafe(call).catch_unwind().await.unwrap_or_else(|panic| Err(Failure::HostPanic(panic_text(&panic)))) };
        let raw = tokio::time::timeout(Duration::from_millis(limits.wall_ms), call).await;
        let state = store.data_mut();
        let outcome = match raw {
            Err(_elapsed) => Err(InvokeError::Limit {
                limit: "wall",
                message: format!("wall-clock limit of {} ms reached (limits.wall_ms; sleeps and HTTP count)", limits.wall_ms),
            }),
            Ok(Err(Failure::Instantiate(e))) => Err(instantiate_error(state, e)),
            Ok(Err(Failure::Trap(e))) => Err(trap_error(state, &limits, e)),
            Ok(Err(Failure::HostPanic(why))) => {
                tracing::error!(plugin = %plugin.name, "warden panicked while serving a plugin: {why}");
                Err(InvokeError::Trap {
                    message: "warden failed while serving this plugin (a host bug, logged for the operator); the invocation was stopped".into(),
                })
            }
            Ok(Ok(Err(action_error))) => Err(InvokeError::from(action_error)),
            Ok(Ok(Ok(output))) => check_output(output, limits.output_bytes),
        };
        collect_stdio(state);
        if let Err(e @ (InvokeError::Limit { .. } | InvokeError::Trap { .. })) = &outcome {
            // The sandbox stopping a guest is a security event too.
            let rule = match e {
                InvokeError::Limit { limit: "output", .. } => "limits.output_bytes".to_string(),
                InvokeError::Limit { limit: "memory", .. } => "limits.memory".to_string(),
                InvokeError::Limit { limit: limit @ ("cpu" | "wall"), .. } => format!("limits.{limit}_ms"),
                InvokeError::Limit { limit, .. } => format!("limits.{limit}"),
                _ => "trap".to_string(),
            };
            let mut record = state.caps.call.record("sandbox", "STOP".into(), String::new());
            record.rule = rule;
            record.reason = Some(e.to_string());
            state.caps.call.keep(record, started);
        }
        let logs = &state.caps.logs;
        if logs.dropped_bytes > 0 || logs.dropped_lines > 0 {
            let message = format!("{} of log output ({} lines) dropped past limits.log_bytes", Bytes(logs.dropped_bytes), logs.dropped_lines);
            // Pushed past the budget on purpose: the operator must see what was lost.
            state.caps.logs.lines.push(LogLine { at_ms: now_ms(), level: "warn", source: "host", message });
        }
        let audit = state.caps.call.take_audit();
        InvocationReport {
            plugin: plugin.name.clone(),
            sha256: plugin.sha256.clone(),
            outcome: name_the_refusal(outcome, &audit),
            logs: std::mem::take(&mut state.caps.logs.lines),
            audit,
            http_requests: state.caps.http.sent,
            duration_ms: started.elapsed().as_millis() as u64,
            cpu_ms: state.caps.call.meter.guest_cpu().as_millis() as u64,
        }
    }

    fn store(&self, plugin: &Plugin, grant: Arc<Grant>, info: InvocationInfo, tap: Option<UnboundedSender<LogLine>>, tape: Tape) -> Store<InvocationState> {
        let cpu_limit = Duration::from_millis(grant.limits.cpu_ms);
        let state = InvocationState::new(&plugin.name, grant, info, self.egress.clone(), tap, tape);
        let meter = state.caps.call.meter.clone();
        let mut store = Store::new(&self.lane(plugin.memory_init).engine, state);
        store.limiter(|s| s);
        // Every host call is off the guest's CPU: warden's imports and WASI's
        // alike, such as `poll` waiting on a wasi:http response.
        // And a capability that stopped the invocation at a limit (a refusal
        // past limits.denials, possibly of a wasi:http request answered late)
        // stops the guest as the host call returns.
        store.call_hook(move |mut ctx, hook| {
            match hook {
                CallHook::CallingHost => meter.pause(),
                CallHook::ReturningFromHost => {
                    meter.resume();
                    ctx.data_mut().caps.check_stopped()?;
                }
                CallHook::CallingWasm | CallHook::ReturningFromWasm => {}
            }
            Ok(())
        });
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |mut ctx| {
            let state = ctx.data_mut();
            state.caps.check_stopped()?;
            if state.caps.call.meter.guest_cpu() > cpu_limit {
                state.stop = Some(Stop::Cpu);
                return Err(wasmtime::format_err!("cpu limit"));
            }
            // Yield so one busy guest cannot starve the others on this thread;
            // the time spent parked is not the guest's CPU time.
            let off = state.caps.call.meter.off_cpu();
            Ok(UpdateDeadline::YieldCustom(
                1,
                Box::pin(async move {
                    tokio::task::yield_now().await;
                    drop(off);
                }),
            ))
        });
        store
    }
}

enum Failure {
    Instantiate(wasmtime::Error),
    Trap(wasmtime::Error),
    HostPanic(String),
}

/// The message of a caught panic.
pub fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// A guest that lost warden's reason for a refused request — a JavaScript
/// `fetch()` rejects with a bare "NetworkError" — still fails with the reason
/// named: a failing step's error gets the last refusal of the invocation,
/// unless it already says it.
fn name_the_refusal(outcome: Result<String, InvokeError>, audit: &[AuditRecord]) -> Result<String, InvokeError> {
    let Err(mut error) = outcome else { return outcome };
    // (A missing credential value is explained in the operator's audit record
    // only: where it should have come from stays out of step errors.)
    let refusal = audit.iter().rev().find(|r| r.capability == "http" && r.decision == crate::audit::Verdict::Denied && r.rule != "credential-value");
    let (Some(record), Some(message)) = (
        refusal,
        match &mut error {
            InvokeError::Denied { message } | InvokeError::Failed { message } | InvokeError::Trap { message } | InvokeError::Upstream { message, .. } => {
                Some(message)
            }
            _ => None,
        },
    ) else {
        return Err(error);
    };
    if let Some(reason) = record.reason.as_deref().filter(|r| !message.contains(*r)) {
        message.push_str(&format!("; warden refused {} {} (rule `{}`): {reason}", record.method, record.url, record.rule));
    }
    Err(error)
}

fn check_output(output: String, cap: u64) -> Result<String, InvokeError> {
    if output.len() as u64 > cap {
        return Err(InvokeError::Limit {
            limit: "output",
            message: format!("output is {}; the grant allows {} (limits.output_bytes)", Bytes(output.len() as u64), Bytes(cap)),
        });
    }
    if serde_json::from_str::<serde::de::IgnoredAny>(&output).is_err() {
        return Err(InvokeError::Failed { message: "the action returned output that is not JSON".into() });
    }
    Ok(output)
}

fn instantiate_error(state: &mut InvocationState, e: wasmtime::Error) -> InvokeError {
    if let Some(desired) = state.memory.refused {
        state.stop = Some(Stop::Memory { desired });
        return InvokeError::Limit { limit: "memory", message: state.memory.message() };
    }
    InvokeError::Instantiate { message: root_message(&e) }
}

fn trap_error(state: &mut InvocationState, limits: &crate::limits::Limits, e: wasmtime::Error) -> InvokeError {
    if let Some((limit, message)) = state.caps.call.stopped.clone() {
        return InvokeError::Limit { limit, message };
    }
    if state.stop == Some(Stop::Cpu) {
        return InvokeError::Limit { limit: "cpu", message: format!("CPU limit of {} ms reached (limits.cpu_ms)", limits.cpu_ms) };
    }
    if state.memory.refused.is_some() {
        return InvokeError::Limit { limit: "memory", message: state.memory.message() };
    }
    if e.chain().any(|c| matches!(c.downcast_ref::<wasmtime::component::ResourceTableError>(), Some(wasmtime::component::ResourceTableError::Full))) {
        let held = state.resource_capacity();
        return InvokeError::Limit {
            limit: "memory",
            message: format!(
                "memory limit exceeded: the plugin holds {held} host resources (header sections, streams, bodies), each charged {} of its grant's {} (limits.memory)",
                Bytes(state::HOST_RESOURCE_BYTES),
                Bytes(state.memory.limit())
            ),
        };
    }
    // A Rust panic prints its message to stderr before it traps: use it.
    let (stderr, _) = state.stderr.take();
    let panic = panic_message(&stderr);
    let mut message = match e.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::StackOverflow) => "stack overflow (the guest recursed too deeply)".to_string(),
        Some(wasmtime::Trap::MemoryOutOfBounds) => "out of bounds memory access (in Rust and C guests, usually their own stack overflowing)".to_string(),
        Some(t) => t.to_string(),
        None => root_message(&e),
    };
    // A language runtime written in Rust (componentize-py's) panics after the
    // traceback it printed: the traceback says more.
    let traceback = stderr.contains("Traceback (most recent call last)");
    if let Some(p) = panic.filter(|_| !traceback) {
        message = format!("the plugin panicked: {} ({message})", guest_text(&p, MAX_ERROR_MESSAGE_BYTES));
    } else if let Some(words) = last_words(&stderr) {
        // A JavaScript exception or a Python traceback, printed before the trap.
        message = format!("the plugin failed: {} ({message})", guest_text(&words, MAX_ERROR_MESSAGE_BYTES));
    }
    // Keep the rest of stderr in the log.
    if !stderr.is_empty() {
        state.caps.logs.push(LogLine { at_ms: now_ms(), level: "warn", source: "stderr", message: stderr });
    }
    InvokeError::Trap { message }
}

/// `thread '..' panicked at src/lib.rs:1:2:\nmessage` → `message (at src/lib.rs:1:2)`.
fn panic_message(stderr: &str) -> Option<String> {
    let lines: Vec<&str> = stderr.lines().collect();
    let at = lines.iter().rposition(|l| l.contains("panicked at"))?;
    let location = lines[at].split("panicked at").nth(1).unwrap_or("").trim().trim_end_matches(':');
    let text = lines.get(at + 1).map_or("", |l| l.trim());
    Some(format!("{text} (at {location})"))
}

/// What a guest runtime printed last before it trapped, in one line: the
/// exception of a Python traceback with the frame it was raised in, or the
/// last lines a JavaScript engine wrote (the error and where).
fn last_words(stderr: &str) -> Option<String> {
    let lines: Vec<&str> = stderr.lines().map(str::trim_end).filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return None;
    }
    if let Some(tb) = lines.iter().rposition(|l| l.starts_with("Traceback (most recent call last)")) {
        // Frames are indented; the first line that is not is the exception.
        let frames = &lines[tb + 1..];
        let end = frames.iter().position(|l| !l.starts_with(' ') && !l.starts_with('\t')).unwrap_or(frames.len());
        let exception = frames.get(end);
        let frame = frames[..end].iter().rev().find(|l| l.trim_start().starts_with("File \""));
        return match (exception, frame) {
            (Some(e), Some(f)) => Some(format!("{} (at {})", e.trim(), f.trim().trim_start_matches("File ").replace('"', ""))),
            (Some(e), None) => Some(e.trim().to_string()),
            _ => None,
        };
    }
    // Lines an engine prints on its way down, which say nothing of why.
    let lines: Vec<&str> = lines.into_iter().filter(|l| !l.starts_with("Redirecting call to abort()")).collect();
    // A JavaScript engine's report: the error line, then its stack (`fn@file:line:col`).
    if let Some(at) = lines.iter().rposition(|l| !l.starts_with([' ', '\t']) && l.contains("Error")) {
        let frame = lines[at + 1..].iter().map(|l| l.trim()).find(|l| l.contains('@'));
        return Some(match frame {
            Some(f) => format!("{} (at {f})", lines[at].trim()),
            None => lines[at].trim().to_string(),
        });
    }
    let tail = &lines[lines.len().saturating_sub(3)..];
    (!tail.is_empty()).then(|| tail.iter().map(|l| l.trim()).collect::<Vec<_>>().join(" | "))
}

/// What went wrong, in one line: the innermost cause (a host call's own
/// error, e.g. a WASI limit), not wasmtime's "error while executing" wrapper.
fn root_message(e: &wasmtime::Error) -> String {
    let root = e.root_cause().to_string();
    let text = if root.trim().is_empty() { e.to_string() } else { root };
    guest_text(text.lines().next().unwrap_or(""), MAX_ERROR_MESSAGE_BYTES)
}

fn collect_stdio(state: &mut InvocationState) {
    for (pipe, source, level) in [(state.stdout.clone(), "stdout", "info"), (state.stderr.clone(), "stderr", "warn")] {
        let (text, dropped) = pipe.take();
        if !text.is_empty() {
            state.caps.logs.push(LogLine { at_ms: now_ms(), level, source, message: text });
        }
        if dropped > 0 {
            state.caps.logs.push(LogLine {
                at_ms: now_ms(),
                level: "warn",
                source: "host",
                message: format!("{} of {source} dropped past limits.log_bytes", Bytes(dropped)),
            });
        }
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::last_words;

    #[test]
    fn a_python_traceback_is_told_by_its_exception_and_frame() {
        let tb = "Traceback (most recent call last):\n  File \"app.py\", line 40, in run\n    raise ValueError(\"no ticket key\")\nValueError: no ticket key\n\nthread '<unnamed>' panicked at runtime/src/lib.rs:1:2:\nPython function threw an unexpected exception\nnote: run with `RUST_BACKTRACE=1`\n";
        assert_eq!(last_words(tb).unwrap(), "ValueError: no ticket key (at app.py, line 40, in run)");
    }

    #[test]
    fn a_javascript_error_is_told_by_the_last_lines_it_printed() {
        let js = "Error while running run: Error: ticket key missing\nStack:\n  run@app.js:12:11\nRedirecting call to abort() to mozalloc_abort\n";
        assert_eq!(last_words(js).unwrap(), "Error while running run: Error: ticket key missing (at run@app.js:12:11)");
        assert_eq!(last_words("something odd\n").unwrap(), "something odd");
        assert_eq!(last_words("\n  \n"), None);
    }
}
