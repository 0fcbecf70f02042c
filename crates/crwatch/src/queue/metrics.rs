//! Prometheus metrics of work queues, with exactly the names, labels and buckets of client-go's
//! `workqueue` metrics as registered by controller-runtime, so existing dashboards and alerts
//! work unchanged.
//!
//! | metric | type | meaning |
//! | --- | --- | --- |
//! | `workqueue_depth` | gauge | items waiting to be processed (including items re-added while being processed), per `priority` once the queue uses priorities |
//! | `workqueue_adds_total` | counter | adds that were not already pending |
//! | `workqueue_queue_duration_seconds` | histogram | time from add until a worker took the item |
//! | `workqueue_work_duration_seconds` | histogram | time from a worker taking an item until `done` |
//! | `workqueue_unfinished_work_seconds` | gauge | sum of the running times of all items in progress |
//! | `workqueue_longest_running_processor_seconds` | gauge | running time of the oldest item in progress |
//! | `workqueue_retries_total` | counter | rate-limited re-adds |
//!
//! Every series carries the labels `name` (the queue's name) and `controller`.
//!
//! `workqueue_depth` also has the label `priority`, as in controller-runtime: its priority queue
//! reports one depth series per priority (`priority="0"`, `priority="-100"`, …) and its plain
//! queue reports `priority=""`, which Prometheus stores as no label at all. A [`WorkQueue`]
//! reports like the plain queue (the series without `priority`, unchanged from before
//! priorities) until it is first given a priority other than the default; from then on like the
//! priority queue: the series without `priority` is removed and the pending items are counted
//! per priority, each series staying (at 0 when empty) for as long as the queue lives.
//! `sum by (name) (workqueue_depth)` is the queue's depth either way.
//!
//! [`WorkQueue`]: super::WorkQueue
//!
//! The two "in progress" gauges are computed **when the registry is encoded** (on every
//! scrape), from the live queues, rather than by a 500 ms ticker as in client-go: the values are
//! exact at scrape time and no background task is needed. Queues that were dropped disappear
//! from these two gauges.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, LabelSetEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::time::Instant;

/// The label set of every work queue series: `name` is the queue's name, `controller` the
/// controller that owns it (controller-runtime sets both to the controller's name).
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub(crate) struct QueueLabels {
    pub(crate) name: String,
    pub(crate) controller: String,
}

/// The label set of `workqueue_depth`: the queue's labels, and `priority` only for a queue that
/// uses priorities (see the [module docs](self)).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct DepthLabels {
    queue: QueueLabels,
    priority: Option<i32>,
}

impl EncodeLabelSet for DepthLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), fmt::Error> {
        self.queue.encode(encoder)?;
        match self.priority {
            // Left out rather than `priority=""`: the same series to Prometheus, and the text
            // stays what it was before priorities for queues that never use them.
            None => Ok(()),
            Some(priority) => [("priority", priority)].encode(encoder),
        }
    }
}

/// Per-priority series beyond this many are dropped when at 0, so a queue fed ever new
/// priorities does not grow the registry without bound.
const KEPT_PRIORITY_SERIES: usize = 16;

/// The pending items of one priority and their `workqueue_depth` series.
#[derive(Debug)]
pub(crate) struct PriorityDepth {
    priority: i32,
    count: i64,
    gauge: Gauge,
}

impl PriorityDepth {
    pub(crate) fn set(&mut self, count: i64) {
        self.count = count;
        self.gauge.set(count);
    }
}

/// What the scrape-time collector needs to know about one live queue.
pub(crate) trait InProgress: Send + Sync {
    fn labels(&self) -> &QueueLabels;
    /// Sum and maximum of how long the items currently being processed have been running.
    fn in_progress_seconds(&self, now: Instant) -> (f64, f64);
}

