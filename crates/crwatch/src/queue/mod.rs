//! The work queue between event handlers and reconcilers: client-go's rate-limited
//! `workqueue`, async.
//!
//! A [`WorkQueue`] holds keys (usually `namespace/name`), not objects: the reconciler reads the
//! current object from the cache when it gets the key. Its guarantees are client-go's:
//!
//! * **Deduplication.** Adding a key that is already waiting to be processed does nothing, so a
//!   burst of events for one object causes one reconcile.
//! * **One worker per key.** A key is never handed to two workers at once. A key added while a
//!   worker processes it is marked dirty and queued again when the worker calls
//!   [`done`](WorkQueue::done): processed once more, however many times it was added meanwhile.
//! * **FIFO** otherwise.
//! * **Delays and backoff.** [`add_after`](WorkQueue::add_after) adds a key later (the earliest
//!   pending deadline of a key wins); [`add_rate_limited`](WorkQueue::add_rate_limited) asks the
//!   queue's [`RateLimiter`] how long to wait, by default [`default_controller_rate_limiter`]
//!   (per-key exponential backoff 5 ms to 1000 s, and 10/s with a burst of 100 overall).
//! * **Graceful shutdown.** [`shut_down`](WorkQueue::shut_down) stops handing out keys;
//!   [`shut_down_with_drain`](WorkQueue::shut_down_with_drain) hands out what is queued and waits
//!   until every worker called `done`.
//! * **Priorities** (controller-runtime's priority queue): [`add_with_priority`] and
//!   [`add_with_opts`] take an `i32`, [`Priority::DEFAULT`] (0) for plain adds,
//!   [`Priority::LOW`] (-100) for objects from an informer's initial list. Higher priorities are
//!   handed out first, FIFO within a priority (in the order the keys became ready). Re-adding a
//!   queued key with a higher priority raises it (never lowers it), keeping its place in time; a
//!   key re-added while it is processed comes back with the highest priority it was re-added
//!   with; a delayed key enters at its priority when due.
//! * **Aging, so nothing starves.** A ready key that has waited [`max_wait`] (default
//!   [`DEFAULT_MAX_WAIT`], 60 s) is *aged*. While an aged key is queued, at least one of any two
//!   consecutive [`get`](WorkQueue::get)s hands out the oldest queued key, whatever its
//!   priority; the other goes by priority. Exactly: a key that became ready at `t` is handed
//!   out within the `2(k + 1)` gets that follow `t + max_wait`, `k` being the number of keys
//!   still queued then that became ready before it (so at the first or second get when there
//!   are none), however much higher-priority work keeps arriving. Because every other get keeps
//!   going by priority, a large aged backlog (an initial list bigger than the workers get
//!   through in `max_wait`) does not turn the queue back into plain FIFO: new changes still
//!   overtake it on every other get.
//!
//! Metrics with controller-runtime's names are optional, see [`QueueMetrics`].
//!
//! [`add_with_priority`]: WorkQueue::add_with_priority
//! [`add_with_opts`]: WorkQueue::add_with_opts
//! [`max_wait`]: WorkQueueBuilder::max_wait
//!
//! # Example: a worker loop
//!
//! ```
//! use crwatch::queue::WorkQueue;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let queue: WorkQueue<String> = WorkQueue::new("database");
//! let worker = {
//!     let queue = queue.clone();
//!     tokio::spawn(async move {
//!         let mut reconciled = Vec::new();
//!         while let Some(key) = queue.get().await {
//!             let ok = true; // reconcile(&key).await.is_ok()
//!             if ok {
//!                 queue.forget(&key);
//!             } else {
//!                 queue.add_rate_limited(key.clone());
//!             }
//!             reconciled.push(key.clone());
//!             queue.done(&key);
//!         }
//!         reconciled
//!     })
//! };
//! queue.add("default/my-app-db".to_string());
//! queue.add("default/my-app-db".to_string()); // deduplicated
//! queue.shut_down_with_drain().await;
//! assert_eq!(worker.await.unwrap(), ["default/my-app-db"]);
//! # }
//! ```
//!
//! # Example: priorities
//!
//! ```
//! use crwatch::queue::{Priority, WorkQueue};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let queue: WorkQueue<&str> = WorkQueue::new("database");
//! // The initial list: every object, nothing known to have changed.
//! queue.add_with_priority("default/a", Priority::LOW);
//! queue.add_with_priority("default/b", Priority::LOW);
//! // A change that arrives meanwhile overtakes them.
//! queue.add("default/c");
//! // So does an object of the list that changes while still queued: raised, it keeps its
//! // place in time among the default-priority keys (it became ready before "default/c").
//! queue.add("default/b");
//! assert_eq!(queue.get_with_priority().await, Some(("default/b", Priority::DEFAULT)));
//! assert_eq!(queue.get().await, Some("default/c"));
//! assert_eq!(queue.get_with_priority().await, Some(("default/a", Priority::LOW)));
//! # }
//! ```

mod lanes;
pub mod metrics;
mod rate_limiter;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::Hash;
use std::ops::RangeInclusive;
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use lanes::Lanes;
pub use metrics::QueueMetrics;
use metrics::{InProgress, PriorityDepth, QueueLabels, QueueSeries};
use rate_limiter::shrink_map;
pub use rate_limiter::{
    Bucket, FastSlow, ItemExponential, MaxOf, RateLimiter, default_controller_rate_limiter,
};

/// A deduplicating, rate-limited, delaying work queue of keys; see the [module docs](self) for
/// its guarantees.
///
/// Cloning is cheap and every clone is the same queue, so hand clones to workers and event
/// handlers. Timestamps come from [`tokio::time::Instant`], so delays follow Tokio's paused test
/// clock.
///
/// # Example
///
/// ```
/// use crwatch::queue::WorkQueue;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let queue = WorkQueue::new("example");
/// queue.add("a");
/// queue.add("b");
/// queue.add("a"); // already queued: no-op
/// assert_eq!(queue.len(), 2);
///
/// let key = queue.get().await.unwrap();
/// assert_eq!(key, "a");
/// queue.add("a"); // being processed: marked dirty, queued again by done()
/// queue.done(&key);
/// assert_eq!(queue.get().await, Some("b"));
/// assert_eq!(queue.get().await, Some("a"));
/// # }
/// ```
pub struct WorkQueue<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Clone for WorkQueue<T> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

