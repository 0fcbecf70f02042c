//! `crwatch serve`: the command line of the xDS server in [`crwatch_serve::xds`].

use clap::Args;

/// `crwatch serve -r RESOURCE [-r RESOURCE]... --listen ADDR`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// A resource to serve, named as `crwatch get` names it (repeatable).
    #[arg(short = 'r', long = "resource", required = true)]
    pub resources: Vec<String>,
}

/// Run `crwatch serve`.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    anyhow::bail!("crwatch serve {:?}: not built yet", args.resources)
}
