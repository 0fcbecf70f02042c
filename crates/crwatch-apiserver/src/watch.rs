//! Watch streams: replay from a resourceVersion or start with the current state, then follow
//! the store; selectors, bookmarks, `sendInitialEvents`, timeouts, 410 Gone, and closing
//! watchers that fall behind or that a test drops.
//!
//! Memory is bounded per watch, as in the real server's watch cache (`cacheWatcher`): each
//! stored change is encoded once per rendering and the encoded line is shared by every watcher
//! (`LineCache`); a watch queues at most `watch_buffer` lines and `watch_buffer_bytes` bytes
//! for its client; replay from history goes a chunk at a time; and a watcher whose queue stays
//! full while new changes arrive is closed within the real dispatch budget (up to 100 ms,
//! refilled by 50 ms a second), dropping what it had queued. Its client sees the stream end
//! and re-watches from the last resourceVersion it received.
//!
//! Two test faults act here (see [`crate::faults`]): a client served a stale view starts from
//! its view's revision and gets each change only once the view reaches it; and a client whose
//! changes are coalesced gets, per window, only the last state of each object (at most
//! `watch_buffer` objects are merged before the batch is delivered, so the merge is bounded
//! like the queue).

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::api::{Api, Ctx};
use crate::meta::meta_str;
use crate::registry::ResourceDef;
use crate::selector::{FieldSelector, LabelSelector};
use crate::status::{ApiError, ApiResult};
use crate::store::{Event, EventType, Store, Stored, Subscription};

/// How a watch renders objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Plain objects.
    Object,
    /// `meta.k8s.io/v1` Tables, with the given `includeObject` policy.
    Table {
        /// Embed the full object in each row instead of its metadata.
        full_object: bool,
    },
    /// `meta.k8s.io/v1` PartialObjectMetadata: metadata only.
    Metadata,
}

/// Settings of the watch machinery.
#[derive(Debug, Clone)]
pub struct WatchSettings {
    /// How often idle watches that asked for them get BOOKMARK events (any value works: it is
    /// kept between 1 second and a year).
    pub bookmark_interval: Duration,
    /// Longest watch when the client gives no `timeoutSeconds`.
    pub default_timeout: Duration,
    /// Bytes of encoded lines one watch may have queued for its client (one line is always
    /// accepted, however large).
    pub buffer_bytes: usize,
}

/// Default of [`WatchSettings::buffer_bytes`]: 16 MiB per watch.
pub const DEFAULT_BUFFER_BYTES: usize = 16 << 20;

/// Changes a catching-up watcher takes from history at a time.
const CATCH_UP_CHUNK: usize = 64;

/// The real cacher's dispatch budget (`time_budget.go`): a blocked watcher gets at most this
/// long for room in its buffer before it is closed...
const MAX_BUDGET: Duration = Duration::from_millis(100);
/// ...and the budget refills by this much per second.
const REFRESH_PER_SECOND: Duration = Duration::from_millis(50);

struct Filter {
    def: Arc<ResourceDef>,
    namespace: String,
    labels: LabelSelector,
    fields: FieldSelector,
    /// KEP-5866's `shardSelector`: an object's uid and namespace never change, so an object
    /// never moves into or out of a watch's shard; it only narrows what the watch sees.
    shard: Option<crate::shard::ShardSelector>,
}

impl Filter {
    /// Whether a stored object in namespace `ns` matches.
    fn matches(&self, ns: &str, o: &Stored) -> bool {
        (self.namespace.is_empty() || ns == self.namespace) && self.selects(o)
    }

    /// Whether the selectors accept a stored object (parsed only when there are any).
    fn selects(&self, o: &Stored) -> bool {
        self.shard.as_ref().is_none_or(|s| s.matches_stored(o))
            && (self.labels.is_empty() && self.fields.is_empty() || {
                let o = o.value();
                self.labels.matches_object(&o) && self.fields.matches(&o)
            })
    }

    /// What a watcher with these selectors sees of an event, as the real server decides it:
    /// an object that stops matching is DELETED, one that starts matching is ADDED.
    fn translate<'a>(&self, ev: &'a Event) -> Option<(&'static str, &'a Stored)> {
        if ev.gr != self.def.key() {
            return None;
        }
        let ns = ev.key.0.as_str();
        let now = self.matches(ns, &ev.object);
        match ev.kind {
            EventType::Added => now.then_some(("ADDED", &*ev.object)),
            EventType::Deleted => {
                let before = ev.prev.as_ref().map(|p| self.matches(ns, p)).unwrap_or(now);
                before.then_some(("DELETED", &*ev.object))
            }
            EventType::Modified => {
                let before = ev.prev.as_ref().map(|p| self.matches(ns, p)).unwrap_or(false);
                match (before, now) {
                    (true, true) => Some(("MODIFIED", &*ev.object)),
                    (false, true) => Some(("ADDED", &*ev.object)),
                    (true, false) => Some(("DELETED", &*ev.object)),
                    (false, false) => None,
                }
            }
        }
    }
}

