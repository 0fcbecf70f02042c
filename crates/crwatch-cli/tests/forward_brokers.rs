//! `crwatch forward` end to end through the in-process [`Forwarder`] against crwatch-apiserver
//! and real brokers: NATS JetStream (subjects, `Nats-Msg-Id`, order, the server killed and
//! restarted with nothing lost or stored twice), RabbitMQ (routing keys, `message_id`, order, the
//! broker killed and restarted with a durable queue), the file sink across rotations, and a
//! webhook that refuses a change for good (dead-letter file, metric, later changes still flow).
//! Also: `examples/forward.yaml` must parse, so the documented example cannot rot.

use std::collections::BTreeSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;

use common::changes::{Changes, label, sequences};
use crwatch_apiserver::TestServer;
use crwatch_cli::Connection;
use crwatch_cli::forward::Forwarder;
use crwatch_cli::forward::config::ForwardConfig;
use serde_json::Value;

/// How long a change may take to show up at a sink, a broker restart included.
const ARRIVAL: Duration = Duration::from_secs(60);

async fn start(server: &TestServer, yaml: &str) -> Forwarder {
    let config = ForwardConfig::parse(yaml, "forward.yaml").expect("valid config");
    let conn = Connection {
        kubeconfig: Some(server.kubeconfig().to_path_buf()),
        context: None,
    };
    crwatch_cli::forward::start(config, "forward.yaml", &conn)
        .await
        .expect("forwarder starts")
}

/// A configuration forwarding ConfigMaps of `ns` to the one sink `sink` (YAML of one list item,
/// indented as under `sinks:`), with fast retries and the HTTP endpoints on free ports.
fn config(ns: &str, sink: &str) -> String {
    format!(
        "resources:\n  - resource: configmaps\n    namespaces: [{ns}]\nsinks:\n{sink}    retry:\n      \
         initialBackoff: 10ms\n      maxBackoff: 200ms\nmetrics: \"127.0.0.1:0\"\nprobes: \"127.0.0.1:0\"\n\
         shutdownGrace: 2s\n"
    )
}

fn metric(forwarder: &Forwarder, name: &str) -> f64 {
    forwarder
        .registry
        .encode()
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Poll `check` until it returns `Ok`, failing the test after `timeout` with `what` and the last
/// reason `check` gave for not being there yet.
async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(v) => return v,
            Err(why) => assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}; last state: {why}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every event is a CloudEvent 1.0 of a ConfigMap whose id is `uid:resourceVersion` of the
/// object it carries (`:deleted` appended for deletions).
fn assert_cloudevent(e: &Value) {
    assert_eq!(e["specversion"], "1.0", "{e}");
    assert_eq!(e["datacontenttype"], "application/json", "{e}");
    assert!(
        e["source"].as_str().unwrap().ends_with("/api/v1/configmaps"),
        "{e}"
    );
    assert!(e["time"].as_str().is_some_and(rfc3339_utc), "{e}");
    let object = &e["data"]["object"];
    assert_eq!(object["kind"], "ConfigMap", "{e}");
    let meta = &object["metadata"];
    assert_eq!(
        e["subject"],
        format!(
            "{}/{}",
            meta["namespace"].as_str().unwrap(),
            meta["name"].as_str().unwrap()
        ),
    );
    let base = format!(
        "{}:{}",
        meta["uid"].as_str().unwrap(),
        meta["resourceVersion"].as_str().unwrap()
    );
    let want = if e["type"] == "io.crwatch.resource.deleted" {
        format!("{base}:deleted")
    } else {
        base
    };
    assert_eq!(e["id"], want.as_str(), "{e}");
    if e["type"] == "io.crwatch.resource.modified" {
        assert_eq!(e["data"]["diff"][0]["path"], "data.n", "{e}");
    }
}

/// RFC 3339 with a `T` and a zone (`Z` here).
fn rfc3339_utc(t: &str) -> bool {
    t.len() >= 20 && t.as_bytes()[10] == b'T' && t.ends_with('Z')
}

#[cfg(feature = "nats")]
mod nats {
    use async_nats::jetstream;
    use crwatch_testsupport::nats::NatsServer;

