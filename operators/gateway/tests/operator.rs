//! The operator end to end on crwatch-apiserver with a real nginx and real backends:
//! statuses (Accepted, ResolvedRefs, Programmed, conflicts, invalid routes), Service backends
//! through EndpointSlices, 100 route changes under steady load with no failed request, and an
//! AI gateway's status with integration reachability.

mod common;

use common::{free_port, route};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crwatch_apiserver::TestServer;
use gateway_operator::backend::Backend;
use gateway_operator::loadgen::{LoadConfig, LoadGen, RequestSpec, request};
use gateway_operator::run::RunOptions;
use gateway_operator::types::{AIGateway, GatewayRoute};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio_util::sync::CancellationToken;

struct Gateway {
    server: TestServer,
    addr: SocketAddr,
    _prefix: tempfile::TempDir,
    nginx: gateway_operator::nginx::Nginx,
    cancel: CancellationToken,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.cancel.cancel();
        self.nginx.kill_now();
    }
}

async fn gateway(ns: &str) -> Gateway {
    let server = TestServer::start().await.expect("API server starts");
    for crd in gateway_operator::crd::crds() {
        server.server().apply(crd).await.expect("CRD");
    }
    let client = server.client();
    let nsapi: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    nsapi
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap(),
        )
        .await
        .unwrap();
    let prefix = tempfile::Builder::new()
        .prefix("crwatch-gwop-")
        .tempdir()
        .unwrap();
    let http = free_port();
    let binary = gateway_operator::nginx::find_binary().expect("nginx is installed");
    let options = RunOptions::local(binary.clone(), PathBuf::from(prefix.path()), http, free_port());
    let nginx = gateway_operator::nginx::Nginx::new(
        binary,
        options.settings.clone(),
        gateway_operator::nginx::Mode::Start,
    )
    .unwrap();
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    let task = tokio::spawn(gateway_operator::run::run(client, options, async move {
        c.cancelled().await
    }));
    let g = Gateway {
        server,
        addr: SocketAddr::from(([127, 0, 0, 1], http)),
        _prefix: prefix,
        nginx,
        cancel,
        task: Some(task),
    };
    // nginx comes up with the first sync, even without resources.
    let deadline = Instant::now() + Duration::from_secs(60);
    while g.nginx.serving().await.is_none() {
        assert!(Instant::now() < deadline, "nginx did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    g
}

/// Wait until the route's condition `type_` has `status` for its current generation.
async fn wait_condition(api: &Api<GatewayRoute>, name: &str, type_: &str, status: &str) -> GatewayRoute {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = api.get(name).await.unwrap();
        let g = r.metadata.generation;
        if let Some(s) = &r.status
            && s.conditions
                .iter()
                .any(|c| c.type_ == type_ && c.status.as_str() == status && c.observed_generation == g)
        {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: {type_} never became {status}: {:?}",
            r.status
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn message(r: &GatewayRoute, type_: &str) -> String {
    r.status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap()
        .message
        .clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn statuses_conflicts_and_service_backends() {
    let g = gateway("gw-status").await;
    let api: Api<GatewayRoute> = Api::namespaced(g.server.client(), "gw-status");
    let a = Backend::start("a").await.unwrap();
    let pp = PostParams::default();

    api.create(
        &pp,
        &route(
            "first",
            json!({"host": "app.test", "path": {"value": "/"}, "backends": [{"url": a.url()}]}),
        ),
    )
    .await
    .unwrap();
    wait_condition(&api, "first", "Programmed", "True").await;
    let r = request(g.addr, &RequestSpec::get("app.test", "/x"))
        .await
        .unwrap();
    assert_eq!((r.status, r.backend()), (200, Some("a")));

    // Same host and path: the younger one loses, says why, and is not served.
    api.create(
        &pp,
        &route(
            "second",
            json!({"host": "app.test", "backends": [{"url": a.url()}]}),
        ),
    )
    .await
    .unwrap();
    let loser = wait_condition(&api, "second", "Accepted", "False").await;
    assert!(
        message(&loser, "Accepted").contains("GatewayRoute gw-status/first (older)"),
        "{}",
        message(&loser, "Accepted")
    );

    // When the winner goes, the loser takes over (no change of its own triggers this).
    api.delete("first", &DeleteParams::default()).await.unwrap();
    wait_condition(&api, "second", "Programmed", "True").await;

    // A regex nginx refuses: Accepted=False with nginx's message; the good route still serves.
    api.create(
        &pp,
        &route(
            "bad",
            json!({"path": {"type": "RegularExpression", "value": "^/(x"}, "backends": [{"url": a.url()}]}),
        ),
    )
    .await
    .unwrap();
    let bad = wait_condition(&api, "bad", "Accepted", "False").await;
    assert!(
        message(&bad, "Accepted").contains("pcre"),
        "{}",
        message(&bad, "Accepted")
    );
    let r = request(g.addr, &RequestSpec::get("app.test", "/y"))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    // And a Warning Event says so.
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(g.server.client(), "gw-status");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list = events.list(&Default::default()).await.unwrap();
        if list.items.iter().any(|e| {
            e.reason.as_deref() == Some("RejectedByNginx")
                && e.type_.as_deref() == Some("Warning")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("bad")
        }) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no RejectedByNginx Event: {:?}",
            list.items.iter().map(|e| &e.reason).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A Service backend: resolved through its EndpointSlice; no Service yet means ResolvedRefs=False.
    api.create(
        &pp,
        &route(
            "svc",
            json!({"host": "svc.test", "backends": [{"service": {"name": "web", "port": 80}}]}),
        ),
    )
    .await
    .unwrap();
    let r = wait_condition(&api, "svc", "ResolvedRefs", "False").await;
    assert!(message(&r, "ResolvedRefs").contains("Service web not found"));
    assert_eq!(
        request(g.addr, &RequestSpec::get("svc.test", "/"))
            .await
            .unwrap()
            .status,
        503
    );
    let client = g.server.client();
    let svcs: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(client.clone(), "gw-status");
    svcs.create(&pp, &serde_json::from_value(json!({"metadata": {"name": "web"}, "spec": {"ports": [{"name": "http", "port": 80, "targetPort": a.addr().port()}]}})).unwrap())
        .await
        .unwrap();
    let slices: Api<k8s_openapi::api::discovery::v1::EndpointSlice> = Api::namespaced(client, "gw-status");
    slices
        .create(
            &pp,
            &serde_json::from_value(json!({
                "metadata": {"name": "web-1", "labels": {"kubernetes.io/service-name": "web"}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": a.addr().port(), "protocol": "TCP"}],
                "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true}}],
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    wait_condition(&api, "svc", "ResolvedRefs", "True").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = request(g.addr, &RequestSpec::get("svc.test", "/")).await.unwrap();
        if r.status == 200 {
            assert_eq!(r.backend(), Some("a"));
            break;
        }
        assert!(Instant::now() < deadline, "the EndpointSlice never reached nginx");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // An invalid route (the schema lets an unknown scheme through): Invalid, with the field.
    api.create(&pp, &route("invalid", json!({"backends": [{"url": "ftp://x"}]})))
        .await
        .unwrap();
    let inv = wait_condition(&api, "invalid", "Accepted", "False").await;
    assert!(
        message(&inv, "Accepted").contains("spec.backends[0].url"),
        "{}",
        message(&inv, "Accepted")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hundred_changes_under_load_fail_no_request() {
    let g = gateway("gw-load").await;
    let api: Api<GatewayRoute> = Api::namespaced(g.server.client(), "gw-load");
    let a = Backend::start("a").await.unwrap();
    let b = Backend::start("b").await.unwrap();
    let pp = PostParams::default();
    api.create(
        &pp,
        &route("main", json!({"host": "load.test", "backends": [{"url": a.url(), "weight": 1}, {"url": b.url(), "weight": 1}]})),
    )
    .await
    .unwrap();
    wait_condition(&api, "main", "Programmed", "True").await;

    let load = LoadGen::start(LoadConfig::new(g.addr, "load.test", "/steady", 200)).unwrap();
    // 100 changes: weights shift on the loaded route; other routes come and go.
    for i in 0..100u32 {
        match i % 4 {
            0 | 2 => {
                let patch = json!({"spec": {"backends": [{"url": a.url(), "weight": 1 + i % 7}, {"url": b.url(), "weight": 1 + (i * 3) % 5}]}});
                api.patch("main", &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .unwrap();
            }
            1 => {
                api.create(
                    &pp,
                    &route(
                        &format!("extra-{i}"),
                        json!({"host": format!("e{i}.test"), "backends": [{"url": b.url()}]}),
                    ),
                )
                .await
                .unwrap();
            }
            _ => {
                api.delete(&format!("extra-{}", i - 2), &DeleteParams::default())
                    .await
                    .unwrap();
            }
        }
        // Each change must become live, so 100 changes are 100 reloads under load.
        let r = if i % 4 == 1 {
            format!("extra-{i}")
        } else {
            "main".to_string()
        };
        if i % 4 != 3 {
            wait_condition(&api, &r, "Programmed", "True").await;
        }
    }
    let stats = load.stop().await;
    println!("under 100 changes: {stats}");
    assert!(stats.sent >= 200, "{stats}");
    assert_eq!(stats.failed, 0, "failed requests: {:?}", stats.failures);
}

#[tokio::test(flavor = "multi_thread")]
async fn ai_gateway_status_reports_integrations() {
    let g = gateway("gw-ai").await;
    let client = g.server.client();
    let api: Api<AIGateway> = Api::namespaced(client.clone(), "gw-ai");
    let up = Backend::start_openai("up").await.unwrap();
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client, "gw-ai");
    let pp = PostParams::default();
    secrets
        .create(
            &pp,
            &serde_json::from_value(
                json!({"metadata": {"name": "clients"}, "stringData": {"team": "client-key-1"}}),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    let dead = free_port();
    let gw: AIGateway = serde_json::from_value(json!({
        "apiVersion": "gateway.crwatch.io/v1alpha1", "kind": "AIGateway", "metadata": {"name": "ai"},
        "spec": {
            "modelIntegrations": [
                {"name": "up", "baseURL": format!("{}/v1", up.url())},
                {"name": "down", "baseURL": format!("http://127.0.0.1:{dead}/v1")},
            ],
            "routingRules": [{"name": "down", "match": {"model": "old"}, "integration": "down"}, {"name": "rest", "integration": "up"}],
            "securityPolicies": [{"name": "keys", "apiKeys": [{"secretName": "clients"}]}],
        },
    }))
    .unwrap();
    api.create(&pp, &gw).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let cur = api.get("ai").await.unwrap();
        if let Some(s) = &cur.status
            && s.integrations.len() == 2
            && s.conditions
                .iter()
                .any(|c| c.type_ == "Programmed" && c.status.as_str() == "True")
        {
            break s.clone();
        }
        assert!(Instant::now() < deadline, "no status: {:?}", cur.status);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let up_s = status.integrations.iter().find(|i| i.name == "up").unwrap();
    let down_s = status.integrations.iter().find(|i| i.name == "down").unwrap();
    assert!(up_s.reachable && up_s.status_code == Some(200), "{up_s:?}");
    assert!(
        !down_s.reachable && down_s.message.contains("connection"),
        "{down_s:?}"
    );
    let reach = status
        .conditions
        .iter()
        .find(|c| c.type_ == "IntegrationsReachable")
        .unwrap();
    assert_eq!(reach.status.as_str(), "False");
    // The client key works; no key is 401; the status never holds a key.
    let chat = RequestSpec::post("any.test", "/v1/chat/completions", r#"{"model":"m"}"#)
        .header("content-type", "application/json");
    assert_eq!(request(g.addr, &chat).await.unwrap().status, 401);
    let r = request(
        g.addr,
        &chat.clone().header("authorization", "Bearer client-key-1"),
    )
    .await
    .unwrap();
    assert_eq!((r.status, r.backend()), (200, Some("up")), "{}", r.text());
    let text = serde_json::to_string(&api.get("ai").await.unwrap()).unwrap();
    assert!(!text.contains("client-key-1"));
}

#[allow(dead_code)]
async fn stop(mut g: Gateway) {
    g.cancel.cancel();
    if let Some(t) = g.task.take() {
        let _ = t.await;
    }
}
