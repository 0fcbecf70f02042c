//! From the cached resources to what nginx should serve: each valid `GatewayRoute` and
//! `AIGateway` becomes a [`Unit`] with its references resolved (Service ports through their
//! EndpointSlices, TLS and API-key Secrets, prompt templates), conflicts between units that
//! claim the same host, path and headers are settled (the oldest wins, by creation time, then
//! kind, namespace and name), and every resource gets a [`Verdict`] for its status.
//!
//! Planning is pure: the same caches give the same plan, so the rendered configuration (and
//! its hash) is the same after an operator restart, and nothing is reloaded.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use ai_context::types::PromptTemplate;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use sha2::{Digest, Sha256};

use crate::types::{AIGateway, GatewayRoute, HeaderMatchType, HeaderRewrite, PathMatchType, RateLimitKey};
use crate::validate::{self, parse_duration, parse_url};

/// The label an EndpointSlice carries naming its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The longest API key taken from a Secret.
pub const MAX_API_KEY_LEN: usize = 1024;

/// Which resource kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// `GatewayRoute`.
    Route,
    /// `AIGateway`.
    AIGateway,
}

impl Kind {
    /// The kind's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Route => "GatewayRoute",
            Kind::AIGateway => "AIGateway",
        }
    }
}

/// A resource: kind, namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResKey {
    /// Its kind.
    pub kind: Kind,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

impl ResKey {
    /// A key.
    pub fn new(kind: Kind, namespace: &str, name: &str) -> Self {
        ResKey {
            kind,
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }

    /// A short, stable identifier safe in nginx names (`u3f2a...`): 12 hex digits of the
    /// SHA-256 of kind, namespace and name.
    pub fn id(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.kind.as_str());
        h.update([0]);
        h.update(&self.namespace);
        h.update([0]);
        h.update(&self.name);
        format!("u{}", &hex::encode(h.finalize())[..12])
    }
}

impl fmt::Display for ResKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind.as_str(), self.namespace, self.name)
    }
}

/// How a unit's path is matched, normalized (a prefix has no trailing `/`, except `/`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PathKey {
    /// `= path`.
    Exact(String),
    /// Element-wise prefix.
    Prefix(String),
    /// PCRE.
    Regex(String),
}

impl fmt::Display for PathKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathKey::Exact(p) => write!(f, "exact path {p}"),
            PathKey::Prefix(p) => write!(f, "path prefix {p}"),
            PathKey::Regex(p) => write!(f, "path regex {p}"),
        }
    }
}

/// A header condition: lowercase name, how, value.
pub type HeaderCond = (String, HeaderMatchType, String);

/// Something nginx serves: one route or one AI gateway.
#[derive(Debug, Clone)]
pub struct Unit {
    /// The resource.
    pub key: ResKey,
    /// Its nginx identifier ([`ResKey::id`]).
    pub id: String,
    /// Its generation.
    pub generation: i64,
    /// Its creation time (RFC 3339), for "oldest wins".
    pub created: String,
    /// Its host; `None` serves every host.
    pub host: Option<String>,
    /// Its path.
    pub path: PathKey,
    /// Its header conditions, sorted.
    pub headers: Vec<HeaderCond>,
    /// What it does.
    pub body: UnitBody,
}

impl Unit {
    /// What two units must share to conflict.
    pub fn identity(&self) -> (Option<&str>, &PathKey, &[HeaderCond]) {
        (self.host.as_deref(), &self.path, &self.headers)
    }

    fn order(&self) -> (&str, &ResKey) {
        (&self.created, &self.key)
    }
}

/// A unit's behaviour.
#[derive(Debug, Clone)]
pub enum UnitBody {
    /// A `GatewayRoute`.
    Route(RouteBody),
    /// An `AIGateway`.
    Ai(AiBody),
}

