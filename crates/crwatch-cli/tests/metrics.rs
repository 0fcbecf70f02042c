//! `crwatch metrics` end to end: the real binary against crwatch-apiserver with the Database
//! CRD, scraped over HTTP. Series follow objects as they change and are deleted; a value
//! that cannot be read is counted, not fatal; bad configurations exit with the file, line
//! and field; `--check`; a file source; and the output passes `promtool check metrics`.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{BIN, WAIT, database, databases, server};
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const CONFIG: &str = r#"
kind: CustomResourceStateMetrics
spec:
  resources:
    - groupVersionKind:
        group: stable.example.com
        version: v1
        kind: Database
      labelsFromPath:
        namespace: [metadata, namespace]
        name: [metadata, name]
      metrics:
        - name: database_status_phase
          help: "Database phase"
          each:
            type: StateSet
            stateSet:
              labelName: phase
              path: [status, phase]
              list: [Pending, Ready, Failed]
        - name: database_ready
          help: "Database ready"
          each:
            type: Gauge
            gauge:
              path: [status, ready]
              nilIsZero: true
        - name: database_info
          help: "Database engine"
          each:
            type: Info
            info:
              labelsFromPath:
                engine: [spec, engine]
                size: [spec, size]
        - name: database_score
          help: "A number from an annotation"
          each:
            type: Gauge
            gauge:
              path: [metadata, annotations, score]
"#;

/// A running `crwatch metrics` and the address it serves on.
struct Metrics {
    child: Child,
    url: String,
    /// What it printed before it served (warnings).
    preamble: Vec<String>,
}

impl Metrics {
    async fn start(args: &[&str]) -> Metrics {
        let mut child = Command::new(BIN)
            .arg("metrics")
            .args(args)
            .args(["--listen", "127.0.0.1:0"])
            .env_remove("KUBECONFIG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("crwatch metrics starts");
        let stderr = child.stderr.take().expect("stderr piped");
        let mut lines = BufReader::new(stderr).lines();
        let mut preamble = vec![];
        let url = tokio::time::timeout(WAIT, async {
            while let Some(line) = lines.next_line().await.expect("stderr readable") {
                if let Some(rest) = line.split(" on http://").nth(1) {
                    let addr = rest.trim_end_matches("/metrics");
                    return format!("http://{addr}");
                }
                preamble.push(line);
            }
            panic!("crwatch metrics exited before serving: {preamble:?}");
        })
        .await
        .expect("crwatch metrics says where it serves");
        // Keep draining stderr so the process never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Metrics { child, url, preamble }
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        reqwest::get(format!("{}{path}", self.url))
            .await
            .expect("HTTP request")
    }

    async fn scrape(&self) -> String {
        let r = self.get("/metrics").await;
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers()["content-type"].to_str().expect("ascii"),
            "text/plain; version=0.0.4; charset=utf-8"
        );
        r.text().await.expect("body")
    }

