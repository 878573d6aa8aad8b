//! Live updates: a server-sent-events stream that redraws the runs table or a run as it changes.

use super::*;

/// What a live view compares to decide whether to redraw.
pub(super) fn digest(body: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    body.hash(&mut h);
    h.finish()
}

#[derive(serde::Deserialize)]
pub(super) struct LiveQuery {
    pub(super) run: Option<String>,
    /// The digest of what the page already shows: no redraw until it changes.
    /// (A string: numbers do not deserialize through `flatten` from a query.)
    pub(super) seen: Option<String>,
    #[serde(flatten)]
    pub(super) runs: RunsQuery,
}

pub(super) async fn live(State(s): State<AppState>, headers: HeaderMap, Query(q): Query<LiveQuery>) -> Response {
    let (v, _) = match who(&s, &headers).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    if let Some(why) = q.run.is_none().then(|| q.runs.invalid()).flatten() {
        return said(StatusCode::BAD_REQUEST, "Not a filter", &why);
    }
    let Some(mine) = s.console.open_stream(&session::scope_text(&v.principal.scope), v.session.clone()) else {
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