    use super::*;

    /// One stored message: subject, `Nats-Msg-Id` header, body.
    struct Stored {
        subject: String,
        msg_id: String,
        event: Value,
    }

    /// Every message in the stream, in stream order.
    async fn read_stream(url: &str, name: &str) -> Result<Vec<Stored>, String> {
        let read = async {
            let client = async_nats::connect(url).await.map_err(|e| e.to_string())?;
            let js = jetstream::new(client);
            let mut stream = js.get_stream(name).await.map_err(|e| e.to_string())?;
            let state = stream.info().await.map_err(|e| e.to_string())?.state.clone();
            let mut out = Vec::new();
            if state.messages == 0 {
                return Ok(out);
            }
            for seq in state.first_sequence..=state.last_sequence {
                let m = stream.get_raw_message(seq).await.map_err(|e| e.to_string())?;
                out.push(Stored {
                    subject: m.subject.to_string(),
                    msg_id: m
                        .headers
                        .get("Nats-Msg-Id")
                        .map(|v| v.as_str().to_string())
                        .unwrap_or_default(),
                    event: serde_json::from_slice(&m.payload).map_err(|e| e.to_string())?,
                });
            }
            Ok(out)
        };
        tokio::time::timeout(Duration::from_secs(5), read)
            .await
            .unwrap_or_else(|_| Err("reading the stream timed out".into()))
    }

    /// Wait until the stream holds every expected change; then check each message and that no
    /// change is stored twice.
    async fn check_stream(url: &str, changes: &Changes, what: &str) {
        let stored = eventually(what, ARRIVAL, || async {
            let stored = read_stream(url, "CRWATCH").await?;
            let events: Vec<Value> = stored.iter().map(|s| s.event.clone()).collect();
            changes.arrived(&events).map(|_| stored)
        })
        .await;
        let ns = &changes.ns;
        let mut ids = BTreeSet::new();
        for s in &stored {
            assert_cloudevent(&s.event);
            let name = s.event["data"]["object"]["metadata"]["name"].as_str().unwrap();
            assert_eq!(s.subject, format!("crwatch.core.ConfigMap.{ns}.{name}"));
            assert_eq!(
                s.msg_id,
                s.event["id"].as_str().unwrap(),
                "Nats-Msg-Id is the CloudEvent id"
            );
            assert!(ids.insert(s.msg_id.clone()), "{} stored twice", s.msg_id);
        }
        assert_eq!(stored.len(), changes.total(), "every change exactly once");
    }

    #[tokio::test]
    async fn jetstream_gets_every_change_once_in_order_across_a_server_restart() {
        let server = TestServer::start().await.unwrap();
        let mut nats = NatsServer::start().await.expect("starting nats-server");
        let admin = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
        admin
            .create_stream(jetstream::stream::Config {
                name: "CRWATCH".into(),
                subjects: vec!["crwatch.>".into()],
                storage: jetstream::stream::StorageType::File,
                ..Default::default()
            })
            .await
            .expect("creating the stream");
        drop(admin);

        let mut changes = Changes::new(&server, "nats-e2e").await;
        let sink = format!(
            "  - name: js\n    nats:\n      url: {}\n      jetstream: true\n      timeout: 1s\n",
            nats.url()
        );
        let fwd = start(&server, &config("nats-e2e", &sink)).await;

        changes.create("a", 0).await;
        changes.create("b", 0).await;
        for n in 1..=3 {
            changes.set("a", n).await;
            changes.set("b", n).await;
        }
        changes.delete("b").await;
        check_stream(&nats.url(), &changes, "the first changes in the stream").await;

        nats.stop();
        for n in 4..=6 {
            changes.set("a", n).await;
        }
        changes.create("c", 0).await;
        changes.set("c", 1).await;
        changes.delete("a").await;
        eventually("failed deliveries while nats-server is down", ARRIVAL, || async {
            let failed = metric(&fwd, "crwatch_forward_failed_total{sink=\"js\"}");
            if failed > 0.0 {
                Ok(())
            } else {
                Err(format!("failed = {failed}"))
            }
        })
        .await;
        // Nothing of the later changes can have been stored: the server is down.
        nats.restart().await.expect("restarting nats-server");
        check_stream(&nats.url(), &changes, "every change after the restart").await;
        assert!(metric(&fwd, "crwatch_forward_retried_total{sink=\"js\"}") >= 1.0);
        eventually("nothing in flight", ARRIVAL, || async {
            match fwd.in_flight() {
                0 => Ok(()),
                n => Err(format!("{n} in flight")),
            }
        })
        .await;
        fwd.shutdown().await.unwrap();
    }
}

