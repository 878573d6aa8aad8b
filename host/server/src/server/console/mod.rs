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

pub mod session;
pub mod view;

use super::{AppState, Scope};
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
    let scope = match &v.scope {
        Scope::All => "every team".to_string(),
        Scope::Team(t) => format!("team {t}"),
    };
    context! { tab, scope, csrf => v.csrf, signed_in => v.signed_in, approvals => s.engine.store.approvals().is_some(), nav => true }
}

/// The viewer, or the answer that sends them to sign in.
fn who(s: &AppState, headers: &HeaderMap) -> Result<(Viewer, [u8; 32]), Response> {
    let key = s.console.key(s)?;
    match session::viewer(&key, &s.tokens, headers, now_ms() / 1000) {
        Some(v) => Ok((v, key)),
        None if headers.contains_key(header::AUTHORIZATION) => Err(said(StatusCode::UNAUTHORIZED, "Not signed in", "That API token is not known here.")),
        None => Err(Redirect::to("/console/login").into_response()),
    }
}

fn sees_team(scope: &Scope, team: &str) -> bool {
    match scope {
        Scope::All => true,
        Scope::Team(t) => t == team,
    }
}

fn not_found(what: &str) -> Response {
    said(StatusCode::NOT_FOUND, "Not found", &format!("There is no {what} here."))
}

fn store_down(e: anyhow::Error) -> Response {
    said(StatusCode::SERVICE_UNAVAILABLE, "Try again later", &format!("The run store is unavailable: {e:#}"))
}

// ---- sign in and out ----

async fn login_page(State(s): State<AppState>) -> Response {
    if s.tokens.0.is_empty() {
        return Redirect::to("/console/runs").into_response();
    }
    page(StatusCode::OK, "login.html", context! { nav => false, failed => false })
}

async fn login(State(s): State<AppState>, ext: axum::http::Extensions, headers: HeaderMap, body: Bytes) -> Response {
    if !session::same_origin(&headers) {
        return said(StatusCode::FORBIDDEN, "Refused", "This form was not sent from this console.");
    }
    // Guessing tokens is slowed down per address (behind a proxy, the proxy's).
    let from = ext.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip()).unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    let now = now_ms() / 1000;
    if !s.console.may_sign_in(from, now) {
        return said(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many failed sign-ins",
            &format!("{MAX_FAILED_SIGN_INS} tokens from this address were wrong; try again in {} minutes.", SIGN_IN_WINDOW_SECS / 60),
        );
    }
    let key = match s.console.key(&s) {
        Ok(k) => k,
        Err(r) => return r,
    };
    let token = url::form_urlencoded::parse(&body).find(|(k, _)| k == "token").map(|(_, v)| v.trim().to_string()).unwrap_or_default();
    let Some((scope, digest)) = s.tokens.find(&token) else {
        s.console.failed_sign_in(from, now);
        return page(StatusCode::UNAUTHORIZED, "login.html", context! { nav => false, failed => true });
    };
    let value = session::issue(&key, &scope, &digest, now + session::SESSION_SECS);
    let secure = if s.policy.server.public_url.as_deref().is_some_and(|u| u.starts_with("https://")) { "; Secure" } else { "" };
    let cookie = format!("{}={value}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={}{secure}", session::COOKIE, session::SESSION_SECS);
    let mut r = Redirect::to("/console/runs").into_response();
    r.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_str(&cookie).expect("cookie is ASCII"));
    r
}

async fn logout(State(s): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = checked_post(&s, &headers, &body) {
        return r;
    }
    let mut r = Redirect::to("/console/login").into_response();
    let cookie = format!("{}=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0", session::COOKIE);
    r.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_str(&cookie).expect("cookie is ASCII"));
    r
}

/// A console form post: same origin, signed in, with the session's CSRF token.
fn checked_post(s: &AppState, headers: &HeaderMap, body: &[u8]) -> Result<(Viewer, HashMap<String, String>), Response> {
    if !session::same_origin(headers) {
        return Err(said(StatusCode::FORBIDDEN, "Refused", "This form was not sent from this console."));
    }
    let (v, key) = who(s, headers)?;
    let form: HashMap<String, String> = url::form_urlencoded::parse(body).into_owned().collect();
    let given = form.get("csrf").map(String::as_str).unwrap_or("");
    if !session::csrf_matches(&key, &v.session, given) {
        return Err(said(StatusCode::FORBIDDEN, "Refused", "This form has expired or was not sent from this console; reload the page and try again."));
    }
    Ok((v, form))
}

