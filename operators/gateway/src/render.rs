//! A [`Plan`] rendered into one nginx configuration file plus side files (TLS certificates and
//! keys, prompt templates), with a content hash that names the generation, and a map from
//! configuration lines to the resource that wrote them, so an `nginx -t` error can be pinned on
//! the resource at fault.
//!
//! Layout: each unit (route or AI gateway) renders its http-level part (upstreams, maps, rate
//! limit zones) once, and a named location `@crw_<id>` into every server block that serves it.
//! Path locations only dispatch: `error_page 418 = @crw_<id>; return 418;` jumps to the named
//! location with the request unchanged, and routes that share a path but match different
//! headers dispatch through a `map` of per-route header flags. A route's own settings
//! (timeouts, retries, header rewrites) therefore never leak into another's.
//!
//! Everything user-controlled is quoted ([`quote`]), with `$` written as `${crw_dollar}` where
//! nginx would expand variables, and literal values in regular expressions escaped
//! ([`pcre_escape`]). Nothing random goes in: the same plan renders the same bytes.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;

use sha2::{Digest, Sha256};

use crate::plan::{AiBody, HeaderCond, PathKey, Plan, ResKey, RouteBody, Unit, UnitBody};
use crate::types::{HeaderMatchType, RateLimitKey};

/// Stands for the generation hash while rendering (the hash covers the text around it).
const GEN: &str = "@@GEN@@";

/// Where and how nginx listens and keeps its files.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The nginx prefix: `nginx.conf`, `gen/`, `logs/`, `tmp/`, `nginx.pid` live here
    /// (absolute).
    pub prefix: PathBuf,
    /// The address the traffic ports listen on.
    pub listen: IpAddr,
    /// The HTTP port.
    pub http_port: u16,
    /// The HTTPS port (`None`: no TLS listener).
    pub https_port: Option<u16>,
    /// The loopback status port (generation, `stub_status`).
    pub status_port: u16,
    /// Worker processes (`0`: `auto`).
    pub workers: u16,
    /// Write an access log to `logs/access.log`.
    pub access_log: bool,
    /// The `user` directive (only when nginx runs as root).
    pub user: Option<String>,
}

impl Settings {
    /// Settings for tests and the demo: loopback, no TLS, one worker.
    pub fn loopback(prefix: PathBuf, http_port: u16, status_port: u16) -> Self {
        Settings {
            prefix,
            listen: IpAddr::from([127, 0, 0, 1]),
            http_port,
            https_port: None,
            status_port,
            workers: 1,
            access_log: false,
            user: None,
        }
    }

    /// The directory of a generation.
    pub fn gen_dir(&self, hash: &str) -> PathBuf {
        self.prefix.join("gen").join(hash)
    }
}

/// A file beside the configuration, in the generation's directory.
#[derive(Clone)]
pub struct SideFile {
    /// Path relative to the generation directory (`tls/u12ab.key`).
    pub rel: String,
    /// Content.
    pub bytes: Vec<u8>,
    /// Written with mode 0600 (keys) instead of 0644.
    pub private: bool,
}

impl std::fmt::Debug for SideFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SideFile({}, {} bytes)", self.rel, self.bytes.len())
    }
}

/// A rendered generation.
#[derive(Clone)]
pub struct Rendered {
    /// The whole `nginx.conf`.
    pub conf: String,
    /// 16 hex digits of SHA-256 over the configuration and side files.
    pub hash: String,
    /// Line ranges (1-based, inclusive) and the resource that wrote them.
    pub owners: Vec<(usize, usize, ResKey)>,
    /// Side files.
    pub files: Vec<SideFile>,
    /// Each unit's own content hash (to remember nginx's verdict on exactly that content).
    pub unit_hashes: BTreeMap<ResKey, String>,
    /// Secret values in the configuration, to redact from any message.
    pub secrets: Vec<String>,
}

impl std::fmt::Debug for Rendered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rendered")
            .field("hash", &self.hash)
            .field("lines", &self.conf.lines().count())
            .field("files", &self.files)
            .finish()
    }
}

impl Rendered {
    /// The resource that wrote line `line`, if any.
    pub fn owner_of_line(&self, line: usize) -> Option<&ResKey> {
        self.owners
            .iter()
            .find(|(a, b, _)| (*a..=*b).contains(&line))
            .map(|(_, _, k)| k)
    }

    /// The resource whose side file is `rel` (`tls/u…crt`), if any.
    pub fn owner_of_id(&self, id: &str) -> Option<&ResKey> {
        self.unit_hashes.keys().find(|k| k.id() == id)
    }

    /// `text` with every secret value replaced by `<redacted>`.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for s in &self.secrets {
            if s.len() >= 4 {
                out = out.replace(s.as_str(), "<redacted>");
            }
        }
        out
    }
}

/// `s` as an nginx double-quoted string, taken literally except for variables.
///
/// ```
/// assert_eq!(gateway_operator::render::quote(r#"a "b" \c"#), r#""a \"b\" \\c""#);
/// ```
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// `s` quoted for a directive that expands variables: `$` becomes `${crw_dollar}` (nginx has
/// no escape for `$`; `crw_dollar` is a `geo` variable holding it).
///
/// ```
/// assert_eq!(gateway_operator::render::quote_value("a$b"), r#""a${crw_dollar}b""#);
/// ```
pub fn quote_value(s: &str) -> String {
    quote(&s.replace('$', "${crw_dollar}"))
}

