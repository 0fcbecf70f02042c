//! Server-side sharded list and watch (KEP-5866, Kubernetes 1.36 alpha, feature gate
//! `ShardedListAndWatch`): the `shardSelector` parameter, its parser and validation with the
//! real server's words, and the FNV-1a 64 hash objects are placed by.
//!
//! A selector is one or more `shardRange(<field>, '<hexStart>', '<hexEnd>')` joined by `||`,
//! `<field>` being `object.metadata.uid` or `object.metadata.namespace` (the same one in every
//! range). An object is selected when the FNV-1a 64 hash of that field's value (its bytes; a
//! cluster-scoped object's namespace is the empty string) falls in any `[start, end)`; the hash
//! space is `[0x0000000000000000, 0x10000000000000000)`. Lists honouring it echo the selector
//! (normalised) in `metadata.shardInfo.selector`; with the gate off the parameter is ignored.
//!
//! As upstream (`k8s.io/apiserver/pkg/sharding/parser.go`), the expression is parsed as CEL
//! (without macros) and never evaluated: the tree is walked for `shardRange` calls and `||`.

use serde_json::{Value, json};

use crate::api::Params;
use crate::features::FeatureGates;
use crate::rbac::go_quote;
use crate::status::{ApiError, ApiResult};

/// The query parameter (`ListOptions.shardSelector`).
pub const PARAM: &str = "shardSelector";

/// cel-go's default limit on an expression's length, in code points.
const CODE_POINT_LIMIT: usize = 100_000;

/// cel-go's default parser recursion limit.
const MAX_PARSE_DEPTH: u16 = 250;

/// The exclusive upper bound of the hash space, `0x10000000000000000` (2^64).
const FULL_END: &str = "0x10000000000000000";

/// 64-bit FNV-1a of `bytes` (Go's `hash/fnv` `New64a`), the hash shard ranges are over.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes
        .iter()
        .fold(OFFSET, |h, b| (h ^ u64::from(*b)).wrapping_mul(PRIME))
}

/// The metadata field a selector hashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardKey {
    /// `object.metadata.uid`.
    Uid,
    /// `object.metadata.namespace` (empty for cluster-scoped objects).
    Namespace,
}

impl ShardKey {
    /// The field path as the selector spells it.
    pub fn path(self) -> &'static str {
        match self {
            ShardKey::Uid => "object.metadata.uid",
            ShardKey::Namespace => "object.metadata.namespace",
        }
    }

    fn from_path(path: &str) -> Option<Self> {
        match path {
            "object.metadata.uid" => Some(ShardKey::Uid),
            "object.metadata.namespace" => Some(ShardKey::Namespace),
            _ => None,
        }
    }
}

/// One `shardRange`: hashes in `[start, end)`, with the literals as written (already in the
/// one canonical form the parser accepts: `0x` and 16 lowercase digits, or 2^64).
#[derive(Debug, Clone, PartialEq, Eq)]
struct ShardRange {
    start: u128,
    end: u128,
    start_hex: String,
    end_hex: String,
}

/// A parsed `shardSelector`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardSelector {
    key: ShardKey,
    ranges: Vec<ShardRange>,
}

