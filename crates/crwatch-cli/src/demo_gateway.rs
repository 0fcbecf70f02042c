//! `crwatch demo gateway`: the gateway operator in process on the embedded API server, driving a
//! local nginx in front of two local backends (`v1`, `v2`) while a load generator sends 200
//! requests/s through it and `crwatch get gatewayroutes -n demo -w --diff` shows every change.
//!
//! The script, narrated on stderr: the route `shop` (host `shop.demo`) is created on v1, its
//! weights shift 90/10, 50/50 and 0/100 (with the load's per-backend counts while each split was
//! live), a header-matched canary route is added, then a route whose regular expression nginx
//! refuses (it gets `Accepted=False` with nginx's message while traffic goes on), and the routes
//! are deleted. The summary gives the requests sent, the failed ones (0, or the demo fails) and
//! nginx's reloads.
//!
//! Like `crwatch demo`, it is deterministic: every step waits until the watch has printed the
//! operator's verdict (`Programmed=True` or `Accepted=False` at the route's latest generation,
//! or the deletion), never a fixed time; `--pace` only adds a pause between steps.
//!
//! Built without the `demo-gateway` feature, the subcommand says how to get it.

use crate::args::DemoArgs;

/// Run `crwatch demo gateway`.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    if args.operator || args.no_operator {
        anyhow::bail!(
            "--operator and --no-operator choose how the Database demo runs; `crwatch demo gateway` \
             always runs the gateway operator"
        );
    }
    #[cfg(feature = "demo-gateway")]
    return live::run(args.pace.into(), args.keep).await;
    #[cfg(not(feature = "demo-gateway"))]
    anyhow::bail!(
        "this crwatch was built without the gateway operator; build it with \
         `cargo build -p crwatch-cli --features demo-gateway`, or run `./scripts/demo gateway` \
         (which also installs nginx)"
    );
}

/// The demo proper: everything it needs comes with the `demo-gateway` feature.
#[cfg(feature = "demo-gateway")]
mod live {
    use std::collections::BTreeMap;
    use std::net::SocketAddr;
    use std::path::PathBuf;
    use std::time::{Duration, Instant};

    use anyhow::Context as _;
    use gateway_operator::backend::Backend;
    use gateway_operator::loadgen::{LoadConfig, LoadGen, LoadStats, RequestSpec, request, wait_until};
    use gateway_operator::nginx::{Mode, Nginx};
    use gateway_operator::run::RunOptions;
    use gateway_operator::types::GatewayRoute;
    use k8s_openapi::api::core::v1::Namespace;
    use kube::Client;
    use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
    use kube::config::{KubeConfigOptions, Kubeconfig};
    use serde_json::{Value, json};
    use tokio::sync::mpsc;
    use tokio_util::sync::CancellationToken;

    use crate::args::{GetArgs, Output};
    use crate::get::{self, ChangeKind, Embed, WatchReport};

    /// The namespace the routes live in.
    const NAMESPACE: &str = "demo";
    /// The host the load is for.
    const HOST: &str = "shop.demo";
    /// The load's rate (requests per second).
    const RATE: u32 = 200;
    /// The header the canary route matches, and its value.
    const CANARY_HEADER: (&str, &str) = ("x-canary", "1");
    /// A path pattern nginx's PCRE refuses (an unclosed group) but that passes the schema.
    const BAD_REGEX: &str = "^/(x";
    /// How long the watch may take to show a step's verdict: a reload waits for nginx's old
    /// workers (up to its own 15 s timeout), on a machine that may be busy.
    const STEP_WAIT: Duration = Duration::from_secs(60);
    /// How long the operator may take to stop, and nginx to finish its requests.
    const STOP_WAIT: Duration = Duration::from_secs(30);
    /// The fewest answered requests a weight split is measured over (half a second at 200/s,
    /// a multiple of every split's round-robin cycle).
    const WINDOW_MIN: u64 = 100;

    use crate::demo::Narrator;

