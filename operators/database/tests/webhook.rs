//! The admission webhook end to end against `crwatch-apiserver`: the CRD installed, the webhook
//! serving HTTPS on a loopback port with generated certificates, the generated webhook
//! configurations applied (URL mode, as the in-process server cannot reach Services), and
//! requests from kube-rs and `kubectl` going through it. Also the HTTPS server on its own
//! (malformed requests, what the CRD schema would catch first, HTTP/2, shutdown), and the
//! manifests in `deploy/`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crwatch_apiserver::TestServer;
use database_operator::certs::{self, Certs};
use database_operator::types::{Database, DatabaseEngine, DeletionPolicy};
use database_operator::webhook::{self, ServiceRef, WebhookServer, WebhookTarget};
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// How long any awaited condition may take.
const PATIENCE: Duration = Duration::from_secs(20);

/// An API server with the CRD installed and the webhook registered and running.
struct Env {
    server: TestServer,
    webhook: Option<WebhookServer>,
    cancel: CancellationToken,
    certs: Certs,
    /// `https://127.0.0.1:PORT`
    base: String,
    raw: Api<DynamicObject>,
    typed: Api<Database>,
}

impl Env {
    async fn start() -> Env {
        let server = TestServer::start().await.unwrap();
        let crd: CustomResourceDefinition =
            serde_saphyr::from_str(&database_operator::crd::crd_yaml()).unwrap();
        Api::<CustomResourceDefinition>::all(server.client())
            .create(&PostParams::default(), &crd)
            .await
            .unwrap();
        let typed: Api<Database> = Api::namespaced(server.client(), "default");
        within("the CRD is served", async {
            while typed.list(&Default::default()).await.is_err() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;

        let certs = certs::generate(&[]).unwrap();
        let cancel = CancellationToken::new();
        let served = webhook::serve(([127, 0, 0, 1], 0).into(), &certs, cancel.clone())
            .await
            .unwrap();
        let base = format!("https://{}", served.local_addr());
        let yaml = webhook::webhook_configurations(
            certs.ca_pem.as_deref().unwrap(),
            &WebhookTarget::Url(base.clone()),
        )
        .unwrap();
        register(&server, &yaml).await;

        let raw = Api::namespaced_with(server.client(), "default", &ApiResource::erase::<Database>(&()));
        Env {
            server,
            webhook: Some(served),
            cancel,
            certs,
            base,
            raw,
            typed,
        }
    }

    /// Create a Database from JSON; `Err` is the API server's `Status`.
    async fn create(&self, name: &str, spec: Value) -> Result<DynamicObject, Box<kube::core::Status>> {
        let object = json!({
            "apiVersion": "stable.example.com/v1", "kind": "Database",
            "metadata": {"name": name, "namespace": "default"}, "spec": spec,
        });
        match self
            .raw
            .create(&PostParams::default(), &serde_json::from_value(object).unwrap())
            .await
        {
            Ok(created) => Ok(created),
            Err(kube::Error::Api(status)) => Err(status),
            Err(other) => panic!("creating {name}: {other}"),
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Create the configurations in `yaml` (a Mutating and a Validating one) as `kubectl apply`
/// would.
async fn register(server: &TestServer, yaml: &str) {
    let docs: Vec<Value> = serde_saphyr::from_multiple(yaml).unwrap();
    assert_eq!(docs.len(), 2, "{yaml}");
    for doc in docs {
        match doc["kind"].as_str() {
            Some("MutatingWebhookConfiguration") => {
                let config: MutatingWebhookConfiguration = serde_json::from_value(doc).unwrap();
                Api::<MutatingWebhookConfiguration>::all(server.client())
                    .create(&PostParams::default(), &config)
                    .await
                    .unwrap();
            }
            Some("ValidatingWebhookConfiguration") => {
                let config: ValidatingWebhookConfiguration = serde_json::from_value(doc).unwrap();
                Api::<ValidatingWebhookConfiguration>::all(server.client())
                    .create(&PostParams::default(), &config)
                    .await
                    .unwrap();
            }
            other => panic!("unexpected kind {other:?} in the webhook configurations"),
        }
    }
}

async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {PATIENCE:?}"))
}

fn spec(users: &[&str]) -> Value {
    let users: Vec<Value> = users.iter().map(|u| json!({"username": u})).collect();
    json!({"engine": "PostgreSQL", "version": "15", "size": "1Gi", "users": users})
}

/// The message the API server gives for a denial by the validating webhook.
fn denied_by_webhook(status: &kube::core::Status) -> &str {
    assert_eq!(status.code, 422, "{status:?}");
    assert_eq!(status.reason, "Invalid", "{status:?}");
    let prefix = format!(
        "admission webhook {:?} denied the request: Database.stable.example.com ",
        webhook::VALIDATING_WEBHOOK_NAME
    );
    assert!(status.message.starts_with(&prefix), "{}", status.message);
    &status.message
}

#[tokio::test]
async fn a_valid_database_is_admitted_and_defaulted() {
    let env = Env::start().await;
    let created = env
        .create("my-app-db", spec(&["admin", "appuser"]))
        .await
        .unwrap();
    assert_eq!(
        created.data["spec"]["server"], "default",
        "set by the mutating webhook"
    );
    assert_eq!(created.data["spec"]["deletionPolicy"], "Retain");
    let db = env.typed.get("my-app-db").await.unwrap();
    assert_eq!(db.spec.server.as_deref(), Some("default"));
    assert_eq!(db.spec.deletion_policy, DeletionPolicy::Retain);

    // What the user set is left as it is.
    let mut explicit = spec(&["admin"]);
    explicit["server"] = json!("eu-1");
    explicit["deletionPolicy"] = json!("Delete");
    let created = env.create("explicit", explicit).await.unwrap();
    assert_eq!(created.data["spec"]["server"], "eu-1");
    assert_eq!(created.data["spec"]["deletionPolicy"], "Delete");
}

#[tokio::test]
async fn reserved_usernames_are_denied_with_the_field_path() {
    let env = Env::start().await;
    for (i, reserved) in ["postgres", "root"].into_iter().enumerate() {
        let status = env
            .create(&format!("reserved-{i}"), spec(&["admin", reserved]))
            .await
            .unwrap_err();
        let message = denied_by_webhook(&status);
        assert!(
            message.ends_with(&format!(
                "\"reserved-{i}\" is invalid: spec.users[1].username: Invalid value: \"{reserved}\": is reserved"
            )),
            "{message}"
        );
        // A real API server passes the webhook's `details` (one cause per field) on;
        // crwatch-apiserver keeps only code, reason and message. Check them when present.
        if let Some(details) = &status.details {
            assert_eq!(details.causes.len(), 1, "{details:?}");
            assert_eq!(details.causes[0].field, "spec.users[1].username");
        }
    }
    assert!(
        env.raw.list(&Default::default()).await.unwrap().items.is_empty(),
        "nothing denied was stored"
    );
}

#[tokio::test]
async fn duplicates_and_bad_identifiers_are_denied() {
    let env = Env::start().await;
    // The CRD's schema (a list-map keyed by username, a pattern) refuses these before any
    // validating webhook is called; the webhook's own answer is checked over HTTPS below.
    let status = env.create("dup", spec(&["admin", "admin"])).await.unwrap_err();
    assert_eq!(status.code, 422, "{status:?}");
    assert!(status.message.contains("spec.users[1]"), "{}", status.message);
    let status = env.create("semicolon", spec(&["a;drop"])).await.unwrap_err();
    assert_eq!(status.code, 422, "{status:?}");
    assert!(
        status.message.contains("spec.users[0].username"),
        "{}",
        status.message
    );

    let client = https_client(&env.certs);
    for (users, expected) in [
        (
            vec!["admin", "admin"],
            r#"spec.users[1].username: Invalid value: "admin": duplicate username "admin" (also spec.users[0])"#,
        ),
        (
            vec!["a;drop"],
            r#"spec.users[0].username: Invalid value: "a;drop": is not a valid user name"#,
        ),
    ] {
        let (code, answer) = post(
            &client,
            &env.base,
            webhook::VALIDATE_PATH,
            &admission_review(spec(&users)),
        )
        .await;
        assert_eq!(code, 200);
        let response = &answer["response"];
        assert_eq!(response["allowed"], false, "{answer}");
        assert_eq!(response["uid"], "test-uid");
        let message = response["status"]["message"].as_str().unwrap();
        assert!(message.contains(expected), "{expected:?} not in {message}");
        assert_eq!(response["status"]["code"], 422);
    }
}

#[tokio::test]
async fn the_engine_cannot_change_but_other_updates_pass() {
    let env = Env::start().await;
    env.create("my-app-db", spec(&["admin"])).await.unwrap();
    let params = PatchParams::default();

    let change = Patch::Merge(json!({"spec": {"engine": "MySQL", "version": "10.11"}}));
    match env.typed.patch("my-app-db", &params, &change).await {
        Err(kube::Error::Api(status)) => {
            let message = denied_by_webhook(&status);
            assert!(
                message.ends_with(
                    r#"spec.engine: Invalid value: "MySQL": is immutable (was PostgreSQL, now MySQL)"#
                ),
                "{message}"
            );
        }
        other => panic!("changing the engine must be denied, got {other:?}"),
    }
    assert_eq!(
        env.typed.get("my-app-db").await.unwrap().spec.engine,
        DatabaseEngine::PostgreSQL
    );

    let resize = Patch::Merge(json!({"spec": {"size": "2Gi"}, "metadata": {"labels": {"team": "a"}}}));
    let resized = env.typed.patch("my-app-db", &params, &resize).await.unwrap();
    assert_eq!(resized.spec.size, "2Gi");
    // Removing `server` (an apply that no longer sets it) gets it defaulted again.
    let unset =
        Patch::Json::<()>(serde_json::from_value(json!([{"op": "remove", "path": "/spec/server"}])).unwrap());
    let unset = env.typed.patch("my-app-db", &params, &unset).await.unwrap();
    assert_eq!(unset.spec.server.as_deref(), Some("default"));
    // The reconciler's status writes never reach the webhook's rules.
    let status = Patch::Merge(json!({"status": {"phase": "Ready", "ready": true}}));
    env.typed
        .patch_status("my-app-db", &params, &status)
        .await
        .unwrap();
}

// kubectl runs as a blocking child process; the server needs workers of its own meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_shows_the_webhooks_message() {
    let env = Env::start().await;
    let file = env.server.dir().join("bad-db.yaml");
    std::fs::write(
        &file,
        "apiVersion: stable.example.com/v1\nkind: Database\nmetadata:\n  name: bad-db\n  namespace: default\n\
         spec:\n  engine: PostgreSQL\n  version: \"15\"\n  size: 1Gi\n  users:\n  - username: postgres\n",
    )
    .unwrap();
    let mut kubectl = env.server.kubectl();
    kubectl.args(["apply", "--request-timeout=15s", "-f"]).arg(&file);
    let out = within("kubectl apply", async {
        tokio::task::spawn_blocking(move || kubectl.output())
            .await
            .unwrap()
            .unwrap()
    })
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "kubectl apply must fail; stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    // The webhook answers reason Invalid with per-field causes, which the API server passes on;
    // kubectl then prints them as it prints the server's own validation errors.
    for expected in [
        r#"The Database "bad-db" is invalid"#,
        r#"spec.users[0].username: Invalid value: "postgres": is reserved"#,
    ] {
        assert!(
            stderr.contains(expected),
            "{expected:?} not in kubectl's output: {stderr}"
        );
    }
}

#[tokio::test]
async fn writes_fail_closed_while_the_webhook_is_down() {
    let mut env = Env::start().await;
    env.cancel.cancel();
    within("the webhook stops", env.webhook.take().unwrap().stopped()).await;
    let status = env.create("while-down", spec(&["admin"])).await.unwrap_err();
    assert_eq!(status.code, 500, "{status:?}");
    assert!(
        status.message.contains("failed calling webhook"),
        "{}",
        status.message
    );
    assert!(env.raw.get_opt("while-down").await.unwrap().is_none());
}

#[tokio::test]
async fn the_https_server_answers_malformed_requests_with_400_and_speaks_http2() {
    let env = Env::start().await;
    let client = https_client(&env.certs);
    for body in [
        "not json".to_string(),
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}).to_string(),
    ] {
        for path in [webhook::VALIDATE_PATH, webhook::MUTATE_PATH] {
            let response = client
                .post(format!("{}{path}", env.base))
                .body(body.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 400);
            let status: Value = response.json().await.unwrap();
            assert_eq!(status["kind"], "Status");
            assert_eq!(status["reason"], "BadRequest");
            assert!(!status["message"].as_str().unwrap().is_empty());
        }
    }
    let health = client
        .get(format!("{}{}", env.base, webhook::HEALTH_PATH))
        .send()
        .await
        .unwrap();
    assert_eq!(
        health.version(),
        reqwest::Version::HTTP_2,
        "HTTP/2 negotiated by ALPN"
    );
    assert_eq!(health.status(), 200);
    assert_eq!(health.text().await.unwrap(), "ok");

    // The mutating endpoint over the wire: a base64 JSON patch.
    let (code, answer) = post(
        &client,
        &env.base,
        webhook::MUTATE_PATH,
        &admission_review(spec(&["admin"])),
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(answer["response"]["patchType"], "JSONPatch");
}

fn admission_review(spec: Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "test-uid", "operation": "CREATE", "name": "direct", "namespace": "default",
            "kind": {"group": "stable.example.com", "version": "v1", "kind": "Database"},
            "resource": {"group": "stable.example.com", "version": "v1", "resource": "databases"},
            "userInfo": {"username": "test"},
            "object": {"apiVersion": "stable.example.com/v1", "kind": "Database",
                       "metadata": {"name": "direct", "namespace": "default"}, "spec": spec},
        }
    })
}