/// A route's upstream and settings.
#[derive(Debug, Clone)]
pub struct RouteBody {
    /// `http` or `https`.
    pub scheme: &'static str,
    /// Upstream servers (`host:port`) with weights, merged and sorted; empty answers 503.
    pub servers: Vec<(String, u32)>,
    /// The TLS server name for an `https` URL backend.
    pub sni: Option<String>,
    /// `proxy_connect_timeout` in ms.
    pub connect_ms: u64,
    /// `proxy_read_timeout`/`proxy_send_timeout` in ms.
    pub read_ms: u64,
    /// Retries: (further attempts, conditions, budget ms).
    pub retries: Option<(u32, Vec<&'static str>, Option<u64>)>,
    /// Request header changes.
    pub request: HeaderRewrite,
    /// Response header changes.
    pub response: HeaderRewrite,
    /// TLS certificate and key (PEM) for the host.
    pub tls: Option<Tls>,
}

/// A certificate and key, PEM.
#[derive(Clone)]
pub struct Tls {
    /// `tls.crt`.
    pub cert: Vec<u8>,
    /// `tls.key` (secret).
    pub key: Vec<u8>,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Tls { .. }")
    }
}

/// An AI gateway, resolved.
#[derive(Debug, Clone)]
pub struct AiBody {
    /// Model endpoints.
    pub integrations: Vec<AiIntegration>,
    /// Routing rules in order.
    pub rules: Vec<AiRule>,
    /// Rate limits.
    pub limits: Vec<AiLimit>,
    /// The status of a refused request.
    pub limit_status: u16,
    /// Access policies.
    pub policies: Vec<AiPolicy>,
    /// Prompt templates served (name, JSON document).
    pub templates: Vec<(String, Vec<u8>)>,
    /// `proxy_read_timeout` in ms (the largest integration timeout).
    pub read_ms: u64,
}

impl AiBody {
    /// Whether any rule matches on the request body's `model`.
    pub fn uses_model(&self) -> bool {
        self.rules.iter().any(|r| r.model.is_some())
    }
}

/// One model endpoint.
#[derive(Clone)]
pub struct AiIntegration {
    /// Its name.
    pub name: String,
    /// `http` or `https`.
    pub scheme: &'static str,
    /// `host:port` for the upstream.
    pub authority: String,
    /// The `Host` header upstream.
    pub host_header: String,
    /// The TLS server name.
    pub sni: String,
    /// The base path (`/v1`), without a trailing `/`.
    pub base_path: String,
    /// The upstream API key (secret).
    pub api_key: Option<String>,
}

impl fmt::Debug for AiIntegration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AiIntegration")
            .field("name", &self.name)
            .field("authority", &self.authority)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// One routing rule.
#[derive(Debug, Clone)]
pub struct AiRule {
    /// The rule's name.
    pub name: String,
    /// The rest of the path must start with this.
    pub path_prefix: Option<String>,
    /// Exact header values (lowercase names).
    pub headers: Vec<(String, String)>,
    /// The body's `model`.
    pub model: Option<String>,
    /// Index into the integrations.
    pub integration: usize,
    /// The template named to the backend.
    pub template: Option<String>,
}

/// One rate limit.
#[derive(Debug, Clone)]
pub struct AiLimit {
    /// Its name.
    pub name: String,
    /// Requests per unit.
    pub rate: u32,
    /// `true`: per minute; `false`: per second.
    pub per_minute: bool,
    /// Burst.
    pub burst: u32,
    /// What is counted separately.
    pub key: RateLimitKey,
}

/// One access policy, resolved.
#[derive(Clone)]
pub struct AiPolicy {
    /// Its name.
    pub name: String,
    /// Allowed client networks (empty: any).
    pub cidrs: Vec<String>,
    /// Whether the policy asks for an API key.
    pub wants_keys: bool,
    /// Accepted keys: (client id `secret/key`, key value).
    pub keys: Vec<(String, String)>,
}

impl fmt::Debug for AiPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AiPolicy")
            .field("name", &self.name)
            .field("cidrs", &self.cidrs)
            .field("clients", &self.keys.iter().map(|(c, _)| c).collect::<Vec<_>>())
            .finish()
    }
}

