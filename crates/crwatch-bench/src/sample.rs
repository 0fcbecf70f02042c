//! The sample-controller workload (issue 14): a `Foo` owns a Deployment, 2,000 Foos, against a
//! separate API server process. The bench starts the release `crwatch-apiserver` (its workload
//! simulator makes Deployments available, with Nodes enough for every Pod) and then crwatch's
//! `examples/sample_controller.rs` or its kube-runtime peer (`src/bin/sample_kube.rs`) as
//! child processes, on loopback, in a temporary directory. It creates the Foos with 8
//! concurrent writers and times until every Foo's status shows its Deployment's wanted
//! replicas available; the controller's peak RSS is its `VmHWM` from `/proc/<pid>/status` and
//! its CPU time `utime + stime` from `/proc/<pid>/stat`, both read the moment the last Foo is
//! done.
//!
//! The server's limits are measured with no controller: a plain writer creating the Foos and
//! their Deployments (the writes the workload cannot do without), and the time until the
//! simulator has made every Deployment available, so the wall time can be compared with what
//! the server can do.
//!
//! `CRWATCH_BENCH_APISERVER=PATH` runs another `crwatch-apiserver` build than the release one
//! beside the bench (to compare server versions, or to keep one fixed while it changes).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::api::{Api, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::runtime::watcher;
use kube::{CustomResource, CustomResourceExt, Resource, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::report::Row;

/// Concurrent writers creating the Foos (and, for the write limit, the Deployments).
const WRITERS: usize = 8;
/// How long a whole run may take before it is declared broken.
const LIMIT: Duration = Duration::from_secs(600);
/// How long a child may take to say it is ready, and to stop after SIGTERM.
const START_LIMIT: Duration = Duration::from_secs(60);
const STOP_LIMIT: Duration = Duration::from_secs(10);
/// Pods a simulated Node runs, and the most Nodes crwatch-apiserver simulates.
const PODS_PER_NODE: usize = 110;
const MAX_NODES: usize = 100;
/// Where the Foos go.
const NAMESPACE: &str = "default";

/// The bench's view of the controllers' `Foo` (the same schema as theirs).
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, JsonSchema)]
#[kube(
    group = "samplecontroller.k8s.io",
    version = "v1alpha1",
    kind = "Foo",
    namespaced
)]
#[kube(status = "FooStatus", shortname = "foo")]
#[serde(rename_all = "camelCase")]
pub struct FooSpec {
    pub deployment_name: String,
    pub replicas: i32,
}

/// The status the controllers write.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FooStatus {
    pub available_replicas: i32,
    pub observed_generation: Option<i64>,
}

/// Foo number `i`: the same names and replicas as the crwatch example's own benchmark mode.
fn numbered_foo(i: usize) -> Foo {
    Foo::new(
        &format!("foo-{i}"),
        FooSpec {
            deployment_name: format!("foo-{i}-nginx"),
            replicas: 1 + (i % 3) as i32,
        },
    )
}

/// The controller under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Controller {
    Crwatch,
    Kube,
}

impl Controller {
    fn name(self) -> &'static str {
        match self {
            Controller::Crwatch => "crwatch",
            Controller::Kube => "kube-runtime",
        }
    }
}

/// The release binaries the section runs.
pub struct Binaries {
    apiserver: PathBuf,
    crwatch: PathBuf,
    kube: PathBuf,
}

impl Binaries {
    /// The binaries beside this one's release directory, or an error naming the build command.
    pub fn find() -> Result<Binaries> {
        let exe = std::env::current_exe().context("locating crwatch-bench")?;
        // target/<profile>/crwatch-bench: the release binaries are in target/release.
        let target = exe
            .parent()
            .and_then(Path::parent)
            .ok_or_else(|| anyhow!("{} has no target directory", exe.display()))?;
        let release = target.join("release");
        let apiserver = std::env::var_os("CRWATCH_BENCH_APISERVER")
            .map(PathBuf::from)
            .unwrap_or_else(|| release.join("crwatch-apiserver"));
        let wanted = [
            (
                apiserver,
                "cargo build --release -p crwatch-apiserver --bin crwatch-apiserver",
            ),
            (
                release.join("examples").join("sample_controller"),
                "cargo build --release -p crwatch --example sample_controller",
            ),
            (
                release.join("sample_kube"),
                "cargo build --release -p crwatch-bench --bin sample_kube",
            ),
        ];
        for (path, build) in &wanted {
            ensure!(
                path.is_file(),
                "the sample section needs {}, which is missing: build it with `{build}`",
                path.display()
            );
        }
        let [apiserver, crwatch, kube] = wanted.map(|(p, _)| p);
        Ok(Binaries {
            apiserver,
            crwatch,
            kube,
        })
    }
}

