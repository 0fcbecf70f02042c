//! The `crwatch` binary: parses arguments, runs [`crwatch_cli::run`], and prints errors the way
//! kubectl does (`error: ...` on stderr, server and connection errors without the prefix; exit
//! code 1, 2 for usage errors).

use std::process::ExitCode;

use clap::Parser;
use crwatch_cli::get::{ConnectError, ServerError};

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CRWATCH_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = crwatch_cli::args::Cli::parse();
    match crwatch_cli::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // kubectl prints server and connection errors without the `error: ` prefix.
            if let Some(server) = e.downcast_ref::<ServerError>() {
                eprintln!("{server}");
            } else if let Some(conn) = e.downcast_ref::<ConnectError>() {
                eprintln!("{conn}");
            } else {
                eprintln!("error: {e:#}");
            }
            ExitCode::FAILURE
        }
    }
}
