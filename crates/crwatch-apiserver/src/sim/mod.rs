//! The workload simulator: built-in controllers in the spirit of kwok and the real
//! kube-controller-manager, so that operators creating Deployments, StatefulSets, Jobs, Services
//! and PVCs see on this server what they would see on a real cluster: ReplicaSets and Pods
//! appear, Pods are scheduled to simulated Nodes and become Running and Ready, Jobs complete,
//! Services get EndpointSlices, and PVCs are bound to provisioned PersistentVolumes.
//!
//! Like the garbage collector (`crate::gc`) it follows the store's changes, but it writes
//! through [`Api`], as a client would: admission, defaulting, validation, resourceVersions,
//! managedFields (with the real components' field managers: `kube-controller-manager`,
//! `kube-scheduler`, `kubelet`) and watch events are exactly those of a client write.
//!
//! How it stays correct and bounded:
//! - It remembers nothing it cannot rebuild: every controller reconciles from the store's
//!   current objects, so after a restart (with a state file) or after falling behind the
//!   store's broadcast (`RecvError::Lagged`) it requeues everything and converges.
//! - The work queue is a set of object keys (one entry per object, however many events), and
//!   the timers (Pods becoming Ready, Jobs finishing, CronJob schedules) one deadline per key:
//!   both are bounded by the number of objects, and capped at [`MAX_QUEUE`] (beyond which the
//!   queue is dropped and everything resynced).
//! - A controller writes only when what it would write differs from what is stored, so its own
//!   writes (which come back as events) end in no write: it never loops.
//! - It runs on its own task; a failed write is retried after [`RETRY`] (the write's own event,
//!   or a conflicting client write's, usually requeues it sooner).

mod cron;
mod cronjob;
mod daemonset;
mod deployment;
mod endpoints;
mod job;
mod kubelet;
pub(crate) mod printers;
mod replicaset;
mod statefulset;
mod volumes;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::api::{Api, Ctx, Params};
use crate::meta::{self, meta_str};
use crate::registry::{GroupResource, ResourceDef};
use crate::selector::{LabelSelector, labels_of};
use crate::status::{ApiError, ApiResult};
use crate::store::{Event, EventType};

/// The most keys the work queue or the timers hold; past it everything is resynced instead.
const MAX_QUEUE: usize = 1_000_000;
/// How long a failed write waits before it is retried.
const RETRY: Duration = Duration::from_millis(500);
/// The version the simulated components report in their user agents.
const COMPONENT_VERSION: &str = "v1.33.0";

/// How the workload simulator behaves (see `Config::simulate_workloads`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimConfig {
    /// How many Nodes (`crwatch-node-0`, ...) are created when the server starts with an empty
    /// store (0 to 100). Nodes a user deletes are not recreated.
    pub nodes: usize,
    /// How long a scheduled Pod's containers take to start (Pending with `ContainerCreating`,
    /// then Running and Ready). At most an hour; 0 in tests that want it at once.
    pub pod_ready_delay: Duration,
    /// How long a Job's Pod runs before it Succeeds (at most a day).
    pub job_pod_duration: Duration,
    /// The longest a deleted Pod stays Terminating before the simulated kubelet removes it
    /// (its grace period, when shorter, wins). At most an hour.
    pub pod_termination_delay: Duration,
    /// Pods a Node runs at most (its `pods` capacity; 1 to 250).
    pub max_pods_per_node: u32,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            nodes: 1,
            pod_ready_delay: Duration::from_millis(200),
            job_pod_duration: Duration::from_secs(1),
            pod_termination_delay: Duration::from_millis(200),
            max_pods_per_node: 110,
        }
    }
}

impl SimConfig {
    /// Range checks, worded for `ServerError::Config`.
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.nodes > 100 {
            return Err(format!(
                "simulated nodes must be between 0 and 100, got {}",
                self.nodes
            ));
        }
        for (what, d, max) in [
            ("pod ready delay", self.pod_ready_delay, Duration::from_secs(3600)),
            (
                "job pod duration",
                self.job_pod_duration,
                Duration::from_secs(86_400),
            ),
            (
                "pod termination delay",
                self.pod_termination_delay,
                Duration::from_secs(3600),
            ),
        ] {
            if d > max {
                return Err(format!("{what} must be at most {}s, got {d:?}", max.as_secs()));
            }
        }
        if !(1..=250).contains(&self.max_pods_per_node) {
            return Err(format!(
                "max pods per node must be between 1 and 250, got {}",
                self.max_pods_per_node
            ));
        }
        Ok(())
    }
}

/// What tests asked the simulated cluster to get wrong (see the `Faults` methods below).
#[derive(Default)]
pub(crate) struct SimFaults {
    state: Mutex<FaultSet>,
    changed: Notify,
    /// Whether a simulator runs (Pods are then deleted gracefully, as on a cluster with kubelets).
    pub(crate) enabled: AtomicBool,
}

#[derive(Default, Clone)]
struct FaultSet {
    crash_looping: BTreeSet<(String, String)>,
    unready: BTreeSet<(String, String)>,
    nodes_not_ready: BTreeSet<String>,
    /// (namespace, Job) → how many of its next Pods fail.
    failing_job_pods: BTreeMap<(String, String), u32>,
}

/// The most faults of one sort a test may set at once.
const MAX_FAULTS: usize = 10_000;

