//! crwatch-apiserver itself: writes per second through its Rust API, and watch events per
//! second delivered to 1, 10 and 100 watchers over HTTP (kube clients on the server's own
//! address). The server is the system under test, so these rows have no kube-runtime peer.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, ensure};
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::WatchParams;

use crate::cache::Bench;

/// How long a fan-out run may take before it is declared broken.
const LIMIT: Duration = Duration::from_secs(120);

/// Writes per second: `n` ConfigMaps of about 3 KiB created one after the other.
pub async fn writes_per_sec(n: usize) -> Result<f64> {
    let mut bench = Bench::new(0).await?;
    let started = Instant::now();
    for i in 0..n {
        bench.write(i).await?;
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    bench.server.shutdown().await?;
    Ok(rate)
}

/// Watch events per second delivered: `watchers` watches from the current resourceVersion,
/// then `events` writes; the time from the first write until every watcher has every event.
pub async fn fanout(watchers: usize, events: usize) -> Result<f64> {
    let mut bench = Bench::new(1).await?;
    let rv = bench.write(0).await?.rv.to_string();
    let api: Api<ConfigMap> = Api::namespaced(bench.client(), "bench");
    let delivered = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::with_capacity(watchers);
    let mut streams = Vec::with_capacity(watchers);
    for _ in 0..watchers {
        // Opened (the request answered) before the first write.
        streams.push(
            api.watch(&WatchParams::default().timeout(290), &rv)
                .await?
                .boxed(),
        );
    }
    for mut stream in streams {
        let delivered = delivered.clone();
        tasks.push(tokio::spawn(async move {
            let mut seen = 0;
            while seen < events {
                match stream.next().await {
                    Some(Ok(kube::api::WatchEvent::Added(_) | kube::api::WatchEvent::Modified(_))) => {
                        seen += 1;
                        delivered.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(anyhow!("watch: {e}")),
                    None => return Err(anyhow!("the watch ended after {seen} of {events} events")),
                }
            }
            Ok(())
        }));
    }
    let started = Instant::now();
    for i in 0..events {
        bench.write(1 + i % 100).await?;
    }
    for t in tasks {
        tokio::time::timeout(LIMIT.saturating_sub(started.elapsed()), t)
            .await
            .map_err(|_| anyhow!("the watchers did not get every event within {LIMIT:?}"))???;
    }
    let elapsed = started.elapsed();
    ensure!(
        delivered.load(Ordering::Relaxed) == watchers * events,
        "events lost"
    );
    bench.server.shutdown().await?;
    Ok((watchers * events) as f64 / elapsed.as_secs_f64())
}
