//! Objects that do not decode into a controller's Rust type (a CRD whose objects no longer
//! match it), against a real crwatch-apiserver: the informer syncs anyway, the good objects
//! are reconciled, the bad one is named in a log line (never its content), counted in
//! `crwatch_source_decode_errors_total` and gets a Warning `DecodeFailed` Event; fixed, it
//! is reconciled; broken after being cached, its last good copy stays (no false delete)
//! across watches and relists; deleted, it goes.

use std::collections::BTreeSet;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crwatch::controller::{Action, Builder, DECODE_FAILED, Request};
use crwatch::events::Recorder;
use crwatch::informer::{HandlerFns, InformerFactory};
use crwatch::metrics::Metrics;
use crwatch::source::kube::KubeSource;
use crwatch::store::ObjectKey;
use crwatch_apiserver::{Match, TestServer};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResource;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_util::sync::CancellationToken;

mod common;
use common::wait_for;

/// The controller's view of a Gadget: `size` is a number. The CRD (below) lets any value in,
/// as a CRD whose schema was loosened, or changed under a running controller, does.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, JsonSchema)]
#[kube(group = "test.crwatch.io", version = "v1", kind = "Gadget", namespaced)]
pub struct GadgetSpec {
    size: i32,
}

/// A value no log line, Event or metric may ever show.
const SECRET: &str = "hunter2-do-not-log";

/// Everything logged in this test binary, at every level and target (kube's included).
fn logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf: Arc<Mutex<Vec<u8>>> = Arc::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || Capture(writer.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one subscriber per test binary");
        buf
    })
    .clone()
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn logged() -> String {
    String::from_utf8_lossy(&logs().lock().unwrap()).into_owned()
}

async fn install(server: &TestServer) -> Api<DynamicObject> {
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "gadgets.test.crwatch.io"},
        "spec": {
            "group": "test.crwatch.io",
            "names": {"kind": "Gadget", "plural": "gadgets", "singular": "gadget", "listKind": "GadgetList"},
            "scope": "Namespaced",
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
                }}}
            }]
        }
    }))
    .unwrap();
    Api::<CustomResourceDefinition>::all(server.client())
        .create(&PostParams::default(), &crd)
        .await
        .unwrap();
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("test.crwatch.io", "v1", "Gadget"),
        "gadgets",
    );
    let raw: Api<DynamicObject> = Api::namespaced_with(server.client(), "default", &ar);
    let served = async {
        while raw.list(&Default::default()).await.is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), served)
        .await
        .expect("CRD never served");
    raw
}

