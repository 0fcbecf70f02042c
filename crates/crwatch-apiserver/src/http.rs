//! HTTP: authentication, fault injection, URL routing to discovery, OpenAPI and resource
//! verbs, content negotiation (JSON or Table), Warning headers, and the serving loop for
//! plain HTTP and HTTPS with HTTP/1.1 and HTTP/2.
//!
//! Connections are bounded in time as the real server's Go `http.Server` bounds them: a TLS
//! handshake and the first request's headers must arrive within their timeouts (32 s by
//! default, the real server's `ReadHeaderTimeout`, from which Go also derives the handshake
//! deadline), so idle or trickling connections (slowloris) are closed. When accepting fails
//! (out of file descriptors), the accept loop backs off as Go's does (5 ms doubling to 1 s)
//! and logs at most once per [`ACCEPT_LOG_INTERVAL`].

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::{Api, Ctx, Out, Params};
use crate::faults::RequestRecord;
use crate::registry::{ResourceDef, api_resource};
use crate::status::{ApiError, ApiResult};
use crate::watch::{self, Format, WatchSettings};

/// What the HTTP layer needs besides the API.
pub(crate) struct AppState {
    pub api: Arc<Api>,
    /// Who a bearer token belongs to (admin, static users, ServiceAccount tokens).
    pub authn: Arc<crate::authn::Authenticator>,
    /// RBAC (and `system:masters`).
    pub authz: Arc<crate::rbac::Authorizer>,
    pub watch: WatchSettings,
    pub stop: CancellationToken,
    pub version: Value,
    pub max_body: usize,
}

fn json_response(code: u16, body: &Value, warnings: &[String]) -> Response {
    let mut resp = Response::new(Body::from(body.to_string()));
    *resp.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    for w in warnings {
        let text = format!("299 - {}", serde_json::to_string(w).unwrap_or_default());
        if let Ok(v) = HeaderValue::from_str(&text) {
            resp.headers_mut().append(header::WARNING, v);
        }
    }
    resp
}

fn error_response(e: &ApiError) -> Response {
    let mut resp = json_response(e.code, &e.status(), &e.warnings);
    if let Some(secs) = e.retry_after {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

/// The parsed resource part of a URL.
#[derive(Debug, Default, PartialEq)]
struct ResourcePath {
    group: String,
    version: String,
    legacy_watch: bool,
    namespace: String,
    resource: String,
    name: String,
    sub: String,
}

/// Split `/api/v1/...` or `/apis/{g}/{v}/...` into its parts (None for discovery-only paths).
fn parse_resource_path(segs: &[&str]) -> Option<ResourcePath> {
    let (group, version, mut rest) = match segs {
        ["api", v, rest @ ..] if !rest.is_empty() => (String::new(), v.to_string(), rest),
        ["apis", g, v, rest @ ..] if !rest.is_empty() => (g.to_string(), v.to_string(), rest),
        _ => return None,
    };
    let mut p = ResourcePath {
        group,
        version,
        ..Default::default()
    };
    if rest.first() == Some(&"watch") {
        p.legacy_watch = true;
        rest = &rest[1..];
    }
    match rest {
        ["namespaces"] => p.resource = "namespaces".into(),
        ["namespaces", name] => {
            p.resource = "namespaces".into();
            p.name = name.to_string();
        }
        ["namespaces", name, sub @ ("status" | "finalize")] if p.group.is_empty() => {
            p.resource = "namespaces".into();
            p.name = name.to_string();
            p.sub = sub.to_string();
        }
        ["namespaces", ns, resource, tail @ ..] => {
            p.namespace = ns.to_string();
            p.resource = resource.to_string();
            match tail {
                [] => {}
                [name] => p.name = name.to_string(),
                [name, sub] => {
                    p.name = name.to_string();
                    p.sub = sub.to_string();
                }
                _ => return None,
            }
        }
        [resource] => p.resource = resource.to_string(),
        [resource, name] => {
            p.resource = resource.to_string();
            p.name = name.to_string();
        }
        [resource, name, sub] => {
            p.resource = resource.to_string();
            p.name = name.to_string();
            p.sub = sub.to_string();
        }
        _ => return None,
    }
    Some(p)
}

fn verb_of(method: &Method, p: &ResourcePath, watch: bool) -> &'static str {
    match *method {
        Method::GET if watch || p.legacy_watch => "watch",
        Method::GET if p.name.is_empty() => "list",
        Method::GET => "get",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if p.name.is_empty() => "deletecollection",
        Method::DELETE => "delete",
        _ => "unknown",
    }
}

/// What representation the client asked for with the first media type of its Accept header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum View {
    Json,
    Table,
    /// `as=PartialObjectMetadata` / `as=PartialObjectMetadataList`: metadata only.
    Metadata,
}

