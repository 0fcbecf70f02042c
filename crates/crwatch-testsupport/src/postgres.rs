//! A real PostgreSQL server for tests: `initdb` into a temporary directory, then `postgres`
//! listening only on 127.0.0.1 at a free port, with password (SCRAM-SHA-256) authentication
//! for the superuser `postgres`; it can be stopped and restarted on the same port with the same
//! data, for tests of what happens while the database is down.
//!
//! PostgreSQL refuses to run as root. When the test runs as root, `initdb` and `postgres` run
//! as `nobody` (through `setpriv`), with the temporary directory handed to that user. The
//! server runs in its own process group under the watchdog of [`crate::nats`], so it dies with
//! the test process even when kept in a `static`.
//!
//! Binaries come from `$CRWATCH_PG_BIN` if set, else the newest `/usr/lib/postgresql/*/bin`
//! (Debian's `postgresql` package).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tempfile::TempDir;

use crate::nats::{kill_group, log_tail, spawn_group, wait_port_free};
use crate::process::{ChildGuard, free_port};

/// How long `initdb` plus the first start may take, and how long a restart may take.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The prefix of the temporary directories (`$TMPDIR/crwatch-postgres-XXXXXX`).
const DIR_PREFIX: &str = "crwatch-postgres-";

/// How long a fast shutdown may take before the server is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

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
    child: Option<ChildGuard>,
    port: u16,
    password: String,
    bin: PathBuf,
    run_as: Option<(u32, u32)>,
    dir: TempDir,
}

impl Postgres {
    /// Create a cluster with `initdb` (superuser `postgres` with a random password, UTF-8,
    /// SCRAM-SHA-256 for every connection) in a temporary directory, start it on a free
    /// loopback port and wait until the superuser can log in.
    pub async fn start() -> anyhow::Result<Self> {
        let bin = pg_bin_dir()?;
        let dir = owned_tempdir(DIR_PREFIX)?;
        let run_as = unprivileged_user_if_root(dir.path())?;
        let password = random_password()?;
        let pwfile = dir.path().join("pwfile");
        std::fs::write(&pwfile, format!("{password}\n")).context("writing the password file")?;
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(&pwfile, Some(uid), Some(gid))?;
        }
        let mut initdb = tokio::process::Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(dir.path().join("data"))
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
            .arg(format!("--pwfile={}", pwfile.display()))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if let Some((uid, gid)) = run_as {
            initdb.uid(uid).gid(gid);
        }
        let out = tokio::time::timeout(START_TIMEOUT, initdb.output())
            .await
            .context("initdb timed out")?
            .context("running initdb")?;
        std::fs::remove_file(&pwfile).context("removing the password file")?;
        if !out.status.success() {
            bail!(
                "initdb failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut server = Self {
            child: None,
            port: free_port()?,
            password,
            bin,
            run_as,
            dir,
        };
        server.spawn().await?;
        Ok(server)
    }

    /// `postgresql://postgres:PASSWORD@127.0.0.1:PORT/postgres`: the superuser, over TCP.
    pub fn admin_url(&self) -> String {
        format!(
            "postgresql://postgres:{}@127.0.0.1:{}/postgres",
            self.password, self.port
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
        self.port
    }

    /// The data directory (kept across [`stop`](Self::stop) and [`restart`](Self::restart)).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The server's log file (stdout and stderr).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// Whether the server process is running.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.is_running())
    }

    /// Stop the server with a fast shutdown (SIGINT: open connections are closed, data is
    /// kept), killing it if it has not exited within 15 s. Returns once the process is gone;
    /// the port may take a moment longer to be free, which [`restart`](Self::restart) waits for.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = read_pid(&self.data_dir().join("postmaster.pid")) {
            signal(pid, "INT");
            let deadline = Instant::now() + STOP_TIMEOUT;
            // The watchdog (the guard's process) exits right after the server does.
            while child.is_running() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        kill_group(&mut child);
    }

    /// Start the server again on the same port with the same data (stopping it first if it
    /// still runs), and wait until the superuser can log in.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        wait_port_free(self.port, Duration::from_secs(10)).await?;
        self.spawn().await
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let postgres = self.bin.join("postgres");
        let log = self.log_path();
        let mut owned: Vec<String> = self.run_as.map(setpriv_args).unwrap_or_default();
        if self.run_as.is_some() {
            owned.push(postgres.display().to_string());
        }
        owned.extend([
            "-D".to_string(),
            self.data_dir().display().to_string(),
            "-p".to_string(),
            self.port.to_string(),
            "-k".to_string(),
            self.dir.path().display().to_string(),
        ]);
        for setting in [
            "listen_addresses=127.0.0.1",
            // Tests want speed, not durability.
            "fsync=off",
            "synchronous_commit=off",
            "full_page_writes=off",
            "max_connections=200",
        ] {
            owned.extend(["-c".to_string(), setting.to_string()]);
        }
        let args: Vec<&std::ffi::OsStr> = owned.iter().map(|a| a.as_ref()).collect();
        let program: &Path = if self.run_as.is_some() {
            Path::new(SETPRIV)
        } else {
            &postgres
        };
        let mut child = spawn_group(program, &args, &[], self.dir.path(), &log, "postgres")?;
        let deadline = Instant::now() + START_TIMEOUT;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        loop {
            // A TCP accept alone is not readiness: during startup and recovery the server
            // accepts and then refuses ("the database system is starting up").
            if tokio::net::TcpStream::connect(addr).await.is_ok() && self.can_log_in().await {
                break;
            }
            if !child.is_running() {
                bail!("postgres exited during startup; its log:\n{}", log_tail(&log));
            }
            if Instant::now() > deadline {
                kill_group(&mut child);
                bail!(
                    "postgres did not accept logins on {addr} within {START_TIMEOUT:?}; its log:\n{}",
                    log_tail(&log)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.child = Some(child);
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
        .args(["-p", &self.port.to_string(), "-c", "SELECT 1"])
        .env("PGPASSWORD", &self.password)
        .env("PGCONNECT_TIMEOUT", "5")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
        matches!(
            tokio::time::timeout(Duration::from_secs(10), psql.status()).await,
            Ok(Ok(status)) if status.success()
        )
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_group(&mut child);
        }
    }
}

