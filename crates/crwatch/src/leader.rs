//! Leader election on a `coordination.k8s.io/v1` Lease, with client-go's semantics, so that
//! of several replicas of a controller exactly one reconciles at a time.
//!
//! How it works (as client-go's `leaderelection` package, `LeaseLock`):
//!
//! * Every candidate tries to acquire the Lease every `retry_period` (plus up to 120 %
//!   jitter, so that candidates do not move in lock step). A missing Lease is created.
//! * A Lease held by someone else is taken over only once it has gone unrenewed for
//!   `leaseDurationSeconds`, counted on this process's monotonic clock from the moment it
//!   saw the Lease last change, not from the `renewTime` written in it: clocks on different
//!   nodes disagree, a local stopwatch does not. A takeover increments `leaseTransitions`.
//! * Every write is a `resourceVersion`-conditioned replace; 409 Conflict means another
//!   candidate wrote first and won.
//! * The leader renews every `retry_period`. If it cannot renew within `renew_deadline` of
//!   its last successful renewal it steps down at that instant, even with a request still in
//!   flight, so it stops acting as leader before anyone else may take over
//!   (`renew_deadline < lease_duration`). It then goes back to being a candidate.
//! * On cancellation a leader releases the Lease (empty holder, `leaseDurationSeconds: 1`)
//!   so a standby takes over at its next try instead of waiting out the lease.
//!
//! Leader election bounds, it does not eliminate, the overlap between an old leader that
//! is stalled (a long GC pause, a frozen VM) and its successor; work guarded by it should
//! still be idempotent.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// client-go's `JitterFactor`: a candidate waits `retry_period * (1 + rand * 1.2)`.
const JITTER_FACTOR: f64 = 1.2;

/// A leader election configuration could not be used.
///
/// ```
/// use crwatch::leader::{LeaderElectionConfig, LeaderElectionError};
/// let config = LeaderElectionConfig { identity: String::new(), ..LeaderElectionConfig::new("ns", "lease") };
/// let LeaderElectionError::InvalidConfig { reason, .. } = config.validate().unwrap_err();
/// assert_eq!(reason, "identity must not be empty");
/// ```
#[derive(Debug, thiserror::Error)]
pub enum LeaderElectionError {
    /// The configuration breaks one of the rules that make the election safe.
    #[error("invalid leader election configuration for lease {namespace}/{lease_name}: {reason}")]
    InvalidConfig {
        /// The Lease's namespace.
        namespace: String,
        /// The Lease's name.
        lease_name: String,
        /// Which rule, and what to change.
        reason: String,
    },
}

/// Where the Lease is, who we are, and the timings (client-go's and controller-runtime's
/// defaults: 15 s lease, 10 s renew deadline, 2 s retry period).
///
/// ```
/// use std::time::Duration;
/// use crwatch::leader::LeaderElectionConfig;
///
/// let config = LeaderElectionConfig::new("operators", "database-operator");
/// assert_eq!(config.lease_duration, Duration::from_secs(15));
/// assert!(config.identity.contains('_'), "hostname_random by default");
/// let fast = LeaderElectionConfig { retry_period: Duration::from_millis(500), ..config };
/// assert!(fast.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderElectionConfig {
    /// The Lease's name (usually the controller's name).
    pub lease_name: String,
    /// The Lease's namespace (usually the controller's own).
    pub namespace: String,
    /// This candidate's identity, unique among candidates; written as `holderIdentity`.
    /// Defaults to the hostname (the pod name in a pod) plus `_` and a random suffix, so a
    /// restarted process never mistakes its predecessor's lease for its own.
    pub identity: String,
    /// How long a Lease is honoured after its last renewal before others may take it.
    pub lease_duration: Duration,
    /// How long the leader keeps trying to renew before it steps down. Less than
    /// `lease_duration`, so the leader quits before anyone else may take over.
    pub renew_deadline: Duration,
    /// How often candidates try to acquire and the leader renews.
    pub retry_period: Duration,
    /// Release the Lease when [`LeaderElector::run`] is cancelled, so a standby takes over
    /// at once. Only safe when everything the Lease guards has stopped before cancelling.
    pub release_on_cancel: bool,
}

