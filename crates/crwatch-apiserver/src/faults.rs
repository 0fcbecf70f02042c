//! Fault injection and request accounting for tests: drop watches, compact history, fail the
//! next requests, add latency, pause, and count what clients asked for; and the three fault
//! patterns Sieve (OSDI'22) and Acto (SOSP'23) find controller bugs with:
//!
//! - **stale reads** ([`Faults::stale_reads`]): one client is served a lagging view, as by an
//!   HA API server whose watch cache is behind: its reads the real server answers from its
//!   watch cache (`resourceVersion=0`) answer from a past revision (rebuilt from the store's
//!   history), and its watches start there and deliver a change only once it is `lag` old
//!   ([`Faults::stale_reads_all`] makes even consistent reads stale);
//! - **unobserved states** ([`Faults::coalesce_events`]): a client's watches merge the changes
//!   of one object within a window, so it misses intermediate states (never final ones);
//! - **crash points** ([`Faults::hold_write`]): the Nth write of a client is held right before
//!   it is applied or right after (before the answer goes out), so a test can kill the
//!   controller at exactly that point and start it again.
//!
//! Fault state is per [`Match`] and bounded: one entry per call, replaced by the same
//! `Match`; the clock that maps revisions to times keeps a bounded number of samples.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::api::{Api, Ctx};
use crate::meta::meta_str;
use crate::status::{ApiError, ApiResult};
use crate::store::Store;

/// One request as the server saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, `deletecollection`, or the
    /// HTTP method for non-resource paths.
    pub verb: String,
    /// Plural resource (with `/status` or `/scale` for subresources); empty for non-resource paths.
    pub resource: String,
    /// API group.
    pub group: String,
    /// Namespace, if any.
    pub namespace: String,
    /// Object name, if any.
    pub name: String,
    /// The request path.
    pub path: String,
    /// The client's `User-Agent` header (empty when it sent none).
    pub user_agent: String,
}

/// Which requests an injected fault applies to: every condition set must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Match {
    /// Only this verb (`list`, `watch`, `patch`, ...).
    pub verb: Option<String>,
    /// Only this plural resource.
    pub resource: Option<String>,
    /// Only clients whose `User-Agent` starts with this (client-go's agents read
    /// `name/version (os/arch) kubernetes/commit`, so the program name alone matches).
    pub user_agent: Option<String>,
}

impl Match {
    /// Every resource request.
    pub fn any() -> Self {
        Match::default()
    }

    /// Only requests with this verb.
    pub fn verb(verb: &str) -> Self {
        Match::any().with_verb(verb)
    }

    /// Only requests for this resource (plural, like `databases`).
    pub fn resource(resource: &str) -> Self {
        Match::any().with_resource(resource)
    }

    /// Only requests of clients whose `User-Agent` starts with `prefix`.
    pub fn user_agent(prefix: &str) -> Self {
        Match::any().with_user_agent(prefix)
    }

    /// This match, narrowed to one verb.
    pub fn with_verb(mut self, verb: &str) -> Self {
        self.verb = Some(verb.into());
        self
    }

    /// This match, narrowed to one resource.
    pub fn with_resource(mut self, resource: &str) -> Self {
        self.resource = Some(resource.into());
        self
    }

    /// This match, narrowed to clients whose `User-Agent` starts with `prefix`.
    pub fn with_user_agent(mut self, prefix: &str) -> Self {
        self.user_agent = Some(prefix.into());
        self
    }

    fn matches(&self, r: &RequestRecord) -> bool {
        self.matches_parts(&r.verb, &r.resource, &r.user_agent)
    }

    /// The test on a request's verb, resource (`x/status` for a subresource) and agent.
    pub(crate) fn matches_parts(&self, verb: &str, resource: &str, user_agent: &str) -> bool {
        self.verb.as_ref().is_none_or(|v| v == verb)
            && self
                .resource
                .as_ref()
                .is_none_or(|res| resource == res || resource.split('/').next() == Some(res.as_str()))
            && self
                .user_agent
                .as_ref()
                .is_none_or(|ua| user_agent.starts_with(ua.as_str()))
    }
}

