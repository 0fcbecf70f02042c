//! Simulated Nodes, scheduler and kubelets: Nodes with a Ready condition and capacity, Pods bound
//! to a fitting Node (as the default scheduler's binding does), then started by the Node's
//! kubelet (Pending with `ContainerCreating`, then Running and Ready after the configured
//! delay), Job Pods that finish, graceful deletion finished by the kubelet, and the faults tests
//! set (crash loops, unready Pods, NotReady Nodes as the node lifecycle controller marks them).
//!
//! What only lives in memory here (when a Pod was first seen, when it started, crash back-off)
//! is rebuilt from the Pods after a restart: a Pending Pod then starts one delay later.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use super::{Actor, CondStyle, Key, Kind, Sim, controller_of, fnv32a, i64_at, is_deleting, phase, str_at};
use crate::api::Api;
use crate::meta::{self, meta_str};
use crate::selector::labels_of;
use crate::status::ApiResult;
use crate::store::WriteError;

/// The kubelets' and scheduler's memory, rebuilt from the store by [`KubeletState::rebuild`].
#[derive(Default)]
pub(crate) struct KubeletState {
    /// (namespace, name) → Node, for the Pods bound to one.
    node_of: HashMap<(String, String), String>,
    /// Node → its Pods.
    pods_by_node: HashMap<String, BTreeSet<(String, String)>>,
    /// Pods the scheduler found no Node for.
    unschedulable: BTreeSet<(String, String)>,
    /// Pod IPs in use: (node index, host byte).
    ips: HashMap<(String, String), (u8, u8)>,
    used_ips: HashMap<u8, BTreeSet<u8>>,
    /// When the kubelet first saw the Pod (its containers start one delay later).
    seen: HashMap<(String, String), Instant>,
    /// When a crash-looping Pod's containers restart next.
    crash_next: HashMap<(String, String), Instant>,
    /// When the kubelet first saw the Pod deleting.
    terminating: HashMap<(String, String), Instant>,
}

impl KubeletState {
    pub(crate) fn rebuild(&mut self, api: &Api) {
        let seen = std::mem::take(&mut self.seen);
        let crash = std::mem::take(&mut self.crash_next);
        let terminating = std::mem::take(&mut self.terminating);
        *self = KubeletState::default();
        for pod in api.store.list(&Kind::Pod.gr(), None).0 {
            let key = (
                meta_str(&pod, "namespace").to_string(),
                meta_str(&pod, "name").to_string(),
            );
            self.index(&key, &pod);
        }
        // Keep what is known about Pods still there.
        self.seen = seen
            .into_iter()
            .filter(|(k, _)| self.node_of.contains_key(k))
            .collect();
        self.crash_next = crash
            .into_iter()
            .filter(|(k, _)| self.node_of.contains_key(k))
            .collect();
        self.terminating = terminating
            .into_iter()
            .filter(|(k, _)| self.node_of.contains_key(k))
            .collect();
    }

    fn index(&mut self, key: &(String, String), pod: &Value) {
        self.forget(key, false);
        let node = str_at(pod, "/spec/nodeName");
        if node.is_empty() {
            return;
        }
        self.node_of.insert(key.clone(), node.to_string());
        self.pods_by_node
            .entry(node.to_string())
            .or_default()
            .insert(key.clone());
        if let Some((a, b)) = parse_pod_ip(str_at(pod, "/status/podIP")) {
            self.ips.insert(key.clone(), (a, b));
            self.used_ips.entry(a).or_default().insert(b);
        }
    }

    fn forget(&mut self, key: &(String, String), all: bool) {
        self.unschedulable.remove(key);
        if let Some(node) = self.node_of.remove(key)
            && let Some(set) = self.pods_by_node.get_mut(&node)
        {
            set.remove(key);
            if set.is_empty() {
                self.pods_by_node.remove(&node);
            }
        }
        if let Some((a, b)) = self.ips.remove(key)
            && let Some(set) = self.used_ips.get_mut(&a)
        {
            set.remove(&b);
        }
        if all {
            self.seen.remove(key);
            self.crash_next.remove(key);
            self.terminating.remove(key);
        }
    }

    pub(crate) fn pods_on(&self, node: &str) -> Vec<Key> {
        self.pods_by_node
            .get(node)
            .into_iter()
            .flatten()
            .map(|(ns, n)| (Kind::Pod, ns.clone(), n.clone()))
            .collect()
    }

    pub(crate) fn unschedulable(&self) -> Vec<Key> {
        self.unschedulable
            .iter()
            .map(|(ns, n)| (Kind::Pod, ns.clone(), n.clone()))
            .collect()
    }

    fn pod_count(&self, node: &str) -> usize {
        self.pods_by_node.get(node).map_or(0, BTreeSet::len)
    }

    fn allocate_ip(&mut self, key: &(String, String), node_index: u8) -> Option<(u8, u8)> {
        if let Some(ip) = self.ips.get(key) {
            return Some(*ip);
        }
        let used = self.used_ips.entry(node_index).or_default();
        let host = (2..=254u8).find(|h| !used.contains(h))?;
        used.insert(host);
        self.ips.insert(key.clone(), (node_index, host));
        Some((node_index, host))
    }
}

