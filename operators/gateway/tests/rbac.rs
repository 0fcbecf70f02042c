//! The operator with only the permissions deploy/gateway/rbac.yaml grants: the built binary
//! runs as the `gateway-operator` ServiceAccount (a token the API server issues, RBAC enforced)
//! with a local nginx, and serves a GatewayRoute and an AIGateway whose keys are in Secrets.
//! Every request it makes is allowed by the file's rules and every rule is used (minimal but
//! sufficient); with one verb taken away it fails clearly, backs off, and recovers once the
//! verb is back. The Deployment's two containers, run with the arguments of
//! deploy/gateway/deployment.yaml, agree on nginx's settings and work together.

mod common;

use common::{free_port, route, wait_for};

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crwatch_apiserver::TestServer;
use gateway_operator::backend::{Backend, sha256_hex};
use gateway_operator::loadgen::{RequestSpec, first_success_after, request};
use gateway_operator::nginx::{Mode, Nginx};
use gateway_operator::render::Settings;
use gateway_operator::types::{AIGateway, GatewayRoute};
use kube::Api;
use kube::api::PostParams;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_gateway-operator");
const NS: &str = "gateway-system";
const SA: &str = "gateway-operator";
/// The `User-Agent` of this test's own requests, to tell them from the operator's.
const TEST_AGENT: &str = "gateway-rbac-test";

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy")
        .join(file)
}

/// The documents of a manifest (comment-only chunks skipped).
fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).expect("the manifest");
    text.split("\n---\n")
        .map(|doc| serde_saphyr::from_str::<Value>(doc).expect("a YAML document"))
        .filter(|v| !v.is_null())
        .collect()
}

/// An API server with the CRDs (PromptTemplates' too, so the operator watches them), the
/// namespaces and deploy/gateway/rbac.yaml applied.
async fn cluster() -> TestServer {
    let server = TestServer::start().await.expect("API server starts");
    for crd in gateway_operator::crd::crds() {
        server.server().apply(crd).await.expect("CRD");
    }
    server
        .server()
        .apply_file(&deploy("ai-context/prompttemplates-crd.yaml"))
        .await
        .expect("the PromptTemplate CRD");
    for ns in [NS, "team"] {
        server
            .server()
            .apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))
            .await
            .expect("namespace");
    }
    server
        .server()
        .apply_file(&deploy("gateway/rbac.yaml"))
        .await
        .expect("deploy/gateway/rbac.yaml applies");
    server
}

/// An admin client whose requests carry [`TEST_AGENT`].
async fn test_client(server: &TestServer) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(server.kubeconfig()).expect("kubeconfig");
    let mut cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("client config");
    cfg.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_static(TEST_AGENT),
    ));
    kube::Client::try_from(cfg).expect("client")
}

/// A kubeconfig that authenticates as the operator's ServiceAccount.
fn sa_kubeconfig(server: &TestServer) -> PathBuf {
    let token = server
        .server()
        .service_account_token(NS, SA, 3600)
        .expect("a token for the operator's ServiceAccount");
    server.kubeconfig_with_token(&token).expect("kubeconfig")
}

/// Kills nginx (its process group, found through the prefix's pid file) when dropped.
struct NginxGuard(Nginx);

impl Drop for NginxGuard {
    fn drop(&mut self) {
        self.0.kill_now();
    }
}

/// A process of the built binary, its stderr in a file; killed when dropped.
struct Process {
    child: tokio::process::Child,
    log: PathBuf,
}

