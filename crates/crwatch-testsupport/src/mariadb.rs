//! A real MariaDB server for tests: `mariadb-install-db` into a temporary directory, then
//! `mariadbd` listening only on 127.0.0.1 at a free port, with an administrator `admin` (a
//! random password, `ALL PRIVILEGES ON *.* WITH GRANT OPTION`) reachable over TCP; it can be
//! stopped and restarted on the same port with the same data.
//!
//! Grant tables are real (no `--skip-grant-tables`), so tests see the server's actual
//! authentication and privilege checks. When the test runs as root, the server runs as
//! `nobody` (as [`crate::postgres`] does) rather than with `--user=root`. The server runs in its
//! own process group under the watchdog of [`crate::process`], so it dies with the test process.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use crate::process::{ServerProcess, find_binary, random_password, succeeds};

/// How long installation plus the first start may take, and how long a restart may take.
const START_TIMEOUT: Duration = Duration::from_secs(60);

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
    process: ServerProcess,
    password: String,
    server: PathBuf,
    client: PathBuf,
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
        let process = ServerProcess::unprivileged("mariadbd", "crwatch-mariadb-", START_TIMEOUT)?;
        let password = random_password()?;
        // Bootstrap runs without grant tables; FLUSH PRIVILEGES loads them so that CREATE USER
        // and GRANT work in the extra file.
        let init = process.write_file(
            "init.sql",
            &format!(
                "FLUSH PRIVILEGES;\n\
                 CREATE USER '{ADMIN_USER}'@'127.0.0.1' IDENTIFIED BY '{password}';\n\
                 GRANT ALL PRIVILEGES ON *.* TO '{ADMIN_USER}'@'127.0.0.1' WITH GRANT OPTION;\n"
            ),
        )?;
        // Temporary tables go to the server's own directory, not the shared /tmp: a test run
        // that cleans /tmp (or another server) must not take files from under the bootstrap
        // ("Could not remove temporary table ... error: 2", then "Unknown table").
        let tmp = process.make_dir("tmp")?;
        let mut cmd = tokio::process::Command::new(install);
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", process.path("data").display()))
            .arg(format!("--tmpdir={}", tmp.display()))
            .args([
                "--auth-root-authentication-method=socket",
                "--skip-test-db",
                "--skip-name-resolve",
            ])
            .arg(format!("--extra-file={}", init.display()))
            .args(SERVER_OPTIONS);
        process.run_setup(cmd, "mariadb-install-db").await?;
        std::fs::remove_file(&init).context("removing the bootstrap SQL")?;
        let mut db = Self {
            process,
            password,
            server,
            client,
        };
        db.spawn().await?;
        Ok(db)
    }

    /// `mysql://admin:PASSWORD@127.0.0.1:PORT/`: the administrator, over TCP.
    pub fn admin_url(&self) -> String {
        format!(
            "mysql://{ADMIN_USER}:{}@127.0.0.1:{}/",
            self.password,
            self.port()
        )
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
        self.process.port()
    }

    /// The data directory (kept across [`stop`](Self::stop) and [`restart`](Self::restart)).
    pub fn data_dir(&self) -> PathBuf {
        self.process.path("data")
    }

    /// The server's error log.
    pub fn log_path(&self) -> PathBuf {
        self.process.path("mariadbd.log")
    }

    /// Whether the server process is running.
    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    /// Stop the server cleanly (SIGTERM: connections are closed, data is kept), killing it if
    /// it has not exited within 15 s. Returns once the process is gone.
    pub fn stop(&mut self) {
        let pid_file = self.pid_path();
        self.process.stop_with("TERM", &pid_file);
    }

    /// Start the server again on the same port with the same data (stopping it first if it
    /// still runs), and wait until `admin` can log in.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.process.wait_port_free().await?;
        self.spawn().await
    }

    fn pid_path(&self) -> PathBuf {
        self.process.path("mariadbd.pid")
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let log = self.log_path();
        let mut args = vec![
            "--no-defaults".to_string(),
            format!("--datadir={}", self.data_dir().display()),
            format!("--port={}", self.port()),
            "--bind-address=127.0.0.1".to_string(),
            format!("--socket={}", self.process.path("mariadbd.sock").display()),
            format!("--pid-file={}", self.pid_path().display()),
            format!("--tmpdir={}", self.process.path("tmp").display()),
            format!("--log-error={}", log.display()),
            "--skip-name-resolve".to_string(),
            "--max-connections=300".to_string(),
        ];
        args.extend(SERVER_OPTIONS.iter().map(|o| o.to_string()));
        // Output of the process itself (before the error log is open) goes to a second file.
        let console = self.process.path("mariadbd.out");
        let child = self
            .process
            .launch(
                &self.server,
                &args,
                &console,
                &[&log],
                "accept logins",
                async || self.can_log_in().await,
            )
            .await?;
        self.process.started(child);
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
        .args([
            "-h",
            "127.0.0.1",
            "-P",
            &self.port().to_string(),
            "-u",
            ADMIN_USER,
        ])
        .args(["-e", "SELECT 1"])
        .env("MYSQL_PWD", &self.password);
        succeeds(cmd).await
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