/// `s` as a literal inside a PCRE: every ASCII punctuation character backslash-escaped.
///
/// ```
/// assert_eq!(gateway_operator::render::pcre_escape("a.b|c"), r"a\.b\|c");
/// ```
pub fn pcre_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 2);
    for c in s.chars() {
        if c.is_ascii_punctuation() || c == ' ' {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The nginx variable of a request header (`x-canary` -> `$http_x_canary`).
fn header_var(name: &str) -> String {
    format!("$http_{}", name.to_ascii_lowercase().replace('-', "_"))
}

/// A configuration under construction: counts lines and records who wrote which.
struct W {
    out: String,
    line: usize,
    owners: Vec<(usize, usize, ResKey)>,
}

impl W {
    fn new() -> Self {
        W {
            out: String::new(),
            line: 1,
            owners: Vec::new(),
        }
    }

    fn l(&mut self, depth: usize, s: &str) {
        for _ in 0..depth {
            self.out.push_str("    ");
        }
        self.out.push_str(s);
        self.out.push('\n');
        self.line += 1;
    }

    /// Write a block (lines without their final newline handling) owned by `key`.
    fn owned(&mut self, key: &ResKey, depth: usize, block: &str) {
        let start = self.line;
        for line in block.lines() {
            self.l(depth, line);
        }
        if self.line > start {
            self.owners.push((start, self.line - 1, key.clone()));
        }
    }
}

/// The http-level part of a route: header flag maps and its upstream.
fn route_http(u: &Unit, body: &RouteBody) -> String {
    let mut s = String::new();
    let id = &u.id;
    header_flags(&mut s, id, &u.headers);
    if !body.servers.is_empty() {
        let _ = writeln!(s, "upstream crw_u_{id} {{");
        for (addr, weight) in &body.servers {
            let _ = writeln!(s, "    server {addr} weight={weight};");
        }
        s.push_str("    keepalive 32;\n}\n");
    }
    s
}

/// `$crw_m_<id>` is `1` when every header condition holds.
fn header_flags(s: &mut String, id: &str, headers: &[HeaderCond]) {
    if headers.is_empty() {
        return;
    }
    let mut parts = String::new();
    for (i, (name, how, value)) in headers.iter().enumerate() {
        let re = match how {
            HeaderMatchType::Exact => format!("~^{}$", pcre_escape(value)),
            // Grouped, so a leading `*` cannot turn into nginx's case-insensitive marker `~*`.
            HeaderMatchType::RegularExpression => format!("~(?:{value})"),
        };
        let _ = writeln!(
            s,
            "map {} $crw_h_{id}_{i} {{ {} 1; default 0; }}",
            header_var(name),
            quote(&re)
        );
        let _ = write!(parts, "${{crw_h_{id}_{i}}}");
    }
    let all = "1".repeat(headers.len());
    let _ = writeln!(
        s,
        "map {} $crw_m_{id} {{ {} 1; default 0; }}",
        quote(&parts),
        quote(&all)
    );
}

/// The request headers every route sends upstream (set once at the http level).
const DEFAULT_HEADERS: [(&str, &str); 5] = [
    ("Host", "$host"),
    ("X-Real-IP", "$remote_addr"),
    ("X-Forwarded-For", "$proxy_add_x_forwarded_for"),
    ("X-Forwarded-Proto", "$scheme"),
    ("X-Forwarded-Host", "$host"),
];
/// The http level's `proxy_connect_timeout`, in ms.
const DEFAULT_CONNECT_MS: u64 = 5_000;
/// The http level's `proxy_read_timeout` and `proxy_send_timeout`, in ms.
const DEFAULT_READ_MS: u64 = 60_000;

/// The named location of a route.
fn route_location(u: &Unit, body: &RouteBody) -> String {
    let id = &u.id;
    let mut s = String::new();
    let _ = writeln!(s, "location @crw_{id} {{");
    let overridden: BTreeSet<String> = body
        .request
        .set
        .iter()
        .chain(&body.request.add)
        .map(|h| h.name.to_ascii_lowercase())
        .chain(body.request.remove.iter().map(|n| n.to_ascii_lowercase()))
        .collect();
    // Without rewrites the route inherits the http level's headers (and nginx shares their
    // compiled table instead of building one per location: most of a location's memory).
    if !overridden.is_empty() {
        s.push_str("    proxy_set_header Connection \"\";\n");
        for (name, value) in DEFAULT_HEADERS {
            if !overridden.contains(&name.to_ascii_lowercase()) {
                let _ = writeln!(s, "    proxy_set_header {name} {value};");
            }
        }
    }
    let mut seen = BTreeSet::new();
    for h in body.request.set.iter().chain(&body.request.add) {
        if seen.insert(h.name.to_ascii_lowercase()) {
            let _ = writeln!(
                s,
                "    proxy_set_header {} {};",
                quote(&h.name),
                quote_value(&h.value)
            );
        }
    }
    for name in &body.request.remove {
        if seen.insert(name.to_ascii_lowercase()) {
            let _ = writeln!(s, "    proxy_set_header {} \"\";", quote(name));
        }
    }
    for name in body
        .response
        .remove
        .iter()
        .chain(body.response.set.iter().map(|h| &h.name))
    {
        let _ = writeln!(s, "    proxy_hide_header {};", quote(name));
    }
    for h in body.response.set.iter().chain(&body.response.add) {
        let _ = writeln!(
            s,
            "    add_header {} {} always;",
            quote(&h.name),
            quote_value(&h.value)
        );
    }
    if body.connect_ms != DEFAULT_CONNECT_MS {
        let _ = writeln!(s, "    proxy_connect_timeout {}ms;", body.connect_ms);
    }
    if body.read_ms != DEFAULT_READ_MS {
        let _ = writeln!(s, "    proxy_read_timeout {}ms;", body.read_ms);
        let _ = writeln!(s, "    proxy_send_timeout {}ms;", body.read_ms);
    }
    match &body.retries {
        // The http level's default.
        None => {}
        Some((0, _, _)) => s.push_str("    proxy_next_upstream off;\n"),
        Some((n, on, budget)) => {
            let _ = writeln!(s, "    proxy_next_upstream {};", on.join(" "));
            let _ = writeln!(s, "    proxy_next_upstream_tries {};", n + 1);
            if let Some(b) = budget {
                let _ = writeln!(s, "    proxy_next_upstream_timeout {b}ms;");
            }
        }
    }
    if let Some(sni) = &body.sni {
        s.push_str("    proxy_ssl_server_name on;\n");
        let _ = writeln!(s, "    proxy_ssl_name {};", quote(sni));
    }
    if body.servers.is_empty() {
        s.push_str("    return 503;\n");
    } else {
        let _ = writeln!(s, "    proxy_pass {}://crw_u_{id};", body.scheme);
    }
    s.push_str("}\n");
    s
}

fn limit_zone(id: &str, l: &crate::plan::AiLimit, key_expr: &str) -> String {
    // The key is part of the zone's name: nginx refuses a reload that changes the key of an
    // existing zone, so a new key gets a new zone instead.
    let h = hex::encode(Sha256::digest(key_expr.as_bytes()));
    format!("crw_{id}_{}_{}", l.name.replace('-', "_"), &h[..6])
}

fn ai_client_var(id: &str, body: &AiBody) -> Option<String> {
    body.policies
        .iter()
        .position(|p| p.wants_keys)
        .map(|i| format!("$crw_ai_{id}_p{i}_c"))
}

fn ai_limit_key(id: &str, body: &AiBody, key: RateLimitKey) -> String {
    match key {
        RateLimitKey::ClientKey => ai_client_var(id, body).unwrap_or_else(|| "$binary_remote_addr".into()),
        RateLimitKey::RemoteAddress => "$binary_remote_addr".into(),
        RateLimitKey::Global => "$crw_one".into(),
    }
}

/// The http-level part of an AI gateway.
fn ai_http(u: &Unit, body: &AiBody) -> String {
    let id = &u.id;
    let mut s = String::new();
    for (i, m) in body.integrations.iter().enumerate() {
        let _ = writeln!(
            s,
            "upstream crw_ai_{id}_{i} {{\n    server {};\n    keepalive 16;\n}}",
            m.authority
        );
    }
    let prefix = match &u.path {
        PathKey::Prefix(p) if p == "/" => String::new(),
        PathKey::Prefix(p) => p.clone(),
        _ => String::new(),
    };
    let _ = writeln!(
        s,
        "map $request_uri $crw_ai_{id}_rest {{ {} $crw_r; default \"\"; }}",
        quote(&format!("~^{}/(?<crw_r>[^?]*)", pcre_escape(&prefix)))
    );
    let mut rule_parts = String::new();
    for (i, r) in body.rules.iter().enumerate() {
        let mut parts = Vec::new();
        if let Some(pp) = &r.path_prefix {
            let _ = writeln!(
                s,
                "map $crw_ai_{id}_rest $crw_ai_{id}_r{i}_p {{ {} 1; default 0; }}",
                quote(&format!("~^{}", pcre_escape(pp.trim_start_matches('/'))))
            );
            parts.push(format!("${{crw_ai_{id}_r{i}_p}}"));
        }
        for (j, (name, value)) in r.headers.iter().enumerate() {
            let _ = writeln!(
                s,
                "map {} $crw_ai_{id}_r{i}_h{j} {{ {} 1; default 0; }}",
                header_var(name),
                quote(&format!("~^{}$", pcre_escape(value)))
            );
            parts.push(format!("${{crw_ai_{id}_r{i}_h{j}}}"));
        }
        if let Some(model) = &r.model {
            let _ = writeln!(
                s,
                "map $crw_model $crw_ai_{id}_r{i}_m {{ {} 1; default 0; }}",
                quote(&format!("~^{}$", pcre_escape(model)))
            );
            parts.push(format!("${{crw_ai_{id}_r{i}_m}}"));
        }
        if parts.is_empty() {
            rule_parts.push('1');
        } else {
            let _ = writeln!(
                s,
                "map {} $crw_ai_{id}_r{i} {{ {} 1; default 0; }}",
                quote(&parts.concat()),
                quote(&"1".repeat(parts.len()))
            );
            let _ = write!(rule_parts, "${{crw_ai_{id}_r{i}}}");
        }
    }
    let _ = writeln!(s, "map {} $crw_ai_{id}_rule {{", quote(&rule_parts));
    for i in 0..body.rules.len() {
        let _ = writeln!(s, "    {} {i};", quote(&format!("~^{}1", ".".repeat(i))));
    }
    s.push_str("    default \"\";\n}\n");
    let per_rule = |s: &mut String, var: &str, default: &str, f: &dyn Fn(usize) -> Option<String>| {
        let _ = writeln!(s, "map $crw_ai_{id}_rule $crw_ai_{id}_{var} {{");
        for i in 0..body.rules.len() {
            if let Some(v) = f(i) {
                let _ = writeln!(s, "    {i} {v};");
            }
        }
        let _ = writeln!(s, "    default {default};\n}}");
    };
    let integration = |i: usize| &body.integrations[body.rules[i].integration];
    per_rule(&mut s, "url", "\"http://crw_status/crwatch/no-route/\"", &|i| {
        let m = integration(i);
        Some(quote(&format!(
            "{}://crw_ai_{id}_{}{}/",
            m.scheme, body.rules[i].integration, m.base_path
        )))
    });
    per_rule(&mut s, "auth", "\"\"", &|i| {
        integration(i)
            .api_key
            .as_ref()
            .map(|k| quote_value(&format!("Bearer {k}")))
    });
    per_rule(&mut s, "host", "$host", &|i| {
        Some(quote(&integration(i).host_header))
    });
    per_rule(&mut s, "sni", "\"localhost\"", &|i| {
        Some(quote(&integration(i).sni))
    });
    per_rule(&mut s, "tpl", "\"\"", &|i| {
        body.rules[i].template.as_ref().map(|t| quote(t))
    });
    for (i, p) in body.policies.iter().enumerate() {
        if !p.cidrs.is_empty() {
            let _ = writeln!(s, "geo $crw_ai_{id}_p{i}_ok {{\n    default 0;");
            for c in &p.cidrs {
                let _ = writeln!(s, "    {c} 1;");
            }
            s.push_str("}\n");
        }
        if p.wants_keys {
            let _ = writeln!(s, "map $http_authorization $crw_ai_{id}_p{i}_b {{");
            for (client, key) in &p.keys {
                let _ = writeln!(
                    s,
                    "    {} {};",
                    quote(&format!("~^Bearer {}$", pcre_escape(key))),
                    quote(client)
                );
            }
            s.push_str("    default \"\";\n}\n");
            let _ = writeln!(s, "map $http_x_api_key $crw_ai_{id}_p{i}_x {{");
            for (client, key) in &p.keys {
                let _ = writeln!(
                    s,
                    "    {} {};",
                    quote(&format!("~^{}$", pcre_escape(key))),
                    quote(client)
                );
            }
            s.push_str("    default \"\";\n}\n");
            let _ = writeln!(
                s,
                "map \"${{crw_ai_{id}_p{i}_b}}|${{crw_ai_{id}_p{i}_x}}\" $crw_ai_{id}_p{i}_c {{ \"~^(?<crw_c>[^|]+)\\|\" $crw_c; \"~^\\|(?<crw_c>.+)$\" $crw_c; default \"\"; }}"
            );
        }
    }
    for l in &body.limits {
        let key = ai_limit_key(id, body, l.key);
        let unit = if l.per_minute { "r/m" } else { "r/s" };
        let _ = writeln!(
            s,
            "limit_req_zone {key} zone={}:1m rate={}{unit};",
            limit_zone(id, l, &key),
            l.rate
        );
    }
    s
}

/// The access checks of an AI gateway (rewrite phase, before rate limiting).
fn ai_checks(s: &mut String, id: &str, body: &AiBody) {
    for (i, p) in body.policies.iter().enumerate() {
        if !p.cidrs.is_empty() {
            let _ = writeln!(
                s,
                "    if ($crw_ai_{id}_p{i}_ok = 0) {{ return 403 '{{\"error\":{{\"message\":\"client address not allowed by policy {}\",\"type\":\"permission_denied\"}}}}'; }}",
                p.name
            );
        }
        if p.wants_keys {
            let _ = writeln!(
                s,
                "    if ($crw_ai_{id}_p{i}_c = \"\") {{ return 401 '{{\"error\":{{\"message\":\"missing or unknown API key (policy {})\",\"type\":\"invalid_request_error\",\"code\":\"invalid_api_key\"}}}}'; }}",
                p.name
            );
        }
    }
}

/// The named location of an AI gateway.
fn ai_location(u: &Unit, body: &AiBody) -> String {
    let id = &u.id;
    let mut s = String::new();
    let _ = writeln!(s, "location @crw_{id} {{");
    s.push_str("    default_type application/json;\n");
    ai_checks(&mut s, id, body);
    for l in &body.limits {
        let key = ai_limit_key(id, body, l.key);
        let _ = writeln!(
            s,
            "    limit_req zone={} burst={} nodelay;",
            limit_zone(id, l, &key),
            l.burst
        );
    }
    if !body.limits.is_empty() {
        let _ = writeln!(s, "    limit_req_status {};", body.limit_status);
    }
    if body.uses_model() {
        // The mirror reads the body before the content phase, so `$request_body` (and the
        // `model` in it) is known when proxy_pass picks the integration.
        s.push_str("    client_body_buffer_size 4m;\n    client_max_body_size 4m;\n    client_body_in_single_buffer on;\n");
        s.push_str("    mirror /__crwatch_mirror;\n    mirror_request_body on;\n");
    }
    s.push_str("    proxy_buffering off;\n");
    let _ = writeln!(s, "    proxy_set_header Host $crw_ai_{id}_host;");
    s.push_str("    proxy_set_header Connection \"\";\n");
    let _ = writeln!(s, "    proxy_set_header Authorization $crw_ai_{id}_auth;");
    s.push_str("    proxy_set_header X-Api-Key \"\";\n");
    let _ = writeln!(
        s,
        "    proxy_set_header X-Crwatch-Prompt-Template $crw_ai_{id}_tpl;"
    );
    s.push_str("    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n");
    s.push_str("    proxy_set_header X-Forwarded-Proto $scheme;\n");
    s.push_str("    proxy_ssl_server_name on;\n");
    let _ = writeln!(s, "    proxy_ssl_name $crw_ai_{id}_sni;");
    let _ = writeln!(
        s,
        "    proxy_read_timeout {}ms;\n    proxy_send_timeout {}ms;",
        body.read_ms, body.read_ms
    );
    let _ = writeln!(
        s,
        "    proxy_pass $crw_ai_{id}_url$crw_ai_{id}_rest$is_args$args;"
    );
    s.push_str("}\n");
    s
}

/// The prompt template locations of an AI gateway in one server.
fn ai_templates(u: &Unit, body: &AiBody, taken_exact: &BTreeSet<String>) -> String {
    let id = &u.id;
    let prefix = match &u.path {
        PathKey::Prefix(p) if p == "/" => String::new(),
        PathKey::Prefix(p) => p.clone(),
        _ => String::new(),
    };
    let mut s = String::new();
    for (name, _) in &body.templates {
        let path = format!("{prefix}/prompt-templates/{name}");
        if taken_exact.contains(&path) {
            continue;
        }
        let _ = writeln!(s, "location = {} {{", quote(&path));
        s.push_str("    default_type application/json;\n");
        ai_checks(&mut s, id, body);
        let _ = writeln!(
            s,
            "    alias {};",
            quote(&format!("{GEN_DIR}/templates/{id}-{name}.json"))
        );
        s.push_str("}\n");
    }
    s
}

/// Stands for the generation directory's absolute path while rendering.
const GEN_DIR: &str = "@@GENDIR@@";

struct UnitText {
    http: String,
    location: String,
}

fn unit_text(u: &Unit) -> UnitText {
    match &u.body {
        UnitBody::Route(b) => UnitText {
            http: route_http(u, b),
            location: route_location(u, b),
        },
        UnitBody::Ai(b) => UnitText {
            http: ai_http(u, b),
            location: ai_location(u, b),
        },
    }
}

/// The units one server block serves: its host's own, and the host-less ones whose path and
/// headers the host's own do not claim.
fn server_units<'a>(units: &'a [Unit], host: Option<&str>) -> Vec<&'a Unit> {
    match host {
        None => units.iter().filter(|u| u.host.is_none()).collect(),
        Some(h) => {
            let own: Vec<&Unit> = units.iter().filter(|u| u.host.as_deref() == Some(h)).collect();
            let claimed: BTreeSet<(&PathKey, &[HeaderCond])> =
                own.iter().map(|u| (&u.path, u.headers.as_slice())).collect();
            units
                .iter()
                .filter(|u| {
                    u.host.as_deref() == Some(h)
                        || (u.host.is_none() && !claimed.contains(&(&u.path, u.headers.as_slice())))
                })
                .collect()
        }
    }
}

