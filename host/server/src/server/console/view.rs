//! What the pages draw, computed in Rust so templates only print: JSON as
//! highlighted, escaped HTML; a run's step timeline; a story's step graph.
//! Every text that reaches HTML here goes through [`escape`]: step inputs and
//! outputs, log lines and error messages come from plugins and webhooks.

use crate::store::{RunDetail, StepRecord};
use crate::story::{OnError, StepKind, Story};
use serde::Serialize;
use serde_json::Value;
use std::fmt::Write as _;

/// Longest JSON text drawn on a page; the rest is cut with a note (the API has it whole).
pub const MAX_JSON_CHARS: usize = 256 * 1024;

pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `value` pretty-printed as HTML with a class per token (`k` key, `s`
/// string, `n` number, `b` boolean/null), every text escaped.
pub fn json_html(value: &Value) -> String {
    let mut out = String::new();
    let mut cut = false;
    write_json(&mut out, value, 0, &mut cut);
    if cut {
        out.push_str("\n<span class=\"cut\">… cut here: the API (/api/runs/…) has the whole value</span>");
    }
    out
}

/// Stops (and says `cut`) once the text is [`MAX_JSON_CHARS`] long.
fn write_json(out: &mut String, v: &Value, depth: usize, cut: &mut bool) {
    if out.len() >= MAX_JSON_CHARS {
        *cut = true;
        return;
    }
    let pad = |n: usize| "  ".repeat(n);
    match v {
        Value::Null => out.push_str("<span class=\"b\">null</span>"),
        Value::Bool(b) => {
            let _ = write!(out, "<span class=\"b\">{b}</span>");
        }
        Value::Number(n) => {
            let _ = write!(out, "<span class=\"n\">{n}</span>");
        }
        Value::String(s) => {
            // One long string is cut too, on a character boundary.
            let room = MAX_JSON_CHARS.saturating_sub(out.len()) / 6 + 16;
            let shown: String = s.chars().take(room).collect();
            let text = serde_json::to_string(&shown).unwrap_or_default();
            let _ = write!(out, "<span class=\"s\">{}</span>", escape(&text));
            if shown.len() < s.len() {
                *cut = true;
            }
        }
        Value::Array(items) if items.is_empty() => out.push_str("[]"),
        Value::Object(map) if map.is_empty() => out.push_str("{}"),
        Value::Array(items) => {
            out.push_str("[\n");
            for (i, item) in items.iter().enumerate() {
                out.push_str(&pad(depth + 1));
                write_json(out, item, depth + 1, cut);
                if *cut {
                    return;
                }
                out.push_str(if i + 1 < items.len() { ",\n" } else { "\n" });
            }
            out.push_str(&pad(depth));
            out.push(']');
        }
        Value::Object(map) => {
            out.push_str("{\n");
            let n = map.len();
            for (i, (k, item)) in map.iter().enumerate() {
                let key = serde_json::to_string(k).unwrap_or_default();
                let _ = write!(out, "{}<span class=\"k\">{}</span>: ", pad(depth + 1), escape(&key));
                write_json(out, item, depth + 1, cut);
                if *cut {
                    return;
                }
                out.push_str(if i + 1 < n { ",\n" } else { "\n" });
            }
            out.push_str(&pad(depth));
            out.push('}');
        }
    }
}

/// `1.2 s`, `340 ms`, `2 min 5 s`.
pub fn duration(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms} ms"),
        1_000..=59_999 => format!("{:.1} s", ms as f64 / 1000.0),
        60_000..=3_599_999 => format!("{} min {} s", ms / 60_000, (ms % 60_000) / 1000),
        _ => format!("{} h {} min", ms / 3_600_000, (ms % 3_600_000) / 60_000),
    }
}

/// RFC 3339 in UTC (the page's script shows it in the viewer's zone).
pub fn time(ms: u64) -> String {
    crate::approval::rfc3339(ms)
}

/// One bar of a run's timeline, in percent of the run's span.
#[derive(Debug, Serialize)]
pub struct Bar {
    pub label: String,
    /// Where a click goes: the step's `<details>`, or a sub-story run's page.
    pub href: String,
    pub state: String,
    pub x: f64,
    pub width: f64,
    pub took: String,
    pub attempts: u32,
    /// A sub-story step (its run's steps follow, one level in).
    pub calls: bool,
    /// 0: the run's own step; 1: a step of a sub-story run it called.
    pub depth: u8,
}

pub fn anchor(step: &StepRecord) -> String {
    match step.item {
        Some(i) => format!("step-{}-{i}", step.step_id),
        None => format!("step-{}", step.step_id),
    }
}

