//! The command line, as clap parses it; flags follow kubectl's.

use std::path::PathBuf;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};

/// `crwatch`: kubectl get -w that says what changed.
#[derive(Debug, Parser)]
#[command(
    name = "crwatch",
    version,
    about = "Watch Kubernetes resources and see what changed"
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Parse the process's arguments like [`Parser::parse`], then check what clap's
    /// declarations cannot say; on a usage error print it with the usage line and exit with
    /// code 2, as clap does.
    pub fn parse_checked() -> Cli {
        Cli::try_parse_checked_from(std::env::args_os()).unwrap_or_else(|e| e.exit())
    }

    /// Like [`Cli::parse_checked`], returning the usage error instead of exiting.
    ///
    /// ```
    /// use crwatch_cli::args::Cli;
    ///
    /// let err = Cli::try_parse_checked_from(["crwatch", "get", "pods", "--diff"]).unwrap_err();
    /// assert_eq!(err.exit_code(), 2);
    /// assert!(err.to_string().starts_with("error: --diff requires --watch (-w) or --watch-only"));
    /// assert!(Cli::try_parse_checked_from(["crwatch", "get", "pods", "-w", "--diff"]).is_ok());
    /// assert!(Cli::try_parse_checked_from(["crwatch", "get", "pods", "--watch-only", "--diff"]).is_ok());
    /// ```
    pub fn try_parse_checked_from<I, T>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let cli = Cli::try_parse_from(args)?;
        if let Command::Get(get) = &cli.command
            && get.diff
            && !get.watch
            && !get.watch_only
        {
            // clap's `requires` would say "the following required arguments were not
            // provided: <--watch|--watch-only>"; kubectl-style users expect the flag named.
            let mut cmd = Cli::command();
            cmd.build();
            let mut sub = cmd
                .find_subcommand_mut("get")
                .map(std::mem::take)
                .unwrap_or_default();
            return Err(sub.error(
                clap::error::ErrorKind::MissingRequiredArgument,
                "--diff requires --watch (-w) or --watch-only",
            ));
        }
        Ok(cli)
    }
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Display one or many resources, optionally watching them for changes.
    Get(GetArgs),
    /// Forward changes of chosen resources to webhooks, NATS, AMQP or files as CloudEvents.
    Forward(ForwardArgs),
    /// Run the demo: an embedded API server, the Database CRD, sample objects changing, and the
    /// watch with diffs.
    Demo(DemoArgs),
    /// Serve watched resources to many subscribers over Envoy's xDS (MCP-over-xDS resources).
    Serve(crate::serve::ServeArgs),
    /// Serve watched resources to AI agents over the Model Context Protocol.
    Mcp(crate::mcp::McpArgs),
    /// Serve kube-state-metrics' custom-resource-state metrics (its CustomResourceStateMetrics
    /// configuration, unchanged) on /metrics, from informers over Kubernetes or other sources.
    Metrics(crate::metrics::MetricsArgs),
}

/// `crwatch forward -f forward.yaml`.
#[derive(Debug, Clone, Args)]
pub struct ForwardArgs {
    /// The forwarder configuration (YAML).
    #[arg(short = 'f', long = "config")]
    pub config: PathBuf,
    /// Check the configuration (syntax, sinks, secrets) and exit, without connecting.
    #[arg(long)]
    pub check: bool,
    /// With --check: also connect to the API server and check that every resource and
    /// namespace exists there.
    #[arg(long, requires = "check")]
    pub server: bool,
    /// Kubeconfig file (default: `KUBECONFIG`, then `~/.kube/config`, then in-cluster).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context to use.
    #[arg(long)]
    pub context: Option<String>,
}

