//! The cache benchmarks on an in-process API server: initial sync time and the heap a synced
//! cache holds (with and without managedFields), the peak during a relist after 410 Gone,
//! watch-event throughput, and reconcile throughput.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, ensure};
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

use crate::alloc;
use crate::report::mib;

/// How long any single wait may take before the run is declared broken.
pub const WAIT_LIMIT: Duration = Duration::from_secs(300);
/// How often caches and counters are polled (the same for both peers).
const POLL: Duration = Duration::from_millis(1);
/// Bytes of data per ConfigMap, in `DATA_KEYS` values.
const DATA_KEYS: usize = 4;
const VALUE_BYTES: usize = 768;

/// The peers: crwatch and kube-runtime, each with managedFields kept and dropped.
///
/// crwatch drops managedFields by default and kube-runtime keeps them, so `Crwatch` and `Kube`
/// are what users get out of the box; the other two make like-for-like rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    Crwatch,
    CrwatchFull,
    /// crwatch with cold objects compressed (`Informer::compact_cold`, default settings).
    CrwatchCompact,
    Kube,
    KubeStripped,
}

impl Peer {
    pub fn name(self) -> &'static str {
        match self {
            Peer::Crwatch => "crwatch",
            Peer::CrwatchFull => "crwatch (managedFields kept)",
            Peer::CrwatchCompact => "crwatch (cold objects compressed)",
            Peer::Kube => "kube-runtime",
            Peer::KubeStripped => "kube-runtime (managedFields dropped)",
        }
    }

    pub fn is_crwatch(self) -> bool {
        matches!(self, Peer::Crwatch | Peer::CrwatchFull | Peer::CrwatchCompact)
    }
}

/// The server, the namespace under test, and the resourceVersion every object should end at.
pub struct Bench {
    pub server: TestServer,
    pub namespace: String,
    expected: HashMap<String, String>,
    last: Option<(String, String)>,
    revision: usize,
}

pub(crate) fn payload(i: usize, k: usize, bytes: usize) -> String {
    // A cheap deterministic generator: distinct, incompressible-looking text per object.
    let mut x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (k as u64 + 1);
    let mut s = String::with_capacity(bytes + 16);
    while s.len() < bytes {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.push_str(&format!("{x:016x}"));
    }
    s.truncate(bytes);
    s
}

/// A write the server committed: its resourceVersion, and when the call was made and
/// returned (the commit happened in between).
pub struct Written {
    pub rv: u64,
    pub sent: Instant,
    pub returned: Instant,
}

pub fn name_of(i: usize) -> String {
    format!("cm-{i:06}")
}

