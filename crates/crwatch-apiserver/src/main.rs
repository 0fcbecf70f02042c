//! The `crwatch-apiserver` binary: a standalone Kubernetes API server for local use.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use crwatch_apiserver::{ApiServer, Config};

/// An in-process Kubernetes API server: point kubectl or any client at it.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// HTTPS port (0 picks a free one). Default: the port of the last run (kept in --state, or
    /// in the kubeconfig it wrote), else 6443.
    #[arg(long)]
    port: Option<u16>,
    /// Plain HTTP port as well (0: the port of the last run kept in --state, else a free one).
    #[arg(long)]
    http_port: Option<u16>,
    /// Where to write the kubeconfig (server URL, CA and token; owner-only). When it is there
    /// from an earlier run, with its `.serving.pem` companion, the server keeps that CA,
    /// certificate, token and port, so clients using it reconnect after a restart.
    #[arg(long, default_value = "crwatch.kubeconfig")]
    kubeconfig: PathBuf,
    /// YAML manifests (CRDs or any object) to apply at start; may be repeated.
    #[arg(long = "crd", value_name = "FILE")]
    crds: Vec<PathBuf>,
    /// Keep objects, revisions and the server's identity in this file (an embedded database,
    /// owner-only): every acknowledged write is on disk first, so SIGTERM and kill -9 lose
    /// nothing acknowledged.
    #[arg(long, value_name = "FILE")]
    state: Option<PathBuf>,
    /// Bearer token to require (random when not given): the admin, in `system:masters`.
    #[arg(long, env = "CRWATCH_APISERVER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// More token users, as kube-apiserver's flag: CSV lines `token,user,uid,"group1,group2"`.
    /// RBAC decides what they may do.
    #[arg(long, value_name = "FILE")]
    token_auth_file: Option<PathBuf>,
    /// Changes of history each resource keeps at most for watches and paging (the real watch
    /// cache's upper bound; its capacity starts at 100 and doubles while its oldest change is
    /// under 75 s old); older resourceVersions get 410 Gone.
    #[arg(long, default_value_t = 102_400, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    history: u64,
    /// Bytes of object versions history keeps at most (each version counted once, by its JSON
    /// size), in bytes or with Ki, Mi, Gi or Ti (1Mi to 1Ti); older resourceVersions get 410 Gone.
    #[arg(long, default_value = "256Mi", value_parser = parse_bytes)]
    history_bytes: usize,
    /// Seconds between BOOKMARK events on watches that allow them.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    bookmark_interval: u64,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: std::net::IpAddr,
    /// Do not run the workload simulator (then Deployments, StatefulSets and Jobs get no
    /// Pods, as on a cluster without controllers, Nodes or kubelets).
    #[arg(long)]
    no_simulate_workloads: bool,
    /// How long a simulated Pod takes to become Running and Ready, like 200ms, 2s or 1m (at
    /// most 1h).
    #[arg(long, default_value = "200ms", value_parser = parse_delay)]
    pod_ready_delay: Duration,
    /// Simulated Nodes created when the server starts with an empty store (0 to 100).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(0..=100))]
    nodes: u64,
    /// Alpha features of later Kubernetes versions, as kube-apiserver's flag takes them:
    /// comma-separated `Name=true|false`. Known: ShardedListAndWatch (1.36, `shardSelector` on
    /// list and watch). All off by default.
    #[arg(long, value_name = "NAME=BOOL,...", value_parser = crwatch_apiserver::FeatureGates::parse)]
    feature_gates: Option<crwatch_apiserver::FeatureGates>,
}

/// A delay like `200ms`, `2s` or `1m`, at most an hour.
fn parse_delay(s: &str) -> Result<Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a duration: give a number with ms, s or m, like 200ms"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        _ => {
            return Err(format!(
                "{s:?} is not a duration: give a number with ms, s or m, like 200ms"
            ));
        }
    };
    if d > Duration::from_secs(3600) {
        return Err(format!("{s} is out of range: it must be at most 1h"));
    }
    Ok(d)
}

