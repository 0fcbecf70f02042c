//! A real MQTT broker for tests: Debian's `mosquitto` (2.0) on a free loopback port with its
//! own configuration file, persistence directory and log in a temporary directory; optionally
//! with users (`password_file`, anonymous access off) and a TLS listener on a second free port
//! (the caller supplies the PEM files, e.g. from `rcgen`). It can be stopped cleanly (which
//! saves its persistence file, so persistent sessions and their queued messages survive), killed
//! like a crash, and restarted on the same ports with the same data, for broker-down tests.
//!
//! The broker runs in its own process group under the watchdog of [`crate::process`], so it dies
//! with the test process even when kept in a `static`. Readiness is a real MQTT exchange
//! (CONNECT answered by a CONNACK), not just an open port.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::process::{ServerProcess, find_binary, free_port, wait_port_free};

/// How long `mosquitto` may take to answer a CONNECT.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// How the broker is set up; `Default` is a plain broker that allows anonymous clients.
#[derive(Clone, Default)]
pub struct MosquittoOptions {
    /// Users and their passwords; when not empty, anonymous clients are refused.
    pub users: Vec<(String, String)>,
    /// Also serve MQTT over TLS on a second free port.
    pub tls: Option<MosquittoTls>,
}

/// The TLS listener's files, as PEM text.
#[derive(Clone)]
pub struct MosquittoTls {
    /// The server certificate (chain), valid for `localhost` and/or `127.0.0.1`.
    pub cert_pem: String,
    /// The server certificate's private key.
    pub key_pem: String,
    /// When set, clients must present a certificate signed by this CA.
    pub client_ca_pem: Option<String>,
}

impl std::fmt::Debug for MosquittoOptions {
    // Passwords and keys stay out of test output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MosquittoOptions")
            .field("users", &self.users.iter().map(|(u, _)| u).collect::<Vec<_>>())
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// A running `mosquitto`, killed and its directory removed when dropped.
///
/// ```no_run
/// # async fn demo() -> anyhow::Result<()> {
/// let mut broker = crwatch_testsupport::mosquitto::Mosquitto::start().await?;
/// println!("{}", broker.url()); // mqtt://127.0.0.1:PORT
/// broker.stop(); // clean: sessions and queued messages are saved
/// broker.restart().await?; // same port, same data
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Mosquitto {
    process: ServerProcess,
    binary: PathBuf,
    tls_port: Option<u16>,
}

impl Mosquitto {
    /// Start a broker allowing anonymous clients on a free loopback port, and wait until it
    /// answers an MQTT CONNECT.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(MosquittoOptions::default()).await
    }

    /// Start a broker set up as `options` says.
    pub async fn start_with(options: MosquittoOptions) -> anyhow::Result<Self> {
        let binary = find_binary("mosquitto", &["/usr/sbin/mosquitto"])?;
        // As root, mosquitto would switch to the `mosquitto` user, which cannot use our
        // directory; started as `nobody` it stays that user.
        let process = ServerProcess::unprivileged("mosquitto", "crwatch-mosquitto-", START_TIMEOUT)?;
        let port = process.port();
        let data = process.make_dir("data")?;
        let mut conf = format!(
            "persistence true\n\
             persistence_location {data}/\n\
             autosave_interval 1\n\
             pid_file {pid}\n\
             log_dest stderr\n\
             log_type error\nlog_type warning\nlog_type notice\nlog_type information\n\
             connection_messages true\n\
             max_queued_messages 100000\n",
            data = data.display(),
            pid = process.path("mosquitto.pid").display(),
        );
        if options.users.is_empty() {
            conf.push_str("allow_anonymous true\n");
        } else {
            let passwords = process.write_file("passwords", "")?;
            let passwd = find_binary("mosquitto_passwd", &["/usr/bin/mosquitto_passwd"])?;
            for (user, password) in &options.users {
                let mut cmd = tokio::process::Command::new(&passwd);
                cmd.arg("-b").arg(&passwords).arg(user).arg(password);
                process
                    .run_setup(cmd, "mosquitto_passwd")
                    .await
                    .with_context(|| format!("adding the MQTT user {user}"))?;
            }
            conf.push_str(&format!(
                "allow_anonymous false\npassword_file {}\n",
                passwords.display()
            ));
        }
        conf.push_str(&format!("listener {port} 127.0.0.1\n"));
        let mut tls_port = None;
        if let Some(tls) = &options.tls {
            let mut p = free_port()?;
            while p == port {
                p = free_port()?;
            }
            let cert = process.write_file("server.crt", &tls.cert_pem)?;
            let key = process.write_file("server.key", &tls.key_pem)?;
            conf.push_str(&format!(
                "listener {p} 127.0.0.1\ncertfile {}\nkeyfile {}\n",
                cert.display(),
                key.display()
            ));
            if let Some(ca) = &tls.client_ca_pem {
                let ca = process.write_file("client-ca.crt", ca)?;
                conf.push_str(&format!("cafile {}\nrequire_certificate true\n", ca.display()));
            }
            tls_port = Some(p);
        }
        process.write_file("mosquitto.conf", &conf)?;
        let mut broker = Self {
            process,
            binary,
            tls_port,
        };
        broker.spawn().await?;
        Ok(broker)
    }

