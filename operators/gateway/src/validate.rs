//! The rules a `GatewayRoute` or `AIGateway` must follow beyond its CRD schema, with field
//! paths: one backend kind per entry, URLs nginx can proxy to, durations in range, names that
//! are unique, references that point inside the resource, header names nginx can match, and no
//! control characters anywhere a value reaches the nginx configuration.
//!
//! The API server's schema already refuses most mistakes; these checks run again in the
//! reconciler because a resource can predate the schema (or come from a server that does not
//! validate), and an invalid one must become `Accepted=False` with a clear message, never a
//! broken nginx configuration.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use crate::types::{
    AIGatewaySpec, Backend, GatewayRouteSpec, HeaderRewrite, MAX_RETRIES, MAX_WEIGHT, PathMatchType,
};

/// The longest value (header value, path, key) written into the nginx configuration: nginx
/// refuses a single parameter of 4 KiB or more, and quoting can double a value.
pub const MAX_VALUE_LEN: usize = 2000;

/// One problem, at a field path such as `spec.backends[1].url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Where.
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// All problems, joined for a condition message.
///
/// ```
/// use gateway_operator::validate::{FieldError, join};
/// let e = vec![FieldError { field: "spec.host".into(), message: "bad".into() }];
/// assert_eq!(join(&e), "spec.host: bad");
/// ```
pub fn join(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

struct Errors(Vec<FieldError>);

impl Errors {
    fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }

    /// A value that is written into the configuration: no control characters, bounded.
    fn text(&mut self, field: &str, value: &str) {
        if value.len() > MAX_VALUE_LEN {
            self.add(field, format!("longer than {MAX_VALUE_LEN} bytes"));
        }
        if value.chars().any(|c| c.is_control() && c != '\t') {
            self.add(field, "contains a control character (such as a newline)");
        }
    }
}

/// A parsed duration from `500ms`, `30s`, `5m`, `1h`.
///
/// ```
/// use std::time::Duration;
/// use gateway_operator::validate::parse_duration;
/// assert_eq!(parse_duration("1500ms"), Some(Duration::from_millis(1500)));
/// assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
/// assert_eq!(parse_duration("2 m"), None);
/// ```
pub fn parse_duration(s: &str) -> Option<Duration> {
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (num, unit) = s.split_at(split);
    if num.is_empty() || num.len() > 7 {
        return None;
    }
    let n: u64 = num.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => Some(Duration::from_secs(n * 60)),
        "h" => Some(Duration::from_secs(n * 3600)),
        _ => None,
    }
}

fn duration(errors: &mut Errors, field: &str, value: Option<&str>, min: Duration, max: Duration) {
    let Some(value) = value else { return };
    match parse_duration(value) {
        None => errors.add(
            field,
            format!("{value:?} is not a duration such as 500ms, 30s, 5m or 1h"),
        ),
        Some(d) if d < min || d > max => errors.add(
            field,
            format!(
                "{value} is out of range ({} to {})",
                humantime::format_duration(min),
                humantime::format_duration(max)
            ),
        ),
        Some(_) => {}
    }
}