/// A size like `268435456`, `256Mi` or `1Gi`, between 1Mi and 1Ti.
fn parse_bytes(s: &str) -> Result<usize, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let unit: u64 = match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        _ => {
            return Err(format!(
                "{s:?} is not a size: give bytes, or a number with Ki, Mi, Gi or Ti"
            ));
        }
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .filter(|b| (1 << 20..=1 << 40).contains(b))
        .and_then(|b| usize::try_from(b).ok())
        .ok_or_else(|| format!("{s} is out of range: it must be between 1Mi and 1Ti"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    // A kubeconfig path into a missing directory is a typo: say so before starting anything,
    // instead of creating folders (or failing only after the CRDs were applied).
    if let Some(dir) = args.kubeconfig.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.is_dir()
    {
        anyhow::bail!(
            "--kubeconfig {}: the directory {} does not exist (create it first)",
            args.kubeconfig.display(),
            dir.display()
        );
    }
    // Without a state file, the kubeconfig of the last run keeps the identity.
    let identity = if args.state.is_none() {
        crwatch_apiserver::Identity::from_kubeconfig(&args.kubeconfig)
    } else {
        None
    };
    let server = ApiServer::start(Config {
        host: args.host,
        port: args.port.unwrap_or(0),
        // `--port 0` asks for a free port when no earlier run kept one.
        default_port: if args.port.is_none() { 6443 } else { 0 },
        identity,
        http_port: args.http_port,
        token: args.token.clone(),
        users: match &args.token_auth_file {
            Some(f) => {
                let text = std::fs::read_to_string(f)
                    .with_context(|| format!("reading --token-auth-file {}", f.display()))?;
                crwatch_apiserver::authn::parse_token_file(&text)
                    .map_err(|e| anyhow::anyhow!("token file {:?} {e}", f.display().to_string()))?
            }
            None => Vec::new(),
        },
        history_window: usize::try_from(args.history).context("--history")?,
        history_bytes: args.history_bytes,
        bookmark_interval: Duration::from_secs(args.bookmark_interval),
        state_file: args.state.clone(),
        simulate_workloads: !args.no_simulate_workloads,
        sim: crwatch_apiserver::SimConfig {
            pod_ready_delay: args.pod_ready_delay,
            nodes: usize::try_from(args.nodes).context("--nodes")?,
            ..crwatch_apiserver::SimConfig::default()
        },
        feature_gates: args.feature_gates.unwrap_or_default(),
        ..Config::default()
    })
    .await
    .context("starting the API server")?;
    for file in &args.crds {
        let applied = server
            .apply_file(file)
            .await
            .with_context(|| format!("applying {}", file.display()))?;
        for obj in applied {
            eprintln!(
                "applied {}/{}",
                obj["kind"].as_str().unwrap_or_default().to_ascii_lowercase(),
                obj["metadata"]["name"].as_str().unwrap_or_default()
            );
        }
    }
    server
        .write_kubeconfig(&args.kubeconfig)
        .with_context(|| format!("writing {}", args.kubeconfig.display()))?;
    let kubeconfig = std::fs::canonicalize(&args.kubeconfig).unwrap_or(args.kubeconfig.clone());
    println!(
        "crwatch-apiserver {} (Kubernetes v1.33 API)",
        env!("CARGO_PKG_VERSION")
    );
    println!("  serving {}", server.url());
    if let Some(u) = server.http_url() {
        println!("  serving {u} (plain HTTP, same token)");
    }
    println!("  kubeconfig: {}", kubeconfig.display());
    if let Some(gates) = args.feature_gates.filter(|g| !g.to_string().is_empty()) {
        println!("  feature gates: {gates}");
    }
    println!();
    println!("Point kubectl at it:");
    println!("  export KUBECONFIG={}", kubeconfig.display());
    println!("  kubectl get namespaces");
    println!();
    println!(
        "Press Ctrl-C to stop{}.",
        if args.state.is_some() {
            " (every acknowledged write is already saved)"
        } else {
            ""
        }
    );
    shutdown_signal().await;
    eprintln!("shutting down");
    server.shutdown().await.context("saving state")?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn delays_parse_and_are_range_checked() {
        use std::time::Duration;
        assert_eq!(super::parse_delay("200ms"), Ok(Duration::from_millis(200)));
        assert_eq!(super::parse_delay("0s"), Ok(Duration::ZERO));
        assert_eq!(super::parse_delay("2m"), Ok(Duration::from_secs(120)));
        assert!(
            super::parse_delay("2h")
                .unwrap_err()
                .contains("is not a duration")
        );
        assert!(super::parse_delay("61m").unwrap_err().contains("at most 1h"));
        assert!(super::parse_delay("").is_err());
    }

    #[test]
    fn sizes_parse_and_are_range_checked() {
        assert_eq!(parse_bytes("256Mi"), Ok(256 << 20));
        assert_eq!(parse_bytes("1048576"), Ok(1 << 20));
        assert_eq!(parse_bytes("1Ti"), Ok(1 << 40));
        assert_eq!(
            parse_bytes("1Ki").unwrap_err(),
            "1Ki is out of range: it must be between 1Mi and 1Ti"
        );
        assert!(parse_bytes("99999999999999999999Gi").is_err());
        assert!(parse_bytes("2GB").unwrap_err().contains("is not a size"));
        assert!(parse_bytes("").is_err());
    }
}
