//! `crwatch forward` end to end against crwatch-apiserver and a local HTTP receiver: a sink that
//! goes down and comes back, the forwarder killed and restarted, dropped watches and 410 Gone,
//! a slow sink, filters, and configuration errors.

mod receiver;

use std::collections::BTreeMap;
use std::time::Duration;

use crwatch_apiserver::TestServer;
use crwatch_cli::Connection;
use crwatch_cli::forward::Forwarder;
use crwatch_cli::forward::config::ForwardConfig;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use receiver::{Receiver, wait_for};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_crwatch");

fn config(hook: &str, ns: &str, extra_resource: &str, extra: &str) -> String {
    format!(
        r#"resources:
  - resource: configmaps
    namespaces: [{ns}]
{extra_resource}sinks:
  - name: hook
    webhook:
      url: {hook}
      timeout: 2s
    retry:
      initialBackoff: 10ms
      maxBackoff: 100ms
metrics: "127.0.0.1:0"
probes: "127.0.0.1:0"
{extra}"#
    )
}

async fn start(server: &TestServer, yaml: &str) -> Forwarder {
    let config = ForwardConfig::parse(yaml, "forward.yaml").expect("valid config");
    let conn = Connection {
        kubeconfig: Some(server.kubeconfig().to_path_buf()),
        context: None,
    };
    crwatch_cli::forward::start(config, "forward.yaml", &conn)
        .await
        .expect("forwarder starts")
}

async fn namespace(server: &TestServer, ns: &str) {
    server
        .server()
        .apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))
        .await
        .expect("namespace");
}

async fn create(api: &Api<ConfigMap>, name: &str, n: u32) -> ConfigMap {
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": name},
        "data": {"n": n.to_string()},
    }))
    .unwrap();
    api.create(&PostParams::default(), &cm).await.expect("create")
}