/// How far behind a stale view is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lag {
    /// This many revisions behind the newest (a change becomes visible once `n` more have
    /// been made, or the fault is cleared).
    Revisions(u64),
    /// The store as it was this long ago (never older than when the fault was set: the
    /// server notes revision times only while a time lag is in force).
    Time(Duration),
}

/// Where [`Faults::hold_write`] stops a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WritePoint {
    /// Before the write is applied (nothing changed yet).
    Before,
    /// After it was applied, before the client gets the answer.
    After,
}

/// What a held write does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    Proceed,
    Fail,
}

struct GateInner {
    only: Match,
    nth: u64,
    point: WritePoint,
    /// Matching writes seen so far (only counted up to `nth`).
    seen: Mutex<u64>,
    reached: watch::Sender<Option<RequestRecord>>,
    decision: watch::Sender<Option<Decision>>,
}

impl GateInner {
    async fn hold(&self, record: RequestRecord) -> Decision {
        let mut decided = self.decision.subscribe();
        self.reached.send_replace(Some(record));
        // An error means the gate is gone (dropped): go on.
        match decided.wait_for(Option::is_some).await {
            Ok(d) => d.unwrap_or(Decision::Proceed),
            Err(_) => Decision::Proceed,
        }
    }
}

/// A crash point: the `nth` matching write of a client, held before or after it is applied
/// until [`WriteGate::release`] or [`WriteGate::fail`] (or until the gate is dropped, which
/// releases it).
///
/// ```no_run
/// # async fn t(server: crwatch_apiserver::TestServer) {
/// use crwatch_apiserver::faults::{Match, WritePoint};
/// let gate = server.faults().hold_write(Match::user_agent("my-controller"), 3, WritePoint::After);
/// let write = gate.reached().await; // the 3rd write is applied, its answer held
/// // ... kill the controller here, then let the server finish the request
/// gate.release();
/// # let _ = write; }
/// ```
pub struct WriteGate {
    inner: Arc<GateInner>,
    faults: Faults,
}

impl WriteGate {
    /// Wait until the write is held; the request it is.
    pub async fn reached(&self) -> RequestRecord {
        let mut rx = self.inner.reached.subscribe();
        match rx.wait_for(Option::is_some).await {
            Ok(r) => r.clone().unwrap_or_else(empty_record),
            // The sender lives in `self`: never closed while we wait.
            Err(_) => empty_record(),
        }
    }

    /// The held request, if the write was reached.
    pub fn held(&self) -> Option<RequestRecord> {
        self.inner.reached.borrow().clone()
    }

    /// Let the write go ahead ([`WritePoint::Before`]) or its answer go out
    /// ([`WritePoint::After`]).
    pub fn release(&self) {
        self.inner.decision.send_replace(Some(Decision::Proceed));
    }

    /// Refuse a write held [`WritePoint::Before`] with 503 (it is never applied); for a write
    /// held after, the same as [`WriteGate::release`].
    pub fn fail(&self) {
        self.inner.decision.send_replace(Some(Decision::Fail));
    }
}

impl Drop for WriteGate {
    fn drop(&mut self) {
        self.faults.lock().gates.retain(|g| !Arc::ptr_eq(g, &self.inner));
        if self.inner.decision.borrow().is_none() {
            self.release();
        }
    }
}

fn empty_record() -> RequestRecord {
    RequestRecord {
        verb: String::new(),
        resource: String::new(),
        group: String::new(),
        namespace: String::new(),
        name: String::new(),
        path: String::new(),
        user_agent: String::new(),
    }
}

/// What [`Faults::on_request`] let through: a write held after it is applied finishes here.
#[must_use = "call finish once the request was handled"]
pub(crate) struct Admitted {
    after: Option<(Arc<GateInner>, RequestRecord)>,
}

impl Admitted {
    /// The request was handled (`ok`: successfully); hold its answer if a gate says so.
    pub(crate) async fn finish(self, ok: bool) {
        if let Some((gate, record)) = self.after
            && ok
        {
            gate.hold(record).await;
        }
    }
}

