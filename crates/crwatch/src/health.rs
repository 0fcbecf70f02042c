//! The HTTP endpoints a manager serves: `/metrics` (Prometheus text) and the probes
//! `/healthz` (the process is alive) and `/readyz` (caches have synced, and every source has
//! been healthy within its grace period: a source that is down is visible).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// A readiness check: `Err` says why not ready.
pub type Check = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Readiness shared between the manager and the `/readyz` endpoint: a flag (caches synced)
/// and any number of checks (sources healthy).
///
/// ```
/// use crwatch::health::Readiness;
/// let r = Readiness::default();
/// r.set(true);
/// assert!(r.get());
/// r.add_check(|| Err("configmaps: watch failing for 2m".to_string()));
/// assert!(!r.get());
/// assert_eq!(r.failing(), vec!["configmaps: watch failing for 2m".to_string()]);
/// ```
#[derive(Clone, Default)]
pub struct Readiness {
    flag: Arc<AtomicBool>,
    checks: Arc<std::sync::RwLock<Vec<Check>>>,
}

impl Readiness {
    /// Mark ready (after caches synced) or not.
    pub fn set(&self, ready: bool) {
        self.flag.store(ready, Ordering::SeqCst);
    }

    /// Also require `check` to pass.
    pub fn add_check(&self, check: impl Fn() -> Result<(), String> + Send + Sync + 'static) {
        if let Ok(mut c) = self.checks.write() {
            c.push(Arc::new(check));
        }
    }

    /// Why the checks fail (empty when they pass).
    pub fn failing(&self) -> Vec<String> {
        let checks: Vec<Check> = self.checks.read().map(|c| c.clone()).unwrap_or_default();
        checks.iter().filter_map(|c| c().err()).collect()
    }

    /// Whether ready: the flag is set and every check passes.
    pub fn get(&self) -> bool {
        self.flag.load(Ordering::SeqCst) && self.failing().is_empty()
    }
}

async fn metrics(State(m): State<Metrics>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.encode(),
    )
}

async fn readyz(State(r): State<Readiness>) -> impl IntoResponse {
    if !r.flag.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "caches not synced".to_string());
    }
    let failing = r.failing();
    if failing.is_empty() {
        (StatusCode::OK, "ok".to_string())
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, failing.join("\n"))
    }
}

/// The `/metrics` router.
pub fn metrics_router(m: Metrics) -> Router {
    Router::new().route("/metrics", get(metrics)).with_state(m)
}

/// The `/healthz` + `/readyz` router.
pub fn probes_router(ready: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(ready)
}

/// Bind `addr` and serve `router` until `cancel`; returns the bound address (port 0 picks one).
pub async fn serve(
    addr: SocketAddr,
    router: Router,
    cancel: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        let server =
            axum::serve(listener, router).with_graceful_shutdown(async move { cancel.cancelled().await });
        if let Err(e) = server.await {
            tracing::error!(error = %e, %local, "HTTP endpoint stopped");
        }
    });
    Ok(local)
}