/// The file in each server directory that names the test process owning it.
const OWNER_FILE: &str = "owner.pid";

/// A new temporary directory `$TMPDIR/<prefix>XXXXXX` recording this process as its owner,
/// after removing directories with the same prefix whose owner process is gone.
///
/// Servers kept in a `static` are never dropped, so their directories (a whole cluster: 50 MB
/// for PostgreSQL, more for MariaDB) outlive the test process; the next start of the same
/// kind of server cleans them up.
pub(crate) fn owned_tempdir(prefix: &str) -> anyhow::Result<TempDir> {
    remove_orphaned_dirs(prefix);
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .with_context(|| format!("creating a temporary directory {prefix}*"))?;
    std::fs::write(dir.path().join(OWNER_FILE), std::process::id().to_string())
        .context("recording the owner of the server directory")?;
    Ok(dir)
}

/// Remove `$TMPDIR/<prefix>*` directories whose owner file names a process that no longer
/// exists. Directories without an owner file (being created right now) are left alone. This
/// assumes that whoever shares `$TMPDIR` shares the PID namespace (`/proc`) too.
fn remove_orphaned_dirs(prefix: &str) {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let ours = entry.file_name().to_str().is_some_and(|n| n.starts_with(prefix));
        if !ours || !path.is_dir() {
            continue;
        }
        if let Some(pid) = read_pid(&path.join(OWNER_FILE))
            && pid != std::process::id()
            && !Path::new("/proc").join(pid.to_string()).exists()
        {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

/// `setpriv`, which switches user and then execs the server (no process in between).
pub(crate) const SETPRIV: &str = "/usr/bin/setpriv";

/// `setpriv` arguments that run the rest of the command line as `uid`/`gid` with no
/// supplementary groups.
pub(crate) fn setpriv_args((uid, gid): (u32, u32)) -> Vec<String> {
    vec![
        format!("--reuid={uid}"),
        format!("--regid={gid}"),
        "--clear-groups".to_string(),
        "--".to_string(),
    ]
}

/// When this process runs as root (the owner of the fresh directory `dir` is uid 0): the uid
/// and gid of `nobody`, to which `dir` is handed over. Servers that refuse root (PostgreSQL)
/// or would need `--user=root` (MariaDB) then run as that user. `None` when not root.
pub(crate) fn unprivileged_user_if_root(dir: &Path) -> anyhow::Result<Option<(u32, u32)>> {
    use std::os::unix::fs::MetadataExt;

    let meta = std::fs::metadata(dir).with_context(|| format!("inspecting {}", dir.display()))?;
    if meta.uid() != 0 {
        return Ok(None);
    }
    if !Path::new(SETPRIV).is_file() {
        bail!("running as root needs {SETPRIV} (util-linux) to start servers as nobody");
    }
    let passwd = std::fs::read_to_string("/etc/passwd").context("reading /etc/passwd")?;
    let (uid, gid) = passwd
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            match fields.as_slice() {
                ["nobody", _, uid, gid, ..] => Some((uid.parse().ok()?, gid.parse().ok()?)),
                _ => None,
            }
        })
        .unwrap_or((65534, 65534));
    std::os::unix::fs::chown(dir, Some(uid), Some(gid))
        .with_context(|| format!("handing {} to nobody", dir.display()))?;
    Ok(Some((uid, gid)))
}

/// A random 32-character lowercase hex password (from `/dev/urandom`), safe in URLs and shell
/// arguments.
pub(crate) fn random_password() -> anyhow::Result<String> {
    use std::io::Read;

    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The first line of a pid file, as a pid (`None` if missing or malformed).
pub(crate) fn read_pid(path: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().next()?.trim().parse().ok().filter(|&pid| pid > 1)
}

/// Send signal `name` (`INT`, `TERM`, ...) to one process.
pub(crate) fn signal(pid: u32, name: &str) {
    let _ = std::process::Command::new("kill")
        .args(["-s", name, "--", &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
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
