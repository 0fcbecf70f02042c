//! Testing controllers under the faults that find real operator bugs (Sieve, OSDI'22; Acto,
//! SOSP'23): run any controller against a fresh [`TestServer`] under a series of fault
//! schedules and check, for each, that it converges and keeps its invariants.
//!
//! Enabled by the `testing` feature. A [`FaultTest`] is given:
//!
//! - how to start a server (with the CRDs installed) and the controller (given a client);
//! - the steps a user takes (create, update, delete objects), run on a fault-free client;
//! - a "desired state reached" predicate;
//! - the external resources the controller manages (databases on a server, child objects)
//!   and which of them each primary object should own.
//!
//! Each schedule runs on its own server and namespace; the controller runs in a runtime of
//! its own, so a crash kills every task it spawned, like `kill -9`. The schedules:
//!
//! - [`Fault::None`]: a baseline, which also counts the controller's writes;
//! - [`Fault::Crash`]: the controller is killed right before or right after its Nth write
//!   (N = 1, 2, ... up to the baseline's count, at most [`FaultTest::max_crash_points`]) and
//!   started again;
//! - [`Fault::StaleReads`]: after step K the controller is killed and started again against a
//!   view that lags behind (Sieve's stale-state pattern: a restarted controller talking to an
//!   API server whose cache is behind sees the past, such as an object it already cleaned
//!   up), for [`FaultTest::stale_for`] or until the steps are done, whichever is later;
//! - [`Fault::Coalesce`]: the controller's watches merge each object's changes within a
//!   window, so it misses intermediate states.
//!
//! After the steps, the checks, polled until they hold or `converge_timeout` passes:
//! the predicate holds; no primary object is stuck in deletion; the external resources are
//! exactly those the live objects own (none missing, none leaked, none twice). All through the
//! run, when a primary object carrying the controller's finalizer is deleted, the external
//! resources it owned must be gone already (a finalizer lost to a stale update lets the object
//! go before cleanup), and the finalizer must never disappear from an object that is not being
//! deleted.
//!
//! Delays between steps and restart points are drawn from a seed
//! (`CRWATCH_FAULT_SEED` overrides [`FaultTest::seed`]); a failure names its schedule and seed,
//! and [`FaultTest::only`] runs just that schedule again.
//!
//! ```
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> anyhow::Result<()> {
//! use crwatch::testing::{Env, Fault, FaultTest};
//! use k8s_openapi::api::core::v1::ConfigMap;
//! use kube::api::{Api, PostParams};
//!
//! // A "controller" that copies every ConfigMap `x` labelled role=source to `x-copy`.
//! async fn copier(client: kube::Client) {
//!     let all: Api<ConfigMap> = Api::all(client.clone());
//!     loop {
//!         let Ok(list) = all.list(&Default::default()).await else { continue };
//!         for cm in list.items.iter().filter(|c| {
//!             c.metadata.labels.as_ref().and_then(|l| l.get("role")).map(String::as_str) == Some("source")
//!         }) {
//!             let ns = cm.metadata.namespace.clone().unwrap_or_default();
//!             let mut copy = ConfigMap::default();
//!             copy.metadata.name = Some(format!("{}-copy", cm.metadata.name.clone().unwrap_or_default()));
//!             copy.data = cm.data.clone();
//!             let api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
//!             let _ = api.create(&PostParams::default(), &copy).await;
//!         }
//!         tokio::time::sleep(std::time::Duration::from_millis(50)).await;
//!     }
//! }
//!
//! let source = |name: &'static str| move |env: Env| async move {
//!     let api: Api<ConfigMap> = Api::namespaced(env.client, &env.namespace);
//!     let mut cm = ConfigMap::default();
//!     cm.metadata.name = Some(name.into());
//!     cm.metadata.labels = Some([("role".to_string(), "source".to_string())].into());
//!     api.create(&PostParams::default(), &cm).await?;
//!     Ok(())
//! };
//! let report = FaultTest::<ConfigMap>::new("copier")
//!     .controller(|client| copier(client))
//!     .step("create a", source("a"))
//!     .step("create b", source("b"))
//!     .owns(|cm: &ConfigMap| {
//!         let source = cm.metadata.labels.as_ref().and_then(|l| l.get("role")).is_some();
//!         let name = cm.metadata.name.clone().unwrap_or_default();
//!         if source { vec![format!("{name}-copy")] } else { vec![] }
//!     })
//!     .external(|env: Env| async move {
//!         let api: Api<ConfigMap> = Api::namespaced(env.client, &env.namespace);
//!         let names = api.list(&Default::default()).await?.items.into_iter()
//!             .filter_map(|c| c.metadata.name)
//!             .filter(|n| n.ends_with("-copy"))
//!             .collect();
//!         Ok(names)
//!     })
//!     .max_crash_points(2)
//!     .run()
//!     .await?;
//! assert!(report.runs.iter().any(|r| matches!(r.schedule.fault, Fault::Crash { .. })));
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crwatch_apiserver::TestServer;
pub use crwatch_apiserver::faults::{Lag, Match, WritePoint};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use k8s_openapi::NamespaceResourceScope;
use kube::Resource;
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::watcher;
use rand::{Rng, SeedableRng};
use serde::de::DeserializeOwned;

/// The `User-Agent` of the controller's client: what the faults match.
pub const CONTROLLER_AGENT: &str = "crwatch-testing-controller";

/// Where a step or check runs: a fault-free client and the run's namespace.
#[derive(Clone)]
pub struct Env {
    /// A client the faults never touch.
    pub client: kube::Client,
    /// The namespace of this run (created by the harness).
    pub namespace: String,
    /// The server of this run.
    pub server: Arc<TestServer>,
}

/// A fault a schedule injects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// None: the baseline.
    None,
    /// Kill the controller right before or after its `nth` write, then start it again.
    Crash {
        /// Which write (from 1).
        nth: u64,
        /// Before it is applied, or after (before the controller hears back).
        point: WritePoint,
    },
    /// Kill the controller after step `restart_after` and start it again against a view
    /// `lag` behind, until the steps are done and [`FaultTest::stale_for`] has passed.
    StaleReads {
        /// How far behind.
        lag: Lag,
        /// Restart after this many steps.
        restart_after: usize,
        /// Reads without a resourceVersion are stale too (`Faults::stale_reads_all`); a real
        /// server answers those from etcd, so this asks what the controller does if it sees
        /// the past at all (as an old leader still running may).
        consistent_too: bool,
    },
    /// Merge each object's changes within `window` in the controller's watches.
    Coalesce {
        /// The merge window.
        window: Duration,
    },
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::None => write!(f, "no fault"),
            Fault::Crash { nth, point } => {
                let when = match point {
                    WritePoint::Before => "before",
                    WritePoint::After => "after",
                };
                write!(f, "crash {when} write {nth}")
            }
            Fault::StaleReads {
                lag,
                restart_after,
                consistent_too,
            } => {
                let which = if *consistent_too {
                    "every read"
                } else {
                    "cached reads"
                };
                write!(
                    f,
                    "restart after step {restart_after} onto a view {lag:?} behind ({which})"
                )
            }
            Fault::Coalesce { window } => write!(f, "coalesced events (window {window:?})"),
        }
    }
}