fn label(s: &StepRecord) -> String {
    match s.item {
        Some(i) => format!("{} [{i}]", s.step_id),
        None => s.step_id.clone(),
    }
}

/// The sub-story run a step called, when it called exactly one (a `for_each`
/// over a sub-story calls one per item: those are listed, not nested).
pub fn called_by<'a>(run: &'a RunDetail, step: &StepRecord) -> Option<&'a crate::store::RunSummary> {
    let per_item = run.steps.iter().any(|o| o.step_id == step.step_id && o.item.is_some());
    if step.item.is_some() || per_item {
        return None;
    }
    run.children.iter().find(|c| c.parent_step.as_deref() == Some(step.step_id.as_str()))
}

/// The timeline of a run's steps; under each sub-story step, the steps of the
/// run it called (`children`: those runs, read by the caller), on the same scale.
///
/// An unfinished run's span ends at its last recorded moment, not at "now":
/// the drawing changes only when the run does (a live view redraws on change).
pub fn timeline(run: &RunDetail, children: &[RunDetail]) -> (Vec<Bar>, String) {
    let start = run.run.started_ms.unwrap_or(run.run.created_ms);
    let last_seen = run.steps.iter().filter_map(|s| s.finished_ms.or(s.started_ms)).max().unwrap_or(start);
    let end = run.run.finished_ms.unwrap_or(last_seen).max(start + 1);
    let span = (end - start) as f64;
    let place = |from: u64, to: u64| {
        let x = (from.saturating_sub(start)) as f64 / span * 100.0;
        let x = x.min(99.6);
        let width = ((to.min(end).saturating_sub(from)) as f64 / span * 100.0).max(0.4).min(100.0 - x);
        (x, width)
    };
    let mut bars = Vec::new();
    for s in &run.steps {
        let (Some(from), to) = (s.started_ms, s.finished_ms.unwrap_or(end)) else { continue };
        let (x, width) = place(from, to);
        let child = called_by(run, s).map(|c| c.id.as_str());
        let href = match child {
            Some(c) => format!("/console/runs/{c}"),
            None => format!("#{}", anchor(s)),
        };
        bars.push(Bar {
            label: label(s),
            href,
            state: s.state.clone(),
            x,
            width,
            took: duration(to.saturating_sub(from)),
            attempts: s.attempts,
            calls: child.is_some(),
            depth: 0,
        });
        let Some(c) = child.and_then(|c| children.iter().find(|d| d.run.id == c)) else { continue };
        for cs in &c.steps {
            let (Some(from), to) = (cs.started_ms, cs.finished_ms.unwrap_or(end)) else { continue };
            let (x, width) = place(from, to);
            let href = format!("/console/runs/{}#{}", c.run.id, anchor(cs));
            bars.push(Bar {
                label: label(cs),
                href,
                state: cs.state.clone(),
                x,
                width,
                took: duration(to.saturating_sub(from)),
                attempts: cs.attempts,
                calls: false,
                depth: 1,
            });
        }
    }
    (bars, duration(end - start))
}

/// One node of a story's graph.
#[derive(Debug, Serialize)]
pub struct Node {
    pub id: String,
    /// `action probe`, `story jira-open`, `transform set`, `approval`.
    pub what: String,
    /// `what` uncut, for the tooltip.
    pub full: String,
    pub kind: &'static str,
    /// The sub-story it calls, to link to.
    pub calls: Option<String>,
    pub condition: Option<String>,
    pub for_each: Option<String>,
    pub on_error: Option<String>,
    pub x: u32,
    pub y: u32,
}

/// An edge between nodes, as an SVG path.
#[derive(Debug, Serialize)]
pub struct Edge {
    pub path: String,
    pub label: Option<String>,
    pub label_x: u32,
    pub label_y: u32,
    /// A fallback edge (drawn dashed).
    pub fallback: bool,
}

#[derive(Debug, Serialize)]
pub struct Graph {
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
    pub width: u32,
    pub height: u32,
}

pub const NODE_W: u32 = 260;
pub const NODE_H: u32 = 54;
const GAP: u32 = 40;

