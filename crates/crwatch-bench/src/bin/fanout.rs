//! `fanout`: one API watch fanned out by `crwatch serve` (delta xDS) to 1, 100 and 1,000
//! subscribers, beside the same number of direct watches on crwatch-apiserver, in one run.
//!
//! Every server runs as its own process (the release binaries `crwatch-apiserver` and
//! `crwatch`), so their memory (VmRSS, VmHWM) and CPU (utime + stime) are read from /proc
//! apart from the subscribers', which all run in this process. Latency is change-to-subscriber:
//! each change carries its send time in an annotation and every subscriber records when it saw
//! it (one clock, one machine).
//!
//! Run it with `scripts/bench-fanout` (builds the release binaries first). `FANOUT_SERVE_ARGS`
//! adds flags to `crwatch serve`, e.g. `--max-response-bytes 65536`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail, ensure};
use crwatch::xds::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use crwatch::xds::discovery::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use futures::StreamExt;
use prost::Message;
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use tokio::sync::{Mutex, mpsc};

const USAGE: &str =
    "usage: fanout [--objects N] [--changes M] [--rate R] [--subscribers S,S,...] [--bin-dir DIR]

One API watch fanned out by `crwatch serve` to S subscribers (delta xDS), beside S direct
watches on crwatch-apiserver; prints server memory, CPU and change-to-subscriber latency.

  --objects N        ConfigMaps watched (default 1000, ~1 KiB each)
  --changes M        changes made while every subscriber watches (default 200)
  --rate R           changes per second (default 50)
  --subscribers L    comma-separated subscriber counts (default 1,100,1000)
  --bin-dir DIR      where crwatch-apiserver and crwatch are (default: beside this binary)";

/// The annotation carrying a change's send time (nanoseconds since the epoch).
const SENT: &str = "bench.crwatch.io/sent";
const NAMESPACE: &str = "bench";
const TOKEN: &str = "fanout-bench-token";
const TYPE_URL: &str = "core/v1/ConfigMap";
/// How long any single wait may take before the run is declared broken.
const WAIT_LIMIT: Duration = Duration::from_secs(180);
/// Subscribers that connect and sync at the same time, at most (both kinds alike).
const CONNECTING: usize = 64;

impl Default for Seen {
    fn default() -> Self {
        Seen {
            connecting: tokio::sync::Semaphore::new(CONNECTING),
            synced: AtomicUsize::new(0),
            received: AtomicUsize::new(0),
            latencies_us: Mutex::new(Vec::new()),
        }
    }
}

struct Options {
    objects: usize,
    changes: usize,
    rate: u32,
    subscribers: Vec<usize>,
    bin_dir: PathBuf,
}

fn parse_args() -> Result<Options> {
    let exe = std::env::current_exe().context("the benchmark's own path")?;
    let mut o = Options {
        objects: 1000,
        changes: 200,
        rate: 50,
        subscribers: vec![1, 100, 1000],
        // target/release/fanout lives beside the other release binaries.
        bin_dir: exe.parent().map(Path::to_path_buf).unwrap_or_default(),
    };
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
            "--objects" => o.objects = number(&value)?,
            "--changes" => o.changes = number(&value)?,
            "--rate" => o.rate = u32::try_from(number(&value)?).context("--rate is too large")?,
            "--subscribers" => {
                o.subscribers = value.split(',').map(number).collect::<Result<_>>()?;
            }
            "--bin-dir" => o.bin_dir = PathBuf::from(value),
            _ => bail!("unknown option {flag}\n\n{USAGE}"),
        }
    }
    ensure!((1..=100_000).contains(&o.objects), "--objects is 1 to 100000");
    ensure!((1..=100_000).contains(&o.changes), "--changes is 1 to 100000");
    ensure!((1..=10_000).contains(&o.rate), "--rate is 1 to 10000");
    ensure!(
        !o.subscribers.is_empty() && o.subscribers.iter().all(|s| (1..=10_000).contains(s)),
        "--subscribers are 1 to 10000 each"
    );
    for bin in ["crwatch-apiserver", "crwatch"] {
        ensure!(
            o.bin_dir.join(bin).is_file(),
            "{} not found: build the release binaries (scripts/bench-fanout does) or pass --bin-dir",
            o.bin_dir.join(bin).display()
        );
    }
    Ok(o)
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Memory and CPU of one process, from /proc.
#[derive(Clone, Copy, Debug, Default)]
struct Usage {
    rss_kib: u64,
    hwm_kib: u64,
    cpu_ticks: u64,
}

