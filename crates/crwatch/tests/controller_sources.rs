//! One controller reacting to a ConfigMap, a file and a table row: sources outside Kubernetes
//! feed the same informers, mappers and workqueue as Kubernetes objects, under a manager
//! whose `/readyz` says when one of them is down.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::wait_for;
use crwatch::controller::{Action, Request};
use crwatch::informer::Informer;
use crwatch::manager::{Manager, ManagerConfig};
use crwatch::source::file::FileSource;
use crwatch::source::postgres::PostgresSource;
use crwatch::store::ObjectKey;
use crwatch_apiserver::TestServer;
use crwatch_testsupport::postgres::Postgres;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use sqlx::postgres::PgPool;

/// What the reconciler saw: the primary's `data.v`, the file's `spec.replicas` and the row's
/// `limit` at each reconcile.
#[derive(Default)]
struct Seen(Mutex<Vec<(String, String, String)>>);

fn app_key() -> ObjectKey {
    ObjectKey::new(Some("default"), "app")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_reconciler_reacts_to_a_configmap_a_file_and_a_table_row() {
    let server = TestServer::start().await.unwrap();
    let client = server.client();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some("app".into());
    cm.data = Some([("v".to_string(), "1".to_string())].into());
    cms.create(&PostParams::default(), &cm).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("app.yaml"),
        "apiVersion: example.com/v1\nkind: AppSettings\nmetadata: {name: app}\nspec: {replicas: 2}\n",
    )
    .unwrap();

    let pg = Postgres::start().await.unwrap();
    let pool = PgPool::connect(&pg.admin_url()).await.unwrap();
    sqlx::query("CREATE TABLE quotas (app text PRIMARY KEY, \"limit\" int NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO quotas VALUES ('app', 10)")
        .execute(&pool)
        .await
        .unwrap();
    let url = format!("{}?table=quotas", pg.admin_url());

    let mut mgr = Manager::new(
        client.clone(),
        ManagerConfig {
            metrics_addr: None,
            probe_addr: Some("127.0.0.1:0".parse().unwrap()),
            source_grace: Duration::from_secs(1),
            ..ManagerConfig::default()
        },
    );
    let files = mgr
        .factory()
        .add(Informer::new(FileSource::new(dir.path()).unwrap()));
    let rows = mgr.factory().add(Informer::new(
        PostgresSource::from_url(&url).unwrap().install_trigger(true),
    ));
    let (files_c, rows_c) = (files.store(), rows.store());
    let seen = Arc::new(Seen::default());
    let controller = mgr
        .controller("app", mgr.factory().all::<ConfigMap>())
        .watches(files.clone(), |_: &DynamicObject| vec![app_key()])
        .watches(rows.clone(), |row: &DynamicObject| {
            // Rows name their app in a column: map it to the primary's key.
            let app = row.data["data"]["app"].as_str().unwrap_or_default();
            vec![ObjectKey::new(Some("default"), app)]
        })
        .build(
            move |req: Request<ConfigMap>, seen: Arc<Seen>| {
                let (files, rows) = (files_c.clone(), rows_c.clone());
                async move {
                    let Request::Apply(cm) = req else {
                        return Ok(Action::done());
                    };
                    let v = cm
                        .data
                        .as_ref()
                        .and_then(|d| d.get("v"))
                        .cloned()
                        .unwrap_or_default();
                    let replicas = files
                        .list()
                        .first()
                        .map(|f| f.data["spec"]["replicas"].to_string())
                        .unwrap_or_default();
                    let limit = rows
                        .list()
                        .first()
                        .map(|r| r.data["data"]["limit"].to_string())
                        .unwrap_or_default();
                    seen.0.lock().unwrap().push((v, replicas, limit));
                    Ok(Action::done())
                }
            },
            seen.clone(),
        );
    mgr.add(controller);
    let ready = mgr.readiness();
    let metrics = mgr.metrics().clone();
    let mut bound = mgr.bound_addresses();
    let stop = tokio_util::sync::CancellationToken::new();
    let run = tokio::spawn(mgr.run({
        let stop = stop.clone();
        async move { stop.cancelled().await }
    }));
    let last = |seen: &Seen| seen.0.lock().unwrap().last().cloned();
    let want = |v: &str, r: &str, l: &str| Some((v.to_string(), r.to_string(), l.to_string()));
    wait_for(60, "the first reconcile", || {
        (last(&seen) == want("1", "2", "10")).then_some(())
    })
    .await;

    cms.patch(
        "app",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"data": {"v": "2"}})),
    )
    .await
    .unwrap();
    wait_for(30, "the ConfigMap change", || {
        (last(&seen) == want("2", "2", "10")).then_some(())
    })
    .await;

    // An editor's atomic save.
    let tmp = dir.path().join(".app.yaml.tmp");
    std::fs::write(
        &tmp,
        "apiVersion: example.com/v1\nkind: AppSettings\nmetadata: {name: app}\nspec: {replicas: 3}\n",
    )
    .unwrap();
    std::fs::rename(&tmp, dir.path().join("app.yaml")).unwrap();
    wait_for(30, "the file change", || {
        (last(&seen) == want("2", "3", "10")).then_some(())
    })
    .await;

    sqlx::query("UPDATE quotas SET \"limit\" = 20 WHERE app = 'app'")
        .execute(&pool)
        .await
        .unwrap();
    wait_for(30, "the row change", || {
        (last(&seen) == want("2", "3", "20")).then_some(())
    })
    .await;
    assert!(ready.get(), "ready while every source is healthy");

    // The database goes away: the manager stops being ready once past the grace period, and
    // says which source is failing.
    let probes = bound.wait_for(|b| b.1.is_some()).await.unwrap().1.unwrap();
    drop(pool);
    let mut pg = pg;
    pg.stop();
    wait_for(60, "not ready", || (!ready.get()).then_some(())).await;
    let body = reqwest_like_get(probes, "/readyz").await;
    assert!(body.starts_with("503") && body.contains("quotas"), "{body}");
    // The source's metrics say the same.
    let text = metrics.encode();
    let line = text
        .lines()
        .find(|l| l.starts_with("crwatch_source_connected{") && l.contains("quotas"))
        .unwrap_or_else(|| panic!("no source metric for the table:\n{text}"));
    assert!(line.ends_with(" 0"), "{line}");
    assert!(
        !line.contains(pg.password()),
        "no password in metric labels: {line}"
    );
    pg.restart().await.unwrap();
    wait_for(60, "ready again", || ready.get().then_some(())).await;
    assert!(reqwest_like_get(probes, "/readyz").await.starts_with("200"));

    stop.cancel();
    run.await.unwrap().unwrap();
}

/// A plain HTTP/1.0 GET: status code and body.
async fn reqwest_like_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let code = out.split_whitespace().nth(1).unwrap_or_default().to_string();
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    format!("{code} {body}")
}
