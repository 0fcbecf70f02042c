//! `gateway`: the gateway operator's benchmark (issue 13): the time from a GatewayRoute change
//! to the first request served by the new route (p50/p99 over 100 changes, with a steady load
//! beside it whose failed requests are counted), and the cost of one reload with 10, 100 and
//! 1,000 routes.
//!
//! * Change to first request: crwatch-apiserver and the operator run in this process over a
//!   real nginx (a temporary prefix on loopback ports) and two echo backends. Changes alternate
//!   between creating a route for a new host and moving an existing route from one backend to
//!   the other (weights 1/0 and 0/1). Each is timed from just before the API write (so the
//!   write's round trip is included) to the first response from the expected backend, polled
//!   every millisecond on new connections; the write's acknowledgement and the moment a watch
//!   sees the route `Programmed` for its generation are reported beside it. Optionally the
//!   same runs with many routes already live through the API server (`--loaded-routes`).
//! * Reload cost: the operator's sync engine alone (its snapshot is a plain value, so the API
//!   server is not what is measured) with N routes; one more change is broken down into plan
//!   and render, writing the generation, `nginx -t`, and reload until the new workers serve it
//!   and the old ones stopped accepting; another goes through `Engine::sync()` whole. nginx's
//!   memory (master and workers, from /proc) is read with no routes, with N, and after the
//!   changes.
//!
//! Run it with `scripts/bench-gateway` (builds it in release first).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use crwatch_apiserver::TestServer;
use futures::{StreamExt, TryStreamExt};
use gateway_operator::backend::Backend;
use gateway_operator::engine::Engine;
use gateway_operator::loadgen::{LoadConfig, LoadGen, LoadStats, first_success_after};
use gateway_operator::nginx::{Mode, Nginx, accepting, children};
use gateway_operator::plan::{Snapshot, plan};
use gateway_operator::render::{Settings, render};
use gateway_operator::run::RunOptions;
use gateway_operator::types::GatewayRoute;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const USAGE: &str = "usage: gateway [--changes N] [--rate R] [--routes N,N,...] [--loaded-routes N,N,...]
               [--repeats K] [--json FILE] [--nginx PATH]

The gateway operator's benchmark: GatewayRoute change to first request served (through
crwatch-apiserver and the operator, under a steady load), and nginx's reload cost with N routes.

  --changes N          route changes timed per run, alternating create / backend switch (default 100)
  --spacing S          quiet (default: each change once nginx took the previous reload fully) or
                       back-to-back (each change as soon as the previous is Programmed; nginx
                       then paces reloads by its 100 ms post-reload pause)
  --rate R             steady load on a stable route during the changes, requests/s (default 200)
  --routes L           route counts for the reload cost (default 10,100,1000)
  --loaded-routes L    routes already live through the API server during the change runs,
                       one run each (default 0,1000)
  --repeats K          changes measured per route count for the reload cost, medians (default 5)
  --json FILE          also write every figure (and the raw samples) as JSON
  --nginx PATH         the nginx binary (default: $CRWATCH_NGINX, nginx on PATH, /usr/sbin/nginx)";

const NAMESPACE: &str = "bench";
/// How long one change may take to be served (or Programmed) before the run is declared broken.
const WAIT_LIMIT: Duration = Duration::from_secs(30);
/// How long loading the background routes through the API server may take.
const BULK_LIMIT: Duration = Duration::from_secs(900);
/// How often the new route is polled for (the resolution of the change-to-first-request figure).
const POLL: Duration = Duration::from_millis(1);
/// API writers in parallel while loading background routes.
const BULK_WRITERS: usize = 8;

struct Options {
    changes: usize,
    rate: u32,
    routes: Vec<usize>,
    loaded: Vec<usize>,
    repeats: usize,
    json: Option<PathBuf>,
    nginx: PathBuf,
    /// Wait before each change until nginx's master has reaped the previous reload's old
    /// workers: nginx pauses 100 ms after every reload before it takes the next one, so
    /// back-to-back changes measure that pause, spaced ones the operator.
    quiet: bool,
}

