//! OpenTelemetry traces from a watch event to its reconcile, received by a real OTLP/gRPC
//! receiver (crwatch-testsupport's): one change to a ConfigMap gives `watch event` → `enqueue`
//! and two `reconcile` spans (a failed one, then its retry with `retries` and `backoff_ms`),
//! parented by the event, with the retry's API write as a child span; `/metrics` shows the
//! reconcile-time histogram's exemplars with trace ids the receiver got.
//!
//! One test function: the tracing subscriber and the exporter are process-wide.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::cm;
use crwatch::controller::{Action, ReconcileError, Request};
use crwatch::manager::{Manager, ManagerConfig};
use crwatch::trace::TraceConfig;
use crwatch_apiserver::TestServer;
use crwatch_testsupport::otlp::{OtlpReceiver, ReceivedSpan};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

const WAIT: Duration = Duration::from_secs(30);

async fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string()
}

#[derive(Default)]
struct Ctx {
    /// Reconciles of the traced object so far (the first one fails).
    attempts: AtomicUsize,
}

fn named<'a>(spans: &'a [ReceivedSpan], name: &str, object: &str) -> Vec<&'a ReceivedSpan> {
    spans
        .iter()
        .filter(|s| s.name == name && s.attr("crwatch.object.name") == Some(object))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_change_is_traced_from_watch_event_to_reconcile_and_its_writes() {
    let receiver = OtlpReceiver::start().await.unwrap();
    let config = TraceConfig {
        endpoint: Some(receiver.endpoint()),
        schedule_delay: Duration::from_millis(50),
        ..TraceConfig::from_env("trace-test")
    };
    let guard = crwatch::trace::init(config)
        .unwrap()
        .expect("an endpoint is configured");
    let targets = tracing_subscriber::filter::Targets::new().with_target("crwatch", tracing::Level::INFO);
    tracing_subscriber::registry()
        .with(guard.layer().with_filter(targets))
        .init();

    let server = TestServer::start().await.unwrap();
    let options = crwatch::client::ClientOptions {
        insecure_http_credentials: true,
        ..Default::default()
    };
    // The controller's client is crwatch's (a span per request); the test's own is not.
    let client = crwatch::client::from_kubeconfig(Some(server.kubeconfig()), &options)
        .await
        .unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let mut mgr = Manager::new(
        client.clone(),
        ManagerConfig {
            metrics_addr: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            probe_addr: None,
            ..ManagerConfig::default()
        },
    );
    let ctx = Arc::new(Ctx::default());
    let writer: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let ctrl = mgr.controller("traced", mgr.factory().all::<ConfigMap>()).build(
        move |req: Request<ConfigMap>, ctx: Arc<Ctx>| {
            let writer = writer.clone();
            async move {
                let Request::Apply(obj) = req else {
                    return Ok(Action::done());
                };
                if obj.metadata.name.as_deref() != Some("traced") {
                    return Ok(Action::done());
                }
                if ctx.attempts.fetch_add(1, Ordering::SeqCst) == 0 {
                    return Err(ReconcileError::transient(anyhow::anyhow!("first attempt fails")));
                }
                // The retry writes: its POST is a child span of this reconcile.
                writer
                    .create(&PostParams::default(), &cm("traced-out", "written"))
                    .await
                    .map_err(ReconcileError::transient)?;
                Ok(Action::done())
            }
        },
        ctx.clone(),
    );
    mgr.add(ctrl);
    let mut bound = mgr.bound_addresses();
    let ready = mgr.readiness();
    let stop = CancellationToken::new();
    let stop2 = stop.clone();
    let run = tokio::spawn(mgr.run(async move { stop2.cancelled().await }));
    let metrics_addr = loop {
        if let (Some(m), _) = *bound.borrow_and_update() {
            break m;
        }
        bound.changed().await.unwrap();
    };
    common::wait_for(30, "manager ready", || ready.get().then_some(())).await;

    // The one change: a watch event after the initial list.
    cms.create(&PostParams::default(), &cm("traced", "v1"))
        .await
        .unwrap();

    let spans = receiver
        .wait_for(WAIT, "the retry's POST span", |spans| {
            spans
                .iter()
                .any(|s| s.attr("http.request.method") == Some("POST"))
                .then(|| spans.to_vec())
        })
        .await
        .unwrap();
    let events: Vec<_> = named(&spans, "watch event", "traced")
        .into_iter()
        .filter(|s| s.attr("crwatch.event.type") == Some("ADDED"))
        .collect();
    assert_eq!(
        events.len(),
        1,
        "one ADDED watch event for the object: {spans:#?}"
    );
    let event = events[0];
    assert_eq!(event.service, "trace-test");
    assert_eq!(event.parent_span_id, "", "the watch event starts the trace");
    assert_eq!(event.attr("k8s.namespace.name"), Some("default"));
    assert!(
        event
            .attr("crwatch.object.resource_version")
            .is_some_and(|rv| !rv.is_empty())
    );
    assert!(event.attr("crwatch.informer").is_some());

    let enqueues = named(&spans, "enqueue", "traced");
    assert!(
        enqueues
            .iter()
            .any(|s| s.parent_span_id == event.span_id && s.trace_id == event.trace_id),
        "enqueue is a child of the watch event: {enqueues:#?}"
    );
    assert!(
        enqueues
            .iter()
            .all(|s| s.attr("crwatch.controller") == Some("traced"))
    );

    let mut reconciles: Vec<_> = named(&spans, "reconcile", "traced");
    reconciles.sort_by_key(|s| s.start_unix_nanos);
    assert_eq!(
        reconciles.len(),
        2,
        "a failed reconcile and its retry: {reconciles:#?}"
    );
    for r in &reconciles {
        assert_eq!(r.trace_id, event.trace_id, "in the event's trace");
        assert_eq!(r.parent_span_id, event.span_id, "parented by the watch event");
        assert_eq!(r.attr("crwatch.controller"), Some("traced"));
        assert_eq!(r.attr("crwatch.queue.priority"), Some("0"));
        let in_queue: f64 = r
            .attr("crwatch.queue.time_ms")
            .expect("time in queue")
            .parse()
            .unwrap();
        assert!(in_queue >= 0.0);
    }
    let (failed, retry) = (reconciles[0], reconciles[1]);
    assert_eq!(failed.attr("crwatch.queue.retries"), Some("0"));
    assert_eq!(failed.attr("crwatch.reconcile.result"), Some("error"));
    assert_eq!(failed.attr("error.type"), Some("transient"));
    assert_eq!(failed.status_code, 2, "an error status");
    assert_eq!(failed.attr("crwatch.queue.backoff_ms"), None);
    assert_eq!(retry.attr("crwatch.queue.retries"), Some("1"));
    assert_eq!(retry.attr("crwatch.reconcile.result"), Some("success"));
    // client-go's first per-item backoff: 5 ms.
    assert_eq!(retry.attr("crwatch.queue.backoff_ms"), Some("5"));
    let waited: f64 = retry.attr("crwatch.queue.time_ms").unwrap().parse().unwrap();
    assert!(
        waited >= 5.0,
        "the retry waited its backoff in the queue: {waited} ms"
    );

    let posts: Vec<_> = spans
        .iter()
        .filter(|s| s.attr("http.request.method") == Some("POST"))
        .collect();
    assert_eq!(posts.len(), 1, "{posts:#?}");
    let post = posts[0];
    assert_eq!(
        post.parent_span_id, retry.span_id,
        "the write is a child of the retry"
    );
    assert_eq!(post.trace_id, event.trace_id);
    assert_eq!(post.name, "POST");
    assert_eq!(
        post.attr("url.path"),
        Some("/api/v1/namespaces/default/configmaps")
    );
    assert_eq!(post.attr("http.response.status_code"), Some("201"));
    // Informers' lists and watches are outside any span: no request span of their own.
    assert!(
        spans
            .iter()
            .filter(|s| s.attr("http.request.method").is_some())
            .all(|s| !s.parent_span_id.is_empty()),
        "every request span has a parent"
    );

    // The README's picture of one change (`--nocapture` shows it).
    let tree = crwatch_testsupport::otlp::render_tree(&spans, &event.trace_id, |k| {
        !matches!(
            k,
            "crwatch.informer"
                | "busy_ns"
                | "idle_ns"
                | "target"
                | "code.file.path"
                | "code.line.number"
                | "code.module.name"
        )
    });
    println!("trace {}:\n{tree}", event.trace_id);

    // Exemplars: every trace id on the reconcile-time histogram (the latest per bucket) is a
    // trace the receiver gets.
    let text = http_get(metrics_addr, "/metrics").await;
    let exemplars: HashSet<String> = text
        .lines()
        .filter(|l| {
            l.starts_with("controller_runtime_reconcile_time_seconds_bucket{")
                && l.contains("controller=\"traced\"")
        })
        .filter_map(|l| {
            l.split_once(" # {trace_id=\"")
                .map(|(_, rest)| rest.chars().take(32).collect())
        })
        .collect();
    assert!(!exemplars.is_empty(), "exemplars on the histogram:\n{text}");
    // The exporter's own counters are on /metrics while it exports.
    for name in [
        "crwatch_trace_spans_exported_total ",
        "crwatch_trace_spans_dropped_total 0",
        "crwatch_trace_spans_failed_total ",
    ] {
        assert!(text.lines().any(|l| l.starts_with(name)), "no {name} in\n{text}");
    }
    for id in &exemplars {
        // A later reconcile's spans may still be in the exporter's batch.
        receiver
            .wait_for(WAIT, &format!("trace {id} of an exemplar"), |spans| {
                spans.iter().any(|s| &s.trace_id == id).then_some(())
            })
            .await
            .unwrap();
    }

    stop.cancel();
    run.await.unwrap().unwrap();
    guard.shutdown().await;
    let stats = crwatch::trace::stats();
    assert_eq!(stats.dropped, 0, "{stats:?}");
    assert!(stats.exported as usize >= spans.len(), "{stats:?}");
    receiver.stop().await;
}
