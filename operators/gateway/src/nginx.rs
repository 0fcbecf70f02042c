//! The nginx the operator drives: its files under a prefix directory, `nginx -t` on a
//! candidate generation, the swap of `nginx.conf` and a graceful reload (SIGHUP to the
//! master), confirmed by asking the new workers which generation they serve.
//!
//! nginx is started in its own process group (`daemon off`), so it outlives the operator:
//! killing the operator leaves traffic flowing, and a restarted operator adopts the running
//! master through `nginx.pid` and reloads only when its rendered configuration differs. In a
//! Pod, nginx can instead run in its own container (`--nginx external`): the operator then
//! only signals it (with `shareProcessNamespace`).
//!
//! Files: `nginx.conf` (mode 0600: it holds upstream API keys), `gen/<hash>/` (the
//! generation's TLS keys in `tls/` mode 0600, templates), `logs/`, `tmp/`. Only the live and
//! the previous generation are kept.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::render::{Rendered, Settings};

/// A log grown past this is rotated (renamed to `.1`, replacing the one before, and nginx told
/// to reopen its logs with SIGUSR1): two files of at most this size each.
pub const MAX_LOG_BYTES: u64 = 16 << 20;

/// How long `nginx -t` may take.
const TEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a reload may take to show the new generation.
pub const RELOAD_TIMEOUT: Duration = Duration::from_secs(15);

/// What went wrong with nginx.
#[derive(Debug, Error)]
pub enum NginxError {
    /// `nginx -t` refused the candidate; `message` is nginx's (paths shortened, secrets
    /// redacted).
    #[error("nginx refused the configuration: {message}")]
    Rejected {
        /// nginx's message.
        message: String,
        /// The configuration line it names, if any.
        line: Option<usize>,
        /// The generation-relative side file it names (`tls/u…crt`), if any.
        file: Option<String>,
    },
    /// The master did not load the new generation in time.
    #[error(
        "nginx did not load generation {hash} within {timeout:?}{detail}; the previous configuration stays live"
    )]
    ReloadFailed {
        /// The generation.
        hash: String,
        /// The wait.
        timeout: Duration,
        /// `: <emerg line from error.log>` when there is one.
        detail: String,
    },
    /// nginx is not running and may not be started here.
    #[error(
        "nginx is not running (no live master in {pid_file}); in external mode the nginx container must start it"
    )]
    NotRunning {
        /// The pid file looked at.
        pid_file: String,
    },
    /// Filesystem or process trouble.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NginxError {
    let what = what.into();
    move |source| NginxError::Io { what, source }
}

/// Whether the operator may start nginx itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Adopt a running master, or start one.
    Start,
    /// Only adopt (nginx runs in another container).
    External,
}

/// The nginx under a prefix.
#[derive(Debug, Clone)]
pub struct Nginx {
    binary: PathBuf,
    settings: Settings,
    mode: Mode,
}

