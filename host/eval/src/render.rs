//! The evaluator's entry points: what the guest exports, over JSON.

use crate::{formula, jinja, liquid};
use serde_json::{Map, Value};
use std::sync::OnceLock;

/// Which language a story's strings are written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    /// YAML stories: minijinja.
    Jinja,
    /// Imported Tines stories: Liquid.
    Liquid,
    /// Imported Tines stories whose options may also hold formulas
    /// (`=expr`, `<<expr>>`) beside Liquid.
    Formulas,
}

fn liquid() -> &'static liquid::Liquid {
    static L: OnceLock<liquid::Liquid> = OnceLock::new();
    L.get_or_init(liquid::Liquid::new)
}

/// Renders every string inside `value` against `context` (an object).
pub fn render(language: Language, value: &Value, context: &Value) -> Result<Value, String> {
    match language {
        Language::Jinja => jinja::render_value(value, &minijinja::Value::from_serialize(context)),
        Language::Liquid | Language::Formulas => {
            let empty = Map::new();
            let ctx = context.as_object().unwrap_or(&empty);
            let globals = liquid::globals(ctx);
            tines(value, ctx, &globals, language == Language::Formulas)
        }
    }
}

/// Renders `value` once per item of `items`: Jinja with `item` and `index`
/// bound, Liquid and formulas with `LOOP` (`value`, `index`).
pub fn render_each(language: Language, value: &Value, context: &Value, items: &[Value]) -> Result<Vec<Value>, String> {
    match language {
        Language::Jinja => jinja::render_each(value, &minijinja::Value::from_serialize(context), items),
        Language::Liquid | Language::Formulas => {
            let mut ctx = context.as_object().cloned().unwrap_or_default();
            items
                .iter()
                .enumerate()
                .map(|(index, item)| {
                    ctx.insert("LOOP".into(), serde_json::json!({"value": item, "index": index}));
                    render(language, value, &Value::Object(ctx.clone())).map_err(|e| format!("item {index}: {e}"))
                })
                .collect()
        }
    }
}

/// An agent's option against an event's context: formulas (when the story
/// has them) or Liquid, string by string; keys stay as they are.
fn tines(v: &Value, ctx: &Map<String, Value>, globals: &liquid_core::Object, formulas: bool) -> Result<Value, String> {
    Ok(match v {
        Value::String(s) if formulas && formula::is_formula(s) => formula::render(s, ctx)?,
        Value::String(s) => liquid().render_str(s, globals)?,
        Value::Array(a) => Value::Array(a.iter().map(|x| tines(x, ctx, globals, formulas)).collect::<Result<_, _>>()?),
        Value::Object(o) => {
            let mut out = Map::new();
            for (k, x) in o {
                out.insert(k.clone(), tines(x, ctx, globals, formulas)?);
            }
            Value::Object(out)
        }
        other => other.clone(),
    })
}
