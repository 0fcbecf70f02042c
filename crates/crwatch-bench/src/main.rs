//! `crwatch-bench`: crwatch against its peer kube-runtime, side by side in one run, on an
//! in-process API server: initial sync time and cache heap, watch-event throughput, and
//! reconcile throughput; prints a table of medians and ratios (lower is better).

mod alloc;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use crwatch::controller::{Action, Builder, Request};
use crwatch::informer::{Informer, InformerFactory};
use crwatch::source::kube::KubeSource;
use crwatch::store::ObjectKey;
use crwatch_apiserver::{Config, TestServer};
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Resource;
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, controller, watcher};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

#[global_allocator]
static ALLOC: alloc::Counting = alloc::Counting;

/// How long any single wait may take before the run is declared broken.
const WAIT_LIMIT: Duration = Duration::from_secs(120);
/// How often caches and counters are polled (the same for both peers).
const POLL: Duration = Duration::from_millis(1);
/// Time given to tasks and connections to wind down before heap is read.
const SETTLE: Duration = Duration::from_millis(300);
/// Bytes of data per ConfigMap, in `DATA_KEYS` values.
const DATA_KEYS: usize = 4;
const VALUE_BYTES: usize = 768;

const USAGE: &str = "usage: crwatch-bench [--objects N] [--updates M] [--repeats R] [--concurrency C]

Measures crwatch against kube-runtime on an in-process API server, alternating the two in
one process, and prints the median of R repeats. Build with --release.

  --objects N      ConfigMaps in the cache (default 5000, ~3 KiB of data each)
  --updates M      updates applied for the throughput run (default 5000)
  --repeats R      rounds; the order of the peers alternates (default 3)
  --concurrency C  reconcile workers of both controllers (default 8)";

struct Options {
    objects: usize,
    updates: usize,
    repeats: usize,
    concurrency: usize,
}

fn parse_args() -> Result<Options> {
    let mut o = Options {
        objects: 5000,
        updates: 5000,
        repeats: 3,
        concurrency: 8,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (flag.clone(), None),
        };
        let value = match inline {
            Some(v) => v,
            None => args
                .next()
                .ok_or_else(|| anyhow!("{name} needs a value\n\n{USAGE}"))?,
        };
        let n: usize = value
            .parse()
            .with_context(|| format!("{name} {value:?}: not a number"))?;
        match name.as_str() {
            "--objects" => o.objects = n,
            "--updates" => o.updates = n,
            "--repeats" => o.repeats = n,
            "--concurrency" => o.concurrency = n,
            _ => bail!("unknown option {name}\n\n{USAGE}"),
        }
    }
    ensure!(
        o.objects > 0 && o.repeats > 0 && o.concurrency > 0,
        "N, R and C must be positive"
    );
    ensure!(
        o.concurrency <= usize::from(u16::MAX),
        "--concurrency is at most {}",
        u16::MAX
    );
    Ok(o)
}

/// The two peers, plus kube-runtime with managedFields stripped for a like-for-like heap
/// figure (crwatch drops them by default).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Peer {
    Crwatch,
    Kube,
    KubeStripped,
}

impl Peer {
    fn name(self) -> &'static str {
        match self {
            Peer::Crwatch => "crwatch",
            Peer::Kube => "kube-runtime",
            Peer::KubeStripped => "kube-runtime (managedFields dropped)",
        }
    }
}

/// The server, the namespace under test, and the resourceVersion every object should end at.
struct Bench {
    server: TestServer,
    namespace: String,
    expected: HashMap<String, String>,
    last: Option<(String, String)>,
    revision: usize,
}

fn payload(i: usize, k: usize) -> String {
    // A cheap deterministic generator: distinct, incompressible-looking text per object.
    let mut x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (k as u64 + 1);
    let mut s = String::with_capacity(VALUE_BYTES);
    while s.len() < VALUE_BYTES {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.push_str(&format!("{x:016x}"));
    }
    s.truncate(VALUE_BYTES);
    s
}

fn name_of(i: usize) -> String {
    format!("cm-{i:06}")
}

