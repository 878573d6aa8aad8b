//! Templating for stories, with minijinja.
//!
//! A string is a template when it holds `{{ … }}` or `{% … %}`. A string that
//! is exactly one `{{ expression }}` evaluates to the expression's value (an
//! object stays an object, a number a number); anything else renders to text.
//! Undefined is an error, never an empty string. The context holds `input`,
//! `steps`, `item`/`index` (in `for_each`), `run` and `error` (in fallbacks):
//! credential values are not reachable from here at all.
//!
//! Where a template is rendered: an expression that is only a path of names
//! (`{{ input.ioc.value }}`) reads a value the context already holds, and the
//! host looks it up itself. Everything else — filters, operators, text with
//! expressions in it — is rendered by the sandboxed evaluator
//! ([`crate::runtime::evaluator`]) under a memory and CPU limit, with the
//! parts of the context the template names. The host cannot render a
//! template: `warden_eval` is built here without its renderers.

use crate::runtime::evaluator::{self, Language};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

pub use warden_eval::excerpt;
pub use warden_eval::jinja::{is_template, references};
use warden_eval::jinja::{plain_path, single_expression};

/// What a story's templates can read — `input`, `steps`, `run` and, where
/// they apply, `item`/`index`, `error` and `approval` — shared, not copied:
/// a hunt's 10,000 events are held once per run however many steps and
/// `for_each` items bind them.
#[derive(Clone, Default)]
pub struct Bindings {
    entries: BTreeMap<String, Arc<Value>>,
    steps: BTreeMap<String, Arc<Value>>,
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
        self.entries.insert(name.to_string(), Arc::new(value.clone()));
    }

    /// Binds `steps.<id>` to a step's record (`status`, `output`, `error`).
    pub fn set_step(&mut self, id: &str, record: &Value) {
        self.steps.insert(id.to_string(), Arc::new(record.clone()));
    }

    /// These bindings and one more: a `for_each` item's, or a fallback's `error`.
    pub fn with(&self, name: &str, value: &Value) -> Bindings {
        let mut b = self.clone();
        b.set(name, value);
        b
    }

    /// The value at a plain path (`input.ioc.value`), if the context holds one.
    fn lookup(&self, path: &[&str]) -> Option<&Value> {
        let (root, rest) = match path {
            ["steps", id, rest @ ..] => (self.steps.get(*id)?, rest),
            [name, rest @ ..] => (self.entries.get(*name)?, rest),
            [] => return None,
        };
        rest.iter().try_fold(&**root, |v, key| v.as_object()?.get(*key))
    }

    /// The context as JSON text for the evaluator: only the roots `wanted`
    /// names (`input`, `steps.hunt`; `steps` alone is every step), or all of
    /// it when `wanted` is `None`. Serialized from the shared values, not copied.
    fn context(&self, wanted: Option<&BTreeSet<String>>) -> String {
        #[derive(serde::Serialize)]
        #[serde(untagged)]
        enum Entry<'a> {
            One(&'a Value),
            Steps(BTreeMap<&'a str, &'a Value>),
        }
        let want = |name: &str| wanted.is_none_or(|w| w.iter().any(|r| r.split('.').next() == Some(name)));
        let want_step =
            |id: &str| wanted.is_none_or(|w| w.iter().any(|r| r == "steps" || r.strip_prefix("steps.").is_some_and(|p| p.split('.').next() == Some(id))));
        let mut context: BTreeMap<&str, Entry> =
            self.entries.iter().filter(|(k, _)| *k != "steps" && want(k)).map(|(k, v)| (k.as_str(), Entry::One(v))).collect();
        if want("steps") {
            context.insert("steps", Entry::Steps(self.steps.iter().filter(|(id, _)| want_step(id)).map(|(id, v)| (id.as_str(), &**v)).collect()));
        }
        serde_json::to_string(&context).expect("JSON values serialize")
    }
}

/// Distinct template sources whose roots are kept (stories are finite: past
/// it, roots are worked out on each render).
const ROOTS_CACHE_MAX: usize = 10_000;

