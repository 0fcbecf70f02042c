//! The `crwatch` command line as a library: argument parsing ([`args`]), resource-name
//! resolution ([`resolve`]), table rendering ([`table`]), `crwatch get` ([`get`]) and the
//! shell of `crwatch forward` over the `crwatch-forward` crate ([`forward`]); the binary only
//! parses arguments and reports errors.

pub mod args;
pub mod demo;
pub mod demo_gateway;
pub mod errors;
pub mod forward;
pub mod get;
pub mod mcp;
pub mod metrics;
pub mod resolve;
pub mod serve;
pub mod table;
pub mod uri;

use std::ffi::OsStr;

use kube::config::{KubeConfigOptions, Kubeconfig, KubeconfigError};

/// The stack of every thread the binary runs async code on (the main future's and the tokio
/// workers'). Decoding, cloning, serializing, diffing and dropping an object are recursive in
/// its nesting, and the API server serves objects up to 10,000 levels deep (Go's JSON limit):
/// about 2 MiB per 2,000 levels in a debug build. Only the pages used are ever touched.
pub const THREAD_STACK_BYTES: usize = 64 << 20;

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
    // kube's kubeconfig errors already include their source in their message (and carry it as
    // `source()` too), so they are reworded here instead of wrapped: each cause is said once.
    let config = match &conn.kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path).map_err(|e| match e {
                // The path is the one just given: say it once.
                KubeconfigError::ReadConfig(io, _) => {
                    anyhow::anyhow!("reading kubeconfig {}: {io}", path.display())
                }
                e => anyhow::anyhow!(
                    "reading kubeconfig {}: {}",
                    path.display(),
                    describe_kubeconfig_error(&e)
                ),
            })?;
            kube::Config::from_custom_kubeconfig(kc, &options)
                .await
                .map_err(|e| {
                    anyhow::anyhow!(
                        "loading kubeconfig {}: {}",
                        path.display(),
                        describe_kubeconfig_error(&e)
                    )
                })?
        }
        None if conn.context.is_some() => {
            kube::Config::from_kubeconfig(&options)
                .await
                .map_err(|e| match e {
                    KubeconfigError::ReadConfig(..) => {
                        anyhow::anyhow!("loading kubeconfig {}", describe_kubeconfig_error(&e))
                    }
                    e => anyhow::anyhow!("loading kubeconfig: {}", describe_kubeconfig_error(&e)),
                })?
        }
        None => kube::Config::infer().await.map_err(|e| {
            // The kubeconfig failure is the one users can act on; the in-cluster one only says
            // this is not a Pod.
            let reason = std::error::Error::source(&e)
                .and_then(|s| s.downcast_ref::<KubeconfigError>())
                .map_or_else(|| error_chain(&e), describe_kubeconfig_error);
            anyhow::anyhow!(
                "no kubeconfig ({reason}) and not running in a cluster; pass --kubeconfig or set KUBECONFIG"
            )
        })?,
    };
    let namespace = config.default_namespace.clone();
    let url = config.cluster_url.to_string();
    // kubectl's rules: no credentials over plain HTTP (unless asked for), connect and
    // response-header timeouts.
    let client = crwatch::client::build(config, &crwatch::client::ClientOptions::default())?;
    Ok((client, namespace, url))
}

/// A kubeconfig error as one phrase that names the file where kube knows it: `/x: No such
/// file or directory (os error 2)` rather than kube's `failed to read kubeconfig from
/// '"/x"': No such file or directory (os error 2)` followed by the same I/O error again.
fn describe_kubeconfig_error(e: &KubeconfigError) -> String {
    match e {
        KubeconfigError::ReadConfig(io, path) => format!("{}: {io}", path.display()),
        // The YAML error's first line has the position and the problem; the rest is a source
        // snippet that repeats the problem under a caret, and the line already says `error: `.
        KubeconfigError::Parse(yaml) => {
            let yaml = yaml.to_string();
            let first = yaml.lines().next().unwrap_or_default();
            format!(
                "failed to parse kubeconfig YAML: {}",
                first.strip_prefix("error: ").unwrap_or(first)
            )
        }
        other => error_chain(other),
    }
}

/// An error and its causes joined by `: `, each said once: a cause whose message an outer
/// message already contains is left out. Many errors (kube's, for one) put their source into
/// their own message and return it from `source()` as well, so anyhow's `{:#}` would print it
/// twice or three times.
///
/// ```
/// use anyhow::Context;
///
/// let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
/// #[derive(Debug, thiserror::Error)]
/// #[error("failed to read config: {0}")]
/// struct ReadError(#[source] std::io::Error);
/// let e = Err::<(), _>(ReadError(io)).context("loading kubeconfig").unwrap_err();
/// assert_eq!(format!("{e:#}"), "loading kubeconfig: failed to read config: no such file: no such file");
/// assert_eq!(crwatch_cli::error_chain(e.as_ref()), "loading kubeconfig: failed to read config: no such file");
/// ```
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = String::new();
    let mut cause = Some(e);
    while let Some(c) = cause {
        let msg = c.to_string();
        if !msg.is_empty() && !out.contains(&msg) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&msg);
        }
        cause = c.source();
    }
    out
}

/// Whether log lines on stderr get ANSI colours: only on a terminal, and never with `NO_COLOR`
/// set to anything non-empty (<https://no-color.org>) or `TERM=dumb`. Log files and pipes get
/// plain text.
///
/// ```
/// use std::ffi::OsStr;
///
/// assert!(crwatch_cli::log_colours(true, None, Some(OsStr::new("xterm-256color"))));
/// assert!(!crwatch_cli::log_colours(false, None, None));
/// assert!(!crwatch_cli::log_colours(true, Some(OsStr::new("1")), None));
/// assert!(crwatch_cli::log_colours(true, Some(OsStr::new("")), None));
/// assert!(!crwatch_cli::log_colours(true, None, Some(OsStr::new("dumb"))));
/// ```
pub fn log_colours(stderr_is_terminal: bool, no_color: Option<&OsStr>, term: Option<&OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(OsStr::is_empty) && term != Some(OsStr::new("dumb"))
}

/// Run a parsed command line.
pub async fn run(cli: args::Cli) -> anyhow::Result<()> {
    match cli.command {
        args::Command::Get(a) => get::run(a).await,
        args::Command::Forward(a) => forward::run(a).await,
        args::Command::Demo(a) => match a.demo {
            Some(args::DemoCommand::Gateway) => demo_gateway::run(a).await,
            None => demo::run(a).await,
        },
        args::Command::Serve(a) => serve::run(a).await,
        args::Command::Mcp(a) => mcp::run(a).await,
        args::Command::Metrics(a) => metrics::run(a).await,
    }
}