impl Bench {
    async fn new(objects: usize) -> Result<Self> {
        let server = TestServer::with_config(Config {
            history_window: 200_000,
            watch_buffer: 200_000,
            ..Default::default()
        })
        .await?;
        let namespace = "bench".to_string();
        server
            .server()
            .apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}))
            .await?;
        let mut bench = Bench {
            server,
            namespace,
            expected: HashMap::new(),
            last: None,
            revision: 0,
        };
        for i in 0..objects {
            bench.write(i).await?;
        }
        Ok(bench)
    }

    fn object(&self, i: usize) -> Value {
        let mut data = serde_json::Map::new();
        data.insert("revision".into(), self.revision.to_string().into());
        for k in 0..DATA_KEYS {
            data.insert(format!("value-{k}"), payload(i, k).into());
        }
        json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": name_of(i),
                "namespace": self.namespace,
                "labels": {"app": "crwatch-bench", "shard": (i % 16).to_string()},
            },
            "data": data,
        })
    }

    /// Create or change object `i` (every write carries a new `revision`, so each one is a
    /// real change with a new resourceVersion).
    async fn write(&mut self, i: usize) -> Result<()> {
        self.revision += 1;
        let out = self.server.server().apply(self.object(i)).await?;
        let rv = out
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .ok_or_else(|| anyhow!("the server returned an object without a resourceVersion"))?
            .to_string();
        let name = name_of(i);
        self.expected.insert(name.clone(), rv.clone());
        self.last = Some((name, rv));
        Ok(())
    }

    fn client(&self) -> kube::Client {
        self.server.client()
    }

    fn api(&self) -> Api<ConfigMap> {
        Api::namespaced(self.client(), &self.namespace)
    }

    /// Every cached object is at the version the server last returned for it.
    fn check(&self, cached: impl IntoIterator<Item = Arc<ConfigMap>>) -> Result<()> {
        let mut seen = 0;
        for cm in cached {
            let meta = cm.meta();
            let name = meta.name.as_deref().unwrap_or_default();
            let want = self.expected.get(name).map(String::as_str);
            ensure!(
                meta.resource_version.as_deref() == want,
                "{name}: cache has {:?}, server wrote {want:?}",
                meta.resource_version
            );
            seen += 1;
        }
        ensure!(
            seen == self.expected.len(),
            "cache holds {seen} of {}",
            self.expected.len()
        );
        Ok(())
    }
}

/// A running cache of one peer over the bench namespace.
enum Cache {
    Crwatch {
        _factory: InformerFactory,
        informer: Informer<ConfigMap>,
    },
    Kube {
        reader: reflector::Store<ConfigMap>,
        task: tokio::task::JoinHandle<()>,
    },
}

impl Cache {
    /// Start the cache and return once it holds every object.
    async fn sync(bench: &Bench, peer: Peer) -> Result<Cache> {
        let want = bench.expected.len();
        let cache = match peer {
            Peer::Crwatch => {
                let factory = InformerFactory::new(bench.client());
                let informer = factory.informer(KubeSource::<ConfigMap>::namespaced(
                    bench.client(),
                    &bench.namespace,
                ));
                factory.start();
                informer.wait_synced(WAIT_LIMIT).await?;
                ensure!(
                    informer.store().len() == want,
                    "crwatch synced {} of {want}",
                    informer.store().len()
                );
                Cache::Crwatch {
                    _factory: factory,
                    informer,
                }
            }
            Peer::Kube | Peer::KubeStripped => {
                let (reader, writer) = reflector::store::<ConfigMap>();
                let events = watcher(bench.api(), watcher::Config::default()).default_backoff();
                let task = if peer == Peer::KubeStripped {
                    let events = events.modify(|cm| cm.metadata.managed_fields = None);
                    tokio::spawn(reflector::reflector(writer, events).for_each(|_| async {}))
                } else {
                    tokio::spawn(reflector::reflector(writer, events).for_each(|_| async {}))
                };
                tokio::time::timeout(WAIT_LIMIT, reader.wait_until_ready())
                    .await
                    .context("kube-runtime did not sync")??;
                ensure!(
                    reader.len() == want,
                    "kube-runtime synced {} of {want}",
                    reader.len()
                );
                Cache::Kube { reader, task }
            }
        };
        Ok(cache)
    }

    fn version_of(&self, namespace: &str, name: &str) -> Option<String> {
        match self {
            Cache::Crwatch { informer, .. } => informer
                .store()
                .get(&ObjectKey::new(Some(namespace), name))
                .and_then(|o| o.metadata.resource_version.clone()),
            Cache::Kube { reader, .. } => reader
                .get(&ObjectRef::new(name).within(namespace))
                .and_then(|o| o.metadata.resource_version.clone()),
        }
    }

    fn objects(&self) -> Vec<Arc<ConfigMap>> {
        match self {
            Cache::Crwatch { informer, .. } => informer.store().list(),
            Cache::Kube { reader, .. } => reader.state(),
        }
    }

    fn stop(self) {
        match self {
            // Dropping the factory cancels its informers.
            Cache::Crwatch { .. } => {}
            Cache::Kube { task, .. } => task.abort(),
        }
    }
}

async fn poll_until(what: &str, mut done: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + WAIT_LIMIT;
    while !done() {
        ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(POLL).await;
    }
    Ok(())
}

struct SyncSample {
    time: Duration,
    heap: usize,
    peak: usize,
}

