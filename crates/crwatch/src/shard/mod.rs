//! Sharding one controller across replicas: a ring of shard Leases, slots of the FNV-1a hash
//! space assigned by consistent hashing, and a handover in which a replica starts on keys it
//! gains only after the previous owner has finished them.
//!
//! # The model
//!
//! * **Hash and slots.** An object's shard key is the 64-bit FNV-1a hash of its uid or of its
//!   namespace, the hash Kubernetes' server-side sharded list and watch (KEP-5866,
//!   `shardSelector`) uses. The hash space is cut into `slots` equal ranges (64 by default).
//! * **Membership.** Every replica holds its own Lease in the ring (label
//!   [`RING_LABEL`]`=<ring>`), renewed every `retry_period`. The members are the Leases whose
//!   record changed within their `leaseDurationSeconds`, measured on this process's monotonic
//!   clock (as [`crate::leader`] does: clocks on different nodes disagree, a stopwatch does not).
//! * **Assignment.** Slots go to members by rendezvous hashing with bounded loads: each slot
//!   ranks the members by a hash of (member, slot) and goes to the best-ranked member still
//!   below its share (`slots / members`, rounded up for as many members as the division
//!   leaves over). Every member computes the same assignment from the same
//!   member list; a member joining or leaving moves few slots; loads differ by at most one slot.
//! * **Claims and the handover.** A Lease carries, in the annotation [`CLAIM_ANNOTATION`], the
//!   member list its holder has acknowledged: it claims the slots that list assigns to it, and
//!   promises to run nothing outside them. A replica that sees a new member list first stops
//!   starting keys in the slots it will lose, waits for their in-flight reconciles to finish,
//!   and only then acknowledges the new list in its Lease. A replica may start a key only in a
//!   slot it claims that no other live member claims, judged from a LIST of the Leases made
//!   *after* its own latest Lease write. Two replicas cannot both start a key: whichever wrote its
//!   claim second reads the other's claim (etcd is linearizable). So no key is ever reconciled by
//!   two replicas at once, through joins, leaves, crashes and membership storms, on the same
//!   terms as leader election: a replica that cannot renew its Lease within `renew_deadline`
//!   stops starting work, before others may consider it dead (`lease_duration`).
//!
//! A controller joins a ring with [`crate::controller::Builder::shard`]. Where the API server
//! supports KEP-5866, its primary informer then lists and watches only its own slots (see
//! [`ShardRing::selector`]); otherwise it watches everything and skips other replicas' keys.
//!
//! ```
//! use crwatch::shard::{ShardKey, fnv1a64, assign};
//! // The KEP's hash: FNV-1a 64 of the string's bytes.
//! assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
//! let members = vec!["a".to_string(), "b".to_string(), "c".to_string()];
//! let owners = assign(&members, 64);
//! for m in 0..3 {
//!     let n = owners.iter().filter(|o| **o == m).count();
//!     assert!((21..=22).contains(&n), "balanced: {n}");
//! }
//! assert_eq!(ShardKey::Uid.field(), "object.metadata.uid");
//! ```

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The label that puts a Lease in a ring: `crwatch.dev/shard-ring=<ring>`.
pub const RING_LABEL: &str = "crwatch.dev/shard-ring";

/// The annotation with the member list (a JSON array of identities) a Lease's holder has
/// acknowledged, and so the slots it claims.
pub const CLAIM_ANNOTATION: &str = "crwatch.dev/shard-claim";

/// The most slots a ring may have (a selector lists at most one range per slot).
pub const MAX_SLOTS: u32 = 4096;

mod slots;

pub use slots::{ShardKey, SlotSet, assign, fnv1a64, slot_of};

/// A ring configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    /// A setting is out of range.
    #[error("invalid shard ring configuration for ring {ring} in namespace {namespace}: {reason}")]
    InvalidConfig {
        /// The ring.
        ring: String,
        /// The Leases' namespace.
        namespace: String,
        /// Which rule, and what to change.
        reason: String,
    },
}

