//! A real OTLP/gRPC trace receiver for tests: the official protos' `TraceService` served by
//! tonic on a free loopback port, keeping the spans it receives (at most [`MAX_SPANS`]) for
//! the test to check parentage and attributes. Stopped when dropped.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};

/// Spans kept; further ones are counted in [`OtlpReceiver::overflow`] and dropped.
pub const MAX_SPANS: usize = 100_000;

/// One received span, ids in lowercase hex as W3C `traceparent` writes them.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedSpan {
    /// The resource's `service.name`.
    pub service: String,
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    /// Attributes as text (numbers and booleans formatted).
    pub attributes: BTreeMap<String, String>,
    /// `(trace_id, span_id)` of each link.
    pub links: Vec<(String, String)>,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    /// The status code (0 unset, 1 ok, 2 error).
    pub status_code: i32,
}

impl ReceivedSpan {
    /// The attribute `key`, if set.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }

    /// How long the span took.
    pub fn duration(&self) -> Duration {
        Duration::from_nanos(self.end_unix_nanos.saturating_sub(self.start_unix_nanos))
    }
}

#[derive(Default)]
struct Received {
    spans: Vec<ReceivedSpan>,
    overflow: u64,
    requests: u64,
}

struct Collector(Arc<Mutex<Received>>);

fn text(v: Option<&AnyValue>) -> String {
    match v.and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let request = request.into_inner();
        let mut received = self.0.lock().unwrap_or_else(|p| p.into_inner());
        received.requests += 1;
        for rs in request.resource_spans {
            let resource = rs.resource.map(|r| attributes(&r.attributes)).unwrap_or_default();
            let service = resource.get("service.name").cloned().unwrap_or_default();
            for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                if received.spans.len() >= MAX_SPANS {
                    received.overflow += 1;
                    continue;
                }
                received.spans.push(ReceivedSpan {
                    service: service.clone(),
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    attributes: attributes(&span.attributes),
                    links: span
                        .links
                        .iter()
                        .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
                        .collect(),
                    start_unix_nanos: span.start_time_unix_nano,
                    end_unix_nanos: span.end_time_unix_nano,
                    status_code: span.status.map_or(0, |s| s.code),
                });
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// The spans of `trace_id` as an indented tree (children by start time), each with its
/// duration and the attributes whose keys `show` accepts: how a README shows one trace.
pub fn render_tree(spans: &[ReceivedSpan], trace_id: &str, show: impl Fn(&str) -> bool) -> String {
    let mut of_trace: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.trace_id == trace_id).collect();
    of_trace.sort_by_key(|s| s.start_unix_nanos);
    let ids: std::collections::HashSet<&str> = of_trace.iter().map(|s| s.span_id.as_str()).collect();
    let mut out = String::new();
    fn walk(
        out: &mut String,
        all: &[&ReceivedSpan],
        parent: &str,
        depth: usize,
        show: &dyn Fn(&str) -> bool,
        ids: &std::collections::HashSet<&str>,
    ) {
        for s in all.iter().filter(|s| {
            s.parent_span_id == parent
                || (depth == 0
                    && !s.parent_span_id.is_empty()
                    && !ids.contains(s.parent_span_id.as_str())
                    && parent.is_empty())
        }) {
            let attrs: Vec<String> = s
                .attributes
                .iter()
                .filter(|(k, _)| show(k))
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            out.push_str(&format!(
                "{:indent$}{} [{:.3} ms] {}\n",
                "",
                s.name,
                s.duration().as_secs_f64() * 1000.0,
                attrs.join(" "),
                indent = depth * 2
            ));
            walk(out, all, &s.span_id, depth + 1, show, ids);
        }
    }
    walk(&mut out, &of_trace, "", 0, &show, &ids);
    out
}

/// The running receiver.
pub struct OtlpReceiver {
    addr: SocketAddr,
    received: Arc<Mutex<Received>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl OtlpReceiver {
    /// Serves on a free loopback port (inside the current Tokio runtime).
    pub async fn start() -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the OTLP receiver")?;
        let addr = listener.local_addr().context("OTLP receiver address")?;
        let received = Arc::new(Mutex::new(Received::default()));
        let service = TraceServiceServer::new(Collector(received.clone()));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let task = tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await;
            if let Err(e) = served {
                eprintln!("OTLP receiver failed: {e}");
            }
        });
        Ok(OtlpReceiver {
            addr,
            received,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// `http://127.0.0.1:<port>`, for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.lock().spans.clone()
    }

    /// Spans dropped beyond [`MAX_SPANS`].
    pub fn overflow(&self) -> u64 {
        self.lock().overflow
    }

    /// Export requests received.
    pub fn requests(&self) -> u64 {
        self.lock().requests
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Received> {
        self.received.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits (polling every 20 ms, at most `timeout`) until `found` returns something for the
    /// spans received so far.
    pub async fn wait_for<T>(
        &self,
        timeout: Duration,
        what: &str,
        mut found: impl FnMut(&[ReceivedSpan]) -> Option<T>,
    ) -> anyhow::Result<T> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(t) = found(&self.lock().spans) {
                return Ok(t);
            }
            if tokio::time::Instant::now() >= deadline {
                let names: Vec<String> = self.lock().spans.iter().map(|s| s.name.clone()).collect();
                bail!("no {what} within {timeout:?}; received spans: {names:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops serving and waits for the server task.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