/// Steps run in order, each behind its condition; fallbacks to the right,
/// reached from the steps whose `on_error` names them.
pub fn graph(story: &Story) -> Graph {
    let story = match &story.body {
        crate::story::Body::Graph(g) => return agents_graph(g),
        crate::story::Body::Steps(steps) => steps,
    };
    let cut = |t: &str, n: usize| {
        let t = t.trim();
        if t.chars().count() > n {
            format!("{}…", t.chars().take(n - 1).collect::<String>())
        } else {
            t.to_string()
        }
    };
    let short = |t: &str| cut(t, 48);
    let node = |s: &crate::story::Step, x: u32, y: u32| {
        let (what, calls) = match &s.kind {
            StepKind::Action(p) => (format!("action {p}"), None),
            StepKind::Story(st) => (format!("story {st}"), Some(st.clone())),
            StepKind::Transform(t) => (format!("transform {}", t.name()), None),
            StepKind::Approval(a) => (format!("approval: {}", short(&a.title)), None),
        };
        Node {
            id: s.id.clone(),
            // What fits in a node's box; the whole text is in its tooltip.
            what: cut(&what, 34),
            full: what.clone(),
            kind: s.kind.name(),
            calls,
            condition: s.condition.as_deref().map(short),
            for_each: s.for_each.as_deref().map(short),
            on_error: match &s.on_error {
                OnError::Fail => None,
                OnError::Continue => Some("on error: continue".into()),
                OnError::Fallback(f) => Some(format!("on error: {f}")),
            },
            x,
            y,
        }
    };
    let mut nodes = Vec::new();
    let mut edges = Vec::new();
    let row = |i: u32| 20 + i * (NODE_H + GAP);
    let main_x = 20;
    let side_x = main_x + NODE_W + 120;
    for (i, s) in story.steps.iter().enumerate() {
        let y = row(i as u32);
        nodes.push(node(s, main_x, y));
        if i > 0 {
            let (x, top) = (main_x + NODE_W / 2, y - GAP);
            edges.push(Edge {
                path: format!("M{x},{top} L{x},{}", y - 4),
                label: s.condition.as_deref().map(|c| format!("if {}", short(c))),
                label_x: x + 8,
                label_y: top + GAP / 2 + 4,
                fallback: false,
            });
        } else if let Some(c) = &s.condition {
            nodes.last_mut().expect("pushed").condition = Some(short(c));
        }
    }
    for (j, f) in story.fallbacks.iter().enumerate() {
        let y = row(j as u32);
        nodes.push(node(f, side_x, y));
        for (i, s) in story.steps.iter().enumerate() {
            if s.on_error == OnError::Fallback(f.id.clone()) {
                let sy = row(i as u32) + NODE_H / 2;
                edges.push(Edge {
                    path: format!("M{},{sy} C{},{sy} {},{} {side_x},{}", main_x + NODE_W, main_x + NODE_W + 60, side_x - 60, y + NODE_H / 2, y + NODE_H / 2),
                    label: Some("on error".into()),
                    label_x: main_x + NODE_W + 8,
                    label_y: sy - 6,
                    fallback: true,
                });
            }
        }
    }
    let rows = story.steps.len().max(story.fallbacks.len()).max(1) as u32;
    let width = if story.fallbacks.is_empty() { main_x + NODE_W + 260 } else { side_x + NODE_W + 20 };
    Graph { nodes, edges, width, height: row(rows) }
}

