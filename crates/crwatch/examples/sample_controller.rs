//! A sample controller in the style of client-go's sample-controller: a `Foo` custom resource
//! (`samplecontroller.k8s.io/v1alpha1`) owns a Deployment with `spec.replicas` replicas and
//! reports the Deployment's available replicas in its status.
//!
//! ```text
//! # against a running API server (crwatch-apiserver or a real cluster), until Ctrl-C:
//! cargo run -p crwatch --example sample_controller
//! # self-contained, with an embedded crwatch-apiserver, reconciling 2000 Foos and exiting:
//! cargo run --release -p crwatch --example sample_controller -- --embedded --objects 2000
//! # as one of several replicas sharing the Foos (a shard ring of Leases in `default`):
//! cargo run -p crwatch --example sample_controller -- --shard [--identity replica-a]
//! # with OpenTelemetry traces (watch event → enqueue → reconcile) to an OTLP/gRPC collector:
//! OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4317 \
//!   cargo run -p crwatch --features otel --example sample_controller -- --embedded --objects 10
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use crwatch::controller::{Action, Builder, Predicate, ReconcileError, Request};
use crwatch::events::{EventType, Recorder};
use crwatch::manager::{Manager, ManagerConfig};
use crwatch::store::{ObjectKey, Store};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::api::{Api, Patch, PatchParams, PostParams, ResourceExt};
use kube::runtime::wait::{await_condition, conditions};
use kube::{CustomResource, CustomResourceExt, Resource};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The desired state: a Deployment named `deploymentName` with `replicas` replicas.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, JsonSchema)]
#[kube(
    group = "samplecontroller.k8s.io",
    version = "v1alpha1",
    kind = "Foo",
    namespaced
)]
#[kube(status = "FooStatus", shortname = "foo")]
#[kube(printcolumn = r#"{"name":"Deployment","type":"string","jsonPath":".spec.deploymentName"}"#)]
#[kube(printcolumn = r#"{"name":"Available","type":"integer","jsonPath":".status.availableReplicas"}"#)]
#[serde(rename_all = "camelCase")]
pub struct FooSpec {
    /// Name of the Deployment to own.
    pub deployment_name: String,
    /// Replicas wanted.
    pub replicas: i32,
}

/// What the controller observed.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FooStatus {
    /// Available replicas of the owned Deployment.
    pub available_replicas: i32,
    /// The generation last acted on.
    pub observed_generation: Option<i64>,
}

/// The part of a Deployment the controller reads: its metadata (the owner references),
/// `spec.replicas` and `status.availableReplicas`. The Deployment cache decodes objects
/// straight into this type (serde skips the fields it does not name), so it never holds
/// pod templates or conditions: a few hundred bytes per Deployment instead of several KiB.
/// It is still the apps/v1 Deployment resource (`#[resource(inherit)]`) for the informer.
#[derive(Resource, Deserialize, Serialize, Clone, Debug)]
#[resource(inherit = "Deployment")]
pub struct DeploymentReplicas {
    pub metadata: ObjectMeta,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<ReplicasSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<AvailableStatus>,
}

/// `spec.replicas` of a Deployment.
#[derive(Deserialize, Serialize, Clone, Debug, Default)]
pub struct ReplicasSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
}

/// `status.availableReplicas` of a Deployment.
#[derive(Deserialize, Serialize, Clone, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct AvailableStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available_replicas: Option<i32>,
}

/// What the reconciler needs.
pub struct Ctx {
    client: kube::Client,
    deployments: Store<DeploymentReplicas>,
    recorder: Recorder,
}

