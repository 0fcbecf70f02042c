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
