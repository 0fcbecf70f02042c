//! Behaviour tests of the work queue: deduplication, one worker per key, dirty re-queueing,
//! delays on the paused clock, shutdown, memory, concurrency, priorities and aging, and
//! metrics.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;
use tokio::time::{Instant, advance, timeout};

use super::*;

const MS: Duration = Duration::from_millis(1);

/// `get` without waiting: `Some(Some(item))`, `Some(None)` when shut down, `None` when it would
/// wait.
fn try_get<T>(queue: &WorkQueue<T>) -> Option<Option<T>>
where
    T: Clone + Eq + Hash + Send + Sync + fmt::Debug + 'static,
{
    queue.get().now_or_never()
}

/// `get` that fails the test instead of hanging when nothing arrives; on the paused clock the
/// hour passes instantly.
async fn next<T>(queue: &WorkQueue<T>) -> Option<T>
where
    T: Clone + Eq + Hash + Send + Sync + fmt::Debug + 'static,
{
    timeout(Duration::from_secs(3600), queue.get())
        .await
        .expect("no item within an hour")
}

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current().metrics().num_alive_tasks()
}

#[tokio::test]
async fn adding_a_queued_item_is_a_no_op_and_order_is_fifo() {
    let queue = WorkQueue::new("q");
    for item in ["a", "b", "a", "c", "b", "a"] {
        queue.add(item);
    }
    assert_eq!(queue.len(), 3);
    assert_eq!(try_get(&queue), Some(Some("a")));
    assert_eq!(try_get(&queue), Some(Some("b")));
    assert_eq!(try_get(&queue), Some(Some("c")));
    assert_eq!(try_get(&queue), None, "every item is handed out exactly once");
}

#[tokio::test]
async fn item_added_while_processing_is_processed_once_more_after_done() {
    let queue = WorkQueue::new("q");
    queue.add("a");
    queue.add("b");
    let a = try_get(&queue).flatten().unwrap();
    for _ in 0..5 {
        queue.add("a");
    }
    assert_eq!(queue.len(), 1, "only b is ready; a waits for done");
    assert_eq!(try_get(&queue), Some(Some("b")));
    assert_eq!(
        try_get(&queue),
        None,
        "a must not go to a second worker while the first has it"
    );
    queue.done(&a);
    assert_eq!(try_get(&queue), Some(Some("a")));
    queue.done(&"a");
    queue.done(&"b");
    assert_eq!(
        try_get(&queue),
        None,
        "five adds while processing mean one more run, not five"
    );
    assert_eq!(
        queue.internal_sizes(),
        InternalSizes {
            capacity: queue.internal_sizes().capacity,
            ..zero()
        }
    );
}

fn zero() -> InternalSizes {
    InternalSizes {
        queued: 0,
        dirty: 0,
        processing: 0,
        waiting: 0,
        capacity: 0,
    }
}

#[tokio::test]
async fn done_for_an_unknown_item_does_nothing() {
    let queue = WorkQueue::new("q");
    queue.done(&"never-added");
    queue.add("a");
    queue.done(&"a"); // queued, not processing
    assert_eq!(queue.len(), 1);
    assert_eq!(try_get(&queue), Some(Some("a")));
}

#[tokio::test]
async fn waiting_get_is_woken_by_add() {
    let queue = WorkQueue::new("q");
    let getter = tokio::spawn({
        let queue = queue.clone();
        async move { queue.get().await }
    });
    tokio::task::yield_now().await;
    assert!(!getter.is_finished());
    queue.add(7);
    assert_eq!(
        timeout(Duration::from_secs(5), getter).await.unwrap().unwrap(),
        Some(7)
    );
}

#[tokio::test]
async fn a_cancelled_get_takes_nothing_and_loses_no_wake_up() {
    let queue = WorkQueue::new("q");
    let mut first = Box::pin(queue.get());
    assert!(futures::poll!(first.as_mut()).is_pending());
    let second = tokio::spawn({
        let queue = queue.clone();
        async move { queue.get().await }
    });
    tokio::task::yield_now().await;
    // The first waiter is notified, then dropped before it runs: the wake-up must pass on.
    queue.add("x");
    drop(first);
    assert_eq!(
        timeout(Duration::from_secs(5), second).await.unwrap().unwrap(),
        Some("x")
    );
}

#[tokio::test]
async fn shut_down_stops_handing_out_and_ignores_adds() {
    let queue = WorkQueue::new("q");
    queue.add("a");
    queue.add("b");
    let a = try_get(&queue).flatten().unwrap();
    queue.shut_down();
    assert!(queue.is_shutting_down());
    assert_eq!(try_get(&queue), Some(None), "b is not handed out any more");
    queue.add("c");
    queue.add_after("d", MS);
    assert!(queue.is_empty());
    queue.done(&a); // in-flight work may still finish
    assert_eq!(
        queue.internal_sizes(),
        InternalSizes {
            capacity: queue.internal_sizes().capacity,
            ..zero()
        }
    );
}

#[tokio::test]
async fn shut_down_wakes_every_waiting_worker() {
    let queue: WorkQueue<u8> = WorkQueue::new("q");
    let waiting: Vec<_> = (0..3)
        .map(|_| {
            let queue = queue.clone();
            tokio::spawn(async move { queue.get().await })
        })
        .collect();
    tokio::task::yield_now().await;
    assert!(waiting.iter().all(|w| !w.is_finished()));
    queue.shut_down();
    for worker in waiting {
        assert_eq!(
            timeout(Duration::from_secs(5), worker).await.unwrap().unwrap(),
            None
        );
    }
}

#[tokio::test]
async fn drain_hands_out_queued_items_and_waits_for_done() {
    let queue = WorkQueue::new("q");
    queue.add("a");
    queue.add("b");
    let a = try_get(&queue).flatten().unwrap();
    queue.add("a"); // dirty while processing: must still run during the drain
    let mut drain = Box::pin(queue.shut_down_with_drain());
    assert!(futures::poll!(drain.as_mut()).is_pending());
    queue.add("c"); // ignored after shutdown
    assert_eq!(try_get(&queue), Some(Some("b")));
    queue.done(&"b");
    assert!(
        futures::poll!(drain.as_mut()).is_pending(),
        "a is still being processed"
    );
    queue.done(&a);
    assert!(
        futures::poll!(drain.as_mut()).is_pending(),
        "a was re-added and is queued again"
    );
    assert_eq!(try_get(&queue), Some(Some("a")));
    assert!(futures::poll!(drain.as_mut()).is_pending());
    assert_eq!(try_get(&queue), Some(None), "nothing is left to hand out");
    queue.done(&"a");
    assert!(futures::poll!(drain.as_mut()).is_ready());
}

