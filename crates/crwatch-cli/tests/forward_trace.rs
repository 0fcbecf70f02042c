//! The real `crwatch forward` binary with `OTEL_EXPORTER_OTLP_ENDPOINT` set: each change is a
//! `receive` span with a `deliver` span per sink attempt, received by a real OTLP/gRPC receiver,
//! and the delivered CloudEvent's `traceparent` is the `receive` span's context (the event's
//! creation, as OpenTelemetry's CloudEvents conventions say), the same for every attempt. With the
//! collector unreachable, forwarding goes on unaffected.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crwatch_apiserver::TestServer;
use crwatch_testsupport::otlp::OtlpReceiver;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::PostParams;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_crwatch");
const WAIT: Duration = Duration::from_secs(30);

/// The forwarder process; killed if the test fails before stopping it.
struct Forward(Option<Child>);

impl Forward {
    /// Forwarding to a file sink, and to a binary-mode webhook at `hook` when given.
    fn start(server: &TestServer, dir: &Path, endpoint: &str, hook: Option<&str>) -> (Self, PathBuf) {
        let out = dir.join("out.jsonl");
        let cfg = dir.join("forward.yaml");
        let webhook = hook
            .map(|url| format!("  - name: hook\n    webhook: {{url: \"{url}\", mode: binary}}\n"))
            .unwrap_or_default();
        std::fs::write(
            &cfg,
            format!(
                "resources:\n  - resource: configmaps\n    namespaces: [t]\nsinks:\n  - name: out\n    file: {{path: \"{}\"}}\n{webhook}metrics: \"off\"\nprobes: \"off\"\nshutdownGrace: 2s\n",
                out.display()
            ),
        )
        .unwrap();
        let child = Command::new(BIN)
            .args(["forward", "-f"])
            .arg(&cfg)
            .arg("--kubeconfig")
            .arg(server.kubeconfig())
            .env_remove("CRWATCH_LOG")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .env_remove("OTEL_SERVICE_NAME")
            .env_remove("OTEL_RESOURCE_ATTRIBUTES")
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
            .env("OTEL_BSP_SCHEDULE_DELAY", "50")
            // An unreachable collector: each export gives up quickly.
            .env("OTEL_BSP_EXPORT_TIMEOUT", "1000")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        (Forward(Some(child)), out)
    }