fn parse_pod_ip(ip: &str) -> Option<(u8, u8)> {
    let rest = ip.strip_prefix("10.244.")?;
    let (a, b) = rest.split_once('.')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// The Node's index in the simulated pod network (`10.244.<index>.0/24`).
fn node_index(node: &Value) -> Option<u8> {
    let cidr = str_at(node, "/spec/podCIDR");
    cidr.strip_prefix("10.244.")?.split('.').next()?.parse().ok()
}

/// A Node's InternalIP.
fn node_ip(node: &Value) -> String {
    node.pointer("/status/addresses")
        .and_then(Value::as_array)
        .and_then(|a| {
            a.iter()
                .find(|x| x.get("type").and_then(Value::as_str) == Some("InternalIP"))
        })
        .and_then(|x| x.get("address"))
        .and_then(Value::as_str)
        .unwrap_or("172.18.0.2")
        .to_string()
}

/// 64 hex digits derived from `seed`: container and image IDs that stay the same for the same
/// container.
fn hex64(seed: &str) -> String {
    (0u8..8)
        .map(|i| {
            let mut s = seed.as_bytes().to_vec();
            s.push(i);
            format!("{:08x}", fnv32a(&s))
        })
        .collect()
}

/// An image reference as the container runtime reports it (`nginx` → `docker.io/library/nginx:latest`).
fn normalize_image(image: &str) -> String {
    let (name, tag) = match image.rsplit_once('@') {
        Some(_) => (image.to_string(), String::new()),
        None => match image.rsplit_once(':') {
            Some((n, t)) if !t.contains('/') => (n.to_string(), format!(":{t}")),
            _ => (image.to_string(), ":latest".to_string()),
        },
    };
    let first = name.split('/').next().unwrap_or_default();
    let has_registry =
        name.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    let full = if has_registry {
        name
    } else if name.contains('/') {
        format!("docker.io/{name}")
    } else {
        format!("docker.io/library/{name}")
    };
    format!("{full}{tag}")
}

/// The Pod's QoS class, as the API server computes it.
fn qos_class(pod: &Value) -> &'static str {
    let containers: Vec<&Value> = ["containers", "initContainers"]
        .iter()
        .filter_map(|f| pod.pointer(&format!("/spec/{f}")).and_then(Value::as_array))
        .flatten()
        .collect();
    let mut any = false;
    let mut guaranteed = !containers.is_empty();
    for c in &containers {
        let req = c.pointer("/resources/requests").and_then(Value::as_object);
        let lim = c.pointer("/resources/limits").and_then(Value::as_object);
        for r in ["cpu", "memory"] {
            let rq = req.and_then(|m| m.get(r));
            let lm = lim.and_then(|m| m.get(r));
            if rq.is_some() || lm.is_some() {
                any = true;
            }
            // A limit alone defaults the request to it.
            if lm.is_none() || rq.is_some_and(|q| Some(q) != lm) {
                guaranteed = false;
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

fn node_ready(node: &Value) -> bool {
    super::condition(node, "Ready")
        .and_then(|c| c.get("status"))
        .and_then(Value::as_str)
        == Some("True")
}

/// Whether the Pod tolerates a taint.
fn tolerates(pod: &Value, taint: &Value) -> bool {
    let key = taint.get("key").and_then(Value::as_str).unwrap_or_default();
    let value = taint.get("value").and_then(Value::as_str).unwrap_or_default();
    let effect = taint.get("effect").and_then(Value::as_str).unwrap_or_default();
    pod.pointer("/spec/tolerations")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|t| {
            let tkey = t.get("key").and_then(Value::as_str).unwrap_or_default();
            let op = t.get("operator").and_then(Value::as_str).unwrap_or("Equal");
            let teffect = t.get("effect").and_then(Value::as_str).unwrap_or_default();
            (teffect.is_empty() || teffect == effect)
                && (tkey.is_empty() && op == "Exists"
                    || tkey == key
                        && (op == "Exists"
                            || t.get("value").and_then(Value::as_str).unwrap_or_default() == value))
        })
}

/// Whether a node selector term (`matchExpressions` on labels, `matchFields` on the name) holds.
fn term_matches(term: &Value, node: &Value) -> bool {
    let labels = labels_of(node);
    let expr_ok = |e: &Value, value_of: &dyn Fn(&str) -> Option<String>| {
        let key = e.get("key").and_then(Value::as_str).unwrap_or_default();
        let values: Vec<&str> = e
            .get("values")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let v = value_of(key);
        match e.get("operator").and_then(Value::as_str).unwrap_or_default() {
            "In" => v.is_some_and(|v| values.contains(&v.as_str())),
            "NotIn" => v.is_none_or(|v| !values.contains(&v.as_str())),
            "Exists" => v.is_some(),
            "DoesNotExist" => v.is_none(),
            "Gt" | "Lt" => {
                let (Some(v), Some(bound)) = (
                    v.and_then(|v| v.parse::<i64>().ok()),
                    values.first().and_then(|b| b.parse::<i64>().ok()),
                ) else {
                    return false;
                };
                if e.get("operator").and_then(Value::as_str) == Some("Gt") {
                    v > bound
                } else {
                    v < bound
                }
            }
            _ => false,
        }
    };
    let label_of = |k: &str| labels.get(k).cloned();
    let field_of = |k: &str| (k == "metadata.name").then(|| meta_str(node, "name").to_string());
    let exprs = term.get("matchExpressions").and_then(Value::as_array);
    let fields = term.get("matchFields").and_then(Value::as_array);
    if exprs.is_none_or(Vec::is_empty) && fields.is_none_or(Vec::is_empty) {
        // An empty term matches nothing.
        return false;
    }
    exprs.into_iter().flatten().all(|e| expr_ok(e, &label_of))
        && fields.into_iter().flatten().all(|e| expr_ok(e, &field_of))
}

/// Why the Node does not fit the Pod, as the scheduler's filter plugins word it; `None`: it fits.
fn unfit(
    pod: &Value,
    node: &Value,
    not_ready: bool,
    pods_on_node: usize,
    max_pods: usize,
) -> Option<&'static str> {
    if not_ready || !node_ready(node) {
        return Some("node(s) had untolerated taint {node.kubernetes.io/not-ready: }");
    }
    if node.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
        return Some("node(s) were unschedulable");
    }
    let labels = labels_of(node);
    if let Some(sel) = pod.pointer("/spec/nodeSelector").and_then(Value::as_object)
        && !sel
            .iter()
            .all(|(k, v)| labels.get(k).map(String::as_str) == v.as_str())
    {
        return Some("node(s) didn't match Pod's node affinity/selector");
    }
    if let Some(terms) = pod
        .pointer(
            "/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms",
        )
        .and_then(Value::as_array)
        && !terms.iter().any(|t| term_matches(t, node))
    {
        return Some("node(s) didn't match Pod's node affinity/selector");
    }
    let untolerated = node
        .pointer("/spec/taints")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|t| {
            matches!(
                t.get("effect").and_then(Value::as_str),
                Some("NoSchedule" | "NoExecute")
            )
        })
        .any(|t| !tolerates(pod, t));
    if untolerated {
        return Some("node(s) had untolerated taint(s)");
    }
    if pods_on_node >= max_pods {
        return Some("Too many pods");
    }
    None
}

