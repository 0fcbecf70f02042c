//! The gateway resources (`gateway.crwatch.io/v1alpha1`): `GatewayRoute` (a host and path
//! routed to weighted backends, with timeouts, retries, header rewrites and TLS) and
//! `AIGateway` (OpenAI-compatible model integrations, routing by path, header or model, rate
//! limits, API-key and CIDR policies, prompt templates), with the JSON schemas their CRDs carry.
//!
//! The schemas check shapes, lengths, patterns and ranges, so most mistakes are refused by the
//! API server. What a schema cannot say (a backend is either a Service or a URL, regular
//! expressions compile, durations are in range) is checked by [`crate::validate`], which turns
//! a mistake into an `Accepted=False` condition and an Event. Everything that reaches the nginx
//! configuration is quoted by [`crate::render`]; the patterns here are a first line, not the
//! only one.
//!
//! Enums implement `JsonSchema` by hand: a CRD wants a plain string `enum`, where derived,
//! documented variants become a `oneOf` of constants.

use crwatch::conditions::{Condition, conditions_schema};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of the gateway resources.
pub const GROUP: &str = "gateway.crwatch.io";
/// Their version.
pub const VERSION: &str = "v1alpha1";

/// A host name: DNS labels, optionally with a leading `*.` wildcard label, lowercase.
pub const HOST_PATTERN: &str = r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// An HTTP header name (an RFC 9110 token).
pub const HEADER_NAME_PATTERN: &str = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$";
/// A duration: a whole number of milliseconds, seconds, minutes or hours (`500ms`, `30s`).
pub const DURATION_PATTERN: &str = r"^[0-9]{1,7}(ms|s|m|h)$";
/// A DNS-1123 label (integration, rule and policy names).
pub const NAME_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// The most backends one route has.
pub const MAX_BACKENDS: usize = 16;
/// The most header matches, or header rewrites of one kind, one route has.
pub const MAX_HEADERS: usize = 16;
/// The largest backend weight.
pub const MAX_WEIGHT: u32 = 10_000;
/// The most retry attempts.
pub const MAX_RETRIES: u32 = 10;

use crwatch::string_enum_schema;

/// A route: requests for a host and path go to weighted backends.
///
/// ```
/// use gateway_operator::types::{GatewayRoute, GatewayRouteSpec, PathMatchType};
/// let spec: GatewayRouteSpec = serde_json::from_value(serde_json::json!({
///     "host": "shop.example.com",
///     "path": {"type": "PathPrefix", "value": "/api"},
///     "backends": [
///         {"service": {"name": "api-v1", "port": 80}, "weight": 90},
///         {"url": "http://127.0.0.1:9001", "weight": 10},
///     ],
///     "timeouts": {"request": "30s"},
///     "retries": {"attempts": 2},
/// }))
/// .unwrap();
/// assert_eq!(spec.path.match_type, PathMatchType::PathPrefix);
/// let route = GatewayRoute::new("shop-api", spec);
/// assert_eq!(route.spec.backends[1].weight, 10);
/// ```
#[derive(CustomResource, Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "gateway.crwatch.io",
    version = "v1alpha1",
    kind = "GatewayRoute",
    plural = "gatewayroutes",
    singular = "gatewayroute",
    shortname = "gwr",
    namespaced,
    status = "RouteStatus",
    doc = "A route: requests for a host and path go to weighted backends through the gateway's nginx.",
    printcolumn = r#"{"name":"Host","type":"string","jsonPath":".spec.host"}"#,
    printcolumn = r#"{"name":"Path","type":"string","jsonPath":".spec.path.value"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Programmed","type":"string","jsonPath":".status.conditions[?(@.type==\"Programmed\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(description = "The route wanted.")]