impl Nginx {
    /// nginx `binary` with `settings`; creates the prefix's directories.
    pub fn new(binary: PathBuf, settings: Settings, mode: Mode) -> Result<Self, NginxError> {
        for dir in ["", "gen", "logs", "tmp"] {
            let path = settings.prefix.join(dir);
            std::fs::create_dir_all(&path).map_err(io(format!("creating {}", path.display())))?;
        }
        // Workers (an unprivileged user when the master is root) must traverse the prefix to
        // reach their temp directories and the templates; secrets are protected per file.
        let _ = std::fs::set_permissions(&settings.prefix, std::fs::Permissions::from_mode(0o755));
        let _ = std::fs::set_permissions(
            settings.prefix.join("gen"),
            std::fs::Permissions::from_mode(0o755),
        );
        Ok(Nginx {
            binary,
            settings,
            mode,
        })
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The live `nginx.conf`.
    pub fn conf_path(&self) -> PathBuf {
        self.settings.prefix.join("nginx.conf")
    }

    /// The master's pid file.
    pub fn pid_path(&self) -> PathBuf {
        self.settings.prefix.join("nginx.pid")
    }

    /// The error log.
    pub fn error_log(&self) -> PathBuf {
        self.settings.prefix.join("logs/error.log")
    }

    /// The running master's pid, if there is one.
    pub fn master_pid(&self) -> Option<i32> {
        let pid: i32 = std::fs::read_to_string(self.pid_path())
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        // The master retitles itself "nginx: master process ..."; a stale pid file may name an
        // unrelated process, which must never be signalled.
        let text = String::from_utf8_lossy(&cmdline);
        text.contains("nginx: master process").then_some(pid)
    }

    /// The generation the running workers serve (from the status port), if they answer.
    pub async fn serving(&self) -> Option<String> {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.settings.status_port));
        let fut = async {
            let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
            s.write_all(b"GET /crwatch/generation HTTP/1.0\r\nHost: status\r\n\r\n")
                .await
                .ok()?;
            let mut buf = Vec::with_capacity(512);
            s.take(4096).read_to_end(&mut buf).await.ok()?;
            let text = String::from_utf8_lossy(&buf);
            let (head, body) = text.split_once("\r\n\r\n")?;
            head.starts_with("HTTP/1.1 200").then(|| body.trim().to_string())
        };
        tokio::time::timeout(Duration::from_secs(2), fut)
            .await
            .ok()
            .flatten()
    }

    /// The generation named in the live `nginx.conf`'s first line.
    pub fn live_conf_generation(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.conf_path()).ok()?;
        let first = text.lines().next()?;
        let rest = first.split("generation ").nth(1)?;
        Some(rest.split('.').next()?.to_string())
    }

    /// Write the generation's files (not yet live).
    pub fn write_generation(&self, r: &Rendered) -> Result<PathBuf, NginxError> {
        let dir = self.settings.gen_dir(&r.hash);
        std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755));
        for f in &r.files {
            let path = dir.join(&f.rel);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(io(format!("creating {}", parent.display())))?;
                let mode = if f.rel.starts_with("tls/") { 0o700 } else { 0o755 };
                let _ = std::fs::set_permissions(parent, std::fs::Permissions::from_mode(mode));
            }
            write_file(&path, &f.bytes, if f.private { 0o600 } else { 0o644 })?;
        }
        let conf = dir.join("nginx.conf");
        write_file(&conf, r.conf.as_bytes(), 0o600)?;
        Ok(conf)
    }

    /// `nginx -t` on a written generation.
    pub async fn test(&self, r: &Rendered) -> Result<(), NginxError> {
        let conf = self.settings.gen_dir(&r.hash).join("nginx.conf");
        let mut cmd = tokio::process::Command::new(&self.binary);
        cmd.arg("-t")
            .arg("-q")
            .arg("-p")
            .arg(&self.settings.prefix)
            .arg("-e")
            .arg(self.error_log())
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let out = tokio::time::timeout(TEST_TIMEOUT, cmd.output())
            .await
            .map_err(|_| NginxError::Io {
                what: "nginx -t".into(),
                source: std::io::Error::new(std::io::ErrorKind::TimedOut, "took more than 60 s"),
            })?
            .map_err(io(format!("running {} -t", self.binary.display())))?;
        if out.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        Err(parse_rejection(
            &stderr,
            &self.settings.gen_dir(&r.hash),
            &conf,
            r,
        ))
    }

    /// Install a written generation as `nginx.conf` without signalling anyone.
    pub fn install(&self, r: &Rendered) -> Result<(), NginxError> {
        let tmp = self.settings.prefix.join(".nginx.conf.tmp");
        write_file(&tmp, r.conf.as_bytes(), 0o600)?;
        std::fs::rename(&tmp, self.conf_path()).map_err(io("replacing nginx.conf"))
    }

    /// Make `r` live: swap `nginx.conf`, then reload (or start nginx), and wait until the
    /// workers serve `r.hash`.
    pub async fn activate(&self, r: &Rendered) -> Result<(), NginxError> {
        self.install(r)?;
        let log_offset = std::fs::metadata(self.error_log()).map(|m| m.len()).unwrap_or(0);
        let old_workers = self.master_pid().map(children).unwrap_or_default();
        match self.master_pid() {
            Some(pid) => signal(pid, libc::SIGHUP).map_err(io("signalling the nginx master (SIGHUP)"))?,
            None if self.mode == Mode::Start => self.start()?,
            None => {
                return Err(NginxError::NotRunning {
                    pid_file: self.pid_path().display().to_string(),
                });
            }
        }
        let deadline = Instant::now() + RELOAD_TIMEOUT;
        loop {
            // nginx keeps the old workers accepting for 100 ms after starting the new ones
            // (ngx_master_process_cycle), and they win most accepts meanwhile. Once the master
            // has forked new workers it has loaded the configuration: retire the old workers
            // at once with SIGQUIT, the master's own graceful-shutdown signal (they close their
            // listening sockets and finish what they serve). Connections arriving meanwhile
            // wait in the shared socket's backlog for the new workers: none is refused.
            if let Some(master) = self.master_pid() {
                let forked = children(master)
                    .into_iter()
                    .any(|pid| !old_workers.contains(&pid) && accepting(pid));
                if forked {
                    for pid in old_workers.iter().filter(|pid| accepting(**pid)) {
                        let _ = signal(*pid, libc::SIGQUIT);
                    }
                }
            }
            if old_workers.iter().all(|pid| !accepting(*pid))
                && self.serving().await.as_deref() == Some(r.hash.as_str())
            {
                break;
            }
            if Instant::now() > deadline {
                let detail = self
                    .emerg_since(log_offset)
                    .map(|l| format!(": {}", r.redact(&l)))
                    .unwrap_or_default();
                return Err(NginxError::ReloadFailed {
                    hash: r.hash.clone(),
                    timeout: RELOAD_TIMEOUT,
                    detail,
                });
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        self.collect_garbage(&r.hash);
        self.rotate_logs();
        Ok(())
    }

    /// Rotate `logs/*.log` that outgrew [`MAX_LOG_BYTES`].
    pub fn rotate_logs(&self) {
        let Some(pid) = self.master_pid() else { return };
        let mut rotated = false;
        for name in ["error.log", "access.log"] {
            let path = self.settings.prefix.join("logs").join(name);
            if std::fs::metadata(&path).is_ok_and(|m| m.len() > MAX_LOG_BYTES) {
                rotated |= std::fs::rename(&path, path.with_extension("log.1")).is_ok();
            }
        }
        if rotated {
            let _ = signal(pid, libc::SIGUSR1);
        }
    }

    /// Start the master (`daemon off`, own process group, so it outlives the operator).
    fn start(&self) -> Result<(), NginxError> {
        use std::os::unix::process::CommandExt;
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.settings.prefix.join("logs/nginx.stderr"))
            .map_err(io("opening logs/nginx.stderr"))?;
        let mut cmd = std::process::Command::new(&self.binary);
        cmd.arg("-p")
            .arg(&self.settings.prefix)
            .arg("-e")
            .arg(self.error_log())
            .arg("-c")
            .arg(self.conf_path())
            .arg("-g")
            .arg("daemon off;")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .process_group(0);
        let mut child = cmd
            .spawn()
            .map_err(io(format!("starting {}", self.binary.display())))?;
        tracing::info!(pid = child.id(), prefix = %self.settings.prefix.display(), "started nginx");
        // Reap it when it exits while the operator runs (no zombie); if the operator dies
        // first, nginx is re-parented and keeps serving.
        std::thread::spawn(move || {
            let status = child.wait();
            tracing::warn!(?status, "nginx master exited");
        });
        Ok(())
    }

    /// Make sure a master runs (start mode): after a crash, start it on the live
    /// configuration. Returns whether it had to be started.
    pub async fn ensure_running(&self) -> Result<bool, NginxError> {
        if self.master_pid().is_some() || self.mode == Mode::External || !self.conf_path().exists() {
            return Ok(false);
        }
        self.retire_orphans().await;
        self.start()?;
        let deadline = Instant::now() + RELOAD_TIMEOUT;
        while self.serving().await.is_none() {
            if Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(true)
    }

    /// Workers whose master died (SIGKILL, OOM) keep serving and hold the listening sockets, so
    /// a new master could not bind. They are in the dead master's process group (we start
    /// nginx as a group leader): ask them to finish gracefully (SIGQUIT closes their listening
    /// sockets at once; in-flight requests complete) and wait until they stopped accepting.
    async fn retire_orphans(&self) {
        let Some(old) = std::fs::read_to_string(self.pid_path())
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok())
        else {
            return;
        };
        let orphans: Vec<i32> = group_members(old)
            .into_iter()
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).starts_with("nginx: worker process"))
            })
            .collect();
        if orphans.is_empty() {
            return;
        }
        tracing::warn!(
            ?orphans,
            "the nginx master is gone but its workers still serve; retiring them gracefully"
        );
        for pid in &orphans {
            let _ = signal(*pid, libc::SIGQUIT);
        }
        let deadline = Instant::now() + RELOAD_TIMEOUT;
        while orphans.iter().any(|pid| accepting(*pid)) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stop nginx: SIGQUIT (graceful), then SIGKILL after `grace`.
    pub async fn stop(&self, grace: Duration) {
        let Some(pid) = self.master_pid() else { return };
        let _ = signal(pid, libc::SIGQUIT);
        let deadline = Instant::now() + grace;
        while self.master_pid().is_some() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Some(pid) = self.master_pid() {
            let _ = signal(-pid, libc::SIGKILL);
        }
    }

    /// Kill nginx at once (SIGKILL to its process group): for tests' cleanup guards.
    pub fn kill_now(&self) {
        if let Some(pid) = self.master_pid() {
            let _ = signal(-pid, libc::SIGKILL);
        }
    }

    /// The first `[emerg]`/`[alert]` line the error log gained since `offset`.
    fn emerg_since(&self, offset: u64) -> Option<String> {
        let text = std::fs::read(self.error_log()).ok()?;
        let tail = text.get(offset as usize..)?;
        String::from_utf8_lossy(tail)
            .lines()
            .find(|l| l.contains("[emerg]") || l.contains("[alert]"))
            .map(|l| {
                l.split_once("] ")
                    .map(|(_, m)| m)
                    .unwrap_or(l)
                    .chars()
                    .take(500)
                    .collect()
            })
    }

    /// Remove generations other than `keep` and the one before it.
    fn collect_garbage(&self, keep: &str) {
        let gen_root = self.settings.prefix.join("gen");
        let Ok(entries) = std::fs::read_dir(&gen_root) else {
            return;
        };
        let mut dirs: Vec<(std::time::SystemTime, PathBuf)> = entries
            .flatten()
            .filter(|e| e.file_name() != keep)
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        dirs.sort();
        // Keep the newest other one (the previous live generation, for workers still draining).
        dirs.pop();
        for (_, d) in dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// The nginx binary: `$CRWATCH_NGINX`, `nginx` on `PATH`, or Debian's `/usr/sbin/nginx`.
pub fn find_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CRWATCH_NGINX") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("nginx"))
        .chain([PathBuf::from("/usr/sbin/nginx")])
        .find(|p| p.is_file())
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), NginxError> {
    let tmp = path.with_extension("tmp-write");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io(format!("writing {}", tmp.display())))?;
    f.write_all(bytes)
        .map_err(io(format!("writing {}", tmp.display())))?;
    // A file that existed keeps its old mode on open: set it.
    let _ = f.set_permissions(std::fs::Permissions::from_mode(mode));
    drop(f);
    std::fs::rename(&tmp, path).map_err(io(format!("renaming to {}", path.display())))
}

