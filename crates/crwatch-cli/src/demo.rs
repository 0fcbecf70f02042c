//! `crwatch demo`: an API server in process, the Database CRD, and the watch of
//! `crwatch get databases -A -w --diff` while a script creates, edits, moves the status of and
//! deletes sample Databases, narrating each step on stderr.
//!
//! The script is deterministic: each step waits until the watch has printed its change before
//! the next one starts (after `--pace`), and the demo ends by itself unless `--keep` asks to
//! keep the server (and the watch) running until Ctrl-C.
//!
//! Status is what an operator writes. Without one, the script patches `status` itself
//! (`Provisioning`, then `Ready`); with an [`Operator`] running in process, those patches are
//! left to it and the script waits until the operator reports the database `Ready`.
//!
//! Built with the `demo-operator` feature, `crwatch demo` runs the real Database operator in
//! process against a throwaway local PostgreSQL ([`operator_script`]): databases and users are
//! created on the server, the credentials Secret is shown (passwords as their length only), a
//! login with the Secret's password is tried, and the dropped database is looked for on the
//! server. Without PostgreSQL on the machine it falls back to the scripted demo.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::Duration;

use anyhow::Context;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::Client;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::discovery::ApiResource;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::args::{DemoArgs, GetArgs, Output};
use crate::get::{self, ChangeKind, Embed, WatchReport, ansi, colour_for};

/// The Database CRD, as deployed.
const DATABASE_CRD: &str = include_str!("../../../deploy/database-crd.yaml");

/// How long a step may take to show up in the watch (an operator gets [`OPERATOR_WAIT`]).
const STEP_WAIT: Duration = Duration::from_secs(30);
/// How long an in-process operator may take to make a database Ready.
const OPERATOR_WAIT: Duration = Duration::from_secs(120);

/// A Database operator run in process during the demo. It gets a client for the demo's API
/// server and a token cancelled when the demo ends, and writes `status` as it provisions; the
/// script then waits for it instead of patching status itself.
pub type Operator =
    Box<dyn FnOnce(Client, CancellationToken) -> BoxFuture<'static, anyhow::Result<()>> + Send>;

/// What the demo does.
pub struct Options {
    /// Pause between steps.
    pub pace: Duration,
    /// Keep the server and the watch running after the script, until Ctrl-C.
    pub keep: bool,
    /// The operator that writes status, if one runs in process.
    pub operator: Option<Operator>,
}

/// Run the demo: with the Database operator on a local PostgreSQL when built with the
/// `demo-operator` feature (unless `--no-operator`), else the scripted one.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let options = Options {
        pace: args.pace.into(),
        keep: args.keep,
        operator: None,
    };
    if args.wants_operator() {
        #[cfg(feature = "demo-operator")]
        return live::run(options).await;
        #[cfg(not(feature = "demo-operator"))]
        anyhow::bail!(
            "this crwatch was built without the Database operator; build it with \
             `cargo build -p crwatch-cli --features demo-operator` (./scripts/demo does), \
             or drop --operator"
        );
    }
    run_with(options).await
}

/// Where an object lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRef {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ObjectRef {
    fn new(namespace: &str, name: &str) -> Self {
        ObjectRef {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    fn matches(&self, o: &Value) -> bool {
        o["metadata"]["namespace"].as_str() == Some(self.namespace.as_str())
            && o["metadata"]["name"].as_str() == Some(self.name.as_str())
    }

    /// `-n NS` for kubectl lines (nothing for `default`).
    fn ns_flag(&self) -> String {
        if self.namespace == "default" {
            String::new()
        } else {
            format!(" -n {}", self.namespace)
        }
    }
}

/// One scripted change.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Create a namespace (the watch shows nothing).
    Namespace(String),
    /// Create or update a Database from a manifest (server-side apply).
    Apply(Value),
    /// Merge-patch a Database's spec.
    Patch {
        /// Which Database.
        at: ObjectRef,
        /// The merge patch.
        patch: Value,
    },
    /// Set status as the operator would: patched by the script without an operator; with one,
    /// the script waits for it to report `phase` (steps before `Ready` are skipped then).
    Status {
        /// Which Database.
        at: ObjectRef,
        /// The status fields to merge.
        status: Value,
    },
    /// Delete a Database.
    Delete(ObjectRef),
    /// With an operator: wait until it has caught up with the Database's latest spec
    /// (`status.observedGeneration` is `metadata.generation`) and reports it Ready, saying
    /// what it does. Without one: nothing.
    Settled {
        /// Which Database.
        at: ObjectRef,
        /// What the operator does meanwhile, for the narration.
        doing: String,
    },
    /// With a database server: show the keys of the Database's credentials Secret
    /// (`<name>-credentials`), passwords as their length only; keys added or removed since it
    /// was last shown are marked `+` / `-`.
    ShowSecret(ObjectRef),
    /// With a database server: log in as a user of the Database with the host, port, login and
    /// password from its credentials Secret.
    Login {
        /// Which Database.
        at: ObjectRef,
        /// The user (`spec.users[].username`).
        username: String,
    },
    /// With a database server: check that a deleted Database's database (named by its last
    /// `status.connectionString`) is gone from the server.
    Dropped(ObjectRef),
}

