//! Invocation cost: warden vs bare wasmtime vs native, and the HTTP
//! capability's round trip vs native reqwest. See BENCHMARKS.md.
//!
//!     cargo bench -p warden --bench invoke
//!
//! For instruction counts (repeatable whatever else the machine does), the
//! binary also runs exactly `WARDEN_BENCH_COUNT` trivial invocations and
//! exits, recording them when `WARDEN_BENCH_RECORDING=1`; under
//! `valgrind --tool=callgrind`, two counts give the cost of one invocation
//! (see BENCHMARKS.md).
//!
//! Needs the guests built (scripts/build-guests.sh).

use ::http as http_types;
use criterion::{criterion_group, Criterion};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use warden::runtime::{Runtime, RuntimeConfig};
use warden::{InvocationInfo, Policy};

mod bare {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "action",
        imports: { default: async | trappable },
        exports: { default: async },
    });
}

use bare::warden::action::{clock, http, log, smtp, types};
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// The least a plain wasmtime embedding needs to run the same component
/// (which imports wasi:http too, for the hostile suite's second front door).
struct BareState {
    wasi: WasiCtx,
    table: ResourceTable,
    http: wasmtime_wasi_http::WasiHttpCtx,
    hooks: NoHttp,
}

impl BareState {
    fn new() -> BareState {
        BareState { wasi: WasiCtx::builder().build(), table: ResourceTable::new(), http: Default::default(), hooks: NoHttp }
    }
}

impl WasiView for BareState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// wasi:http that sends nothing: the trivial invocation makes no request.
struct NoHttp;

impl wasmtime_wasi_http::WasiHttpHooks for NoHttp {
    fn send_request(
        &mut self,
        _: http_types::Request<wasmtime_wasi_http::WasiBody>,
        _: Option<wasmtime_wasi_http::RequestOptions>,
        _: Box<dyn std::future::Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<
        dyn std::future::Future<
                Output = Result<
                    (http_types::Response<wasmtime_wasi_http::WasiBody>, Box<dyn std::future::Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>),
                    wasmtime_wasi_http::Error,
                >,
            > + Send,
    > {
        Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) })
    }
}

impl wasmtime_wasi_http::WasiHttpView for BareState {
    fn http(&mut self) -> wasmtime_wasi_http::WasiHttpCtxView<'_> {
        wasmtime_wasi_http::WasiHttpCtxView { hooks: &mut self.hooks, table: &mut self.table, ctx: &mut self.http }
    }
}

impl types::Host for BareState {}
impl http::Host for BareState {
    async fn send(&mut self, _: http::Request) -> wasmtime::Result<Result<http::Response, http::HttpError>> {
        Ok(Err(http::HttpError::Denied("bare".into())))
    }
}
impl log::Host for BareState {
    async fn log(&mut self, _: log::Level, _: String) -> wasmtime::Result<()> {
        Ok(())
    }
}
impl clock::Host for BareState {
    async fn sleep(&mut self, ms: u64) -> wasmtime::Result<()> {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(())
    }
    async fn now(&mut self) -> wasmtime::Result<u64> {
        Ok(0)
    }
}
impl smtp::Host for BareState {
    async fn send(&mut self, _: smtp::Message) -> wasmtime::Result<Result<smtp::Receipt, smtp::SmtpError>> {
        Ok(Err(smtp::SmtpError::Denied("bare".into())))
    }
}

fn guest(file: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/wasm32-wasip2/guest").join(file);
    assert!(p.exists(), "build the guests first: scripts/build-guests.sh");
    p
}

fn probe() -> PathBuf {
    guest("probe.wasm")
}

/// The same echo written with warden's SDK: an SDK plugin's imports (14
/// interfaces) instead of the probe's (33: every WASI interface).
fn sdk_echo() -> PathBuf {
    guest("sdk_echo.wasm")
}