impl LeaderElectionConfig {
    /// The defaults for the Lease `namespace/lease_name`.
    ///
    /// ```
    /// let config = crwatch::leader::LeaderElectionConfig::new("default", "my-controller");
    /// assert_eq!(config.lease_name, "my-controller");
    /// assert!(config.release_on_cancel);
    /// ```
    pub fn new(namespace: impl Into<String>, lease_name: impl Into<String>) -> Self {
        LeaderElectionConfig {
            lease_name: lease_name.into(),
            namespace: namespace.into(),
            identity: default_identity(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
            release_on_cancel: true,
        }
    }

    /// Check the rules client-go checks: names and identity set, all durations positive,
    /// `lease_duration > renew_deadline > 1.2 × retry_period`; and each at most 24h.
    ///
    /// ```
    /// use std::time::Duration;
    /// use crwatch::leader::LeaderElectionConfig;
    /// let bad = LeaderElectionConfig {
    ///     renew_deadline: Duration::from_secs(20),
    ///     ..LeaderElectionConfig::new("ns", "l")
    /// };
    /// assert!(bad.validate().unwrap_err().to_string().contains("lease_duration"));
    /// let huge = LeaderElectionConfig {
    ///     retry_period: Duration::from_secs(u64::MAX),
    ///     ..LeaderElectionConfig::new("ns", "l")
    /// };
    /// assert!(huge.validate().unwrap_err().to_string().contains("at most 24h"));
    /// ```
    pub fn validate(&self) -> Result<(), LeaderElectionError> {
        let invalid = |reason: &str| {
            Err(LeaderElectionError::InvalidConfig {
                namespace: self.namespace.clone(),
                lease_name: self.lease_name.clone(),
                reason: reason.to_string(),
            })
        };
        if self.lease_name.is_empty() || self.namespace.is_empty() {
            return invalid("lease_name and namespace must be set");
        }
        if self.identity.is_empty() {
            return invalid("identity must not be empty");
        }
        if self.lease_duration.is_zero() || self.renew_deadline.is_zero() || self.retry_period.is_zero() {
            return invalid("lease_duration, renew_deadline and retry_period must be positive");
        }
        // client-go has no upper bound, but deadlines are computed from these: a typo such as
        // 100000000h would overflow them (a panic) or leave a dead leader's lease held for years.
        if [self.lease_duration, self.renew_deadline, self.retry_period]
            .iter()
            .any(|d| *d > MAX_DURATION)
        {
            return invalid("lease_duration, renew_deadline and retry_period must be at most 24h");
        }
        if self.lease_duration <= self.renew_deadline {
            return invalid("lease_duration must be greater than renew_deadline");
        }
        if self.renew_deadline <= self.retry_period.mul_f64(JITTER_FACTOR) {
            return invalid("renew_deadline must be greater than 1.2 × retry_period");
        }
        Ok(())
    }

    /// `leaseDurationSeconds` as written to the Lease: whole seconds, rounded up, at least 1.
    fn lease_duration_seconds(&self) -> i32 {
        let d = self.lease_duration;
        let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
        i32::try_from(secs).unwrap_or(i32::MAX).max(1)
    }
}

/// The longest lease duration, renew deadline or retry period [`LeaderElectionConfig::validate`]
/// accepts.
const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// This machine's hostname (the pod name in a pod), from `/proc/sys/kernel/hostname` or
/// `HOSTNAME`.
pub(crate) fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

/// `hostname_` plus a random suffix: unique per process, readable in `kubectl get lease`.
///
/// ```
/// let a = crwatch::leader::default_identity();
/// let b = crwatch::leader::default_identity();
/// assert_ne!(a, b);
/// ```
pub fn default_identity() -> String {
    let host = hostname().unwrap_or_else(|| "crwatch".into());
    format!("{host}_{:016x}", rand::random::<u64>())
}

/// What this candidate is right now.
///
/// ```
/// use crwatch::leader::LeaderState;
/// let state = LeaderState::Follower { leader: Some("pod-a_1f2e".into()) };
/// assert_ne!(state, LeaderState::Leader);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaderState {
    /// Not leading; `leader` is the current holder if one is known.
    Follower {
        /// The identity holding the Lease, if any.
        leader: Option<String>,
    },
    /// Holding the Lease: reconcile.
    Leader,
}

/// The result of one acquire-or-renew round.
#[derive(Debug)]
enum Round {
    /// We hold the Lease (acquired now or renewed).
    Holding,
    /// Someone else does (or won the race), or nobody we know of.
    HeldBy(Option<String>),
}

/// The Lease as last seen, and when (on our clock) its record last changed.
#[derive(Debug, Clone)]
struct Observed {
    lease: Lease,
    changed_at: Instant,
}

