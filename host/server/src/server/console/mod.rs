//! The web console, served by `warden serve` itself: runs (live), a run's
//! step timeline with inputs, outputs, logs and audit, pending approvals,
//! stories drawn as graphs, and the policy as `policy explain` says it.
//!
//! Server-rendered HTML (minijinja; every printed value is HTML-escaped, and
//! the JSON and graphs drawn in [`view`] escape their texts), with the CSS and
//! a small script embedded in the binary: no CDN, no build step, works
//! offline. The script only opens a server-sent-events stream for live
//! updates, keeps open steps open, and shows times in the viewer's zone.
//!
//! Security ([`session`]): every page behind the API tokens, a team token sees
//! its team's runs only (another team's run is a 404), a strict
//! Content-Security-Policy (no inline script or style at all), and every POST
//! needs a same-origin request carrying the session's CSRF token.
//!
//! One file per page: `sign_in.rs`, `runs.rs`, `run.rs`, `live.rs` (the
//! server-sent-events stream that redraws either), `approvals.rs`,
//! `stories.rs`, `policy.rs`; this file holds the routes, the frame every page
//! shares, and the limits on sign-ins and live streams.

mod approvals;
mod live;
mod policy;
mod run;
mod runs;
pub mod session;
mod sign_in;
mod stories;
pub mod view;

// One file per page; the handlers the routes name, and what one page
// borrows from another (the runs table, a run's body, the CSRF check).
use approvals::{approvals_page, decide};
use live::{digest, live};
use policy::{audit_log_page, policy_page};
use run::{pending_view, run_body, run_page};
use runs::{query_of, row, runs_body, runs_page, RunRow, RunsQuery};
use sign_in::{checked_post, login, login_page, logout};
use stories::stories_page;

use super::{AppState, Scope};
use crate::policy::access::Action;
use crate::store::{ApprovalFilter, RunFilter, RunSummary};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use minijinja::context;
use serde::Serialize;
use session::Viewer;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Live streams open at once; more are refused (each polls the store).
const MAX_STREAMS: usize = 64;
/// Live streams one viewer (one session or token) may hold open.
const MAX_STREAMS_PER_VIEWER: usize = 8;
/// Live streams one principal (a team, or the admin) may hold open across all
/// its sessions: signing in again, or spelling the token's header otherwise,
/// does not take more of the [`MAX_STREAMS`] everyone shares.
const MAX_STREAMS_PER_PRINCIPAL: usize = MAX_STREAMS / 4;
/// Failed sign-ins from one address within [`SIGN_IN_WINDOW_SECS`] before it must wait.
const MAX_FAILED_SIGN_INS: u32 = 10;
const SIGN_IN_WINDOW_SECS: u64 = 300;
/// Addresses remembered for failed sign-ins. Beyond it, expired windows go
/// first, then addresses not locked out (fewest failures first), and only
/// then the oldest lockout: a flood of new addresses never lifts everyone's.
const MAX_REMEMBERED_ADDRESSES: usize = 10_000;
/// How often a live stream looks for changes.
const LIVE_EVERY: Duration = Duration::from_millis(700);
/// A live stream ends after this; the browser reconnects.
const STREAM_LIFETIME: Duration = Duration::from_secs(600);
/// Runs listed per page.
const PAGE: usize = 50;
/// Sub-story runs whose steps a run's timeline draws (a `for_each` over a
/// sub-story can call thousands; those are listed, not drawn).
const MAX_NESTED: usize = 20;

/// The console's state beside the server's.
pub struct Console {
    key: std::sync::OnceLock<[u8; 32]>,
    explained: tokio::sync::OnceCell<Vec<crate::explain::Explained>>,
    streams: Arc<tokio::sync::Semaphore>,
    /// Live streams open per viewer (a session) and per principal (`p:` + its scope).
    viewers: Arc<std::sync::Mutex<HashMap<String, usize>>>,
    /// Failed sign-ins per address: (window start, count).
    failures: std::sync::Mutex<HashMap<std::net::IpAddr, (u64, u32)>>,
}

impl Default for Console {
    fn default() -> Console {
        Console {
            key: Default::default(),
            explained: Default::default(),
            streams: Arc::new(tokio::sync::Semaphore::new(MAX_STREAMS)),
            viewers: Default::default(),
            failures: Default::default(),
        }
    }
}

/// One viewer's live stream, counted (for its session and its principal) while it is open.
struct ViewerStream {
    viewers: Arc<std::sync::Mutex<HashMap<String, usize>>>,
    keys: [String; 2],
}

impl Drop for ViewerStream {
    fn drop(&mut self) {
        let mut v = self.viewers.lock().unwrap_or_else(|p| p.into_inner());
        for key in &self.keys {
            if let Some(n) = v.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    v.remove(key);
                }
            }
        }
    }
}