impl ShardSelector {
    /// Parse and validate a selector; the error is the real parser's message (the server
    /// answers it as 400 `invalid shard selector: <message>`, see [`from_params`]).
    pub fn parse(expr: &str) -> Result<Self, String> {
        let expr = expr.trim();
        if expr.is_empty() {
            return Err(
                "empty shard selector is not allowed; omit the parameter for unfiltered lists".into(),
            );
        }
        let size = expr.chars().count();
        if size > CODE_POINT_LIMIT {
            return Err(format!(
                "CEL parse error: expression code point size exceeds limit: size: {size}, limit {CODE_POINT_LIMIT}"
            ));
        }
        let owned = expr.to_string();
        // The parser is a third-party crate: a panic inside it must not take the request down,
        // and a deeply nested expression is parsed, walked and dropped on a stack that fits it.
        let walked = std::panic::catch_unwind(move || {
            crate::schema::deep_stack(|| {
                match cel::parser::Parser::new()
                    .max_recursion_depth(MAX_PARSE_DEPTH)
                    .parse(&owned)
                {
                    Ok(ast) => requirements(&ast),
                    Err(errs) => {
                        let msg = errs
                            .errors
                            .first()
                            .map(|e| e.msg.clone())
                            .unwrap_or_else(|| "unparseable expression".into());
                        let msg = if msg.starts_with("Syntax error") {
                            msg
                        } else {
                            format!("Syntax error: {msg}")
                        };
                        Err(format!("CEL parse error: {msg}"))
                    }
                }
            })
        });
        let reqs = match walked {
            Ok(r) => r?,
            Err(_) => return Err("CEL parse error: Syntax error: the expression could not be parsed".into()),
        };
        let Some((first_path, _)) = reqs.first() else {
            return Err("CEL parse error: Syntax error: unparseable expression".into());
        };
        // Checked after the walk, as upstream: a bad range anywhere is reported first.
        if let Some((other, _)) = reqs.iter().find(|(p, _)| p != first_path) {
            return Err(format!(
                "all shard ranges must use the same field, got {} and {}",
                go_quote(first_path),
                go_quote(other)
            ));
        }
        let key = ShardKey::from_path(first_path)
            .ok_or_else(|| format!("unsupported field path {}", go_quote(first_path)))?;
        Ok(ShardSelector {
            key,
            ranges: reqs.into_iter().map(|(_, r)| r).collect(),
        })
    }

    /// The field this selector hashes.
    pub fn key(&self) -> ShardKey {
        self.key
    }

    /// Whether a hash falls in any of the ranges.
    pub fn matches_hash(&self, hash: u64) -> bool {
        let h = u128::from(hash);
        self.ranges.iter().any(|r| r.start <= h && h < r.end)
    }

    /// Whether an object whose key field holds `value` is selected.
    pub fn matches_field(&self, value: &str) -> bool {
        self.matches_hash(fnv1a64(value.as_bytes()))
    }

    /// Whether an object (any representation with `metadata`) is selected.
    pub fn matches_object(&self, obj: &Value) -> bool {
        let field = match self.key {
            ShardKey::Uid => "uid",
            ShardKey::Namespace => "namespace",
        };
        self.matches_field(crate::meta::meta_str(obj, field))
    }

    /// Whether a stored object, given as its JSON text, is selected: only its uid and namespace
    /// are read (no tree is built, as lists of many objects would otherwise do for each). Falls
    /// back to a full parse for text this shallow reader refuses (nesting past serde_json's
    /// recursion limit).
    pub fn matches_stored(&self, o: &crate::store::Stored) -> bool {
        #[derive(serde::Deserialize, Default)]
        struct Meta<'a> {
            #[serde(borrow, default)]
            uid: std::borrow::Cow<'a, str>,
            #[serde(borrow, default)]
            namespace: std::borrow::Cow<'a, str>,
        }
        #[derive(serde::Deserialize)]
        struct Head<'a> {
            #[serde(borrow, default)]
            metadata: Meta<'a>,
        }
        match serde_json::from_str::<Head<'_>>(o.text()) {
            Ok(h) => self.matches_field(match self.key {
                ShardKey::Uid => &h.metadata.uid,
                ShardKey::Namespace => &h.metadata.namespace,
            }),
            Err(_) => self.matches_object(&o.value()),
        }
    }

    /// `metadata.shardInfo` of a list that honoured this selector.
    pub fn shard_info(&self) -> Value {
        json!({"selector": self.to_string()})
    }
}

impl std::fmt::Display for ShardSelector {
    /// The normalised form upstream's `Selector.String()` gives (and lists echo):
    /// `shardRange(<field>, '<start>', '<end>')` joined by ` || `.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, r) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(" || ")?;
            }
            write!(
                f,
                "shardRange({}, '{}', '{}')",
                self.key.path(),
                r.start_hex,
                r.end_hex
            )?;
        }
        Ok(())
    }
}