#[tokio::test]
async fn drain_wakes_idle_workers_when_the_last_item_is_taken() {
    let queue = WorkQueue::new("q");
    queue.add(1);
    let one = try_get(&queue).flatten().unwrap();
    queue.add(1); // will be queued again by done
    let idle = tokio::spawn({
        let queue = queue.clone();
        async move { queue.get().await }
    });
    tokio::task::yield_now().await;
    let drain = tokio::spawn({
        let queue = queue.clone();
        async move { queue.shut_down_with_drain().await }
    });
    tokio::task::yield_now().await;
    assert!(
        !idle.is_finished(),
        "1 will come back, the idle worker must keep waiting"
    );
    queue.done(&one);
    assert_eq!(
        timeout(Duration::from_secs(5), idle).await.unwrap().unwrap(),
        Some(1)
    );
    assert_eq!(try_get(&queue), Some(None));
    assert!(!drain.is_finished());
    queue.done(&1);
    timeout(Duration::from_secs(5), drain).await.unwrap().unwrap();
}

#[tokio::test]
async fn shut_down_ends_a_drain_that_takes_too_long() {
    let queue = WorkQueue::new("q");
    queue.add("a");
    queue.add("b");
    let a = try_get(&queue).flatten().unwrap();
    let mut drain = Box::pin(queue.shut_down_with_drain());
    assert!(futures::poll!(drain.as_mut()).is_pending());
    queue.shut_down();
    assert!(
        futures::poll!(drain.as_mut()).is_pending(),
        "a is still being processed"
    );
    assert_eq!(try_get(&queue), Some(None), "b is dropped");
    queue.done(&a);
    assert!(futures::poll!(drain.as_mut()).is_ready());
}

