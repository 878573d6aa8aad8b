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
use std::collections::{BTreeMap, BTreeSet, HashMap};
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

/// Most template source kept compiled, in bytes. A compiled template borrows
/// its source for as long as it lives, and this cache lives as long as the
/// process, so each cached source is leaked on purpose; the budget bounds the
/// leak (stories are finite: past it, templates are parsed on each render, as
/// before, and nothing else changes).
const TEMPLATE_CACHE_BYTES: usize = 4 << 20;

/// A template with text around its expressions (`"https://{{ host }}/x"`),
/// parsed once per distinct source instead of once per render. The same
/// template as [`Environment::render_str`] builds, named `<string>`.
fn compiled_template(source: &str) -> Result<Option<minijinja::Template<'static, 'static>>, minijinja::Error> {
    struct Cache {
        templates: HashMap<String, minijinja::Template<'static, 'static>>,
        bytes: usize,
    }
    static CACHE: OnceLock<Mutex<Cache>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(Cache { templates: HashMap::new(), bytes: 0 }));
    let mut c = cache.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(t) = c.templates.get(source) {
        return Ok(Some(t.clone()));
    }
    if c.bytes + source.len() > TEMPLATE_CACHE_BYTES {
        return Ok(None);
    }
    // Parsed before it is leaked (a template that does not parse is not
    // kept), under the lock so that a source is leaked once: once per
    // distinct template in the process's life.
    env().template_from_str(source)?;
    let leaked: &'static str = Box::leak(source.to_string().into_boxed_str());
    let t = env().template_from_str(leaked)?;
    c.bytes += source.len();
    c.templates.insert(source.to_string(), t.clone());
    Ok(Some(t))
}

/// What a story's templates can read — `input`, `steps`, `run` and, where
/// they apply, `item`/`index`, `error` and `approval` — held as minijinja's
/// values. Each entry is converted from JSON once, when it is set, and every
/// render shares it (minijinja's values are reference counted): a hunt's
/// 10,000 events are converted once per run, not again for each later step's
/// templates, and a `for_each` item's bindings cost an entry, not a copy.
#[derive(Clone, Default)]
pub struct Bindings {
    entries: BTreeMap<String, minijinja::Value>,
    steps: BTreeMap<String, minijinja::Value>,
}

impl Bindings {
    /// Bindings from a JSON object's top-level keys (`steps` by step).
    pub fn from_json(json: &Value) -> Bindings {
        let mut b = Bindings::default();
        if let Value::Object(map) = json {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("steps", Value::Object(steps)) => steps.iter().for_each(|(id, record)| b.set_step(id, record)),
                    _ => b.set(k, v),
                }
            }
        }
        b
    }

    /// Binds `name` (`input`, `item`, `error`, …) to `value`.
    pub fn set(&mut self, name: &str, value: &Value) {
        self.entries.insert(name.to_string(), minijinja::Value::from_serialize(value));
    }

    /// Binds `steps.<id>` to a step's record (`status`, `output`, `error`).
    pub fn set_step(&mut self, id: &str, record: &Value) {
        self.steps.insert(id.to_string(), minijinja::Value::from_serialize(record));
    }

    /// These bindings and one more: a `for_each` item's, or a fallback's `error`.
    pub fn with(&self, name: &str, value: &Value) -> Bindings {
        let mut b = self.clone();
        b.set(name, value);
        b
    }

    /// The whole context as one minijinja value: a map of shared entries.
    fn value(&self) -> minijinja::Value {
        let steps = minijinja::Value::from_iter(self.steps.iter().map(|(k, v)| (k.as_str(), v.clone())));
        minijinja::Value::from_iter(self.entries.iter().map(|(k, v)| (k.as_str(), v.clone())).chain(std::iter::once(("steps", steps))))
    }
}

/// One render's context, built from the bindings at first use however many
/// strings are rendered against it (a step's `with` has several).
struct Scope<'a> {
    bindings: &'a Bindings,
    converted: std::cell::OnceCell<minijinja::Value>,
}

impl<'a> Scope<'a> {
    fn new(bindings: &'a Bindings) -> Scope<'a> {
        Scope { bindings, converted: std::cell::OnceCell::new() }
    }
    fn value(&self) -> &minijinja::Value {
        self.converted.get_or_init(|| self.bindings.value())
    }
}

/// Renders one string against `ctx`.
pub fn render_str(s: &str, ctx: &Bindings) -> Result<Value, String> {
    render_in(s, &Scope::new(ctx))
}

fn render_in(s: &str, scope: &Scope) -> Result<Value, String> {
    render_against(s, || scope.value())
}

fn render_against<'v>(s: &str, ctx: impl FnOnce() -> &'v minijinja::Value) -> Result<Value, String> {
    if !is_template(s) {
        return Ok(Value::String(s.to_string()));
    }
    if let Some(expr) = single_expression(s) {
        let compiled = compiled(expr).map_err(|e| describe(&e))?;
        let v = compiled.eval(ctx()).map_err(|e| describe(&e))?;
        if v.is_undefined() {
            // Strict mode only trips when undefined is printed; a bare
            // expression must not quietly become null either.
            return Err(format!("undefined value: `{expr}` does not exist"));
        }
        return serde_json::to_value(&v).map_err(|e| e.to_string());
    }
    match compiled_template(s).map_err(|e| describe(&e))? {
        Some(t) => t.render(ctx()),
        None => env().render_str(s, ctx()),
    }
    .map(Value::String)
    .map_err(|e| describe(&e))
}

