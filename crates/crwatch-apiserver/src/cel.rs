//! CEL validation rules (`x-kubernetes-validations`) on CRD schemas, evaluated the way the real
//! apiextensions-apiserver evaluates them (k8s.io/apiextensions-apiserver/pkg/apiserver/schema/cel).
//!
//! The `cel` crate parses the rules (its parser expands the `all`/`exists`/`exists_one`/`map`/
//! `filter`/`has` macros into comprehensions, as cel-go's does); this module checks and evaluates the
//! parsed tree itself. Evaluating here rather than with the crate's interpreter is what lets every
//! step be charged against the real server's cost limits: a rule that would run for minutes (nested
//! `all` over big lists) is stopped at the per-call limit instead of hanging the request.
//!
//! What happens with bad input: a rule that does not parse, names an unknown variable, function or
//! field, or obviously does not give a bool makes the CRD write a 422 worded like the real server's;
//! at runtime every error becomes a field error of the custom resource write, never a panic. Costs
//! are an approximation of cel-go's (1 per variable, field selection and call, string and list
//! operations by size), so a rule close to the limit may be accepted here and refused there or the
//! other way round.
//!
//! Compiled rules are cached per CRD and version ([`compiled_for`]); an entry is replaced when the
//! schema changes, so the cache holds at most one entry per served CRD version (and is emptied if it
//! ever grows past [`MAX_CACHED_SCHEMAS`]).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::rc::Rc;
use std::sync::{Arc, LazyLock, Mutex};

use cel::common::ast::{CallExpr, EntryExpr, Expr, IdedExpr, LiteralValue};
use chrono::{DateTime, Datelike, FixedOffset, TimeDelta, Timelike, Utc};
use serde_json::{Map, Value};

use crate::schema::{ErrorType, FieldError};

/// The real server's per-expression runtime cost limit (k8s.io/apiserver/pkg/apis/cel PerCallLimit).
pub const PER_CALL_LIMIT: u64 = 1_000_000;
/// The real server's runtime cost budget for all rules of one object (RuntimeCELCostBudget).
pub const RUNTIME_COST_BUDGET: i64 = 10_000_000;
/// The longest evaluated messageExpression kept (MaxEvaluatedMessageExpressionSizeBytes).
const MAX_MESSAGE_EXPRESSION_BYTES: usize = 5 * 1024;
/// Compiled schemas kept at most; past this the cache is emptied (it is keyed by CRD and version, so
/// this only matters for a server that saw thousands of CRDs).
pub const MAX_CACHED_SCHEMAS: usize = 4096;
/// The longest rule or messageExpression compiled, in bytes (the real server's bound is the CRD's
/// size; this keeps a hostile CRD from making the parser work on megabytes).
const MAX_EXPRESSION_BYTES: usize = 64 * 1024;
/// How deep the parser may nest; deeper rules fail to compile (cel-go's default is 250 for its parser
/// too, but the `cel` crate's recursion is costlier, so this stays well below).
const MAX_PARSE_DEPTH: u16 = 100;
/// Regexes kept compiled; past this the cache is emptied.
const MAX_CACHED_REGEXES: usize = 256;

const BLOCKING_REASONS: &[&str] = &[
    "FieldValueNotSupported",
    "FieldValueRequired",
    "FieldValueTooLong",
    "FieldValueTooMany",
    "FieldValueTypeInvalid",
];

/// The message the real server adds instead of running the rules when the schema validation found a
/// type, required, enum or size violation.
pub const NOT_CHECKED_MESSAGE: &str = "some validation rules were not checked because the object was invalid; correct the existing errors to complete validation";

/// Whether schema validation errors with these reasons keep the CEL rules from running (the real
/// strategy's `hasBlockingErr`).
pub fn has_blocking_reason<'r>(mut reasons: impl Iterator<Item = &'r str>) -> bool {
    reasons.any(|r| BLOCKING_REASONS.contains(&r))
}

// ---------------------------------------------------------------------------------------------------
// Compiled form
// ---------------------------------------------------------------------------------------------------

/// One compiled `x-kubernetes-validations` entry.
#[derive(Debug)]
struct Rule {
    rule: String,
    message: String,
    reason: Option<String>,
    /// The normalized relative path of `fieldPath`, like `foo[bar].baz`.
    field_path: String,
    optional_old_self: bool,
    uses_old_self: bool,
    /// `None` for an empty rule, which the real server skips.
    program: Option<IdedExpr>,
    /// Why the rule did not compile; only a CRD stored before a rule stopped compiling (an
    /// older crwatch's state file) has one, and its objects then get the real server's
    /// "rule compile error".
    compile_error: Option<String>,
    message_expression: Option<(String, IdedExpr)>,
}

/// The rules at one schema node and the nodes below it that have rules.
#[derive(Debug, Default)]
pub struct Node {
    schema: Value,
    resource_root: bool,
    rules: Vec<Rule>,
    properties: HashMap<String, Node>,
    additional: Option<Box<Node>>,
    items: Option<Box<Node>>,
    all_of: Vec<Node>,
}

/// A CRD version's compiled rules; `None` inside when its schema has no rules.
#[derive(Debug)]
pub struct Compiled {
    root: Option<Node>,
}

/// Compiled schemas by (CRD name, version), with the fingerprint of the schema they came from.
type Cache = HashMap<(String, String), (u64, Arc<Compiled>)>;

static CACHE: LazyLock<Mutex<Cache>> = LazyLock::new(|| Mutex::new(HashMap::new()));

fn hash_value(v: &Value, h: &mut impl Hasher) {
    match v {
        Value::Null => 0u8.hash(h),
        Value::Bool(b) => (1u8, b).hash(h),
        Value::Number(n) => (2u8, n.as_f64().map(f64::to_bits), n.as_i64()).hash(h),
        Value::String(s) => (3u8, s).hash(h),
        Value::Array(a) => {
            (4u8, a.len()).hash(h);
            for x in a {
                hash_value(x, h);
            }
        }
        Value::Object(m) => {
            (5u8, m.len()).hash(h);
            for (k, x) in m {
                k.hash(h);
                hash_value(x, h);
            }
        }
    }
}

fn schema_fingerprint(schema: &Value) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    crate::schema::deep_stack(|| hash_value(schema, &mut h));
    h.finish()
}

/// The compiled rules of a CRD version's schema, from the cache when the schema is unchanged.
pub fn compiled_for(crd: &str, version: &str, schema: &Value) -> Arc<Compiled> {
    let fp = schema_fingerprint(schema);
    let key = (crd.to_string(), version.to_string());
    if let Ok(cache) = CACHE.lock()
        && let Some((f, c)) = cache.get(&key)
        && *f == fp
    {
        return c.clone();
    }
    let compiled = Arc::new(Compiled {
        root: crate::schema::deep_stack(|| build_node(schema, true)),
    });
    if let Ok(mut cache) = CACHE.lock() {
        if cache.len() >= MAX_CACHED_SCHEMAS {
            cache.clear();
        }
        cache.insert(key, (fp, compiled.clone()));
    }
    compiled
}

fn flag(s: &Value, key: &str) -> bool {
    s.get(key).and_then(Value::as_bool) == Some(true)
}

fn has_rules(s: &Value) -> bool {
    if !s.is_object() {
        return false;
    }
    if s.get("x-kubernetes-validations")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty())
    {
        return true;
    }
    if s.get("properties")
        .and_then(Value::as_object)
        .is_some_and(|p| p.values().any(has_rules))
    {
        return true;
    }
    if s.get("additionalProperties").is_some_and(has_rules) || s.get("items").is_some_and(has_rules) {
        return true;
    }
    s.get("allOf")
        .and_then(Value::as_array)
        .is_some_and(|a| a.iter().any(has_rules))
}

fn build_node(s: &Value, resource_root: bool) -> Option<Node> {
    if !has_rules(s) {
        return None;
    }
    let mut node = Node {
        schema: s.clone(),
        resource_root,
        ..Node::default()
    };
    if let Some(rules) = s.get("x-kubernetes-validations").and_then(Value::as_array) {
        for r in rules {
            node.rules.push(compile_rule(r, s, resource_root).0);
        }
    }
    if let Some(props) = s.get("properties").and_then(Value::as_object) {
        for (k, p) in props {
            if let Some(n) = build_node(p, flag(p, "x-kubernetes-embedded-resource")) {
                node.properties.insert(k.clone(), n);
            }
        }
    }
    if let Some(a) = s.get("additionalProperties").filter(|a| a.is_object()) {
        node.additional = build_node(a, flag(a, "x-kubernetes-embedded-resource")).map(Box::new);
    }
    if let Some(i) = s.get("items").filter(|i| i.is_object()) {
        node.items = build_node(i, flag(i, "x-kubernetes-embedded-resource")).map(Box::new);
    }
    if let Some(all) = s.get("allOf").and_then(Value::as_array) {
        for a in all {
            // allOf rules see the value with the node's own schema (the real validator compiles
            // them against the node schema).
            let mut merged = s.clone();
            if let (Some(m), Some(rules)) = (merged.as_object_mut(), a.get("x-kubernetes-validations")) {
                m.insert("x-kubernetes-validations".into(), rules.clone());
                m.remove("allOf");
                m.remove("properties");
                m.remove("items");
                m.remove("additionalProperties");
            }
            if let Some(n) = build_node(&merged, resource_root) {
                node.all_of.push(n);
            }
        }
    }
    Some(node)
}

