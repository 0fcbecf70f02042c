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

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::Duration;

use anyhow::Context;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Namespace;
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

/// Run the demo.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    run_with(Options {
        pace: args.pace.into(),
        keep: args.keep,
        operator: None,
    })
    .await
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

/// Narration on stderr, dimmed on a terminal.
struct Narrator {
    dim: bool,
}

impl Narrator {
    fn line(&self, text: &str) {
        if self.dim {
            eprintln!("{}{text}{}", ansi::DIM, ansi::RESET);
        } else {
            eprintln!("{text}");
        }
    }

    fn step(&self, text: &str) {
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
        }
    }
}

fn resource_version(o: &DynamicObject) -> String {
    o.metadata.resource_version.clone().unwrap_or_default()
}

/// Narrate and carry out one step; what the watch will show for it.
async fn perform(client: &Client, step: &Step, operator: bool, say: &Narrator) -> anyhow::Result<Expect> {
    Ok(match step {
        Step::Namespace(name) => {
            say.step(&format!("kubectl create namespace {name}"));
            let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}}))?;
            Api::<Namespace>::all(client.clone())
                .create(&PostParams::default(), &ns)
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
            let existed = api.get_opt(&at.name).await?.is_some();
            let obj: DynamicObject = serde_json::from_value(manifest.clone())?;
            let out = api
                .patch(
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
            let out = database_api(client, &at.namespace)
                .patch(&at.name, &PatchParams::default(), &Patch::Merge(patch))
                .await
                .with_context(|| format!("patching {}/{}", at.namespace, at.name))?;
            Expect::Version(at.clone(), resource_version(&out), ChangeKind::Modified)
        }
        Step::Status { at, status } if operator => {
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
            let out = database_api(client, &at.namespace)
                .patch_status(&at.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .with_context(|| format!("patching the status of {}/{}", at.namespace, at.name))?;
            Expect::Version(at.clone(), resource_version(&out), ChangeKind::Modified)
        }
        Step::Delete(at) => {
            say.step(&format!("kubectl delete db {}{}", at.name, at.ns_flag()));
            database_api(client, &at.namespace)
                .delete(&at.name, &DeleteParams::default())
                .await
                .with_context(|| format!("deleting {}/{}", at.namespace, at.name))?;
            Expect::Version(at.clone(), String::new(), ChangeKind::Deleted)
        }
    })
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

/// Run the script against `client`, waiting for the watch after every step.
async fn play(
    client: &Client,
    steps: &[Step],
    operator: bool,
    pace: Duration,
    printed: &mut Printed,
    say: &Narrator,
) -> anyhow::Result<()> {
    printed.wait_for(&Expect::Synced, STEP_WAIT).await?;
    for (i, step) in steps.iter().enumerate() {
        if i > 0 && !pace.is_zero() {
            tokio::time::sleep(pace).await;
        }
        let expect = perform(client, step, operator, say).await?;
        let within = if matches!(expect, Expect::Ready(_)) {
            OPERATOR_WAIT
        } else {
            STEP_WAIT
        };
        printed.wait_for(&expect, within).await?;
    }
    Ok(())
}

/// A client for the embedded server, from the kubeconfig it writes.
async fn client_for(server: &crwatch_apiserver::ApiServer) -> anyhow::Result<Client> {
    let kc = Kubeconfig::from_yaml(&server.kubeconfig_yaml()).context("reading the demo kubeconfig")?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .context("loading the demo kubeconfig")?;
    Client::try_from(config).context("creating the client")
}

/// Run the demo with an optional in-process operator.
pub async fn run_with(options: Options) -> anyhow::Result<()> {
    let say = Narrator {
        dim: colour_for(std::io::stderr().is_terminal()),
    };
    let server = crwatch_apiserver::ApiServer::start(crwatch_apiserver::Config {
        http_port: None,
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
        play(&client, &script(), has_operator, options.pace, &mut printed, &say).await?;
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
        say.line("crwatch demo: done.");
        anyhow::Ok(())
    };
    let outcome = tokio::select! {
        biased;
        _ = tokio::signal::ctrl_c() => Ok(()),
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
        } => r.map(|_| ()),
    };
    stop.cancel();
    drop(kubeconfig_dir);
    server.shutdown().await.context("stopping the API server")?;
    outcome
}
