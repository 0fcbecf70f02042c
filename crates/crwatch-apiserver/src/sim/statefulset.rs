//! The StatefulSet controller (pkg/controller/statefulset): Pods `<set>-<ordinal>` created in
//! order (OrderedReady: the next only once the previous is Running and Ready; Parallel: all at
//! once), deleted highest ordinal first, PVCs from `volumeClaimTemplates` named
//! `<template>-<set>-<ordinal>` (kept, unless `persistentVolumeClaimRetentionPolicy` says
//! Delete), ControllerRevisions named `<set>-<hash>`, rolling updates from the highest ordinal
//! down to the partition, and the status with current and update revisions.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};

use super::{
    Actor, Kind, Sim, available, gr, i64_at, is_deleting, is_ready, owner_ref, phase, selector_of, str_at,
    template_hash,
};
use crate::meta::meta_str;
use crate::status::ApiResult;

const COMPONENT: &str = "statefulset-controller";
const REVISION_LABEL: &str = "controller-revision-hash";

fn running_and_ready(pod: &Value) -> bool {
    phase(pod) == "Running" && is_ready(pod) && !is_deleting(pod)
}

/// The ordinal of a Pod named `<set>-<n>`.
fn ordinal_of(set: &str, pod: &str) -> Option<i64> {
    pod.strip_prefix(set)?.strip_prefix('-')?.parse().ok()
}

