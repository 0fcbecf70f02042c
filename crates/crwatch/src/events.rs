//! Publishing `events.k8s.io/v1` Events about objects (what `kubectl describe` shows under
//! "Events"), with repeats folded into one Event's `series` the way client-go's
//! `tools/events` recorder does.
//!
//! # Why not kube-runtime's `Recorder` as it is
//!
//! kube-runtime 5's `events::Recorder` also folds repeats into a series, but it keys them
//! without the message (note): "backup failed: disk full" and "backup failed: timeout"
//! become one Event whose text stays the first message, so the second cause never shows.
//! It also fails when the Event it wants to bump has expired (the API server deletes Events
//! after an hour), and its memory has no size bound. This recorder keys on (object, type,
//! reason, message, action) as client-go does, recreates an expired Event with its series
//! intact, and forgets the least recently used keys beyond [`CACHE_SIZE`].
//!
//! One difference from client-go, on purpose: client-go writes a repeat's new count only on
//! a 30-minute heartbeat, so `kubectl describe` lags behind; here every repeat patches the
//! count at once (one small merge patch). Controllers publish from reconciles, which the
//! workqueue's backoff already rate-limits.
//!
//! # Secrets
//!
//! Events are readable by anyone who may list Events in the namespace, usually far more
//! people than may read Secrets. Never put passwords, tokens, connection strings with
//! credentials or Secret data in `reason`, `message` or `action`; nothing here can check.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use tokio::time::Instant;

/// How long after its last occurrence a repeat still joins an Event's series (client-go's
/// `finishTime`); later repeats start a new Event.
///
/// ```
/// assert_eq!(crwatch::events::SERIES_WINDOW.as_secs(), 360);
/// ```
pub const SERIES_WINDOW: Duration = Duration::from_secs(6 * 60);

/// How many distinct events the recorder remembers for folding; the least recently seen are
/// forgotten first (client-go's correlator keeps 4096 too).
///
/// ```
/// assert_eq!(crwatch::events::CACHE_SIZE, 4096);
/// ```
pub const CACHE_SIZE: usize = 4096;

/// The API server rejects notes longer than this many bytes.
const NOTE_LIMIT: usize = 1024;

/// Whether an Event is routine or needs attention (`kubectl describe` shows it as `Type`).
///
/// ```
/// use crwatch::events::EventType;
/// assert_eq!(EventType::Warning.as_str(), "Warning");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventType {
    /// Something happened as intended.
    Normal,
    /// Something went wrong or needs a look.
    Warning,
}

impl EventType {
    /// The wire spelling.
    ///
    /// ```
    /// assert_eq!(crwatch::events::EventType::Normal.as_str(), "Normal");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// What makes two publishes "the same event".
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    /// apiVersion, kind, namespace, name, uid.
    regarding: [Option<String>; 5],
    type_: EventType,
    reason: String,
    message: String,
    action: String,
}

/// What the recorder remembers of the Event it wrote for a key: enough to bump its series,
/// or to write it again when the server has expired it (the rest comes from the key and the
/// publish call). Not the Event as the server returned it: with its managedFields that is
/// several KiB, kept for up to [`CACHE_SIZE`] keys.
#[derive(Debug)]
struct Recorded {
    /// The Event's name and namespace.
    name: String,
    namespace: String,
    /// Its `eventTime`: when the first occurrence happened.
    first: MicroTime,
    count: i32,
    last_seen: Instant,
}

/// One key's slot: its own lock so that repeats of one event are written in order while
/// different events go out concurrently.
type Slot = Arc<tokio::sync::Mutex<Option<Recorded>>>;

/// Publishes Events for any object, on behalf of one controller.
///
/// The first publish of an (object, type, reason, message, action) creates an Event; repeats
/// within [`SERIES_WINDOW`] of the previous one update that Event's `series.count` and
/// `series.lastObservedTime` instead of creating new ones. Clones share their memory of
/// what was published.
///
/// Needs RBAC `create` and `patch` on `events` in `events.k8s.io`.
///
/// ```no_run
/// # async fn demo(client: kube::Client) -> Result<(), kube::Error> {
/// use crwatch::events::{EventType, Recorder};
/// use k8s_openapi::api::core::v1::ConfigMap;
/// use kube::{Api, Resource};
///
/// let recorder = Recorder::new(client.clone(), "database-operator");
/// let cm = Api::<ConfigMap>::namespaced(client, "default").get("settings").await?;
/// recorder
///     .publish(&cm.object_ref(&()), EventType::Normal, "Provisioned", "database is ready", "Provision")
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Recorder {
    client: kube::Client,
    controller: String,
    instance: String,
    slots: Arc<Mutex<HashMap<Key, (Slot, Instant)>>>,
}

