//! The Database operator on real PostgreSQL under the Sieve/Acto fault schedules of
//! `crwatch::testing`: killed right before and right after its writes, served stale reads
//! (and restarted meanwhile), and given coalesced events, while a user creates Databases,
//! changes one's users, deletes one and creates another. Each schedule must converge with
//! exactly the databases and roles the live Databases own, and no Database may lose its
//! finalizer before its database and roles are dropped.

use std::time::Duration;

use crwatch::testing::{Env, FaultTest};
use crwatch_testsupport::postgres::Postgres;
use database_operator::config::Server;
use database_operator::naming::{database_name, role_name, role_suffix};
use database_operator::run::RunOptions;
use database_operator::types::{Database, DatabaseEngine};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use sqlx::Row;
use tokio::sync::OnceCell;

static POSTGRES: OnceCell<Postgres> = OnceCell::const_new();

async fn postgres() -> &'static Postgres {
    POSTGRES
        .get_or_init(|| async { Postgres::start().await.expect("PostgreSQL starts") })
        .await
}

const PG: DatabaseEngine = DatabaseEngine::PostgreSQL;
/// Every Database name the steps use: external resources are looked for under these.
const NAMES: [&str; 3] = ["a", "b", "c"];

fn database(name: &str, users: &[&str]) -> Database {
    serde_json::from_value(json!({
        "apiVersion": "stable.example.com/v1",
        "kind": "Database",
        "metadata": {"name": name},
        "spec": {
            "engine": "PostgreSQL",
            "version": "15",
            "size": "1Gi",
            "users": users.iter().map(|u| json!({"username": u})).collect::<Vec<_>>(),
            "deletionPolicy": "Delete",
        },
    }))
    .expect("a Database")
}

async fn create(env: Env, name: &str, users: &[&str]) -> anyhow::Result<()> {
    let api: Api<Database> = Api::namespaced(env.client, &env.namespace);
    api.create(&PostParams::default(), &database(name, users)).await?;
    Ok(())
}

/// The databases and roles of this run's namespace on the server, as `db:NAME` and
/// `role:NAME`.
async fn external(pool: &sqlx::PgPool, namespace: &str) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for name in NAMES {
        let db = database_name(PG, namespace, name);
        let exists = sqlx::query("SELECT 1 FROM pg_database WHERE datname = $1")
            .bind(&db)
            .fetch_optional(pool)
            .await?
            .is_some();
        if exists {
            out.push(format!("db:{db}"));
        }
        let roles = sqlx::query("SELECT rolname FROM pg_roles WHERE right(rolname, $1) = $2")
            .bind(role_suffix(&db).len() as i32)
            .bind(role_suffix(&db))
            .fetch_all(pool)
            .await?;
        for r in roles {
            out.push(format!("role:{}", r.try_get::<String, _>("rolname")?));
        }
    }
    Ok(out)
}

fn owns(d: &Database) -> Vec<String> {
    let ns = d.metadata.namespace.clone().unwrap_or_default();
    let db = database_name(PG, &ns, &d.metadata.name.clone().unwrap_or_default());
    let mut out = vec![format!("db:{db}")];
    out.extend(
        d.spec
            .users
            .iter()
            .map(|u| format!("role:{}", role_name(PG, &db, &u.username))),
    );
    out
}

