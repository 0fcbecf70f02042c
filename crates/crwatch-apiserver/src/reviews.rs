//! The create-only review kinds, answered as the real server answers them and never stored:
//! SelfSubjectAccessReview, SubjectAccessReview, LocalSubjectAccessReview and
//! SelfSubjectRulesReview (authorization.k8s.io/v1, what `kubectl auth can-i` uses),
//! SelfSubjectReview and TokenReview (authentication.k8s.io/v1, `kubectl auth whoami`), and the
//! TokenRequest subresource of ServiceAccounts.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::authn::{Authenticated, Authenticator, ISSUER, MAX_TOKEN_SECONDS, MIN_TOKEN_SECONDS, UserInfo};
use crate::rbac::{Attributes, Authorizer, Rule};
use crate::registry::GroupResource;
use crate::status::{ApiError, ApiResult, Cause};
use crate::store::Store;

/// The review resources this module answers: `(group, resource)`.
pub const REVIEWS: [(&str, &str); 6] = [
    ("authorization.k8s.io", "selfsubjectaccessreviews"),
    ("authorization.k8s.io", "subjectaccessreviews"),
    ("authorization.k8s.io", "localsubjectaccessreviews"),
    ("authorization.k8s.io", "selfsubjectrulesreviews"),
    ("authentication.k8s.io", "selfsubjectreviews"),
    ("authentication.k8s.io", "tokenreviews"),
];

/// Whether `(group, resource)` is one of [`REVIEWS`].
pub fn is_review(group: &str, resource: &str) -> bool {
    REVIEWS.iter().any(|(g, r)| *g == group && *r == resource)
}

fn kind_of(resource: &str) -> &'static str {
    match resource {
        "selfsubjectaccessreviews" => "SelfSubjectAccessReview",
        "subjectaccessreviews" => "SubjectAccessReview",
        "localsubjectaccessreviews" => "LocalSubjectAccessReview",
        "selfsubjectrulesreviews" => "SelfSubjectRulesReview",
        "selfsubjectreviews" => "SelfSubjectReview",
        _ => "TokenReview",
    }
}

/// How a field of the review messages is decoded from protobuf.
#[derive(Clone, Copy)]
enum F {
    Str,
    Strs,
    I64,
    Msg(&'static [(u32, &'static str, F)]),
    /// A repeated message.
    Msgs(&'static [(u32, &'static str, F)]),
    /// `map<string, string>`.
    MapStr,
    /// `map<string, ExtraValue>` (`ExtraValue { repeated string items = 1; }`).
    Extra,
}

/// The `ObjectMeta` fields a client sets when it creates or replaces an object.
const OBJECT_META: &[(u32, &str, F)] = &[
    (1, "name", F::Str),
    (2, "generateName", F::Str),
    (3, "namespace", F::Str),
    (5, "uid", F::Str),
    (6, "resourceVersion", F::Str),
    (11, "labels", F::MapStr),
    (12, "annotations", F::MapStr),
    (14, "finalizers", F::Strs),
];
const POLICY_RULE: &[(u32, &str, F)] = &[
    (1, "verbs", F::Strs),
    (2, "apiGroups", F::Strs),
    (3, "resources", F::Strs),
    (4, "resourceNames", F::Strs),
    (5, "nonResourceURLs", F::Strs),
];
const SELECTOR_REQUIREMENT: &[(u32, &str, F)] = &[
    (1, "key", F::Str),
    (2, "operator", F::Str),
    (3, "values", F::Strs),
];
const LABEL_SELECTOR: &[(u32, &str, F)] = &[
    (1, "matchLabels", F::MapStr),
    (2, "matchExpressions", F::Msgs(SELECTOR_REQUIREMENT)),
];
const AGGREGATION_RULE: &[(u32, &str, F)] = &[(1, "clusterRoleSelectors", F::Msgs(LABEL_SELECTOR))];
const SUBJECT: &[(u32, &str, F)] = &[
    (1, "kind", F::Str),
    (2, "apiGroup", F::Str),
    (3, "name", F::Str),
    (4, "namespace", F::Str),
];
const ROLE_REF: &[(u32, &str, F)] = &[(1, "apiGroup", F::Str), (2, "kind", F::Str), (3, "name", F::Str)];
const ROLE: &[(u32, &str, F)] = &[
    (1, "metadata", F::Msg(OBJECT_META)),
    (2, "rules", F::Msgs(POLICY_RULE)),
    (3, "aggregationRule", F::Msg(AGGREGATION_RULE)),
];
const BINDING: &[(u32, &str, F)] = &[
    (1, "metadata", F::Msg(OBJECT_META)),
    (2, "subjects", F::Msgs(SUBJECT)),
    (3, "roleRef", F::Msg(ROLE_REF)),
];

