//! The operator process: a crwatch manager with informers over GatewayRoutes, AIGateways,
//! Services, EndpointSlices, Secrets and (when their CRD is installed) PromptTemplates; two
//! controllers sharing one sync engine; metrics and probes; graceful shutdown that leaves
//! nginx serving (unless asked to stop it).
//!
//! Every replica drives its own nginx (as ingress-nginx does), so there is no leader election:
//! replicas render the same configuration from the same caches and write identical statuses.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ai_context::types::PromptTemplate;
use anyhow::Context as _;
use crwatch::controller::Predicate;
use crwatch::events::Recorder;
use crwatch::manager::{Manager, ManagerConfig};
use crwatch::store::{ObjectKey, Store};
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;

use crate::controller::{Context, reconcile_ai, reconcile_route};
use crate::engine::Engine;
use crate::nginx::{Mode, Nginx};
use crate::plan::{SERVICE_NAME_LABEL, Snapshot};
use crate::render::Settings;
use crate::types::{AIGateway, GatewayRoute};

/// How the operator runs.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The nginx binary.
    pub nginx_binary: PathBuf,
    /// Where and how nginx listens and keeps its files.
    pub settings: Settings,
    /// Start nginx, or only adopt one another container runs.
    pub mode: Mode,
    /// Metrics address (`None` disables).
    pub metrics_addr: Option<SocketAddr>,
    /// Probe address (`None` disables).
    pub probe_addr: Option<SocketAddr>,
    /// Parallel reconciles per controller (syncs themselves are serialized).
    pub concurrency: usize,
    /// How often AI gateway integrations are probed.
    pub probe_interval: Duration,
    /// Watch PromptTemplates: `None` decides by whether their CRD is installed.
    pub prompt_templates: Option<bool>,
    /// Stop nginx gracefully when the operator stops.
    pub stop_nginx_on_exit: bool,
}

impl RunOptions {
    /// Options for a local nginx under `prefix` on loopback ports (tests, the demo).
    pub fn local(nginx_binary: PathBuf, prefix: PathBuf, http_port: u16, status_port: u16) -> Self {
        RunOptions {
            nginx_binary,
            settings: Settings::loopback(prefix, http_port, status_port),
            mode: Mode::Start,
            metrics_addr: None,
            probe_addr: None,
            concurrency: 4,
            probe_interval: Duration::from_secs(30),
            prompt_templates: None,
            stop_nginx_on_exit: false,
        }
    }
}

fn referencing_routes(
    routes: &Store<GatewayRoute>,
    ns: &str,
    f: impl Fn(&GatewayRoute) -> bool,
) -> Vec<ObjectKey> {
    routes
        .list()
        .into_iter()
        .filter(|r| r.namespace().as_deref() == Some(ns) && f(r))
        .map(|r| ObjectKey::of(&*r))
        .collect()
}

fn uses_service(r: &GatewayRoute, name: &str) -> bool {
    r.spec
        .backends
        .iter()
        .any(|b| b.service.as_ref().is_some_and(|s| s.name == name))
}

fn ai_uses_secret(g: &AIGateway, name: &str) -> bool {
    g.spec
        .model_integrations
        .iter()
        .any(|m| m.api_key_secret_ref.as_ref().is_some_and(|r| r.name == name))
        || g.spec
            .security_policies
            .iter()
            .any(|p| p.api_keys.iter().any(|k| k.secret_name == name))
}

fn referencing_ai(store: &Store<AIGateway>, ns: &str, f: impl Fn(&AIGateway) -> bool) -> Vec<ObjectKey> {
    store
        .list()
        .into_iter()
        .filter(|g| g.namespace().as_deref() == Some(ns) && f(g))
        .map(|g| ObjectKey::of(&*g))
        .collect()
}

async fn templates_installed(client: &kube::Client) -> bool {
    let api: kube::Api<PromptTemplate> = kube::Api::all(client.clone());
    api.list_metadata(&kube::api::ListParams::default().limit(1))
        .await
        .is_ok()
}