fn usage(pid: u32) -> Result<Usage> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_default()
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces, so split after its ')').
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the ')'.
    let tick = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    Ok(Usage {
        rss_kib: field("VmRSS:"),
        hwm_kib: field("VmHWM:"),
        cpu_ticks: tick(11) + tick(12),
    })
}

fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// A server process, killed when dropped.
struct Proc {
    name: &'static str,
    child: Child,
}

impl Proc {
    fn pid(&self) -> Result<u32> {
        self.child.id().ok_or_else(|| anyhow!("{} has exited", self.name))
    }
}

/// crwatch-apiserver on free ports, with N ConfigMaps in the namespace `bench`.
struct ApiServer {
    proc: Proc,
    http: String,
    kubeconfig: PathBuf,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl ApiServer {
    async fn start(bin_dir: &Path, objects: usize) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let kubeconfig = dir.path().join("kubeconfig");
        let http_port = free_port()?;
        let child = Command::new(bin_dir.join("crwatch-apiserver"))
            .args(["--port", &free_port()?.to_string()])
            .args(["--http-port", &http_port.to_string()])
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["--token", TOKEN, "--nodes", "0", "--no-simulate-workloads"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting crwatch-apiserver")?;
        let server = ApiServer {
            proc: Proc {
                name: "crwatch-apiserver",
                child,
            },
            http: format!("http://127.0.0.1:{http_port}"),
            kubeconfig,
            client: reqwest::Client::builder().pool_max_idle_per_host(64).build()?,
            _dir: dir,
        };
        let start = Instant::now();
        loop {
            let ok = server
                .client
                .get(format!("{}/readyz", server.http))
                .bearer_auth(TOKEN)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok && server.kubeconfig.exists() {
                break;
            }
            ensure!(
                start.elapsed() < WAIT_LIMIT,
                "crwatch-apiserver did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server
            .post(
                "/api/v1/namespaces",
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}),
            )
            .await?;
        let server = Arc::new(server);
        let next = Arc::new(AtomicUsize::new(0));
        let workers: Vec<_> = (0..16)
            .map(|_| {
                let (server, next) = (server.clone(), next.clone());
                tokio::spawn(async move {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= objects {
                            return Ok::<_, anyhow::Error>(());
                        }
                        server
                            .post(
                                &format!("/api/v1/namespaces/{NAMESPACE}/configmaps"),
                                json!({
                                    "apiVersion": "v1", "kind": "ConfigMap",
                                    "metadata": {"name": format!("cm-{i:06}"), "labels": {"app": "bench"}},
                                    "data": {"payload": "x".repeat(1000)},
                                }),
                            )
                            .await?;
                    }
                })
            })
            .collect();
        for w in workers {
            w.await??;
        }
        Arc::into_inner(server).ok_or_else(|| anyhow!("a writer still holds the server"))
    }

    async fn post(&self, path: &str, body: Value) -> Result<()> {
        let r = self
            .client
            .post(format!("{}{path}", self.http))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await?;
        ensure!(r.status().is_success(), "POST {path}: {}", r.status());
        Ok(())
    }

    /// Stamp object `i` with the current time.
    async fn change(&self, i: usize) -> Result<()> {
        let path = format!("/api/v1/namespaces/{NAMESPACE}/configmaps/cm-{i:06}");
        let r = self
            .client
            .patch(format!("{}{path}", self.http))
            .bearer_auth(TOKEN)
            .header("content-type", "application/merge-patch+json")
            .body(json!({"metadata": {"annotations": {SENT: now_nanos().to_string()}}}).to_string())
            .send()
            .await?;
        ensure!(r.status().is_success(), "PATCH {path}: {}", r.status());
        Ok(())
    }
}

/// What every subscriber reports: objects known after the initial state, and latencies.
struct Seen {
    /// Subscribers connecting and getting their initial state at once, at most
    /// ([`CONNECTING`]): a thousand connections in the same millisecond overflow the
    /// servers' accept backlog, which no fleet of real clients does either.
    connecting: tokio::sync::Semaphore,
    synced: AtomicUsize,
    received: AtomicUsize,
    latencies_us: Mutex<Vec<u64>>,
}

