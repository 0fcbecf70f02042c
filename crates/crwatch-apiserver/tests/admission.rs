//! Admission webhooks end to end: `ValidatingWebhookConfiguration` / `MutatingWebhookConfiguration`
//! objects registered through the API, a real HTTPS webhook server (self-signed CA, `caBundle`) running
//! inside the test, and requests from kube-rs, kubectl and a raw HTTP client going through the server.
//!
//! Webhooks must be reachable from the API server, so these run against the in-process server only.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::Uri;
use base64::Engine as _;
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

// ---------------------------------------------------------------------------------------------
// A real HTTPS webhook server.

/// What the webhook answers for `(path, review)`; `None` makes it hang until the server stops.
type Behaviour = Arc<dyn Fn(&str, &Value) -> Option<Value> + Send + Sync>;

/// One request the webhook received.
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    query: String,
    review: Value,
}

#[derive(Clone)]
struct Served {
    behaviour: Behaviour,
    seen: Arc<Mutex<Vec<Seen>>>,
}

/// An HTTPS webhook server on 127.0.0.1 with a certificate from its own throwaway CA.
struct Webhook {
    base: String,
    /// The CA certificate, base64 PEM, as `clientConfig.caBundle` wants it.
    ca_bundle: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: CancellationToken,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

async fn handle(
    State(state): State<Served>,
    uri: Uri,
    axum::Json(review): axum::Json<Value>,
) -> axum::Json<Value> {
    state.seen.lock().unwrap().push(Seen {
        path: uri.path().to_string(),
        query: uri.query().unwrap_or_default().to_string(),
        review: review.clone(),
    });
    match (state.behaviour)(uri.path(), &review) {
        Some(answer) => axum::Json(answer),
        // Hang; the connection is dropped when the server stops.
        None => std::future::pending().await,
    }
}

impl Webhook {
    async fn start(behaviour: impl Fn(&str, &Value) -> Option<Value> + Send + Sync + 'static) -> Self {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "admission e2e webhook CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let ca_bundle = base64::engine::general_purpose::STANDARD.encode(ca.pem());

        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        let cert = params.signed_by(&key, &ca).unwrap();
        let mut tls =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(
                    vec![cert.der().clone()],
                    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
                )
                .unwrap();
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(vec![]));
        let state = Served {
            behaviour: Arc::new(behaviour),
            seen: seen.clone(),
        };
        let router = axum::Router::new()
            .route("/{*path}", axum::routing::post(handle))
            .with_state(state);
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let tcp = tokio::select! {
                    _ = stopped.cancelled() => break,
                    Some(_) = connections.join_next(), if !connections.is_empty() => continue,
                    accepted = listener.accept() => match accepted {
                        Ok((tcp, _)) => tcp,
                        Err(_) => continue,
                    },
                };
                let (acceptor, router) = (acceptor.clone(), router.clone());
                connections.spawn(async move {
                    let Ok(stream) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper_util::service::TowerToHyperService::new(router);
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            // Stop listening, then drop every open connection: the port refuses from now on.
            drop(listener);
            connections.shutdown().await;
        });
        Webhook {
            base: format!("https://{addr}"),
            ca_bundle,
            seen,
            stop,
            task: Mutex::new(Some(task)),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The requests received on `path`, oldest first.
    fn seen(&self, path: &str) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.path == path)
            .cloned()
            .collect()
    }

    fn calls(&self, path: &str) -> usize {
        self.seen(path).len()
    }

    /// The last review received on `path`.
    fn last(&self, path: &str) -> Value {
        self.seen(path)
            .pop()
            .unwrap_or_else(|| panic!("no request on {path}"))
            .review
    }

    /// Stop serving and wait until the port is closed and every connection is gone.
    async fn stop(&self) {
        self.stop.cancel();
        let task = self.task.lock().unwrap().take();
        if let Some(task) = task {
            task.await.unwrap();
        }
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn answer(review: &Value, response: Value) -> Value {
    let mut response = response;
    response["uid"] = review["request"]["uid"].clone();
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response})
}

fn allow(review: &Value) -> Value {
    answer(review, json!({"allowed": true}))
}

fn deny(review: &Value, code: u16, reason: &str, message: &str) -> Value {
    answer(
        review,
        json!({"allowed": false, "status": {"code": code, "reason": reason, "message": message}}),
    )
}

fn patched(review: &Value, ops: Value) -> Value {
    let patch = base64::engine::general_purpose::STANDARD.encode(ops.to_string());
    answer(
        review,
        json!({"allowed": true, "patchType": "JSONPatch", "patch": patch}),
    )
}

// ---------------------------------------------------------------------------------------------
// Webhook configurations, registered through the API.

/// Rules for Databases (`resource` may be `databases/status`).
fn db_rules(operations: &[&str], resource: &str) -> Value {
    json!([{
        "operations": operations,
        "apiGroups": ["stable.example.com"],
        "apiVersions": ["v1"],
        "resources": [resource],
    }])
}

