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
//!
//! Metrics with controller-runtime's names are optional, see [`QueueMetrics`].
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

pub mod metrics;
mod rate_limiter;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::hash::Hash;
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

pub use metrics::QueueMetrics;
use metrics::{InProgress, QueueLabels, QueueSeries};
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

struct Shared<T> {
    labels: QueueLabels,
    limiter: Box<dyn RateLimiter<T>>,
    series: Option<QueueSeries>,
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
    /// Items ready to be handed out, in order. Every item here is dirty and not being
    /// processed (see `entries`), so no item appears twice.
    queue: VecDeque<T>,
    /// Every item that is dirty (needs processing: the queued ones plus the ones re-added
    /// while being processed) or being processed, once. One map instead of one per state so
    /// an item costs one key clone on its way through add, get and done, not two (for
    /// `ObjectKey` a clone is two string allocations), and one hash lookup per step.
    entries: HashMap<T, Entry>,
    /// Entries with `added` set.
    dirty: usize,
    /// Entries with `started` set.
    processing: usize,
    /// Items scheduled by `add_after`, with their deadline and a sequence number that keeps
    /// equal deadlines apart (and in FIFO order) in `deadlines`.
    waiting: HashMap<T, (Instant, u64)>,
    deadlines: BTreeMap<(Instant, u64), T>,
    next_seq: u64,
    shutting_down: bool,
    /// Set by `shut_down_with_drain`: keep handing out what was queued before the shutdown.
    drain: bool,
    timer_running: bool,
}

/// Where an item is; an entry with neither is removed.
#[derive(Clone, Copy)]
struct Entry {
    /// Dirty: when it was added, for the queue duration metric.
    added: Option<Instant>,
    /// Being processed: when it was handed out.
    started: Option<Instant>,
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
}

