//! Lists at scale over HTTP (issue 14, item 5): paging at its boundaries (limit 1, exact
//! multiples, selectors that skip most objects, namespaces that prefix each other, objects
//! created and deleted between pages), and streamed list bodies that are byte for byte what
//! the whole list serialized at once was (objects and metadata-only, paged and not).

use base64::Engine;
use crwatch_apiserver::TestServer;
use http_body_util::BodyExt;
use serde_json::{Value, json};

/// A raw GET: status, headers and body bytes.
async fn get_raw(server: &TestServer, path: &str, accept: &str) -> (u16, http::HeaderMap, Vec<u8>) {
    let req = http::Request::builder()
        .method("GET")
        .uri(path)
        .header(http::header::ACCEPT, accept)
        .body(kube::client::Body::empty())
        .expect("request");
    let resp = server.client().send(req).await.expect("send");
    let code = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (code, headers, bytes.to_vec())
}

async fn get_json(server: &TestServer, path: &str) -> Value {
    let (code, _, body) = get_raw(server, path, "application/json").await;
    assert_eq!(code, 200, "{path}: {}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).expect("JSON")
}

async fn send(server: &TestServer, method: &str, path: &str, body: Value) -> Value {
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(kube::client::Body::from(serde_json::to_vec(&body).expect("body")))
        .expect("request");
    let resp = server.client().send(req).await.expect("send");
    let code = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    assert!(
        code < 300,
        "{method} {path}: {code} {}",
        String::from_utf8_lossy(&bytes)
    );
    serde_json::from_slice(&bytes).expect("JSON")
}

async fn namespace(server: &TestServer, ns: &str) {
    send(
        server,
        "POST",
        "/api/v1/namespaces",
        json!({"metadata": {"name": ns}}),
    )
    .await;
}

async fn configmap(server: &TestServer, ns: &str, name: &str, selected: bool, data: &str) {
    let cm = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "labels": {"sel": if selected { "yes" } else { "no" }}},
        "data": {"v": data},
    });
    send(server, "POST", &format!("/api/v1/namespaces/{ns}/configmaps"), cm).await;
}

fn names(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|o| {
            format!(
                "{}/{}",
                o["metadata"]["namespace"].as_str().unwrap_or_default(),
                o["metadata"]["name"].as_str().unwrap_or_default()
            )
        })
        .collect()
}

