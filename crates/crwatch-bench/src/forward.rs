//! The `forward` section: crwatch-forward's forwarder, built in process as `crwatch forward`
//! builds it, delivering N changes of ConfigMaps on the in-process API server to (a) a
//! JSON-lines file sink in a temporary directory and (b) a webhook: an HTTP server in this
//! process that acknowledges each CloudEvent. Two timings per sink: changes written while the
//! forwarder watches (from the first write until the sink has every change: bounded by the
//! server's write rate), and a backlog of N changes replayed at once when its cut watch
//! reconnects (the forwarder's own rate). Each change's resourceVersion must arrive, counted
//! once, and every object's last one. kube-runtime has no forwarder, so the rows have no peer.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, ensure};
use axum::extract::State;
use axum::http::StatusCode;
use crwatch_forward::{ForwardConfig, Forwarder, Kubernetes};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::cache::{Bench, name_of};
use crate::report::Row;

/// The writes cycle through this many ConfigMaps (so most changes are modifications, each
/// with a diff), or fewer when there are fewer changes.
const OBJECTS: usize = 1000;
/// How long one run may take before it is declared broken.
const LIMIT: Duration = Duration::from_secs(120);
/// How often the sink is checked for the last change.
const POLL: Duration = Duration::from_millis(1);
const NO_PEER: &str = "kube-runtime has no forwarder";
/// The configuration's name in error messages.
const FILE: &str = "crwatch-bench-forward.yaml";

/// When the changes are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// While the forwarder watches: the time runs from the first write, so the rate is at
    /// most the server's write rate.
    Live,
    /// While the forwarder's watch is cut and its reconnect held; the time runs from letting
    /// the reconnect through, which then replays every change at once: the forwarder's own
    /// rate.
    Backlog,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SinkKind {
    File,
    Webhook,
}

/// The two CloudEvent attributes the check needs; serde skips the rest (`data` too).
#[derive(Deserialize)]
struct Event {
    subject: String,
    resourceversion: String,
}

/// What arrived at a sink.
#[derive(Default)]
struct Seen {
    /// Deliveries, duplicates included.
    delivered: usize,
    /// Distinct resourceVersions (one per change: they are unique across the server).
    versions: HashSet<u64>,
    /// The newest resourceVersion per subject (`bench/cm-000042`).
    latest: HashMap<String, u64>,
    /// Events that were not a change written by the run.
    unexpected: Vec<String>,
}

impl Seen {
    fn record(&mut self, line: &[u8]) {
        self.delivered += 1;
        let event = match serde_json::from_slice::<Event>(line) {
            Ok(e) => e,
            Err(e) => {
                // Bounded: a handful is enough to say what went wrong.
                if self.unexpected.len() < 5 {
                    self.unexpected.push(format!("undecodable event: {e}"));
                }
                return;
            }
        };
        let Ok(rv) = event.resourceversion.parse::<u64>() else {
            if self.unexpected.len() < 5 {
                self.unexpected
                    .push(format!("resourceversion {:?}", event.resourceversion));
            }
            return;
        };
        self.versions.insert(rv);
        let latest = self.latest.entry(event.subject).or_default();
        *latest = (*latest).max(rv);
    }

    /// Every object is at (or past) the last resourceVersion written to it.
    fn has(&self, expected: &HashMap<String, u64>) -> bool {
        self.delivered >= expected.len()
            && expected
                .iter()
                .all(|(k, rv)| self.latest.get(k).is_some_and(|seen| seen >= rv))
    }
}

fn lock(seen: &Mutex<Seen>) -> MutexGuard<'_, Seen> {
    // A panicking handler cannot leave Seen half-updated in a way that matters here: the
    // counts are checked afterwards.
    seen.lock().unwrap_or_else(|p| p.into_inner())
}

/// An HTTP server that records and acknowledges (200) each CloudEvent POSTed to `/`.
struct Receiver {
    url: String,
    seen: Arc<Mutex<Seen>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn receive(State(seen): State<Arc<Mutex<Seen>>>, body: axum::body::Bytes) -> StatusCode {
    lock(&seen).record(&body);
    StatusCode::OK
}

impl Receiver {
    async fn start() -> Result<Self> {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let app = axum::Router::new()
            .route("/", axum::routing::post(receive))
            .with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the webhook receiver")?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { stopped.cancelled().await })
                .await
        });
        Ok(Receiver {
            url: format!("http://{addr}/"),
            seen,
            stop,
            task,
        })
    }

    async fn stop(self) -> Result<()> {
        self.stop.cancel();
        // The forwarder is shut down first, so no connection keeps the server waiting.
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .map_err(|_| anyhow!("the webhook receiver did not stop"))???;
        Ok(())
    }
}