/// A child process that is killed however the run ends (`kill_on_drop`), with its stderr in
/// a file of the run's temporary directory for the error message.
struct Process {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Process {
    /// Start `cmd` and wait until a line of its stdout contains `ready`; the rest of its
    /// stdout is read and dropped so the pipe never fills.
    async fn start(name: &'static str, mut cmd: Command, dir: &Path, ready: &str) -> Result<Process> {
        let log = dir.join(format!("{name}.log"));
        let stderr = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("{name}: no stdout pipe"))?;
        let mut process = Process { name, child, log };
        let mut lines = BufReader::new(stdout).lines();
        let seen = tokio::time::timeout(START_LIMIT, async {
            while let Some(line) = lines.next_line().await? {
                if line.contains(ready) {
                    return Ok::<bool, std::io::Error>(true);
                }
            }
            Ok(false)
        })
        .await;
        match seen {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => bail!("{name} exited before it was ready{}", process.stderr_tail()),
            Ok(Err(e)) => bail!("{name}: reading its output: {e}"),
            Err(_) => bail!("{name} not ready within {START_LIMIT:?}{}", process.stderr_tail()),
        }
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        // Still running (a controller that failed right after its line is an error).
        if let Some(status) = process.child.try_wait()? {
            bail!("{name} exited ({status}){}", process.stderr_tail());
        }
        Ok(process)
    }

    fn pid(&self) -> Result<u32> {
        self.child
            .id()
            .ok_or_else(|| anyhow!("{} has exited{}", self.name, self.stderr_tail()))
    }

    /// The last lines of its stderr, for an error message.
    fn stderr_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(10)..].join("\n");
        if tail.is_empty() {
            String::new()
        } else {
            format!("; its stderr ends with:\n{tail}")
        }
    }

    /// Ask it to stop (SIGTERM), and kill it when it takes longer than `STOP_LIMIT`.
    async fn stop(mut self) -> Result<()> {
        if let Some(pid) = self.child.id() {
            let pid = i32::try_from(pid).context("pid out of range")?;
            // SAFETY: kill(2) on our own child's pid, which `child` has not reaped yet.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        if tokio::time::timeout(STOP_LIMIT, self.child.wait()).await.is_err() {
            self.child
                .kill()
                .await
                .with_context(|| format!("killing {}", self.name))?;
        }
        Ok(())
    }
}

/// A `crwatch-apiserver` process on a free loopback port, in its own temporary directory.
struct Server {
    process: Process,
    kubeconfig: PathBuf,
    client: kube::Client,
    // Dropped last: the processes' logs and the kubeconfig live here.
    dir: tempfile::TempDir,
}

impl Server {
    /// A server with Nodes enough for the Pods of `foos` Foos.
    async fn start(bin: &Path, foos: usize) -> Result<Server> {
        let dir = tempfile::tempdir().context("creating a temporary directory")?;
        let kubeconfig = dir.path().join("kubeconfig");
        // A simulated Node runs at most 110 Pods (the kubelet's default maxPods); the rest
        // would stay Pending and their Deployments never available.
        let pods = (0..foos).map(|i| 1 + i % 3).sum::<usize>();
        let nodes = pods.div_ceil(PODS_PER_NODE) + 1;
        ensure!(
            nodes <= MAX_NODES,
            "{foos} Foos want {pods} Pods, more than {MAX_NODES} simulated Nodes run"
        );
        let mut cmd = Command::new(bin);
        cmd.arg("--port")
            .arg("0")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .arg("--nodes")
            .arg(nodes.to_string())
            .current_dir(dir.path());
        // Its banner ends with the kubeconfig line, written once the server serves.
        let process = Process::start("crwatch-apiserver", cmd, dir.path(), "kubeconfig:").await?;
        let kc =
            kube::config::Kubeconfig::read_from(&kubeconfig).context("reading the server's kubeconfig")?;
        let config = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .context("the server's kubeconfig")?;
        let client = kube::Client::try_from(config).context("a client for the server")?;
        Ok(Server {
            process,
            kubeconfig,
            client,
            dir,
        })
    }

