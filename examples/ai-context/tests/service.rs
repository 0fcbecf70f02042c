//! The inference service end to end: CRDs and objects on crwatch-apiserver, `crwatch serve`
//! (the library, with NACK reporting as `--report-nacks` does it) serving both types, and the
//! `inference-service` binary as a separate process. It picks the configuration up, a patch
//! hot-swaps it without a restart, a template that does not render is NACKed, the condition
//! `Accepted=False` appears on the object, the service keeps rendering with the last good
//! template, and a fixed template is taken and marked `Accepted=True`.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use ai_context::service::{MODEL_CONFIG_TYPE, PROMPT_TEMPLATE_TYPE, Rendered};
use ai_context::types::{ModelConfig, PromptTemplate};
use crwatch::informer::Informer;
use crwatch::source::kube::KubeSource;
use crwatch_apiserver::TestServer;
use crwatch_serve::xds::{ReportTarget, ServerOptions, XdsServer};
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(20);

fn ar(kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: "ai.crwatch.io".into(),
        version: "v1alpha1".into(),
        api_version: "ai.crwatch.io/v1alpha1".into(),
        kind: kind.into(),
        plural: plural.into(),
    }
}

/// `crwatch serve -r prompttemplates -r modelconfigs -n NS --report-nacks` as a library.
async fn crwatch_serve(server: &TestServer, ns: &str, cancel: &CancellationToken) -> SocketAddr {
    let mut xds = XdsServer::new(ServerOptions::default());
    let mut targets = HashMap::new();
    for (kind, plural) in [
        ("PromptTemplate", "prompttemplates"),
        ("ModelConfig", "modelconfigs"),
    ] {
        let ar = ar(kind, plural);
        let informer = Informer::new(KubeSource::<DynamicObject>::dynamic(
            server.client(),
            &ar,
            Some(ns),
        ));
        xds.serve_informer(&informer, &ar.api_version, &ar.kind);
        informer.start(cancel.clone());
        targets.insert(
            crwatch::xds::type_url(&ar.api_version, &ar.kind),
            ReportTarget {
                api: ar,
                namespaced: true,
            },
        );
    }
    xds.report_to(server.client(), targets, cancel.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = cancel.clone();
    tokio::spawn(async move {
        if let Err(e) = xds.serve(listener, None, stop).await {
            panic!("xDS server: {e}");
        }
    });
    addr
}

/// The `inference-service` binary, and the address its HTTP API listens on.
async fn inference_service(xds: SocketAddr, ns: &str, initial_fetch_timeout: &str) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_inference-service"))
        .args([
            "--xds",
            &format!("http://{xds}"),
            "-n",
            ns,
            "--model-config",
            "default",
            "--listen",
            "127.0.0.1:0",
            "--node-id",
            "inference-test",
            "--initial-fetch-timeout",
            initial_fetch_timeout,
        ])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("inference-service starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("the listening line within the timeout")
        .unwrap()
        .expect("inference-service still running");
    let url = line
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    (child, url)
}

async fn get_config(http: &reqwest::Client, url: &str) -> Value {
    http.get(format!("{url}/config"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Wait until `/config` satisfies `cond`; returns it.
async fn config_until(http: &reqwest::Client, url: &str, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let c = get_config(http, url).await;
        if cond(&c) {
            return c;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}; /config: {c:#}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn render(http: &reqwest::Client, url: &str, variables: Value) -> (u16, Value) {
    let r = http
        .post(format!("{url}/render"))
        .json(&json!({ "variables": variables }))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// The `Accepted` condition of a PromptTemplate, once it satisfies `cond`.
async fn condition_until(
    pts: &Api<PromptTemplate>,
    name: &str,
    what: &str,
    cond: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let pt = serde_json::to_value(pts.get(name).await.unwrap()).unwrap();
        let accepted = pt["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == "Accepted").cloned())
            .unwrap_or(Value::Null);
        if cond(&accepted) {
            return accepted;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}; {pt:#}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn set_template(pts: &Api<PromptTemplate>, name: &str, template: &str) -> String {
    let pt = pts
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"template": template}})),
        )
        .await
        .unwrap();
    pt.metadata.resource_version.unwrap()
}

#[tokio::test]
async fn the_service_picks_up_hot_swaps_and_nacks_bad_templates() {
    let server = TestServer::start().await.unwrap();
    let ns = "ai-service";
    let (pts, mcs): (Api<PromptTemplate>, Api<ModelConfig>) = common::install(&server, ns).await;
    let pt: PromptTemplate = serde_json::from_value(json!({
        "apiVersion": "ai.crwatch.io/v1alpha1", "kind": "PromptTemplate",
        "metadata": {"name": "support"},
        "spec": {"template": "You are {{persona}}. Question: {{question}}",
                 "variables": [{"name": "persona", "default": "a helpful assistant"}, {"name": "question"}]}
    }))
    .unwrap();
    pts.create(&PostParams::default(), &pt).await.unwrap();
    let mc: ModelConfig = serde_json::from_value(json!({
        "apiVersion": "ai.crwatch.io/v1alpha1", "kind": "ModelConfig",
        "metadata": {"name": "default"},
        "spec": {"model": "llama-3.1-8b-instruct", "temperature": 0.2, "topP": 0.9, "maxTokens": 512,
                 "promptTemplate": "support",
                 "routes": [{"backend": "gpu-a", "weight": 90}, {"backend": "gpu-b", "weight": 10}]}
    }))
    .unwrap();
    mcs.create(&PostParams::default(), &mc).await.unwrap();

    let cancel = CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    let xds = crwatch_serve(&server, ns, &cancel).await;
    let (mut child, url) = inference_service(xds, ns, "5s").await;
    let pid = child.id();
    let http = reqwest::Client::new();

    // It picks the configuration up.
    let c = config_until(&http, &url, "the first configuration", |c| {
        // (Both stores fill before the informers flag themselves synced.)
        c["promptTemplate"]["name"] == "ai-service/support"
            && c["modelConfig"]["name"] == "ai-service/default"
            && c["synced"] == true
    })
    .await;
    assert_eq!(c["modelConfig"]["spec"]["model"], "llama-3.1-8b-instruct");
    let health = http.get(format!("{url}/healthz")).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
    let (status, body) = render(&http, &url, json!({"question": "why?"})).await;
    assert_eq!(status, 200, "{body}");
    let r: Rendered = serde_json::from_value(body).unwrap();
    assert_eq!(r.prompt, "You are a helpful assistant. Question: why?");
    assert_eq!((r.temperature, r.top_p, r.max_tokens), (0.2, 0.9, 512));
    assert!(r.backend == "gpu-a" || r.backend == "gpu-b", "{}", r.backend);
    // A missing variable and an undeclared one are the caller's error.
    let (status, body) = render(&http, &url, json!({})).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("\"question\""), "{body}");
    let (status, _) = render(&http, &url, json!({"question": "q", "nope": "x"})).await;
    assert_eq!(status, 400);

    // A patch hot-swaps the template: same process, new text.
    let swaps = c["swaps"].as_u64().unwrap();
    let patched = std::time::Instant::now();
    let rv = set_template(&pts, "support", "Be brief, {{persona}}: {{question}}").await;
    config_until(&http, &url, "the new template", |c| {
        c["promptTemplate"]["spec"]["template"] == "Be brief, {{persona}}: {{question}}"
    })
    .await;
    eprintln!("patch to active template: {:?} (5 ms polling)", patched.elapsed());
    let started = std::time::Instant::now();
    let (_, body) = render(&http, &url, json!({"question": "why?", "persona": "a pirate"})).await;
    assert_eq!(body["prompt"], "Be brief, a pirate: why?");
    assert!(
        body["promptTemplate"]
            .as_str()
            .unwrap()
            .starts_with("ai-service/support@")
    );
    assert_eq!(child.id(), pid, "no restart");
    assert!(child.try_wait().unwrap().is_none(), "still running");
    eprintln!("template {rv} swapped in; render took {:?}", started.elapsed());
    // And the parameters.
    mcs.patch(
        "default",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"temperature": 0.7, "routes": [{"backend": "gpu-b", "weight": 100}]}})),
    )
    .await
    .unwrap();
    let c = config_until(&http, &url, "the new temperature", |c| {
        c["modelConfig"]["spec"]["temperature"] == 0.7
    })
    .await;
    assert!(c["swaps"].as_u64().unwrap() >= swaps + 2);
    let (_, body) = render(&http, &url, json!({"question": "q"})).await;
    assert_eq!(body["temperature"], 0.7);
    assert_eq!(body["backend"], "gpu-b");

    // A template with unbalanced braces is NACKed: the condition says why, and the service
    // keeps the last good template.
    let good = get_config(&http, &url).await["promptTemplate"]["resourceVersion"].clone();
    set_template(&pts, "support", "Broken {{question").await;
    let accepted = condition_until(&pts, "support", "Accepted=False", |c| c["status"] == "False").await;
    assert_eq!(accepted["reason"], "Rejected");
    let message = accepted["message"].as_str().unwrap();
    assert!(
        message.contains(
            "ai-service/support: spec.template: unbalanced braces: the {{ at line 1 column 8 is never closed"
        ),
        "{message}"
    );
    let c = get_config(&http, &url).await;
    assert_eq!(c["promptTemplate"]["resourceVersion"], good);
    assert!(
        c["xds"]["promptTemplates"]["nacks"].as_u64().unwrap() >= 1,
        "{c:#}"
    );
    let (status, body) = render(&http, &url, json!({"question": "still?"})).await;
    assert_eq!(status, 200);
    assert_eq!(body["prompt"], "Be brief, a helpful assistant: still?");

    // An undeclared variable too.
    set_template(&pts, "support", "Hello {{name}}").await;
    let accepted = condition_until(&pts, "support", "the undeclared-variable NACK", |c| {
        c["message"]
            .as_str()
            .is_some_and(|m| m.contains("undeclared variable \"name\""))
    })
    .await;
    assert_eq!(accepted["status"], "False");
    assert_eq!(
        get_config(&http, &url).await["promptTemplate"]["resourceVersion"],
        good
    );

    // Fixed: taken, and marked accepted.
    set_template(&pts, "support", "Fixed: {{question}}").await;
    config_until(&http, &url, "the fixed template", |c| {
        c["promptTemplate"]["spec"]["template"] == "Fixed: {{question}}"
    })
    .await;
    let accepted = condition_until(&pts, "support", "Accepted=True", |c| c["status"] == "True").await;
    assert_eq!(accepted["reason"], "Acknowledged");
    let (_, body) = render(&http, &url, json!({"question": "ok?"})).await;
    assert_eq!(body["prompt"], "Fixed: ok?");
    assert_eq!(child.id(), pid, "no restart");
    let _ = child.kill().await;
}