/// Runs for leadership on one Lease and tells everyone interested whether it leads.
///
/// ```no_run
/// # async fn demo(client: kube::Client) -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use crwatch::leader::{LeaderElectionConfig, LeaderElector, LeaderState};
/// use tokio_util::sync::CancellationToken;
///
/// let config = LeaderElectionConfig::new("operators", "database-operator");
/// let elector = Arc::new(LeaderElector::new(client, config)?);
/// let cancel = CancellationToken::new();
/// let running = tokio::spawn({
///     let (elector, cancel) = (elector.clone(), cancel.clone());
///     async move { elector.run(cancel).await }
/// });
///
/// let mut state = elector.state();
/// state.wait_for(|s| *s == LeaderState::Leader).await?;
/// // ... start controllers; stop them as soon as `state` leaves `Leader` ...
///
/// // Shutdown: stop the work first, then cancel, which releases the Lease.
/// cancel.cancel();
/// running.await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaderElectionConfig,
    state: watch::Sender<LeaderState>,
    /// Counts terms that ended, so a lose-then-regain between two looks at `state` is seen.
    step_downs: watch::Sender<u64>,
    running: AtomicBool,
}

impl LeaderElector {
    /// An elector for `config` (checked with [`LeaderElectionConfig::validate`]). It does
    /// nothing until [`LeaderElector::run`].
    ///
    /// ```no_run
    /// # async fn demo(client: kube::Client) -> Result<(), crwatch::leader::LeaderElectionError> {
    /// use crwatch::leader::{LeaderElectionConfig, LeaderElector};
    /// let elector = LeaderElector::new(client, LeaderElectionConfig::new("default", "my-controller"))?;
    /// assert!(!elector.is_leader());
    /// # Ok(()) }
    /// ```
    pub fn new(client: kube::Client, config: LeaderElectionConfig) -> Result<Self, LeaderElectionError> {
        config.validate()?;
        Ok(LeaderElector {
            api: Api::namespaced(client, &config.namespace),
            config,
            state: watch::channel(LeaderState::Follower { leader: None }).0,
            step_downs: watch::channel(0).0,
            running: AtomicBool::new(false),
        })
    }

    /// A receiver of the state: changes the moment leadership is gained or lost (or the
    /// known leader changes). Subscribe before `run` to see every change.
    ///
    /// ```no_run
    /// # async fn demo(elector: crwatch::leader::LeaderElector) {
    /// let mut state = elector.state();
    /// while state.changed().await.is_ok() {
    ///     println!("now {:?}", *state.borrow());
    /// }
    /// # }
    /// ```
    pub fn state(&self) -> watch::Receiver<LeaderState> {
        self.state.subscribe()
    }

    /// How many terms as leader have ended. A watcher of [`LeaderElector::state`] may see only
    /// the latest state; this counter changes on every step-down, however quickly the lease is
    /// won back, so whoever acted as leader knows to stop.
    pub fn step_downs(&self) -> watch::Receiver<u64> {
        self.step_downs.subscribe()
    }

    /// Whether this candidate leads right now.
    ///
    /// ```no_run
    /// # fn demo(elector: &crwatch::leader::LeaderElector) {
    /// if elector.is_leader() { /* reconcile */ }
    /// # }
    /// ```
    pub fn is_leader(&self) -> bool {
        *self.state.borrow() == LeaderState::Leader
    }

    /// This candidate's identity (the `holderIdentity` it writes).
    ///
    /// ```no_run
    /// # fn demo(elector: &crwatch::leader::LeaderElector) {
    /// tracing::info!(identity = elector.identity(), "running for leader");
    /// # }
    /// ```
    pub fn identity(&self) -> &str {
        &self.config.identity
    }

    /// The configuration in use.
    ///
    /// ```no_run
    /// # fn demo(elector: &crwatch::leader::LeaderElector) {
    /// println!("lease {}/{}", elector.config().namespace, elector.config().lease_name);
    /// # }
    /// ```
    pub fn config(&self) -> &LeaderElectionConfig {
        &self.config
    }

