//! Table columns (`kubectl get`) of the kinds the workload simulator brings to life, as the
//! real server's printers (pkg/printers/internalversion) print them: Pods with READY, STATUS
//! and RESTARTS, Nodes with their Ready status, StatefulSets, ReplicaSets, DaemonSets, Jobs,
//! CronJobs, Services, PVCs, PVs and StorageClasses. `crate::table` asks here for the kinds it
//! has no columns of.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::registry::{PrinterColumn, ResourceDef};
use crate::table::human_duration;

type Cells = fn(&Value) -> Vec<Value>;

fn col(name: &str, priority: i64) -> PrinterColumn {
    PrinterColumn {
        name: name.into(),
        type_: "string".into(),
        format: if name == "Name" { "name" } else { "" }.into(),
        description: String::new(),
        priority,
        json_path: String::new(),
    }
}

fn cols(names: &[(&str, i64)]) -> Vec<PrinterColumn> {
    names.iter().map(|(n, p)| col(n, *p)).collect()
}

fn s(o: &Value, p: &str) -> String {
    o.pointer(p)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn n(o: &Value, p: &str) -> i64 {
    o.pointer(p).and_then(Value::as_i64).unwrap_or(0)
}

fn since(ts: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(ts)
        .ok()
        .map(|t| (Utc::now() - t.with_timezone(&Utc)).num_seconds())
}

fn age(o: &Value) -> Value {
    match since(&s(o, "/metadata/creationTimestamp")) {
        Some(secs) => json!(human_duration(secs)),
        None => json!("<unknown>"),
    }
}

fn or_none(v: String) -> String {
    if v.is_empty() { "<none>".into() } else { v }
}

fn containers_images(o: &Value, pointer: &str) -> (String, String) {
    let cs = o
        .pointer(pointer)
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    (
        cs.iter().map(|c| s(c, "/name")).collect::<Vec<_>>().join(","),
        cs.iter().map(|c| s(c, "/image")).collect::<Vec<_>>().join(","),
    )
}

fn selector(o: &Value) -> String {
    crate::selector::match_labels_string(o, "/spec/selector/matchLabels").unwrap_or_else(|| "<none>".into())
}

/// `printPod`'s STATUS column.
fn pod_status(o: &Value) -> String {
    let mut reason = match s(o, "/status/reason") {
        r if !r.is_empty() => r,
        _ => s(o, "/status/phase"),
    };
    let mut initializing = false;
    let inits = o
        .pointer("/status/initContainerStatuses")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let init_total = o
        .pointer("/spec/initContainers")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    for (i, c) in inits.iter().enumerate() {
        let term = c.pointer("/state/terminated");
        if term.is_some_and(|t| n(t, "/exitCode") == 0) {
            continue;
        }
        if c.pointer("/state/running").is_some() && c.get("started") == Some(&json!(true)) {
            continue;
        }
        initializing = true;
        reason = if let Some(t) = term {
            match s(t, "/reason") {
                r if r.is_empty() => format!("Init:ExitCode:{}", n(t, "/exitCode")),
                r => format!("Init:{r}"),
            }
        } else {
            match s(c, "/state/waiting/reason") {
                r if !r.is_empty() && r != "PodInitializing" => format!("Init:{r}"),
                _ => format!("Init:{i}/{init_total}"),
            }
        };
        break;
    }
    if !initializing {
        let mut has_running = false;
        let cs = o
            .pointer("/status/containerStatuses")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for c in cs.iter().rev() {
            let w = s(c, "/state/waiting/reason");
            if !w.is_empty() {
                reason = w;
            } else if let Some(t) = c.pointer("/state/terminated") {
                reason = match s(t, "/reason") {
                    r if !r.is_empty() => r,
                    _ if n(t, "/signal") != 0 => format!("Signal:{}", n(t, "/signal")),
                    _ => format!("ExitCode:{}", n(t, "/exitCode")),
                };
            } else if c.get("ready") == Some(&json!(true)) && c.pointer("/state/running").is_some() {
                has_running = true;
            }
        }
        if reason == "Completed" && has_running {
            let ready = o
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .is_some_and(|a| a.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"));
            reason = if ready { "Running" } else { "NotReady" }.into();
        }
    }
    if o.pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null())
    {
        reason = if s(o, "/status/reason") == "NodeLost" {
            "Unknown"
        } else {
            "Terminating"
        }
        .into();
    }
    reason
}

fn pod_cells(o: &Value) -> Vec<Value> {
    let total = o
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let cs = o
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let ready = cs.iter().filter(|c| c.get("ready") == Some(&json!(true))).count();
    let restarts: i64 = cs.iter().map(|c| n(c, "/restartCount")).sum();
    let last = cs
        .iter()
        .filter_map(|c| {
            c.pointer("/lastState/terminated/finishedAt")
                .and_then(Value::as_str)
        })
        .filter_map(since)
        .min();
    let restarts = match last {
        Some(secs) if restarts > 0 => format!("{restarts} ({} ago)", human_duration(secs)),
        _ => restarts.to_string(),
    };
    let gates = o
        .pointer("/spec/readinessGates")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let gates = if gates.is_empty() {
        "<none>".to_string()
    } else {
        let conds = o
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let true_count = gates
            .iter()
            .filter(|g| {
                conds
                    .iter()
                    .any(|c| c["type"] == g["conditionType"] && c["status"] == "True")
            })
            .count();
        format!("{true_count}/{}", gates.len())
    };
    vec![
        json!(format!("{ready}/{total}")),
        json!(pod_status(o)),
        json!(restarts),
        age(o),
        json!(or_none(s(o, "/status/podIP"))),
        json!(or_none(s(o, "/spec/nodeName"))),
        json!(or_none(s(o, "/status/nominatedNodeName"))),
        json!(gates),
    ]
}

fn node_cells(o: &Value) -> Vec<Value> {
    let ready = o
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().find(|c| c["type"] == "Ready"))
        .and_then(|c| c["status"].as_str().map(String::from));
    let mut status = match ready.as_deref() {
        Some("True") => "Ready".to_string(),
        Some(_) => "NotReady".to_string(),
        None => "Unknown".to_string(),
    };
    if o.pointer("/spec/unschedulable") == Some(&json!(true)) {
        status.push_str(",SchedulingDisabled");
    }
    let mut roles: Vec<String> = o
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.keys()
                .filter_map(|k| k.strip_prefix("node-role.kubernetes.io/").map(String::from))
                .filter(|r| !r.is_empty())
                .collect()
        })
        .unwrap_or_default();
    roles.sort();
    let addr = |t: &str| {
        o.pointer("/status/addresses")
            .and_then(Value::as_array)
            .and_then(|a| a.iter().find(|x| x["type"] == t))
            .map(|x| s(x, "/address"))
            .unwrap_or_default()
    };
    vec![
        json!(status),
        json!(if roles.is_empty() {
            "<none>".into()
        } else {
            roles.join(",")
        }),
        age(o),
        json!(s(o, "/status/nodeInfo/kubeletVersion")),
        json!(or_none(addr("InternalIP"))),
        json!(or_none(addr("ExternalIP"))),
        json!(s(o, "/status/nodeInfo/osImage")),
        json!(s(o, "/status/nodeInfo/kernelVersion")),
        json!(s(o, "/status/nodeInfo/containerRuntimeVersion")),
    ]
}

