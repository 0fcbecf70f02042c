//! Rate limiters that decide how long a failed item waits before it is retried, with the same
//! defaults and arithmetic as client-go's `workqueue` rate limiters.
//!
//! A [`RateLimiter`] is asked [`when`](RateLimiter::when) an item may be retried; every call
//! counts as one more failure of that item. [`forget`](RateLimiter::forget) is called once the
//! item was processed successfully, so its next failure starts from the shortest delay again.
//!
//! | crwatch | client-go |
//! | --- | --- |
//! | [`ItemExponential`] | `ItemExponentialFailureRateLimiter` |
//! | [`Bucket`] | `BucketRateLimiter` (`golang.org/x/time/rate`) |
//! | [`MaxOf`] | `MaxOfRateLimiter` |
//! | [`FastSlow`] | `ItemFastSlowRateLimiter` |
//! | [`default_controller_rate_limiter`] | `DefaultTypedControllerRateLimiter` |

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// Decides how long an item waits before it is retried.
///
/// Implementations are shared between all workers of a queue, hence `&self` and `Send + Sync`;
/// they keep their per-item memory behind interior mutability.
///
/// # Example
///
/// A limiter that always waits one second:
///
/// ```
/// use std::time::Duration;
/// use crwatch::queue::RateLimiter;
///
/// struct OneSecond;
///
/// impl<T> RateLimiter<T> for OneSecond {
///     fn when(&self, _item: &T) -> Duration {
///         Duration::from_secs(1)
///     }
///     fn forget(&self, _item: &T) {}
///     fn num_requeues(&self, _item: &T) -> u32 {
///         0
///     }
/// }
///
/// assert_eq!(OneSecond.when(&"default/db"), Duration::from_secs(1));
/// ```
pub trait RateLimiter<T>: Send + Sync {
    /// Records one more failure of `item` and returns how long it must wait before the retry.
    ///
    /// ```
    /// use std::time::Duration;
    /// use crwatch::queue::{ItemExponential, RateLimiter};
    ///
    /// let limiter = ItemExponential::default();
    /// assert_eq!(limiter.when(&"a"), Duration::from_millis(5));
    /// assert_eq!(limiter.when(&"a"), Duration::from_millis(10));
    /// ```
    fn when(&self, item: &T) -> Duration;

    /// Drops everything the limiter remembers about `item` (call it after a success).
    ///
    /// ```
    /// use std::time::Duration;
    /// use crwatch::queue::{ItemExponential, RateLimiter};
    ///
    /// let limiter = ItemExponential::default();
    /// limiter.when(&"a");
    /// limiter.forget(&"a");
    /// assert_eq!(limiter.when(&"a"), Duration::from_millis(5));
    /// ```
    fn forget(&self, item: &T);

    /// How many times `item` has failed since it was last forgotten.
    ///
    /// ```
    /// use crwatch::queue::{ItemExponential, RateLimiter};
    ///
    /// let limiter = ItemExponential::default();
    /// limiter.when(&"a");
    /// limiter.when(&"a");
    /// assert_eq!(limiter.num_requeues(&"a"), 2);
    /// ```
    fn num_requeues(&self, item: &T) -> u32;
}

impl<T, R: RateLimiter<T> + ?Sized> RateLimiter<T> for Box<R> {
    fn when(&self, item: &T) -> Duration {
        (**self).when(item)
    }
    fn forget(&self, item: &T) {
        (**self).forget(item)
    }
    fn num_requeues(&self, item: &T) -> u32 {
        (**self).num_requeues(item)
    }
}

/// Lets one limiter be shared, e.g. between two queues or between a queue and a test that
/// inspects it.
impl<T, R: RateLimiter<T> + ?Sized> RateLimiter<T> for Arc<R> {
    fn when(&self, item: &T) -> Duration {
        (**self).when(item)
    }
    fn forget(&self, item: &T) {
        (**self).forget(item)
    }
    fn num_requeues(&self, item: &T) -> u32 {
        (**self).num_requeues(item)
    }
}

/// Locks a limiter's state. A panic while holding the lock cannot leave the maps half-updated
/// in a way that matters (each update is a single insert or remove), so a poisoned lock is
/// recovered instead of propagating the panic to every worker.
fn lock<S>(mutex: &Mutex<S>) -> MutexGuard<'_, S> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Gives memory back once a map has shrunk to a quarter of its capacity, so a burst of
/// thousands of failing keys does not pin its peak allocation forever. Halving keeps the
/// amortised cost constant.
pub(crate) fn shrink_map<K: Eq + Hash, V>(map: &mut HashMap<K, V>) {
    if map.capacity() > 64 && map.len() * 4 < map.capacity() {
        map.shrink_to(map.len() * 2);
    }
}