/// Why a resource is not served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// `Invalid`, `Conflicted` or `RejectedByNginx`.
    pub reason: &'static str,
    /// For the condition and the Event.
    pub message: String,
}

/// What the plan says about one resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The generation planned.
    pub generation: i64,
    /// `None` when accepted.
    pub refused: Option<Refusal>,
    /// Unresolved references (missing Services, Secrets, templates), joined; empty when all
    /// resolved.
    pub unresolved: Vec<String>,
    /// For AI gateways: each referenced template (name, resolved, resourceVersion).
    pub templates: Vec<(String, bool, Option<String>)>,
}

/// The cached objects a plan is made from.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    /// Every `GatewayRoute`.
    pub routes: Vec<Arc<GatewayRoute>>,
    /// Every `AIGateway`.
    pub ai_gateways: Vec<Arc<AIGateway>>,
    /// Services.
    pub services: Vec<Arc<Service>>,
    /// EndpointSlices.
    pub slices: Vec<Arc<EndpointSlice>>,
    /// Secrets.
    pub secrets: Vec<Arc<Secret>>,
    /// PromptTemplates.
    pub templates: Vec<Arc<PromptTemplate>>,
}

/// Units to serve and a verdict for every resource.
#[derive(Debug, Default, Clone)]
pub struct Plan {
    /// Accepted units, oldest first.
    pub units: Vec<Unit>,
    /// Every resource's verdict.
    pub verdicts: BTreeMap<ResKey, Verdict>,
}

impl Plan {
    /// Drop `key`'s unit and record why.
    pub fn refuse(&mut self, key: &ResKey, reason: &'static str, message: String) {
        self.units.retain(|u| &u.key != key);
        if let Some(v) = self.verdicts.get_mut(key) {
            v.refused = Some(Refusal { reason, message });
        }
    }
}

type NsName = (String, String);

struct Lookups<'a> {
    services: BTreeMap<NsName, &'a Service>,
    slices: BTreeMap<NsName, Vec<&'a EndpointSlice>>,
    secrets: BTreeMap<NsName, &'a Secret>,
    templates: BTreeMap<NsName, &'a PromptTemplate>,
}

fn ns_name<K: kube::Resource>(o: &K) -> NsName {
    (
        o.meta().namespace.clone().unwrap_or_default(),
        o.meta().name.clone().unwrap_or_default(),
    )
}

impl<'a> Lookups<'a> {
    fn new(s: &'a Snapshot) -> Self {
        let mut slices: BTreeMap<NsName, Vec<&EndpointSlice>> = BTreeMap::new();
        for slice in &s.slices {
            if let Some(svc) = slice.labels().get(SERVICE_NAME_LABEL) {
                slices
                    .entry((slice.namespace().unwrap_or_default(), svc.clone()))
                    .or_default()
                    .push(slice);
            }
        }
        for list in slices.values_mut() {
            list.sort_by_key(|s| s.name_any());
        }
        Lookups {
            services: s.services.iter().map(|o| (ns_name(&**o), &**o)).collect(),
            slices,
            secrets: s.secrets.iter().map(|o| (ns_name(&**o), &**o)).collect(),
            templates: s.templates.iter().map(|o| (ns_name(&**o), &**o)).collect(),
        }
    }

