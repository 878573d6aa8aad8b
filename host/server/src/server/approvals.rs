//! Approvals on the server: the link pages people open from an email, the
//! API, and the sweep that enforces timeouts and wakes decided runs.
//!
//! `GET /approvals/{token}` only shows what the link would decide (mail
//! gateways fetch links to scan them: a GET must never decide);
//! `POST /approvals/{token}` decides. A link that is over answers `410` with
//! what happened. The sweep runs on every node every [`SWEEP_EVERY`] (and at
//! once after a decision here): pending approvals past their deadline get
//! their `on_timeout`, and waiting runs whose approval is over move back to
//! `running` — exactly once across nodes, by the store's atomic updates —
//! and resume (here, or on whichever node claims them).

use super::queue::Start;
use super::{error, AppState, Principal, Scope};
use crate::approval::{self, Approval, Decision, Refused};
use crate::policy::access::Action;
use crate::store::{off_runtime, ApprovalFilter};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, Extensions, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// How often each node looks for timeouts and runs to wake.
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Most approvals handled per sweep (the rest at the next).
const SWEEP_BATCH: usize = 200;

/// Starts the sweep; the answer wakes it at once (after a decision here).
pub(super) fn start_sweep(queue: super::Queue) -> Arc<Notify> {
    let poke = Arc::new(Notify::new());
    let woken = poke.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(SWEEP_EVERY) => {}
                _ = woken.notified() => {}
            }
            let pass = queue.clone();
            let swept = tokio::task::spawn_blocking(move || sweep(&pass)).await.unwrap_or_else(|e| Err(anyhow::anyhow!("the sweep stopped: {e}")));
            if let Err(e) = swept {
                tracing::error!("approval sweep: {e:#}; trying again in {} s", SWEEP_EVERY.as_secs());
            }
        }
    });
    poke
}

/// One pass: timeouts, then wake-ups.
fn sweep(queue: &super::Queue) -> anyhow::Result<()> {
    let engine = &queue.engine;
    let Some(store) = engine.store.approvals() else { return Ok(()) };
    let now = crate::audit::now_ms();
    for a in store.due_approvals(now, SWEEP_BATCH)? {
        let d = Decision { choice: a.on_timeout.clone(), decided_by: "timeout".into(), via: "timeout".into(), from: None, comment: None, decided_ms: now };
        if let Ok(done) = store.decide(&a.run, &a.step, &d)? {
            tracing::info!(run = %done.run, step = %done.step, "approval timed out: {}", done.what_happened());
        }
    }
    for root in store.runs_to_wake(SWEEP_BATCH)? {
        if !store.wake(&root)? {
            continue;
        }
        tracing::info!(run = %root, "resuming a run whose approval is over");
        match queue.cluster() {
            // Any node with room claims it (as an interrupted run) and resumes it.
            Some(cluster) => {
                if let Err(e) = cluster.offer(&root) {
                    tracing::warn!(run = %root, "cannot announce a woken run: {e:#}; nodes find it at their next poll");
                }
            }
            None => {
                let story = engine.store.run_input(&root)?.map(|(s, _)| s).unwrap_or_default();
                queue.push(root, &story, Start::Resume, None);
            }
        }
    }
    Ok(())
}

/// Why a principal may not decide an approval.
pub(super) enum NotDecider {
    /// It may not see it: another team's approval that does not list its team.
    Unseen,
    /// It sees it, but its role does not decide (the one-line reason).
    Role(String),
}

/// Who a principal decides `a` as: the approver its `approvers` must list
/// (none for an every-team principal), and the name audited.
pub(super) fn decider(who: &Principal, a: &Approval) -> Result<(Option<String>, String), NotDecider> {
    let listed = |t: &str| a.approvers.iter().any(|x| *x == format!("team:{t}"));
    let team = match &who.scope {
        Scope::All => None,
        Scope::Team(t) if *t != a.team && !listed(t) => return Err(NotDecider::Unseen),
        Scope::Team(t) => Some(t.clone()),
    };
    // A team an approval lists decides it as that team's, by the role it holds there.
    if !who.may(Action::Decide, Some(team.as_deref().unwrap_or(&a.team))) {
        return Err(NotDecider::Role(who.refused(Action::Decide)));
    }
    Ok(match team {
        None => (None, who.name.clone()),
        Some(t) => (Some(format!("team:{t}")), who.name.clone()),
    })
}