struct Encoder {
    def: Arc<ResourceDef>,
    format: Format,
    columns_sent: bool,
}

impl Encoder {
    fn event(&mut self, kind: &str, obj: &Value) -> Bytes {
        let object = match self.format {
            Format::Object => Api::present(&self.def, obj),
            Format::Metadata => crate::table::partial_metadata(obj),
            Format::Table { full_object } => {
                let mut t = crate::table::to_table(
                    &self.def,
                    &[obj],
                    json!({"resourceVersion": meta_str(obj, "resourceVersion")}),
                    !self.columns_sent,
                );
                if full_object {
                    t["rows"][0]["object"] = Api::present(&self.def, obj);
                }
                self.columns_sent = true;
                t
            }
        };
        line(&json!({"type": kind, "object": object}))
    }

    /// The line for a stored change: plain objects and metadata are encoded once per change
    /// and rendering and shared with every other watcher (Tables carry per-watch state, the
    /// column definitions sent once, so they are encoded per watch).
    fn change(&mut self, ev: &Event, kind: &'static str, obj: &Stored) -> Bytes {
        let metadata = match self.format {
            Format::Object => false,
            Format::Metadata => true,
            Format::Table { .. } => return self.stored(kind, obj),
        };
        let def = self.def.clone();
        ev.lines
            .get_or_encode(kind, metadata, &def, || self.stored(kind, obj).to_vec())
    }

    /// The line for a stored object: its stored text as it is when presenting the object
    /// changes nothing (the bytes encoding its value gives), else encoded from its value.
    fn stored(&mut self, kind: &'static str, obj: &Stored) -> Bytes {
        if matches!(self.format, Format::Object)
            && let Some(text) = crate::api::as_presented(&self.def, obj)
        {
            // A kind is an ASCII word: quoting it needs no escapes.
            let head = format!("{{\"type\":\"{kind}\",\"object\":");
            let mut out = Vec::with_capacity(head.len() + text.len() + 2);
            out.extend_from_slice(head.as_bytes());
            out.extend_from_slice(text.as_bytes());
            out.extend_from_slice(b"}\n");
            return Bytes::from(out);
        }
        self.event(kind, &obj.value())
    }

    fn bookmark(&self, rev: u64, initial_end: bool) -> Bytes {
        let mut meta = json!({"resourceVersion": rev.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let object = match self.format {
            Format::Object => {
                json!({"kind": self.def.kind, "apiVersion": self.def.api_version(), "metadata": meta})
            }
            Format::Metadata => {
                json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": meta})
            }
            Format::Table { .. } => {
                json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta, "columnDefinitions": null, "rows": null})
            }
        };
        line(&json!({"type": "BOOKMARK", "object": object}))
    }
}

fn line(v: &Value) -> Bytes {
    let mut s = v.to_string();
    s.push('\n');
    Bytes::from(s)
}

fn flag(ctx: &Ctx, k: &str) -> Option<bool> {
    ctx.params.get(k).map(|v| v == "true" || v == "1")
}

/// The encoded watch lines of one stored change, by event type and rendering. The cache holds
/// them weakly: a line lives while some watch still has it queued (the real server likewise
/// keeps serializations only while dispatching), so history never holds encoded copies.
#[derive(Default)]
pub struct LineCache(Mutex<Vec<CachedLine>>);

struct CachedLine {
    kind: &'static str,
    metadata: bool,
    /// Held so the pointer compared stays this definition's (the version rendered).
    def: Arc<ResourceDef>,
    line: Weak<Vec<u8>>,
}

impl fmt::Debug for LineCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LineCache")
    }
}

/// A shared encoded line, as the owner of the `Bytes` handed to HTTP.
struct SharedLine(Arc<Vec<u8>>);

impl AsRef<[u8]> for SharedLine {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl LineCache {
    /// The line for this rendering, encoded by `encode` only if no watcher holds it now.
    pub fn get_or_encode(
        &self,
        kind: &'static str,
        metadata: bool,
        def: &Arc<ResourceDef>,
        encode: impl FnOnce() -> Vec<u8>,
    ) -> Bytes {
        // Encoding under the lock: watchers of the same change wait for the first encoding
        // instead of each making their own.
        let mut lines = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let hit = lines
            .iter()
            .filter(|c| c.kind == kind && c.metadata == metadata && Arc::ptr_eq(&c.def, def))
            .find_map(|c| c.line.upgrade());
        if let Some(line) = hit {
            return Bytes::from_owner(SharedLine(line));
        }
        let line = Arc::new(encode());
        lines.retain(|c| c.line.strong_count() > 0);
        lines.push(CachedLine {
            kind,
            metadata,
            def: def.clone(),
            line: Arc::downgrade(&line),
        });
        Bytes::from_owner(SharedLine(line))
    }
}

/// The real cacher's `timeBudget`, per watch: time a blocked watcher may be waited for.
struct TimeBudget {
    available: Duration,
    at: Instant,
}

impl TimeBudget {
    fn new() -> Self {
        TimeBudget {
            available: MAX_BUDGET,
            at: Instant::now(),
        }
    }

