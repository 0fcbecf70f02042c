//! What a user sees with the real `kubectl` against the simulated cluster: a StatefulSet with a
//! volumeClaimTemplate applied, its Pods watched (`kubectl get pods -w`) until they are Running
//! and Ready, `kubectl rollout status` for it and for a Deployment, PVCs Bound, and
//! `kubectl wait --for=condition=complete` on a Job.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crwatch_apiserver::TestServer;

const MANIFESTS: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  clusterIP: None
  selector: {app: web}
  ports: [{name: http, port: 80}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: web
spec:
  serviceName: web
  replicas: 3
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: nginx
        image: registry.k8s.io/nginx-slim:0.24
        ports: [{name: http, containerPort: 80}]
        volumeMounts: [{name: www, mountPath: /usr/share/nginx/html}]
  volumeClaimTemplates:
  - metadata:
      name: www
    spec:
      accessModes: [ReadWriteOnce]
      resources:
        requests:
          storage: 1Gi
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: front
spec:
  replicas: 2
  selector:
    matchLabels: {app: front}
  template:
    metadata:
      labels: {app: front}
    spec:
      containers:
      - name: nginx
        image: nginx:1.27
---
apiVersion: batch/v1
kind: Job
metadata:
  name: pi
spec:
  completions: 2
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: pi
        image: perl:5.34
        command: ["perl", "-Mbignum=bpi", "-wle", "print bpi(200)"]
"#;

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run(cmd: &mut Command, stdin: Option<&str>) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl runs");
    if let Some(input) = stdin
        && let Some(mut s) = child.stdin.take()
    {
        s.write_all(input.as_bytes()).expect("stdin");
    }
    child.wait_with_output().expect("kubectl output")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "kubectl failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_applies_a_statefulset_and_watches_it_become_ready() {
    let server = TestServer::start().await.expect("server");
    // Watch Pods from before the apply, as a user would in another terminal.
    let mut watch = server.kubectl();
    watch
        .args(["get", "pods", "-w"])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(server.dir().join("watch.err")).expect("stderr file"));
    let mut child = KillOnDrop(watch.spawn().expect("kubectl get -w"));
    let stdout = child.0.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });

    let out = run(server.kubectl().args(["apply", "-f", "-"]), Some(MANIFESTS));
    let applied = ok(&out);
    assert!(applied.contains("statefulset.apps/web created"), "{applied}");

    let status = run(
        server
            .kubectl()
            .args(["rollout", "status", "statefulset/web", "--timeout=60s"]),
        None,
    );
    let said = ok(&status);
    assert!(
        said.contains("partitioned roll out complete: 3 new pods have been updated...")
            || said.contains("statefulset rolling update complete 3 pods at revision web-"),
        "{said}"
    );

    // The watch saw each Pod reach Running with its container ready.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut ready = std::collections::BTreeSet::new();
    let mut seen = vec![];
    while ready.len() < 3 {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = rx.recv_timeout(left) else {
            let err = std::fs::read_to_string(server.dir().join("watch.err")).unwrap_or_default();
            panic!("kubectl get pods -w did not show 3 ready pods: {seen:#?} {err}");
        };
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() >= 3 && cols[0].starts_with("web-") && cols[1] == "1/1" && cols[2] == "Running" {
            ready.insert(cols[0].to_string());
        }
        seen.push(line);
    }
    assert_eq!(ready.into_iter().collect::<Vec<_>>(), ["web-0", "web-1", "web-2"]);
    assert!(seen.iter().any(|l| l.contains("ContainerCreating")), "{seen:#?}");

    let pvcs = ok(&run(server.kubectl().args(["get", "pvc", "--no-headers"]), None));
    let lines: Vec<&str> = pvcs.lines().collect();
    assert_eq!(lines.len(), 3, "{pvcs}");
    for (i, l) in lines.iter().enumerate() {
        let cols: Vec<&str> = l.split_whitespace().collect();
        assert_eq!(cols[0], format!("www-web-{i}"));
        assert_eq!(cols[1], "Bound", "{l}");
        assert!(cols[2].starts_with("pvc-"), "{l}");
        assert_eq!(cols[3], "1Gi");
        assert_eq!(cols[4], "RWO");
        assert_eq!(cols[5], "standard");
    }

    let out = ok(&run(
        server
            .kubectl()
            .args(["rollout", "status", "deployment/front", "--timeout=60s"]),
        None,
    ));
    assert!(
        out.contains("deployment \"front\" successfully rolled out"),
        "{out}"
    );

    let out = ok(&run(
        server
            .kubectl()
            .args(["wait", "--for=condition=complete", "job/pi", "--timeout=60s"]),
        None,
    ));
    assert_eq!(out.trim(), "job.batch/pi condition met");

    // The headless Service lists the three Pods.
    let eps = ok(&run(
        server.kubectl().args([
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=web",
            "-o",
            "jsonpath={.items[0].endpoints[*].targetRef.name}",
        ]),
        None,
    ));
    assert_eq!(eps, "web-0 web-1 web-2");
    drop(child);
    server.shutdown().await.expect("shutdown");
}
