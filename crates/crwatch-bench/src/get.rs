//! The `get` section: the release `crwatch get configmaps -n bench` against the real
//! `kubectl get configmaps -n bench`, each a child process listing N ConfigMaps of about
//! 3 KiB from the in-process API server, as a table and with `-o json`: wall time and the
//! child's peak RSS, with a check that both printed every object.
//!
//! Peak RSS is `ru_maxrss` from `wait4(2)`, taken by a small runner: this same executable
//! started with [`CHILD_FLAG`]. It cannot be taken in the benchmark process itself: Linux
//! carries the spawning process's high-water mark into the child at `exec` (`exec_mmap` folds
//! the old mm's peak into `signal->maxrss`), so a child of a process holding a 10,000-object
//! server would report that server's RSS. The runner's own high-water mark (a few MiB) is
//! the floor of what it can report, and is checked to be below every figure.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};

use crate::cache::Bench;
use crate::order;
use crate::report::Row;

/// The hidden first argument that turns `crwatch-bench` into the measuring runner:
/// `crwatch-bench --measure-child PROGRAM ARGS...`.
pub const CHILD_FLAG: &str = "--measure-child";
/// How the runner's summary line starts (the last line of its stderr).
const SUMMARY: &str = "crwatch-bench-child:";
/// The end of the children's stderr that is kept for error messages.
const STDERR_KEPT: usize = 16 * 1024;

/// The two programs compared.
pub struct Binaries {
    crwatch: PathBuf,
    kubectl: PathBuf,
}

impl Binaries {
    /// The release `crwatch` next to this executable and `kubectl` on `PATH`; checked before
    /// any section runs, so a missing binary does not fail a run at its end.
    pub fn find() -> Result<Self> {
        let exe = std::env::current_exe().context("locating crwatch-bench")?;
        let dir = exe
            .parent()
            .ok_or_else(|| anyhow!("{} has no directory", exe.display()))?;
        let crwatch = dir.join("crwatch");
        ensure!(
            crwatch.is_file(),
            "the get section runs {}, which is missing: build it with `cargo build --release -p crwatch-cli` \
             (or leave get out of --only)",
            crwatch.display()
        );
        let kubectl = std::env::var_os("PATH")
            .iter()
            .flat_map(std::env::split_paths)
            .map(|d| d.join("kubectl"))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                anyhow!("the get section compares against kubectl, which is not on PATH (or leave get out of --only)")
            })?;
        // A stale release build is easy to forget: say how old the one measured is.
        let age = std::fs::metadata(&crwatch)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .map_or_else(
                || "of unknown age".to_string(),
                |d| format!("built {} min ago", d.as_secs() / 60),
            );
        eprintln!("get: {} ({age}) against {}", crwatch.display(), kubectl.display());
        Ok(Binaries { crwatch, kubectl })
    }
}

/// The runner's side: when started with [`CHILD_FLAG`], run the command, reap it with
/// `wait4`, print the summary line to stderr and return `true` (the caller exits).
pub fn run_child_if_asked() -> Result<bool> {
    let mut args = std::env::args_os().skip(1);
    if args.next().as_deref() != Some(CHILD_FLAG.as_ref()) {
        return Ok(false);
    }
    let program = args
        .next()
        .ok_or_else(|| anyhow!("{CHILD_FLAG} needs a program"))?;
    let floor = self_hwm_kib();
    let started = Instant::now();
    let child = Command::new(&program)
        .args(args)
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", program.to_string_lossy()))?;
    let pid = libc::pid_t::try_from(child.id()).context("child pid")?;
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain data that wait4 fills in; zeroed is a valid value of it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: pid is our own child, not yet reaped (std's Child is never waited on, and
        // dropping it does not wait); status and usage are valid for writes.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e).context("wait4");
        }
    }
    let wall = started.elapsed();
    drop(child);
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        // Killed by a signal: report it as the shell does.
        128 + libc::WTERMSIG(status)
    };
    eprintln!(
        "\n{SUMMARY} exit={code} wall_ns={} maxrss_kib={} floor_kib={floor}",
        wall.as_nanos(),
        usage.ru_maxrss
    );
    Ok(true)
}

/// This process's high-water RSS, KiB.
fn self_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Counts what a child printed, without keeping it: lines, lines that start with an object's
/// name (table rows), and occurrences of `"cm-` (names in JSON, once per object: the data
/// values are hex and the labels do not start so).
#[derive(Default)]
struct Tally {
    bytes: u64,
    lines: usize,
    rows: usize,
    names: usize,
    /// Bytes of `cm-` matched at the start of the current line; `None` once it cannot match.
    row_prefix: Option<usize>,
    /// The last bytes of the previous chunk, for a `"cm-` split across two reads.
    tail: Vec<u8>,
}

