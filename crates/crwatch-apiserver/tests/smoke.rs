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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_only_requests_get_partial_object_metadata() {
    use futures::{StreamExt, TryStreamExt};
    use kube::api::{ListParams, WatchEvent, WatchParams};
    for t in common::targets().await {
        let ns = t.namespace("meta").await;
        let cms: Api<ConfigMap> = Api::namespaced(t.client.clone(), &ns);
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some("m".into());
        cm.data = Some([("big".to_string(), "x".repeat(1000))].into());
        cms.create(&PostParams::default(), &cm).await.unwrap();
        let one = cms.get_metadata("m").await.unwrap();
        assert_eq!(
            one.types.as_ref().map(|t| t.kind.as_str()),
            Some("PartialObjectMetadata")
        );
        assert_eq!(one.metadata.name.as_deref(), Some("m"));
        let list = cms.list_metadata(&ListParams::default()).await.unwrap();
        assert_eq!(list.types.kind, "PartialObjectMetadataList");
        assert_eq!(list.items.len(), 1);
        let rv = list.metadata.resource_version.clone().unwrap();
        let mut stream = cms
            .watch_metadata(&WatchParams::default(), &rv)
            .await
            .unwrap()
            .boxed();
        cms.delete("m", &Default::default()).await.unwrap();
        match stream.try_next().await.unwrap() {
            Some(WatchEvent::Deleted(o)) => {
                assert_eq!(
                    o.types.as_ref().map(|t| t.kind.as_str()),
                    Some("PartialObjectMetadata")
                )
            }
            other => panic!("expected DELETED, got {other:?}"),
        }
        t.cleanup().await;
    }
}
