//! The operator end to end: crwatch-apiserver, real PostgreSQL and MariaDB from Debian, and the
//! reconciler running in process (or the built binary, where a real kill or two replicas are
//! the point).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crwatch_apiserver::TestServer;
use crwatch_testsupport::mariadb::MariaDb;
use crwatch_testsupport::postgres::Postgres;
use database_operator::config::Server;
use database_operator::engine::{Engine, check_login};
use database_operator::naming::{database_name, role_name};
use database_operator::password::Password;
use database_operator::run::RunOptions;
use database_operator::types::{Database, DatabaseEngine};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

static POSTGRES: OnceCell<Postgres> = OnceCell::const_new();
static MARIADB: OnceCell<MariaDb> = OnceCell::const_new();

async fn postgres() -> &'static Postgres {
    POSTGRES
        .get_or_init(|| async { Postgres::start().await.expect("PostgreSQL starts") })
        .await
}

async fn mariadb() -> &'static MariaDb {
    MARIADB
        .get_or_init(|| async { MariaDb::start().await.expect("MariaDB starts") })
        .await
}

/// The operator's configuration of a test server as its `default` server.
fn default_server(engine: DatabaseEngine, admin_url: String, port: u16) -> Server {
    Server {
        name: "default".into(),
        engine,
        admin_dsn: admin_url,
        host: "127.0.0.1".into(),
        port,
    }
}

fn pg_server(pg: &Postgres) -> Vec<Server> {
    vec![default_server(
        DatabaseEngine::PostgreSQL,
        pg.admin_url(),
        pg.port(),
    )]
}

/// The engine for `pg`, as the administrator.
fn pg_engine(pg: &Postgres) -> Engine {
    Engine::connect(DatabaseEngine::PostgreSQL, &pg.admin_url()).unwrap()
}

/// An API server with the CRD and the namespace `ns`, and the `Database` API of `ns`.
async fn cluster_with_namespace(ns: &str) -> (TestServer, Api<Database>) {
    let server = cluster().await;
    namespace(&server, ns).await;
    let api = Api::namespaced(server.client(), ns);
    (server, api)
}

async fn cluster() -> TestServer {
    let server = TestServer::start().await.expect("API server starts");
    server
        .server()
        .apply(serde_json::from_str::<Value>(&crd_json()).unwrap())
        .await
        .expect("CRD");
    server
}

fn crd_json() -> String {
    let crd: Value = serde_saphyr::from_str(&database_operator::crd::crd_yaml()).expect("CRD parses");
    crd.to_string()
}

async fn namespace(server: &TestServer, ns: &str) {
    server
        .server()
        .apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))
        .await
        .expect("namespace");
}

