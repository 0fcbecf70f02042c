//! `inference-service`: the AI-context example's service (see [`ai_context::service`]), and
//! `inference-service crds` to print or write the CRDs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ai_context::service::{Service, ServiceConfig};
use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

/// Follow a ModelConfig and its PromptTemplate through `crwatch serve` (delta xDS), hot-swap
/// them without a restart, NACK templates that do not render, and serve GET /config and
/// POST /render.
#[derive(Debug, Parser)]
#[command(name = "inference-service", version)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// The xDS server (`crwatch serve --listen`), as http://HOST:PORT or https://HOST:PORT.
    #[arg(long, env = "XDS_SERVER", default_value = "http://127.0.0.1:18000")]
    xds: String,
    /// The namespace of the ModelConfig and its PromptTemplate.
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    /// The ModelConfig to follow.
    #[arg(long, default_value = "default")]
    model_config: String,
    /// Use this PromptTemplate instead of the one the ModelConfig names.
    #[arg(long)]
    prompt_template: Option<String>,
    /// Where the HTTP API listens.
    #[arg(long, default_value = "127.0.0.1:8088")]
    listen: SocketAddr,
    /// The xDS node id (default: `inference-service-<random>`).
    #[arg(long)]
    node_id: Option<String>,
    /// A CA file to verify an https:// xDS server.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// A file holding the bearer token for the xDS server.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// How long to wait for the xDS server's first response (e.g. 5s).
    #[arg(long, value_parser = humantime_secs)]
    initial_fetch_timeout: Option<Duration>,
}

fn humantime_secs(s: &str) -> Result<Duration, String> {
    let n = s.strip_suffix('s').unwrap_or(s);
    n.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v > 0.0 && *v <= 600.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("{s:?}: expected seconds between 0 and 600, such as 5s"))
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the CRDs (PromptTemplate, ModelConfig), or write them into a directory.
    Crds {
        /// Write one file per CRD into this directory instead of printing.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    if let Some(Command::Crds { out }) = &args.command {
        return crds(out.as_ref());
    }
    let config = ServiceConfig {
        xds: args.xds.clone(),
        namespace: args.namespace.clone(),
        model_config: args.model_config.clone(),
        prompt_template: args.prompt_template.clone(),
        node_id: args.node_id.clone(),
        ca_file: args.ca_file.clone(),
        token_file: args.token_file.clone(),
        initial_fetch_timeout: args.initial_fetch_timeout,
    };
    let service = Arc::new(Service::new(&config).context("the xDS settings")?);
    let cancel = CancellationToken::new();
    service.start(cancel.clone());
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {} (is the port taken? use --listen)", args.listen))?;
    // Tests and scripts read the bound address from this line (with --listen 127.0.0.1:0).
    println!("listening on http://{}", listener.local_addr()?);
    let stop = cancel.clone();
    let app = service.clone().router();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = stop.cancelled() => {}
        }
    });
    let result = server.await.context("serving HTTP");
    cancel.cancel();
    result
}

fn crds(out: Option<&PathBuf>) -> anyhow::Result<()> {
    for (file, crd) in ai_context::crd::crds() {
        let yaml = ai_context::crd::crd_yaml(&crd);
        match out {
            Some(dir) => {
                let path = dir.join(file);
                std::fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
                eprintln!("wrote {}", path.display());
            }
            None => print!("---\n{yaml}"),
        }
    }
    Ok(())
}
