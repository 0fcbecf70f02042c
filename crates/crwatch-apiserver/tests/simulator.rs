//! The workload simulator against the in-process server, through a kube-rs client as an
//! operator would see it: Deployments roll out (and roll over within maxSurge), StatefulSets
//! create ordered Pods and bound PVCs, Jobs complete or fail, Services get EndpointSlices and
//! Endpoints, the fault handle's crash loops, unready Pods and NotReady Nodes show, and the
//! simulator converges after a restart from a state file without writing in a loop.

use std::future::Future;
use std::time::Duration;

use crwatch_apiserver::{ApiServer, Config, SimConfig, TestServer};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Endpoints, Node, PersistentVolume, PersistentVolumeClaim, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(30);

fn fast() -> Config {
    Config {
        bookmark_interval: Duration::from_secs(1),
        sim: SimConfig {
            pod_ready_delay: Duration::from_millis(50),
            job_pod_duration: Duration::from_millis(200),
            pod_termination_delay: Duration::from_millis(50),
            ..SimConfig::default()
        },
        ..Config::default()
    }
}

/// Poll `f` until it returns `Some`, or fail after `TIMEOUT` with `what`.
async fn wait_for<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn j<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("a valid object")
}

fn deployment(name: &str, replicas: i32, image: &str) -> Deployment {
    j(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "web", "image": image, "ports": [{"name": "http", "containerPort": 8080}]}]},
            },
        },
    }))
}

fn v<T: serde::Serialize>(o: &T) -> Value {
    serde_json::to_value(o).expect("serializable")
}

fn cond<'a>(obj: &'a Value, t: &str) -> Option<&'a Value> {
    obj.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == t)
}

async fn pods_of(pods: &Api<Pod>, selector: &str) -> Vec<Value> {
    pods.list(&ListParams::default().labels(selector))
        .await
        .expect("list pods")
        .items
        .iter()
        .map(v)
        .collect()
}

