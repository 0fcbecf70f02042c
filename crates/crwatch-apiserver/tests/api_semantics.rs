//! API semantics a controller can observe, driven through kube-rs (and raw requests where kube-rs
//! cannot express a request): create and metadata, resourceVersions, optimistic concurrency,
//! generation and the status subresource, managed fields, server-side apply, the patch types,
//! dry runs, field validation, CRD schemas, finalizers, garbage collection, namespaces, the CRD
//! lifecycle, deletecollection, the built-in kinds, and authentication.
//!
//! Every test runs against the in-process server and, when `CRWATCH_TEST_KUBECONFIG` is set,
//! against a real cluster too, so the expectations here are the real kube-apiserver's.

mod common;

use std::collections::BTreeMap;
use std::fmt::Debug;

use http_body_util::BodyExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v1::{Scale, ScaleSpec};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Namespace, Secret, ServiceAccount};
use k8s_openapi::api::events::v1::Event as EventsV1Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
    PostParams, Preconditions, PropagationPolicy, ValidationDirective,
};
use kube::core::Status;
use serde_json::{Value, json};

use common::{Target, eventually};

// ------------------------------------------------------------------------------------------------
// Helpers
// ------------------------------------------------------------------------------------------------

const DB_GROUP: &str = "stable.example.com";

fn db_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(DB_GROUP, "v1", "Database"), "databases")
}

fn dbs(t: &Target, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(t.client.clone(), ns, &db_resource())
}

fn db_spec() -> Value {
    json!({"engine": "PostgreSQL", "version": "15", "size": "1Gi"})
}

fn database(name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "stable.example.com/v1",
        "kind": "Database",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .expect("a Database")
}

fn configmap(name: &str, data: &[(&str, &str)]) -> ConfigMap {
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some(name.into());
    cm.data = Some(data.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
    cm
}

/// The `Status` a failed call answered with (panics on success or a non-API error).
fn api_err<T: Debug>(what: &str, r: Result<T, kube::Error>) -> Status {
    match r {
        Err(kube::Error::Api(s)) => *s,
        other => panic!("{what}: expected an API error, got {other:?}"),
    }
}

fn rv_of(meta: &kube::api::ObjectMeta) -> u64 {
    meta.resource_version
        .as_deref()
        .expect("resourceVersion")
        .parse()
        .expect("numeric resourceVersion")
}

fn causes(s: &Status) -> Vec<(String, String, String)> {
    s.details
        .as_ref()
        .map(|d| {
            d.causes
                .iter()
                .map(|c| (c.reason.clone(), c.field.clone(), c.message.clone()))
                .collect()
        })
        .unwrap_or_default()
}

fn mf_entry<'a>(
    meta: &'a kube::api::ObjectMeta,
    manager: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry> {
    meta.managed_fields
        .as_ref()?
        .iter()
        .find(|e| e.manager.as_deref() == Some(manager))
}

fn owns(e: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry, path: &[&str]) -> bool {
    let mut cur = match &e.fields_v1 {
        Some(f) => &f.0,
        None => return false,
    };
    for p in path {
        match cur.get(format!("f:{p}")) {
            Some(next) => cur = next,
            None => return false,
        }
    }
    true
}

/// A raw response: code, `Warning` headers and the JSON body.
struct Raw {
    code: u16,
    warnings: Vec<String>,
    body: Value,
}

async fn raw(client: &kube::Client, method: &str, path: &str, content_type: &str, body: &str) -> Raw {
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::ACCEPT, "application/json")
        .body(kube::client::Body::from(body.as_bytes().to_vec()))
        .expect("request");
    let resp = client.send(req).await.expect("send");
    let code = resp.status().as_u16();
    let warnings = resp
        .headers()
        .get_all(http::header::WARNING)
        .iter()
        .map(|v| v.to_str().expect("ascii warning").to_string())
        .collect();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| json!(String::from_utf8_lossy(&bytes)));
    Raw { code, warnings, body }
}

fn db_path(ns: &str, name: Option<&str>) -> String {
    match name {
        Some(n) => format!("/apis/stable.example.com/v1/namespaces/{ns}/databases/{n}"),
        None => format!("/apis/stable.example.com/v1/namespaces/{ns}/databases"),
    }
}

fn stale_message(resource: &str, name: &str) -> String {
    format!(
        "Operation cannot be fulfilled on {resource} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
    )
}

async fn gone<K>(api: &Api<K>, name: &str, secs: u64, what: &str)
where
    K: kube::Resource + Clone + Debug + serde::de::DeserializeOwned,
{
    eventually(secs, what, || async {
        api.get_opt(name).await.expect("get").is_none().then_some(())
    })
    .await;
}

// ------------------------------------------------------------------------------------------------
// create
// ------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_fills_in_metadata_and_refuses_bad_creates() {
    for t in common::targets().await {
        t.install_database_crd().await;
        let ns = t.namespace("create").await;
        let api = dbs(&t, &ns);

        let created = api
            .create(&PostParams::default(), &database("x", db_spec()))
            .await
            .unwrap();
        let m = &created.metadata;
        assert!(
            m.uid.as_deref().is_some_and(|u| u.len() == 36),
            "[{}] uid {:?}",
            t.name,
            m.uid
        );
        assert!(m.creation_timestamp.is_some(), "[{}] creationTimestamp", t.name);
        assert!(rv_of(m) > 0);
        assert_eq!(
            m.generation,
            Some(1),
            "[{}] a new custom resource is generation 1",
            t.name
        );
        assert_eq!(m.namespace.as_deref(), Some(ns.as_str()));

        let deployments: Api<Deployment> = Api::namespaced(t.client.clone(), &ns);
        let d = deployments
            .create(&PostParams::default(), &deployment("web"))
            .await
            .unwrap();
        assert_eq!(
            d.metadata.generation,
            Some(1),
            "[{}] a new Deployment is generation 1",
            t.name
        );

        // generateName: the prefix plus five random characters.
        let mut g = database("", db_spec());
        g.metadata.name = None;
        g.metadata.generate_name = Some("gen-".into());
        let g = api.create(&PostParams::default(), &g).await.unwrap();
        let gname = g.metadata.name.clone().unwrap();
        assert!(
            gname.starts_with("gen-") && gname.len() == 9,
            "[{}] generated name {gname}",
            t.name
        );
        assert!(
            gname[4..]
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()),
            "{gname}"
        );
        assert!(api.get_opt(&gname).await.unwrap().is_some());

        // The same name again.
        let e = api_err(
            "duplicate",
            api.create(&PostParams::default(), &database("x", db_spec()))
                .await,
        );
        assert_eq!(
            (e.code, e.reason.as_str()),
            (409, "AlreadyExists"),
            "[{}] {e:?}",
            t.name
        );
        assert_eq!(e.message, "databases.stable.example.com \"x\" already exists");
        let d = e.details.expect("details");
        assert_eq!(
            (d.name.as_str(), d.group.as_str(), d.kind.as_str()),
            ("x", DB_GROUP, "databases")
        );

        // A namespace that does not exist.
        let nowhere: Api<ConfigMap> = Api::namespaced(t.client.clone(), "nope");
        let e = api_err(
            "missing namespace",
            nowhere.create(&PostParams::default(), &configmap("c", &[])).await,
        );
        assert_eq!(
            (e.code, e.reason.as_str()),
            (404, "NotFound"),
            "[{}] {e:?}",
            t.name
        );
        assert_eq!(e.message, "namespaces \"nope\" not found");

        // An invalid name.
        let cms: Api<ConfigMap> = Api::namespaced(t.client.clone(), &ns);
        let e = api_err(
            "bad name",
            cms.create(&PostParams::default(), &configmap("Bad_Name", &[]))
                .await,
        );
        assert_eq!(
            (e.code, e.reason.as_str()),
            (422, "Invalid"),
            "[{}] {e:?}",
            t.name
        );
        assert!(
            e.message.starts_with(
                "ConfigMap \"Bad_Name\" is invalid: metadata.name: Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain must consist of"
            ),
            "[{}] {}",
            t.name,
            e.message
        );
        let c = causes(&e);
        assert_eq!(c.len(), 1, "{c:?}");
        assert_eq!(
            (c[0].0.as_str(), c[0].1.as_str()),
            ("FieldValueInvalid", "metadata.name")
        );
        let e = api_err(
            "bad db name",
            api.create(&PostParams::default(), &database("UPPER", db_spec()))
                .await,
        );
        assert_eq!(e.code, 422, "[{}] {e:?}", t.name);
        assert!(
            e.message
                .starts_with("Database.stable.example.com \"UPPER\" is invalid: metadata.name"),
            "{}",
            e.message
        );
        t.cleanup().await;
    }
}