// ---- runs ----

#[derive(Debug, Default, serde::Deserialize, Serialize, Clone)]
struct RunsQuery {
    #[serde(default)]
    story: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    trigger: String,
    /// `1h`, `24h`, `7d`, `30d`, or empty for all time.
    #[serde(default)]
    since: String,
    #[serde(default)]
    page: usize,
}

const SINCE: [(&str, u64); 4] = [("1h", 3_600_000), ("24h", 86_400_000), ("7d", 7 * 86_400_000), ("30d", 30 * 86_400_000)];
const STATES: [&str; 6] = ["queued", "running", "waiting", "succeeded", "failed", "cancelled"];
const TRIGGERS: [&str; 4] = ["webhook", "schedule", "cli", "replay"];

impl RunsQuery {
    /// A filter value no form offers: said, not silently ignored.
    fn invalid(&self) -> Option<String> {
        if !self.since.is_empty() && !SINCE.iter().any(|(k, _)| *k == self.since) {
            return Some(format!("since `{}` is not one of 1h, 24h, 7d, 30d (or empty for all time)", crate::invocation::guest_text(&self.since, 40)));
        }
        if !self.state.is_empty() && !STATES.contains(&self.state.as_str()) {
            return Some(format!("state `{}` is not one of {}", crate::invocation::guest_text(&self.state, 40), STATES.join(", ")));
        }
        None
    }

    fn filter<'a>(&'a self, scope: &'a Scope) -> RunFilter<'a> {
        let some = |t: &'a String| (!t.is_empty()).then_some(t.as_str());
        RunFilter {
            team: match scope {
                Scope::All => None,
                Scope::Team(t) => Some(t.as_str()),
            },
            story: some(&self.story),
            state: some(&self.state),
            trigger: some(&self.trigger),
            since_ms: SINCE.iter().find(|(k, _)| *k == self.since).map(|(_, d)| now_ms().saturating_sub(*d)),
            include_children: false,
            limit: PAGE,
            offset: self.page.min(10_000) * PAGE,
        }
    }

    fn query_string(&self) -> String {
        query_of(&[("story", &self.story), ("state", &self.state), ("trigger", &self.trigger), ("since", &self.since)])
    }
}

/// A query string of the non-empty pairs.
fn query_of(pairs: &[(&str, &String)]) -> String {
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        if !v.is_empty() {
            q.append_pair(k, v);
        }
    }
    q.finish()
}

#[derive(Serialize)]
struct RunRow {
    id: String,
    story: String,
    team: String,
    state: String,
    trigger: String,
    created: String,
    took: String,
    error: Option<String>,
}

fn row(r: &RunSummary) -> RunRow {
    let took = match (r.started_ms, r.finished_ms) {
        (Some(a), Some(b)) => view::duration(b.saturating_sub(a)),
        // Not a ticking figure: a live view redraws only when something happened.
        (Some(_), None) => format!("{}…", r.state),
        _ => String::new(),
    };
    RunRow {
        id: r.id.clone(),
        story: r.story.clone(),
        team: r.team.clone(),
        state: r.state.clone(),
        trigger: r.trigger.clone(),
        created: view::time(r.created_ms),
        took,
        error: r.error.as_deref().map(|e| crate::invocation::guest_text(e, 300)),
    }
}

/// Runs `read` (a page's store reads and the rendering on them) on tokio's
/// blocking pool: see [`crate::store::off_runtime`].
async fn off_runtime<T: Send + 'static>(s: &AppState, read: impl FnOnce(&AppState) -> anyhow::Result<T> + Send + 'static) -> anyhow::Result<T> {
    let s = s.clone();
    tokio::task::spawn_blocking(move || read(&s)).await.map_err(|e| anyhow::anyhow!("a run store read stopped: {e}"))?
}

