//! `crwatch-apiserver`: an in-process Kubernetes API server for tests and demos.
//!
//! It speaks the real REST and watch protocol over HTTPS (with a throwaway CA written into the
//! kubeconfig) and plain HTTP, so `kubectl`, kube-rs and client-go talk to it unchanged. It
//! serves Namespaces, ConfigMaps, Secrets, ServiceAccounts, Events, Leases, Deployments, CRDs
//! (with structural schema validation, defaulting, pruning and printer columns) and any custom
//! resource a CRD defines; it keeps one resourceVersion sequence with a bounded history, runs
//! garbage collection and admission webhooks, and injects faults on demand.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use crwatch_apiserver::{ApiServer, Config};
//! let server = ApiServer::start(Config::default()).await?;
//! println!("kubectl --kubeconfig <(echo '{}') get ns", server.kubeconfig_yaml());
//! server.faults().drop_watches();
//! server.shutdown().await?;
//! # Ok(()) }
//! ```

pub mod admission;
pub mod api;
pub mod convert;
pub mod decode;
pub mod faults;
mod gc;
mod http;
pub mod managed;
pub mod meta;
pub mod openapi;
pub mod patch;
pub mod protobuf;
pub mod registry;
pub mod schema;
pub mod selector;
pub mod status;
pub mod store;
pub mod table;
#[cfg(feature = "test-server")]
mod testserver;
pub mod tls;
pub mod watch;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use faults::{Faults, Match, RequestRecord};
#[cfg(feature = "test-server")]
pub use testserver::TestServer;

use crate::api::{Api, Ctx, Params};
use crate::registry::GroupResource;
use crate::store::Store;

/// The Kubernetes version the server reports and whose behaviour it follows.
pub const KUBERNETES_VERSION: (&str, &str) = ("1", "33");

/// How to run the server.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on (loopback by default).
    pub host: IpAddr,
    /// HTTPS port; 0 picks a free one.
    pub port: u16,
    /// Plain HTTP port: `Some(0)` picks a free one, `None` serves HTTPS only.
    pub http_port: Option<u16>,
    /// Bearer token clients must send; `None` generates a random one.
    pub token: Option<String>,
    /// How many changes of history are kept for watches and paging (older ones get 410).
    pub history_window: usize,
    /// How many undelivered events a watcher may fall behind before it is closed.
    pub watch_buffer: usize,
    /// How often watches that allow bookmarks get one.
    pub bookmark_interval: Duration,
    /// Objects are loaded from, and saved to, this file.
    pub state_file: Option<PathBuf>,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 0,
            http_port: Some(0),
            token: None,
            history_window: 10_000,
            watch_buffer: 10_000,
            bookmark_interval: Duration::from_secs(60),
            state_file: None,
            max_body_bytes: 3 * 1024 * 1024,
        }
    }
}

/// Starting or stopping the server failed.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A port could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Certificates could not be made.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The state file could not be read or written.
    #[error("state file {path}: {message}")]
    State {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// A manifest could not be applied.
    #[error("{0}")]
    Manifest(String),
}

/// A running API server. Dropping it stops serving; [`ApiServer::shutdown`] also saves state.
pub struct ApiServer {
    https_url: String,
    http_url: Option<String>,
    token: String,
    certs: tls::Certs,
    api: Arc<Api>,
    stop: CancellationToken,
    state_file: Option<PathBuf>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn bind(host: IpAddr, port: u16) -> Result<(TcpListener, u16), ServerError> {
    let addr = SocketAddr::new(host, port);
    let l = TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })?;
    let port = l
        .local_addr()
        .map_err(|source| ServerError::Bind { addr, source })?
        .port();
    Ok((l, port))
}

fn default_namespaces() -> Vec<Value> {
    ["default", "kube-system", "kube-public", "kube-node-lease"]
        .iter()
        .map(|n| json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}}))
        .collect()
}

impl ApiServer {
    /// Start serving. Loads `state_file` if it exists, otherwise creates the default namespaces.
    pub async fn start(config: Config) -> Result<Self, ServerError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let store = Arc::new(Store::new(config.history_window, config.watch_buffer));
        let faults = Faults::new(store.clone());
        let api = Arc::new(Api::new(store.clone(), faults));
        let stop = CancellationToken::new();

