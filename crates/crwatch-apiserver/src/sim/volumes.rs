//! The PersistentVolume binder with a simulated dynamic provisioner, and the PVC protection
//! controller: a claim without a class gets the default one (retroactive default StorageClass
//! assignment), binds to a matching Available PersistentVolume or to one provisioned for it
//! (`pvc-<claim uid>`, for any class whose provisioner is not `kubernetes.io/no-provisioner`),
//! both become Bound; a released volume is deleted (reclaim policy Delete) or Released (Retain).
//! A default StorageClass `standard` (provisioner [`PROVISIONER`], `volumeBindingMode:
//! Immediate`) is created when the server starts with an empty store.

use std::sync::Arc;

use serde_json::{Value, json};

use super::{Actor, Kind, Sim, gr, is_deleting, str_at};
use crate::meta::{meta_str, set_meta};
use crate::status::ApiResult;
use crate::store::WriteError;

/// The simulated provisioner's name (StorageClass `provisioner`, PV `provisioned-by`).
pub(crate) const PROVISIONER: &str = "crwatch.io/simulated-provisioner";
const DEFAULT_CLASS: &str = "storageclass.kubernetes.io/is-default-class";
const COMPONENT: &str = "persistent-volume-binder";

/// A quantity like `1Gi`, `500M` or `1.5Gi` in bytes (enough to compare sizes).
fn quantity_bytes(q: &str) -> Option<f64> {
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (num, unit) = q.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult = match unit {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "m" => 1e-3,
        _ => return None,
    };
    Some(n * mult)
}

fn default_class(classes: &[Arc<Value>]) -> Option<String> {
    // The newest default wins, as the admission plugin picks it.
    classes
        .iter()
        .filter(|c| {
            str_at(
                c,
                "/metadata/annotations/storageclass.kubernetes.io~1is-default-class",
            ) == "true"
        })
        .max_by(|a, b| meta_str(a, "creationTimestamp").cmp(meta_str(b, "creationTimestamp")))
        .map(|c| meta_str(c, "name").to_string())
}

/// A volume's `claimRef`, if it names a claim (a `null` or empty one does not).
pub(super) fn claim_ref(pv: &Value) -> Option<&Value> {
    pv.pointer("/spec/claimRef")
        .filter(|c| c.as_object().is_some_and(|m| !m.is_empty()))
}

/// Whether a static volume can hold the claim.
fn volume_fits(pv: &Value, pvc: &Value, class: &str) -> bool {
    if str_at(pv, "/spec/storageClassName") != class || is_deleting(pv) {
        return false;
    }
    if let Some(claim) = claim_ref(pv)
        && !(str_at(claim, "/name") == meta_str(pvc, "name")
            && str_at(claim, "/namespace") == meta_str(pvc, "namespace"))
    {
        return false;
    }
    // (The server creates volumes `Pending`; the binder makes them `Available`.)
    if claim_ref(pv).is_none() && !matches!(str_at(pv, "/status/phase"), "" | "Pending" | "Available") {
        return false;
    }
    let want = quantity_bytes(str_at(pvc, "/spec/resources/requests/storage")).unwrap_or(0.0);
    let have = quantity_bytes(str_at(pv, "/spec/capacity/storage")).unwrap_or(0.0);
    let modes = |v: &Value| -> Vec<String> {
        v.pointer("/spec/accessModes")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|m| m.as_str().map(String::from)).collect())
            .unwrap_or_default()
    };
    let pv_modes = modes(pv);
    have >= want && modes(pvc).iter().all(|m| pv_modes.contains(m))
}

impl Sim {
    pub(super) async fn bootstrap_storage(&mut self) {
        let g = gr("storage.k8s.io", "storageclasses");
        if !super::served(&self.api, &g) {
            return;
        }
        let classes = self.api.store.list(&g, None).0;
        if default_class(&classes).is_some() || classes.iter().any(|c| meta_str(c, "name") == "standard") {
            return;
        }
        let sc = json!({
            "metadata": {"name": "standard", "annotations": {DEFAULT_CLASS: "true"}},
            "provisioner": PROVISIONER,
            "reclaimPolicy": "Delete",
            "volumeBindingMode": "Immediate",
            "allowVolumeExpansion": true,
        });
        if let Err(e) = self
            .create(&g, "", &sc, &Actor::controller("storage-bootstrap"))
            .await
        {
            tracing::warn!(error = %e.message, "workload simulator: could not create the default StorageClass");
        }
    }