/// The context roots a set of template strings read (`None`: one does not
/// parse, so the evaluator gets everything and reports the error itself).
fn roots(templates: &[&str]) -> Option<BTreeSet<String>> {
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<BTreeSet<String>>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut all = BTreeSet::new();
    for t in templates {
        let cached = cache.lock().unwrap_or_else(|p| p.into_inner()).get(*t).cloned();
        let refs = match cached {
            Some(r) => r,
            None => {
                let refs: BTreeSet<String> = references(t).ok()?.into_iter().map(|r| r.split('.').take(2).collect::<Vec<_>>().join(".")).collect();
                let refs = Arc::new(refs);
                let mut map = cache.lock().unwrap_or_else(|p| p.into_inner());
                if map.len() < ROOTS_CACHE_MAX {
                    map.insert(t.to_string(), refs.clone());
                }
                refs
            }
        };
        all.extend(refs.iter().cloned());
    }
    Some(all)
}

/// `v` with every template string that is a plain path replaced by the value
/// it names, and every text whose expressions are all plain paths filled in;
/// `None` when any template needs the evaluator.
fn looked_up(v: &Value, ctx: &Bindings) -> Option<Value> {
    Some(match v {
        Value::String(s) if is_template(s) => match single_expression(s) {
            Some(expr) => ctx.lookup(&plain_path(expr)?)?.clone(),
            None => Value::String(filled_in(s, ctx)?),
        },
        Value::Array(items) => Value::Array(items.iter().map(|i| looked_up(i, ctx)).collect::<Option<_>>()?),
        Value::Object(map) => Value::Object(map.iter().map(|(k, v)| Some((k.clone(), looked_up(v, ctx)?))).collect::<Option<_>>()?),
        other => other.clone(),
    })
}

/// A text whose expressions are all plain paths to a string or an integer
/// (`https://{{ input.host }}/x?k={{ input.k }}`), filled in as minijinja
/// prints those (not booleans: it prints `True`); `None` for anything else (a tag, a comment,
/// whitespace control, a trailing newline minijinja would drop, another
/// kind of value). What it makes is the text and values the context holds.
fn filled_in(text: &str, ctx: &Bindings) -> Option<String> {
    if text.contains("{%") || text.contains("{#") || text.ends_with('\n') {
        return None;
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let after = &rest[open + 2..];
        let close = after.find("}}")?;
        let value = match ctx.lookup(&plain_path(after[..close].trim())?)? {
            Value::String(s) => std::borrow::Cow::Borrowed(s.as_str()),
            Value::Number(n) if !n.is_f64() => std::borrow::Cow::Owned(n.to_string()),
            _ => return None,
        };
        // The same value named many times can make a large text: past what
        // the evaluator may answer, it is the evaluator's to refuse.
        if out.len() + value.len() > evaluator::MAX_ANSWER_BYTES {
            return None;
        }
        out.push_str(&value);
        rest = &after[close + 2..];
    }
    out.push_str(rest);
    Some(out)
}

/// Renders one string against `ctx`.
pub fn render_str(s: &str, ctx: &Bindings) -> Result<Value, String> {
    if !is_template(s) {
        return Ok(Value::String(s.to_string()));
    }
    render_value(&Value::String(s.to_string()), ctx).map_err(|e| {
        // One string: its error without the excerpt render_value puts first.
        let prefix = format!("`{}`: ", excerpt(s));
        e.strip_prefix(&prefix).map(str::to_string).unwrap_or(e)
    })
}

/// Renders every string inside a JSON value.
pub fn render_value(v: &Value, ctx: &Bindings) -> Result<Value, String> {
    if let Some(v) = looked_up(v, ctx) {
        return Ok(v);
    }
    let mut texts = Vec::new();
    strings(v, &mut texts);
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let context = ctx.context(roots(&texts).as_ref());
    evaluator::render(Language::Jinja, v, context)
}