/// Where failed sign-ins are counted: an IPv6 address by its /64 (one
/// machine is given a whole /64, so counting its addresses one by one would
/// let it try forever); an IPv4-mapped one as the IPv4 address.
fn sign_in_source(from: std::net::IpAddr) -> std::net::IpAddr {
    match from {
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => std::net::IpAddr::V4(v4),
            None => std::net::IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        },
        v4 => v4,
    }
}

impl Console {
    /// A stream for `session` of `principal`, unless the session holds
    /// [`MAX_STREAMS_PER_VIEWER`] or the principal [`MAX_STREAMS_PER_PRINCIPAL`] already.
    fn open_stream(&self, principal: &str, session: String) -> Option<ViewerStream> {
        let mut v = self.viewers.lock().unwrap_or_else(|p| p.into_inner());
        let keys = [format!("s:{session}"), format!("p:{principal}")];
        if v.get(&keys[0]).copied().unwrap_or(0) >= MAX_STREAMS_PER_VIEWER || v.get(&keys[1]).copied().unwrap_or(0) >= MAX_STREAMS_PER_PRINCIPAL {
            return None;
        }
        for key in &keys {
            *v.entry(key.clone()).or_default() += 1;
        }
        Some(ViewerStream { viewers: self.viewers.clone(), keys })
    }

    /// Whether `from` may try to sign in now (not after too many failures in the window).
    fn may_sign_in(&self, from: std::net::IpAddr, now: u64) -> bool {
        let f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        f.get(&sign_in_source(from)).is_none_or(|(since, n)| now.saturating_sub(*since) >= SIGN_IN_WINDOW_SECS || *n < MAX_FAILED_SIGN_INS)
    }

    fn failed_sign_in(&self, from: std::net::IpAddr, now: u64) {
        let from = sign_in_source(from);
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if f.len() >= MAX_REMEMBERED_ADDRESSES && !f.contains_key(&from) {
            f.retain(|_, (since, _)| now.saturating_sub(*since) < SIGN_IN_WINDOW_SECS);
        }
        if f.len() >= MAX_REMEMBERED_ADDRESSES && !f.contains_key(&from) {
            // The address that matters least: not locked out with the fewest
            // failures, else the lockout that ends soonest.
            let locked = |n: u32| n >= MAX_FAILED_SIGN_INS;
            let least = f.iter().min_by_key(|(_, (since, n))| (locked(*n), *n, *since)).map(|(a, _)| *a);
            if let Some(a) = least {
                f.remove(&a);
            }
        }
        let entry = f.entry(from).or_insert((now, 0));
        if now.saturating_sub(entry.0) >= SIGN_IN_WINDOW_SECS {
            *entry = (now, 0);
        }
        entry.1 += 1;
    }

    /// The session key: derived from the link key (the operator's secret and
    /// the store's salt: shared by every node and kept across restarts); a
    /// store without approvals gets a key for this process.
    fn key(&self, s: &AppState) -> Result<[u8; 32], Response> {
        if let Some(k) = self.key.get() {
            return Ok(*k);
        }
        let store_key = match s.engine.store.approvals() {
            Some(_) => s
                .engine
                .link_key()
                .map_err(|e| said(StatusCode::SERVICE_UNAVAILABLE, "Try again later", &format!("The console cannot sign anyone in: {}", e.message)))?,
            None => {
                let mut k = [0u8; 32];
                k[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
                k[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
                k
            }
        };
        Ok(*self.key.get_or_init(|| session::console_key(&store_key)))
    }
}

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/console", get(|| async { Redirect::to("/console/runs") }))
        .route("/console/", get(|| async { Redirect::to("/console/runs") }))
        .route("/console/login", get(login_page).post(login))
        .route("/console/logout", post(logout))
        .route("/console/runs", get(runs_page))
        .route("/console/runs/{id}", get(run_page))
        .route("/console/live", get(live))
        .route("/console/approvals", get(approvals_page))
        .route("/console/approvals/{run}/{step}", post(decide))
        .route("/console/stories", get(stories_page))
        .route("/console/policy", get(policy_page))
        .route("/console/audit-log", get(audit_log_page))
        .route("/console/assets/{name}", get(asset))
}

fn now_ms() -> u64 {
    crate::audit::now_ms()
}

const CSP: &str =
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

fn env() -> &'static minijinja::Environment<'static> {
    static ENV: std::sync::OnceLock<minijinja::Environment<'static>> = std::sync::OnceLock::new();
    ENV.get_or_init(|| {
        // `.html` templates escape everything they print.
        let mut env = minijinja::Environment::new();
        for (name, text) in [
            ("layout.html", include_str!("templates/layout.html")),
            ("login.html", include_str!("templates/login.html")),
            ("said.html", include_str!("templates/said.html")),
            ("runs.html", include_str!("templates/runs.html")),
            ("runs_body.html", include_str!("templates/runs_body.html")),
            ("run.html", include_str!("templates/run.html")),
            ("run_body.html", include_str!("templates/run_body.html")),
            ("decide.html", include_str!("templates/decide.html")),
            ("approvals.html", include_str!("templates/approvals.html")),
            ("stories.html", include_str!("templates/stories.html")),
            ("policy.html", include_str!("templates/policy.html")),
            ("audit_log.html", include_str!("templates/audit_log.html")),
            ("confirm.html", include_str!("templates/confirm.html")),
        ] {
            env.add_template(name, text).expect("valid console template");
        }
        env
    })
}

fn render_text(template: &str, ctx: minijinja::Value) -> String {
    env().get_template(template).and_then(|t| t.render(ctx)).unwrap_or_else(|e| format!("cannot render this page: {}", view::escape(&e.to_string())))
}

fn html(code: StatusCode, body: String) -> Response {
    (
        code,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::REFERRER_POLICY, "same-origin"),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::X_FRAME_OPTIONS, "DENY"),
        ],
        body,
    )
        .into_response()
}

