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
pub mod authn;
pub mod builtin;
pub mod cel;
pub mod convert;
pub mod decode;
pub mod faults;
pub mod features;
#[doc(hidden)]
pub mod fuzzing;
mod gc;
mod http;
pub mod managed;
pub mod meta;
pub mod openapi;
pub mod patch;
pub mod podsub;
pub mod protobuf;
pub mod rbac;
pub mod registry;
pub mod reviews;
pub mod schema;
pub mod selector;
pub mod shard;
mod sim;
pub mod state;
pub mod status;
pub mod store;
pub mod strategy;
pub mod table;
#[cfg(feature = "test-server")]
mod testserver;
pub mod tls;
pub mod typed;
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
pub use features::FeatureGates;
pub use sim::SimConfig;
#[cfg(feature = "test-server")]
pub use testserver::TestServer;

use crate::api::{Api, Ctx, Params};
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
    /// Bearer token clients must send; `None` generates a random one. It authenticates as
    /// `system:admin` in `system:masters`, which bypasses RBAC.
    pub token: Option<String>,
    /// More bearer-token users (as `--token-auth-file` lines): RBAC decides what they may do.
    pub users: Vec<authn::TokenUser>,
    /// How many changes of history each resource keeps at most for watches and paging (older
    /// ones get 410): the upper bound of its watch-cache-like capacity, which starts at 100 and
    /// doubles while even its oldest change is under 75 s old (see README, "Watch history").
    pub history_window: usize,
    /// How many changes of history are kept at most in bytes (each distinct object version
    /// counted once by its JSON length); older ones get 410 like those past `history_window`.
    pub history_bytes: usize,
    /// How many undelivered events a watcher may have queued (and fall behind the store before
    /// it reads on from history); a watcher whose queue stays full is closed.
    pub watch_buffer: usize,
    /// How many bytes of encoded events a watcher may have queued (one event always fits).
    pub watch_buffer_bytes: usize,
    /// How often watches that allow bookmarks get one.
    pub bookmark_interval: Duration,
    /// Objects, the revision and the server's identity are kept in this file (an embedded
    /// ACID database, owner-only): every acknowledged write is on disk first.
    pub state_file: Option<PathBuf>,
    /// The identity (CA, serving certificate, token, ports) to keep from an earlier run; one
    /// kept in `state_file` is used when this is `None`.
    pub identity: Option<Identity>,
    /// The HTTPS port when `port` is 0 and no identity keeps one (0: a free one).
    pub default_port: u16,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// How long a connection may take to send the headers of a request (and, on a new
    /// connection, to start one): the real server's `ReadHeaderTimeout`, 32 s.
    pub header_read_timeout: Duration,
    /// How long a TLS handshake may take (Go derives it from `ReadHeaderTimeout`: 32 s).
    pub tls_handshake_timeout: Duration,
    /// Run the workload simulator (on by default): built-in controllers that turn
    /// Deployments, StatefulSets, DaemonSets, Jobs and CronJobs into Pods on simulated Nodes
    /// that become Running and Ready, Services into EndpointSlices and PVCs into bound volumes.
    pub simulate_workloads: bool,
    /// How the workload simulator behaves (Nodes, delays).
    pub sim: SimConfig,
    /// Alpha behaviours of later Kubernetes versions, off by default (`--feature-gates`).
    pub feature_gates: FeatureGates,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 0,
            http_port: Some(0),
            token: None,
            users: Vec::new(),
            history_window: store::UPPER_BOUND_CAPACITY,
            history_bytes: store::DEFAULT_HISTORY_BYTES,
            watch_buffer: 10_000,
            watch_buffer_bytes: watch::DEFAULT_BUFFER_BYTES,
            bookmark_interval: Duration::from_secs(60),
            state_file: None,
            identity: None,
            default_port: 0,
            max_body_bytes: 3 * 1024 * 1024,
            header_read_timeout: Duration::from_secs(32),
            tls_handshake_timeout: Duration::from_secs(32),
            simulate_workloads: true,
            sim: SimConfig::default(),
            feature_gates: FeatureGates::default(),
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
    /// A configuration value is out of range.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The port kept from the last run, which clients still use, is taken.
    #[error(
        "binding {addr}, the port kept from the last run so that clients reconnect: {source} (stop what holds it, or pass another port)"
    )]
    KeptPort {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// What a server keeps across restarts so that connected clients reconnect by themselves:
/// the CA and serving certificate, the bearer token and the ports.
#[derive(Clone)]
pub struct Identity {
    /// Certificates (the CA clients trust and the serving certificate and key).
    pub certs: tls::Certs,
    /// The bearer token.
    pub token: String,
    /// The address the certificate was made for.
    pub host: String,
    /// The HTTPS port.
    pub https_port: u16,
    /// The plain HTTP port, if any.
    pub http_port: Option<u16>,
    /// The key ServiceAccount tokens are signed with (base64 PKCS#8), so that tokens issued
    /// before a restart stay valid; a new one is made when `None`.
    pub service_account_key: Option<String>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token or the key.
        f.debug_struct("Identity")
            .field("host", &self.host)
            .field("https_port", &self.https_port)
            .field("http_port", &self.http_port)
            .finish_non_exhaustive()
    }
}