const RESOURCE_ATTRIBUTES: &[(u32, &str, F)] = &[
    (1, "namespace", F::Str),
    (2, "verb", F::Str),
    (3, "group", F::Str),
    (4, "version", F::Str),
    (5, "resource", F::Str),
    (6, "subresource", F::Str),
    (7, "name", F::Str),
];
const NON_RESOURCE_ATTRIBUTES: &[(u32, &str, F)] = &[(1, "path", F::Str), (2, "verb", F::Str)];
const ACCESS_SPEC: &[(u32, &str, F)] = &[
    (1, "resourceAttributes", F::Msg(RESOURCE_ATTRIBUTES)),
    (2, "nonResourceAttributes", F::Msg(NON_RESOURCE_ATTRIBUTES)),
    (3, "user", F::Str),
    (4, "groups", F::Strs),
    (5, "extra", F::Extra),
    (6, "uid", F::Str),
];
const RULES_SPEC: &[(u32, &str, F)] = &[(1, "namespace", F::Str)];
const TOKEN_REVIEW_SPEC: &[(u32, &str, F)] = &[(1, "token", F::Str), (2, "audiences", F::Strs)];
const BOUND_OBJECT: &[(u32, &str, F)] = &[
    (1, "kind", F::Str),
    (2, "apiVersion", F::Str),
    (3, "name", F::Str),
    (4, "uid", F::Str),
];
const TOKEN_REQUEST_SPEC: &[(u32, &str, F)] = &[
    (1, "audiences", F::Strs),
    (3, "boundObjectRef", F::Msg(BOUND_OBJECT)),
    (4, "expirationSeconds", F::I64),
];

/// A protobuf wire-format reader over one message's bytes.
struct Wire<'a> {
    b: &'a [u8],
}

impl<'a> Wire<'a> {
    fn varint(&mut self) -> Option<u64> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let (&byte, rest) = self.b.split_first()?;
            self.b = rest;
            v |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    /// The next field: `(tag, varint value or bytes)`; None at the end, Err when malformed.
    #[allow(clippy::type_complexity)]
    fn field(&mut self) -> Result<Option<(u32, Result<u64, &'a [u8]>)>, ()> {
        if self.b.is_empty() {
            return Ok(None);
        }
        let key = self.varint().ok_or(())?;
        let tag = u32::try_from(key >> 3).map_err(|_| ())?;
        let value = match key & 7 {
            0 => Ok(self.varint().ok_or(())?),
            1 | 5 => {
                let n = if key & 7 == 1 { 8 } else { 4 };
                if self.b.len() < n {
                    return Err(());
                }
                self.b = &self.b[n..];
                Ok(0)
            }
            2 => {
                let n = usize::try_from(self.varint().ok_or(())?).map_err(|_| ())?;
                if self.b.len() < n {
                    return Err(());
                }
                let (v, rest) = self.b.split_at(n);
                self.b = rest;
                Err(v)
            }
            _ => return Err(()),
        };
        Ok(Some((tag, value)))
    }
}