impl<T> fmt::Debug for WorkQueueBuilder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkQueueBuilder")
            .field("name", &self.name)
            .field("custom_rate_limiter", &self.limiter.is_some())
            .field("controller", &self.metrics.as_ref().map(|(_, c)| c))
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
            state: Mutex::new(State {
                queue: VecDeque::new(),
                entries: HashMap::new(),
                dirty: 0,
                processing: 0,
                waiting: HashMap::new(),
                deadlines: BTreeMap::new(),
                next_seq: 0,
                shutting_down: false,
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

    /// Queues `item` for processing.
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
        let mut state = self.shared.lock();
        if state.shutting_down {
            return;
        }
        self.shared.add_locked(&mut state, item, Instant::now());
    }

    /// Queues `item` once `delay` has passed; a zero delay adds it at once.
    ///
    /// A key already waiting keeps the earlier of its two deadlines. Waiting does not block
    /// other adds: an [`add`](Self::add) in the meantime queues the key at once, and the delayed
    /// add still happens at its deadline (as in client-go). Delayed items that are not due when
    /// the queue shuts down are dropped.
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
        if delay.is_zero() {
            return self.add(item);
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
            match state.waiting.get(&item) {
                Some(&(existing, _)) if existing <= deadline => return,
                Some(&(existing, seq)) => {
                    state.deadlines.remove(&(existing, seq));
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
            state.waiting.insert(item, (deadline, seq));
            if earliest {
                self.shared.timer_wake.notify_one();
            }
            !std::mem::replace(&mut state.timer_running, true)
        };
        if spawn_timer {
            self.spawn_timer();
        }
    }

    /// Queues `item` after the delay the rate limiter gives it, and counts a retry.
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
        let delay = self.shared.limiter.when(&item);
        if let Some(series) = &self.shared.series {
            series.retries.inc();
        }
        self.add_after(item, delay);
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
                if let Some(item) = state.queue.pop_front() {
                    self.shared.start_processing(&mut state, &item);
                    return Some(item);
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
        let again = entry.added.is_some();
        state.processing -= 1;
        if !again {
            state.entries.remove(item);
            shrink_map(&mut state.entries);
        }
        if let Some(series) = &shared.series {
            series
                .work_duration
                .observe(Instant::now().saturating_duration_since(started).as_secs_f64());
        }
        if again {
            state.queue.push_back(item.clone());
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
        self.shared.lock().queue.len()
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
        state.queue = VecDeque::new();
        // Nothing is dirty any more; items being processed stay until their `done`.
        state.entries.retain(|_, e| {
            e.added = None;
            e.started.is_some()
        });
        state.dirty = 0;
        shrink_map(&mut state.entries);
        shared.clear_waiting(&mut state);
        if let Some(series) = &shared.series {
            series.depth.set(0);
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
        InternalSizes {
            queued: state.queue.len(),
            dirty: state.dirty,
            processing: state.processing,
            waiting: state.waiting.len().max(state.deadlines.len()),
            capacity: state.queue.capacity() + state.entries.capacity() + state.waiting.capacity(),
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
    /// Adds `item` unless it is already pending; the caller checked for shutdown.
    fn add_locked(&self, state: &mut State<T>, item: T, now: Instant) {
        let processing = match state.entries.get_mut(&item) {
            Some(entry) if entry.added.is_some() => return,
            // Being processed: `done` queues it.
            Some(entry) => {
                entry.added = Some(now);
                true
            }
            None => {
                state.entries.insert(
                    item.clone(),
                    Entry {
                        added: Some(now),
                        started: None,
                    },
                );
                false
            }
        };
        state.dirty += 1;
        if let Some(series) = &self.series {
            series.adds.inc();
            series.depth.set(gauge_value(state.dirty));
        }
        if processing {
            return;
        }
        state.queue.push_back(item);
        self.item_ready.notify_one();
    }

    /// Moves a just popped item from pending to processing.
    fn start_processing(&self, state: &mut State<T>, item: &T) {
        let now = Instant::now();
        // A queued item always has an entry; insert one anyway rather than lose track (and
        // look it up first: `entry()` would clone the key on every get).
        if !state.entries.contains_key(item) {
            let blank = Entry {
                added: None,
                started: None,
            };
            state.entries.insert(item.clone(), blank);
        }
        let Some(entry) = state.entries.get_mut(item) else {
            return;
        };
        let added = entry.added.take();
        let was_processing = entry.started.replace(now).is_some();
        if added.is_some() {
            state.dirty -= 1;
        }
        if !was_processing {
            state.processing += 1;
        }
        shrink_deque(&mut state.queue);
        if let Some(series) = &self.series {
            series.depth.set(gauge_value(state.dirty));
            if let Some(added) = added {
                series
                    .queue_duration
                    .observe(now.saturating_duration_since(added).as_secs_f64());
            }
        }
        if state.shutting_down && state.dirty == 0 {
            // That was the last item of a drain: the other workers can stop waiting.
            self.item_ready.notify_waiters();
        }
    }

    /// Adds every delayed item whose deadline has passed, in deadline order.
    fn promote_due(&self, state: &mut State<T>, now: Instant) {
        while let Some(entry) = state.deadlines.first_entry()
            && entry.key().0 <= now
        {
            let item = entry.remove();
            state.waiting.remove(&item);
            self.add_locked(state, item, now);
        }
        shrink_map(&mut state.waiting);
    }

    fn clear_waiting(&self, state: &mut State<T>) {
        state.waiting = HashMap::new();
        state.deadlines = BTreeMap::new();
    }
}

fn gauge_value(len: usize) -> i64 {
    i64::try_from(len).unwrap_or(i64::MAX)
}

fn shrink_deque<T>(queue: &mut VecDeque<T>) {
    if queue.capacity() > 64 && queue.len() * 4 < queue.capacity() {
        queue.shrink_to(queue.len() * 2);
    }
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
            .field("queued", &state.queue.len())
            .field("processing", &state.processing)
            .field("waiting", &state.waiting.len())
            .field("shutting_down", &state.shutting_down)
            .finish()
    }
}
