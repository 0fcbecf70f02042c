//! `database-operator`: the Database operator's command line, a thin shell over the
//! `database_operator` library.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use database_operator::certs::{self, Certs};
use database_operator::webhook::{self, ServiceRef, WebhookTarget};
use tokio_util::sync::CancellationToken;

/// The Database operator.
#[derive(Debug, Parser)]
#[command(name = "database-operator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the operator (and, with --webhook-cert-dir, its admission webhooks).
    Run(RunArgs),
    /// Print the Database CustomResourceDefinition as YAML
    /// (`database-operator crd > deploy/database-crd.yaml`).
    Crd,
    /// Write a development CA and serving certificate (tls.crt, tls.key, ca.crt) for the
    /// webhook, unless the directory already has them.
    Certs(CertsArgs),
    /// Serve only the admission webhooks.
    Webhook(WebhookArgs),
    /// Print the Validating- and MutatingWebhookConfiguration with the CA bundle.
    WebhookConfig(WebhookConfigArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Configuration file (servers); without it a `default` server comes from
    /// DATABASE_OPERATOR_ADMIN_DSN_DEFAULT.
    #[arg(long, env = "DATABASE_OPERATOR_CONFIG")]
    config: Option<PathBuf>,
    /// Metrics address, or `off`.
    #[arg(long, env = "DATABASE_OPERATOR_METRICS_ADDR", default_value = ":8080")]
    metrics_addr: String,
    /// Health probe address (/healthz, /readyz), or `off`.
    #[arg(long, env = "DATABASE_OPERATOR_PROBE_ADDR", default_value = ":8081")]
    probe_addr: String,
    /// Campaign for a Lease and act only while holding it (run several replicas safely).
    #[arg(long, env = "DATABASE_OPERATOR_LEADER_ELECT")]
    leader_elect: bool,
    /// The Lease's namespace (default: POD_NAMESPACE, else `database-operator`).
    #[arg(long, env = "POD_NAMESPACE", default_value = "database-operator")]
    leader_election_namespace: String,
    /// The Lease's name.
    #[arg(long, default_value = "database-operator")]
    leader_election_id: String,
    /// How long a Lease is honoured after its last renewal.
    #[arg(long, default_value = "15s")]
    leader_elect_lease_duration: humantime::Duration,
    /// How long the leader keeps trying to renew before it steps down.
    #[arg(long, default_value = "10s")]
    leader_elect_renew_deadline: humantime::Duration,
    /// How often candidates try to acquire or renew.
    #[arg(long, default_value = "2s")]
    leader_elect_retry_period: humantime::Duration,
    /// Parallel reconciles (1 to 1024: each is a worker task and may hold a database
    /// connection).
    #[arg(long, env = "DATABASE_OPERATOR_CONCURRENCY", default_value_t = 4,
          value_parser = clap::builder::TypedValueParser::map(clap::value_parser!(u16).range(1..=1024), usize::from))]
    concurrency: usize,
    /// Log format.
    #[arg(
        long,
        env = "DATABASE_OPERATOR_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: LogFormat,
    /// Serve the admission webhooks with the certificates in this directory.
    #[arg(long, env = "DATABASE_OPERATOR_WEBHOOK_CERT_DIR")]
    webhook_cert_dir: Option<PathBuf>,
    /// Webhook address.
    #[arg(long, default_value = "0.0.0.0:9443")]
    webhook_addr: SocketAddr,
    /// Kubeconfig (default: KUBECONFIG, ~/.kube/config, in-cluster).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct CertsArgs {
    /// Where to write (or find) tls.crt, tls.key and ca.crt.
    #[arg(long)]
    dir: PathBuf,
    /// The webhook Service's namespace.
    #[arg(long, default_value = "database-operator")]
    namespace: String,
    /// The webhook Service's name.
    #[arg(long, default_value = "database-operator-webhook")]
    service: String,
    /// More DNS names for the certificate.
    #[arg(long = "dns-name")]
    dns_names: Vec<String>,
}

#[derive(Debug, Args)]
struct WebhookArgs {
    /// Directory with tls.crt and tls.key.
    #[arg(long)]
    cert_dir: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:9443")]
    listen: SocketAddr,
}