/// An HTTPS client trusting exactly the webhook's CA.
fn https_client(certs: &Certs) -> reqwest::Client {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut certs.ca_pem.as_deref().unwrap().as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut tls =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .no_proxy()
        .timeout(PATIENCE)
        .build()
        .unwrap()
}

async fn post(client: &reqwest::Client, base: &str, path: &str, body: &Value) -> (u16, Value) {
    let response = client
        .post(format!("{base}{path}"))
        .json(body)
        .send()
        .await
        .unwrap();
    let code = response.status().as_u16();
    (code, response.json().await.unwrap())
}

// ---------------------------------------------------------------------------------------------
// deploy/

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

fn documents(file: &str) -> Vec<Value> {
    let path = deploy_dir().join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

/// Parse `doc` as the Kubernetes type it claims to be and check that nothing is lost on the way
/// back: a misspelt or misplaced field would be dropped by the typed model.
fn round_trips<T: serde::de::DeserializeOwned + serde::Serialize>(file: &str, doc: &Value) {
    let typed: T = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{file}: {} does not parse: {e}", doc["kind"]));
    let back = serde_json::to_value(&typed).unwrap();
    assert_eq!(
        &back, doc,
        "{file}: {} {} has fields Kubernetes does not know",
        doc["kind"], doc["metadata"]["name"]
    );
}

#[test]
fn every_deploy_manifest_parses_as_its_kind() {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::{Namespace, Service, ServiceAccount};
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};

    let expected: BTreeMap<&str, Vec<&str>> = [
        ("database-crd.yaml", vec!["CustomResourceDefinition"]),
        (
            "rbac.yaml",
            vec![
                "ServiceAccount",
                "ClusterRole",
                "ClusterRoleBinding",
                "Role",
                "RoleBinding",
            ],
        ),
        (
            "deployment.yaml",
            vec!["Namespace", "ConfigMap", "Service", "Deployment"],
        ),
        (
            "webhook.yaml",
            vec!["MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"],
        ),
    ]
    .into();
    let on_disk: BTreeSet<String> = std::fs::read_dir(deploy_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".yaml") || name.ends_with(".yml"))
        .collect();
    assert_eq!(
        on_disk,
        expected.keys().map(|k| k.to_string()).collect(),
        "a manifest in deploy/ this test does not know about"
    );
    for (file, kinds) in &expected {
        let docs = documents(file);
        let found: Vec<&str> = docs
            .iter()
            .map(|d| d["kind"].as_str().unwrap_or_default())
            .collect();
        assert_eq!(&found, kinds, "{file}");
        for doc in &docs {
            match doc["kind"].as_str().unwrap_or_default() {
                "CustomResourceDefinition" => round_trips::<CustomResourceDefinition>(file, doc),
                "ServiceAccount" => round_trips::<ServiceAccount>(file, doc),
                "ClusterRole" => round_trips::<ClusterRole>(file, doc),
                "ClusterRoleBinding" => round_trips::<ClusterRoleBinding>(file, doc),
                "Role" => round_trips::<Role>(file, doc),
                "RoleBinding" => round_trips::<RoleBinding>(file, doc),
                "Namespace" => round_trips::<Namespace>(file, doc),
                "ConfigMap" => round_trips::<k8s_openapi::api::core::v1::ConfigMap>(file, doc),
                "Service" => round_trips::<Service>(file, doc),
                "Deployment" => round_trips::<Deployment>(file, doc),
                "MutatingWebhookConfiguration" => round_trips::<MutatingWebhookConfiguration>(file, doc),
                "ValidatingWebhookConfiguration" => round_trips::<ValidatingWebhookConfiguration>(file, doc),
                other => panic!("{file}: unexpected kind {other}"),
            }
            let namespaced = [
                "ServiceAccount",
                "Role",
                "RoleBinding",
                "ConfigMap",
                "Service",
                "Deployment",
            ];
            if namespaced.contains(&doc["kind"].as_str().unwrap_or_default()) {
                assert_eq!(
                    doc["metadata"]["namespace"], OPERATOR_NAMESPACE,
                    "{file}: {}",
                    doc["kind"]
                );
            }
        }
    }
}

