//! The Model Context Protocol server behind `crwatch mcp`: watched objects as resources, with
//! subscriptions and tools, for AI agents.
//!
//! - [`hub`]: what every session shares (informers of the watched resources, history, change
//!   events, discovery).
//! - [`session`]: one MCP session (rmcp handler): revisions 2026-07-28 and 2025-11-25,
//!   resources, notifications, tools.
//! - [`tools`]: `get`, `list`, `describe`, `diff`, `wait`, `apply`, `patch`.
//! - [`uri`], [`redact`], [`history`]: resource URIs, Secret redaction, per-object history.
//!
//! Transports: [`serve_stdio`] (stdout carries only the protocol) and [`serve_http`]
//! (streamable HTTP at `/mcp`, with a bearer token compared in constant time).
//!
//! ```no_run
//! # async fn run(client: kube::Client) -> anyhow::Result<()> {
//! use crwatch_serve::mcp::{Hub, McpConfig, serve_stdio};
//!
//! let config = McpConfig { resources: vec!["deployments".into()], ..McpConfig::default() };
//! let hub = Hub::start(client, "default".into(), config).await?;
//! serve_stdio(hub).await?;
//! # Ok(()) }
//! ```

pub mod history;
pub mod hub;
pub mod redact;
pub mod session;
pub mod tools;
pub mod uri;

use std::net::SocketAddr;
use std::sync::Arc;

use crate::slots::Slots;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rmcp::ServiceExt;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;

pub use hub::{Hub, HubError, McpConfig};
pub use session::Session;

/// The path the HTTP transport serves MCP at.
pub const HTTP_PATH: &str = "/mcp";

/// Serving failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The MCP session could not start.
    #[error("starting the MCP session on stdio: {0}")]
    Start(String),
    /// The session task failed.
    #[error("the MCP session failed: {0}")]
    Session(String),
    /// HTTP serving failed.
    #[error("serving MCP over HTTP: {0}")]
    Http(#[from] std::io::Error),
    /// A non-loopback address without a token.
    #[error(
        "refusing to serve MCP on {0} without a token: it is not a loopback address; \
         give --token-file, or listen on 127.0.0.1"
    )]
    NoToken(SocketAddr),
}

/// Serve one session on stdin/stdout until the client closes stdin.
pub async fn serve_stdio(hub: Arc<Hub>) -> Result<(), ServeError> {
    let running = Session::new(hub.clone())
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|e| ServeError::Start(e.to_string()))?;
    let quit = running
        .waiting()
        .await
        .map_err(|e| ServeError::Session(e.to_string()))?;
    tracing::debug!(?quit, "MCP stdio session ended");
    hub.stop();
    Ok(())
}

/// A bearer token, compared in constant time. Its `Debug` does not show it.
#[derive(Clone)]
pub struct Token(Arc<str>);

impl Token {
    /// A token (surrounding whitespace, such as a file's final newline, is dropped).
    pub fn new(token: &str) -> Option<Token> {
        let t = token.trim();
        (!t.is_empty()).then(|| Token(t.into()))
    }

    /// Whether an `Authorization` header value carries this token.
    ///
    /// ```
    /// use crwatch_serve::mcp::Token;
    ///
    /// let t = Token::new("s3cret\n").unwrap();
    /// assert!(t.accepts("Bearer s3cret"));
    /// assert!(!t.accepts("Bearer s3cre"));
    /// assert!(!t.accepts("s3cret"));
    /// ```
    pub fn accepts(&self, authorization: &str) -> bool {
        let Some(given) = authorization
            .strip_prefix("Bearer ")
            .or_else(|| authorization.strip_prefix("bearer "))
        else {
            return false;
        };
        given.trim().as_bytes().ct_eq(self.0.as_bytes()).into()
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

async fn check_token(State(token): State<Option<Token>>, request: Request, next: Next) -> Response {
    if let Some(token) = &token {
        let ok = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| token.accepts(v));
        if !ok {
            return (
                http::StatusCode::UNAUTHORIZED,
                [(http::header::WWW_AUTHENTICATE, "Bearer")],
                "missing or wrong bearer token: send Authorization: Bearer <the token in --token-file>\n",
            )
                .into_response();
        }
    }
    let delete = request.method() == http::Method::DELETE;
    let mut response = next.run(request).await;
    // rmcp answers a session's DELETE with 202; the session is closed by then, and the
    // official SDKs' clients expect 200 or 204 (the Python one logs a failure otherwise).
    if delete && response.status() == http::StatusCode::ACCEPTED {
        *response.status_mut() = http::StatusCode::OK;
    }
    response
}

/// Live MCP sessions over HTTP, at most: a client that opens sessions without closing them
/// gets an error for the next one (rmcp closes a session idle for 5 minutes) instead of
/// growing the server's memory.
pub const MAX_HTTP_SESSIONS: usize = 1024;

/// Serve streamable HTTP at [`HTTP_PATH`] on `listener` until `cancel` fires. Every request
/// must carry `Authorization: Bearer <token>` when `token` is given; a non-loopback address
/// without a token is refused.
pub async fn serve_http(
    hub: Arc<Hub>,
    listener: tokio::net::TcpListener,
    token: Option<Token>,
    cancel: CancellationToken,
) -> Result<(), ServeError> {
    let addr = listener.local_addr()?;
    if token.is_none() && !addr.ip().is_loopback() {
        return Err(ServeError::NoToken(addr));
    }
    let mut config = StreamableHttpServerConfig::default().with_cancellation_token(cancel.child_token());
    if !addr.ip().is_loopback() {
        // Reachable from elsewhere under any host name; the token is the protection.
        config = config.disable_allowed_hosts();
    }
    let factory_hub = hub.clone();
    let live = Slots::default();
    let service = StreamableHttpService::new(
        move || {
            let slot = live.take(MAX_HTTP_SESSIONS).ok_or_else(|| {
                tracing::warn!("refusing a new MCP session: {MAX_HTTP_SESSIONS} are open");
                std::io::Error::other(format!(
                    "too many MCP sessions ({MAX_HTTP_SESSIONS} open): close idle sessions (HTTP DELETE) or retry later"
                ))
            })?;
            Ok(Session::new(factory_hub.clone()).with_slot(slot))
        },
        Arc::new(LocalSessionManager::default()),
        config,
    );
    let router = axum::Router::new()
        .nest_service(HTTP_PATH, service)
        .layer(axum::middleware::from_fn_with_state(token, check_token));
    tracing::info!(%addr, path = HTTP_PATH, "serving MCP over streamable HTTP");
    let stop = cancel.clone();
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await?;
    hub.stop();
    Ok(())
}
