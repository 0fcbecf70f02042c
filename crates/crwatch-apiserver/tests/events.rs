//! Events at two versions, one storage: `events.k8s.io/v1` and core `v1` Events are the same
//! objects converted on every read and write, as on the real server (an event recorder writing
//! events.k8s.io/v1 shows up in `kubectl get events`).

mod common;

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Event, Namespace};
use k8s_openapi::api::events::v1::Event as EventsV1Event;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use serde_json::{Value, json};

use common::{Target, eventually};

/// A valid events.k8s.io/v1 Event (strict new-API validation on a real cluster included).
fn new_style_event(ns: &str, name: &str, pod: &str) -> EventsV1Event {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "eventTime": "2025-01-01T00:00:00.000000Z",
        "series": {"count": 2, "lastObservedTime": "2025-01-01T00:05:00.000000Z"},
        "reportingController": "example.com/recorder",
        "reportingInstance": "recorder-1",
        "action": "Pulling",
        "reason": "BackOff",
        "regarding": {"kind": "Pod", "namespace": ns, "name": pod, "apiVersion": "v1", "fieldPath": "spec.containers{web}"},
        "note": "Back-off pulling image",
        "type": "Warning"
    }))
    .expect("events.k8s.io/v1 Event")
}

async fn get_json(t: &Target, path: &str) -> Value {
    let req = http::Request::get(path)
        .header(http::header::ACCEPT, "application/json")
        .body(Vec::new())
        .expect("request");
    let text = t.client.request_text(req).await.expect("GET");
    serde_json::from_str(&text).expect("JSON body")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_k8s_io_and_core_events_share_one_storage() {
    for t in common::targets().await {
        let ns = t.namespace("events").await;
        let core: Api<Event> = Api::namespaced(t.client.clone(), &ns);
        let new: Api<EventsV1Event> = Api::namespaced(t.client.clone(), &ns);
        let pp = PostParams::default();

        // A watch at core v1, started before the write at events.k8s.io/v1.
        let start_rv = core
            .list(&ListParams::default())
            .await
            .expect("list core events")
            .metadata
            .resource_version
            .expect("list resourceVersion");
        let wp = WatchParams::default().timeout(30);
        let mut watch = core
            .watch(&wp, &start_rv)
            .await
            .expect("watch core events")
            .boxed();

        // Create at events.k8s.io/v1.
        let created = new
            .create(&pp, &new_style_event(&ns, "backoff", "web-1"))
            .await
            .expect("create at events.k8s.io/v1");
        assert_eq!(created.note.as_deref(), Some("Back-off pulling image"));

        // Read back at core v1: the same object, converted.
        let got = core.get("backoff").await.expect("get at core v1");
        assert_eq!(got.metadata.uid, created.metadata.uid, "[{}] same uid", t.name);
        assert_eq!(
            got.metadata.resource_version, created.metadata.resource_version,
            "[{}] same resourceVersion",
            t.name
        );
        assert_eq!(got.involved_object.kind.as_deref(), Some("Pod"));
        assert_eq!(got.involved_object.name.as_deref(), Some("web-1"));
        assert_eq!(
            got.involved_object.field_path.as_deref(),
            Some("spec.containers{web}")
        );
        assert_eq!(got.message.as_deref(), Some("Back-off pulling image"));
        assert_eq!(got.reason.as_deref(), Some("BackOff"));
        assert_eq!(got.type_.as_deref(), Some("Warning"));
        assert_eq!(got.action.as_deref(), Some("Pulling"));
        assert_eq!(got.reporting_component.as_deref(), Some("example.com/recorder"));
        assert_eq!(got.reporting_instance.as_deref(), Some("recorder-1"));
        assert_eq!(got.series.as_ref().and_then(|s| s.count), Some(2));
        assert_eq!(got.count, None, "[{}] no deprecatedCount, no count", t.name);
        assert!(got.event_time.is_some());
        // Go's encoding of the core type: the empty source struct and zero timestamps stay.
        let raw = get_json(&t, &format!("/api/v1/namespaces/{ns}/events/backoff")).await;
        assert_eq!(raw["apiVersion"], "v1");
        assert_eq!(raw["source"], json!({}), "[{}] {raw}", t.name);
        assert_eq!(raw["firstTimestamp"], Value::Null, "[{}] {raw}", t.name);
        assert!(raw.get("note").is_none() && raw.get("regarding").is_none());

        // The core v1 watch saw the create as ADDED.
        let added = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(ev) = watch.try_next().await.expect("watch stream") {
                match ev {
                    WatchEvent::Added(e) if e.metadata.name.as_deref() == Some("backoff") => return e,
                    WatchEvent::Bookmark(_) => {}
                    other => panic!("unexpected watch event {other:?}"),
                }
            }
            panic!("watch ended before ADDED");
        })
        .await
        .expect("ADDED in time");
        assert_eq!(added.message.as_deref(), Some("Back-off pulling image"));
        assert_eq!(added.metadata.uid, created.metadata.uid);

        // Patch at core v1 (the legacy fields), read back at events.k8s.io/v1.
        let patched = core
            .patch(
                "backoff",
                &PatchParams::default(),
                &Patch::Merge(json!({
                    "message": "Back-off pulling image again",
                    "source": {"component": "kubelet", "host": "node-1"},
                    "count": 5,
                    "lastTimestamp": "2025-01-01T00:06:00Z"
                })),
            )
            .await
            .expect("merge patch at core v1");
        assert_eq!(patched.count, Some(5));
        let back = new.get("backoff").await.expect("get at events.k8s.io/v1");
        assert_eq!(back.metadata.resource_version, patched.metadata.resource_version);
        assert_eq!(back.note.as_deref(), Some("Back-off pulling image again"));
        assert_eq!(back.deprecated_count, Some(5));
        let source = back.deprecated_source.clone().expect("deprecatedSource");
        assert_eq!(source.component.as_deref(), Some("kubelet"));
        assert_eq!(source.host.as_deref(), Some("node-1"));
        assert!(back.deprecated_last_timestamp.is_some());
        assert_eq!(
            back.regarding.as_ref().and_then(|r| r.name.as_deref()),
            Some("web-1")
        );
        assert_eq!(back.series.as_ref().map(|s| s.count), Some(2));

        // Patch at events.k8s.io/v1 (a merge patch in the new schema; only the series may
        // change there on a real cluster), read at core v1.
        new.patch(
            "backoff",
            &PatchParams::default(),
            &Patch::Merge(json!({"series": {"count": 3, "lastObservedTime": "2025-01-01T00:07:00.000000Z"}})),
        )
        .await
        .expect("merge patch at events.k8s.io/v1");
        let got = core.get("backoff").await.expect("get at core v1");
        assert_eq!(got.series.as_ref().and_then(|s| s.count), Some(3));
        assert_eq!(got.message.as_deref(), Some("Back-off pulling image again"));
        assert_eq!(got.count, Some(5), "[{}] the legacy count kept", t.name);

        // A core v1 write reads at events.k8s.io/v1 with its legacy fields in deprecated*.
        let legacy: Event = serde_json::from_value(json!({
            "metadata": {"name": "legacy"},
            "involvedObject": {"kind": "Pod", "namespace": ns, "name": "web-2", "apiVersion": "v1"},
            "reason": "Started",
            "message": "Started container web",
            "type": "Normal",
            "count": 3,
            "source": {"component": "kubelet", "host": "node-2"},
            "firstTimestamp": "2025-01-01T00:00:00Z",
            "lastTimestamp": "2025-01-01T00:01:00Z"
        }))
        .expect("core v1 Event");
        core.create(&pp, &legacy).await.expect("create at core v1");
        let conv = new.get("legacy").await.expect("legacy at events.k8s.io/v1");
        assert_eq!(conv.note.as_deref(), Some("Started container web"));
        assert_eq!(conv.deprecated_count, Some(3));
        assert_eq!(
            conv.deprecated_source
                .as_ref()
                .and_then(|s| s.component.as_deref()),
            Some("kubelet")
        );
        assert!(conv.deprecated_first_timestamp.is_some());
        assert_eq!(
            conv.regarding.as_ref().and_then(|r| r.name.as_deref()),
            Some("web-2")
        );
        assert_eq!(conv.reporting_controller, None);

        // Lists at both versions see both events.
        assert_eq!(core.list(&ListParams::default()).await.unwrap().items.len(), 2);
        assert_eq!(new.list(&ListParams::default()).await.unwrap().items.len(), 2);

        // Field selectors, each version in its own field names.
        let names = |l: Vec<Option<String>>| l.into_iter().flatten().collect::<Vec<_>>();
        let by_core = core
            .list(&ListParams::default().fields("involvedObject.name=web-1"))
            .await
            .expect("involvedObject.name at core v1");
        assert_eq!(
            names(by_core.items.into_iter().map(|e| e.metadata.name).collect()),
            ["backoff"]
        );
        let by_new = new
            .list(&ListParams::default().fields("regarding.name=web-1"))
            .await
            .expect("regarding.name at events.k8s.io/v1");
        assert_eq!(
            names(by_new.items.into_iter().map(|e| e.metadata.name).collect()),
            ["backoff"]
        );
        let by_controller = new
            .list(&ListParams::default().fields("reportingController=example.com/recorder,type=Warning"))
            .await
            .expect("reportingController at events.k8s.io/v1");
        assert_eq!(by_controller.items.len(), 1);
        let by_source = core
            .list(&ListParams::default().fields("source=kubelet"))
            .await
            .expect("source at core v1");
        assert_eq!(by_source.items.len(), 2, "[{}] source.component", t.name);
        match new
            .list(&ListParams::default().fields("involvedObject.name=web-1"))
            .await
        {
            Err(kube::Error::Api(e)) => {
                assert_eq!(e.code, 400);
                assert!(
                    e.message
                        .contains("field label not supported: involvedObject.name"),
                    "[{}] {}",
                    t.name,
                    e.message
                );
            }
            other => panic!("[{}] core field names at events.k8s.io/v1: {other:?}", t.name),
        }

        // Update (PUT) at events.k8s.io/v1: the object read there, with a series added.
        let mut cur = new.get("legacy").await.expect("get");
        cur.series = Some(
            serde_json::from_value(json!({"count": 2, "lastObservedTime": "2025-01-01T00:02:00.000000Z"}))
                .unwrap(),
        );
        new.replace("legacy", &pp, &cur)
            .await
            .expect("replace at events.k8s.io/v1");
        let after = core.get("legacy").await.unwrap();
        assert_eq!(after.series.and_then(|s| s.count), Some(2));
        assert_eq!(
            after.count,
            Some(3),
            "[{}] legacy fields survive the round trip",
            t.name
        );
        assert_eq!(after.message.as_deref(), Some("Started container web"));

        // kubectl prints them at either resource.
        let out = t.kubectl_ok(&["get", "events", "-n", &ns], None);
        assert!(
            out.contains("LAST SEEN") && out.contains("MESSAGE"),
            "[{}] {out}",
            t.name
        );
        assert!(
            out.lines().any(|l| l.contains("BackOff")
                && l.contains("pod/web-1")
                && l.contains("pulling image again")),
            "[{}] {out}",
            t.name
        );
        assert!(
            out.lines()
                .any(|l| l.contains("Started") && l.contains("Started container web")),
            "[{}] {out}",
            t.name
        );
        let out = t.kubectl_ok(&["get", "events.events.k8s.io", "-n", &ns], None);
        assert!(
            out.contains("pod/web-1") && out.contains("pod/web-2"),
            "[{}] {out}",
            t.name
        );
        let out = t.kubectl_ok(&["get", "events", "-n", &ns, "-o", "wide"], None);
        assert!(
            out.contains("kubelet, node-2"),
            "[{}] source column: {out}",
            t.name
        );

        // Deleting the namespace deletes each event once: one DELETED per watch and version.
        let rv = core
            .list(&ListParams::default())
            .await
            .unwrap()
            .metadata
            .resource_version
            .unwrap();
        let core_watch = core.watch(&wp, &rv).await.expect("watch core").boxed();
        let new_watch = new.watch(&wp, &rv).await.expect("watch events.k8s.io").boxed();
        let namespaces: Api<Namespace> = Api::all(t.client.clone());
        namespaces
            .delete(&ns, &DeleteParams::default())
            .await
            .expect("delete namespace");
        eventually(90, "the namespace gone", || async {
            match namespaces.get_opt(&ns).await {
                Ok(None) => Some(()),
                _ => None,
            }
        })
        .await;
        let at_core = deleted_names(core_watch).await;
        let at_new = deleted_names(new_watch).await;
        assert_eq!(
            at_core,
            ["backoff", "legacy"],
            "[{}] DELETED once each at core v1",
            t.name
        );
        assert_eq!(
            at_new,
            ["backoff", "legacy"],
            "[{}] DELETED once each at events.k8s.io/v1",
            t.name
        );
        assert!(core.list(&ListParams::default()).await.unwrap().items.is_empty());
        t.cleanup().await;
    }
}