fn deployment(name: &str) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [
                    {"name": "app", "image": "nginx:1.27"},
                    {"name": "sidecar", "image": "busybox:1.36"}
                ]}
            }
        }
    }))
    .expect("a Deployment")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_resource_version_sequence_across_kinds() {
    for t in common::targets().await {
        t.install_database_crd().await;
        let ns = t.namespace("rv").await;
        let cms: Api<ConfigMap> = Api::namespaced(t.client.clone(), &ns);
        let api = dbs(&t, &ns);
        let cm = cms
            .create(&PostParams::default(), &configmap("c", &[("a", "1")]))
            .await
            .unwrap();
        let db = api
            .create(&PostParams::default(), &database("d", db_spec()))
            .await
            .unwrap();
        let mut cm2 = cm.clone();
        cm2.data = Some([("a".to_string(), "2".to_string())].into());
        let cm2 = cms.replace("c", &PostParams::default(), &cm2).await.unwrap();
        let (a, b, c) = (rv_of(&cm.metadata), rv_of(&db.metadata), rv_of(&cm2.metadata));
        assert!(
            a < b && b < c,
            "[{}] resourceVersions {a} < {b} < {c} across kinds",
            t.name
        );
        // A list answers with a resourceVersion at least as new as every item.
        let list = cms.list(&ListParams::default()).await.unwrap();
        let list_rv: u64 = list.metadata.resource_version.unwrap().parse().unwrap();
        assert!(list_rv >= c, "[{}] list rv {list_rv} >= {c}", t.name);
        t.cleanup().await;
    }
}

// ------------------------------------------------------------------------------------------------
// optimistic concurrency
// ------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_writes_conflict_and_custom_resources_need_a_resource_version() {
    for t in common::targets().await {
        t.install_database_crd().await;
        let ns = t.namespace("occ").await;
        let api = dbs(&t, &ns);
        let v1 = api
            .create(&PostParams::default(), &database("x", db_spec()))
            .await
            .unwrap();

        let mut next = v1.clone();
        next.data["spec"]["size"] = json!("2Gi");
        let v2 = api.replace("x", &PostParams::default(), &next).await.unwrap();
        assert!(rv_of(&v2.metadata) > rv_of(&v1.metadata));

        // v1 is stale now.
        let mut stale = v1.clone();
        stale.data["spec"]["size"] = json!("3Gi");
        let e = api_err(
            "stale replace",
            api.replace("x", &PostParams::default(), &stale).await,
        );
        assert_eq!(
            (e.code, e.reason.as_str()),
            (409, "Conflict"),
            "[{}] {e:?}",
            t.name
        );
        assert_eq!(e.message, stale_message("databases.stable.example.com", "x"));

        // Custom resources refuse unconditional updates.
        let mut unconditional = v2.clone();
        unconditional.metadata.resource_version = None;
        let e = api_err(
            "no rv",
            api.replace("x", &PostParams::default(), &unconditional).await,
        );
        assert_eq!(
            (e.code, e.reason.as_str()),
            (422, "Invalid"),
            "[{}] {e:?}",
            t.name
        );
        assert_eq!(
            e.message,
            "Database.stable.example.com \"x\" is invalid: metadata.resourceVersion: Invalid value: 0x0: must be specified for an update"
        );

        // ConfigMaps allow them.
        let cms: Api<ConfigMap> = Api::namespaced(t.client.clone(), &ns);
        cms.create(&PostParams::default(), &configmap("c", &[("a", "1")]))
            .await
            .unwrap();
        let ok = cms
            .replace("c", &PostParams::default(), &configmap("c", &[("a", "2")]))
            .await
            .unwrap();
        assert_eq!(ok.data.unwrap()["a"], "2");

        // A patch carrying a stale resourceVersion is a precondition, and fails.
        let patch =
            json!({"metadata": {"resourceVersion": v1.metadata.resource_version}, "spec": {"size": "4Gi"}});
        let e = api_err(
            "stale patch",
            api.patch("x", &PatchParams::default(), &Patch::Merge(&patch))
                .await,
        );
        assert_eq!(
            (e.code, e.reason.as_str()),
            (409, "Conflict"),
            "[{}] {e:?}",
            t.name
        );
        assert_eq!(e.message, stale_message("databases.stable.example.com", "x"));
        let cur = api.get("x").await.unwrap();
        assert_eq!(cur.data["spec"]["size"], "2Gi");
        // ...and with the current one it goes through.
        let patch =
            json!({"metadata": {"resourceVersion": cur.metadata.resource_version}, "spec": {"size": "4Gi"}});
        let out = api
            .patch("x", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
        assert_eq!(out.data["spec"]["size"], "4Gi");
        t.cleanup().await;
    }
}

// ------------------------------------------------------------------------------------------------
// generation and the status subresource
// ------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generation_follows_spec_and_status_is_its_own_subresource() {
    for t in common::targets().await {
        t.install_database_crd().await;
        let ns = t.namespace("gen").await;
        let api = dbs(&t, &ns);
        let mut with_status = database("x", db_spec());
        with_status.data["status"] = json!({"phase": "Ready"});
        let created = api.create(&PostParams::default(), &with_status).await.unwrap();
        assert!(
            created.data.get("status").is_none(),
            "[{}] create ignores .status: {:?}",
            t.name,
            created.data
        );
        assert_eq!(created.metadata.generation, Some(1));

        let pp = PatchParams::default();
        let o = api
            .patch(
                "x",
                &pp,
                &Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}})),
            )
            .await
            .unwrap();
        assert_eq!(
            o.metadata.generation,
            Some(1),
            "[{}] labels do not bump generation",
            t.name
        );
        let o = api
            .patch(
                "x",
                &pp,
                &Patch::Merge(json!({"metadata": {"annotations": {"n": "v"}}})),
            )
            .await
            .unwrap();
        assert_eq!(
            o.metadata.generation,
            Some(1),
            "[{}] annotations do not bump generation",
            t.name
        );
        let o = api
            .patch("x", &pp, &Patch::Merge(json!({"spec": {"size": "2Gi"}})))
            .await
            .unwrap();
        assert_eq!(
            o.metadata.generation,
            Some(2),
            "[{}] a spec change bumps generation",
            t.name
        );

        // /status changes only .status (a spec change sent there is ignored) and not generation.
        let o = api
            .patch_status(
                "x",
                &pp,
                &Patch::Merge(
                    json!({"spec": {"size": "9Gi"}, "status": {"phase": "Ready", "observedGeneration": 2}}),
                ),
            )
            .await
            .unwrap();
        assert_eq!(o.data["status"]["phase"], "Ready");
        assert_eq!(
            o.data["spec"]["size"], "2Gi",
            "[{}] spec via /status is ignored",
            t.name
        );
        assert_eq!(
            o.metadata.generation,
            Some(2),
            "[{}] status writes keep generation",
            t.name
        );

        // The main resource ignores .status.
        let mut main = o.clone();
        main.data["status"]["phase"] = json!("Failed");
        main.data["spec"]["version"] = json!("16");
        let o = api.replace("x", &PostParams::default(), &main).await.unwrap();
        assert_eq!(
            o.data["status"]["phase"], "Ready",
            "[{}] status via the main resource is ignored",
            t.name
        );
        assert_eq!(o.data["spec"]["version"], "16");
        assert_eq!(o.metadata.generation, Some(3));

        // replace_status: only .status changes.
        let mut st = o.clone();
        st.data["status"] = json!({"phase": "Provisioning", "ready": false});
        st.data["spec"]["engine"] = json!("MySQL");
        let o = api
            .replace_status("x", &PostParams::default(), &st)
            .await
            .unwrap();
        assert_eq!(o.data["status"], json!({"phase": "Provisioning", "ready": false}));
        assert_eq!(
            o.data["spec"]["engine"], "PostgreSQL",
            "[{}] spec via PUT /status is ignored",
            t.name
        );
        assert_eq!(o.metadata.generation, Some(3));
        let got = api.get_status("x").await.unwrap();
        assert_eq!(got.data["status"]["phase"], "Provisioning");

        // Deployments: the same rules.
        let deployments: Api<Deployment> = Api::namespaced(t.client.clone(), &ns);
        deployments
            .create(&PostParams::default(), &deployment("web"))
            .await
            .unwrap();
        let d = deployments
            .patch(
                "web",
                &pp,
                &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})),
            )
            .await
            .unwrap();
        assert_eq!(d.metadata.generation, Some(1));
        let d = deployments
            .patch("web", &pp, &Patch::Merge(json!({"spec": {"replicas": 2}})))
            .await
            .unwrap();
        assert_eq!(d.metadata.generation, Some(2));
        t.cleanup().await;
    }
}

