//! OpenTelemetry traces from a watch event to its reconcile (feature `otel`): the exporter
//! set-up (OTLP/gRPC, configured by the standard `OTEL_*` variables), the bounded span queue in
//! front of it, and the helpers the informer, the workqueue, the controller and the client use
//! to make and link their spans.
//!
//! # The spans
//!
//! ```text
//! watch event  (informer: crwatch.informer, k8s.namespace.name, crwatch.object.name,
//! │             crwatch.event.type, crwatch.object.resource_version)
//! ├─ enqueue   (crwatch.controller, crwatch.queue.priority)
//! └─ reconcile (crwatch.controller, crwatch.object.*, crwatch.queue.time_ms, .retries,
//!    │          .backoff_ms, .priority, crwatch.reconcile.result, error.type)
//!    └─ PATCH  (http.request.method, url.path, http.response.status_code): one per API request
//! ```
//!
//! The reconcile span's parent is the watch event's span, carried through the workqueue with
//! the queued key ([`Cause`]): one per queued key. When several events are coalesced into one
//! queue item, the first is the parent and the others become span links (at most
//! [`MAX_LINKS`]). A failed reconcile requeues its key with the same parent, so its retry is in
//! the same trace with `crwatch.queue.retries` and `crwatch.queue.backoff_ms` set.
//!
//! # Cost
//!
//! Without the feature, [`enabled`] is a constant `false` and every helper is an empty inline
//! function: nothing is created or stored. With the feature but no endpoint configured
//! ([`init`] returns `None`), [`enabled`] stays `false`: no span is created either.
//!
//! # The exporter queue
//!
//! Finished spans go into a bounded queue ([`TraceConfig::max_queue_size`], default 2048 as
//! the spec's `OTEL_BSP_MAX_QUEUE_SIZE`) that a Tokio task drains in batches to the collector.
//! A full queue drops the span and counts it ([`stats`]): a slow or unreachable collector
//! never blocks or slows a reconcile, it only loses spans.

use std::time::Duration;

/// At most this many span links on one reconcile (further coalesced events are not linked).
pub const MAX_LINKS: usize = 32;

/// Counters of the exporter queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TraceStats {
    /// Spans handed to the exporter.
    pub exported: u64,
    /// Spans dropped because the queue was full.
    pub dropped: u64,
    /// Spans lost because an export failed (collector unreachable, timeout, rejection).
    pub failed: u64,
}

/// How to export spans; [`TraceConfig::from_env`] reads the standard variables.
#[derive(Debug, Clone)]
pub struct TraceConfig {
    /// The OTLP/gRPC endpoint (`http://collector:4317`); `None`: no exporter, no spans.
    pub endpoint: Option<String>,
    /// `service.name`, unless `OTEL_SERVICE_NAME` or `OTEL_RESOURCE_ATTRIBUTES` name one.
    pub service_name: String,
    /// Finished spans waiting for export; beyond this they are dropped (and counted).
    pub max_queue_size: usize,
    /// Spans per export request.
    pub max_export_batch_size: usize,
    /// How long finished spans may wait before a (partial) batch is sent.
    pub schedule_delay: Duration,
    /// How long one export may take before its spans are given up.
    pub export_timeout: Duration,
}

impl TraceConfig {
    /// From `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT` (unset or
    /// empty: no exporter) and the batch processor's `OTEL_BSP_MAX_QUEUE_SIZE`,
    /// `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`, `OTEL_BSP_SCHEDULE_DELAY` and
    /// `OTEL_BSP_EXPORT_TIMEOUT` (milliseconds), with the spec's defaults. `OTEL_SERVICE_NAME`,
    /// `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG` are read by
    /// the SDK itself. `service_name` is the default `service.name`.
    pub fn from_env(service_name: &str) -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let number =
            |name: &str, default: u64| var(name).and_then(|v| v.trim().parse().ok()).unwrap_or(default);
        TraceConfig {
            endpoint: var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                .or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT")),
            service_name: service_name.to_string(),
            max_queue_size: number("OTEL_BSP_MAX_QUEUE_SIZE", 2048).max(1) as usize,
            max_export_batch_size: number("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512).max(1) as usize,
            schedule_delay: Duration::from_millis(number("OTEL_BSP_SCHEDULE_DELAY", 5000)),
            export_timeout: Duration::from_millis(number("OTEL_BSP_EXPORT_TIMEOUT", 30_000)),
        }
    }
}

