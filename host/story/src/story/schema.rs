//! Story input schemas: the JSON Schema subset stories use — `type`,
//! `properties`, `required`, `additionalProperties`, `default`, `enum`,
//! `items`, `minimum`, `maximum`, `format` — checked before a run starts so a
//! bad webhook payload is refused with the field's name.
//!
//! Every keyword a schema may hold is enforced; one that is not is refused
//! when the story loads, never accepted and ignored (a `maximum` that nothing
//! checks would let through what its author meant to keep out). `title` and
//! `description` are the only annotations.

use serde_json::Value;

const TYPES: &[&str] = &["object", "array", "string", "number", "integer", "boolean", "null"];

/// Keywords [`validate`] enforces, and the annotations it may skip.
const KEYWORDS: &[&str] =
    &["type", "properties", "required", "additionalProperties", "default", "enum", "items", "minimum", "maximum", "format", "title", "description"];

/// String formats [`validate`] checks (JSON Schema names).
const FORMATS: &[&str] = &["date-time", "email", "hostname", "ipv4", "ipv6", "uri", "uuid"];

/// Checks that a schema only uses what [`validate`] understands.
pub fn check_schema(schema: &Value) -> Result<(), String> {
    let Some(obj) = schema.as_object() else {
        return Err("must be an object like {type: object, properties: {...}}".into());
    };
    for key in obj.keys() {
        if !KEYWORDS.contains(&key.as_str()) {
            return Err(format!("`{key}` is not supported here (use {})", KEYWORDS.join(", ")));
        }
    }
    for bound in ["minimum", "maximum"] {
        if let Some(b) = obj.get(bound).filter(|b| !b.is_number()) {
            return Err(format!("{bound} must be a number, got {b}"));
        }
    }
    if let Some(f) = obj.get("format") {
        if !f.as_str().is_some_and(|f| FORMATS.contains(&f)) {
            return Err(format!("format {f} is not one warden checks ({}); remove it or check the value in a step", FORMATS.join(", ")));
        }
    }
    match obj.get("additionalProperties") {
        None | Some(Value::Bool(_)) => {}
        Some(extra @ Value::Object(_)) => check_schema(extra).map_err(|e| format!("additionalProperties: {e}"))?,
        Some(other) => return Err(format!("additionalProperties must be true, false or a schema, got {other}")),
    }
    if let Some(t) = obj.get("type") {
        let ok = match t {
            Value::String(s) => TYPES.contains(&s.as_str()),
            Value::Array(a) => a.iter().all(|x| x.as_str().is_some_and(|s| TYPES.contains(&s))),
            _ => false,
        };
        if !ok {
            return Err(format!("type {t} is not one of {}", TYPES.join(", ")));
        }
    }
    if let Some(req) = obj.get("required") {
        let ok = req.as_array().is_some_and(|a| a.iter().all(Value::is_string));
        if !ok {
            return Err(format!("required must be a list of field names, got {req} (YAML reads bare y, n, yes, no, on, off as booleans: quote them)"));
        }
    }
    if let Some(props) = obj.get("properties") {
        let props = props.as_object().ok_or("properties must be a mapping")?;
        for (name, p) in props {
            check_schema(p).map_err(|e| format!("{name}: {e}"))?;
        }
    }
    if let Some(items) = obj.get("items") {
        check_schema(items).map_err(|e| format!("items: {e}"))?;
    }
    // A default that its own schema refuses would fail every run that relies on it.
    if let Some(default) = obj.get("default") {
        validate(schema, &mut default.clone(), "").map_err(|e| format!("default {default} does not fit its own schema: {e}"))?;
    }
    Ok(())
}

fn type_matches(t: &str, v: &Value) -> bool {
    match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "number" => v.is_number(),
        "integer" => v.as_i64().is_some() || v.as_u64().is_some(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        _ => false,
    }
}