impl SimFaults {
    fn snapshot(&self) -> FaultSet {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn modify(&self, f: impl FnOnce(&mut FaultSet)) {
        f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()));
        self.changed.notify_one();
    }

    /// Take one "this Pod fails" token of a Job, if a test left one.
    fn take_job_failure(&self, ns: &str, job: &str) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let key = (ns.to_string(), job.to_string());
        match s.failing_job_pods.get_mut(&key) {
            Some(n) if *n > 0 => {
                *n -= 1;
                if *n == 0 {
                    s.failing_job_pods.remove(&key);
                }
                true
            }
            _ => false,
        }
    }
}

fn toggle(set: &mut BTreeSet<(String, String)>, key: (String, String), on: bool) {
    if on {
        if set.len() < MAX_FAULTS {
            set.insert(key);
        }
    } else {
        set.remove(&key);
    }
}

/// Faults of the simulated cluster (only meaningful while the workload simulator runs).
impl crate::Faults {
    /// Make a Pod crash-loop (`true`) or stop (`false`): its containers restart (restartCount
    /// goes up, with the kubelet's back-off), wait in `CrashLoopBackOff`, and the Pod is not
    /// Ready.
    pub fn crash_loop_pod(&self, namespace: &str, name: &str, crashing: bool) {
        self.sim
            .modify(|s| toggle(&mut s.crash_looping, (namespace.into(), name.into()), crashing));
    }

    /// Make a Pod's containers fail their readiness probe (`true`) or pass it again.
    pub fn pod_unready(&self, namespace: &str, name: &str, unready: bool) {
        self.sim
            .modify(|s| toggle(&mut s.unready, (namespace.into(), name.into()), unready));
    }

    /// Make a Node stop reporting (`true`: its Ready condition goes Unknown, it is tainted
    /// unreachable and its Pods become not Ready, as the node lifecycle controller marks them)
    /// or come back.
    pub fn node_not_ready(&self, name: &str, not_ready: bool) {
        self.sim.modify(|s| {
            if not_ready {
                if s.nodes_not_ready.len() < MAX_FAULTS {
                    s.nodes_not_ready.insert(name.into());
                }
            } else {
                s.nodes_not_ready.remove(name);
            }
        });
    }

    /// Make the next `count` Pods of a Job fail (exit code 1) instead of succeeding, so that
    /// its backoffLimit can be tested.
    pub fn fail_job_pods(&self, namespace: &str, job: &str, count: u32) {
        self.sim.modify(|s| {
            let key = (namespace.to_string(), job.to_string());
            if count == 0 {
                s.failing_job_pods.remove(&key);
            } else if s.failing_job_pods.len() < MAX_FAULTS || s.failing_job_pods.contains_key(&key) {
                s.failing_job_pods.insert(key, count);
            }
        });
    }
}

/// The kinds the simulator reconciles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum Kind {
    Node,
    Pod,
    ReplicaSet,
    Deployment,
    StatefulSet,
    DaemonSet,
    Job,
    CronJob,
    Service,
    Pvc,
    Pv,
}

const ALL_KINDS: [Kind; 11] = [
    Kind::Node,
    Kind::Pod,
    Kind::ReplicaSet,
    Kind::Deployment,
    Kind::StatefulSet,
    Kind::DaemonSet,
    Kind::Job,
    Kind::CronJob,
    Kind::Service,
    Kind::Pvc,
    Kind::Pv,
];

pub(super) fn gr(group: &str, resource: &str) -> GroupResource {
    GroupResource {
        group: group.into(),
        resource: resource.into(),
    }
}

impl Kind {
    fn gr(self) -> GroupResource {
        match self {
            Kind::Node => gr("", "nodes"),
            Kind::Pod => gr("", "pods"),
            Kind::ReplicaSet => gr("apps", "replicasets"),
            Kind::Deployment => gr("apps", "deployments"),
            Kind::StatefulSet => gr("apps", "statefulsets"),
            Kind::DaemonSet => gr("apps", "daemonsets"),
            Kind::Job => gr("batch", "jobs"),
            Kind::CronJob => gr("batch", "cronjobs"),
            Kind::Service => gr("", "services"),
            Kind::Pvc => gr("", "persistentvolumeclaims"),
            Kind::Pv => gr("", "persistentvolumes"),
        }
    }

    fn from_gr(g: &GroupResource) -> Option<Kind> {
        ALL_KINDS.into_iter().find(|k| k.gr() == *g)
    }

    /// The kind an ownerReference names.
    fn from_owner(api_version: &str, kind: &str) -> Option<Kind> {
        match (api_version.split('/').next().unwrap_or_default(), kind) {
            ("apps", "ReplicaSet") => Some(Kind::ReplicaSet),
            ("apps", "Deployment") => Some(Kind::Deployment),
            ("apps", "StatefulSet") => Some(Kind::StatefulSet),
            ("apps", "DaemonSet") => Some(Kind::DaemonSet),
            ("batch", "Job") => Some(Kind::Job),
            ("batch", "CronJob") => Some(Kind::CronJob),
            _ => None,
        }
    }
}

/// One object to reconcile: kind, namespace, name.
pub(super) type Key = (Kind, String, String);

/// Who a simulated component writes as: user and User-Agent (the field manager is the User-Agent
/// up to its first `/`, as for any client).
#[derive(Debug, Clone)]
pub(super) struct Actor {
    user: String,
    agent: String,
}

