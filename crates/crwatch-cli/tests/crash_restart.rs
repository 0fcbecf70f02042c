//! The fault suite (issue 10): crash-restart loops of crwatch-apiserver with `--state`, killed
//! with SIGKILL under write load, with a crwatch informer and a `crwatch forward` forwarder
//! attached all along. Checked: the clients reconnect by themselves (the server keeps its CA,
//! token and port), the revision they see never goes backwards, and when the writes stop both
//! end with exactly the server's state (0 changes missed).
//!
//! The server runs in a child process (this test binary, re-run with a filter and an
//! environment variable) so it can really be killed.

mod receiver;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crwatch::informer::{HandlerFns, InformerFactory};
use crwatch_apiserver::{ApiServer, Config};
use crwatch_cli::Connection;
use crwatch_cli::forward::config::ForwardConfig;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};
use receiver::{Receiver, wait_for};
use serde_json::json;

const SERVER_DIR: &str = "CRWATCH_CRASH_SERVER_DIR";

/// Not a check of its own: the server process of the suite. It does nothing unless the suite
/// runs this binary with `CRWATCH_CRASH_SERVER_DIR` set.
#[test]
fn crash_restart_server_process() {
    let Ok(dir) = std::env::var(SERVER_DIR) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let server = ApiServer::start(Config {
            state_file: Some(dir.join("state.db")),
            http_port: None,
            bookmark_interval: Duration::from_secs(1),
            ..Config::default()
        })
        .await
        .expect("server starts");
        server
            .write_kubeconfig(&dir.join("kubeconfig"))
            .expect("kubeconfig");
        println!("READY {}", server.revision());
        std::future::pending::<()>().await;
    });
}

struct ServerProcess(Child);

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_server(dir: &Path) -> ServerProcess {
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "crash_restart_server_process",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(SERVER_DIR, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the server process");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut line = String::new();
        assert!(
            out.read_line(&mut line).expect("read") > 0,
            "server process exited"
        );
        if line.contains("READY") {
            break;
        }
        assert!(Instant::now() < deadline, "server not ready in 30 s");
    }
    // Keep reading (and dropping) its output so it never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut sink = String::new();
        while out.read_line(&mut sink).is_ok_and(|n| n > 0) {
            sink.clear();
        }
    });
    ServerProcess(child)
}

async fn client(kubeconfig: &Path) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).expect("kubeconfig");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("config");
    kube::Client::try_from(cfg).expect("client")
}

