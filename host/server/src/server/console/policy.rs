//! The admin's pages: the policy as `warden policy explain` says it, and the audit log of what people did.

use super::*;

pub(super) async fn policy_page(State(s): State<AppState>, headers: HeaderMap) -> Response {
    let (v, _) = match who(&s, &headers).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    // The policy view is an admin's (of a team: its plugins' grants and the policy-wide ones).
    if !v.principal.may(Action::ReadPolicy, v.principal.scope.team()) {
        return said(StatusCode::FORBIDDEN, "Not yours to read", &v.principal.refused(Action::ReadPolicy));
    }
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
    let shown: Vec<&crate::explain::Explained> = all.iter().filter(|e| e.team.is_empty() || sees_team(&v.principal.scope, &e.team)).collect();
    let ctx = context! { ..frame(&v, &s, "policy"), ..context! { explained => shown, file => s.policy.file.clone() } };
    page(StatusCode::OK, "policy.html", ctx)
}

/// `/console/audit-log[?actor=&action=&after=]`: what people did, newest last.
pub(super) async fn audit_log_page(State(s): State<AppState>, headers: HeaderMap, Query(q): Query<HashMap<String, String>>) -> Response {
    let (v, _) = match who(&s, &headers).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let who = v.principal.clone();
    let read = off_runtime(&s, move |s| crate::server::access::read_audit_log(s.engine.store.as_ref(), &who, &q));
    let entries = match read.await {
        Ok(Ok(entries)) => entries,
        Ok(Err(why)) => return said(StatusCode::FORBIDDEN, "Not yours to read", &why),
        Err(e) => return store_down(e),
    };
    let rows: Vec<minijinja::Value> = entries
        .iter()
        .map(|e| context! { id => e.id, at => view::time(e.at_ms), actor => e.actor, action => e.action, team => e.team, target => e.target, outcome => e.outcome, detail => e.detail, from => e.from })
        .collect();
    let ctx = context! { ..frame(&v, &s, "audit-log"), ..context! { entries => rows } };
    page(StatusCode::OK, "audit_log.html", ctx)
}