/// The Deployment a Foo wants.
pub fn deployment_for(desired: &Foo) -> Deployment {
    // The Foo's uid, not its name (as upstream's sample-controller has it): a name may be 253
    // characters, a label value only 63, and a real server refuses a longer selector or
    // template label (422 "must be no more than 63 characters").
    let owner = desired.uid().unwrap_or_else(|| desired.name_any());
    let labels = std::collections::BTreeMap::from([
        ("app".to_string(), "nginx".to_string()),
        ("controller".to_string(), owner),
    ]);
    Deployment {
        metadata: ObjectMeta {
            name: Some(desired.spec.deployment_name.clone()),
            namespace: desired.namespace(),
            owner_references: desired.controller_owner_ref(&()).map(|r| vec![r]),
            ..Default::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(desired.spec.replicas),
            selector: LabelSelector {
                match_labels: Some(labels.clone()),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![Container {
                        name: "nginx".into(),
                        image: Some("nginx:latest".into()),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Make the Foo's Deployment exist with its replicas, and report its availability.
pub async fn reconcile(req: Request<Foo>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    // Owned Deployments go with their Foo through garbage collection; nothing to clean up.
    let Request::Apply(desired) = req else {
        return Ok(Action::done());
    };
    let ns = desired.namespace().unwrap_or_default();
    let reference = desired.object_ref(&());
    if desired.spec.deployment_name.is_empty() {
        ctx.recorder
            .publish(
                &reference,
                EventType::Warning,
                "InvalidSpec",
                "spec.deploymentName must be set",
                "Reconcile",
            )
            .await?;
        return Err(ReconcileError::terminal(anyhow::anyhow!(
            "spec.deploymentName must be set"
        )));
    }
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let key = ObjectKey::new(Some(&ns), &desired.spec.deployment_name);
    let available_of = |d: &Deployment| d.status.as_ref().and_then(|s| s.available_replicas).unwrap_or(0);
    let available = match ctx.deployments.get(&key) {
        Some(d) => {
            let owned = d
                .owner_references()
                .iter()
                .any(|r| Some(&r.uid) == desired.uid().as_ref());
            if !owned {
                let msg = format!("Resource {:?} already exists and is not managed by Foo", key.name);
                ctx.recorder
                    .publish(
                        &reference,
                        EventType::Warning,
                        "ErrResourceExists",
                        &msg,
                        "Reconcile",
                    )
                    .await?;
                return Err(ReconcileError::terminal(anyhow::anyhow!(msg)));
            }
            if d.spec.as_ref().and_then(|s| s.replicas) != Some(desired.spec.replicas) {
                // The cache holds only part of the Deployment, so a merge patch of the one
                // field rather than a replace of the cached copy (which would drop the rest).
                // crwatch::api rather than Api's methods: an answer that does not decode is
                // reported without its body ever reaching a log.
                let patch = serde_json::json!({"spec": {"replicas": desired.spec.replicas}});
                let patched = crwatch::api::patch(
                    &deployments,
                    &key.name,
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await?;
                available_of(&patched)
            } else {
                d.status.as_ref().and_then(|s| s.available_replicas).unwrap_or(0)
            }
        }
        None => {
            let created =
                match crwatch::api::create(&deployments, &PostParams::default(), &deployment_for(&desired))
                    .await
                {
                    Ok(d) => d,
                    // The cache had not seen it yet: take the server's copy.
                    Err(kube::Error::Api(e)) if e.code == 409 => {
                        crwatch::api::get(&deployments, &key.name).await?
                    }
                    Err(e) => return Err(e.into()),
                };
            ctx.recorder
                .publish(
                    &reference,
                    EventType::Normal,
                    "Synced",
                    "Foo synced successfully",
                    "Reconcile",
                )
                .await?;
            available_of(&created)
        }
    };
    let status = FooStatus {
        available_replicas: available,
        observed_generation: desired.metadata.generation,
    };
    let foos: Api<Foo> = Api::namespaced(ctx.client.clone(), &ns);
    write_status(&foos, &desired, &status).await?;
    Ok(Action::done())
}

/// Write `status` if it differs from what `object` has, on the condition that the object is
/// still the version it was computed from. Without the condition, a status computed from an
/// old copy (an old leader still running, a cache that lags) undoes a newer one, such as
/// `observedGeneration` going back from 2 to 1; and as the generation does not change, no
/// event ever makes the controller look again. With it, the write fails with 409 Conflict
/// and the reconcile is retried from a newer copy.
async fn write_status(foos: &Api<Foo>, object: &Foo, status: &FooStatus) -> Result<(), ReconcileError> {
    if object.status.as_ref() == Some(status) {
        return Ok(());
    }
    let patch = serde_json::json!({
        "metadata": {"resourceVersion": object.resource_version()},
        "status": status,
    });
    crwatch::api::patch_status(
        foos,
        &object.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}

fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let traces = init_tracing();
    let result = run().await;
    // Sends the spans still queued (at most 5 s).
    if let Some(traces) = traces {
        traces.shutdown().await;
    }
    result
}

/// With the `otel` feature and an endpoint in `OTEL_EXPORTER_OTLP_ENDPOINT`: crwatch's spans
/// exported over OTLP/gRPC (service `sample-controller` unless `OTEL_SERVICE_NAME` says
/// otherwise). Otherwise nothing, at no cost.
fn init_tracing() -> Option<crwatch::trace::TraceGuard> {
    let traces = crwatch::trace::init(crwatch::trace::TraceConfig::from_env("sample-controller"))
        .unwrap_or_else(|e| {
            eprintln!("warning: {e}; continuing without traces");
            None
        });
    #[cfg(feature = "otel")]
    if let Some(t) = &traces {
        use tracing_subscriber::Layer;
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        let crwatch_spans =
            tracing_subscriber::filter::Targets::new().with_target("crwatch", tracing::Level::INFO);
        tracing_subscriber::registry()
            .with(t.layer().with_filter(crwatch_spans))
            .init();
    }
    traces
}

async fn run() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let embedded = args.iter().any(|a| a == "--embedded");
    let objects: Option<usize> = args
        .iter()
        .position(|a| a == "--objects")
        .and_then(|i| args.get(i + 1))
        .map(|n| n.parse())
        .transpose()
        .context("--objects takes a number")?;
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let shard = args.iter().any(|a| a == "--shard").then(|| {
        let mut config = crwatch::shard::ShardConfig::new("default", "sample-controller");
        if let Some(id) = flag("--identity") {
            config.identity = id;
        }
        config
    });

    let server = if embedded {
        Some(
            crwatch_apiserver::TestServer::start()
                .await
                .context("starting the embedded API server")?,
        )
    } else {
        None
    };
    // A client from `crwatch::client` (as the operators use): each write it makes inside a
    // reconcile is tracked for read-your-own-writes and, with traces on, is a child span.
    let options = crwatch::client::ClientOptions::default();
    let client = match &server {
        Some(s) => crwatch::client::from_kubeconfig(Some(s.kubeconfig()), &options)
            .await
            .context("connecting to the embedded API server")?,
        None => crwatch::client::from_kubeconfig(None, &options)
            .await
            .context("connecting with KUBECONFIG")?,
    };
    install_crd(&client).await?;
    let mgr = manager(&client, shard)?;
    let Some(n) = objects else {
        println!("sample-controller running; Ctrl-C to stop");
        mgr.run(crwatch::manager::shutdown_signal()).await?;
        return Ok(());
    };
    // Benchmark mode: create n Foos, wait until every one reports status, print the figures.
    run_benchmark(mgr, client, n, embedded).await
}

/// Install the Foo CRD (if it is not there) and wait until it is established.
pub async fn install_crd(client: &kube::Client) -> anyhow::Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut crd = Foo::crd();
    // samplecontroller.k8s.io is a protected group: a real API server refuses its CRD (422)
    // without the API approval annotation. The upstream sample-controller marks it the same way.
    crd.metadata.annotations.get_or_insert_with(Default::default).insert(
        "api-approved.kubernetes.io".into(),
        "unapproved, experimental-only; please get an approval from Kubernetes API reviewers if you're trying to develop a CRD in the *.k8s.io or *.kubernetes.io groups".into(),
    );
    match crds.create(&PostParams::default(), &crd).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(e).context("installing the Foo CRD"),
    }
    let established = await_condition(
        crds,
        "foos.samplecontroller.k8s.io",
        conditions::is_crd_established(),
    );
    tokio::time::timeout(Duration::from_secs(30), established)
        .await
        .context("CRD not established")??;
    Ok(())
}

/// A manager running the Foo controller (with metrics and probes on random local ports), as a
/// replica of a shard ring when `shard` is given.
pub fn manager(client: &kube::Client, shard: Option<crwatch::shard::ShardConfig>) -> anyhow::Result<Manager> {
    let mut mgr = Manager::new(
        client.clone(),
        ManagerConfig {
            metrics_addr: Some(([127, 0, 0, 1], 0).into()),
            probe_addr: Some(([127, 0, 0, 1], 0).into()),
            ..ManagerConfig::default()
        },
    );
    let deployments = mgr.factory().all::<DeploymentReplicas>();
    let ctx = Arc::new(Ctx {
        // Its writes are noted, so a Foo's next reconcile waits until the caches show them.
        client: crwatch::ryow::tracking(client.clone()),
        deployments: deployments.store(),
        recorder: Recorder::new(client.clone(), "sample-controller"),
    });
    let mut builder = Builder::new("foo", mgr.factory().all::<Foo>())
        .owns(deployments)
        .with_predicate(Predicate::generation_changed().or(Predicate::labels_changed()))
        .concurrency(8)
        .metrics(mgr.metrics());
    if let Some(config) = shard {
        let identity = config.identity.clone();
        let ring = mgr.shard_ring(config).context("the shard ring")?;
        println!("sample-controller replica {identity} in shard ring sample-controller");
        builder = builder.shard(ring);
    }
    mgr.add(builder.build(reconcile, ctx));
    Ok(mgr)
}

async fn run_benchmark(mgr: Manager, client: kube::Client, n: usize, embedded: bool) -> anyhow::Result<()> {
    let stop = tokio_util::sync::CancellationToken::new();
    let stop2 = stop.clone();
    let running = tokio::spawn(mgr.run(async move { stop2.cancelled().await }));
    let foos: Api<Foo> = Api::namespaced(client.clone(), "default");
    let started = Instant::now();
    for i in 0..n {
        let desired = Foo::new(
            &format!("foo-{i}"),
            FooSpec {
                deployment_name: format!("foo-{i}-nginx"),
                replicas: 1 + (i % 3) as i32,
            },
        );
        crwatch::api::create(&foos, &PostParams::default(), &desired)
            .await
            .with_context(|| format!("creating foo-{i}"))?;
    }
    let created = started.elapsed();
    loop {
        let list = crwatch::api::list(&foos, &Default::default()).await?;
        let done = list
            .items
            .iter()
            .filter(|f| f.status.as_ref().and_then(|s| s.observed_generation).is_some())
            .count();
        if done == n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let wall = started.elapsed();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let owned = crwatch::api::list(&deployments, &Default::default())
        .await?
        .items
        .len();
    println!(
        "reconciled {n} Foos ({owned} Deployments) in {:.2} s (creating them took {:.2} s)",
        wall.as_secs_f64(),
        created.as_secs_f64()
    );
    match peak_rss_mib() {
        Some(mib) if embedded => {
            println!("peak RSS {mib:.1} MiB (controller and embedded API server in one process)")
        }
        Some(mib) => println!("peak RSS {mib:.1} MiB"),
        None => println!("peak RSS unavailable (no /proc)"),
    }
    stop.cancel();
    running.await??;
    Ok(())
}