    async fn stop(self) -> Result<()> {
        let Server { process, dir, .. } = self;
        process.stop().await?;
        drop(dir);
        Ok(())
    }
}

/// What one controller run measured.
pub struct Run {
    pub wall: Duration,
    pub peak_rss_bytes: u64,
    pub cpu: Duration,
}

/// `VmHWM` of `pid`, in bytes.
fn peak_rss(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("{path} has no VmHWM line"))?;
    Ok(kib * 1024)
}

/// User plus system CPU time of `pid` (all its threads).
fn cpu_time(pid: u32) -> Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name is in parentheses and may hold spaces: count fields after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("{path}: unexpected format"))?;
    // Fields 14 and 15 (utime, stime) are the 12th and 13th after the name.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow!("{path}: no field {}", i + 3))
    };
    let total = ticks(11)? + ticks(12)?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    ensure!(hz > 0, "sysconf(_SC_CLK_TCK) failed");
    Ok(Duration::from_secs_f64(total as f64 / hz as f64))
}

/// Install the bench's Foo CRD and wait until it is established (for the write-limit run;
/// the controllers install their own).
async fn install_crd(client: &kube::Client) -> Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut crd = Foo::crd();
    crd.metadata.annotations.get_or_insert_with(Default::default).insert(
        "api-approved.kubernetes.io".into(),
        "unapproved, experimental-only; please get an approval from Kubernetes API reviewers if you're trying to develop a CRD in the *.k8s.io or *.kubernetes.io groups".into(),
    );
    crds.create(&PostParams::default(), &crd)
        .await
        .context("installing the Foo CRD")?;
    let established = await_condition(
        crds,
        "foos.samplecontroller.k8s.io",
        conditions::is_crd_established(),
    );
    tokio::time::timeout(Duration::from_secs(30), established)
        .await
        .context("the Foo CRD not established")??;
    Ok(())
}

/// Create Foos `0..n` with `WRITERS` concurrent writers; with `deployments`, each writer also
/// creates the Foo's Deployment (owned by it, as the controllers make it).
async fn create_foos(client: &kube::Client, n: usize, deployments: bool) -> Result<()> {
    let foos: Api<Foo> = Api::namespaced(client.clone(), NAMESPACE);
    let deps: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    futures::stream::iter(0..n)
        .map(|i| {
            let (foos, deps) = (foos.clone(), deps.clone());
            async move {
                let created = foos
                    .create(&PostParams::default(), &numbered_foo(i))
                    .await
                    .with_context(|| format!("creating foo-{i}"))?;
                if deployments {
                    deps.create(&PostParams::default(), &deployment_for(&created))
                        .await
                        .with_context(|| format!("creating foo-{i}-nginx"))?;
                }
                Ok::<(), anyhow::Error>(())
            }
        })
        .buffer_unordered(WRITERS)
        .try_collect::<()>()
        .await
}