// ------------------------------------------------------------------------------------------------
// managed fields and server-side apply
// ------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_fields_name_the_field_managers() {
    for t in common::targets().await {
        t.install_database_crd().await;
        let ns = t.namespace("mf").await;
        let api = dbs(&t, &ns);
        let pp = PostParams {
            field_manager: Some("creator".into()),
            ..Default::default()
        };
        let created = api.create(&pp, &database("x", db_spec())).await.unwrap();
        let e = mf_entry(&created.metadata, "creator")
            .unwrap_or_else(|| panic!("[{}] {:?}", t.name, created.metadata));
        assert_eq!(e.operation.as_deref(), Some("Update"));
        assert_eq!(e.api_version.as_deref(), Some("stable.example.com/v1"));
        assert_eq!(e.fields_type.as_deref(), Some("FieldsV1"));
        assert!(e.time.is_some());
        assert!(
            owns(e, &["spec", "engine"]) && owns(e, &["spec", "size"]),
            "{e:?}"
        );

        let mut next = created.clone();
        next.data["spec"]["size"] = json!("5Gi");
        let pp = PostParams {
            field_manager: Some("updater".into()),
            ..Default::default()
        };
        let updated = api.replace("x", &pp, &next).await.unwrap();
        let u = mf_entry(&updated.metadata, "updater").expect("updater entry");
        assert_eq!(u.operation.as_deref(), Some("Update"));
        assert!(owns(u, &["spec", "size"]), "{u:?}");
        let c = mf_entry(&updated.metadata, "creator").expect("creator entry");
        assert!(
            !owns(c, &["spec", "size"]) && owns(c, &["spec", "engine"]),
            "[{}] {c:?}",
            t.name
        );

        let applied = api
            .patch(
                "x",
                &PatchParams::apply("applier"),
                &Patch::Apply(json!({"apiVersion": "stable.example.com/v1", "kind": "Database", "metadata": {"name": "x", "labels": {"team": "a"}}})),
            )
            .await
            .unwrap();
        let a = mf_entry(&applied.metadata, "applier").expect("applier entry");
        assert_eq!(a.operation.as_deref(), Some("Apply"));
        assert!(owns(a, &["metadata", "labels", "team"]), "{a:?}");

        let status = api
            .patch_status(
                "x",
                &PatchParams {
                    field_manager: Some("operator".into()),
                    ..Default::default()
                },
                &Patch::Merge(json!({"status": {"phase": "Ready"}})),
            )
            .await
            .unwrap();
        let s = mf_entry(&status.metadata, "operator").expect("operator entry");
        assert_eq!(s.subresource.as_deref(), Some("status"));
        assert!(owns(s, &["status", "phase"]));
        t.cleanup().await;
    }
}

fn apply_db(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "stable.example.com/v1", "kind": "Database", "metadata": {"name": name}, "spec": spec})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_apply_merges_conflicts_forces_and_removes() {
    for t in common::targets().await {
        t.install_database_crd().await;
        let ns = t.namespace("ssa").await;
        let api = dbs(&t, &ns);
        let alice = PatchParams::apply("alice");
        let created = api
            .patch(
                "x",
                &alice,
                &Patch::Apply(apply_db(
                    "x",
                    json!({"engine": "PostgreSQL", "version": "15", "size": "1Gi", "server": "main"}),
                )),
            )
            .await
            .unwrap();
        assert_eq!(created.metadata.generation, Some(1), "[{}] apply creates", t.name);
        assert_eq!(created.data["spec"]["server"], "main");

        // bob wants a different size: conflict.
        let bob = PatchParams::apply("bob");
        let e = api_err(
            "conflict",
            api.patch("x", &bob, &Patch::Apply(apply_db("x", json!({"size": "2Gi"}))))
                .await,
        );
        assert_eq!(
            (e.code, e.reason.as_str()),
            (409, "Conflict"),
            "[{}] {e:?}",
            t.name
        );
        assert_eq!(
            e.message, "Apply failed with 1 conflict: conflict with \"alice\": .spec.size",
            "[{}]",
            t.name
        );
        let c = causes(&e);
        assert_eq!(
            c,
            vec![(
                "FieldManagerConflict".into(),
                ".spec.size".into(),
                "conflict with \"alice\"".into()
            )]
        );

        // Sharing a value is no conflict.
        api.patch("x", &bob, &Patch::Apply(apply_db("x", json!({"version": "15"}))))
            .await
            .unwrap();

        // force takes ownership.
        let forced = api
            .patch(
                "x",
                &bob.clone().force(),
                &Patch::Apply(apply_db("x", json!({"version": "15", "size": "2Gi"}))),
            )
            .await
            .unwrap();
        assert_eq!(forced.data["spec"]["size"], "2Gi");
        let b = mf_entry(&forced.metadata, "bob").expect("bob");
        assert!(owns(b, &["spec", "size"]));
        let a = mf_entry(&forced.metadata, "alice").expect("alice");
        assert!(
            !owns(a, &["spec", "size"]) && owns(a, &["spec", "server"]),
            "[{}] {a:?}",
            t.name
        );

        // alice stops applying server (hers alone: removed) and size (bob's now: kept).
        let out = api
            .patch(
                "x",
                &alice,
                &Patch::Apply(apply_db("x", json!({"engine": "PostgreSQL", "version": "15"}))),
            )
            .await
            .unwrap();
        assert!(
            out.data["spec"].get("server").is_none(),
            "[{}] {:?}",
            t.name,
            out.data
        );
        assert_eq!(out.data["spec"]["size"], "2Gi");

        // Conflicts with an Update manager name its API version.
        let mut cur = api.get("x").await.unwrap();
        cur.data["spec"]["version"] = json!("16");
        api.replace(
            "x",
            &PostParams {
                field_manager: Some("editor".into()),
                ..Default::default()
            },
            &cur,
        )
        .await
        .unwrap();
        let e = api_err(
            "update conflict",
            api.patch(
                "x",
                &alice,
                &Patch::Apply(apply_db("x", json!({"engine": "PostgreSQL", "version": "17"}))),
            )
            .await,
        );
        assert_eq!(e.code, 409);
        assert_eq!(
            e.message,
            "Apply failed with 1 conflict: conflict with \"editor\" using stable.example.com/v1: .spec.version",
            "[{}]",
            t.name
        );

        // Apply needs a field manager.
        let r = raw(
            &t.client,
            "PATCH",
            &db_path(&ns, Some("x")),
            "application/apply-patch+yaml",
            "{\"apiVersion\":\"stable.example.com/v1\",\"kind\":\"Database\",\"metadata\":{\"name\":\"x\"}}",
        )
        .await;
        assert_eq!(r.code, 422, "[{}] {:?}", t.name, r.body);
        assert_eq!(
            r.body["message"],
            "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch"
        );
        t.cleanup().await;
    }
}

