//! One MCP session of `crwatch mcp` (an rmcp [`ServerHandler`]): the protocol revisions, the
//! resources (list with pagination, templates, read), the change notifications of both
//! revisions, and the tools.
//!
//! - 2026-07-28: `server/discover`, per-request `_meta`, and `subscriptions/listen`: the
//!   acknowledgment names the honoured subset (only URIs of watched objects), then
//!   `notifications/resources/updated` and `notifications/resources/list_changed` on the
//!   listen stream, until the client cancels it or the server stops (a graceful result).
//! - 2025-11-25: `initialize`, then `resources/subscribe` / `resources/unsubscribe`,
//!   `notifications/resources/updated` for subscribed URIs and
//!   `notifications/resources/list_changed` for every initialized session.
//!
//! rmcp negotiates the revision exactly as the official SDKs do (the Python SDK probes
//! `server/discover` first and falls back to `initialize`). Both notification paths read the
//! hub's bounded event ring (see [`super::hub`] for what happens to a slow session).

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rmcp::model::{
    CacheScope, CallToolRequestParams, CallToolResponse, Implementation, ListResourceTemplatesResult,
    ListResourcesResult, ListToolsResult, PaginatedRequestParams, ProtocolVersion, ReadResourceRequestParams,
    ReadResourceResponse, ReadResourceResult, Resource, ResourceContents, ResourceTemplate,
    ServerCapabilities, ServerConfig, SubscribeRequestParams, SubscriptionFilter, UnsubscribeRequestParams,
};
use rmcp::service::{NotificationContext, Peer, RequestContext, RoleServer, SubscriptionContext};
use rmcp::{ErrorData as McpError, ServerHandler};
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};

use super::hub::{Hub, HubEvent, ReadError, page};
use super::uri::{CLUSTER_TEMPLATE, NAMESPACED_TEMPLATE, ObjectUri};

/// The protocol revisions served: the current one (2026-07-28) and the previous one
/// (2025-11-25), both tested with the official Python SDK, and the older handshake revisions
/// (2024-11-05 to 2025-06-18) that desktop clients may still offer at `initialize`; their
/// resources, subscriptions and tools are those of 2025-11-25.
pub const PROTOCOL_VERSIONS: &[ProtocolVersion] = ProtocolVersion::KNOWN_VERSIONS;

/// How often a 2025-11-25 session's notification task checks that its client is still there.
const CLOSED_CHECK: std::time::Duration = std::time::Duration::from_secs(30);

/// Legacy (2025-11-25) subscriptions of one session.
#[derive(Debug, Default)]
struct Legacy {
    uris: Mutex<HashSet<String>>,
    forwarding: AtomicBool,
}

/// One session's handler; the HTTP transport makes one per session, stdio has one.
#[derive(Debug, Clone)]
pub struct Session {
    hub: Arc<Hub>,
    legacy: Arc<Legacy>,
    /// Over HTTP: this session's place among the live ones (freed when the last clone goes).
    _slot: Option<Arc<crate::slots::Slot>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What one wake-up of a notification loop has to send: events are level triggers, so a
/// burst is coalesced (each URI once, one list change).
#[derive(Debug, Default)]
struct Pending {
    list_changed: bool,
    updated: BTreeSet<String>,
    /// Fell behind the ring: everything subscribed may have changed.
    lagged: bool,
}

/// Wait for at least one event, then take every event already queued. `None`: the hub is
/// gone.
async fn next_batch(rx: &mut broadcast::Receiver<HubEvent>) -> Option<Pending> {
    let mut p = Pending::default();
    let add = |p: &mut Pending, e: HubEvent| match e {
        HubEvent::ListChanged => p.list_changed = true,
        HubEvent::Updated(u) => {
            p.updated.insert(u);
        }
    };
    match rx.recv().await {
        Ok(e) => add(&mut p, e),
        Err(RecvError::Lagged(_)) => p.lagged = true,
        Err(RecvError::Closed) => return None,
    }
    // Bounded by the ring's capacity.
    loop {
        match rx.try_recv() {
            Ok(e) => add(&mut p, e),
            Err(TryRecvError::Lagged(_)) => p.lagged = true,
            Err(TryRecvError::Empty) => return Some(p),
            Err(TryRecvError::Closed) => return Some(p),
        }
    }
}

impl Session {
    /// A session over `hub`.
    pub fn new(hub: Arc<Hub>) -> Self {
        Session {
            hub,
            legacy: Arc::default(),
            _slot: None,
        }
    }

    /// A session counted among the live HTTP sessions while it (or a clone) exists.
    pub(crate) fn with_slot(mut self, slot: crate::slots::Slot) -> Self {
        self._slot = Some(Arc::new(slot));
        self
    }