#[test]
fn deploy_webhook_yaml_is_what_the_command_prints_without_a_ca() {
    let path = deploy_dir().join("webhook.yaml");
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    let generated =
        webhook::webhook_configurations("", &WebhookTarget::Service(ServiceRef::default())).unwrap();
    assert!(
        on_disk == generated,
        "deploy/webhook.yaml is out of date; regenerate it with\n\n    \
         cargo run -p database-operator -- webhook-config > deploy/webhook.yaml\n\n{generated}"
    );
}

/// The namespace `deploy/` installs the operator into.
const OPERATOR_NAMESPACE: &str = "database-operator";

/// Everything the operator does to the API, as `(apiGroup, resource, verbs)`: keep in sync with
/// the reconciler, the manager and `deploy/rbac.yaml` (the test below holds the latter to it).
///
/// * `databases`: the informer (get, list, watch); finalizers added and removed (update, patch).
/// * `databases/status`: status written only when it changes (get, update, patch).
/// * `databases/finalizers`: update, for the `ownerReferences` with `blockOwnerDeletion` the
///   credential Secrets carry (required where the OwnerReferencesPermissionEnforcement
///   admission plugin runs, as on OpenShift).
/// * `secrets`: the owned credential Secrets (watched, created, updated, deleted) and the
///   `passwordSecret`s users name (read).
/// * `events` in `events.k8s.io`: `crwatch::events::Recorder` creates Events and patches their
///   series; it never uses core v1 Events.
const CLUSTER_PERMISSIONS: &[(&str, &str, &[&str])] = &[
    (
        "stable.example.com",
        "databases",
        &["get", "list", "watch", "patch"],
    ),
    ("stable.example.com", "databases/status", &["patch"]),
    ("stable.example.com", "databases/finalizers", &["update"]),
    ("", "secrets", &["get", "list", "watch", "create", "update"]),
    ("events.k8s.io", "events", &["create", "patch"]),
];

