//! `[telemetry]`: where traces go (see warden's `telemetry` module). Checked at load;
//! the standard `OTEL_*` variables fill in what it leaves out.

use serde::Deserialize;
use std::collections::BTreeMap;

/// `[telemetry]` in the policy; the standard `OTEL_*` variables fill what it leaves out.
#[derive(Debug, Clone, Default)]
pub struct TelemetryConfig {
    /// The collector's OTLP/HTTP base URL (traces go to `<endpoint>/v1/traces`).
    pub endpoint: Option<String>,
    /// Headers sent with each export, their values read from these environment variables.
    pub headers_env: BTreeMap<String, String>,
    /// The share of new traces kept, 0..1 (a caller's sampled flag is followed).
    pub sample_ratio: Option<f64>,
    pub service_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTelemetry {
    endpoint: Option<String>,
    #[serde(default)]
    headers_env: BTreeMap<String, String>,
    sample_ratio: Option<f64>,
    service_name: Option<String>,
}

pub(super) fn parse(raw: RawTelemetry) -> Result<TelemetryConfig, String> {
    if let Some(e) = &raw.endpoint {
        let ok = url::Url::parse(e).is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some() && u.query().is_none());
        if !ok {
            return Err(format!(
                "[telemetry] endpoint `{e}` must be the collector's OTLP/HTTP base URL, like http://127.0.0.1:4318 (traces are sent to <endpoint>/v1/traces)"
            ));
        }
    }
    if let Some(r) = raw.sample_ratio {
        if !(0.0..=1.0).contains(&r) {
            return Err(format!("[telemetry] sample_ratio {r} must be between 0 and 1 (the share of new traces kept)"));
        }
    }
    for (name, var) in &raw.headers_env {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() || var.is_empty() {
            return Err(format!("[telemetry] headers_env: `{name}` = `{var}` must map a header name to the environment variable holding its value"));
        }
    }
    Ok(TelemetryConfig {
        endpoint: raw.endpoint.map(|e| e.trim_end_matches('/').to_string()),
        headers_env: raw.headers_env,
        sample_ratio: raw.sample_ratio,
        service_name: raw.service_name,
    })
}