fn crd() -> Value {
    serde_saphyr::from_str(&database_operator::crd::crd_yaml()).expect("the CRD parses")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_operator_converges_under_faults() {
    let pg = postgres().await;
    let pool = sqlx::PgPool::connect(&pg.admin_url())
        .await
        .expect("admin connection");
    let servers = vec![Server {
        name: "default".into(),
        engine: PG,
        admin_dsn: pg.admin_url(),
        host: "127.0.0.1".into(),
        port: pg.port(),
    }];
    let test = FaultTest::<Database>::new("dbf")
        .server(|| async {
            let server = crwatch_apiserver::TestServer::start()
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            server
                .server()
                .apply(crd())
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            Ok(server)
        })
        .controller(move |client| {
            let servers = servers.clone();
            async move {
                let options = RunOptions {
                    metrics_addr: None,
                    probe_addr: None,
                    concurrency: 4,
                    ..RunOptions::default()
                };
                if let Err(e) =
                    database_operator::run::run(client, servers, options, std::future::pending()).await
                {
                    tracing::error!(error = %e, "the operator stopped");
                }
            }
        })
        .step("create a", |env| create(env, "a", &["admin", "app"]))
        .step("create b", |env| create(env, "b", &["owner"]))
        .step("replace a's user app by reader", |env| async move {
            let api: Api<Database> = Api::namespaced(env.client, &env.namespace);
            let patch = json!({"spec": {"users": [{"username": "admin"}, {"username": "reader"}]}});
            api.patch("a", &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            Ok(())
        })
        .step("delete b", |env| async move {
            let api: Api<Database> = Api::namespaced(env.client, &env.namespace);
            api.delete("b", &DeleteParams::default()).await?;
            Ok(())
        })
        .step("create c", |env| create(env, "c", &["web"]))
        .desired(|env| async move {
            let api: Api<Database> = Api::namespaced(env.client, &env.namespace);
            let list = api.list(&Default::default()).await.map_err(|e| e.to_string())?;
            for d in list.items {
                let s = d.status.clone().unwrap_or_default();
                if !s.ready || s.observed_generation != d.metadata.generation {
                    return Err(format!(
                        "Database {:?} not Ready at generation {:?}: {:?}",
                        d.metadata.name, d.metadata.generation, s.message
                    ));
                }
            }
            Ok(())
        })
        .owns(owns)
        .external(move |env| {
            let pool = pool.clone();
            async move { external(&pool, &env.namespace).await }
        })
        .finalizer(database_operator::controller::FINALIZER)
        .max_crash_points(24)
        .step_delay(Duration::from_millis(150))
        .converge_timeout(Duration::from_secs(40));
    let report = test.run().await.unwrap_or_else(|e| panic!("{e}"));
    for r in &report.runs {
        eprintln!("{} fired={} took={:?}", r.schedule, r.fired, r.took);
    }
    assert!(report.baseline_writes > 0);
    assert!(report.runs.iter().filter(|r| r.fired).count() >= 4, "{report:#?}");
}

/// The bug the crash schedules found, pinned down: a predecessor killed in the middle of
/// `CREATE DATABASE` leaves its server process finishing the statement. A cleanup meanwhile
/// must wait for it rather than find nothing, let the Database go, and leave the database
/// behind. The predecessor is played by a session holding the operator's lock for the name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drop_waits_for_a_create_a_killed_predecessor_left_running() {
    use sqlx::Connection as _;
    let pg = postgres().await;
    let engine = database_operator::engine::Engine::connect(PG, &pg.admin_url()).expect("engine");
    let name = "killed_mid_create";
    let mut predecessor = sqlx::PgConnection::connect(&pg.admin_url())
        .await
        .expect("connect");
    sqlx::query("SELECT pg_advisory_lock(hashtextextended($1, 0))")
        .bind(format!("database-operator/database/{name}"))
        .execute(&mut predecessor)
        .await
        .expect("lock");
    let drop = tokio::spawn(async move { engine.drop_database(name).await });
    // The drop waits for the lock (it must not decide "nothing to drop" now).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!drop.is_finished(), "the drop waits for the running CREATE");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut predecessor)
        .await
        .expect("create");
    // The predecessor's session ends (its client was killed): the lock goes with it.
    predecessor.close().await.expect("close");
    let dropped = tokio::time::timeout(Duration::from_secs(30), drop)
        .await
        .expect("the drop finishes")
        .expect("task")
        .expect("drop");
    assert!(dropped, "the database the predecessor created is dropped");
    let engine = database_operator::engine::Engine::connect(PG, &pg.admin_url()).expect("engine");
    assert!(!engine.database_exists(name).await.expect("look up"));
}

/// A predecessor whose client vanished without its server process noticing (a crashed node)
/// holds the lock idle: after a few seconds its session is ended, not waited for for hours.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_holder_of_the_lock_is_ended() {
    use sqlx::Connection as _;
    let pg = postgres().await;
    let engine = database_operator::engine::Engine::connect(PG, &pg.admin_url()).expect("engine");
    let name = "held_by_a_vanished_client";
    let mut predecessor = sqlx::PgConnection::connect(&pg.admin_url())
        .await
        .expect("connect");
    sqlx::query("SELECT pg_advisory_lock(hashtextextended($1, 0))")
        .bind(format!("database-operator/database/{name}"))
        .execute(&mut predecessor)
        .await
        .expect("lock");
    let created = tokio::time::timeout(Duration::from_secs(30), engine.ensure_database(name))
        .await
        .expect("not blocked for long")
        .expect("created");
    assert!(created);
    assert!(
        sqlx::query("SELECT 1").execute(&mut predecessor).await.is_err(),
        "the idle predecessor's session was ended"
    );
    assert!(engine.drop_database(name).await.expect("drop"));
}