impl Step {
    /// Whether the step changes something (and so comes after a `--pace` pause); the others
    /// only wait or look.
    fn acts(&self) -> bool {
        !matches!(
            self,
            Step::Settled { .. } | Step::ShowSecret(_) | Step::Login { .. } | Step::Dropped(_)
        )
    }
}

fn database(ns: &str, name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "stable.example.com/v1",
        "kind": "Database",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    })
}

/// The script: two Databases in two namespaces; one provisioned, resized and given a user;
/// the other deleted.
pub fn script() -> Vec<Step> {
    let app = ObjectRef::new("default", "my-app-db");
    let reports = ObjectRef::new("analytics", "reports-db");
    vec![
        Step::Apply(database(
            "default",
            "my-app-db",
            json!({"engine": "PostgreSQL", "version": "15", "size": "1Gi", "users": [{"username": "admin"}]}),
        )),
        Step::Namespace("analytics".into()),
        Step::Apply(database(
            "analytics",
            "reports-db",
            json!({"engine": "MySQL", "version": "11", "size": "5Gi", "deletionPolicy": "Delete"}),
        )),
        Step::Status {
            at: app.clone(),
            status: json!({"phase": "Provisioning", "ready": false, "message": "Creating database default_my_app_db"}),
        },
        Step::Status {
            at: app.clone(),
            status: json!({
                "phase": "Ready",
                "ready": true,
                "connectionString": "postgresql://db.example:5432/default_my_app_db",
                "observedGeneration": 1,
                "message": "Database is ready",
            }),
        },
        Step::Patch {
            at: app.clone(),
            patch: json!({"spec": {"size": "2Gi"}}),
        },
        Step::Patch {
            at: app,
            patch: json!({"spec": {"users": [{"username": "admin"}, {"username": "appuser"}]}}),
        },
        Step::Delete(reports),
    ]
}

/// The script with the Database operator at work on a real PostgreSQL: a Database with two
/// users is provisioned, its Secret shown and a login tried with it; a second one, in another
/// namespace, is provisioned; the first is resized and gets a third user (the Secret gains its
/// keys); the second, with `deletionPolicy: Delete`, is deleted and its database looked for
/// on the server.
pub fn operator_script() -> Vec<Step> {
    let app = ObjectRef::new("default", "my-app-db");
    let reports = ObjectRef::new("analytics", "reports-db");
    let settled = |at: &ObjectRef, doing: &str| Step::Settled {
        at: at.clone(),
        doing: doing.into(),
    };
    vec![
        Step::Apply(database(
            "default",
            "my-app-db",
            json!({
                "engine": "PostgreSQL",
                "version": "15",
                "size": "1Gi",
                "users": [{"username": "admin"}, {"username": "appuser"}],
            }),
        )),
        settled(
            &app,
            "creates the database, users admin and appuser, and the Secret my-app-db-credentials",
        ),
        Step::ShowSecret(app.clone()),
        Step::Login {
            at: app.clone(),
            username: "appuser".into(),
        },
        Step::Namespace("analytics".into()),
        Step::Apply(database(
            "analytics",
            "reports-db",
            json!({
                "engine": "PostgreSQL",
                "version": "15",
                "size": "5Gi",
                "users": [{"username": "analyst"}],
                "deletionPolicy": "Delete",
            }),
        )),
        settled(&reports, "creates the database and user analyst"),
        Step::Patch {
            at: app.clone(),
            patch: json!({"spec": {"size": "2Gi"}}),
        },
        settled(&app, "records the new size"),
        Step::Patch {
            at: app.clone(),
            patch: json!({"spec": {"users": [
                {"username": "admin"}, {"username": "appuser"}, {"username": "reporting"},
            ]}}),
        },
        settled(&app, "creates user reporting and adds its keys to the Secret"),
        Step::ShowSecret(app),
        Step::Delete(reports.clone()),
        Step::Dropped(reports),
    ]
}

