//! The PostgreSQL source against a real PostgreSQL 15 (from `crwatch-testsupport`): snapshot,
//! LISTEN/NOTIFY changes, killed connections and a restarted server without lost changes,
//! trigger installation and removal, polling by updated-at and by hash, big rows, hostile
//! identifiers, resume and pruned positions, and a 100,000-row table through an informer.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crwatch::informer::{HandlerFns, Informer};
use crwatch::source::postgres::{ChangeLog, Mode, PostgresSource};
use crwatch::source::{Checkpoint, Event, EventStream, Source};
use crwatch_testsupport::postgres::Postgres;
use futures::StreamExt;
use kube::api::DynamicObject;
use serde_json::{Value, json};
use sqlx::postgres::PgPool;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

/// Counts live heap bytes (and the peak), for the 100k-row figures.
struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            let now = LIVE.fetch_add(l.size(), Ordering::Relaxed) + l.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) };
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const WAIT: Duration = Duration::from_secs(30);

static SERVER: OnceCell<Postgres> = OnceCell::const_new();

async fn server() -> &'static Postgres {
    SERVER
        .get_or_init(|| async { Postgres::start().await.expect("start PostgreSQL") })
        .await
}

/// A fresh database on `pg`: an admin pool on it and its URL.
async fn database(pg: &Postgres, name: &str) -> (PgPool, String) {
    let admin = PgPool::connect(&pg.admin_url()).await.unwrap();
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&admin)
        .await
        .unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let url = format!(
        "postgresql://postgres:{}@127.0.0.1:{}/{name}",
        pg.password(),
        pg.port()
    );
    let pool = PgPool::connect(&url).await.unwrap();
    (pool, url)
}

