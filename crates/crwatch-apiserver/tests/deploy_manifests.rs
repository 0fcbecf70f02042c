//! The manifests in `deploy/` (the Database CRD, RBAC, the operator's namespace, ConfigMap,
//! Service and Deployment, and the webhook configurations) applied with the real kubectl, as
//! a user installs the operator: every object is accepted, and on the in-process server the
//! workload simulator runs the Deployment (ReplicaSet, two Pods Ready) until kubectl sees it
//! Available. On a real cluster (`CRWATCH_TEST_KUBECONFIG`) the same manifests go through a
//! server-side dry run: its validation, defaulting and admission without installing an
//! operator whose image and Secrets are not there (nor webhooks that would refuse every
//! Database write of the other tests).

mod common;

use std::path::PathBuf;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};

const NS: &str = "database-operator";

fn deploy_dir() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deploy_manifests_apply_and_the_operator_becomes_available() {
    let dir = deploy_dir();
    let dir = dir.to_str().expect("a UTF-8 path");
    for t in common::targets().await {
        if t.server.is_none() {
            // A dry run cannot create the namespace the other objects live in.
            t.fixed_namespace(NS).await;
            let out = t.kubectl_ok(&["apply", "--dry-run=server", "-f", dir], None);
            for object in [
                "customresourcedefinition.apiextensions.k8s.io/databases.stable.example.com",
                "deployment.apps/database-operator",
                "clusterrole.rbac.authorization.k8s.io/database-operator",
                "mutatingwebhookconfiguration.admissionregistration.k8s.io/database-operator",
                "validatingwebhookconfiguration.admissionregistration.k8s.io/database-operator",
            ] {
                assert!(out.contains(object), "[{}] {object} in:\n{out}", t.name);
            }
            t.cleanup().await;
            continue;
        }
        let out = t.kubectl_ok(&["apply", "-f", dir], None);
        for object in [
            "customresourcedefinition.apiextensions.k8s.io/databases.stable.example.com created",
            "namespace/database-operator created",
            "configmap/database-operator-config created",
            "service/database-operator-webhook created",
            "deployment.apps/database-operator created",
            "serviceaccount/database-operator created",
            "clusterrole.rbac.authorization.k8s.io/database-operator created",
            "clusterrolebinding.rbac.authorization.k8s.io/database-operator created",
            "role.rbac.authorization.k8s.io/database-operator-leader-election created",
            "rolebinding.rbac.authorization.k8s.io/database-operator-leader-election created",
            "mutatingwebhookconfiguration.admissionregistration.k8s.io/database-operator created",
            "validatingwebhookconfiguration.admissionregistration.k8s.io/database-operator created",
        ] {
            assert!(out.contains(object), "[{}] {object} in:\n{out}", t.name);
        }
        // The Secrets deploy/README.md has the user create.
        t.kubectl_ok(
            &[
                "create",
                "secret",
                "generic",
                "database-operator-admin",
                "-n",
                NS,
                "--from-literal=default=postgres://admin:secret@db.example:5432/postgres",
            ],
            None,
        );
        t.kubectl_ok(
            &[
                "create",
                "secret",
                "generic",
                "database-operator-webhook-tls",
                "-n",
                NS,
                "--from-literal=tls.crt=cert",
                "--from-literal=tls.key=key",
                "--from-literal=ca.crt=ca",
            ],
            None,
        );
        let rollout = t.kubectl_ok(
            &[
                "rollout",
                "status",
                "deployment/database-operator",
                "-n",
                NS,
                "--timeout=60s",
            ],
            None,
        );
        assert!(
            rollout.contains("successfully rolled out"),
            "[{}] {rollout}",
            t.name
        );
        let waited = t.kubectl_ok(
            &[
                "wait",
                "--for=condition=Available",
                "deployment/database-operator",
                "-n",
                NS,
                "--timeout=60s",
            ],
            None,
        );
        assert!(waited.contains("condition met"), "[{}] {waited}", t.name);

        // As the real controllers leave it: a ReplicaSet owned by the Deployment, two Ready
        // Pods owned by the ReplicaSet, and the Deployment's status counting them.
        let deployments: Api<Deployment> = Api::namespaced(t.client.clone(), NS);
        let d = deployments.get("database-operator").await.expect("deployment");
        let status = d.status.clone().expect("status");
        assert_eq!(status.ready_replicas, Some(2), "{status:?}");
        assert_eq!(status.available_replicas, Some(2), "{status:?}");
        assert_eq!(status.updated_replicas, Some(2), "{status:?}");
        assert_eq!(status.observed_generation, d.metadata.generation);
        let uid = d.metadata.uid.clone().expect("uid");
        let owned_by =
            |refs: &Option<Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>>,
             uid: &str| {
                refs.iter()
                    .flatten()
                    .any(|r| r.uid == uid && r.controller == Some(true))
            };
        let sets: Api<ReplicaSet> = Api::namespaced(t.client.clone(), NS);
        let rs: Vec<ReplicaSet> = sets
            .list(&ListParams::default())
            .await
            .expect("replicasets")
            .items
            .into_iter()
            .filter(|r| owned_by(&r.metadata.owner_references, &uid))
            .collect();
        assert_eq!(rs.len(), 1, "one ReplicaSet for the Deployment");
        let rs_uid = rs[0].metadata.uid.clone().expect("uid");
        let pods: Api<Pod> = Api::namespaced(t.client.clone(), NS);
        let ready: Vec<Pod> = pods
            .list(&ListParams::default().labels("app.kubernetes.io/name=database-operator"))
            .await
            .expect("pods")
            .items
            .into_iter()
            .filter(|p| owned_by(&p.metadata.owner_references, &rs_uid))
            .filter(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .collect();
        assert_eq!(ready.len(), 2, "two Ready Pods of the ReplicaSet");
        t.cleanup().await;
    }
}