impl Bench {
    /// A new server holding `objects` ConfigMaps of about 3 KiB.
    pub async fn new(objects: usize) -> Result<Self> {
        let server = TestServer::with_config(Config {
            // Keep history and watch buffers above the largest run, so nothing but the
            // relist benchmark's deliberate compaction sends a 410.
            history_window: (objects * 2).max(200_000),
            watch_buffer: (objects * 2).max(200_000),
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

    pub fn len(&self) -> usize {
        self.expected.len()
    }

    fn object(&self, i: usize) -> Value {
        let mut data = serde_json::Map::new();
        data.insert("revision".into(), self.revision.to_string().into());
        for k in 0..DATA_KEYS {
            data.insert(format!("value-{k}"), payload(i, k, VALUE_BYTES).into());
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
    pub async fn write(&mut self, i: usize) -> Result<Written> {
        self.revision += 1;
        let obj = self.object(i);
        let sent = Instant::now();
        let out = self.server.server().apply(obj).await?;
        let returned = Instant::now();
        let rv = out
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .ok_or_else(|| anyhow!("the server returned an object without a resourceVersion"))?
            .to_string();
        let number = rv
            .parse()
            .with_context(|| format!("resourceVersion {rv:?} is not a number"))?;
        let name = name_of(i);
        self.expected.insert(name.clone(), rv.clone());
        self.last = Some((name, rv));
        Ok(Written {
            rv: number,
            sent,
            returned,
        })
    }

    pub fn client(&self) -> kube::Client {
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
        /// Complete lists the watcher delivered (the first sync counts as one).
        lists: Arc<AtomicU64>,
    },
}

impl Cache {
    /// Start the cache and return once it holds every object.
    async fn sync(bench: &Bench, peer: Peer) -> Result<Cache> {
        let want = bench.len();
        let cache = match peer {
            Peer::Crwatch | Peer::CrwatchFull | Peer::CrwatchCompact => {
                let factory = InformerFactory::new(bench.client());
                let informer = factory.informer(KubeSource::<ConfigMap>::namespaced(
                    bench.client(),
                    &bench.namespace,
                ));
                if peer == Peer::CrwatchFull {
                    informer.set_transform(None);
                }
                if peer == Peer::CrwatchCompact {
                    informer.compact_cold(crwatch::store::Compaction::new());
                }
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
                let lists = Arc::new(AtomicU64::new(0));
                let counter = lists.clone();
                let events = watcher(bench.api(), watcher::Config::default())
                    .default_backoff()
                    .inspect(move |e| {
                        if matches!(e, Ok(watcher::Event::InitDone)) {
                            counter.fetch_add(1, Ordering::Relaxed);
                        }
                    });
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
                Cache::Kube { reader, task, lists }
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

    /// Complete lists applied so far.
    fn lists(&self) -> u64 {
        match self {
            Cache::Crwatch { informer, .. } => informer.stats().relists.load(Ordering::Relaxed),
            Cache::Kube { lists, .. } => lists.load(Ordering::Relaxed),
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

async fn poll_until(what: &str, done: impl FnMut() -> bool) -> Result<()> {
    poll_within(what, WAIT_LIMIT, done).await
}

/// Poll `done` every millisecond until it holds; an error naming `what` after `limit`.
pub(crate) async fn poll_within(what: &str, limit: Duration, mut done: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + limit;
    while !done() {
        ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(POLL).await;
    }
    Ok(())
}

/// One initial sync.
pub struct SyncSample {
    pub time: Duration,
    /// What the synced cache holds: the heap dropping it gave back.
    pub heap: usize,
    /// The heap peak during the sync above the baseline (the server's list responses too).
    pub peak: usize,
    /// The process's counted heap and its RSS with the cache synced (the check on the
    /// counter: it cannot exceed what the process holds).
    pub counted: usize,
    pub rss: usize,
}

fn warn_if_moving(s: &alloc::Settled, when: &str) {
    if !s.quiet {
        eprintln!(
            "  warning: the heap still moved {:.1} s {when}; heap figures are approximate",
            s.waited.as_secs_f64()
        );
    }
}

/// Initial sync time and the heap the synced cache holds.
pub async fn measure_sync(bench: &Bench, peer: Peer) -> Result<SyncSample> {
    let before = alloc::settle().await;
    warn_if_moving(&before, "before the sync");
    alloc::reset_peak();
    let started = Instant::now();
    let cache = Cache::sync(bench, peer).await?;
    let time = started.elapsed();
    let peak = alloc::peak().saturating_sub(before.bytes);
    let synced = alloc::settle().await;
    warn_if_moving(&synced, "after the sync");
    let rss = alloc::rss();
    bench.check(cache.objects())?;
    cache.stop();
    // Dropping the cache frees it in tasks that run afterwards: wait until the counter is
    // stable rather than a fixed pause (at 50,000 objects the old 300 ms missed 175 MiB).
    let after = alloc::settle().await;
    warn_if_moving(&after, "after stopping the cache");
    let heap = synced.bytes.saturating_sub(after.bytes);
    // Before-to-after is what the server kept (caches, connections); synced-to-after is what
    // dropping the cache gave back, i.e. the cache itself.
    eprintln!(
        "  {:<38} sync {:>7.3} s  heap {:>6.1} MiB (baseline drift {:+.1} MiB, freed in {:.2} s)  peak {:>6.1} MiB  RSS {:>6.1} MiB",
        peer.name(),
        time.as_secs_f64(),
        mib(heap),
        (after.bytes as f64 - before.bytes as f64) / (1024.0 * 1024.0),
        after.waited.as_secs_f64(),
        mib(peak),
        mib(rss),
    );
    Ok(SyncSample {
        time,
        heap,
        peak,
        counted: synced.bytes,
        rss,
    })
}

/// The heap during a relist forced by 410 Gone.
pub struct RelistSample {
    /// The cache's steady heap before the relist (the process's heap minus the baseline
    /// without a cache).
    pub steady: usize,
    /// The peak above the same baseline while the cache relisted (the server's list
    /// responses are in it, for both peers alike).
    pub peak: usize,
    pub time: Duration,
}

/// Syncs a cache, then compacts the server's history and ends every watch: the cache's watch
/// resumes from a revision the server no longer has, gets 410 Gone and must list again.
pub async fn measure_relist(bench: &mut Bench, peer: Peer) -> Result<RelistSample> {
    let base = alloc::settle().await;
    let cache = Cache::sync(bench, peer).await?;
    let synced = alloc::settle().await;
    warn_if_moving(&synced, "after the sync");
    let lists = cache.lists();
    alloc::reset_peak();
    let started = Instant::now();
    // Compacting alone is not enough: the cache is at the newest revision, which stays
    // valid. So hold new requests, end the watch and wait until its reconnect is held, write
    // a change the cache cannot have seen, and compact history up to it: the reconnect then
    // resumes from a revision the server no longer has, gets 410 Gone and must list again.
    let faults = bench.server.faults();
    let watches = faults.count("watch", "configmaps");
    faults.pause();
    faults.drop_watches();
    let held = poll_until("the watch to reconnect", || {
        faults.count("watch", "configmaps") > watches
    })
    .await;
    let objects = bench.len();
    let written = tokio::time::timeout(WAIT_LIMIT, bench.write(objects / 2)).await;
    let faults = bench.server.faults();
    faults.compact();
    faults.resume();
    held?;
    written.context("the marker write hung")??;
    let (name, rv) = bench.last.clone().ok_or_else(|| anyhow!("nothing was written"))?;
    let ns = bench.namespace.clone();
    poll_until("the relist", || {
        cache.lists() > lists && cache.version_of(&ns, &name).as_deref() == Some(rv.as_str())
    })
    .await?;
    let time = started.elapsed();
    let peak = alloc::peak().saturating_sub(base.bytes);
    let steady = synced.bytes.saturating_sub(base.bytes);
    bench.check(cache.objects())?;
    cache.stop();
    alloc::settle().await;
    eprintln!(
        "  {:<38} relist {:>7.3} s  steady {:>6.1} MiB  peak {:>6.1} MiB ({:.2}×)",
        peer.name(),
        time.as_secs_f64(),
        mib(steady),
        mib(peak),
        peak as f64 / steady.max(1) as f64
    );
    Ok(RelistSample { steady, peak, time })
}

/// One throughput run.
pub struct ThroughputSample {
    pub total: Duration,
    pub lag: Duration,
}

/// Apply `updates` changes through the server's Rust API and wait until the cache has the
/// last one (one watch delivers in order, so it then has all of them; checked afterwards).
pub async fn measure_throughput(bench: &mut Bench, peer: Peer, updates: usize) -> Result<ThroughputSample> {
    let cache = Cache::sync(bench, peer).await?;
    let objects = bench.len();
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
        "  {:<38} {updates} updates seen in {:>7.3} s (last write to cache {:>7.3} ms)",
        peer.name(),
        total.as_secs_f64(),
        lag.as_secs_f64() * 1000.0
    );
    Ok(ThroughputSample { total, lag })
}

/// Time from a controller's start until every object was reconciled once (no-op reconcile).
pub async fn measure_reconcile(bench: &Bench, peer: Peer, concurrency: usize) -> Result<Duration> {
    let want = bench.len();
    let count = Arc::new(AtomicUsize::new(0));
    let cancel = CancellationToken::new();
    let started = Instant::now();
    let task = if peer.is_crwatch() {
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
    } else {
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
    };
    poll_until("every reconcile", || count.load(Ordering::Relaxed) >= want).await?;
    let time = started.elapsed();
    cancel.cancel();
    task.await?;
    let extra = count.load(Ordering::Relaxed) - want;
    eprintln!(
        "  {:<38} {want} reconciles in {:>7.3} s, concurrency {concurrency}{}",
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
