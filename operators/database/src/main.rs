//! `database-operator`: the Database operator's command line, a thin shell over the
//! `database_operator` library.

use clap::{Parser, Subcommand};

/// The Database operator.
#[derive(Debug, Parser)]
#[command(name = "database-operator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the Database CustomResourceDefinition as YAML
    /// (`database-operator crd > deploy/database-crd.yaml`).
    Crd,
}

fn main() {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => print!("{}", database_operator::crd::crd_yaml()),
    }
}