/// Validates `v` against `schema`, filling in defaults. `path` names the field in errors.
pub fn validate(schema: &Value, v: &mut Value, path: &str) -> Result<(), String> {
    if schema.is_null() {
        return Ok(());
    }
    let here = if path.is_empty() { "input" } else { path };
    if let Some(t) = schema.get("type") {
        let ok = match t {
            Value::String(s) => type_matches(s, v),
            Value::Array(a) => a.iter().filter_map(Value::as_str).any(|s| type_matches(s, v)),
            _ => true,
        };
        if !ok {
            return Err(format!("{here} must be {} (got {})", t.as_str().map(String::from).unwrap_or(t.to_string()), kind(v)));
        }
    }
    if let Some(choices) = schema.get("enum").and_then(Value::as_array) {
        if !choices.contains(v) {
            return Err(format!("{here} must be one of {}", Value::Array(choices.clone())));
        }
    }
    // Bounds and formats apply to numbers and strings only, as in JSON Schema.
    if let Some(n) = v.as_f64() {
        if let Some(min) = schema.get("minimum").and_then(Value::as_f64).filter(|min| n < *min) {
            return Err(format!("{here} must be at least {min} (got {v})"));
        }
        if let Some(max) = schema.get("maximum").and_then(Value::as_f64).filter(|max| n > *max) {
            return Err(format!("{here} must be at most {max} (got {v})"));
        }
    }
    if let (Some(format), Some(text)) = (schema.get("format").and_then(Value::as_str), v.as_str()) {
        if !format_matches(format, text) {
            return Err(format!("{here} must be a valid {format}"));
        }
    }
    if let Some(obj) = v.as_object_mut() {
        if let Some(props) = schema.get("properties").and_then(Value::as_object) {
            for (name, p) in props {
                if !obj.contains_key(name) {
                    if let Some(d) = p.get("default") {
                        obj.insert(name.clone(), d.clone());
                    }
                }
            }
            for (name, p) in props {
                if let Some(child) = obj.get_mut(name) {
                    validate(p, child, &field_path(path, name))?;
                }
            }
        }
        if let Some(req) = schema.get("required").and_then(Value::as_array) {
            for r in req.iter().filter_map(Value::as_str) {
                if !obj.contains_key(r) {
                    return Err(format!("{here} is missing required field `{r}`"));
                }
            }
        }
        if let Some(extra) = schema.get("additionalProperties").filter(|e| **e != Value::Bool(true)) {
            let props = schema.get("properties").and_then(Value::as_object);
            for (name, child) in obj.iter_mut().filter(|(name, _)| !props.is_some_and(|p| p.contains_key(*name))) {
                let name = shown(name);
                if *extra == Value::Bool(false) {
                    return Err(format!("{here} has field `{name}`, which the story's schema does not allow (additionalProperties: false)"));
                }
                validate(extra, child, &field_path(path, &name))?;
            }
        }
    }
    if let (Some(items), Some(arr)) = (schema.get("items"), v.as_array_mut()) {
        for (i, item) in arr.iter_mut().enumerate() {
            validate(items, item, &format!("{here}[{i}]"))?;
        }
    }
    Ok(())
}

