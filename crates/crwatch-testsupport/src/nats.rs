//! A real `nats-server` with JetStream for tests, on a free loopback port with its store in a
//! temporary directory; it can be stopped and restarted on the same port with the same store.
//!
//! The server runs in its own process group under a small `sh` watchdog whose stdin is a pipe
//! from the test process: when the test process exits (even without running destructors, as
//! with a server kept in a `static`), the pipe closes and the watchdog kills the whole group.
//! The helpers for that ([`spawn_group`], [`kill_group`]) are shared with
//! [`crate::rabbitmq`].

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tempfile::TempDir;

use crate::process::{ChildGuard, free_port};

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
    child: Option<ChildGuard>,
    port: u16,
    binary: PathBuf,
    dir: TempDir,
}

impl NatsServer {
    /// Start `nats-server` with JetStream on a free loopback port and wait until it accepts
    /// connections.
    pub async fn start() -> anyhow::Result<Self> {
        let binary = find_binary("nats-server", &["/usr/sbin/nats-server", "/usr/bin/nats-server"])?;
        let dir = tempfile::Builder::new()
            .prefix("crwatch-nats-")
            .tempdir()
            .context("creating a temporary directory for nats-server")?;
        std::fs::create_dir_all(dir.path().join("jetstream"))?;
        let port = free_port()?;
        let mut server = Self {
            child: None,
            port,
            binary,
            dir,
        };
        server.spawn().await?;
        Ok(server)
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The JetStream store directory (kept across [`stop`](Self::stop) and
    /// [`restart`](Self::restart)).
    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("jetstream")
    }

    /// The server's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("nats-server.log")
    }

    /// Whether the server process is running.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.is_running())
    }

    /// Kill the server (SIGKILL, as a crash would), keeping its port and store for
    /// [`restart`](Self::restart). Clients see the connection drop.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_group(&mut child);
        }
    }

    /// Start the server again on the same port with the same JetStream store (stopping it
    /// first if it still runs), and wait until it accepts connections.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        wait_port_free(self.port, Duration::from_secs(10)).await?;
        self.spawn().await
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let port = self.port.to_string();
        let store = self.store_dir();
        let log = self.log_path();
        let args: Vec<&std::ffi::OsStr> = vec![
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
        let mut child = spawn_group(&self.binary, &args, &[], self.dir.path(), &log, "nats-server")?;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                break;
            }
            if !child.is_running() {
                bail!("nats-server exited during startup; its log:\n{}", log_tail(&log));
            }
            if Instant::now() > deadline {
                kill_group(&mut child);
                bail!(
                    "nats-server did not accept connections on {addr} within {START_TIMEOUT:?}; its log:\n{}",
                    log_tail(&log)
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        self.child = Some(child);
        Ok(())
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The watchdog: runs the command in the background with stdin from /dev/null, kills the whole
/// process group when its own stdin (a pipe from the test process) closes, and also when the
/// command exits (so the guard sees the exit).
const WATCHDOG: &str = r#"exec 3<&0 </dev/null
"$@" &
server=$!
{ read -r _ <&3; kill -s KILL 0; } &
wait "$server"
kill -s KILL 0
"#;

/// Spawn `program args` with `envs` under the watchdog in a new process group (the returned
/// guard's id is the group id); stdout and stderr go to `log`.
pub(crate) fn spawn_group(
    program: &Path,
    args: &[&std::ffi::OsStr],
    envs: &[(&str, &std::ffi::OsStr)],
    cwd: &Path,
    log: &Path,
    what: &str,
) -> anyhow::Result<ChildGuard> {
    use std::os::unix::process::CommandExt;

    let out = File::options()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let err = out.try_clone()?;
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(WATCHDOG).arg("sh").arg(program).args(args);
    cmd.envs(envs.iter().copied())
        .current_dir(cwd)
        .stdin(Stdio::piped())
        .stdout(out)
        .stderr(err)
        .process_group(0);
    ChildGuard::spawn(cmd, what)
}

/// Kill the process group led by `child` (SIGKILL to all its members), then reap the leader.
/// Processes that left the group (Erlang's `erl_child_setup` starts its own session) exit by
/// themselves once their parent is gone.
pub(crate) fn kill_group(child: &mut ChildGuard) {
    if let Some(pgid) = child.id() {
        let _ = Command::new("kill")
            .args(["-s", "KILL", "--", &format!("-{pgid}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    child.kill();
}

/// Wait until nothing listens on 127.0.0.1:`port` any more (a bind succeeds), so a restarted
/// server can take the port again.
pub(crate) async fn wait_port_free(port: u16, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("port {port} still in use {timeout:?} after the server was killed");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// `name` on `PATH`, else the first existing `fallbacks` entry (Debian puts servers in
/// `/usr/sbin`, which is not on every user's `PATH`).
pub(crate) fn find_binary(name: &str, fallbacks: &[&str]) -> anyhow::Result<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(name));
    on_path
        .chain(fallbacks.iter().map(PathBuf::from))
        .find(|p| p.is_file())
        .with_context(|| {
            format!("{name} not found on PATH or in {fallbacks:?}; install it (apt-get install)")
        })
}

/// The last lines of a log file, for error messages.
pub(crate) fn log_tail(path: &Path) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(40)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