async fn exec(pool: &PgPool, sql: &str) {
    sqlx::raw_sql(sql)
        .execute(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Wait until `f` holds, checking every 20 ms, for at most `timeout`.
async fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// name -> data of every object in the informer.
fn store_data(inf: &Informer<DynamicObject>) -> BTreeMap<String, Value> {
    inf.store()
        .list()
        .iter()
        .map(|o| {
            (
                o.metadata.name.clone().unwrap_or_default(),
                o.data["data"].clone(),
            )
        })
        .collect()
}

/// id -> v of the table (both as the source renders them: id as text, v as JSON).
async fn table_state(pool: &PgPool, table: &str) -> BTreeMap<String, Value> {
    let rows: Vec<(String, Option<String>)> = sqlx::query_as(&format!("SELECT id::text, v FROM {table}"))
        .fetch_all(pool)
        .await
        .unwrap();
    rows.into_iter()
        .map(|(id, v)| {
            let n: i64 = id.parse().unwrap();
            (id, json!({"id": n, "v": v}))
        })
        .collect()
}

fn started(source: PostgresSource) -> (Informer<DynamicObject>, CancellationToken) {
    let inf = Informer::new(source);
    let cancel = CancellationToken::new();
    inf.start(cancel.clone());
    (inf, cancel)
}

/// The next event (skipping Progress unless asked), with a timeout.
async fn next_event(events: &mut EventStream<DynamicObject>, skip_progress: bool) -> Event<DynamicObject> {
    loop {
        let ev = tokio::time::timeout(WAIT, events.next())
            .await
            .expect("an event in time")
            .expect("the stream goes on");
        match ev {
            Ok(Event::Progress(_)) if skip_progress => continue,
            Ok(ev) => return ev,
            Err(e) => panic!("source error: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_snapshot_then_changes_with_faithful_values() {
    let pg = server().await;
    let (pool, url) = database(pg, "t_notify").await;
    exec(
        &pool,
        "CREATE TABLE orders (
            id bigint PRIMARY KEY, total numeric(30,10), paid boolean, ratio float8, at timestamptz,
            local timestamp, day date, blob bytea, doc jsonb, tags text[], amounts numeric[], note text, big text)",
    )
    .await;
    exec(
        &pool,
        "INSERT INTO orders VALUES
           (1, 12345678901234567890.1234567890, true, 1.5, '2024-05-01 12:00:00.25+02', '2024-05-01 12:00:00',
            '2024-05-01', '\\x00ff10', '{\"a\": [1, 2], \"b\": null}', ARRAY['x', 'y,z'], ARRAY[1.10, 2], NULL, NULL),
           (2, 0, false, 'NaN', NULL, NULL, NULL, NULL, NULL, NULL, NULL, 'second', NULL)",
    )
    .await;
    let source =
        PostgresSource::from_url(&format!("{url}?table=orders&mode=notify&install_trigger=true")).unwrap();
    let described = Source::describe(&source);
    assert!(!described.contains(pg.password()), "{described}");

    let inf = Informer::new(source);
    let (adds, updates, deletes) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let (a, u, d) = (adds.clone(), updates.clone(), deletes.clone());
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
    assert_eq!(inf.store().len(), 2);
    let one = inf
        .store()
        .lister()
        .get(Some("public.orders"), "1")
        .expect("row 1");
    let v = serde_json::to_value(&*one).unwrap();
    assert_eq!(v["apiVersion"], "postgres.crwatch.io/v1");
    assert_eq!(v["kind"], "Row");
    assert_eq!(v["metadata"]["namespace"], "public.orders");
    assert!(v["metadata"]["uid"].as_str().is_some_and(|u| u.len() == 36));
    let rv1 = v["metadata"]["resourceVersion"].as_str().unwrap().to_string();
    assert_eq!(
        v["data"],
        json!({
            "id": 1,
            "total": "12345678901234567890.1234567890",
            "paid": true,
            "ratio": 1.5,
            "at": "2024-05-01T10:00:00.250Z",
            "local": "2024-05-01T12:00:00",
            "day": "2024-05-01",
            "blob": "AP8Q",
            "doc": {"a": [1, 2], "b": null},
            "tags": ["x", "y,z"],
            "amounts": ["1.10", "2"],
            "note": null,
            "big": null,
        })
    );
    let two = inf.store().lister().get(Some("public.orders"), "2").unwrap();
    assert_eq!(two.data["data"]["ratio"], "NaN");

    // Insert, update (including a row far beyond NOTIFY's 8000-byte payload limit), delete.
    exec(&pool, "INSERT INTO orders (id, note) VALUES (3, 'third')").await;
    exec(&pool, "UPDATE orders SET big = repeat('x', 100000) WHERE id = 1").await;
    exec(&pool, "DELETE FROM orders WHERE id = 2").await;
    let store = inf.store();
    wait_for("insert, update and delete", WAIT, || {
        let l = store.lister();
        l.get(Some("public.orders"), "3").is_some()
            && l.get(Some("public.orders"), "2").is_none()
            && l.get(Some("public.orders"), "1")
                .is_some_and(|o| o.data["data"]["big"].as_str().is_some_and(|s| s.len() == 100_000))
    })
    .await;
    let one = store.lister().get(Some("public.orders"), "1").unwrap();
    assert_ne!(one.metadata.resource_version.as_deref(), Some(rv1.as_str()));
    // A key change is a delete of the old name and an add of the new one.
    exec(&pool, "UPDATE orders SET id = 4 WHERE id = 3").await;
    wait_for("key change", WAIT, || {
        let l = store.lister();
        l.get(Some("public.orders"), "4").is_some() && l.get(Some("public.orders"), "3").is_none()
    })
    .await;
    // An update that changes nothing visible keeps the version and calls no handler.
    let before = updates.load(Ordering::SeqCst);
    exec(&pool, "UPDATE orders SET note = note WHERE id = 4").await;
    exec(&pool, "INSERT INTO orders (id) VALUES (5)").await;
    wait_for("row 5", WAIT, || {
        store.lister().get(Some("public.orders"), "5").is_some()
    })
    .await;
    assert_eq!(
        updates.load(Ordering::SeqCst),
        before,
        "a no-op update is not a change"
    );
    assert_eq!(adds.load(Ordering::SeqCst), 2 + 1 + 1 + 1);
    assert_eq!(deletes.load(Ordering::SeqCst), 2);
    // TRUNCATE relists: everything gone.
    exec(&pool, "TRUNCATE orders").await;
    wait_for("truncate", WAIT, || store.is_empty()).await;
    cancel.cancel();
    pool.close().await;
}

/// Change rows, kill the source's connections, change more rows before it reconnects: every
/// change arrives and the final state equals the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_connections_lose_nothing() {
    let pg = server().await;
    let (pool, url) = database(pg, "t_killed").await;
    exec(&pool, "CREATE TABLE t (id int PRIMARY KEY, v text)").await;
    exec(
        &pool,
        "INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 50) g",
    )
    .await;
    let source =
        PostgresSource::from_url(&format!("{url}?table=t&install_trigger=true&keepalive=1s")).unwrap();
    let (inf, cancel) = started(source);
    inf.wait_synced(WAIT).await.unwrap();
    for round in 0..3 {
        exec(
            &pool,
            &format!("UPDATE t SET v = 'before-{round}-' || id WHERE id % 3 = {round}"),
        )
        .await;
        exec(&pool, &format!("INSERT INTO t VALUES ({}, 'new')", 100 + round)).await;
        let killed: Vec<(i32, bool)> = sqlx::query_as(
            "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = 'crwatch' AND datname = current_database()",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        assert!(!killed.is_empty(), "the source's backends were found");
        // Before the source is back (its backoff starts at 800 ms).
        exec(
            &pool,
            &format!("UPDATE t SET v = 'after-{round}-' || id WHERE id % 5 = {round}"),
        )
        .await;
        exec(&pool, &format!("DELETE FROM t WHERE id = {}", 10 + round)).await;
        let expected = table_state(&pool, "t").await;
        wait_for("the store to equal the table", WAIT, || {
            store_data(&inf) == expected
        })
        .await;
        // The source is connected again, on new backends.
        let killed: Vec<i32> = killed.into_iter().map(|(pid, _)| pid).collect();
        let deadline = Instant::now() + WAIT;
        loop {
            let (n,): (i64,) = sqlx::query_as(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE application_name = 'crwatch' AND datname = current_database() AND NOT pid = ANY($1)",
            )
            .bind(&killed)
            .fetch_one(&pool)
            .await
            .unwrap();
            if n > 0 {
                break;
            }
            assert!(Instant::now() < deadline, "the source reconnects");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    cancel.cancel();
    pool.close().await;
}

/// The server stops and starts again (same data): changes made after it is back, and those
/// made before it stopped, all arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_server_loses_nothing() {
    let mut pg = Postgres::start().await.unwrap();
    let (pool, url) = database(&pg, "t_restart").await;
    exec(&pool, "CREATE TABLE t (id int PRIMARY KEY, v text)").await;
    exec(&pool, "INSERT INTO t SELECT g, 'v' FROM generate_series(1, 20) g").await;
    pool.close().await;
    let source =
        PostgresSource::from_url(&format!("{url}?table=t&install_trigger=true&keepalive=1s")).unwrap();
    let (inf, cancel) = started(source);
    inf.wait_synced(WAIT).await.unwrap();
    let pool = PgPool::connect(&url).await.unwrap();
    exec(&pool, "UPDATE t SET v = 'before' WHERE id <= 5").await;
    pool.close().await;
    pg.stop();
    pg.restart().await.unwrap();
    let pool = PgPool::connect(&url).await.unwrap();
    exec(&pool, "UPDATE t SET v = 'after' WHERE id > 15").await;
    exec(&pool, "DELETE FROM t WHERE id = 10").await;
    exec(&pool, "INSERT INTO t VALUES (99, 'new')").await;
    let expected = table_state(&pool, "t").await;
    wait_for(
        "the store to equal the table after a restart",
        Duration::from_secs(60),
        || store_data(&inf) == expected,
    )
    .await;
    cancel.cancel();
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trigger_install_and_removal() {
    let pg = server().await;
    let (pool, url) = database(pg, "t_install").await;
    exec(&pool, "CREATE TABLE t (id int PRIMARY KEY, v text)").await;
    exec(&pool, "CREATE TABLE nokey (v text)").await;
    let source = PostgresSource::from_url(&format!("{url}?table=t")).unwrap();
    let sql = source.install_sql().await.unwrap();
    let log = ChangeLog::new("public", "t", &["id".to_string()]);
    assert_eq!(sql, log.install_sql());
    // Not installed and not asked to: the source says what to do, and keeps trying.
    let mut events = Box::new(source.clone()).events();
    let err = tokio::time::timeout(WAIT, events.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert!(err.message.contains("install_trigger=true"), "{err}");
    assert!(!err.to_string().contains(pg.password()));
    // A DBA runs the SQL; the source (retrying with backoff) then lists.
    exec(&pool, &sql).await;
    assert_eq!(next_event(&mut events, true).await, Event::Init);
    assert_eq!(next_event(&mut events, true).await, Event::InitDone);
    drop(events);
    let count = |q: &'static str| {
        let pool = pool.clone();
        async move { sqlx::query_as::<_, (i64,)>(q).fetch_one(&pool).await.unwrap().0 }
    };
    let triggers = "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'crwatch_%'";
    let tables = "SELECT count(*) FROM pg_class WHERE relname LIKE 'crwatch_%' AND relkind = 'r'";
    let funcs = "SELECT count(*) FROM pg_proc WHERE proname LIKE 'crwatch_%'";
    assert_eq!(count(triggers).await, 2);
    assert_eq!(count(tables).await, 2);
    assert_eq!(count(funcs).await, 1);
    source.uninstall().await.unwrap();
    assert_eq!(count(triggers).await, 0);
    assert_eq!(count(tables).await, 0);
    assert_eq!(count(funcs).await, 0);
    source.uninstall().await.unwrap();
    // install() is what install_trigger(true) does, and can run twice.
    source.install().await.unwrap();
    source.install().await.unwrap();
    assert_eq!(count(triggers).await, 2);
    source.uninstall().await.unwrap();
    // Errors that say what to do.
    let e = PostgresSource::from_url(&format!("{url}?table=nokey"))
        .unwrap()
        .install_sql()
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "public.nokey has no primary key: pass key=COLUMN (several: key=A,B)"
    );
    let e = PostgresSource::from_url(&format!("{url}?table=missing"))
        .unwrap()
        .install_sql()
        .await
        .unwrap_err();
    assert!(e.to_string().starts_with("public.missing does not exist"), "{e}");
    let e = PostgresSource::from_url(&format!("{url}?table=t&interval=1ms")).unwrap_err();
    assert!(
        e.to_string().contains("interval") && !e.to_string().contains(pg.password()),
        "{e}"
    );
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_by_updated_at_and_by_hash_with_deletes() {
    let pg = server().await;
    let (pool, url) = database(pg, "t_poll").await;
    exec(
        &pool,
        "CREATE TABLE t (id int PRIMARY KEY, v text, updated_at timestamptz DEFAULT now())",
    )
    .await;
    exec(
        &pool,
        "INSERT INTO t (id, v) SELECT g, 'v' FROM generate_series(1, 10) g",
    )
    .await;
    for mode in ["updated", "hash"] {
        let extra = if mode == "updated" {
            "&updated_at=updated_at&delete_scan_every=1"
        } else {
            ""
        };
        let source =
            PostgresSource::from_url(&format!("{url}?table=t&mode=poll&interval=100ms{extra}")).unwrap();
        assert_ne!(source.get_mode(), &Mode::Notify);
        let (inf, cancel) = started(source);
        inf.wait_synced(WAIT).await.unwrap();
        let expected = table_state_v(&pool).await;
        assert_eq!(store_v(&inf), expected);
        exec(
            &pool,
            &format!("UPDATE t SET v = '{mode}', updated_at = now() WHERE id IN (1, 2)"),
        )
        .await;
        exec(
            &pool,
            &format!(
                "INSERT INTO t (id, v) VALUES ({}, 'n')",
                if mode == "hash" { 50 } else { 40 }
            ),
        )
        .await;
        exec(
            &pool,
            &format!("DELETE FROM t WHERE id = {}", if mode == "hash" { 4 } else { 3 }),
        )
        .await;
        // A row whose updated-at is old (or NULL) still arrives through the key scan.
        exec(
            &pool,
            &format!(
                "INSERT INTO t VALUES ({}, 'old', NULL)",
                if mode == "hash" { 61 } else { 60 }
            ),
        )
        .await;
        let expected = table_state_v(&pool).await;
        wait_for(&format!("poll by {mode}"), WAIT, || store_v(&inf) == expected).await;
        cancel.cancel();
    }
    pool.close().await;
}

async fn table_state_v(pool: &PgPool) -> BTreeMap<String, Value> {
    let rows: Vec<(String, Option<String>)> = sqlx::query_as("SELECT id::text, v FROM t")
        .fetch_all(pool)
        .await
        .unwrap();
    rows.into_iter().map(|(k, v)| (k, json!(v))).collect()
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_identifiers_and_composite_keys() {
    let pg = server().await;
    let (pool, url) = database(pg, "t_hostile").await;
    exec(
        &pool,
        r#"CREATE SCHEMA "s""x";
           CREATE TABLE "s""x"."we""ird$crwatch$; DROP TABLE x" ("k""ey" text, "select" int, "v" text,
             PRIMARY KEY ("k""ey", "select"));
           INSERT INTO "s""x"."we""ird$crwatch$; DROP TABLE x" VALUES ('a,b', 1, 'one'), ('c\', 2, 'two');"#,
    )
    .await;
    let table = r#"we"ird$crwatch$; DROP TABLE x"#;
    let opts: sqlx::postgres::PgConnectOptions = url.parse().unwrap();
    for mode in [Mode::Notify, Mode::PollHash] {
        let source = PostgresSource::table(opts.clone(), "s\"x", table)
            .mode(mode.clone())
            .install_trigger(true)
            .interval(Duration::from_millis(100))
            .unwrap();
        let (inf, cancel) = started(source);
        inf.wait_synced(WAIT).await.unwrap();
        let ns = format!("s\"x.{table}");
        let names: Vec<String> = inf
            .store()
            .list()
            .iter()
            .map(|o| o.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(names.len(), 2);
        let l = inf.store().lister();
        assert_eq!(l.get(Some(&ns), "a\\,b,1").unwrap().data["data"]["k\"ey"], "a,b");
        assert_eq!(l.get(Some(&ns), "c\\\\,2").unwrap().data["data"]["select"], 2);
        exec(
            &pool,
            r#"UPDATE "s""x"."we""ird$crwatch$; DROP TABLE x" SET v = 'changed' WHERE "select" = 1"#,
        )
        .await;
        exec(
            &pool,
            r#"DELETE FROM "s""x"."we""ird$crwatch$; DROP TABLE x" WHERE "select" = 2"#,
        )
        .await;
        let store = inf.store();
        wait_for("hostile changes", WAIT, || {
            let l = store.lister();
            l.get(Some(&ns), "a\\,b,1")
                .is_some_and(|o| o.data["data"]["v"] == "changed")
                && l.get(Some(&ns), "c\\\\,2").is_none()
        })
        .await;
        exec(
            &pool,
            r#"INSERT INTO "s""x"."we""ird$crwatch$; DROP TABLE x" VALUES ('c\', 2, 'two')"#,
        )
        .await;
        exec(
            &pool,
            r#"UPDATE "s""x"."we""ird$crwatch$; DROP TABLE x" SET v = 'one' WHERE "select" = 1"#,
        )
        .await;
        wait_for("restored", WAIT, || store.len() == 2).await;
        cancel.cancel();
    }
    // A query with a key, polled.
    let source = PostgresSource::query(
        opts.clone(),
        r#"SELECT "k""ey" AS k, "v" FROM "s""x"."we""ird$crwatch$; DROP TABLE x" WHERE "select" > 0"#,
        &["k"],
    )
    .namespace("q")
    .interval(Duration::from_millis(100))
    .unwrap();
    let (inf, cancel) = started(source);
    inf.wait_synced(WAIT).await.unwrap();
    assert!(inf.store().lister().get(Some("q"), "a,b").is_some());
    cancel.cancel();
    let e = PostgresSource::from_url(&format!("{url}?query=SELECT%201&mode=notify&key=x")).unwrap_err();
    assert!(e.to_string().contains("mode=notify needs table"), "{e}");
    PostgresSource::table(opts, "s\"x", table)
        .uninstall()
        .await
        .unwrap();
    pool.close().await;
}

/// Resume from a checkpoint: only what changed meanwhile arrives; a pruned position relists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_from_checkpoint_and_relist_when_pruned() {
    let pg = server().await;
    let (pool, url) = database(pg, "t_resume").await;
    exec(&pool, "CREATE TABLE t (id int PRIMARY KEY, v text)").await;
    exec(&pool, "INSERT INTO t SELECT g, 'v' FROM generate_series(1, 5) g").await;
    let source = PostgresSource::from_url(&format!("{url}?table=t&install_trigger=true")).unwrap();
    let mut events = Box::new(source.clone()).events();
    assert_eq!(next_event(&mut events, true).await, Event::Init);
    let mut listed = 0;
    let checkpoint = loop {
        match next_event(&mut events, false).await {
            Event::InitApply(_) => listed += 1,
            Event::InitDone => {}
            Event::Progress(Some(cp)) => break cp,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(listed, 5);
    assert!(checkpoint.identity.is_some());
    drop(events);
    // Changes while nobody watches.
    exec(&pool, "UPDATE t SET v = 'w' WHERE id = 2").await;
    exec(&pool, "DELETE FROM t WHERE id = 3").await;
    let mut resumed = source.clone();
    assert!(Source::resume(&mut resumed, &checkpoint));
    let mut events = Box::new(resumed).events();
    let mut seen = BTreeMap::new();
    while seen.len() < 2 {
        match next_event(&mut events, true).await {
            Event::Apply(o) => seen.insert(o.metadata.name.clone().unwrap(), "apply"),
            Event::Delete(o) => seen.insert(o.metadata.name.clone().unwrap(), "delete"),
            other => panic!("a resumed source does not list: {other:?}"),
        };
    }
    assert_eq!(
        seen,
        BTreeMap::from([("2".to_string(), "apply"), ("3".to_string(), "delete")])
    );
    drop(events);
    // A checkpoint of another change-log incarnation, or a pruned position, relists.
    let mut other = source.clone();
    assert!(Source::resume(
        &mut other,
        &Checkpoint::new(checkpoint.resource_version.clone()).with_identity("x")
    ));
    let mut events = Box::new(other).events();
    assert_eq!(next_event(&mut events, true).await, Event::Init);
    drop(events);
    exec(&pool, "UPDATE t SET v = 'pruned' WHERE id = 4").await;
    // Other tests' open transactions on the shared server hold the cutoff back for a moment.
    let deadline = Instant::now() + WAIT;
    while !source.prune_change_log(Duration::ZERO, 0).await.unwrap() {
        assert!(Instant::now() < deadline, "the change log was never pruned");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut pruned = source.clone();
    assert!(Source::resume(&mut pruned, &checkpoint));
    let mut events = Box::new(pruned).events();
    assert_eq!(next_event(&mut events, true).await, Event::Init);
    let mut v4 = None;
    loop {
        match next_event(&mut events, true).await {
            Event::InitApply(o) if o.metadata.name.as_deref() == Some("4") => {
                v4 = Some(o.data["data"]["v"].clone())
            }
            Event::InitApply(_) => {}
            Event::InitDone => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(v4, Some(json!("pruned")));
    drop(events);
    source.uninstall().await.unwrap();
    pool.close().await;
}

/// 100,000 rows: initial sync time and memory through an informer, then one change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_thousand_rows_sync() {
    let pg = server().await;
    let (pool, url) = database(pg, "t_big").await;
    exec(
        &pool,
        "CREATE TABLE big (id int PRIMARY KEY, name text, amount numeric(12,2), at timestamptz, flag boolean);
         INSERT INTO big SELECT g, 'name-' || g, g * 1.25, '2024-01-01'::timestamptz + g * interval '1 minute', g % 2 = 0
         FROM generate_series(1, 100000) g;",
    )
    .await;
    let source = PostgresSource::from_url(&format!("{url}?table=big&install_trigger=true")).unwrap();
    source.install().await.unwrap();
    let heap_before = LIVE.load(Ordering::Relaxed);
    PEAK.store(heap_before, Ordering::Relaxed);
    let t0 = Instant::now();
    let (inf, cancel) = started(source);
    inf.wait_synced(Duration::from_secs(300)).await.unwrap();
    let synced = t0.elapsed();
    assert_eq!(inf.store().len(), 100_000);
    let heap_after = LIVE.load(Ordering::Relaxed);
    let peak = PEAK.load(Ordering::Relaxed);
    eprintln!(
        "postgres 100k rows: initial sync {:.2?} ({:.0} rows/s); heap held after sync {:.1} MiB ({} B/row), \
         peak during sync {:.1} MiB above the start",
        synced,
        100_000.0 / synced.as_secs_f64(),
        (heap_after.saturating_sub(heap_before)) as f64 / 1048576.0,
        heap_after.saturating_sub(heap_before) / 100_000,
        (peak.saturating_sub(heap_before)) as f64 / 1048576.0,
    );
    let t1 = Instant::now();
    exec(&pool, "UPDATE big SET name = 'changed' WHERE id = 77777").await;
    let store = inf.store();
    wait_for("one change in 100k", WAIT, || {
        store
            .lister()
            .get(Some("public.big"), "77777")
            .is_some_and(|o| o.data["data"]["name"] == "changed")
    })
    .await;
    eprintln!("postgres 100k rows: one change delivered in {:.2?}", t1.elapsed());
    let t2 = Instant::now();
    exec(&pool, "UPDATE big SET flag = NOT flag WHERE id <= 10000").await;
    wait_for("10k changes", Duration::from_secs(120), || {
        store
            .lister()
            .get(Some("public.big"), "10000")
            .is_some_and(|o| o.data["data"]["flag"] == false)
            && store
                .lister()
                .get(Some("public.big"), "1")
                .is_some_and(|o| o.data["data"]["flag"] == true)
    })
    .await;
    eprintln!(
        "postgres 100k rows: a 10,000-row UPDATE delivered in {:.2?}",
        t2.elapsed()
    );
    let one = store.lister().get(Some("public.big"), "5").unwrap();
    assert_eq!(one.data["data"]["amount"], "6.25");
    cancel.cancel();
    pool.close().await;
}
