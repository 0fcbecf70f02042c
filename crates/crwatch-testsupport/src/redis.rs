//! A real `redis-server` for tests (Debian's, 7.x) on a free loopback port with its own
//! directory: append-only file with `appendfsync always`, so a server killed like a crash and
//! restarted on the same port keeps every write it acknowledged; optional `requirepass` and an
//! optional TLS port (the caller supplies the PEM files, e.g. from `rcgen`).
//!
//! The server runs in its own process group under the watchdog of [`crate::process`], so it
//! dies with the test process even when kept in a `static`. Readiness is a real RESP exchange
//! (`AUTH` when a password is set, then `PING` answered `+PONG`), not just an open port: a
//! restarted server replays its append-only file first and answers `-LOADING` meanwhile.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::process::{ServerProcess, find_binary, free_port, owned_tempdir};

/// How long `redis-server` may take to answer `PING`.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// How the server is set up; `Default` is a plain server without a password.
#[derive(Clone, Default)]
pub struct RedisOptions {
    /// `requirepass`: clients must `AUTH` with this password (user `default`).
    pub password: Option<String>,
    /// Also serve TLS on a second free port.
    pub tls: Option<RedisTls>,
}

impl std::fmt::Debug for RedisOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the password.
        f.debug_struct("RedisOptions")
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("tls", &self.tls)
            .finish()
    }
}

/// PEM files for the TLS port.
#[derive(Debug, Clone)]
pub struct RedisTls {
    /// The server certificate (`tls-cert-file`).
    pub cert_file: PathBuf,
    /// Its private key (`tls-key-file`).
    pub key_file: PathBuf,
    /// The CA that client certificates must chain to (`tls-ca-cert-file`).
    pub ca_file: PathBuf,
    /// Require a client certificate (`tls-auth-clients yes`); otherwise optional.
    pub require_client_cert: bool,
}

/// A running `redis-server`, killed and its directory removed when dropped.
///
/// ```no_run
/// # async fn demo() -> anyhow::Result<()> {
/// let mut redis = crwatch_testsupport::redis::RedisServer::start().await?;
/// println!("{}", redis.url()); // redis://127.0.0.1:PORT/0
/// redis.stop();
/// redis.restart().await?; // same port, same data (append-only file)
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct RedisServer {
    process: ServerProcess,
    binary: PathBuf,
    options: RedisOptions,
    tls_port: Option<u16>,
}