const ROW_START: &[u8] = b"cm-";
const JSON_NAME: &[u8] = b"\"cm-";

impl Tally {
    fn new() -> Self {
        Tally {
            row_prefix: Some(0),
            ..Default::default()
        }
    }

    fn feed(&mut self, chunk: &[u8]) {
        self.bytes += chunk.len() as u64;
        for &b in chunk {
            if b == b'\n' {
                self.lines += 1;
                self.row_prefix = Some(0);
                continue;
            }
            self.row_prefix = match self.row_prefix {
                Some(k) if k < ROW_START.len() && ROW_START[k] == b => {
                    if k + 1 == ROW_START.len() {
                        self.rows += 1;
                    }
                    Some(k + 1)
                }
                Some(k) if k >= ROW_START.len() => Some(k),
                _ => None,
            };
        }
        // A match cannot lie wholly in the kept tail (shorter than the pattern), so none is
        // counted twice.
        let mut joined = std::mem::take(&mut self.tail);
        joined.extend_from_slice(chunk);
        self.names += joined
            .windows(JSON_NAME.len())
            .filter(|w| *w == JSON_NAME)
            .count();
        let keep = joined.len().min(JSON_NAME.len() - 1);
        self.tail = joined.split_off(joined.len() - keep);
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Format {
    Table,
    Json,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Peer {
    Crwatch,
    Kubectl,
}

/// One listing: the child's wall time and peak RSS.
struct Sample {
    wall: Duration,
    rss_kib: u64,
}

/// What is run: the program and its arguments.
fn command(
    bins: &Binaries,
    peer: Peer,
    format: Format,
    kubeconfig: &Path,
    cache: &Path,
) -> (PathBuf, Vec<String>) {
    let mut args: Vec<String> = ["get", "configmaps", "-n", "bench", "--kubeconfig"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.push(kubeconfig.display().to_string());
    if format == Format::Json {
        args.extend(["-o".to_string(), "json".to_string()]);
    }
    match peer {
        Peer::Crwatch => (bins.crwatch.clone(), args),
        Peer::Kubectl => {
            // Its discovery cache in the run's directory, not the user's ~/.kube/cache.
            args.extend(["--cache-dir".to_string(), cache.display().to_string()]);
            (bins.kubectl.clone(), args)
        }
    }
}

/// Run one listing through the runner, drain and count its output, and check it printed all
/// `n` objects.
fn list_once(program: &Path, args: &[String], format: Format, n: usize) -> Result<Sample> {
    let exe = std::env::current_exe().context("locating crwatch-bench")?;
    let what = format!(
        "{} {}",
        program
            .file_name()
            .map(|f| f.to_string_lossy())
            .unwrap_or_default(),
        args.join(" ")
    );
    let mut runner = Command::new(exe)
        .arg(CHILD_FLAG)
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting the runner for {what}"))?;
    let mut err = runner
        .stderr
        .take()
        .ok_or_else(|| anyhow!("the runner's stderr is not piped"))?;
    // stderr on its own thread, so neither pipe can fill up and stall the child.
    let stderr = std::thread::spawn(move || {
        let mut kept: Vec<u8> = vec![];
        let mut buf = [0u8; 8192];
        while let Ok(k) = err.read(&mut buf) {
            if k == 0 {
                break;
            }
            kept.extend_from_slice(&buf[..k]);
            if kept.len() > 2 * STDERR_KEPT {
                kept.drain(..kept.len() - STDERR_KEPT);
            }
        }
        String::from_utf8_lossy(&kept).into_owned()
    });
    let mut out = runner
        .stdout
        .take()
        .ok_or_else(|| anyhow!("the runner's stdout is not piped"))?;
    let mut tally = Tally::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let k = out.read(&mut buf).context("reading the child's output")?;
        if k == 0 {
            break;
        }
        tally.feed(&buf[..k]);
    }
    let status = runner.wait().context("waiting for the runner")?;
    let stderr = stderr.join().map_err(|_| anyhow!("the stderr reader panicked"))?;
    let (rest, summary) = stderr
        .trim_end()
        .rsplit_once('\n')
        .unwrap_or(("", stderr.trim_end()));
    let summary = summary
        .strip_prefix(SUMMARY)
        .filter(|_| status.success())
        .ok_or_else(|| anyhow!("the runner for {what} failed ({status}): {}", stderr.trim()))?;
    let field = |name: &str| -> Result<u64> {
        summary
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .ok_or_else(|| anyhow!("the runner's summary has no {name}: {summary}"))?
            .parse()
            .with_context(|| format!("{name} in {summary}"))
    };
    let code = field("exit")?;
    ensure!(code == 0, "{what} exited with {code}: {}", rest.trim());
    let (wall, rss_kib, floor) = (field("wall_ns")?, field("maxrss_kib")?, field("floor_kib")?);
    match format {
        Format::Table => ensure!(
            tally.lines == n + 1 && tally.rows == n,
            "{what} printed {} lines, {} of them rows, for {n} objects (a header and {n} rows expected)",
            tally.lines,
            tally.rows
        ),
        Format::Json => ensure!(
            tally.names == n,
            "{what} printed {} object names for {n} objects",
            tally.names
        ),
    }
    ensure!(
        rss_kib > floor,
        "{what}: peak RSS {rss_kib} KiB is not above the runner's own {floor} KiB, so it is not the child's"
    );
    Ok(Sample {
        wall: Duration::from_nanos(wall),
        rss_kib,
    })
}

/// The rows of the section: `crwatch get` against `kubectl get` over `n` ConfigMaps, table
/// and JSON, the median of `repeats` rounds alternating which goes first (after one unmeasured
/// warm-up of each: page cache, and kubectl's discovery cache as users have it).
pub async fn rows(bins: &Binaries, n: usize, repeats: usize) -> Result<Vec<Row>> {
    eprintln!("get: seeding {n} ConfigMaps");
    let bench = Bench::new(n).await?;
    let result = measure(bins, &bench, n, repeats).await;
    bench.server.shutdown().await?;
    result
}

async fn measure(bins: &Binaries, bench: &Bench, n: usize, repeats: usize) -> Result<Vec<Row>> {
    let kubeconfig = bench.server.kubeconfig().to_path_buf();
    let cache = tempfile::tempdir().context("a directory for kubectl's cache")?;
    let mut rows = vec![
        Row::new(format!("crwatch get {n} configmaps, wall (vs kubectl)"), "s").at(n),
        Row::new(
            format!("crwatch get {n} configmaps, peak RSS (vs kubectl)"),
            "MiB",
        )
        .at(n),
        Row::new("  -o json: wall (vs kubectl)", "s").at(n),
        Row::new("  -o json: peak RSS (vs kubectl)", "MiB").at(n),
    ];
    for round in 0..=repeats {
        // Round 0 is the warm-up.
        if round == 0 {
            eprintln!("get: warm-up");
        } else {
            eprintln!("get round {round} of {repeats}");
        }
        for (k, format) in [Format::Table, Format::Json].into_iter().enumerate() {
            for peer in order(round, Peer::Crwatch, Peer::Kubectl) {
                let (program, args) = command(bins, peer, format, &kubeconfig, cache.path());
                let s = tokio::task::spawn_blocking(move || list_once(&program, &args, format, n)).await??;
                let (secs, mib) = (s.wall.as_secs_f64(), s.rss_kib as f64 / 1024.0);
                eprintln!("  {peer:?} {format:?}: {secs:.3} s, peak RSS {mib:.1} MiB");
                if round == 0 {
                    continue;
                }
                let (time_row, rss_row) = rows.split_at_mut(2 * k + 1);
                let (time_row, rss_row) = (&mut time_row[2 * k], &mut rss_row[0]);
                match peer {
                    Peer::Crwatch => {
                        time_row.crwatch.push(secs);
                        rss_row.crwatch.push(mib);
                    }
                    Peer::Kubectl => {
                        time_row.push_kube(secs);
                        rss_row.push_kube(mib);
                    }
                }
            }
        }
    }
    if rows.iter().any(|r| r.crwatch.is_empty()) {
        bail!("no rounds ran");
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tally_counts_rows_and_names_across_chunk_boundaries() {
        let text = b"NAME DATA AGE\ncm-000000 5 1s\ncm-000001 5 1s\n{\"name\": \"cm-000002\"}\n";
        for split in 0..text.len() {
            let mut t = Tally::new();
            t.feed(&text[..split]);
            t.feed(&text[split..]);
            assert_eq!((t.lines, t.rows, t.names), (4, 2, 1), "split at {split}");
        }
    }
}