fn dispatch(members: &[&Unit], dispatch_maps: &mut BTreeMap<String, String>) -> String {
    if let [only] = members
        && only.headers.is_empty()
    {
        return format!("error_page 418 = @crw_{}; return 418;", only.id);
    }
    // Most specific first (more header conditions), then oldest; a member without headers
    // (at most one survives conflict resolution) is the default.
    let mut ordered: Vec<&&Unit> = members.iter().filter(|u| !u.headers.is_empty()).collect();
    ordered.sort_by(|a, b| {
        b.headers
            .len()
            .cmp(&a.headers.len())
            .then(a.created.cmp(&b.created))
            .then(a.key.cmp(&b.key))
    });
    let fallback = members
        .iter()
        .find(|u| u.headers.is_empty())
        .map(|u| format!("@crw_{}", u.id))
        .unwrap_or_else(|| "@crw_404".into());
    let ids: Vec<&str> = ordered.iter().map(|u| u.id.as_str()).collect();
    let gid = &hex::encode(Sha256::digest(format!("{}|{fallback}", ids.join(","))))[..12];
    let name = format!("$crw_d_{gid}");
    if !dispatch_maps.contains_key(&name) {
        let source: String = ids.iter().map(|id| format!("${{crw_m_{id}}}")).collect();
        let mut m = format!("map {} {name} {{\n", quote(&source));
        for (i, id) in ids.iter().enumerate() {
            let _ = writeln!(m, "    {} @crw_{id};", quote(&format!("~^{}1", ".".repeat(i))));
        }
        let _ = writeln!(m, "    default {fallback};\n}}");
        dispatch_maps.insert(name.clone(), m);
    }
    format!("error_page 418 = {name}; return 418;")
}

