//! Conformance of list, watch and fault injection: selectors, paging with consistent snapshots,
//! resourceVersion semantics, 410 Gone for compacted history, the watch protocol (replay,
//! initial state, bookmarks, timeouts, streaming lists, selector translation, legacy paths,
//! HTTP/2), kube-runtime watchers surviving dropped watches and compaction, the fault handle,
//! and the capacity of the watch fan-out.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crwatch_apiserver::{Config, Match, TestServer};
use futures::stream::BoxStream;
use futures::{AsyncBufReadExt, StreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
    PostParams, VersionMatch, WatchEvent, WatchParams,
};
use kube::core::Status;
use serde_json::{Value, json};
use tokio::time::{Instant, timeout};

const WAIT: Duration = Duration::from_secs(15);
const SUITE: &str = "suite=watch-list";

// ---------------------------------------------------------------------------------------------
// Helpers

fn cm(name: &str, labels: &[(&str, &str)], v: &str) -> ConfigMap {
    let mut c = ConfigMap::default();
    c.metadata.name = Some(name.into());
    let mut l: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    l.insert("suite".into(), "watch-list".into());
    c.metadata.labels = Some(l);
    c.data = Some([("v".to_string(), v.to_string())].into());
    c
}

fn name_of(c: &ConfigMap) -> String {
    c.metadata.name.clone().unwrap_or_default()
}

fn data_of(c: &ConfigMap) -> String {
    c.data
        .as_ref()
        .and_then(|d| d.get("v"))
        .cloned()
        .unwrap_or_default()
}

fn rv_num(s: &str) -> u64 {
    s.parse()
        .unwrap_or_else(|_| panic!("resourceVersion {s:?} is not a number"))
}

async fn create(api: &Api<ConfigMap>, name: &str, labels: &[(&str, &str)], v: &str) -> ConfigMap {
    api.create(&PostParams::default(), &cm(name, labels, v))
        .await
        .expect("create configmap")
}

async fn set_data(api: &Api<ConfigMap>, name: &str, v: &str) -> ConfigMap {
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"v": v}})),
    )
    .await
    .expect("patch configmap")
}

async fn set_label(api: &Api<ConfigMap>, name: &str, k: &str, v: &str) -> ConfigMap {
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {k: v}}})),
    )
    .await
    .expect("label configmap")
}

async fn list_names(api: &Api<ConfigMap>, lp: &ListParams) -> Vec<String> {
    let mut v: Vec<String> = api
        .list(lp)
        .await
        .expect("list")
        .items
        .iter()
        .map(name_of)
        .collect();
    v.sort();
    v
}

/// The newest resourceVersion of a namespace's configmaps (a list's resourceVersion).
async fn list_rv(api: &Api<ConfigMap>) -> String {
    api.list(&ListParams::default().labels(SUITE))
        .await
        .expect("list")
        .metadata
        .resource_version
        .expect("list resourceVersion")
}

/// A raw GET through the kube client (works against a real cluster too): the JSON body, or
/// the Status the server failed with.
async fn raw_get(client: &kube::Client, path: &str) -> Result<Value, Box<Status>> {
    let req = http::Request::get(path).body(vec![]).expect("request");
    match client.request_text(req).await {
        Ok(text) => Ok(serde_json::from_str(&text).expect("JSON body")),
        Err(kube::Error::Api(s)) => Err(s),
        Err(e) => panic!("GET {path}: {e}"),
    }
}

fn expect_status(r: Result<Value, Box<Status>>, code: u16, reason: &str) -> Box<Status> {
    match r {
        Ok(v) => panic!("expected {code} {reason}, got a success: {v}"),
        Err(s) => {
            assert_eq!((s.code, s.reason.as_str()), (code, reason), "status: {s:?}");
            s
        }
    }
}

type Events<K> = BoxStream<'static, kube::Result<WatchEvent<K>>>;

async fn watch<K>(api: &Api<K>, wp: &WatchParams, rv: &str) -> Events<K>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug + 'static + Send,
{
    api.watch(wp, rv).await.expect("start watch").boxed()
}

/// The next event (bookmarks included); panics when the stream ends or stalls.
async fn next_event<K>(s: &mut Events<K>) -> WatchEvent<K> {
    match timeout(WAIT, s.next()).await {
        Ok(Some(Ok(ev))) => ev,
        Ok(Some(Err(e))) => panic!("watch failed: {e}"),
        Ok(None) => panic!("watch ended unexpectedly"),
        Err(_) => panic!("no watch event within {WAIT:?}"),
    }
}

/// The next non-bookmark event as `(TYPE, name, data)`.
async fn next_change(s: &mut Events<ConfigMap>) -> (String, String, String) {
    loop {
        match next_event(s).await {
            WatchEvent::Added(c) => return ("ADDED".into(), name_of(&c), data_of(&c)),
            WatchEvent::Modified(c) => return ("MODIFIED".into(), name_of(&c), data_of(&c)),
            WatchEvent::Deleted(c) => return ("DELETED".into(), name_of(&c), data_of(&c)),
            WatchEvent::Bookmark(_) => continue,
            WatchEvent::Error(e) => panic!("unexpected ERROR event: {e:?}"),
        }
    }
}

fn ev(kind: &str, name: &str, data: &str) -> (String, String, String) {
    (kind.into(), name.into(), data.into())
}

fn server(t: &common::Target) -> &TestServer {
    t.server.as_ref().expect("in-process server")
}

/// A reqwest client for the in-process server's HTTPS URL (its CA, its bearer token).
fn https(t: &common::Target) -> reqwest::Client {
    let s = server(t).server();
    let ca = reqwest::Certificate::from_pem(s.ca_pem().as_bytes()).expect("CA");
    reqwest::Client::builder()
        .tls_certs_only([ca])
        .default_headers(auth_headers(s.token()))
        .build()
        .expect("reqwest client")
}

fn auth_headers(token: &str) -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    h.insert(
        http::header::AUTHORIZATION,
        format!("Bearer {token}").parse().expect("header"),
    );
    h
}

/// Read a raw watch body to its end: the events as JSON, in order.
async fn read_all_events(mut resp: reqwest::Response, limit: Duration) -> Vec<Value> {
    let mut events = vec![];
    let mut buf: Vec<u8> = vec![];
    let deadline = Instant::now() + limit;
    loop {
        let chunk = tokio::time::timeout_at(deadline, resp.chunk())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "watch body did not end within {limit:?} ({} events so far)",
                    events.len()
                )
            });
        match chunk {
            Ok(Some(bytes)) => {
                buf.extend_from_slice(&bytes);
                while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=pos).collect();
                    events.push(serde_json::from_slice(&line).expect("watch line is JSON"));
                }
            }
            Err(e) => panic!("reading watch body: {e}"),
            Ok(None) => break,
        }
    }
    assert!(
        buf.iter().all(u8::is_ascii_whitespace),
        "trailing partial line: {:?}",
        String::from_utf8_lossy(&buf)
    );
    events
}

fn database_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("stable.example.com", "v1", "Database"),
        "databases",
    )
}

fn database(name: &str, version: &str) -> DynamicObject {
    let mut d = DynamicObject::new(name, &database_resource());
    d.data = json!({"spec": {"engine": "PostgreSQL", "version": version, "size": "1Gi"}});
    d
}

