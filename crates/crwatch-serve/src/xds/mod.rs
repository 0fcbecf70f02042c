//! The xDS server behind `crwatch serve`: Envoy's `AggregatedDiscoveryService` (state of the
//! world and delta) over the objects of crwatch informers, as Istio's MCP-over-xDS resources.
//!
//! - [`cache`]: one versioned snapshot per type URL, published by an informer handler (a list
//!   is one version);
//! - [`subscription`]: the per-stream, per-type protocol state machines (ACK/NACK, nonces,
//!   wildcard, subscribe/unsubscribe, reconnect);
//! - [`stream`]: one subscriber stream, with back-pressure and coalescing;
//! - [`report`]: NACK/ACK as an `Accepted` condition on the objects' status;
//! - [`metrics`]: Prometheus figures per subscriber.
//!
//! ```no_run
//! # async fn demo(client: kube::Client) -> anyhow::Result<()> {
//! use crwatch::informer::Informer;
//! use crwatch::source::kube::KubeSource;
//! use crwatch_serve::xds::{XdsServer, ServerOptions};
//! use kube::api::DynamicObject;
//! use kube::discovery::ApiResource;
//!
//! let ar = ApiResource::erase::<k8s_openapi::api::core::v1::ConfigMap>(&());
//! let informer = Informer::new(KubeSource::<DynamicObject>::dynamic(client, &ar, Some("default")));
//! let server = XdsServer::new(ServerOptions::default());
//! server.serve_informer(&informer, &ar.api_version, &ar.kind); // type URL core/v1/ConfigMap
//! let cancel = tokio_util::sync::CancellationToken::new();
//! informer.start(cancel.clone());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:18000").await?;
//! server.serve(listener, None, cancel).await?;
//! # Ok(()) }
//! ```

pub mod cache;
pub mod metrics;
pub mod report;
pub mod stream;
pub mod subscription;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::slots::{Slot, Slots};
use crwatch::informer::Informer;
use crwatch::xds::discovery::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use crwatch::xds::discovery::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use kube::api::DynamicObject;
use subtle::ConstantTimeEq;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

pub use cache::{Cache, TypeCache, TypeSnapshot};
pub use metrics::{MetricsRegistry, XdsMetrics};
pub use report::{ReportTarget, Reporter};
pub use subscription::Limits;

/// Settings of an [`XdsServer`].
#[derive(Clone, Default)]
pub struct ServerOptions {
    /// Response size and subscription limits.
    pub limits: Limits,
    /// A bearer token every stream must present (`authorization: Bearer <token>`), compared
    /// in constant time. Never logged.
    pub token: Option<Arc<str>>,
    /// Where the metrics go (a fresh registry by default).
    pub metrics: Option<MetricsRegistry>,
}

/// What every stream shares.
pub struct Shared {
    /// The served snapshots.
    pub cache: Cache,
    /// Limits.
    pub limits: Limits,
    /// Metrics.
    pub metrics: XdsMetrics,
    /// NACK/ACK reporting (when on).
    pub reporter: Option<Reporter>,
    /// Server shutdown.
    pub cancel: CancellationToken,
}

/// The xDS server: a [`Cache`] fed by informers, served over gRPC.
pub struct XdsServer {
    cache: Cache,
    options: ServerOptions,
    registry: MetricsRegistry,
    reporter: Option<Reporter>,
}

/// The server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The gRPC transport failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// TLS for the listener: the server's certificate and key (PEM), and for mTLS the CA whose
/// client certificates are required.
#[derive(Clone)]
pub struct TlsFiles {
    /// Certificate chain, PEM.
    pub cert_pem: Vec<u8>,
    /// Private key, PEM.
    pub key_pem: Vec<u8>,
    /// CA bundle for client certificates, PEM (mTLS when set).
    pub client_ca_pem: Option<Vec<u8>>,
}

impl XdsServer {
    /// A server with nothing served yet.
    pub fn new(options: ServerOptions) -> Self {
        let registry = options.metrics.clone().unwrap_or_default();
        XdsServer {
            cache: Cache::default(),
            options,
            registry,
            reporter: None,
        }
    }

    /// The snapshots served.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// The metrics registry (Prometheus text through [`MetricsRegistry::encode`]).
    pub fn metrics(&self) -> &MetricsRegistry {
        &self.registry
    }

