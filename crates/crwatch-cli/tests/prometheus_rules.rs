//! The CI check of the monitoring files in deploy/: the alert rules in deploy/prometheus
//! (`promtool check rules` and `promtool test rules`, a firing and a quiet unit test for every
//! alert, the house style of labels and annotations) and the Grafana dashboard in
//! deploy/grafana (it parses, every panel queries the `${datasource}` variable).
//!
//! Every metric name the rules and the dashboard use must exist: the names come from what the
//! code really exports (a manager's registry with the forwarder's families added, encoded) and,
//! for the operator alerts, from the metrics the kube-state-metrics configuration in
//! deploy/kube-state-metrics defines. A misspelt metric in a rule fails here, where Prometheus
//! would silently evaluate it to nothing and the alert would never fire.
//!
//! promtool comes from Debian's `prometheus` package (scripts/test installs it); without it the
//! test fails rather than skipping.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crwatch::controller::{Action, ReconcileError, ReconcileResult, Request};
use crwatch::leader::LeaderElectionConfig;
use crwatch::manager::{Manager, ManagerConfig};
use crwatch_apiserver::TestServer;
use crwatch_forward::metrics::{ForwardMetrics, ResourceLabels, ResourceOnly, SinkLabels, StreamLabels};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn yaml(path: &Path) -> Value {
    serde_saphyr::from_str(&read(path)).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// The files in `dir` whose names end with `suffix`, sorted; at least one.
fn files(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(suffix))
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no *{suffix} in {}", dir.display());
    out
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_owned()
}

fn prometheus_dir() -> PathBuf {
    repo().join("deploy/prometheus")
}

fn promtool() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("promtool"))
        .find(|p| p.is_file());
    let found = on_path.unwrap_or_else(|| PathBuf::from("/usr/bin/promtool"));
    assert!(
        found.is_file(),
        "promtool is neither on PATH nor in /usr/bin: it comes with Debian's `prometheus` \
         package, which scripts/test installs (apt-get install prometheus)"
    );
    found
}