/// The runs table and the counts above it (also what a live update sends).
fn runs_body(s: &AppState, v: &Viewer, q: &RunsQuery) -> anyhow::Result<String> {
    let filter = q.filter(&v.scope);
    let runs = s.engine.store.find_runs(&filter)?;
    let counts = s.engine.store.count_runs(&filter)?;
    let total: u64 = counts.iter().map(|(_, n)| n).sum();
    let more = runs.len() == PAGE;
    let rows: Vec<RunRow> = runs.iter().map(row).collect();
    let capped = total >= crate::store::COUNT_CAP;
    Ok(render_text("runs_body.html", context! { runs => rows, counts, total, capped, page => q.page, more, query => q.query_string() }))
}

async fn runs_page(State(s): State<AppState>, headers: HeaderMap, Query(q): Query<RunsQuery>) -> Response {
    let (v, _) = match who(&s, &headers) {
        Ok(v) => v,
        Err(r) => return r,
    };
    if let Some(why) = q.invalid() {
        return said(StatusCode::BAD_REQUEST, "Not a filter", &why);
    }
    let (viewer, query) = (v.clone(), q.clone());
    let body = match off_runtime(&s, move |s| runs_body(s, &viewer, &query)).await {
        Ok(b) => b,
        Err(e) => return store_down(e),
    };
    let stories: Vec<&String> = s.engine.library.stories.iter().filter(|(_, st)| sees_team(&v.scope, &st.team)).map(|(n, _)| n).collect();
    let live = format!("/console/live?{}{}seen={}", q.query_string(), if q.query_string().is_empty() { "" } else { "&" }, digest(&body));
    let ctx = context! { ..frame(&v, &s, "runs"), ..context! {
        body => minijinja::Value::from_safe_string(body), q, stories, states => STATES, triggers => TRIGGERS,
        since => SINCE.iter().map(|(k, _)| *k).collect::<Vec<_>>(), live,
    }};
    page(StatusCode::OK, "runs.html", ctx)
}

// ---- one run ----

#[derive(Serialize)]
struct StepView {
    anchor: String,
    id: String,
    item: Option<u32>,
    kind: String,
    state: String,
    attempts: u32,
    took: String,
    started: Option<String>,
    input: Option<String>,
    output: Option<String>,
    error: Option<String>,
    logs: Vec<LogView>,
    audit: Vec<AuditView>,
}

#[derive(Serialize)]
struct LogView {
    at: String,
    level: String,
    source: String,
    message: String,
}

#[derive(Serialize, Default)]
struct AuditView {
    at: String,
    capability: String,
    method: String,
    url: String,
    denied: bool,
    decision: String,
    rule: String,
    reason: String,
    credential: String,
    status: String,
    request_bytes: String,
    response_bytes: String,
    took: String,
    /// An approval decision, said in a sentence.
    approval: Option<String>,
}

fn text_of(v: &serde_json::Value, key: &str) -> String {
    match v.get(key) {
        None | Some(serde_json::Value::Null) => String::new(),
        Some(serde_json::Value::String(t)) => t.clone(),
        Some(other) => other.to_string(),
    }
}

fn audit_view(a: &serde_json::Value) -> AuditView {
    let at = a.get("at_ms").and_then(|t| t.as_u64()).map(view::time).unwrap_or_default();
    if a.get("kind").and_then(|k| k.as_str()) == Some("approval") {
        let choice = text_of(a, "choice");
        let said = if choice.is_empty() { "expired with no choice".to_string() } else { format!("chose `{choice}`") };
        let from = text_of(a, "from");
        let comment = text_of(a, "comment");
        let mut line = format!("{} {said} via {}", text_of(a, "decided_by"), text_of(a, "via"));
        if !from.is_empty() {
            line.push_str(&format!(" from {from}"));
        }
        if !comment.is_empty() {
            line.push_str(&format!(": “{comment}”"));
        }
        return AuditView { at, capability: "approval".into(), approval: Some(line), ..Default::default() };
    }
    let decision = text_of(a, "decision");
    AuditView {
        at,
        capability: text_of(a, "capability"),
        method: text_of(a, "method"),
        url: text_of(a, "url"),
        denied: decision.eq_ignore_ascii_case("denied"),
        decision,
        rule: text_of(a, "rule"),
        reason: text_of(a, "reason"),
        credential: text_of(a, "credential"),
        status: text_of(a, "status"),
        request_bytes: text_of(a, "request_bytes"),
        response_bytes: text_of(a, "response_bytes"),
        took: a.get("duration_ms").and_then(|t| t.as_u64()).map(view::duration).unwrap_or_default(),
        approval: None,
    }
}

