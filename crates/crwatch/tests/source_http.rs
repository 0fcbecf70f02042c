//! The HTTP polling source against local axum servers: conditional requests, backoff,
//! Retry-After, blocking queries, diffs, token rotation, bad bodies, limits, and an informer.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use crwatch::informer::{HandlerFns, Informer};
use crwatch::source::http::HttpSource;
use crwatch::source::object::stable_uid;
use crwatch::source::{Event, EventStream, Source, SourceError};
use futures::StreamExt;
use kube::api::DynamicObject;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(15);

async fn spawn(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// Run the source on its own task (as an informer would), so it polls while the test waits.
fn start(source: HttpSource) -> EventStream<DynamicObject> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut events = Box::new(source).events();
    tokio::spawn(async move {
        while let Some(e) = events.next().await {
            if tx.send(e).is_err() {
                return;
            }
        }
    });
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (e, rx)) }).boxed()
}

async fn next(events: &mut EventStream<DynamicObject>) -> Result<Event<DynamicObject>, SourceError> {
    tokio::time::timeout(WAIT, events.next())
        .await
        .expect("no event in time")
        .expect("stream ended")
}

/// Events up to and including the next Progress.
async fn until_progress(
    events: &mut EventStream<DynamicObject>,
) -> Vec<Result<Event<DynamicObject>, SourceError>> {
    let mut out = vec![];
    loop {
        let e = next(events).await;
        let done = matches!(e, Ok(Event::Progress(_)));
        out.push(e);
        if done {
            return out;
        }
    }
}

fn name(e: &Event<DynamicObject>) -> (&'static str, String) {
    let (kind, o) = match e {
        Event::InitApply(o) => ("InitApply", o),
        Event::Apply(o) => ("Apply", o),
        Event::Delete(o) => ("Delete", o),
        Event::Init => return ("Init", String::new()),
        Event::InitDone => return ("InitDone", String::new()),
        Event::Progress(_) => return ("Progress", String::new()),
    };
    (kind, o.metadata.name.clone().unwrap_or_default())
}

fn names(events: &[Result<Event<DynamicObject>, SourceError>]) -> Vec<(&'static str, String)> {
    events
        .iter()
        .map(|e| name(e.as_ref().expect("an event, not an error")))
        .collect()
}

/// A server whose body and ETag the test sets; counts full and 304 answers.
#[derive(Default)]
struct Versioned {
    body: Mutex<(String, String)>,
    full: AtomicUsize,
    not_modified: AtomicUsize,
    auth: Mutex<Vec<String>>,
}

impl Versioned {
    fn set(&self, etag: &str, body: Value) {
        *self.body.lock().unwrap() = (etag.to_string(), body.to_string());
    }
}

async fn versioned(State(s): State<Arc<Versioned>>, headers: HeaderMap) -> Response {
    if let Some(auth) = headers.get("authorization") {
        s.auth.lock().unwrap().push(auth.to_str().unwrap().to_string());
    }
    let (etag, body) = s.body.lock().unwrap().clone();
    if headers.get("if-none-match").and_then(|v| v.to_str().ok()) == Some(etag.as_str()) {
        s.not_modified.fetch_add(1, Ordering::SeqCst);
        return (StatusCode::NOT_MODIFIED, [("etag", etag)]).into_response();
    }
    s.full.fetch_add(1, Ordering::SeqCst);
    (
        StatusCode::OK,
        [("etag", etag), ("content-type", "application/json".into())],
        body,
    )
        .into_response()
}

async fn versioned_server() -> (Arc<Versioned>, String) {
    let state = Arc::new(Versioned::default());
    let addr = spawn(
        Router::new()
            .route("/items", get(versioned))
            .with_state(state.clone()),
    )
    .await;
    (state, format!("http://{addr}/items"))
}