    pub(super) async fn sync_pvc(&mut self, ns: &str, name: &str) -> ApiResult<()> {
        let Some(pvc) = self.get(Kind::Pvc, ns, name) else {
            return Ok(());
        };
        if is_deleting(&pvc) {
            return self.pvc_protection(&pvc).await;
        }
        let who = Actor::controller(COMPONENT);
        let sc_gr = gr("storage.k8s.io", "storageclasses");
        let classes = self.api.store.list(&sc_gr, None).0;
        // Retroactive default StorageClass assignment (a class that is absent, not "").
        let class = match pvc.pointer("/spec/storageClassName") {
            Some(Value::String(c)) => c.clone(),
            _ => {
                if str_at(&pvc, "/spec/volumeName").is_empty()
                    && let Some(def) = default_class(&classes)
                {
                    let mut next = (*pvc).clone();
                    next["spec"]["storageClassName"] = json!(def);
                    self.write_pvc_spec(&next).await?;
                    return Ok(());
                }
                String::new()
            }
        };
        let pv_name = str_at(&pvc, "/spec/volumeName").to_string();
        if !pv_name.is_empty() {
            let Some(pv) = self.get(Kind::Pv, "", &pv_name) else {
                // Bound to a volume that is gone: the claim is Lost.
                if str_at(&pvc, "/status/phase") == "Bound" {
                    let mut status = pvc.get("status").cloned().unwrap_or(json!({}));
                    status["phase"] = json!("Lost");
                    return self.put_status(Kind::Pvc, &pvc, status, &who).await;
                }
                return Ok(());
            };
            return self.bind(&pvc, &pv, false).await;
        }
        // A static volume that fits, else a new one from the class's provisioner.
        let pvs = self.list(Kind::Pv, None);
        let mut fitting: Vec<&Arc<Value>> = pvs.iter().filter(|pv| volume_fits(pv, &pvc, &class)).collect();
        fitting.sort_by(|a, b| {
            let size = |v: &Value| quantity_bytes(str_at(v, "/spec/capacity/storage")).unwrap_or(0.0);
            size(a).partial_cmp(&size(b)).unwrap_or(std::cmp::Ordering::Equal)
        });
        if let Some(pv) = fitting.first() {
            let pv = (*pv).clone();
            return self.bind(&pvc, &pv, false).await;
        }
        let sc = classes.iter().find(|c| meta_str(c, "name") == class).cloned();
        let provisioner = sc
            .as_ref()
            .map(|c| str_at(c, "/provisioner").to_string())
            .unwrap_or_default();
        if class.is_empty() || sc.is_none() || provisioner == "kubernetes.io/no-provisioner" {
            if str_at(&pvc, "/status/phase").is_empty() {
                let mut status = pvc.get("status").cloned().unwrap_or(json!({}));
                status["phase"] = json!("Pending");
                self.put_status(Kind::Pvc, &pvc, status, &who).await?;
            }
            return Ok(());
        }
        let sc = sc.unwrap_or_default();
        let pv_name = format!("pvc-{}", meta_str(&pvc, "uid"));
        let pv = match self.get(Kind::Pv, "", &pv_name) {
            Some(pv) => pv,
            None => {
                let access = pvc
                    .pointer("/spec/accessModes")
                    .cloned()
                    .unwrap_or(json!(["ReadWriteOnce"]));
                let size = match str_at(&pvc, "/spec/resources/requests/storage") {
                    "" => "1Gi".to_string(),
                    s => s.to_string(),
                };
                let pv = json!({
                    "metadata": {
                        "name": pv_name,
                        "annotations": {"pv.kubernetes.io/provisioned-by": provisioner},
                    },
                    "spec": {
                        "accessModes": access,
                        "capacity": {"storage": size},
                        "claimRef": {
                            "kind": "PersistentVolumeClaim",
                            "namespace": ns,
                            "name": name,
                            "uid": meta_str(&pvc, "uid"),
                            "apiVersion": "v1",
                            "resourceVersion": meta_str(&pvc, "resourceVersion"),
                        },
                        "persistentVolumeReclaimPolicy": match str_at(&sc, "/reclaimPolicy") { "" => "Delete", r => r },
                        "storageClassName": class,
                        "volumeMode": match str_at(&pvc, "/spec/volumeMode") { "" => "Filesystem", m => m },
                        "hostPath": {"path": format!("/var/lib/crwatch/volumes/{pv_name}"), "type": "DirectoryOrCreate"},
                    },
                });
                let created = self
                    .create(
                        &Kind::Pv.gr(),
                        "",
                        &pv,
                        &Actor::controller("simulated-provisioner"),
                    )
                    .await?;
                let msg = format!("Successfully provisioned volume {pv_name}");
                let mut involved = (*pvc).clone();
                involved["apiVersion"] = json!("v1");
                involved["kind"] = json!("PersistentVolumeClaim");
                self.event(&involved, "Normal", "ProvisioningSucceeded", &msg, COMPONENT)
                    .await;
                Arc::new(created)
            }
        };
        self.bind(&pvc, &pv, true).await
    }