/// The database server an in-process operator provisions on, as the demo looks at it.
trait DatabaseServer: Send + Sync {
    /// Log in to `database` on `host:port` as `user` with `password` and run a query.
    fn check_login<'a>(
        &'a self,
        host: &'a str,
        port: u16,
        database: &'a str,
        user: &'a str,
        password: &'a str,
    ) -> BoxFuture<'a, anyhow::Result<()>>;

    /// Whether the database `name` exists.
    fn database_exists<'a>(&'a self, name: &'a str) -> BoxFuture<'a, anyhow::Result<bool>>;
}

/// Narration on stderr, dimmed on a terminal (both demos narrate with it).
pub(crate) struct Narrator {
    dim: bool,
}

impl Narrator {
    pub(crate) fn new() -> Self {
        Narrator {
            dim: colour_for(std::io::stderr().is_terminal()),
        }
    }

    pub(crate) fn line(&self, text: &str) {
        if self.dim {
            eprintln!("{}{text}{}", ansi::DIM, ansi::RESET);
        } else {
            eprintln!("{text}");
        }
    }

    pub(crate) fn step(&self, text: &str) {
        self.line(&format!("→ {text}"));
    }
}

fn database_api(client: &Client, namespace: &str) -> Api<DynamicObject> {
    let ar = ApiResource {
        group: "stable.example.com".into(),
        version: "v1".into(),
        api_version: "stable.example.com/v1".into(),
        kind: "Database".into(),
        plural: "databases".into(),
    };
    Api::namespaced_with(client.clone(), namespace, &ar)
}

/// What the watch must print before the next step.
enum Expect {
    Nothing,
    /// The initial list done.
    Synced,
    /// A change of this object at (or after) this resourceVersion, or its deletion.
    Version(ObjectRef, String, ChangeKind),
    /// The operator reporting this object Ready.
    Ready(ObjectRef),
    /// The operator reporting this object Ready at its latest generation.
    Settled(ObjectRef),
}

impl Expect {
    fn met_by(&self, kind: ChangeKind, o: &Value) -> bool {
        match self {
            Expect::Nothing | Expect::Synced => false,
            Expect::Version(at, _, ChangeKind::Deleted) => kind == ChangeKind::Deleted && at.matches(o),
            Expect::Version(at, rv, _) => {
                if kind == ChangeKind::Deleted {
                    return false;
                }
                let seen = o["metadata"]["resourceVersion"].as_str().unwrap_or("");
                at.matches(o)
                    && (seen == rv
                        || matches!((seen.parse::<u64>(), rv.parse::<u64>()), (Ok(a), Ok(b)) if a >= b))
            }
            Expect::Ready(at) => at.matches(o) && o["status"]["ready"] == json!(true),
            Expect::Settled(at) => {
                kind != ChangeKind::Deleted
                    && at.matches(o)
                    && o["status"]["ready"] == json!(true)
                    && o["metadata"]["generation"].is_u64()
                    && o["status"]["observedGeneration"] == o["metadata"]["generation"]
            }
        }
    }

    fn describe(&self) -> String {
        match self {
            Expect::Nothing => "nothing".into(),
            Expect::Synced => "the current state".into(),
            Expect::Version(at, _, kind) => {
                format!("{} {}/{}", kind.as_str().to_lowercase(), at.namespace, at.name)
            }
            Expect::Ready(at) => format!("{}/{} Ready", at.namespace, at.name),
            Expect::Settled(at) => format!("{}/{} Ready at its latest generation", at.namespace, at.name),
        }
    }