/// Named priorities for [`WorkQueue::add_with_priority`] and [`AddOpts::priority`], which take
/// any `i32`: higher is handed out first. The values are controller-runtime's.
///
/// ```
/// use crwatch::queue::{Priority, WorkQueue};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let queue = WorkQueue::new("q");
/// queue.add_with_priority("resync", Priority::LOW);
/// queue.add("changed"); // Priority::DEFAULT
/// queue.add_with_priority("user-requested", Priority::HIGH);
/// assert_eq!(queue.get().await, Some("user-requested"));
/// assert_eq!(queue.get().await, Some("changed"));
/// assert_eq!(queue.get().await, Some("resync"));
/// # }
/// ```
#[derive(Debug)]
pub enum Priority {}

impl Priority {
    /// Objects from an informer's initial list (and periodic resyncs): nothing is known to have
    /// changed, so real changes go first. controller-runtime's `handler.LowPriority`.
    pub const LOW: i32 = -100;
    /// What [`WorkQueue::add`] and the other adds without a priority use.
    pub const DEFAULT: i32 = 0;
    /// Work that should overtake ordinary changes, e.g. a reconcile a user asked for or a
    /// deletion holding up others.
    pub const HIGH: i32 = 100;
}

/// How long a ready item may wait for higher-priority work before it is aged, unless
/// [`WorkQueueBuilder::max_wait`] says otherwise: one minute.
///
/// Long enough that priorities do their job through ordinary bursts (an initial list of ten
/// thousand objects at 200 reconciles/s is 50 s of work during which changes go first); short
/// enough that deferred work is never "stuck" by any usual alerting threshold, where
/// controller-runtime's priority queue, which has no aging, was seen to starve initial-list
/// objects for more than 30 minutes.
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(60);

/// The values [`WorkQueueBuilder::max_wait`] accepts: 10 s to 1 h. Below 10 s ordinary bursts
/// would age before priorities could reorder them; above an hour the bound no longer prevents
/// the starvation it is for.
pub const MAX_WAIT_RANGE: RangeInclusive<Duration> = Duration::from_secs(10)..=Duration::from_secs(3600);

/// A [`WorkQueueBuilder`] setting out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueConfigError {
    /// [`WorkQueueBuilder::max_wait`] outside [`MAX_WAIT_RANGE`].
    #[error("work queue {queue:?}: max_wait must be between 10s and 1h, not {max_wait:?}")]
    MaxWaitOutOfRange {
        /// The queue's name.
        queue: String,
        /// The rejected value.
        max_wait: Duration,
    },
}

/// Options of [`WorkQueue::add_with_opts`], as controller-runtime's `AddOpts`: a delay, the
/// rate limiter's delay, a priority, in any combination. The default is a plain
/// [`add`](WorkQueue::add).
///
/// ```
/// use std::time::Duration;
/// use crwatch::queue::{AddOpts, Priority};
///
/// let opts = AddOpts { after: Duration::from_secs(30), priority: Priority::LOW, ..AddOpts::default() };
/// assert!(!opts.rate_limited);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AddOpts {
    /// Add the item once this has passed (zero: at once).
    pub after: Duration,
    /// Ask the rate limiter for a delay and count a retry; with a non-zero `after` too, the
    /// shorter of the two delays wins (as in controller-runtime).
    pub rate_limited: bool,
    /// See [`Priority`].
    pub priority: i32,
}

struct Shared<T> {
    labels: QueueLabels,
    limiter: Box<dyn RateLimiter<T>>,
    series: Option<QueueSeries>,
    max_wait: Duration,
    state: Mutex<State<T>>,
    /// Wakes workers waiting in `get`: an item was queued, or the queue is shutting down.
    item_ready: Notify,
    /// Wakes `shut_down_with_drain`: an item was finished, or the shutdown changed.
    drained: Notify,
    /// Wakes the timer task: the earliest deadline moved, the queue shut down or was dropped.
    /// Separate `Arc` because the timer task must be able to wait on it without keeping the
    /// queue alive.
    timer_wake: Arc<Notify>,
}

struct State<T> {
    /// Items ready to be handed out, by priority. Every live slot there is an item that is
    /// dirty and not being processed (see `entries`), once; the lanes may also hold stale
    /// slots, which `Entry::queued` tells apart.
    lanes: Lanes<T>,
    /// Live slots in `lanes`.
    ready: usize,
    /// Every item that is dirty (needs processing: the queued ones plus the ones re-added
    /// while being processed) or being processed, once. One map instead of one per state so
    /// an item costs one key clone on its way through add, get and done, not two (for
    /// `ObjectKey` a clone is two string allocations), and one hash lookup per step.
    entries: HashMap<T, Entry>,
    /// Entries with `added` set.
    dirty: usize,
    /// Entries with `started` set.
    processing: usize,
    /// Dirty items per priority for `workqueue_depth{priority}`, once the queue has seen a
    /// priority other than the default and has metrics (until then the depth series has no
    /// priority label, as client-go's plain queue).
    depth_by_priority: Option<Vec<PriorityDepth>>,
    /// Items scheduled by `add_after`, with their deadline, a sequence number that keeps
    /// equal deadlines apart (and in FIFO order) in `deadlines`, and their priority.
    waiting: HashMap<T, Waiting>,
    deadlines: BTreeMap<(Instant, u64), T>,
    next_seq: u64,
    shutting_down: bool,
    /// What caused each traced item to be queued (see [`crate::trace`]), until it is handed
    /// out: at most one per dirty or waiting item, each with a capped list of links. Empty
    /// (and unallocated) unless tracing is on.
    traces: HashMap<T, crate::trace::Cause>,
    /// Set by `shut_down_with_drain`: keep handing out what was queued before the shutdown.
    drain: bool,
    timer_running: bool,
}

