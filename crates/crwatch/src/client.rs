//! Kubernetes clients built the way kubectl builds them: credentials never sent over plain
//! HTTP, and requests that cannot hang.
//!
//! - **Credentials only over TLS.** client-go reads a kubeconfig's user credentials (token,
//!   basic auth, client certificate, exec and auth-provider plugins) only when the transport
//!   is TLS ("only try to read the auth information if we are secure", `clientcmd`), so kubectl
//!   talks to an `http://` server anonymously. [`build`] does the same and says so once on the
//!   log. The opt-in [`ClientOptions::insecure_http_credentials`] (or the environment variable
//!   `CRWATCH_INSECURE_HTTP_CREDENTIALS=1`) sends them anyway, for a local test server.
//! - **Timeouts.** Connecting, TLS handshake included, gets [`CONNECT_TIMEOUT`] (client-go's
//!   transport gives the TLS handshake 10 s); every request then gets
//!   [`RESPONSE_HEADER_TIMEOUT`] to answer with its headers. Bodies are not timed here: a watch
//!   streams for minutes, so the list/watch engine times list bodies and watch silences itself.

use std::time::Duration;

use kube::client::ClientBuilder;

/// Connecting, TCP and TLS handshake together (client-go: TLS handshake 10 s).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// From sending a request to its response's headers. The API server answers ordinary
/// requests within its own 60 s request timeout and sends a watch's headers at once.
pub const RESPONSE_HEADER_TIMEOUT: Duration = Duration::from_secs(60);

/// The environment variable that allows credentials over plain HTTP (`1` or `true`).
pub const INSECURE_HTTP_CREDENTIALS_ENV: &str = "CRWATCH_INSECURE_HTTP_CREDENTIALS";

/// How [`build`] makes a client.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Send the kubeconfig's credentials even to an `http://` server (anyone on the path can
    /// read them). Default: only when `CRWATCH_INSECURE_HTTP_CREDENTIALS` is `1` or `true`.
    pub insecure_http_credentials: bool,
    /// See [`CONNECT_TIMEOUT`].
    pub connect_timeout: Duration,
    /// See [`RESPONSE_HEADER_TIMEOUT`].
    pub response_header_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            insecure_http_credentials: insecure_http_credentials_from_env(),
            connect_timeout: CONNECT_TIMEOUT,
            response_header_timeout: RESPONSE_HEADER_TIMEOUT,
        }
    }
}

/// Whether `CRWATCH_INSECURE_HTTP_CREDENTIALS` asks for credentials over plain HTTP.
pub fn insecure_http_credentials_from_env() -> bool {
    std::env::var(INSECURE_HTTP_CREDENTIALS_ENV)
        .is_ok_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes"))
}

