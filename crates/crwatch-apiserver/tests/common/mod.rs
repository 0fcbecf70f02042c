//! Shared helpers of the conformance suite: the clusters a test runs against (always the
//! in-process server; also a real cluster when `CRWATCH_TEST_KUBECONFIG` names one), kubectl
//! invocation, per-test namespaces and the CRDs the tests need.
//!
//! On a real cluster the suite leaves nothing behind and trusts nothing it finds: the CRDs it
//! needs are applied (server-side, forced) in the versions this repository has, and the
//! namespaces a test created are deleted when its [`Target`] is dropped, also when the test
//! panics.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Once;
use std::time::Duration;

use crwatch_apiserver::{Faults, TestServer};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
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

/// What a run without a real cluster tells its user.
pub const SKIPPED_NOTICE: &str = "notice: real-cluster conformance runs skipped: set CRWATCH_TEST_KUBECONFIG=/path/to/kubeconfig to run the suite against a real cluster too";

/// Tell the user, once per test binary, that the real-cluster runs were skipped. Written to
/// the process's stderr directly: libtest captures only what `print!`/`eprint!` write (and
/// shows it only for failing tests), so an `eprintln!` here never reached a `cargo test` user.
pub fn skipped_notice() {
    NOTICE.call_once(|| {
        use std::io::Write;
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "\n{SKIPPED_NOTICE}");
        let _ = err.flush();
    });
}

/// The in-process server, and the real cluster when `CRWATCH_TEST_KUBECONFIG` is set.
pub async fn targets() -> Vec<Target> {
    let mut out = vec![local().await];
    match std::env::var("CRWATCH_TEST_KUBECONFIG") {
        Ok(path) if !path.is_empty() => out.push(external(PathBuf::from(path)).await),
        _ => skipped_notice(),
    }
    out
}

/// The real cluster's kubeconfig, when one is configured.
pub fn real_cluster() -> Option<PathBuf> {
    std::env::var("CRWATCH_TEST_KUBECONFIG")
        .ok()
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
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

/// A real cluster (or any server) reached through a kubeconfig: no fault handle, and its
/// namespaces are deleted when the target is dropped.
pub async fn external(kubeconfig: PathBuf) -> Target {
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

    /// Make sure the namespace `name` exists (manifests name theirs); one this created is
    /// deleted with the test's own (see [`Target::namespace`]), one that was there is left.
    pub async fn fixed_namespace(&self, name: &str) {
        use k8s_openapi::api::core::v1::Namespace;
        let api: Api<Namespace> = Api::all(self.client.clone());
        let mut ns = Namespace::default();
        ns.metadata.name = Some(name.to_string());
        match api.create(&PostParams::default(), &ns).await {
            Ok(_) => self.namespaces.lock().expect("lock").push(name.to_string()),
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => panic!("[{}] create namespace {name}: {e}", self.name),
        }
    }

    /// Install or update the Database CRD to the version in this repository
    /// (`deploy/database-crd.yaml`) and wait until it is established.
    pub async fn install_database_crd(&self) {
        self.install_crd_file(&database_crd_path()).await;
    }

    /// Install or update a CRD from a manifest: applied server-side with this suite's field
    /// manager, forced, so a cluster holding another version of it (an older Database CRD, a
    /// different schema) gets exactly the versions the tests need. Waits until it is
    /// established and serves every version of the manifest.
    pub async fn install_crd_file(&self, path: &Path) {
        let yaml = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let crd: CustomResourceDefinition =
            serde_saphyr::from_str(&yaml).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()));
        let name = crd.metadata.name.clone().expect("the CRD has a name");
        let crds: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        crds.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap_or_else(|e| panic!("[{}] apply CRD {name}: {e}", self.name));
        let established = await_condition(crds.clone(), &name, conditions::is_crd_established());
        tokio::time::timeout(Duration::from_secs(30), established)
            .await
            .expect("CRD established in time")
            .expect("watch CRD");
        // Every version the manifest has is served (an update may add one).
        let gvs: Vec<String> = crd
            .spec
            .versions
            .iter()
            .filter(|v| v.served)
            .map(|v| format!("/apis/{}/{}", crd.spec.group, v.name))
            .collect();
        let plural = crd.spec.names.plural.clone();
        eventually(30, "every version of the CRD in discovery", || {
            let client = self.client.clone();
            let (gvs, plural) = (gvs.clone(), plural.clone());
            async move {
                for gv in gvs {
                    let req = http::Request::get(&gv).body(Vec::new()).ok()?;
                    let list: serde_json::Value = client.request(req).await.ok()?;
                    let served = list["resources"]
                        .as_array()?
                        .iter()
                        .any(|r| r["name"] == plural.as_str());
                    if !served {
                        return None;
                    }
                }
                Some(())
            }
        })
        .await;
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

/// The field manager the suite applies with.
pub const FIELD_MANAGER: &str = "crwatch-conformance";

/// How long dropping a real-cluster target may take to delete its namespaces.
const DROP_CLEANUP: Duration = Duration::from_secs(30);

impl Drop for Target {
    /// A test that failed (or forgot `cleanup`) still leaves no namespace behind on a real
    /// cluster. Drop cannot await, and the test's runtime may be unwinding or busy (a kube
    /// client of it would need that runtime to make progress), so the deletes run on a fresh
    /// thread with its own runtime and client, and the drop waits for them at most
    /// [`DROP_CLEANUP`]. The in-process server takes its namespaces with it.
    fn drop(&mut self) {
        let names: Vec<String> = match self.namespaces.lock() {
            Ok(mut n) => n.drain(..).collect(),
            Err(p) => p.into_inner().drain(..).collect(),
        };
        if names.is_empty() || self.server.is_some() {
            return;
        }
        let kubeconfig = self.kubeconfig.clone();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("namespace-cleanup".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = done_tx.send(Err(format!("runtime: {e}")));
                        return;
                    }
                };
                let result = rt.block_on(delete_namespaces(kubeconfig, names));
                let _ = done_tx.send(result);
            });
        if spawned.is_err() {
            eprintln!("warning: could not start the namespace cleanup thread");
            return;
        }
        // Inside a multi-threaded runtime, wait in `block_in_place`: a worker blocked here
        // would strand the tasks in its LIFO slot, which no other worker steals (the
        // in-process server's connection task among them: then the delete never finishes,
        // seen under CI load).
        let wait = || done_rx.recv_timeout(DROP_CLEANUP);
        let outcome = match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(wait)
            }
            _ => wait(),
        };
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("warning: deleting the test namespaces failed: {e}"),
            Err(_) => eprintln!(
                "warning: deleting the test namespaces took longer than {DROP_CLEANUP:?}; they may be left behind"
            ),
        }
    }
}

/// Delete namespaces on the cluster of `kubeconfig` (a missing one is fine).
async fn delete_namespaces(kubeconfig: PathBuf, names: Vec<String>) -> Result<(), String> {
    use k8s_openapi::api::core::v1::Namespace;
    let kc = kube::config::Kubeconfig::read_from(&kubeconfig).map_err(|e| e.to_string())?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .map_err(|e| e.to_string())?;
    let client = kube::Client::try_from(cfg).map_err(|e| e.to_string())?;
    let api: Api<Namespace> = Api::all(client);
    for n in names {
        match api.delete(&n, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(format!("delete namespace {n}: {e}")),
        }
    }
    Ok(())
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