fn parse_args() -> Result<Options> {
    let mut o = Options {
        changes: 100,
        rate: 200,
        routes: vec![10, 100, 1000],
        loaded: vec![0, 1000],
        repeats: 5,
        json: None,
        nginx: PathBuf::new(),
        quiet: true,
    };
    let mut nginx = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let value = args
            .next()
            .ok_or_else(|| anyhow!("{flag} needs a value\n\n{USAGE}"))?;
        let number =
            |v: &str| -> Result<usize> { v.parse().with_context(|| format!("{flag} {v:?}: not a number")) };
        match flag.as_str() {
            "--changes" => o.changes = number(&value)?,
            "--rate" => o.rate = u32::try_from(number(&value)?).context("--rate is too large")?,
            "--routes" => o.routes = value.split(',').map(number).collect::<Result<_>>()?,
            "--loaded-routes" => o.loaded = value.split(',').map(number).collect::<Result<_>>()?,
            "--repeats" => o.repeats = number(&value)?,
            "--json" => o.json = Some(PathBuf::from(value)),
            "--nginx" => nginx = Some(PathBuf::from(value)),
            "--spacing" => {
                o.quiet = match value.as_str() {
                    "quiet" => true,
                    "back-to-back" => false,
                    other => bail!("--spacing {other:?}: quiet or back-to-back"),
                }
            }
            _ => bail!("unknown option {flag}\n\n{USAGE}"),
        }
    }
    ensure!((2..=10_000).contains(&o.changes), "--changes is 2 to 10000");
    ensure!((1..=10_000).contains(&o.rate), "--rate is 1 to 10000");
    ensure!(
        !o.routes.is_empty() && o.routes.len() <= 16 && o.routes.iter().all(|n| (1..=20_000).contains(n)),
        "--routes are 1 to 20000 each (at most 16 counts)"
    );
    ensure!(
        !o.loaded.is_empty() && o.loaded.len() <= 16 && o.loaded.iter().all(|n| *n <= 10_000),
        "--loaded-routes are 0 to 10000 each (at most 16 counts)"
    );
    ensure!((1..=1000).contains(&o.repeats), "--repeats is 1 to 1000");
    o.nginx = match nginx {
        Some(p) => p,
        None => gateway_operator::nginx::find_binary()
            .ok_or_else(|| anyhow!("nginx not found: install it (scripts/test does) or pass --nginx"))?,
    };
    ensure!(o.nginx.is_file(), "{} is not a file", o.nginx.display());
    Ok(o)
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The nearest-rank percentile of sorted samples (`p` in 0..=1).
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn median(samples: &[Duration]) -> Duration {
    let mut s = samples.to_vec();
    s.sort_unstable();
    percentile(&s, 0.5)
}

/// The machine the figures come from.
struct Machine {
    cores: usize,
    cpu: String,
    kernel: String,
    nginx: String,
}

fn machine(nginx: &Path) -> Machine {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    // `nginx -v` prints its version on stderr.
    let nginx = std::process::Command::new(nginx)
        .arg("-v")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into());
    Machine {
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu,
        kernel,
        nginx,
    }
}

/// Kills nginx (its whole process group) when dropped: the operator starts it so that it
/// outlives the operator, which a benchmark must not leave behind.
struct NginxGuard(Nginx);

impl Drop for NginxGuard {
    fn drop(&mut self) {
        self.0.kill_now();
    }
}

/// nginx's memory: master and workers.
#[derive(Clone, Copy, Debug, Default)]
struct Mem {
    processes: usize,
    rss_kib: u64,
    /// The master's share of `rss_kib` (it parses every configuration, so it grows with the
    /// routes and across reloads).
    master_rss_kib: u64,
    /// Proportional set size: shared pages split between the processes, so the sum is not
    /// inflated by the workers' copy-on-write pages shared with the master.
    pss_kib: u64,
}

impl Mem {
    fn json(&self) -> Value {
        json!({"processes": self.processes, "rss_kib": self.rss_kib, "master_rss_kib": self.master_rss_kib,
               "pss_kib": self.pss_kib})
    }
}

fn proc_field(path: &str, name: &str) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or_default()
}

fn nginx_memory(nginx: &Nginx) -> Result<Mem> {
    let master = nginx.master_pid().ok_or_else(|| anyhow!("no nginx master"))?;
    let mut mem = Mem {
        master_rss_kib: proc_field(&format!("/proc/{master}/status"), "VmRSS:"),
        ..Mem::default()
    };
    for pid in std::iter::once(master).chain(children(master)) {
        mem.processes += 1;
        mem.rss_kib += proc_field(&format!("/proc/{pid}/status"), "VmRSS:");
        mem.pss_kib += proc_field(&format!("/proc/{pid}/smaps_rollup"), "Pss:");
    }
    Ok(mem)
}