/// A host name as the schema's pattern says (checked again: the reconciler trusts nothing).
fn host_ok(host: &str) -> bool {
    let rest = host.strip_prefix("*.").unwrap_or(host);
    !rest.is_empty()
        && host.len() <= 253
        && rest.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// A header name nginx can match through a `$http_` variable: letters, digits and `-` (nginx
/// ignores request headers with `_` by default, and other token characters cannot be named).
fn matchable_header(name: &str) -> bool {
    !name.is_empty() && name.len() <= 256 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// An RFC 9110 token.
fn token(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 256
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+.^_`|~-".contains(&b))
}

/// The parts of a backend URL nginx needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlParts {
    /// `http` or `https`.
    pub scheme: &'static str,
    /// Host as written (IPv6 in brackets).
    pub host: String,
    /// Port (the scheme's default when absent).
    pub port: u16,
    /// The path, without a trailing `/` (empty for none).
    pub path: String,
}

impl UrlParts {
    /// `host:port` for an nginx `server` line.
    pub fn authority(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// Parse an `http://` or `https://` URL without user info, query or fragment.
///
/// ```
/// use gateway_operator::validate::parse_url;
/// let u = parse_url("https://api.openai.com/v1").unwrap();
/// assert_eq!((u.scheme, u.host.as_str(), u.port, u.path.as_str()), ("https", "api.openai.com", 443, "/v1"));
/// assert!(parse_url("ftp://x").is_err());
/// ```
pub fn parse_url(s: &str) -> Result<UrlParts, String> {
    let url = url::Url::parse(s).map_err(|e| format!("{s:?} is not a URL: {e}"))?;
    let scheme = match url.scheme() {
        "http" => "http",
        "https" => "https",
        other => return Err(format!("scheme {other:?} is not http or https")),
    };
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not contain user info; put credentials in a Secret".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must not have a query or fragment".into());
    }
    let host = match url.host() {
        // WHATWG URLs allow `;`, `{`, `"`, `$` and more in domains; nginx takes the host
        // unquoted in a `server` line, so only DNS characters pass.
        Some(url::Host::Domain(d))
            if !d
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.') =>
        {
            return Err(format!("host {d:?} is not a DNS name"));
        }
        Some(url::Host::Domain(d)) => d.to_string(),
        Some(url::Host::Ipv4(ip)) => ip.to_string(),
        Some(url::Host::Ipv6(ip)) => format!("[{ip}]"),
        None => return Err("has no host".into()),
    };
    let port = url
        .port_or_known_default()
        .ok_or_else(|| "has no port".to_string())?;
    let path = url.path().trim_end_matches('/').to_string();
    if path
        .chars()
        .any(|c| c.is_whitespace() || c == '"' || c == '\\' || c == '$')
    {
        return Err("path contains characters nginx cannot take literally".into());
    }
    Ok(UrlParts {
        scheme,
        host,
        port,
        path,
    })
}

fn backend(errors: &mut Errors, i: usize, b: &Backend) -> Option<&'static str> {
    let field = format!("spec.backends[{i}]");
    if b.weight > MAX_WEIGHT {
        errors.add(format!("{field}.weight"), format!("must be at most {MAX_WEIGHT}"));
    }
    match (&b.service, &b.url) {
        (Some(svc), None) => {
            if !(1..=65535).contains(&svc.port) {
                errors.add(format!("{field}.service.port"), "must be 1 to 65535");
            }
            if svc.name.is_empty()
                || svc.name.len() > 63
                || !svc
                    .name
                    .bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
            {
                errors.add(format!("{field}.service.name"), "must be a DNS-1123 label");
            }
            Some("http")
        }
        (None, Some(url)) => match parse_url(url) {
            Ok(parts) if !parts.path.is_empty() => {
                errors.add(
                    format!("{field}.url"),
                    "must not have a path: the request path is passed unchanged",
                );
                Some(parts.scheme)
            }
            Ok(parts) => Some(parts.scheme),
            Err(e) => {
                errors.add(format!("{field}.url"), e);
                None
            }
        },
        _ => {
            errors.add(field, "set exactly one of service and url");
            None
        }
    }
}

fn rewrite(errors: &mut Errors, field: &str, r: &HeaderRewrite) {
    for (kind, list) in [("set", &r.set), ("add", &r.add)] {
        for (i, h) in list.iter().enumerate() {
            if !token(&h.name) {
                errors.add(format!("{field}.{kind}[{i}].name"), "is not an HTTP header name");
            }
            errors.text(&format!("{field}.{kind}[{i}].value"), &h.value);
        }
    }
    for (i, name) in r.remove.iter().enumerate() {
        if !token(name) {
            errors.add(format!("{field}.remove[{i}]"), "is not an HTTP header name");
        }
    }
}

