//! KEP-5866 server-side sharded list and watch (`shardSelector`, feature gate
//! `ShardedListAndWatch`) against a started server: shards partition every object exactly once
//! by uid and by namespace (cluster-scoped objects hash the empty namespace), paging keeps the
//! shard, `metadata.shardInfo` echoes the selector (Tables and metadata lists too), watches and
//! streaming lists see only their range, every validation error has the real words, and with
//! the gate off the parameter is ignored. Also the hash against known FNV-1a 64 vectors and
//! one `kubectl get --raw` case.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crwatch_apiserver::shard::fnv1a64;
use crwatch_apiserver::{Config, FeatureGates, TestServer};
use futures::{AsyncBufReadExt, StreamExt};
use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(15);
const LABEL: &str = "suite=shard";
/// Names whose FNV-1a hashes spread over the space (names differing only in their last byte,
/// like `shard-a`..`shard-d`, hash close together: 0x8ae4d…, all in one half).
const NAMESPACES: [&str; 4] = ["payments", "frontend", "monitoring", "batch-jobs"];

// ---------------------------------------------------------------------------------------------
// Helpers

async fn server(gate: bool) -> TestServer {
    TestServer::with_config(Config {
        bookmark_interval: Duration::from_secs(1),
        feature_gates: FeatureGates {
            sharded_list_and_watch: gate,
        },
        // No simulated Nodes or Pods: only what the tests create.
        simulate_workloads: false,
        ..Config::default()
    })
    .await
    .expect("start crwatch-apiserver")
}

/// The FNV-1a 64 of the hashed field, computed here independently of the server's code.
fn fnv(s: &str) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// Shard `i` of `n` equal ranges over the hash space, as a client writes it.
fn range(field: &str, i: u128, n: u128) -> (u128, u128, String) {
    let width = (1u128 << 64) / n;
    let start = i * width;
    let end = if i + 1 == n { 1u128 << 64 } else { (i + 1) * width };
    let hex = |v: u128| {
        if v == 1u128 << 64 {
            "0x10000000000000000".to_string()
        } else {
            format!("0x{v:016x}")
        }
    };
    let text = format!(
        "shardRange(object.metadata.{field}, '{}', '{}')",
        hex(start),
        hex(end)
    );
    (start, end, text)
}

fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Code and body of a raw GET.
async fn get(client: &kube::Client, path: &str) -> (u16, Value) {
    get_as(client, path, "application/json").await
}

async fn get_as(client: &kube::Client, path: &str, accept: &str) -> (u16, Value) {
    let req = http::Request::get(path)
        .header(http::header::ACCEPT, accept)
        .body(kube::client::Body::from(Vec::new()))
        .expect("request");
    let resp = client.send(req).await.expect("send");
    let code = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| json!(String::from_utf8_lossy(&bytes)));
    (code, body)
}

fn uid_of(v: &Value) -> String {
    v["metadata"]["uid"].as_str().unwrap_or_default().to_string()
}