/// Reads the file sink's new complete lines as they are appended.
struct Follower {
    path: PathBuf,
    file: Option<File>,
    /// An incomplete last line (at most one event).
    partial: Vec<u8>,
    buf: Vec<u8>,
}

impl Follower {
    fn new(path: &Path) -> Self {
        Follower {
            path: path.to_path_buf(),
            file: None,
            partial: vec![],
            buf: vec![0; 256 * 1024],
        }
    }

    fn poll(&mut self, seen: &mut Seen) -> Result<()> {
        if self.file.is_none() {
            match File::open(&self.path) {
                Ok(f) => self.file = Some(f),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(e).with_context(|| format!("opening {}", self.path.display())),
            }
        }
        let Some(file) = &mut self.file else {
            return Ok(());
        };
        loop {
            let k = file
                .read(&mut self.buf)
                .with_context(|| format!("reading {}", self.path.display()))?;
            if k == 0 {
                return Ok(());
            }
            let mut chunk = &self.buf[..k];
            while let Some(end) = chunk.iter().position(|&b| b == b'\n') {
                if self.partial.is_empty() {
                    seen.record(&chunk[..end]);
                } else {
                    self.partial.extend_from_slice(&chunk[..end]);
                    seen.record(&self.partial);
                    self.partial.clear();
                }
                chunk = &chunk[end + 1..];
            }
            self.partial.extend_from_slice(chunk);
        }
    }
}

/// One run: the time from the first write (live) or from the reconnect (backlog) until the
/// sink had every change, and from the last write until then.
struct Sample {
    total: Duration,
    lag: Duration,
}

async fn run_once(kind: SinkKind, mode: Mode, changes: usize) -> Result<Sample> {
    let mut bench = Bench::new(0).await?;
    let result = on_server(&mut bench, kind, mode, changes).await;
    bench.server.shutdown().await?;
    result
}

async fn on_server(bench: &mut Bench, kind: SinkKind, mode: Mode, changes: usize) -> Result<Sample> {
    let dir = tempfile::tempdir().context("a directory for the file sink")?;
    let path = dir.path().join("events.jsonl");
    let receiver = match kind {
        SinkKind::Webhook => Some(Receiver::start().await?),
        SinkKind::File => None,
    };
    // JSON strings are valid YAML scalars, whatever the path holds.
    let sink = match &receiver {
        Some(r) => format!("webhook: {{url: {}}}", serde_json::to_string(&r.url)?),
        // 1Ti: no rotation during the run, the follower reads one file.
        None => format!(
            "file: {{path: {}, maxSize: 1Ti}}",
            serde_json::to_string(&path.display().to_string())?
        ),
    };
    let yaml = format!(
        "resources:\n  - resource: configmaps\n    namespaces: [{}]\nsinks:\n  - name: out\n    {sink}\nmetrics: \"off\"\nprobes: \"off\"\n",
        bench.namespace
    );
    let config = ForwardConfig::parse(&yaml, FILE)?;
    let client = bench.client();
    let types = crwatch::discovery::discover(&client)
        .await
        .context("discovering the server's resource types")?;
    let kube = Kubernetes {
        client,
        url: bench.server.server().url().to_string(),
        types,
    };
    let forwarder = Forwarder::start(config, FILE, Some(kube)).await?;
    let mut follower = Follower::new(&path);
    let result = deliver(bench, &forwarder, &receiver, &mut follower, kind, mode, changes).await;
    let undelivered = forwarder.shutdown().await?;
    if let Some(r) = receiver {
        r.stop().await?;
    }
    let sample = result?;
    ensure!(undelivered.is_empty(), "after the run: {undelivered}");
    Ok(sample)
}