    /// nginx, killed (its whole process group) if the demo ends without stopping it: it runs in
    /// its own process group so that it outlives the operator, and must not outlive the demo.
    struct NginxGuard(Nginx);

    impl Drop for NginxGuard {
        fn drop(&mut self) {
            // Nothing to do after a graceful stop: no master is left to kill.
            self.0.kill_now();
        }
    }

    /// What the watch printed last for each route, fed from its reports.
    struct Printed {
        reports: mpsc::UnboundedReceiver<WatchReport>,
        synced: bool,
        last: BTreeMap<String, (ChangeKind, Value)>,
    }

    impl Printed {
        /// The next report, remembered; `None` once the watch ended.
        async fn next(&mut self) -> Option<()> {
            match self.reports.recv().await? {
                WatchReport::Synced => self.synced = true,
                WatchReport::Printed { kind, object } => {
                    let name = object["metadata"]["name"].as_str().unwrap_or("").to_string();
                    self.last.insert(name, (kind, object));
                }
            }
            Some(())
        }

        /// Wait until what the watch printed meets `met` (described by `what`), the watch ends
        /// or [`STEP_WAIT`] runs out.
        async fn wait_for(&mut self, what: &str, met: impl Fn(&Printed) -> bool) -> anyhow::Result<()> {
            let done = tokio::time::timeout(STEP_WAIT, async {
                while !met(self) {
                    if self.next().await.is_none() {
                        return false;
                    }
                }
                true
            })
            .await;
            match done {
                Ok(true) => Ok(()),
                Ok(false) => anyhow::bail!("the watch ended before it showed {what}"),
                Err(_) => anyhow::bail!("the watch did not show {what} within {}s", STEP_WAIT.as_secs()),
            }
        }

        /// Wait until the watch shows route `name` at `generation` (or later) with condition
        /// `type_` at `status` for that generation; returns the condition's message.
        async fn wait_condition(
            &mut self,
            name: &str,
            generation: i64,
            type_: &str,
            status: &str,
        ) -> anyhow::Result<String> {
            let what = format!("{NAMESPACE}/{name} {type_}={status} at generation {generation}");
            let find = |p: &Printed| -> Option<String> {
                let (kind, o) = p.last.get(name)?;
                let gen_now = o["metadata"]["generation"].as_i64()?;
                if *kind == ChangeKind::Deleted || gen_now < generation {
                    return None;
                }
                let c = o["status"]["conditions"]
                    .as_array()?
                    .iter()
                    .find(|c| c["type"] == type_)?;
                (c["status"] == status && c["observedGeneration"].as_i64() == Some(gen_now))
                    .then(|| c["message"].as_str().unwrap_or("").to_string())
            };
            self.wait_for(&what, |p| find(p).is_some()).await?;
            Ok(find(self).unwrap_or_default())
        }

        /// Wait until the watch shows route `name` deleted.
        async fn wait_deleted(&mut self, name: &str) -> anyhow::Result<()> {
            let what = format!("the deletion of {NAMESPACE}/{name}");
            self.wait_for(&what, |p| {
                p.last
                    .get(name)
                    .is_some_and(|(kind, _)| *kind == ChangeKind::Deleted)
            })
            .await
        }
    }

    /// A GatewayRoute manifest in the demo namespace.
    fn route(name: &str, spec: Value) -> Value {
        json!({
            "apiVersion": "gateway.crwatch.io/v1alpha1",
            "kind": "GatewayRoute",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": spec,
        })
    }

    /// `shop`'s backends with these weights.
    fn weighted(v1: &Backend, v2: &Backend, w1: u32, w2: u32) -> Value {
        json!([
            {"url": v1.url(), "weight": w1},
            {"url": v2.url(), "weight": w2},
        ])
    }

    /// A free loopback port (nginx binds it a moment later; a race with another program is
    /// possible but harmless: nginx would fail to start and the demo says so).
    fn free_port() -> anyhow::Result<u16> {
        Ok(std::net::TcpListener::bind("127.0.0.1:0")
            .context("finding a free loopback port")?
            .local_addr()
            .context("finding a free loopback port")?
            .port())
    }

