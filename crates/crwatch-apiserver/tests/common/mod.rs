//! Shared helpers of the conformance suite: the clusters a test runs against (always the
//! in-process server; also a real cluster when `CRWATCH_TEST_KUBECONFIG` names one), kubectl
//! invocation, per-test namespaces and the Database CRD.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Once;
use std::time::Duration;

use crwatch_apiserver::{Faults, TestServer};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};

/// Where the Database CRD of shared/DESIGN.md section 8 lives in the repository.
pub fn database_crd_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/database-crd.yaml")
}

/// A cluster under test.
pub struct Target {
    /// `crwatch-apiserver` or `real cluster`.
    pub name: &'static str,
    /// A kube-rs client.
    pub client: kube::Client,
    /// The kubeconfig kubectl uses.
    pub kubeconfig: PathBuf,
    /// Fault injection, only on the in-process server.
    pub faults: Option<Faults>,
    /// The in-process server, if this is one.
    pub server: Option<TestServer>,
    home: tempfile::TempDir,
    namespaces: std::sync::Mutex<Vec<String>>,
}

static NOTICE: Once = Once::new();

/// The in-process server, and the real cluster when `CRWATCH_TEST_KUBECONFIG` is set.
pub async fn targets() -> Vec<Target> {
    let mut out = vec![local().await];
    match std::env::var("CRWATCH_TEST_KUBECONFIG") {
        Ok(path) if !path.is_empty() => out.push(external(PathBuf::from(path)).await),
        _ => NOTICE.call_once(|| {
            eprintln!(
                "notice: real-cluster conformance runs skipped: set CRWATCH_TEST_KUBECONFIG=/path/to/kubeconfig to run the suite against a real cluster too"
            )
        }),
    }
    out
}

/// Only the in-process server (for behaviour that needs the fault handle).
pub async fn local() -> Target {
    let server = TestServer::start().await.expect("start crwatch-apiserver");
    Target {
        name: "crwatch-apiserver",
        client: server.client(),
        kubeconfig: server.kubeconfig().to_path_buf(),
        faults: Some(server.faults().clone()),
        server: Some(server),
        home: tempfile::tempdir().expect("tempdir"),
        namespaces: Default::default(),
    }
}

async fn external(kubeconfig: PathBuf) -> Target {
    let kc = kube::config::Kubeconfig::read_from(&kubeconfig).expect("read CRWATCH_TEST_KUBECONFIG");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("load CRWATCH_TEST_KUBECONFIG");
    Target {
        name: "real cluster",
        client: kube::Client::try_from(cfg).expect("client"),
        kubeconfig,
        faults: None,
        server: None,
        home: tempfile::tempdir().expect("tempdir"),
        namespaces: Default::default(),
    }
}

impl Target {
    /// kubectl from PATH (or `KUBECTL`) pointed at this cluster with a private cache.
    pub fn kubectl(&self) -> Command {
        self.kubectl_bin(&std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into()))
    }

    /// A specific kubectl binary, e.g. `kubectl.1.27`, found on PATH or beside `kubectl`.
    pub fn kubectl_bin(&self, bin: &str) -> Command {
        let mut cmd = Command::new(find_kubectl(bin));
        cmd.env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", self.home.path())
            .env_remove("KUBECTL_EXTERNAL_DIFF")
            .arg(format!(
                "--cache-dir={}",
                self.home.path().join("cache").display()
            ))
            .stdin(Stdio::null());
        cmd
    }

    /// Run kubectl, feeding `stdin`, and return its output.
    pub fn run(&self, mut cmd: Command, stdin: Option<&str>) -> Output {
        use std::io::Write;
        if stdin.is_some() {
            cmd.stdin(Stdio::piped());
        }
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn kubectl");
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(input.as_bytes())
                .expect("write stdin");
        }
        child.wait_with_output().expect("kubectl output")
    }

    /// Run `kubectl ARGS` (stdin optional) and expect success; returns stdout.
    pub fn kubectl_ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let mut cmd = self.kubectl();
        cmd.args(args);
        let out = self.run(cmd, stdin);
        assert!(
            out.status.success(),
            "[{}] kubectl {:?} failed:\nstdout: {}\nstderr: {}",
            self.name,
            args,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Run `kubectl ARGS` and expect failure; returns stderr.
    pub fn kubectl_err(&self, args: &[&str], stdin: Option<&str>) -> String {
        let mut cmd = self.kubectl();
        cmd.args(args);
        let out = self.run(cmd, stdin);
        assert!(
            !out.status.success(),
            "[{}] kubectl {:?} should have failed; stdout: {}",
            self.name,
            args,
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// A fresh namespace for one test (deleted when the target is dropped... or by the
    /// server going away); names are unique per run.
    pub async fn namespace(&self, prefix: &str) -> String {
        use k8s_openapi::api::core::v1::Namespace;
        let name = format!("{prefix}-{}", &uuid_suffix());
        let api: Api<Namespace> = Api::all(self.client.clone());
        let mut ns = Namespace::default();
        ns.metadata.name = Some(name.clone());
        api.create(&PostParams::default(), &ns)
            .await
            .expect("create namespace");
        self.namespaces.lock().expect("lock").push(name.clone());
        name
    }

    /// Create the Database CRD (if missing) and wait until it is established.
    pub async fn install_database_crd(&self) {
        let crds: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        let yaml = std::fs::read_to_string(database_crd_path()).expect("read CRD");
        let crd: CustomResourceDefinition = serde_saphyr::from_str(&yaml).expect("parse CRD");
        match crds.create(&PostParams::default(), &crd).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => panic!("create CRD: {e}"),
        }
        let established = await_condition(
            crds,
            "databases.stable.example.com",
            conditions::is_crd_established(),
        );
        tokio::time::timeout(Duration::from_secs(30), established)
            .await
            .expect("CRD established in time")
            .expect("watch CRD");
    }

    /// Delete the namespaces this target created (real clusters keep nothing behind).
    pub async fn cleanup(&self) {
        use k8s_openapi::api::core::v1::Namespace;
        let api: Api<Namespace> = Api::all(self.client.clone());
        let names: Vec<String> = self.namespaces.lock().expect("lock").drain(..).collect();
        for n in names {
            let _ = api.delete(&n, &DeleteParams::default()).await;
        }
    }
}

fn uuid_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{:x}{}", nanos % 0xfffff, N.fetch_add(1, Ordering::Relaxed))
}

/// Find a kubectl binary: as given if on PATH, else beside `kubectl` after resolving links
/// (where the versioned `kubectl.1.27` … `kubectl.1.33` live on these machines).
pub fn find_kubectl(bin: &str) -> PathBuf {
    if bin.contains('/') {
        return PathBuf::from(bin);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(bin);
        if candidate.is_file() {
            return candidate;
        }
    }
    for dir in std::env::split_paths(&path) {
        let kubectl = dir.join("kubectl");
        if let Ok(real) = std::fs::canonicalize(&kubectl)
            && let Some(parent) = real.parent()
        {
            let candidate = parent.join(bin);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    PathBuf::from(bin)
}

/// Poll `check` until it returns Some, or panic after `secs` seconds with `what`.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {secs}s waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