    /// SIGTERM, then the exit status and stderr.
    fn stop(mut self) -> (std::process::ExitStatus, String) {
        let mut child = self.0.take().unwrap();
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        let status = child.wait().unwrap();
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        (status, stderr)
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A webhook receiver keeping each request's headers.
struct Hook {
    url: String,
    requests: std::sync::Arc<std::sync::Mutex<Vec<std::collections::HashMap<String, String>>>>,
}

impl Hook {
    async fn start() -> Hook {
        let requests: std::sync::Arc<std::sync::Mutex<Vec<_>>> = Default::default();
        let seen = requests.clone();
        let app = axum::Router::new().route(
            "/",
            axum::routing::post(move |headers: axum::http::HeaderMap| {
                let seen = seen.clone();
                async move {
                    let map = headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string()))
                        .collect();
                    seen.lock().unwrap().push(map);
                    axum::http::StatusCode::OK
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Hook { url, requests }
    }

    /// The headers of the request carrying `subject` (percent-encoded as binary mode sends it).
    async fn wait_for_subject(&self, subject: &str) -> std::collections::HashMap<String, String> {
        let want = subject.replace('/', "%2F");
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let found = self
                .requests
                .lock()
                .unwrap()
                .iter()
                .find(|h| h.get("ce-subject").is_some_and(|s| s == subject || *s == want))
                .cloned();
            if let Some(headers) = found {
                return headers;
            }
            assert!(tokio::time::Instant::now() < deadline, "no request for {subject}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn namespace(server: &TestServer) {
    server
        .server()
        .apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "t"}}))
        .await
        .unwrap();
}

async fn create(api: &Api<ConfigMap>, name: &str) {
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": name}, "data": {"v": "1"}})).unwrap();
    api.create(&PostParams::default(), &cm).await.unwrap();
}

/// Waits until the file sink holds an event for each of `subjects`; returns all events.
async fn delivered(out: &Path, subjects: &[String]) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let events: Vec<Value> = std::fs::read_to_string(out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        if subjects
            .iter()
            .all(|s| events.iter().any(|e| e["subject"] == s.as_str()))
        {
            return events;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not all of {subjects:?} delivered: {events:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_delivered_traceparent_is_the_receive_span() {
    let server = TestServer::start().await.unwrap();
    namespace(&server).await;
    let receiver = OtlpReceiver::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let hook = Hook::start().await;
    let (forward, out) = Forward::start(&server, dir.path(), &receiver.endpoint(), Some(&hook.url));
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "t");
    create(&api, "traced").await;
    let events = delivered(&out, &["t/traced".into()]).await;
    let event = events.iter().find(|e| e["subject"] == "t/traced").unwrap();
    // CloudEvents' distributed-tracing extension: W3C `traceparent`, version 00.
    let traceparent = event["traceparent"].as_str().expect("traceparent attribute");
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    assert_eq!(parts[0], "00");
    assert_eq!((parts[1].len(), parts[2].len()), (32, 16), "{traceparent}");
    assert_eq!(parts[3], "01", "sampled");
    assert!(event.get("tracestate").is_none(), "no empty tracestate");

    let (trace_id, span_id) = (parts[1].to_string(), parts[2].to_string());
    let deliver = receiver
        .wait_for(WAIT, "the deliver span", |spans| {
            spans
                .iter()
                .find(|s| s.name == "deliver" && s.parent_span_id == span_id)
                .cloned()
        })
        .await
        .unwrap();
    assert_eq!(deliver.name, "deliver");
    assert_eq!(deliver.trace_id, trace_id);
    assert_eq!(deliver.service, "crwatch");
    assert_eq!(deliver.attr("crwatch.forward.sink"), Some("out"));
    assert_eq!(deliver.attr("crwatch.forward.attempt"), Some("1"));
    assert_eq!(deliver.attr("crwatch.forward.outcome"), Some("delivered"));
    assert_eq!(deliver.attr("cloudevents.event_id"), event["id"].as_str());
    let receive = receiver
        .wait_for(WAIT, "the receive span", |spans| {
            spans
                .iter()
                .find(|s| s.span_id == deliver.parent_span_id)
                .cloned()
        })
        .await
        .unwrap();
    assert_eq!(receive.name, "receive");
    assert_eq!(receive.span_id, span_id, "traceparent names the receive span");
    assert_eq!(receive.trace_id, trace_id);
    assert_eq!(receive.attr("crwatch.object.key"), Some("t/traced"));
    assert_eq!(receive.attr("cloudevents.event_id"), event["id"].as_str());

    // The binary-mode webhook: the event's `traceparent` as `ce-traceparent` (the same for
    // every sink), and W3C Trace Context for the HTTP hop: that attempt's own `deliver` span.
    let headers = hook.wait_for_subject("t/traced").await;
    assert_eq!(headers["ce-traceparent"], traceparent);
    let hop = headers["traceparent"].clone();
    let hop: Vec<&str> = hop.split('-').collect();
    assert_eq!((hop.len(), hop[1]), (4, trace_id.as_str()), "{hop:?}");
    let hook_deliver = receiver
        .wait_for(WAIT, "the webhook's deliver span", |spans| {
            spans.iter().find(|s| s.span_id == hop[2]).cloned()
        })
        .await
        .unwrap();
    assert_eq!(hook_deliver.name, "deliver");
    assert_eq!(hook_deliver.attr("crwatch.forward.sink"), Some("hook"));
    assert_eq!(hook_deliver.parent_span_id, span_id, "under the receive span");

    let tree = crwatch_testsupport::otlp::render_tree(&receiver.spans(), &trace_id, |_| true);
    println!("trace {trace_id}:\n{tree}");

    let (status, stderr) = forward.stop();
    assert!(status.success(), "{stderr}");
    receiver.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_collector_does_not_hold_forwarding_back() {
    let server = TestServer::start().await.unwrap();
    namespace(&server).await;
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens there.
    let nobody = format!("http://127.0.0.1:{}", crwatch_testsupport::free_port().unwrap());
    let (forward, out) = Forward::start(&server, dir.path(), &nobody, None);
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "t");
    let names: Vec<String> = (0..50).map(|i| format!("cm-{i}")).collect();
    for name in &names {
        create(&api, name).await;
    }
    let subjects: Vec<String> = names.iter().map(|n| format!("t/{n}")).collect();
    let events = delivered(&out, &subjects).await;
    // Still traced: the consumer gets a context even though its spans cannot be exported.
    assert!(events.iter().all(|e| e["traceparent"].is_string()));
    let started = std::time::Instant::now();
    let (status, stderr) = forward.stop();
    assert!(status.success(), "{stderr}");
    // The exporter's final flush is bounded (5 s) on top of the shutdown grace.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert!(
        stderr.contains("exporting spans failed"),
        "the failure is logged:\n{stderr}"
    );
}
