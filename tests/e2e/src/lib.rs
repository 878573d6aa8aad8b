//! Shared helpers for warden's end-to-end tests.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use warden::capability::http::resolve::HostResolver;
use warden::policy::Policy;
use warden::runtime::{InvocationReport, Runtime, RuntimeConfig};
use warden::InvocationInfo;

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// Path of a guest built by `scripts/build-guests.sh`.
pub fn guest(name: &str) -> PathBuf {
    let p = workspace_root().join("target/wasm32-wasip2/guest").join(format!("{}.wasm", name.replace('-', "_")));
    assert!(p.exists(), "{} is missing: run scripts/build-guests.sh (scripts/test.sh does)", p.display());
    p
}

/// A runtime with a compile cache under target/, and an optional resolver.
pub fn runtime(resolver: Option<Arc<dyn HostResolver>>) -> Runtime {
    let mut cfg = RuntimeConfig { cache_dir: Some(workspace_root().join("target/warden-test-cache")), max_instances: 64, ..Default::default() };
    if let Some(r) = resolver {
        cfg.resolver = r;
    }
    Runtime::new(cfg).expect("runtime")
}

/// Parses a policy written inline; `{probe}` and friends become guest paths.
pub fn policy(text: &str) -> Policy {
    let mut text = text.to_string();
    for name in [
        "probe",
        "http-fetch",
        "sentinelone-hunt",
        "sentinelone-isolate",
        "jira-ticket",
        "email",
        "slack-notify",
        "virustotal-lookup",
        "servicenow-incident",
        "crowdstrike-contain",
        "js-fetch",
        "py-fetch",
    ] {
        let key = format!("{{{name}}}");
        if text.contains(&key) {
            text = text.replace(&key, &guest(name).display().to_string());
        }
    }
    Policy::parse(&text, "test-policy.toml", &workspace_root()).unwrap_or_else(|e| panic!("test policy: {e}"))
}

pub fn info(run_id: &str) -> InvocationInfo {
    InvocationInfo { run_id: run_id.into(), team: "test".into(), attempt: 1, ..Default::default() }
}

/// Loads `plugin` from `policy` and runs it with `input`.
pub async fn run(rt: &Runtime, policy: &Policy, plugin: &str, input: serde_json::Value) -> InvocationReport {
    let entry = policy.plugins.get(plugin).unwrap_or_else(|| panic!("no plugin {plugin} in test policy"));
    let p = rt.load_entry(entry).expect("load plugin");
    rt.invoke(&p, policy.grant_for(plugin), info("test-run"), &input.to_string(), None).await
}

/// The output JSON, or a panic that shows the error and the logs.
pub fn output(report: &InvocationReport) -> serde_json::Value {
    match &report.outcome {
        Ok(text) => serde_json::from_str(text).unwrap(),
        Err(e) => panic!("invocation failed: {e}\nlogs: {:#?}", report.logs),
    }
}

/// Everything a report could leak, as one string, for "no secret anywhere" checks.
pub fn everything(report: &InvocationReport) -> String {
    serde_json::to_string(report).unwrap()
}

/// A real SMTP server (tests/smtp_server.py, aiosmtpd) on a free port; killed on drop.
pub struct SmtpServer {
    pub port: u16,
    pub dir: PathBuf,
    child: std::process::Child,
}

impl SmtpServer {
    pub fn start() -> SmtpServer {
        use std::io::BufRead;
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir = std::env::temp_dir().join(format!("warden-smtp-{}-{port}", std::process::id()));
        let mut child = std::process::Command::new("python3")
            .arg(workspace_root().join("tests/smtp_server.py"))
            .args(["--port", &port.to_string(), "--dir", dir.to_str().unwrap()])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 is needed for the SMTP tests");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert!(line.starts_with("READY"), "tests/smtp_server.py did not start (is aiosmtpd installed? `pip install aiosmtpd`; .ci/run does)");
        SmtpServer { port, dir, child }
    }

    /// Messages received so far, in order.
    pub fn messages(&self) -> Vec<serde_json::Value> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "json")).collect())
            .unwrap_or_default();
        files.sort();
        files.iter().map(|f| serde_json::from_slice(&std::fs::read(f).unwrap()).unwrap()).collect()
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A folder of story files for one test; removed on drop.
pub struct StoryDir(pub PathBuf);

impl StoryDir {
    pub fn new(files: &[(&str, &str)]) -> StoryDir {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("warden-stories-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, text) in files {
            std::fs::write(dir.join(name), text).unwrap();
        }
        StoryDir(dir)
    }
}

impl Drop for StoryDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A story engine over `dir` with an in-memory run store.
pub fn engine(policy: Policy, dir: &Path) -> warden::story::engine::StoryRunner {
    let library = warden::story::Library::load_dir(dir).unwrap_or_else(|e| panic!("{e}"));
    library.check(&policy).unwrap_or_else(|e| panic!("{e}"));
    warden::story::engine::StoryRunner::new(
        Arc::new(runtime(None)),
        Arc::new(policy),
        Arc::new(library),
        Arc::new(warden::store::SqliteStore::in_memory().unwrap()),
    )
}

/// The ports of the simulators a test started, swapped into the example files
/// for the demo's (0: leave the demo's port).
#[derive(Default, Clone, Copy)]
pub struct SimPorts {
    pub s1: u16,
    pub jira: u16,
    pub smtp: u16,
    pub slack: u16,
    pub virustotal: u16,
    pub servicenow: u16,
    pub crowdstrike: u16,
}

/// The signing secret the example policy's `[server] slack_signing_secret_env`
/// names, as the Slack simulator signs with it.
pub const SLACK_SIGNING_SECRET: &str = "slack-demo-signing-secret";