#[derive(Serialize)]
struct Pending {
    step: String,
    run: String,
    title: String,
    details: Option<String>,
    choices: Vec<String>,
    approvers: Vec<String>,
    deadline: String,
    on_timeout: String,
    story: String,
    can_decide: bool,
}

fn pending_view(a: &crate::approval::Approval, scope: &Scope) -> Pending {
    let details = match &a.details {
        serde_json::Value::Null => None,
        d => Some(view::json_html(d)),
    };
    // What deciding would check: the scope's approver among `approvers`, if any are named.
    let can_decide = super::approvals::decider(scope, a).is_some_and(|(approver, _)| approver.is_none_or(|ap| a.allows(&ap)));
    Pending {
        step: a.step.clone(),
        run: a.run.clone(),
        title: a.title.clone(),
        details,
        choices: a.choices.clone(),
        approvers: a.approvers.clone(),
        deadline: view::time(a.deadline_ms),
        on_timeout: a.on_timeout.clone().unwrap_or_else(|| "fail the step".into()),
        story: a.story.clone(),
        can_decide,
    }
}

/// A run's page body (also what a live update sends), and whether the run is over.
fn run_body(s: &AppState, v: &Viewer, id: &str) -> anyhow::Result<Option<(String, bool)>> {
    let Some(run) = s.engine.store.get_run(id)? else { return Ok(None) };
    if !sees_team(&v.scope, &run.run.team) {
        return Ok(None);
    }
    let run = crate::store::seen_by(
        run,
        match &v.scope {
            Scope::Team(t) => Some(t.as_str()),
            Scope::All => None,
        },
    );
    // The sub-story runs' own steps, drawn under the steps that called them
    // (one level), for the sub-stories of teams the viewer sees.
    let mut called = Vec::new();
    for c in run.steps.iter().filter_map(|st| view::called_by(&run, st)).filter(|c| sees_team(&v.scope, &c.team)).take(MAX_NESTED) {
        if let Some(d) = s.engine.store.get_run(&c.id)? {
            called.push(d);
        }
    }
    let (bars, span) = view::timeline(&run, &called);
    let steps: Vec<StepView> = run
        .steps
        .iter()
        .map(|st| {
            let logs = run
                .logs
                .iter()
                .filter(|l| l.step_id == st.step_id)
                .map(|l| LogView { at: view::time(l.at_ms), level: l.level.clone(), source: l.source.clone(), message: l.message.clone() })
                .collect();
            let audit = run.audit.iter().filter(|a| a.get("step").and_then(|x| x.as_str()) == Some(st.step_id.as_str())).map(audit_view).collect();
            StepView {
                anchor: view::anchor(st),
                id: st.step_id.clone(),
                item: st.item,
                kind: st.kind.clone(),
                state: st.state.clone(),
                attempts: st.attempts,
                took: match (st.started_ms, st.finished_ms) {
                    (Some(a), Some(b)) => view::duration(b.saturating_sub(a)),
                    _ => String::new(),
                },
                started: st.started_ms.map(view::time),
                input: st.input.as_ref().map(view::json_html),
                output: st.output.as_ref().map(view::json_html),
                error: st.error.as_ref().map(view::json_html),
                logs,
                audit,
            }
        })
        .collect();
    let mut pending = Vec::new();
    if let Some(store) = s.engine.store.approvals() {
        for st in run.steps.iter().filter(|st| st.state == "waiting" && st.kind == "approval") {
            if let Some(a) = store.approval(id, &st.step_id)? {
                if a.state == "pending" {
                    pending.push(pending_view(&a, &v.scope));
                }
            }
        }
    }
    // A run parked in a sub-story: its question is asked there.
    let waiting_children: Vec<RunRow> = run.children.iter().filter(|c| c.state == "waiting").map(row).collect();
    let children: Vec<RunRow> = run.children.iter().map(row).collect();
    let ended = !matches!(run.run.state.as_str(), "queued" | "running" | "waiting");
    let summary = row(&run.run);
    let ctx = context! {
        run => summary,
        parent_run => run.run.parent_run,
        trace_id => run.run.trace_id,
        parent_step => run.run.parent_step,
        failed_step => run.run.failed_step,
        error => run.run.error,
        started => run.run.started_ms.map(view::time),
        finished => run.run.finished_ms.map(view::time),
        input => minijinja::Value::from_safe_string(view::json_html(&run.input)),
        output => run.output.as_ref().map(|o| minijinja::Value::from_safe_string(view::json_html(o))),
        bars, span,
        steps, pending, waiting_children, children, csrf => v.csrf.clone(), ended,
    };
    Ok(Some((render_text("run_body.html", ctx), ended)))
}