fn wanted_view(headers: &HeaderMap) -> View {
    let first = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .and_then(|a| a.split(',').next())
        .unwrap_or_default();
    if first.contains("as=Table") {
        View::Table
    } else if first.contains("as=PartialObjectMetadata") {
        View::Metadata
    } else {
        View::Json
    }
}

/// The whole request handler.
pub(crate) async fn handle(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    // Go's net/http hands the server the percent-decoded path (`%2F` included, so it splits
    // into segments as a `/` would); a malformed escape never reaches the handler.
    let Some(path) = percent_decode_path(parts.uri.path()) else {
        let mut resp = Response::new(Body::from("400 Bad Request"));
        *resp.status_mut() = StatusCode::BAD_REQUEST;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        return resp;
    };
    // RBAC's non-resource URLs are matched against the path as sent (`/version/` too).
    let authz_path = path.clone();
    let path = path.trim_end_matches('/').to_string();
    let query: HashMap<String, String> = parts.uri.query().map(url_pairs).unwrap_or_default();
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let rp = parse_resource_path(&segs);
    let watch_param = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    let user_agent = parts
        .headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let record = match &rp {
        Some(p) => RequestRecord {
            verb: verb_of(&parts.method, p, watch_param).to_string(),
            resource: if p.sub.is_empty() {
                p.resource.clone()
            } else {
                format!("{}/{}", p.resource, p.sub)
            },
            group: p.group.clone(),
            namespace: p.namespace.clone(),
            name: p.name.clone(),
            path: path.clone(),
            user_agent: user_agent.clone(),
        },
        None => RequestRecord {
            verb: parts.method.as_str().to_ascii_lowercase(),
            resource: String::new(),
            group: String::new(),
            namespace: String::new(),
            name: String::new(),
            path: path.clone(),
            user_agent: user_agent.clone(),
        },
    };
    // Authentication, impersonation, then authorization, as the real server's filters run: a
    // bad token is 401 everywhere; no token is `system:anonymous`, whom the default RBAC
    // lets read only the public endpoints; `system:masters` (the admin token) bypasses RBAC.
    let user = match authenticate(&state, &parts.headers) {
        Ok(u) => u,
        Err(e) => return error_response(&e),
    };
    let user = match crate::rbac::impersonate(&state.authz, &user, &parts.headers) {
        Ok(None) => user,
        Ok(Some(acting_as)) => acting_as,
        Err(crate::rbac::ImpersonationError::Forbidden(e)) => return error_response(&e),
        Err(crate::rbac::ImpersonationError::Malformed(why)) => {
            let mut resp = Response::new(Body::from(format!(
                "Internal Server Error: {:?}: {why}\n",
                parts.uri.path()
            )));
            *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            return resp;
        }
    };
    let attrs = crate::rbac::request_attributes(&user, parts.method.as_str(), &authz_path, &query);
    let (allowed, reason) = state.authz.authorize(&attrs);
    if !allowed {
        return error_response(&crate::rbac::forbidden(&attrs, &reason));
    }
    // A crash point (`Faults::hold_write`) may hold a write's answer: see `finish` below.
    let admitted = match state.api.faults.on_request(record).await {
        Ok(a) => a,
        Err(e) => return error_response(&e),
    };
    let body = match http_body_util::Limited::new(body, state.max_body).collect().await {
        Ok(b) => b.to_bytes(),
        // As `limitedReadBody` of the real server.
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return error_response(&ApiError::request_entity_too_large(&format!(
                "limit is {}",
                state.max_body
            )));
        }
        Err(e) => {
            return error_response(&ApiError::bad_request(format!(
                "error reading the request body: {e}"
            )));
        }
    };
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_string();
    let view = wanted_view(&parts.headers);
    match rp {
        Some(p) => {
            let params = Params(query);
            // Admission webhooks see who made the request (`userInfo`).
            let request = resource_request(
                &state,
                &user,
                &parts.method,
                p,
                params,
                user_agent,
                &content_type,
                view,
                &body,
            );
            match crate::authn::with_user(user.clone(), request).await {
                Ok(resp) => {
                    admitted.finish(resp.status().is_success()).await;
                    resp
                }
                Err(e) => error_response(&e),
            }
        }
        None if segs == ["openapi", "v2"] && accepts_only_protobuf(&parts.headers) => {
            // kubectl asks for the protobuf form only; it needs an answer, not a 406.
            let mut resp = Response::new(Body::from(crate::openapi::v2_protobuf_minimal()));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(crate::openapi::V2_PROTOBUF_CONTENT_TYPE),
            );
            resp
        }
        // ServiceAccount issuer discovery (OIDC), so token verifiers can fetch the key.
        None if parts.method == Method::GET
            && matches!(
                segs.as_slice(),
                [".well-known", "openid-configuration"] | ["openid", "v1", "jwks"]
            ) =>
        {
            let (body, content_type) = if segs[0] == "openid" {
                (state.authn.key().jwks(), "application/jwk-set+json")
            } else {
                (crate::authn::openid_configuration(), "application/json")
            };
            let mut resp = json_response(200, &body, &[]);
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            resp
        }
        None => match discovery(&state, &parts.method, &segs) {
            Ok(v) => json_response(200, &v, &[]),
            Err(e) => error_response(&e),
        },
    }
}