/// The address a decision came from: the peer, and what a proxy in front says.
pub(super) fn from(ext: &Extensions, headers: &HeaderMap) -> Option<String> {
    let peer = ext.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip().to_string());
    let forwarded = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()).map(|v| crate::invocation::guest_text(v, 200));
    match (peer, forwarded) {
        (Some(p), Some(f)) => Some(format!("{p} (X-Forwarded-For: {f})")),
        (p, f) => p.or(f),
    }
}

fn page(code: StatusCode, template: &str, ctx: minijinja::Value) -> Response {
    static ENV: std::sync::OnceLock<minijinja::Environment<'static>> = std::sync::OnceLock::new();
    let env = ENV.get_or_init(|| {
        // `.html`: everything a template prints is HTML-escaped (titles and
        // details come from stories and from plugin output).
        let mut env = minijinja::Environment::new();
        env.add_template("layout.html", LAYOUT).expect("valid template");
        env.add_template("ask.html", ASK).expect("valid template");
        env.add_template("said.html", SAID).expect("valid template");
        env
    });
    let body = env.get_template(template).and_then(|t| t.render(ctx)).unwrap_or_else(|e| format!("cannot render this page: {e}"));
    (
        code,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            // No script at all; the form posts back here only.
            (header::CONTENT_SECURITY_POLICY, "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
            // The token is in the URL: never pass it on to another site.
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

fn said(code: StatusCode, heading: &str, text: &str) -> Response {
    page(code, "said.html", minijinja::context! { heading, text })
}

/// The approval and link a link token's hash names (`None`: no such link,
/// or a store that keeps no approvals), read off the runtime.
pub(super) async fn by_link(s: &AppState, hash: String) -> anyhow::Result<Option<(Approval, approval::Link)>> {
    off_runtime(&s.engine.store, move |st| match st.approvals() {
        Some(store) => store.approval_by_link(&hash),
        None => Ok(None),
    })
    .await
}

/// The approval of `run` at `step`, read off the runtime.
async fn approval_at(s: &AppState, run: &str, step: &str) -> anyhow::Result<Option<Approval>> {
    let (run, step) = (run.to_string(), step.to_string());
    off_runtime(&s.engine.store, move |st| match st.approvals() {
        Some(store) => store.approval(&run, &step),
        None => Ok(None),
    })
    .await
}

/// Takes `choice` on `a` as `approver` (see [`crate::store::decide`]), off the runtime.
/// Every decision (console, API, link, Slack) passes here, and so into the
/// audit log of people, taken or refused.
pub(super) async fn decide(
    s: &AppState,
    a: Approval,
    choice: String,
    approver: Option<String>,
    confirmed: bool,
    d: Decision,
) -> anyhow::Result<approval::Decided> {
    let (team, target, actor, from) = (a.team.clone(), format!("{}/{}", a.run, a.step), d.decided_by.clone(), d.from.clone());
    let detail = format!("choice {} via {}", crate::invocation::guest_text(&choice, 100), d.via);
    let decided = off_runtime(&s.engine.store, move |st| {
        let store = st.approvals().ok_or_else(|| anyhow::anyhow!("this run store keeps no approvals"))?;
        crate::store::decide(store, &a, &choice, approver.as_deref(), confirmed, d)
    })
    .await;
    let (outcome, detail) = match &decided {
        Ok(Ok(_)) => ("ok", detail),
        Ok(Err(why)) => ("refused", format!("{detail}: {why}")),
        Err(e) => ("failed", format!("{detail}: run store unavailable: {e}")),
    };
    let entry = crate::store::Activity {
        target: Some(target),
        detail: Some(detail),
        from,
        ..crate::store::Activity::now("approval.decide", &actor, Some(&team), outcome)
    };
    super::access::note(s, entry).await;
    decided
}

/// The link's approval and link, or the page that says why there is none.
async fn open_link(s: &AppState, token: &str) -> Result<(Approval, approval::Link), Response> {
    let unknown = || {
        said(
            StatusCode::NOT_FOUND,
            "Unknown link",
            "This approval link is not known here. If the run has not reached its approval step yet, try again in a moment.",
        )
    };
    if token.starts_with(approval::PLACEHOLDER_PREFIX) {
        return Err(said(StatusCode::NOT_FOUND, "Not a link that decides", "This is an approval link as the run record keeps it (its token is sealed); it decides nothing. The link that decides went to the approver, by the step that sent it."));
    }
    if !approval::looks_like_token(token) {
        return Err(unknown());
    }
    match by_link(s, approval::token_hash(token)).await {
        Ok(Some(found)) => Ok(found),
        Ok(None) => Err(unknown()),
        Err(e) => Err(said(StatusCode::SERVICE_UNAVAILABLE, "Try again later", &format!("The run store is unavailable: {e}"))),
    }
}

fn over(a: &Approval) -> Response {
    said(StatusCode::GONE, "This approval is over", &format!("{} — {}", a.title, a.what_happened()))
}

/// `GET /approvals/{token}`: what the link decides, and a button to confirm it. Decides nothing.
pub(super) async fn show(State(s): State<AppState>, Path(token): Path<String>) -> Response {
    let (a, link) = match open_link(&s, &token).await {
        Ok(found) => found,
        Err(page) => return page,
    };
    if a.state != "pending" {
        return over(&a);
    }
    if link.recipient.is_empty() && !a.approvers.is_empty() {
        return said(
            StatusCode::FORBIDDEN,
            "Not yours to decide",
            &format!("This approval is restricted to {}; each of them has links of their own.", a.approvers.join(", ")),
        );
    }
    let details = match &a.details {
        serde_json::Value::Null => String::new(),
        serde_json::Value::String(t) => t.clone(),
        other => serde_json::to_string_pretty(other).unwrap_or_default(),
    };
    let ctx = minijinja::context! {
        title => a.title,
        details,
        story => a.story,
        run => a.run,
        choice => link.choice,
        recipient => link.recipient,
        deadline => approval::rfc3339(a.deadline_ms),
        max_comment => approval::MAX_COMMENT,
    };
    page(StatusCode::OK, "ask.html", ctx)
}

/// `POST /approvals/{token}` (a form: optional `comment`): decides.
pub(super) async fn decide_by_link(State(s): State<AppState>, Path(token): Path<String>, ext: Extensions, headers: HeaderMap, body: Bytes) -> Response {
    let (a, link) = match open_link(&s, &token).await {
        Ok(found) => found,
        Err(page) => return page,
    };
    let comment = url::form_urlencoded::parse(&body).find(|(k, _)| k == "comment").map(|(_, v)| v.trim().to_string()).filter(|c| !c.is_empty());
    // A link addressed to nobody decides only when anyone may.
    let approver = if link.recipient.is_empty() {
        (!a.approvers.is_empty()).then_some("the holder of a link addressed to no approver")
    } else {
        Some(link.recipient.as_str())
    };
    let decided_by = if link.recipient.is_empty() { "link holder".to_string() } else { link.recipient.clone() };
    let d = Decision { choice: None, decided_by, via: "link".into(), from: from(&ext, &headers), comment, decided_ms: crate::audit::now_ms() };
    // The link's page asked "nothing is decided until you confirm": this POST is the confirmation.
    match decide(&s, a, link.choice, approver.map(String::from), true, d).await {
        Ok(Ok(done)) => {
            s.approvals_poke.notify_one();
            said(StatusCode::OK, "Decision recorded", &format!("{} — {}. The run continues.", done.title, done.what_happened()))
        }
        Ok(Err(Refused::Over(a))) => over(&a),
        Ok(Err(Refused::NotAnApprover(m))) => said(StatusCode::FORBIDDEN, "Not yours to decide", &m),
        Ok(Err(r)) => said(StatusCode::BAD_REQUEST, "Not decided", &r.to_string()),
        Err(e) => said(StatusCode::SERVICE_UNAVAILABLE, "Try again later", &format!("The run store is unavailable: {e}")),
    }
}

/// `GET /api/approvals[?story=S&all=true]`: pending approvals (every one with `all`), oldest first.
pub(super) async fn list(State(s): State<AppState>, headers: HeaderMap, Query(q): Query<HashMap<String, String>>) -> Response {
    let who = match s.principal(&headers).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let scope = who.scope.clone();
    let listed = off_runtime(&s.engine.store, move |st| {
        let Some(store) = st.approvals() else { return Ok(Vec::new()) };
        let team = scope.team().or(q.get("team").map(String::as_str));
        let limit = q.get("limit").and_then(|l| l.parse().ok()).unwrap_or(100usize).min(1000);
        let filter = ApprovalFilter { team, story: q.get("story").map(String::as_str), all: q.get("all").is_some_and(|v| v == "true" || v == "1"), limit };
        store.list_approvals(&filter)
    });
    match listed.await {
        Ok(list) => Json(json!({"approvals": list})).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("run store unavailable: {e:#}")),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DecideBody {
    choice: String,
    #[serde(default)]
    comment: Option<String>,
    /// Confirms a choice the story marks `confirm: true`.
    #[serde(default)]
    confirm: bool,
}

/// `POST /api/approvals/{run}/{step}` `{choice, comment?, confirm?}`: decides as the API token's team
/// (`team:NAME`, which `approvers` may restrict) or, with the admin token, as the operator.
pub(super) async fn decide_by_api(
    State(s): State<AppState>,
    Path((run, step)): Path<(String, String)>,
    ext: Extensions,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let who = match s.principal(&headers).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let body: DecideBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("send JSON {{\"choice\": \"…\", \"comment\": \"…\"}}: {e}")),
    };
    if s.engine.store.approvals().is_none() {
        return error(StatusCode::NOT_FOUND, "this run store keeps no approvals");
    }
    let no_such = || {
        error(
            StatusCode::NOT_FOUND,
            format!("run `{}` has no approval step `{}`", crate::invocation::guest_text(&run, 64), crate::invocation::guest_text(&step, 64)),
        )
    };
    let a = match approval_at(&s, &run, &step).await {
        Ok(Some(a)) => a,
        Ok(None) => return no_such(),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, format!("run store unavailable: {e:#}")),
    };
    // Another team's approval is answered as if it did not exist.
    let (approver, decided_by) = match decider(&who, &a) {
        Ok(d) => d,
        Err(NotDecider::Unseen) => return no_such(),
        Err(NotDecider::Role(why)) => return error(StatusCode::FORBIDDEN, why),
    };
    let d = Decision {
        choice: None,
        decided_by,
        via: "api".into(),
        from: from(&ext, &headers),
        comment: body.comment.filter(|c| !c.trim().is_empty()),
        decided_ms: crate::audit::now_ms(),
    };
    match decide(&s, a, body.choice, approver, body.confirm, d).await {
        Ok(Ok(done)) => {
            s.approvals_poke.notify_one();
            Json(json!({"approval": done})).into_response()
        }
        Ok(Err(Refused::Over(a))) => {
            (StatusCode::GONE, Json(json!({"error": format!("this approval is over: {}", a.what_happened()), "approval": a}))).into_response()
        }
        Ok(Err(Refused::NotAnApprover(m))) => error(StatusCode::FORBIDDEN, m),
        Ok(Err(Refused::BadChoice(m) | Refused::Unconfirmed(m))) => error(StatusCode::BAD_REQUEST, m),
        Ok(Err(Refused::Unknown(_))) => no_such(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("run store unavailable: {e:#}")),
    }
}

const LAYOUT: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer"><title>{% block title %}warden{% endblock %}</title>
<style>
body{font:16px/1.5 system-ui,sans-serif;max-width:40rem;margin:2rem auto;padding:0 1rem}
pre{white-space:pre-wrap;background:rgba(127,127,127,.12);padding:.75rem;border-radius:4px;overflow-wrap:anywhere}
button{font:inherit;padding:.5rem 1.25rem;cursor:pointer}
textarea{width:100%;font:inherit}
@media (prefers-color-scheme: dark){body{background:#111;color:#ddd}}
</style></head><body>{% block body %}{% endblock %}</body></html>"#;

const ASK: &str = r#"{% extends "layout.html" %}{% block title %}Approve: {{ title }}{% endblock %}{% block body %}
<h1>{{ title }}</h1>
<p>Story <b>{{ story }}</b>, run <code>{{ run }}</code>. Open until {{ deadline }}.</p>
{% if details %}<pre>{{ details }}</pre>{% endif %}
<form method="post">
<p>This link decides: <b>{{ choice }}</b>{% if recipient %}, as {{ recipient }}{% endif %}. Nothing is decided until you confirm.</p>
<p><label>Comment (optional)<br><textarea name="comment" rows="3" maxlength="{{ max_comment }}"></textarea></label></p>
<p><button type="submit">Confirm: {{ choice }}</button></p>
</form>
{% endblock %}"#;

const SAID: &str = r#"{% extends "layout.html" %}{% block title %}{{ heading }}{% endblock %}{% block body %}
<h1>{{ heading }}</h1>
<p>{{ text }}</p>
{% endblock %}"#;