async fn deliver(
    bench: &mut Bench,
    forwarder: &Forwarder,
    receiver: &Option<Receiver>,
    follower: &mut Follower,
    kind: SinkKind,
    mode: Mode,
    changes: usize,
) -> Result<Sample> {
    ensure!(
        forwarder.wait_synced(LIMIT).await,
        "the forwarder did not list the namespace within {LIMIT:?}"
    );
    let objects = OBJECTS.min(changes);
    let mut expected: HashMap<String, u64> = HashMap::with_capacity(objects);
    let mut file_seen = Seen::default();
    let started = match mode {
        Mode::Live => {
            let started = Instant::now();
            write(bench, changes, &mut expected).await?;
            started
        }
        Mode::Backlog => {
            // As the relist benchmark does: hold new requests, end the watch, wait until its
            // reconnect is held, write (through the Rust API, which is not held), let it go.
            let faults = bench.server.faults();
            let watches = faults.count("watch", "configmaps");
            faults.pause();
            faults.drop_watches();
            let deadline = Instant::now() + LIMIT;
            let mut held = Ok(());
            while faults.count("watch", "configmaps") <= watches {
                if Instant::now() > deadline {
                    held = Err(anyhow!(
                        "the forwarder's watch did not reconnect within {LIMIT:?}"
                    ));
                    break;
                }
                tokio::time::sleep(POLL).await;
            }
            let written = match held {
                Ok(()) => tokio::time::timeout(LIMIT, write(bench, changes, &mut expected))
                    .await
                    .map_err(|_| anyhow!("the writes hung")),
                Err(e) => Err(e),
            };
            // Resumed whatever happened, or the forwarder's shutdown would wait on it.
            bench.server.faults().resume();
            written??;
            Instant::now()
        }
    };
    let written = Instant::now();
    loop {
        let done = match receiver {
            Some(r) => lock(&r.seen).has(&expected),
            None => {
                follower.poll(&mut file_seen)?;
                file_seen.has(&expected)
            }
        };
        if done {
            break;
        }
        if started.elapsed() > LIMIT {
            let delivered = match receiver {
                Some(r) => lock(&r.seen).delivered,
                None => file_seen.delivered,
            };
            return Err(anyhow!(
                "the sink had {delivered} of {changes} changes after {LIMIT:?}"
            ));
        }
        tokio::time::sleep(POLL).await;
    }
    let (total, lag) = (started.elapsed(), written.elapsed());
    let seen = match receiver {
        Some(r) => std::mem::take(&mut *lock(&r.seen)),
        None => file_seen,
    };
    ensure!(
        seen.unexpected.is_empty(),
        "events that were not the run's changes: {}",
        seen.unexpected.join("; ")
    );
    // Every change's resourceVersion, not just each object's last one (they are unique).
    ensure!(
        seen.versions.len() == changes,
        "the sink had {} distinct changes of {changes} ({} deliveries)",
        seen.versions.len(),
        seen.delivered
    );
    eprintln!(
        "  {kind:?}, {mode:?}: {changes} changes delivered in {:.3} s ({:.0}/s; last write to last delivery {:.1} ms; {} deliveries)",
        total.as_secs_f64(),
        changes as f64 / total.as_secs_f64(),
        lag.as_secs_f64() * 1000.0,
        seen.delivered,
    );
    Ok(Sample { total, lag })
}

/// `changes` writes cycling through [`OBJECTS`] ConfigMaps; `expected` gets each one's last
/// resourceVersion, by CloudEvent subject.
async fn write(bench: &mut Bench, changes: usize, expected: &mut HashMap<String, u64>) -> Result<()> {
    let objects = OBJECTS.min(changes);
    for j in 0..changes {
        let i = j % objects;
        let w = bench.write(i).await?;
        expected.insert(format!("{}/{}", bench.namespace, name_of(i)), w.rv);
    }
    Ok(())
}

/// The rows of the section: per sink, deliveries per second of changes written while the
/// forwarder watches, the time from the last write to the last delivery, and deliveries per
/// second of a backlog; the median of `repeats` runs each.
pub async fn rows(changes: usize, repeats: usize) -> Result<Vec<Row>> {
    let mut rows = vec![];
    for kind in [SinkKind::File, SinkKind::Webhook] {
        let what = match kind {
            SinkKind::File => "a file sink",
            SinkKind::Webhook => "a webhook",
        };
        let mut live = Row::new(format!("forward {changes} changes to {what}, deliveries/s"), "/s")
            .higher()
            .crwatch_only(NO_PEER);
        let mut lag = Row::new("  of which: last write to last delivery", "ms").crwatch_only(NO_PEER);
        let mut backlog = Row::new(format!("  a backlog of {changes} changes, deliveries/s"), "/s")
            .higher()
            .crwatch_only(NO_PEER);
        for round in 0..repeats {
            eprintln!("forward to {what}, round {} of {repeats}", round + 1);
            for mode in [Mode::Live, Mode::Backlog] {
                let s = run_once(kind, mode, changes)
                    .await
                    .with_context(|| format!("forwarding to {what} ({mode:?})"))?;
                let rate = changes as f64 / s.total.as_secs_f64();
                match mode {
                    Mode::Live => {
                        live.crwatch.push(rate);
                        lag.crwatch.push(s.lag.as_secs_f64() * 1000.0);
                    }
                    Mode::Backlog => backlog.crwatch.push(rate),
                }
            }
        }
        rows.extend([live, lag, backlog]);
    }
    Ok(rows)
}
