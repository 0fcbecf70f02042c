//! The `crwatch` command line as a library: argument parsing ([`args`]), resource-name
//! resolution ([`resolve`]), table rendering ([`table`]) and `crwatch get` ([`get`]); the
//! binary only parses arguments and reports errors.

pub mod args;
pub mod demo;
pub mod forward;
pub mod get;
pub mod resolve;
pub mod table;

use anyhow::Context;
use kube::config::{KubeConfigOptions, Kubeconfig};

/// Connection flags shared by subcommands.
#[derive(Debug, Clone, Default)]
pub struct Connection {
    /// Kubeconfig file; `None` uses kube's default discovery (`KUBECONFIG`, `~/.kube/config`,
    /// in-cluster).
    pub kubeconfig: Option<std::path::PathBuf>,
    /// Context name.
    pub context: Option<String>,
}

/// A client for the cluster `conn` names, and the context's default namespace.
pub async fn connect(conn: &Connection) -> anyhow::Result<(kube::Client, String)> {
    let (client, namespace, _) = connect_with_url(conn).await?;
    Ok((client, namespace))
}

/// Like [`connect`], also returning the API server's URL (for messages and CloudEvent sources).
pub async fn connect_with_url(conn: &Connection) -> anyhow::Result<(kube::Client, String, String)> {
    let options = KubeConfigOptions {
        context: conn.context.clone(),
        ..Default::default()
    };
    let config = match &conn.kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &options)
                .await
                .with_context(|| format!("loading kubeconfig {}", path.display()))?
        }
        None if conn.context.is_some() => kube::Config::from_kubeconfig(&options)
            .await
            .context("loading kubeconfig")?,
        None => kube::Config::infer().await.context("finding a kubeconfig")?,
    };
    let namespace = config.default_namespace.clone();
    let url = config.cluster_url.to_string();
    let client = kube::Client::try_from(config).context("creating the Kubernetes client")?;
    Ok((client, namespace, url))
}

/// Run a parsed command line.
pub async fn run(cli: args::Cli) -> anyhow::Result<()> {
    match cli.command {
        args::Command::Get(a) => get::run(a).await,
        args::Command::Forward(a) => forward::run(a).await,
        args::Command::Demo(a) => demo::run(a).await,
    }
}