    /// Bind claim and volume: the volume's claimRef and Bound phase, then the claim's volumeName,
    /// annotations and Bound status (the binder's order).
    async fn bind(&mut self, pvc: &Value, pv: &Value, provisioned: bool) -> ApiResult<()> {
        let who = Actor::controller(COMPONENT);
        let claim_ref = json!({
            "kind": "PersistentVolumeClaim",
            "namespace": meta_str(pvc, "namespace"),
            "name": meta_str(pvc, "name"),
            "uid": meta_str(pvc, "uid"),
            "apiVersion": "v1",
            "resourceVersion": pv.pointer("/spec/claimRef/resourceVersion").cloned().unwrap_or(json!(meta_str(pvc, "resourceVersion"))),
        });
        if pv.pointer("/spec/claimRef/uid").and_then(Value::as_str) != Some(meta_str(pvc, "uid")) {
            let mut next = pv.clone();
            next["spec"]["claimRef"] = claim_ref;
            if !provisioned {
                next["metadata"]["annotations"]["pv.kubernetes.io/bound-by-controller"] = json!("yes");
            }
            self.update(&Kind::Pv.gr(), &next, "", &who).await?;
            return Ok(());
        }
        if str_at(pv, "/status/phase") != "Bound" {
            let mut status = pv.get("status").cloned().unwrap_or(json!({}));
            status["phase"] = json!("Bound");
            if let Some(m) = status.as_object_mut() {
                m.remove("reason");
                m.remove("message");
            }
            self.put_status(Kind::Pv, pv, status, &who).await?;
            return Ok(());
        }
        let pv_name = meta_str(pv, "name");
        let mut next = pvc.clone();
        next["spec"]["volumeName"] = json!(pv_name);
        let ann = &mut next["metadata"]["annotations"];
        ann["pv.kubernetes.io/bind-completed"] = json!("yes");
        ann["pv.kubernetes.io/bound-by-controller"] = json!("yes");
        if let Some(p) = pv.pointer("/metadata/annotations/pv.kubernetes.io~1provisioned-by") {
            ann["volume.beta.kubernetes.io/storage-provisioner"] = p.clone();
            ann["volume.kubernetes.io/storage-provisioner"] = p.clone();
        }
        if next != *pvc {
            self.write_pvc_spec(&next).await?;
            return Ok(());
        }
        let mut status = pvc.get("status").cloned().unwrap_or(json!({}));
        status["phase"] = json!("Bound");
        status["accessModes"] = pv.pointer("/spec/accessModes").cloned().unwrap_or(json!([]));
        status["capacity"] = pv.pointer("/spec/capacity").cloned().unwrap_or(json!({}));
        self.put_status(Kind::Pvc, pvc, status, &who).await
    }

    /// Update a claim's spec and metadata as the binder does. PVC specs are immutable to
    /// clients except for what the binder sets; should validation refuse the binder's write,
    /// it is stored directly (the binder is part of the control plane).
    async fn write_pvc_spec(&mut self, next: &Value) -> ApiResult<()> {
        let who = Actor::controller(COMPONENT);
        match self.update(&Kind::Pvc.gr(), next, "", &who).await {
            Ok(_) => Ok(()),
            Err(e) if e.code == 422 => {
                let key = (
                    meta_str(next, "namespace").to_string(),
                    meta_str(next, "name").to_string(),
                );
                let rv = crate::store::rv_of(next);
                match self.api.store.update(&Kind::Pvc.gr(), next.clone(), rv) {
                    Ok(_) => Ok(()),
                    Err(WriteError::Stale) => Err(crate::status::ApiError::stale(
                        "",
                        "persistentvolumeclaims",
                        &key.1,
                    )),
                    Err(_) => Ok(()),
                }
            }
            Err(e) => Err(e),
        }
    }

