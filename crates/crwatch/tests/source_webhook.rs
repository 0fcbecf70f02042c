//! The inbound webhook source against a real client: pushes, signatures, refusals, deletes,
//! CloudEvents, reconciliation, back-pressure, and an informer.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use crwatch::informer::{HandlerFns, Informer};
use crwatch::source::http::HttpSource;
use crwatch::source::webhook::WebhookSource;
use crwatch::source::{Event, EventStream, Source, SourceError};
use futures::StreamExt;
use hmac::{Hmac, KeyInit, Mac};
use kube::api::DynamicObject;
use serde_json::{Value, json};
use sha2::Sha256;

const WAIT: Duration = Duration::from_secs(15);

fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

async fn next(events: &mut EventStream<DynamicObject>) -> Result<Event<DynamicObject>, SourceError> {
    tokio::time::timeout(WAIT, events.next())
        .await
        .expect("no event in time")
        .expect("stream ended")
}

/// Start `source`, drain the start-up events, and return the URL and the events.
async fn started(source: WebhookSource) -> (String, EventStream<DynamicObject>) {
    let source = source.listen().await.unwrap();
    let url = format!("http://{}", source.local_addr().unwrap());
    let mut events = Box::new(source).events();
    assert_eq!(next(&mut events).await.unwrap(), Event::Progress(None));
    (url, events)
}

fn cm(name: &str, v: i64) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "ns"}, "data": {"v": v.to_string()}})
}

async fn post(url: &str, body: &Value) -> reqwest::Response {
    client()
        .post(format!("{url}/objects"))
        .json(body)
        .send()
        .await
        .unwrap()
}

fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn applied(e: Event<DynamicObject>) -> DynamicObject {
    match e {
        Event::Apply(o) => o,
        other => panic!("expected Apply, got {other:?}"),
    }
}

#[tokio::test]
async fn a_push_is_applied_and_answered_after_hand_over() {
    let (url, mut events) = started(WebhookSource::new("127.0.0.1:0".parse().unwrap())).await;
    let r = post(&url, &cm("a", 1)).await;
    assert_eq!(r.status(), 202);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"applied": 1, "deleted": 0})
    );
    let a = applied(next(&mut events).await.unwrap());
    assert_eq!(a.metadata.name.as_deref(), Some("a"));
    assert_eq!(a.metadata.namespace.as_deref(), Some("ns"));
    assert!(a.metadata.uid.is_some() && a.metadata.resource_version.is_some());
    assert_eq!(a.data["data"]["v"], "1");
    assert_eq!(next(&mut events).await.unwrap(), Event::Progress(None));

    // A list is applied as a whole, in order.
    let r = post(&url, &json!([cm("b", 1), cm("c", 1)])).await;
    assert_eq!(r.status(), 202);
    assert_eq!(
        applied(next(&mut events).await.unwrap()).metadata.name.as_deref(),
        Some("b")
    );
    assert_eq!(
        applied(next(&mut events).await.unwrap()).metadata.name.as_deref(),
        Some("c")
    );
}

#[tokio::test]
async fn signatures_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "s3cret\n").unwrap();
    let source = WebhookSource::new("127.0.0.1:0".parse().unwrap()).secret_file(&secret);
    assert!(!format!("{source:?}").contains("s3cret"));
    let (url, mut events) = started(source).await;
    let body = serde_json::to_vec(&cm("a", 1)).unwrap();
    let send = |header: &'static str, sig: Option<String>| {
        let mut req = client()
            .post(format!("{url}/objects"))
            .header("content-type", "application/json")
            .body(body.clone());
        if let Some(sig) = sig {
            req = req.header(header, sig);
        }
        req.send()
    };
    let missing = send("x-crwatch-signature", None).await.unwrap();
    assert_eq!(missing.status(), 401);
    assert!(missing.text().await.unwrap().contains("missing signature"));
    let wrong = send("x-crwatch-signature", Some(sign(b"other", &body)))
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let garbage = send("x-crwatch-signature", Some("sha256=zz".into()))
        .await
        .unwrap();
    assert_eq!(garbage.status(), 401);
    let good = send("x-crwatch-signature", Some(sign(b"s3cret", &body)))
        .await
        .unwrap();
    assert_eq!(good.status(), 202);
    assert_eq!(
        applied(next(&mut events).await.unwrap()).metadata.name.as_deref(),
        Some("a")
    );
    next(&mut events).await.unwrap();
    let github = send("x-hub-signature-256", Some(sign(b"s3cret", &body)))
        .await
        .unwrap();
    assert_eq!(github.status(), 202);
    assert!(matches!(next(&mut events).await.unwrap(), Event::Apply(_)));
}