fn accepts_only_protobuf(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("protobuf") && !a.contains("json") && !a.contains("*/*"))
}

/// Percent-decode a URL path as Go's `url.PathUnescape` does; None for a malformed escape.
fn percent_decode_path(raw: &str) -> Option<String> {
    if !raw.contains('%') {
        return Some(raw.to_string());
    }
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let s = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(s, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

fn url_pairs(q: &str) -> HashMap<String, String> {
    form_urlencoded::parse(q.as_bytes()).into_owned().collect()
}

#[allow(clippy::too_many_arguments)]
async fn resource_request(
    state: &Arc<AppState>,
    user: &crate::authn::UserInfo,
    method: &Method,
    p: ResourcePath,
    params: Params,
    user_agent: String,
    content_type: &str,
    view: View,
    body: &Bytes,
) -> ApiResult<Response> {
    if let Some(resp) = auth_resource(state, user, method, &p, content_type, body)? {
        return Ok(resp);
    }
    let registry = state.api.registry();
    let def: Arc<ResourceDef> = registry
        .get(&p.group, &p.version, &p.resource)
        .ok_or_else(ApiError::no_route)?;
    if !p.namespace.is_empty() && !def.namespaced {
        return Err(ApiError::no_route());
    }
    match p.sub.as_str() {
        "" => {}
        "status" if def.status_subresource => {}
        "scale" if def.scale.is_some() => {}
        "finalize" if def.kind == "Namespace" => {}
        // The Pod subresources served here (crate::podsub).
        "ephemeralcontainers" | "eviction" | "binding" | "log"
            if def.group.is_empty() && def.kind == "Pod" => {}
        // The real CRD handler answers an undefined subresource as the object not found.
        _ if def.is_custom() && !p.name.is_empty() => {
            return Err(ApiError::not_found(&def.group, &def.plural, &p.name));
        }
        _ => return Err(ApiError::no_route()),
    }
    let watch_param = matches!(params.get("watch"), Some("true" | "1"));
    let ctx = Ctx {
        def: def.clone(),
        namespace: p.namespace.clone(),
        name: p.name.clone(),
        sub: if p.sub == "finalize" {
            String::new()
        } else {
            p.sub.clone()
        },
        params,
        user_agent,
        user: user.name.clone(),
    };
    let verb = verb_of(method, &p, watch_param);
    // A collection without deletecollection (namespaces) has no DELETE route at all: the real
    // server's router answers 405 before any handler runs.
    if verb == "deletecollection" && p.sub.is_empty() && !def.verbs.iter().any(|v| v == verb) {
        return Err(ApiError::method_not_allowed());
    }
    if matches!(verb, "list" | "watch") {
        ctx.params.check_list_options()?;
    }
    if matches!(verb, "create" | "update") {
        let base = content_type.split(';').next().unwrap_or_default().trim();
        // JSON bodies, and the protobuf bodies kubectl 1.32+ sends for `kubectl create <kind>`.
        if !matches!(
            base,
            "application/json" | "" | "*/*" | "application/vnd.kubernetes.protobuf"
        ) {
            return Err(ApiError::new(
                415,
                "UnsupportedMediaType",
                format!(
                    "the body of the request was in an unknown format - accepted media types include: application/json (got {base:?})"
                ),
            ));
        }
    }
    // Protobuf bodies (kubectl 1.32+ `kubectl create <kind>`) become the JSON they stand for.
    let converted;
    let body = if content_type.split(';').next().unwrap_or_default().trim() == crate::protobuf::CONTENT_TYPE
        && !body.is_empty()
        && matches!(verb, "create" | "update" | "delete" | "deletecollection")
    {
        // RBAC kinds are decoded by the RBAC code (the generated tables leave them out).
        let json = match crate::reviews::decode_rbac_protobuf(body)? {
            Some(v) => v,
            None => crate::protobuf::decode(body)?,
        };
        converted = Bytes::from(serde_json::to_vec(&json).map_err(ApiError::internal)?);
        &converted
    } else {
        body
    };
    // RBAC escalation prevention: a writer outside `system:masters` may only grant what it
    // holds. The object as it would be stored (a dry run of the same write) is checked.
    if crate::rbac::is_guarded(&def.group, &def.plural)
        && p.sub.is_empty()
        && matches!(verb, "create" | "update" | "patch")
        && !user.is_master()
    {
        let mut dry = ctx.clone();
        dry.params.0.insert("dryRun".into(), "All".into());
        let would_be = match verb {
            "create" => state.api.create(&dry, body).await?,
            "update" => state.api.update(&dry, body).await?,
            _ => state.api.patch(&dry, content_type, body).await?,
        };
        state.authz.check_escalation(user, &def.plural, &would_be.body)?;
    }
    let out = match verb {
        "watch" => {
            let full = ctx.params.get("includeObject") == Some("Object");
            // A negative timeoutSeconds makes the real server's watch context expire at once:
            // the watch answers 200 and ends without events.
            if ctx.params.int64("timeoutSeconds")?.is_some_and(|t| t < 0) {
                let mut resp = Response::new(Body::empty());
                resp.headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
                return Ok(resp);
            }
            // A resourceVersion the server has not reached: the real server's watch cache
            // waits up to 3 s for it, then answers 200 with an ERROR event (504 "Too large
            // resource version"), so a client resuming against a server that lost its
            // history finds out instead of waiting for the counter to catch up. A watch list
            // (sendInitialEvents=true) waits for the same freshness first
            // (`waitUntilWatchCacheFreshAndForceAllEvents`) and fails the same way.
            if let Some(from) = ctx
                .params
                .get("resourceVersion")
                .and_then(|rv| rv.parse::<u64>().ok())
                .filter(|rv| *rv > 0)
                && let Err(e) = state.api.wait_for_revision(from).await
            {
                let mut line =
                    serde_json::to_vec(&serde_json::json!({"type": "ERROR", "object": e.status()}))
                        .map_err(ApiError::internal)?;
                line.push(b'\n');
                let mut resp = Response::new(Body::from(line));
                resp.headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
                return Ok(resp);
            }
            let format = match view {
                View::Table => Format::Table { full_object: full },
                View::Metadata => Format::Metadata,
                View::Json => Format::Object,
            };
            let rx = watch::start(
                state.api.clone(),
                &ctx,
                format,
                &state.watch,
                state.api.faults.drop_signal(),
                state.stop.clone(),
            )?;
            state.api.faults.watch_streaming(&ctx.def.plural);
            let stream = futures::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|b| (Ok::<Bytes, Infallible>(b), rx))
            });
            let mut resp = Response::new(Body::from_stream(stream));
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            return Ok(resp);
        }
        "get" if ctx.sub == "log" => {
            let text = crate::podsub::log(&state.api, &ctx)?;
            let mut resp = Response::new(Body::from(text));
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            return Ok(resp);
        }
        "create" if ctx.sub == "eviction" => crate::podsub::eviction(&state.api, &ctx, body).await?,
        "create" if ctx.sub == "binding" => crate::podsub::binding(&state.api, &ctx, body).await?,
        "get" => {
            // A resourceVersion the server has not reached: wait for it as the watch cache
            // does, then 504 "Too large resource version".
            if let Some(rv) = ctx
                .params
                .get("resourceVersion")
                .and_then(|rv| rv.parse::<u64>().ok())
                .filter(|rv| *rv > 0)
            {
                state.api.wait_for_revision(rv).await?;
            }
            // A client served a lagging view (`Faults::stale_reads`) reads it here.
            let body = match state.api.faults.stale_get(&ctx) {
                Some(stale) => stale?,
                None => state.api.get(&ctx)?,
            };
            Out {
                code: 200,
                body,
                warnings: vec![],
            }
        }
        "list" => {
            let stale = state.api.faults.stale_list(&ctx);
            let page = state.api.list_page(stale.as_ref().unwrap_or(&ctx)).await?;
            let shape = match view {
                View::Json => crate::api::ListShape::Objects,
                View::Metadata => crate::api::ListShape::Metadata,
                // A Table's rows are built from every item at once (crate::table).
                View::Table => {
                    return table_or_json(
                        state,
                        &def,
                        &ctx,
                        verb,
                        view,
                        Out {
                            code: 200,
                            body: page.into_value(),
                            warnings: vec![],
                        },
                    )
                    .await;
                }
            };
            state.api.store.sync_all().await.map_err(ApiError::internal)?;
            return Ok(list_response(page, shape));
        }
        "create" => state.api.create(&ctx, body).await?,
        "update" => state.api.update(&ctx, body).await?,
        "patch" => state.api.patch(&ctx, content_type, body).await?,
        "delete" => state.api.delete(&ctx, body).await?,
        "deletecollection" => state.api.delete_collection(&ctx, body).await?,
        _ => return Err(ApiError::method_not_allowed()),
    };
    table_or_json(state, &def, &ctx, verb, view, out).await
}

