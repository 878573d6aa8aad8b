//! minijinja, as YAML stories use it.
//!
//! A string is a template when it holds `{{ … }}` or `{% … %}`. A string that
//! is exactly one `{{ expression }}` evaluates to the expression's value (an
//! object stays an object, a number a number); anything else renders to text.
//! Undefined is an error, never an empty string.

use minijinja::{Environment, UndefinedBehavior};
#[cfg(feature = "evaluate")]
use serde_json::Value;
use std::collections::BTreeSet;
use std::sync::OnceLock;

/// Upper bound on template instructions, so a story cannot spin the
/// evaluator long before its fuel runs out.
const FUEL: u64 = 200_000;

/// The environment every template is parsed (and, in the evaluator, rendered) with.
pub fn env() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_fuel(Some(FUEL));
        env
    })
}

pub fn is_template(s: &str) -> bool {
    s.contains("{{") || s.contains("{%")
}

/// `Some(expr)` when the whole string is one `{{ expr }}`.
pub fn single_expression(s: &str) -> Option<&str> {
    let t = s.trim();
    let inner = t.strip_prefix("{{")?.strip_suffix("}}")?;
    if inner.contains("{{") || inner.contains("}}") || inner.contains("{%") {
        return None;
    }
    Some(inner.trim())
}

/// `Some(["input", "ioc", "value"])` when `expr` is only a path of names
/// (`input.ioc.value`): no filter, call, operator, index or literal. Such an
/// expression only reads a value the context already holds, so the host may
/// look it up itself; anything else is rendered by the evaluator.
pub fn plain_path(expr: &str) -> Option<Vec<&str>> {
    let parts: Vec<&str> = expr.split('.').collect();
    let name = |p: &&str| {
        let mut c = p.chars();
        c.next().is_some_and(|f| f.is_ascii_alphabetic() || f == '_') && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
    };
    // Jinja's own words are not names here.
    let keyword = |p: &&str| matches!(*p, "true" | "false" | "none" | "True" | "False" | "None" | "loop" | "self");
    (parts.iter().all(name) && !keyword(&parts[0])).then_some(parts)
}

pub fn describe(e: &minijinja::Error) -> String {
    let mut msg = e.kind().to_string();
    if let Some(detail) = e.detail() {
        msg.push_str(": ");
        msg.push_str(detail);
    }
    msg.replace('\n', " ")
}

/// Compiles a template string and returns the variable paths it reads
/// (`steps.hunt.output`, `input.window`), so references can be checked at load.
pub fn references(s: &str) -> Result<BTreeSet<String>, String> {
    if !is_template(s) {
        return Ok(BTreeSet::new());
    }
    let env = env();
    let vars = match single_expression(s) {
        Some(expr) => env.compile_expression(expr).map_err(|e| describe(&e))?.undeclared_variables(true),
        None => env.template_from_str(s).map_err(|e| describe(&e))?.undeclared_variables(true),
    };
    Ok(vars.into_iter().collect())
}

/// Renders one string against `ctx` (the story's context as one value).
#[cfg(feature = "evaluate")]
pub fn render_str(s: &str, ctx: &minijinja::Value) -> Result<Value, String> {
    if !is_template(s) {
        return Ok(Value::String(s.to_string()));
    }
    if let Some(expr) = single_expression(s) {
        let compiled = env().compile_expression(expr).map_err(|e| describe(&e))?;
        let v = compiled.eval(ctx).map_err(|e| describe(&e))?;
        if v.is_undefined() {
            // Strict mode only trips when undefined is printed; a bare
            // expression must not quietly become null either.
            return Err(format!("undefined value: `{expr}` does not exist"));
        }
        return serde_json::to_value(&v).map_err(|e| e.to_string());
    }
    env().render_str(s, ctx).map(Value::String).map_err(|e| describe(&e))
}

/// Renders every string inside a JSON value.
#[cfg(feature = "evaluate")]
pub fn render_value(v: &Value, ctx: &minijinja::Value) -> Result<Value, String> {
    Ok(match v {
        Value::String(s) => render_str(s, ctx).map_err(|e| format!("`{}`: {}", crate::excerpt(s), e.replace('\n', " ")))?,
        Value::Array(items) => Value::Array(items.iter().map(|i| render_value(i, ctx)).collect::<Result<_, _>>()?),
        Value::Object(map) => {
            let mut out = serde_json::Map::new();
            for (k, v) in map {
                out.insert(k.clone(), render_value(v, ctx)?);
            }
            Value::Object(out)
        }
        other => other.clone(),
    })
}

/// Renders `v` once per item with `item` and `index` bound over `ctx`.
#[cfg(feature = "evaluate")]
pub fn render_each(v: &Value, ctx: &minijinja::Value, items: &[Value]) -> Result<Vec<Value>, String> {
    items
        .iter()
        .enumerate()
        .map(|(index, item)| {
            let scope = minijinja::context! { item => minijinja::Value::from_serialize(item), index => index, ..ctx.clone() };
            match v {
                Value::String(s) => render_str(s, &scope),
                other => render_value(other, &scope),
            }
        })
        .collect()
}

#[cfg(all(test, feature = "evaluate"))]
mod tests {
    //! What rendering does is tested where the host uses it, through the
    //! evaluator (`story::template`'s tests); here, what only this crate knows.
    use super::*;
    use serde_json::json;

    fn ctx(v: Value) -> minijinja::Value {
        minijinja::Value::from_serialize(&v)
    }

    #[test]
    fn runaway_templates_run_out_of_fuel() {
        let e = render_str("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", &ctx(json!({})));
        assert!(e.is_err());
    }

    #[test]
    fn plain_paths_are_only_names() {
        assert_eq!(plain_path("input.ioc.value"), Some(vec!["input", "ioc", "value"]));
        for not_plain in ["input.s | upper", "input['x']", "input.n + 1", "true", "input.items()", "input.0", "a ~ b", "", "input..x"] {
            assert_eq!(plain_path(not_plain), None, "{not_plain}");
        }
    }
}