    fn take(&mut self) -> Duration {
        let now = Instant::now();
        // Capped before multiplying: two seconds refill the whole budget anyway.
        let idle = now.saturating_duration_since(self.at).min(Duration::from_secs(2));
        self.available = (self.available + REFRESH_PER_SECOND.mul_f64(idle.as_secs_f64())).min(MAX_BUDGET);
        self.at = now;
        std::mem::take(&mut self.available)
    }

    fn give_back(&mut self, unused: Duration) {
        self.available = (self.available + unused).min(MAX_BUDGET);
    }
}

struct QueueState {
    lines: VecDeque<Bytes>,
    bytes: usize,
    /// No more lines will come: the reader ends after the queued ones.
    ended: bool,
}

struct Queue {
    state: Mutex<QueueState>,
    /// Wakes the reader (one reader: a stored permit is never lost).
    readable: Notify,
    /// Wakes the writer when a line was taken.
    writable: Notify,
    /// The client is gone (the response body was dropped).
    reader_gone: CancellationToken,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // Every mutation is complete before the guard drops; a poisoned lock is consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The encoded lines of one watch, in order, for its HTTP response body.
pub struct Lines {
    queue: Arc<Queue>,
}

impl Lines {
    /// The next line, or `None` once the watch is over.
    pub async fn recv(&mut self) -> Option<Bytes> {
        loop {
            {
                let mut st = self.queue.lock();
                if let Some(line) = st.lines.pop_front() {
                    st.bytes -= line.len();
                    drop(st);
                    self.queue.writable.notify_one();
                    return Some(line);
                }
                if st.ended {
                    return None;
                }
            }
            self.queue.readable.notified().await;
        }
    }

    /// Lines and bytes queued now.
    pub fn queued(&self) -> (usize, usize) {
        let st = self.queue.lock();
        (st.lines.len(), st.bytes)
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        self.queue.reader_gone.cancel();
    }
}

/// Why a line could not be queued.
#[derive(Debug, PartialEq, Eq)]
enum Closed {
    /// The client went away.
    Gone,
    /// The client stopped reading: the watch is closed as the real server closes it.
    Unresponsive,
}

/// How long to wait for room in a full queue.
enum Patience<'a> {
    /// A new change: as long as the dispatch budget allows.
    Budget(&'a mut TimeBudget),
    /// Initial state or history replay, which the real server sends at the client's pace: as
    /// long as it takes, unless `watch_buffer` newer changes pile up meanwhile (they would
    /// have filled the real watcher's input buffer), then within the budget.
    Replay(&'a Store, &'a mut TimeBudget),
    /// Bookmarks: only if there is room now, as the real server sends them.
    None,
}

/// The writing end of a watch's queue (the watch task).
struct Sender {
    queue: Arc<Queue>,
    max_lines: usize,
    max_bytes: usize,
}

fn channel(max_lines: usize, max_bytes: usize) -> (Sender, Lines) {
    let queue = Arc::new(Queue {
        state: Mutex::new(QueueState {
            lines: VecDeque::new(),
            bytes: 0,
            ended: false,
        }),
        readable: Notify::new(),
        writable: Notify::new(),
        reader_gone: CancellationToken::new(),
    });
    (
        Sender {
            queue: queue.clone(),
            max_lines: max_lines.max(1),
            max_bytes,
        },
        Lines { queue },
    )
}

impl Sender {
    /// Queue `line` if there is room; otherwise give it back.
    fn try_push(&self, line: Bytes) -> Result<(), Bytes> {
        let mut st = self.queue.lock();
        let fits = st.lines.is_empty()
            || (st.lines.len() < self.max_lines && st.bytes.saturating_add(line.len()) <= self.max_bytes);
        if !fits {
            return Err(line);
        }
        st.bytes += line.len();
        st.lines.push_back(line);
        drop(st);
        self.queue.readable.notify_one();
        Ok(())
    }