/// A graph story (imported from Tines): agents in layers by their distance
/// from the entry, an edge per link (labelled when it is a trigger's no-match
/// or a failure link; a link back up, a loop, drawn on the right).
fn agents_graph(g: &crate::story::graph::Graph) -> Graph {
    use crate::story::graph::AgentKind;
    let n = g.agents.len();
    let mut depth = vec![usize::MAX; n];
    let mut queue = std::collections::VecDeque::from([g.entry]);
    depth[g.entry] = 0;
    while let Some(a) = queue.pop_front() {
        let ag = &g.agents[a];
        for &r in ag.receivers.iter().chain(&ag.no_match).chain(&ag.failure) {
            if depth[r] == usize::MAX {
                depth[r] = depth[a] + 1;
                queue.push_back(r);
            }
        }
    }
    let deepest = depth.iter().filter(|d| **d != usize::MAX).max().copied().unwrap_or(0);
    for d in depth.iter_mut().filter(|d| **d == usize::MAX) {
        *d = deepest + 1;
    }
    let mut col = vec![0u32; n];
    let mut per_row: std::collections::BTreeMap<usize, u32> = Default::default();
    for (i, d) in depth.iter().enumerate() {
        let c = per_row.entry(*d).or_default();
        col[i] = *c;
        *c += 1;
    }
    let pos = |i: usize| (20 + col[i] * (NODE_W + 60), 20 + depth[i] as u32 * (NODE_H + GAP));
    let nodes = g
        .agents
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let (x, y) = pos(i);
            let what = match &a.kind {
                AgentKind::Http(p) | AgentKind::Email(p) => format!("{} ({p})", a.kind.name()),
                AgentKind::Story(s) => format!("story {s}"),
                other => other.name().to_string(),
            };
            let full = if a.name != a.id { format!("{} — {what}", a.name) } else { what.clone() };
            Node {
                id: a.id.clone(),
                what: if what.chars().count() > 34 { format!("{}…", what.chars().take(33).collect::<String>()) } else { what },
                full,
                kind: a.kind.step_kind(),
                calls: if let AgentKind::Story(s) = &a.kind { Some(s.clone()) } else { None },
                condition: None,
                for_each: None,
                on_error: (!a.failure.is_empty()).then(|| "on failure: its failure links".to_string()),
                x,
                y,
            }
        })
        .collect();
    let mut edges = Vec::new();
    for (i, a) in g.agents.iter().enumerate() {
        let links = a
            .receivers
            .iter()
            .map(|r| (*r, None))
            .chain(a.no_match.iter().map(|r| (*r, Some("no match"))))
            .chain(a.failure.iter().map(|r| (*r, Some("failure"))));
        for (r, label) in links {
            let ((sx, sy), (dx, dy)) = (pos(i), pos(r));
            let path = if depth[r] > depth[i] {
                format!(
                    "M{},{} C{},{} {},{} {},{}",
                    sx + NODE_W / 2,
                    sy + NODE_H,
                    sx + NODE_W / 2,
                    sy + NODE_H + GAP / 2,
                    dx + NODE_W / 2,
                    dy - GAP / 2,
                    dx + NODE_W / 2,
                    dy - 4
                )
            } else {
                // Back up the graph: a loop.
                format!(
                    "M{},{} C{},{} {},{} {},{}",
                    sx + NODE_W,
                    sy + NODE_H / 2,
                    sx + NODE_W + 50,
                    sy + NODE_H / 2,
                    dx + NODE_W + 50,
                    dy + NODE_H / 2,
                    dx + NODE_W + 4,
                    dy + NODE_H / 2
                )
            };
            edges.push(Edge {
                path,
                label: label.map(str::to_string),
                label_x: sx + NODE_W / 2 + 8,
                label_y: sy + NODE_H + GAP / 2,
                fallback: label == Some("failure"),
            });
        }
    }
    let cols = per_row.values().copied().max().unwrap_or(1);
    let rows = depth.iter().max().copied().unwrap_or(0) as u32 + 1;
    Graph { nodes, edges, width: 20 + cols * (NODE_W + 60) + 60, height: 20 + rows * (NODE_H + GAP) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_graph_story_is_drawn_as_its_agents_and_links() {
        let text = "name: g\ngraph:\n  agents:\n    - {id: start, kind: webhook, receivers: [get]}\n    - {id: get, kind: http, options: {url: \"https://x.example/\"}, receivers: [more]}\n    - {id: more, kind: trigger, options: {rules: [{type: regex, path: \"x\", value: \"y\"}]}, receivers: [get], no_match: [done]}\n    - {id: done, kind: message}\n";
        let story = crate::story::parse(text, std::path::Path::new("g.yaml")).unwrap();
        let g = graph(&story);
        assert_eq!(g.nodes.iter().map(|n| n.id.as_str()).collect::<Vec<_>>(), ["start", "get", "more", "done"]);
        assert_eq!(g.nodes[1].what, "http (http-request)");
        assert_eq!(g.edges.len(), 4);
        assert!(g.edges.iter().any(|e| e.label.as_deref() == Some("no match")));
        assert!(g.nodes[3].y > g.nodes[2].y, "layers follow the links");
    }

    #[test]
    fn json_text_is_escaped_inside_its_highlighting() {
        let html = json_html(&json!({"<script>": "<img src=x onerror=alert(1)>", "n": 1, "b": [true, null]}));
        assert!(!html.contains("<script>") && !html.contains("<img"), "{html}");
        assert!(html.contains("&lt;img src=x onerror=alert(1)&gt;"), "{html}");
        assert!(html.contains("<span class=\"n\">1</span>"), "{html}");
    }

    #[test]
    fn huge_json_is_cut_with_a_note() {
        let big: Vec<String> = (0..100_000).map(|i| format!("item-{i}")).collect();
        let html = json_html(&json!(big));
        assert!(html.len() < MAX_JSON_CHARS + 1024, "{}", html.len());
        assert!(html.ends_with("has the whole value</span>"));
        let html = json_html(&json!({"log": "<".repeat(10 << 20)}));
        assert!(html.len() < 2 * MAX_JSON_CHARS && html.ends_with("has the whole value</span>"), "{}", html.len());
    }
}