fn decode_message(bytes: &[u8], fields: &[(u32, &str, F)], depth: usize) -> Result<Value, ()> {
    if depth > 8 {
        return Err(());
    }
    let mut out = serde_json::Map::new();
    let mut w = Wire { b: bytes };
    while let Some((tag, value)) = w.field()? {
        let Some((_, name, f)) = fields.iter().find(|(t, _, _)| *t == tag) else {
            continue;
        };
        let text = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| ());
        match (f, value) {
            (F::Str, Err(b)) => {
                out.insert(name.to_string(), json!(text(b)?));
            }
            (F::Strs, Err(b)) => {
                let list = out.entry(name.to_string()).or_insert_with(|| json!([]));
                if let Some(a) = list.as_array_mut() {
                    a.push(json!(text(b)?));
                }
            }
            (F::I64, Ok(v)) => {
                out.insert(name.to_string(), json!(v as i64));
            }
            (F::Msg(sub), Err(b)) => {
                out.insert(name.to_string(), decode_message(b, sub, depth + 1)?);
            }
            (F::Msgs(sub), Err(b)) => {
                let item = decode_message(b, sub, depth + 1)?;
                let list = out.entry(name.to_string()).or_insert_with(|| json!([]));
                if let Some(a) = list.as_array_mut() {
                    a.push(item);
                }
            }
            (F::MapStr, Err(entry)) => {
                let mut e = Wire { b: entry };
                let (mut key, mut val) = (String::new(), String::new());
                while let Some((t, v)) = e.field()? {
                    match (t, v) {
                        (1, Err(k)) => key = text(k)?,
                        (2, Err(x)) => val = text(x)?,
                        _ => {}
                    }
                }
                let m = out.entry(name.to_string()).or_insert_with(|| json!({}));
                m[key] = json!(val);
            }
            (F::Extra, Err(entry)) => {
                let mut e = Wire { b: entry };
                let (mut key, mut items) = (String::new(), vec![]);
                while let Some((t, v)) = e.field()? {
                    match (t, v) {
                        (1, Err(k)) => key = text(k)?,
                        (2, Err(val)) => {
                            let mut iw = Wire { b: val };
                            while let Some((it, iv)) = iw.field()? {
                                if let (1, Err(s)) = (it, iv) {
                                    items.push(json!(text(s)?));
                                }
                            }
                        }
                        _ => {}
                    }
                }
                let m = out.entry(name.to_string()).or_insert_with(|| json!({}));
                m[key] = Value::Array(items);
            }
            _ => return Err(()),
        }
    }
    Ok(Value::Object(out))
}

/// A review (or TokenRequest) sent as protobuf, as kubectl 1.32+ sends them: the JSON it
/// stands for. Only the fields these handlers read are decoded.
pub fn decode_protobuf(body: &[u8], resource: &str) -> ApiResult<Value> {
    let bad = || ApiError::bad_request("decoding protobuf body: malformed message");
    let rest = body
        .strip_prefix(crate::protobuf::MAGIC.as_slice())
        .ok_or_else(|| ApiError::bad_request("decoding protobuf body: missing the k8s\\0 prefix"))?;
    let mut envelope = Wire { b: rest };
    let mut raw: &[u8] = &[];
    while let Some((tag, v)) = envelope.field().map_err(|_| bad())? {
        if let (2, Err(b)) = (tag, v) {
            raw = b;
        }
    }
    let spec: Option<&'static [(u32, &'static str, F)]> = match resource {
        "selfsubjectaccessreviews" => Some(&ACCESS_SPEC[..2]),
        "subjectaccessreviews" | "localsubjectaccessreviews" => Some(ACCESS_SPEC),
        "selfsubjectrulesreviews" => Some(RULES_SPEC),
        "tokenreviews" => Some(TOKEN_REVIEW_SPEC),
        "token" => Some(TOKEN_REQUEST_SPEC),
        _ => None,
    };
    let top: Vec<(u32, &str, F)> = spec.map(|s| vec![(2, "spec", F::Msg(s))]).unwrap_or_default();
    decode_message(raw, &top, 0).map_err(|_| bad())
}

/// A Role, ClusterRole, RoleBinding or ClusterRoleBinding sent as protobuf (`kubectl create
/// role|clusterrole|rolebinding|clusterrolebinding` in kubectl 1.32+): the JSON it stands for,
/// `None` for another kind.
pub fn decode_rbac_protobuf(body: &[u8]) -> ApiResult<Option<Value>> {
    let bad = || ApiError::bad_request("decoding protobuf body: malformed message");
    let Some(rest) = body.strip_prefix(crate::protobuf::MAGIC.as_slice()) else {
        return Ok(None);
    };
    let mut envelope = Wire { b: rest };
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    while let Some((tag, v)) = envelope.field().map_err(|_| bad())? {
        match (tag, v) {
            (1, Err(tm)) => {
                let meta = decode_message(tm, &[(1, "apiVersion", F::Str), (2, "kind", F::Str)], 0)
                    .map_err(|_| bad())?;
                api_version = s(&meta, "apiVersion").to_string();
                kind = s(&meta, "kind").to_string();
            }
            (2, Err(b)) => raw = b,
            _ => {}
        }
    }
    if api_version != "rbac.authorization.k8s.io/v1" {
        return Ok(None);
    }
    let fields = match kind.as_str() {
        "Role" => &ROLE[..2],
        "ClusterRole" => ROLE,
        "RoleBinding" | "ClusterRoleBinding" => BINDING,
        _ => return Ok(None),
    };
    let mut v = decode_message(raw, fields, 0).map_err(|_| bad())?;
    v["apiVersion"] = json!(api_version);
    v["kind"] = json!(kind);
    Ok(Some(v))
}

