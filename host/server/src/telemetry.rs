//! OpenTelemetry traces: one webhook → one run → its steps → each plugin
//! invocation → each capability call, exported over OTLP/HTTP (protobuf) to
//! whatever backend the operator runs.
//!
//! Off unless `[telemetry] endpoint` or `OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT`
//! is set (and `OTEL_SDK_DISABLED` is not `true`); off, nothing here exists and
//! the engine's events reach no tracer at all.
//!
//! Spans are built from the engine's [`Event`]s with explicit parents and
//! timestamps rather than from `tracing` spans: a run outlives any task (it
//! parks for an approval and resumes on another node), and a capability call's
//! span is its audit record's time. Attributes come from the audit record, so
//! its rules hold here too: never a credential, never a body, never a query
//! string (only the URL's origin and path are sent), and the deciding rule of
//! a denial. The same goes for the webhook span: story and status, no headers.

use crate::audit::{AuditRecord, Verdict};
use crate::policy::TelemetryConfig;
use crate::story::observe::{Event, Observer};
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{Span as _, SpanContext, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider, Span};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The trace export, and the spans of runs in flight.
pub struct Telemetry {
    /// Where spans go, for the operator's log.
    destination: String,
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    runs: Mutex<HashMap<String, RunSpans>>,
    /// Parents of runs not started yet (the webhook that accepted them).
    adopted: Mutex<HashMap<String, (SpanContext, &'static str)>>,
}

struct RunSpans {
    span: Span,
    steps: HashMap<(String, Option<usize>), Span>,
    /// Each step's last invocation, parent of that invocation's calls.
    invocations: HashMap<(String, Option<usize>), SpanContext>,
}

/// Most runs in flight whose spans are kept; beyond it, new runs are not traced.
const MAX_TRACED_RUNS: usize = 100_000;

impl Telemetry {
    /// The exporter `config` and the environment ask for, or `None` when tracing is off.
    pub fn start(config: &TelemetryConfig) -> anyhow::Result<Option<Telemetry>> {
        if env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) || env("OTEL_TRACES_EXPORTER").is_some_and(|v| v == "none") {
            return Ok(None);
        }
        let destination = match config.endpoint.clone().or_else(|| env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")).or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT")) {
            Some(d) => d,
            None => return Ok(None),
        };
        use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
        let mut headers = HashMap::new();
        for (name, var) in &config.headers_env {
            let value = env(var)
                .ok_or_else(|| anyhow::anyhow!("[telemetry] headers_env: {name} is read from ${var}, which is not set; set it or remove the header"))?;
            headers.insert(name.clone(), value);
        }
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_http_client(Blocking::default())
            .with_timeout(Duration::from_secs(10));
        if !headers.is_empty() {
            exporter = exporter.with_headers(headers);
        }
        // The policy's endpoint is a base URL like OTEL_EXPORTER_OTLP_ENDPOINT;
        // without one, the exporter reads the OTEL_* variables itself.
        if let Some(base) = &config.endpoint {
            exporter = exporter.with_endpoint(format!("{}/v1/traces", base.trim_end_matches('/')));
        }
        let exporter = exporter.build().map_err(|e| anyhow::anyhow!("[telemetry]: cannot build the OTLP exporter: {e}"))?;
        let service = config.service_name.clone().or_else(|| env("OTEL_SERVICE_NAME")).unwrap_or_else(|| "warden".into());
        let mut provider =
            SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(opentelemetry_sdk::Resource::builder().with_service_name(service).build());
        if let Some(ratio) = config.sample_ratio {
            provider = provider.with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio))));
        }
        let provider = provider.build();
        let tracer = provider.tracer("warden");
        Ok(Some(Telemetry { destination, provider, tracer, runs: Mutex::default(), adopted: Mutex::default() }))
    }

    /// The collector's URL, as configured.
    pub fn destination(&self) -> &str {
        &self.destination
    }

    /// Sends what is buffered and stops the exporter (at shutdown).
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!("telemetry: the last spans may be lost: {e}");
        }
    }

    /// The caller's trace, from its `traceparent` (and `tracestate`) headers.
    pub fn caller(headers: &axum::http::HeaderMap) -> Context {
        struct Headers<'a>(&'a axum::http::HeaderMap);
        impl Extractor for Headers<'_> {
            fn get(&self, key: &str) -> Option<&str> {
                self.0.get(key).and_then(|v| v.to_str().ok())
            }
            fn keys(&self) -> Vec<&str> {
                self.0.keys().map(|k| k.as_str()).collect()
            }
        }
        opentelemetry_sdk::propagation::TraceContextPropagator::new().extract(&Headers(headers))
    }

    /// A webhook's span (ended by [`Telemetry::webhook_answered`]).
    pub fn webhook(&self, story: &str, caller: &Context) -> Span {
        self.tracer
            .span_builder(format!("POST /webhooks/{story}"))
            .with_kind(SpanKind::Server)
            .with_attributes([
                KeyValue::new("warden.story", story.to_string()),
                KeyValue::new("http.request.method", "POST"),
                KeyValue::new("http.route", "/webhooks/{story}"),
            ])
            .start_with_context(&self.tracer, caller)
    }

    pub fn webhook_answered(mut span: Span, status: u16) {
        span.set_attribute(KeyValue::new("http.response.status_code", status as i64));
        if status >= 500 {
            span.set_status(Status::error(format!("answered {status}")));
        }
        span.end();
    }

    /// The run `run` (about to start) is a child of `parent`.
    pub fn adopt(&self, run: &str, parent: SpanContext, trigger: &'static str) {
        let mut adopted = self.adopted.lock().unwrap();
        if adopted.len() < MAX_TRACED_RUNS {
            adopted.insert(run.to_string(), (parent, trigger));
        }
    }

    /// The run `run` resumes: its new span continues the trace of its earlier
    /// part (`trace`, `span`: hex ids the store kept), as that span's child.
    fn adopt_earlier_trace(&self, run: &str, trace: &str, span: &str) {
        use opentelemetry::trace::{SpanId, TraceFlags, TraceId, TraceState};
        let (Ok(trace), Ok(span)) = (TraceId::from_hex(trace), SpanId::from_hex(span)) else { return };
        self.adopt(run, SpanContext::new(trace, span, TraceFlags::SAMPLED, true, TraceState::default()), "resume");
    }

    /// A run adopted by [`Telemetry::adopt`] that will not start after all.
    pub fn forget(&self, run: &str) {
        self.adopted.lock().unwrap().remove(run);
    }

    /// The trace a run is in, while its span is open.
    fn trace_of_run(&self, run: &str) -> Option<(String, String)> {
        let runs = self.runs.lock().unwrap();
        runs.get(run).map(|r| (r.span.span_context().trace_id().to_string(), r.span.span_context().span_id().to_string()))
    }

    /// W3C `traceparent` naming the span of `run`'s step (its invocation's
    /// span is made when the invocation ends), for egress.
    fn step_traceparent(&self, run: &str, step: &str, item: Option<usize>) -> Option<String> {
        let runs = self.runs.lock().unwrap();
        let sc = runs.get(run)?.steps.get(&(step.to_string(), item))?.span_context().clone();
        Some(format!("00-{}-{}-{:02x}", sc.trace_id(), sc.span_id(), sc.trace_flags().to_u8()))
    }
}