/// The verbs that change objects, which crash points count.
fn is_write(verb: &str) -> bool {
    matches!(
        verb,
        "create" | "update" | "patch" | "delete" | "deletecollection"
    )
}

/// How many requests [`Faults::requests`] keeps (a long test must not grow without bound).
pub const REQUEST_LOG: usize = 100_000;

/// Samples of (time, newest revision), for [`Lag::Time`].
const CLOCK_SAMPLES: usize = 16_384;

#[derive(Default)]
struct RevClock {
    samples: VecDeque<(Instant, u64)>,
    /// Stops the sampling task once no time lag is in force.
    task: Option<CancellationToken>,
}

impl RevClock {
    fn note(&mut self, rev: u64) {
        if self.samples.back().is_some_and(|(_, r)| *r >= rev) {
            return;
        }
        if self.samples.len() >= CLOCK_SAMPLES {
            // Dropping the oldest makes views a little fresher than asked, never wrong.
            self.samples.pop_front();
        }
        self.samples.push_back((Instant::now(), rev));
    }

    /// The newest revision at `at` (the oldest noted one if `at` is before every sample).
    fn at(&self, at: Instant) -> Option<u64> {
        let i = self.samples.partition_point(|(t, _)| *t <= at);
        match i {
            0 => self.samples.front().map(|(_, r)| *r),
            i => self.samples.get(i - 1).map(|(_, r)| *r),
        }
    }
}

#[derive(Debug, Clone)]
struct Failure {
    remaining: usize,
    code: u16,
    retry_after: Option<u64>,
    only: Match,
}

#[derive(Default)]
struct State {
    failures: Vec<Failure>,
    latency: Duration,
    /// The newest [`REQUEST_LOG`] requests.
    log: VecDeque<RequestRecord>,
    counts: BTreeMap<(String, String), u64>,
    /// Requests that got past the pause and are being served.
    served: BTreeMap<(String, String), u64>,
    /// Clients served a lagging view, one entry per `Match`; true when consistent reads are
    /// stale too.
    stale: Vec<(Match, Lag, bool)>,
    /// Watchers whose changes are merged within a window, one entry per `Match`.
    coalesce: Vec<(Match, Duration)>,
    /// Crash points not dropped yet.
    gates: Vec<Arc<GateInner>>,
    clock: RevClock,
}

/// The fault handle, shared by the server and the test that drives it.
#[derive(Clone)]
pub struct Faults {
    state: Arc<Mutex<State>>,
    paused: Arc<watch::Sender<bool>>,
    drops: Arc<watch::Sender<u64>>,
    /// Bumped whenever stale-read or coalescing settings change, so held watchers look again.
    changed: Arc<watch::Sender<u64>>,
    store: Arc<Store>,
    /// The workload simulator's faults (crash-looping Pods, NotReady Nodes; see `crate::sim`).
    pub(crate) sim: Arc<crate::sim::SimFaults>,
}