/// Wait until every child of the master is a live worker (no old worker draining or waiting
/// to be reaped): nginx takes a reload at once only then.
async fn quiet(nginx: &Nginx) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let Some(master) = nginx.master_pid() else { return };
        if children(master).into_iter().all(accepting) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Wait until the old workers of earlier reloads have exited (their memory would be counted
/// otherwise); gives up quietly after a while, the figure then includes them.
async fn settle(nginx: &Nginx) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        let Some(master) = nginx.master_pid() else { return };
        let draining = children(master).into_iter().any(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("shutting down"))
        });
        if !draining {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn route_json(name: &str, spec: Value) -> Result<GatewayRoute> {
    serde_json::from_value(json!({
        "apiVersion": "gateway.crwatch.io/v1alpha1", "kind": "GatewayRoute",
        "metadata": {"name": name}, "spec": spec,
    }))
    .with_context(|| format!("route {name}"))
}

/// Backends `a` and `b` with all the weight on one of them.
fn switch_spec(host: &str, a: &Backend, b: &Backend, to_b: bool) -> Value {
    json!({"host": host, "backends": [
        {"url": a.url(), "weight": u32::from(!to_b)},
        {"url": b.url(), "weight": u32::from(to_b)},
    ]})
}

/// When a watch first saw each (route, generation) `Programmed`.
#[derive(Default)]
struct Programmed {
    seen: Mutex<HashMap<(String, i64), Instant>>,
    changed: tokio::sync::Notify,
}

impl Programmed {
    fn record(&self, r: &GatewayRoute) {
        let (Some(name), Some(generation)) = (r.metadata.name.clone(), r.metadata.generation) else {
            return;
        };
        let programmed = r.status.as_ref().is_some_and(|s| {
            s.conditions.iter().any(|c| {
                c.type_ == "Programmed"
                    && c.status.as_str() == "True"
                    && c.observed_generation == Some(generation)
            })
        });
        if programmed {
            self.seen
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry((name, generation))
                .or_insert_with(Instant::now);
            self.changed.notify_waiters();
        }
    }

    fn get(&self, name: &str, generation: i64) -> Option<Instant> {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(name.to_string(), generation))
            .copied()
    }

    fn count(&self, f: impl Fn(&str, i64) -> bool) -> usize {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .filter(|(n, g)| f(n, *g))
            .count()
    }

    /// Wait until `done` holds, re-checking on every recorded status.
    async fn wait_for<T>(&self, limit: Duration, what: &str, done: impl Fn(&Self) -> Option<T>) -> Result<T> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            // Registered before the check, so a status recorded in between is not missed.
            notified.as_mut().enable();
            if let Some(t) = done(self) {
                return Ok(t);
            }
            tokio::time::timeout_at(deadline, notified)
                .await
                .map_err(|_| anyhow!("timed out after {limit:?} waiting for {what}"))?;
        }
    }

    async fn wait(&self, name: &str, generation: i64) -> Result<Instant> {
        self.wait_for(
            WAIT_LIMIT,
            &format!("{name} generation {generation} Programmed"),
            |p| p.get(name, generation),
        )
        .await
    }
}

/// One timed change.
struct Change {
    kind: &'static str,
    /// The API write's round trip.
    ack: Duration,
    /// From before the write to the first response from the new backend.
    first: Duration,
    /// From before the write to a watch seeing `Programmed` for the new generation.
    programmed: Duration,
}

struct ChangeRun {
    loaded: usize,
    /// How long loading the background routes took (created until all Programmed).
    bulk: Option<Duration>,
    changes: Vec<Change>,
    load: LoadStats,
}

/// The operator in this process on an in-process API server, over a real nginx.
struct Operator {
    server: TestServer,
    addr: SocketAddr,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    nginx: NginxGuard,
    _prefix: tempfile::TempDir,
}