fn run_promtool(args: &[&str], files: &[PathBuf]) {
    let tool = promtool();
    let out = Command::new(&tool)
        .args(args)
        .args(files.iter().map(|f| file_name(f)))
        // Test files name their rule files relative to themselves.
        .current_dir(prometheus_dir())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", tool.display()));
    assert!(
        out.status.success(),
        "promtool {} failed ({}):\n{}\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn promtool_checks_and_unit_tests_pass() {
    let dir = prometheus_dir();
    run_promtool(&["check", "rules"], &files(&dir, ".rules.yaml"));
    run_promtool(&["test", "rules"], &files(&dir, ".test.yaml"));
}

/// An alerting or recording rule, with the file it is in.
struct Rule {
    file: String,
    value: Value,
}

impl Rule {
    fn alert(&self) -> Option<&str> {
        self.value.get("alert").and_then(Value::as_str)
    }
    fn expr(&self) -> &str {
        self.value.get("expr").and_then(Value::as_str).unwrap_or_default()
    }
    fn name(&self) -> String {
        let name = self
            .alert()
            .or_else(|| self.value.get("record").and_then(Value::as_str));
        format!("{} in {}", name.unwrap_or("(unnamed rule)"), self.file)
    }
}

fn rules() -> Vec<Rule> {
    let mut out = Vec::new();
    for path in files(&prometheus_dir(), ".rules.yaml") {
        let doc = yaml(&path);
        let groups = doc["groups"].as_array().cloned().unwrap_or_default();
        assert!(!groups.is_empty(), "{}: no groups", path.display());
        for group in groups {
            for rule in group["rules"].as_array().cloned().unwrap_or_default() {
                out.push(Rule {
                    file: file_name(&path),
                    value: rule,
                });
            }
        }
    }
    out
}

#[test]
fn every_alert_has_a_firing_and_a_quiet_unit_test() {
    let rules = rules();
    let mut problems = Vec::new();

    // Style: kubernetes-mixin-like names, severity, summary and a description with labels.
    let mut defined: BTreeMap<String, String> = BTreeMap::new();
    for rule in &rules {
        let Some(alert) = rule.alert() else { continue };
        let who = rule.name();
        if !alert.starts_with("Crwatch") || !alert.chars().all(|c| c.is_ascii_alphanumeric()) {
            problems.push(format!("{who}: name it CamelCase with the prefix Crwatch"));
        }
        match rule.value["labels"]["severity"].as_str() {
            Some("warning" | "critical") => {}
            other => problems.push(format!("{who}: severity {other:?}, want warning or critical")),
        }
        let annotations = &rule.value["annotations"];
        if annotations["summary"].as_str().is_none_or(str::is_empty) {
            problems.push(format!("{who}: no summary annotation"));
        }
        if !annotations["description"]
            .as_str()
            .is_some_and(|d| d.contains("{{ $labels."))
        {
            problems.push(format!("{who}: the description names no {{{{ $labels.… }}}}"));
        }
        if defined.insert(alert.to_owned(), rule.file.clone()).is_some() {
            problems.push(format!("{who}: defined twice"));
        }
    }

    // Unit tests: per alert, whether some case expects it firing and some expects silence, in
    // a test file that loads the rule file defining it (otherwise a quiet case passes for
    // nothing).
    let mut fires: BTreeSet<String> = BTreeSet::new();
    let mut quiet: BTreeSet<String> = BTreeSet::new();
    let mut loaded: BTreeSet<String> = BTreeSet::new();
    for path in files(&prometheus_dir(), ".test.yaml") {
        let doc = yaml(&path);
        let rule_files: BTreeSet<String> = doc["rule_files"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f.as_str().map(str::to_owned))
            .collect();
        loaded.extend(rule_files.iter().cloned());
        for test in doc["tests"].as_array().into_iter().flatten() {
            for case in test["alert_rule_test"].as_array().into_iter().flatten() {
                let alert = case["alertname"].as_str().unwrap_or_default();
                match defined.get(alert) {
                    None => problems.push(format!(
                        "{}: tests {alert:?}, which no rule file defines",
                        path.display()
                    )),
                    Some(file) if !rule_files.contains(file) => problems.push(format!(
                        "{}: tests {alert} but does not load {file}, which defines it",
                        path.display()
                    )),
                    Some(_) => {}
                }
                let expected = case["exp_alerts"].as_array().map_or(0, Vec::len);
                if expected > 0 { &mut fires } else { &mut quiet }.insert(alert.to_owned());
            }
        }
    }
    for (alert, file) in &defined {
        if !fires.contains(alert) {
            problems.push(format!(
                "{alert} ({file}): no unit test where it fires (exp_alerts)"
            ));
        }
        if !quiet.contains(alert) {
            problems.push(format!(
                "{alert} ({file}): no unit test where it must not fire (exp_alerts: [])"
            ));
        }
    }
    for path in files(&prometheus_dir(), ".rules.yaml") {
        let name = file_name(&path);
        if !loaded.contains(&name) {
            problems.push(format!("{name}: no *.test.yaml loads it"));
        }
    }
    assert!(problems.is_empty(), "alert rules:\n  {}", problems.join("\n  "));
}

/// The exposition of a real manager (see [`scrape_a_working_manager`]), scraped once and
/// shared by the tests.
fn exposition() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        runtime.block_on(scrape_a_working_manager())
    })
}

/// Every metric name the code exports, as Prometheus stores it: counters with `_total`,
/// histograms as `_bucket`, `_sum` and `_count`.
fn exported_metric_names() -> BTreeSet<String> {
    names_in_exposition(exposition())
}