    /// Ready endpoints (`ip:port`) of a Service port, or why there are none to look for.
    fn endpoints(&self, ns: &str, name: &str, port: i32) -> Result<Vec<String>, String> {
        let key = (ns.to_string(), name.to_string());
        let svc = self
            .services
            .get(&key)
            .ok_or_else(|| format!("Service {name} not found"))?;
        let spec = svc
            .spec
            .as_ref()
            .ok_or_else(|| format!("Service {name} has no spec"))?;
        if spec.type_.as_deref() == Some("ExternalName") {
            return Err(format!(
                "Service {name} is an ExternalName Service; use a url backend"
            ));
        }
        let sp = spec
            .ports
            .iter()
            .flatten()
            .find(|p| p.port == port)
            .ok_or_else(|| format!("Service {name} has no port {port}"))?;
        let port_name = sp.name.clone().unwrap_or_default();
        let mut out = BTreeSet::new();
        for slice in self.slices.get(&key).into_iter().flatten() {
            let Some(target) = slice
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.clone().unwrap_or_default() == port_name)
                .and_then(|p| p.port)
            else {
                continue;
            };
            if slice.address_type == "FQDN" {
                continue;
            }
            for ep in &slice.endpoints {
                let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                if !ready {
                    continue;
                }
                for addr in &ep.addresses {
                    match addr.parse::<std::net::IpAddr>() {
                        Ok(std::net::IpAddr::V6(ip)) => out.insert(format!("[{ip}]:{target}")),
                        Ok(ip) => out.insert(format!("{ip}:{target}")),
                        Err(_) => continue,
                    };
                }
            }
        }
        Ok(out.into_iter().collect())
    }

    fn secret_value(&self, ns: &str, name: &str, key: &str) -> Result<Vec<u8>, String> {
        let secret = self
            .secrets
            .get(&(ns.to_string(), name.to_string()))
            .ok_or_else(|| format!("Secret {name} not found"))?;
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|b| b.0.clone())
            .ok_or_else(|| format!("Secret {name} has no key {key}"))
    }
}

/// An API key as nginx can match it: printable ASCII without spaces or quotes.
fn api_key(bytes: Vec<u8>, what: &str) -> Result<String, String> {
    let s = String::from_utf8(bytes).map_err(|_| format!("{what} is not text"))?;
    let s = s.trim().to_string();
    if s.is_empty()
        || s.len() > MAX_API_KEY_LEN
        || !s.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
    {
        return Err(format!(
            "{what} is not a printable API key (1 to {MAX_API_KEY_LEN} characters, no spaces or quotes)"
        ));
    }
    Ok(s)
}

fn ms(d: Option<&str>, default: u64) -> u64 {
    d.and_then(parse_duration)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(default)
}

fn header_conds(list: &[crate::types::HeaderMatch]) -> Vec<HeaderCond> {
    let mut out: Vec<HeaderCond> = list
        .iter()
        .map(|h| (h.name.to_ascii_lowercase(), h.match_type, h.value.clone()))
        .collect();
    out.sort();
    out
}