/// The send time in a watch event's annotation, found without parsing the event (as cheap
/// for the direct watchers as metadata-only decoding is for the xDS subscribers).
fn sent_in_line(line: &[u8]) -> Option<u128> {
    let key = format!("\"{SENT}\":\"");
    let start = line.windows(key.len()).position(|w| w == key.as_bytes())? + key.len();
    let digits = line[start..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&line[start..start + digits])
        .ok()?
        .parse()
        .ok()
}

/// An `istio.mcp.v1alpha1.Resource` with only its metadata decoded (the body, field 2, is
/// skipped as an unknown field).
#[derive(Clone, PartialEq, prost::Message)]
struct MetadataOnly {
    #[prost(message, optional, tag = "1")]
    metadata: Option<crwatch::xds::mcp::Metadata>,
}

async fn record(seen: &Seen, sent: u128) {
    let us = now_nanos().saturating_sub(sent) / 1000;
    seen.latencies_us
        .lock()
        .await
        .push(u64::try_from(us).unwrap_or(u64::MAX));
    seen.received.fetch_add(1, Ordering::Relaxed);
}

/// A delta-xDS subscriber: wildcard on ConfigMaps, ACKs every response.
async fn xds_subscriber(endpoint: String, objects: usize, seen: Arc<Seen>) -> Result<()> {
    let mut connecting = Some(seen.connecting.acquire().await?);
    let channel = tonic::transport::Endpoint::from_shared(endpoint)?
        .connect()
        .await
        .context("connecting to crwatch serve")?;
    let mut client = AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(256 << 20);
    let (tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(16);
    tx.send(DeltaDiscoveryRequest {
        type_url: TYPE_URL.into(),
        resource_names_subscribe: vec!["*".into()],
        ..Default::default()
    })
    .await?;
    let requests = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let mut responses = client
        .delta_aggregated_resources(requests)
        .await
        .context("DeltaAggregatedResources")?
        .into_inner();
    let mut known = 0usize;
    let mut synced = false;
    while let Some(response) = responses.next().await {
        let response: DeltaDiscoveryResponse = response.context("reading a delta response")?;
        if synced {
            for r in &response.resources {
                let Some(any) = &r.resource else { continue };
                // Only the MCP metadata (the body is skipped unparsed): the subscribers share
                // the machine with the servers, so they do as little as a client can.
                let meta = MetadataOnly::decode(any.value.as_slice())
                    .context("an MCP resource")?
                    .metadata
                    .unwrap_or_default();
                if let Some(sent) = meta.annotations.get(SENT).and_then(|v| v.parse().ok()) {
                    record(&seen, sent).await;
                }
            }
        } else {
            // The initial state is only counted: decoding 1,000 copies of it here would
            // measure this process, not the server.
            known += response.resources.len();
        }
        tx.send(DeltaDiscoveryRequest {
            type_url: response.type_url.clone(),
            response_nonce: response.nonce.clone(),
            ..Default::default()
        })
        .await
        .ok();
        if !synced && known >= objects {
            synced = true;
            seen.synced.fetch_add(1, Ordering::Relaxed);
            connecting.take();
        }
    }
    Ok(())
}

/// A direct watch on crwatch-apiserver, as `kubectl get -w` makes one: a list, then a watch
/// from its resourceVersion.
async fn direct_subscriber(api: Arc<ApiServer>, seen: Arc<Seen>) -> Result<()> {
    let connecting = seen.connecting.acquire().await?;
    let list: Value = api
        .client
        .get(format!("{}/api/v1/namespaces/{NAMESPACE}/configmaps", api.http))
        .bearer_auth(TOKEN)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let rv = list
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let mut stream = api
        .client
        .get(format!(
            "{}/api/v1/namespaces/{NAMESPACE}/configmaps?watch=1&allowWatchBookmarks=true&resourceVersion={rv}",
            api.http
        ))
        .bearer_auth(TOKEN)
        .send()
        .await?
        .error_for_status()?
        .bytes_stream();
    seen.synced.fetch_add(1, Ordering::Relaxed);
    drop(connecting);
    let mut buf = Vec::new();
    while let Some(chunk) = stream.next().await {
        buf.extend_from_slice(&chunk?);
        while let Some(end) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=end).collect();
            if line.starts_with(br#"{"type":"MODIFIED""#)
                && let Some(sent) = sent_in_line(&line)
            {
                record(&seen, sent).await;
            }
        }
    }
    Ok(())
}

