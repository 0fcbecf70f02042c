//! Unit and property tests of diffs: paths, filters, list keys, rendering, applying.

use super::path::{ParsedSeg, Seg, parse_path, push_index, push_key, push_selector};
use super::*;
use proptest::prelude::*;
use serde_json::json;

fn none(old: &Value, new: &Value) -> Diff {
    Diff::between_with(old, new, &Filter::none())
}

#[test]
fn scalar_change_and_display() {
    let d = Diff::between(
        &json!({"spec": {"size": "10Gi"}}),
        &json!({"spec": {"size": "20Gi"}}),
    );
    assert_eq!(d.to_string(), "spec.size: \"10Gi\" → \"20Gi\"");
    assert_eq!(d.changes[0].op, Op::Changed);
}

#[test]
fn list_tail_added_and_removed() {
    let a = json!({"spec": {"users": [{"username": "a"}, {"username": "b"}]}});
    let b = json!({"spec": {"users": [{"username": "a"}, {"username": "c"}, {"username": "d"}]}});
    let d = none(&a, &b);
    assert_eq!(
        d.to_string(),
        "spec.users[1].username: \"b\" → \"c\"\n+ spec.users[2]: {\"username\":\"d\"}"
    );
    let d = none(&b, &a);
    assert_eq!(d.paths(), ["spec.users[1].username", "spec.users[2]"]);
    assert_eq!(d.changes[1].op, Op::Removed);
}

#[test]
fn type_change_is_changed_at_that_path() {
    let d = none(&json!({"a": {"b": 1}}), &json!({"a": [1]}));
    assert_eq!(d.changes.len(), 1);
    assert_eq!(d.changes[0].path, "a");
    assert_eq!(d.changes[0].op, Op::Changed);
    // 1 and 1.0 are different JSON numbers
    assert_eq!(none(&json!(1), &json!(1.0)).paths(), [""]);
}

#[test]
fn odd_keys_are_quoted() {
    let d = none(
        &json!({"metadata": {"labels": {"app": "x"}}}),
        &json!({"metadata": {"labels": {"app.kubernetes.io/name": "db", "": 1, "9a": 2, "é": 3, "a\"b": 4, "ok-key_1": 5}}}),
    );
    assert_eq!(
        d.paths(),
        [
            "metadata.labels.app",
            r#"metadata.labels["app.kubernetes.io/name"]"#,
            r#"metadata.labels[""]"#,
            r#"metadata.labels["9a"]"#,
            r#"metadata.labels["é"]"#,
            r#"metadata.labels["a\"b"]"#,
            "metadata.labels.ok-key_1",
        ]
    );
    assert_eq!(d.to_string().lines().next(), Some("- metadata.labels.app: \"x\""));
    // top-level quoted key has no leading dot
    assert_eq!(none(&json!({}), &json!({"a.b": 1})).paths(), [r#"["a.b"]"#]);
}

#[test]
fn default_filter_drops_noise_and_keeps_the_rest() {
    let old = json!({"metadata": {
        "name": "x", "resourceVersion": "1", "generation": 1, "selfLink": "/a",
        "managedFields": [{"manager": "a"}],
        "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}", "keep": "1"}
    }});
    let new = json!({"metadata": {
        "name": "x", "resourceVersion": "2", "generation": 2, "selfLink": "/b",
        "managedFields": [{"manager": "b"}, {"manager": "c"}],
        "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{\"a\":1}", "keep": "2"}
    }});
    assert_eq!(Diff::between(&old, &new).paths(), ["metadata.annotations.keep"]);
    assert_eq!(none(&old, &new).len(), 7);
    // a filtered key that appears or disappears is filtered too
    let d = Diff::between(
        &json!({"metadata": {}}),
        &json!({"metadata": {"resourceVersion": "1"}}),
    );
    assert!(d.is_empty());
}

#[test]
fn filter_wildcards_and_invalid_patterns() {
    let f = Filter::none().ignore("a[*].t").ignore("not a path");
    let d = Diff::between_with(
        &json!({"a": [{"t": 1, "u": 1}]}),
        &json!({"a": [{"t": 2, "u": 2}]}),
        &f,
    );
    assert_eq!(d.paths(), ["a[0].u"]);
    assert!(f.patterns().contains(&"not a path".to_string()));
    assert!(f.patterns().contains(&"a[*].t".to_string()));
    assert!(Filter::none().try_ignore("not a path").is_err());
    assert!(f.is_ignored("a[3].t.x"));
    assert!(!f.is_ignored("a[3].u"));
}

