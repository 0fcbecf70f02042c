//! What the `crwatch` binary says when it cannot start: usage errors (exit 2), kubeconfig
//! errors with each cause said once (exit 1), and log lines that carry ANSI colours only on a
//! terminal (never in a file, with `NO_COLOR` or with `TERM=dumb`).

use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::process::{Command, Output, Stdio};

use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};

/// The built `crwatch` binary.
const BIN: &str = env!("CARGO_BIN_EXE_crwatch");

/// `crwatch ARGS` with a clean environment for configuration: no `KUBECONFIG`, not in a
/// cluster, logs off unless `env` says otherwise.
fn crwatch(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("KUBECONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .env_remove("CRWATCH_LOG")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    crwatch(args, env).output().expect("crwatch runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn an_out_of_range_demo_pace_is_a_usage_error() {
    let out = run(&["demo", "--pace", "100years"], &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("must be between 0s and 1m"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn diff_without_watch_is_a_usage_error() {
    let out = run(&["get", "pods", "--diff"], &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.starts_with("error: --diff requires --watch (-w) or --watch-only\n"),
        "{err}"
    );
    assert!(err.contains("Usage: crwatch get"), "{err}");
    assert!(out.stdout.is_empty());
    // with a watch flag it gets past parsing (and fails later, on the missing kubeconfig)
    for watch in ["-w", "--watch", "--watch-only"] {
        let out = run(
            &["get", "pods", watch, "--diff", "--kubeconfig", "/nonexistent/kc"],
            &[],
        );
        assert_eq!(out.status.code(), Some(1), "{watch}: {}", stderr(&out));
    }
}

#[test]
fn missing_kubeconfig_says_each_cause_once() {
    let out = run(&["get", "pods", "--kubeconfig", "/nonexistent/kc"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "error: reading kubeconfig /nonexistent/kc: No such file or directory (os error 2)\n"
    );
    // found through KUBECONFIG: no in-cluster noise, and what to do
    let out = run(
        &["get", "pods"],
        &[("KUBECONFIG", "/nonexistent/kc"), ("HOME", "/nonexistent")],
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "error: no kubeconfig (/nonexistent/kc: No such file or directory (os error 2)) and not running \
         in a cluster; pass --kubeconfig or set KUBECONFIG\n"
    );
    // --context without --kubeconfig reads the default file
    let out = run(&["get", "pods", "--context", "x"], &[("HOME", "/nonexistent")]);
    assert_eq!(
        stderr(&out),
        "error: loading kubeconfig /nonexistent/.kube/config: No such file or directory (os error 2)\n"
    );
}

#[test]
fn malformed_kubeconfig_says_where_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "garbage: [\n").expect("written");
    let out = run(
        &["get", "pods", "--kubeconfig", bad.to_str().expect("utf-8 path")],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        format!(
            "error: reading kubeconfig {}: failed to parse kubeconfig YAML: line 1 column 10: unclosed bracket '['\n",
            bad.display()
        )
    );
    // valid YAML, unknown context
    let empty = dir.path().join("empty.yaml");
    std::fs::write(
        &empty,
        "apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n",
    )
    .expect("written");
    let out = run(
        &[
            "get",
            "pods",
            "--kubeconfig",
            empty.to_str().expect("utf-8 path"),
            "--context",
            "nope",
        ],
        &[],
    );
    assert_eq!(
        stderr(&out),
        format!(
            "error: loading kubeconfig {}: failed to load current context: nope\n",
            empty.display()
        )
    );
}

#[test]
fn log_lines_in_a_file_have_no_colours() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("stderr.log");
    let file = File::create(&path).expect("log file");
    let mut cmd = crwatch(
        &["get", "pods", "--kubeconfig", "/nonexistent/kc"],
        &[("CRWATCH_LOG", "debug"), ("TERM", "xterm-256color")],
    );
    cmd.stdout(Stdio::null())
        .stderr(file)
        .status()
        .expect("crwatch runs");
    let log = std::fs::read_to_string(&path).expect("log read");
    assert!(log.contains("crwatch starting"), "{log}");
    assert!(!log.contains('\x1b'), "{log:?}");
}

/// Everything `crwatch ARGS` writes to stderr when stderr is a terminal.
fn on_terminal(env: &[(&str, &str)]) -> String {
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC).expect("openpt");
    grantpt(&master).expect("grantpt");
    unlockpt(&master).expect("unlockpt");
    let name = ptsname(&master, Vec::new()).expect("ptsname");
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(OsStr::from_bytes(name.as_bytes()))
        .expect("the terminal opens");
    let mut cmd = crwatch(&["get", "pods", "--kubeconfig", "/nonexistent/kc"], env);
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(tty)
        .spawn()
        .expect("crwatch starts");
    // The child holds the terminal now; ours went with `cmd`.
    drop(cmd);
    let mut reader = File::from(master);
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    // Reading ends with EIO once the child (the last holder of the terminal) is gone.
    while let Ok(n @ 1..) = reader.read(&mut buf) {
        out.extend_from_slice(&buf[..n]);
    }
    child.wait().expect("crwatch exits");
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn log_lines_on_a_terminal_have_colours_unless_told_not_to() {
    let coloured = on_terminal(&[("CRWATCH_LOG", "debug"), ("TERM", "xterm-256color")]);
    assert!(coloured.contains("crwatch starting"), "{coloured:?}");
    assert!(coloured.contains("\x1b["), "{coloured:?}");
    for env in [
        [
            ("CRWATCH_LOG", "debug"),
            ("NO_COLOR", "1"),
            ("TERM", "xterm-256color"),
        ],
        [("CRWATCH_LOG", "debug"), ("NO_COLOR", ""), ("TERM", "dumb")],
    ] {
        let plain = on_terminal(&env);
        assert!(plain.contains("crwatch starting"), "{env:?}: {plain:?}");
        assert!(!plain.contains('\x1b'), "{env:?}: {plain:?}");
    }
}
