//! Rendering a graph agent's options: Tines' Liquid, or its formulas when
//! the story has them, by the sandboxed evaluator (64 MiB, bounded fuel),
//! against the event's context.

use serde_json::{Map, Value};
use warden_eval::formula;
use warden_sandbox::runtime::evaluator::{self, Language};
use warden_story::story::graph::{number_of, AgentKind};
use warden_story::story::Story;

/// Renders an agent's option against an event's context: formulas (when
/// the story has them) or Liquid, string by string; keys stay as they are.
/// Rendered by the sandboxed evaluator; text without a template or formula
/// is kept as it is without a call.
pub fn render(v: &Value, ctx: &Map<String, Value>, formulas: bool) -> Result<Value, String> {
    if !needs_rendering(v, formulas) {
        return Ok(v.clone());
    }
    evaluator::render(language(formulas), v, serde_json::to_string(ctx).map_err(|e| e.to_string())?)
}

/// Renders `v` once per item of `items`, each with `LOOP` (`value`, `index`)
/// bound: a Message agent's `loop`, in one evaluator call.
pub fn render_each(v: &Value, ctx: &Map<String, Value>, formulas: bool, items: &[Value]) -> Result<Vec<Value>, String> {
    if !needs_rendering(v, formulas) {
        return Ok(vec![v.clone(); items.len()]);
    }
    evaluator::render_each(language(formulas), v, serde_json::to_string(ctx).map_err(|e| e.to_string())?, items)
}

/// The language a graph story's options are written in.
fn language(formulas: bool) -> Language {
    if formulas {
        Language::Formulas
    } else {
        Language::Liquid
    }
}

/// Whether any string in `v` holds Liquid or (when the story has them) a formula.
fn needs_rendering(v: &Value, formulas: bool) -> bool {
    match v {
        Value::String(s) => s.contains("{{") || s.contains("{%") || (formulas && formula::is_formula(s)),
        Value::Array(a) => a.iter().any(|x| needs_rendering(x, formulas)),
        Value::Object(o) => o.values().any(|x| needs_rendering(x, formulas)),
        _ => false,
    }
}

/// What a graph story's webhook answers at once, Tines-style: its entry
/// webhook's `response` rendered against the request (`{entry: body}`), with
/// `response_code` (default 201). `None`: the usual `202 {run_id}`.
pub fn webhook_response(story: &Story, input: &Value, run_id: &str, resources: &Map<String, Value>) -> Option<Result<(u16, Value), String>> {
    let graph = story.graph()?;
    let entry = &graph.agents[graph.entry];
    if !matches!(entry.kind, AgentKind::Webhook) {
        return None;
    }
    let response = entry.options.get("response").filter(|r| !r.is_null() && *r != "")?;
    let code = entry.options.get("response_code").and_then(number_of).map(|c| c as u16).unwrap_or(201);
    let mut ctx: Map<String, Value> = run_globals(story, run_id, resources).into_iter().collect();
    ctx.insert(entry.id.clone(), input.clone());
    Some(render(response, &ctx, graph.formulas).map(|v| (code, v)))
}

/// What every agent of a run can read beside its upstream payloads: `META`
/// (the run) and `RESOURCE` (the policy's `[resources]`).
pub fn run_globals(story: &Story, run_id: &str, resources: &Map<String, Value>) -> [(String, Value); 2] {
    [
        ("META".to_string(), serde_json::json!({"story_run_guid": run_id, "story": story.name, "team": story.team})),
        ("RESOURCE".to_string(), Value::Object(resources.clone())),
    ]
}