    /// Take part in the election until `cancel` fires: acquire, lead, renew, step down when
    /// renewing fails, try again. On cancel a leader first becomes a follower, then (with
    /// `release_on_cancel`) releases the Lease. If the future is dropped instead, the state
    /// still becomes follower, but the Lease is not released and others wait for it to
    /// expire.
    ///
    /// One `run` at a time per elector: a second concurrent call logs an error and returns.
    ///
    /// ```no_run
    /// # async fn demo(elector: crwatch::leader::LeaderElector) {
    /// let cancel = tokio_util::sync::CancellationToken::new();
    /// tokio::select! {
    ///     _ = elector.run(cancel.clone()) => {}
    ///     _ = tokio::signal::ctrl_c() => cancel.cancel(),
    /// }
    /// # }
    /// ```
    pub async fn run(&self, cancel: CancellationToken) {
        if self.running.swap(true, Ordering::SeqCst) {
            tracing::error!(
                identity = self.identity(),
                "LeaderElector::run is already running; ignoring this call"
            );
            return;
        }
        let _guard = RunGuard(self);
        let lease = format!("{}/{}", self.config.namespace, self.config.lease_name);
        tracing::info!(lease, identity = self.identity(), "running for leader");
        let mut observed: Option<Observed> = None;
        loop {
            let Some(acquired_at) = self.acquire(&cancel, &mut observed).await else {
                break;
            };
            self.set_state(LeaderState::Leader);
            tracing::info!(lease, identity = self.identity(), "became leader");
            match self.lead(&cancel, &mut observed, acquired_at).await {
                Lead::Cancelled => {
                    self.set_state(LeaderState::Follower { leader: None });
                    tracing::info!(lease, identity = self.identity(), "stopped leading (cancelled)");
                    if self.config.release_on_cancel {
                        self.release(observed.as_ref()).await;
                    }
                    break;
                }
                Lead::Lost(leader) => {
                    // `lead` already stepped down the moment it lost.
                    tracing::warn!(lease, identity = self.identity(), ?leader, "lost leadership");
                }
            }
        }
        tracing::info!(lease, identity = self.identity(), "left the election");
    }