/// One run: a fault and the seed of its delays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    /// The fault.
    pub fault: Fault,
    /// Seeds the delays between steps.
    pub seed: u64,
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (seed {})", self.fault, self.seed)
    }
}

/// One run's outcome.
#[derive(Debug, Clone)]
pub struct Run {
    /// What was injected.
    pub schedule: Schedule,
    /// Whether the fault fired (a crash point the controller never reached did not).
    pub fired: bool,
    /// How long the run took.
    pub took: Duration,
}

/// What a successful [`FaultTest::run`] did.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Every run, in order.
    pub runs: Vec<Run>,
    /// The controller's writes in the baseline run.
    pub baseline_writes: u64,
}

/// A run that broke an invariant or did not converge.
#[derive(Debug, Clone)]
pub struct RunFailure {
    /// The schedule that triggered it (run it again with [`FaultTest::only`]).
    pub schedule: Schedule,
    /// What went wrong.
    pub problems: Vec<String>,
}

/// Why a fault test failed.
#[derive(Debug, thiserror::Error)]
pub enum FaultTestError {
    /// Setting a run up failed (server, namespace, client, a step).
    #[error("{schedule}: {message}")]
    Setup {
        /// The run.
        schedule: Schedule,
        /// What failed.
        message: String,
    },
    /// Runs broke invariants or did not converge.
    #[error("{}", describe(.0))]
    Failed(Vec<RunFailure>),
}

