//! The conformance suite driven as a user would: real `kubectl` (the one on PATH, and the
//! versioned `kubectl.1.27` / `kubectl.1.33` where behaviour differs across versions) against
//! the in-process server, and against a real cluster when `CRWATCH_TEST_KUBECONFIG` is set.
//! Output is checked line for line where kubectl prints what the server said.

mod common;

use std::io::BufRead;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::Target;
use serde_json::Value;

const DB: &str = "database.stable.example.com";
const DBS: &str = "databases.stable.example.com";

/// A Database manifest; `extra` is appended to the spec (flow style, e.g. `, foo: bar`).
fn db_yaml(name: &str, ns: &str, engine: &str, size: &str, extra: &str) -> String {
    format!(
        "apiVersion: stable.example.com/v1\nkind: Database\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec: {{engine: {engine}, version: \"15\", size: {size}{extra}}}\n"
    )
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Run a prepared kubectl command with optional stdin; returns (exit code, stdout, stderr).
fn run(t: &Target, cmd: Command, stdin: Option<&str>) -> (i32, String, String) {
    let out: Output = t.run(cmd, stdin);
    (
        out.status.code().unwrap_or(-1),
        text(&out.stdout),
        text(&out.stderr),
    )
}

/// `kubectl ARGS` with the PATH kubectl; returns (exit code, stdout, stderr).
fn kubectl(t: &Target, args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    let mut cmd = t.kubectl();
    cmd.args(args);
    run(t, cmd, stdin)
}

/// A JSON view of one object, read with `kubectl get -o json`.
fn get_json(t: &Target, ns: &str, what: &str) -> Value {
    let out = t.kubectl_ok(&["get", what, "-n", ns, "-o", "json"], None);
    serde_json::from_str(&out).expect("kubectl -o json prints JSON")
}

/// The whitespace-separated columns of a table line.
fn cols(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

fn assert_not_found(t: &Target, ns: &str, resource: &str, plural_group: &str, name: &str) {
    let err = t.kubectl_err(&["get", resource, name, "-n", ns], None);
    assert_eq!(
        err.trim_end(),
        format!("Error from server (NotFound): {plural_group} \"{name}\" not found"),
        "[{}]",
        t.name
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crd_is_applied_established_and_discovered() {
    for t in common::targets().await {
        let crd = common::database_crd_path();
        let out = t.kubectl_ok(&["apply", "-f", crd.to_str().unwrap()], None);
        let verbs = ["created", "configured", "unchanged"];
        assert!(
            verbs.iter().any(|v| out.trim_end() == format!("customresourcedefinition.apiextensions.k8s.io/{DBS} {v}")),
            "[{}] apply CRD printed {out:?}",
            t.name
        );
        let out = t.kubectl_ok(
            &[
                "wait",
                "--for",
                "condition=established",
                &format!("crd/{DBS}"),
                "--timeout=30s",
            ],
            None,
        );
        assert_eq!(
            out,
            format!("customresourcedefinition.apiextensions.k8s.io/{DBS} condition met\n")
        );

        let out = t.kubectl_ok(&["get", "crd"], None);
        let mut lines = out.lines();
        assert_eq!(
            cols(lines.next().unwrap()),
            ["NAME", "CREATED", "AT"],
            "[{}] {out}",
            t.name
        );
        assert!(lines.any(|l| cols(l).first() == Some(&DBS)), "[{}] {out}", t.name);
        let out = t.kubectl_ok(
            &["get", "crd", DBS, "-o", "jsonpath={.spec.names.shortNames}"],
            None,
        );
        assert_eq!(out, r#"["db"]"#);

        // Discovery as kubectl shows it.
        let out = t.kubectl_ok(&["api-resources"], None);
        let header = out.lines().next().unwrap();
        assert_eq!(
            cols(header),
            ["NAME", "SHORTNAMES", "APIVERSION", "NAMESPACED", "KIND"],
            "[{}]",
            t.name
        );
        let db_line = out
            .lines()
            .find(|l| l.starts_with("databases "))
            .expect("databases listed");
        assert_eq!(
            cols(db_line),
            ["databases", "db", "stable.example.com/v1", "true", "Database"]
        );
        let cm_line = out
            .lines()
            .find(|l| l.starts_with("configmaps "))
            .expect("configmaps listed");
        assert_eq!(cols(cm_line), ["configmaps", "cm", "v1", "true", "ConfigMap"]);
        let out = t.kubectl_ok(
            &["api-resources", "--api-group=stable.example.com", "-o", "name"],
            None,
        );
        assert_eq!(out, format!("{DBS}\n"), "[{}]", t.name);

        let out = t.kubectl_ok(&["api-versions"], None);
        let versions: Vec<&str> = out.lines().collect();
        for v in [
            "stable.example.com/v1",
            "apps/v1",
            "apiextensions.k8s.io/v1",
            "v1",
        ] {
            assert!(
                versions.contains(&v),
                "[{}] api-versions lacks {v}: {out}",
                t.name
            );
        }
        let mut sorted = versions.clone();
        sorted.sort();
        assert_eq!(versions, sorted, "kubectl sorts api-versions");

        let out = t.kubectl_ok(&["get", "--raw", "/version"], None);
        let v: Value = serde_json::from_str(&out).expect("/version is JSON");
        assert_eq!(v["major"], "1", "[{}] {out}", t.name);
        assert!(
            v["gitVersion"].as_str().is_some_and(|g| g.starts_with("v1.")),
            "{out}"
        );
        assert!(
            v["minor"].as_str().is_some_and(|m| m.parse::<u32>().is_ok()),
            "{out}"
        );
        let platform = v["platform"].as_str().unwrap_or_default();
        let (os, arch) = platform.split_once('/').unwrap_or_default();
        assert!(!os.is_empty(), "{out}");
        assert!(
            !["x86_64", "aarch64", ""].contains(&arch),
            "[{}] Go's GOARCH names: {out}",
            t.name
        );
        let out = t.kubectl_ok(&["version", "-o", "json"], None);
        let v: Value = serde_json::from_str(&out).expect("kubectl version -o json");
        assert_eq!(v["serverVersion"]["major"], "1", "[{}] {out}", t.name);
        t.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_databases_by_every_name_and_output_format() {
    for t in common::targets().await {
        t.install_database_crd().await;
        let ns = t.namespace("kget").await;
        let manifest = format!(
            "apiVersion: stable.example.com/v1\nkind: Database\nmetadata:\n  name: my-app-db\n  namespace: {ns}\n  labels: {{app: web, tier: data}}\nspec:\n  engine: PostgreSQL\n  version: \"15\"\n  size: 10Gi\n  users:\n    - username: admin\n    - username: appuser\n---\n{}",
            db_yaml("other-db", &ns, "MySQL", "1Gi", "")
        );
        let out = t.kubectl_ok(&["apply", "-f", "-"], Some(&manifest));
        assert_eq!(
            out,
            format!("{DB}/my-app-db created\n{DB}/other-db created\n"),
            "[{}]",
            t.name
        );

        let header = "NAME        ENGINE       VERSION   PHASE   READY   AGE";
        for what in ["db", "databases", "database", DB, DBS] {
            let out = t.kubectl_ok(&["get", what, "-n", &ns], None);
            let lines: Vec<&str> = out.lines().collect();
            assert_eq!(lines.len(), 3, "[{}] get {what}: {out}", t.name);
            assert_eq!(lines[0], header, "[{}] get {what}", t.name);
            assert_eq!(cols(lines[1])[..3], ["my-app-db", "PostgreSQL", "15"], "{out}");
            assert_eq!(cols(lines[2])[..3], ["other-db", "MySQL", "15"], "{out}");
        }
        // Printer columns follow status once it is set (through the status subresource).
        t.kubectl_ok(
            &[
                "patch",
                "db",
                "my-app-db",
                "-n",
                &ns,
                "--subresource=status",
                "--type=merge",
                "-p",
                r#"{"status":{"phase":"Ready","ready":true}}"#,
            ],
            None,
        );
        let out = t.kubectl_ok(&["get", "db", "my-app-db", "-n", &ns, "-o", "wide"], None);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0], "NAME        ENGINE       VERSION   PHASE   READY   AGE",
            "[{}]",
            t.name
        );
        assert_eq!(
            cols(lines[1])[..5],
            ["my-app-db", "PostgreSQL", "15", "Ready", "true"],
            "{out}"
        );
        let out = t.kubectl_ok(&["get", "db", "-n", &ns, "--no-headers"], None);
        assert_eq!(out.lines().count(), 2, "{out}");

        // -o yaml / json / name / jsonpath.
        let out = t.kubectl_ok(&["get", "db", "my-app-db", "-n", &ns, "-o", "yaml"], None);
        let y: Value = serde_saphyr::from_str(&out).expect("-o yaml is YAML");
        assert_eq!(y["apiVersion"], "stable.example.com/v1");
        assert_eq!(y["kind"], "Database");
        assert_eq!(
            y["spec"]["deletionPolicy"], "Retain",
            "the schema default is applied: {out}"
        );
        assert_eq!(y["spec"]["users"][1]["username"], "appuser");
        assert_eq!(y["status"]["phase"], "Ready");
        assert!(
            y["metadata"].get("managedFields").is_none(),
            "kubectl hides managedFields: {out}"
        );
        assert!(
            out.starts_with("apiVersion: stable.example.com/v1\nkind: Database\nmetadata:\n"),
            "{out}"
        );
        let j = get_json(&t, &ns, "db/my-app-db");
        assert_eq!(j["metadata"]["labels"]["tier"], "data");
        assert_eq!(j["metadata"]["generation"], 1);
        let list = get_json(&t, &ns, "db");
        assert_eq!(list["kind"], "List");
        assert_eq!(list["items"].as_array().map(Vec::len), Some(2));
        let out = t.kubectl_ok(&["get", "db", "-n", &ns, "-o", "name"], None);
        assert_eq!(out, format!("{DB}/my-app-db\n{DB}/other-db\n"));
        let out = t.kubectl_ok(
            &["get", "db", "-n", &ns, "-o", "jsonpath={.items[*].spec.size}"],
            None,
        );
        assert_eq!(out, "10Gi 1Gi");
        let out = t.kubectl_ok(
            &[
                "get",
                "db",
                "-n",
                &ns,
                "-o",
                "custom-columns=NAME:.metadata.name,SIZE:.spec.size",
            ],
            None,
        );
        assert_eq!(out, "NAME        SIZE\nmy-app-db   10Gi\nother-db    1Gi\n");

        // All namespaces: a NAMESPACE column first.
        let out = t.kubectl_ok(&["get", "db", "-A"], None);
        assert_eq!(
            cols(out.lines().next().unwrap()),
            ["NAMESPACE", "NAME", "ENGINE", "VERSION", "PHASE", "READY", "AGE"]
        );
        let mine: Vec<Vec<&str>> = out.lines().map(cols).filter(|c| c[0] == ns).collect();
        assert_eq!(mine.len(), 2, "[{}] {out}", t.name);
        assert_eq!(mine[0][..3], [ns.as_str(), "my-app-db", "PostgreSQL"]);

        // Label and field selectors.
        let out = t.kubectl_ok(&["get", "db", "-n", &ns, "-l", "app=web", "-o", "name"], None);
        assert_eq!(out, format!("{DB}/my-app-db\n"));
        let out = t.kubectl_ok(&["get", "db", "-n", &ns, "-l", "app!=web", "-o", "name"], None);
        assert_eq!(out, format!("{DB}/other-db\n"));
        let out = t.kubectl_ok(
            &[
                "get",
                "db",
                "-n",
                &ns,
                "-l",
                "tier in (data,cache),app",
                "-o",
                "name",
            ],
            None,
        );
        assert_eq!(out, format!("{DB}/my-app-db\n"));
        let (code, out, err) = kubectl(&t, &["get", "db", "-n", &ns, "-l", "app=nope"], None);
        assert_eq!((code, out.as_str()), (0, ""));
        assert_eq!(err, format!("No resources found in {ns} namespace.\n"));
        let out = t.kubectl_ok(
            &[
                "get",
                "db",
                "-n",
                &ns,
                "--field-selector",
                "metadata.name=other-db",
                "-o",
                "name",
            ],
            None,
        );
        assert_eq!(out, format!("{DB}/other-db\n"));
        let out = t.kubectl_ok(
            &[
                "get",
                "db",
                "-n",
                &ns,
                "--field-selector",
                "metadata.name!=other-db",
                "-o",
                "name",
            ],
            None,
        );
        assert_eq!(out, format!("{DB}/my-app-db\n"));
        let (code, _, err) = kubectl(
            &t,
            &["get", "db", "-n", &ns, "--field-selector", "metadata.name=none"],
            None,
        );
        assert_eq!(
            (code, err),
            (0, format!("No resources found in {ns} namespace.\n"))
        );
        assert_not_found(&t, &ns, "db", DBS, "missing");
        t.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_databases_are_rejected_with_the_real_messages() {
    for t in common::targets().await {
        t.install_database_crd().await;
        let ns = t.namespace("kinvalid").await;
        let cases = [
            (
                db_yaml("bad", &ns, "Oracle", "10Gi", ""),
                r#"The Database "bad" is invalid: spec.engine: Unsupported value: "Oracle": supported values: "PostgreSQL", "MySQL""#,
            ),
            (
                format!(
                    "apiVersion: stable.example.com/v1\nkind: Database\nmetadata: {{name: bad, namespace: {ns}}}\nspec: {{engine: MySQL, size: 1Gi}}\n"
                ),
                r#"The Database "bad" is invalid: spec.version: Required value"#,
            ),
            (
                db_yaml("bad", &ns, "MySQL", "lots", ""),
                r#"The Database "bad" is invalid: spec.size: Invalid value: "lots": spec.size in body should match '^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$'"#,
            ),
            (
                db_yaml("bad", &ns, "MySQL", "1Gi", ", users: [{username: \"\"}]"),
                r#"The Database "bad" is invalid: spec.users[0].username: Invalid value: "": spec.users[0].username in body should be at least 1 chars long"#,
            ),
        ];
        for (manifest, want) in &cases {
            for verb in ["apply", "create"] {
                let err = t.kubectl_err(&[verb, "-f", "-"], Some(manifest));
                assert_eq!(err.trim_end(), *want, "[{}] kubectl {verb}", t.name);
            }
        }
        // Several problems at once: one bullet line each.
        let manifest = format!(
            "apiVersion: stable.example.com/v1\nkind: Database\nmetadata: {{name: bad, namespace: {ns}}}\nspec: {{engine: Oracle, size: lots}}\n"
        );
        let err = t.kubectl_err(&["apply", "-f", "-"], Some(&manifest));
        let mut lines: Vec<&str> = err.lines().collect();
        assert_eq!(
            lines.remove(0),
            r#"The Database "bad" is invalid: "#,
            "[{}] {err}",
            t.name
        );
        lines.sort();
        assert_eq!(
            lines,
            [
                r#"* spec.engine: Unsupported value: "Oracle": supported values: "PostgreSQL", "MySQL""#,
                r#"* spec.size: Invalid value: "lots": spec.size in body should match '^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$'"#,
                "* spec.version: Required value",
            ],
            "[{}] {err}",
            t.name
        );
        let (_, _, err) = kubectl(&t, &["get", "db", "-n", &ns], None);
        assert_eq!(
            err,
            format!("No resources found in {ns} namespace.\n"),
            "nothing was stored"
        );
        t.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_fields_follow_the_validation_directive_across_kubectl_versions() {
    for t in common::targets().await {
        t.install_database_crd().await;
        let ns = t.namespace("kfields").await;
        for bin in ["kubectl.1.27", "kubectl.1.33", "kubectl"] {
            let manifest = db_yaml("extra", &ns, "MySQL", "1Gi", ", foo: bar");
            let with = |flags: &[&str]| {
                let mut cmd = t.kubectl_bin(bin);
                cmd.args(["apply", "-f", "-"]).args(flags);
                run(&t, cmd, Some(&manifest))
            };
            // Strict is the default: rejected by the server.
            for flags in [&[][..], &["--validate=strict"], &["--validate=true"]] {
                let (code, out, err) = with(flags);
                assert_eq!(
                    (code, out.as_str()),
                    (1, ""),
                    "[{}] {bin} {flags:?}: {err}",
                    t.name
                );
                assert_eq!(
                    err.trim_end(),
                    r#"Error from server (BadRequest): error when creating "STDIN": Database in version "v1" cannot be handled as a Database: strict decoding error: unknown field "spec.foo""#,
                    "[{}] {bin} {flags:?}",
                    t.name
                );
            }
            assert_not_found(&t, &ns, "db", DBS, "extra");

            // Warn: stored (pruned), with the server's warning printed.
            let (code, out, err) = with(&["--validate=warn"]);
            assert_eq!(code, 0, "[{}] {bin}: {err}", t.name);
            assert_eq!(out, format!("{DB}/extra created\n"));
            assert_eq!(err, "Warning: unknown field \"spec.foo\"\n", "[{}] {bin}", t.name);
            let j = get_json(&t, &ns, "db/extra");
            assert!(j["spec"].get("foo").is_none(), "unknown fields are pruned: {j}");
            assert_eq!(j["spec"]["size"], "1Gi");
            t.kubectl_ok(&["delete", "db", "extra", "-n", &ns], None);

            // Ignore: stored silently.
            let (code, out, err) = with(&["--validate=false"]);
            assert_eq!(
                (code, out, err),
                (0, format!("{DB}/extra created\n"), String::new()),
                "[{}] {bin}",
                t.name
            );
            let j = get_json(&t, &ns, "db/extra");
            assert!(j["spec"].get("foo").is_none(), "unknown fields are pruned: {j}");
            t.kubectl_ok(&["delete", "db", "extra", "-n", &ns], None);
        }
        // The server is asked to validate (server-side field validation), not kubectl itself.
        let mut cmd = t.kubectl_bin("kubectl.1.27");
        cmd.args(["apply", "-f", "-", "-v=6"]);
        let (_, _, err) = run(
            &t,
            cmd,
            Some(&db_yaml("extra", &ns, "MySQL", "1Gi", ", foo: bar")),
        );
        assert!(
            err.contains("fieldValidation=Strict"),
            "[{}] kubectl 1.27 sends fieldValidation: {err}",
            t.name
        );
        t.cleanup().await;
    }
}

/// Lines of a child's stdout, read on a thread.
struct Lines {
    rx: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Lines {
    fn of(child: &mut std::process::Child) -> Self {
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines { rx, seen: vec![] }
    }

    /// The next line matching `pred`, or panic after `secs`.
    fn wait_for(&mut self, what: &str, secs: u64, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(e) => panic!("waiting for {what}: {e:?}; lines so far: {:#?}", self.seen),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_prints_added_modified_and_deleted_events() {
    for t in common::targets().await {
        t.install_database_crd().await;
        let ns = t.namespace("kwatch").await;
        t.kubectl_ok(
            &["apply", "-f", "-"],
            Some(&db_yaml("watched", &ns, "PostgreSQL", "10Gi", "")),
        );
        let mut cmd = t.kubectl();
        cmd.args(["get", "db", "-n", &ns, "-w", "--output-watch-events"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().expect("spawn kubectl get -w");
        let mut lines = Lines::of(&mut child);
        let header = lines.wait_for("the header", 20, |_| true);
        assert_eq!(
            cols(&header),
            ["EVENT", "NAME", "ENGINE", "VERSION", "PHASE", "READY", "AGE"],
            "[{}]",
            t.name
        );
        let added = lines.wait_for("ADDED", 20, |l| l.starts_with("ADDED"));
        assert_eq!(
            cols(&added)[..4],
            ["ADDED", "watched", "PostgreSQL", "15"],
            "[{}]",
            t.name
        );

        t.kubectl_ok(
            &[
                "patch",
                "db",
                "watched",
                "-n",
                &ns,
                "--type=merge",
                "-p",
                r#"{"spec":{"version":"16"}}"#,
            ],
            None,
        );
        let modified = lines.wait_for("MODIFIED", 20, |l| l.starts_with("MODIFIED"));
        assert_eq!(
            cols(&modified)[..4],
            ["MODIFIED", "watched", "PostgreSQL", "16"],
            "[{}]",
            t.name
        );

        t.kubectl_ok(
            &["apply", "-f", "-"],
            Some(&db_yaml("second", &ns, "MySQL", "1Gi", "")),
        );
        let added = lines.wait_for("ADDED second", 20, |l| l.starts_with("ADDED"));
        assert_eq!(
            cols(&added)[..4],
            ["ADDED", "second", "MySQL", "15"],
            "[{}]",
            t.name
        );

        t.kubectl_ok(&["delete", "db", "watched", "-n", &ns], None);
        let deleted = lines.wait_for("DELETED", 20, |l| l.starts_with("DELETED"));
        assert_eq!(
            cols(&deleted)[..4],
            ["DELETED", "watched", "PostgreSQL", "16"],
            "[{}]",
            t.name
        );
        assert_eq!(
            child.try_wait().expect("poll kubectl"),
            None,
            "the watch keeps running"
        );
        child.kill().expect("stop kubectl get -w");
        let _ = child.wait();
        t.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patch_edit_label_annotate_and_scale() {
    for t in common::targets().await {
        t.install_database_crd().await;
        let ns = t.namespace("kpatch").await;

        // A ConfigMap takes all three patch types.
        let cm = format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cfg, namespace: {ns}}}\ndata: {{a: \"1\"}}\n"
        );
        assert_eq!(
            t.kubectl_ok(&["apply", "-f", "-"], Some(&cm)),
            "configmap/cfg created\n"
        );
        let patches = [
            ("--type=merge", r#"{"data":{"b":"2"}}"#),
            ("--type=json", r#"[{"op":"add","path":"/data/c","value":"3"}]"#),
            ("--type=strategic", r#"{"data":{"d":"4"}}"#),
        ];
        for (ty, p) in patches {
            let out = t.kubectl_ok(&["patch", "configmap", "cfg", "-n", &ns, ty, "-p", p], None);
            assert_eq!(out, "configmap/cfg patched\n", "[{}] {ty}", t.name);
        }
        let out = t.kubectl_ok(
            &["patch", "cm", "cfg", "-n", &ns, "-p", r#"{"data":{"a":null}}"#],
            None,
        );
        assert_eq!(out, "configmap/cfg patched\n", "default type is strategic");
        let out = t.kubectl_ok(&["get", "cm", "cfg", "-n", &ns, "-o", "jsonpath={.data}"], None);
        assert_eq!(out, r#"{"b":"2","c":"3","d":"4"}"#, "[{}]", t.name);
        let out = t.kubectl_ok(
            &[
                "patch",
                "cm",
                "cfg",
                "-n",
                &ns,
                "--type=merge",
                "-p",
                r#"{"data":{"b":"2"}}"#,
            ],
            None,
        );
        assert_eq!(out, "configmap/cfg patched (no change)\n");
        let err = t.kubectl_err(
            &[
                "patch",
                "cm",
                "cfg",
                "-n",
                &ns,
                "--type=json",
                "-p",
                r#"[{"op":"test","path":"/data/b","value":"x"}]"#,
            ],
            None,
        );
        assert_eq!(
            err, "The request is invalid: the server rejected our request due to an error in our request\n",
            "[{}] failed json patch test",
            t.name
        );

        // A Database: merge and JSON patches, but no strategic merge patch for custom resources.
        t.kubectl_ok(
            &["apply", "-f", "-"],
            Some(&db_yaml("pdb", &ns, "PostgreSQL", "10Gi", "")),
        );
        let out = t.kubectl_ok(
            &[
                "patch",
                "db",
                "pdb",
                "-n",
                &ns,
                "--type=merge",
                "-p",
                r#"{"spec":{"size":"20Gi"}}"#,
            ],
            None,
        );
        assert_eq!(out, format!("{DB}/pdb patched\n"));
        let out = t.kubectl_ok(
            &[
                "patch",
                "db",
                "pdb",
                "-n",
                &ns,
                "--type=json",
                "-p",
                r#"[{"op":"replace","path":"/spec/version","value":"16"}]"#,
            ],
            None,
        );
        assert_eq!(out, format!("{DB}/pdb patched\n"));
        let j = get_json(&t, &ns, "db/pdb");
        assert_eq!(
            (j["spec"]["size"].as_str(), j["spec"]["version"].as_str()),
            (Some("20Gi"), Some("16"))
        );
        assert_eq!(
            j["metadata"]["generation"], 3,
            "[{}] each spec change bumps generation",
            t.name
        );
        let err = t.kubectl_err(
            &[
                "patch",
                "db",
                "pdb",
                "-n",
                &ns,
                "-p",
                r#"{"spec":{"size":"30Gi"}}"#,
            ],
            None,
        );
        assert_eq!(
            err.trim_end(),
            "error: application/strategic-merge-patch+json is not supported by stable.example.com/v1, Kind=Database: the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
            "[{}]",
            t.name
        );
        let err = t.kubectl_err(
            &[
                "patch",
                "db",
                "pdb",
                "-n",
                &ns,
                "--type=merge",
                "-p",
                r#"{"spec":{"engine":"Oracle"}}"#,
            ],
            None,
        );
        assert_eq!(
            err.trim_end(),
            r#"The Database "pdb" is invalid: spec.engine: Unsupported value: "Oracle": supported values: "PostgreSQL", "MySQL""#
        );

        // kubectl edit, with an editor that changes spec.size.
        let tmp = tempfile::tempdir().expect("tempdir");
        let edit = |sed: &str| {
            let mut cmd = t.kubectl();
            cmd.args(["edit", "db", "pdb", "-n", &ns])
                .env("EDITOR", format!("sed -i '{sed}'"))
                .env("KUBE_EDITOR", format!("sed -i '{sed}'"))
                .env("TMPDIR", tmp.path());
            run(&t, cmd, None)
        };
        let (code, out, err) = edit("s/^  size: 20Gi$/  size: 40Gi/");
        assert_eq!(
            (code, out.as_str()),
            (0, format!("{DB}/pdb edited\n").as_str()),
            "[{}] {err}",
            t.name
        );
        let j = get_json(&t, &ns, "db/pdb");
        assert_eq!(j["spec"]["size"], "40Gi");
        assert_eq!(j["metadata"]["generation"], 4);
        let (code, out, err) = edit("s/^  size: 40Gi$/  size: 40Gi/");
        assert_eq!(
            (code, out.as_str(), err.as_str()),
            (0, "", "Edit cancelled, no changes made.\n"),
            "[{}]",
            t.name
        );
        let (code, _, err) = edit("s/^  size: 40Gi$/  size: huge/");
        assert_eq!(code, 1, "[{}] an invalid edit fails", t.name);
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines[0], format!(r#"error: {DBS} "pdb" is invalid"#), "{err}");
        assert!(
            lines[1].starts_with("A copy of your changes has been stored to "),
            "{err}"
        );
        assert_eq!(
            lines[2], "error: Edit cancelled, no valid changes were saved.",
            "{err}"
        );
        assert_eq!(get_json(&t, &ns, "db/pdb")["spec"]["size"], "40Gi");

        // Labels and annotations.
        let out = t.kubectl_ok(&["label", "db", "pdb", "-n", &ns, "env=prod"], None);
        assert_eq!(out, format!("{DB}/pdb labeled\n"));
        let err = t.kubectl_err(&["label", "db", "pdb", "-n", &ns, "env=dev"], None);
        assert_eq!(
            err,
            "error: 'env' already has a value (prod), and --overwrite is false\n"
        );
        t.kubectl_ok(&["label", "db", "pdb", "-n", &ns, "env=dev", "--overwrite"], None);
        let out = t.kubectl_ok(&["get", "db", "-n", &ns, "-l", "env=dev", "-o", "name"], None);
        assert_eq!(out, format!("{DB}/pdb\n"));
        assert_eq!(
            t.kubectl_ok(&["label", "db", "pdb", "-n", &ns, "env-"], None),
            format!("{DB}/pdb unlabeled\n")
        );
        let out = t.kubectl_ok(&["annotate", "db", "pdb", "-n", &ns, "owner=team-a"], None);
        assert_eq!(out, format!("{DB}/pdb annotated\n"));
        let j = get_json(&t, &ns, "db/pdb");
        assert_eq!(j["metadata"]["annotations"]["owner"], "team-a");
        assert!(j["metadata"].get("labels").is_none(), "[{}] {j}", t.name);
        assert_eq!(
            j["metadata"]["generation"], 4,
            "metadata changes keep the generation"
        );
        t.kubectl_ok(&["annotate", "db", "pdb", "-n", &ns, "owner-"], None);
        let out = t.kubectl_ok(
            &[
                "get",
                "db",
                "pdb",
                "-n",
                &ns,
                "-o",
                "jsonpath={.metadata.annotations.owner}",
            ],
            None,
        );
        assert_eq!(out, "");

        // Scale: a Deployment has the subresource, a Database has not.
        let dep = format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web, namespace: {ns}}}\nspec:\n  replicas: 1\n  selector: {{matchLabels: {{app: web}}}}\n  template:\n    metadata: {{labels: {{app: web}}}}\n    spec:\n      containers: [{{name: web, image: registry.k8s.io/pause:3.9}}]\n"
        );
        assert_eq!(
            t.kubectl_ok(&["apply", "-f", "-"], Some(&dep)),
            "deployment.apps/web created\n"
        );
        let out = t.kubectl_ok(&["scale", "deployment", "web", "-n", &ns, "--replicas=3"], None);
        assert_eq!(out, "deployment.apps/web scaled\n");
        let out = t.kubectl_ok(
            &[
                "get",
                "deploy",
                "web",
                "-n",
                &ns,
                "-o",
                "jsonpath={.spec.replicas}",
            ],
            None,
        );
        assert_eq!(out, "3");
        let err = t.kubectl_err(
            &[
                "scale",
                "deployment",
                "web",
                "-n",
                &ns,
                "--replicas=1",
                "--current-replicas=2",
            ],
            None,
        );
        assert!(
            err.starts_with("error: Expected replicas to be 2, was 3"),
            "[{}] {err}",
            t.name
        );
        let err = t.kubectl_err(&["scale", "db", "pdb", "-n", &ns, "--replicas=2"], None);
        assert_eq!(
            err.trim_end(),
            format!(r#"Error from server (NotFound): {DBS} "pdb" not found"#),
            "[{}]",
            t.name
        );
        t.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_apply_dry_run_and_diff() {
    for t in common::targets().await {
        t.install_database_crd().await;
        let ns = t.namespace("kssa").await;
        let v1 = db_yaml("ssa", &ns, "MySQL", "1Gi", "");
        let v2 = db_yaml("ssa", &ns, "MySQL", "2Gi", "");
        let out = t.kubectl_ok(&["apply", "--server-side", "-f", "-"], Some(&v1));
        assert_eq!(out, format!("{DB}/ssa serverside-applied\n"), "[{}]", t.name);
        let out = t.kubectl_ok(&["apply", "--server-side", "-f", "-"], Some(&v1));
        assert_eq!(out, format!("{DB}/ssa serverside-applied\n"));

        // A second manager wanting another value conflicts, then takes over by force.
        let err = t.kubectl_err(
            &["apply", "--server-side", "--field-manager=other", "-f", "-"],
            Some(&v2),
        );
        let first = err.lines().next().unwrap_or_default();
        assert_eq!(
            first, r#"error: Apply failed with 1 conflict: conflict with "kubectl": .spec.size"#,
            "[{}] {err}",
            t.name
        );
        assert!(err.contains("--force-conflicts"), "{err}");
        assert_eq!(get_json(&t, &ns, "db/ssa")["spec"]["size"], "1Gi");
        let out = t.kubectl_ok(
            &[
                "apply",
                "--server-side",
                "--field-manager=other",
                "--force-conflicts",
                "-f",
                "-",
            ],
            Some(&v2),
        );
        assert_eq!(out, format!("{DB}/ssa serverside-applied\n"));
        let out = t.kubectl_ok(
            &[
                "get",
                "db",
                "ssa",
                "-n",
                &ns,
                "-o",
                "json",
                "--show-managed-fields",
            ],
            None,
        );
        let j: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(j["spec"]["size"], "2Gi");
        let managers: Vec<&str> = j["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|m| m["manager"].as_str())
            .collect();
        assert_eq!(managers, ["kubectl", "other"], "[{}] {out}", t.name);
        let other = &j["metadata"]["managedFields"][1];
        assert_eq!(other["operation"], "Apply");
        assert!(other["fieldsV1"]["f:spec"].get("f:size").is_some(), "{other}");
        assert!(
            j["metadata"]["managedFields"][0]["fieldsV1"]["f:spec"]
                .get("f:size")
                .is_none(),
            "size moved to other"
        );

        // Server dry run: the answer says so, nothing is stored or changed.
        let dry = db_yaml("dry", &ns, "MySQL", "1Gi", "");
        let out = t.kubectl_ok(&["apply", "--dry-run=server", "-f", "-"], Some(&dry));
        assert_eq!(
            out,
            format!("{DB}/dry created (server dry run)\n"),
            "[{}]",
            t.name
        );
        let out = t.kubectl_ok(
            &["apply", "--server-side", "--dry-run=server", "-f", "-"],
            Some(&dry),
        );
        assert_eq!(out, format!("{DB}/dry serverside-applied (server dry run)\n"));
        let out = t.kubectl_ok(
            &[
                "create",
                "--dry-run=server",
                "-f",
                "-",
                "-o",
                "jsonpath={.spec.deletionPolicy}",
            ],
            Some(&dry),
        );
        assert_eq!(
            out, "Retain",
            "a dry run answers the object as it would be stored"
        );
        assert_not_found(&t, &ns, "db", DBS, "dry");
        let v3 = db_yaml("ssa", &ns, "MySQL", "3Gi", "");
        let out = t.kubectl_ok(
            &[
                "apply",
                "--server-side",
                "--field-manager=other",
                "--dry-run=server",
                "-f",
                "-",
            ],
            Some(&v3),
        );
        assert_eq!(out, format!("{DB}/ssa serverside-applied (server dry run)\n"));
        let err = t.kubectl_err(
            &["apply", "--dry-run=server", "-f", "-"],
            Some(&db_yaml("dry", &ns, "Oracle", "1Gi", "")),
        );
        assert!(
            err.starts_with(r#"The Database "dry" is invalid: spec.engine: Unsupported value: "Oracle""#),
            "{err}"
        );
        assert_eq!(get_json(&t, &ns, "db/ssa")["spec"]["size"], "2Gi");

        // diff: 0 and no output when the same; 1 and a unified diff when different.
        let (code, out, err) = kubectl(&t, &["diff", "-f", "-"], Some(&v2));
        assert_eq!(
            (code, out.as_str(), err.as_str()),
            (0, "", ""),
            "[{}] nothing differs",
            t.name
        );
        let (code, out, err) = kubectl(
            &t,
            &["diff", "-f", "-"],
            Some(&db_yaml("ssa", &ns, "MySQL", "5Gi", "")),
        );
        assert_eq!(code, 1, "[{}] {err}", t.name);
        let changed: Vec<&str> = out
            .lines()
            .filter(|l| {
                (l.starts_with('-') || l.starts_with('+')) && !l.starts_with("---") && !l.starts_with("+++")
            })
            .collect();
        assert_eq!(
            changed,
            [
                "-  generation: 2",
                "+  generation: 3",
                "-  size: 2Gi",
                "+  size: 5Gi"
            ],
            "[{}] {out}",
            t.name
        );
        assert!(out.starts_with("diff -u -N "), "{out}");
        let (code, out, _) = kubectl(
            &t,
            &["diff", "-f", "-"],
            Some(&db_yaml("new-one", &ns, "MySQL", "5Gi", "")),
        );
        assert_eq!(code, 1);
        assert!(
            out.contains("+  name: new-one") && out.contains("+  size: 5Gi"),
            "[{}] {out}",
            t.name
        );
        let (code, out, _) = kubectl(
            &t,
            &["diff", "--server-side", "--field-manager=other", "-f", "-"],
            Some(&v2),
        );
        assert_eq!(
            (code, out.as_str()),
            (0, ""),
            "[{}] server-side diff of the same",
            t.name
        );
        assert_eq!(
            get_json(&t, &ns, "db/ssa")["spec"]["size"],
            "2Gi",
            "diff changes nothing"
        );
        assert_not_found(&t, &ns, "db", DBS, "new-one");

        // A field last set by an update (kubectl patch) names that manager with its API version.
        t.kubectl_ok(
            &["apply", "--server-side", "-f", "-"],
            Some(&db_yaml("upd", &ns, "MySQL", "1Gi", "")),
        );
        t.kubectl_ok(
            &[
                "patch",
                "db",
                "upd",
                "-n",
                &ns,
                "--type=merge",
                "-p",
                r#"{"spec":{"size":"6Gi"}}"#,
            ],
            None,
        );
        let err = t.kubectl_err(
            &["apply", "--server-side", "-f", "-"],
            Some(&db_yaml("upd", &ns, "MySQL", "1Gi", "")),
        );
        assert_eq!(
            err.lines().next().unwrap_or_default(),
            r#"error: Apply failed with 1 conflict: conflict with "kubectl-patch" using stable.example.com/v1: .spec.size"#,
            "[{}] {err}",
            t.name
        );
        t.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_finalizers_namespaces_and_garbage_collection() {
    for t in common::targets().await {
        t.install_database_crd().await;
        let ns = t.namespace("kdelete").await;

        // Plain delete waits until the object is gone.
        t.kubectl_ok(
            &["apply", "-f", "-"],
            Some(&db_yaml("gone", &ns, "MySQL", "1Gi", "")),
        );
        let out = t.kubectl_ok(&["delete", "db", "gone", "-n", &ns], None);
        assert_eq!(out, format!("{DB} \"gone\" deleted\n"), "[{}]", t.name);
        assert_not_found(&t, &ns, "db", DBS, "gone");
        let err = t.kubectl_err(&["delete", "db", "gone", "-n", &ns], None);
        assert_eq!(
            err,
            format!("Error from server (NotFound): {DBS} \"gone\" not found\n")
        );
        let (code, out, err) = kubectl(
            &t,
            &["delete", "db", "gone", "-n", &ns, "--ignore-not-found"],
            None,
        );
        assert_eq!((code, out.as_str(), err.as_str()), (0, "", ""));

        // A finalizer holds the object, marked for deletion, until it is removed.
        let fin = format!(
            "apiVersion: stable.example.com/v1\nkind: Database\nmetadata:\n  name: held\n  namespace: {ns}\n  finalizers: [stable.example.com/database-protection]\nspec: {{engine: MySQL, version: \"8\", size: 1Gi}}\n"
        );
        t.kubectl_ok(&["apply", "-f", "-"], Some(&fin));
        let out = t.kubectl_ok(&["delete", "db", "held", "-n", &ns, "--wait=false"], None);
        assert_eq!(out, format!("{DB} \"held\" deleted\n"));
        let j = get_json(&t, &ns, "db/held");
        assert!(
            j["metadata"]["deletionTimestamp"]
                .as_str()
                .is_some_and(|s| !s.is_empty()),
            "[{}] {j}",
            t.name
        );
        assert_eq!(
            j["metadata"]["finalizers"],
            serde_json::json!(["stable.example.com/database-protection"])
        );
        let err = t.kubectl_err(
            &["wait", "--for=delete", "db/held", "-n", &ns, "--timeout=1s"],
            None,
        );
        assert!(
            err.contains("timed out waiting for the condition"),
            "[{}] {err}",
            t.name
        );
        let err = t.kubectl_err(
            &[
                "patch",
                "db",
                "held",
                "-n",
                &ns,
                "--type=json",
                "-p",
                r#"[{"op":"add","path":"/metadata/finalizers/-","value":"x.io/more"}]"#,
            ],
            None,
        );
        assert!(
            err.contains("no new finalizers can be added if the object is being deleted"),
            "[{}] {err}",
            t.name
        );
        let out = t.kubectl_ok(
            &[
                "patch",
                "db",
                "held",
                "-n",
                &ns,
                "--type=json",
                "-p",
                r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
            ],
            None,
        );
        assert_eq!(out, format!("{DB}/held patched\n"));
        t.kubectl_ok(
            &["wait", "--for=delete", "db/held", "-n", &ns, "--timeout=30s"],
            None,
        );
        assert_not_found(&t, &ns, "db", DBS, "held");

        // Garbage collection: a ConfigMap owned by a Database goes with it.
        t.kubectl_ok(
            &["apply", "-f", "-"],
            Some(&db_yaml("owner", &ns, "PostgreSQL", "1Gi", "")),
        );
        let uid = t.kubectl_ok(
            &["get", "db", "owner", "-n", &ns, "-o", "jsonpath={.metadata.uid}"],
            None,
        );
        let owned = format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: owner-credentials\n  namespace: {ns}\n  ownerReferences:\n  - {{apiVersion: stable.example.com/v1, kind: Database, name: owner, uid: {uid}}}\ndata: {{user: admin}}\n"
        );
        assert_eq!(
            t.kubectl_ok(&["apply", "-f", "-"], Some(&owned)),
            "configmap/owner-credentials created\n"
        );
        t.kubectl_ok(&["delete", "db", "owner", "-n", &ns], None);
        t.kubectl_ok(
            &[
                "wait",
                "--for=delete",
                "configmap/owner-credentials",
                "-n",
                &ns,
                "--timeout=30s",
            ],
            None,
        );
        assert_not_found(&t, &ns, "configmap", "configmaps", "owner-credentials");

        // Deleting a namespace deletes what is in it.
        let doomed = t.namespace("kdoomed").await;
        t.kubectl_ok(
            &["apply", "-f", "-"],
            Some(&db_yaml("inside", &doomed, "MySQL", "1Gi", "")),
        );
        let cm =
            format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: inside, namespace: {doomed}}}\n");
        t.kubectl_ok(&["apply", "-f", "-"], Some(&cm));
        let out = t.kubectl_ok(&["delete", "ns", &doomed, "--timeout=60s"], None);
        assert_eq!(out, format!("namespace \"{doomed}\" deleted\n"), "[{}]", t.name);
        let err = t.kubectl_err(&["get", "ns", &doomed], None);
        assert_eq!(
            err,
            format!("Error from server (NotFound): namespaces \"{doomed}\" not found\n")
        );
        for what in ["db", "configmaps"] {
            let (code, out, err) = kubectl(&t, &["get", what, "-n", &doomed], None);
            assert_eq!((code, out.as_str()), (0, ""), "[{}] {what}", t.name);
            assert_eq!(
                err,
                format!("No resources found in {doomed} namespace.\n"),
                "[{}] {what}",
                t.name
            );
        }
        t.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_databases_with_old_and_new_kubectl() {
    for t in common::targets().await {
        t.install_database_crd().await;
        for bin in ["kubectl.1.27", "kubectl.1.33"] {
            let mut cmd = t.kubectl_bin(bin);
            cmd.args(["explain", "databases.spec"]);
            let (code, out, err) = run(&t, cmd, None);
            assert_eq!(code, 0, "[{}] {bin}: {err}", t.name);
            let lines: Vec<&str> = out.lines().collect();
            assert_eq!(
                lines[..3],
                [
                    "GROUP:      stable.example.com",
                    "KIND:       Database",
                    "VERSION:    v1"
                ],
                "[{}] {bin}",
                t.name
            );
            for want in [
                "FIELD: spec <Object>",
                "DESCRIPTION:",
                "    The database wanted.",
                "FIELDS:",
                "  deletionPolicy\t<string>",
                "  engine\t<string> -required-",
                "    Database engine; MySQL is served by MariaDB.",
                "  server\t<string>",
                "  size\t<string> -required-",
                "    Storage size, a Kubernetes quantity such as 10Gi.",
                "  users\t<[]Object>",
                "  version\t<string> -required-",
            ] {
                assert!(
                    lines.contains(&want),
                    "[{}] {bin} explain lacks {want:?}:\n{out}",
                    t.name
                );
            }
            let fields: Vec<&str> = lines
                .iter()
                .filter(|l| l.starts_with("  ") && !l.starts_with("   ") && l.contains('\t'))
                .map(|l| l.trim().split('\t').next().unwrap())
                .collect();
            assert_eq!(
                fields,
                ["deletionPolicy", "engine", "server", "size", "users", "version"],
                "{out}"
            );
            if bin == "kubectl.1.33" {
                assert!(
                    lines.contains(&"  enum: PostgreSQL, MySQL"),
                    "[{}] 1.33 shows enums:\n{out}",
                    t.name
                );
            }

            let mut cmd = t.kubectl_bin(bin);
            cmd.args(["explain", "databases.spec.users", "--recursive"]);
            let (code, out, err) = run(&t, cmd, None);
            assert_eq!(code, 0, "[{}] {bin}: {err}", t.name);
            assert!(out.contains("FIELD: users <[]Object>"), "{out}");
            assert!(
                out.contains("    Users to create, each with access to this database only."),
                "{out}"
            );
            let fields: Vec<&str> = out
                .lines()
                .skip_while(|l| *l != "FIELDS:")
                .skip(1)
                .filter(|l| !l.is_empty())
                .collect();
            assert_eq!(
                fields,
                ["  passwordSecret\t<string>", "  username\t<string> -required-"],
                "[{}] {bin}:\n{out}",
                t.name
            );

            let mut cmd = t.kubectl_bin(bin);
            cmd.args(["explain", "databases.spec.nothere"]);
            let (code, _, err) = run(&t, cmd, None);
            assert_eq!(code, 1, "[{}] {bin}", t.name);
            assert!(
                err.contains(r#"field "nothere" does not exist"#),
                "[{}] {bin}: {err}",
                t.name
            );
        }
        t.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_with_a_stale_resource_version_conflicts() {
    for t in common::targets().await {
        t.install_database_crd().await;
        let ns = t.namespace("kreplace").await;
        t.kubectl_ok(
            &["apply", "-f", "-"],
            Some(&db_yaml("x", &ns, "MySQL", "1Gi", "")),
        );
        let stale = t.kubectl_ok(&["get", "db", "x", "-n", &ns, "-o", "yaml"], None);
        assert!(stale.contains("resourceVersion:"), "{stale}");
        let fresh = stale.replace("size: 1Gi", "size: 2Gi");
        assert_eq!(
            t.kubectl_ok(&["replace", "-f", "-"], Some(&fresh)),
            format!("{DB}/x replaced\n")
        );
        let err = t.kubectl_err(
            &["replace", "-f", "-"],
            Some(&stale.replace("size: 1Gi", "size: 3Gi")),
        );
        assert_eq!(
            err,
            format!(
                "Error from server (Conflict): error when replacing \"STDIN\": Operation cannot be fulfilled on {DBS} \"x\": the object has been modified; please apply your changes to the latest version and try again\n"
            ),
            "[{}]",
            t.name
        );
        assert_eq!(get_json(&t, &ns, "db/x")["spec"]["size"], "2Gi");
        // Without a resourceVersion the replace is unconditional; --force deletes and recreates.
        let current = t.kubectl_ok(&["get", "db", "x", "-n", &ns, "-o", "json"], None);
        let mut j: Value = serde_json::from_str(&current).unwrap();
        let uid = j["metadata"]["uid"].clone();
        j["metadata"].as_object_mut().unwrap().remove("resourceVersion");
        j["spec"]["size"] = "4Gi".into();
        assert_eq!(
            t.kubectl_ok(&["replace", "-f", "-"], Some(&j.to_string())),
            format!("{DB}/x replaced\n")
        );
        assert_eq!(get_json(&t, &ns, "db/x")["metadata"]["uid"], uid);
        let out = t.kubectl_ok(
            &["replace", "--force", "-f", "-"],
            Some(&db_yaml("x", &ns, "MySQL", "5Gi", "")),
        );
        assert_eq!(
            out,
            format!("{DB} \"x\" deleted\n{DB}/x replaced\n"),
            "[{}]",
            t.name
        );
        let j = get_json(&t, &ns, "db/x");
        assert_ne!(j["metadata"]["uid"], uid, "recreated");
        assert_eq!(j["spec"]["size"], "5Gi");
        let err = t.kubectl_err(
            &["replace", "-f", "-"],
            Some(&db_yaml("absent", &ns, "MySQL", "1Gi", "")),
        );
        assert_eq!(
            err,
            format!(
                "Error from server (NotFound): error when replacing \"STDIN\": {DBS} \"absent\" not found\n"
            )
        );
        t.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_is_unauthorized() {
    for t in common::targets().await {
        if t.faults.is_none() {
            // The token of a real cluster's kubeconfig is not ours to rewrite.
            continue;
        }
        let kubeconfig = std::fs::read_to_string(&t.kubeconfig).expect("read kubeconfig");
        let mut rewritten = 0;
        let bad: String = kubeconfig
            .lines()
            .map(|l| match l.find("token: ") {
                Some(i) => {
                    rewritten += 1;
                    format!("{}token: not-the-token\n", &l[..i])
                }
                None => format!("{l}\n"),
            })
            .collect();
        assert_eq!(rewritten, 1, "one token line in {kubeconfig}");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bad-kubeconfig");
        std::fs::write(&path, bad).expect("write kubeconfig");
        // Warm kubectl's discovery cache with the right token, as a user's would be.
        t.kubectl_ok(&["get", "ns", "default", "-o", "name"], None);
        for args in [
            &["get", "ns"][..],
            &["get", "configmaps", "-n", "default"],
            &["delete", "ns", "default"],
        ] {
            let mut cmd = t.kubectl();
            cmd.env("KUBECONFIG", &path).args(args);
            let (code, out, err) = run(&t, cmd, None);
            assert_eq!((code, out.as_str()), (1, ""), "{args:?}");
            assert_eq!(
                err, "error: You must be logged in to the server (Unauthorized)\n",
                "{args:?}"
            );
        }
        // Commands that refresh discovery fail there; client-go words the same 401 differently.
        let mut cmd = t.kubectl();
        cmd.env("KUBECONFIG", &path).args(["api-resources"]);
        let (code, _, err) = run(&t, cmd, None);
        assert_eq!(code, 1);
        assert_eq!(
            err.lines().last().unwrap_or_default(),
            "error: You must be logged in to the server (the server has asked for the client to provide credentials)",
            "{err}"
        );
        let mut cmd = t.kubectl();
        cmd.env("KUBECONFIG", &path)
            .args(["get", "--raw", "/api/v1/namespaces"]);
        let (code, _, err) = run(&t, cmd, None);
        assert_eq!(code, 1);
        assert!(err.contains("Unauthorized"), "{err}");
        // The right token still works.
        t.kubectl_ok(&["get", "ns", "default", "-o", "name"], None);
        t.cleanup().await;
    }
}