/// Where an item is; an entry with neither `added` nor `started` is removed.
#[derive(Clone, Copy)]
struct Entry {
    /// Dirty: when it was added, for the queue duration metric.
    added: Option<Instant>,
    /// Being processed: when it was handed out.
    started: Option<Instant>,
    /// While dirty: the highest priority it was added with since it was last handed out.
    priority: i32,
    /// The sequence number of its live slot in the lanes, `NOT_QUEUED` when it has none
    /// (being processed). A slot whose number or lane priority differs is stale.
    queued: u64,
}

const NOT_QUEUED: u64 = u64::MAX;

/// A delayed add: deadline, its key in `deadlines`, and the priority to add with.
#[derive(Clone, Copy)]
struct Waiting {
    deadline: Instant,
    seq: u64,
    priority: i32,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // Every critical section restores the invariants above before it can panic (the only
        // calls that may panic are allocations and the user's Hash/Eq), so the state of a
        // poisoned lock is still usable and workers should not all die with the one that
        // panicked.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<T> Drop for Shared<T> {
    fn drop(&mut self) {
        // The timer task only holds a weak reference; wake it so it sees the queue is gone.
        self.timer_wake.notify_one();
    }
}

/// Sizes of the internal collections, for tests that check memory stays flat.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InternalSizes {
    pub queued: usize,
    pub dirty: usize,
    pub processing: usize,
    pub waiting: usize,
    /// Total allocated capacity of the queue and the hash maps, in entries.
    pub capacity: usize,
}

/// Configures a [`WorkQueue`]: its rate limiter and metrics.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use prometheus_client::registry::Registry;
/// use crwatch::queue::{ItemExponential, QueueMetrics, WorkQueue};
///
/// let mut registry = Registry::default();
/// let metrics = QueueMetrics::new(&mut registry);
/// let queue: WorkQueue<String> = WorkQueue::builder("database")
///     .rate_limiter(ItemExponential::new(Duration::from_millis(100), Duration::from_secs(60)))
///     .metrics(metrics, "database")
///     .build();
/// assert_eq!(queue.name(), "database");
/// ```
pub struct WorkQueueBuilder<T> {
    name: String,
    limiter: Option<Box<dyn RateLimiter<T>>>,
    metrics: Option<(QueueMetrics, String)>,
    max_wait: Duration,
}

impl<T> fmt::Debug for WorkQueueBuilder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkQueueBuilder")
            .field("name", &self.name)
            .field("custom_rate_limiter", &self.limiter.is_some())
            .field("controller", &self.metrics.as_ref().map(|(_, c)| c))
            .field("max_wait", &self.max_wait)
            .finish()
    }
}

impl<T> WorkQueueBuilder<T>
where
    T: Clone + Eq + Hash + Send + Sync + fmt::Debug + 'static,
{
    /// Replaces the default rate limiter ([`default_controller_rate_limiter`]).
    ///
    /// ```
    /// use std::time::Duration;
    /// use crwatch::queue::{FastSlow, WorkQueue};
    ///
    /// let queue: WorkQueue<u32> = WorkQueue::builder("q")
    ///     .rate_limiter(FastSlow::new(Duration::from_millis(10), Duration::from_secs(10), 3))
    ///     .build();
    /// # drop(queue);
    /// ```
    #[must_use]
    pub fn rate_limiter(mut self, limiter: impl RateLimiter<T> + 'static) -> Self {
        self.limiter = Some(Box::new(limiter));
        self
    }

    /// Records the queue's metrics in `metrics`, labelled `name` = the queue's name and
    /// `controller` = `controller`.
    ///
    /// ```
    /// use prometheus_client::registry::Registry;
    /// use crwatch::queue::{QueueMetrics, WorkQueue};
    ///
    /// let mut registry = Registry::default();
    /// let metrics = QueueMetrics::new(&mut registry);
    /// let queue: WorkQueue<u32> = WorkQueue::builder("q").metrics(metrics.clone(), "my-controller").build();
    /// # drop(queue);
    /// ```
    #[must_use]
    pub fn metrics(mut self, metrics: QueueMetrics, controller: impl Into<String>) -> Self {
        self.metrics = Some((metrics, controller.into()));
        self
    }

    /// Sets how long a ready item may wait for higher-priority work before it is aged and
    /// handed out ahead of it on every other get (see the [module docs](crate::queue) for the exact
    /// bound); [`DEFAULT_MAX_WAIT`] (60 s) unless set. Fails outside [`MAX_WAIT_RANGE`]
    /// (10 s to 1 h).
    ///
    /// ```
    /// use std::time::Duration;
    /// use crwatch::queue::WorkQueue;
    ///
    /// let queue: WorkQueue<String> = WorkQueue::builder("q")
    ///     .max_wait(Duration::from_secs(30))?
    ///     .build();
    /// assert!(WorkQueue::<String>::builder("q").max_wait(Duration::from_secs(1)).is_err());
    /// # Ok::<(), crwatch::queue::QueueConfigError>(())
    /// ```
    pub fn max_wait(mut self, max_wait: Duration) -> Result<Self, QueueConfigError> {
        if !MAX_WAIT_RANGE.contains(&max_wait) {
            return Err(QueueConfigError::MaxWaitOutOfRange {
                queue: self.name,
                max_wait,
            });
        }
        self.max_wait = max_wait;
        Ok(self)
    }

    /// Creates the queue. No task is started yet: the timer behind
    /// [`add_after`](WorkQueue::add_after) is spawned on the current Tokio runtime when first
    /// needed.
    ///
    /// ```
    /// use crwatch::queue::WorkQueue;
    ///
    /// let queue: WorkQueue<String> = WorkQueue::builder("q").build();
    /// assert!(queue.is_empty());
    /// ```
    pub fn build(self) -> WorkQueue<T> {
        let controller = self.metrics.as_ref().map(|(_, c)| c.clone()).unwrap_or_default();
        let labels = QueueLabels {
            name: self.name,
            controller,
        };
        let series = self.metrics.as_ref().map(|(m, _)| m.for_queue(&labels));
        let shared = Arc::new(Shared {
            labels,
            limiter: self
                .limiter
                .unwrap_or_else(|| Box::new(default_controller_rate_limiter())),
            series,
            max_wait: self.max_wait,
            state: Mutex::new(State {
                lanes: Lanes::new(),
                ready: 0,
                entries: HashMap::new(),
                dirty: 0,
                processing: 0,
                depth_by_priority: None,
                waiting: HashMap::new(),
                deadlines: BTreeMap::new(),
                next_seq: 0,
                shutting_down: false,
                traces: HashMap::new(),
                drain: false,
                timer_running: false,
            }),
            item_ready: Notify::new(),
            drained: Notify::new(),
            timer_wake: Arc::new(Notify::new()),
        });
        if let Some((metrics, _)) = &self.metrics {
            let weak: Weak<Shared<T>> = Arc::downgrade(&shared);
            metrics.track(weak);
        }
        WorkQueue { shared }
    }
}