/// The `shardSelector` of a list or watch: `None` when the gate is off (the parameter is then
/// ignored like any unknown one) or when it is absent or empty; a selector that does not parse
/// is 400 BadRequest `invalid shard selector: <why>`.
pub fn from_params(gates: FeatureGates, params: &Params) -> ApiResult<Option<ShardSelector>> {
    if !gates.sharded_list_and_watch {
        return Ok(None);
    }
    match params.get(PARAM) {
        None | Some("") => Ok(None),
        Some(s) => ShardSelector::parse(s)
            .map(Some)
            .map_err(|e| ApiError::bad_request(format!("invalid shard selector: {e}"))),
    }
}

use cel::common::ast::{CallExpr, Expr, IdedExpr, LiteralValue};

/// cel-go's `ast.ExprKind` number of an expression (upstream prints it with `%v`).
fn kind_number(e: &Expr) -> u8 {
    match e {
        Expr::Unspecified => 0,
        Expr::Call(_) => 1,
        Expr::Comprehension(_) => 2,
        Expr::Ident(_) => 3,
        Expr::List(_) => 4,
        Expr::Literal(_) => 5,
        Expr::Map(_) => 6,
        Expr::Select(_) => 7,
        Expr::Struct(_) => 8,
    }
}

/// The ranges of a parsed expression, left to right, with their field paths: the root is a
/// `shardRange` call or `||` of such. Walked with a stack (a long `||` chain is deep).
fn requirements(root: &IdedExpr) -> Result<Vec<(String, ShardRange)>, String> {
    let mut out = Vec::new();
    let mut todo = vec![root];
    while let Some(e) = todo.pop() {
        let Expr::Call(call) = &e.expr else {
            return Err(format!(
                "unexpected expression kind {}; expected shardRange() call or || operator",
                kind_number(&e.expr)
            ));
        };
        match call.func_name.as_str() {
            cel::common::ast::operators::LOGICAL_OR => {
                let [left, right] = call.args.as_slice() else {
                    return Err("|| operator requires exactly 2 arguments".into());
                };
                // Popped left first: the ranges keep their written order.
                todo.push(right);
                todo.push(left);
            }
            "shardRange" => out.push(shard_range(call)?),
            other => {
                return Err(format!(
                    "unsupported function {}; only shardRange() and || are allowed",
                    go_quote(other)
                ));
            }
        }
    }
    Ok(out)
}

/// One `shardRange(field, start, end)` call, checked in upstream's order.
fn shard_range(call: &CallExpr) -> Result<(String, ShardRange), String> {
    let [field, start, end] = call.args.as_slice() else {
        return Err(format!(
            "shardRange() requires exactly 3 arguments, got {}",
            call.args.len()
        ));
    };
    let path = field_path(field).map_err(|e| format!("shardRange() first argument: {e}"))?;
    if ShardKey::from_path(&path).is_none() {
        return Err(format!(
            "unsupported field path {}; supported: object.metadata.uid, object.metadata.namespace",
            go_quote(&path)
        ));
    }
    let start_hex = hex_literal(start, "hexStart")?;
    let end_hex = hex_literal(end, "hexEnd")?;
    let (start, end) = (hex_value(&start_hex), hex_value(&end_hex));
    if start >= end {
        return Err(format!(
            "shard range start {start_hex} must be less than end {end_hex}"
        ));
    }
    Ok((
        path,
        ShardRange {
            start,
            end,
            start_hex,
            end_hex,
        },
    ))
}

/// A select chain (`object.metadata.uid`) as its dotted path.
fn field_path(e: &IdedExpr) -> Result<String, String> {
    let mut parts = Vec::new();
    let mut cur = e;
    loop {
        match &cur.expr {
            Expr::Ident(name) => {
                parts.push(name.as_str());
                break;
            }
            Expr::Select(sel) => {
                parts.push(sel.field.as_str());
                cur = &sel.operand;
            }
            other => {
                return Err(format!(
                    "expected field path (e.g. object.metadata.uid), got expression kind {}",
                    kind_number(other)
                ));
            }
        }
    }
    parts.reverse();
    Ok(parts.join("."))
}