    /// The 2025-11-25 notifications of this session, until the client goes or the hub stops.
    fn start_legacy_notifications(&self, peer: Peer<RoleServer>) {
        if self.legacy.forwarding.swap(true, Ordering::SeqCst) {
            return;
        }
        let mut rx = self.hub.subscribe();
        let stop = self.hub.stopping();
        let legacy = self.legacy.clone();
        tokio::spawn(async move {
            // A session that went quietly (HTTP) is noticed here, not only at the next send.
            let mut check = tokio::time::interval(CLOSED_CHECK);
            loop {
                let batch = tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = check.tick() => {
                        if peer.is_transport_closed() {
                            return;
                        }
                        continue;
                    }
                    b = next_batch(&mut rx) => b,
                };
                let Some(p) = batch else { return };
                let subscribed = lock(&legacy.uris).clone();
                let updated: Vec<String> = if p.lagged {
                    subscribed.into_iter().collect()
                } else {
                    p.updated.into_iter().filter(|u| subscribed.contains(u)).collect()
                };
                let mut sent = Ok(());
                if p.list_changed || p.lagged {
                    sent = peer.notify_resource_list_changed().await;
                }
                for uri in updated {
                    if sent.is_err() {
                        break;
                    }
                    sent = peer
                        .notify_resource_updated(rmcp::model::ResourceUpdatedNotificationParam::new(uri))
                        .await;
                }
                if sent.is_err() || peer.is_transport_closed() {
                    tracing::debug!("MCP session closed: its notifications stop");
                    return;
                }
            }
        });
    }

    /// Whether `uri` can be subscribed to (an object of a watched resource).
    fn subscribable(&self, uri: &str) -> Result<(), McpError> {
        let parsed: ObjectUri = uri
            .parse()
            .map_err(|e: super::uri::UriError| McpError::invalid_params(e.to_string(), None))?;
        if self.hub.is_watched(&parsed) {
            Ok(())
        } else {
            Err(McpError::invalid_params(
                format!(
                    "{uri} is not an object of a watched resource, so it has no change notifications: \
                     start crwatch mcp with -r for its resource (watched: {})",
                    self.watched()
                ),
                None,
            ))
        }
    }

    fn watched(&self) -> String {
        match self.hub.watched_names() {
            w if w.is_empty() => "none".into(),
            w => w.join(", "),
        }
    }
}

fn resource_of(uri: &ObjectUri) -> Resource {
    let name = match &uri.namespace {
        Some(ns) => format!("{ns}/{}", uri.name),
        None => uri.name.clone(),
    };
    Resource::new(uri.to_string(), name.clone())
        .with_title(format!("{} {name}", uri.kind))
        .with_mime_type("application/json")
}

