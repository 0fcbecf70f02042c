//! A real `nats-server` with JetStream for tests, on a free loopback port with its store in a
//! temporary directory; it can be stopped and restarted on the same port with the same store.
//!
//! The server runs in its own process group under the watchdog of [`crate::process`], so it
//! dies with the test process even when kept in a `static`.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::time::Duration;

use crate::process::{ServerProcess, find_binary, owned_tempdir};

/// How long `nats-server` may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running `nats-server -js`, killed and its store removed when dropped.
///
/// ```no_run
/// # async fn demo() -> anyhow::Result<()> {
/// let mut nats = crwatch_testsupport::nats::NatsServer::start().await?;
/// println!("{}", nats.url()); // nats://127.0.0.1:PORT
/// nats.stop();
/// nats.restart().await?; // same port, same JetStream store
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct NatsServer {
    process: ServerProcess,
    binary: PathBuf,
}

impl NatsServer {
    /// Start `nats-server` with JetStream on a free loopback port and wait until it accepts
    /// connections.
    pub async fn start() -> anyhow::Result<Self> {
        let binary = find_binary("nats-server", &["/usr/sbin/nats-server", "/usr/bin/nats-server"])?;
        let dir = owned_tempdir("crwatch-nats-")?;
        std::fs::create_dir_all(dir.path().join("jetstream"))?;
        let mut server = Self {
            process: ServerProcess::new("nats-server", dir, START_TIMEOUT)?,
            binary,
        };
        server.spawn().await?;
        Ok(server)
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port())
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.process.port()
    }

    /// The JetStream store directory (kept across [`stop`](Self::stop) and
    /// [`restart`](Self::restart)).
    pub fn store_dir(&self) -> PathBuf {
        self.process.path("jetstream")
    }

    /// The server's log file.
    pub fn log_path(&self) -> PathBuf {
        self.process.path("nats-server.log")
    }

    /// Whether the server process is running.
    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    /// Kill the server (SIGKILL, as a crash would), keeping its port and store for
    /// [`restart`](Self::restart). Clients see the connection drop.
    pub fn stop(&mut self) {
        self.process.kill();
    }

    /// Start the server again on the same port with the same JetStream store (stopping it
    /// first if it still runs), and wait until it accepts connections.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.process.wait_port_free().await?;
        self.spawn().await
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let port = self.port().to_string();
        let store = self.store_dir();
        let args: [&OsStr; 9] = [
            "-a".as_ref(),
            "127.0.0.1".as_ref(),
            "-p".as_ref(),
            port.as_ref(),
            "-js".as_ref(),
            "-sd".as_ref(),
            store.as_os_str(),
            "-n".as_ref(),
            "crwatch-test".as_ref(),
        ];
        let log = self.log_path();
        let child = self
            .process
            .launch(&self.binary, &args, &log, &[], "accept connections", async || {
                true
            })
            .await?;
        self.process.started(child);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::process::wait_port_free;

    #[tokio::test]
    async fn starts_stops_and_restarts_on_the_same_port() {
        let mut server = NatsServer::start().await.unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], server.port()));
        assert!(server.url().starts_with("nats://127.0.0.1:"));
        assert!(tokio::net::TcpStream::connect(addr).await.is_ok());
        server.stop();
        assert!(!server.is_running());
        wait_port_free(server.port(), Duration::from_secs(10))
            .await
            .unwrap();
        server.restart().await.unwrap();
        assert!(server.is_running());
        assert!(tokio::net::TcpStream::connect(addr).await.is_ok());
        assert!(server.store_dir().is_dir());
    }
}