/// A condition as the kubelet writes Pod conditions (`lastProbeTime: null`), keeping the old
/// transition time when the status is unchanged.
fn pod_condition(
    old: &Value,
    type_: &str,
    status: &str,
    reason: Option<&str>,
    message: Option<&str>,
) -> Value {
    let prev = super::condition(old, type_);
    let same = prev.and_then(|c| c.get("status")).and_then(Value::as_str) == Some(status);
    let ltt = prev
        .filter(|_| same)
        .and_then(|c| c.get("lastTransitionTime").cloned())
        .unwrap_or_else(|| json!(meta::now()));
    let mut c = json!({"type": type_, "status": status, "lastProbeTime": null, "lastTransitionTime": ltt});
    if let Some(r) = reason {
        c["reason"] = json!(r);
    }
    if let Some(m) = message {
        c["message"] = json!(m);
    }
    c
}

/// What the kubelet reports for a Pod's containers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    Creating,
    Running,
    Succeeded,
    Failed,
}

impl Sim {
    /// Create the Nodes and the default StorageClass (first start only).
    pub(super) async fn bootstrap(&mut self) {
        if super::served(&self.api, &Kind::Node.gr()) {
            for i in 0..self.cfg.nodes.min(100) {
                let name = format!("crwatch-node-{i}");
                let node = json!({
                    "metadata": {
                        "name": name,
                        "labels": {
                            "beta.kubernetes.io/arch": "amd64",
                            "beta.kubernetes.io/os": "linux",
                            "kubernetes.io/arch": "amd64",
                            "kubernetes.io/hostname": name,
                            "kubernetes.io/os": "linux",
                        },
                        "annotations": {
                            "node.alpha.kubernetes.io/ttl": "0",
                            "volumes.kubernetes.io/controller-managed-attach-detach": "true",
                        },
                    },
                    "spec": {
                        "podCIDR": format!("10.244.{i}.0/24"),
                        "podCIDRs": [format!("10.244.{i}.0/24")],
                        "providerID": format!("crwatch://{name}"),
                    },
                });
                if let Err(e) = self
                    .create(&Kind::Node.gr(), "", &node, &Actor::kubelet(&name))
                    .await
                    && e.code != 409
                {
                    tracing::warn!(node = %name, error = %e.message, "workload simulator: could not create a Node");
                }
            }
        }
        self.bootstrap_storage().await;
    }

    pub(super) async fn sync_node(&mut self, name: &str) -> ApiResult<()> {
        let Some(node) = self.get(Kind::Node, "", name) else {
            // The pod garbage collector deletes Pods bound to a Node that is gone.
            for key in self.kubelet.pods_on(name) {
                self.enqueue(key);
            }
            return Ok(());
        };
        let not_ready = self.fault_set.nodes_not_ready.contains(name);
        // The node IPAM controller gives a Node without one a pod CIDR.
        if node_index(&node).is_none() {
            let (nodes, _) = self.api.store.list(&Kind::Node.gr(), None);
            let taken: BTreeSet<u8> = nodes.iter().filter_map(|n| node_index(n)).collect();
            if let Some(i) = (0..=255u8).find(|i| !taken.contains(i)) {
                let mut next = (*node).clone();
                next["spec"]["podCIDR"] = json!(format!("10.244.{i}.0/24"));
                next["spec"]["podCIDRs"] = json!([format!("10.244.{i}.0/24")]);
                self.update(
                    &Kind::Node.gr(),
                    &next,
                    "",
                    &Actor::controller("node-ipam-controller"),
                )
                .await?;
                return Ok(());
            }
        }
        // The node lifecycle controller's taints for a Node that stopped reporting.
        let taints: Vec<Value> = node
            .pointer("/spec/taints")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let unreachable =
            |t: &Value| t.get("key").and_then(Value::as_str) == Some("node.kubernetes.io/unreachable");
        let mut want: Vec<Value> = taints.iter().filter(|t| !unreachable(t)).cloned().collect();
        if not_ready {
            want.push(json!({"key": "node.kubernetes.io/unreachable", "effect": "NoSchedule"}));
            let added = taints
                .iter()
                .find(|t| unreachable(t) && t.get("effect").and_then(Value::as_str) == Some("NoExecute"))
                .and_then(|t| t.get("timeAdded").cloned())
                .unwrap_or_else(|| json!(meta::now()));
            want.push(
                json!({"key": "node.kubernetes.io/unreachable", "effect": "NoExecute", "timeAdded": added}),
            );
        }
        if want != taints {
            let mut next = (*node).clone();
            next["spec"]["taints"] = if want.is_empty() { Value::Null } else { json!(want) };
            if want.is_empty()
                && let Some(spec) = next.get_mut("spec").and_then(Value::as_object_mut)
            {
                spec.remove("taints");
            }
            self.update(&Kind::Node.gr(), &next, "", &Actor::controller("node-controller"))
                .await?;
            return Ok(());
        }
        let status = self.node_status(&node, not_ready);
        let who = if not_ready {
            Actor::controller("node-controller")
        } else {
            Actor::kubelet(name)
        };
        self.put_status(Kind::Node, &node, status, &who).await
    }

