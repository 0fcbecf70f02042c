//! The sync engine against a real nginx (Debian's), with real backends and real HTTP: routes,
//! header matches, weights, conflicts, a route nginx refuses next to good ones, no reload when
//! nothing changed, and the AI gateway's model routing, API keys, CIDRs and rate limits.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gateway_operator::backend::Backend;
use gateway_operator::engine::Engine;
use gateway_operator::loadgen::{RequestSpec, request};
use gateway_operator::nginx::{Mode, Nginx};
use gateway_operator::plan::{Kind, ResKey, Snapshot};
use gateway_operator::render::Settings;
use gateway_operator::types::{AIGateway, GatewayRoute};
use k8s_openapi::api::core::v1::Secret;

struct Fixture {
    engine: Engine,
    world: Arc<Mutex<Snapshot>>,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Fixture {
    /// A sync after a change of the world (as the informers' handlers touch the engine).
    async fn sync(&self) -> Arc<gateway_operator::engine::Outcome> {
        self.engine.touch();
        self.engine.sync().await
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.engine.nginx().kill_now();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn fixture() -> Fixture {
    let dir = tempfile::Builder::new().prefix("crwatch-gw-").tempdir().unwrap();
    let http = free_port();
    let mut settings = Settings::loopback(PathBuf::from(dir.path()), http, free_port());
    settings.https_port = Some(free_port());
    let binary =
        gateway_operator::nginx::find_binary().expect("nginx is installed (scripts/test installs it)");
    let nginx = Nginx::new(binary, settings, Mode::Start).unwrap();
    let world = Arc::new(Mutex::new(Snapshot::default()));
    let w = world.clone();
    let engine = Engine::new(nginx, Arc::new(move || w.lock().unwrap().clone()));
    Fixture {
        engine,
        world,
        addr: SocketAddr::from(([127, 0, 0, 1], http)),
        _dir: dir,
    }
}

fn route(name: &str, age: u32, spec: serde_json::Value) -> Arc<GatewayRoute> {
    Arc::new(
        serde_json::from_value(serde_json::json!({
            "apiVersion": "gateway.crwatch.io/v1alpha1", "kind": "GatewayRoute",
            "metadata": {"name": name, "namespace": "default", "generation": 1,
                         "creationTimestamp": format!("2026-01-01T00:{age:02}:00Z")},
            "spec": spec,
        }))
        .unwrap(),
    )
}

fn secret(name: &str, data: &[(&str, &str)]) -> Arc<Secret> {
    use base64::Engine as _;
    let data: serde_json::Map<String, serde_json::Value> = data
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                base64::engine::general_purpose::STANDARD.encode(v).into(),
            )
        })
        .collect();
    Arc::new(
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": "default"}, "data": data,
        }))
        .unwrap(),
    )
}

async fn get(addr: SocketAddr, host: &str, path: &str) -> (u16, Option<String>) {
    let r = request(addr, &RequestSpec::get(host, path)).await.unwrap();
    (r.status, r.backend().map(str::to_string))
}