/// Per-item exponential backoff: `base * 2^failures`, capped at `max`.
///
/// The defaults are client-go's: 5 ms doubling up to 1000 s (reached after 18 failures). The
/// arithmetic saturates, so any number of failures yields `max` rather than overflowing.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use crwatch::queue::{ItemExponential, RateLimiter};
///
/// let limiter = ItemExponential::new(Duration::from_millis(5), Duration::from_secs(1000));
/// let delays: Vec<_> = (0..4).map(|_| limiter.when(&"default/db")).collect();
/// assert_eq!(delays, [5, 10, 20, 40].map(Duration::from_millis));
/// ```
pub struct ItemExponential<T> {
    base: Duration,
    max: Duration,
    failures: Mutex<HashMap<T, u32>>,
}

impl<T> ItemExponential<T> {
    /// Creates a limiter that starts at `base` and never exceeds `max`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use crwatch::queue::{ItemExponential, RateLimiter};
    ///
    /// let limiter = ItemExponential::new(Duration::from_secs(1), Duration::from_secs(3));
    /// assert_eq!(limiter.when(&1), Duration::from_secs(1));
    /// assert_eq!(limiter.when(&1), Duration::from_secs(2));
    /// assert_eq!(limiter.when(&1), Duration::from_secs(3));
    /// ```
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Number of items the limiter currently remembers; stays bounded as long as items are
    /// forgotten after they succeed.
    #[doc(hidden)]
    pub fn tracked_items(&self) -> usize {
        lock(&self.failures).len()
    }
}

/// client-go's `DefaultItemBasedRateLimiter`: 5 ms doubling to 1000 s.
///
/// ```
/// use std::time::Duration;
/// use crwatch::queue::{ItemExponential, RateLimiter};
///
/// let limiter = ItemExponential::default();
/// assert_eq!(limiter.when(&"a"), Duration::from_millis(5));
/// ```
impl<T> Default for ItemExponential<T> {
    fn default() -> Self {
        Self::new(Duration::from_millis(5), Duration::from_secs(1000))
    }
}

impl<T> fmt::Debug for ItemExponential<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ItemExponential")
            .field("base", &self.base)
            .field("max", &self.max)
            .field("tracked_items", &self.tracked_items())
            .finish()
    }
}

impl<T: Eq + Hash + Clone + Send + Sync> RateLimiter<T> for ItemExponential<T> {
    fn when(&self, item: &T) -> Duration {
        let exp = {
            let mut failures = lock(&self.failures);
            let count = failures.entry(item.clone()).or_insert(0);
            let exp = *count;
            *count = count.saturating_add(1);
            exp
        };
        // 2^exp overflows u32 from exp = 32 on, and the multiplication can overflow Duration;
        // either way the true value is far beyond any sensible max, so cap it.
        2u32.checked_pow(exp)
            .and_then(|factor| self.base.checked_mul(factor))
            .map_or(self.max, |d| d.min(self.max))
    }

    fn forget(&self, item: &T) {
        let mut failures = lock(&self.failures);
        failures.remove(item);
        shrink_map(&mut failures);
    }

    fn num_requeues(&self, item: &T) -> u32 {
        lock(&self.failures).get(item).copied().unwrap_or(0)
    }
}

/// A token bucket shared by all items: `burst` retries may happen at once, then `qps` per
/// second. It bounds the overall retry rate when many items fail together.
///
/// [`when`](RateLimiter::when) reserves a token and returns how long the caller must wait for
/// it, like `rate.Limiter.Reserve().Delay()` in Go: reservations queue up behind each other, so
/// the 101st immediate call with the defaults waits 100 ms, the 102nd 200 ms, and so on. The
/// bucket has no per-item memory, so [`forget`](RateLimiter::forget) does nothing and
/// [`num_requeues`](RateLimiter::num_requeues) is always 0.
///
/// It reads [`tokio::time::Instant`], so it follows Tokio's paused test clock.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use crwatch::queue::{Bucket, RateLimiter};
///
/// let bucket = Bucket::new(10.0, 2);
/// assert_eq!(RateLimiter::<&str>::when(&bucket, &"a"), Duration::ZERO);
/// assert_eq!(RateLimiter::<&str>::when(&bucket, &"b"), Duration::ZERO);
/// // The burst is used up: the next token arrives after 1/qps.
/// let wait = RateLimiter::<&str>::when(&bucket, &"c");
/// assert!(wait > Duration::from_millis(99) && wait <= Duration::from_millis(100));
/// ```
#[derive(Debug)]
pub struct Bucket {
    qps: f64,
    burst: u32,
    state: Mutex<BucketState>,
}