pub struct GatewayRouteSpec {
    /// The host the route serves (`shop.example.com`, or `*.example.com`); unset serves every
    /// host that has no route of its own for the path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253), pattern(HOST_PATTERN))]
    pub host: Option<String>,
    /// Which request paths the route matches (default: every path, prefix `/`).
    #[serde(default)]
    pub path: PathMatch,
    /// Request headers that must all match too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub headers: Vec<HeaderMatch>,
    /// Where matching requests go, shared by weight.
    #[schemars(length(min = 1, max = 16))]
    pub backends: Vec<Backend>,
    /// Timeouts towards the backends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<Timeouts>,
    /// Retries on another backend endpoint when one fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<Retries>,
    /// Headers changed on the request before it reaches a backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_headers: Option<HeaderRewrite>,
    /// Headers changed on the response before it reaches the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_headers: Option<HeaderRewrite>,
    /// Serve the host over TLS too, with the certificate of a `kubernetes.io/tls` Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<RouteTls>,
}

/// A path match.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PathMatch {
    /// How `value` is compared with the request path.
    #[serde(rename = "type", default)]
    pub match_type: PathMatchType,
    /// The path (`/api`), or a PCRE regular expression for `RegularExpression`.
    #[schemars(length(min = 1, max = 1024))]
    pub value: String,
}

impl Default for PathMatch {
    fn default() -> Self {
        PathMatch {
            match_type: PathMatchType::PathPrefix,
            value: "/".into(),
        }
    }
}

/// How a path is matched.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum PathMatchType {
    /// The path, or the path followed by `/` and more (`/api` matches `/api` and `/api/x`,
    /// not `/apix`).
    #[default]
    PathPrefix,
    /// Exactly this path.
    Exact,
    /// A PCRE regular expression, as nginx evaluates it (case-sensitive, unanchored unless
    /// anchored with `^`/`$`).
    RegularExpression,
}

string_enum_schema!(
    PathMatchType,
    "How the path is matched: PathPrefix (element-wise prefix), Exact, or RegularExpression (PCRE).",
    ["PathPrefix", "Exact", "RegularExpression"],
    default = "PathPrefix"
);

impl PathMatchType {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            PathMatchType::PathPrefix => "PathPrefix",
            PathMatchType::Exact => "Exact",
            PathMatchType::RegularExpression => "RegularExpression",
        }
    }
}

/// A request header match.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeaderMatch {
    /// The header name (case-insensitive).
    #[schemars(length(min = 1, max = 256), pattern(HEADER_NAME_PATTERN))]
    pub name: String,
    /// The value wanted, or a PCRE regular expression for `RegularExpression`.
    #[schemars(length(max = 4096))]
    pub value: String,
    /// How `value` is compared.
    #[serde(rename = "type", default)]
    pub match_type: HeaderMatchType,
}

/// How a header value is matched.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum HeaderMatchType {
    /// Exactly this value.
    #[default]
    Exact,
    /// A PCRE regular expression over the value.
    RegularExpression,
}

string_enum_schema!(
    HeaderMatchType,
    "How the header value is matched: Exact or RegularExpression (PCRE).",
    ["Exact", "RegularExpression"],
    default = "Exact"
);

/// One backend: a Service port (resolved through its EndpointSlices) or a URL.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Backend {
    /// A Service in the route's namespace; its ready endpoints become the upstream servers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceBackend>,
    /// An `http://` or `https://` URL (`http://10.0.0.7:8080`); a host name is resolved when
    /// nginx loads the configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub url: Option<String>,
    /// This backend's share of the requests, relative to the others (0 sends none).
    #[serde(default = "default_weight")]
    #[schemars(range(min = 0, max = 10000))]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

/// A Service port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceBackend {
    /// The Service's name.
    #[schemars(length(min = 1, max = 63), pattern(NAME_PATTERN))]
    pub name: String,
    /// The Service port's number.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

/// Timeouts towards the backends.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Timeouts {
    /// Establishing a connection (nginx `proxy_connect_timeout`; default 5s, at most 75s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN))]
    pub connect: Option<String>,
    /// Between two reads or writes of the response or request (`proxy_read_timeout`,
    /// `proxy_send_timeout`; default 60s, at most 1h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN))]
    pub request: Option<String>,
}

