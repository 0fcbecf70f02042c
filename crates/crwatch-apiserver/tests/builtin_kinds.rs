//! Every built-in kind of the reported Kubernetes version, as a client sees it: discovery and
//! `kubectl api-resources`, published schemas (`kubectl explain`), decoding into the Go types
//! (wrong types refused with encoding/json's words, unknown fields dropped at any depth and
//! reported per `fieldValidation`), the defaults controllers read back, Service cluster IPs,
//! Job selectors, and the fields that may not change.

use crwatch_apiserver::TestServer;
use http_body_util::BodyExt;
use serde_json::{Value, json};

/// A raw response: code, JSON body and `Warning` headers.
struct Raw {
    code: u16,
    body: Value,
    warnings: Vec<String>,
}

async fn send(server: &TestServer, method: &str, path: &str, body: Value) -> Raw {
    let content_type = if method == "PATCH" {
        "application/merge-patch+json"
    } else {
        "application/json"
    };
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::ACCEPT, "application/json")
        .body(kube::client::Body::from(if body.is_null() {
            vec![]
        } else {
            serde_json::to_vec(&body).expect("body")
        }))
        .expect("request");
    let resp = server.client().send(req).await.expect("send");
    let code = resp.status().as_u16();
    let warnings = resp
        .headers()
        .get_all("warning")
        .iter()
        .map(|v| v.to_str().unwrap_or_default().to_string())
        .collect();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| json!(String::from_utf8_lossy(&bytes)));
    Raw { code, body, warnings }
}

/// A POST over plain HTTP with reqwest: kube's client retries 429s by itself (for minutes).
async fn post_plain(server: &TestServer, path: &str, body: Value) -> Raw {
    let url = format!("{}{path}", server.server().http_url().expect("plain HTTP"));
    let resp = reqwest::Client::new()
        .post(url)
        .bearer_auth(server.server().token())
        .json(&body)
        .send()
        .await
        .expect("send");
    let code = resp.status().as_u16();
    let bytes = resp.bytes().await.expect("body");
    let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| json!(String::from_utf8_lossy(&bytes)));
    Raw {
        code,
        body,
        warnings: vec![],
    }
}

fn message(r: &Raw) -> &str {
    r.body["message"].as_str().unwrap_or_default()
}

const PODS: &str = "/api/v1/namespaces/default/pods";

fn pod(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
           "spec": {"containers": [{"name": "app", "image": "nginx:1.27", "ports": [{"containerPort": 80}]}]}})
}

// kubectl runs as a blocking child process: the server needs threads of its own meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_and_kubectl_list_every_ga_resource() {
    let server = TestServer::start().await.expect("server");
    let out = server
        .kubectl()
        .args(["api-resources", "-o", "name"])
        .output()
        .expect("kubectl");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let names = String::from_utf8_lossy(&out.stdout);
    for r in [
        "pods",
        "services",
        "persistentvolumeclaims",
        "persistentvolumes",
        "nodes",
        "endpoints",
        "limitranges",
        "resourcequotas",
        "statefulsets.apps",
        "replicasets.apps",
        "daemonsets.apps",
        "jobs.batch",
        "cronjobs.batch",
        "ingresses.networking.k8s.io",
        "ingressclasses.networking.k8s.io",
        "networkpolicies.networking.k8s.io",
        "poddisruptionbudgets.policy",
        "roles.rbac.authorization.k8s.io",
        "clusterrolebindings.rbac.authorization.k8s.io",
        "endpointslices.discovery.k8s.io",
        "horizontalpodautoscalers.autoscaling",
        "storageclasses.storage.k8s.io",
        "selfsubjectaccessreviews.authorization.k8s.io",
    ] {
        assert!(names.lines().any(|l| l == r), "{r} missing from:\n{names}");
    }
    // Short names resolve.
    let out = server
        .kubectl()
        .args(["get", "sts,pvc,svc,po"])
        .output()
        .expect("kubectl");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The published schemas explain fields.
    let out = server
        .kubectl()
        .args(["explain", "pods.spec.restartPolicy"])
        .output()
        .expect("kubectl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        text.contains("Restart policy for all containers within the pod"),
        "{text}"
    );
}

