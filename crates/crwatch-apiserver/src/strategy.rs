//! Defaulting, allocation and update rules of the built-in workload and networking kinds, as
//! their registry strategies, `SetDefaults_*` functions, admission plugins and validation do on
//! the real server. Only what controllers and clients observe is done: the defaults they read
//! back (restartPolicy, imagePullPolicy, terminationMessagePath, dnsPolicy, the workload
//! defaults), Service cluster IPs and node ports (allocated, kept on update, immutable), the
//! selectors generated for Jobs, the default StorageClass of PVCs, and the fields that may not
//! change (Pod spec, Deployment/StatefulSet/ReplicaSet/DaemonSet/Job selectors, StatefulSet spec,
//! PVC spec).

use std::collections::HashSet;
use std::net::Ipv4Addr;

use serde_json::{Map, Value, json};

use crate::meta::meta_str;
use crate::registry::ResourceDef;
use crate::status::Cause;

/// The Service cluster IP range (`--service-cluster-ip-range`, kind's and kubeadm's default).
pub const SERVICE_CIDR: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 96, 0, 0), 12);
/// The NodePort range (`--service-node-port-range`).
pub const NODE_PORTS: std::ops::RangeInclusive<u16> = 30000..=32767;

/// What is allocated already, for new Services.
#[derive(Debug, Default)]
pub struct Allocated {
    /// Cluster IPs of existing Services.
    pub cluster_ips: HashSet<String>,
    /// Node ports of existing Services.
    pub node_ports: HashSet<u16>,
}

fn entry<'a>(obj: &'a mut Value, key: &str) -> &'a mut Value {
    if !obj.get(key).is_some_and(Value::is_object) {
        obj[key] = json!({});
    }
    &mut obj[key]
}

fn default(obj: &mut Value, key: &str, value: Value) {
    if obj.get(key).is_none_or(Value::is_null) {
        obj[key] = value;
    }
}

/// `SetDefaults_Container`'s imagePullPolicy: Always for `:latest` or no tag, else IfNotPresent.
fn pull_policy(image: &str) -> &'static str {
    if image.contains('@') {
        return "IfNotPresent";
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.rsplit_once(':') {
        Some((_, "latest")) | None => "Always",
        Some(_) => "IfNotPresent",
    }
}

fn container_defaults(c: &mut Value) {
    if !c.is_object() {
        return;
    }
    let image = c
        .get("image")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    default(c, "imagePullPolicy", json!(pull_policy(&image)));
    default(c, "terminationMessagePath", json!("/dev/termination-log"));
    default(c, "terminationMessagePolicy", json!("File"));
    default(c, "resources", json!({}));
    if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports.iter_mut().filter(|p| p.is_object()) {
            default(p, "protocol", json!("TCP"));
        }
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(p) = c.get_mut(probe).filter(|p| p.is_object()) {
            default(p, "timeoutSeconds", json!(1));
            default(p, "periodSeconds", json!(10));
            default(p, "successThreshold", json!(1));
            default(p, "failureThreshold", json!(3));
            if let Some(h) = p.get_mut("httpGet").filter(|h| h.is_object()) {
                default(h, "scheme", json!("HTTP"));
            }
        }
    }
    if let Some(env) = c.get_mut("env").and_then(Value::as_array_mut) {
        for e in env {
            if let Some(f) = e.pointer_mut("/valueFrom/fieldRef").filter(|f| f.is_object()) {
                default(f, "apiVersion", json!("v1"));
            }
        }
    }
}

/// `SetDefaults_PodSpec` and the container and volume defaults below it.
pub fn pod_spec_defaults(spec: &mut Value) {
    if !spec.is_object() {
        return;
    }
    default(spec, "dnsPolicy", json!("ClusterFirst"));
    default(spec, "restartPolicy", json!("Always"));
    default(spec, "terminationGracePeriodSeconds", json!(30));
    default(spec, "securityContext", json!({}));
    default(spec, "schedulerName", json!("default-scheduler"));
    default(spec, "enableServiceLinks", json!(true));
    for list in ["containers", "initContainers", "ephemeralContainers"] {
        if let Some(cs) = spec.get_mut(list).and_then(Value::as_array_mut) {
            cs.iter_mut().for_each(container_defaults);
        }
    }
    if let Some(volumes) = spec.get_mut("volumes").and_then(Value::as_array_mut) {
        for v in volumes.iter_mut() {
            for source in ["configMap", "secret", "projected", "downwardAPI"] {
                if let Some(s) = v.get_mut(source).filter(|s| s.is_object()) {
                    default(s, "defaultMode", json!(420));
                }
            }
        }
    }
}

