//! The Sieve/Acto fault modes of the fault handle: stale reads for one client (GET, LIST and
//! watch), coalesced watch events, and crash points around a client's Nth write.

use std::time::Duration;

use crwatch_apiserver::TestServer;
use crwatch_apiserver::faults::{Lag, Match, WritePoint};
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{
    Api, DeleteParams, GetParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use serde_json::json;

/// A client of `server` that sends `agent` as its User-Agent (and does not retry a 503 by
/// itself, so a refused write shows).
async fn client_as(server: &TestServer, agent: &'static str) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(server.kubeconfig()).expect("kubeconfig");
    let mut config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("config");
    config
        .headers
        .push((http::header::USER_AGENT, http::HeaderValue::from_static(agent)));
    config.default_retry = false;
    kube::Client::try_from(config).expect("client")
}

fn cm(name: &str, v: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name}, "data": {"v": v}})).expect("ConfigMap")
}

fn v(cm: &ConfigMap) -> String {
    cm.data
        .as_ref()
        .and_then(|d| d.get("v"))
        .cloned()
        .unwrap_or_default()
}

async fn set(api: &Api<ConfigMap>, name: &str, value: &str) {
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"v": value}})),
    )
    .await
    .expect("patch");
}

/// The next watch event's type and the object's `v`, within 10 s.
async fn next<S>(stream: &mut S) -> (String, String, String)
where
    S: futures::Stream<Item = Result<WatchEvent<ConfigMap>, kube::Error>> + Unpin,
{
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("an event in time")
            .expect("the stream goes on")
            .expect("an event");
        let (t, o) = match ev {
            WatchEvent::Added(o) => ("ADDED", o),
            WatchEvent::Modified(o) => ("MODIFIED", o),
            WatchEvent::Deleted(o) => ("DELETED", o),
            WatchEvent::Bookmark(_) => continue,
            WatchEvent::Error(e) => panic!("watch error {e:?}"),
        };
        return (t.to_string(), o.metadata.name.clone().unwrap_or_default(), v(&o));
    }
}

#[tokio::test]
async fn a_stale_client_reads_a_lagging_view_from_the_cache_and_others_the_newest() {
    let server = TestServer::start().await.expect("server");
    let admin: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let stale: Api<ConfigMap> = Api::namespaced(client_as(&server, "lagging/1.0").await, "default");
    admin
        .create(&PostParams::default(), &cm("x", "1"))
        .await
        .expect("create");
    set(&admin, "x", "2").await;
    set(&admin, "x", "3").await;
    server
        .faults()
        .stale_reads(Match::user_agent("lagging"), Lag::Revisions(2));
    let any = ListParams::default().match_any();

    // resourceVersion=0 reads come from the (lagging) watch cache.
    assert_eq!(
        v(&stale.get_with("x", &GetParams::any()).await.expect("stale get")),
        "1"
    );
    assert_eq!(
        v(&admin.get_with("x", &GetParams::any()).await.expect("get")),
        "3"
    );
    let list = stale.list(&any).await.expect("stale list");
    assert_eq!(list.items.iter().map(v).collect::<Vec<_>>(), ["1"]);
    let newest = admin.list(&any).await.expect("list");
    let (old_rv, new_rv) = (
        list.metadata.resource_version.clone().unwrap_or_default(),
        newest.metadata.resource_version.clone().unwrap_or_default(),
    );
    assert_eq!(
        old_rv.parse::<u64>().expect("rv") + 2,
        new_rv.parse::<u64>().expect("rv"),
        "the view is two revisions behind"
    );
    // Consistent reads (no resourceVersion) are quorum reads on the real server: fresh.
    assert_eq!(v(&stale.get("x").await.expect("get")), "3");
    let fresh = stale.list(&Default::default()).await.expect("list");
    assert_eq!(fresh.items.iter().map(v).collect::<Vec<_>>(), ["3"]);
    // An object created within the lag does not exist in the view yet.
    admin
        .create(&PostParams::default(), &cm("y", "1"))
        .await
        .expect("create");
    match stale.get_with("y", &GetParams::any()).await {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 404),
        other => panic!("expected 404 from the stale view, got {other:?}"),
    }

    // Under stale_reads_all even consistent reads see the past; a write based on the stale
    // copy loses the optimistic-concurrency race, as it must.
    server
        .faults()
        .stale_reads_all(Match::user_agent("lagging"), Lag::Revisions(3));
    let old = stale.get("x").await.expect("stale get");
    assert_eq!(v(&old), "1");
    match stale.replace("x", &PostParams::default(), &old).await {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 409),
        other => panic!("expected 409 for a stale update, got {other:?}"),
    }

    server.faults().clear_stale_reads();
    assert_eq!(
        v(&stale.get_with("x", &GetParams::any()).await.expect("get")),
        "3"
    );
    assert!(stale.get_with("y", &GetParams::any()).await.is_ok());
}

