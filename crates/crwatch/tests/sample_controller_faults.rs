//! The sample controller (examples/sample_controller.rs) under the Sieve/Acto fault schedules
//! of `crwatch::testing`: crashes around each of its writes, stale reads, and coalesced
//! events, while a user creates Foos, scales one, and deletes and re-creates another under
//! the same name (its old Deployment still waiting for garbage collection).

#[path = "../examples/sample_controller.rs"]
#[allow(dead_code)]
mod sample;

use std::time::Duration;

use crwatch::testing::{Env, FaultTest};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use sample::{Foo, FooSpec};

fn foo(name: &str, deployment: &str, replicas: i32) -> Foo {
    Foo::new(
        name,
        FooSpec {
            deployment_name: deployment.into(),
            replicas,
        },
    )
}

async fn create(env: Env, name: &str, deployment: &str, replicas: i32) -> anyhow::Result<()> {
    let api: Api<Foo> = Api::namespaced(env.client, &env.namespace);
    api.create(&PostParams::default(), &foo(name, deployment, replicas))
        .await?;
    Ok(())
}

/// A Deployment as `name/replicas/owner`, what a Foo wants as the same.
fn id(name: &str, replicas: i32, owner: &str) -> String {
    format!("{name}/{replicas}/{owner}")
}

fn test() -> FaultTest<Foo> {
    FaultTest::<Foo>::new("sample")
        .server(|| async {
            let server = crwatch_apiserver::TestServer::start()
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            sample::install_crd(&server.client()).await?;
            Ok(server)
        })
        .controller(|client| async move {
            let mgr = match sample::manager(&client, None) {
                Ok(m) => m,
                Err(e) => return tracing::error!(error = %e, "sample controller not built"),
            };
            if let Err(e) = mgr.run(std::future::pending::<()>()).await {
                tracing::error!(error = %e, "sample controller stopped");
            }
        })
        .step("create foo a", |env| create(env, "a", "a-nginx", 1))
        .step("create foo b", |env| create(env, "b", "b-nginx", 2))
        .step("scale foo a to 3", |env| async move {
            let api: Api<Foo> = Api::namespaced(env.client, &env.namespace);
            let patch = serde_json::json!({"spec": {"replicas": 3}});
            api.patch("a", &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            Ok(())
        })
        .step("delete foo b", |env| async move {
            let api: Api<Foo> = Api::namespaced(env.client, &env.namespace);
            api.delete("b", &DeleteParams::default()).await?;
            Ok(())
        })
        .step("re-create foo b", |env| create(env, "b", "b-nginx", 1))
        .desired(|env| async move {
            let api: Api<Foo> = Api::namespaced(env.client, &env.namespace);
            let foos = api.list(&Default::default()).await.map_err(|e| e.to_string())?;
            for f in foos.items {
                let seen = f.status.as_ref().and_then(|s| s.observed_generation);
                if seen != f.metadata.generation {
                    return Err(format!(
                        "Foo {:?} observed generation {seen:?} of {:?}",
                        f.metadata.name, f.metadata.generation
                    ));
                }
            }
            Ok(())
        })
        .owns(|f: &Foo| {
            let name = f.metadata.name.clone().unwrap_or_default();
            vec![id(&f.spec.deployment_name, f.spec.replicas, &name)]
        })
        .external(|env| async move {
            let api: Api<Deployment> = Api::namespaced(env.client.clone(), &env.namespace);
            let foos: Api<Foo> = Api::namespaced(env.client, &env.namespace);
            let uids: std::collections::BTreeMap<String, String> = foos
                .list(&Default::default())
                .await?
                .items
                .into_iter()
                .filter_map(|f| Some((f.metadata.uid?, f.metadata.name?)))
                .collect();
            let mut out = Vec::new();
            for d in api.list(&Default::default()).await?.items {
                // Owned by a Foo that is gone: the garbage collector's, not a leak yet.
                let owner = d
                    .metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .find(|r| r.controller == Some(true))
                    .map(|r| {
                        uids.get(&r.uid)
                            .cloned()
                            .unwrap_or_else(|| format!("gone:{}", r.uid))
                    })
                    .unwrap_or_default();
                let replicas = d.spec.and_then(|s| s.replicas).unwrap_or(1);
                out.push(id(&d.metadata.name.unwrap_or_default(), replicas, &owner));
            }
            Ok(out)
        })
        .max_crash_points(40)
        .stale_consistent_reads(true)
        .step_delay(Duration::from_millis(100))
        .converge_timeout(Duration::from_secs(20))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sample_controller_converges_under_faults() {
    let report = test().run().await.unwrap_or_else(|e| panic!("{e}"));
    for r in &report.runs {
        eprintln!("{} fired={} took={:?}", r.schedule, r.fired, r.took);
    }
    assert!(report.baseline_writes > 0, "{report:?}");
    assert!(
        report.runs.iter().filter(|r| r.fired).count() >= 4,
        "the faults fired: {report:#?}"
    );
}

/// What the controller creates must be valid on a real server, for any valid Foo: a Foo's name
/// may be up to 253 characters, a label value only 63.
#[tokio::test]
async fn the_deployment_of_a_foo_with_a_long_name_is_valid() {
    let server = crwatch_apiserver::TestServer::start().await.expect("server");
    sample::install_crd(&server.client()).await.expect("CRD");
    let foos: Api<Foo> = Api::namespaced(server.client(), "default");
    let name = format!("a-foo-{}", "x".repeat(90));
    let created = foos
        .create(&PostParams::default(), &foo(&name, "long-nginx", 2))
        .await
        .expect("a Foo with a long name is valid");
    let deployment = sample::deployment_for(&created);
    let spec = deployment.spec.clone().expect("spec");
    assert_eq!(
        spec.selector.match_labels,
        spec.template.metadata.clone().and_then(|m| m.labels),
        "the selector matches the Pod template's labels"
    );
    // The real server's rule for label values (IsValidLabelValue), in the selector and the
    // template alike.
    let valid = valid_label_values(&spec.selector.match_labels.clone().unwrap_or_default());
    assert!(valid, "label values are valid: {:?}", spec.selector.match_labels);
    let deployments: Api<Deployment> = Api::namespaced(server.client(), "default");
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .expect("the server accepts the Deployment");
}

/// Every value at most 63 characters, empty or alphanumeric at both ends with `-`, `_`, `.`
/// and alphanumerics between.
fn valid_label_values(labels: &std::collections::BTreeMap<String, String>) -> bool {
    labels.values().all(|v| {
        let ends = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
        v.len() <= 63
            && (v.is_empty()
                || (ends(v.chars().next())
                    && ends(v.chars().last())
                    && v.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))))
    })
}
