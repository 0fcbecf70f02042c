//! CEL validation rules (`x-kubernetes-validations`) through the HTTP API and kubectl: rules on
//! objects, lists, maps and scalars, transition rules with `oldSelf` (map-list correlation and
//! `optionalOldSelf`), `messageExpression`, `reason` and `fieldPath`, the cost limits, rules that
//! do not compile refusing the CRD, and the error bodies worded as the real server's.

use http_body_util::BodyExt;
use serde_json::{Value, json};

use crwatch_apiserver::TestServer;

struct Raw {
    code: u16,
    warnings: Vec<String>,
    body: Value,
}

async fn raw(client: &kube::Client, method: &str, path: &str, body: &Value) -> Raw {
    let content_type = if method == "PATCH" {
        "application/merge-patch+json"
    } else {
        "application/json"
    };
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::ACCEPT, "application/json")
        .body(kube::client::Body::from(serde_json::to_vec(body).expect("json")))
        .expect("request");
    let resp = client.send(req).await.expect("send");
    let code = resp.status().as_u16();
    let warnings = resp
        .headers()
        .get_all(http::header::WARNING)
        .iter()
        .map(|v| v.to_str().expect("ascii warning").to_string())
        .collect();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| json!(String::from_utf8_lossy(&bytes)));
    Raw { code, warnings, body }
}

const CRDS: &str = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions";
const WIDGETS: &str = "/apis/cel.example.com/v1/namespaces/default/widgets";

fn widget_schema() -> Value {
    json!({
        "type": "object",
        "x-kubernetes-validations": [
            {"rule": "self.metadata.name.startsWith('w')", "message": "name must start with w"}
        ],
        "properties": {
            "spec": {
                "type": "object",
                "x-kubernetes-validations": [
                    {"rule": "self.minReplicas <= self.replicas",
                     "message": "replicas should be greater than or equal to minReplicas."},
                    {"rule": "self.replicas <= self.maxReplicas",
                     "messageExpression": "'replicas ' + string(self.replicas) + ' is above maxReplicas ' + string(self.maxReplicas)"},
                    {"rule": "!has(self.mode) || self.mode != 'banned'", "reason": "FieldValueForbidden",
                     "fieldPath": ".mode", "message": "mode banned is not allowed"}
                ],
                "properties": {
                    "replicas": {"type": "integer"},
                    "minReplicas": {"type": "integer"},
                    "maxReplicas": {"type": "integer"},
                    "mode": {"type": "string"},
                    "name": {"type": "string", "x-kubernetes-validations": [
                        {"rule": "self == oldSelf", "message": "name is immutable"}]},
                    "counter": {"type": "integer", "x-kubernetes-validations": [
                        {"rule": "!oldSelf.hasValue() ? self == 0 : self >= oldSelf.value()",
                         "optionalOldSelf": true, "message": "counter starts at 0 and never decreases"}]},
                    "tags": {"type": "array", "maxItems": 10, "items": {"type": "string", "maxLength": 20}, "x-kubernetes-validations": [
                        {"rule": "self.all(t, t.matches('^[a-z]+$'))", "message": "tags must be lowercase"}]},
                    "labels": {"type": "object", "additionalProperties": {"type": "string"},
                        "x-kubernetes-validations": [{"rule": "self.all(k, k.startsWith('x-'))"}]},
                    "disks": {"type": "array", "x-kubernetes-list-type": "map",
                        "x-kubernetes-list-map-keys": ["name"],
                        "items": {"type": "object", "required": ["name"], "properties": {
                            "name": {"type": "string"},
                            "size": {"type": "integer", "x-kubernetes-validations": [
                                {"rule": "self >= oldSelf", "message": "size may not shrink"}]}}}},
                    "big": {"type": "array", "maxItems": 100, "items": {"type": "integer"}, "x-kubernetes-validations": [
                        {"rule": "self.all(a, self.all(b, self.all(c, a + b + c >= 0)))"}]},
                    "window": {"type": "string", "format": "duration", "x-kubernetes-validations": [
                        {"rule": "self <= duration('1h')", "message": "window is at most an hour"}]}
                }
            }
        }
    })
}