fn at(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// The origin and path of a URL as the audit record wrote it: never its query.
fn origin_and_path(url: &str) -> (String, String) {
    match url::Url::parse(url) {
        Ok(u) => (u.origin().ascii_serialization(), u.path().to_string()),
        Err(_) => (String::new(), String::new()),
    }
}

/// A capability call's attributes, from its audit record.
pub fn call_attributes(r: &AuditRecord) -> Vec<KeyValue> {
    let mut a = vec![
        KeyValue::new("warden.capability", r.capability),
        KeyValue::new("warden.plugin", r.plugin.clone()),
        KeyValue::new(
            "warden.decision",
            match r.decision {
                Verdict::Allowed => "allowed",
                Verdict::Denied => "denied",
            },
        ),
        KeyValue::new("warden.rule", r.rule.clone()),
    ];
    if !r.method.is_empty() {
        a.push(KeyValue::new("http.request.method", r.method.clone()));
    }
    if r.capability == "http" {
        let (origin, path) = origin_and_path(&r.url);
        a.push(KeyValue::new("warden.origin", origin));
        a.push(KeyValue::new("url.path", path));
    }
    if let Some(s) = r.status {
        a.push(KeyValue::new("http.response.status_code", s as i64));
    }
    if let Some(c) = &r.credential {
        a.push(KeyValue::new("warden.credential", c.clone()));
    }
    a.push(KeyValue::new("http.request.body.size", r.request_bytes as i64));
    a.push(KeyValue::new("http.response.body.size", r.response_bytes as i64));
    a
}

impl Observer for Telemetry {
    fn event(&self, e: &Event) {
        match e {
            Event::RunStarted { run, story, team, depth, caller } => {
                let mut runs = self.runs.lock().unwrap();
                if runs.len() >= MAX_TRACED_RUNS {
                    return;
                }
                let adopted = self.adopted.lock().unwrap().remove(*run);
                let (parent, trigger) = match (caller, adopted) {
                    (Some((prun, pstep)), _) => {
                        let sc = runs.get(*prun).and_then(|r| r.steps.get(&(pstep.to_string(), None))).map(|s| s.span_context().clone());
                        (sc.map(|sc| Context::new().with_remote_span_context(sc)).unwrap_or_default(), Some("story"))
                    }
                    (None, Some((sc, trigger))) => (Context::new().with_remote_span_context(sc), Some(trigger)),
                    (None, None) => (Context::new(), None),
                };
                let mut attrs = vec![
                    KeyValue::new("warden.run.id", run.to_string()),
                    KeyValue::new("warden.story", story.to_string()),
                    KeyValue::new("warden.team", team.to_string()),
                    KeyValue::new("warden.depth", *depth as i64),
                ];
                if let Some(t) = trigger {
                    attrs.push(KeyValue::new("warden.trigger", t));
                }
                let span = self
                    .tracer
                    .span_builder(format!("run {story}"))
                    .with_kind(SpanKind::Internal)
                    .with_attributes(attrs)
                    .start_with_context(&self.tracer, &parent);
                runs.insert(run.to_string(), RunSpans { span, steps: HashMap::new(), invocations: HashMap::new() });
            }
            Event::StepStarted { run, step, item, attempt, .. } => {
                let mut runs = self.runs.lock().unwrap();
                let Some(r) = runs.get_mut(*run) else { return };
                let parent = Context::new().with_remote_span_context(r.span.span_context().clone());
                let mut attrs = vec![KeyValue::new("warden.step.id", step.to_string()), KeyValue::new("warden.step.attempt", *attempt as i64)];
                if let Some(i) = item {
                    attrs.push(KeyValue::new("warden.step.item", *i as i64));
                }
                let span = self.tracer.span_builder(format!("step {step}")).with_attributes(attrs).start_with_context(&self.tracer, &parent);
                // A retry's attempt replaces the last one's span (which ends here).
                if let Some(mut old) = r.steps.insert((step.to_string(), *item), span) {
                    old.end();
                }
            }
            Event::Invoked { run, step, item, plugin, digest, elapsed, error } => {
                // Told as it ends: it started `elapsed` ago.
                let ended = SystemTime::now();
                let mut runs = self.runs.lock().unwrap();
                let Some(r) = runs.get_mut(*run) else { return };
                let Some(step_span) = r.steps.get(&(step.to_string(), *item)) else { return };
                let parent = Context::new().with_remote_span_context(step_span.span_context().clone());
                let mut attrs = vec![KeyValue::new("warden.plugin", plugin.to_string()), KeyValue::new("warden.plugin.sha256", digest.to_string())];
                if let Some(e) = error {
                    attrs.push(KeyValue::new("warden.error.kind", e.kind_name()));
                    if let crate::invocation::InvokeError::Limit { limit, .. } = e {
                        attrs.push(KeyValue::new("warden.limit", *limit));
                    }
                }
                let mut span = self
                    .tracer
                    .span_builder(format!("invoke {plugin}"))
                    .with_start_time(ended - *elapsed)
                    .with_attributes(attrs)
                    .start_with_context(&self.tracer, &parent);
                if let Some(e) = error {
                    span.set_status(Status::error(e.kind_name()));
                }
                r.invocations.insert((step.to_string(), *item), span.span_context().clone());
                span.end_with_timestamp(ended);
            }
            Event::Audit { run, step, item, record } => {
                let runs = self.runs.lock().unwrap();
                let Some(r) = runs.get(*run) else { return };
                let key = (step.to_string(), *item);
                let parent = match r.invocations.get(&key) {
                    Some(sc) => sc.clone(),
                    None => match r.steps.get(&key) {
                        Some(s) => s.span_context().clone(),
                        None => return,
                    },
                };
                let name = if record.method.is_empty() { record.capability.to_string() } else { format!("{} {}", record.capability, record.method) };
                let mut span = self
                    .tracer
                    .span_builder(name)
                    .with_kind(SpanKind::Client)
                    .with_start_time(at(record.at_ms))
                    .with_attributes(call_attributes(record))
                    .start_with_context(&self.tracer, &Context::new().with_remote_span_context(parent));
                if record.decision == Verdict::Denied {
                    span.set_status(Status::error(format!("denied by {}", record.rule)));
                }
                span.end_with_timestamp(at(record.at_ms + record.duration_ms));
            }
            Event::StepFinished { run, step, kind, item, state, error, .. } => {
                let mut runs = self.runs.lock().unwrap();
                let Some(r) = runs.get_mut(*run) else { return };
                let Some(mut span) = r.steps.remove(&(step.to_string(), *item)) else { return };
                r.invocations.remove(&(step.to_string(), *item));
                span.set_attribute(KeyValue::new("warden.step.kind", *kind));
                span.set_attribute(KeyValue::new("warden.step.outcome", state.to_string()));
                if let Some(err) = error {
                    span.set_attribute(KeyValue::new("warden.error.kind", err.kind.to_string()));
                    if *state != "skipped" {
                        span.set_status(Status::error(err.kind.to_string()));
                    }
                }
                span.end();
            }
            Event::RunFinished { run, state, .. } => {
                let Some(mut r) = self.runs.lock().unwrap().remove(*run) else { return };
                for (_, mut s) in r.steps.drain() {
                    s.end();
                }
                r.span.set_attribute(KeyValue::new("warden.run.state", state.to_string()));
                if *state == crate::story::RunState::Failed {
                    r.span.set_status(Status::error("failed"));
                }
                r.span.end();
            }
            Event::Log { .. } => {}
        }
    }
}

/// The exporter's HTTP client: warden's own (rustls), blocking, made on the
/// exporter's thread at its first export (a blocking client may not be made
/// or dropped on the async runtime's threads).
#[derive(Debug, Default)]
struct Blocking(std::sync::OnceLock<Result<reqwest::blocking::Client, String>>);

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for Blocking {
    async fn send_bytes(&self, request: http::Request<bytes::Bytes>) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let client = self.0.get_or_init(|| {
            reqwest::blocking::Client::builder().timeout(Duration::from_secs(10)).redirect(reqwest::redirect::Policy::none()).build().map_err(|e| e.to_string())
        });
        let client = client.as_ref().map_err(|e| e.clone())?;
        let (parts, body) = request.into_parts();
        let mut req = client.request(parts.method, parts.uri.to_string()).body(body.to_vec());
        for (k, v) in parts.headers.iter() {
            req = req.header(k, v);
        }
        let resp = req.send()?;
        let mut out = http::Response::builder().status(resp.status().as_u16());
        for (k, v) in resp.headers() {
            out = out.header(k, v);
        }
        // A collector's answer is small; more than 1 MiB of it is not read.
        let mut body = Vec::new();
        std::io::Read::read_to_end(&mut std::io::Read::take(resp, 1 << 20), &mut body)?;
        Ok(out.body(bytes::Bytes::from(body))?)
    }
}

