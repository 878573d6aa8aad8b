//! Local stand-ins for the services warden's plugins talk to, served on
//! 127.0.0.1 for tests and for the README demo.
//!
//! * [`origin`]: a plain test origin (echo, large and endless bodies, slow
//!   bodies, redirects).
//! * [`sentinelone`]: SentinelOne Management API v2.1 Deep Visibility.
//! * [`jira`]: Jira Cloud REST v2/v3 and Jira Service Management requests.
//! * [`mail`]: SendGrid v3 and Mailgun.
//! * [`slack`]: Slack `chat.postMessage`, and signed interaction callbacks.
//! * [`virustotal`]: VirusTotal v3 domain, IP, file and URL lookups.
//! * [`servicenow`]: ServiceNow's Table API for incidents.
//! * [`crowdstrike`]: CrowdStrike OAuth2 client credentials and host containment.
//!
//! Real SMTP is tested against a real server (`tests/smtp_server.py`, aiosmtpd).
//!
//! Each records what it received and checks the auth header it expects, which
//! is how the tests prove the host injected the credential. The shapes follow
//! `shared/reference/vendor-apis.md`.

// A simulator answers an early refusal as an axum `Response` in `Err`.
#![allow(clippy::result_large_err)]

pub mod crowdstrike;
pub mod jira;
pub mod mail;
pub mod origin;
pub mod sentinelone;
pub mod servicenow;
pub mod slack;
pub mod virustotal;

use axum::extract::State;
use axum::http::{HeaderMap, Method, Uri};
use axum::response::Response;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// One request a simulator received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

/// Every request a simulator received, for assertions (e.g. that the host
/// injected the credential).
#[derive(Clone, Default)]
pub struct Recorder(Arc<Mutex<Vec<Seen>>>);

impl Recorder {
    pub fn all(&self) -> Vec<Seen> {
        self.0.lock().unwrap().clone()
    }
    pub fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }
    pub fn paths(&self) -> Vec<String> {
        self.all().into_iter().map(|s| s.path).collect()
    }
    fn push(&self, method: &Method, uri: &Uri, headers: &HeaderMap, body: &[u8]) {
        self.0.lock().unwrap().push(Seen {
            method: method.to_string(),
            path: uri.path().to_string(),
            query: uri.query().unwrap_or("").to_string(),
            headers: headers.iter().map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned())).collect(),
            body: body.to_vec(),
        });
    }
}

/// Middleware that records each request into the router's [`Recorder`].
/// The body is read whole (up to 64 MiB) and handed on as it came.
pub async fn record(State(rec): State<Recorder>, req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 64 << 20).await.unwrap_or_default();
    rec.push(&parts.method, &parts.uri, &parts.headers, &body);
    next.run(axum::extract::Request::from_parts(parts, axum::body::Body::from(body))).await
}

/// A server running on a background task; stops when dropped.
pub struct Running {
    pub addr: SocketAddr,
    handle: tokio::task::JoinHandle<()>,
}

impl Running {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// Serves `router` on an ephemeral 127.0.0.1 port.
pub async fn serve(router: axum::Router) -> std::io::Result<Running> {
    serve_on("127.0.0.1:0", router).await
}

pub async fn serve_on(addr: &str, router: axum::Router) -> std::io::Result<Running> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let handle = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Ok(Running { addr, handle })
}
