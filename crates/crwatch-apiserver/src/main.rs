//! The `crwatch-apiserver` binary: a standalone Kubernetes API server for local use.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use crwatch_apiserver::{ApiServer, Config};

/// An in-process Kubernetes API server: point kubectl or any client at it.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// HTTPS port (0 picks a free one).
    #[arg(long, default_value_t = 6443)]
    port: u16,
    /// Plain HTTP port as well (0 picks a free one).
    #[arg(long)]
    http_port: Option<u16>,
    /// Where to write the kubeconfig (server URL, CA and token).
    #[arg(long, default_value = "crwatch.kubeconfig")]
    kubeconfig: PathBuf,
    /// YAML manifests (CRDs or any object) to apply at start; may be repeated.
    #[arg(long = "crd", value_name = "FILE")]
    crds: Vec<PathBuf>,
    /// Load objects from this file at start and save them there on shutdown.
    #[arg(long, value_name = "FILE")]
    state: Option<PathBuf>,
    /// Bearer token to require (random when not given).
    #[arg(long, env = "CRWATCH_APISERVER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Changes of history kept for watches and paging; older resourceVersions get 410 Gone.
    #[arg(long, default_value_t = 10_000)]
    history: usize,
    /// Seconds between BOOKMARK events on watches that allow them.
    #[arg(long, default_value_t = 60)]
    bookmark_interval: u64,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: std::net::IpAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let server = ApiServer::start(Config {
        host: args.host,
        port: args.port,
        http_port: args.http_port,
        token: args.token.clone(),
        history_window: args.history,
        bookmark_interval: Duration::from_secs(args.bookmark_interval.max(1)),
        state_file: args.state.clone(),
        ..Config::default()
    })
    .await
    .context("starting the API server")?;
    for file in &args.crds {
        let applied = server
            .apply_file(file)
            .await
            .with_context(|| format!("applying {}", file.display()))?;
        for obj in applied {
            eprintln!(
                "applied {}/{}",
                obj["kind"].as_str().unwrap_or_default().to_ascii_lowercase(),
                obj["metadata"]["name"].as_str().unwrap_or_default()
            );
        }
    }
    server
        .write_kubeconfig(&args.kubeconfig)
        .with_context(|| format!("writing {}", args.kubeconfig.display()))?;
    let kubeconfig = std::fs::canonicalize(&args.kubeconfig).unwrap_or(args.kubeconfig.clone());
    println!(
        "crwatch-apiserver {} (Kubernetes v1.33 API)",
        env!("CARGO_PKG_VERSION")
    );
    println!("  serving {}", server.url());
    if let Some(u) = server.http_url() {
        println!("  serving {u} (plain HTTP, same token)");
    }
    println!("  kubeconfig: {}", kubeconfig.display());
    println!();
    println!("Point kubectl at it:");
    println!("  export KUBECONFIG={}", kubeconfig.display());
    println!("  kubectl get namespaces");
    println!();
    println!(
        "Press Ctrl-C to stop{}.",
        if args.state.is_some() {
            " (state is saved on exit)"
        } else {
            ""
        }
    );
    shutdown_signal().await;
    eprintln!("shutting down");
    server.shutdown().await.context("saving state")?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