    /// Try every jittered `retry_period` until we hold the Lease; returns when the winning
    /// attempt started (the leader's deadline counts from there), or `None` when cancelled.
    async fn acquire(&self, cancel: &CancellationToken, observed: &mut Option<Observed>) -> Option<Instant> {
        loop {
            let started = Instant::now();
            let round = tokio::select! {
                _ = cancel.cancelled() => return None,
                round = self.try_acquire_or_renew(observed, false) => round,
            };
            match round {
                Ok(Round::Holding) => return Some(started),
                Ok(Round::HeldBy(leader)) => {
                    let changed = self.set_state(LeaderState::Follower {
                        leader: leader.clone(),
                    });
                    if changed && leader.is_some() {
                        tracing::info!(lease = self.config.lease_name, ?leader, "new leader observed");
                    }
                }
                Err(e) => {
                    tracing::warn!(lease = self.config.lease_name, error = %e, "could not acquire the lease")
                }
            }
            let pause = self
                .config
                .retry_period
                .mul_f64(1.0 + rand::random::<f64>() * JITTER_FACTOR);
            tokio::select! {
                _ = cancel.cancelled() => return None,
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Renew every `retry_period` while leading. Returns, having already stepped down, once
    /// renewing has failed for `renew_deadline` or someone else holds the Lease; or when
    /// cancelled, still leader, so that `run` can step down and release in that order.
    async fn lead(
        &self,
        cancel: &CancellationToken,
        observed: &mut Option<Observed>,
        acquired_at: Instant,
    ) -> Lead {
        let mut last_renewal = acquired_at;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return Lead::Cancelled,
                () = tokio::time::sleep(self.config.retry_period) => {}
            }
            // Our Lease is good for lease_duration from the last renewal *as others saw it*,
            // which is no earlier than when we sent it: quitting renew_deadline after sending
            // leaves a margin of lease_duration - renew_deadline.
            let deadline = last_renewal + self.config.renew_deadline;
            loop {
                let started = Instant::now();
                let attempt = tokio::time::timeout_at(deadline, self.try_acquire_or_renew(observed, true));
                let outcome = tokio::select! {
                    _ = cancel.cancelled() => return Lead::Cancelled,
                    outcome = attempt => outcome,
                };
                match outcome {
                    Ok(Ok(Round::Holding)) => {
                        last_renewal = started;
                        break;
                    }
                    Ok(Ok(Round::HeldBy(leader))) => {
                        self.set_state(LeaderState::Follower {
                            leader: leader.clone(),
                        });
                        return Lead::Lost(leader);
                    }
                    Ok(Err(e)) => {
                        let lease = &self.config.lease_name;
                        tracing::warn!(lease, error = %e, "could not renew the lease");
                    }
                    Err(_elapsed) => {
                        self.set_state(LeaderState::Follower { leader: None });
                        return Lead::Lost(None);
                    }
                }
                let next = (Instant::now() + self.config.retry_period).min(deadline);
                tokio::select! {
                    _ = cancel.cancelled() => return Lead::Cancelled,
                    () = tokio::time::sleep_until(next) => {}
                }
                if Instant::now() >= deadline {
                    self.set_state(LeaderState::Follower { leader: None });
                    return Lead::Lost(None);
                }
            }
        }
    }

    /// One round of client-go's `tryAcquireOrRenew`.
    async fn try_acquire_or_renew(
        &self,
        observed: &mut Option<Observed>,
        leading: bool,
    ) -> Result<Round, kube::Error> {
        let me = self.identity();
        let name = self.config.lease_name.as_str();
        let now = || MicroTime(Timestamp::now());

        // Fast path while leading: replace the Lease we wrote last without reading it first.
        // A 409 means someone else wrote since, and the slow path reads what they wrote.
        if leading && let Some(mine) = observed.as_ref().filter(|o| holder(&o.lease) == Some(me)) {
            let mut lease = mine.lease.clone();
            let spec = lease.spec.get_or_insert_default();
            spec.renew_time = Some(now());
            spec.lease_duration_seconds = Some(self.config.lease_duration_seconds());
            match crate::api::replace(&self.api, name, &PostParams::default(), &lease).await {
                Ok(written) => {
                    *observed = Some(Observed {
                        lease: written,
                        changed_at: Instant::now(),
                    });
                    return Ok(Round::Holding);
                }
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => return Err(e),
            }
        }

        let Some(current) = crate::api::get_opt(&self.api, name).await? else {
            let t = now();
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.to_string()),
                    namespace: Some(self.config.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(me.to_string()),
                    lease_duration_seconds: Some(self.config.lease_duration_seconds()),
                    acquire_time: Some(t.clone()),
                    renew_time: Some(t),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match crate::api::create(&self.api, &PostParams::default(), &lease).await {
                Ok(written) => {
                    *observed = Some(Observed {
                        lease: written,
                        changed_at: Instant::now(),
                    });
                    Ok(Round::Holding)
                }
                // Another candidate created it first; the next round reads it.
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(Round::HeldBy(None)),
                Err(e) => Err(e),
            };
        };

        // The takeover clock restarts whenever the record changes, measured on our clock.
        let changed_at = match observed.as_ref() {
            Some(o) if o.lease.spec == current.spec => o.changed_at,
            _ => Instant::now(),
        };
        *observed = Some(Observed {
            lease: current.clone(),
            changed_at,
        });

        let spec = current.spec.clone().unwrap_or_default();
        let holder_now = holder(&current).map(str::to_string);
        let ours = holder_now.as_deref() == Some(me);
        if let Some(other) = holder_now.as_ref().filter(|_| !ours) {
            let honoured = spec
                .lease_duration_seconds
                .filter(|s| *s > 0)
                .map_or(self.config.lease_duration, |s| {
                    Duration::from_secs(s.unsigned_abs().into())
                });
            if Instant::now() < changed_at + honoured {
                return Ok(Round::HeldBy(Some(other.clone())));
            }
        }

        let t = now();
        let mut lease = current;
        lease.spec = Some(LeaseSpec {
            holder_identity: Some(me.to_string()),
            lease_duration_seconds: Some(self.config.lease_duration_seconds()),
            renew_time: Some(t.clone()),
            acquire_time: if ours { spec.acquire_time.clone() } else { Some(t) },
            lease_transitions: if ours {
                spec.lease_transitions
            } else {
                Some(spec.lease_transitions.unwrap_or(0).saturating_add(1))
            },
            ..spec
        });
        match crate::api::replace(&self.api, name, &PostParams::default(), &lease).await {
            Ok(written) => {
                if !ours {
                    tracing::info!(lease = name, previous = ?holder_now, "took over the lease");
                }
                *observed = Some(Observed {
                    lease: written,
                    changed_at: Instant::now(),
                });
                Ok(Round::Holding)
            }
            // Someone else wrote between our read and our write: they won this round.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Round::HeldBy(holder_now.filter(|_| !ours))),
            Err(e) => Err(e),
        }
    }

    /// Give the Lease up as client-go's `ReleaseOnCancel` does: no holder, a one-second
    /// duration, so the next candidate to look takes it. Best effort, bounded by
    /// `renew_deadline`; if it fails the Lease simply expires.
    async fn release(&self, observed: Option<&Observed>) {
        let Some(mine) = observed.filter(|o| holder(&o.lease) == Some(self.identity())) else {
            return;
        };
        let lease_name = self.config.lease_name.as_str();
        match tokio::time::timeout(self.config.renew_deadline, self.release_lease(mine.lease.clone())).await {
            Ok(Ok(true)) => tracing::info!(lease = lease_name, "released the lease"),
            Ok(Ok(false)) => tracing::info!(
                lease = lease_name,
                "lease already held by another, nothing to release"
            ),
            Ok(Err(e)) => tracing::warn!(lease = lease_name, error = %e, "could not release the lease"),
            Err(_) => tracing::warn!(lease = lease_name, "releasing the lease timed out"),
        }
    }

    /// Write the released record over `lease`; says whether it did. A renewal cancelled in
    /// flight may still have landed and moved the resourceVersion on, so a conflict is
    /// answered by one re-read: if the Lease is still ours, release that version.
    async fn release_lease(&self, mut lease: Lease) -> Result<bool, kube::Error> {
        let params = PostParams::default();
        for last_try in [false, true] {
            let t = MicroTime(Timestamp::now());
            let spec = lease.spec.get_or_insert_default();
            spec.holder_identity = None;
            spec.lease_duration_seconds = Some(1);
            spec.acquire_time = Some(t.clone());
            spec.renew_time = Some(t);
            match crate::api::replace(&self.api, &self.config.lease_name, &params, &lease).await {
                Ok(_) => return Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 && !last_try => {
                    match crate::api::get_opt(&self.api, &self.config.lease_name).await? {
                        Some(fresh) if holder(&fresh) == Some(self.identity()) => lease = fresh,
                        _ => return Ok(false),
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(false)
    }

    /// Publish `new` if it differs; says whether it did.
    fn set_state(&self, new: LeaderState) -> bool {
        let mut stepped_down = false;
        let changed = self.state.send_if_modified(|s| {
            if *s == new {
                false
            } else {
                stepped_down = *s == LeaderState::Leader;
                *s = new;
                true
            }
        });
        if stepped_down {
            self.step_downs.send_modify(|n| *n += 1);
        }
        changed
    }
}

/// How a term as leader ended.
enum Lead {
    Cancelled,
    Lost(Option<String>),
}

/// The Lease's holder, if it has a non-empty one.
fn holder(lease: &Lease) -> Option<&str> {
    lease
        .spec
        .as_ref()?
        .holder_identity
        .as_deref()
        .filter(|h| !h.is_empty())
}

/// Marks the elector idle and a follower however `run` ends, including when its future is
/// dropped mid-term: nobody may go on believing a dead elector leads.
struct RunGuard<'a>(&'a LeaderElector);

impl Drop for RunGuard<'_> {
    fn drop(&mut self) {
        self.0.set_state(LeaderState::Follower { leader: None });
        self.0.running.store(false, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crwatch_apiserver::{Match, TestServer};
    use std::sync::Arc;
    use tokio::task::JoinHandle;

    fn fast(identity: &str) -> LeaderElectionConfig {
        LeaderElectionConfig {
            identity: identity.into(),
            lease_duration: Duration::from_secs(1),
            renew_deadline: Duration::from_millis(700),
            retry_period: Duration::from_millis(200),
            ..LeaderElectionConfig::new("default", "test-lease")
        }
    }

    struct Candidate {
        elector: Arc<LeaderElector>,
        cancel: CancellationToken,
        task: JoinHandle<()>,
    }

    fn start(server: &TestServer, config: LeaderElectionConfig) -> Candidate {
        let elector = Arc::new(LeaderElector::new(server.client(), config).unwrap());
        let cancel = CancellationToken::new();
        let task = tokio::spawn({
            let (elector, cancel) = (elector.clone(), cancel.clone());
            async move { elector.run(cancel).await }
        });
        Candidate {
            elector,
            cancel,
            task,
        }
    }

    async fn wait_for(c: &Candidate, within: Duration, pred: impl Fn(&LeaderState) -> bool) {
        let mut rx = c.elector.state();
        let id = c.elector.identity().to_string();
        let reached = matches!(
            tokio::time::timeout(within, rx.wait_for(|s| pred(s))).await,
            Ok(Ok(_))
        );
        assert!(
            reached,
            "{id}: state {:?} did not reach the expected one within {within:?}",
            *rx.borrow()
        );
    }

    async fn lease(server: &TestServer) -> LeaseSpec {
        let api: Api<Lease> = Api::namespaced(server.client(), "default");
        api.get("test-lease").await.unwrap().spec.unwrap()
    }

    fn ts(t: &Option<MicroTime>) -> Timestamp {
        t.as_ref().expect("time set").0
    }

    /// Wait until exactly one of `a`, `b` leads and the other follows it; returns (leader, follower).
    async fn one_leader<'a>(a: &'a Candidate, b: &'a Candidate) -> (&'a Candidate, &'a Candidate) {
        let either = async {
            let (mut ra, mut rb) = (a.elector.state(), b.elector.state());
            tokio::select! {
                _ = ra.wait_for(|s| *s == LeaderState::Leader) => (a, b),
                _ = rb.wait_for(|s| *s == LeaderState::Leader) => (b, a),
            }
        };
        let (leader, follower) = tokio::time::timeout(Duration::from_secs(10), either)
            .await
            .expect("nobody led");
        let id = leader.elector.identity().to_string();
        wait_for(follower, Duration::from_secs(10), |s| {
            *s == LeaderState::Follower {
                leader: Some(id.clone()),
            }
        })
        .await;
        (leader, follower)
    }

    #[test]
    fn config_rules_and_defaults() {
        let c = LeaderElectionConfig::new("ns", "lease");
        assert_eq!(
            (c.lease_duration, c.renew_deadline, c.retry_period),
            (
                Duration::from_secs(15),
                Duration::from_secs(10),
                Duration::from_secs(2)
            )
        );
        let host = hostname().unwrap_or_else(|| "crwatch".into());
        let suffix = c
            .identity
            .strip_prefix(&format!("{host}_"))
            .expect("hostname_ prefix");
        assert_eq!(suffix.len(), 16);
        assert!(c.validate().is_ok());
        assert_eq!(c.lease_duration_seconds(), 15);
        assert_eq!(fast("x").lease_duration_seconds(), 1);
        let sub_second = LeaderElectionConfig {
            lease_duration: Duration::from_millis(1500),
            ..fast("x")
        };
        assert_eq!(
            sub_second.lease_duration_seconds(),
            2,
            "rounded up, never shorter than configured"
        );
        for bad in [
            LeaderElectionConfig {
                renew_deadline: Duration::from_secs(15),
                ..c.clone()
            },
            LeaderElectionConfig {
                retry_period: Duration::from_secs(9),
                ..c.clone()
            },
            LeaderElectionConfig {
                identity: String::new(),
                ..c.clone()
            },
            LeaderElectionConfig {
                retry_period: Duration::ZERO,
                ..c.clone()
            },
        ] {
            let err = bad.validate().unwrap_err().to_string();
            assert!(err.contains("ns/lease"), "{err}");
        }
    }

    #[tokio::test]
    async fn two_candidates_one_leader() {
        let server = TestServer::start().await.unwrap();
        let a = start(&server, fast("a"));
        let b = start(&server, fast("b"));
        let (leader, follower) = one_leader(&a, &b).await;

        // Watch both through several renewals: never two leaders at once.
        let (mut la, mut lb) = (a.elector.state(), b.elector.state());
        let watch_both = async {
            loop {
                tokio::select! {
                    _ = la.changed() => {}
                    _ = lb.changed() => {}
                }
                assert!(!(a.elector.is_leader() && b.elector.is_leader()), "two leaders");
            }
        };
        let _ = tokio::time::timeout(Duration::from_millis(1500), watch_both).await;
        assert!(leader.elector.is_leader() && !follower.elector.is_leader());
        let spec = lease(&server).await;
        assert_eq!(spec.holder_identity.as_deref(), Some(leader.elector.identity()));
        assert_eq!(spec.lease_transitions, Some(0), "created, never taken over");
        assert_eq!(spec.lease_duration_seconds, Some(1));
        assert!(
            ts(&spec.renew_time) > ts(&spec.acquire_time),
            "renewed since acquired"
        );
    }

    #[tokio::test]
    async fn cancelling_the_leader_releases_to_the_standby() {
        let server = TestServer::start().await.unwrap();
        // A long lease: without the release the standby would wait 5 s.
        let slow = |id: &str| LeaderElectionConfig {
            lease_duration: Duration::from_secs(5),
            renew_deadline: Duration::from_secs(3),
            ..fast(id)
        };
        let a = start(&server, slow("a"));
        let b = start(&server, slow("b"));
        let (leader, follower) = one_leader(&a, &b).await;

        let cancelled = Instant::now();
        leader.cancel.cancel();
        wait_for(leader, Duration::from_secs(1), |s| *s != LeaderState::Leader).await;
        wait_for(follower, Duration::from_secs(3), |s| *s == LeaderState::Leader).await;
        let took = cancelled.elapsed();
        assert!(
            took < Duration::from_secs(3),
            "takeover after release took {took:?}"
        );
        assert!(!leader.elector.is_leader());

        let spec = lease(&server).await;
        assert_eq!(spec.holder_identity.as_deref(), Some(follower.elector.identity()));
        assert_eq!(spec.lease_transitions, Some(1));
        assert_eq!(spec.lease_duration_seconds, Some(5));
        leader.task.abort();
    }

    #[tokio::test]
    async fn a_dead_leader_is_replaced_after_its_lease_expires() {
        let server = TestServer::start().await.unwrap();
        let a = start(&server, fast("a"));
        let b = start(&server, fast("b"));
        let (leader, follower) = one_leader(&a, &b).await;

        // Killed, not cancelled: no release.
        leader.task.abort();
        wait_for(leader, Duration::from_secs(5), |s| *s != LeaderState::Leader).await;
        let last_renewal = ts(&lease(&server).await.renew_time);

        wait_for(follower, Duration::from_secs(10), |s| *s == LeaderState::Leader).await;
        let spec = lease(&server).await;
        assert_eq!(spec.holder_identity.as_deref(), Some(follower.elector.identity()));
        assert_eq!(spec.lease_transitions, Some(1));
        let gap = ts(&spec.acquire_time).duration_since(last_renewal);
        assert!(
            gap >= k8s_openapi::jiff::SignedDuration::from_secs(1),
            "took over before the lease expired: {gap:?}"
        );
        assert!(
            gap < k8s_openapi::jiff::SignedDuration::from_secs(4),
            "takeover took {gap:?}"
        );
    }

    #[tokio::test]
    async fn a_leader_that_cannot_renew_steps_down_in_time() {
        let server = TestServer::start().await.unwrap();
        let config = |id: &str| LeaderElectionConfig {
            lease_duration: Duration::from_secs(3),
            renew_deadline: Duration::from_secs(2),
            retry_period: Duration::from_millis(500),
            ..fast(id)
        };
        let a = start(&server, config("a"));
        let b = start(&server, config("b"));
        let (leader, _follower) = one_leader(&a, &b).await;
        let step_downs = leader.elector.step_downs();
        assert_eq!(*step_downs.borrow(), 0);

        // Every write to the Lease fails from now on; reads still work.
        let writes = Match {
            verb: Some("update".into()),
            resource: Some("leases".into()),
            ..Match::default()
        };
        server.faults().fail_next(1_000_000, 500, writes);
        wait_for(leader, Duration::from_secs(10), |s| *s != LeaderState::Leader).await;
        let stepped_down = Timestamp::now();
        let last_renewal = ts(&lease(&server).await.renew_time);
        let held = stepped_down.duration_since(last_renewal);
        // The deadline is renew_deadline after the last renewal was sent; renew_deadline +
        // retry_period is the promise, and well inside the 3 s lease.
        assert!(
            held < k8s_openapi::jiff::SignedDuration::from_millis(2500),
            "stepped down {held:?} after the last renewal"
        );
        assert!(
            held >= k8s_openapi::jiff::SignedDuration::from_millis(1900),
            "stepped down early: {held:?}"
        );
        assert!(!a.elector.is_leader() && !b.elector.is_leader());
        assert_eq!(*step_downs.borrow(), 1, "the ended term is counted");
    }

    #[tokio::test]
    async fn a_second_run_is_refused() {
        let server = TestServer::start().await.unwrap();
        let a = start(&server, fast("a"));
        wait_for(&a, Duration::from_secs(10), |s| *s == LeaderState::Leader).await;
        tokio::time::timeout(Duration::from_secs(1), a.elector.run(CancellationToken::new()))
            .await
            .expect("returns at once");
        assert!(
            a.elector.is_leader(),
            "the refused call did not disturb the running one"
        );
        a.cancel.cancel();
        a.task.await.unwrap();
        assert!(!a.elector.is_leader());
        let spec = lease(&server).await;
        assert_eq!(spec.holder_identity, None, "released");
        assert_eq!(spec.lease_duration_seconds, Some(1));
    }
}
