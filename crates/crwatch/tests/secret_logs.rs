//! Response bodies never reach logs (issue 10, why 9). kube's own `Api<K>` methods log a whole
//! response body at WARN when it does not decode into `K`, and their error quotes the value; a
//! Secret's password got into operator logs that way. With a Secret holding a known password
//! and an object that does not decode carrying it too, everything crwatch does here (informers,
//! `crwatch::api` requests as the runtime, operators and CLI make them, finalizers, status
//! patches, Events) is logged at TRACE for every target, and the password never appears. The
//! last step shows the test can see a leak: kube's `Api::get` of the same object does log it.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crwatch::informer::InformerFactory;
use crwatch::source::kube::KubeSource;
use crwatch_apiserver::TestServer;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResource;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// The controller's idea of a Gadget: `size` is a number.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, JsonSchema)]
#[kube(group = "test.crwatch.io", version = "v1", kind = "Gadget", namespaced)]
pub struct GadgetSpec {
    size: i32,
}

const PASSWORD: &str = "pw-7f3a9c-never-log-me";

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_never_reach_the_logs_even_when_an_answer_does_not_decode() {
    let buf: Arc<Mutex<Vec<u8>>> = Arc::default();
    let writer = buf.clone();
    tracing::subscriber::set_global_default(
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || Capture(writer.clone()))
            .finish(),
    )
    .unwrap();
    let logged = || String::from_utf8_lossy(&buf.lock().unwrap()).into_owned();

    let server = TestServer::start().await.unwrap();
    let client = server.client();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "db-credentials"},
        "stringData": {"password": PASSWORD},
    }))
    .unwrap();
    crwatch::api::create(&secrets, &PostParams::default(), &secret)
        .await
        .unwrap();

    // A CRD that lets anything into spec, and an object the Rust type cannot read, holding the
    // password where a number belongs.
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "metadata": {"name": "gadgets.test.crwatch.io"},
        "spec": {
            "group": "test.crwatch.io",
            "names": {"kind": "Gadget", "plural": "gadgets", "singular": "gadget", "listKind": "GadgetList"},
            "scope": "Namespaced",
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}}}]
        }
    }))
    .unwrap();
    crwatch::api::create(&Api::all(client.clone()), &PostParams::default(), &crd)
        .await
        .unwrap();
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("test.crwatch.io", "v1", "Gadget"),
        "gadgets",
    );
    let raw: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ar);
    let bad = json!({"apiVersion": "test.crwatch.io/v1", "kind": "Gadget",
        "metadata": {"name": "bad", "namespace": "default"}, "spec": {"size": PASSWORD}});
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while crwatch::api::patch(&raw, "bad", &PatchParams::apply("t").force(), &Patch::Apply(&bad))
        .await
        .is_err()
    {
        assert!(tokio::time::Instant::now() < deadline, "the CRD was never served");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Informers over both: the Secret is cached, the Gadget skipped.
    let factory = InformerFactory::new(client.clone());
    let secret_informer = factory.informer(KubeSource::<Secret>::all(client.clone()));
    let gadgets = factory.informer(KubeSource::<Gadget>::all(client.clone()));
    factory.start();
    factory
        .wait_for_cache_sync(Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(secret_informer.store().len(), 1);
    assert_eq!(gadgets.undecodable().len(), 1);

    // Typed requests whose answers do not decode: errors name the path, not the value.
    let typed: Api<Gadget> = Api::namespaced(client.clone(), "default");
    let errors = [
        crwatch::api::get(&typed, "bad").await.unwrap_err().to_string(),
        crwatch::api::list(&typed, &Default::default())
            .await
            .unwrap_err()
            .to_string(),
        crwatch::api::patch(
            &typed,
            "bad",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}})),
        )
        .await
        .unwrap_err()
        .to_string(),
    ];
    for e in &errors {
        assert!(e.contains("spec.size: invalid type: string, expected i32"), "{e}");
        assert!(!e.contains(PASSWORD), "{e}");
        tracing::warn!(error = %e, "as a reconciler would log it");
    }
    // The finalizer helper patches the object and gets it back, undecodable.
    let cached = Gadget::new("bad", GadgetSpec { size: 1 });
    let e = crwatch::finalizer::finalizer(&typed, "test.crwatch.io/cleanup", Arc::new(cached), |_| async {
        Ok::<_, anyhow::Error>(crwatch::controller::Action::done())
    })
    .await
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(!e.contains(PASSWORD), "{e}");
    // The Secret read back decodes, and its content is not logged either.
    let got = crwatch::api::get(&secrets, "db-credentials").await.unwrap();
    assert_eq!(got.data.unwrap()["password"].0, PASSWORD.as_bytes());

    assert!(!logged().contains(PASSWORD), "the password was logged");

    // The same request through kube's own method does log the body: what this test guards.
    let before = buf.lock().unwrap().len();
    assert!(typed.get("bad").await.is_err());
    let after = String::from_utf8_lossy(&buf.lock().unwrap()[before..]).into_owned();
    assert!(
        after.contains(PASSWORD),
        "kube no longer logs bodies; this test can no longer tell"
    );
}
