//! One watched stream (a resource type in one namespace, with selectors): list and watch with
//! resourceVersions, resuming from the checkpoint's version when the server still has that
//! history, and otherwise relisting and emitting only the differences from what was last seen.
//!
//! This is not crwatch's informer on purpose: an informer starts from a fresh list, while the
//! forwarder must resume a watch from a stored resourceVersion and diff a relist against
//! stored objects, so nothing that happened while it was down is lost.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::TryStreamExt;
use kube::api::{ApiResource, DynamicObject, ListParams, WatchEvent, WatchParams};
use kube::{Api, Client};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::checkpoint::{Known, Op, StreamState};
use super::config::EventType;
use super::event::Change;
use super::metrics::{ForwardMetrics, StreamLabels};
use super::pipeline::Dispatcher;

/// What one stream watches.
#[derive(Debug, Clone)]
pub struct StreamSpec {
    /// Index of the stream (in the committer and the dispatcher).
    pub index: usize,
    /// The resource type.
    pub resource: ApiResource,
    /// `plural.group`, for messages and metrics.
    pub full_name: String,
    /// Namespace, `None` for all namespaces or cluster-scoped resources.
    pub namespace: Option<String>,
    /// Label selector.
    pub labels: Option<String>,
    /// Field selector.
    pub fields: Option<String>,
    /// On a first start (no checkpoint), record existing objects without forwarding them.
    pub skip_existing: bool,
    /// Index of the `resources[]` entry: two entries for one resource (with other sinks or
    /// filters) progress separately and must not share a checkpoint.
    pub entry: usize,
}

impl StreamSpec {
    /// The key that identifies this stream in the checkpoint: a change of resource, namespace or
    /// selectors starts it afresh.
    pub fn key(&self) -> String {
        format!(
            "#{}|{}/{}|ns={}|labels={}|fields={}",
            self.entry,
            self.full_name,
            self.resource.version,
            self.namespace.as_deref().unwrap_or("*"),
            self.labels.as_deref().unwrap_or(""),
            self.fields.as_deref().unwrap_or("")
        )
    }
}

const PAGE_SIZE: u32 = 500;
const WATCH_TIMEOUT_SECS: u32 = 290;

/// Runs one stream until `cancel`.
pub struct StreamRunner {
    /// What to watch.
    pub spec: StreamSpec,
    /// The client.
    pub client: Client,
    /// Where changes go.
    pub dispatcher: Arc<Dispatcher>,
    /// Metrics.
    pub metrics: ForwardMetrics,
    /// Set once the first list or watch is established.
    pub synced: Arc<AtomicBool>,
    /// Reconnect backoff (initial, max).
    pub backoff: (Duration, Duration),
}

enum WatchEnd {
    /// The server no longer has our resourceVersion: relist.
    Gone,
    /// The watch ended (`failed` false) or failed: watch again from the last version seen.
    Retry {
        last: Option<String>,
        failed: bool,
        progressed: bool,
    },
}