impl Identity {
    fn to_json(&self) -> Value {
        json!({
            "caPem": self.certs.ca_pem,
            "certPem": self.certs.cert_pem,
            "keyPem": self.certs.key_pem,
            "token": self.token,
            "host": self.host,
            "httpsPort": self.https_port,
            "httpPort": self.http_port,
            "serviceAccountKey": self.service_account_key,
        })
    }

    fn from_json(v: &Value) -> Option<Self> {
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(String::from);
        let port = |k: &str| {
            v.get(k)
                .and_then(Value::as_u64)
                .and_then(|p| u16::try_from(p).ok())
        };
        Some(Identity {
            certs: tls::Certs {
                ca_pem: s("caPem")?,
                cert_pem: s("certPem")?,
                key_pem: s("keyPem")?,
            },
            token: s("token")?,
            host: s("host")?,
            https_port: port("httpsPort")?,
            http_port: port("httpPort"),
            service_account_key: s("serviceAccountKey"),
        })
    }

    /// The identity of the server that wrote `kubeconfig` (with
    /// [`ApiServer::write_kubeconfig`]), if the file and its `<kubeconfig>.serving.pem`
    /// companion (the serving certificate and key) are there and agree.
    pub fn from_kubeconfig(kubeconfig: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(kubeconfig).ok()?;
        let kc: Value = serde_saphyr::from_str(&text).ok()?;
        let cluster = kc
            .get("clusters")?
            .as_array()?
            .iter()
            .find(|c| c.get("name").and_then(Value::as_str) == Some("crwatch"))?
            .get("cluster")?;
        let url = cluster.get("server")?.as_str()?;
        let ca = base64::engine::general_purpose::STANDARD
            .decode(cluster.get("certificate-authority-data")?.as_str()?)
            .ok()?;
        let token = kc
            .get("users")?
            .as_array()?
            .iter()
            .find(|u| u.get("name").and_then(Value::as_str) == Some("crwatch-admin"))?
            .get("user")?
            .get("token")?
            .as_str()?
            .to_string();
        let rest = url.strip_prefix("https://")?;
        let (host, port) = rest.rsplit_once(':')?;
        let serving = std::fs::read_to_string(serving_pem_path(kubeconfig)).ok()?;
        let key_at = serving.find("-----BEGIN PRIVATE KEY-----")?;
        Some(Identity {
            certs: tls::Certs {
                ca_pem: String::from_utf8(ca).ok()?,
                cert_pem: serving[..key_at].to_string(),
                key_pem: serving[key_at..].to_string(),
            },
            token,
            host: host.trim_start_matches('[').trim_end_matches(']').to_string(),
            https_port: port.parse().ok()?,
            http_port: None,
            service_account_key: None,
        })
    }
}