#[test]
fn touches_and_only_under() {
    let d = none(
        &json!({"spec": {"a": 1}, "status": {"p": 1}}),
        &json!({"spec": {"a": 2}, "status": {"p": 2}}),
    );
    assert!(d.touches("spec") && d.touches("spec.a") && d.touches("status"));
    assert!(!d.touches("spe") && !d.touches("spec.b") && !d.touches("metadata"));
    assert!(!d.touches("not valid ["));
    assert!(d.only_under(&["spec", "status"]));
    assert!(!d.only_under(&["spec"]));
    assert!(Diff::default().only_under(&[]));
    // change at an ancestor
    let d = none(&json!({}), &json!({"spec": {"a": {"b": 1}}}));
    assert!(d.touches("spec.a.b"));
    assert!(!d.touches("spec.a.c"));
    assert!(!d.only_under(&["spec.a"]));
    // root change touches everything it actually changes
    let d = none(&json!(1), &json!({"spec": 1}));
    assert!(d.spec_changed() && !d.status_changed() && !d.metadata_changed());
}

#[test]
fn precision_truncates_values() {
    let d = none(&json!({"a": "0123456789"}), &json!({"a": "x"}));
    assert_eq!(format!("{d:.4}"), "a: \"012… → \"x\"");
}

#[test]
fn try_of_and_of_with_unserializable_input() {
    use std::collections::BTreeMap;
    let bad: BTreeMap<(u8, u8), u8> = [((1, 2), 3)].into();
    assert!(Diff::try_of(&bad, &bad).is_err());
    assert!(Diff::of(&bad, &bad).is_empty()); // both null
    assert_eq!(Diff::of(&1, &2).paths(), [""]);
}

#[test]
fn deep_values_do_not_overflow() {
    let mut a = json!(1);
    let mut b = json!(2);
    for _ in 0..(MAX_DEPTH * 2) {
        a = json!([a]);
        b = json!([b]);
    }
    let d = none(&a, &b);
    assert_eq!(d.len(), 1);
    assert_eq!(d.changes[0].path, "[0]".repeat(MAX_DEPTH));
    let mut v = a.clone();
    d.apply_to(&mut v).unwrap();
    assert_eq!(v, b);
}

#[test]
fn apply_errors_instead_of_panicking() {
    let d = none(&json!({"a": [1, 2, 3]}), &json!({"a": [1]}));
    let mut target = json!({"a": [1]});
    assert!(d.apply_to(&mut target).is_err());
    let bad = Diff {
        changes: vec![FieldChange {
            path: "x[".into(),
            op: Op::Changed,
            old: None,
            new: None,
        }],
    };
    assert!(bad.apply_to(&mut json!({})).is_err());
}

#[test]
fn serializes_as_list_of_changes() {
    let d = none(&json!({"a": 1}), &json!({}));
    assert_eq!(
        serde_json::to_value(&d).unwrap(),
        json!([{"path": "a", "op": "removed", "old": 1}])
    );
    let back: Diff = serde_json::from_value(serde_json::to_value(&d).unwrap()).unwrap();
    assert_eq!(back, d);
}

fn arb_key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("metadata".to_string()),
        Just("resourceVersion".to_string()),
        Just("managedFields".to_string()),
        Just("annotations".to_string()),
        Just("kubectl.kubernetes.io/last-applied-configuration".to_string()),
        Just("spec".to_string()),
        "[a-c]{1,2}",
        ".{0,4}",
    ]
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (-1e6f64..1e6).prop_map(Value::from),
        ".{0,3}".prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 48, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((arb_key(), inner), 0..5)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// Two related values: `b` is `a` with random edits, so diffs are small and deep.
fn arb_pair() -> impl Strategy<Value = (Value, Value)> {
    (arb_json(), arb_json(), any::<u64>()).prop_map(|(a, other, seed)| {
        let mut b = a.clone();
        mutate(&mut b, &other, seed);
        (a, b)
    })
}

fn mutate(v: &mut Value, other: &Value, seed: u64) {
    match (v, seed % 4) {
        (Value::Object(m), 0 | 1) if !m.is_empty() => {
            let idx = (seed / 4) as usize % m.len();
            if let Some(child) = m.values_mut().nth(idx) {
                mutate(child, other, seed / 7);
            }
        }
        (Value::Array(a), 0 | 1) if !a.is_empty() => {
            let idx = (seed / 4) as usize % a.len();
            mutate(&mut a[idx], other, seed / 7);
        }
        (Value::Array(a), 2) => a.truncate((seed / 4) as usize % (a.len() + 1)),
        (v, _) => *v = other.clone(),
    }
}