#[tokio::test]
async fn a_stale_clients_watch_starts_at_its_view_and_waits_for_it() {
    let server = TestServer::start().await.expect("server");
    let admin: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let stale: Api<ConfigMap> = Api::namespaced(client_as(&server, "lagging").await, "default");
    admin
        .create(&PostParams::default(), &cm("x", "1"))
        .await
        .expect("create");
    set(&admin, "x", "2").await;
    server
        .faults()
        .stale_reads(Match::user_agent("lagging"), Lag::Revisions(1_000_000));
    let mut events = stale
        .watch(&WatchParams::default(), "0")
        .await
        .expect("watch")
        .boxed();
    // Starting "now" starts at the view, which history rebuilds as far back as it can: before
    // x existed, so there is nothing to list; x's changes are held.
    admin
        .create(&PostParams::default(), &cm("z", "1"))
        .await
        .expect("create");
    server.faults().clear_stale_reads();
    let got = vec![
        next(&mut events).await,
        next(&mut events).await,
        next(&mut events).await,
    ];
    let want = [("ADDED", "x", "1"), ("MODIFIED", "x", "2"), ("ADDED", "z", "1")];
    assert_eq!(
        got,
        want.map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
    );
}

#[tokio::test]
async fn coalesced_watches_miss_intermediate_states_never_final_ones() {
    let server = TestServer::start().await.expect("server");
    let admin: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let client = client_as(&server, "merged").await;
    let merged: Api<ConfigMap> = Api::namespaced(client, "default");
    admin
        .create(&PostParams::default(), &cm("kept", "0"))
        .await
        .expect("create");
    // A window longer than the test: the batch is delivered when the fault is cleared.
    server
        .faults()
        .coalesce_events(Match::user_agent("merged"), Duration::from_secs(3600));
    let rv = admin
        .list(&Default::default())
        .await
        .expect("list")
        .metadata
        .resource_version
        .expect("rv");
    let mut events = merged
        .watch(&WatchParams::default(), &rv)
        .await
        .expect("watch")
        .boxed();
    for i in 1..=5 {
        set(&admin, "kept", &i.to_string()).await;
    }
    admin
        .create(&PostParams::default(), &cm("new", "a"))
        .await
        .expect("create");
    set(&admin, "new", "b").await;
    admin
        .create(&PostParams::default(), &cm("brief", "a"))
        .await
        .expect("create");
    admin
        .delete("brief", &DeleteParams::default())
        .await
        .expect("delete");
    admin
        .create(&PostParams::default(), &cm("last", "a"))
        .await
        .expect("create");
    server.faults().clear_coalesce_events();
    let got: Vec<_> = [
        next(&mut events).await,
        next(&mut events).await,
        next(&mut events).await,
    ]
    .into();
    let want = [
        ("MODIFIED", "kept", "5"),
        ("ADDED", "new", "b"),
        ("ADDED", "last", "a"),
    ];
    assert_eq!(
        got,
        want.map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
    );
    // Later changes come one by one again.
    set(&admin, "kept", "6").await;
    assert_eq!(
        next(&mut events).await,
        ("MODIFIED".into(), "kept".into(), "6".into())
    );
}

#[tokio::test]
async fn a_write_held_before_it_is_applied_can_be_refused() {
    let server = TestServer::start().await.expect("server");
    let admin: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let writer: Api<ConfigMap> = Api::namespaced(client_as(&server, "ctl").await, "default");
    let gate = server
        .faults()
        .hold_write(Match::user_agent("ctl"), 2, WritePoint::Before);
    // Reads and other clients' writes are not counted.
    admin
        .create(&PostParams::default(), &cm("other", "1"))
        .await
        .expect("create");
    writer.get("other").await.expect("get");
    writer
        .create(&PostParams::default(), &cm("first", "1"))
        .await
        .expect("first write");
    let second = tokio::spawn({
        let writer = writer.clone();
        async move { writer.create(&PostParams::default(), &cm("second", "1")).await }
    });
    let held = tokio::time::timeout(Duration::from_secs(10), gate.reached())
        .await
        .expect("the second write is held");
    assert_eq!(
        (held.verb.as_str(), held.resource.as_str()),
        ("create", "configmaps")
    );
    assert!(
        admin.get_opt("second").await.expect("get").is_none(),
        "not applied yet"
    );
    gate.fail();
    match second.await.expect("task") {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 503),
        other => panic!("expected 503, got {other:?}"),
    }
    assert!(
        admin.get_opt("second").await.expect("get").is_none(),
        "never applied"
    );
    drop(gate);
    writer
        .create(&PostParams::default(), &cm("third", "1"))
        .await
        .expect("writes go on");
}

#[tokio::test]
async fn a_write_held_after_it_is_applied_withholds_only_the_answer() {
    let server = TestServer::start().await.expect("server");
    let admin: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let writer: Api<ConfigMap> = Api::namespaced(client_as(&server, "ctl").await, "default");
    let gate = server
        .faults()
        .hold_write(Match::user_agent("ctl"), 1, WritePoint::After);
    let first = tokio::spawn({
        let writer = writer.clone();
        async move { writer.create(&PostParams::default(), &cm("first", "1")).await }
    });
    tokio::time::timeout(Duration::from_secs(10), gate.reached())
        .await
        .expect("held");
    assert!(admin.get_opt("first").await.expect("get").is_some(), "applied");
    assert!(!first.is_finished(), "the answer is held");
    gate.release();
    first.await.expect("task").expect("the answer arrives");
}
