//! What the gateway operator's end-to-end tests share: free ports, a GatewayRoute from a spec,
//! and waiting for a condition with a deadline.
#![allow(dead_code)] // each test binary uses some of these

use std::future::Future;
use std::time::{Duration, Instant};

use gateway_operator::types::GatewayRoute;
use serde_json::{Value, json};

/// A free loopback port.
pub fn free_port() -> u16 {
    crwatch_testsupport::free_port().expect("a free port")
}

/// A `GatewayRoute` named `name` (no namespace: the API's) with `spec`.
pub fn route(name: &str, spec: Value) -> GatewayRoute {
    serde_json::from_value(json!({
        "apiVersion": "gateway.crwatch.io/v1alpha1", "kind": "GatewayRoute",
        "metadata": {"name": name}, "spec": spec,
    }))
    .expect("a GatewayRoute")
}

/// Poll `f` every 20 ms until it gives a value, failing the test after `timeout`.
pub async fn wait_for<T, F: Future<Output = Option<T>>>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