async fn set(api: &Api<ConfigMap>, name: &str, key: &str, value: &str) -> ConfigMap {
    let patch = json!({"data": {key: value}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch")
}

fn id_of(cm: &ConfigMap) -> String {
    format!(
        "{}:{}",
        cm.metadata.uid.as_deref().unwrap(),
        cm.metadata.resource_version.as_deref().unwrap()
    )
}

/// The `data.n` values each object's events carried, in arrival order, repeats of one event id
/// folded (at-least-once may repeat a delivery; order must hold regardless).
fn sequences(events: &[Value]) -> BTreeMap<String, Vec<String>> {
    let mut seen_ids = std::collections::BTreeSet::new();
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in events {
        if !seen_ids.insert(e["id"].as_str().unwrap().to_string()) {
            continue;
        }
        let subject = e["subject"].as_str().unwrap().to_string();
        let n = e["data"]["object"]["data"]["n"]
            .as_str()
            .unwrap_or("-")
            .to_string();
        out.entry(subject).or_default().push(n);
    }
    out
}

fn metric(forwarder: &Forwarder, name: &str) -> f64 {
    forwarder
        .registry
        .encode()
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn a_sink_down_for_a_while_loses_nothing_and_keeps_per_object_order() {
    let server = TestServer::start().await.unwrap();
    namespace(&server, "down").await;
    let rx = Receiver::start().await;
    let fwd = start(&server, &config(&rx.url(), "down", "", "")).await;
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "down");
    create(&api, "a", 0).await;
    create(&api, "b", 0).await;
    wait_for("two ADDED events", || rx.len() == 2).await;

    rx.set_up(false);
    let mut last = Vec::new();
    for i in 1..=5 {
        last.push(id_of(&set(&api, "a", "n", &i.to_string()).await));
        last.push(id_of(&set(&api, "b", "n", &i.to_string()).await));
    }
    wait_for("failed attempts while the sink is down", || {
        metric(&fwd, "crwatch_forward_failed_total") >= 2.0
    })
    .await;
    rx.set_up(true);
    wait_for("every change delivered", || last.iter().all(|id| rx.has_id(id))).await;

    let seqs = sequences(&rx.events());
    let want: Vec<String> = (0..=5).map(|i| i.to_string()).collect();
    assert_eq!(seqs["down/a"], want, "object a: every change, in order");
    assert_eq!(seqs["down/b"], want, "object b: every change, in order");
    assert!(metric(&fwd, "crwatch_forward_retried_total") >= 1.0);
    fwd.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_killed_forwarder_resumes_from_its_checkpoint_without_losing_changes() {
    let server = TestServer::start().await.unwrap();
    namespace(&server, "kill").await;
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = dir.path().join("checkpoint.json");
    let yaml = config(
        &rx.url(),
        "kill",
        "",
        &format!(
            "checkpoint:\n  path: {}\n  interval: 20ms\n",
            checkpoint.display()
        ),
    );
    let cfg = dir.path().join("forward.yaml");
    std::fs::write(&cfg, yaml).unwrap();
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "kill");
    for name in ["a", "b", "c"] {
        create(&api, name, 0).await;
    }

    let spawn = || {
        tokio::process::Command::new(BIN)
            .args(["forward", "-f"])
            .arg(&cfg)
            .arg("--kubeconfig")
            .arg(server.kubeconfig())
            .env_remove("KUBECONFIG")
            .kill_on_drop(true)
            .spawn()
            .expect("crwatch forward starts")
    };
    let mut child = spawn();
    wait_for("three ADDED events", || rx.len() >= 3).await;
    let before = rx.len();
    wait_for("a checkpoint on disk", || {
        std::fs::read_to_string(&checkpoint).is_ok_and(|t| t.contains("\"kill/c\""))
    })
    .await;
    child.kill().await.unwrap();

    // Changes while the forwarder is dead; the server still has this history.
    let mut expected = Vec::new();
    for i in 1..=4 {
        expected.push(id_of(&set(&api, "a", "n", &i.to_string()).await));
    }
    expected.push(id_of(&create(&api, "d", 0).await));
    let uid_c = api.get("c").await.unwrap().metadata.uid.unwrap();
    api.delete("c", &DeleteParams::default()).await.unwrap();

    let mut child = spawn();
    wait_for("every change made while it was down", || {
        expected.iter().all(|id| rx.has_id(id)) && rx.events().iter().any(|e| is_deletion_of(e, &uid_c))
    })
    .await;
    let events = rx.events();
    let seqs = sequences(&events);
    assert_eq!(
        seqs["kill/a"],
        vec!["0", "1", "2", "3", "4"],
        "each intermediate change, in order"
    );
    assert!(
        !events[before..].iter().any(|e| e["subject"] == "kill/b"),
        "the unchanged object is not sent again"
    );
    child.kill().await.unwrap();
}

fn is_deletion_of(e: &Value, uid: &str) -> bool {
    e["type"] == "io.crwatch.resource.deleted" && e["id"].as_str().is_some_and(|id| id.starts_with(uid))
}

#[tokio::test]
async fn dropped_watches_and_410_gone_send_only_real_changes_with_stable_ids() {
    let server = TestServer::start().await.unwrap();
    namespace(&server, "gone").await;
    let rx = Receiver::start().await;
    let fwd = start(&server, &config(&rx.url(), "gone", "", "")).await;
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "gone");
    for name in ["a", "b", "c"] {
        create(&api, name, 0).await;
    }
    wait_for("three ADDED events", || rx.len() == 3).await;

    server.faults().drop_watches();
    let a1 = id_of(&set(&api, "a", "n", "1").await);
    wait_for("the change after the dropped watch", || rx.has_id(&a1)).await;
    assert_eq!(rx.len(), 4, "a resumed watch repeats nothing");

    // Force 410 Gone: the change happens while the watch is away and the history is compacted.
    let relists = metric(&fwd, "crwatch_forward_relists_total");
    let c1 = write_during_410(&server, "gone", "c", "1").await;
    wait_for("the change found by the relist", || rx.has_id(&c1)).await;
    wait_for("a relist", || {
        metric(&fwd, "crwatch_forward_relists_total") > relists
    })
    .await;
    let events = rx.events();
    assert_eq!(
        events.len(),
        5,
        "only the real change, no repeated ADDED: {events:#?}"
    );
    assert_eq!(events[4]["type"], "io.crwatch.resource.modified");
    assert_eq!(events[4]["data"]["diff"][0]["path"], "data.n");
    fwd.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_slow_sink_holds_the_watch_back_instead_of_buffering_everything() {
    let server = TestServer::start().await.unwrap();
    namespace(&server, "slow").await;
    let rx = Receiver::start().await;
    rx.set_delay(Duration::from_millis(2));
    let yaml = config(&rx.url(), "slow", "", "")
        .replace("    retry:", "    queueSize: 20\n    parallelism: 2\n    retry:");
    let fwd = start(&server, &yaml).await;
    let total = 300;
    for i in 0..total {
        server
            .server()
            .apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("cm-{i}"), "namespace": "slow"}, "data": {"n": "0"}}))
            .await
            .unwrap();
    }
    let mut max_in_flight = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while rx.len() < total {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {total} delivered",
            rx.len()
        );
        max_in_flight = max_in_flight.max(fwd.in_flight());
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // 20 queued, one in each of the 2 lanes, and one waiting in the dispatcher.
    assert!(
        max_in_flight <= 23,
        "in flight at most queue + lanes + 1, saw {max_in_flight}"
    );
    assert!(
        max_in_flight >= 10,
        "the queue did fill up ({max_in_flight}), so the bound was tested"
    );
    fwd.shutdown().await.unwrap();
}

