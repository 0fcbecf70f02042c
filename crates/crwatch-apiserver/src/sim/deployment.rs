//! The Deployment controller (pkg/controller/deployment): a ReplicaSet per pod template named
//! `<deployment>-<pod-template-hash>`, rolling updates within maxSurge / maxUnavailable (surge
//! rounded up, unavailability down, as `ResolveFenceposts`), the Recreate strategy, revision
//! annotations, old ReplicaSets cleaned up past `revisionHistoryLimit`, and the status with its
//! Available and Progressing conditions worded as the real controller words them.
//!
//! Not simulated: `progressDeadlineSeconds` never expires (no `ProgressDeadlineExceeded`), and
//! a scale during a rollout is not spread proportionally over the ReplicaSets.

use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::{
    Actor, CondStyle, Kind, Sim, i64_at, is_active, is_deleting, owner_ref, scaled_value, selector_of,
    set_condition, str_at, template_hash,
};
use crate::meta::meta_str;
use crate::status::ApiResult;

const REVISION: &str = "deployment.kubernetes.io/revision";
const DESIRED: &str = "deployment.kubernetes.io/desired-replicas";
const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
const HASH_LABEL: &str = "pod-template-hash";
const COMPONENT: &str = "deployment-controller";

fn revision_of(rs: &Value) -> i64 {
    rs.pointer("/metadata/annotations")
        .and_then(|a| a.get(REVISION))
        .and_then(Value::as_str)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn spec_replicas(obj: &Value) -> i64 {
    i64_at(obj, "/spec/replicas").unwrap_or(1).max(0)
}

fn status_count(obj: &Value, field: &str) -> i64 {
    obj.pointer(&format!("/status/{field}"))
        .and_then(Value::as_i64)
        .unwrap_or(0)
}

/// maxSurge and maxUnavailable as numbers (`ResolveFenceposts`); Recreate has neither.
fn fenceposts(d: &Value, replicas: i64) -> Result<(i64, i64), String> {
    if str_at(d, "/spec/strategy/type") == "Recreate" {
        return Ok((0, 0));
    }
    let ru = d.pointer("/spec/strategy/rollingUpdate");
    let surge = scaled_value(ru.and_then(|r| r.get("maxSurge")), replicas, true, "25%")?;
    let mut unavailable = scaled_value(ru.and_then(|r| r.get("maxUnavailable")), replicas, false, "25%")?;
    if surge == 0 && unavailable == 0 {
        // Progress must be possible.
        unavailable = 1;
    }
    Ok((surge, unavailable))
}

/// The annotations a ReplicaSet copies from its Deployment (`SetNewReplicaSetAnnotations`).
fn copied_annotations(d: &Value) -> Map<String, Value> {
    let skip = [
        "kubectl.kubernetes.io/last-applied-configuration",
        REVISION,
        "deployment.kubernetes.io/revision-history",
        DESIRED,
        MAX_REPLICAS,
        "deprecated.deployment.rollback.to",
    ];
    d.pointer("/metadata/annotations")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter(|(k, _)| !skip.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default()
}

impl Sim {
    pub(super) async fn sync_deployment(&mut self, ns: &str, name: &str) -> ApiResult<()> {
        let Some(d) = self.get(Kind::Deployment, ns, name) else {
            return Ok(());
        };
        if is_deleting(&d) {
            return Ok(());
        }
        let mut dv = (*d).clone();
        dv["apiVersion"] = json!("apps/v1");
        dv["kind"] = json!("Deployment");
        let d = Arc::new(dv);
        if let Err(e) = selector_of(&d) {
            self.invalid_selector(&d, "Deployment", COMPONENT, &e).await;
            return Ok(());
        }
        let replicas = spec_replicas(&d);
        let (surge, max_unavailable) = match fenceposts(&d, replicas) {
            Ok(f) => f,
            Err(e) => {
                tracing::debug!(deployment = %name, error = %e, "workload simulator: bad rolling update parameters");
                return Ok(());
            }
        };
        let uid = meta_str(&d, "uid").to_string();
        let mut rss: Vec<Arc<Value>> = self
            .owned(Kind::ReplicaSet, ns, &uid)
            .into_iter()
            .filter(|r| !is_deleting(r))
            .collect();
        rss.sort_by(|a, b| meta_str(a, "creationTimestamp").cmp(meta_str(b, "creationTimestamp")));
        let template = d.pointer("/spec/template").cloned().unwrap_or(json!({}));
        let collision = i64_at(&d, "/status/collisionCount");
        let hash = template_hash(&template, collision);
        let new_rs = rss
            .iter()
            .find(|r| str_at(r, "/metadata/labels/pod-template-hash") == hash)
            .cloned();
        let olds: Vec<Arc<Value>> = rss
            .iter()
            .filter(|r| {
                new_rs
                    .as_ref()
                    .is_none_or(|n| meta_str(n, "uid") != meta_str(r, "uid"))
            })
            .cloned()
            .collect();
        let max_old_revision = olds.iter().map(|r| revision_of(r)).max().unwrap_or(0);
        let mut conds = super::conditions_of(&d);
        let paused = d.pointer("/spec/paused").and_then(Value::as_bool) == Some(true);
        let recreate = str_at(&d, "/spec/strategy/type") == "Recreate";

        let mut new_rs = new_rs;
        if !paused {
            // Recreate: every old Pod goes before the new ReplicaSet gets any.
            if recreate {
                let mut scaled = false;
                for rs in &olds {
                    scaled |= self.scale_rs(&d, rs, 0, surge).await?;
                }
                if scaled {
                    return Ok(());
                }
                let old_running = olds.iter().any(|rs| {
                    !self
                        .owned(Kind::Pod, ns, meta_str(rs, "uid"))
                        .iter()
                        .all(|p| !is_active(p))
                });
                if old_running {
                    return self
                        .deployment_status(&d, &rss, new_rs.as_deref(), conds, max_unavailable)
                        .await;
                }
            }
            if new_rs.is_none() {
                let current: i64 = olds.iter().map(|r| spec_replicas(r)).sum();
                let initial = if recreate {
                    replicas
                } else {
                    (replicas + surge - current).clamp(0, replicas)
                };
                let Some(created) = self
                    .create_new_rs(&d, &template, &hash, initial, max_old_revision + 1, surge)
                    .await?
                else {
                    return Ok(());
                };
                let rs_name = meta_str(&created, "name").to_string();
                set_condition(
                    &mut conds,
                    "Progressing",
                    "True",
                    Some("NewReplicaSetCreated"),
                    Some(&format!("Created new replica set \"{rs_name}\"")),
                    CondStyle::Update,
                );
                new_rs = Some(Arc::new(created));
            } else if let Some(n) = new_rs.clone() {
                // The new ReplicaSet carries the newest revision (after a rollback, too).
                let want_rev = if revision_of(&n) > max_old_revision {
                    revision_of(&n)
                } else {
                    max_old_revision + 1
                };
                let mut n2 = (*n).clone();
                if self.rs_annotations(&d, &mut n2, want_rev, surge) {
                    let stored = self
                        .update(&Kind::ReplicaSet.gr(), &n2, "", &Actor::controller(COMPONENT))
                        .await?;
                    new_rs = Some(Arc::new(stored));
                }
                if super::condition(&d, "Progressing").is_none() {
                    let msg = format!("Found new replica set \"{}\"", meta_str(&n, "name"));
                    set_condition(
                        &mut conds,
                        "Progressing",
                        "True",
                        Some("FoundNewReplicaSet"),
                        Some(&msg),
                        CondStyle::Update,
                    );
                }
            }
            let Some(n) = new_rs.clone() else {
                return Ok(());
            };
            // Scale the new ReplicaSet up (or down to the target).
            let new_replicas = spec_replicas(&n);
            let target = if new_replicas > replicas || recreate {
                replicas
            } else {
                let all: i64 = rss
                    .iter()
                    .filter(|r| meta_str(r, "uid") != meta_str(&n, "uid"))
                    .map(|r| spec_replicas(r))
                    .sum::<i64>()
                    + new_replicas;
                let max_total = replicas + surge;
                if all >= max_total {
                    new_replicas
                } else {
                    new_replicas + (max_total - all).min(replicas - new_replicas)
                }
            };
            if target != new_replicas {
                self.scale_rs(&d, &n, target, surge).await?;
                return Ok(());
            }
            if !recreate {
                // Scale old ReplicaSets down as far as availability allows.
                let old_count: i64 = olds.iter().map(|r| spec_replicas(r)).sum();
                if old_count > 0 {
                    let all_count = old_count + new_replicas;
                    let min_available = replicas - max_unavailable;
                    let new_unavailable = new_replicas - status_count(&n, "availableReplicas");
                    let mut max_scale_down = all_count - min_available - new_unavailable;
                    let mut scaled = false;
                    if max_scale_down > 0 {
                        // First the old ReplicaSets' unhealthy Pods, oldest ReplicaSet first.
                        for rs in &olds {
                            if max_scale_down <= 0 {
                                break;
                            }
                            let r = spec_replicas(rs);
                            let unhealthy = r - status_count(rs, "availableReplicas");
                            if r == 0 || unhealthy <= 0 {
                                continue;
                            }
                            let down = unhealthy.min(max_scale_down).min(r);
                            scaled |= self.scale_rs(&d, rs, r - down, surge).await?;
                            max_scale_down -= down;
                        }
                        if !scaled {
                            // Then available ones, as far as minAvailable allows.
                            let available: i64 =
                                rss.iter().map(|r| status_count(r, "availableReplicas")).sum();
                            let mut total_down = available - min_available;
                            for rs in &olds {
                                if total_down <= 0 {
                                    break;
                                }
                                let r = spec_replicas(rs);
                                if r == 0 {
                                    continue;
                                }
                                let down = r.min(total_down);
                                scaled |= self.scale_rs(&d, rs, r - down, surge).await?;
                                total_down -= down;
                            }
                        }
                    }
                    if scaled {
                        return Ok(());
                    }
                }
            }
            // Keep every old ReplicaSet's annotations current; clean up past the history limit.
            for rs in &olds {
                let mut r2 = (**rs).clone();
                if self.rs_annotations(&d, &mut r2, revision_of(rs), surge) {
                    self.update(&Kind::ReplicaSet.gr(), &r2, "", &Actor::controller(COMPONENT))
                        .await?;
                }
            }
        }
        // The Deployment carries its newest ReplicaSet's revision.
        let mut d = d;
        if let Some(n) = &new_rs {
            let rev = revision_of(n).to_string();
            if str_at(&d, "/metadata/annotations/deployment.kubernetes.io~1revision") != rev {
                let mut next = (*d).clone();
                next["metadata"]["annotations"][REVISION] = json!(rev);
                let stored = self
                    .update(&Kind::Deployment.gr(), &next, "", &Actor::controller(COMPONENT))
                    .await?;
                d = Arc::new(stored);
            }
        }
        self.deployment_status(&d, &rss, new_rs.as_deref(), conds, max_unavailable)
            .await?;
        if !paused {
            self.cleanup_old_rss(&d, &olds).await?;
        }
        Ok(())
    }

    /// Create the new ReplicaSet; `None` when the name is taken by another template (the
    /// collision count goes up and the next sync hashes anew).
    async fn create_new_rs(
        &mut self,
        d: &Value,
        template: &Value,
        hash: &str,
        replicas: i64,
        revision: i64,
        surge: i64,
    ) -> ApiResult<Option<Value>> {
        let ns = meta_str(d, "namespace").to_string();
        let name = format!("{}-{hash}", meta_str(d, "name"));
        let mut tmpl = template.clone();
        tmpl["metadata"]["labels"][HASH_LABEL] = json!(hash);
        let mut selector = d.pointer("/spec/selector").cloned().unwrap_or(json!({}));
        selector["matchLabels"][HASH_LABEL] = json!(hash);
        let mut rs = json!({
            "metadata": {
                "name": name,
                "namespace": ns,
                "labels": tmpl["metadata"]["labels"].clone(),
                "ownerReferences": [owner_ref(d, "apps/v1", "Deployment")],
            },
            "spec": {
                "replicas": replicas,
                "selector": selector,
                "template": tmpl,
            },
        });
        if let Some(m) = i64_at(d, "/spec/minReadySeconds") {
            rs["spec"]["minReadySeconds"] = json!(m);
        }
        self.rs_annotations(d, &mut rs, revision, surge);
        match self
            .create(&Kind::ReplicaSet.gr(), &ns, &rs, &Actor::controller(COMPONENT))
            .await
        {
            Ok(created) => {
                if replicas > 0 {
                    let msg = format!("Scaled up replica set {name} from 0 to {replicas}");
                    self.event(d, "Normal", "ScalingReplicaSet", &msg, COMPONENT)
                        .await;
                }
                Ok(Some(created))
            }
            Err(e) if e.code == 409 => {
                let existing = self.get(Kind::ReplicaSet, &ns, &name);
                let ours = existing
                    .as_ref()
                    .is_some_and(|r| super::controller_uid(r) == Some(meta_str(d, "uid")));
                if !ours {
                    // A hash collision: count it, as the real controller does, and hash again.
                    let mut status = d.get("status").cloned().unwrap_or(json!({}));
                    status["collisionCount"] = json!(i64_at(d, "/status/collisionCount").unwrap_or(0) + 1);
                    self.put_status(Kind::Deployment, d, status, &Actor::controller(COMPONENT))
                        .await?;
                }
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Set a ReplicaSet's revision, desired-replicas and max-replicas annotations (and those
    /// copied from the Deployment); whether anything changed.
    fn rs_annotations(&self, d: &Value, rs: &mut Value, revision: i64, surge: i64) -> bool {
        let replicas = spec_replicas(d);
        let before = rs.pointer("/metadata/annotations").cloned();
        let mut ann = before
            .clone()
            .and_then(|a| a.as_object().cloned())
            .unwrap_or_default();
        for (k, v) in copied_annotations(d) {
            ann.insert(k, v);
        }
        ann.insert(REVISION.into(), json!(revision.to_string()));
        ann.insert(DESIRED.into(), json!(replicas.to_string()));
        ann.insert(MAX_REPLICAS.into(), json!((replicas + surge).to_string()));
        let after = Value::Object(ann);
        if before.as_ref() == Some(&after) {
            return false;
        }
        rs["metadata"]["annotations"] = after;
        true
    }

    /// Scale a ReplicaSet (with its annotations); whether it changed. The Deployment gets a
    /// `ScalingReplicaSet` Event.
    async fn scale_rs(&mut self, d: &Value, rs: &Value, to: i64, surge: i64) -> ApiResult<bool> {
        let from = spec_replicas(rs);
        let mut next = rs.clone();
        let ann_changed = self.rs_annotations(d, &mut next, revision_of(rs), surge);
        if from == to && !ann_changed {
            return Ok(false);
        }
        next["spec"]["replicas"] = json!(to);
        self.update(&Kind::ReplicaSet.gr(), &next, "", &Actor::controller(COMPONENT))
            .await?;
        if from != to {
            let dir = if to > from { "up" } else { "down" };
            let msg = format!(
                "Scaled {dir} replica set {} from {from} to {to}",
                meta_str(rs, "name")
            );
            self.event(d, "Normal", "ScalingReplicaSet", &msg, COMPONENT)
                .await;
        }
        Ok(from != to)
    }

    async fn deployment_status(
        &mut self,
        d: &Value,
        rss: &[Arc<Value>],
        new_rs: Option<&Value>,
        mut conds: Vec<Value>,
        max_unavailable: i64,
    ) -> ApiResult<()> {
        // Read the ReplicaSets again: this sync may have changed them.
        let ns = meta_str(d, "namespace").to_string();
        let uid = meta_str(d, "uid").to_string();
        let current: Vec<Arc<Value>> = self
            .owned(Kind::ReplicaSet, &ns, &uid)
            .into_iter()
            .filter(|r| !is_deleting(r))
            .collect();
        let rss: &[Arc<Value>] = if current.is_empty() { rss } else { &current };
        let new_rs = new_rs.and_then(|n| {
            rss.iter()
                .find(|r| meta_str(r, "uid") == meta_str(n, "uid"))
                .map(|r| (**r).clone())
        });
        let replicas = spec_replicas(d);
        let actual: i64 = rss.iter().map(|r| status_count(r, "replicas")).sum();
        let total_spec: i64 = rss.iter().map(|r| spec_replicas(r)).sum();
        let ready: i64 = rss.iter().map(|r| status_count(r, "readyReplicas")).sum();
        let available: i64 = rss.iter().map(|r| status_count(r, "availableReplicas")).sum();
        let updated = new_rs.as_ref().map_or(0, |n| status_count(n, "replicas"));
        let unavailable = (total_spec - available).max(0);
        let generation = i64_at(d, "/metadata/generation").unwrap_or(1);
        let paused = d.pointer("/spec/paused").and_then(Value::as_bool) == Some(true);
        let min_available = if str_at(d, "/spec/strategy/type") == "Recreate" || replicas == 0 {
            replicas
        } else {
            replicas - max_unavailable.min(replicas)
        };
        if available >= min_available {
            set_condition(
                &mut conds,
                "Available",
                "True",
                Some("MinimumReplicasAvailable"),
                Some("Deployment has minimum availability."),
                CondStyle::Update,
            );
        } else {
            set_condition(
                &mut conds,
                "Available",
                "False",
                Some("MinimumReplicasUnavailable"),
                Some("Deployment does not have minimum availability."),
                CondStyle::Update,
            );
        }
        let old_status = d.get("status").cloned().unwrap_or(json!({}));
        let prog = super::condition(d, "Progressing").cloned();
        let rs_name = new_rs
            .as_ref()
            .map(|n| meta_str(n, "name").to_string())
            .unwrap_or_default();
        if paused {
            if prog
                .as_ref()
                .and_then(|c| c.get("reason"))
                .and_then(Value::as_str)
                != Some("DeploymentPaused")
            {
                set_condition(
                    &mut conds,
                    "Progressing",
                    "Unknown",
                    Some("DeploymentPaused"),
                    Some("Deployment is paused"),
                    CondStyle::Update,
                );
            }
        } else if prog
            .as_ref()
            .and_then(|c| c.get("reason"))
            .and_then(Value::as_str)
            == Some("DeploymentPaused")
        {
            set_condition(
                &mut conds,
                "Progressing",
                "Unknown",
                Some("DeploymentResumed"),
                Some("Deployment is resumed"),
                CondStyle::Update,
            );
        } else if d.pointer("/spec/progressDeadlineSeconds").and_then(Value::as_i64)
            != Some(i64::from(i32::MAX))
        {
            let complete_already = actual == updated
                && prog
                    .as_ref()
                    .and_then(|c| c.get("reason"))
                    .and_then(Value::as_str)
                    == Some("NewReplicaSetAvailable");
            if !complete_already && new_rs.is_some() {
                let complete = updated == replicas && actual == replicas && available == replicas;
                let old_old = status_count(d, "replicas") - status_count(d, "updatedReplicas");
                let progressing = updated
                    > old_status
                        .get("updatedReplicas")
                        .and_then(Value::as_i64)
                        .unwrap_or(0)
                    || actual - updated < old_old
                    || ready
                        > old_status
                            .get("readyReplicas")
                            .and_then(Value::as_i64)
                            .unwrap_or(0)
                    || available
                        > old_status
                            .get("availableReplicas")
                            .and_then(Value::as_i64)
                            .unwrap_or(0);
                if complete {
                    let msg = format!("ReplicaSet \"{rs_name}\" has successfully progressed.");
                    set_condition(
                        &mut conds,
                        "Progressing",
                        "True",
                        Some("NewReplicaSetAvailable"),
                        Some(&msg),
                        CondStyle::Update,
                    );
                } else if progressing {
                    let msg = format!("ReplicaSet \"{rs_name}\" is progressing.");
                    set_condition(
                        &mut conds,
                        "Progressing",
                        "True",
                        Some("ReplicaSetUpdated"),
                        Some(&msg),
                        CondStyle::Update,
                    );
                }
            }
        }
        let mut status = Map::new();
        status.insert("observedGeneration".into(), json!(generation));
        for (k, v) in [
            ("replicas", actual),
            ("updatedReplicas", updated),
            ("readyReplicas", ready),
            ("availableReplicas", available),
            ("unavailableReplicas", unavailable),
        ] {
            if v != 0 {
                status.insert(k.into(), json!(v));
            }
        }
        // Conditions in the real order: Available first when it was set first.
        status.insert("conditions".into(), json!(conds));
        if let Some(c) = old_status.get("collisionCount") {
            status.insert("collisionCount".into(), c.clone());
        }
        self.put_status(
            Kind::Deployment,
            d,
            Value::Object(status),
            &Actor::controller(COMPONENT),
        )
        .await
    }

    /// Delete old, empty ReplicaSets past `revisionHistoryLimit` (oldest revision first).
    async fn cleanup_old_rss(&mut self, d: &Value, olds: &[Arc<Value>]) -> ApiResult<()> {
        let limit = i64_at(d, "/spec/revisionHistoryLimit").unwrap_or(10).max(0) as usize;
        let mut empty: Vec<&Arc<Value>> = olds
            .iter()
            .filter(|r| spec_replicas(r) == 0 && status_count(r, "replicas") == 0 && !is_deleting(r))
            .collect();
        if empty.len() <= limit {
            return Ok(());
        }
        empty.sort_by_key(|r| revision_of(r));
        let extra = empty.len() - limit;
        for rs in empty.into_iter().take(extra) {
            self.delete(
                &Kind::ReplicaSet.gr(),
                rs,
                json!({}),
                &Actor::controller(COMPONENT),
            )
            .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fenceposts_round_as_the_real_controller() {
        let d = json!({"spec": {"replicas": 10}});
        assert_eq!(fenceposts(&d, 10), Ok((3, 2)));
        let d = json!({"spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 0}}}});
        assert_eq!(fenceposts(&d, 3), Ok((0, 1)));
        let d = json!({"spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "50%", "maxUnavailable": "10%"}}}});
        assert_eq!(fenceposts(&d, 5), Ok((3, 0)));
        let d = json!({"spec": {"strategy": {"type": "Recreate"}}});
        assert_eq!(fenceposts(&d, 5), Ok((0, 0)));
    }

    #[test]
    fn copied_annotations_skip_the_controllers_own() {
        let d = json!({"metadata": {"annotations": {
            "kubernetes.io/change-cause": "x",
            REVISION: "3",
            "kubectl.kubernetes.io/last-applied-configuration": "{}",
        }}});
        let a = copied_annotations(&d);
        assert_eq!(a.len(), 1);
        assert!(a.contains_key("kubernetes.io/change-cause"));
    }
}