/// Where the ring's Leases are, who this replica is, and the timings (leader election's
/// defaults: 15 s lease, 10 s renew deadline, 2 s retry period).
///
/// ```
/// use crwatch::shard::ShardConfig;
/// let config = ShardConfig::new("operators", "sample-controller");
/// assert_eq!(config.slots, 64);
/// assert!(config.validate().is_ok());
/// let bad = ShardConfig { slots: 48, ..config };
/// assert!(bad.validate().unwrap_err().to_string().contains("power of two"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardConfig {
    /// The ring's name: the label value of its Leases and their names' prefix.
    pub ring: String,
    /// The Leases' namespace.
    pub namespace: String,
    /// This replica's identity, unique in the ring (hostname and a random suffix by default).
    pub identity: String,
    /// The field objects are sharded by.
    pub key: ShardKey,
    /// Slots of the hash space: a power of two from 1 to [`MAX_SLOTS`]; at most this many
    /// replicas get work.
    pub slots: u32,
    /// How long a Lease counts as live after its last change.
    pub lease_duration: Duration,
    /// How long a replica keeps starting work without a successful renewal.
    pub renew_deadline: Duration,
    /// How often a replica renews its Lease and reads the ring.
    pub retry_period: Duration,
}

impl ShardConfig {
    /// The defaults for ring `ring` with its Leases in `namespace`.
    pub fn new(namespace: impl Into<String>, ring: impl Into<String>) -> Self {
        ShardConfig {
            ring: ring.into(),
            namespace: namespace.into(),
            identity: crate::leader::default_identity(),
            key: ShardKey::Uid,
            slots: 64,
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    /// Check the settings: names set (the ring a valid label value of at most 40 characters,
    /// so Lease names stay valid), slots a power of two up to [`MAX_SLOTS`], and leader
    /// election's timing rules (`lease_duration > renew_deadline > retry_period`, each
    /// positive and at most 24 h).
    pub fn validate(&self) -> Result<(), ShardError> {
        let invalid = |reason: &str| {
            Err(ShardError::InvalidConfig {
                ring: self.ring.clone(),
                namespace: self.namespace.clone(),
                reason: reason.to_string(),
            })
        };
        let label_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 40
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
                && s.starts_with(|c: char| c.is_ascii_alphanumeric())
                && s.ends_with(|c: char| c.is_ascii_alphanumeric())
        };
        if !label_ok(&self.ring) {
            return invalid(
                "ring must be 1 to 40 lowercase letters, digits, '-' or '.', starting and ending with a letter or digit",
            );
        }
        if self.namespace.is_empty() {
            return invalid("namespace must be set");
        }
        if self.identity.is_empty() || self.identity.len() > 253 {
            return invalid("identity must be 1 to 253 characters");
        }
        if !self.slots.is_power_of_two() || self.slots > MAX_SLOTS {
            return invalid("slots must be a power of two from 1 to 4096");
        }
        let max = Duration::from_secs(24 * 3600);
        let timings = [self.lease_duration, self.renew_deadline, self.retry_period];
        if timings.iter().any(|d| d.is_zero() || *d > max) {
            return invalid(
                "lease_duration, renew_deadline and retry_period must be positive and at most 24h",
            );
        }
        if self.lease_duration <= self.renew_deadline {
            return invalid("lease_duration must be greater than renew_deadline");
        }
        if self.renew_deadline <= self.retry_period {
            return invalid("renew_deadline must be greater than retry_period");
        }
        Ok(())
    }

    /// This replica's Lease name: the ring and a hash of the identity (identities such as
    /// `host_1f2e` are not valid object names).
    pub fn lease_name(&self) -> String {
        format!("{}-{:016x}", self.ring, fnv1a64(self.identity.as_bytes()))
    }

    fn lease_duration_seconds(&self) -> i32 {
        let d = self.lease_duration;
        let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
        i32::try_from(secs).unwrap_or(i32::MAX).max(1)
    }
}

/// Where a sharded controller's objects are filtered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardMode {
    /// The API server lists and watches only this replica's slots (KEP-5866).
    ServerSide,
    /// Every object arrives; this replica skips other replicas' keys.
    ClientSide,
    /// No list has answered yet.
    Unknown,
}