#[tokio::test]
async fn wrong_types_are_refused_with_the_go_decoders_words() {
    let server = TestServer::start().await.expect("server");
    let r = send(
        &server,
        "POST",
        "/api/v1/namespaces/default/configmaps",
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": 1}}),
    )
    .await;
    assert_eq!(r.code, 400);
    assert_eq!(
        message(&r),
        "ConfigMap in version \"v1\" cannot be handled as a ConfigMap: json: cannot unmarshal number into Go struct field ConfigMap.data of type string"
    );
    let deploy = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
        "spec": {"replicas": "two", "selector": {"matchLabels": {"a": "b"}},
                 "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
    let r = send(
        &server,
        "POST",
        "/apis/apps/v1/namespaces/default/deployments",
        deploy,
    )
    .await;
    assert_eq!(r.code, 400);
    assert_eq!(
        message(&r),
        "Deployment in version \"v1\" cannot be handled as a Deployment: json: cannot unmarshal string into Go struct field DeploymentSpec.spec.replicas of type int32"
    );
    let mut p = pod("p");
    p["spec"]["containers"][0]["ports"][0]["containerPort"] = json!("80");
    let r = send(&server, "POST", PODS, p).await;
    assert_eq!(r.code, 400);
    assert_eq!(
        message(&r),
        "Pod in version \"v1\" cannot be handled as a Pod: json: cannot unmarshal string into Go struct field ContainerPort.spec.containers.ports.containerPort of type int32"
    );
    let mut p = pod("p");
    p["spec"]["containers"] = json!({"name": "x"});
    let r = send(&server, "POST", PODS, p).await;
    assert_eq!(
        message(&r),
        "Pod in version \"v1\" cannot be handled as a Pod: json: cannot unmarshal object into Go struct field PodSpec.spec.containers of type []v1.Container"
    );
    let mut p = pod("p");
    p["spec"]["containers"][0]["resources"] = json!({"limits": {"memory": "1GG"}});
    let r = send(&server, "POST", PODS, p).await;
    assert_eq!(r.code, 400);
    assert!(
        message(&r).ends_with("unable to parse quantity's suffix"),
        "{}",
        message(&r)
    );
}

#[tokio::test]
async fn unknown_fields_are_dropped_at_any_depth_and_reported() {
    let server = TestServer::start().await.expect("server");
    let mut p = pod("warned");
    p["spec"]["containers"][0]["imagePullPolicyy"] = json!("Always");
    p["spec"]["bogus"] = json!({"deep": [1, 2]});
    let r = send(&server, "POST", PODS, p.clone()).await;
    assert_eq!(r.code, 201, "{}", r.body);
    assert_eq!(
        r.warnings,
        [
            "299 - \"unknown field \\\"spec.bogus\\\"\"",
            "299 - \"unknown field \\\"spec.containers[0].imagePullPolicyy\\\"\""
        ]
    );
    assert!(r.body["spec"].get("bogus").is_none());
    assert!(r.body["spec"]["containers"][0].get("imagePullPolicyy").is_none());
    p["metadata"]["name"] = json!("strict");
    let r = send(&server, "POST", &format!("{PODS}?fieldValidation=Strict"), p).await;
    assert_eq!(r.code, 400);
    assert_eq!(
        message(&r),
        "Pod in version \"v1\" cannot be handled as a Pod: strict decoding error: unknown field \"spec.bogus\", unknown field \"spec.containers[0].imagePullPolicyy\""
    );
}

#[tokio::test]
async fn pods_get_their_defaults_and_their_spec_is_immutable() {
    let server = TestServer::start().await.expect("server");
    let r = send(&server, "POST", PODS, pod("p")).await;
    assert_eq!(r.code, 201, "{}", r.body);
    let spec = &r.body["spec"];
    assert_eq!(spec["restartPolicy"], "Always");
    assert_eq!(spec["dnsPolicy"], "ClusterFirst");
    assert_eq!(spec["terminationGracePeriodSeconds"], 30);
    assert_eq!(spec["serviceAccountName"], "default");
    assert_eq!(spec["containers"][0]["imagePullPolicy"], "IfNotPresent");
    assert_eq!(
        spec["containers"][0]["terminationMessagePath"],
        "/dev/termination-log"
    );
    assert_eq!(spec["containers"][0]["ports"][0]["protocol"], "TCP");
    assert_eq!(r.body["status"]["phase"], "Pending");
    assert_eq!(r.body["status"]["qosClass"], "BestEffort");
    // The image may change; the ports may not.
    let r = send(
        &server,
        "PATCH",
        &format!("{PODS}/p"),
        json!({"spec": {"containers": [{"name": "app", "image": "nginx:1.28", "ports": [{"containerPort": 80}]}]}}),
    )
    .await;
    assert_eq!(r.code, 200, "{}", r.body);
    let r = send(
        &server,
        "PATCH",
        &format!("{PODS}/p"),
        json!({"spec": {"containers": [{"name": "app", "image": "nginx:1.28", "ports": [{"containerPort": 81}]}]}}),
    )
    .await;
    assert_eq!(r.code, 422, "{}", r.body);
    assert!(
        message(&r).starts_with("Pod \"p\" is invalid: spec: Forbidden: pod updates may not change fields other than `spec.containers[*].image`"),
        "{}",
        message(&r)
    );
}

#[tokio::test]
async fn services_get_a_cluster_ip_that_cannot_change() {
    let server = TestServer::start().await.expect("server");
    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
                     "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}});
    let r = send(&server, "POST", "/api/v1/namespaces/default/services", svc).await;
    assert_eq!(r.code, 201, "{}", r.body);
    let ip = r.body["spec"]["clusterIP"]
        .as_str()
        .expect("clusterIP")
        .to_string();
    assert!(ip.starts_with("10."), "{ip}");
    assert_eq!(r.body["spec"]["clusterIPs"], json!([ip]));
    assert_eq!(r.body["spec"]["type"], "ClusterIP");
    assert_eq!(r.body["spec"]["ports"][0]["targetPort"], 80);
    // kubectl apply without the address keeps it.
    let path = "/api/v1/namespaces/default/services/web";
    let mut replaced = r.body.clone();
    replaced["spec"]
        .as_object_mut()
        .expect("spec")
        .remove("clusterIP");
    replaced["spec"]
        .as_object_mut()
        .expect("spec")
        .remove("clusterIPs");
    let r = send(&server, "PUT", path, replaced).await;
    assert_eq!(r.code, 200, "{}", r.body);
    assert_eq!(r.body["spec"]["clusterIP"], json!(ip));
    let r = send(
        &server,
        "PATCH",
        path,
        json!({"spec": {"clusterIP": "10.96.0.77", "clusterIPs": ["10.96.0.77"]}}),
    )
    .await;
    assert_eq!(r.code, 422);
    assert_eq!(
        message(&r),
        "Service \"web\" is invalid: spec.clusterIPs[0]: Invalid value: []string{\"10.96.0.77\"}: may not change once set"
    );
    // NodePort Services get ports from the node port range.
    let np = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "np"},
                    "spec": {"type": "NodePort", "selector": {"app": "web"}, "ports": [{"port": 80}]}});
    let r = send(&server, "POST", "/api/v1/namespaces/default/services", np).await;
    let port = r.body["spec"]["ports"][0]["nodePort"].as_u64().expect("nodePort");
    assert!((30000..=32767).contains(&port), "{port}");
}