/// The path of field `name` inside the value at `path` (`""` at the top).
fn field_path(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

/// A field name from the payload, as a one-line error shows it: at most 64
/// bytes, control characters escaped (the error reaches terminals and logs).
fn shown(name: &str) -> String {
    crate::invocation::guest_text(name, 64).replace('\n', "\\n").replace('\t', "\\t")
}

/// Whether `text` is a valid `format` (one of [`FORMATS`]).
fn format_matches(format: &str, text: &str) -> bool {
    match format {
        "date-time" => chrono::DateTime::parse_from_rfc3339(text).is_ok(),
        "email" => text.parse::<lettre::Address>().is_ok(),
        "hostname" => is_hostname(text),
        "ipv4" => text.parse::<std::net::Ipv4Addr>().is_ok(),
        "ipv6" => text.parse::<std::net::Ipv6Addr>().is_ok(),
        // Absolute, with a scheme (a relative reference is a `uri-reference`).
        "uri" => url::Url::parse(text).is_ok(),
        "uuid" => uuid::Uuid::try_parse(text).is_ok_and(|_| text.len() == 36),
        _ => false,
    }
}

/// RFC 1123 host names: dot-separated labels of letters, digits and inner
/// hyphens, each 1–63 characters, 253 in all (one trailing dot allowed).
fn is_hostname(text: &str) -> bool {
    let name = text.strip_suffix('.').unwrap_or(text);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len()) && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') && !label.starts_with('-') && !label.ends_with('-')
        })
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_fill_in_and_fields_are_named() {
        let schema = json!({"type": "object", "required": ["indicator"], "properties": {
            "indicator": {"type": "object", "required": ["kind", "value"], "properties": {"kind": {"enum": ["domain", "ip"]}}},
            "window": {"type": "string", "default": "-24h"},
            "leads": {"type": "array", "items": {"type": "string"}}
        }});
        let mut v = json!({"indicator": {"kind": "domain", "value": "x"}});
        validate(&schema, &mut v, "").unwrap();
        assert_eq!(v["window"], "-24h");
        let mut bad = json!({"indicator": {"kind": "hash", "value": "x"}});
        assert!(validate(&schema, &mut bad, "").unwrap_err().starts_with("indicator.kind must be one of"));
        let mut bad = json!({"leads": ["a"]});
        assert_eq!(validate(&schema, &mut bad, "").unwrap_err(), "input is missing required field `indicator`");
        let mut bad = json!({"indicator": {"kind": "ip", "value": "x"}, "leads": [1]});
        assert_eq!(validate(&schema, &mut bad, "").unwrap_err(), "leads[0] must be string (got number)");
    }

    #[test]
    fn bounds_hold_for_numbers_and_name_the_field() {
        let schema = json!({"type": "object", "properties": {"hours": {"type": "integer", "minimum": 1, "maximum": 72}, "score": {"minimum": 0.5}}});
        for ok in [json!({"hours": 1}), json!({"hours": 72}), json!({"score": 0.5}), json!({"score": "n/a"})] {
            validate(&schema, &mut ok.clone(), "").unwrap_or_else(|e| panic!("{ok} refused: {e}"));
        }
        assert_eq!(validate(&schema, &mut json!({"hours": 0}), "").unwrap_err(), "hours must be at least 1 (got 0)");
        assert_eq!(validate(&schema, &mut json!({"hours": 73}), "").unwrap_err(), "hours must be at most 72 (got 73)");
        assert_eq!(validate(&schema, &mut json!({"score": 0.49}), "").unwrap_err(), "score must be at least 0.5 (got 0.49)");
        assert!(validate(&schema, &mut json!({"hours": 1e300}), "").is_err(), "a huge number passes no maximum");
    }

    #[test]
    fn additional_properties_false_refuses_unlisted_fields_and_a_schema_checks_them() {
        let closed = json!({"type": "object", "properties": {"ioc": {"type": "string"}}, "additionalProperties": false});
        validate(&closed, &mut json!({"ioc": "x"}), "").unwrap();
        let err = validate(&closed, &mut json!({"ioc": "x", "run_as": "root"}), "").unwrap_err();
        assert_eq!(err, "input has field `run_as`, which the story's schema does not allow (additionalProperties: false)");
        // Nested objects name their path; a long field name is shortened.
        let nested = json!({"type": "object", "properties": {"meta": closed.clone()}});
        assert!(validate(&nested, &mut json!({"meta": {"x": 1}}), "").unwrap_err().starts_with("meta has field `x`"));
        let long = "k".repeat(5000);
        assert!(validate(&closed, &mut json!({ long.as_str(): 1 }), "").unwrap_err().len() < 200);
        let err = validate(&closed, &mut json!({"a\nb\u{1b}[31m": 1}), "").unwrap_err();
        assert!(err.starts_with("input has field `a\\nb\\u{1b}[31m`"), "{err}");
        // A schema for the rest: each unlisted field must match it.
        let typed = json!({"type": "object", "properties": {"ioc": {"type": "string"}}, "additionalProperties": {"type": "integer", "maximum": 9}});
        validate(&typed, &mut json!({"ioc": "x", "a": 1, "b": 9}), "").unwrap();
        assert_eq!(validate(&typed, &mut json!({"ioc": "x", "a": "1"}), "").unwrap_err(), "a must be integer (got string)");
        assert_eq!(validate(&typed, &mut json!({"ioc": "x", "a": 10}), "").unwrap_err(), "a must be at most 9 (got 10)");
        // true, like leaving it out, allows anything.
        validate(&json!({"properties": {}, "additionalProperties": true}), &mut json!({"z": [1]}), "").unwrap();
    }

    #[test]
    fn formats_are_checked_on_strings() {
        let cases = [
            ("email", "lead@example.com", "lead at example.com"),
            ("ipv4", "10.0.0.1", "10.0.0.256"),
            ("ipv6", "2001:db8::1", "2001:db8:::1"),
            ("hostname", "evil-domain.example", "evil_domain.example"),
            ("uri", "https://example.com/x?y=1", "/relative/path"),
            ("date-time", "2026-12-06T12:00:00Z", "2026-12-06 noon"),
            ("uuid", "0192f1c8-7b3a-7cde-8f00-0123456789ab", "0192f1c87b3a7cde8f000123456789ab"),
        ];
        for (format, good, bad) in cases {
            let schema = json!({"type": "object", "properties": {"v": {"type": "string", "format": format}}});
            validate(&schema, &mut json!({"v": good}), "").unwrap_or_else(|e| panic!("{format}: {good} refused: {e}"));
            assert_eq!(validate(&schema, &mut json!({"v": bad}), "").unwrap_err(), format!("v must be a valid {format}"), "{format}: {bad}");
        }
        assert!(!is_hostname(&format!("{}.example", "a".repeat(64))), "a label past 63 characters");
        assert!(!is_hostname("-lead.example") && !is_hostname("") && is_hostname("example.com."));
    }

    #[test]
    fn every_keyword_a_schema_holds_is_one_that_is_enforced() {
        assert!(check_schema(
            &json!({"type": "object", "additionalProperties": false, "properties": {"n": {"minimum": 1, "maximum": 2.5}, "e": {"format": "email"}}})
        )
        .is_ok());
        assert!(check_schema(&json!({"maximum": "10"})).unwrap_err().contains("maximum must be a number"));
        let err = check_schema(&json!({"format": "credit-card"})).unwrap_err();
        assert!(err.contains("format \"credit-card\" is not one warden checks") && err.contains("email"), "{err}");
        assert!(check_schema(&json!({"additionalProperties": "no"})).unwrap_err().contains("true, false or a schema"));
        assert!(check_schema(&json!({"additionalProperties": {"minLength": 1}})).unwrap_err().starts_with("additionalProperties: `minLength`"));
        assert!(check_schema(&json!({"pattern": "^a"})).unwrap_err().contains("`pattern` is not supported"));
        let err = check_schema(&json!({"properties": {"hours": {"type": "integer", "minimum": 1, "default": 0}}})).unwrap_err();
        assert_eq!(err, "hours: default 0 does not fit its own schema: input must be at least 1 (got 0)");
        assert!(check_schema(&json!({"type": "string", "format": "email", "default": "nobody"})).is_err());
    }

    #[test]
    fn unsupported_keywords_are_refused_at_load() {
        assert!(check_schema(&json!({"type": "object", "oneOf": []})).unwrap_err().contains("`oneOf`"));
        assert!(check_schema(&json!({"type": "thing"})).is_err());
        assert!(check_schema(&json!({"type": "object", "required": [false]})).unwrap_err().contains("quote them"));
    }
}