/// Without its ModelConfig the service says what is missing, and becomes healthy once the
/// objects appear (created after the service started).
#[tokio::test]
async fn the_service_waits_for_objects_created_later() {
    let server = TestServer::start().await.unwrap();
    let ns = "ai-service-later";
    let (pts, mcs) = common::install(&server, ns).await;
    let cancel = CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    let xds = crwatch_serve(&server, ns, &cancel).await;
    // Both types are empty: crwatch serve sends nothing, and the service takes that as the
    // empty state after the initial fetch timeout.
    let (mut child, url) = inference_service(xds, ns, "1s").await;
    let http = reqwest::Client::new();
    let c = config_until(&http, &url, "the missing ModelConfig", |c| {
        c["problem"]
            .as_str()
            .is_some_and(|p| p.contains("no ModelConfig ai-service-later/default"))
    })
    .await;
    assert!(c["modelConfig"].is_null());
    let health = http.get(format!("{url}/healthz")).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 503);
    let (status, _) = render(&http, &url, json!({})).await;
    assert_eq!(status, 503);

    mcs.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "apiVersion": "ai.crwatch.io/v1alpha1", "kind": "ModelConfig",
            "metadata": {"name": "default"},
            "spec": {"model": "m", "maxTokens": 16, "promptTemplate": "t"}
        }))
        .unwrap(),
    )
    .await
    .unwrap();
    config_until(&http, &url, "the missing template", |c| {
        c["problem"]
            .as_str()
            .is_some_and(|p| p.contains("no accepted PromptTemplate ai-service-later/t"))
    })
    .await;
    pts.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "apiVersion": "ai.crwatch.io/v1alpha1", "kind": "PromptTemplate",
            "metadata": {"name": "t"},
            "spec": {"template": "{{x}}!", "variables": [{"name": "x"}]}
        }))
        .unwrap(),
    )
    .await
    .unwrap();
    config_until(&http, &url, "a complete configuration", |c| {
        c["problem"].is_null()
    })
    .await;
    let (status, body) = render(&http, &url, json!({"x": "hi"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["prompt"], "hi!");
    assert_eq!(body["backend"], "default");
    let _ = child.kill().await;
}

#[test]
fn type_urls_are_the_crds() {
    assert_eq!(
        PROMPT_TEMPLATE_TYPE,
        crwatch::xds::type_url("ai.crwatch.io/v1alpha1", "PromptTemplate")
    );
    assert_eq!(
        MODEL_CONFIG_TYPE,
        crwatch::xds::type_url("ai.crwatch.io/v1alpha1", "ModelConfig")
    );
}