fn names(items: &Value) -> BTreeSet<String> {
    items
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

fn labelled(name: &str) -> ConfigMap {
    let mut c = ConfigMap::default();
    c.metadata.name = Some(name.into());
    c.metadata.labels = Some([("suite".to_string(), "shard".to_string())].into());
    c
}

/// The namespaces [`NAMESPACES`] with `per` labelled ConfigMaps each (and an unlabelled one each,
/// which the label selector leaves out).
async fn populate(client: &kube::Client, per: usize) {
    let nss: Api<Namespace> = Api::all(client.clone());
    for ns in NAMESPACES {
        let mut n = Namespace::default();
        n.metadata.name = Some(ns.into());
        nss.create(&PostParams::default(), &n)
            .await
            .expect("create namespace");
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
        for i in 0..per {
            cms.create(&PostParams::default(), &labelled(&format!("cm-{i}")))
                .await
                .expect("create");
        }
        let mut other = ConfigMap::default();
        other.metadata.name = Some("unlabelled".into());
        cms.create(&PostParams::default(), &other).await.expect("create");
    }
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

// ---------------------------------------------------------------------------------------------
// Hashing

#[test]
fn the_hash_is_fnv1a_64() {
    assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
    assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
    assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8);
    let uid = "2a9c1b7e-0001-4f3a-9c1d-000000000001";
    assert_eq!(fnv1a64(uid.as_bytes()), fnv(uid));
}

// ---------------------------------------------------------------------------------------------
// Lists

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_partition_every_object_exactly_once() {
    let s = server(true).await;
    let client = s.client();
    populate(&client, 10).await;
    let all = format!("/api/v1/configmaps?labelSelector={}", enc(LABEL));
    let (code, full) = get(&client, &all).await;
    assert_eq!(code, 200, "{full}");
    assert!(
        full["metadata"].get("shardInfo").is_none(),
        "unsharded lists carry no shardInfo"
    );
    let every = names(&full["items"]);
    assert_eq!(every.len(), 40);
    let uid_by_name: BTreeMap<String, String> = full["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|o| {
            (
                format!(
                    "{}/{}",
                    o["metadata"]["namespace"].as_str().unwrap_or_default(),
                    o["metadata"]["name"].as_str().unwrap_or_default()
                ),
                uid_of(o),
            )
        })
        .collect();

    for field in ["uid", "namespace"] {
        for n in [2u128, 4] {
            let mut seen: BTreeMap<String, u128> = BTreeMap::new();
            for i in 0..n {
                let (start, end, sel) = range(field, i, n);
                let (code, list) = get(&client, &format!("{all}&shardSelector={}", enc(&sel))).await;
                assert_eq!(code, 200, "{sel}: {list}");
                assert_eq!(list["metadata"]["shardInfo"], json!({"selector": sel}));
                assert!(list["metadata"].get("remainingItemCount").is_none());
                for item in list["items"].as_array().expect("items") {
                    let key = format!(
                        "{}/{}",
                        item["metadata"]["namespace"].as_str().unwrap_or_default(),
                        item["metadata"]["name"].as_str().unwrap_or_default()
                    );
                    // The label selector still applies (AND).
                    assert_eq!(item["metadata"]["labels"]["suite"], "shard", "{key}");
                    let value = match field {
                        "uid" => uid_of(item),
                        _ => item["metadata"]["namespace"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                    };
                    let h = u128::from(fnv(&value));
                    assert!(
                        start <= h && h < end,
                        "{key} ({field} hash {h:#x}) is not in {sel}"
                    );
                    assert_eq!(uid_by_name.get(&key), Some(&uid_of(item)));
                    if let Some(other) = seen.insert(key.clone(), i) {
                        panic!("{key} is in shards {other} and {i} of {n} by {field}");
                    }
                }
            }
            let got: BTreeSet<String> = seen.keys().cloned().collect();
            assert_eq!(got, every, "{n} shards by {field} cover every object once");
        }
    }

    // By namespace, a namespace's objects all land in one shard.
    let (_, _, lower) = range("namespace", 0, 2);
    let (_, lower_list) = get(&client, &format!("{all}&shardSelector={}", enc(&lower))).await;
    let lower_nss: BTreeSet<String> = lower_list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|o| {
            o["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    for ns in NAMESPACES {
        let want = fnv(ns) < 1 << 63;
        assert_eq!(lower_nss.contains(ns), want, "{ns}");
    }
    assert_eq!(lower_nss, BTreeSet::from(["monitoring".to_string()]));

    // Two ranges joined by || select their union.
    let (_, _, q0) = range("uid", 0, 4);
    let (_, _, q2) = range("uid", 2, 4);
    let both = format!("{q0} || {q2}");
    let (code, list) = get(&client, &format!("{all}&shardSelector={}", enc(&both))).await;
    assert_eq!(code, 200, "{list}");
    let want: BTreeSet<String> = uid_by_name
        .iter()
        .filter(|(_, uid)| {
            let h = fnv(uid);
            h < 1 << 62 || ((1 << 63)..(3 << 62)).contains(&h)
        })
        .map(|(k, _)| k.clone())
        .collect();
    assert_eq!(names(&list["items"]), want);
    assert_eq!(list["metadata"]["shardInfo"]["selector"], both.as_str());

    s.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_scoped_objects_hash_the_empty_namespace() {
    let s = server(true).await;
    let client = s.client();
    populate(&client, 0).await;
    let (_, all) = get(&client, "/api/v1/namespaces").await;
    let every = names(&all["items"]);
    assert!(every.len() >= NAMESPACES.len() + 4, "{every:?}");
    // FNV-1a 64 of "" is 0xcbf29ce484222325: every Namespace is in the shard holding it.
    let holding = "shardRange(object.metadata.namespace, '0xcbf29ce484222325', '0xcbf29ce484222326')";
    let (code, list) = get(
        &client,
        &format!("/api/v1/namespaces?shardSelector={}", enc(holding)),
    )
    .await;
    assert_eq!(code, 200, "{list}");
    assert_eq!(names(&list["items"]), every);
    let (_, _, lower) = range("namespace", 0, 2);
    let (_, list) = get(
        &client,
        &format!("/api/v1/namespaces?shardSelector={}", enc(&lower)),
    )
    .await;
    assert_eq!(list["items"], json!([]));
    assert_eq!(list["metadata"]["shardInfo"]["selector"], lower.as_str());
    s.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_keeps_the_shard() {
    let s = server(true).await;
    let client = s.client();
    populate(&client, 10).await;
    let (_, _, sel) = range("uid", 1, 2);
    let base = format!(
        "/api/v1/configmaps?labelSelector={}&shardSelector={}",
        enc(LABEL),
        enc(&sel)
    );
    let (_, whole) = get(&client, &base).await;
    let want = names(&whole["items"]);
    assert!(
        want.len() > 6,
        "a shard of 40 objects this small is improbable: {want:?}"
    );

    let mut got = Vec::new();
    let mut cont = String::new();
    let mut pages = 0;
    loop {
        let path = if cont.is_empty() {
            format!("{base}&limit=3")
        } else {
            format!("{base}&limit=3&continue={}", enc(&cont))
        };
        let (code, page) = get(&client, &path).await;
        assert_eq!(code, 200, "{page}");
        pages += 1;
        assert!(page["items"].as_array().expect("items").len() <= 3);
        assert_eq!(page["metadata"]["shardInfo"]["selector"], sel.as_str());
        assert!(page["metadata"].get("remainingItemCount").is_none(), "{page}");
        assert_eq!(
            page["metadata"]["resourceVersion"],
            whole["metadata"]["resourceVersion"]
        );
        got.extend(names(&page["items"]));
        if pages == 1 {
            // Objects created between pages are not in the snapshot the pages continue.
            let cms: Api<ConfigMap> = Api::namespaced(client.clone(), NAMESPACES[2]);
            for i in 0..8 {
                cms.create(&PostParams::default(), &labelled(&format!("late-{i}")))
                    .await
                    .expect("create");
            }
        }
        match page["metadata"]["continue"].as_str() {
            Some(c) if !c.is_empty() => cont = c.to_string(),
            _ => break,
        }
        assert!(pages < 100, "paging does not end");
    }
    let got_set: BTreeSet<String> = got.iter().cloned().collect();
    assert_eq!(got.len(), got_set.len(), "no object twice");
    assert_eq!(got_set, want);
    assert!(pages >= want.len().div_ceil(3));

    // Now with the objects created meanwhile (those in the shard).
    let (_, whole) = get(&client, &base).await;
    let want = names(&whole["items"]);

    // Tables and metadata-only lists echo it too.
    let (code, table) = get_as(&client, &base, "application/json;as=Table;v=v1;g=meta.k8s.io").await;
    assert_eq!(code, 200, "{table}");
    assert_eq!(table["kind"], "Table");
    assert_eq!(table["metadata"]["shardInfo"]["selector"], sel.as_str());
    assert_eq!(table["rows"].as_array().expect("rows").len(), want.len());
    let (code, meta) = get_as(
        &client,
        &base,
        "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io",
    )
    .await;
    assert_eq!(code, 200, "{meta}");
    assert_eq!(meta["kind"], "PartialObjectMetadataList");
    assert_eq!(meta["metadata"]["shardInfo"]["selector"], sel.as_str());
    assert_eq!(names(&meta["items"]), want);

    // The echo is the normalised selector.
    let loose = format!(" {} ", sel.replace(", ", ",").replace('\'', "\""));
    let path = format!(
        "/api/v1/configmaps?labelSelector={}&shardSelector={}",
        enc(LABEL),
        enc(&loose)
    );
    let (code, list) = get(&client, &path).await;
    assert_eq!(code, 200, "{list}");
    assert_eq!(list["metadata"]["shardInfo"]["selector"], sel.as_str(), "{list}");
    assert_eq!(names(&list["items"]), want);
    s.shutdown().await.expect("shutdown");
}

// ---------------------------------------------------------------------------------------------
// Watches

/// Open a raw watch; its lines as parsed events.
async fn watch(client: &kube::Client, path: &str) -> impl futures::Stream<Item = Value> + Unpin + use<> {
    let req = http::Request::get(path).body(Vec::new()).expect("request");
    let lines = client.request_stream(req).await.expect("watch").lines();
    Box::pin(lines.map(|l| serde_json::from_str::<Value>(&l.expect("read")).expect("JSON")))
}

async fn next(events: &mut (impl futures::Stream<Item = Value> + Unpin)) -> Value {
    timeout(WAIT, events.next())
        .await
        .expect("an event in time")
        .expect("the watch is open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_sees_only_its_range() {
    let s = server(true).await;
    let client = s.client();
    populate(&client, 0).await;
    let ns = NAMESPACES[0];
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let (_, list) = get(&client, &format!("/api/v1/namespaces/{ns}/configmaps")).await;
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .to_string();
    let shards: Vec<(u128, u128, String)> = (0..2).map(|i| range("uid", i, 2)).collect();
    let mut streams = Vec::new();
    for (_, _, sel) in &shards {
        let path = format!(
            "/api/v1/namespaces/{ns}/configmaps?watch=true&resourceVersion={rv}&labelSelector={}&shardSelector={}&timeoutSeconds=60",
            enc(LABEL),
            enc(sel)
        );
        streams.push(watch(&client, &path).await);
    }

    // Create, change and delete 12 objects; then one marker per shard, so that reading up to
    // a shard's marker has read everything before it.
    let mut uids = BTreeMap::new();
    for i in 0..12 {
        let c = cms
            .create(&PostParams::default(), &labelled(&format!("w-{i}")))
            .await
            .expect("create");
        uids.insert(format!("w-{i}"), c.metadata.uid.expect("uid"));
        cms.patch(
            &format!("w-{i}"),
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"v": "2"}})),
        )
        .await
        .expect("patch");
        cms.delete(&format!("w-{i}"), &DeleteParams::default())
            .await
            .expect("delete");
    }
    let mut markers: BTreeMap<usize, String> = BTreeMap::new();
    for i in 0..64 {
        if markers.len() == shards.len() {
            break;
        }
        let name = format!("marker-{i}");
        let c = cms
            .create(&PostParams::default(), &labelled(&name))
            .await
            .expect("create");
        let h = u128::from(fnv(c.metadata.uid.as_deref().unwrap_or_default()));
        let shard = shards
            .iter()
            .position(|(a, b, _)| *a <= h && h < *b)
            .expect("a shard");
        uids.insert(name.clone(), c.metadata.uid.clone().unwrap_or_default());
        markers.entry(shard).or_insert(name);
    }
    assert_eq!(markers.len(), 2, "64 random uids missed a half of the hash space");

    let mut seen_w = BTreeSet::new();
    for (i, events) in streams.iter_mut().enumerate() {
        let (start, end, sel) = &shards[i];
        let mut got: Vec<(String, String)> = Vec::new();
        loop {
            let ev = next(events).await;
            let name = ev["object"]["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let h = u128::from(fnv(&uid_of(&ev["object"])));
            assert!(*start <= h && h < *end, "{sel} got {name} ({h:#x}): {ev}");
            got.push((ev["type"].as_str().unwrap_or_default().to_string(), name.clone()));
            if markers.get(&i) == Some(&name) {
                break;
            }
        }
        // Every object of the range, each with its three events, in order.
        for (name, uid) in &uids {
            let h = u128::from(fnv(uid));
            let mine = *start <= h && h < *end;
            let events: Vec<&str> = got
                .iter()
                .filter(|(_, n)| n == name)
                .map(|(t, _)| t.as_str())
                .collect();
            if !mine {
                assert!(events.is_empty(), "{name} in {sel}");
            } else if name.starts_with("w-") {
                assert_eq!(events, ["ADDED", "MODIFIED", "DELETED"], "{name} in {sel}");
                seen_w.insert(name.clone());
            }
        }
    }
    assert_eq!(seen_w.len(), 12, "both watches together saw every object");
    s.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_list_sends_only_its_range() {
    let s = server(true).await;
    let client = s.client();
    populate(&client, 10).await;
    let (_, full) = get(
        &client,
        &format!("/api/v1/configmaps?labelSelector={}", enc(LABEL)),
    )
    .await;
    for i in 0..2 {
        let (start, end, sel) = range("namespace", i, 2);
        let want: BTreeSet<String> = names(&full["items"])
            .into_iter()
            .filter(|k| {
                let h = u128::from(fnv(k.split('/').next().unwrap_or_default()));
                start <= h && h < end
            })
            .collect();
        let path = format!(
            "/api/v1/configmaps?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&labelSelector={}&shardSelector={}&timeoutSeconds=30",
            enc(LABEL),
            enc(&sel)
        );
        let mut events = watch(&client, &path).await;
        let mut got = BTreeSet::new();
        loop {
            let ev = next(&mut events).await;
            if ev["type"] == "BOOKMARK"
                && ev["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"] == "true"
            {
                break;
            }
            assert_eq!(ev["type"], "ADDED", "{ev}");
            let key = format!(
                "{}/{}",
                ev["object"]["metadata"]["namespace"].as_str().unwrap_or_default(),
                ev["object"]["metadata"]["name"].as_str().unwrap_or_default()
            );
            assert!(got.insert(key), "no object twice");
        }
        assert_eq!(got, want, "{sel}");
    }
    s.shutdown().await.expect("shutdown");
}

// ---------------------------------------------------------------------------------------------
// Validation, the gate, kubectl

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_selectors_get_the_real_400s() {
    let s = server(true).await;
    let client = s.client();
    let u = |a: &str, b: &str| format!("shardRange(object.metadata.uid, {a}, {b})");
    let cases: Vec<(String, String)> = vec![
        (" ".into(), "empty shard selector is not allowed; omit the parameter for unfiltered lists".into()),
        (
            "shardRange(object.metadata.name, '0x00', '0x80')".into(),
            "unsupported field path \"object.metadata.name\"; supported: object.metadata.uid, object.metadata.namespace".into(),
        ),
        (
            "invalidFunc(object.metadata.uid, '0x00', '0x80')".into(),
            "unsupported function \"invalidFunc\"; only shardRange() and || are allowed".into(),
        ),
        (
            format!("{} && {}", u("'0x0'", "'0x8'"), u("'0x8'", "'0xf'")),
            "unsupported function \"_&&_\"; only shardRange() and || are allowed".into(),
        ),
        (
            "shardRange(object.metadata.uid, '0x0')".into(),
            "shardRange() requires exactly 3 arguments, got 2".into(),
        ),
        (u("0", "8"), "hexStart must be a string literal, got int64".into()),
        (
            u("'0000000000000000'", "'0x8000000000000000'"),
            "hexStart must have '0x' prefix, got \"0000000000000000\"".into(),
        ),
        (
            u("'0x0000000000000000'", "'0x800000000000000g'"),
            "hexEnd: invalid hex character \"g\" in \"0x800000000000000g\"".into(),
        ),
        (
            u("'0x0'", "'0x8000000000000000'"),
            "hexStart must be a 0x-prefixed 16-digit hex value, got \"0x0\" (did you mean \"0x0000000000000000\"?)".into(),
        ),
        (
            u("'0x0000000000000000'", "'0x20000000000000000'"),
            "hexEnd: 17-digit hex value must be '0x10000000000000000' (2^64), got \"0x20000000000000000\"".into(),
        ),
        (
            u("'0x0000000000000000'", "'0x100000000000000000'"),
            "hexEnd: hex value too long (18 chars, max 17): \"100000000000000000\"".into(),
        ),
        (
            u("'0xffffffffffffffff'", "'0x0000000000000000'"),
            "shard range start 0xffffffffffffffff must be less than end 0x0000000000000000".into(),
        ),
        (
            u("'0x8000000000000000'", "'0x8000000000000000'"),
            "shard range start 0x8000000000000000 must be less than end 0x8000000000000000".into(),
        ),
        (
            format!(
                "{} || shardRange(object.metadata.namespace, '0x8000000000000000', '0x10000000000000000')",
                u("'0x0000000000000000'", "'0x8000000000000000'")
            ),
            "all shard ranges must use the same field, got \"object.metadata.uid\" and \"object.metadata.namespace\"".into(),
        ),
    ];
    for (sel, want) in &cases {
        for path in [
            format!("/api/v1/configmaps?shardSelector={}", enc(sel)),
            format!(
                "/api/v1/namespaces/default/configmaps?watch=true&shardSelector={}",
                enc(sel)
            ),
            format!("/api/v1/namespaces?shardSelector={}", enc(sel)),
        ] {
            let (code, body) = get(&client, &path).await;
            assert_eq!(
                (code, body),
                (
                    400,
                    status(400, "BadRequest", &format!("invalid shard selector: {want}"))
                ),
                "{sel}"
            );
        }
    }
    // Garbage is a CEL syntax error (cel-go's wording after the position is not reproduced).
    let (code, body) = get(
        &client,
        &format!("/api/v1/configmaps?shardSelector={}", enc("shardRange(")),
    )
    .await;
    assert_eq!(code, 400);
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .starts_with("invalid shard selector: CEL parse error: Syntax error: "),
        "{body}"
    );
    // An empty parameter is no selector.
    let (code, body) = get(&client, "/api/v1/namespaces?shardSelector=").await;
    assert_eq!(code, 200, "{body}");
    assert!(body["metadata"].get("shardInfo").is_none());
    s.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_gate_off_the_parameter_is_ignored() {
    let s = server(false).await;
    let client = s.client();
    populate(&client, 5).await;
    let all = format!("/api/v1/configmaps?labelSelector={}", enc(LABEL));
    let (_, full) = get(&client, &all).await;
    let (_, _, sel) = range("uid", 0, 4);
    for extra in [
        sel.as_str(),
        "garbage(",
        "shardRange(object.metadata.name, '0x0', '0x1')",
    ] {
        let (code, list) = get(&client, &format!("{all}&shardSelector={}", enc(extra))).await;
        assert_eq!(code, 200, "{extra}: {list}");
        assert_eq!(names(&list["items"]), names(&full["items"]), "{extra}");
        assert!(list["metadata"].get("shardInfo").is_none(), "{list}");
    }
    // A watch ignores it too: it sees an object of any range.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), NAMESPACES[0]);
    let rv = full["metadata"]["resourceVersion"].as_str().expect("rv");
    let empty_range = "shardRange(object.metadata.uid, '0x0000000000000000', '0x0000000000000001')";
    let mut events = watch(
        &client,
        &format!(
            "/api/v1/configmaps?watch=true&resourceVersion={rv}&shardSelector={}",
            enc(empty_range)
        ),
    )
    .await;
    cms.create(&PostParams::default(), &labelled("late"))
        .await
        .expect("create");
    let ev = next(&mut events).await;
    assert_eq!(
        (ev["type"].as_str(), ev["object"]["metadata"]["name"].as_str()),
        (Some("ADDED"), Some("late"))
    );
    s.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletecollection_honours_the_shard() {
    let s = server(true).await;
    let client = s.client();
    populate(&client, 10).await;
    let ns = NAMESPACES[1];
    let (_, _, sel) = range("uid", 0, 2);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let before = cms
        .list(&ListParams::default().labels(LABEL))
        .await
        .expect("list");
    let keep: BTreeSet<String> = before
        .items
        .iter()
        .filter(|c| fnv(c.metadata.uid.as_deref().unwrap_or_default()) >= 1 << 63)
        .map(|c| c.metadata.name.clone().unwrap_or_default())
        .collect();
    let req = http::Request::delete(format!(
        "/api/v1/namespaces/{ns}/configmaps?labelSelector={}&shardSelector={}",
        enc(LABEL),
        enc(&sel)
    ))
    .body(Vec::new())
    .expect("request");
    let _: Value = client.request(req).await.expect("deletecollection");
    let after = cms
        .list(&ListParams::default().labels(LABEL))
        .await
        .expect("list");
    let left: BTreeSet<String> = after
        .items
        .iter()
        .map(|c| c.metadata.name.clone().unwrap_or_default())
        .collect();
    assert_eq!(left, keep);
    s.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_raw_sends_it() {
    let s = server(true).await;
    let client = s.client();
    populate(&client, 10).await;
    let (_, _, sel) = range("uid", 1, 2);
    let path = format!(
        "/api/v1/configmaps?labelSelector={}&shardSelector={}",
        enc(LABEL),
        enc(&sel)
    );
    let (_, want) = get(&client, &path).await;
    let out = s
        .kubectl()
        .args(["get", "--raw", &path])
        .output()
        .expect("run kubectl");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(got["metadata"]["shardInfo"]["selector"], sel.as_str());
    assert_eq!(names(&got["items"]), names(&want["items"]));
    // And its error, as kubectl shows a 400.
    let bad = format!(
        "/api/v1/configmaps?shardSelector={}",
        enc("shardRange(object.metadata.uid, '0x0', '0x1')")
    );
    let out = s
        .kubectl()
        .args(["get", "--raw", &bad])
        .output()
        .expect("run kubectl");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("invalid shard selector: hexStart must be a 0x-prefixed 16-digit hex value"),
        "{stderr}"
    );
    s.shutdown().await.expect("shutdown");
}

/// The names of the query parameters of `GET path` (list and watch) in an OpenAPI document.
fn list_params(doc: &Value, path: &str) -> Vec<String> {
    doc["paths"][path]["get"]["parameters"]
        .as_array()
        .unwrap_or_else(|| panic!("no GET {path}"))
        .iter()
        .filter(|p| p["in"] == "query")
        .map(|p| p["name"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_documents_the_parameter_only_with_the_gate_on() {
    for gate in [true, false] {
        let s = server(gate).await;
        let client = s.client();
        let (_, index) = get(&client, "/openapi/v3").await;
        let url = index["paths"]["api/v1"]["serverRelativeURL"]
            .as_str()
            .expect("api/v1 in the index")
            .to_string();
        let (code, v3) = get(&client, &url).await;
        assert_eq!(code, 200);
        let (code, v2) = get(&client, "/openapi/v2").await;
        assert_eq!(code, 200);
        let meta = "io.k8s.apimachinery.pkg.apis.meta.v1";
        for (doc, schemas) in [(&v3, &v3["components"]["schemas"]), (&v2, &v2["definitions"])] {
            let params = list_params(doc, "/api/v1/namespaces/{namespace}/configmaps");
            assert_eq!(params.contains(&"shardSelector".to_string()), gate, "{params:?}");
            let del = doc["paths"]["/api/v1/namespaces/{namespace}/configmaps"]["delete"]["parameters"]
                .as_array()
                .expect("deletecollection")
                .iter()
                .any(|p| p["name"] == "shardSelector");
            assert_eq!(del, gate);
            if gate {
                // In name order, as the real documents list them.
                let at = params.iter().position(|p| p == "shardSelector").expect("listed");
                assert_eq!(params[at - 1], "sendInitialEvents");
                assert_eq!(params[at + 1], "timeoutSeconds");
                assert_eq!(
                    schemas[format!("{meta}.ShardInfo")]["required"],
                    json!(["selector"])
                );
            }
            assert_eq!(
                schemas[format!("{meta}.ListMeta")]["properties"]
                    .get("shardInfo")
                    .is_some(),
                gate
            );
        }
        s.shutdown().await.expect("shutdown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_resources_shard_too() {
    let s = server(true).await;
    let client = s.client();
    let crd = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/database-crd.yaml");
    s.server()
        .apply_file(std::path::Path::new(crd))
        .await
        .expect("apply the CRD");
    populate(&client, 0).await;
    let mut uids = BTreeMap::new();
    for i in 0..12 {
        let ns = NAMESPACES[i % 4];
        let body = json!({"apiVersion": "stable.example.com/v1", "kind": "Database",
            "metadata": {"name": format!("db-{i}")},
            "spec": {"engine": "PostgreSQL", "version": "15", "size": "1Gi"}});
        let req = http::Request::post(format!("/apis/stable.example.com/v1/namespaces/{ns}/databases"))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(&body).expect("JSON"))
            .expect("request");
        let created: Value = client.request(req).await.expect("create a Database");
        uids.insert(format!("{ns}/db-{i}"), uid_of(&created));
    }
    let mut seen = BTreeSet::new();
    for i in 0..2 {
        let (start, end, sel) = range("uid", i, 2);
        let (code, list) = get(
            &client,
            &format!(
                "/apis/stable.example.com/v1/databases?shardSelector={}",
                enc(&sel)
            ),
        )
        .await;
        assert_eq!(code, 200, "{list}");
        assert_eq!(list["metadata"]["shardInfo"]["selector"], sel.as_str());
        for key in names(&list["items"]) {
            let h = u128::from(fnv(&uids[&key]));
            assert!(start <= h && h < end, "{key}");
            assert!(seen.insert(key), "in two shards");
        }
    }
    assert_eq!(seen.len(), 12);
    s.shutdown().await.expect("shutdown");
}