fn rv_of(cm: &ConfigMap) -> u64 {
    cm.metadata
        .resource_version
        .as_deref()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

/// Writes until a request fails (the server was killed): creates, updates and deletes of its
/// own names. Returns how many were acknowledged.
async fn writer(cms: Api<ConfigMap>, id: usize, cycle: usize, acked: Arc<Mutex<usize>>) {
    for i in 0.. {
        let name = format!("w{id}-{}", i % 5);
        let cm: ConfigMap = serde_json::from_value(
            json!({"metadata": {"name": name}, "data": {"v": format!("{cycle}-{i}")}}),
        )
        .expect("cm");
        let ok = match cms.get_opt(&name).await {
            Ok(Some(_)) if i % 4 == 3 => cms.delete(&name, &DeleteParams::default()).await.is_ok(),
            Ok(Some(cur)) => {
                let mut cm = cm;
                cm.metadata.resource_version = cur.metadata.resource_version;
                cms.replace(&name, &PostParams::default(), &cm).await.is_ok()
            }
            Ok(None) => cms.create(&PostParams::default(), &cm).await.is_ok(),
            Err(_) => false,
        };
        if !ok {
            return;
        }
        *acked.lock().unwrap() += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_miss_nothing_across_kill_9_restarts_under_write_load() {
    let cycles: usize = std::env::var("CRWATCH_CRASH_CYCLES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(20);
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    let mut server = start_server(dir.path());
    let client = client(&kubeconfig).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");

    // The informer: every resourceVersion it was shown, per object, in order.
    let factory = InformerFactory::new(client.clone());
    let informer = factory.all::<ConfigMap>();
    let seen: Arc<Mutex<BTreeMap<String, Vec<u64>>>> = Arc::default();
    let record = |seen: Arc<Mutex<BTreeMap<String, Vec<u64>>>>| {
        move |cm: &Arc<ConfigMap>| {
            let name = cm.metadata.name.clone().unwrap_or_default();
            seen.lock().unwrap().entry(name).or_default().push(rv_of(cm));
        }
    };
    let (s1, s2) = (seen.clone(), seen.clone());
    informer.add_handler(
        HandlerFns::new()
            .on_add(record(s1))
            .on_update(move |_, new, _| record(s2.clone())(new)),
    );
    factory.start();
    factory
        .wait_for_cache_sync(Duration::from_secs(30))
        .await
        .expect("informer syncs");

    // The forwarder, to a webhook receiver.
    let rx = Receiver::start().await;
    let yaml = format!(
        "resources:\n  - resource: configmaps\n    namespaces: [default]\nsinks:\n  - name: hook\n    webhook:\n      url: {}\n      timeout: 2s\n    retry:\n      initialBackoff: 10ms\n      maxBackoff: 200ms\ncheckpoint:\n  path: {}\n  interval: 100ms\nmetrics: \"127.0.0.1:0\"\nprobes: \"127.0.0.1:0\"\n",
        rx.url(),
        dir.path().join("checkpoint.json").display()
    );
    let config = ForwardConfig::parse(&yaml, "forward.yaml").expect("config");
    let conn = Connection {
        kubeconfig: Some(kubeconfig.clone()),
        context: None,
    };
    let fwd = crwatch_cli::forward::start(config, "forward.yaml", &conn)
        .await
        .expect("forwarder starts");

    let acked = Arc::new(Mutex::new(0usize));
    for cycle in 0..cycles {
        let before = *acked.lock().unwrap();
        let writers: Vec<_> = (0..3)
            .map(|id| tokio::spawn(writer(cms.clone(), id, cycle, acked.clone())))
            .collect();
        let deadline = Instant::now() + Duration::from_secs(30);
        while *acked.lock().unwrap() < before + 30 {
            assert!(Instant::now() < deadline, "cycle {cycle}: writes stalled");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let _ = server.0.kill();
        let _ = server.0.wait();
        for w in writers {
            let _ = w.await;
        }
        server = start_server(dir.path());
    }

    // The writes have stopped: both clients must reach exactly the server's state.
    let list = cms.list(&ListParams::default()).await.expect("list");
    let want: BTreeMap<String, u64> = list
        .items
        .iter()
        .map(|c| (c.metadata.name.clone().unwrap_or_default(), rv_of(c)))
        .collect();
    let store = informer.store();
    wait_for("the informer to reach the server's state", || {
        let have: BTreeMap<String, u64> = store
            .list()
            .iter()
            .filter(|c| c.metadata.namespace.as_deref() == Some("default"))
            .map(|c| (c.metadata.name.clone().unwrap_or_default(), rv_of(c)))
            .collect();
        have == want
    })
    .await;
    wait_for("the forwarder to reach the server's state", || {
        let mut last: BTreeMap<String, (String, u64)> = BTreeMap::new();
        for e in rx.events() {
            let o = &e["data"]["object"]["metadata"];
            let name = o["name"].as_str().unwrap_or_default().to_string();
            let rv = o["resourceVersion"]
                .as_str()
                .and_then(|r| r.parse().ok())
                .unwrap_or(0);
            last.insert(name, (e["type"].as_str().unwrap_or_default().to_string(), rv));
        }
        let live: BTreeMap<String, u64> = last
            .into_iter()
            .filter(|(_, (t, _))| t != "io.crwatch.resource.deleted")
            .map(|(n, (_, rv))| (n, rv))
            .collect();
        live == want
    })
    .await;
    // What the informer was shown of each object only ever moved forward.
    for (name, rvs) in seen.lock().unwrap().iter() {
        assert!(
            rvs.windows(2).all(|w| w[0] < w[1]),
            "{name}: the informer saw resourceVersions go backwards: {rvs:?}"
        );
    }
    let total = *acked.lock().unwrap();
    eprintln!(
        "{total} writes over {cycles} kill -9 cycles; informer and forwarder ended at the server's {} objects",
        want.len()
    );
    fwd.shutdown().await.expect("forwarder stops");
    factory.shutdown();
    drop(server);
}
