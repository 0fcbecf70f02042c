//! Helpers the fuzz targets share.
#![allow(dead_code)] // each target uses some of these

use serde_json::{Value, json};

/// Splits an input into a target object (line 1, JSON; a small ConfigMap when it is not) and
/// the rest, the body under test.
pub fn target_and_body(data: &[u8]) -> (Value, &[u8]) {
    let (first, rest) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&b""[..], data),
    };
    let target = serde_json::from_slice(first).unwrap_or_else(|_| {
        json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "cm", "namespace": "default", "labels": {"app": "web"}},
            "data": {"a": "1", "b": "two"},
        })
    });
    (target, rest)
}

/// What the server stores it must be able to read back: the JSON text of `v` decodes with the
/// server's own body decoder (`decode::json`, which a state file and a re-submitted object go
/// through). Values are not compared: without serde_json's `float_roundtrip` a float may come
/// back one bit off, which is no bug here.
pub fn assert_round_trips(v: &Value) {
    let text = v.to_string();
    if let Err(e) = crwatch_apiserver::decode::json(text.as_bytes()) {
        panic!(
            "a stored object does not decode again ({}): {}",
            e.message,
            short(&text)
        );
    }
}

/// The start of a long text, for assertion messages.
pub fn short(text: &str) -> &str {
    let mut end = text.len().min(300);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}