/// What a replica knows of the ring, published on [`ShardRing::status`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardStatus {
    /// The live members, sorted.
    pub members: Vec<String>,
    /// The member list this replica has acknowledged in its Lease.
    pub acknowledged: Vec<String>,
    /// The slots it may start work in now.
    pub active: SlotSet,
    /// The slots it claims or is about to (what its informer should list).
    pub interested: SlotSet,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RingLabels {
    ring: String,
    shard: String,
}

/// Per-shard metrics: `crwatch_shard_members`, `crwatch_shard_active_slots`,
/// `crwatch_shard_handovers_total` (acknowledged member lists) and
/// `crwatch_shard_skipped_total` (keys handed to this replica that another owns), each with
/// labels `ring` and `shard` (the identity).
#[derive(Clone, Default)]
pub struct ShardMetrics {
    members: Family<RingLabels, Gauge>,
    active_slots: Family<RingLabels, Gauge>,
    handovers: Family<RingLabels, Counter>,
    skipped: Family<RingLabels, Counter>,
}

impl ShardMetrics {
    /// Register the families in `registry`.
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "crwatch_shard_members",
            "Live members of the shard ring",
            self.members.clone(),
        );
        registry.register(
            "crwatch_shard_active_slots",
            "Slots of the hash space this replica reconciles",
            self.active_slots.clone(),
        );
        registry.register(
            "crwatch_shard_handovers",
            "Member lists this replica acknowledged (each a handover)",
            self.handovers.clone(),
        );
        registry.register(
            "crwatch_shard_skipped",
            "Keys this replica skipped because another replica owns them",
            self.skipped.clone(),
        );
    }
}

impl std::fmt::Debug for ShardMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ShardMetrics")
    }
}

/// The slots work may start in, and the work in flight per slot, under one lock so that a
/// start and a narrowing never interleave.
#[derive(Debug)]
struct Gate {
    active: SlotSet,
    inflight: Vec<u32>,
}

#[derive(Debug)]
struct Inner {
    config: ShardConfig,
    api: Api<Lease>,
    gate: Mutex<Gate>,
    /// Signalled when in-flight work in some slot reaches zero.
    drained: Notify,
    status: watch::Sender<ShardStatus>,
    /// The selector for the interested slots (see [`ShardRing::selector`]).
    selector: watch::Sender<String>,
    /// Whether the server honours the selector (set by the primary informer's source).
    server_side: watch::Sender<Option<bool>>,
    metrics: ShardMetrics,
    labels: RingLabels,
}

/// One replica's membership of a shard ring (see the module docs). Cheap to clone.
///
/// ```no_run
/// # async fn demo(client: kube::Client) -> Result<(), crwatch::shard::ShardError> {
/// use crwatch::shard::{ShardConfig, ShardRing};
/// use tokio_util::sync::CancellationToken;
/// let ring = ShardRing::new(client, ShardConfig::new("operators", "sample-controller"))?;
/// let cancel = CancellationToken::new();
/// tokio::spawn({ let (ring, cancel) = (ring.clone(), cancel.clone()); async move { ring.run(cancel).await } });
/// let mut status = ring.status();
/// status.wait_for(|s| !s.active.is_empty()).await.ok();
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ShardRing {
    inner: Arc<Inner>,
}

