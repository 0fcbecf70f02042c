//! The real server's limits and answers to hostile or malformed requests (issue 10): request
//! and object size, JSON patch operation and copy limits (dry runs included), ConfigMap and
//! Secret data size, nesting depth, slow connections (header-read and TLS-handshake
//! timeouts), namespace protection, numeric settings, query parameter conversion, percent
//! decoding of paths, and resourceVersions the server has not reached.

use std::time::{Duration, Instant};

use crwatch_apiserver::{ApiServer, Config, ServerError, TestServer};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A raw response: code and JSON body (a string when the body is not JSON).
struct Raw {
    code: u16,
    body: Value,
}

async fn raw(server: &TestServer, method: &str, path: &str, content_type: &str, body: Vec<u8>) -> Raw {
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::ACCEPT, "application/json")
        .body(kube::client::Body::from(body))
        .expect("request");
    let resp = server.client().send(req).await.expect("send");
    let code = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let body = crwatch_apiserver::decode::from_slice_deep(&bytes)
        .unwrap_or_else(|_| json!(String::from_utf8_lossy(&bytes)));
    Raw { code, body }
}

/// A JSON patch (`ops` is a list of operations).
async fn json_patch(server: &TestServer, path: &str, ops: &[Value]) -> Raw {
    let body = serde_json::to_vec(ops).expect("ops");
    raw(server, "PATCH", path, "application/json-patch+json", body).await
}

/// A GET over plain HTTP with reqwest: kube's client retries 504s by itself.
async fn plain_get(server: &TestServer, path: &str) -> Raw {
    let url = format!("{}{path}", server.server().http_url().expect("plain HTTP"));
    let resp = reqwest::Client::new()
        .get(url)
        .bearer_auth(server.server().token())
        .send()
        .await
        .expect("send");
    let code = resp.status().as_u16();
    let bytes = resp.bytes().await.expect("body");
    let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| json!(String::from_utf8_lossy(&bytes)));
    Raw { code, body }
}

async fn get(server: &TestServer, path: &str) -> Raw {
    raw(server, "GET", path, "application/json", vec![]).await
}

fn assert_status(r: &Raw, code: u16, reason: Option<&str>, message: &str) {
    assert_eq!(r.code, code, "{}", r.body);
    assert_eq!(r.body["kind"], "Status", "{}", r.body);
    assert_eq!(r.body["code"], code, "{}", r.body);
    assert_eq!(r.body.get("reason").and_then(Value::as_str), reason, "{}", r.body);
    assert_eq!(r.body["message"], message, "{}", r.body);
}

async fn create_configmap(server: &TestServer, name: &str) -> Value {
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"a": "x"}});
    let r = raw(
        server,
        "POST",
        "/api/v1/namespaces/default/configmaps",
        "application/json",
        cm.to_string().into_bytes(),
    )
    .await;
    assert_eq!(r.code, 201, "{}", r.body);
    r.body
}

