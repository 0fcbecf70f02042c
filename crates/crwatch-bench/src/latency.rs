//! Event-to-reconcile latency: changes written at a steady rate through the in-process API
//! server's Rust API, a no-op reconciler that notes when it starts and which resourceVersion
//! it sees, and the delay from each write to the first reconcile that saw it (or a newer
//! version of the same object).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use crwatch::controller::{Action, Builder, Request};
use crwatch::informer::InformerFactory;
use crwatch::source::kube::KubeSource;
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;
use kube::runtime::{controller, watcher};
use tokio_util::sync::CancellationToken;

use crate::cache::{Bench, Peer, WAIT_LIMIT};

/// Reconcile starts: (object index, resourceVersion seen, when).
type Seen = Arc<Mutex<Vec<(usize, u64, Instant)>>>;

/// The figures of one run at one rate.
pub struct LatencySample {
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
    /// The rate the writer achieved (below the target when the server cannot keep up).
    pub achieved: f64,
}

fn note(seen: &Seen, obj: &ConfigMap) {
    let now = Instant::now();
    let index = obj
        .metadata
        .name
        .as_deref()
        .and_then(|n| n.strip_prefix("cm-"))
        .and_then(|n| n.parse().ok());
    let rv = obj
        .metadata
        .resource_version
        .as_deref()
        .and_then(|v| v.parse().ok());
    if let (Some(index), Some(rv)) = (index, rv) {
        seen.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((index, rv, now));
    }
}

fn seen_len(seen: &Seen) -> usize {
    seen.lock().unwrap_or_else(PoisonError::into_inner).len()
}

/// Starts a no-op controller of `peer` that notes every reconcile start in `seen`.
fn start(
    bench: &Bench,
    peer: Peer,
    workers: usize,
    seen: &Seen,
    cancel: &CancellationToken,
) -> Result<tokio::task::JoinHandle<()>> {
    let cancel = cancel.clone();
    if peer.is_crwatch() {
        let factory = InformerFactory::new(bench.client());
        let informer = factory.informer(KubeSource::<ConfigMap>::namespaced(
            bench.client(),
            &bench.namespace,
        ));
        let controller = Builder::new("crwatch-bench-latency", informer)
            .concurrency(workers)
            .build(
                |req: Request<ConfigMap>, seen: Seen| async move {
                    if let Request::Apply(obj) = &req {
                        note(&seen, obj);
                    }
                    Ok(Action::done())
                },
                seen.clone(),
            );
        factory.start();
        Ok(tokio::spawn(async move {
            controller.run(cancel).await;
            drop(factory);
        }))
    } else {
        let api: Api<ConfigMap> = Api::namespaced(bench.client(), &bench.namespace);
        let config = controller::Config::default().concurrency(u16::try_from(workers)?);
        let stream = controller::Controller::new(api, watcher::Config::default())
            .with_config(config)
            .run(
                |obj: Arc<ConfigMap>, seen: Seen| async move {
                    note(&seen, &obj);
                    Ok::<_, Infallible>(controller::Action::await_change())
                },
                |_obj, _err: &Infallible, _ctx| controller::Action::await_change(),
                seen.clone(),
            );
        Ok(tokio::spawn(async move {
            tokio::select! {
                _ = stream.for_each(|_| async {}) => {}
                _ = cancel.cancelled() => {}
            }
        }))
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    // Nearest rank: the smallest value with at least p of the samples at or below it.
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Writes `rate` changes a second for `seconds` to the bench's objects (round robin) while a
/// no-op controller of `peer` runs, and returns the latency percentiles.
///
/// Latency is measured from just before the write call (an upper bound of the commit time:
/// the in-process call commits before it returns) to the start of the first reconcile that
/// saw that resourceVersion or a newer one of the same object.
pub async fn measure(
    bench: &mut Bench,
    peer: Peer,
    rate: usize,
    seconds: usize,
    workers: usize,
) -> Result<LatencySample> {
    let objects = bench.len();
    let seen: Seen = Arc::new(Mutex::new(Vec::new()));
    let cancel = CancellationToken::new();
    let task = start(bench, peer, workers, &seen, &cancel)?;
    // The initial reconciles of every object first, then quiet.
    let deadline = Instant::now() + WAIT_LIMIT;
    while seen_len(&seen) < objects {
        ensure!(Instant::now() < deadline, "the initial reconciles did not finish");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    let total = rate * seconds;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let mut writes = Vec::with_capacity(total);
    let mut calls = Vec::with_capacity(total);
    let started = tokio::time::Instant::now();
    for j in 0..total {
        // An absolute schedule: a late write is followed at once by the ones due meanwhile.
        let due = started + interval.mul_f64(j as f64);
        if tokio::time::Instant::now() < due {
            tokio::time::sleep_until(due).await;
        }
        let i = j % objects;
        let w = bench.write(i).await?;
        writes.push((i, w.rv, w.sent));
        calls.push(w.returned - w.sent);
    }
    let achieved = total as f64 / started.elapsed().as_secs_f64();

    // Wait until the last write of every object written was reconciled.
    let mut last: HashMap<usize, u64> = HashMap::new();
    for &(i, rv, _) in &writes {
        last.insert(i, rv);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let missing = {
            let seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
            let mut newest: HashMap<usize, u64> = HashMap::new();
            for &(i, rv, _) in seen.iter() {
                let e = newest.entry(i).or_insert(0);
                *e = (*e).max(rv);
            }
            last.iter()
                .filter(|(i, rv)| newest.get(i).is_none_or(|n| n < rv))
                .count()
        };
        if missing == 0 {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "{missing} objects were never reconciled at their last version"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cancel.cancel();
    task.await?;

    let seen = std::mem::take(&mut *seen.lock().unwrap_or_else(PoisonError::into_inner));
    let mut by_object: HashMap<usize, Vec<(u64, Instant)>> = HashMap::new();
    for (i, rv, t) in seen {
        by_object.entry(i).or_default().push((rv, t));
    }
    for v in by_object.values_mut() {
        v.sort_by_key(|&(_, t)| t);
    }
    let mut latencies = Vec::with_capacity(writes.len());
    for (i, rv, sent) in writes {
        let first = by_object
            .get(&i)
            .and_then(|v| v.iter().find(|&&(seen_rv, t)| seen_rv >= rv && t >= sent));
        if let Some(&(_, t)) = first {
            latencies.push(t - sent);
        }
    }
    latencies.sort();
    let sample = LatencySample {
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
        max: latencies.last().copied().unwrap_or_default(),
        achieved,
    };
    // The write call's own duration bounds how much the figures overstate (commit time is
    // somewhere inside the call).
    calls.sort();
    eprintln!(
        "  {:<38} {rate}/s (achieved {:.0}/s, write call p50 {:.3} ms): p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms",
        peer.name(),
        achieved,
        percentile(&calls, 0.5).as_secs_f64() * 1e3,
        sample.p50.as_secs_f64() * 1e3,
        sample.p99.as_secs_f64() * 1e3,
        sample.max.as_secs_f64() * 1e3,
    );
    Ok(sample)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let xs: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&xs, 0.5), Duration::from_millis(50));
        assert_eq!(percentile(&xs, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }
}
