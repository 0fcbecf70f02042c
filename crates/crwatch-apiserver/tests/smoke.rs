//! The smallest end-to-end check: start, authenticate, create and read back over HTTPS.

mod common;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_and_get_a_configmap_with_kube_and_kubectl() {
    for t in common::targets().await {
        let ns = t.namespace("smoke").await;
        let cms: Api<ConfigMap> = Api::namespaced(t.client.clone(), &ns);
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some("hello".into());
        cm.data = Some([("k".to_string(), "v".to_string())].into());
        let created = cms.create(&PostParams::default(), &cm).await.unwrap();
        assert!(created.metadata.uid.is_some());
        let out = t.kubectl_ok(
            &["get", "configmap", "hello", "-n", &ns, "-o", "jsonpath={.data.k}"],
            None,
        );
        assert_eq!(out, "v");
        t.cleanup().await;
    }
}
