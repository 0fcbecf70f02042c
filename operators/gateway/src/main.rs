//! `gateway-operator`: the gateway operator's command line, a thin shell over the
//! `gateway_operator` library.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use gateway_operator::nginx::Mode;
use gateway_operator::render::Settings;
use gateway_operator::run::RunOptions;

/// The gateway operator: GatewayRoute and AIGateway resources configure a real nginx live.
#[derive(Debug, Parser)]
#[command(name = "gateway-operator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the operator (and, unless --nginx external, its nginx).
    Run(RunArgs),
    /// Run nginx in the foreground on the prefix (the nginx container of the Pod, beside an
    /// operator in `--nginx external` mode): writes a configuration with no routes when there
    /// is none yet, then replaces itself with `nginx -g 'daemon off;'`.
    Nginx(RunArgs),
    /// Print the GatewayRoute and AIGateway CRDs as YAML
    /// (`gateway-operator crd > deploy/gateway/crds.yaml`).
    Crd,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum NginxMode {
    /// Adopt a running nginx under the prefix, or start one (it outlives the operator).
    Start,
    /// Only adopt: nginx runs in another container of the Pod (shareProcessNamespace).
    External,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// nginx's prefix directory: configuration, generations, logs, pid file.
    #[arg(
        long,
        env = "GATEWAY_NGINX_PREFIX",
        default_value = "/var/run/gateway-operator"
    )]
    nginx_prefix: PathBuf,
    /// The nginx binary (default: nginx on PATH, or /usr/sbin/nginx).
    #[arg(long, env = "GATEWAY_NGINX_BINARY")]
    nginx_binary: Option<PathBuf>,
    /// Start nginx, or only adopt one.
    #[arg(long, value_enum, default_value = "start")]
    nginx: NginxMode,
    /// The address traffic is served on.
    #[arg(long, env = "GATEWAY_LISTEN", default_value = "0.0.0.0")]
    listen: IpAddr,
    /// The HTTP port.
    #[arg(long, env = "GATEWAY_HTTP_PORT", default_value_t = 8080, value_parser = clap::value_parser!(u16).range(1..))]
    http_port: u16,
    /// The HTTPS port (0 disables TLS).
    #[arg(long, env = "GATEWAY_HTTPS_PORT", default_value_t = 8443)]
    https_port: u16,
    /// nginx's status port on 127.0.0.1 (generation, stub_status).
    #[arg(long, default_value_t = 10246, value_parser = clap::value_parser!(u16).range(1..))]
    status_port: u16,
    /// nginx worker processes (0: one per core).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..=256))]
    nginx_workers: u16,
    /// Write nginx's access log to <prefix>/logs/access.log.
    #[arg(long)]
    access_log: bool,
    /// The `user` directive when nginx runs as root (workers drop to this user).
    #[arg(long)]
    nginx_user: Option<String>,
    /// Stop nginx when the operator stops (by default it keeps serving).
    #[arg(long)]
    stop_nginx_on_exit: bool,
    /// How often AI gateway integrations are probed (1s to 1h).
    #[arg(long, default_value = "30s")]
    probe_interval: humantime::Duration,
    /// Metrics address, or `off`.
    #[arg(long, env = "GATEWAY_METRICS_ADDR", default_value = ":8080")]
    metrics_addr: String,
    /// Health probe address (/healthz, /readyz), or `off`.
    #[arg(long, env = "GATEWAY_PROBE_ADDR", default_value = ":8081")]
    probe_addr: String,
    /// Parallel reconciles per controller (1 to 64; nginx syncs are serialized anyway).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    concurrency: u16,
    /// Log format.
    #[arg(long, env = "GATEWAY_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Kubeconfig (default: KUBECONFIG, ~/.kube/config, in-cluster).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
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

fn settings(args: &RunArgs) -> anyhow::Result<Settings> {
    Ok(Settings {
        prefix: std::path::absolute(&args.nginx_prefix).context("resolving --nginx-prefix")?,
        listen: args.listen,
        http_port: args.http_port,
        https_port: (args.https_port != 0).then_some(args.https_port),
        status_port: args.status_port,
        workers: args.nginx_workers,
        access_log: args.access_log,
        user: args.nginx_user.clone(),
    })
}

fn binary(args: &RunArgs) -> anyhow::Result<PathBuf> {
    match &args.nginx_binary {
        Some(b) => Ok(b.clone()),
        None => gateway_operator::nginx::find_binary()
            .context("no nginx binary: install nginx (Debian: apt-get install nginx) or pass --nginx-binary"),
    }
}

/// The nginx container: bootstrap the prefix, then become nginx.
fn exec_nginx(args: RunArgs) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let settings = settings(&args)?;
    let binary = binary(&args)?;
    let nginx = gateway_operator::nginx::Nginx::new(binary.clone(), settings.clone(), Mode::External)?;
    if !nginx.conf_path().exists() {
        let empty = gateway_operator::render::render(&Default::default(), &settings);
        nginx.write_generation(&empty)?;
        nginx.install(&empty)?;
    }
    let err = std::process::Command::new(&binary)
        .arg("-p")
        .arg(&settings.prefix)
        .arg("-e")
        .arg(nginx.error_log())
        .arg("-c")
        .arg(nginx.conf_path())
        .arg("-g")
        .arg("daemon off;")
        .exec();
    Err(err).with_context(|| format!("executing {}", binary.display()))
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    init_logs(args.log_format);
    let probe_interval = *args.probe_interval;
    if !(std::time::Duration::from_secs(1)..=std::time::Duration::from_secs(3600)).contains(&probe_interval) {
        anyhow::bail!("--probe-interval must be 1s to 1h");
    }
    let binary = match args.nginx_binary {
        Some(b) => b,
        None => gateway_operator::nginx::find_binary().context(
            "no nginx binary: install nginx (Debian: apt-get install nginx) or pass --nginx-binary",
        )?,
    };
    let prefix = std::path::absolute(&args.nginx_prefix).context("resolving --nginx-prefix")?;
    let settings = Settings {
        prefix,
        listen: args.listen,
        http_port: args.http_port,
        https_port: (args.https_port != 0).then_some(args.https_port),
        status_port: args.status_port,
        workers: args.nginx_workers,
        access_log: args.access_log,
        user: args.nginx_user,
    };
    let options = RunOptions {
        nginx_binary: binary,
        settings,
        mode: match args.nginx {
            NginxMode::Start => Mode::Start,
            NginxMode::External => Mode::External,
        },
        metrics_addr: address(&args.metrics_addr)?,
        probe_addr: address(&args.probe_addr)?,
        concurrency: usize::from(args.concurrency),
        probe_interval,
        prompt_templates: None,
        stop_nginx_on_exit: args.stop_nginx_on_exit,
    };
    let client = client(args.kubeconfig.as_deref()).await?;
    gateway_operator::run::run(client, options, crwatch::manager::shutdown_signal()).await
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(args).await,
        Command::Nginx(args) => exec_nginx(args),
        Command::Crd => {
            print!("{}", gateway_operator::crd::crd_yaml());
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gateway-operator: {e:#}");
            ExitCode::FAILURE
        }
    }
}