/// A bound: a string literal, `0x` and exactly 16 lowercase hex digits, or 2^64.
fn hex_literal(e: &IdedExpr, name: &str) -> Result<String, String> {
    let Expr::Literal(lit) = &e.expr else {
        return Err(format!(
            "{name} must be a string literal (e.g. '0xff'), got expression kind {}",
            kind_number(&e.expr)
        ));
    };
    let s = match lit {
        LiteralValue::String(s) => s.inner().to_string(),
        // Go's `%T` of the literal's value.
        other => {
            let go_type = match other {
                LiteralValue::Boolean(_) => "bool",
                LiteralValue::Bytes(_) => "[]uint8",
                LiteralValue::Double(_) => "float64",
                LiteralValue::Int(_) => "int64",
                LiteralValue::Null => "structpb.NullValue",
                LiteralValue::UInt(_) => "uint64",
                LiteralValue::String(_) => "string",
            };
            return Err(format!("{name} must be a string literal, got {go_type}"));
        }
    };
    let Some(hex) = s.strip_prefix("0x") else {
        return Err(format!("{name} must have '0x' prefix, got {}", go_quote(&s)));
    };
    if hex.is_empty() {
        return Err(format!("{name}: hex value is required after '0x'"));
    }
    if hex.len() > 17 {
        return Err(format!(
            "{name}: hex value too long ({} chars, max 17): {}",
            hex.len(),
            go_quote(hex)
        ));
    }
    if let Some(c) = hex.chars().find(|c| !matches!(c, '0'..='9' | 'a'..='f')) {
        return Err(format!(
            "{name}: invalid hex character {} in {}",
            go_quote(&c.to_string()),
            go_quote(&s)
        ));
    }
    if hex.len() == 17 {
        if s != FULL_END {
            return Err(format!(
                "{name}: 17-digit hex value must be '0x10000000000000000' (2^64), got {}",
                go_quote(&s)
            ));
        }
    } else if hex.len() != 16 {
        let padded = format!("0x{}{hex}", "0".repeat(16 - hex.len()));
        return Err(format!(
            "{name} must be a 0x-prefixed 16-digit hex value, got {} (did you mean {}?)",
            go_quote(&s),
            go_quote(&padded)
        ));
    }
    Ok(s)
}

