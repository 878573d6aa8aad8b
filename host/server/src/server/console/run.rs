//! A run's page: its steps' timeline with inputs, outputs, logs and audit, and its pending approvals.

use super::*;

#[derive(Serialize)]
pub(super) struct StepView {
    pub(super) anchor: String,
    pub(super) id: String,
    pub(super) item: Option<u32>,
    pub(super) kind: String,
    pub(super) state: String,
    pub(super) attempts: u32,
    pub(super) took: String,
    pub(super) started: Option<String>,
    pub(super) input: Option<String>,
    pub(super) output: Option<String>,
    pub(super) error: Option<String>,
    pub(super) logs: Vec<LogView>,
    pub(super) audit: Vec<AuditView>,
}

#[derive(Serialize)]
pub(super) struct LogView {
    pub(super) at: String,
    pub(super) level: String,
    pub(super) source: String,
    pub(super) message: String,
}

#[derive(Serialize, Default)]
pub(super) struct AuditView {
    pub(super) at: String,
    pub(super) capability: String,
    pub(super) method: String,
    pub(super) url: String,
    pub(super) denied: bool,
    pub(super) decision: String,
    pub(super) rule: String,
    pub(super) reason: String,
    pub(super) credential: String,
    pub(super) status: String,
    pub(super) request_bytes: String,
    pub(super) response_bytes: String,
    pub(super) took: String,
    /// An approval decision, said in a sentence.
    pub(super) approval: Option<String>,
}

pub(super) fn text_of(v: &serde_json::Value, key: &str) -> String {
    match v.get(key) {
        None | Some(serde_json::Value::Null) => String::new(),
        Some(serde_json::Value::String(t)) => t.clone(),
        Some(other) => other.to_string(),
    }
}

pub(super) fn audit_view(a: &serde_json::Value) -> AuditView {
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
pub(super) struct Pending {
    pub(super) step: String,
    pub(super) run: String,
    pub(super) title: String,
    pub(super) details: Option<String>,
    pub(super) choices: Vec<String>,
    pub(super) approvers: Vec<String>,
    pub(super) deadline: String,
    pub(super) on_timeout: String,
    pub(super) story: String,
    pub(super) can_decide: bool,
    /// Choices marked dangerous, and those asked again before they count.
    pub(super) danger: Vec<String>,
    pub(super) confirm: Vec<String>,
    /// Why the viewer may not decide it (shown instead of the buttons).
    pub(super) cannot: String,
}

pub(super) fn pending_view(a: &crate::approval::Approval, who: &crate::server::Principal) -> Pending {
    let details = match &a.details {
        serde_json::Value::Null => None,
        d => Some(view::json_html(d)),
    };
    // What deciding would check (the same function the API asks): the role,
    // then the principal's approver among `approvers`, if any are named.
    let (can_decide, cannot) = match crate::server::approvals::decider(who, a) {
        Ok((approver, _)) if approver.as_ref().is_none_or(|ap| a.allows(ap)) => (true, String::new()),
        Ok(_) => (false, format!("Only {} may decide.", a.approvers.join(", "))),
        Err(crate::server::approvals::NotDecider::Role(why)) => (false, why),
        Err(crate::server::approvals::NotDecider::Unseen) => (false, "Another team's approval.".into()),
    };
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
        danger: a.danger.clone(),
        confirm: a.confirm.clone(),
        cannot,
    }
}

/// A run's page body (also what a live update sends), and whether the run is over.
pub(super) fn run_body(s: &AppState, v: &Viewer, id: &str) -> anyhow::Result<Option<(String, bool)>> {
    let Some(run) = s.engine.store.get_run(id)? else { return Ok(None) };
    if !sees_team(&v.principal.scope, &run.run.team) {
        return Ok(None);
    }
    let run = crate::store::seen_by(run, v.principal.scope.team());
    // The sub-story runs' own steps, drawn under the steps that called them
    // (one level), for the sub-stories of teams the viewer sees.
    let mut called = Vec::new();
    for c in run.steps.iter().filter_map(|st| view::called_by(&run, st)).filter(|c| sees_team(&v.principal.scope, &c.team)).take(MAX_NESTED) {
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
                    pending.push(pending_view(&a, &v.principal));
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

pub(super) async fn run_page(State(s): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let (v, _) = match who(&s, &headers).await {
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