/// A list's JSON response, written a chunk ([`crate::api::LIST_CHUNK_BYTES`]) at a time as the
/// connection takes it, so a large list never sits whole in memory; one that fits in a chunk
/// is sent at once, with its length, as before.
fn list_response(page: crate::api::ListPage, shape: crate::api::ListShape) -> Response {
    let mut chunks = page.chunks(shape, crate::api::LIST_CHUNK_BYTES);
    let first = chunks.next().unwrap_or_default();
    let body = match chunks.next() {
        None => Body::from(first),
        Some(second) => {
            let rest = futures::stream::iter(
                [first, second]
                    .into_iter()
                    .chain(chunks)
                    .map(|c| Ok::<Bytes, Infallible>(Bytes::from(c))),
            );
            Body::from_stream(rest)
        }
    };
    let mut resp = Response::new(body);
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// The response of a verb's outcome: as a Table or metadata when asked for and it is an
/// object or a list, else as it is.
async fn table_or_json(
    state: &Arc<AppState>,
    def: &ResourceDef,
    ctx: &Ctx,
    verb: &str,
    view: View,
    out: Out,
) -> ApiResult<Response> {
    // Nothing a response shows or acknowledges may be lost in a crash: wait until every change
    // up to the newest revision is on disk (at once without a state file; writes in flight
    // together share one fsync).
    state.api.store.sync_all().await.map_err(ApiError::internal)?;
    let is_object = out
        .body
        .get("kind")
        .and_then(Value::as_str)
        .is_some_and(|k| k == def.kind);
    let is_list = matches!(verb, "list");
    if view == View::Metadata && (is_object || is_list) && matches!(verb, "get" | "list") {
        let body = if is_list {
            let items: Vec<Value> = out.body["items"]
                .as_array()
                .map(|a| a.iter().map(crate::table::partial_metadata).collect())
                .unwrap_or_default();
            json!({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": out.body["metadata"], "items": items})
        } else {
            crate::table::partial_metadata(&out.body)
        };
        return Ok(json_response(200, &body, &out.warnings));
    }
    if view == View::Table && (is_object || is_list) && matches!(verb, "get" | "list") {
        let full = ctx.params.get("includeObject") == Some("Object");
        let items: Vec<Value> = if is_list {
            out.body["items"].as_array().cloned().unwrap_or_default()
        } else {
            vec![out.body.clone()]
        };
        let refs: Vec<&Value> = items.iter().collect();
        let meta = if is_list {
            out.body["metadata"].clone()
        } else {
            json!({"resourceVersion": out.body["metadata"]["resourceVersion"]})
        };
        let mut t = crate::table::to_table(def, &refs, meta, true);
        if full && let Some(rows) = t["rows"].as_array_mut() {
            for (row, item) in rows.iter_mut().zip(items.iter()) {
                row["object"] = item.clone();
            }
        }
        return Ok(json_response(200, &t, &out.warnings));
    }
    Ok(json_response(out.code, &out.body, &out.warnings))
}

/// The bearer token's user; anonymous without one; 401 for a token nobody has.
fn authenticate(state: &AppState, headers: &HeaderMap) -> ApiResult<crate::authn::UserInfo> {
    // As the real bearer-token authenticator reads the header: the scheme in any case, the
    // token up to the next space; another scheme is no credential at all (anonymous).
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .and_then(|v| {
            let mut parts = v.splitn(3, ' ');
            let scheme = parts.next()?;
            let token = parts.next()?;
            scheme.eq_ignore_ascii_case("bearer").then_some(token)
        });
    match given {
        None => Ok(crate::authn::UserInfo::anonymous()),
        Some(t) => match state
            .authn
            .authenticate(t, &state.api.store, crate::authn::now_unix())
        {
            crate::authn::Authenticated::User(u) => Ok(u),
            crate::authn::Authenticated::Invalid => Err(ApiError::unauthorized()),
        },
    }
}

/// The reviews (authorization.k8s.io, authentication.k8s.io: answered, never stored) and the
/// ServiceAccount TokenRequest subresource, before the generic resource path.
fn auth_resource(
    state: &AppState,
    user: &crate::authn::UserInfo,
    method: &Method,
    p: &ResourcePath,
    content_type: &str,
    body: &Bytes,
) -> ApiResult<Option<Response>> {
    let review = crate::reviews::is_review(&p.group, &p.resource) && p.name.is_empty();
    let token =
        p.group.is_empty() && p.resource == "serviceaccounts" && p.sub == "token" && !p.name.is_empty();
    if !(review || token) || p.version != "v1" {
        return Ok(None);
    }
    if method != Method::POST {
        return Err(ApiError::method_not_allowed());
    }
    let converted;
    let body: &[u8] =
        if content_type.split(';').next().unwrap_or_default().trim() == crate::protobuf::CONTENT_TYPE {
            let what = if token { "token" } else { p.resource.as_str() };
            converted = serde_json::to_vec(&crate::reviews::decode_protobuf(body, what)?)
                .map_err(ApiError::internal)?;
            &converted
        } else {
            body
        };
    let out = if token {
        crate::reviews::token_request(&state.authn, &state.api.store, &p.namespace, &p.name, body)?
    } else {
        crate::reviews::review(
            &state.authn,
            &state.authz,
            &state.api.store,
            user,
            &p.group,
            &p.resource,
            &p.namespace,
            body,
        )?
    };
    Ok(Some(json_response(201, &out, &[])))
}

fn discovery(state: &AppState, method: &Method, segs: &[&str]) -> ApiResult<Value> {
    if method != Method::GET {
        return Err(ApiError::method_not_allowed());
    }
    let registry = state.api.registry();
    let group_json = |name: &str, versions: &[String]| {
        let vs: Vec<Value> = versions
            .iter()
            .map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v}))
            .collect();
        json!({"name": name, "versions": vs, "preferredVersion": vs.first().cloned().unwrap_or(Value::Null)})
    };
    match segs {
        ["version"] => Ok(state.version.clone()),
        ["healthz" | "livez" | "readyz", ..] => Ok(json!("ok")),
        ["api"] => Ok(json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]
        })),
        ["apis"] => {
            let groups: Vec<Value> = registry
                .groups()
                .iter()
                .filter(|(g, _)| !g.is_empty())
                .map(|(g, vs)| group_json(g, vs))
                .collect();
            Ok(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}))
        }
        ["apis", g] => {
            let groups = registry.groups();
            let vs = groups.get(*g).ok_or_else(ApiError::no_route)?;
            let mut v = group_json(g, vs);
            v["kind"] = json!("APIGroup");
            v["apiVersion"] = json!("v1");
            Ok(v)
        }
        ["api", v] | ["apis", _, v] => {
            let group = if segs[0] == "api" { "" } else { segs[1] };
            let defs: Vec<&Arc<ResourceDef>> = registry
                .all()
                .iter()
                .filter(|d| d.group == group && d.version == *v)
                .collect();
            if defs.is_empty() {
                return Err(ApiError::no_route());
            }
            let mut resources = vec![];
            for d in defs {
                resources.push(api_resource(d));
                if d.status_subresource {
                    resources.push(json!({"name": format!("{}/status", d.plural), "singularName": "", "namespaced": d.namespaced, "kind": d.kind, "verbs": ["get", "patch", "update"]}));
                }
                if d.scale.is_some() {
                    resources.push(json!({"name": format!("{}/scale", d.plural), "singularName": "", "namespaced": d.namespaced, "group": "autoscaling", "version": "v1", "kind": "Scale", "verbs": ["get", "patch", "update"]}));
                }
                resources.extend(crate::builtin::subresources(d));
            }
            let gv = if group.is_empty() {
                v.to_string()
            } else {
                format!("{group}/{v}")
            };
            Ok(
                json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
            )
        }
        ["openapi", "v2"] => Ok(crate::openapi::v2(registry.all(), state.api.features)),
        ["openapi", "v3"] => Ok(crate::openapi::v3_index(registry.all(), state.api.features)),
        ["openapi", "v3", rest @ ..] => {
            crate::openapi::v3_group_version(registry.all(), &rest.join("/"), state.api.features)
                .ok_or_else(ApiError::no_route)
        }
        _ => Err(ApiError::no_route()),
    }
}

