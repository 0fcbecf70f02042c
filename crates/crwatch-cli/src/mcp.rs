//! `crwatch mcp`: the command line of the Model Context Protocol server in
//! [`crwatch_serve::mcp`].
//!
//! stdio by default (stdout carries only the protocol; messages go to stderr), or streamable
//! HTTP with `--http ADDR` (at `/mcp`, with the bearer token of `--token-file`; an address
//! that is not loopback is refused without one).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use crwatch_serve::mcp::hub::{DEFAULT_PAGE_SIZE, DEFAULT_QUEUE};
use crwatch_serve::mcp::{HTTP_PATH, Hub, McpConfig, Token, serve_http, serve_stdio};
use tokio_util::sync::CancellationToken;

/// `crwatch mcp [-r RESOURCE]... [--http ADDR --token-file F]`.
#[derive(Debug, Clone, Args)]
pub struct McpArgs {
    /// A resource to watch and offer as MCP resources (subscribable, with history for the
    /// diff tool), named as `crwatch get` names it (repeatable). Without -r, objects are still
    /// read on demand by URI and by the tools.
    #[arg(short = 'r', long = "resource")]
    pub resources: Vec<String>,
    /// Kubeconfig file (default: `KUBECONFIG`, then `~/.kube/config`, then in-cluster).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context to use.
    #[arg(long)]
    pub context: Option<String>,
    /// Namespace of the watched resources and the tools' default (default: the context's).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Watch namespaced resources in all namespaces.
    #[arg(short = 'A', long, conflicts_with = "namespace")]
    pub all_namespaces: bool,
    /// Label selector of the watched resources.
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    /// Serve streamable HTTP on this address (e.g. 127.0.0.1:8765) instead of stdio.
    #[arg(long)]
    pub http: Option<SocketAddr>,
    /// File holding the bearer token HTTP clients must send (required off loopback).
    #[arg(long, requires = "http")]
    pub token_file: Option<PathBuf>,
    /// Offer the apply and patch tools (dry run unless a call says dryRun: false).
    #[arg(long)]
    pub allow_writes: bool,
    /// Resources per resources/list page (1 to 1000).
    #[arg(long, default_value_t = DEFAULT_PAGE_SIZE)]
    pub page_size: usize,
    /// Versions kept per watched object for the diff tool (1 to 1000).
    #[arg(long, default_value_t = crwatch_serve::mcp::history::DEFAULT_VERSIONS_PER_OBJECT)]
    pub history: usize,
    /// Change events kept for slow sessions (16 to 65536); a session further behind gets
    /// one list change and an update of everything it subscribed to.
    #[arg(long, default_value_t = DEFAULT_QUEUE)]
    pub queue: usize,
}

/// Run `crwatch mcp`.
pub async fn run(args: McpArgs) -> anyhow::Result<()> {
    let config = McpConfig {
        resources: args.resources.clone(),
        namespace: args.namespace.clone(),
        all_namespaces: args.all_namespaces,
        selector: args.selector.clone(),
        allow_writes: args.allow_writes,
        page_size: args.page_size,
        history: args.history,
        queue: args.queue,
    };
    config.validate()?;
    let token = match &args.token_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the token file {}", path.display()))?;
            Some(Token::new(&text).with_context(|| format!("the token file {} is empty", path.display()))?)
        }
        None => None,
    };
    if let Some(addr) = args.http
        && token.is_none()
        && !addr.ip().is_loopback()
    {
        anyhow::bail!(
            "refusing to serve MCP on {addr} without a token: it is not a loopback address; give --token-file, or \
             listen on 127.0.0.1"
        );
    }
    let conn = crate::Connection {
        kubeconfig: args.kubeconfig.clone(),
        context: args.context.clone(),
    };
    let (client, default_namespace) = crate::connect(&conn).await?;
    let hub = Hub::start(client, default_namespace, config).await?;
    for name in hub.unsynced() {
        eprintln!(
            "crwatch mcp: warning: {name} could not be listed yet (check RBAC and connectivity; CRWATCH_LOG=warn \
             shows why); serving it as far as listed, retrying"
        );
    }
    match args.http {
        None => serve_stdio(hub).await?,
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("listening on {addr}"))?;
            let local = listener.local_addr()?;
            eprintln!(
                "crwatch mcp: serving streamable HTTP on http://{local}{HTTP_PATH}{}",
                if token.is_some() {
                    " (bearer token required)"
                } else {
                    ""
                }
            );
            let cancel = CancellationToken::new();
            let stop = cancel.clone();
            tokio::spawn(async move {
                if tokio::signal::ctrl_c().await.is_ok() {
                    stop.cancel();
                }
            });
            serve_http(hub, listener, token, cancel).await?;
        }
    }
    Ok(())
}
