//! `crwatch get URI` end to end: a directory of YAML files, a real PostgreSQL 15 table (polled
//! without the trigger, said on stderr; LISTEN/NOTIFY with `--install-trigger`) and a local
//! HTTP endpoint, through the built binary with the same table, `-o`, `-w` and `--diff` output
//! as Kubernetes resources.

mod common;

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{BIN, words};
use crwatch_testsupport::postgres::Postgres;
use serde_json::{Value, json};
use sqlx::postgres::PgPool;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStderr, ChildStdout, Command};

/// A running `crwatch get …`, read line by line with a timeout.
struct Run {
    _child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: Lines<BufReader<ChildStderr>>,
}

impl Run {
    fn start(args: &[&str]) -> Run {
        let mut child = Command::new(BIN)
            .arg("get")
            .args(args)
            .env_remove("KUBECONFIG")
            .env("PGPASSWORD", "unused-when-the-url-has-one")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("crwatch starts");
        Run {
            stdout: BufReader::new(child.stdout.take().unwrap()).lines(),
            stderr: BufReader::new(child.stderr.take().unwrap()).lines(),
            _child: child,
        }
    }

    async fn line(&mut self) -> String {
        tokio::time::timeout(Duration::from_secs(30), self.stdout.next_line())
            .await
            .expect("a line within 30 s")
            .expect("stdout readable")
            .expect("crwatch still running")
    }

    async fn stderr_line(&mut self) -> String {
        tokio::time::timeout(Duration::from_secs(30), self.stderr.next_line())
            .await
            .expect("a stderr line within 30 s")
            .expect("stderr readable")
            .expect("crwatch still running")
    }
}

/// `crwatch get ARGS` to completion: exit code, stdout, stderr.
async fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .arg("get")
        .args(args)
        .env_remove("KUBECONFIG")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), out)
        .await
        .expect("crwatch ends within 30 s")
        .expect("crwatch runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const APP: &str = "apiVersion: example.com/v1\nkind: AppConfig\nmetadata:\n  name: web\n  namespace: prod\nspec:\n  replicas: 2\n  image: web:1\n";

#[tokio::test]
async fn a_directory_of_yaml_files_lists_and_watches_with_diffs() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("web.yaml"), APP).unwrap();
    let uri = format!("file://{}", dir.path().display());

    let (code, out, err) = run(&[&uri, "-o", "json"]).await;
    assert_eq!(code, 0, "{err}");
    let list: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list["items"][0]["kind"], "AppConfig");
    assert_eq!(list["items"][0]["spec"]["replicas"], 2);

    let mut watch = Run::start(&[&uri, "-w", "--diff"]);
    assert_eq!(words(&watch.line().await), ["EVENT", "NAMESPACE", "NAME", "KIND"]);
    assert_eq!(words(&watch.line().await), ["ADDED", "prod", "web", "AppConfig"]);
    // sed -i: a new file renamed over the old one.
    let tmp = dir.path().join(".web.yaml.sedtmp");
    std::fs::write(&tmp, APP.replace("replicas: 2", "replicas: 3")).unwrap();
    std::fs::rename(&tmp, dir.path().join("web.yaml")).unwrap();
    assert_eq!(words(&watch.line().await)[..3], ["MODIFIED", "prod", "web"]);
    assert_eq!(watch.line().await, "    spec:");
    assert_eq!(watch.line().await, "      spec.replicas: 2 → 3");
    std::fs::remove_file(dir.path().join("web.yaml")).unwrap();
    assert_eq!(words(&watch.line().await)[..3], ["DELETED", "prod", "web"]);
}

#[tokio::test]
async fn a_postgres_table_is_polled_without_the_trigger_and_notified_with_it() {
    let pg = Postgres::start().await.unwrap();
    let pool = PgPool::connect(&pg.admin_url()).await.unwrap();
    sqlx::query("CREATE TABLE orders (id int PRIMARY KEY, status text NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO orders VALUES (1, 'new')")
        .execute(&pool)
        .await
        .unwrap();
    let uri = format!("{}?table=orders", pg.admin_url());

    let mut watch = Run::start(&[&uri, "-w", "--diff", "--interval", "200ms"]);
    let note = watch.stderr_line().await;
    assert!(
        note.contains("no change-log trigger") && note.contains("polling every 200ms"),
        "{note}"
    );
    assert!(!note.contains(pg.password()), "no password on stderr: {note}");
    assert_eq!(
        words(&watch.line().await),
        ["EVENT", "NAMESPACE", "NAME", "STATUS"]
    );
    assert_eq!(words(&watch.line().await), ["ADDED", "public.orders", "1", "new"]);
    sqlx::query("UPDATE orders SET status = 'paid' WHERE id = 1")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(
        words(&watch.line().await),
        ["MODIFIED", "public.orders", "1", "paid"]
    );
    assert_eq!(watch.line().await, "    data:");
    assert_eq!(watch.line().await, "      data.status: \"new\" → \"paid\"");
    drop(watch);

    // With --install-trigger, changes arrive by LISTEN/NOTIFY (no polling note).
    let mut watch = Run::start(&[&uri, "-w", "--install-trigger", "-o", "name"]);
    assert_eq!(watch.line().await, "row.postgres.crwatch.io/1");
    sqlx::query("INSERT INTO orders VALUES (2, 'new')")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(watch.line().await, "row.postgres.crwatch.io/2");
    drop(watch);
    // Now that it is installed, a plain watch uses it and says nothing about polling.
    let (code, out, err) = run(&[&uri, "-o", "name"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "row.postgres.crwatch.io/1\nrow.postgres.crwatch.io/2\n");
    assert!(!err.contains("polling"), "{err}");
}

#[tokio::test]
async fn an_http_endpoint_is_polled_with_items_and_key() {
    let items = Arc::new(Mutex::new(json!({"data": [{"id": 7, "name": "seven"}]})));
    let served = items.clone();
    let app = axum::Router::new().route(
        "/api/items",
        axum::routing::get(move || {
            let served = served.clone();
            async move { axum::Json(served.lock().unwrap().clone()) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let uri = format!("http://{addr}/api/items");

    let mut watch = Run::start(&[
        &uri,
        "--items",
        "/data",
        "--key",
        "id",
        "-w",
        "--interval",
        "100ms",
    ]);
    assert_eq!(
        words(&watch.line().await),
        ["EVENT", "NAMESPACE", "NAME", "DATA.NAME"]
    );
    assert_eq!(words(&watch.line().await)[2..], ["7", "seven"]);
    items.lock().unwrap()["data"]
        .as_array_mut()
        .unwrap()
        .push(json!({"id": 8, "name": "eight"}));
    assert_eq!(words(&watch.line().await)[..1], ["ADDED"]);

    let (code, _, err) = run(&["gopher://x"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("unknown source scheme"), "{err}");
}