/// Removes every object key the filter ignores (ignored list elements or roots become a
/// marker), so values can be compared modulo the filter.
fn strip(v: &mut Value, filter: &Filter, segs: &mut Vec<(String, Option<usize>)>) {
    let matches = |segs: &[(String, Option<usize>)]| {
        let s: Vec<Seg<'_>> = segs
            .iter()
            .map(|(k, i)| match i {
                Some(i) => Seg::Index(*i),
                None => Seg::Key(k),
            })
            .collect();
        filter.matches(&s)
    };
    if matches(segs) {
        *v = Value::String("<ignored>".into());
        return;
    }
    match v {
        Value::Object(m) => {
            let keys: Vec<String> = m.keys().cloned().collect();
            for k in keys {
                segs.push((k.clone(), None));
                if matches(segs) {
                    m.shift_remove(&k);
                } else if let Some(c) = m.get_mut(&k) {
                    strip(c, filter, segs);
                }
                segs.pop();
            }
        }
        Value::Array(a) => {
            for (i, c) in a.iter_mut().enumerate() {
                segs.push((String::new(), Some(i)));
                strip(c, filter, segs);
                segs.pop();
            }
        }
        _ => {}
    }
}

fn normalized(mut v: Value, f: &Filter) -> Value {
    strip(&mut v, f, &mut Vec::new());
    v
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn apply_unfiltered_diff_yields_new((a, b) in arb_pair()) {
        let d = none(&a, &b);
        let mut v = a.clone();
        d.apply_to(&mut v).unwrap();
        prop_assert_eq!(&v, &b);
        prop_assert_eq!(d.is_empty(), a == b);
        let _ = d.to_string();
    }

    #[test]
    fn apply_unrelated_values((a, b) in (arb_json(), arb_json())) {
        let d = none(&a, &b);
        let mut v = a.clone();
        d.apply_to(&mut v).unwrap();
        prop_assert_eq!(v, b);
    }

    #[test]
    fn apply_filtered_diff_yields_new_modulo_filter((a, b) in arb_pair()) {
        let f = Filter::default().ignore("a[*].b");
        let d = Diff::between_with(&a, &b, &f);
        for p in d.paths() {
            prop_assert!(!f.is_ignored(p), "{} should have been filtered", p);
        }
        let mut v = a.clone();
        d.apply_to(&mut v).unwrap();
        prop_assert_eq!(normalized(v, &f), normalized(b, &f));
    }

    #[test]
    fn every_rendered_path_parses_back(key in ".{0,6}", i in 0usize..1000) {
        let mut p = String::new();
        push_key(&mut p, &key);
        push_index(&mut p, i);
        push_key(&mut p, &key);
        let segs = parse_path(&p, false).unwrap();
        prop_assert_eq!(segs, vec![ParsedSeg::Key(key.clone()), ParsedSeg::Index(i), ParsedSeg::Key(key)]);
    }

    #[test]
    fn parse_never_panics(s in ".{0,12}") {
        let _ = parse_path(&s, true);
        let d = Diff::default();
        let _ = d.touches(&s);
        let _ = Filter::none().ignore(&s).is_ignored(&s);
    }
}

// ---- lists by key ----

fn conds(items: &[(&str, &str)]) -> Value {
    let list: Vec<Value> = items
        .iter()
        .map(|(t, s)| json!({"type": t, "status": s}))
        .collect();
    json!({"status": {"conditions": list}})
}

#[test]
fn conditions_diff_by_type() {
    let old = conds(&[("Ready", "False"), ("Synced", "True")]);
    let new = conds(&[("Ready", "True"), ("Synced", "True")]);
    assert_eq!(
        Diff::between(&old, &new).to_string(),
        "status.conditions[Ready].status: \"False\" → \"True\""
    );
    // reorder only: nothing
    let shuffled = conds(&[("Synced", "True"), ("Ready", "False")]);
    assert!(Diff::between(&old, &shuffled).is_empty());
    // added and removed by key, wherever they sit
    let new = conds(&[("Progressing", "True"), ("Ready", "False")]);
    let d = Diff::between(&old, &new);
    assert_eq!(
        d.to_string(),
        "- status.conditions[Synced]: {\"type\":\"Synced\",\"status\":\"True\"}\n\
         + status.conditions[Progressing]: {\"type\":\"Progressing\",\"status\":\"True\"}"
    );
    assert_eq!(d.changes[0].op, Op::Removed);
    assert_eq!(d.changes[1].op, Op::Added);
    let mut v = old.clone();
    d.apply_to(&mut v).unwrap();
    assert_eq!(v, conds(&[("Ready", "False"), ("Progressing", "True")]));
}