#[tokio::test]
async fn bad_requests_are_refused_with_reasons() {
    let source = WebhookSource::new("127.0.0.1:0".parse().unwrap()).max_body_bytes(1024);
    let (url, mut events) = started(source).await;
    let c = client();

    let r = c.get(format!("{url}/objects")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "POST");
    let r = c.put(format!("{url}/objects/ns/a")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "DELETE");
    assert_eq!(
        c.post(format!("{url}/elsewhere")).send().await.unwrap().status(),
        404
    );

    let r = c
        .post(format!("{url}/objects"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(
        r.json::<Value>().await.unwrap()["error"]
            .as_str()
            .unwrap()
            .contains("not valid JSON")
    );

    let r = post(
        &url,
        &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {}}),
    )
    .await;
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("metadata.name is missing"));

    let big = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"v": "x".repeat(2000)}});
    assert_eq!(post(&url, &big).await.status(), 413);

    let r = c
        .post(format!("{url}/objects"))
        .header("content-type", "text/plain")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);

    // A list with one bad item applies nothing.
    let r = post(
        &url,
        &json!([cm("good", 1), {"apiVersion": "v1", "metadata": {"name": "nokind"}}]),
    )
    .await;
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("item 1: kind is missing"));
    // Nothing was handed over: the next event is the next good push.
    assert_eq!(post(&url, &cm("after", 1)).await.status(), 202);
    assert_eq!(
        applied(next(&mut events).await.unwrap()).metadata.name.as_deref(),
        Some("after")
    );
}

