//! A `Database` the operator's Rust type cannot read (the CRD's schema was loosened or changed
//! under a running operator) does not stall it (issue 10, why 12): the operator syncs, works
//! on the other Databases, and puts a Warning `DecodeFailed` Event on the bad one.

use std::time::Duration;

use crwatch_apiserver::TestServer;
use database_operator::run::RunOptions;
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_database_gets_an_event_and_the_others_are_reconciled() {
    let server = TestServer::start().await.expect("API server starts");
    // The real CRD with `spec` opened up: the server now takes what the Rust type refuses.
    let mut crd: Value = serde_saphyr::from_str(&database_operator::crd::crd_yaml()).unwrap();
    for v in crd["spec"]["versions"].as_array_mut().unwrap() {
        v["schema"]["openAPIV3Schema"]["properties"]["spec"] =
            json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true});
    }
    server.server().apply(crd).await.expect("CRD");
    server
        .server()
        .apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "apps"}}))
        .await
        .expect("namespace");
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("stable.example.com", "v1", "Database"),
        "databases",
    );
    let raw: Api<DynamicObject> = Api::namespaced_with(server.client(), "apps", &ar);
    let put = |name: &str, engine: &str| {
        let obj = json!({"apiVersion": "stable.example.com/v1", "kind": "Database",
            "metadata": {"name": name, "namespace": "apps"},
            "spec": {"engine": engine, "version": "15", "size": "1Gi", "users": [{"username": "app"}]}});
        let raw = raw.clone();
        let name = name.to_string();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while raw
                .patch(&name, &PatchParams::apply("t").force(), &Patch::Apply(&obj))
                .await
                .is_err()
            {
                assert!(tokio::time::Instant::now() < deadline, "the CRD was never served");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    put("good", "PostgreSQL").await;
    put("bad", "Oracle").await;

    // No database servers: the good Database cannot be provisioned, but reconciling it
    // writes its status, which is what shows the operator got past its cache sync.
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    let options = RunOptions {
        metrics_addr: None,
        probe_addr: None,
        ..RunOptions::default()
    };
    let task = tokio::spawn(database_operator::run::run(
        server.client(),
        vec![],
        options,
        async move { stop.cancelled().await },
    ));

    let events: Api<Event> = Api::namespaced(server.client(), "apps");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let (event, good) = loop {
        let event = events
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("DecodeFailed"));
        let good = raw.get("good").await.unwrap();
        if let Some(event) = event
            && good.data.get("status").is_some_and(|s| !s.is_null())
        {
            break (event, good);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no DecodeFailed Event or no status on the good Database"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert_eq!(event.reporting_controller.as_deref(), Some("database-operator"));
    assert_eq!(
        event.regarding.as_ref().and_then(|r| r.name.as_deref()),
        Some("bad")
    );
    let note = event.note.unwrap_or_default();
    assert!(note.contains("spec.engine: unknown variant, expected"), "{note}");
    assert!(!note.contains("Oracle"), "{note}");
    assert!(
        good.data["status"].get("phase").is_some(),
        "{:?}",
        good.data["status"]
    );

    cancel.cancel();
    let _ = task.await;
}
