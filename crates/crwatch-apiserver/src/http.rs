//! HTTP: authentication, fault injection, URL routing to discovery, OpenAPI and resource
//! verbs, content negotiation (JSON or Table), Warning headers, and the serving loop for
//! plain HTTP and HTTPS with HTTP/1.1 and HTTP/2.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

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
    pub token: Option<String>,
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
    let path = parts.uri.path().trim_end_matches('/').to_string();
    let query: HashMap<String, String> = parts.uri.query().map(url_pairs).unwrap_or_default();
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let rp = parse_resource_path(&segs);
    let watch_param = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
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
        },
        None => RequestRecord {
            verb: parts.method.as_str().to_ascii_lowercase(),
            resource: String::new(),
            group: String::new(),
            namespace: String::new(),
            name: String::new(),
            path: path.clone(),
        },
    };
    // Authentication first: a bad token is 401 everywhere, no token is anonymous and may only
    // read the public endpoints, as with the real server's default RBAC.
    let public = matches!(
        segs.as_slice(),
        ["version"] | ["healthz", ..] | ["livez", ..] | ["readyz", ..]
    );
    if let Some(token) = &state.token {
        let given = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match given {
            Some(t) if t.trim() == token => {}
            None if public => {}
            None => {
                return error_response(&ApiError::forbidden(format!(
                    "forbidden: User \"system:anonymous\" cannot {} path \"{path}\"",
                    parts.method.as_str().to_ascii_lowercase()
                )));
            }
            Some(_) => return error_response(&ApiError::unauthorized()),
        }
    }
    if let Err(e) = state.api.faults.on_request(record).await {
        return error_response(&e);
    }
    let body = match http_body_util::Limited::new(body, state.max_body).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return error_response(&ApiError::new(
                413,
                "RequestEntityTooLarge",
                "Request entity too large",
            ));
        }
    };
    let user_agent = parts
        .headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
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
            match resource_request(
                &state,
                &parts.method,
                p,
                params,
                user_agent,
                &content_type,
                view,
                &body,
            )
            .await
            {
                Ok(resp) => resp,
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

fn url_pairs(q: &str) -> HashMap<String, String> {
    form_urlencoded::parse(q.as_bytes()).into_owned().collect()
}

#[allow(clippy::too_many_arguments)]
async fn resource_request(
    state: &Arc<AppState>,
    method: &Method,
    p: ResourcePath,
    params: Params,
    user_agent: String,
    content_type: &str,
    view: View,
    body: &Bytes,
) -> ApiResult<Response> {
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
        user: "admin".into(),
    };
    let verb = verb_of(method, &p, watch_param);
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
        converted =
            Bytes::from(serde_json::to_vec(&crate::protobuf::decode(body)?).map_err(ApiError::internal)?);
        &converted
    } else {
        body
    };
    let out = match verb {
        "watch" => {
            let full = ctx.params.get("includeObject") == Some("Object");
            // A resourceVersion the server has not reached: the real server's watch cache
            // waits up to 3 s for it, then answers 200 with an ERROR event (504 "Too large
            // resource version"), so a client resuming against a server that lost its
            // history finds out instead of waiting for the counter to catch up.
            if let Some(from) = ctx
                .params
                .get("resourceVersion")
                .and_then(|rv| rv.parse::<u64>().ok())
                .filter(|rv| *rv > 0)
                && ctx.params.get("sendInitialEvents") != Some("true")
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
        "get" => Out {
            code: 200,
            body: state.api.get(&ctx)?,
            warnings: vec![],
        },
        "list" => Out {
            code: 200,
            body: state.api.list(&ctx).await?,
            warnings: vec![],
        },
        "create" => state.api.create(&ctx, body).await?,
        "update" => state.api.update(&ctx, body).await?,
        "patch" => state.api.patch(&ctx, content_type, body).await?,
        "delete" => state.api.delete(&ctx, body).await?,
        "deletecollection" => state.api.delete_collection(&ctx, body).await?,
        _ => return Err(ApiError::method_not_allowed()),
    };
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
        let mut t = crate::table::to_table(&def, &refs, meta, true);
        if full && let Some(rows) = t["rows"].as_array_mut() {
            for (row, item) in rows.iter_mut().zip(items.iter()) {
                row["object"] = item.clone();
            }
        }
        return Ok(json_response(200, &t, &out.warnings));
    }
    Ok(json_response(out.code, &out.body, &out.warnings))
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
        ["openapi", "v2"] => Ok(crate::openapi::v2(registry.all())),
        ["openapi", "v3"] => Ok(crate::openapi::v3_index(registry.all())),
        ["openapi", "v3", rest @ ..] => {
            crate::openapi::v3_group_version(registry.all(), &rest.join("/")).ok_or_else(ApiError::no_route)
        }
        _ => Err(ApiError::no_route()),
    }
}

/// Serve connections from `listener` until `stop`, over TLS when `tls` is given.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    router: axum::Router,
    stop: CancellationToken,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::service::TowerToHyperService;

    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    loop {
        let (tcp, _) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let acceptor = acceptor.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let builder = Builder::new(TokioExecutor::new());
            let result = match acceptor {
                Some(acceptor) => match acceptor.accept(tcp).await {
                    Ok(stream) => {
                        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                        tokio::select! { r = conn => r, _ = stop.cancelled() => Ok(()) }
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "TLS handshake failed");
                        return;
                    }
                },
                None => {
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tcp), service);
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
    fn query_strings_decode() {
        let q = url_pairs("labelSelector=app%3Dweb%2Ctier+in+%28a%2Cb%29&watch=1");
        assert_eq!(q["labelSelector"], "app=web,tier in (a,b)");
        assert_eq!(q["watch"], "1");
    }
}
