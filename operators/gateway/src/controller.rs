//! The reconcilers: each `GatewayRoute` or `AIGateway` reconcile runs one engine sync (which
//! coalesces with concurrent ones), then writes that resource's status from the outcome:
//! `Accepted`, `ResolvedRefs` and `Programmed` with `observedGeneration`, plus, for AI
//! gateways, each integration's reachability from a periodic probe. A status is written only
//! when it changes; a refusal also becomes a Warning Event. When a sync changes what another
//! resource's status should say (a conflict's winner went away, a Secret arrived), that
//! resource is queued too.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use chrono::Utc;
use crwatch::conditions::{Condition, ConditionStatus, find, set_condition};
use crwatch::controller::{Action, ReconcileError, Request};
use crwatch::events::{EventType, Recorder};
use crwatch::queue::WorkQueue;
use crwatch::store::{ObjectKey, Store};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};

use crate::engine::{Engine, Outcome};
use crate::plan::{Kind, ResKey, Verdict};
use crate::types::{
    AIGateway, AIGatewayStatus, GatewayRoute, IntegrationStatus, PromptTemplateStatus, RouteStatus, condition,
};

/// The shared state of both controllers.
pub struct Context {
    /// The engine.
    pub engine: Engine,
    client: kube::Client,
    recorder: Recorder,
    routes: Store<GatewayRoute>,
    ai_gateways: Store<AIGateway>,
    route_queue: OnceLock<WorkQueue<ObjectKey>>,
    ai_queue: OnceLock<WorkQueue<ObjectKey>>,
    prober: Prober,
    probe_interval: Duration,
}

impl Context {
    /// A context.
    pub fn new(
        engine: Engine,
        client: kube::Client,
        recorder: Recorder,
        routes: Store<GatewayRoute>,
        ai_gateways: Store<AIGateway>,
        probe_interval: Duration,
    ) -> Self {
        Context {
            engine,
            client,
            recorder,
            routes,
            ai_gateways,
            route_queue: OnceLock::new(),
            ai_queue: OnceLock::new(),
            prober: Prober::new(),
            probe_interval,
        }
    }

    /// Give the context the controllers' queues (after they are built).
    pub fn set_queues(&self, routes: WorkQueue<ObjectKey>, ai: WorkQueue<ObjectKey>) {
        let _ = self.route_queue.set(routes);
        let _ = self.ai_queue.set(ai);
    }

