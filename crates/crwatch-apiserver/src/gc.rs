//! The server's built-in controllers: the garbage collector (ownerReferences with background,
//! foreground and orphan propagation, dangling dependents) and the namespace and CRD
//! finalizers that delete everything inside a namespace or of a CRD before it goes.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::api::{Api, CRD_CLEANUP_FINALIZER};
use crate::meta::{self, meta_str, set_meta};
use crate::registry::GroupResource;
use crate::store::{Event, EventType, ObjKey, WriteError, key_of};

type Ref = (GroupResource, ObjKey);

struct Gc {
    api: Arc<Api>,
    /// owner uid -> dependents.
    dependents: HashMap<String, HashSet<Ref>>,
    terminating_namespaces: BTreeSet<String>,
    deleting_crds: BTreeSet<String>,
}

fn namespaces_gr() -> GroupResource {
    GroupResource {
        group: String::new(),
        resource: "namespaces".into(),
    }
}

fn crds_gr() -> GroupResource {
    GroupResource {
        group: "apiextensions.k8s.io".into(),
        resource: "customresourcedefinitions".into(),
    }
}

/// Run the controllers until `stop` fires.
pub(crate) fn spawn(api: Arc<Api>, stop: CancellationToken) {
    let mut rx = api.store.subscribe();
    let mut gc = Gc {
        api,
        dependents: HashMap::new(),
        terminating_namespaces: BTreeSet::new(),
        deleting_crds: BTreeSet::new(),
    };
    gc.resync();
    tokio::spawn(async move {
        loop {
            let ev = tokio::select! {
                _ = stop.cancelled() => return,
                ev = rx.recv() => ev,
            };
            match ev {
                Ok(ev) => gc.handle(&ev),
                Err(RecvError::Lagged(_)) => gc.resync(),
                Err(RecvError::Closed) => return,
            }
        }
    });
}

impl Gc {
    /// Rebuild all state from the store (at start, and when events were missed).
    fn resync(&mut self) {
        self.dependents.clear();
        // One object parsed at a time, and only those indexing or reacting looks at (with
        // owners, or being deleted: text without the key has neither), so a resync never
        // holds every object parsed.
        let all = self.api.store.dump_stored();
        for (gr, obj) in &all {
            if obj.text().contains("\"ownerReferences\"") {
                self.index(gr, &obj.value());
            }
        }
        for (gr, obj) in &all {
            if obj.text().contains("\"deletionTimestamp\"") {
                self.react(gr, &obj.value(), EventType::Modified);
            }
        }
        let owners: Vec<String> = self.dependents.keys().cloned().collect();
        for uid in owners {
            if self.api.store.by_uid(&uid).is_none() {
                self.owner_gone(&uid);
            }
        }
        self.check_cleanups();
    }

    fn index(&mut self, gr: &GroupResource, obj: &Value) {
        let r = (gr.clone(), key_of(obj));
        for uid in meta::owner_uids(obj) {
            self.dependents.entry(uid).or_default().insert(r.clone());
        }
    }

    fn unindex(&mut self, gr: &GroupResource, obj: &Value) {
        let r = (gr.clone(), key_of(obj));
        for uid in meta::owner_uids(obj) {
            if let Some(set) = self.dependents.get_mut(&uid) {
                set.remove(&r);
                if set.is_empty() {
                    self.dependents.remove(&uid);
                }
            }
        }
    }

    fn handle(&mut self, ev: &Event) {
        // Only a previous version with owners was indexed (text without the key has none), so
        // most updates need not parse the version they replace.
        if let Some(prev) = &ev.prev
            && prev.text().contains("\"ownerReferences\"")
        {
            self.unindex(&ev.gr, &prev.value());
        }
        // Without owners and not being deleted, a change that is no delete gives nothing to
        // index or react to: not even parsed.
        let text = ev.object.text();
        if ev.kind != EventType::Deleted
            && !text.contains("\"ownerReferences\"")
            && !text.contains("\"deletionTimestamp\"")
        {
            if !self.terminating_namespaces.is_empty() || !self.deleting_crds.is_empty() {
                self.check_cleanups();
            }
            return;
        }
        let object = ev.object.value();
        if ev.kind != EventType::Deleted {
            self.index(&ev.gr, &object);
        }
        self.react(&ev.gr, &object, ev.kind);
        // As kube's garbage collector (its graph builder queues an object whose owner
        // references changed for a check): an update that points an object at owners that are
        // all gone makes it garbage, like a create would.
        if ev.kind == EventType::Modified && meta_str(&object, "deletionTimestamp").is_empty() {
            let owners: BTreeSet<String> = meta::owner_uids(&object).into_iter().collect();
            let before: BTreeSet<String> = ev
                .prev
                .as_ref()
                .filter(|p| p.text().contains("\"ownerReferences\""))
                .map(|p| meta::owner_uids(&p.value()).into_iter().collect())
                .unwrap_or_default();
            if !owners.is_empty()
                && owners != before
                && owners.iter().all(|u| self.api.store.by_uid(u).is_none())
            {
                self.delete(&ev.gr, &key_of(&object), "Background");
            }
        }
        if ev.kind == EventType::Deleted {
            let uid = meta_str(&object, "uid").to_string();
            self.owner_gone(&uid);
            // A dependent that went may unblock an owner deleting in the foreground.
            for owner in meta::owner_uids(&object) {
                if let Some((gr, o)) = self.api.store.by_uid(&owner) {
                    self.react(&gr, &o, EventType::Modified);
                }
            }
        }
        if !self.terminating_namespaces.is_empty() || !self.deleting_crds.is_empty() {
            self.check_cleanups();
        }
    }

