//! Who a request is from, and what they may do: the one layer the API, the
//! console and the approval decisions go through.
//!
//! A request's bearer token (or its console session, see
//! [`super::console::session`]) names a [`Principal`]: the policy's tokens
//! (`[server] api_token_env`: an admin of every team; `[teams.T]
//! api_token_env`: an admin of team T) or a service account's token kept in
//! the run store (`warden tokens create`: one role, in one team or every
//! team; revocable; each use noted). What the principal may do is
//! [`Principal::may`], which is [`crate::policy::access::may`]: the same rule
//! for every route, page and button.

use super::{error, AppState};
use crate::policy::access::{self, Action, Membership, TeamRole};
use crate::policy::Policy;
use crate::store::{off_runtime, Activity};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;

/// Which teams' things a principal sees.
#[derive(Debug, Clone, PartialEq)]
pub enum Scope {
    All,
    Team(String),
}

impl Scope {
    /// The one team, if the scope is one team.
    pub fn team(&self) -> Option<&str> {
        match self {
            Scope::All => None,
            Scope::Team(t) => Some(t),
        }
    }
}

/// Someone (or something) a request is from.
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    /// As decisions and logs name them: `admin`, `team:soc`, `token:ci-bot`.
    pub name: String,
    pub scope: Scope,
    pub role: TeamRole,
}

impl Principal {
    /// Every team's admin: the `[server]` token, or anyone on a server with no token.
    pub fn admin() -> Principal {
        Principal { name: "admin".into(), scope: Scope::All, role: TeamRole::Admin }
    }

    /// Whether this principal may do `action` to something of `team`
    /// (`None`: of no one team).
    pub fn may(&self, action: Action, team: Option<&str>) -> bool {
        access::may(&[self.membership()], action, team)
    }

    fn membership(&self) -> Membership {
        Membership { team: self.scope.team().map(String::from), role: self.role }
    }

    /// Why `action` is refused to this principal, in one line.
    pub fn refused(&self, action: Action) -> String {
        let needs: Vec<&str> = TeamRole::ALL.iter().filter(|r| r.allows(action)).map(|r| r.name()).collect();
        format!("{} has the {} role, which may not {}; {} may", self.name, self.role, what(action), needs.join(" or "))
    }
}

fn what(action: Action) -> &'static str {
    match action {
        Action::Read => "read",
        Action::Decide => "decide approvals",
        Action::Start => "start runs",
        Action::ReadPolicy => "read the policy",
        Action::ReadAuditLog => "read the audit log",
    }
}

/// The `/api/*` tokens of the policy, kept as digests (compared as digests,
/// so timing says nothing about a token); service accounts' are in the store.
pub struct ApiTokens(pub(super) Vec<([u8; 32], Principal)>);

impl ApiTokens {
    pub(super) fn load(policy: &Policy) -> anyhow::Result<ApiTokens> {
        let mut tokens = Vec::new();
        if let Some(src) = &policy.server.api_token {
            let t = src.read().map_err(|e| anyhow::anyhow!("[server] api_token_env: {e}"))?;
            tokens.push((token_digest(t.expose()), Principal::admin()));
        }
        for team in policy.teams.values() {
            if let Some(src) = &team.api_token {
                let t = src.read().map_err(|e| anyhow::anyhow!("[teams.{}] api_token_env: {e}", team.name))?;
                let p = Principal { name: format!("team:{}", team.name), scope: Scope::Team(team.name.clone()), role: TeamRole::Admin };
                tokens.push((token_digest(t.expose()), p));
            }
        }
        Ok(ApiTokens(tokens))
    }

    /// Whether the server has no token at all: it then serves loopback only, to anyone.
    pub fn is_open(&self) -> bool {
        self.0.is_empty()
    }

    /// The policy token `given` is, with its digest.
    pub fn find(&self, given: &str) -> Option<(Principal, [u8; 32])> {
        if given.is_empty() {
            return None;
        }
        let digest = token_digest(given);
        self.by_digest(&digest).map(|p| (p, digest))
    }

    fn by_digest(&self, digest: &[u8; 32]) -> Option<Principal> {
        self.0.iter().find(|(d, _)| d == digest).map(|(_, p)| p.clone())
    }
}

/// What is kept of an API token, the policy's or a service account's, and
/// looked up by (the store's digest: see [`crate::store::service_token_digest`]).
fn token_digest(token: &str) -> [u8; 32] {
    crate::store::service_token_digest(token)
}

/// The bearer token of a request, if it sends one.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "))
}

/// The principal a token is: a policy token, else a service account's
/// (its use noted in the store). `Ok(None)`: no one.
pub(in crate::server) async fn principal_of(s: &AppState, given: &str) -> anyhow::Result<Option<Principal>> {
    if given.is_empty() {
        return Ok(None);
    }
    // One digest, looked up among the policy's tokens, then the store's.
    let digest = token_digest(given);
    if let Some(p) = s.tokens.by_digest(&digest) {
        return Ok(Some(p));
    }
    if given.len() > 512 {
        return Ok(None);
    }
    let now = crate::audit::now_ms();
    let found = off_runtime(&s.engine.store, move |st| st.tokens().map_or(Ok(None), |t| t.use_token(&digest, now))).await?;
    let Some(t) = found else { return Ok(None) };
    let name = format!("token:{}", t.name);
    // A role this warden does not know (written by a newer one) is no role: refused.
    let role = match TeamRole::parse(&t.role) {
        Ok(r) => r,
        Err(e) => {
            note(s, Activity { detail: Some(e), ..Activity::now("token.use", &name, t.team.as_deref(), "refused") }).await;
            return Ok(None);
        }
    };
    note(s, Activity::now("token.use", &name, t.team.as_deref(), "ok")).await;
    Ok(Some(Principal { name, scope: t.team.map_or(Scope::All, Scope::Team), role }))
}

