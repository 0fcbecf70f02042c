//! kubectl 1.32 and newer send `kubectl create <kind>` bodies as Kubernetes protobuf
//! (`application/vnd.kubernetes.protobuf`) and do not fall back to JSON: these run the real
//! `kubectl.1.32` and `kubectl.1.33` (and the `kubectl` on PATH, which on these machines is a
//! dispatcher that picks the release matching the server's version) against the in-process
//! server, then read each object back with `kubectl get -o json` and check it field by field.

mod common;

use common::Target;
use serde_json::Value;

/// The kubectl releases that send protobuf.
const BINS: [&str; 2] = ["kubectl.1.32", "kubectl.1.33"];

/// Run `BIN ARGS` at verbosity 8 and expect success; returns (stdout, stderr).
fn run_ok(t: &Target, bin: &str, args: &[&str]) -> (String, String) {
    let mut cmd = t.kubectl_bin(bin);
    cmd.arg("-v=8").args(args);
    let out = t.run(cmd, None);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        out.status.success(),
        "{bin} {args:?} failed:\nstdout: {stdout}\nstderr: {stderr}"
    );
    (stdout, stderr)
}

/// `BIN create ...`, checking from kubectl's own log that the body really went as protobuf.
fn create(t: &Target, bin: &str, args: &[&str]) -> String {
    let mut all = vec!["create"];
    all.extend_from_slice(args);
    let (stdout, stderr) = run_ok(t, bin, &all);
    assert!(
        stderr.contains("Content-Type: application/vnd.kubernetes.protobuf"),
        "{bin} create {args:?} did not send protobuf; its log:\n{stderr}"
    );
    stdout
}