/// The value of a literal [`hex_literal`] accepted (16 or 17 lowercase hex digits: fits).
fn hex_value(lit: &str) -> u128 {
    // Invariant: `hex_literal` let through only `0x` + 16 hex digits or 2^64, so this parses.
    u128::from_str_radix(&lit[2..], 16).unwrap_or(u128::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_known_vectors() {
        // From the FNV reference test suite (Go's hash/fnv tests use the same).
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn parses_and_normalises() {
        let s = ShardSelector::parse(
            "  shardRange( object.metadata.uid ,'0x0000000000000000',  \"0x8000000000000000\" ) ||shardRange(object.metadata.uid, '0xc000000000000000', '0x10000000000000000')",
        )
        .unwrap();
        assert_eq!(
            s.to_string(),
            "shardRange(object.metadata.uid, '0x0000000000000000', '0x8000000000000000') || shardRange(object.metadata.uid, '0xc000000000000000', '0x10000000000000000')"
        );
        assert!(s.matches_hash(0));
        assert!(!s.matches_hash(0x8000000000000000));
        assert!(s.matches_hash(u64::MAX));
        let three = "shardRange(object.metadata.namespace, '0x0000000000000000', '0x0000000000000005') || shardRange(object.metadata.namespace, '0x0000000000000005', '0x000000000000000a') || shardRange(object.metadata.namespace, '0x000000000000000a', '0x000000000000000f')";
        assert_eq!(ShardSelector::parse(three).unwrap().to_string(), three);
    }

    #[test]
    fn errors_have_the_real_wording() {
        let err = |s: &str| ShardSelector::parse(s).unwrap_err();
        let u = |a: &str, b: &str| format!("shardRange(object.metadata.uid, {a}, {b})");
        assert_eq!(
            err(" "),
            "empty shard selector is not allowed; omit the parameter for unfiltered lists"
        );
        assert_eq!(
            err("shardRange(object.metadata.name, '0x00', '0x80')"),
            "unsupported field path \"object.metadata.name\"; supported: object.metadata.uid, object.metadata.namespace"
        );
        assert_eq!(
            err("invalidFunc(object.metadata.uid, '0x00', '0x80')"),
            "unsupported function \"invalidFunc\"; only shardRange() and || are allowed"
        );
        assert_eq!(
            err(&format!("{} && {}", u("'0x0'", "'0x8'"), u("'0x8'", "'0xf'"))),
            "unsupported function \"_&&_\"; only shardRange() and || are allowed"
        );
        assert_eq!(
            err("object.metadata.uid > '0x0'"),
            "unsupported function \"_>_\"; only shardRange() and || are allowed"
        );
        assert_eq!(
            err("object.metadata.uid"),
            "unexpected expression kind 7; expected shardRange() call or || operator"
        );
        assert_eq!(
            err("shardRange(object.metadata.uid, '0x0')"),
            "shardRange() requires exactly 3 arguments, got 2"
        );
        assert_eq!(err(&u("0", "8")), "hexStart must be a string literal, got int64");
        assert_eq!(
            err(&u("hex(0)", "'0x8'")),
            "hexStart must be a string literal (e.g. '0xff'), got expression kind 1"
        );
        assert_eq!(
            err("shardRange('uid', '0x0000000000000000', '0x8000000000000000')"),
            "shardRange() first argument: expected field path (e.g. object.metadata.uid), got expression kind 5"
        );
        assert_eq!(
            err(&u("'0000000000000000'", "'0x8000000000000000'")),
            "hexStart must have '0x' prefix, got \"0000000000000000\""
        );
        assert_eq!(
            err(&u("'0x'", "'0x8000000000000000'")),
            "hexStart: hex value is required after '0x'"
        );
        assert_eq!(
            err(&u("'0x000000000000000000'", "'0x80'")),
            "hexStart: hex value too long (18 chars, max 17): \"000000000000000000\""
        );
        assert_eq!(
            err(&u("'0x0g'", "'0x80'")),
            "hexStart: invalid hex character \"g\" in \"0x0g\""
        );
        assert_eq!(
            err(&u("'0x000000000000000F'", "'0x8000000000000000'")),
            "hexStart: invalid hex character \"F\" in \"0x000000000000000F\""
        );
        assert_eq!(
            err(&u("'0x0000000000000000'", "'0x20000000000000000'")),
            "hexEnd: 17-digit hex value must be '0x10000000000000000' (2^64), got \"0x20000000000000000\""
        );
        assert_eq!(
            err(&u("'0x0'", "'0x8000000000000000'")),
            "hexStart must be a 0x-prefixed 16-digit hex value, got \"0x0\" (did you mean \"0x0000000000000000\"?)"
        );
        assert_eq!(
            err(&u("'0x8000000000000000'", "'0x8000000000000000'")),
            "shard range start 0x8000000000000000 must be less than end 0x8000000000000000"
        );
        assert_eq!(
            err(&u("'0x10000000000000000'", "'0x10000000000000000'")),
            "shard range start 0x10000000000000000 must be less than end 0x10000000000000000"
        );
        assert_eq!(
            err(&format!(
                "{} || shardRange(object.metadata.namespace, '0x8000000000000000', '0x10000000000000000')",
                u("'0x0000000000000000'", "'0x8000000000000000'")
            )),
            "all shard ranges must use the same field, got \"object.metadata.uid\" and \"object.metadata.namespace\""
        );
        assert!(err("shardRange(").starts_with("CEL parse error: Syntax error: "));
    }

    #[test]
    fn a_long_or_chain_parses() {
        let one = "shardRange(object.metadata.uid, '0x0000000000000000', '0x0000000000000001')";
        let expr = vec![one; 1000].join(" || ");
        let s = ShardSelector::parse(&expr).unwrap();
        assert_eq!(s.ranges.len(), 1000);
        // cel-go's default size limit bounds the work.
        let too_long = vec![one; 2000].join(" || ");
        assert_eq!(
            ShardSelector::parse(&too_long).unwrap_err(),
            "CEL parse error: expression code point size exceeds limit: size: 157996, limit 100000"
        );
    }
}