impl<T> WorkQueue<T>
where
    T: Clone + Eq + Hash + Send + Sync + fmt::Debug + 'static,
{
    /// Creates a queue with the default controller rate limiter and no metrics.
    ///
    /// ```
    /// use crwatch::queue::WorkQueue;
    ///
    /// let queue: WorkQueue<String> = WorkQueue::new("database");
    /// assert_eq!(queue.name(), "database");
    /// ```
    pub fn new(name: &str) -> Self {
        Self::builder(name).build()
    }

    /// Starts configuring a queue named `name`.
    ///
    /// ```
    /// use crwatch::queue::{Bucket, WorkQueue};
    ///
    /// let queue: WorkQueue<String> = WorkQueue::builder("database").rate_limiter(Bucket::new(1.0, 1)).build();
    /// # drop(queue);
    /// ```
    pub fn builder(name: &str) -> WorkQueueBuilder<T> {
        WorkQueueBuilder {
            name: name.to_owned(),
            limiter: None,
            metrics: None,
            max_wait: DEFAULT_MAX_WAIT,
        }
    }

    /// The queue's name (the `name` label of its metrics).
    ///
    /// ```
    /// use crwatch::queue::WorkQueue;
    ///
    /// assert_eq!(WorkQueue::<u32>::new("q").name(), "q");
    /// ```
    pub fn name(&self) -> &str {
        &self.shared.labels.name
    }

    /// Queues `item` for processing, with [`Priority::DEFAULT`].
    ///
    /// Does nothing if the item is already queued or the queue is shutting down. If the item is
    /// being processed, it is queued again once the worker calls [`done`](Self::done).
    ///
    /// ```
    /// use crwatch::queue::WorkQueue;
    ///
    /// let queue = WorkQueue::new("q");
    /// queue.add("default/db");
    /// queue.add("default/db");
    /// assert_eq!(queue.len(), 1);
    /// ```
    pub fn add(&self, item: T) {
        self.add_with_priority(item, Priority::DEFAULT);
    }

    /// Queues `item` for processing with `priority` (see [`Priority`]): higher priorities are
    /// handed out first, FIFO within a priority, subject to aging (see the
    /// [module docs](crate::queue)).
    ///
    /// An item already queued with a lower priority is raised to `priority`, keeping its place
    /// in time (it goes before the items of its new priority that became ready after it); one
    /// queued with a higher priority keeps it. An item being processed comes back after
    /// [`done`](Self::done) with the highest priority it was re-added with meanwhile.
    ///
    /// ```
    /// use crwatch::queue::{Priority, WorkQueue};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let queue = WorkQueue::new("q");
    /// queue.add_with_priority("a", Priority::LOW);
    /// queue.add_with_priority("b", Priority::LOW);
    /// queue.add_with_priority("b", Priority::HIGH); // raised
    /// queue.add_with_priority("b", Priority::LOW); // never lowered
    /// assert_eq!(queue.len(), 2);
    /// assert_eq!(queue.get_with_priority().await, Some(("b", Priority::HIGH)));
    /// assert_eq!(queue.get_with_priority().await, Some(("a", Priority::LOW)));
    /// # }
    /// ```
    pub fn add_with_priority(&self, item: T, priority: i32) {
        let mut state = self.shared.lock();
        if state.shutting_down {
            return;
        }
        // Read under the lock, so that the order of becoming ready (the lanes' sequence
        // numbers) and the ready times aging compares agree.
        let now = Instant::now();
        self.shared.add_locked(&mut state, item, priority, now);
    }

    /// Queues `item` once `delay` has passed; a zero delay adds it at once. The item enters with
    /// [`Priority::DEFAULT`]; see [`add_with_opts`](Self::add_with_opts) for others.
    ///
    /// A key already waiting keeps the earlier of its two deadlines (and the higher of its two
    /// priorities). Waiting does not block other adds: an [`add`](Self::add) in the meantime
    /// queues the key at once, and the delayed add still happens at its deadline (as in
    /// client-go). Delayed items that are not due when the queue shuts down are dropped.
    ///
    /// The delays are served by a small task spawned on the current Tokio runtime on first use;
    /// it ends when the queue shuts down or is dropped. Called outside a runtime, the item waits
    /// until the first [`get`](Self::get) starts that task.
    ///
    /// ```
    /// use std::time::Duration;
    /// use crwatch::queue::WorkQueue;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let queue = WorkQueue::new("q");
    /// queue.add_after("later", Duration::from_millis(20));
    /// queue.add_after("sooner", Duration::from_millis(10));
    /// assert!(queue.is_empty());
    /// assert_eq!(queue.get().await, Some("sooner"));
    /// assert_eq!(queue.get().await, Some("later"));
    /// # }
    /// ```
    pub fn add_after(&self, item: T, delay: Duration) {
        self.add_after_with_priority(item, delay, Priority::DEFAULT);
    }

    /// [`add_after`](Self::add_after) with a priority: the item enters the queue at `priority`
    /// when `delay` has passed.
    ///
    /// ```
    /// use std::time::Duration;
    /// use crwatch::queue::{Priority, WorkQueue};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let queue = WorkQueue::new("q");
    /// queue.add_after_with_priority("resync", Duration::from_secs(1), Priority::LOW);
    /// assert!(queue.is_empty());
    /// assert_eq!(queue.get_with_priority().await, Some(("resync", Priority::LOW)));
    /// # }
    /// ```
    pub fn add_after_with_priority(&self, item: T, delay: Duration, priority: i32) {
        if delay.is_zero() {
            return self.add_with_priority(item, priority);
        }
        let now = Instant::now();
        // A delay too large for an Instant means "practically never"; keep it finite so the
        // timer can still sleep on it.
        let deadline = now.checked_add(delay).unwrap_or_else(|| now + FAR_FUTURE);
        let spawn_timer = {
            let mut state = self.shared.lock();
            if state.shutting_down {
                return;
            }
            let mut priority = priority;
            match state.waiting.get_mut(&item) {
                Some(waiting) if waiting.deadline <= deadline => {
                    waiting.priority = waiting.priority.max(priority);
                    return;
                }
                Some(waiting) => {
                    priority = priority.max(waiting.priority);
                    let key = (waiting.deadline, waiting.seq);
                    state.deadlines.remove(&key);
                }
                None => {}
            }
            let seq = state.next_seq;
            state.next_seq += 1;
            let earliest = state
                .deadlines
                .first_key_value()
                .is_none_or(|(&first, _)| (deadline, seq) < first);
            state.deadlines.insert((deadline, seq), item.clone());
            let waiting = Waiting {
                deadline,
                seq,
                priority,
            };
            state.waiting.insert(item, waiting);
            if earliest {
                self.shared.timer_wake.notify_one();
            }
            !std::mem::replace(&mut state.timer_running, true)
        };
        if spawn_timer {
            self.spawn_timer();
        }
    }

    /// Queues `item` after the delay the rate limiter gives it, and counts a retry. The item
    /// enters with [`Priority::DEFAULT`].
    ///
    /// ```
    /// use std::time::Duration;
    /// use crwatch::queue::WorkQueue;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let queue = WorkQueue::new("q");
    /// let start = tokio::time::Instant::now();
    /// queue.add_rate_limited("default/db");
    /// assert_eq!(queue.get().await, Some("default/db"));
    /// assert_eq!(start.elapsed(), Duration::from_millis(5));
    /// assert_eq!(queue.num_requeues(&"default/db"), 1);
    /// # }
    /// ```
    pub fn add_rate_limited(&self, item: T) {
        self.add_rate_limited_with_priority(item, Priority::DEFAULT);
    }

    /// [`add_rate_limited`](Self::add_rate_limited) with a priority, e.g. to keep the priority a
    /// failed item was handed out with ([`get_with_priority`](Self::get_with_priority)).
    ///
    /// ```
    /// use crwatch::queue::{Priority, WorkQueue};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let queue = WorkQueue::new("q");
    /// queue.add_with_priority("a", Priority::LOW);
    /// let (key, priority) = queue.get_with_priority().await.unwrap();
    /// queue.add_rate_limited_with_priority(key, priority); // failed: retry, still low
    /// queue.done(&key);
    /// assert_eq!(queue.get_with_priority().await, Some(("a", Priority::LOW)));
    /// # }
    /// ```
    pub fn add_rate_limited_with_priority(&self, item: T, priority: i32) {
        let delay = self.shared.limiter.when(&item);
        if let Some(series) = &self.shared.series {
            series.retries.inc();
        }
        self.add_after_with_priority(item, delay, priority);
    }

    /// Adds `item` as controller-runtime's `AddWithOpts` does: after [`AddOpts::after`], or the
    /// rate limiter's delay if [`AddOpts::rate_limited`] (the shorter one when both are set),
    /// with [`AddOpts::priority`]. A rate-limited add counts a retry, as
    /// [`add_rate_limited`](Self::add_rate_limited).
    ///
    /// ```
    /// use std::time::Duration;
    /// use crwatch::queue::{AddOpts, Priority, WorkQueue};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let queue = WorkQueue::new("q");
    /// let start = tokio::time::Instant::now();
    /// let opts = AddOpts { after: Duration::from_secs(60), rate_limited: true, priority: Priority::LOW };
    /// queue.add_with_opts("a", opts);
    /// assert_eq!(queue.get_with_priority().await, Some(("a", Priority::LOW)));
    /// assert_eq!(start.elapsed(), Duration::from_millis(5)); // the limiter's 5 ms was shorter
    /// # }
    /// ```
    pub fn add_with_opts(&self, item: T, opts: AddOpts) {
        let mut delay = opts.after;
        if opts.rate_limited {
            let limited = self.shared.limiter.when(&item);
            if let Some(series) = &self.shared.series {
                series.retries.inc();
            }
            if delay.is_zero() || limited < delay {
                delay = limited;
            }
        }
        self.add_after_with_priority(item, delay, opts.priority);
    }

    /// [`add_with_opts`](Self::add_with_opts), remembering what caused the add (the span of the
    /// watch event being handled, see [`crate::trace`]) with the item until it is handed out
    /// by [`get_traced`](Self::get_traced). An item already carrying a cause keeps it and links
    /// this one.
    pub fn add_traced(&self, item: T, opts: AddOpts, cause: crate::trace::Cause) {
        {
            let mut state = self.shared.lock();
            if state.shutting_down {
                return;
            }
            match state.traces.get_mut(&item) {
                Some(first) => first.merge(cause),
                None => {
                    state.traces.insert(item.clone(), cause);
                }
            }
        }
        self.add_with_opts(item, opts);
    }

    /// How many items carry a cause now (tests: it must not grow past the pending items).
    #[doc(hidden)]
    pub fn traced_len(&self) -> usize {
        self.shared.lock().traces.len()
    }

    /// [`add_rate_limited_with_priority`](Self::add_rate_limited_with_priority) with a cause
    /// (see [`add_traced`](Self::add_traced)), which records the rate limiter's delay.
    pub fn add_rate_limited_traced(&self, item: T, priority: i32, cause: crate::trace::Cause) {
        let delay = self.shared.limiter.when(&item);
        if let Some(series) = &self.shared.series {
            series.retries.inc();
        }
        let opts = AddOpts {
            after: delay,
            priority,
            ..AddOpts::default()
        };
        self.add_traced(item, opts, cause.with_backoff(delay));
    }

    /// Makes the rate limiter forget `item`, so its next failure starts from the shortest
    /// backoff. Call it when the item was processed successfully.
    ///
    /// ```
    /// use crwatch::queue::WorkQueue;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let queue = WorkQueue::new("q");
    /// queue.add_rate_limited("a");
    /// queue.forget(&"a");
    /// assert_eq!(queue.num_requeues(&"a"), 0);
    /// # }
    /// ```
    pub fn forget(&self, item: &T) {
        self.shared.limiter.forget(item);
    }

    /// How many times `item` was rate-limited since it was last forgotten.
    ///
    /// ```
    /// use crwatch::queue::WorkQueue;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let queue = WorkQueue::new("q");
    /// queue.add_rate_limited("a");
    /// queue.add_rate_limited("a");
    /// assert_eq!(queue.num_requeues(&"a"), 2);
    /// # }
    /// ```
    pub fn num_requeues(&self, item: &T) -> u32 {
        self.shared.limiter.num_requeues(item)
    }

    /// Waits for the next item and marks it as being processed; the caller must call
    /// [`done`](Self::done) with it afterwards.
    ///
    /// Returns `None` once the queue is shut down — after [`shut_down_with_drain`] only when
    /// nothing is left to hand out. Cancel-safe: a `get` dropped before it returns takes no
    /// item.
    ///
    /// [`shut_down_with_drain`]: Self::shut_down_with_drain
    ///
    /// ```
    /// use crwatch::queue::WorkQueue;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let queue = WorkQueue::new("q");
    /// queue.add(1);
    /// let item = queue.get().await;
    /// assert_eq!(item, Some(1));
    /// queue.done(&1);
    /// queue.shut_down();
    /// assert_eq!(queue.get().await, None);
    /// # }
    /// ```
    pub async fn get(&self) -> Option<T> {
        self.get_with_priority().await.map(|(item, _)| item)
    }

    /// [`get`](Self::get), also returning the priority the item was queued with, e.g. to
    /// requeue it with the same priority after a failure (as controller-runtime's controllers
    /// do).
    ///
    /// ```
    /// use crwatch::queue::{Priority, WorkQueue};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let queue = WorkQueue::new("q");
    /// queue.add_with_priority("a", Priority::LOW);
    /// assert_eq!(queue.get_with_priority().await, Some(("a", Priority::LOW)));
    /// # }
    /// ```
    pub async fn get_with_priority(&self) -> Option<(T, i32)> {
        self.get_traced()
            .await
            .map(|(item, priority, _)| (item, priority))
    }

    /// [`get_with_priority`](Self::get_with_priority), also returning what caused the item to
    /// be queued when it was added by [`add_traced`](Self::add_traced).
    pub async fn get_traced(&self) -> Option<(T, i32, Option<crate::trace::Cause>)> {
        loop {
            let mut notified = pin!(self.shared.item_ready.notified());
            // Register as a waiter before looking at the state, so an add between the check
            // and the await cannot be missed.
            notified.as_mut().enable();
            let spawn_timer = {
                let mut state = self.shared.lock();
                if state.shutting_down && !state.drain {
                    return None;
                }
                if let Some((item, priority)) = self.shared.take_ready(&mut state) {
                    let cause = match state.traces.is_empty() {
                        true => None,
                        false => {
                            let cause = state.traces.remove(&item);
                            shrink_map(&mut state.traces);
                            cause
                        }
                    };
                    return Some((item, priority, cause));
                }
                if state.shutting_down && state.dirty == 0 {
                    return None;
                }
                // `add_after` outside a runtime could not start the timer; we are in one now.
                !state.waiting.is_empty() && !std::mem::replace(&mut state.timer_running, true)
            };
            if spawn_timer {
                self.spawn_timer();
            }
            notified.await;
        }
    }

    /// Marks `item` as processed. If it was added again while being processed, it is queued
    /// now. Calling it for an item that is not being processed does nothing.
    ///
    /// ```
    /// use crwatch::queue::WorkQueue;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let queue = WorkQueue::new("q");
    /// queue.add("a");
    /// let a = queue.get().await.unwrap();
    /// queue.add("a");
    /// assert_eq!(queue.len(), 0); // not handed out twice at once
    /// queue.done(&a);
    /// assert_eq!(queue.len(), 1);
    /// # }
    /// ```
    pub fn done(&self, item: &T) {
        let shared = &self.shared;
        let mut guard = shared.lock();
        let state = &mut *guard;
        let Some(entry) = state.entries.get_mut(item) else {
            return;
        };
        let Some(started) = entry.started.take() else {
            return;
        };
        state.processing -= 1;
        let again = entry.added.is_some();
        // The clock is read only when needed: this is the hot path.
        let now = if again {
            // Ready now, at the highest priority it was re-added with while processed.
            let now = Instant::now();
            let seq = state.lanes.take_seq();
            entry.queued = seq;
            let priority = entry.priority;
            state.lanes.push(priority, item.clone(), seq, now);
            state.ready += 1;
            Some(now)
        } else {
            state.entries.remove(item);
            shrink_map(&mut state.entries);
            shared.series.as_ref().map(|_| Instant::now())
        };
        if let (Some(series), Some(now)) = (&shared.series, now) {
            series
                .work_duration
                .observe(now.saturating_duration_since(started).as_secs_f64());
        }
        if again {
            shared.item_ready.notify_one();
        }
        if state.shutting_down {
            shared.drained.notify_waiters();
        }
    }

    /// Number of items ready to be handed out (not counting items being processed, items
    /// re-added while being processed, or delayed items not yet due).
    ///
    /// ```
    /// use crwatch::queue::WorkQueue;
    ///
    /// let queue = WorkQueue::new("q");
    /// queue.add("a");
    /// assert_eq!(queue.len(), 1);
    /// ```
    pub fn len(&self) -> usize {
        self.shared.lock().ready
    }

    /// Whether no item is ready to be handed out.
    ///
    /// ```
    /// use crwatch::queue::WorkQueue;
    ///
    /// assert!(WorkQueue::<u32>::new("q").is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Shuts the queue down at once: [`get`](Self::get) returns `None`, new adds are ignored,
    /// and queued and delayed items are dropped. Workers still processing an item may call
    /// [`done`](Self::done). Also ends a drain started by
    /// [`shut_down_with_drain`](Self::shut_down_with_drain) without handing out the rest, e.g.
    /// when a graceful shutdown takes too long.
    ///
    /// ```
    /// use crwatch::queue::WorkQueue;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let queue = WorkQueue::new("q");
    /// queue.add("a");
    /// queue.shut_down();
    /// assert!(queue.is_shutting_down());
    /// assert_eq!(queue.get().await, None);
    /// queue.add("b"); // ignored
    /// assert!(queue.is_empty());
    /// # }
    /// ```
    pub fn shut_down(&self) {
        let shared = &self.shared;
        let mut state = shared.lock();
        state.shutting_down = true;
        state.drain = false;
        state.lanes.clear();
        state.ready = 0;
        // Nothing is dirty any more; items being processed stay until their `done`.
        state.entries.retain(|_, e| {
            e.added = None;
            e.queued = NOT_QUEUED;
            e.started.is_some()
        });
        state.dirty = 0;
        shrink_map(&mut state.entries);
        shared.clear_waiting(&mut state);
        if let Some(series) = &shared.series {
            series.depth.set(0);
        }
        for depth in state.depth_by_priority.iter_mut().flatten() {
            depth.set(0);
        }
        drop(state);
        tracing::debug!(queue = %shared.labels.name, "work queue shut down");
        shared.item_ready.notify_waiters();
        shared.drained.notify_waiters();
        shared.timer_wake.notify_one();
    }

    /// Shuts the queue down gracefully and waits until the work is drained: new adds are
    /// ignored and delayed items dropped, but [`get`](Self::get) keeps handing out the items
    /// already queued (including items re-added while being processed); this resolves once all
    /// of them are [`done`](Self::done) and nothing is being processed.
    ///
    /// It waits for workers, so it never resolves if none is running while items are queued:
    /// bound it with a timeout (controller-runtime gives a graceful shutdown 30 s) and call
    /// [`shut_down`](Self::shut_down) when that passes.
    ///
    /// ```
    /// use std::time::Duration;
    /// use crwatch::queue::WorkQueue;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let queue = WorkQueue::new("q");
    /// queue.add("a");
    /// let worker = tokio::spawn({
    ///     let queue = queue.clone();
    ///     async move {
    ///         while let Some(item) = queue.get().await {
    ///             queue.done(&item);
    ///         }
    ///     }
    /// });
    /// if tokio::time::timeout(Duration::from_secs(30), queue.shut_down_with_drain()).await.is_err() {
    ///     queue.shut_down();
    /// }
    /// worker.await.unwrap();
    /// # }
    /// ```
    pub async fn shut_down_with_drain(&self) {
        let shared = &self.shared;
        {
            let mut state = shared.lock();
            if !state.shutting_down {
                state.shutting_down = true;
                state.drain = true;
            }
            shared.clear_waiting(&mut state);
        }
        tracing::debug!(queue = %shared.labels.name, "work queue draining");
        // Workers waiting on an empty queue must see that nothing more will come.
        shared.item_ready.notify_waiters();
        shared.timer_wake.notify_one();
        loop {
            let mut notified = pin!(shared.drained.notified());
            notified.as_mut().enable();
            {
                let state = shared.lock();
                if state.processing == 0 && (!state.drain || state.dirty == 0) {
                    return;
                }
            }
            notified.await;
        }
    }

    /// Whether [`shut_down`](Self::shut_down) or
    /// [`shut_down_with_drain`](Self::shut_down_with_drain) was called.
    ///
    /// ```
    /// use crwatch::queue::WorkQueue;
    ///
    /// let queue = WorkQueue::<u32>::new("q");
    /// assert!(!queue.is_shutting_down());
    /// queue.shut_down();
    /// assert!(queue.is_shutting_down());
    /// ```
    pub fn is_shutting_down(&self) -> bool {
        self.shared.lock().shutting_down
    }

    /// Sizes of the internal collections, for leak tests.
    #[doc(hidden)]
    pub fn internal_sizes(&self) -> InternalSizes {
        let state = self.shared.lock();
        let (slots, lanes_capacity) = state.lanes.sizes();
        InternalSizes {
            // Stale slots count too: they must not pile up either.
            queued: state.ready.max(slots),
            dirty: state.dirty,
            processing: state.processing,
            waiting: state.waiting.len().max(state.deadlines.len()),
            capacity: lanes_capacity + state.entries.capacity() + state.waiting.capacity(),
        }
    }

    fn spawn_timer(&self) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            // No runtime here; `get` starts the timer later.
            self.shared.lock().timer_running = false;
            return;
        };
        // The guard lives in the future itself, so it also resets the flag if the runtime drops
        // the task without ever polling it (runtime shutting down); a later call then spawns
        // the timer again.
        let guard = TimerGuard(Arc::downgrade(&self.shared));
        let wake = self.shared.timer_wake.clone();
        handle.spawn(async move {
            let guard = guard;
            run_timer(&guard.0, &wake).await;
        });
    }
}