    /// How long the watch may take to show it.
    fn within(&self) -> Duration {
        match self {
            Expect::Ready(_) | Expect::Settled(_) => OPERATOR_WAIT,
            _ => STEP_WAIT,
        }
    }
}

fn resource_version(o: &DynamicObject) -> String {
    o.metadata.resource_version.clone().unwrap_or_default()
}

/// A Database's credentials Secret, as the operator names it.
fn secret_name(at: &ObjectRef) -> String {
    format!("{}-credentials", at.name)
}

/// A Secret value as the demo shows it: passwords as their length, URIs without the password.
fn shown_value(key: &str, value: &str) -> String {
    if key == "password" || key.ends_with(".password") {
        return format!("<{} characters>", value.chars().count());
    }
    if let Some((scheme, rest)) = value.split_once("://") {
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if let Some((userinfo, host)) = authority.rsplit_once('@')
            && let Some((user, _password)) = userinfo.split_once(':')
        {
            return format!("{scheme}://{user}:<password>@{host}{path}");
        }
    }
    value.to_string()
}

/// The database named by a connection string (`postgresql://host:port/<database>`).
fn database_of(connection_string: &str) -> Option<&str> {
    let rest = connection_string.split_once("://")?.1;
    let path = &rest[rest.find('/')? + 1..];
    let name = path.split(['?', '#']).next()?;
    (!name.is_empty()).then_some(name)
}

/// The script running: the client, who writes status, the database server to look at, the
/// narration, and what was shown of each Secret.
struct Player<'a> {
    client: &'a Client,
    operator: bool,
    server: Option<&'a dyn DatabaseServer>,
    say: &'a Narrator,
    secrets: BTreeMap<(String, String), BTreeMap<String, String>>,
}

