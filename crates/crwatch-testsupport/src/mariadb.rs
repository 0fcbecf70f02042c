//! A real MariaDB server for tests: `mariadb-install-db` into a temporary directory, then
//! `mariadbd` listening only on 127.0.0.1 at a free port, with an administrator `admin` (a
//! random password, `ALL PRIVILEGES ON *.* WITH GRANT OPTION`) reachable over TCP; it can be
//! stopped and restarted on the same port with the same data.
//!
//! Grant tables are real (no `--skip-grant-tables`), so tests see the server's actual
//! authentication and privilege checks. When the test runs as root, the server runs as
//! `nobody` (as [`crate::postgres`] does) rather than with `--user=root`. The server runs in its
//! own process group under the watchdog of [`crate::nats`], so it dies with the test process.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tempfile::TempDir;

use crate::nats::{find_binary, kill_group, log_tail, spawn_group, wait_port_free};
use crate::postgres::{
    SETPRIV, owned_tempdir, random_password, read_pid, setpriv_args, signal, unprivileged_user_if_root,
};
use crate::process::{ChildGuard, free_port};

/// How long installation plus the first start may take, and how long a restart may take.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a clean shutdown may take before the server is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// Server options for installation and every start: small, since tests want speed and a small
/// footprint (the default redo log alone is 96 MB), not durability.
const SERVER_OPTIONS: &[&str] = &[
    "--innodb-buffer-pool-size=32M",
    "--innodb-log-file-size=8M",
    "--innodb-flush-log-at-trx-commit=0",
];

/// The administrator account `admin_url` logs in as.
const ADMIN_USER: &str = "admin";

/// A running MariaDB server, killed and its data removed when dropped.
///
/// ```no_run
/// # async fn demo() -> anyhow::Result<()> {
/// let mut db = crwatch_testsupport::mariadb::MariaDb::start().await?;
/// println!("{}", db.admin_url()); // mysql://admin:PASSWORD@127.0.0.1:PORT/
/// db.stop(); // clean shutdown; clients see their connections closed
/// db.restart().await?; // same port, same data
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct MariaDb {
    child: Option<ChildGuard>,
    port: u16,
    password: String,
    server: PathBuf,
    client: PathBuf,
    run_as: Option<(u32, u32)>,
    dir: TempDir,
}

impl MariaDb {
    /// Install the system tables with `mariadb-install-db` (no test database; `root` only
    /// through the Unix socket; `admin`@`127.0.0.1` with a random password and every privilege
    /// with grant option), start `mariadbd` on a free loopback port and wait until `admin` can
    /// log in over TCP.
    pub async fn start() -> anyhow::Result<Self> {
        let install = find_binary("mariadb-install-db", &["/usr/bin/mariadb-install-db"])?;
        let server = find_binary("mariadbd", &["/usr/sbin/mariadbd"])?;
        let client = find_binary("mariadb", &["/usr/bin/mariadb"])?;
        let dir = owned_tempdir("crwatch-mariadb-")?;
        let run_as = unprivileged_user_if_root(dir.path())?;
        let password = random_password()?;
        // Bootstrap runs without grant tables; FLUSH PRIVILEGES loads them so that CREATE USER
        // and GRANT work in the extra file.
        let init = dir.path().join("init.sql");
        std::fs::write(
            &init,
            format!(
                "FLUSH PRIVILEGES;\n\
                 CREATE USER '{ADMIN_USER}'@'127.0.0.1' IDENTIFIED BY '{password}';\n\
                 GRANT ALL PRIVILEGES ON *.* TO '{ADMIN_USER}'@'127.0.0.1' WITH GRANT OPTION;\n"
            ),
        )
        .context("writing the bootstrap SQL")?;
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(&init, Some(uid), Some(gid))?;
        }
        let mut cmd = tokio::process::Command::new(install);
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", dir.path().join("data").display()))
            .args([
                "--auth-root-authentication-method=socket",
                "--skip-test-db",
                "--skip-name-resolve",
            ])
            .arg(format!("--extra-file={}", init.display()))
            .args(SERVER_OPTIONS)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if let Some((uid, gid)) = run_as {
            cmd.uid(uid).gid(gid);
        }
        let out = tokio::time::timeout(START_TIMEOUT, cmd.output())
            .await
            .context("mariadb-install-db timed out")?
            .context("running mariadb-install-db")?;
        std::fs::remove_file(&init).context("removing the bootstrap SQL")?;
        if !out.status.success() {
            bail!(
                "mariadb-install-db failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut db = Self {
            child: None,
            port: free_port()?,
            password,
            server,
            client,
            run_as,
            dir,
        };
        db.spawn().await?;
        Ok(db)
    }

