//! The xDS server in process over a crwatch informer on crwatch-apiserver, with Envoy's
//! generated Rust client (envoy-types, tonic): changes that reach the server as one relist
//! (its watch failed while they happened and history was compacted, so it lists again)
//! arrive at a subscriber as one version, never half of them; and the version grows.

use std::collections::BTreeMap;
use std::time::Duration;

use crwatch::informer::Informer;
use crwatch::source::kube::KubeSource;
use crwatch::xds::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use crwatch::xds::discovery::{DiscoveryRequest, DiscoveryResponse};
use crwatch_apiserver::TestServer;
use crwatch_apiserver::faults::Match;
use crwatch_serve::xds::{ServerOptions, XdsServer};
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::discovery::ApiResource;
use serde_json::json;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(20);

fn objects(r: &DiscoveryResponse) -> BTreeMap<String, String> {
    r.resources
        .iter()
        .map(|a| {
            let res = crwatch::xds::unpack_resource(a).expect("an MCP resource");
            let obj = crwatch::xds::resource_to_object(&res).expect("a Struct body");
            let value = obj
                .pointer("/data/v")
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_string();
            (res.metadata.unwrap_or_default().name, value)
        })
        .collect()
}

async fn next(responses: &mut tonic::Streaming<DiscoveryResponse>) -> DiscoveryResponse {
    tokio::time::timeout(WAIT, responses.message())
        .await
        .expect("a response within 20 s")
        .expect("no stream error")
        .expect("stream open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relist_reaches_subscribers_as_one_version() {
    let server = TestServer::start().await.expect("server");
    let ns = "relist";
    server
        .server()
        .apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))
        .await
        .expect("namespace");
    let cms: Api<DynamicObject> = Api::namespaced_with(
        server.client(),
        ns,
        &ApiResource::erase::<k8s_openapi::api::core::v1::ConfigMap>(&()),
    );
    for name in ["a", "b", "c"] {
        server
            .server()
            .apply(json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": ns}, "data": {"v": "1"}}))
            .await
            .expect("config map");
    }
    let ar = ApiResource::erase::<k8s_openapi::api::core::v1::ConfigMap>(&());
    let informer = Informer::new(KubeSource::<DynamicObject>::dynamic(
        server.client(),
        &ar,
        Some(ns),
    ));
    let xds = XdsServer::new(ServerOptions::default());
    let tc = xds.serve_informer(&informer, &ar.api_version, &ar.kind);
    assert_eq!(tc.type_url(), "core/v1/ConfigMap");
    let cancel = CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    informer.start(cancel.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("listener");
    let addr = listener.local_addr().expect("address");
    let serving = cancel.clone();
    tokio::spawn(async move { xds.serve(listener, None, serving).await });

    let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connects");
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let req = |version: &str, nonce: &str| DiscoveryRequest {
        type_url: "core/v1/ConfigMap".into(),
        version_info: version.into(),
        response_nonce: nonce.into(),
        ..Default::default()
    };
    tx.send(req("", "")).await.expect("request");
    let mut responses = client
        .stream_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    let r1 = next(&mut responses).await;
    let first = objects(&r1);
    assert_eq!(first.len(), 3, "{first:?}");
    tx.send(req(&r1.version_info, &r1.nonce)).await.expect("ACK");

    // The watch fails three times (the informer backs off 0.8 s, 1.6 s, ...); while it is
    // down, four changes happen and history is compacted: it must list again.
    let faults = server.faults();
    let watches = faults.count("watch", "configmaps");
    faults.fail_next(3, 503, Match::verb("watch").with_resource("configmaps"));
    faults.drop_watches();
    tokio::time::timeout(WAIT, async {
        while faults.count("watch", "configmaps") <= watches {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the informer tries to watch again");
    for name in ["a", "b"] {
        cms.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"v": "2"}})),
        )
        .await
        .expect("patch");
    }
    cms.delete("c", &DeleteParams::default()).await.expect("delete");
    server
        .server()
        .apply(json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "d", "namespace": ns}, "data": {"v": "2"}}))
        .await
        .expect("config map d");
    faults.compact();

    let r2 = next(&mut responses).await;
    let second = objects(&r2);
    let want: BTreeMap<String, String> = [("a", "2"), ("b", "2"), ("d", "2")]
        .iter()
        .map(|(k, v)| (format!("{ns}/{k}"), v.to_string()))
        .collect();
    assert_eq!(second, want, "all four changes in one response, none before");
    assert!(
        r2.version_info.parse::<u64>().expect("numeric") > r1.version_info.parse::<u64>().expect("numeric"),
        "versions grow across the relist"
    );
    assert!(
        informer
            .stats()
            .relists
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 2,
        "it relisted"
    );
    cancel.cancel();
}
