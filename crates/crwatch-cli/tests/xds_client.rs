//! The delta-xDS client source (`crwatch::source::xds`) against the real `crwatch serve` server
//! (`crwatch_serve::xds`) over crwatch-apiserver: list, watch, ACK and NACK; a reconnect that
//! gets only what changed; chained servers (API server → serve → serve → client); and
//! `crwatch get xds://…` through the built binary.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use crwatch::informer::Informer;
use crwatch::source::kube::KubeSource;
use crwatch::source::xds::{XdsSource, XdsStats};
use crwatch::store::ObjectKey;
use crwatch_apiserver::TestServer;
use crwatch_serve::xds::{ServerOptions, XdsServer};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

const BIN: &str = env!("CARGO_BIN_EXE_crwatch");
const CM: &str = "core/v1/ConfigMap";
const WAIT: Duration = Duration::from_secs(20);

/// A `crwatch serve` server (the library) over an informer, on loopback.
struct Upstream {
    addr: SocketAddr,
    cancel: CancellationToken,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Bind `port` (0: any), retrying while a previous listener lets go of it.
async fn bind(port: u16) -> tokio::net::TcpListener {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
            Ok(l) => return l,
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::debug!("bind {port}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("binding 127.0.0.1:{port}: {e}"),
        }
    }
}

/// Serve `informer` (objects of `api_version`/`kind`) on `port`.
async fn serve(informer: Informer<DynamicObject>, api_version: &str, kind: &str, port: u16) -> Upstream {
    let server = XdsServer::new(ServerOptions::default());
    server.serve_informer(&informer, api_version, kind);
    let cancel = CancellationToken::new();
    informer.start(cancel.clone());
    let listener = bind(port).await;
    let addr = listener.local_addr().unwrap();
    let stop = cancel.clone();
    tokio::spawn(async move {
        if let Err(e) = server.serve(listener, None, stop).await {
            panic!("xDS server: {e}");
        }
    });
    Upstream { addr, cancel }
}

/// Serve the ConfigMaps of `ns` from the API server.
async fn serve_configmaps(server: &TestServer, ns: &str, port: u16) -> Upstream {
    let ar = ApiResource::erase::<ConfigMap>(&());
    let informer = Informer::new(KubeSource::<DynamicObject>::dynamic(
        server.client(),
        &ar,
        Some(ns),
    ));
    serve(informer, &ar.api_version, &ar.kind, port).await
}

async fn namespace(server: &TestServer, ns: &str) -> Api<ConfigMap> {
    let nss: Api<Namespace> = Api::all(server.client());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap(),
    )
    .await
    .unwrap();
    Api::namespaced(server.client(), ns)
}

async fn create(cms: &Api<ConfigMap>, name: &str, value: &str, labels: serde_json::Value) {
    let cm = json!({"metadata": {"name": name, "labels": labels}, "data": {"value": value}});
    cms.create(&PostParams::default(), &serde_json::from_value(cm).unwrap())
        .await
        .unwrap();
}

async fn set(cms: &Api<ConfigMap>, name: &str, value: &str) {
    cms.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"value": value}})),
    )
    .await
    .unwrap();
}

/// Wait until `cond` holds, or fail saying `what`.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn value(informer: &Informer<DynamicObject>, ns: &str, name: &str) -> Option<String> {
    informer
        .store()
        .get(&ObjectKey::new(Some(ns), name))
        .and_then(|o| {
            o.data
                .pointer("/data/value")
                .and_then(|v| v.as_str())
                .map(str::to_string)
        })
}

fn names(informer: &Informer<DynamicObject>) -> Vec<String> {
    let mut n: Vec<String> = informer
        .store()
        .list()
        .iter()
        .filter_map(|o| o.metadata.name.clone())
        .collect();
    n.sort();
    n
}

fn client(addr: SocketAddr) -> XdsSource {
    XdsSource::new(format!("http://{addr}"), CM)
        .backoff(Duration::from_millis(50), Duration::from_millis(400))
        .initial_fetch_timeout(Duration::from_secs(5))
}

fn get(c: &std::sync::atomic::AtomicU64) -> u64 {
    XdsStats::get(c)
}