fn access_modes(o: &Value, p: &str) -> String {
    let modes: Vec<String> = o
        .pointer(p)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|m| match m {
            "ReadWriteOnce" => "RWO".to_string(),
            "ReadOnlyMany" => "ROX".to_string(),
            "ReadWriteMany" => "RWX".to_string(),
            "ReadWriteOncePod" => "RWOP".to_string(),
            other => other.to_string(),
        })
        .collect();
    modes.join(",")
}

fn job_cells(o: &Value) -> Vec<Value> {
    let conds = o
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let has = |t: &str| conds.iter().any(|c| c["type"] == t && c["status"] == "True");
    let status = if has("Failed") {
        "Failed"
    } else if has("Complete") {
        "Complete"
    } else if has("Suspended") {
        "Suspended"
    } else if has("FailureTarget") {
        "FailureTarget"
    } else if has("SuccessCriteriaMet") {
        "SuccessCriteriaMet"
    } else if o
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null())
    {
        "Terminating"
    } else {
        "Running"
    };
    let completions = match o.pointer("/spec/completions").and_then(Value::as_i64) {
        Some(c) => format!("{}/{c}", n(o, "/status/succeeded")),
        None => {
            let p = o
                .pointer("/spec/parallelism")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            if p > 1 {
                format!("{}/1 of {p}", n(o, "/status/succeeded"))
            } else {
                format!("{}/1", n(o, "/status/succeeded"))
            }
        }
    };
    let start = s(o, "/status/startTime");
    let duration = match (
        since(&start),
        o.pointer("/status/completionTime").and_then(Value::as_str),
    ) {
        (Some(started), Some(done)) => since(done)
            .map(|d| human_duration(started - d))
            .unwrap_or_default(),
        (Some(started), None) => human_duration(started),
        _ => String::new(),
    };
    let (c, i) = containers_images(o, "/spec/template/spec/containers");
    vec![
        json!(status),
        json!(completions),
        json!(duration),
        age(o),
        json!(c),
        json!(i),
        json!(selector(o)),
    ]
}