fn template_defaults(spec: &mut Value) {
    if let Some(pod) = spec.pointer_mut("/template/spec") {
        pod_spec_defaults(pod);
    }
}

/// A pod's QoS class, as `qos.GetPodQOS` computes it from requests and limits.
fn qos_class(spec: &Value) -> &'static str {
    let containers: Vec<&Value> = ["containers", "initContainers"]
        .iter()
        .filter_map(|l| spec.get(*l).and_then(Value::as_array))
        .flatten()
        .collect();
    let mut any = false;
    let mut guaranteed = true;
    for c in &containers {
        let requests = c.pointer("/resources/requests").and_then(Value::as_object);
        let limits = c.pointer("/resources/limits").and_then(Value::as_object);
        if requests.is_some_and(|r| !r.is_empty()) || limits.is_some_and(|l| !l.is_empty()) {
            any = true;
        }
        for res in ["cpu", "memory"] {
            let limit = limits.and_then(|l| l.get(res));
            let request = requests.and_then(|r| r.get(res)).or(limit);
            if limit.is_none() || request != limit {
                guaranteed = false;
            }
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

/// Defaults of a new or updated object of a built-in kind. `allocated` is what Services hold
/// (consulted only for Services); `default_storage_class` is the StorageClass marked default.
pub fn defaults(
    def: &ResourceDef,
    old: Option<&Value>,
    obj: &mut Value,
    allocated: &dyn Fn() -> Allocated,
    default_storage_class: &dyn Fn() -> Option<String>,
) {
    match (def.group.as_str(), def.kind.as_str()) {
        ("", "Pod") => {
            let spec = entry(obj, "spec");
            pod_spec_defaults(spec);
            if old.is_none() {
                // The ServiceAccount, DefaultTolerationSeconds and Priority admission plugins.
                default(spec, "serviceAccountName", json!("default"));
                let sa = spec["serviceAccountName"].clone();
                default(spec, "serviceAccount", sa);
                let tolerations = spec
                    .get("tolerations")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                let mut tolerations = tolerations;
                for key in ["node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"] {
                    let present = tolerations.iter().any(|t| {
                        t.get("key").and_then(Value::as_str) == Some(key)
                            && t.get("effect")
                                .and_then(Value::as_str)
                                .is_none_or(|e| e == "NoExecute")
                    });
                    if !present {
                        tolerations.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}));
                    }
                }
                spec["tolerations"] = json!(tolerations);
                default(spec, "priority", json!(0));
                default(spec, "preemptionPolicy", json!("PreemptLowerPriority"));
                let qos = qos_class(spec);
                let status = entry(obj, "status");
                default(status, "phase", json!("Pending"));
                default(status, "qosClass", json!(qos));
            }
        }
        ("", "PodTemplate") => {
            if let Some(spec) = obj.pointer_mut("/template/spec") {
                pod_spec_defaults(spec);
            }
        }
        ("", "ReplicationController") => {
            let spec = entry(obj, "spec");
            default(spec, "replicas", json!(1));
            default(spec, "minReadySeconds", json!(0));
            template_defaults(spec);
            // SetDefaults_ReplicationController: the selector and labels come from the template.
            let labels = spec.pointer("/template/metadata/labels").cloned();
            if let Some(labels) = labels.filter(|l| l.as_object().is_some_and(|m| !m.is_empty())) {
                default(spec, "selector", labels.clone());
                if meta_labels_empty(obj) {
                    obj["metadata"]["labels"] = labels;
                }
            }
        }
        ("apps", "Deployment") => {
            let spec = entry(obj, "spec");
            default(spec, "replicas", json!(1));
            default(spec, "revisionHistoryLimit", json!(10));
            default(spec, "progressDeadlineSeconds", json!(600));
            let strategy = entry(spec, "strategy");
            default(strategy, "type", json!("RollingUpdate"));
            if strategy["type"] == "RollingUpdate" {
                let ru = entry(strategy, "rollingUpdate");
                default(ru, "maxUnavailable", json!("25%"));
                default(ru, "maxSurge", json!("25%"));
            }
            template_defaults(spec);
        }
        ("apps", "ReplicaSet") => {
            let spec = entry(obj, "spec");
            default(spec, "replicas", json!(1));
            template_defaults(spec);
        }
        ("apps", "StatefulSet") => {
            let spec = entry(obj, "spec");
            default(spec, "replicas", json!(1));
            default(spec, "podManagementPolicy", json!("OrderedReady"));
            default(spec, "revisionHistoryLimit", json!(10));
            let strategy = entry(spec, "updateStrategy");
            default(strategy, "type", json!("RollingUpdate"));
            if strategy["type"] == "RollingUpdate" {
                let ru = entry(strategy, "rollingUpdate");
                default(ru, "partition", json!(0));
            }
            let retention = entry(spec, "persistentVolumeClaimRetentionPolicy");
            default(retention, "whenDeleted", json!("Retain"));
            default(retention, "whenScaled", json!("Retain"));
            if let Some(templates) = spec.get_mut("volumeClaimTemplates").and_then(Value::as_array_mut) {
                for t in templates.iter_mut().filter(|t| t.is_object()) {
                    default(t, "apiVersion", json!("v1"));
                    default(t, "kind", json!("PersistentVolumeClaim"));
                    let pvc_spec = entry(t, "spec");
                    default(pvc_spec, "volumeMode", json!("Filesystem"));
                    let status = entry(t, "status");
                    default(status, "phase", json!("Pending"));
                }
            }
            template_defaults(spec);
        }
        ("apps", "DaemonSet") => {
            let spec = entry(obj, "spec");
            default(spec, "revisionHistoryLimit", json!(10));
            let strategy = entry(spec, "updateStrategy");
            default(strategy, "type", json!("RollingUpdate"));
            if strategy["type"] == "RollingUpdate" {
                let ru = entry(strategy, "rollingUpdate");
                default(ru, "maxUnavailable", json!(1));
                default(ru, "maxSurge", json!(0));
            }
            template_defaults(spec);
        }
        ("batch", "Job") => {
            let uid = meta_str(obj, "uid").to_string();
            let name = meta_str(obj, "name").to_string();
            let spec = entry(obj, "spec");
            job_spec_defaults(spec);
            if old.is_none() && spec.get("manualSelector").and_then(Value::as_bool) != Some(true) {
                // The Job strategy generates the selector and the template labels from the uid.
                let labels = json!({
                    "batch.kubernetes.io/controller-uid": uid,
                    "batch.kubernetes.io/job-name": name,
                    "controller-uid": uid,
                    "job-name": name,
                });
                if spec.get("selector").is_none_or(Value::is_null) {
                    spec["selector"] = json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}});
                }
                let template = entry(spec, "template");
                let meta = entry(template, "metadata");
                let tl = entry(meta, "labels");
                if let (Some(tl), Some(add)) = (tl.as_object_mut(), labels.as_object()) {
                    for (k, v) in add {
                        tl.entry(k.clone()).or_insert(v.clone());
                    }
                }
            }
        }
        ("batch", "CronJob") => {
            let spec = entry(obj, "spec");
            default(spec, "concurrencyPolicy", json!("Allow"));
            default(spec, "suspend", json!(false));
            default(spec, "successfulJobsHistoryLimit", json!(3));
            default(spec, "failedJobsHistoryLimit", json!(1));
            if let Some(job_spec) = spec.pointer_mut("/jobTemplate/spec") {
                job_spec_defaults(job_spec);
            }
        }
        ("", "Service") => service_defaults(old, obj, allocated),
        ("", "PersistentVolumeClaim") => {
            let spec = entry(obj, "spec");
            default(spec, "volumeMode", json!("Filesystem"));
            if old.is_none() {
                // The DefaultStorageClass admission plugin.
                if spec.get("storageClassName").is_none_or(Value::is_null)
                    && let Some(class) = default_storage_class()
                {
                    spec["storageClassName"] = json!(class);
                }
                let status = entry(obj, "status");
                default(status, "phase", json!("Pending"));
            }
        }
        ("", "PersistentVolume") => {
            let spec = entry(obj, "spec");
            default(spec, "persistentVolumeReclaimPolicy", json!("Retain"));
            default(spec, "volumeMode", json!("Filesystem"));
            if old.is_none() {
                let status = entry(obj, "status");
                default(status, "phase", json!("Pending"));
            }
        }
        ("storage.k8s.io", "StorageClass") => {
            default(obj, "reclaimPolicy", json!("Delete"));
            default(obj, "volumeBindingMode", json!("Immediate"));
        }
        ("", "Node") if old.is_none() => {
            let status = entry(obj, "status");
            // The node lifecycle controller's view of a node that never reported.
            default(status, "daemonEndpoints", json!({"kubeletEndpoint": {"Port": 0}}));
            default(
                status,
                "nodeInfo",
                json!({
                    "architecture": "", "bootID": "", "containerRuntimeVersion": "", "kernelVersion": "",
                    "kubeProxyVersion": "", "kubeletVersion": "", "machineID": "", "operatingSystem": "",
                    "osImage": "", "systemUUID": ""
                }),
            );
        }
        _ => {}
    }
}