impl Player<'_> {
    /// The credentials Secret of `at`, its values as text.
    async fn secret(&self, at: &ObjectRef) -> anyhow::Result<BTreeMap<String, String>> {
        let name = secret_name(at);
        // crwatch::api: kube's own get_opt would log an undecodable Secret whole.
        let secrets = Api::<Secret>::namespaced(self.client.clone(), &at.namespace);
        let secret = crwatch::api::get_opt(&secrets, &name)
            .await
            .with_context(|| format!("reading Secret {}/{name}", at.namespace))?
            .with_context(|| format!("the operator wrote no Secret {}/{name}", at.namespace))?;
        Ok(secret
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
            .collect())
    }

    /// Narrate and carry out one step; what the watch will show for it.
    async fn perform(&mut self, step: &Step, printed: &Printed) -> anyhow::Result<Expect> {
        let (client, say) = (self.client, self.say);
        Ok(match step {
            Step::Namespace(name) => {
                say.step(&format!("kubectl create namespace {name}"));
                let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}}))?;
                crwatch::api::create(
                    &Api::<Namespace>::all(client.clone()),
                    &PostParams::default(),
                    &ns,
                )
                .await
                .with_context(|| format!("creating namespace {name}"))?;
                Expect::Nothing
            }
            Step::Apply(manifest) => {
                let at = ObjectRef::new(
                    manifest["metadata"]["namespace"].as_str().unwrap_or("default"),
                    manifest["metadata"]["name"].as_str().unwrap_or(""),
                );
                say.step(&format!("kubectl apply -f {}.yaml", at.name));
                let yaml = serde_saphyr::to_string(manifest).context("writing YAML")?;
                for l in yaml.lines() {
                    say.line(&format!("    {l}"));
                }
                let api = database_api(client, &at.namespace);
                let existed = crwatch::api::get_opt(&api, &at.name).await?.is_some();
                let obj: DynamicObject = serde_json::from_value(manifest.clone())?;
                let out = crwatch::api::patch(
                    &api,
                    &at.name,
                    &PatchParams::apply("kubectl").force(),
                    &Patch::Apply(&obj),
                )
                .await
                .with_context(|| format!("applying {}/{}", at.namespace, at.name))?;
                let kind = if existed {
                    ChangeKind::Modified
                } else {
                    ChangeKind::Added
                };
                Expect::Version(at, resource_version(&out), kind)
            }
            Step::Patch { at, patch } => {
                say.step(&format!(
                    "kubectl patch db {}{} --type=merge -p '{patch}'",
                    at.name,
                    at.ns_flag()
                ));
                let api = database_api(client, &at.namespace);
                let out = crwatch::api::patch(&api, &at.name, &PatchParams::default(), &Patch::Merge(patch))
                    .await
                    .with_context(|| format!("patching {}/{}", at.namespace, at.name))?;
                Expect::Version(at.clone(), resource_version(&out), ChangeKind::Modified)
            }
            Step::Status { at, status } if self.operator => {
                if status["phase"] != "Ready" {
                    return Ok(Expect::Nothing);
                }
                say.step(&format!(
                    "the Database operator provisions {}/{} (waiting until it is Ready)",
                    at.namespace, at.name
                ));
                Expect::Ready(at.clone())
            }
            Step::Status { at, status } => {
                let patch = json!({"status": status});
                say.step(&format!(
                    "kubectl patch db {}{} --subresource=status --type=merge -p '{patch}'   # as the Database operator would",
                    at.name,
                    at.ns_flag()
                ));
                let api = database_api(client, &at.namespace);
                let out = crwatch::api::patch_status(
                    &api,
                    &at.name,
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
                .with_context(|| format!("patching the status of {}/{}", at.namespace, at.name))?;
                Expect::Version(at.clone(), resource_version(&out), ChangeKind::Modified)
            }
            Step::Delete(at) => {
                say.step(&format!("kubectl delete db {}{}", at.name, at.ns_flag()));
                crwatch::api::delete(
                    &database_api(client, &at.namespace),
                    &at.name,
                    &DeleteParams::default(),
                )
                .await
                .with_context(|| format!("deleting {}/{}", at.namespace, at.name))?;
                Expect::Version(at.clone(), String::new(), ChangeKind::Deleted)
            }
            Step::Settled { at, doing } => {
                if !self.operator {
                    return Ok(Expect::Nothing);
                }
                say.step(&format!(
                    "the Database operator {doing} (waiting until {}/{} is Ready at its latest generation)",
                    at.namespace, at.name
                ));
                Expect::Settled(at.clone())
            }
            Step::ShowSecret(at) => {
                if self.server.is_none() {
                    return Ok(Expect::Nothing);
                }
                let data = self.secret(at).await?;
                let key = (at.namespace.clone(), at.name.clone());
                let name = secret_name(at);
                match self.secrets.get(&key) {
                    None => {
                        say.step(&format!(
                            "kubectl get secret {name}{} -o yaml   # written by the operator; passwords not shown",
                            at.ns_flag()
                        ));
                        for (k, v) in &data {
                            say.line(&format!("    {k}: {}", shown_value(k, v)));
                        }
                    }
                    Some(before) => {
                        let (added, removed) = (
                            data.keys().filter(|k| !before.contains_key(*k)).count(),
                            before.keys().filter(|k| !data.contains_key(*k)).count(),
                        );
                        say.step(&format!(
                            "kubectl get secret {name}{} -o yaml   # {added} keys added, {removed} removed",
                            at.ns_flag()
                        ));
                        for (k, v) in &data {
                            if !before.contains_key(k) {
                                say.line(&format!("  + {k}: {}", shown_value(k, v)));
                            }
                        }
                        for k in before.keys().filter(|k| !data.contains_key(*k)) {
                            say.line(&format!("  - {k}"));
                        }
                    }
                }
                self.secrets.insert(key, data);
                Expect::Nothing
            }
            Step::Login { at, username } => {
                let Some(server) = self.server else {
                    return Ok(Expect::Nothing);
                };
                let data = self.secret(at).await?;
                let field = |k: &str| {
                    data.get(&format!("{username}.{k}"))
                        .map(String::as_str)
                        .with_context(|| format!("Secret {} has no key {username}.{k}", secret_name(at)))
                };
                let (host, port, database, login, password) = (
                    field("host")?,
                    field("port")?,
                    field("database")?,
                    field("username")?,
                    field("password")?,
                );
                let port: u16 = port.parse().with_context(|| {
                    format!("{username}.port of Secret {} is not a port", secret_name(at))
                })?;
                say.step(&format!(
                    "psql \"$(kubectl get secret {}{} -o jsonpath='{{.data.{username}\\.uri}}' | base64 -d)\" -c 'SELECT 1'",
                    secret_name(at),
                    at.ns_flag()
                ));
                server
                    .check_login(host, port, database, login, password)
                    .await
                    .with_context(|| format!("logging in as {login} with the password from the Secret"))?;
                say.line(&format!(
                    "  ✓ login succeeded: {login} on {host}:{port}/{database}, with the password from the Secret"
                ));
                Expect::Nothing
            }
            Step::Dropped(at) => {
                let Some(server) = self.server else {
                    return Ok(Expect::Nothing);
                };
                let last = printed.last.get(&(at.namespace.clone(), at.name.clone()));
                let database = last
                    .and_then(|(_, o)| o["status"]["connectionString"].as_str())
                    .and_then(database_of)
                    .with_context(|| {
                        format!(
                            "the watch showed no status.connectionString for {}/{}",
                            at.namespace, at.name
                        )
                    })?
                    .to_string();
                say.step(&format!(
                    "psql -c \"SELECT 1 FROM pg_database WHERE datname = '{database}'\"   # as the server's admin"
                ));
                if server.database_exists(&database).await? {
                    anyhow::bail!(
                        "database {database} of {}/{} still exists on the server after its deletion",
                        at.namespace,
                        at.name
                    );
                }
                say.line(&format!(
                    "  ✓ database dropped: {database} is gone from the server (deletionPolicy: Delete)"
                ));
                Expect::Nothing
            }
        })
    }

    /// Run the script, waiting for the watch after every step.
    async fn play(&mut self, steps: &[Step], pace: Duration, printed: &mut Printed) -> anyhow::Result<()> {
        printed.wait_for(&Expect::Synced, STEP_WAIT).await?;
        for (i, step) in steps.iter().enumerate() {
            if i > 0 && step.acts() && !pace.is_zero() {
                tokio::time::sleep(pace).await;
            }
            let expect = self.perform(step, printed).await?;
            printed.wait_for(&expect, expect.within()).await?;
        }
        Ok(())
    }
}