// ------------------------------------------------------------------------------------------------
// patch types
// ------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merge_json_and_strategic_patches() {
    for t in common::targets().await {
        t.install_database_crd().await;
        let ns = t.namespace("patch").await;
        let api = dbs(&t, &ns);
        let mut spec = db_spec();
        spec["users"] = json!([{"username": "admin"}, {"username": "app"}]);
        api.create(&PostParams::default(), &database("x", spec))
            .await
            .unwrap();
        let pp = PatchParams::default();

        // JSON merge patch: add, then remove with null; lists are replaced.
        let o = api
            .patch(
                "x",
                &pp,
                &Patch::Merge(json!({"spec": {"server": "s1", "users": [{"username": "ops"}]}})),
            )
            .await
            .unwrap();
        assert_eq!(o.data["spec"]["server"], "s1");
        assert_eq!(o.data["spec"]["users"], json!([{"username": "ops"}]));
        let o = api
            .patch("x", &pp, &Patch::Merge(json!({"spec": {"server": null}})))
            .await
            .unwrap();
        assert!(o.data["spec"].get("server").is_none());

        // JSON patch (kube-rs pins another json-patch major, so these go raw).
        let path = db_path(&ns, Some("x"));
        let ops = json!([
            {"op": "test", "path": "/spec/size", "value": "1Gi"},
            {"op": "replace", "path": "/spec/size", "value": "3Gi"},
            {"op": "add", "path": "/spec/users/-", "value": {"username": "late"}}
        ]);
        let r = raw(
            &t.client,
            "PATCH",
            &path,
            "application/json-patch+json",
            &ops.to_string(),
        )
        .await;
        assert_eq!(r.code, 200, "[{}] {:?}", t.name, r.body);
        assert_eq!(r.body["spec"]["size"], "3Gi");
        assert_eq!(r.body["spec"]["users"][1]["username"], "late");
        let failing = json!([
            {"op": "test", "path": "/spec/size", "value": "9Gi"},
            {"op": "replace", "path": "/spec/size", "value": "5Gi"}
        ]);
        let r = raw(
            &t.client,
            "PATCH",
            &path,
            "application/json-patch+json",
            &failing.to_string(),
        )
        .await;
        assert_eq!(
            (r.code, r.body["reason"].as_str()),
            (422, Some("Invalid")),
            "[{}] {:?}",
            t.name,
            r.body
        );
        assert_eq!(
            r.body["message"],
            "the server rejected our request due to an error in our request"
        );
        assert_eq!(api.get("x").await.unwrap().data["spec"]["size"], "3Gi");

        // Strategic merge patch is not offered for custom resources.
        let e = api_err(
            "smp on a CR",
            api.patch("x", &pp, &Patch::Strategic(json!({"spec": {"size": "6Gi"}})))
                .await,
        );
        assert_eq!(
            (e.code, e.reason.as_str()),
            (415, "UnsupportedMediaType"),
            "[{}] {e:?}",
            t.name
        );
        assert_eq!(
            e.message,
            "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml"
        );

        // On a Deployment it merges containers by name.
        let deployments: Api<Deployment> = Api::namespaced(t.client.clone(), &ns);
        deployments
            .create(&PostParams::default(), &deployment("web"))
            .await
            .unwrap();
        let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "sidecar", "image": "busybox:1.37"}]}}}});
        let d = deployments
            .patch("web", &pp, &Patch::Strategic(patch))
            .await
            .unwrap();
        let containers = d.spec.unwrap().template.spec.unwrap().containers;
        let images: Vec<(String, Option<String>)> =
            containers.into_iter().map(|c| (c.name, c.image)).collect();
        assert_eq!(
            images,
            vec![
                ("app".into(), Some("nginx:1.27".into())),
                ("sidecar".into(), Some("busybox:1.37".into()))
            ],
            "[{}]",
            t.name
        );
        // A merge patch on the same list replaces it.
        let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "only", "image": "nginx:1.28"}]}}}});
        let d = deployments.patch("web", &pp, &Patch::Merge(patch)).await.unwrap();
        assert_eq!(d.spec.unwrap().template.spec.unwrap().containers.len(), 1);
        t.cleanup().await;
    }
}

// ------------------------------------------------------------------------------------------------
// dry run
// ------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_validates_and_defaults_but_stores_nothing() {
    for t in common::targets().await {
        t.install_database_crd().await;
        let ns = t.namespace("dry").await;
        let api = dbs(&t, &ns);
        let dry = PostParams {
            dry_run: true,
            ..Default::default()
        };
        let before = api
            .list(&ListParams::default())
            .await
            .unwrap()
            .metadata
            .resource_version
            .unwrap();

        let out = api.create(&dry, &database("x", db_spec())).await.unwrap();
        assert_eq!(
            out.data["spec"]["deletionPolicy"], "Retain",
            "[{}] defaulted in a dry run",
            t.name
        );
        assert!(out.metadata.uid.is_some() && out.metadata.creation_timestamp.is_some());
        assert_eq!(out.metadata.generation, Some(1));
        assert!(
            api.get_opt("x").await.unwrap().is_none(),
            "[{}] dry-run create stored nothing",
            t.name
        );
        let invalid = database("bad", json!({"engine": "Oracle", "version": "1", "size": "1Gi"}));
        let e = api_err("dry invalid", api.create(&dry, &invalid).await);
        assert_eq!(e.code, 422, "[{}] dry runs validate: {e:?}", t.name);

        let stored = api
            .create(&PostParams::default(), &database("x", db_spec()))
            .await
            .unwrap();
        assert!(rv_of(&stored.metadata) > before.parse::<u64>().unwrap());
        let e = api_err("dry duplicate", api.create(&dry, &database("x", db_spec())).await);
        assert_eq!(
            (e.code, e.reason.as_str()),
            (409, "AlreadyExists"),
            "[{}] {e:?}",
            t.name
        );

        let mut next = stored.clone();
        next.data["spec"]["size"] = json!("7Gi");
        let out = api.replace("x", &dry, &next).await.unwrap();
        assert_eq!(out.data["spec"]["size"], "7Gi");
        assert_eq!(out.metadata.generation, Some(2));
        let pdry = PatchParams {
            dry_run: true,
            ..Default::default()
        };
        let out = api
            .patch("x", &pdry, &Patch::Merge(json!({"spec": {"version": "16"}})))
            .await
            .unwrap();
        assert_eq!(out.data["spec"]["version"], "16");
        let e = api_err(
            "dry invalid patch",
            api.patch("x", &pdry, &Patch::Merge(json!({"spec": {"engine": "Oracle"}})))
                .await,
        );
        assert_eq!(e.code, 422);

        let ddry = DeleteParams {
            dry_run: true,
            ..Default::default()
        };
        api.delete("x", &ddry).await.unwrap();
        let now = api.get("x").await.unwrap();
        assert_eq!(
            now.metadata.resource_version, stored.metadata.resource_version,
            "[{}] nothing changed",
            t.name
        );
        assert_eq!(now.data["spec"], stored.data["spec"]);
        assert!(now.metadata.deletion_timestamp.is_none());
        t.cleanup().await;
    }
}

