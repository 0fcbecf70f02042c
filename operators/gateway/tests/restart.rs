//! The operator is killed and restarted while nginx keeps serving: the built `gateway-operator`
//! binary on crwatch-apiserver with a real nginx under steady load. SIGKILL leaves nginx (its
//! own process group) serving the last configuration; a change made while the operator is down
//! waits; the restarted operator adopts the same master and applies it, and a restart with
//! nothing changed reloads nothing. A killed nginx is started again by the running operator.

mod common;

use common::{free_port, route, wait_for};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crwatch_apiserver::TestServer;
use gateway_operator::backend::Backend;
use gateway_operator::loadgen::{LoadConfig, LoadGen, RequestSpec, first_success_after, request};
use gateway_operator::nginx::{Mode, Nginx};
use gateway_operator::render::Settings;
use gateway_operator::types::GatewayRoute;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_gateway-operator");

/// An API server, the CRDs, the namespace, a prefix and ports for nginx; nginx (which outlives
/// every operator process) is killed when this is dropped, even when the test fails.
struct Site {
    server: TestServer,
    ns: String,
    prefix: tempfile::TempDir,
    http_port: u16,
    status_port: u16,
    metrics_port: u16,
    nginx: Nginx,
    runs: u32,
}

impl Drop for Site {
    fn drop(&mut self) {
        self.nginx.kill_now();
    }
}

/// A running operator process; killed (SIGKILL) when dropped.
struct Operator {
    child: tokio::process::Child,
    log: PathBuf,
}

impl Site {
    async fn new(ns: &str) -> Site {
        let server = TestServer::start().await.expect("API server starts");
        for crd in gateway_operator::crd::crds() {
            server.server().apply(crd).await.expect("CRD");
        }
        server
            .server()
            .apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))
            .await
            .expect("namespace");
        let prefix = tempfile::Builder::new()
            .prefix("crwatch-gw-restart-")
            .tempdir()
            .expect("a temporary directory");
        let (http_port, status_port) = (free_port(), free_port());
        let binary = gateway_operator::nginx::find_binary().expect("nginx is installed");
        let settings = Settings::loopback(PathBuf::from(prefix.path()), http_port, status_port);
        let nginx = Nginx::new(binary, settings, Mode::Start).expect("the prefix");
        Site {
            server,
            ns: ns.to_string(),
            prefix,
            http_port,
            status_port,
            metrics_port: free_port(),
            nginx,
            runs: 0,
        }
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.http_port))
    }

    fn routes(&self) -> Api<GatewayRoute> {
        Api::namespaced(self.server.client(), &self.ns)
    }

    /// Start the operator binary (admin kubeconfig, nginx started or adopted under the prefix).
    fn start_operator(&mut self) -> Operator {
        self.runs += 1;
        let log = self.prefix.path().join(format!("operator-{}.log", self.runs));
        let stderr = std::fs::File::create(&log).expect("the operator's log file");
        let child = tokio::process::Command::new(BIN)
            .arg("run")
            .arg("--kubeconfig")
            .arg(self.server.kubeconfig())
            .arg("--nginx-prefix")
            .arg(self.prefix.path())
            .args([
                "--listen",
                "127.0.0.1",
                "--https-port",
                "0",
                "--nginx-workers",
                "1",
            ])
            .args(["--http-port", &self.http_port.to_string()])
            .args(["--status-port", &self.status_port.to_string()])
            .args(["--metrics-addr", &format!("127.0.0.1:{}", self.metrics_port)])
            .args(["--probe-addr", "off"])
            .env("RUST_LOG", "info")
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .expect("gateway-operator starts");
        Operator { child, log }
    }

    /// The nginx master's worker pids.
    fn workers(&self) -> Vec<i32> {
        let master = self.nginx.master_pid().expect("an nginx master");
        let mut pids: Vec<i32> = std::fs::read_to_string(format!("/proc/{master}/task/{master}/children"))
            .expect("/proc/<pid>/task/<pid>/children (CONFIG_PROC_CHILDREN)")
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        pids.sort_unstable();
        pids
    }

    /// `gateway_nginx_reloads_total` of the running operator (generations it made live).
    async fn reloads(&self) -> Option<f64> {
        let text = reqwest::get(format!("http://127.0.0.1:{}/metrics", self.metrics_port))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .find(|l| l.starts_with("gateway_nginx_reloads_total"))?
            .rsplit(' ')
            .next()?
            .parse()
            .ok()
    }
}

