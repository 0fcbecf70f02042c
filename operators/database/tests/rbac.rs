//! The operator with only the permissions deploy/rbac.yaml grants: the binary runs as the
//! `database-operator` ServiceAccount (a token the API server issues, RBAC enforced) and
//! reconciles a Database end to end on real PostgreSQL, leader election included. With one
//! verb taken away it fails clearly: the Database's conditions and the operator's log name the
//! missing permission, the process keeps running, retries back off instead of storming, and it
//! recovers once the permission is back.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crwatch_apiserver::TestServer;
use crwatch_testsupport::postgres::Postgres;
use database_operator::engine::Engine;
use database_operator::naming::database_name;
use database_operator::types::{Database, DatabaseEngine};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio::sync::OnceCell;

static POSTGRES: OnceCell<Postgres> = OnceCell::const_new();

async fn postgres() -> &'static Postgres {
    POSTGRES
        .get_or_init(|| async { Postgres::start().await.expect("PostgreSQL starts") })
        .await
}

const BIN: &str = env!("CARGO_BIN_EXE_database-operator");
const SA: &str = "system:serviceaccount:database-operator:database-operator";

fn rbac_yaml() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/rbac.yaml")
}

/// An API server with the CRD, the namespaces, and deploy/rbac.yaml applied.
async fn cluster() -> TestServer {
    let server = TestServer::start().await.expect("API server starts");
    let crd: Value = serde_saphyr::from_str(&database_operator::crd::crd_yaml()).expect("CRD parses");
    server.server().apply(crd).await.expect("CRD");
    for ns in ["database-operator", "team"] {
        server
            .server()
            .apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))
            .await
            .expect("namespace");
    }
    server
        .server()
        .apply_file(&rbac_yaml())
        .await
        .expect("deploy/rbac.yaml applies");
    server
}

/// The operator binary, authenticated as its ServiceAccount, with leader election on; its
/// stderr is collected by a task.
struct OperatorProcess {
    child: tokio::process::Child,
    log: tokio::task::JoinHandle<String>,
    metrics: String,
}

impl OperatorProcess {
    fn spawn(server: &TestServer, dsn: &str) -> Self {
        let token = server
            .server()
            .service_account_token("database-operator", "database-operator", 3600)
            .expect("a token for the operator's ServiceAccount");
        let kubeconfig = server.kubeconfig_with_token(&token).expect("kubeconfig");
        let port = crwatch_testsupport::free_port().expect("a free port");
        let metrics = format!("127.0.0.1:{port}");
        let mut child = tokio::process::Command::new(BIN)
            .args(["run", "--kubeconfig"])
            .arg(&kubeconfig)
            .args(["--metrics-addr", &metrics, "--probe-addr", "off"])
            .args([
                "--leader-elect",
                "--leader-election-namespace",
                "database-operator",
            ])
            .env("DATABASE_OPERATOR_ADMIN_DSN_DEFAULT", dsn)
            .env("RUST_LOG", "warn")
            .env_remove("KUBECONFIG")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("database-operator starts");
        let mut stderr = child.stderr.take().expect("stderr is piped");
        let log = tokio::spawn(async move {
            let mut out = Vec::new();
            // Bounded: a test run logs far less than this.
            let _ = (&mut stderr).take(16 << 20).read_to_end(&mut out).await;
            String::from_utf8_lossy(&out).into_owned()
        });
        Self { child, log, metrics }
    }