#[tokio::test(start_paused = true)]
async fn delayed_item_appears_exactly_after_its_delay() {
    let queue = WorkQueue::new("q");
    let start = Instant::now();
    queue.add_after("a", Duration::from_secs(1));
    advance(999 * MS).await;
    assert!(queue.is_empty());
    assert_eq!(try_get(&queue), None);
    assert_eq!(next(&queue).await, Some("a"));
    assert_eq!(start.elapsed(), Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn delayed_items_come_in_deadline_order_and_ties_are_fifo() {
    let queue = WorkQueue::new("q");
    let start = Instant::now();
    queue.add_after("late", 30 * MS);
    queue.add_after("tie-1", 20 * MS);
    queue.add_after("early", 10 * MS);
    queue.add_after("tie-2", 20 * MS);
    queue.add_after("now", Duration::ZERO);
    assert_eq!(queue.len(), 1, "a zero delay adds at once");
    let mut seen = Vec::new();
    for _ in 0..5 {
        let item = next(&queue).await.unwrap();
        seen.push((item, start.elapsed()));
        queue.done(&item);
    }
    assert_eq!(
        seen,
        [
            ("now", Duration::ZERO),
            ("early", 10 * MS),
            ("tie-1", 20 * MS),
            ("tie-2", 20 * MS),
            ("late", 30 * MS)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn the_earliest_deadline_of_a_key_wins() {
    let queue = WorkQueue::new("q");
    let start = Instant::now();
    queue.add_after("a", Duration::from_secs(10));
    queue.add_after("a", Duration::from_secs(2));
    queue.add_after("a", Duration::from_secs(5));
    assert_eq!(next(&queue).await, Some("a"));
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    queue.done(&"a");
    // The later deadlines were merged into the earlier one, not kept.
    assert!(timeout(Duration::from_secs(60), queue.get()).await.is_err());
    assert_eq!(queue.internal_sizes().waiting, 0);
}

#[tokio::test(start_paused = true)]
async fn an_immediate_add_does_not_cancel_a_pending_delayed_add() {
    // client-go semantics: requeue-after stays scheduled even if an event comes in first.
    let queue = WorkQueue::new("q");
    let start = Instant::now();
    queue.add_after("a", Duration::from_secs(3));
    queue.add("a");
    assert_eq!(next(&queue).await, Some("a"));
    queue.done(&"a");
    assert_eq!(next(&queue).await, Some("a"));
    assert_eq!(start.elapsed(), Duration::from_secs(3));
}

#[tokio::test(start_paused = true)]
async fn delayed_item_for_a_queued_key_is_deduplicated() {
    let queue = WorkQueue::new("q");
    queue.add("a");
    queue.add_after("a", 5 * MS);
    advance(5 * MS).await;
    tokio::task::yield_now().await;
    assert_eq!(queue.len(), 1);
    assert_eq!(next(&queue).await, Some("a"));
    queue.done(&"a");
    assert_eq!(try_get(&queue), None);
}

#[tokio::test(start_paused = true)]
async fn rate_limited_adds_back_off_exponentially_and_forget_resets() {
    let queue = WorkQueue::new("q");
    let mut delays = Vec::new();
    for _ in 0..4 {
        let start = Instant::now();
        queue.add_rate_limited("a");
        let item = next(&queue).await.unwrap();
        delays.push(start.elapsed());
        queue.done(&item);
    }
    assert_eq!(delays, [5 * MS, 10 * MS, 20 * MS, 40 * MS]);
    assert_eq!(queue.num_requeues(&"a"), 4);
    queue.forget(&"a");
    assert_eq!(queue.num_requeues(&"a"), 0);
    let start = Instant::now();
    queue.add_rate_limited("a");
    next(&queue).await;
    assert_eq!(start.elapsed(), 5 * MS);
}

#[tokio::test(start_paused = true)]
async fn huge_delays_do_not_overflow() {
    let queue = WorkQueue::new("q");
    queue.add_after("never", Duration::MAX);
    queue.add_after("soon", MS);
    assert_eq!(next(&queue).await, Some("soon"));
    assert!(timeout(Duration::from_secs(3600), queue.get()).await.is_err());
}

#[tokio::test(start_paused = true)]
async fn timer_task_ends_when_the_queue_is_dropped() {
    let before = alive_tasks();
    let queue = WorkQueue::new("q");
    assert_eq!(alive_tasks(), before, "no task until a delay is needed");
    queue.add_after("a", Duration::from_secs(60));
    queue.add_after("b", Duration::from_secs(30));
    assert_eq!(alive_tasks(), before + 1, "exactly one timer task");
    let clone = queue.clone();
    drop(queue);
    tokio::task::yield_now().await;
    assert_eq!(alive_tasks(), before + 1, "a clone still uses the timer");
    drop(clone);
    wait_for_tasks(before).await;
}

#[tokio::test(start_paused = true)]
async fn timer_task_ends_on_shut_down() {
    let before = alive_tasks();
    let queue = WorkQueue::new("q");
    queue.add_after("a", Duration::from_secs(60));
    assert_eq!(alive_tasks(), before + 1);
    queue.shut_down();
    wait_for_tasks(before).await;
    // A shut-down queue ignores delays instead of starting a new timer.
    queue.add_after("b", MS);
    assert_eq!(alive_tasks(), before);
}

/// Lets the runtime run ready tasks until `n` remain, without moving the (paused) clock.
async fn wait_for_tasks(n: usize) {
    for _ in 0..100 {
        if alive_tasks() == n {
            return;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(alive_tasks(), n, "the timer task did not end");
}

#[test]
fn add_after_outside_a_runtime_is_served_once_get_runs() {
    let queue = WorkQueue::new("q");
    queue.add_after("a", MS); // no runtime: cannot spawn the timer yet
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let item = runtime.block_on(async { timeout(Duration::from_secs(10), queue.get()).await });
    assert_eq!(item, Ok(Some("a")));
}

#[tokio::test(start_paused = true)]
async fn memory_stays_flat_while_thousands_of_keys_are_requeued() {
    const KEYS: u32 = 5_000;
    let limiter = Arc::new(ItemExponential::new(MS, Duration::from_secs(1)));
    let queue: WorkQueue<u32> = WorkQueue::builder("q").rate_limiter(limiter.clone()).build();
    let mut peak_capacity = None;
    for round in 0..6 {
        for key in 0..KEYS {
            queue.add_rate_limited(key);
            queue.add(key); // both an immediate and a delayed add per key
        }
        let mut processed = 0;
        // Every key comes twice (immediate, then delayed); a few delayed adds land while the
        // key is still queued and are merged.
        while processed < 2 * KEYS {
            let Ok(Some(key)) = timeout(Duration::from_secs(10), queue.get()).await else {
                break;
            };
            queue.forget(&key);
            queue.done(&key);
            processed += 1;
        }
        assert!(
            processed >= KEYS,
            "round {round}: only {processed} items processed"
        );
        // Let the remaining delays fire and be processed.
        while let Ok(Some(key)) = timeout(Duration::from_secs(10), queue.get()).await {
            queue.forget(&key);
            queue.done(&key);
        }
        let sizes = queue.internal_sizes();
        assert_eq!(
            sizes,
            InternalSizes {
                capacity: sizes.capacity,
                ..zero()
            },
            "round {round}"
        );
        assert_eq!(limiter.tracked_items(), 0, "round {round}");
        let peak = *peak_capacity.get_or_insert(sizes.capacity);
        assert!(
            sizes.capacity <= peak,
            "round {round}: capacity grew from {peak} to {}",
            sizes.capacity
        );
        assert!(
            sizes.capacity <= 1024,
            "round {round}: capacity {} was not given back",
            sizes.capacity
        );
    }
}

/// A reference model of the queue's documented semantics, driven by a fixed pseudo-random
/// sequence of operations.
#[tokio::test]
async fn matches_a_reference_model() {
    let queue: WorkQueue<u8> = WorkQueue::new("q");
    let mut model_queue: VecDeque<u8> = VecDeque::new();
    let mut model_dirty: HashSet<u8> = HashSet::new();
    let mut model_processing: HashSet<u8> = HashSet::new();
    let mut rng = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for step in 0..20_000 {
        let key = (next() % 12) as u8;
        match next() % 3 {
            0 => {
                queue.add(key);
                if model_dirty.insert(key) && !model_processing.contains(&key) {
                    model_queue.push_back(key);
                }
            }
            1 => {
                let got = try_get(&queue).map(|item| item.unwrap());
                let expected = model_queue.pop_front();
                assert_eq!(got, expected, "step {step}: get");
                if let Some(item) = expected {
                    model_dirty.remove(&item);
                    model_processing.insert(item);
                }
            }
            _ => {
                queue.done(&key);
                if model_processing.remove(&key) && model_dirty.contains(&key) {
                    model_queue.push_back(key);
                }
            }
        }
        assert_eq!(queue.len(), model_queue.len(), "step {step}: len");
    }
}

/// Many workers and producers on a multi-threaded runtime: no key is ever processed by two
/// workers at once, and every add is followed by a processing that started after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_workers_never_share_a_key_and_lose_no_add() {
    const KEYS: usize = 64;
    const WORKERS: usize = 8;
    const PRODUCERS: usize = 4;
    const ADDS_PER_PRODUCER: usize = 5_000;

    let queue: WorkQueue<usize> = WorkQueue::new("q");
    // Bumped before every add; a worker records the version it saw when it started.
    let versions: Arc<Vec<AtomicU64>> = Arc::new((0..KEYS).map(|_| AtomicU64::new(0)).collect());
    let seen: Arc<Vec<AtomicU64>> = Arc::new((0..KEYS).map(|_| AtomicU64::new(0)).collect());
    let in_flight = Arc::new(Mutex::new(HashSet::new()));
    let violations = Arc::new(AtomicU64::new(0));

    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let (queue, versions, seen) = (queue.clone(), versions.clone(), seen.clone());
            let (in_flight, violations) = (in_flight.clone(), violations.clone());
            tokio::spawn(async move {
                let mut processed = 0u64;
                while let Some(key) = queue.get().await {
                    if !in_flight.lock().unwrap().insert(key) {
                        violations.fetch_add(1, Ordering::SeqCst);
                    }
                    seen[key].store(versions[key].load(Ordering::SeqCst), Ordering::SeqCst);
                    tokio::task::yield_now().await;
                    in_flight.lock().unwrap().remove(&key);
                    queue.done(&key);
                    processed += 1;
                }
                processed
            })
        })
        .collect();

    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let (queue, versions) = (queue.clone(), versions.clone());
            tokio::spawn(async move {
                for i in 0..ADDS_PER_PRODUCER {
                    let key = (i * 7 + p * 13) % KEYS;
                    versions[key].fetch_add(1, Ordering::SeqCst);
                    // Half the producers use priorities, so keys are raised while queued and
                    // re-added with other priorities while processed.
                    if p % 2 == 0 {
                        queue.add(key);
                    } else {
                        let priority = [Priority::LOW, Priority::HIGH, 3][(i + p) % 3];
                        queue.add_with_priority(key, priority);
                    }
                    if i % 16 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            })
        })
        .collect();
    for producer in producers {
        producer.await.unwrap();
    }
    timeout(Duration::from_secs(30), queue.shut_down_with_drain())
        .await
        .expect("drain finished");
    let mut processed = 0;
    for worker in workers {
        processed += timeout(Duration::from_secs(30), worker)
            .await
            .expect("worker ended")
            .unwrap();
    }

    assert_eq!(
        violations.load(Ordering::SeqCst),
        0,
        "a key was handed to two workers at once"
    );
    for key in 0..KEYS {
        assert_eq!(
            seen[key].load(Ordering::SeqCst),
            versions[key].load(Ordering::SeqCst),
            "key {key}: the last add was not followed by a processing"
        );
    }
    assert!(processed >= KEYS as u64);
    assert!(processed <= (PRODUCERS * ADDS_PER_PRODUCER) as u64);
    assert_eq!(
        queue.internal_sizes(),
        InternalSizes {
            capacity: queue.internal_sizes().capacity,
            ..zero()
        }
    );
}

/// Same with delayed and rate-limited adds, so the timer task races with workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_delayed_adds_are_all_processed() {
    const KEYS: usize = 32;
    let queue: WorkQueue<usize> = WorkQueue::builder("q")
        .rate_limiter(ItemExponential::new(MS, 4 * MS))
        .build();
    let versions: Arc<Vec<AtomicU64>> = Arc::new((0..KEYS).map(|_| AtomicU64::new(0)).collect());
    let seen: Arc<Vec<AtomicU64>> = Arc::new((0..KEYS).map(|_| AtomicU64::new(0)).collect());
    let in_flight = Arc::new(Mutex::new(HashSet::new()));

    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (queue, versions, seen, in_flight) =
                (queue.clone(), versions.clone(), seen.clone(), in_flight.clone());
            tokio::spawn(async move {
                while let Some(key) = queue.get().await {
                    assert!(
                        in_flight.lock().unwrap().insert(key),
                        "key {key} handed out twice"
                    );
                    seen[key].store(versions[key].load(Ordering::SeqCst), Ordering::SeqCst);
                    in_flight.lock().unwrap().remove(&key);
                    queue.done(&key);
                }
            })
        })
        .collect();
    for i in 0..3_000 {
        let key = i % KEYS;
        versions[key].fetch_add(1, Ordering::SeqCst);
        match i % 5 {
            0 => queue.add_after(key, MS * (i % 5) as u32),
            1 => queue.add_rate_limited(key),
            2 => queue.add_after_with_priority(key, MS * (i % 3) as u32, Priority::LOW),
            3 => queue.add_rate_limited_with_priority(key, Priority::HIGH),
            _ => queue.add(key),
        }
        if i % 50 == 0 {
            tokio::task::yield_now().await;
        }
    }
    // Wait (bounded) until no delayed add is pending and every key caught up.
    let caught_up = async {
        loop {
            let sizes = queue.internal_sizes();
            let idle = sizes.queued + sizes.dirty + sizes.processing + sizes.waiting == 0;
            let all_seen =
                (0..KEYS).all(|k| seen[k].load(Ordering::SeqCst) == versions[k].load(Ordering::SeqCst));
            if idle && all_seen {
                return;
            }
            tokio::time::sleep(MS).await;
        }
    };
    timeout(Duration::from_secs(30), caught_up)
        .await
        .expect("all adds processed");
    timeout(Duration::from_secs(30), queue.shut_down_with_drain())
        .await
        .expect("drain finished");
    for worker in workers {
        timeout(Duration::from_secs(30), worker)
            .await
            .expect("worker ended")
            .unwrap();
    }
}