impl Actor {
    /// A kube-controller-manager controller, like `deployment-controller`.
    pub(super) fn controller(name: &str) -> Self {
        Actor {
            user: format!("system:serviceaccount:kube-system:{name}"),
            agent: format!(
                "kube-controller-manager/{COMPONENT_VERSION} (linux/amd64) kubernetes/crwatch/system:serviceaccount:kube-system:{name}"
            ),
        }
    }

    pub(super) fn scheduler() -> Self {
        Actor {
            user: "system:kube-scheduler".into(),
            agent: format!("kube-scheduler/{COMPONENT_VERSION} (linux/amd64) kubernetes/crwatch/scheduler"),
        }
    }

    pub(super) fn kubelet(node: &str) -> Self {
        Actor {
            user: format!("system:node:{node}"),
            agent: format!("kubelet/{COMPONENT_VERSION} (linux/amd64) kubernetes/crwatch"),
        }
    }
}

/// The simulator's state: everything here is rebuilt from the store by [`Sim::resync`].
pub(super) struct Sim {
    pub(super) api: Arc<Api>,
    pub(super) cfg: SimConfig,
    faults: Arc<SimFaults>,
    /// The fault set as last applied.
    fault_set: FaultSet,
    queue: BTreeSet<Key>,
    timers: BTreeSet<(Instant, Key)>,
    timer_of: HashMap<Key, Instant>,
    defs: HashMap<GroupResource, Arc<ResourceDef>>,
    pub(super) kubelet: kubelet::KubeletState,
    /// (kind, namespace, name) → resourceVersion of workloads whose bad selector was reported.
    reported_selectors: HashMap<(String, String, String), String>,
}