/// What the probe's `echo` op does, natively.
fn native_echo(input: &str) -> String {
    let v: Value = serde_json::from_str(input).unwrap();
    json!({"input": v, "run_id": "bench", "attempt": 1}).to_string()
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let input = r#"{"op":"echo"}"#;

    // warden: fresh isolated instance, policy, limits and audit on.
    let warden_rt = Runtime::new(RuntimeConfig { cache_dir: None, max_instances: 64, ..Default::default() }).unwrap();
    let (srv, _rec) = rt.block_on(warden_sim::origin::spawn()).unwrap();
    let policy = Policy::parse(
        &format!(
            "[plugins.probe]\npath = \"{}\"\n[grants.probe]\nallow = [\"GET http://127.0.0.1:{}/*\"]\nlimits = {{ http_requests = 1000 }}\n[plugins.sdk-echo]\npath = \"{}\"\n[grants.sdk-echo]\n",
            probe().display(),
            srv.port(),
            sdk_echo().display()
        ),
        "bench.toml",
        std::path::Path::new("."),
    )
    .unwrap();
    let plugin = warden_rt.load_entry(&policy.plugins["probe"]).unwrap();
    let grant = policy.grant_for("probe");
    let info = InvocationInfo { run_id: "bench".into(), team: "bench".into(), attempt: 1, ..Default::default() };

    let mut g = c.benchmark_group("trivial_invocation");
    g.bench_function("warden", |b| {
        b.to_async(&rt).iter(|| async {
            let r = warden_rt.invoke(&plugin, grant.clone(), info.clone(), input, None).await;
            assert!(r.outcome.is_ok());
        })
    });
    // The same work in a plugin built from the SDK (fewer imports to bind).
    let sdk_plugin = warden_rt.load_entry(&policy.plugins["sdk-echo"]).unwrap();
    let sdk_grant = policy.grant_for("sdk-echo");
    g.bench_function("warden_sdk_plugin", |b| {
        b.to_async(&rt).iter(|| async {
            let r = warden_rt.invoke(&sdk_plugin, sdk_grant.clone(), info.clone(), input, None).await;
            assert!(r.outcome.is_ok(), "{:?}", r.outcome);
        })
    });
    // The same with every capability call and WASI read recorded (--record).
    g.bench_function("warden_recording", |b| {
        b.to_async(&rt).iter(|| async {
            let tape = warden::recording::Tape::record(grant.limits.recording_bytes);
            let r = warden_rt.invoke_taped(&plugin, grant.clone(), info.clone(), input, None, tape.clone()).await;
            assert!(r.outcome.is_ok());
            // Made into the JSON the run store keeps, as a story step does.
            std::hint::black_box(tape.finish_stored(&plugin.name, &plugin.sha256, &info, input, &r.outcome));
        })
    });

    // bare wasmtime: same component, same bindings, a fresh store per call.
    let engine = wasmtime::Engine::new(wasmtime::Config::new().wasm_component_model(true)).unwrap();
    let component = wasmtime::component::Component::from_file(&engine, probe()).unwrap();
    let mut linker = Linker::<BareState>::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap();
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).unwrap();
    bare::Action::add_to_linker::<BareState, HasSelf<BareState>>(&mut linker, |s| s).unwrap();
    let pre = bare::ActionPre::new(linker.instantiate_pre(&component).unwrap()).unwrap();
    let wit_info = types::Invocation { run_id: "bench".into(), story: String::new(), step: String::new(), team: "bench".into(), attempt: 1 };
    g.bench_function("bare_wasmtime", |b| {
        b.to_async(&rt).iter(|| async {
            let mut store = wasmtime::Store::new(&engine, BareState::new());
            let action = pre.instantiate_async(&mut store).await.unwrap();
            let out = action.call_run(&mut store, &wit_info, input).await.unwrap();
            assert!(out.is_ok());
        })
    });
    // bare wasmtime with the pooling allocator and no epochs: the floor for this component.
    let mut cfg = wasmtime::Config::new();
    cfg.wasm_component_model(true);
    cfg.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(wasmtime::PoolingAllocationConfig::default()));
    let pooled_engine = wasmtime::Engine::new(&cfg).unwrap();
    let pooled_component = wasmtime::component::Component::from_file(&pooled_engine, probe()).unwrap();
    let mut pooled_linker = Linker::<BareState>::new(&pooled_engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut pooled_linker).unwrap();
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut pooled_linker).unwrap();
    bare::Action::add_to_linker::<BareState, HasSelf<BareState>>(&mut pooled_linker, |s| s).unwrap();
    let pooled_pre = bare::ActionPre::new(pooled_linker.instantiate_pre(&pooled_component).unwrap()).unwrap();
    let sdk_component = wasmtime::component::Component::from_file(&pooled_engine, sdk_echo()).unwrap();
    let sdk_pre = bare::ActionPre::new(pooled_linker.instantiate_pre(&sdk_component).unwrap()).unwrap();
    for (name, pre) in [("bare_wasmtime_pooling", &pooled_pre), ("bare_wasmtime_pooling_sdk_plugin", &sdk_pre)] {
        g.bench_function(name, |b| {
            b.to_async(&rt).iter(|| async {
                let mut store = wasmtime::Store::new(&pooled_engine, BareState::new());
                let action = pre.instantiate_async(&mut store).await.unwrap();
                let out = action.call_run(&mut store, &wit_info, input).await.unwrap();
                assert!(out.is_ok());
            })
        });
    }
    g.bench_function("native", |b| b.iter(|| native_echo(std::hint::black_box(input))));
    g.finish();

    // HTTP round trip: 50 requests inside one invocation, minus the invocation itself,
    // against 50 requests from the host with reqwest (connection reuse in both).
    const N: u64 = 50;
    let url = srv.url("/json");
    // The same guest and origin through each front door: warden:action/http,
    // and standard wasi:http (judged by the same layers).
    let mut g = c.benchmark_group("http_round_trip");
    for (name, door, record) in
        [("warden_per_request", "warden", false), ("warden_per_request_recording", "warden", true), ("wasi_http_per_request", "wasi-http", false)]
    {
        let many = json!({"op": "fetch_many", "count": N, "url": url, "door": door}).to_string();
        g.bench_function(name, |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let (warden_rt, plugin, grant, info, many) = (&warden_rt, &plugin, &grant, &info, &many);
                async move {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let t = Instant::now();
                        let tape = if record { warden::recording::Tape::record(grant.limits.recording_bytes) } else { warden::recording::Tape::Live };
                        let r = warden_rt.invoke_taped(plugin, grant.clone(), info.clone(), many, None, tape).await;
                        let with_calls = t.elapsed();
                        let out: serde_json::Value = serde_json::from_str(r.outcome.as_ref().expect("fetch_many")).unwrap();
                        assert_eq!(out["results"][N as usize - 1]["status"], 200, "{out}");
                        let t = Instant::now();
                        let tape = if record { warden::recording::Tape::record(grant.limits.recording_bytes) } else { warden::recording::Tape::Live };
                        let _ = warden_rt.invoke_taped(plugin, grant.clone(), info.clone(), r#"{"op":"echo"}"#, None, tape).await;
                        total += with_calls.saturating_sub(t.elapsed()) / N as u32;
                    }
                    total
                }
            })
        });
    }
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    g.bench_function("native_reqwest_per_request", |b| {
        b.to_async(&rt).iter(|| async {
            let r = client.get(&url).send().await.unwrap();
            assert_eq!(r.status(), 200);
            let _ = r.bytes().await.unwrap();
        })
    });
    g.finish();
    drop(srv);
    let _ = Arc::new(());
}

