//! Built-in transforms: data shaping that needs no plugin.
//!
//! ```yaml
//! transform: { set: { hosts: "{{ steps.hunt.output.unique_hosts | length }}" } }
//! transform: { merge: ["{{ steps.a.output }}", {extra: 1}] }
//! transform: { extract: { from: "{{ steps.hunt.output }}", paths: { first: "unique_hosts.0.agent_name" } } }
//! transform: { deduplicate: { items: "{{ steps.x.output }}", by: "{{ item.agent_uuid }}" } }
//! transform: { aggregate: { items: "{{ … }}", group_by: "{{ item.os }}" } }
//! transform: { assert: { that: "{{ steps.hunt.output.query_id is defined }}", message: "the hunt returned no query id" } }
//! ```

use super::state::ErrorKind;
use super::template::{self, render_str, render_value, truthy, Bindings};
use serde::Deserialize;
use serde_json::{json, Map, Value};

/// One built-in transform; written as a map with exactly one of these keys.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transform {
    Set(Value),
    Merge(Vec<Value>),
    Extract(Extract),
    Deduplicate(Deduplicate),
    Aggregate(Aggregate),
    Assert(Assert),
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Extract {
    pub from: Value,
    pub paths: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deduplicate {
    pub items: Value,
    pub by: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Aggregate {
    pub items: Value,
    pub group_by: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Assert {
    pub that: String,
    pub message: String,
}

/// Why a transform failed: its templates (kind `template`), or its data (kind `failed`).
#[derive(Debug, Clone, PartialEq)]
pub enum TransformError {
    Template(String),
    Failed(String),
}

impl TransformError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            TransformError::Template(_) => ErrorKind::Template,
            TransformError::Failed(_) => ErrorKind::Failed,
        }
    }
    pub fn into_message(self) -> String {
        match self {
            TransformError::Template(m) | TransformError::Failed(m) => m,
        }
    }
}

use TransformError::{Failed, Template};