/// The example stories (and `extra` ones) in a folder of their own, and the
/// text of the example policy, with the simulators' ports swapped in (the
/// caller may add to the text before parsing it with [`parse_example_policy`]).
pub fn example_files(s1: u16, jira: u16, smtp: u16, extra: &[(&str, &str)]) -> (StoryDir, String) {
    example_files_at(SimPorts { s1, jira, smtp, ..Default::default() }, extra)
}

/// [`example_files`] for any of the simulators.
pub fn example_files_at(p: SimPorts, extra: &[(&str, &str)]) -> (StoryDir, String) {
    // SAFETY: every test sets the same value; the example policy's server reads it at start.
    unsafe { std::env::set_var("SLACK_SIGNING_SECRET", SLACK_SIGNING_SECRET) };
    let root = workspace_root();
    let swap = |mut text: String| {
        for (demo, port) in [(":8701", p.s1), (":8702", p.jira), (":8703", p.slack), (":8704", p.virustotal), (":8705", p.servicenow), (":8706", p.crowdstrike)]
        {
            if port != 0 {
                text = text.replace(demo, &format!(":{port}"));
            }
        }
        if p.smtp != 0 {
            text = text.replace("port = 8725", &format!("port = {}", p.smtp));
        }
        text
    };
    let mut files: Vec<(String, String)> = extra.iter().map(|(n, t)| (n.to_string(), t.to_string())).collect();
    let mut names: Vec<String> = std::fs::read_dir(root.join("examples/stories"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    names.sort();
    for name in names {
        if !files.iter().any(|(n, _)| *n == name) {
            let text = swap(std::fs::read_to_string(root.join("examples/stories").join(&name)).unwrap());
            files.push((name, text));
        }
    }
    let refs: Vec<(&str, &str)> = files.iter().map(|(n, t)| (n.as_str(), t.as_str())).collect();
    (StoryDir::new(&refs), swap(std::fs::read_to_string(root.join("examples/warden.toml")).unwrap()))
}

/// Policy text read as `examples/warden.toml` (its paths relative to `examples/`).
pub fn parse_example_policy(text: &str) -> Policy {
    let root = workspace_root();
    Policy::parse(text, "examples/warden.toml", &root.join("examples")).unwrap_or_else(|e| panic!("{e}"))
}

/// `warden serve`'s app in this process on a port of its own (with each
/// peer's address, as `serve` has it); its base URL and the engine.
pub async fn serve(engine: warden::story::engine::StoryRunner) -> (String, Arc<warden::story::engine::StoryRunner>) {
    serve_traced(engine, None).await
}

/// [`serve`] with traces (`[telemetry]`), as `warden serve` wires them.
pub async fn serve_traced(
    engine: warden::story::engine::StoryRunner,
    telemetry: Option<Arc<warden::telemetry::Telemetry>>,
) -> (String, Arc<warden::story::engine::StoryRunner>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let engine = Arc::new(engine.with_links_base(&addr.to_string()).with_traces(telemetry.clone().map(|t| t as _)));
    let opts = warden::server::ServeOptions { workers: 8, drain: std::time::Duration::from_secs(1), role: Default::default(), telemetry };
    let (router, _queue) = warden::server::start(engine.clone(), &opts).unwrap();
    tokio::spawn(async move { axum::serve(listener, router.into_make_service_with_connect_info::<std::net::SocketAddr>()).await.unwrap() });
    (format!("http://{addr}"), engine)
}

/// An OTLP/HTTP collector for the telemetry tests: every span of every export,
/// decoded from its protobuf, and each export's headers.
pub mod otlp {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
    use opentelemetry_proto::tonic::trace::v1::Span;
    use prost::Message;
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    pub type Spans = Arc<Mutex<Vec<Span>>>;
    pub type Headers = Arc<Mutex<Vec<HashMap<String, String>>>>;

    /// Listens on 127.0.0.1; answers `POST /v1/traces`. Returns its base URL.
    pub async fn receiver() -> (String, Spans, Headers) {
        let spans: Spans = Arc::default();
        let headers: Headers = Arc::default();
        let (kept, seen) = (spans.clone(), headers.clone());
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |h: axum::http::HeaderMap, body: axum::body::Bytes| {
                let (kept, seen) = (kept.clone(), seen.clone());
                async move {
                    assert_eq!(h["content-type"], "application/x-protobuf");
                    seen.lock().unwrap().push(h.iter().map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned())).collect());
                    let req = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf export");
                    for rs in req.resource_spans {
                        for ss in rs.scope_spans {
                            kept.lock().unwrap().extend(ss.spans);
                        }
                    }
                    axum::http::StatusCode::OK
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (base, spans, headers)
    }

    /// A span's attribute as text.
    pub fn attr(s: &Span, key: &str) -> Option<String> {
        s.attributes.iter().find(|a| a.key == key).and_then(|a| a.value.as_ref()?.value.as_ref()).map(|v| match v {
            AnyValue::StringValue(t) => t.clone(),
            AnyValue::IntValue(i) => i.to_string(),
            AnyValue::BoolValue(b) => b.to_string(),
            AnyValue::DoubleValue(d) => d.to_string(),
            other => format!("{other:?}"),
        })
    }

    /// Every attribute of every span, as `name key=value` lines (for scanning).
    pub fn all_attributes(spans: &[Span]) -> String {
        let mut out = String::new();
        for s in spans {
            for a in &s.attributes {
                out.push_str(&format!("{} {}={:?}\n", s.name, a.key, a.value));
            }
        }
        out
    }
}