/// Wait until `want` subscribers have their initial state, failing with the first
/// subscriber's error if one stops.
async fn wait_synced(
    what: &str,
    tasks: &mut [tokio::task::JoinHandle<Result<()>>],
    seen: &Seen,
    want: usize,
) -> Result<()> {
    let start = Instant::now();
    while seen.synced.load(Ordering::Relaxed) < want {
        if let Some(t) = tasks.iter_mut().find(|t| t.is_finished()) {
            (&mut *t)
                .await
                .context("a subscriber task")?
                .with_context(|| format!("a subscriber stopped while waiting for {what}"))?;
            bail!("a subscriber ended while waiting for {what}");
        }
        ensure!(
            start.elapsed() < WAIT_LIMIT,
            "timed out waiting for {what}: {} of {want} synced",
            seen.synced.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// One scenario's figures.
struct Sample {
    label: String,
    /// Direct watches on the API server (else subscribers of crwatch serve).
    direct: bool,
    subscribers: usize,
    sync: Duration,
    /// Server processes: RSS after every subscriber synced, and peak, in KiB.
    rss_kib: u64,
    hwm_kib: u64,
    /// CPU seconds of the server processes while the changes were delivered.
    cpu_s: f64,
    p50_us: u64,
    p99_us: u64,
    delivered: f64,
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Make the changes at the configured rate and gather the figures.
async fn drive(
    opts: &Options,
    api: &ApiServer,
    procs: &[&Proc],
    seen: &Seen,
    subscribers: usize,
) -> Result<(f64, u64, u64, f64)> {
    let before: u64 = procs
        .iter()
        .map(|p| p.pid().and_then(usage).map(|u| u.cpu_ticks))
        .sum::<Result<u64>>()?;
    let interval = Duration::from_secs_f64(1.0 / f64::from(opts.rate));
    let mut tick = tokio::time::interval(interval);
    for c in 0..opts.changes {
        tick.tick().await;
        api.change((c * 7919) % opts.objects).await?;
    }
    let expected = opts.changes * subscribers;
    // Coalescing may merge changes of one object for a slow subscriber: wait for all, but
    // accept fewer after a quiet second (reported as the delivered fraction).
    let start = Instant::now();
    let mut last = (0, Instant::now());
    loop {
        let n = seen.received.load(Ordering::Relaxed);
        if n >= expected {
            break;
        }
        if n != last.0 {
            last = (n, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(2) || start.elapsed() > WAIT_LIMIT {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let after: u64 = procs
        .iter()
        .map(|p| p.pid().and_then(usage).map(|u| u.cpu_ticks))
        .sum::<Result<u64>>()?;
    let mut lat = std::mem::take(&mut *seen.latencies_us.lock().await);
    lat.sort_unstable();
    let delivered = lat.len() as f64 / expected as f64;
    Ok((
        (after - before) as f64 / clock_ticks_per_second(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        delivered,
    ))
}

fn memory(procs: &[&Proc]) -> Result<(u64, u64)> {
    let mut rss = 0;
    let mut hwm = 0;
    for p in procs {
        let u = usage(p.pid()?)?;
        rss += u.rss_kib;
        hwm += u.hwm_kib;
    }
    Ok((rss, hwm))
}

async fn direct(opts: &Options, subscribers: usize) -> Result<Sample> {
    let api = Arc::new(ApiServer::start(&opts.bin_dir, opts.objects).await?);
    let seen = Arc::new(Seen::default());
    let start = Instant::now();
    let mut tasks: Vec<_> = (0..subscribers)
        .map(|_| tokio::spawn(direct_subscriber(api.clone(), seen.clone())))
        .collect();
    wait_synced("direct watches", &mut tasks, &seen, subscribers).await?;
    let sync = start.elapsed();
    let (rss, hwm) = memory(&[&api.proc])?;
    let (cpu_s, p50, p99, delivered) = drive(opts, &api, &[&api.proc], &seen, subscribers).await?;
    for t in tasks {
        t.abort();
    }
    Ok(Sample {
        label: format!("{subscribers} direct watches on crwatch-apiserver"),
        direct: true,
        subscribers,
        sync,
        rss_kib: rss,
        hwm_kib: hwm,
        cpu_s,
        p50_us: p50,
        p99_us: p99,
        delivered,
    })
}

async fn fanout(opts: &Options, subscribers: usize) -> Result<Sample> {
    let api = ApiServer::start(&opts.bin_dir, opts.objects).await?;
    let port = free_port()?;
    let child = Command::new(opts.bin_dir.join("crwatch"))
        .args(["serve", "-r", "configmaps", "-n", NAMESPACE])
        .args(
            std::env::var("FANOUT_SERVE_ARGS")
                .unwrap_or_default()
                .split_whitespace(),
        )
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--kubeconfig")
        .arg(&api.kubeconfig)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting crwatch serve")?;
    let serve = Proc {
        name: "crwatch serve",
        child,
    };
    let endpoint = format!("http://127.0.0.1:{port}");
    // Ready: a first subscriber gets the whole state (it counts as one of the subscribers).
    let seen = Arc::new(Seen::default());
    let start = Instant::now();
    let mut tasks = vec![];
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            break;
        }
        ensure!(start.elapsed() < WAIT_LIMIT, "crwatch serve did not listen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tasks.push(tokio::spawn(xds_subscriber(
        endpoint.clone(),
        opts.objects,
        seen.clone(),
    )));
    wait_synced("the first subscriber", &mut tasks, &seen, 1).await?;
    let start = Instant::now();
    for _ in 1..subscribers {
        tasks.push(tokio::spawn(xds_subscriber(
            endpoint.clone(),
            opts.objects,
            seen.clone(),
        )));
    }
    wait_synced("every subscriber's initial state", &mut tasks, &seen, subscribers).await?;
    let sync = start.elapsed();
    let (rss, hwm) = memory(&[&api.proc, &serve])?;
    let (cpu_s, p50, p99, delivered) = drive(opts, &api, &[&api.proc, &serve], &seen, subscribers).await?;
    for t in tasks {
        t.abort();
    }
    Ok(Sample {
        label: format!("{subscribers} subscribers of crwatch serve (1 API watch)"),
        direct: false,
        subscribers,
        sync,
        rss_kib: rss,
        hwm_kib: hwm,
        cpu_s,
        p50_us: p50,
        p99_us: p99,
        delivered,
    })
}

fn print(samples: &[Sample], opts: &Options) {
    println!(
        "fan-out: {} ConfigMaps, {} changes at {}/s; servers' memory and CPU (crwatch-apiserver, plus crwatch serve where used)",
        opts.objects, opts.changes, opts.rate
    );
    println!(
        "{:<52} {:>10} {:>10} {:>10} {:>9} {:>10} {:>10} {:>10}",
        "scenario", "sync", "RSS MiB", "peak MiB", "CPU s", "p50 ms", "p99 ms", "delivered"
    );
    for s in samples {
        println!(
            "{:<52} {:>9.2}s {:>10.1} {:>10.1} {:>9.2} {:>10.2} {:>10.2} {:>9.1}%",
            s.label,
            s.sync.as_secs_f64(),
            s.rss_kib as f64 / 1024.0,
            s.hwm_kib as f64 / 1024.0,
            s.cpu_s,
            s.p50_us as f64 / 1000.0,
            s.p99_us as f64 / 1000.0,
            s.delivered * 100.0
        );
    }
    for s in samples.iter().filter(|s| !s.direct) {
        if let Some(d) = samples
            .iter()
            .find(|d| d.subscribers == s.subscribers && d.direct)
        {
            println!(
                "{} subscribers, fan-out / direct: memory {:.2}x, CPU {:.2}x, p99 {:.2}x",
                s.subscribers,
                s.rss_kib as f64 / d.rss_kib.max(1) as f64,
                s.cpu_s / d.cpu_s.max(0.001),
                s.p99_us as f64 / d.p99_us.max(1) as f64
            );
        }
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let opts = parse_args()?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut samples = vec![];
    let max = opts.subscribers.iter().copied().max().unwrap_or(1);
    for &n in &opts.subscribers {
        samples.push(
            fanout(&opts, n)
                .await
                .with_context(|| format!("fan-out to {n}"))?,
        );
    }
    samples.push(
        direct(&opts, max)
            .await
            .with_context(|| format!("{max} direct watches"))?,
    );
    print(&samples, &opts);
    Ok(())
}