impl Transform {
    /// `set`, `merge`, … as written in a story.
    pub fn name(&self) -> &'static str {
        match self {
            Transform::Set(_) => "set",
            Transform::Merge(_) => "merge",
            Transform::Extract(_) => "extract",
            Transform::Deduplicate(_) => "deduplicate",
            Transform::Aggregate(_) => "aggregate",
            Transform::Assert(_) => "assert",
        }
    }

    /// Reads the one-key map a story writes, with an error that names the choices.
    pub fn from_map(map: Map<String, Value>) -> Result<Transform, String> {
        const KINDS: &str = "set, merge, extract, deduplicate, aggregate, assert";
        if map.len() != 1 {
            let keys: Vec<&str> = map.keys().map(String::as_str).collect();
            return Err(format!("a transform needs exactly one of {KINDS} (it has: {})", if keys.is_empty() { "none".into() } else { keys.join(", ") }));
        }
        let kind = map.keys().next().cloned().unwrap_or_default();
        serde_json::from_value(Value::Object(map)).map_err(|e| match KINDS.split(", ").any(|k| k == kind) {
            true => format!("transform `{kind}`: {e}"),
            false => format!("`{kind}` is not a transform; use one of {KINDS}"),
        })
    }

    /// What serde cannot say: an `extract` path must be a dotted string.
    pub fn validate(&self) -> Result<(), String> {
        if let Transform::Extract(e) = self {
            for (k, p) in &e.paths {
                if !p.is_string() {
                    return Err(format!("extract.paths.{k} must be a dotted path string like `unique_hosts.0.agent_name`"));
                }
            }
        }
        Ok(())
    }

    /// Template strings that only read the story context (for load-time checks).
    /// `by` and `group_by` read `item` and are checked when they run.
    pub fn templates(&self, out: &mut Vec<String>) {
        match self {
            Transform::Set(v) => template::strings(v, out),
            Transform::Merge(list) => list.iter().for_each(|v| template::strings(v, out)),
            Transform::Extract(e) => template::strings(&e.from, out),
            Transform::Deduplicate(d) => template::strings(&d.items, out),
            Transform::Aggregate(a) => template::strings(&a.items, out),
            Transform::Assert(a) => template::strings(&Value::String(a.that.clone()), out),
        }
    }

    pub fn apply(&self, ctx: &Bindings) -> Result<Value, TransformError> {
        match self {
            Transform::Set(v) => render_value(v, ctx).map_err(Template),
            Transform::Merge(list) => {
                let mut out = Map::new();
                for v in list {
                    match render_value(v, ctx).map_err(Template)? {
                        Value::Object(m) => out.extend(m),
                        Value::Null => {}
                        other => return Err(Failed(format!("merge takes objects, got {other}"))),
                    }
                }
                Ok(Value::Object(out))
            }
            Transform::Extract(e) => {
                let from = render_value(&e.from, ctx).map_err(Template)?;
                let mut out = Map::new();
                for (k, p) in &e.paths {
                    let path = p.as_str().unwrap_or("");
                    out.insert(k.clone(), lookup(&from, path).ok_or_else(|| Failed(format!("extract.paths.{k}: `{path}` is not in the value")))?);
                }
                Ok(Value::Object(out))
            }
            Transform::Deduplicate(d) => {
                let items = list(render_value(&d.items, ctx).map_err(Template)?, "deduplicate.items")?;
                let mut seen = std::collections::HashSet::new();
                let mut kept = Vec::new();
                let keys = template::render_each(&d.by, ctx, &items).map_err(|e| Template(format!("deduplicate.by: {e}")))?;
                for (item, key) in items.into_iter().zip(keys) {
                    if seen.insert(key.to_string()) {
                        kept.push(item);
                    }
                }
                Ok(Value::Array(kept))
            }
            Transform::Aggregate(a) => {
                let items = list(render_value(&a.items, ctx).map_err(Template)?, "aggregate.items")?;
                let total = items.len();
                let mut counts: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
                for key in template::render_each(&a.group_by, ctx, &items).map_err(|e| Template(format!("aggregate.group_by: {e}")))? {
                    let key = match key {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    *counts.entry(key).or_default() += 1;
                }
                let mut groups: Vec<(String, usize)> = counts.into_iter().collect();
                groups.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
                let groups: Vec<Value> = groups.into_iter().map(|(k, n)| json!({"key": k, "count": n})).collect();
                Ok(json!({"total": total, "groups": groups}))
            }
            Transform::Assert(a) => {
                let v = render_str(&a.that, ctx).map_err(Template)?;
                if truthy(&v) {
                    Ok(json!({"ok": true}))
                } else {
                    Err(Failed(a.message.clone()))
                }
            }
        }
    }
}