impl Operator {
    /// SIGKILL, and wait until it is gone.
    async fn kill(mut self) {
        self.child.start_kill().expect("SIGKILL the operator");
        let status = tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .expect("the operator exits after SIGKILL")
            .expect("its status");
        assert!(!status.success(), "killed, not exited: {status:?}");
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Wait until the route's condition `type_` has `status` for its current generation.
async fn wait_condition(api: &Api<GatewayRoute>, name: &str, type_: &str, status: &str, op: &Operator) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = api.get(name).await.expect("the route");
        let g = r.metadata.generation;
        if r.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == type_ && c.status.as_str() == status && c.observed_generation == g)
        }) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: {type_} never became {status} for generation {g:?}: {:?}\noperator log:\n{}",
            r.status,
            op.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn backend_of(addr: SocketAddr) -> Option<String> {
    let r = request(addr, &RequestSpec::get("restart.test", "/probe"))
        .await
        .expect("nginx answers");
    assert_eq!(r.status, 200, "{}", r.text());
    r.backend().map(str::to_string)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_operator_is_killed_and_restarted_while_nginx_keeps_serving() {
    let mut site = Site::new("gw-restart").await;
    let api = site.routes();
    let a = Backend::start("a").await.expect("backend a");
    let b = Backend::start("b").await.expect("backend b");
    let op = site.start_operator();
    api.create(
        &PostParams::default(),
        &route(
            "main",
            json!({"host": "restart.test", "backends": [{"url": a.url()}]}),
        ),
    )
    .await
    .expect("create main");
    wait_condition(&api, "main", "Programmed", "True", &op).await;
    assert_eq!(backend_of(site.addr()).await.as_deref(), Some("a"));
    let master = site.nginx.master_pid().expect("the operator started nginx");
    let generation = site.nginx.serving().await.expect("nginx serves a generation");

    let load = LoadGen::start(LoadConfig::new(site.addr(), "restart.test", "/steady", 200))
        .expect("the load generator starts");
    wait_for("the load to run", Duration::from_secs(10), async || {
        (load.snapshot().ok >= 50).then_some(())
    })
    .await;

    // SIGKILL: no graceful shutdown, nothing cleaned up. nginx keeps serving for ~2 s of load
    // (400 requests at 200/s), on the same master and generation.
    op.kill().await;
    let sent = load.snapshot().sent;
    wait_for(
        "400 requests with the operator dead",
        Duration::from_secs(30),
        async || (load.snapshot().sent >= sent + 400).then_some(()),
    )
    .await;
    assert_eq!(
        site.nginx.master_pid(),
        Some(master),
        "nginx died with the operator"
    );
    assert_eq!(site.nginx.serving().await.as_deref(), Some(generation.as_str()));

    // A change while the operator is down waits for it.
    api.patch(
        "main",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"backends": [{"url": b.url()}]}})),
    )
    .await
    .expect("patch main");
    assert_eq!(backend_of(site.addr()).await.as_deref(), Some("a"));
    assert_eq!(site.nginx.serving().await.as_deref(), Some(generation.as_str()));

    // The restarted operator adopts the same master and applies the pending change.
    let op = site.start_operator();
    wait_condition(&api, "main", "Programmed", "True", &op).await;
    first_success_after(
        site.addr(),
        "restart.test",
        "/probe",
        &[],
        Some("b"),
        Duration::from_millis(10),
        Duration::from_secs(30),
    )
    .await
    .expect("the pending change is served");
    assert_eq!(
        site.nginx.master_pid(),
        Some(master),
        "the restarted operator started a new nginx instead of adopting the running one:\n{}",
        op.log()
    );
    let applied = site.nginx.serving().await.expect("nginx serves");
    assert_ne!(applied, generation);
    let workers = site.workers();

    // Restart with nothing that changes nginx's configuration: an invalid route, created while
    // the operator is down, is not rendered; once its status says so, the new operator has
    // synced everything, and nginx was not reloaded.
    op.kill().await;
    api.create(
        &PostParams::default(),
        &route(
            "invalid",
            json!({"host": "restart.test", "path": {"value": "/invalid"}, "backends": [{"url": "ftp://x"}]}),
        ),
    )
    .await
    .expect("create invalid");
    let op = site.start_operator();
    wait_condition(&api, "invalid", "Accepted", "False", &op).await;
    wait_condition(&api, "main", "Programmed", "True", &op).await;
    assert_eq!(site.nginx.master_pid(), Some(master));
    assert_eq!(site.nginx.serving().await.as_deref(), Some(applied.as_str()));
    assert_eq!(
        site.workers(),
        workers,
        "nginx's workers changed: it was reloaded although nothing changed"
    );
    let reloads = wait_for("the operator's metrics", Duration::from_secs(30), async || {
        site.reloads().await
    })
    .await;
    assert_eq!(
        reloads,
        0.0,
        "the adopting operator reloaded nginx:\n{}",
        op.log()
    );

    let stats = load.stop().await;
    println!("operator killed and restarted twice under load: {stats}");
    // 50 before the kill, 400 while it was dead, the rest across the restarts.
    assert!(stats.sent >= 450, "{stats}");
    assert_eq!(stats.failed, 0, "failed requests: {:?}", stats.failures);
    assert_eq!(backend_of(site.addr()).await.as_deref(), Some("b"));
    op.kill().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_nginx_is_started_again_by_the_running_operator() {
    let mut site = Site::new("gw-nginx-dies").await;
    let api = site.routes();
    let a = Backend::start("a").await.expect("backend a");
    let op = site.start_operator();
    api.create(
        &PostParams::default(),
        &route(
            "main",
            json!({"host": "restart.test", "backends": [{"url": a.url()}]}),
        ),
    )
    .await
    .expect("create main");
    wait_condition(&api, "main", "Programmed", "True", &op).await;
    let master = site.nginx.master_pid().expect("the operator started nginx");
    let generation = site.nginx.serving().await.expect("nginx serves");

    // SIGKILL to nginx's process group (master and workers), as when its container dies.
    site.nginx.kill_now();
    let killed = Instant::now();
    wait_for("the old master to be gone", Duration::from_secs(10), async || {
        (site.nginx.master_pid() != Some(master)).then_some(())
    })
    .await;
    // run.rs looks every 5 s; starting takes well under a second.
    let restarted = wait_for(
        "the operator to start nginx again",
        Duration::from_secs(15),
        async || {
            let pid = site.nginx.master_pid()?;
            site.nginx.serving().await.map(|g| (pid, g))
        },
    )
    .await;
    println!("nginx serving again {:?} after it was killed", killed.elapsed());
    assert_ne!(restarted.0, master);
    assert_eq!(restarted.1, generation, "restarted on the live configuration");
    first_success_after(
        site.addr(),
        "restart.test",
        "/probe",
        &[],
        Some("a"),
        Duration::from_millis(10),
        Duration::from_secs(10),
    )
    .await
    .unwrap_or_else(|e| panic!("the route is served again: {e}\n{}", op.log()));
    op.kill().await;
}