/// Retries: a failed attempt is passed to another endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Retries {
    /// Further attempts after the first (0 to 10).
    #[schemars(range(min = 0, max = 10))]
    pub attempts: u32,
    /// What counts as failed (nginx `proxy_next_upstream` conditions); default `error`,
    /// `timeout`, `http_502`, `http_503`, `http_504`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 12))]
    pub on: Vec<RetryOn>,
    /// Time for all attempts together (`proxy_next_upstream_timeout`; unset: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN))]
    pub budget: Option<String>,
}

/// A retry condition, as nginx's `proxy_next_upstream` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[allow(non_camel_case_types)]
pub enum RetryOn {
    /// Connection or I/O error.
    error,
    /// Timeout.
    timeout,
    /// A response with an empty or invalid header.
    invalid_header,
    /// 500.
    http_500,
    /// 502.
    http_502,
    /// 503.
    http_503,
    /// 504.
    http_504,
    /// 403.
    http_403,
    /// 404.
    http_404,
    /// 429.
    http_429,
    /// Also retry non-idempotent requests (POST, LOCK, PATCH).
    non_idempotent,
}

string_enum_schema!(
    RetryOn,
    "A retry condition (nginx proxy_next_upstream).",
    [
        "error",
        "timeout",
        "invalid_header",
        "http_500",
        "http_502",
        "http_503",
        "http_504",
        "http_403",
        "http_404",
        "http_429",
        "non_idempotent"
    ]
);

impl RetryOn {
    /// The nginx spelling (the same as the wire spelling).
    pub fn as_str(self) -> &'static str {
        match self {
            RetryOn::error => "error",
            RetryOn::timeout => "timeout",
            RetryOn::invalid_header => "invalid_header",
            RetryOn::http_500 => "http_500",
            RetryOn::http_502 => "http_502",
            RetryOn::http_503 => "http_503",
            RetryOn::http_504 => "http_504",
            RetryOn::http_403 => "http_403",
            RetryOn::http_404 => "http_404",
            RetryOn::http_429 => "http_429",
            RetryOn::non_idempotent => "non_idempotent",
        }
    }
}

/// Header changes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeaderRewrite {
    /// Headers set, replacing any value they had.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub set: Vec<HeaderValue>,
    /// Headers added beside any value they have (on requests nginx can only replace: `add`
    /// and `set` behave alike there).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub add: Vec<HeaderValue>,
    /// Header names removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub remove: Vec<HeaderName>,
}

/// A header name as a list item.
pub type HeaderName = String;

/// A header and its value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeaderValue {
    /// The header name.
    #[schemars(length(min = 1, max = 256), pattern(HEADER_NAME_PATTERN))]
    pub name: String,
    /// Its value, taken literally (`$` is not an nginx variable here).
    #[schemars(length(max = 4096))]
    pub value: String,
}

/// TLS for the route's host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteTls {
    /// A Secret in the route's namespace with `tls.crt` and `tls.key`.
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
}

/// What the operator observed about a route.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteStatus {
    /// The generation the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Accepted` (valid, not in conflict, accepted by `nginx -t`) and `Programmed` (live in
    /// nginx).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}