#[tokio::test]
async fn event_and_field_filters_pick_the_changes_to_forward() {
    let server = TestServer::start().await.unwrap();
    namespace(&server, "filter").await;
    let rx = Receiver::start().await;
    let yaml = config(
        &rx.url(),
        "filter",
        "    events: [modified, deleted]\n    fields: [data.watched]\n",
        "",
    );
    let fwd = start(&server, &yaml).await;
    // The probes answer ready once the stream has listed; /metrics serves the forwarder's families.
    let probes = fwd.probes_addr.expect("probes on");
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let r = http.get(format!("http://{probes}/readyz")).send().await.unwrap();
        if r.status() == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never ready: {}",
            r.status()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let metrics_addr = fwd.metrics_addr.expect("metrics on");
    let text = http
        .get(format!("http://{metrics_addr}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("crwatch_forward_relists_total"), "{text}");
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "filter");
    create(&api, "a", 0).await;
    set(&api, "a", "other", "x").await;
    let wanted = id_of(&set(&api, "a", "watched", "y").await);
    wait_for("the watched field's change", || rx.has_id(&wanted)).await;
    api.delete("a", &DeleteParams::default()).await.unwrap();
    wait_for("the deletion", || rx.len() == 2).await;
    let types: Vec<_> = rx
        .events()
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        types,
        ["io.crwatch.resource.modified", "io.crwatch.resource.deleted"]
    );
    assert_eq!(
        metric(&fwd, "crwatch_forward_filtered_total"),
        2.0,
        "the ADDED and the unwatched change"
    );
    fwd.shutdown().await.unwrap();
}

#[tokio::test]
async fn configuration_errors_name_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.yaml");
    std::fs::write(
        &cfg,
        "resources:\n  - resource: db\n    namespace: [a]\nsinks:\n  - name: x\n    file: {path: \"-\"}\n",
    )
    .unwrap();
    let out = tokio::process::Command::new(BIN)
        .args(["forward", "-f"])
        .arg(&cfg)
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad.yaml:3:5: unknown field `namespace`"),
        "{stderr}"
    );

    std::fs::write(
        &cfg,
        "resources:\n  - resource: db\nsinks:\n  - name: x\n    file: {path: \"-\"}\n",
    )
    .unwrap();
    let out = tokio::process::Command::new(BIN)
        .args(["forward", "--check", "-f"])
        .arg(&cfg)
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("configuration is valid"));

    // Out-of-range numbers are refused at the value, by --check and at start alike (they once
    // passed --check and then panicked, or allocated until the process was killed).
    for (setting, want) in [
        (
            "queueSize: 18446744073709551615",
            "bad.yaml:6:16: queueSize: must be between 1 and 1000000",
        ),
        (
            "parallelism: 100000000",
            "bad.yaml:6:18: parallelism: must be between 1 and 1024",
        ),
    ] {
        std::fs::write(
            &cfg,
            format!("resources:\n  - resource: db\nsinks:\n  - name: x\n    file: {{path: \"-\"}}\n    {setting}\n"),
        )
        .unwrap();
        for check in [true, false] {
            let mut cmd = tokio::process::Command::new(BIN);
            cmd.arg("forward");
            if check {
                cmd.arg("--check");
            }
            let out = cmd.arg("-f").arg(&cfg).output().await.unwrap();
            assert_eq!(out.status.code(), Some(1));
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(stderr.contains(want), "{stderr}");
            assert!(!stderr.contains("panicked"), "{stderr}");
        }
    }
}