#[tokio::test]
async fn lists_watches_acks_and_nacks_what_the_validator_rejects() {
    let server = TestServer::start().await.unwrap();
    let ns = "xds-client-basic";
    let cms = namespace(&server, ns).await;
    create(&cms, "a", "1", json!({})).await;
    create(&cms, "b", "1", json!({})).await;
    create(&cms, "bad", "1", json!({"reject": "yes"})).await;
    let up = serve_configmaps(&server, ns, 0).await;

    let source = client(up.addr).validator(|o: &DynamicObject| {
        match o.metadata.labels.as_ref().and_then(|l| l.get("reject")) {
            Some(_) => Err("labelled reject".to_string()),
            None => Ok(()),
        }
    });
    let stats = source.stats();
    let informer: Informer<DynamicObject> = Informer::new(source);
    let cancel = CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    informer.start(cancel.clone());
    informer.wait_synced(WAIT).await.unwrap();

    // The first response carried all three; the rejected one is NACKed and not applied.
    assert_eq!(names(&informer), ["a", "b"]);
    until("the NACK of the first response", || get(&stats.nacks) == 1).await;
    assert_eq!(get(&stats.rejected), 1);
    // The informer names the rejected object, and stays healthy.
    let skipped = informer.undecodable();
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert_eq!(
        (skipped[0].namespace.as_deref(), skipped[0].name.as_str()),
        (Some(ns), "bad")
    );
    assert!(
        skipped[0].error.contains("labelled reject"),
        "{}",
        skipped[0].error
    );
    assert!(informer.health().last_error.is_none());
    let o = informer.store().get(&ObjectKey::new(Some(ns), "a")).unwrap();
    assert_eq!(o.types.as_ref().unwrap().kind, "ConfigMap");
    assert!(o.metadata.resource_version.is_some());

    // Changes arrive one by one, and are ACKed.
    set(&cms, "a", "2").await;
    until("a = 2", || value(&informer, ns, "a").as_deref() == Some("2")).await;
    create(&cms, "c", "1", json!({})).await;
    until("c", || value(&informer, ns, "c").is_some()).await;
    cms.delete("b", &DeleteParams::default()).await.unwrap();
    until("b gone", || value(&informer, ns, "b").is_none()).await;
    // The rejected object, fixed, is taken.
    cms.patch(
        "bad",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"reject": null}}})),
    )
    .await
    .unwrap();
    until("bad accepted once fixed", || {
        value(&informer, ns, "bad").is_some()
    })
    .await;
    // A change of a rejected object is NACKed; the last good version stays.
    cms.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"reject": "yes"}}, "data": {"value": "3"}})),
    )
    .await
    .unwrap();
    until("the second NACK", || get(&stats.nacks) == 2).await;
    assert_eq!(value(&informer, ns, "a").as_deref(), Some("2"));
    assert!(get(&stats.acks) >= 4, "acks: {}", get(&stats.acks));
    // A rejected object that is deleted leaves no record behind.
    create(&cms, "bad2", "1", json!({"reject": "yes"})).await;
    until("bad2 recorded as skipped", || {
        informer.undecodable().iter().any(|u| u.name == "bad2")
    })
    .await;
    cms.delete("bad2", &DeleteParams::default()).await.unwrap();
    until("bad2 forgotten", || {
        !informer.undecodable().iter().any(|u| u.name == "bad2")
    })
    .await;
    assert_eq!(get(&stats.connects), 1);
}

#[tokio::test]
async fn named_subscriptions_get_only_their_resources() {
    let server = TestServer::start().await.unwrap();
    let ns = "xds-client-named";
    let cms = namespace(&server, ns).await;
    for n in ["a", "b", "c"] {
        create(&cms, n, "1", json!({})).await;
    }
    let up = serve_configmaps(&server, ns, 0).await;
    let source = client(up.addr).names([format!("{ns}/a"), format!("{ns}/c"), format!("{ns}/later")]);
    let informer: Informer<DynamicObject> = Informer::new(source);
    let cancel = CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    informer.start(cancel.clone());
    informer.wait_synced(WAIT).await.unwrap();
    assert_eq!(names(&informer), ["a", "c"]);
    set(&cms, "b", "2").await;
    create(&cms, "later", "1", json!({})).await;
    until("later", || value(&informer, ns, "later").is_some()).await;
    assert_eq!(names(&informer), ["a", "c", "later"]);
}