/// Compile errors of one rule: (field under the rule entry, detail, error type).
type RuleProblems = Vec<(&'static str, String, ErrorType)>;

fn compile_rule(r: &Value, schema: &Value, resource_root: bool) -> (Rule, RuleProblems) {
    let text = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
    let mut rule = Rule {
        rule: text("rule"),
        message: text("message"),
        reason: r.get("reason").and_then(Value::as_str).map(str::to_string),
        field_path: String::new(),
        optional_old_self: flag(r, "optionalOldSelf"),
        uses_old_self: false,
        program: None,
        compile_error: None,
        message_expression: None,
    };
    let mut problems = RuleProblems::new();
    if let Some(fp) = r
        .get("fieldPath")
        .and_then(Value::as_str)
        .filter(|f| !f.trim().is_empty())
        && let Ok(p) = valid_field_path(fp, schema)
    {
        rule.field_path = p;
    }
    if !rule.rule.trim().is_empty() {
        match compile_expr(&rule.rule, schema, resource_root, rule.optional_old_self) {
            Ok((expr, ty)) => {
                rule.uses_old_self = uses_ident(&expr, "oldSelf");
                if ty.is_some_and(|t| t != "bool") {
                    rule.compile_error = Some("cel expression must evaluate to a bool".into());
                    problems.push((
                        "rule",
                        "cel expression must evaluate to a bool".into(),
                        ErrorType::Invalid,
                    ));
                } else {
                    rule.program = Some(expr);
                }
            }
            Err(e) => {
                rule.compile_error = Some(format!("compilation failed: {e}"));
                problems.push(("rule", format!("compilation failed: {e}"), ErrorType::Invalid));
            }
        }
    }
    let me = text("messageExpression");
    if !me.trim().is_empty() {
        match compile_expr(&me, schema, resource_root, false) {
            Ok((expr, ty)) => {
                if ty.is_some_and(|t| t != "string") {
                    problems.push((
                        "messageExpression",
                        "messageExpression must evaluate to a string".into(),
                        ErrorType::Invalid,
                    ));
                } else {
                    rule.message_expression = Some((me, expr));
                }
            }
            Err(e) => problems.push((
                "messageExpression",
                format!("messageExpression compilation failed: {e}"),
                ErrorType::Invalid,
            )),
        }
    }
    (rule, problems)
}

fn uses_ident(e: &IdedExpr, name: &str) -> bool {
    let mut found = false;
    walk(e, &mut |x| {
        if let Expr::Ident(n) = &x.expr
            && n == name
        {
            found = true;
        }
    });
    found
}

fn walk<'e>(e: &'e IdedExpr, f: &mut impl FnMut(&'e IdedExpr)) {
    f(e);
    match &e.expr {
        Expr::Call(c) => {
            if let Some(t) = &c.target {
                walk(t, f);
            }
            for a in &c.args {
                walk(a, f);
            }
        }
        Expr::Comprehension(c) => {
            for x in [&c.iter_range, &c.accu_init, &c.loop_cond, &c.loop_step, &c.result] {
                walk(x, f);
            }
        }
        Expr::List(l) => {
            for x in &l.elements {
                walk(x, f);
            }
        }
        Expr::Map(m) => {
            for en in &m.entries {
                if let EntryExpr::MapEntry(me) = &en.expr {
                    walk(&me.key, f);
                    walk(&me.value, f);
                }
            }
        }
        Expr::Struct(s) => {
            for en in &s.entries {
                if let EntryExpr::StructField(sf) = &en.expr {
                    walk(&sf.value, f);
                }
            }
        }
        Expr::Select(s) => walk(&s.operand, f),
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------------------
// Parsing and static checks
// ---------------------------------------------------------------------------------------------------

/// cel-go's rendering of one issue: `ERROR: <input>:1:6: msg` then the source line and a caret.
fn render_issue(src: &str, offset: usize, msg: &str) -> String {
    // Offsets from the parser may fall inside a multi-byte character: step back to its start.
    let mut offset = offset.min(src.len());
    while !src.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &src[..offset.min(src.len())];
    let line_no = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let col = src[line_start..offset.min(src.len())].chars().count();
    let line = src[line_start..]
        .lines()
        .next()
        .unwrap_or_default()
        .replace('\t', " ");
    let mut s = format!("ERROR: <input>:{line_no}:{}: {msg}", col + 1);
    s.push_str("\n | ");
    s.push_str(&line);
    s.push_str("\n | ");
    s.push_str(&".".repeat(col));
    s.push('^');
    s
}

fn parse(src: &str) -> Result<(IdedExpr, cel::common::ast::SourceInfo), String> {
    if src.len() > MAX_EXPRESSION_BYTES {
        return Err(format!(
            "ERROR: <input>:1:1: expression is longer than {MAX_EXPRESSION_BYTES} bytes"
        ));
    }
    let owned = src.to_string();
    // The parser is a third-party crate: a panic inside it must not take the request down.
    let result = std::panic::catch_unwind(move || {
        crate::schema::deep_stack(|| {
            cel::parser::Parser::new()
                .enable_optional_syntax(true)
                .max_recursion_depth(MAX_PARSE_DEPTH)
                .parse_with_source_info(&owned)
        })
    });
    match result {
        Ok(Ok(parsed)) => {
            // Everything after the parser walks the tree recursively: bound its depth (cel-go
            // bounds its parser's recursion the same way), and drop a refused tree on a big stack.
            if ast_depth(&parsed.0) > MAX_AST_DEPTH {
                crate::schema::deep_stack(move || drop(parsed));
                return Err(render_issue(src, 0, "max recursion depth exceeded"));
            }
            Ok(parsed)
        }
        Ok(Err(errs)) => {
            let mut out = Vec::new();
            for e in &errs.errors {
                // The parser reports 1-based lines and columns.
                let line = (e.pos.0.max(1) - 1) as usize;
                let col = (e.pos.1.max(1) - 1) as usize;
                let offset = src.split_inclusive('\n').take(line).map(str::len).sum::<usize>()
                    + src
                        .split_inclusive('\n')
                        .nth(line)
                        .map(|l| l.char_indices().nth(col).map(|(i, _)| i).unwrap_or(l.len()))
                        .unwrap_or(0);
                let msg = if e.msg.starts_with("Syntax error") || e.msg.contains("undeclared") {
                    e.msg.clone()
                } else {
                    format!("Syntax error: {}", e.msg)
                };
                out.push(render_issue(src, offset, &msg));
            }
            if out.is_empty() {
                out.push("ERROR: <input>:1:1: Syntax error: unparseable expression".into());
            }
            Err(out.join("\n"))
        }
        Err(_) => Err("ERROR: <input>:1:1: Syntax error: the expression could not be parsed".into()),
    }
}

/// The deepest expression tree compiled; a `+` chain of 250 terms is that deep.
const MAX_AST_DEPTH: usize = 250;

/// The depth of an expression tree, found without recursion.
fn ast_depth(e: &IdedExpr) -> usize {
    let mut max = 0;
    let mut stack: Vec<(&IdedExpr, usize)> = vec![(e, 1)];
    while let Some((x, d)) = stack.pop() {
        max = max.max(d);
        if d > MAX_AST_DEPTH {
            break;
        }
        let mut children: Vec<&IdedExpr> = Vec::new();
        match &x.expr {
            Expr::Call(c) => {
                children.extend(c.target.as_deref());
                children.extend(c.args.iter());
            }
            Expr::Comprehension(c) => {
                children.extend([&c.iter_range, &c.accu_init, &c.loop_cond, &c.loop_step, &c.result]);
            }
            Expr::List(l) => children.extend(l.elements.iter()),
            Expr::Map(m) => {
                for en in &m.entries {
                    if let EntryExpr::MapEntry(me) = &en.expr {
                        children.push(&me.key);
                        children.push(&me.value);
                    }
                }
            }
            Expr::Struct(st) => {
                for en in &st.entries {
                    if let EntryExpr::StructField(sf) = &en.expr {
                        children.push(&sf.value);
                    }
                }
            }
            Expr::Select(sel) => children.push(&sel.operand),
            _ => {}
        }
        stack.extend(children.into_iter().map(|c| (c, d + 1)));
    }
    max
}

/// A schema as the static checker sees it.
#[derive(Clone, Copy)]
struct STy<'s> {
    s: &'s Value,
    kind: SchKind,
}

/// Functions (receiver style and global) that the evaluator implements.
const RECEIVER_FUNCS: &[&str] = &[
    "size",
    "matches",
    "startsWith",
    "endsWith",
    "contains",
    "lowerAscii",
    "upperAscii",
    "split",
    "join",
    "trim",
    "replace",
    "indexOf",
    "lastIndexOf",
    "substring",
    "charAt",
    "isSorted",
    "sum",
    "min",
    "max",
    "hasValue",
    "value",
    "orValue",
    "or",
    "find",
    "findAll",
    "getFullYear",
    "getMonth",
    "getDayOfMonth",
    "getDate",
    "getDayOfWeek",
    "getDayOfYear",
    "getHours",
    "getMinutes",
    "getSeconds",
    "getMilliseconds",
    "isGreaterThan",
    "isLessThan",
    "compareTo",
    "add",
    "sub",
    "asInteger",
    "asApproximateFloat",
    "sign",
    "isInteger",
    "getScheme",
    "getHost",
    "getHostname",
    "getPort",
    "getEscapedPath",
    "getQuery",
    "reverse",
];
const GLOBAL_FUNCS: &[&str] = &[
    "size",
    "int",
    "uint",
    "double",
    "string",
    "bool",
    "bytes",
    "duration",
    "timestamp",
    "type",
    "dyn",
    "matches",
    "quantity",
    "isQuantity",
    "url",
    "isURL",
];
/// Scalar CEL types whose operator overloads the checker knows.
const SCALARS: &[&str] = &["int", "uint", "double", "string", "bool", "bytes"];
const TYPE_IDENTS: &[&str] = &[
    "int",
    "uint",
    "double",
    "string",
    "bool",
    "bytes",
    "list",
    "map",
    "null_type",
    "type",
    "google.protobuf.Duration",
    "google.protobuf.Timestamp",
];

struct Checker<'s> {
    src: &'s str,
    info: &'s cel::common::ast::SourceInfo,
    scope: Vec<(String, Option<STy<'s>>)>,
    errors: Vec<String>,
}

impl<'s> Checker<'s> {
    fn issue(&mut self, id: u64, msg: String) {
        let offset = self.info.offset_for(id).map(|(s, _)| s as usize).unwrap_or(0);
        self.errors
            .push(render_issue(self.src, offset.min(self.src.len()), &msg));
    }

    fn lookup(&self, name: &str) -> Option<Option<STy<'s>>> {
        self.scope.iter().rev().find(|(n, _)| n == name).map(|(_, t)| *t)
    }

    /// Checks `e`, returning its schema when known and its CEL type name when obvious.
    fn check(&mut self, e: &IdedExpr) -> (Option<STy<'s>>, Option<&'static str>) {
        match &e.expr {
            Expr::Literal(l) => (
                None,
                Some(match l {
                    LiteralValue::Boolean(_) => "bool",
                    LiteralValue::Bytes(_) => "bytes",
                    LiteralValue::Double(_) => "double",
                    LiteralValue::Int(_) => "int",
                    LiteralValue::Null => "null_type",
                    LiteralValue::String(_) => "string",
                    LiteralValue::UInt(_) => "uint",
                }),
            ),
            Expr::Ident(name) => match self.lookup(name) {
                Some(t) => (t, t.and_then(|t| scalar_type(t.s))),
                None if TYPE_IDENTS.contains(&name.as_str()) => (None, Some("type")),
                None => {
                    self.issue(
                        e.id,
                        format!("undeclared reference to '{name}' (in container '')"),
                    );
                    (None, None)
                }
            },
            Expr::Select(sel) => {
                let (t, ty) = self.check(&sel.operand);
                let child = match (t, ty) {
                    (Some(t), _) => self.select_field(e.id, t, &sel.field),
                    (None, Some(ty))
                        if matches!(
                            ty,
                            "int" | "uint" | "double" | "string" | "bool" | "bytes" | "null_type"
                        ) && !sel.test =>
                    {
                        self.issue(e.id, format!("type '{ty}' does not support field selection"));
                        None
                    }
                    _ => None,
                };
                if sel.test {
                    (None, Some("bool"))
                } else {
                    (child, child.and_then(|c| scalar_type(c.s)))
                }
            }
            Expr::Call(c) => self.check_call(e.id, c),
            Expr::List(l) => {
                for x in &l.elements {
                    self.check(x);
                }
                (None, Some("list"))
            }
            Expr::Map(m) => {
                for en in &m.entries {
                    if let EntryExpr::MapEntry(me) = &en.expr {
                        self.check(&me.key);
                        self.check(&me.value);
                    }
                }
                (None, Some("map"))
            }
            Expr::Struct(s) => {
                self.issue(
                    e.id,
                    format!("undeclared reference to '{}' (in container '')", s.type_name),
                );
                (None, None)
            }
            Expr::Comprehension(c) => {
                let (range, _) = self.check(&c.iter_range);
                let elem = range.and_then(|r| {
                    let s = r.s;
                    match s.get("type").and_then(Value::as_str) {
                        Some("array") => s.get("items").map(|i| STy {
                            s: i,
                            kind: if flag(i, "x-kubernetes-embedded-resource") {
                                SchKind::Root
                            } else {
                                SchKind::Normal
                            },
                        }),
                        _ => None,
                    }
                });
                self.check(&c.accu_init);
                self.scope.push((c.accu_var.clone(), None));
                let two = c.iter_var2.is_some();
                self.scope
                    .push((c.iter_var.clone(), if two { None } else { elem }));
                if let Some(v2) = &c.iter_var2 {
                    self.scope.push((v2.clone(), elem));
                }
                self.check(&c.loop_cond);
                self.check(&c.loop_step);
                self.scope.pop();
                if two {
                    self.scope.pop();
                }
                let (_, result_ty) = self.check(&c.result);
                self.scope.pop();
                (None, result_ty)
            }
            Expr::Unspecified => (None, None),
        }
    }

    fn select_field(&mut self, id: u64, t: STy<'s>, field: &str) -> Option<STy<'s>> {
        let s = t.s;
        let name = unescape(field)?;
        if t.kind == SchKind::Meta {
            if name == "name" || name == "generateName" {
                return None;
            }
            self.issue(id, format!("undefined field '{field}'"));
            return None;
        }
        if t.kind == SchKind::Root && (name == "apiVersion" || name == "kind" || name == "metadata") {
            if name == "metadata" {
                static EMPTY: LazyLock<Value> = LazyLock::new(|| Value::Object(Map::new()));
                return Some(STy {
                    s: s.pointer("/properties/metadata").unwrap_or(&EMPTY),
                    kind: SchKind::Meta,
                });
            }
            return None;
        }
        if let Some(ty) = scalar_type(s)
            && ty != "dyn"
        {
            self.issue(id, format!("type '{ty}' does not support field selection"));
            return None;
        }
        if let Some(props) = s.get("properties").and_then(Value::as_object) {
            return match props.get(&name) {
                Some(p) => Some(STy {
                    s: p,
                    kind: if flag(p, "x-kubernetes-embedded-resource") {
                        SchKind::Root
                    } else {
                        SchKind::Normal
                    },
                }),
                None if flag(s, "x-kubernetes-preserve-unknown-fields") => None,
                None => {
                    self.issue(id, format!("undefined field '{field}'"));
                    None
                }
            };
        }
        if let Some(a) = s.get("additionalProperties").filter(|a| a.is_object()) {
            return Some(STy {
                s: a,
                kind: SchKind::Normal,
            });
        }
        None
    }

    fn check_call(&mut self, id: u64, c: &CallExpr) -> (Option<STy<'s>>, Option<&'static str>) {
        let name = c.func_name.as_str();
        let optional_ns = matches!(c.target.as_deref(), Some(IdedExpr { expr: Expr::Ident(t), .. }) if t == "optional" && self.lookup("optional").is_none());
        if optional_ns {
            for a in &c.args {
                self.check(a);
            }
            if !matches!(name, "of" | "none" | "ofNonZeroValue") {
                self.issue(
                    id,
                    format!("undeclared reference to 'optional.{name}' (in container '')"),
                );
            }
            return (None, Some("optional"));
        }
        let mut target = None;
        if let Some(t) = &c.target {
            target = Some(self.check(t));
        }
        let args: Vec<_> = c.args.iter().map(|a| self.check(a)).collect();
        let is_op = name.starts_with('_') || name.starts_with('@') || name == "!_" || name == "-_";
        if !is_op {
            let known = if c.target.is_some() {
                RECEIVER_FUNCS.contains(&name)
            } else {
                GLOBAL_FUNCS.contains(&name)
            };
            if !known {
                self.issue(id, format!("undeclared reference to '{name}' (in container '')"));
                return (None, None);
            }
        }
        // Operands of known, different scalar types have no overload (cel-go's checker refuses
        // `1 == 'a'` and `1 + 1.0`; ordering across int, uint and double is allowed).
        if let [(_, Some(a)), (_, Some(b))] = args.as_slice()
            && matches!(
                name,
                "_==_" | "_!=_" | "_<_" | "_<=_" | "_>_" | "_>=_" | "_+_" | "_-_" | "_*_" | "_/_" | "_%_"
            )
            && SCALARS.contains(a)
            && SCALARS.contains(b)
            && a != b
        {
            let numeric = |t: &str| matches!(t, "int" | "uint" | "double");
            let ordering = matches!(name, "_<_" | "_<=_" | "_>_" | "_>=_");
            if !(ordering && numeric(a) && numeric(b)) {
                self.issue(
                    id,
                    format!("found no matching overload for '{name}' applied to '({a}, {b})'"),
                );
                return (None, None);
            }
        }
        let ty = match name {
            "_&&_"
            | "_||_"
            | "!_"
            | "_==_"
            | "_!=_"
            | "_<_"
            | "_<=_"
            | "_>_"
            | "_>=_"
            | "@in"
            | "matches"
            | "startsWith"
            | "endsWith"
            | "contains"
            | "isSorted"
            | "hasValue"
            | "isGreaterThan"
            | "isLessThan"
            | "isInteger"
            | "isQuantity"
            | "isURL"
            | "bool"
            | "@not_strictly_false" => Some("bool"),
            "size" | "int" | "indexOf" | "lastIndexOf" | "getFullYear" | "getMonth" | "getDayOfMonth"
            | "getDate" | "getDayOfWeek" | "getDayOfYear" | "getHours" | "getMinutes" | "getSeconds"
            | "getMilliseconds" | "compareTo" | "asInteger" | "sign" => Some("int"),
            "lowerAscii" | "upperAscii" | "trim" | "replace" | "substring" | "charAt" | "string" | "join"
            | "getScheme" | "getHost" | "getHostname" | "getPort" | "getEscapedPath" | "find" | "reverse" => {
                Some("string")
            }
            "split" | "findAll" => Some("list"),
            "double" | "asApproximateFloat" => Some("double"),
            "uint" => Some("uint"),
            "duration" => Some("google.protobuf.Duration"),
            "timestamp" => Some("google.protobuf.Timestamp"),
            "_-_" | "_*_" | "_/_" | "_%_" | "-_" | "_+_" => {
                let mut known = args.iter().map(|a| a.1);
                match (known.next().flatten(), known.next().flatten()) {
                    // Timestamps and durations mix (timestamp - timestamp is a duration): unknown.
                    (Some(a), Some(b)) if a == b && SCALARS.contains(&a) => Some(a),
                    _ => None,
                }
            }
            "_?_:_" => match (args.get(1).and_then(|a| a.1), args.get(2).and_then(|a| a.1)) {
                (Some(a), Some(b)) if a == b => Some(a),
                _ => None,
            },
            _ => None,
        };
        let _ = target;
        (None, ty)
    }
}

/// The CEL type of a scalar schema; `None` for objects, arrays and unknown shapes.
fn scalar_type(s: &Value) -> Option<&'static str> {
    if flag(s, "x-kubernetes-int-or-string") {
        return Some("dyn");
    }
    match s.get("type").and_then(Value::as_str)? {
        "string" => Some(match s.get("format").and_then(Value::as_str) {
            Some("byte") => "bytes",
            Some("duration") => "google.protobuf.Duration",
            Some("date" | "date-time") => "google.protobuf.Timestamp",
            _ => "string",
        }),
        "integer" => Some("int"),
        "number" => Some("double"),
        "boolean" => Some("bool"),
        _ => None,
    }
}

/// Parse and check one expression against the schema its `self` is bound to; returns the expression
/// and its result type when obvious, or cel-go's issue text.
fn compile_expr(
    src: &str,
    schema: &Value,
    resource_root: bool,
    optional_old_self: bool,
) -> Result<(IdedExpr, Option<&'static str>), String> {
    let (expr, info) = parse(src)?;
    let kind = if resource_root {
        SchKind::Root
    } else {
        SchKind::Normal
    };
    let me = STy { s: schema, kind };
    let mut checker = Checker {
        src,
        info: &info,
        scope: vec![
            ("self".to_string(), Some(me)),
            (
                "oldSelf".to_string(),
                if optional_old_self { None } else { Some(me) },
            ),
        ],
        errors: Vec::new(),
    };
    let (_, ty) = crate::schema::deep_stack(|| checker.check(&expr));
    if checker.errors.is_empty() {
        Ok((expr, ty))
    } else {
        Err(checker.errors.join("\n"))
    }
}

/// Kubernetes' escaping of property names into CEL identifiers, undone: `__dash__` is `-`,
/// `__dot__` `.`, `__slash__` `/`, `__underscores__` `__`, `__{keyword}__` the keyword.
fn unescape(field: &str) -> Option<String> {
    const KEYWORDS: &[&str] = &[
        "true",
        "false",
        "null",
        "in",
        "as",
        "break",
        "const",
        "continue",
        "else",
        "for",
        "function",
        "if",
        "import",
        "let",
        "loop",
        "package",
        "namespace",
        "return",
        "var",
        "void",
        "while",
    ];
    if let Some(inner) = field.strip_prefix("__").and_then(|f| f.strip_suffix("__"))
        && KEYWORDS.contains(&inner)
    {
        return Some(inner.to_string());
    }
    if !field.contains("__") {
        return Some(field.to_string());
    }
    let mut out = String::new();
    let mut rest = field;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("__underscores__") {
            out.push_str("__");
            rest = r;
        } else if let Some(r) = rest.strip_prefix("__dot__") {
            out.push('.');
            rest = r;
        } else if let Some(r) = rest.strip_prefix("__dash__") {
            out.push('-');
            rest = r;
        } else if let Some(r) = rest.strip_prefix("__slash__") {
            out.push('/');
            rest = r;
        } else if rest.starts_with("__") {
            return None;
        } else {
            let mut chars = rest.chars();
            if let Some(c) = chars.next() {
                out.push(c);
            }
            rest = chars.as_str();
        }
    }
    Some(out)
}

/// The real server's `ValidFieldPath`: `.a.b`, `.a['key']`, `['a'].b`; returns the normalized path
/// (`a.b`, `a[key]`) or why it is not valid for the schema.
fn valid_field_path(path: &str, schema: &Value) -> Result<String, String> {
    let mut out = String::new();
    let mut s = schema;
    let mut rest = path;
    let step = |name: &str, out: &mut String, s: &mut &Value| -> Result<(), String> {
        if let Some(props) = s.get("properties").and_then(Value::as_object) {
            let child = props
                .get(name)
                .ok_or_else(|| "does not refer to a valid field".to_string())?;
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(name);
            *s = child;
            Ok(())
        } else if let Some(a) = s.get("additionalProperties").filter(|a| a.is_object()) {
            out.push_str(&format!("[{name}]"));
            *s = a;
            Ok(())
        } else {
            Err("does not refer to a valid field".into())
        }
    };
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            let name = &r[..end];
            if name.is_empty() {
                return Err("unexpected end of JSON path".into());
            }
            step(name, &mut out, &mut s)?;
            rest = &r[end..];
        } else if let Some(r) = rest.strip_prefix("['") {
            let end = r
                .find("']")
                .ok_or_else(|| "unexpected end of JSON path".to_string())?;
            step(&r[..end], &mut out, &mut s)?;
            rest = &r[end + 2..];
        } else {
            return Err(format!("expected [ or . but got: {rest}"));
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------------
// CRD-time checks
// ---------------------------------------------------------------------------------------------------

/// The Go `%#v` rendering of the internal ValidationRule, as the real server puts it in the message.
fn render_rule(r: &Value) -> String {
    let s = |k: &str| crate::schema::go_quote_str(r.get(k).and_then(Value::as_str).unwrap_or_default());
    let reason = match r.get("reason").and_then(Value::as_str) {
        Some(_) => "(*apiextensions.FieldValueErrorReason)(0xc000a1c0f0)".to_string(),
        None => "(*apiextensions.FieldValueErrorReason)(nil)".to_string(),
    };
    let oos = match r.get("optionalOldSelf").and_then(Value::as_bool) {
        Some(_) => "(*bool)(0xc000a1c0f8)".to_string(),
        None => "(*bool)(nil)".to_string(),
    };
    format!(
        "apiextensions.ValidationRule{{Rule:{}, Message:{}, MessageExpression:{}, Reason:{reason}, FieldPath:{}, OptionalOldSelf:{oos}}}",
        s("rule"),
        s("message"),
        s("messageExpression"),
        s("fieldPath")
    )
}

const SUPPORTED_REASONS: &[&str] = &[
    "FieldValueDuplicate",
    "FieldValueForbidden",
    "FieldValueInvalid",
    "FieldValueRequired",
];

/// The `x-kubernetes-validations` problems of a CRD's schemas, worded and placed as the real server's
/// CRD validation reports them. A CRD whose versions all have the same schema is checked once under
/// `spec.validation.openAPIV3Schema` (the internal form the real server validates); otherwise each
/// version under `spec.versions[i].schema.openAPIV3Schema`.
///
/// On an update, rules already in the old CRD are not checked again (the real server lets stored
/// expressions keep their cost, and a CRD stored before a check existed stays updatable).
pub fn check_crd(crd: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let mut stored = std::collections::HashSet::new();
    if let Some(old) = old {
        let versions = old.pointer("/spec/versions").and_then(Value::as_array);
        for v in versions.into_iter().flatten() {
            if let Some(s) = v.pointer("/schema/openAPIV3Schema") {
                crate::schema::deep_stack(|| collect_rules(s, &mut stored));
            }
        }
    }
    let place = Place {
        stored: Some(&stored),
        ..ROOT_PLACE
    };
    let versions = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let schemas: Vec<Option<&Value>> = versions
        .iter()
        .map(|v| v.pointer("/schema/openAPIV3Schema"))
        .collect();
    let mut errs = Vec::new();
    let all_same = !schemas.is_empty() && schemas.iter().all(|s| *s == schemas[0]);
    crate::schema::deep_stack(|| {
        if all_same {
            if let Some(s) = schemas[0] {
                check_node(s, "spec.validation.openAPIV3Schema", place, &mut errs);
            }
        } else {
            for (i, s) in schemas.iter().enumerate() {
                if let Some(s) = s {
                    let prefix = format!("spec.versions[{i}].schema.openAPIV3Schema");
                    check_node(s, &prefix, place, &mut errs);
                }
            }
        }
    });
    errs
}

/// Where a schema node sits, for the CRD-time checks.
#[derive(Clone, Copy)]
struct Place<'p> {
    /// The root of a resource (or an embedded one).
    root: bool,
    /// The path of the list above that is not a map list, where oldSelf cannot correlate.
    uncorrelatable: Option<&'p str>,
    /// How many times the node's rules may run per object when every list and map above it has
    /// maxItems/maxProperties (their product); `None` when one is unbounded.
    bounded: Option<f64>,
    /// The rules of the CRD before this update.
    stored: Option<&'p std::collections::HashSet<String>>,
}