impl Process {
    fn spawn(args: &[String], log: PathBuf, own_group: bool) -> Process {
        let stderr = std::fs::File::create(&log).expect("a log file");
        let mut cmd = tokio::process::Command::new(BIN);
        cmd.args(args)
            .env("RUST_LOG", "info")
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true);
        if own_group {
            cmd.process_group(0);
        }
        let child = cmd.spawn().expect("gateway-operator starts");
        Process { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn stop(mut self) -> String {
        let _ = self.child.kill().await;
        self.log()
    }
}

/// The operator (start mode, its own nginx under a temporary prefix on free loopback ports) as
/// the ServiceAccount.
struct Gateway {
    op: Process,
    addr: SocketAddr,
    metrics: String,
    _nginx: NginxGuard,
    _prefix: tempfile::TempDir,
}

impl Gateway {
    fn start(server: &TestServer) -> Gateway {
        let prefix = tempfile::Builder::new()
            .prefix("crwatch-gw-rbac-")
            .tempdir()
            .expect("a temporary directory");
        let (http_port, status_port) = (free_port(), free_port());
        let metrics = format!("127.0.0.1:{}", free_port());
        let binary = gateway_operator::nginx::find_binary().expect("nginx is installed");
        let settings = Settings::loopback(PathBuf::from(prefix.path()), http_port, status_port);
        let nginx = NginxGuard(Nginx::new(binary, settings, Mode::Start).expect("the prefix"));
        let args: Vec<String> = [
            "run",
            "--kubeconfig",
            &sa_kubeconfig(server).display().to_string(),
            "--nginx-prefix",
            &prefix.path().display().to_string(),
            "--listen",
            "127.0.0.1",
            "--http-port",
            &http_port.to_string(),
            "--https-port",
            "0",
            "--status-port",
            &status_port.to_string(),
            "--nginx-workers",
            "1",
            "--metrics-addr",
            &metrics,
            "--probe-addr",
            "off",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let op = Process::spawn(&args, prefix.path().join("operator.log"), false);
        Gateway {
            op,
            addr: SocketAddr::from(([127, 0, 0, 1], http_port)),
            metrics,
            _nginx: nginx,
            _prefix: prefix,
        }
    }

    /// The number of reconciles run so far, from /metrics.
    async fn reconciles(&self) -> Option<f64> {
        let text = reqwest::get(format!("http://{}/metrics", self.metrics))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        Some(
            text.lines()
                .filter(|l| l.starts_with("controller_runtime_reconcile_total"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum(),
        )
    }
}

/// Whether a condition `type_` is `status` for the object's current generation.
fn has_condition(obj: &Value, type_: &str, status: &str) -> bool {
    let generation = obj.pointer("/metadata/generation");
    obj.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c["type"] == type_ && c["status"] == status && c.get("observedGeneration") == generation
            })
        })
}

async fn wait_programmed<K>(api: &Api<K>, name: &str, op: &Process)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let obj = serde_json::to_value(api.get(name).await.expect("the object")).expect("JSON");
        if has_condition(&obj, "Programmed", "True") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} never became Programmed: {}\noperator log:\n{}",
            obj["status"],
            op.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The ClusterRole's rules in deploy/gateway/rbac.yaml as (group, resource, verb).