// ---------------------------------------------------------------------------------------------
// List

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_label_and_field_selectors() {
    for t in common::targets().await {
        let ns = t.namespace("wl-sel").await;
        let other = t.namespace("wl-sel-other").await;
        let api: Api<ConfigMap> = Api::namespaced(t.client.clone(), &ns);
        create(&api, "web", &[("app", "web"), ("tier", "front")], "1").await;
        create(&api, "db", &[("app", "db"), ("tier", "back")], "1").await;
        create(&api, "cache", &[("app", "cache")], "1").await;
        create(&api, "bare", &[], "1").await;
        let api_other: Api<ConfigMap> = Api::namespaced(t.client.clone(), &other);
        create(&api_other, "web", &[("app", "web")], "1").await;

        let cases: &[(&str, &[&str])] = &[
            ("app=web", &["web"]),
            ("app==web", &["web"]),
            ("app!=web", &["bare", "cache", "db"]),
            ("app in (web,db)", &["db", "web"]),
            ("app notin (web,db)", &["bare", "cache"]),
            ("tier", &["db", "web"]),
            ("!tier", &["bare", "cache"]),
            ("app,!tier", &["cache"]),
            ("app=web,tier=front", &["web"]),
            ("app=web,tier=back", &[]),
        ];
        for (sel, want) in cases {
            let got = list_names(&api, &ListParams::default().labels(&format!("{SUITE},{sel}"))).await;
            assert_eq!(&got, want, "[{}] labelSelector {sel:?}", t.name);
        }

        let got = list_names(
            &api,
            &ListParams::default().labels(SUITE).fields("metadata.name=db"),
        )
        .await;
        assert_eq!(got, ["db"], "[{}] fieldSelector metadata.name=", t.name);
        let got = list_names(
            &api,
            &ListParams::default().labels(SUITE).fields("metadata.name!=db"),
        )
        .await;
        assert_eq!(
            got,
            ["bare", "cache", "web"],
            "[{}] fieldSelector metadata.name!=",
            t.name
        );
        // Across all namespaces, metadata.namespace picks one of them.
        let all: Api<ConfigMap> = Api::all(t.client.clone());
        let lp = ListParams::default()
            .labels("suite=watch-list,app=web")
            .fields(&format!("metadata.namespace={other}"));
        let got = all.list(&lp).await.expect("list all");
        let got: Vec<(String, String)> = got
            .items
            .iter()
            .map(|c| (c.metadata.namespace.clone().unwrap_or_default(), name_of(c)))
            .collect();
        assert_eq!(
            got,
            [(other.clone(), "web".to_string())],
            "[{}] metadata.namespace",
            t.name
        );
        let lp = ListParams::default()
            .labels("suite=watch-list,app=web")
            .fields(&format!("metadata.namespace!={other}"));
        let got = all.list(&lp).await.expect("list all");
        assert!(
            got.items
                .iter()
                .any(|c| c.metadata.namespace.as_deref() == Some(ns.as_str())),
            "[{}]",
            t.name
        );
        assert!(
            got.items
                .iter()
                .all(|c| c.metadata.namespace.as_deref() != Some(other.as_str())),
            "[{}]",
            t.name
        );

        // Bad selectors are 400 BadRequest.
        let base = format!("/api/v1/namespaces/{ns}/configmaps");
        for q in [
            "labelSelector=app%20in%20(web",
            "labelSelector=a%3D%3D%3Db",
            "labelSelector=!!x",
        ] {
            expect_status(
                raw_get(&t.client, &format!("{base}?{q}")).await,
                400,
                "BadRequest",
            );
        }
        let s = expect_status(
            raw_get(&t.client, &format!("{base}?fieldSelector=spec.foo%3Dbar")).await,
            400,
            "BadRequest",
        );
        assert!(
            s.message.contains("field label not supported: spec.foo"),
            "[{}] {}",
            t.name,
            s.message
        );
        expect_status(
            raw_get(&t.client, &format!("{base}?fieldSelector=metadata.name")).await,
            400,
            "BadRequest",
        );
        t.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_paging_returns_a_consistent_snapshot() {
    for t in common::targets().await {
        let ns = t.namespace("wl-page").await;
        let api: Api<ConfigMap> = Api::namespaced(t.client.clone(), &ns);
        for i in 0..10 {
            create(&api, &format!("cm-{i:02}"), &[], "old").await;
        }
        // Unfiltered, so remainingItemCount is exact (a real cluster adds kube-root-ca.crt).
        let first = api.list(&ListParams::default().limit(3)).await.expect("page 1");
        let snapshot_rv = first.metadata.resource_version.clone().expect("rv");
        let token = first
            .metadata
            .continue_
            .clone()
            .expect("continue token on page 1");
        let remaining = first
            .metadata
            .remaining_item_count
            .expect("remainingItemCount on page 1");
        assert_eq!(first.items.len(), 3, "[{}]", t.name);

        // Change things between pages: the later pages must still show the first page's snapshot.
        set_data(&api, "cm-05", "new").await;
        api.delete("cm-07", &DeleteParams::default())
            .await
            .expect("delete");
        create(&api, "cm-04a", &[], "new").await;
        create(&api, "cm-99", &[], "new").await;

        let mut items: Vec<ConfigMap> = first.items.clone();
        let mut token = Some(token);
        let mut pages = 1;
        while let Some(tok) = token.take() {
            let page = api
                .list(&ListParams::default().limit(3).continue_token(&tok))
                .await
                .expect("next page");
            assert_eq!(
                page.metadata.resource_version.as_deref(),
                Some(snapshot_rv.as_str()),
                "[{}] page rv",
                t.name
            );
            assert!(page.items.len() <= 3, "[{}]", t.name);
            items.extend(page.items);
            token = page.metadata.continue_.filter(|c| !c.is_empty());
            pages += 1;
            assert!(pages < 20, "paging does not terminate");
        }
        assert_eq!(
            items.len() as i64,
            3 + remaining,
            "[{}] remainingItemCount",
            t.name
        );
        let names: Vec<String> = items
            .iter()
            .map(name_of)
            .filter(|n| n.starts_with("cm-"))
            .collect();
        let want: Vec<String> = (0..10).map(|i| format!("cm-{i:02}")).collect();
        assert_eq!(
            names, want,
            "[{}] every object exactly once, in order, from the snapshot",
            t.name
        );
        for c in items.iter().filter(|c| name_of(c).starts_with("cm-")) {
            assert_eq!(
                data_of(c),
                "old",
                "[{}] {} shows its state at the snapshot",
                t.name,
                name_of(c)
            );
            assert!(rv_num(c.metadata.resource_version.as_deref().unwrap()) <= rv_num(&snapshot_rv));
        }

        // With a selector the server cannot count what is left, so it says nothing.
        let page = api
            .list(&ListParams::default().labels(SUITE).limit(2))
            .await
            .expect("selected page");
        assert!(page.metadata.continue_.is_some(), "[{}]", t.name);
        assert_eq!(
            page.metadata.remaining_item_count, None,
            "[{}] remainingItemCount with a selector",
            t.name
        );
        t.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continue_token_from_before_compaction_is_expired() {
    let t = common::local().await;
    let ns = t.namespace("wl-page410").await;
    let api: Api<ConfigMap> = Api::namespaced(t.client.clone(), &ns);
    for i in 0..6 {
        create(&api, &format!("cm-{i}"), &[], "old").await;
    }
    let first = api.list(&ListParams::default().limit(2)).await.expect("page 1");
    let token = first.metadata.continue_.clone().expect("continue");
    set_data(&api, "cm-4", "new").await;
    t.faults.as_ref().unwrap().compact();
    let path = format!("/api/v1/namespaces/{ns}/configmaps?limit=2&continue={token}");
    let s = expect_status(raw_get(&t.client, &path).await, 410, "Expired");
    assert_eq!(
        s.message,
        "The provided continue parameter is too old to display a consistent list result. You can start a new list \
         without the continue parameter, or use the continue token in this response to retrieve the remainder of the \
         results. Continuing with the provided token results in an inconsistent list - objects that were created, \
         modified, or deleted between the time the first chunk was returned and now may show up in the list."
    );
    // The token in the 410 continues at the newest state (an inconsistent list, as documented).
    let fresh = s
        .metadata
        .as_ref()
        .and_then(|m| m.continue_.clone())
        .expect("continue token in the 410 Status");
    let rest = api
        .list(&ListParams::default().limit(10).continue_token(&fresh))
        .await
        .expect("inconsistent continue");
    let names: Vec<String> = rest.items.iter().map(name_of).collect();
    assert_eq!(names, ["cm-2", "cm-3", "cm-4", "cm-5"]);
    assert_eq!(data_of(&rest.items[2]), "new", "the rest is the newest state");
    // Malformed tokens are 400.
    let path = format!("/api/v1/namespaces/{ns}/configmaps?limit=2&continue=not-a-token");
    expect_status(raw_get(&t.client, &path).await, 400, "BadRequest");
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_resource_version_semantics() {
    for t in common::targets().await {
        let ns = t.namespace("wl-rv").await;
        let api: Api<ConfigMap> = Api::namespaced(t.client.clone(), &ns);
        create(&api, "a", &[], "1").await;
        let rv = list_rv(&api).await;
        set_data(&api, "a", "2").await;
        create(&api, "b", &[], "1").await;

        // Exact: the state at that revision, with that revision.
        let lp = ListParams::default()
            .labels(SUITE)
            .at(&rv)
            .matching(VersionMatch::Exact);
        let old = api.list(&lp).await.expect("exact list");
        assert_eq!(
            old.metadata.resource_version.as_deref(),
            Some(rv.as_str()),
            "[{}]",
            t.name
        );
        let got: Vec<(String, String)> = old.items.iter().map(|c| (name_of(c), data_of(c))).collect();
        assert_eq!(
            got,
            [("a".to_string(), "1".to_string())],
            "[{}] Exact shows the old state",
            t.name
        );

        // NotOlderThan: at least as new as asked, so the current state.
        let lp = ListParams::default()
            .labels(SUITE)
            .at(&rv)
            .matching(VersionMatch::NotOlderThan);
        let now = api.list(&lp).await.expect("not older than");
        assert!(
            rv_num(now.metadata.resource_version.as_deref().unwrap()) >= rv_num(&rv),
            "[{}]",
            t.name
        );
        let got: Vec<(String, String)> = now.items.iter().map(|c| (name_of(c), data_of(c))).collect();
        assert_eq!(
            got,
            [("a".into(), "2".into()), ("b".into(), "1".into())],
            "[{}] NotOlderThan",
            t.name
        );
        // resourceVersion=0 (any) and NotOlderThan=0 answer too.
        let lp = ListParams::default()
            .labels(SUITE)
            .at("0")
            .matching(VersionMatch::NotOlderThan);
        assert_eq!(api.list(&lp).await.expect("rv=0").items.len(), 2, "[{}]", t.name);

        // Invalid combinations are rejected as the real server's ListOptions validation does.
        let base = format!("/api/v1/namespaces/{ns}/configmaps");
        let s = expect_status(
            raw_get(&t.client, &format!("{base}?resourceVersionMatch=Exact")).await,
            422,
            "Invalid",
        );
        assert_eq!(
            s.message,
            "ListOptions.meta.k8s.io \"\" is invalid: resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided",
            "[{}]",
            t.name
        );
        let s = expect_status(
            raw_get(
                &t.client,
                &format!("{base}?resourceVersion=0&resourceVersionMatch=Exact"),
            )
            .await,
            422,
            "Invalid",
        );
        assert!(
            s.message
                .contains("resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\""),
            "[{}] {}",
            t.name,
            s.message
        );
        let s = expect_status(
            raw_get(
                &t.client,
                &format!("{base}?resourceVersion={rv}&resourceVersionMatch=Newest"),
            )
            .await,
            422,
            "Invalid",
        );
        assert!(
            s.message
                .contains("resourceVersionMatch: Unsupported value: \"Newest\""),
            "[{}] {}",
            t.name,
            s.message
        );
        t.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_list_after_compaction_is_expired() {
    let t = common::local().await;
    let ns = t.namespace("wl-rv410").await;
    let api: Api<ConfigMap> = Api::namespaced(t.client.clone(), &ns);
    create(&api, "a", &[], "1").await;
    let rv = list_rv(&api).await;
    set_data(&api, "a", "2").await;
    t.faults.as_ref().unwrap().compact();
    let path = format!("/api/v1/namespaces/{ns}/configmaps?resourceVersion={rv}&resourceVersionMatch=Exact");
    let s = expect_status(raw_get(&t.client, &path).await, 410, "Expired");
    assert_eq!(s.message, "The resourceVersion for the provided list is too old.");
    // The newest revision is still served exactly.
    let now = server(&t).server().revision().to_string();
    let lp = ListParams::default()
        .labels(SUITE)
        .at(&now)
        .matching(VersionMatch::Exact);
    assert_eq!(
        data_of(&api.list(&lp).await.expect("exact at newest").items[0]),
        "2"
    );
    t.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// Watch

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_from_resource_version_replays_history_in_order() {
    for t in common::targets().await {
        let ns = t.namespace("wl-replay").await;
        let api: Api<ConfigMap> = Api::namespaced(t.client.clone(), &ns);
        create(&api, "before", &[], "0").await;
        let rv = list_rv(&api).await;
        create(&api, "a", &[], "1").await;
        set_data(&api, "a", "2").await;
        create(&api, "b", &[], "1").await;
        api.delete("a", &DeleteParams::default()).await.expect("delete");

        let mut s = watch(&api, &WatchParams::default().labels(SUITE).timeout(30), &rv).await;
        let mut last = rv_num(&rv);
        let want = [
            ev("ADDED", "a", "1"),
            ev("MODIFIED", "a", "2"),
            ev("ADDED", "b", "1"),
            ev("DELETED", "a", "2"),
        ];
        for w in want {
            let e = next_event(&mut s).await;
            let (kind, obj) = match &e {
                WatchEvent::Added(c) => ("ADDED", c),
                WatchEvent::Modified(c) => ("MODIFIED", c),
                WatchEvent::Deleted(c) => ("DELETED", c),
                WatchEvent::Bookmark(_) => continue,
                WatchEvent::Error(e) => panic!("[{}] error event {e:?}", t.name),
            };
            assert_eq!(ev(kind, &name_of(obj), &data_of(obj)), w, "[{}]", t.name);
            let r = rv_num(obj.metadata.resource_version.as_deref().unwrap());
            assert!(
                r > last,
                "[{}] resourceVersions increase: {r} after {last}",
                t.name
            );
            last = r;
        }
        // Then live changes follow.
        set_data(&api, "b", "2").await;
        assert_eq!(
            next_change(&mut s).await,
            ev("MODIFIED", "b", "2"),
            "[{}]",
            t.name
        );
        t.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_without_resource_version_starts_with_current_objects() {
    for t in common::targets().await {
        let ns = t.namespace("wl-now").await;
        let api: Api<ConfigMap> = Api::namespaced(t.client.clone(), &ns);
        create(&api, "a", &[], "1").await;
        create(&api, "b", &[], "1").await;
        set_data(&api, "b", "2").await;
        for (i, rv) in ["", "0"].into_iter().enumerate() {
            let mut s = watch(&api, &WatchParams::default().labels(SUITE).timeout(30), rv).await;
            let mut initial = BTreeSet::new();
            for _ in 0..2 {
                initial.insert(next_change(&mut s).await);
            }
            let want: BTreeSet<_> = [ev("ADDED", "a", "1"), ev("ADDED", "b", "2")].into();
            assert_eq!(
                initial, want,
                "[{}] synthetic ADDED for resourceVersion={rv:?}",
                t.name
            );
            let name = format!("c{i}");
            create(&api, &name, &[], "1").await;
            assert_eq!(
                next_change(&mut s).await,
                ev("ADDED", &name, "1"),
                "[{}] rv={rv:?}",
                t.name
            );
            api.delete(&name, &DeleteParams::default()).await.expect("delete");
            assert_eq!(
                next_change(&mut s).await,
                ev("DELETED", &name, "1"),
                "[{}] rv={rv:?}",
                t.name
            );
        }
        t.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_watch_sees_added_modified_deleted() {
    for t in common::targets().await {
        t.install_database_crd().await;
        let ns = t.namespace("wl-db").await;
        let api: Api<DynamicObject> = Api::namespaced_with(t.client.clone(), &ns, &database_resource());
        let rv = api
            .list(&ListParams::default())
            .await
            .expect("list")
            .metadata
            .resource_version
            .expect("rv");
        let mut s = api
            .watch(&WatchParams::default().timeout(30), &rv)
            .await
            .expect("watch")
            .boxed();
        api.create(&PostParams::default(), &database("orders", "16"))
            .await
            .expect("create");
        let patch = json!({"spec": {"version": "17"}});
        api.patch("orders", &PatchParams::default(), &Patch::Merge(patch))
            .await
            .expect("patch");
        api.delete("orders", &DeleteParams::default())
            .await
            .expect("delete");
        let mut seen = vec![];
        while seen.len() < 3 {
            let (kind, d) = match next_event(&mut s).await {
                WatchEvent::Added(d) => ("ADDED", d),
                WatchEvent::Modified(d) => ("MODIFIED", d),
                WatchEvent::Deleted(d) => ("DELETED", d),
                WatchEvent::Bookmark(_) => continue,
                WatchEvent::Error(e) => panic!("[{}] {e:?}", t.name),
            };
            assert_eq!(
                d.types.as_ref().map(|t| t.kind.as_str()),
                Some("Database"),
                "[{}]",
                t.name
            );
            assert_eq!(
                d.types.as_ref().map(|t| t.api_version.as_str()),
                Some("stable.example.com/v1"),
                "[{}]",
                t.name
            );
            seen.push((
                kind,
                d.metadata.name.clone().unwrap_or_default(),
                d.data["spec"]["version"].clone(),
            ));
        }
        assert_eq!(
            seen,
            [
                ("ADDED", "orders".into(), json!("16")),
                ("MODIFIED", "orders".into(), json!("17")),
                ("DELETED", "orders".into(), json!("17"))
            ],
            "[{}]",
            t.name
        );
        t.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookmarks_only_when_allowed_and_timeout_ends_the_stream() {
    let t = common::local().await;
    let ns = t.namespace("wl-bm").await;
    let api: Api<ConfigMap> = Api::namespaced(t.client.clone(), &ns);
    create(&api, "a", &[], "1").await;
    let rv = list_rv(&api).await;

    // With bookmarks allowed (TestServer sends them every second): BOOKMARKs carrying a
    // resourceVersion no older than what the watch has seen.
    let mut s = watch(&api, &WatchParams::default().labels(SUITE).timeout(30), &rv).await;
    create(&api, "b", &[], "1").await;
    assert_eq!(next_change(&mut s).await, ev("ADDED", "b", "1"));
    let b_rv = list_rv(&api).await;
    let mut bookmarks = 0;
    while bookmarks < 2 {
        match next_event(&mut s).await {
            WatchEvent::Bookmark(b) => {
                assert_eq!(b.types.kind, "ConfigMap");
                assert_eq!(b.types.api_version, "v1");
                assert!(
                    rv_num(&b.metadata.resource_version) >= rv_num(&b_rv),
                    "bookmark rv {}",
                    b.metadata.resource_version
                );
                bookmarks += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    // Without bookmarks and with timeoutSeconds=2: nothing but the change, then the server
    // ends the stream after (at least) the timeout.
    let wp = WatchParams {
        bookmarks: false,
        ..WatchParams::default().labels(SUITE).timeout(2)
    };
    let started = Instant::now();
    let mut s = watch(&api, &wp, &rv).await;
    let mut got = vec![];
    while let Some(e) = timeout(WAIT, s.next()).await.expect("stream ends in time") {
        got.push(format!("{:?}", e.expect("event")));
    }
    let took = started.elapsed();
    assert_eq!(got, ["Added event"], "no bookmarks unless allowed");
    assert!(
        took >= Duration::from_millis(1900),
        "ended after {took:?}, before timeoutSeconds=2"
    );

    // timeoutSeconds=1 ends even a quiet stream.
    let started = Instant::now();
    let mut s = watch(&api, &WatchParams::default().labels(SUITE).timeout(1), "").await;
    while timeout(WAIT, s.next())
        .await
        .expect("stream ends in time")
        .is_some()
    {}
    assert!(started.elapsed() >= Duration::from_millis(900));
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_seconds_ends_the_stream() {
    for t in common::targets().await {
        let ns = t.namespace("wl-timeout").await;
        let api: Api<ConfigMap> = Api::namespaced(t.client.clone(), &ns);
        let started = Instant::now();
        let mut s = watch(&api, &WatchParams::default().labels(SUITE).timeout(1), "").await;
        while let Some(e) = timeout(WAIT, s.next()).await.expect("the stream ends") {
            e.expect("event");
        }
        assert!(
            started.elapsed() >= Duration::from_millis(900),
            "[{}] {:?}",
            t.name,
            started.elapsed()
        );
        t.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_initial_events_ends_with_an_annotated_bookmark() {
    for t in common::targets().await {
        let ns = t.namespace("wl-initial").await;
        let api: Api<ConfigMap> = Api::namespaced(t.client.clone(), &ns);
        create(&api, "a", &[], "1").await;
        create(&api, "b", &[], "1").await;
        let before = list_rv(&api).await;
        let mut s = watch(
            &api,
            &WatchParams::streaming_lists().labels(SUITE).timeout(30),
            "",
        )
        .await;
        let mut initial = BTreeSet::new();
        let end = loop {
            match next_event(&mut s).await {
                WatchEvent::Added(c) => {
                    initial.insert(name_of(&c));
                }
                WatchEvent::Bookmark(b) => {
                    if b.metadata
                        .annotations
                        .get("k8s.io/initial-events-end")
                        .map(String::as_str)
                        == Some("true")
                    {
                        break b;
                    }
                    assert!(
                        initial.is_empty(),
                        "[{}] plain bookmark in the middle of initial events",
                        t.name
                    );
                }
                other => panic!("[{}] unexpected {other:?}", t.name),
            }
        };
        assert_eq!(initial, ["a".to_string(), "b".to_string()].into(), "[{}]", t.name);
        assert!(
            rv_num(&end.metadata.resource_version) >= rv_num(&before),
            "[{}] {}",
            t.name,
            end.metadata.resource_version
        );
        create(&api, "c", &[], "1").await;
        assert_eq!(next_change(&mut s).await, ev("ADDED", "c", "1"), "[{}]", t.name);

        // The raw form: the annotation sits on the bookmark object's metadata.
        let path = format!(
            "/api/v1/namespaces/{ns}/configmaps?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&labelSelector=suite%3Dwatch-list&timeoutSeconds=30"
        );
        let req = http::Request::get(path).body(vec![]).expect("request");
        let mut lines = t.client.request_stream(req).await.expect("raw watch").lines();
        let mut types = vec![];
        loop {
            let line = timeout(WAIT, lines.next())
                .await
                .expect("line")
                .expect("open")
                .expect("read");
            let v: Value = serde_json::from_str(&line).expect("JSON");
            types.push(v["type"].as_str().unwrap_or_default().to_string());
            if v["type"] == "BOOKMARK"
                && v["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"] == "true"
            {
                assert_eq!(v["object"]["kind"], "ConfigMap", "[{}]", t.name);
                break;
            }
        }
        assert_eq!(types, ["ADDED", "ADDED", "ADDED", "BOOKMARK"], "[{}]", t.name);

        // sendInitialEvents needs resourceVersionMatch=NotOlderThan.
        let path = format!(
            "/api/v1/namespaces/{ns}/configmaps?watch=true&sendInitialEvents=true&allowWatchBookmarks=true"
        );
        let s = expect_status(raw_get(&t.client, &path).await, 422, "Invalid");
        assert!(
            s.message.contains("resourceVersionMatch: Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan"),
            "[{}] {}",
            t.name,
            s.message
        );
        // resourceVersionMatch on a watch needs sendInitialEvents.
        let path = format!("/api/v1/namespaces/{ns}/configmaps?watch=true&resourceVersionMatch=NotOlderThan");
        let s = expect_status(raw_get(&t.client, &path).await, 422, "Invalid");
        assert!(
            s.message
                .contains("resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided"),
            "[{}] {}",
            t.name,
            s.message
        );
        t.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_from_a_compacted_resource_version_gets_410() {
    let t = common::local().await;
    let ns = t.namespace("wl-gone").await;
    let api: Api<ConfigMap> = Api::namespaced(t.client.clone(), &ns);
    create(&api, "a", &[], "1").await;
    let old = list_rv(&api).await;
    set_data(&api, "a", "2").await;
    set_data(&api, "a", "3").await;
    let compacted_at = server(&t).server().revision();
    t.faults.as_ref().unwrap().compact();
    let want = format!("too old resource version: {old} ({compacted_at})");

    // kube-rs surfaces it as an ERROR event with a 410 Expired Status.
    let mut s = watch(&api, &WatchParams::default().timeout(30), &old).await;
    match next_event(&mut s).await {
        WatchEvent::Error(st) => {
            assert_eq!(
                (st.code, st.reason.as_str(), st.message.as_str()),
                (410, "Expired", want.as_str())
            );
        }
        other => panic!("expected an ERROR event, got {other:?}"),
    }
    assert!(
        timeout(WAIT, s.next()).await.expect("ends").is_none(),
        "the stream ends after the error"
    );

    // On the wire: 200, then one ERROR line with a v1 Status.
    let url = format!(
        "{}/api/v1/namespaces/{ns}/configmaps?watch=true&resourceVersion={old}",
        server(&t).server().url()
    );
    let resp = https(&t).get(url).send().await.expect("watch");
    assert_eq!(resp.status(), 200);
    let events = read_all_events(resp, WAIT).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["type"], "ERROR");
    assert_eq!(
        events[0]["object"],
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": want, "reason": "Expired", "code": 410})
    );
    // The compaction point itself is still fine.
    let mut s = watch(
        &api,
        &WatchParams::default().timeout(30),
        &compacted_at.to_string(),
    )
    .await;
    set_data(&api, "a", "4").await;
    assert_eq!(next_change(&mut s).await, ev("MODIFIED", "a", "4"));
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_selector_watch_translates_objects_that_start_or_stop_matching() {
    for t in common::targets().await {
        let ns = t.namespace("wl-lsel").await;
        let api: Api<ConfigMap> = Api::namespaced(t.client.clone(), &ns);
        let rv = list_rv(&api).await;
        let mut s = watch(
            &api,
            &WatchParams::default()
                .labels("suite=watch-list,app=web")
                .timeout(30),
            &rv,
        )
        .await;
        create(&api, "a", &[("app", "web")], "1").await;
        create(&api, "b", &[("app", "db")], "1").await;
        set_label(&api, "a", "app", "db").await;
        set_label(&api, "b", "app", "web").await;
        set_data(&api, "b", "2").await;
        set_data(&api, "a", "2").await; // not matching: unseen
        api.delete("b", &DeleteParams::default()).await.expect("delete");
        create(&api, "z", &[("app", "web")], "1").await;
        let mut got = vec![];
        for _ in 0..6 {
            got.push(next_change(&mut s).await);
        }
        assert_eq!(
            got,
            [
                ev("ADDED", "a", "1"),
                ev("DELETED", "a", "1"),
                ev("ADDED", "b", "1"),
                ev("MODIFIED", "b", "2"),
                ev("DELETED", "b", "2"),
                ev("ADDED", "z", "1"),
            ],
            "[{}]",
            t.name
        );
        t.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_watch_path_and_single_name_watches() {
    for t in common::targets().await {
        t.install_database_crd().await;
        let ns = t.namespace("wl-legacy").await;
        let dbs: Api<DynamicObject> = Api::namespaced_with(t.client.clone(), &ns, &database_resource());
        let rv = dbs
            .list(&ListParams::default())
            .await
            .expect("list")
            .metadata
            .resource_version
            .expect("rv");
        let path = format!(
            "/apis/stable.example.com/v1/watch/namespaces/{ns}/databases?resourceVersion={rv}&timeoutSeconds=30"
        );
        let req = http::Request::get(path).body(vec![]).expect("request");
        let mut lines = t.client.request_stream(req).await.expect("legacy watch").lines();
        dbs.create(&PostParams::default(), &database("one", "16"))
            .await
            .expect("create");
        dbs.delete("one", &DeleteParams::default()).await.expect("delete");
        let mut got = vec![];
        while got.len() < 2 {
            let line = timeout(WAIT, lines.next())
                .await
                .expect("line")
                .expect("open")
                .expect("read");
            let v: Value = serde_json::from_str(&line).expect("JSON");
            if v["type"] == "BOOKMARK" {
                continue;
            }
            assert_eq!(v["object"]["kind"], "Database", "[{}]", t.name);
            got.push((
                v["type"].as_str().unwrap().to_string(),
                v["object"]["metadata"]["name"].as_str().unwrap().to_string(),
            ));
        }
        assert_eq!(
            got,
            [
                ("ADDED".into(), "one".into()),
                ("DELETED".into(), "one".to_string())
            ],
            "[{}]",
            t.name
        );

        // One object by fieldSelector=metadata.name, and by the legacy per-name path.
        let api: Api<ConfigMap> = Api::namespaced(t.client.clone(), &ns);
        let rv = list_rv(&api).await;
        let mut s = watch(
            &api,
            &WatchParams::default().fields("metadata.name=a").timeout(30),
            &rv,
        )
        .await;
        let path =
            format!("/api/v1/watch/namespaces/{ns}/configmaps/a?resourceVersion={rv}&timeoutSeconds=30");
        let req = http::Request::get(path).body(vec![]).expect("request");
        let mut lines = t
            .client
            .request_stream(req)
            .await
            .expect("legacy single watch")
            .lines();
        create(&api, "b", &[], "1").await;
        create(&api, "a", &[], "1").await;
        set_data(&api, "b", "2").await;
        set_data(&api, "a", "2").await;
        api.delete("a", &DeleteParams::default()).await.expect("delete");
        let want = [
            ev("ADDED", "a", "1"),
            ev("MODIFIED", "a", "2"),
            ev("DELETED", "a", "2"),
        ];
        for w in &want {
            assert_eq!(&next_change(&mut s).await, w, "[{}] fieldSelector watch", t.name);
        }
        let mut got = vec![];
        while got.len() < 3 {
            let line = timeout(WAIT, lines.next())
                .await
                .expect("line")
                .expect("open")
                .expect("read");
            let v: Value = serde_json::from_str(&line).expect("JSON");
            if v["type"] != "BOOKMARK" {
                let o = &v["object"];
                got.push(ev(
                    v["type"].as_str().unwrap(),
                    o["metadata"]["name"].as_str().unwrap(),
                    o["data"]["v"].as_str().unwrap(),
                ));
            }
        }
        assert_eq!(got, want, "[{}] legacy per-name watch", t.name);
        t.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_over_http2() {
    let t = common::local().await;
    let ns = t.namespace("wl-h2").await;
    let api: Api<ConfigMap> = Api::namespaced(t.client.clone(), &ns);
    let rv = list_rv(&api).await;
    let s = server(&t).server();
    let plain = reqwest::Client::builder()
        .http2_prior_knowledge()
        .default_headers(auth_headers(s.token()))
        .build()
        .expect("h2c client");
    let alpn = https(&t);
    let q = format!("/api/v1/namespaces/{ns}/configmaps?watch=true&resourceVersion={rv}&timeoutSeconds=3");
    let h2c = plain
        .get(format!("{}{q}", s.http_url().expect("plain HTTP")))
        .send()
        .await
        .expect("h2c watch");
    let tls = alpn
        .get(format!("{}{q}", s.url()))
        .send()
        .await
        .expect("TLS watch");
    assert_eq!(
        (h2c.status(), h2c.version()),
        (reqwest::StatusCode::OK, http::Version::HTTP_2),
        "h2c"
    );
    assert_eq!(
        (tls.status(), tls.version()),
        (reqwest::StatusCode::OK, http::Version::HTTP_2),
        "ALPN h2"
    );
    create(&api, "a", &[], "1").await;
    set_data(&api, "a", "2").await;
    for resp in [h2c, tls] {
        let events = read_all_events(resp, WAIT).await;
        let got: Vec<(String, String)> = events
            .iter()
            .filter(|e| e["type"] != "BOOKMARK")
            .map(|e| {
                (
                    e["type"].as_str().unwrap().into(),
                    e["object"]["data"]["v"].as_str().unwrap().into(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("ADDED".to_string(), "1".to_string()),
                ("MODIFIED".into(), "2".into())
            ]
        );
    }
    // Many concurrent streams share one HTTP/2 connection.
    let mut streams = vec![];
    for _ in 0..20 {
        streams.push(
            plain
                .get(format!("{}{q}", s.http_url().unwrap()))
                .send()
                .await
                .expect("h2 stream"),
        );
    }
    create(&api, "b", &[], "1").await;
    for resp in streams {
        let events = read_all_events(resp, WAIT).await;
        assert!(
            events
                .iter()
                .any(|e| e["type"] == "ADDED" && e["object"]["metadata"]["name"] == "b")
        );
    }
    t.cleanup().await;
}

/// A reflector over configmaps (plain list+watch, or streaming lists) through drops and
/// compactions while a writer keeps changing objects: its view ends equal to the server's.
async fn reflector_survives_faults(streaming: bool) {
    use kube::runtime::{WatchStreamExt, reflector, watcher};
    let t = common::local().await;
    let faults = t.faults.clone().unwrap();
    let ns = t.namespace("wl-refl").await;
    let api: Api<ConfigMap> = Api::namespaced(t.client.clone(), &ns);
    for i in 0..5 {
        create(&api, &format!("cm-{i}"), &[], "0").await;
    }
    let (store, writer) = reflector::store();
    let cfg = if streaming {
        watcher::Config::default().streaming_lists()
    } else {
        watcher::Config::default()
    };
    let stream = reflector(writer, watcher(api.clone(), cfg.labels(SUITE))).default_backoff();
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while stream.next().await.is_some() {}
    });
    timeout(WAIT, store.wait_until_ready())
        .await
        .expect("reflector ready")
        .expect("ready");
    faults.clear_requests();

    for round in 0..6 {
        for i in 0..5 {
            set_data(&api, &format!("cm-{i}"), &format!("{round}")).await;
        }
        create(&api, &format!("new-{round}"), &[], "0").await;
        if round % 2 == 0 {
            api.delete(&format!("new-{round}"), &DeleteParams::default())
                .await
                .expect("delete");
        }
        match round % 3 {
            0 => faults.drop_watches(),
            1 => faults.compact(),
            _ => {
                // A gap the re-watch cannot bridge: hold the re-watch (pause) until a change
                // (made behind the HTTP layer) has been compacted away; it gets 410 Gone.
                let before = faults.count("watch", "configmaps");
                faults.pause();
                faults.drop_watches();
                common::eventually(10, "the re-watch to arrive", || {
                    let n = faults.count("watch", "configmaps");
                    async move { (n > before).then_some(()) }
                })
                .await;
                let gap = json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": "cm-0", "namespace": ns, "labels": {"suite": "watch-list"}},
                    "data": {"v": format!("gap-{round}")}});
                server(&t)
                    .server()
                    .apply(gap)
                    .await
                    .expect("apply behind the HTTP layer");
                faults.compact();
                faults.resume();
                // Only a fresh list (or streaming list) can show the compacted-away change.
                let want = format!("gap-{round}");
                common::eventually(20, "the watcher to start over after 410 Gone", || {
                    let seen = store
                        .state()
                        .iter()
                        .any(|c| name_of(c) == "cm-0" && data_of(c) == want);
                    async move { seen.then_some(()) }
                })
                .await;
            }
        }
    }
    set_data(&api, "cm-0", "final").await;
    let want: BTreeMap<String, String> = api
        .list(&ListParams::default().labels(SUITE))
        .await
        .expect("list")
        .items
        .iter()
        .map(|c| (name_of(c), c.metadata.resource_version.clone().unwrap()))
        .collect();
    common::eventually(20, "the reflector to match the server", || {
        let have: BTreeMap<String, String> = store
            .state()
            .iter()
            .map(|c| (name_of(c), c.metadata.resource_version.clone().unwrap()))
            .collect();
        let ok = have == want;
        async move { ok.then_some(()) }
    })
    .await;
    // It got there by re-watching after each drop and starting over after each 410: with a
    // fresh list, or (streaming lists) a fresh watch with initial events and no list at all.
    let watches = faults.count("watch", "configmaps");
    let lists = faults.count("list", "configmaps") - 1; // the list just above
    if streaming {
        assert!(
            watches >= 6,
            "re-watched after drops and 410s ({watches} watches)"
        );
        assert_eq!(lists, 0, "streaming lists never list");
    } else {
        assert!(watches >= 4, "re-watched after drops ({watches} watches)");
        assert!(lists >= 2, "re-listed after each 410 Gone ({lists} lists)");
    }
    task.abort();
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_runtime_watcher_survives_drops_and_compaction() {
    reflector_survives_faults(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_runtime_streaming_list_watcher_survives_drops_and_compaction() {
    reflector_survives_faults(true).await;
}

// ---------------------------------------------------------------------------------------------
// Faults

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_failures_hit_exactly_the_matching_requests() {
    let t = common::local().await;
    t.install_database_crd().await;
    let faults = t.faults.clone().unwrap();
    let ns = t.namespace("wl-fail").await;
    let api: Api<ConfigMap> = Api::namespaced(t.client.clone(), &ns);
    create(&api, "a", &[], "1").await;
    let http = https(&t);
    let base = server(&t).server().url().to_string();
    let list = format!("{base}/api/v1/namespaces/{ns}/configmaps");
    let get = format!("{list}/a");
    let dbs = format!("{base}/apis/stable.example.com/v1/namespaces/{ns}/databases");

    // 429 on the next two lists; gets pass meanwhile.
    faults.fail_next(2, 429, Match::verb("list"));
    for round in 0..2 {
        assert_eq!(
            http.get(&get).send().await.unwrap().status(),
            200,
            "get is not a list"
        );
        let r = http.get(&list).send().await.unwrap();
        assert_eq!(r.status(), 429, "list {round}");
        assert_eq!(
            r.headers().get("retry-after").and_then(|v| v.to_str().ok()),
            Some("1")
        );
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["kind"], "Status");
        assert_eq!(
            (body["reason"].as_str(), body["code"].as_u64()),
            (Some("TooManyRequests"), Some(429))
        );
        assert_eq!(body["details"]["retryAfterSeconds"], 1);
    }
    assert_eq!(
        http.get(&list).send().await.unwrap().status(),
        200,
        "only two lists failed"
    );

    // 500 and 503 on one resource only.
    for (code, reason, retry) in [
        (500u16, "InternalError", None),
        (503, "ServiceUnavailable", Some("1")),
    ] {
        faults.fail_next(1, code, Match::resource("databases"));
        assert_eq!(
            http.get(&list).send().await.unwrap().status(),
            200,
            "configmaps unaffected by {code}"
        );
        let r = http.get(&dbs).send().await.unwrap();
        assert_eq!(r.status().as_u16(), code);
        assert_eq!(
            r.headers().get("retry-after").and_then(|v| v.to_str().ok()),
            retry,
            "Retry-After with {code}"
        );
        let body: Value = r.json().await.unwrap();
        assert_eq!(
            (body["reason"].as_str(), body["code"].as_u64()),
            (Some(reason), Some(code as u64))
        );
        assert_eq!(
            http.get(&dbs).send().await.unwrap().status(),
            200,
            "only one {code}"
        );
    }

    // Verb and resource together; kube-rs sees the Status as an API error.
    faults.fail_next(
        1,
        500,
        Match {
            verb: Some("create".into()),
            resource: Some("configmaps".into()),
            ..Match::default()
        },
    );
    assert_eq!(http.get(&list).send().await.unwrap().status(), 200);
    match api.create(&PostParams::default(), &cm("b", &[], "1")).await {
        Err(kube::Error::Api(s)) => assert_eq!((s.code, s.reason.as_str()), (500, "InternalError")),
        other => panic!("expected an injected 500, got {other:?}"),
    }
    create(&api, "b", &[], "1").await;
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_and_pause_hold_requests() {
    let t = common::local().await;
    let faults = t.faults.clone().unwrap();
    let ns = t.namespace("wl-slow").await;
    let api: Api<ConfigMap> = Api::namespaced(t.client.clone(), &ns);
    create(&api, "a", &[], "1").await;

    faults.set_latency(Duration::from_millis(300));
    let started = Instant::now();
    api.get("a").await.expect("get");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(300), "latency applied: {took:?}");
    faults.set_latency(Duration::ZERO);

    faults.clear_requests();
    faults.pause();
    let pending = tokio::spawn({
        let api = api.clone();
        async move { api.get("a").await }
    });
    common::eventually(10, "the paused request to arrive", || {
        let seen = faults.count("get", "configmaps") == 1;
        async move { seen.then_some(()) }
    })
    .await;
    // It has arrived, and it is held while paused (for at least 300 ms here).
    let mut pending = pending;
    assert!(
        timeout(Duration::from_millis(300), &mut pending).await.is_err(),
        "a paused request completed"
    );
    faults.resume();
    let got = timeout(WAIT, pending)
        .await
        .expect("completes after resume")
        .expect("join")
        .expect("get");
    assert_eq!(data_of(&got), "1");
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_counted_and_recorded() {
    let t = common::local().await;
    let faults = t.faults.clone().unwrap();
    let ns = t.namespace("wl-count").await;
    let api: Api<ConfigMap> = Api::namespaced(t.client.clone(), &ns);
    faults.clear_requests();
    create(&api, "a", &[], "1").await;
    api.get("a").await.expect("get");
    api.list(&ListParams::default()).await.expect("list");
    set_data(&api, "a", "2").await;
    let mut c = api.get("a").await.expect("get");
    c.data = Some([("v".to_string(), "3".to_string())].into());
    api.replace("a", &PostParams::default(), &c)
        .await
        .expect("replace");
    let mut s = watch(&api, &WatchParams::default().timeout(1), "").await;
    while timeout(WAIT, s.next()).await.expect("ends").is_some() {}
    api.delete("a", &DeleteParams::default()).await.expect("delete");

    for (verb, n) in [
        ("create", 1),
        ("get", 2),
        ("list", 1),
        ("patch", 1),
        ("update", 1),
        ("watch", 1),
        ("delete", 1),
    ] {
        assert_eq!(faults.count(verb, "configmaps"), n, "count({verb}, configmaps)");
    }
    assert_eq!(faults.count("list", "databases"), 0);
    let recs: Vec<_> = faults
        .requests()
        .into_iter()
        .filter(|r| r.resource == "configmaps")
        .collect();
    let verbs: Vec<&str> = recs.iter().map(|r| r.verb.as_str()).collect();
    assert_eq!(
        verbs,
        [
            "create", "get", "list", "patch", "get", "update", "watch", "delete"
        ]
    );
    let del = recs.last().unwrap();
    assert_eq!(
        (del.namespace.as_str(), del.name.as_str(), del.group.as_str()),
        (ns.as_str(), "a", "")
    );
    assert_eq!(del.path, format!("/api/v1/namespaces/{ns}/configmaps/a"));
    assert_eq!(recs[2].name, "", "a list names no object");
    faults.clear_requests();
    assert_eq!(faults.count("get", "configmaps"), 0);
    assert!(faults.requests().is_empty());
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_watches_ends_open_watches() {
    let t = common::local().await;
    let faults = t.faults.clone().unwrap();
    let ns = t.namespace("wl-drop").await;
    let api: Api<ConfigMap> = Api::namespaced(t.client.clone(), &ns);
    let mut a = watch(&api, &WatchParams::default().timeout(60), "").await;
    let url = format!(
        "{}/api/v1/namespaces/{ns}/configmaps?watch=true",
        server(&t).server().url()
    );
    let raw = https(&t).get(url).send().await.expect("raw watch");
    create(&api, "x", &[], "1").await;
    assert_eq!(next_change(&mut a).await, ev("ADDED", "x", "1"));
    faults.drop_watches();
    // Both streams end (the kube one maybe after a bookmark), long before their timeouts.
    let started = Instant::now();
    while let Some(e) = timeout(WAIT, a.next()).await.expect("kube watch ended") {
        assert!(matches!(e.expect("event"), WatchEvent::Bookmark(_)));
    }
    let events = read_all_events(raw, WAIT).await;
    assert!(
        events
            .iter()
            .all(|e| e["type"] == "ADDED" || e["type"] == "BOOKMARK"),
        "{events:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    // New watches work as before.
    let mut b = watch(&api, &WatchParams::default().timeout(60), "").await;
    assert_eq!(next_change(&mut b).await, ev("ADDED", "x", "1"));
    t.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// Capacity

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_watchers_receive_every_change() {
    const WATCHERS: usize = 200;
    const CHANGES: usize = 200;
    let t = common::local().await;
    let ns = t.namespace("wl-fanout").await;
    let api: Api<ConfigMap> = Api::namespaced(t.client.clone(), &ns);
    let rv = list_rv(&api).await;
    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = vec![];
    for _ in 0..WATCHERS {
        let mut s = watch(&api, &WatchParams::default().labels(SUITE).timeout(120), &rv).await;
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::with_capacity(CHANGES);
            while seen.len() < CHANGES {
                match s.next().await {
                    Some(Ok(WatchEvent::Added(c))) => seen.push(name_of(&c)),
                    Some(Ok(WatchEvent::Bookmark(_))) => {}
                    other => panic!("watcher got {other:?} after {} events", seen.len()),
                }
            }
            done.fetch_add(1, Ordering::Relaxed);
            seen
        }));
    }
    let started = Instant::now();
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let api = api.clone();
            tokio::spawn(async move {
                for i in (w..CHANGES).step_by(4) {
                    create(&api, &format!("cm-{i:04}"), &[], "x").await;
                }
            })
        })
        .collect();
    for w in writers {
        w.await.expect("writer");
    }
    let order: Vec<String> = {
        let mut l = api
            .list(&ListParams::default().labels(SUITE))
            .await
            .expect("list")
            .items;
        l.sort_by_key(|c| rv_num(c.metadata.resource_version.as_deref().unwrap()));
        l.iter().map(name_of).collect()
    };
    for task in tasks {
        let seen = timeout(Duration::from_secs(60), task)
            .await
            .expect("watcher finished")
            .expect("join");
        assert_eq!(seen, order, "every watcher sees every change in commit order");
    }
    println!(
        "fan-out: {WATCHERS} watchers x {CHANGES} changes delivered in {:?}",
        started.elapsed()
    );
    assert_eq!(done.load(Ordering::Relaxed), WATCHERS);
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_never_reads_blocks_nobody_and_is_closed() {
    const N: usize = 600;
    let server = TestServer::with_config(Config {
        watch_buffer: 32,
        history_window: 100_000,
        bookmark_interval: Duration::from_secs(1),
        ..Config::default()
    })
    .await
    .expect("server");
    let client = server.client();
    let ns_api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let mut ns_obj = k8s_openapi::api::core::v1::Namespace::default();
    ns_obj.metadata.name = Some("wl-stall".into());
    ns_api
        .create(&PostParams::default(), &ns_obj)
        .await
        .expect("namespace");
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "wl-stall");
    let rv = list_rv(&api).await;

    // The stalled watcher: headers received, body never polled until the end.
    let ca = reqwest::Certificate::from_pem(server.server().ca_pem().as_bytes()).expect("CA");
    let http = reqwest::Client::builder()
        .tls_certs_only([ca])
        .http1_only()
        .default_headers(auth_headers(server.server().token()))
        .build()
        .expect("client");
    let url = format!(
        "{}/api/v1/namespaces/wl-stall/configmaps?watch=true&resourceVersion={rv}",
        server.server().url()
    );
    let stalled = http.get(url).send().await.expect("stalled watch");
    assert_eq!(stalled.status(), 200);

    // A healthy watcher alongside.
    let mut healthy = watch(&api, &WatchParams::default().timeout(120), &rv).await;
    let reader = tokio::spawn(async move {
        let mut n = 0;
        while n < N {
            match healthy.next().await {
                Some(Ok(WatchEvent::Added(_))) => n += 1,
                Some(Ok(WatchEvent::Bookmark(_))) => {}
                other => panic!("healthy watcher got {other:?} after {n}"),
            }
        }
        n
    });

    // Big objects so the stalled connection's buffers fill quickly.
    let payload = "x".repeat(32 * 1024);
    let started = Instant::now();
    for i in 0..N {
        let c = cm(&format!("cm-{i:04}"), &[], &payload);
        timeout(WAIT, api.create(&PostParams::default(), &c))
            .await
            .expect("write not blocked")
            .expect("create");
    }
    let writes = started.elapsed();
    assert_eq!(
        timeout(Duration::from_secs(60), reader)
            .await
            .expect("healthy watcher kept up")
            .expect("join"),
        N
    );
    println!("slow watcher: {N} writes of 32 KiB in {writes:?} with a stalled watcher open");

    // The stalled watcher was closed: its stream ends, having delivered an in-order prefix and
    // never a stream with gaps.
    let events = read_all_events(stalled, Duration::from_secs(30)).await;
    let names: Vec<String> = events
        .iter()
        .filter(|e| e["type"] != "BOOKMARK")
        .map(|e| {
            e["object"]["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    let want: Vec<String> = (0..names.len()).map(|i| format!("cm-{i:04}")).collect();
    assert_eq!(names, want, "the stalled watcher got a gap-free prefix");
    assert!(
        names.len() < N,
        "the stalled watcher was closed, not kept forever ({} of {N})",
        names.len()
    );
    println!("slow watcher: closed after {} of {N} events", names.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_throughput_data_point() {
    const REQUESTS: usize = 2000;
    const CLIENTS: usize = 16;
    let t = common::local().await;
    let ns = t.namespace("wl-rps").await;
    let api: Api<ConfigMap> = Api::namespaced(t.client.clone(), &ns);
    create(&api, "a", &[], "1").await;
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let api = api.clone();
            let next = next.clone();
            tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < REQUESTS {
                    api.get("a").await.expect("get");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("client");
    }
    let took = started.elapsed();
    println!(
        "throughput: {REQUESTS} GETs with {CLIENTS} concurrent clients in {took:?} = {:.0} requests/s",
        REQUESTS as f64 / took.as_secs_f64()
    );
    assert_eq!(
        t.faults.as_ref().unwrap().count("get", "configmaps") as usize,
        REQUESTS
    );
    t.cleanup().await;
}