/// How long connections may take before they make a request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnLimits {
    /// From the accepted connection (or the end of the TLS handshake) to the first request's
    /// complete headers (HTTP/1) or the client's connection preface (HTTP/2); and for every
    /// later HTTP/1 request's headers.
    pub header_read_timeout: Duration,
    /// For the TLS handshake.
    pub tls_handshake_timeout: Duration,
}

/// The bounds of every numeric [`crate::Config`] value: beyond them a duration overflows an
/// `Instant`, a channel capacity panics or a buffer cannot be allocated.
pub(crate) const MAX_HISTORY_WINDOW: usize = 10_000_000;
pub(crate) const MAX_WATCH_BUFFER: usize = 1_000_000;
pub(crate) const MAX_BODY_BYTES: usize = 1 << 30;
pub(crate) const MAX_INTERVAL: Duration = Duration::from_secs(86_400);

/// Check the numeric values of a configuration: `Err` names the first bad one and its range.
pub(crate) fn check_config(c: &crate::Config) -> Result<(), String> {
    fn count(name: &str, v: usize, max: usize) -> Result<(), String> {
        if (1..=max).contains(&v) {
            Ok(())
        } else {
            Err(format!("{name} is {v}: it must be between 1 and {max}"))
        }
    }
    fn interval(name: &str, v: Duration) -> Result<(), String> {
        if v >= Duration::from_millis(1) && v <= MAX_INTERVAL {
            Ok(())
        } else {
            Err(format!(
                "{name} is {v:?}: it must be between 1ms and {}s",
                MAX_INTERVAL.as_secs()
            ))
        }
    }
    count("history_window", c.history_window, MAX_HISTORY_WINDOW)?;
    count("watch_buffer", c.watch_buffer, MAX_WATCH_BUFFER)?;
    for (name, v) in [
        ("history_bytes", c.history_bytes),
        ("watch_buffer_bytes", c.watch_buffer_bytes),
    ] {
        if v == 0 {
            return Err(format!("{name} is 0: it must be at least 1"));
        }
    }
    count("max_body_bytes", c.max_body_bytes, MAX_BODY_BYTES)?;
    interval("bookmark_interval", c.bookmark_interval)?;
    interval("header_read_timeout", c.header_read_timeout)?;
    interval("tls_handshake_timeout", c.tls_handshake_timeout)?;
    Ok(())
}