impl Recorder {
    /// A recorder reporting as `reporter` (the controller's name, e.g. `database-operator`),
    /// from this host (its hostname is the `reportingInstance`; see
    /// [`Recorder::with_instance`] to use the pod name instead).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), kube::Error> {
    /// let client = kube::Client::try_default().await?;
    /// let recorder = crwatch::events::Recorder::new(client, "database-operator");
    /// # Ok(()) }
    /// ```
    pub fn new(client: kube::Client, reporter: &str) -> Self {
        Recorder {
            client,
            controller: reporter.to_string(),
            instance: crate::leader::hostname().unwrap_or_else(|| reporter.to_string()),
            slots: Arc::default(),
        }
    }

    /// The same recorder reporting a different `reportingInstance` (for instance the pod
    /// name from the downward API), which tells replicas apart.
    ///
    /// ```no_run
    /// # async fn demo(client: kube::Client) {
    /// use crwatch::events::Recorder;
    /// let recorder = Recorder::new(client, "database-operator")
    ///     .with_instance(std::env::var("POD_NAME").unwrap_or_default());
    /// # }
    /// ```
    #[must_use]
    pub fn with_instance(mut self, instance: impl Into<String>) -> Self {
        let instance = instance.into();
        if !instance.is_empty() {
            self.instance = instance;
        }
        self
    }