/// The child processes of `pid` (nginx's workers).
pub fn children(pid: i32) -> Vec<i32> {
    let direct = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"));
    if let Ok(text) = direct {
        return text.split_whitespace().filter_map(|p| p.parse().ok()).collect();
    }
    // Without CONFIG_PROC_CHILDREN: scan every process's parent.
    processes_where(STAT_PPID, pid)
}

/// The processes in process group `pgid`.
pub fn group_members(pgid: i32) -> Vec<i32> {
    processes_where(STAT_PGRP, pgid)
}

/// Fields of /proc/<pid>/stat after `pid (comm)`: state, ppid, pgrp, ...
const STAT_PPID: usize = 1;
const STAT_PGRP: usize = 2;

/// The processes whose /proc/<pid>/stat field `field` (counted after the command name, which
/// may hold spaces and parentheses) is `value`.
fn processes_where(field: usize, value: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|st| {
                    st.rsplit_once(')')?
                        .1
                        .split_whitespace()
                        .nth(field)?
                        .parse::<i32>()
                        .ok()
                })
                == Some(value)
        })
        .collect()
}

/// Whether worker `pid` still accepts connections: it runs and has not retitled itself
/// "worker process is shutting down" (which nginx does as it closes its listening sockets).
pub fn accepting(pid: i32) -> bool {
    match std::fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(cmd) => {
            let text = String::from_utf8_lossy(&cmd);
            text.contains("worker process") && !text.contains("shutting down")
        }
        Err(_) => false,
    }
}

