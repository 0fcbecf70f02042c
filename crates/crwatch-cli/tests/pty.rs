//! `crwatch get` on a terminal: the built binary runs on a pseudo-terminal (stdout and stderr
//! both on it, as in a shell), and what the terminal shows is checked line by line: colours on
//! a terminal and never with `NO_COLOR`, the spinner while a long list syncs, and the same
//! watch lines as in a pipe (`tests/get.rs`).

mod common;

use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{BIN, WAIT, screen_lines, server, strip_ansi};
use crwatch_apiserver::TestServer;
use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
use rustix::termios::{Winsize, tcsetwinsize};
use serde_json::json;
use tokio::sync::mpsc;

/// `crwatch` running on a pseudo-terminal; everything it writes, as the terminal got it.
struct Terminal {
    child: Child,
    chunks: mpsc::UnboundedReceiver<Vec<u8>>,
    raw: Vec<u8>,
}

impl Terminal {
    /// Start `crwatch ARGS --kubeconfig ...` with stdout and stderr on a new 120×40 terminal.
    fn start(server: &TestServer, args: &[&str], env: &[(&str, &str)]) -> Terminal {
        let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC).expect("openpt");
        grantpt(&master).expect("grantpt");
        unlockpt(&master).expect("unlockpt");
        let name = ptsname(&master, Vec::new()).expect("ptsname");
        let tty = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(OsStr::from_bytes(name.as_bytes()))
            .expect("the terminal opens");
        let size = Winsize {
            ws_row: 40,
            ws_col: 120,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        tcsetwinsize(&tty, size).expect("window size set");
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .arg("--kubeconfig")
            .arg(server.kubeconfig())
            .env_remove("KUBECONFIG")
            .env_remove("NO_COLOR")
            .env("TERM", "xterm-256color")
            .stdin(Stdio::null())
            .stdout(tty.try_clone().expect("terminal handle"))
            .stderr(tty);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("crwatch starts");
        // The child holds the terminal now; ours went with `cmd`.
        drop(cmd);
        let (tx, chunks) = mpsc::unbounded_channel();
        let mut reader = File::from(master);
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            // Reading ends with EIO once the child (the last holder of the terminal) is gone.
            while let Ok(n @ 1..) = reader.read(&mut buf) {
                if tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Terminal {
            child,
            chunks,
            raw: vec![],
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.raw).into_owned()
    }

    /// The screen's complete lines once `done` holds for them (at most [`WAIT`]).
    async fn lines_until(&mut self, done: impl Fn(&[String]) -> bool) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let lines = screen_lines(&self.text());
            if done(&lines) {
                return lines;
            }
            match tokio::time::timeout_at(deadline, self.chunks.recv()).await {
                Ok(Some(chunk)) => self.raw.extend(chunk),
                Ok(None) => panic!("the terminal closed; it showed:\n{}", self.text()),
                Err(_) => panic!("timed out; the terminal showed:\n{}", self.text()),
            }
        }
    }

    /// Wait for the child to exit (at most [`WAIT`]); its exit code, and the rest of its output.
    async fn exit(&mut self) -> i32 {
        let deadline = tokio::time::Instant::now() + WAIT;
        while let Ok(Some(chunk)) = tokio::time::timeout_at(deadline, self.chunks.recv()).await {
            self.raw.extend(chunk);
        }
        let status = self.child.wait().expect("crwatch exits");
        status.code().unwrap_or(-1)
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run the watch scenario on a terminal; the lines it shows (escapes stripped) and the raw
/// output.
async fn scenario_on_a_terminal(env: &[(&str, &str)]) -> (Vec<String>, String) {
    let server = server().await;
    common::scenario_setup(&server).await;
    let mut term = Terminal::start(&server, common::SCENARIO_ARGS, env);
    term.lines_until(|l| l.iter().any(|l| l.starts_with("ADDED")))
        .await;
    common::scenario_changes(&server).await;
    let lines = term.lines_until(common::scenario_done).await;
    (lines, term.text())
}

#[tokio::test]
async fn a_watch_on_a_terminal_is_coloured_and_aligned() {
    let (lines, raw) = scenario_on_a_terminal(&[]).await;
    common::check_scenario(&lines);
    // Events in green, yellow and red; diff groups dimmed; old values red, new values green.
    for coloured in [
        "\x1b[32mADDED\x1b[0m",
        "\x1b[33mMODIFIED\x1b[0m",
        "\x1b[31mDELETED\x1b[0m",
        "    \x1b[2mspec:\x1b[0m",
        "    \x1b[2mstatus:\x1b[0m",
        "spec.size: \x1b[31m\"10Gi\"\x1b[0m \x1b[2m→\x1b[0m \x1b[32m\"20Gi\"\x1b[0m",
        "\x1b[32m+ status: {\"phase\":\"Ready\",\"ready\":true}\x1b[0m",
    ] {
        assert!(raw.contains(coloured), "{coloured:?} in {raw:?}");
    }
    // The header is not coloured.
    let header = raw.lines().next().unwrap_or_default();
    assert_eq!(strip_ansi(header).trim_end(), header.trim_end());
}

#[tokio::test]
async fn no_color_turns_colours_off_on_a_terminal() {
    let (lines, raw) = scenario_on_a_terminal(&[("NO_COLOR", "1")]).await;
    common::check_scenario(&lines);
    assert!(!raw.contains('\x1b'), "no escapes at all with NO_COLOR: {raw:?}");
}

/// A server with `n` ConfigMaps in `default`, answering every request after `latency`.
async fn slow_server_with_configmaps(n: usize, latency: Duration) -> TestServer {
    let server = TestServer::start().await.expect("server starts");
    for i in 0..n {
        server
            .server()
            .apply(json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": format!("cm-{i:04}"), "namespace": "default"}, "data": {"k": "v"}}))
            .await
            .expect("configmap created");
    }
    server.faults().set_latency(latency);
    server
}

const CONFIGMAPS: usize = 1200;

#[tokio::test]
async fn a_long_list_shows_a_spinner_on_a_terminal_and_clears_it() {
    let server = slow_server_with_configmaps(CONFIGMAPS, Duration::from_millis(300)).await;
    let mut term = Terminal::start(&server, &["get", "configmaps"], &[]);
    let code = term.exit().await;
    assert_eq!(code, 0, "{}", term.text());
    let raw = term.text();
    assert!(
        raw.contains("listing configmaps in namespace default: ") && raw.contains(" so far"),
        "a spinner with the count: {raw:?}"
    );
    assert!(
        [500, 1000].iter().any(|n| raw.contains(&format!(": {n} so far"))),
        "{raw:?}"
    );
    // What stays on the screen is the table alone: the spinner was cleared.
    let lines: Vec<String> = screen_lines(&raw)
        .into_iter()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(lines.len(), CONFIGMAPS + 1, "{:?}", &lines[..3.min(lines.len())]);
    assert_eq!(common::words(&lines[0]), ["NAME", "DATA", "AGE"]);
    assert_eq!(common::words(&lines[1])[..2], ["cm-0000", "1"]);
    assert!(lines.iter().all(|l| !l.contains("so far")));
}

#[tokio::test]
async fn a_long_list_shows_no_spinner_in_a_pipe() {
    let server = slow_server_with_configmaps(CONFIGMAPS, Duration::from_millis(300)).await;
    let out = tokio::process::Command::new(BIN)
        .args(["get", "configmaps", "-w"])
        .arg("--kubeconfig")
        .arg(server.kubeconfig())
        .env_remove("KUBECONFIG")
        .env_remove("NO_COLOR")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("crwatch starts");
    let mut out = out;
    let stdout = out.stdout.take().expect("stdout");
    let mut stderr = out.stderr.take().expect("stderr");
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let mut got = 0;
    while got < CONFIGMAPS + 1 {
        tokio::time::timeout(WAIT, lines.next_line())
            .await
            .expect("the list within 20 s")
            .expect("stdout readable")
            .expect("crwatch still running");
        got += 1;
    }
    out.kill().await.expect("crwatch stops");
    let mut err = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut err)
        .await
        .expect("stderr readable");
    assert_eq!(err, "", "nothing on stderr in a pipe");
}
