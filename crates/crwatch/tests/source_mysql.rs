//! The MySQL/MariaDB source against a real MariaDB (from `crwatch-testsupport`): polling by
//! updated-at and by hash with deletes, faithful values, hostile identifiers, a restarted
//! server, and errors that say what to do without leaking the password.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crwatch::informer::{HandlerFns, Informer};
use crwatch::source::mysql::{Mode, MysqlSource};
use crwatch::source::{Event, Source};
use crwatch_testsupport::mariadb::MariaDb;
use futures::StreamExt;
use kube::api::DynamicObject;
use serde_json::{Value, json};
use sqlx::mysql::MySqlPool;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(30);

static SERVER: OnceCell<MariaDb> = OnceCell::const_new();

async fn server() -> &'static MariaDb {
    SERVER
        .get_or_init(|| async { MariaDb::start().await.expect("start MariaDB") })
        .await
}

/// A fresh database: an admin pool on it and its URL.
async fn database(db: &MariaDb, name: &str) -> (MySqlPool, String) {
    let admin = MySqlPool::connect(&db.admin_url()).await.unwrap();
    sqlx::raw_sql(&format!(
        "DROP DATABASE IF EXISTS `{name}`; CREATE DATABASE `{name}`"
    ))
    .execute(&admin)
    .await
    .unwrap();
    admin.close().await;
    let url = format!("mysql://admin:{}@127.0.0.1:{}/{name}", db.password(), db.port());
    (MySqlPool::connect(&url).await.unwrap(), url)
}