/// Renders one template per item of a list (`deduplicate.by`,
/// `aggregate.group_by`) with `item` and `index` over the story context: the
/// context is built once and shared, not copied per item.
pub struct PerItem {
    base: minijinja::Value,
}

impl PerItem {
    pub fn new(ctx: &Bindings) -> PerItem {
        PerItem { base: ctx.value() }
    }

    pub fn render(&self, s: &str, item: &Value, index: usize) -> Result<Value, String> {
        let ctx = minijinja::context! { item => minijinja::Value::from_serialize(item), index => index, ..self.base.clone() };
        render_against(s, || &ctx)
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
pub fn render_value(v: &Value, ctx: &Bindings) -> Result<Value, String> {
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
        let ctx = Bindings::from_json(&json!({"input": {"ioc": {"kind": "domain", "value": "x"}, "n": [1, 2, 3]}}));
        assert_eq!(render_str("{{ input.ioc }}", &ctx).unwrap(), json!({"kind": "domain", "value": "x"}));
        assert_eq!(render_str("{{ input.n | length }}", &ctx).unwrap(), json!(3));
        assert_eq!(render_str("seen {{ input.n | length }} times", &ctx).unwrap(), json!("seen 3 times"));
        assert_eq!(render_str("plain", &ctx).unwrap(), json!("plain"));
    }

    #[test]
    fn undefined_is_an_error_not_an_empty_string() {
        let ctx = Bindings::from_json(&json!({"input": {}}));
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
        let e = render_str("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", &Bindings::default());
        assert!(e.is_err());
    }

    #[test]
    fn a_cached_text_template_renders_against_each_context_anew() {
        let t = "https://{{ input.host }}/x?k={{ input.k }}";
        for k in 0..3 {
            let ctx = Bindings::from_json(&json!({"input": {"host": format!("h{k}.example"), "k": k}}));
            assert_eq!(render_str(t, &ctx).unwrap(), json!(format!("https://h{k}.example/x?k={k}")));
        }
        // A cached template stays strict about what is missing.
        assert!(render_str(t, &Bindings::from_json(&json!({"input": {"host": "h"}}))).unwrap_err().contains("undefined"));
        // A template that does not parse is refused each time, not kept.
        for _ in 0..2 {
            assert!(render_str("x {{ input.k ", &Bindings::from_json(&json!({"input": {"k": 1}}))).is_err());
        }
    }

    #[test]
    fn a_template_past_the_cache_budget_still_renders() {
        let big = format!("{}{{{{ input.k }}}}", "x".repeat(TEMPLATE_CACHE_BYTES + 1));
        let out = render_str(&big, &Bindings::from_json(&json!({"input": {"k": 7}}))).unwrap();
        assert_eq!(out.as_str().map(|s| (s.len(), s.ends_with("x7"))), Some((TEMPLATE_CACHE_BYTES + 2, true)));
    }

    #[test]
    fn bindings_give_each_step_its_latest_record_and_items_their_own_scope() {
        let mut ctx = Bindings::from_json(&json!({"input": {"n": 1}, "steps": {"a": {"status": "succeeded", "output": {"v": 1}}}}));
        assert_eq!(render_str("{{ steps.a.output.v }}", &ctx).unwrap(), json!(1));
        ctx.set_step("a", &json!({"status": "recovered", "output": {"v": 2}}));
        ctx.set_step("b", &json!({"status": "succeeded", "output": [1, 2]}));
        assert_eq!(render_str("{{ steps.a.output.v }}/{{ steps.a.status }}/{{ steps.b.output | length }}", &ctx).unwrap(), json!("2/recovered/2"));
        let item = ctx.with("item", &json!("x"));
        assert_eq!(render_str("{{ item }}{{ input.n }}", &item).unwrap(), json!("x1"));
        assert!(render_str("{{ item }}", &ctx).is_err(), "an item's binding stays with its copy");
        assert_eq!(render_value(&json!({"all": "{{ steps | length }}"}), &ctx).unwrap(), json!({"all": 2}));
    }
}