    async fn send(&self, line: Bytes, patience: Patience<'_>) -> Result<(), Closed> {
        let mut line = line;
        let (store, budget) = match patience {
            Patience::None => {
                if self.queue.reader_gone.is_cancelled() {
                    return Err(Closed::Gone);
                }
                // A bookmark that does not fit is skipped; a later one carries a newer revision.
                let _ = self.try_push(line);
                return Ok(());
            }
            Patience::Budget(b) => (None, b),
            Patience::Replay(s, b) => (Some(s), b),
        };
        let waiting_since = store.map(Store::revision);
        // Set once the budget clock runs: (start, granted).
        let mut timer: Option<(Instant, Duration)> = None;
        // Made only when waiting (most lines fit at once).
        let mut check: Option<tokio::time::Interval> = None;
        loop {
            if self.queue.reader_gone.is_cancelled() {
                return Err(Closed::Gone);
            }
            match self.try_push(line) {
                Ok(()) => {
                    if let Some((start, granted)) = timer {
                        budget.give_back(granted.saturating_sub(start.elapsed()));
                    }
                    return Ok(());
                }
                Err(back) => line = back,
            }
            let pressed = match (store, waiting_since) {
                (Some(s), Some(since)) => s.revision().saturating_sub(since) >= self.max_lines as u64,
                _ => true,
            };
            if pressed && timer.is_none() {
                timer = Some((Instant::now(), budget.take()));
            }
            match timer {
                Some((start, granted)) => tokio::select! {
                    _ = self.queue.writable.notified() => {}
                    _ = self.queue.reader_gone.cancelled() => return Err(Closed::Gone),
                    _ = tokio::time::sleep_until(start + granted) => {
                        if self.try_push(line).is_ok() {
                            return Ok(());
                        }
                        return Err(Closed::Unresponsive);
                    }
                },
                None => {
                    let tick = check.get_or_insert_with(|| tokio::time::interval(Duration::from_millis(100)));
                    tokio::select! {
                        _ = self.queue.writable.notified() => {}
                        _ = self.queue.reader_gone.cancelled() => return Err(Closed::Gone),
                        _ = tick.tick() => {}
                    }
                }
            }
        }
    }

    /// Close an unresponsive watch: drop what it had queued (the client has not read it; it
    /// gets it again when it re-watches) and end the stream after what HTTP already holds.
    fn abort(&self) -> (usize, usize) {
        let mut st = self.queue.lock();
        let dropped = (st.lines.len(), st.bytes);
        st.lines.clear();
        st.bytes = 0;
        st.ended = true;
        drop(st);
        self.queue.readable.notify_one();
        dropped
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.queue.lock().ended = true;
        self.queue.readable.notify_one();
    }
}

/// The watch task's state.
struct Watcher {
    api: Arc<Api>,
    filter: Filter,
    enc: Encoder,
    tx: Sender,
    drops: tokio::sync::watch::Receiver<u64>,
    stop: CancellationToken,
    budget: TimeBudget,
    /// The newest revision this watch has passed (sent, filtered out, or merged into `batch`).
    last_rev: u64,
    /// Test faults for this client (see [`crate::faults`]).
    faults: WatchFaults,
}

/// The stale-read and coalescing faults as they apply to one watch.
struct WatchFaults {
    user_agent: String,
    /// Changes when the fault settings change.
    settings: tokio::sync::watch::Receiver<u64>,
    /// The client is served a stale view: each change waits until the view reaches it.
    stale: bool,
    /// Changes are merged per object within this window.
    window: Option<Duration>,
    /// Merged changes not delivered yet, at most one per object (and uid).
    batch: Vec<(&'static str, Arc<Event>)>,
    /// When `batch` is due.
    due: Option<Instant>,
}

/// How often a watch held back by a stale view looks whether the view moved on.
const STALE_POLL: Duration = Duration::from_millis(10);

/// The watch is over (the reason was handled); stop the task.
struct Done;

impl Watcher {
    /// Queue one line for the client. A client that stops reading blocks only its own watch,
    /// and only until the patience given runs out: then the watch is closed.
    async fn emit(&mut self, line: Bytes, how: Mode) -> Result<(), Done> {
        let patience = match how {
            Mode::Live => Patience::Budget(&mut self.budget),
            Mode::Replay => Patience::Replay(&self.api.store, &mut self.budget),
            Mode::Bookmark => Patience::None,
        };
        let sent = tokio::select! {
            sent = self.tx.send(line, patience) => sent,
            _ = self.drops.changed() => return Err(Done),
            _ = self.stop.cancelled() => return Err(Done),
        };
        match sent {
            Ok(()) => Ok(()),
            Err(Closed::Gone) => Err(Done),
            Err(Closed::Unresponsive) => {
                let (lines, bytes) = self.tx.abort();
                // The real server's log line (cache_watcher.go), at its verbosity (V(1)).
                tracing::info!(
                    "Forcing {} watcher close due to unresponsiveness: namespace {:?}. queued lines = {lines}, bytes = {bytes}",
                    self.filter.def.group_resource(),
                    self.filter.namespace,
                );
                Err(Done)
            }
        }
    }

    /// Send a stored change if this watch sees it (held back by a stale view, or merged
    /// into the batch, when the client's faults say so).
    async fn change(&mut self, ev: &Arc<Event>, how: Mode) -> Result<(), Done> {
        if ev.gr != self.filter.def.key() {
            self.last_rev = self.last_rev.max(ev.rev);
            return Ok(());
        }
        self.refresh_faults();
        if self.faults.stale {
            self.hold(ev.rev).await?;
        }
        self.last_rev = self.last_rev.max(ev.rev);
        let Some((kind, obj)) = self.filter.translate(ev) else {
            return Ok(());
        };
        if self.faults.window.is_some() {
            self.merge(kind, ev.clone());
            let full = self.faults.batch.len() >= self.tx.max_lines;
            let due = self.faults.due.is_some_and(|d| d <= Instant::now());
            if full || due {
                self.flush(how).await?;
            }
            return Ok(());
        }
        if !self.faults.batch.is_empty() {
            self.flush(how).await?;
        }
        let line = self.enc.change(ev, kind, obj);
        self.emit(line, how).await
    }