    fn react(&mut self, gr: &GroupResource, obj: &Value, kind: EventType) {
        let deleting = !meta_str(obj, "deletionTimestamp").is_empty();
        if kind != EventType::Deleted && deleting {
            if *gr == namespaces_gr() {
                self.terminating_namespaces
                    .insert(meta_str(obj, "name").to_string());
            }
            if *gr == crds_gr() && meta::finalizers(obj).iter().any(|f| f == CRD_CLEANUP_FINALIZER) {
                self.deleting_crds.insert(meta_str(obj, "name").to_string());
            }
            let uid = meta_str(obj, "uid").to_string();
            let fins = meta::finalizers(obj);
            if fins.iter().any(|f| f == "orphan") {
                self.orphan_dependents(&uid);
                self.remove_finalizer(gr, &key_of(obj), "orphan");
            } else if fins.iter().any(|f| f == "foregroundDeletion") {
                let deps: Vec<Ref> = self
                    .dependents
                    .get(&uid)
                    .map(|s| s.iter().cloned().collect())
                    .unwrap_or_default();
                if deps.is_empty() {
                    self.remove_finalizer(gr, &key_of(obj), "foregroundDeletion");
                } else {
                    for (dgr, dkey) in deps {
                        self.delete(&dgr, &dkey, "Foreground");
                    }
                }
            }
        }
        if kind == EventType::Added {
            // A dependent whose owners are all gone is garbage from the start.
            let owners = meta::owner_uids(obj);
            if !owners.is_empty() && owners.iter().all(|u| self.api.store.by_uid(u).is_none()) {
                self.delete(gr, &key_of(obj), "Background");
            }
        }
    }

    /// The owner with `uid` is gone: delete dependents it owned alone, drop the reference
    /// from dependents that have other live owners.
    fn owner_gone(&mut self, uid: &str) {
        let Some(deps) = self.dependents.get(uid).cloned() else {
            return;
        };
        for (gr, key) in deps {
            let Some(obj) = self.api.store.get(&gr, &key) else {
                continue;
            };
            let others_alive = meta::owner_uids(&obj)
                .iter()
                .any(|u| u != uid && self.api.store.by_uid(u).is_some());
            if others_alive {
                self.drop_owner_ref(&gr, &key, uid);
            } else {
                self.delete(&gr, &key, "Background");
            }
        }
    }

    fn orphan_dependents(&mut self, uid: &str) {
        let deps: Vec<Ref> = self
            .dependents
            .get(uid)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        for (gr, key) in deps {
            self.drop_owner_ref(&gr, &key, uid);
        }
    }

    fn delete(&self, gr: &GroupResource, key: &ObjKey, policy: &str) {
        let Some(def) = self.api.registry().storage(gr) else {
            return;
        };
        let Some(obj) = self.api.store.get(gr, key) else {
            return;
        };
        if !meta_str(&obj, "deletionTimestamp").is_empty() && policy == "Background" {
            return;
        }
        if let Err(e) = self.api.delete_object(&def, &obj, policy, false, vec![]) {
            tracing::debug!(error = %e, "garbage collector delete did not go through; the next event retries");
        }
    }