impl Sim {
    pub(super) async fn sync_statefulset(&mut self, ns: &str, name: &str) -> ApiResult<()> {
        let Some(set) = self.get(Kind::StatefulSet, ns, name) else {
            return Ok(());
        };
        if is_deleting(&set) {
            return Ok(());
        }
        let mut sv = (*set).clone();
        sv["apiVersion"] = json!("apps/v1");
        sv["kind"] = json!("StatefulSet");
        let set = Arc::new(sv);
        if let Err(e) = selector_of(&set) {
            self.invalid_selector(&set, "StatefulSet", COMPONENT, &e).await;
            return Ok(());
        }
        let who = Actor::controller(COMPONENT);
        let uid = meta_str(&set, "uid").to_string();
        let replicas = i64_at(&set, "/spec/replicas").unwrap_or(1).max(0);
        let start = i64_at(&set, "/spec/ordinals/start").unwrap_or(0).max(0);
        let parallel = str_at(&set, "/spec/podManagementPolicy") == "Parallel";
        let template = set.pointer("/spec/template").cloned().unwrap_or(json!({}));
        // As `getStatefulSetRevisions`: a missing count hashes as 0 (the status then says 0).
        let collision = Some(i64_at(&set, "/status/collisionCount").unwrap_or(0));
        let update_revision = format!("{name}-{}", template_hash(&template, collision));
        self.ensure_revision(&set, &update_revision, &template).await;
        let current_revision = match str_at(&set, "/status/currentRevision") {
            "" => update_revision.clone(),
            r => r.to_string(),
        };
        let pods: BTreeMap<i64, Arc<Value>> = self
            .owned(Kind::Pod, ns, &uid)
            .into_iter()
            .filter_map(|p| ordinal_of(name, meta_str(&p, "name")).map(|o| (o, p)))
            .collect();

        'work: {
            // Create or replace the Pods in range, in order.
            for ord in start..start + replicas {
                match pods.get(&ord) {
                    None => {
                        self.create_set_pod(&set, ord, &update_revision).await?;
                        if !parallel {
                            break 'work;
                        }
                    }
                    Some(p) if matches!(phase(p), "Failed" | "Succeeded") && !is_deleting(p) => {
                        self.delete(&Kind::Pod.gr(), p, json!({}), &who).await?;
                        if !parallel {
                            break 'work;
                        }
                    }
                    Some(p) if !running_and_ready(p) && !parallel => break 'work,
                    Some(_) => {}
                }
            }
            // Scale down: the highest ordinal first.
            let condemned: Vec<&Arc<Value>> = pods
                .iter()
                .rev()
                .filter(|(o, _)| **o < start || **o >= start + replicas)
                .map(|(_, p)| p)
                .collect();
            for p in &condemned {
                if is_deleting(p) {
                    if !parallel {
                        break 'work;
                    }
                    continue;
                }
                self.delete(&Kind::Pod.gr(), p, json!({}), &who).await?;
                self.release_scaled_claims(&set, p).await?;
                if !parallel {
                    break 'work;
                }
            }
            if !condemned.is_empty() {
                break 'work;
            }
            // Rolling update: one Pod at a time, highest ordinal first, down to the partition,
            // and only while every Pod is Running and Ready.
            if str_at(&set, "/spec/updateStrategy/type") == "OnDelete" {
                break 'work;
            }
            if !pods.values().all(|p| running_and_ready(p)) {
                break 'work;
            }
            let partition = i64_at(&set, "/spec/updateStrategy/rollingUpdate/partition").unwrap_or(0);
            for (ord, p) in pods.iter().rev() {
                if *ord < partition || *ord >= start + replicas {
                    continue;
                }
                if str_at(p, "/metadata/labels/controller-revision-hash") != update_revision {
                    self.delete(&Kind::Pod.gr(), p, json!({}), &who).await?;
                    break 'work;
                }
            }
        }
        self.statefulset_status(&set, &current_revision, &update_revision)
            .await
    }

    /// The ControllerRevision for the set's template (best effort: history for `kubectl
    /// rollout history`; the Pods' revision label names it either way).
    async fn ensure_revision(&mut self, set: &Value, revision: &str, template: &Value) {
        let g = gr("apps", "controllerrevisions");
        let ns = meta_str(set, "namespace").to_string();
        if self.get_gr(&g, &ns, revision).is_some() || !super::served(&self.api, &g) {
            return;
        }
        let uid = meta_str(set, "uid");
        let number = self
            .api
            .store
            .list(&g, Some(&ns))
            .0
            .iter()
            .filter(|r| super::controller_uid(r) == Some(uid))
            .filter_map(|r| r.get("revision").and_then(Value::as_i64))
            .max()
            .unwrap_or(0)
            + 1;
        let mut labels = set
            .pointer("/spec/template/metadata/labels")
            .cloned()
            .unwrap_or(json!({}));
        labels["controller.kubernetes.io/hash"] = json!(revision.rsplit('-').next().unwrap_or_default());
        let mut data_template = template.clone();
        data_template["$patch"] = json!("replace");
        let cr = json!({
            "metadata": {
                "name": revision,
                "namespace": ns,
                "labels": labels,
                "ownerReferences": [owner_ref(set, "apps/v1", "StatefulSet")],
            },
            "data": {"spec": {"template": data_template}},
            "revision": number,
        });
        if let Err(e) = self.create(&g, &ns, &cr, &Actor::controller(COMPONENT)).await {
            tracing::debug!(error = %e.message, "workload simulator: ControllerRevision not created");
        }
    }

    async fn create_set_pod(&mut self, set: &Value, ord: i64, revision: &str) -> ApiResult<()> {
        let ns = meta_str(set, "namespace").to_string();
        let set_name = meta_str(set, "name").to_string();
        let pod_name = format!("{set_name}-{ord}");
        let who = Actor::controller(COMPONENT);
        let template = set.pointer("/spec/template").cloned().unwrap_or(json!({}));
        let mut pod = super::pod_from_template(&template, owner_ref(set, "apps/v1", "StatefulSet"), "");
        if let Some(m) = pod.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("generateName");
            m.insert("name".into(), json!(pod_name));
        }
        let labels = &mut pod["metadata"]["labels"];
        labels[REVISION_LABEL] = json!(revision);
        labels["statefulset.kubernetes.io/pod-name"] = json!(pod_name);
        labels["apps.kubernetes.io/pod-index"] = json!(ord.to_string());
        pod["spec"]["hostname"] = json!(pod_name);
        let svc = str_at(set, "/spec/serviceName");
        if !svc.is_empty() {
            pod["spec"]["subdomain"] = json!(svc);
        }
        // Claims first, then the Pod that mounts them.
        let claims: Vec<Value> = set
            .pointer("/spec/volumeClaimTemplates")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let policy = set.pointer("/spec/persistentVolumeClaimRetentionPolicy");
        let delete_with_set =
            policy.and_then(|p| p.get("whenDeleted")).and_then(Value::as_str) == Some("Delete");
        let mut volumes: Vec<Value> = pod
            .pointer("/spec/volumes")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for c in &claims {
            let tname = meta_str(c, "name");
            let claim_name = format!("{tname}-{set_name}-{ord}");
            if self.get(Kind::Pvc, &ns, &claim_name).is_none() {
                let mut labels = c.pointer("/metadata/labels").cloned().unwrap_or(json!({}));
                if let Some(ml) = set
                    .pointer("/spec/selector/matchLabels")
                    .and_then(Value::as_object)
                {
                    for (k, v) in ml {
                        labels[k] = v.clone();
                    }
                }
                let mut pvc = json!({
                    "metadata": {"name": claim_name, "namespace": ns, "labels": labels},
                    "spec": c.get("spec").cloned().unwrap_or(json!({})),
                });
                if let Some(a) = c.pointer("/metadata/annotations") {
                    pvc["metadata"]["annotations"] = a.clone();
                }
                if delete_with_set {
                    pvc["metadata"]["ownerReferences"] = json!([owner_ref(set, "apps/v1", "StatefulSet")]);
                }
                match self.create(&Kind::Pvc.gr(), &ns, &pvc, &who).await {
                    Ok(_) => {
                        let msg = format!(
                            "create Claim {claim_name} Pod {pod_name} in StatefulSet {set_name} success"
                        );
                        self.event(set, "Normal", "SuccessfulCreate", &msg, COMPONENT)
                            .await;
                    }
                    Err(e) if e.code == 409 => {}
                    Err(e) => return Err(e),
                }
            }
            volumes.retain(|v| v.get("name").and_then(Value::as_str) != Some(tname));
            volumes.push(json!({"name": tname, "persistentVolumeClaim": {"claimName": claim_name}}));
        }
        if !volumes.is_empty() {
            pod["spec"]["volumes"] = json!(volumes);
        }
        match self.create(&Kind::Pod.gr(), &ns, &pod, &who).await {
            Ok(_) => {
                let msg = format!("create Pod {pod_name} in StatefulSet {set_name} successful");
                self.event(set, "Normal", "SuccessfulCreate", &msg, COMPONENT)
                    .await;
                Ok(())
            }
            Err(e) if e.code == 409 => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `whenScaled: Delete`: the claims of a Pod removed by a scale down go with it (owned by
    /// the Pod, so the garbage collector deletes them once the Pod is gone).
    async fn release_scaled_claims(&mut self, set: &Value, pod: &Value) -> ApiResult<()> {
        let policy = set.pointer("/spec/persistentVolumeClaimRetentionPolicy/whenScaled");
        if policy.and_then(Value::as_str) != Some("Delete") {
            return Ok(());
        }
        let ns = meta_str(set, "namespace").to_string();
        let set_name = meta_str(set, "name");
        let Some(ord) = ordinal_of(set_name, meta_str(pod, "name")) else {
            return Ok(());
        };
        let templates: Vec<String> = set
            .pointer("/spec/volumeClaimTemplates")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|c| meta_str(c, "name").to_string())
            .collect();
        for t in templates {
            let claim = format!("{t}-{set_name}-{ord}");
            if let Some(pvc) = self.get(Kind::Pvc, &ns, &claim) {
                let mut next = (*pvc).clone();
                let mut refs = next
                    .pointer("/metadata/ownerReferences")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                if refs.iter().any(|r| r["uid"] == meta_str(pod, "uid")) {
                    continue;
                }
                refs.push(json!({"apiVersion": "v1", "kind": "Pod", "name": meta_str(pod, "name"), "uid": meta_str(pod, "uid")}));
                next["metadata"]["ownerReferences"] = json!(refs);
                self.update(&Kind::Pvc.gr(), &next, "", &Actor::controller(COMPONENT))
                    .await?;
            }
        }
        Ok(())
    }

    async fn statefulset_status(&mut self, set: &Value, current: &str, update: &str) -> ApiResult<()> {
        let ns = meta_str(set, "namespace").to_string();
        let uid = meta_str(set, "uid").to_string();
        let pods: Vec<Arc<Value>> = self.owned(Kind::Pod, &ns, &uid);
        let min_ready = i64_at(set, "/spec/minReadySeconds").unwrap_or(0);
        let mut replicas = 0;
        let mut ready = 0;
        let mut avail = 0;
        let mut current_count = 0;
        let mut updated = 0;
        let mut wake = None;
        for p in &pods {
            if is_deleting(p) {
                continue;
            }
            replicas += 1;
            if is_ready(p) {
                ready += 1;
            }
            let (ok, later) = available(p, min_ready);
            if ok {
                avail += 1;
            }
            if let Some(l) = later {
                wake = Some(wake.map_or(l, |w: std::time::Duration| w.min(l)));
            }
            let rev = str_at(p, "/metadata/labels/controller-revision-hash");
            if rev == current {
                current_count += 1;
            }
            if rev == update {
                updated += 1;
            }
        }
        if let Some(w) = wake {
            self.requeue_after(
                (Kind::StatefulSet, ns.clone(), meta_str(set, "name").to_string()),
                w,
            );
        }
        let (mut current, mut current_count) = (current.to_string(), current_count);
        // The rolling update is complete: the update revision becomes the current one.
        if str_at(set, "/spec/updateStrategy/type") != "OnDelete" && updated == replicas && ready == replicas
        {
            current = update.to_string();
            current_count = updated;
        }
        let mut status = json!({
            "observedGeneration": i64_at(set, "/metadata/generation").unwrap_or(1),
            "replicas": replicas,
            "availableReplicas": avail,
            "currentRevision": current,
            "updateRevision": update,
            "collisionCount": i64_at(set, "/status/collisionCount").unwrap_or(0),
        });
        for (k, v) in [
            ("readyReplicas", ready),
            ("currentReplicas", current_count),
            ("updatedReplicas", updated),
        ] {
            if v != 0 {
                status[k] = json!(v);
            }
        }
        if let Some(c) = set.pointer("/status/conditions") {
            status["conditions"] = c.clone();
        }
        self.put_status(Kind::StatefulSet, set, status, &Actor::controller(COMPONENT))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinals_come_from_the_pod_names() {
        assert_eq!(ordinal_of("db", "db-0"), Some(0));
        assert_eq!(ordinal_of("db", "db-12"), Some(12));
        assert_eq!(ordinal_of("db", "db-x"), None);
        assert_eq!(ordinal_of("db", "dbx-1"), None);
    }
}