#[tokio::test]
async fn a_reconnect_gets_only_what_changed_meanwhile() {
    let server = TestServer::start().await.unwrap();
    let ns = "xds-client-reconnect";
    let cms = namespace(&server, ns).await;
    for i in 0..20 {
        create(&cms, &format!("cm-{i:02}"), "1", json!({})).await;
    }
    let up = serve_configmaps(&server, ns, 0).await;
    let port = up.addr.port();
    let source = client(up.addr);
    let stats = source.stats();
    let informer: Informer<DynamicObject> = Informer::new(source);
    let cancel = CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    informer.start(cancel.clone());
    informer.wait_synced(WAIT).await.unwrap();
    assert_eq!(informer.store().len(), 20);
    assert_eq!(get(&stats.resources), 20);

    // The server goes away; the client reports it and keeps its objects.
    drop(up);
    until("the client notices", || informer.health().last_error.is_some()).await;
    assert_eq!(informer.store().len(), 20);
    set(&cms, "cm-01", "2").await;
    cms.delete("cm-02", &DeleteParams::default()).await.unwrap();
    create(&cms, "cm-new", "1", json!({})).await;

    // A new server on the same port: the client reconnects with initial_resource_versions
    // and is sent only the two changed objects and one removal.
    let _up = serve_configmaps(&server, ns, port).await;
    until("the changes", || {
        value(&informer, ns, "cm-01").as_deref() == Some("2")
            && value(&informer, ns, "cm-02").is_none()
            && value(&informer, ns, "cm-new").is_some()
    })
    .await;
    assert_eq!(informer.store().len(), 20);
    // (A stream may still open on the old server while it shuts down.)
    assert!(get(&stats.connects) >= 2);
    assert_eq!(get(&stats.resources), 22, "only what changed is re-sent");
}

#[tokio::test]
async fn chained_servers_carry_a_change_to_the_last_client() {
    let server = TestServer::start().await.unwrap();
    let ns = "xds-client-chain";
    let cms = namespace(&server, ns).await;
    create(&cms, "app", "1", json!({"tier": "web"})).await;
    // API server → first crwatch serve.
    let first = serve_configmaps(&server, ns, 0).await;
    // First → second crwatch serve, whose source is the xDS client of the first.
    let relay = Informer::new(client(first.addr));
    let second = serve(relay, "v1", "ConfigMap", 0).await;
    // Second → the client.
    let informer: Informer<DynamicObject> = Informer::new(client(second.addr));
    let cancel = CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    informer.start(cancel.clone());
    informer.wait_synced(WAIT).await.unwrap();
    assert_eq!(value(&informer, ns, "app").as_deref(), Some("1"));
    let o = informer.store().get(&ObjectKey::new(Some(ns), "app")).unwrap();
    assert_eq!(o.metadata.labels.as_ref().unwrap()["tier"], "web");

    let started = std::time::Instant::now();
    set(&cms, "app", "2").await;
    until("the change at the end of the chain", || {
        value(&informer, ns, "app").as_deref() == Some("2")
    })
    .await;
    eprintln!("change through two servers in {:?}", started.elapsed());
    create(&cms, "other", "x", json!({})).await;
    until("a new object at the end of the chain", || {
        value(&informer, ns, "other").is_some()
    })
    .await;
    cms.delete("app", &DeleteParams::default()).await.unwrap();
    until("a deletion at the end of the chain", || {
        value(&informer, ns, "app").is_none()
    })
    .await;
}