// ------------------------------------------------------------------------------------------------
// field validation
// ------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn field_validation_strict_warn_and_ignore() {
    for t in common::targets().await {
        t.install_database_crd().await;
        let ns = t.namespace("fv").await;
        let body = |name: &str| {
            json!({
                "apiVersion": "stable.example.com/v1",
                "kind": "Database",
                "metadata": {"name": name},
                "spec": {"engine": "PostgreSQL", "version": "15", "size": "1Gi", "foo": "bar"}
            })
            .to_string()
        };
        let path = db_path(&ns, None);

        let r = raw(
            &t.client,
            "POST",
            &format!("{path}?fieldValidation=Strict"),
            "application/json",
            &body("s"),
        )
        .await;
        assert_eq!(r.code, 400, "[{}] {:?}", t.name, r.body);
        assert_eq!(r.body["reason"], "BadRequest");
        assert_eq!(
            r.body["message"],
            "Database in version \"v1\" cannot be handled as a Database: strict decoding error: unknown field \"spec.foo\"",
            "[{}]",
            t.name
        );

        let r = raw(
            &t.client,
            "POST",
            &format!("{path}?fieldValidation=Warn"),
            "application/json",
            &body("w"),
        )
        .await;
        assert_eq!(r.code, 201, "[{}] {:?}", t.name, r.body);
        assert_eq!(
            r.warnings,
            vec![r#"299 - "unknown field \"spec.foo\"""#.to_string()],
            "[{}]",
            t.name
        );
        assert!(
            r.body["spec"].get("foo").is_none(),
            "[{}] pruned: {:?}",
            t.name,
            r.body
        );

        // Warn is the default.
        let r = raw(&t.client, "POST", &path, "application/json", &body("d")).await;
        assert_eq!(r.code, 201);
        assert_eq!(
            r.warnings,
            vec![r#"299 - "unknown field \"spec.foo\"""#.to_string()],
            "[{}]",
            t.name
        );

        let r = raw(
            &t.client,
            "POST",
            &format!("{path}?fieldValidation=Ignore"),
            "application/json",
            &body("i"),
        )
        .await;
        assert_eq!(r.code, 201, "[{}] {:?}", t.name, r.body);
        assert!(r.warnings.is_empty(), "[{}] {:?}", t.name, r.warnings);
        assert!(r.body["spec"].get("foo").is_none());
        let stored = dbs(&t, &ns).get("i").await.unwrap();
        assert!(
            stored.data["spec"].get("foo").is_none(),
            "[{}] unknown fields are never stored",
            t.name
        );

        // Duplicate fields.
        let dup = r#"{"apiVersion":"stable.example.com/v1","kind":"Database","metadata":{"name":"dup"},"spec":{"engine":"PostgreSQL","engine":"MySQL","version":"15","size":"1Gi"}}"#;
        let r = raw(
            &t.client,
            "POST",
            &format!("{path}?fieldValidation=Strict"),
            "application/json",
            dup,
        )
        .await;
        assert_eq!(r.code, 400, "[{}] {:?}", t.name, r.body);
        assert_eq!(
            r.body["message"],
            "Database in version \"v1\" cannot be handled as a Database: strict decoding error: duplicate field \"spec.engine\"",
            "[{}]",
            t.name
        );
        assert!(dbs(&t, &ns).get_opt("dup").await.unwrap().is_none());

        // Patches too: kube-rs exposes fieldValidation on PatchParams.
        let strict = PatchParams {
            field_validation: Some(ValidationDirective::Strict),
            ..Default::default()
        };
        let e = api_err(
            "strict patch",
            dbs(&t, &ns)
                .patch("i", &strict, &Patch::Merge(json!({"spec": {"bar": 1}})))
                .await,
        );
        // A patch result failing strict decoding is 422, the result named as an invalid `patch`.
        assert_eq!(
            (e.code, e.reason.as_str()),
            (422, "Invalid"),
            "[{}] {e:?}",
            t.name
        );
        assert!(
            e.message
                .starts_with(" \"\" is invalid: patch: Invalid value: \""),
            "[{}] {}",
            t.name,
            e.message
        );
        assert!(
            e.message
                .ends_with("\": strict decoding error: unknown field \"spec.bar\""),
            "[{}] {}",
            t.name,
            e.message
        );
        assert_eq!(
            causes(&e).first().map(|c| (c.0.as_str(), c.1.as_str())),
            Some(("FieldValueInvalid", "patch"))
        );
        let r = raw(
            &t.client,
            "PATCH",
            &db_path(&ns, Some("i")),
            "application/merge-patch+json",
            r#"{"spec":{"bar":1}}"#,
        )
        .await;
        assert_eq!(r.code, 200, "[{}] {:?}", t.name, r.body);
        assert_eq!(
            r.warnings,
            vec![r#"299 - "unknown field \"spec.bar\"""#.to_string()],
            "[{}]",
            t.name
        );
        t.cleanup().await;
    }
}

// ------------------------------------------------------------------------------------------------
// schema: defaulting, pruning, validation
// ------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_defaults_prunes_and_validates() {
    for t in common::targets().await {
        t.install_database_crd().await;
        let ns = t.namespace("schema").await;
        let api = dbs(&t, &ns);
        let mut spec = db_spec();
        spec["extra"] = json!({"nested": true});
        let mut obj = database("x", spec);
        obj.data["unknownTop"] = json!(1);
        let created = api.create(&PostParams::default(), &obj).await.unwrap();
        assert_eq!(
            created.data["spec"]["deletionPolicy"], "Retain",
            "[{}] defaulted",
            t.name
        );
        assert!(
            created.data["spec"].get("extra").is_none(),
            "[{}] pruned: {:?}",
            t.name,
            created.data
        );
        assert!(
            created.data.get("unknownTop").is_none(),
            "[{}] pruned: {:?}",
            t.name,
            created.data
        );
        let got = api.get("x").await.unwrap();
        assert_eq!(got.data["spec"]["deletionPolicy"], "Retain");

        let bad = database(
            "bad",
            json!({
                "engine": "Oracle",
                "size": "ten gigs",
                "users": [{"username": ""}, {"username": "a".repeat(64)}, {"passwordSecret": "s"}]
            }),
        );
        let e = api_err("invalid", api.create(&PostParams::default(), &bad).await);
        assert_eq!(
            (e.code, e.reason.as_str()),
            (422, "Invalid"),
            "[{}] {e:?}",
            t.name
        );
        assert!(
            e.message
                .starts_with("Database.stable.example.com \"bad\" is invalid: ["),
            "{}",
            e.message
        );
        let c = causes(&e);
        let find = |field: &str| {
            c.iter()
                .find(|(_, f, _)| f == field)
                .unwrap_or_else(|| panic!("[{}] no cause for {field} in {c:?}", t.name))
                .clone()
        };
        assert_eq!(
            find("spec.version"),
            (
                "FieldValueRequired".into(),
                "spec.version".into(),
                "Required value".into()
            )
        );
        assert_eq!(
            find("spec.engine"),
            (
                "FieldValueNotSupported".into(),
                "spec.engine".into(),
                "Unsupported value: \"Oracle\": supported values: \"PostgreSQL\", \"MySQL\"".into()
            )
        );
        assert_eq!(
            find("spec.size"),
            (
                "FieldValueInvalid".into(),
                "spec.size".into(),
                r#"Invalid value: "ten gigs": spec.size in body should match '^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$'"#.into()
            )
        );
        assert_eq!(
            find("spec.users[0].username"),
            (
                "FieldValueInvalid".into(),
                "spec.users[0].username".into(),
                "Invalid value: \"\": spec.users[0].username in body should be at least 1 chars long".into()
            )
        );
        assert_eq!(find("spec.users[1].username").0, "FieldValueTooLong");
        assert_eq!(
            find("spec.users[2].username"),
            (
                "FieldValueRequired".into(),
                "spec.users[2].username".into(),
                "Required value".into()
            )
        );
        assert!(api.get_opt("bad").await.unwrap().is_none());

        // Updates are validated too.
        let e = api_err(
            "invalid update",
            api.patch(
                "x",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"deletionPolicy": "Keep"}})),
            )
            .await,
        );
        assert_eq!(e.code, 422);
        assert_eq!(
            e.message,
            "Database.stable.example.com \"x\" is invalid: spec.deletionPolicy: Unsupported value: \"Keep\": supported values: \"Retain\", \"Delete\""
        );
        t.cleanup().await;
    }
}

// ------------------------------------------------------------------------------------------------
// finalizers and delete preconditions
// ------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finalizers_hold_deletion_and_preconditions_guard_it() {
    for t in common::targets().await {
        t.install_database_crd().await;
        let ns = t.namespace("fin").await;
        let api = dbs(&t, &ns);
        let mut obj = database("x", db_spec());
        obj.metadata.finalizers = Some(vec!["example.com/a".into()]);
        api.create(&PostParams::default(), &obj).await.unwrap();

        let out = api.delete("x", &DeleteParams::default()).await.unwrap();
        let deleting = out.left().expect("the object, still there");
        assert!(deleting.metadata.deletion_timestamp.is_some(), "[{}]", t.name);
        let got = api.get("x").await.unwrap();
        assert!(got.metadata.deletion_timestamp.is_some());
        assert_eq!(got.metadata.finalizers, Some(vec!["example.com/a".to_string()]));
        assert_eq!(
            got.metadata.generation,
            Some(2),
            "[{}] deletion bumps generation",
            t.name
        );

        // No new finalizers once deleting.
        let add = json!({"metadata": {"finalizers": ["example.com/a", "example.com/b"]}});
        let e = api_err(
            "add finalizer",
            api.patch("x", &PatchParams::default(), &Patch::Merge(add)).await,
        );
        assert_eq!(
            (e.code, e.reason.as_str()),
            (422, "Invalid"),
            "[{}] {e:?}",
            t.name
        );
        assert_eq!(
            e.message,
            "Database.stable.example.com \"x\" is invalid: metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers []string{\"example.com/b\"}"
        );
        // Other writes still work while deleting.
        api.patch(
            "x",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"l": "v"}}})),
        )
        .await
        .unwrap();

        // The last finalizer going deletes it.
        api.patch(
            "x",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
        assert!(
            api.get_opt("x").await.unwrap().is_none(),
            "[{}] gone with its last finalizer",
            t.name
        );

        // Preconditions.
        let y = api
            .create(&PostParams::default(), &database("y", db_spec()))
            .await
            .unwrap();
        let uid = y.metadata.uid.clone().unwrap();
        let rv = y.metadata.resource_version.clone().unwrap();
        let wrong_uid = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some("00000000-0000-0000-0000-000000000000".into()),
                resource_version: None,
            }),
            ..Default::default()
        };
        let e = api_err("uid precondition", api.delete("y", &wrong_uid).await);
        assert_eq!(
            (e.code, e.reason.as_str()),
            (409, "Conflict"),
            "[{}] {e:?}",
            t.name
        );
        assert_eq!(
            e.message,
            format!(
                "Operation cannot be fulfilled on Database.stable.example.com \"y\": the UID in the precondition (00000000-0000-0000-0000-000000000000) does not match the UID in record ({uid}). The object might have been deleted and then recreated"
            )
        );
        let wrong_rv = DeleteParams {
            preconditions: Some(Preconditions {
                uid: None,
                resource_version: Some("1".into()),
            }),
            ..Default::default()
        };
        let e = api_err("rv precondition", api.delete("y", &wrong_rv).await);
        assert_eq!(
            (e.code, e.reason.as_str()),
            (409, "Conflict"),
            "[{}] {e:?}",
            t.name
        );
        assert_eq!(
            e.message,
            format!(
                "Operation cannot be fulfilled on Database.stable.example.com \"y\": the ResourceVersion in the precondition (1) does not match the ResourceVersion in record ({rv}). The object might have been modified"
            )
        );
        assert!(api.get_opt("y").await.unwrap().is_some());
        let right = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(uid),
                resource_version: Some(rv),
            }),
            ..Default::default()
        };
        api.delete("y", &right).await.unwrap();
        assert!(api.get_opt("y").await.unwrap().is_none());
        let e = api_err("delete missing", api.delete("y", &DeleteParams::default()).await);
        assert_eq!(
            (e.code, e.message.as_str()),
            (404, "databases.stable.example.com \"y\" not found")
        );
        t.cleanup().await;
    }
}