fn list(v: Value, what: &str) -> Result<Vec<Value>, TransformError> {
    match v {
        Value::Array(a) => Ok(a),
        other => Err(Failed(format!("{what} must be a list, got {}", short(&other)))),
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 80 {
        format!("{}…", &s[..s.floor_char_boundary(80)])
    } else {
        s
    }
}

/// `a.b.0.c` into objects and arrays.
pub fn lookup(v: &Value, path: &str) -> Option<Value> {
    lookup_ref(v, path).cloned()
}

/// `a.b.0.c` in a JSON value (object keys and list indexes).
pub use warden_eval::lookup_ref;

#[cfg(test)]
mod tests {
    use super::*;

    fn t(yaml: Value) -> Transform {
        serde_json::from_value(yaml).unwrap()
    }

    #[test]
    fn each_transform_shapes_data() {
        let ctx = Bindings::from_json(&json!({"steps": {"hunt": {"output": {"hosts": [
            {"name": "a", "os": "windows"}, {"name": "b", "os": "linux"}, {"name": "a", "os": "windows"}
        ]}}}}));
        let d = t(json!({"deduplicate": {"items": "{{ steps.hunt.output.hosts }}", "by": "{{ item.name }}"}}));
        assert_eq!(d.apply(&ctx).unwrap().as_array().unwrap().len(), 2);
        let a = t(json!({"aggregate": {"items": "{{ steps.hunt.output.hosts }}", "group_by": "{{ item.os }}"}}));
        assert_eq!(a.apply(&ctx).unwrap(), json!({"total": 3, "groups": [{"key": "windows", "count": 2}, {"key": "linux", "count": 1}]}));
        let e = t(json!({"extract": {"from": "{{ steps.hunt.output }}", "paths": {"first": "hosts.0.name", "n": "hosts.2.os"}}}));
        assert_eq!(e.apply(&ctx).unwrap(), json!({"first": "a", "n": "windows"}));
        let m = t(json!({"merge": [{"a": 1}, "{{ steps.hunt.output }}"]}));
        assert_eq!(m.apply(&ctx).unwrap()["a"], 1);
        let s = t(json!({"set": {"count": "{{ steps.hunt.output.hosts | length }}"}}));
        assert_eq!(s.apply(&ctx).unwrap(), json!({"count": 3}));
        let ok = t(json!({"assert": {"that": "{{ steps.hunt.output.hosts | length > 0 }}", "message": "no hosts"}}));
        assert!(ok.apply(&ctx).is_ok());
        let no = t(json!({"assert": {"that": "{{ steps.hunt.output.hosts | length > 5 }}", "message": "too few hosts"}}));
        assert_eq!(no.apply(&ctx).unwrap_err(), Failed("too few hosts".into()));
        let undefined = t(json!({"set": {"x": "{{ steps.nope.output }}"}}));
        assert!(matches!(undefined.apply(&ctx), Err(Template(m)) if m.contains("undefined")));
    }

    #[test]
    fn per_item_templates_see_the_item_its_index_and_the_story() {
        let ctx = Bindings::from_json(&json!({"input": {"field": "os"}, "steps": {"hunt": {"output": {"hosts": [
            {"name": "a", "os": "linux"}, {"name": "b", "os": "windows"}, {"name": "c", "os": "linux"}, {"name": "d", "os": "mac"}
        ]}}}}));
        let d = t(json!({"deduplicate": {"items": "{{ steps.hunt.output.hosts }}", "by": "{{ item[input.field] }}"}}));
        assert_eq!(
            d.apply(&ctx).unwrap(),
            json!([{"name": "a", "os": "linux"}, {"name": "b", "os": "windows"}, {"name": "d", "os": "mac"}]),
            "the first of each key, in order"
        );
        let pairs = t(json!({"deduplicate": {"items": "{{ steps.hunt.output.hosts }}", "by": "{{ index // 2 }}"}}));
        assert_eq!(pairs.apply(&ctx).unwrap().as_array().unwrap().len(), 2);
        let a = t(json!({"aggregate": {"items": "{{ steps.hunt.output.hosts }}", "group_by": "{{ item.os }}"}}));
        assert_eq!(
            a.apply(&ctx).unwrap(),
            json!({"total": 4, "groups": [{"key": "linux", "count": 2}, {"key": "mac", "count": 1}, {"key": "windows", "count": 1}]}),
            "by count, then by key"
        );
        let missing = t(json!({"deduplicate": {"items": "{{ steps.hunt.output.hosts }}", "by": "{{ item.owner }}"}}));
        assert!(matches!(missing.apply(&ctx), Err(Template(m)) if m.starts_with("deduplicate.by: ") && m.contains("undefined")));
        // The per-item context leaves the story's own untouched.
        assert!(render_str("{{ item }}", &ctx).is_err());
    }

    #[test]
    fn a_missing_path_is_an_error() {
        let e = t(json!({"extract": {"from": {"a": 1}, "paths": {"x": "b.c"}}}));
        assert!(matches!(e.apply(&Bindings::default()), Err(Failed(m)) if m.contains("`b.c` is not in the value")));
    }
}