/// Every page of `base` (a path with a query) at `limit`: the names in order, and each page's
/// remainingItemCount.
async fn all_pages(server: &TestServer, base: &str, limit: usize) -> (Vec<String>, Vec<Option<i64>>, String) {
    let sep = if base.contains('?') { '&' } else { '?' };
    let mut list = get_json(server, &format!("{base}{sep}limit={limit}")).await;
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .to_string();
    let mut got = vec![];
    let mut remaining = vec![];
    for page in 0.. {
        assert!(page < 10_000, "paging does not end");
        let items = names(&list);
        assert!(
            items.len() <= limit,
            "{base} limit {limit}: {} items",
            items.len()
        );
        assert_eq!(
            list["metadata"]["resourceVersion"],
            json!(rv),
            "every page at the snapshot"
        );
        got.extend(items);
        remaining.push(list["metadata"]["remainingItemCount"].as_i64());
        match list["metadata"]["continue"].as_str() {
            Some(token) => {
                list = get_json(server, &format!("{base}{sep}limit={limit}&continue={token}")).await;
            }
            None => break,
        }
    }
    (got, remaining, rv)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_at_its_boundaries_returns_every_object_once_in_order() {
    let server = TestServer::start().await.expect("server");
    // "a" prefixes "a-b": every object of "a" still comes before "a-b"'s, on every page.
    for ns in ["ls-a", "ls-a-b", "ls-b"] {
        namespace(&server, ns).await;
        for i in 0..40 {
            configmap(&server, ns, &format!("cm-{i:03}"), i % 13 == 5, "x").await;
        }
    }
    let whole = get_json(&server, "/api/v1/configmaps").await;
    let want: Vec<String> = names(&whole)
        .into_iter()
        .filter(|n| n.starts_with("ls-"))
        .collect();
    assert_eq!(want.len(), 120);
    let total = names(&whole).len();
    for limit in [1, 2, 3, 40, 60, 119, 120, 121, 500] {
        let (got, remaining, _) = all_pages(&server, "/api/v1/configmaps", limit).await;
        assert_eq!(got, names(&whole), "all namespaces, limit {limit}");
        // Exact multiples end without an empty page; each count is what later pages hold.
        assert_eq!(remaining.len(), total.div_ceil(limit), "limit {limit}");
        for (i, r) in remaining.iter().enumerate().take(remaining.len() - 1) {
            assert_eq!(
                *r,
                Some((total - (i + 1) * limit) as i64),
                "limit {limit} page {i}"
            );
        }
        assert_eq!(remaining.last(), Some(&None));
        let (got, _, _) = all_pages(&server, "/api/v1/namespaces/ls-a/configmaps", limit).await;
        let in_a: Vec<String> = want.iter().filter(|n| n.starts_with("ls-a/")).cloned().collect();
        assert_eq!(got, in_a, "one namespace, limit {limit}");
    }
    // A selector that skips most objects: 3 of 40 per namespace.
    let selected: Vec<String> = names(&get_json(&server, "/api/v1/configmaps?labelSelector=sel%3Dyes").await);
    assert_eq!(selected.len(), 9);
    for limit in [1, 2, 3, 9, 10] {
        let (got, remaining, _) =
            all_pages(&server, "/api/v1/configmaps?labelSelector=sel%3Dyes", limit).await;
        assert_eq!(got, selected, "selected, limit {limit}");
        assert!(remaining.iter().all(Option::is_none), "no count with a selector");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_between_pages_show_at_the_newest_state_after_a_410() {
    let server = TestServer::start().await.expect("server");
    namespace(&server, "ls-c").await;
    for i in 0..10 {
        configmap(&server, "ls-c", &format!("cm-{i:02}"), false, "old").await;
    }
    let base = "/api/v1/namespaces/ls-c/configmaps";
    let first = get_json(&server, &format!("{base}?limit=4")).await;
    let token = first["metadata"]["continue"]
        .as_str()
        .expect("continue")
        .to_string();
    assert_eq!(first["metadata"]["remainingItemCount"], json!(6));
    // At the snapshot: writes between pages do not show.
    send(&server, "DELETE", &format!("{base}/cm-05"), json!({})).await;
    configmap(&server, "ls-c", "cm-04a", false, "new").await;
    configmap(&server, "ls-c", "cm-99", false, "new").await;
    let second = get_json(&server, &format!("{base}?limit=4&continue={token}")).await;
    assert_eq!(
        names(&second),
        ["ls-c/cm-04", "ls-c/cm-05", "ls-c/cm-06", "ls-c/cm-07"]
    );
    assert_eq!(second["metadata"]["remainingItemCount"], json!(2));
    // Compacted: 410 with a token that continues at the newest state, where they do.
    server.faults().compact();
    let (code, _, body) = get_raw(
        &server,
        &format!("{base}?limit=4&continue={token}"),
        "application/json",
    )
    .await;
    assert_eq!(code, 410);
    let status: Value = serde_json::from_slice(&body).expect("status");
    let latest = status["metadata"]["continue"]
        .as_str()
        .expect("a token to go on")
        .to_string();
    let mut rest = vec![];
    let mut next = Some(latest);
    while let Some(token) = next.take() {
        let page = get_json(&server, &format!("{base}?limit=2&continue={token}")).await;
        rest.extend(names(&page));
        next = page["metadata"]["continue"].as_str().map(String::from);
    }
    assert_eq!(
        rest,
        [
            "ls-c/cm-04",
            "ls-c/cm-04a",
            "ls-c/cm-06",
            "ls-c/cm-07",
            "ls-c/cm-08",
            "ls-c/cm-09",
            "ls-c/cm-99"
        ]
    );
}

/// What the server answered before lists were streamed: the whole list as one value,
/// serialized at once (keys in insertion order, compact).
fn whole_list(kind: &str, api_version: &str, metadata: Value, items: Vec<Value>) -> Vec<u8> {
    serde_json::to_vec(
        &json!({"kind": kind, "apiVersion": api_version, "metadata": metadata, "items": items}),
    )
    .expect("JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_lists_are_byte_for_byte_the_whole_list() {
    let server = TestServer::start().await.expect("server");
    namespace(&server, "ls-s").await;
    // 60 objects of about 3 KiB: a list of several chunks, streamed.
    let big = "y".repeat(3000);
    for i in 0..60 {
        configmap(&server, "ls-s", &format!("cm-{i:02}"), i % 2 == 0, &big).await;
    }
    let base = "/api/v1/namespaces/ls-s/configmaps";
    let mut objects = vec![];
    for i in 0..60 {
        objects.push(get_json(&server, &format!("{base}/cm-{i:02}")).await);
    }

    // Unpaged, as objects: streamed (no length), and the same bytes.
    let (code, headers, body) = get_raw(&server, base, "application/json").await;
    assert_eq!(code, 200);
    assert_eq!(headers[http::header::CONTENT_TYPE], "application/json");
    assert!(
        body.len() > 3 * 64 * 1024,
        "{} bytes: more than one chunk",
        body.len()
    );
    let rv = serde_json::from_slice::<Value>(&body).expect("list")["metadata"]["resourceVersion"].clone();
    let want = whole_list(
        "ConfigMapList",
        "v1",
        json!({"resourceVersion": rv}),
        objects.clone(),
    );
    assert!(
        body == want,
        "unpaged list differs:\n{}\n{}",
        String::from_utf8_lossy(&body[..300]),
        String::from_utf8_lossy(&want[..300])
    );

    // Metadata only.
    let accept = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json";
    let (_, _, body) = get_raw(&server, base, accept).await;
    let partial: Vec<Value> = objects
        .iter()
        .map(|o| json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]}))
        .collect();
    let rv = serde_json::from_slice::<Value>(&body).expect("list")["metadata"]["resourceVersion"].clone();
    let want = whole_list(
        "PartialObjectMetadataList",
        "meta.k8s.io/v1",
        json!({"resourceVersion": rv}),
        partial,
    );
    assert!(body == want, "metadata list differs");

    // A first page: the continue token as before (base64 of the snapshot and the last key).
    let (_, _, body) = get_raw(&server, &format!("{base}?limit=25"), "application/json").await;
    let rv = serde_json::from_slice::<Value>(&body).expect("list")["metadata"]["resourceVersion"].clone();
    let rev: u64 = rv.as_str().expect("rv").parse().expect("number");
    let raw_token = json!({"v": "meta.k8s.io/v1", "rv": rev, "start": "ls-s/cm-24"}).to_string();
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw_token);
    let meta = json!({"resourceVersion": rv, "continue": token, "remainingItemCount": 35});
    let want = whole_list("ConfigMapList", "v1", meta, objects[..25].to_vec());
    assert!(
        body == want,
        "first page differs: {}",
        String::from_utf8_lossy(&body[..200])
    );

    // A small selected list fits in one chunk: sent whole, with its length.
    let (_, headers, body) = get_raw(
        &server,
        &format!("{base}?labelSelector=sel%3Dyes&limit=2"),
        "application/json",
    )
    .await;
    assert_eq!(
        headers[http::header::CONTENT_LENGTH],
        body.len().to_string().as_str()
    );
    let parsed: Value = serde_json::from_slice(&body).expect("list");
    assert_eq!(names(&parsed), ["ls-s/cm-00", "ls-s/cm-02"]);
    assert!(parsed["metadata"].get("remainingItemCount").is_none());
    let want = whole_list(
        "ConfigMapList",
        "v1",
        parsed["metadata"].clone(),
        vec![objects[0].clone(), objects[2].clone()],
    );
    assert!(body == want, "selected page differs");

    // An empty list.
    let (_, _, body) = get_raw(
        &server,
        "/api/v1/namespaces/ls-none/configmaps",
        "application/json",
    )
    .await;
    let rv = serde_json::from_slice::<Value>(&body).expect("list")["metadata"]["resourceVersion"].clone();
    assert_eq!(
        body,
        whole_list("ConfigMapList", "v1", json!({"resourceVersion": rv}), vec![])
    );
}