    /// `mqtt://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port())
    }

    /// The plain MQTT port.
    pub fn port(&self) -> u16 {
        self.process.port()
    }

    /// The TLS port, when the broker has a TLS listener.
    pub fn tls_port(&self) -> Option<u16> {
        self.tls_port
    }

    /// The broker's log file.
    pub fn log_path(&self) -> PathBuf {
        self.process.path("mosquitto.log")
    }

    /// The last lines of the broker's log (for assertion messages).
    pub fn log_tail(&self) -> String {
        crate::process::log_tail(&self.log_path())
    }

    /// Whether the broker process is running.
    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    /// Stop the broker cleanly (SIGTERM): it saves its persistence file first, so persistent
    /// sessions, their subscriptions and queued messages survive a [`restart`](Self::restart).
    /// Clients see their connections drop.
    pub fn stop(&mut self) {
        let pid_file = self.process.path("mosquitto.pid");
        self.process.stop_with("TERM", &pid_file);
    }

    /// Kill the broker (SIGKILL, as a crash would): what it did not save yet (it saves every
    /// second) is lost.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Start the broker again on the same ports with the same data (stopping it cleanly first
    /// if it still runs), and wait until it answers a CONNECT.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.process.wait_port_free().await?;
        if let Some(p) = self.tls_port {
            wait_port_free(p, Duration::from_secs(10)).await?;
        }
        self.spawn().await
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let conf = self.process.path("mosquitto.conf");
        let log = self.log_path();
        let port = self.port();
        let child = self
            .process
            .launch(
                &self.binary,
                &["-c".as_ref(), conf.as_os_str()],
                &log,
                &[],
                "answer an MQTT CONNECT",
                async || connack(port).await,
            )
            .await?;
        self.process.started(child);
        if let Some(p) = self.tls_port {
            crate::wait_for_tcp(SocketAddr::from(([127, 0, 0, 1], p)), START_TIMEOUT)
                .await
                .with_context(|| format!("mosquitto's TLS listener; its log:\n{}", self.log_tail()))?;
        }
        Ok(())
    }

    /// The broker's directory (configuration, persistence, log).
    pub fn dir(&self) -> &Path {
        self.process.dir()
    }
}

/// Whether the broker on `port` answers an MQTT 3.1.1 CONNECT with a CONNACK (any return code:
/// a broker refusing anonymous clients serves too).
async fn connack(port: u16) -> bool {
    let probe = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        // CONNECT: protocol "MQTT" level 4, clean session, keep-alive 60 s, client id "probe".
        let connect: [u8; 19] = [
            0x10, 17, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 5, b'p', b'r', b'o', b'b', b'e',
        ];
        stream.write_all(&connect).await?;
        let mut ack = [0u8; 4];
        stream.read_exact(&mut ack).await?;
        // DISCONNECT, so the broker logs a clean goodbye.
        let _ = stream.write_all(&[0xe0, 0]).await;
        Ok::<bool, std::io::Error>(ack[0] == 0x20 && ack[1] == 2)
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(5), probe).await,
        Ok(Ok(true))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn starts_stops_and_restarts_on_the_same_port() {
        let mut broker = Mosquitto::start().await.unwrap();
        assert!(broker.url().starts_with("mqtt://127.0.0.1:"));
        assert!(connack(broker.port()).await);
        broker.stop();
        assert!(!broker.is_running());
        assert!(!connack(broker.port()).await);
        broker.restart().await.unwrap();
        assert!(broker.is_running());
        assert!(connack(broker.port()).await);
        broker.kill();
        assert!(!broker.is_running());
        broker.restart().await.unwrap();
        assert!(connack(broker.port()).await);
    }
}
