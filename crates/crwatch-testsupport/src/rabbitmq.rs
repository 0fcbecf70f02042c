//! A real RabbitMQ broker for tests: `rabbitmq-server` on free loopback ports (AMQP,
//! distribution and its own `epmd`, so parallel test binaries never meet), with its data, logs,
//! configuration and Erlang cookie in a temporary directory; it can be stopped and restarted on
//! the same ports with the same data.
//!
//! Startup takes a few seconds (about 5 s on an idle machine); tests share one broker per test
//! binary where they can. Everything runs in process groups under the watchdog of
//! [`crate::process`], so `epmd`, `beam.smp` and their helpers die with the test process.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tempfile::TempDir;

use crate::process::{
    ChildGuard, find_binary, free_port, kill_group, log_tail, owned_tempdir, spawn_group, wait_port_free,
};

/// How long the broker may take to accept an AMQP connection.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Debian's broker start script.
const SERVER_SCRIPT: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";

/// A running `rabbitmq-server` (user `guest`, password `guest`, vhost `/`), killed and its data
/// removed when dropped.
///
/// ```no_run
/// # async fn demo() -> anyhow::Result<()> {
/// let mut rabbit = crwatch_testsupport::rabbitmq::RabbitMq::start().await?;
/// println!("{}", rabbit.url()); // amqp://guest:guest@127.0.0.1:PORT/%2f
/// rabbit.stop();
/// rabbit.restart().await?; // same ports, same data
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct RabbitMq {
    server: Option<ChildGuard>,
    epmd: Option<ChildGuard>,
    amqp_port: u16,
    dist_port: u16,
    epmd_port: u16,
    server_binary: PathBuf,
    epmd_binary: PathBuf,
    dir: TempDir,
}

impl RabbitMq {
    /// Start `epmd` and `rabbitmq-server` on free loopback ports and wait until the broker
    /// accepts an AMQP connection (up to 60 s).
    pub async fn start() -> anyhow::Result<Self> {
        // The script itself, not /usr/sbin/rabbitmq-server, which switches to the `rabbitmq`
        // user through `su` and loses our environment.
        let server_binary = PathBuf::from(SERVER_SCRIPT);
        if !server_binary.is_file() {
            bail!("{SERVER_SCRIPT} not found; install Debian's rabbitmq-server (apt-get install)");
        }
        let epmd_binary = find_binary("epmd", &["/usr/bin/epmd"])?;
        let dir = owned_tempdir("crwatch-rabbitmq-")?;
        let amqp_port = free_port()?;
        let mut dist_port = free_port()?;
        while dist_port == amqp_port {
            dist_port = free_port()?;
        }
        let mut epmd_port = free_port()?;
        while epmd_port == amqp_port || epmd_port == dist_port {
            epmd_port = free_port()?;
        }
        for sub in ["home", "mnesia", "log"] {
            std::fs::create_dir_all(dir.path().join(sub))?;
        }
        std::fs::write(
            dir.path().join("rabbitmq.conf"),
            format!(
                "listeners.tcp.default = 127.0.0.1:{amqp_port}\n\
                 log.console = false\n\
                 log.file.level = info\n\
                 disk_free_limit.absolute = 1MB\n"
            ),
        )?;
        std::fs::write(dir.path().join("enabled_plugins"), "[].\n")?;
        let mut broker = Self {
            server: None,
            epmd: None,
            amqp_port,
            dist_port,
            epmd_port,
            server_binary,
            epmd_binary,
            dir,
        };
        broker.spawn().await?;
        Ok(broker)
    }