fn signal(pid: i32, sig: libc::c_int) -> std::io::Result<()> {
    // SAFETY: kill(2) takes plain integers and has no memory effects on this process; `pid`
    // was read from nginx's pid file and checked to be an nginx master (or its group).
    let rc = unsafe { libc::kill(pid, sig) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// nginx's `-t` output as a rejection: the `[emerg]` line with the generation directory
/// shortened, the line number and side file it names.
fn parse_rejection(stderr: &str, gen_dir: &Path, conf: &Path, r: &Rendered) -> NginxError {
    let line = stderr
        .lines()
        .find(|l| l.contains("[emerg]") || l.contains("[alert]") || l.contains("[crit]"))
        .or_else(|| stderr.lines().find(|l| !l.trim().is_empty()))
        .unwrap_or("nginx -t failed without a message");
    let msg = line.split_once("] ").map(|(_, m)| m).unwrap_or(line).trim();
    let conf_s = conf.display().to_string();
    let gen_s = format!("{}/", gen_dir.display());
    let at_line = msg
        .rsplit_once(&format!("{conf_s}:"))
        .and_then(|(_, n)| n.trim().parse::<usize>().ok());
    let file = msg
        .find(&gen_s)
        .map(|i| &msg[i + gen_s.len()..])
        .map(|rest| rest.split(['"', ':', ' ']).next().unwrap_or("").to_string())
        .filter(|f| !f.is_empty() && f != "nginx.conf");
    let short = msg.replace(&conf_s, "nginx.conf").replace(&gen_s, "");
    NginxError::Rejected {
        message: r.redact(&short),
        line: at_line,
        file,
    }
}