fn decode(body: &[u8]) -> ApiResult<Value> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the body of the request could not be decoded: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::bad_request(
            "the body of the request must be a JSON object",
        ));
    }
    Ok(v)
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_default()
}

fn attributes_from_spec(user: UserInfo, spec: &Value) -> Attributes {
    if let Some(r) = spec.get("resourceAttributes").filter(|v| v.is_object()) {
        Attributes {
            user,
            verb: s(r, "verb").into(),
            resource_request: true,
            path: String::new(),
            namespace: s(r, "namespace").into(),
            api_group: s(r, "group").into(),
            api_version: s(r, "version").into(),
            resource: s(r, "resource").into(),
            subresource: s(r, "subresource").into(),
            name: s(r, "name").into(),
        }
    } else {
        let n = spec.get("nonResourceAttributes").cloned().unwrap_or(Value::Null);
        Attributes {
            user,
            verb: s(&n, "verb").into(),
            path: s(&n, "path").into(),
            ..Default::default()
        }
    }
}

fn user_from_spec(spec: &Value) -> UserInfo {
    let list = |k: &str| -> Vec<String> {
        spec.get(k)
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|x| x.as_str().map(String::from)).collect())
            .unwrap_or_default()
    };
    let extra: BTreeMap<String, Vec<String>> = spec
        .get("extra")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let vals = v
                        .as_array()
                        .map(|a| a.iter().filter_map(|x| x.as_str().map(String::from)).collect())
                        .unwrap_or_default();
                    (k.clone(), vals)
                })
                .collect()
        })
        .unwrap_or_default();
    UserInfo {
        name: s(spec, "user").into(),
        uid: s(spec, "uid").into(),
        groups: list("groups"),
        extra,
    }
}

/// `ValidateSelfSubjectAccessReviewSpec`: exactly one of the attribute kinds.
fn check_attributes(spec: &Value) -> Vec<Cause> {
    let has = |k: &str| spec.get(k).is_some_and(|v| !v.is_null());
    match (has("resourceAttributes"), has("nonResourceAttributes")) {
        (true, true) => vec![Cause::new(
            "FieldValueInvalid",
            "spec.nonResourceAttributes",
            format!(
                "Invalid value: {}: cannot be specified in combination with resourceAttributes",
                spec["nonResourceAttributes"]
            ),
        )],
        (false, false) => vec![Cause::new(
            "FieldValueInvalid",
            "spec.resourceAttributes",
            "Invalid value: \"null\": exactly one of nonResourceAttributes or resourceAttributes must be specified",
        )],
        _ => vec![],
    }
}

fn answer(kind: &str, group: &str, mut obj: Value, status: Value) -> Value {
    obj["apiVersion"] = json!(format!("{group}/v1"));
    obj["kind"] = json!(kind);
    let meta = obj
        .get("metadata")
        .cloned()
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({}));
    obj["metadata"] = meta;
    obj["metadata"]["creationTimestamp"] = Value::Null;
    obj["status"] = status;
    obj
}

fn access_status(allowed: bool, reason: &str) -> Value {
    let mut st = json!({"allowed": allowed});
    if !reason.is_empty() {
        st["reason"] = json!(reason);
    }
    st
}

