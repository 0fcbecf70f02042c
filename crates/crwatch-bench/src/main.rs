//! `crwatch-bench`: crwatch against its peer kube-runtime, side by side in one run, on an
//! in-process API server: initial sync time and cache heap at several sizes, the heap peak of
//! a relist after 410, watch-event throughput, reconcile throughput, event-to-reconcile
//! latency and workqueue throughput; prints a table of medians and ratios and optionally
//! writes every sample as JSON.

mod alloc;
mod cache;
mod forward;
mod get;
mod latency;
mod queue;
mod report;
mod sample;
mod server;
mod shard;

use std::future::Future;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde_json::json;

use cache::{Bench, Peer};
use report::{Row, mib};

#[global_allocator]
static ALLOC: alloc::Counting = alloc::Counting;

const USAGE: &str = "usage: crwatch-bench [options]

Measures crwatch against kube-runtime on an in-process API server, alternating which peer
goes first per round, and prints the median of R repeats. Build with --release.

  --objects N[,N..]      cache sizes for sync, heap and relist rows (default 10000;
                         the issue's sizes are 10000,100000), ~3 KiB ConfigMaps
  --updates M            updates applied for the throughput run, changes forwarded by the
                         forward section (default 5000)
  --repeats R            rounds (default 3)
  --concurrency C[,C..]  reconcile workers for the reconcile rows (default 1,8)
  --rates R[,R..]        changes/s for the latency rows (default 100,1000,5000)
  --latency-seconds S    seconds of writes per rate (default 2)
  --latency-objects N    objects the latency writes cycle through (default 1000)
  --queue-items N        items per workqueue run (default 1000000 on one thread,
                         a fifth of it for the multi-producer runs)
  --consumers C[,C..]    consumer threads of the multi-producer runs (default 1,2,4,8)
  --only S[,S..]         sections to run: sync, relist, throughput, reconcile, latency,
                         queue, server (crwatch-apiserver writes/s, watch fan-out to 1, 10,
                         100 watchers, heap per stored object), get (`crwatch get`
                         against kubectl: wall time, peak RSS; needs target/release/crwatch
                         and kubectl), forward (forwarder deliveries/s to a file and a
                         webhook, --updates changes), sample (the sample controller
                         against a separate crwatch-apiserver process; needs the release
                         binaries it names), shard (a reconcile-bound controller on 1, 2
                         and 3 sharded replicas; cache heap per replica with and without
                         server-side sharding) (default all)
  --get-objects N        ConfigMaps listed by the get section (default 10000)
  --sample-objects N     Foos of the sample section (default 2000, at most 5000)
  --shard-objects N      ConfigMaps of the shard section (default 1000)
  --shard-cost-ms MS     the shard section's fixed cost per reconcile (default 20)
  --json FILE            write every row (samples, medians, ratios) and the machine";

const SECTIONS: [&str; 11] = [
    "sync",
    "relist",
    "throughput",
    "reconcile",
    "latency",
    "queue",
    "server",
    "get",
    "forward",
    "sample",
    "shard",
];

struct Options {
    objects: Vec<usize>,
    updates: usize,
    repeats: usize,
    concurrency: Vec<usize>,
    rates: Vec<usize>,
    latency_seconds: usize,
    latency_objects: usize,
    queue_items: usize,
    get_objects: usize,
    consumers: Vec<usize>,
    only: Vec<String>,
    json: Option<PathBuf>,
    sample_objects: usize,
    shard_objects: usize,
    shard_cost_ms: usize,
}

impl Options {
    fn runs(&self, section: &str) -> bool {
        self.only.iter().any(|s| s == section)
    }

    fn to_json(&self) -> serde_json::Value {
        json!({
            "objects": self.objects,
            "updates": self.updates,
            "repeats": self.repeats,
            "concurrency": self.concurrency,
            "rates": self.rates,
            "latency_seconds": self.latency_seconds,
            "latency_objects": self.latency_objects,
            "queue_items": self.queue_items,
            "consumers": self.consumers,
            "only": self.only,
            "sample_objects": self.sample_objects,
            "shard_objects": self.shard_objects,
            "shard_cost_ms": self.shard_cost_ms,
            "get_objects": self.get_objects,
        })
    }
}

/// A number in `range`, for option `name`.
fn number(name: &str, value: &str, range: std::ops::RangeInclusive<usize>) -> Result<usize> {
    let n: usize = value
        .trim()
        .replace('_', "")
        .parse()
        .with_context(|| format!("{name} {value:?}: not a number"))?;
    ensure!(
        range.contains(&n),
        "{name} {n}: must be between {} and {}",
        range.start(),
        range.end()
    );
    Ok(n)
}

/// A comma-separated list of 1 to 16 numbers in `range`.
fn numbers(name: &str, value: &str, range: std::ops::RangeInclusive<usize>) -> Result<Vec<usize>> {
    let list = value
        .split(',')
        .map(|v| number(name, v, range.clone()))
        .collect::<Result<Vec<_>>>()?;
    ensure!(list.len() <= 16, "{name}: at most 16 values");
    Ok(list)
}

fn parse_args() -> Result<Options> {
    let mut o = Options {
        objects: vec![10_000],
        updates: 5000,
        repeats: 3,
        concurrency: vec![1, 8],
        rates: vec![100, 1000, 5000],
        latency_seconds: 2,
        latency_objects: 1000,
        queue_items: 1_000_000,
        consumers: vec![1, 2, 4, 8],
        only: SECTIONS.iter().map(|s| s.to_string()).collect(),
        get_objects: 10_000,
        json: None,
        sample_objects: 2000,
        shard_objects: 1000,
        shard_cost_ms: 20,
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
        let v = value.as_str();
        match name.as_str() {
            "--objects" => o.objects = numbers(&name, v, 1..=1_000_000)?,
            "--updates" => o.updates = number(&name, v, 1..=10_000_000)?,
            "--repeats" => o.repeats = number(&name, v, 1..=100)?,
            // kube-runtime takes its concurrency as a u16.
            "--concurrency" => o.concurrency = numbers(&name, v, 1..=1024)?,
            "--rates" => o.rates = numbers(&name, v, 1..=100_000)?,
            "--latency-seconds" => o.latency_seconds = number(&name, v, 1..=600)?,
            "--latency-objects" => o.latency_objects = number(&name, v, 1..=1_000_000)?,
            "--queue-items" => o.queue_items = number(&name, v, 1000..=100_000_000)?,
            "--consumers" => o.consumers = numbers(&name, v, 1..=64)?,
            "--only" => {
                let only: Vec<String> = v.split(',').map(|s| s.trim().to_string()).collect();
                for s in &only {
                    ensure!(
                        SECTIONS.contains(&s.as_str()),
                        "--only {s:?}: one of {}",
                        SECTIONS.join(", ")
                    );
                }
                o.only = only;
            }
            "--get-objects" => o.get_objects = number(&name, v, 1..=1_000_000)?,
            "--json" => o.json = Some(PathBuf::from(v)),
            "--sample-objects" => o.sample_objects = number(&name, v, 1..=5000)?,
            "--shard-objects" => o.shard_objects = number(&name, v, 10..=100_000)?,
            "--shard-cost-ms" => o.shard_cost_ms = number(&name, v, 0..=10_000)?,
            _ => bail!("unknown option {name}\n\n{USAGE}"),
        }
    }
    // Rates times seconds is the number of writes kept in memory: bound it.
    let most = o.rates.iter().max().copied().unwrap_or(0);
    ensure!(
        most.saturating_mul(o.latency_seconds) <= 10_000_000,
        "--rates × --latency-seconds is at most 10,000,000 writes"
    );
    Ok(o)
}

async fn labelled<T>(what: &str, f: impl Future<Output = Result<T>>) -> Result<T> {
    f.await.with_context(|| what.to_string())
}

/// The rows of one object count.
struct SizeRows {
    sync: Row,
    sync_stripped: Row,
    sync_full: Row,
    heap: Row,
    heap_stripped: Row,
    heap_full: Row,
    sync_compact: Row,
    heap_compact: Row,
    peak: Row,
    rss: Row,
    counted_vs_rss: Row,
    relist_steady: Row,
    relist_peak: Row,
    relist_ratio: Row,
    relist_time: Row,
}

impl SizeRows {
    fn new(n: usize) -> Self {
        SizeRows {
            sync: Row::new(format!("initial sync, {n} objects"), "s").at(n),
            sync_stripped: Row::new("initial sync, both without managedFields", "s").at(n),
            sync_full: Row::new("initial sync, both with managedFields", "s").at(n),
            heap: Row::new("cache heap after sync", "MiB").at(n),
            heap_stripped: Row::new("cache heap, both without managedFields", "MiB").at(n),
            heap_full: Row::new("cache heap, both with managedFields", "MiB").at(n),
            sync_compact: Row::new("initial sync, compressed, both without managedFields", "s").at(n),
            heap_compact: Row::new("cache heap, compressed, both without managedFields", "MiB").at(n),
            peak: Row::new("heap peak during sync (incl. server)", "MiB").at(n),
            rss: Row::new("process RSS, cache synced (incl. server)", "MiB").at(n),
            counted_vs_rss: Row::new("  check: counted heap / RSS, cache synced", "×").at(n),
            relist_steady: Row::new("relist: steady cache heap", "MiB").at(n),
            relist_peak: Row::new("relist peak: heap during relist after 410", "MiB").at(n),
            relist_ratio: Row::new("relist peak / steady state", "×").at(n),
            relist_time: Row::new("relist after 410: time to the new state", "s").at(n),
        }
    }

    fn into_rows(self, opts: &Options) -> Vec<Row> {
        let mut rows = vec![];
        if opts.runs("sync") {
            rows.extend([
                self.sync,
                self.sync_stripped,
                self.sync_full,
                self.heap,
                self.heap_stripped,
                self.heap_full,
                self.sync_compact,
                self.heap_compact,
                self.peak,
                self.rss,
                self.counted_vs_rss,
            ]);
        }
        if opts.runs("relist") {
            rows.extend([
                self.relist_steady,
                self.relist_peak,
                self.relist_ratio,
                self.relist_time,
            ]);
        }
        rows
    }
}

/// Alternate who goes first, so warm-up and server growth do not favour one peer.
fn order<T: Copy>(round: usize, crwatch: T, kube: T) -> [T; 2] {
    if round.is_multiple_of(2) {
        [crwatch, kube]
    } else {
        [kube, crwatch]
    }
}

async fn sizes_round(bench: &mut Bench, rows: &mut SizeRows, opts: &Options, round: usize) -> Result<()> {
    if opts.runs("sync") {
        // Out of the box (crwatch drops managedFields, kube-runtime keeps them), then
        // like-for-like without and with them.
        for pair in [
            (Peer::Crwatch, Peer::Kube),
            (Peer::Crwatch, Peer::KubeStripped),
            (Peer::CrwatchFull, Peer::Kube),
            (Peer::CrwatchCompact, Peer::KubeStripped),
        ] {
            let (c, k) = pair;
            for peer in order(round, c, k) {
                let s = labelled("initial sync", cache::measure_sync(bench, peer)).await?;
                let (secs, heap) = (s.time.as_secs_f64(), mib(s.heap));
                let (row_sync, row_heap) = match pair {
                    (Peer::Crwatch, Peer::Kube) => (&mut rows.sync, &mut rows.heap),
                    (Peer::Crwatch, _) => (&mut rows.sync_stripped, &mut rows.heap_stripped),
                    (Peer::CrwatchCompact, _) => (&mut rows.sync_compact, &mut rows.heap_compact),
                    _ => (&mut rows.sync_full, &mut rows.heap_full),
                };
                if peer.is_crwatch() {
                    row_sync.crwatch.push(secs);
                    row_heap.crwatch.push(heap);
                } else {
                    row_sync.push_kube(secs);
                    row_heap.push_kube(heap);
                }
                if pair == (Peer::Crwatch, Peer::Kube) {
                    let ratio = s.counted as f64 / s.rss.max(1) as f64;
                    if peer.is_crwatch() {
                        rows.peak.crwatch.push(mib(s.peak));
                        rows.rss.crwatch.push(mib(s.rss));
                        rows.counted_vs_rss.crwatch.push(ratio);
                    } else {
                        rows.peak.push_kube(mib(s.peak));
                        rows.rss.push_kube(mib(s.rss));
                        rows.counted_vs_rss.push_kube(ratio);
                    }
                }
            }
        }
    }
    if opts.runs("relist") {
        for peer in order(round, Peer::Crwatch, Peer::KubeStripped) {
            let s = labelled("relist", cache::measure_relist(bench, peer)).await?;
            let ratio = s.peak as f64 / s.steady.max(1) as f64;
            if peer.is_crwatch() {
                rows.relist_steady.crwatch.push(mib(s.steady));
                rows.relist_peak.crwatch.push(mib(s.peak));
                rows.relist_ratio.crwatch.push(ratio);
                rows.relist_time.crwatch.push(s.time.as_secs_f64());
            } else {
                rows.relist_steady.push_kube(mib(s.steady));
                rows.relist_peak.push_kube(mib(s.peak));
                rows.relist_ratio.push_kube(ratio);
                rows.relist_time.push_kube(s.time.as_secs_f64());
            }
        }
    }
    Ok(())
}

async fn run(opts: Options) -> Result<()> {
    let run_started = Instant::now();
    // Checked first, so a missing binary does not fail the run at its end.
    let get_binaries = if opts.runs("get") {
        Some(get::Binaries::find()?)
    } else {
        None
    };
    let first = opts.objects[0];
    let mut sizes: Vec<SizeRows> = opts.objects.iter().map(|&n| SizeRows::new(n)).collect();
    let mut throughput = Row::new(format!("{} updates applied and seen", opts.updates), "s").at(first);
    let mut lag = Row::new("  of which: last write to cache", "ms").at(first);
    let mut reconcile: Vec<(usize, Row, Row)> = opts
        .concurrency
        .iter()
        .map(|&c| {
            (
                c,
                Row::new(format!("start to {first} reconciles, concurrency {c}"), "s").at(first),
                Row::new(format!("reconciles/s, {c} workers"), "/s")
                    .at(first)
                    .higher(),
            )
        })
        .collect();
    let mut latency: Vec<(usize, [Row; 3])> = opts
        .rates
        .iter()
        .map(|&r| {
            let row = |what: &str| Row::new(format!("event-to-reconcile {what}, {r} changes/s"), "ms");
            (r, [row("p50"), row("p99"), row("max")])
        })
        .collect();
    let mut achieved: Vec<Row> = opts
        .rates
        .iter()
        .map(|&r| Row::new(format!("  writes achieved at {r} changes/s"), "/s").higher())
        .collect();
    const NO_QUEUE: &str = "kube-runtime has no standalone work queue";
    let mut queue_single = Row::new("workqueue add+get+done, one thread", "M/s")
        .higher()
        .crwatch_only(NO_QUEUE);
    let mut queue_multi: Vec<(usize, Row)> = opts
        .consumers
        .iter()
        .map(|&c| {
            (
                c,
                Row::new(
                    format!("workqueue, {} producers, {c} consumers", queue::PRODUCERS),
                    "M/s",
                )
                .higher()
                .crwatch_only(NO_QUEUE),
            )
        })
        .collect();
    // A worker per consumer row is the highest concurrency asked for.
    let workers = opts.concurrency.iter().max().copied().unwrap_or(8);

    for round in 0..opts.repeats {
        eprintln!("round {} of {}", round + 1, opts.repeats);
        for (k, &n) in opts.objects.iter().enumerate() {
            let wants_size = opts.runs("sync") || opts.runs("relist");
            let wants_first = k == 0 && (opts.runs("throughput") || opts.runs("reconcile"));
            if !wants_size && !wants_first {
                continue;
            }
            eprintln!(" seeding {n} ConfigMaps");
            let mut bench = Bench::new(n).await?;
            if k == 0 && opts.runs("reconcile") {
                for (c, time_row, rate_row) in &mut reconcile {
                    for peer in order(round, Peer::Crwatch, Peer::Kube) {
                        let t = labelled("reconcile", cache::measure_reconcile(&bench, peer, *c)).await?;
                        let rate = n as f64 / t.as_secs_f64();
                        if peer.is_crwatch() {
                            time_row.crwatch.push(t.as_secs_f64());
                            rate_row.crwatch.push(rate);
                        } else {
                            time_row.push_kube(t.as_secs_f64());
                            rate_row.push_kube(rate);
                        }
                    }
                }
            }
            if k == 0 && opts.runs("throughput") {
                for peer in order(round, Peer::Crwatch, Peer::Kube) {
                    let t = labelled(
                        "throughput",
                        cache::measure_throughput(&mut bench, peer, opts.updates),
                    )
                    .await?;
                    let (secs, lag_ms) = (t.total.as_secs_f64(), t.lag.as_secs_f64() * 1000.0);
                    if peer.is_crwatch() {
                        throughput.crwatch.push(secs);
                        lag.crwatch.push(lag_ms);
                    } else {
                        throughput.push_kube(secs);
                        lag.push_kube(lag_ms);
                    }
                }
            }
            if wants_size {
                sizes_round(&mut bench, &mut sizes[k], &opts, round).await?;
            }
            bench.server.shutdown().await?;
        }
        if opts.runs("latency") {
            eprintln!(" latency: seeding {} ConfigMaps", opts.latency_objects);
            let mut bench = Bench::new(opts.latency_objects).await?;
            for ((rate, rows), achieved) in latency.iter_mut().zip(&mut achieved) {
                for peer in order(round, Peer::Crwatch, Peer::Kube) {
                    let s = labelled(
                        "latency",
                        latency::measure(&mut bench, peer, *rate, opts.latency_seconds, workers),
                    )
                    .await?;
                    let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
                    let values = [ms(s.p50), ms(s.p99), ms(s.max)];
                    for (row, v) in rows.iter_mut().zip(values) {
                        if peer.is_crwatch() {
                            row.crwatch.push(v);
                        } else {
                            row.push_kube(v);
                        }
                    }
                    if peer.is_crwatch() {
                        achieved.crwatch.push(s.achieved);
                    } else {
                        achieved.push_kube(s.achieved);
                    }
                }
            }
            bench.server.shutdown().await?;
        }
        if opts.runs("queue") {
            // Blocking threads, off the runtime's workers.
            let items = opts.queue_items;
            let single = tokio::task::spawn_blocking(move || queue::single_thread(items)).await??;
            eprintln!("  workqueue one thread: {:.2} M items/s", single / 1e6);
            queue_single.crwatch.push(single / 1e6);
            for (c, row) in &mut queue_multi {
                let consumers = *c;
                let items = (opts.queue_items / 5).max(1000);
                let rate =
                    tokio::task::spawn_blocking(move || queue::multi_producer(items, consumers)).await??;
                eprintln!(
                    "  workqueue {} producers, {consumers} consumers: {:.2} M items/s",
                    queue::PRODUCERS,
                    rate / 1e6
                );
                row.crwatch.push(rate / 1e6);
            }
        }
    }

    let mut server_rows = vec![];
    if opts.runs("server") {
        const WHY: &str = "the API server under test; no peer";
        let mut writes = Row::new("crwatch-apiserver writes/s, ConfigMaps of 3 KiB", "/s")
            .higher()
            .crwatch_only(WHY);
        let mut fanouts: Vec<(usize, Row)> = [1, 10, 100]
            .into_iter()
            .map(|w| {
                (
                    w,
                    Row::new(format!("watch events/s delivered to {w} watchers"), "/s")
                        .higher()
                        .crwatch_only(WHY),
                )
            })
            .collect();
        // Heap per stored object at the first --objects size (default 10,000).
        let stored = opts.objects.first().copied().unwrap_or(10_000);
        let mut per_object: Vec<(server::Shape, Row, Row)> = server::Shape::ALL
            .into_iter()
            .map(|shape| {
                let label = shape.label();
                (
                    shape,
                    Row::new(
                        format!("crwatch-apiserver heap per stored object / JSON bytes, {label}"),
                        "×",
                    )
                    .at(stored)
                    .crwatch_only(WHY),
                    Row::new(format!("crwatch-apiserver heap per stored object, {label}"), "B")
                        .at(stored)
                        .crwatch_only(WHY),
                )
            })
            .collect();
        for round in 0..opts.repeats {
            eprintln!("server round {} of {}", round + 1, opts.repeats);
            for (shape, ratio, bytes) in &mut per_object {
                let h = labelled(
                    "apiserver heap per object",
                    server::heap_per_object(*shape, stored),
                )
                .await?;
                eprintln!(
                    "  heap per stored object, {}: {:.0} B for {:.0} B of JSON ({:.2}×)",
                    shape.label(),
                    h.bytes,
                    h.json,
                    h.bytes / h.json
                );
                ratio.crwatch.push(h.bytes / h.json);
                bytes.crwatch.push(h.bytes);
            }
            let rate = labelled("apiserver writes", server::writes_per_sec(opts.updates.max(100))).await?;
            eprintln!("  writes: {rate:.0}/s");
            writes.crwatch.push(rate);
            for (w, row) in &mut fanouts {
                let events = (opts.updates / 5).clamp(100, 2000);
                let rate = labelled("watch fan-out", server::fanout(*w, events)).await?;
                eprintln!("  fan-out to {w}: {rate:.0} events/s");
                row.crwatch.push(rate);
            }
        }
        server_rows.push(writes);
        server_rows.extend(fanouts.into_iter().map(|(_, r)| r));
        for (_, ratio, bytes) in per_object {
            server_rows.extend([ratio, bytes]);
        }
    }
    let mut rows: Vec<Row> = vec![];
    for size in sizes {
        rows.extend(size.into_rows(&opts));
    }
    if opts.runs("throughput") {
        rows.extend([throughput, lag]);
    }
    if opts.runs("reconcile") {
        for (_, t, r) in reconcile {
            rows.extend([t, r]);
        }
    }
    if opts.runs("latency") {
        for ((_, three), achieved) in latency.into_iter().zip(achieved) {
            rows.extend(three);
            rows.push(achieved);
        }
    }
    rows.extend(server_rows);
    if opts.runs("sample") {
        rows.extend(
            labelled(
                "the sample section",
                sample::run(opts.repeats, opts.sample_objects),
            )
            .await?,
        );
    }
    if let Some(bins) = &get_binaries {
        rows.extend(labelled("get", get::rows(bins, opts.get_objects, opts.repeats)).await?);
    }
    if opts.runs("forward") {
        rows.extend(labelled("forward", forward::rows(opts.updates, opts.repeats)).await?);
    }
    if opts.runs("shard") {
        let cost = std::time::Duration::from_millis(opts.shard_cost_ms as u64);
        rows.extend(labelled("shard", shard::rows(opts.shard_objects, cost, opts.repeats)).await?);
    }
    if opts.runs("queue") {
        rows.push(queue_single);
        rows.extend(queue_multi.into_iter().map(|(_, r)| r));
    }
    let machine = report::machine();
    let title = format!(
        "crwatch vs kube-runtime: objects {:?}, {} updates, median of {} rounds; lower is better unless marked ↑",
        opts.objects, opts.updates, opts.repeats
    );
    print!("{}", report::table(&rows, &title));
    println!();
    println!(
        "(whole run {:.0} s on {}; heap = bytes requested from the allocator, read once the counter is stable)",
        run_started.elapsed().as_secs_f64(),
        report::machine_line(&machine),
    );
    println!(
        "(event-to-reconcile: from just before the write call to the start of the reconcile that saw it; {} objects, {} s per rate, {workers} workers)",
        opts.latency_objects, opts.latency_seconds
    );
    if let Some(path) = &opts.json {
        report::write_json(path, &rows, opts.to_json(), machine)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    // The get section's runner: this executable measuring one child (see get.rs).
    if get::run_child_if_asked()? {
        return Ok(());
    }
    let opts = parse_args()?;
    if cfg!(debug_assertions) {
        eprintln!("warning: a debug build; run `cargo run --release -p crwatch-bench` for real figures");
    }
    run(opts).await
}