fn crd(name: &str, plural: &str, kind: &str, schema: Value) -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": name},
        "spec": {"group": "cel.example.com", "scope": "Namespaced",
            "names": {"plural": plural, "singular": plural.trim_end_matches('s'), "kind": kind},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": schema}}]}
    })
}

fn widget(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "cel.example.com/v1", "kind": "Widget", "metadata": {"name": name}, "spec": spec})
}

fn causes(r: &Raw) -> Vec<(String, String, String)> {
    r.body["details"]["causes"]
        .as_array()
        .map(|c| {
            c.iter()
                .map(|c| {
                    let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
                    (s("reason"), s("field"), s("message"))
                })
                .collect()
        })
        .unwrap_or_default()
}

async fn started() -> (TestServer, kube::Client) {
    let server = TestServer::start().await.expect("server");
    let client = server.client();
    let r = raw(
        &client,
        "POST",
        CRDS,
        &crd("widgets.cel.example.com", "widgets", "Widget", widget_schema()),
    )
    .await;
    assert_eq!(r.code, 201, "{}", r.body);
    (server, client)
}

fn ok_spec() -> Value {
    json!({"replicas": 2, "minReplicas": 1, "maxReplicas": 3, "name": "a", "counter": 0})
}

#[tokio::test]
async fn rules_refuse_invalid_objects_with_the_real_wording() {
    let (_server, client) = started().await;

    let r = raw(&client, "POST", WIDGETS, &widget("w1", ok_spec())).await;
    assert_eq!(r.code, 201, "{}", r.body);

    // A rule on an object: the value is the schema type, the field the rule's node.
    let mut spec = ok_spec();
    spec["minReplicas"] = json!(3);
    let r = raw(&client, "POST", WIDGETS, &widget("w2", spec)).await;
    assert_eq!(r.code, 422);
    assert_eq!(r.body["reason"], "Invalid");
    assert_eq!(
        r.body["message"],
        "Widget.cel.example.com \"w2\" is invalid: spec: Invalid value: \"object\": replicas should be greater than or equal to minReplicas."
    );
    assert_eq!(
        causes(&r),
        vec![(
            "FieldValueInvalid".into(),
            "spec".into(),
            "Invalid value: \"object\": replicas should be greater than or equal to minReplicas.".into()
        )]
    );

    // messageExpression.
    let mut spec = ok_spec();
    spec["replicas"] = json!(5);
    let r = raw(&client, "POST", WIDGETS, &widget("w3", spec)).await;
    assert_eq!(
        causes(&r),
        vec![(
            "FieldValueInvalid".into(),
            "spec".into(),
            "Invalid value: \"object\": replicas 5 is above maxReplicas 3".into()
        )]
    );

    // reason and fieldPath.
    let mut spec = ok_spec();
    spec["mode"] = json!("banned");
    let r = raw(&client, "POST", WIDGETS, &widget("w4", spec)).await;
    assert_eq!(
        causes(&r),
        vec![(
            "FieldValueForbidden".into(),
            "spec.mode".into(),
            "Forbidden: mode banned is not allowed".into()
        )]
    );

    // Rules on a list, a map (default message), a duration-formatted string and at the root.
    let mut spec = ok_spec();
    spec["tags"] = json!(["ok", "NotOk"]);
    spec["labels"] = json!({"x-a": "1", "b": "2"});
    spec["window"] = json!("2h");
    let r = raw(&client, "POST", WIDGETS, &widget("bad", spec)).await;
    assert_eq!(r.code, 422);
    let got = causes(&r);
    for want in [
        (
            "FieldValueInvalid",
            "<nil>",
            "Invalid value: \"object\": name must start with w",
        ),
        (
            "FieldValueInvalid",
            "spec.tags",
            "Invalid value: \"array\": tags must be lowercase",
        ),
        (
            "FieldValueInvalid",
            "spec.labels",
            "Invalid value: \"object\": failed rule: self.all(k, k.startsWith('x-'))",
        ),
        (
            "FieldValueInvalid",
            "spec.window",
            "Invalid value: \"string\": window is at most an hour",
        ),
    ] {
        let want = (want.0.to_string(), want.1.to_string(), want.2.to_string());
        assert!(got.contains(&want), "{want:?} not in {got:?}");
    }
    assert_eq!(got.len(), 4, "{got:?}");

    // A type error blocks the rules, as the real strategy's hasBlockingErr does.
    let mut spec = ok_spec();
    spec["replicas"] = json!("two");
    spec["minReplicas"] = json!(9);
    let r = raw(&client, "POST", WIDGETS, &widget("w5", spec)).await;
    assert_eq!(r.code, 422);
    let got = causes(&r);
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0].0, "FieldValueTypeInvalid");
    assert_eq!(
        got[1],
        (
            "FieldValueInvalid".into(),
            "<nil>".into(),
            "Invalid value: \"null\": some validation rules were not checked because the object was invalid; correct the existing errors to complete validation".into()
        )
    );
}

