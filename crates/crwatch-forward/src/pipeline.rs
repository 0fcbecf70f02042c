//! From changes to acknowledged deliveries: filters, per-sink bounded queues split into lanes
//! by object (so one object's changes stay in order), retries with exponential backoff and full
//! jitter, dead-lettering, and acknowledgement to the [`Committer`].

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crwatch::source::Checkpoint;
use rand::Rng;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::checkpoint::{Committer, Op, Ticket};
use crate::config::{EventType, RetryConfig};
use crate::event::{Change, EventBuilder};
use crate::metrics::{ForwardMetrics, ResourceLabels, SinkLabels};
use crate::sink::{Delivery, Sink, SinkError};
use crate::sinks::file::JsonlWriter;

/// What a stream routes where, and which changes pass.
pub struct Route {
    /// Builds the CloudEvents.
    pub builder: EventBuilder,
    /// Indexes of the sinks this stream feeds.
    pub sinks: Vec<usize>,
    /// Event types that pass.
    pub events: Vec<EventType>,
    /// When not empty, a modification passes only when its diff touches one of these paths.
    pub fields: Vec<String>,
    /// `plural.group`, for metrics.
    pub resource: String,
}

impl Route {
    /// Whether `change` should be delivered.
    pub fn passes(&self, change: &Change) -> bool {
        if !self.events.contains(&change.event) {
            return false;
        }
        if change.event == EventType::Modified {
            if change.diff.is_empty() {
                return false;
            }
            if !self.fields.is_empty() && !self.fields.iter().any(|f| change.diff.touches(f)) {
                return false;
            }
        }
        true
    }
}

/// One queued delivery.
struct Item {
    delivery: Delivery,
    ticket: Ticket,
    seen: Instant,
    /// The change's `receive` span, while tracing (see [`crwatch::trace`]): each delivery
    /// attempt is a `deliver` span under it.
    trace: Option<crwatch::trace::Parent>,
}

/// A sink with its settings, ready to run.
pub struct SinkRunner {
    /// Name from the configuration.
    pub name: String,
    /// The destination.
    pub sink: Arc<dyn Sink>,
    /// Retry settings.
    pub retry: RetryConfig,
    /// Dead-letter file.
    pub dead_letter: Option<PathBuf>,
    /// Queue capacity.
    pub queue_size: usize,
    /// Lanes.
    pub parallelism: usize,
}

struct SinkQueues {
    lanes: Vec<mpsc::Sender<Item>>,
    labels: SinkLabels,
    state: Arc<SinkState>,
}

/// What every lane of one sink shares: whether deliveries are failing (so the change of state
/// is logged once, not every attempt) and how many changes it holds.
#[derive(Debug, Default)]
pub struct SinkState {
    failing: AtomicBool,
    outstanding: AtomicUsize,
}

impl SinkState {
    /// An attempt failed: log at WARN if the sink was delivering until now.
    fn failed(&self, sink: &str, error: &SinkError) {
        if !self.failing.swap(true, Ordering::SeqCst) {
            tracing::warn!(
                sink,
                error = %error.summary(),
                "deliveries are failing; retrying with backoff (logged once until the sink delivers again)"
            );
        }
    }

    /// An attempt succeeded: log at WARN if the sink was failing until now.
    fn delivered(&self, sink: &str) {
        if self.failing.swap(false, Ordering::SeqCst) {
            tracing::warn!(sink, "delivering again");
        }
    }

    /// Changes queued for or being delivered by the sink.
    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::SeqCst)
    }
}

/// Routes changes of every stream to the sinks' queues.
pub struct Dispatcher {
    routes: Vec<Route>,
    names: Vec<String>,
    queues: Vec<SinkQueues>,
    committer: Arc<Committer>,
    metrics: ForwardMetrics,
}

