//! `crwatch demo gateway` end to end: the built binary runs the gateway operator in process
//! with a real nginx (Debian's) and two local backends, and ends by itself; the watch output
//! (routes added, weights shifted as diffs, a route nginx refuses, deletions), the narration's
//! load counts and summary (0 failed), and that no nginx is left running are checked; `--keep`
//! leaves the gateway usable with kubectl and curl until Ctrl-C, which stops nginx too.
//!
//! Those need the `demo-gateway` feature (`cargo test -p crwatch-cli --features demo-gateway
//! --test demo_gateway`, as scripts/test runs it). Without it, the subcommand says how to get it.

mod common;

use common::BIN;
use tokio::process::Command;

/// `crwatch demo gateway --pace 0s` sets the demo's pace: the flags are shared with `crwatch demo`.
#[test]
fn the_gateway_demo_takes_the_demo_flags_after_or_before_it() {
    use crwatch_cli::args::{Cli, Command, DemoCommand};
    for argv in [
        ["crwatch", "demo", "gateway", "--pace", "0s", "--keep"],
        ["crwatch", "demo", "--pace", "0s", "--keep", "gateway"],
    ] {
        let cli = Cli::try_parse_checked_from(argv).expect("parses");
        let Command::Demo(demo) = cli.command else {
            panic!("{argv:?} is not the demo");
        };
        assert_eq!(demo.demo, Some(DemoCommand::Gateway), "{argv:?}");
        assert!(demo.pace.is_zero() && demo.keep, "{argv:?}");
    }
    let cli = Cli::try_parse_checked_from(["crwatch", "demo"]).expect("parses");
    let Command::Demo(demo) = cli.command else {
        panic!("not the demo");
    };
    assert_eq!(demo.demo, None, "the Database demo stays the default");
}