/// In the operator's own namespace only: `crwatch::leader` reads, creates and replaces its
/// Lease (get, create, update).
const NAMESPACE_PERMISSIONS: &[(&str, &str, &[&str])] =
    &[("coordination.k8s.io", "leases", &["get", "create", "update"])];

type Grants = BTreeSet<(String, String, String)>;

fn grants(rules: &[(&str, &str, &[&str])]) -> Grants {
    let mut set = Grants::new();
    for (group, resource, verbs) in rules {
        for verb in *verbs {
            set.insert((group.to_string(), resource.to_string(), verb.to_string()));
        }
    }
    set
}

fn granted_by(doc: &Value) -> Grants {
    let mut set = Grants::new();
    for rule in doc["rules"].as_array().into_iter().flatten() {
        assert!(
            rule.get("resourceNames").is_none() && rule.get("nonResourceURLs").is_none(),
            "{rule}"
        );
        let list = |f: &str| -> Vec<String> {
            rule[f]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect()
        };
        for group in list("apiGroups") {
            for resource in list("resources") {
                for verb in list("verbs") {
                    assert!(
                        group != "*" && resource != "*" && verb != "*",
                        "no wildcards: {rule}"
                    );
                    set.insert((group.clone(), resource.clone(), verb));
                }
            }
        }
    }
    set
}

