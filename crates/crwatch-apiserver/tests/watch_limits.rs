//! Memory bounds of history and watches: history is bounded in bytes (older resourceVersions
//! get 410 Gone), a watcher that stops reading is closed once its bounded queue stays full
//! (its client sees the stream end and re-watches from its last resourceVersion). `memory_with_stuck_watchers` (ignored) measures
//! the server binary's RSS for the scenario: `cargo test -p crwatch-apiserver --test
//! watch_limits -- --ignored --nocapture`.

use std::collections::BTreeMap;
use std::time::Duration;

use crwatch_apiserver::{Config, TestServer};
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams, WatchEvent, WatchParams};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{Instant, timeout};

const WAIT: Duration = Duration::from_secs(30);

fn cm(name: &str, payload: &str) -> ConfigMap {
    let mut c = ConfigMap::default();
    c.metadata.name = Some(name.into());
    c.data = Some(BTreeMap::from([("v".to_string(), payload.to_string())]));
    c
}

async fn namespace(server: &TestServer, name: &str) {
    server
        .server()
        .apply(serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}))
        .await
        .expect("namespace");
}

/// A watch over plain HTTP whose client reads the response headers and then nothing, with a
/// tiny receive buffer so the server's side fills up after little data.
struct StuckWatch {
    stream: TcpStream,
    /// Body bytes read along with the headers.
    body: Vec<u8>,
}

impl StuckWatch {
    async fn open(http_url: &str, token: &str, path: &str) -> Self {
        let addr = http_url.trim_start_matches("http://").parse().expect("address");
        let socket = TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("receive buffer");
        let mut stream = socket.connect(addr).await.expect("connect");
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {http_url}\r\nAuthorization: Bearer {token}\r\nAccept: application/json\r\n\r\n"
        );
        stream.write_all(req.as_bytes()).await.expect("request");
        let mut got = vec![];
        let mut buf = [0u8; 1024];
        let end = loop {
            let n = timeout(WAIT, stream.read(&mut buf))
                .await
                .expect("headers in time")
                .expect("read");
            assert!(n > 0, "connection closed before the headers");
            got.extend_from_slice(&buf[..n]);
            if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        let head = String::from_utf8_lossy(&got[..end]).to_string();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(
            head.to_ascii_lowercase().contains("transfer-encoding: chunked"),
            "{head}"
        );
        StuckWatch {
            stream,
            body: got[end..].to_vec(),
        }
    }

    /// Now read: every event left, until the chunked body ends. Panics when it does not end
    /// within `limit` (the watch was never closed).
    async fn read_to_end(mut self, limit: Duration) -> Vec<Value> {
        let deadline = Instant::now() + limit;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if let Some(events) = decode_chunked(&self.body) {
                return events;
            }
            let n = tokio::time::timeout_at(deadline, self.stream.read(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("the stuck watch was not closed within {limit:?}"))
                .expect("read");
            assert!(n > 0, "connection closed without ending the chunked body");
            self.body.extend_from_slice(&buf[..n]);
        }
    }
}

/// The events of a complete chunked body, or `None` while it has not ended.
fn decode_chunked(mut b: &[u8]) -> Option<Vec<Value>> {
    let mut data = vec![];
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n")?;
        let size = usize::from_str_radix(std::str::from_utf8(&b[..eol]).ok()?.trim(), 16).ok()?;
        b = &b[eol + 2..];
        if size == 0 {
            break;
        }
        if b.len() < size + 2 {
            return None;
        }
        data.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
    Some(
        data.split(|c| *c == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).expect("one JSON event per line"))
            .collect(),
    )
}

/// Every event of a response body, until it ends; panics when it does not end in `limit`.
async fn read_response_to_end(mut resp: reqwest::Response, limit: Duration) -> Vec<Value> {
    let deadline = Instant::now() + limit;
    let mut data = vec![];
    while let Some(chunk) = tokio::time::timeout_at(deadline, resp.chunk())
        .await
        .unwrap_or_else(|_| panic!("the stuck HTTP/2 watch was not closed within {limit:?}"))
        .expect("body")
    {
        data.extend_from_slice(&chunk);
    }
    data.split(|c| *c == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).expect("one JSON event per line"))
        .collect()
}