fn collect_rules(s: &Value, out: &mut std::collections::HashSet<String>) {
    match s {
        Value::Object(m) => {
            if let Some(rules) = m.get("x-kubernetes-validations").and_then(Value::as_array) {
                out.extend(
                    rules
                        .iter()
                        .filter_map(|r| r.get("rule")?.as_str().map(str::to_string)),
                );
            }
            m.values().for_each(|v| collect_rules(v, out));
        }
        Value::Array(a) => a.iter().for_each(|v| collect_rules(v, out)),
        _ => {}
    }
}

fn check_node(s: &Value, path: &str, place: Place<'_>, errs: &mut Vec<FieldError>) {
    if !s.is_object() {
        return;
    }
    if let Some(rules) = s.get("x-kubernetes-validations").and_then(Value::as_array) {
        for (i, r) in rules.iter().enumerate() {
            check_rule(
                s,
                r,
                &format!("{path}.x-kubernetes-validations[{i}]"),
                place,
                errs,
            );
        }
    }
    let times = |key: &str, c: f64| -> Option<f64> {
        let max = s.get(key).and_then(Value::as_f64)?;
        Some(c * max.max(0.0))
    };
    if let Some(props) = s.get("properties").and_then(Value::as_object) {
        for (k, p) in props {
            let embedded = flag(p, "x-kubernetes-embedded-resource");
            let child = Place {
                root: embedded,
                ..place
            };
            check_node(p, &format!("{path}.properties[{k}]"), child, errs);
        }
    }
    if let Some(a) = s.get("additionalProperties").filter(|a| a.is_object()) {
        let child = Place {
            root: flag(a, "x-kubernetes-embedded-resource"),
            bounded: place.bounded.and_then(|c| times("maxProperties", c)),
            ..place
        };
        check_node(a, &format!("{path}.additionalProperties"), child, errs);
    }
    if let Some(items) = s.get("items").filter(|i| i.is_object()) {
        let embedded = flag(items, "x-kubernetes-embedded-resource");
        let is_map_list = s.get("x-kubernetes-list-type").and_then(Value::as_str) == Some("map");
        let child = Place {
            root: embedded,
            uncorrelatable: if is_map_list {
                place.uncorrelatable
            } else {
                place.uncorrelatable.or(Some(path))
            },
            bounded: place.bounded.and_then(|c| times("maxItems", c)),
            ..place
        };
        check_node(items, &format!("{path}.items"), child, errs);
    }
    if let Some(all) = s.get("allOf").and_then(Value::as_array) {
        for (i, a) in all.iter().enumerate() {
            if let Some(rules) = a.get("x-kubernetes-validations").and_then(Value::as_array) {
                for (j, r) in rules.iter().enumerate() {
                    let p = format!("{path}.allOf[{i}].x-kubernetes-validations[{j}]");
                    check_rule(s, r, &p, place, errs);
                }
            }
        }
    }
}

const ROOT_PLACE: Place<'static> = Place {
    root: true,
    uncorrelatable: None,
    bounded: Some(1.0),
    stored: None,
};

// ---------------------------------------------------------------------------------------------------
// CRD-time cost estimate (a lower bound of cel-go's, see check_rule)
// ---------------------------------------------------------------------------------------------------

/// The real server's request size limit, from which it estimates unbounded sizes.
const MAX_REQUEST_SIZE: f64 = 3.0 * 1024.0 * 1024.0;
/// The real server's StaticEstimatedCostLimit.
const STATIC_ESTIMATED_COST_LIMIT: f64 = 10_000_000.0;

/// At least the smallest JSON a value of this schema serializes to (the real estimate uses the
/// exact minimum; a larger one here gives smaller counts, so the estimate stays a lower bound).
fn min_size(s: &Value) -> f64 {
    if flag(s, "x-kubernetes-int-or-string") {
        return 4.0;
    }
    match s.get("type").and_then(Value::as_str) {
        Some("boolean") => 4.0,
        Some("integer" | "number") => 1.0,
        Some("string") => 2.0 + s.get("minLength").and_then(Value::as_f64).unwrap_or(0.0),
        Some("array") => 2.0,
        Some("object") => {
            let props = s.get("properties").and_then(Value::as_object);
            let required = s.get("required").and_then(Value::as_array);
            let mut n = 2.0;
            if let (Some(props), Some(required)) = (props, required) {
                for r in required.iter().filter_map(Value::as_str) {
                    if let Some(p) = props.get(r) {
                        n += r.len() as f64 + 4.0 + min_size(p);
                    }
                }
            }
            n
        }
        _ => 1e6,
    }
}

/// How many times a rule under an unbounded list or map may run per object: the real server's
/// estimate from the request size and the node's own smallest serialization.
fn unbounded_cardinality(s: &Value) -> f64 {
    ((MAX_REQUEST_SIZE - 2.0) / (min_size(s) + 1.0)).floor()
}

/// The largest size (items, properties or bytes) a value of this schema may have, as the real
/// estimator sees it; 0 when unknown (which keeps the estimate a lower bound).
fn max_size(s: &Value) -> f64 {
    match s.get("type").and_then(Value::as_str) {
        Some("array") => match s.get("maxItems").and_then(Value::as_f64) {
            Some(m) => m.max(0.0),
            None => s
                .get("items")
                .map(|i| ((MAX_REQUEST_SIZE - 2.0) / (min_size(i) + 1.0)).floor())
                .unwrap_or(0.0),
        },
        Some("object") => match (
            s.get("maxProperties").and_then(Value::as_f64),
            s.get("additionalProperties"),
        ) {
            (Some(m), _) => m.max(0.0),
            (None, Some(a)) if a.is_object() => ((MAX_REQUEST_SIZE - 2.0) / (min_size(a) + 5.0)).floor(),
            _ => 0.0,
        },
        Some("string") => {
            if s.get("enum").is_some() || s.get("format").is_some() {
                0.0
            } else {
                s.get("maxLength")
                    .and_then(Value::as_f64)
                    .unwrap_or(MAX_REQUEST_SIZE - 2.0)
                    .max(0.0)
            }
        }
        _ => 0.0,
    }
}

struct Estimate<'s> {
    cost: f64,
    schema: Option<&'s Value>,
    /// Known largest size (items or bytes), 0 when unknown.
    size: f64,
}

struct Estimator<'s> {
    scope: Vec<(String, Option<&'s Value>)>,
}

impl<'s> Estimator<'s> {
    fn with(&self, cost: f64, schema: Option<&'s Value>) -> Estimate<'s> {
        Estimate {
            cost,
            schema,
            size: schema.map(max_size).unwrap_or(0.0),
        }
    }

    fn estimate(&mut self, e: &IdedExpr) -> Estimate<'s> {
        match &e.expr {
            Expr::Literal(LiteralValue::String(text)) => Estimate {
                cost: 0.0,
                schema: None,
                size: text.inner().len() as f64,
            },
            Expr::Literal(_) | Expr::Unspecified | Expr::Struct(_) => self.with(0.0, None),
            Expr::Ident(name) => {
                let s = self
                    .scope
                    .iter()
                    .rev()
                    .find(|(n, _)| n == name)
                    .and_then(|(_, s)| *s);
                self.with(1.0, s)
            }
            Expr::Select(sel) => {
                let operand = self.estimate(&sel.operand);
                let child = match (operand.schema, unescape(&sel.field)) {
                    (Some(s), Some(f)) if !sel.test => s
                        .get("properties")
                        .and_then(|p| p.get(&f))
                        .or_else(|| s.get("additionalProperties").filter(|a| a.is_object())),
                    _ => None,
                };
                self.with(1.0 + operand.cost, child)
            }
            Expr::List(l) => {
                let cost = l.elements.iter().map(|x| self.estimate(x).cost).sum();
                Estimate {
                    cost,
                    schema: None,
                    size: l.elements.len() as f64,
                }
            }
            Expr::Map(m) => {
                let mut cost = 0.0;
                for en in &m.entries {
                    if let EntryExpr::MapEntry(me) = &en.expr {
                        cost += self.estimate(&me.key).cost + self.estimate(&me.value).cost;
                    }
                }
                self.with(cost, None)
            }
            Expr::Call(c) => {
                let target = c.target.as_deref().map(|t| self.estimate(t));
                let args: Vec<Estimate<'s>> = c.args.iter().map(|a| self.estimate(a)).collect();
                let mut cost = target.as_ref().map(|t| t.cost).unwrap_or(0.0);
                match c.func_name.as_str() {
                    "_?_:_" if args.len() == 3 => cost += args[0].cost + args[1].cost.max(args[2].cost),
                    _ => cost += args.iter().map(|a| a.cost).sum::<f64>(),
                }
                // cel-go: ceil((len(string) + 1) * 0.1) * ceil(len(regex) * 0.25).
                let matched = match (c.func_name.as_str(), &target, args.as_slice()) {
                    ("matches", Some(t), [p]) => Some((t.size, p.size)),
                    ("matches", None, [t, p]) => Some((t.size, p.size)),
                    _ => None,
                };
                if let Some((len, pattern)) = matched {
                    cost += ((len + 1.0) * 0.1).ceil() * (pattern * 0.25).ceil();
                }
                self.with(cost, None)
            }
            Expr::Comprehension(c) => {
                let range = self.estimate(&c.iter_range);
                let elem = range
                    .schema
                    .and_then(|s| match s.get("type").and_then(Value::as_str) {
                        Some("array") => s.get("items"),
                        _ => None,
                    });
                let init = self.estimate(&c.accu_init).cost;
                self.scope.push((c.accu_var.clone(), None));
                self.scope.push((
                    c.iter_var.clone(),
                    if c.iter_var2.is_some() { None } else { elem },
                ));
                if let Some(v2) = &c.iter_var2 {
                    self.scope.push((v2.clone(), elem));
                }
                let per_item = self.estimate(&c.loop_cond).cost + self.estimate(&c.loop_step).cost;
                self.scope.pop();
                if c.iter_var2.is_some() {
                    self.scope.pop();
                }
                let result = self.estimate(&c.result).cost;
                self.scope.pop();
                self.with(range.cost + init + range.size * per_item + result, None)
            }
        }
    }
}

fn has_newlines(s: &str) -> bool {
    s.contains(['\n', '\r'])
}

fn check_rule(s: &Value, r: &Value, path: &str, place: Place<'_>, errs: &mut Vec<FieldError>) {
    let (root, uncorrelatable) = (place.root, place.uncorrelatable);
    let text = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or_default();
    let (rule, msg, msg_expr, fp) = (
        text("rule"),
        text("message"),
        text("messageExpression"),
        text("fieldPath"),
    );
    let before = errs.len();
    if rule.trim().is_empty() {
        errs.push(FieldError::required(
            format!("{path}.rule"),
            "rule is not specified",
        ));
    } else if !msg.is_empty() && msg.trim().is_empty() {
        errs.push(FieldError::invalid(
            format!("{path}.message"),
            Value::from(msg),
            "message must be non-empty if specified",
        ));
    } else if has_newlines(msg.trim()) {
        errs.push(FieldError::invalid(
            format!("{path}.message"),
            Value::from(msg),
            "message must not contain line breaks",
        ));
    } else if has_newlines(rule.trim()) && msg.trim().is_empty() {
        errs.push(FieldError::required(
            format!("{path}.message"),
            "message must be specified if rule contains line breaks",
        ));
    }
    if !msg_expr.is_empty() && msg_expr.trim().is_empty() {
        errs.push(FieldError::required(
            format!("{path}.messageExpression"),
            "messageExpression must be non-empty if specified",
        ));
    }
    if let Some(reason) = r.get("reason").and_then(Value::as_str)
        && !SUPPORTED_REASONS.contains(&reason)
    {
        let supported: Vec<String> = SUPPORTED_REASONS.iter().map(|s| s.to_string()).collect();
        errs.push(FieldError::not_supported(
            format!("{path}.reason"),
            Value::from(reason),
            &supported,
        ));
    }
    if !fp.is_empty() && fp.trim().is_empty() {
        errs.push(FieldError::invalid(
            format!("{path}.fieldPath"),
            Value::from(fp),
            "fieldPath must be non-empty if specified",
        ));
    }
    if has_newlines(fp) {
        errs.push(FieldError::invalid(
            format!("{path}.fieldPath"),
            Value::from(fp),
            "fieldPath must not contain line breaks",
        ));
    }
    if !fp.is_empty() && valid_field_path(fp, s).is_err() {
        errs.push(FieldError::invalid(
            format!("{path}.fieldPath"),
            Value::from(fp),
            "fieldPath must be a valid path",
        ));
    }
    if errs.len() > before {
        // The real server compiles only once the schema problems at this level are fixed.
        return;
    }
    let (compiled, mut problems) = compile_rule(r, s, root);
    let unchanged = place.stored.is_some_and(|stored| stored.contains(rule));
    if unchanged {
        problems.retain(|(field, _, _)| *field != "rule");
    }
    // The real server refuses rules whose estimated cost, times the number of times they may run
    // per object, exceeds its static limit. This estimate is a lower bound of the real one, so
    // only rules more than 100 times over (where the real message says "more than 100x") are
    // refused here; rules between 1x and 100x over are accepted and meet the runtime limits.
    let cardinality = place.bounded.unwrap_or_else(|| unbounded_cardinality(s));
    for (field, expr) in [
        ("rule", compiled.program.as_ref()),
        (
            "messageExpression",
            compiled.message_expression.as_ref().map(|(_, e)| e),
        ),
    ] {
        let Some(expr) = expr else {
            continue;
        };
        if unchanged {
            continue;
        }
        let mut est = Estimator {
            scope: vec![("self".into(), Some(s)), ("oldSelf".into(), Some(s))],
        };
        let cost = crate::schema::deep_stack(|| est.estimate(expr)).cost;
        if cost * cardinality > 100.0 * STATIC_ESTIMATED_COST_LIMIT {
            let what = if field == "rule" {
                "estimated rule cost"
            } else {
                "estimated messageExpression cost"
            };
            errs.push(FieldError::forbidden(
                format!("{path}.{field}"),
                format!("{what} exceeds budget by factor of more than 100x (try simplifying the rule, or adding maxItems, maxProperties, and maxLength where arrays, maps, and strings are declared)"),
            ));
        }
    }
    for (field, detail, _) in problems {
        errs.push(FieldError::invalid_raw(
            format!("{path}.{field}"),
            render_rule(r),
            detail,
        ));
    }
    if compiled.uses_old_self {
        if let Some(u) = uncorrelatable {
            errs.push(FieldError::invalid(
                format!("{path}.rule"),
                Value::from(rule),
                format!("oldSelf cannot be used on the uncorrelatable portion of the schema within {u}"),
            ));
        }
    } else if let Some(b) = r.get("optionalOldSelf").and_then(Value::as_bool)
        && compiled.program.is_some()
    {
        errs.push(FieldError::invalid(
            format!("{path}.optionalOldSelf"),
            Value::Bool(b),
            "may not be set if oldSelf is not used in rule",
        ));
    }
}

// ---------------------------------------------------------------------------------------------------
// Values
// ---------------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Debug)]
enum SchKind {
    Normal,
    /// The root of a resource (or an embedded resource): apiVersion, kind and metadata are visible.
    Root,
    /// The metadata of a resource root: only name and generateName are visible.
    Meta,
}

#[derive(Clone, Copy)]
struct Sch<'a> {
    s: Option<&'a Value>,
    kind: SchKind,
}

impl<'a> Sch<'a> {
    fn of(s: Option<&'a Value>) -> Self {
        let kind = if s.is_some_and(|s| flag(s, "x-kubernetes-embedded-resource")) {
            SchKind::Root
        } else {
            SchKind::Normal
        };
        Sch { s, kind }
    }

    fn child(&self, key: &str) -> Sch<'a> {
        if self.kind == SchKind::Root && key == "metadata" {
            return Sch {
                s: self.s.and_then(|s| s.pointer("/properties/metadata")),
                kind: SchKind::Meta,
            };
        }
        let Some(s) = self.s else {
            return Sch::of(None);
        };
        if let Some(p) = s.get("properties").and_then(|p| p.get(key)) {
            return Sch::of(Some(p));
        }
        Sch::of(s.get("additionalProperties").filter(|a| a.is_object()))
    }

    fn items(&self) -> Sch<'a> {
        Sch::of(self.s.and_then(|s| s.get("items")).filter(|i| i.is_object()))
    }

    fn visible(&self, key: &str) -> bool {
        self.kind != SchKind::Meta || key == "name" || key == "generateName"
    }
}

#[derive(Clone)]
enum Str<'a> {
    B(&'a str),
    O(Rc<str>),
}

impl Str<'_> {
    fn as_str(&self) -> &str {
        match self {
            Str::B(s) => s,
            Str::O(s) => s,
        }
    }
}

/// A decimal quantity in nano units (k8s resource.Quantity, exact for the usual sizes).
#[derive(Clone, Copy, PartialEq, PartialOrd, Debug)]
struct Quantity(i128);