#[derive(Debug)]
struct BucketState {
    /// May go negative: that is the debt of reservations handed out but not yet covered.
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// Creates a bucket that starts full with `burst` tokens and refills at `qps` tokens per
    /// second. A `qps` of zero (or less, or NaN) never refills: once the burst is spent every
    /// call returns [`Duration::MAX`]; an infinite `qps` never limits.
    ///
    /// ```
    /// use std::time::Duration;
    /// use crwatch::queue::{Bucket, RateLimiter};
    ///
    /// let unlimited = Bucket::new(f64::INFINITY, 0);
    /// assert_eq!(RateLimiter::<u32>::when(&unlimited, &7), Duration::ZERO);
    /// ```
    pub fn new(qps: f64, burst: u32) -> Self {
        // NaN and negative rates mean "never refill", like zero.
        let qps = if qps > 0.0 { qps } else { 0.0 };
        Self {
            qps,
            burst,
            state: Mutex::new(BucketState {
                tokens: f64::from(burst),
                last: Instant::now(),
            }),
        }
    }

    fn reserve(&self) -> Duration {
        if self.qps == f64::INFINITY {
            return Duration::ZERO;
        }
        let now = Instant::now();
        let mut state = lock(&self.state);
        let elapsed = now.saturating_duration_since(state.last).as_secs_f64();
        state.tokens = (state.tokens + elapsed * self.qps).min(f64::from(self.burst));
        state.last = now;
        state.tokens -= 1.0;
        if state.tokens >= 0.0 {
            return Duration::ZERO;
        }
        if self.qps == 0.0 {
            // Nothing will ever refill the bucket; undo the reservation so the debt does not
            // grow without bound, and report "never".
            state.tokens += 1.0;
            return Duration::MAX;
        }
        Duration::try_from_secs_f64(-state.tokens / self.qps).unwrap_or(Duration::MAX)
    }
}

/// client-go's defaults: 10 retries per second with a burst of 100.
///
/// ```
/// use std::time::Duration;
/// use crwatch::queue::{Bucket, RateLimiter};
///
/// let bucket = Bucket::default();
/// for _ in 0..100 {
///     assert_eq!(RateLimiter::<u8>::when(&bucket, &0), Duration::ZERO);
/// }
/// assert!(RateLimiter::<u8>::when(&bucket, &0) > Duration::ZERO);
/// ```
impl Default for Bucket {
    fn default() -> Self {
        Self::new(10.0, 100)
    }
}

impl<T> RateLimiter<T> for Bucket {
    fn when(&self, _item: &T) -> Duration {
        self.reserve()
    }
    fn forget(&self, _item: &T) {}
    fn num_requeues(&self, _item: &T) -> u32 {
        0
    }
}

/// Combines limiters: an item waits as long as the slowest of them says.
///
/// Every limiter is asked on every [`when`](RateLimiter::when), so each keeps counting;
/// [`forget`](RateLimiter::forget) reaches all of them; [`num_requeues`](RateLimiter::num_requeues)
/// is the largest count. An empty `MaxOf` never delays.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use crwatch::queue::{Bucket, ItemExponential, MaxOf, RateLimiter};
///
/// let limiter = MaxOf::new()
///     .with(ItemExponential::new(Duration::from_millis(5), Duration::from_secs(1000)))
///     .with(ItemExponential::new(Duration::from_secs(1), Duration::from_secs(1)));
/// assert_eq!(limiter.when(&"a"), Duration::from_secs(1));
/// ```
pub struct MaxOf<T> {
    limiters: Vec<Box<dyn RateLimiter<T>>>,
}

impl<T> MaxOf<T> {
    /// Creates an empty combination; add limiters with [`with`](Self::with).
    ///
    /// ```
    /// use std::time::Duration;
    /// use crwatch::queue::{MaxOf, RateLimiter};
    ///
    /// let none: MaxOf<&str> = MaxOf::new();
    /// assert_eq!(none.when(&"a"), Duration::ZERO);
    /// ```
    pub fn new() -> Self {
        Self { limiters: Vec::new() }
    }

