//! The ReplicaSet controller (pkg/controller/replicaset): keeps `spec.replicas` active Pods
//! owned by the ReplicaSet, deleting the least established ones first when there are too many,
//! and writes `replicas`, `fullyLabeledReplicas`, `readyReplicas`, `availableReplicas` and
//! `observedGeneration`.

use std::sync::Arc;

use serde_json::{Value, json};

use super::{
    Actor, Kind, Sim, available, i64_at, is_active, is_ready, owner_ref, phase, pod_from_template,
    selector_of, str_at,
};
use crate::meta::meta_str;
use crate::selector::labels_of;
use crate::status::ApiResult;

/// Pods created or deleted in one sync at most (the real controller's `burstReplicas`).
const BURST: usize = 500;

/// Rank for deletion: Pods not yet on a Node, then Pending, then not Ready, then the newest go
/// first (a simplified `ActivePodsWithRanks`).
fn deletion_rank(pod: &Value) -> (u8, u8, u8, std::cmp::Reverse<String>) {
    (
        u8::from(!str_at(pod, "/spec/nodeName").is_empty()),
        u8::from(phase(pod) == "Running"),
        u8::from(is_ready(pod)),
        std::cmp::Reverse(meta_str(pod, "creationTimestamp").to_string()),
    )
}

impl Sim {
    pub(super) async fn sync_replicaset(&mut self, ns: &str, name: &str) -> ApiResult<()> {
        let Some(rs) = self.get(Kind::ReplicaSet, ns, name) else {
            return Ok(());
        };
        let selector = match selector_of(&rs) {
            Ok(s) => s,
            Err(e) => {
                self.invalid_selector(&rs, "ReplicaSet", "replicaset-controller", &e)
                    .await;
                return Ok(());
            }
        };
        let uid = meta_str(&rs, "uid").to_string();
        let pods: Vec<Arc<Value>> = self
            .owned(Kind::Pod, ns, &uid)
            .into_iter()
            .filter(|p| is_active(p))
            .collect();
        let want = i64_at(&rs, "/spec/replicas").unwrap_or(1).max(0) as usize;
        let who = Actor::controller("replicaset-controller");
        if !super::is_deleting(&rs) {
            if pods.len() < want {
                let template = rs.pointer("/spec/template").cloned().unwrap_or(json!({}));
                let oref = owner_ref(&rs, "apps/v1", "ReplicaSet");
                let mut involved = (*rs).clone();
                involved["apiVersion"] = json!("apps/v1");
                involved["kind"] = json!("ReplicaSet");
                for _ in 0..(want - pods.len()).min(BURST) {
                    let pod = pod_from_template(&template, oref.clone(), &format!("{name}-"));
                    match self.create(&Kind::Pod.gr(), ns, &pod, &who).await {
                        Ok(created) => {
                            let msg = format!("Created pod: {}", meta_str(&created, "name"));
                            self.event(
                                &involved,
                                "Normal",
                                "SuccessfulCreate",
                                &msg,
                                "replicaset-controller",
                            )
                            .await;
                        }
                        Err(e) => {
                            let msg = format!("Error creating: {}", e.message);
                            self.event(
                                &involved,
                                "Warning",
                                "FailedCreate",
                                &msg,
                                "replicaset-controller",
                            )
                            .await;
                            return self
                                .replicaset_status(&rs, &selector, Some(e.message.clone()))
                                .await
                                .and(Err(e));
                        }
                    }
                }
            } else if pods.len() > want {
                let mut doomed = pods.clone();
                doomed.sort_by_key(|p| deletion_rank(p));
                let mut involved = (*rs).clone();
                involved["apiVersion"] = json!("apps/v1");
                involved["kind"] = json!("ReplicaSet");
                for p in doomed.iter().take((pods.len() - want).min(BURST)) {
                    self.delete(&Kind::Pod.gr(), p, json!({}), &who).await?;
                    let msg = format!("Deleted pod: {}", meta_str(p, "name"));
                    self.event(
                        &involved,
                        "Normal",
                        "SuccessfulDelete",
                        &msg,
                        "replicaset-controller",
                    )
                    .await;
                }
            }
        }
        self.replicaset_status(&rs, &selector, None).await
    }

    async fn replicaset_status(
        &mut self,
        rs: &Value,
        _selector: &crate::selector::LabelSelector,
        failure: Option<String>,
    ) -> ApiResult<()> {
        let ns = meta_str(rs, "namespace").to_string();
        let uid = meta_str(rs, "uid").to_string();
        let pods: Vec<Arc<Value>> = self
            .owned(Kind::Pod, &ns, &uid)
            .into_iter()
            .filter(|p| is_active(p))
            .collect();
        let min_ready = i64_at(rs, "/spec/minReadySeconds").unwrap_or(0);
        let template_labels = rs
            .pointer("/spec/template/metadata/labels")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let mut fully = 0;
        let mut ready = 0;
        let mut avail = 0;
        let mut wake = None;
        for p in &pods {
            let labels = labels_of(p);
            if template_labels
                .iter()
                .all(|(k, v)| labels.get(k).map(String::as_str) == v.as_str())
            {
                fully += 1;
            }
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
        }
        if let Some(w) = wake {
            self.requeue_after(
                (Kind::ReplicaSet, ns.clone(), meta_str(rs, "name").to_string()),
                w,
            );
        }
        let mut status = json!({
            "replicas": pods.len(),
            "fullyLabeledReplicas": fully,
            "readyReplicas": ready,
            "availableReplicas": avail,
            "observedGeneration": i64_at(rs, "/metadata/generation").unwrap_or(1),
        });
        // Zero counts are left out, as Go's omitempty leaves them out.
        for k in ["fullyLabeledReplicas", "readyReplicas", "availableReplicas"] {
            if status[k] == json!(0)
                && let Some(m) = status.as_object_mut()
            {
                m.remove(k);
            }
        }
        let mut conds = super::conditions_of(rs);
        match failure {
            Some(msg) => {
                super::set_condition(
                    &mut conds,
                    "ReplicaFailure",
                    "True",
                    Some("FailedCreate"),
                    Some(&msg),
                    super::CondStyle::Probe,
                );
                if let Some(c) = conds.iter_mut().find(|c| c["type"] == "ReplicaFailure")
                    && let Some(m) = c.as_object_mut()
                {
                    m.remove("lastProbeTime");
                }
            }
            None => conds.retain(|c| c["type"] != "ReplicaFailure"),
        }
        if !conds.is_empty() {
            status["conditions"] = json!(conds);
        }
        self.put_status(
            Kind::ReplicaSet,
            rs,
            status,
            &Actor::controller("replicaset-controller"),
        )
        .await
    }

    /// A workload whose selector does not parse: the real controllers skip it and say why in
    /// an Event (once: the Event is recorded only when the object changed since).
    pub(super) async fn invalid_selector(&mut self, obj: &Value, kind: &str, component: &str, err: &str) {
        let rv = meta_str(obj, "resourceVersion").to_string();
        let key = (
            kind.to_string(),
            meta_str(obj, "namespace").to_string(),
            meta_str(obj, "name").to_string(),
        );
        if self.reported_selectors.get(&key) == Some(&rv) {
            return;
        }
        if self.reported_selectors.len() >= 10_000 {
            self.reported_selectors.clear();
        }
        self.reported_selectors.insert(key, rv);
        let mut involved = obj.clone();
        involved["kind"] = json!(kind);
        let message = format!("invalid label selector: {err}");
        self.event(&involved, "Warning", "SelectorParseError", &message, component)
            .await;
    }
}