/// What a reconcile does with the ConfigMap named…
async fn probe_reconcile(req: Request<ConfigMap>, release: Arc<CancellationToken>) -> ReconcileResult {
    match req.key().name.as_str() {
        "fail" => Err(ReconcileError::transient(anyhow::anyhow!(
            "deliberate transient error"
        ))),
        "terminal" => Err(ReconcileError::terminal(anyhow::anyhow!(
            "deliberate terminal error"
        ))),
        "panic" => panic!("deliberate panic (tests/prometheus_rules.rs counts it)"),
        "slow" => {
            // In progress while the registry is encoded (the in-progress gauges).
            release.cancelled().await;
            Ok(Action::done())
        }
        _ => Ok(Action::done()),
    }
}

/// The exposition of a real manager (API server in process, leader election, one controller
/// whose reconciles succeed, fail, fail for good, panic and hang), with the forwarder's
/// families registered in the same registry.
///
/// prometheus-client leaves families without series out, so every family the rules and the
/// dashboard use must have one: the controller's outcomes make the controller, queue, informer
/// and leader series; the read-your-writes and forwarder families get one series each through
/// their public recorders and fields.
/// Shard families need a shard ring and are used by neither the rules nor the dashboard.
async fn scrape_a_working_manager() -> String {
    let server = TestServer::start().await.expect("the in-process API server");
    let client = server.client();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    for name in ["ok", "fail", "terminal", "panic", "slow"] {
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some(name.into());
        cms.create(&PostParams::default(), &cm)
            .await
            .expect("creating a ConfigMap");
    }
    let mut mgr = Manager::new(
        client,
        ManagerConfig {
            metrics_addr: None,
            probe_addr: None,
            leader_election: Some(LeaderElectionConfig {
                identity: "probe-0".into(),
                lease_duration: Duration::from_secs(2),
                renew_deadline: Duration::from_millis(1500),
                retry_period: Duration::from_millis(200),
                ..LeaderElectionConfig::new("default", "probe")
            }),
            ..ManagerConfig::default()
        },
    );
    let release = Arc::new(CancellationToken::new());
    let informer = mgr.factory().all::<ConfigMap>();
    let controller = mgr
        .controller("probe", informer)
        .concurrency(4)
        .build(probe_reconcile, release.clone());
    mgr.add(controller);
    let metrics = mgr.metrics().clone();
    // A read-your-writes wait needs a reconcile writing through a tracking client; its public
    // recorder makes the series.
    metrics.controllers.cache_wait.observe(
        "probe",
        &crwatch::ryow::WaitOutcome::TimedOut(Duration::from_secs(1)),
    );

    let sink = SinkLabels { sink: "probe".into() };
    let f = metrics.with_registry(ForwardMetrics::register);
    let event = ResourceLabels {
        resource: "configmaps".into(),
        event: "added".into(),
    };
    let resource = ResourceOnly {
        resource: "configmaps".into(),
    };
    let stream = StreamLabels {
        resource: "configmaps".into(),
        namespace: String::new(),
    };
    f.received.get_or_create(&event).inc();
    f.filtered.get_or_create(&event).inc();
    f.relists.get_or_create(&resource).inc();
    f.reconnects.get_or_create(&resource).inc();
    f.source_errors.get_or_create(&stream).inc();
    f.decode_errors.get_or_create(&stream).inc();
    f.connected.get_or_create(&stream).set(1);
    f.last_event.get_or_create(&stream).set(1.0);
    for counter in [&f.delivered, &f.failed, &f.retried, &f.dead_lettered] {
        counter.get_or_create(&sink).inc();
    }
    f.queue_depth.get_or_create(&sink).set(1);
    f.latency.get_or_create(&sink).observe(0.1);

    let stop = CancellationToken::new();
    let run = tokio::spawn(mgr.run({
        let stop = stop.clone();
        async move { stop.cancelled().await }
    }));
    // Every outcome recorded, a retry made, the slow reconcile in progress, the lease led and
    // the informer's figures sampled.
    let wanted = [
        r#"controller_runtime_reconcile_total{controller="probe",result="success"}"#,
        r#"controller_runtime_terminal_reconcile_errors_total{controller="probe"}"#,
        r#"controller_runtime_reconcile_panics_total{controller="probe"}"#,
        r#"workqueue_retries_total{name="probe",controller="probe"}"#,
        r#"controller_runtime_active_workers{controller="probe"} 1"#,
        r#"leader_election_master_status{name="probe"} 1"#,
        "crwatch_source_synced{source=",
    ];
    let deadline = Instant::now() + Duration::from_secs(60);
    let text = loop {
        let text = metrics.encode();
        if wanted.iter().all(|w| text.contains(w)) {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "after 60 s the manager's metrics still lack one of {wanted:?}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    release.cancel();
    stop.cancel();
    run.await
        .expect("the manager task")
        .expect("the manager stopped cleanly");
    text
}

/// The series names an exposition (Prometheus text or OpenMetrics) defines, from its `# TYPE`
/// lines (families without samples yet) and its samples.
fn names_in_exposition(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            match kind {
                "counter" if name.ends_with("_total") => {
                    names.insert(name.to_owned());
                }
                "counter" => {
                    names.insert(format!("{name}_total"));
                }
                "histogram" | "gaugehistogram" => {
                    for suffix in ["_bucket", "_sum", "_count"] {
                        names.insert(format!("{name}{suffix}"));
                    }
                }
                "summary" => {
                    for suffix in ["", "_sum", "_count"] {
                        names.insert(format!("{name}{suffix}"));
                    }
                }
                "info" => {
                    names.insert(format!("{name}_info"));
                }
                _ => {
                    names.insert(name.to_owned());
                }
            }
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_owned());
        }
    }
    names
}

