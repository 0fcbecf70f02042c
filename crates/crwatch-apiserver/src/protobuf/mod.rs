//! Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`), decoded into the
//! same JSON value the JSON path produces.
//!
//! kubectl 1.32 and newer send typed objects (`kubectl create namespace|configmap|secret|
//! serviceaccount|deployment ...`) as protobuf and do not fall back to JSON on a 415. The body
//! is the magic `k8s\0` followed by a `runtime.Unknown { TypeMeta typeMeta = 1; bytes raw = 2;
//! string contentEncoding = 3; string contentType = 4; }` whose `raw` is the typed message.
//! A small wire-format reader walks the bytes against generated field tables (the private
//! `tables` module), skipping unknown fields; malformed input is a 400, never a panic.

mod tables;

use base64::Engine;
use serde_json::{Map, Value};

use crate::status::ApiError;

/// The four bytes every Kubernetes protobuf body starts with.
pub const MAGIC: &[u8; 4] = b"k8s\0";

/// The media type of Kubernetes protobuf bodies.
pub const CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf";

/// Messages nest no deeper than this (the tables' deepest path is far shallower).
const MAX_DEPTH: usize = 64;

/// Field flags in the tables.
type Flags = u8;
/// No flag.
const N: Flags = 0;
/// Repeated.
const R: Flags = 1;
/// Drop the zero value (a non-pointer Go field with `omitempty`).
const Z: Flags = 2;
/// A Go struct embedded inline: its fields are merged into the parent.
const I: Flags = 4;

/// Messages with a JSON form of their own.
#[derive(Debug, Clone, Copy)]
enum Wk {
    /// `meta.v1.Time` (seconds, nanos): RFC 3339 to the second.
    Time,
    /// `meta.v1.MicroTime`: RFC 3339 with microseconds.
    MicroTime,
    /// `util.intstr.IntOrString`: a JSON number or string.
    IntOrString,
    /// `api.resource.Quantity`: its string.
    Quantity,
    /// `runtime.RawExtension` / `meta.v1.FieldsV1`: embedded JSON bytes.
    Raw,
}

/// How a field is encoded and what JSON it becomes.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Str,
    // Bytes and MapMsg are emitted by the generator for such fields; none is reachable yet.
    #[allow(dead_code)]
    Bytes,
    Bool,
    I32,
    I64,
    Msg(usize),
    Wk(Wk),
    MapStr,
    MapBytes,
    #[allow(dead_code)]
    MapMsg(usize),
    MapWk(Wk),
}

/// One message's fields: `(tag, JSON name, kind, flags)`.
struct Message {
    name: &'static str,
    fields: &'static [(u32, &'static str, Kind, Flags)],
}

/// Decode a protobuf request body into the JSON object it stands for, with `apiVersion` and
/// `kind` taken from the envelope. Malformed bodies are 400s; kinds without tables are 415s.
pub fn decode(body: &[u8]) -> Result<Value, ApiError> {
    decode_inner(body).map_err(|e| match e {
        Error::Malformed(m) => ApiError::bad_request(format!("decoding protobuf body: {m}")),
        Error::Unsupported(m) => ApiError::new(415, "UnsupportedMediaType", m),
    })
}

enum Error {
    Malformed(String),
    Unsupported(String),
}

fn bad(m: impl Into<String>) -> Error {
    Error::Malformed(m.into())
}