fn encode_registry(registry: &Registry) -> String {
    let mut text = String::new();
    encode(&mut text, registry).unwrap();
    text
}

/// The sample lines of `text` (no comments), as a map from series to value.
fn samples(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.rsplit_once(' '))
        .map(|(series, value)| (series.to_string(), value.to_string()))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn metrics_have_controller_runtime_names_labels_and_values() {
    let mut registry = Registry::default();
    let metrics = QueueMetrics::new(&mut registry);
    let queue: WorkQueue<&str> = WorkQueue::builder("database")
        .metrics(metrics.clone(), "database")
        .build();
    let labels = r#"name="database",controller="database""#;

    queue.add("a");
    queue.add("a"); // not counted: already queued
    queue.add("b");
    advance(Duration::from_secs(2)).await;
    let a = next(&queue).await.unwrap();
    advance(Duration::from_secs(1)).await;
    let b = next(&queue).await.unwrap();
    advance(Duration::from_secs(3)).await;
    queue.add_rate_limited("c");

    let text = encode_registry(&registry);
    for (name, kind) in [
        ("workqueue_depth", "gauge"),
        ("workqueue_adds_total", "counter"),
        ("workqueue_queue_duration_seconds", "histogram"),
        ("workqueue_work_duration_seconds", "histogram"),
        ("workqueue_unfinished_work_seconds", "gauge"),
        ("workqueue_longest_running_processor_seconds", "gauge"),
        ("workqueue_retries_total", "counter"),
    ] {
        let family = name.trim_end_matches("_total");
        assert!(
            text.contains(&format!("# TYPE {family} {kind}\n")),
            "{name} missing:\n{text}"
        );
    }
    let s = samples(&text);
    let value = |series: &str| {
        s.get(series)
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
            .clone()
    };
    assert_eq!(value(&format!("workqueue_adds_total{{{labels}}}")), "2");
    assert_eq!(value(&format!("workqueue_depth{{{labels}}}")), "0");
    assert_eq!(value(&format!("workqueue_retries_total{{{labels}}}")), "1");
    // a waited 2 s, b 3 s.
    assert_eq!(
        value(&format!("workqueue_queue_duration_seconds_count{{{labels}}}")),
        "2"
    );
    assert_eq!(
        value(&format!("workqueue_queue_duration_seconds_sum{{{labels}}}")),
        "5.0"
    );
    // a has run 4 s, b 3 s.
    assert_eq!(
        value(&format!("workqueue_unfinished_work_seconds{{{labels}}}")),
        "7.0"
    );
    assert_eq!(
        value(&format!(
            "workqueue_longest_running_processor_seconds{{{labels}}}"
        )),
        "4.0"
    );
    // client-go's buckets, 1e-8 to 1e3.
    let buckets: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("workqueue_work_duration_seconds_bucket"))
        .filter_map(|l| l.split("le=\"").nth(1)?.split('"').next())
        .collect();
    assert_eq!(buckets.len(), 13, "12 buckets and +Inf: {buckets:?}");
    assert_eq!(buckets[0].parse::<f64>().unwrap(), 1e-8);
    assert_eq!(buckets[11].parse::<f64>().unwrap(), 1e3);
    assert_eq!(buckets[12], "+Inf");

    queue.done(&a);
    queue.done(&b);
    let s = samples(&encode_registry(&registry));
    assert_eq!(
        s[&format!("workqueue_work_duration_seconds_count{{{labels}}}")],
        "2"
    );
    assert_eq!(
        s[&format!("workqueue_work_duration_seconds_sum{{{labels}}}")],
        "7.0"
    );
    assert_eq!(
        s[&format!("workqueue_unfinished_work_seconds{{{labels}}}")],
        "0.0"
    );
    assert_eq!(
        s[&format!("workqueue_longest_running_processor_seconds{{{labels}}}")],
        "0.0"
    );

    // The delayed add counts when it is added, and depth follows.
    advance(5 * MS).await;
    tokio::task::yield_now().await;
    let s = samples(&encode_registry(&registry));
    assert_eq!(s[&format!("workqueue_adds_total{{{labels}}}")], "3");
    assert_eq!(s[&format!("workqueue_depth{{{labels}}}")], "1");

    // A dropped queue leaves the scrape-time gauges.
    drop(queue);
    let text = encode_registry(&registry);
    assert!(!text.contains("workqueue_unfinished_work_seconds"), "{text}");
    assert!(text.contains("workqueue_adds_total"));
}