/// A CRD whose `spec` keeps any fields, so custom resources can be as big and deep as a
/// client makes them.
async fn free_form_crd(server: &TestServer) {
    let crd = json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "blobs.example.com"},
        "spec": {"group": "example.com", "scope": "Namespaced",
            "names": {"plural": "blobs", "singular": "blob", "kind": "Blob"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}}}]}
    });
    server.server().apply(crd).await.expect("CRD");
    // The CRD's resources are served once it is established.
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(server, "/apis/example.com/v1/namespaces/default/blobs")
        .await
        .code
        != 200
    {
        assert!(Instant::now() < deadline, "blobs never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const BLOBS: &str = "/apis/example.com/v1/namespaces/default/blobs";

// ------------------------------------------------------------------------------------------------
// Why 4 / Deliver 2: request and object size, JSON patch limits
// ------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_over_3_mib_get_the_real_413() {
    let server = TestServer::start().await.unwrap();
    let big = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "big"},
        "data": {"a": "x".repeat(3 * 1024 * 1024)}});
    let r = raw(
        &server,
        "POST",
        "/api/v1/namespaces/default/configmaps",
        "application/json",
        big.to_string().into_bytes(),
    )
    .await;
    assert_status(
        &r,
        413,
        Some("RequestEntityTooLarge"),
        "Request entity too large: limit is 3145728",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_patch_operation_and_copy_limits_hold_in_dry_runs_too() {
    let server = TestServer::start().await.unwrap();
    create_configmap(&server, "p").await;
    let path = "/api/v1/namespaces/default/configmaps/p";
    for dry in ["", "?dryRun=All"] {
        let many: Vec<Value> = (0..10_001)
            .map(|_| json!({"op": "test", "path": "/data/a", "value": "x"}))
            .collect();
        let r = json_patch(&server, &format!("{path}{dry}"), &many).await;
        assert_status(
            &r,
            413,
            Some("RequestEntityTooLarge"),
            "Request entity too large: The allowed maximum operations in a JSON patch is 10000, got 10001",
        );
        // The 1.9 KB patch: each copy doubles the object. It used to answer 541 MB.
        let mut doubling = vec![
            json!({"op": "add", "path": "/data/b", "value": "y".repeat(1000)}),
            json!({"op": "add", "path": "/spec", "value": {"l": ["z"]}}),
        ];
        for _ in 0..40 {
            doubling.push(json!({"op": "copy", "from": "/data", "path": "/data2"}));
            doubling.push(json!({"op": "copy", "from": "/spec/l", "path": "/spec/l/-"}));
        }
        let r = json_patch(&server, &format!("{path}{dry}"), &doubling).await;
        assert_status(
            &r,
            422,
            Some("Invalid"),
            "the server rejected our request due to an error in our request",
        );
    }
    // Nothing changed.
    let cm = get(&server, path).await;
    assert_eq!(cm.body["data"], json!({"a": "x"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doubling_copies_of_a_list_stop_at_the_copy_limit() {
    let server = TestServer::start().await.unwrap();
    free_form_crd(&server).await;
    let blob = json!({"apiVersion": "example.com/v1", "kind": "Blob", "metadata": {"name": "b"},
        "spec": {"l": ["x".repeat(1024)]}});
    let r = raw(
        &server,
        "POST",
        BLOBS,
        "application/json",
        blob.to_string().into_bytes(),
    )
    .await;
    assert_eq!(r.code, 201, "{}", r.body);
    // 1 KiB doubled 12 times is 4 MiB of copies: over the 3 MiB limit at the 12th.
    let doubling: Vec<Value> = (0..12)
        .map(|_| json!({"op": "copy", "from": "/spec/l", "path": "/spec/l/-"}))
        .collect();
    let r = json_patch(&server, &format!("{BLOBS}/b?dryRun=All"), &doubling).await;
    assert_eq!(r.code, 422, "{}", r.body);
    // Ten doublings (1 MiB of copies) are fine in a dry run (nothing is stored) ...
    let r = json_patch(&server, &format!("{BLOBS}/b?dryRun=All"), &doubling[..10]).await;
    assert_eq!(r.code, 200, "{}", r.body);
    // (Each copy appends the whole list to itself: 11 elements, twice the size each time.)
    assert_eq!(r.body["spec"]["l"].as_array().unwrap().len(), 11);
    // ... and store too (about 1 MiB).
    let r = json_patch(&server, &format!("{BLOBS}/b"), &doubling[..10]).await;
    assert_eq!(r.code, 200, "{}", r.body);
    // One more doubling (2 MiB) is more than etcd stores: the real server's 500.
    let r = json_patch(&server, &format!("{BLOBS}/b"), &doubling[..1]).await;
    assert_status(&r, 500, None, "etcdserver: request is too large");
    // A merge patch of 2 MiB hits the same limit.
    let merge = json!({"spec": {"m": "y".repeat(2 * 1024 * 1024)}});
    let r = raw(
        &server,
        "PATCH",
        &format!("{BLOBS}/b"),
        "application/merge-patch+json",
        merge.to_string().into_bytes(),
    )
    .await;
    assert_status(&r, 500, None, "etcdserver: request is too large");
    let stored = get(&server, &format!("{BLOBS}/b")).await;
    assert_eq!(stored.body["spec"]["l"].as_array().unwrap().len(), 11);
    assert!(stored.body["spec"].get("m").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmap_and_secret_data_is_limited_to_1_mib_as_kubectl_shows() {
    let server = TestServer::start().await.unwrap();
    let file = server.dir().join("big.txt");
    std::fs::write(&file, "x".repeat(1024 * 1024 + 1)).unwrap();
    let out = server
        .kubectl()
        .args(["create", "configmap", "big", "--from-file"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    // kubectl's `create configmap` wording around the server's message.
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "error: failed to create configmap: ConfigMap \"big\" is invalid: []: Too long: may not be more than 1048576 bytes"
    );
    let out = server
        .kubectl()
        .args(["create", "secret", "generic", "big", "--from-file"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "error: failed to create secret Secret \"big\" is invalid: data: Too long: may not be more than 1048576 bytes"
    );
    // Exactly 1 MiB is fine.
    std::fs::write(&file, "x".repeat(1024 * 1024)).unwrap();
    let out = server
        .kubectl()
        .args(["create", "configmap", "fits", "--from-file"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

// ------------------------------------------------------------------------------------------------
// Why 3: nesting depth
// ------------------------------------------------------------------------------------------------

fn nested(levels: usize) -> Value {
    let text = "{\"a\":".repeat(levels) + "\"leaf\"" + &"}".repeat(levels);
    crwatch_apiserver::decode::from_slice_deep(text.as_bytes()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_up_to_the_depth_limit_work_everywhere_and_deeper_ones_are_refused() {
    use crwatch_apiserver::decode::{MAX_DEPTH, depth, drop_deep};
    let server = TestServer::start().await.unwrap();
    free_form_crd(&server).await;
    // The object itself, metadata and spec are three levels: the deepest accepted object.
    let blob = |name: &str, levels: usize| {
        json!({"apiVersion": "example.com/v1", "kind": "Blob", "metadata": {"name": name},
            "spec": {"deep": nested(levels)}})
    };
    let ok = blob("deep", MAX_DEPTH - 2);
    assert_eq!(depth(&ok), MAX_DEPTH);
    let r = raw(
        &server,
        "POST",
        BLOBS,
        "application/json",
        ok.to_string().into_bytes(),
    )
    .await;
    assert_eq!(r.code, 201, "{}", r.body);
    drop_deep(r.body);
    // Read back, listed, patched (merge and JSON patch), dry-run updated and watched.
    let r = get(&server, &format!("{BLOBS}/deep")).await;
    assert_eq!(depth(&r.body["spec"]), MAX_DEPTH - 1);
    drop_deep(r.body);
    let r = get(&server, BLOBS).await;
    assert_eq!(r.code, 200);
    drop_deep(r.body);
    let r = raw(
        &server,
        "PATCH",
        &format!("{BLOBS}/deep"),
        "application/merge-patch+json",
        json!({"spec": {"deep": nested(MAX_DEPTH - 3)}})
            .to_string()
            .into_bytes(),
    )
    .await;
    assert_eq!(r.code, 200, "{}", r.body);
    drop_deep(r.body);
    let r = raw(
        &server,
        "PATCH",
        &format!("{BLOBS}/deep"),
        "application/json-patch+json",
        json!([{"op": "copy", "from": "/spec/deep", "path": "/spec/copy"}])
            .to_string()
            .into_bytes(),
    )
    .await;
    assert_eq!(r.code, 200, "{}", r.body);
    drop_deep(r.body);
    let r = get(&server, &format!("{BLOBS}?watch=true&timeoutSeconds=1")).await;
    assert_eq!(r.code, 200);
    // What a client reads back (managedFields mirror the deepest field five levels further
    // down) it can send back: kubectl replace, client-go Update.
    let read = get(&server, &format!("{BLOBS}/deep")).await;
    assert!(
        depth(&read.body) > MAX_DEPTH,
        "managedFields nest deeper than the object"
    );
    let r = raw(
        &server,
        "PUT",
        &format!("{BLOBS}/deep"),
        "application/json",
        read.body.to_string().into_bytes(),
    )
    .await;
    assert_eq!(r.code, 200, "{}", r.body);
    drop_deep(r.body);
    drop_deep(read.body);
    // JSON patch operations that each nest a value deeper inside the last one are stopped
    // before the object outgrows what the server can walk.
    let mut ops = vec![];
    let mut path = "/spec/n".to_string();
    for _ in 0..40 {
        ops.push(json!({"op": "add", "path": path, "value": nested(60)}));
        path.push_str(&"/a".repeat(60));
    }
    let r = json_patch(&server, &format!("{BLOBS}/deep"), &ops).await;
    assert_eq!(r.code, 422, "{}", r.body);
    assert_eq!(get(&server, "/version").await.code, 200, "the server is still up");
    // One level more is refused with the error Go's JSON decoder gives past its limit.
    let r = raw(
        &server,
        "POST",
        BLOBS,
        "application/json",
        blob("deeper", MAX_DEPTH - 1).to_string().into_bytes(),
    )
    .await;
    assert_eq!(r.code, 400, "{}", r.body);
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .ends_with("invalid character '{' exceeded max depth"),
        "{}",
        r.body
    );
    let r = raw(
        &server,
        "PATCH",
        &format!("{BLOBS}/deep"),
        "application/merge-patch+json",
        json!({"spec": {"deep": nested(MAX_DEPTH)}})
            .to_string()
            .into_bytes(),
    )
    .await;
    assert_eq!(r.code, 400, "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deep_unknown_field_of_a_configmap_is_dropped_as_the_real_server_prunes_it() {
    let server = TestServer::start().await.unwrap();
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "deep"},
        "data": {"a": "b"}, "extra": nested(126)});
    let r = raw(
        &server,
        "POST",
        "/api/v1/namespaces/default/configmaps",
        "application/json",
        cm.to_string().into_bytes(),
    )
    .await;
    assert_eq!(r.code, 201, "{}", r.body);
    assert!(r.body.get("extra").is_none(), "{}", r.body);
    let stored = get(&server, "/api/v1/namespaces/default/configmaps/deep").await;
    assert!(stored.body.get("extra").is_none(), "{}", stored.body);
}

// ------------------------------------------------------------------------------------------------
// Why 7: slow connections
// ------------------------------------------------------------------------------------------------

/// Whether the server closes `conn` within `within` (reads see EOF or a reset).
async fn closed_within<S: tokio::io::AsyncRead + Unpin>(conn: &mut S, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // A 408 or similar before closing is fine.
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_trickling_connections_are_closed_after_the_header_timeout() {
    let server = TestServer::with_config(Config {
        header_read_timeout: Duration::from_millis(300),
        tls_handshake_timeout: Duration::from_millis(300),
        ..Config::default()
    })
    .await
    .unwrap();
    let http_addr = server
        .server()
        .http_url()
        .unwrap()
        .trim_start_matches("http://")
        .to_string();
    let https_addr = server.server().url().trim_start_matches("https://").to_string();
    // Slowloris, three ways: nothing at all, half a header, and no TLS handshake.
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(tokio::net::TcpStream::connect(&http_addr).await.unwrap());
    }
    let mut partial = tokio::net::TcpStream::connect(&http_addr).await.unwrap();
    partial
        .write_all(b"GET /version HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut no_handshake = tokio::net::TcpStream::connect(&https_addr).await.unwrap();
    // HTTP/2 preface begun but never finished.
    let mut h2 = tokio::net::TcpStream::connect(&http_addr).await.unwrap();
    h2.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    for c in &mut silent {
        assert!(
            closed_within(c, Duration::from_secs(5)).await,
            "an idle connection stayed open"
        );
    }
    assert!(
        closed_within(&mut partial, Duration::from_secs(5)).await,
        "half a header stayed open"
    );
    assert!(
        closed_within(&mut no_handshake, Duration::from_secs(5)).await,
        "no handshake stayed open"
    );
    assert!(
        closed_within(&mut h2, Duration::from_secs(5)).await,
        "half a preface stayed open"
    );
    // A real client is not affected, even when its requests take longer than the timeout
    // (a watch) or it comes back after a pause on the same connection.
    let r = get(
        &server,
        "/api/v1/namespaces/default/configmaps?watch=true&timeoutSeconds=1",
    )
    .await;
    assert_eq!(r.code, 200);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(get(&server, "/version").await.code, 200);
}

// ------------------------------------------------------------------------------------------------
// Why 14 / Deliver 4: namespace protection
// ------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_cannot_be_deleted_as_a_collection_nor_the_system_ones_at_all() {
    let server = TestServer::start().await.unwrap();
    let r = raw(
        &server,
        "DELETE",
        "/api/v1/namespaces",
        "application/json",
        vec![],
    )
    .await;
    assert_status(
        &r,
        405,
        Some("MethodNotAllowed"),
        "the server does not allow this method on the requested resource",
    );
    for ns in ["default", "kube-system", "kube-public"] {
        let out = server
            .kubectl()
            .args(["delete", "namespace", ns])
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert_eq!(
            String::from_utf8_lossy(&out.stderr).trim(),
            format!(
                "Error from server (Forbidden): namespaces \"{ns}\" is forbidden: this namespace may not be deleted"
            )
        );
        let r = raw(
            &server,
            "DELETE",
            &format!("/api/v1/namespaces/{ns}?dryRun=All"),
            "application/json",
            vec![],
        )
        .await;
        assert_eq!(r.code, 403, "{}", r.body);
        assert_eq!(r.body["details"], json!({"name": ns, "kind": "namespaces"}));
    }
    let r = get(&server, "/api/v1/namespaces").await;
    let names: Vec<&str> = r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["metadata"]["name"].as_str())
        .collect();
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert!(names.contains(&ns), "{names:?}");
    }
    // kube-node-lease is not immortal; nor is any other namespace. Objects cannot go into a
    // namespace that does not exist.
    let out = server
        .kubectl()
        .args(["delete", "namespace", "kube-node-lease"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = server
        .kubectl()
        .args(["create", "configmap", "x", "-n", "nowhere"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "error: failed to create configmap: namespaces \"nowhere\" not found"
    );
}

// ------------------------------------------------------------------------------------------------
// Why 15: numeric settings
// ------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_range_settings_are_refused_with_a_clear_error_not_a_panic() {
    let bad = [
        Config {
            bookmark_interval: Duration::from_secs(u64::MAX),
            ..Config::default()
        },
        Config {
            bookmark_interval: Duration::ZERO,
            ..Config::default()
        },
        Config {
            history_window: 0,
            ..Config::default()
        },
        Config {
            watch_buffer: usize::MAX,
            ..Config::default()
        },
        Config {
            max_body_bytes: 0,
            ..Config::default()
        },
        Config {
            history_bytes: 0,
            ..Config::default()
        },
        Config {
            watch_buffer_bytes: 0,
            ..Config::default()
        },
        Config {
            header_read_timeout: Duration::MAX,
            ..Config::default()
        },
    ];
    for config in bad {
        match ApiServer::start(config).await {
            Err(ServerError::Config(m)) => assert!(m.contains("it must be"), "{m}"),
            Err(e) => panic!("unexpected error: {e}"),
            Ok(_) => panic!("an out-of-range configuration started"),
        }
    }
    let err = ApiServer::start(Config {
        bookmark_interval: Duration::from_secs(u64::MAX),
        ..Config::default()
    })
    .await
    .err()
    .unwrap();
    assert_eq!(
        err.to_string(),
        "invalid configuration: bookmark_interval is 18446744073709551615s: it must be between 1ms and 86400s"
    );
    for (flag, value) in [
        ("--bookmark-interval", "18446744073709551615"),
        ("--bookmark-interval", "0"),
        ("--history", "0"),
        ("--history", "99999999999"),
        ("--port", "70000"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_crwatch-apiserver"))
            .args([flag, value])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{flag} {value}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("invalid value '{value}' for '{flag}")),
            "{flag} {value}: {stderr}"
        );
    }
}

// ------------------------------------------------------------------------------------------------
// Why 16: query parameters and paths
// ------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_integer_parameters_get_the_parameter_codecs_400() {
    let server = TestServer::start().await.unwrap();
    create_configmap(&server, "q").await;
    let cms = "/api/v1/namespaces/default/configmaps";
    for (query, message) in [
        ("limit=abc", "strconv.ParseInt: parsing \"abc\": invalid syntax"),
        ("limit=1.5", "strconv.ParseInt: parsing \"1.5\": invalid syntax"),
        (
            "limit=99999999999999999999",
            "strconv.ParseInt: parsing \"99999999999999999999\": value out of range",
        ),
        (
            "timeoutSeconds=abc",
            "strconv.ParseInt: parsing \"abc\": invalid syntax",
        ),
        (
            "watch=true&timeoutSeconds=x",
            "strconv.ParseInt: parsing \"x\": invalid syntax",
        ),
    ] {
        let r = get(&server, &format!("{cms}?{query}")).await;
        assert_status(&r, 400, Some("BadRequest"), message);
    }
    let r = raw(
        &server,
        "DELETE",
        &format!("{cms}/q?gracePeriodSeconds=soon"),
        "application/json",
        vec![],
    )
    .await;
    assert_status(
        &r,
        400,
        Some("BadRequest"),
        "strconv.ParseInt: parsing \"soon\": invalid syntax",
    );
    // A negative limit is no limit; a negative timeout ends a watch at once.
    let r = get(&server, &format!("{cms}?limit=-1")).await;
    assert_eq!(r.code, 200);
    assert_eq!(r.body["items"].as_array().unwrap().len(), 1);
    let started = Instant::now();
    let r = get(&server, &format!("{cms}?watch=true&timeoutSeconds=-5")).await;
    assert_eq!(r.code, 200);
    assert_eq!(r.body, json!(""));
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_segments_are_percent_decoded() {
    let server = TestServer::start().await.unwrap();
    create_configmap(&server, "my-cm").await;
    let r = get(&server, "/api/v1/namespaces/d%65fault/configmaps/my%2Dcm").await;
    assert_eq!(r.code, 200, "{}", r.body);
    assert_eq!(r.body["metadata"]["name"], "my-cm");
    // An encoded slash is a slash, as for Go: `my-cm/x` is no subresource.
    let r = get(&server, "/api/v1/namespaces/default/configmaps/my-cm%2Fx").await;
    assert_eq!(r.code, 404, "{}", r.body);
    let r = get(&server, "/api/v1/namespaces/default/configmaps/my%zzcm").await;
    assert_eq!(r.code, 400, "{}", r.body);
    assert_eq!(r.body, json!("400 Bad Request"));
}

// ------------------------------------------------------------------------------------------------
// Deliver 1: resourceVersions the server has not reached
// ------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_and_gets_from_the_future_wait_then_answer_too_large_resource_version() {
    let server = TestServer::start().await.unwrap();
    create_configmap(&server, "f").await;
    let future = server.server().revision() + 1000;
    let cms = "/api/v1/namespaces/default/configmaps";
    for query in [
        format!("{cms}?resourceVersion={future}"),
        format!("{cms}?resourceVersion={future}&resourceVersionMatch=NotOlderThan"),
        format!("{cms}?resourceVersion={future}&resourceVersionMatch=Exact"),
        format!("{cms}?resourceVersion={future}&limit=1"),
        format!("{cms}/f?resourceVersion={future}"),
    ] {
        let started = Instant::now();
        let r = plain_get(&server, &query).await;
        let waited = started.elapsed();
        assert_eq!(r.code, 504, "{query}: {}", r.body);
        assert_eq!(r.body["reason"], "Timeout", "{query}");
        assert_eq!(
            r.body["details"]["causes"][0]["reason"], "ResourceVersionTooLarge",
            "{query}"
        );
        assert!(
            r.body["message"].as_str().unwrap().starts_with(&format!(
                "Timeout: Too large resource version: {future}, current: "
            )),
            "{query}: {}",
            r.body
        );
        assert!(
            waited >= Duration::from_secs(2),
            "{query} answered after {waited:?}"
        );
    }
}

/// HTTP/2 as the real server configures it: at most 100 concurrent streams per connection and
/// 256 KiB frames, so one connection cannot hold unbounded streams and buffers.
#[tokio::test]
async fn http2_connections_are_bounded_as_on_the_real_server() {
    let server = TestServer::start().await.unwrap();
    let url = server.server().http_url().expect("plain HTTP").to_string();
    let addr = url.trim_start_matches("http://").to_string();
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (mut client, conn) = h2::client::handshake(tcp).await.expect("h2c handshake");
    let conn = tokio::spawn(conn);
    let req = http::Request::get(format!("{url}/version")).body(()).unwrap();
    let (resp, _) = client.send_request(req, true).expect("send");
    let resp = resp.await.expect("response");
    assert_eq!(resp.status(), 200);
    // The server's SETTINGS arrived before its first response.
    assert_eq!(client.current_max_send_streams(), 100);
    conn.abort();
}