#[tokio::test]
async fn transition_rules_see_the_old_object() {
    let (_server, client) = started().await;
    let mut spec = ok_spec();
    spec["disks"] = json!([{"name": "a", "size": 10}, {"name": "b", "size": 5}]);
    let r = raw(&client, "POST", WIDGETS, &widget("w1", spec)).await;
    assert_eq!(r.code, 201, "{}", r.body);
    let one = format!("{WIDGETS}/w1");

    // oldSelf on a scalar field.
    let r = raw(&client, "PATCH", &one, &json!({"spec": {"name": "b"}})).await;
    assert_eq!(r.code, 422);
    assert_eq!(
        r.body["message"],
        "Widget.cel.example.com \"w1\" is invalid: spec.name: Invalid value: \"string\": name is immutable"
    );

    // Map-list items correlate by key: b shrinking is refused even when it moves; a new item has
    // no old value, so its transition rule does not run.
    let patch = json!({"spec": {"disks": [{"name": "c", "size": 1}, {"name": "b", "size": 4}, {"name": "a", "size": 10}]}});
    let r = raw(&client, "PATCH", &one, &patch).await;
    assert_eq!(r.code, 422);
    assert_eq!(
        causes(&r),
        vec![(
            "FieldValueInvalid".into(),
            "spec.disks[1].size".into(),
            "Invalid value: \"integer\": size may not shrink".into()
        )]
    );
    let patch = json!({"spec": {"disks": [{"name": "c", "size": 1}, {"name": "b", "size": 6}, {"name": "a", "size": 10}]}});
    let r = raw(&client, "PATCH", &one, &patch).await;
    assert_eq!(r.code, 200, "{}", r.body);

    // optionalOldSelf: runs on create too, with oldSelf empty.
    let mut spec = ok_spec();
    spec["counter"] = json!(4);
    let r = raw(&client, "POST", WIDGETS, &widget("w2", spec)).await;
    assert_eq!(
        causes(&r),
        vec![(
            "FieldValueInvalid".into(),
            "spec.counter".into(),
            "Invalid value: \"integer\": counter starts at 0 and never decreases".into()
        )]
    );
    let r = raw(&client, "PATCH", &one, &json!({"spec": {"counter": 7}})).await;
    assert_eq!(r.code, 200, "{}", r.body);
    let r = raw(&client, "PATCH", &one, &json!({"spec": {"counter": 6}})).await;
    assert_eq!(r.code, 422);

    // Ratcheting: a rule added later that an unchanged value breaks is a warning, not an error.
    let r = raw(
        &client,
        "GET",
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.cel.example.com",
        &json!({}),
    )
    .await;
    let mut c = r.body;
    c["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["name"]["x-kubernetes-validations"] = json!([{"rule": "self == oldSelf", "message": "name is immutable"},
            {"rule": "self.size() > 3", "message": "name is too short"}]);
    let r = raw(
        &client,
        "PUT",
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.cel.example.com",
        &c,
    )
    .await;
    assert_eq!(r.code, 200, "{}", r.body);
    let r = raw(&client, "PATCH", &one, &json!({"spec": {"counter": 8}})).await;
    assert_eq!(r.code, 200, "{}", r.body);
    assert_eq!(
        r.warnings,
        vec!["299 - \"spec.name: Invalid value: \\\"string\\\": name is too short\"".to_string()]
    );
    // A new object gets the updated rule as an error (the compiled rules follow the CRD update).
    let r = raw(&client, "POST", WIDGETS, &widget("w3", ok_spec())).await;
    assert_eq!(
        causes(&r),
        vec![(
            "FieldValueInvalid".into(),
            "spec.name".into(),
            "Invalid value: \"string\": name is too short".into()
        )]
    );
}