/// The columns of `def`'s kind, if this module prints it.
pub(crate) fn columns(def: &ResourceDef) -> Option<(Vec<PrinterColumn>, Cells)> {
    Some(match (def.group.as_str(), def.kind.as_str()) {
        ("", "Pod") => (
            cols(&[
                ("Name", 0),
                ("Ready", 0),
                ("Status", 0),
                ("Restarts", 0),
                ("Age", 0),
                ("IP", 1),
                ("Node", 1),
                ("Nominated Node", 1),
                ("Readiness Gates", 1),
            ]),
            pod_cells,
        ),
        ("", "Node") => (
            cols(&[
                ("Name", 0),
                ("Status", 0),
                ("Roles", 0),
                ("Age", 0),
                ("Version", 0),
                ("Internal-IP", 1),
                ("External-IP", 1),
                ("OS-Image", 1),
                ("Kernel-Version", 1),
                ("Container-Runtime", 1),
            ]),
            node_cells,
        ),
        ("apps", "StatefulSet") => (
            cols(&[
                ("Name", 0),
                ("Ready", 0),
                ("Age", 0),
                ("Containers", 1),
                ("Images", 1),
            ]),
            |o| {
                let (c, i) = containers_images(o, "/spec/template/spec/containers");
                vec![
                    json!(format!(
                        "{}/{}",
                        n(o, "/status/readyReplicas"),
                        o.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1)
                    )),
                    age(o),
                    json!(c),
                    json!(i),
                ]
            },
        ),
        ("apps", "ReplicaSet") => (
            cols(&[
                ("Name", 0),
                ("Desired", 0),
                ("Current", 0),
                ("Ready", 0),
                ("Age", 0),
                ("Containers", 1),
                ("Images", 1),
                ("Selector", 1),
            ]),
            |o| {
                let (c, i) = containers_images(o, "/spec/template/spec/containers");
                vec![
                    json!(o.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1)),
                    json!(n(o, "/status/replicas")),
                    json!(n(o, "/status/readyReplicas")),
                    age(o),
                    json!(c),
                    json!(i),
                    json!(selector(o)),
                ]
            },
        ),
        ("apps", "DaemonSet") => (
            cols(&[
                ("Name", 0),
                ("Desired", 0),
                ("Current", 0),
                ("Ready", 0),
                ("Up-to-date", 0),
                ("Available", 0),
                ("Node Selector", 0),
                ("Age", 0),
                ("Containers", 1),
                ("Images", 1),
                ("Selector", 1),
            ]),
            |o| {
                let (c, i) = containers_images(o, "/spec/template/spec/containers");
                let ns = crate::selector::match_labels_string(o, "/spec/template/spec/nodeSelector")
                    .unwrap_or_else(|| "<none>".into());
                vec![
                    json!(n(o, "/status/desiredNumberScheduled")),
                    json!(n(o, "/status/currentNumberScheduled")),
                    json!(n(o, "/status/numberReady")),
                    json!(n(o, "/status/updatedNumberScheduled")),
                    json!(n(o, "/status/numberAvailable")),
                    json!(ns),
                    age(o),
                    json!(c),
                    json!(i),
                    json!(selector(o)),
                ]
            },
        ),
        ("batch", "Job") => (
            cols(&[
                ("Name", 0),
                ("Status", 0),
                ("Completions", 0),
                ("Duration", 0),
                ("Age", 0),
                ("Containers", 1),
                ("Images", 1),
                ("Selector", 1),
            ]),
            job_cells,
        ),
        ("batch", "CronJob") => (
            cols(&[
                ("Name", 0),
                ("Schedule", 0),
                ("Timezone", 0),
                ("Suspend", 0),
                ("Active", 0),
                ("Last Schedule", 0),
                ("Age", 0),
                ("Containers", 1),
                ("Images", 1),
                ("Selector", 1),
            ]),
            |o| {
                let (c, i) = containers_images(o, "/spec/jobTemplate/spec/template/spec/containers");
                let last = match since(&s(o, "/status/lastScheduleTime")) {
                    Some(secs) => human_duration(secs),
                    None => "<none>".into(),
                };
                vec![
                    json!(s(o, "/spec/schedule")),
                    json!(or_none(s(o, "/spec/timeZone"))),
                    json!(
                        o.pointer("/spec/suspend")
                            .and_then(Value::as_bool)
                            .unwrap_or(false)
                            .to_string()
                            .replace("true", "True")
                            .replace("false", "False")
                    ),
                    json!(
                        o.pointer("/status/active")
                            .and_then(Value::as_array)
                            .map_or(0, Vec::len)
                    ),
                    json!(last),
                    age(o),
                    json!(c),
                    json!(i),
                    json!(
                        crate::selector::match_labels_string(
                            o,
                            "/spec/jobTemplate/spec/selector/matchLabels"
                        )
                        .unwrap_or_else(|| "<none>".into())
                    ),
                ]
            },
        ),
        ("", "Service") => (
            cols(&[
                ("Name", 0),
                ("Type", 0),
                ("Cluster-IP", 0),
                ("External-IP", 0),
                ("Port(s)", 0),
                ("Age", 0),
                ("Selector", 1),
            ]),
            |o| {
                let ty = match s(o, "/spec/type") {
                    t if t.is_empty() => "ClusterIP".to_string(),
                    t => t,
                };
                let ports: Vec<String> = o
                    .pointer("/spec/ports")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .map(|p| {
                        let proto = match s(p, "/protocol") {
                            x if x.is_empty() => "TCP".to_string(),
                            x => x,
                        };
                        match p.get("nodePort").and_then(Value::as_i64) {
                            Some(np) if np > 0 => format!("{}:{np}/{proto}", n(p, "/port")),
                            _ => format!("{}/{proto}", n(p, "/port")),
                        }
                    })
                    .collect();
                let external = match ty.as_str() {
                    "ExternalName" => s(o, "/spec/externalName"),
                    "LoadBalancer" => {
                        let ing: Vec<String> = o
                            .pointer("/status/loadBalancer/ingress")
                            .and_then(Value::as_array)
                            .into_iter()
                            .flatten()
                            .map(|i| {
                                if s(i, "/ip").is_empty() {
                                    s(i, "/hostname")
                                } else {
                                    s(i, "/ip")
                                }
                            })
                            .collect();
                        if ing.is_empty() {
                            "<pending>".into()
                        } else {
                            ing.join(",")
                        }
                    }
                    _ => o
                        .pointer("/spec/externalIPs")
                        .and_then(Value::as_array)
                        .map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(","))
                        .filter(|x| !x.is_empty())
                        .unwrap_or_else(|| "<none>".into()),
                };
                vec![
                    json!(ty),
                    json!(or_none(s(o, "/spec/clusterIP"))),
                    json!(external),
                    json!(if ports.is_empty() {
                        "<none>".into()
                    } else {
                        ports.join(",")
                    }),
                    age(o),
                    json!(
                        crate::selector::match_labels_string(o, "/spec/selector")
                            .unwrap_or_else(|| "<none>".into())
                    ),
                ]
            },
        ),
        ("", "PersistentVolumeClaim") => (
            cols(&[
                ("Name", 0),
                ("Status", 0),
                ("Volume", 0),
                ("Capacity", 0),
                ("Access Modes", 0),
                ("StorageClass", 0),
                ("VolumeAttributesClass", 0),
                ("Age", 0),
                ("VolumeMode", 1),
            ]),
            |o| {
                let phase = if o
                    .pointer("/metadata/deletionTimestamp")
                    .is_some_and(|v| !v.is_null())
                {
                    "Terminating".to_string()
                } else {
                    s(o, "/status/phase")
                };
                let bound = !s(o, "/spec/volumeName").is_empty();
                vec![
                    json!(phase),
                    json!(s(o, "/spec/volumeName")),
                    json!(if bound {
                        s(o, "/status/capacity/storage")
                    } else {
                        String::new()
                    }),
                    json!(if bound {
                        access_modes(o, "/status/accessModes")
                    } else {
                        String::new()
                    }),
                    json!(s(o, "/spec/storageClassName")),
                    json!(or_none(s(o, "/spec/volumeAttributesClassName"))),
                    age(o),
                    json!(s(o, "/spec/volumeMode")),
                ]
            },
        ),
        ("", "PersistentVolume") => (
            cols(&[
                ("Name", 0),
                ("Capacity", 0),
                ("Access Modes", 0),
                ("Reclaim Policy", 0),
                ("Status", 0),
                ("Claim", 0),
                ("StorageClass", 0),
                ("VolumeAttributesClass", 0),
                ("Reason", 0),
                ("Age", 0),
                ("VolumeMode", 1),
            ]),
            |o| {
                let claim = if o.pointer("/spec/claimRef").is_some_and(|c| !c.is_null()) {
                    format!(
                        "{}/{}",
                        s(o, "/spec/claimRef/namespace"),
                        s(o, "/spec/claimRef/name")
                    )
                } else {
                    String::new()
                };
                vec![
                    json!(s(o, "/spec/capacity/storage")),
                    json!(access_modes(o, "/spec/accessModes")),
                    json!(s(o, "/spec/persistentVolumeReclaimPolicy")),
                    json!(s(o, "/status/phase")),
                    json!(claim),
                    json!(s(o, "/spec/storageClassName")),
                    json!(or_none(s(o, "/spec/volumeAttributesClassName"))),
                    json!(s(o, "/status/reason")),
                    age(o),
                    json!(s(o, "/spec/volumeMode")),
                ]
            },
        ),
        ("", "Endpoints") => (cols(&[("Name", 0), ("Endpoints", 0), ("Age", 0)]), |o| {
            // As printEndpoints: ip:port pairs, at most three, then "+ N more...".
            let mut pairs = vec![];
            for sub in o
                .pointer("/subsets")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let ports: Vec<i64> = sub
                    .get("ports")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .map(|p| n(p, "/port"))
                    .collect();
                for a in sub
                    .get("addresses")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if ports.is_empty() {
                        pairs.push(s(a, "/ip"));
                    }
                    for p in &ports {
                        pairs.push(format!("{}:{p}", s(a, "/ip")));
                    }
                }
            }
            vec![json!(list_more(&pairs)), age(o)]
        }),
        ("discovery.k8s.io", "EndpointSlice") => (
            cols(&[
                ("Name", 0),
                ("AddressType", 0),
                ("Ports", 0),
                ("Endpoints", 0),
                ("Age", 0),
            ]),
            |o| {
                let ports: Vec<String> = o
                    .get("ports")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .map(|p| n(p, "/port").to_string())
                    .collect();
                let addrs: Vec<String> = o
                    .get("endpoints")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .flat_map(|e| {
                        e.get("addresses")
                            .and_then(Value::as_array)
                            .cloned()
                            .unwrap_or_default()
                    })
                    .filter_map(|a| a.as_str().map(String::from))
                    .collect();
                vec![
                    json!(s(o, "/addressType")),
                    json!(if ports.is_empty() {
                        "<unset>".to_string()
                    } else {
                        ports.join(",")
                    }),
                    json!(list_more(&addrs)),
                    age(o),
                ]
            },
        ),
        ("storage.k8s.io", "StorageClass") => (
            cols(&[
                ("Name", 0),
                ("Provisioner", 0),
                ("ReclaimPolicy", 0),
                ("VolumeBindingMode", 0),
                ("AllowVolumeExpansion", 0),
                ("Age", 0),
            ]),
            |o| {
                vec![
                    json!(s(o, "/provisioner")),
                    json!(match s(o, "/reclaimPolicy") {
                        r if r.is_empty() => "Delete".to_string(),
                        r => r,
                    }),
                    json!(match s(o, "/volumeBindingMode") {
                        m if m.is_empty() => "Immediate".to_string(),
                        m => m,
                    }),
                    json!(
                        o.get("allowVolumeExpansion")
                            .and_then(Value::as_bool)
                            .unwrap_or(false)
                    ),
                    age(o),
                ]
            },
        ),
        _ => return None,
    })
}

