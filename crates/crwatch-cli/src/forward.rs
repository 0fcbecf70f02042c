//! `crwatch forward`: the command-line shell over the `crwatch-forward` crate. It parses the
//! configuration, connects to the API server (with kubectl's wording for connection errors),
//! runs the forwarder until SIGTERM or Ctrl-C, and prints what stayed undelivered.

pub use crwatch_forward::{
    Forwarder, Kubernetes, Undelivered, checkpoint, config, event, metrics, pipeline, sink, sinks, stream,
};

use crate::Connection;
use crate::errors::explain_kube;
use config::ForwardConfig;

/// Connect to the cluster `conn` names and discover its resource types.
pub async fn connect(conn: &Connection) -> anyhow::Result<Kubernetes> {
    let (client, _, url) = crate::connect_with_url(conn).await?;
    let types = crwatch::discovery::discover(&client)
        .await
        .map_err(|e| explain_kube(e, &url))?;
    Ok(Kubernetes { client, url, types })
}

/// Start forwarding `config` (`file` names it in errors): connects first when an entry names a
/// Kubernetes resource.
pub async fn start(config: ForwardConfig, file: &str, conn: &Connection) -> anyhow::Result<Forwarder> {
    let kube = if config.resources.iter().any(|r| r.resource.is_some()) {
        Some(connect(conn).await?)
    } else {
        None
    };
    Ok(Forwarder::start(config, file, kube).await?)
}

/// Run `crwatch forward` until SIGTERM or Ctrl-C.
pub async fn run(args: crate::args::ForwardArgs) -> anyhow::Result<()> {
    let file = args.config.display().to_string();
    let config = ForwardConfig::load(&args.config)?;
    let conn = Connection {
        kubeconfig: args.kubeconfig.clone(),
        context: args.context.clone(),
    };
    if args.check {
        // Check the sinks too: templates, secrets, CA files and URLs, without connecting.
        for s in &config.sinks {
            crwatch_forward::forwarder::check_sink(s).await?;
        }
        if args.server {
            let needs_server = config.resources.iter().any(|r| r.resource.is_some());
            if needs_server {
                let kube = connect(&conn).await?;
                let errors = crwatch_forward::check_server(&config, &file, &kube).await;
                if !errors.is_empty() {
                    for e in &errors[..errors.len() - 1] {
                        eprintln!("error: {e}");
                    }
                    // The last one is returned, so main prints it and exits with 1.
                    let last = errors.into_iter().last().map(anyhow::Error::from);
                    return Err(last.unwrap_or_else(|| anyhow::anyhow!("{file}: invalid")));
                }
            }
            println!("{file}: configuration is valid, and every resource and namespace exists on the server");
        } else {
            println!(
                "{file}: configuration is valid (add --server to check resources and namespaces on the server)"
            );
        }
        return Ok(());
    }
    let forwarder = start(config, &file, &conn).await?;
    eprintln!(
        "crwatch forward: {} stream(s) to {} sink(s){}",
        forwarder.streams,
        forwarder.sinks,
        forwarder
            .metrics_addr
            .map(|a| format!("; metrics on http://{a}/metrics"))
            .unwrap_or_default()
    );
    crwatch::manager::shutdown_signal().await;
    eprintln!("crwatch forward: shutting down, delivering what is queued");
    let undelivered = forwarder.shutdown().await?;
    eprintln!("crwatch forward: {undelivered}");
    Ok(())
}