impl RedisServer {
    /// Start a plain `redis-server` on a free loopback port and wait until it answers `PING`.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(RedisOptions::default()).await
    }

    /// Start `redis-server` set up as `options` says and wait until it answers `PING`.
    pub async fn start_with(options: RedisOptions) -> anyhow::Result<Self> {
        let binary = find_binary("redis-server", &["/usr/bin/redis-server"])?;
        let dir = owned_tempdir("crwatch-redis-")?;
        let process = ServerProcess::new("redis-server", dir, START_TIMEOUT)?;
        let tls_port = match options.tls {
            Some(_) => {
                let mut port = free_port()?;
                while port == process.port() {
                    port = free_port()?;
                }
                Some(port)
            }
            None => None,
        };
        let mut server = Self {
            process,
            binary,
            options,
            tls_port,
        };
        server.write_config()?;
        server.spawn().await?;
        Ok(server)
    }

    /// `redis://127.0.0.1:PORT/0` (no password in it; see [`password`](Self::password)).
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port())
    }

    /// `rediss://localhost:TLS_PORT/0` when the server has a TLS port.
    pub fn tls_url(&self) -> Option<String> {
        self.tls_port.map(|p| format!("rediss://localhost:{p}/0"))
    }

    /// The plain-text port.
    pub fn port(&self) -> u16 {
        self.process.port()
    }

    /// The password clients must give, if any.
    pub fn password(&self) -> Option<&str> {
        self.options.password.as_deref()
    }

    /// The server's log file.
    pub fn log_path(&self) -> PathBuf {
        self.process.path("redis-server.log")
    }

    /// Whether the server process is running.
    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    /// Kill the server (SIGKILL, as a crash would), keeping its port and data for
    /// [`restart`](Self::restart). Every write it acknowledged is in the append-only file
    /// (`appendfsync always`).
    pub fn stop(&mut self) {
        self.process.kill();
    }

    /// Start the server again on the same port(s) with the same data (stopping it first if it
    /// still runs), and wait until it answers `PING` (after replaying its append-only file).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.process.wait_port_free().await?;
        if let Some(port) = self.tls_port {
            crate::process::wait_port_free(port, Duration::from_secs(10)).await?;
        }
        self.spawn().await
    }

    /// Run one command over RESP on the plain port (after `AUTH` when a password is set) and
    /// return the raw reply bytes, e.g. `+PONG\r\n`. For probes and simple checks; tests that
    /// read data back use a real client.
    pub async fn command(&self, args: &[&str]) -> anyhow::Result<Vec<u8>> {
        command(self.port(), self.password(), args).await
    }

    fn write_config(&self) -> anyhow::Result<()> {
        let dir = self.process.dir();
        let mut conf = format!(
            "bind 127.0.0.1\n\
             port {port}\n\
             dir {dir}\n\
             daemonize no\n\
             logfile \"\"\n\
             save \"\"\n\
             appendonly yes\n\
             appendfsync always\n\
             appenddirname appendonly\n",
            port = self.port(),
            dir = quote(dir),
        );
        if let Some(password) = &self.options.password {
            conf.push_str(&format!("requirepass {}\n", quote(Path::new(password))));
        }
        if let (Some(tls), Some(port)) = (&self.options.tls, self.tls_port) {
            conf.push_str(&format!(
                "tls-port {port}\n\
                 tls-cert-file {}\n\
                 tls-key-file {}\n\
                 tls-ca-cert-file {}\n\
                 tls-auth-clients {}\n",
                quote(&tls.cert_file),
                quote(&tls.key_file),
                quote(&tls.ca_file),
                if tls.require_client_cert {
                    "yes"
                } else {
                    "optional"
                },
            ));
        }
        let path = self.process.path("redis.conf");
        // The file may hold the password: readable by its owner only.
        std::fs::write(&path, conf).with_context(|| format!("writing {}", path.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        Ok(())
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let conf = self.process.path("redis.conf");
        let log = self.log_path();
        let port = self.port();
        let password = self.options.password.clone();
        let child = self
            .process
            .launch(&self.binary, &[conf.as_os_str()], &log, &[], "answer PING", async || {
                matches!(command(port, password.as_deref(), &["PING"]).await, Ok(r) if r.starts_with(b"+PONG"))
            })
            .await?;
        self.process.started(child);
        Ok(())
    }
}

/// `"..."` with `\` and `"` escaped, as redis.conf reads strings.
fn quote(path: &Path) -> String {
    let s = path.to_string_lossy();
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A RESP array of bulk strings.
fn resp(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Send `AUTH` (if `password`) and `args` to 127.0.0.1:`port`; return the reply to `args`
/// (read until the server closes after `QUIT`, within 5 s).
async fn command(port: u16, password: Option<&str>, args: &[&str]) -> anyhow::Result<Vec<u8>> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let mut request = Vec::new();
        if let Some(p) = password {
            request.extend(resp(&["AUTH", p]));
        }
        request.extend(resp(args));
        request.extend(resp(&["QUIT"]));
        stream.write_all(&request).await?;
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply).await?;
        anyhow::Ok(reply)
    };
    let mut reply = tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .context("redis-server did not answer within 5s")??;
    if password.is_some() {
        // Drop the AUTH reply (`+OK\r\n`, or an error line).
        let end = reply
            .windows(2)
            .position(|w| w == b"\r\n")
            .map(|i| i + 2)
            .unwrap_or(reply.len());
        reply.drain(..end);
    }
    // Drop QUIT's `+OK\r\n` at the end.
    if reply.ends_with(b"+OK\r\n") {
        reply.truncate(reply.len() - 5);
    }
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn starts_keeps_data_across_a_restart_on_the_same_port() {
        let mut server = RedisServer::start().await.unwrap();
        assert!(server.url().starts_with("redis://127.0.0.1:"));
        assert_eq!(server.command(&["SET", "k", "v"]).await.unwrap(), b"+OK\r\n");
        let port = server.port();
        server.stop();
        assert!(!server.is_running());
        assert!(server.command(&["PING"]).await.is_err());
        server.restart().await.unwrap();
        assert_eq!(server.port(), port);
        assert_eq!(server.command(&["GET", "k"]).await.unwrap(), b"$1\r\nv\r\n");
    }

    #[tokio::test]
    async fn requirepass_refuses_clients_without_the_password() {
        let server = RedisServer::start_with(RedisOptions {
            password: Some("p4ss w\"rd".into()),
            tls: None,
        })
        .await
        .unwrap();
        assert_eq!(server.command(&["PING"]).await.unwrap(), b"+PONG\r\n");
        let anonymous = command(server.port(), None, &["PING"]).await.unwrap();
        assert!(
            anonymous.starts_with(b"-NOAUTH"),
            "{}",
            String::from_utf8_lossy(&anonymous)
        );
        assert!(!format!("{:?}", server).contains("p4ss"));
    }
}