fn route_unit(r: &GatewayRoute, look: &Lookups<'_>, unresolved: &mut Vec<String>) -> Result<Unit, Refusal> {
    let errors = validate::route(&r.spec);
    if !errors.is_empty() {
        return Err(Refusal {
            reason: "Invalid",
            message: validate::join(&errors),
        });
    }
    let ns = r.namespace().unwrap_or_default();
    let key = ResKey::new(Kind::Route, &ns, &r.name_any());
    let total: u64 = r.spec.backends.iter().map(|b| u64::from(b.weight)).sum();
    let mut servers: BTreeMap<String, u32> = BTreeMap::new();
    let mut scheme = "http";
    let mut sni = None;
    for b in &r.spec.backends {
        let addrs = if let Some(svc) = &b.service {
            match look.endpoints(&ns, &svc.name, svc.port) {
                Ok(a) => a,
                Err(e) => {
                    unresolved.push(e);
                    continue;
                }
            }
        } else if let Some(url) = &b.url {
            // Validated above.
            let Ok(parts) = parse_url(url) else { continue };
            scheme = parts.scheme;
            if parts.scheme == "https" {
                sni = Some(parts.host.trim_matches(['[', ']']).to_string());
            }
            vec![parts.authority()]
        } else {
            continue;
        };
        if b.weight == 0 || addrs.is_empty() || total == 0 {
            continue;
        }
        // Each backend's share split over its endpoints; nginx's smooth weighted round robin
        // then follows the weights exactly over every cycle.
        let share = (u64::from(b.weight) * 10_000 / total / addrs.len() as u64).max(1) as u32;
        for a in addrs {
            *servers.entry(a).or_default() += share;
        }
    }
    let tls = match &r.spec.tls {
        None => None,
        Some(t) => {
            let cert = look.secret_value(&ns, &t.secret_name, "tls.crt");
            let k = look.secret_value(&ns, &t.secret_name, "tls.key");
            match (cert, k) {
                (Ok(cert), Ok(key)) => Some(Tls { cert, key }),
                (Err(e), _) | (_, Err(e)) => {
                    return Err(Refusal {
                        reason: "InvalidCertificateRef",
                        message: format!("spec.tls.secretName: {e}"),
                    });
                }
            }
        }
    };
    let path = match r.spec.path.match_type {
        PathMatchType::Exact => PathKey::Exact(r.spec.path.value.clone()),
        PathMatchType::PathPrefix => {
            let p = r.spec.path.value.trim_end_matches('/');
            PathKey::Prefix(if p.is_empty() { "/".into() } else { p.to_string() })
        }
        PathMatchType::RegularExpression => PathKey::Regex(r.spec.path.value.clone()),
    };
    let timeouts = r.spec.timeouts.clone().unwrap_or_default();
    let retries = r.spec.retries.as_ref().map(|rt| {
        let mut on: Vec<&'static str> = rt.on.iter().map(|o| o.as_str()).collect();
        if on.is_empty() {
            on = vec!["error", "timeout", "http_502", "http_503", "http_504"];
        }
        on.sort_unstable();
        on.dedup();
        (
            rt.attempts,
            on,
            rt.budget
                .as_deref()
                .and_then(parse_duration)
                .map(|d| d.as_millis() as u64),
        )
    });
    Ok(Unit {
        id: key.id(),
        generation: r.metadata.generation.unwrap_or(0),
        created: created(&r.metadata),
        host: r.spec.host.clone(),
        path,
        headers: header_conds(&r.spec.headers),
        body: UnitBody::Route(RouteBody {
            scheme,
            servers: servers.into_iter().collect(),
            sni,
            connect_ms: ms(timeouts.connect.as_deref(), 5_000),
            read_ms: ms(timeouts.request.as_deref(), 60_000),
            retries,
            request: r.spec.request_headers.clone().unwrap_or_default(),
            response: r.spec.response_headers.clone().unwrap_or_default(),
            tls,
        }),
        key,
    })
}

fn created(meta: &kube::api::ObjectMeta) -> String {
    meta.creation_timestamp
        .as_ref()
        .map(|t| t.0.to_string())
        .unwrap_or_default()
}