fn decode_inner(body: &[u8]) -> Result<Value, Error> {
    let rest = body
        .strip_prefix(MAGIC.as_slice())
        .ok_or_else(|| bad("the body does not start with the Kubernetes protobuf magic \"k8s\\x00\""))?;
    let (mut api_version, mut kind, mut raw, mut encoding) =
        (String::new(), String::new(), &[][..], String::new());
    let mut r = Reader::new(rest);
    while let Some((tag, wt)) = r.key()? {
        match (tag, wt) {
            (1, 2) => {
                let mut tm = Reader::new(r.bytes()?);
                while let Some((t, w)) = tm.key()? {
                    match (t, w) {
                        (1, 2) => api_version = utf8(tm.bytes()?, "typeMeta.apiVersion")?,
                        (2, 2) => kind = utf8(tm.bytes()?, "typeMeta.kind")?,
                        _ => tm.skip(w)?,
                    }
                }
            }
            (2, 2) => raw = r.bytes()?,
            (3, 2) => encoding = utf8(r.bytes()?, "contentEncoding")?,
            _ => r.skip(wt)?,
        }
    }
    if !encoding.is_empty() {
        return Err(Error::Unsupported(format!(
            "protobuf content encoding {encoding:?} is not supported"
        )));
    }
    if kind.is_empty() {
        return Err(bad("the envelope has no typeMeta.kind"));
    }
    let idx = tables::root(&api_version, &kind).ok_or_else(|| {
        Error::Unsupported(format!(
            "the server decodes protobuf bodies only for its built-in kinds, not {kind} ({api_version}); send application/json"
        ))
    })?;
    let fields = message(raw, idx, 0)?;
    let mut out = Map::new();
    out.insert("apiVersion".into(), Value::String(api_version));
    out.insert("kind".into(), Value::String(kind));
    out.extend(fields);
    Ok(Value::Object(out))
}

fn utf8(b: &[u8], what: &str) -> Result<String, Error> {
    String::from_utf8(b.to_vec()).map_err(|_| bad(format!("{what} is not valid UTF-8")))
}

/// A protobuf wire-format reader over a byte slice.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn varint(&mut self) -> Result<u64, Error> {
        let mut v = 0u64;
        for i in 0..10 {
            let b = *self.buf.get(self.pos).ok_or_else(|| bad("truncated varint"))?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(bad("varint longer than 10 bytes"))
    }

    fn fixed<const W: usize>(&mut self) -> Result<[u8; W], Error> {
        let end = self
            .pos
            .checked_add(W)
            .filter(|e| *e <= self.buf.len())
            .ok_or_else(|| bad("truncated fixed-width value"))?;
        let mut out = [0u8; W];
        out.copy_from_slice(&self.buf[self.pos..end]);
        self.pos = end;
        Ok(out)
    }

    /// The next field's tag and wire type, or `None` at the end.
    fn key(&mut self) -> Result<Option<(u32, u8)>, Error> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let k = self.varint()?;
        let tag = u32::try_from(k >> 3).map_err(|_| bad("field tag out of range"))?;
        if tag == 0 {
            return Err(bad("field tag 0"));
        }
        Ok(Some((tag, (k & 7) as u8)))
    }

    fn bytes(&mut self) -> Result<&'a [u8], Error> {
        let len = usize::try_from(self.varint()?).map_err(|_| bad("length out of range"))?;
        let end = self
            .pos
            .checked_add(len)
            .filter(|e| *e <= self.buf.len())
            .ok_or_else(|| bad(format!("length {len} runs past the end of the message")))?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn skip(&mut self, wt: u8) -> Result<(), Error> {
        match wt {
            0 => self.varint().map(drop),
            1 => self.fixed::<8>().map(drop),
            2 => self.bytes().map(drop),
            5 => self.fixed::<4>().map(drop),
            w => Err(bad(format!("unsupported wire type {w}"))),
        }
    }
}

const WIRE: [&str; 6] = [
    "varint",
    "64-bit",
    "length-delimited",
    "start-group",
    "end-group",
    "32-bit",
];

fn wire_name(wt: u8) -> &'static str {
    WIRE.get(usize::from(wt)).copied().unwrap_or("unknown")
}