#[test]
fn builtin_keys_of_pod_templates() {
    let pod = |image: &str, port: u16, mount: &str| {
        json!({"spec": {"template": {"spec": {
            "containers": [
                {"name": "sidecar", "image": "s:1"},
                {"name": "app", "image": image,
                 "ports": [{"containerPort": port, "protocol": "TCP"}],
                 "env": [{"name": "A", "value": "1"}],
                 "volumeMounts": [{"name": "data", "mountPath": mount}]}
            ],
            "volumes": [{"name": "data", "emptyDir": {}}]
        }}}})
    };
    let d = Diff::between(&pod("app:1", 8080, "/data"), &pod("app:2", 9090, "/data"));
    assert_eq!(
        d.paths(),
        [
            "spec.template.spec.containers[app].image",
            "spec.template.spec.containers[app].ports[containerPort=8080]",
            "spec.template.spec.containers[app].ports[containerPort=9090]",
        ]
    );
    let d = Diff::between(&pod("app:1", 8080, "/data"), &pod("app:1", 8080, "/var/data"));
    assert_eq!(
        d.paths(),
        [
            r#"spec.template.spec.containers[app].volumeMounts[mountPath="/data"]"#,
            r#"spec.template.spec.containers[app].volumeMounts[mountPath="/var/data"]"#,
        ]
    );
    // Service ports by port; ownerReferences by uid; finalizers as a set
    let d = Diff::between(
        &json!({"metadata": {"ownerReferences": [{"uid": "u-1", "name": "a"}], "finalizers": ["a.io/x", "b"]},
                "spec": {"ports": [{"port": 80, "targetPort": 8080}]}}),
        &json!({"metadata": {"ownerReferences": [{"uid": "u-1", "name": "b"}], "finalizers": ["b", "c.io/y"]},
                "spec": {"ports": [{"port": 80, "targetPort": 9090}]}}),
    );
    assert_eq!(
        d.paths(),
        [
            r#"metadata.ownerReferences["u-1"].name"#.replace(r#"["u-1"]"#, "[u-1]"),
            r#"metadata.finalizers[="a.io/x"]"#.to_string(),
            r#"metadata.finalizers[="c.io/y"]"#.to_string(),
            "spec.ports[port=80].targetPort".to_string(),
        ]
    );
}

#[test]
fn compound_and_fallback_keys() {
    // Two ports 53 (TCP and UDP): containerPort alone is not unique, so both fields are used.
    let dns = |udp_name: &str| {
        json!({"ports": [
            {"containerPort": 53, "protocol": "TCP", "name": "dns-tcp"},
            {"containerPort": 53, "protocol": "UDP", "name": udp_name}
        ]})
    };
    assert_eq!(
        Diff::between(&dns("dns"), &dns("dns-udp")).paths(),
        ["ports[containerPort=53,protocol=UDP].name"]
    );
    // Elements without the key, or with duplicate keys, fall back to indices.
    let old = json!({"status": {"conditions": [{"status": "a"}, {"type": "X", "status": "b"}]}});
    let new = json!({"status": {"conditions": [{"status": "c"}, {"type": "X", "status": "b"}]}});
    assert_eq!(Diff::between(&old, &new).paths(), ["status.conditions[0].status"]);
    let old = conds(&[("A", "1"), ("A", "2")]);
    let new = conds(&[("A", "1"), ("A", "3")]);
    assert_eq!(Diff::between(&old, &new).paths(), ["status.conditions[1].status"]);
    // Non-scalar key values too.
    let old = json!({"env": [{"name": {"x": 1}, "value": "a"}]});
    let new = json!({"env": [{"name": {"x": 1}, "value": "b"}]});
    assert_eq!(Diff::between(&old, &new).paths(), ["env[0].value"]);
}