#[tokio::test]
async fn workload_selectors_statefulset_specs_and_pvc_specs_are_immutable() {
    let server = TestServer::start().await.expect("server");
    let sts = json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db"},
        "spec": {"serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
                 "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [{"name": "db", "image": "postgres:17"}]}},
                 "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]}});
    let base = "/apis/apps/v1/namespaces/default/statefulsets";
    let r = send(&server, "POST", base, sts).await;
    assert_eq!(r.code, 201, "{}", r.body);
    assert_eq!(r.body["spec"]["podManagementPolicy"], "OrderedReady");
    assert_eq!(r.body["spec"]["replicas"], 1);
    assert_eq!(r.body["spec"]["template"]["spec"]["restartPolicy"], "Always");
    let r = send(
        &server,
        "PATCH",
        &format!("{base}/db"),
        json!({"spec": {"replicas": 3}}),
    )
    .await;
    assert_eq!(r.code, 200, "{}", r.body);
    let r = send(
        &server,
        "PATCH",
        &format!("{base}/db"),
        json!({"spec": {"serviceName": "other"}}),
    )
    .await;
    assert_eq!(r.code, 422);
    assert_eq!(
        message(&r),
        "StatefulSet.apps \"db\" is invalid: spec: Forbidden: updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'revisionHistoryLimit', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden"
    );
    let deploy = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web", "v": "1"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
    let dpath = "/apis/apps/v1/namespaces/default/deployments";
    assert_eq!(send(&server, "POST", dpath, deploy).await.code, 201);
    let r = send(
        &server,
        "PATCH",
        &format!("{dpath}/web"),
        json!({"spec": {"selector": {"matchLabels": {"app": "web", "v": "1"}}}}),
    )
    .await;
    assert_eq!(r.code, 422);
    assert_eq!(
        message(&r),
        "Deployment.apps \"web\" is invalid: spec.selector: Invalid value: v1.LabelSelector{MatchLabels:map[string]string{\"app\":\"web\", \"v\":\"1\"}, MatchExpressions:[]v1.LabelSelectorRequirement(nil)}: field is immutable"
    );
    let pvc = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}});
    let ppath = "/api/v1/namespaces/default/persistentvolumeclaims";
    let r = send(&server, "POST", ppath, pvc).await;
    assert_eq!(r.code, 201, "{}", r.body);
    assert_eq!(r.body["spec"]["volumeMode"], "Filesystem");
    let r = send(
        &server,
        "PATCH",
        &format!("{ppath}/data"),
        json!({"spec": {"accessModes": ["ReadWriteMany"]}}),
    )
    .await;
    assert_eq!(r.code, 422);
    assert_eq!(
        message(&r),
        "PersistentVolumeClaim \"data\" is invalid: spec: Forbidden: spec is immutable after creation except resources.requests for bound claims"
    );
}

