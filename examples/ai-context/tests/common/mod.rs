//! What the example's tests share: the CRDs installed on crwatch-apiserver.

use std::time::Duration;

use ai_context::types::{ModelConfig, PromptTemplate};
use crwatch_apiserver::TestServer;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use serde_json::json;

/// Install the CRDs exactly as `deploy/ai-context/` holds them and wait until they are served.
pub async fn install(server: &TestServer, ns: &str) -> (Api<PromptTemplate>, Api<ModelConfig>) {
    let crds: Api<CustomResourceDefinition> = Api::all(server.client());
    for file in ["prompttemplates-crd.yaml", "modelconfigs-crd.yaml"] {
        let path = format!("{}/../../deploy/ai-context/{file}", env!("CARGO_MANIFEST_DIR"));
        let yaml = std::fs::read_to_string(&path).unwrap();
        let crd: CustomResourceDefinition = serde_saphyr::from_str(&yaml).unwrap();
        crds.create(&PostParams::default(), &crd)
            .await
            .unwrap_or_else(|e| panic!("the API server refuses {file}: {e}"));
    }
    let nss: Api<Namespace> = Api::all(server.client());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap(),
    )
    .await
    .unwrap();
    let pts: Api<PromptTemplate> = Api::namespaced(server.client(), ns);
    let mcs: Api<ModelConfig> = Api::namespaced(server.client(), ns);
    let served = async {
        while pts.list(&Default::default()).await.is_err() || mcs.list(&Default::default()).await.is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), served)
        .await
        .expect("the CRDs are served within 10 s");
    (pts, mcs)
}