/// Per series name, the label names its samples in an exposition carry.
fn labels_in_exposition(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut labels: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(open) = line.find('{') else { continue };
        let close = line.rfind('}').unwrap_or(line.len());
        labels
            .entry(line[..open].to_owned())
            .or_default()
            .extend(matcher_labels(&line[open + 1..close]));
    }
    labels
}

/// The metrics deploy/kube-state-metrics' configuration defines, named as kube-state-metrics
/// names them (`metricNamePrefix`, by default `kube_customresource`, `_`, the metric's name),
/// with their label names (`None`: any, a `*` in `labelsFromPath` copies a whole map). Its
/// kinds must be the operators' (their `#[kube(...)]` attributes), and crwatch::ksm (`crwatch
/// metrics -f`) must accept the file and serve the same names.
fn ksm_metrics() -> BTreeMap<String, Option<BTreeSet<String>>> {
    let dir = repo().join("deploy/kube-state-metrics");
    let operators = [
        repo().join("operators/database/src/types.rs"),
        repo().join("operators/gateway/src/types.rs"),
    ]
    .map(|p| read(&p))
    .join("\n");
    let keys = |v: &Value| -> Vec<String> {
        v.as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    };
    let mut metrics = BTreeMap::new();
    for path in files(&dir, ".yaml") {
        let doc = yaml(&path);
        assert_eq!(doc["kind"], "CustomResourceStateMetrics", "{}", path.display());
        // What `crwatch metrics -f` serves from this file: it must accept it, and name the
        // metrics as computed below.
        let served = crwatch::ksm::Config::from_value(doc.clone())
            .unwrap_or_else(|e| panic!("{}: crwatch::ksm refuses it: {e:?}", path.display()));
        let served: BTreeSet<String> = served.metric_names().into_iter().map(str::to_owned).collect();
        let before: BTreeSet<String> = metrics.keys().cloned().collect();
        for resource in doc["spec"]["resources"].as_array().into_iter().flatten() {
            let gvk = &resource["groupVersionKind"];
            for field in ["group", "version", "kind"] {
                let value = gvk[field].as_str().unwrap_or_default();
                assert!(
                    operators.contains(&format!("{field} = \"{value}\"")),
                    "{}: {field} {value:?} is no operator's (operators/*/src/types.rs)",
                    path.display()
                );
            }
            let prefix = resource["metricNamePrefix"]
                .as_str()
                .unwrap_or("kube_customresource");
            let mut common = vec![
                "customresource_group".to_owned(),
                "customresource_version".to_owned(),
                "customresource_kind".to_owned(),
            ];
            common.extend(keys(&resource["labelsFromPath"]));
            common.extend(keys(&resource["commonLabels"]));
            for metric in resource["metrics"].as_array().into_iter().flatten() {
                let name = metric["name"].as_str().unwrap_or_default();
                assert!(!name.is_empty(), "{}: a metric without a name", path.display());
                let kind = metric["each"]["type"].as_str().unwrap_or_default();
                let each = match kind {
                    "Gauge" => &metric["each"]["gauge"],
                    "StateSet" => &metric["each"]["stateSet"],
                    "Info" => &metric["each"]["info"],
                    other => panic!("{}: {name} has type {other:?}", path.display()),
                };
                let mut labels = common.clone();
                labels.extend(keys(&metric["labelsFromPath"]));
                labels.extend(keys(&metric["commonLabels"]));
                labels.extend(keys(&each["labelsFromPath"]));
                for single in ["labelName", "labelFromKey"] {
                    labels.extend(each[single].as_str().map(str::to_owned));
                }
                let labels = (!labels.iter().any(|l| l.contains('*'))).then(|| labels.into_iter().collect());
                let full = if prefix.is_empty() {
                    name.to_owned()
                } else {
                    format!("{prefix}_{name}")
                };
                metrics.insert(full, labels);
            }
        }
        let named: BTreeSet<String> = metrics.keys().filter(|k| !before.contains(*k)).cloned().collect();
        assert_eq!(
            named,
            served,
            "{}: metric names as crwatch::ksm serves them",
            path.display()
        );
    }
    metrics
}