/// The names in DELETED events of a watch, sorted, reading until no change came for a moment
/// (bookmarks do not count).
async fn deleted_names<K>(
    mut stream: futures::stream::BoxStream<'static, kube::Result<WatchEvent<K>>>,
) -> Vec<String>
where
    K: kube::Resource + std::fmt::Debug,
{
    let quiet = Duration::from_secs(2);
    let mut names = vec![];
    let mut deadline = tokio::time::Instant::now() + quiet;
    while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, stream.next()).await {
        match ev.expect("watch event") {
            WatchEvent::Bookmark(_) => continue,
            WatchEvent::Deleted(o) => names.push(o.meta().name.clone().unwrap_or_default()),
            WatchEvent::Error(e) => panic!("watch error {e:?}"),
            _ => {}
        }
        deadline = tokio::time::Instant::now() + quiet;
    }
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletecollection_at_events_k8s_io_uses_its_field_names() {
    let t = common::local().await;
    let ns = t.namespace("events-dc").await;
    let core: Api<Event> = Api::namespaced(t.client.clone(), &ns);
    let new: Api<EventsV1Event> = Api::namespaced(t.client.clone(), &ns);
    for (name, pod) in [("a", "p1"), ("b", "p1"), ("c", "p2")] {
        new.create(&PostParams::default(), &new_style_event(&ns, name, pod))
            .await
            .expect("create");
    }
    new.delete_collection(
        &DeleteParams::default(),
        &ListParams::default().fields("regarding.name=p1"),
    )
    .await
    .expect("deletecollection at events.k8s.io/v1");
    let left: Vec<String> = core
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .into_iter()
        .filter_map(|e| e.metadata.name)
        .collect();
    assert_eq!(left, ["c"]);
    // Discovery: one storage, one storage version hash.
    let core_disc = get_json(&t, "/api/v1").await;
    let new_disc = get_json(&t, "/apis/events.k8s.io/v1").await;
    let hash = |d: &Value| {
        d["resources"]
            .as_array()
            .and_then(|rs| rs.iter().find(|r| r["name"] == "events"))
            .map(|r| r["storageVersionHash"].clone())
    };
    assert!(hash(&core_disc).is_some());
    assert_eq!(hash(&core_disc), hash(&new_disc));
    t.cleanup().await;
}
