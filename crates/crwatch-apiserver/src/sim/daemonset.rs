//! The DaemonSet controller (pkg/controller/daemon): one Pod per Node that the DaemonSet's
//! nodeSelector, required node affinity and taints allow, pinned to its Node by node affinity on
//! `metadata.name` (as the real controller pins them for the default scheduler), rolling
//! updates within maxUnavailable, and the status counts.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};

use super::{
    Actor, Kind, Sim, available, i64_at, is_active, is_deleting, is_ready, owner_ref, scaled_value,
    selector_of, str_at, template_hash,
};
use crate::meta::meta_str;
use crate::selector::labels_of;
use crate::status::ApiResult;

const COMPONENT: &str = "daemonset-controller";

/// The Node a DaemonSet Pod is for: its nodeName, else its `metadata.name` node affinity.
fn target_node(pod: &Value) -> Option<String> {
    let n = str_at(pod, "/spec/nodeName");
    if !n.is_empty() {
        return Some(n.to_string());
    }
    pod.pointer(
        "/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms",
    )?
    .as_array()?
    .iter()
    .flat_map(|t| {
        t.get("matchFields")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
    })
    .find(|f| f.get("key").and_then(Value::as_str) == Some("metadata.name"))?
    .get("values")?
    .as_array()?
    .first()?
    .as_str()
    .map(String::from)
}

/// Whether the DaemonSet should run on the Node (selector, affinity labels, taints other than
/// the node conditions' own, which its Pods tolerate).
fn should_run(ds: &Value, node: &Value) -> bool {
    let labels = labels_of(node);
    if let Some(sel) = ds
        .pointer("/spec/template/spec/nodeSelector")
        .and_then(Value::as_object)
        && !sel
            .iter()
            .all(|(k, v)| labels.get(k).map(String::as_str) == v.as_str())
    {
        return false;
    }
    let pod = json!({"spec": ds.pointer("/spec/template/spec").cloned().unwrap_or(json!({}))});
    node.pointer("/spec/taints")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|t| !str_at(t, "/key").starts_with("node.kubernetes.io/"))
        .filter(|t| matches!(str_at(t, "/effect"), "NoSchedule" | "NoExecute"))
        .all(|t| {
            pod.pointer("/spec/tolerations")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .any(|tol| {
                    let op = tol.get("operator").and_then(Value::as_str).unwrap_or("Equal");
                    let key = str_at(tol, "/key");
                    (key.is_empty() && op == "Exists" || key == str_at(t, "/key"))
                        && (op == "Exists" || str_at(tol, "/value") == str_at(t, "/value"))
                        && (str_at(tol, "/effect").is_empty()
                            || str_at(tol, "/effect") == str_at(t, "/effect"))
                })
        })
}