#[test]
fn rbac_grants_exactly_what_the_operator_uses() {
    let docs = documents("rbac.yaml");
    let by_kind = |kind: &str| -> &Value {
        let matching: Vec<&Value> = docs.iter().filter(|d| d["kind"] == kind).collect();
        assert_eq!(matching.len(), 1, "one {kind} in rbac.yaml");
        matching[0]
    };
    assert_eq!(granted_by(by_kind("ClusterRole")), grants(CLUSTER_PERMISSIONS));
    let role = by_kind("Role");
    assert_eq!(role["metadata"]["namespace"], OPERATOR_NAMESPACE);
    assert_eq!(granted_by(role), grants(NAMESPACE_PERMISSIONS));

    // Both bindings bind their role, and only it, to the operator's ServiceAccount.
    let account = by_kind("ServiceAccount");
    let subject = json!([{"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": OPERATOR_NAMESPACE}]);
    for (binding, role) in [("ClusterRoleBinding", "ClusterRole"), ("RoleBinding", "Role")] {
        let binding = by_kind(binding);
        assert_eq!(binding["subjects"], subject, "{binding}");
        assert_eq!(binding["roleRef"]["kind"], role);
        assert_eq!(binding["roleRef"]["name"], by_kind(role)["metadata"]["name"]);
    }

    // The Deployment runs as that account, and the webhook Service selects its Pods.
    let deployment_docs = documents("deployment.yaml");
    let deployment = deployment_docs
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .unwrap();
    let pod = &deployment["spec"]["template"];
    assert_eq!(pod["spec"]["serviceAccountName"], account["metadata"]["name"]);
    let service = deployment_docs.iter().find(|d| d["kind"] == "Service").unwrap();
    let defaults = ServiceRef::default();
    assert_eq!(service["metadata"]["name"], defaults.name.as_str());
    assert_eq!(service["metadata"]["namespace"], defaults.namespace.as_str());
    for (key, value) in service["spec"]["selector"].as_object().unwrap() {
        assert_eq!(
            &pod["metadata"]["labels"][key], value,
            "the Service selects the Pods"
        );
    }
    assert_eq!(service["spec"]["ports"][0]["port"], u64::from(defaults.port));
}

#[test]
fn the_deployment_is_hardened_and_probed() {
    let docs = documents("deployment.yaml");
    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    assert_eq!(deployment["spec"]["replicas"], 2);
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        args[..3],
        ["run", "--config", "/etc/database-operator/config.yaml"],
        "{args:?}"
    );
    assert!(args.contains(&"--leader-elect"), "{args:?}");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    let ports: BTreeSet<u64> = container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["containerPort"].as_u64().unwrap())
        .collect();
    assert_eq!(
        ports,
        BTreeSet::from([8080, 8081, u64::from(webhook::DEFAULT_PORT)])
    );
    let security = &container["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert!(container["resources"]["requests"].is_object() && container["resources"]["limits"].is_object());
    let env: Vec<&str> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert!(env.contains(&"DATABASE_OPERATOR_ADMIN_DSN_DEFAULT"), "{env:?}");
    let dsn = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "DATABASE_OPERATOR_ADMIN_DSN_DEFAULT")
        .unwrap();
    assert!(
        dsn["valueFrom"]["secretKeyRef"].is_object(),
        "the admin DSN comes from a Secret, not the manifest"
    );
}
