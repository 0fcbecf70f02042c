//! The `crwatch` binary: parses arguments, runs [`crwatch_cli::run`], and prints errors the way
//! kubectl does (`error: ...` on stderr, exit code 1).

use std::process::ExitCode;

use clap::Parser;

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
            match e.downcast_ref::<crwatch_cli::get::ServerError>() {
                // kubectl prints server errors without the `error: ` prefix.
                Some(server) => eprintln!("{server}"),
                None => eprintln!("error: {e:#}"),
            }
            ExitCode::FAILURE
        }
    }
}