    fn node_status(&self, node: &Value, not_ready: bool) -> Value {
        let old = node.get("status").cloned().unwrap_or(json!({}));
        let now = meta::now();
        let idx = node_index(node).unwrap_or(0);
        let name = meta_str(node, "name");
        let cond = |type_: &str, status: &str, reason: &str, message: &str| {
            let prev = super::condition(node, type_);
            let same = prev.and_then(|c| c.get("status")).and_then(Value::as_str) == Some(status);
            let keep = |f: &str| {
                prev.filter(|_| same)
                    .and_then(|c| c.get(f).cloned())
                    .unwrap_or(json!(now))
            };
            json!({
                "type": type_,
                "status": status,
                // No heartbeats: a Node whose status does not change is not rewritten.
                "lastHeartbeatTime": if not_ready { prev.and_then(|c| c.get("lastHeartbeatTime").cloned()).unwrap_or(json!(now)) } else { keep("lastHeartbeatTime") },
                "lastTransitionTime": keep("lastTransitionTime"),
                "reason": reason,
                "message": message,
            })
        };
        let conditions = if not_ready {
            let m = "Kubelet stopped posting node status.";
            vec![
                cond("MemoryPressure", "Unknown", "NodeStatusUnknown", m),
                cond("DiskPressure", "Unknown", "NodeStatusUnknown", m),
                cond("PIDPressure", "Unknown", "NodeStatusUnknown", m),
                cond("Ready", "Unknown", "NodeStatusUnknown", m),
            ]
        } else {
            vec![
                cond(
                    "MemoryPressure",
                    "False",
                    "KubeletHasSufficientMemory",
                    "kubelet has sufficient memory available",
                ),
                cond(
                    "DiskPressure",
                    "False",
                    "KubeletHasNoDiskPressure",
                    "kubelet has no disk pressure",
                ),
                cond(
                    "PIDPressure",
                    "False",
                    "KubeletHasSufficientPID",
                    "kubelet has sufficient PID available",
                ),
                cond("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
            ]
        };
        let capacity = old.get("capacity").cloned().unwrap_or_else(|| {
            json!({
                "cpu": "4",
                "ephemeral-storage": "102400Mi",
                "hugepages-1Gi": "0",
                "hugepages-2Mi": "0",
                "memory": "16Gi",
                "pods": self.cfg.max_pods_per_node.to_string(),
            })
        });
        let allocatable = old
            .get("allocatable")
            .cloned()
            .unwrap_or_else(|| capacity.clone());
        let mut status = old.clone();
        status["capacity"] = capacity;
        status["allocatable"] = allocatable;
        status["conditions"] = json!(conditions);
        if old
            .get("addresses")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty)
        {
            status["addresses"] = json!([
                {"type": "InternalIP", "address": format!("172.18.0.{}", u16::from(idx) % 250 + 2)},
                {"type": "Hostname", "address": name},
            ]);
        }
        // (The server may have filled an absent nodeInfo with empty strings.)
        if str_at(&old, "/nodeInfo/kubeletVersion").is_empty() {
            let id = hex64(name);
            status["nodeInfo"] = json!({
                "architecture": "amd64",
                "bootID": uuid_like(&id),
                "containerRuntimeVersion": "containerd://2.0.3",
                "kernelVersion": "6.8.0-crwatch",
                "kubeProxyVersion": "",
                "kubeletVersion": super::COMPONENT_VERSION,
                "machineID": &id[..32],
                "operatingSystem": "linux",
                "osImage": "crwatch simulated node",
                "systemUUID": uuid_like(&id[32..]),
            });
            status["daemonEndpoints"] = json!({"kubeletEndpoint": {"Port": 10250}});
        }
        status
    }