    /// Look at the fault settings again if they changed.
    fn refresh_faults(&mut self) {
        if self.faults.settings.has_changed().unwrap_or(false) {
            self.faults.settings.mark_unchanged();
            self.reload_faults();
        }
    }

    fn reload_faults(&mut self) {
        let plural = &self.filter.def.plural;
        let faults = &self.api.faults;
        self.faults.stale = faults
            .stale_revision("watch", plural, &self.faults.user_agent, false)
            .is_some();
        self.faults.window = faults.coalesce_window(plural, &self.faults.user_agent);
    }

    /// Wait until the client's stale view reaches `rev` (or the fault is cleared).
    async fn hold(&mut self, rev: u64) -> Result<(), Done> {
        loop {
            let view = self.api.faults.stale_revision(
                "watch",
                &self.filter.def.plural,
                &self.faults.user_agent,
                false,
            );
            match view {
                Some(view) if view < rev => {}
                _ => return Ok(()),
            }
            tokio::select! {
                _ = tokio::time::sleep(STALE_POLL) => {}
                _ = self.drops.changed() => return Err(Done),
                _ = self.stop.cancelled() => return Err(Done),
                _ = self.tx.queue.reader_gone.cancelled() => return Err(Done),
            }
        }
    }

    /// Merge a change into the batch: the object's last state replaces an earlier one of the
    /// same object (same uid), and one added and deleted within the window disappears.
    fn merge(&mut self, kind: &'static str, ev: Arc<Event>) {
        let object = ev.object.value();
        let uid = meta_str(&object, "uid");
        let batch = &mut self.faults.batch;
        let same = batch
            .iter()
            .rposition(|(_, p)| p.key == ev.key)
            .filter(|i| meta_str(&batch[*i].1.object.value(), "uid") == uid);
        if let Some(i) = same {
            match (batch[i].0, kind) {
                // Still new to the client: one ADDED of the last state.
                ("ADDED", "MODIFIED") => {
                    batch[i].1 = ev;
                    return;
                }
                // Never seen at all.
                ("ADDED", "DELETED") => {
                    batch.remove(i);
                    return;
                }
                ("MODIFIED", "MODIFIED" | "DELETED") => {
                    batch[i] = (kind, ev);
                    return;
                }
                // A DELETED then ADDED (a selector match regained) stays two events.
                _ => {}
            }
        }
        if batch.is_empty() {
            let window = self.faults.window.unwrap_or_default();
            self.faults.due = Instant::now().checked_add(window);
        }
        batch.push((kind, ev));
    }

    /// Deliver the batch, in revision order (each entry at its last change's revision).
    async fn flush(&mut self, how: Mode) -> Result<(), Done> {
        let mut batch = std::mem::take(&mut self.faults.batch);
        self.faults.due = None;
        batch.sort_by_key(|(_, ev)| ev.rev);
        for (kind, ev) in batch {
            let line = self.enc.change(&ev, kind, &ev.object);
            self.emit(line, how).await?;
        }
        Ok(())
    }