impl Dispatcher {
    /// Start a worker per sink lane and return the dispatcher feeding them, plus the workers'
    /// handles. Workers stop when every dispatcher clone is dropped and their queues are empty,
    /// or at once when `abort` is cancelled (undelivered changes stay uncommitted and are sent
    /// again after a restart).
    pub fn start(
        routes: Vec<Route>,
        sinks: Vec<SinkRunner>,
        committer: Arc<Committer>,
        metrics: ForwardMetrics,
        abort: CancellationToken,
    ) -> Result<(Arc<Dispatcher>, Vec<tokio::task::JoinHandle<()>>), crate::Error> {
        let mut queues = Vec::new();
        let mut names = Vec::new();
        let mut workers = Vec::new();
        for s in sinks {
            let labels = SinkLabels { sink: s.name.clone() };
            // Every per-sink series exists from the start at 0, so `increase()` in an alert
            // sees a sink's first failure or dead letter (a series born at 1 shows no increase).
            for counter in [
                &metrics.delivered,
                &metrics.failed,
                &metrics.retried,
                &metrics.dead_lettered,
            ] {
                let _ = counter.get_or_create(&labels);
            }
            let _ = metrics.queue_depth.get_or_create(&labels);
            let dead_letter = match &s.dead_letter {
                Some(path) => Some(Arc::new(
                    JsonlWriter::open(path, 100 * 1024 * 1024, 5, true, false).map_err(|e| {
                        crate::Error::Sink {
                            sink: s.name.clone(),
                            message: format!("dead-letter file {}: {e}", path.display()),
                        }
                    })?,
                )),
                None => None,
            };
            // The configuration checks these; a program building runners itself gets the same
            // refusal instead of a task per lane by the million.
            if s.queue_size == 0
                || s.queue_size > crate::config::bounds::MAX_QUEUE_SIZE
                || s.parallelism == 0
                || s.parallelism > crate::config::bounds::MAX_PARALLELISM.min(s.queue_size)
            {
                return Err(crate::Error::Sink {
                    sink: s.name.clone(),
                    message: format!(
                        "queueSize {} and parallelism {} out of range: queueSize 1 to {}, parallelism 1 to {} and at most queueSize",
                        s.queue_size,
                        s.parallelism,
                        crate::config::bounds::MAX_QUEUE_SIZE,
                        crate::config::bounds::MAX_PARALLELISM
                    ),
                });
            }
            // Bounded channels allocate as they fill, not up front.
            let per_lane = (s.queue_size / s.parallelism).max(1);
            let state = Arc::new(SinkState::default());
            let mut lanes = Vec::new();
            for _ in 0..s.parallelism {
                let (tx, rx) = mpsc::channel(per_lane);
                lanes.push(tx);
                let lane = Lane {
                    name: s.name.clone(),
                    sink: s.sink.clone(),
                    retry: s.retry.clone(),
                    dead_letter: dead_letter.clone(),
                    committer: committer.clone(),
                    metrics: metrics.clone(),
                    labels: labels.clone(),
                    abort: abort.clone(),
                    state: state.clone(),
                };
                workers.push(tokio::spawn(lane.run(rx)));
            }
            names.push(s.name.clone());
            queues.push(SinkQueues { lanes, labels, state });
        }
        Ok((
            Arc::new(Dispatcher {
                routes,
                names,
                queues,
                committer,
                metrics,
            }),
            workers,
        ))
    }

