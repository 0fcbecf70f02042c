//! Request body decoding: JSON (and YAML for apply patches) into values, noting duplicate
//! fields as a strict decoder would, without ever panicking on malformed input.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::status::ApiError;

/// A decoded body and the paths of fields that appeared more than once (last one wins).
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// The value.
    pub value: Value,
    /// Paths like `spec.size` of fields given twice.
    pub duplicates: Vec<String>,
}

struct Seed<'a> {
    path: String,
    dups: &'a mut Vec<String>,
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

impl<'de> DeserializeSeed<'de> for Seed<'_> {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Seed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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
        Ok(serde_json::Number::from_f64(v)
            .map(Value::Number)
            .unwrap_or(Value::Null))
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
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = vec![];
        let mut i = 0usize;
        loop {
            let seed = Seed {
                path: format!("{}[{i}]", self.path),
                dups: &mut *self.dups,
            };
            match seq.next_element_seed(seed)? {
                Some(v) => out.push(v),
                None => break,
            }
            i += 1;
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let path = join(&self.path, &key);
            let seed = Seed {
                path: path.clone(),
                dups: &mut *self.dups,
            };
            let v = map.next_value_seed(seed)?;
            if out.insert(key, v).is_some() {
                self.dups.push(path);
            }
        }
        Ok(Value::Object(out))
    }
}

/// Decode JSON, noting duplicate fields.
pub fn json(body: &[u8]) -> Result<Decoded, ApiError> {
    let mut dups = vec![];
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = Seed {
        path: String::new(),
        dups: &mut dups,
    }
    .deserialize(&mut de)
    .and_then(|v| de.end().map(|_| v))
    .map_err(|e| ApiError::bad_request(format!("error decoding request body: {e}")))?;
    Ok(Decoded {
        value,
        duplicates: dups,
    })
}

/// Decode JSON or YAML (apply patches may be either).
pub fn json_or_yaml(body: &[u8]) -> Result<Decoded, ApiError> {
    let trimmed = body
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .map(|i| body[i]);
    if trimmed == Some(b'{') {
        return json(body);
    }
    let text =
        std::str::from_utf8(body).map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?;
    let value: Value = serde_saphyr::from_str(text)
        .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?;
    Ok(Decoded {
        value,
        duplicates: vec![],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_are_reported_with_their_paths() {
        let d = json(br#"{"spec": {"a": 1, "a": 2, "l": [{"x": 1, "x": 1}]}}"#).unwrap();
        assert_eq!(d.value["spec"]["a"], 2);
        assert_eq!(d.duplicates, vec!["spec.a", "spec.l[0].x"]);
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        for bad in [&b"{"[..], b"{\"a\": }", b"\xff\xfe", b"[1,", b"{} {}"] {
            assert!(json(bad).is_err());
        }
        assert!(json_or_yaml(b"a: [1, 2").is_err());
        assert_eq!(
            json_or_yaml(b"a: 1\nb: x\n").unwrap().value,
            serde_json::json!({"a": 1, "b": "x"})
        );
    }
}
