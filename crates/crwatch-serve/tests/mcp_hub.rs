//! The `crwatch mcp` hub over real informers on crwatch-apiserver: the per-object history
//! bound and its answer for versions older than what is kept, Secret values kept out of the
//! history, and a session that does not read falling behind the bounded event ring instead of
//! growing it.

use std::time::Duration;

use crwatch_apiserver::TestServer;
use crwatch_serve::mcp::history::HistoryError;
use crwatch_serve::mcp::hub::{Hub, HubEvent, McpConfig};
use crwatch_serve::mcp::uri::ObjectUri;
use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

const NS: &str = "mcp-hub";
const DEADLINE: Duration = Duration::from_secs(30);

async fn create(hub: &Hub, kind: &str, namespace: Option<&str>, object: Value) -> String {
    let rt = hub.type_of("", "v1", kind).await.expect("type");
    let object: DynamicObject = serde_json::from_value(object).expect("object");
    let created = hub
        .api(&rt, namespace)
        .create(&PostParams::default(), &object)
        .await
        .expect("created");
    created.metadata.resource_version.expect("resourceVersion")
}

async fn merge(hub: &Hub, kind: &str, name: &str, patch: Value) -> String {
    let rt = hub.type_of("", "v1", kind).await.expect("type");
    let patched = hub
        .api(&rt, Some(NS))
        .patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .expect("patched");
    patched.metadata.resource_version.expect("resourceVersion")
}

/// Wait until the watch has delivered `rv` of `uri` into the history.
async fn delivered(hub: &Hub, uri: &ObjectUri, rv: &str) {
    let mut events = hub.subscribe();
    let wait = async {
        while !hub.history_has(uri, rv) {
            let _ = events.recv().await;
        }
    };
    tokio::time::timeout(DEADLINE, wait)
        .await
        .unwrap_or_else(|_| panic!("{uri} at {rv} never reached the history"));
}

#[tokio::test(flavor = "multi_thread")]
async fn history_bound_secrets_and_a_lagging_session() {
    let server = TestServer::start().await.expect("server");
    let config = McpConfig {
        resources: vec!["configmaps".into(), "secrets".into()],
        history: 2,
        queue: 16,
        ..McpConfig::default()
    };
    let hub = Hub::start(server.client(), NS.into(), config).await.expect("hub");
    create(
        &hub,
        "Namespace",
        None,
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}),
    )
    .await;

    // History: 4 versions, 2 kept.
    let uri = ObjectUri::new("", "v1", "ConfigMap", Some(NS), "c");
    let mut rvs = vec![
        create(
            &hub,
            "ConfigMap",
            Some(NS),
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": NS}, "data": {"v": "0"}}),
        )
        .await,
    ];
    for v in 1..=3 {
        rvs.push(merge(&hub, "ConfigMap", "c", json!({"data": {"v": v.to_string()}})).await);
    }
    delivered(&hub, &uri, &rvs[3]).await;
    match hub.since(&uri, &rvs[0]) {
        Err(HistoryError::TooOld {
            oldest, per_object, ..
        }) => {
            assert_eq!((oldest.as_str(), per_object), (rvs[2].as_str(), 2));
        }
        other => panic!("expected TooOld, got {other:?}"),
    }
    let since = hub.since(&uri, &rvs[2]).expect("kept");
    assert_eq!(since.diff.paths(), ["data.v"]);
    assert_eq!(since.diff.changes[0].old, Some(json!("2")));
    assert_eq!(since.diff.changes[0].new, Some(json!("3")));

    // Secrets: keys only, in the history as everywhere.
    let secret = ObjectUri::new("", "v1", "Secret", Some(NS), "s");
    let first = create(
        &hub,
        "Secret",
        Some(NS),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": NS},
               "data": {"password": "aHVudGVyMg=="}}),
    )
    .await;
    let second = merge(
        &hub,
        "Secret",
        "s",
        json!({"data": {"password": "c2VrcmV0", "token": "dG9rZW4="}}),
    )
    .await;
    delivered(&hub, &secret, &second).await;
    let since = hub.since(&secret, &first).expect("kept");
    let text = serde_json::to_string(&since.diff).expect("json");
    assert_eq!(since.diff.paths(), ["data.token"], "{text}");
    for value in ["aHVudGVyMg", "c2VrcmV0", "dG9rZW4"] {
        assert!(!text.contains(value), "a Secret value in the history: {text}");
    }
    let read = hub.read(&secret).await.expect("read").expect("found").to_string();
    assert!(
        !read.contains("c2VrcmV0") && read.contains("<redacted>"),
        "{read}"
    );

    // A session that does not read: 40 objects (80 events) into a ring of 16.
    let mut slow = hub.subscribe();
    let mut last = String::new();
    for i in 0..40 {
        last = create(
            &hub,
            "ConfigMap",
            Some(NS),
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("bulk-{i}"), "namespace": NS}}),
        )
        .await;
    }
    delivered(
        &hub,
        &ObjectUri::new("", "v1", "ConfigMap", Some(NS), "bulk-39"),
        &last,
    )
    .await;
    match slow.recv().await {
        Err(RecvError::Lagged(missed)) => assert!(missed >= 40, "missed {missed}"),
        other => panic!("expected the slow session to lag, got {other:?}"),
    }
    // What it still holds is at most the ring's capacity, and the newest changes.
    let mut held = vec![];
    while let Ok(e) = slow.try_recv() {
        held.push(e);
    }
    assert!(held.len() <= 16, "held {}", held.len());
    // The store may have the last object a moment before its event is in the ring: the
    // newest change reaches the lagging session (more events may follow it).
    let newest = HubEvent::Updated(format!("k8s://core/v1/ConfigMap/namespaces/{NS}/bulk-39"));
    if !held.contains(&newest) {
        tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match slow.recv().await {
                    Ok(e) if e == newest => return,
                    Ok(_) | Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => panic!("the hub stopped"),
                }
            }
        })
        .await
        .expect("the newest change reaches the lagging session");
    }
    assert_eq!(hub.watched_uris().len(), 42);
    hub.stop();
}
