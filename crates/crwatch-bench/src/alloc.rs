//! What the process holds: a counting global allocator (the bytes currently allocated and
//! the peak since the last reset, so the benchmark can attribute heap to each cache), a wait
//! until that figure stops moving, and the resident set size to check it against.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

/// Wraps [`System`] and counts requested bytes (not the allocator's own overhead).
pub struct Counting;

fn grew(n: usize) {
    let now = CURRENT.fetch_add(n, Ordering::Relaxed) + n;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

fn shrank(n: usize) {
    CURRENT.fetch_sub(n, Ordering::Relaxed);
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so the
// `GlobalAlloc` contract holds exactly as it does for `System`; the counters are side effects.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged; the caller upholds `alloc`'s contract.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged; the caller upholds `alloc_zeroed`'s contract.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged; `ptr` came from this allocator, i.e. from `System`.
        unsafe { System.dealloc(ptr, layout) };
        shrank(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded unchanged; the caller upholds `realloc`'s contract.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                shrank(layout.size() - new_size);
            }
        }
        p
    }
}

/// Bytes allocated now.
pub fn current() -> usize {
    CURRENT.load(Ordering::Relaxed)
}

/// The most bytes allocated at once since the last [`reset_peak`].
pub fn peak() -> usize {
    PEAK.load(Ordering::Relaxed)
}

/// Start a new peak measurement from the current figure.
pub fn reset_peak() {
    PEAK.store(current(), Ordering::Relaxed);
}

/// How often [`settle`] samples the counter.
const SETTLE_POLL: Duration = Duration::from_millis(25);
/// Consecutive quiet samples [`settle`] wants (250 ms without movement).
const SETTLE_QUIET: usize = 10;
/// The longest [`settle`] waits; a process that never goes quiet is reported, not waited on.
const SETTLE_LIMIT: Duration = Duration::from_secs(20);

/// What [`settle`] found.
pub struct Settled {
    /// Bytes allocated once the counter stopped moving.
    pub bytes: usize,
    /// How long it took to stop moving.
    pub waited: Duration,
    /// False if it still moved when [`SETTLE_LIMIT`] passed.
    pub quiet: bool,
}

/// Waits until the heap counter is stable and returns it.
///
/// Dropping a cache frees its objects in tasks that run after the drop (informer tasks end
/// when they see the cancellation, connections close later), and a 50,000-object cache takes
/// far longer than a fixed pause to free; reading too early attributes the rest to the
/// baseline. Stable means: `SETTLE_QUIET` samples in a row within max(256 KiB, 0.2 %) of each
/// other.
pub async fn settle() -> Settled {
    let started = Instant::now();
    let mut last = current();
    let mut quiet = 0;
    while quiet < SETTLE_QUIET {
        if started.elapsed() > SETTLE_LIMIT {
            return Settled {
                bytes: current(),
                waited: started.elapsed(),
                quiet: false,
            };
        }
        tokio::time::sleep(SETTLE_POLL).await;
        let now = current();
        let tolerance = (last / 500).max(256 * 1024);
        if now.abs_diff(last) <= tolerance {
            quiet += 1;
        } else {
            quiet = 0;
            last = now;
        }
    }
    Settled {
        bytes: current(),
        waited: started.elapsed(),
        quiet: true,
    }
}

/// The resident set size (`VmRSS` of /proc/self/status) in bytes; 0 where there is none.
pub fn rss() -> usize {
    status_kib("VmRSS:") * 1024
}

fn status_kib(field: &str) -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}