/// Initial sync time and the heap the synced cache holds.
async fn measure_sync(bench: &Bench, peer: Peer) -> Result<SyncSample> {
    tokio::time::sleep(SETTLE).await;
    let before = alloc::current();
    alloc::reset_peak();
    let started = Instant::now();
    let cache = Cache::sync(bench, peer).await?;
    let time = started.elapsed();
    let peak = alloc::peak().saturating_sub(before);
    tokio::time::sleep(SETTLE).await;
    let synced = alloc::current();
    bench.check(cache.objects())?;
    cache.stop();
    tokio::time::sleep(SETTLE).await;
    let after = alloc::current();
    // Before-to-after is what the server kept (caches, connections); synced-to-after is what
    // dropping the cache gave back, i.e. the cache itself.
    eprintln!(
        "  {:<38} sync {:>7.3} s  heap {:>6.1} MiB (baseline drift {:+.1} MiB)  peak {:>6.1} MiB",
        peer.name(),
        time.as_secs_f64(),
        mib(synced.saturating_sub(after)),
        (after as f64 - before as f64) / (1024.0 * 1024.0),
        mib(peak),
    );
    Ok(SyncSample {
        time,
        heap: synced.saturating_sub(after),
        peak,
    })
}

struct ThroughputSample {
    total: Duration,
    lag: Duration,
}

/// Apply `updates` changes through the server's Rust API and wait until the cache has the
/// last one (one watch delivers in order, so it then has all of them; checked afterwards).
async fn measure_throughput(bench: &mut Bench, peer: Peer, updates: usize) -> Result<ThroughputSample> {
    let cache = Cache::sync(bench, peer).await?;
    let objects = bench.expected.len();
    let started = Instant::now();
    for j in 0..updates {
        bench.write(j % objects).await?;
    }
    let written = Instant::now();
    let (name, rv) = bench.last.clone().ok_or_else(|| anyhow!("nothing was written"))?;
    let ns = bench.namespace.clone();
    poll_until("the last update", || {
        cache.version_of(&ns, &name).as_deref() == Some(rv.as_str())
    })
    .await?;
    let total = started.elapsed();
    let lag = written.elapsed();
    bench.check(cache.objects())?;
    cache.stop();
    eprintln!(
        "  {:<38} {updates} updates seen in {:>7.3} s (last write to cache {:>6.1} ms)",
        peer.name(),
        total.as_secs_f64(),
        lag.as_secs_f64() * 1000.0
    );
    Ok(ThroughputSample { total, lag })
}

/// Time from a controller's start until every object was reconciled once (no-op reconcile).
async fn measure_reconcile(bench: &Bench, peer: Peer, concurrency: usize) -> Result<Duration> {
    let want = bench.expected.len();
    let count = Arc::new(AtomicUsize::new(0));
    let cancel = CancellationToken::new();
    let started = Instant::now();
    let task = match peer {
        Peer::Crwatch => {
            let factory = InformerFactory::new(bench.client());
            let informer = factory.informer(KubeSource::<ConfigMap>::namespaced(
                bench.client(),
                &bench.namespace,
            ));
            let controller = Builder::new("crwatch-bench", informer)
                .concurrency(concurrency)
                .build(
                    |_req: Request<ConfigMap>, count: Arc<AtomicUsize>| async move {
                        count.fetch_add(1, Ordering::Relaxed);
                        Ok(Action::done())
                    },
                    count.clone(),
                );
            factory.start();
            let cancel = cancel.clone();
            tokio::spawn(async move {
                controller.run(cancel).await;
                drop(factory);
            })
        }
        Peer::Kube | Peer::KubeStripped => {
            let config = controller::Config::default().concurrency(u16::try_from(concurrency)?);
            let stream = controller::Controller::new(bench.api(), watcher::Config::default())
                .with_config(config)
                .run(
                    |_obj: Arc<ConfigMap>, count: Arc<AtomicUsize>| async move {
                        count.fetch_add(1, Ordering::Relaxed);
                        Ok::<_, Infallible>(controller::Action::await_change())
                    },
                    |_obj, _err: &Infallible, _ctx| controller::Action::await_change(),
                    count.clone(),
                );
            let cancel = cancel.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = stream.for_each(|_| async {}) => {}
                    _ = cancel.cancelled() => {}
                }
            })
        }
    };
    poll_until("every reconcile", || count.load(Ordering::Relaxed) >= want).await?;
    let time = started.elapsed();
    cancel.cancel();
    task.await?;
    let extra = count.load(Ordering::Relaxed) - want;
    eprintln!(
        "  {:<38} {want} reconciles in {:>7.3} s{}",
        peer.name(),
        time.as_secs_f64(),
        if extra > 0 {
            format!(" ({extra} extra)")
        } else {
            String::new()
        }
    );
    Ok(time)
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    match xs.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => xs[n / 2],
        n => (xs[n / 2 - 1] + xs[n / 2]) / 2.0,
    }
}