#[derive(Clone)]
enum V<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Uint(u64),
    Double(f64),
    Str(Str<'a>),
    Bytes(Rc<[u8]>),
    /// A `format: byte` string of the object, still base64.
    JBytes(&'a str),
    List(Rc<Vec<V<'a>>>),
    Map(Rc<Vec<(V<'a>, V<'a>)>>),
    JObj(&'a Map<String, Value>, Sch<'a>),
    JArr(&'a [Value], Sch<'a>),
    Dur(TimeDelta),
    Ts(DateTime<FixedOffset>),
    Opt(Option<Rc<V<'a>>>),
    Type(&'static str),
    Quantity(Quantity),
    Url(Rc<UrlParts>),
}

#[derive(Debug)]
struct UrlParts {
    scheme: String,
    host: String,
    path: String,
    query: String,
}

enum E {
    /// The per-call cost limit was reached.
    Cost,
    Msg(String),
}

type R<T> = Result<T, E>;

fn err<T>(m: impl Into<String>) -> R<T> {
    Err(E::Msg(m.into()))
}

fn no_overload<T>() -> R<T> {
    err("no such overload")
}

impl<'a> V<'a> {
    fn s(s: impl Into<Rc<str>>) -> V<'a> {
        V::Str(Str::O(s.into()))
    }

    fn type_name(&self) -> &'static str {
        match self {
            V::Null => "null_type",
            V::Bool(_) => "bool",
            V::Int(_) => "int",
            V::Uint(_) => "uint",
            V::Double(_) => "double",
            V::Str(_) => "string",
            V::Bytes(_) | V::JBytes(_) => "bytes",
            V::List(_) | V::JArr(..) => "list",
            V::Map(_) | V::JObj(..) => "map",
            V::Dur(_) => "google.protobuf.Duration",
            V::Ts(_) => "google.protobuf.Timestamp",
            V::Opt(_) => "optional_type",
            V::Type(_) => "type",
            V::Quantity(_) => "kubernetes.Quantity",
            V::Url(_) => "kubernetes.URL",
        }
    }

    fn from_json(v: &'a Value, sch: Sch<'a>) -> V<'a> {
        let s = sch.s;
        let ty = s.and_then(|s| s.get("type")).and_then(Value::as_str);
        match v {
            Value::Null => V::Null,
            Value::Bool(b) => V::Bool(*b),
            Value::Number(n) => {
                if ty == Some("number") {
                    V::Double(n.as_f64().unwrap_or(0.0))
                } else if let Some(i) = n.as_i64() {
                    V::Int(i)
                } else if let Some(u) = n.as_u64() {
                    V::Uint(u)
                } else {
                    V::Double(n.as_f64().unwrap_or(0.0))
                }
            }
            Value::String(text) => {
                let format = s.and_then(|s| s.get("format")).and_then(Value::as_str);
                match (ty, format) {
                    // Decoded when used, where the decoding is charged: a loop reading a
                    // megabyte of base64 must run into the cost limit, not decode it each time.
                    (Some("string"), Some("byte")) => V::JBytes(text),
                    // Longer strings are no valid durations or timestamps; parsing them on every
                    // access would be work the cost does not count.
                    (Some("string"), Some("duration" | "date-time" | "date")) if text.len() > 64 => {
                        V::Str(Str::B(text))
                    }
                    (Some("string"), Some("duration")) => {
                        parse_duration(text).map(V::Dur).unwrap_or(V::Str(Str::B(text)))
                    }
                    (Some("string"), Some("date-time")) => {
                        parse_timestamp(text).map(V::Ts).unwrap_or(V::Str(Str::B(text)))
                    }
                    (Some("string"), Some("date")) => chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
                        .ok()
                        .and_then(|d| d.and_hms_opt(0, 0, 0))
                        .map(|d| V::Ts(d.and_utc().fixed_offset()))
                        .unwrap_or(V::Str(Str::B(text))),
                    _ => V::Str(Str::B(text)),
                }
            }
            Value::Array(a) => V::JArr(a, sch),
            Value::Object(m) => V::JObj(m, sch),
        }
    }

    fn as_str(&self) -> R<&str> {
        match self {
            V::Str(s) => Ok(s.as_str()),
            _ => no_overload(),
        }
    }

    fn list_len(&self) -> Option<usize> {
        match self {
            V::List(l) => Some(l.len()),
            V::JArr(a, _) => Some(a.len()),
            _ => None,
        }
    }

    fn list_get(&self, i: usize) -> Option<V<'a>> {
        match self {
            V::List(l) => l.get(i).cloned(),
            V::JArr(a, s) => a.get(i).map(|x| V::from_json(x, s.items())),
            _ => None,
        }
    }

    fn is_map(&self) -> bool {
        matches!(self, V::Map(_) | V::JObj(..))
    }

    fn map_get(&self, key: &V<'a>) -> R<Option<V<'a>>> {
        match self {
            V::JObj(m, s) => {
                let V::Str(k) = key else {
                    return Ok(None);
                };
                let k = k.as_str();
                Ok(m.get(k)
                    .filter(|v| !v.is_null() && s.visible(k))
                    .map(|v| V::from_json(v, s.child(k))))
            }
            V::Map(entries) => {
                for (k, v) in entries.iter() {
                    if key_eq(k, key) {
                        return Ok(Some(v.clone()));
                    }
                }
                Ok(None)
            }
            _ => no_overload(),
        }
    }

    fn map_keys(&self) -> Vec<V<'a>> {
        match self {
            V::JObj(m, s) => m
                .iter()
                .filter(|(k, v)| !v.is_null() && s.visible(k))
                .map(|(k, _)| V::Str(Str::B(k.as_str())))
                .collect(),
            V::Map(entries) => entries.iter().map(|(k, _)| k.clone()).collect(),
            _ => Vec::new(),
        }
    }

    fn map_len(&self) -> usize {
        match self {
            V::JObj(m, s) => m.iter().filter(|(k, v)| !v.is_null() && s.visible(k)).count(),
            V::Map(entries) => entries.len(),
            _ => 0,
        }
    }

    fn to_display(&self) -> String {
        match self {
            V::Str(s) => s.as_str().to_string(),
            V::Int(i) => i.to_string(),
            V::Uint(u) => u.to_string(),
            V::Double(d) => format_double(*d),
            V::Bool(b) => b.to_string(),
            V::Null => "null".into(),
            V::Dur(d) => format_duration(*d),
            V::Ts(t) => t
                .with_timezone(&Utc)
                .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
            V::Type(t) => t.to_string(),
            other => other.type_name().to_string(),
        }
    }
}

fn key_eq(a: &V, b: &V) -> bool {
    match (a, b) {
        (V::Str(x), V::Str(y)) => x.as_str() == y.as_str(),
        (V::Int(x), V::Int(y)) => x == y,
        (V::Uint(x), V::Uint(y)) => x == y,
        (V::Int(x), V::Uint(y)) | (V::Uint(y), V::Int(x)) => *x >= 0 && *x as u64 == *y,
        (V::Bool(x), V::Bool(y)) => x == y,
        _ => false,
    }
}

fn format_double(d: f64) -> String {
    if d.is_infinite() {
        return if d > 0.0 { "+Inf".into() } else { "-Inf".into() };
    }
    if d.is_nan() {
        return "NaN".into();
    }
    let s = format!("{d}");
    if d.abs() >= 1e21 || (d != 0.0 && d.abs() < 1e-4) {
        format!("{d:e}").replace('e', "e+").replace("e+-", "e-")
    } else {
        s
    }
}

fn format_duration(d: TimeDelta) -> String {
    let nanos = d.num_nanoseconds().unwrap_or(i64::MAX);
    let secs = nanos / 1_000_000_000;
    let frac = (nanos % 1_000_000_000).abs();
    if frac == 0 {
        format!("{secs}s")
    } else {
        let sign = if nanos < 0 && secs == 0 { "-" } else { "" };
        let f = format!("{frac:09}");
        format!("{sign}{secs}.{}s", f.trim_end_matches('0'))
    }
}

/// Go's time.ParseDuration: `1h30m`, `1.5s`, `300ms`, `-2h45m`.
fn parse_duration(s: &str) -> Option<TimeDelta> {
    let (neg, mut rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if rest == "0" {
        return Some(TimeDelta::zero());
    }
    if rest.is_empty() {
        return None;
    }
    let mut total: f64 = 0.0;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_end == 0 {
            return None;
        }
        let n: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_end] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_end..];
        total += n * unit;
    }
    if total > i64::MAX as f64 {
        return None;
    }
    let nanos = total.round() as i64;
    Some(TimeDelta::nanoseconds(if neg { -nanos } else { nanos }))
}

fn parse_timestamp(s: &str) -> Option<DateTime<FixedOffset>> {
    DateTime::parse_from_rfc3339(s).ok()
}

// ---------------------------------------------------------------------------------------------------
// Evaluation
// ---------------------------------------------------------------------------------------------------

static REGEXES: LazyLock<Mutex<HashMap<String, Arc<regex::Regex>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn regex(pattern: &str) -> R<Arc<regex::Regex>> {
    if let Ok(cache) = REGEXES.lock()
        && let Some(r) = cache.get(pattern)
    {
        return Ok(r.clone());
    }
    let re = regex::RegexBuilder::new(pattern)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| E::Msg(format!("invalid regular expression: {e}")))?;
    let re = Arc::new(re);
    if let Ok(mut cache) = REGEXES.lock() {
        if cache.len() >= MAX_CACHED_REGEXES {
            cache.clear();
        }
        cache.insert(pattern.to_string(), re.clone());
    }
    Ok(re)
}

struct Ev<'a> {
    cost: u64,
    limit: u64,
    vars: Vec<(&'a str, V<'a>)>,
}

/// Per-character cost of string traversal in cel-go (0.1 per byte, rounded up).
fn traversal(len: usize) -> u64 {
    (len as u64).div_ceil(10)
}

impl<'a> Ev<'a> {
    fn charge(&mut self, n: u64) -> R<()> {
        self.cost = self.cost.saturating_add(n);
        if self.cost > self.limit {
            Err(E::Cost)
        } else {
            Ok(())
        }
    }