#[test]
fn odd_key_values_are_quoted_and_parse_back() {
    let values = [
        json!("Ready"),
        json!("a.b"),
        json!("x]y"),
        json!("a=b,c=d"),
        json!("q\"uote"),
        json!(""),
        json!("true"),
        json!("null"),
        json!("8080"),
        json!("é"),
        json!(8080),
        json!(-1.5),
        json!(true),
    ];
    for v in &values {
        let old = json!({"status": {"conditions": [{"type": v, "status": "1"}]}});
        let new = json!({"status": {"conditions": [{"type": v, "status": "2"}]}});
        let d = Diff::between(&old, &new);
        assert_eq!(d.len(), 1, "{v}");
        let path = &d.changes[0].path;
        let segs = parse_path(path, false).unwrap_or_else(|e| panic!("{path}: {e}"));
        let ParsedSeg::Select(sel) = &segs[2] else {
            panic!("{path} has no selector")
        };
        assert_eq!(&sel[0].1, v, "{path}");
        let mut applied = old.clone();
        d.apply_to(&mut applied).unwrap();
        assert_eq!(applied, new, "{path}");
    }
    let d = Diff::between(&conds(&[("a.b", "1")]), &conds(&[("a.b", "2")]));
    assert_eq!(d.paths(), [r#"status.conditions[type="a.b"].status"#]);
    // a set of numbers
    let keys = ListKeys::default().set("codes").unwrap();
    let d = Diff::between_with(&json!({"codes": [1, 2]}), &json!({"codes": [2, 3]}), &keys);
    assert_eq!(d.paths(), ["codes[=1]", "codes[=3]"]);
}

#[test]
fn selector_syntax_errors() {
    for bad in [
        "a[true]",
        "a[x=]",
        "a[x=1,]",
        "a[x=1,y]",
        "a[=]",
        "a[=[1]]",
        "a[x={}]",
        "a[Ready",
        "a[x=\"unterminated]",
    ] {
        assert!(parse_path(bad, false).is_err(), "{bad} should not parse");
    }
    for good in [
        "a[Ready]",
        "a[type=\"Ready\"]",
        "a[=1]",
        "a[=\"a.b\"]",
        "a[k=1,\"odd.name\"=x]",
        "a[\"odd.name\"=x]",
    ] {
        assert!(parse_path(good, false).is_ok(), "{good} should parse");
    }
}

#[test]
fn keys_from_a_crd_schema() {
    let schema = json!({"type": "object", "properties": {
        "spec": {"type": "object", "properties": {
            "routes": {"type": "array", "x-kubernetes-list-type": "map",
                       "x-kubernetes-list-map-keys": ["host", "path"],
                       "items": {"type": "object", "properties": {
                           "backends": {"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}}}}},
            "env": {"type": "array", "x-kubernetes-list-type": "atomic", "items": {"type": "object"}},
            "groups": {"type": "object", "additionalProperties": {"type": "object", "properties": {
                "members": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["id"],
                            "items": {"type": "object"}}}}}
        }},
        "status": {"type": "object", "properties": {"conditions": {"type": "array", "items": {"type": "object"}}}}
    }});
    let keys = ListKeys::from_schema(&schema);
    assert_eq!(
        keys.list_type("spec.routes").unwrap(),
        ListType::Map(vec![vec!["host".into(), "path".into()]])
    );
    assert_eq!(keys.list_type("spec.routes[*].backends").unwrap(), ListType::Set);
    // atomic in the schema beats the built-in `env` key
    assert_eq!(keys.list_type("spec.env").unwrap(), ListType::Atomic);
    assert_eq!(
        keys.list_type("env").unwrap(),
        ListType::Map(vec![vec!["name".into()]])
    );
    assert_eq!(
        keys.list_type(r#"spec.groups["any.key"].members"#).unwrap(),
        ListType::Map(vec![vec!["id".into()]])
    );
    // no list type: built-in conditions by type
    assert_eq!(
        keys.list_type("status.conditions").unwrap(),
        ListType::Map(vec![vec!["type".into()]])
    );

    let old = json!({"spec": {
        "routes": [{"host": "a", "path": "/", "backends": ["x", "y"]}, {"host": "a", "path": "/api", "backends": []}],
        "groups": {"g.1": {"members": [{"id": 1, "role": "r"}]}}
    }});
    let new = json!({"spec": {
        "routes": [{"host": "a", "path": "/api", "backends": []}, {"host": "a", "path": "/", "backends": ["y", "z"]}],
        "groups": {"g.1": {"members": [{"id": 1, "role": "w"}]}}
    }});
    let d = Diff::between_with(&old, &new, &keys);
    assert_eq!(
        d.to_string(),
        "- spec.routes[host=a,path=\"/\"].backends[x]: \"x\"\n\
         + spec.routes[host=a,path=\"/\"].backends[z]: \"z\"\n\
         spec.groups[\"g.1\"].members[id=1].role: \"r\" → \"w\""
    );
    let mut v = old.clone();
    d.apply_to_with(&mut v, &keys).unwrap();
    assert_eq!(canonical(&v, &keys), canonical(&new, &keys));
    // from_crd picks the version
    let crd = json!({"spec": {"versions": [
        {"name": "v1alpha1"},
        {"name": "v1", "schema": {"openAPIV3Schema": schema}}
    ]}});
    assert_eq!(ListKeys::from_crd(&crd, "v1"), keys);
    assert_eq!(ListKeys::from_crd(&crd, "v1alpha1"), ListKeys::default());
    assert!(ListKeys::default().map("a[0].b", &["k"]).is_err());
}

#[test]
fn filters_and_touches_see_keyed_elements() {
    let old = json!({"status": {"conditions": [
        {"type": "Ready", "status": "False", "lastTransitionTime": "t1"},
        {"type": "Synced", "status": "True", "lastTransitionTime": "t1"}]}});
    let new = json!({"status": {"conditions": [
        {"type": "Ready", "status": "True", "lastTransitionTime": "t2"},
        {"type": "Synced", "status": "True", "lastTransitionTime": "t2"}]}});
    let f = Filter::default().ignore("status.conditions[*].lastTransitionTime");
    assert_eq!(
        Diff::between_with(&old, &new, &f).paths(),
        ["status.conditions[Ready].status"]
    );
    let f = Filter::default().ignore("status.conditions[type=Synced]");
    assert_eq!(
        Diff::between_with(&old, &new, &f).paths(),
        [
            "status.conditions[Ready].status",
            "status.conditions[Ready].lastTransitionTime"
        ]
    );
    assert!(f.is_ignored("status.conditions[Synced].status"));
    let d = Diff::between(&old, &new);
    assert!(d.touches("status.conditions[Synced].lastTransitionTime"));
    assert!(!d.touches("status.conditions[Synced].status"));
    assert!(d.only_under(&["status.conditions[*]"]));
    // ancestor added whole: found inside by the built-in key
    let d = Diff::between(&json!({}), &old);
    assert!(d.touches("status.conditions[Ready].status"));
    assert!(!d.touches("status.conditions[Gone]"));
}

#[test]
fn ten_thousand_items_diff_fast() {
    let n = 10_000;
    let old: Vec<Value> = (0..n)
        .map(|i| json!({"type": format!("t{i}"), "status": "a"}))
        .collect();
    // reversed, with every 1000th element changed, one removed and one added
    let mut new: Vec<Value> = old.iter().rev().cloned().collect();
    for (i, v) in new.iter_mut().enumerate() {
        if i % 1000 == 0 {
            v["status"] = json!("b");
        }
    }
    new.retain(|v| v["type"] != "t5");
    new.push(json!({"type": "extra", "status": "c"}));
    let (old, new) = (
        json!({"status": {"conditions": old}}),
        json!({"status": {"conditions": new}}),
    );
    let start = std::time::Instant::now();
    let d = Diff::between(&old, &new);
    let took = start.elapsed();
    assert_eq!(d.len(), 12);
    assert!(took < std::time::Duration::from_secs(2), "{took:?}");
    let mut v = old.clone();
    d.apply_to(&mut v).unwrap();
    assert_eq!(
        canonical(&v, ListKeys::builtin()),
        canonical(&new, ListKeys::builtin())
    );
}

// ---- rendering ----

#[test]
fn long_strings_show_a_window_around_the_change() {
    let big: String = (0..2_900_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let mut changed = big.clone();
    changed.replace_range(1_000_000..1_000_001, "X");
    let d = Diff::between(
        &json!({"data": {"blob": big}}),
        &json!({"data": {"blob": changed}}),
    );
    let line = d.to_string();
    assert!(line.len() < 160, "{} chars: {line}", line.len());
    assert!(line.starts_with("data.blob: \"…"), "{line}");
    assert!(line.contains("X"), "{line}");
    assert!(line.contains("(2.9 MB)"), "{line}");
    // the structured change keeps everything
    assert_eq!(
        d.changes[0].new.as_ref().and_then(Value::as_str).map(str::len),
        Some(2_900_000)
    );

    // short values are shown whole, as before
    let d = none(&json!({"a": "0123456789"}), &json!({"a": "x"}));
    assert_eq!(d.to_string(), "a: \"0123456789\" → \"x\"");

    // a change at the very start and at the very end
    let s = "y".repeat(500);
    let d = none(&json!(format!("A{s}")), &json!(format!("B{s}")));
    assert_eq!(
        d.to_string(),
        format!(
            ": \"A{}…\" (501 B) → \"B{}…\" (501 B)",
            "y".repeat(16),
            "y".repeat(16)
        )
    );
    let d = none(&json!(format!("{s}A")), &json!(format!("{s}")));
    assert_eq!(
        d.to_string(),
        format!(
            ": \"…{}A\" (501 B) → \"…{}\" (500 B)",
            "y".repeat(16),
            "y".repeat(16)
        )
    );
}

#[test]
fn multi_line_strings_show_the_changed_line() {
    let old: String = (1..=200).map(|i| format!("line number {i}\n")).collect();
    let new = old.replace("line number 42\n", "line number 42 (edited)\n");
    let d = none(
        &json!({"data": {"script": old}}),
        &json!({"data": {"script": new}}),
    );
    assert_eq!(
        d.to_string(),
        "data.script: line 42: \"…line number 42\" (14 B) (201 lines) → line 42: \"…line number 42 (edited)\" (23 B) (201 lines)"
            .replace("\"…line number 42\" (14 B)", "\"line number 42\"")
            .replace("\"…line number 42 (edited)\" (23 B)", "\"line number 42 (edited)\"")
    );
    let more = old.replace("line number 42\n", "x\ny\nz\n");
    let d = none(&json!(old), &json!(more));
    assert_eq!(
        d.to_string(),
        ": line 42: \"line number 42\" (201 lines) → line 42: \"x\" (+2 more changed) (203 lines)"
    );
}

#[test]
fn big_values_are_cut_with_their_size() {
    let big: Vec<Value> = (0..1000).map(|i| json!({"name": format!("n{i}")})).collect();
    let d = none(&json!({}), &json!({"spec": {"items": big}}));
    let line = d.to_string();
    assert!(line.len() < 120, "{line}");
    assert!(
        line.starts_with("+ spec: {\"items\":[{\"name\":\"n0\"}"),
        "{line}"
    );
    assert!(line.ends_with("… (15.9 kB)"), "{line}");
    let (old, new) = d.changes[0].short_values();
    assert_eq!(old, None);
    assert!(new.is_some_and(|n| n.len() < 100));
    // precision still cuts plainly
    let d = none(&json!({"a": "0123456789"}), &json!({"a": "x"}));
    assert_eq!(format!("{d:.4}"), "a: \"012… → \"x\"");
}

// ---- property tests for keyed lists ----

/// Sorts every list that `keys` identifies by key (as the diff sees it for that list alone),
/// so two values that differ only in the order of keyed lists compare equal.
fn canonical(v: &Value, keys: &ListKeys) -> Value {
    fn go<'v>(v: &'v Value, keys: &ListKeys, segs: &mut Vec<Seg<'v>>) -> Value {
        match v {
            Value::Object(m) => Value::Object(
                m.iter()
                    .map(|(k, c)| {
                        segs.push(Seg::Key(k));
                        let c = go(c, keys, segs);
                        segs.pop();
                        (k.clone(), c)
                    })
                    .collect(),
            ),
            Value::Array(a) => {
                let keyed = match keys.lookup(segs) {
                    ListType::Atomic => None,
                    ListType::Set => set_keys(a),
                    ListType::Map(c) => c.iter().find_map(|f| map_keys(a, f)),
                };
                let mut items: Vec<(Option<String>, Value)> = Vec::new();
                for (i, c) in a.iter().enumerate() {
                    segs.push(Seg::Index(i));
                    let canon = go(c, keys, segs);
                    segs.pop();
                    items.push((keyed.as_ref().map(|k| k[i].0.clone()), canon));
                }
                if keyed.is_some() {
                    items.sort_by(|x, y| x.0.cmp(&y.0));
                }
                Value::Array(items.into_iter().map(|(_, v)| v).collect())
            }
            other => other.clone(),
        }
    }
    go(v, keys, &mut Vec::new())
}

fn arb_keyed_key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("conditions".to_string()),
        Just("type".to_string()),
        Just("status".to_string()),
        Just("finalizers".to_string()),
        Just("ports".to_string()),
        Just("containerPort".to_string()),
        Just("protocol".to_string()),
        Just("name".to_string()),
        "[a-c]{1,2}",
    ]
}

fn arb_keyed_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (0i64..4).prop_map(Value::from),
        "[A-C.]{0,2}".prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((arb_keyed_key(), inner), 0..5)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// `a` with elements of its lists shuffled and some edits: what a server does to keyed lists.
fn arb_keyed_pair() -> impl Strategy<Value = (Value, Value)> {
    (arb_keyed_json(), arb_keyed_json(), any::<u64>(), any::<u64>()).prop_map(|(a, other, seed, shuffle)| {
        let mut b = a.clone();
        mutate(&mut b, &other, seed);
        reorder(&mut b, shuffle);
        (a, b)
    })
}

fn reorder(v: &mut Value, seed: u64) {
    match v {
        Value::Array(a) => {
            if a.len() > 1 {
                let k = (seed as usize) % a.len();
                a.rotate_left(k);
            }
            for (i, c) in a.iter_mut().enumerate() {
                reorder(c, seed.rotate_left(i as u32 + 1));
            }
        }
        Value::Object(m) => {
            for (i, c) in m.values_mut().enumerate() {
                reorder(c, seed.rotate_left(i as u32 + 7));
            }
        }
        _ => {}
    }
}

fn arb_scalar_key() -> impl Strategy<Value = Value> {
    prop_oneof![
        ".{0,6}".prop_map(Value::String),
        "[a-zA-Z_][a-zA-Z0-9_-]{0,5}".prop_map(Value::String),
        any::<i64>().prop_map(Value::from),
        (-1e9f64..1e9).prop_map(Value::from),
        any::<bool>().prop_map(Value::Bool),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn keyed_apply_yields_new_modulo_keyed_order((a, b) in arb_keyed_pair()) {
        let keys = ListKeys::builtin();
        let d = none(&a, &b);
        let mut v = a.clone();
        d.apply_to(&mut v).unwrap();
        prop_assert_eq!(canonical(&v, keys), canonical(&b, keys));
        prop_assert_eq!(d.is_empty(), canonical(&a, keys) == canonical(&b, keys));
        for p in d.paths() {
            prop_assert!(parse_path(p, false).is_ok(), "{} does not parse", p);
        }
        for line in d.to_string().lines() {
            prop_assert!(line.chars().count() <= 400, "{}", line);
        }
    }

    #[test]
    fn reordering_keyed_lists_is_no_change(types in prop::collection::hash_set("[A-Za-z.]{1,5}", 0..20), rot in any::<usize>()) {
        let items: Vec<Value> = types.iter().map(|t| json!({"type": t, "status": "True"})).collect();
        let mut rotated = items.clone();
        if !rotated.is_empty() {
            let k = rot % rotated.len();
            rotated.rotate_left(k);
        }
        let old = json!({"status": {"conditions": items}, "metadata": {"finalizers": types.iter().collect::<Vec<_>>()}});
        let mut fin: Vec<&String> = types.iter().collect();
        fin.reverse();
        let new = json!({"status": {"conditions": rotated}, "metadata": {"finalizers": fin}});
        prop_assert!(Diff::between(&old, &new).is_empty());
    }

    #[test]
    fn selectors_round_trip(fields in prop::collection::vec(("[a-z]{1,3}|.{0,3}", arb_scalar_key()), 1..4)) {
        let named: Vec<(Option<String>, Value)> = fields.into_iter().map(|(n, v)| (Some(n), v)).collect();
        for sel in [named.clone(), vec![(None, named[0].1.clone())]] {
            let mut p = "a".to_string();
            push_selector(&mut p, &sel);
            let segs = parse_path(&p, false).map_err(|e| TestCaseError::fail(format!("{p}: {e}")))?;
            prop_assert_eq!(segs.len(), 2);
            let ParsedSeg::Select(back) = &segs[1] else {
                return Err(TestCaseError::fail(format!("{p} has no selector")));
            };
            prop_assert_eq!(back.len(), sel.len());
            for ((n1, v1), (n2, v2)) in sel.iter().zip(back) {
                prop_assert_eq!(v1, v2, "{}", p);
                if n2.is_some() {
                    prop_assert_eq!(n1, n2, "{}", p);
                }
            }
        }
    }

    #[test]
    fn rendering_stays_short(prefix in "[ -~]{0,300}", a in "[ -~]{0,50}", b in "[ -~]{0,50}", suffix in "[ -~]{0,300}") {
        let old = json!({"k": format!("{prefix}{a}{suffix}")});
        let new = json!({"k": format!("{prefix}{b}{suffix}")});
        for line in none(&old, &new).to_string().lines() {
            prop_assert!(line.chars().count() <= 200, "{} chars: {}", line.chars().count(), line);
        }
    }
}