/// Run the operator until `shutdown` completes.
pub async fn run(
    client: kube::Client,
    options: RunOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let nginx = Nginx::new(
        options.nginx_binary.clone(),
        options.settings.clone(),
        options.mode,
    )
    .context("preparing the nginx prefix directory")?;
    let mut mgr = Manager::new(
        client.clone(),
        ManagerConfig {
            metrics_addr: options.metrics_addr,
            probe_addr: options.probe_addr,
            ..ManagerConfig::default()
        },
    );
    let factory = mgr.factory();
    let routes = factory.all::<GatewayRoute>();
    let ai = factory.all::<AIGateway>();
    let services = factory.all::<Service>();
    let slices = factory.all::<EndpointSlice>();
    let secrets = factory.all::<Secret>();
    let watch_templates = match options.prompt_templates {
        Some(b) => b,
        None => templates_installed(&client).await,
    };
    let templates = watch_templates.then(|| factory.all::<PromptTemplate>());
    let secrets_for_touch = secrets.clone();
    let templates_for_touch = templates.clone();
    tracing::info!(prompt_templates = watch_templates, "watching");

    let stores = (
        routes.store(),
        ai.store(),
        services.store(),
        slices.store(),
        secrets.store(),
        templates.as_ref().map(|t| t.store()),
    );
    let snapshot = {
        let s = stores.clone();
        Arc::new(move || Snapshot {
            routes: s.0.list(),
            ai_gateways: s.1.list(),
            services: s.2.list(),
            slices: s.3.list(),
            secrets: s.4.list(),
            templates: s.5.as_ref().map(|t| t.list()).unwrap_or_default(),
        })
    };
    let engine = Engine::new(nginx.clone(), snapshot);
    mgr.metrics().with_registry(|r| engine.metrics().register(r));
    let recorder = Recorder::new(client.clone(), "gateway-operator");
    let ctx = Arc::new(Context::new(
        engine,
        client.clone(),
        recorder.clone(),
        routes.store(),
        ai.store(),
        options.probe_interval,
    ));

    let route_store = routes.store();
    let (r1, r2, r3) = (route_store.clone(), route_store.clone(), route_store.clone());
    let route_controller = mgr
        .controller("gatewayroute", routes.clone())
        .events(recorder.clone())
        .with_predicate(Predicate::generation_changed())
        .watches(services.clone(), move |s: &Service| {
            let (ns, name) = (s.namespace().unwrap_or_default(), s.name_any());
            referencing_routes(&r1, &ns, |r| uses_service(r, &name))
        })
        .watches(slices.clone(), move |e: &EndpointSlice| {
            let ns = e.namespace().unwrap_or_default();
            match e.labels().get(SERVICE_NAME_LABEL) {
                Some(svc) => referencing_routes(&r2, &ns, |r| uses_service(r, svc)),
                None => vec![],
            }
        })
        .watches(secrets.clone(), move |s: &Secret| {
            let (ns, name) = (s.namespace().unwrap_or_default(), s.name_any());
            referencing_routes(&r3, &ns, |r| {
                r.spec.tls.as_ref().is_some_and(|t| t.secret_name == name)
            })
        })
        .concurrency(options.concurrency.max(1))
        .build(reconcile_route, ctx.clone());

    let ai_store = ai.store();
    let a1 = ai_store.clone();
    let mut ai_builder = mgr
        .controller("aigateway", ai.clone())
        .events(recorder)
        .with_predicate(Predicate::generation_changed())
        .watches(secrets, move |s: &Secret| {
            let (ns, name) = (s.namespace().unwrap_or_default(), s.name_any());
            referencing_ai(&a1, &ns, |g| ai_uses_secret(g, &name))
        });
    if let Some(t) = templates {
        let a2 = ai_store.clone();
        ai_builder = ai_builder.watches(t, move |pt: &PromptTemplate| {
            let (ns, name) = (pt.namespace().unwrap_or_default(), pt.name_any());
            referencing_ai(&a2, &ns, |g| {
                g.spec.prompt_templates.iter().any(|r| r.name == name)
            })
        });
    }
    let ai_controller = ai_builder
        .concurrency(options.concurrency.max(1))
        .build(reconcile_ai, ctx.clone());
    ctx.set_queues(route_controller.queue(), ai_controller.queue());
    // Every event of every watched kind marks the engine's caches as changed.
    fn touch_on<
        K: kube::Resource
            + Clone
            + serde::Serialize
            + serde::de::DeserializeOwned
            + std::fmt::Debug
            + Send
            + Sync
            + 'static,
    >(
        informer: &crwatch::informer::Informer<K>,
        ctx: &Arc<Context>,
    ) {
        let (a, u, d) = (ctx.clone(), ctx.clone(), ctx.clone());
        informer.add_handler(
            crwatch::informer::HandlerFns::new()
                .on_add(move |_: &Arc<K>| a.engine.touch())
                .on_update(move |_: &Arc<K>, _: &Arc<K>, _| u.engine.touch())
                .without_diff()
                .on_delete(move |_: &Arc<K>| d.engine.touch()),
        );
    }
    touch_on(&routes, &ctx);
    touch_on(&ai, &ctx);
    touch_on(&services, &ctx);
    touch_on(&slices, &ctx);
    touch_on(&secrets_for_touch, &ctx);
    if let Some(t) = &templates_for_touch {
        touch_on(t, &ctx);
    }
    mgr.add(route_controller);
    mgr.add(ai_controller);
    // Integrations are URLs: AI gateways do not watch Services or EndpointSlices.
    drop((services, slices));

    // A first sync once the caches are filled (nginx starts even with no resources), then a
    // watch on the nginx master: restarted on the live configuration if it dies.
    let stop = tokio_util::sync::CancellationToken::new();
    let keeper = {
        let (ctx, stop, routes, ai) = (ctx.clone(), stop.clone(), routes.clone(), ai.clone());
        tokio::spawn(async move {
            let synced = async {
                let _ = routes.wait_synced(Duration::from_secs(120)).await;
                let _ = ai.wait_synced(Duration::from_secs(120)).await;
            };
            tokio::select! { _ = stop.cancelled() => return, _ = synced => {} }
            ctx.engine.sync().await;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
                // The master died (start it again), the last sync failed (nginx was not up yet
                // in external mode), or nginx serves another generation (restarted by someone
                // else): sync. Otherwise this costs one loopback request.
                let latest = ctx.engine.latest();
                let nginx = ctx.engine.nginx();
                let master = nginx.master_pid().is_some();
                if !master || latest.error.is_some() || nginx.serving().await != latest.live {
                    if !master {
                        tracing::warn!("no nginx master is running; syncing to start or adopt one");
                    }
                    ctx.engine.touch();
                    ctx.engine.sync().await;
                }
            }
        })
    };

    let result = mgr.run(shutdown).await.context("running the gateway operator");
    stop.cancel();
    let _ = keeper.await;
    if options.stop_nginx_on_exit {
        nginx.stop(Duration::from_secs(30)).await;
    }
    result
}
