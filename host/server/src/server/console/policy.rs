//! The policy page: the policy as `warden policy explain` says it.

use super::*;

pub(super) async fn policy_page(State(s): State<AppState>, headers: HeaderMap) -> Response {
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