fn meta_labels_empty(obj: &Value) -> bool {
    obj.pointer("/metadata/labels")
        .and_then(Value::as_object)
        .is_none_or(Map::is_empty)
}

fn job_spec_defaults(spec: &mut Value) {
    if spec.get("completions").is_none_or(Value::is_null)
        && spec.get("parallelism").is_none_or(Value::is_null)
    {
        spec["completions"] = json!(1);
        spec["parallelism"] = json!(1);
    }
    default(spec, "parallelism", json!(1));
    default(spec, "backoffLimit", json!(6));
    default(spec, "completionMode", json!("NonIndexed"));
    default(spec, "suspend", json!(false));
    default(spec, "podReplacementPolicy", json!("TerminatingOrFailed"));
    if let Some(pod) = spec.pointer_mut("/template/spec") {
        // Leaves restartPolicy Always where none was given, which Job validation then refuses,
        // as on the real server.
        pod_spec_defaults(pod);
    }
}

/// ServiceStrategy: type ClusterIP, a cluster IP from [`SERVICE_CIDR`], node ports from
/// [`NODE_PORTS`] for NodePort and LoadBalancer, and on update the allocated values the new
/// object leaves out are kept (`patchAllocatedValues`).
fn service_defaults(old: Option<&Value>, obj: &mut Value, allocated: &dyn Fn() -> Allocated) {
    let spec = entry(obj, "spec");
    default(spec, "type", json!("ClusterIP"));
    default(spec, "sessionAffinity", json!("None"));
    let ty = spec["type"].as_str().unwrap_or("ClusterIP").to_string();
    if ty == "ExternalName" {
        return;
    }
    default(spec, "internalTrafficPolicy", json!("Cluster"));
    if matches!(ty.as_str(), "NodePort" | "LoadBalancer") {
        default(spec, "externalTrafficPolicy", json!("Cluster"));
    }
    if ty == "LoadBalancer" {
        default(spec, "allocateLoadBalancerNodePorts", json!(true));
    }
    if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports.iter_mut().filter(|p| p.is_object()) {
            default(p, "protocol", json!("TCP"));
            let port = p.get("port").cloned().unwrap_or(Value::Null);
            default(p, "targetPort", port);
        }
    }
    if let Some(old_spec) = old.and_then(|o| o.get("spec")) {
        for k in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
            if spec.get(k).is_none_or(Value::is_null)
                && let Some(v) = old_spec.get(k)
            {
                spec[k] = v.clone();
            }
        }
        // Node ports are kept per port number (and protocol) when the new object has none.
        let old_ports = old_spec
            .get("ports")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
            for p in ports.iter_mut() {
                if p.get("nodePort").is_some_and(|n| !n.is_null())
                    || !matches!(ty.as_str(), "NodePort" | "LoadBalancer")
                {
                    continue;
                }
                if let Some(o) = old_ports
                    .iter()
                    .find(|o| o.get("port") == p.get("port") && o.get("protocol") == p.get("protocol"))
                    && let Some(n) = o.get("nodePort")
                {
                    p["nodePort"] = n.clone();
                }
            }
        }
    }
    let needs_ip = spec.get("clusterIP").is_none_or(|v| v.is_null() || v == "");
    let needs_ports = matches!(ty.as_str(), "NodePort" | "LoadBalancer")
        && spec
            .get("ports")
            .and_then(Value::as_array)
            .is_some_and(|ps| ps.iter().any(|p| p.get("nodePort").is_none_or(Value::is_null)));
    // Only a Service that needs an address or a port looks at what the others hold.
    let taken = if needs_ip || needs_ports {
        allocated()
    } else {
        Allocated::default()
    };
    if spec.get("clusterIP").is_none_or(|v| v.is_null() || v == "") {
        let ip = free_cluster_ip(&taken.cluster_ips);
        spec["clusterIP"] = json!(ip);
    }
    if spec
        .get("clusterIPs")
        .is_none_or(|v| v.as_array().is_none_or(Vec::is_empty))
    {
        spec["clusterIPs"] = json!([spec["clusterIP"].clone()]);
    }
    let headless = spec["clusterIP"] == "None";
    default(spec, "ipFamilyPolicy", json!("SingleStack"));
    if !headless || spec.get("selector").is_some() {
        default(spec, "ipFamilies", json!(["IPv4"]));
    }
    if matches!(ty.as_str(), "NodePort" | "LoadBalancer") {
        let mut used: HashSet<u16> = taken.node_ports.clone();
        if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
            for p in ports
                .iter()
                .filter_map(|p| p.get("nodePort").and_then(Value::as_u64))
            {
                used.insert(u16::try_from(p).unwrap_or(0));
            }
            for p in ports.iter_mut().filter(|p| p.is_object()) {
                if p.get("nodePort").is_none_or(Value::is_null)
                    && let Some(port) = free_node_port(&used)
                {
                    used.insert(port);
                    p["nodePort"] = json!(port);
                }
            }
        }
    }
    if old.is_none() && ty == "LoadBalancer" {
        let status = entry(obj, "status");
        default(status, "loadBalancer", json!({}));
    }
}