fn name(e: &Value) -> String {
    e["object"]["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_watchers_are_closed_and_resume_without_gaps() {
    const N: usize = 80;
    const STUCK: usize = 4;
    let server = TestServer::with_config(Config {
        watch_buffer_bytes: 1 << 20,
        ..Config::default()
    })
    .await
    .expect("server");
    namespace(&server, "wl-stuck").await;
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "wl-stuck");
    let rv = api
        .list_metadata(&Default::default())
        .await
        .expect("list")
        .metadata
        .resource_version
        .expect("rv");
    let http = server.server().http_url().expect("plain HTTP").to_string();
    let path = format!("/api/v1/namespaces/wl-stuck/configmaps?watch=true&resourceVersion={rv}");
    let mut stuck = vec![];
    for _ in 0..STUCK {
        stuck.push(StuckWatch::open(&http, server.server().token(), &path).await);
    }
    // And one over HTTP/2 (prior knowledge), whose client never polls the body: its flow
    // control windows close instead of a socket buffer.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("client");
    let stuck_h2 = h2
        .get(format!("{http}{path}"))
        .bearer_auth(server.server().token())
        .send()
        .await
        .expect("HTTP/2 watch");
    assert_eq!(stuck_h2.version(), http::Version::HTTP_2);
    let mut healthy = api
        .watch(&WatchParams::default().timeout(300), &rv)
        .await
        .expect("healthy watch")
        .boxed();
    let reader = tokio::spawn(async move {
        let mut names = vec![];
        while names.len() < N {
            match healthy.next().await {
                Some(Ok(WatchEvent::Added(c))) => names.push(c.metadata.name.unwrap_or_default()),
                Some(Ok(WatchEvent::Bookmark(_))) => {}
                other => panic!("healthy watcher got {other:?} after {}", names.len()),
            }
        }
        names
    });

    // 80 objects of 200 KB: 16 MB per watcher, far past a 1 MiB queue and the socket buffers.
    let payload = "x".repeat(200 * 1024);
    for i in 0..N {
        timeout(
            WAIT,
            api.create(&PostParams::default(), &cm(&format!("cm-{i:03}"), &payload)),
        )
        .await
        .expect("writes are never blocked by stuck watchers")
        .expect("create");
    }
    let want: Vec<String> = (0..N).map(|i| format!("cm-{i:03}")).collect();
    assert_eq!(
        timeout(WAIT, reader)
            .await
            .expect("healthy in time")
            .expect("join"),
        want,
        "the healthy watcher saw everything"
    );

    let mut bodies = vec![];
    for watch in stuck {
        // The server closed it: the body ends although the client read nothing so far.
        bodies.push(watch.read_to_end(WAIT).await);
    }
    bodies.push(read_response_to_end(stuck_h2, WAIT).await);
    for events in bodies {
        let names: Vec<String> = events.iter().map(name).collect();
        assert!(
            !names.is_empty() && names.len() < N,
            "closed after {} of {N}",
            names.len()
        );
        assert_eq!(names[..], want[..names.len()], "an in-order prefix, without gaps");
        // The client resumes from the last resourceVersion it got, as client-go does.
        let last_rv = events
            .last()
            .and_then(|e| e["object"]["metadata"]["resourceVersion"].as_str())
            .expect("rv")
            .to_string();
        let mut again = api
            .watch(&WatchParams::default().timeout(60), &last_rv)
            .await
            .expect("re-watch")
            .boxed();
        let mut rest = vec![];
        while names.len() + rest.len() < N {
            match timeout(WAIT, again.next()).await.expect("rest in time") {
                Some(Ok(WatchEvent::Added(c))) => rest.push(c.metadata.name.unwrap_or_default()),
                Some(Ok(WatchEvent::Bookmark(_))) => {}
                other => panic!("re-watch got {other:?}"),
            }
        }
        assert_eq!(rest[..], want[names.len()..], "the rest, after re-watching");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_bounded_in_bytes() {
    let server = TestServer::with_config(Config {
        history_bytes: 1 << 20,
        ..Config::default()
    })
    .await
    .expect("server");
    namespace(&server, "wl-history").await;
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "wl-history");
    let payload = "y".repeat(100 * 1024);
    let first = api
        .create(&PostParams::default(), &cm("big", &payload))
        .await
        .expect("create");
    let first_rv = first.metadata.resource_version.clone().expect("rv");
    let mut cur = first;
    for i in 0..20 {
        let mut next = cur.clone();
        next.data = Some(BTreeMap::from([("v".to_string(), format!("{i}{payload}"))]));
        cur = api
            .replace("big", &PostParams::default(), &next)
            .await
            .expect("update");
    }
    // 21 versions of 100 KB do not fit in 1 MiB: the first is compacted, as past --history.
    let mut old = api
        .watch(&WatchParams::default(), &first_rv)
        .await
        .expect("watch")
        .boxed();
    match timeout(WAIT, old.next()).await.expect("answer in time") {
        Some(Ok(WatchEvent::Error(e))) => {
            assert_eq!(e.code, 410);
            assert!(
                e.message.starts_with("too old resource version: "),
                "{}",
                e.message
            );
        }
        other => panic!("expected 410 Gone, got {other:?}"),
    }
    // The newest changes are still there.
    let mut recent = api
        .watch(
            &WatchParams::default(),
            &(server.server().revision() - 2).to_string(),
        )
        .await
        .expect("watch")
        .boxed();
    match timeout(WAIT, recent.next()).await.expect("event in time") {
        Some(Ok(WatchEvent::Modified(c))) => assert_eq!(c.metadata.name.as_deref(), Some("big")),
        other => panic!("expected the newest change, got {other:?}"),
    }
}

/// Peak and current RSS (KiB) of a process, from /proc.
fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let field = |k: &str| {
        status
            .lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// The figure: RSS of the server binary with 4 stuck watchers and 300 updates of a
/// 1 MB ConfigMap. `CRWATCH_APISERVER_BIN` picks another binary (to compare builds),
/// `CRWATCH_MEASURE_ARGS` adds flags (like `--history-bytes 16Mi`), `CRWATCH_MEASURE_STUCK`
/// sets the number of stuck watchers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement: run with --ignored --nocapture"]
async fn memory_with_stuck_watchers() {
    const UPDATES: usize = 300;
    let bin = std::env::var("CRWATCH_APISERVER_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_crwatch-apiserver").to_string());
    let dir = tempfile::tempdir().expect("tempdir");
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port()
    };
    let (https, http) = (free(), free());
    let token = "measure-token";
    let mut child = tokio::process::Command::new(&bin)
        .args(["--port", &https.to_string(), "--http-port", &http.to_string()])
        .args(
            std::env::var("CRWATCH_MEASURE_ARGS")
                .unwrap_or_default()
                .split_whitespace(),
        )
        .arg("--kubeconfig")
        .arg(dir.path().join("kubeconfig"))
        .env("CRWATCH_APISERVER_TOKEN", token)
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start the server");
    let pid = child.id().expect("pid");
    let base = format!("http://127.0.0.1:{http}");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::new();
    let cms = format!("{base}/api/v1/namespaces/default/configmaps");
    let ready = Instant::now();
    loop {
        let ok = client.get(&cms).bearer_auth(token).send().await;
        if ok.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        assert!(ready.elapsed() < WAIT, "server did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let idle = rss_kib(pid);
    let payload = "z".repeat(1000 * 1000);
    let mut obj = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "big"}, "data": {"v": payload}});
    let created: Value = client
        .post(&cms)
        .bearer_auth(token)
        .json(&obj)
        .send()
        .await
        .expect("create")
        .json()
        .await
        .expect("created");
    let rv = created["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .to_string();
    let path = format!("/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={rv}");
    let mut stuck = vec![];
    let watchers: usize = std::env::var("CRWATCH_MEASURE_STUCK")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(4);
    for _ in 0..watchers {
        stuck.push(StuckWatch::open(&base, token, &path).await);
    }
    let started = Instant::now();
    for i in 0..UPDATES {
        obj["data"]["v"] = Value::String(format!("{i:03}{}", &payload[3..]));
        let resp = client
            .put(format!("{cms}/big"))
            .bearer_auth(token)
            .json(&obj)
            .send()
            .await
            .expect("update");
        assert!(resp.status().is_success(), "update {i}: {}", resp.status());
    }
    let took = started.elapsed();
    let after = rss_kib(pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let settled = rss_kib(pid);
    println!(
        "{bin}: idle RSS {} MiB; after {UPDATES} updates of 1 MB with {watchers} stuck watchers ({took:.1?}): RSS {} MiB, peak {} MiB; 2 s later RSS {} MiB",
        idle.1 / 1024,
        after.1 / 1024,
        after.0 / 1024,
        settled.1 / 1024
    );
    drop(stuck);
    let _ = child.kill().await;
}