/// Where [`ApiServer::write_kubeconfig`] keeps the serving certificate and key.
fn serving_pem_path(kubeconfig: &Path) -> PathBuf {
    PathBuf::from(format!("{}.serving.pem", kubeconfig.display()))
}

/// Bind the port a client still uses: a server that stopped in this process a moment ago may
/// still be letting go of it.
async fn bind_kept(host: IpAddr, port: u16) -> Result<(TcpListener, u16), ServerError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match bind(host, port).await {
            Err(ServerError::Bind { source, .. })
                if source.kind() == std::io::ErrorKind::AddrInUse
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(ServerError::Bind { addr, source }) => return Err(ServerError::KeptPort { addr, source }),
            other => return other,
        }
    }
}

/// A running API server. Dropping it stops serving and closes the state file (every acknowledged
/// write is already on disk); [`ApiServer::shutdown`] also waits for the last changes to be written.
pub struct ApiServer {
    https_url: String,
    http_url: Option<String>,
    token: String,
    certs: tls::Certs,
    api: Arc<Api>,
    stop: CancellationToken,
    host: String,
    https_port: u16,
    http_port: Option<u16>,
    authn: Arc<authn::Authenticator>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop.cancel();
        // Let go of the state file now (tasks still holding the store may end later), so a
        // server started next on the same file can open it; everything acknowledged is on disk.
        if let Some(journal) = self.api.store.journal() {
            journal.close();
        }
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
        http::check_config(&config).map_err(ServerError::Config)?;
        config.sim.check().map_err(ServerError::Config)?;
        let _ = rustls::crypto::ring::default_provider().install_default();
        let store = Arc::new(
            Store::new(config.history_window, config.watch_buffer).with_history_bytes(config.history_bytes),
        );
        let faults = Faults::new(store.clone());
        let mut api = Api::new(store.clone(), faults);
        api.features = config.feature_gates;
        let api = Arc::new(api);
        let stop = CancellationToken::new();

        let mut kept = config.identity.clone();
        let loaded = match &config.state_file {
            Some(path) => {
                let (opened, loaded) = state::StateDb::open(path).map_err(|e| ServerError::State {
                    path: path.clone(),
                    message: e.message,
                })?;
                let existed = loaded.revision > 0;
                if kept.is_none() {
                    kept = loaded.identity.as_ref().and_then(Identity::from_json);
                }
                store.load_stored(loaded.objects, loaded.revision);
                store.set_journal(opened).map_err(|e| ServerError::State {
                    path: path.clone(),
                    message: e.message,
                })?;
                if existed {
                    api.sync_all_crds();
                }
                existed
            }
            None => false,
        };
        // A certificate made for another address would not verify: keep only the rest.
        let host_name = config.host.to_string();
        let kept_certs = kept
            .as_ref()
            .filter(|k| k.host == host_name && k.certs.server_config().is_ok())
            .map(|k| k.certs.clone());
        gc::spawn(api.clone(), stop.clone());
        if config.simulate_workloads {
            sim::spawn(api.clone(), config.sim.clone(), !loaded, stop.clone());
        }