/// What the watch printed last for each object, fed from its reports.
struct Printed {
    reports: mpsc::UnboundedReceiver<WatchReport>,
    synced: bool,
    last: BTreeMap<(String, String), (ChangeKind, Value)>,
}

impl Printed {
    fn new(reports: mpsc::UnboundedReceiver<WatchReport>) -> Self {
        Printed {
            reports,
            synced: false,
            last: BTreeMap::new(),
        }
    }

    /// The next report, remembered; `None` once the watch ended.
    async fn next(&mut self) -> Option<()> {
        match self.reports.recv().await? {
            WatchReport::Synced => self.synced = true,
            WatchReport::Printed { kind, object } => {
                let meta = &object["metadata"];
                let key = (
                    meta["namespace"].as_str().unwrap_or("").to_string(),
                    meta["name"].as_str().unwrap_or("").to_string(),
                );
                self.last.insert(key, (kind, object));
            }
        }
        Some(())
    }

    fn met(&self, expect: &Expect) -> bool {
        match expect {
            Expect::Nothing => true,
            Expect::Synced => self.synced,
            _ => self.last.values().any(|(kind, o)| expect.met_by(*kind, o)),
        }
    }

    /// Wait until what the watch printed meets `expect` (it may have already, as an operator
    /// can be quicker than the script), or the watch ends, or `within` runs out.
    async fn wait_for(&mut self, expect: &Expect, within: Duration) -> anyhow::Result<()> {
        let met = tokio::time::timeout(within, async {
            while !self.met(expect) {
                if self.next().await.is_none() {
                    return false;
                }
            }
            true
        })
        .await;
        match met {
            Ok(true) => Ok(()),
            Ok(false) => anyhow::bail!("the watch ended before it showed {}", expect.describe()),
            Err(_) => anyhow::bail!(
                "the watch did not show {} within {}s",
                expect.describe(),
                within.as_secs()
            ),
        }
    }
}

/// A client for the embedded server, from the kubeconfig it writes.
async fn client_for(server: &crwatch_apiserver::ApiServer) -> anyhow::Result<Client> {
    let kc = Kubeconfig::from_yaml(&server.kubeconfig_yaml()).context("reading the demo kubeconfig")?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .context("loading the demo kubeconfig")?;
    Client::try_from(config).context("creating the client")
}

