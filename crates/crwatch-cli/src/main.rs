//! The `crwatch` binary: parses arguments, runs [`crwatch_cli::run`], and prints errors the way
//! kubectl does (`error: ...` on stderr, server and connection errors without the prefix; exit
//! code 1, 2 for usage errors).

use std::io::IsTerminal;
use std::process::ExitCode;

use crwatch_cli::get::{ConnectError, ServerError};

fn main() -> ExitCode {
    // Deeply nested objects need deep stacks (see THREAD_STACK_BYTES): the main future runs on
    // a thread of that size too, not on the process's main thread.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(crwatch_cli::THREAD_STACK_BYTES)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let main = std::thread::Builder::new()
        .name("main".into())
        .stack_size(crwatch_cli::THREAD_STACK_BYTES)
        .spawn(move || runtime.block_on(run_main()));
    match main.map(|t| t.join()) {
        Ok(Ok(code)) => code,
        // A panic was already printed by the panic hook.
        Ok(Err(_)) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: starting the main thread: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run_main() -> ExitCode {
    let colours = crwatch_cli::log_colours(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
        std::env::var_os("TERM").as_deref(),
    );
    let cli = crwatch_cli::args::Cli::parse_checked();
    // `crwatch forward`, `crwatch serve` and `crwatch metrics` run unattended: their warnings (a sink failing, a source down, a NACK) show by
    // default. Other commands print their own messages and log nothing unless asked.
    let default_level = match cli.command {
        crwatch_cli::args::Command::Forward(_)
        | crwatch_cli::args::Command::Serve(_)
        | crwatch_cli::args::Command::Metrics(_) => "warn",
        _ => "off",
    };
    let traces = init_logging(default_level, colours);
    tracing::debug!(version = env!("CARGO_PKG_VERSION"), "crwatch starting");
    let code = run_command(cli).await;
    // The last spans (the shutdown's) go to the collector too, bounded by the guard's timeout.
    if let Some(traces) = traces {
        traces.shutdown().await;
    }
    code
}

/// Logs to stderr, filtered by `CRWATCH_LOG` (default `default_level`); and, with the `otel`
/// feature and an OTLP endpoint in `OTEL_EXPORTER_OTLP_ENDPOINT` (or `_TRACES_ENDPOINT`), exports
/// crwatch's spans with their own filter, so the log level does not decide what is traced.
fn init_logging(default_level: &str, colours: bool) -> Option<crwatch::trace::TraceGuard> {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(colours)
        .with_filter(
            tracing_subscriber::EnvFilter::try_from_env("CRWATCH_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        );
    let traces = match crwatch::trace::init(crwatch::trace::TraceConfig::from_env("crwatch")) {
        Ok(traces) => traces,
        Err(e) => {
            eprintln!("warning: {e}; continuing without traces");
            None
        }
    };
    #[cfg(feature = "otel")]
    let spans = traces.as_ref().map(|t| {
        // crwatch's own spans only: the exporter's gRPC client must not trace itself.
        t.layer().with_filter(
            tracing_subscriber::filter::Targets::new().with_target("crwatch", tracing::Level::INFO),
        )
    });
    #[cfg(not(feature = "otel"))]
    let spans: Option<tracing_subscriber::layer::Identity> = None;
    tracing_subscriber::registry().with(logs).with(spans).init();
    traces
}

async fn run_command(cli: crwatch_cli::args::Cli) -> ExitCode {
    match crwatch_cli::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // kubectl prints server and connection errors without the `error: ` prefix.
            if let Some(server) = e.downcast_ref::<ServerError>() {
                eprintln!("{server}");
            } else if let Some(conn) = e.downcast_ref::<ConnectError>() {
                eprintln!("{conn}");
            } else {
                eprintln!("error: {}", crwatch_cli::error_chain(e.as_ref()));
            }
            ExitCode::FAILURE
        }
    }
}