/// Start the simulator on its own task until `stop` fires. `fresh`: the store was empty (the
/// Nodes and the default StorageClass are created only then, so what a user deleted stays
/// deleted across restarts).
pub(crate) fn spawn(api: Arc<Api>, cfg: SimConfig, fresh: bool, stop: CancellationToken) {
    let faults = api.faults.sim.clone();
    faults.enabled.store(true, Ordering::Relaxed);
    let mut rx = api.store.subscribe();
    let mut sim = Sim {
        api,
        cfg,
        faults: faults.clone(),
        fault_set: FaultSet::default(),
        queue: BTreeSet::new(),
        timers: BTreeSet::new(),
        timer_of: HashMap::new(),
        defs: HashMap::new(),
        kubelet: kubelet::KubeletState::default(),
        reported_selectors: HashMap::new(),
    };
    tokio::spawn(async move {
        if fresh {
            sim.bootstrap().await;
        }
        sim.resync();
        loop {
            sim.drain(&stop).await;
            let next = sim.timers.first().map(|(t, _)| *t);
            let timer = async move {
                match next {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                _ = faults.changed.notified() => sim.faults_changed(),
                ev = rx.recv() => match ev {
                    Ok(ev) => {
                        sim.route(&ev);
                        // Take what else is waiting before reconciling: one pass for many events.
                        for _ in 0..10_000 {
                            match rx.try_recv() {
                                Ok(ev) => sim.route(&ev),
                                Err(TryRecvError::Lagged(_)) => sim.resync(),
                                Err(_) => break,
                            }
                        }
                    }
                    Err(RecvError::Lagged(_)) => sim.resync(),
                    Err(RecvError::Closed) => return,
                },
                _ = timer => sim.fire_timers(),
            }
        }
    });
}

impl Sim {
    pub(super) fn enqueue(&mut self, key: Key) {
        if self.queue.len() >= MAX_QUEUE {
            self.resync();
            return;
        }
        self.queue.insert(key);
    }

    pub(super) fn enqueue_kind(&mut self, kind: Kind, ns: &str, name: &str) {
        self.enqueue((kind, ns.to_string(), name.to_string()));
    }

    /// Reconcile `key` again at `at` (the earliest of the deadlines asked for wins).
    pub(super) fn requeue_at(&mut self, key: Key, at: Instant) {
        if let Some(old) = self.timer_of.get(&key) {
            if *old <= at {
                return;
            }
            self.timers.remove(&(*old, key.clone()));
        }
        if self.timers.len() >= MAX_QUEUE {
            // Falling that far behind: every object is looked at again, and sets its timers anew.
            self.timers.clear();
            self.timer_of.clear();
            self.resync();
            return;
        }
        self.timers.insert((at, key.clone()));
        self.timer_of.insert(key, at);
    }

    pub(super) fn requeue_after(&mut self, key: Key, after: Duration) {
        self.requeue_at(key, Instant::now() + after);
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        while let Some((t, _)) = self.timers.first() {
            if *t > now {
                break;
            }
            if let Some((_, key)) = self.timers.pop_first() {
                self.timer_of.remove(&key);
                self.queue.insert(key);
            }
        }
    }

    /// Queue every object the simulator looks after.
    pub(super) fn resync(&mut self) {
        self.queue.clear();
        self.kubelet.rebuild(&self.api);
        for kind in ALL_KINDS {
            let (objs, _) = self.api.store.list(&kind.gr(), None);
            for o in objs {
                self.queue.insert((
                    kind,
                    meta_str(&o, "namespace").to_string(),
                    meta_str(&o, "name").to_string(),
                ));
            }
        }
    }

    fn faults_changed(&mut self) {
        let next = self.faults.snapshot();
        let old = std::mem::replace(&mut self.fault_set, next.clone());
        for (ns, name) in old
            .crash_looping
            .symmetric_difference(&next.crash_looping)
            .chain(old.unready.symmetric_difference(&next.unready))
        {
            self.enqueue_kind(Kind::Pod, ns, name);
        }
        for node in old.nodes_not_ready.symmetric_difference(&next.nodes_not_ready) {
            self.enqueue_kind(Kind::Node, "", node);
            for pod in self.kubelet.pods_on(node) {
                self.enqueue(pod);
            }
        }
    }

    /// Which objects a change concerns.
    fn route(&mut self, ev: &Event) {
        let g = &ev.gr;
        // Changes of other resources concern nothing simulated: not even parsed.
        let concerned = Kind::from_gr(g).is_some()
            || matches!(
                (g.group.as_str(), g.resource.as_str()),
                (
                    "",
                    "pods" | "nodes" | "endpoints" | "persistentvolumes" | "persistentvolumeclaims"
                ) | ("discovery.k8s.io", "endpointslices")
                    | ("storage.k8s.io", "storageclasses")
            );
        if !concerned {
            return;
        }
        let object = ev.object.value();
        let obj = &*object;
        let (ns, name) = ev.key.clone();
        // The version before matters only to the kinds simulated and to Pods.
        let prev = (Kind::from_gr(g).is_some() || (g.group.is_empty() && g.resource == "pods"))
            .then(|| ev.prev.as_ref().map(|p| p.value()))
            .flatten();
        if let Some(kind) = Kind::from_gr(&ev.gr) {
            self.enqueue((kind, ns.clone(), name.clone()));
            // The controllers of the object, before and after (an adoption or release moves it).
            for o in std::iter::once(obj).chain(prev.as_deref()) {
                if let Some((k, owner)) = controller_of(o) {
                    self.enqueue((k, ns.clone(), owner));
                }
            }
        }
        match (g.group.as_str(), g.resource.as_str()) {
            ("", "pods") => {
                for svc in self.services_selecting(&ns, obj, prev.as_deref()) {
                    self.enqueue((Kind::Service, ns.clone(), svc));
                }
                if ev.kind == EventType::Deleted {
                    // Room on a Node: Pods waiting for one may fit now.
                    for p in self.kubelet.unschedulable() {
                        self.enqueue(p);
                    }
                }
            }
            ("", "nodes") => {
                for kind in [Kind::DaemonSet] {
                    let (objs, _) = self.api.store.list(&kind.gr(), None);
                    for o in objs {
                        self.enqueue((
                            kind,
                            meta_str(&o, "namespace").into(),
                            meta_str(&o, "name").into(),
                        ));
                    }
                }
                for p in self
                    .kubelet
                    .pods_on(&name)
                    .into_iter()
                    .chain(self.kubelet.unschedulable())
                {
                    self.enqueue(p);
                }
            }
            ("discovery.k8s.io", "endpointslices") => {
                if let Some(svc) = obj
                    .pointer("/metadata/labels/kubernetes.io~1service-name")
                    .and_then(Value::as_str)
                {
                    self.enqueue((Kind::Service, ns.clone(), svc.to_string()));
                }
            }
            ("", "endpoints") => self.enqueue((Kind::Service, ns.clone(), name.clone())),
            ("", "persistentvolumes") => {
                if let Some(claim) = volumes::claim_ref(obj) {
                    let cns = claim.get("namespace").and_then(Value::as_str).unwrap_or_default();
                    let cname = claim.get("name").and_then(Value::as_str).unwrap_or_default();
                    self.enqueue((Kind::Pvc, cns.to_string(), cname.to_string()));
                }
            }
            ("", "persistentvolumeclaims") => {
                // Pods waiting for their claims to be bound may be scheduled now.
                for p in self.kubelet.unschedulable() {
                    self.enqueue(p);
                }
                if let Some(pv) = obj.pointer("/spec/volumeName").and_then(Value::as_str) {
                    self.enqueue((Kind::Pv, String::new(), pv.to_string()));
                }
            }
            ("storage.k8s.io", "storageclasses") => {
                let (objs, _) = self.api.store.list(&Kind::Pvc.gr(), None);
                for o in objs {
                    self.enqueue((
                        Kind::Pvc,
                        meta_str(&o, "namespace").into(),
                        meta_str(&o, "name").into(),
                    ));
                }
            }
            _ => {}
        }
    }

    /// Services in `ns` whose selector matches the Pod now or before the change.
    fn services_selecting(&self, ns: &str, pod: &Value, prev: Option<&Value>) -> Vec<String> {
        let (svcs, _) = self.api.store.list(&Kind::Service.gr(), Some(ns));
        svcs.iter()
            .filter(|s| {
                let Some(sel) = s.pointer("/spec/selector").and_then(Value::as_object) else {
                    return false;
                };
                if sel.is_empty() {
                    return false;
                }
                let matches = |p: &Value| {
                    let labels = labels_of(p);
                    sel.iter()
                        .all(|(k, v)| labels.get(k).map(String::as_str) == v.as_str())
                };
                matches(pod) || prev.is_some_and(matches)
            })
            .map(|s| meta_str(s, "name").to_string())
            .collect()
    }

    /// Process the queue (yielding now and then so that the task shares its thread).
    async fn drain(&mut self, stop: &CancellationToken) {
        let mut done = 0usize;
        while let Some(key) = self.queue.pop_first() {
            if stop.is_cancelled() {
                return;
            }
            let res = self.reconcile(&key).await;
            if let Err(e) = res {
                tracing::debug!(kind = ?key.0, namespace = %key.1, name = %key.2, error = %e.message, "workload simulator: retrying");
                self.requeue_after(key, RETRY);
            }
            done += 1;
            if done.is_multiple_of(64) {
                tokio::task::yield_now().await;
            }
        }
    }

    async fn reconcile(&mut self, key: &Key) -> ApiResult<()> {
        let (kind, ns, name) = (key.0, key.1.as_str(), key.2.as_str());
        match kind {
            Kind::Node => self.sync_node(name).await,
            Kind::Pod => self.sync_pod(ns, name).await,
            Kind::ReplicaSet => self.sync_replicaset(ns, name).await,
            Kind::Deployment => self.sync_deployment(ns, name).await,
            Kind::StatefulSet => self.sync_statefulset(ns, name).await,
            Kind::DaemonSet => self.sync_daemonset(ns, name).await,
            Kind::Job => self.sync_job(ns, name).await,
            Kind::CronJob => self.sync_cronjob(ns, name).await,
            Kind::Service => self.sync_service(ns, name).await,
            Kind::Pvc => self.sync_pvc(ns, name).await,
            Kind::Pv => self.sync_pv(name).await,
        }
    }

    // ---- reading and writing -------------------------------------------------------------

    pub(super) fn get(&self, kind: Kind, ns: &str, name: &str) -> Option<Arc<Value>> {
        self.api
            .store
            .get(&kind.gr(), &(ns.to_string(), name.to_string()))
    }

    pub(super) fn get_gr(&self, g: &GroupResource, ns: &str, name: &str) -> Option<Arc<Value>> {
        self.api.store.get(g, &(ns.to_string(), name.to_string()))
    }

    pub(super) fn list(&self, kind: Kind, ns: Option<&str>) -> Vec<Arc<Value>> {
        self.api.store.list(&kind.gr(), ns).0
    }

    /// Objects of `kind` in `ns` whose controller is the object with `uid`.
    pub(super) fn owned(&self, kind: Kind, ns: &str, uid: &str) -> Vec<Arc<Value>> {
        self.list(kind, Some(ns))
            .into_iter()
            .filter(|o| controller_uid(o) == Some(uid))
            .collect()
    }

    fn def(&mut self, g: &GroupResource) -> ApiResult<Arc<ResourceDef>> {
        if let Some(d) = self.defs.get(g) {
            return Ok(d.clone());
        }
        let d = self
            .api
            .registry()
            .storage(g)
            .ok_or_else(|| ApiError::not_found(&g.group, &g.resource, ""))?;
        self.defs.insert(g.clone(), d.clone());
        Ok(d)
    }

    fn ctx(&mut self, g: &GroupResource, ns: &str, name: &str, sub: &str, who: &Actor) -> ApiResult<Ctx> {
        Ok(Ctx {
            def: self.def(g)?,
            namespace: ns.to_string(),
            name: name.to_string(),
            sub: sub.to_string(),
            params: Params(HashMap::new()),
            user_agent: who.agent.clone(),
            user: who.user.clone(),
        })
    }

    fn body(def: &ResourceDef, obj: &Value) -> Vec<u8> {
        let mut o = obj.clone();
        o["apiVersion"] = json!(def.api_version());
        o["kind"] = json!(def.kind);
        serde_json::to_vec(&o).unwrap_or_default()
    }

    /// Create an object (a `generateName` is honoured by the server).
    pub(super) async fn create(
        &mut self,
        g: &GroupResource,
        ns: &str,
        obj: &Value,
        who: &Actor,
    ) -> ApiResult<Value> {
        let ctx = self.ctx(g, ns, "", "", who)?;
        let body = Self::body(&ctx.def, obj);
        Ok(self.api.create(&ctx, &body).await?.body)
    }

    /// Replace an object (`sub`: "" or "status"); `obj` carries the resourceVersion it was
    /// computed from, so a concurrent write makes this a conflict (retried).
    pub(super) async fn update(
        &mut self,
        g: &GroupResource,
        obj: &Value,
        sub: &str,
        who: &Actor,
    ) -> ApiResult<Value> {
        let ctx = self.ctx(g, meta_str(obj, "namespace"), meta_str(obj, "name"), sub, who)?;
        let body = Self::body(&ctx.def, obj);
        Ok(self.api.update(&ctx, &body).await?.body)
    }

    /// Write `next` as the status of `cur` when it differs.
    pub(super) async fn put_status(
        &mut self,
        kind: Kind,
        cur: &Value,
        status: Value,
        who: &Actor,
    ) -> ApiResult<()> {
        if cur.get("status") == Some(&status) {
            return Ok(());
        }
        let mut next = cur.clone();
        next["status"] = status;
        self.update(&kind.gr(), &next, "status", who).await.map(|_| ())
    }

    /// Delete an object with the given options (a uid precondition keeps a recreated namesake).
    pub(super) async fn delete(
        &mut self,
        g: &GroupResource,
        obj: &Value,
        mut opts: Value,
        who: &Actor,
    ) -> ApiResult<()> {
        let ctx = self.ctx(g, meta_str(obj, "namespace"), meta_str(obj, "name"), "", who)?;
        opts["preconditions"] = json!({"uid": meta_str(obj, "uid")});
        let body = serde_json::to_vec(&opts).unwrap_or_default();
        match self.api.delete(&ctx, &body).await {
            Ok(_) => Ok(()),
            // Gone already, or a namesake: nothing to do.
            Err(e) if e.code == 404 || e.code == 409 => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Record an Event about `obj`, as the component's event recorder does (failures are only
    /// logged: events are best effort on a real cluster too).
    pub(super) async fn event(
        &mut self,
        obj: &Value,
        type_: &str,
        reason: &str,
        message: &str,
        component: &str,
    ) {
        let ns = match meta_str(obj, "namespace") {
            "" => "default",
            ns => ns,
        }
        .to_string();
        let now = meta::now();
        let nanos = chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default();
        let ev = json!({
            "metadata": {
                "name": format!("{}.{:x}", meta_str(obj, "name"), nanos),
                "namespace": ns,
            },
            "involvedObject": {
                "kind": obj.get("kind").cloned().unwrap_or(Value::Null),
                "namespace": obj.pointer("/metadata/namespace").cloned().unwrap_or(Value::Null),
                "name": meta_str(obj, "name"),
                "uid": meta_str(obj, "uid"),
                "apiVersion": obj.get("apiVersion").cloned().unwrap_or(Value::Null),
                "resourceVersion": meta_str(obj, "resourceVersion"),
            },
            "reason": reason,
            "message": message,
            "source": {"component": component},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "type": type_,
            "eventTime": null,
            "reportingComponent": component,
            "reportingInstance": "",
        });
        let who = if component == "default-scheduler" {
            Actor::scheduler()
        } else {
            Actor::controller(component)
        };
        if let Err(e) = self.create(&gr("", "events"), &ns, &ev, &who).await {
            tracing::debug!(error = %e.message, "workload simulator: event not recorded");
        }
    }
}

// ---- helpers shared by the controllers ------------------------------------------------------

/// The controller ownerReference's kind and name, if it names a kind the simulator runs.
pub(super) fn controller_of(obj: &Value) -> Option<(Kind, String)> {
    let r = controller_ref(obj)?;
    let kind = Kind::from_owner(
        r.get("apiVersion").and_then(Value::as_str).unwrap_or_default(),
        r.get("kind").and_then(Value::as_str).unwrap_or_default(),
    )?;
    Some((kind, r.get("name").and_then(Value::as_str)?.to_string()))
}

pub(super) fn controller_ref(obj: &Value) -> Option<&Value> {
    obj.pointer("/metadata/ownerReferences")?
        .as_array()?
        .iter()
        .find(|r| r.get("controller").and_then(Value::as_bool) == Some(true))
}

pub(super) fn controller_uid(obj: &Value) -> Option<&str> {
    controller_ref(obj)?.get("uid").and_then(Value::as_str)
}

/// The ownerReference a controller puts on what it creates.
pub(super) fn owner_ref(owner: &Value, api_version: &str, kind: &str) -> Value {
    json!({
        "apiVersion": api_version,
        "kind": kind,
        "name": meta_str(owner, "name"),
        "uid": meta_str(owner, "uid"),
        "controller": true,
        "blockOwnerDeletion": true,
    })
}

pub(super) fn is_deleting(obj: &Value) -> bool {
    !meta_str(obj, "deletionTimestamp").is_empty()
}

pub(super) fn i64_at(obj: &Value, pointer: &str) -> Option<i64> {
    obj.pointer(pointer).and_then(Value::as_i64)
}

pub(super) fn str_at<'a>(obj: &'a Value, pointer: &str) -> &'a str {
    obj.pointer(pointer).and_then(Value::as_str).unwrap_or_default()
}

/// A Pod's phase.
pub(super) fn phase(pod: &Value) -> &str {
    str_at(pod, "/status/phase")
}

/// Not deleting and not finished: what a ReplicaSet or Job counts as active.
pub(super) fn is_active(pod: &Value) -> bool {
    !is_deleting(pod) && !matches!(phase(pod), "Succeeded" | "Failed")
}

pub(super) fn condition<'a>(obj: &'a Value, type_: &str) -> Option<&'a Value> {
    obj.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(type_))
}