async fn run_page(State(s): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let (v, _) = match who(&s, &headers) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let (viewer, run) = (v.clone(), id.clone());
    match off_runtime(&s, move |s| run_body(s, &viewer, &run)).await {
        Ok(Some((body, ended))) => {
            let live = (!ended)
                .then(|| format!("/console/live?run={}&seen={}", url::form_urlencoded::byte_serialize(id.as_bytes()).collect::<String>(), digest(&body)));
            let ctx = context! { ..frame(&v, &s, "runs"), ..context! { id, body => minijinja::Value::from_safe_string(body), live } };
            page(StatusCode::OK, "run.html", ctx)
        }
        // Another team's run is answered as if it did not exist.
        Ok(None) => not_found("such run"),
        Err(e) => store_down(e),
    }
}

// ---- live updates ----

/// What a live view compares to decide whether to redraw.
fn digest(body: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    body.hash(&mut h);
    h.finish()
}

#[derive(serde::Deserialize)]
struct LiveQuery {
    run: Option<String>,
    /// The digest of what the page already shows: no redraw until it changes.
    /// (A string: numbers do not deserialize through `flatten` from a query.)
    seen: Option<String>,
    #[serde(flatten)]
    runs: RunsQuery,
}

async fn live(State(s): State<AppState>, headers: HeaderMap, Query(q): Query<LiveQuery>) -> Response {
    let (v, _) = match who(&s, &headers) {
        Ok(v) => v,
        Err(r) => return r,
    };
    if let Some(why) = q.run.is_none().then(|| q.runs.invalid()).flatten() {
        return said(StatusCode::BAD_REQUEST, "Not a filter", &why);
    }
    let Some(mine) = s.console.open_stream(&session::scope_text(&v.scope), v.session.clone()) else {
        return said(StatusCode::TOO_MANY_REQUESTS, "Too many live views", &format!("You (or your team) have as many live views open as one may ({MAX_STREAMS_PER_VIEWER} a session, {MAX_STREAMS_PER_PRINCIPAL} a team); close some tabs."));
    };
    let Ok(permit) = s.console.streams.clone().try_acquire_owned() else {
        return said(StatusCode::SERVICE_UNAVAILABLE, "Busy", "Too many live views are open; reload later.");
    };
    let permit = (permit, mine);
    let started = Instant::now();
    let seen = q.seen.as_deref().and_then(|h| h.parse::<u64>().ok());
    let stream = futures::stream::unfold((s, v, q, seen, permit, false), move |(s, v, q, last, permit, done)| async move {
        if done {
            return None;
        }
        loop {
            if started.elapsed() > STREAM_LIFETIME {
                return None;
            }
            let (viewer, run, runs) = (v.clone(), q.run.clone(), q.runs.clone());
            let drawn = off_runtime(&s, move |s| match &run {
                Some(id) => Ok(run_body(s, &viewer, id)?.map(|(body, ended)| ("run", body, ended))),
                None => Ok(Some(("runs", runs_body(s, &viewer, &runs)?, false))),
            });
            let (name, body, ended) = match drawn.await {
                Ok(Some(drawn)) => drawn,
                Ok(None) => return None,
                Err(_) => ("", String::new(), false),
            };
            if !name.is_empty() {
                let h = digest(&body);
                if last != Some(h) {
                    // JSON: the HTML may hold any character; an SSE data line may not.
                    let data = serde_json::json!({"html": body, "ended": ended}).to_string();
                    let event = Event::default().event(name).data(data);
                    return Some((Ok::<Event, std::convert::Infallible>(event), (s, v, q, Some(h), permit, ended)));
                }
            }
            tokio::time::sleep(LIVE_EVERY).await;
        }
    });
    let mut r = Sse::new(stream).keep_alive(KeepAlive::default()).into_response();
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

// ---- approvals ----

async fn approvals_page(State(s): State<AppState>, headers: HeaderMap) -> Response {
    let (v, _) = match who(&s, &headers) {
        Ok(v) => v,
        Err(r) => return r,
    };
    if s.engine.store.approvals().is_none() {
        return not_found("approvals page: this run store keeps no approvals");
    }
    let scope = v.scope.clone();
    let listed = off_runtime(&s, move |s| {
        let Some(store) = s.engine.store.approvals() else { return Ok(Vec::new()) };
        let team = match &scope {
            Scope::All => None,
            Scope::Team(t) => Some(t.as_str()),
        };
        store.list_approvals(&ApprovalFilter { team, story: None, all: false, limit: 200 })
    });
    let pending = match listed.await {
        Ok(list) => list.iter().map(|a| pending_view(a, &v.scope)).collect::<Vec<_>>(),
        Err(e) => return store_down(e),
    };
    let ctx = context! { ..frame(&v, &s, "approvals"), ..context! { pending } };
    page(StatusCode::OK, "approvals.html", ctx)
}

/// A console page to return to: a path on the console, in printable ASCII
/// (it becomes a `Location` header), else the approvals page.
fn back_to(back: Option<&String>) -> String {
    back.filter(|b| {
        b.starts_with("/console/") && !b.starts_with("/console//") && !b.contains('\\') && b.len() <= 2048 && b.bytes().all(|c| c.is_ascii_graphic())
    })
    .cloned()
    .unwrap_or_else(|| "/console/approvals".into())
}

/// `POST /console/approvals/{run}/{step}`: `choice`, `comment`, `csrf`, `back`.
async fn decide(
    State(s): State<AppState>,
    ext: axum::http::Extensions,
    headers: HeaderMap,
    Path((run, step)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let (v, form) = match checked_post(&s, &headers, &body) {
        Ok(x) => x,
        Err(r) => return r,
    };
    if s.engine.store.approvals().is_none() {
        return not_found("approval");
    }
    let found = off_runtime(&s, move |s| s.engine.store.approvals().map_or(Ok(None), |store| store.approval(&run, &step)));
    let a = match found.await {
        Ok(Some(a)) => a,
        Ok(None) => return not_found("such approval"),
        Err(e) => return store_down(e),
    };
    // The API's rules: another team's approval (not listing this team) does not exist.
    let Some((approver, who)) = super::approvals::decider(&v.scope, &a) else { return not_found("such approval") };
    let comment = form.get("comment").map(|c| c.trim().to_string()).filter(|c| !c.is_empty());
    let from = super::approvals::from(&ext, &headers);
    let d = crate::approval::Decision { choice: None, decided_by: format!("{who} (console)"), via: "console".into(), from, comment, decided_ms: now_ms() };
    let choice = form.get("choice").cloned().unwrap_or_default();
    // Where to go afterwards, settled before anything is decided: a `back`
    // that could not be answered (a newline, a control character) must not
    // turn a decision already taken into an error page.
    let back = back_to(form.get("back"));
    match super::approvals::decide(&s, a, choice, approver, d).await {
        Ok(Ok(_)) => {
            s.approvals_poke.notify_one();
            Redirect::to(&back).into_response()
        }
        Ok(Err(crate::approval::Refused::Over(a))) => said(StatusCode::GONE, "This approval is over", &format!("{} — {}", a.title, a.what_happened())),
        Ok(Err(crate::approval::Refused::NotAnApprover(m))) => said(StatusCode::FORBIDDEN, "Not yours to decide", &m),
        Ok(Err(r)) => said(StatusCode::BAD_REQUEST, "Not decided", &r.to_string()),
        Err(e) => store_down(e),
    }
}

// ---- stories ----

#[derive(Serialize)]
struct StoryView {
    name: String,
    team: String,
    description: String,
    file: String,
    webhook: Option<String>,
    schedule: Option<String>,
    graph: view::Graph,
    recent: Vec<RunRow>,
    runs_link: String,
    succeeded: u64,
    ended: u64,
    rate: Option<String>,
    /// The counts cover the latest [`crate::store::COUNT_CAP`] runs only.
    capped: bool,
}

async fn stories_page(State(s): State<AppState>, headers: HeaderMap) -> Response {
    let (v, _) = match who(&s, &headers) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let base = s.engine.links_base().trim_end_matches('/').to_string();
    let mut stories = Vec::new();
    for (name, st) in s.engine.library.stories.iter().filter(|(_, st)| sees_team(&v.scope, &st.team)) {
        let trigger = s.policy.triggers.get(name);
        let story = name.clone();
        let read = off_runtime(&s, move |s| {
            let filter = RunFilter { story: Some(&story), limit: 5, ..Default::default() };
            Ok((s.engine.store.find_runs(&filter)?, s.engine.store.count_runs(&filter)?))
        });
        let (recent, counts) = match read.await {
            Ok(read) => read,
            Err(e) => return store_down(e),
        };
        let count = |state: &str| counts.iter().filter(|(k, _)| k == state).map(|(_, n)| *n).sum::<u64>();
        let succeeded = count("succeeded");
        let ended = succeeded + count("failed") + count("cancelled");
        stories.push(StoryView {
            name: name.clone(),
            team: st.team.clone(),
            description: st.description.clone(),
            file: st.file.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default(),
            webhook: trigger.filter(|t| t.secret.is_some()).map(|_| format!("{base}/webhooks/{name}")),
            schedule: trigger.and_then(|t| t.schedule.clone()),
            graph: view::graph(st),
            recent: recent.iter().map(row).collect(),
            runs_link: format!("/console/runs?{}", query_of(&[("story", name)])),
            succeeded,
            ended,
            rate: (ended > 0).then(|| format!("{:.0} %", succeeded as f64 * 100.0 / ended as f64)),
            capped: counts.iter().map(|(_, n)| n).sum::<u64>() >= crate::store::COUNT_CAP,
        });
    }
    let ctx =
        context! { ..frame(&v, &s, "stories"), ..context! { stories, count_cap => crate::store::COUNT_CAP, node_w => view::NODE_W, node_h => view::NODE_H } };
    page(StatusCode::OK, "stories.html", ctx)
}

// ---- policy ----

async fn policy_page(State(s): State<AppState>, headers: HeaderMap) -> Response {
    let (v, _) = match who(&s, &headers) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let policy = s.policy.clone();
    let invoker = s.engine.invoker.clone();
    // Judging trust loads each plugin once: done at the first view, then kept
    // (the policy does not change while the server runs).
    let all = s
        .console
        .explained
        .get_or_init(|| async move {
            let teams: Vec<String> = if policy.teams.is_empty() { vec![String::new()] } else { policy.teams.keys().cloned().collect() };
            let mut out = Vec::new();
            for team in &teams {
                for name in policy.plugins.keys() {
                    out.push(match invoker.runtime() {
                        Some(rt) => crate::explain::plugin(rt, &policy, name, team).await,
                        None => crate::explain::Explained {
                            plugin: name.clone(),
                            team: team.clone(),
                            trust: "not judged (no plugin runtime in this server)".into(),
                            refused: false,
                            lines: crate::explain::grant_lines(&policy, name, team),
                        },
                    });
                }
            }
            out
        })
        .await;
    let shown: Vec<&crate::explain::Explained> = all.iter().filter(|e| e.team.is_empty() || sees_team(&v.scope, &e.team)).collect();
    let ctx = context! { ..frame(&v, &s, "policy"), ..context! { explained => shown, file => s.policy.file.clone() } };
    page(StatusCode::OK, "policy.html", ctx)
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
