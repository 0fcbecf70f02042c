//! The generated CRDs (`deploy/ai-context/`) on crwatch-apiserver: they install, serve the
//! example objects as the Rust types write them, apply their defaults, and refuse what the
//! schema rules out (temperature, top-p, max tokens, weights, variable names).

use std::time::Duration;

mod common;

use ai_context::types::PromptTemplate;
use common::install;
use crwatch_apiserver::TestServer;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

fn model_config(spec: Value) -> Value {
    json!({"apiVersion": "ai.crwatch.io/v1alpha1", "kind": "ModelConfig",
           "metadata": {"name": "m"}, "spec": spec})
}

async fn create_raw(server: &TestServer, ns: &str, plural: &str, body: Value) -> Result<Value, String> {
    let ar = kube::api::ApiResource {
        group: "ai.crwatch.io".into(),
        version: "v1alpha1".into(),
        api_version: "ai.crwatch.io/v1alpha1".into(),
        kind: body["kind"].as_str().unwrap().into(),
        plural: plural.into(),
    };
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(server.client(), ns, &ar);
    let obj: kube::api::DynamicObject = serde_json::from_value(body).unwrap();
    api.create(&PostParams::default(), &obj)
        .await
        .map(|o| serde_json::to_value(o).unwrap())
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn the_crds_install_and_serve_the_examples_with_defaults() {
    let server = TestServer::start().await.unwrap();
    let ns = "ai-crd";
    let (pts, mcs) = install(&server, ns).await;
    let pt: PromptTemplate = serde_json::from_value(json!({
        "apiVersion": "ai.crwatch.io/v1alpha1", "kind": "PromptTemplate",
        "metadata": {"name": "support"},
        "spec": {"template": "You are {{persona}}. {{question}}",
                 "variables": [{"name": "persona", "default": "kind"}, {"name": "question"}]}
    }))
    .unwrap();
    let created = pts.create(&PostParams::default(), &pt).await.unwrap();
    assert_eq!(created.spec, pt.spec);
    let created = create_raw(
        &server,
        ns,
        "modelconfigs",
        model_config(json!({"model": "llama", "maxTokens": 64, "routes": [{"backend": "a", "weight": 1}]})),
    )
    .await
    .unwrap();
    // Defaults from the schema.
    assert_eq!(created["spec"]["temperature"], 1.0);
    assert_eq!(created["spec"]["topP"], 1.0);
    let typed = mcs.get("m").await.unwrap();
    assert_eq!(typed.spec.max_tokens, 64);
    assert!(typed.spec.check().is_ok());
}

#[tokio::test]
async fn the_schema_refuses_out_of_range_settings() {
    let server = TestServer::start().await.unwrap();
    let ns = "ai-crd-invalid";
    install(&server, ns).await;
    for (spec, field) in [
        (
            json!({"model": "x", "maxTokens": 1, "temperature": 2.5}),
            "temperature",
        ),
        (
            json!({"model": "x", "maxTokens": 1, "temperature": -0.1}),
            "temperature",
        ),
        (json!({"model": "x", "maxTokens": 1, "topP": 1.5}), "topP"),
        (json!({"model": "x", "maxTokens": 0}), "maxTokens"),
        (json!({"model": "", "maxTokens": 1}), "model"),
        (json!({"model": "x"}), "maxTokens"),
        (
            json!({"model": "x", "maxTokens": 1, "routes": [{"backend": "a", "weight": 101}]}),
            "weight",
        ),
        (
            json!({"model": "x", "maxTokens": 1, "routes": [{"backend": "a", "weight": 0}]}),
            "at least one route",
        ),
        (
            json!({"model": "x", "maxTokens": 1, "routes": [{"backend": "a", "weight": 1}, {"backend": "a", "weight": 2}]}),
            "Duplicate value",
        ),
    ] {
        let err = create_raw(&server, ns, "modelconfigs", model_config(spec.clone()))
            .await
            .expect_err(&format!("{spec} is refused"));
        assert!(err.contains(field), "{spec}: {err}");
    }
    for (spec, field) in [
        (json!({"template": ""}), "template"),
        (json!({"template": "x", "variables": [{"name": "1bad"}]}), "name"),
        (
            json!({"template": "x", "variables": [{"name": "a"}, {"name": "a"}]}),
            "Duplicate value",
        ),
        (json!({"variables": []}), "template"),
    ] {
        let body = json!({"apiVersion": "ai.crwatch.io/v1alpha1", "kind": "PromptTemplate",
                          "metadata": {"name": "p"}, "spec": spec});
        let err = create_raw(&server, ns, "prompttemplates", body)
            .await
            .expect_err(&format!("{spec} is refused"));
        assert!(err.contains(field), "{spec}: {err}");
    }
    // A template that does not render is no schema matter: the API server takes it, and the
    // inference service NACKs it (tests/service.rs).
    let body = json!({"apiVersion": "ai.crwatch.io/v1alpha1", "kind": "PromptTemplate",
                      "metadata": {"name": "p"}, "spec": {"template": "{{unclosed"}});
    create_raw(&server, ns, "prompttemplates", body).await.unwrap();
}

/// `kubectl get` shows the printer columns.
#[tokio::test]
async fn kubectl_shows_the_printer_columns() {
    let server = TestServer::start().await.unwrap();
    let ns = "ai-crd-kubectl";
    install(&server, ns).await;
    create_raw(
        &server,
        ns,
        "modelconfigs",
        model_config(
            json!({"model": "llama", "maxTokens": 8, "temperature": 0.5, "promptTemplate": "support"}),
        ),
    )
    .await
    .unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::from(server.kubectl())
            .args(["get", "mc", "-n", ns])
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<Vec<&str>> = stdout.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(lines[0], ["NAME", "MODEL", "TEMPERATURE", "PROMPT", "AGE"]);
    assert_eq!(&lines[1][..4], ["m", "llama", "0.5", "support"]);
}