/// Renders `template` once per item of `items` (`deduplicate.by`,
/// `aggregate.group_by`) with `item` and `index` over the story context.
pub fn render_each(template: &str, ctx: &Bindings, items: &[Value]) -> Result<Vec<Value>, String> {
    if !is_template(template) {
        return Ok(vec![Value::String(template.to_string()); items.len()]);
    }
    // `{{ item.name }}`: read from each item here.
    if let Some(["item", rest @ ..]) = single_expression(template).and_then(plain_path).as_deref() {
        let found: Option<Vec<Value>> = items.iter().map(|i| rest.iter().try_fold(i, |v, k| v.as_object()?.get(*k)).cloned()).collect();
        if let Some(found) = found {
            return Ok(found);
        }
    }
    let context = ctx.context(roots(&[template]).as_ref());
    evaluator::render_each(Language::Jinja, &Value::String(template.to_string()), context, items)
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
    fn a_text_template_renders_against_each_context_anew() {
        let t = "https://{{ input.host }}/x?k={{ input.k }}";
        for k in 0..3 {
            let ctx = Bindings::from_json(&json!({"input": {"host": format!("h{k}.example"), "k": k}}));
            assert_eq!(render_str(t, &ctx).unwrap(), json!(format!("https://h{k}.example/x?k={k}")));
        }
        assert!(render_str(t, &Bindings::from_json(&json!({"input": {"host": "h"}}))).unwrap_err().contains("undefined"));
        for _ in 0..2 {
            assert!(render_str("x {{ input.k ", &Bindings::from_json(&json!({"input": {"k": 1}}))).is_err());
        }
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

    /// A text of plain paths is filled in by the host exactly as the
    /// evaluator renders it; anything it cannot say the same way goes there.
    #[test]
    fn a_text_of_plain_paths_is_filled_in_as_the_evaluator_renders_it() {
        let ctx = Bindings::from_json(
            &json!({"input": {"host": "h.example", "k": 7, "big": 18446744073709551615u64, "neg": -3, "yes": true, "f": 1.0, "o": {"a": 1}, "t": "{{ 7 * 6 }}", "u": "é}}"}}),
        );
        let texts = [
            "https://{{ input.host }}/x?k={{input.k}}",
            "{{ input.big }}/{{ input.neg }}",
            "a }} b {{ input.host }} c",
            "x {{ input.t }} {{ input.u }}",
            "{{ input.host }}{{ input.k }}",
        ];
        for t in texts {
            assert!(filled_in(t, &ctx).is_some(), "{t} is only plain paths");
            let by_evaluator = evaluator::render(Language::Jinja, &json!(t), ctx.context(None)).unwrap();
            assert_eq!(render_str(t, &ctx).unwrap(), by_evaluator, "{t}");
        }
        let many = "{{ input.s }}".repeat(10);
        let large = Bindings::from_json(&json!({"input": {"s": "x".repeat(1 << 20)}}));
        assert_eq!(filled_in(&many, &large), None, "ten copies of a 1 MiB value are the evaluator's to refuse");
        assert!(render_str(&many, &large).unwrap_err().contains("at most 4 MiB"));
        for t in [
            "{{ input.yes }} x",
            "f = {{ input.f }}",
            "{{ input.o }} x",
            "x {{ input.k }}\n",
            "{{- input.k }} x",
            "{% if true %}x{% endif %} {{ input.k }}",
            "{# c #} {{ input.k }}",
            "x {{ input.missing }}",
            "x {{ input.host | upper }}",
        ] {
            assert_eq!(filled_in(t, &ctx), None, "{t} goes to the evaluator");
        }
    }

    #[test]
    fn only_the_named_roots_are_sent_to_the_evaluator() {
        let ctx = Bindings::from_json(&json!({"input": {"n": 1}, "run": {"id": "r"}, "steps": {"a": {"output": 1}, "b": {"output": 2}}}));
        let sent: Value = serde_json::from_str(&ctx.context(roots(&["{{ input.n ~ steps.b.output }}"]).as_ref())).unwrap();
        assert_eq!(sent, json!({"input": {"n": 1}, "steps": {"b": {"output": 2}}}));
        let all: Value = serde_json::from_str(&ctx.context(roots(&["{{ steps | length }}"]).as_ref())).unwrap();
        assert_eq!(all, json!({"steps": {"a": {"output": 1}, "b": {"output": 2}}}));
    }

    #[test]
    fn a_plain_path_is_looked_up_by_the_host_and_keeps_its_value() {
        let ctx = Bindings::from_json(&json!({"input": {"big": 12345678901234567890u64, "f": 1.5, "o": {"k": [1]}}}));
        assert_eq!(
            render_value(&json!({"a": "{{ input.big }}", "b": "{{input.f}}", "c": "{{ input.o }}"}), &ctx).unwrap(),
            json!({"a": 12345678901234567890u64, "b": 1.5, "c": {"k": [1]}})
        );
    }

    /// What a webhook sends is data: growing it inside a template fails that
    /// render with a one-line reason; the host (this test process) lives on.
    #[test]
    fn a_template_that_grows_webhook_data_past_the_memory_limit_fails_only_itself() {
        let ctx = Bindings::from_json(&json!({"input": {"s": "a".repeat(12_000), "r": "a".repeat(12_000)}}));
        let bomb = "{{ input.s | replace('a', input.r) | replace('a', input.r) | replace('a', input.r) }}";
        let e = render_str(bomb, &ctx).unwrap_err();
        assert!(e.contains("MiB of memory") || e.contains("too long"), "{e}");
        assert!(!e.contains('\n'), "{e}");
        // The evaluator is still there for the next render.
        assert_eq!(render_str("{{ input.s | length }}", &ctx).unwrap(), json!(12_000));
    }

    /// What the evaluator answers is parsed by the host, outside its limit:
    /// an answer past the cap is refused before it is parsed.
    #[test]
    fn a_rendered_value_too_large_for_the_host_to_parse_is_refused() {
        let ctx = Bindings::from_json(&json!({"input": {"s": "ab".repeat(1000)}}));
        let e = render_str("{{ input.s * 2500 }}", &ctx).unwrap_err();
        assert!(e.contains("rendered 5 MiB of JSON; at most 4 MiB"), "{e}");
        assert_eq!(render_str("{{ (input.s * 1500) | length }}", &ctx).unwrap(), json!(3_000_000), "under the cap it renders");
    }

    #[test]
    fn string_concatenation_that_doubles_is_bounded() {
        let mut t = String::from("{% set a = input.s %}");
        for _ in 0..40 {
            t.push_str("{% set a = a ~ a %}");
        }
        t.push_str("{{ a | length }}");
        let ctx = Bindings::from_json(&json!({"input": {"s": "x".repeat(1000)}}));
        let e = render_str(&t, &ctx).unwrap_err();
        assert!(e.contains("memory") || e.contains("too long") || e.contains("fuel"), "{e}");
    }

    #[test]
    fn a_rendered_value_that_is_a_template_is_not_rendered_again() {
        let ctx = Bindings::from_json(&json!({"input": {"t": "{{ 7 * 6 }}", "u": "{{ input.t }}"}}));
        assert_eq!(render_str("{{ input.t }}", &ctx).unwrap(), json!("{{ 7 * 6 }}"));
        assert_eq!(render_str("x {{ input.t }}", &ctx).unwrap(), json!("x {{ 7 * 6 }}"));
        assert_eq!(render_value(&json!(["{{ input.u }}", "{{ input.u | upper }}"]), &ctx).unwrap(), json!(["{{ input.t }}", "{{ INPUT.T }}"]));
    }

    #[test]
    fn per_item_renders_bind_item_and_index() {
        let ctx = Bindings::from_json(&json!({"input": {"p": "-"}}));
        let items = [json!({"n": "a"}), json!({"n": "b"})];
        assert_eq!(render_each("{{ item.n }}", &ctx, &items).unwrap(), vec![json!("a"), json!("b")]);
        assert_eq!(render_each("{{ item.n ~ input.p ~ index }}", &ctx, &items).unwrap(), vec![json!("a-0"), json!("b-1")]);
        assert!(render_each("{{ item.missing }}", &ctx, &items).is_err());
    }
}