    pub(super) async fn sync_pod(&mut self, ns: &str, name: &str) -> ApiResult<()> {
        let key = (ns.to_string(), name.to_string());
        let Some(pod) = self.get(Kind::Pod, ns, name) else {
            self.kubelet.forget(&key, true);
            return Ok(());
        };
        self.kubelet.index(&key, &pod);
        let node_name = str_at(&pod, "/spec/nodeName").to_string();
        if node_name.is_empty() {
            if is_deleting(&pod) || matches!(phase(&pod), "Succeeded" | "Failed") {
                return Ok(());
            }
            return self.schedule(&key, &pod).await;
        }
        let Some(node) = self.get(Kind::Node, "", &node_name) else {
            // The pod garbage collector: a Pod bound to a Node that does not exist goes.
            return self
                .delete(
                    &Kind::Pod.gr(),
                    &pod,
                    json!({"gracePeriodSeconds": 0}),
                    &Actor::controller("pod-garbage-collector"),
                )
                .await;
        };
        let node_down = self.fault_set.nodes_not_ready.contains(&node_name);
        if node_down {
            // The kubelet is gone; the node lifecycle controller marks the Pod not Ready.
            if let Some(c) = super::condition(&pod, "Ready")
                && c.get("status").and_then(Value::as_str) == Some("True")
            {
                let mut status = pod.get("status").cloned().unwrap_or(json!({}));
                if let Some(conds) = status.get_mut("conditions").and_then(Value::as_array_mut) {
                    for c in conds.iter_mut() {
                        if c.get("type").and_then(Value::as_str) == Some("Ready") {
                            c["status"] = json!("False");
                            c["lastTransitionTime"] = json!(meta::now());
                        }
                    }
                }
                return self
                    .put_status(Kind::Pod, &pod, status, &Actor::controller("node-controller"))
                    .await;
            }
            return Ok(());
        }
        if is_deleting(&pod) {
            return self.kubelet_terminate(&key, &pod, &node_name).await;
        }
        if matches!(phase(&pod), "Succeeded" | "Failed") {
            return Ok(());
        }
        self.kubelet_run(&key, &pod, &node).await
    }

    /// The default scheduler: bind the Pod to the least busy Node that fits.
    async fn schedule(&mut self, key: &(String, String), pod: &Value) -> ApiResult<()> {
        let scheduler = str_at(pod, "/spec/schedulerName");
        if !scheduler.is_empty() && scheduler != "default-scheduler" {
            return Ok(());
        }
        // Claims must be bound first (the volume binding plugin; the provisioner binds them
        // at once, so this waits a moment at most).
        let mut unbound = false;
        for v in pod
            .pointer("/spec/volumes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(claim) = v
                .pointer("/persistentVolumeClaim/claimName")
                .and_then(Value::as_str)
            {
                let bound = self
                    .get(Kind::Pvc, &key.0, claim)
                    .is_some_and(|c| str_at(&c, "/status/phase") == "Bound");
                unbound |= !bound;
            }
        }
        let (nodes, _) = self.api.store.list(&Kind::Node.gr(), None);
        let max = self.cfg.max_pods_per_node as usize;
        let mut reasons: std::collections::BTreeMap<&str, usize> = Default::default();
        let mut best: Option<(usize, Arc<Value>)> = None;
        if unbound {
            reasons.insert("pod has unbound immediate PersistentVolumeClaims", nodes.len());
        } else {
            for n in &nodes {
                let nname = meta_str(n, "name");
                let count = self.kubelet.pod_count(nname);
                let max_here = n
                    .pointer("/status/allocatable/pods")
                    .and_then(Value::as_str)
                    .and_then(|p| p.parse::<usize>().ok())
                    .unwrap_or(max);
                match unfit(
                    pod,
                    n,
                    self.fault_set.nodes_not_ready.contains(nname),
                    count,
                    max_here,
                ) {
                    Some(r) => *reasons.entry(r).or_default() += 1,
                    None => {
                        if best.as_ref().is_none_or(|(c, _)| count < *c) {
                            best = Some((count, n.clone()));
                        }
                    }
                }
            }
        }
        let Some((_, node)) = best else {
            self.kubelet.unschedulable.insert(key.clone());
            let total = nodes.len();
            let detail: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
            let message = if total == 0 {
                "no nodes available to schedule pods".to_string()
            } else {
                format!(
                    "0/{total} nodes are available: {}. preemption: 0/{total} nodes are available: {total} Preemption is not helpful for scheduling.",
                    detail.join(", ")
                )
            };
            let mut status = pod.get("status").cloned().unwrap_or(json!({}));
            status["phase"] = json!("Pending");
            let mut conds = super::conditions_of(pod);
            super::set_condition(
                &mut conds,
                "PodScheduled",
                "False",
                Some("Unschedulable"),
                Some(&message),
                CondStyle::Probe,
            );
            status["conditions"] = json!(conds);
            return self.put_status(Kind::Pod, pod, status, &Actor::scheduler()).await;
        };
        self.kubelet.unschedulable.remove(key);
        let node_name = meta_str(&node, "name").to_string();
        self.bind_pod(key, &node_name)?;
        let message = format!("Successfully assigned {}/{} to {node_name}", key.0, key.1);
        let mut involved = pod.clone();
        involved["apiVersion"] = json!("v1");
        involved["kind"] = json!("Pod");
        self.event(&involved, "Normal", "Scheduled", &message, "default-scheduler")
            .await;
        Ok(())
    }