    /// `mysql://admin:PASSWORD@127.0.0.1:PORT/`: the administrator, over TCP.
    pub fn admin_url(&self) -> String {
        format!("mysql://{ADMIN_USER}:{}@127.0.0.1:{}/", self.password, self.port)
    }

    /// The administrator's user name, `admin`.
    pub fn admin_user(&self) -> &'static str {
        ADMIN_USER
    }

    /// The administrator's password (alphanumeric).
    pub fn password(&self) -> &str {
        &self.password
    }

    /// `127.0.0.1`: the only address the server listens on.
    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory (kept across [`stop`](Self::stop) and [`restart`](Self::restart)).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The server's error log.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("mariadbd.log")
    }

    /// Whether the server process is running.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.is_running())
    }

    /// Stop the server cleanly (SIGTERM: connections are closed, data is kept), killing it if
    /// it has not exited within 15 s. Returns once the process is gone.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = read_pid(&self.pid_path()) {
            signal(pid, "TERM");
            let deadline = Instant::now() + STOP_TIMEOUT;
            // The watchdog (the guard's process) exits right after the server does.
            while child.is_running() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        kill_group(&mut child);
    }

    /// Start the server again on the same port with the same data (stopping it first if it
    /// still runs), and wait until `admin` can log in.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        wait_port_free(self.port, Duration::from_secs(10)).await?;
        self.spawn().await
    }

    fn pid_path(&self) -> PathBuf {
        self.dir.path().join("mariadbd.pid")
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let log = self.log_path();
        // Output of the process itself (before the error log is open) goes to a second file.
        let console = self.dir.path().join("mariadbd.out");
        let mut owned: Vec<String> = self.run_as.map(setpriv_args).unwrap_or_default();
        if self.run_as.is_some() {
            owned.push(self.server.display().to_string());
        }
        owned.extend([
            "--no-defaults".to_string(),
            format!("--datadir={}", self.data_dir().display()),
            format!("--port={}", self.port),
            "--bind-address=127.0.0.1".to_string(),
            format!("--socket={}", self.dir.path().join("mariadbd.sock").display()),
            format!("--pid-file={}", self.pid_path().display()),
            format!("--log-error={}", log.display()),
            "--skip-name-resolve".to_string(),
            "--max-connections=300".to_string(),
        ]);
        owned.extend(SERVER_OPTIONS.iter().map(|o| o.to_string()));
        let args: Vec<&std::ffi::OsStr> = owned.iter().map(|a| a.as_ref()).collect();
        let program: &Path = if self.run_as.is_some() {
            Path::new(SETPRIV)
        } else {
            &self.server
        };
        let mut child = spawn_group(program, &args, &[], self.dir.path(), &console, "mariadbd")?;
        let deadline = Instant::now() + START_TIMEOUT;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() && self.can_log_in().await {
                break;
            }
            if !child.is_running() {
                bail!(
                    "mariadbd exited during startup; its log:\n{}\n{}",
                    log_tail(&console),
                    log_tail(&log)
                );
            }
            if Instant::now() > deadline {
                kill_group(&mut child);
                bail!(
                    "mariadbd did not accept logins on {addr} within {START_TIMEOUT:?}; its log:\n{}",
                    log_tail(&log)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.child = Some(child);
        Ok(())
    }

    /// Whether the `mariadb` client can log in as `admin` over TCP and run a query.
    async fn can_log_in(&self) -> bool {
        let mut cmd = tokio::process::Command::new(&self.client);
        cmd.args([
            "--no-defaults",
            "--protocol=TCP",
            "--skip-ssl",
            "--connect-timeout=5",
        ])
        .args(["-h", "127.0.0.1", "-P", &self.port.to_string(), "-u", ADMIN_USER])
        .args(["-e", "SELECT 1"])
        .env("MYSQL_PWD", &self.password)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
        matches!(
            tokio::time::timeout(Duration::from_secs(10), cmd.status()).await,
            Ok(Ok(status)) if status.success()
        )
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_group(&mut child);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn starts_stops_and_restarts_with_the_same_data() {
        let mut db = MariaDb::start().await.unwrap();
        assert!(db.admin_url().starts_with("mysql://admin:"));
        assert!(db.can_log_in().await);
        let marker = db.data_dir().join("mysql");
        db.stop();
        assert!(!db.is_running());
        assert!(!db.can_log_in().await);
        assert!(marker.is_dir(), "stop keeps the data");
        db.restart().await.unwrap();
        assert!(db.is_running());
        assert!(db.can_log_in().await);
    }
}