    /// Rewrite an object with `f` until the write wins (a conflicting write means retry).
    fn rewrite(&self, gr: &GroupResource, key: &ObjKey, f: impl Fn(&mut Value) -> bool) {
        for _ in 0..16 {
            let Some(cur) = self.api.store.get(gr, key) else {
                return;
            };
            let mut next = (*cur).clone();
            if !f(&mut next) {
                return;
            }
            let rv: u64 = meta_str(&cur, "resourceVersion").parse().unwrap_or(0);
            // Namespaces also wait for their spec.finalizers (the namespace controller's).
            let finished = !meta_str(&next, "deletionTimestamp").is_empty()
                && meta::finalizers(&next).is_empty()
                && (*gr != namespaces_gr()
                    || next
                        .pointer("/spec/finalizers")
                        .and_then(Value::as_array)
                        .is_none_or(Vec::is_empty));
            let res = if finished {
                self.api.store.delete(gr, next, rv)
            } else {
                self.api.store.update(gr, next, rv)
            };
            match res {
                Ok(stored) => {
                    if finished && *gr == crds_gr() {
                        self.api.crd_removed(meta_str(&stored, "name"));
                    }
                    return;
                }
                Err(WriteError::Stale) => continue,
                Err(_) => return,
            }
        }
    }

    fn remove_finalizer(&self, gr: &GroupResource, key: &ObjKey, finalizer: &str) {
        self.rewrite(gr, key, |obj| {
            let fins = meta::finalizers(obj);
            if !fins.iter().any(|f| f == finalizer) {
                return false;
            }
            let rest: Vec<String> = fins.into_iter().filter(|f| f != finalizer).collect();
            set_meta(
                obj,
                "finalizers",
                if rest.is_empty() { Value::Null } else { json!(rest) },
            );
            true
        });
    }

    fn drop_owner_ref(&self, gr: &GroupResource, key: &ObjKey, uid: &str) {
        self.rewrite(gr, key, |obj| {
            let Some(refs) = obj.pointer("/metadata/ownerReferences").and_then(Value::as_array) else {
                return false;
            };
            let rest: Vec<Value> = refs.iter().filter(|r| r["uid"] != uid).cloned().collect();
            if rest.len() == refs.len() {
                return false;
            }
            set_meta(
                obj,
                "ownerReferences",
                if rest.is_empty() { Value::Null } else { json!(rest) },
            );
            true
        });
    }

    /// Empty terminating namespaces and deleting CRDs; finish them once empty.
    fn check_cleanups(&mut self) {
        let registry = self.api.registry();
        for ns in self.terminating_namespaces.clone() {
            let mut remaining = 0usize;
            for def in registry
                .all()
                .iter()
                // One def per storage key: resources sharing storage (events.k8s.io and core
                // Events) are emptied, and counted, once.
                .filter(|d| d.namespaced && d.is_storage())
            {
                let (objs, _) = self.api.store.list(&def.key(), Some(&ns));
                remaining += objs.len();
                for o in objs
                    .iter()
                    .filter(|o| meta_str(o, "deletionTimestamp").is_empty())
                {
                    if let Err(e) = self.api.delete_object(def, o, "Background", false, vec![]) {
                        tracing::debug!(error = %e, "namespace cleanup delete failed; retried on the next event");
                    }
                }
            }
            if remaining == 0 {
                self.terminating_namespaces.remove(&ns);
                self.rewrite(&namespaces_gr(), &(String::new(), ns.clone()), |obj| {
                    let has = obj
                        .pointer("/spec/finalizers")
                        .and_then(Value::as_array)
                        .is_some_and(|a| !a.is_empty());
                    if has {
                        obj["spec"]["finalizers"] = json!([]);
                    }
                    has
                });
            }
        }
        for crd_name in self.deleting_crds.clone() {
            let Some(def) = registry
                .all()
                .iter()
                .find(|d| d.crd.as_deref() == Some(crd_name.as_str()) && d.is_storage())
                .cloned()
            else {
                self.deleting_crds.remove(&crd_name);
                self.remove_finalizer(
                    &crds_gr(),
                    &(String::new(), crd_name.clone()),
                    CRD_CLEANUP_FINALIZER,
                );
                continue;
            };
            let (objs, _) = self.api.store.list(&def.key(), None);
            for o in objs
                .iter()
                .filter(|o| meta_str(o, "deletionTimestamp").is_empty())
            {
                if let Err(e) = self.api.delete_object(&def, o, "Background", false, vec![]) {
                    tracing::debug!(error = %e, "CRD cleanup delete failed; retried on the next event");
                }
            }
            if self.api.store.list(&def.key(), None).0.is_empty() {
                self.deleting_crds.remove(&crd_name);
                self.remove_finalizer(
                    &crds_gr(),
                    &(String::new(), crd_name.clone()),
                    CRD_CLEANUP_FINALIZER,
                );
            }
        }
    }
}
