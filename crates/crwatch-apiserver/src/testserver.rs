//! `TestServer`: a started API server plus what a test needs around it: a kube-rs client, a
//! kubeconfig file for `kubectl`, the fault handle, and a private directory that goes with it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::{ApiServer, Config, Faults, ServerError};

/// An API server for one test, with a kube-rs client and a kubeconfig on disk.
///
/// ```no_run
/// # async fn t() -> Result<(), Box<dyn std::error::Error>> {
/// use crwatch_apiserver::TestServer;
/// use k8s_openapi::api::core::v1::ConfigMap;
/// use kube::api::{Api, PostParams};
///
/// let server = TestServer::start().await?;
/// let cms: Api<ConfigMap> = Api::namespaced(server.client(), "default");
/// let mut cm = ConfigMap::default();
/// cm.metadata.name = Some("hello".into());
/// cms.create(&PostParams::default(), &cm).await?;
/// let out = server.kubectl().args(["get", "configmap", "hello", "-o", "name"]).output()?;
/// assert_eq!(String::from_utf8(out.stdout)?, "configmap/hello\n");
/// # Ok(()) }
/// ```
pub struct TestServer {
    server: ApiServer,
    client: kube::Client,
    kubeconfig: PathBuf,
    dir: tempfile::TempDir,
}

impl TestServer {
    /// Start with test-friendly defaults: random ports, bookmarks every second.
    pub async fn start() -> Result<Self, ServerError> {
        Self::with_config(Config {
            bookmark_interval: Duration::from_secs(1),
            ..Config::default()
        })
        .await
    }

    /// Start with a given configuration.
    pub async fn with_config(config: Config) -> Result<Self, ServerError> {
        let dir = tempfile::tempdir()
            .map_err(|e| ServerError::Manifest(format!("creating a temporary directory: {e}")))?;
        let server = ApiServer::start(config).await?;
        let kubeconfig = dir.path().join("kubeconfig");
        server
            .write_kubeconfig(&kubeconfig)
            .map_err(|e| ServerError::Manifest(format!("writing {}: {e}", kubeconfig.display())))?;
        let client = client_from(&kubeconfig).await?;
        Ok(TestServer {
            server,
            client,
            kubeconfig,
            dir,
        })
    }

    /// A kube-rs client for the server (HTTPS, verified against the server's CA).
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// A kube-rs client that authenticates with another bearer token: a static user's
    /// ([`crate::Config::users`]) or a ServiceAccount's. RBAC decides what it may do.
    pub async fn client_with_token(&self, token: &str) -> Result<kube::Client, ServerError> {
        let path = self.kubeconfig_with_token(token)?;
        client_from(&path).await
    }

    /// A kube-rs client that acts as `user` in `groups` through impersonation (the admin's
    /// `Impersonate-User`/`Impersonate-Group` headers, as `kubectl --as --as-group`): RBAC
    /// decides what it may do, no token user needs to be configured. `system:authenticated` is
    /// added as the real server adds it.
    pub async fn client_as(&self, user: &str, groups: &[&str]) -> Result<kube::Client, ServerError> {
        let kc = kube::config::Kubeconfig::read_from(&self.kubeconfig)
            .map_err(|e| ServerError::Manifest(format!("reading kubeconfig: {e}")))?;
        let mut cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .map_err(|e| ServerError::Manifest(format!("loading kubeconfig: {e}")))?;
        cfg.auth_info.impersonate = Some(user.to_string());
        if !groups.is_empty() {
            cfg.auth_info.impersonate_groups = Some(groups.iter().map(|g| g.to_string()).collect());
        }
        kube::Client::try_from(cfg).map_err(|e| ServerError::Manifest(format!("building client: {e}")))
    }

    /// A kube-rs client for a ServiceAccount (which must exist), with a token the server
    /// issues as TokenRequest does (valid for an hour, and until the ServiceAccount is deleted).
    pub async fn client_for_service_account(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<kube::Client, ServerError> {
        let token = self.server.service_account_token(namespace, name, 3600)?;
        self.client_with_token(&token).await
    }

    /// A kubeconfig file in the server's directory that authenticates with `token` (for
    /// `kubectl` or an operator binary running as another user).
    pub fn kubeconfig_with_token(&self, token: &str) -> Result<PathBuf, ServerError> {
        let path = self
            .dir
            .path()
            .join(format!("kubeconfig-{}", uuid::Uuid::new_v4().simple()));
        crate::write_private(&path, self.server.kubeconfig_yaml_with_token(token).as_bytes())
            .map_err(|e| ServerError::Manifest(format!("writing {}: {e}", path.display())))?;
        Ok(path)
    }

    /// The kubeconfig file.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The fault handle.
    pub fn faults(&self) -> &Faults {
        self.server.faults()
    }

    /// The server itself.
    pub fn server(&self) -> &ApiServer {
        &self.server
    }

    /// A private directory that lives as long as the server.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `kubectl` (from `KUBECTL` or PATH) pointed at this server, with its caches kept in
    /// the server's directory so tests never share discovery caches.
    pub fn kubectl(&self) -> Command {
        self.kubectl_bin(&std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into()))
    }

    /// A given kubectl binary (e.g. `kubectl.1.27`) pointed at this server.
    pub fn kubectl_bin(&self, bin: &str) -> Command {
        let mut cmd = Command::new(bin);
        cmd.env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", self.dir.path())
            .env_remove("KUBECTL_EXTERNAL_DIFF")
            .arg(format!(
                "--cache-dir={}",
                self.dir.path().join("kube-cache").display()
            ));
        cmd
    }

    /// Stop the server.
    pub async fn shutdown(self) -> Result<(), ServerError> {
        self.server.shutdown().await
    }
}

/// A kube-rs client from a kubeconfig file.
async fn client_from(kubeconfig: &Path) -> Result<kube::Client, ServerError> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)
        .map_err(|e| ServerError::Manifest(format!("reading kubeconfig: {e}")))?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .map_err(|e| ServerError::Manifest(format!("loading kubeconfig: {e}")))?;
    kube::Client::try_from(cfg).map_err(|e| ServerError::Manifest(format!("building client: {e}")))
}