// ------------------------------------------------------------------------------------------------
// garbage collection
// ------------------------------------------------------------------------------------------------

fn owned_by(name: &str, owners: &[&ConfigMap], block: bool) -> ConfigMap {
    let mut cm = configmap(name, &[]);
    cm.metadata.owner_references = Some(
        owners
            .iter()
            .map(
                |o| k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                    api_version: "v1".into(),
                    kind: "ConfigMap".into(),
                    name: o.metadata.name.clone().unwrap(),
                    uid: o.metadata.uid.clone().unwrap(),
                    block_owner_deletion: block.then_some(true),
                    controller: None,
                },
            )
            .collect(),
    );
    cm
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_collection_background_foreground_orphan_and_shared_owners() {
    for t in common::targets().await {
        let ns = t.namespace("gc").await;
        let cms: Api<ConfigMap> = Api::namespaced(t.client.clone(), &ns);
        let pp = PostParams::default();
        let mk = |n: &str| configmap(n, &[]);

        // Background (the default).
        let owner = cms.create(&pp, &mk("owner")).await.unwrap();
        cms.create(&pp, &owned_by("dep", &[&owner], false)).await.unwrap();
        cms.delete("owner", &DeleteParams::default()).await.unwrap();
        gone(&cms, "dep", 60, "background GC of the dependent").await;

        // Foreground: the owner waits, with the foregroundDeletion finalizer, for its dependents.
        let owner = cms.create(&pp, &mk("fg-owner")).await.unwrap();
        let mut dep = owned_by("fg-dep", &[&owner], true);
        dep.metadata.finalizers = Some(vec!["example.com/hold".into()]);
        cms.create(&pp, &dep).await.unwrap();
        cms.delete("fg-owner", &DeleteParams::foreground()).await.unwrap();
        let o = cms.get("fg-owner").await.unwrap();
        assert!(o.metadata.deletion_timestamp.is_some(), "[{}]", t.name);
        assert!(
            o.metadata
                .finalizers
                .unwrap_or_default()
                .contains(&"foregroundDeletion".to_string())
        );
        eventually(60, "the dependent being deleted", || async {
            cms.get("fg-dep")
                .await
                .unwrap()
                .metadata
                .deletion_timestamp
                .is_some()
                .then_some(())
        })
        .await;
        assert!(
            cms.get_opt("fg-owner").await.unwrap().is_some(),
            "[{}] owner waits for its dependent",
            t.name
        );
        cms.patch(
            "fg-dep",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
        gone(&cms, "fg-dep", 60, "the dependent").await;
        gone(&cms, "fg-owner", 60, "the foreground owner after its dependents").await;

        // Orphan: dependents lose the reference and stay.
        let owner = cms.create(&pp, &mk("or-owner")).await.unwrap();
        cms.create(&pp, &owned_by("or-dep", &[&owner], false))
            .await
            .unwrap();
        let orphan = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Orphan),
            ..Default::default()
        };
        cms.delete("or-owner", &orphan).await.unwrap();
        gone(&cms, "or-owner", 60, "the orphaning owner").await;
        eventually(60, "the orphan without owner references", || async {
            let d = cms.get("or-dep").await.unwrap();
            d.metadata
                .owner_references
                .as_ref()
                .is_none_or(Vec::is_empty)
                .then_some(())
        })
        .await;

        // Two owners: losing one keeps the dependent (with the other reference only).
        let a = cms.create(&pp, &mk("owner-a")).await.unwrap();
        let b = cms.create(&pp, &mk("owner-b")).await.unwrap();
        cms.create(&pp, &owned_by("shared", &[&a, &b], false))
            .await
            .unwrap();
        cms.delete("owner-a", &DeleteParams::default()).await.unwrap();
        eventually(60, "the dangling reference removed", || async {
            let d = cms.get("shared").await.unwrap();
            let refs: Vec<String> = d
                .metadata
                .owner_references
                .unwrap_or_default()
                .into_iter()
                .map(|r| r.name)
                .collect();
            (refs == ["owner-b"]).then_some(())
        })
        .await;
        cms.delete("owner-b", &DeleteParams::default()).await.unwrap();
        gone(&cms, "shared", 60, "the dependent of both owners").await;

        // An update that points an object at an owner already gone makes it garbage, as a
        // create would (kube's graph builder checks changed owner references).
        let late = cms.create(&pp, &mk("late-owner")).await.unwrap();
        cms.delete("late-owner", &DeleteParams::default()).await.unwrap();
        gone(&cms, "late-owner", 60, "the late owner").await;
        cms.create(&pp, &mk("re-owned")).await.unwrap();
        let dangling = owned_by("re-owned", &[&late], false);
        cms.patch(
            "re-owned",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"ownerReferences": dangling.metadata.owner_references}})),
        )
        .await
        .unwrap();
        gone(&cms, "re-owned", 60, "the object re-pointed at a gone owner").await;
        t.cleanup().await;
    }
}

// ------------------------------------------------------------------------------------------------
// namespaces
// ------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_deletion_empties_it_and_refuses_new_content() {
    for t in common::targets().await {
        t.install_database_crd().await;
        let ns = t.namespace("nsdel").await;
        let namespaces: Api<Namespace> = Api::all(t.client.clone());
        let sas: Api<ServiceAccount> = Api::namespaced(t.client.clone(), &ns);
        eventually(60, "the default ServiceAccount", || async {
            sas.get_opt("default").await.unwrap()
        })
        .await;

        let n = namespaces.get(&ns).await.unwrap();
        assert_eq!(n.status.and_then(|s| s.phase).as_deref(), Some("Active"));
        assert_eq!(
            n.spec.and_then(|s| s.finalizers),
            Some(vec!["kubernetes".to_string()])
        );

        let cms: Api<ConfigMap> = Api::namespaced(t.client.clone(), &ns);
        cms.create(&PostParams::default(), &configmap("c", &[]))
            .await
            .unwrap();
        let api = dbs(&t, &ns);
        api.create(&PostParams::default(), &database("plain", db_spec()))
            .await
            .unwrap();
        let mut held = database("held", db_spec());
        held.metadata.finalizers = Some(vec!["example.com/hold".into()]);
        api.create(&PostParams::default(), &held).await.unwrap();

        namespaces.delete(&ns, &DeleteParams::default()).await.unwrap();
        let n = namespaces.get(&ns).await.unwrap();
        assert!(n.metadata.deletion_timestamp.is_some());
        assert_eq!(
            n.status.and_then(|s| s.phase).as_deref(),
            Some("Terminating"),
            "[{}]",
            t.name
        );

        // Everything inside goes (custom resources included); the held one waits for its finalizer.
        gone(&cms, "c", 60, "the ConfigMap in the terminating namespace").await;
        gone(&api, "plain", 60, "the Database in the terminating namespace").await;
        eventually(60, "the held Database marked for deletion", || async {
            api.get("held")
                .await
                .unwrap()
                .metadata
                .deletion_timestamp
                .is_some()
                .then_some(())
        })
        .await;

        let e = api_err(
            "create while terminating",
            cms.create(&PostParams::default(), &configmap("late", &[])).await,
        );
        assert_eq!(
            (e.code, e.reason.as_str()),
            (403, "Forbidden"),
            "[{}] {e:?}",
            t.name
        );
        assert_eq!(
            e.message,
            format!(
                "configmaps \"late\" is forbidden: unable to create new content in namespace {ns} because it is being terminated"
            )
        );
        let c = causes(&e);
        assert_eq!(
            c,
            vec![(
                "NamespaceTerminating".into(),
                "metadata.namespace".into(),
                format!("namespace {ns} is being terminated")
            )]
        );
        assert!(
            namespaces.get_opt(&ns).await.unwrap().is_some(),
            "[{}] still terminating",
            t.name
        );

        api.patch(
            "held",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
        gone(&namespaces, &ns, 120, "the namespace once empty").await;
        t.cleanup().await;
    }
}