fn page(code: StatusCode, template: &str, ctx: minijinja::Value) -> Response {
    html(code, render_text(template, ctx))
}

fn said(code: StatusCode, heading: &str, text: &str) -> Response {
    page(code, "said.html", context! { heading, text, nav => false })
}

/// What every page's frame needs.
fn frame(v: &Viewer, s: &AppState, tab: &str) -> minijinja::Value {
    let scope = match &v.principal.scope {
        Scope::All => format!("every team ({})", v.principal.role),
        Scope::Team(t) => format!("team {t} ({})", v.principal.role),
    };
    // A link is shown only where the access layer would let the viewer through.
    let policy = v.principal.may(Action::ReadPolicy, v.principal.scope.team());
    let audit_log = v.principal.may(Action::ReadAuditLog, v.principal.scope.team());
    context! { tab, scope, csrf => v.csrf, signed_in => v.signed_in, approvals => s.engine.store.approvals().is_some(), policy, audit_log, nav => true }
}

/// The viewer, or the answer that sends them to sign in. A bearer token is
/// judged by the server's access layer, as on `/api/*`.
async fn who(s: &AppState, headers: &HeaderMap) -> Result<(Viewer, [u8; 32]), Response> {
    let key = s.console.key(s)?;
    if let (false, Some(auth)) = (s.tokens.is_open(), headers.get(header::AUTHORIZATION)) {
        let unknown = || said(StatusCode::UNAUTHORIZED, "Not signed in", "That API token is not known here.");
        return match crate::server::access::principal_of(s, crate::server::access::bearer(headers).unwrap_or("")).await {
            Ok(Some(p)) => Ok((session::bearer_viewer(&key, p, auth.as_bytes()), key)),
            Ok(None) => Err(unknown()),
            Err(e) => Err(store_down(e)),
        };
    }
    match session::viewer(&key, &s.tokens, headers, now_ms() / 1000) {
        Some(v) => Ok((v, key)),
        None => Err(Redirect::to("/console/login").into_response()),
    }
}

fn sees_team(scope: &Scope, team: &str) -> bool {
    scope.team().is_none_or(|t| t == team)
}

fn not_found(what: &str) -> Response {
    said(StatusCode::NOT_FOUND, "Not found", &format!("There is no {what} here."))
}

fn store_down(e: anyhow::Error) -> Response {
    said(StatusCode::SERVICE_UNAVAILABLE, "Try again later", &format!("The run store is unavailable: {e:#}"))
}

/// Runs `read` (a page's store reads and the rendering on them) on tokio's
/// blocking pool: see [`crate::store::off_runtime`].
async fn off_runtime<T: Send + 'static>(s: &AppState, read: impl FnOnce(&AppState) -> anyhow::Result<T> + Send + 'static) -> anyhow::Result<T> {
    let s = s.clone();
    tokio::task::spawn_blocking(move || read(&s)).await.map_err(|e| anyhow::anyhow!("a run store read stopped: {e}"))?
}

// ---- assets ----

async fn asset(Path(name): Path<String>) -> Response {
    let (body, kind): (&'static str, &str) = match name.as_str() {
        "console.css" => (include_str!("assets/console.css"), "text/css; charset=utf-8"),
        "console.js" => (include_str!("assets/console.js"), "text/javascript; charset=utf-8"),
        _ => return (StatusCode::NOT_FOUND, "no such asset").into_response(),
    };
    ([(header::CONTENT_TYPE, kind), (header::CACHE_CONTROL, "public, max-age=3600"), (header::X_CONTENT_TYPE_OPTIONS, "nosniff")], body).into_response()
}

#[cfg(test)]
mod tests;