    /// Serve the objects of `informer` (of `api_version`/`kind`) under the type URL
    /// `<group>/<version>/<Kind>`; returns the type's cache. Call before starting the
    /// informer, so its first list is published as one version.
    pub fn serve_informer(
        &self,
        informer: &Informer<DynamicObject>,
        api_version: &str,
        kind: &str,
    ) -> TypeCache {
        let type_url = crwatch::xds::type_url(api_version, kind);
        let tc = self.cache.type_cache(&type_url);
        informer.add_async_handler(cache::Publisher::new(tc.clone(), api_version, kind));
        let metrics = self.registry.xds.clone();
        let label = metrics::TypeLabel {
            type_url: type_url.clone(),
        };
        let mut rx = self.cache.subscribe();
        let watched = tc.clone();
        tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                if let Some(s) = watched.current() {
                    metrics
                        .snapshot_version
                        .get_or_create(&label)
                        .set(s.version as i64);
                    metrics
                        .snapshot_resources
                        .get_or_create(&label)
                        .set(s.entries.len() as i64);
                }
            }
        });
        tc
    }

    /// Serve the objects of `informer` each under the type URL of its own `apiVersion` and
    /// `kind` (a source of several kinds, like a directory of documents); objects without
    /// them are not served.
    pub fn serve_informer_by_kind(&self, informer: &Informer<DynamicObject>) {
        informer.add_async_handler(cache::Publisher::routed(self.cache.clone()));
    }

    /// Report NACKs and ACKs as `Accepted` conditions on the objects of `targets` (type URL →
    /// resource type), written through `client`.
    pub fn report_to(
        &mut self,
        client: kube::Client,
        targets: std::collections::HashMap<String, ReportTarget>,
        cancel: CancellationToken,
    ) {
        self.reporter = Some(Reporter::spawn(
            client,
            targets,
            self.cache.clone(),
            self.registry.xds.clone(),
            cancel,
        ));
    }

    /// The tonic service (with the token check when a token is set), for embedding in a
    /// server of your own.
    pub fn service(
        &self,
        cancel: CancellationToken,
    ) -> tonic::service::interceptor::InterceptedService<
        AggregatedDiscoveryServiceServer<AdsService>,
        TokenCheck,
    > {
        let svc = AdsService {
            shared: Arc::new(Shared {
                cache: self.cache.clone(),
                limits: self.options.limits,
                metrics: self.registry.xds.clone(),
                reporter: self.reporter.clone(),
                cancel,
            }),
            streams: Arc::new(AtomicU64::new(0)),
            live: Slots::default(),
        };
        let svc = AggregatedDiscoveryServiceServer::new(svc)
            .max_decoding_message_size(4 * 1024 * 1024)
            .max_encoding_message_size(usize::MAX);
        tonic::service::interceptor::InterceptedService::new(
            svc,
            TokenCheck {
                token: self.options.token.clone(),
            },
        )
    }

    /// Serve on `listener` (with `tls` when given) until `cancel` fires; streams end then.
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        tls: Option<TlsFiles>,
        cancel: CancellationToken,
    ) -> Result<(), ServeError> {
        let mut builder = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)));
        if let Some(tls) = tls {
            let mut config = tonic::transport::ServerTlsConfig::new()
                .identity(tonic::transport::Identity::from_pem(tls.cert_pem, tls.key_pem));
            if let Some(ca) = tls.client_ca_pem {
                config = config.client_ca_root(tonic::transport::Certificate::from_pem(ca));
            }
            builder = builder.tls_config(config)?;
        }
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let svc = self.service(cancel.clone());
        builder
            .add_service(svc)
            .serve_with_incoming_shutdown(incoming, cancel.cancelled_owned())
            .await?;
        Ok(())
    }

    /// Serve `/metrics` (Prometheus text) on `addr` until `cancel` fires.
    pub async fn serve_metrics(
        &self,
        listener: tokio::net::TcpListener,
        cancel: CancellationToken,
    ) -> std::io::Result<()> {
        let registry = self.registry.clone();
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let registry = registry.clone();
                async move {
                    (
                        [(
                            http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        registry.encode(),
                    )
                }
            }),
        );
        axum::serve(listener, app)
            .with_graceful_shutdown(cancel.cancelled_owned())
            .await
    }
}

/// Checks `authorization: Bearer <token>` in constant time when a token is set.
#[derive(Clone)]
pub struct TokenCheck {
    token: Option<Arc<str>>,
}

impl tonic::service::Interceptor for TokenCheck {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let Some(token) = &self.token else {
            return Ok(req);
        };
        let given = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        if bool::from(given.as_bytes().ct_eq(token.as_bytes())) && !given.is_empty() {
            Ok(req)
        } else {
            Err(Status::unauthenticated(
                "missing or wrong bearer token (send the metadata `authorization: Bearer <token>`)",
            ))
        }
    }
}

/// The `AggregatedDiscoveryService` implementation.
pub struct AdsService {
    shared: Arc<Shared>,
    streams: Arc<AtomicU64>,
    /// Streams being served now (at most `limits.max_streams`).
    live: Slots,
}

/// A place among `max_streams`, or the status that refuses the stream.
fn stream_slot(live: &Slots, max: usize) -> Result<Slot, Status> {
    live.take(max).ok_or_else(|| {
        tracing::warn!(max, "refusing an xDS stream: the server serves {max} already");
        Status::resource_exhausted(format!(
            "this crwatch serve already serves {max} streams (--max-subscribers); retry later or connect to a replica"
        ))
    })
}

fn peer_of<T>(req: &Request<T>) -> String {
    req.remote_addr()
        .map(|a: SocketAddr| a.to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// Outgoing responses buffered per stream, beyond the one being written.
const OUTBOUND: usize = 1;

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsService {
    type StreamAggregatedResourcesStream = ReceiverStream<Result<DiscoveryResponse, Status>>;
    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let peer = peer_of(&request);
        let (tx, rx) = mpsc::channel(OUTBOUND);
        let slot = stream_slot(&self.live, self.shared.limits.max_streams)?;
        let n = self.streams.fetch_add(1, Ordering::Relaxed);
        let run = stream::run::<stream::Sotw>(self.shared.clone(), request.into_inner(), tx, peer, n);
        tokio::spawn(async move {
            run.await;
            drop(slot);
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let peer = peer_of(&request);
        let (tx, rx) = mpsc::channel(OUTBOUND);
        let slot = stream_slot(&self.live, self.shared.limits.max_streams)?;
        let n = self.streams.fetch_add(1, Ordering::Relaxed);
        let run = stream::run::<stream::Delta>(self.shared.clone(), request.into_inner(), tx, peer, n);
        tokio::spawn(async move {
            run.await;
            drop(slot);
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
