//! Templating for stories, with minijinja.
//!
//! A string is a template when it holds `{{ … }}` or `{% … %}`. A string that
//! is exactly one `{{ expression }}` evaluates to the expression's value (an
//! object stays an object, a number a number); anything else renders to text.
//! Undefined is an error, never an empty string. The context holds `input`,
//! `steps`, `item`/`index` (in `for_each`), `run` and `error` (in fallbacks):
//! credential values are not reachable from here at all.

use minijinja::{Environment, UndefinedBehavior};
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

/// Upper bound on template work, so a story cannot spin the host.
const FUEL: u64 = 200_000;

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
fn single_expression(s: &str) -> Option<&str> {
    let t = s.trim();
    let inner = t.strip_prefix("{{")?.strip_suffix("}}")?;
    if inner.contains("{{") || inner.contains("}}") || inner.contains("{%") {
        return None;
    }
    Some(inner.trim())
}

/// Distinct expressions kept compiled. Stories are finite, so this only
/// bounds a bug: past it, expressions are compiled each time, uncached.
const CACHE_MAX: usize = 10_000;

/// A single `{{ expression }}`, compiled once per distinct source (a story's
/// templates are the same for every run) instead of once per render.
fn compiled(expr: &str) -> Result<Arc<minijinja::Expression<'static, 'static>>, minijinja::Error> {
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<minijinja::Expression<'static, 'static>>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(e) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(expr) {
        return Ok(e.clone());
    }
    let e = Arc::new(env().compile_expression_owned(expr.to_string())?);
    let mut map = cache.lock().unwrap_or_else(|p| p.into_inner());
    if map.len() < CACHE_MAX {
        map.insert(expr.to_string(), e.clone());
    }
    Ok(e)
}

/// A render context, converted to minijinja's values once however many
/// strings are rendered against it (a step's `with` has several).
struct Scope<'a> {
    json: &'a Value,
    converted: std::cell::OnceCell<minijinja::Value>,
}

impl<'a> Scope<'a> {
    fn new(json: &'a Value) -> Scope<'a> {
        Scope { json, converted: std::cell::OnceCell::new() }
    }
    fn value(&self) -> &minijinja::Value {
        self.converted.get_or_init(|| minijinja::Value::from_serialize(self.json))
    }
}

/// Renders one string against `ctx`.
pub fn render_str(s: &str, ctx: &Value) -> Result<Value, String> {
    render_in(s, &Scope::new(ctx))
}

fn render_in(s: &str, scope: &Scope) -> Result<Value, String> {
    if !is_template(s) {
        return Ok(Value::String(s.to_string()));
    }
    if let Some(expr) = single_expression(s) {
        let compiled = compiled(expr).map_err(|e| describe(&e))?;
        let v = compiled.eval(scope.value()).map_err(|e| describe(&e))?;
        if v.is_undefined() {
            // Strict mode only trips when undefined is printed; a bare
            // expression must not quietly become null either.
            return Err(format!("undefined value: `{expr}` does not exist"));
        }
        return serde_json::to_value(&v).map_err(|e| e.to_string());
    }
    env().render_str(s, scope.value()).map(Value::String).map_err(|e| describe(&e))
}

/// Renders one template per item of a list (`deduplicate.by`,
/// `aggregate.group_by`) with `item` and `index` over the story context: the
/// context is converted once and shared, not copied per item.
pub struct PerItem {
    base: minijinja::Value,
}

impl PerItem {
    pub fn new(ctx: &Value) -> PerItem {
        PerItem { base: minijinja::Value::from_serialize(ctx) }
    }

    pub fn render(&self, s: &str, item: &Value, index: usize) -> Result<Value, String> {
        let ctx = minijinja::context! { item => minijinja::Value::from_serialize(item), index => index, ..self.base.clone() };
        let json = Value::Null;
        let scope = Scope { json: &json, converted: std::cell::OnceCell::from(ctx) };
        render_in(s, &scope)
    }
}

/// A template shown in an error: one line, at most 80 characters.
pub fn excerpt(s: &str) -> String {
    let one: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if one.chars().count() > 80 {
        format!("{}…", one.chars().take(79).collect::<String>())
    } else {
        one
    }
}

/// Renders every string inside a JSON value.
pub fn render_value(v: &Value, ctx: &Value) -> Result<Value, String> {
    render_value_in(v, &Scope::new(ctx))
}

fn render_value_in(v: &Value, scope: &Scope) -> Result<Value, String> {
    Ok(match v {
        Value::String(s) => render_in(s, scope).map_err(|e| format!("`{}`: {}", excerpt(s), e.replace('\n', " ")))?,
        Value::Array(items) => Value::Array(items.iter().map(|i| render_value_in(i, scope)).collect::<Result<_, _>>()?),
        Value::Object(map) => {
            let mut out = serde_json::Map::new();
            for (k, v) in map {
                out.insert(k.clone(), render_value_in(v, scope)?);
            }
            Value::Object(out)
        }
        other => other.clone(),
    })
}

/// Jinja truthiness of a condition's value.
pub fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty() && s != "false" && s != "False",
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

fn describe(e: &minijinja::Error) -> String {
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

/// Every template string inside a JSON value.
pub fn strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) if is_template(s) => out.push(s.clone()),
        Value::Array(items) => items.iter().for_each(|i| strings(i, out)),
        Value::Object(map) => map.values().for_each(|i| strings(i, out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_single_expression_keeps_its_type() {
        let ctx = json!({"input": {"ioc": {"kind": "domain", "value": "x"}, "n": [1, 2, 3]}});
        assert_eq!(render_str("{{ input.ioc }}", &ctx).unwrap(), json!({"kind": "domain", "value": "x"}));
        assert_eq!(render_str("{{ input.n | length }}", &ctx).unwrap(), json!(3));
        assert_eq!(render_str("seen {{ input.n | length }} times", &ctx).unwrap(), json!("seen 3 times"));
        assert_eq!(render_str("plain", &ctx).unwrap(), json!("plain"));
    }

    #[test]
    fn undefined_is_an_error_not_an_empty_string() {
        let ctx = json!({"input": {}});
        assert!(render_str("{{ input.missing }}", &ctx).unwrap_err().contains("undefined"));
        assert!(render_str("x {{ input.missing }} y", &ctx).is_err());
        assert!(render_str("{{ nothing.at.all }}", &ctx).is_err());
    }

    #[test]
    fn references_are_reported_as_paths() {
        let r = references("{{ steps.hunt.output.unique_hosts | length }} and {{ input.window }}").unwrap();
        assert!(r.contains("steps.hunt.output.unique_hosts"), "{r:?}");
        assert!(r.contains("input.window"), "{r:?}");
        assert!(references("{{ broken").is_err());
    }

    #[test]
    fn runaway_templates_run_out_of_fuel() {
        let e = render_str("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", &json!({}));
        assert!(e.is_err());
    }
}