/// Why tracing could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("setting up the OTLP trace exporter for {endpoint}: {message}")]
pub struct TraceError {
    endpoint: String,
    message: String,
}

#[cfg(feature = "otel")]
pub use imp::*;

#[cfg(not(feature = "otel"))]
pub use noop::*;

/// The same API without the `otel` feature: nothing is created, stored or exported.
#[cfg(not(feature = "otel"))]
mod noop {
    use super::*;

    /// Always `false` without the `otel` feature.
    #[inline(always)]
    pub const fn enabled() -> bool {
        false
    }

    /// Always zero without the `otel` feature.
    pub fn stats() -> TraceStats {
        TraceStats::default()
    }

    /// What caused a queued key to be queued; empty without the `otel` feature.
    #[derive(Debug, Clone, Default)]
    pub struct Cause;

    impl Cause {
        /// Nothing to record.
        #[inline(always)]
        pub fn enqueue(_controller: &str, _key: &crate::store::ObjectKey, _priority: i32) -> Cause {
            Cause
        }
        #[inline(always)]
        pub(crate) fn merge(&mut self, _other: Cause) {}
        #[inline(always)]
        pub(crate) fn with_backoff(self, _backoff: Duration) -> Cause {
            self
        }
        #[inline(always)]
        pub(crate) fn adopt(&self, _span: &tracing::Span) {}
        #[inline(always)]
        pub(crate) fn of_span(_span: &tracing::Span) -> Cause {
            Cause
        }
    }

    /// No span without the `otel` feature.
    #[inline(always)]
    pub(crate) fn watch_event_span<K: kube::Resource>(_informer: &str, _obj: &K) -> tracing::Span {
        tracing::Span::none()
    }

    /// Nothing to link without the `otel` feature.
    #[derive(Debug, Clone)]
    pub struct Parent;

    impl Parent {
        /// Always `None` without the `otel` feature.
        pub fn of(_span: &tracing::Span) -> Option<Parent> {
            None
        }
        /// Nothing to do.
        pub fn adopt(&self, _span: &tracing::Span) {}
    }

    /// Always `None` without the `otel` feature.
    pub fn sampled_trace_id(_span: &tracing::Span) -> Option<String> {
        None
    }

    /// Always `None` without the `otel` feature.
    pub fn traceparent(_span: &tracing::Span) -> Option<(String, Option<String>)> {
        None
    }

    /// Without the `otel` feature tracing is never set up.
    #[derive(Debug)]
    pub struct TraceGuard;

    impl TraceGuard {
        /// Nothing to flush.
        pub async fn shutdown(self) {}
    }

    /// Without the `otel` feature: never an exporter (a configured endpoint is ignored with a
    /// warning).
    pub fn init(config: TraceConfig) -> Result<Option<TraceGuard>, TraceError> {
        if let Some(endpoint) = config.endpoint {
            tracing::warn!(%endpoint, "an OTLP endpoint is configured but crwatch was built without the otel feature; no traces");
        }
        Ok(None)
    }
}

