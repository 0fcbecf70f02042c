//! NACK reporting with subscribers that disagree: one delta subscriber NACKs an object, another
//! ACKs it. The `Accepted` condition must settle on `False` (the rejection stands while a
//! subscriber rejects the generation) instead of flipping for ever: each status write is a new
//! version sent to both again (seen before the fix as about 350 NACKs a second). Once the
//! object changes and nobody rejects it, `Accepted=True`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crwatch::informer::Informer;
use crwatch::source::kube::KubeSource;
use crwatch::xds::Status;
use crwatch::xds::discovery::DeltaDiscoveryRequest;
use crwatch::xds::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use crwatch_apiserver::TestServer;
use crwatch_serve::xds::{ReportTarget, ServerOptions, XdsServer};
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::discovery::ApiResource;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(20);
const TYPE_URL: &str = "nack.example.com/v1/Widget";

/// A delta subscriber that answers every response: NACK while `reject` is set, else ACK.
/// Counts the responses it got.
fn subscriber(addr: std::net::SocketAddr, reject: Arc<AtomicBool>, responses: Arc<AtomicUsize>) {
    tokio::spawn(async move {
        let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}"))
            .await
            .expect("connects");
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(DeltaDiscoveryRequest {
            type_url: TYPE_URL.into(),
            resource_names_subscribe: vec!["*".into()],
            ..Default::default()
        })
        .await
        .expect("subscribe");
        let mut stream = client
            .delta_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("stream")
            .into_inner();
        while let Ok(Some(r)) = stream.message().await {
            responses.fetch_add(1, Ordering::Relaxed);
            let error_detail = reject.load(Ordering::Relaxed).then(|| Status {
                code: 3,
                message: "widgets/w: this subscriber rejects it".into(),
                ..Default::default()
            });
            let answer = DeltaDiscoveryRequest {
                type_url: r.type_url.clone(),
                response_nonce: r.nonce.clone(),
                error_detail,
                ..Default::default()
            };
            if tx.send(answer).await.is_err() {
                return;
            }
        }
    });
}

fn accepted(o: &DynamicObject) -> Option<(String, i64)> {
    let c = o
        .data
        .pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Accepted")?;
    Some((
        c["status"].as_str()?.to_string(),
        c["observedGeneration"].as_i64()?,
    ))
}

async fn wait_for(api: &Api<DynamicObject>, want: (&str, i64)) -> DynamicObject {
    let start = Instant::now();
    loop {
        let o = api.get("w").await.expect("get");
        if accepted(&o) == Some((want.0.to_string(), want.1)) {
            return o;
        }
        assert!(
            start.elapsed() < WAIT,
            "Accepted never became {want:?}: {:?}",
            o.data.get("status")
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disagreeing_subscribers_do_not_make_the_condition_flip() {
    let server = TestServer::start().await.expect("server");
    let ns = "nack-report";
    server
        .server()
        .apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))
        .await
        .expect("namespace");
    server
        .server()
        .apply(json!({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "widgets.nack.example.com"},
            "spec": {"group": "nack.example.com", "scope": "Namespaced",
                "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
                "versions": [{"name": "v1", "served": true, "storage": true,
                    "subresources": {"status": {}},
                    "schema": {"openAPIV3Schema": {"type": "object",
                        "x-kubernetes-preserve-unknown-fields": true}}}]}
        }))
        .await
        .expect("CRD");
    let ar = ApiResource {
        group: "nack.example.com".into(),
        version: "v1".into(),
        api_version: "nack.example.com/v1".into(),
        kind: "Widget".into(),
        plural: "widgets".into(),
    };
    let api: Api<DynamicObject> = Api::namespaced_with(server.client(), ns, &ar);
    let start = Instant::now();
    loop {
        let created = server
            .server()
            .apply(json!({"apiVersion": "nack.example.com/v1", "kind": "Widget",
                "metadata": {"name": "w", "namespace": ns}, "spec": {"v": 1}}))
            .await;
        if created.is_ok() {
            break;
        }
        assert!(start.elapsed() < WAIT, "the CRD is never served: {created:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let informer = Informer::new(KubeSource::<DynamicObject>::dynamic(
        server.client(),
        &ar,
        Some(ns),
    ));
    let mut xds = XdsServer::new(ServerOptions::default());
    let tc = xds.serve_informer(&informer, &ar.api_version, &ar.kind);
    assert_eq!(tc.type_url(), TYPE_URL);
    let cancel = CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    xds.report_to(
        server.client(),
        [(
            TYPE_URL.to_string(),
            ReportTarget {
                api: ar.clone(),
                namespaced: true,
            },
        )]
        .into(),
        cancel.clone(),
    );
    informer.start(cancel.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("listener");
    let addr = listener.local_addr().expect("address");
    let serving = cancel.clone();
    tokio::spawn(async move { xds.serve(listener, None, serving).await });

    let rejecting = Arc::new(AtomicBool::new(true));
    let (nacker, acker) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    subscriber(addr, rejecting.clone(), nacker.clone());
    subscriber(addr, Arc::new(AtomicBool::new(false)), acker.clone());

    let o = wait_for(&api, ("False", 1)).await;
    let rv = o.metadata.resource_version.clone();
    // The loop showed as hundreds of responses a second: over a second and a half, the
    // object changes at most once more (the acknowledging subscriber's answer to the write
    // arriving after the rejection) and each subscriber gets a handful of responses.
    let (n0, a0) = (nacker.load(Ordering::Relaxed), acker.load(Ordering::Relaxed));
    let mut versions = vec![rv];
    let window = Instant::now();
    while window.elapsed() < Duration::from_millis(1500) {
        let o = api.get("w").await.expect("get");
        assert_eq!(
            accepted(&o),
            Some(("False".into(), 1)),
            "a subscriber still rejects generation 1: {:?}",
            o.data.get("status")
        );
        if versions.last() != Some(&o.metadata.resource_version) {
            versions.push(o.metadata.resource_version.clone());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (n1, a1) = (nacker.load(Ordering::Relaxed), acker.load(Ordering::Relaxed));
    assert!(
        versions.len() <= 2,
        "the status keeps being rewritten: versions {versions:?}"
    );
    assert!(
        n1 - n0 <= 3 && a1 - a0 <= 3,
        "responses keep coming: {} to the rejecting subscriber, {} to the other",
        n1 - n0,
        a1 - a0
    );

    // A new generation that nobody rejects is Accepted.
    rejecting.store(false, Ordering::Relaxed);
    api.patch(
        "w",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"v": 2}})),
    )
    .await
    .expect("patch");
    let o = wait_for(&api, ("True", 2)).await;
    let reason = o.data["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Accepted"))
        .map(|c| c["reason"].clone())
        .unwrap_or(Value::Null);
    assert_eq!(reason, "Acknowledged");
    cancel.cancel();
}