fn ai_unit(
    g: &AIGateway,
    look: &Lookups<'_>,
    unresolved: &mut Vec<String>,
    templates_out: &mut Vec<(String, bool, Option<String>)>,
) -> Result<Unit, Refusal> {
    let errors = validate::ai_gateway(&g.spec);
    if !errors.is_empty() {
        return Err(Refusal {
            reason: "Invalid",
            message: validate::join(&errors),
        });
    }
    let ns = g.namespace().unwrap_or_default();
    let key = ResKey::new(Kind::AIGateway, &ns, &g.name_any());
    let mut integrations = Vec::new();
    for (i, m) in g.spec.model_integrations.iter().enumerate() {
        let Ok(parts) = parse_url(&m.base_url) else {
            continue;
        };
        let api_key = match &m.api_key_secret_ref {
            None => None,
            Some(r) => match look
                .secret_value(&ns, &r.name, &r.key)
                .and_then(|b| api_key(b, &format!("key {} of Secret {}", r.key, r.name)))
            {
                Ok(k) => Some(k),
                Err(e) => {
                    unresolved.push(format!("spec.modelIntegrations[{i}].apiKeySecretRef: {e}"));
                    None
                }
            },
        };
        let default_port = if parts.scheme == "https" { 443 } else { 80 };
        let host_header = if parts.port == default_port {
            parts.host.clone()
        } else {
            parts.authority()
        };
        integrations.push(AiIntegration {
            name: m.name.clone(),
            scheme: parts.scheme,
            authority: parts.authority(),
            host_header,
            sni: parts.host.trim_matches(['[', ']']).to_string(),
            base_path: parts.path.clone(),
            api_key,
        });
    }
    let index: BTreeMap<&str, usize> = integrations
        .iter()
        .enumerate()
        .map(|(i, m)| (m.name.as_str(), i))
        .collect();
    let mut rules: Vec<AiRule> = g
        .spec
        .routing_rules
        .iter()
        .filter_map(|r| {
            let m = r.matches.clone().unwrap_or_default();
            Some(AiRule {
                name: r.name.clone(),
                path_prefix: m.path_prefix.filter(|p| !p.is_empty()),
                headers: m
                    .headers
                    .iter()
                    .map(|h| (h.name.to_ascii_lowercase(), h.value.clone()))
                    .collect(),
                model: m.model,
                integration: *index.get(r.integration.as_str())?,
                template: r.prompt_template.clone(),
            })
        })
        .collect();
    if g.spec.routing_rules.is_empty() {
        // No rules: everything goes to the first integration.
        rules.push(AiRule {
            name: "default".into(),
            path_prefix: None,
            headers: vec![],
            model: None,
            integration: 0,
            template: None,
        });
    }
    let limits = g
        .spec
        .rate_limits
        .iter()
        .map(|l| AiLimit {
            name: l.name.clone(),
            rate: l.requests_per_second.or(l.requests_per_minute).unwrap_or(1),
            per_minute: l.requests_per_second.is_none(),
            burst: l.burst,
            key: l.key,
        })
        .collect();
    let limit_status = g.spec.rate_limits.first().map(|l| l.status_code).unwrap_or(429);
    let mut policies = Vec::new();
    for (i, p) in g.spec.security_policies.iter().enumerate() {
        let mut keys = Vec::new();
        for (j, src) in p.api_keys.iter().enumerate() {
            let field = format!("spec.securityPolicies[{i}].apiKeys[{j}]");
            let Some(secret) = look.secrets.get(&(ns.clone(), src.secret_name.clone())) else {
                unresolved.push(format!("{field}: Secret {} not found", src.secret_name));
                continue;
            };
            let data = secret.data.clone().unwrap_or_default();
            let wanted: Vec<(&String, &k8s_openapi::ByteString)> = match &src.key {
                Some(k) => match data.get_key_value(k) {
                    Some(kv) => vec![kv],
                    None => {
                        unresolved.push(format!("{field}: Secret {} has no key {k}", src.secret_name));
                        continue;
                    }
                },
                None => data.iter().collect(),
            };
            for (k, v) in wanted {
                match api_key(v.0.clone(), &format!("key {k} of Secret {}", src.secret_name)) {
                    Ok(value) => keys.push((format!("{}/{k}", src.secret_name), value)),
                    Err(e) => unresolved.push(format!("{field}: {e}")),
                }
            }
        }
        policies.push(AiPolicy {
            name: p.name.clone(),
            cidrs: p.allowed_cidrs.clone(),
            wants_keys: !p.api_keys.is_empty(),
            keys,
        });
    }
    let mut templates = Vec::new();
    for t in &g.spec.prompt_templates {
        match look.templates.get(&(ns.clone(), t.name.clone())) {
            Some(pt) => {
                let doc = serde_json::json!({
                    "name": t.name,
                    "resourceVersion": pt.resource_version(),
                    "template": pt.spec.template,
                    "variables": pt.spec.variables,
                    "description": pt.spec.description,
                });
                templates.push((t.name.clone(), serde_json::to_vec(&doc).unwrap_or_default()));
                templates_out.push((t.name.clone(), true, pt.resource_version()));
            }
            None => {
                unresolved.push(format!("PromptTemplate {} not found", t.name));
                templates_out.push((t.name.clone(), false, None));
            }
        }
    }
    let read_ms = g
        .spec
        .model_integrations
        .iter()
        .map(|m| ms(m.timeout.as_deref(), 300_000))
        .max()
        .unwrap_or(300_000);
    let prefix = g.spec.path_prefix.trim_end_matches('/');
    Ok(Unit {
        id: key.id(),
        generation: g.metadata.generation.unwrap_or(0),
        created: created(&g.metadata),
        host: g.spec.host.clone(),
        path: PathKey::Prefix(if prefix.is_empty() {
            "/".into()
        } else {
            prefix.to_string()
        }),
        headers: vec![],
        body: UnitBody::Ai(AiBody {
            integrations,
            rules,
            limits,
            limit_status,
            policies,
            templates,
            read_ms,
        }),
        key,
    })
}

