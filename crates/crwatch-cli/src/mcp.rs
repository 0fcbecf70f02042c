//! `crwatch mcp`: the command line of the Model Context Protocol server in
//! [`crwatch_serve::mcp`].

use clap::Args;

/// `crwatch mcp [-r RESOURCE]...`.
#[derive(Debug, Clone, Args)]
pub struct McpArgs {
    /// A resource to serve, named as `crwatch get` names it (repeatable).
    #[arg(short = 'r', long = "resource")]
    pub resources: Vec<String>,
}

/// Run `crwatch mcp`.
pub async fn run(args: McpArgs) -> anyhow::Result<()> {
    anyhow::bail!("crwatch mcp {:?}: not built yet", args.resources)
}