/// The Deployment the controllers make for a Foo.
fn deployment_for(owner: &Foo) -> Deployment {
    let labels = std::collections::BTreeMap::from([
        ("app".to_string(), "nginx".to_string()),
        (
            "controller".to_string(),
            owner.uid().unwrap_or_else(|| owner.name_any()),
        ),
    ]);
    Deployment {
        metadata: ObjectMeta {
            name: Some(owner.spec.deployment_name.clone()),
            namespace: owner.namespace(),
            owner_references: owner.controller_owner_ref(&()).map(|r| vec![r]),
            ..Default::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(owner.spec.replicas),
            selector: LabelSelector {
                match_labels: Some(labels.clone()),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![Container {
                        name: "nginx".into(),
                        image: Some("nginx:latest".into()),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Wait until `n` objects of `api` pass `ready` (a watch, so the bench's polling adds no lists
/// to the server's load); `started` fires once the watch has listed.
async fn until_ready<K>(
    api: Api<K>,
    n: usize,
    started: tokio::sync::oneshot::Sender<()>,
    ready: impl Fn(&K) -> bool,
) -> Result<()>
where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    let what = K::plural(&()).to_string();
    let mut done: HashSet<String> = HashSet::with_capacity(n);
    let mut started = Some(started);
    let mut events = std::pin::pin!(watcher(api, watcher::Config::default()));
    while let Some(event) = events.next().await {
        match event.with_context(|| format!("watching {what}"))? {
            watcher::Event::Apply(o) | watcher::Event::InitApply(o) => {
                if ready(&o) {
                    done.insert(o.name_any());
                } else {
                    done.remove(&o.name_any());
                }
            }
            watcher::Event::Delete(o) => {
                done.remove(&o.name_any());
            }
            watcher::Event::Init => done.clear(),
            watcher::Event::InitDone => {
                if let Some(s) = started.take() {
                    let _ = s.send(());
                }
            }
        }
        if done.len() >= n {
            return Ok(());
        }
    }
    bail!("the {what} watch ended")
}

/// Wait until `n` Foos report their wanted replicas available.
async fn all_available(
    client: kube::Client,
    n: usize,
    started: tokio::sync::oneshot::Sender<()>,
) -> Result<()> {
    until_ready(
        Api::<Foo>::namespaced(client, NAMESPACE),
        n,
        started,
        |f: &Foo| f.status.as_ref().map(|s| s.available_replicas) == Some(f.spec.replicas),
    )
    .await
}

/// Wait until `n` Deployments have their wanted replicas available.
async fn deployments_available(
    client: kube::Client,
    n: usize,
    started: tokio::sync::oneshot::Sender<()>,
) -> Result<()> {
    until_ready(
        Api::<Deployment>::namespaced(client, NAMESPACE),
        n,
        started,
        |d: &Deployment| {
            let wanted = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            d.status.as_ref().and_then(|s| s.available_replicas) == Some(wanted)
        },
    )
    .await
}

/// One controller on a fresh server: the wall time from the first Foo created until all `n`
/// are available, and the controller's peak RSS and CPU time then.
pub async fn measure(bins: &Binaries, controller: Controller, n: usize) -> Result<Run> {
    let server = Server::start(&bins.apiserver, n).await?;
    let result = measure_on(&server, bins, controller, n).await;
    server.stop().await?;
    result
}

async fn measure_on(server: &Server, bins: &Binaries, controller: Controller, n: usize) -> Result<Run> {
    let bin = match controller {
        Controller::Crwatch => &bins.crwatch,
        Controller::Kube => &bins.kube,
    };
    let mut cmd = Command::new(bin);
    cmd.env("KUBECONFIG", &server.kubeconfig)
        .env_remove("RUST_LOG")
        .current_dir(server.dir.path());
    // Both print this once their CRD is established and the controller starts.
    let process = Process::start(
        controller.name(),
        cmd,
        server.dir.path(),
        "sample-controller running",
    )
    .await?;
    let pid = process.pid()?;
    let (synced, synced_rx) = tokio::sync::oneshot::channel();
    let watch = tokio::spawn(all_available(server.client.clone(), n, synced));
    // The watch ends with the run, however it ends.
    let stop_watch = watch.abort_handle();
    let run = async {
        synced_rx
            .await
            .map_err(|_| anyhow!("the Foo watch failed before it listed"))?;
        let started = Instant::now();
        create_foos(&server.client, n, false).await?;
        watch.await.context("the Foo watch task")??;
        Ok::<Instant, anyhow::Error>(started)
    };
    let outcome = tokio::time::timeout(LIMIT, run).await;
    stop_watch.abort();
    let started = outcome.map_err(|_| {
        anyhow!(
            "{} did not make {n} Foos available within {LIMIT:?}",
            controller.name()
        )
    })??;
    let wall = started.elapsed();
    let peak_rss_bytes = peak_rss(pid)?;
    let cpu = cpu_time(pid)?;
    process.stop().await?;
    Ok(Run {
        wall,
        peak_rss_bytes,
        cpu,
    })
}

/// The server's write limit: the time to create `n` Foos and their `n` Deployments with
/// `WRITERS` writers and no controller.
/// Also the time until every Deployment is available: what the server's workload simulator
/// takes (Pods scheduled, started, Ready), the floor of the controllers' wall time.
pub async fn write_limit(bins: &Binaries, n: usize) -> Result<(Duration, Duration)> {
    let server = Server::start(&bins.apiserver, n).await?;
    let result = async {
        install_crd(&server.client).await?;
        let (synced, synced_rx) = tokio::sync::oneshot::channel();
        let watch = tokio::spawn(deployments_available(server.client.clone(), n, synced));
        let stop_watch = watch.abort_handle();
        let run = async {
            synced_rx
                .await
                .map_err(|_| anyhow!("the Deployment watch failed before it listed"))?;
            let started = Instant::now();
            create_foos(&server.client, n, true).await?;
            let created = started.elapsed();
            watch.await.context("the Deployment watch task")??;
            Ok::<_, anyhow::Error>((created, started.elapsed()))
        };
        let outcome = tokio::time::timeout(LIMIT, run).await;
        stop_watch.abort();
        outcome.map_err(|_| anyhow!("{n} Deployments not available within {LIMIT:?}"))?
    }
    .await;
    server.stop().await?;
    result
}

/// The section's rows: `repeats` rounds alternating which controller goes first.
pub async fn run(repeats: usize, n: usize) -> Result<Vec<Row>> {
    let bins = Binaries::find()?;
    let label = |what: &str| format!("sample-controller {n} Foos, {what}");
    let mut wall = Row::new(label("wall"), "s").at(n);
    let mut rss = Row::new(label("controller peak RSS"), "MiB").at(n);
    let mut cpu = Row::new(label("controller CPU"), "s").at(n);
    const PLAIN: &str = "no controller: a plain writer";
    let mut limit = Row::new("  no controller: Foos + Deployments created", "s")
        .at(n)
        .crwatch_only(PLAIN);
    let mut floor = Row::new("  no controller: ... and Deployments available", "s")
        .at(n)
        .crwatch_only(PLAIN);
    for round in 0..repeats {
        eprintln!("sample round {} of {}", round + 1, repeats);
        let (created, available) = write_limit(&bins, n).await.context("the write limit")?;
        eprintln!(
            "  no controller: {n} Foos and {n} Deployments created in {:.2} s, available after {:.2} s",
            created.as_secs_f64(),
            available.as_secs_f64()
        );
        limit.crwatch.push(created.as_secs_f64());
        floor.crwatch.push(available.as_secs_f64());
        for c in crate::order(round, Controller::Crwatch, Controller::Kube) {
            let r = measure(&bins, c, n)
                .await
                .with_context(|| format!("the {} sample controller", c.name()))?;
            let mib = r.peak_rss_bytes as f64 / (1024.0 * 1024.0);
            eprintln!(
                "  {}: {:.2} s, peak RSS {mib:.1} MiB, CPU {:.2} s",
                c.name(),
                r.wall.as_secs_f64(),
                r.cpu.as_secs_f64()
            );
            let values = [
                (&mut wall, r.wall.as_secs_f64()),
                (&mut rss, mib),
                (&mut cpu, r.cpu.as_secs_f64()),
            ];
            for (row, v) in values {
                if c == Controller::Crwatch {
                    row.crwatch.push(v);
                } else {
                    row.push_kube(v);
                }
            }
        }
    }
    Ok(vec![wall, rss, cpu, limit, floor])
}