// ------------------------------------------------------------------------------------------------
// CRD lifecycle
// ------------------------------------------------------------------------------------------------

fn widget_crd(name: &str) -> CustomResourceDefinition {
    serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": name},
        "spec": {
            "group": "lifecycle.crwatch.example.com",
            "names": {"kind": "Widget", "plural": "widgets", "singular": "widget", "shortNames": ["wdg"]},
            "scope": "Namespaced",
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "properties": {"color": {"type": "string"}}}
                }}}
            }]
        }
    }))
    .expect("a CRD")
}

fn condition(crd: &CustomResourceDefinition, kind: &str) -> Option<String> {
    crd.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind)
        .map(|c| c.status.clone())
}

async fn served_resources(
    client: &kube::Client,
    gv: &str,
) -> Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::APIResource> {
    match client.list_api_group_resources(gv).await {
        Ok(list) => list.resources,
        Err(kube::Error::Api(s)) if s.code == 404 => vec![],
        Err(e) => panic!("discovery of {gv}: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crd_lifecycle_establishes_serves_and_cleans_up() {
    for t in common::targets().await {
        t.install_database_crd().await;
        let crds: Api<CustomResourceDefinition> = Api::all(t.client.clone());

        // The Database CRD: conditions, discovery with its short name.
        let db_crd = crds.get("databases.stable.example.com").await.unwrap();
        assert_eq!(
            condition(&db_crd, "Established").as_deref(),
            Some("True"),
            "[{}]",
            t.name
        );
        assert_eq!(
            condition(&db_crd, "NamesAccepted").as_deref(),
            Some("True"),
            "[{}]",
            t.name
        );
        let resources = served_resources(&t.client, "stable.example.com/v1").await;
        let r = resources
            .iter()
            .find(|r| r.name == "databases")
            .expect("databases served");
        assert_eq!(
            r.short_names.as_deref(),
            Some(&["db".to_string()][..]),
            "[{}]",
            t.name
        );
        assert_eq!(r.kind, "Database");
        assert!(r.namespaced);
        assert!(
            resources.iter().any(|r| r.name == "databases/status"),
            "[{}] status subresource listed",
            t.name
        );
        let discovery = kube::Discovery::new(t.client.clone())
            .filter(&[DB_GROUP])
            .run()
            .await
            .unwrap();
        let (ar, caps) = discovery
            .resolve_gvk(&GroupVersionKind::gvk(DB_GROUP, "v1", "Database"))
            .expect("kube discovery finds Database");
        assert_eq!(ar.plural, "databases");
        assert!(
            caps.subresources.iter().any(|(s, _)| s.plural == "status"),
            "[{}] {:?}",
            t.name,
            caps.subresources
        );

        // A new CRD: established, served, then deleted with its objects.
        let name = "widgets.lifecycle.crwatch.example.com";
        let _ = crds.delete(name, &DeleteParams::default()).await;
        gone(&crds, name, 60, "an old widgets CRD").await;
        crds.create(&PostParams::default(), &widget_crd(name))
            .await
            .unwrap();
        eventually(30, "the widgets CRD established", || async {
            let c = crds.get(name).await.unwrap();
            (condition(&c, "Established").as_deref() == Some("True")
                && condition(&c, "NamesAccepted").as_deref() == Some("True"))
            .then_some(())
        })
        .await;
        let gvk = GroupVersionKind::gvk("lifecycle.crwatch.example.com", "v1", "Widget");
        let war = ApiResource::from_gvk_with_plural(&gvk, "widgets");
        let ns = t.namespace("crd").await;
        let widgets: Api<DynamicObject> = Api::namespaced_with(t.client.clone(), &ns, &war);
        let w: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "lifecycle.crwatch.example.com/v1", "kind": "Widget",
            "metadata": {"name": "w"}, "spec": {"color": "blue"}
        }))
        .unwrap();
        // Serving may lag establishment by a moment on a real cluster.
        eventually(30, "widgets served", || async {
            widgets.create(&PostParams::default(), &w).await.ok()
        })
        .await;
        assert!(
            served_resources(&t.client, "lifecycle.crwatch.example.com/v1")
                .await
                .iter()
                .any(|r| r.name == "widgets")
        );

        crds.delete(name, &DeleteParams::default()).await.unwrap();
        gone(&crds, name, 60, "the widgets CRD").await;
        eventually(60, "widgets gone from discovery", || async {
            served_resources(&t.client, "lifecycle.crwatch.example.com/v1")
                .await
                .iter()
                .all(|r| r.name != "widgets")
                .then_some(())
        })
        .await;
        let e = api_err("widgets after the CRD", widgets.get("w").await);
        assert_eq!(e.code, 404, "[{}] {e:?}", t.name);
        // Recreating the CRD finds no old widgets.
        crds.create(&PostParams::default(), &widget_crd(name))
            .await
            .unwrap();
        let again = eventually(30, "widgets served again", || async {
            widgets.list(&ListParams::default()).await.ok()
        })
        .await;
        assert!(
            again.items.is_empty(),
            "[{}] the CRD's objects were deleted with it",
            t.name
        );
        crds.delete(name, &DeleteParams::default()).await.unwrap();

        // The name must be plural.group.
        let mut bad = widget_crd("wrong.example.com");
        bad.spec.group = "lifecycle.crwatch.example.com".into();
        let e = api_err("bad CRD name", crds.create(&PostParams::default(), &bad).await);
        assert_eq!(
            (e.code, e.reason.as_str()),
            (422, "Invalid"),
            "[{}] {e:?}",
            t.name
        );
        assert_eq!(
            e.message,
            "CustomResourceDefinition.apiextensions.k8s.io \"wrong.example.com\" is invalid: metadata.name: Invalid value: \"wrong.example.com\": must be spec.names.plural+\".\"+spec.group"
        );
        t.cleanup().await;
    }
}

// ------------------------------------------------------------------------------------------------
// deletecollection
// ------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_collection_honours_the_label_selector() {
    for t in common::targets().await {
        t.install_database_crd().await;
        let ns = t.namespace("dc").await;
        let cms: Api<ConfigMap> = Api::namespaced(t.client.clone(), &ns);
        for (n, app) in [("a", "x"), ("b", "x"), ("c", "y")] {
            let mut cm = configmap(n, &[]);
            cm.metadata.labels = Some(BTreeMap::from([("app".to_string(), app.to_string())]));
            cms.create(&PostParams::default(), &cm).await.unwrap();
        }
        cms.delete_collection(&DeleteParams::default(), &ListParams::default().labels("app=x"))
            .await
            .unwrap();
        let left: Vec<String> = cms
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter_map(|c| c.metadata.name)
            .filter(|n| n != "kube-root-ca.crt")
            .collect();
        assert_eq!(left, vec!["c".to_string()], "[{}]", t.name);

        // Custom resources too.
        let api = dbs(&t, &ns);
        for (n, tier) in [("d1", "gold"), ("d2", "gold"), ("d3", "silver")] {
            let mut d = database(n, db_spec());
            d.metadata.labels = Some(BTreeMap::from([("tier".to_string(), tier.to_string())]));
            api.create(&PostParams::default(), &d).await.unwrap();
        }
        api.delete_collection(
            &DeleteParams::default(),
            &ListParams::default().labels("tier in (gold)"),
        )
        .await
        .unwrap();
        let left: Vec<String> = api
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter_map(|c| c.metadata.name)
            .collect();
        assert_eq!(left, vec!["d3".to_string()], "[{}]", t.name);
        t.cleanup().await;
    }
}