#[tokio::test(flavor = "multi_thread")]
async fn routes_headers_conflicts_and_nginx_refusals() {
    let f = fixture();
    let a = Backend::start("a").await.unwrap();
    let b = Backend::start("b").await.unwrap();
    f.world.lock().unwrap().routes = vec![
        route(
            "shop",
            1,
            serde_json::json!({"host": "shop.test", "path": {"value": "/api"}, "backends": [{"url": a.url()}],
            "responseHeaders": {"set": [{"name": "x-route", "value": "shop$1"}]}}),
        ),
        route(
            "canary",
            2,
            serde_json::json!({"host": "shop.test", "path": {"value": "/api"},
            "headers": [{"name": "x-canary", "value": "yes"}], "backends": [{"url": b.url()}]}),
        ),
        route(
            "late",
            3,
            serde_json::json!({"host": "shop.test", "path": {"value": "/api/"}, "backends": [{"url": b.url()}]}),
        ),
        route(
            "any-host",
            4,
            serde_json::json!({"path": {"type": "Exact", "value": "/health"}, "backends": [{"url": b.url()}]}),
        ),
    ];
    let out = f.sync().await;
    assert_eq!(out.error, None);
    assert!(out.reloaded);
    let late = &out.verdicts[&ResKey::new(Kind::Route, "default", "late")];
    assert_eq!(late.refused.as_ref().unwrap().reason, "Conflicted", "{late:?}");

    assert_eq!(get(f.addr, "shop.test", "/api/x").await, (200, Some("a".into())));
    assert_eq!(get(f.addr, "shop.test", "/api").await, (200, Some("a".into())));
    assert_eq!(get(f.addr, "shop.test", "/apix").await.0, 404);
    let r = request(
        f.addr,
        &RequestSpec::get("shop.test", "/api/1").header("x-canary", "yes"),
    )
    .await
    .unwrap();
    assert_eq!(r.backend(), Some("b"));
    let r = request(f.addr, &RequestSpec::get("shop.test", "/api/1"))
        .await
        .unwrap();
    assert_eq!(r.header("x-route"), Some("shop$1"), "a literal $ survives");
    // The host-less route serves every host.
    assert_eq!(
        get(f.addr, "other.test", "/health").await,
        (200, Some("b".into()))
    );
    assert_eq!(get(f.addr, "shop.test", "/health").await, (200, Some("b".into())));

    // Unchanged: no reload.
    let reloads = f.engine.reloads();
    let again = f.sync().await;
    assert!(!again.reloaded);
    assert_eq!(f.engine.reloads(), reloads);

    // A regex PCRE refuses: that route is out with nginx's message, the others stay live.
    f.world.lock().unwrap().routes.push(route(
        "bad-regex",
        5,
        serde_json::json!({"path": {"type": "RegularExpression", "value": "^/(unclosed"}, "backends": [{"url": a.url()}]}),
    ));
    let out = f.sync().await;
    assert_eq!(out.error, None);
    let bad = out.verdicts[&ResKey::new(Kind::Route, "default", "bad-regex")]
        .refused
        .clone()
        .unwrap();
    assert_eq!(bad.reason, "RejectedByNginx");
    assert!(
        bad.message.contains("pcre") || bad.message.contains("missing"),
        "{}",
        bad.message
    );
    assert!(
        !bad.message.contains("/gen/"),
        "paths are shortened: {}",
        bad.message
    );
    assert_eq!(get(f.addr, "shop.test", "/api/x").await, (200, Some("a".into())));
    // Remembered: the next sync does not test it again, nor reload.
    let reloads = f.engine.reloads();
    assert!(!f.sync().await.reloaded);
    assert_eq!(f.engine.reloads(), reloads);

    // A TLS Secret holding garbage: nginx names the certificate file; that route is out.
    {
        let mut w = f.world.lock().unwrap();
        w.secrets.push(secret(
            "bad-tls",
            &[("tls.crt", "not a certificate"), ("tls.key", "nope")],
        ));
        w.routes.push(route(
            "tls",
            6,
            serde_json::json!({"host": "tls.test", "tls": {"secretName": "bad-tls"}, "backends": [{"url": a.url()}]}),
        ));
    }
    let out = f.sync().await;
    assert_eq!(out.error, None);
    let tls = out.verdicts[&ResKey::new(Kind::Route, "default", "tls")]
        .refused
        .clone()
        .unwrap();
    assert_eq!(tls.reason, "RejectedByNginx", "{tls:?}");
    assert_eq!(get(f.addr, "shop.test", "/api/x").await, (200, Some("a".into())));
}

#[tokio::test(flavor = "multi_thread")]
async fn weights_are_honoured() {
    let f = fixture();
    let a = Backend::start("a").await.unwrap();
    let b = Backend::start("b").await.unwrap();
    f.world.lock().unwrap().routes = vec![route(
        "w",
        1,
        serde_json::json!({"backends": [{"url": a.url(), "weight": 80}, {"url": b.url(), "weight": 20}]}),
    )];
    assert_eq!(f.sync().await.error, None);
    let mut counts = std::collections::BTreeMap::<String, u32>::new();
    for _ in 0..200 {
        let (status, backend) = get(f.addr, "x", "/").await;
        assert_eq!(status, 200);
        *counts.entry(backend.unwrap()).or_default() += 1;
    }
    // Smooth weighted round robin is exact over each cycle of 5.
    assert_eq!(counts["a"], 160, "{counts:?}");
    assert_eq!(counts["b"], 40, "{counts:?}");
}