impl Operator {
    async fn start(nginx_binary: &Path) -> Result<Operator> {
        let server = TestServer::start().await.context("starting crwatch-apiserver")?;
        for crd in gateway_operator::crd::crds() {
            server.server().apply(crd).await.context("applying a CRD")?;
        }
        let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(server.client());
        namespaces
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": NAMESPACE}}))?,
            )
            .await
            .context("creating the namespace")?;
        let prefix = tempfile::Builder::new().prefix("crwatch-gwbench-").tempdir()?;
        let http = free_port()?;
        let options = RunOptions::local(
            nginx_binary.to_path_buf(),
            PathBuf::from(prefix.path()),
            http,
            free_port()?,
        );
        let nginx = NginxGuard(Nginx::new(
            nginx_binary.to_path_buf(),
            options.settings.clone(),
            Mode::Start,
        )?);
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        let task = tokio::spawn(gateway_operator::run::run(server.client(), options, async move {
            stop.cancelled().await
        }));
        let op = Operator {
            server,
            addr: SocketAddr::from(([127, 0, 0, 1], http)),
            cancel,
            task,
            nginx,
            _prefix: prefix,
        };
        // nginx comes up with the operator's first sync, even without routes.
        let deadline = Instant::now() + Duration::from_secs(60);
        while op.nginx.0.serving().await.is_none() {
            ensure!(Instant::now() < deadline, "nginx did not start");
            ensure!(!op.task.is_finished(), "the operator stopped while starting");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(op)
    }

    async fn stop(self) -> Result<()> {
        self.cancel.cancel();
        match tokio::time::timeout(Duration::from_secs(60), self.task).await {
            Ok(joined) => joined.context("the operator task")?.context("the operator")?,
            Err(_) => bail!("the operator did not stop within 60 s"),
        }
        drop(self.nginx);
        Ok(())
    }
}

