//! Child processes that die with the test: a guard that kills the process on drop, process
//! groups under a watchdog that kills them when the test process exits, free port selection,
//! waiting for a TCP port, and `ServerProcess`, the part every server here shares: its process,
//! port and temporary directory, starting with a readiness check, stopping and restarting.
//!
//! A server runs in its own process group under a small `sh` watchdog whose stdin is a pipe from
//! the test process: when the test process exits (even without running destructors, as with a
//! server kept in a `static`), the pipe closes and the watchdog kills the whole group
//! (`spawn_group`, `kill_group`).

use std::ffi::OsStr;
use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tempfile::TempDir;

/// A free TCP port on 127.0.0.1 (bound, then released; the OS does not hand it out again soon).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a free loopback port")?;
    Ok(listener.local_addr()?.port())
}

/// Wait until `addr` accepts TCP connections, or fail after `timeout`.
pub async fn wait_for_tcp(addr: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{addr} did not accept connections within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A running child process, killed (SIGKILL) and reaped when dropped.
#[derive(Debug)]
pub struct ChildGuard {
    child: Option<Child>,
    what: String,
}

impl ChildGuard {
    /// Spawn `cmd`; `what` names it in errors.
    pub fn spawn(mut cmd: Command, what: &str) -> anyhow::Result<Self> {
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {what} ({cmd:?})"))?;
        Ok(Self {
            child: Some(child),
            what: what.to_string(),
        })
    }

    /// The process id.
    pub fn id(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Kill and reap the process now.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// What this process is (for messages).
    pub fn what(&self) -> &str {
        &self.what
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// How long a clean shutdown may take before the server is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// A server the tests run: its process (in its own group, under the watchdog), its loopback
/// port and its temporary directory. It can be stopped and started again on the same port with
/// the same directory; dropping it kills the process and removes the directory.
#[derive(Debug)]
pub(crate) struct ServerProcess {
    /// The server program's name, for messages (`postgres`).
    what: &'static str,
    /// How long starting may take (including setup, [`run_setup`](Self::run_setup)).
    start_timeout: Duration,
    child: Option<ChildGuard>,
    port: u16,
    /// The user (uid, gid) to run as instead of root; see [`unprivileged_user_if_root`].
    run_as: Option<(u32, u32)>,
    dir: TempDir,
}

impl ServerProcess {
    /// A server `what` in `dir` on a free loopback port, not started yet.
    pub(crate) fn new(what: &'static str, dir: TempDir, start_timeout: Duration) -> anyhow::Result<Self> {
        Ok(Self {
            what,
            start_timeout,
            child: None,
            port: free_port()?,
            run_as: None,
            dir,
        })
    }

    /// A server `what` in a new [`owned_tempdir`] `$TMPDIR/<prefix>XXXXXX` on a free loopback
    /// port, to run as `nobody` when the test runs as root ([`unprivileged_user_if_root`]).
    pub(crate) fn unprivileged(
        what: &'static str,
        prefix: &str,
        start_timeout: Duration,
    ) -> anyhow::Result<Self> {
        let dir = owned_tempdir(prefix)?;
        let run_as = unprivileged_user_if_root(dir.path())?;
        let mut server = Self::new(what, dir, start_timeout)?;
        server.run_as = run_as;
        Ok(server)
    }

    /// The TCP port.
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// The server's directory.
    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `name` in the server's directory.
    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Whether the server process is running.
    pub(crate) fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.is_running())
    }

    /// Write `contents` to `name` in the server's directory, owned by the server's user (for
    /// setup files, which the caller removes once used since they hold secrets).
    pub(crate) fn write_file(&self, name: &str, contents: &str) -> anyhow::Result<PathBuf> {
        let path = self.path(name);
        std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid))?;
        }
        Ok(path)
    }

    /// Create the directory `name` in the server's directory, owned by the server's user.
    pub(crate) fn make_dir(&self, name: &str) -> anyhow::Result<PathBuf> {
        let path = self.path(name);
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid))?;
        }
        Ok(path)
    }

    /// Run the setup command `cmd` (`what`, such as `initdb`) as the server's user in its
    /// directory, within the start timeout; fail with its output unless it succeeds.
    pub(crate) async fn run_setup(&self, mut cmd: tokio::process::Command, what: &str) -> anyhow::Result<()> {
        cmd.current_dir(self.dir.path())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
        let out = tokio::time::timeout(self.start_timeout, cmd.output())
            .await
            .with_context(|| format!("{what} timed out"))?
            .with_context(|| format!("running {what}"))?;
        if !out.status.success() {
            bail!(
                "{what} failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Start `program args` (as the server's user, through `setpriv`) in the server's
    /// directory, with stdout and stderr going to `output`, and wait until its port accepts
    /// connections and `ready` says it serves. Fails, showing the tail of `output` and of
    /// `more_logs`, when the process exits first or does not `serving` (`accept logins`) within
    /// the start timeout (then it is killed). Hand the process to [`started`](Self::started).
    pub(crate) async fn launch(
        &self,
        program: &Path,
        args: &[impl AsRef<OsStr>],
        output: &Path,
        more_logs: &[&Path],
        serving: &str,
        mut ready: impl AsyncFnMut() -> bool,
    ) -> anyhow::Result<ChildGuard> {
        let setpriv = self.run_as.map(setpriv_args);
        let mut argv: Vec<&OsStr> = Vec::new();
        if let Some(setpriv) = &setpriv {
            argv.extend(setpriv.iter().map(OsStr::new));
            argv.push(program.as_os_str());
        }
        argv.extend(args.iter().map(AsRef::as_ref));
        let program = if setpriv.is_some() {
            Path::new(SETPRIV)
        } else {
            program
        };
        let mut child = spawn_group(program, &argv, &[], self.dir.path(), output, self.what)?;
        let logs = || {
            let tails: Vec<String> = std::iter::once(output)
                .chain(more_logs.iter().copied())
                .map(log_tail)
                .collect();
            tails.join("\n")
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + self.start_timeout;
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() && ready().await {
                return Ok(child);
            }
            if !child.is_running() {
                bail!("{} exited during startup; its log:\n{}", self.what, logs());
            }
            if Instant::now() > deadline {
                kill_group(&mut child);
                bail!(
                    "{} did not {serving} on {addr} within {:?}; its log:\n{}",
                    self.what,
                    self.start_timeout,
                    logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Keep `child`, from [`launch`](Self::launch), as the running server.
    pub(crate) fn started(&mut self, child: ChildGuard) {
        self.child = Some(child);
    }

    /// Kill the server (SIGKILL to its process group, as a crash would). Returns once the
    /// process is gone.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_group(&mut child);
        }
    }

    /// Stop the server cleanly: `signal` (`INT`, `TERM`) to the process in `pid_file`, then
    /// kill it if it has not exited within 15 s. Returns once the process is gone; the port
    /// may take a moment longer to be free ([`wait_port_free`](Self::wait_port_free)).
    pub(crate) fn stop_with(&mut self, signal_name: &str, pid_file: &Path) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = read_pid(pid_file) {
            signal(pid, signal_name);
            let deadline = Instant::now() + STOP_TIMEOUT;
            // The watchdog (the guard's process) exits right after the server does.
            while child.is_running() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        kill_group(&mut child);
    }

    /// Wait (up to 10 s) until nothing listens on the server's port any more, so that the
    /// server can be started on it again.
    pub(crate) async fn wait_port_free(&self) -> anyhow::Result<()> {
        wait_port_free(self.port, Duration::from_secs(10)).await
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether the client command `cmd` (a login probe) succeeds within 10 s; its input and output
/// go nowhere.
pub(crate) async fn succeeds(mut cmd: tokio::process::Command) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    matches!(
        tokio::time::timeout(Duration::from_secs(10), cmd.status()).await,
        Ok(Ok(status)) if status.success()
    )
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
    args: &[&OsStr],
    envs: &[(&str, &OsStr)],
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
    remove_at_exit(dir.path());
    Ok(dir)
}

/// Write ends of the pipes read by [`remove_at_exit`]'s reapers. A `static` is never dropped, so
/// each pipe closes only when this process exits, however it exits.
static REAPERS: std::sync::Mutex<Vec<std::process::ChildStdin>> = std::sync::Mutex::new(Vec::new());

/// Remove `dir` once this process has exited, even when a server kept in a `static` is never
/// dropped or the test process is killed: a small `sh`, in its own process group so that
/// killing a server's group spares it, waits for its stdin (a pipe from this process) to close,
/// gives the servers (killed by their watchdogs at the same moment) a moment to go, and removes
/// the directory. Best effort: without `sh` the next start of the same kind cleans up instead
/// ([`remove_orphaned_dirs`]).
fn remove_at_exit(dir: &Path) {
    use std::os::unix::process::CommandExt;

    const REAPER: &str = r#"read -r _; sleep 2; rm -rf -- "$1"; sleep 3; rm -rf -- "$1""#;
    let spawned = Command::new("sh")
        .arg("-c")
        .arg(REAPER)
        .arg("sh")
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn();
    if let Ok(mut child) = spawned
        && let Some(stdin) = child.stdin.take()
    {
        REAPERS.lock().unwrap_or_else(|e| e.into_inner()).push(stdin);
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Set in the child run of [`a_leaked_server_directory_is_removed_when_the_process_exits`].
    const LEAK_CHILD: &str = "CRWATCH_TESTSUPPORT_LEAK_CHILD";

    /// A directory leaked as a `static` server's is (never dropped) and a process that exits
    /// without destructors: the directory is gone shortly after the exit.
    #[test]
    fn a_leaked_server_directory_is_removed_when_the_process_exits() {
        if std::env::var_os(LEAK_CHILD).is_some() {
            let dir = owned_tempdir("crwatch-leak-test-").unwrap();
            println!("{}", dir.path().display());
            std::mem::forget(dir);
            std::process::exit(0);
        }
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "process::tests::a_leaked_server_directory_is_removed_when_the_process_exits",
                "--nocapture",
            ])
            .env(LEAK_CHILD, "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let path = stdout
            .lines()
            .find(|l| l.contains("crwatch-leak-test-"))
            .map(PathBuf::from)
            .unwrap_or_else(|| panic!("child printed no directory: {stdout}"));
        let deadline = Instant::now() + Duration::from_secs(20);
        while path.exists() {
            assert!(
                Instant::now() < deadline,
                "{} still exists 20 s after its owner exited",
                path.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