/// One row of the table: medians of both peers, a unit, and how to print them.
struct Row {
    label: String,
    crwatch: Vec<f64>,
    kube: Vec<f64>,
    unit: &'static str,
}

impl Row {
    fn new(label: String, unit: &'static str) -> Self {
        Row {
            label,
            crwatch: vec![],
            kube: vec![],
            unit,
        }
    }
}

fn print_table(rows: &[Row], opts: &Options) {
    println!();
    println!(
        "crwatch vs kube-runtime: {} objects, {} updates, median of {} repeats; lower is better",
        opts.objects, opts.updates, opts.repeats
    );
    println!();
    println!(
        "{:<46} {:>12} {:>14}   ratio (crwatch / kube-runtime)",
        "benchmark", "crwatch", "kube-runtime"
    );
    for row in rows {
        let (c, k) = (median(row.crwatch.clone()), median(row.kube.clone()));
        let fmt = |v: f64| match row.unit {
            "s" => format!("{v:.2} s"),
            "ms" => format!("{v:.1} ms"),
            unit => format!("{v:.1} {unit}"),
        };
        println!("{:<46} {:>12} {:>14}   {:.2}", row.label, fmt(c), fmt(k), c / k);
    }
}

async fn labelled<T>(what: &str, f: impl Future<Output = Result<T>>) -> Result<T> {
    f.await.with_context(|| what.to_string())
}

async fn run(opts: Options) -> Result<()> {
    let n = opts.objects;
    let mut sync = Row::new(format!("initial sync, {n} objects"), "s");
    let mut heap = Row::new("cache heap after sync".into(), "MiB");
    let mut heap_stripped = Row::new("cache heap, both without managedFields".into(), "MiB");
    let mut peak = Row::new("heap peak during sync (incl. server)".into(), "MiB");
    let mut throughput = Row::new(format!("{} updates applied and seen", opts.updates), "s");
    let mut lag = Row::new("  of which: last write to cache".into(), "ms");
    let mut reconcile = Row::new(
        format!("start to {n} reconciles, concurrency {}", opts.concurrency),
        "s",
    );
    let run_started = Instant::now();
    for round in 0..opts.repeats {
        eprintln!("round {} of {}: seeding {n} ConfigMaps", round + 1, opts.repeats);
        let mut bench = Bench::new(n).await?;
        // Alternate who goes first, so warm-up and server growth do not favour one peer.
        let order = if round % 2 == 0 {
            [Peer::Crwatch, Peer::Kube]
        } else {
            [Peer::Kube, Peer::Crwatch]
        };
        for peer in order {
            let s = labelled("initial sync", measure_sync(&bench, peer)).await?;
            if peer == Peer::Crwatch {
                sync.crwatch.push(s.time.as_secs_f64());
                heap.crwatch.push(mib(s.heap));
                heap_stripped.crwatch.push(mib(s.heap));
                peak.crwatch.push(mib(s.peak));
            } else {
                sync.kube.push(s.time.as_secs_f64());
                heap.kube.push(mib(s.heap));
                peak.kube.push(mib(s.peak));
            }
        }
        let s = labelled("initial sync", measure_sync(&bench, Peer::KubeStripped)).await?;
        heap_stripped.kube.push(mib(s.heap));
        for peer in order {
            let t = labelled("throughput", measure_throughput(&mut bench, peer, opts.updates)).await?;
            let secs = t.total.as_secs_f64();
            let lag_ms = t.lag.as_secs_f64() * 1000.0;
            match peer {
                Peer::Crwatch => {
                    throughput.crwatch.push(secs);
                    lag.crwatch.push(lag_ms);
                }
                _ => {
                    throughput.kube.push(secs);
                    lag.kube.push(lag_ms);
                }
            }
        }
        for peer in order {
            let t = labelled("reconcile", measure_reconcile(&bench, peer, opts.concurrency)).await?;
            match peer {
                Peer::Crwatch => reconcile.crwatch.push(t.as_secs_f64()),
                _ => reconcile.kube.push(t.as_secs_f64()),
            }
        }
        bench.server.shutdown().await?;
    }
    print_table(
        &[sync, heap, heap_stripped, peak, throughput, lag, reconcile],
        &opts,
    );
    println!();
    println!(
        "(whole run {:.0} s on {} cores; heap = bytes requested from the allocator)",
        run_started.elapsed().as_secs_f64(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let opts = parse_args()?;
    if cfg!(debug_assertions) {
        eprintln!("warning: a debug build; run `cargo run --release -p crwatch-bench` for real figures");
    }
    run(opts).await
}