/// Upper bound for deadlines, like tokio's own "far future" (about 30 years).
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

impl<T> Shared<T>
where
    T: Clone + Eq + Hash,
{
    /// Adds `item` with `priority` unless it is already pending with that priority or a higher
    /// one; the caller checked for shutdown and read `now` under the lock.
    fn add_locked(&self, state: &mut State<T>, item: T, priority: i32, now: Instant) {
        if priority != Priority::DEFAULT {
            self.note_priority(state, priority);
        }
        let queued = match state.entries.get_mut(&item) {
            Some(entry) if entry.added.is_some() => {
                // Already pending: only a higher priority changes anything.
                let old = entry.priority;
                if priority <= old {
                    return;
                }
                entry.priority = priority;
                if entry.queued != NOT_QUEUED {
                    let seq = entry.queued;
                    state.lanes.raise(old, priority, item, seq);
                }
                self.depth_changed(state, old, -1);
                self.depth_changed(state, priority, 1);
                return;
            }
            // Being processed: `done` queues it.
            Some(entry) => {
                entry.added = Some(now);
                entry.priority = priority;
                None
            }
            None => {
                let seq = state.lanes.take_seq();
                let entry = Entry {
                    added: Some(now),
                    started: None,
                    priority,
                    queued: seq,
                };
                state.entries.insert(item.clone(), entry);
                Some(seq)
            }
        };
        state.dirty += 1;
        if let Some(series) = &self.series {
            series.adds.inc();
        }
        self.depth_changed(state, priority, 1);
        let Some(seq) = queued else {
            return;
        };
        state.lanes.push(priority, item, seq, now);
        state.ready += 1;
        self.item_ready.notify_one();
    }

    /// Hands out the next ready item (see `Lanes::choose`) and marks it as being processed.
    fn take_ready(&self, state: &mut State<T>) -> Option<(T, i32)> {
        if state.ready == 0 {
            return None;
        }
        let now = Instant::now();
        loop {
            if state.lanes.several() {
                let entries = &state.entries;
                state.lanes.purge_fronts(|slot, priority| {
                    entries
                        .get(&slot.item)
                        .is_some_and(|e| e.queued == slot.seq && e.priority == priority)
                });
            }
            let popped = state
                .lanes
                .choose(now, self.max_wait)
                .and_then(|choice| Some((choice, state.lanes.pop(choice)?)));
            let Some((choice, (slot, priority))) = popped else {
                // `ready` counts live slots, so this cannot happen; resynchronise rather than
                // spin.
                state.ready = 0;
                return None;
            };
            let Some(entry) = state.entries.get_mut(&slot.item) else {
                continue;
            };
            if entry.queued != slot.seq || entry.priority != priority {
                // Left behind by a raise (fronts are purged above when there are several
                // lanes; a lone lane may still hold some).
                continue;
            }
            state.lanes.took(choice);
            entry.queued = NOT_QUEUED;
            let added = entry.added.take();
            if entry.started.replace(now).is_none() {
                state.processing += 1;
            }
            state.ready -= 1;
            if state.ready == 0 {
                // Whatever is left in the lanes is stale.
                state.lanes.clear();
            }
            if added.is_some() {
                state.dirty -= 1;
                self.depth_changed(state, priority, -1);
            }
            if let (Some(series), Some(added)) = (&self.series, added) {
                series
                    .queue_duration
                    .observe(now.saturating_duration_since(added).as_secs_f64());
            }
            if state.shutting_down && state.dirty == 0 {
                // That was the last item of a drain: the other workers can stop waiting.
                self.item_ready.notify_waiters();
            }
            return Some((slot.item, priority));
        }
    }

    /// The first time a queue with metrics sees a priority other than the default, its
    /// `workqueue_depth` series moves to per-priority series (every item so far had the default
    /// priority), as controller-runtime's priority queue reports it.
    fn note_priority(&self, state: &mut State<T>, priority: i32) {
        if state.depth_by_priority.is_none()
            && let Some(series) = &self.series
        {
            let by_priority = series.split_depth_by_priority(gauge_value(state.dirty));
            state.depth_by_priority = Some(by_priority);
            tracing::debug!(queue = %self.labels.name, priority, "work queue depth now by priority");
        }
    }

    /// Updates `workqueue_depth` after the pending items of `priority` changed by `delta`
    /// (`state.dirty` already counts it).
    fn depth_changed(&self, state: &mut State<T>, priority: i32, delta: i64) {
        let Some(series) = &self.series else {
            return;
        };
        match &mut state.depth_by_priority {
            None => {
                series.depth.set(gauge_value(state.dirty));
            }
            Some(by_priority) => series.add_depth(by_priority, priority, delta),
        }
    }

    /// Adds every delayed item whose deadline has passed, in deadline order.
    fn promote_due(&self, state: &mut State<T>, now: Instant) {
        while let Some(entry) = state.deadlines.first_entry()
            && entry.key().0 <= now
        {
            let item = entry.remove();
            let priority = state
                .waiting
                .remove(&item)
                .map_or(Priority::DEFAULT, |w| w.priority);
            self.add_locked(state, item, priority, now);
        }
        shrink_map(&mut state.waiting);
    }

    fn clear_waiting(&self, state: &mut State<T>) {
        state.waiting = HashMap::new();
        state.deadlines = BTreeMap::new();
        // Only items still to be handed out keep their causes.
        if !state.traces.is_empty() {
            let entries = &state.entries;
            state
                .traces
                .retain(|item, _| entries.get(item).is_some_and(|e| e.added.is_some()));
            shrink_map(&mut state.traces);
        }
    }
}