/// An AI gateway: OpenAI-compatible model endpoints behind one URL prefix, with routing by
/// path, header or model, rate limits, access policies and prompt templates.
///
/// ```
/// use gateway_operator::types::{AIGateway, AIGatewaySpec};
/// let spec: AIGatewaySpec = serde_json::from_value(serde_json::json!({
///     "host": "ai.example.com",
///     "modelIntegrations": [
///         {"name": "openai", "baseURL": "https://api.openai.com/v1",
///          "apiKeySecretRef": {"name": "openai", "key": "apiKey"}},
///         {"name": "local", "baseURL": "http://127.0.0.1:8000/v1"},
///     ],
///     "routingRules": [
///         {"name": "gpt", "match": {"model": "gpt-4o"}, "integration": "openai"},
///         {"name": "rest", "integration": "local"},
///     ],
///     "rateLimits": [{"name": "per-client", "requestsPerMinute": 600, "burst": 20}],
///     "securityPolicies": [{"name": "keys", "apiKeys": [{"secretName": "clients"}]}],
/// }))
/// .unwrap();
/// assert_eq!(AIGateway::new("ai", spec.clone()).spec.path_prefix, "/v1/");
/// assert_eq!(spec.model_integrations.len(), 2);
/// ```
#[derive(CustomResource, Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "gateway.crwatch.io",
    version = "v1alpha1",
    kind = "AIGateway",
    plural = "aigateways",
    singular = "aigateway",
    shortname = "aigw",
    namespaced,
    status = "AIGatewayStatus",
    doc = "An AI gateway: OpenAI-compatible model endpoints behind one URL prefix of the gateway's nginx.",
    printcolumn = r#"{"name":"Host","type":"string","jsonPath":".spec.host"}"#,
    printcolumn = r#"{"name":"Prefix","type":"string","jsonPath":".spec.pathPrefix"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Programmed","type":"string","jsonPath":".status.conditions[?(@.type==\"Programmed\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(description = "The AI gateway wanted.")]
pub struct AIGatewaySpec {
    /// The host it serves; unset serves every host without a route of its own for the prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253), pattern(HOST_PATTERN))]
    pub host: Option<String>,
    /// The URL prefix clients call (default `/v1/`); the rest of the path is appended to the
    /// integration's base URL (`/v1/chat/completions` -> `<baseURL>/chat/completions`).
    #[serde(default = "default_prefix")]
    #[schemars(length(min = 1, max = 256), pattern(r"^/([A-Za-z0-9._~-]+/)*$"))]
    pub path_prefix: String,
    /// The model endpoints.
    #[schemars(length(min = 1, max = 32))]
    pub model_integrations: Vec<ModelIntegration>,
    /// Which integration serves a request; the first rule that matches wins. A rule without
    /// a match catches everything.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub routing_rules: Vec<RoutingRule>,
    /// Request rate limits; every limit applies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub rate_limits: Vec<RateLimit>,
    /// Access policies; a request must pass every one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub security_policies: Vec<SecurityPolicy>,
    /// PromptTemplates (`ai.crwatch.io/v1alpha1`, same namespace) the gateway serves at
    /// `<pathPrefix>prompt-templates/<name>` and that routing rules may name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub prompt_templates: Vec<PromptTemplateRef>,
}

fn default_prefix() -> String {
    "/v1/".into()
}

/// An OpenAI-compatible endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelIntegration {
    /// Its name, unique in the gateway.
    #[schemars(length(min = 1, max = 63), pattern(NAME_PATTERN))]
    pub name: String,
    /// The API's base URL (`https://api.openai.com/v1`).
    #[serde(rename = "baseURL")]
    #[schemars(length(min = 1, max = 2048))]
    pub base_url: String,
    /// The API key sent upstream as `Authorization: Bearer`; it never appears in logs or
    /// status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_secret_ref: Option<SecretKeyRef>,
    /// Time allowed between two reads of the response (default 300s; streams can be slow).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN))]
    pub timeout: Option<String>,
}

/// A key of a Secret in the same namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key in its data.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// A routing rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoutingRule {
    /// Its name, for status and metrics.
    #[schemars(length(min = 1, max = 63), pattern(NAME_PATTERN))]
    pub name: String,
    /// What the request must match (all given parts); unset matches every request.
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub matches: Option<RuleMatch>,
    /// The integration that serves matching requests.
    #[schemars(length(min = 1, max = 63), pattern(NAME_PATTERN))]
    pub integration: String,
    /// A prompt template (listed in `promptTemplates`) named to the backend in the
    /// `x-crwatch-prompt-template` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub prompt_template: Option<String>,
}

/// The parts of a request a rule matches.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RuleMatch {
    /// The path after the prefix must start with this (`chat/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256), pattern(r"^[A-Za-z0-9._~/-]*$"))]
    pub path_prefix: Option<String>,
    /// Request headers, all of which must match exactly.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub headers: Vec<HeaderValue>,
    /// The `model` field of the JSON request body, exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub model: Option<String>,
}

