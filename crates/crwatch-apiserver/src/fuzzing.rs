//! Entry points for the cargo-fuzz targets in `fuzz/` (hidden, not a stable API): a server
//! without listeners, certificates or background tasks, so a target can apply a manifest as
//! `crwatch-apiserver --crd FILE` ([`crate::ApiServer::apply_file`]) does, thousands of times a
//! second and without ports.

use std::sync::Arc;

use serde_json::Value;

use crate::api::Api;
use crate::faults::Faults;
use crate::store::Store;
use crate::{ServerError, apply_object, default_namespaces};

/// The API (registry, store, admission) of a server, without its HTTP side.
pub struct Server {
    api: Arc<Api>,
}

impl Server {
    /// A fresh server holding the default namespaces, as [`crate::ApiServer::start`] makes one.
    /// The history is small: a fuzz input applies a handful of objects.
    pub async fn new() -> Result<Self, ServerError> {
        let store = Arc::new(Store::new(64, 64));
        let faults = Faults::new(store.clone());
        let server = Server {
            api: Arc::new(Api::new(store, faults)),
        };
        for ns in default_namespaces() {
            server.apply(ns).await?;
        }
        Ok(server)
    }

    /// Apply one manifest document, as [`crate::ApiServer::apply`].
    pub async fn apply(&self, obj: Value) -> Result<Value, ServerError> {
        apply_object(&self.api, obj).await
    }

    /// Every stored object (what the state file would hold).
    pub fn objects(&self) -> Vec<Value> {
        self.api
            .store
            .dump()
            .into_iter()
            .map(|(_, o)| (*o).clone())
            .collect()
    }
}

/// The documents of a manifest, as [`crate::ApiServer::apply_file`] reads them.
pub fn manifest_documents(text: &str) -> Result<Vec<Value>, String> {
    crate::manifest_documents(text).map_err(|e| e.to_string())
}