#[derive(Debug, Args)]
struct WebhookConfigArgs {
    /// Directory with ca.crt (without it the caBundle is left empty, as in deploy/webhook.yaml).
    #[arg(long)]
    cert_dir: Option<PathBuf>,
    /// Call the webhook at this URL (development) instead of through a Service.
    #[arg(long, conflicts_with_all = ["namespace", "service", "port"])]
    url: Option<String>,
    /// The Service's namespace.
    #[arg(long)]
    namespace: Option<String>,
    /// The Service's name.
    #[arg(long)]
    service: Option<String>,
    /// The Service's port.
    #[arg(long)]
    port: Option<u16>,
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn address(text: &str) -> anyhow::Result<Option<SocketAddr>> {
    crwatch::manager::listen_address(text).map_err(anyhow::Error::msg)
}

async fn client(kubeconfig: Option<&Path>) -> anyhow::Result<kube::Client> {
    // As kubectl builds one: credentials only over TLS, connect (TLS included) within 10 s and
    // response headers within 60 s, so a silent server cannot hang status writes or leases.
    Ok(crwatch::client::from_kubeconfig(kubeconfig, &crwatch::client::ClientOptions::default()).await?)
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    init_logs(args.log_format);
    let servers = database_operator::config::load_servers(args.config.as_deref(), |v| std::env::var(v).ok())?;
    for s in &servers {
        tracing::info!(server = %s.name, engine = %s.engine, host = %s.host, port = s.port, "database server");
    }
    let client = client(args.kubeconfig.as_deref()).await?;
    let cancel = CancellationToken::new();
    let webhook = match &args.webhook_cert_dir {
        Some(dir) => {
            let certs = Certs::load(dir)
                .with_context(|| format!("loading webhook certificates from {}", dir.display()))?;
            let server = webhook::serve(args.webhook_addr, &certs, cancel.clone()).await?;
            tracing::info!(addr = %server.local_addr(), "admission webhooks serving");
            Some(server)
        }
        None => None,
    };
    let options = database_operator::run::RunOptions {
        metrics_addr: address(&args.metrics_addr)?,
        probe_addr: address(&args.probe_addr)?,
        leader_election: args.leader_elect.then(|| {
            (
                args.leader_election_namespace.clone(),
                args.leader_election_id.clone(),
            )
        }),
        concurrency: args.concurrency,
        lease_timings: Some((
            *args.leader_elect_lease_duration,
            *args.leader_elect_renew_deadline,
            *args.leader_elect_retry_period,
        )),
    };
    let result =
        database_operator::run::run(client, servers, options, crwatch::manager::shutdown_signal()).await;
    cancel.cancel();
    if let Some(w) = webhook {
        w.stopped().await;
    }
    result
}

async fn main_inner(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => run(args).await,
        Command::Crd => {
            print!("{}", database_operator::crd::crd_yaml());
            Ok(())
        }
        Command::Certs(a) => {
            let mut names = ServiceRef {
                namespace: a.namespace,
                name: a.service,
                ..ServiceRef::default()
            }
            .dns_names();
            names.extend(a.dns_names);
            certs::load_or_generate(&a.dir, &names)?;
            eprintln!("certificates in {}", a.dir.display());
            Ok(())
        }
        Command::Webhook(a) => {
            init_logs(LogFormat::Text);
            let certs = Certs::load(&a.cert_dir)?;
            let cancel = CancellationToken::new();
            let server = webhook::serve(a.listen, &certs, cancel.clone()).await?;
            tracing::info!(addr = %server.local_addr(), "admission webhooks serving");
            crwatch::manager::shutdown_signal().await;
            cancel.cancel();
            server.stopped().await;
            Ok(())
        }
        Command::WebhookConfig(a) => {
            let ca = match &a.cert_dir {
                Some(dir) => Certs::load(dir)?
                    .ca_pem
                    .with_context(|| format!("{} has no ca.crt", dir.display()))?,
                None => String::new(),
            };
            let target = match a.url {
                Some(url) => WebhookTarget::Url(url),
                None => {
                    let d = ServiceRef::default();
                    WebhookTarget::Service(ServiceRef {
                        namespace: a.namespace.unwrap_or(d.namespace),
                        name: a.service.unwrap_or(d.name),
                        port: a.port.unwrap_or(d.port),
                    })
                }
            };
            print!("{}", webhook::webhook_configurations(&ca, &target)?);
            Ok(())
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match main_inner(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