/// At most three items, then `+ N more...`; `<none>` for none (as the real printers list them).
fn list_more(items: &[String]) -> String {
    if items.is_empty() {
        return "<none>".into();
    }
    let shown = items.iter().take(3).cloned().collect::<Vec<_>>().join(",");
    if items.len() > 3 {
        format!("{shown} + {} more...", items.len() - 3)
    } else {
        shown
    }
}

/// `kubectl get storageclass` marks the default class in its name column, as the real printer does.
pub(crate) fn display_name(def: &ResourceDef, obj: &Value) -> Option<String> {
    if def.group == "storage.k8s.io"
        && def.kind == "StorageClass"
        && s(
            obj,
            "/metadata/annotations/storageclass.kubernetes.io~1is-default-class",
        ) == "true"
    {
        return Some(format!("{} (default)", s(obj, "/metadata/name")));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_status_column() {
        let creating = json!({"status": {"phase": "Pending", "containerStatuses": [{"state": {"waiting": {"reason": "ContainerCreating"}}}]}});
        assert_eq!(pod_status(&creating), "ContainerCreating");
        let running = json!({"status": {"phase": "Running", "containerStatuses": [{"ready": true, "state": {"running": {}}}]}});
        assert_eq!(pod_status(&running), "Running");
        let crash = json!({"status": {"phase": "Running", "containerStatuses": [{"state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}});
        assert_eq!(pod_status(&crash), "CrashLoopBackOff");
        let done = json!({"status": {"phase": "Succeeded", "containerStatuses": [{"state": {"terminated": {"reason": "Completed", "exitCode": 0}}}]}});
        assert_eq!(pod_status(&done), "Completed");
        let deleting = json!({"metadata": {"deletionTimestamp": "2025-01-01T00:00:00Z"}, "status": {"phase": "Running"}});
        assert_eq!(pod_status(&deleting), "Terminating");
        let init = json!({"spec": {"initContainers": [{"name": "i"}]}, "status": {"phase": "Pending", "initContainerStatuses": [{"state": {"waiting": {"reason": "PodInitializing"}}}]}});
        assert_eq!(pod_status(&init), "Init:0/1");
    }

    #[test]
    fn endpoint_lists_are_cut_at_three() {
        let items: Vec<String> = (1..=5).map(|i| format!("10.0.0.{i}:80")).collect();
        assert_eq!(
            list_more(&items),
            "10.0.0.1:80,10.0.0.2:80,10.0.0.3:80 + 2 more..."
        );
        assert_eq!(list_more(&[]), "<none>");
    }

    #[test]
    fn node_status_column() {
        let node = json!({"metadata": {"labels": {"node-role.kubernetes.io/control-plane": ""}}, "spec": {"unschedulable": true}, "status": {"conditions": [{"type": "Ready", "status": "Unknown"}], "nodeInfo": {"kubeletVersion": "v1.33.0"}}});
        let cells = node_cells(&node);
        assert_eq!(cells[0], "NotReady,SchedulingDisabled");
        assert_eq!(cells[1], "control-plane");
        assert_eq!(cells[3], "v1.33.0");
    }
}
