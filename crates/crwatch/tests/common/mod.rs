//! Helpers shared by the crwatch integration tests.

#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crwatch::informer::HandlerFns;
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

/// What a recording handler saw: adds, updates with their diff paths, deletes, by name.
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    Add(String),
    Update(String, Vec<String>),
    Delete(String),
}

/// A handler recording every change it gets, and where it records them.
pub fn recorder() -> (Arc<Mutex<Vec<Seen>>>, HandlerFns<ConfigMap>) {
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let (a, u, d) = (seen.clone(), seen.clone(), seen.clone());
    let name = |c: &ConfigMap| c.metadata.name.clone().unwrap_or_default();
    let h = HandlerFns::new()
        .on_add(move |c: &Arc<ConfigMap>| a.lock().unwrap().push(Seen::Add(name(c))))
        .on_update(move |_, n: &Arc<ConfigMap>, diff| {
            u.lock().unwrap().push(Seen::Update(
                name(n),
                diff.paths().into_iter().map(String::from).collect(),
            ))
        })
        .on_delete(move |c: &Arc<ConfigMap>| d.lock().unwrap().push(Seen::Delete(name(c))));
    (seen, h)
}
