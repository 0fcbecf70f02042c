//! The sample controller written with kube-runtime, the peer of crwatch's
//! `examples/sample_controller.rs` in `crwatch-bench --only sample`: a `Foo`
//! (`samplecontroller.k8s.io/v1alpha1`) owns a Deployment with `spec.replicas` replicas and
//! reports the Deployment's available replicas in its status.
//!
//! Idiomatic kube-runtime: a [`Controller`] over Foos that `owns` Deployments, 8 concurrent
//! reconciles (as the crwatch example), Events through kube-runtime's `Recorder`, and the same
//! status write (a merge patch conditioned on the resourceVersion the status was computed
//! from, only when it changes). kube-runtime's stable API has no lister for owned objects
//! (`owns` watches them only to map events to owners; a shared store needs the unstable
//! `owns_stream`), so a reconcile reads its Deployment with a GET, as kube-rs' examples do.
//!
//! ```text
//! # against the API server in KUBECONFIG, until Ctrl-C or SIGTERM:
//! cargo run --release -p crwatch-bench --bin sample_kube
//! # create 2000 Foos, wait until every one reports its Deployment available, print figures:
//! cargo run --release -p crwatch-bench --bin sample_kube -- --objects 2000
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::api::{Api, Patch, PatchParams, PostParams, ResourceExt};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::wait::{await_condition, conditions};
use kube::runtime::watcher;
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

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("spec.deploymentName must be set")]
    InvalidSpec,
    #[error("Resource {0:?} already exists and is not managed by Foo")]
    NotOwned(String),
    #[error("{0}")]
    Kube(#[from] kube::Error),
}

/// What the reconciler needs.
struct Ctx {
    client: kube::Client,
    recorder: Recorder,
}

/// The Deployment a Foo wants (the same object as the crwatch example's).
fn deployment_for(desired: &Foo) -> Deployment {
    // The Foo's uid: a label value may be only 63 characters, a name 253.
    let owner = desired.uid().unwrap_or_else(|| desired.name_any());
    let labels = BTreeMap::from([
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

async fn publish(ctx: &Ctx, desired: &Foo, type_: EventType, reason: &str, note: &str) -> Result<(), Error> {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note.into()),
        action: "Reconcile".into(),
        secondary: None,
    };
    ctx.recorder.publish(&event, &desired.object_ref(&())).await?;
    Ok(())
}

/// Make the Foo's Deployment exist with its replicas, and report its availability.
async fn reconcile(desired: Arc<Foo>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    // Owned Deployments go with their Foo through garbage collection; nothing to clean up.
    if desired.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = desired.namespace().unwrap_or_default();
    if desired.spec.deployment_name.is_empty() {
        publish(
            &ctx,
            &desired,
            EventType::Warning,
            "InvalidSpec",
            "spec.deploymentName must be set",
        )
        .await?;
        return Err(Error::InvalidSpec);
    }
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let name = &desired.spec.deployment_name;
    let deployment = match deployments.get_opt(name).await? {
        Some(mut d) => {
            let owned = d
                .owner_references()
                .iter()
                .any(|r| Some(&r.uid) == desired.uid().as_ref());
            if !owned {
                let e = Error::NotOwned(name.clone());
                publish(
                    &ctx,
                    &desired,
                    EventType::Warning,
                    "ErrResourceExists",
                    &e.to_string(),
                )
                .await?;
                return Err(e);
            }
            let replicas = d.spec.as_ref().and_then(|s| s.replicas);
            if replicas != Some(desired.spec.replicas) {
                if let Some(spec) = d.spec.as_mut() {
                    spec.replicas = Some(desired.spec.replicas);
                }
                deployments.replace(name, &PostParams::default(), &d).await?
            } else {
                d
            }
        }
        None => {
            let created = match deployments
                .create(&PostParams::default(), &deployment_for(&desired))
                .await
            {
                Ok(d) => d,
                // Created by an earlier reconcile the GET raced with: take the server's copy.
                Err(kube::Error::Api(e)) if e.code == 409 => deployments.get(name).await?,
                Err(e) => return Err(e.into()),
            };
            publish(
                &ctx,
                &desired,
                EventType::Normal,
                "Synced",
                "Foo synced successfully",
            )
            .await?;
            created
        }
    };
    let available = deployment
        .status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0);
    let status = FooStatus {
        available_replicas: available,
        observed_generation: desired.metadata.generation,
    };
    // Written only when it changes, and only onto the version it was computed from: a 409
    // means a newer Foo is on its way, and its event reconciles again.
    if desired.status.as_ref() != Some(&status) {
        let foos: Api<Foo> = Api::namespaced(ctx.client.clone(), &ns);
        let patch = serde_json::json!({
            "metadata": {"resourceVersion": desired.resource_version()},
            "status": status,
        });
        foos.patch_status(
            &desired.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    }
    Ok(Action::await_change())
}

fn error_policy(_desired: Arc<Foo>, error: &Error, _ctx: Arc<Ctx>) -> Action {
    match error {
        // Nothing a retry changes: wait for the Foo (or its Deployment) to change.
        Error::InvalidSpec | Error::NotOwned(_) => Action::await_change(),
        Error::Kube(_) => Action::requeue(Duration::from_secs(1)),
    }
}

/// Install the Foo CRD (if it is not there) and wait until it is established.
async fn install_crd(client: &kube::Client) -> anyhow::Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut crd = Foo::crd();
    // samplecontroller.k8s.io is a protected group: a real API server refuses its CRD (422)
    // without the API approval annotation, as upstream's sample-controller has it.
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

/// The controller, until `shutdown` resolves.
async fn run_controller(
    client: kube::Client,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        recorder: Recorder::new(client.clone(), Reporter::from("sample-controller")),
    });
    Controller::new(Api::<Foo>::all(client.clone()), watcher::Config::default())
        .owns(Api::<Deployment>::all(client), watcher::Config::default())
        .with_config(controller::Config::default().concurrency(8))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "reconcile failed");
            }
        })
        .await;
}

/// SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let objects: Option<usize> = args
        .iter()
        .position(|a| a == "--objects")
        .and_then(|i| args.get(i + 1))
        .map(|n| n.parse())
        .transpose()
        .context("--objects takes a number")?;
    let client = kube::Client::try_default()
        .await
        .context("connecting with KUBECONFIG")?;
    install_crd(&client).await?;
    let Some(n) = objects else {
        println!("sample-controller running; Ctrl-C to stop");
        run_controller(client, shutdown_signal()).await;
        return Ok(());
    };
    // Benchmark mode: create n Foos, wait until every one reports status, print the figures.
    let stop = tokio_util::sync::CancellationToken::new();
    let stopped = stop.clone();
    let running = tokio::spawn(run_controller(client.clone(), async move {
        stopped.cancelled().await
    }));
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
        foos.create(&PostParams::default(), &desired)
            .await
            .with_context(|| format!("creating foo-{i}"))?;
    }
    let created = started.elapsed();
    loop {
        let done = foos
            .list(&Default::default())
            .await?
            .items
            .iter()
            .filter(|f| f.status.as_ref().map(|s| s.available_replicas) == Some(f.spec.replicas))
            .count();
        if done == n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "reconciled {n} Foos in {:.2} s (creating them took {:.2} s)",
        started.elapsed().as_secs_f64(),
        created.as_secs_f64()
    );
    match peak_rss_mib() {
        Some(mib) => println!("peak RSS {mib:.1} MiB"),
        None => println!("peak RSS unavailable (no /proc)"),
    }
    stop.cancel();
    running.await.context("the controller task")?;
    Ok(())
}