fn get_json(t: &Target, args: &[&str]) -> Value {
    let mut all = vec!["get"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-o", "json"]);
    serde_json::from_str(&t.kubectl_ok(&all, None)).expect("kubectl -o json prints JSON")
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_create_namespace_sends_protobuf() {
    let t = common::local().await;
    for bin in BINS {
        let name = format!("pb-ns-{}", bin.replace('.', "-"));
        let out = create(&t, bin, &["namespace", &name]);
        assert_eq!(out.trim(), format!("namespace/{name} created"));
        let ns = get_json(&t, &["namespace", &name]);
        assert_eq!(ns["apiVersion"], "v1");
        assert_eq!(ns["kind"], "Namespace");
        assert_eq!(ns["metadata"]["name"], name.as_str());
        assert_eq!(
            ns["metadata"]["labels"]["kubernetes.io/metadata.name"],
            name.as_str()
        );
        assert!(ns["metadata"]["uid"].as_str().is_some_and(|u| !u.is_empty()));
        assert!(ns["metadata"].get("namespace").is_none(), "{ns}");
        assert!(
            ns["metadata"].get("generateName").is_none(),
            "zero values are dropped: {ns}"
        );
        assert_eq!(ns["status"]["phase"], "Active");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_create_configmap_secret_and_serviceaccount_send_protobuf() {
    let t = common::local().await;
    let ns = t.namespace("pb").await;
    for bin in BINS {
        let suffix = bin.replace('.', "-");

        let cm = format!("cm-{suffix}");
        let out = create(
            &t,
            bin,
            &[
                "configmap",
                &cm,
                "-n",
                &ns,
                "--from-literal=a=b",
                "--from-literal=greeting=héllo wörld",
            ],
        );
        assert_eq!(out.trim(), format!("configmap/{cm} created"));
        let got = get_json(&t, &["configmap", &cm, "-n", &ns]);
        assert_eq!(got["apiVersion"], "v1");
        assert_eq!(got["kind"], "ConfigMap");
        assert_eq!(got["metadata"]["name"], cm.as_str());
        assert_eq!(got["metadata"]["namespace"], ns.as_str());
        assert_eq!(
            got["data"],
            serde_json::json!({"a": "b", "greeting": "héllo wörld"})
        );
        assert!(got.get("binaryData").is_none(), "{got}");

        let secret = format!("s-{suffix}");
        let out = create(
            &t,
            bin,
            &[
                "secret",
                "generic",
                &secret,
                "-n",
                &ns,
                "--from-literal=user=admin",
                "--from-literal=password=s3cr=t!",
            ],
        );
        assert_eq!(out.trim(), format!("secret/{secret} created"));
        let got = get_json(&t, &["secret", &secret, "-n", &ns]);
        assert_eq!(got["kind"], "Secret");
        assert_eq!(got["metadata"]["namespace"], ns.as_str());
        assert_eq!(got["type"], "Opaque");
        assert_eq!(got["data"]["user"], b64("admin"));
        assert_eq!(got["data"]["password"], b64("s3cr=t!"));
        assert_eq!(got["data"].as_object().map(|m| m.len()), Some(2));

        let typed = format!("tls-ish-{suffix}");
        create(
            &t,
            bin,
            &[
                "secret",
                "generic",
                &typed,
                "-n",
                &ns,
                "--type=example.com/thing",
                "--from-literal=k=v",
            ],
        );
        let got = get_json(&t, &["secret", &typed, "-n", &ns]);
        assert_eq!(got["type"], "example.com/thing");
        assert_eq!(got["data"]["k"], b64("v"));

        let sa = format!("sa-{suffix}");
        let out = create(&t, bin, &["serviceaccount", &sa, "-n", &ns]);
        assert_eq!(out.trim(), format!("serviceaccount/{sa} created"));
        let got = get_json(&t, &["serviceaccount", &sa, "-n", &ns]);
        assert_eq!(got["apiVersion"], "v1");
        assert_eq!(got["kind"], "ServiceAccount");
        assert_eq!(got["metadata"]["name"], sa.as_str());
        assert_eq!(got["metadata"]["namespace"], ns.as_str());
        assert!(
            got["metadata"]["creationTimestamp"]
                .as_str()
                .is_some_and(|s| s.ends_with('Z'))
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_create_deployment_sends_protobuf() {
    let t = common::local().await;
    let ns = t.namespace("pb-deploy").await;
    for bin in BINS {
        let name = format!("web-{}", bin.replace('.', "-"));
        let out = create(
            &t,
            bin,
            &[
                "deployment",
                &name,
                "-n",
                &ns,
                "--image=nginx:1.27",
                "--replicas=2",
                "--port=80",
            ],
        );
        assert_eq!(out.trim(), format!("deployment.apps/{name} created"));
        let d = get_json(&t, &["deployment", &name, "-n", &ns]);
        assert_eq!(d["apiVersion"], "apps/v1");
        assert_eq!(d["kind"], "Deployment");
        assert_eq!(d["metadata"]["name"], name.as_str());
        assert_eq!(d["metadata"]["namespace"], ns.as_str());
        assert_eq!(d["metadata"]["labels"]["app"], name.as_str());
        let spec = &d["spec"];
        assert_eq!(spec["replicas"], 2);
        assert_eq!(spec["selector"]["matchLabels"]["app"], name.as_str());
        assert_eq!(spec["template"]["metadata"]["labels"]["app"], name.as_str());
        let containers = spec["template"]["spec"]["containers"]
            .as_array()
            .expect("containers");
        assert_eq!(containers.len(), 1);
        let c = &containers[0];
        assert_eq!(c["name"], "nginx");
        assert_eq!(c["image"], "nginx:1.27");
        assert_eq!(c["ports"][0]["containerPort"], 80);
        assert!(
            c["ports"][0].get("hostPort").is_none(),
            "zero non-pointer fields are dropped: {c}"
        );
        for zero in ["stdin", "tty", "workingDir"] {
            assert!(c.get(zero).is_none(), "{zero} should be absent: {c}");
        }
        assert!(
            spec.get("paused").is_none() && spec.get("minReadySeconds").is_none(),
            "{spec}"
        );
    }
    // --replicas=0 is an explicit zero of a pointer field and must survive (not default to 1).
    create(
        &t,
        "kubectl",
        &["deployment", "idle", "-n", &ns, "--image=busybox", "--replicas=0"],
    );
    let d = get_json(&t, &["deployment", "idle", "-n", &ns]);
    assert_eq!(d["spec"]["replicas"], 0);
    assert_eq!(d["spec"]["template"]["spec"]["containers"][0]["name"], "busybox");
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_create_dry_run_server_stores_nothing() {
    let t = common::local().await;
    let ns = t.namespace("pb-dry").await;
    for bin in BINS {
        let name = format!("dry-{}", bin.replace('.', "-"));
        let out = create(
            &t,
            bin,
            &[
                "configmap",
                &name,
                "-n",
                &ns,
                "--from-literal=x=y",
                "--dry-run=server",
                "-o",
                "json",
            ],
        );
        let echoed: Value = serde_json::from_str(&out).expect("dry run prints JSON");
        assert_eq!(echoed["kind"], "ConfigMap");
        assert_eq!(echoed["metadata"]["name"], name.as_str());
        assert_eq!(echoed["data"]["x"], "y");
        let err = t.kubectl_err(&["get", "configmap", &name, "-n", &ns], None);
        assert!(err.contains("NotFound") || err.contains("not found"), "{err}");

        let dep = format!("dry-web-{}", bin.replace('.', "-"));
        create(
            &t,
            bin,
            &["deployment", &dep, "-n", &ns, "--image=nginx", "--dry-run=server"],
        );
        let err = t.kubectl_err(&["get", "deployment", &dep, "-n", &ns], None);
        assert!(err.contains("not found"), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_delete_after_protobuf_create() {
    let t = common::local().await;
    let ns = t.namespace("pb-del").await;
    create(
        &t,
        "kubectl",
        &["configmap", "gone", "-n", &ns, "--from-literal=a=b"],
    );
    let (out, log) = run_ok(&t, "kubectl", &["delete", "configmap", "gone", "-n", &ns]);
    assert!(
        log.contains("Content-Type: application/json"),
        "kubectl deletes with JSON options: {log}"
    );
    assert_eq!(out.trim(), "configmap \"gone\" deleted");
    let err = t.kubectl_err(&["get", "configmap", "gone", "-n", &ns], None);
    assert!(err.contains("not found"), "{err}");
}

/// The kinds whose tables came with scripts/gen-protobuf-tables' second set of roots: each
/// `kubectl create` goes as protobuf and reads back with the fields kubectl set.
#[tokio::test(flavor = "multi_thread")]
async fn kubectl_create_workload_service_and_policy_kinds_send_protobuf() {
    let t = common::local().await;
    let ns = t.namespace("pb-kinds").await;
    for bin in BINS {
        let sfx = bin.replace('.', "-");

        let job = format!("job-{sfx}");
        let out = create(&t, bin, &["job", &job, "-n", &ns, "--image=busybox"]);
        assert_eq!(out.trim(), format!("job.batch/{job} created"));
        let got = get_json(&t, &["job", &job, "-n", &ns]);
        assert_eq!(
            (got["apiVersion"].as_str(), got["kind"].as_str()),
            (Some("batch/v1"), Some("Job"))
        );
        let pod = &got["spec"]["template"]["spec"];
        assert_eq!(pod["restartPolicy"], "Never", "{got}");
        assert_eq!(pod["containers"][0]["name"], job.as_str());
        assert_eq!(pod["containers"][0]["image"], "busybox");

        let cj = format!("cj-{sfx}");
        let out = create(
            &t,
            bin,
            &[
                "cronjob",
                &cj,
                "-n",
                &ns,
                "--image=busybox",
                "--schedule=*/5 * * * *",
            ],
        );
        assert_eq!(out.trim(), format!("cronjob.batch/{cj} created"));
        let got = get_json(&t, &["cronjob", &cj, "-n", &ns]);
        assert_eq!(got["kind"], "CronJob");
        assert_eq!(got["spec"]["schedule"], "*/5 * * * *");
        let pod = &got["spec"]["jobTemplate"]["spec"]["template"]["spec"];
        assert_eq!(pod["restartPolicy"], "OnFailure", "{got}");
        assert_eq!(pod["containers"][0]["name"], cj.as_str());
        assert_eq!(pod["containers"][0]["image"], "busybox");

        let svc = format!("svc-{sfx}");
        let out = create(
            &t,
            bin,
            &["service", "clusterip", &svc, "-n", &ns, "--tcp=80:8080"],
        );
        assert_eq!(out.trim(), format!("service/{svc} created"));
        let got = get_json(&t, &["service", &svc, "-n", &ns]);
        assert_eq!(
            (got["apiVersion"].as_str(), got["kind"].as_str()),
            (Some("v1"), Some("Service"))
        );
        assert_eq!(got["spec"]["type"], "ClusterIP");
        assert_eq!(got["spec"]["selector"]["app"], svc.as_str());
        let port = &got["spec"]["ports"][0];
        assert_eq!(port["name"], "80-8080");
        assert_eq!(port["port"], 80);
        assert_eq!(
            port["targetPort"], 8080,
            "an IntOrString int stays a number: {port}"
        );
        assert_eq!(port["protocol"], "TCP");

        let ing = format!("ing-{sfx}");
        let out = create(
            &t,
            bin,
            &["ingress", &ing, "-n", &ns, "--rule=foo.com/bar=svc1:8080"],
        );
        assert_eq!(out.trim(), format!("ingress.networking.k8s.io/{ing} created"));
        let got = get_json(&t, &["ingress", &ing, "-n", &ns]);
        assert_eq!(got["apiVersion"], "networking.k8s.io/v1");
        let rule = &got["spec"]["rules"][0];
        assert_eq!(rule["host"], "foo.com", "{got}");
        let path = &rule["http"]["paths"][0];
        assert_eq!(path["path"], "/bar");
        assert_eq!(path["pathType"], "Exact");
        assert_eq!(path["backend"]["service"]["name"], "svc1");
        assert_eq!(path["backend"]["service"]["port"]["number"], 8080);

        let pdb = format!("pdb-{sfx}");
        let out = create(
            &t,
            bin,
            &[
                "poddisruptionbudget",
                &pdb,
                "-n",
                &ns,
                "--selector=app=x",
                "--min-available=1",
            ],
        );
        assert_eq!(out.trim(), format!("poddisruptionbudget.policy/{pdb} created"));
        let got = get_json(&t, &["poddisruptionbudget", &pdb, "-n", &ns]);
        assert_eq!(got["apiVersion"], "policy/v1");
        assert_eq!(got["spec"]["minAvailable"], 1, "{got}");
        assert_eq!(got["spec"]["selector"]["matchLabels"]["app"], "x");
        assert!(got["spec"].get("maxUnavailable").is_none(), "{got}");

        let quota = format!("quota-{sfx}");
        let out = create(&t, bin, &["quota", &quota, "-n", &ns, "--hard=pods=10"]);
        assert_eq!(out.trim(), format!("resourcequota/{quota} created"));
        let got = get_json(&t, &["resourcequota", &quota, "-n", &ns]);
        assert_eq!(got["kind"], "ResourceQuota");
        assert_eq!(got["spec"]["hard"], serde_json::json!({"pods": "10"}));

        let pc = format!("pc-{sfx}");
        let out = create(&t, bin, &["priorityclass", &pc, "--value=1000"]);
        assert_eq!(
            out.trim(),
            format!("priorityclass.scheduling.k8s.io/{pc} created")
        );
        let got = get_json(&t, &["priorityclass", &pc]);
        assert_eq!(got["apiVersion"], "scheduling.k8s.io/v1");
        assert_eq!(got["value"], 1000);
        assert_eq!(got["preemptionPolicy"], "PreemptLowerPriority");
        assert!(
            got.get("globalDefault").is_none(),
            "a false non-pointer bool is dropped: {got}"
        );
        // `value` has no omitempty: an explicit 0 must read back as 0, not vanish.
        let pc0 = format!("pc0-{sfx}");
        create(&t, bin, &["priorityclass", &pc0, "--value=0"]);
        assert_eq!(get_json(&t, &["priorityclass", &pc0])["value"], 0);
    }
    // The priority classes are cluster-scoped: not removed with the namespace.
    for bin in BINS {
        let sfx = bin.replace('.', "-");
        t.kubectl_ok(
            &[
                "delete",
                "priorityclass",
                &format!("pc-{sfx}"),
                &format!("pc0-{sfx}"),
            ],
            None,
        );
    }
}