    /// Scrape until `cond` holds on the output.
    async fn wait_for(&self, what: &str, cond: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let text = self.scrape().await;
            if cond(&text) {
                return text;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}; last scrape:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(mut self) {
        self.child.kill().await.expect("kill crwatch metrics");
    }
}

fn series(name: &str, labels: &str, value: &str) -> String {
    format!(
        "{name}{{customresource_group=\"stable.example.com\",customresource_kind=\"Database\",customresource_version=\"v1\",{labels}}} {value}\n"
    )
}

#[tokio::test]
async fn series_follow_objects_and_bad_values_are_counted() {
    let server = server().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("ksm.yaml");
    std::fs::write(&cfg, CONFIG).expect("config written");
    let mut a = database("a", "default", "1Gi", json!({}));
    a["metadata"]["annotations"] = json!({"score": "high"});
    server.server().apply(a).await.expect("a created");
    server
        .server()
        .apply(database("b", "default", "2Gi", json!({})))
        .await
        .expect("b created");
    databases(&server, "default")
        .patch_status(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Ready", "ready": true}})),
        )
        .await
        .expect("status of a");

    let kubeconfig = server.kubeconfig().display().to_string();
    let m = Metrics::start(&[
        "-f",
        cfg.to_str().expect("utf-8 path"),
        "--kubeconfig",
        &kubeconfig,
    ])
    .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while m.get("/readyz").await.status() != 200 {
        assert!(tokio::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(m.get("/healthz").await.status(), 200);

    let text = m.scrape().await;
    for want in [
        "# HELP kube_customresource_database_status_phase Database phase\n# TYPE kube_customresource_database_status_phase gauge\n".to_string(),
        series("kube_customresource_database_status_phase", "name=\"a\",namespace=\"default\",phase=\"Ready\"", "1"),
        series("kube_customresource_database_status_phase", "name=\"a\",namespace=\"default\",phase=\"Failed\"", "0"),
        series("kube_customresource_database_ready", "name=\"a\",namespace=\"default\"", "1"),
        // No status yet: 0 with nilIsZero, and no phase series (a state under status that
        // is not there is skipped, as kube-state-metrics does).
        series("kube_customresource_database_ready", "name=\"b\",namespace=\"default\"", "0"),
        series(
            "kube_customresource_database_info",
            "engine=\"PostgreSQL\",name=\"b\",namespace=\"default\",size=\"2Gi\"",
            "1",
        ),
        // "high" is not a number: no series for a, counted; b has no annotation (an error too,
        // as kube-state-metrics logs a path that does not resolve).
        "crwatch_customresource_state_errors{customresource_group=\"stable.example.com\",customresource_kind=\"Database\",customresource_version=\"v1\",metric=\"kube_customresource_database_score\"} 2\n".to_string(),
    ] {
        assert!(text.contains(&want), "missing {want:?} in:\n{text}");
    }
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("kube_customresource_database_status_phase{") && l.contains("name=\"b\"")),
        "{text}"
    );
    assert!(!text.contains("high"), "values that could not be read never show");

    // The status changes: the series follow.
    databases(&server, "default")
        .patch_status(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Failed", "ready": false}})),
        )
        .await
        .expect("status of a");
    m.wait_for("a Failed", |t| {
        t.contains(&series(
            "kube_customresource_database_status_phase",
            "name=\"a\",namespace=\"default\",phase=\"Failed\"",
            "1",
        )) && t.contains(&series(
            "kube_customresource_database_ready",
            "name=\"a\",namespace=\"default\"",
            "0",
        ))
    })
    .await;

    // A good value: the series appears and the error count drops.
    let mut b = database("b", "default", "2Gi", json!({}));
    b["metadata"]["annotations"] = json!({"score": "42"});
    server.server().apply(b).await.expect("b updated");
    m.wait_for("b's score", |t| {
        t.contains(&series(
            "kube_customresource_database_score",
            "name=\"b\",namespace=\"default\"",
            "42",
        )) && t.contains("metric=\"kube_customresource_database_score\"} 1\n")
    })
    .await;

    // Deleted: its series go.
    databases(&server, "default")
        .delete("a", &DeleteParams::default())
        .await
        .expect("a deleted");
    let text = m.wait_for("a's series gone", |t| !t.contains("name=\"a\"")).await;
    assert!(text.contains("name=\"b\""));

    // The output is valid exposition format for Prometheus' own checker.
    promtool_accepts(&text).await;
    m.stop().await;
}

/// `promtool check metrics` parses the text (its lint findings, such as a gauge named like a
/// counter, are not format errors; a parse error is).
async fn promtool_accepts(text: &str) {
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        panic!("promtool is needed (Debian's prometheus package; scripts/test installs it)");
    };
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(text.as_bytes()).await.expect("write to promtool");
    }
    let out = child.wait_with_output().await.expect("promtool runs");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !report.contains("error while linting") && !report.contains("parse error"),
        "promtool: {report}\n{text}"
    );
}

async fn run_crwatch(args: &[&str]) -> (i32, String, String) {
    let out = tokio::time::timeout(
        WAIT,
        Command::new(BIN)
            .args(args)
            .env_remove("KUBECONFIG")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("crwatch exits in time")
    .expect("crwatch runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn bad_configurations_exit_with_file_line_and_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ksm.yaml");
    let p = path.to_str().expect("utf-8 path").to_string();

    // An unknown metric type, on line 9.
    std::fs::write(
        &path,
        "kind: CustomResourceStateMetrics\nspec:\n  resources:\n    - groupVersionKind: {group: g, version: v1, kind: K}\n      metrics:\n        - name: x\n          help: h\n          each:\n            type: Histogram\n",
    )
    .expect("written");
    let (code, _, err) = run_crwatch(&["metrics", "-f", &p, "--check"]).await;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "error: {p}:9:19: spec.resources[0].metrics[0].each.type: unknown metric type \"Histogram\": use Gauge, StateSet or Info"
        )),
        "{err}"
    );

    // A list lookup without `=`, on line 11.
    std::fs::write(
        &path,
        "kind: CustomResourceStateMetrics\nspec:\n  resources:\n    - groupVersionKind: {group: g, version: v1, kind: K}\n      metrics:\n        - name: x\n          each:\n            type: Gauge\n            gauge:\n              path:\n                - \"[type]\"\n",
    )
    .expect("written");
    let (code, _, err) = run_crwatch(&["metrics", "-f", &p, "--check"]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&format!("{p}:11:17: ")), "{err}");
    assert!(
        err.contains("each.gauge.path: invalid list lookup: [type] (use [key=value])"),
        "{err}"
    );

    // A YAML type error: path must be a list.
    std::fs::write(
        &path,
        "spec:\n  resources:\n    - groupVersionKind: {group: g, version: v1, kind: K}\n      metrics:\n        - name: x\n          each:\n            type: Gauge\n            gauge:\n              path: status.phase\n",
    )
    .expect("written");
    let (code, _, err) = run_crwatch(&["metrics", "-f", &p, "--check"]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&format!("{p}:9:")), "{err}");
    assert!(err.contains("expected a list of strings"), "{err}");

    // A missing file.
    let (code, _, err) = run_crwatch(&["metrics", "-f", "/nonexistent/ksm.yaml", "--check"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("/nonexistent/ksm.yaml: cannot read"), "{err}");

    // Usage: -f is required.
    let (code, _, err) = run_crwatch(&["metrics"]).await;
    assert_eq!(code, 2, "{err}");

    // The operators' configuration in deploy/ is valid.
    let deploy = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/kube-state-metrics/crwatch-operators.yaml"
    );
    let (code, out, err) = run_crwatch(&["metrics", "-f", deploy, "--check"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("configuration is valid: 3 resource(s)"), "{out}");
}