        let token = config
            .token
            .clone()
            .or_else(|| kept.as_ref().map(|k| k.token.clone()))
            .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
        let certs = match kept_certs {
            Some(c) => c,
            None => tls::Certs::generate(std::slice::from_ref(&host_name))?,
        };
        let (https, port) = match (config.port, kept.as_ref()) {
            (0, Some(k)) => bind_kept(config.host, k.https_port).await?,
            (0, None) => bind(config.host, config.default_port).await?,
            (p, _) => bind(config.host, p).await?,
        };
        let host = match config.host {
            IpAddr::V6(h) => format!("[{h}]"),
            h => h.to_string(),
        };
        let sa_key = match kept.as_ref().and_then(|k| k.service_account_key.as_deref()) {
            Some(k) => authn::SigningKey::from_base64(k).or_else(|_| authn::SigningKey::generate()),
            None => authn::SigningKey::generate(),
        }
        .map_err(ServerError::Config)?;
        let authn = Arc::new(authn::Authenticator::new(token.clone(), &config.users, sa_key));
        let authz = Arc::new(rbac::Authorizer::new(store.clone()));
        rbac::spawn_aggregation(authz.clone(), store.clone(), stop.clone());
        let state = Arc::new(http::AppState {
            api: api.clone(),
            authn: authn.clone(),
            authz,
            watch: watch::WatchSettings {
                bookmark_interval: config.bookmark_interval,
                default_timeout: Duration::from_secs(1800),
                buffer_bytes: config.watch_buffer_bytes,
            },
            stop: stop.clone(),
            version: version_info(),
            max_body: config.max_body_bytes,
        });
        let router = axum::Router::new().fallback(http::handle).with_state(state);
        let limits = http::ConnLimits {
            header_read_timeout: config.header_read_timeout,
            tls_handshake_timeout: config.tls_handshake_timeout,
        };
        tokio::spawn(http::serve(
            https,
            Some(certs.server_config()?),
            router.clone(),
            stop.clone(),
            limits,
        ));
        let kept_http = kept.as_ref().and_then(|k| k.http_port);
        let mut http_port = None;
        let http_url = match config.http_port {
            Some(p) => {
                let (l, port) = match (p, kept_http) {
                    (0, Some(k)) => bind_kept(config.host, k).await?,
                    _ => bind(config.host, p).await?,
                };
                http_port = Some(port);
                tokio::spawn(http::serve(l, None, router, stop.clone(), limits));
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
            host: host_name,
            https_port: port,
            http_port,
            authn,
        };
        if !loaded {
            for ns in default_namespaces() {
                server.apply(ns).await?;
            }
        }
        // The default RBAC policy, created where missing at every start as the real server's
        // bootstrap does (a role a user changed is left alone).
        rbac::bootstrap(&server.api)
            .await
            .map_err(ServerError::Manifest)?;
        server.sync().await?;
        if let Some(journal) = server.api.store.journal() {
            journal.save_identity(&server.identity().to_json());
            journal.flush().await.map_err(|e| ServerError::State {
                path: journal.path().to_path_buf(),
                message: e.message,
            })?;
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

    /// What a restart needs to keep so that clients reconnect unchanged (kept in the state
    /// file automatically; pass it as [`Config::identity`] otherwise).
    pub fn identity(&self) -> Identity {
        Identity {
            certs: self.certs.clone(),
            token: self.token.clone(),
            host: self.host.clone(),
            https_port: self.https_port,
            http_port: self.http_port,
            service_account_key: Some(self.authn.key().to_base64()),
        }
    }

    /// A ServiceAccount token (as TokenRequest issues) for `namespace/name`, valid for
    /// `seconds`: the ServiceAccount must exist, and the token stops working when it is deleted.
    pub fn service_account_token(
        &self,
        namespace: &str,
        name: &str,
        seconds: i64,
    ) -> Result<String, ServerError> {
        let body = json!({"spec": {"expirationSeconds": seconds}}).to_string();
        let out = reviews::token_request(&self.authn, &self.api.store, namespace, name, body.as_bytes())
            .map_err(|e| ServerError::Manifest(e.message))?;
        Ok(out["status"]["token"].as_str().unwrap_or_default().to_string())
    }

    /// [`ApiServer::kubeconfig_yaml`] with another bearer token (another user's).
    pub fn kubeconfig_yaml_with_token(&self, token: &str) -> String {
        self.kubeconfig_yaml().replace(
            &format!("    token: {}\n", self.token),
            &format!("    token: {token}\n"),
        )
    }

    /// A kubeconfig (YAML) for this server: HTTPS with the CA embedded and the bearer token.
    pub fn kubeconfig_yaml(&self) -> String {
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.certs.ca_pem);
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: crwatch\n  cluster:\n    server: {}\n    certificate-authority-data: {ca}\nusers:\n- name: crwatch-admin\n  user:\n    token: {}\ncontexts:\n- name: crwatch\n  context:\n    cluster: crwatch\n    user: crwatch-admin\n    namespace: default\ncurrent-context: crwatch\npreferences: {{}}\n",
            self.https_url, self.token
        )
    }