    /// The number of reconciles run so far, from /metrics.
    async fn reconciles(&self) -> Option<f64> {
        let text = reqwest::get(format!("http://{}/metrics", self.metrics))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        Some(
            text.lines()
                .filter(|l| l.starts_with("controller_runtime_reconcile_total"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum(),
        )
    }

    /// Stop it and return what it logged.
    async fn stop(mut self) -> String {
        let _ = self.child.kill().await;
        tokio::time::timeout(Duration::from_secs(10), self.log)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default()
    }
}

async fn wait_until<T>(what: &str, timeout: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn database(name: &str) -> Database {
    serde_json::from_value(json!({
        "apiVersion": "stable.example.com/v1",
        "kind": "Database",
        "metadata": {"name": name},
        "spec": {"engine": "PostgreSQL", "version": "15", "size": "1Gi", "users": [{"username": "app"}], "deletionPolicy": "Delete"},
    }))
    .expect("a Database")
}

async fn ready(api: &Api<Database>, name: &str, timeout: Duration) -> Database {
    wait_until(&format!("{name} Ready"), timeout, async || {
        let db = api.get(name).await.ok()?;
        let s = db.status.as_ref()?;
        (s.ready && s.observed_generation == db.metadata.generation).then_some(db)
    })
    .await
}

#[tokio::test]
async fn the_operator_reconciles_end_to_end_with_only_the_rbac_in_deploy() {
    let pg = postgres().await;
    let server = cluster().await;
    let op = OperatorProcess::spawn(&server, &pg.admin_url());
    let api: Api<Database> = Api::namespaced(server.client(), "team");
    api.create(&PostParams::default(), &database("shop"))
        .await
        .unwrap();
    ready(&api, "shop", Duration::from_secs(60)).await;
    let engine = Engine::connect(DatabaseEngine::PostgreSQL, &pg.admin_url()).unwrap();
    let dbname = database_name(DatabaseEngine::PostgreSQL, "team", "shop");
    assert!(engine.database_exists(&dbname).await.unwrap());
    let secret: Secret = Api::namespaced(server.client(), "team")
        .get("shop-credentials")
        .await
        .unwrap();
    assert!(
        secret
            .data
            .as_ref()
            .is_some_and(|d| d.contains_key("app.password"))
    );
    // It leads through the Role in its own namespace.
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(server.client(), "database-operator");
    let lease = leases
        .get("database-operator")
        .await
        .expect("the operator holds its Lease");
    assert!(lease.spec.and_then(|s| s.holder_identity).is_some());
    // Its Events are recorded (events.k8s.io).
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(server.client(), "team");
    wait_until("a Provisioned event", Duration::from_secs(30), async || {
        let list = events.list(&Default::default()).await.ok()?;
        list.items
            .iter()
            .any(|e| e.reason.as_deref() == Some("Provisioned"))
            .then_some(())
    })
    .await;
    // Deletion runs through the finalizer and drops the database.
    api.delete("shop", &DeleteParams::default()).await.unwrap();
    wait_until("shop gone", Duration::from_secs(60), async || {
        api.get_opt("shop").await.ok()?.is_none().then_some(())
    })
    .await;
    assert!(!engine.database_exists(&dbname).await.unwrap());
    let log = op.stop().await;
    assert!(
        !log.contains("forbidden"),
        "the operator was refused something deploy/rbac.yaml should grant:\n{log}"
    );
}

#[tokio::test]
async fn without_one_verb_the_operator_fails_clearly_backs_off_and_recovers() {
    let pg = postgres().await;
    let server = cluster().await;
    // Take `create` on Secrets away: the operator cannot write the credentials Secret.
    server
        .server()
        .apply(json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "database-operator"},
            "rules": [
                {"apiGroups": ["stable.example.com"], "resources": ["databases"], "verbs": ["get", "list", "watch", "patch"]},
                {"apiGroups": ["stable.example.com"], "resources": ["databases/status"], "verbs": ["patch"]},
                {"apiGroups": ["stable.example.com"], "resources": ["databases/finalizers"], "verbs": ["update"]},
                {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch", "update"]},
                {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]}
            ]
        }))
        .await
        .unwrap();
    let op = OperatorProcess::spawn(&server, &pg.admin_url());
    let api: Api<Database> = Api::namespaced(server.client(), "team");
    api.create(&PostParams::default(), &database("locked"))
        .await
        .unwrap();
    let denied = format!(
        "secrets is forbidden: User \"{SA}\" cannot create resource \"secrets\" in API group \"\" in the namespace \"team\""
    );
    // The condition names the missing permission, word for word as the API server said it.
    let db = wait_until(
        "a Ready=False condition naming the permission",
        Duration::from_secs(60),
        async || {
            let db = api.get("locked").await.ok()?;
            let c = db
                .status
                .as_ref()?
                .conditions
                .iter()
                .find(|c| c.type_ == "Ready")?
                .clone();
            (c.status == crwatch::conditions::ConditionStatus::False && c.message.contains(&denied))
                .then_some(db)
        },
    )
    .await;
    assert!(!db.status.as_ref().unwrap().ready);
    // It keeps running and retries with backoff, not in a storm.
    let before = wait_until("the operator's metrics", Duration::from_secs(30), async || {
        op.reconciles().await
    })
    .await;
    let window = Duration::from_secs(5);
    tokio::time::sleep(window).await;
    let after = op.reconciles().await.expect("the operator still serves metrics");
    println!(
        "without secrets/create: {} reconciles in {window:?} after the first failures",
        after - before
    );
    assert!(
        after - before <= 20.0,
        "{} reconciles in {window:?}: a retry storm",
        after - before
    );
    // Give the permission back: it recovers by itself.
    server.server().apply_file(&rbac_yaml()).await.unwrap();
    ready(&api, "locked", Duration::from_secs(120)).await;
    let log = op.stop().await;
    assert!(
        log.contains("cannot create resource \\\"secrets\\\"")
            || log.contains("cannot create resource \"secrets\""),
        "the log names the missing permission:\n{log}"
    );
    let engine = Engine::connect(DatabaseEngine::PostgreSQL, &pg.admin_url()).unwrap();
    let _ = engine
        .drop_database(&database_name(DatabaseEngine::PostgreSQL, "team", "locked"))
        .await;
}