    /// Adds one more limiter.
    ///
    /// ```
    /// use crwatch::queue::{Bucket, ItemExponential, MaxOf};
    ///
    /// let limiter: MaxOf<String> = MaxOf::new().with(ItemExponential::default()).with(Bucket::default());
    /// assert_eq!(limiter.len(), 2);
    /// ```
    #[must_use]
    pub fn with(mut self, limiter: impl RateLimiter<T> + 'static) -> Self {
        self.limiters.push(Box::new(limiter));
        self
    }

    /// Number of combined limiters.
    ///
    /// ```
    /// use crwatch::queue::MaxOf;
    ///
    /// assert_eq!(MaxOf::<u32>::new().len(), 0);
    /// ```
    pub fn len(&self) -> usize {
        self.limiters.len()
    }

    /// Whether no limiter was added (then nothing is ever delayed).
    ///
    /// ```
    /// use crwatch::queue::MaxOf;
    ///
    /// assert!(MaxOf::<u32>::new().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.limiters.is_empty()
    }
}

/// Same as [`MaxOf::new`].
///
/// ```
/// use crwatch::queue::MaxOf;
///
/// assert!(MaxOf::<u32>::default().is_empty());
/// ```
impl<T> Default for MaxOf<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// Builds a combination from already boxed limiters.
///
/// ```
/// use crwatch::queue::{Bucket, ItemExponential, MaxOf, RateLimiter};
///
/// let limiters: Vec<Box<dyn RateLimiter<u32>>> =
///     vec![Box::new(ItemExponential::default()), Box::new(Bucket::default())];
/// assert_eq!(MaxOf::from(limiters).len(), 2);
/// ```
impl<T> From<Vec<Box<dyn RateLimiter<T>>>> for MaxOf<T> {
    fn from(limiters: Vec<Box<dyn RateLimiter<T>>>) -> Self {
        Self { limiters }
    }
}

impl<T> fmt::Debug for MaxOf<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MaxOf")
            .field("limiters", &self.limiters.len())
            .finish()
    }
}

impl<T> RateLimiter<T> for MaxOf<T> {
    fn when(&self, item: &T) -> Duration {
        // No short-circuit: every limiter must record the failure.
        self.limiters
            .iter()
            .map(|l| l.when(item))
            .fold(Duration::ZERO, Duration::max)
    }

    fn forget(&self, item: &T) {
        for limiter in &self.limiters {
            limiter.forget(item);
        }
    }

    fn num_requeues(&self, item: &T) -> u32 {
        self.limiters
            .iter()
            .map(|l| l.num_requeues(item))
            .max()
            .unwrap_or(0)
    }
}

/// Retries quickly for the first `max_fast_attempts` failures of an item, then slowly.
///
/// Useful when the first retries are expected to succeed soon (a dependency still starting)
/// and later ones mean something is really wrong.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use crwatch::queue::{FastSlow, RateLimiter};
///
/// let limiter = FastSlow::new(Duration::from_millis(10), Duration::from_secs(60), 2);
/// assert_eq!(limiter.when(&"a"), Duration::from_millis(10));
/// assert_eq!(limiter.when(&"a"), Duration::from_millis(10));
/// assert_eq!(limiter.when(&"a"), Duration::from_secs(60));
/// ```
pub struct FastSlow<T> {
    fast: Duration,
    slow: Duration,
    max_fast_attempts: u32,
    attempts: Mutex<HashMap<T, u32>>,
}

impl<T> FastSlow<T> {
    /// Creates a limiter that waits `fast` for the first `max_fast_attempts` failures of an item
    /// and `slow` afterwards.
    ///
    /// ```
    /// use std::time::Duration;
    /// use crwatch::queue::{FastSlow, RateLimiter};
    ///
    /// let limiter = FastSlow::new(Duration::from_millis(1), Duration::from_secs(1), 0);
    /// assert_eq!(limiter.when(&"a"), Duration::from_secs(1));
    /// ```
    pub fn new(fast: Duration, slow: Duration, max_fast_attempts: u32) -> Self {
        Self {
            fast,
            slow,
            max_fast_attempts,
            attempts: Mutex::new(HashMap::new()),
        }
    }

    /// Number of items the limiter currently remembers.
    #[doc(hidden)]
    pub fn tracked_items(&self) -> usize {
        lock(&self.attempts).len()
    }
}

impl<T> fmt::Debug for FastSlow<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FastSlow")
            .field("fast", &self.fast)
            .field("slow", &self.slow)
            .field("max_fast_attempts", &self.max_fast_attempts)
            .field("tracked_items", &self.tracked_items())
            .finish()
    }
}