/// A webhook with `failurePolicy: Fail` and `sideEffects: None`.
fn hook(name: &str, wh: &Webhook, path: &str, rules: Value) -> Value {
    json!({
        "name": name,
        "clientConfig": {"url": wh.url(path), "caBundle": wh.ca_bundle},
        "rules": rules,
        "failurePolicy": "Fail",
        "sideEffects": "None",
        "admissionReviewVersions": ["v1"],
    })
}

async fn register_validating(t: &common::Target, name: &str, webhooks: Vec<Value>) {
    let config: ValidatingWebhookConfiguration = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": webhooks,
    }))
    .unwrap();
    Api::<ValidatingWebhookConfiguration>::all(t.client.clone())
        .create(&PostParams::default(), &config)
        .await
        .unwrap();
}

async fn register_mutating(t: &common::Target, name: &str, webhooks: Vec<Value>) {
    let config: MutatingWebhookConfiguration = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": webhooks,
    }))
    .unwrap();
    Api::<MutatingWebhookConfiguration>::all(t.client.clone())
        .create(&PostParams::default(), &config)
        .await
        .unwrap();
}

/// Replace the webhooks of a validating configuration (a merge patch replaces the whole list).
async fn update_validating(t: &common::Target, name: &str, webhooks: Vec<Value>) {
    Api::<ValidatingWebhookConfiguration>::all(t.client.clone())
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"webhooks": webhooks})),
        )
        .await
        .unwrap();
}

// ---------------------------------------------------------------------------------------------
// Databases.

async fn setup(prefix: &str) -> (common::Target, String, Api<DynamicObject>) {
    let t = common::local().await;
    t.install_database_crd().await;
    let ns = t.namespace(prefix).await;
    let dbs = databases(&t, &ns);
    (t, ns, dbs)
}

fn databases(t: &common::Target, ns: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("stable.example.com", "v1", "Database");
    Api::namespaced_with(
        t.client.clone(),
        ns,
        &ApiResource::from_gvk_with_plural(&gvk, "databases"),
    )
}

fn database(name: &str, size: &str, labels: Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "stable.example.com/v1",
        "kind": "Database",
        "metadata": {"name": name, "labels": labels},
        "spec": {"engine": "PostgreSQL", "version": "16", "size": size},
    }))
    .unwrap()
}

fn manifest(name: &str, size: &str) -> String {
    format!(
        "apiVersion: stable.example.com/v1\nkind: Database\nmetadata:\n  name: {name}\nspec:\n  engine: PostgreSQL\n  version: \"16\"\n  size: {size}\n"
    )
}

