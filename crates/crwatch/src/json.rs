//! JSON from servers, at any nesting depth: every place crwatch decodes what an API server
//! (or any other source) sent goes through here.
//!
//! serde_json stops at 128 levels ("recursion limit exceeded") to protect the stack, but the
//! kube-apiserver stores and serves objects nested far deeper than that (its own JSON limit is
//! 10,000 levels), and kubectl lists them. A fixed limit would make one such object stall an
//! informer or a `crwatch get` for good. So the limit is off, and the stack grows on the heap
//! instead (serde_stacker) whenever the decoder gets close to its end: depth costs memory, never
//! a stack overflow. Input size is bounded by the callers (largest event or list page).
//!
//! Values are dropped and cloned recursively too; [`drop_deep`] takes a deep value apart without
//! recursion where one may be thrown away on a small stack.

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Stack left before the decoder moves to a new segment, and that segment's size: serde_json
/// uses a few hundred bytes per level, so 64 KiB left is plenty of margin.
const RED_ZONE: usize = 64 << 10;
const STACK_SEGMENT: usize = 2 << 20;

/// Decode `T` from `s` at any depth (borrowing from `s` where `T` does, e.g. `&RawValue`).
///
/// ```
/// let deep = format!("{}1{}", "[".repeat(1000), "]".repeat(1000));
/// assert!(serde_json::from_str::<serde_json::Value>(&deep).is_err());
/// let v: serde_json::Value = crwatch::json::from_str(&deep).unwrap();
/// crwatch::json::drop_deep(v);
/// ```
pub fn from_str<'a, T: Deserialize<'a>>(s: &'a str) -> Result<T, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(s);
    de.disable_recursion_limit();
    let value = deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

/// Decode `T` from `bytes` at any depth.
pub fn from_slice<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    de.disable_recursion_limit();
    let value = deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

/// Decode `T` from a reader at any depth (buffer it: the decoder reads byte by byte).
pub fn from_reader<R: std::io::Read, T: DeserializeOwned>(reader: R) -> Result<T, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_reader(reader);
    de.disable_recursion_limit();
    let value = deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

/// Decode `T` from an already parsed value, growing the stack as deep values need it.
pub fn from_value<T: DeserializeOwned>(value: Value) -> Result<T, serde_json::Error> {
    T::deserialize(serde_stacker::Deserializer {
        de: value,
        red_zone: RED_ZONE,
        stack_size: STACK_SEGMENT,
    })
}

fn deserialize<'de, T, R>(de: &mut serde_json::Deserializer<R>) -> Result<T, serde_json::Error>
where
    T: Deserialize<'de>,
    R: serde_json::de::Read<'de>,
{
    T::deserialize(serde_stacker::Deserializer {
        de,
        red_zone: RED_ZONE,
        stack_size: STACK_SEGMENT,
    })
}

/// Drop a value without recursion (a value nested tens of thousands deep would overflow the
/// stack of the recursive drop serde_json's types have).
pub fn drop_deep(value: Value) {
    let mut pending = vec![value];
    while let Some(v) = pending.pop() {
        match v {
            Value::Array(items) => pending.extend(items),
            Value::Object(map) => pending.extend(map.into_iter().map(|(_, v)| v)),
            _ => {}
        }
    }
}

/// Run `f`, moving to a fresh stack segment first when little stack is left: for recursive
/// walks over values of any depth (diffs, clones, serialization).
pub fn with_stack<R>(f: impl FnOnce() -> R) -> R {
    stacker::maybe_grow(RED_ZONE, STACK_SEGMENT, f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(depth: usize) -> String {
        format!("{}\"leaf\"{}", "{\"a\":".repeat(depth), "}".repeat(depth))
    }

    #[test]
    fn deep_documents_decode_on_a_small_stack() {
        // 100,000 levels on a 256 KiB thread: only a growing stack survives this.
        let doc = nested(100_000);
        let ok = std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(move || {
                let v: Value = from_str(&doc).unwrap();
                let mut depth = 0;
                let mut cur = &v;
                while let Some(next) = cur.get("a") {
                    depth += 1;
                    cur = next;
                }
                drop_deep(v);
                depth
            })
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(ok, 100_000);
    }

    #[test]
    fn borrowed_raw_values_and_trailing_garbage() {
        #[derive(Deserialize)]
        struct Page<'a> {
            #[serde(borrow)]
            items: Vec<&'a serde_json::value::RawValue>,
        }
        let doc = format!("{{\"items\":[{},2]}}", nested(300));
        let page: Page<'_> = from_str(&doc).unwrap();
        assert_eq!(page.items.len(), 2);
        assert_eq!(page.items[0].get(), nested(300));
        assert!(from_str::<Value>("{} x").is_err());
        assert!(from_slice::<Value>(b"[1,").is_err());
        let v: Value = from_reader(std::io::Cursor::new(nested(500))).unwrap();
        let back: Value = from_value(v).unwrap();
        assert!(back.get("a").is_some());
    }
}
