//! Helpers shared by the crwatch integration tests.

#![allow(dead_code)]

use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;

/// Poll `f` until it returns `Some`, failing the test after `secs` seconds.
pub async fn wait_for<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A ConfigMap labelled `app=web` with `data.v = value`.
pub fn cm(name: &str, value: &str) -> ConfigMap {
    let mut c = ConfigMap::default();
    c.metadata.name = Some(name.into());
    c.metadata.labels = Some([("app".to_string(), "web".to_string())].into());
    c.data = Some([("v".to_string(), value.to_string())].into());
    c
}