#[cfg(feature = "otel")]
mod imp {
    use std::fmt;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    use opentelemetry::Context;
    use opentelemetry::trace::{SpanContext, TraceContextExt, TracerProvider as _};
    use opentelemetry_otlp::WithExportConfig;
    use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
    use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter, SpanProcessor};
    use tokio::sync::{mpsc, oneshot};
    use tokio::time::Instant;
    use tracing::Span;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    use super::*;

    static ENABLED: AtomicBool = AtomicBool::new(false);
    static EXPORTED: AtomicU64 = AtomicU64::new(0);
    static DROPPED: AtomicU64 = AtomicU64::new(0);
    static FAILED: AtomicU64 = AtomicU64::new(0);

    /// Whether an exporter is installed, so spans are worth making. The informer, queue and
    /// controller create no span at all while this is `false`.
    #[inline]
    pub fn enabled() -> bool {
        ENABLED.load(Ordering::Relaxed)
    }

    /// The exporter queue's counters since the process started.
    pub fn stats() -> TraceStats {
        TraceStats {
            exported: EXPORTED.load(Ordering::Relaxed),
            dropped: DROPPED.load(Ordering::Relaxed),
            failed: FAILED.load(Ordering::Relaxed),
        }
    }

    /// What caused a queued key to be queued: the span it is to be reconciled under, stored with
    /// the key in the workqueue (see the [module docs](super)).
    #[derive(Clone)]
    pub struct Cause {
        /// The first event's span: the reconcile span's parent.
        pub(super) parent: SpanContext,
        /// The other events coalesced into the same queue item (at most [`MAX_LINKS`]).
        pub(super) links: Vec<SpanContext>,
        /// When the first of them was queued.
        since: Instant,
        /// The rate limiter's delay, when this is a retry.
        backoff: Option<Duration>,
    }

    impl fmt::Debug for Cause {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("Cause")
                .field("trace_id", &self.parent.trace_id())
                .field("span_id", &self.parent.span_id())
                .field("links", &self.links.len())
                .finish()
        }
    }

    impl Cause {
        /// The cause of an enqueue happening now: the current span (the watch event being
        /// handled), or, outside any span, the `enqueue` span itself. Makes the `enqueue` span.
        pub fn enqueue(controller: &str, key: &crate::store::ObjectKey, priority: i32) -> Cause {
            let current = Span::current().context();
            let span = tracing::info_span!(
                "enqueue",
                "crwatch.controller" = controller,
                "k8s.namespace.name" = key.namespace.as_deref().unwrap_or(""),
                "crwatch.object.name" = %key.name,
                "crwatch.queue.priority" = priority,
            );
            let own = span.context();
            let parent = match current.span().span_context() {
                sc if sc.is_valid() => sc.clone(),
                _ => own.span().span_context().clone(),
            };
            Cause {
                parent,
                links: Vec::new(),
                since: Instant::now(),
                backoff: None,
            }
        }

        /// The requeue of a failed reconcile: same parent and links, retried after `backoff`.
        pub(crate) fn with_backoff(mut self, backoff: Duration) -> Cause {
            self.backoff = Some(backoff);
            self.since = Instant::now();
            self
        }

        /// `other` was queued while this one still waited: it becomes a link (bounded).
        pub(crate) fn merge(&mut self, other: Cause) {
            self.since = self.since.min(other.since);
            self.backoff = self.backoff.or(other.backoff);
            for sc in std::iter::once(other.parent).chain(other.links) {
                if self.links.len() >= MAX_LINKS {
                    break;
                }
                if sc != self.parent && !self.links.contains(&sc) {
                    self.links.push(sc);
                }
            }
        }

        /// Makes `span` (just created, not yet entered) the reconcile of this cause: parent,
        /// links, and the queue attributes.
        pub(crate) fn adopt(&self, span: &Span) {
            let _ = span.set_parent(Context::new().with_remote_span_context(self.parent.clone()));
            for link in &self.links {
                span.add_link(link.clone());
            }
            span.record(
                "crwatch.queue.time_ms",
                self.since.elapsed().as_secs_f64() * 1000.0,
            );
            if let Some(b) = self.backoff {
                span.record("crwatch.queue.backoff_ms", b.as_secs_f64() * 1000.0);
            }
        }

        /// A cause whose parent is `parent` (tests).
        #[cfg(test)]
        pub(crate) fn from_context(parent: SpanContext) -> Cause {
            Cause {
                parent,
                links: Vec::new(),
                since: Instant::now(),
                backoff: None,
            }
        }

        /// A cause for the retry of a reconcile that had none (queued without tracing).
        pub(crate) fn of_span(span: &Span) -> Cause {
            Cause {
                parent: span.context().span().span_context().clone(),
                links: Vec::new(),
                since: Instant::now(),
                backoff: None,
            }
        }
    }

    /// The `watch event` span of a change `informer` received for `obj` (its type is recorded
    /// once the store says what it was: `ADDED`, `MODIFIED`, `DELETED`, `UNCHANGED`).
    pub(crate) fn watch_event_span<K: kube::Resource>(informer: &str, obj: &K) -> Span {
        if !enabled() {
            return Span::none();
        }
        let meta = obj.meta();
        tracing::info_span!(
            "watch event",
            "crwatch.informer" = informer,
            "k8s.namespace.name" = meta.namespace.as_deref().unwrap_or(""),
            "crwatch.object.name" = meta.name.as_deref().unwrap_or(""),
            "crwatch.object.resource_version" = meta.resource_version.as_deref().unwrap_or(""),
            "crwatch.event.type" = tracing::field::Empty,
        )
    }

    /// A span per Kubernetes API request made inside another span (a reconcile's writes):
    /// `http.request.method`, `url.path`, `http.response.status_code`. Requests outside any
    /// span (informers' lists and watches) make none, so they do not start a trace each.
    /// [`crate::client::build`] adds it to every client.
    #[derive(Debug, Clone, Copy, Default)]
    pub struct RequestSpanLayer;

    impl<S> tower::Layer<S> for RequestSpanLayer {
        type Service = RequestSpanService<S>;

        fn layer(&self, inner: S) -> RequestSpanService<S> {
            RequestSpanService { inner }
        }
    }

    /// The service of [`RequestSpanLayer`].
    #[derive(Debug, Clone)]
    pub struct RequestSpanService<S> {
        inner: S,
    }

    type BoxError = Box<dyn std::error::Error + Send + Sync>;

    impl<S, B, Req> tower::Service<http::Request<Req>> for RequestSpanService<S>
    where
        S: tower::Service<http::Request<Req>, Response = http::Response<B>>,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
    {
        type Response = http::Response<B>;
        type Error = BoxError;
        type Future = futures::future::BoxFuture<'static, Result<http::Response<B>, BoxError>>;

        fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), BoxError>> {
            self.inner.poll_ready(cx).map_err(Into::into)
        }

        fn call(&mut self, req: http::Request<Req>) -> Self::Future {
            let target = enabled().then(|| (req.method().clone(), req.uri().path().to_string()));
            let sent = self.inner.call(req);
            Box::pin(async move {
                // kube::Client calls `call` on its buffer's task but polls this future on the
                // caller's, inside the caller's span.
                let Some((method, path)) = target.filter(|_| !Span::current().is_none()) else {
                    return sent.await.map_err(Into::into);
                };
                let span = tracing::info_span!(
                    "HTTP",
                    "otel.name" = %method,
                    "otel.kind" = "client",
                    "http.request.method" = %method,
                    "url.path" = %path,
                    "http.response.status_code" = tracing::field::Empty,
                    "otel.status_code" = tracing::field::Empty,
                );
                let res = tracing::Instrument::instrument(sent, span.clone()).await;
                match &res {
                    Ok(r) => {
                        span.record("http.response.status_code", r.status().as_u16());
                        if r.status().is_server_error() || r.status().is_client_error() {
                            span.record("otel.status_code", "ERROR");
                        }
                    }
                    Err(_) => {
                        span.record("otel.status_code", "ERROR");
                    }
                }
                res.map_err(Into::into)
            })
        }
    }

    /// A span's context, kept to parent spans made later and elsewhere (the forwarder's
    /// `deliver` spans under its `receive` span) without keeping the span itself open.
    #[derive(Clone)]
    pub struct Parent(SpanContext);

    impl fmt::Debug for Parent {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_tuple("Parent").field(&self.0.span_id()).finish()
        }
    }

    impl Parent {
        /// The context of `span`, when it has a valid one (tracing is on and the span enabled).
        pub fn of(span: &Span) -> Option<Parent> {
            let sc = span.context().span().span_context().clone();
            sc.is_valid().then_some(Parent(sc))
        }

        /// Makes `span` (just created, not yet entered) a child of this one.
        pub fn adopt(&self, span: &Span) {
            let _ = span.set_parent(Context::new().with_remote_span_context(self.0.clone()));
        }
    }

    /// The trace id of `span`, when it is sampled (for exemplars).
    pub fn sampled_trace_id(span: &Span) -> Option<String> {
        let cx = span.context();
        let sc = cx.span().span_context().clone();
        (sc.is_valid() && sc.is_sampled()).then(|| sc.trace_id().to_string())
    }

    /// The W3C `traceparent` (and `tracestate`, when not empty) of `span`; `None` when it has no
    /// valid context (no exporter, or the span is disabled).
    pub fn traceparent(span: &Span) -> Option<(String, Option<String>)> {
        let cx = span.context();
        let sc = cx.span().span_context().clone();
        if !sc.is_valid() {
            return None;
        }
        let parent = format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        );
        let state = sc.trace_state().header();
        Some((parent, (!state.is_empty()).then_some(state)))
    }

    /// The installed exporter; [`shutdown`](TraceGuard::shutdown) (or dropping it) flushes what
    /// is queued.
    pub struct TraceGuard {
        provider: SdkTracerProvider,
        tx: mpsc::Sender<Msg>,
        flushed: bool,
    }

    impl fmt::Debug for TraceGuard {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("TraceGuard").finish_non_exhaustive()
        }
    }

    impl TraceGuard {
        /// The tracing layer that turns `tracing` spans into OpenTelemetry spans; add it to the
        /// subscriber (with its own filter, so the log level does not decide what is traced).
        pub fn layer<S>(
            &self,
        ) -> tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>
        where
            S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
        {
            tracing_opentelemetry::layer()
                .with_tracer(self.provider.tracer("crwatch"))
                .with_location(false)
                .with_threads(false)
        }

        /// Stops making spans and sends what is queued, waiting at most 5 s for the collector.
        pub async fn shutdown(mut self) {
            self.flushed = true;
            ENABLED.store(false, Ordering::Relaxed);
            let (done, wait) = oneshot::channel();
            // The queue may be full: wait for room, but no longer than the flush itself may take.
            let flush = async {
                if self.tx.send(Msg::Flush(done)).await.is_ok() {
                    let _ = wait.await;
                }
            };
            if tokio::time::timeout(Duration::from_secs(5), flush).await.is_err() {
                tracing::warn!("the trace collector did not take the last spans within 5s; they are lost");
            }
            let _ = self.provider.shutdown();
        }
    }

    impl Drop for TraceGuard {
        fn drop(&mut self) {
            if !self.flushed {
                // Not awaited: the export task sends what is queued while the runtime lives.
                ENABLED.store(false, Ordering::Relaxed);
                let (done, _) = oneshot::channel();
                let _ = self.tx.try_send(Msg::Flush(done));
            }
        }
    }

    /// Installs the OTLP/gRPC exporter if `config` names an endpoint (must run inside a Tokio
    /// runtime). `None`: no endpoint, tracing stays off and costs nothing. Also makes it the
    /// global tracer provider.
    pub fn init(config: TraceConfig) -> Result<Option<TraceGuard>, TraceError> {
        let Some(endpoint) = config.endpoint.clone() else {
            return Ok(None);
        };
        let error = |message: String| TraceError {
            endpoint: endpoint.clone(),
            message,
        };
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|_| error("no Tokio runtime to run the exporter on".into()))?;
        let mut exporter = {
            let _entered = handle.enter();
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone())
                .with_timeout(config.export_timeout)
                .build()
                .map_err(|e| error(e.to_string()))?
        };
        let named = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|v| !v.is_empty())
            || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|v| v.contains("service.name="));
        let mut resource = opentelemetry_sdk::Resource::builder();
        if !named {
            resource = resource.with_service_name(config.service_name.clone());
        }
        let resource = resource.build();
        exporter.set_resource(&resource);
        let (tx, rx) = mpsc::channel(config.max_queue_size);
        handle.spawn(export_loop(exporter, rx, config.clone()));
        let provider = SdkTracerProvider::builder()
            .with_span_processor(QueueProcessor { tx: tx.clone() })
            .with_resource(resource)
            .with_max_links_per_span(MAX_LINKS as u32 + 1)
            .build();
        opentelemetry::global::set_tracer_provider(provider.clone());
        ENABLED.store(true, Ordering::Relaxed);
        tracing::info!(%endpoint, queue = config.max_queue_size, "exporting traces over OTLP/gRPC");
        Ok(Some(TraceGuard {
            provider,
            tx,
            flushed: false,
        }))
    }

    enum Msg {
        Span(Box<SpanData>),
        Flush(oneshot::Sender<()>),
    }

    /// Hands finished spans to the export task without ever waiting: a full queue drops.
    struct QueueProcessor {
        tx: mpsc::Sender<Msg>,
    }

    impl fmt::Debug for QueueProcessor {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("QueueProcessor").finish_non_exhaustive()
        }
    }

    impl SpanProcessor for QueueProcessor {
        fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &Context) {}

        fn on_end(&self, span: SpanData) {
            if !span.span_context.is_sampled() {
                return;
            }
            if self.tx.try_send(Msg::Span(Box::new(span))).is_err() {
                DROPPED.fetch_add(1, Ordering::Relaxed);
            }
        }

        fn force_flush(&self) -> OTelSdkResult {
            // Synchronous callers cannot wait for an async export; ask for it and return.
            let (done, _) = oneshot::channel();
            self.tx
                .try_send(Msg::Flush(done))
                .map_err(|_| OTelSdkError::InternalFailure("trace queue full".into()))
        }

        fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
            self.force_flush()
        }
    }

    /// Drains the queue in batches of at most `max_export_batch_size`, sending a partial batch
    /// after `schedule_delay`; one export at a time, each bounded by `export_timeout`.
    async fn export_loop(
        exporter: opentelemetry_otlp::SpanExporter,
        mut rx: mpsc::Receiver<Msg>,
        config: TraceConfig,
    ) {
        let mut failures = 0u64;
        let exporter = Arc::new(exporter);
        let mut batch: Vec<SpanData> = Vec::with_capacity(config.max_export_batch_size);
        let mut flushes: Vec<oneshot::Sender<()>> = Vec::new();
        loop {
            let deadline = tokio::time::sleep(config.schedule_delay);
            tokio::pin!(deadline);
            let mut closed = false;
            while batch.len() < config.max_export_batch_size && flushes.is_empty() {
                let msg = if batch.is_empty() {
                    // Nothing waits: no timer.
                    rx.recv().await
                } else {
                    tokio::select! {
                        m = rx.recv() => m,
                        _ = &mut deadline => break,
                    }
                };
                match msg {
                    Some(Msg::Span(s)) => {
                        if batch.is_empty() {
                            deadline.as_mut().reset(Instant::now() + config.schedule_delay);
                        }
                        batch.push(*s);
                    }
                    Some(Msg::Flush(done)) => flushes.push(done),
                    None => {
                        closed = true;
                        break;
                    }
                }
            }
            // A flush sends everything queued before it.
            if !flushes.is_empty() {
                while let Ok(msg) = rx.try_recv() {
                    match msg {
                        Msg::Span(s) => batch.push(*s),
                        Msg::Flush(done) => flushes.push(done),
                    }
                }
            }
            while !batch.is_empty() {
                let take = batch.len().min(config.max_export_batch_size);
                let chunk: Vec<SpanData> = batch.drain(..take).collect();
                let n = chunk.len() as u64;
                match tokio::time::timeout(config.export_timeout, exporter.export(chunk)).await {
                    Ok(Ok(())) => {
                        EXPORTED.fetch_add(n, Ordering::Relaxed);
                    }
                    outcome => {
                        FAILED.fetch_add(n, Ordering::Relaxed);
                        failures += 1;
                        // Once, then every hundredth failure: an absent collector is not news.
                        if failures % 100 == 1 {
                            let why = match outcome {
                                Ok(Err(e)) => e.to_string(),
                                _ => format!("timed out after {:?}", config.export_timeout),
                            };
                            tracing::warn!(target: "crwatch::trace::export", spans = n, failures, error = %why, "exporting spans failed; they are dropped");
                        }
                    }
                }
            }
            for done in flushes.drain(..) {
                let _ = done.send(());
            }
            if closed {
                return;
            }
            if batch.capacity() > config.max_export_batch_size * 2 {
                batch.shrink_to(config.max_export_batch_size);
            }
        }
    }
}