    pub(super) async fn sync_pv(&mut self, name: &str) -> ApiResult<()> {
        let Some(pv) = self.get(Kind::Pv, "", name) else {
            return Ok(());
        };
        if is_deleting(&pv) {
            return Ok(());
        }
        let who = Actor::controller(COMPONENT);
        let Some(claim) = claim_ref(&pv) else {
            if matches!(str_at(&pv, "/status/phase"), "" | "Pending") {
                let mut status = pv.get("status").cloned().unwrap_or(json!({}));
                status["phase"] = json!("Available");
                return self.put_status(Kind::Pv, &pv, status, &who).await;
            }
            return Ok(());
        };
        let cns = str_at(claim, "/namespace");
        let cname = str_at(claim, "/name");
        let cuid = str_at(claim, "/uid");
        let pvc = self.get(Kind::Pvc, cns, cname);
        let gone = match &pvc {
            None => true,
            Some(c) => !cuid.is_empty() && meta_str(c, "uid") != cuid,
        };
        if gone && !cuid.is_empty() {
            // Released: the provisioner deletes volumes whose policy says Delete.
            if str_at(&pv, "/spec/persistentVolumeReclaimPolicy") == "Delete" {
                return self
                    .delete(
                        &Kind::Pv.gr(),
                        &pv,
                        json!({}),
                        &Actor::controller("simulated-provisioner"),
                    )
                    .await;
            }
            if str_at(&pv, "/status/phase") != "Released" {
                let mut status = pv.get("status").cloned().unwrap_or(json!({}));
                status["phase"] = json!("Released");
                return self.put_status(Kind::Pv, &pv, status, &who).await;
            }
            return Ok(());
        }
        if let Some(c) = pvc {
            // The claim's own sync completes the binding.
            self.enqueue_kind(Kind::Pvc, cns, meta_str(&c, "name"));
        }
        Ok(())
    }

    /// The PVC protection controller: a deleting claim keeps its `kubernetes.io/pvc-protection`
    /// finalizer while a Pod that is not finished uses it.
    async fn pvc_protection(&mut self, pvc: &Value) -> ApiResult<()> {
        const FINALIZER: &str = "kubernetes.io/pvc-protection";
        let fins = crate::meta::finalizers(pvc);
        if !fins.iter().any(|f| f == FINALIZER) {
            return Ok(());
        }
        let ns = meta_str(pvc, "namespace");
        let name = meta_str(pvc, "name");
        let in_use = self.list(Kind::Pod, Some(ns)).iter().any(|p| {
            !matches!(super::phase(p), "Succeeded" | "Failed")
                && p.pointer("/spec/volumes")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .any(|v| str_at(v, "/persistentVolumeClaim/claimName") == name)
        });
        if in_use {
            return Ok(());
        }
        let mut next = pvc.clone();
        let rest: Vec<String> = fins.into_iter().filter(|f| f != FINALIZER).collect();
        set_meta(
            &mut next,
            "finalizers",
            if rest.is_empty() { Value::Null } else { json!(rest) },
        );
        self.update(
            &Kind::Pvc.gr(),
            &next,
            "",
            &Actor::controller("pvc-protection-controller"),
        )
        .await
        .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_compare() {
        assert_eq!(quantity_bytes("1Gi"), Some(1024f64.powi(3)));
        assert!(quantity_bytes("500M").unwrap() < quantity_bytes("1Gi").unwrap());
        assert_eq!(quantity_bytes("x"), None);
    }

    #[test]
    fn static_volumes_fit_by_class_size_and_modes() {
        let pvc = json!({"metadata": {"name": "c", "namespace": "d"}, "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}});
        let pv = json!({"metadata": {"name": "v"}, "spec": {"storageClassName": "slow", "accessModes": ["ReadWriteOnce", "ReadOnlyMany"], "capacity": {"storage": "2Gi"}}});
        assert!(volume_fits(&pv, &pvc, "slow"));
        assert!(!volume_fits(&pv, &pvc, "fast"));
        let small = json!({"metadata": {"name": "v"}, "spec": {"storageClassName": "slow", "accessModes": ["ReadWriteOnce"], "capacity": {"storage": "500Mi"}}});
        assert!(!volume_fits(&small, &pvc, "slow"));
        let taken = json!({"metadata": {"name": "v"}, "spec": {"storageClassName": "slow", "accessModes": ["ReadWriteOnce"], "capacity": {"storage": "2Gi"}, "claimRef": {"name": "other", "namespace": "d"}}});
        assert!(!volume_fits(&taken, &pvc, "slow"));
    }
}