/// Answer a review (created by `user`, `namespace` from the URL): the object to return with
/// 201.
#[allow(clippy::too_many_arguments)]
pub fn review(
    authn: &Authenticator,
    authz: &Authorizer,
    store: &Store,
    user: &UserInfo,
    group: &str,
    resource: &str,
    namespace: &str,
    body: &[u8],
) -> ApiResult<Value> {
    let obj = decode(body)?;
    let kind = kind_of(resource);
    let spec = obj.get("spec").cloned().unwrap_or_else(|| json!({}));
    let invalid = |causes: Vec<Cause>| ApiError::invalid(group, kind, "", causes);
    match resource {
        "selfsubjectaccessreviews" => {
            let causes = check_attributes(&spec);
            if !causes.is_empty() {
                return Err(invalid(causes));
            }
            let (allowed, reason) = authz.authorize(&attributes_from_spec(user.clone(), &spec));
            Ok(answer(kind, group, obj, access_status(allowed, &reason)))
        }
        "subjectaccessreviews" | "localsubjectaccessreviews" => {
            let mut causes = check_attributes(&spec);
            let subject = user_from_spec(&spec);
            if subject.name.is_empty() && subject.groups.is_empty() {
                causes.push(Cause::new(
                    "FieldValueInvalid",
                    "spec.user",
                    "Invalid value: \"\": at least one of user or group must be specified",
                ));
            }
            if resource == "localsubjectaccessreviews" {
                if spec.get("nonResourceAttributes").is_some_and(|v| !v.is_null()) {
                    causes.push(Cause::new(
                        "FieldValueInvalid",
                        "spec.nonResourceAttributes",
                        format!(
                            "Invalid value: {}: disallowed on this kind of request",
                            spec["nonResourceAttributes"]
                        ),
                    ));
                }
                let ns = spec
                    .pointer("/resourceAttributes/namespace")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if causes.is_empty() && ns != namespace {
                    return Err(ApiError::bad_request(format!(
                        "spec.resourceAttributes.namespace must match namespace: {namespace}"
                    )));
                }
            }
            if !causes.is_empty() {
                return Err(invalid(causes));
            }
            let (allowed, reason) = authz.authorize(&attributes_from_spec(subject, &spec));
            Ok(answer(kind, group, obj, access_status(allowed, &reason)))
        }
        "selfsubjectrulesreviews" => {
            let ns = s(&spec, "namespace");
            if ns.is_empty() {
                return Err(ApiError::bad_request("no namespace on request"));
            }
            let (rules, errors) = authz.rules_for(user, ns);
            Ok(answer(kind, group, obj, rules_status(&rules, &errors)))
        }
        "selfsubjectreviews" => Ok(answer(kind, group, obj, json!({"userInfo": user.to_json()}))),
        _ => {
            let token = s(&spec, "token");
            if token.is_empty() {
                return Err(ApiError::bad_request(
                    "token is required for TokenReview in authentication",
                ));
            }
            let audiences: Vec<String> = spec
                .get("audiences")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(|x| x.as_str().map(String::from)).collect())
                .filter(|a: &Vec<String>| !a.is_empty())
                .unwrap_or_else(|| vec![ISSUER.to_string()]);
            let status = match authn.authenticate_for(token, store, crate::authn::now_unix(), &audiences) {
                (Authenticated::User(u), matched) => {
                    json!({"authenticated": true, "user": u.to_json(), "audiences": matched})
                }
                (Authenticated::Invalid, _) => json!({"user": {}}),
            };
            Ok(answer(kind, group, obj, status))
        }
    }
}

/// A SelfSubjectRulesReview's status from the rules the user holds.
fn rules_status(rules: &[Rule], errors: &[String]) -> Value {
    let mut resource_rules = vec![];
    let mut non_resource_rules = vec![];
    for r in rules {
        if !r.resources.is_empty() {
            let mut v = json!({"verbs": r.verbs, "apiGroups": r.api_groups, "resources": r.resources});
            if !r.resource_names.is_empty() {
                v["resourceNames"] = json!(r.resource_names);
            }
            resource_rules.push(v);
        }
        if !r.non_resource_urls.is_empty() {
            non_resource_rules.push(json!({"verbs": r.verbs, "nonResourceURLs": r.non_resource_urls}));
        }
    }
    let mut st = json!({
        "resourceRules": resource_rules,
        "nonResourceRules": non_resource_rules,
        "incomplete": !errors.is_empty(),
    });
    if !errors.is_empty() {
        st["evaluationError"] = json!(format!("[{}]", errors.join(", ")));
    }
    st
}

