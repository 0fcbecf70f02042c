//! crwatch-apiserver itself: writes per second through its Rust API, and watch events per
//! second delivered to 1, 10 and 100 watchers over HTTP (kube clients on the server's own
//! address), and the heap a stored object costs against its JSON size (with a profile of
//! what dominates). The server is the system under test, so these rows have no kube-runtime
//! peer.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, ensure};
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::WatchParams;
use serde_json::{Value, json};

use crate::alloc;
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

/// The objects the heap-per-object rows store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// The suite's ConfigMaps: about 3 KiB of data in 4 values, two labels.
    ConfigMap3K,
    /// Small ConfigMaps: about 1 KB of JSON with six labels and two annotations, where the
    /// per-field overhead of a parsed object weighs most.
    ConfigMap1K,
    /// Bare Pods (one container; the server's defaulting adds the rest), no simulator.
    Pod,
}

impl Shape {
    pub const ALL: [Shape; 3] = [Shape::ConfigMap3K, Shape::ConfigMap1K, Shape::Pod];

    pub fn label(self) -> &'static str {
        match self {
            Shape::ConfigMap3K => "ConfigMaps of 3 KiB",
            Shape::ConfigMap1K => "ConfigMaps of 1 KB, 6 labels",
            Shape::Pod => "bare Pods",
        }
    }

    fn object(self, i: usize) -> Value {
        let name = crate::cache::name_of(i);
        match self {
            Shape::ConfigMap3K => {
                let data: serde_json::Map<String, Value> = (0..4)
                    .map(|k| {
                        (
                            format!("value-{k}"),
                            Value::from(crate::cache::payload(i, k, 768)),
                        )
                    })
                    .collect();
                json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": name, "namespace": NAMESPACE,
                        "labels": {"app": "crwatch-bench", "shard": (i % 16).to_string()}},
                    "data": data})
            }
            Shape::ConfigMap1K => json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": NAMESPACE,
                    "labels": {"app.kubernetes.io/name": "crwatch-bench",
                        "app.kubernetes.io/instance": format!("bench-{}", i % 50),
                        "app.kubernetes.io/component": "config",
                        "app.kubernetes.io/part-of": "crwatch",
                        "tier": TIERS[i % 3],
                        "shard": (i % 16).to_string()},
                    "annotations": {"crwatch.dev/owner": "team-a",
                        "crwatch.dev/revision": i.to_string()}},
                "data": {"config.yaml": crate::cache::payload(i, 0, 160), "mode": "fast", "level": "3"}}),
            Shape::Pod => json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": NAMESPACE,
                    "labels": {"app": "crwatch-bench", "shard": (i % 16).to_string()}},
                "spec": {"containers": [{"name": "main", "image": "nginx:1.27"}]}}),
        }
    }
}

const NAMESPACE: &str = "bench";
const TIERS: [&str; 3] = ["frontend", "backend", "cache"];

/// What storing objects cost the server.
pub struct HeapPerObject {
    /// Heap growth per stored object (objects, indexes and history as configured by default).
    pub bytes: f64,
    /// The stored objects' compact JSON, per object.
    pub json: f64,
}

/// Heap growth of a server with default configuration (simulator off) after `n` objects of
/// `shape` are applied through its Rust API (server-side apply: managedFields included), per
/// object, and the stored objects' compact JSON size. Also prints, for the last object, what
/// it costs parsed, without managedFields, and as text (the profile of what dominates).
pub async fn heap_per_object(shape: Shape, n: usize) -> Result<HeapPerObject> {
    let server = crwatch_apiserver::TestServer::with_config(crwatch_apiserver::Config {
        simulate_workloads: false,
        ..Default::default()
    })
    .await?;
    server
        .server()
        .apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}))
        .await?;
    // One object first, so one-off growth (the resource's maps and history) is not counted.
    server.server().apply(shape.object(n)).await?;
    let before = alloc::settle().await;
    let mut json_bytes = 0usize;
    let mut last = Value::Null;
    for i in 0..n {
        let out = server.server().apply(shape.object(i)).await?;
        json_bytes += serde_json::to_vec(&out)?.len();
        last = out;
    }
    let text = serde_json::to_string(&last)?;
    drop(last);
    let after = alloc::settle().await;
    ensure!(before.quiet && after.quiet, "the heap counter did not settle");
    profile(shape, &text)?;
    server.shutdown().await?;
    Ok(HeapPerObject {
        bytes: after.bytes.saturating_sub(before.bytes) as f64 / n as f64,
        json: json_bytes as f64 / n as f64,
    })
}

/// Heap bytes `f`'s result holds (measured with the counting allocator; nothing else may
/// allocate meanwhile, which holds closely enough on an idle server).
fn held<T>(f: impl FnOnce() -> T) -> (usize, T) {
    let before = alloc::current();
    let out = f();
    (alloc::current().saturating_sub(before), out)
}

/// Prints what one stored object costs in pieces: parsed whole, parsed without
/// metadata.managedFields, the managedFields alone, and as its compact text (its length).
fn profile(shape: Shape, text: &str) -> Result<()> {
    let (parsed, mut value) = held(|| serde_json::from_str::<Value>(text));
    let value = value.as_mut().map_err(|e| anyhow!("re-parsing: {e}"))?;
    let managed = value
        .get_mut("metadata")
        .and_then(Value::as_object_mut)
        .and_then(|m| m.shift_remove("managedFields"))
        .unwrap_or(Value::Null);
    let managed_text = serde_json::to_string(&managed)?;
    let (managed_heap, v) = held(|| serde_json::from_str::<Value>(&managed_text));
    drop(v);
    let rest_text = serde_json::to_string(&value)?;
    let (rest_heap, v) = held(|| serde_json::from_str::<Value>(&rest_text));
    drop(v);
    eprintln!(
        "  profile, {}: JSON {} B; parsed Value {parsed} B ({:.1}×); managedFields {} B JSON -> {managed_heap} B parsed; the rest {} B JSON -> {rest_heap} B parsed; as text {} B",
        shape.label(),
        text.len(),
        parsed as f64 / text.len() as f64,
        managed_text.len(),
        rest_text.len(),
        text.len(),
    );
    Ok(())
}