struct Server {
    text: String,
    owners: Vec<(usize, usize, ResKey)>,
}

/// Render one server block's locations into `w`-relative text (lines counted by the caller).
fn server_body(
    units: &[&Unit],
    texts: &BTreeMap<ResKey, UnitText>,
    dispatch_maps: &mut BTreeMap<String, String>,
) -> Server {
    let mut w = W::new();
    // Groups by path, in order of their oldest member (nginx tries regex locations in order).
    let mut order: Vec<&PathKey> = Vec::new();
    let mut groups: BTreeMap<&PathKey, Vec<&Unit>> = BTreeMap::new();
    for u in units {
        if !groups.contains_key(&u.path) {
            order.push(&u.path);
        }
        groups.entry(&u.path).or_default().push(u);
    }
    let exact: BTreeSet<String> = groups
        .keys()
        .filter_map(|p| match p {
            PathKey::Exact(e) => Some(e.clone()),
            _ => None,
        })
        .collect();
    let mut template_exact = exact.clone();
    let mut has_root = false;
    for path in order {
        let members = &groups[path];
        let d = dispatch(members, dispatch_maps);
        let owner = members
            .iter()
            .min_by(|a, b| a.created.cmp(&b.created).then(a.key.cmp(&b.key)))
            .map(|u| u.key.clone());
        let mut block = String::new();
        match path {
            PathKey::Exact(p) => {
                let _ = writeln!(block, "location = {} {{ {d} }}", quote(p));
            }
            PathKey::Prefix(p) if p == "/" => {
                has_root = true;
                let _ = writeln!(block, "location / {{ {d} }}");
            }
            PathKey::Prefix(p) => {
                if !exact.contains(p) {
                    let _ = writeln!(block, "location = {} {{ {d} }}", quote(p));
                    template_exact.insert(p.clone());
                }
                let _ = writeln!(block, "location {} {{ {d} }}", quote(&format!("{p}/")));
            }
            PathKey::Regex(re) => {
                let _ = writeln!(block, "location ~ {} {{ {d} }}", quote(re));
            }
        }
        match owner {
            Some(k) => w.owned(&k, 0, &block),
            None => {
                for line in block.lines() {
                    w.l(0, line);
                }
            }
        }
    }
    if !has_root {
        w.l(0, "location / { return 404; }");
    }
    // Locations cost memory in every server block: only where something uses them.
    if groups.values().any(|m| m.iter().all(|u| !u.headers.is_empty())) {
        w.l(0, "location @crw_404 { return 404; }");
    }
    if units
        .iter()
        .any(|u| matches!(&u.body, UnitBody::Ai(b) if b.uses_model()))
    {
        w.l(0, "location = /__crwatch_mirror { internal; return 204; }");
    }
    for u in units {
        if let Some(t) = texts.get(&u.key) {
            w.owned(&u.key, 0, &t.location);
        }
        if let UnitBody::Ai(b) = &u.body {
            let t = ai_templates(u, b, &template_exact);
            w.owned(&u.key, 0, &t);
        }
    }
    Server {
        text: w.out,
        owners: w.owners,
    }
}