/// Label-list keywords: the parenthesised list after them holds label names, not series.
const LABEL_LISTS: &[&str] = &["by", "without", "on", "ignoring", "group_left", "group_right"];
/// Operators and aggregations written as words, and the number literals.
const KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "atan2",
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
    "inf",
    "nan",
];

/// The metric names a PromQL expression selects.
fn metric_names(expr: &str) -> BTreeSet<String> {
    selectors(expr).into_iter().map(|(name, _)| name).collect()
}

/// The label names in a selector's matchers (`a="x", b=~"y"` gives a and b).
fn matcher_labels(matchers: &str) -> BTreeSet<String> {
    let chars: Vec<char> = matchers.chars().collect();
    let mut labels = BTreeSet::new();
    let mut expecting = true;
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '"' | '\'' | '`' => i = skip_string(&chars, i),
            ',' => {
                expecting = true;
                i += 1;
            }
            c if expecting && (c.is_ascii_alphabetic() || c == '_') => {
                let start = i;
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
                labels.insert(chars[start..i].iter().collect());
                expecting = false;
            }
            _ => i += 1,
        }
    }
    labels
}

/// The series selectors of a PromQL expression: each metric name with the label names its
/// matchers use. Grafana's `$variables`, `${variables}` and `label_values(selector, label)`
/// (a template variable's query, whose label counts as used) are understood; strings, ranges,
/// durations, functions and label lists are not metric names.
fn selectors(expr: &str) -> Vec<(String, BTreeSet<String>)> {
    let trimmed = expr.trim();
    if let Some(inner) = trimmed
        .strip_prefix("label_values(")
        .and_then(|r| r.strip_suffix(')'))
    {
        // `label_values(label)` names no metric; `label_values(selector, label)` selects one.
        return match inner.rfind(',') {
            Some(comma) => {
                let mut found = selectors(&inner[..comma]);
                let label = inner[comma + 1..].trim().to_owned();
                found.iter_mut().for_each(|(_, labels)| {
                    labels.insert(label.clone());
                });
                found
            }
            None => Vec::new(),
        };
    }
    let chars: Vec<char> = expr.chars().collect();
    let mut found = Vec::new();
    let mut label_list_next = false;
    let mut i = 0;
    // Skip from an opening character to its closing one, over quoted strings.
    let skip_group = |mut i: usize, open: char, close: char| -> usize {
        let mut depth = 0;
        while i < chars.len() {
            match chars[i] {
                '"' | '\'' | '`' => i = skip_string(&chars, i) - 1,
                c if c == open => depth += 1,
                c if c == close => {
                    depth -= 1;
                    if depth == 0 {
                        return i + 1;
                    }
                }
                _ => {}
            }
            i += 1;
        }
        i
    };
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => i = skip_string(&chars, i),
            '#' => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '{' => i = skip_group(i, '{', '}'),
            '[' => i = skip_group(i, '[', ']'),
            '(' if label_list_next => {
                label_list_next = false;
                i = skip_group(i, '(', ')');
            }
            '$' if chars.get(i + 1) == Some(&'{') => i = skip_group(i + 1, '{', '}'),
            '$' => {
                i += 1;
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
            }
            c if c.is_ascii_digit() || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) => {
                // Numbers and durations: 0.99, 1e3, 5m, 1h30m, 0x1f.
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '.' || chars[i] == '_')
                {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let next = chars[i..].iter().find(|c| !c.is_whitespace());
                if LABEL_LISTS.contains(&word.as_str()) {
                    label_list_next = true;
                } else if KEYWORDS.contains(&word.to_ascii_lowercase().as_str()) || next == Some(&'(') {
                    // An operator, an aggregation, or a function call.
                } else {
                    let mut labels = BTreeSet::new();
                    let brace = i + chars[i..].iter().take_while(|c| c.is_whitespace()).count();
                    if chars.get(brace) == Some(&'{') {
                        let end = skip_group(brace, '{', '}');
                        let inner: String = chars[brace + 1..end.saturating_sub(1)].iter().collect();
                        labels = matcher_labels(&inner);
                        i = end;
                    }
                    found.push((word, labels));
                }
            }
            _ => i += 1,
        }
    }
    found
}