async fn change_run(opts: &Options, loaded: usize) -> Result<ChangeRun> {
    let op = Operator::start(&opts.nginx).await?;
    let a = Backend::start("a").await?;
    let b = Backend::start("b").await?;
    let routes: Api<GatewayRoute> = Api::namespaced(op.server.client(), NAMESPACE);
    let pp = PostParams::default();

    let programmed = Arc::new(Programmed::default());
    let watch = {
        let (p, api) = (programmed.clone(), routes.clone());
        tokio::spawn(async move {
            let mut events = watcher(api, watcher::Config::default()).boxed();
            while let Some(event) = events.next().await {
                match event {
                    Ok(watcher::Event::Apply(r) | watcher::Event::InitApply(r)) => p.record(&r),
                    Ok(_) => {}
                    Err(e) => eprintln!("route watch: {e} (retrying)"),
                }
            }
        })
    };

    // The stable route under load, and the route whose backend switches.
    let steady = routes
        .create(
            &pp,
            &route_json(
                "steady",
                json!({"host": "steady.bench", "backends": [{"url": a.url()}, {"url": b.url()}]}),
            )?,
        )
        .await?;
    let shift = routes
        .create(
            &pp,
            &route_json("shift", switch_spec("shift.bench", &a, &b, false))?,
        )
        .await?;
    programmed
        .wait("steady", steady.metadata.generation.unwrap_or(1))
        .await?;
    programmed
        .wait("shift", shift.metadata.generation.unwrap_or(1))
        .await?;
    first_success_after(op.addr, "shift.bench", "/", &[], Some("a"), POLL, WAIT_LIMIT).await?;

    let bulk = if loaded > 0 {
        let started = Instant::now();
        futures::stream::iter(0..loaded)
            .map(|i| {
                let (routes, url) = (routes.clone(), if i % 2 == 0 { a.url() } else { b.url() });
                async move {
                    let r = route_json(
                        &format!("bulk-{i:05}"),
                        json!({"host": format!("bulk-{i}.bench"), "path": {"value": "/api"}, "backends": [{"url": url}]}),
                    )?;
                    routes.create(&PostParams::default(), &r).await?;
                    anyhow::Ok(())
                }
            })
            .buffer_unordered(BULK_WRITERS)
            .try_collect::<Vec<()>>()
            .await
            .context("creating the background routes")?;
        programmed
            .wait_for(
                BULK_LIMIT,
                &format!("{loaded} background routes Programmed"),
                |p| (p.count(|n, _| n.starts_with("bulk-")) >= loaded).then_some(()),
            )
            .await?;
        let took = started.elapsed();
        eprintln!(
            "{loaded} background routes live after {:.1} s",
            took.as_secs_f64()
        );
        Some(took)
    } else {
        None
    };

    let load = LoadGen::start(LoadConfig::new(op.addr, "steady.bench", "/steady", opts.rate))?;
    let mut changes = Vec::with_capacity(opts.changes);
    let mut shift_to_b = false;
    for i in 0..opts.changes {
        if opts.quiet {
            quiet(&op.nginx.0).await;
        }
        let (kind, name, host, expect, t0, written) = if i % 2 == 0 {
            let name = format!("new-{i:05}");
            let host = format!("new-{i}.bench");
            let backend = if (i / 2) % 2 == 0 { &a } else { &b };
            let r = route_json(&name, json!({"host": host, "backends": [{"url": backend.url()}]}))?;
            let t0 = Instant::now();
            let written = routes
                .create(&pp, &r)
                .await
                .with_context(|| format!("creating {name}"))?;
            ("create", name, host, backend.name().to_string(), t0, written)
        } else {
            shift_to_b = !shift_to_b;
            let patch = json!({"spec": switch_spec("shift.bench", &a, &b, shift_to_b)});
            let t0 = Instant::now();
            let written = routes
                .patch("shift", &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .context("patching shift")?;
            let expect = if shift_to_b { "b" } else { "a" };
            (
                "switch",
                "shift".to_string(),
                "shift.bench".to_string(),
                expect.to_string(),
                t0,
                written,
            )
        };
        let ack = t0.elapsed();
        let generation = written
            .metadata
            .generation
            .ok_or_else(|| anyhow!("{name} has no generation"))?;
        let after_ack = first_success_after(op.addr, &host, "/", &[], Some(&expect), POLL, WAIT_LIMIT)
            .await
            .with_context(|| format!("change {i} ({kind} {name}) never served by {expect}"))?;
        let seen = programmed.wait(&name, generation).await?;
        changes.push(Change {
            kind,
            ack,
            first: ack + after_ack,
            programmed: seen.saturating_duration_since(t0),
        });
    }
    let load = load.stop().await;
    watch.abort();
    op.stop().await?;
    Ok(ChangeRun {
        loaded,
        bulk,
        changes,
        load,
    })
}

/// The reload cost with N routes, over the sync engine alone.
struct ReloadRun {
    routes: usize,
    /// `Engine::sync()` from no routes to N (one reload).
    initial: Duration,
    conf_bytes: usize,
    plan_render: Vec<Duration>,
    write: Vec<Duration>,
    test: Vec<Duration>,
    activate: Vec<Duration>,
    /// From the reload's start until the new workers answer with the new generation.
    new_workers: Vec<Duration>,
    manual_total: Vec<Duration>,
    engine_sync: Vec<Duration>,
    mem_empty: Mem,
    mem_loaded: Mem,
    mem_after: Mem,
}

/// A route as an informer would hold it (the engine's snapshot takes cached objects).
fn cached_route(
    i: usize,
    generation: i64,
    a: &Backend,
    b: &Backend,
    to_b: bool,
) -> Result<Arc<GatewayRoute>> {
    let mut spec = switch_spec(&format!("r-{i}.bench"), a, b, to_b);
    spec["path"] = json!({"value": "/api"});
    let route = serde_json::from_value(json!({
        "apiVersion": "gateway.crwatch.io/v1alpha1", "kind": "GatewayRoute",
        "metadata": {"name": format!("r-{i:05}"), "namespace": NAMESPACE, "generation": generation,
                     "uid": format!("00000000-0000-0000-0000-{i:012}"),
                     "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": spec,
    }))
    .context("a cached route")?;
    Ok(Arc::new(route))
}

async fn reload_run(opts: &Options, n: usize, a: &Backend, b: &Backend) -> Result<ReloadRun> {
    let prefix = tempfile::Builder::new().prefix("crwatch-gwbench-").tempdir()?;
    let http = free_port()?;
    let settings = Settings::loopback(PathBuf::from(prefix.path()), http, free_port()?);
    let nginx = Nginx::new(opts.nginx.clone(), settings.clone(), Mode::Start)?;
    let guard = NginxGuard(nginx.clone());
    let addr = SocketAddr::from(([127, 0, 0, 1], http));
    let world = Arc::new(Mutex::new(Snapshot::default()));
    let w = world.clone();
    let engine = Engine::new(
        nginx.clone(),
        Arc::new(move || w.lock().unwrap_or_else(|p| p.into_inner()).clone()),
    );
    let snapshot = || world.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let set = |i: usize, r: Arc<GatewayRoute>| world.lock().unwrap_or_else(|p| p.into_inner()).routes[i] = r;

    let out = engine.sync().await;
    ensure!(out.error.is_none(), "starting nginx: {:?}", out.error);
    settle(&nginx).await;
    let mem_empty = nginx_memory(&nginx)?;

    let mut on_b = vec![false; n];
    let mut generation = vec![1i64; n];
    world.lock().unwrap_or_else(|p| p.into_inner()).routes = (0..n)
        .map(|i| cached_route(i, 1, a, b, false))
        .collect::<Result<_>>()?;
    engine.touch();
    let out = engine.sync().await;
    ensure!(
        out.error.is_none() && out.reloaded,
        "loading {n} routes: {:?}",
        out.error
    );
    ensure!(
        out.programmed.len() == n,
        "{} of {n} routes programmed",
        out.programmed.len()
    );
    let initial = out.took;
    first_success_after(addr, "r-0.bench", "/api/x", &[], Some("a"), POLL, WAIT_LIMIT).await?;
    settle(&nginx).await;
    let mem_loaded = nginx_memory(&nginx)?;

    let mut run = ReloadRun {
        routes: n,
        initial,
        conf_bytes: 0,
        plan_render: vec![],
        write: vec![],
        test: vec![],
        activate: vec![],
        new_workers: vec![],
        manual_total: vec![],
        engine_sync: vec![],
        mem_empty,
        mem_loaded,
        mem_after: Mem::default(),
    };
    let mut flip = |i: usize| -> Result<String> {
        on_b[i] = !on_b[i];
        generation[i] += 1;
        set(i, cached_route(i, generation[i], a, b, on_b[i])?);
        Ok(if on_b[i] { "b" } else { "a" }.to_string())
    };
    for rep in 0..opts.repeats {
        // One change step by step, as Engine::sync() does it.
        let i = (2 * rep) % n;
        let expect = flip(i)?;
        if opts.quiet {
            quiet(&nginx).await;
        }
        let t0 = Instant::now();
        let p = plan(&snapshot());
        let rendered = render(&p, &settings);
        let t1 = Instant::now();
        nginx.write_generation(&rendered)?;
        let t2 = Instant::now();
        nginx.test(&rendered).await.context("nginx -t")?;
        // Beside the reload: when the new workers first answer with the generation (activate
        // waits longer, until the old workers stopped accepting as well).
        let answering = {
            let (nginx, hash) = (nginx.clone(), rendered.hash.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                while started.elapsed() < WAIT_LIMIT {
                    if nginx.serving().await.as_deref() == Some(hash.as_str()) {
                        return Some(Instant::now());
                    }
                    tokio::time::sleep(POLL).await;
                }
                None
            })
        };
        let t3 = Instant::now();
        nginx.activate(&rendered).await.context("reloading nginx")?;
        let t4 = Instant::now();
        let answered = answering
            .await?
            .ok_or_else(|| anyhow!("the new workers never answered"))?;
        run.new_workers.push(answered.saturating_duration_since(t3));
        run.plan_render.push(t1 - t0);
        run.write.push(t2 - t1);
        run.test.push(t3 - t2);
        run.activate.push(t4 - t3);
        run.manual_total.push(t4 - t0);
        run.conf_bytes = rendered.conf.len() + rendered.files.iter().map(|f| f.bytes.len()).sum::<usize>();
        first_success_after(
            addr,
            &format!("r-{i}.bench"),
            "/api/x",
            &[],
            Some(&expect),
            POLL,
            WAIT_LIMIT,
        )
        .await
        .context("the step-by-step change is not served")?;

        // Another one through the engine, whole.
        let j = (2 * rep + 1) % n;
        let expect = flip(j)?;
        if opts.quiet {
            quiet(&nginx).await;
        }
        engine.touch();
        let out = engine.sync().await;
        ensure!(
            out.error.is_none() && out.reloaded,
            "engine sync: {:?}",
            out.error
        );
        run.engine_sync.push(out.took);
        first_success_after(
            addr,
            &format!("r-{j}.bench"),
            "/api/x",
            &[],
            Some(&expect),
            POLL,
            WAIT_LIMIT,
        )
        .await
        .context("the engine's change is not served")?;
    }
    settle(&nginx).await;
    run.mem_after = nginx_memory(&nginx)?;
    drop(guard);
    Ok(run)
}

fn kind_stats(changes: &[&Change]) -> Value {
    let sorted = |f: fn(&Change) -> Duration| {
        let mut v: Vec<Duration> = changes.iter().map(|c| f(c)).collect();
        v.sort_unstable();
        v
    };
    let (first, ack, prog) = (sorted(|c| c.first), sorted(|c| c.ack), sorted(|c| c.programmed));
    let q = |v: &[Duration]| json!({"p50_ms": ms(percentile(v, 0.5)), "p99_ms": ms(percentile(v, 0.99)), "max_ms": ms(percentile(v, 1.0))});
    json!({"count": changes.len(), "first_request": q(&first), "write_ack": q(&ack), "programmed": q(&prog)})
}

fn print_and_json(opts: &Options, m: &Machine, runs: &[ChangeRun], reloads: &[ReloadRun]) -> Value {
    println!("# Gateway operator benchmark\n");
    println!(
        "Machine: {} cores ({}), kernel {}, {}; {} build.\n",
        m.cores,
        m.cpu,
        m.kernel,
        m.nginx,
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    println!(
        "## Change to first request served ({} changes, {}, alternating create and backend switch; {} req/s on a stable route throughout)\n",
        opts.changes,
        if opts.quiet {
            "each once nginx is quiet"
        } else {
            "back to back"
        },
        opts.rate
    );
    println!(
        "crwatch-apiserver and the operator in one process, a real nginx (1 worker), polled every {} ms on new connections. \
         Times from just before the API write.\n",
        POLL.as_millis()
    );
    println!(
        "| routes live | changes | first request p50 | p99 | max | write ack p50 | p99 | Programmed p50 | p99 | load sent | failed |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let mut runs_json = vec![];
    for r in runs {
        let mut per_kind = serde_json::Map::new();
        for kind in ["all", "create", "switch"] {
            let sel: Vec<&Change> = r
                .changes
                .iter()
                .filter(|c| kind == "all" || c.kind == kind)
                .collect();
            let s = kind_stats(&sel);
            let f = |k: &str, q: &str| s[k][q].as_f64().unwrap_or_default();
            println!(
                "| {} | {} {} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {} | {} |",
                r.loaded + 2,
                sel.len(),
                kind,
                f("first_request", "p50_ms"),
                f("first_request", "p99_ms"),
                f("first_request", "max_ms"),
                f("write_ack", "p50_ms"),
                f("write_ack", "p99_ms"),
                f("programmed", "p50_ms"),
                f("programmed", "p99_ms"),
                if kind == "all" {
                    r.load.sent.to_string()
                } else {
                    String::new()
                },
                if kind == "all" {
                    r.load.failed.to_string()
                } else {
                    String::new()
                },
            );
            per_kind.insert(kind.to_string(), s);
        }
        runs_json.push(json!({
            "routes_live_before": r.loaded + 2,
            "background_load_seconds": r.bulk.map(|d| d.as_secs_f64()),
            "stats": per_kind,
            "load": r.load,
            "samples_ms": r.changes.iter().map(|c| json!({
                "kind": c.kind, "first_request": ms(c.first), "write_ack": ms(c.ack), "programmed": ms(c.programmed),
            })).collect::<Vec<_>>(),
        }));
    }
    println!();
    for r in runs {
        println!("Load during the run with {} routes: {}", r.loaded + 2, r.load);
        if !r.load.failures.is_empty() {
            println!("  failures: {:?}", r.load.failures);
        }
        if let Some(b) = r.bulk {
            println!(
                "  ({} background routes created through the API and Programmed in {:.1} s)",
                r.loaded,
                b.as_secs_f64()
            );
        }
    }

    println!(
        "\n## Reload cost with N routes (sync engine without the API server; medians of {} changes each)\n",
        opts.repeats
    );
    println!(
        "| routes | config bytes | plan+render | write files | nginx -t | new workers answer | reload to live | step total | Engine::sync | first load (0→N) | nginx RSS, 0 routes | RSS, N routes (master) | RSS after changes (master) | PSS after |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mib = |k: u64| k as f64 / 1024.0;
    let mut reload_json = vec![];
    for r in reloads {
        println!(
            "| {} | {} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} MiB | {:.1} MiB ({:.1}) | {:.1} MiB ({:.1}) | {:.1} MiB |",
            r.routes,
            r.conf_bytes,
            ms(median(&r.plan_render)),
            ms(median(&r.write)),
            ms(median(&r.test)),
            ms(median(&r.new_workers)),
            ms(median(&r.activate)),
            ms(median(&r.manual_total)),
            ms(median(&r.engine_sync)),
            ms(r.initial),
            mib(r.mem_empty.rss_kib),
            mib(r.mem_loaded.rss_kib),
            mib(r.mem_loaded.master_rss_kib),
            mib(r.mem_after.rss_kib),
            mib(r.mem_after.master_rss_kib),
            mib(r.mem_after.pss_kib),
        );
        let all = |v: &[Duration]| v.iter().map(|d| ms(*d)).collect::<Vec<_>>();
        reload_json.push(json!({
            "routes": r.routes,
            "config_bytes": r.conf_bytes,
            "median_ms": {
                "plan_render": ms(median(&r.plan_render)), "write": ms(median(&r.write)),
                "nginx_test": ms(median(&r.test)), "new_workers_answer": ms(median(&r.new_workers)), "reload_to_live": ms(median(&r.activate)),
                "step_total": ms(median(&r.manual_total)), "engine_sync": ms(median(&r.engine_sync)),
            },
            "first_load_ms": ms(r.initial),
            "samples_ms": {
                "plan_render": all(&r.plan_render), "write": all(&r.write), "nginx_test": all(&r.test), "new_workers_answer": all(&r.new_workers),
                "reload_to_live": all(&r.activate), "step_total": all(&r.manual_total), "engine_sync": all(&r.engine_sync),
            },
            "nginx_memory": {"no_routes": r.mem_empty.json(), "n_routes": r.mem_loaded.json(), "after_changes": r.mem_after.json()},
        }));
    }
    println!(
        "\nRSS sums master and workers (shared pages counted in each); PSS splits shared pages. \
         \"reload to live\": SIGHUP until the new workers serve the generation and the old ones stopped accepting \
         (nginx keeps old workers accepting for 100 ms after starting new ones); \
         \"new workers answer\": until the first answer with the new generation. \
         The master's RSS grows across reloads (measured here; freed heap is not necessarily returned to the system)."
    );
    json!({
        "machine": {"cores": m.cores, "cpu": m.cpu, "kernel": m.kernel, "nginx": m.nginx},
        "options": {"spacing": if opts.quiet { "quiet" } else { "back-to-back" }, "changes": opts.changes, "rate": opts.rate, "routes": opts.routes, "loaded_routes": opts.loaded,
                    "repeats": opts.repeats, "poll_ms": ms(POLL)},
        "change_to_first_request": runs_json,
        "reload_cost": reload_json,
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    let opts = parse_args()?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let m = machine(&opts.nginx);
    let mut runs = vec![];
    for &loaded in &opts.loaded {
        eprintln!(
            "change to first request: {} changes, {} routes live ...",
            opts.changes,
            loaded + 2
        );
        runs.push(
            change_run(&opts, loaded)
                .await
                .with_context(|| format!("the change run with {loaded} background routes"))?,
        );
    }
    let a = Backend::start("a").await?;
    let b = Backend::start("b").await?;
    let mut reloads = vec![];
    for &n in &opts.routes {
        eprintln!("reload cost with {n} routes ...");
        reloads.push(
            reload_run(&opts, n, &a, &b)
                .await
                .with_context(|| format!("the reload cost with {n} routes"))?,
        );
    }
    let report = print_and_json(&opts, &m, &runs, &reloads);
    if let Some(path) = &opts.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let failed: u64 = runs.iter().map(|r| r.load.failed).sum();
    ensure!(
        failed == 0,
        "{failed} requests of the steady load failed during the changes"
    );
    Ok(())
}