    /// `amqp://guest:guest@127.0.0.1:PORT/%2f`.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.amqp_port)
    }

    /// The AMQP port.
    pub fn port(&self) -> u16 {
        self.amqp_port
    }

    /// The Erlang node name, `crwatch-<amqp port>@localhost`.
    pub fn node_name(&self) -> String {
        format!("crwatch-{}@localhost", self.amqp_port)
    }

    /// The broker's main log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir
            .path()
            .join("log")
            .join(format!("{}.log", self.node_name()))
    }

    /// Whether the broker process is running.
    pub fn is_running(&mut self) -> bool {
        self.server.as_mut().is_some_and(|c| c.is_running())
    }

    /// Kill the broker and its `epmd` (SIGKILL, as a crash would), keeping ports and data for
    /// [`restart`](Self::restart). Clients see their connections drop.
    pub fn stop(&mut self) {
        if let Some(mut server) = self.server.take() {
            kill_group(&mut server);
        }
        if let Some(mut epmd) = self.epmd.take() {
            kill_group(&mut epmd);
        }
    }

    /// Start the broker again on the same ports with the same data (stopping it first if it
    /// still runs), and wait until it accepts an AMQP connection.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        for port in [self.amqp_port, self.dist_port, self.epmd_port] {
            wait_port_free(port, Duration::from_secs(10)).await?;
        }
        self.spawn().await
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let base = self.dir.path().to_path_buf();
        let epmd_log = base.join("epmd.log");
        let epmd_port = self.epmd_port.to_string();
        let mut epmd = spawn_group(
            &self.epmd_binary,
            &[
                "-port".as_ref(),
                epmd_port.as_ref(),
                "-address".as_ref(),
                "127.0.0.1".as_ref(),
            ],
            &[],
            &base,
            &epmd_log,
            "epmd",
        )?;
        let epmd_addr = SocketAddr::from(([127, 0, 0, 1], self.epmd_port));
        if let Err(e) = crate::wait_for_tcp(epmd_addr, Duration::from_secs(10)).await {
            kill_group(&mut epmd);
            bail!("{e}; epmd's log:\n{}", log_tail(&epmd_log));
        }
        self.epmd = Some(epmd);

        let out_log = base.join("rabbitmq-server.out");
        let node = self.node_name();
        let dist_port = self.dist_port.to_string();
        let p = |sub: &str| base.join(sub).into_os_string();
        let (home, mnesia, log) = (p("home"), p("mnesia"), p("log"));
        let (config, plugins, env_conf) = (p("rabbitmq.conf"), p("enabled_plugins"), p("rabbitmq-env.conf"));
        let envs: Vec<(&str, &std::ffi::OsStr)> = vec![
            ("HOME", &home),
            ("ERL_EPMD_PORT", epmd_port.as_ref()),
            ("ERL_EPMD_ADDRESS", "127.0.0.1".as_ref()),
            ("RABBITMQ_NODENAME", node.as_ref()),
            ("RABBITMQ_USE_LONGNAME", "false".as_ref()),
            ("RABBITMQ_DIST_PORT", dist_port.as_ref()),
            ("RABBITMQ_MNESIA_BASE", &mnesia),
            ("RABBITMQ_LOG_BASE", &log),
            ("RABBITMQ_CONFIG_FILE", &config),
            ("RABBITMQ_ENABLED_PLUGINS_FILE", &plugins),
            // Not created: keeps /etc/rabbitmq/rabbitmq-env.conf out.
            ("RABBITMQ_CONF_ENV_FILE", &env_conf),
            (
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}".as_ref(),
            ),
        ];
        let mut server = spawn_group(
            &self.server_binary,
            &[],
            &envs,
            &base,
            &out_log,
            "rabbitmq-server",
        )?;

        let deadline = Instant::now() + START_TIMEOUT;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.amqp_port));
        let mut last_error = String::from("no attempt yet");
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                match amqp_probe(&self.url()).await {
                    Ok(()) => break,
                    Err(e) => last_error = format!("{e:#}"),
                }
            }
            if !server.is_running() {
                let log = self.failure_logs(&out_log);
                self.stop();
                bail!("rabbitmq-server exited during startup:\n{log}");
            }
            if Instant::now() > deadline {
                let log = self.failure_logs(&out_log);
                kill_group(&mut server);
                self.stop();
                bail!(
                    "rabbitmq-server did not accept an AMQP connection on {addr} within \
                     {START_TIMEOUT:?} (last error: {last_error}):\n{log}"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.server = Some(server);
        Ok(())
    }

    fn failure_logs(&self, out_log: &Path) -> String {
        format!(
            "--- {}:\n{}\n--- {}:\n{}",
            out_log.display(),
            log_tail(out_log),
            self.log_path().display(),
            log_tail(&self.log_path())
        )
    }
}

impl Drop for RabbitMq {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Open and close a real AMQP connection (the TCP listener opens before the broker is fully
/// ready to serve).
async fn amqp_probe(url: &str) -> anyhow::Result<()> {
    let connect = lapin::Connection::connect(url, lapin::ConnectionProperties::default());
    let conn = tokio::time::timeout(Duration::from_secs(5), connect)
        .await
        .context("AMQP handshake timed out")?
        .context("AMQP connect")?;
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.close(200, "probe".into())).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn starts_stops_and_restarts_on_the_same_ports() {
        let started = Instant::now();
        let mut broker = RabbitMq::start().await.unwrap();
        eprintln!("rabbitmq-server started in {:?}", started.elapsed());
        assert!(broker.url().starts_with("amqp://guest:guest@127.0.0.1:"));
        amqp_probe(&broker.url()).await.unwrap();
        broker.stop();
        assert!(!broker.is_running());
        assert!(amqp_probe(&broker.url()).await.is_err());
        let restarted = Instant::now();
        broker.restart().await.unwrap();
        eprintln!("rabbitmq-server restarted in {:?}", restarted.elapsed());
        amqp_probe(&broker.url()).await.unwrap();
    }
}
