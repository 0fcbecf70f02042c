//! `crwatch::ksm`: kube-state-metrics' custom-resource-state configurations evaluated against
//! objects in a store. Every example of kube-state-metrics'
//! `docs/metrics/extend/customresourcestate-metrics.md` is run against the documentation's
//! sample object, and the output is compared with the output the documentation shows. Where
//! the documentation's output disagrees with kube-state-metrics' code (the code is what runs),
//! the test says so and follows the code.

use std::collections::BTreeMap;

use crwatch::ksm::{Collector, Config, ERRORS_METRIC};
use crwatch::store::Store;
use kube::api::DynamicObject;
use serde_json::{Value, json};

/// The documentation's sample object (`apiVersion: myteam.io/vl` sic).
const FOO: &str = r#"
kind: Foo
apiVersion: myteam.io/vl
metadata:
    annotations:
        bar: baz
        qux: quxx
    labels:
        foo: bar
    name: foo
spec:
    version: v1.2.3
    order:
        - id: 1
          value: true
        - id: 3
          value: false
    replicas: 1
    refs:
        - my_other_foo
        - foo_2
        - foo_with_extensions
status:
    phase: Pending
    active:
        type-a: 1
        type-b: 3
    conditions:
        - name: a
          value: 45
        - name: b
          value: 66
    sub:
        type-a:
            active: 1
            ready: 2
        type-b:
            active: 3
            ready: 4
    uptime: 43.21
"#;

fn yaml(text: &str) -> Value {
    serde_saphyr::from_str(text).expect("test YAML parses")
}

fn object(v: Value) -> DynamicObject {
    serde_json::from_value(v).expect("test object decodes")
}

fn collector(config: &str, objects: Vec<Value>) -> Collector {
    let config = Config::from_value(yaml(config)).expect("config is valid");
    let store = Store::<DynamicObject>::new();
    for o in objects {
        store.apply(object(o));
    }
    let stores = config.resources().iter().map(|_| store.clone()).collect();
    Collector::new(config, stores).expect("one store per resource")
}

type Sample = (String, BTreeMap<String, String>, String);

/// Parse series lines as the documentation writes them (spaces after commas, a trailing
/// comma, lines wrapped inside the braces).
fn parse_series(text: &str) -> Vec<Sample> {
    let joined = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = vec![];
    let mut rest = joined.as_str();
    while let Some(open) = rest.find('{') {
        let name = rest[..open].trim().to_string();
        let close = rest[open..].find('}').map(|c| open + c).expect("closing brace");
        let mut labels = BTreeMap::new();
        for pair in rest[open + 1..close].split(',') {
            let pair = pair.trim();
            if pair.is_empty() {
                continue;
            }
            let (k, v) = pair.split_once('=').expect("label pair");
            labels.insert(k.trim().to_string(), v.trim().trim_matches('"').to_string());
        }
        rest = &rest[close + 1..];
        let end = rest.find('\n').unwrap_or(rest.len());
        out.push((name, labels, rest[..end].trim().to_string()));
        rest = &rest[end..];
    }
    out
}

fn series_of(c: &Collector) -> Vec<Sample> {
    let text = c.render();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with(ERRORS_METRIC))
        .flat_map(parse_series)
        .collect()
}

fn errors_of(c: &Collector) -> f64 {
    c.render()
        .lines()
        .filter(|l| l.starts_with(&format!("{ERRORS_METRIC}{{")))
        .map(|l| {
            l.rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        })
        .sum()
}

fn sorted(mut v: Vec<Sample>) -> Vec<Sample> {
    v.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
    v
}

const GVK_FOO: &str = r#"
    - groupVersionKind:
        group: myteam.io
        kind: "Foo"
        version: "v1"
"#;

#[test]
fn single_value_gauge_as_documented() {
    let c = collector(
        &format!(
            "kind: CustomResourceStateMetrics\nspec:\n  resources:{GVK_FOO}      metrics:\n        - name: \"uptime\"\n          help: \"Foo uptime\"\n          each:\n            type: Gauge\n            gauge:\n              path: [status, uptime]\n"
        ),
        vec![yaml(FOO)],
    );
    let documented = r#"kube_customresource_uptime{customresource_group="myteam.io", customresource_kind="Foo", customresource_version="v1"} 43.21"#;
    assert_eq!(series_of(&c), parse_series(documented));
    // The exact text, header included.
    assert!(c.render().starts_with(
        "# HELP kube_customresource_uptime Foo uptime\n# TYPE kube_customresource_uptime gauge\n\
         kube_customresource_uptime{customresource_group=\"myteam.io\",customresource_kind=\"Foo\",customresource_version=\"v1\"} 43.21\n"
    ));
    assert_eq!(errors_of(&c), 0.0);
}