/// How a demo ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// The script ran to its end.
    Done,
    /// Ctrl-C (always the end with `--keep`).
    Interrupted,
}

/// Run the demo with an optional in-process operator.
pub async fn run_with(options: Options) -> anyhow::Result<()> {
    let say = Narrator::new();
    if play_demo(options, &script(), None, &say).await? == Ending::Done {
        say.line("crwatch demo: done.");
    }
    Ok(())
}

/// The demo: the API server, the CRD, the watch, the operator if any, and `steps`.
async fn play_demo(
    options: Options,
    steps: &[Step],
    db_server: Option<&dyn DatabaseServer>,
    say: &Narrator,
) -> anyhow::Result<Ending> {
    let server = crwatch_apiserver::ApiServer::start(crwatch_apiserver::Config {
        http_port: None,
        // Deployments and StatefulSets the operator creates get Pods that become Ready.
        simulate_workloads: true,
        ..Default::default()
    })
    .await
    .context("starting the API server")?;
    let docs: Vec<Value> = serde_saphyr::from_multiple(DATABASE_CRD).context("parsing the Database CRD")?;
    for doc in docs.into_iter().filter(|d| !d.is_null()) {
        server.apply(doc).await.context("installing the Database CRD")?;
    }
    let client = client_for(&server).await?;
    say.line(&format!(
        "crwatch demo: API server at {}; Database CRD installed (databases.stable.example.com, short name db)",
        server.url()
    ));
    say.step("crwatch get databases -A -w --diff");

    let stop = CancellationToken::new();
    let (tx, rx) = mpsc::unbounded_channel();
    let get_args = GetArgs {
        resource: "databases".into(),
        name: None,
        watch: true,
        watch_only: false,
        namespace: None,
        all_namespaces: true,
        selector: None,
        field_selector: None,
        output: Output::Table,
        diff: true,
        kubeconfig: None,
        context: None,
        items: None,
        key: None,
        interval: None,
        install_trigger: false,
    };
    let embed = Embed {
        stop: stop.clone(),
        reports: Some(tx),
        external_ctrl_c: true,
        min_widths: [("NAME", 10), ("PHASE", 12), ("READY", 5)]
            .map(|(h, w)| (h.to_string(), w))
            .into(),
    };
    let watch = get::run_with(&client, "default".into(), &get_args, embed);
    let has_operator = options.operator.is_some();
    let operator = async {
        match options.operator {
            Some(op) => op(client.clone(), stop.clone())
                .await
                .context("the Database operator"),
            None => Ok(()),
        }
    };
    let mut kubeconfig_dir = None;
    let script = async {
        let mut printed = Printed::new(rx);
        let mut player = Player {
            client: &client,
            operator: has_operator,
            server: db_server,
            say,
            secrets: BTreeMap::new(),
        };
        player.play(steps, options.pace, &mut printed).await?;
        if options.keep {
            let dir = tempfile::Builder::new()
                .prefix("crwatch-demo-")
                .tempdir()
                .context("creating a directory for the kubeconfig")?;
            let path = dir.path().join("kubeconfig");
            server
                .write_kubeconfig(&path)
                .with_context(|| format!("writing {}", path.display()))?;
            say.line(&format!(
                "The demo is done; the API server keeps running until Ctrl-C. Its kubeconfig: {}",
                path.display()
            ));
            say.line(&format!(
                "Try: kubectl --kubeconfig {} get db -A -w",
                path.display()
            ));
            say.line(&format!(
                "and, in another terminal: kubectl --kubeconfig {} patch db my-app-db --type=merge -p '{{\"spec\":{{\"size\":\"3Gi\"}}}}'",
                path.display()
            ));
            kubeconfig_dir = Some(dir);
            // Keep draining reports so they do not pile up.
            while printed.next().await.is_some() {}
            std::future::pending::<()>().await;
        }
        anyhow::Ok(())
    };
    let outcome = tokio::select! {
        biased;
        _ = tokio::signal::ctrl_c() => Ok(Ending::Interrupted),
        r = async {
            tokio::try_join!(
                async { watch.await.map(|_| ()) },
                async {
                    let r = script.await;
                    stop.cancel();
                    r
                },
                operator,
            )
        } => r.map(|_| Ending::Done),
    };
    stop.cancel();
    drop(kubeconfig_dir);
    server.shutdown().await.context("stopping the API server")?;
    outcome
}