impl Faults {
    pub(crate) fn new(store: Arc<Store>) -> Self {
        Faults {
            state: Arc::default(),
            paused: Arc::new(watch::channel(false).0),
            drops: Arc::new(watch::channel(0).0),
            changed: Arc::new(watch::channel(0).0),
            store,
            sim: Arc::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Counters and queues stay valid whatever panicked while they were held.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// End every open watch now (clients see the stream close and must reconnect).
    pub fn drop_watches(&self) {
        self.drops.send_modify(|n| *n += 1);
    }

    /// Forget all history: watches and continue tokens from older revisions get 410 Gone.
    pub fn compact(&self) {
        self.store.compact();
    }

    /// Fail the next `n` matching requests with `code` (429 carries `Retry-After: 1`; 403 is the
    /// RBAC denial the real server sends for that request).
    pub fn fail_next(&self, n: usize, code: u16, only: Match) {
        let retry_after = (code == 429 || code == 503).then_some(1);
        self.lock().failures.push(Failure {
            remaining: n,
            code,
            retry_after,
            only,
        });
    }

    /// Serve the clients `only` matches a lagging view, as an HA API server whose watch cache
    /// is behind serves it (Sieve's stale-state and intermediate-state faults): their GETs and
    /// LISTs that the real server answers from its watch cache (`resourceVersion=0`, or a
    /// `NotOlderThan` revision at most the view's) answer from the revision `lag` behind
    /// (rebuilt from history, so never older than the oldest revision history keeps), and
    /// their watches start there and deliver a change only once it is visible. Reads without a
    /// `resourceVersion` are consistent (quorum) reads on the real server and stay fresh, as
    /// do reads of an exact or newer revision: no server answers older than asked.
    /// Replaces an earlier setting for the same `Match`; [`Faults::clear_stale_reads`] ends it
    /// and lets held watch events flow.
    pub fn stale_reads(&self, only: Match, lag: Lag) {
        self.set_stale(only, lag, false);
    }

    /// As [`Faults::stale_reads`], and reads without a `resourceVersion` are stale too: what
    /// a client behind a cache that ignores consistency sees, or, for a controller, what it
    /// would do if it saw the past (its writes based on the past must fail their
    /// resourceVersion precondition, not undo newer state).
    pub fn stale_reads_all(&self, only: Match, lag: Lag) {
        self.set_stale(only, lag, true);
    }

    fn set_stale(&self, only: Match, lag: Lag, consistent_too: bool) {
        let mut s = self.lock();
        s.stale.retain(|(m, _, _)| *m != only);
        s.stale.push((only, lag, consistent_too));
        if matches!(lag, Lag::Time(_)) && s.clock.task.is_none() {
            self.start_clock(&mut s);
        }
        drop(s);
        self.changed.send_modify(|n| *n += 1);
    }

    /// End every stale-read fault.
    pub fn clear_stale_reads(&self) {
        let mut s = self.lock();
        s.stale.clear();
        if let Some(task) = s.clock.task.take() {
            task.cancel();
        }
        s.clock.samples.clear();
        drop(s);
        self.changed.send_modify(|n| *n += 1);
    }

    /// Note revision times from now on (for [`Lag::Time`]) in a task that ends with
    /// [`Faults::clear_stale_reads`]. Without a Tokio runtime, only request times are noted.
    fn start_clock(&self, s: &mut State) {
        s.clock.note(self.store.revision());
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let stop = CancellationToken::new();
        s.clock.task = Some(stop.clone());
        let mut rx = self.store.subscribe();
        let state = Arc::downgrade(&self.state);
        let store = self.store.clone();
        rt.spawn(async move {
            loop {
                let rev = tokio::select! {
                    _ = stop.cancelled() => return,
                    ev = rx.recv() => match ev {
                        Ok(ev) => ev.rev,
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => store.revision(),
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    },
                };
                let Some(state) = state.upgrade() else { return };
                state.lock().unwrap_or_else(|p| p.into_inner()).clock.note(rev);
            }
        });
    }

    /// The revision a client's view is at, if it is served a stale one (for a `consistent`
    /// read only under [`Faults::stale_reads_all`]).
    pub(crate) fn stale_revision(
        &self,
        verb: &str,
        resource: &str,
        user_agent: &str,
        consistent: bool,
    ) -> Option<u64> {
        let s = self.lock();
        let lag = s
            .stale
            .iter()
            .find(|(m, _, all)| (*all || !consistent) && m.matches_parts(verb, resource, user_agent))
            .map(|(_, lag, _)| *lag)?;
        let newest = self.store.revision();
        let rev = match lag {
            Lag::Revisions(n) => newest.saturating_sub(n),
            Lag::Time(d) => match Instant::now().checked_sub(d) {
                Some(at) => s.clock.at(at).unwrap_or(newest),
                None => s.clock.samples.front().map_or(newest, |(_, r)| *r),
            },
        };
        // History cannot rebuild anything older than its oldest revision.
        Some(rev.max(self.store.oldest()).max(1).min(newest))
    }

    /// A stale client's GET of an object or its status, answered from its view; `None` when
    /// the request is served as usual.
    pub(crate) fn stale_get(&self, ctx: &Ctx) -> Option<ApiResult<Value>> {
        if !matches!(ctx.sub.as_str(), "" | "status") {
            return None;
        }
        let resource = if ctx.sub.is_empty() {
            ctx.def.plural.clone()
        } else {
            format!("{}/{}", ctx.def.plural, ctx.sub)
        };
        let asked = ctx.params.get("resourceVersion").unwrap_or_default();
        let view = self.stale_revision("get", &resource, &ctx.user_agent, asked.is_empty())?;
        if !asked.is_empty() && asked.parse::<u64>().map_or(true, |rv| rv > view) {
            return None;
        }
        let objects = self
            .store
            .list_at(&ctx.def.key(), Some(&ctx.namespace), view)
            .ok()?;
        let found = objects.iter().find(|o| meta_str(o, "name") == ctx.name);
        Some(match found {
            Some(o) => Ok(Api::present(&ctx.def, o)),
            None => Err(ApiError::not_found(&ctx.def.group, &ctx.def.plural, &ctx.name)),
        })
    }

    /// A stale client's LIST, rewritten to an exact read at its view; `None` when the request
    /// is served as asked (paging on, an exact revision, or a newer one asked for).
    pub(crate) fn stale_list(&self, ctx: &Ctx) -> Option<Ctx> {
        let rv = ctx.params.get("resourceVersion").unwrap_or_default();
        let view = self.stale_revision("list", &ctx.def.plural, &ctx.user_agent, rv.is_empty())?;
        let rv_match = ctx.params.get("resourceVersionMatch").unwrap_or_default();
        if ctx.params.get("continue").is_some_and(|c| !c.is_empty()) || rv_match == "Exact" {
            return None;
        }
        if !rv.is_empty() && rv.parse::<u64>().map_or(true, |rv| rv > view) {
            return None;
        }
        let mut stale = ctx.clone();
        stale.params.0.insert("resourceVersion".into(), view.to_string());
        stale
            .params
            .0
            .insert("resourceVersionMatch".into(), "Exact".into());
        Some(stale)
    }

    /// Merge the changes a matched client's watches see of one object within `window`, so
    /// only the last state in each window is delivered (Sieve's unobserved states): MODIFIED
    /// after MODIFIED keeps the last, ADDED then MODIFIED is one ADDED of the last state,
    /// MODIFIED then DELETED is the DELETED, and an object ADDED and DELETED within the window
    /// is never seen at all. Final states are always delivered, in revision order; a batch of
    /// as many objects as a watch may queue is delivered at once rather than grow. Replaces
    /// an earlier setting for the same `Match`.
    pub fn coalesce_events(&self, only: Match, window: Duration) {
        let mut s = self.lock();
        s.coalesce.retain(|(m, _)| *m != only);
        s.coalesce.push((only, window));
        drop(s);
        self.changed.send_modify(|n| *n += 1);
    }

    /// End every coalescing fault (merged changes waiting in a window are delivered).
    pub fn clear_coalesce_events(&self) {
        self.lock().coalesce.clear();
        self.changed.send_modify(|n| *n += 1);
    }

    /// The coalescing window of a watch of `resource` by `user_agent`, if any.
    pub(crate) fn coalesce_window(&self, resource: &str, user_agent: &str) -> Option<Duration> {
        self.lock()
            .coalesce
            .iter()
            .find(|(m, _)| m.matches_parts("watch", resource, user_agent))
            .map(|(_, w)| *w)
    }

    /// A receiver that changes whenever stale-read or coalescing settings change.
    pub(crate) fn settings_changed(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// A crash point: hold the `nth` write (create, update, patch, delete, deletecollection;
    /// counted from now, `nth` at least 1) that `only` matches, [`WritePoint::Before`] it is
    /// applied or [`WritePoint::After`] (before the client gets the answer), and tell the
    /// test through [`WriteGate::reached`]. Other requests, and writes of other clients, go on.
    pub fn hold_write(&self, only: Match, nth: u64, point: WritePoint) -> WriteGate {
        let inner = Arc::new(GateInner {
            only,
            nth: nth.max(1),
            point,
            seen: Mutex::new(0),
            reached: watch::channel(None).0,
            decision: watch::channel(None).0,
        });
        self.lock().gates.push(inner.clone());
        WriteGate {
            inner,
            faults: self.clone(),
        }
    }

    /// Delay every request by `latency` (zero to stop).
    pub fn set_latency(&self, latency: Duration) {
        self.lock().latency = latency;
    }

    /// Hold every new request until [`Faults::resume`].
    pub fn pause(&self) {
        self.paused.send_replace(true);
    }

    /// Let held and new requests through.
    pub fn resume(&self) {
        self.paused.send_replace(false);
    }

    /// How many requests with this verb and resource got past [`Faults::pause`] and were
    /// served (a watch counted here is streaming, so [`Faults::drop_watches`] ends it), unlike
    /// [`Faults::count`], which also counts requests still held by a pause.
    pub fn served(&self, verb: &str, resource: &str) -> u64 {
        self.lock()
            .served
            .get(&(verb.to_string(), resource.to_string()))
            .copied()
            .unwrap_or(0)
    }

    /// A watch of `resource` is streaming and will see [`Faults::drop_watches`].
    pub(crate) fn watch_streaming(&self, resource: &str) {
        *self
            .lock()
            .served
            .entry(("watch".to_string(), resource.to_string()))
            .or_default() += 1;
    }

    /// How many requests had this verb and resource (plural, `databases/status` for a subresource).
    pub fn count(&self, verb: &str, resource: &str) -> u64 {
        self.lock()
            .counts
            .get(&(verb.to_string(), resource.to_string()))
            .copied()
            .unwrap_or(0)
    }

    /// The requests seen so far, oldest first (the newest [`REQUEST_LOG`] of them; the
    /// counts of [`Faults::count`] cover all).
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.lock().log.iter().cloned().collect()
    }

    /// Forget recorded requests and counts.
    pub fn clear_requests(&self) {
        let mut s = self.lock();
        s.log.clear();
        s.counts.clear();
    }

    /// A receiver that changes whenever watches are to be dropped.
    pub(crate) fn drop_signal(&self) -> watch::Receiver<u64> {
        self.drops.subscribe()
    }

    /// Record the request, wait out pause and latency, hold it at a crash point, and return
    /// an injected failure if one is due.
    pub(crate) async fn on_request(&self, record: RequestRecord) -> Result<Admitted, ApiError> {
        let forbidden = forbidden(&record);
        let record_key = (record.verb.clone(), record.resource.clone());
        let (latency, failure, gate) = {
            let mut s = self.lock();
            if s.clock.task.is_some() {
                s.clock.note(self.store.revision());
            }
            let gate = if is_write(&record.verb) {
                s.gates.iter().find_map(|g| {
                    if !g.only.matches(&record) {
                        return None;
                    }
                    let mut seen = g.seen.lock().unwrap_or_else(|p| p.into_inner());
                    if *seen >= g.nth {
                        return None;
                    }
                    *seen += 1;
                    (*seen == g.nth).then(|| g.clone())
                })
            } else {
                None
            };
            *s.counts
                .entry((record.verb.clone(), record.resource.clone()))
                .or_default() += 1;
            let failure = if record.resource.is_empty() {
                None
            } else {
                let found = s
                    .failures
                    .iter_mut()
                    .find(|f| f.remaining > 0 && f.only.matches(&record));
                found.map(|f| {
                    f.remaining -= 1;
                    (f.code, f.retry_after)
                })
            };
            s.failures.retain(|f| f.remaining > 0);
            // Only a held write needs its record again: no copy for every other request.
            let gate = gate.map(|g| (g, record.clone()));
            if s.log.len() >= REQUEST_LOG {
                s.log.pop_front();
            }
            s.log.push_back(record);
            (s.latency, failure, gate)
        };
        let key = (record_key.0, record_key.1);
        let mut paused = self.paused.subscribe();
        // An error means the sender is gone, which only happens at shutdown: go on.
        let _ = paused.wait_for(|p| !p).await;
        // A watch counts once it streams (see `watch_streaming`): only then does a drop end it.
        if key.0 != "watch" {
            *self.lock().served.entry(key).or_default() += 1;
        }
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        let mut admitted = Admitted { after: None };
        if let Some((gate, record)) = gate {
            match gate.point {
                WritePoint::Before => {
                    if gate.hold(record).await == Decision::Fail {
                        return Err(ApiError::new(
                            503,
                            "ServiceUnavailable",
                            "the server is currently unable to handle the request",
                        ));
                    }
                }
                WritePoint::After => admitted.after = Some((gate, record)),
            }
        }
        match failure {
            None => Ok(admitted),
            Some((code, retry_after)) => {
                let mut err = match code {
                    429 => ApiError::new(
                        429,
                        "TooManyRequests",
                        "Too many requests, please try again later.",
                    ),
                    503 => ApiError::new(
                        503,
                        "ServiceUnavailable",
                        "the server is currently unable to handle the request",
                    ),
                    500 => ApiError::internal("injected failure"),
                    403 => forbidden,
                    other => ApiError::new(
                        other,
                        "InternalError",
                        format!("injected failure with code {other}"),
                    ),
                };
                err.retry_after = retry_after;
                Err(err)
            }
        }
    }
}

/// The 403 an RBAC denial of `record` gets from the real server, word for word (the requester
/// is anonymous here).
fn forbidden(record: &RequestRecord) -> ApiError {
    let user = "system:anonymous";
    if record.resource.is_empty() {
        let message = format!(
            "forbidden: User {user:?} cannot {} path {:?}",
            record.verb, record.path
        );
        return ApiError::new(403, "Forbidden", message);
    }
    let scope = if record.namespace.is_empty() {
        "at the cluster scope".to_string()
    } else {
        format!("in the namespace {:?}", record.namespace)
    };
    let why = format!(
        "User {user:?} cannot {} resource {:?} in API group {:?} {scope}",
        record.verb, record.resource, record.group
    );
    let plural = record.resource.split('/').next().unwrap_or_default();
    let qualified = if record.group.is_empty() {
        plural.to_string()
    } else {
        format!("{plural}.{}", record.group)
    };
    let message = if record.name.is_empty() {
        format!("{qualified} is forbidden: {why}")
    } else {
        format!("{qualified} {:?} is forbidden: {why}", record.name)
    };
    let mut err = ApiError::new(403, "Forbidden", message);
    let mut details = serde_json::json!({"group": record.group, "kind": plural});
    if !record.name.is_empty() {
        details["name"] = serde_json::json!(record.name);
    }
    err.details = Some(Box::new(details));
    err
}

#[cfg(test)]
mod forbidden_tests {
    use super::*;

    #[tokio::test]
    async fn the_request_log_keeps_the_newest_and_counts_all() {
        let faults = Faults::new(Arc::new(Store::new(100, 16)));
        for i in 0..REQUEST_LOG + 5 {
            let mut r = empty_record();
            r.verb = "get".into();
            r.name = i.to_string();
            faults.on_request(r).await.expect("no fault").finish(true).await;
        }
        let log = faults.requests();
        assert_eq!(log.len(), REQUEST_LOG);
        assert_eq!(log.first().map(|r| r.name.as_str()), Some("5"));
        assert_eq!(faults.count("get", ""), (REQUEST_LOG + 5) as u64);
    }

    #[test]
    fn injected_403s_read_like_rbac_denials() {
        let record = |verb: &str, resource: &str, group: &str, ns: &str, name: &str| RequestRecord {
            verb: verb.into(),
            resource: resource.into(),
            group: group.into(),
            namespace: ns.into(),
            name: name.into(),
            path: "/x".into(),
            user_agent: String::new(),
        };
        let e = forbidden(&record("list", "configmaps", "", "default", ""));
        assert_eq!(
            e.message,
            r#"configmaps is forbidden: User "system:anonymous" cannot list resource "configmaps" in API group "" in the namespace "default""#
        );
        let e = forbidden(&record("get", "databases", "stable.example.com", "", "db"));
        assert_eq!(
            e.message,
            r#"databases.stable.example.com "db" is forbidden: User "system:anonymous" cannot get resource "databases" in API group "stable.example.com" at the cluster scope"#
        );
        assert_eq!(e.code, 403);
        assert_eq!(e.reason, "Forbidden");
    }
}