impl Sim {
    pub(super) async fn sync_daemonset(&mut self, ns: &str, name: &str) -> ApiResult<()> {
        let Some(ds) = self.get(Kind::DaemonSet, ns, name) else {
            return Ok(());
        };
        if is_deleting(&ds) {
            return Ok(());
        }
        let mut dv = (*ds).clone();
        dv["apiVersion"] = json!("apps/v1");
        dv["kind"] = json!("DaemonSet");
        let ds = Arc::new(dv);
        if let Err(e) = selector_of(&ds) {
            self.invalid_selector(&ds, "DaemonSet", COMPONENT, &e).await;
            return Ok(());
        }
        let who = Actor::controller(COMPONENT);
        let uid = meta_str(&ds, "uid").to_string();
        let template = ds.pointer("/spec/template").cloned().unwrap_or(json!({}));
        let hash = template_hash(
            &template,
            Some(i64_at(&ds, "/status/collisionCount").unwrap_or(0)),
        );
        let generation = i64_at(&ds, "/metadata/generation").unwrap_or(1);
        let nodes = self.list(Kind::Node, None);
        let eligible: BTreeMap<String, Arc<Value>> = nodes
            .iter()
            .filter(|n| should_run(&ds, n))
            .map(|n| (meta_str(n, "name").to_string(), n.clone()))
            .collect();
        let pods: Vec<Arc<Value>> = self
            .owned(Kind::Pod, ns, &uid)
            .into_iter()
            .filter(|p| is_active(p))
            .collect();
        let mut by_node: BTreeMap<String, Vec<Arc<Value>>> = BTreeMap::new();
        for p in &pods {
            by_node
                .entry(target_node(p).unwrap_or_default())
                .or_default()
                .push(p.clone());
        }
        let mut involved = (*ds).clone();
        involved["apiVersion"] = json!("apps/v1");
        // Pods where they should not be, and duplicates, go.
        for (node, ps) in &by_node {
            let keep = usize::from(eligible.contains_key(node));
            for p in ps.iter().skip(keep) {
                self.delete(&Kind::Pod.gr(), p, json!({}), &who).await?;
                let msg = format!("Deleted pod: {}", meta_str(p, "name"));
                self.event(&involved, "Normal", "SuccessfulDelete", &msg, COMPONENT)
                    .await;
            }
        }
        // Missing Pods are created.
        for node in eligible.keys() {
            if by_node.contains_key(node) {
                continue;
            }
            let mut pod = super::pod_from_template(
                &template,
                owner_ref(&ds, "apps/v1", "DaemonSet"),
                &format!("{name}-"),
            );
            pod["metadata"]["labels"]["controller-revision-hash"] = json!(hash);
            pod["metadata"]["labels"]["pod-template-generation"] = json!(generation.to_string());
            pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"] = json!({
                "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}]
            });
            let mut tolerations = pod
                .pointer("/spec/tolerations")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for (key, effect) in [
                ("node.kubernetes.io/not-ready", "NoExecute"),
                ("node.kubernetes.io/unreachable", "NoExecute"),
                ("node.kubernetes.io/disk-pressure", "NoSchedule"),
                ("node.kubernetes.io/memory-pressure", "NoSchedule"),
                ("node.kubernetes.io/pid-pressure", "NoSchedule"),
                ("node.kubernetes.io/unschedulable", "NoSchedule"),
            ] {
                if !tolerations
                    .iter()
                    .any(|t| str_at(t, "/key") == key && str_at(t, "/effect") == effect)
                {
                    tolerations.push(json!({"key": key, "operator": "Exists", "effect": effect}));
                }
            }
            pod["spec"]["tolerations"] = json!(tolerations);
            let created = self.create(&Kind::Pod.gr(), ns, &pod, &who).await?;
            let msg = format!("Created pod: {}", meta_str(&created, "name"));
            self.event(&involved, "Normal", "SuccessfulCreate", &msg, COMPONENT)
                .await;
        }
        // Rolling update: old Pods go while no more than maxUnavailable are unavailable.
        if str_at(&ds, "/spec/updateStrategy/type") != "OnDelete" {
            let desired = eligible.len() as i64;
            let max_unavailable = scaled_value(
                ds.pointer("/spec/updateStrategy/rollingUpdate/maxUnavailable"),
                desired,
                true,
                "1",
            )
            .unwrap_or(1)
            .max(1);
            let mut unavailable = desired
                - pods
                    .iter()
                    .filter(|p| available(p, i64_at(&ds, "/spec/minReadySeconds").unwrap_or(0)).0)
                    .count() as i64;
            for p in &pods {
                if str_at(p, "/metadata/labels/controller-revision-hash") == hash {
                    continue;
                }
                let avail = available(p, 0).0;
                if avail && unavailable >= max_unavailable {
                    break;
                }
                self.delete(&Kind::Pod.gr(), p, json!({}), &who).await?;
                if avail {
                    unavailable += 1;
                }
            }
        }
        self.daemonset_status(&ds, &eligible, &hash).await
    }

    async fn daemonset_status(
        &mut self,
        ds: &Value,
        eligible: &BTreeMap<String, Arc<Value>>,
        hash: &str,
    ) -> ApiResult<()> {
        let ns = meta_str(ds, "namespace").to_string();
        let uid = meta_str(ds, "uid").to_string();
        let pods: Vec<Arc<Value>> = self
            .owned(Kind::Pod, &ns, &uid)
            .into_iter()
            .filter(|p| is_active(p))
            .collect();
        let min_ready = i64_at(ds, "/spec/minReadySeconds").unwrap_or(0);
        let mut scheduled = 0;
        let mut misscheduled = 0;
        let mut ready = 0;
        let mut updated = 0;
        let mut avail = 0;
        let mut seen = std::collections::BTreeSet::new();
        for p in &pods {
            let Some(node) = target_node(p) else { continue };
            if !eligible.contains_key(&node) {
                misscheduled += 1;
                continue;
            }
            if !seen.insert(node) {
                continue;
            }
            scheduled += 1;
            if is_ready(p) {
                ready += 1;
            }
            if available(p, min_ready).0 {
                avail += 1;
            }
            if str_at(p, "/metadata/labels/controller-revision-hash") == hash {
                updated += 1;
            }
        }
        let desired = eligible.len() as i64;
        let mut status = json!({
            "currentNumberScheduled": scheduled,
            "numberMisscheduled": misscheduled,
            "desiredNumberScheduled": desired,
            "numberReady": ready,
            "observedGeneration": i64_at(ds, "/metadata/generation").unwrap_or(1),
        });
        for (k, v) in [
            ("updatedNumberScheduled", updated),
            ("numberAvailable", avail),
            ("numberUnavailable", desired - avail),
        ] {
            if v != 0 {
                status[k] = json!(v);
            }
        }
        self.put_status(Kind::DaemonSet, ds, status, &Actor::controller(COMPONENT))
            .await
    }
}