/// The work queue metric families, registered once in a [`Registry`] and shared by all queues
/// (clone it freely; clones share the same families).
///
/// Hand it to [`WorkQueueBuilder::metrics`](super::WorkQueueBuilder::metrics) together with
/// the controller's name.
///
/// # Example
///
/// ```
/// use prometheus_client::encoding::text::encode;
/// use prometheus_client::registry::Registry;
/// use crwatch::queue::{QueueMetrics, WorkQueue};
///
/// let mut registry = Registry::default();
/// let metrics = QueueMetrics::new(&mut registry);
/// let queue: WorkQueue<String> = WorkQueue::builder("database").metrics(metrics.clone(), "database").build();
/// queue.add("default/my-app-db".to_string());
///
/// let mut text = String::new();
/// encode(&mut text, &registry).unwrap();
/// assert!(text.contains(r#"workqueue_adds_total{name="database",controller="database"} 1"#));
/// assert!(text.contains(r#"workqueue_depth{name="database",controller="database"} 1"#));
/// ```
#[derive(Clone)]
pub struct QueueMetrics {
    families: Arc<Families>,
    live: Arc<LiveQueues>,
}

struct Families {
    depth: Family<DepthLabels, Gauge>,
    adds: Family<QueueLabels, Counter>,
    queue_duration: Family<QueueLabels, Histogram, fn() -> Histogram>,
    work_duration: Family<QueueLabels, Histogram, fn() -> Histogram>,
    retries: Family<QueueLabels, Counter>,
}

/// client-go's buckets: 10 ns to 1000 s, one per power of ten.
fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1e-8, 10.0, 12))
}

impl QueueMetrics {
    /// Registers the work queue metric families in `registry`.
    ///
    /// Call it once per registry: registering twice would expose every name twice.
    ///
    /// ```
    /// use prometheus_client::registry::Registry;
    /// use crwatch::queue::QueueMetrics;
    ///
    /// let mut registry = Registry::default();
    /// let metrics = QueueMetrics::new(&mut registry);
    /// let shared = metrics.clone(); // same families
    /// # drop(shared);
    /// ```
    pub fn new(registry: &mut Registry) -> Self {
        let families = Families {
            depth: Family::default(),
            adds: Family::default(),
            queue_duration: Family::new_with_constructor(duration_histogram),
            work_duration: Family::new_with_constructor(duration_histogram),
            retries: Family::default(),
        };
        // prometheus-client appends `_total` to counters itself.
        registry.register(
            "workqueue_depth",
            "Current depth of workqueue by workqueue and priority",
            families.depth.clone(),
        );
        registry.register(
            "workqueue_adds",
            "Total number of adds handled by workqueue",
            families.adds.clone(),
        );
        registry.register(
            "workqueue_queue_duration_seconds",
            "How long in seconds an item stays in workqueue before being requested",
            families.queue_duration.clone(),
        );
        registry.register(
            "workqueue_work_duration_seconds",
            "How long in seconds processing an item from workqueue takes.",
            families.work_duration.clone(),
        );
        registry.register(
            "workqueue_retries",
            "Total number of retries handled by workqueue",
            families.retries.clone(),
        );
        let live = Arc::new(LiveQueues::default());
        registry.register_collector(Box::new(InProgressCollector(live.clone())));
        Self {
            families: Arc::new(families),
            live,
        }
    }

    /// The metrics of one queue, resolved once so the hot path does not look labels up.
    pub(crate) fn for_queue(&self, labels: &QueueLabels) -> QueueSeries {
        let depth_labels = DepthLabels {
            queue: labels.clone(),
            priority: None,
        };
        QueueSeries {
            depth: self.families.depth.get_or_create_owned(&depth_labels),
            depth_family: self.families.depth.clone(),
            labels: labels.clone(),
            adds: self.families.adds.get_or_create_owned(labels),
            queue_duration: self.families.queue_duration.get_or_create_owned(labels),
            work_duration: self.families.work_duration.get_or_create_owned(labels),
            retries: self.families.retries.get_or_create_owned(labels),
        }
    }

    /// Makes a queue visible to the scrape-time gauges for as long as it lives.
    pub(crate) fn track(&self, queue: Weak<dyn InProgress>) {
        let mut queues = self.live.queues.lock().unwrap_or_else(PoisonError::into_inner);
        // Pruning here keeps the list bounded by the number of live queues even if the
        // registry is never scraped.
        queues.retain(|q| q.strong_count() > 0);
        queues.push(queue);
    }
}

impl fmt::Debug for QueueMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueMetrics").finish_non_exhaustive()
    }
}