fn describe(failures: &[RunFailure]) -> String {
    let mut out = format!("{} fault schedule(s) failed:", failures.len());
    for f in failures {
        out.push_str(&format!("\n- {}:", f.schedule));
        for p in &f.problems {
            out.push_str(&format!("\n    {p}"));
        }
    }
    out
}

type ServerFn = Arc<dyn Fn() -> BoxFuture<'static, anyhow::Result<TestServer>> + Send + Sync>;
type StartFn = Arc<dyn Fn(kube::Client) -> BoxFuture<'static, ()> + Send + Sync>;
type StepFn = Arc<dyn Fn(Env) -> BoxFuture<'static, anyhow::Result<()>> + Send + Sync>;
type DesiredFn = Arc<dyn Fn(Env) -> BoxFuture<'static, Result<(), String>> + Send + Sync>;
type ExternalFn = Arc<dyn Fn(Env) -> BoxFuture<'static, anyhow::Result<Vec<String>>> + Send + Sync>;
type OwnsFn<K> = Arc<dyn Fn(&K) -> Vec<String> + Send + Sync>;

/// A controller, the steps a user takes, and the checks: run under every fault schedule.
pub struct FaultTest<K> {
    name: String,
    server: ServerFn,
    start: Option<StartFn>,
    steps: Vec<(String, StepFn)>,
    desired: DesiredFn,
    external: ExternalFn,
    owns: OwnsFn<K>,
    finalizer: Option<String>,
    seed: u64,
    step_delay: Duration,
    stale_for: Duration,
    converge_timeout: Duration,
    max_crash_points: usize,
    stale_lags: Vec<Lag>,
    stale_consistent: bool,
    coalesce_windows: Vec<Duration>,
    only: Option<Schedule>,
    _kind: PhantomData<fn() -> K>,
}