#[tokio::test]
async fn jobs_get_a_generated_selector_and_refuse_restart_always() {
    let server = TestServer::start().await.expect("server");
    let job = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "once"},
        "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}}}});
    let path = "/apis/batch/v1/namespaces/default/jobs";
    let r = send(&server, "POST", path, job.clone()).await;
    assert_eq!(r.code, 201, "{}", r.body);
    let uid = r.body["metadata"]["uid"].as_str().expect("uid");
    assert_eq!(
        r.body["spec"]["selector"],
        json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}})
    );
    assert_eq!(
        r.body["spec"]["template"]["metadata"]["labels"]["job-name"],
        "once"
    );
    assert_eq!(r.body["spec"]["backoffLimit"], 6);
    assert_eq!(r.body["spec"]["completions"], 1);
    let mut always = job;
    always["metadata"]["name"] = json!("always");
    always["spec"]["template"]["spec"]
        .as_object_mut()
        .expect("spec")
        .remove("restartPolicy");
    let r = send(&server, "POST", path, always).await;
    assert_eq!(r.code, 422);
    assert_eq!(
        message(&r),
        "Job.batch \"always\" is invalid: spec.template.spec.restartPolicy: Unsupported value: \"Always\": supported values: \"OnFailure\", \"Never\""
    );
}