/// As kube-state-metrics: a kind whose CRD is not installed yet is named in a warning, does
/// not hold readiness back, and its metrics appear once the CRD and objects do.
#[tokio::test]
async fn a_kind_served_later_is_picked_up() {
    let server = server().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("ksm.yaml");
    std::fs::write(
        &cfg,
        "spec:\n  resources:\n    - groupVersionKind: {group: myteam.io, version: v1, kind: Foo}\n      labelsFromPath: {name: [metadata, name]}\n      metrics:\n        - name: foo_x\n          help: x\n          each: {type: Gauge, gauge: {path: [spec, x]}}\n",
    )
    .expect("written");
    let kubeconfig = server.kubeconfig().display().to_string();
    let metrics = Metrics::start(&[
        "-f",
        cfg.to_str().expect("utf-8"),
        "--kubeconfig",
        &kubeconfig,
        "--discovery-interval",
        "1s",
    ])
    .await;
    let warning = metrics.preamble.join("\n");
    assert!(
        warning.contains(
            "spec.resources[0]: the server has no resource of kind Foo in myteam.io/v1; is its CustomResourceDefinition installed?"
        ),
        "{warning}"
    );
    assert_eq!(metrics.get("/readyz").await.status(), 200);
    assert!(!metrics.scrape().await.contains("kube_customresource_foo_x{"));

    let crd = dir.path().join("crd.yaml");
    std::fs::write(
        &crd,
        r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: foos.myteam.io}
spec:
  group: myteam.io
  names: {kind: Foo, plural: foos, singular: foo, listKind: FooList}
  scope: Namespaced
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec: {type: object, properties: {x: {type: integer}}}
---
apiVersion: myteam.io/v1
kind: Foo
metadata: {name: one, namespace: default}
spec: {x: 5}
"#,
    )
    .expect("written");
    server
        .server()
        .apply_file(&crd)
        .await
        .expect("CRD and Foo applied");
    metrics
        .wait_for("the Foo's series", |t| {
            t.contains("kube_customresource_foo_x{customresource_group=\"myteam.io\",customresource_kind=\"Foo\",customresource_version=\"v1\",name=\"one\"} 5\n")
        })
        .await;
    metrics.stop().await;
}

#[tokio::test]
async fn a_file_source_serves_the_same_metrics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let objects = dir.path().join("foos");
    std::fs::create_dir(&objects).expect("mkdir");
    std::fs::write(
        objects.join("foo.yaml"),
        "apiVersion: myteam.io/v1\nkind: Foo\nmetadata: {name: foo, namespace: team}\nstatus: {uptime: 43.21, phase: Pending}\n",
    )
    .expect("object written");
    let cfg = dir.path().join("ksm.yaml");
    std::fs::write(
        &cfg,
        format!(
            "kind: CustomResourceStateMetrics\nspec:\n  resources:\n    - groupVersionKind: {{group: myteam.io, version: v1, kind: Foo}}\n      source: file://{}\n      metrics:\n        - name: uptime\n          help: Foo uptime\n          each:\n            type: Gauge\n            gauge:\n              path: [status, uptime]\n",
            objects.display()
        ),
    )
    .expect("config written");
    let m = Metrics::start(&["-f", cfg.to_str().expect("utf-8")]).await;
    let want = "kube_customresource_uptime{customresource_group=\"myteam.io\",customresource_kind=\"Foo\",customresource_version=\"v1\"} 43.21\n";
    m.wait_for("the documented uptime series", |t| t.contains(want))
        .await;
    // Edit the file: the value follows.
    std::fs::write(
        objects.join("foo.yaml"),
        "apiVersion: myteam.io/v1\nkind: Foo\nmetadata: {name: foo, namespace: team}\nstatus: {uptime: 50}\n",
    )
    .expect("object rewritten");
    m.wait_for("the new uptime", |t| {
        t.contains("customresource_version=\"v1\"} 50\n")
    })
    .await;
    std::fs::remove_file(objects.join("foo.yaml")).expect("object removed");
    m.wait_for("no series left", |t| !t.contains("kube_customresource_uptime{"))
        .await;
    m.stop().await;
}