/// Runs the operator in process until dropped.
struct Operator {
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Operator {
    fn start(server: &TestServer, servers: Vec<Server>) -> Self {
        let cancel = CancellationToken::new();
        let options = RunOptions {
            metrics_addr: None,
            probe_addr: None,
            concurrency: 8,
            ..RunOptions::default()
        };
        let stop = cancel.clone();
        let task = tokio::spawn(database_operator::run::run(
            server.client(),
            servers,
            options,
            async move { stop.cancelled().await },
        ));
        Self { cancel, task }
    }

    async fn stop(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }
}

fn database(name: &str, engine: &str, users: &[&str], policy: &str) -> Database {
    serde_json::from_value(json!({
        "apiVersion": "stable.example.com/v1",
        "kind": "Database",
        "metadata": {"name": name},
        "spec": {
            "engine": engine,
            "version": if engine == "PostgreSQL" { "15" } else { "10.11" },
            "size": "1Gi",
            "users": users.iter().map(|u| json!({"username": u})).collect::<Vec<_>>(),
            "deletionPolicy": policy,
        },
    }))
    .unwrap()
}

/// Create the Database `name` (see [`database`]).
async fn create(api: &Api<Database>, name: &str, engine: &str, users: &[&str], policy: &str) {
    api.create(&PostParams::default(), &database(name, engine, users, policy))
        .await
        .unwrap();
}

/// Merge `patch` into the object `name`.
async fn merge<K>(api: &Api<K>, name: &str, patch: Value)
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
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

async fn ready(api: &Api<Database>, name: &str) -> Database {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let db = api.get(name).await.ok();
        if let Some(db) = &db
            && let Some(s) = &db.status
            && s.ready
            && s.observed_generation == db.metadata.generation
        {
            return db.clone();
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {name} Ready; last seen: {db:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Wait until the Database `name` is gone (deleted and its finalizer done).
async fn gone(api: &Api<Database>, name: &str, timeout: Duration) {
    wait_until(&format!("{name} gone"), timeout, async || {
        api.get_opt(name).await.ok()?.is_none().then_some(())
    })
    .await;
}

/// How many Databases are Ready.
async fn count_ready(api: &Api<Database>) -> Option<usize> {
    let list = api.list(&Default::default()).await.ok()?;
    Some(
        list.items
            .iter()
            .filter(|d| d.status.as_ref().is_some_and(|s| s.ready))
            .count(),
    )
}

/// Whether the Database carries the operator's finalizer.
fn protected(db: &Database) -> bool {
    db.metadata
        .finalizers
        .as_ref()
        .is_some_and(|f| f.iter().any(|f| f == "stable.example.com/database-protection"))
}

fn condition<'a>(db: &'a Database, type_: &str) -> Option<&'a crwatch::conditions::Condition> {
    db.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_)
}

fn secret_text(s: &Secret, key: &str) -> String {
    String::from_utf8(s.data.as_ref().unwrap()[key].0.clone()).unwrap()
}

async fn logs_in(kind: DatabaseEngine, s: &Secret, user: &str) -> bool {
    let port: u16 = secret_text(s, &format!("{user}.port")).parse().unwrap();
    check_login(
        kind,
        "127.0.0.1",
        port,
        &secret_text(s, &format!("{user}.database")),
        &secret_text(s, &format!("{user}.username")),
        &Password::new(secret_text(s, &format!("{user}.password"))),
    )
    .await
    .is_ok()
}

/// Whether an event with `reason` was recorded for `name`.
async fn has_event(server: &TestServer, ns: &str, name: &str, reason: &str) -> bool {
    events_for(server, ns, name).await.iter().any(|r| r == reason)
}

async fn events_for(server: &TestServer, ns: &str, name: &str) -> Vec<String> {
    let api: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(server.client(), ns);
    api.list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .filter_map(|e| e.reason)
        .collect()
}

#[tokio::test]
async fn postgresql_databases_users_secrets_and_deletion() {
    let pg = postgres().await;
    let (server, api) = cluster_with_namespace("team-a").await;
    let op = Operator::start(&server, pg_server(pg));
    let secrets: Api<Secret> = Api::namespaced(server.client(), "team-a");
    create(&api, "app", "PostgreSQL", &["admin", "appuser"], "Delete").await;
    let db = ready(&api, "app").await;
    let status = db.status.clone().unwrap();
    let dbname = database_name(DatabaseEngine::PostgreSQL, "team-a", "app");
    assert_eq!(
        status.connection_string.as_deref(),
        Some(&*format!("postgresql://127.0.0.1:{}/{dbname}", pg.port()))
    );
    assert!(protected(&db));
    assert!(status.actual_size.is_some());
    let secret = secrets.get("app-credentials").await.unwrap();
    assert_eq!(
        secret.metadata.owner_references.as_ref().unwrap()[0].uid,
        db.metadata.uid.clone().unwrap()
    );
    for user in ["admin", "appuser"] {
        assert!(
            logs_in(DatabaseEngine::PostgreSQL, &secret, user).await,
            "{user} logs in with the Secret's password"
        );
        assert!(secret_text(&secret, &format!("{user}.uri")).starts_with("postgresql://"));
    }
    let text = serde_json::to_string(&db).unwrap();
    assert!(
        !text.contains(&secret_text(&secret, "admin.password")),
        "no password in the object or status"
    );

    // Rename appuser to reader (remove one, add one), keep admin.
    merge(
        &api,
        "app",
        json!({"spec": {"users": [{"username": "admin"}, {"username": "reader"}]}}),
    )
    .await;
    ready(&api, "app").await;
    let secret = secrets.get("app-credentials").await.unwrap();
    assert!(logs_in(DatabaseEngine::PostgreSQL, &secret, "reader").await);
    assert!(!secret.data.as_ref().unwrap().contains_key("appuser.password"));
    let engine = pg_engine(pg);
    let users: BTreeSet<String> = engine.list_users(&dbname).await.unwrap().into_iter().collect();
    let want: BTreeSet<String> = ["admin", "reader"]
        .iter()
        .map(|u| role_name(DatabaseEngine::PostgreSQL, &dbname, u))
        .collect();
    assert_eq!(users, want, "appuser dropped on the server");

    // A deleted Secret comes back with working passwords.
    secrets
        .delete("app-credentials", &DeleteParams::default())
        .await
        .unwrap();
    let restored = wait_until("the Secret restored", Duration::from_secs(30), async || {
        secrets
            .get_opt("app-credentials")
            .await
            .ok()
            .flatten()
            .filter(|s| s.metadata.deletion_timestamp.is_none())
    })
    .await;
    assert!(
        logs_in(DatabaseEngine::PostgreSQL, &restored, "admin").await,
        "password re-synced"
    );

    // An edited password is set on the server.
    let patch = json!({"data": {"admin.password": base64_of("Changed-by-hand-1")}});
    merge(&secrets, "app-credentials", patch).await;
    wait_until(
        "the edited password to work",
        Duration::from_secs(30),
        async || {
            let s = secrets.get("app-credentials").await.ok()?;
            (secret_text(&s, "admin.password") == "Changed-by-hand-1"
                && logs_in(DatabaseEngine::PostgreSQL, &s, "admin").await)
                .then_some(())
        },
    )
    .await;

    // A size below what the database uses raises SizeExceeded.
    merge(&api, "app", json!({"spec": {"size": "1Ki"}})).await;
    let db = ready(&api, "app").await;
    assert_eq!(
        condition(&db, "SizeExceeded").map(|c| c.status.as_str()),
        Some("True")
    );

    // deletionPolicy Delete drops the database before the finalizer goes.
    api.delete("app", &DeleteParams::default()).await.unwrap();
    gone(&api, "app", Duration::from_secs(30)).await;
    assert!(!engine.database_exists(&dbname).await.unwrap());
    assert!(engine.list_users(&dbname).await.unwrap().is_empty());
    let reasons = events_for(&server, "team-a", "app").await;
    for r in [
        "DatabaseCreated",
        "UserCreated",
        "Provisioned",
        "UserRemoved",
        "Deleted",
    ] {
        assert!(reasons.iter().any(|x| x == r), "event {r} in {reasons:?}");
    }
    op.stop().await;
}

fn base64_of(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[tokio::test]
async fn retain_keeps_the_database_and_invalid_specs_fail_without_touching_the_server() {
    let pg = postgres().await;
    let (server, api) = cluster_with_namespace("team-b").await;
    let op = Operator::start(&server, pg_server(pg));
    create(&api, "kept", "PostgreSQL", &["app"], "Retain").await;
    ready(&api, "kept").await;
    api.delete("kept", &DeleteParams::default()).await.unwrap();
    gone(&api, "kept", Duration::from_secs(30)).await;
    let engine = pg_engine(pg);
    let dbname = database_name(DatabaseEngine::PostgreSQL, "team-b", "kept");
    assert!(
        engine.database_exists(&dbname).await.unwrap(),
        "Retain keeps the database"
    );
    assert_eq!(engine.list_users(&dbname).await.unwrap().len(), 1, "and its user");

    // The schema lets `postgres` through (it is a valid identifier); the reconciler refuses it.
    create(&api, "bad", "PostgreSQL", &["postgres"], "Delete").await;
    let db = wait_until("phase Failed", Duration::from_secs(30), async || {
        let db = api.get("bad").await.ok()?;
        (db.status.as_ref()?.phase.map(|p| p.as_str()) == Some("Failed")).then_some(db)
    })
    .await;
    let invalid = condition(&db, "Invalid").unwrap();
    assert_eq!(invalid.status.as_str(), "True");
    assert!(
        invalid.message.contains("spec.users[0].username"),
        "{}",
        invalid.message
    );
    let bad_db = database_name(DatabaseEngine::PostgreSQL, "team-b", "bad");
    assert!(
        !engine.database_exists(&bad_db).await.unwrap(),
        "nothing created for an invalid spec"
    );
    assert!(has_event(&server, "team-b", "bad", "InvalidSpec").await);
    // Fixing the spec makes it Ready.
    merge(&api, "bad", json!({"spec": {"users": [{"username": "owner"}]}})).await;
    let db = ready(&api, "bad").await;
    assert!(condition(&db, "Invalid").is_none());
    // A version the server does not run is a condition, not a failure.
    merge(&api, "bad", json!({"spec": {"version": "16"}})).await;
    let db = ready(&api, "bad").await;
    assert_eq!(
        condition(&db, "VersionMatched").map(|c| c.reason.as_str()),
        Some("VersionMismatch")
    );
    engine.drop_database(&dbname).await.unwrap();
    op.stop().await;
}

#[tokio::test]
async fn mariadb_databases_and_users() {
    let maria = mariadb().await;
    let (server, api) = cluster_with_namespace("team-m").await;
    let servers = vec![default_server(
        DatabaseEngine::MySQL,
        maria.admin_url(),
        maria.port(),
    )];
    let op = Operator::start(&server, servers);
    let secrets: Api<Secret> = Api::namespaced(server.client(), "team-m");
    create(&api, "shop", "MySQL", &["web", "batch"], "Delete").await;
    ready(&api, "shop").await;
    let secret = secrets.get("shop-credentials").await.unwrap();
    for user in ["web", "batch"] {
        assert!(
            logs_in(DatabaseEngine::MySQL, &secret, user).await,
            "{user} logs in"
        );
    }
    api.delete("shop", &DeleteParams::default()).await.unwrap();
    gone(&api, "shop", Duration::from_secs(30)).await;
    let engine = Engine::connect(DatabaseEngine::MySQL, &maria.admin_url()).unwrap();
    assert!(
        !engine
            .database_exists(&database_name(DatabaseEngine::MySQL, "team-m", "shop"))
            .await
            .unwrap()
    );
    op.stop().await;
}

#[tokio::test]
async fn an_unreachable_server_degrades_and_delays_deletion_then_recovers() {
    let mut pg = Postgres::start().await.unwrap();
    let (server, api) = cluster_with_namespace("outage").await;
    let op = Operator::start(&server, pg_server(&pg));
    pg.stop();
    create(&api, "x", "PostgreSQL", &["app"], "Delete").await;
    wait_until("Degraded", Duration::from_secs(60), async || {
        let db = api.get("x").await.ok()?;
        (condition(&db, "Degraded")?.reason == "ServerUnreachable").then_some(())
    })
    .await;
    assert!(has_event(&server, "outage", "x", "ServerUnreachable").await);
    pg.restart().await.unwrap();
    ready(&api, "x").await;

    pg.stop();
    api.delete("x", &DeleteParams::default()).await.unwrap();
    wait_until("DeletionBlocked", Duration::from_secs(60), async || {
        has_event(&server, "outage", "x", "DeletionBlocked")
            .await
            .then_some(())
    })
    .await;
    assert!(protected(&api.get("x").await.unwrap()));
    pg.restart().await.unwrap();
    gone(&api, "x", Duration::from_secs(90)).await;
    let engine = pg_engine(&pg);
    assert!(
        !engine
            .database_exists(&database_name(DatabaseEngine::PostgreSQL, "outage", "x"))
            .await
            .unwrap()
    );
    op.stop().await;
}

#[tokio::test]
async fn hostile_names_are_refused_or_made_safe() {
    let pg = postgres().await;
    let (server, api) = cluster_with_namespace("hostile").await;
    let op = Operator::start(&server, pg_server(pg));
    for bad in [
        "x\"; DROP DATABASE postgres; --",
        "robert'); DROP TABLE students;--",
        "ünïcødé",
        &"a".repeat(200),
    ] {
        let err = api
            .create(
                &PostParams::default(),
                &database("h", "PostgreSQL", &[bad], "Delete"),
            )
            .await
            .expect_err("the schema refuses it");
        assert!(err.to_string().contains("spec.users"), "{err}");
    }
    // A 200-character object name gets a truncated, hashed database name.
    let long = format!("{}-db", "n".repeat(197));
    create(&api, &long, "PostgreSQL", &["app"], "Delete").await;
    ready(&api, &long).await;
    let dbname = database_name(DatabaseEngine::PostgreSQL, "hostile", &long);
    assert!(dbname.len() <= 63);
    let engine = pg_engine(pg);
    assert!(engine.database_exists(&dbname).await.unwrap());
    assert!(
        engine.database_exists("postgres").await.unwrap(),
        "postgres is still there"
    );
    api.delete(&long, &DeleteParams::default()).await.unwrap();
    gone(&api, &long, Duration::from_secs(30)).await;
    op.stop().await;
}

const BIN: &str = env!("CARGO_BIN_EXE_database-operator");

fn spawn_binary(server: &TestServer, dsn: &str, extra: &[&str]) -> tokio::process::Child {
    spawn_binary_with_metrics(server, dsn, extra, "off")
}

fn spawn_binary_with_metrics(
    server: &TestServer,
    dsn: &str,
    extra: &[&str],
    metrics: &str,
) -> tokio::process::Child {
    tokio::process::Command::new(BIN)
        .args(["run", "--kubeconfig"])
        .arg(server.kubeconfig())
        .args(["--metrics-addr", metrics, "--probe-addr", "off"])
        .args(extra)
        .env("DATABASE_OPERATOR_ADMIN_DSN_DEFAULT", dsn)
        .env("RUST_LOG", "warn")
        .env_remove("KUBECONFIG")
        .kill_on_drop(true)
        .spawn()
        .expect("database-operator starts")
}

#[tokio::test]
async fn killed_mid_reconcile_the_binary_converges_without_duplicates_or_leaks() {
    let pg = postgres().await;
    let (server, api) = cluster_with_namespace("kill").await;
    let n = 30;
    for i in 0..n {
        create(&api, &format!("db-{i}"), "PostgreSQL", &["a", "b"], "Delete").await;
    }
    let mut child = spawn_binary(&server, &pg.admin_url(), &[]);
    // Kill it as soon as it made some progress, mid-way through the batch.
    wait_until("some Databases Ready", Duration::from_secs(60), async || {
        (count_ready(&api).await? >= 3).then_some(())
    })
    .await;
    child.kill().await.unwrap();
    let mut child = spawn_binary(&server, &pg.admin_url(), &[]);
    for i in 0..n {
        ready(&api, &format!("db-{i}")).await;
    }
    let engine = pg_engine(pg);
    for i in 0..n {
        let dbname = database_name(DatabaseEngine::PostgreSQL, "kill", &format!("db-{i}"));
        assert!(engine.database_exists(&dbname).await.unwrap());
        assert_eq!(
            engine.list_users(&dbname).await.unwrap().len(),
            2,
            "exactly two users for db-{i}"
        );
        let secret: Secret = Api::namespaced(server.client(), "kill")
            .get(&format!("db-{i}-credentials"))
            .await
            .unwrap();
        assert!(
            logs_in(DatabaseEngine::PostgreSQL, &secret, "a").await,
            "db-{i}: password in the Secret works"
        );
    }
    child.kill().await.unwrap();
    for i in 0..n {
        engine
            .drop_database(&database_name(
                DatabaseEngine::PostgreSQL,
                "kill",
                &format!("db-{i}"),
            ))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn with_two_replicas_only_the_leader_acts_and_the_other_takes_over() {
    let pg = postgres().await;
    let (server, api) = cluster_with_namespace("ha").await;
    namespace(&server, "database-operator").await;
    let lease_flags = [
        "--leader-elect",
        "--leader-election-namespace",
        "database-operator",
        "--leader-elect-lease-duration",
        "3s",
        "--leader-elect-renew-deadline",
        "2s",
        "--leader-elect-retry-period",
        "500ms",
    ];
    let mut first = spawn_binary(&server, &pg.admin_url(), &lease_flags);
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(server.client(), "database-operator");
    let holder = wait_until("a leader", Duration::from_secs(30), async || {
        leases
            .get_opt("database-operator")
            .await
            .ok()??
            .spec?
            .holder_identity
    })
    .await;
    let port = crwatch_testsupport::free_port().unwrap();
    let metrics_addr = format!("127.0.0.1:{port}");
    let mut second = spawn_binary_with_metrics(&server, &pg.admin_url(), &lease_flags, &metrics_addr);
    // The number of reconciles the second replica ran, from its /metrics.
    let reconciles = async || -> Option<f64> {
        let text = reqwest::get(format!("http://{metrics_addr}/metrics"))
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
    };
    wait_until(
        "the second replica's metrics",
        Duration::from_secs(30),
        reconciles,
    )
    .await;
    create(&api, "one", "PostgreSQL", &["app"], "Delete").await;
    ready(&api, "one").await;
    assert_eq!(
        reconciles().await,
        Some(0.0),
        "the replica without the lease reconciled nothing"
    );
    let lease = leases.get("database-operator").await.unwrap();
    assert_eq!(
        lease.spec.unwrap().holder_identity.as_deref(),
        Some(holder.as_str()),
        "the first replica leads"
    );

    first.kill().await.unwrap();
    let next = wait_until("a new leader", Duration::from_secs(30), async || {
        let h = leases
            .get_opt("database-operator")
            .await
            .ok()??
            .spec?
            .holder_identity?;
        (h != holder).then_some(h)
    })
    .await;
    assert_ne!(next, holder);
    create(&api, "two", "PostgreSQL", &["app"], "Delete").await;
    ready(&api, "two").await;
    assert!(
        reconciles().await.unwrap_or(0.0) > 0.0,
        "the new leader does the work"
    );
    second.kill().await.unwrap();
    let engine = pg_engine(pg);
    for name in ["one", "two"] {
        engine
            .drop_database(&database_name(DatabaseEngine::PostgreSQL, "ha", name))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn two_hundred_databases_reach_ready() {
    let pg = postgres().await;
    let (server, api) = cluster_with_namespace("bulk").await;
    let op = Operator::start(&server, pg_server(pg));
    let n = 200;
    let started = Instant::now();
    for i in 0..n {
        create(&api, &format!("b-{i}"), "PostgreSQL", &["app"], "Delete").await;
    }
    wait_until("200 Ready", Duration::from_secs(300), async || {
        (count_ready(&api).await? == n).then_some(())
    })
    .await;
    println!(
        "200 Database objects reconciled to Ready in {:.2} s (PostgreSQL, debug build)",
        started.elapsed().as_secs_f64()
    );
    op.stop().await;
    let engine = pg_engine(pg);
    // A few at a time: more than the admin pool's connections would only queue for them.
    for chunk in (0..n).collect::<Vec<_>>().chunks(4) {
        let mut drops = tokio::task::JoinSet::new();
        for i in chunk {
            let engine = engine.clone();
            let name = database_name(DatabaseEngine::PostgreSQL, "bulk", &format!("b-{i}"));
            drops.spawn(async move { engine.drop_database(&name).await });
        }
        while let Some(done) = drops.join_next().await {
            done.unwrap().unwrap();
        }
    }
}