    /// Queue every resource whose status no longer matches the outcome.
    fn requeue_stale(&self, outcome: &Outcome, except: &ResKey) {
        for (key, verdict) in &outcome.verdicts {
            if key == except {
                continue;
            }
            let okey = ObjectKey::new(Some(&key.namespace), &key.name);
            let stale = match key.kind {
                Kind::Route => self.routes.get(&okey).is_some_and(|r| {
                    let current = r.status.clone().unwrap_or_default();
                    route_status(&current, key, verdict, outcome) != current
                }),
                Kind::AIGateway => self.ai_gateways.get(&okey).is_some_and(|g| {
                    let current = g.status.clone().unwrap_or_default();
                    let mut desired = current.clone();
                    ai_conditions(&mut desired, key, verdict, outcome);
                    desired != current
                }),
            };
            if stale {
                let queue = match key.kind {
                    Kind::Route => self.route_queue.get(),
                    Kind::AIGateway => self.ai_queue.get(),
                };
                if let Some(q) = queue {
                    q.add(okey);
                }
            }
        }
    }
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

fn cond(type_: &str, ok: bool, reason: &str, message: String, generation: i64) -> Condition {
    let status = if ok {
        ConditionStatus::True
    } else {
        ConditionStatus::False
    };
    Condition::new(type_, status, reason, message).with_observed_generation(generation)
}

/// The conditions a verdict and an outcome call for.
fn conditions(key: &ResKey, v: &Verdict, outcome: &Outcome) -> [Condition; 3] {
    let g = v.generation;
    let accepted = match &v.refused {
        None => cond(
            condition::ACCEPTED,
            true,
            "Accepted",
            format!("{} is valid and served", key.kind.as_str()),
            g,
        ),
        Some(r) => cond(condition::ACCEPTED, false, r.reason, r.message.clone(), g),
    };
    let resolved = if v.unresolved.is_empty() {
        cond(
            condition::RESOLVED_REFS,
            true,
            "ResolvedRefs",
            "all references resolved".into(),
            g,
        )
    } else {
        cond(
            condition::RESOLVED_REFS,
            false,
            "RefNotFound",
            v.unresolved.join("; "),
            g,
        )
    };
    let programmed = match (&v.refused, outcome.programmed.get(key)) {
        (Some(_), _) => cond(
            condition::PROGRAMMED,
            false,
            "NotAccepted",
            "not served: see Accepted".into(),
            g,
        ),
        // No generation hash in the message: it changes with every change of any resource,
        // and would rewrite every status on each one.
        (None, Some(live)) if *live == g => cond(
            condition::PROGRAMMED,
            true,
            "Programmed",
            "live in nginx".into(),
            g,
        ),
        (None, _) => cond(
            condition::PROGRAMMED,
            false,
            "Pending",
            outcome
                .error
                .clone()
                .unwrap_or_else(|| "waiting for nginx to load this generation".into()),
            g,
        ),
    };
    [accepted, resolved, programmed]
}

fn route_status(current: &RouteStatus, key: &ResKey, v: &Verdict, outcome: &Outcome) -> RouteStatus {
    let mut s = current.clone();
    let t = now();
    for c in conditions(key, v, outcome) {
        set_condition(&mut s.conditions, c, t.clone());
    }
    s.observed_generation = Some(v.generation);
    s
}

fn ai_conditions(s: &mut AIGatewayStatus, key: &ResKey, v: &Verdict, outcome: &Outcome) {
    let t = now();
    for c in conditions(key, v, outcome) {
        set_condition(&mut s.conditions, c, t.clone());
    }
    s.observed_generation = Some(v.generation);
    s.prompt_templates = v
        .templates
        .iter()
        .map(|(name, resolved, rv)| PromptTemplateStatus {
            name: name.clone(),
            resolved: *resolved,
            resource_version: rv.clone(),
        })
        .collect();
}

async fn publish_transitions<K: Resource<DynamicType = ()>>(
    recorder: &Recorder,
    obj: &K,
    before: &[Condition],
    after: &[Condition],
) {
    let reference = obj.object_ref(&());
    for type_ in [condition::ACCEPTED, condition::PROGRAMMED] {
        let (Some(new), old) = (find(after, type_), find(before, type_)) else {
            continue;
        };
        if old.is_some_and(|o| o.status == new.status && o.reason == new.reason && o.message == new.message) {
            continue;
        }
        let (event_type, skip) = match (type_, new.is_true()) {
            (condition::ACCEPTED, false) => (EventType::Warning, false),
            (condition::PROGRAMMED, true) => (EventType::Normal, false),
            _ => (EventType::Normal, true),
        };
        if skip {
            continue;
        }
        if let Err(e) = recorder
            .publish(&reference, event_type, &new.reason, &new.message, "Reconcile")
            .await
        {
            tracing::debug!(error = %e, "could not publish an Event");
        }
    }
}

/// Reconcile a `GatewayRoute`.
pub async fn reconcile_route(
    req: Request<GatewayRoute>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    let before = ctx.engine.latest();
    let outcome = ctx.engine.sync().await;
    let Request::Apply(route) = req else {
        // Deleted: the sync removed it from nginx; others may now win its conflicts.
        ctx.requeue_stale(&outcome, &ResKey::new(Kind::Route, "", ""));
        return sync_result(&outcome);
    };
    let key = ResKey::new(
        Kind::Route,
        &route.namespace().unwrap_or_default(),
        &route.name_any(),
    );
    if let Some(v) = outcome.verdicts.get(&key) {
        let current = route.status.clone().unwrap_or_default();
        let desired = route_status(&current, &key, v, &outcome);
        if desired != current {
            let api: Api<GatewayRoute> = Api::namespaced(ctx.client.clone(), &key.namespace);
            let patch = serde_json::json!({ "status": desired });
            crwatch::api::patch_status(&api, &key.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            publish_transitions(&ctx.recorder, &*route, &current.conditions, &desired.conditions).await;
        }
    }
    if crate::engine::changed(&before, &outcome).len() > 1 {
        ctx.requeue_stale(&outcome, &key);
    }
    sync_result(&outcome)
}

fn sync_result(outcome: &Outcome) -> Result<Action, ReconcileError> {
    match &outcome.error {
        // Retried with the queue's backoff; statuses already say what is wrong.
        Some(e) => Err(ReconcileError::transient(anyhow::anyhow!("{e}"))),
        None => Ok(Action::done()),
    }
}

/// Reconcile an `AIGateway`: sync, probe its integrations (at most every probe interval),
/// write its status, and come back for the next probe.
pub async fn reconcile_ai(req: Request<AIGateway>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let before = ctx.engine.latest();
    let outcome = ctx.engine.sync().await;
    let Request::Apply(gw) = req else {
        ctx.requeue_stale(&outcome, &ResKey::new(Kind::AIGateway, "", ""));
        return sync_result(&outcome);
    };
    let key = ResKey::new(
        Kind::AIGateway,
        &gw.namespace().unwrap_or_default(),
        &gw.name_any(),
    );
    let current = gw.status.clone().unwrap_or_default();
    let mut desired = current.clone();
    if let Some(v) = outcome.verdicts.get(&key) {
        ai_conditions(&mut desired, &key, v, &outcome);
    }
    // Reachability.
    let probes = ctx.prober.probe(&ctx, &gw, ctx.probe_interval).await;
    let t = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    desired.integrations = probes
        .iter()
        .map(|p| {
            let prev = current.integrations.iter().find(|i| i.name == p.name);
            let changed = prev.is_none_or(|i| i.reachable != p.reachable);
            IntegrationStatus {
                last_transition_time: if changed {
                    Some(t.clone())
                } else {
                    prev.and_then(|i| i.last_transition_time.clone())
                },
                ..p.clone()
            }
        })
        .collect();
    let unreachable: Vec<String> = desired
        .integrations
        .iter()
        .filter(|i| !i.reachable)
        .map(|i| format!("{}: {}", i.name, i.message))
        .collect();
    let g = gw.metadata.generation.unwrap_or(0);
    let reach = if unreachable.is_empty() {
        cond(
            condition::INTEGRATIONS_REACHABLE,
            true,
            "Reachable",
            "every integration answered".into(),
            g,
        )
    } else {
        cond(
            condition::INTEGRATIONS_REACHABLE,
            false,
            "Unreachable",
            unreachable.join("; "),
            g,
        )
    };
    set_condition(&mut desired.conditions, reach, now());
    if desired != current {
        let api: Api<AIGateway> = Api::namespaced(ctx.client.clone(), &key.namespace);
        let patch = serde_json::json!({ "status": desired });
        crwatch::api::patch_status(&api, &key.name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
        publish_transitions(&ctx.recorder, &*gw, &current.conditions, &desired.conditions).await;
    }
    if crate::engine::changed(&before, &outcome).len() > 1 {
        ctx.requeue_stale(&outcome, &key);
    }
    sync_result(&outcome)?;
    Ok(Action::requeue_after(ctx.probe_interval))
}

/// A probe's identity: the gateway, the integration's name, the URL probed.
type ProbeKey = (ResKey, String, String);

/// Probes integrations' `models` endpoints, remembering results for a probe interval.
struct Prober {
    client: Option<reqwest::Client>,
    error: Option<String>,
    cache: Mutex<BTreeMap<ProbeKey, (Instant, IntegrationStatus)>>,
}

/// The most remembered probe results.
const MAX_PROBE_CACHE: usize = 10_000;

impl Prober {
    fn new() -> Self {
        let built = crwatch::tls::client_config(None, false, true)
            .map_err(|e| e.to_string())
            .and_then(|tls| {
                reqwest::Client::builder()
                    .tls_backend_preconfigured(tls)
                    .redirect(reqwest::redirect::Policy::none())
                    .timeout(Duration::from_secs(5))
                    .user_agent(concat!("gateway-operator/", env!("CARGO_PKG_VERSION")))
                    .build()
                    .map_err(|e| e.to_string())
            });
        match built {
            Ok(client) => Prober {
                client: Some(client),
                error: None,
                cache: Mutex::default(),
            },
            Err(e) => Prober {
                client: None,
                error: Some(e),
                cache: Mutex::default(),
            },
        }
    }

    async fn probe(&self, ctx: &Context, gw: &AIGateway, interval: Duration) -> Vec<IntegrationStatus> {
        let key = ResKey::new(
            Kind::AIGateway,
            &gw.namespace().unwrap_or_default(),
            &gw.name_any(),
        );
        let snapshot = ctx.engine.snapshot();
        let plan = crate::plan::plan(&crate::plan::Snapshot {
            ai_gateways: vec![Arc::new(gw.clone())],
            secrets: snapshot.secrets,
            ..Default::default()
        });
        let integrations: Vec<crate::plan::AiIntegration> = plan
            .units
            .iter()
            .find_map(|u| match &u.body {
                crate::plan::UnitBody::Ai(b) => Some(b.integrations.clone()),
                _ => None,
            })
            .unwrap_or_default();
        let mut out = Vec::new();
        let mut fresh = Vec::new();
        for m in &integrations {
            let url = format!("{}://{}{}/models", m.scheme, m.host_header, m.base_path);
            let cache_key = (key.clone(), m.name.clone(), url.clone());
            let cached = self
                .cache
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&cache_key)
                .filter(|(at, _)| at.elapsed() < interval / 2)
                .map(|(_, s)| s.clone());
            match cached {
                Some(s) => out.push(s),
                None => fresh.push((cache_key, url, m.clone())),
            }
        }
        let results = futures::future::join_all(fresh.into_iter().map(|(cache_key, url, m)| async move {
            let status = self.probe_one(&url, &m).await;
            (cache_key, status)
        }))
        .await;
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() > MAX_PROBE_CACHE {
            cache.clear();
        }
        for (k, s) in results {
            cache.insert(k, (Instant::now(), s.clone()));
            out.push(s);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    async fn probe_one(&self, url: &str, m: &crate::plan::AiIntegration) -> IntegrationStatus {
        let base = IntegrationStatus {
            name: m.name.clone(),
            ..Default::default()
        };
        let Some(client) = &self.client else {
            return IntegrationStatus {
                message: format!("no HTTP client: {}", self.error.as_deref().unwrap_or("?")),
                ..base
            };
        };
        let mut req = client.get(url);
        if let Some(k) = &m.api_key {
            req = req.bearer_auth(k);
        }
        match req.send().await {
            // The body is never read: it is the provider's, and may echo the request.
            Ok(resp) if resp.status().as_u16() < 500 => IntegrationStatus {
                reachable: true,
                status_code: Some(resp.status().as_u16()),
                ..base
            },
            Ok(resp) => IntegrationStatus {
                status_code: Some(resp.status().as_u16()),
                message: format!("GET models answered {}", resp.status()),
                ..base
            },
            Err(e) => IntegrationStatus {
                message: probe_error(&e),
                ..base
            },
        }
    }
}

/// A short reason without the URL's credentials (there are none in URLs; keys go in headers).
fn probe_error(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out after 5s".into()
    } else if e.is_connect() {
        "connection failed".into()
    } else {
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(e);
        while let Some(s) = src {
            msg = format!("{msg}: {s}");
            src = s.source();
        }
        msg.chars().take(300).collect()
    }
}