    /// A client for the embedded server, from the kubeconfig it writes.
    async fn client_for(server: &crwatch_apiserver::ApiServer) -> anyhow::Result<Client> {
        let kc = Kubeconfig::from_yaml(&server.kubeconfig_yaml()).context("reading the demo kubeconfig")?;
        let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .context("loading the demo kubeconfig")?;
        Client::try_from(config).context("creating the client")
    }

    /// How many generations the operator made live in nginx (its start included), from its
    /// `gateway_nginx_reloads_total` metric on `metrics`.
    async fn reloads(metrics: SocketAddr) -> anyhow::Result<u64> {
        const METRIC: &str = "gateway_nginx_reloads_total";
        let r = request(metrics, &RequestSpec::get("127.0.0.1", "/metrics"))
            .await
            .context("asking the operator for its metrics")?;
        let text = r.text();
        let value = text
            .lines()
            .find_map(|l| l.strip_prefix(METRIC)?.strip_prefix(' '))
            .with_context(|| format!("the operator's metrics have no {METRIC}"))?;
        // A counter prints as an integer or a float with an integral value.
        let n: f64 = value
            .trim()
            .parse()
            .with_context(|| format!("{METRIC} is {value:?}"))?;
        Ok(n as u64)
    }

    /// Answered requests (ok or failed) in a snapshot.
    fn answered(s: &LoadStats) -> u64 {
        s.ok + s.failed
    }

    /// The load's counts from `from` to `to`, as `v1=90 v2=10, 0 failed`.
    fn delta(from: &LoadStats, to: &LoadStats) -> String {
        let mut parts: Vec<String> = ["v1", "v2"]
            .iter()
            .map(|b| {
                let n = to.by_backend.get(*b).copied().unwrap_or(0)
                    - from.by_backend.get(*b).copied().unwrap_or(0);
                format!("{b}={n}")
            })
            .collect();
        parts.push(format!("{} failed", to.failed - from.failed));
        parts.join(" ")
    }