const KITCHEN_SINK: &str = r#"
kind: CustomResourceStateMetrics
spec:
  resources:
    - groupVersionKind:
        group: myteam.io
        kind: "Foo"
        version: "v1"
      # labels can be added to all metrics from a resource
      commonLabels:
        crd_type: "foo"
      labelsFromPath:
        name: [metadata, name]
      metrics:
        - name: "ready_count"
          help: "Number Foo Bars ready"
          each:
            type: Gauge
            gauge:
              path: [status, sub]
              labelFromKey: type
              labelsFromPath:
                active: [active]
              valueFrom: [ready]
          commonLabels:
            custom_metric: "yes"
          labelsFromPath:
            "*": [metadata, labels]
            "lorem_*": [metadata, annotations]
            "**": [metadata, annotations]
            name: [metadata, name]
            foo: [metadata, labels, foo]
"#;

#[test]
fn kitchen_sink_as_kube_state_metrics_computes_it() {
    let c = collector(KITCHEN_SINK, vec![yaml(FOO)]);
    let got = series_of(&c);
    let documented = parse_series(
        r#"kube_customresource_ready_count{customresource_group="myteam.io", customresource_kind="Foo", 
customresource_version="v1", active="1",custom_metric="yes",foo="bar",name="foo",bar="baz",qux="quxx",type="type-a",
lorem_bar="baz",lorem_qux="quxx",} 2
kube_customresource_ready_count{customresource_group="myteam.io", customresource_kind="Foo", 
customresource_version="v1", active="3",custom_metric="yes",foo="bar",name="foo",bar="baz",qux="quxx",type="type-b",
lorem_bar="baz",lorem_qux="quxx",} 4"#,
    );
    assert_eq!(got.len(), documented.len());
    for ((gn, gl, gv), (dn, dl, dv)) in got.iter().zip(&documented) {
        assert_eq!((gn, gv), (dn, dv));
        // The documentation's output is not what kube-state-metrics' code produces in two
        // places; the code runs, so crwatch follows it:
        // - the resource's commonLabels (`crd_type: foo`) are added (`compile` merges them);
        // - `"**"` prefixes the copied keys with `*` (`star[:len(star)-1] + k`), which
        //   SanitizeLabelName turns into `_bar`/`_qux`, not `bar`/`qux`.
        let mut expected = dl.clone();
        for (k, v) in [("crd_type", "foo"), ("_bar", "baz"), ("_qux", "quxx")] {
            expected.insert(k.into(), v.into());
        }
        expected.remove("bar");
        expected.remove("qux");
        assert_eq!(gl, &expected);
    }
}

#[test]
fn non_map_arrays_as_documented() {
    let c = collector(
        r#"
kind: CustomResourceStateMetrics
spec:
  resources:
    - groupVersionKind:
        group: myteam.io
        kind: "Foo"
        version: "v1"
      labelsFromPath:
        name: [metadata, name]
      metrics:
        - name: "ref_info"
          help: "Reference to other Foo"
          each:
            type: Info
            info:
              path: [spec, refs]
              labelsFromPath:
                ref: []
"#,
        vec![yaml(FOO)],
    );
    let documented = parse_series(
        r#"kube_customresource_ref_info{customresource_group="myteam.io", customresource_kind="Foo", customresource_version="v1", name="foo",ref="my_other_foo"} 1
kube_customresource_ref_info{customresource_group="myteam.io", customresource_kind="Foo", customresource_version="v1", name="foo",ref="foo_2"} 1
kube_customresource_ref_info{customresource_group="myteam.io", customresource_kind="Foo", customresource_version="v1", name="foo",ref="foo_with_extensions"} 1"#,
    );
    let got = series_of(&c);
    assert_eq!(sorted(got.clone()), sorted(documented));
    // kube-state-metrics sorts an object's series by their own labels.
    let refs: Vec<&str> = got.iter().map(|(_, l, _)| l["ref"].as_str()).collect();
    assert_eq!(refs, ["foo_2", "foo_with_extensions", "my_other_foo"]);
    // An Info family is written as a gauge in the text format, as kube-state-metrics does.
    assert!(c.render().contains("# TYPE kube_customresource_ref_info gauge\n"));
}

fn vpa(name: &str, namespace: &str, target_memory: Value, cpu: &str) -> Value {
    json!({
        "apiVersion": "autoscaling.k8s.io/v1",
        "kind": "VerticalPodAutoscaler",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "hamster"}},
        "status": {"recommendation": {"containerRecommendations": [{
            "containerName": "hamster",
            "lowerBound": {"cpu": cpu, "memory": "123456"},
            "target": {"cpu": cpu, "memory": target_memory},
        }]}}
    })
}