/// Check a `GatewayRoute` spec; empty when it is valid.
///
/// ```
/// use gateway_operator::types::GatewayRouteSpec;
/// use gateway_operator::validate::route;
/// let spec: GatewayRouteSpec = serde_json::from_value(serde_json::json!({
///     "backends": [{"url": "http://127.0.0.1:9000", "service": {"name": "x", "port": 80}}],
/// })).unwrap();
/// assert_eq!(route(&spec)[0].field, "spec.backends[0]");
/// ```
pub fn route(spec: &GatewayRouteSpec) -> Vec<FieldError> {
    let mut errors = Errors(Vec::new());
    if let Some(host) = &spec.host
        && !host_ok(host)
    {
        errors.add(
            "spec.host",
            "must be a lowercase DNS name, optionally starting with *.",
        );
    }
    errors.text("spec.path.value", &spec.path.value);
    match spec.path.match_type {
        PathMatchType::PathPrefix | PathMatchType::Exact => {
            let v = &spec.path.value;
            if !v.starts_with('/') {
                errors.add("spec.path.value", "must start with /");
            }
            if v.contains(['?', '#']) || v.chars().any(char::is_whitespace) {
                errors.add("spec.path.value", "must not contain ?, # or spaces");
            }
            if v.split('/').any(|seg| seg == "." || seg == "..") {
                errors.add("spec.path.value", "must not contain . or .. segments");
            }
        }
        PathMatchType::RegularExpression => {
            if spec.path.value.is_empty() {
                errors.add("spec.path.value", "must not be empty");
            }
        }
    }
    let mut names = BTreeSet::new();
    for (i, h) in spec.headers.iter().enumerate() {
        if !matchable_header(&h.name) {
            errors.add(
                format!("spec.headers[{i}].name"),
                "must be letters, digits and - only (nginx cannot match other header names)",
            );
        }
        if !names.insert(h.name.to_ascii_lowercase()) {
            errors.add(format!("spec.headers[{i}].name"), "is matched twice");
        }
        errors.text(&format!("spec.headers[{i}].value"), &h.value);
    }
    if spec.backends.is_empty() {
        errors.add("spec.backends", "needs at least one backend");
    }
    if spec.backends.len() > crate::types::MAX_BACKENDS {
        errors.add(
            "spec.backends",
            format!("at most {} backends", crate::types::MAX_BACKENDS),
        );
    }
    let schemes: BTreeSet<_> = spec
        .backends
        .iter()
        .enumerate()
        .filter_map(|(i, b)| backend(&mut errors, i, b))
        .collect();
    if schemes.len() > 1 {
        errors.add(
            "spec.backends",
            "all backends of a route must use the same scheme (http or https)",
        );
    }
    if let Some(t) = &spec.timeouts {
        duration(
            &mut errors,
            "spec.timeouts.connect",
            t.connect.as_deref(),
            Duration::from_millis(1),
            Duration::from_secs(75),
        );
        duration(
            &mut errors,
            "spec.timeouts.request",
            t.request.as_deref(),
            Duration::from_millis(1),
            Duration::from_secs(3600),
        );
    }
    if let Some(r) = &spec.retries {
        if r.attempts > MAX_RETRIES {
            errors.add("spec.retries.attempts", format!("must be at most {MAX_RETRIES}"));
        }
        duration(
            &mut errors,
            "spec.retries.budget",
            r.budget.as_deref(),
            Duration::from_millis(1),
            Duration::from_secs(3600),
        );
    }
    if let Some(r) = &spec.request_headers {
        rewrite(&mut errors, "spec.requestHeaders", r);
    }
    if let Some(r) = &spec.response_headers {
        rewrite(&mut errors, "spec.responseHeaders", r);
    }
    if let Some(tls) = &spec.tls {
        if spec.host.is_none() {
            errors.add(
                "spec.tls",
                "needs spec.host: the certificate is chosen by host name",
            );
        }
        if tls.secret_name.is_empty() || tls.secret_name.len() > 253 {
            errors.add("spec.tls.secretName", "must be a Secret name");
        }
    }
    errors.0
}