    /// The `pods/binding` write: `spec.nodeName` and `PodScheduled`, stored as the binding
    /// subresource stores them (no field manager: the binding is not an update of the Pod).
    fn bind_pod(&mut self, key: &(String, String), node: &str) -> ApiResult<()> {
        let g = Kind::Pod.gr();
        for _ in 0..8 {
            let Some(cur) = self.api.store.get(&g, key) else {
                return Ok(());
            };
            if !str_at(&cur, "/spec/nodeName").is_empty() || is_deleting(&cur) {
                return Ok(());
            }
            let mut next = (*cur).clone();
            next["spec"]["nodeName"] = json!(node);
            let mut conds = super::conditions_of(&cur);
            conds.retain(|c| c.get("type").and_then(Value::as_str) != Some("PodScheduled"));
            conds.push(json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": meta::now()}));
            next["status"]["conditions"] = json!(conds);
            let rv = crate::store::rv_of(&cur);
            match self.api.store.update(&g, next, rv) {
                Ok(stored) => {
                    self.kubelet.index(key, &stored);
                    return Ok(());
                }
                Err(WriteError::Stale) => continue,
                Err(_) => return Ok(()),
            }
        }
        Err(crate::status::ApiError::stale("", "pods", &key.1))
    }

    /// The kubelet stops a deleted Pod's containers and deletes it for good, once its grace
    /// period or the configured termination delay (whichever is shorter) has passed since it
    /// saw the deletion.
    async fn kubelet_terminate(&mut self, key: &(String, String), pod: &Value, node: &str) -> ApiResult<()> {
        let grace = i64_at(pod, "/metadata/deletionGracePeriodSeconds")
            .unwrap_or(0)
            .max(0) as u64;
        let delay = self.cfg.pod_termination_delay.min(Duration::from_secs(grace));
        let since = *self
            .kubelet
            .terminating
            .entry(key.clone())
            .or_insert_with(Instant::now);
        let wait = delay.saturating_sub(since.elapsed());
        if !wait.is_zero() {
            self.requeue_after((Kind::Pod, key.0.clone(), key.1.clone()), wait);
            return Ok(());
        }
        self.delete(
            &Kind::Pod.gr(),
            pod,
            json!({"gracePeriodSeconds": 0}),
            &Actor::kubelet(node),
        )
        .await
    }

    /// The kubelet runs the Pod: containers created, started, Ready (or what faults say).
    async fn kubelet_run(&mut self, key: &(String, String), pod: &Value, node: &Value) -> ApiResult<()> {
        let node_name = meta_str(node, "name").to_string();
        let pod_key: Key = (Kind::Pod, key.0.clone(), key.1.clone());
        let now = Instant::now();
        let seen = *self.kubelet.seen.entry(key.clone()).or_insert(now);
        let already_running = phase(pod) == "Running";
        let delay = self.cfg.pod_ready_delay;
        let mut stage = if already_running || now.duration_since(seen) >= delay {
            Stage::Running
        } else {
            self.requeue_at(pod_key.clone(), seen + delay);
            Stage::Creating
        };
        // Job Pods (and other run-to-completion Pods of a Job) finish after their run time.
        let job = controller_of(pod)
            .filter(|(k, _)| *k == Kind::Job)
            .map(|(_, n)| n);
        let restart_always = matches!(str_at(pod, "/spec/restartPolicy"), "" | "Always");
        if stage == Stage::Running
            && let Some(job) = &job
            && !restart_always
        {
            let started = self.running_since(pod).unwrap_or(now);
            let ends = started + self.cfg.job_pod_duration;
            if already_running && now >= ends {
                stage = if self.faults.take_job_failure(&key.0, job) {
                    Stage::Failed
                } else {
                    Stage::Succeeded
                };
            } else {
                self.requeue_at(pod_key.clone(), ends.max(now + Duration::from_millis(1)));
            }
        }
        // Crash loops: restart with the kubelet's back-off (10 s doubling to 5 min).
        let crashing = self.fault_set.crash_looping.contains(key) && stage == Stage::Running;
        let mut restarts = max_restarts(pod);
        if crashing {
            let due = self.kubelet.crash_next.get(key).is_none_or(|t| now >= *t);
            if due {
                restarts += 1;
                let backoff =
                    Duration::from_secs(10u64.saturating_mul(1 << (restarts - 1).clamp(0, 5)).min(300));
                self.kubelet.crash_next.insert(key.clone(), now + backoff);
                self.requeue_at(pod_key.clone(), now + backoff);
            }
        } else {
            self.kubelet.crash_next.remove(key);
        }
        let unready = self.fault_set.unready.contains(key) || crashing;
        let node_idx = node_index(node).unwrap_or(0);
        let host_network = pod.pointer("/spec/hostNetwork").and_then(Value::as_bool) == Some(true);
        let host_ip = node_ip(node);
        let pod_ip = if host_network {
            Some(host_ip.clone())
        } else {
            self.kubelet
                .allocate_ip(key, node_idx)
                .map(|(a, b)| format!("10.244.{a}.{b}"))
        };
        let status = self.pod_status(
            pod,
            stage,
            unready,
            crashing,
            restarts,
            &host_ip,
            pod_ip.as_deref(),
        );
        if stage == Stage::Running && !already_running {
            self.kubelet.seen.insert(key.clone(), seen);
        }
        self.put_status(Kind::Pod, pod, status, &Actor::kubelet(&node_name))
            .await
    }

    /// When the Pod's containers started (the kubelet's own record, else the status's).
    fn running_since(&self, pod: &Value) -> Option<Instant> {
        let started = pod
            .pointer("/status/containerStatuses/0/state/running/startedAt")
            .and_then(Value::as_str)?;
        let t = chrono::DateTime::parse_from_rfc3339(started).ok()?;
        let ago = (chrono::Utc::now() - t.with_timezone(&chrono::Utc))
            .to_std()
            .unwrap_or_default();
        Instant::now().checked_sub(ago)
    }

    #[allow(clippy::too_many_arguments)]
    fn pod_status(
        &self,
        pod: &Value,
        stage: Stage,
        unready: bool,
        crashing: bool,
        restarts: i64,
        host_ip: &str,
        pod_ip: Option<&str>,
    ) -> Value {
        let old = pod.get("status").cloned().unwrap_or(json!({}));
        let now = meta::now();
        let uid = meta_str(pod, "uid");
        let containers: Vec<Value> = pod
            .pointer("/spec/containers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let names: Vec<String> = containers
            .iter()
            .map(|c| {
                c.get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            })
            .collect();
        let old_statuses = old
            .get("containerStatuses")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let old_of = |n: &str| {
            old_statuses
                .iter()
                .find(|s| s.get("name").and_then(Value::as_str) == Some(n))
                .cloned()
        };
        let mut statuses = vec![];
        for (c, n) in containers.iter().zip(&names) {
            let image = c.get("image").and_then(Value::as_str).unwrap_or_default();
            let normalized = normalize_image(image);
            let prev = old_of(n);
            let prev_started = prev
                .as_ref()
                .and_then(|p| p.pointer("/state/running/startedAt").cloned());
            let container_id = format!("containerd://{}", hex64(&format!("{uid}/{n}/{restarts}")));
            let image_id = format!(
                "{}@sha256:{}",
                normalized
                    .rsplit_once(':')
                    .map_or(normalized.as_str(), |(a, _)| a),
                hex64(&normalized)
            );
            let mut s = json!({
                "name": n,
                "image": normalized,
                "imageID": image_id,
                "restartCount": restarts,
                "lastState": {},
            });
            match stage {
                Stage::Creating => {
                    s["imageID"] = json!("");
                    s["ready"] = json!(false);
                    s["started"] = json!(false);
                    s["state"] = json!({"waiting": {"reason": "ContainerCreating"}});
                }
                Stage::Running if crashing => {
                    s["containerID"] = json!(container_id);
                    s["ready"] = json!(false);
                    s["started"] = json!(false);
                    let pod_desc = format!("{}_{}({uid})", meta_str(pod, "name"), meta_str(pod, "namespace"));
                    let backoff = 10u64.saturating_mul(1 << (restarts - 1).clamp(0, 5)).min(300);
                    s["state"] = json!({"waiting": {"reason": "CrashLoopBackOff", "message": format!("back-off {} restarting failed container={n} pod={pod_desc}", fmt_backoff(backoff))}});
                    let prev_term = prev
                        .as_ref()
                        .and_then(|p| p.pointer("/lastState/terminated"))
                        .filter(|_| {
                            prev.as_ref()
                                .and_then(|p| p.get("restartCount"))
                                .and_then(Value::as_i64)
                                == Some(restarts)
                        })
                        .cloned();
                    s["lastState"] = json!({"terminated": prev_term.unwrap_or_else(|| json!({
                        "exitCode": 1,
                        "reason": "Error",
                        "startedAt": now,
                        "finishedAt": now,
                        "containerID": container_id,
                    }))});
                }
                Stage::Running => {
                    s["containerID"] = json!(container_id);
                    s["ready"] = json!(!unready);
                    s["started"] = json!(true);
                    s["state"] =
                        json!({"running": {"startedAt": prev_started.unwrap_or_else(|| json!(now))}});
                    if restarts > 0
                        && let Some(p) = &prev
                        && let Some(t) = p.pointer("/lastState/terminated")
                    {
                        s["lastState"] = json!({"terminated": t});
                    }
                }
                Stage::Succeeded | Stage::Failed => {
                    let ok = stage == Stage::Succeeded;
                    s["containerID"] = json!(container_id);
                    s["ready"] = json!(false);
                    s["started"] = json!(false);
                    s["state"] = json!({"terminated": {
                        "exitCode": if ok { 0 } else { 1 },
                        "reason": if ok { "Completed" } else { "Error" },
                        "startedAt": prev_started.unwrap_or_else(|| json!(now)),
                        "finishedAt": now,
                        "containerID": container_id,
                    }});
                }
            }
            statuses.push(s);
        }
        let init_statuses: Vec<Value> = pod
            .pointer("/spec/initContainers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|c| {
                let n = c.get("name").and_then(Value::as_str).unwrap_or_default();
                let image = normalize_image(c.get("image").and_then(Value::as_str).unwrap_or_default());
                let id = format!("containerd://{}", hex64(&format!("{uid}/init/{n}")));
                let sidecar = c.get("restartPolicy").and_then(Value::as_str) == Some("Always");
                let state = if stage == Stage::Creating {
                    json!({"waiting": {"reason": "PodInitializing"}})
                } else if sidecar {
                    json!({"running": {"startedAt": now}})
                } else {
                    json!({"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": now, "finishedAt": now, "containerID": id}})
                };
                let prev_state = old
                    .get("initContainerStatuses")
                    .and_then(Value::as_array)
                    .and_then(|a| a.iter().find(|s| s.get("name").and_then(Value::as_str) == Some(n)))
                    .and_then(|s| s.get("state").cloned())
                    .filter(|s| {
                        // Keep the recorded times while the state is the same sort.
                        s.as_object().and_then(|m| m.keys().next().cloned()) == state.as_object().and_then(|m| m.keys().next().cloned())
                    });
                json!({
                    "name": n,
                    "image": image,
                    "imageID": if stage == Stage::Creating { String::new() } else { format!("{image}@sha256:{}", hex64(&image)) },
                    "containerID": id,
                    "ready": stage != Stage::Creating && !sidecar || sidecar && stage == Stage::Running,
                    "started": sidecar && stage == Stage::Running,
                    "restartCount": 0,
                    "lastState": {},
                    "state": prev_state.unwrap_or(state),
                })
            })
            .collect();
        let unready_names: Vec<&str> = statuses
            .iter()
            .filter(|s| s.get("ready").and_then(Value::as_bool) != Some(true))
            .filter_map(|s| s.get("name").and_then(Value::as_str))
            .collect();
        let not_ready_msg = format!("containers with unready status: [{}]", unready_names.join(" "));
        let (ready, ready_reason, ready_msg) = match stage {
            Stage::Succeeded => ("False", Some("PodCompleted"), None),
            Stage::Failed => ("False", Some("PodFailed"), None),
            _ if unready_names.is_empty() && !containers.is_empty() => ("True", None, None),
            _ => ("False", Some("ContainersNotReady"), Some(not_ready_msg.as_str())),
        };
        // The sandbox is up only while the Pod runs.
        let sandbox = if stage == Stage::Running { "True" } else { "False" };
        let scheduled = pod_condition(pod, "PodScheduled", "True", None, None);
        let conditions = vec![
            pod_condition(pod, "PodReadyToStartContainers", sandbox, None, None),
            pod_condition(pod, "Initialized", "True", None, None),
            pod_condition(pod, "Ready", ready, ready_reason, ready_msg),
            pod_condition(pod, "ContainersReady", ready, ready_reason, ready_msg),
            scheduled,
        ];
        let mut status = json!({
            "phase": match stage {
                Stage::Creating => "Pending",
                Stage::Running => "Running",
                Stage::Succeeded => "Succeeded",
                Stage::Failed => "Failed",
            },
            "conditions": conditions,
            "hostIP": host_ip,
            "hostIPs": [{"ip": host_ip}],
            "startTime": old.get("startTime").cloned().unwrap_or(json!(now)),
            "containerStatuses": statuses,
            "qosClass": old.get("qosClass").cloned().unwrap_or(json!(qos_class(pod))),
        });
        if !init_statuses.is_empty() {
            status["initContainerStatuses"] = json!(init_statuses);
        }
        if let Some(ip) = pod_ip
            && stage != Stage::Creating
        {
            status["podIP"] = json!(ip);
            status["podIPs"] = json!([{"ip": ip}]);
        }
        // Keep what others wrote into the status (nominatedNodeName, resize, ...).
        if let (Some(o), Some(n)) = (old.as_object(), status.as_object_mut()) {
            for (k, v) in o {
                if !n.contains_key(k)
                    && !matches!(
                        k.as_str(),
                        "podIP" | "podIPs" | "initContainerStatuses" | "reason" | "message"
                    )
                {
                    n.insert(k.clone(), v.clone());
                }
            }
        }
        status
    }
}