/// Go's `http.Server` accept backoff: 5 ms after the first failure, doubling up to 1 s, reset
/// by a successful accept.
#[derive(Debug, Default)]
pub(crate) struct AcceptBackoff {
    delay: Option<Duration>,
}

impl AcceptBackoff {
    const FIRST: Duration = Duration::from_millis(5);
    const MAX: Duration = Duration::from_secs(1);

    /// The delay before the next accept after a failure.
    pub fn failed(&mut self) -> Duration {
        let next = match self.delay {
            None => Self::FIRST,
            Some(d) => (d * 2).min(Self::MAX),
        };
        self.delay = Some(next);
        next
    }

    /// An accept succeeded.
    pub fn succeeded(&mut self) {
        self.delay = None;
    }
}

/// At most one accept-failure log line per this interval (the others are counted).
pub(crate) const ACCEPT_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Rate-limits a repeating log line: `Some(suppressed since the last line)` when it is time
/// to log again.
#[derive(Debug, Default)]
pub(crate) struct LogLimiter {
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimiter {
    pub fn check(&mut self, now: Instant, every: Duration) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < every => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// An I/O stream whose reads fail with `TimedOut` once a deadline passes, until the server
/// first writes to it (an answer, or HTTP/2 settings after the client's preface): hyper's
/// HTTP/1 header timeout does not cover the wait for the first byte while the protocol is
/// being detected, nor HTTP/2.
struct FirstRequestDeadline<S> {
    inner: S,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> FirstRequestDeadline<S> {
    fn new(inner: S, timeout: Duration) -> Self {
        FirstRequestDeadline {
            inner,
            deadline: Some(Box::pin(tokio::time::sleep(timeout))),
        }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for FirstRequestDeadline<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if let Some(d) = self.deadline.as_mut()
            && d.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no request within the header read timeout",
            )));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for FirstRequestDeadline<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.deadline = None;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.deadline = None;
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Serve connections from `listener` until `stop`, over TLS when `tls` is given.
/// HTTP/2 streams per connection, as the real server's default.
const H2_MAX_STREAMS: u32 = 100;
/// HTTP/2 frame size and per-stream upload buffer: the real server's `resourceBody99Percentile`.
const H2_BUFFER: u32 = 256 * 1024;

pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    router: axum::Router,
    stop: CancellationToken,
    limits: ConnLimits,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::service::TowerToHyperService;

    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let mut backoff = AcceptBackoff::default();
    let mut log_limit = LogLimiter::default();
    loop {
        let (tcp, _) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => {
                    backoff.succeeded();
                    a
                }
                Err(e) => {
                    // Out of file descriptors (or another transient failure): wait before
                    // trying again instead of spinning, and keep the log quiet.
                    let delay = backoff.failed();
                    if let Some(suppressed) = log_limit.check(Instant::now(), ACCEPT_LOG_INTERVAL) {
                        tracing::warn!(error = %e, retry_in = ?delay, suppressed, "accept failed");
                    }
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let acceptor = acceptor.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut builder = Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout);
            // HTTP/2 as the real server configures it (secure_serving.go): at most 100
            // concurrent streams per connection (a client opening more waits), 256 KiB frames
            // and per-stream upload buffers, a 1 MiB header list; without these, one
            // connection could hold unbounded streams and buffers.
            builder
                .http2()
                .timer(TokioTimer::new())
                .max_concurrent_streams(H2_MAX_STREAMS)
                .max_frame_size(H2_BUFFER)
                .initial_stream_window_size(H2_BUFFER)
                .initial_connection_window_size(H2_BUFFER * H2_MAX_STREAMS)
                .max_header_list_size(1 << 20);
            let result = match acceptor {
                Some(acceptor) => {
                    let handshake = tokio::time::timeout(limits.tls_handshake_timeout, acceptor.accept(tcp));
                    let stream = tokio::select! {
                        r = handshake => r,
                        _ = stop.cancelled() => return,
                    };
                    match stream {
                        Ok(Ok(stream)) => {
                            let io = FirstRequestDeadline::new(stream, limits.header_read_timeout);
                            let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
                            tokio::select! { r = conn => r, _ = stop.cancelled() => Ok(()) }
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!("TLS handshake timed out");
                            return;
                        }
                    }
                }
                None => {
                    let io = FirstRequestDeadline::new(tcp, limits.header_read_timeout);
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
                    tokio::select! { r = conn => r, _ = stop.cancelled() => Ok(()) }
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_parse_like_the_real_server() {
        let p = |s: &str| parse_resource_path(&s.split('/').filter(|x| !x.is_empty()).collect::<Vec<_>>());
        assert_eq!(p("/api/v1/namespaces/default").unwrap().name, "default");
        assert_eq!(p("/api/v1/namespaces/default/status").unwrap().sub, "status");
        let cm = p("/api/v1/namespaces/ns/configmaps/x").unwrap();
        assert_eq!(
            (cm.namespace.as_str(), cm.resource.as_str(), cm.name.as_str()),
            ("ns", "configmaps", "x")
        );
        let db = p("/apis/stable.example.com/v1/watch/namespaces/ns/databases").unwrap();
        assert!(db.legacy_watch);
        assert_eq!(db.group, "stable.example.com");
        assert_eq!(
            p("/apis/stable.example.com/v1/namespaces/ns/databases/x/status")
                .unwrap()
                .sub,
            "status"
        );
        assert!(p("/apis/stable.example.com/v1").is_none());
    }

    #[test]
    fn accept_backoff_doubles_from_5ms_to_1s_and_resets() {
        let mut b = AcceptBackoff::default();
        let delays: Vec<u128> = (0..10).map(|_| b.failed().as_millis()).collect();
        assert_eq!(delays, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        b.succeeded();
        assert_eq!(b.failed(), Duration::from_millis(5));
    }

    #[test]
    fn repeated_log_lines_are_limited_and_counted() {
        let mut l = LogLimiter::default();
        let t0 = Instant::now();
        let every = Duration::from_secs(10);
        assert_eq!(l.check(t0, every), Some(0));
        let logged = (1..=1000)
            .filter(|i| l.check(t0 + Duration::from_millis(*i), every).is_some())
            .count();
        assert_eq!(logged, 0);
        assert_eq!(l.check(t0 + every, every), Some(1000));
    }

    #[test]
    fn paths_are_percent_decoded_like_go() {
        assert_eq!(
            percent_decode_path("/api/v1/namespaces/d%65fault").unwrap(),
            "/api/v1/namespaces/default"
        );
        assert_eq!(percent_decode_path("/a%2Fb").unwrap(), "/a/b");
        assert!(percent_decode_path("/a%zz").is_none());
        assert!(percent_decode_path("/a%4").is_none());
    }

    #[test]
    fn query_strings_decode() {
        let q = url_pairs("labelSelector=app%3Dweb%2Ctier+in+%28a%2Cb%29&watch=1");
        assert_eq!(q["labelSelector"], "app=web,tier in (a,b)");
        assert_eq!(q["watch"], "1");
    }
}
