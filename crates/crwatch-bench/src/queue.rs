//! Workqueue throughput: crwatch's `WorkQueue<ObjectKey>` on one thread (add, get, done in
//! bursts) and with 4 producer threads and 1–8 consumer threads. kube-runtime has no
//! standalone work queue (its scheduler is internal to its controller), so these rows have no
//! peer.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, ensure};
use crwatch::queue::WorkQueue;
use crwatch::store::ObjectKey;
use futures::FutureExt;

/// Keys in flight at once in the one-thread run: a burst of events for distinct objects.
const BURST: usize = 1000;
/// Producer threads of the multi-producer run.
pub const PRODUCERS: usize = 4;

fn keys(prefix: &str, n: usize) -> Vec<ObjectKey> {
    (0..n)
        .map(|i| ObjectKey::new(Some("bench"), &format!("{prefix}-{i:07}")))
        .collect()
}

/// Items (each one add, get and done) per second on one thread.
///
/// The keys are cloned outside the timed part: an event handler makes a key per event
/// anyway, and this measures the queue, not `String::clone`.
pub fn single_thread(items: usize) -> Result<f64> {
    let queue: WorkQueue<ObjectKey> = WorkQueue::new("bench");
    let keys = keys("cm", BURST);
    let rounds = items.div_ceil(BURST);
    let mut timed = Duration::ZERO;
    let mut got = Vec::with_capacity(BURST);
    for _ in 0..rounds {
        let batch = keys.clone();
        let started = Instant::now();
        for key in batch {
            queue.add(key);
        }
        for _ in 0..BURST {
            // Items are queued, so `get` is ready at once; no executor needed.
            let key = queue
                .get()
                .now_or_never()
                .flatten()
                .ok_or_else(|| anyhow!("a queued item was not handed out"))?;
            got.push(key);
        }
        for key in got.drain(..) {
            queue.done(&key);
        }
        timed += started.elapsed();
    }
    ensure!(queue.is_empty(), "items left in the queue");
    Ok((rounds * BURST) as f64 / timed.as_secs_f64())
}

/// Items per second through one queue with [`PRODUCERS`] threads adding `items` distinct
/// keys between them and `consumers` threads getting and finishing them.
pub fn multi_producer(items: usize, consumers: usize) -> Result<f64> {
    let queue: WorkQueue<ObjectKey> = WorkQueue::new("bench");
    let per_producer = items.div_ceil(PRODUCERS);
    let total = per_producer * PRODUCERS;
    let batches: Vec<Vec<ObjectKey>> = (0..PRODUCERS)
        .map(|p| keys(&format!("p{p}"), per_producer))
        .collect();
    let processed = Arc::new(AtomicUsize::new(0));
    let start = Arc::new(std::sync::Barrier::new(PRODUCERS + consumers + 1));
    let mut threads = Vec::new();
    for batch in batches {
        let (queue, start) = (queue.clone(), start.clone());
        threads.push(std::thread::spawn(move || {
            start.wait();
            for key in batch {
                queue.add(key);
            }
        }));
    }
    for _ in 0..consumers {
        let (queue, start, processed) = (queue.clone(), start.clone(), processed.clone());
        threads.push(std::thread::spawn(move || {
            start.wait();
            // `get` only needs a waker, not a runtime (nothing here is delayed).
            while let Some(key) = futures::executor::block_on(queue.get()) {
                queue.done(&key);
                if processed.fetch_add(1, Ordering::Relaxed) + 1 == total {
                    queue.shut_down();
                }
            }
        }));
    }
    start.wait();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(120);
    // The consumers end when the last item is done (the distinct keys never coalesce).
    while processed.load(Ordering::Relaxed) < total {
        if Instant::now() > deadline {
            queue.shut_down();
            break;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    let elapsed = started.elapsed();
    for t in threads {
        t.join().map_err(|_| anyhow!("a queue thread panicked"))?;
    }
    let done = processed.load(Ordering::Relaxed);
    ensure!(done == total, "only {done} of {total} items were processed");
    Ok(total as f64 / elapsed.as_secs_f64())
}