#[tokio::test]
async fn a_deployment_rolls_out_and_rolls_over() {
    let server = TestServer::with_config(fast()).await.expect("server");
    let client = server.client();
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let rss: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    deploys
        .create(&PostParams::default(), &deployment("web", 3, "nginx:1.27"))
        .await
        .expect("create");

    let d = wait_for("the deployment to be available", || async {
        let d = v(&deploys.get("web").await.ok()?);
        (d.pointer("/status/availableReplicas") == Some(&json!(3))
            && cond(&d, "Progressing").is_some_and(|c| c["reason"] == "NewReplicaSetAvailable"))
        .then_some(d)
    })
    .await;
    let status = &d["status"];
    assert_eq!(status["replicas"], 3);
    assert_eq!(status["readyReplicas"], 3);
    assert_eq!(status["updatedReplicas"], 3);
    assert_eq!(status["observedGeneration"], d["metadata"]["generation"]);
    let avail = cond(&d, "Available").expect("Available");
    assert_eq!(avail["status"], "True");
    assert_eq!(avail["reason"], "MinimumReplicasAvailable");
    assert_eq!(avail["message"], "Deployment has minimum availability.");
    assert!(avail.get("lastUpdateTime").is_some());
    assert_eq!(
        d["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "1"
    );

    let list = rss.list(&ListParams::default()).await.expect("rs list");
    assert_eq!(list.items.len(), 1);
    let rs = v(&list.items[0]);
    let hash = rs["metadata"]["labels"]["pod-template-hash"]
        .as_str()
        .expect("hash")
        .to_string();
    assert_eq!(rs["metadata"]["name"], format!("web-{hash}"));
    let progressing = cond(&d, "Progressing").expect("Progressing");
    assert_eq!(
        progressing["message"],
        format!("ReplicaSet \"web-{hash}\" has successfully progressed.")
    );
    let oref = &rs["metadata"]["ownerReferences"][0];
    assert_eq!(oref["kind"], "Deployment");
    assert_eq!(oref["controller"], true);
    assert_eq!(oref["blockOwnerDeletion"], true);
    let ann = &rs["metadata"]["annotations"];
    assert_eq!(ann["deployment.kubernetes.io/revision"], "1");
    assert_eq!(ann["deployment.kubernetes.io/desired-replicas"], "3");
    // 25% of 3 rounds up to 1 surge Pod.
    assert_eq!(ann["deployment.kubernetes.io/max-replicas"], "4");
    assert_eq!(rs["spec"]["selector"]["matchLabels"]["pod-template-hash"], hash);
    let managers: Vec<&str> = rs["metadata"]["managedFields"]
        .as_array()
        .expect("managedFields")
        .iter()
        .filter_map(|m| m["manager"].as_str())
        .collect();
    assert!(managers.contains(&"kube-controller-manager"), "{managers:?}");

    let ps = pods_of(&pods, "app=web").await;
    assert_eq!(ps.len(), 3);
    for p in &ps {
        let name = p["metadata"]["name"].as_str().expect("name");
        let suffix = name.strip_prefix(&format!("web-{hash}-")).expect("pod name");
        assert_eq!(suffix.len(), 5, "{name}");
        assert_eq!(p["metadata"]["ownerReferences"][0]["kind"], "ReplicaSet");
        assert_eq!(p["spec"]["nodeName"], "crwatch-node-0");
        assert_eq!(p["status"]["phase"], "Running");
        assert!(
            p["status"]["podIP"]
                .as_str()
                .expect("podIP")
                .starts_with("10.244.0.")
        );
        let cs = &p["status"]["containerStatuses"][0];
        assert_eq!(cs["ready"], true);
        assert_eq!(cs["started"], true);
        assert_eq!(cs["image"], "docker.io/library/nginx:1.27");
        assert!(
            cs["containerID"]
                .as_str()
                .expect("containerID")
                .starts_with("containerd://")
        );
        assert!(cs["state"]["running"]["startedAt"].is_string());
        let types: Vec<&str> = p["status"]["conditions"]
            .as_array()
            .expect("conditions")
            .iter()
            .filter_map(|c| c["type"].as_str())
            .collect();
        assert_eq!(
            types,
            [
                "PodReadyToStartContainers",
                "Initialized",
                "Ready",
                "ContainersReady",
                "PodScheduled"
            ]
        );
    }

    // A new image: a second ReplicaSet takes over, the old one is scaled to zero.
    let patch =
        json!({"spec": {"template": {"spec": {"containers": [{"name": "web", "image": "nginx:1.28"}]}}}});
    deploys
        .patch("web", &PatchParams::default(), &Patch::Strategic(&patch))
        .await
        .expect("patch");
    let d = wait_for("the rollout to finish", || async {
        let d = v(&deploys.get("web").await.ok()?);
        let s = &d["status"];
        (s["observedGeneration"] == d["metadata"]["generation"]
            && s["updatedReplicas"] == 3
            && s["replicas"] == 3
            && s["availableReplicas"] == 3
            && cond(&d, "Progressing").is_some_and(|c| c["reason"] == "NewReplicaSetAvailable"))
        .then_some(d)
    })
    .await;
    assert_eq!(
        d["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "2"
    );
    let list = rss.list(&ListParams::default()).await.expect("rs list");
    assert_eq!(list.items.len(), 2);
    for rs in list.items.iter().map(v) {
        let replicas = rs["spec"]["replicas"].as_i64().expect("replicas");
        if rs["metadata"]["labels"]["pod-template-hash"] == hash {
            assert_eq!(replicas, 0);
            assert_eq!(
                rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
                "1"
            );
        } else {
            assert_eq!(replicas, 3);
            assert_eq!(
                rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
                "2"
            );
        }
    }
    wait_for("old pods to go", || async {
        let ps = pods_of(&pods, "app=web").await;
        (ps.len() == 3
            && ps.iter().all(|p| {
                p["spec"]["containers"][0]["image"] == "nginx:1.28" && p["status"]["phase"] == "Running"
            }))
        .then_some(())
    })
    .await;

    // Scale down.
    deploys
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"replicas": 1}})),
        )
        .await
        .expect("scale");
    wait_for("the scale down", || async {
        let d = v(&deploys.get("web").await.ok()?);
        let n = pods_of(&pods, "app=web").await.len();
        (d["status"]["replicas"] == 1 && d["status"]["availableReplicas"] == 1 && n == 1).then_some(())
    })
    .await;
    server.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_rolling_update_never_exceeds_max_surge_or_max_unavailable() {
    let server = TestServer::with_config(fast()).await.expect("server");
    let client = server.client();
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let mut d = v(&deployment("surge", 4, "nginx:1"));
    d["spec"]["strategy"] =
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}});
    deploys
        .create(&PostParams::default(), &j(d))
        .await
        .expect("create");
    wait_for("ready", || async {
        let d = v(&deploys.get("surge").await.ok()?);
        (d["status"]["availableReplicas"] == 4).then_some(())
    })
    .await;
    let patch =
        json!({"spec": {"template": {"spec": {"containers": [{"name": "web", "image": "nginx:2"}]}}}});
    deploys
        .patch("surge", &PatchParams::default(), &Patch::Strategic(&patch))
        .await
        .expect("patch");
    // Sample while it rolls: never more than 5 Pods (4 + maxSurge 1) not terminating, never
    // fewer than 4 Ready ones (maxUnavailable 0).
    wait_for("the rollout with surge 1", || async {
        let ps = pods_of(&pods, "app=surge").await;
        let live: Vec<&Value> = ps
            .iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .collect();
        assert!(live.len() <= 5, "{} pods at once", live.len());
        let ready = live
            .iter()
            .filter(|p| cond(p, "Ready").is_some_and(|c| c["status"] == "True"))
            .count();
        assert!(ready >= 4, "only {ready} ready pods during the rollout");
        let d = v(&deploys.get("surge").await.ok()?);
        (d["status"]["updatedReplicas"] == 4
            && d["status"]["replicas"] == 4
            && d["status"]["availableReplicas"] == 4)
            .then_some(())
    })
    .await;
    server.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_statefulset_creates_ordered_pods_with_bound_claims() {
    let server = TestServer::with_config(fast()).await.expect("server");
    let client = server.client();
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "default");
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let set: StatefulSet = j(json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "db"},
        "spec": {
            "serviceName": "db",
            "replicas": 3,
            "selector": {"matchLabels": {"app": "db"}},
            "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [{"name": "pg", "image": "postgres:16"}]}},
            "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}],
        },
    }));
    sets.create(&PostParams::default(), &set).await.expect("create");
    let s = wait_for("3 ready replicas", || async {
        let s = v(&sets.get("db").await.ok()?);
        (s["status"]["readyReplicas"] == 3 && s["status"]["currentRevision"] == s["status"]["updateRevision"])
            .then_some(s)
    })
    .await;
    assert_eq!(s["status"]["replicas"], 3);
    assert_eq!(s["status"]["availableReplicas"], 3);
    assert_eq!(s["status"]["updatedReplicas"], 3);
    assert!(
        s["status"]["updateRevision"]
            .as_str()
            .expect("revision")
            .starts_with("db-")
    );
    // Ordered: each Pod was created after the previous one was Ready.
    let mut ps = pods_of(&pods, "app=db").await;
    ps.sort_by_key(|p| p["metadata"]["name"].as_str().unwrap_or_default().to_string());
    let names: Vec<&str> = ps.iter().filter_map(|p| p["metadata"]["name"].as_str()).collect();
    assert_eq!(names, ["db-0", "db-1", "db-2"]);
    for pair in ps.windows(2) {
        let ready_at = cond(&pair[0], "Ready").expect("Ready")["lastTransitionTime"]
            .as_str()
            .expect("time")
            .to_string();
        let created = pair[1]["metadata"]["creationTimestamp"]
            .as_str()
            .expect("time")
            .to_string();
        assert!(created >= ready_at, "{created} < {ready_at}");
    }
    for (i, p) in ps.iter().enumerate() {
        assert_eq!(p["spec"]["hostname"], format!("db-{i}"));
        assert_eq!(p["spec"]["subdomain"], "db");
        assert_eq!(
            p["metadata"]["labels"]["statefulset.kubernetes.io/pod-name"],
            format!("db-{i}")
        );
        assert_eq!(
            p["metadata"]["labels"]["controller-revision-hash"],
            s["status"]["updateRevision"]
        );
        let vol = p["spec"]["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .find(|v| v["name"] == "data")
            .expect("data volume");
        assert_eq!(vol["persistentVolumeClaim"]["claimName"], format!("data-db-{i}"));
    }
    let claims = wait_for("bound claims", || async {
        let list: Vec<Value> = pvcs
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .iter()
            .map(v)
            .collect();
        (list.len() == 3 && list.iter().all(|c| c["status"]["phase"] == "Bound")).then_some(list)
    })
    .await;
    for c in &claims {
        assert_eq!(c["spec"]["storageClassName"], "standard");
        assert_eq!(c["status"]["capacity"]["storage"], "1Gi");
        assert_eq!(c["metadata"]["labels"]["app"], "db");
        let pv = v(&pvs
            .get(c["spec"]["volumeName"].as_str().expect("volumeName"))
            .await
            .expect("pv"));
        assert_eq!(pv["status"]["phase"], "Bound");
        assert_eq!(pv["spec"]["claimRef"]["name"], c["metadata"]["name"]);
        assert_eq!(pv["spec"]["claimRef"]["uid"], c["metadata"]["uid"]);
    }
    // Scale down: the highest ordinals go, the claims stay (the default retention policy).
    sets.patch(
        "db",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"replicas": 1}})),
    )
    .await
    .expect("scale");
    wait_for("the scale down", || async {
        let names: Vec<String> = pods_of(&pods, "app=db")
            .await
            .iter()
            .filter_map(|p| p["metadata"]["name"].as_str().map(String::from))
            .collect();
        let s = v(&sets.get("db").await.ok()?);
        (names == ["db-0"] && s["status"]["replicas"] == 1 && s["status"]["readyReplicas"] == 1).then_some(())
    })
    .await;
    assert_eq!(
        pvcs.list(&ListParams::default()).await.expect("pvcs").items.len(),
        3
    );
    server.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn jobs_complete_or_fail_at_their_backoff_limit() {
    let server = TestServer::with_config(fast()).await.expect("server");
    let client = server.client();
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let job = |name: &str, completions: i32, backoff: i32| -> Job {
        j(json!({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name},
            "spec": {
                "completions": completions, "parallelism": 2, "backoffLimit": backoff,
                "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}},
            },
        }))
    };
    jobs.create(&PostParams::default(), &job("ok", 3, 6))
        .await
        .expect("create");
    let done = wait_for("the job to complete", || async {
        let jb = v(&jobs.get("ok").await.ok()?);
        cond(&jb, "Complete")
            .is_some_and(|c| c["status"] == "True")
            .then_some(jb)
    })
    .await;
    assert_eq!(done["status"]["succeeded"], 3);
    assert!(done["status"]["completionTime"].is_string());
    assert!(done["status"]["startTime"].is_string());
    assert_eq!(done["status"]["ready"], 0);
    let met = cond(&done, "SuccessCriteriaMet").expect("SuccessCriteriaMet");
    assert_eq!(met["reason"], "CompletionsReached");
    assert_eq!(met["message"], "Reached expected number of succeeded pods");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let ps = pods_of(&pods, "batch.kubernetes.io/job-name=ok").await;
    assert_eq!(ps.len(), 3);
    for p in &ps {
        assert_eq!(p["status"]["phase"], "Succeeded");
        assert_eq!(
            p["status"]["containerStatuses"][0]["state"]["terminated"]["reason"],
            "Completed"
        );
    }

    server.faults().fail_job_pods("default", "bad", 10);
    jobs.create(&PostParams::default(), &job("bad", 1, 1))
        .await
        .expect("create");
    let failed = wait_for("the job to fail", || async {
        let jb = v(&jobs.get("bad").await.ok()?);
        cond(&jb, "Failed")
            .is_some_and(|c| c["status"] == "True")
            .then_some(jb)
    })
    .await;
    let f = cond(&failed, "Failed").expect("Failed");
    assert_eq!(f["reason"], "BackoffLimitExceeded");
    assert_eq!(f["message"], "Job has reached the specified backoff limit");
    assert!(failed["status"]["failed"].as_i64().expect("failed") >= 2);
    assert!(cond(&failed, "Complete").is_none());
    server.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn services_get_endpoint_slices_and_faults_show_in_them() {
    let server = TestServer::with_config(fast()).await.expect("server");
    let client = server.client();
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let eps: Api<Endpoints> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    deploys
        .create(&PostParams::default(), &deployment("api", 2, "nginx"))
        .await
        .expect("create");
    let svc: Service = j(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "api"},
        "spec": {"selector": {"app": "api"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
    }));
    svcs.create(&PostParams::default(), &svc).await.expect("service");
    let slice = wait_for("two ready endpoints", || async {
        let list = slices
            .list(&ListParams::default().labels("kubernetes.io/service-name=api"))
            .await
            .ok()?;
        let s = v(list.items.first()?);
        let eps = s["endpoints"].as_array()?;
        (eps.len() == 2 && eps.iter().all(|e| e["conditions"]["ready"] == true)).then_some(s)
    })
    .await;
    assert!(
        slice["metadata"]["name"]
            .as_str()
            .expect("name")
            .starts_with("api-")
    );
    assert_eq!(
        slice["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"],
        "endpointslice-controller.k8s.io"
    );
    assert_eq!(slice["addressType"], "IPv4");
    assert_eq!(
        slice["ports"],
        json!([{"name": "http", "port": 8080, "protocol": "TCP"}])
    );
    assert_eq!(slice["metadata"]["ownerReferences"][0]["kind"], "Service");
    assert_eq!(slice["endpoints"][0]["targetRef"]["kind"], "Pod");
    assert_eq!(slice["endpoints"][0]["nodeName"], "crwatch-node-0");
    let ep = v(&eps.get("api").await.expect("endpoints"));
    assert_eq!(
        ep["subsets"][0]["addresses"].as_array().expect("addresses").len(),
        2
    );
    assert_eq!(
        ep["subsets"][0]["ports"],
        json!([{"name": "http", "port": 8080, "protocol": "TCP"}])
    );

    // One Pod fails its readiness probe: it is listed as not ready.
    let ps = pods_of(&pods, "app=api").await;
    let victim = ps[0]["metadata"]["name"].as_str().expect("name").to_string();
    server.faults().pod_unready("default", &victim, true);
    wait_for("a not-ready endpoint", || async {
        let ep = v(&eps.get("api").await.ok()?);
        let nr = ep["subsets"][0]["notReadyAddresses"].as_array()?;
        (nr.len() == 1 && nr[0]["targetRef"]["name"] == victim.as_str()).then_some(())
    })
    .await;
    wait_for("the deployment to count one unavailable", || async {
        let d = v(&deploys.get("api").await.ok()?);
        (d["status"]["availableReplicas"] == 1 && d["status"]["unavailableReplicas"] == 1).then_some(())
    })
    .await;
    server.faults().pod_unready("default", &victim, false);

    // A crash loop: restarts, CrashLoopBackOff, not Ready.
    server.faults().crash_loop_pod("default", &victim, true);
    let p = wait_for("a crash loop", || async {
        let p = v(&pods.get(&victim).await.ok()?);
        let cs = &p["status"]["containerStatuses"][0];
        (cs["state"]["waiting"]["reason"] == "CrashLoopBackOff" && cs["restartCount"].as_i64() >= Some(1))
            .then_some(p)
    })
    .await;
    assert_eq!(cond(&p, "Ready").expect("Ready")["status"], "False");
    assert_eq!(
        p["status"]["containerStatuses"][0]["lastState"]["terminated"]["reason"],
        "Error"
    );
    assert_eq!(p["status"]["phase"], "Running");
    server.faults().crash_loop_pod("default", &victim, false);
    wait_for("the pod to recover", || async {
        let p = v(&pods.get(&victim).await.ok()?);
        cond(&p, "Ready")
            .is_some_and(|c| c["status"] == "True")
            .then_some(())
    })
    .await;

    // The Node stops reporting: Ready Unknown, tainted, its Pods not Ready.
    server.faults().node_not_ready("crwatch-node-0", true);
    let nodes: Api<Node> = Api::all(client.clone());
    let n = wait_for("the node to go NotReady", || async {
        let n = v(&nodes.get("crwatch-node-0").await.ok()?);
        (cond(&n, "Ready").is_some_and(|c| c["status"] == "Unknown") && n["spec"]["taints"].is_array())
            .then_some(n)
    })
    .await;
    assert_eq!(cond(&n, "Ready").expect("Ready")["reason"], "NodeStatusUnknown");
    assert_eq!(
        cond(&n, "Ready").expect("Ready")["message"],
        "Kubelet stopped posting node status."
    );
    wait_for("pods on it to be not ready", || async {
        let ps = pods_of(&pods, "app=api").await;
        ps.iter()
            .all(|p| cond(p, "Ready").is_some_and(|c| c["status"] == "False"))
            .then_some(())
    })
    .await;
    server.faults().node_not_ready("crwatch-node-0", false);
    wait_for("recovery", || async {
        let d = v(&deploys.get("api").await.ok()?);
        (d["status"]["availableReplicas"] == 2).then_some(())
    })
    .await;
    server.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_daemonset_runs_one_pod_per_matching_node() {
    let mut cfg = fast();
    cfg.sim.nodes = 3;
    let server = TestServer::with_config(cfg).await.expect("server");
    let client = server.client();
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .patch(
            "crwatch-node-2",
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"labels": {"role": "edge"}}})),
        )
        .await
        .expect("label");
    let dss: Api<DaemonSet> = Api::namespaced(client.clone(), "kube-system");
    let ds: DaemonSet = j(json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "agent"},
        "spec": {
            "selector": {"matchLabels": {"app": "agent"}},
            "template": {"metadata": {"labels": {"app": "agent"}}, "spec": {"containers": [{"name": "a", "image": "agent"}]}},
        },
    }));
    dss.create(&PostParams::default(), &ds).await.expect("create");
    let d = wait_for("3 ready daemon pods", || async {
        let d = v(&dss.get("agent").await.ok()?);
        (d["status"]["numberReady"] == 3).then_some(d)
    })
    .await;
    assert_eq!(d["status"]["desiredNumberScheduled"], 3);
    assert_eq!(d["status"]["currentNumberScheduled"], 3);
    assert_eq!(d["status"]["numberMisscheduled"], 0);
    let pods: Api<Pod> = Api::namespaced(client.clone(), "kube-system");
    let mut on: Vec<String> = pods_of(&pods, "app=agent")
        .await
        .iter()
        .filter_map(|p| p["spec"]["nodeName"].as_str().map(String::from))
        .collect();
    on.sort();
    assert_eq!(on, ["crwatch-node-0", "crwatch-node-1", "crwatch-node-2"]);
    // A nodeSelector narrows it to the labelled Node.
    dss.patch(
        "agent",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"template": {"spec": {"nodeSelector": {"role": "edge"}}}}})),
    )
    .await
    .expect("patch");
    wait_for("one pod on the edge node", || async {
        let ps = pods_of(&pods, "app=agent").await;
        let d = v(&dss.get("agent").await.ok()?);
        (ps.len() == 1
            && ps[0]["spec"]["nodeName"] == "crwatch-node-2"
            && d["status"]["desiredNumberScheduled"] == 1
            && d["status"]["numberReady"] == 1)
            .then_some(())
    })
    .await;
    server.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn deleting_a_pod_is_graceful_and_the_replicaset_replaces_it() {
    let mut cfg = fast();
    cfg.sim.pod_termination_delay = Duration::from_millis(300);
    let server = TestServer::with_config(cfg).await.expect("server");
    let client = server.client();
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    deploys
        .create(&PostParams::default(), &deployment("g", 1, "nginx"))
        .await
        .expect("create");
    let name = wait_for("a running pod", || async {
        let ps = pods_of(&pods, "app=g").await;
        let p = ps.first()?;
        (p["status"]["phase"] == "Running")
            .then(|| p["metadata"]["name"].as_str().unwrap_or_default().to_string())
    })
    .await;
    pods.delete(&name, &DeleteParams::default())
        .await
        .expect("delete");
    // Still there, terminating, with the default grace period.
    let p = v(&pods.get(&name).await.expect("terminating pod"));
    assert!(p["metadata"]["deletionTimestamp"].is_string());
    assert_eq!(p["metadata"]["deletionGracePeriodSeconds"], 30);
    wait_for("the kubelet to remove it and a replacement to run", || async {
        let ps = pods_of(&pods, "app=g").await;
        (ps.len() == 1 && ps[0]["metadata"]["name"] != name.as_str() && ps[0]["status"]["phase"] == "Running")
            .then_some(())
    })
    .await;
    server.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn off_means_no_nodes_and_no_controllers() {
    let server = TestServer::with_config(Config {
        simulate_workloads: false,
        ..fast()
    })
    .await
    .expect("server");
    let client = server.client();
    let nodes: Api<Node> = Api::all(client.clone());
    assert!(
        nodes
            .list(&ListParams::default())
            .await
            .expect("nodes")
            .items
            .is_empty()
    );
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), "default");
    deploys
        .create(&PostParams::default(), &deployment("still", 1, "nginx"))
        .await
        .expect("create");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    assert!(
        rss.list(&ListParams::default())
            .await
            .expect("rs")
            .items
            .is_empty()
    );
    server.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn bad_settings_are_refused() {
    let cfg = Config {
        sim: SimConfig {
            max_pods_per_node: 0,
            ..SimConfig::default()
        },
        ..Config::default()
    };
    let err = ApiServer::start(cfg).await.err().expect("refused");
    assert!(
        err.to_string()
            .contains("max pods per node must be between 1 and 250"),
        "{err}"
    );
}

