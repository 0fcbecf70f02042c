//! `crwatch serve`: the command line of the xDS server in [`crwatch_serve::xds`]: resolves
//! each `-r RESOURCE` as `crwatch get` does, starts one informer per resource, and serves
//! their objects over Envoy's aggregated discovery service until Ctrl-C or SIGTERM.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use crwatch::informer::Informer;
use crwatch::source::kube::KubeSource;
use crwatch_serve::xds::{Limits, ReportTarget, ServerOptions, TlsFiles, XdsServer};
use kube::api::DynamicObject;
use tokio_util::sync::CancellationToken;

use crate::resolve::{discover, resolve};
use crate::{Connection, connect};

/// `crwatch serve -r RESOURCE [-r RESOURCE]... --listen ADDR`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// A resource to serve, named as `crwatch get` names it (repeatable); or `file://DIR`
    /// (each YAML/JSON document under its own type URL; `file://DIR?mode=raw`: every file as
    /// `file.crwatch.io/v1/File`).
    #[arg(short = 'r', long = "resource", required = true)]
    pub resources: Vec<String>,
    /// Address of the gRPC listener. Without --tls-cert/--tls-key it must be a loopback
    /// address.
    #[arg(long, default_value = "127.0.0.1:18000")]
    pub listen: SocketAddr,
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
    /// Server certificate chain (PEM): serve gRPC over TLS.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Server private key (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// CA bundle (PEM): require client certificates signed by it (mTLS).
    #[arg(long, requires = "tls_cert")]
    pub client_ca: Option<PathBuf>,
    /// A file holding the bearer token subscribers must send (`authorization: Bearer ...`).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Serve Prometheus metrics on this address (`/metrics`).
    #[arg(long)]
    pub metrics: Option<SocketAddr>,
    /// Set the condition `Accepted` on the status of Kubernetes objects a subscriber NACKs
    /// (False) or later ACKs (True).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub report_nacks: bool,
    /// The largest delta response (bytes, 1 KiB to 64 MiB); bigger changes are split across
    /// responses. State-of-the-world responses always carry the whole state.
    #[arg(long, default_value_t = 4 * 1024 * 1024 - 64 * 1024, value_parser = clap::value_parser!(u64).range(1024..=64 * 1024 * 1024))]
    pub max_response_bytes: u64,
    /// The most subscriber streams served at once (1 to 1,000,000); more are refused with
    /// RESOURCE_EXHAUSTED. Each costs about one response of buffers (see --max-response-bytes).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_subscribers: u64,
    /// Kubeconfig file (default: `KUBECONFIG`, then `~/.kube/config`, then in-cluster).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context to use.
    #[arg(long)]
    pub context: Option<String>,
}

fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}

async fn read(path: &PathBuf, what: &str) -> anyhow::Result<Vec<u8>> {
    tokio::fs::read(path)
        .await
        .with_context(|| format!("reading {what} {}", path.display()))
}