impl ServerHandler for Session {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_resources()
                .enable_resources_subscribe()
                .enable_resources_list_changed()
                .enable_tools()
                .build(),
        )
        .with_server_info(Implementation::new("crwatch-mcp", env!("CARGO_PKG_VERSION")))
        .with_protocol_version(ProtocolVersion::V_2025_11_25)
        .with_instructions(format!(
            "Kubernetes objects as resources ({NAMESPACED_TEMPLATE}, {CLUSTER_TEMPLATE}). Watched resources \
             (listed, subscribable, with history for the diff tool): {}. Any other object can be read by URI \
             or with the get, list, describe and wait tools. Secret values are never returned, only their keys.",
            self.watched()
        ))
    }

    fn supported_protocol_versions(&self) -> std::borrow::Cow<'static, [ProtocolVersion]> {
        std::borrow::Cow::Borrowed(PROTOCOL_VERSIONS)
    }

    async fn on_initialized(&self, context: NotificationContext<RoleServer>) {
        self.start_legacy_notifications(context.peer);
    }

    async fn list_resources(
        &self,
        request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        let cursor = request.and_then(|r| r.cursor);
        let all = self.hub.watched_uris();
        let keys: Vec<String> = all.iter().map(|(u, _)| u.to_string()).collect();
        let (items, next) = page(
            &keys,
            Clone::clone,
            cursor.as_deref(),
            self.hub.config().page_size,
        );
        let resources = items
            .into_iter()
            .filter_map(|k| k.parse::<ObjectUri>().ok())
            .map(|u| resource_of(&u))
            .collect();
        let mut result = ListResourcesResult::with_all_items(resources)
            .with_ttl_ms(0)
            .with_cache_scope(CacheScope::Private);
        result.next_cursor = next;
        Ok(result)
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, McpError> {
        Ok(ListResourceTemplatesResult::with_all_items(vec![
            ResourceTemplate::new(NAMESPACED_TEMPLATE, "namespaced-object")
                .with_title("A namespaced Kubernetes object")
                .with_description("Group `core` for the core API group, e.g. k8s://apps/v1/Deployment/namespaces/default/web")
                .with_mime_type("application/json"),
            ResourceTemplate::new(CLUSTER_TEMPLATE, "cluster-object")
                .with_title("A cluster-scoped Kubernetes object")
                .with_description("e.g. k8s://core/v1/Namespace/default")
                .with_mime_type("application/json"),
        ])
        .with_ttl_ms(0)
        .with_cache_scope(CacheScope::Private))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        let uri: ObjectUri = request
            .uri
            .parse()
            .map_err(|e: super::uri::UriError| McpError::invalid_params(e.to_string(), None))?;
        match self.hub.read(&uri).await {
            Ok(Some(object)) => {
                let text = serde_json::to_string_pretty(&object)
                    .map_err(|e| McpError::internal_error(format!("encoding {uri}: {e}"), None))?;
                let mut result = ReadResourceResult::new(vec![
                    ResourceContents::text(text, request.uri.clone()).with_mime_type("application/json"),
                ]);
                result.ttl_ms = Some(0);
                result.cache_scope = Some(CacheScope::Private);
                Ok(result.into())
            }
            Ok(None) => Err(McpError::resource_not_found(
                format!("{uri} not found"),
                Some(serde_json::json!({"uri": request.uri})),
            )),
            Err(ReadError::Type(e)) => Err(McpError::invalid_params(e.to_string(), None)),
            Err(e) => Err(McpError::internal_error(e.to_string(), None)),
        }
    }

    fn accepted_subscription_filter(&self, requested: &SubscriptionFilter) -> Option<SubscriptionFilter> {
        let mut accepted = SubscriptionFilter::new();
        accepted.resources_list_changed = requested.resources_list_changed.filter(|b| *b);
        accepted.resource_subscriptions = requested.resource_subscriptions.as_ref().map(|uris| {
            uris.iter()
                .filter(|u| self.subscribable(u).is_ok())
                .cloned()
                .collect()
        });
        Some(accepted)
    }

    async fn listen(&self, context: SubscriptionContext) -> Result<(), McpError> {
        let accepted = context.accepted().clone();
        let uris: HashSet<String> = accepted
            .resource_subscriptions
            .unwrap_or_default()
            .into_iter()
            .collect();
        let list = accepted.resources_list_changed == Some(true);
        let mut rx = self.hub.subscribe();
        let stop = self.hub.stopping();
        loop {
            let batch = tokio::select! {
                _ = context.cancelled() => return Ok(()),
                _ = stop.cancelled() => return Ok(()),
                b = next_batch(&mut rx) => b,
            };
            let Some(p) = batch else { return Ok(()) };
            let sink = context.sink();
            let sent = async {
                if list && (p.list_changed || p.lagged) {
                    sink.notify_resource_list_changed().await?;
                }
                let updated: Vec<&String> = if p.lagged {
                    uris.iter().collect()
                } else {
                    p.updated.iter().filter(|u| uris.contains(*u)).collect()
                };
                for uri in updated {
                    sink.notify_resource_updated(uri.clone()).await?;
                }
                Ok::<(), rmcp::service::SubscriptionSendError>(())
            }
            .await;
            if let Err(e) = sent {
                tracing::debug!("listen stream ended: {e}");
                return Ok(());
            }
        }
    }

    #[allow(deprecated)]
    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        self.subscribable(&request.uri)?;
        lock(&self.legacy.uris).insert(request.uri);
        // A client that skipped notifications/initialized still gets its notifications.
        self.start_legacy_notifications(context.peer);
        Ok(())
    }

    #[allow(deprecated)]
    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        lock(&self.legacy.uris).remove(&request.uri);
        Ok(())
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        Ok(
            ListToolsResult::with_all_items(super::tools::tools(self.hub.config().allow_writes))
                .with_ttl_ms(0)
                .with_cache_scope(CacheScope::Private),
        )
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        match super::tools::call(&self.hub, &request.name, request.arguments).await {
            Some(result) => Ok(result.into()),
            None => Err(McpError::invalid_params(
                format!(
                    "no tool {:?}{}: tools/list has the tools",
                    request.name,
                    if matches!(&*request.name, "apply" | "patch") {
                        " (apply and patch need crwatch mcp --allow-writes)"
                    } else {
                        ""
                    }
                ),
                None,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bursts_are_coalesced_and_a_lagging_session_is_told() {
        let (tx, mut rx) = broadcast::channel(16);
        for _ in 0..3 {
            tx.send(HubEvent::Updated("k8s://core/v1/ConfigMap/namespaces/a/x".into()))
                .unwrap();
            tx.send(HubEvent::ListChanged).unwrap();
        }
        let p = next_batch(&mut rx).await.unwrap();
        assert_eq!(p.updated.len(), 1);
        assert!(p.list_changed && !p.lagged);
        // More than the ring holds while the session is not reading: the oldest are lost,
        // and the session learns it (it then re-announces everything it subscribed to).
        for i in 0..40 {
            tx.send(HubEvent::Updated(format!(
                "k8s://core/v1/ConfigMap/namespaces/a/x{i}"
            )))
            .unwrap();
        }
        let p = next_batch(&mut rx).await.unwrap();
        assert!(p.lagged);
        assert_eq!(p.updated.len(), 16, "at most the ring's capacity is held");
        drop(tx);
        assert!(next_batch(&mut rx).await.is_none());
    }
}
