//! VirusTotal API v3, the lookups the `virustotal-lookup` plugin speaks.
//!
//! * `GET /api/v3/{domains|ip_addresses|files|urls}/{id}` with `x-apikey`
//!   → 200 `{data: {id, type, links: {self}, attributes: {last_analysis_stats,
//!   reputation, categories, last_analysis_date, tags, …}}}`. A URL's id is
//!   its unpadded base64url; a file's is its SHA-256, SHA-1 or MD5.
//! * Errors are `{error: {code, message}}`: 404 `NotFoundError`, 401
//!   `WrongCredentialsError` (and `AuthenticationRequiredError` without a key),
//!   429 `QuotaExceededError` (with `Retry-After` here), 400 `InvalidArgumentError`.

use crate::{Recorder, Running};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine as _;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone)]
pub struct Config {
    pub api_key: String,
    /// Known objects: (collection, id) → attributes.
    pub objects: HashMap<(String, String), Value>,
    /// Answer the next N calls with 429 QuotaExceededError.
    pub quota_exceeded_next: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config { api_key: "vt-demo-key".into(), objects: known_objects(), quota_exceeded_next: 0 }
    }
}

/// The indicators the sim knows: a malicious domain and IP, a clean domain, a
/// malicious file (by SHA-256 only; SHA-1/MD5 name the same file) and a URL.
pub fn known_objects() -> HashMap<(String, String), Value> {
    let stats = |m: u64, s: u64, h: u64, u: u64| json!({"malicious": m, "suspicious": s, "harmless": h, "undetected": u, "timeout": 0});
    let mut o = HashMap::new();
    o.insert(
        ("domains".into(), "evil.example".into()),
        json!({
            "last_analysis_stats": stats(12, 2, 55, 22),
            "reputation": -41,
            "categories": {"Forcepoint ThreatSeeker": "malicious web sites", "Sophos": "phishing", "BitDefender": "phishing"},
            "last_analysis_date": 1714550000u64,
            "tags": ["dga"],
        }),
    );
    o.insert(
        ("domains".into(), "corp.example".into()),
        json!({"last_analysis_stats": stats(0, 0, 70, 21), "reputation": 12, "categories": {"Forcepoint ThreatSeeker": "business and economy"}, "last_analysis_date": 1714550000u64}),
    );
    o.insert(
        ("ip_addresses".into(), "203.0.113.66".into()),
        json!({"last_analysis_stats": stats(5, 1, 60, 25), "reputation": -8, "country": "NL", "as_owner": "Example Hosting", "last_analysis_date": 1714550000u64}),
    );
    let sha256 = "275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f";
    let file = json!({
        "last_analysis_stats": stats(61, 0, 0, 9),
        "reputation": -95,
        "type_description": "Win32 EXE",
        "meaningful_name": "invoice.exe",
        "sha256": sha256,
        "sha1": "3395856ce81f2b7382dee72602f798b642f14140",
        "md5": "44d88612fea8a8f36de82e1278abb02f",
        "popular_threat_classification": {"suggested_threat_label": "trojan.emotet/generic"},
        "last_analysis_date": 1714550000u64,
    });
    o.insert(("files".into(), sha256.into()), file);
    let url = "http://evil.example/dropper.php";
    o.insert(
        ("urls".into(), base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(url)),
        json!({"url": url, "last_analysis_stats": stats(9, 3, 50, 28), "reputation": -20, "categories": {"Sophos": "malware repository"}, "last_analysis_date": 1714550000u64}),
    );
    o
}

pub struct Sim {
    pub config: Mutex<Config>,
    pub recorder: Recorder,
}

impl Sim {
    pub fn new(config: Config) -> Arc<Sim> {
        Arc::new(Sim { config: Mutex::new(config), recorder: Recorder::default() })
    }
    pub fn quota_exceeded_next(&self, n: u32) {
        self.config.lock().unwrap().quota_exceeded_next = n;
    }
}

pub fn router(sim: Arc<Sim>) -> Router {
    let rec = sim.recorder.clone();
    Router::new().route("/api/v3/{collection}/{id}", get(lookup)).with_state(sim).layer(axum::middleware::from_fn_with_state(rec, crate::record))
}

pub async fn spawn(config: Config) -> std::io::Result<(Running, Arc<Sim>)> {
    let sim = Sim::new(config);
    let running = crate::serve(router(sim.clone())).await?;
    Ok((running, sim))
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(json!({"error": {"code": code, "message": message}}))).into_response()
}

async fn lookup(State(sim): State<Arc<Sim>>, Path((collection, id)): Path<(String, String)>, headers: HeaderMap) -> Response {
    let cfg = {
        let mut cfg = sim.config.lock().unwrap();
        if cfg.quota_exceeded_next > 0 {
            cfg.quota_exceeded_next -= 1;
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", "60")],
                Json(json!({"error": {"code": "QuotaExceededError", "message": "Quota exceeded"}})),
            )
                .into_response();
        }
        cfg.clone()
    };
    match headers.get("x-apikey").and_then(|v| v.to_str().ok()) {
        None => return error(StatusCode::UNAUTHORIZED, "AuthenticationRequiredError", "X-Apikey header is missing"),
        Some(k) if k != cfg.api_key => return error(StatusCode::UNAUTHORIZED, "WrongCredentialsError", "Wrong API key"),
        Some(_) => {}
    }
    let kind = match collection.as_str() {
        "domains" => "domain",
        "ip_addresses" => "ip_address",
        "files" => "file",
        "urls" => "url",
        _ => return error(StatusCode::NOT_FOUND, "NotFoundError", &format!("Resource not found: /api/v3/{collection}")),
    };
    let attrs = if collection == "files" {
        // A file is found by any of its three hashes.
        let id = id.to_ascii_lowercase();
        cfg.objects.iter().find(|((c, _), a)| c == "files" && ["sha256", "sha1", "md5"].iter().any(|h| a[*h] == id.as_str())).map(|(_, a)| a.clone())
    } else {
        if collection == "ip_addresses" && id.parse::<std::net::IpAddr>().is_err() {
            return error(StatusCode::BAD_REQUEST, "InvalidArgumentError", &format!("\"{id}\" is not a valid IP address"));
        }
        cfg.objects.get(&(collection.clone(), id.clone())).cloned()
    };
    let Some(attributes) = attrs else {
        let what = match kind {
            "domain" => "Domain",
            "ip_address" => "IP address",
            "file" => "File",
            _ => "URL",
        };
        return error(StatusCode::NOT_FOUND, "NotFoundError", &format!("{what} \"{id}\" not found"));
    };
    let canonical = if collection == "files" { attributes["sha256"].as_str().unwrap_or(&id).to_string() } else { id.clone() };
    Json(json!({"data": {
        "id": canonical,
        "type": kind,
        "links": {"self": format!("https://www.virustotal.com/api/v3/{collection}/{canonical}")},
        "attributes": attributes,
    }}))
    .into_response()
}