/// The binary chains too: `crwatch serve -r xds://FIRST/core/v1/ConfigMap` serves what the
/// first server serves, and a change on the API server reaches its clients.
#[tokio::test]
async fn crwatch_serve_chains_behind_another_server() {
    let server = TestServer::start().await.unwrap();
    let ns = "xds-client-serve-chain";
    let cms = namespace(&server, ns).await;
    create(&cms, "app", "1", json!({})).await;
    let first = serve_configmaps(&server, ns, 0).await;
    let port = bind(0).await.local_addr().unwrap().port();
    let mut relay = Command::new(BIN)
        .args(["serve", "-r", &format!("xds://{}/{CM}", first.addr)])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env_remove("KUBECONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let informer: Informer<DynamicObject> = Informer::new(client(SocketAddr::from(([127, 0, 0, 1], port))));
    let cancel = CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    informer.start(cancel.clone());
    until("the object through the relay", || {
        value(&informer, ns, "app").as_deref() == Some("1")
    })
    .await;
    set(&cms, "app", "2").await;
    until("the change through the relay", || {
        value(&informer, ns, "app").as_deref() == Some("2")
    })
    .await;
    assert!(relay.try_wait().unwrap().is_none(), "the relay is still running");
    let _ = relay.kill().await;
}

/// `crwatch get xds://…` lists, then `-w --diff` shows a change with its diff.
#[tokio::test]
async fn crwatch_get_xds_lists_and_watches() {
    let server = TestServer::start().await.unwrap();
    let ns = "xds-client-cli";
    let cms = namespace(&server, ns).await;
    create(&cms, "one", "1", json!({})).await;
    create(&cms, "two", "1", json!({})).await;
    let up = serve_configmaps(&server, ns, 0).await;
    let uri = format!("xds://{}/{CM}", up.addr);

    let out = tokio::time::timeout(
        WAIT,
        Command::new(BIN)
            .args(["get", &uri, "-o", "name"])
            .env_remove("KUBECONFIG")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("crwatch get ends")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        ["configmap/one", "configmap/two"]
    );

    let out = Command::new(BIN)
        .args(["get", &uri, "-o", "json"])
        .env_remove("KUBECONFIG")
        .output()
        .await
        .unwrap();
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list["items"][0]["data"]["value"], "1");
    assert_eq!(list["items"][0]["metadata"]["namespace"], ns);

    let mut child = Command::new(BIN)
        .args(["get", &uri, "-w", "--diff"])
        .env_remove("KUBECONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = vec![];
    let mut next = async || {
        tokio::time::timeout(WAIT, lines.next_line())
            .await
            .expect("a line within the timeout")
            .unwrap()
            .expect("crwatch still running")
    };
    // Header and the two objects.
    while seen.len() < 3 {
        seen.push(next().await);
    }
    assert!(
        seen[0].contains("NAMESPACE") && seen[1].contains("one") && seen[2].contains("two"),
        "{seen:?}"
    );
    set(&cms, "one", "2").await;
    let mut diff = vec![];
    while !diff.iter().any(|l: &String| l.contains("data.value")) {
        diff.push(next().await);
    }
    let all = diff.join("\n");
    assert!(all.contains("one"), "{all}");
    assert!(all.contains("data.value"), "{all}");
    let _ = child.kill().await;
}

/// A bad URI is refused at once with what to write instead.
#[tokio::test]
async fn crwatch_get_xds_refuses_a_bad_uri() {
    let out = Command::new(BIN)
        .args(["get", "xds://127.0.0.1/v1/ConfigMap"])
        .env_remove("KUBECONFIG")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("expected xds://HOST:PORT/<group>/<version>/<Kind>"),
        "{stderr}"
    );
}