#[test]
fn vpa_recommendations_as_documented() {
    let c = collector(
        r#"
kind: CustomResourceStateMetrics
spec:
  resources:
    - groupVersionKind:
        group: autoscaling.k8s.io
        kind: "VerticalPodAutoscaler"
        version: "v1"
      labelsFromPath:
        verticalpodautoscaler: [metadata, name]
        namespace: [metadata, namespace]
        target_api_version: [apiVersion]
        target_kind: [spec, targetRef, kind]
        target_name: [spec, targetRef, name]
      metrics:
        - name: "vpa_containerrecommendations_target_memory"
          help: "VPA container recommendations for memory (in bytes)."
          each:
            type: Gauge
            gauge:
              path: [status, recommendation, containerRecommendations]
              valueFrom: [target, memory]
              labelsFromPath:
                container: [containerName]
        - name: "vpa_containerrecommendations_target_cpu"
          help: "VPA container recommendations for cpu (in cores)."
          each:
            type: Gauge
            gauge:
              path: [status, recommendation, containerRecommendations]
              valueFrom: [target, cpu]
              labelsFromPath:
                container: [containerName]
"#,
        vec![vpa("hamster-vpa", "default", json!("104857600"), "100m")],
    );
    let text = c.render();
    let expected = "\
# HELP kube_customresource_vpa_containerrecommendations_target_memory VPA container recommendations for memory (in bytes).
# TYPE kube_customresource_vpa_containerrecommendations_target_memory gauge
kube_customresource_vpa_containerrecommendations_target_memory{container=\"hamster\",customresource_group=\"autoscaling.k8s.io\",customresource_kind=\"VerticalPodAutoscaler\",customresource_version=\"v1\",namespace=\"default\",target_api_version=\"autoscaling.k8s.io/v1\",target_kind=\"Deployment\",target_name=\"hamster\",verticalpodautoscaler=\"hamster-vpa\"} 1.048576e+08
# HELP kube_customresource_vpa_containerrecommendations_target_cpu VPA container recommendations for cpu (in cores).
# TYPE kube_customresource_vpa_containerrecommendations_target_cpu gauge
kube_customresource_vpa_containerrecommendations_target_cpu{container=\"hamster\",customresource_group=\"autoscaling.k8s.io\",customresource_kind=\"VerticalPodAutoscaler\",customresource_version=\"v1\",namespace=\"default\",target_api_version=\"autoscaling.k8s.io/v1\",target_kind=\"Deployment\",target_name=\"hamster\",verticalpodautoscaler=\"hamster-vpa\"} 0.1
";
    assert!(text.starts_with(expected), "got:\n{text}");
    // A quantity as a number or as a string with a binary suffix reads the same.
    let c2 = collector(
        &text_of_vpa_config(),
        vec![vpa("hamster-vpa", "default", json!("100Mi"), "100m")],
    );
    assert!(c2.render().contains("} 1.048576e+08\n"));
}

fn text_of_vpa_config() -> String {
    r#"
kind: CustomResourceStateMetrics
spec:
  resources:
    - groupVersionKind: {group: autoscaling.k8s.io, kind: VerticalPodAutoscaler, version: v1}
      metrics:
        - name: "vpa_containerrecommendations_target_memory"
          help: "memory"
          each:
            type: Gauge
            gauge:
              path: [status, recommendation, containerRecommendations]
              valueFrom: [target, memory]
"#
    .to_string()
}

#[test]
fn same_metric_name_with_different_labels_shares_one_header() {
    let c = collector(
        r#"
kind: CustomResourceStateMetrics
spec:
  resources:
    - groupVersionKind:
        group: autoscaling.k8s.io
        kind: "VerticalPodAutoscaler"
        version: "v1"
      labelsFromPath:
        verticalpodautoscaler: [metadata, name]
        namespace: [metadata, namespace]
        target_api_version: [apiVersion]
        target_kind: [spec, targetRef, kind]
        target_name: [spec, targetRef, name]
      metrics:
        - name: "verticalpodautoscaler_status_recommendation_containerrecommendations_lowerbound"
          help: "Minimum memory resources the container can use before the VerticalPodAutoscaler updater evicts it."
          commonLabels:
            unit: "byte"
            resource: "memory"
          each:
            type: Gauge
            gauge:
              path: [status, recommendation, containerRecommendations]
              labelsFromPath:
                container: [containerName]
              valueFrom: [lowerBound, memory]
        - name: "verticalpodautoscaler_status_recommendation_containerrecommendations_lowerbound"
          help: "Minimum cpu resources the container can use before the VerticalPodAutoscaler updater evicts it."
          commonLabels:
            unit: "core"
            resource: "cpu"
          each:
            type: Gauge
            gauge:
              path: [status, recommendation, containerRecommendations]
              labelsFromPath:
                container: [containerName]
              valueFrom: [lowerBound, cpu]
"#,
        vec![vpa("vpa-example", "namespace-example", json!("1"), "100m")],
    );
    let name =
        "kube_customresource_verticalpodautoscaler_status_recommendation_containerrecommendations_lowerbound";
    // The documentation's target_api_version="apps/v1" came from another path than the
    // configured [apiVersion]; the object's own apiVersion is what that path reads.
    let documented = format!(
        r#"{name}{{container="consumer",customresource_group="autoscaling.k8s.io",customresource_kind="VerticalPodAutoscaler",customresource_version="v1",namespace="namespace-example",resource="memory",target_api_version="autoscaling.k8s.io/v1",target_kind="Deployment",target_name="hamster",unit="byte",verticalpodautoscaler="vpa-example"}} 123456
{name}{{container="consumer",customresource_group="autoscaling.k8s.io",customresource_kind="VerticalPodAutoscaler",customresource_version="v1",namespace="namespace-example",resource="cpu",target_api_version="autoscaling.k8s.io/v1",target_kind="Deployment",target_name="hamster",unit="core",verticalpodautoscaler="vpa-example"}} 0.1"#
    )
    .replace("consumer", "hamster");
    assert_eq!(series_of(&c), parse_series(&documented));
    let text = c.render();
    // kube-state-metrics removes the second HELP/TYPE of a name (a second one is invalid in
    // the text format); the first family's help is kept.
    assert_eq!(text.matches(&format!("# HELP {name} ")).count(), 1);
    assert_eq!(text.matches(&format!("# TYPE {name} gauge")).count(), 1);
}

#[test]
fn status_conditions_as_documented() {
    let c = collector(
        r#"
kind: CustomResourceStateMetrics
spec:
  resources:
  - groupVersionKind:
      group: myteam.io
      kind: "Foo"
      version: "v1"
    labelsFromPath:
      name:
      - metadata
      - name
      namespace:
      - metadata
      - namespace
    metrics:
    - name: "foo_status"
      help: "status condition "
      each:
        type: Gauge
        gauge:
          path: [status, conditions]
          labelsFromPath:
            type: ["type"]
          valueFrom: ["status"]
"#,
        vec![json!({
            "apiVersion": "myteam.io/v1", "kind": "Foo",
            "metadata": {"name": "foo", "namespace": "ns"},
            "status": {"conditions": [
                {"lastTransitionTime": "2019-10-22T16:29:31Z", "status": "True", "type": "Ready"},
                {"lastTransitionTime": "2019-10-22T16:29:31Z", "status": "Unknown", "type": "Synced"},
                {"lastTransitionTime": "2019-10-22T16:29:31Z", "status": "False", "type": "Degraded"}
            ]}
        })],
    );
    let got = series_of(&c);
    // Documented: `...{..., type="Ready"} 1.0` (the documentation leaves out name and
    // namespace, which the resource's labelsFromPath adds).
    let ready = got
        .iter()
        .find(|(_, l, _)| l["type"] == "Ready")
        .expect("Ready series");
    assert_eq!(ready.2, "1");
    assert_eq!(ready.1["name"], "foo");
    assert_eq!(ready.1["namespace"], "ns");
    let values: Vec<(&str, &str)> = got
        .iter()
        .map(|(_, l, v)| (l["type"].as_str(), v.as_str()))
        .collect();
    assert_eq!(values, [("Degraded", "0"), ("Ready", "1"), ("Synced", "0")]);
    // The help text is written as given, trailing space included.
    assert!(
        c.render()
            .starts_with("# HELP kube_customresource_foo_status status condition \n")
    );
}

#[test]
fn stateset_as_documented() {
    let c = collector(
        &format!(
            "kind: CustomResourceStateMetrics\nspec:\n  resources:{GVK_FOO}      metrics:\n        - name: \"status_phase\"\n          help: \"Foo status_phase\"\n          each:\n            type: StateSet\n            stateSet:\n              labelName: phase\n              path: [status, phase]\n              list: [Pending, Bar, Baz]\n"
        ),
        vec![yaml(FOO)],
    );
    let documented = parse_series(
        r#"kube_customresource_status_phase{customresource_group="myteam.io", customresource_kind="Foo", customresource_version="v1", phase="Pending"} 1
kube_customresource_status_phase{customresource_group="myteam.io", customresource_kind="Foo", customresource_version="v1", phase="Bar"} 0
kube_customresource_status_phase{customresource_group="myteam.io", customresource_kind="Foo", customresource_version="v1", phase="Baz"} 0"#,
    );
    let got = series_of(&c);
    assert_eq!(sorted(got.clone()), sorted(documented));
    let phases: Vec<&str> = got.iter().map(|(_, l, _)| l["phase"].as_str()).collect();
    assert_eq!(
        phases,
        ["Bar", "Baz", "Pending"],
        "sorted as kube-state-metrics sorts"
    );
    assert!(
        c.render()
            .contains("# TYPE kube_customresource_status_phase gauge\n")
    );

    // No phase yet under `status`: no series and no error, as kube-state-metrics skips it.
    let c = collector(
        &format!(
            "spec:\n  resources:{GVK_FOO}      metrics:\n        - name: phase\n          each:\n            type: StateSet\n            stateSet: {{labelName: phase, path: [status, phase], list: [A]}}\n        - name: mode\n          each:\n            type: StateSet\n            stateSet: {{labelName: mode, path: [spec, mode], list: [A]}}\n"
        ),
        vec![json!({"apiVersion": "myteam.io/v1", "kind": "Foo", "metadata": {"name": "x"}})],
    );
    assert!(series_of(&c).is_empty());
    // Outside `status`, a missing state is an error (logged by kube-state-metrics).
    assert_eq!(errors_of(&c), 1.0);
    assert!(c.render().contains(&format!(
        "{ERRORS_METRIC}{{customresource_group=\"myteam.io\",customresource_kind=\"Foo\",customresource_version=\"v1\",metric=\"kube_customresource_mode\"}} 1\n"
    )));
}

#[test]
fn info_as_documented() {
    let c = collector(
        &format!(
            "kind: CustomResourceStateMetrics\nspec:\n  resources:{GVK_FOO}      metrics:\n        - name: \"version\"\n          help: \"Foo version\"\n          each:\n            type: Info\n            info:\n              labelsFromPath:\n                version: [spec, version]\n"
        ),
        vec![yaml(FOO)],
    );
    let documented = parse_series(
        r#"kube_customresource_version{customresource_group="myteam.io", customresource_kind="Foo", customresource_version="v1", version="v1.2.3"} 1"#,
    );
    assert_eq!(series_of(&c), documented);
}

#[test]
fn metric_name_prefix_as_documented() {
    for (prefix, name) in [("myteam_foos", "myteam_foos_uptime"), ("\"\"", "uptime")] {
        let c = collector(
            &format!(
                "kind: CustomResourceStateMetrics\nspec:\n  resources:{GVK_FOO}      metricNamePrefix: {prefix}\n      metrics:\n        - name: uptime\n          each:\n            type: Gauge\n            gauge:\n              path: [status, uptime]\n"
            ),
            vec![yaml(FOO)],
        );
        let documented = parse_series(&format!(
            r#"{name}{{customresource_group="myteam.io", customresource_kind="Foo", customresource_version="v1"}} 43.21"#
        ));
        assert_eq!(series_of(&c), documented, "prefix {prefix}");
    }
}

#[test]
fn path_syntax_as_documented() {
    let c = collector(
        &format!(
            r#"
spec:
  resources:{GVK_FOO}      metrics:
        - name: paths
          each:
            type: Info
            info:
              labelsFromPath:
                replicas: [spec, replicas]
                order0: [spec, order, "0", value]
                last: [spec, order, "-1", id]
                cond_a: [status, conditions, "[name=a]", value]
                cond_66: [status, conditions, "[value=66]", name]
                name_is_foo: [metadata, "name=foo"]
                name_is_bar: [metadata, "name=bar"]
                missing: [spec, nothing, here]
                out_of_range: [spec, order, "7"]
"#
        ),
        vec![yaml(FOO)],
    );
    let got = series_of(&c);
    assert_eq!(got.len(), 1);
    let l = &got[0].1;
    assert_eq!(l["replicas"], "1");
    assert_eq!(l["order0"], "true");
    assert_eq!(l["last"], "3");
    assert_eq!(l["cond_a"], "45");
    assert_eq!(l["cond_66"], "b");
    assert_eq!(l["name_is_foo"], "foo");
    assert!(!l.contains_key("name_is_bar"));
    assert!(!l.contains_key("missing"));
    // kube-state-metrics returns an error value for an index out of range, and prints it.
    assert_eq!(l["out_of_range"], "list index out of range: 7");
}

#[test]
fn values_convert_as_kube_state_metrics_converts_them() {
    let cases = [
        (json!(true), Some("1")),
        (json!(false), Some("0")),
        (json!("True"), Some("1")),
        (json!("yes"), Some("1")),
        (json!("Unknown"), Some("0")),
        (json!("2019-10-22T16:29:31Z"), Some("1.571761771e+09")),
        (json!("250m"), Some("0.25")),
        (json!("1Gi"), Some("1.073741824e+09")),
        (json!("50%"), Some("0.5")),
        (json!("12.5"), Some("12.5")),
        (json!(7), Some("7")),
        (json!(123456789), Some("1.23456789e+08")),
        (json!(0.00001), Some("1e-05")),
        (json!("NaN"), Some("NaN")),
        (json!("+Inf"), Some("+Inf")),
        (json!("-inf"), Some("-Inf")),
        (json!("not a number"), None),
        // An object yields a series per entry (kube-state-metrics reads each entry as the value).
        (json!({"a": 1}), Some("1")),
        (json!([1, 2]), None),
    ];
    for (v, want) in cases {
        let c = collector(
            &format!(
                "spec:\n  resources:{GVK_FOO}      metrics:\n        - name: v\n          each:\n            type: Gauge\n            gauge:\n              path: [status, v]\n"
            ),
            vec![
                json!({"apiVersion": "myteam.io/v1", "kind": "Foo", "metadata": {"name": "x"}, "status": {"v": v}}),
            ],
        );
        let got = series_of(&c);
        match want {
            // A list yields a series per element: [1, 2] gives two. Checked apart below.
            None if v.is_array() => assert_eq!(got.len(), 2),
            None => {
                assert!(got.is_empty(), "{v}: {got:?}");
                assert_eq!(errors_of(&c), 1.0, "{v}");
                // The error never carries the value.
                assert!(!c.render().contains("not a number"));
            }
            Some(w) => assert_eq!(got.first().map(|s| s.2.as_str()), Some(w), "{v}"),
        }
    }
}

#[test]
fn valuetype_duration_and_quantity() {
    let c = collector(
        &format!(
            "spec:\n  resources:{GVK_FOO}      metrics:\n        - name: d\n          each:\n            type: Gauge\n            gauge: {{path: [spec, d], valueType: duration}}\n        - name: q\n          each:\n            type: Gauge\n            gauge: {{path: [spec, q], valueType: quantity}}\n"
        ),
        vec![
            json!({"apiVersion": "myteam.io/v1", "kind": "Foo", "metadata": {"name": "x"}, "spec": {"d": "1h30m", "q": "2Ki"}}),
        ],
    );
    let got: Vec<(String, String)> = series_of(&c).into_iter().map(|(n, _, v)| (n, v)).collect();
    assert_eq!(
        got,
        [
            ("kube_customresource_d".to_string(), "5400".to_string()),
            ("kube_customresource_q".to_string(), "2048".to_string())
        ]
    );
}

#[test]
fn nil_handling() {
    let config = |nil_is_zero: bool| {
        format!(
            "spec:\n  resources:{GVK_FOO}      metrics:\n        - name: uptime\n          each:\n            type: Gauge\n            gauge:\n              path: [status, uptime]\n              nilIsZero: {nil_is_zero}\n        - name: ready\n          each:\n            type: Gauge\n            gauge:\n              path: [status, sub]\n              labelFromKey: type\n              valueFrom: [ready]\n              nilIsZero: {nil_is_zero}\n"
        )
    };
    let obj = json!({"apiVersion": "myteam.io/v1", "kind": "Foo", "metadata": {"name": "x"},
        "status": {"uptime": null, "sub": {"a": {"ready": 2}, "b": {}}}});
    // Without nilIsZero: no series for a missing value; a missing path is an error.
    let c = collector(&config(false), vec![obj.clone()]);
    let got: Vec<(String, Option<String>, String)> = series_of(&c)
        .into_iter()
        .map(|(n, l, v)| (n, l.get("type").cloned(), v))
        .collect();
    assert_eq!(
        got,
        [(
            "kube_customresource_ready".to_string(),
            Some("a".to_string()),
            "2".to_string()
        )]
    );
    assert_eq!(errors_of(&c), 1.0, "uptime: got nil while resolving path");
    // With nilIsZero: 0 instead.
    let c = collector(&config(true), vec![obj]);
    let got: Vec<(String, Option<String>, String)> = series_of(&c)
        .into_iter()
        .map(|(n, l, v)| (n, l.get("type").cloned(), v))
        .collect();
    assert_eq!(
        got,
        [
            ("kube_customresource_uptime".to_string(), None, "0".to_string()),
            (
                "kube_customresource_ready".to_string(),
                Some("a".to_string()),
                "2".to_string()
            ),
            (
                "kube_customresource_ready".to_string(),
                Some("b".to_string()),
                "0".to_string()
            ),
        ]
    );
    assert_eq!(errors_of(&c), 0.0);
}

#[test]
fn label_values_are_escaped_and_names_sanitized() {
    let c = collector(
        &format!(
            "spec:\n  resources:{GVK_FOO}      metrics:\n        - name: labels\n          each:\n            type: Info\n            info:\n              labelsFromPath:\n                \"label_*\": [metadata, labels]\n                note: [spec, note]\n"
        ),
        vec![json!({"apiVersion": "myteam.io/v1", "kind": "Foo",
            "metadata": {"name": "x", "labels": {"app.kubernetes.io/name": "web"}},
            "spec": {"note": "a \"quoted\" back\\slash\nnew line"}})],
    );
    let text = c.render();
    assert!(text.contains(r#"label_app_kubernetes_io_name="web""#), "{text}");
    assert!(
        text.contains(r#"note="a \"quoted\" back\\slash\nnew line""#),
        "{text}"
    );
}

#[test]
fn objects_render_in_key_order_and_follow_the_store() {
    let config = format!(
        "spec:\n  resources:{GVK_FOO}      labelsFromPath:\n        name: [metadata, name]\n        namespace: [metadata, namespace]\n      metrics:\n        - name: replicas\n          each:\n            type: Gauge\n            gauge:\n              path: [spec, replicas]\n"
    );
    let config = Config::from_value(yaml(&config)).expect("valid");
    let store = Store::<DynamicObject>::new();
    let c = Collector::new(config, vec![store.clone()]).expect("one store");
    // No object: no family header (kube-state-metrics writes it once the store has objects).
    let text = c.render();
    assert!(!text.contains("# HELP kube_customresource_replicas "), "{text}");
    assert!(!text.contains("\nkube_customresource_replicas{"), "{text}");
    for (ns, name, n) in [("b", "y", 2), ("a", "z", 1), ("b", "x", 3)] {
        store.apply(object(json!({"apiVersion": "myteam.io/v1", "kind": "Foo",
            "metadata": {"name": name, "namespace": ns}, "spec": {"replicas": n}})));
    }
    let order: Vec<String> = series_of(&c)
        .into_iter()
        .map(|(_, l, v)| format!("{}/{}={v}", l["namespace"], l["name"]))
        .collect();
    assert_eq!(order, ["a/z=1", "b/x=3", "b/y=2"]);
    store.apply(object(json!({"apiVersion": "myteam.io/v1", "kind": "Foo",
        "metadata": {"name": "x", "namespace": "b"}, "spec": {"replicas": 9}})));
    let key = crwatch::store::ObjectKey::new(Some("a"), "z");
    store.delete(&key);
    let order: Vec<String> = series_of(&c)
        .into_iter()
        .map(|(_, l, v)| format!("{}/{}={v}", l["namespace"], l["name"]))
        .collect();
    assert_eq!(order, ["b/x=9", "b/y=2"]);
}

#[test]
fn big_and_deep_objects_do_not_break_rendering() {
    // Building and dropping a value 5,000 levels deep recurses in serde_json itself (the
    // list/watch engine decodes such objects with a growing stack); the test does that on a
    // big stack, and renders on a thread with Rust's default 2 MiB stack.
    let big_stack = |f: Box<dyn FnOnce() + Send>| {
        std::thread::Builder::new()
            .stack_size(256 << 20)
            .spawn(f)
            .expect("thread")
            .join()
            .expect("no panic");
    };
    let (tx, rx) = std::sync::mpsc::channel();
    big_stack(Box::new(move || {
        // 10,000 entries under one path: a series each.
        let entries: serde_json::Map<String, Value> = (0..10_000)
            .map(|i| (format!("k{i:05}"), json!({"ready": i})))
            .collect();
        // A value nested 5,000 levels deep, copied into a label by `*`.
        let mut deep = json!("bottom");
        for _ in 0..5_000 {
            let mut m = serde_json::Map::new();
            m.insert("d".into(), deep);
            deep = Value::Object(m);
        }
        let c = collector(
            &format!(
                "spec:\n  resources:{GVK_FOO}      metrics:\n        - name: ready\n          each:\n            type: Gauge\n            gauge:\n              path: [status, sub]\n              labelFromKey: key\n              valueFrom: [ready]\n        - name: deep\n          each:\n            type: Info\n            info:\n              labelsFromPath:\n                \"deep_*\": [spec]\n"
            ),
            vec![
                json!({"apiVersion": "myteam.io/v1", "kind": "Foo", "metadata": {"name": "x"},
                "status": {"sub": Value::Object(entries)}, "spec": {"nest": deep}}),
            ],
        );
        tx.send(c).expect("send");
    }));
    let c = rx.recv().expect("collector");
    let text = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn({
            let c = c.clone();
            move || c.render()
        })
        .expect("thread")
        .join()
        .expect("rendering does not overflow a 2 MiB stack");
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("kube_customresource_ready{"))
            .count(),
        10_000
    );
    let deep_line = text
        .lines()
        .find(|l| l.starts_with("kube_customresource_deep{"))
        .expect("deep series");
    assert!(deep_line.contains("deep_nest=\"map[d:map[d:"));
    assert!(deep_line.contains("bottom"));
    big_stack(Box::new(move || drop(c)));
}

#[test]
fn configuration_errors_name_the_field() {
    let check = |config: Value, field: &str, words: &str| {
        let e = Config::from_value(config).expect_err("invalid");
        assert_eq!(e.field, field, "{e}");
        assert!(e.message.contains(words), "{e}");
    };
    let gvk = json!({"group": "g", "version": "v1", "kind": "K"});
    check(
        json!({"kind": "Other", "spec": {}}),
        "kind",
        "expected CustomResourceStateMetrics",
    );
    check(
        json!({"spec": {"resources": []}}),
        "spec.resources",
        "at least one resource",
    );
    check(
        json!({"spec": {"resources": [{"groupVersionKind": gvk, "metrics": [{"name": "x", "each": {"type": "Gauge"}}]}]}}),
        "spec.resources[0].metrics[0].each.gauge",
        "needs each.gauge",
    );
    check(
        json!({"spec": {"resources": [{"groupVersionKind": gvk, "metrics": [{"name": "x", "each": {"type": "Gauge", "gauge": {"path": ["a", "[b]"]}}}]}]}}),
        "spec.resources[0].metrics[0].each.gauge.path",
        "invalid list lookup: [b]",
    );
    check(
        json!({"spec": {"resources": [{"groupVersionKind": gvk, "metrics": [{"name": "x", "each": {"type": "Gauge", "gauge": {"path": "status.x"}}}]}]}}),
        "spec.resources[0].metrics[0].each.gauge.path",
        "expected a list of strings",
    );
    check(
        json!({"spec": {"resources": [{"groupVersionKind": gvk, "metrics": [{"name": "bad-name", "each": {"type": "Info", "info": {}}}]}]}}),
        "spec.resources[0].metrics[0].name",
        "not a valid metric name",
    );
    check(
        json!({"spec": {"resources": [{"groupVersionKind": {"group": "g", "version": "*", "kind": "*"}, "metrics": []}]}}),
        "spec.resources[0].groupVersionKind",
        "wildcard",
    );
    check(
        json!({"spec": {"resources": [{"groupVersionKind": gvk, "metrics": [{"name": "x", "each": {"type": "StateSet", "stateSet": {"path": ["a"], "list": ["A"]}}}]}]}}),
        "spec.resources[0].metrics[0].each.stateSet.labelName",
        "missing",
    );
    // The type is case-insensitive, unknown fields are ignored, and a number where a string
    // is expected reads as its text, as kube-state-metrics' YAML decoder does.
    let ok = Config::from_value(
        json!({"spec": {"resources": [{"groupVersionKind": {"group": "g", "version": 1, "kind": "K"},
        "unknownField": true,
        "metrics": [{"name": "x", "each": {"type": "gAuGe", "gauge": {"path": ["spec", "order", 0]}}}]}]}}),
    );
    assert!(ok.is_ok(), "{ok:?}");
}

#[test]
fn embedded_on_a_managers_metrics_keeps_the_names() {
    let c = collector(
        &format!(
            "spec:\n  resources:{GVK_FOO}      metrics:\n        - name: ref_info\n          help: refs\n          each:\n            type: Info\n            info:\n              path: [spec, refs]\n              labelsFromPath:\n                ref: []\n        - name: status_phase\n          each:\n            type: StateSet\n            stateSet: {{labelName: phase, path: [status, phase], list: [Pending]}}\n"
        ),
        vec![yaml(FOO)],
    );
    let metrics = crwatch::metrics::Metrics::default();
    metrics.with_registry(|r| r.register_collector(Box::new(c.clone())));
    let text = metrics.encode();
    assert!(
        text.contains("# TYPE kube_customresource_ref_info gauge\n"),
        "{text}"
    );
    assert!(text.contains("kube_customresource_ref_info{customresource_group=\"myteam.io\",customresource_kind=\"Foo\",customresource_version=\"v1\",ref=\"foo_2\"} 1"), "{text}");
    assert!(text.contains("kube_customresource_status_phase{"), "{text}");
    assert!(!text.contains("kube_customresource_ref_info_info"));
    assert!(text.contains(&format!("{ERRORS_METRIC}{{")));
    // One OpenMetrics exposition, ended once.
    assert!(text.ends_with("# EOF\n"));
    assert_eq!(text.matches("# EOF").count(), 1);
}