pub(super) fn is_ready(pod: &Value) -> bool {
    condition(pod, "Ready")
        .and_then(|c| c.get("status"))
        .and_then(Value::as_str)
        == Some("True")
}

/// When the Pod became Ready.
pub(super) fn ready_since(pod: &Value) -> Option<chrono::DateTime<chrono::Utc>> {
    let c = condition(pod, "Ready")?;
    if c.get("status").and_then(Value::as_str) != Some("True") {
        return None;
    }
    let t = c.get("lastTransitionTime").and_then(Value::as_str)?;
    chrono::DateTime::parse_from_rfc3339(t)
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}

/// Whether the Pod is available (Ready for `min_ready` seconds), and if it will be later,
/// how long until then.
pub(super) fn available(pod: &Value, min_ready: i64) -> (bool, Option<Duration>) {
    if !is_ready(pod) || is_deleting(pod) {
        return (false, None);
    }
    if min_ready <= 0 {
        return (true, None);
    }
    let Some(since) = ready_since(pod) else {
        return (false, None);
    };
    let at = since + chrono::Duration::seconds(min_ready);
    let now = chrono::Utc::now();
    if at <= now {
        (true, None)
    } else {
        let wait = (at - now).to_std().unwrap_or_default() + Duration::from_millis(50);
        (false, Some(wait))
    }
}