/// The series of one queue. Cloned metric handles share their values with the family.
#[derive(Clone, Debug)]
pub(crate) struct QueueSeries {
    /// The depth without a priority label, until the queue uses priorities.
    pub(crate) depth: Gauge,
    /// For the per-priority depth series.
    depth_family: Family<DepthLabels, Gauge>,
    labels: QueueLabels,
    pub(crate) adds: Counter,
    pub(crate) queue_duration: Histogram,
    pub(crate) work_duration: Histogram,
    pub(crate) retries: Counter,
}

impl QueueSeries {
    /// Replaces the depth series without priority by per-priority ones; `pending` items so far
    /// all have the default priority.
    pub(crate) fn split_depth_by_priority(&self, pending: i64) -> Vec<PriorityDepth> {
        self.depth.set(0);
        self.depth_family.remove(&self.depth_labels(None));
        let mut default = self.priority_depth(0);
        default.set(pending);
        vec![default]
    }

    /// Changes the pending items of `priority` by `delta`.
    pub(crate) fn add_depth(&self, by_priority: &mut Vec<PriorityDepth>, priority: i32, delta: i64) {
        let at = match by_priority.iter().position(|d| d.priority == priority) {
            Some(at) => at,
            None => {
                if by_priority.len() >= KEPT_PRIORITY_SERIES {
                    by_priority.retain(|d| {
                        let keep = d.count != 0 || d.priority == 0;
                        if !keep {
                            self.depth_family.remove(&self.depth_labels(Some(d.priority)));
                        }
                        keep
                    });
                }
                by_priority.push(self.priority_depth(priority));
                by_priority.len() - 1
            }
        };
        if let Some(depth) = by_priority.get_mut(at) {
            depth.set(depth.count + delta);
        }
    }

    fn priority_depth(&self, priority: i32) -> PriorityDepth {
        PriorityDepth {
            priority,
            count: 0,
            gauge: self
                .depth_family
                .get_or_create_owned(&self.depth_labels(Some(priority))),
        }
    }

    fn depth_labels(&self, priority: Option<i32>) -> DepthLabels {
        DepthLabels {
            queue: self.labels.clone(),
            priority,
        }
    }
}

#[derive(Default)]
struct LiveQueues {
    queues: Mutex<Vec<Weak<dyn InProgress>>>,
}

/// Encodes `workqueue_unfinished_work_seconds` and `workqueue_longest_running_processor_seconds`
/// from the live queues on every scrape.
struct InProgressCollector(Arc<LiveQueues>);

impl fmt::Debug for InProgressCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InProgressCollector").finish_non_exhaustive()
    }
}

impl Collector for InProgressCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let now = Instant::now();
        // Queues sharing labels are merged so that no series is exposed twice.
        let mut values: BTreeMap<QueueLabels, (f64, f64)> = BTreeMap::new();
        {
            let mut queues = self.0.queues.lock().unwrap_or_else(PoisonError::into_inner);
            queues.retain(|q| q.strong_count() > 0);
            for queue in queues.iter().filter_map(Weak::upgrade) {
                let (sum, max) = queue.in_progress_seconds(now);
                let entry = values.entry(queue.labels().clone()).or_insert((0.0, 0.0));
                entry.0 += sum;
                entry.1 = entry.1.max(max);
            }
        }
        if values.is_empty() {
            return Ok(());
        }
        let mut unfinished = encoder.encode_descriptor(
            "workqueue_unfinished_work_seconds",
            "How many seconds of work has been done that is in progress and hasn't been observed by \
             work_duration. Large values indicate stuck threads. One can deduce the number of stuck \
             threads by observing the rate at which this increases.",
            None,
            MetricType::Gauge,
        )?;
        for (labels, (sum, _)) in &values {
            unfinished.encode_family(labels)?.encode_gauge(sum)?;
        }
        let mut longest = encoder.encode_descriptor(
            "workqueue_longest_running_processor_seconds",
            "How many seconds has the longest running processor for workqueue been running.",
            None,
            MetricType::Gauge,
        )?;
        for (labels, (_, max)) in &values {
            longest.encode_family(labels)?.encode_gauge(max)?;
        }
        Ok(())
    }
}