/// The demo with the Database operator in process, provisioning on a throwaway local
/// PostgreSQL (Debian's binaries, run by crwatch-testsupport).
#[cfg(feature = "demo-operator")]
mod live {
    use crwatch_testsupport::postgres::Postgres;
    use database_operator::config::Server;
    use database_operator::engine::{Engine, check_login};
    use database_operator::password::Password;
    use database_operator::run::RunOptions;
    use database_operator::types::DatabaseEngine;

    use super::*;

    /// The PostgreSQL server, through its administrator.
    struct Pg {
        admin: Engine,
    }

    impl DatabaseServer for Pg {
        fn check_login<'a>(
            &'a self,
            host: &'a str,
            port: u16,
            database: &'a str,
            user: &'a str,
            password: &'a str,
        ) -> BoxFuture<'a, anyhow::Result<()>> {
            Box::pin(async move {
                let password = Password::new(password);
                check_login(DatabaseEngine::PostgreSQL, host, port, database, user, &password).await?;
                Ok(())
            })
        }

        fn database_exists<'a>(&'a self, name: &'a str) -> BoxFuture<'a, anyhow::Result<bool>> {
            Box::pin(async move { Ok(self.admin.database_exists(name).await?) })
        }
    }

    /// Start PostgreSQL, run the operator on it through the demo's hook and play
    /// [`operator_script`]; without PostgreSQL, play the scripted demo instead.
    pub(super) async fn run(options: Options) -> anyhow::Result<()> {
        let say = Narrator::new();
        say.line("crwatch demo: starting a throwaway PostgreSQL for the Database operator");
        let pg = match Postgres::start().await {
            Ok(pg) => pg,
            Err(e) => {
                let reason = format!("{e:#}");
                say.line(&format!(
                    "crwatch demo: note: PostgreSQL cannot be started ({}), and the Database operator \
                     needs it.",
                    reason.lines().next().unwrap_or_default()
                ));
                say.line(
                    "crwatch demo: note: playing the scripted demo instead, in which the script writes \
                     status as the operator would (./scripts/demo installs PostgreSQL 15; --no-operator \
                     skips this attempt).",
                );
                return super::run_with(options).await;
            }
        };
        let outcome = with_postgres(options, &pg, &say).await;
        // A fast shutdown (the operator and the checks are done with it), then its directory goes.
        let _ = tokio::task::spawn_blocking(move || {
            let mut pg = pg;
            pg.stop();
        })
        .await;
        if outcome? == Ending::Done {
            say.line("crwatch demo: done; PostgreSQL stopped and its data removed.");
        }
        Ok(())
    }

    async fn with_postgres(options: Options, pg: &Postgres, say: &Narrator) -> anyhow::Result<Ending> {
        let admin = Engine::connect(DatabaseEngine::PostgreSQL, &pg.admin_url())?;
        let version = admin
            .server_version()
            .await
            .context("asking PostgreSQL for its version")?;
        say.line(&format!(
            "crwatch demo: PostgreSQL {version} at {}:{}; the Database operator runs in process and provisions on it",
            pg.host(),
            pg.port()
        ));
        let servers = vec![Server {
            name: "default".into(),
            engine: DatabaseEngine::PostgreSQL,
            admin_dsn: pg.admin_url(),
            host: pg.host().into(),
            port: pg.port(),
        }];
        let operator: Operator = Box::new(move |client, stop| {
            Box::pin(async move {
                let options = RunOptions {
                    metrics_addr: None,
                    probe_addr: None,
                    ..RunOptions::default()
                };
                database_operator::run::run(client, servers, options, stop.cancelled_owned()).await
            })
        });
        let db = Pg { admin };
        let options = Options {
            operator: Some(operator),
            ..options
        };
        let outcome = play_demo(options, &operator_script(), Some(&db), say).await;
        db.admin.close().await;
        outcome
    }
}