#[tokio::test]
async fn deletes_by_cloudevent_type_by_header_and_by_delete() {
    let (url, mut events) = started(WebhookSource::new("127.0.0.1:0".parse().unwrap())).await;
    let c = client();
    // Binary-mode CloudEvent: an apply.
    let r = c
        .post(format!("{url}/"))
        .header("content-type", "application/json")
        .header("ce-specversion", "1.0")
        .header("ce-id", "1")
        .header("ce-source", "/test")
        .header("ce-type", "io.crwatch.resource.added")
        .body(cm("a", 1).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(
        applied(next(&mut events).await.unwrap()).metadata.name.as_deref(),
        Some("a")
    );
    next(&mut events).await.unwrap();
    assert_eq!(post(&url, &json!([cm("b", 1), cm("c", 1)])).await.status(), 202);
    for _ in 0..3 {
        next(&mut events).await.unwrap();
    }

    // Structured CloudEvent of type ...deleted, in crwatch's own sink format {object, diff}.
    let event = json!({"specversion": "1.0", "id": "2", "source": "/test", "type": "io.crwatch.resource.deleted",
        "subject": "ns/a", "datacontenttype": "application/json", "data": {"object": cm("a", 1)}});
    let r = c
        .post(format!("{url}/"))
        .header("content-type", "application/cloudevents+json")
        .body(event.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    match next(&mut events).await.unwrap() {
        Event::Delete(o) => assert_eq!(o.metadata.name.as_deref(), Some("a")),
        other => panic!("{other:?}"),
    }
    next(&mut events).await.unwrap();

    // DELETE on the object's path: the last known state is the delete's object.
    let r = c.delete(format!("{url}/objects/ns/b")).send().await.unwrap();
    assert_eq!(r.status(), 202);
    match next(&mut events).await.unwrap() {
        Event::Delete(o) => {
            assert_eq!(o.metadata.name.as_deref(), Some("b"));
            assert_eq!(o.data["data"]["v"], "1", "the last pushed state");
        }
        other => panic!("{other:?}"),
    }
    next(&mut events).await.unwrap();

    // The operation header.
    let r = c
        .post(format!("{url}/objects"))
        .header("x-crwatch-operation", "delete")
        .json(&cm("c", 1))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert!(matches!(next(&mut events).await.unwrap(), Event::Delete(_)));

    // A CloudEvent without the required attributes is refused.
    let r = c
        .post(format!("{url}/"))
        .header("content-type", "application/cloudevents+json")
        .body(json!({"specversion": "1.0", "type": "x", "data": cm("z", 1)}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn reconciliation_finds_a_missed_push() {
    let list = Arc::new(Mutex::new(json!({"kind": "List", "items": [cm("a", 1)]})));
    let l = list.clone();
    let app = Router::new().route(
        "/list",
        get(move || async move { axum::Json(l.lock().unwrap().clone()) }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let list_addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let source = WebhookSource::new("127.0.0.1:0".parse().unwrap())
        .reconcile(
            HttpSource::new(format!("http://{list_addr}/list")),
            Duration::from_secs(1),
        )
        .listen()
        .await
        .unwrap();
    let mut events = Box::new(source).events();
    let mut lists = vec![];
    let mut current: Option<Vec<String>> = None;
    while lists.len() < 2 {
        match next(&mut events).await.unwrap() {
            Event::Init => current = Some(vec![]),
            Event::InitApply(o) => current.as_mut().unwrap().push(o.metadata.name.unwrap()),
            Event::InitDone => {
                lists.push(current.take().unwrap());
                // A push that never arrives: only the list knows about "missed".
                *list.lock().unwrap() = json!({"kind": "List", "items": [cm("a", 1), cm("missed", 1)]});
            }
            _ => {}
        }
    }
    assert_eq!(
        lists,
        [vec!["a".to_string()], vec!["a".to_string(), "missed".to_string()]]
    );
}

#[tokio::test]
async fn a_stuck_consumer_gets_503_with_retry_after() {
    let source = WebhookSource::new("127.0.0.1:0".parse().unwrap())
        .queue(1)
        .handoff_timeout(Duration::from_millis(200))
        .listen()
        .await
        .unwrap();
    let url = format!("http://{}", source.local_addr().unwrap());
    let mut events = Box::new(source).events();
    // Taking the first event takes the start-up batch out of the one-batch queue.
    assert_eq!(next(&mut events).await.unwrap(), Event::Progress(None));
    assert_eq!(post(&url, &cm("a", 1)).await.status(), 202);
    let r = post(&url, &cm("b", 1)).await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    // Once the consumer moves, pushes go through again; "b" was never handed over.
    let mut names = vec![];
    // "a" and the progress after it.
    for _ in 0..2 {
        if let Event::Apply(o) = next(&mut events).await.unwrap() {
            names.push(o.metadata.name.unwrap());
        }
    }
    assert_eq!(post(&url, &cm("c", 1)).await.status(), 202);
    if let Event::Apply(o) = next(&mut events).await.unwrap() {
        names.push(o.metadata.name.unwrap());
    }
    assert_eq!(names, ["a", "c"]);
}

#[tokio::test]
async fn settings_are_range_checked() {
    let addr = "127.0.0.1:0".parse().unwrap();
    assert!(WebhookSource::new(addr).max_body_bytes(1).listen().await.is_err());
    assert!(WebhookSource::new(addr).queue(0).listen().await.is_err());
    assert!(
        WebhookSource::new(addr)
            .handoff_timeout(Duration::ZERO)
            .listen()
            .await
            .is_err()
    );
    let err = WebhookSource::new(addr)
        .secret_file("/nonexistent/secret")
        .listen()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("/nonexistent/secret"));
    let err = WebhookSource::new(addr)
        .tls("/nonexistent/c.pem", "/nonexistent/k.pem")
        .listen()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("certificate file"));
}

#[tokio::test]
async fn an_informer_over_the_source() {
    let source = WebhookSource::new("127.0.0.1:0".parse().unwrap());
    let mut address = source.address();
    let informer = Informer::new(source);
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
    let addr = tokio::time::timeout(WAIT, address.wait()).await.unwrap().unwrap();
    let url = format!("http://{addr}");
    informer.wait_synced(WAIT).await.unwrap();
    assert_eq!(post(&url, &cm("a", 1)).await.status(), 202);
    assert_eq!(post(&url, &cm("a", 2)).await.status(), 202);
    assert_eq!(
        client()
            .delete(format!("{url}/objects/ns/a"))
            .send()
            .await
            .unwrap()
            .status(),
        202
    );
    tokio::time::timeout(WAIT, async {
        while log.lock().unwrap().len() < 3 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(*log.lock().unwrap(), ["add a", "update a", "delete a"]);
    cancel.cancel();
}
