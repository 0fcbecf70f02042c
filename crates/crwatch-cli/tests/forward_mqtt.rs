//! `crwatch forward` end to end with the MQTT sink: crwatch-apiserver, the real `crwatch` binary
//! and a real mosquitto (Debian's), read back by a QoS 1 subscriber with a persistent session.
//! ConfigMaps are created, updated and deleted while the broker is up, while it goes down with
//! publishes in flight, and while it is down; after it comes back on the same port every change
//! must have arrived, each object's changes in resourceVersion order (repeats of an id allowed:
//! at least once), for MQTT 3.1.1 and 5.

#![cfg(feature = "mqtt")]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;

use common::changes::Changes;
use crwatch_apiserver::TestServer;
use crwatch_forward::sinks::mqtt::rumqttc;
use crwatch_testsupport::mosquitto::Mosquitto;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_crwatch");

/// How long changes may take to arrive, a broker restart and the forwarder's backoff included.
const ARRIVAL: Duration = Duration::from_secs(60);

/// Poll `check` every 50 ms until it is `Ok`, failing after `timeout` with its last reason.
async fn eventually<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(v) => return v,
            Err(why) => assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}; last state: {why}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A QoS 1 subscriber to `filter` with a persistent session (fixed client id, no clean
/// session), so that messages published while it reconnects after a broker restart wait for
/// it. Returns once the broker confirmed the subscription; payloads land in the vector.
async fn subscriber(
    port: u16,
    id: &str,
    filter: &str,
) -> (Arc<Mutex<Vec<Value>>>, tokio::task::JoinHandle<()>) {
    let mut options = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
    options
        .set_clean_session(false)
        .set_keep_alive(Duration::from_secs(5))
        .set_max_packet_size(16 << 20, 16 << 20);
    let (client, mut event_loop) = rumqttc::AsyncClient::new(options, 100);
    let events = Arc::new(Mutex::new(Vec::new()));
    let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
    let filter = filter.to_string();
    let sink = events.clone();
    let task = tokio::spawn(async move {
        let mut subscribed_tx = Some(subscribed_tx);
        loop {
            match event_loop.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(ack))) => {
                    if !ack.session_present {
                        client
                            .subscribe(filter.clone(), rumqttc::QoS::AtLeastOnce)
                            .await
                            .expect("subscribe");
                    }
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                    if let Some(t) = subscribed_tx.take() {
                        let _ = t.send(());
                    }
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                    let event: Value = serde_json::from_slice(&p.payload).expect("a JSON CloudEvent");
                    sink.lock().unwrap().push(event);
                }
                Ok(_) => {}
                // The broker is down: rumqttc reconnects on the next poll; pause between tries.
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(20), subscribed)
        .await
        .expect("no SUBACK within 20s")
        .unwrap();
    (events, task)
}

/// The forwarder process, stopped with SIGTERM (or killed) when dropped.
struct Forwarder {
    child: Child,
    log: std::path::PathBuf,
}

impl Forwarder {
    fn start(server: &TestServer, config: &Path, log: &Path) -> Self {
        let stderr = std::fs::File::create(log).unwrap();
        let child = Command::new(BIN)
            .args(["forward", "-f"])
            .arg(config)
            .arg("--kubeconfig")
            .arg(server.kubeconfig())
            .env("CRWATCH_LOG", "info")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("starting crwatch forward");
        Self {
            child,
            log: log.to_path_buf(),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then wait; the exit status.
    fn stop(&mut self) -> std::process::ExitStatus {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        self.child.wait().unwrap()
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

async fn broker_down_and_up(protocol: &str) {
    let mut broker = Mosquitto::start().await.expect("mosquitto");
    let server = TestServer::start().await.expect("api server");
    let ns = format!("mqtt{}", protocol.replace('.', ""));
    let mut changes = Changes::new(&server, &ns).await;
    let (events, subscriber_task) = subscriber(broker.port(), &format!("e2e-sub-{ns}"), "e2e/#").await;

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("forward.yaml");
    std::fs::write(
        &config,
        format!(
            "resources:\n  - resource: configmaps\n    namespaces: [{ns}]\nsinks:\n  - name: broker\n    \
             mqtt:\n      url: {url}\n      protocol: \"{protocol}\"\n      topic: e2e/{{namespace}}/{{name}}\n      \
             timeout: 2s\n    parallelism: 4\n    retry:\n      initialBackoff: 10ms\n      maxBackoff: 300ms\n\
             metrics: \"off\"\nprobes: \"off\"\nshutdownGrace: 2s\n",
            url = broker.url()
        ),
    )
    .unwrap();
    let mut forwarder = Forwarder::start(&server, &config, &dir.path().join("forward.log"));

    // Up: six objects; once their additions arrived the forwarder watches (changes made
    // before its first list would arrive as one addition), then two updates each.
    let names: Vec<String> = (0..6).map(|i| format!("cm-{i}")).collect();
    for name in &names {
        changes.create(name, 0).await;
    }
    eventually("the additions", ARRIVAL, || {
        changes.arrived(&events.lock().unwrap())
    })
    .await;
    for _ in 0..2 {
        for name in &names {
            changes.bump(name).await;
        }
    }
    eventually("the first changes", ARRIVAL, || {
        changes.arrived(&events.lock().unwrap())
    })
    .await;

    // Going down with publishes in flight, then changes while it is down.
    for name in &names {
        changes.bump(name).await;
    }
    broker.stop();
    for _ in 0..2 {
        for name in &names {
            changes.bump(name).await;
        }
    }
    changes.delete("cm-0").await;
    changes.delete("cm-1").await;
    changes.create("cm-new", 0).await;
    changes.bump("cm-new").await;
    eventually("the forwarder to notice the broker is down", ARRIVAL, || {
        let log = forwarder.log();
        if log.contains("deliveries are failing") {
            Ok(())
        } else {
            Err(log)
        }
    })
    .await;

    // Up again on the same port: everything arrives, in order per object.
    broker.restart().await.expect("mosquitto restarts");
    let repeats = eventually("every change after the restart", ARRIVAL, || {
        changes.arrived(&events.lock().unwrap())
    })
    .await;
    let log = forwarder.log();
    assert!(log.contains("MQTT connection lost"), "{log}");
    assert!(log.contains("delivering again"), "{log}");

    let status = forwarder.stop();
    assert!(status.success(), "{}", forwarder.log());
    subscriber_task.abort();
    eprintln!(
        "MQTT {protocol}: {} changes arrived in order, {repeats} repeated",
        changes.total()
    );
}

// The binary runs beside the test's runtime, which serves the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_and_order_holds_while_the_broker_goes_down_and_up_mqtt311() {
    broker_down_and_up("3.1.1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_and_order_holds_while_the_broker_goes_down_and_up_mqtt5() {
    broker_down_and_up("5").await;
}
