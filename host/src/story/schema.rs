//! Story input schemas: the JSON Schema subset stories use — `type`,
//! `properties`, `required`, `default`, `enum`, `items` — checked before a run
//! starts so a bad webhook payload is refused with the field's name.

use serde_json::Value;

const TYPES: &[&str] = &["object", "array", "string", "number", "integer", "boolean", "null"];

/// Checks that a schema only uses what [`validate`] understands.
pub fn check_schema(schema: &Value) -> Result<(), String> {
    let Some(obj) = schema.as_object() else {
        return Err("must be an object like {type: object, properties: {...}}".into());
    };
    for key in obj.keys() {
        if !["type", "properties", "required", "default", "enum", "items", "description", "additionalProperties", "title", "format", "minimum", "maximum"].contains(&key.as_str()) {
            return Err(format!("`{key}` is not supported here (type, properties, required, default, enum, items)"));
        }
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
            return Err(format!(
                "required must be a list of field names, got {req} (YAML reads bare y, n, yes, no, on, off as booleans: quote them)"
            ));
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
                    validate(p, child, &format!("{}{name}", if path.is_empty() { String::new() } else { format!("{path}.") }))?;
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
    }
    if let (Some(items), Some(arr)) = (schema.get("items"), v.as_array_mut()) {
        for (i, item) in arr.iter_mut().enumerate() {
            validate(items, item, &format!("{here}[{i}]"))?;
        }
    }
    Ok(())
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
    fn unsupported_keywords_are_refused_at_load() {
        assert!(check_schema(&json!({"type": "object", "oneOf": []})).unwrap_err().contains("`oneOf`"));
        assert!(check_schema(&json!({"type": "thing"})).is_err());
        assert!(check_schema(&json!({"type": "object", "required": [false]})).unwrap_err().contains("quote them"));
    }
}