    /// Publish an Event about `object_ref` (build one with `kube::Resource::object_ref`).
    ///
    /// `reason` is a short `CamelCase` cause (`ProvisionFailed`), `message` the human text
    /// (cut to 1 kB), `action` what the controller did or tried (`Provision`). The Event goes
    /// into the object's namespace, or `default` for cluster-scoped objects. Never pass
    /// secrets (see the [module docs](self)).
    ///
    /// ```no_run
    /// # use k8s_openapi::api::core::v1::ObjectReference;
    /// use crwatch::events::{EventType, Recorder};
    /// # async fn demo(recorder: Recorder, obj: ObjectReference) -> Result<(), kube::Error> {
    /// for _ in 0..5 {
    ///     // One Event, series.count 5.
    ///     let (reason, action) = ("ConnectFailed", "Connect");
    ///     recorder.publish(&obj, EventType::Warning, reason, "server unreachable", action).await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn publish(
        &self,
        object_ref: &ObjectReference,
        type_: EventType,
        reason: &str,
        message: &str,
        action: &str,
    ) -> Result<(), kube::Error> {
        let key = Key {
            regarding: [
                object_ref.api_version.clone(),
                object_ref.kind.clone(),
                object_ref.namespace.clone(),
                object_ref.name.clone(),
                object_ref.uid.clone(),
            ],
            type_,
            reason: reason.to_string(),
            message: message.to_string(),
            action: action.to_string(),
        };
        let slot = self.slot(key);
        let mut slot = slot.lock().await;
        let now = Instant::now();
        let wall = MicroTime(Timestamp::now());

        let repeat = slot
            .take()
            .filter(|r| now.duration_since(r.last_seen) < SERIES_WINDOW);
        let Some(mut recorded) = repeat else {
            let event = self.new_event(object_ref, type_, reason, message, action, wall.clone());
            let namespace = event.metadata.namespace.clone().unwrap_or_default();
            let created =
                crate::api::create(&self.events_api(&namespace), &PostParams::default(), &event).await?;
            tracing::debug!(event = created.metadata.name, reason, "event created");
            *slot = Some(Recorded {
                name: created.metadata.name.or(event.metadata.name).unwrap_or_default(),
                namespace,
                first: wall,
                count: 1,
                last_seen: now,
            });
            return Ok(());
        };

        recorded.count = recorded.count.saturating_add(1);
        recorded.last_seen = now;
        let series = EventSeries {
            count: recorded.count,
            last_observed_time: wall,
        };
        let api = self.events_api(&recorded.namespace);
        let patch = serde_json::json!({ "series": &series });
        let outcome = match crate::api::patch(
            &api,
            &recorded.name,
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        {
            // The server expires Events (an hour by default): bring this one back, series
            // and all, as client-go does.
            Err(kube::Error::Api(s)) if s.code == 404 => {
                let mut again =
                    self.new_event(object_ref, type_, reason, message, action, recorded.first.clone());
                again.metadata.name = Some(recorded.name.clone());
                again.series = Some(series);
                crate::api::create(&api, &PostParams::default(), &again).await
            }
            other => other,
        };
        // Remember the repeat even when the write failed, so that the next success carries
        // the right count.
        match outcome {
            Ok(_) => {
                *slot = Some(recorded);
                Ok(())
            }
            Err(e) => {
                *slot = Some(recorded);
                Err(e)
            }
        }
    }

    /// The slot for `key`, created if new; forgets the least recently used keys beyond
    /// [`CACHE_SIZE`].
    fn slot(&self, key: Key) -> Slot {
        let mut slots = lock(&self.slots);
        let now = Instant::now();
        let slot = {
            let entry = slots.entry(key).or_insert_with(|| (Slot::default(), now));
            entry.1 = now;
            entry.0.clone()
        };
        if slots.len() > CACHE_SIZE {
            // Forgetting a key only costs folding: its next repeat starts a new Event.
            slots.retain(|_, (_, used)| now.duration_since(*used) < SERIES_WINDOW);
            while slots.len() > CACHE_SIZE {
                let oldest = slots
                    .iter()
                    .min_by_key(|(_, (_, used))| *used)
                    .map(|(k, _)| k.clone());
                match oldest {
                    Some(k) => slots.remove(&k),
                    None => break,
                };
            }
        }
        slot
    }

    fn events_api(&self, namespace: &str) -> Api<Event> {
        Api::namespaced(self.client.clone(), namespace)
    }

    fn new_event(
        &self,
        regarding: &ObjectReference,
        type_: EventType,
        reason: &str,
        message: &str,
        action: &str,
        now: MicroTime,
    ) -> Event {
        let namespace = regarding
            .namespace
            .clone()
            .filter(|ns| !ns.is_empty())
            .unwrap_or_else(|| "default".into());
        let base = regarding.name.as_deref().unwrap_or(&self.controller);
        Event {
            metadata: ObjectMeta {
                // client-go's naming: the object's name and the time in hex nanoseconds.
                name: Some(format!("{base}.{:x}", now.0.as_nanosecond())),
                namespace: Some(namespace),
                ..ObjectMeta::default()
            },
            event_time: Some(now),
            type_: Some(type_.as_str().to_string()),
            reason: Some(reason.to_string()),
            note: Some(truncate(message, NOTE_LIMIT).to_string()),
            action: Some(action.to_string()),
            regarding: Some(regarding.clone()),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            ..Event::default()
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The map holds no invariant a panicking holder could break halfway.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// At most `max` bytes of `s`, cut at a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crwatch_apiserver::TestServer;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::Resource;
    use kube::api::{DeleteParams, ListParams};

    async fn setup() -> (TestServer, Recorder, ObjectReference, Api<Event>) {
        let server = TestServer::start().await.unwrap();
        let cms: Api<ConfigMap> = Api::namespaced(server.client(), "default");
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some("db".into());
        let cm = cms.create(&PostParams::default(), &cm).await.unwrap();
        let recorder = Recorder::new(server.client(), "test-controller").with_instance("pod-0");
        let events: Api<Event> = Api::namespaced(server.client(), "default");
        (server, recorder, cm.object_ref(&()), events)
    }

    #[test]
    fn truncation_respects_characters() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("héllo", 3), "hé");
        assert_eq!(truncate("abc", 10), "abc");
    }

    #[tokio::test]
    async fn repeats_fold_into_one_series_and_new_messages_do_not() {
        let (server, recorder, obj, events) = setup().await;
        for _ in 0..5 {
            recorder
                .publish(
                    &obj,
                    EventType::Warning,
                    "ConnectFailed",
                    "unreachable",
                    "Connect",
                )
                .await
                .unwrap();
        }
        let list = events.list(&ListParams::default()).await.unwrap().items;
        assert_eq!(list.len(), 1, "{list:#?}");
        let ev = &list[0];
        assert_eq!(ev.series.as_ref().map(|s| s.count), Some(5));
        assert_eq!(ev.note.as_deref(), Some("unreachable"));
        assert_eq!(ev.type_.as_deref(), Some("Warning"));
        assert_eq!(ev.reporting_controller.as_deref(), Some("test-controller"));
        assert_eq!(ev.reporting_instance.as_deref(), Some("pod-0"));
        assert_eq!(ev.regarding.as_ref().and_then(|r| r.name.as_deref()), Some("db"));
        let last = ev.series.as_ref().map(|s| s.last_observed_time.0);
        assert!(
            last >= ev.event_time.as_ref().map(|t| t.0),
            "lastObservedTime moves forward"
        );
        assert_eq!(server.faults().count("create", "events"), 1);
        assert_eq!(server.faults().count("patch", "events"), 4);

        recorder
            .publish(&obj, EventType::Warning, "ConnectFailed", "timeout", "Connect")
            .await
            .unwrap();
        recorder
            .publish(&obj, EventType::Normal, "ConnectFailed", "timeout", "Connect")
            .await
            .unwrap();
        let mut list = events.list(&ListParams::default()).await.unwrap().items;
        list.sort_by_key(|e| e.event_time.as_ref().map(|t| t.0));
        let seen: Vec<_> = list
            .iter()
            .map(|e| {
                (
                    e.type_.as_deref(),
                    e.note.as_deref(),
                    e.series.as_ref().map(|s| s.count),
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                (Some("Warning"), Some("unreachable"), Some(5)),
                (Some("Warning"), Some("timeout"), None),
                (Some("Normal"), Some("timeout"), None),
            ]
        );
    }

    #[tokio::test]
    async fn an_expired_event_comes_back_with_its_series() {
        let (_server, recorder, obj, events) = setup().await;
        recorder
            .publish(&obj, EventType::Normal, "Synced", "ok", "Sync")
            .await
            .unwrap();
        recorder
            .publish(&obj, EventType::Normal, "Synced", "ok", "Sync")
            .await
            .unwrap();
        let first = events.list(&ListParams::default()).await.unwrap().items.remove(0);
        let name = first.metadata.name.clone().unwrap();
        events.delete(&name, &DeleteParams::default()).await.unwrap();

        recorder
            .publish(&obj, EventType::Normal, "Synced", "ok", "Sync")
            .await
            .unwrap();
        let list = events.list(&ListParams::default()).await.unwrap().items;
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].metadata.name.as_deref(), Some(name.as_str()));
        assert_eq!(list[0].series.as_ref().map(|s| s.count), Some(3));
    }

    #[tokio::test]
    async fn cluster_scoped_objects_get_events_in_default() {
        let (_server, recorder, _, events) = setup().await;
        let ns = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Namespace".into()),
            name: Some("team-a".into()),
            ..ObjectReference::default()
        };
        recorder
            .publish(&ns, EventType::Normal, "Seen", "hello", "Observe")
            .await
            .unwrap();
        let list = events.list(&ListParams::default()).await.unwrap().items;
        assert_eq!(list.len(), 1);
        assert!(list[0].metadata.name.as_deref().unwrap().starts_with("team-a."));
    }

    #[tokio::test(start_paused = true)]
    async fn the_cache_forgets_the_least_recently_used() {
        // No server needed: only the slot bookkeeping is exercised.
        let client = {
            let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
            kube::Client::try_from(config).unwrap()
        };
        let recorder = Recorder::new(client, "c");
        let key = |i: usize| Key {
            regarding: [None, None, None, Some(format!("o{i}")), None],
            type_: EventType::Normal,
            reason: "R".into(),
            message: String::new(),
            action: "A".into(),
        };
        for i in 0..=CACHE_SIZE {
            recorder.slot(key(i));
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        let slots = lock(&recorder.slots);
        assert_eq!(slots.len(), CACHE_SIZE);
        assert!(!slots.contains_key(&key(0)), "the oldest went first");
        assert!(slots.contains_key(&key(CACHE_SIZE)));
    }
}