/// Why a client could not be built.
#[derive(Debug, thiserror::Error)]
#[error("creating the Kubernetes client: {0}")]
pub struct ClientError(#[source] kube::Error);

/// Whether `config` would send credentials: a token, a token file, basic auth, a client
/// certificate, an exec plugin or an auth provider.
pub fn has_credentials(config: &kube::Config) -> bool {
    let a = &config.auth_info;
    a.token.is_some()
        || a.token_file.is_some()
        || a.username.is_some()
        || a.password.is_some()
        || a.client_certificate.is_some()
        || a.client_certificate_data.is_some()
        || a.client_key.is_some()
        || a.client_key_data.is_some()
        || a.exec.is_some()
        || a.auth_provider.is_some()
}

/// Whether the server is reached over plain HTTP.
pub fn is_plain_http(config: &kube::Config) -> bool {
    config.cluster_url.scheme_str() == Some("http")
}

/// The credentials left out of `config` because its server is plain HTTP and `options` do
/// not allow them there (client-go's rule); `true` when some were removed. Impersonation is
/// kept, as client-go keeps it.
pub fn strip_insecure_credentials(config: &mut kube::Config, options: &ClientOptions) -> bool {
    if !is_plain_http(config) || options.insecure_http_credentials || !has_credentials(config) {
        return false;
    }
    let a = &mut config.auth_info;
    let kept = kube::config::AuthInfo {
        impersonate: a.impersonate.take(),
        impersonate_uid: a.impersonate_uid.take(),
        impersonate_groups: a.impersonate_groups.take(),
        impersonate_user_extra: a.impersonate_user_extra.take(),
        ..Default::default()
    };
    *a = kept;
    true
}

/// A client for `config` with kubectl's rules: no credentials over plain HTTP (unless
/// `options` allow it), connect and response-header timeouts. It notes the writes reconciles
/// make ([`crate::ryow::TrackingLayer`]), so controllers can wait for their caches to see them.
///
/// ```
/// let mut config = kube::Config::new("http://127.0.0.1:8080".parse().unwrap());
/// config.auth_info.token = Some("secret".to_string().into());
/// let options = crwatch::client::ClientOptions { insecure_http_credentials: false, ..Default::default() };
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let _client = crwatch::client::build(config, &options).unwrap();
/// # });
/// ```
pub fn build(mut config: kube::Config, options: &ClientOptions) -> Result<kube::Client, ClientError> {
    if strip_insecure_credentials(&mut config, options) {
        tracing::warn!(
            server = %config.cluster_url,
            "not sending the kubeconfig's credentials to a plain-HTTP server (as kubectl does not); \
             set {INSECURE_HTTP_CREDENTIALS_ENV}=1 to send them anyway"
        );
    }
    config.connect_timeout = Some(options.connect_timeout);
    let builder = ClientBuilder::try_from(config).map_err(ClientError)?;
    let builder = builder
        .with_layer(&tower::timeout::TimeoutLayer::new(
            options.response_header_timeout,
        ))
        // Read-your-own-writes is on by default: reconciles run inside `ryow::record` see
        // what they wrote; every other request passes through untouched.
        .with_layer(&crate::ryow::TrackingLayer::default());
    // A span per request made inside a traced reconcile (nothing while tracing is off).
    #[cfg(feature = "otel")]
    let builder = builder.with_layer(&crate::trace::RequestSpanLayer);
    Ok(builder.build())
}

/// Why no client could be made from a kubeconfig.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The named kubeconfig file could not be read or parsed.
    #[error("reading kubeconfig {path}: {source}")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// The named kubeconfig holds no usable context.
    #[error("using kubeconfig {path}: {source}")]
    Use {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// Neither KUBECONFIG, ~/.kube/config nor an in-cluster service account gave a
    /// configuration.
    #[error("finding a kubeconfig (KUBECONFIG, ~/.kube/config or in-cluster): {0}")]
    Infer(#[source] kube::config::InferConfigError),
    /// The client could not be built.
    #[error("creating the Kubernetes client: {0}")]
    Client(#[source] ClientError),
}

/// A client from `kubeconfig` (or, without one, `KUBECONFIG`, `~/.kube/config`, then the
/// in-cluster service account), built by [`build`] with `options`: what an operator binary's
/// `--kubeconfig` flag means.
///
/// ```no_run
/// # async fn f() -> Result<(), crwatch::client::ConnectError> {
/// let client = crwatch::client::from_kubeconfig(None, &Default::default()).await?;
/// # Ok(()) }
/// ```
pub async fn from_kubeconfig(
    kubeconfig: Option<&std::path::Path>,
    options: &ClientOptions,
) -> Result<kube::Client, ConnectError> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path).map_err(|source| ConnectError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(|source| ConnectError::Use {
                    path: path.to_path_buf(),
                    source,
                })?
        }
        None => kube::Config::infer().await.map_err(ConnectError::Infer)?,
    };
    build(config, options).map_err(ConnectError::Client)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> kube::Config {
        let mut c = kube::Config::new(url.parse().unwrap());
        c.auth_info.token = Some("secret".to_string().into());
        c.auth_info.impersonate = Some("someone".into());
        c
    }

    #[test]
    fn credentials_go_only_over_tls_unless_allowed() {
        let strict = ClientOptions {
            insecure_http_credentials: false,
            ..ClientOptions::default()
        };
        let mut http = config("http://127.0.0.1:1");
        assert!(strip_insecure_credentials(&mut http, &strict));
        assert!(!has_credentials(&http));
        assert_eq!(http.auth_info.impersonate.as_deref(), Some("someone"));

        let mut https = config("https://127.0.0.1:1");
        assert!(!strip_insecure_credentials(&mut https, &strict));
        assert!(has_credentials(&https));

        let allowed = ClientOptions {
            insecure_http_credentials: true,
            ..ClientOptions::default()
        };
        let mut http = config("http://127.0.0.1:1");
        assert!(!strip_insecure_credentials(&mut http, &allowed));
        assert!(has_credentials(&http));
    }
}