/// Only the master dies (SIGKILL, as the OOM killer might): its workers go on serving and hold
/// the port. The operator retires them gracefully and starts a new master on the live
/// configuration; under 200 req/s, the requests that fail are only those in the moment between
/// the orphans closing their sockets and the new master opening its own (printed).
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_master_alone_is_replaced_and_its_orphaned_workers_retired() {
    let mut site = Site::new("gw-master-dies").await;
    let api = site.routes();
    let a = Backend::start("a").await.expect("backend a");
    let op = site.start_operator();
    api.create(
        &PostParams::default(),
        &route(
            "main",
            json!({"host": "restart.test", "backends": [{"url": a.url()}]}),
        ),
    )
    .await
    .expect("create main");
    wait_condition(&api, "main", "Programmed", "True", &op).await;
    let master = site.nginx.master_pid().expect("the operator started nginx");
    let load = LoadGen::start(LoadConfig::new(site.addr(), "restart.test", "/load", 200)).expect("load");
    // SIGKILL to the master process only.
    // SAFETY: kill(2) with a pid read from nginx's own pid file and checked to be its master.
    assert_eq!(unsafe { libc::kill(master, libc::SIGKILL) }, 0);
    // Its workers, orphaned (they share its process group).
    let orphans = gateway_operator::nginx::group_members(master);
    assert!(!orphans.is_empty(), "the workers outlive their master");
    let replaced = wait_for("a new master serving", Duration::from_secs(20), async || {
        let pid = site.nginx.master_pid().filter(|p| *p != master)?;
        site.nginx.serving().await.map(|_| pid)
    })
    .await;
    first_success_after(
        site.addr(),
        "restart.test",
        "/probe",
        &[],
        Some("a"),
        Duration::from_millis(10),
        Duration::from_secs(10),
    )
    .await
    .unwrap_or_else(|e| panic!("served again: {e}\n{}", op.log()));
    let stats = load.stop().await;
    println!("master {master} replaced by {replaced}; under load: {stats}");
    assert!(stats.ok > 0, "{stats}");
    // None is left.
    wait_for(
        "the orphaned workers to exit",
        Duration::from_secs(20),
        async || {
            orphans
                .iter()
                .all(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
                .then_some(())
        },
    )
    .await;
    op.kill().await;
}