    /// Hand a change of stream `stream` to its sinks, waiting while their queues are full (this
    /// holds the watch back, which bounds memory with a slow sink). `checkpoint` is where
    /// the stream may resume once this change is acknowledged (`None` for a change whose
    /// checkpoint follows it, and inside a relist).
    pub async fn dispatch(
        &self,
        stream: usize,
        change: Option<Change>,
        op: Op,
        checkpoint: Option<Checkpoint>,
    ) {
        let route = &self.routes[stream];
        let Some(change) = change else {
            self.committer.enqueue(stream, op, checkpoint, 0).await;
            return;
        };
        let labels = ResourceLabels {
            resource: route.resource.clone(),
            event: change.event.as_str().into(),
        };
        self.metrics.received.get_or_create(&labels).inc();
        if !route.passes(&change) {
            self.metrics.filtered.get_or_create(&labels).inc();
            self.committer.enqueue(stream, op, checkpoint, 0).await;
            return;
        }
        let delivery = route.builder.delivery(&change);
        // Open until the change is in every sink's queue (waiting for room included).
        let receive = match crwatch::trace::enabled() {
            true => tracing::info_span!(
                "receive",
                "crwatch.forward.resource" = %route.resource,
                "crwatch.event.type" = change.event.as_str(),
                "crwatch.object.key" = %change.key,
                "cloudevents.event_id" = %delivery.id,
            ),
            false => tracing::Span::none(),
        };
        let trace = crwatch::trace::Parent::of(&receive);
        // CloudEvents' distributed-tracing extension carries the context of the event's
        // creation (OpenTelemetry's CloudEvents conventions: set once by the producer, never
        // changed on the way), so every sink and every retry sends the same event.
        let delivery = match crwatch::trace::traceparent(&receive) {
            Some((parent, state)) => crate::event::with_trace_context(&delivery, &parent, state.as_deref()),
            None => delivery,
        };
        let ticket = self
            .committer
            .enqueue(stream, op, checkpoint, route.sinks.len())
            .await;
        let mut h = DefaultHasher::new();
        (stream, &change.key).hash(&mut h);
        let hash = h.finish() as usize;
        let seen = Instant::now();
        for &s in &route.sinks {
            let q = &self.queues[s];
            let lane = &q.lanes[hash % q.lanes.len()];
            let depth = self.metrics.queue_depth.get_or_create(&q.labels).clone();
            depth.inc();
            q.state.outstanding.fetch_add(1, Ordering::SeqCst);
            let item = Item {
                delivery: delivery.clone(),
                ticket,
                seen,
                trace: trace.clone(),
            };
            if lane.send(item).await.is_err() {
                // The lane stopped (shutdown): the change stays uncommitted and is sent again
                // after a restart.
                depth.dec();
                q.state.outstanding.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
}

impl Dispatcher {
    /// Each sink's name and shared state (what it still holds, whether it is failing).
    pub fn states(&self) -> Vec<(String, Arc<SinkState>)> {
        self.names
            .iter()
            .zip(&self.queues)
            .map(|(n, q)| (n.clone(), q.state.clone()))
            .collect()
    }
}

struct Lane {
    name: String,
    state: Arc<SinkState>,
    sink: Arc<dyn Sink>,
    retry: RetryConfig,
    dead_letter: Option<Arc<JsonlWriter>>,
    committer: Arc<Committer>,
    metrics: ForwardMetrics,
    labels: SinkLabels,
    abort: CancellationToken,
}

/// Exponential backoff with full jitter: a random wait in `[0, min(max, initial·2^attempt)]`,
/// so many forwarders retrying one receiver spread out instead of hammering it together.
pub fn backoff(retry: &RetryConfig, attempt: u32) -> Duration {
    let exp = retry
        .initial_backoff
        .saturating_mul(2u32.saturating_pow(attempt.min(30)));
    let cap = exp.min(retry.max_backoff);
    let millis = cap.as_millis().min(u64::MAX as u128) as u64;
    Duration::from_millis(rand::rng().random_range(0..=millis))
}

impl Lane {
    async fn run(self, mut rx: mpsc::Receiver<Item>) {
        loop {
            let item = tokio::select! {
                _ = self.abort.cancelled() => return,
                item = rx.recv() => match item { Some(i) => i, None => return },
            };
            self.metrics.queue_depth.get_or_create(&self.labels).dec();
            if !self.deliver(&item).await {
                return;
            }
            self.state.outstanding.fetch_sub(1, Ordering::SeqCst);
            self.committer.ack(item.ticket);
        }
    }

    /// Deliver until acknowledged or refused for good; false when aborted first.
    async fn deliver(&self, item: &Item) -> bool {
        let mut attempt: u32 = 0;
        loop {
            // While tracing, each attempt is a `deliver` span under the change's `receive`.
            let span = match &item.trace {
                Some(parent) => {
                    let span = tracing::info_span!(
                        "deliver",
                        "crwatch.forward.sink" = %self.name,
                        "crwatch.forward.attempt" = attempt + 1,
                        "crwatch.forward.outcome" = tracing::field::Empty,
                        "cloudevents.event_id" = %item.delivery.id,
                        "otel.status_code" = tracing::field::Empty,
                    );
                    parent.adopt(&span);
                    span
                }
                None => tracing::Span::none(),
            };
            let delivery = &item.delivery;
            // A sink that panics must not take its lane down with it: the lane's changes would
            // stay unacknowledged forever and, through the in-flight bound, stall every stream.
            let attempt_fut = std::panic::AssertUnwindSafe(tracing::Instrument::instrument(
                self.sink.deliver(delivery),
                span.clone(),
            ));
            let result = tokio::select! {
                _ = self.abort.cancelled() => return false,
                r = futures::FutureExt::catch_unwind(attempt_fut) => {
                    r.unwrap_or_else(|_| Err(SinkError::Retryable("the sink panicked".into())))
                }
            };
            let outcome = match &result {
                Ok(()) => "delivered",
                Err(SinkError::Permanent(_)) => "dead_lettered",
                Err(SinkError::Retryable(_))
                    if self.retry.max_attempts.is_some_and(|max| attempt + 1 >= max) =>
                {
                    "dead_lettered"
                }
                Err(SinkError::Retryable(_)) => "retry",
            };
            span.record("crwatch.forward.outcome", outcome);
            if result.is_err() {
                span.record("otel.status_code", "ERROR");
            }
            drop(span);
            let error = match result {
                Ok(()) => {
                    self.state.delivered(&self.name);
                    self.metrics.delivered.get_or_create(&self.labels).inc();
                    self.metrics
                        .latency
                        .get_or_create(&self.labels)
                        .observe(item.seen.elapsed().as_secs_f64());
                    return true;
                }
                Err(SinkError::Permanent(e)) => {
                    self.metrics.failed.get_or_create(&self.labels).inc();
                    // A refusal is an answer: the sink is reachable.
                    self.state.delivered(&self.name);
                    self.dead_letter(item, &e, attempt + 1).await;
                    return true;
                }
                Err(e @ SinkError::Retryable(_)) => {
                    self.state.failed(&self.name, &e);
                    e
                }
            };
            self.metrics.failed.get_or_create(&self.labels).inc();
            attempt += 1;
            if self.retry.max_attempts.is_some_and(|max| attempt >= max) {
                self.dead_letter(
                    item,
                    &format!("gave up after {attempt} attempts: {error}"),
                    attempt,
                )
                .await;
                return true;
            }
            let wait = backoff(&self.retry, attempt - 1);
            tracing::debug!(sink = %self.name, id = %item.delivery.id, attempt, error = %error.summary(), retry_in = ?wait, "delivery failed");
            tokio::select! {
                _ = self.abort.cancelled() => return false,
                _ = tokio::time::sleep(wait) => {}
            }
            self.metrics.retried.get_or_create(&self.labels).inc();
        }
    }

    async fn dead_letter(&self, item: &Item, error: &str, attempts: u32) {
        self.metrics.dead_lettered.get_or_create(&self.labels).inc();
        tracing::error!(sink = %self.name, id = %item.delivery.id, error = %error.split(crate::sink::DETAIL_MARKER).next().unwrap_or_default(), "sink refused the change for good");
        let Some(writer) = &self.dead_letter else { return };
        let record = serde_json::json!({
            "sink": self.name,
            "error": error,
            "attempts": attempts,
            "time": chrono::Utc::now().to_rfc3339(),
            "event": &*item.delivery.event,
        });
        // A dead-letter file that cannot be written must not stop delivery of everything else;
        // the change was logged above with its id.
        if let Err(e) = writer.write(&record).await {
            tracing::error!(sink = %self.name, error = %e, "cannot write the dead-letter file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures::future::BoxFuture;

    /// Panics on its first attempt, then acknowledges.
    struct Flaky(AtomicUsize);

    impl Sink for Flaky {
        fn deliver<'a>(&'a self, _: &'a Delivery) -> BoxFuture<'a, Result<(), SinkError>> {
            Box::pin(async move {
                if self.0.fetch_add(1, Ordering::SeqCst) == 0 {
                    panic!("sink bug");
                }
                Ok(())
            })
        }
    }

    #[tokio::test]
    async fn a_panicking_sink_is_retried_instead_of_stalling_its_lane() {
        let rt = crwatch::discovery::ResourceType {
            group: String::new(),
            version: "v1".into(),
            kind: "ConfigMap".into(),
            plural: "configmaps".into(),
            singular: "configmap".into(),
            short_names: vec![],
            namespaced: true,
            preferred: true,
        };
        let route = Route {
            builder: EventBuilder::new("http://x", rt),
            sinks: vec![0],
            events: vec![EventType::Added],
            fields: vec![],
            resource: "configmaps".into(),
        };
        let sink = Arc::new(Flaky(AtomicUsize::new(0)));
        let runner = SinkRunner {
            name: "flaky".into(),
            sink: sink.clone(),
            retry: RetryConfig {
                initial_backoff: Duration::from_millis(1),
                max_backoff: Duration::from_millis(1),
                max_attempts: None,
            },
            dead_letter: None,
            queue_size: 4,
            parallelism: 1,
        };
        let committer = Arc::new(Committer::open(vec!["s".into()], None, 10).unwrap());
        let abort = CancellationToken::new();
        let (dispatcher, _workers) = Dispatcher::start(
            vec![route],
            vec![runner],
            committer.clone(),
            ForwardMetrics::standalone(),
            abort,
        )
        .unwrap();
        let object = Arc::new(
            serde_json::json!({"metadata": {"name": "a", "namespace": "n", "uid": "u", "resourceVersion": "1"}}),
        );
        let change = Change {
            event: EventType::Added,
            key: "n/a".into(),
            object,
            old: None,
            diff: Default::default(),
        };
        dispatcher
            .dispatch(0, Some(change), Op::Nothing, Some(Checkpoint::new("1")))
            .await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while committer.in_flight() > 0 {
            assert!(Instant::now() < deadline, "the change was never acknowledged");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(
            sink.0.load(Ordering::SeqCst),
            2,
            "one panic, one successful retry"
        );
        assert_eq!(committer.committed(0).resource_version.as_deref(), Some("1"));
    }

    #[test]
    fn backoff_is_capped_and_jittered() {
        let r = RetryConfig {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            max_attempts: None,
        };
        for attempt in 0..40 {
            let cap = Duration::from_millis(100 * 2u64.pow(attempt.min(20))).min(Duration::from_secs(1));
            assert!(backoff(&r, attempt) <= cap);
        }
        let spread: std::collections::BTreeSet<_> = (0..50).map(|_| backoff(&r, 5)).collect();
        assert!(spread.len() > 1, "jitter spreads retries");
    }
}