#[tokio::test]
async fn first_poll_lists_and_304_costs_nothing() {
    let (server, url) = versioned_server().await;
    server.set(
        "\"v1\"",
        json!({"data": [{"id": "a", "n": 1}, {"id": 2, "n": 2}]}),
    );
    let source = HttpSource::new(&url)
        .items("/data")
        .key("id")
        .interval(Duration::from_millis(30));
    let mut events = start(source);

    let first = until_progress(&mut events).await;
    assert_eq!(
        names(&first),
        [
            ("Init", ""),
            ("InitApply", "a"),
            ("InitApply", "2"),
            ("InitDone", ""),
            ("Progress", "")
        ]
        .map(|(k, n)| (k, n.to_string()))
    );
    let Ok(Event::InitApply(a)) = &first[1] else {
        unreachable!()
    };
    let v = serde_json::to_value(a).unwrap();
    assert_eq!(v["apiVersion"], "http.crwatch.io/v1");
    assert_eq!(v["kind"], "Item");
    assert_eq!(v["metadata"]["namespace"], "127.0.0.1");
    assert_eq!(v["metadata"]["uid"], stable_uid(&url, "a"));
    assert_eq!(v["data"], json!({"id": "a", "n": 1}));
    assert!(
        a.metadata
            .resource_version
            .as_ref()
            .is_some_and(|rv| !rv.is_empty())
    );

    // Every later poll is a 304 and yields only Progress.
    for _ in 0..3 {
        assert_eq!(
            names(&until_progress(&mut events).await),
            [("Progress", String::new())]
        );
    }
    assert_eq!(server.full.load(Ordering::SeqCst), 1);
    assert!(server.not_modified.load(Ordering::SeqCst) >= 3);
}

#[tokio::test]
async fn items_added_changed_and_removed_become_single_events() {
    let (server, url) = versioned_server().await;
    server.set(
        "1",
        json!([{"id": "a", "v": 1}, {"id": "b", "v": 1}, {"id": "c", "v": 1}]),
    );
    let mut events = start(HttpSource::new(&url).interval(Duration::from_millis(30)));
    assert_eq!(until_progress(&mut events).await.len(), 6);

    server.set(
        "2",
        json!([{"id": "a", "v": 2}, {"id": "c", "v": 1}, {"id": "d", "v": 1}]),
    );
    let mut changed = vec![];
    while changed.is_empty() {
        changed = until_progress(&mut events).await;
        changed.pop();
    }
    assert_eq!(
        names(&changed),
        [("Apply", "a"), ("Apply", "d"), ("Delete", "b")].map(|(k, n)| (k, n.to_string()))
    );
    let Ok(Event::Delete(b)) = &changed[2] else {
        unreachable!()
    };
    assert_eq!(b.data["data"]["v"], 1, "a delete carries the last known state");
}

