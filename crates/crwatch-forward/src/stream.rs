//! One watched stream: an [`Informer`](crwatch::informer::Informer) over one of crwatch's sources (a Kubernetes resource in
//! one namespace with selectors, an HTTP endpoint, a webhook, a table), resumed from the
//! committed checkpoint, and the [`AsyncHandler`] that turns its changes into dispatcher calls.
//!
//! The informer does the list/watch work (resuming after the checkpoint, relisting on 410 Gone
//! or a server whose history restarted, and diffing a relist against the committed objects);
//! this module only maps its changes:
//!
//! | informer change | dispatched |
//! | --- | --- |
//! | `Relist` | `Op::ForgetResume`: until the relist is acknowledged, a restart relists again |
//! | `Added` / `Updated{diff}` / `Deleted` | the CloudEvent change, with `Op::Upsert` / `Op::Remove` |
//! | `Checkpoint` | `Op::Nothing` with the checkpoint: the only thing that moves the resume point |

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use crwatch::informer::{AsyncHandler, Change as InformerChange};
use crwatch::source::{Checkpoint, SourceError};
use crwatch::store::snapshot::Snapshot;
use futures::future::BoxFuture;
use kube::api::DynamicObject;
use serde_json::Value;

use crate::checkpoint::{Known, Op, StreamState};
use crate::config::EventType;
use crate::event::Change;
use crate::pipeline::Dispatcher;

/// The committed state of a stream as an informer snapshot: its objects, and the checkpoint
/// to resume after (`None` when the stream never completed a list, or a relist was under way:
/// the informer then lists and diffs the list against the objects).
pub fn snapshot_of(state: &StreamState) -> Option<Snapshot<DynamicObject>> {
    if state.resource_version.is_none() && state.objects.is_empty() {
        return None;
    }
    let checkpoint = state.resource_version.as_ref().map(|rv| Checkpoint {
        resource_version: rv.clone(),
        identity: state.identity.clone(),
    });
    let objects = state
        .objects
        .values()
        .filter_map(|k| serde_json::from_value((*k.object).clone()).ok())
        .collect();
    Some(Snapshot::new(checkpoint, objects))
}

/// Turns one informer's changes into dispatcher calls for stream `index`.
pub struct StreamHandler {
    index: usize,
    /// Taken away at shutdown, so the sink lanes see their queues close.
    dispatcher: RwLock<Option<Arc<Dispatcher>>>,
    /// Before the end of the first list of a stream that started without a checkpoint, with
    /// `skipExisting`: the changes of that list are recorded without being forwarded.
    skipping: AtomicBool,
    /// `apiVersion` and `kind` for objects that come without them.
    type_meta: Option<(String, String)>,
}

impl StreamHandler {
    /// A handler for stream `index` of `informer`; `skip_existing` when the stream starts
    /// without a checkpoint and `skipExisting` is set.
    pub fn new(
        index: usize,
        dispatcher: Arc<Dispatcher>,
        skip_existing: bool,
        type_meta: Option<(String, String)>,
    ) -> Self {
        Self {
            index,
            dispatcher: RwLock::new(Some(dispatcher)),
            skipping: AtomicBool::new(skip_existing),
            type_meta,
        }
    }

    /// Let go of the dispatcher (shutdown): nothing more is dispatched.
    pub fn close(&self) {
        if let Ok(mut d) = self.dispatcher.write() {
            d.take();
        }
    }

    fn dispatcher(&self) -> Option<Arc<Dispatcher>> {
        self.dispatcher.read().ok().and_then(|d| d.clone())
    }

    fn known(&self, object: &DynamicObject) -> (String, Known) {
        let mut value = serde_json::to_value(object).unwrap_or(Value::Null);
        if let Some(obj) = value.as_object_mut() {
            if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.remove("managedFields");
            }
            if let Some((api_version, kind)) = &self.type_meta {
                obj.entry("apiVersion")
                    .or_insert_with(|| Value::String(api_version.clone()));
                obj.entry("kind").or_insert_with(|| Value::String(kind.clone()));
            }
        }
        let str_at = |p: &str| {
            value
                .pointer(p)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let (ns, name) = (str_at("/metadata/namespace"), str_at("/metadata/name"));
        let key = if ns.is_empty() {
            name
        } else {
            format!("{ns}/{name}")
        };
        let known = Known {
            uid: str_at("/metadata/uid"),
            resource_version: str_at("/metadata/resourceVersion"),
            object: Arc::new(value),
        };
        (key, known)
    }

    /// Whether this change should be recorded without being forwarded.
    fn skip(&self) -> bool {
        self.skipping.load(Ordering::SeqCst)
    }

    async fn handle_change(&self, change: InformerChange<DynamicObject>) {
        let Some(dispatcher) = self.dispatcher() else {
            return;
        };
        let i = self.index;
        match change {
            InformerChange::Relist => {
                dispatcher.dispatch(i, None, Op::ForgetResume, None).await;
            }
            // The first list is over: from now on everything is forwarded.
            InformerChange::RelistDone => self.skipping.store(false, Ordering::SeqCst),
            InformerChange::Checkpoint(cp) => {
                dispatcher.dispatch(i, None, Op::Nothing, Some(cp)).await;
            }
            InformerChange::Added(o) => {
                let (key, known) = self.known(&o);
                let change = (!self.skip()).then(|| Change {
                    event: EventType::Added,
                    key: key.clone(),
                    object: known.object.clone(),
                    old: None,
                    diff: Default::default(),
                });
                dispatcher.dispatch(i, change, Op::Upsert(key, known), None).await;
            }
            InformerChange::Updated { old, new, diff } => {
                let (_, before) = self.known(&old);
                let (key, known) = self.known(&new);
                let change = (!self.skip()).then(|| Change {
                    event: EventType::Modified,
                    key: key.clone(),
                    object: known.object.clone(),
                    old: Some(before.object.clone()),
                    diff,
                });
                dispatcher.dispatch(i, change, Op::Upsert(key, known), None).await;
            }
            InformerChange::Deleted(o) => {
                let (key, known) = self.known(&o);
                let change = (!self.skip()).then(|| Change {
                    event: EventType::Deleted,
                    key: key.clone(),
                    object: known.object.clone(),
                    old: None,
                    diff: Default::default(),
                });
                dispatcher.dispatch(i, change, Op::Remove(key), None).await;
            }
            // Markers this forwarder does not need (the informer may grow more).
            #[allow(unreachable_patterns)]
            _ => {}
        }
    }
}

impl AsyncHandler<DynamicObject> for StreamHandler {
    fn handle(&self, change: InformerChange<DynamicObject>) -> BoxFuture<'_, ()> {
        Box::pin(self.handle_change(change))
    }

    fn on_error(&self, error: &SourceError) {
        // The informer logs every error at WARN already; relists are worth an INFO line of
        // their own because they forward differences rather than single changes.
        if error.relist {
            tracing::info!(source = %error.source_name, "relisting: the changes found are forwarded as differences");
        }
    }
}