    /// Write [`ApiServer::kubeconfig_yaml`] to `path`, and the serving certificate and key
    /// beside it as `<path>.serving.pem` (so [`Identity::from_kubeconfig`] can keep the server's
    /// identity across restarts); both owner-only (mode 0600: they hold the token and the key),
    /// written to a temporary file first and renamed, so no other user can ever read them.
    /// The directory must exist: a mistyped path is an error, not a new folder.
    pub fn write_kubeconfig(&self, path: &Path) -> std::io::Result<()> {
        write_private(path, self.kubeconfig_yaml().as_bytes())?;
        write_private(
            &serving_pem_path(path),
            format!("{}{}", self.certs.cert_pem, self.certs.key_pem).as_bytes(),
        )
    }

    /// Create or replace an object given as JSON (any served kind), as `kubectl apply` would.
    pub async fn apply(&self, obj: Value) -> Result<Value, ServerError> {
        let out = apply_object(&self.api, obj).await?;
        self.sync().await?;
        Ok(out)
    }

    /// Wait until every change so far is on disk (at once without a state file).
    async fn sync(&self) -> Result<(), ServerError> {
        self.api
            .store
            .sync_all()
            .await
            .map_err(|e| ServerError::Manifest(e.to_string()))
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
        self.sync().await
    }

    /// Apply every document of a YAML (or JSON) manifest file.
    pub async fn apply_file(&self, path: &Path) -> Result<Vec<Value>, ServerError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ServerError::Manifest(format!("reading {}: {e}", path.display())))?;
        let docs = manifest_documents(&text)
            .map_err(|e| ServerError::Manifest(format!("parsing {}: {e}", path.display())))?;
        let mut out = vec![];
        for doc in docs {
            out.push(
                self.apply(doc)
                    .await
                    .map_err(|e| ServerError::Manifest(format!("{}: {e}", path.display())))?,
            );
        }
        Ok(out)
    }

    /// Stop serving (open watches end) and wait until every change is on disk, if a state
    /// file was configured (every acknowledged write already is).
    pub async fn shutdown(self) -> Result<(), ServerError> {
        self.stop.cancel();
        if let Some(journal) = self.api.store.journal() {
            journal.flush().await.map_err(|e| ServerError::State {
                path: journal.path().to_path_buf(),
                message: e.message,
            })?;
        }
        Ok(())
    }
}

/// [`ApiServer::apply`] on an [`Api`]: server-side apply with force, as `kubectl apply
/// --server-side --force-conflicts` would (also used by the fuzz targets, without listeners).
pub(crate) async fn apply_object(api: &Api, obj: Value) -> Result<Value, ServerError> {
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
    let def = api
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
    let out = api
        .patch(&ctx, "application/apply-patch+yaml", obj.to_string().as_bytes())
        .await
        .map_err(|e| ServerError::Manifest(e.message))?;
    Ok(out.body)
}

/// The documents of a YAML (or JSON) manifest, as [`ApiServer::apply_file`] reads them: empty
/// documents (a `---` alone) are left out.
pub(crate) fn manifest_documents(text: &str) -> Result<Vec<Value>, serde_saphyr::Error> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text)?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
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

/// Write a file only its owner can read: created 0600 under a temporary name, synced, then
/// renamed over `path`.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = PathBuf::from(format!("{}.tmp", path.display()));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp)?;
    #[cfg(unix)]
    {
        // An older file of that name may have had wider permissions.
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}