/// The index just past the string literal opening at `i`.
fn skip_string(chars: &[char], i: usize) -> usize {
    let quote = chars[i];
    let mut j = i + 1;
    while j < chars.len() {
        match chars[j] {
            '\\' if quote != '`' => j += 2,
            c if c == quote => return j + 1,
            _ => j += 1,
        }
    }
    j
}

/// Labels Prometheus adds to every series from its scrape target (Kubernetes service
/// discovery, relabelled as usual).
const TARGET_LABELS: &[&str] = &[
    "job",
    "instance",
    "namespace",
    "pod",
    "container",
    "service",
    "endpoint",
    "node",
    "cluster",
];

/// What queries may select: series names, and per name the labels they carry (`None`: any).
struct Known {
    names: BTreeSet<String>,
    labels: BTreeMap<String, Option<BTreeSet<String>>>,
}

impl Known {
    /// What the code exports.
    fn exported() -> Known {
        Known {
            names: exported_metric_names(),
            labels: labels_in_exposition(exposition())
                .into_iter()
                .map(|(name, labels)| (name, Some(labels)))
                .collect(),
        }
    }

    /// Everything a rule or a dashboard may refer to: exported series, the KSM
    /// configuration's, recorded ones (with any labels).
    fn all(rules: &[Rule]) -> Known {
        let mut known = Known::exported();
        for (name, labels) in ksm_metrics() {
            known.names.insert(name.clone());
            known.labels.insert(name, labels);
        }
        for record in rules
            .iter()
            .filter_map(|r| r.value.get("record").and_then(Value::as_str))
        {
            known.names.insert(record.to_owned());
            known.labels.insert(record.to_owned(), None);
        }
        known
    }
}

/// The names in `expr` that are not known.
fn unknown_metrics(expr: &str, known: &Known) -> Vec<String> {
    metric_names(expr)
        .into_iter()
        .filter(|name| !known.names.contains(name))
        .collect()
}