    fn lookup(&self, name: &str) -> Option<V<'a>> {
        self.vars
            .iter()
            .rev()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.clone())
    }

    fn eval(&mut self, e: &'a IdedExpr) -> R<V<'a>> {
        stacker::maybe_grow(64 * 1024, 1024 * 1024, || self.eval_inner(e))
    }

    fn eval_inner(&mut self, e: &'a IdedExpr) -> R<V<'a>> {
        match &e.expr {
            Expr::Literal(l) => Ok(match l {
                LiteralValue::Boolean(b) => V::Bool(*b.inner()),
                LiteralValue::Bytes(b) => V::Bytes(b.inner().to_vec().into()),
                LiteralValue::Double(d) => V::Double(*d.inner()),
                LiteralValue::Int(i) => V::Int(*i.inner()),
                LiteralValue::Null => V::Null,
                LiteralValue::String(s) => V::Str(Str::B(s.inner())),
                LiteralValue::UInt(u) => V::Uint(*u.inner()),
            }),
            Expr::Ident(name) => {
                self.charge(1)?;
                if let Some(v) = self.lookup(name) {
                    return Ok(v);
                }
                match name.as_str() {
                    "int" => Ok(V::Type("int")),
                    "uint" => Ok(V::Type("uint")),
                    "double" => Ok(V::Type("double")),
                    "string" => Ok(V::Type("string")),
                    "bool" => Ok(V::Type("bool")),
                    "bytes" => Ok(V::Type("bytes")),
                    "list" => Ok(V::Type("list")),
                    "map" => Ok(V::Type("map")),
                    "null_type" => Ok(V::Type("null_type")),
                    "type" => Ok(V::Type("type")),
                    "google.protobuf.Duration" => Ok(V::Type("google.protobuf.Duration")),
                    "google.protobuf.Timestamp" => Ok(V::Type("google.protobuf.Timestamp")),
                    _ => err(format!("no such attribute: {name}")),
                }
            }
            Expr::Select(sel) => {
                self.charge(1)?;
                let operand = self.eval(&sel.operand)?;
                let field = unescape(&sel.field).unwrap_or_else(|| sel.field.clone());
                if sel.test {
                    return match &operand {
                        V::JObj(..) | V::Map(_) => {
                            Ok(V::Bool(operand.map_get(&V::s(field.as_str()))?.is_some()))
                        }
                        _ => err("invalid type for field selection."),
                    };
                }
                self.select(operand, &field)
            }
            Expr::Call(c) => self.call(c),
            Expr::List(l) => {
                self.charge(10)?;
                let mut out = Vec::with_capacity(l.elements.len());
                for (i, x) in l.elements.iter().enumerate() {
                    let v = self.eval(x)?;
                    if l.optional_indices.contains(&i) {
                        match v {
                            V::Opt(Some(inner)) => out.push((*inner).clone()),
                            V::Opt(None) => {}
                            _ => return no_overload(),
                        }
                    } else {
                        out.push(v);
                    }
                }
                Ok(V::List(Rc::new(out)))
            }
            Expr::Map(m) => {
                self.charge(30)?;
                let mut out: Vec<(V<'a>, V<'a>)> = Vec::with_capacity(m.entries.len());
                for en in &m.entries {
                    let EntryExpr::MapEntry(me) = &en.expr else {
                        return no_overload();
                    };
                    let k = self.eval(&me.key)?;
                    if !matches!(k, V::Str(_) | V::Int(_) | V::Uint(_) | V::Bool(_)) {
                        return err(format!("unsupported key type: {}", k.type_name()));
                    }
                    let mut v = self.eval(&me.value)?;
                    if me.optional {
                        match v {
                            V::Opt(Some(inner)) => v = (*inner).clone(),
                            V::Opt(None) => continue,
                            _ => return no_overload(),
                        }
                    }
                    if out.iter().any(|(x, _)| key_eq(x, &k)) {
                        return err(format!("Failed with repeated key: {}", k.to_display()));
                    }
                    out.push((k, v));
                }
                Ok(V::Map(Rc::new(out)))
            }
            Expr::Struct(_) | Expr::Unspecified => err("unsupported expression"),
            Expr::Comprehension(c) => {
                let range = self.eval(&c.iter_range)?;
                let accu = self.eval(&c.accu_init)?;
                let accu_name = c.accu_var.as_str();
                self.vars.push((accu_name, accu));
                let accu_idx = self.vars.len() - 1;
                let n = match (&range, range.list_len()) {
                    (_, Some(n)) => n,
                    (r, None) if r.is_map() => r.map_len(),
                    _ => {
                        self.vars.pop();
                        return no_overload();
                    }
                };
                let keys = if range.is_map() {
                    range.map_keys()
                } else {
                    Vec::new()
                };
                let mut result = Ok(());
                for i in 0..n {
                    if let Err(e) = self.charge(1) {
                        result = Err(e);
                        break;
                    }
                    let (first, second) = if range.is_map() {
                        let k = keys.get(i).cloned().unwrap_or(V::Null);
                        let v = range.map_get(&k).ok().flatten().unwrap_or(V::Null);
                        (k, v)
                    } else {
                        let item = range.list_get(i).unwrap_or(V::Null);
                        (V::Int(i as i64), item)
                    };
                    match &c.iter_var2 {
                        Some(v2) => {
                            self.vars.push((c.iter_var.as_str(), first));
                            self.vars.push((v2.as_str(), second));
                        }
                        None => {
                            let v = if range.is_map() { first } else { second };
                            self.vars.push((c.iter_var.as_str(), v));
                        }
                    }
                    let step = self.loop_once(c, accu_idx);
                    self.vars.pop();
                    if c.iter_var2.is_some() {
                        self.vars.pop();
                    }
                    match step {
                        Ok(true) => {}
                        Ok(false) => break,
                        Err(e) => {
                            result = Err(e);
                            break;
                        }
                    }
                }
                if let Err(e) = result {
                    self.vars.pop();
                    return Err(e);
                }
                let out = self.eval(&c.result);
                self.vars.pop();
                out
            }
        }
    }

    /// One comprehension iteration; `false` when the loop condition stopped it.
    fn loop_once(&mut self, c: &'a cel::common::ast::ComprehensionExpr, accu_idx: usize) -> R<bool> {
        let cond = self.eval(&c.loop_cond)?;
        if matches!(cond, V::Bool(false)) {
            return Ok(false);
        }
        // The map and filter macros append to their accumulator: done in place, because a copy per
        // step would make them quadratic.
        if let Some(appended) = self.append_step(&c.loop_step, &c.accu_var)? {
            if let Some(x) = appended
                && let V::List(l) = &mut self.vars[accu_idx].1
            {
                Rc::make_mut(l).push(x);
            }
            return Ok(true);
        }
        let next = self.eval(&c.loop_step)?;
        self.vars[accu_idx].1 = next;
        Ok(true)
    }

    /// For `@result + [x]` and `p ? @result + [x] : @result`, the element to append (`Some(None)`
    /// when nothing is appended); `None` for other steps.
    fn append_step(&mut self, step: &'a IdedExpr, accu: &str) -> R<Option<Option<V<'a>>>> {
        let is_accu = |e: &IdedExpr| matches!(&e.expr, Expr::Ident(n) if n == accu);
        let single = |e: &'a IdedExpr| -> Option<&'a IdedExpr> {
            if let Expr::Call(c) = &e.expr
                && c.func_name == "_+_"
                && c.args.len() == 2
                && is_accu(&c.args[0])
                && let Expr::List(l) = &c.args[1].expr
                && l.elements.len() == 1
                && l.optional_indices.is_empty()
            {
                return Some(&l.elements[0]);
            }
            None
        };
        if let Some(x) = single(step) {
            self.charge(1)?;
            return Ok(Some(Some(self.eval(x)?)));
        }
        if let Expr::Call(c) = &step.expr
            && c.func_name == "_?_:_"
            && c.args.len() == 3
            && is_accu(&c.args[2])
            && let Some(x) = single(&c.args[1])
        {
            self.charge(1)?;
            return match self.eval(&c.args[0])? {
                V::Bool(true) => Ok(Some(Some(self.eval(x)?))),
                V::Bool(false) => Ok(Some(None)),
                _ => no_overload(),
            };
        }
        Ok(None)
    }

    fn select(&mut self, operand: V<'a>, field: &str) -> R<V<'a>> {
        match &operand {
            V::JObj(..) | V::Map(_) => match operand.map_get(&V::s(field))? {
                Some(v) => Ok(v),
                None => err(format!("no such key: {field}")),
            },
            V::Opt(None) => Ok(V::Opt(None)),
            V::Opt(Some(inner)) => {
                let inner = (**inner).clone();
                match inner.map_get(&V::s(field)) {
                    Ok(Some(v)) => Ok(V::Opt(Some(Rc::new(v)))),
                    _ => Ok(V::Opt(None)),
                }
            }
            _ => err(format!(
                "type '{}' does not support field selection",
                operand.type_name()
            )),
        }
    }

    fn call(&mut self, c: &'a CallExpr) -> R<V<'a>> {
        let name = c.func_name.as_str();
        match name {
            "_&&_" | "_||_" => {
                if c.args.len() != 2 {
                    return no_overload();
                }
                let short = name == "_||_";
                let a = self.eval(&c.args[0]);
                if let Ok(V::Bool(b)) = &a
                    && *b == short
                {
                    return Ok(V::Bool(short));
                }
                if let Err(E::Cost) = a {
                    return Err(E::Cost);
                }
                let b = self.eval(&c.args[1]);
                match (a, b) {
                    (_, Err(E::Cost)) => Err(E::Cost),
                    (_, Ok(V::Bool(x))) if x == short => Ok(V::Bool(short)),
                    (Ok(V::Bool(_)), Ok(V::Bool(y))) => Ok(V::Bool(y)),
                    (Err(e), _) => Err(e),
                    (_, Err(e)) => Err(e),
                    _ => no_overload(),
                }
            }
            "_?_:_" => {
                if c.args.len() != 3 {
                    return no_overload();
                }
                match self.eval(&c.args[0])? {
                    V::Bool(true) => self.eval(&c.args[1]),
                    V::Bool(false) => self.eval(&c.args[2]),
                    _ => no_overload(),
                }
            }
            "@not_strictly_false" => match self.eval(&c.args[0]) {
                Ok(V::Bool(b)) => Ok(V::Bool(b)),
                Err(E::Cost) => Err(E::Cost),
                _ => Ok(V::Bool(true)),
            },
            _ => {
                if let Some(IdedExpr {
                    expr: Expr::Ident(t), ..
                }) = c.target.as_deref()
                    && t == "optional"
                    && self.lookup("optional").is_none()
                {
                    return self.optional_ns(c);
                }
                self.charge(1)?;
                let target = match &c.target {
                    Some(t) => Some(self.eval(t)?),
                    None => None,
                };
                let mut args = Vec::with_capacity(c.args.len());
                for a in &c.args {
                    args.push(self.eval(a)?);
                }
                self.apply(name, target, args)
            }
        }
    }

    fn optional_ns(&mut self, c: &'a CallExpr) -> R<V<'a>> {
        self.charge(1)?;
        match (c.func_name.as_str(), c.args.as_slice()) {
            ("none", []) => Ok(V::Opt(None)),
            ("of", [x]) => Ok(V::Opt(Some(Rc::new(self.eval(x)?)))),
            ("ofNonZeroValue", [x]) => {
                let v = self.eval(x)?;
                let zero = match &v {
                    V::Null => true,
                    V::Bool(b) => !b,
                    V::Int(i) => *i == 0,
                    V::Uint(u) => *u == 0,
                    V::Double(d) => *d == 0.0,
                    V::Str(s) => s.as_str().is_empty(),
                    V::Bytes(b) => b.is_empty(),
                    V::List(_) | V::JArr(..) => v.list_len() == Some(0),
                    V::Map(_) | V::JObj(..) => v.map_len() == 0,
                    _ => false,
                };
                Ok(V::Opt(if zero { None } else { Some(Rc::new(v)) }))
            }
            _ => no_overload(),
        }
    }

    fn apply(&mut self, name: &str, target: Option<V<'a>>, args: Vec<V<'a>>) -> R<V<'a>> {
        let mut all: Vec<V<'a>> = Vec::with_capacity(args.len() + 1);
        let member = target.is_some();
        if let Some(t) = target {
            all.push(t);
        }
        all.extend(args);
        match (name, all.as_slice()) {
            ("!_", [V::Bool(b)]) => Ok(V::Bool(!b)),
            ("-_", [V::Int(i)]) => i
                .checked_neg()
                .map(V::Int)
                .ok_or(E::Msg("integer overflow".into())),
            ("-_", [V::Double(d)]) => Ok(V::Double(-d)),
            ("-_", [V::Dur(d)]) => Ok(V::Dur(-*d)),
            ("_==_", [a, b]) => Ok(V::Bool(self.equal(a, b)?)),
            ("_!=_", [a, b]) => Ok(V::Bool(!self.equal(a, b)?)),
            ("_<_", [a, b]) => Ok(V::Bool(self.compare(a, b)? == std::cmp::Ordering::Less)),
            ("_<=_", [a, b]) => Ok(V::Bool(self.compare(a, b)? != std::cmp::Ordering::Greater)),
            ("_>_", [a, b]) => Ok(V::Bool(self.compare(a, b)? == std::cmp::Ordering::Greater)),
            ("_>=_", [a, b]) => Ok(V::Bool(self.compare(a, b)? != std::cmp::Ordering::Less)),
            ("_+_" | "_-_" | "_*_" | "_/_" | "_%_", [a, b]) => self.arith(name, a, b),
            ("_[_]", [a, i]) => self.index(a, i),
            ("_[?_]", [a, i]) => match a {
                V::Opt(None) => Ok(V::Opt(None)),
                V::Opt(Some(inner)) => {
                    let inner = (**inner).clone();
                    Ok(V::Opt(self.index(&inner, i).ok().map(Rc::new)))
                }
                _ => Ok(V::Opt(self.index(a, i).ok().map(Rc::new))),
            },
            ("_?._", [a, V::Str(f)]) => {
                let f = f.as_str().to_string();
                let inner = match a {
                    V::Opt(None) => return Ok(V::Opt(None)),
                    V::Opt(Some(inner)) => (**inner).clone(),
                    other => other.clone(),
                };
                Ok(V::Opt(inner.map_get(&V::s(f.as_str()))?.map(Rc::new)))
            }
            ("@in", [x, coll]) => self.contains(coll, x),
            ("size", [x]) => self.size(x),
            ("type", [x]) => Ok(V::Type(x.type_name())),
            ("dyn", [x]) => Ok(x.clone()),
            ("int" | "uint" | "double" | "string" | "bool" | "bytes" | "duration" | "timestamp", [x])
                if !member =>
            {
                self.convert(name, x)
            }
            ("hasValue", [V::Opt(o)]) => Ok(V::Bool(o.is_some())),
            ("value", [V::Opt(o)]) => match o {
                Some(v) => Ok((**v).clone()),
                None => err("optional.none() dereference"),
            },
            ("orValue", [V::Opt(o), d]) => Ok(o.as_ref().map(|v| (**v).clone()).unwrap_or_else(|| d.clone())),
            ("or", [V::Opt(o), other @ V::Opt(_)]) => Ok(if o.is_some() {
                V::Opt(o.clone())
            } else {
                other.clone()
            }),
            ("quantity", [V::Str(s)]) if !member => parse_quantity(s.as_str())
                .map(V::Quantity)
                .ok_or(E::Msg(
                "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
                    .to_string(),
            )),
            ("isQuantity", [V::Str(s)]) if !member => Ok(V::Bool(parse_quantity(s.as_str()).is_some())),
            ("url", [V::Str(s)]) if !member => {
                parse_url(s.as_str()).map(|u| V::Url(Rc::new(u))).ok_or_else(|| {
                    E::Msg(format!(
                        "URL parse error during conversion from string: parse {:?}: invalid URI for request",
                        s.as_str()
                    ))
                })
            }
            ("isURL", [V::Str(s)]) if !member => Ok(V::Bool(parse_url(s.as_str()).is_some())),
            (_, [V::Str(_), ..]) if member => self.string_fn(name, &all),
            (_, [V::List(_) | V::JArr(..), ..]) if member => self.list_fn(name, &all),
            (_, [V::Ts(_), ..]) if member => self.ts_fn(name, &all),
            (_, [V::Dur(_), ..]) if member => self.dur_fn(name, &all),
            (_, [V::Quantity(_), ..]) if member => quantity_fn(name, &all),
            (_, [V::Url(_), ..]) if member => url_fn(name, &all),
            ("matches", [V::Str(_), V::Str(_)]) => self.string_fn(name, &all),
            _ => no_overload(),
        }
    }

    fn size(&mut self, x: &V<'a>) -> R<V<'a>> {
        if matches!(x, V::JBytes(_)) {
            let x = self.decoded(x)?;
            return self.size(&x);
        }
        Ok(V::Int(match x {
            V::Str(s) => {
                // Counting characters walks the string: charged like any traversal.
                self.charge(traversal(s.as_str().len()))?;
                s.as_str().chars().count() as i64
            }
            V::Bytes(b) => b.len() as i64,
            V::List(_) | V::JArr(..) => x.list_len().unwrap_or(0) as i64,
            V::Map(_) | V::JObj(..) => x.map_len() as i64,
            _ => return no_overload(),
        }))
    }

    fn contains(&mut self, coll: &V<'a>, x: &V<'a>) -> R<V<'a>> {
        match coll {
            V::List(_) | V::JArr(..) => {
                let n = coll.list_len().unwrap_or(0);
                for i in 0..n {
                    self.charge(1)?;
                    if let Some(item) = coll.list_get(i)
                        && self.equal(&item, x)?
                    {
                        return Ok(V::Bool(true));
                    }
                }
                Ok(V::Bool(false))
            }
            V::Map(_) | V::JObj(..) => Ok(V::Bool(coll.map_get(x)?.is_some())),
            _ => no_overload(),
        }
    }

    fn equal(&mut self, a: &V<'a>, b: &V<'a>) -> R<bool> {
        if matches!(a, V::JBytes(_)) || matches!(b, V::JBytes(_)) {
            let (a, b) = (self.decoded(a)?, self.decoded(b)?);
            return self.equal(&a, &b);
        }
        stacker::maybe_grow(64 * 1024, 1024 * 1024, || self.equal_inner(a, b))
    }

    /// A `format: byte` value decoded (charged by its length); anything else as it is.
    fn decoded(&mut self, v: &V<'a>) -> R<V<'a>> {
        let V::JBytes(text) = v else {
            return Ok(v.clone());
        };
        self.charge(traversal(text.len()))?;
        use base64::Engine;
        Ok(match base64::engine::general_purpose::STANDARD.decode(text) {
            Ok(b) => V::Bytes(b.into()),
            Err(_) => V::Str(Str::B(text)),
        })
    }

    fn equal_inner(&mut self, a: &V<'a>, b: &V<'a>) -> R<bool> {
        Ok(match (a, b) {
            (V::Null, V::Null) => true,
            (V::Bool(x), V::Bool(y)) => x == y,
            (V::Int(x), V::Int(y)) => x == y,
            (V::Uint(x), V::Uint(y)) => x == y,
            (V::Int(x), V::Uint(y)) | (V::Uint(y), V::Int(x)) => *x >= 0 && *x as u64 == *y,
            (V::Double(x), V::Double(y)) => x == y,
            (V::Int(x), V::Double(y)) | (V::Double(y), V::Int(x)) => (*x as f64) == *y,
            (V::Uint(x), V::Double(y)) | (V::Double(y), V::Uint(x)) => (*x as f64) == *y,
            (V::Str(x), V::Str(y)) => {
                self.charge(traversal(x.as_str().len().min(y.as_str().len())))?;
                x.as_str() == y.as_str()
            }
            (V::Bytes(x), V::Bytes(y)) => x == y,
            (V::Dur(x), V::Dur(y)) => x == y,
            (V::Ts(x), V::Ts(y)) => x == y,
            (V::Type(x), V::Type(y)) => x == y,
            (V::Quantity(x), V::Quantity(y)) => x == y,
            (V::Opt(x), V::Opt(y)) => match (x, y) {
                (None, None) => true,
                (Some(x), Some(y)) => self.equal(x, y)?,
                _ => false,
            },
            (V::List(_) | V::JArr(..), V::List(_) | V::JArr(..)) => {
                let n = a.list_len().unwrap_or(0);
                if n != b.list_len().unwrap_or(0) {
                    return Ok(false);
                }
                // Lists of listType set or map compare as sets, whatever their order (their items
                // are unique: the schema validation checked that).
                let unordered = |v: &V| {
                    matches!(v, V::JArr(_, s) if s.s
                        .and_then(|s| s.get("x-kubernetes-list-type"))
                        .and_then(Value::as_str)
                        .is_some_and(|t| t == "set" || t == "map"))
                };
                if unordered(a) || unordered(b) {
                    for i in 0..n {
                        let Some(x) = a.list_get(i) else {
                            return Ok(false);
                        };
                        let mut found = false;
                        for j in 0..n {
                            self.charge(1)?;
                            if let Some(y) = b.list_get(j)
                                && self.equal(&x, &y)?
                            {
                                found = true;
                                break;
                            }
                        }
                        if !found {
                            return Ok(false);
                        }
                    }
                    return Ok(true);
                }
                for i in 0..n {
                    self.charge(1)?;
                    let (Some(x), Some(y)) = (a.list_get(i), b.list_get(i)) else {
                        return Ok(false);
                    };
                    if !self.equal(&x, &y)? {
                        return Ok(false);
                    }
                }
                true
            }
            (V::Map(_) | V::JObj(..), V::Map(_) | V::JObj(..)) => {
                if a.map_len() != b.map_len() {
                    return Ok(false);
                }
                for k in a.map_keys() {
                    self.charge(1)?;
                    let (Some(x), Some(y)) = (a.map_get(&k)?, b.map_get(&k)?) else {
                        return Ok(false);
                    };
                    if !self.equal(&x, &y)? {
                        return Ok(false);
                    }
                }
                true
            }
            _ => false,
        })
    }

    fn compare(&mut self, a: &V<'a>, b: &V<'a>) -> R<std::cmp::Ordering> {
        use std::cmp::Ordering;
        if matches!(a, V::JBytes(_)) || matches!(b, V::JBytes(_)) {
            let (a, b) = (self.decoded(a)?, self.decoded(b)?);
            return self.compare(&a, &b);
        }
        let o = match (a, b) {
            (V::Int(x), V::Int(y)) => x.cmp(y),
            (V::Uint(x), V::Uint(y)) => x.cmp(y),
            (V::Int(x), V::Uint(y)) => {
                if *x < 0 {
                    Ordering::Less
                } else {
                    (*x as u64).cmp(y)
                }
            }
            (V::Uint(x), V::Int(y)) => {
                if *y < 0 {
                    Ordering::Greater
                } else {
                    x.cmp(&(*y as u64))
                }
            }
            (V::Double(x), V::Double(y)) => x.partial_cmp(y).ok_or(E::Msg("no such overload".into()))?,
            (V::Int(x), V::Double(y)) => (*x as f64)
                .partial_cmp(y)
                .ok_or(E::Msg("no such overload".into()))?,
            (V::Double(x), V::Int(y)) => x
                .partial_cmp(&(*y as f64))
                .ok_or(E::Msg("no such overload".into()))?,
            (V::Uint(x), V::Double(y)) => (*x as f64)
                .partial_cmp(y)
                .ok_or(E::Msg("no such overload".into()))?,
            (V::Double(x), V::Uint(y)) => x
                .partial_cmp(&(*y as f64))
                .ok_or(E::Msg("no such overload".into()))?,
            (V::Str(x), V::Str(y)) => {
                self.charge(traversal(x.as_str().len().min(y.as_str().len())))?;
                x.as_str().cmp(y.as_str())
            }
            (V::Bytes(x), V::Bytes(y)) => x.cmp(y),
            (V::Bool(x), V::Bool(y)) => x.cmp(y),
            (V::Dur(x), V::Dur(y)) => x.cmp(y),
            (V::Ts(x), V::Ts(y)) => x.cmp(y),
            _ => return no_overload(),
        };
        Ok(o)
    }

    fn arith(&mut self, op: &str, a: &V<'a>, b: &V<'a>) -> R<V<'a>> {
        if matches!(a, V::JBytes(_)) || matches!(b, V::JBytes(_)) {
            let (a, b) = (self.decoded(a)?, self.decoded(b)?);
            return self.arith(op, &a, &b);
        }
        let overflow = || E::Msg("integer overflow".into());
        Ok(match (op, a, b) {
            ("_+_", V::Int(x), V::Int(y)) => V::Int(x.checked_add(*y).ok_or_else(overflow)?),
            ("_-_", V::Int(x), V::Int(y)) => V::Int(x.checked_sub(*y).ok_or_else(overflow)?),
            ("_*_", V::Int(x), V::Int(y)) => V::Int(x.checked_mul(*y).ok_or_else(overflow)?),
            ("_/_", V::Int(_), V::Int(0)) | ("_/_", V::Uint(_), V::Uint(0)) => {
                return err("division by zero");
            }
            ("_%_", V::Int(_), V::Int(0)) | ("_%_", V::Uint(_), V::Uint(0)) => return err("modulus by zero"),
            ("_/_", V::Int(x), V::Int(y)) => V::Int(x.checked_div(*y).ok_or_else(overflow)?),
            ("_%_", V::Int(x), V::Int(y)) => V::Int(x.checked_rem(*y).ok_or_else(overflow)?),
            ("_+_", V::Uint(x), V::Uint(y)) => V::Uint(x.checked_add(*y).ok_or_else(overflow)?),
            ("_-_", V::Uint(x), V::Uint(y)) => V::Uint(x.checked_sub(*y).ok_or_else(overflow)?),
            ("_*_", V::Uint(x), V::Uint(y)) => V::Uint(x.checked_mul(*y).ok_or_else(overflow)?),
            ("_/_", V::Uint(x), V::Uint(y)) => V::Uint(x / y),
            ("_%_", V::Uint(x), V::Uint(y)) => V::Uint(x % y),
            ("_+_", V::Double(x), V::Double(y)) => V::Double(x + y),
            ("_-_", V::Double(x), V::Double(y)) => V::Double(x - y),
            ("_*_", V::Double(x), V::Double(y)) => V::Double(x * y),
            ("_/_", V::Double(x), V::Double(y)) => V::Double(x / y),
            ("_+_", V::Str(x), V::Str(y)) => {
                self.charge(traversal(x.as_str().len() + y.as_str().len()))?;
                let mut s = String::with_capacity(x.as_str().len() + y.as_str().len());
                s.push_str(x.as_str());
                s.push_str(y.as_str());
                V::s(s)
            }
            ("_+_", V::Bytes(x), V::Bytes(y)) => {
                self.charge(traversal(x.len() + y.len()))?;
                V::Bytes([&x[..], &y[..]].concat().into())
            }
            ("_+_", V::List(_) | V::JArr(..), V::List(_) | V::JArr(..)) => {
                let (n, m) = (a.list_len().unwrap_or(0), b.list_len().unwrap_or(0));
                self.charge(traversal(n + m))?;
                let mut out = Vec::with_capacity(n + m);
                for i in 0..n {
                    out.extend(a.list_get(i));
                }
                for i in 0..m {
                    out.extend(b.list_get(i));
                }
                V::List(Rc::new(out))
            }
            ("_+_", V::Dur(x), V::Dur(y)) => V::Dur(x.checked_add(y).ok_or_else(overflow)?),
            ("_-_", V::Dur(x), V::Dur(y)) => V::Dur(x.checked_sub(y).ok_or_else(overflow)?),
            ("_+_", V::Ts(t), V::Dur(d)) | ("_+_", V::Dur(d), V::Ts(t)) => {
                V::Ts(t.checked_add_signed(*d).ok_or_else(overflow)?)
            }
            ("_-_", V::Ts(t), V::Dur(d)) => V::Ts(t.checked_sub_signed(*d).ok_or_else(overflow)?),
            ("_-_", V::Ts(x), V::Ts(y)) => V::Dur(x.signed_duration_since(*y)),
            _ => return no_overload(),
        })
    }

    fn index(&mut self, a: &V<'a>, i: &V<'a>) -> R<V<'a>> {
        match a {
            V::List(_) | V::JArr(..) => {
                let idx = match i {
                    V::Int(x) => *x,
                    V::Uint(x) => i64::try_from(*x).unwrap_or(i64::MAX),
                    V::Double(d) if d.fract() == 0.0 => *d as i64,
                    _ => return no_overload(),
                };
                let n = a.list_len().unwrap_or(0);
                if idx < 0 || idx as usize >= n {
                    return err(format!("index out of bounds: {idx}"));
                }
                a.list_get(idx as usize)
                    .ok_or(E::Msg(format!("index out of bounds: {idx}")))
            }
            V::Map(_) | V::JObj(..) => match a.map_get(i)? {
                Some(v) => Ok(v),
                None => err(format!("no such key: {}", i.to_display())),
            },
            _ => no_overload(),
        }
    }

    fn convert(&mut self, to: &str, x: &V<'a>) -> R<V<'a>> {
        if matches!(x, V::JBytes(_)) {
            let x = self.decoded(x)?;
            return self.convert(to, &x);
        }
        let range = || E::Msg("integer overflow".into());
        Ok(match (to, x) {
            ("int", V::Int(i)) => V::Int(*i),
            ("int", V::Uint(u)) => V::Int(i64::try_from(*u).map_err(|_| range())?),
            ("int", V::Double(d)) => {
                if !d.is_finite() || *d <= -9.223372036854776e18 || *d >= 9.223372036854776e18 {
                    return Err(range());
                }
                V::Int(d.trunc() as i64)
            }
            ("int", V::Str(s)) => V::Int(
                s.as_str()
                    .parse()
                    .map_err(|_| E::Msg(format!("cannot convert {:?} to int", s.as_str())))?,
            ),
            ("int", V::Ts(t)) => V::Int(t.timestamp()),
            ("int", V::Dur(d)) => V::Int(d.num_nanoseconds().unwrap_or(i64::MAX)),
            ("uint", V::Uint(u)) => V::Uint(*u),
            ("uint", V::Int(i)) => V::Uint(u64::try_from(*i).map_err(|_| range())?),
            ("uint", V::Double(d)) => {
                if !d.is_finite() || *d < 0.0 || *d >= 1.8446744073709552e19 {
                    return Err(range());
                }
                V::Uint(d.trunc() as u64)
            }
            ("uint", V::Str(s)) => V::Uint(
                s.as_str()
                    .parse()
                    .map_err(|_| E::Msg(format!("cannot convert {:?} to uint", s.as_str())))?,
            ),
            ("double", V::Double(d)) => V::Double(*d),
            ("double", V::Int(i)) => V::Double(*i as f64),
            ("double", V::Uint(u)) => V::Double(*u as f64),
            ("double", V::Str(s)) => V::Double(
                s.as_str()
                    .parse()
                    .map_err(|_| E::Msg(format!("cannot convert {:?} to double", s.as_str())))?,
            ),
            ("string", V::Bytes(b)) => {
                V::s(String::from_utf8(b.to_vec()).map_err(|_| E::Msg("invalid UTF-8".into()))?)
            }
            (
                "string",
                V::Str(_) | V::Int(_) | V::Uint(_) | V::Double(_) | V::Bool(_) | V::Dur(_) | V::Ts(_),
            ) => V::s(x.to_display()),
            ("bool", V::Bool(b)) => V::Bool(*b),
            ("bool", V::Str(s)) => V::Bool(match s.as_str() {
                "1" | "t" | "true" | "TRUE" | "True" => true,
                "0" | "f" | "false" | "FALSE" | "False" => false,
                other => {
                    return err(format!(
                        "type conversion error from 'string' to 'bool': {other:?}"
                    ));
                }
            }),
            ("bytes", V::Bytes(b)) => V::Bytes(b.clone()),
            ("bytes", V::Str(s)) => V::Bytes(s.as_str().as_bytes().to_vec().into()),
            ("duration", V::Dur(d)) => V::Dur(*d),
            ("duration", V::Str(s)) => V::Dur(parse_duration(s.as_str()).ok_or_else(|| {
                E::Msg("type conversion error from 'string' to 'google.protobuf.Duration'".to_string())
            })?),
            ("timestamp", V::Ts(t)) => V::Ts(*t),
            ("timestamp", V::Str(s)) => V::Ts(parse_timestamp(s.as_str()).ok_or_else(|| {
                E::Msg("type conversion error from 'string' to 'google.protobuf.Timestamp'".to_string())
            })?),
            ("timestamp", V::Int(i)) => {
                V::Ts(DateTime::from_timestamp(*i, 0).ok_or_else(range)?.fixed_offset())
            }
            _ => return no_overload(),
        })
    }

    fn string_fn(&mut self, name: &str, all: &[V<'a>]) -> R<V<'a>> {
        let s = all[0].as_str()?;
        let args = &all[1..];
        self.charge(traversal(s.len()))?;
        let chars = || s.chars().count();
        let char_to_byte = |ci: usize| s.char_indices().nth(ci).map(|(b, _)| b).unwrap_or(s.len());
        Ok(match (name, args) {
            ("matches", [V::Str(p)]) => {
                self.charge(traversal(s.len()) * 2 + traversal(p.as_str().len()))?;
                V::Bool(regex(p.as_str())?.is_match(s))
            }
            ("find", [V::Str(p)]) => {
                self.charge(traversal(s.len()) * 2 + traversal(p.as_str().len()))?;
                V::s(regex(p.as_str())?.find(s).map(|m| m.as_str()).unwrap_or_default())
            }
            ("findAll", [V::Str(p), rest @ ..]) => {
                self.charge(traversal(s.len()) * 2 + traversal(p.as_str().len()))?;
                let limit = match rest {
                    [] => -1,
                    [V::Int(n)] => *n,
                    _ => return no_overload(),
                };
                let re = regex(p.as_str())?;
                let found: Vec<V<'a>> = re
                    .find_iter(s)
                    .take(if limit < 0 { usize::MAX } else { limit as usize })
                    .map(|m| V::s(m.as_str()))
                    .collect();
                V::List(Rc::new(found))
            }
            ("startsWith", [V::Str(p)]) => V::Bool(s.starts_with(p.as_str())),
            ("endsWith", [V::Str(p)]) => V::Bool(s.ends_with(p.as_str())),
            ("contains", [V::Str(p)]) => V::Bool(s.contains(p.as_str())),
            ("size", []) => V::Int(chars() as i64),
            ("lowerAscii", []) => V::s(s.to_ascii_lowercase()),
            ("upperAscii", []) => V::s(s.to_ascii_uppercase()),
            ("trim", []) => V::s(s.trim()),
            ("reverse", []) => V::s(s.chars().rev().collect::<String>()),
            ("charAt", [V::Int(i)]) => {
                let n = chars();
                if *i < 0 || *i as usize > n {
                    return err(format!("index out of range: {i}"));
                }
                V::s(s.chars().nth(*i as usize).map(String::from).unwrap_or_default())
            }
            ("indexOf" | "lastIndexOf", [V::Str(sub), rest @ ..]) => {
                let sub = sub.as_str();
                let n = chars();
                let offset = match rest {
                    [] => None,
                    [V::Int(o)] => {
                        if *o < 0 || *o as usize > n {
                            return err(format!("index out of range: {o}"));
                        }
                        Some(*o as usize)
                    }
                    _ => return no_overload(),
                };
                let found = if name == "indexOf" {
                    let start = char_to_byte(offset.unwrap_or(0));
                    s[start..].find(sub).map(|b| start + b)
                } else {
                    let end = match offset {
                        Some(o) => char_to_byte(o).saturating_add(sub.len()).min(s.len()),
                        None => s.len(),
                    };
                    s.get(..end).and_then(|h| h.rfind(sub))
                };
                V::Int(found.map(|b| s[..b].chars().count() as i64).unwrap_or(-1))
            }
            ("replace", [V::Str(from), V::Str(to), rest @ ..]) => {
                let n = match rest {
                    [] => -1,
                    [V::Int(n)] => *n,
                    _ => return no_overload(),
                };
                let (from, to) = (from.as_str(), to.as_str());
                let estimated = if from.is_empty() {
                    s.len() + 1
                } else {
                    s.len() / from.len() + 1
                };
                self.charge(traversal(estimated.saturating_mul(to.len())))?;
                V::s(if n < 0 {
                    s.replace(from, to)
                } else {
                    s.replacen(from, to, n as usize)
                })
            }
            ("split", [V::Str(sep), rest @ ..]) => {
                let n = match rest {
                    [] => -1,
                    [V::Int(n)] => *n,
                    _ => return no_overload(),
                };
                let sep = sep.as_str();
                // Charged before the parts are made, so a huge split stops before allocating.
                let count = if sep.is_empty() {
                    s.chars().count()
                } else {
                    s.matches(sep).count() + 1
                };
                let count = if n < 0 { count } else { count.min(n as usize) };
                self.charge(count as u64)?;
                let parts: Vec<V<'a>> = if n == 0 {
                    Vec::new()
                } else if sep.is_empty() {
                    s.chars().map(|c| V::s(c.to_string())).collect()
                } else if n < 0 {
                    s.split(sep).map(V::s).collect()
                } else {
                    s.splitn(n as usize, sep).map(V::s).collect()
                };
                V::List(Rc::new(parts))
            }
            ("substring", [V::Int(start), rest @ ..]) => {
                let n = chars() as i64;
                let end = match rest {
                    [] => n,
                    [V::Int(e)] => *e,
                    _ => return no_overload(),
                };
                if *start < 0 || *start > n || end < *start || end > n {
                    return err(format!(
                        "index out of range: {}",
                        if *start < 0 || *start > n { *start } else { end }
                    ));
                }
                V::s(&s[char_to_byte(*start as usize)..char_to_byte(end as usize)])
            }
            _ => return no_overload(),
        })
    }

    fn list_fn(&mut self, name: &str, all: &[V<'a>]) -> R<V<'a>> {
        let list = &all[0];
        let n = list.list_len().unwrap_or(0);
        self.charge(n as u64)?;
        let items: Vec<V<'a>> = (0..n).filter_map(|i| list.list_get(i)).collect();
        match (name, &all[1..]) {
            ("join", rest) => {
                let sep = match rest {
                    [] => "",
                    [V::Str(s)] => s.as_str(),
                    _ => return no_overload(),
                };
                let mut out = String::new();
                for (i, x) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(sep);
                    }
                    out.push_str(x.as_str()?);
                    self.charge(traversal(x.as_str()?.len() + sep.len()))?;
                }
                Ok(V::s(out))
            }
            ("isSorted", []) => {
                for w in items.windows(2) {
                    if self.compare(&w[0], &w[1])? == std::cmp::Ordering::Greater {
                        return Ok(V::Bool(false));
                    }
                }
                Ok(V::Bool(true))
            }
            ("sum", []) => {
                let mut acc: Option<V<'a>> = None;
                for x in &items {
                    acc = Some(match acc {
                        None => x.clone(),
                        Some(a) => self.arith("_+_", &a, x)?,
                    });
                }
                match acc {
                    Some(a) => Ok(a),
                    // The sum of an empty list is the zero of its element type; untyped here.
                    None => Ok(V::Int(0)),
                }
            }
            ("min" | "max", []) => {
                let want = if name == "min" {
                    std::cmp::Ordering::Less
                } else {
                    std::cmp::Ordering::Greater
                };
                let mut best: Option<V<'a>> = None;
                for x in &items {
                    best = Some(match best {
                        None => x.clone(),
                        Some(b) => {
                            if self.compare(x, &b)? == want {
                                x.clone()
                            } else {
                                b
                            }
                        }
                    });
                }
                best.ok_or(E::Msg(format!("{name} called on empty list")))
            }
            ("indexOf" | "lastIndexOf", [x]) => {
                let order: Box<dyn Iterator<Item = usize>> = if name == "indexOf" {
                    Box::new(0..items.len())
                } else {
                    Box::new((0..items.len()).rev())
                };
                for i in order {
                    if self.equal(&items[i], x)? {
                        return Ok(V::Int(i as i64));
                    }
                }
                Ok(V::Int(-1))
            }
            ("size", []) => Ok(V::Int(n as i64)),
            _ => no_overload(),
        }
    }

    fn ts_fn(&mut self, name: &str, all: &[V<'a>]) -> R<V<'a>> {
        let V::Ts(t) = &all[0] else {
            return no_overload();
        };
        let t = match &all[1..] {
            [] => t.with_timezone(&FixedOffset::east_opt(0).ok_or(E::Msg("bad zone".into()))?),
            [V::Str(z)] => {
                let z = z.as_str();
                let off = if z == "UTC" || z.is_empty() {
                    FixedOffset::east_opt(0)
                } else {
                    let (sign, rest) = match z.as_bytes().first() {
                        Some(b'-') => (-1, &z[1..]),
                        Some(b'+') => (1, &z[1..]),
                        _ => return err(format!("unsupported time zone: {z}")),
                    };
                    let mut parts = rest.split(':');
                    let h: i32 = parts
                        .next()
                        .and_then(|p| p.parse().ok())
                        .ok_or(E::Msg(format!("unsupported time zone: {z}")))?;
                    let m: i32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
                    FixedOffset::east_opt(sign * (h * 3600 + m * 60))
                };
                t.with_timezone(&off.ok_or(E::Msg(format!("unsupported time zone: {z}")))?)
            }
            _ => return no_overload(),
        };
        Ok(V::Int(match name {
            "getFullYear" => t.year() as i64,
            "getMonth" => t.month0() as i64,
            "getDayOfMonth" => t.day0() as i64,
            "getDate" => t.day() as i64,
            "getDayOfWeek" => t.weekday().num_days_from_sunday() as i64,
            "getDayOfYear" => t.ordinal0() as i64,
            "getHours" => t.hour() as i64,
            "getMinutes" => t.minute() as i64,
            "getSeconds" => t.second() as i64,
            "getMilliseconds" => (t.nanosecond() / 1_000_000) as i64,
            _ => return no_overload(),
        }))
    }

    fn dur_fn(&mut self, name: &str, all: &[V<'a>]) -> R<V<'a>> {
        let [V::Dur(d)] = all else {
            return no_overload();
        };
        Ok(V::Int(match name {
            "getHours" => d.num_hours(),
            "getMinutes" => d.num_minutes(),
            "getSeconds" => d.num_seconds(),
            "getMilliseconds" => d.num_milliseconds(),
            _ => return no_overload(),
        }))
    }
}

const NANO: i128 = 1_000_000_000;

/// k8s resource.Quantity parsing: `10`, `1.5`, `100m`, `2Gi`, `1e3`, `5k`.
fn parse_quantity(s: &str) -> Option<Quantity> {
    let s = s.trim();
    if s.is_empty() || s.len() > 64 {
        return None;
    }
    let num_end = s
        .char_indices()
        .find(|(i, c)| !(c.is_ascii_digit() || *c == '.' || ((*c == '+' || *c == '-') && *i == 0)))
        .map(|(i, _)| i)
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(num_end);
    if num.is_empty() || num == "+" || num == "-" || num == "." {
        return None;
    }
    let (neg, digits) = match num.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, num.strip_prefix('+').unwrap_or(num)),
    };
    let (int_part, frac_part) = digits.split_once('.').unwrap_or((digits, ""));
    if frac_part.contains('.') || (int_part.is_empty() && frac_part.is_empty()) {
        return None;
    }
    // Value in nano units: int * 1e9 + frac scaled.
    let mut nanos: i128 = 0;
    for c in int_part.chars() {
        nanos = nanos.checked_mul(10)?.checked_add(c.to_digit(10)? as i128)?;
    }
    nanos = nanos.checked_mul(NANO)?;
    let mut scale = NANO / 10;
    for c in frac_part.chars() {
        let d = c.to_digit(10)? as i128;
        if scale > 0 {
            nanos += d * scale;
            scale /= 10;
        }
    }
    let apply = |n: i128, mul: i128, div: i128| -> Option<i128> { n.checked_mul(mul).map(|x| x / div) };
    let nanos = match suffix {
        "" => nanos,
        "n" => apply(nanos, 1, NANO)?,
        "u" => apply(nanos, 1, 1_000_000)?,
        "m" => apply(nanos, 1, 1000)?,
        "k" => apply(nanos, 1000, 1)?,
        "M" => apply(nanos, 1_000_000, 1)?,
        "G" => apply(nanos, 1_000_000_000, 1)?,
        "T" => apply(nanos, 1_000_000_000_000, 1)?,
        "P" => apply(nanos, 1_000_000_000_000_000, 1)?,
        "E" => apply(nanos, 1_000_000_000_000_000_000, 1)?,
        "Ki" => apply(nanos, 1 << 10, 1)?,
        "Mi" => apply(nanos, 1 << 20, 1)?,
        "Gi" => apply(nanos, 1 << 30, 1)?,
        "Ti" => apply(nanos, 1 << 40, 1)?,
        "Pi" => apply(nanos, 1 << 50, 1)?,
        "Ei" => apply(nanos, 1 << 60, 1)?,
        e if e.starts_with(['e', 'E']) => {
            let exp: i32 = e[1..].parse().ok()?;
            if !(-9..=18).contains(&exp) {
                return None;
            }
            if exp >= 0 {
                apply(nanos, 10i128.pow(exp as u32), 1)?
            } else {
                apply(nanos, 1, 10i128.pow((-exp) as u32))?
            }
        }
        _ => return None,
    };
    Some(Quantity(if neg { -nanos } else { nanos }))
}

fn quantity_fn<'a>(name: &str, all: &[V<'a>]) -> R<V<'a>> {
    let V::Quantity(q) = &all[0] else {
        return no_overload();
    };
    let other = |v: &V| -> R<Quantity> {
        match v {
            V::Quantity(o) => Ok(*o),
            V::Int(i) => Ok(Quantity((*i as i128) * NANO)),
            _ => no_overload(),
        }
    };
    Ok(match (name, &all[1..]) {
        ("isGreaterThan", [o]) => V::Bool(q.0 > other(o)?.0),
        ("isLessThan", [o]) => V::Bool(q.0 < other(o)?.0),
        ("compareTo", [o]) => V::Int(match q.0.cmp(&other(o)?.0) {
            std::cmp::Ordering::Less => -1,
            std::cmp::Ordering::Equal => 0,
            std::cmp::Ordering::Greater => 1,
        }),
        ("add", [o]) => V::Quantity(Quantity(
            q.0.checked_add(other(o)?.0)
                .ok_or(E::Msg("integer overflow".into()))?,
        )),
        ("sub", [o]) => V::Quantity(Quantity(
            q.0.checked_sub(other(o)?.0)
                .ok_or(E::Msg("integer overflow".into()))?,
        )),
        ("sign", []) => V::Int(q.0.signum() as i64),
        ("isInteger", []) => V::Bool(q.0 % NANO == 0),
        ("asInteger", []) => {
            if q.0 % NANO != 0 {
                return err("cannot convert value to integer");
            }
            V::Int(i64::try_from(q.0 / NANO).map_err(|_| E::Msg("cannot convert value to integer".into()))?)
        }
        ("asApproximateFloat", []) => V::Double(q.0 as f64 / NANO as f64),
        _ => return no_overload(),
    })
}

/// Go's url.ParseRequestURI, for the forms rules use: `scheme://host[:port]/path?query` or `/path`.
fn parse_url(s: &str) -> Option<UrlParts> {
    if s.is_empty() || s.contains([' ', '\n']) {
        return None;
    }
    let (before_query, query) = s.split_once('?').unwrap_or((s, ""));
    let before_query = before_query.split('#').next().unwrap_or(before_query);
    if before_query.starts_with('/') {
        return Some(UrlParts {
            scheme: String::new(),
            host: String::new(),
            path: before_query.to_string(),
            query: query.to_string(),
        });
    }
    let (scheme, rest) = before_query.split_once("://")?;
    if scheme.is_empty()
        || !scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    {
        return None;
    }
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    Some(UrlParts {
        scheme: scheme.to_string(),
        host: host.to_string(),
        path: path.to_string(),
        query: query.to_string(),
    })
}

fn url_fn<'a>(name: &str, all: &[V<'a>]) -> R<V<'a>> {
    let [V::Url(u)] = all else {
        return no_overload();
    };
    let host = u.host.rsplit_once('@').map(|(_, h)| h).unwrap_or(&u.host);
    let (hostname, port) = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((h, p)) => (h, p.strip_prefix(':').unwrap_or("")),
            None => (rest, ""),
        }
    } else {
        match host.rsplit_once(':') {
            Some((h, p)) => (h, p),
            None => (host, ""),
        }
    };
    Ok(match name {
        "getScheme" => V::s(u.scheme.as_str()),
        "getHost" => V::s(host),
        "getHostname" => V::s(hostname),
        "getPort" => V::s(port),
        "getEscapedPath" => V::s(u.path.as_str()),
        "getQuery" => {
            let mut out: Vec<(V<'a>, V<'a>)> = Vec::new();
            for (k, v) in form_urlencoded::parse(u.query.as_bytes()) {
                let key = V::s(k.as_ref());
                match out.iter_mut().find(|(x, _)| key_eq(x, &key)) {
                    Some((_, V::List(l))) => Rc::make_mut(l).push(V::s(v.as_ref())),
                    _ => out.push((key, V::List(Rc::new(vec![V::s(v.as_ref())])))),
                }
            }
            V::Map(Rc::new(out))
        }
        _ => return no_overload(),
    })
}