// ------------------------------------------------------------------------------------------------
// built-in kinds
// ------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builtin_kinds_round_trip() {
    for t in common::targets().await {
        let ns = t.namespace("kinds").await;
        let pp = PostParams::default();
        let c = &t.client;

        // ConfigMap with binaryData.
        let cms: Api<ConfigMap> = Api::namespaced(c.clone(), &ns);
        let mut cm = configmap("cm", &[("k", "v")]);
        cm.binary_data = Some(BTreeMap::from([(
            "bin".to_string(),
            k8s_openapi::ByteString(vec![0, 1, 2, 255]),
        )]));
        cms.create(&pp, &cm).await.unwrap();
        let got = cms.get("cm").await.unwrap();
        assert_eq!(got.data.unwrap()["k"], "v");
        assert_eq!(got.binary_data.unwrap()["bin"].0, vec![0, 1, 2, 255]);

        // Secret: stringData folds into data; type defaults to Opaque.
        let secrets: Api<Secret> = Api::namespaced(c.clone(), &ns);
        let mut s = Secret::default();
        s.metadata.name = Some("s".into());
        s.string_data = Some(BTreeMap::from([("password".to_string(), "hunter2".to_string())]));
        s.data = Some(BTreeMap::from([(
            "user".to_string(),
            k8s_openapi::ByteString(b"admin".to_vec()),
        )]));
        let created = secrets.create(&pp, &s).await.unwrap();
        assert!(
            created.string_data.is_none(),
            "[{}] stringData is write-only",
            t.name
        );
        assert_eq!(created.type_.as_deref(), Some("Opaque"));
        let got = secrets.get("s").await.unwrap();
        let data = got.data.unwrap();
        assert_eq!(data["password"].0, b"hunter2");
        assert_eq!(data["user"].0, b"admin");
        let r = raw(
            c,
            "GET",
            &format!("/api/v1/namespaces/{ns}/secrets/s"),
            "application/json",
            "",
        )
        .await;
        assert_eq!(
            r.body["data"]["password"], "aHVudGVyMg==",
            "[{}] base64 on the wire",
            t.name
        );
        assert!(r.body.get("stringData").is_none());

        // ServiceAccount.
        let sas: Api<ServiceAccount> = Api::namespaced(c.clone(), &ns);
        let mut sa = ServiceAccount::default();
        sa.metadata.name = Some("robot".into());
        sa.automount_service_account_token = Some(false);
        sas.create(&pp, &sa).await.unwrap();
        assert_eq!(
            sas.get("robot").await.unwrap().automount_service_account_token,
            Some(false)
        );

        // core/v1 Event.
        let events: Api<Event> = Api::namespaced(c.clone(), &ns);
        let ev: Event = serde_json::from_value(json!({
            "metadata": {"name": "ev1"},
            "involvedObject": {"kind": "ConfigMap", "namespace": ns, "name": "cm", "apiVersion": "v1"},
            "reason": "Tested",
            "message": "a message",
            "type": "Normal",
            "count": 1,
            "source": {"component": "conformance"},
            "firstTimestamp": "2025-01-01T00:00:00Z",
            "lastTimestamp": "2025-01-01T00:00:00Z"
        }))
        .unwrap();
        events.create(&pp, &ev).await.unwrap();
        let got = events.get("ev1").await.unwrap();
        assert_eq!(got.reason.as_deref(), Some("Tested"));
        assert_eq!(got.involved_object.name.as_deref(), Some("cm"));
        assert_eq!(got.count, Some(1));
        let listed = events
            .list(&ListParams::default().fields("involvedObject.name=cm,reason=Tested"))
            .await
            .unwrap();
        assert_eq!(listed.items.len(), 1, "[{}] field selectors on events", t.name);

        // events.k8s.io/v1 Event.
        let ev2s: Api<EventsV1Event> = Api::namespaced(c.clone(), &ns);
        let ev2: EventsV1Event = serde_json::from_value(json!({
            "metadata": {"name": "ev2"},
            "eventTime": "2025-01-01T00:00:00.000000Z",
            "reportingController": "example.com/conformance",
            "reportingInstance": "conformance-1",
            "action": "Testing",
            "reason": "Tested",
            "regarding": {"kind": "ConfigMap", "namespace": ns, "name": "cm", "apiVersion": "v1"},
            "note": "a note",
            "type": "Normal"
        }))
        .unwrap();
        ev2s.create(&pp, &ev2).await.unwrap();
        let got = ev2s.get("ev2").await.unwrap();
        assert_eq!(got.note.as_deref(), Some("a note"));
        assert_eq!(
            got.reporting_controller.as_deref(),
            Some("example.com/conformance")
        );
        assert_eq!(got.regarding.and_then(|r| r.name).as_deref(), Some("cm"));

        // Lease.
        let leases: Api<Lease> = Api::namespaced(c.clone(), &ns);
        let lease: Lease = serde_json::from_value(json!({
            "metadata": {"name": "leader"},
            "spec": {"holderIdentity": "pod-a", "leaseDurationSeconds": 15, "renewTime": "2025-01-01T00:00:00.123456Z", "leaseTransitions": 2}
        }))
        .unwrap();
        leases.create(&pp, &lease).await.unwrap();
        let got = leases.get("leader").await.unwrap();
        let spec = got.spec.unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("pod-a"));
        assert_eq!(spec.lease_duration_seconds, Some(15));
        assert_eq!(spec.lease_transitions, Some(2));
        let r = raw(
            c,
            "GET",
            &format!("/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/leader"),
            "application/json",
            "",
        )
        .await;
        assert_eq!(
            r.body["spec"]["renewTime"], "2025-01-01T00:00:00.123456Z",
            "[{}] MicroTime kept",
            t.name
        );

        // Deployment: replicas default to 1; the scale subresource reads and writes them.
        let deployments: Api<Deployment> = Api::namespaced(c.clone(), &ns);
        let d = deployments.create(&pp, &deployment("web")).await.unwrap();
        assert_eq!(
            d.spec.as_ref().and_then(|s| s.replicas),
            Some(1),
            "[{}] replicas default",
            t.name
        );
        let scale = deployments.get_scale("web").await.unwrap();
        assert_eq!(scale.spec.as_ref().and_then(|s| s.replicas), Some(1));
        assert_eq!(scale.metadata.name.as_deref(), Some("web"));
        let new_scale = Scale {
            metadata: scale.metadata.clone(),
            spec: Some(ScaleSpec { replicas: Some(3) }),
            status: None,
        };
        // Without a resourceVersion: the deployment controller (a real cluster's, or the
        // workload simulator) may have written the status since the read.
        let unconditional = Scale {
            metadata: kube::api::ObjectMeta {
                resource_version: None,
                ..scale.metadata.clone()
            },
            ..new_scale.clone()
        };
        let out = deployments
            .replace_scale("web", &pp, &unconditional)
            .await
            .unwrap();
        assert_eq!(out.spec.and_then(|s| s.replicas), Some(3));
        let d = deployments.get("web").await.unwrap();
        assert_eq!(
            d.spec.and_then(|s| s.replicas),
            Some(3),
            "[{}] scale wrote spec.replicas",
            t.name
        );
        assert_eq!(d.metadata.generation, Some(2));
        // A stale scale write conflicts.
        let e = api_err(
            "stale scale",
            deployments.replace_scale("web", &pp, &new_scale).await,
        );
        assert_eq!(e.code, 409, "[{}] {e:?}", t.name);
        t.cleanup().await;
    }
}

// ------------------------------------------------------------------------------------------------
// authentication
// ------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_is_unauthorized() {
    let t = common::local().await;
    let server = t.server.as_ref().expect("in-process server").server();
    let yaml = server.kubeconfig_yaml().replace(server.token(), "not-the-token");
    let kc = kube::config::Kubeconfig::from_yaml(&yaml).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    let bad = kube::Client::try_from(cfg).unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(bad.clone(), "default");
    let e = api_err("wrong token", cms.list(&ListParams::default()).await);
    assert_eq!(
        (e.code, e.reason.as_str(), e.message.as_str()),
        (401, "Unauthorized", "Unauthorized")
    );
    assert!(e.is_failure());
    let r = raw(&bad, "GET", "/api/v1/namespaces", "application/json", "").await;
    assert_eq!(r.code, 401);
    assert_eq!(r.body["kind"], "Status");
    assert_eq!(r.body["reason"], "Unauthorized");
    // The right token works.
    Api::<ConfigMap>::namespaced(t.client.clone(), "default")
        .list(&ListParams::default())
        .await
        .unwrap();
}