/// Entries a minute from requests no one signed (failed sign-ins): a flood
/// from many addresses is slowed per address already, and must not grow the
/// log without bound either. Past it, the server's log says how many were
/// not kept.
pub const MAX_UNSIGNED_ENTRIES_PER_MINUTE: u32 = 60;

/// Whether an unsigned entry may be kept now (see [`MAX_UNSIGNED_ENTRIES_PER_MINUTE`]).
pub(in crate::server) fn unsigned_entry_allowed(now_s: u64) -> bool {
    static WINDOW: std::sync::Mutex<(u64, u32)> = std::sync::Mutex::new((0, 0));
    let mut w = WINDOW.lock().unwrap_or_else(|p| p.into_inner());
    let minute = now_s / 60;
    if w.0 != minute {
        if w.1 > MAX_UNSIGNED_ENTRIES_PER_MINUTE {
            tracing::warn!(dropped = w.1 - MAX_UNSIGNED_ENTRIES_PER_MINUTE, "failed sign-ins past the audit log's budget were not kept (one minute)");
        }
        *w = (minute, 0);
    }
    w.1 = w.1.saturating_add(1);
    w.1 <= MAX_UNSIGNED_ENTRIES_PER_MINUTE
}

/// Keeps what a person or service account did in the audit log of people.
/// The thing is done already: a log that cannot keep it says so in the
/// server's log (with what it was), and the answer stands.
pub(in crate::server) async fn note(s: &AppState, entry: Activity) {
    let kept = off_runtime(&s.engine.store, {
        let entry = entry.clone();
        move |st| st.activity().map_or(Ok(()), |log| log.note(&entry))
    });
    if let Err(e) = kept.await {
        tracing::error!(action = %entry.action, actor = %entry.actor, outcome = %entry.outcome, "the audit log of people could not keep an entry: {e:#}");
    }
}

impl AppState {
    /// Who an `/api/*` request is from; the answer to send when no one.
    pub(super) async fn principal(&self, headers: &HeaderMap) -> Result<Principal, Response> {
        if self.tokens.is_open() {
            return Ok(Principal::admin());
        }
        match principal_of(self, bearer(headers).unwrap_or("")).await {
            Ok(Some(p)) => Ok(p),
            Ok(None) => Err(error(StatusCode::UNAUTHORIZED, "send Authorization: Bearer <api token>")),
            Err(e) => Err(error(StatusCode::SERVICE_UNAVAILABLE, format!("run store unavailable: {e:#}"))),
        }
    }
}

/// What `GET /api/audit-log` and the console's page read: an admin's view,
/// of their team (or of every team, `team=` to narrow it, for an admin of every team).
fn audit_log_filter<'a>(who: &'a Principal, q: &'a std::collections::HashMap<String, String>) -> Result<crate::store::ActivityFilter<'a>, String> {
    if !who.may(Action::ReadAuditLog, who.scope.team()) {
        return Err(who.refused(Action::ReadAuditLog));
    }
    let number = |k: &str| match q.get(k).map(|v| v.parse::<u64>()) {
        None => Ok(None),
        Some(Ok(n)) => Ok(Some(n)),
        Some(Err(_)) => Err(format!("{k} is a number")),
    };
    Ok(crate::store::ActivityFilter {
        after_id: number("after")?.unwrap_or(0),
        since_ms: number("since")?,
        actor: q.get("actor").map(String::as_str),
        action: q.get("action").map(String::as_str),
        team: who.scope.team().or(q.get("team").map(String::as_str)),
        limit: number("limit")?.map_or(200, |l| l as usize).min(crate::store::MAX_ACTIVITY_READ),
    })
}

/// The audit log as `who` may read it, narrowed by `q` (see
/// [`audit_log_filter`]): `Ok(Err(why))` when it may not, or `q` is malformed.
pub(in crate::server) fn read_audit_log(
    st: &dyn crate::store::RunStore,
    who: &Principal,
    q: &std::collections::HashMap<String, String>,
) -> anyhow::Result<Result<Vec<Activity>, String>> {
    let filter = match audit_log_filter(who, q) {
        Ok(f) => f,
        Err(why) => return Ok(Err(why)),
    };
    let Some(log) = st.activity() else { return Ok(Ok(Vec::new())) };
    log.read_activity(&filter).map(Ok)
}

/// `GET /api/audit-log?after=&since=&actor=&action=&team=&limit=`: what people
/// did, oldest first (`after`: the last `id` seen, to read on).
pub(super) async fn audit_log(
    axum::extract::State(s): axum::extract::State<AppState>,
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Response {
    use axum::response::IntoResponse;
    let who = match s.principal(&headers).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    match off_runtime(&s.engine.store, move |st| read_audit_log(st, &who, &q)).await {
        Ok(Ok(entries)) => axum::Json(serde_json::json!({"entries": entries})).into_response(),
        Ok(Err(why)) if why.ends_with(" is a number") => error(StatusCode::BAD_REQUEST, why),
        Ok(Err(why)) => error(StatusCode::FORBIDDEN, why),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, format!("run store unavailable: {e:#}")),
    }
}
