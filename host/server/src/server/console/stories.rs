//! The stories page: each story drawn as a graph, with its trigger and its recent runs.

use super::*;

#[derive(Serialize)]
pub(super) struct StoryView {
    pub(super) name: String,
    pub(super) team: String,
    pub(super) description: String,
    pub(super) file: String,
    pub(super) webhook: Option<String>,
    pub(super) schedule: Option<String>,
    pub(super) graph: view::Graph,
    pub(super) recent: Vec<RunRow>,
    pub(super) runs_link: String,
    pub(super) succeeded: u64,
    pub(super) ended: u64,
    pub(super) rate: Option<String>,
    /// The counts cover the latest [`crate::store::COUNT_CAP`] runs only.
    pub(super) capped: bool,
}

pub(super) async fn stories_page(State(s): State<AppState>, headers: HeaderMap) -> Response {
    let (v, _) = match who(&s, &headers).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let base = s.engine.links_base().trim_end_matches('/').to_string();
    let mut stories = Vec::new();
    for (name, st) in s.engine.library.stories.iter().filter(|(_, st)| sees_team(&v.principal.scope, &st.team)) {
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