criterion_group!(invoke, benches);

fn main() {
    if let Some(n) = std::env::var("WARDEN_BENCH_COUNT").ok().and_then(|n| n.parse().ok()) {
        return count(n, std::env::var("WARDEN_BENCH_RECORDING").is_ok_and(|v| v == "1"));
    }
    invoke();
    Criterion::default().configure_from_args().final_summary();
}

/// Exactly `n` trivial invocations (or, with `WARDEN_BENCH_HTTP=N`, of N
/// requests each), as the story engine makes them (recorded and the
/// recording made into the JSON the store keeps, when `record`).
fn count(n: usize, record: bool) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    // The compiled probe comes from the disk cache (warm it outside valgrind first).
    let cache = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/warden-bench-cache");
    let warden_rt = Runtime::new(RuntimeConfig { cache_dir: Some(cache), max_instances: 4, ..Default::default() }).unwrap();
    // WARDEN_BENCH_HTTP=N: each invocation makes N requests to a local origin.
    let (srv, _seen) = rt.block_on(warden_sim::origin::spawn()).unwrap();
    let calls: u64 = std::env::var("WARDEN_BENCH_HTTP").ok().and_then(|n| n.parse().ok()).unwrap_or(0);
    let policy = Policy::parse(
        &format!(
            "[plugins.probe]\npath = \"{}\"\n[grants.probe]\nallow = [\"GET http://127.0.0.1:{}/*\"]\nlimits = {{ http_requests = 1000 }}\n",
            probe().display(),
            srv.port()
        ),
        "bench.toml",
        std::path::Path::new("."),
    )
    .unwrap();
    let plugin = warden_rt.load_entry(&policy.plugins["probe"]).unwrap();
    let grant = policy.grant_for("probe");
    let info = InvocationInfo { run_id: "bench".into(), team: "bench".into(), attempt: 1, ..Default::default() };
    let many = json!({"op": "fetch_many", "count": calls, "url": srv.url("/json"), "door": "warden", "quiet": true}).to_string();
    let input = if calls > 0 { many.as_str() } else { r#"{"op":"echo"}"# };
    rt.block_on(async {
        for _ in 0..n {
            let tape = if record { warden::recording::Tape::record(grant.limits.recording_bytes) } else { warden::recording::Tape::Live };
            let r = warden_rt.invoke_taped(&plugin, grant.clone(), info.clone(), input, None, tape.clone()).await;
            assert!(r.outcome.is_ok());
            std::hint::black_box(tape.finish_stored(&plugin.name, &plugin.sha256, &info, input, &r.outcome));
        }
    });
}