/// The `Status` of a request that must have failed.
fn status_of<T: std::fmt::Debug>(result: kube::Result<T>) -> kube::core::Status {
    match result {
        Err(kube::Error::Api(status)) => *status,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn json_of(obj: &DynamicObject) -> Value {
    serde_json::to_value(obj).unwrap()
}

fn labels_of(obj: &DynamicObject) -> Value {
    json!(obj.metadata.labels.clone().unwrap_or_default())
}

/// kubectl blocks; let the runtime move its other tasks (the servers) off this thread meanwhile.
fn blocking<R>(f: impl FnOnce() -> R) -> R {
    tokio::task::block_in_place(f)
}

// ---------------------------------------------------------------------------------------------
// Tests.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validating_webhook_denies_with_its_message_through_kube_and_kubectl() {
    let (t, ns, dbs) = setup("adm-deny").await;
    let wh = Webhook::start(|_, review| {
        Some(match review["request"]["object"]["spec"]["size"].as_str() {
            Some("666Gi") => deny(review, 403, "Forbidden", "spec.size 666Gi is not allowed"),
            _ => allow(review),
        })
    })
    .await;
    let name = "cursed-size.example.com";
    register_validating(
        &t,
        "cursed-size",
        vec![hook(
            name,
            &wh,
            "/validate",
            db_rules(&["CREATE", "UPDATE"], "databases"),
        )],
    )
    .await;
    let message = format!("admission webhook \"{name}\" denied the request: spec.size 666Gi is not allowed");

    // kube-rs: denied with the webhook's code, reason and message; nothing is stored.
    let status = status_of(
        dbs.create(&PostParams::default(), &database("evil", "666Gi", json!({})))
            .await,
    );
    assert_eq!((status.code, status.reason.as_str()), (403, "Forbidden"));
    assert_eq!(status.message, message);
    assert!(dbs.get_opt("evil").await.unwrap().is_none());

    // The webhook saw an AdmissionReview v1 for the create.
    let seen = wh.seen("/validate");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].query, "timeout=10s");
    let review = &seen[0].review;
    assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(review["kind"], "AdmissionReview");
    let req = &review["request"];
    assert_eq!(
        req["kind"],
        json!({"group": "stable.example.com", "version": "v1", "kind": "Database"})
    );
    assert_eq!(
        req["resource"],
        json!({"group": "stable.example.com", "version": "v1", "resource": "databases"})
    );
    assert_eq!(req["operation"], "CREATE");
    assert_eq!(
        (req["namespace"].as_str(), req["name"].as_str()),
        (Some(ns.as_str()), Some("evil"))
    );
    assert_eq!(req["object"]["apiVersion"], "stable.example.com/v1");
    assert_eq!(req["object"]["spec"]["size"], "666Gi");
    // Schema defaults were applied before admission.
    assert_eq!(req["object"]["spec"]["deletionPolicy"], "Retain");
    assert_eq!(req["oldObject"], Value::Null);
    assert_eq!(req["dryRun"], false);
    assert_eq!(req["options"]["kind"], "CreateOptions");
    assert!(
        req["userInfo"]["username"]
            .as_str()
            .is_some_and(|u| !u.is_empty()),
        "{req}"
    );

    // A good one passes.
    let good = dbs
        .create(&PostParams::default(), &database("good", "10Gi", json!({})))
        .await
        .unwrap();
    assert_eq!(good.data["spec"]["size"], "10Gi");
    assert_eq!(wh.calls("/validate"), 2);

    // Updates are admitted too: making the good one cursed is refused and changes nothing.
    let patch = Patch::Merge(json!({"spec": {"size": "666Gi"}}));
    let status = status_of(dbs.patch("good", &PatchParams::default(), &patch).await);
    assert_eq!((status.code, status.message.as_str()), (403, message.as_str()));
    let review = wh.last("/validate");
    assert_eq!(review["request"]["operation"], "UPDATE");
    assert_eq!(review["request"]["options"]["kind"], "UpdateOptions");
    assert_eq!(review["request"]["oldObject"]["spec"]["size"], "10Gi");
    assert_eq!(review["request"]["object"]["spec"]["size"], "666Gi");
    let stored = dbs.get("good").await.unwrap();
    assert_eq!(stored.data["spec"]["size"], "10Gi");
    assert_eq!(stored.metadata.resource_version, good.metadata.resource_version);

    // kubectl apply: the message reaches stderr, for a create and for a patch.
    let evil = manifest("evil-k", "666Gi");
    let stderr = blocking(|| t.kubectl_err(&["apply", "-n", &ns, "-f", "-"], Some(&evil)));
    assert!(stderr.contains(&message), "{stderr}");
    assert!(stderr.contains("Error from server (Forbidden)"), "{stderr}");
    blocking(|| {
        t.kubectl_ok(
            &["apply", "-n", &ns, "-f", "-"],
            Some(&manifest("fine-k", "20Gi")),
        )
    });
    let stderr = blocking(|| {
        t.kubectl_err(
            &["apply", "-n", &ns, "-f", "-"],
            Some(&manifest("fine-k", "666Gi")),
        )
    });
    assert!(stderr.contains(&message), "{stderr}");
    assert!(dbs.get_opt("evil-k").await.unwrap().is_none());
    assert_eq!(dbs.get("fine-k").await.unwrap().data["spec"]["size"], "20Gi");
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutating_webhook_patches_are_stored_and_returned() {
    let (t, ns, dbs) = setup("adm-mutate").await;
    let wh = Webhook::start(|path, review| {
        let obj = &review["request"]["object"];
        Some(match path {
            "/mutate" => {
                let mut ops = vec![];
                if obj["metadata"]["labels"].is_object() {
                    ops.push(json!({"op": "add", "path": "/metadata/labels/example.com~1mutated", "value": "true"}));
                } else {
                    ops.push(
                        json!({"op": "add", "path": "/metadata/labels", "value": {"example.com/mutated": "true"}}),
                    );
                }
                if obj["spec"]["server"].is_null() {
                    ops.push(json!({"op": "add", "path": "/spec/server", "value": "primary"}));
                }
                if obj["metadata"]["labels"]["engine"] == "oracle" {
                    ops.push(json!({"op": "replace", "path": "/spec/engine", "value": "Oracle"}));
                }
                patched(review, json!(ops))
            }
            // Validation runs after mutation and sees the mutated object.
            _ if obj["metadata"]["labels"]["example.com/mutated"] == "true" => allow(review),
            _ => deny(review, 400, "", "not mutated"),
        })
    })
    .await;
    register_mutating(
        &t,
        "defaults",
        vec![hook(
            "defaults.example.com",
            &wh,
            "/mutate",
            db_rules(&["CREATE", "UPDATE"], "databases"),
        )],
    )
    .await;
    register_validating(
        &t,
        "require-mutation",
        vec![hook(
            "require.example.com",
            &wh,
            "/validate",
            db_rules(&["CREATE", "UPDATE"], "databases"),
        )],
    )
    .await;

    // The response to the create has the label and the default; so does the stored object.
    let created = dbs
        .create(&PostParams::default(), &database("plain", "1Gi", json!(null)))
        .await
        .unwrap();
    assert_eq!(labels_of(&created), json!({"example.com/mutated": "true"}));
    assert_eq!(created.data["spec"]["server"], "primary");
    let stored = dbs.get("plain").await.unwrap();
    assert_eq!(labels_of(&stored), json!({"example.com/mutated": "true"}));
    assert_eq!(stored.data["spec"]["server"], "primary");
    assert_eq!(stored.data["spec"]["engine"], "PostgreSQL");
    assert_eq!((wh.calls("/mutate"), wh.calls("/validate")), (1, 1));
    assert_eq!(
        wh.last("/validate")["request"]["object"]["spec"]["server"],
        "primary"
    );

    // Existing labels are kept and a given server is not overridden.
    let mut db = database("given", "1Gi", json!({"app": "shop"}));
    db.data["spec"]["server"] = json!("replica");
    let created = dbs.create(&PostParams::default(), &db).await.unwrap();
    assert_eq!(
        labels_of(&created),
        json!({"app": "shop", "example.com/mutated": "true"})
    );
    assert_eq!(created.data["spec"]["server"], "replica");
    assert_eq!(dbs.get("given").await.unwrap().data["spec"]["server"], "replica");

    // Updates are mutated as well: a patch removing the server gets the default back.
    let patch = Patch::Merge(json!({"spec": {"server": null}}));
    let updated = dbs.patch("given", &PatchParams::default(), &patch).await.unwrap();
    assert_eq!(updated.data["spec"]["server"], "primary");
    assert_eq!(wh.last("/mutate")["request"]["operation"], "UPDATE");

    // kubectl shows the mutated object too.
    let out = blocking(|| {
        t.kubectl_ok(
            &["apply", "-n", &ns, "-f", "-", "-o", "jsonpath={.spec.server}"],
            Some(&manifest("via-kubectl", "2Gi")),
        )
    });
    assert_eq!(out, "primary");

    // The mutated object is validated against the schema: an invalid patch result is a 422.
    let status = status_of(
        dbs.create(
            &PostParams::default(),
            &database("oracle", "1Gi", json!({"engine": "oracle"})),
        )
        .await,
    );
    assert_eq!(
        (status.code, status.reason.as_str()),
        (422, "Invalid"),
        "{status:?}"
    );
    assert!(status.message.contains("spec.engine"), "{}", status.message);
    assert!(dbs.get_opt("oracle").await.unwrap().is_none());
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_select_operations_resources_and_subresources() {
    let (t, _ns, dbs) = setup("adm-rules").await;
    let wh = Webhook::start(|path, review| {
        Some(match path {
            "/status" => deny(review, 403, "Forbidden", "status is written by the operator only"),
            _ => allow(review),
        })
    })
    .await;
    let everything =
        json!([{"operations": ["*"], "apiGroups": ["*"], "apiVersions": ["*"], "resources": ["*"]}]);
    let mut cluster_only = everything.clone();
    cluster_only[0]["scope"] = json!("Cluster");
    let mut other_group = everything.clone();
    other_group[0]["apiGroups"] = json!(["apps"]);
    register_validating(
        &t,
        "rules",
        vec![
            hook(
                "update-only.example.com",
                &wh,
                "/update",
                db_rules(&["UPDATE"], "databases"),
            ),
            hook(
                "status.example.com",
                &wh,
                "/status",
                db_rules(&["*"], "databases/status"),
            ),
            hook("cluster.example.com", &wh, "/cluster", cluster_only),
            hook("apps.example.com", &wh, "/apps", other_group),
        ],
    )
    .await;
    let calls = || ["/update", "/status", "/cluster", "/apps"].map(|p| wh.calls(p));

    // Only UPDATE: a create is not sent to the webhook.
    dbs.create(&PostParams::default(), &database("db", "1Gi", json!({})))
        .await
        .unwrap();
    assert_eq!(calls(), [0, 0, 0, 0]);

    // A patch and a replace are updates.
    let patch = Patch::Merge(json!({"spec": {"version": "17"}}));
    dbs.patch("db", &PatchParams::default(), &patch).await.unwrap();
    assert_eq!(calls(), [1, 0, 0, 0]);
    let review = wh.last("/update");
    assert_eq!(review["request"]["operation"], "UPDATE");
    assert_eq!(review["request"]["oldObject"]["spec"]["version"], "16");
    assert_eq!(review["request"]["object"]["spec"]["version"], "17");
    assert!(review["request"].get("subResource").is_none(), "{review}");
    let mut current = dbs.get("db").await.unwrap();
    current.data["spec"]["size"] = json!("2Gi");
    dbs.replace("db", &PostParams::default(), &current).await.unwrap();
    assert_eq!(calls(), [2, 0, 0, 0]);

    // `databases/status` matches status writes only, and `databases` does not match them.
    let status_patch = Patch::Merge(json!({"status": {"phase": "Ready"}}));
    let status = status_of(
        dbs.patch_status("db", &PatchParams::default(), &status_patch)
            .await,
    );
    assert_eq!(status.code, 403);
    assert_eq!(
        status.message,
        "admission webhook \"status.example.com\" denied the request: status is written by the operator only"
    );
    assert_eq!(calls(), [2, 1, 0, 0]);
    let review = wh.last("/status");
    assert_eq!(review["request"]["subResource"], "status");
    assert_eq!(review["request"]["requestSubResource"], "status");
    assert_eq!(review["request"]["operation"], "UPDATE");
    assert_eq!(review["request"]["object"]["status"]["phase"], "Ready");
    assert!(dbs.get("db").await.unwrap().data.get("status").is_none());

    // A delete matches none of the rules.
    dbs.delete("db", &DeleteParams::default()).await.unwrap();
    assert!(dbs.get_opt("db").await.unwrap().is_none());
    assert_eq!(calls(), [2, 1, 0, 0]);

    // Cluster-scoped objects (other than webhook configurations, which are exempt) match `Cluster`.
    let namespaces: Api<Namespace> = Api::all(t.client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "adm-rules-cluster"}})).unwrap();
    namespaces.create(&PostParams::default(), &ns).await.unwrap();
    assert_eq!(calls(), [2, 1, 1, 0]);
    assert_eq!(
        wh.last("/cluster")["request"]["resource"]["resource"],
        "namespaces"
    );
    namespaces
        .delete("adm-rules-cluster", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(calls(), [2, 1, 2, 0]);
    assert_eq!(wh.last("/cluster")["request"]["operation"], "DELETE");
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_and_object_selectors_choose_requests() {
    let t = common::local().await;
    t.install_database_crd().await;
    let (strict_ns, open_ns, named_ns) = (
        t.namespace("adm-strict").await,
        t.namespace("adm-open").await,
        t.namespace("adm-named").await,
    );
    let (strict, open, named) = (
        databases(&t, &strict_ns),
        databases(&t, &open_ns),
        databases(&t, &named_ns),
    );
    let wh =
        Webhook::start(|path, review| Some(deny(review, 403, "Forbidden", &format!("denied by {path}"))))
            .await;
    // Created before the webhooks exist, so it can be updated under them below.
    open.create(
        &PostParams::default(),
        &database("locked", "1Gi", json!({"team": "locked"})),
    )
    .await
    .unwrap();

    let mut by_ns = hook(
        "ns.example.com",
        &wh,
        "/ns",
        db_rules(&["CREATE", "UPDATE"], "databases"),
    );
    by_ns["namespaceSelector"] = json!({"matchLabels": {"admission": "strict"}});
    let mut by_name = hook(
        "name.example.com",
        &wh,
        "/name",
        db_rules(&["CREATE", "UPDATE"], "databases"),
    );
    by_name["namespaceSelector"] = json!({"matchExpressions": [
        {"key": "kubernetes.io/metadata.name", "operator": "In", "values": [named_ns]},
    ]});
    let mut by_obj = hook(
        "obj.example.com",
        &wh,
        "/obj",
        db_rules(&["CREATE", "UPDATE"], "databases"),
    );
    by_obj["objectSelector"] = json!({"matchLabels": {"team": "locked"}});
    register_validating(&t, "selectors", vec![by_ns, by_name, by_obj]).await;
    let calls = || ["/ns", "/name", "/obj"].map(|p| wh.calls(p));

    // Neither namespace is labelled yet, nor is the object: no webhook is called.
    strict
        .create(&PostParams::default(), &database("before", "1Gi", json!({})))
        .await
        .unwrap();
    open.create(
        &PostParams::default(),
        &database("free", "1Gi", json!({"team": "free"})),
    )
    .await
    .unwrap();
    assert_eq!(calls(), [0, 0, 0]);

    // Labelling the namespace brings it under the namespaceSelector.
    let namespaces: Api<Namespace> = Api::all(t.client.clone());
    let label = Patch::Merge(json!({"metadata": {"labels": {"admission": "strict"}}}));
    namespaces
        .patch(&strict_ns, &PatchParams::default(), &label)
        .await
        .unwrap();
    let status = status_of(
        strict
            .create(&PostParams::default(), &database("after", "1Gi", json!({})))
            .await,
    );
    assert_eq!(
        status.message,
        "admission webhook \"ns.example.com\" denied the request: denied by /ns"
    );
    assert_eq!(calls(), [1, 0, 0]);
    assert_eq!(wh.last("/ns")["request"]["namespace"], strict_ns.as_str());
    // The other namespace is still open.
    open.create(&PostParams::default(), &database("other", "1Gi", json!({})))
        .await
        .unwrap();
    assert_eq!(calls(), [1, 0, 0]);

    // Every namespace carries its name as the `kubernetes.io/metadata.name` label.
    let status = status_of(
        named
            .create(&PostParams::default(), &database("n", "1Gi", json!({})))
            .await,
    );
    assert_eq!(
        status.message,
        "admission webhook \"name.example.com\" denied the request: denied by /name"
    );
    assert_eq!(calls(), [1, 1, 0]);

    // objectSelector: the new object's labels...
    let status = status_of(
        open.create(
            &PostParams::default(),
            &database("mine", "1Gi", json!({"team": "locked"})),
        )
        .await,
    );
    assert_eq!(
        status.message,
        "admission webhook \"obj.example.com\" denied the request: denied by /obj"
    );
    assert_eq!(calls(), [1, 1, 1]);
    let relabel = Patch::Merge(json!({"metadata": {"labels": {"team": "locked"}}}));
    let status = status_of(open.patch("free", &PatchParams::default(), &relabel).await);
    assert_eq!(status.code, 403);
    assert_eq!(calls(), [1, 1, 2]);
    // ...or the old object's: taking the label off is also seen by the webhook.
    let unlabel = Patch::Merge(json!({"metadata": {"labels": {"team": null}}}));
    let status = status_of(open.patch("locked", &PatchParams::default(), &unlabel).await);
    assert_eq!(status.code, 403);
    assert_eq!(calls(), [1, 1, 3]);
    let review = wh.last("/obj");
    assert_eq!(
        review["request"]["oldObject"]["metadata"]["labels"]["team"],
        "locked"
    );
    assert!(
        review["request"]["object"]["metadata"]["labels"]
            .get("team")
            .is_none(),
        "{review}"
    );
    let other = Patch::Merge(json!({"metadata": {"labels": {"team": "other"}}}));
    open.patch("free", &PatchParams::default(), &other).await.unwrap();
    assert_eq!(calls(), [1, 1, 3]);
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_policy_decides_when_the_webhook_is_down() {
    let (t, ns, dbs) = setup("adm-down").await;
    let wh = Webhook::start(|_, review| Some(allow(review))).await;
    let name = "down.example.com";
    let validating = hook(
        name,
        &wh,
        "/validate",
        db_rules(&["CREATE", "UPDATE"], "databases"),
    );
    register_validating(&t, "down", vec![validating.clone()]).await;
    let mut mutating = hook(
        "down-mutating.example.com",
        &wh,
        "/mutate",
        db_rules(&["CREATE"], "databases"),
    );
    mutating["failurePolicy"] = json!("Ignore");
    register_mutating(&t, "down-mutating", vec![mutating]).await;

    // While it is up, requests pass.
    dbs.create(&PostParams::default(), &database("before", "1Gi", json!({})))
        .await
        .unwrap();
    assert_eq!((wh.calls("/validate"), wh.calls("/mutate")), (1, 1));

    wh.stop().await;
    // failurePolicy Fail: a 500 InternalError naming the webhook; nothing is stored. (The mutating
    // webhook is down too, but it ignores failures.)
    let status = status_of(
        dbs.create(&PostParams::default(), &database("during", "1Gi", json!({})))
            .await,
    );
    assert_eq!(
        (status.code, status.reason.as_str()),
        (500, "InternalError"),
        "{status:?}"
    );
    let prefix = format!(
        "Internal error occurred: failed calling webhook \"{name}\": failed to call webhook: Post \"{}?timeout=10s\": ",
        wh.url("/validate")
    );
    assert!(status.message.starts_with(&prefix), "{}", status.message);
    assert!(dbs.get_opt("during").await.unwrap().is_none());
    let stderr =
        blocking(|| t.kubectl_err(&["apply", "-n", &ns, "-f", "-"], Some(&manifest("during", "1Gi"))));
    assert!(
        stderr.contains(&format!("failed calling webhook \"{name}\"")),
        "{stderr}"
    );
    assert!(stderr.contains("Error from server (InternalError)"), "{stderr}");
    // Updates fail the same way.
    let patch = Patch::Merge(json!({"spec": {"size": "2Gi"}}));
    assert_eq!(
        status_of(dbs.patch("before", &PatchParams::default(), &patch).await).code,
        500
    );

    // failurePolicy Ignore: the request goes through as if there were no webhook.
    let mut ignoring = validating;
    ignoring["failurePolicy"] = json!("Ignore");
    update_validating(&t, "down", vec![ignoring]).await;
    let created = dbs
        .create(&PostParams::default(), &database("during", "1Gi", json!({})))
        .await
        .unwrap();
    assert_eq!(created.data["spec"]["size"], "1Gi");
    assert!(dbs.get_opt("during").await.unwrap().is_some());
    assert_eq!(
        dbs.patch("before", &PatchParams::default(), &patch)
            .await
            .unwrap()
            .data["spec"]["size"],
        "2Gi"
    );
    assert_eq!((wh.calls("/validate"), wh.calls("/mutate")), (1, 1));
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_seconds_bounds_a_hanging_webhook() {
    let (t, _ns, dbs) = setup("adm-timeout").await;
    let wh = Webhook::start(|_, _| None).await;
    let name = "hang.example.com";
    let mut slow = hook(name, &wh, "/hang", db_rules(&["CREATE"], "databases"));
    slow["timeoutSeconds"] = json!(1);
    register_validating(&t, "hang", vec![slow.clone()]).await;

    let start = Instant::now();
    let status = status_of(
        dbs.create(&PostParams::default(), &database("slow", "1Gi", json!({})))
            .await,
    );
    let took = start.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(10),
        "took {took:?}"
    );
    assert_eq!((status.code, status.reason.as_str()), (500, "InternalError"));
    assert_eq!(
        status.message,
        format!(
            "Internal error occurred: failed calling webhook \"{name}\": failed to call webhook: Post \"{}?timeout=1s\": \
             context deadline exceeded",
            wh.url("/hang")
        )
    );
    assert!(dbs.get_opt("slow").await.unwrap().is_none());
    // The webhook was told its deadline.
    assert_eq!(wh.seen("/hang")[0].query, "timeout=1s");

    // With Ignore the request waits for the timeout, then goes through.
    slow["failurePolicy"] = json!("Ignore");
    update_validating(&t, "hang", vec![slow]).await;
    let start = Instant::now();
    dbs.create(&PostParams::default(), &database("slow", "1Gi", json!({})))
        .await
        .unwrap();
    let took = start.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(10),
        "took {took:?}"
    );
    assert!(dbs.get_opt("slow").await.unwrap().is_some());
    common::eventually(5, "both calls reached the webhook", || async {
        (wh.calls("/hang") == 2).then_some(())
    })
    .await;
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_admission_can_refuse_a_deletion() {
    let (t, ns, dbs) = setup("adm-delete").await;
    let wh = Webhook::start(|_, review| {
        let old = &review["request"]["oldObject"];
        Some(if old["metadata"]["labels"]["protected"] == "true" {
            let name = old["metadata"]["name"].as_str().unwrap_or_default();
            deny(review, 403, "Forbidden", &format!("database {name} is protected"))
        } else {
            allow(review)
        })
    })
    .await;
    let name = "protect.example.com";
    register_validating(
        &t,
        "protect",
        vec![hook(name, &wh, "/protect", db_rules(&["DELETE"], "databases"))],
    )
    .await;
    dbs.create(
        &PostParams::default(),
        &database("keep", "1Gi", json!({"protected": "true"})),
    )
    .await
    .unwrap();
    dbs.create(&PostParams::default(), &database("scratch", "1Gi", json!({})))
        .await
        .unwrap();
    assert_eq!(wh.calls("/protect"), 0);
    let message = format!("admission webhook \"{name}\" denied the request: database keep is protected");

    // kube-rs: refused, and the object is still there.
    let status = status_of(dbs.delete("keep", &DeleteParams::default()).await);
    assert_eq!(
        (status.code, status.reason.as_str(), status.message.as_str()),
        (403, "Forbidden", message.as_str())
    );
    let kept = dbs.get("keep").await.unwrap();
    assert!(kept.metadata.deletion_timestamp.is_none());
    let review = wh.last("/protect");
    let req = &review["request"];
    assert_eq!(req["operation"], "DELETE");
    assert_eq!(req["name"], "keep");
    assert_eq!(req["namespace"], ns.as_str());
    assert_eq!(req["object"], Value::Null);
    assert_eq!(req["oldObject"]["metadata"]["name"], "keep");
    assert_eq!(req["oldObject"]["spec"]["size"], "1Gi");
    assert_eq!(req["options"]["kind"], "DeleteOptions");

    // kubectl delete: the message on stderr, the object still there.
    let stderr = blocking(|| t.kubectl_err(&["delete", "database", "keep", "-n", &ns], None));
    assert!(stderr.contains(&message), "{stderr}");
    assert_eq!(wh.calls("/protect"), 2);
    assert_eq!(dbs.get("keep").await.unwrap().metadata.uid, kept.metadata.uid);

    // An allowed delete goes through.
    blocking(|| t.kubectl_ok(&["delete", "database", "scratch", "-n", &ns], None));
    assert!(dbs.get_opt("scratch").await.unwrap().is_none());
    assert_eq!(wh.calls("/protect"), 3);
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_needs_webhooks_without_side_effects() {
    let (t, ns, dbs) = setup("adm-dry").await;
    let wh = Webhook::start(|path, review| {
        Some(match path {
            "/mutate" => patched(
                review,
                json!([{"op": "add", "path": "/spec/server", "value": "dry-default"}]),
            ),
            _ => allow(review),
        })
    })
    .await;
    let name = "fx.example.com";
    let with = |side_effects: &str| {
        let mut h = hook(
            name,
            &wh,
            "/validate",
            db_rules(&["CREATE", "DELETE"], "databases"),
        );
        h["sideEffects"] = json!(side_effects);
        h
    };
    register_validating(&t, "fx", vec![with("Some")]).await;
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let expected = format!("admission webhook \"{name}\" does not support dry run");

    for side_effects in ["Some", "Unknown"] {
        update_validating(&t, "fx", vec![with(side_effects)]).await;
        let status = status_of(dbs.create(&dry, &database("dry", "1Gi", json!({}))).await);
        assert_eq!(
            (status.code, status.reason.as_str(), status.message.as_str()),
            (400, "BadRequest", expected.as_str()),
            "sideEffects {side_effects}"
        );
        let stderr = blocking(|| {
            t.kubectl_err(
                &["create", "--dry-run=server", "-n", &ns, "-f", "-"],
                Some(&manifest("dry", "1Gi")),
            )
        });
        assert!(stderr.contains(&expected), "{stderr}");
    }
    assert_eq!(wh.calls("/validate"), 0);
    // A real (not dry-run) request is fine with side effects, and a dry-run delete is refused too.
    dbs.create(&PostParams::default(), &database("real", "1Gi", json!({})))
        .await
        .unwrap();
    assert_eq!(wh.calls("/validate"), 1);
    let dry_delete = DeleteParams {
        dry_run: true,
        ..Default::default()
    };
    let status = status_of(dbs.delete("real", &dry_delete).await);
    assert_eq!((status.code, status.message.as_str()), (400, expected.as_str()));
    assert!(dbs.get_opt("real").await.unwrap().is_some());

    // sideEffects None (and NoneOnDryRun): admitted, the webhooks are told it is a dry run, and
    // nothing is stored, mutations included.
    let mut mutating = hook(
        "dry-mutating.example.com",
        &wh,
        "/mutate",
        db_rules(&["CREATE"], "databases"),
    );
    mutating["sideEffects"] = json!("NoneOnDryRun");
    register_mutating(&t, "dry-mutating", vec![mutating]).await;
    for (i, side_effects) in ["None", "NoneOnDryRun"].into_iter().enumerate() {
        update_validating(&t, "fx", vec![with(side_effects)]).await;
        let created = dbs
            .create(&dry, &database("dry", "1Gi", json!({})))
            .await
            .unwrap();
        assert_eq!(created.metadata.name.as_deref(), Some("dry"));
        assert_eq!(created.data["spec"]["server"], "dry-default");
        assert!(
            dbs.get_opt("dry").await.unwrap().is_none(),
            "sideEffects {side_effects}"
        );
        assert_eq!(wh.calls("/validate"), 2 + i);
        assert_eq!(wh.last("/validate")["request"]["dryRun"], true);
        assert_eq!(wh.last("/mutate")["request"]["dryRun"], true);
    }
    let out = blocking(|| {
        t.kubectl_ok(
            &[
                "create",
                "--dry-run=server",
                "-n",
                &ns,
                "-f",
                "-",
                "-o",
                "jsonpath={.spec.server}",
            ],
            Some(&manifest("dry", "1Gi")),
        )
    });
    assert_eq!(out, "dry-default");
    assert!(dbs.get_opt("dry").await.unwrap().is_none());
    // A dry-run delete is admitted now, and deletes nothing.
    dbs.delete("real", &dry_delete).await.unwrap();
    assert!(dbs.get_opt("real").await.unwrap().is_some());
    assert_eq!(wh.last("/validate")["request"]["operation"], "DELETE");
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_warnings_reach_clients_as_warning_headers() {
    let (t, ns, _dbs) = setup("adm-warn").await;
    let wh = Webhook::start(|path, review| {
        let size = review["request"]["object"]["spec"]["size"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        Some(match path {
            "/mutate" => answer(review, json!({"allowed": true, "warnings": ["defaults applied"]})),
            // A denial's warnings are sent too, with the error.
            _ if size == "666Gi" => answer(
                review,
                json!({"allowed": false, "warnings": ["666Gi is cursed"], "status": {"code": 403, "message": "no"}}),
            ),
            // Repeats the mutating webhook's warning, which is sent once.
            _ => answer(
                review,
                json!({"allowed": true, "warnings": [format!("size {size} is large"), "defaults applied"]}),
            ),
        })
    })
    .await;
    register_mutating(
        &t,
        "warn-mutating",
        vec![hook(
            "warn-m.example.com",
            &wh,
            "/mutate",
            db_rules(&["CREATE"], "databases"),
        )],
    )
    .await;
    register_validating(
        &t,
        "warn",
        vec![hook(
            "warn.example.com",
            &wh,
            "/validate",
            db_rules(&["CREATE"], "databases"),
        )],
    )
    .await;

    // A raw request shows the headers.
    let server = t.server.as_ref().expect("in-process server").server();
    let ca = rustls_pemfile::certs(&mut server.ca_pem().as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(ca);
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .no_proxy()
        .build()
        .unwrap();
    let create = |name: &str, size: &str| {
        http.post(format!(
            "{}/apis/stable.example.com/v1/namespaces/{ns}/databases",
            server.url()
        ))
        .bearer_auth(server.token())
        .json(&json_of(&database(name, size, json!({}))))
        .send()
    };
    let warnings_of = |response: &reqwest::Response| -> Vec<String> {
        let headers = response.headers().get_all("warning");
        headers.iter().map(|v| v.to_str().unwrap().to_string()).collect()
    };
    let response = create("big", "500Gi").await.unwrap();
    assert_eq!(response.status().as_u16(), 201);
    assert_eq!(
        warnings_of(&response),
        [r#"299 - "defaults applied""#, r#"299 - "size 500Gi is large""#]
    );
    let response = create("cursed", "666Gi").await.unwrap();
    assert_eq!(response.status().as_u16(), 403);
    assert_eq!(
        warnings_of(&response),
        [r#"299 - "defaults applied""#, r#"299 - "666Gi is cursed""#]
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["message"],
        "admission webhook \"warn.example.com\" denied the request: no"
    );

    // kubectl prints them.
    let mut cmd = t.kubectl();
    cmd.args(["create", "-n", &ns, "-f", "-"]);
    let out = blocking(|| t.run(cmd, Some(&manifest("bigger", "900Gi"))));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("Warning: size 900Gi is large"), "{stderr}");
    assert!(stderr.contains("Warning: defaults applied"), "{stderr}");
    let mut cmd = t.kubectl();
    cmd.args(["create", "-n", &ns, "-f", "-"]);
    let out = blocking(|| t.run(cmd, Some(&manifest("cursed", "666Gi"))));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("Warning: 666Gi is cursed"), "{stderr}");
    assert!(stderr.contains("denied the request: no"), "{stderr}");
    t.cleanup().await;
}