/// `crwatch demo`.
#[derive(Debug, Clone, Args)]
#[command(disable_help_subcommand = true)]
pub struct DemoArgs {
    /// Pause between steps, e.g. `1s`, `300ms` (0 to 1m).
    // Global: `crwatch demo gateway --pace 0s` sets it too.
    #[arg(long, default_value = "1s", value_parser = parse_pace, global = true)]
    pub pace: humantime::Duration,
    /// Keep the API server running after the demo until Ctrl-C, and print its kubeconfig path.
    #[arg(long, global = true)]
    pub keep: bool,
    /// Run the Database operator in process against a local PostgreSQL (the default when
    /// crwatch is built with the `demo-operator` feature).
    #[arg(long, overrides_with = "no_operator")]
    pub operator: bool,
    /// Play the scripted demo: the script writes status itself, no operator or PostgreSQL.
    #[arg(long, overrides_with = "operator")]
    pub no_operator: bool,
    /// Another demo than the Database one.
    #[command(subcommand)]
    pub demo: Option<DemoCommand>,
}

/// `crwatch demo <DEMO>`: the demos besides the Database one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Subcommand)]
pub enum DemoCommand {
    /// The gateway operator driving a local nginx: GatewayRoutes added, shifted by weight and
    /// removed under load, watched with diffs (feature `demo-gateway`).
    Gateway,
}

impl DemoArgs {
    /// Whether the demo runs the operator: `--operator`, or by default when built with the
    /// `demo-operator` feature; `--no-operator` (the last of the two wins) turns it off.
    pub fn wants_operator(&self) -> bool {
        !self.no_operator && (self.operator || cfg!(feature = "demo-operator"))
    }
}

/// Output formats of `crwatch get`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns: NAME and the resource's printer columns.
    Table,
    /// The table with the additional (priority > 0) columns.
    Wide,
    /// The object or a `List`, as indented JSON.
    Json,
    /// The object or a `List`, as YAML.
    Yaml,
    /// One object per line as compact JSON (in watch mode `{"type", "object", "diff"}`).
    Jsonl,
    /// `kind.group/name`.
    Name,
}

/// `crwatch get RESOURCE [NAME]`, or `crwatch get URI` for a source outside Kubernetes.
#[derive(Debug, Clone, Args)]
pub struct GetArgs {
    /// Resource type: plural, singular, short name, kind, `plural.group` or
    /// `plural.version.group`; or a source URI: `file://DIR`, `postgres://USER@HOST/DB?table=T`,
    /// `mysql://USER@HOST/DB?table=T`, `https://HOST/PATH`.
    pub resource: String,
    /// Only this object.
    pub name: Option<String>,
    /// After listing, watch for changes.
    #[arg(short = 'w', long)]
    pub watch: bool,
    /// Watch for changes without printing the current state first.
    #[arg(long)]
    pub watch_only: bool,
    /// Namespace (default: the kubeconfig context's, else `default`).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// All namespaces.
    #[arg(short = 'A', long, conflicts_with = "namespace")]
    pub all_namespaces: bool,
    /// Label selector, e.g. `app=web,tier in (a,b)`.
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    /// Field selector, e.g. `metadata.name=x`.
    #[arg(long)]
    pub field_selector: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// In watch mode, print under each MODIFIED row which fields changed.
    #[arg(long)]
    pub diff: bool,
    /// Kubeconfig file (default: `KUBECONFIG`, then `~/.kube/config`, then in-cluster).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context to use.
    #[arg(long)]
    pub context: Option<String>,
    /// HTTP sources: a JSON pointer to the list of items in the answer (e.g. `/data`).
    #[arg(long, value_name = "POINTER")]
    pub items: Option<String>,
    /// HTTP sources: the field that names an item (default `id`, or `metadata.name`).
    #[arg(long, value_name = "FIELD")]
    pub key: Option<String>,
    /// HTTP and polled database sources: how often to poll (HTTP default 30s, databases 2s).
    #[arg(long, value_name = "DURATION")]
    pub interval: Option<humantime::Duration>,
    /// PostgreSQL sources: install the change-log trigger (then changes arrive by
    /// LISTEN/NOTIFY instead of polling).
    #[arg(long)]
    pub install_trigger: bool,
}

/// `--pace`: a duration from 0 to one minute (a longer pause is a typo, not a demo).
fn parse_pace(s: &str) -> Result<humantime::Duration, String> {
    let d: humantime::Duration = s.parse().map_err(|e| format!("{e}"))?;
    if *d > std::time::Duration::from_secs(60) {
        return Err("must be between 0s and 1m".into());
    }
    Ok(d)
}