/// `POST .../serviceaccounts/<name>/token`: a TokenRequest answered with a signed token for the
/// ServiceAccount (201), or the real server's errors.
pub fn token_request(
    authn: &Authenticator,
    store: &Store,
    namespace: &str,
    name: &str,
    body: &[u8],
) -> ApiResult<Value> {
    let mut obj = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        decode(body)?
    };
    let gr = GroupResource {
        group: String::new(),
        resource: "serviceaccounts".into(),
    };
    let sa = store
        .get(&gr, &(namespace.to_string(), name.to_string()))
        .ok_or_else(|| ApiError::not_found("", "serviceaccounts", name))?;
    let uid = sa
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let seconds = match obj.pointer("/spec/expirationSeconds") {
        None | Some(Value::Null) => 3600,
        Some(v) => v.as_i64().ok_or_else(|| {
            ApiError::bad_request(format!(
                "json: cannot unmarshal {} into Go struct field TokenRequestSpec.spec.expirationSeconds of type int64",
                if v.is_string() { "string" } else { "number" }
            ))
        })?,
    };
    let bad = |msg: &str| {
        ApiError::invalid(
            "authentication.k8s.io",
            "TokenRequest",
            name,
            vec![Cause::new(
                "FieldValueInvalid",
                "spec.expirationSeconds",
                format!("Invalid value: {seconds}: {msg}"),
            )],
        )
    };
    if seconds < MIN_TOKEN_SECONDS {
        return Err(bad("may not specify a duration less than 10 minutes"));
    }
    if seconds > MAX_TOKEN_SECONDS {
        return Err(bad("may not specify a duration larger than 2^32 seconds"));
    }
    let audiences: Vec<String> = obj
        .pointer("/spec/audiences")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|x| x.as_str().map(String::from)).collect())
        .filter(|a: &Vec<String>| !a.is_empty())
        .unwrap_or_else(|| vec![ISSUER.to_string()]);
    let now = chrono::Utc::now();
    let token = authn
        .issue(namespace, name, &uid, &audiences, now.timestamp(), seconds)
        .map_err(ApiError::internal)?;
    let expires = now + chrono::Duration::seconds(seconds);
    obj["apiVersion"] = json!("authentication.k8s.io/v1");
    obj["kind"] = json!("TokenRequest");
    obj["metadata"] = json!({
        "name": name,
        "namespace": namespace,
        "creationTimestamp": now.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
    });
    let bound = obj
        .pointer("/spec/boundObjectRef")
        .cloned()
        .unwrap_or(Value::Null);
    obj["spec"] = json!({"audiences": audiences, "expirationSeconds": seconds, "boundObjectRef": bound});
    obj["status"] = json!({
        "token": token,
        "expirationTimestamp": expires.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
    });
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A protobuf body: the magic, then `runtime.Unknown { typeMeta = 1; raw = 2 }`.
    fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
        fn field(tag: u8, bytes: &[u8]) -> Vec<u8> {
            let mut v = vec![(tag << 3) | 2, u8::try_from(bytes.len()).unwrap()];
            v.extend_from_slice(bytes);
            v
        }
        let mut tm = field(1, api_version.as_bytes());
        tm.extend(field(2, kind.as_bytes()));
        let mut out = b"k8s\0".to_vec();
        out.extend(field(1, &tm));
        out.extend(field(2, raw));
        out
    }

    #[test]
    fn rbac_kinds_decode_from_protobuf() {
        // Role { metadata { name: "r" } rules [{ verbs: ["get"], resources: ["pods"] }] }
        let meta = [0x0a, 0x01, b'r'];
        let rule = [0x0a, 0x03, b'g', b'e', b't', 0x1a, 0x04, b'p', b'o', b'd', b's'];
        let mut raw = vec![0x0a, meta.len() as u8];
        raw.extend(meta);
        raw.extend([0x12, rule.len() as u8]);
        raw.extend(rule);
        let v = decode_rbac_protobuf(&envelope("rbac.authorization.k8s.io/v1", "Role", &raw))
            .unwrap()
            .unwrap();
        assert_eq!(
            v,
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "r"},
                   "rules": [{"verbs": ["get"], "resources": ["pods"]}]})
        );
        assert!(
            decode_rbac_protobuf(&envelope("v1", "ConfigMap", &raw))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn malformed_protobuf_is_a_400_never_a_panic() {
        let good = envelope(
            "authorization.k8s.io/v1",
            "SelfSubjectAccessReview",
            &[0x12, 0x02, 0x0a, 0x00],
        );
        assert!(decode_protobuf(&good, "selfsubjectaccessreviews").is_ok());
        for cut in 0..good.len() {
            let _ = decode_protobuf(&good[..cut], "selfsubjectaccessreviews");
            let _ = decode_rbac_protobuf(&good[..cut]);
        }
        let mut junk = good.clone();
        junk.extend([0xff; 12]);
        assert_eq!(
            decode_protobuf(&junk, "selfsubjectaccessreviews")
                .unwrap_err()
                .code,
            400
        );
        // Nested ten deep: refused, not recursed into without bound.
        let mut deep = vec![];
        for _ in 0..10 {
            let mut outer = vec![0x0a, deep.len() as u8];
            outer.extend(deep);
            deep = outer;
        }
        let _ = decode_protobuf(
            &envelope("authorization.k8s.io/v1", "SelfSubjectAccessReview", &deep),
            "selfsubjectaccessreviews",
        );
    }
}