/// How the kubelet words a back-off (`10s`, `1m20s`, `5m0s`).
fn fmt_backoff(secs: u64) -> String {
    if secs < 60 {
        format!("{secs}s")
    } else {
        format!("{}m{}s", secs / 60, secs % 60)
    }
}

fn max_restarts(pod: &Value) -> i64 {
    pod.pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|s| s.get("restartCount").and_then(Value::as_i64))
        .max()
        .unwrap_or(0)
}

fn uuid_like(hex: &str) -> String {
    let h: String = hex.chars().chain(std::iter::repeat('0')).take(32).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_reported_as_the_runtime_names_them() {
        assert_eq!(normalize_image("nginx"), "docker.io/library/nginx:latest");
        assert_eq!(normalize_image("nginx:1.27"), "docker.io/library/nginx:1.27");
        assert_eq!(normalize_image("bitnami/redis:7"), "docker.io/bitnami/redis:7");
        assert_eq!(
            normalize_image("registry.k8s.io/pause:3.10"),
            "registry.k8s.io/pause:3.10"
        );
        assert_eq!(normalize_image("localhost:5000/app"), "localhost:5000/app:latest");
    }

    #[test]
    fn qos_classes() {
        let best = json!({"spec": {"containers": [{"name": "a"}]}});
        assert_eq!(qos_class(&best), "BestEffort");
        let g = json!({"spec": {"containers": [{"name": "a", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]}});
        assert_eq!(qos_class(&g), "Guaranteed");
        let b = json!({"spec": {"containers": [{"name": "a", "resources": {"requests": {"cpu": "1"}}}]}});
        assert_eq!(qos_class(&b), "Burstable");
    }

    #[test]
    fn scheduling_filters() {
        let node = json!({"metadata": {"name": "n0", "labels": {"disk": "ssd"}}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}});
        let pod = json!({"spec": {"nodeSelector": {"disk": "ssd"}}});
        assert_eq!(unfit(&pod, &node, false, 0, 110), None);
        let pod = json!({"spec": {"nodeSelector": {"disk": "hdd"}}});
        assert!(unfit(&pod, &node, false, 0, 110).is_some());
        let ds = json!({"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}]}}}}});
        assert!(unfit(&ds, &node, false, 0, 110).is_some());
        assert_eq!(unfit(&json!({}), &node, false, 110, 110), Some("Too many pods"));
        assert!(unfit(&json!({}), &node, true, 0, 110).is_some());
        let tainted = json!({"metadata": {"name": "n0"}, "spec": {"taints": [{"key": "k", "effect": "NoSchedule"}]}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}});
        assert!(unfit(&json!({}), &tainted, false, 0, 110).is_some());
        let tolerant = json!({"spec": {"tolerations": [{"operator": "Exists"}]}});
        assert_eq!(unfit(&tolerant, &tainted, false, 0, 110), None);
    }

    #[test]
    fn back_off_wording() {
        assert_eq!(fmt_backoff(10), "10s");
        assert_eq!(fmt_backoff(80), "1m20s");
        assert_eq!(fmt_backoff(300), "5m0s");
    }
}