/// TLS with a client certificate (mTLS) and a bearer token: the library client and
/// `crwatch get xds://…?ca_file=…` sync; a wrong token is `UNAUTHENTICATED` (HTTP 401 in the
/// error kind), a missing client certificate fails the handshake; the token is never shown.
#[tokio::test]
async fn tls_client_certificates_and_a_bearer_token() {
    use crwatch::source::{ErrorKind, Source};
    use crwatch_serve::xds::TlsFiles;
    use futures::StreamExt;
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType};

    let server = TestServer::start().await.unwrap();
    let ns = "xds-client-tls";
    let cms = namespace(&server, ns).await;
    create(&cms, "secure", "1", json!({})).await;

    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "xds client test CA");
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let issue = |name: &str| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
        params
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        let cert = params.signed_by(&key, &ca).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let dir = server.dir().to_path_buf();
    let write = |name: &str, content: &str| {
        let p = dir.join(name);
        std::fs::write(&p, content).unwrap();
        p.to_string_lossy().into_owned()
    };
    let ca_file = write("ca.pem", &ca.pem());
    let (server_cert, server_key) = issue("localhost");
    let (c, k) = issue("subscriber");
    let (cert_file, key_file) = (write("client.pem", &c), write("client-key.pem", &k));
    let token_file = write("token", "s3cret-token\n");
    let wrong_token = write("wrong-token", "not-it");

    let ar = ApiResource::erase::<ConfigMap>(&());
    let informer = Informer::new(KubeSource::<DynamicObject>::dynamic(
        server.client(),
        &ar,
        Some(ns),
    ));
    let xds = XdsServer::new(ServerOptions {
        token: Some("s3cret-token".into()),
        ..ServerOptions::default()
    });
    xds.serve_informer(&informer, &ar.api_version, &ar.kind);
    let cancel = CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    informer.start(cancel.clone());
    let listener = bind(0).await;
    let addr = listener.local_addr().unwrap();
    let tls = TlsFiles {
        cert_pem: server_cert.into_bytes(),
        key_pem: server_key.into_bytes(),
        client_ca_pem: Some(ca.pem().into_bytes()),
    };
    let stop = cancel.clone();
    tokio::spawn(async move { xds.serve(listener, Some(tls), stop).await.unwrap() });

    let url = |token: &str, cert: bool| {
        let mut u = format!("xds://{addr}/{CM}?ca_file={ca_file}&token_file={token}");
        if cert {
            u.push_str(&format!("&cert_file={cert_file}&key_file={key_file}"));
        }
        u
    };
    // The library client.
    let source = XdsSource::from_url(&url(&token_file, true)).unwrap();
    assert!(source.describe_endpoint().starts_with("https://"));
    let synced: Informer<DynamicObject> = Informer::new(source);
    synced.start(cancel.clone());
    synced.wait_synced(WAIT).await.unwrap();
    assert_eq!(names(&synced), ["secure"]);

    // The first event of a source, which fails here.
    let first_error = |uri: String| async move {
        let source = XdsSource::from_url(&uri).unwrap();
        let mut events = Box::new(source).events();
        let first = tokio::time::timeout(WAIT, events.next()).await.unwrap().unwrap();
        first.expect_err("the connection fails")
    };
    let e = first_error(url(&wrong_token, true)).await;
    assert!(
        matches!(&e.kind, ErrorKind::Server { code: 401, .. }),
        "{e}: {:?}",
        e.kind
    );
    assert!(e.message.contains("check the bearer token file"), "{e}");
    assert!(
        !e.to_string().contains("not-it") && !e.to_string().contains("s3cret"),
        "{e}"
    );
    let e = first_error(url(&token_file, false)).await;
    assert!(
        // TLS 1.3: the server's alert may come before or after the stream opened.
        matches!(&e.kind, ErrorKind::Transport { cause, .. }
            if cause.contains("CertificateRequired") || cause.contains("closed")),
        "{e}: {:?}",
        e.kind
    );

    // crwatch get through TLS, the client certificate and the token.
    let out = tokio::time::timeout(
        WAIT,
        Command::new(BIN)
            .args(["get", &url(&token_file, true), "-o", "name"])
            .env_remove("KUBECONFIG")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "configmap/secure");
}