impl crate::story::observe::TraceContext for Telemetry {
    fn trace_of(&self, run: &str) -> Option<(String, String)> {
        self.trace_of_run(run)
    }
    fn traceparent_of_step(&self, run: &str, step: &str, item: Option<usize>) -> Option<String> {
        self.step_traceparent(run, step, item)
    }
    fn adopt_earlier(&self, run: &str, trace: &str, span: &str) {
        self.adopt_earlier_trace(run, trace, span)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The standard variables turn tracing on (and off) without `[telemetry]`.
    #[test]
    fn otel_variables_turn_tracing_on_and_off() {
        let none = TelemetryConfig::default();
        // SAFETY: no other test of this binary reads these variables.
        unsafe {
            std::env::remove_var("OTEL_EXPORTER_OTLP_ENDPOINT");
            std::env::remove_var("OTEL_SDK_DISABLED");
        }
        assert!(Telemetry::start(&none).unwrap().is_none(), "off by default");
        unsafe { std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9") };
        let on = Telemetry::start(&none).unwrap();
        assert!(on.is_some(), "OTEL_EXPORTER_OTLP_ENDPOINT turns it on");
        unsafe { std::env::set_var("OTEL_SDK_DISABLED", "true") };
        assert!(Telemetry::start(&none).unwrap().is_none(), "OTEL_SDK_DISABLED=true turns it off");
        unsafe {
            std::env::remove_var("OTEL_EXPORTER_OTLP_ENDPOINT");
            std::env::remove_var("OTEL_SDK_DISABLED");
        }
        let missing = TelemetryConfig {
            endpoint: Some("http://127.0.0.1:9".into()),
            headers_env: [("x-key".to_string(), "WARDEN_TEST_NO_SUCH_VAR".to_string())].into(),
            ..Default::default()
        };
        let e = Telemetry::start(&missing).err().expect("a header whose variable is unset").to_string();
        assert!(e.contains("x-key") && e.contains("$WARDEN_TEST_NO_SUCH_VAR"), "{e}");
        // Nothing was sent anywhere: the provider stops without an export.
        if let Some(t) = on {
            std::thread::spawn(move || t.shutdown()).join().unwrap();
        }
    }

    #[test]
    fn a_calls_attributes_keep_its_origin_and_path_but_not_its_query() {
        let info = crate::invocation::InvocationInfo::default();
        let mut r = AuditRecord::new("http", "p", &info, "GET".into(), "https://api.example.com:8443/v1/items/7?token=abc&q=secret".into());
        r.rule = "GET https://api.example.com:8443/v1/*".into();
        let text = format!("{:?}", call_attributes(&r));
        assert!(text.contains("https://api.example.com:8443") && text.contains("/v1/items/7"), "{text}");
        assert!(!text.contains("abc") && !text.contains("secret") && !text.contains('?'), "{text}");
    }
}