fn ai(spec: serde_json::Value) -> Arc<AIGateway> {
    Arc::new(
        serde_json::from_value(serde_json::json!({
            "apiVersion": "gateway.crwatch.io/v1alpha1", "kind": "AIGateway",
            "metadata": {"name": "ai", "namespace": "default", "generation": 1, "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": spec,
        }))
        .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn ai_gateway_routes_by_model_and_checks_keys_and_limits() {
    let f = fixture();
    let gpt = Backend::start_openai("gpt").await.unwrap();
    let local = Backend::start_openai("local").await.unwrap();
    {
        let mut w = f.world.lock().unwrap();
        w.secrets = vec![
            secret("upstream", &[("apiKey", "sk-upstream-123")]),
            secret("clients", &[("team-a", "key-a-1"), ("team-b", "key-b-2")]),
        ];
        w.ai_gateways = vec![ai(serde_json::json!({
            "host": "ai.test",
            "modelIntegrations": [
                {"name": "gpt", "baseURL": format!("{}/v1", gpt.url()), "apiKeySecretRef": {"name": "upstream", "key": "apiKey"}},
                {"name": "local", "baseURL": format!("{}/v1", local.url())},
            ],
            "routingRules": [
                {"name": "by-model", "match": {"model": "gpt-4o"}, "integration": "gpt"},
                {"name": "by-header", "match": {"headers": [{"name": "x-team", "value": "gpt"}]}, "integration": "gpt"},
                {"name": "rest", "integration": "local"},
            ],
            "rateLimits": [{"name": "per-client", "requestsPerMinute": 60, "burst": 5}],
            "securityPolicies": [{"name": "keys", "apiKeys": [{"secretName": "clients"}]}],
        }))];
    }
    let out = f.sync().await;
    assert_eq!(out.error, None, "{out:?}");
    let body =
        |model: &str| format!(r#"{{"model": "{model}", "messages": [{{"role": "user", "content": "hi"}}]}}"#);
    let chat = |model: &str, key: Option<&str>| {
        let mut spec = RequestSpec::post("ai.test", "/v1/chat/completions", body(model))
            .header("content-type", "application/json");
        if let Some(k) = key {
            spec = spec.header("authorization", format!("Bearer {k}"));
        }
        spec
    };
    let r = request(f.addr, &chat("gpt-4o", None)).await.unwrap();
    assert_eq!(r.status, 401, "{}", r.text());
    let r = request(f.addr, &chat("gpt-4o", Some("wrong"))).await.unwrap();
    assert_eq!(r.status, 401);
    let r = request(f.addr, &chat("gpt-4o", Some("key-a-1"))).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.backend(), Some("gpt"));
    let v: serde_json::Value = r.json().unwrap();
    assert_eq!(v["model"], "gpt-4o");
    // The upstream key was injected (by hash), the client's key was not passed on.
    assert_eq!(
        v["headers"]["authorization_sha256"],
        gateway_operator::backend::sha256_hex(b"Bearer sk-upstream-123")
    );
    let r = request(f.addr, &chat("llama", Some("key-b-2"))).await.unwrap();
    assert_eq!(r.backend(), Some("local"), "{}", r.text());
    let v: serde_json::Value = r.json().unwrap();
    assert!(
        v["headers"].get("authorization").is_none(),
        "no key for the local integration: {v}"
    );
    let r = request(f.addr, &chat("llama", Some("key-b-2")).header("x-team", "gpt"))
        .await
        .unwrap();
    assert_eq!(r.backend(), Some("gpt"));
    let r = request(
        f.addr,
        &RequestSpec::get("ai.test", "/v1/models").header("x-api-key", "key-a-1"),
    )
    .await
    .unwrap();
    assert_eq!((r.status, r.backend()), (200, Some("local")));

    // 60/min with a burst of 5 per client: team b has used 2; of 10 more, some get 429.
    let mut statuses = Vec::new();
    for _ in 0..10 {
        statuses.push(
            request(f.addr, &chat("llama", Some("key-b-2")))
                .await
                .unwrap()
                .status,
        );
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == 200 || *s == 429), "{statuses:?}");
    // Team a has its own bucket.
    assert_eq!(
        request(f.addr, &chat("llama", Some("key-a-1")))
            .await
            .unwrap()
            .status,
        200
    );

    // Secrets never reach a message or the world-readable files.
    let conf = std::fs::read_to_string(f.engine.nginx().conf_path()).unwrap();
    assert!(conf.contains("sk-upstream-123"));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(f.engine.nginx().conf_path())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "nginx.conf is private");
}

fn template(name: &str, text: &str) -> Arc<ai_context::types::PromptTemplate> {
    Arc::new(
        serde_json::from_value(serde_json::json!({
            "apiVersion": "ai.crwatch.io/v1alpha1", "kind": "PromptTemplate",
            "metadata": {"name": name, "namespace": "default", "resourceVersion": "7"},
            "spec": {"template": text, "variables": [{"name": "q"}]},
        }))
        .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_timeouts_retries_cidrs_limits_and_templates() {
    let f = fixture();
    let a = Backend::start("a").await.unwrap();
    let slow = Backend::start("slow").await.unwrap();
    slow.set_delay(Duration::from_secs(3)).unwrap();
    let dead = format!("http://127.0.0.1:{}", free_port());
    let cert = rcgen::generate_simple_self_signed(vec!["tls.test".to_string()]).unwrap();
    let (cert_pem, key_pem) = (cert.cert.pem(), cert.signing_key.serialize_pem());
    let up = Backend::start_openai("up").await.unwrap();
    {
        let mut w = f.world.lock().unwrap();
        w.secrets = vec![secret("tls", &[("tls.crt", &cert_pem), ("tls.key", &key_pem)])];
        w.routes = vec![
            route(
                "tls",
                1,
                serde_json::json!({"host": "tls.test", "tls": {"secretName": "tls"}, "backends": [{"url": a.url()}]}),
            ),
            route(
                "slow",
                2,
                serde_json::json!({"host": "slow.test", "backends": [{"url": slow.url()}], "timeouts": {"request": "300ms"}}),
            ),
            // A dead endpoint beside a live one: with retries nothing fails.
            route(
                "retry",
                3,
                serde_json::json!({"host": "retry.test", "backends": [{"url": dead}, {"url": a.url()}],
                "retries": {"attempts": 2}, "requestHeaders": {"set": [{"name": "x-added", "value": "v"}], "remove": ["x-drop"]}}),
            ),
        ];
        w.templates = vec![template("support", "Answer {{q}} kindly.")];
        w.ai_gateways = vec![ai(serde_json::json!({
            "host": "ai.test",
            "modelIntegrations": [{"name": "up", "baseURL": format!("{}/v1", up.url())}],
            "rateLimits": [{"name": "all", "requestsPerSecond": 1, "burst": 1, "key": "Global", "statusCode": 503}],
            "securityPolicies": [{"name": "office", "allowedCIDRs": ["10.0.0.0/8"]}],
            "promptTemplates": [{"name": "support"}],
        }))];
    }
    let out = f.sync().await;
    assert_eq!(out.error, None, "{out:?}");
    for (k, v) in &out.verdicts {
        assert!(v.refused.is_none(), "{k}: {v:?}");
    }

    // TLS with the Secret's certificate, verified by a client trusting it.
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &cert_pem).unwrap();
    let tls = crwatch::tls::client_config(Some(&ca), false, false).unwrap();
    let https_port = f.engine.nginx().settings().https_port.unwrap();
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .resolve("tls.test", SocketAddr::from(([127, 0, 0, 1], https_port)))
        .build()
        .unwrap();
    let resp = client
        .get(format!("https://tls.test:{https_port}/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-backend"], "a");

    // A backend slower than the route's timeout: 504, in about the timeout.
    let started = std::time::Instant::now();
    assert_eq!(get(f.addr, "slow.test", "/").await.0, 504);
    assert!(started.elapsed() < Duration::from_secs(2));

    // Retries pass over the dead endpoint; header rewrites reach the backend.
    for _ in 0..6 {
        let r = request(f.addr, &RequestSpec::get("retry.test", "/").header("x-drop", "1"))
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        let v: serde_json::Value = r.json().unwrap();
        assert_eq!(v["headers"]["x-added"], "v");
        assert!(v["headers"].get("x-drop").is_none());
    }

    // The AI gateway only admits 10.0.0.0/8: loopback gets 403, before any rate limit.
    let r = request(f.addr, &RequestSpec::get("ai.test", "/v1/models"))
        .await
        .unwrap();
    assert_eq!(r.status, 403, "{}", r.text());
    // Let loopback in; the global limit (1/s, burst 1) answers 503 as configured.
    {
        let mut w = f.world.lock().unwrap();
        let mut g = (*w.ai_gateways[0]).clone();
        g.spec.security_policies[0].allowed_cidrs = vec!["127.0.0.0/8".into()];
        w.ai_gateways = vec![Arc::new(g)];
    }
    assert_eq!(f.sync().await.error, None);
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(
            request(f.addr, &RequestSpec::get("ai.test", "/v1/models"))
                .await
                .unwrap()
                .status,
        );
    }
    assert_eq!(statuses[0], 200, "{statuses:?}");
    assert!(statuses.contains(&503), "{statuses:?}");
    // The prompt template is served (the policy applies; the rate limit does not).
    let r = request(
        f.addr,
        &RequestSpec::get("ai.test", "/v1/prompt-templates/support"),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let v: serde_json::Value = r.json().unwrap();
    assert_eq!(v["template"], "Answer {{q}} kindly.");
    assert_eq!(v["resourceVersion"], "7");
}

/// Hostile values in every field that reaches the configuration: each route is refused
/// (Invalid or RejectedByNginx) or served as written, never able to add a directive, and the
/// good route keeps serving.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_values_never_inject_configuration() {
    let f = fixture();
    let a = Backend::start("a").await.unwrap();
    let hostile = [
        "x\"; return 200 \"pwned",
        "'; return 200 'pwned",
        "} server { listen 1; } #",
        "$host${crw_dollar}$$",
        "a\\\";\\",
        "{{ }}",
        "\u{202e}évil",
        "x\n return 200;",
        &"y".repeat(3000),
    ];
    let mut routes = vec![route(
        "good",
        0,
        serde_json::json!({"host": "good.test", "backends": [{"url": a.url()}]}),
    )];
    for (i, h) in hostile.iter().enumerate() {
        let n = i * 10;
        routes.push(route(&format!("p{i}"), (n + 1) as u32 % 60, serde_json::json!({"path": {"type": "Exact", "value": format!("/{h}")}, "backends": [{"url": a.url()}]})));
        routes.push(route(&format!("r{i}"), (n + 2) as u32 % 60, serde_json::json!({"path": {"type": "RegularExpression", "value": h}, "backends": [{"url": a.url()}]})));
        routes.push(route(&format!("h{i}"), (n + 3) as u32 % 60, serde_json::json!({"host": "h.test", "path": {"value": format!("/h{i}")},
            "headers": [{"name": "x-h", "value": h}, {"name": "x-r", "value": h, "type": "RegularExpression"}], "backends": [{"url": a.url()}]})));
        routes.push(route(&format!("w{i}"), (n + 4) as u32 % 60, serde_json::json!({"host": "w.test", "path": {"value": format!("/w{i}")},
            "requestHeaders": {"set": [{"name": "x-set", "value": h}]}, "responseHeaders": {"add": [{"name": "x-add", "value": h}]}, "backends": [{"url": a.url()}]})));
        routes.push(route(
            &format!("u{i}"),
            (n + 5) as u32 % 60,
            serde_json::json!({"host": "u.test", "path": {"value": format!("/u{i}")},
            "backends": [{"url": format!("http://{h}:80")}]}),
        ));
    }
    f.world.lock().unwrap().routes = routes;
    let out = f.sync().await;
    assert_eq!(out.error, None, "{:?}", out.error);
    for (k, v) in &out.verdicts {
        let verdict = v.refused.as_ref().map(|r| {
            format!(
                "{}: {}",
                r.reason,
                r.message.chars().take(120).collect::<String>()
            )
        });
        println!("{k}: {}", verdict.as_deref().unwrap_or("served"));
    }
    assert!(
        out.verdicts[&ResKey::new(Kind::Route, "default", "good")]
            .refused
            .is_none()
    );
    assert_eq!(get(f.addr, "good.test", "/").await, (200, Some("a".into())));
    // Nothing answers "pwned": every served hostile route reaches the backend.
    for path in ["/x", "/'", "/}", "/pwned"] {
        let r = request(f.addr, &RequestSpec::get("h.test", path)).await.unwrap();
        assert!(!r.text().contains("pwned"), "{path}: {}", r.text());
    }
    let conf = std::fs::read_to_string(f.engine.nginx().conf_path()).unwrap();
    assert!(!conf.contains("return 200 \"pwned\";\n"), "an injected directive");
    // Literal values arrive literally.
    let r = request(f.addr, &RequestSpec::get("w.test", "/w3")).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-add"), Some(hostile[3]));
    let v: serde_json::Value = r.json().unwrap();
    assert_eq!(v["headers"]["x-set"], hostile[3]);
}