#[tokio::test]
async fn pod_subresources_bind_evict_under_budgets_and_add_ephemeral_containers() {
    let server = TestServer::with_config(crwatch_apiserver::Config {
        simulate_workloads: false,
        http_port: Some(0),
        ..Default::default()
    })
    .await
    .expect("server");
    // Discovery lists them.
    let r = send(&server, "GET", "/api/v1", Value::Null).await;
    let names: Vec<&str> = r.body["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    for sub in [
        "pods/binding",
        "pods/eviction",
        "pods/ephemeralcontainers",
        "pods/log",
        "serviceaccounts/token",
    ] {
        assert!(names.contains(&sub), "{sub} not in {names:?}");
    }
    let mut p = pod("web-1");
    p["metadata"]["labels"] = json!({"app": "web"});
    assert_eq!(send(&server, "POST", PODS, p).await.code, 201);
    // Unscheduled: no log yet.
    let r = send(&server, "GET", &format!("{PODS}/web-1/log"), Value::Null).await;
    assert_eq!(r.code, 400);
    assert_eq!(message(&r), "pod web-1 does not have a host assigned");
    // The scheduler's binding.
    let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "web-1"}, "target": {"kind": "Node", "name": "node-a"}});
    let r = send(&server, "POST", &format!("{PODS}/web-1/binding"), binding.clone()).await;
    assert_eq!(r.code, 201, "{}", r.body);
    let r = send(&server, "GET", &format!("{PODS}/web-1"), Value::Null).await;
    assert_eq!(r.body["spec"]["nodeName"], "node-a");
    assert_eq!(r.body["status"]["conditions"][0]["type"], "PodScheduled");
    let r = send(&server, "POST", &format!("{PODS}/web-1/binding"), binding).await;
    assert_eq!(r.code, 409);
    assert_eq!(
        message(&r),
        "Operation cannot be fulfilled on pods/binding \"web-1\": pod web-1 is already assigned to node \"node-a\""
    );
    // An ephemeral container is added through its subresource only, and stays.
    let mut current = send(&server, "GET", &format!("{PODS}/web-1"), Value::Null)
        .await
        .body;
    current["spec"]["ephemeralContainers"] = json!([{"name": "debug", "image": "busybox"}]);
    let r = send(
        &server,
        "PUT",
        &format!("{PODS}/web-1/ephemeralcontainers"),
        current.clone(),
    )
    .await;
    assert_eq!(r.code, 200, "{}", r.body);
    assert_eq!(r.body["spec"]["ephemeralContainers"][0]["name"], "debug");
    let mut changed = r.body.clone();
    changed["spec"]["ephemeralContainers"][0]["image"] = json!("alpine");
    let r = send(
        &server,
        "PUT",
        &format!("{PODS}/web-1/ephemeralcontainers"),
        changed,
    )
    .await;
    assert_eq!(r.code, 422);
    assert!(
        message(&r).contains("existing ephemeral containers \"debug\" may not be changed"),
        "{}",
        message(&r)
    );
    // Running, under a budget that allows no disruption: the eviction is refused.
    let status = json!({"status": {"phase": "Running"}});
    let r = send(&server, "PATCH", &format!("{PODS}/web-1/status"), status).await;
    assert_eq!(r.code, 200, "{}", r.body);
    let pdb = json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "web"},
                     "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "web"}}}});
    let pdbs = "/apis/policy/v1/namespaces/default/poddisruptionbudgets";
    assert_eq!(send(&server, "POST", pdbs, pdb).await.code, 201);
    let budget = json!({"status": {"observedGeneration": 1, "disruptionsAllowed": 0, "currentHealthy": 1, "desiredHealthy": 1, "expectedPods": 1}});
    assert_eq!(
        send(&server, "PATCH", &format!("{pdbs}/web/status"), budget)
            .await
            .code,
        200
    );
    let eviction = json!({"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "web-1", "namespace": "default"}});
    let r = post_plain(&server, &format!("{PODS}/web-1/eviction"), eviction.clone()).await;
    assert_eq!(r.code, 429, "{}", r.body);
    assert_eq!(
        message(&r),
        "Cannot evict pod as it would violate the pod's disruption budget."
    );
    assert_eq!(
        r.body["details"]["causes"][0]["message"],
        "The disruption budget web needs 1 healthy pods and has 1 currently"
    );
    // Once the budget allows one, the eviction deletes the pod and counts the disruption.
    let budget = json!({"status": {"disruptionsAllowed": 1, "currentHealthy": 2, "desiredHealthy": 1}});
    assert_eq!(
        send(&server, "PATCH", &format!("{pdbs}/web/status"), budget)
            .await
            .code,
        200
    );
    let r = send(&server, "POST", &format!("{PODS}/web-1/eviction"), eviction).await;
    assert_eq!(r.code, 201, "{}", r.body);
    assert_eq!(r.body["status"], "Success");
    let r = send(&server, "GET", &format!("{pdbs}/web"), Value::Null).await;
    assert_eq!(r.body["status"]["disruptionsAllowed"], 0);
    assert!(
        r.body["status"]["disruptedPods"].get("web-1").is_some(),
        "{}",
        r.body
    );
}

#[tokio::test]
async fn fields_the_published_schema_requires_are_required() {
    let server = TestServer::start().await.expect("server");
    let mut p = pod("nameless");
    p["spec"]["containers"][0]
        .as_object_mut()
        .expect("container")
        .remove("name");
    p["spec"]["containers"][0]["env"] = json!([{"value": "x"}]);
    let r = send(&server, "POST", PODS, p).await;
    assert_eq!(r.code, 422, "{}", r.body);
    assert_eq!(
        message(&r),
        "Pod \"nameless\" is invalid: [spec.containers[0].env[0].name: Required value, spec.containers[0].name: Required value]"
    );
    let deploy = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
        "spec": {"template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
    let r = send(
        &server,
        "POST",
        "/apis/apps/v1/namespaces/default/deployments",
        deploy,
    )
    .await;
    assert_eq!(r.code, 422);
    assert_eq!(
        message(&r),
        "Deployment.apps \"d\" is invalid: spec.selector: Required value"
    );
}

#[tokio::test]
async fn pods_select_on_the_real_field_labels() {
    let server = TestServer::with_config(crwatch_apiserver::Config {
        simulate_workloads: false,
        ..Default::default()
    })
    .await
    .expect("server");
    let mut on_a = pod("on-a");
    on_a["spec"]["nodeName"] = json!("node-a");
    assert_eq!(send(&server, "POST", PODS, on_a).await.code, 201);
    assert_eq!(send(&server, "POST", PODS, pod("pending")).await.code, 201);
    let names = |r: &Raw| -> Vec<String> {
        r.body["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|p| p["metadata"]["name"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    let r = send(
        &server,
        "GET",
        &format!("{PODS}?fieldSelector=spec.nodeName%3Dnode-a"),
        Value::Null,
    )
    .await;
    assert_eq!(names(&r), ["on-a"]);
    let r = send(
        &server,
        "GET",
        &format!("{PODS}?fieldSelector=spec.nodeName%3D"),
        Value::Null,
    )
    .await;
    assert_eq!(names(&r), ["pending"]);
    let r = send(
        &server,
        "GET",
        &format!("{PODS}?fieldSelector=status.phase%3DPending,spec.hostNetwork%3Dfalse"),
        Value::Null,
    )
    .await;
    assert_eq!(names(&r).len(), 2, "{}", r.body);
    let r = send(
        &server,
        "GET",
        &format!("{PODS}?fieldSelector=spec.image%3Dx"),
        Value::Null,
    )
    .await;
    assert_eq!(r.code, 400);
    assert_eq!(message(&r), "field label not supported: spec.image");
}

/// Writes without a resourceVersion are unconditional: a controller writing the object
/// meanwhile makes the server apply them again (GuaranteedUpdate), never a 409.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unconditional_patches_and_updates_survive_concurrent_writes() {
    let server = TestServer::start().await.expect("server");
    let path = "/api/v1/namespaces/default/configmaps";
    let cm =
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "busy"}, "data": {"n": "0"}});
    assert_eq!(send(&server, "POST", path, cm).await.code, 201);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let client = server.client();
        let stop = stop.clone();
        tokio::spawn(async move {
            let cms: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
                kube::Api::namespaced(client, "default");
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let p = json!({"metadata": {"annotations": {"writer": n.to_string()}}});
                let _ = cms
                    .patch(
                        "busy",
                        &kube::api::PatchParams::default(),
                        &kube::api::Patch::Merge(p),
                    )
                    .await;
            }
            n
        })
    };
    for i in 0..100 {
        let r = send(
            &server,
            "PATCH",
            &format!("{path}/busy"),
            json!({"data": {"n": i.to_string()}}),
        )
        .await;
        assert_eq!(r.code, 200, "patch {i}: {}", r.body);
        let mut current = send(&server, "GET", &format!("{path}/busy"), Value::Null)
            .await
            .body;
        current["metadata"]
            .as_object_mut()
            .expect("metadata")
            .remove("resourceVersion");
        current["data"]["m"] = json!(i.to_string());
        let r = send(&server, "PUT", &format!("{path}/busy"), current).await;
        assert_eq!(r.code, 200, "update {i}: {}", r.body);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let writes = writer.await.expect("writer");
    assert!(writes > 0);
    // With a resourceVersion the write stays conditional.
    let r = send(
        &server,
        "PATCH",
        &format!("{path}/busy"),
        json!({"metadata": {"resourceVersion": "1"}, "data": {"n": "x"}}),
    )
    .await;
    assert_eq!(r.code, 409);
}

