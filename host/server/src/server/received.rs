//! JSON as received from a sender: parsed strictly. An object that names a
//! key twice is refused, not read as its last value — two readers (a
//! gateway that checked the first, warden that used the last) must never
//! see two different messages in one body.

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Parses `bytes` as JSON, refusing a key repeated in any object.
pub fn json(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let v = de.deserialize_any(Strict)?;
    de.end()?;
    Ok(v)
}

struct Strict;

impl<'de> Visitor<'de> for Strict {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(StrictSeed)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(de::Error::custom(format!("key `{}` appears twice in one object", crate::invocation::guest_text(&key, 64))));
            }
            let v = map.next_value_seed(StrictSeed)?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

struct StrictSeed;

impl<'de> de::DeserializeSeed<'de> for StrictSeed {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(Strict)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_key_named_twice_is_refused_at_any_depth() {
        for twice in [r#"{"a": 1, "a": 2}"#, r#"{"x": [{"k": 1, "k": 1}]}"#, r#"{"o": {"a": {}, "b": 0, "a": null}}"#, r#"{"\u0061": 1, "a": 2}"#] {
            let e = json(twice.as_bytes()).unwrap_err().to_string();
            assert!(e.contains("appears twice"), "{twice}: {e}");
        }
    }

    #[test]
    fn everything_else_reads_as_serde_json_reads_it() {
        for text in [r#"{"a": 1, "b": [1, 2.5, -3, 18446744073709551615], "c": {"d": null, "e": true, "f": "x\u00e9"}}"#, "[]", "7", "\"s\""] {
            assert_eq!(json(text.as_bytes()).unwrap(), serde_json::from_str::<Value>(text).unwrap(), "{text}");
        }
        assert!(json(b"{} trailing").is_err());
        assert!(json(b"{\"a\":").is_err());
        assert_eq!(json(br#"{"a": {"a": 1}}"#).unwrap(), json!({"a": {"a": 1}}), "the same key in different objects is fine");
    }
}