        let loaded = match &config.state_file {
            Some(path) if path.exists() => {
                load_state(&store, path)?;
                api.sync_all_crds();
                true
            }
            _ => false,
        };
        gc::spawn(api.clone(), stop.clone());

        let token = config
            .token
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
        let certs = tls::Certs::generate(&[config.host.to_string()])?;
        let (https, port) = bind(config.host, config.port).await?;
        let host = match config.host {
            IpAddr::V6(h) => format!("[{h}]"),
            h => h.to_string(),
        };
        let state = Arc::new(http::AppState {
            api: api.clone(),
            token: Some(token.clone()),
            watch: watch::WatchSettings {
                bookmark_interval: config.bookmark_interval,
                default_timeout: Duration::from_secs(1800),
            },
            stop: stop.clone(),
            version: version_info(),
            max_body: config.max_body_bytes,
        });
        let router = axum::Router::new().fallback(http::handle).with_state(state);
        tokio::spawn(http::serve(
            https,
            Some(certs.server_config()?),
            router.clone(),
            stop.clone(),
        ));
        let http_url = match config.http_port {
            Some(p) => {
                let (l, port) = bind(config.host, p).await?;
                tokio::spawn(http::serve(l, None, router, stop.clone()));
                Some(format!("http://{host}:{port}"))
            }
            None => None,
        };
        let server = ApiServer {
            https_url: format!("https://{host}:{port}"),
            http_url,
            token,
            certs,
            api,
            stop,
            state_file: config.state_file.clone(),
        };
        if !loaded {
            for ns in default_namespaces() {
                server.apply(ns).await?;
            }
        }
        Ok(server)
    }

    /// The HTTPS URL, like `https://127.0.0.1:6443`.
    pub fn url(&self) -> &str {
        &self.https_url
    }

    /// The plain HTTP URL, if serving plain HTTP.
    pub fn http_url(&self) -> Option<&str> {
        self.http_url.as_deref()
    }

    /// The bearer token clients must present.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The CA certificate (PEM) that signed the serving certificate.
    pub fn ca_pem(&self) -> &str {
        &self.certs.ca_pem
    }

    /// The fault handle.
    pub fn faults(&self) -> &Faults {
        &self.api.faults
    }

    /// The store's newest resourceVersion.
    pub fn revision(&self) -> u64 {
        self.api.store.revision()
    }

    /// A kubeconfig (YAML) for this server: HTTPS with the CA embedded and the bearer token.
    pub fn kubeconfig_yaml(&self) -> String {
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.certs.ca_pem);
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: crwatch\n  cluster:\n    server: {}\n    certificate-authority-data: {ca}\nusers:\n- name: crwatch-admin\n  user:\n    token: {}\ncontexts:\n- name: crwatch\n  context:\n    cluster: crwatch\n    user: crwatch-admin\n    namespace: default\ncurrent-context: crwatch\npreferences: {{}}\n",
            self.https_url, self.token
        )
    }

    /// Write [`ApiServer::kubeconfig_yaml`] to `path` (mode 0600: it holds the token).
    pub fn write_kubeconfig(&self, path: &Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, self.kubeconfig_yaml())?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        }
        Ok(())
    }

    /// Create or replace an object given as JSON (any served kind), as `kubectl apply` would.
    pub async fn apply(&self, obj: Value) -> Result<Value, ServerError> {
        let av = obj
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let kind = obj
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let def = self
            .api
            .registry()
            .by_kind(&av, &kind)
            .ok_or_else(|| ServerError::Manifest(format!("no kind {kind:?} is served at {av:?}")))?;
        let name = meta::meta_str(&obj, "name").to_string();
        let mut namespace = meta::meta_str(&obj, "namespace").to_string();
        if def.namespaced && namespace.is_empty() {
            namespace = "default".into();
        }
        let mut params = Params::default();
        params.0.insert("fieldManager".into(), "crwatch-apiserver".into());
        params.0.insert("force".into(), "true".into());
        let ctx = Ctx {
            def,
            namespace,
            name,
            sub: String::new(),
            params,
            user_agent: "crwatch-apiserver".into(),
            user: "admin".into(),
        };
        let out = self
            .api
            .patch(&ctx, "application/apply-patch+yaml", obj.to_string().as_bytes())
            .await
            .map_err(|e| ServerError::Manifest(e.message))?;
        Ok(out.body)
    }

    /// Delete an object directly (background propagation, finalizers honoured), bypassing
    /// HTTP: it works while [`Faults::pause`] holds client requests.
    pub async fn delete(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Result<(), ServerError> {
        let def =
            self.api.registry().by_kind(api_version, kind).ok_or_else(|| {
                ServerError::Manifest(format!("no kind {kind:?} is served at {api_version:?}"))
            })?;
        let ns = if def.namespaced { namespace } else { "" };
        let cur = self
            .api
            .store
            .get(&def.key(), &(ns.to_string(), name.to_string()))
            .ok_or_else(|| {
                ServerError::Manifest(format!("{} {ns}/{name} not found", def.group_resource()))
            })?;
        self.api
            .delete_object(&def, &cur, "Background", false, vec![])
            .map_err(|e| ServerError::Manifest(e.message))?;
        Ok(())
    }

    /// Apply every document of a YAML (or JSON) manifest file.
    pub async fn apply_file(&self, path: &Path) -> Result<Vec<Value>, ServerError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ServerError::Manifest(format!("reading {}: {e}", path.display())))?;
        let docs: Vec<Value> = serde_saphyr::from_multiple(&text)
            .map_err(|e| ServerError::Manifest(format!("parsing {}: {e}", path.display())))?;
        let mut out = vec![];
        for doc in docs.into_iter().filter(|d| !d.is_null()) {
            out.push(
                self.apply(doc)
                    .await
                    .map_err(|e| ServerError::Manifest(format!("{}: {e}", path.display())))?,
            );
        }
        Ok(out)
    }

    /// Stop serving (open watches end) and save state if a state file was configured.
    pub async fn shutdown(self) -> Result<(), ServerError> {
        self.stop.cancel();
        if let Some(path) = &self.state_file {
            save_state(&self.api.store, path)?;
        }
        Ok(())
    }
}