/// Against a delta-xDS server crwatch did not write (grpcio + Envoy's xds-protos, scripted in
/// `tests/py/xds_scripted_server.py`): the script checks each request on the wire (node,
/// explicit wildcard, ACK by nonce, NACK with `error_detail` INVALID_ARGUMENT naming the
/// resource, `initial_resource_versions` on the reconnect), and the client's informer ends with
/// the state the script sent.
#[tokio::test]
async fn speaks_the_protocol_to_a_python_xds_server() {
    let python = crwatch_testsupport::python::python()
        .await
        .expect("the Python venv");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/xds_scripted_server.py");
    let mut child = Command::new(python)
        .arg(script)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("python starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("a line from the script within 60 s")
            .unwrap()
            .expect("the script is still running")
    };
    let first = next().await;
    let port = first
        .strip_prefix("listening ")
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"));
    let source = XdsSource::new(format!("http://127.0.0.1:{port}"), CM)
        .node_id("scripted")
        .backoff(Duration::from_millis(50), Duration::from_millis(200));
    let stats = source.stats();
    let informer: Informer<DynamicObject> = Informer::new(source);
    let cancel = CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    informer.start(cancel.clone());
    let mut checks = vec![];
    loop {
        let line = next().await;
        assert!(!line.starts_with("FAIL"), "{line}; before: {checks:#?}");
        if line == "SCRIPT OK" {
            break;
        }
        checks.push(line);
    }
    assert_eq!(checks.len(), 16, "{checks:#?}");
    until("the script's final state", || {
        names(&informer) == ["a", "c"] && value(&informer, "default", "a").as_deref() == Some("2")
    })
    .await;
    assert_eq!(get(&stats.connects), 2);
    assert_eq!((get(&stats.acks), get(&stats.nacks)), (3, 1));
    let _ = child.kill().await;
}

/// A slow consumer reads nothing ahead: while its informer is stuck in a handler, 200 changes
/// on the API server cost it no response beyond the one being handled; once it goes on, it
/// gets the latest state in one or two responses (coalesced by the server), not 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_consumer_reads_nothing_ahead_and_gets_the_latest_state() {
    use crwatch::informer::HandlerFns;
    use std::sync::{Arc, Condvar, Mutex};

    let server = TestServer::start().await.unwrap();
    let ns = "xds-client-slow";
    let cms = namespace(&server, ns).await;
    create(&cms, "hot", "0", json!({})).await;
    let ar = ApiResource::erase::<ConfigMap>(&());
    let upstream = Informer::new(KubeSource::<DynamicObject>::dynamic(
        server.client(),
        &ar,
        Some(ns),
    ));
    let up = serve(upstream.clone(), &ar.api_version, &ar.kind, 0).await;

    // A gate the client's handler waits at while it is closed.
    let gate = Arc::new((Mutex::new(true), Condvar::new()));
    let (handler_gate, entered) = (gate.clone(), Arc::new(std::sync::atomic::AtomicBool::new(false)));
    let handler_entered = entered.clone();
    let source = client(up.addr);
    let stats = source.stats();
    let informer: Informer<DynamicObject> = Informer::new(source);
    informer.add_handler(HandlerFns::new().on_update(move |_, _, _| {
        handler_entered.store(true, std::sync::atomic::Ordering::SeqCst);
        // block_in_place: a handler that blocks its worker thread would strand the task in
        // that worker's LIFO slot (which no other worker steals): the API server's answer to
        // the next write, and the test with it (seen hanging under CI load).
        tokio::task::block_in_place(|| {
            let (open, cv) = &*handler_gate;
            let mut open = open.lock().unwrap();
            while !*open {
                open = cv.wait(open).unwrap();
            }
        });
    }));
    let cancel = CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    informer.start(cancel.clone());
    informer.wait_synced(WAIT).await.unwrap();
    assert_eq!(get(&stats.responses), 1);

    *gate.0.lock().unwrap() = false;
    set(&cms, "hot", "1").await;
    until("the handler is stuck", || {
        entered.load(std::sync::atomic::Ordering::SeqCst)
    })
    .await;
    for i in 2..=200 {
        set(&cms, "hot", &i.to_string()).await;
    }
    until("the server has the last change", || {
        upstream
            .store()
            .get(&ObjectKey::new(Some(ns), "hot"))
            .and_then(|o| {
                o.data
                    .pointer("/data/value")
                    .and_then(|v| v.as_str())
                    .map(str::to_string)
            })
            .as_deref()
            == Some("200")
    })
    .await;
    assert_eq!(
        get(&stats.responses),
        2,
        "nothing read beyond the response being handled"
    );

    let (open, cv) = &*gate;
    *open.lock().unwrap() = true;
    cv.notify_all();
    until("the latest state", || {
        value(&informer, ns, "hot").as_deref() == Some("200")
    })
    .await;
    let responses = get(&stats.responses);
    assert!(responses <= 4, "{responses} responses for 200 changes");
    eprintln!(
        "200 changes reached the slow consumer in {} responses",
        responses - 1
    );
}