impl StreamRunner {
    fn api(&self) -> Api<DynamicObject> {
        match &self.spec.namespace {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &self.spec.resource),
            None => Api::all_with(self.client.clone(), &self.spec.resource),
        }
    }

    /// Run from `start` (the committed state) until `cancel`.
    pub async fn run(self, start: StreamState, cancel: CancellationToken) {
        let labels = StreamLabels {
            resource: self.spec.full_name.clone(),
        };
        let mut seen = start.objects;
        let mut rv = start.resource_version;
        // Only the very first list of a stream without a checkpoint may skip existing objects;
        // later relists (after 410) must forward what appeared meanwhile.
        let mut initial_list = rv.is_none() && seen.is_empty();
        let mut failures: u32 = 0;
        loop {
            if cancel.is_cancelled() {
                return;
            }
            if rv.is_none() {
                self.metrics.relists.get_or_create(&labels).inc();
                let listed = tokio::select! {
                    _ = cancel.cancelled() => return,
                    r = self.list() => r,
                };
                match listed {
                    Ok((objects, list_rv)) => {
                        failures = 0;
                        let forward = !(initial_list && self.spec.skip_existing);
                        initial_list = false;
                        // Until the relist is fully acknowledged, a restart must relist again:
                        // resuming the old watch would replay events older than the objects
                        // committed by the relist so far.
                        self.dispatcher
                            .dispatch(self.spec.index, None, Op::ForgetResume, None)
                            .await;
                        let relist = async {
                            self.emit_relist(&mut seen, objects, forward).await;
                            let op = Op::Nothing;
                            self.dispatcher
                                .dispatch(self.spec.index, None, op, Some(list_rv.clone()))
                                .await;
                        };
                        // A sink that is down can hold the relist back forever; shutdown must not
                        // wait for it (relist changes never move the resume point, so stopping
                        // half-way loses nothing).
                        tokio::select! {
                            _ = cancel.cancelled() => return,
                            _ = relist => {}
                        }
                        rv = Some(list_rv);
                        self.synced.store(true, Ordering::SeqCst);
                    }
                    Err(e) => {
                        tracing::warn!(resource = %self.spec.full_name, error = %format!("{e:#}"), "list failed");
                        if !self.pause(&mut failures, &cancel).await {
                            return;
                        }
                        continue;
                    }
                }
            }
            let from = rv.clone().unwrap_or_default();
            let end = tokio::select! {
                _ = cancel.cancelled() => return,
                end = self.watch(&from, &mut seen) => end,
            };
            match end {
                WatchEnd::Gone => {
                    tracing::info!(resource = %self.spec.full_name, resource_version = %from, "resourceVersion too old (410 Gone): relisting");
                    rv = None;
                }
                WatchEnd::Retry {
                    last,
                    failed,
                    progressed,
                } => {
                    if let Some(last) = last {
                        rv = Some(last);
                    }
                    if progressed {
                        failures = 0;
                    }
                    if failed {
                        self.metrics.reconnects.get_or_create(&labels).inc();
                        if !self.pause(&mut failures, &cancel).await {
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Wait before retrying after the `failures`-th consecutive failure; false when cancelled.
    async fn pause(&self, failures: &mut u32, cancel: &CancellationToken) -> bool {
        *failures += 1;
        let (initial, max) = self.backoff;
        let wait = initial
            .saturating_mul(2u32.saturating_pow((*failures - 1).min(16)))
            .min(max);
        tokio::select! {
            _ = cancel.cancelled() => false,
            _ = tokio::time::sleep(wait) => true,
        }
    }

    async fn list(&self) -> anyhow::Result<(Vec<Value>, String)> {
        let api = self.api();
        let mut params = ListParams::default().limit(PAGE_SIZE);
        if let Some(l) = &self.spec.labels {
            params = params.labels(l);
        }
        if let Some(f) = &self.spec.fields {
            params = params.fields(f);
        }
        let mut objects = Vec::new();
        loop {
            let page = api.list(&params).await?;
            let rv = page.metadata.resource_version.clone().unwrap_or_default();
            for o in page.items {
                objects.push(clean(serde_json::to_value(o)?, &self.spec.resource));
            }
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => params = params.continue_token(&token),
                None => return Ok((objects, rv)),
            }
        }
    }

    /// Emit what differs between `seen` and a fresh list, and make `seen` the list.
    async fn emit_relist(&self, seen: &mut BTreeMap<String, Known>, objects: Vec<Value>, forward: bool) {
        let mut listed = BTreeMap::new();
        for object in objects {
            let key = object_key(&object);
            let known = known(Arc::new(object));
            listed.insert(key, known);
        }
        let gone: Vec<String> = seen
            .keys()
            .filter(|k| !listed.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            if let Some(old) = seen.remove(&key) {
                let change = forward.then(|| deleted(&key, &old));
                self.dispatcher
                    .dispatch(self.spec.index, change, Op::Remove(key), None)
                    .await;
            }
        }
        for (key, new) in listed {
            let change = match seen.get(&key) {
                Some(old) if old.uid == new.uid && old.resource_version == new.resource_version => continue,
                Some(old) if old.uid == new.uid => modified(&key, old, &new),
                Some(old) => {
                    // Deleted and created again under the same name while we were not looking.
                    let gone = forward.then(|| deleted(&key, old));
                    let op = Op::Remove(key.clone());
                    self.dispatcher.dispatch(self.spec.index, gone, op, None).await;
                    added(&key, &new)
                }
                None => added(&key, &new),
            };
            let op = Op::Upsert(key.clone(), new.clone());
            self.dispatcher
                .dispatch(self.spec.index, forward.then_some(change), op, None)
                .await;
            seen.insert(key, new);
        }
    }

    /// Watch from `from` until the watch ends; changes go out as they come.
    async fn watch(&self, from: &str, seen: &mut BTreeMap<String, Known>) -> WatchEnd {
        let mut params = WatchParams::default().timeout(WATCH_TIMEOUT_SECS);
        if let Some(l) = &self.spec.labels {
            params = params.labels(l);
        }
        if let Some(f) = &self.spec.fields {
            params = params.fields(f);
        }
        let api = self.api();
        let stream = match api.watch(&params, from).await {
            Ok(s) => s,
            Err(e) if is_gone(&e) => return WatchEnd::Gone,
            Err(e) => {
                tracing::warn!(resource = %self.spec.full_name, error = %e, "watch failed");
                return WatchEnd::Retry {
                    last: None,
                    failed: true,
                    progressed: false,
                };
            }
        };
        self.synced.store(true, Ordering::SeqCst);
        let mut stream = std::pin::pin!(stream.into_stream());
        let mut last = None;
        let mut progressed = false;
        loop {
            let event = match stream.try_next().await {
                Ok(Some(e)) => e,
                Ok(None) => {
                    return WatchEnd::Retry {
                        last,
                        failed: false,
                        progressed: true,
                    };
                }
                Err(e) => {
                    tracing::warn!(resource = %self.spec.full_name, error = %e, "watch broke off");
                    return WatchEnd::Retry {
                        last,
                        failed: true,
                        progressed,
                    };
                }
            };
            progressed = true;
            match event {
                WatchEvent::Added(o) | WatchEvent::Modified(o) => {
                    let Ok(value) = serde_json::to_value(o) else {
                        continue;
                    };
                    let new = known(Arc::new(clean(value, &self.spec.resource)));
                    let key = object_key(&new.object);
                    let rv = new.resource_version.clone();
                    let change = match seen.get(&key) {
                        Some(old) if old.uid == new.uid && old.resource_version == rv => None,
                        Some(old) if old.uid == new.uid => Some(modified(&key, old, &new)),
                        _ => Some(added(&key, &new)),
                    };
                    seen.insert(key.clone(), new.clone());
                    let op = Op::Upsert(key, new);
                    self.dispatcher
                        .dispatch(self.spec.index, change, op, Some(rv.clone()))
                        .await;
                    last = Some(rv);
                }
                WatchEvent::Deleted(o) => {
                    let Ok(value) = serde_json::to_value(o) else {
                        continue;
                    };
                    let gone = known(Arc::new(clean(value, &self.spec.resource)));
                    let key = object_key(&gone.object);
                    let rv = gone.resource_version.clone();
                    seen.remove(&key);
                    let change = deleted(&key, &gone);
                    self.dispatcher
                        .dispatch(self.spec.index, Some(change), Op::Remove(key), Some(rv.clone()))
                        .await;
                    last = Some(rv);
                }
                WatchEvent::Bookmark(b) => {
                    let rv = b.metadata.resource_version;
                    self.dispatcher
                        .dispatch(self.spec.index, None, Op::Nothing, Some(rv.clone()))
                        .await;
                    last = Some(rv);
                }
                WatchEvent::Error(e) if e.code == 410 => return WatchEnd::Gone,
                WatchEvent::Error(e) => {
                    tracing::warn!(resource = %self.spec.full_name, code = e.code, message = %e.message, "watch error");
                    return WatchEnd::Retry {
                        last,
                        failed: true,
                        progressed,
                    };
                }
            }
        }
    }
}

fn is_gone(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 410)
}

/// Drop managedFields (noise for consumers) and make sure apiVersion/kind are set (watch events
/// of some servers leave them out).
fn clean(mut value: Value, resource: &ApiResource) -> Value {
    if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
    }
    if let Some(obj) = value.as_object_mut() {
        obj.entry("apiVersion")
            .or_insert_with(|| Value::String(resource.api_version.clone()));
        obj.entry("kind")
            .or_insert_with(|| Value::String(resource.kind.clone()));
    }
    value
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or_default()
}

/// `namespace/name`, or `name` for cluster-scoped objects.
pub fn object_key(v: &Value) -> String {
    let ns = str_at(v, "/metadata/namespace");
    let name = str_at(v, "/metadata/name");
    if ns.is_empty() {
        name.to_string()
    } else {
        format!("{ns}/{name}")
    }
}

fn known(object: Arc<Value>) -> Known {
    Known {
        uid: str_at(&object, "/metadata/uid").to_string(),
        resource_version: str_at(&object, "/metadata/resourceVersion").to_string(),
        object,
    }
}

fn added(key: &str, new: &Known) -> Change {
    Change {
        event: EventType::Added,
        key: key.to_string(),
        object: new.object.clone(),
        old: None,
        diff: crwatch::diff::Diff::default(),
    }
}

fn modified(key: &str, old: &Known, new: &Known) -> Change {
    Change {
        event: EventType::Modified,
        key: key.to_string(),
        object: new.object.clone(),
        old: Some(old.object.clone()),
        diff: crwatch::diff::Diff::between(&old.object, &new.object),
    }
}

fn deleted(key: &str, last: &Known) -> Change {
    Change {
        event: EventType::Deleted,
        key: key.to_string(),
        object: last.object.clone(),
        old: None,
        diff: crwatch::diff::Diff::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_entries_for_one_resource_keep_separate_checkpoints() {
        let spec = |entry| StreamSpec {
            index: entry,
            resource: ApiResource::erase::<k8s_openapi::api::core::v1::Pod>(&()),
            full_name: "pods".into(),
            namespace: Some("a".into()),
            labels: None,
            fields: None,
            skip_existing: false,
            entry,
        };
        assert_ne!(spec(0).key(), spec(1).key());
        assert_eq!(spec(0).key(), spec(0).key());
    }
}
