//! The sample controller example runs, not only compiles: on the embedded server it installs
//! its CRD (group `samplecontroller.k8s.io`, protected: it carries the approval annotation a
//! real server requires) and reconciles Foos into Deployments.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The example's binary: `cargo test` builds the examples next to the test binaries' directory.
fn example_bin() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test binary");
    exe.parent()
        .and_then(|deps| deps.parent())
        .expect("target dir")
        .join("examples")
        .join(format!("sample_controller{}", std::env::consts::EXE_SUFFIX))
}

#[test]
fn the_sample_controller_reconciles_foos_on_the_embedded_server() {
    let bin = example_bin();
    assert!(
        bin.exists(),
        "{} is missing (cargo test builds examples)",
        bin.display()
    );
    let mut child = Command::new(&bin)
        .args(["--embedded", "--objects", "20"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the sample controller");
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the sample controller did not finish in 120 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("reconciled 20 Foos (20 Deployments)"), "{stdout}");
}

/// Kills the replicas however the test ends.
struct Children(Vec<std::process::Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The README's sharded run: three replicas of the sample controller (`--shard`) against one
/// API server with server-side sharding share the Foos, each Lease in the ring.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_sharded_sample_controllers_share_the_foos() {
    use kube::api::{Api, DynamicObject, ListParams};
    use kube::discovery::ApiResource;

    let server = crwatch_apiserver::TestServer::with_config(crwatch_apiserver::Config {
        feature_gates: crwatch_apiserver::FeatureGates {
            sharded_list_and_watch: true,
        },
        ..Default::default()
    })
    .await
    .unwrap();
    let bin = example_bin();
    let mut children = Children(vec![]);
    for id in ["replica-a", "replica-b", "replica-c"] {
        children.0.push(
            Command::new(&bin)
                .args(["--shard", "--identity", id])
                .env("KUBECONFIG", server.kubeconfig())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start a sample controller replica"),
        );
    }
    let client = server.client();
    let wait = |what: &'static str| {
        let deadline = Instant::now() + Duration::from_secs(60);
        move || assert!(Instant::now() < deadline, "timed out waiting for {what}")
    };
    // The replicas install the CRD; then Foos can be created.
    let check = wait("the Foo CRD");
    while server
        .server()
        .apply(
            serde_json::json!({"apiVersion": "samplecontroller.k8s.io/v1alpha1", "kind": "Foo",
            "metadata": {"name": "foo-0", "namespace": "default"},
            "spec": {"deploymentName": "foo-0-nginx", "replicas": 1}}),
        )
        .await
        .is_err()
    {
        check();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for i in 1..30 {
        server
            .server()
            .apply(
                serde_json::json!({"apiVersion": "samplecontroller.k8s.io/v1alpha1", "kind": "Foo",
                "metadata": {"name": format!("foo-{i}"), "namespace": "default"},
                "spec": {"deploymentName": format!("foo-{i}-nginx"), "replicas": 1}}),
            )
            .await
            .unwrap();
    }
    let ar = ApiResource {
        group: "samplecontroller.k8s.io".into(),
        version: "v1alpha1".into(),
        api_version: "samplecontroller.k8s.io/v1alpha1".into(),
        kind: "Foo".into(),
        plural: "foos".into(),
    };
    let foos: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ar);
    let check = wait("every Foo to report status");
    loop {
        let list = foos.list(&ListParams::default()).await.unwrap();
        let done = list
            .items
            .iter()
            .filter(|f| f.data.pointer("/status/observedGeneration").is_some())
            .count();
        if done == 30 {
            break;
        }
        check();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(client, "default");
    let ring = leases
        .list(&ListParams::default().labels("crwatch.dev/shard-ring=sample-controller"))
        .await
        .unwrap();
    let mut holders: Vec<String> = ring
        .items
        .iter()
        .filter_map(|l| l.spec.as_ref()?.holder_identity.clone())
        .collect();
    holders.sort();
    assert_eq!(holders, ["replica-a", "replica-b", "replica-c"]);
}
