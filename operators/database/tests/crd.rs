//! The generated CRD against an API server (`crwatch-apiserver`): it installs, serves
//! `Database` objects as the Rust types write them, applies its defaults, rejects what its
//! schema rules out, keeps status, and shows the printer columns to `kubectl`.

use std::time::Duration;

use crwatch::conditions::{Condition, ConditionStatus, set_condition};
use crwatch_apiserver::TestServer;
use database_operator::types::{
    Database, DatabaseEngine, DatabasePhase, DatabaseSpec, DatabaseStatus, DatabaseUser, DeletionPolicy,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

/// An API server with the CRD installed, and the `Database` API of namespace `default`.
async fn start() -> (TestServer, Api<Database>) {
    let server = TestServer::start().await.unwrap();
    let dbs = install(&server).await;
    (server, dbs)
}

/// Install the CRD exactly as `deploy/database-crd.yaml` holds it and wait until it is served.
async fn install(server: &TestServer) -> Api<Database> {
    let crd: CustomResourceDefinition =
        serde_saphyr::from_str(&database_operator::crd::crd_yaml()).expect("the CRD YAML parses");
    let crds: Api<CustomResourceDefinition> = Api::all(server.client());
    crds.create(&PostParams::default(), &crd)
        .await
        .expect("the API server accepts the CRD");
    let dbs: Api<Database> = Api::namespaced(server.client(), "default");
    let served = async {
        while dbs.list(&Default::default()).await.is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), served)
        .await
        .expect("the CRD is served within 10 s");
    dbs
}

/// Create [`example`] through the typed API.
async fn create_example(dbs: &Api<Database>) -> Database {
    dbs.create(
        &PostParams::default(),
        &serde_json::from_value(example()).unwrap(),
    )
    .await
    .unwrap()
}

/// Merge `status` into the example's status.
async fn patch_status(dbs: &Api<Database>, status: Value) -> kube::Result<Database> {
    dbs.patch_status(
        "my-app-db",
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await
}

fn example() -> Value {
    json!({
        "apiVersion": "stable.example.com/v1",
        "kind": "Database",
        "metadata": {"name": "my-app-db", "namespace": "default"},
        "spec": {
            "engine": "PostgreSQL",
            "version": "15",
            "size": "10Gi",
            "users": [{"username": "admin", "passwordSecret": ""}, {"username": "appuser"}],
        }
    })
}

#[tokio::test]
async fn the_design_example_round_trips_with_defaults() {
    let (_server, dbs) = start().await;
    let created = create_example(&dbs).await;
    assert_eq!(created.spec.engine, DatabaseEngine::PostgreSQL);
    assert_eq!(
        created.spec.deletion_policy,
        DeletionPolicy::Retain,
        "defaulted by the schema"
    );
    assert_eq!(created.spec.server_name(), "default");
    assert_eq!(created.spec.users.len(), 2);
    assert_eq!(created.spec.users[0].password_secret(), None);

    // What the Rust types write is accepted as is.
    let spec = DatabaseSpec {
        engine: DatabaseEngine::MySQL,
        version: "10.11".into(),
        size: "1.5Gi".into(),
        users: vec![DatabaseUser {
            username: "app_user".into(),
            password_secret: Some("app-user-password".into()),
        }],
        deletion_policy: DeletionPolicy::Delete,
        server: Some("eu-1".into()),
    };
    let typed = dbs
        .create(&PostParams::default(), &Database::new("typed", spec.clone()))
        .await
        .unwrap();
    assert_eq!(typed.spec, spec);
}

#[tokio::test]
async fn the_schema_rejects_bad_specs() {
    let (server, _) = start().await;
    let cases: &[(&str, Value)] = &[
        ("engine", json!({"engine": "Oracle"})),
        ("version", json!({"version": "fifteen"})),
        ("size", json!({"size": "lots"})),
        ("username pattern", json!({"users": [{"username": "Bad-Name"}]})),
        (
            "username length",
            json!({"users": [{"username": "u".repeat(55)}]}),
        ),
        ("empty username", json!({"users": [{"username": ""}]})),
        ("missing username", json!({"users": [{"passwordSecret": "x"}]})),
        (
            "secret name",
            json!({"users": [{"username": "a", "passwordSecret": "Not_A_Name"}]}),
        ),
        ("deletion policy", json!({"deletionPolicy": "Shred"})),
        ("server", json!({"server": "Main Server"})),
    ];
    // As JSON, since some of these (an unknown engine) the Rust types cannot even hold.
    let raw: Api<DynamicObject> =
        Api::namespaced_with(server.client(), "default", &ApiResource::erase::<Database>(&()));
    for (i, (what, change)) in cases.iter().enumerate() {
        let mut obj = example();
        obj["metadata"]["name"] = format!("bad-{i}").into();
        for (k, v) in change.as_object().unwrap() {
            obj["spec"][k] = v.clone();
        }
        let result = raw
            .create(&PostParams::default(), &serde_json::from_value(obj).unwrap())
            .await;
        match result {
            Err(kube::Error::Api(status)) => assert_eq!(status.code, 422, "{what}: {status:?}"),
            other => panic!("{what}: expected 422, got {other:?}"),
        }
    }
    // The example itself passes, through the same path.
    raw.create(
        &PostParams::default(),
        &serde_json::from_value(example()).unwrap(),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn status_is_kept_and_checked() {
    let (_server, dbs) = start().await;
    create_example(&dbs).await;
    let mut conditions = Vec::new();
    set_condition(
        &mut conditions,
        Condition::new("Ready", ConditionStatus::True, "Provisioned", "Database is ready")
            .with_observed_generation(1),
        Time(Timestamp::now()),
    );
    let status = DatabaseStatus {
        phase: Some(DatabasePhase::Ready),
        ready: true,
        connection_string: Some("postgresql://db.example:5432/default_my_app_db_f6476640".into()),
        actual_size: Some("7.9Mi".into()),
        observed_generation: Some(1),
        conditions,
        message: Some("Database is ready".into()),
        users: vec!["admin_fe56c46b".into(), "appuser_fe56c46b".into()],
    };
    let patched = patch_status(&dbs, json!(status)).await.unwrap();
    assert_eq!(patched.status.as_ref(), Some(&status));
    assert_eq!(dbs.get("my-app-db").await.unwrap().status, Some(status));

    let bad = patch_status(&dbs, json!({"phase": "Exploded"}))
        .await
        .unwrap_err();
    assert!(matches!(bad, kube::Error::Api(ref s) if s.code == 422), "{bad:?}");
}

// kubectl runs as a blocking child process; the server needs a worker of its own meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_shows_the_printer_columns() {
    let (server, dbs) = start().await;
    create_example(&dbs).await;
    patch_status(&dbs, json!({"phase": "Ready", "ready": true}))
        .await
        .unwrap();
    for resource in ["databases", "database", "db", "databases.stable.example.com"] {
        let out = server
            .kubectl()
            .args(["get", resource, "-n", "default"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<Vec<&str>> = text.lines().map(|l| l.split_whitespace().collect()).collect();
        assert_eq!(
            lines[0],
            ["NAME", "ENGINE", "VERSION", "PHASE", "READY", "AGE"],
            "{text}"
        );
        assert_eq!(
            lines[1][..5],
            ["my-app-db", "PostgreSQL", "15", "Ready", "true"],
            "{text}"
        );
    }
}