/// Run `crwatch serve` until Ctrl-C or SIGTERM.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let cancel = CancellationToken::new();
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles {
            cert_pem: read(cert, "--tls-cert").await?,
            key_pem: read(key, "--tls-key").await?,
            client_ca_pem: match &args.client_ca {
                Some(ca) => Some(read(ca, "--client-ca").await?),
                None => None,
            },
        }),
        _ => None,
    };
    if tls.is_none() && !is_loopback(&args.listen) {
        bail!(
            "refusing to serve plaintext gRPC on {} (not a loopback address): give --tls-cert and --tls-key, or listen on 127.0.0.1",
            args.listen
        );
    }
    let token = match &args.token_file {
        Some(p) => {
            let t = String::from_utf8(read(p, "--token-file").await?)
                .with_context(|| format!("--token-file {}: not UTF-8", p.display()))?;
            let t = t.trim().to_string();
            if t.is_empty() {
                bail!("--token-file {} is empty", p.display());
            }
            Some(Arc::<str>::from(t))
        }
        None => None,
    };
    let limits = Limits {
        max_response_bytes: args.max_response_bytes as usize,
        max_streams: args.max_subscribers as usize,
        ..Limits::default()
    };
    let mut server = XdsServer::new(ServerOptions {
        limits,
        token,
        metrics: None,
    });
    let mut informers = vec![];
    let mut targets = HashMap::new();
    let (uris, kinds): (Vec<&String>, Vec<&String>) = args.resources.iter().partition(|r| r.contains("://"));
    for uri in uris {
        let informer = if uri.starts_with("xds://") || uri.starts_with("xdss://") {
            xds_informer(&server, uri)?
        } else {
            file_informer(&server, uri)?
        };
        informers.push((uri.clone(), informer));
    }
    let mut client = None;
    if !kinds.is_empty() {
        let conn = Connection {
            kubeconfig: args.kubeconfig.clone(),
            context: args.context.clone(),
        };
        let (c, default_ns) = connect(&conn).await?;
        let types = discover(&c).await.map_err(crate::errors::explain_any)?;
        for name in kinds {
            let rt = resolve(&types, name)?;
            let namespace = match (rt.namespaced, args.all_namespaces) {
                (false, _) | (true, true) => None,
                (true, false) => Some(args.namespace.clone().unwrap_or_else(|| default_ns.clone())),
            };
            let ar = rt.api_resource();
            let mut source = KubeSource::<DynamicObject>::dynamic(c.clone(), &ar, namespace.as_deref());
            if let Some(l) = &args.selector {
                source = source.labels(l);
            }
            if let Some(f) = &args.field_selector {
                source = source.fields(f);
            }
            let informer = Informer::new(source);
            let tc = server.serve_informer(&informer, &ar.api_version, &ar.kind);
            targets.insert(
                tc.type_url().to_string(),
                ReportTarget {
                    api: ar.clone(),
                    namespaced: rt.namespaced,
                },
            );
            informers.push((tc.type_url().to_string(), informer));
        }
        client = Some(c);
    }
    if let Some(c) = client
        && args.report_nacks
    {
        server.report_to(c, targets, cancel.clone());
    }
    for (_, informer) in &informers {
        informer.start(cancel.clone());
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let local = listener.local_addr().context("the listener's address")?;
    let server = Arc::new(server);
    if let Some(addr) = args.metrics {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("--metrics {addr}"))?;
        let (s, c) = (server.clone(), cancel.clone());
        tokio::spawn(async move {
            if let Err(e) = s.serve_metrics(l, c).await {
                tracing::warn!(error = %e, "metrics listener failed");
            }
        });
    }
    eprintln!(
        "crwatch serve: xDS (ADS, state of the world and delta) on {}{} serving {}",
        if args.tls_cert.is_some() { "https://" } else { "" },
        local,
        server.cache().type_urls().join(", ")
    );
    for (name, informer) in &informers {
        if informer.wait_synced(Duration::from_secs(120)).await.is_err() {
            eprintln!("crwatch serve: {name} has not listed yet (still retrying); subscribers wait for it");
        }
    }
    let stop = cancel.clone();
    tokio::spawn(async move {
        crwatch::manager::shutdown_signal().await;
        stop.cancel();
    });
    server
        .serve(listener, tls, cancel.clone())
        .await
        .context("the gRPC server")?;
    cancel.cancel();
    Ok(())
}

/// An `xds://HOST:PORT/<type URL>` source: another `crwatch serve` (or any delta-xDS server of
/// MCP resources), so servers chain: one API watch, a first server, many replicas of it, each
/// serving its own subscribers. Objects are served under the type URL they arrive with.
fn xds_informer(server: &XdsServer, uri: &str) -> anyhow::Result<Informer<DynamicObject>> {
    let source = crwatch::source::xds::XdsSource::from_url(uri)?;
    let informer = Informer::new(source);
    server.serve_informer_by_kind(&informer);
    Ok(informer)
}

/// A `file://` source: with `mode=raw`, every file as a `file.crwatch.io/v1/File`; otherwise
/// each document under the type URL of its own `apiVersion`/`kind`.
#[cfg(feature = "file")]
fn file_informer(server: &XdsServer, uri: &str) -> anyhow::Result<Informer<DynamicObject>> {
    if !uri.starts_with("file://") {
        bail!("{uri}: crwatch serve takes Kubernetes resource names, file:// and xds:// URIs");
    }
    let source = crwatch::source::file::FileSource::from_url(uri)?;
    let informer = Informer::new(source);
    if uri.contains("mode=raw") {
        server.serve_informer(
            &informer,
            crwatch::source::file::RAW_API_VERSION,
            crwatch::source::file::RAW_KIND,
        );
    } else {
        server.serve_informer_by_kind(&informer);
    }
    Ok(informer)
}

#[cfg(not(feature = "file"))]
fn file_informer(_server: &XdsServer, uri: &str) -> anyhow::Result<Informer<DynamicObject>> {
    bail!("{uri}: this build has no file source (cargo feature `file`)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_only_on_loopback() {
        assert!(is_loopback(&"127.0.0.1:1".parse().unwrap()));
        assert!(is_loopback(&"[::1]:1".parse().unwrap()));
        assert!(!is_loopback(&"0.0.0.0:1".parse().unwrap()));
    }
}