async fn exec(pool: &MySqlPool, sql: &str) {
    sqlx::raw_sql(sql)
        .execute(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

async fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn store_v(inf: &Informer<DynamicObject>) -> BTreeMap<String, Value> {
    inf.store()
        .list()
        .iter()
        .map(|o| {
            (
                o.metadata.name.clone().unwrap_or_default(),
                o.data["data"]["v"].clone(),
            )
        })
        .collect()
}

async fn table_v(pool: &MySqlPool, table: &str) -> BTreeMap<String, Value> {
    let rows: Vec<(String, Option<String>)> =
        sqlx::query_as(&format!("SELECT CAST(id AS CHAR), v FROM {table}"))
            .fetch_all(pool)
            .await
            .unwrap();
    rows.into_iter().map(|(k, v)| (k, json!(v))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_by_updated_at_and_hash_with_deletes_through_an_informer() {
    let db = server().await;
    let (pool, url) = database(db, "t_poll").await;
    exec(
        &pool,
        "CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(20),
           updated_at TIMESTAMP(6) NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6));
         INSERT INTO t (id, v) VALUES (1, 'a'), (2, 'b'), (3, 'c');",
    )
    .await;
    for (mode, extra, ids) in [
        (
            "updated",
            "&updated_at=updated_at&delete_scan_every=1",
            (10, 2, 20),
        ),
        ("hash", "", (11, 3, 21)),
    ] {
        let source = MysqlSource::from_url(&format!("{url}?table=t&interval=100ms{extra}")).unwrap();
        assert!(!Source::describe(&source).contains(db.password()));
        let inf = Informer::new(source);
        let changes = Arc::new(AtomicUsize::new(0));
        let (a, u, d) = (changes.clone(), changes.clone(), changes.clone());
        inf.add_handler(
            HandlerFns::new()
                .on_add(move |_| {
                    a.fetch_add(1, Ordering::SeqCst);
                })
                .on_update(move |_, _, _| {
                    u.fetch_add(1, Ordering::SeqCst);
                })
                .on_delete(move |_| {
                    d.fetch_add(1, Ordering::SeqCst);
                }),
        );
        let cancel = CancellationToken::new();
        inf.start(cancel.clone());
        inf.wait_synced(WAIT).await.unwrap();
        assert_eq!(store_v(&inf), table_v(&pool, "t").await);
        let listed = changes.load(Ordering::SeqCst);
        exec(&pool, &format!("UPDATE t SET v = '{mode}' WHERE id = 1")).await;
        exec(&pool, &format!("INSERT INTO t (id, v) VALUES ({}, 'new')", ids.0)).await;
        exec(&pool, &format!("DELETE FROM t WHERE id = {}", ids.1)).await;
        // A row the updated-at window cannot see (NULL) arrives through the key scan.
        exec(
            &pool,
            &format!("INSERT INTO t VALUES ({}, 'null-ts', NULL)", ids.2),
        )
        .await;
        let expected = table_v(&pool, "t").await;
        wait_for(&format!("poll by {mode}"), WAIT, || store_v(&inf) == expected).await;
        assert_eq!(
            changes.load(Ordering::SeqCst) - listed,
            4,
            "one handler call per change ({mode})"
        );
        // Unchanged polls change nothing.
        let before = changes.load(Ordering::SeqCst);
        let polls = inf.stats().events.load(Ordering::Relaxed);
        wait_for("a few more polls", WAIT, || {
            inf.stats().events.load(Ordering::Relaxed) >= polls + 3
        })
        .await;
        assert_eq!(changes.load(Ordering::SeqCst), before);
        cancel.cancel();
    }
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_convert_faithfully() {
    let db = server().await;
    let (pool, url) = database(db, "t_values").await;
    exec(
        &pool,
        "CREATE TABLE v (id BIGINT UNSIGNED PRIMARY KEY, price DECIMAL(30,10), ok TINYINT(1), ratio DOUBLE,
           at TIMESTAMP(3) NULL, local DATETIME, day DATE, raw VARBINARY(10), bits BIT(4), note TEXT,
           big LONGTEXT, kind ENUM('x','y'));
         INSERT INTO v VALUES (18446744073709551615, 12345678901234567890.1234567890, 1, 1.5,
           '2024-05-01 10:00:00.250', '2024-05-01 12:00:00', '2024-05-01', X'00FF10', b'1010', NULL,
           REPEAT('x', 100000), 'y');",
    )
    .await;
    let mut events = Box::new(MysqlSource::from_url(&format!("{url}?table=v")).unwrap()).events();
    let mut objs = vec![];
    loop {
        match tokio::time::timeout(WAIT, events.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            Event::Init => {}
            Event::InitApply(o) => objs.push(o),
            Event::InitDone => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(objs.len(), 1);
    let v = serde_json::to_value(&objs[0]).unwrap();
    assert_eq!(v["apiVersion"], "mysql.crwatch.io/v1");
    assert_eq!(v["metadata"]["namespace"], "t_values.v");
    assert_eq!(v["metadata"]["name"], "18446744073709551615");
    let mut data = v["data"].clone();
    assert_eq!(data["big"].as_str().map(str::len), Some(100_000));
    data["big"] = Value::Null;
    assert_eq!(
        data,
        json!({
            "id": 18446744073709551615u64,
            "price": "12345678901234567890.1234567890",
            "ok": true,
            "ratio": 1.5,
            "at": "2024-05-01T10:00:00.250Z",
            "local": "2024-05-01T12:00:00",
            "day": "2024-05-01",
            "raw": "AP8Q",
            "bits": 10,
            "note": null,
            "big": null,
            "kind": "y",
        })
    );
    drop(events);
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_identifiers_composite_keys_and_queries() {
    let db = server().await;
    let (pool, url) = database(db, "t_hostile").await;
    exec(
        &pool,
        "CREATE TABLE `we``ird; DROP TABLE x` (`k``ey` VARCHAR(10), `select` INT, v TEXT, PRIMARY KEY (`k``ey`, `select`));
         INSERT INTO `we``ird; DROP TABLE x` VALUES ('a,b', 1, 'one'), ('c\\\\', 2, 'two');",
    )
    .await;
    let opts: sqlx::mysql::MySqlConnectOptions = url.parse().unwrap();
    let source = MysqlSource::table(opts.clone(), "t_hostile", "we`ird; DROP TABLE x")
        .interval(Duration::from_millis(100))
        .unwrap();
    let inf = Informer::new(source);
    let cancel = CancellationToken::new();
    inf.start(cancel.clone());
    inf.wait_synced(WAIT).await.unwrap();
    let ns = "t_hostile.we`ird; DROP TABLE x";
    let store = inf.store();
    assert_eq!(
        store.lister().get(Some(ns), "a\\,b,1").unwrap().data["data"]["k`ey"],
        "a,b"
    );
    assert_eq!(
        store.lister().get(Some(ns), "c\\\\,2").unwrap().data["data"]["v"],
        "two"
    );
    exec(&pool, "DELETE FROM `we``ird; DROP TABLE x` WHERE `select` = 2").await;
    wait_for("hostile delete", WAIT, || store.len() == 1).await;
    cancel.cancel();
    let source = MysqlSource::query(
        opts,
        "SELECT `k``ey` AS k, v FROM `we``ird; DROP TABLE x`",
        &["k"],
    )
    .mode(Mode::PollHash)
    .namespace("q");
    let inf = Informer::new(source);
    let cancel = CancellationToken::new();
    inf.start(cancel.clone());
    inf.wait_synced(WAIT).await.unwrap();
    assert!(inf.store().lister().get(Some("q"), "a,b").is_some());
    cancel.cancel();
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_say_what_to_do_and_a_restarted_server_is_survived() {
    let mut db = MariaDb::start().await.unwrap();
    let (pool, url) = database(&db, "t_restart").await;
    exec(&pool, "CREATE TABLE nokey (v TEXT); CREATE TABLE t (id INT PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'a');").await;
    // No primary key: an error naming the fix, without the password; the source keeps trying.
    let mut events = Box::new(MysqlSource::from_url(&format!("{url}?table=nokey")).unwrap()).events();
    let err = tokio::time::timeout(WAIT, events.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert!(
        err.message.contains("has no primary key: pass key=COLUMN"),
        "{err}"
    );
    assert!(!err.to_string().contains(db.password()));
    drop(events);
    let source = MysqlSource::from_url(&format!("{url}?table=t&interval=100ms")).unwrap();
    let inf = Informer::new(source);
    let cancel = CancellationToken::new();
    inf.start(cancel.clone());
    inf.wait_synced(WAIT).await.unwrap();
    pool.close().await;
    db.stop();
    let errors = inf.stats().errors.load(Ordering::Relaxed);
    wait_for("the outage to be reported", WAIT, || {
        inf.stats().errors.load(Ordering::Relaxed) > errors
    })
    .await;
    db.restart().await.unwrap();
    let pool = MySqlPool::connect(&url).await.unwrap();
    exec(&pool, "UPDATE t SET v = 'after'; INSERT INTO t VALUES (2, 'b')").await;
    let expected = table_v(&pool, "t").await;
    wait_for("changes after the restart", Duration::from_secs(60), || {
        store_v(&inf) == expected
    })
    .await;
    cancel.cancel();
    pool.close().await;
}