/// A label selector of a workload; `None` (with the reason) for one the controllers refuse.
pub(super) fn selector_of(obj: &Value) -> Result<LabelSelector, String> {
    let sel = obj.pointer("/spec/selector").cloned().unwrap_or(Value::Null);
    LabelSelector::from_object(&sel).map_err(|e| e.0)
}

/// Set a condition of the kinds with `lastUpdateTime` (Deployments) or `lastProbeTime` (Jobs,
/// Pods, Nodes), keeping `lastTransitionTime` unless the status changes. Returns whether
/// anything changed.
pub(super) fn set_condition(
    conds: &mut Vec<Value>,
    type_: &str,
    status: &str,
    reason: Option<&str>,
    message: Option<&str>,
    style: CondStyle,
) -> bool {
    let now = meta::now();
    let at = conds
        .iter()
        .position(|c| c.get("type").and_then(Value::as_str) == Some(type_));
    let old = at.map(|i| conds[i].clone());
    let same_status = old
        .as_ref()
        .is_some_and(|c| c.get("status").and_then(Value::as_str) == Some(status));
    let same = same_status
        && old.as_ref().is_some_and(|c| {
            c.get("reason").and_then(Value::as_str) == reason
                && c.get("message").and_then(Value::as_str) == message
        });
    if same {
        return false;
    }
    let transition = if same_status {
        old.as_ref()
            .and_then(|c| c.get("lastTransitionTime").cloned())
            .unwrap_or(json!(now))
    } else {
        json!(now)
    };
    let mut c = serde_json::Map::new();
    c.insert("type".into(), json!(type_));
    c.insert("status".into(), json!(status));
    match style {
        CondStyle::Update => {
            c.insert("lastUpdateTime".into(), json!(now));
        }
        CondStyle::Probe => {
            c.insert("lastProbeTime".into(), Value::Null);
        }
        CondStyle::ProbeNow => {
            c.insert("lastProbeTime".into(), json!(now));
        }
    }
    c.insert("lastTransitionTime".into(), transition);
    if let Some(r) = reason {
        c.insert("reason".into(), json!(r));
    }
    if let Some(m) = message {
        c.insert("message".into(), json!(m));
    }
    match at {
        Some(i) => conds[i] = Value::Object(c),
        None => conds.push(Value::Object(c)),
    }
    true
}

