//! The runs page: the filtered, paged table of runs and the counts above it.

use super::*;

#[derive(Debug, Default, serde::Deserialize, Serialize, Clone)]
pub(super) struct RunsQuery {
    #[serde(default)]
    pub(super) story: String,
    #[serde(default)]
    pub(super) state: String,
    #[serde(default)]
    pub(super) trigger: String,
    /// `1h`, `24h`, `7d`, `30d`, or empty for all time.
    #[serde(default)]
    pub(super) since: String,
    #[serde(default)]
    pub(super) page: usize,
}

pub(super) const SINCE: [(&str, u64); 4] = [("1h", 3_600_000), ("24h", 86_400_000), ("7d", 7 * 86_400_000), ("30d", 30 * 86_400_000)];
pub(super) const STATES: [&str; 6] = ["queued", "running", "waiting", "succeeded", "failed", "cancelled"];
pub(super) const TRIGGERS: [&str; 4] = ["webhook", "schedule", "cli", "replay"];

impl RunsQuery {
    /// A filter value no form offers: said, not silently ignored.
    pub(super) fn invalid(&self) -> Option<String> {
        if !self.since.is_empty() && !SINCE.iter().any(|(k, _)| *k == self.since) {
            return Some(format!("since `{}` is not one of 1h, 24h, 7d, 30d (or empty for all time)", crate::invocation::guest_text(&self.since, 40)));
        }
        if !self.state.is_empty() && !STATES.contains(&self.state.as_str()) {
            return Some(format!("state `{}` is not one of {}", crate::invocation::guest_text(&self.state, 40), STATES.join(", ")));
        }
        None
    }

    pub(super) fn filter<'a>(&'a self, scope: &'a Scope) -> RunFilter<'a> {
        let some = |t: &'a String| (!t.is_empty()).then_some(t.as_str());
        RunFilter {
            team: scope.team(),
            story: some(&self.story),
            state: some(&self.state),
            trigger: some(&self.trigger),
            since_ms: SINCE.iter().find(|(k, _)| *k == self.since).map(|(_, d)| now_ms().saturating_sub(*d)),
            include_children: false,
            limit: PAGE,
            offset: self.page.min(10_000) * PAGE,
        }
    }

    pub(super) fn query_string(&self) -> String {
        query_of(&[("story", &self.story), ("state", &self.state), ("trigger", &self.trigger), ("since", &self.since)])
    }
}

/// A query string of the non-empty pairs.
pub(super) fn query_of(pairs: &[(&str, &String)]) -> String {
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        if !v.is_empty() {
            q.append_pair(k, v);
        }
    }
    q.finish()
}

#[derive(Serialize)]
pub(super) struct RunRow {
    pub(super) id: String,
    pub(super) story: String,
    pub(super) team: String,
    pub(super) state: String,
    pub(super) trigger: String,
    pub(super) created: String,
    pub(super) took: String,
    pub(super) error: Option<String>,
}

pub(super) fn row(r: &RunSummary) -> RunRow {
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

/// The runs table and the counts above it (also what a live update sends).
pub(super) fn runs_body(s: &AppState, v: &Viewer, q: &RunsQuery) -> anyhow::Result<String> {
    let filter = q.filter(&v.principal.scope);
    let runs = s.engine.store.find_runs(&filter)?;
    let counts = s.engine.store.count_runs(&filter)?;
    let total: u64 = counts.iter().map(|(_, n)| n).sum();
    let more = runs.len() == PAGE;
    let rows: Vec<RunRow> = runs.iter().map(row).collect();
    let capped = total >= crate::store::COUNT_CAP;
    Ok(render_text("runs_body.html", context! { runs => rows, counts, total, capped, page => q.page, more, query => q.query_string() }))
}

pub(super) async fn runs_page(State(s): State<AppState>, headers: HeaderMap, Query(q): Query<RunsQuery>) -> Response {
    let (v, _) = match who(&s, &headers).await {
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
    let stories: Vec<&String> = s.engine.library.stories.iter().filter(|(_, st)| sees_team(&v.principal.scope, &st.team)).map(|(n, _)| n).collect();
    let live = format!("/console/live?{}{}seen={}", q.query_string(), if q.query_string().is_empty() { "" } else { "&" }, digest(&body));
    let ctx = context! { ..frame(&v, &s, "runs"), ..context! {
        body => minijinja::Value::from_safe_string(body), q, stories, states => STATES, triggers => TRIGGERS,
        since => SINCE.iter().map(|(k, _)| *k).collect::<Vec<_>>(), live,
    }};
    page(StatusCode::OK, "runs.html", ctx)
}