/// Work started in a slot; dropping it ends the work (see [`ShardRing::try_begin`]).
#[derive(Debug)]
pub struct SlotGuard {
    inner: Arc<Inner>,
    slot: u32,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let mut gate = lock(&self.inner.gate);
        let n = &mut gate.inflight[self.slot as usize];
        *n = n.saturating_sub(1);
        if *n == 0 {
            drop(gate);
            self.inner.drained.notify_waiters();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The gate's counters and sets stay consistent at every await-free step; poisoning by a
    // panic elsewhere leaves them valid.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A peer's Lease as last seen, and when (on our clock) its record last changed.
#[derive(Debug, Clone)]
struct Peer {
    record: (Option<String>, Option<MicroTime>, Option<String>),
    duration: Duration,
    changed_at: Instant,
    claim: Vec<String>,
}

impl ShardRing {
    /// A ring membership for `config` (checked with [`ShardConfig::validate`]). It does
    /// nothing until [`ShardRing::run`]; until then no slot is active.
    pub fn new(client: kube::Client, config: ShardConfig) -> Result<Self, ShardError> {
        Self::with_metrics(client, config, ShardMetrics::default())
    }

    /// [`ShardRing::new`] reporting into `metrics`.
    pub fn with_metrics(
        client: kube::Client,
        config: ShardConfig,
        metrics: ShardMetrics,
    ) -> Result<Self, ShardError> {
        config.validate()?;
        let slots = config.slots;
        let labels = RingLabels {
            ring: config.ring.clone(),
            shard: config.identity.clone(),
        };
        Ok(ShardRing {
            inner: Arc::new(Inner {
                api: Api::namespaced(client, &config.namespace),
                gate: Mutex::new(Gate {
                    active: SlotSet::empty(slots),
                    inflight: vec![0; slots as usize],
                }),
                drained: Notify::new(),
                selector: watch::channel(SlotSet::empty(slots).selector(config.key)).0,
                server_side: watch::channel(None).0,
                status: watch::channel(ShardStatus {
                    members: vec![],
                    acknowledged: vec![],
                    active: SlotSet::empty(slots),
                    interested: SlotSet::empty(slots),
                })
                .0,
                metrics,
                labels,
                config,
            }),
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &ShardConfig {
        &self.inner.config
    }

    /// The ring as this replica sees it; changes whenever members, claims or active slots do.
    pub fn status(&self) -> watch::Receiver<ShardStatus> {
        self.inner.status.subscribe()
    }

    /// The slot of an object whose shard field (uid or namespace) is `value`.
    pub fn slot_of_value(&self, value: &str) -> u32 {
        slot_of(fnv1a64(value.as_bytes()), self.inner.config.slots)
    }

    /// Start work in `slot` if it is active here; the work counts as in flight until the
    /// guard drops, and a handover waits for it.
    pub fn try_begin(&self, slot: u32) -> Option<SlotGuard> {
        let mut gate = lock(&self.inner.gate);
        if !gate.active.contains(slot) {
            drop(gate);
            self.inner.metrics.skipped.get_or_create(&self.inner.labels).inc();
            return None;
        }
        gate.inflight[slot as usize] += 1;
        Some(SlotGuard {
            inner: self.inner.clone(),
            slot,
        })
    }

    /// Whether this replica claims `slot` or is about to: events for objects outside these
    /// slots are someone else's (a server-side sharded informer drops them from its cache, which
    /// is not a deletion).
    pub fn interested(&self, slot: u32) -> bool {
        self.inner.status.borrow().interested.contains(slot)
    }

    /// The KEP-5866 `shardSelector` for the slots this replica is interested in, updated as the
    /// ring changes (a Kubernetes source given the ring sends it, see
    /// [`KubeSource::shard`](crate::source::kube::KubeSource::shard)).
    pub fn selector(&self) -> watch::Receiver<String> {
        self.inner.selector.subscribe()
    }

    /// Where filtering happens: on the server (it honours `shardSelector`), here (it does not,
    /// or the source is not Kubernetes), or not known until the first list answers.
    pub fn mode(&self) -> ShardMode {
        match *self.inner.server_side.borrow() {
            Some(true) => ShardMode::ServerSide,
            Some(false) => ShardMode::ClientSide,
            None => ShardMode::Unknown,
        }
    }

    /// Changes of [`ShardRing::mode`]: `Some(true)` once a list came back sharded.
    pub fn server_side(&self) -> watch::Receiver<Option<bool>> {
        self.inner.server_side.subscribe()
    }

    pub(crate) fn server_side_sender(&self) -> watch::Sender<Option<bool>> {
        self.inner.server_side.clone()
    }

    /// Mark the primary source as one that cannot shard on the server (not Kubernetes).
    pub(crate) fn client_side_only(&self) {
        self.inner.server_side.send_replace(Some(false));
    }

    /// Keep this replica's Lease and take part in handovers until `cancel` fires; then stop
    /// starting work, wait (up to `renew_deadline`) for work in flight, and delete the Lease so
    /// the others take its slots over at once.
    pub async fn run(&self, cancel: CancellationToken) {
        let config = &self.inner.config;
        tracing::info!(
            ring = config.ring,
            identity = config.identity,
            lease = config.lease_name(),
            "joining the shard ring"
        );
        let mut state = RunState {
            acknowledged: vec![],
            target: vec![],
            peers: HashMap::new(),
            written: None,
            last_renewal: None,
        };
        loop {
            let again = tokio::select! {
                _ = cancel.cancelled() => break,
                again = self.round(&mut state) => again,
            };
            if again {
                continue;
            }
            let pause = config.retry_period;
            tokio::select! {
                _ = cancel.cancelled() => break,
                () = tokio::time::sleep(pause) => {}
                // A drain finished: acknowledge without waiting out the period.
                () = self.inner.drained.notified(), if state.target != state.acknowledged => {}
            }
        }
        self.leave(&mut state).await;
    }

    /// One round: acknowledge the target member list if drained, write our Lease, read the
    /// ring, recompute. Returns whether another round should follow at once.
    async fn round(&self, state: &mut RunState) -> bool {
        let config = &self.inner.config;
        let me = config.identity.clone();
        let slots = config.slots;
        let mut acked_now = false;
        if state.target != state.acknowledged && self.drained_for(&state.target) {
            state.acknowledged = state.target.clone();
            acked_now = true;
        }
        let started = Instant::now();
        match self.write_lease(state).await {
            Ok(()) => {
                state.last_renewal = Some(started);
                if acked_now {
                    self.inner
                        .metrics
                        .handovers
                        .get_or_create(&self.inner.labels)
                        .inc();
                    tracing::info!(ring = config.ring, members = ?state.acknowledged, "acknowledged the ring's members");
                }
            }
            Err(e) => {
                if acked_now {
                    // Not written: we still stand by the old claim as far as others know, and
                    // have not started anything new. Try again next round.
                    tracing::warn!(ring = config.ring, error = %e, "could not write the shard lease");
                } else {
                    tracing::warn!(ring = config.ring, error = %e, "could not renew the shard lease");
                }
                if state
                    .last_renewal
                    .is_none_or(|t| t.elapsed() >= config.renew_deadline)
                {
                    // Others may soon consider us gone: stop starting work.
                    self.set_active(SlotSet::empty(slots), state, None);
                }
                return false;
            }
        }
        // The list is read after our write, so it holds every Lease write before ours.
        let list = match crate::api::list(
            &self.inner.api,
            &ListParams::default().labels(&format!("{RING_LABEL}={}", config.ring)),
        )
        .await
        {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(ring = config.ring, error = %e, "could not read the shard ring");
                return false;
            }
        };
        let now = Instant::now();
        let mut seen: HashMap<String, Peer> = HashMap::new();
        for lease in list.items {
            let spec = lease.spec.clone().unwrap_or_default();
            let Some(holder) = spec.holder_identity.clone().filter(|h| !h.is_empty()) else {
                continue;
            };
            if holder == me {
                continue;
            }
            let record = (
                spec.holder_identity.clone(),
                spec.renew_time.clone(),
                claim_text(&lease).map(str::to_string),
            );
            let duration = spec
                .lease_duration_seconds
                .filter(|s| *s > 0)
                .map_or(config.lease_duration, |s| {
                    Duration::from_secs(s.unsigned_abs().into())
                });
            let changed_at = match state.peers.get(&holder) {
                Some(p) if p.record == record => p.changed_at,
                _ => now,
            };
            let claim = claim_text(&lease)
                .and_then(|t| serde_json::from_str::<Vec<String>>(t).ok())
                .unwrap_or_default();
            seen.insert(
                holder,
                Peer {
                    record,
                    duration,
                    changed_at,
                    claim,
                },
            );
        }
        state.peers = seen;
        let mut members: Vec<String> = state
            .peers
            .iter()
            .filter(|(_, p)| now < p.changed_at + p.duration)
            .map(|(id, _)| id.clone())
            .collect();
        members.push(me.clone());
        members.sort();
        members.dedup();
        state.target = members;

        let claimed = SlotSet::assigned(&state.acknowledged, &me, slots);
        let heading = SlotSet::assigned(&state.target, &me, slots);
        let mut others = SlotSet::empty(slots);
        for p in state.peers.values().filter(|p| now < p.changed_at + p.duration) {
            // A claim names the claimant among its members; one that does not claims nothing.
            let theirs = p
                .record
                .0
                .as_deref()
                .map_or(SlotSet::empty(slots), |id| SlotSet::assigned(&p.claim, id, slots));
            others = others.union(&theirs);
        }
        let active = claimed.intersect(&heading).minus(&others);
        self.set_active(active, state, Some(claimed.union(&heading)));
        // A new target with nothing to drain is acknowledged in the next round, at once.
        state.target != state.acknowledged && self.drained_for(&state.target)
    }

    /// Whether nothing is in flight outside the slots `members` gives us.
    fn drained_for(&self, members: &[String]) -> bool {
        let config = &self.inner.config;
        let keep = SlotSet::assigned(members, &config.identity, config.slots);
        let gate = lock(&self.inner.gate);
        gate.inflight
            .iter()
            .enumerate()
            .all(|(s, n)| *n == 0 || keep.contains(s as u32))
    }

    fn set_active(&self, active: SlotSet, state: &RunState, interested: Option<SlotSet>) {
        lock(&self.inner.gate).active = active.clone();
        self.inner
            .metrics
            .active_slots
            .get_or_create(&self.inner.labels)
            .set(active.len() as i64);
        self.inner
            .metrics
            .members
            .get_or_create(&self.inner.labels)
            .set(state.target.len() as i64);
        let members = state.target.clone();
        let acknowledged = state.acknowledged.clone();
        if let Some(interested) = &interested {
            let selector = interested.selector(self.inner.config.key);
            self.inner.selector.send_if_modified(|cur| {
                let changed = *cur != selector;
                if changed {
                    *cur = selector;
                }
                changed
            });
        }
        self.inner.status.send_if_modified(|s| {
            let interested = interested.clone().unwrap_or_else(|| s.interested.clone());
            let new = ShardStatus {
                members,
                acknowledged,
                active,
                interested,
            };
            let changed = *s != new;
            if changed {
                *s = new;
            }
            changed
        });
    }

    /// Create or replace our Lease with a fresh renewal and our acknowledged member list.
    async fn write_lease(&self, state: &mut RunState) -> Result<(), kube::Error> {
        let config = &self.inner.config;
        let name = config.lease_name();
        let claim = serde_json::to_string(&state.acknowledged).unwrap_or_else(|_| "[]".into());
        let now = MicroTime(Timestamp::now());
        let build = |base: Option<Lease>| {
            let mut lease = base.unwrap_or_else(|| Lease {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(config.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    acquire_time: Some(now.clone()),
                    ..LeaseSpec::default()
                }),
            });
            lease
                .metadata
                .labels
                .get_or_insert_with(BTreeMap::new)
                .insert(RING_LABEL.into(), config.ring.clone());
            lease
                .metadata
                .annotations
                .get_or_insert_with(BTreeMap::new)
                .insert(CLAIM_ANNOTATION.into(), claim.clone());
            let spec = lease.spec.get_or_insert_default();
            spec.holder_identity = Some(config.identity.clone());
            spec.lease_duration_seconds = Some(config.lease_duration_seconds());
            spec.renew_time = Some(now.clone());
            lease
        };
        let pp = PostParams::default();
        if let Some(mine) = state.written.clone() {
            match crate::api::replace(&self.inner.api, &name, &pp, &build(Some(mine))).await {
                Ok(w) => {
                    state.written = Some(w);
                    return Ok(());
                }
                Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        // First write, or our copy is stale: read what is there (a previous incarnation's
        // Lease with the same identity is ours to overwrite).
        let current = crate::api::get_opt(&self.inner.api, &name).await?;
        let written = match current {
            Some(c) => crate::api::replace(&self.inner.api, &name, &pp, &build(Some(c))).await?,
            None => crate::api::create(&self.inner.api, &pp, &build(None)).await?,
        };
        state.written = Some(written);
        Ok(())
    }

    /// Stop starting work, wait for work in flight (up to `renew_deadline`), delete the Lease.
    async fn leave(&self, state: &mut RunState) {
        let config = &self.inner.config;
        let slots = config.slots;
        state.target = vec![];
        self.set_active(SlotSet::empty(slots), state, Some(SlotSet::empty(slots)));
        let drained = tokio::time::timeout(config.renew_deadline, async {
            loop {
                let notified = self.inner.drained.notified();
                if self.drained_for(&[]) {
                    return;
                }
                notified.await;
            }
        })
        .await;
        if drained.is_err() {
            // Our Lease stays: others wait for it to expire before taking our slots over.
            tracing::warn!(
                ring = config.ring,
                "work still in flight after renew_deadline; leaving the lease to expire"
            );
            return;
        }
        let name = config.lease_name();
        match crate::api::delete(&self.inner.api, &name, &DeleteParams::default()).await {
            Ok(()) => tracing::info!(ring = config.ring, lease = name, "left the shard ring"),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => {
                tracing::warn!(ring = config.ring, error = %e, "could not delete the shard lease; it will expire")
            }
        }
    }
}

/// The ring as one replica's `run` tracks it.
#[derive(Debug)]
struct RunState {
    /// The member list our Lease claims by.
    acknowledged: Vec<String>,
    /// The live members as last read.
    target: Vec<String>,
    peers: HashMap<String, Peer>,
    /// Our Lease as last written.
    written: Option<Lease>,
    last_renewal: Option<Instant>,
}

fn claim_text(lease: &Lease) -> Option<&str> {
    lease
        .metadata
        .annotations
        .as_ref()?
        .get(CLAIM_ANNOTATION)
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_range_checked() {
        let ok = ShardConfig::new("ns", "ring");
        assert!(ok.validate().is_ok());
        for bad in [
            ShardConfig {
                ring: "Ring_1".into(),
                ..ok.clone()
            },
            ShardConfig {
                slots: 0,
                ..ok.clone()
            },
            ShardConfig {
                slots: 8192,
                ..ok.clone()
            },
            ShardConfig {
                renew_deadline: Duration::from_secs(20),
                ..ok.clone()
            },
            ShardConfig {
                retry_period: Duration::from_secs(10),
                ..ok.clone()
            },
            ShardConfig {
                lease_duration: Duration::ZERO,
                ..ok.clone()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        assert!(ok.lease_name().starts_with("ring-"));
    }
}