/// Which time fields a condition type carries.
#[derive(Debug, Clone, Copy)]
pub(super) enum CondStyle {
    /// `lastUpdateTime` (apps conditions).
    Update,
    /// `lastProbeTime: null` (Pods).
    Probe,
    /// `lastProbeTime` set to now (Jobs).
    ProbeNow,
}

/// The conditions of an object's status, as a vector to edit.
pub(super) fn conditions_of(obj: &Value) -> Vec<Value> {
    obj.pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// 32-bit FNV-1a, the hash the real controllers name templates by.
pub(super) fn fnv32a(data: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in data {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// `rand.SafeEncodeString`: each byte mapped onto the alphabet generated names use (no vowels,
/// no look-alike characters), so a hash never spells words.
pub(super) fn safe_encode(s: &str) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    s.bytes()
        .map(|b| ALPHABET[usize::from(b) % ALPHABET.len()] as char)
        .collect()
}

/// JSON with object keys sorted, so a hash does not depend on the order fields were sent in.
fn canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            out.push('{');
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical(&m[k], out);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(x, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// The name-safe hash of a pod template (and collision count), like `pod-template-hash` values.
pub(super) fn template_hash(template: &Value, collision_count: Option<i64>) -> String {
    let mut s = String::new();
    canonical(template, &mut s);
    let mut bytes = s.into_bytes();
    if let Some(c) = collision_count {
        bytes.extend_from_slice(&(c as u32).to_le_bytes());
    }
    safe_encode(&fnv32a(&bytes).to_string())
}

/// `intstr.GetScaledValueFromIntOrPercent`: an int, or a percentage of `total` rounded up or down.
pub(super) fn scaled_value(
    v: Option<&Value>,
    total: i64,
    round_up: bool,
    default: &str,
) -> Result<i64, String> {
    let v = v.cloned().unwrap_or_else(|| json!(default));
    match &v {
        Value::Number(n) => n
            .as_i64()
            .ok_or_else(|| format!("invalid value for IntOrString: {n}")),
        Value::String(s) => {
            let pct = s
                .strip_suffix('%')
                .and_then(|p| p.parse::<i64>().ok())
                .ok_or_else(|| {
                    "invalid value for IntOrString: invalid type: string is not a percentage".to_string()
                })?;
            let scaled = pct.saturating_mul(total);
            Ok(if round_up {
                (scaled + 99).div_euclid(100)
            } else {
                scaled.div_euclid(100)
            })
        }
        Value::Null => Ok(0),
        _ => Err("invalid value for IntOrString: invalid type: neither int nor percentage".into()),
    }
}

/// A Pod made from a template, as the controllers build them (`GetPodFromTemplate`).
pub(super) fn pod_from_template(template: &Value, owner_ref: Value, generate_name: &str) -> Value {
    let mut pod = json!({
        "metadata": {
            "generateName": generate_name,
            "ownerReferences": [owner_ref],
        },
        "spec": template.get("spec").cloned().unwrap_or(json!({})),
    });
    for field in ["labels", "annotations", "finalizers"] {
        if let Some(v) = template.pointer(&format!("/metadata/{field}"))
            && !v.is_null()
        {
            pod["metadata"][field] = v.clone();
        }
    }
    pod
}

/// Whether Sim writes should be attempted at all for this kind (it is served).
pub(super) fn served(api: &Api, g: &GroupResource) -> bool {
    api.registry().storage(g).is_some()
}

/// Graceful deletion of Pods, as the real server does it while kubelets run: a Pod bound to a
/// Node and not finished gets `deletionTimestamp` (now plus its grace period) and stays, until
/// the simulated kubelet stops its containers and deletes it with grace period 0. `None`: delete
/// as usual.
pub(crate) fn graceful_pod_delete(api: &Api, def: &ResourceDef, cur: &Value, opts: &Value) -> Option<Value> {
    if !(def.group.is_empty() && def.kind == "Pod" && api.faults.sim.enabled.load(Ordering::Relaxed)) {
        return None;
    }
    let grace = opts
        .get("gracePeriodSeconds")
        .and_then(Value::as_i64)
        .or_else(|| i64_at(cur, "/spec/terminationGracePeriodSeconds"))
        .unwrap_or(30);
    // As the real strategy: unscheduled or finished Pods go at once, and so does grace 0.
    if grace <= 0 || str_at(cur, "/spec/nodeName").is_empty() || matches!(phase(cur), "Succeeded" | "Failed")
    {
        return None;
    }
    let mut next = cur.clone();
    if is_deleting(cur) {
        // A second delete may only shorten the grace period.
        let old = i64_at(cur, "/metadata/deletionGracePeriodSeconds").unwrap_or(grace);
        if grace >= old {
            return Some(next);
        }
    }
    let at = chrono::Utc::now() + chrono::Duration::seconds(grace);
    meta::set_meta(
        &mut next,
        "deletionTimestamp",
        json!(at.format("%Y-%m-%dT%H:%M:%SZ").to_string()),
    );
    meta::set_meta(&mut next, "deletionGracePeriodSeconds", json!(grace));
    Some(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_encoding_and_hashes_look_like_the_real_ones() {
        // FNV-1a test vectors.
        assert_eq!(fnv32a(b""), 0x811c_9dc5);
        assert_eq!(fnv32a(b"a"), 0xe40c_292c);
        assert_eq!(safe_encode("0123456789"), "456789bcdf");
        let t = json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "nginx"}]}});
        let reordered = json!({"spec": {"containers": [{"image": "nginx", "name": "c"}]}, "metadata": {"labels": {"app": "web"}}});
        let h = template_hash(&t, None);
        assert_eq!(h, template_hash(&reordered, None));
        assert_ne!(h, template_hash(&t, Some(1)));
        assert!(h.len() <= 10 && h.chars().all(|c| c.is_ascii_alphanumeric()));
    }

    #[test]
    fn int_or_percent_rounds_as_the_real_controller() {
        // maxSurge rounds up, maxUnavailable down.
        assert_eq!(scaled_value(Some(&json!("25%")), 10, true, "25%"), Ok(3));
        assert_eq!(scaled_value(Some(&json!("25%")), 10, false, "25%"), Ok(2));
        assert_eq!(scaled_value(None, 4, true, "25%"), Ok(1));
        assert_eq!(scaled_value(Some(&json!(2)), 10, true, "25%"), Ok(2));
        assert!(scaled_value(Some(&json!("x%")), 10, true, "25%").is_err());
        assert!(scaled_value(Some(&json!(true)), 10, true, "25%").is_err());
    }

    #[test]
    fn conditions_keep_their_transition_time_unless_the_status_changes() {
        let mut c = vec![];
        assert!(set_condition(
            &mut c,
            "Available",
            "True",
            Some("A"),
            Some("m"),
            CondStyle::Update
        ));
        assert!(!set_condition(
            &mut c,
            "Available",
            "True",
            Some("A"),
            Some("m"),
            CondStyle::Update
        ));
        let t = c[0]["lastTransitionTime"].clone();
        assert!(set_condition(
            &mut c,
            "Available",
            "True",
            Some("B"),
            Some("m"),
            CondStyle::Update
        ));
        assert_eq!(c[0]["lastTransitionTime"], t);
        assert_eq!(c.len(), 1);
        let keys: Vec<&String> = c[0].as_object().unwrap().keys().collect();
        assert!(keys.contains(&&"lastUpdateTime".to_string()));
    }

    #[test]
    fn config_is_range_checked() {
        assert!(SimConfig::default().check().is_ok());
        let bad = SimConfig {
            nodes: 101,
            ..SimConfig::default()
        };
        assert!(bad.check().unwrap_err().contains("between 0 and 100"));
        let bad = SimConfig {
            pod_ready_delay: Duration::from_secs(7200),
            ..SimConfig::default()
        };
        assert!(bad.check().is_err());
        let bad = SimConfig {
            max_pods_per_node: 0,
            ..SimConfig::default()
        };
        assert!(bad.check().is_err());
    }
}