#[cfg(all(test, feature = "otel"))]
mod tests {
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

    use super::*;
    use crate::queue::{AddOpts, WorkQueue};

    fn cause(n: u64) -> Cause {
        Cause::from_context(SpanContext::new(
            TraceId::from(u128::from(n) + 1),
            SpanId::from(n + 1),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        ))
    }

    #[tokio::test]
    async fn coalesced_events_become_links_of_the_first_bounded() {
        let queue: WorkQueue<&str> = WorkQueue::new("q");
        for n in 0..100 {
            queue.add_traced("a", AddOpts::default(), cause(n));
        }
        // The same event twice is one link, not two.
        queue.add_traced("a", AddOpts::default(), cause(1));
        let (key, _, got) = queue.get_traced().await.unwrap();
        assert_eq!(key, "a");
        let got = got.expect("a cause");
        assert_eq!(got.parent, cause(0).parent, "the first event is the parent");
        assert_eq!(got.links.len(), MAX_LINKS);
        assert_eq!(got.links[0], cause(1).parent);
        // Handed out with its key: nothing stays behind.
        queue.done(&key);
        queue.add("a");
        let (_, _, none) = queue.get_traced().await.unwrap();
        assert!(none.is_none(), "an untraced add carries no cause");
    }

    #[tokio::test]
    async fn shutdown_drops_the_causes_of_keys_never_handed_out() {
        let queue: WorkQueue<u32> = WorkQueue::new("q");
        for key in 0..10 {
            queue.add_traced(key, AddOpts::default(), cause(u64::from(key)));
        }
        queue.shut_down();
        assert!(queue.get_traced().await.is_none());
        queue.add_traced(11, AddOpts::default(), cause(11));
        assert_eq!(queue.traced_len(), 0);
    }
}