/// Check an `AIGateway` spec; empty when it is valid.
///
/// ```
/// use gateway_operator::types::AIGatewaySpec;
/// use gateway_operator::validate::ai_gateway;
/// let spec: AIGatewaySpec = serde_json::from_value(serde_json::json!({
///     "modelIntegrations": [{"name": "a", "baseURL": "http://127.0.0.1:9000/v1"}],
///     "routingRules": [{"name": "r", "integration": "missing"}],
/// })).unwrap();
/// assert_eq!(ai_gateway(&spec)[0].field, "spec.routingRules[0].integration");
/// ```
pub fn ai_gateway(spec: &AIGatewaySpec) -> Vec<FieldError> {
    let mut errors = Errors(Vec::new());
    if let Some(host) = &spec.host
        && !host_ok(host)
    {
        errors.add(
            "spec.host",
            "must be a lowercase DNS name, optionally starting with *.",
        );
    }
    let p = &spec.path_prefix;
    if !p.starts_with('/')
        || !p.ends_with('/')
        || p.len() > 256
        || !p
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._~-/".contains(&b))
        || p.contains("//")
        || p.split('/').any(|seg| seg == "." || seg == "..")
    {
        errors.add(
            "spec.pathPrefix",
            "must start and end with / and hold letters, digits, . _ ~ - only",
        );
    }
    if spec.model_integrations.is_empty() {
        errors.add("spec.modelIntegrations", "needs at least one integration");
    }
    // Names reach the configuration (zone names, messages): DNS labels only.
    let label = |n: &str| {
        !n.is_empty()
            && n.len() <= 63
            && n.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !n.starts_with('-')
            && !n.ends_with('-')
    };
    let named = spec
        .model_integrations
        .iter()
        .enumerate()
        .map(|(i, m)| (format!("spec.modelIntegrations[{i}].name"), &m.name))
        .chain(
            spec.routing_rules
                .iter()
                .enumerate()
                .map(|(i, r)| (format!("spec.routingRules[{i}].name"), &r.name)),
        )
        .chain(
            spec.rate_limits
                .iter()
                .enumerate()
                .map(|(i, r)| (format!("spec.rateLimits[{i}].name"), &r.name)),
        )
        .chain(
            spec.security_policies
                .iter()
                .enumerate()
                .map(|(i, r)| (format!("spec.securityPolicies[{i}].name"), &r.name)),
        );
    for (field, name) in named {
        if !label(name) {
            errors.add(field, "must be a DNS label (lowercase letters, digits, -)");
        }
    }
    let mut integrations = BTreeSet::new();
    for (i, m) in spec.model_integrations.iter().enumerate() {
        if !integrations.insert(m.name.as_str()) {
            errors.add(format!("spec.modelIntegrations[{i}].name"), "is used twice");
        }
        if let Err(e) = parse_url(&m.base_url) {
            errors.add(format!("spec.modelIntegrations[{i}].baseURL"), e);
        }
        duration(
            &mut errors,
            &format!("spec.modelIntegrations[{i}].timeout"),
            m.timeout.as_deref(),
            Duration::from_secs(1),
            Duration::from_secs(3600),
        );
    }
    let templates: BTreeSet<&str> = spec.prompt_templates.iter().map(|t| t.name.as_str()).collect();
    if templates.len() != spec.prompt_templates.len() {
        errors.add("spec.promptTemplates", "lists a template twice");
    }
    for (i, t) in spec.prompt_templates.iter().enumerate() {
        if t.name.is_empty()
            || !t
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        {
            errors.add(
                format!("spec.promptTemplates[{i}].name"),
                "must be a resource name",
            );
        }
    }
    let mut rules = BTreeSet::new();
    for (i, r) in spec.routing_rules.iter().enumerate() {
        if !rules.insert(r.name.as_str()) {
            errors.add(format!("spec.routingRules[{i}].name"), "is used twice");
        }
        if !integrations.contains(r.integration.as_str()) {
            errors.add(
                format!("spec.routingRules[{i}].integration"),
                format!(
                    "names no integration in spec.modelIntegrations ({:?})",
                    r.integration
                ),
            );
        }
        if let Some(t) = &r.prompt_template
            && !templates.contains(t.as_str())
        {
            errors.add(
                format!("spec.routingRules[{i}].promptTemplate"),
                "must be listed in spec.promptTemplates",
            );
        }
        if let Some(m) = &r.matches {
            if let Some(pp) = &m.path_prefix
                && !pp
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._~/-".contains(&b))
            {
                errors.add(
                    format!("spec.routingRules[{i}].match.pathPrefix"),
                    "holds letters, digits, . _ ~ / - only",
                );
            }
            for (j, h) in m.headers.iter().enumerate() {
                if !matchable_header(&h.name) {
                    errors.add(
                        format!("spec.routingRules[{i}].match.headers[{j}].name"),
                        "must be letters, digits and - only",
                    );
                }
                errors.text(
                    &format!("spec.routingRules[{i}].match.headers[{j}].value"),
                    &h.value,
                );
            }
            if let Some(model) = &m.model {
                errors.text(&format!("spec.routingRules[{i}].match.model"), model);
                if model.contains(['"', '\\']) {
                    errors.add(
                        format!("spec.routingRules[{i}].match.model"),
                        "must not contain \" or \\",
                    );
                }
            }
        }
    }
    let mut limits = BTreeSet::new();
    let mut statuses = BTreeSet::new();
    for (i, l) in spec.rate_limits.iter().enumerate() {
        if !limits.insert(l.name.as_str()) {
            errors.add(format!("spec.rateLimits[{i}].name"), "is used twice");
        }
        match (l.requests_per_second, l.requests_per_minute) {
            (Some(n), None) | (None, Some(n)) if (1..=1_000_000).contains(&n) => {}
            (Some(_), None) | (None, Some(_)) => {
                errors.add(format!("spec.rateLimits[{i}]"), "the rate must be 1 to 1000000")
            }
            _ => errors.add(
                format!("spec.rateLimits[{i}]"),
                "set exactly one of requestsPerSecond and requestsPerMinute",
            ),
        }
        if l.burst > 100_000 {
            errors.add(format!("spec.rateLimits[{i}].burst"), "must be at most 100000");
        }
        if !(400..=599).contains(&l.status_code) {
            errors.add(format!("spec.rateLimits[{i}].statusCode"), "must be 400 to 599");
        }
        statuses.insert(l.status_code);
    }
    if statuses.len() > 1 {
        errors.add(
            "spec.rateLimits",
            "all limits of a gateway answer with one statusCode (nginx's limit_req_status is per location)",
        );
    }
    let mut policies = BTreeSet::new();
    for (i, p) in spec.security_policies.iter().enumerate() {
        if !policies.insert(p.name.as_str()) {
            errors.add(format!("spec.securityPolicies[{i}].name"), "is used twice");
        }
        if p.api_keys.is_empty() && p.allowed_cidrs.is_empty() {
            errors.add(
                format!("spec.securityPolicies[{i}]"),
                "set apiKeys or allowedCIDRs",
            );
        }
        for (j, c) in p.allowed_cidrs.iter().enumerate() {
            let ok = c.parse::<ipnet::IpNet>().is_ok() || c.parse::<std::net::IpAddr>().is_ok();
            if !ok {
                errors.add(
                    format!("spec.securityPolicies[{i}].allowedCIDRs[{j}]"),
                    format!("{c:?} is not an address or CIDR"),
                );
            }
        }
    }
    errors.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route_spec(v: serde_json::Value) -> GatewayRouteSpec {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_plain_route_is_valid() {
        let spec = route_spec(serde_json::json!({
            "host": "*.example.com", "path": {"type": "Exact", "value": "/a"},
            "headers": [{"name": "x-canary", "value": "1"}],
            "backends": [{"url": "http://127.0.0.1:1"}, {"service": {"name": "web", "port": 80}, "weight": 3}],
            "timeouts": {"connect": "2s", "request": "1m"}, "retries": {"attempts": 2, "budget": "10s"},
            "requestHeaders": {"set": [{"name": "X-A", "value": "$1 a"}], "remove": ["x-b"]},
        }));
        assert_eq!(route(&spec), vec![]);
    }

    #[test]
    fn mistakes_name_their_fields() {
        let spec = route_spec(serde_json::json!({
            "host": "Bad_Host", "path": {"value": "api"},
            "headers": [{"name": "x_under", "value": "a\nb"}],
            "backends": [{"url": "http://u:p@h/x"}, {"url": "https://a"}],
            "timeouts": {"connect": "99s"}, "retries": {"attempts": 11},
            "tls": {"secretName": "t"},
        }));
        let fields: Vec<String> = route(&spec).into_iter().map(|e| e.field).collect();
        for f in [
            "spec.host",
            "spec.path.value",
            "spec.headers[0].name",
            "spec.headers[0].value",
            "spec.backends[0].url",
            "spec.timeouts.connect",
            "spec.retries.attempts",
        ] {
            assert!(fields.iter().any(|x| x == f), "{f} missing from {fields:?}");
        }
    }

    #[test]
    fn ai_gateway_rules_are_checked() {
        let spec: AIGatewaySpec = serde_json::from_value(serde_json::json!({
            "pathPrefix": "/v1",
            "modelIntegrations": [{"name": "a", "baseURL": "http://127.0.0.1:1/v1"}, {"name": "a", "baseURL": "x"}],
            "routingRules": [{"name": "r", "integration": "a", "promptTemplate": "nope"}],
            "rateLimits": [{"name": "l", "requestsPerSecond": 1, "requestsPerMinute": 2}],
            "securityPolicies": [{"name": "p", "allowedCIDRs": ["10.0.0.0/33"]}],
        }))
        .unwrap();
        let fields: Vec<String> = ai_gateway(&spec).into_iter().map(|e| e.field).collect();
        for f in [
            "spec.pathPrefix",
            "spec.modelIntegrations[1].name",
            "spec.modelIntegrations[1].baseURL",
            "spec.routingRules[0].promptTemplate",
            "spec.rateLimits[0]",
            "spec.securityPolicies[0].allowedCIDRs[0]",
        ] {
            assert!(fields.iter().any(|x| x == f), "{f} missing from {fields:?}");
        }
    }
}