impl<K> FaultTest<K>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + fmt::Debug
        + Send
        + Sync
        + 'static,
{
    /// A test named `name` (a prefix of the run namespaces: keep it short, lowercase).
    pub fn new(name: &str) -> Self {
        let seed = std::env::var("CRWATCH_FAULT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(1);
        FaultTest {
            name: name.to_string(),
            server: Arc::new(|| {
                async {
                    TestServer::start()
                        .await
                        .map_err(|e| anyhow::anyhow!("starting the API server: {e}"))
                }
                .boxed()
            }),
            start: None,
            steps: Vec::new(),
            desired: Arc::new(|_| async { Ok(()) }.boxed()),
            external: Arc::new(|_| async { Ok(Vec::new()) }.boxed()),
            owns: Arc::new(|_| Vec::new()),
            finalizer: None,
            seed,
            step_delay: Duration::from_millis(200),
            stale_for: Duration::from_secs(1),
            converge_timeout: Duration::from_secs(30),
            max_crash_points: 8,
            stale_lags: vec![Lag::Revisions(4), Lag::Revisions(16), Lag::Revisions(64)],
            stale_consistent: false,
            coalesce_windows: vec![Duration::from_millis(300)],
            only: None,
            _kind: PhantomData,
        }
    }

    /// How to start a server for a run (install CRDs here); the default is
    /// [`TestServer::start`].
    pub fn server<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<TestServer>> + Send + 'static,
    {
        self.server = Arc::new(move || f().boxed());
        self
    }

    /// How to run the controller with a client: until the future ends or the harness kills it.
    pub fn controller<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(kube::Client) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.start = Some(Arc::new(move |c| f(c).boxed()));
        self
    }

    /// A step a user takes, in order, with a seeded pause before the next.
    pub fn step<F, Fut>(mut self, name: &str, f: F) -> Self
    where
        F: Fn(Env) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        self.steps
            .push((name.to_string(), Arc::new(move |e| f(e).boxed())));
        self
    }

    /// The desired state is reached (`Err` says what is missing).
    pub fn desired<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(Env) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.desired = Arc::new(move |e| f(e).boxed());
        self
    }

    /// Every external resource of this run the controller manages now (one entry per
    /// resource: a name twice is a duplicate).
    pub fn external<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(Env) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<Vec<String>>> + Send + 'static,
    {
        self.external = Arc::new(move |e| f(e).boxed());
        self
    }

    /// The external resources a primary object should own while it exists.
    pub fn owns<F>(mut self, f: F) -> Self
    where
        F: Fn(&K) -> Vec<String> + Send + Sync + 'static,
    {
        self.owns = Arc::new(f);
        self
    }

    /// The controller's finalizer: checked as described in the module docs.
    pub fn finalizer(mut self, name: &str) -> Self {
        self.finalizer = Some(name.to_string());
        self
    }

    /// The seed of the delays (default 1, or `CRWATCH_FAULT_SEED`).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The longest seeded pause between steps (default 200 ms).
    pub fn step_delay(mut self, d: Duration) -> Self {
        self.step_delay = d;
        self
    }

    /// How long a restarted controller is served a stale view at least (default 1 s).
    pub fn stale_for(mut self, d: Duration) -> Self {
        self.stale_for = d;
        self
    }

    /// How long a run may take to converge after its steps (default 30 s).
    pub fn converge_timeout(mut self, d: Duration) -> Self {
        self.converge_timeout = d;
        self
    }

    /// Crash points tried, before and after each write (default 8, spread over the baseline's
    /// writes when it made more).
    pub fn max_crash_points(mut self, n: usize) -> Self {
        self.max_crash_points = n;
        self
    }

    /// The stale-read lags tried, each with a restart after every step (default 4, 16 and 64
    /// revisions).
    pub fn stale_lags(mut self, lags: Vec<Lag>) -> Self {
        self.stale_lags = lags;
        self
    }

    /// Also try every stale-read schedule with consistent reads stale too (see
    /// [`Fault::StaleReads`]; default off).
    pub fn stale_consistent_reads(mut self, on: bool) -> Self {
        self.stale_consistent = on;
        self
    }

    /// The coalescing windows tried (default 300 ms).
    pub fn coalesce_windows(mut self, windows: Vec<Duration>) -> Self {
        self.coalesce_windows = windows;
        self
    }

    /// Run only this schedule (to reproduce a reported failure).
    pub fn only(mut self, schedule: Schedule) -> Self {
        self.only = Some(schedule);
        self
    }

    /// Run the baseline, then every schedule; all failures are reported together.
    pub async fn run(self) -> Result<Report, FaultTestError> {
        let mut report = Report::default();
        let mut failures = Vec::new();
        let first = self.only.clone().unwrap_or(Schedule {
            fault: Fault::None,
            seed: self.seed,
        });
        let writes = self.record(first, &mut report, &mut failures).await?;
        if self.only.is_none() {
            report.baseline_writes = writes;
            for schedule in self.schedules(writes) {
                self.record(schedule, &mut report, &mut failures).await?;
            }
        }
        if failures.is_empty() {
            Ok(report)
        } else {
            Err(FaultTestError::Failed(failures))
        }
    }

    /// Run one schedule and note its outcome; the controller's writes in it.
    async fn record(
        &self,
        schedule: Schedule,
        report: &mut Report,
        failures: &mut Vec<RunFailure>,
    ) -> Result<u64, FaultTestError> {
        let started = Instant::now();
        tracing::info!(test = %self.name, %schedule, "fault schedule");
        let outcome = self.run_one(&schedule, report.runs.len() + 1).await?;
        if !outcome.problems.is_empty() {
            failures.push(RunFailure {
                schedule: schedule.clone(),
                problems: outcome.problems,
            });
        }
        report.runs.push(Run {
            schedule,
            fired: outcome.fired,
            took: started.elapsed(),
        });
        Ok(outcome.writes)
    }

    /// The schedules after a baseline that made `writes` writes.
    fn schedules(&self, writes: u64) -> Vec<Schedule> {
        let mut out = Vec::new();
        let points = (self.max_crash_points as u64).min(writes);
        for i in 0..points {
            // Spread over all writes when there are more than the points tried.
            let nth = 1 + i * writes / points.max(1);
            for point in [WritePoint::Before, WritePoint::After] {
                out.push(Schedule {
                    fault: Fault::Crash { nth, point },
                    seed: self.seed.wrapping_add(out.len() as u64),
                });
            }
        }
        let consistent: &[bool] = if self.stale_consistent {
            &[false, true]
        } else {
            &[false]
        };
        for consistent_too in consistent {
            for lag in &self.stale_lags {
                for restart_after in 1..=self.steps.len() {
                    out.push(Schedule {
                        fault: Fault::StaleReads {
                            lag: *lag,
                            restart_after,
                            consistent_too: *consistent_too,
                        },
                        seed: self.seed.wrapping_add(out.len() as u64),
                    });
                }
            }
        }
        for window in &self.coalesce_windows {
            out.push(Schedule {
                fault: Fault::Coalesce { window: *window },
                seed: self.seed.wrapping_add(out.len() as u64),
            });
        }
        out
    }

    async fn run_one(&self, schedule: &Schedule, index: usize) -> Result<Outcome, FaultTestError> {
        let setup = |message: String| FaultTestError::Setup {
            schedule: schedule.clone(),
            message,
        };
        let start = self
            .start
            .clone()
            .ok_or_else(|| setup("no controller given (FaultTest::controller)".into()))?;
        let server = Arc::new((self.server)().await.map_err(|e| setup(format!("{e:#}")))?);
        let namespace = format!("{}-{index}", self.name);
        let env = Env {
            client: server.client(),
            namespace: namespace.clone(),
            server: server.clone(),
        };
        create_namespace(&env.client, &namespace)
            .await
            .map_err(|e| setup(format!("creating namespace {namespace}: {e}")))?;
        let config = controller_config(&server)
            .await
            .map_err(|e| setup(format!("controller client: {e:#}")))?;
        let faults = server.faults().clone();
        let agent = Match::user_agent(CONTROLLER_AGENT);
        let violations = Arc::new(Mutex::new(Vec::new()));
        let monitor = tokio::spawn(monitor::<K>(
            env.clone(),
            self.finalizer.clone(),
            self.owns.clone(),
            self.external.clone(),
            violations.clone(),
        ));
        let mut rng = rand::rngs::StdRng::seed_from_u64(schedule.seed);
        let mut fired = false;
        let controller = Arc::new(Mutex::new(Killable(None)));
        let launch = {
            let controller = controller.clone();
            let config = config.clone();
            move || -> Result<(), String> {
                let rt = spawn_controller(&config, &start)?;
                controller.lock().unwrap_or_else(|p| p.into_inner()).replace(rt);
                Ok(())
            }
        };
        let mut crash_task = None;
        match &schedule.fault {
            Fault::None => {}
            Fault::Crash { nth, point } => {
                let gate = faults.hold_write(agent.clone(), *nth, *point);
                let controller = controller.clone();
                let launch = launch.clone();
                let point = *point;
                crash_task = Some(tokio::spawn(async move {
                    let held = gate.reached().await;
                    // kill -9: every task of the controller ends where it is.
                    controller.lock().unwrap_or_else(|p| p.into_inner()).kill();
                    match point {
                        WritePoint::Before => gate.fail(),
                        WritePoint::After => gate.release(),
                    }
                    drop(gate);
                    tracing::info!(?held, "controller killed at its crash point; starting it again");
                    launch()
                }));
            }
            // Set at the restart (below).
            Fault::StaleReads { .. } => {}
            Fault::Coalesce { window } => faults.coalesce_events(agent.clone(), *window),
        }
        launch().map_err(setup)?;
        let mut problems = Vec::new();
        let mut stale_since = None;
        for (i, (name, step)) in self.steps.iter().enumerate() {
            if let Err(e) = step(env.clone()).await {
                problems.push(format!("step {:?} failed: {e:#}", name));
                break;
            }
            let pause = rng.random_range(0..=self.step_delay.as_millis() as u64);
            tokio::time::sleep(Duration::from_millis(pause)).await;
            if let Fault::StaleReads {
                restart_after,
                lag,
                consistent_too,
            } = schedule.fault
                && restart_after == i + 1
            {
                // The view is set before the new instance starts: it never sees the present.
                if consistent_too {
                    faults.stale_reads_all(agent.clone(), lag);
                } else {
                    faults.stale_reads(agent.clone(), lag);
                }
                launch().map_err(setup)?;
                stale_since = Some(Instant::now());
                fired = true;
            }
        }
        if let Some(since) = stale_since {
            tokio::time::sleep(self.stale_for.saturating_sub(since.elapsed())).await;
            faults.clear_stale_reads();
        }
        if let Fault::Coalesce { .. } = schedule.fault {
            fired = true;
        }
        if problems.is_empty() {
            problems.extend(self.converge(&env).await);
        }
        if let Some(task) = crash_task {
            if task.is_finished() {
                fired = true;
                if let Ok(Err(e)) = task.await {
                    problems.push(format!("restarting the controller: {e}"));
                }
            } else {
                task.abort();
            }
        }
        monitor.abort();
        problems.extend(violations.lock().unwrap_or_else(|p| p.into_inner()).drain(..));
        let writes = faults
            .requests()
            .iter()
            .filter(|r| r.user_agent.starts_with(CONTROLLER_AGENT) && is_write(&r.verb))
            .count() as u64;
        controller.lock().unwrap_or_else(|p| p.into_inner()).kill();
        Ok(Outcome {
            problems,
            fired,
            writes,
        })
    }

    /// Poll the checks until they all hold or the timeout passes; what still fails then.
    async fn converge(&self, env: &Env) -> Vec<String> {
        let deadline = Instant::now() + self.converge_timeout;
        loop {
            let problems = self.check(env).await;
            if problems.is_empty() || Instant::now() > deadline {
                return problems
                    .into_iter()
                    .map(|p| format!("not converged after {:?}: {p}", self.converge_timeout))
                    .collect();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn check(&self, env: &Env) -> Vec<String> {
        let mut problems = Vec::new();
        if let Err(e) = (self.desired)(env.clone()).await {
            problems.push(format!("desired state not reached: {e}"));
        }
        let api: Api<K> = Api::namespaced(env.client.clone(), &env.namespace);
        let objects = match api.list(&ListParams::default()).await {
            Ok(l) => l.items,
            Err(e) => {
                problems.push(format!("listing {}: {e}", K::plural(&())));
                return problems;
            }
        };
        let mut expected = BTreeMap::<String, usize>::new();
        for o in &objects {
            if o.meta().deletion_timestamp.is_some() {
                problems.push(format!(
                    "{} {:?} is stuck in deletion (finalizers {:?})",
                    K::kind(&()),
                    o.meta().name.clone().unwrap_or_default(),
                    o.meta().finalizers.clone().unwrap_or_default()
                ));
                continue;
            }
            for id in (self.owns)(o) {
                *expected.entry(id).or_default() += 1;
            }
        }
        let external = match (self.external)(env.clone()).await {
            Ok(e) => e,
            Err(e) => {
                problems.push(format!("listing external resources: {e:#}"));
                return problems;
            }
        };
        let mut actual = BTreeMap::<String, usize>::new();
        for id in external {
            *actual.entry(id).or_default() += 1;
        }
        for (id, n) in &actual {
            if *n > 1 {
                problems.push(format!("external resource {id:?} exists {n} times"));
            }
            if !expected.contains_key(id) {
                problems.push(format!(
                    "external resource {id:?} is owned by no live object (leaked)"
                ));
            }
        }
        for id in expected.keys() {
            if !actual.contains_key(id) {
                problems.push(format!("external resource {id:?} is missing"));
            }
        }
        problems
    }
}

/// The controller's runtime: killed (never dropped in place, which would block the caller's
/// runtime waiting for its tasks) when replaced, when the run ends, or on an early return.
struct Killable(Option<tokio::runtime::Runtime>);

impl Killable {
    fn replace(&mut self, rt: tokio::runtime::Runtime) {
        self.kill();
        self.0 = Some(rt);
    }

    fn kill(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for Killable {
    fn drop(&mut self) {
        self.kill();
    }
}

struct Outcome {
    problems: Vec<String>,
    fired: bool,
    writes: u64,
}

fn is_write(verb: &str) -> bool {
    matches!(
        verb,
        "create" | "update" | "patch" | "delete" | "deletecollection"
    )
}

async fn create_namespace(client: &kube::Client, name: &str) -> Result<(), kube::Error> {
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let mut ns = k8s_openapi::api::core::v1::Namespace::default();
    ns.metadata.name = Some(name.to_string());
    match api.create(&PostParams::default(), &ns).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

/// The server's client configuration, with the controller's `User-Agent`.
async fn controller_config(server: &TestServer) -> anyhow::Result<kube::Config> {
    let kubeconfig = kube::config::Kubeconfig::read_from(server.kubeconfig())?;
    let mut config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default()).await?;
    config.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_static(CONTROLLER_AGENT),
    ));
    Ok(config)
}

/// Start the controller in a runtime of its own, so that shutting the runtime down ends
/// every task it spawned (a crash, not a graceful stop).
fn spawn_controller(config: &kube::Config, start: &StartFn) -> Result<tokio::runtime::Runtime, String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("controller-under-test")
        .enable_all()
        .build()
        .map_err(|e| format!("starting the controller's runtime: {e}"))?;
    let config = config.clone();
    let start = start.clone();
    rt.spawn(async move {
        match kube::Client::try_from(config) {
            Ok(client) => start(client).await,
            Err(e) => tracing::error!(error = %e, "building the controller's client"),
        }
    });
    Ok(rt)
}

/// Watch the primary objects on a fault-free client for finalizer violations.
async fn monitor<K>(
    env: Env,
    finalizer: Option<String>,
    owns: OwnsFn<K>,
    external: ExternalFn,
    violations: Arc<Mutex<Vec<String>>>,
) where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let Some(finalizer) = finalizer else { return };
    let api: Api<K> = Api::namespaced(env.client.clone(), &env.namespace);
    let mut stream = watcher(api, watcher::Config::default()).boxed();
    // The uids of objects carrying the finalizer when last seen.
    let mut guarded = BTreeSet::<String>::new();
    let report = |v: String| violations.lock().unwrap_or_else(|p| p.into_inner()).push(v);
    while let Some(ev) = stream.next().await {
        let (obj, deleted) = match ev {
            Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => (o, false),
            Ok(watcher::Event::Delete(o)) => (o, true),
            _ => continue,
        };
        let meta = obj.meta();
        let uid = meta.uid.clone().unwrap_or_default();
        let name = meta.name.clone().unwrap_or_default();
        let has = !deleted && meta.finalizers.as_ref().is_some_and(|f| f.contains(&finalizer));
        if has {
            guarded.insert(uid);
            continue;
        }
        if !guarded.remove(&uid) {
            continue;
        }
        if !deleted && meta.deletion_timestamp.is_none() {
            report(format!(
                "finalizer {finalizer:?} disappeared from {} {name:?}, which is not being deleted",
                K::kind(&())
            ));
            continue;
        }
        // The finalizer is gone from an object being deleted: cleanup must be over.
        let owned: BTreeSet<String> = owns(&obj).into_iter().collect();
        match external(env.clone()).await {
            Ok(now) => {
                let left: Vec<&String> = now.iter().filter(|id| owned.contains(*id)).collect();
                if !left.is_empty() {
                    report(format!(
                        "{} {name:?} lost its finalizer {finalizer:?} while its external resources {left:?} remained (deleted before cleanup)",
                        K::kind(&())
                    ));
                }
            }
            Err(e) => report(format!("listing external resources: {e:#}")),
        }
    }
}