#[tokio::test]
async fn depth_counts_items_re_added_while_processing_like_client_go() {
    let mut registry = Registry::default();
    let metrics = QueueMetrics::new(&mut registry);
    let queue: WorkQueue<u8> = WorkQueue::builder("q").metrics(metrics, "c").build();
    queue.add(1);
    let one = try_get(&queue).flatten().unwrap();
    queue.add(1);
    let depth = |registry: &Registry| {
        samples(&encode_registry(registry))[r#"workqueue_depth{name="q",controller="c"}"#].clone()
    };
    assert_eq!(depth(&registry), "1");
    queue.done(&one);
    assert_eq!(depth(&registry), "1");
    queue.shut_down();
    assert_eq!(depth(&registry), "0");
}

#[tokio::test(start_paused = true)]
async fn queues_sharing_labels_are_merged_in_the_scrape_time_gauges() {
    let mut registry = Registry::default();
    let metrics = QueueMetrics::new(&mut registry);
    let first: WorkQueue<u8> = WorkQueue::builder("q").metrics(metrics.clone(), "c").build();
    let second: WorkQueue<u8> = WorkQueue::builder("q").metrics(metrics.clone(), "c").build();
    let other: WorkQueue<u8> = WorkQueue::builder("other").metrics(metrics, "c").build();
    first.add(1);
    next(&first).await;
    advance(Duration::from_secs(5)).await;
    second.add(2);
    next(&second).await;
    advance(Duration::from_secs(2)).await;
    let text = encode_registry(&registry);
    assert_eq!(
        text.matches("workqueue_unfinished_work_seconds{").count(),
        2,
        "{text}"
    );
    let s = samples(&text);
    assert_eq!(
        s[r#"workqueue_unfinished_work_seconds{name="q",controller="c"}"#],
        "9.0"
    );
    assert_eq!(
        s[r#"workqueue_longest_running_processor_seconds{name="q",controller="c"}"#],
        "7.0"
    );
    assert_eq!(
        s[r#"workqueue_longest_running_processor_seconds{name="other",controller="c"}"#],
        "0.0"
    );
    drop((first, second, other));
}

#[tokio::test]
async fn drain_releases_every_idle_worker_once_nothing_is_left() {
    let queue = WorkQueue::new("q");
    queue.add(1);
    let one = try_get(&queue).flatten().unwrap();
    queue.add(1); // comes back once done
    let idle: Vec<_> = (0..2)
        .map(|_| {
            let queue = queue.clone();
            tokio::spawn(async move { queue.get().await })
        })
        .collect();
    tokio::task::yield_now().await;
    let mut drain = Box::pin(queue.shut_down_with_drain());
    assert!(futures::poll!(drain.as_mut()).is_pending());
    tokio::task::yield_now().await;
    assert!(
        idle.iter().all(|w| !w.is_finished()),
        "1 will come back: nobody may give up yet"
    );
    queue.done(&one);
    let mut results = Vec::new();
    for worker in idle {
        results.push(
            timeout(Duration::from_secs(5), worker)
                .await
                .expect("idle worker released")
                .unwrap(),
        );
    }
    results.sort();
    assert_eq!(results, [None, Some(1)]);
    queue.done(&1);
    assert!(futures::poll!(drain.as_mut()).is_ready());
}

// Priorities and aging.

/// `get_with_priority` without waiting; `None` when it would wait or the queue is shut down.
fn try_get_p<T>(queue: &WorkQueue<T>) -> Option<(T, i32)>
where
    T: Clone + Eq + Hash + Send + Sync + fmt::Debug + 'static,
{
    queue.get_with_priority().now_or_never().flatten()
}

/// Everything ready now, in the order it is handed out (each item marked done at once).
fn drain_now<T>(queue: &WorkQueue<T>) -> Vec<(T, i32)>
where
    T: Clone + Eq + Hash + Send + Sync + fmt::Debug + 'static,
{
    let mut out = Vec::new();
    while let Some((item, priority)) = try_get_p(queue) {
        queue.done(&item);
        out.push((item, priority));
    }
    out
}

/// Lets the timer task run until `queue` has `len` ready items; fails instead of hanging.
async fn wait_len<T>(queue: &WorkQueue<T>, len: usize)
where
    T: Clone + Eq + Hash + Send + Sync + fmt::Debug + 'static,
{
    for _ in 0..1000 {
        if queue.len() == len {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("{} items ready, expected {len}", queue.len());
}

fn idle_sizes<T>(queue: &WorkQueue<T>) -> InternalSizes
where
    T: Clone + Eq + Hash + Send + Sync + fmt::Debug + 'static,
{
    InternalSizes {
        capacity: queue.internal_sizes().capacity,
        ..zero()
    }
}

#[tokio::test]
async fn higher_priorities_go_first_and_each_priority_is_fifo() {
    let queue = WorkQueue::new("q");
    queue.add_with_priority("low-1", Priority::LOW);
    queue.add("default-1");
    queue.add_with_priority("high-1", Priority::HIGH);
    queue.add_with_priority("low-2", Priority::LOW);
    queue.add_with_priority("default-2", Priority::DEFAULT);
    queue.add_with_priority("high-2", Priority::HIGH);
    queue.add_with_priority("seven", 7);
    assert_eq!(queue.len(), 7);
    assert_eq!(
        drain_now(&queue),
        [
            ("high-1", Priority::HIGH),
            ("high-2", Priority::HIGH),
            ("seven", 7),
            ("default-1", Priority::DEFAULT),
            ("default-2", Priority::DEFAULT),
            ("low-1", Priority::LOW),
            ("low-2", Priority::LOW),
        ]
    );
    assert_eq!(queue.internal_sizes(), idle_sizes(&queue));
}

#[tokio::test]
async fn re_adding_raises_a_queued_item_never_lowers_it_and_keeps_its_place_in_time() {
    let queue = WorkQueue::new("q");
    queue.add_with_priority("a", Priority::LOW);
    queue.add_with_priority("b", Priority::LOW);
    queue.add("c");
    queue.add("b"); // raised; it became ready before c, so it goes first among the defaults
    queue.add_with_priority("c", Priority::LOW); // not lowered
    queue.add_with_priority("a", Priority::HIGH);
    queue.add_with_priority("a", 5); // below HIGH: stays HIGH
    assert_eq!(queue.len(), 3, "raising adds nothing");
    assert_eq!(
        drain_now(&queue),
        [
            ("a", Priority::HIGH),
            ("b", Priority::DEFAULT),
            ("c", Priority::DEFAULT)
        ]
    );
    // The slots the raises left behind went with the last item.
    assert_eq!(queue.internal_sizes(), idle_sizes(&queue));
}

#[tokio::test]
async fn an_item_re_added_while_processing_comes_back_with_the_highest_priority_it_was_given() {
    let queue = WorkQueue::new("q");
    queue.add("x");
    let (x, _) = try_get_p(&queue).unwrap();
    queue.add_with_priority("x", Priority::LOW);
    queue.add_with_priority("x", Priority::HIGH);
    queue.add_with_priority("x", Priority::LOW);
    queue.add("y");
    assert_eq!(queue.len(), 1, "x waits for done");
    queue.done(&x);
    assert_eq!(
        drain_now(&queue),
        [("x", Priority::HIGH), ("y", Priority::DEFAULT)]
    );
    // The priority is for one round: the next add starts afresh.
    queue.add_with_priority("x", Priority::LOW);
    queue.add("z");
    assert_eq!(
        drain_now(&queue),
        [("z", Priority::DEFAULT), ("x", Priority::LOW)]
    );
}

#[tokio::test(start_paused = true)]
async fn delayed_items_enter_at_their_priority() {
    let queue = WorkQueue::new("q");
    queue.add_with_priority("low", Priority::LOW);
    queue.add("default");
    queue.add_rate_limited_with_priority("retry-low", Priority::LOW); // 5 ms
    queue.add_after_with_priority("later-high", 10 * MS, Priority::HIGH);
    let opts = AddOpts {
        after: 20 * MS,
        priority: 5,
        ..AddOpts::default()
    };
    queue.add_with_opts("opts", opts);
    advance(30 * MS).await;
    wait_len(&queue, 5).await;
    assert_eq!(
        drain_now(&queue),
        [
            ("later-high", Priority::HIGH),
            ("opts", 5),
            ("default", Priority::DEFAULT),
            ("low", Priority::LOW),
            ("retry-low", Priority::LOW),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_key_delayed_twice_keeps_the_earlier_deadline_and_the_higher_priority() {
    let queue = WorkQueue::new("q");
    queue.add_after_with_priority("a", 30 * MS, Priority::HIGH);
    queue.add_after_with_priority("a", 10 * MS, Priority::LOW); // earlier deadline wins
    queue.add_after_with_priority("b", 10 * MS, Priority::LOW);
    queue.add_after_with_priority("b", 30 * MS, Priority::HIGH); // higher priority wins
    queue.add_after("c", 10 * MS);
    advance(10 * MS).await;
    wait_len(&queue, 3).await;
    assert_eq!(
        drain_now(&queue),
        [
            ("a", Priority::HIGH),
            ("b", Priority::HIGH),
            ("c", Priority::DEFAULT)
        ]
    );
    advance(30 * MS).await;
    tokio::task::yield_now().await;
    assert_eq!(queue.internal_sizes(), idle_sizes(&queue), "nothing left");
}

#[tokio::test(start_paused = true)]
async fn a_delayed_add_raises_the_key_if_it_is_still_queued() {
    let queue = WorkQueue::new("q");
    queue.add_with_priority("k", Priority::LOW);
    queue.add("other");
    queue.add_after_with_priority("k", 10 * MS, Priority::HIGH);
    advance(10 * MS).await;
    // Still two ready items: the due add raised k instead of adding it twice.
    for _ in 0..100 {
        if queue.internal_sizes().waiting == 0 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(queue.internal_sizes().waiting, 0);
    assert_eq!(
        drain_now(&queue),
        [("k", Priority::HIGH), ("other", Priority::DEFAULT)]
    );
}

#[test]
fn max_wait_is_range_checked() {
    let build = |d: Duration| {
        WorkQueue::<u8>::builder("reconciler")
            .max_wait(d)
            .map(|b| b.build())
    };
    assert!(build(Duration::from_secs(10)).is_ok());
    assert!(build(Duration::from_secs(3600)).is_ok());
    for bad in [
        Duration::ZERO,
        Duration::from_millis(9_999),
        Duration::from_secs(3600) + Duration::from_nanos(1),
    ] {
        let err = build(bad).unwrap_err();
        assert_eq!(
            err,
            QueueConfigError::MaxWaitOutOfRange {
                queue: "reconciler".into(),
                max_wait: bad
            }
        );
        let text = err.to_string();
        assert!(
            text.contains("reconciler") && text.contains("between 10s and 1h"),
            "{text}"
        );
    }
    assert_eq!(DEFAULT_MAX_WAIT, Duration::from_secs(60));
    assert!(MAX_WAIT_RANGE.contains(&DEFAULT_MAX_WAIT));
}

/// The starvation controller-runtime's priority queue shows (kubernetes-sigs/controller-runtime
/// issue 3496): one worker, and changes arriving faster than it reconciles, so a
/// default-priority item is always queued. Without aging the initial-list item never comes out;
/// with aging it comes out at the first get after `max_wait`, not before.
#[tokio::test(start_paused = true)]
async fn aging_hands_out_a_starved_item_right_after_max_wait_under_constant_higher_priority_load() {
    const MAX_WAIT: Duration = Duration::from_secs(10);
    /// One reconcile.
    const STEP: Duration = Duration::from_millis(100);
    const STARVED: u32 = u32::MAX;
    let queue: WorkQueue<u32> = WorkQueue::builder("q").max_wait(MAX_WAIT).unwrap().build();
    let start = Instant::now();
    queue.add_with_priority(STARVED, Priority::LOW);
    let mut next_key = 0;
    let mut handed_out_after = None;
    let steps = 3 * MAX_WAIT.as_millis() / STEP.as_millis();
    for _ in 0..steps {
        // Two changes per reconcile: more than the worker gets through.
        for _ in 0..2 {
            queue.add(next_key);
            next_key += 1;
        }
        let (key, priority) = try_get_p(&queue).expect("items are queued");
        if key == STARVED {
            assert_eq!(priority, Priority::LOW);
            handed_out_after = Some(start.elapsed());
            break;
        }
        advance(STEP).await;
        queue.done(&key);
    }
    let waited = handed_out_after.expect("the low-priority item starved");
    assert_eq!(
        waited, MAX_WAIT,
        "handed out at the first get once it had waited max_wait, and not before"
    );
}

/// Once a backlog bigger than the workers get through in `max_wait` has aged, new changes are
/// still handed out on every other get instead of waiting behind the whole backlog (the
/// queue does not fall back to FIFO), and the backlog goes oldest first on the others.
#[tokio::test(start_paused = true)]
async fn an_aged_backlog_and_new_changes_share_the_gets() {
    const MAX_WAIT: Duration = Duration::from_secs(10);
    let queue: WorkQueue<u32> = WorkQueue::builder("q").max_wait(MAX_WAIT).unwrap().build();
    for key in 0..100 {
        queue.add_with_priority(key, Priority::LOW);
    }
    advance(MAX_WAIT).await;
    for key in 1000..1005 {
        queue.add(key);
    }
    let order: Vec<(u32, i32)> = (0..12).filter_map(|_| try_get_p(&queue)).collect();
    let expected = [
        (0, Priority::LOW),
        (1000, Priority::DEFAULT),
        (1, Priority::LOW),
        (1001, Priority::DEFAULT),
        (2, Priority::LOW),
        (1002, Priority::DEFAULT),
        (3, Priority::LOW),
        (1003, Priority::DEFAULT),
        (4, Priority::LOW),
        (1004, Priority::DEFAULT),
        // No change left: the backlog has every get.
        (5, Priority::LOW),
        (6, Priority::LOW),
    ];
    assert_eq!(order, expected);
}

/// Thousands of keys raised twice while queued (each raise leaves a slot behind in the lower
/// lane): every key is handed out once, and nothing stays behind.
#[tokio::test]
async fn raised_items_are_handed_out_once_and_leave_nothing_behind() {
    const KEYS: u32 = 5_000;
    let queue: WorkQueue<u32> = WorkQueue::new("q");
    let mut peak_capacity = None;
    for round in 0..4 {
        for key in 0..KEYS {
            queue.add_with_priority(key, Priority::LOW);
        }
        for key in (0..KEYS).step_by(2) {
            queue.add(key);
        }
        for key in (0..KEYS).step_by(4) {
            queue.add_with_priority(key, Priority::HIGH);
        }
        assert_eq!(queue.len(), KEYS as usize);
        let order = drain_now(&queue);
        assert_eq!(order.len(), KEYS as usize, "round {round}");
        let distinct: HashSet<u32> = order.iter().map(|(k, _)| *k).collect();
        assert_eq!(distinct.len(), KEYS as usize, "round {round}: a key came twice");
        let priorities: Vec<i32> = order.iter().map(|(_, p)| *p).collect();
        assert!(
            priorities.is_sorted_by(|a, b| a >= b),
            "round {round}: priorities out of order"
        );
        let sizes = queue.internal_sizes();
        assert_eq!(sizes, idle_sizes(&queue), "round {round}");
        let peak = *peak_capacity.get_or_insert(sizes.capacity);
        assert!(sizes.capacity <= peak.max(1024), "round {round}: {sizes:?}");
    }
}

/// A reference model of the documented rules for priorities and aging, driven by a fixed
/// pseudo-random sequence of adds with ten priorities (more than the lanes kept when idle),
/// gets, dones and clock advances; it also checks the documented bound (handed out within
/// 2(k + 1) gets once aged, k keys older than it queued then).
#[tokio::test(start_paused = true)]
async fn matches_a_reference_model_with_priorities_and_aging() {
    const MAX_WAIT: Duration = Duration::from_secs(10);
    const PRIORITIES: [i32; 12] = [-100, -5, 0, 0, 0, 1, 2, 3, 5, 8, 13, 100];
    struct Queued {
        key: u8,
        priority: i32,
        seq: u64,
        ready: Instant,
        /// For the documented bound: the keys queued before it when it was first seen aged,
        /// and the gets since.
        older_when_aged: Option<usize>,
        gets_since_aged: usize,
    }
    let queue: WorkQueue<u8> = WorkQueue::builder("q").max_wait(MAX_WAIT).unwrap().build();
    let mut queued: Vec<Queued> = Vec::new();
    // Pending priority of every dirty key (queued or re-added while processed).
    let mut dirty: HashMap<u8, i32> = HashMap::new();
    let mut processing: HashSet<u8> = HashSet::new();
    let mut next_seq = 0u64;
    let mut aged_turn_taken = false;
    let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let (mut aged_turns, mut raises, mut longest_after_aging) = (0, 0, 0);
    for step in 0..30_000 {
        let key = (next() % 16) as u8;
        let now = Instant::now();
        match next() % 8 {
            0..=2 => {
                let priority = PRIORITIES[(next() % 12) as usize];
                queue.add_with_priority(key, priority);
                if processing.contains(&key) {
                    let pending = dirty.entry(key).or_insert(priority);
                    *pending = (*pending).max(priority);
                } else if let Some(pending) = dirty.get_mut(&key) {
                    if priority > *pending {
                        *pending = priority;
                        raises += 1;
                        let item = queued.iter_mut().find(|q| q.key == key).unwrap();
                        item.priority = priority;
                    }
                } else {
                    dirty.insert(key, priority);
                    queued.push(Queued {
                        key,
                        priority,
                        seq: next_seq,
                        ready: now,
                        older_when_aged: None,
                        gets_since_aged: 0,
                    });
                    next_seq += 1;
                }
            }
            3..=4 => {
                for i in 0..queued.len() {
                    if now - queued[i].ready >= MAX_WAIT {
                        let seq = queued[i].seq;
                        let older = queued.iter().filter(|q| q.seq < seq).count();
                        queued[i].older_when_aged.get_or_insert(older);
                        queued[i].gets_since_aged += 1;
                    }
                }
                let got = try_get_p(&queue);
                let expected = (!queued.is_empty()).then(|| {
                    let top = queued.iter().map(|q| q.priority).max().unwrap();
                    let by_priority = (0..queued.len())
                        .filter(|&i| queued[i].priority == top)
                        .min_by_key(|&i| queued[i].seq)
                        .unwrap();
                    let oldest = (0..queued.len()).min_by_key(|&i| queued[i].seq).unwrap();
                    let aged = queued[oldest].priority != top
                        && !aged_turn_taken
                        && now - queued[oldest].ready >= MAX_WAIT;
                    aged_turn_taken = aged;
                    aged_turns += usize::from(aged);
                    let item = queued.remove(if aged { oldest } else { by_priority });
                    if let Some(k) = item.older_when_aged {
                        assert!(
                            item.gets_since_aged <= 2 * (k + 1),
                            "step {step}: {} gets since aging with {k} older keys",
                            item.gets_since_aged
                        );
                        longest_after_aging = longest_after_aging.max(item.gets_since_aged);
                    }
                    if queued.is_empty() {
                        aged_turn_taken = false;
                    }
                    dirty.remove(&item.key);
                    processing.insert(item.key);
                    (item.key, item.priority)
                });
                assert_eq!(got, expected, "step {step}: get");
            }
            5..=6 => {
                queue.done(&key);
                if processing.remove(&key)
                    && let Some(&priority) = dirty.get(&key)
                {
                    queued.push(Queued {
                        key,
                        priority,
                        seq: next_seq,
                        ready: now,
                        older_when_aged: None,
                        gets_since_aged: 0,
                    });
                    next_seq += 1;
                }
            }
            _ => advance(Duration::from_millis(next() % 4_000)).await,
        }
        assert_eq!(queue.len(), queued.len(), "step {step}: len");
    }
    // The run exercised what it is for.
    assert!(aged_turns > 100, "only {aged_turns} aged turns");
    assert!(raises > 100, "only {raises} raises");
    assert!(longest_after_aging > 2, "the bound was never approached");
}

#[tokio::test]
async fn depth_is_labelled_by_priority_once_a_queue_uses_priorities() {
    let mut registry = Registry::default();
    let metrics = QueueMetrics::new(&mut registry);
    let plain: WorkQueue<u8> = WorkQueue::builder("plain").metrics(metrics.clone(), "c").build();
    let queue: WorkQueue<u8> = WorkQueue::builder("q").metrics(metrics, "c").build();
    let depths = |registry: &Registry| {
        let mut depths: Vec<(String, String)> = samples(&encode_registry(registry))
            .into_iter()
            .filter(|(series, _)| series.starts_with("workqueue_depth{"))
            .collect();
        depths.sort();
        depths
    };
    let series = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(s, v)| (format!("workqueue_depth{{{s}}}"), v.to_string()))
            .collect()
    };
    plain.add(1);
    plain.add_with_priority(2, Priority::DEFAULT); // the default priority changes nothing
    queue.add(1);
    queue.add(2);
    assert_eq!(
        depths(&registry),
        series(&[
            (r#"name="plain",controller="c""#, "2"),
            (r#"name="q",controller="c""#, "2"),
        ]),
        "no priority label before priorities are used"
    );

    queue.add_with_priority(3, Priority::LOW);
    assert_eq!(
        depths(&registry),
        series(&[
            (r#"name="plain",controller="c""#, "2"),
            (r#"name="q",controller="c",priority="-100""#, "1"),
            (r#"name="q",controller="c",priority="0""#, "2"),
        ])
    );
    queue.add(3); // raised
    let (one, _) = try_get_p(&queue).unwrap();
    queue.add_with_priority(one, Priority::HIGH); // re-added while processed
    assert_eq!(
        depths(&registry),
        series(&[
            (r#"name="plain",controller="c""#, "2"),
            (r#"name="q",controller="c",priority="-100""#, "0"),
            (r#"name="q",controller="c",priority="0""#, "2"),
            (r#"name="q",controller="c",priority="100""#, "1"),
        ])
    );
    queue.done(&one);
    assert_eq!(try_get_p(&queue), Some((1, Priority::HIGH)));
    assert_eq!(
        depths(&registry)[2..],
        series(&[
            (r#"name="q",controller="c",priority="0""#, "2"),
            (r#"name="q",controller="c",priority="100""#, "0"),
        ])[..]
    );
    queue.shut_down();
    let after = depths(&registry);
    assert!(after[1..].iter().all(|(_, v)| v == "0"), "shut down: {after:?}");
    // The other families keep their label sets.
    let text = encode_registry(&registry);
    assert!(
        text.contains(r#"workqueue_adds_total{name="q",controller="c"} 4"#),
        "{text}"
    );
    assert_eq!(text.matches("priority=").count(), 3, "{text}");
}