/// The labels `expr`'s selectors match on that their metric does not carry, as
/// `metric{label}` (target labels are always allowed; unknown metrics are reported by
/// [`unknown_metrics`]).
fn unknown_labels(expr: &str, known: &Known) -> Vec<String> {
    let mut unknown = Vec::new();
    for (name, labels) in selectors(expr) {
        let Some(Some(carried)) = known.labels.get(&name) else {
            continue;
        };
        for label in labels {
            if label != "__name__" && !carried.contains(&label) && !TARGET_LABELS.contains(&label.as_str()) {
                unknown.push(format!("{name}{{{label}}}"));
            }
        }
    }
    unknown
}

#[test]
fn rules_use_only_exported_metrics() {
    let rules = rules();
    let known = Known::all(&rules);
    let mut problems = Vec::new();
    for rule in &rules {
        let names = metric_names(rule.expr());
        if names.is_empty() {
            problems.push(format!("{}: selects no metric", rule.name()));
        }
        for name in unknown_metrics(rule.expr(), &known) {
            problems.push(format!("{}: {name} is exported by nothing", rule.name()));
        }
        for label in unknown_labels(rule.expr(), &known) {
            problems.push(format!("{}: no such label: {label}", rule.name()));
        }
    }
    assert!(problems.is_empty(), "alert rules:\n  {}", problems.join("\n  "));
}

/// The dashboard's panels, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        out.extend(panel["panels"].as_array().into_iter().flatten().cloned());
        out.push(panel.clone());
    }
    out
}

#[test]
fn dashboard_queries_only_exported_metrics() {
    let rules = rules();
    let known = Known::all(&rules);
    let mut problems = Vec::new();
    for path in files(&repo().join("deploy/grafana"), ".json") {
        let text = read(&path);
        let dashboard: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()));
        let file = file_name(&path);
        if dashboard["schemaVersion"].as_u64().is_none_or(|v| v < 36) {
            problems.push(format!("{file}: schemaVersion below 36"));
        }
        if dashboard["uid"].as_str().is_none_or(str::is_empty) {
            problems.push(format!("{file}: no uid"));
        }

        let variables: Vec<Value> = dashboard["templating"]["list"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let variable = |name: &str| variables.iter().find(|v| v["name"] == name);
        match variable("datasource") {
            Some(v) if v["type"] == "datasource" && v["query"] == "prometheus" => {}
            _ => problems.push(format!(
                "{file}: no `datasource` variable of type datasource over prometheus"
            )),
        }
        for name in ["job", "namespace", "controller"] {
            if variable(name).is_none_or(|v| v["type"] != "query") {
                problems.push(format!("{file}: no `{name}` query variable"));
            }
        }
        for v in variables.iter().filter(|v| v["type"] == "query") {
            let name = v["name"].as_str().unwrap_or_default();
            let query = v["query"]["query"]
                .as_str()
                .or_else(|| v["query"].as_str())
                .unwrap_or_default();
            if v["datasource"]["uid"] != "${datasource}" {
                problems.push(format!("{file}: variable {name} does not query ${{datasource}}"));
            }
            for metric in unknown_metrics(query, &known) {
                problems.push(format!(
                    "{file}: variable {name}: {metric} is exported by nothing"
                ));
            }
            for label in unknown_labels(query, &known) {
                problems.push(format!("{file}: variable {name}: no such label: {label}"));
            }
        }

        let panels = panels(&dashboard);
        let mut queried = 0;
        for panel in &panels {
            let kind = panel["type"].as_str().unwrap_or_default();
            if matches!(kind, "row" | "text") {
                continue;
            }
            let title = panel["title"].as_str().unwrap_or("(untitled)");
            if panel["datasource"]["uid"] != "${datasource}" {
                problems.push(format!("{file}: panel {title:?} does not use ${{datasource}}"));
            }
            let targets = panel["targets"].as_array().cloned().unwrap_or_default();
            if targets.is_empty() {
                problems.push(format!("{file}: panel {title:?} has no query"));
            }
            for target in &targets {
                let expr = target["expr"].as_str().unwrap_or_default();
                if metric_names(expr).is_empty() {
                    problems.push(format!(
                        "{file}: panel {title:?}: query {expr:?} selects no metric"
                    ));
                }
                for metric in unknown_metrics(expr, &known) {
                    problems.push(format!(
                        "{file}: panel {title:?}: {metric} is exported by nothing"
                    ));
                }
                for label in unknown_labels(expr, &known) {
                    problems.push(format!("{file}: panel {title:?}: no such label: {label}"));
                }
            }
            queried += 1;
        }
        if queried == 0 {
            problems.push(format!("{file}: no panels"));
        }
    }
    assert!(problems.is_empty(), "dashboards:\n  {}", problems.join("\n  "));
}

