//! A real PostgreSQL server for tests: `initdb` into a temporary directory, then `postgres`
//! listening only on 127.0.0.1 at a free port, with password (SCRAM-SHA-256) authentication
//! for the superuser `postgres`; it can be stopped and restarted on the same port with the same
//! data, for tests of what happens while the database is down.
//!
//! PostgreSQL refuses to run as root. When the test runs as root, `initdb` and `postgres` run
//! as `nobody` (through `setpriv`), with the temporary directory handed to that user. The
//! server runs in its own process group under the watchdog of [`crate::process`], so it dies
//! with the test process even when kept in a `static`.
//!
//! Binaries come from `$CRWATCH_PG_BIN` if set, else the newest `/usr/lib/postgresql/*/bin`
//! (Debian's `postgresql` package).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use crate::process::{ServerProcess, random_password, succeeds};

/// How long `initdb` plus the first start may take, and how long a restart may take.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The prefix of the temporary directories (`$TMPDIR/crwatch-postgres-XXXXXX`).
const DIR_PREFIX: &str = "crwatch-postgres-";

/// A running PostgreSQL server, killed and its data removed when dropped.
///
/// ```no_run
/// # async fn demo() -> anyhow::Result<()> {
/// let mut pg = crwatch_testsupport::postgres::Postgres::start().await?;
/// println!("{}", pg.admin_url()); // postgresql://postgres:PASSWORD@127.0.0.1:PORT/postgres
/// pg.stop(); // fast shutdown; clients see their connections closed
/// pg.restart().await?; // same port, same data
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Postgres {
    process: ServerProcess,
    password: String,
    bin: PathBuf,
}

impl Postgres {
    /// Create a cluster with `initdb` (superuser `postgres` with a random password, UTF-8,
    /// SCRAM-SHA-256 for every connection) in a temporary directory, start it on a free
    /// loopback port and wait until the superuser can log in.
    pub async fn start() -> anyhow::Result<Self> {
        let bin = pg_bin_dir()?;
        let process = ServerProcess::unprivileged("postgres", DIR_PREFIX, START_TIMEOUT)?;
        let password = random_password()?;
        let pwfile = process.write_file("pwfile", &format!("{password}\n"))?;
        let mut initdb = tokio::process::Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(process.path("data"))
            .args([
                "-U",
                "postgres",
                "-A",
                "scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
            ])
            .args(["--no-sync", "--no-instructions"])
            .arg(format!("--pwfile={}", pwfile.display()));
        process.run_setup(initdb, "initdb").await?;
        std::fs::remove_file(&pwfile).context("removing the password file")?;
        let mut server = Self {
            process,
            password,
            bin,
        };
        server.spawn().await?;
        Ok(server)
    }

    /// `postgresql://postgres:PASSWORD@127.0.0.1:PORT/postgres`: the superuser, over TCP.
    pub fn admin_url(&self) -> String {
        format!(
            "postgresql://postgres:{}@127.0.0.1:{}/postgres",
            self.password,
            self.port()
        )
    }

    /// The superuser's password (alphanumeric).
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

    /// The server's log file (stdout and stderr).
    pub fn log_path(&self) -> PathBuf {
        self.process.path("postgres.log")
    }

    /// Whether the server process is running.
    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    /// Stop the server with a fast shutdown (SIGINT: open connections are closed, data is
    /// kept), killing it if it has not exited within 15 s. Returns once the process is gone;
    /// the port may take a moment longer to be free, which [`restart`](Self::restart) waits for.
    pub fn stop(&mut self) {
        let pid_file = self.data_dir().join("postmaster.pid");
        self.process.stop_with("INT", &pid_file);
    }

    /// Start the server again on the same port with the same data (stopping it first if it
    /// still runs), and wait until the superuser can log in.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.process.wait_port_free().await?;
        self.spawn().await
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let mut args = vec![
            "-D".to_string(),
            self.data_dir().display().to_string(),
            "-p".to_string(),
            self.port().to_string(),
            "-k".to_string(),
            self.process.dir().display().to_string(),
        ];
        for setting in [
            "listen_addresses=127.0.0.1",
            // Tests want speed, not durability.
            "fsync=off",
            "synchronous_commit=off",
            "full_page_writes=off",
            "max_connections=200",
        ] {
            args.extend(["-c".to_string(), setting.to_string()]);
        }
        // A TCP accept alone is not readiness: during startup and recovery the server
        // accepts and then refuses ("the database system is starting up").
        let child = self
            .process
            .launch(
                &self.bin.join("postgres"),
                &args,
                &self.log_path(),
                &[],
                "accept logins",
                async || self.can_log_in().await,
            )
            .await?;
        self.process.started(child);
        Ok(())
    }

    /// Whether `psql` can log in as the superuser over TCP and run a query.
    async fn can_log_in(&self) -> bool {
        let mut psql = tokio::process::Command::new(self.bin.join("psql"));
        psql.args([
            "-X",
            "-w",
            "-q",
            "-t",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "postgres",
        ])
        .args(["-p", &self.port().to_string(), "-c", "SELECT 1"])
        .env("PGPASSWORD", &self.password)
        .env("PGCONNECT_TIMEOUT", "5");
        succeeds(psql).await
    }
}

/// `$CRWATCH_PG_BIN`, else the newest `/usr/lib/postgresql/<major>/bin` holding `initdb`.
fn pg_bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("CRWATCH_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let major = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((major, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).context(
        "no PostgreSQL binaries in /usr/lib/postgresql/*/bin; apt-get install postgresql \
         or set CRWATCH_PG_BIN",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn starts_stops_and_restarts_with_the_same_data() {
        let mut pg = Postgres::start().await.unwrap();
        assert!(pg.admin_url().starts_with("postgresql://postgres:"));
        assert!(pg.can_log_in().await);
        let marker = pg.data_dir().join("PG_VERSION");
        pg.stop();
        assert!(!pg.is_running());
        assert!(!pg.can_log_in().await);
        assert!(marker.is_file(), "stop keeps the data");
        pg.restart().await.unwrap();
        assert!(pg.is_running());
        assert!(pg.can_log_in().await);
    }
}