#[tokio::test]
async fn it_converges_after_a_restart_and_then_stays_quiet() {
    let dir = tempfile::tempdir().expect("dir");
    let state = dir.path().join("state.db");
    let mut cfg = fast();
    cfg.state_file = Some(state.clone());
    // Pods that take long to start: the server stops before they are Ready.
    cfg.sim.pod_ready_delay = Duration::from_secs(600);
    let server = TestServer::with_config(cfg.clone()).await.expect("server");
    let deploys: Api<Deployment> = Api::namespaced(server.client(), "default");
    deploys
        .create(&PostParams::default(), &deployment("r", 2, "nginx"))
        .await
        .expect("create");
    let pods: Api<Pod> = Api::namespaced(server.client(), "default");
    wait_for("pods creating", || async {
        let ps = pods_of(&pods, "app=r").await;
        (ps.len() == 2 && ps.iter().all(|p| p["status"]["phase"] == "Pending")).then_some(())
    })
    .await;
    server.shutdown().await.expect("shutdown");

    cfg.sim.pod_ready_delay = Duration::from_millis(50);
    let server = TestServer::with_config(cfg).await.expect("restart");
    let deploys: Api<Deployment> = Api::namespaced(server.client(), "default");
    wait_for("the deployment to be available after the restart", || async {
        let d = v(&deploys.get("r").await.ok()?);
        (d["status"]["availableReplicas"] == 2).then_some(())
    })
    .await;
    // The Node is not created twice.
    let nodes: Api<Node> = Api::all(server.client());
    assert_eq!(
        nodes
            .list(&ListParams::default())
            .await
            .expect("nodes")
            .items
            .len(),
        1
    );
    // Converged: nothing more is written (no controller rewrites what it just wrote).
    let settle = || async {
        let mut last = server.server().revision();
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let now = server.server().revision();
            if now == last {
                return now;
            }
            last = now;
        }
    };
    let quiet = tokio::time::timeout(TIMEOUT, settle())
        .await
        .expect("the simulator settles");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(server.server().revision(), quiet, "the simulator kept writing");
    server.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn bare_pods_run_and_claims_bind_to_static_volumes_first() {
    let server = TestServer::with_config(fast()).await.expect("server");
    let client = server.client();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod: Pod = j(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "bare"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
    }));
    pods.create(&PostParams::default(), &pod).await.expect("pod");
    wait_for("the bare pod to run", || async {
        let p = v(&pods.get("bare").await.ok()?);
        (p["status"]["phase"] == "Running" && p["spec"]["nodeName"] == "crwatch-node-0").then_some(())
    })
    .await;
    // A Pod no Node can take stays Pending, and says why.
    let picky: Pod = j(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "picky"},
        "spec": {"nodeSelector": {"disk": "ssd"}, "containers": [{"name": "c", "image": "busybox"}]},
    }));
    pods.create(&PostParams::default(), &picky).await.expect("pod");
    let p = wait_for("the unschedulable condition", || async {
        let p = v(&pods.get("picky").await.ok()?);
        cond(&p, "PodScheduled")
            .is_some_and(|c| c["status"] == "False")
            .then_some(p)
    })
    .await;
    let c = cond(&p, "PodScheduled").expect("PodScheduled");
    assert_eq!(c["reason"], "Unschedulable");
    assert_eq!(
        c["message"],
        "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector. preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling."
    );
    // Labelling the Node lets it schedule.
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .patch(
            "crwatch-node-0",
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"labels": {"disk": "ssd"}}})),
        )
        .await
        .expect("label");
    wait_for("the picky pod to run", || async {
        let p = v(&pods.get("picky").await.ok()?);
        (p["status"]["phase"] == "Running").then_some(())
    })
    .await;

    // A static volume that fits is used before a new one is provisioned.
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let pv: PersistentVolume = j(json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": "static-1"},
        "spec": {
            "storageClassName": "standard", "capacity": {"storage": "5Gi"},
            "accessModes": ["ReadWriteOnce"], "persistentVolumeReclaimPolicy": "Retain",
            "hostPath": {"path": "/tmp/static-1"},
        },
    }));
    pvs.create(&PostParams::default(), &pv).await.expect("pv");
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "default");
    let claim = |name: &str| -> PersistentVolumeClaim {
        j(json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": name},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
        }))
    };
    pvcs.create(&PostParams::default(), &claim("first"))
        .await
        .expect("pvc");
    let c = wait_for("the first claim bound", || async {
        let c = v(&pvcs.get("first").await.ok()?);
        (c["status"]["phase"] == "Bound").then_some(c)
    })
    .await;
    assert_eq!(c["spec"]["volumeName"], "static-1");
    assert_eq!(c["status"]["capacity"]["storage"], "5Gi");
    pvcs.create(&PostParams::default(), &claim("second"))
        .await
        .expect("pvc");
    let c = wait_for("the second claim bound", || async {
        let c = v(&pvcs.get("second").await.ok()?);
        (c["status"]["phase"] == "Bound").then_some(c)
    })
    .await;
    assert!(
        c["spec"]["volumeName"]
            .as_str()
            .expect("volume")
            .starts_with("pvc-")
    );
    // Deleting the claims: the provisioned volume goes (Delete), the static one is Released.
    pvcs.delete("first", &DeleteParams::default())
        .await
        .expect("delete");
    pvcs.delete("second", &DeleteParams::default())
        .await
        .expect("delete");
    let second_pv = c["spec"]["volumeName"].as_str().expect("volume").to_string();
    wait_for("reclaim", || async {
        let released = v(&pvs.get("static-1").await.ok()?)["status"]["phase"] == "Released";
        let gone = pvs.get_opt(&second_pv).await.ok()?.is_none();
        (released && gone).then_some(())
    })
    .await;
    server.shutdown().await.expect("shutdown");
}