fn version_info() -> Value {
    json!({
        "major": KUBERNETES_VERSION.0,
        "minor": KUBERNETES_VERSION.1,
        "emulationMajor": KUBERNETES_VERSION.0,
        "emulationMinor": KUBERNETES_VERSION.1,
        "gitVersion": format!("v{}.{}.0-crwatch.{}", KUBERNETES_VERSION.0, KUBERNETES_VERSION.1, env!("CARGO_PKG_VERSION")),
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "none (Rust)",
        "compiler": "rustc",
        // Go's GOOS/GOARCH names, as the real server reports them.
        "platform": format!("{}/{}", std::env::consts::OS, match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            other => other,
        }),
    })
}

fn save_state(store: &Store, path: &Path) -> Result<(), ServerError> {
    let err = |message: String| ServerError::State {
        path: path.to_path_buf(),
        message,
    };
    let objects: Vec<Value> = store
        .dump()
        .into_iter()
        .map(|(gr, o)| json!({"group": gr.group, "resource": gr.resource, "object": *o}))
        .collect();
    let doc = json!({"revision": store.revision(), "objects": objects});
    let tmp = path.with_extension("tmp");
    std::fs::write(
        &tmp,
        serde_json::to_vec_pretty(&doc).map_err(|e| err(e.to_string()))?,
    )
    .map_err(|e| err(e.to_string()))?;
    std::fs::rename(&tmp, path).map_err(|e| err(e.to_string()))
}

fn load_state(store: &Store, path: &Path) -> Result<(), ServerError> {
    let err = |message: String| ServerError::State {
        path: path.to_path_buf(),
        message,
    };
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let doc: Value = serde_json::from_slice(&bytes)
        .map_err(|e| err(format!("not a crwatch-apiserver state file: {e}")))?;
    let objects = doc
        .get("objects")
        .and_then(Value::as_array)
        .ok_or_else(|| err("missing \"objects\"".into()))?;
    let parsed = objects
        .iter()
        .map(|o| {
            let s = |k: &str| o.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
            (
                GroupResource {
                    group: s("group"),
                    resource: s("resource"),
                },
                o.get("object").cloned().unwrap_or(Value::Null),
            )
        })
        .filter(|(_, o)| o.is_object())
        .collect();
    store.load(parsed);
    Ok(())
}