/// Decode one message's bytes against table entry `idx` into a JSON object's fields.
fn message(buf: &[u8], idx: usize, depth: usize) -> Result<Map<String, Value>, Error> {
    if depth > MAX_DEPTH {
        return Err(bad("messages nested too deeply"));
    }
    let msg = tables::MESSAGES
        .get(idx)
        .ok_or_else(|| bad("internal: no such message table"))?;
    let mut out = Map::new();
    let mut r = Reader::new(buf);
    while let Some((tag, wt)) = r.key()? {
        let Some(&(_, name, kind, flags)) = msg.fields.iter().find(|f| f.0 == tag) else {
            r.skip(wt)?;
            continue;
        };
        let ctx = || format!("{}.{}", msg.name, if name.is_empty() { "(inline)" } else { name });
        let want = match kind {
            Kind::Bool | Kind::I32 | Kind::I64 => 0,
            _ => 2,
        };
        // Repeated scalars may come packed in one length-delimited field.
        if flags & R != 0 && want != 2 && wt == 2 {
            let mut packed = Reader::new(r.bytes()?);
            while packed.pos < packed.buf.len() {
                push(&mut out, name, scalar(&mut packed, kind)?);
            }
            continue;
        }
        if wt != want {
            return Err(bad(format!(
                "{}: wire type {} where {} was expected",
                ctx(),
                wire_name(wt),
                wire_name(want)
            )));
        }
        let value = match kind {
            Kind::Str => Value::String(utf8(r.bytes()?, &ctx())?),
            Kind::Bytes => Value::String(base64::engine::general_purpose::STANDARD.encode(r.bytes()?)),
            Kind::Bool | Kind::I32 | Kind::I64 => scalar(&mut r, kind)?,
            Kind::Msg(m) => {
                let fields = message(r.bytes()?, m, depth + 1)?;
                if flags & I != 0 {
                    out.extend(fields);
                    continue;
                }
                Value::Object(fields)
            }
            Kind::Wk(w) => match well_known(r.bytes()?, w).map_err(|e| prefix(e, &ctx()))? {
                Some(v) => v,
                None => continue,
            },
            Kind::MapStr | Kind::MapBytes | Kind::MapMsg(_) | Kind::MapWk(_) => {
                let (k, v) = map_entry(r.bytes()?, kind, depth).map_err(|e| prefix(e, &ctx()))?;
                if let Some(Value::Object(m)) = out.get_mut(name) {
                    m.insert(k, v);
                } else {
                    out.insert(name.to_string(), Value::Object(Map::from_iter([(k, v)])));
                }
                continue;
            }
        };
        if flags & R != 0 {
            push(&mut out, name, value);
        } else if flags & Z != 0 && is_zero(&value) {
            out.remove(name);
        } else {
            out.insert(name.to_string(), value);
        }
    }
    Ok(out)
}

fn prefix(e: Error, ctx: &str) -> Error {
    match e {
        Error::Malformed(m) => bad(format!("{ctx}: {m}")),
        other => other,
    }
}

/// Append to the array field `name`, creating it at the first element.
fn push(out: &mut Map<String, Value>, name: &str, value: Value) {
    if let Some(Value::Array(a)) = out.get_mut(name) {
        a.push(value);
    } else {
        out.insert(name.to_string(), Value::Array(vec![value]));
    }
}

fn is_zero(v: &Value) -> bool {
    match v {
        Value::String(s) => s.is_empty(),
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        _ => false,
    }
}

fn scalar(r: &mut Reader<'_>, kind: Kind) -> Result<Value, Error> {
    Ok(match kind {
        Kind::Bool => Value::Bool(r.varint()? != 0),
        // int32 values are sign-extended to 64 bits on the wire.
        Kind::I32 => Value::from(r.varint()? as i64 as i32),
        _ => Value::from(r.varint()? as i64),
    })
}