// ---------------------------------------------------------------------------------------------------
// Validating custom resources
// ---------------------------------------------------------------------------------------------------

/// What one validation run produced.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Field errors (the write is refused when there are any).
    pub errors: Vec<FieldError>,
    /// Warnings: rule failures on values an update left unchanged (ratcheted, as the real server's
    /// CRDValidationRatcheting does).
    pub warnings: Vec<String>,
}

struct Walk<'c> {
    budget: i64,
    out: &'c mut Outcome,
    /// Deep-equality results of (new, old) value pairs by address, so that many failures under one
    /// unchanged ancestor compare it once.
    equal: HashMap<(usize, usize), bool>,
}

/// The correlation of a node with its old value, for ratcheting: the node's own old value when it
/// has one, else the nearest ancestor that had one.
#[derive(Clone, Copy, Default)]
struct Ratchet<'a> {
    current: Option<(&'a Value, &'a Value)>,
    parent: Option<(&'a Value, &'a Value)>,
}

impl<'a> Ratchet<'a> {
    fn should_ratchet(&self, memo: &mut HashMap<(usize, usize), bool>) -> bool {
        let Some((n, o)) = self.current.or(self.parent) else {
            return false;
        };
        let key = (n as *const Value as usize, o as *const Value as usize);
        *memo.entry(key).or_insert_with(|| n == o)
    }