    /// What the demo has running: the client, the backends, where nginx listens, the narration.
    struct Demo<'a> {
        client: Client,
        v1: &'a Backend,
        v2: &'a Backend,
        addr: SocketAddr,
        /// The operator's `/metrics`.
        metrics: SocketAddr,
        pace: Duration,
        say: &'a Narrator,
    }

    /// How the script ended.
    struct Summary {
        /// Requests the load sent.
        sent: u64,
        /// Of those, failed ones.
        failed: u64,
        /// The first failures, described.
        failures: Vec<String>,
        /// Generations made live in nginx, its start included.
        reloads: u64,
    }

    impl Demo<'_> {
        fn api(&self) -> Api<GatewayRoute> {
            Api::namespaced(self.client.clone(), NAMESPACE)
        }

        /// `--pace` between steps.
        async fn pause(&self) {
            if !self.pace.is_zero() {
                tokio::time::sleep(self.pace).await;
            }
        }

        /// `kubectl apply -f NAME.yaml` (server-side apply), narrated with the manifest;
        /// returns the route's generation.
        async fn apply(&self, manifest: &Value) -> anyhow::Result<i64> {
            let name = manifest["metadata"]["name"].as_str().unwrap_or("");
            self.say.step(&format!("kubectl apply -f {name}.yaml"));
            let yaml = serde_saphyr::to_string(manifest).context("writing YAML")?;
            for l in yaml.lines() {
                self.say.line(&format!("    {l}"));
            }
            let out: GatewayRoute = crwatch::api::patch(
                &self.api(),
                name,
                &PatchParams::apply("kubectl").force(),
                &Patch::Apply(manifest),
            )
            .await
            .with_context(|| format!("applying {NAMESPACE}/{name}"))?;
            out.metadata
                .generation
                .with_context(|| format!("{NAMESPACE}/{name} has no metadata.generation"))
        }

        /// `kubectl patch gwr NAME --type=merge -p PATCH`; returns the route's generation.
        async fn patch(&self, name: &str, patch: &Value) -> anyhow::Result<i64> {
            self.say.step(&format!(
                "kubectl patch gwr {name} -n {NAMESPACE} --type=merge -p '{patch}'"
            ));
            let out: GatewayRoute =
                crwatch::api::patch(&self.api(), name, &PatchParams::default(), &Patch::Merge(patch))
                    .await
                    .with_context(|| format!("patching {NAMESPACE}/{name}"))?;
            out.metadata
                .generation
                .with_context(|| format!("{NAMESPACE}/{name} has no metadata.generation"))
        }

        /// `kubectl delete gwr NAME`, then wait until the watch shows it.
        async fn delete(&self, name: &str, printed: &mut Printed) -> anyhow::Result<()> {
            self.say
                .step(&format!("kubectl delete gwr {name} -n {NAMESPACE}"));
            crwatch::api::delete(&self.api(), name, &DeleteParams::default())
                .await
                .with_context(|| format!("deleting {NAMESPACE}/{name}"))?;
            printed.wait_deleted(name).await
        }

        /// One request through nginx, narrated as the curl that sends it; its status and
        /// backend.
        async fn curl(&self, header: Option<(&str, &str)>) -> anyhow::Result<(u16, String)> {
            let mut spec = RequestSpec::get(HOST, "/");
            let mut flags = format!("-H 'Host: {HOST}'");
            if let Some((k, v)) = header {
                spec = spec.header(k, v);
                flags.push_str(&format!(" -H '{k}: {v}'"));
            }
            let r = request(self.addr, &spec)
                .await
                .with_context(|| format!("GET http://{}/ with Host: {HOST}", self.addr))?;
            let backend = r.backend().unwrap_or("(none)").to_string();
            self.say.line(&format!(
                "  ✓ curl {flags} http://{}/ → {} from {backend}",
                self.addr, r.status
            ));
            Ok((r.status, backend))
        }

        /// Let the load run over at least [`WINDOW_MIN`] answered requests (more with a longer
        /// `--pace`), then say how they were shared.
        async fn measure(&self, load: &LoadGen, what: &str) -> anyhow::Result<()> {
            let want = WINDOW_MIN.max((self.pace.as_secs_f64() * f64::from(RATE)) as u64);
            let from = load.snapshot();
            let deadline = Instant::now() + STEP_WAIT;
            let to = loop {
                let now = load.snapshot();
                if answered(&now) - answered(&from) >= want {
                    break now;
                }
                if Instant::now() > deadline {
                    anyhow::bail!(
                        "the load got {} answers in {}s, fewer than {want}",
                        answered(&now) - answered(&from),
                        STEP_WAIT.as_secs()
                    );
                }
                // Polling a counter the load's tasks advance: its next value is due within
                // 1/RATE s.
                tokio::time::sleep(Duration::from_millis(10)).await;
            };
            self.say.line(&format!(
                "  load, {} requests {what}: {}",
                answered(&to) - answered(&from),
                delta(&from, &to)
            ));
            Ok(())
        }

        /// The script, waiting for the watch after every change.
        async fn play(&self, printed: &mut Printed) -> anyhow::Result<Summary> {
            let say = self.say;
            printed.wait_for("the current state", |p| p.synced).await?;

            // A route on v1 (v2 listed with weight 0, so the shifts only change weights).
            let generation = self
                .apply(&route(
                    "shop",
                    json!({"host": HOST, "backends": weighted(self.v1, self.v2, 100, 0)}),
                ))
                .await?;
            printed
                .wait_condition("shop", generation, "Programmed", "True")
                .await?;
            say.line("  the operator rendered nginx.conf, checked it with nginx -t and reloaded nginx");
            self.curl(None).await?;

            say.step(&format!(
                "a load generator: {RATE} requests/s to http://{}/ with Host: {HOST}, a new connection each",
                self.addr
            ));
            let load = LoadGen::start(LoadConfig::new(self.addr, HOST, "/", RATE))
                .context("starting the load generator")?;
            self.measure(&load, "with weights 100/0").await?;

            for (w1, w2) in [(90, 10), (50, 50), (0, 100)] {
                self.pause().await;
                let generation = self
                    .patch(
                        "shop",
                        &json!({"spec": {"backends": weighted(self.v1, self.v2, w1, w2)}}),
                    )
                    .await?;
                printed
                    .wait_condition("shop", generation, "Programmed", "True")
                    .await?;
                self.measure(&load, &format!("once {w1}/{w2} was live")).await?;
            }

            // Requests carrying the header go to v1 again; the others stay on v2.
            self.pause().await;
            let (hk, hv) = CANARY_HEADER;
            let generation = self
                .apply(&route(
                    "shop-canary",
                    json!({
                        "host": HOST,
                        "headers": [{"name": hk, "value": hv}],
                        "backends": [{"url": self.v1.url()}],
                    }),
                ))
                .await?;
            printed
                .wait_condition("shop-canary", generation, "Programmed", "True")
                .await?;
            let (_, with) = self.curl(Some(CANARY_HEADER)).await?;
            let (_, without) = self.curl(None).await?;
            anyhow::ensure!(
                with == "v1" && without == "v2",
                "the canary route sends {hk}: {hv} to {with} and the rest to {without}, not to v1 and v2"
            );

            // nginx -t refuses the route; the operator keeps it out and says why.
            self.pause().await;
            let generation = self
                .apply(&route(
                    "shop-bad",
                    json!({
                        "host": HOST,
                        "path": {"type": "RegularExpression", "value": BAD_REGEX},
                        "backends": [{"url": self.v1.url()}],
                    }),
                ))
                .await?;
            let message = printed
                .wait_condition("shop-bad", generation, "Accepted", "False")
                .await?;
            say.line(&format!("  ✗ shop-bad: Accepted=False: {message}"));
            say.line("  the last good configuration stays live:");
            self.measure(&load, "since").await?;

            self.pause().await;
            self.delete("shop-bad", printed).await?;
            self.pause().await;
            self.delete("shop-canary", printed).await?;
            let stats = load.stop().await;
            say.line(&format!("  load stopped: {stats}"));

            // Without a route the host gets nginx's 404 (once the reload is live).
            self.pause().await;
            self.delete("shop", printed).await?;
            let spec = RequestSpec::get(HOST, "/");
            let (_, r) = wait_until(self.addr, &spec, Duration::from_millis(20), STEP_WAIT, |r| {
                r.status == 404
            })
            .await
            .context("waiting for nginx to stop serving shop.demo")?;
            say.line(&format!(
                "  ✓ curl -H 'Host: {HOST}' http://{}/ → {}: no route left",
                self.addr, r.status
            ));
            let reloads = reloads(self.metrics).await?;
            Ok(Summary {
                sent: stats.sent,
                failed: stats.failed,
                failures: stats.failures,
                reloads,
            })
        }
    }

    /// How the demo ended.
    enum Ending {
        /// The script ran to its end.
        Done(Summary),
        /// Ctrl-C (always the end with `--keep`).
        Interrupted,
    }

    /// Run the demo: check for nginx, then set everything up, play, and take it all down.
    pub(super) async fn run(pace: Duration, keep: bool) -> anyhow::Result<()> {
        let say = Narrator::new();
        let binary = gateway_operator::nginx::find_binary()
            .filter(|b| b.is_file())
            .context(
                "nginx is not installed (looked for $CRWATCH_NGINX, nginx on PATH and /usr/sbin/nginx); \
                 install Debian's with `apt-get install nginx` (`./scripts/demo gateway` does), \
                 or set CRWATCH_NGINX to an nginx binary",
            )?;
        let server = crwatch_apiserver::ApiServer::start(crwatch_apiserver::Config {
            http_port: None,
            ..Default::default()
        })
        .await
        .context("starting the API server")?;
        let outcome = with_server(&server, binary, pace, keep, &say).await;
        server.shutdown().await.context("stopping the API server")?;
        match outcome? {
            Ending::Done(s) => {
                say.line(&format!(
                    "crwatch demo gateway: done: {} requests sent, {} failed, {} nginx reloads (its \
                     start included); nginx, the backends and the API server stopped.",
                    s.sent, s.failed, s.reloads
                ));
                if s.failed > 0 {
                    anyhow::bail!(
                        "{} of {} requests failed while the routes changed: {}",
                        s.failed,
                        s.sent,
                        s.failures.join("; ")
                    );
                }
                Ok(())
            }
            Ending::Interrupted => Ok(()),
        }
    }

    async fn with_server(
        server: &crwatch_apiserver::ApiServer,
        binary: PathBuf,
        pace: Duration,
        keep: bool,
        say: &Narrator,
    ) -> anyhow::Result<Ending> {
        // The generated file's chunks after its header comment, one CRD each.
        for crd in gateway_operator::crd::crds() {
            server.apply(crd).await.context("installing the gateway CRDs")?;
        }
        let client = client_for(server).await?;
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": NAMESPACE}}))?;
        crwatch::api::create(
            &Api::<Namespace>::all(client.clone()),
            &PostParams::default(),
            &ns,
        )
        .await
        .with_context(|| format!("creating namespace {NAMESPACE}"))?;
        say.line(&format!(
            "crwatch demo gateway: API server at {}; GatewayRoute and AIGateway CRDs installed \
             (gatewayroutes.gateway.crwatch.io, short name gwr); namespace {NAMESPACE}",
            server.url()
        ));

        let v1 = Backend::start("v1").await.context("starting backend v1")?;
        let v2 = Backend::start("v2").await.context("starting backend v2")?;
        let outcome = with_backends(client, &v1, &v2, binary, pace, keep, server, say).await;
        v1.shutdown().await;
        v2.shutdown().await;
        outcome
    }

    #[allow(clippy::too_many_arguments)]
    async fn with_backends(
        client: Client,
        v1: &Backend,
        v2: &Backend,
        binary: PathBuf,
        pace: Duration,
        keep: bool,
        server: &crwatch_apiserver::ApiServer,
        say: &Narrator,
    ) -> anyhow::Result<Ending> {
        let prefix = tempfile::Builder::new()
            .prefix("crwatch-demo-nginx-")
            .tempdir()
            .context("creating nginx's prefix directory")?;
        let http_port = free_port()?;
        let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let options = RunOptions {
            // For the summary's reload count.
            metrics_addr: Some(metrics),
            ..RunOptions::local(
                binary.clone(),
                prefix.path().to_path_buf(),
                http_port,
                free_port()?,
            )
        };
        let nginx = NginxGuard(
            Nginx::new(binary.clone(), options.settings.clone(), Mode::Start)
                .context("preparing nginx's prefix directory")?,
        );
        let addr = SocketAddr::from(([127, 0, 0, 1], http_port));
        say.line(&format!(
            "crwatch demo gateway: backends v1 at {} and v2 at {}; nginx ({}, prefix {}) on {addr}, \
             run by the gateway operator in process",
            v1.url(),
            v2.url(),
            binary.display(),
            prefix.path().display()
        ));

        // The operator runs as a task that is always stopped through its shutdown signal (never
        // dropped): it must be gone before nginx is stopped, or it would start nginx again.
        let operator_stop = CancellationToken::new();
        let mut operator = tokio::spawn(gateway_operator::run::run(
            client.clone(),
            options,
            operator_stop.clone().cancelled_owned(),
        ));
        let mut operator_done = false;

        say.step(&format!("crwatch get gatewayroutes -n {NAMESPACE} -w --diff"));
        let watch_stop = CancellationToken::new();
        let (tx, rx) = mpsc::unbounded_channel();
        let get_args = GetArgs {
            resource: "gatewayroutes".into(),
            name: None,
            watch: true,
            watch_only: false,
            namespace: Some(NAMESPACE.into()),
            all_namespaces: false,
            selector: None,
            field_selector: None,
            output: Output::Table,
            diff: true,
            kubeconfig: None,
            context: None,
            items: None,
            key: None,
            interval: None,
            install_trigger: false,
        };
        let embed = Embed {
            stop: watch_stop.clone(),
            reports: Some(tx),
            external_ctrl_c: true,
            min_widths: [("NAME", 11), ("HOST", 9)]
                .map(|(h, w)| (h.to_string(), w))
                .into(),
        };
        let watch = get::run_with(&client, NAMESPACE.into(), &get_args, embed);
        let demo = Demo {
            client: client.clone(),
            v1,
            v2,
            addr,
            metrics,
            pace,
            say,
        };
        let mut kubeconfig_dir = None;
        let script = async {
            let mut printed = Printed {
                reports: rx,
                synced: false,
                last: BTreeMap::new(),
            };
            let summary = demo.play(&mut printed).await?;
            if keep {
                let dir = tempfile::Builder::new()
                    .prefix("crwatch-demo-")
                    .tempdir()
                    .context("creating a directory for the kubeconfig")?;
                let path = dir.path().join("kubeconfig");
                server
                    .write_kubeconfig(&path)
                    .with_context(|| format!("writing {}", path.display()))?;
                let kc = path.display();
                say.line(&format!(
                    "The demo is done; the API server, the operator and nginx keep running until Ctrl-C. \
                     Its kubeconfig: {kc}"
                ));
                say.line(&format!(
                    "Try: kubectl --kubeconfig {kc} get gwr -n {NAMESPACE} -w"
                ));
                let manifest = route("shop", json!({"host": HOST, "backends": weighted(v1, v2, 1, 1)}));
                say.line(&format!(
                    "and, in another terminal: kubectl --kubeconfig {kc} apply -f - <<< '{manifest}'"
                ));
                say.line(&format!("then: curl -H 'Host: {HOST}' http://{addr}/"));
                kubeconfig_dir = Some(dir);
                // Keep draining reports so they do not pile up.
                while printed.next().await.is_some() {}
                std::future::pending::<()>().await;
            }
            anyhow::Ok(summary)
        };
        let outcome = tokio::select! {
            biased;
            _ = tokio::signal::ctrl_c() => Ok(Ending::Interrupted),
            r = &mut operator => {
                operator_done = true;
                Err(match r {
                    Ok(Ok(())) => anyhow::anyhow!("the gateway operator stopped before the demo ended"),
                    Ok(Err(e)) => e.context("the gateway operator"),
                    Err(e) => anyhow::anyhow!("the gateway operator failed: {e}"),
                })
            }
            r = async {
                tokio::try_join!(
                    async { watch.await.map(|_| ()) },
                    async {
                        let r = script.await;
                        watch_stop.cancel();
                        r
                    },
                )
            } => r.map(|(_, summary)| Ending::Done(summary)),
        };
        watch_stop.cancel();
        operator_stop.cancel();
        if !operator_done {
            match tokio::time::timeout(STOP_WAIT, &mut operator).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => say.line(&format!(
                    "crwatch demo gateway: the operator ended with an error: {}",
                    crate::error_chain(e.as_ref())
                )),
                Ok(Err(e)) => say.line(&format!("crwatch demo gateway: the operator failed: {e}")),
                Err(_) => {
                    // Its nginx keeper must not outlive this function.
                    operator.abort();
                    say.line("crwatch demo gateway: the operator did not stop in time");
                }
            }
        }
        nginx.0.stop(STOP_WAIT).await;
        drop(nginx);
        drop(kubeconfig_dir);
        drop(prefix);
        outcome
    }
}