#[tokio::test]
async fn the_operator_flags_belong_to_the_database_demo() {
    let out = Command::new(BIN)
        .args(["demo", "--no-operator", "gateway"])
        .kill_on_drop(true)
        .output()
        .await
        .expect("crwatch runs");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("always runs the gateway operator"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[cfg(not(feature = "demo-gateway"))]
#[tokio::test]
async fn without_the_feature_the_demo_says_how_to_build_it() {
    let out = Command::new(BIN)
        .args(["demo", "gateway", "--pace", "0s"])
        .kill_on_drop(true)
        .output()
        .await
        .expect("crwatch runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--features demo-gateway"), "{stderr}");
    assert!(stderr.contains("./scripts/demo gateway"), "{stderr}");
}

#[cfg(feature = "demo-gateway")]
mod live {
    use std::process::Stdio;
    use std::time::Duration;

    use super::common::{BIN, WAIT, cells_at, words};
    use tokio::io::{AsyncBufReadExt, BufReader};
    use tokio::process::Command;

    /// The demo reloads nginx about ten times and waits for each reload's old workers.
    const DEMO_WAIT: Duration = Duration::from_secs(180);

    /// A temporary directory for the demo (its `TMPDIR`, so nginx's prefix is made in it) that
    /// kills any nginx left under it when dropped: a failing test kills the demo with SIGKILL,
    /// and nginx, in its own process group, would outlive it.
    struct Scratch(tempfile::TempDir);

    impl Scratch {
        fn new() -> Self {
            let dir = tempfile::tempdir().expect("a temporary directory");
            // nginx's workers (nobody, under root) must reach the prefix inside it.
            std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .expect("chmod");
            Scratch(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let Ok(entries) = std::fs::read_dir(self.0.path()) else {
                return;
            };
            for e in entries.flatten() {
                let Ok(pid) = std::fs::read_to_string(e.path().join("nginx.pid")) else {
                    continue;
                };
                // The pid file of an nginx this test's demo started: its process group.
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", "--", &format!("-{}", pid.trim())])
                    .status();
            }
        }
    }

    /// The value after `key` in `line`, up to the next `sep`.
    fn after<'a>(line: &'a str, key: &str, sep: char) -> &'a str {
        line.split_once(key)
            .map(|(_, rest)| rest.split(sep).next().unwrap_or(rest))
            .unwrap_or_else(|| panic!("no {key:?} in {line:?}"))
    }

    /// Whether a process runs whose command line mentions `needle`.
    fn process_with(needle: &str) -> Option<String> {
        let entries = std::fs::read_dir("/proc").expect("/proc readable");
        entries.flatten().find_map(|e| {
            e.file_name().to_str()?.parse::<u32>().ok()?;
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            cmd.contains(needle).then_some(cmd)
        })
    }

    /// nginx is gone: no process under its prefix, the prefix (and its pid file) removed, and
    /// its port closed.
    async fn assert_nginx_gone(stderr: &str) {
        let line = stderr
            .lines()
            .find(|l| l.contains(", prefix "))
            .unwrap_or_else(|| panic!("no nginx line: {stderr}"));
        let prefix = after(line, ", prefix ", ')');
        let addr = after(line, ") on ", ',');
        assert!(prefix.starts_with('/'), "{line}");
        if let Some(cmd) = process_with(prefix) {
            panic!("nginx is still running: {cmd}");
        }
        assert!(
            !std::path::Path::new(prefix).join("nginx.pid").exists(),
            "{prefix}/nginx.pid is left"
        );
        assert!(!std::path::Path::new(prefix).exists(), "{prefix} is left");
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "nginx still listens on {addr}"
        );
    }

    /// `v1=N v2=M` counts from a narrated load line.
    fn counts(line: &str) -> (u64, u64) {
        let n = |b: &str| -> u64 {
            after(line, &format!(" {b}="), ' ')
                .parse()
                .unwrap_or_else(|_| panic!("no count of {b}: {line}"))
        };
        (n("v1"), n("v2"))
    }

    #[tokio::test]
    async fn the_gateway_demo_shifts_weights_under_load_without_a_failed_request() {
        let scratch = Scratch::new();
        let out = Command::new(BIN)
            .args(["demo", "gateway", "--pace", "0s"])
            .env_remove("NO_COLOR")
            .env_remove("CRWATCH_NGINX")
            .env("TMPDIR", scratch.0.path())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(DEMO_WAIT, out)
            .await
            .expect("the demo ends within 3 minutes")
            .expect("the demo runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");

        // The watch: rows as EVENT|NAME|HOST|PATH|ACCEPTED|PROGRAMMED (no AGE), diff lines as
        // they are.
        let lines: Vec<&str> = stdout.lines().collect();
        let header = lines[0];
        assert_eq!(
            words(header),
            ["EVENT", "NAME", "HOST", "PATH", "ACCEPTED", "PROGRAMMED", "AGE"]
        );
        let shown: Vec<String> = lines[1..]
            .iter()
            .map(|l| {
                if l.starts_with(' ') {
                    l.to_string()
                } else {
                    cells_at(header, l)[..6].join("|")
                }
            })
            .collect();
        let at = |line: &str| {
            shown
                .iter()
                .position(|l| l == line)
                .unwrap_or_else(|| panic!("no line {line:?}:\n{stdout}"))
        };
        // The route, programmed; then each shift as a spec diff, programmed in turn (the
        // operator's status diff follows every spec diff).
        let mut order = vec![
            at("ADDED|shop|shop.demo|/||"),
            at("MODIFIED|shop|shop.demo|/|True|True"),
        ];
        for (generation, (from, to)) in [((100, 0), (90, 10)), ((90, 10), (50, 50)), ((50, 50), (0, 100))]
            .into_iter()
            .enumerate()
        {
            let first = at(&format!("      spec.backends[0].weight: {} → {}", from.0, to.0));
            assert_eq!(
                shown[first + 1],
                format!("      spec.backends[1].weight: {} → {}", from.1, to.1),
                "{stdout}"
            );
            order.push(first);
            order.push(at(&format!(
                "      status.conditions[Programmed].observedGeneration: {} → {}",
                generation + 1,
                generation + 2
            )));
        }
        order.push(at("ADDED|shop-canary|shop.demo|/||"));
        order.push(at("MODIFIED|shop-canary|shop.demo|/|True|True"));
        order.push(at("ADDED|shop-bad|shop.demo|^/(x||"));
        order.push(at("MODIFIED|shop-bad|shop.demo|^/(x|False|False"));
        order.push(at("DELETED|shop-bad|shop.demo|^/(x|False|False"));
        order.push(at("DELETED|shop-canary|shop.demo|/|True|True"));
        order.push(at("DELETED|shop|shop.demo|/|True|True"));
        assert!(order.is_sorted(), "out of order {order:?}:\n{stdout}");
        assert_eq!(order.last(), Some(&(shown.len() - 1)), "{stdout}");

        // The narration: each split's traffic while it was live, within a tolerance (nginx's
        // smooth weighted round robin follows the weights almost exactly).
        let said: Vec<&str> = stderr.lines().collect();
        let load_line = |what: &str| {
            said.iter()
                .find(|l| l.starts_with("  load, ") && l.contains(what))
                .unwrap_or_else(|| panic!("no load line {what:?}:\n{stderr}"))
        };
        for (what, share_v1) in [
            ("with weights 100/0", 1.0),
            ("once 90/10 was live", 0.9),
            ("once 50/50 was live", 0.5),
            ("once 0/100 was live", 0.0),
        ] {
            let line = load_line(what);
            let (v1, v2) = counts(line);
            assert!(v1 + v2 >= 100, "{line}");
            let share = v1 as f64 / (v1 + v2) as f64;
            assert!((share - share_v1).abs() <= 0.05, "{line}");
            assert!(line.ends_with(" 0 failed"), "{line}");
        }
        // The canary takes the header's requests; the bad route is refused with nginx's
        // message while traffic goes on.
        assert!(
            said.iter().any(
                |l| l.starts_with("  ✓ curl -H 'Host: shop.demo' -H 'x-canary: 1' ")
                    && l.ends_with(" → 200 from v1")
            ),
            "{stderr}"
        );
        let refused = said
            .iter()
            .find(|l| l.starts_with("  ✗ shop-bad: Accepted=False: "))
            .unwrap_or_else(|| panic!("no refusal:\n{stderr}"));
        assert!(refused.contains("pcre"), "nginx's message: {refused}");
        let since = load_line("requests since");
        assert_eq!(counts(since).0, 0, "all on v2: {since}");
        assert!(since.ends_with(" 0 failed"), "{since}");
        assert!(
            said.iter().any(|l| l.ends_with(" → 404: no route left")),
            "{stderr}"
        );
        let steps: Vec<&&str> = said.iter().filter(|l| l.starts_with("→ ")).collect();
        assert_eq!(steps[0], &"→ crwatch get gatewayroutes -n demo -w --diff");
        assert_eq!(
            steps
                .iter()
                .filter(|l| l.starts_with(
                    "→ kubectl patch gwr shop -n demo --type=merge -p '{\"spec\":{\"backends\":"
                ))
                .count(),
            3,
            "{stderr}"
        );

        // The summary: every request answered, and nginx reloaded for each change.
        let summary = said.last().copied().unwrap_or_default();
        assert!(
            summary.starts_with("crwatch demo gateway: done: ")
                && summary.contains(" requests sent, 0 failed, "),
            "{stderr}"
        );
        let sent: u64 = after(summary, "done: ", ' ').parse().expect("a count");
        assert!(sent >= 500, "{summary}");
        let reloads: u64 = after(summary, "0 failed, ", ' ').parse().expect("a count");
        // nginx's start, then one reload per change it serves: shop created (unless nginx
        // started with it: the operator's first sync may come after it), the three shifts,
        // the canary added and removed, shop removed; the refused route changes nothing.
        assert!(
            (7..=8).contains(&reloads),
            "one reload per served change: {summary}"
        );
        assert!(!stdout.contains('\x1b') && !stderr.contains('\x1b'));
        assert_nginx_gone(&stderr).await;
        drop(scratch);
    }

    #[tokio::test]
    async fn without_nginx_the_demo_says_how_to_install_it() {
        let empty = tempfile::tempdir().expect("a directory");
        let out = Command::new(BIN)
            .args(["demo", "gateway", "--pace", "0s"])
            .env("CRWATCH_NGINX", empty.path().join("nginx"))
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(WAIT, out)
            .await
            .expect("the demo ends within 20 s")
            .expect("the demo runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.starts_with("error: nginx is not installed"), "{stderr}");
        assert!(stderr.contains("apt-get install nginx"), "{stderr}");
        assert!(out.stdout.is_empty());
    }

    #[tokio::test]
    async fn with_keep_the_gateway_stays_for_kubectl_and_curl_until_ctrl_c() {
        let scratch = Scratch::new();
        let mut child = Command::new(BIN)
            .args(["demo", "gateway", "--pace", "0s", "--keep"])
            .env_remove("CRWATCH_NGINX")
            .env("TMPDIR", scratch.0.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the demo starts");
        let mut stderr = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let said = tokio::time::timeout(DEMO_WAIT, async {
            let mut said = String::new();
            while let Some(l) = stderr.next_line().await.expect("stderr readable") {
                said.push_str(&l);
                said.push('\n');
                if l.starts_with("then: curl ") {
                    return said;
                }
            }
            panic!("the demo ended without the hints:\n{said}");
        })
        .await
        .expect("the hints within 3 minutes");
        let hint = said
            .lines()
            .find(|l| l.starts_with("and, in another terminal: kubectl --kubeconfig "))
            .unwrap_or_else(|| panic!("no kubectl hint:\n{said}"));
        let kubeconfig = after(hint, "--kubeconfig ", ' ').to_string();
        let manifest = after(hint, "<<< '", '\'').to_string();
        let curl = said.lines().last().unwrap_or_default();
        let addr = after(curl, "http://", '/').to_string();

        // The hint works: kubectl applies the route, the watch shows it, and nginx serves it.
        let cache = tempfile::tempdir().expect("a cache directory");
        let applied =
            std::process::Command::new(std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into()))
                .arg("--kubeconfig")
                .arg(&kubeconfig)
                .arg(format!("--cache-dir={}", cache.path().display()))
                .env("HOME", cache.path())
                .args(["apply", "-f", "-"])
                .stdin(
                    std::fs::File::open({
                        let path = cache.path().join("shop.json");
                        std::fs::write(&path, &manifest).expect("manifest written");
                        path
                    })
                    .expect("manifest readable"),
                )
                .output()
                .expect("kubectl runs");
        assert!(
            applied.status.success(),
            "{}",
            String::from_utf8_lossy(&applied.stderr)
        );
        tokio::time::timeout(WAIT, async {
            // The script's shop came and went first: wait for the second one.
            let mut added = 0;
            while let Some(l) = stdout.next_line().await.expect("stdout readable") {
                if l.starts_with("ADDED") && words(&l)[1] == "shop" {
                    added += 1;
                }
                if added == 2
                    && l.starts_with("MODIFIED")
                    && words(&l)[1..6] == ["shop", "shop.demo", "/", "True", "True"]
                {
                    return;
                }
            }
            panic!("the watch ended");
        })
        .await
        .expect("the route is programmed within 20 s");
        let addr: std::net::SocketAddr = addr.parse().expect("nginx's address");
        let r = get_shop(addr).await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        assert!(r.to_ascii_lowercase().contains("x-backend: v"), "{r}");

        // Ctrl-C ends it cleanly: nginx, its prefix and the kubeconfig are gone.
        let pid = child.id().expect("a pid").to_string();
        let signalled = std::process::Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .expect("kill runs");
        assert!(signalled.success());
        let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
            .await
            .expect("the demo ends within 60 s of Ctrl-C")
            .expect("the demo exits");
        assert_eq!(status.code(), Some(0));
        assert!(!std::path::Path::new(&kubeconfig).exists());
        assert_nginx_gone(&said).await;
        drop(scratch);
    }

    /// `GET /` with `Host: shop.demo` on a new connection; the raw response head.
    async fn get_shop(addr: std::net::SocketAddr) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("nginx answers");
        s.write_all(b"GET / HTTP/1.1\r\nHost: shop.demo\r\nConnection: close\r\n\r\n")
            .await
            .expect("request sent");
        let mut buf = Vec::new();
        tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
            .await
            .expect("an answer within 20 s")
            .expect("response read");
        String::from_utf8_lossy(&buf).into_owned()
    }
}