    fn key(&self, new_child: &'a Value, field: &str) -> Ratchet<'a> {
        let Some((_, old)) = self.current else {
            return *self;
        };
        if self.parent.is_none() && (field == "apiVersion" || field == "kind") {
            return Ratchet::default();
        }
        Ratchet {
            current: old.get(field).map(|o| (new_child, o)),
            parent: self.current,
        }
    }

    fn index(&self, new_child: &'a Value, old_child: Option<&'a Value>) -> Ratchet<'a> {
        if self.current.is_none() {
            return *self;
        }
        Ratchet {
            current: old_child.map(|o| (new_child, o)),
            parent: self.current,
        }
    }
}

fn child_path(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

/// The CEL rule causes of a custom resource write, for the API layer: nothing for a resource without
/// rules; the real strategy's single "not checked" cause when `prior` (the schema validation's causes)
/// has a type, required, enum or size violation; else the rules' errors. Ratcheted failures (rules
/// broken by values an update left unchanged) go to `warnings`.
pub fn rule_causes(
    def: &crate::registry::ResourceDef,
    obj: &Value,
    old: Option<&Value>,
    prior: &[crate::status::Cause],
    warnings: &mut Vec<String>,
) -> Vec<crate::status::Cause> {
    let (Some(crd), Some(schema)) = (&def.crd, &def.schema) else {
        return Vec::new();
    };
    let compiled = compiled_for(crd, &def.version, schema);
    if compiled.root.is_none() {
        return Vec::new();
    }
    if has_blocking_reason(prior.iter().map(|c| c.reason.as_str())) {
        let e = FieldError::invalid("<nil>", Value::Null, NOT_CHECKED_MESSAGE);
        return vec![crate::status::Cause::new(
            e.reason(),
            e.field.clone(),
            e.message(),
        )];
    }
    let out = validate(&compiled, obj, old);
    warnings.extend(out.warnings);
    out.errors
        .into_iter()
        .map(|e| crate::status::Cause::new(e.reason(), e.field.clone(), e.message()))
        .collect()
}

/// Runs the CEL rules of `compiled` on a custom resource (and its old version on update).
pub fn validate(compiled: &Compiled, obj: &Value, old: Option<&Value>) -> Outcome {
    let mut out = Outcome::default();
    let Some(root) = &compiled.root else {
        return out;
    };
    let mut w = Walk {
        budget: RUNTIME_COST_BUDGET,
        out: &mut out,
        equal: HashMap::new(),
    };
    let ratchet = Ratchet {
        current: old.map(|o| (obj, o)),
        parent: None,
    };
    crate::schema::deep_stack(|| validate_node(root, "", obj, old, ratchet, &mut w));
    out
}

fn validate_node<'a>(
    node: &'a Node,
    path: &str,
    obj: &'a Value,
    old: Option<&'a Value>,
    ratchet: Ratchet<'a>,
    w: &mut Walk<'_>,
) {
    if obj.is_null() {
        return;
    }
    stacker::maybe_grow(64 * 1024, 1024 * 1024, || {
        validate_expressions(node, path, obj, old.filter(|o| !o.is_null()), ratchet, w);
        if w.budget < 0 {
            return;
        }
        for a in &node.all_of {
            let r = Ratchet {
                current: None,
                parent: ratchet.parent,
            };
            validate_node(a, path, obj, old, r, w);
            if w.budget < 0 {
                return;
            }
        }
        match obj {
            Value::Array(items) => {
                let Some(item_node) = &node.items else {
                    return;
                };
                let keys: Vec<&str> = node
                    .schema
                    .get("x-kubernetes-list-map-keys")
                    .and_then(Value::as_array)
                    .map(|k| k.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                let is_map_list = node.schema.get("x-kubernetes-list-type").and_then(Value::as_str)
                    == Some("map")
                    && !keys.is_empty();
                // Old items by their map keys (a lookup per item, not a scan: lists may be long).
                let key_of = |x: &Value| -> String {
                    keys.iter()
                        .map(|k| x.get(k).map(Value::to_string).unwrap_or_default())
                        .collect::<Vec<_>>()
                        .join("\u{0}")
                };
                let old_by_key: HashMap<String, &Value> = match old.and_then(Value::as_array) {
                    Some(o) if is_map_list => o.iter().map(|x| (key_of(x), x)).rev().collect(),
                    _ => HashMap::new(),
                };
                for (i, item) in items.iter().enumerate() {
                    let old_item = if is_map_list {
                        old_by_key.get(&key_of(item)).copied()
                    } else {
                        None
                    };
                    let p = format!("{path}[{i}]");
                    validate_node(item_node, &p, item, old_item, ratchet.index(item, old_item), w);
                    if w.budget < 0 {
                        return;
                    }
                }
            }
            Value::Object(map) => {
                let old_map = old.and_then(Value::as_object);
                if let Some(add) = &node.additional {
                    for (k, v) in map {
                        let p = format!("{path}[{k}]");
                        let ov = old_map.and_then(|m| m.get(k));
                        validate_node(add, &p, v, ov, ratchet.key(v, k), w);
                        if w.budget < 0 {
                            return;
                        }
                    }
                }
                for (k, v) in map {
                    if let Some(sub) = node.properties.get(k) {
                        let p = child_path(path, k);
                        let ov = old_map.and_then(|m| m.get(k));
                        validate_node(sub, &p, v, ov, ratchet.key(v, k), w);
                        if w.budget < 0 {
                            return;
                        }
                    }
                }
            }
            _ => {}
        }
    });
}

fn field_or_nil(path: &str) -> String {
    if path.is_empty() {
        "<nil>".to_string()
    } else {
        path.to_string()
    }
}

fn rule_error_string(rule: &Rule) -> String {
    if !rule.message.is_empty() {
        rule.message.trim().to_string()
    } else {
        rule.rule.trim().to_string()
    }
}

fn rule_message_or_default(rule: &Rule) -> String {
    if rule.message.is_empty() {
        format!("failed rule: {}", rule_error_string(rule))
    } else {
        rule.message.trim().to_string()
    }
}

fn schema_type(s: &Value) -> String {
    s.get("type")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn validate_expressions<'a>(
    node: &'a Node,
    path: &str,
    obj: &'a Value,
    old: Option<&'a Value>,
    ratchet: Ratchet<'a>,
    w: &mut Walk<'_>,
) {
    if node.rules.is_empty() {
        return;
    }
    let here = field_or_nil(path);
    let ty = Value::String(schema_type(&node.schema));
    if w.budget <= 0 {
        w.out.errors.push(FieldError::invalid(
            here,
            ty,
            "validation failed due to running out of cost budget, no further validation rules will be run",
        ));
        w.budget = -1;
        return;
    }
    let kind = if node.resource_root {
        SchKind::Root
    } else {
        SchKind::Normal
    };
    let sch = Sch {
        s: Some(&node.schema),
        kind,
    };
    let self_v = V::from_json(obj, sch);
    let old_v = old.map(|o| V::from_json(o, sch));
    for rule in &node.rules {
        if let Some(e) = &rule.compile_error {
            w.out.errors.push(FieldError::invalid(
                here.clone(),
                ty.clone(),
                format!("rule compile error: {e}"),
            ));
            continue;
        }
        let Some(program) = &rule.program else {
            continue;
        };
        if rule.uses_old_self && old.is_none() && !rule.optional_old_self {
            continue;
        }
        let mut ev = Ev {
            cost: 0,
            limit: PER_CALL_LIMIT,
            vars: vec![("self", self_v.clone())],
        };
        if rule.uses_old_self {
            let o = if rule.optional_old_self {
                Some(V::Opt(old_v.clone().map(Rc::new)))
            } else {
                old_v.clone()
            };
            if let Some(o) = o {
                ev.vars.push(("oldSelf", o));
            }
        }
        let result = ev.eval(program);
        if ev.cost as i64 > w.budget || ev.cost > i64::MAX as u64 {
            w.out.errors.push(FieldError::invalid(
                here,
                ty,
                "validation failed due to running out of cost budget, no further validation rules will be run",
            ));
            w.budget = -1;
            return;
        }
        w.budget -= ev.cost as i64;
        let passed = match result {
            Ok(V::Bool(true)) => true,
            Ok(V::Bool(false)) => false,
            Ok(_) => {
                w.out.errors.push(FieldError::invalid(
                    here.clone(),
                    ty.clone(),
                    format!("'no such overload': call arguments did not match a supported operator, function or macro signature for rule: {}", rule_error_string(rule)),
                ));
                continue;
            }
            Err(E::Cost) => {
                w.out.errors.push(FieldError::invalid(
                    here,
                    ty,
                    format!("'operation cancelled: actual cost limit exceeded': no further validation rules will be run due to call cost exceeds limit for rule: {}", rule_error_string(rule)),
                ));
                w.budget = -1;
                return;
            }
            Err(E::Msg(m)) if m.starts_with("no such overload") => {
                w.out.errors.push(FieldError::invalid(
                    here.clone(),
                    ty.clone(),
                    format!("'{m}': call arguments did not match a supported operator, function or macro signature for rule: {}", rule_error_string(rule)),
                ));
                continue;
            }
            Err(E::Msg(m)) => {
                w.out.errors.push(FieldError::invalid(
                    here.clone(),
                    ty.clone(),
                    format!("{m} evaluating rule: {}", rule_error_string(rule)),
                ));
                continue;
            }
        };
        if passed {
            continue;
        }
        let err_path = if rule.field_path.is_empty() {
            here.clone()
        } else {
            child_path(path, &rule.field_path)
        };
        let mut detail = None;
        if let Some((src, expr)) = &rule.message_expression {
            // The message expression sees the activation without the optional oldSelf, as the real
            // validator passes it.
            let mut mev = Ev {
                cost: 0,
                limit: PER_CALL_LIMIT,
                vars: vec![("self", self_v.clone())],
            };
            if let Some(o) = &old_v {
                mev.vars.push(("oldSelf", o.clone()));
            }
            let r = mev.eval(expr);
            if mev.cost as i64 > w.budget {
                push_rule_error(
                    w,
                    rule,
                    ratchet,
                    FieldError::invalid(
                        err_path,
                        ty,
                        "messageExpression evaluation failed due to running out of cost budget, no further validation rules will be run",
                    ),
                );
                w.budget = -1;
                return;
            }
            match r {
                Err(E::Cost) => {
                    push_rule_error(
                        w,
                        rule,
                        ratchet,
                        FieldError::invalid(
                            err_path,
                            ty,
                            format!(
                                "no further validation rules will be run due to call cost exceeds limit for messageExpression: {}",
                                crate::schema::go_quote_str(src)
                            ),
                        ),
                    );
                    w.budget = -1;
                    return;
                }
                Ok(V::Str(s)) => {
                    let t = s.as_str().trim();
                    if !t.is_empty() && t.len() <= MAX_MESSAGE_EXPRESSION_BYTES && !t.contains('\n') {
                        detail = Some(t.to_string());
                    }
                }
                _ => {}
            }
            w.budget -= mev.cost as i64;
        }
        let detail = detail.unwrap_or_else(|| rule_message_or_default(rule));
        let e = match rule.reason.as_deref() {
            Some("FieldValueForbidden") => FieldError::forbidden(err_path, detail),
            Some("FieldValueRequired") => FieldError::required(err_path, detail),
            Some("FieldValueDuplicate") => FieldError::duplicate(err_path, ty.clone()),
            _ => FieldError::invalid(err_path, ty.clone(), detail),
        };
        push_rule_error(w, rule, ratchet, e);
    }
}

fn push_rule_error(w: &mut Walk<'_>, rule: &Rule, ratchet: Ratchet<'_>, e: FieldError) {
    if !rule.uses_old_self && ratchet.should_ratchet(&mut w.equal) {
        w.out.warnings.push(e.to_string());
    } else {
        w.out.errors.push(e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(schema: Value, obj: Value, old: Option<Value>) -> Outcome {
        let c = Compiled {
            root: build_node(&schema, true),
        };
        validate(&c, &obj, old.as_ref())
    }

    fn eval_self(rule: &str, schema: Value, obj: Value) -> Result<bool, String> {
        let s = json!({"type": "object", "properties": {"x": schema}});
        let (expr, _) = compile_expr(rule, &s, false, false)?;
        let mut ev = Ev {
            cost: 0,
            limit: PER_CALL_LIMIT,
            vars: vec![("self", V::from_json(&obj, Sch::of(Some(&s))))],
        };
        match ev.eval(&expr) {
            Ok(V::Bool(b)) => Ok(b),
            Ok(other) => Err(format!("not a bool: {}", other.type_name())),
            Err(E::Cost) => Err("cost".into()),
            Err(E::Msg(m)) => Err(m),
        }
    }

    #[test]
    fn library_functions_evaluate() {
        let str_s = json!({"type": "string"});
        let cases: &[(&str, Value)] = &[
            (
                "self.x.startsWith('ab') && self.x.endsWith('yz') && self.x.contains('c')",
                json!({"x": "abcxyz"}),
            ),
            ("self.x.matches('^[a-z]+$')", json!({"x": "abc"})),
            (
                "self.x.lowerAscii() == 'abc' && self.x.upperAscii() == 'ABC'",
                json!({"x": "aBc"}),
            ),
            (
                "self.x.split(',') == ['a', 'b'] && ['a', 'b'].join('-') == 'a-b'",
                json!({"x": "a,b"}),
            ),
            (
                "self.x.trim() == 'a' && 'aXa'.replace('X', 'Y') == 'aYa'",
                json!({"x": "  a "}),
            ),
            (
                "self.x.indexOf('c') == 2 && self.x.size() == 3 && size(self.x) == 3",
                json!({"x": "abc"}),
            ),
            (
                "[1, 2, 3].isSorted() && [1, 2, 3].sum() == 6 && [3, 1].min() == 1 && [3, 1].max() == 3",
                json!({"x": "a"}),
            ),
            (
                "[1, 2, 3].all(x, x > 0) && [1, 2].exists(x, x == 2) && [1, 2].exists_one(x, x == 1)",
                json!({"x": "a"}),
            ),
            (
                "[1, 2, 3].map(x, x * 2) == [2, 4, 6] && [1, 2, 3].filter(x, x > 1) == [2, 3]",
                json!({"x": "a"}),
            ),
            ("[1, 2, 3].indexOf(2) == 1 && 2 in [1, 2]", json!({"x": "a"})),
            (
                "duration('1h30m') > duration('90s') && timestamp('2024-01-01T00:00:00Z').getFullYear() == 2024",
                json!({"x": "a"}),
            ),
            (
                "quantity('1Gi').isGreaterThan(quantity('1000M')) && quantity('500m').asApproximateFloat() == 0.5",
                json!({"x": "a"}),
            ),
            (
                "url('https://example.com:8080/p?a=1').getHostname() == 'example.com' && url('https://e.com:8080').getPort() == '8080'",
                json!({"x": "a"}),
            ),
            ("isURL('https://x.y') && !isURL('not a url')", json!({"x": "a"})),
            (
                "'abc'.substring(1) == 'bc' && 'abc'.charAt(1) == 'b' && 'a.b.c'.lastIndexOf('.') == 3",
                json!({"x": "a"}),
            ),
            (
                "type(self.x) == string && int('5') == 5 && string(5) == '5' && double(1) == 1.0",
                json!({"x": "a"}),
            ),
            (
                "{'a': 1}.a == 1 && 'a' in {'a': 1} && {'a': 1}.all(k, k == 'a')",
                json!({"x": "a"}),
            ),
            (
                "optional.of(1).hasValue() && optional.none().orValue(2) == 2 && self.?y.orValue('d') == 'd'",
                json!({"x": "a"}),
            ),
        ];
        for (rule, obj) in cases {
            assert_eq!(eval_self(rule, str_s.clone(), obj.clone()), Ok(true), "{rule}");
        }
    }

    /// The examples of the Kubernetes documentation's "Validation rules" table, each with an object
    /// that passes and one that fails.
    #[test]
    fn documented_examples() {
        let int = json!({"type": "integer"});
        let string = json!({"type": "string"});
        let strings = json!({"type": "array", "items": {"type": "string"}});
        let smap = json!({"type": "object", "additionalProperties": {"type": "string"}});
        let imap = json!({"type": "object", "additionalProperties": {"type": "integer"}});
        let envars = json!({"type": "array", "items": {"type": "object", "properties": {
            "name": {"type": "string"}, "value": {"type": "string"}}}});
        let cases: Vec<(&str, Value, Value, Value)> = vec![
            (
                "self.minReplicas <= self.replicas && self.replicas <= self.maxReplicas",
                json!({"minReplicas": int, "replicas": int, "maxReplicas": int}),
                json!({"minReplicas": 1, "replicas": 2, "maxReplicas": 3}),
                json!({"minReplicas": 3, "replicas": 2, "maxReplicas": 3}),
            ),
            (
                "'Available' in self.stateCounts",
                json!({"stateCounts": imap}),
                json!({"stateCounts": {"Available": 1}}),
                json!({"stateCounts": {"Other": 1}}),
            ),
            (
                "(size(self.list1) == 0) != (size(self.list2) == 0)",
                json!({"list1": strings, "list2": strings}),
                json!({"list1": ["a"], "list2": []}),
                json!({"list1": [], "list2": []}),
            ),
            (
                "!('MY_FIELD' in self.map1) || self.map1['MY_FIELD'].matches('^[a-zA-Z]*$')",
                json!({"map1": smap}),
                json!({"map1": {"MY_FIELD": "abc"}}),
                json!({"map1": {"MY_FIELD": "a1"}}),
            ),
            (
                "self.envars.filter(e, e.name == 'MY_ENV').all(e, e.value.matches('^[a-zA-Z]*$'))",
                json!({"envars": envars}),
                json!({"envars": [{"name": "MY_ENV", "value": "abc"}, {"name": "X", "value": "1"}]}),
                json!({"envars": [{"name": "MY_ENV", "value": "a1"}]}),
            ),
            (
                "has(self.expired) && self.created + self.ttl < self.expired",
                json!({"created": {"type": "string", "format": "date-time"}, "ttl": {"type": "string", "format": "duration"},
                    "expired": {"type": "string", "format": "date-time"}}),
                json!({"created": "2024-01-01T00:00:00Z", "ttl": "1h", "expired": "2024-01-01T02:00:00Z"}),
                json!({"created": "2024-01-01T00:00:00Z", "ttl": "3h", "expired": "2024-01-01T02:00:00Z"}),
            ),
            (
                "self.health.startsWith('ok')",
                json!({"health": string}),
                json!({"health": "okay"}),
                json!({"health": "bad"}),
            ),
            (
                "self.widgets.exists(w, w.key == 'x' && w.foo < 10)",
                json!({"widgets": {"type": "array", "items": {"type": "object", "properties": {"key": string, "foo": int}}}}),
                json!({"widgets": [{"key": "x", "foo": 5}]}),
                json!({"widgets": [{"key": "x", "foo": 50}]}),
            ),
            (
                "type(self.v) == string ? self.v == '100%' : self.v == 1000",
                json!({"v": {"x-kubernetes-int-or-string": true}}),
                json!({"v": 1000}),
                json!({"v": "50%"}),
            ),
            (
                "self.set1.all(e, !(e in self.set2))",
                json!({"set1": strings, "set2": strings}),
                json!({"set1": ["a"], "set2": ["b"]}),
                json!({"set1": ["a"], "set2": ["a"]}),
            ),
            (
                "size(self.names) == size(self.details) && self.names.all(n, n in self.details)",
                json!({"names": strings, "details": smap}),
                json!({"names": ["a"], "details": {"a": "x"}}),
                json!({"names": ["b"], "details": {"a": "x"}}),
            ),
            (
                "size(self.clusters.filter(c, c.name == self.primary)) == 1",
                json!({"primary": string, "clusters": {"type": "array", "items": {"type": "object", "properties": {"name": string}}}}),
                json!({"primary": "a", "clusters": [{"name": "a"}, {"name": "b"}]}),
                json!({"primary": "c", "clusters": [{"name": "a"}]}),
            ),
            (
                "self.foo__dash__bar == 'x' && self.__namespace__ > 0",
                json!({"foo-bar": string, "namespace": int}),
                json!({"foo-bar": "x", "namespace": 1}),
                json!({"foo-bar": "y", "namespace": 1}),
            ),
        ];
        for (rule, props, good, bad) in cases {
            let schema = json!({"type": "object", "properties": props});
            let (expr, ty) =
                compile_expr(rule, &schema, false, false).unwrap_or_else(|e| panic!("{rule}: {e}"));
            assert!(ty.is_none() || ty == Some("bool"), "{rule}: {ty:?}");
            for (obj, want) in [(good, true), (bad, false)] {
                let mut ev = Ev {
                    cost: 0,
                    limit: PER_CALL_LIMIT,
                    vars: vec![("self", V::from_json(&obj, Sch::of(Some(&schema))))],
                };
                match ev.eval(&expr) {
                    Ok(V::Bool(b)) => assert_eq!(b, want, "{rule} on {obj}"),
                    Ok(v) => panic!("{rule}: {}", v.type_name()),
                    Err(E::Cost) => panic!("{rule}: cost"),
                    Err(E::Msg(m)) => panic!("{rule} on {obj}: {m}"),
                }
            }
        }
    }

    #[test]
    fn runtime_errors_are_messages() {
        let s = json!({"type": "object", "properties": {"x": {"type": "integer"}}});
        assert_eq!(
            eval_self("self.x == 1", s["properties"]["x"].clone(), json!({})),
            Err("no such key: x".into())
        );
        assert_eq!(
            eval_self("1 / 0 == 1", json!({"type": "string"}), json!({})),
            Err("division by zero".into())
        );
        assert_eq!(
            eval_self("[1][3] == 1", json!({"type": "string"}), json!({})),
            Err("index out of bounds: 3".into())
        );
    }

    #[test]
    fn compile_errors_are_worded_like_cel_go() {
        let s = json!({"type": "object", "properties": {"replicas": {"type": "integer"}}});
        let e = compile_expr("self.replicas2 > 0", &s, false, false)
            .err()
            .unwrap_or_default();
        assert_eq!(
            e,
            "ERROR: <input>:1:5: undefined field 'replicas2'\n | self.replicas2 > 0\n | ....^"
        );
        let e = compile_expr("foo(self) > 0", &s, false, false)
            .err()
            .unwrap_or_default();
        assert!(
            e.starts_with("ERROR: <input>:1:4: undeclared reference to 'foo' (in container '')"),
            "{e}"
        );
        let e = compile_expr("self.replicas >", &s, false, false)
            .err()
            .unwrap_or_default();
        assert!(e.starts_with("ERROR: <input>:1:"), "{e}");
        let (_, ty) = compile_expr("self.replicas + 1", &s, false, false).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ty, Some("int"));
        let e = compile_expr("self.replicas == 'a'", &s, false, false)
            .err()
            .unwrap_or_default();
        assert_eq!(
            e,
            "ERROR: <input>:1:15: found no matching overload for '_==_' applied to '(int, string)'\n | self.replicas == 'a'\n | ..............^"
        );
        assert!(compile_expr("self.replicas + 1.5 > 0.0", &s, false, false).is_err());
        assert!(compile_expr("self.replicas < 1.5", &s, false, false).is_ok());
        let t = json!({"type": "object", "properties": {"a": {"type": "string", "format": "date-time"},
            "b": {"type": "string", "format": "date-time"}}});
        assert!(compile_expr("self.b - self.a > duration('1h')", &t, false, false).is_ok());
    }

    #[test]
    fn sets_compare_without_order() {
        let schema = json!({"type": "object", "properties": {"s": {"type": "array",
            "x-kubernetes-list-type": "set", "items": {"type": "string"},
            "x-kubernetes-validations": [{"rule": "self == oldSelf", "message": "immutable"}]}}});
        let out = run(
            schema.clone(),
            json!({"s": ["b", "a"]}),
            Some(json!({"s": ["a", "b"]})),
        );
        assert!(out.errors.is_empty());
        let out = run(schema, json!({"s": ["c", "a"]}), Some(json!({"s": ["a", "b"]})));
        assert_eq!(out.errors.len(), 1);
    }

    #[test]
    fn exponential_rules_hit_the_cost_limit() {
        let schema = json!({"type": "object", "properties": {"l": {"type": "array", "items": {"type": "integer"}}},
            "x-kubernetes-validations": [{"rule": "self.l.all(a, self.l.all(b, self.l.all(c, a + b + c >= 0)))"}]});
        let list: Vec<i64> = (0..1000).collect();
        let out = run(schema, json!({"l": list}), None);
        assert_eq!(out.errors.len(), 1);
        assert_eq!(
            out.errors[0].to_string(),
            "<nil>: Invalid value: \"object\": 'operation cancelled: actual cost limit exceeded': no further validation rules will be run due to call cost exceeds limit for rule: self.l.all(a, self.l.all(b, self.l.all(c, a + b + c >= 0)))"
        );
    }

    #[test]
    fn budget_runs_out_across_rules() {
        // 30 map entries, each running a rule that costs about 500k: the 10M budget runs out.
        let schema = json!({"type": "object", "properties": {"m": {"type": "object", "additionalProperties": {
            "type": "array", "items": {"type": "integer"},
            "x-kubernetes-validations": [{"rule": "self.all(a, self.all(b, a + b >= 0))"}]}}}});
        let list: Vec<i64> = (0..300).collect();
        let mut m = Map::new();
        for i in 0..60 {
            m.insert(format!("k{i}"), json!(list));
        }
        let out = run(schema, json!({"m": m}), None);
        let last = out.errors.last().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            last.ends_with("Invalid value: \"array\": validation failed due to running out of cost budget, no further validation rules will be run"),
            "{last}"
        );
    }

    #[test]
    fn transition_rules_and_ratcheting() {
        let schema = json!({"type": "object", "properties": {"spec": {"type": "object",
            "properties": {"name": {"type": "string", "x-kubernetes-validations": [
                {"rule": "self == oldSelf", "message": "name is immutable"},
                {"rule": "self.size() < 5"}]}}}}});
        let out = run(schema.clone(), json!({"spec": {"name": "abc"}}), None);
        assert!(out.errors.is_empty());
        let out = run(
            schema.clone(),
            json!({"spec": {"name": "abd"}}),
            Some(json!({"spec": {"name": "abc"}})),
        );
        assert_eq!(out.errors.len(), 1);
        assert_eq!(
            out.errors[0].to_string(),
            "spec.name: Invalid value: \"string\": name is immutable"
        );
        // An unchanged value that breaks a (newer) rule is ratcheted to a warning.
        let out = run(
            schema,
            json!({"spec": {"name": "abcdef"}}),
            Some(json!({"spec": {"name": "abcdef"}})),
        );
        assert!(out.errors.is_empty());
        assert_eq!(
            out.warnings,
            vec!["spec.name: Invalid value: \"string\": failed rule: self.size() < 5".to_string()]
        );
    }

    #[test]
    fn unescaping_and_field_paths() {
        assert_eq!(unescape("foo__dash__bar"), Some("foo-bar".into()));
        assert_eq!(unescape("__namespace__"), Some("namespace".into()));
        assert_eq!(unescape("a__dot__b__underscores__c"), Some("a.b__c".into()));
        let s = json!({"type": "object", "properties": {"a": {"type": "object", "additionalProperties": {"type": "string"}}}});
        assert_eq!(valid_field_path(".a['x.y']", &s), Ok("a[x.y]".into()));
        assert!(valid_field_path(".b", &s).is_err());
    }

    #[test]
    fn non_ascii_sources_render_issues_without_panicking() {
        let s = json!({"type": "object", "properties": {"x": {"type": "string"}}});
        for rule in [
            "'été' + self.nope == 'x'",
            "'日本' == self.x &&",
            "self.x == 'é' && self.é",
        ] {
            let e = compile_expr(rule, &s, false, false).err().unwrap_or_default();
            assert!(e.starts_with("ERROR: <input>:1:"), "{rule}: {e}");
        }
    }

    #[test]
    fn map_lists_correlate_by_key() {
        let schema = json!({"type": "object", "properties": {"l": {"type": "array",
            "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["k"],
            "items": {"type": "object", "properties": {"k": {"type": "integer"}, "v": {"type": "integer",
                "x-kubernetes-validations": [{"rule": "self >= oldSelf"}]}}}}}});
        let old: Vec<Value> = (0..5000).map(|i| json!({"k": i, "v": i})).collect();
        let mut new: Vec<Value> = old.iter().rev().cloned().collect();
        new[10] = json!({"k": 4989, "v": 0});
        let out = run(schema, json!({"l": new}), Some(json!({"l": old})));
        assert_eq!(out.errors.len(), 1);
        assert_eq!(
            out.errors[0].to_string(),
            "l[10].v: Invalid value: \"integer\": failed rule: self >= oldSelf"
        );
    }

    #[test]
    fn long_operator_chains_are_refused_not_overflowing() {
        let s = json!({"type": "object", "properties": {"x": {"type": "integer"}}});
        let ok = format!("self.x{} > 0", " + 1".repeat(200));
        assert!(compile_expr(&ok, &s, false, false).is_ok());
        let rule = format!("self.x{} > 0", " + 1".repeat(16000));
        // On a 2 MiB thread, like a tokio worker's.
        let r = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || {
                let s = json!({"type": "object", "properties": {"x": {"type": "integer"}}});
                compile_expr(&rule, &s, false, false).err().unwrap_or_default()
            })
            .map(|h| h.join());
        let Ok(Ok(e)) = r else {
            panic!("thread failed");
        };
        assert!(
            e.starts_with("ERROR: <input>:1:1: max recursion depth exceeded"),
            "{e}"
        );
    }

    #[test]
    fn big_values_in_loops_are_charged_by_size() {
        use base64::Engine;
        let blob = base64::engine::general_purpose::STANDARD.encode(vec![7u8; 1 << 20]);
        let schema = json!({"type": "object", "properties": {
            "l": {"type": "array", "items": {"type": "integer"}},
            "b": {"type": "string", "format": "byte"},
            "s": {"type": "string"}}, "x-kubernetes-validations": [
                {"rule": "size(self.b) == 1048576 && self.b == self.b"},
                {"rule": "self.l.all(x, self.l.all(y, size(self.b) > 0))"},
                {"rule": "self.l.all(x, self.l.all(y, size(self.s) > 0))"},
                {"rule": "size(self.s.split('')) > 0"}]});
        let obj = json!({"l": (0..400).collect::<Vec<i64>>(), "b": blob, "s": "x".repeat(1 << 20)});
        let out = run(schema, obj, None);
        let msgs: Vec<String> = out.errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(msgs.len(), 1, "{msgs:?}");
        assert!(
            msgs[0].contains("'operation cancelled: actual cost limit exceeded'"),
            "{msgs:?}"
        );
        assert!(
            msgs[0].ends_with("self.l.all(x, self.l.all(y, size(self.b) > 0))"),
            "{msgs:?}"
        );
    }

    #[test]
    fn stored_rules_are_not_checked_again_and_fail_at_runtime() {
        let crd = json!({"spec": {"versions": [{"name": "v1", "schema": {"openAPIV3Schema": {
            "type": "object", "properties": {"spec": {"type": "object",
                "properties": {"addr": {"type": "string"}},
                "x-kubernetes-validations": [{"rule": "isIP(self.addr)"}]}}}}}]}});
        let errs = check_crd(&crd, None);
        assert_eq!(errs.len(), 1);
        assert!(
            errs[0].to_string().contains("undeclared reference to 'isIP'"),
            "{}",
            errs[0]
        );
        // The same rule already stored (say, by an older crwatch) does not block an update.
        assert!(check_crd(&crd, Some(&crd)).is_empty());
        let schema = crd
            .pointer("/spec/versions/0/schema/openAPIV3Schema")
            .cloned()
            .unwrap_or_default();
        let out = run(schema, json!({"spec": {"addr": "1.2.3.4"}}), None);
        assert_eq!(out.errors.len(), 1);
        assert!(
            out.errors[0].to_string().starts_with(
                "spec: Invalid value: \"object\": rule compile error: compilation failed: ERROR: <input>:1:5: undeclared reference to 'isIP'"
            ),
            "{}",
            out.errors[0]
        );
    }

    #[test]
    fn deep_nesting_does_not_overflow() {
        let mut rule = String::from("self.x");
        for _ in 0..2000 {
            rule = format!("({rule})");
        }
        let s = json!({"type": "object", "properties": {"x": {"type": "string"}}});
        assert!(compile_expr(&format!("{rule} == 'a'"), &s, false, false).is_err());
        let mut obj = json!(1);
        for _ in 0..500 {
            obj = json!([obj]);
        }
        let schema = json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true,
            "x-kubernetes-validations": [{"rule": "self == self"}]});
        let out = run(schema, json!({"deep": obj}), None);
        assert!(out.errors.is_empty());
    }
}
