//! The approvals page: pending approvals the viewer may see, and deciding one from the console.

use super::*;

pub(super) async fn approvals_page(State(s): State<AppState>, headers: HeaderMap) -> Response {
    let (v, _) = match who(&s, &headers).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    if s.engine.store.approvals().is_none() {
        return not_found("approvals page: this run store keeps no approvals");
    }
    let scope = v.principal.scope.clone();
    let listed = off_runtime(&s, move |s| {
        let Some(store) = s.engine.store.approvals() else { return Ok(Vec::new()) };
        store.list_approvals(&ApprovalFilter { team: scope.team(), story: None, all: false, limit: 200 })
    });
    let pending = match listed.await {
        Ok(list) => list.iter().map(|a| pending_view(a, &v.principal)).collect::<Vec<_>>(),
        Err(e) => return store_down(e),
    };
    let ctx = context! { ..frame(&v, &s, "approvals"), ..context! { pending } };
    page(StatusCode::OK, "approvals.html", ctx)
}

/// A console page to return to: a path on the console, in printable ASCII
/// (it becomes a `Location` header), else the approvals page.
pub(super) fn back_to(back: Option<&String>) -> String {
    back.filter(|b| {
        b.starts_with("/console/") && !b.starts_with("/console//") && !b.contains('\\') && b.len() <= 2048 && b.bytes().all(|c| c.is_ascii_graphic())
    })
    .cloned()
    .unwrap_or_else(|| "/console/approvals".into())
}

/// `POST /console/approvals/{run}/{step}`: `choice`, `comment`, `csrf`, `back`.
pub(super) async fn decide(
    State(s): State<AppState>,
    ext: axum::http::Extensions,
    headers: HeaderMap,
    Path((run, step)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let (v, form) = match checked_post(&s, &headers, &body).await {
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
    let (approver, who) = match crate::server::approvals::decider(&v.principal, &a) {
        Ok(d) => d,
        Err(crate::server::approvals::NotDecider::Unseen) => return not_found("such approval"),
        Err(crate::server::approvals::NotDecider::Role(why)) => return said(StatusCode::FORBIDDEN, "Not yours to decide", &why),
    };
    let comment = form.get("comment").map(|c| c.trim().to_string()).filter(|c| !c.is_empty());
    let from = crate::server::approvals::from(&ext, &headers);
    let d = crate::approval::Decision { choice: None, decided_by: format!("{who} (console)"), via: "console".into(), from, comment, decided_ms: now_ms() };
    let choice = form.get("choice").cloned().unwrap_or_default();
    // A choice the story marks `confirm: true` is asked again, on a page of its own.
    let confirmed = form.get("confirmed").is_some_and(|c| c == "yes");
    if !confirmed && a.confirm.contains(&choice) {
        let back = back_to(form.get("back"));
        let comment = form.get("comment").cloned().unwrap_or_default();
        let ask = context! { run => a.run, step => a.step, story => a.story, title => a.title, choice, danger => a.danger.contains(&choice), comment, back };
        return page(StatusCode::OK, "confirm.html", context! { ..frame(&v, &s, "approvals"), ..ask });
    }
    // Where to go afterwards, settled before anything is decided: a `back`
    // that could not be answered (a newline, a control character) must not
    // turn a decision already taken into an error page.
    let back = back_to(form.get("back"));
    match crate::server::approvals::decide(&s, a, choice, approver, confirmed, d).await {
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
