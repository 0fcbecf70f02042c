//! CRDs in protected API groups (`k8s.io`, `kubernetes.io` and their subdomains) need the
//! `api-approved.kubernetes.io` annotation, as on the real server (validateAPIApproval and the
//! KubernetesAPIApprovalPolicyConformant condition): a test server that accepted them hid a
//! sample controller that failed on a real cluster.

use crwatch_apiserver::TestServer;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use serde_json::json;

fn crd(group: &str, annotation: Option<&str>) -> CustomResourceDefinition {
    let mut meta = json!({"name": format!("foos.{group}")});
    if let Some(a) = annotation {
        meta["annotations"] = json!({"api-approved.kubernetes.io": a});
    }
    serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": meta,
        "spec": {"group": group, "scope": "Namespaced",
            "names": {"plural": "foos", "singular": "foo", "kind": "Foo"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object",
                    "x-kubernetes-preserve-unknown-fields": true}}}]}
    }))
    .expect("crd")
}

fn condition(c: &CustomResourceDefinition) -> Option<(String, String, String)> {
    c.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "KubernetesAPIApprovalPolicyConformant")
        .map(|c| {
            (
                c.status.clone(),
                c.reason.clone().unwrap_or_default(),
                c.message.clone().unwrap_or_default(),
            )
        })
}

#[tokio::test]
async fn protected_groups_need_the_approval_annotation() {
    let server = TestServer::start().await.unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(server.client());
    let pp = PostParams::default();

    let err = crds
        .create(&pp, &crd("samplecontroller.k8s.io", None))
        .await
        .unwrap_err();
    let kube::Error::Api(e) = err else { panic!("{err}") };
    assert_eq!(e.code, 422);
    assert_eq!(
        e.message,
        "CustomResourceDefinition.apiextensions.k8s.io \"foos.samplecontroller.k8s.io\" is invalid: metadata.annotations[api-approved.kubernetes.io]: Required value: protected groups must have approval annotation \"api-approved.kubernetes.io\", see https://github.com/kubernetes/enhancements/pull/1111"
    );

    let err = crds
        .create(&pp, &crd("x.kubernetes.io", Some("bad value")))
        .await
        .unwrap_err();
    let kube::Error::Api(e) = err else { panic!("{err}") };
    assert_eq!(e.code, 422);
    assert!(
        e.message.ends_with(
            "metadata.annotations[api-approved.kubernetes.io]: Invalid value: \"bad value\": protected groups must have approval annotation \"api-approved.kubernetes.io\" with either a URL or a reason starting with \"unapproved\", see https://github.com/kubernetes/enhancements/pull/1111"
        ),
        "{}",
        e.message
    );

    // A reason starting with "unapproved" is let in, and the condition says so.
    let made = crds
        .create(&pp, &crd("k8s.io", Some("unapproved, testing only")))
        .await
        .unwrap();
    assert_eq!(
        condition(&made),
        Some((
            "False".into(),
            "UnapprovedAnnotation".into(),
            "not approved: \"unapproved, testing only\"".into()
        ))
    );
    let url = "https://github.com/kubernetes/kubernetes/pull/79724";
    let made = crds.create(&pp, &crd("a.k8s.io", Some(url))).await.unwrap();
    assert_eq!(
        condition(&made),
        Some((
            "True".into(),
            "ApprovedAnnotation".into(),
            format!("approved in {url}")
        ))
    );
    // Other groups need nothing and get no such condition; `notk8s.io` is not a subdomain.
    let made = crds.create(&pp, &crd("notk8s.io", None)).await.unwrap();
    assert_eq!(condition(&made), None);
}