async fn put(raw: &Api<DynamicObject>, name: &str, size: serde_json::Value) {
    let obj = json!({
        "apiVersion": "test.crwatch.io/v1", "kind": "Gadget",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"size": size},
    });
    let pp = PatchParams::apply("decode-test").force();
    raw.patch(name, &pp, &Patch::Apply(&obj)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_object_is_skipped_reported_and_the_rest_reconciles() {
    let logs = logs();
    let server = TestServer::start().await.unwrap();
    let client = server.client();
    let raw = install(&server).await;
    put(&raw, "good-1", json!(1)).await;
    put(&raw, "good-2", json!(2)).await;
    put(&raw, "bad", json!(SECRET)).await;

    let factory = InformerFactory::new(client.clone());
    let source = KubeSource::<Gadget>::all(client.clone())
        .backoff(Duration::from_millis(10), Duration::from_millis(100));
    let informer = factory.informer(source);
    let deletes: Arc<Mutex<Vec<String>>> = Arc::default();
    let d = deletes.clone();
    informer.add_handler(HandlerFns::new().on_delete(move |g: &Arc<Gadget>| {
        d.lock()
            .unwrap()
            .push(g.metadata.name.clone().unwrap_or_default())
    }));
    let metrics = Metrics::default();
    let factory = Arc::new(factory);
    let sampled = factory.clone();
    metrics.register_sources(move || sampled.samples());
    let reconciled: Arc<Mutex<BTreeSet<(String, i32)>>> = Arc::default();
    let controller = Builder::new("gadgets", informer.clone())
        .metrics(&metrics)
        .events(Recorder::new(client.clone(), "gadget-controller"))
        .build(
            |req: Request<Gadget>, seen: Arc<Mutex<BTreeSet<(String, i32)>>>| async move {
                if let Request::Apply(g) = req {
                    seen.lock()
                        .unwrap()
                        .insert((g.metadata.name.clone().unwrap_or_default(), g.spec.size));
                }
                Ok(Action::done())
            },
            reconciled.clone(),
        );
    factory.start();
    let cancel = CancellationToken::new();
    let run = tokio::spawn(controller.run(cancel.clone()));

    // The cache syncs and the good objects are reconciled despite the bad one.
    factory
        .wait_for_cache_sync(Duration::from_secs(20))
        .await
        .expect("the informer syncs despite an undecodable object");
    let seen = |name: &str, size: i32| reconciled.lock().unwrap().contains(&(name.to_string(), size));
    wait_for(20, "the good objects reconciled", || {
        (seen("good-1", 1) && seen("good-2", 2)).then_some(())
    })
    .await;
    assert_eq!(informer.store().len(), 2);
    let bad = informer.undecodable();
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert_eq!(
        (bad[0].namespace.as_deref(), bad[0].name.as_str()),
        (Some("default"), "bad")
    );
    assert_eq!(bad[0].kind, "Gadget");
    assert!(bad[0].uid.is_some());
    assert_eq!(bad[0].error, "spec.size: invalid type: string, expected i32");
    // Readiness: one bad object is no failing source.
    assert!(informer.health().connected, "{:?}", informer.health());
    assert!(factory.unhealthy(Duration::ZERO).is_empty());

    // The Event, on the object, saying what to fix.
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let event = wait_for(20, "the DecodeFailed Event", || {
        let events = events.clone();
        futures::executor::block_on(async move { events.list(&Default::default()).await.ok() }).and_then(
            |l| {
                l.items
                    .into_iter()
                    .find(|e| e.reason.as_deref() == Some(DECODE_FAILED))
            },
        )
    })
    .await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    let regarding = event.regarding.clone().unwrap();
    assert_eq!(regarding.name.as_deref(), Some("bad"));
    assert_eq!(regarding.kind.as_deref(), Some("Gadget"));
    assert_eq!(regarding.uid, bad[0].uid);
    let note = event.note.clone().unwrap_or_default();
    assert!(
        note.contains("spec.size: invalid type: string, expected i32"),
        "{note}"
    );
    assert!(!note.contains(SECRET), "{note}");

    // The metric.
    let text = metrics.encode();
    assert!(
        text.lines()
            .any(|l| l.starts_with("crwatch_source_decode_errors_total{") && l.ends_with(" 1")),
        "{text}"
    );
    // The log line names the object, and nothing anywhere shows its content.
    let log = logged();
    assert!(
        log.lines().any(|l| l.contains("does not decode")
            && l.contains("name=bad")
            && l.contains("namespace=default")
            && l.contains(bad[0].uid.as_deref().unwrap())),
        "{log}"
    );
    assert!(!log.contains(SECRET), "the object's content was logged");
    assert!(!text.contains(SECRET));

    // Fixed, it appears normally.
    put(&raw, "bad", json!(3)).await;
    wait_for(20, "the fixed object reconciled", || seen("bad", 3).then_some(())).await;
    assert!(informer.undecodable().is_empty());

    // Broken after being cached: the last good copy stays, no delete is reported.
    put(&raw, "good-1", json!({"nested": SECRET})).await;
    wait_for(20, "good-1 reported undecodable", || {
        informer
            .undecodable()
            .iter()
            .any(|u| u.name == "good-1")
            .then_some(())
    })
    .await;
    let kept = informer
        .store()
        .get(&ObjectKey::new(Some("default"), "good-1"))
        .expect("kept");
    assert_eq!(kept.spec.size, 1);
    assert!(deletes.lock().unwrap().is_empty());
    // ... across a relist too (410 Gone: the watch cannot resume and lists again).
    let relists = informer.stats().relists.load(std::sync::atomic::Ordering::SeqCst);
    server.faults().fail_next(1, 410, Match::verb("watch"));
    server.faults().drop_watches();
    wait_for(20, "a relist", || {
        (informer.stats().relists.load(std::sync::atomic::Ordering::SeqCst) > relists).then_some(())
    })
    .await;
    assert_eq!(
        informer
            .store()
            .get(&ObjectKey::new(Some("default"), "good-1"))
            .map(|g| g.spec.size),
        Some(1)
    );
    assert_eq!(informer.undecodable().len(), 1);
    assert!(
        deletes.lock().unwrap().is_empty(),
        "{:?}",
        deletes.lock().unwrap()
    );

    // Deleted while undecodable: it goes, with its last known state.
    raw.delete("good-1", &DeleteParams::default()).await.unwrap();
    wait_for(20, "good-1 deleted", || {
        (*deletes.lock().unwrap() == vec!["good-1".to_string()]).then_some(())
    })
    .await;
    assert!(
        informer
            .store()
            .get(&ObjectKey::new(Some("default"), "good-1"))
            .is_none()
    );
    assert!(informer.undecodable().is_empty());
    assert!(!logged().contains(SECRET), "the object's content was logged");
    drop(logs);

    cancel.cancel();
    run.await.unwrap();
}