/// A random free address of [`SERVICE_CIDR`], skipping the network address and the first
/// address (the `kubernetes` Service's).
fn free_cluster_ip(taken: &HashSet<String>) -> String {
    let (base, bits) = SERVICE_CIDR;
    let size = 1u32 << (32 - u32::from(bits));
    let base = u32::from(base);
    for _ in 0..10_000 {
        let offset = rand::random_range(2..size - 1);
        let ip = Ipv4Addr::from(base + offset).to_string();
        if !taken.contains(&ip) {
            return ip;
        }
    }
    // A million addresses; ten thousand random misses mean the range is (nearly) full: scan.
    (2..size - 1)
        .map(|o| Ipv4Addr::from(base + o).to_string())
        .find(|ip| !taken.contains(ip))
        .unwrap_or_else(|| Ipv4Addr::from(base + 2).to_string())
}

fn free_node_port(taken: &HashSet<u16>) -> Option<u16> {
    for _ in 0..1000 {
        let p = rand::random_range(*NODE_PORTS.start()..=*NODE_PORTS.end());
        if !taken.contains(&p) {
            return Some(p);
        }
    }
    NODE_PORTS.clone().find(|p| !taken.contains(p))
}

/// `metav1.LabelSelector` as Go's `%v` prints it in "field is immutable" errors.
fn go_selector(sel: &Value) -> String {
    let labels = sel.get("matchLabels").and_then(Value::as_object);
    let labels = match labels {
        Some(m) if !m.is_empty() => format!(
            "map[string]string{{{}}}",
            m.iter()
                .map(|(k, v)| format!("{:?}:{:?}", k, v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        _ => "map[string]string(nil)".into(),
    };
    let exprs = match sel.get("matchExpressions").and_then(Value::as_array) {
        Some(e) if !e.is_empty() => format!(
            "[]v1.LabelSelectorRequirement{{{}}}",
            e.iter()
                .map(|r| format!(
                    "v1.LabelSelectorRequirement{{Key:{:?}, Operator:{:?}, Values:[]string{{{}}}}}",
                    r.get("key").and_then(Value::as_str).unwrap_or_default(),
                    r.get("operator").and_then(Value::as_str).unwrap_or_default(),
                    r.get("values")
                        .and_then(Value::as_array)
                        .map(|vs| vs
                            .iter()
                            .map(|v| format!("{:?}", v.as_str().unwrap_or_default()))
                            .collect::<Vec<_>>()
                            .join(", "))
                        .unwrap_or_default()
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        _ => "[]v1.LabelSelectorRequirement(nil)".into(),
    };
    format!("v1.LabelSelector{{MatchLabels:{labels}, MatchExpressions:{exprs}}}")
}

/// Without the keys the server fills in, so that a comparison sees only what the user set.
fn strip(mut v: Value, keys: &[&str]) -> Value {
    if let Some(m) = v.as_object_mut() {
        for k in keys {
            m.remove(*k);
        }
    }
    v
}

/// The update rules of the built-in kinds: fields that may not change once set.
pub fn update_causes(def: &ResourceDef, old: &Value, new: &Value) -> Vec<Cause> {
    let mut out = vec![];
    let spec = |o: &Value, p: &str| o.pointer(&format!("/spec{p}")).cloned().unwrap_or(Value::Null);
    match (def.group.as_str(), def.kind.as_str()) {
        ("apps", "Deployment" | "ReplicaSet" | "DaemonSet" | "StatefulSet") | ("batch", "Job") => {
            let (before, after) = (spec(old, "/selector"), spec(new, "/selector"));
            if before != after && !before.is_null() {
                out.push(Cause::new(
                    "FieldValueInvalid",
                    "spec.selector",
                    format!("Invalid value: {}: field is immutable", go_selector(&after)),
                ));
            }
        }
        _ => {}
    }
    match (def.group.as_str(), def.kind.as_str()) {
        ("apps", "StatefulSet") => {
            let mutable = [
                "replicas",
                "ordinals",
                "template",
                "updateStrategy",
                "revisionHistoryLimit",
                "persistentVolumeClaimRetentionPolicy",
                "minReadySeconds",
            ];
            let (a, b) = (strip(spec(old, ""), &mutable), strip(spec(new, ""), &mutable));
            // volumeClaimTemplates carry a status the server set; compare what users write.
            let claims = |v: &Value| {
                v.get("volumeClaimTemplates").and_then(Value::as_array).map(|ts| {
                    ts.iter()
                        .map(|t| strip(t.clone(), &["status"]))
                        .collect::<Vec<_>>()
                })
            };
            if strip(a.clone(), &["volumeClaimTemplates"]) != strip(b.clone(), &["volumeClaimTemplates"])
                || claims(&a) != claims(&b)
            {
                out.push(Cause::new(
                    "FieldValueForbidden",
                    "spec",
                    "Forbidden: updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'revisionHistoryLimit', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden",
                ));
            }
        }
        ("", "Pod") => {
            let images = |v: &Value| {
                let mut v = v.clone();
                for list in ["containers", "initContainers"] {
                    if let Some(cs) = v.get_mut(list).and_then(Value::as_array_mut) {
                        for c in cs.iter_mut().filter(|c| c.is_object()) {
                            c["image"] = Value::Null;
                        }
                    }
                }
                strip(
                    v,
                    &[
                        "activeDeadlineSeconds",
                        "tolerations",
                        "terminationGracePeriodSeconds",
                        "nodeName",
                        "ephemeralContainers",
                    ],
                )
            };
            let (a, b) = (spec(old, ""), spec(new, ""));
            let node_changed = {
                let (x, y) = (a.get("nodeName"), b.get("nodeName"));
                x.is_some_and(|n| n != "") && x != y
            };
            if images(&a) != images(&b) || node_changed {
                out.push(Cause::new(
                    "FieldValueForbidden",
                    "spec",
                    "Forbidden: pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
                ));
            }
            // ValidateEphemeralContainersUpdate: ephemeral containers are only ever added.
            let ephemeral = |v: &Value| v.as_array().cloned().unwrap_or_default();
            let (before, after) = (
                ephemeral(&spec(old, "/ephemeralContainers")),
                ephemeral(&spec(new, "/ephemeralContainers")),
            );
            for c in &before {
                let name = c.get("name").and_then(Value::as_str).unwrap_or_default();
                match after.iter().position(|n| n.get("name") == c.get("name")) {
                    None => out.push(Cause::new(
                        "FieldValueForbidden",
                        "spec.ephemeralContainers",
                        format!("Forbidden: existing ephemeral containers {name:?} may not be removed"),
                    )),
                    Some(i) if &after[i] != c => out.push(Cause::new(
                        "FieldValueForbidden",
                        format!("spec.ephemeralContainers[{i}]"),
                        format!("Forbidden: existing ephemeral containers {name:?} may not be changed"),
                    )),
                    Some(_) => {}
                }
            }
        }
        ("", "PersistentVolumeClaim") => {
            let requests = |v: &Value| {
                let mut s = spec(v, "");
                if let Some(r) = s.get_mut("resources").and_then(Value::as_object_mut) {
                    r.remove("requests");
                }
                strip(s, &["volumeName"])
            };
            let bound_name_set =
                spec(old, "/volumeName").is_null() || spec(old, "/volumeName") == spec(new, "/volumeName");
            if requests(old) != requests(new) || !bound_name_set {
                out.push(Cause::new(
                    "FieldValueForbidden",
                    "spec",
                    "Forbidden: spec is immutable after creation except resources.requests for bound claims",
                ));
            }
        }
        ("", "Service") => {
            let (before, after) = (spec(old, "/clusterIPs"), spec(new, "/clusterIPs"));
            let old_type = spec(old, "/type");
            let new_type = spec(new, "/type");
            let from_external = old_type == "ExternalName";
            if !from_external && new_type != "ExternalName" && before != after && !before.is_null() {
                out.push(Cause::new(
                    "FieldValueInvalid",
                    "spec.clusterIPs[0]",
                    format!(
                        "Invalid value: []string{{{}}}: may not change once set",
                        after
                            .as_array()
                            .map(|ips| ips
                                .iter()
                                .map(|ip| format!("{:?}", ip.as_str().unwrap_or_default()))
                                .collect::<Vec<_>>()
                                .join(", "))
                            .unwrap_or_default()
                    ),
                ));
            }
        }
        _ => {}
    }
    out
}

/// Validation of a new or updated built-in object beyond its schema: what controllers rely on.
pub fn causes(def: &ResourceDef, obj: &Value) -> Vec<Cause> {
    let mut out = vec![];
    if !def.is_custom() {
        out.extend(embedded_label_causes(obj));
    }
    let containers_required = |out: &mut Vec<Cause>, pod_spec: Option<&Value>, field: &str| {
        if pod_spec
            .and_then(|s| s.get("containers"))
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty)
        {
            out.push(Cause::new("FieldValueRequired", field, "Required value"));
        }
    };
    match (def.group.as_str(), def.kind.as_str()) {
        ("", "Pod") => containers_required(&mut out, obj.get("spec"), "spec.containers"),
        ("apps", "StatefulSet" | "ReplicaSet" | "DaemonSet") => {
            containers_required(
                &mut out,
                obj.pointer("/spec/template/spec"),
                "spec.template.spec.containers",
            );
            selector_matches(&mut out, obj);
        }
        ("batch", "Job") => {
            containers_required(
                &mut out,
                obj.pointer("/spec/template/spec"),
                "spec.template.spec.containers",
            );
            let policy = obj
                .pointer("/spec/template/spec/restartPolicy")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if !matches!(policy, "OnFailure" | "Never") {
                out.push(Cause::new(
                    "FieldValueNotSupported",
                    "spec.template.spec.restartPolicy",
                    format!("Unsupported value: {policy:?}: supported values: \"OnFailure\", \"Never\""),
                ));
            }
        }
        ("", "Service") => {
            let ty = obj
                .pointer("/spec/type")
                .and_then(Value::as_str)
                .unwrap_or("ClusterIP");
            let ports = obj.pointer("/spec/ports").and_then(Value::as_array);
            let headless = obj.pointer("/spec/clusterIP").and_then(Value::as_str) == Some("None");
            if ty != "ExternalName" && !headless && ports.is_none_or(Vec::is_empty) {
                out.push(Cause::new("FieldValueRequired", "spec.ports", "Required value"));
            }
        }
        _ => {}
    }
    out
}

/// The labels of embedded pod templates and of selectors' `matchLabels` follow the same rules
/// as an object's own labels (`ValidateLabels` on `spec.template.metadata.labels` and
/// `spec.selector.matchLabels`), so a value over 63 characters is refused here as well.
fn embedded_label_causes(obj: &Value) -> Vec<Cause> {
    let mut out = vec![];
    for (pointer, field) in [
        ("/spec/template/metadata/labels", "spec.template.metadata.labels"),
        ("/spec/selector/matchLabels", "spec.selector.matchLabels"),
        (
            "/spec/jobTemplate/spec/template/metadata/labels",
            "spec.jobTemplate.spec.template.metadata.labels",
        ),
    ] {
        let Some(labels) = obj.pointer(pointer).filter(|l| l.is_object()) else {
            continue;
        };
        let as_meta = json!({"metadata": {"labels": labels}});
        for mut cause in crate::meta::label_problems(&as_meta) {
            cause.field = cause.field.replacen("metadata.labels", field, 1);
            out.push(cause);
        }
    }
    out
}

/// `spec.selector` must select `spec.template.metadata.labels`.
fn selector_matches(out: &mut Vec<Cause>, obj: &Value) {
    let Some(sel) = obj.pointer("/spec/selector") else {
        out.push(Cause::new(
            "FieldValueRequired",
            "spec.selector",
            "Required value",
        ));
        return;
    };
    let labels = obj
        .pointer("/spec/template/metadata/labels")
        .cloned()
        .unwrap_or_else(|| json!({}));
    let ok = crate::selector::LabelSelector::from_object(sel)
        .map(|s| s.matches_object(&json!({"metadata": {"labels": labels}})))
        .unwrap_or(false);
    if !ok {
        out.push(Cause::new(
            "FieldValueInvalid",
            "spec.template.metadata.labels",
            "Invalid value: map[string]string{...}: `selector` does not match template `labels`",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(group: &str, kind: &str) -> ResourceDef {
        crate::builtin::resources()
            .into_iter()
            .find(|d| d.group == group && d.kind == kind)
            .unwrap_or_else(|| panic!("{kind}"))
    }

    #[test]
    fn pods_get_the_defaults_controllers_read_back() {
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "a", "image": "nginx"}, {"name": "b", "image": "nginx:1.27", "ports": [{"containerPort": 80}]}
        ]}});
        defaults(&def("", "Pod"), None, &mut pod, &Allocated::default, &|| None);
        let spec = &pod["spec"];
        assert_eq!(spec["restartPolicy"], "Always");
        assert_eq!(spec["dnsPolicy"], "ClusterFirst");
        assert_eq!(spec["containers"][0]["imagePullPolicy"], "Always");
        assert_eq!(spec["containers"][1]["imagePullPolicy"], "IfNotPresent");
        assert_eq!(
            spec["containers"][0]["terminationMessagePath"],
            "/dev/termination-log"
        );
        assert_eq!(spec["containers"][1]["ports"][0]["protocol"], "TCP");
        assert_eq!(
            pod["status"],
            json!({"phase": "Pending", "qosClass": "BestEffort"})
        );
    }

    #[test]
    fn services_get_a_cluster_ip_that_stays() {
        let d = def("", "Service");
        let mut svc =
            json!({"metadata": {"name": "s"}, "spec": {"selector": {"a": "b"}, "ports": [{"port": 80}]}});
        defaults(&d, None, &mut svc, &Allocated::default, &|| None);
        let ip = svc["spec"]["clusterIP"].as_str().unwrap().to_string();
        assert!(ip.starts_with("10."), "{ip}");
        assert_eq!(svc["spec"]["clusterIPs"], json!([ip]));
        assert_eq!(svc["spec"]["type"], "ClusterIP");
        assert_eq!(svc["spec"]["ports"][0]["targetPort"], 80);
        // An apply that leaves the IP out keeps it.
        let mut update =
            json!({"metadata": {"name": "s"}, "spec": {"selector": {"a": "c"}, "ports": [{"port": 80}]}});
        defaults(&d, Some(&svc), &mut update, &Allocated::default, &|| None);
        assert_eq!(update["spec"]["clusterIP"], json!(ip));
        assert!(update_causes(&d, &svc, &update).is_empty());
        let mut changed = update.clone();
        changed["spec"]["clusterIP"] = json!("10.96.0.99");
        changed["spec"]["clusterIPs"] = json!(["10.96.0.99"]);
        let causes = update_causes(&d, &svc, &changed);
        assert_eq!(causes.len(), 1);
        assert!(
            causes[0].message.contains("may not change once set"),
            "{}",
            causes[0].message
        );
    }

    #[test]
    fn template_and_selector_labels_are_validated() {
        let d = def("apps", "Deployment");
        let long = "x".repeat(64);
        let obj = json!({"spec": {"selector": {"matchLabels": {"app": long}}, "template": {"metadata": {"labels": {"app": long}}}}});
        let fields: Vec<String> = causes(&d, &obj).into_iter().map(|c| c.field).collect();
        assert!(
            fields.contains(&"spec.template.metadata.labels".to_string()),
            "{fields:?}"
        );
        assert!(
            fields.contains(&"spec.selector.matchLabels".to_string()),
            "{fields:?}"
        );
        let ok = json!({"spec": {"selector": {"matchLabels": {"app": "a"}}, "template": {"metadata": {"labels": {"app": "a"}}, "spec": {"containers": [{"name": "c"}]}}}});
        assert!(causes(&d, &ok).is_empty());
    }

    #[test]
    fn selectors_and_statefulset_specs_are_immutable() {
        let d = def("apps", "StatefulSet");
        let old =
            json!({"spec": {"selector": {"matchLabels": {"app": "a"}}, "serviceName": "x", "replicas": 1}});
        let mut new = old.clone();
        new["spec"]["replicas"] = json!(3);
        assert!(update_causes(&d, &old, &new).is_empty());
        new["spec"]["serviceName"] = json!("y");
        assert!(
            update_causes(&d, &old, &new)[0]
                .message
                .contains("updates to statefulset spec")
        );
        let d = def("apps", "Deployment");
        let mut new = old.clone();
        new["spec"]["selector"] = json!({"matchLabels": {"app": "b"}});
        assert_eq!(
            update_causes(&d, &old, &new)[0].message,
            "Invalid value: v1.LabelSelector{MatchLabels:map[string]string{\"app\":\"b\"}, MatchExpressions:[]v1.LabelSelectorRequirement(nil)}: field is immutable"
        );
    }
}