/// The name check itself: a misspelt or mis-suffixed metric, or a label its metric lacks, is
/// caught; PromQL's and Grafana's syntax is not mistaken for metrics or labels.
#[test]
fn metric_name_check_catches_typos() {
    let known = Known::exported();
    let unknown = |expr: &str| {
        let mut found = unknown_metrics(expr, &known);
        found.extend(unknown_labels(expr, &known));
        found
    };
    assert_eq!(
        unknown("rate(controller_runtime_reconcile_totl[5m]) > 0"),
        ["controller_runtime_reconcile_totl"]
    );
    // A counter without `_total`, a histogram without `_bucket`.
    assert_eq!(unknown("rate(workqueue_adds[5m])"), ["workqueue_adds"]);
    assert_eq!(
        unknown("histogram_quantile(0.99, rate(controller_runtime_reconcile_time_seconds[5m]))"),
        ["controller_runtime_reconcile_time_seconds"]
    );
    assert_eq!(
        unknown("crwatch_source_synced == 0 or crwatch_source_sycned == 0"),
        ["crwatch_source_sycned"]
    );

    assert_eq!(
        unknown(r#"rate(controller_runtime_reconcile_total{reslt="error"}[5m])"#),
        ["controller_runtime_reconcile_total{reslt}"]
    );
    // Sources carry `source`, not `controller`.
    assert_eq!(
        unknown(r#"crwatch_source_synced{job="x", controller=~"$controller"} == 0"#),
        ["crwatch_source_synced{controller}"]
    );
    assert_eq!(
        unknown("label_values(workqueue_depth, sink)"),
        ["workqueue_depth{sink}"]
    );

    let clean = [
        r#"sum by (namespace, job, controller) (rate(controller_runtime_reconcile_total{result="error", controller=~"$controller"}[$__rate_interval]))
             / on (controller) group_left () sum without (result) (rate(controller_runtime_reconcile_total[5m])) > bool 0.1"#,
        "histogram_quantile(0.99, sum by (le, name) (rate(workqueue_queue_duration_seconds_bucket{name=~\"${controller}\"}[1h30m])))",
        "time() - max(crwatch_source_last_event_timestamp_seconds offset 5m) # a comment: not_a_metric",
        "crwatch_forward_dead_lettered_total unless crwatch_forward_dead_lettered_total offset 10m",
        "topk(5, sum(workqueue_depth) by (name)) * 1e3 + 0x1f",
        "label_values(controller_runtime_reconcile_total{job=~\"$job\"}, controller)",
        "label_values(job)",
        r#"sum(rate(controller_runtime_reconcile_time_seconds_bucket{controller="a", le="+Inf", pod=~"p.*"}[5m]))"#,
    ];
    for expr in clean {
        assert_eq!(unknown(expr), Vec::<String>::new(), "{expr}");
    }
    assert_eq!(
        metric_names(
            "sum by (le) (rate(controller_runtime_reconcile_time_seconds_bucket[5m])) / scalar(workqueue_depth)"
        ),
        BTreeSet::from([
            "controller_runtime_reconcile_time_seconds_bucket".to_owned(),
            "workqueue_depth".to_owned()
        ])
    );
}