/// Make the plan.
///
/// ```
/// use std::sync::Arc;
/// use gateway_operator::plan::{plan, Snapshot};
/// use gateway_operator::types::GatewayRoute;
/// let mut a: GatewayRoute = serde_json::from_value(serde_json::json!({
///     "apiVersion": "gateway.crwatch.io/v1alpha1", "kind": "GatewayRoute",
///     "metadata": {"name": "a", "namespace": "default", "creationTimestamp": "2026-01-01T00:00:00Z"},
///     "spec": {"host": "x.example", "backends": [{"url": "http://127.0.0.1:9000"}]},
/// })).unwrap();
/// let mut b = a.clone();
/// b.metadata.name = Some("b".into());
/// b.metadata.creation_timestamp = Some(serde_json::from_value(serde_json::json!("2026-01-02T00:00:00Z")).unwrap());
/// let p = plan(&Snapshot { routes: vec![Arc::new(b), Arc::new(a)], ..Default::default() });
/// assert_eq!(p.units.len(), 1);
/// assert_eq!(p.units[0].key.name, "a");
/// let loser = p.verdicts.values().find(|v| v.refused.is_some()).unwrap();
/// assert_eq!(loser.refused.as_ref().unwrap().reason, "Conflicted");
/// ```
pub fn plan(s: &Snapshot) -> Plan {
    let look = Lookups::new(s);
    let mut out = Plan::default();
    let mut candidates = Vec::new();
    for r in &s.routes {
        let key = ResKey::new(Kind::Route, &r.namespace().unwrap_or_default(), &r.name_any());
        let mut unresolved = Vec::new();
        let result = route_unit(r, &look, &mut unresolved);
        out.verdicts.insert(
            key,
            Verdict {
                generation: r.metadata.generation.unwrap_or(0),
                refused: result.as_ref().err().cloned(),
                unresolved,
                templates: vec![],
            },
        );
        if let Ok(u) = result {
            candidates.push(u);
        }
    }
    for g in &s.ai_gateways {
        let key = ResKey::new(Kind::AIGateway, &g.namespace().unwrap_or_default(), &g.name_any());
        let mut unresolved = Vec::new();
        let mut templates = Vec::new();
        let result = ai_unit(g, &look, &mut unresolved, &mut templates);
        out.verdicts.insert(
            key,
            Verdict {
                generation: g.metadata.generation.unwrap_or(0),
                refused: result.as_ref().err().cloned(),
                unresolved,
                templates,
            },
        );
        if let Ok(u) = result {
            candidates.push(u);
        }
    }
    candidates.sort_by(|a, b| a.order().cmp(&b.order()));
    let mut winners: BTreeMap<(Option<String>, PathKey, Vec<HeaderCond>), ResKey> = BTreeMap::new();
    for u in candidates {
        let (host, path, headers) = u.identity();
        let ident = (host.map(str::to_string), path.clone(), headers.to_vec());
        if let Some(winner) = winners.get(&ident) {
            let message = format!(
                "{winner} (older) already serves host {} {path}{}; this one is not served until that one goes",
                host.unwrap_or("*"),
                if headers.is_empty() {
                    String::new()
                } else {
                    " with the same header matches".into()
                }
            );
            if let Some(v) = out.verdicts.get_mut(&u.key) {
                v.refused = Some(Refusal {
                    reason: "Conflicted",
                    message,
                });
            }
            continue;
        }
        winners.insert(ident, u.key.clone());
        out.units.push(u);
    }
    out
}