#[tokio::test]
async fn kubernetes_looking_items_keep_their_type_and_are_keyed_by_name() {
    let (server, url) = versioned_server().await;
    server.set(
        "1",
        json!({"items": [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm"}}]}),
    );
    let source = HttpSource::new(&url).items("/items").namespace("inventory");
    let mut events = start(source);
    let first = until_progress(&mut events).await;
    let Ok(Event::InitApply(cm)) = &first[1] else {
        panic!("{first:?}")
    };
    let v = serde_json::to_value(cm).unwrap();
    assert_eq!(
        (v["apiVersion"].as_str(), v["kind"].as_str()),
        (Some("v1"), Some("ConfigMap"))
    );
    assert_eq!(v["metadata"]["name"], "cm");
    assert_eq!(v["metadata"]["namespace"], "inventory");
}

/// Records when each request arrived; answers with a fixed status (and headers).
#[derive(Default)]
struct Failing {
    arrivals: Mutex<Vec<Instant>>,
    healthy: std::sync::atomic::AtomicBool,
}

async fn failing(State(s): State<Arc<Failing>>) -> Response {
    s.arrivals.lock().unwrap().push(Instant::now());
    if s.healthy.load(Ordering::SeqCst) {
        return (StatusCode::OK, "[{\"id\": \"x\"}]").into_response();
    }
    (StatusCode::INTERNAL_SERVER_ERROR, "secret-body-do-not-log").into_response()
}

#[tokio::test]
async fn server_errors_back_off_exponentially_then_recover() {
    let state = Arc::new(Failing::default());
    let addr = spawn(Router::new().route("/", get(failing)).with_state(state.clone())).await;
    let source = HttpSource::new(format!("http://{addr}/"))
        .backoff(Duration::from_millis(100), Duration::from_millis(400))
        .jitter(0.0);
    let mut events = start(source);
    for _ in 0..5 {
        let err = next(&mut events).await.expect_err("a 500 is an error");
        assert!(err.message.contains("HTTP 500"), "{err}");
        assert!(
            !err.message.contains("secret-body"),
            "the body must not be reported: {err}"
        );
    }
    let arrivals = state.arrivals.lock().unwrap().clone();
    assert_eq!(arrivals.len(), 5, "one request per error, no retries in between");
    // The pauses double from 100 ms and stop at 400 ms; a pause is never shorter.
    let expected = [100, 200, 400, 400].map(Duration::from_millis);
    for (gap, min) in arrivals.windows(2).map(|w| w[1] - w[0]).zip(expected) {
        assert!(gap >= min, "gap {gap:?} shorter than the backoff {min:?}");
    }
    // Healthy again: the first success is a complete list, and the backoff resets.
    state.healthy.store(true, Ordering::SeqCst);
    let first = until_progress(&mut events).await;
    let first: Vec<_> = first.into_iter().filter(|e| e.is_ok()).collect();
    assert_eq!(
        names(&first)[..2],
        [("Init", String::new()), ("InitApply", "x".to_string())]
    );
}

async fn too_many(State(s): State<Arc<Failing>>) -> Response {
    let n = {
        let mut a = s.arrivals.lock().unwrap();
        a.push(Instant::now());
        a.len()
    };
    if n == 1 {
        return (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")], "slow down").into_response();
    }
    (StatusCode::OK, "[]").into_response()
}

#[tokio::test]
async fn retry_after_on_429_is_honoured() {
    let state = Arc::new(Failing::default());
    let addr = spawn(Router::new().route("/", get(too_many)).with_state(state.clone())).await;
    let source = HttpSource::new(format!("http://{addr}/"))
        .backoff(Duration::from_millis(10), Duration::from_millis(20));
    let mut events = start(source);
    assert!(next(&mut events).await.unwrap_err().message.contains("429"));
    assert_eq!(names(&until_progress(&mut events).await)[0].0, "Init");
    let a = state.arrivals.lock().unwrap().clone();
    assert!(
        a[1] - a[0] >= Duration::from_secs(1),
        "retried after {:?}",
        a[1] - a[0]
    );
}

#[tokio::test]
async fn bad_json_keeps_the_last_state() {
    let (server, url) = versioned_server().await;
    server.set("1", json!([{"id": "a", "v": 1}, {"id": "b", "v": 1}]));
    let source = HttpSource::new(&url)
        .interval(Duration::from_millis(20))
        .backoff(Duration::from_millis(20), Duration::from_millis(40));
    let mut events = start(source);
    until_progress(&mut events).await;

    *server.body.lock().unwrap() = ("2".into(), "[{\"id\": \"a\", \"token\": \"hunter2\"".into());
    let err = loop {
        match next(&mut events).await {
            Err(e) => break e,
            Ok(Event::Progress(_)) => continue,
            Ok(other) => panic!("unexpected {other:?}"),
        }
    };
    assert!(err.message.contains("not valid JSON"), "{err}");
    assert!(!err.message.contains("hunter2"), "{err}");

    // The next good body is compared with the last good state, not with nothing.
    server.set("3", json!([{"id": "a", "v": 1}, {"id": "b", "v": 2}]));
    let changed = loop {
        match next(&mut events).await {
            Err(_) | Ok(Event::Progress(_)) => continue,
            Ok(e) => break e,
        }
    };
    assert_eq!(name(&changed), ("Apply", "b".to_string()));
    assert_eq!(
        names(&until_progress(&mut events).await),
        [("Progress", String::new())]
    );
}

#[tokio::test]
async fn duplicate_keys_are_reported_and_the_last_wins() {
    let (server, url) = versioned_server().await;
    server.set(
        "1",
        json!([{"id": "a", "v": 1}, {"id": "b"}, {"id": "a", "v": 2}]),
    );
    let mut events = start(HttpSource::new(&url));
    let err = next(&mut events).await.unwrap_err();
    assert!(err.message.contains("\"a\""), "{err}");
    let list = until_progress(&mut events).await;
    assert_eq!(
        names(&list),
        [
            ("Init", ""),
            ("InitApply", "b"),
            ("InitApply", "a"),
            ("InitDone", ""),
            ("Progress", "")
        ]
        .map(|(k, n)| (k, n.to_string()))
    );
    let Ok(Event::InitApply(a)) = &list[2] else {
        unreachable!()
    };
    assert_eq!(a.data["data"]["v"], 2);
}

#[tokio::test]
async fn items_without_a_key_and_oversized_bodies_are_refused() {
    let (server, url) = versioned_server().await;
    server.set("1", json!([{"id": "a"}, {"name": "no id"}]));
    let mut events = start(HttpSource::new(&url));
    let err = next(&mut events).await.unwrap_err();
    assert!(err.message.contains("item 1 has no key at id"), "{err}");

    server.set("2", json!([{"id": "x".repeat(2000)}]));
    let mut events = start(HttpSource::new(&url).max_body_bytes(1024));
    let err = next(&mut events).await.unwrap_err();
    assert!(err.message.contains("limit of 1024"), "{err}");

    server.set("3", json!([{"id": 1}, {"id": 2}, {"id": 3}]));
    let mut events = start(HttpSource::new(&url).max_items(2));
    assert!(next(&mut events).await.unwrap_err().message.contains("max_items"));
}

#[tokio::test]
async fn the_token_file_is_read_for_every_request() {
    let (server, url) = versioned_server().await;
    server.set("1", json!([]));
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "first-token\n").unwrap();
    // Over plain http:// the token is refused unless asked for explicitly.
    let mut refused = start(
        HttpSource::new(&url)
            .bearer_token_file(&token)
            .plain_http_credentials(false),
    );
    let err = next(&mut refused).await.unwrap_err();
    assert!(err.message.contains("only sent over https://"), "{err}");
    assert!(
        server.auth.lock().unwrap().is_empty(),
        "a token went out over http://"
    );
    let source = HttpSource::new(&url)
        .bearer_token_file(&token)
        .plain_http_credentials(true)
        .interval(Duration::from_millis(20));
    assert!(!format!("{source:?}").contains("first-token"));
    let mut events = start(source);
    until_progress(&mut events).await;
    std::fs::write(&token, "rotated-token").unwrap();
    tokio::time::timeout(WAIT, async {
        while !server
            .auth
            .lock()
            .unwrap()
            .iter()
            .any(|a| a == "Bearer rotated-token")
        {
            until_progress(&mut events).await;
        }
    })
    .await
    .expect("the rotated token was never sent");
    assert_eq!(server.auth.lock().unwrap()[0], "Bearer first-token");

    // A missing token file is an error that names the file, and the source keeps going.
    std::fs::remove_file(&token).unwrap();
    let err = loop {
        if let Err(e) = next(&mut events).await {
            break e;
        }
    };
    assert!(err.message.contains("bearer token file"), "{err}");
}

/// A Consul-like endpoint: `?index=N` equal to the current index holds until a change.
#[derive(Default)]
struct Consul {
    state: Mutex<(u64, Value)>,
    changed: Notify,
    /// The index parameter of every request, in order (None: no parameter).
    seen: Mutex<Vec<(Option<u64>, Option<String>)>>,
    held: AtomicUsize,
}

impl Consul {
    fn set(&self, index: u64, body: Value) {
        *self.state.lock().unwrap() = (index, body);
        self.changed.notify_waiters();
    }
}

async fn consul(State(s): State<Arc<Consul>>, Query(q): Query<BTreeMap<String, String>>) -> Response {
    let asked = q.get("index").and_then(|i| i.parse::<u64>().ok());
    s.seen.lock().unwrap().push((asked, q.get("wait").cloned()));
    loop {
        let changed = s.changed.notified();
        let (index, body) = s.state.lock().unwrap().clone();
        if asked != Some(index) {
            let mut r = body.to_string().into_response();
            r.headers_mut()
                .insert("x-test-index", HeaderValue::from_str(&index.to_string()).unwrap());
            return r;
        }
        s.held.fetch_add(1, Ordering::SeqCst);
        changed.await;
        s.held.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn wait_held(s: &Consul) {
    tokio::time::timeout(WAIT, async {
        while s.held.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("no request was held");
}

async fn consul_server() -> (Arc<Consul>, String) {
    let state = Arc::new(Consul::default());
    let addr = spawn(
        Router::new()
            .route("/v1/kv", get(consul))
            .with_state(state.clone()),
    )
    .await;
    (state, format!("http://{addr}/v1/kv"))
}

#[tokio::test]
async fn a_blocking_query_is_held_until_a_change() {
    let (server, url) = consul_server().await;
    server.set(10, json!([{"id": "a", "v": 1}]));
    let source = HttpSource::new(&url)
        .blocking_query("X-Test-Index")
        .wait(Duration::from_secs(60))
        .min_poll_interval(Duration::from_millis(10));
    let mut events = start(source);
    assert_eq!(until_progress(&mut events).await.len(), 4);
    wait_held(&server).await;

    let released = Instant::now();
    server.set(11, json!([{"id": "a", "v": 2}]));
    let changed = until_progress(&mut events).await;
    assert_eq!(
        names(&changed),
        [("Apply", "a"), ("Progress", "")].map(|(k, n)| (k, n.to_string()))
    );
    assert!(
        released.elapsed() < Duration::from_secs(10),
        "the change came with the release"
    );
    wait_held(&server).await;
    let seen = server.seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        [
            (None, None),
            (Some(10), Some("60s".into())),
            (Some(11), Some("60s".into()))
        ]
    );
}

#[tokio::test]
async fn an_index_going_backwards_resets_to_zero() {
    let (server, url) = consul_server().await;
    server.set(10, json!([{"id": "a"}]));
    let source = HttpSource::new(&url)
        .blocking_query("X-Test-Index")
        .min_poll_interval(Duration::from_millis(10));
    let mut events = start(source);
    until_progress(&mut events).await;
    wait_held(&server).await;
    // A restored snapshot: the index is lower than before.
    server.set(5, json!([{"id": "a"}, {"id": "b"}]));
    let changed = until_progress(&mut events).await;
    assert_eq!(names(&changed)[0], ("Apply", "b".to_string()));
    tokio::time::timeout(WAIT, async {
        while server.seen.lock().unwrap().len() < 4 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    let seen: Vec<_> = server.seen.lock().unwrap().iter().map(|(i, _)| *i).collect();
    assert_eq!(
        seen[..4],
        [None, Some(10), None, Some(5)],
        "reset to 0 (no index), then the new index"
    );
}

async fn always_new(State(s): State<Arc<Failing>>) -> Response {
    let n = {
        let mut a = s.arrivals.lock().unwrap();
        a.push(Instant::now());
        a.len()
    };
    let mut r = "[]".into_response();
    r.headers_mut()
        .insert("x-test-index", HeaderValue::from_str(&n.to_string()).unwrap());
    r
}

#[tokio::test]
async fn a_blocking_query_that_never_blocks_is_rate_limited() {
    let state = Arc::new(Failing::default());
    let addr = spawn(
        Router::new()
            .route("/", get(always_new))
            .with_state(state.clone()),
    )
    .await;
    let source = HttpSource::new(format!("http://{addr}/"))
        .blocking_query("X-Test-Index")
        .min_poll_interval(Duration::from_millis(100));
    let mut events = start(source);
    for _ in 0..6 {
        until_progress(&mut events).await;
    }
    let a = state.arrivals.lock().unwrap().clone();
    // Six requests started at least 100 ms apart (less the first request's latency).
    assert!(a[5] - a[0] >= Duration::from_millis(450), "{:?}", a[5] - a[0]);
}

#[tokio::test]
async fn settings_are_range_checked() {
    let bad = [
        HttpSource::new("ftp://example.com/"),
        HttpSource::new("not a url"),
        HttpSource::new("http://x/").interval(Duration::ZERO),
        HttpSource::new("http://x/").jitter(2.0),
        HttpSource::new("http://x/").max_body_bytes(10),
        HttpSource::new("http://x/").timeout(Duration::from_secs(86400)),
        HttpSource::new("http://x/").backoff(Duration::from_secs(2), Duration::from_secs(1)),
        HttpSource::new("http://x/").items("data"),
        HttpSource::new("http://x/").wait(Duration::from_secs(3600)),
        HttpSource::new("http://x/").header("bad header", "v"),
        HttpSource::new("https://x/").ca_file("/nonexistent/ca.pem"),
    ];
    for source in bad {
        let desc = format!("{source:?}");
        assert!(source.validate().is_err(), "{desc} was accepted");
    }
    let err = HttpSource::new("http://user:pw@x/?token=t")
        .jitter(-1.0)
        .validate()
        .unwrap_err();
    assert!(err.to_string().contains("jitter"));
    let source = HttpSource::new("http://user:pw@x/?token=t");
    assert_eq!(source.describe(), "http http://x/");
    // A bad setting is the stream's only event.
    let mut events = start(HttpSource::new("http://x/").max_items(0));
    assert!(next(&mut events).await.unwrap_err().message.contains("max_items"));
    assert!(events.next().await.is_none());
}

#[tokio::test]
async fn an_informer_over_the_source_sees_adds_updates_and_deletes() {
    let (server, url) = versioned_server().await;
    server.set("1", json!([{"id": "a", "v": 1}, {"id": "b", "v": 1}]));
    let informer = Informer::new(HttpSource::new(&url).interval(Duration::from_millis(20)));
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let (l1, l2, l3) = (log.clone(), log.clone(), log.clone());
    informer.add_handler(
        HandlerFns::<DynamicObject>::new()
            .on_add(move |o| {
                l1.lock()
                    .unwrap()
                    .push(format!("add {}", o.metadata.name.as_deref().unwrap()))
            })
            .on_update(move |_, n, _| {
                l2.lock()
                    .unwrap()
                    .push(format!("update {}", n.metadata.name.as_deref().unwrap()))
            })
            .on_delete(move |o| {
                l3.lock()
                    .unwrap()
                    .push(format!("delete {}", o.metadata.name.as_deref().unwrap()))
            }),
    );
    let cancel = tokio_util::sync::CancellationToken::new();
    informer.start(cancel.clone());
    informer.wait_synced(WAIT).await.unwrap();
    assert_eq!(informer.store().len(), 2);
    server.set("2", json!([{"id": "a", "v": 2}]));
    tokio::time::timeout(WAIT, async {
        while log.lock().unwrap().len() < 4 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    let mut log = log.lock().unwrap().clone();
    log[..2].sort();
    assert_eq!(log, ["add a", "add b", "update a", "delete b"]);
    assert_eq!(informer.store().len(), 1);
    cancel.cancel();
}
