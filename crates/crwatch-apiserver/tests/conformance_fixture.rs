//! The conformance suite's own guarantees, checked against the in-process server reached as
//! a real cluster would be (through a kubeconfig, no fault handle): namespaces a test created
//! are deleted when it fails, and the CRDs it needs are brought to this repository's version
//! whatever version the cluster had.

mod common;

use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};

/// Whether a namespace is gone or on its way (deletionTimestamp set).
async fn deleted(client: &kube::Client, name: &str) -> bool {
    let api: Api<Namespace> = Api::all(client.clone());
    match api.get_opt(name).await.expect("get namespace") {
        None => true,
        Some(ns) => ns.metadata.deletion_timestamp.is_some(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_test_leaves_no_namespace_behind_on_a_real_cluster() {
    let server = crwatch_apiserver::TestServer::start().await.expect("server");
    let kubeconfig = server.kubeconfig().to_path_buf();
    let client = server.client();

    // A test that panics after creating its namespace (and never reaches `cleanup`).
    let created = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
    let seen = created.clone();
    let failing = tokio::spawn(async move {
        let t = common::external(kubeconfig).await;
        let ns = t.namespace("fixture-panic").await;
        let api: Api<Namespace> = Api::all(t.client.clone());
        assert!(api.get_opt(&ns).await.expect("get").is_some());
        *seen.lock().expect("lock") = Some(ns.clone());
        panic!("the test fails after creating {ns}");
    });
    let err = failing.await.expect_err("the test panicked");
    assert!(err.is_panic());
    let ns = created
        .lock()
        .expect("lock")
        .clone()
        .expect("a namespace was created");
    assert!(
        deleted(&client, &ns).await,
        "{ns} is deleted by the drop guard, before the panic reached the test harness"
    );

    // A test that passes without calling `cleanup` is cleaned up the same way.
    let t = common::external(server.kubeconfig().to_path_buf()).await;
    let ns = t.namespace("fixture-forgot").await;
    drop(t);
    assert!(deleted(&client, &ns).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_crd_is_brought_to_this_repositorys_version() {
    let server = crwatch_apiserver::TestServer::start().await.expect("server");
    let t = common::external(server.kubeconfig().to_path_buf()).await;
    let crds: Api<CustomResourceDefinition> = Api::all(t.client.clone());
    // Another Database CRD is there already: no schema, another printer column, and a
    // version this repository does not have.
    let other: CustomResourceDefinition = serde_json::from_value(serde_json::json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "databases.stable.example.com"},
        "spec": {
            "group": "stable.example.com",
            "scope": "Namespaced",
            "names": {"plural": "databases", "singular": "database", "kind": "Database", "listKind": "DatabaseList"},
            "versions": [{
                "name": "v1",
                "served": true,
                "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}},
                "additionalPrinterColumns": [{"name": "Old", "type": "string", "jsonPath": ".spec.old"}]
            }]
        }
    }))
    .expect("CRD");
    crds.create(&PostParams::default(), &other)
        .await
        .expect("create the other CRD");

    t.install_database_crd().await;

    let want: CustomResourceDefinition =
        serde_saphyr::from_str(&std::fs::read_to_string(common::database_crd_path()).expect("read"))
            .expect("parse");
    let got = crds.get("databases.stable.example.com").await.expect("get");
    assert_eq!(
        serde_json::to_value(&got.spec.versions).expect("json"),
        serde_json::to_value(&want.spec.versions).expect("json"),
        "the versions, schemas and columns of deploy/database-crd.yaml"
    );
    assert_eq!(got.spec.names.short_names, want.spec.names.short_names);
    // Installing again changes nothing and still waits for it to be established.
    let before = got.metadata.resource_version.clone();
    tokio::time::timeout(Duration::from_secs(30), t.install_database_crd())
        .await
        .expect("in time");
    let again = crds.get("databases.stable.example.com").await.expect("get");
    assert_eq!(
        again.metadata.resource_version, before,
        "an unchanged apply is a no-op"
    );
}

#[test]
fn the_skipped_notice_reaches_a_cargo_test_user() {
    // The notice is written to stderr directly, past libtest's capture; run this binary
    // without `--nocapture` and it is in the output (`cargo test` shows it too).
    if common::real_cluster().is_none() {
        common::skipped_notice();
    }
    assert!(common::SKIPPED_NOTICE.contains("CRWATCH_TEST_KUBECONFIG"));
}