    /// Replay history after `last_rev` a chunk at a time until caught up; then the
    /// subscription for what comes next. A compacted start ends the watch: the client
    /// re-watches and gets 410 Gone.
    async fn catch_up(&mut self, first: Option<CatchUp>) -> Result<Subscription, Done> {
        let mut next = first;
        loop {
            let (chunk, sub) = match next.take() {
                Some(c) => c,
                None => self
                    .api
                    .store
                    .catch_up_in(&self.filter.def.key(), self.last_rev, CATCH_UP_CHUNK)
                    .map_err(|_| Done)?,
            };
            for ev in chunk {
                self.change(&ev, Mode::Replay).await?;
            }
            if let Some(rx) = sub {
                return Ok(rx);
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Mode {
    Live,
    Replay,
    Bookmark,
}

type CatchUp = (Vec<Arc<Event>>, Option<Subscription>);

/// The bookmark ticker for any interval: kept between a second and a year, so no value makes
/// it spin (zero) or its clock arithmetic overflow (a huge `--bookmark-interval` once panicked
/// every watch); `None` only if even a year from now is past what the clock can hold.
fn bookmark_ticker(every: Duration) -> Option<tokio::time::Interval> {
    let every = every.clamp(Duration::from_secs(1), Duration::from_secs(365 * 24 * 3600));
    let first = Instant::now().checked_add(every)?;
    Some(tokio::time::interval_at(first, every))
}

/// Start a watch; the returned lines are the encoded events until the watch ends.
pub fn start(
    api: Arc<Api>,
    ctx: &Ctx,
    format: Format,
    settings: &WatchSettings,
    drops: tokio::sync::watch::Receiver<u64>,
    stop: CancellationToken,
) -> ApiResult<Lines> {
    let (labels, mut fields) = api.selectors(ctx)?;
    if !ctx.name.is_empty() {
        fields
            .terms
            .push(("metadata.name".into(), ctx.name.clone(), true));
    }
    let shard = crate::shard::from_params(api.features, &ctx.params)?;
    let filter = Filter {
        def: ctx.def.clone(),
        namespace: ctx.namespace.clone(),
        labels,
        fields,
        shard,
    };
    let rv = ctx.params.get("resourceVersion").unwrap_or_default().to_string();
    let send_initial = flag(ctx, "sendInitialEvents");
    let bookmarks = flag(ctx, "allowWatchBookmarks").unwrap_or(false);
    if send_initial.is_none()
        && ctx
            .params
            .get("resourceVersionMatch")
            .is_some_and(|m| !m.is_empty())
    {
        return Err(ApiError::invalid(
            "meta.k8s.io",
            "ListOptions",
            "",
            vec![crate::status::Cause::new(
                "FieldValueForbidden",
                "resourceVersionMatch",
                "Forbidden: resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
            )],
        ));
    }
    if send_initial.is_some() && ctx.params.get("resourceVersionMatch") != Some("NotOlderThan") {
        return Err(ApiError::invalid(
            "meta.k8s.io",
            "ListOptions",
            "",
            vec![crate::status::Cause::new(
                "FieldValueForbidden",
                "resourceVersionMatch",
                "Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
            )],
        ));
    }
    if send_initial == Some(true) && !bookmarks {
        return Err(ApiError::invalid(
            "meta.k8s.io",
            "ListOptions",
            "",
            vec![crate::status::Cause::new(
                "FieldValueForbidden",
                "allowWatchBookmarks",
                "Forbidden: sendInitialEvents requires setting allowWatchBookmarks to true",
            )],
        ));
    }
    let timeout = ctx
        .params
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(settings.default_timeout);
    let bookmark_interval = settings.bookmark_interval;
    let enc = Encoder {
        def: ctx.def.clone(),
        format,
        columns_sent: false,
    };
    let ns = (!ctx.namespace.is_empty()).then(|| ctx.namespace.clone());
    // A client served a stale view (`Faults::stale_reads`) starts "now" at its view.
    let stale = api
        .faults
        .stale_revision("watch", &ctx.def.plural, &ctx.user_agent, false);
    let now = |api: &Api| match stale {
        Some(view) => match api.store.list_at_stored(&ctx.def.key(), ns.as_deref(), view) {
            Ok(objs) => (objs, view),
            Err(_) => api.store.list_stored(&ctx.def.key(), ns.as_deref()),
        },
        None => api.store.list_stored(&ctx.def.key(), ns.as_deref()),
    };
    // Initial state (synthetic ADDED events) when starting "now", or history replay.
    let (initial, last_rev, first, initial_end) =
        if send_initial == Some(true) || (send_initial.is_none() && (rv.is_empty() || rv == "0")) {
            let (objs, rev) = now(&api);
            (objs, rev, None, send_initial == Some(true))
        } else if rv.is_empty() || rv == "0" {
            (vec![], now(&api).1, None, false)
        } else {
            let from: u64 = rv
                .parse()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv}")))?;
            match api.store.catch_up_in(&ctx.def.key(), from, CATCH_UP_CHUNK) {
                Ok(first) => (vec![], from, Some(first), false),
                Err(c) => {
                    // The real server answers 200 and then an ERROR event with 410 Expired.
                    let (tx, out) = channel(1, usize::MAX);
                    let status = ApiError::gone(format!(
                        "too old resource version: {} ({})",
                        c.requested, c.oldest
                    ))
                    .status();
                    let _ = tx.try_push(line(&json!({"type": "ERROR", "object": status})));
                    return Ok(out);
                }
            }
        };
    let (tx, out) = channel(api.store.watch_buffer(), settings.buffer_bytes);
    let mut drops = drops;
    drops.mark_unchanged();
    let faults = WatchFaults {
        user_agent: ctx.user_agent.clone(),
        settings: api.faults.settings_changed(),
        stale: false,
        window: None,
        batch: Vec::new(),
        due: None,
    };
    let mut w = Watcher {
        api,
        filter,
        enc,
        tx,
        drops,
        stop,
        budget: TimeBudget::new(),
        last_rev,
        faults,
    };
    w.reload_faults();
    tokio::spawn(async move {
        let _ = w
            .run(initial, first, initial_end, bookmarks, timeout, bookmark_interval)
            .await;
    });
    Ok(out)
}

impl Watcher {
    async fn run(
        &mut self,
        initial: Vec<Arc<Stored>>,
        first: Option<CatchUp>,
        initial_end: bool,
        bookmarks: bool,
        timeout: Duration,
        bookmark_interval: Duration,
    ) -> Result<(), Done> {
        // With a state file, the initial state may hold changes not yet on disk: show it only
        // once a crash can no longer take it back (at once without a state file).
        if !initial.is_empty() || initial_end {
            let rev = self.last_rev;
            if self.api.store.sync(rev).await.is_err() {
                return Ok(());
            }
        }
        // Each initial object is let go once sent, so a slow client pins only what is left.
        // Listed in the watch's namespace: only the selectors are left to check.
        for o in initial {
            if self.filter.selects(&o) {
                let line = self.enc.stored("ADDED", &o);
                self.emit(line, Mode::Replay).await?;
            }
        }
        if initial_end {
            let line = self.enc.bookmark(self.last_rev, true);
            self.emit(line, Mode::Replay).await?;
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut ticker = bookmark_ticker(bookmark_interval);
        let mut first = first;
        loop {
            // From history until caught up (again, after falling behind the subscription).
            let mut rx = tokio::select! {
                rx = self.catch_up(first.take()) => rx?,
                _ = &mut deadline => return Ok(()),
            };
            loop {
                let tick = async {
                    match ticker.as_mut() {
                        Some(t) => {
                            t.tick().await;
                        }
                        None => std::future::pending().await,
                    }
                };
                let due = self.faults.due;
                let flush = async {
                    match due {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = self.stop.cancelled() => return Ok(()),
                    _ = self.drops.changed() => return Ok(()),
                    _ = &mut deadline => return Ok(()),
                    _ = self.tx.queue.reader_gone.cancelled() => return Ok(()),
                    _ = flush => self.flush(Mode::Live).await?,
                    Ok(()) = self.faults.settings.changed() => {
                        self.reload_faults();
                        if self.faults.window.is_none() && !self.faults.batch.is_empty() {
                            self.flush(Mode::Live).await?;
                        }
                    }
                    _ = tick => {
                        // Not past merged changes still waiting: a client resuming from the
                        // bookmark would never get them.
                        if bookmarks && self.faults.batch.is_empty() {
                            let line = self.enc.bookmark(self.last_rev, false);
                            self.emit(line, Mode::Bookmark).await?;
                        }
                    }
                    ev = rx.recv() => match ev {
                        Ok(ev) => {
                            if ev.rev > self.last_rev {
                                self.change(&ev, Mode::Live).await?;
                            }
                        }
                        // Behind the subscription's buffer: read on from history instead.
                        Err(RecvError::Lagged(_)) => break,
                        Err(RecvError::Closed) => return Ok(()),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(watch_buffer: usize) -> (Arc<Api>, Arc<ResourceDef>) {
        let store = Arc::new(Store::new(10_000, watch_buffer));
        let api = Arc::new(Api::new(store.clone(), crate::Faults::new(store)));
        let def = api.registry().get("", "v1", "configmaps").expect("configmaps");
        (api, def)
    }

    /// A watch from `rv`, and the drop signal's sender that must outlive it.
    fn watch(api: &Arc<Api>, def: &Arc<ResourceDef>, rv: u64) -> (Lines, tokio::sync::watch::Sender<u64>) {
        let ctx = Ctx {
            def: def.clone(),
            namespace: "ns".into(),
            name: String::new(),
            sub: String::new(),
            params: crate::api::Params([("resourceVersion".to_string(), rv.to_string())].into()),
            user_agent: "test".into(),
            user: "admin".into(),
        };
        let settings = WatchSettings {
            bookmark_interval: Duration::from_secs(60),
            default_timeout: Duration::from_secs(60),
            buffer_bytes: 1 << 20,
        };
        let (drop_tx, drops) = tokio::sync::watch::channel(0);
        let lines = start(
            api.clone(),
            &ctx,
            Format::Object,
            &settings,
            drops,
            CancellationToken::new(),
        )
        .expect("watch");
        (lines, drop_tx)
    }

    fn configmap(name: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "ns"}})
    }

    async fn names(lines: &mut Lines, n: usize) -> Vec<(String, String)> {
        let mut out = vec![];
        while out.len() < n {
            let line = tokio::time::timeout(Duration::from_secs(10), lines.recv())
                .await
                .expect("in time")
                .expect("a line");
            let ev: Value = serde_json::from_slice(&line).expect("JSON");
            out.push((
                ev["type"].as_str().unwrap_or_default().to_string(),
                ev["object"]["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            ));
        }
        out
    }

    /// One thread: the watch task runs only when the test yields, so it can be made to fall
    /// behind the subscription's buffer on purpose.
    #[tokio::test(flavor = "current_thread")]
    async fn a_watcher_behind_its_subscription_reads_on_from_history() {
        let (api, def) = api(16);
        let gr = def.key();
        let (mut lines, _drops) = watch(&api, &def, api.store.revision());
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        // 100 changes while the watch task cannot run: 84 more than the subscription holds.
        for i in 0..100 {
            api.store
                .create(&gr, configmap(&format!("cm-{i:03}")))
                .expect("create");
        }
        let got = names(&mut lines, 100).await;
        let want: Vec<(String, String)> = (0..100)
            .map(|i| ("ADDED".to_string(), format!("cm-{i:03}")))
            .collect();
        assert_eq!(got, want, "every change, in order, none twice");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn watchers_share_one_encoding_of_a_change() {
        let (api, def) = api(100);
        let gr = def.key();
        let rv = api.store.revision();
        let (mut a, _drops_a) = watch(&api, &def, rv);
        let (mut b, _drops_b) = watch(&api, &def, rv);
        api.store.create(&gr, configmap("shared")).expect("create");
        let (la, lb) = (a.recv().await.expect("a"), b.recv().await.expect("b"));
        assert_eq!(la, lb);
        assert_eq!(la.as_ptr(), lb.as_ptr(), "one encoded line, shared");
    }

    #[tokio::test]
    async fn a_full_queue_closes_an_unresponsive_watcher_and_frees_its_lines() {
        let (tx, mut rx) = channel(2, 1 << 20);
        let mut budget = TimeBudget::new();
        for i in 0..2 {
            tx.send(Bytes::from(vec![b'x'; 10 + i]), Patience::Budget(&mut budget))
                .await
                .expect("room");
        }
        assert_eq!(rx.queued(), (2, 21));
        let closed = tx
            .send(Bytes::from_static(b"third"), Patience::Budget(&mut budget))
            .await;
        assert_eq!(closed, Err(Closed::Unresponsive));
        assert_eq!(tx.abort(), (2, 21));
        assert_eq!(rx.queued(), (0, 0));
        assert_eq!(rx.recv().await, None, "the stream ends");
    }

    #[tokio::test]
    async fn bytes_bound_the_queue_but_one_line_always_fits() {
        let (tx, mut rx) = channel(100, 10);
        assert!(
            tx.try_push(Bytes::from(vec![b'a'; 64])).is_ok(),
            "an oversized line alone"
        );
        assert!(
            tx.try_push(Bytes::from_static(b"b")).is_err(),
            "nothing next to it"
        );
        assert_eq!(rx.recv().await.map(|b| b.len()), Some(64));
        assert!(tx.try_push(Bytes::from_static(b"b")).is_ok());
        drop(tx);
        assert_eq!(rx.recv().await.as_deref(), Some(&b"b"[..]));
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn a_reading_client_is_waited_for() {
        let (tx, mut rx) = channel(1, 1 << 20);
        let reader = tokio::spawn(async move {
            let mut n = 0;
            while rx.recv().await.is_some() {
                n += 1;
            }
            n
        });
        let mut budget = TimeBudget::new();
        for _ in 0..100 {
            tx.send(Bytes::from_static(b"x\n"), Patience::Budget(&mut budget))
                .await
                .expect("a client that reads is never closed");
        }
        drop(tx);
        assert_eq!(reader.await.expect("reader"), 100);
    }

    #[tokio::test]
    async fn any_bookmark_interval_makes_a_working_ticker() {
        for every in [
            Duration::MAX,
            Duration::ZERO,
            Duration::from_secs(u64::MAX / 2),
            Duration::from_nanos(1),
        ] {
            let mut t = bookmark_ticker(every).expect("a ticker");
            // Not due yet, and polling it neither panics nor spins.
            assert!(timeout_tick(&mut t).await.is_err(), "{every:?}");
        }
    }

    async fn timeout_tick(t: &mut tokio::time::Interval) -> Result<Instant, tokio::time::error::Elapsed> {
        tokio::time::timeout(Duration::from_millis(20), t.tick()).await
    }

    #[test]
    fn the_budget_is_the_real_cachers() {
        let mut b = TimeBudget::new();
        assert_eq!(b.take(), MAX_BUDGET);
        assert!(b.take() < Duration::from_millis(5), "spent");
        b.give_back(Duration::from_secs(10));
        assert_eq!(b.take(), MAX_BUDGET, "never more than the maximum");
    }

    #[test]
    fn a_line_is_encoded_once_while_any_watch_holds_it() {
        let cache = LineCache::default();
        let def = Arc::new(crate::registry::builtin_resources().remove(0));
        let mut encodes = 0;
        let a = cache.get_or_encode("ADDED", false, &def, || {
            encodes += 1;
            b"line\n".to_vec()
        });
        let b = cache.get_or_encode("ADDED", false, &def, || {
            encodes += 1;
            b"line\n".to_vec()
        });
        assert_eq!(encodes, 1);
        assert_eq!(a.as_ptr(), b.as_ptr(), "the same memory, not a copy");
        let other = cache.get_or_encode("DELETED", false, &def, || b"other\n".to_vec());
        assert_ne!(other, a);
        drop((a, b));
        let again = cache.get_or_encode("ADDED", false, &def, || {
            encodes += 1;
            b"line\n".to_vec()
        });
        assert_eq!(encodes, 2, "not kept once no watch holds it");
        assert_eq!(again, Bytes::from_static(b"line\n"));
    }
}
