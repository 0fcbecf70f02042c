//! Watch history as the real watch cache keeps it, over HTTP: nothing from before a restart
//! can be watched (410 with the real cache's exact words), each resource keeps its own
//! history (a busy resource does not push out a quiet one's), and a history of fixed capacity
//! (`--history` below 100) compacts after that many changes of a resource.

use std::path::Path;
use std::time::Duration;

use crwatch_apiserver::{ApiServer, Config};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, PostParams, WatchEvent, WatchParams};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(20);

async fn client(server: &ApiServer, dir: &Path) -> kube::Client {
    let path = dir.join("kubeconfig");
    server.write_kubeconfig(&path).expect("kubeconfig");
    let kc = kube::config::Kubeconfig::read_from(&path).expect("kubeconfig");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("config");
    kube::Client::try_from(cfg).expect("client")
}

fn cm(name: &str, v: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name}, "data": {"v": v}})).expect("cm")
}

fn rv_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> u64 {
    meta.resource_version
        .as_deref()
        .and_then(|r| r.parse().ok())
        .expect("resourceVersion")
}

/// The first event of a watch from `rv`.
async fn first_event<K>(api: &Api<K>, rv: u64) -> WatchEvent<K>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let mut s = api
        .watch(&WatchParams::default().timeout(15), &rv.to_string())
        .await
        .expect("watch")
        .boxed();
    tokio::time::timeout(WAIT, s.next())
        .await
        .expect("an event in time")
        .expect("the stream has an event")
        .expect("a decodable event")
}

fn expect_gone<K: std::fmt::Debug>(ev: WatchEvent<K>, want: &str) {
    match ev {
        WatchEvent::Error(e) => {
            assert_eq!(
                (e.code, e.reason.as_str(), e.message.as_str()),
                (410, "Expired", want)
            );
        }
        other => panic!("expected 410 Gone, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_a_watch_from_before_it_gets_the_real_caches_410() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = || Config {
        state_file: Some(dir.path().join("state.db")),
        ..Config::default()
    };
    let server = ApiServer::start(config()).await.expect("start");
    let cms: Api<ConfigMap> = Api::namespaced(client(&server, dir.path()).await, "default");
    let first = cms
        .create(&PostParams::default(), &cm("a", "1"))
        .await
        .expect("create");
    cms.create(&PostParams::default(), &cm("b", "1"))
        .await
        .expect("create");
    let before = rv_of(&first.metadata);
    server.shutdown().await.expect("shutdown");

    let server = ApiServer::start(config()).await.expect("restart");
    let start = server.revision();
    let cms: Api<ConfigMap> = Api::namespaced(client(&server, dir.path()).await, "default");
    // As the real watch cache, which starts empty at the revision of its first LIST.
    expect_gone(
        first_event(&cms, before).await,
        &format!("too old resource version: {before} ({start})"),
    );
    // From the start revision on, every change is seen.
    let mut s = cms
        .watch(&WatchParams::default().timeout(15), &start.to_string())
        .await
        .expect("watch")
        .boxed();
    let c = cms
        .create(&PostParams::default(), &cm("c", "1"))
        .await
        .expect("create");
    match tokio::time::timeout(WAIT, s.next()).await.expect("in time") {
        Some(Ok(WatchEvent::Added(got))) => assert_eq!(got.metadata.name, c.metadata.name),
        other => panic!("expected ADDED c, got {other:?}"),
    }
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_resource_keeps_its_own_history_of_fixed_capacity() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ApiServer::start(Config {
        history_window: 10,
        ..Config::default()
    })
    .await
    .expect("start");
    let client = client(&server, dir.path()).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let secrets: Api<Secret> = Api::namespaced(client, "default");
    let quiet: Secret =
        serde_json::from_value(json!({"metadata": {"name": "s"}, "stringData": {"k": "v"}})).expect("secret");
    let quiet = secrets
        .create(&PostParams::default(), &quiet)
        .await
        .expect("create");
    let from = rv_of(&quiet.metadata) - 1;

    // 30 ConfigMap changes: past the capacity of 10 (below the real lower bound of 100, a
    // history of exactly that many).
    let mut revs = vec![];
    for i in 0..30 {
        let c = cms
            .create(&PostParams::default(), &cm(&format!("c{i}"), "1"))
            .await
            .expect("create");
        revs.push(rv_of(&c.metadata));
    }
    // The ConfigMaps kept are the last 10: a watch may start one before the oldest of them.
    let oldest_kept = revs[20];
    expect_gone(
        first_event(&cms, revs[0]).await,
        &format!("too old resource version: {} ({})", revs[0], oldest_kept - 1),
    );
    match first_event(&cms, oldest_kept - 1).await {
        WatchEvent::Added(c) => assert_eq!(c.metadata.name.as_deref(), Some("c20")),
        other => panic!("expected ADDED c20, got {other:?}"),
    }
    // The Secret's history is untouched by the ConfigMaps' churn.
    match first_event(&secrets, from).await {
        WatchEvent::Added(s) => assert_eq!(s.metadata.name.as_deref(), Some("s")),
        other => panic!("expected ADDED s, got {other:?}"),
    }
    server.shutdown().await.expect("shutdown");
}