/// A rate limit, enforced by nginx's `limit_req`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// Its name, unique in the gateway.
    #[schemars(length(min = 1, max = 63), pattern(NAME_PATTERN))]
    pub name: String,
    /// Requests per second allowed per key (exclusive with `requestsPerMinute`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub requests_per_second: Option<u32>,
    /// Requests per minute allowed per key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub requests_per_minute: Option<u32>,
    /// Requests allowed above the rate at once (served without delay, as `nodelay`).
    #[serde(default)]
    #[schemars(range(min = 0, max = 100000))]
    pub burst: u32,
    /// What is counted separately.
    #[serde(default)]
    pub key: RateLimitKey,
    /// The status of a refused request: 429 by default; 503 is nginx's own default.
    #[serde(default = "default_limit_status")]
    #[schemars(range(min = 400, max = 599))]
    pub status_code: u16,
}

fn default_limit_status() -> u16 {
    429
}

/// What a rate limit counts separately.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RateLimitKey {
    /// Each client API key (from the first `securityPolicies` entry with `apiKeys`; the
    /// client address when there is none).
    #[default]
    ClientKey,
    /// Each client address.
    RemoteAddress,
    /// All requests together.
    Global,
}

string_enum_schema!(
    RateLimitKey,
    "What is counted separately: ClientKey (each client API key), RemoteAddress, or Global.",
    ["ClientKey", "RemoteAddress", "Global"],
    default = "ClientKey"
);

/// An access policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecurityPolicy {
    /// Its name, unique in the gateway.
    #[schemars(length(min = 1, max = 63), pattern(NAME_PATTERN))]
    pub name: String,
    /// Accepted client API keys (`Authorization: Bearer <key>` or `x-api-key: <key>`): every
    /// value in these Secrets, or the named key only. A request without a key gets 401; a
    /// key not among them gets 401 too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub api_keys: Vec<ApiKeySource>,
    /// Client addresses allowed (`10.0.0.0/8`, `2001:db8::/32`); others get 403.
    #[serde(default, rename = "allowedCIDRs", skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub allowed_cidrs: Vec<String>,
}

/// Client API keys held in a Secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeySource {
    /// The Secret's name (same namespace).
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
    /// Only this key of the Secret; unset takes every value (each key names a client).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub key: Option<String>,
}

/// A PromptTemplate reference.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PromptTemplateRef {
    /// The PromptTemplate's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// What the operator observed about an AI gateway.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AIGatewayStatus {
    /// The generation the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Accepted`, `Programmed`, `ResolvedRefs` (Secrets and templates found) and
    /// `IntegrationsReachable`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// Each integration's reachability, from the operator's periodic probe.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub integrations: Vec<IntegrationStatus>,
    /// Each referenced prompt template.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prompt_templates: Vec<PromptTemplateStatus>,
}

/// An integration's reachability.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IntegrationStatus {
    /// The integration.
    pub name: String,
    /// Whether its `models` endpoint answered (any HTTP status below 500).
    pub reachable: bool,
    /// The HTTP status it answered with, if it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
    /// Why it is unreachable (never a response body).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// When `reachable` last changed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
}

/// A referenced prompt template.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PromptTemplateStatus {
    /// The template.
    pub name: String,
    /// Whether it exists.
    pub resolved: bool,
    /// The resourceVersion served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
}

/// Condition types.
pub mod condition {
    /// The resource is valid, not in conflict, and nginx accepted its configuration.
    pub const ACCEPTED: &str = "Accepted";
    /// The resource's configuration is live in nginx.
    pub const PROGRAMMED: &str = "Programmed";
    /// Every referenced Secret, Service and template was found.
    pub const RESOLVED_REFS: &str = "ResolvedRefs";
    /// Every model integration answered its probe.
    pub const INTEGRATIONS_REACHABLE: &str = "IntegrationsReachable";
}