impl<T: Eq + Hash + Clone + Send + Sync> RateLimiter<T> for FastSlow<T> {
    fn when(&self, item: &T) -> Duration {
        let mut attempts = lock(&self.attempts);
        let count = attempts.entry(item.clone()).or_insert(0);
        *count = count.saturating_add(1);
        if *count <= self.max_fast_attempts {
            self.fast
        } else {
            self.slow
        }
    }

    fn forget(&self, item: &T) {
        let mut attempts = lock(&self.attempts);
        attempts.remove(item);
        shrink_map(&mut attempts);
    }

    fn num_requeues(&self, item: &T) -> u32 {
        lock(&self.attempts).get(item).copied().unwrap_or(0)
    }
}

/// The limiter controllers use unless told otherwise, identical to client-go's
/// `DefaultTypedControllerRateLimiter`: per-item exponential backoff from 5 ms to 1000 s,
/// combined with a bucket of 10 retries per second and a burst of 100 shared by all items.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use crwatch::queue::{default_controller_rate_limiter, RateLimiter};
///
/// let limiter = default_controller_rate_limiter::<String>();
/// let key = "default/my-app-db".to_string();
/// assert_eq!(limiter.when(&key), Duration::from_millis(5));
/// assert_eq!(limiter.when(&key), Duration::from_millis(10));
/// limiter.forget(&key);
/// assert_eq!(limiter.num_requeues(&key), 0);
/// ```
pub fn default_controller_rate_limiter<T>() -> MaxOf<T>
where
    T: Eq + Hash + Clone + Send + Sync + 'static,
{
    MaxOf::new()
        .with(ItemExponential::<T>::default())
        .with(Bucket::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn exponential_doubles_from_5ms_and_caps_at_1000s() {
        let limiter = ItemExponential::default();
        let delays: Vec<Duration> = (0..20).map(|_| limiter.when(&"k")).collect();
        let mut expected = Duration::from_millis(5);
        for (i, delay) in delays.iter().enumerate() {
            assert_eq!(*delay, expected.min(Duration::from_secs(1000)), "failure #{i}");
            expected *= 2;
        }
        // 5 ms * 2^17 = 655.36 s is the last uncapped step.
        assert_eq!(delays[17], Duration::from_millis(655_360));
        assert_eq!(delays[18], Duration::from_secs(1000));
        assert_eq!(limiter.num_requeues(&"k"), 20);
    }

    #[test]
    fn exponential_never_overflows() {
        let limiter = ItemExponential::new(Duration::MAX / 3, Duration::MAX);
        assert_eq!(limiter.when(&1), Duration::MAX / 3);
        // 2 * MAX/3 fits, 4 * MAX/3 does not.
        assert_eq!(limiter.when(&1), (Duration::MAX / 3) * 2);
        assert_eq!(limiter.when(&1), Duration::MAX);
        let limiter = ItemExponential::default();
        for _ in 0..200 {
            assert!(limiter.when(&1) <= Duration::from_secs(1000));
        }
        // The failure count itself saturates instead of wrapping back to the shortest delay.
        limiter.failures.lock().unwrap().insert(1, u32::MAX);
        assert_eq!(limiter.when(&1), Duration::from_secs(1000));
        assert_eq!(limiter.when(&1), Duration::from_secs(1000));
        assert_eq!(limiter.num_requeues(&1), u32::MAX);
    }

    #[test]
    fn exponential_is_per_item_and_forget_resets() {
        let limiter = ItemExponential::default();
        assert_eq!(limiter.when(&"a"), 5 * MS);
        assert_eq!(limiter.when(&"a"), 10 * MS);
        assert_eq!(limiter.when(&"b"), 5 * MS);
        limiter.forget(&"a");
        assert_eq!(limiter.num_requeues(&"a"), 0);
        assert_eq!(limiter.when(&"a"), 5 * MS);
        assert_eq!(limiter.when(&"b"), 10 * MS);
        limiter.forget(&"a");
        limiter.forget(&"b");
        assert_eq!(limiter.tracked_items(), 0);
    }

    #[test]
    fn exponential_memory_is_returned_after_forget() {
        let limiter = ItemExponential::default();
        for round in 0..5 {
            for key in 0..10_000 {
                limiter.when(&key);
            }
            assert_eq!(limiter.tracked_items(), 10_000, "round {round}");
            for key in 0..10_000 {
                limiter.forget(&key);
            }
            assert_eq!(limiter.tracked_items(), 0);
            assert!(
                limiter.failures.lock().unwrap().capacity() <= 128,
                "capacity was not shrunk"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn bucket_allows_burst_of_100_then_10_per_second() {
        let bucket = Bucket::default();
        let when = |b: &Bucket| RateLimiter::<u32>::when(b, &0);
        for i in 0..100 {
            assert_eq!(when(&bucket), Duration::ZERO, "token {i} of the burst");
        }
        // Reservations queue up behind each other, 100 ms apart.
        assert_eq!(when(&bucket), 100 * MS);
        assert_eq!(when(&bucket), 200 * MS);
        assert_eq!(when(&bucket), 300 * MS);
        // After 300 ms the debt is paid, and the next token needs another 100 ms.
        tokio::time::advance(300 * MS).await;
        assert_eq!(when(&bucket), 100 * MS);
        // One second later the bucket holds 9 tokens (10 refilled, 1 debt).
        tokio::time::advance(1100 * MS).await;
        for i in 0..10 {
            assert_eq!(when(&bucket), Duration::ZERO, "token {i} after refilling");
        }
        assert_eq!(when(&bucket), 100 * MS);
        // Refilling stops at the burst size.
        tokio::time::advance(Duration::from_secs(3600)).await;
        for _ in 0..100 {
            assert_eq!(when(&bucket), Duration::ZERO);
        }
        assert_eq!(when(&bucket), 100 * MS);
        assert_eq!(RateLimiter::<u32>::num_requeues(&bucket, &0), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn bucket_with_zero_qps_never_refills() {
        let bucket = Bucket::new(0.0, 1);
        assert_eq!(RateLimiter::<u32>::when(&bucket, &0), Duration::ZERO);
        assert_eq!(RateLimiter::<u32>::when(&bucket, &0), Duration::MAX);
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(RateLimiter::<u32>::when(&bucket, &0), Duration::MAX);
    }

    #[test]
    fn max_of_takes_the_maximum_and_forgets_everywhere() {
        let fast = Arc::new(ItemExponential::new(MS, Duration::from_secs(1)));
        let slow = Arc::new(FastSlow::new(3 * MS, Duration::from_secs(60), 2));
        let limiter = MaxOf::new().with(fast.clone()).with(slow.clone());
        // Exponential: 1, 2, 4, 8 ms; fast/slow: 3, 3, 60 s, 60 s.
        assert_eq!(limiter.when(&"a"), 3 * MS);
        assert_eq!(limiter.when(&"a"), 3 * MS);
        assert_eq!(limiter.when(&"a"), Duration::from_secs(60));
        assert_eq!(limiter.when(&"a"), Duration::from_secs(60));
        // The exponential limiter counted every call even when it did not decide.
        assert_eq!(fast.num_requeues(&"a"), 4);
        assert_eq!(fast.when(&"a"), 16 * MS);
        assert_eq!(limiter.num_requeues(&"a"), 5);
        limiter.forget(&"a");
        assert_eq!(fast.tracked_items() + slow.tracked_items(), 0);
        assert_eq!(limiter.when(&"a"), 3 * MS);
    }

    #[test]
    fn fast_slow_switches_after_n_attempts() {
        let limiter = FastSlow::new(MS, Duration::from_secs(10), 3);
        let delays: Vec<_> = (0..5).map(|_| limiter.when(&"a")).collect();
        assert_eq!(
            delays,
            [MS, MS, MS, Duration::from_secs(10), Duration::from_secs(10)]
        );
        assert_eq!(limiter.num_requeues(&"a"), 5);
        limiter.forget(&"a");
        assert_eq!(limiter.when(&"a"), MS);
    }

    #[tokio::test(start_paused = true)]
    async fn default_controller_limiter_matches_client_go() {
        let limiter = default_controller_rate_limiter::<String>();
        let key = "ns/name".to_string();
        // Per-item backoff dominates while the bucket still has tokens.
        assert_eq!(limiter.when(&key), 5 * MS);
        assert_eq!(limiter.when(&key), 10 * MS);
        assert_eq!(limiter.num_requeues(&key), 2);
        limiter.forget(&key);
        assert_eq!(limiter.num_requeues(&key), 0);
        // 98 tokens are left; many different keys drain them, then the bucket dominates.
        for i in 0..98 {
            assert_eq!(limiter.when(&format!("other-{i}")), 5 * MS);
        }
        assert_eq!(limiter.when(&"late".to_string()), 100 * MS);
    }
}