fn granted() -> BTreeSet<(String, String, String)> {
    let role = documents(&deploy("gateway/rbac.yaml"))
        .into_iter()
        .find(|d| d["kind"] == "ClusterRole")
        .expect("a ClusterRole");
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .expect("a list")
            .iter()
            .map(|s| s.as_str().expect("a string").to_string())
            .collect()
    };
    let mut out = BTreeSet::new();
    for rule in role["rules"].as_array().expect("rules") {
        for g in strings(&rule["apiGroups"]) {
            for r in strings(&rule["resources"]) {
                for v in strings(&rule["verbs"]) {
                    out.insert((g.clone(), r.clone(), v));
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn the_operator_works_with_exactly_the_rbac_in_deploy() {
    let server = cluster().await;
    let client = test_client(&server).await;
    server.faults().clear_requests();
    let gw = Gateway::start(&server);
    let pp = PostParams::default();

    // A route to a URL, and one to a Service through its EndpointSlice.
    let a = Backend::start("a").await.expect("backend a");
    let routes: Api<GatewayRoute> = Api::namespaced(client.clone(), "team");
    routes
        .create(
            &pp,
            &route("web", json!({"host": "web.test", "backends": [{"url": a.url()}]})),
        )
        .await
        .expect("create web");
    let svc: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(client.clone(), "team");
    svc.create(
        &pp,
        &serde_json::from_value(json!({"metadata": {"name": "api"}, "spec": {"ports": [{"name": "http", "port": 80, "targetPort": a.addr().port()}]}}))
            .expect("a Service"),
    )
    .await
    .expect("create the Service");
    let slices: Api<k8s_openapi::api::discovery::v1::EndpointSlice> = Api::namespaced(client.clone(), "team");
    slices
        .create(
            &pp,
            &serde_json::from_value(json!({
                "metadata": {"name": "api-1", "labels": {"kubernetes.io/service-name": "api"}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": a.addr().port(), "protocol": "TCP"}],
                "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true}}],
            }))
            .expect("an EndpointSlice"),
        )
        .await
        .expect("create the EndpointSlice");
    routes
        .create(
            &pp,
            &route(
                "api",
                json!({"host": "api.test", "backends": [{"service": {"name": "api", "port": 80}}]}),
            ),
        )
        .await
        .expect("create api");
    wait_programmed(&routes, "web", &gw.op).await;
    wait_programmed(&routes, "api", &gw.op).await;
    for host in ["web.test", "api.test"] {
        first_success_after(
            gw.addr,
            host,
            "/",
            &[],
            Some("a"),
            Duration::from_millis(20),
            Duration::from_secs(30),
        )
        .await
        .unwrap_or_else(|e| panic!("{host} is served: {e}"));
    }

    // An AI gateway: the upstream key and the clients' keys come from Secrets.
    let up = Backend::start_openai("up")
        .await
        .expect("an OpenAI-compatible backend");
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), "team");
    for (name, key, value) in [
        ("upstream", "key", "sk-upstream-1"),
        ("clients", "team", "client-key-1"),
    ] {
        secrets
            .create(
                &pp,
                &serde_json::from_value(json!({"metadata": {"name": name}, "stringData": {key: value}}))
                    .expect("a Secret"),
            )
            .await
            .expect("create the Secret");
    }
    let ai: Api<AIGateway> = Api::namespaced(client.clone(), "team");
    ai.create(
        &pp,
        &serde_json::from_value(json!({
            "apiVersion": "gateway.crwatch.io/v1alpha1", "kind": "AIGateway", "metadata": {"name": "ai"},
            "spec": {
                "modelIntegrations": [{"name": "up", "baseURL": format!("{}/v1", up.url()), "apiKeySecretRef": {"name": "upstream", "key": "key"}}],
                "routingRules": [{"name": "all", "integration": "up"}],
                "securityPolicies": [{"name": "keys", "apiKeys": [{"secretName": "clients"}]}],
            },
        }))
        .expect("an AIGateway"),
    )
    .await
    .expect("create the AIGateway");
    wait_programmed(&ai, "ai", &gw.op).await;
    let chat = RequestSpec::post("ai.test", "/v1/chat/completions", r#"{"model":"m"}"#)
        .header("content-type", "application/json");
    assert_eq!(request(gw.addr, &chat).await.expect("nginx answers").status, 401);
    let r = request(gw.addr, &chat.header("authorization", "Bearer client-key-1"))
        .await
        .expect("nginx answers");
    assert_eq!((r.status, r.backend()), (200, Some("up")), "{}", r.text());
    let body: Value = r.json().expect("a chat completion");
    assert_eq!(
        body["headers"]["authorization_sha256"],
        sha256_hex(b"Bearer sk-upstream-1"),
        "the upstream key from the Secret is sent upstream: {body}"
    );

    // Its Events are recorded (events.k8s.io).
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), "team");
    wait_for(
        "an Event from the operator",
        Duration::from_secs(30),
        async || {
            let list = events.list(&Default::default()).await.ok()?;
            list.items
                .iter()
                .any(|e| e.reporting_controller.as_deref() == Some("gateway-operator"))
                .then_some(())
        },
    )
    .await;

    // Every request the operator made is allowed by a rule of the file, and every rule was
    // needed: the file is sufficient and grants nothing more.
    let log = gw.op.stop().await;
    assert!(
        !log.contains("forbidden"),
        "the operator was refused something deploy/gateway/rbac.yaml should grant:\n{log}"
    );
    let rules = granted();
    let mut used: BTreeMap<(String, String, String), u64> = BTreeMap::new();
    for r in server.faults().requests() {
        if r.user_agent.starts_with(TEST_AGENT) {
            continue;
        }
        if r.resource.is_empty() {
            // Discovery (/api, /apis, /version): every authenticated user may read it.
            assert!(
                ["/api", "/apis", "/version"]
                    .iter()
                    .any(|p| r.path == *p || r.path.starts_with(&format!("{p}/"))),
                "a non-resource request outside discovery: {r:?}"
            );
            continue;
        }
        *used
            .entry((r.group.clone(), r.resource.clone(), r.verb.clone()))
            .or_default() += 1;
    }
    println!("the operator's requests (group, resource, verb): {used:?}");
    let denied: Vec<_> = used.keys().filter(|k| !rules.contains(*k)).collect();
    assert!(denied.is_empty(), "requests rbac.yaml does not allow: {denied:?}");
    // Granted but not seen here, each with the reason it is granted anyway.
    let unused: BTreeSet<_> = rules.iter().filter(|k| !used.contains_key(*k)).collect();
    let expected_unused: BTreeSet<(String, String, String)> = [
        // A repeated Event is folded into a series by patching it; nothing repeats here.
        ("events.k8s.io", "events", "patch"),
    ]
    .iter()
    .map(|(g, r, v)| (g.to_string(), r.to_string(), v.to_string()))
    .collect();
    let unused_owned: BTreeSet<_> = unused.into_iter().cloned().collect();
    assert_eq!(
        unused_owned, expected_unused,
        "rules in deploy/gateway/rbac.yaml the operator never used (remove them, or explain them here)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn without_one_verb_the_operator_fails_clearly_backs_off_and_recovers() {
    let server = cluster().await;
    // Take `patch` on gatewayroutes/status away: the operator cannot report.
    let mut role = documents(&deploy("gateway/rbac.yaml"))
        .into_iter()
        .find(|d| d["kind"] == "ClusterRole")
        .expect("a ClusterRole");
    for rule in role["rules"].as_array_mut().expect("rules") {
        if let Some(resources) = rule["resources"].as_array_mut() {
            resources.retain(|r| r != "gatewayroutes/status");
        }
    }
    server
        .server()
        .apply(role)
        .await
        .expect("the reduced ClusterRole");
    let client = test_client(&server).await;
    let gw = Gateway::start(&server);
    let a = Backend::start("a").await.expect("backend a");
    let routes: Api<GatewayRoute> = Api::namespaced(client.clone(), "team");
    routes
        .create(
            &PostParams::default(),
            &route(
                "locked",
                json!({"host": "locked.test", "backends": [{"url": a.url()}]}),
            ),
        )
        .await
        .expect("create locked");
    // nginx serves the route (writing the status is the only thing refused) ...
    first_success_after(
        gw.addr,
        "locked.test",
        "/",
        &[],
        Some("a"),
        Duration::from_millis(20),
        Duration::from_secs(60),
    )
    .await
    .expect("the route is served");
    // ... and the refusal is logged as the API server worded it (the controller retries with
    // backoff; a status it may not write cannot carry the message).
    let denied = format!(
        "User \\\"system:serviceaccount:{NS}:{SA}\\\" cannot patch resource \\\"gatewayroutes/status\\\" in API group \\\"gateway.crwatch.io\\\" in the namespace \\\"team\\\""
    );
    wait_for(
        "the log to name the missing permission",
        Duration::from_secs(60),
        async || gw.op.log().contains(&denied).then_some(()),
    )
    .await;
    assert!(
        routes
            .get("locked")
            .await
            .expect("the route")
            .status
            .is_none_or(|s| s.conditions.is_empty()),
        "a status was written without the permission"
    );
    // It keeps running and retries with backoff, not in a storm.
    let before = wait_for("the operator's metrics", Duration::from_secs(30), async || {
        gw.reconciles().await
    })
    .await;
    let window = Duration::from_secs(5);
    tokio::time::sleep(window).await;
    let after = gw.reconciles().await.expect("the operator still serves metrics");
    println!(
        "without gatewayroutes/status patch: {} reconciles in {window:?} after the first failures",
        after - before
    );
    assert!(
        after - before <= 20.0,
        "{} reconciles in {window:?}: a retry storm",
        after - before
    );
    // Give the permission back: it recovers by itself.
    server
        .server()
        .apply_file(&deploy("gateway/rbac.yaml"))
        .await
        .expect("rbac.yaml applies");
    wait_programmed(&routes, "locked", &gw.op).await;
    gw.op.stop().await;
}

/// `--flag=value` arguments of a container, by flag.
fn flags(container: &Value) -> BTreeMap<String, String> {
    container["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(|a| a.as_str()?.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The flags both containers must agree on: the operator renders what nginx serves.
const SHARED: [&str; 6] = [
    "--nginx-prefix",
    "--listen",
    "--http-port",
    "--https-port",
    "--status-port",
    "--nginx-workers",
];

#[tokio::test(flavor = "multi_thread")]
async fn the_deployments_two_containers_agree_and_work_together() {
    let docs = documents(&deploy("gateway/deployment.yaml"));
    let dep = docs
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("a Deployment");
    let pod = &dep["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], SA);
    assert_eq!(pod["shareProcessNamespace"], true, "the operator signals nginx");
    assert_eq!(dep["metadata"]["namespace"], NS);
    let containers = pod["containers"].as_array().expect("containers");
    let by_name = |n: &str| {
        containers
            .iter()
            .find(|c| c["name"] == n)
            .unwrap_or_else(|| panic!("a container {n}"))
    };
    let (nginx_c, op_c) = (by_name("nginx"), by_name("operator"));
    assert_eq!(nginx_c["image"], op_c["image"], "one image");
    assert_eq!(nginx_c["args"][0], "nginx");
    assert_eq!(op_c["args"][0], "run");
    let (nf, of) = (flags(nginx_c), flags(op_c));
    for f in SHARED {
        assert!(nf.contains_key(f), "the nginx container sets {f}");
        assert_eq!(nf.get(f), of.get(f), "{f} differs between the containers");
    }
    assert_eq!(of.get("--nginx").map(String::as_str), Some("external"));
    let port = |c: &Value, name: &str| -> String {
        c["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("a port {name}"))["containerPort"]
            .to_string()
    };
    assert_eq!(port(nginx_c, "http"), nf["--http-port"]);
    assert_eq!(port(nginx_c, "https"), nf["--https-port"]);
    let metrics = of["--metrics-addr"].trim_start_matches(':').to_string();
    let probes = of["--probe-addr"].trim_start_matches(':').to_string();
    assert_eq!(port(op_c, "metrics"), metrics);
    assert_eq!(port(op_c, "probes"), probes);
    for p in [&metrics, &probes] {
        assert!(
            p != &nf["--http-port"] && p != &nf["--https-port"] && p != &nf["--status-port"],
            "the operator's port {p} collides with nginx's"
        );
    }
    for c in [nginx_c, op_c] {
        assert!(
            c["volumeMounts"]
                .as_array()
                .expect("volumeMounts")
                .iter()
                .any(|m| m["name"] == "nginx-prefix" && m["mountPath"] == nf["--nginx-prefix"].as_str()),
            "{} mounts the shared prefix",
            c["name"]
        );
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    }
    let service = docs.iter().find(|d| d["kind"] == "Service").expect("a Service");
    assert_eq!(service["metadata"]["name"], "gateway");

    // The manifests are valid for an API server (schemas, the Namespace before its objects).
    let server = cluster().await;
    server
        .server()
        .apply_file(&deploy("gateway/deployment.yaml"))
        .await
        .expect("deploy/gateway/deployment.yaml applies");

    // Run the two containers as the Pod would (nginx first, as the kubelet starts them), on a
    // temporary prefix and free loopback ports instead of the Pod's.
    let prefix = tempfile::Builder::new()
        .prefix("crwatch-gw-pod-")
        .tempdir()
        .expect("a temporary directory");
    let http_port = free_port();
    let probe_addr = format!("127.0.0.1:{}", free_port());
    let replace = BTreeMap::from([
        ("--nginx-prefix", prefix.path().display().to_string()),
        ("--listen", "127.0.0.1".to_string()),
        ("--http-port", http_port.to_string()),
        ("--https-port", free_port().to_string()),
        ("--status-port", free_port().to_string()),
        ("--metrics-addr", format!("127.0.0.1:{}", free_port())),
        ("--probe-addr", probe_addr.clone()),
    ]);
    let args = |c: &Value| -> Vec<String> {
        c["args"]
            .as_array()
            .expect("args")
            .iter()
            .map(|a| {
                let a = a.as_str().expect("a string");
                match a.split_once('=') {
                    Some((k, _)) if replace.contains_key(k) => format!("{k}={}", replace[k]),
                    _ => a.to_string(),
                }
            })
            .collect()
    };
    let binary = gateway_operator::nginx::find_binary().expect("nginx is installed");
    let settings = Settings::loopback(PathBuf::from(prefix.path()), http_port, free_port());
    let _guard = NginxGuard(Nginx::new(binary, settings, Mode::External).expect("the prefix"));
    let nginx = Process::spawn(&args(nginx_c), prefix.path().join("nginx.log"), true);
    let addr = SocketAddr::from(([127, 0, 0, 1], http_port));
    wait_for(
        "the nginx container to listen",
        Duration::from_secs(30),
        async || tokio::net::TcpStream::connect(addr).await.ok(),
    )
    .await;
    let mut op_args = args(op_c);
    op_args.push(format!("--kubeconfig={}", sa_kubeconfig(&server).display()));
    let op = Process::spawn(&op_args, prefix.path().join("operator.log"), false);
    wait_for("the operator's /readyz", Duration::from_secs(60), async || {
        let r = reqwest::get(format!("http://{probe_addr}/readyz")).await.ok()?;
        r.status().is_success().then_some(())
    })
    .await;

    let a = Backend::start("a").await.expect("backend a");
    let routes: Api<GatewayRoute> = Api::namespaced(server.client(), "team");
    routes
        .create(
            &PostParams::default(),
            &route("web", json!({"host": "web.test", "backends": [{"url": a.url()}]})),
        )
        .await
        .expect("create web");
    wait_programmed(&routes, "web", &op).await;
    first_success_after(
        addr,
        "web.test",
        "/",
        &[],
        Some("a"),
        Duration::from_millis(20),
        Duration::from_secs(30),
    )
    .await
    .unwrap_or_else(|e| panic!("the route is served by the nginx container: {e}\n{}", op.log()));
    // It was the nginx container's master that reloaded, not one the operator started.
    let master = std::fs::read_to_string(prefix.path().join("nginx.pid")).expect("nginx.pid");
    assert_eq!(
        master.trim().parse::<u32>().ok(),
        nginx.child.id(),
        "the operator started its own nginx in external mode"
    );
    let log = op.stop().await;
    assert!(!log.contains("forbidden"), "{log}");
    drop(nginx);
}