/// `--check` checks every broker sink's settings, secrets and files without dialling the
/// broker: a listener that would see any connection attempt sees none, and a secret that
/// cannot be read still fails the check.
#[tokio::test]
async fn check_never_connects_to_brokers() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("brokers.yaml");
    let config = |password_env: &str| {
        [
            "resources:".to_string(),
            "  - resource: configmaps".into(),
            "sinks:".into(),
            "  - name: n".into(),
            format!("    nats: {{url: [\"nats://127.0.0.1:{port}\"]}}"),
            "  - name: a".into(),
            format!("    amqp: {{url: \"amqp://127.0.0.1:{port}/%2f\", exchange: x}}"),
            "  - name: m".into(),
            format!("    mqtt: {{url: \"mqtt://127.0.0.1:{port}\"}}"),
            "  - name: r".into(),
            format!("    redis: {{url: \"redis://127.0.0.1:{port}/0\", passwordEnv: {password_env}}}"),
        ]
        .join("\n")
    };
    std::fs::write(&cfg, config("CRWATCH_TEST_REDIS_PASSWORD")).unwrap();
    let out = tokio::process::Command::new(BIN)
        .args(["forward", "--check", "-f"])
        .arg(&cfg)
        .env("CRWATCH_TEST_REDIS_PASSWORD", "s3cret-value")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("s3cret-value"), "{stderr}");
    match listener.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("--check connected to a broker: {other:?}"),
    }
    // A secret that is not there fails the check, naming the sink and the variable.
    std::fs::write(&cfg, config("CRWATCH_TEST_UNSET_VARIABLE")).unwrap();
    let out = tokio::process::Command::new(BIN)
        .args(["forward", "--check", "-f"])
        .arg(&cfg)
        .env_remove("CRWATCH_TEST_UNSET_VARIABLE")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("CRWATCH_TEST_UNSET_VARIABLE"), "{stderr}");
}

#[tokio::test]
async fn skip_existing_skips_only_the_first_list_not_a_later_relist() {
    let server = TestServer::start().await.unwrap();
    namespace(&server, "skip").await;
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "skip");
    let old = create(&api, "old", 0).await;
    let rx = Receiver::start().await;
    let fwd = start(
        &server,
        &config(&rx.url(), "skip", "    skipExisting: true\n", ""),
    )
    .await;
    assert!(fwd.wait_synced(Duration::from_secs(20)).await, "the first list");
    let a = id_of(&create(&api, "a", 0).await);
    wait_for("the new object", || rx.has_id(&a)).await;
    assert!(!rx.has_id(&id_of(&old)), "the existing object is skipped");
    // Everything the forwarder knew is deleted, so the relist below starts from nothing known.
    api.delete("old", &DeleteParams::default()).await.unwrap();
    api.delete("a", &DeleteParams::default()).await.unwrap();
    wait_for("both deletions", || {
        rx.events()
            .iter()
            .filter(|e| e["type"] == "io.crwatch.resource.deleted")
            .count()
            == 2
    })
    .await;

    // A 410 relist must forward what appeared meanwhile, skipExisting or not.
    let b = write_during_410(&server, "skip", "b", "0").await;
    wait_for("the object created during the gap", || rx.has_id(&b)).await;
    fwd.shutdown().await.unwrap();
}

/// Cut the forwarder's watch off, write ConfigMap `ns/name` (data.n = `n`) straight into the
/// store, and compact the history, so the watch comes back to 410 Gone and must relist.
/// Returns the write's CloudEvent id.
async fn write_during_410(server: &TestServer, ns: &str, name: &str, n: &str) -> String {
    let faults = server.faults();
    faults.pause();
    let watches = faults.count("watch", "configmaps");
    faults.drop_watches();
    // The old watch must be gone (its successor is held by the pause) before the write.
    wait_for("the forwarder to watch again", || {
        faults.count("watch", "configmaps") > watches
    })
    .await;
    // Written past the paused HTTP front, straight into the store.
    let cm = server
        .server()
        .apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": ns}, "data": {"n": n}}))
        .await
        .unwrap();
    faults.compact();
    faults.resume();
    format!(
        "{}:{}",
        cm["metadata"]["uid"].as_str().unwrap(),
        cm["metadata"]["resourceVersion"].as_str().unwrap()
    )
}