#[tokio::test]
async fn expensive_rules_stop_at_the_cost_limit() {
    let (_server, client) = started().await;
    let mut spec = ok_spec();
    spec["big"] = json!((0..100).collect::<Vec<i64>>());
    let r = raw(&client, "POST", WIDGETS, &widget("w1", spec)).await;
    assert_eq!(r.code, 422);
    assert_eq!(
        causes(&r),
        vec![(
            "FieldValueInvalid".into(),
            "spec.big".into(),
            "Invalid value: \"array\": 'operation cancelled: actual cost limit exceeded': no further validation rules will be run due to call cost exceeds limit for rule: self.all(a, self.all(b, self.all(c, a + b + c >= 0)))".into()
        )]
    );
    // A small list is fine.
    let mut spec = ok_spec();
    spec["big"] = json!([1, 2, 3]);
    let r = raw(&client, "POST", WIDGETS, &widget("w2", spec)).await;
    assert_eq!(r.code, 201, "{}", r.body);
}

#[tokio::test]
async fn rules_that_do_not_compile_refuse_the_crd() {
    let server = TestServer::start().await.expect("server");
    let client = server.client();
    let schema = json!({"type": "object", "properties": {"spec": {"type": "object",
        "properties": {"replicas": {"type": "integer"}},
        "x-kubernetes-validations": [{"rule": "self.replicas2 > 0"}]}}});
    let r = raw(
        &client,
        "POST",
        CRDS,
        &crd("bads.cel.example.com", "bads", "Bad", schema),
    )
    .await;
    assert_eq!(r.code, 422);
    assert_eq!(
        r.body["message"],
        "CustomResourceDefinition.apiextensions.k8s.io \"bads.cel.example.com\" is invalid: spec.validation.openAPIV3Schema.properties[spec].x-kubernetes-validations[0].rule: Invalid value: apiextensions.ValidationRule{Rule:\"self.replicas2 > 0\", Message:\"\", MessageExpression:\"\", Reason:(*apiextensions.FieldValueErrorReason)(nil), FieldPath:\"\", OptionalOldSelf:(*bool)(nil)}: compilation failed: ERROR: <input>:1:5: undefined field 'replicas2'\n | self.replicas2 > 0\n | ....^"
    );

    // A rule that is not a bool, an unknown function, an unsupported reason, a bad fieldPath.
    let schema = json!({"type": "object", "properties": {"spec": {"type": "object",
        "properties": {"replicas": {"type": "integer"}},
        "x-kubernetes-validations": [
            {"rule": "self.replicas + 1"},
            {"rule": "frobnicate(self)"},
            {"rule": "true", "reason": "Bogus"},
            {"rule": "true", "fieldPath": ".nope"}]}}});
    let r = raw(
        &client,
        "POST",
        CRDS,
        &crd("bads.cel.example.com", "bads", "Bad", schema),
    )
    .await;
    assert_eq!(r.code, 422);
    let got = causes(&r);
    let p = "spec.validation.openAPIV3Schema.properties[spec].x-kubernetes-validations";
    assert_eq!(got.len(), 4, "{got:?}");
    assert_eq!(got[0].1, format!("{p}[0].rule"));
    assert!(
        got[0].2.ends_with(": cel expression must evaluate to a bool"),
        "{}",
        got[0].2
    );
    assert_eq!(got[1].1, format!("{p}[1].rule"));
    assert!(
        got[1].2.ends_with("compilation failed: ERROR: <input>:1:11: undeclared reference to 'frobnicate' (in container '')\n | frobnicate(self)\n | ..........^"),
        "{}",
        got[1].2
    );
    assert_eq!(
        got[2],
        (
            "FieldValueNotSupported".into(),
            format!("{p}[2].reason"),
            "Unsupported value: \"Bogus\": supported values: \"FieldValueDuplicate\", \"FieldValueForbidden\", \"FieldValueInvalid\", \"FieldValueRequired\"".into()
        )
    );
    assert_eq!(
        got[3],
        (
            "FieldValueInvalid".into(),
            format!("{p}[3].fieldPath"),
            "Invalid value: \".nope\": fieldPath must be a valid path".into()
        )
    );

    // Rules far over the estimated cost budget: a regex on unbounded strings in an unbounded list,
    // and loops nested over an unbounded list (the real server's wording; with maxItems and
    // maxLength they are accepted, as the widget CRD's rules are).
    let schema = json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {
        "names": {"type": "array", "items": {"type": "string",
            "x-kubernetes-validations": [{"rule": "self.matches('^[a-z]+$')"}]}},
        "ports": {"type": "array", "items": {"type": "integer"},
            "x-kubernetes-validations": [{"rule": "self.all(a, self.all(b, a == b || a != b))"}]}}}}});
    let r = raw(
        &client,
        "POST",
        CRDS,
        &crd("bads.cel.example.com", "bads", "Bad", schema),
    )
    .await;
    assert_eq!(r.code, 422);
    let budget = "Forbidden: estimated rule cost exceeds budget by factor of more than 100x (try simplifying the rule, or adding maxItems, maxProperties, and maxLength where arrays, maps, and strings are declared)";
    assert_eq!(
        causes(&r),
        vec![
            (
                "FieldValueForbidden".into(),
                "spec.validation.openAPIV3Schema.properties[spec].properties[names].items.x-kubernetes-validations[0].rule".into(),
                budget.into()
            ),
            (
                "FieldValueForbidden".into(),
                "spec.validation.openAPIV3Schema.properties[spec].properties[ports].x-kubernetes-validations[0].rule".into(),
                budget.into()
            ),
        ]
    );

    // oldSelf inside a list that is not a map list cannot correlate.
    let schema = json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {
        "l": {"type": "array", "items": {"type": "string",
            "x-kubernetes-validations": [{"rule": "self == oldSelf"}]}}}}}});
    let r = raw(
        &client,
        "POST",
        CRDS,
        &crd("bads.cel.example.com", "bads", "Bad", schema),
    )
    .await;
    assert_eq!(r.code, 422);
    assert_eq!(
        causes(&r),
        vec![(
            "FieldValueInvalid".into(),
            "spec.validation.openAPIV3Schema.properties[spec].properties[l].items.x-kubernetes-validations[0].rule".into(),
            "Invalid value: \"self == oldSelf\": oldSelf cannot be used on the uncorrelatable portion of the schema within spec.validation.openAPIV3Schema.properties[spec].properties[l]".into()
        )]
    );
}

#[tokio::test]
async fn kubectl_apply_shows_the_rule_message() {
    let (server, _client) = started().await;
    let manifest = "apiVersion: cel.example.com/v1\nkind: Widget\nmetadata:\n  name: w9\n  namespace: default\nspec:\n  replicas: 1\n  minReplicas: 2\n  maxReplicas: 3\n";
    let mut cmd = server.kubectl();
    cmd.args(["apply", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kubectl not runnable ({e}); skipping the kubectl check");
            return;
        }
    };
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(manifest.as_bytes()).expect("write manifest");
    }
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("join")
        .expect("kubectl");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "The Widget \"w9\" is invalid: spec: Invalid value: \"object\": replicas should be greater than or equal to minReplicas."
        ),
        "{stderr}"
    );
}