fn map_entry(buf: &[u8], kind: Kind, depth: usize) -> Result<(String, Value), Error> {
    let mut r = Reader::new(buf);
    let mut key = String::new();
    let mut value = None;
    while let Some((tag, wt)) = r.key()? {
        match (tag, wt) {
            (1, 2) => key = utf8(r.bytes()?, "map key")?,
            (2, 2) => {
                let b = r.bytes()?;
                value = match kind {
                    Kind::MapStr => Some(Value::String(utf8(b, "map value")?)),
                    Kind::MapBytes => {
                        Some(Value::String(base64::engine::general_purpose::STANDARD.encode(b)))
                    }
                    Kind::MapMsg(m) => Some(Value::Object(message(b, m, depth + 1)?)),
                    Kind::MapWk(w) => well_known(b, w)?,
                    _ => None,
                };
            }
            (1 | 2, w) => {
                return Err(bad(format!(
                    "map entry field {tag} has wire type {}",
                    wire_name(w)
                )));
            }
            _ => r.skip(wt)?,
        }
    }
    let value = value.unwrap_or_else(|| match kind {
        Kind::MapMsg(_) => Value::Object(Map::new()),
        Kind::MapWk(_) => Value::Null,
        _ => Value::String(String::new()),
    });
    Ok((key, value))
}

/// Decode a well-known message; `None` means "absent" (a zero Time, an empty RawExtension).
fn well_known(buf: &[u8], w: Wk) -> Result<Option<Value>, Error> {
    let mut r = Reader::new(buf);
    match w {
        Wk::Time | Wk::MicroTime => {
            let (mut secs, mut nanos, mut any) = (0i64, 0i64, false);
            while let Some((tag, wt)) = r.key()? {
                match (tag, wt) {
                    (1, 0) => secs = r.varint()? as i64,
                    (2, 0) => nanos = i64::from(r.varint()? as i64 as i32),
                    _ => r.skip(wt)?,
                }
                any = true;
            }
            // Go encodes the zero time as an empty message; JSON has it as null (omitted).
            if !any {
                return Ok(None);
            }
            let nanos = u32::try_from(nanos)
                .ok()
                .filter(|n| *n < 1_000_000_000)
                .ok_or_else(|| bad("nanos out of range"))?;
            let t = chrono::DateTime::from_timestamp(secs, nanos).ok_or_else(|| bad("time out of range"))?;
            let fmt = if matches!(w, Wk::Time) {
                "%Y-%m-%dT%H:%M:%SZ"
            } else {
                "%Y-%m-%dT%H:%M:%S%.6fZ"
            };
            Ok(Some(Value::String(t.format(fmt).to_string())))
        }
        Wk::IntOrString => {
            let (mut ty, mut int, mut s) = (0u64, 0i64, String::new());
            while let Some((tag, wt)) = r.key()? {
                match (tag, wt) {
                    (1, 0) => ty = r.varint()?,
                    (2, 0) => int = i64::from(r.varint()? as i64 as i32),
                    (3, 2) => s = utf8(r.bytes()?, "IntOrString.strVal")?,
                    _ => r.skip(wt)?,
                }
            }
            Ok(Some(if ty == 1 {
                Value::String(s)
            } else {
                Value::from(int)
            }))
        }
        Wk::Quantity => {
            let mut s = String::new();
            while let Some((tag, wt)) = r.key()? {
                match (tag, wt) {
                    (1, 2) => s = utf8(r.bytes()?, "Quantity.string")?,
                    _ => r.skip(wt)?,
                }
            }
            Ok(Some(Value::String(s)))
        }
        Wk::Raw => {
            let mut raw: &[u8] = &[];
            while let Some((tag, wt)) = r.key()? {
                match (tag, wt) {
                    (1, 2) => raw = r.bytes()?,
                    _ => r.skip(wt)?,
                }
            }
            if raw.is_empty() {
                return Ok(None);
            }
            serde_json::from_slice(raw)
                .map(Some)
                .map_err(|e| bad(format!("embedded object is not JSON: {e}")))
        }
    }
}

#[cfg(test)]
mod tests;