#[tokio::test]
async fn horizontal_pod_autoscalers_are_served_at_v1_and_v2_from_one_storage() {
    let server = TestServer::start().await.expect("server");
    let group = send(&server, "GET", "/apis/autoscaling", Value::Null).await;
    assert_eq!(group.body["preferredVersion"]["version"], "v2", "{}", group.body);
    let hpa = json!({"apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "web"},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                 "minReplicas": 1, "maxReplicas": 5, "targetCPUUtilizationPercentage": 70}});
    let r = send(
        &server,
        "POST",
        "/apis/autoscaling/v1/namespaces/default/horizontalpodautoscalers",
        hpa,
    )
    .await;
    assert_eq!(r.code, 201, "{}", r.body);
    assert_eq!(r.body["apiVersion"], "autoscaling/v1");
    assert_eq!(r.body["spec"]["targetCPUUtilizationPercentage"], 70);
    let v2 = send(
        &server,
        "GET",
        "/apis/autoscaling/v2/namespaces/default/horizontalpodautoscalers/web",
        Value::Null,
    )
    .await;
    assert_eq!(v2.code, 200, "{}", v2.body);
    assert_eq!(
        v2.body["spec"]["metrics"],
        json!([{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}])
    );
    assert!(v2.body["spec"].get("targetCPUUtilizationPercentage").is_none());
    let v1 = send(
        &server,
        "GET",
        "/apis/autoscaling/v1/namespaces/default/horizontalpodautoscalers/web",
        Value::Null,
    )
    .await;
    assert_eq!(v1.body["spec"]["targetCPUUtilizationPercentage"], 70);
    assert!(v1.body["spec"].get("metrics").is_none());
}