#[cfg(feature = "amqp")]
mod amqp {
    use crwatch_testsupport::rabbitmq::RabbitMq;
    use lapin::options::{BasicGetOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
    use lapin::types::FieldTable;
    use lapin::{Connection as AmqpConnection, ConnectionProperties, ExchangeKind};

    use super::*;

    const QUEUE: &str = "crwatch-e2e";

    /// One consumed message: routing key, `message_id`, delivery mode, whether the broker
    /// redelivered it (recovered after its restart), body.
    #[derive(Clone)]
    struct Got {
        routing_key: String,
        redelivered: bool,
        message_id: String,
        delivery_mode: Option<u8>,
        event: Value,
    }

    /// The durable topic exchange the sink publishes to (declared as the sink declares it) and
    /// a durable queue bound to it with `#`, so both survive a broker restart.
    async fn declare(url: &str) {
        let conn = AmqpConnection::connect(url, ConnectionProperties::default())
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        ch.exchange_declare(
            "crwatch".into(),
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await
        .unwrap();
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        ch.queue_declare(QUEUE.into(), durable, FieldTable::default())
            .await
            .unwrap();
        ch.queue_bind(
            QUEUE.into(),
            "crwatch".into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        let _ = conn.close(200, "declared".into()).await;
    }

    /// Take what the queue holds now into `into`; messages taken stay taken even when the
    /// broker dies halfway.
    async fn drain(url: &str, into: &Mutex<Vec<Got>>) -> Result<(), String> {
        let get = async {
            let conn = AmqpConnection::connect(url, ConnectionProperties::default())
                .await
                .map_err(|e| e.to_string())?;
            let ch = conn.create_channel().await.map_err(|e| e.to_string())?;
            while let Some(m) = ch
                .basic_get(QUEUE.into(), BasicGetOptions { no_ack: true })
                .await
                .map_err(|e| e.to_string())?
            {
                let d = m.delivery;
                into.lock().unwrap().push(Got {
                    routing_key: d.routing_key.as_str().to_string(),
                    redelivered: d.redelivered,
                    message_id: d
                        .properties
                        .message_id()
                        .as_ref()
                        .map(|s| s.as_str().to_string())
                        .unwrap_or_default(),
                    delivery_mode: *d.properties.delivery_mode(),
                    event: serde_json::from_slice(&d.data).map_err(|e| e.to_string())?,
                });
            }
            let _ = conn.close(200, "drained".into()).await;
            Ok(())
        };
        tokio::time::timeout(Duration::from_secs(5), get)
            .await
            .unwrap_or_else(|_| Err("draining the queue timed out".into()))
    }

    /// Wait until every expected change was consumed, check each message, and return how many
    /// were repeats: (published again by the forwarder, redelivered by the broker).
    async fn check_queue(url: &str, got: &Mutex<Vec<Got>>, changes: &Changes, what: &str) -> (usize, usize) {
        eventually(what, ARRIVAL, || async {
            // A broker still starting up answers nothing yet: keep polling.
            let drained = drain(url, got).await;
            let events: Vec<Value> = got.lock().unwrap().iter().map(|g| g.event.clone()).collect();
            changes
                .arrived(&events)
                .map(drop)
                .map_err(|e| format!("{e} (last drain: {drained:?})"))
        })
        .await;
        let got = got.lock().unwrap().clone();
        let ns = &changes.ns;
        for g in &got {
            assert_cloudevent(&g.event);
            let name = g.event["data"]["object"]["metadata"]["name"].as_str().unwrap();
            assert_eq!(g.routing_key, format!("core.ConfigMap.{ns}.{name}"));
            assert_eq!(
                g.message_id,
                g.event["id"].as_str().unwrap(),
                "message_id is the CloudEvent id"
            );
            assert_eq!(g.delivery_mode, Some(2), "persistent");
        }
        let mut ids = BTreeSet::new();
        let (mut republished, mut redelivered) = (0, 0);
        for g in &got {
            if !ids.insert(g.message_id.clone()) {
                if g.redelivered {
                    redelivered += 1;
                } else {
                    republished += 1;
                }
            }
        }
        (republished, redelivered)
    }

    #[tokio::test]
    async fn rabbitmq_gets_every_change_in_order_across_a_broker_restart() {
        let server = TestServer::start().await.unwrap();
        let started = Instant::now();
        let mut broker = RabbitMq::start().await.expect("starting rabbitmq-server");
        eprintln!("rabbitmq-server started in {:?}", started.elapsed());
        declare(&broker.url()).await;

        let mut changes = Changes::new(&server, "amqp-e2e").await;
        let sink = format!(
            "  - name: rabbit\n    amqp:\n      url: {}\n      exchange: crwatch\n      exchangeType: topic\n      \
             timeout: 2s\n",
            broker.url()
        );
        let fwd = start(&server, &config("amqp-e2e", &sink)).await;
        let got = Mutex::new(Vec::new());

        changes.create("a", 0).await;
        changes.create("b", 0).await;
        for n in 1..=3 {
            changes.set("a", n).await;
            changes.set("b", n).await;
        }
        changes.delete("b").await;
        let repeats = check_queue(&broker.url(), &got, &changes, "the first changes in the queue").await;
        assert_eq!(
            repeats,
            (0, 0),
            "no reason to repeat anything while the broker is up"
        );

        broker.stop();
        for n in 4..=6 {
            changes.set("a", n).await;
        }
        changes.create("c", 0).await;
        changes.set("c", 1).await;
        changes.delete("a").await;
        eventually("failed deliveries while the broker is down", ARRIVAL, || async {
            let failed = metric(&fwd, "crwatch_forward_failed_total{sink=\"rabbit\"}");
            if failed > 0.0 {
                Ok(())
            } else {
                Err(format!("failed = {failed}"))
            }
        })
        .await;
        let restarted = Instant::now();
        broker.restart().await.expect("restarting rabbitmq-server");
        eprintln!("rabbitmq-server restarted in {:?}", restarted.elapsed());
        // At least once: a publish whose confirm the killed broker never sent is published again,
        // and a killed broker may forget that messages were already taken (no_ack gets are
        // recorded lazily) and hand them out again, flagged `redelivered`.
        let (republished, redelivered) =
            check_queue(&broker.url(), &got, &changes, "every change after the restart").await;
        eprintln!("repeats: {republished} published again, {redelivered} redelivered by the broker");
        assert!(metric(&fwd, "crwatch_forward_retried_total{sink=\"rabbit\"}") >= 1.0);
        fwd.shutdown().await.unwrap();
    }
}

/// The rotated files of `path`, oldest first, then `path` itself.
fn rotated_files(path: &Path) -> Vec<PathBuf> {
    let numbered = |n: usize| PathBuf::from(format!("{}.{n}", path.display()));
    let mut files: Vec<PathBuf> = (1..).map(numbered).take_while(|p| p.exists()).collect();
    files.reverse();
    files.push(path.to_path_buf());
    files
}

fn read_lines(files: &[PathBuf]) -> Result<Vec<Value>, String> {
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?;
        for line in text.lines() {
            out.push(serde_json::from_str(line).map_err(|e| format!("{}: {e}: {line}", f.display()))?);
        }
    }
    Ok(out)
}

#[tokio::test]
async fn the_file_sink_loses_nothing_across_rotations() {
    let server = TestServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    let max_size = 4096;
    let sink = format!(
        "  - name: file\n    file:\n      path: {}\n      maxSize: 4Ki\n      maxFiles: 100\n",
        path.display()
    );
    let checkpoint = dir.path().join("state/checkpoint.json");
    // The forwarder never creates the checkpoint's directory.
    std::fs::create_dir(dir.path().join("state")).unwrap();
    let mut changes = Changes::new(&server, "file-e2e").await;
    let yaml = format!(
        "{}checkpoint:\n  path: {}\n  interval: 20ms\n",
        config("file-e2e", &sink),
        checkpoint.display()
    );
    let fwd = start(&server, &yaml).await;
    let pad = "x".repeat(300);
    for i in 0..10 {
        changes.create_with(&format!("cm-{i}"), 0, &pad).await;
    }
    for n in 1..=2 {
        for i in 0..10 {
            changes.set(&format!("cm-{i}"), n).await;
        }
    }
    changes.delete("cm-3").await;
    changes.delete("cm-7").await;
    eventually("every change in the files", ARRIVAL, || async {
        changes.arrived(&read_lines(&rotated_files(&path))?).map(drop)
    })
    .await;
    fwd.shutdown().await.unwrap();

    let files = rotated_files(&path);
    assert!(files.len() >= 3, "the files rotated: {files:?}");
    for f in &files {
        let size = std::fs::metadata(f).unwrap().len();
        assert!(
            size <= max_size,
            "{} has {size} bytes, above maxSize",
            f.display()
        );
    }
    let events = read_lines(&files).unwrap();
    events.iter().for_each(assert_cloudevent);
    let (_, repeats) = sequences(&events);
    assert_eq!(repeats, 0, "nothing written twice");
    assert_eq!(
        events.len(),
        changes.total(),
        "nothing lost across {} files",
        files.len()
    );

    // The checkpoint holds whole objects (Secrets too, when forwarded): owner only, like the files.
    #[cfg(unix)]
    for f in files.iter().chain([&checkpoint]) {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} has mode {mode:o}", f.display());
    }
}

/// A webhook receiver that refuses changes of objects named `poison` with 400 Bad Request and
/// records everything else.
async fn picky_receiver() -> (String, Arc<Mutex<Vec<Value>>>) {
    use axum::http::StatusCode;

    let accepted = Arc::new(Mutex::new(Vec::new()));
    let state = accepted.clone();
    let app = axum::Router::new().route(
        "/",
        axum::routing::post(move |body: axum::body::Bytes| {
            let state = state.clone();
            async move {
                let Ok(event) = serde_json::from_slice::<Value>(&body) else {
                    return (StatusCode::BAD_REQUEST, "not JSON");
                };
                if event["subject"].as_str().is_some_and(|s| s.ends_with("/poison")) {
                    return (StatusCode::BAD_REQUEST, "poisoned object refused");
                }
                state.lock().unwrap().push(event);
                (StatusCode::OK, "ok")
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/"), accepted)
}

#[tokio::test]
async fn a_refused_change_goes_to_the_dead_letter_file_and_later_changes_still_flow() {
    let server = TestServer::start().await.unwrap();
    let (url, accepted) = picky_receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let dead = dir.path().join("dead/hook.jsonl");
    // The forwarder never creates the dead-letter file's directory.
    std::fs::create_dir(dir.path().join("dead")).unwrap();
    let sink = format!(
        "  - name: hook\n    webhook:\n      url: {url}\n      timeout: 2s\n    deadLetter: {}\n",
        dead.display()
    );
    let mut changes = Changes::new(&server, "dead-e2e").await;
    let fwd = start(&server, &config("dead-e2e", &sink)).await;

    changes.create("poison", 0).await;
    changes.create("good", 0).await;
    changes.set("good", 1).await;
    changes.set("poison", 1).await;
    changes.set("good", 2).await;

    let good = changes.expected["dead-e2e/good"].clone();
    eventually("the good object's changes", ARRIVAL, || async {
        let (got, _) = sequences(&accepted.lock().unwrap());
        match got.get("dead-e2e/good") {
            Some(seq) if *seq == good => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let letters = eventually("two dead letters", ARRIVAL, || async {
        let letters = read_lines(std::slice::from_ref(&dead))?;
        if letters.len() == 2 {
            Ok(letters)
        } else {
            Err(format!("{} dead letters", letters.len()))
        }
    })
    .await;
    let poison = &changes.expected["dead-e2e/poison"];
    for (letter, want) in letters.iter().zip(poison) {
        assert_eq!(letter["sink"], "hook", "{letter}");
        let error = letter["error"].as_str().unwrap();
        assert!(
            error.contains("400 Bad Request") && error.contains("poisoned object refused"),
            "{error}"
        );
        assert_eq!(letter["attempts"], 1, "a 400 is not retried: {letter}");
        assert_cloudevent(&letter["event"]);
        assert_eq!(&label(&letter["event"]), want);
    }
    assert!(
        accepted
            .lock()
            .unwrap()
            .iter()
            .all(|e| e["subject"] != "dead-e2e/poison"),
        "the receiver never accepted the poisoned object"
    );
    assert_eq!(
        metric(&fwd, "crwatch_forward_dead_lettered_total{sink=\"hook\"}"),
        2.0
    );
    // Dead-lettered changes count as handled: nothing holds the checkpoint back.
    eventually("nothing in flight", ARRIVAL, || async {
        match fwd.in_flight() {
            0 => Ok(()),
            n => Err(format!("{n} in flight")),
        }
    })
    .await;
    assert_eq!(
        metric(&fwd, "crwatch_forward_delivered_total{sink=\"hook\"}"),
        3.0
    );

    // And the pipeline keeps going after them.
    changes.set("poison", 2).await;
    changes.set("good", 3).await;
    let good = changes.expected["dead-e2e/good"].clone();
    eventually("the change after the dead letters", ARRIVAL, || async {
        let (got, _) = sequences(&accepted.lock().unwrap());
        match got.get("dead-e2e/good") {
            Some(seq) if *seq == good => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    eventually("the third dead letter", ARRIVAL, || async {
        let dead_lettered = metric(&fwd, "crwatch_forward_dead_lettered_total{sink=\"hook\"}");
        let lines = read_lines(std::slice::from_ref(&dead))?.len();
        if dead_lettered == 3.0 && lines == 3 {
            Ok(())
        } else {
            Err(format!("metric {dead_lettered}, {lines} lines"))
        }
    })
    .await;
    fwd.shutdown().await.unwrap();
}

/// The documented example (`examples/forward.yaml`) parses and is complete: webhook and file
/// sinks that run as written (tests/forward_restart.rs runs it), the NATS and AMQP sinks shown
/// commented out, and their settings valid once uncommented.
#[cfg(all(feature = "nats", feature = "amqp"))]
#[test]
fn the_example_configuration_parses() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/forward.yaml");
    let text = std::fs::read_to_string(path).expect("examples/forward.yaml");
    let config = ForwardConfig::parse(&text, "examples/forward.yaml").unwrap_or_else(|e| panic!("{e}"));
    let sinks = &config.sinks;
    assert!(sinks.iter().any(|s| s.webhook.is_some()), "a webhook sink");
    assert!(sinks.iter().any(|s| s.file.is_some()), "a file sink");
    assert!(config.checkpoint.is_some(), "a checkpoint");
    assert!(
        sinks.iter().any(|s| s.dead_letter.is_some()),
        "a dead-letter file"
    );
    // The broker sinks, uncommented: `  # - name:` blocks become sinks.
    let mut brokers = String::from("resources:\n  - resource: db\nsinks:\n");
    let mut inside = false;
    for line in text.lines() {
        if line.starts_with("  # - name: events-") {
            inside = true;
        } else if !line.starts_with("  #   ") {
            inside = false;
        }
        if inside {
            brokers.push_str(&format!("  {}\n", &line[4..]));
        }
    }
    let config = ForwardConfig::parse(&brokers, "brokers").unwrap_or_else(|e| panic!("{e}\n{brokers}"));
    assert!(config.sinks.iter().any(|s| s.nats.is_some()), "a NATS sink");
    assert!(config.sinks.iter().any(|s| s.amqp.is_some()), "an AMQP sink");
    for s in config.sinks.iter().filter_map(|s| s.nats.as_ref()) {
        s.validate().unwrap();
    }
    for s in config.sinks.iter().filter_map(|s| s.amqp.as_ref()) {
        s.validate().unwrap();
    }
}