fn gauge_value(len: usize) -> i64 {
    i64::try_from(len).unwrap_or(i64::MAX)
}

struct TimerGuard<T>(Weak<Shared<T>>);

impl<T> Drop for TimerGuard<T> {
    fn drop(&mut self) {
        if let Some(shared) = self.0.upgrade() {
            shared.lock().timer_running = false;
        }
    }
}

/// Moves delayed items into the queue when they are due. Holds only a weak reference between
/// wake-ups, so dropping the last `WorkQueue` ends it, as does a shutdown.
async fn run_timer<T: Clone + Eq + Hash>(queue: &Weak<Shared<T>>, wake: &Notify) {
    loop {
        let mut notified = pin!(wake.notified());
        notified.as_mut().enable();
        let next_deadline = {
            let Some(shared) = queue.upgrade() else {
                return;
            };
            let mut state = shared.lock();
            if state.shutting_down {
                return;
            }
            shared.promote_due(&mut state, Instant::now());
            state
                .deadlines
                .first_key_value()
                .map(|(&(deadline, _), _)| deadline)
        };
        match next_deadline {
            Some(deadline) => {
                tokio::select! {
                    () = &mut notified => {}
                    () = tokio::time::sleep_until(deadline) => {}
                }
            }
            None => notified.await,
        }
    }
}

impl<T> InProgress for Shared<T>
where
    T: Send + Sync,
{
    fn labels(&self) -> &QueueLabels {
        &self.labels
    }

    fn in_progress_seconds(&self, now: Instant) -> (f64, f64) {
        let state = self.lock();
        let started = state.entries.values().filter_map(|e| e.started);
        started.fold((0.0, 0.0), |(sum, max), started| {
            let secs = now.saturating_duration_since(started).as_secs_f64();
            (sum + secs, f64::max(max, secs))
        })
    }
}

impl<T> fmt::Debug for WorkQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.shared.lock();
        f.debug_struct("WorkQueue")
            .field("name", &self.shared.labels.name)
            .field("queued", &state.ready)
            .field("processing", &state.processing)
            .field("waiting", &state.waiting.len())
            .field("shutting_down", &state.shutting_down)
            .finish()
    }
}