/// Render `plan` with `settings`.
///
/// ```
/// use gateway_operator::plan::Plan;
/// use gateway_operator::render::{render, Settings};
/// let r = render(&Plan::default(), &Settings::loopback("/tmp/gw".into(), 8080, 10246));
/// assert_eq!(r.hash.len(), 16);
/// assert!(r.conf.contains("listen 127.0.0.1:8080 default_server;"));
/// assert_eq!(r.hash, render(&Plan::default(), &Settings::loopback("/tmp/gw".into(), 8080, 10246)).hash);
/// ```
pub fn render(plan: &Plan, settings: &Settings) -> Rendered {
    let prefix = settings.prefix.display().to_string();
    let texts: BTreeMap<ResKey, UnitText> =
        plan.units.iter().map(|u| (u.key.clone(), unit_text(u))).collect();
    let mut files = Vec::new();
    let mut secrets = Vec::new();
    let mut unit_hashes = BTreeMap::new();
    for u in &plan.units {
        let mut h = Sha256::new();
        let t = &texts[&u.key];
        h.update(&t.http);
        h.update(&t.location);
        match &u.body {
            UnitBody::Route(b) => {
                if let Some(tls) = &b.tls {
                    h.update(&tls.cert);
                    h.update(&tls.key);
                    files.push(SideFile {
                        rel: format!("tls/{}.crt", u.id),
                        bytes: tls.cert.clone(),
                        private: false,
                    });
                    files.push(SideFile {
                        rel: format!("tls/{}.key", u.id),
                        bytes: tls.key.clone(),
                        private: true,
                    });
                }
            }
            UnitBody::Ai(b) => {
                for (name, doc) in &b.templates {
                    h.update(doc);
                    files.push(SideFile {
                        rel: format!("templates/{}-{name}.json", u.id),
                        bytes: doc.clone(),
                        private: false,
                    });
                }
                secrets.extend(b.integrations.iter().filter_map(|m| m.api_key.clone()));
                secrets.extend(
                    b.policies
                        .iter()
                        .flat_map(|p| p.keys.iter().map(|(_, k)| k.clone())),
                );
            }
        }
        unit_hashes.insert(u.key.clone(), hex::encode(h.finalize())[..16].to_string());
    }

    let mut w = W::new();
    w.l(
        0,
        &format!(
            "# generated by gateway-operator: generation {GEN}. Do not edit; it is replaced on every change."
        ),
    );
    if let Some(user) = &settings.user {
        w.l(0, &format!("user {user};"));
    }
    if settings.workers == 0 {
        w.l(0, "worker_processes auto;");
    } else {
        w.l(0, &format!("worker_processes {};", settings.workers));
    }
    w.l(0, &format!("pid {};", quote(&format!("{prefix}/nginx.pid"))));
    w.l(
        0,
        &format!("error_log {} warn;", quote(&format!("{prefix}/logs/error.log"))),
    );
    w.l(0, "events { worker_connections 4096; }");
    w.l(0, "http {");
    if settings.access_log {
        w.l(
            1,
            &format!("access_log {};", quote(&format!("{prefix}/logs/access.log"))),
        );
    } else {
        w.l(1, "access_log off;");
    }
    for (directive, dir) in [
        ("client_body_temp_path", "body"),
        ("proxy_temp_path", "proxy"),
        ("fastcgi_temp_path", "fastcgi"),
        ("uwsgi_temp_path", "uwsgi"),
        ("scgi_temp_path", "scgi"),
    ] {
        w.l(
            1,
            &format!("{directive} {};", quote(&format!("{prefix}/tmp/{dir}"))),
        );
    }
    for line in [
        "default_type application/octet-stream;",
        "server_tokens off;",
        "keepalive_timeout 65s;",
        "server_names_hash_bucket_size 128;",
        "server_names_hash_max_size 8192;",
        "map_hash_bucket_size 128;",
        "map_hash_max_size 8192;",
        "variables_hash_bucket_size 128;",
        "variables_hash_max_size 8192;",
        "proxy_headers_hash_bucket_size 128;",
        "proxy_headers_hash_max_size 2048;",
        "geo $crw_dollar { default \"$\"; }",
        "geo $crw_one { default 1; }",
        r#"map $request_body $crw_model { "~\"model\"\s*:\s*\"(?<crw_mv>[^\"]*)\"" $crw_mv; default ""; }"#,
    ] {
        w.l(1, line);
    }
    w.l(1, "proxy_http_version 1.1;");
    w.l(1, "proxy_set_header Connection \"\";");
    for (name, value) in DEFAULT_HEADERS {
        w.l(1, &format!("proxy_set_header {name} {value};"));
    }
    w.l(1, &format!("proxy_connect_timeout {DEFAULT_CONNECT_MS}ms;"));
    w.l(1, &format!("proxy_read_timeout {DEFAULT_READ_MS}ms;"));
    w.l(1, &format!("proxy_send_timeout {DEFAULT_READ_MS}ms;"));
    w.l(1, "proxy_next_upstream error timeout;");
    w.l(1, "proxy_next_upstream_tries 2;");
    w.l(
        1,
        &format!(
            "upstream crw_status {{ server 127.0.0.1:{}; }}",
            settings.status_port
        ),
    );
    for u in &plan.units {
        w.owned(&u.key, 1, &texts[&u.key].http);
    }

    // Server blocks: the default server (host-less units), then one per host.
    let hosts: BTreeSet<&str> = plan.units.iter().filter_map(|u| u.host.as_deref()).collect();
    let mut dispatch_maps = BTreeMap::new();
    let mut servers: Vec<(Option<&str>, Server)> = Vec::new();
    servers.push((
        None,
        server_body(&server_units(&plan.units, None), &texts, &mut dispatch_maps),
    ));
    for h in &hosts {
        servers.push((
            Some(h),
            server_body(&server_units(&plan.units, Some(h)), &texts, &mut dispatch_maps),
        ));
    }
    for m in dispatch_maps.values() {
        for line in m.lines() {
            w.l(1, line);
        }
    }
    let listen = match settings.listen {
        IpAddr::V6(ip) => format!("[{ip}]"),
        IpAddr::V4(ip) => ip.to_string(),
    };
    for (host, server) in servers {
        w.l(1, "server {");
        match host {
            None => {
                w.l(
                    2,
                    &format!("listen {listen}:{} default_server;", settings.http_port),
                );
                if let Some(https) = settings.https_port {
                    w.l(2, &format!("listen {listen}:{https} ssl default_server;"));
                    w.l(2, "ssl_reject_handshake on;");
                }
                w.l(2, "server_name _;");
            }
            Some(h) => {
                w.l(2, &format!("listen {listen}:{};", settings.http_port));
                let tls_owner = plan.units.iter().find(|u| {
                    u.host.as_deref() == Some(h) && matches!(&u.body, UnitBody::Route(b) if b.tls.is_some())
                });
                if let (Some(https), Some(u)) = (settings.https_port, tls_owner) {
                    let block = format!(
                        "listen {listen}:{https} ssl;\nssl_certificate {};\nssl_certificate_key {};",
                        quote(&format!("{GEN_DIR}/tls/{}.crt", u.id)),
                        quote(&format!("{GEN_DIR}/tls/{}.key", u.id))
                    );
                    w.owned(&u.key, 2, &block);
                }
                w.l(2, &format!("server_name {};", quote(h)));
            }
        }
        let base = w.line;
        for line in server.text.lines() {
            w.l(2, line);
        }
        for (a, b, k) in server.owners {
            w.owners.push((base + a - 1, base + b - 1, k));
        }
        w.l(1, "}");
    }
    w.l(1, "server {");
    w.l(2, &format!("listen 127.0.0.1:{};", settings.status_port));
    w.l(
        2,
        &format!("location = /crwatch/generation {{ default_type text/plain; return 200 \"{GEN}\"; }}"),
    );
    w.l(2, "location /crwatch/no-route/ { default_type application/json; return 404 '{\"error\":{\"message\":\"no routing rule matches this request\",\"type\":\"invalid_request_error\",\"code\":\"model_not_found\"}}'; }");
    w.l(2, "location = /nginx_status { stub_status; }");
    w.l(2, "location / { return 404; }");
    w.l(1, "}");
    w.l(0, "}");

    let mut h = Sha256::new();
    h.update(prefix.as_bytes());
    h.update(w.out.as_bytes());
    for f in &files {
        h.update(f.rel.as_bytes());
        h.update([0]);
        h.update(&f.bytes);
    }
    let hash = hex::encode(h.finalize())[..16].to_string();
    let gen_dir = settings.gen_dir(&hash).display().to_string();
    let conf = w.out.replace(GEN_DIR, &gen_dir).replace(GEN, &hash);
    Rendered {
        conf,
        hash,
        owners: w.owners,
        files,
        unit_hashes,
        secrets,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::*;
    use crate::plan::{Snapshot, plan};

    /// nginx's tokenizer (ngx_conf_read_token), enough to see the structure: tokens, `;`,
    /// `{`, `}`; quoted strings with backslash escapes; `#` comments.
    fn tokens(conf: &str) -> Result<Vec<String>, String> {
        let mut out = Vec::new();
        let mut chars = conf.chars().peekable();
        while let Some(&c) = chars.peek() {
            match c {
                c if c.is_whitespace() => {
                    chars.next();
                }
                '#' => {
                    for c in chars.by_ref() {
                        if c == '\n' {
                            break;
                        }
                    }
                }
                ';' | '{' | '}' => {
                    out.push(c.to_string());
                    chars.next();
                }
                '"' | '\'' => {
                    let q = c;
                    chars.next();
                    let mut t = String::from("Q:");
                    loop {
                        match chars.next() {
                            None => return Err("unterminated quote".into()),
                            Some('\\') => {
                                t.push('\\');
                                t.push(chars.next().ok_or("dangling backslash")?);
                            }
                            Some(c) if c == q => break,
                            Some(c) => t.push(c),
                        }
                    }
                    out.push(t);
                }
                _ => {
                    let mut t = String::new();
                    let mut in_var_braces = false;
                    while let Some(&c) = chars.peek() {
                        if in_var_braces {
                            t.push(c);
                            chars.next();
                            if c == '}' {
                                in_var_braces = false;
                            }
                            continue;
                        }
                        if c.is_whitespace() || c == ';' || c == '"' || c == '\'' {
                            break;
                        }
                        if c == '{' && !t.ends_with('$') {
                            break;
                        }
                        if c == '}' {
                            break;
                        }
                        if c == '{' {
                            in_var_braces = true;
                        }
                        t.push(c);
                        chars.next();
                    }
                    out.push(t);
                }
            }
        }
        Ok(out)
    }

    const DIRECTIVES: &[&str] = &[
        "user",
        "worker_processes",
        "pid",
        "error_log",
        "events",
        "worker_connections",
        "http",
        "access_log",
        "client_body_temp_path",
        "proxy_temp_path",
        "fastcgi_temp_path",
        "uwsgi_temp_path",
        "scgi_temp_path",
        "default_type",
        "server_tokens",
        "keepalive_timeout",
        "server_names_hash_bucket_size",
        "server_names_hash_max_size",
        "map_hash_bucket_size",
        "map_hash_max_size",
        "variables_hash_bucket_size",
        "variables_hash_max_size",
        "proxy_headers_hash_bucket_size",
        "proxy_headers_hash_max_size",
        "geo",
        "map",
        "upstream",
        "server",
        "keepalive",
        "listen",
        "ssl_reject_handshake",
        "server_name",
        "ssl_certificate",
        "ssl_certificate_key",
        "location",
        "error_page",
        "return",
        "internal",
        "proxy_http_version",
        "proxy_set_header",
        "proxy_hide_header",
        "add_header",
        "proxy_connect_timeout",
        "proxy_read_timeout",
        "proxy_send_timeout",
        "proxy_next_upstream",
        "proxy_next_upstream_tries",
        "proxy_next_upstream_timeout",
        "proxy_ssl_server_name",
        "proxy_ssl_name",
        "proxy_pass",
        "limit_req_zone",
        "limit_req",
        "limit_req_status",
        "client_body_buffer_size",
        "client_max_body_size",
        "client_body_in_single_buffer",
        "mirror",
        "mirror_request_body",
        "proxy_buffering",
        "if",
        "alias",
        "stub_status",
    ];

    /// Walk the tokens as nginx would: every directive is known, blocks balance, and each
    /// `map`/`geo` entry is exactly a key and a value.
    fn check_structure(conf: &str) -> Result<(), String> {
        let toks = tokens(conf)?;
        let mut stack: Vec<String> = Vec::new();
        let mut stmt: Vec<&str> = Vec::new();
        for t in &toks {
            match t.as_str() {
                ";" => {
                    let in_table = matches!(stack.last().map(String::as_str), Some("map" | "geo"));
                    if in_table {
                        if stmt.len() != 2 {
                            return Err(format!("map entry of {} tokens: {stmt:?}", stmt.len()));
                        }
                    } else if let Some(name) = stmt.first()
                        && !DIRECTIVES.contains(name)
                    {
                        return Err(format!("unknown directive {name:?} in {stmt:?}"));
                    }
                    stmt.clear();
                }
                "{" => {
                    let name = stmt.first().copied().unwrap_or("");
                    if !DIRECTIVES.contains(&name) {
                        return Err(format!("unknown block {name:?}"));
                    }
                    stack.push(name.to_string());
                    stmt.clear();
                }
                "}" => {
                    if !stmt.is_empty() || stack.pop().is_none() {
                        return Err(format!("unbalanced }} after {stmt:?}"));
                    }
                }
                other => stmt.push(other),
            }
        }
        if !stack.is_empty() || !stmt.is_empty() {
            return Err(format!("unclosed: {stack:?} {stmt:?}"));
        }
        Ok(())
    }

    fn hostile() -> impl Strategy<Value = String> {
        proptest::string::string_regex("[a-z0-9/\"';{}$\\\\# .*()\\[\\]|-]{0,24}").unwrap()
    }

    fn secret(name: &str, key: &str, value: &str) -> Arc<k8s_openapi::api::core::v1::Secret> {
        let mut data = std::collections::BTreeMap::new();
        data.insert(
            key.to_string(),
            k8s_openapi::ByteString(value.as_bytes().to_vec()),
        );
        Arc::new(k8s_openapi::api::core::v1::Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                ..Default::default()
            },
            data: Some(data),
            ..Default::default()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn hostile_specs_render_well_formed_configuration(
            path in hostile(), regex in hostile(), hval in hostile(), url in hostile(), model in hostile(), key in hostile(),
        ) {
            let route = |n: &str, spec: serde_json::Value| -> Arc<crate::types::GatewayRoute> {
                let mut spec = spec;
                spec["backends"] = serde_json::json!([{"url": "http://127.0.0.1:1"}]);
                Arc::new(serde_json::from_value(serde_json::json!({
                    "apiVersion": "gateway.crwatch.io/v1alpha1", "kind": "GatewayRoute",
                    "metadata": {"name": n, "namespace": "ns"}, "spec": spec,
                })).unwrap())
            };
            // One hostile field per resource, so that one refused field does not hide another.
            let mut routes = vec![
                route("a", serde_json::json!({"path": {"type": "Exact", "value": format!("/{path}")}})),
                route("b", serde_json::json!({"path": {"type": "RegularExpression", "value": regex}})),
                route("c", serde_json::json!({"host": "c.test", "headers": [{"name": "x-h", "value": hval}]})),
                route("d", serde_json::json!({"host": "d.test", "headers": [{"name": "x-r", "value": hval, "type": "RegularExpression"}]})),
                route("e", serde_json::json!({"host": "e.test", "requestHeaders": {"set": [{"name": "x-s", "value": hval}]},
                    "responseHeaders": {"add": [{"name": "x-a", "value": hval}]}})),
            ];
            let mut f = (*route("f", serde_json::json!({"host": "f.test"}))).clone();
            f.spec.backends[0].url = Some(format!("http://{url}"));
            routes.push(Arc::new(f));
            let ai: Arc<crate::types::AIGateway> = Arc::new(serde_json::from_value(serde_json::json!({
                "apiVersion": "gateway.crwatch.io/v1alpha1", "kind": "AIGateway",
                "metadata": {"name": "g", "namespace": "ns"},
                "spec": {
                    "host": "ai.test",
                    "modelIntegrations": [{"name": "m", "baseURL": "http://127.0.0.1:3/v1", "apiKeySecretRef": {"name": "s", "key": "k"}}],
                    "routingRules": [{"name": "r", "match": {"model": model, "headers": [{"name": "x-m", "value": hval}]}, "integration": "m"}],
                    "rateLimits": [{"name": "l", "requestsPerSecond": 5}],
                    "securityPolicies": [{"name": "p", "apiKeys": [{"secretName": "c"}]}],
                },
            })).unwrap());
            let snapshot = Snapshot {
                routes,
                ai_gateways: vec![ai],
                secrets: vec![secret("s", "k", &key), secret("c", "client", &key)],
                ..Default::default()
            };
            let p = plan(&snapshot);
            let r = render(&p, &Settings::loopback("/tmp/p".into(), 80, 81));
            prop_assert!(check_structure(&r.conf).is_ok(), "{:?}\n{}", check_structure(&r.conf), r.conf);
            // Every resource served has lines attributed to it.
            for u in &p.units {
                prop_assert!(r.owners.iter().any(|(_, _, k)| k == &u.key));
            }
        }
    }

    #[test]
    fn the_tokenizer_sees_an_injection() {
        assert!(check_structure("http { server { listen 1; } }").is_ok());
        assert!(check_structure("http { include /etc/x; }").is_err());
        assert!(check_structure("http { map $a $b { \"x\" 1 2; } }").is_err());
        assert!(check_structure("http { server { } ").is_err());
    }
}
