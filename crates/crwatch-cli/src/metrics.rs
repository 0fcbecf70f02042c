//! `crwatch metrics -f config.yaml`: kube-state-metrics' custom-resource-state metrics
//! ([`crwatch::ksm`]) served on `/metrics` from crwatch informers, with `/healthz` and
//! `/readyz` (ready once every informer has synced).
//!
//! The file is kube-state-metrics' `CustomResourceStateMetrics` configuration, unchanged.
//! Each resource entry is watched in Kubernetes (its `groupVersionKind`, resolved through
//! discovery; `resourcePlural` picks among several), or, with crwatch's own `source:` field,
//! over a `file://`, `postgres://`, `mysql://` or `https://` source: then every object of
//! that source is evaluated (point it at the objects of that kind, e.g. a directory of `Foo`
//! documents), and the `groupVersionKind` only names the `customresource_*` labels.
//!
//! A Kubernetes kind the server does not serve (its CRD not installed yet) is named in a
//! warning and looked for again every `--discovery-interval` (30s): as with kube-state-metrics,
//! its metrics appear once it is served, and it does not hold `/readyz` back.
//!
//! Errors in the file are reported with its name, line and column and the field, e.g.
//! `config.yaml:12:15: spec.resources[0].metrics[1].each.type: unknown metric type …`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use crwatch::discovery::ResourceType;
use crwatch::informer::Informer;
use crwatch::ksm::{Collector, Config, CustomResourceStateMetrics, Resource};
use crwatch::store::Store;
use kube::api::DynamicObject;
use tokio_util::sync::CancellationToken;

use crate::Connection;
use crate::errors::explain_kube;

/// `crwatch metrics -f FILE [--listen ADDR] [-n NS | -A] [--check]`.
#[derive(Debug, Clone, Args)]
pub struct MetricsArgs {
    /// kube-state-metrics' `CustomResourceStateMetrics` configuration (YAML).
    #[arg(short = 'f', long = "config")]
    pub config: PathBuf,
    /// Address to serve /metrics, /healthz and /readyz on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Check the configuration and exit, without connecting.
    #[arg(long)]
    pub check: bool,
    /// Only objects in this namespace (default: all namespaces, as kube-state-metrics).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// All namespaces (the default; accepted for symmetry with `crwatch get`).
    #[arg(short = 'A', long, conflicts_with = "namespace")]
    pub all_namespaces: bool,
    /// Kubeconfig file (default: `KUBECONFIG`, then `~/.kube/config`, then in-cluster).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context to use.
    #[arg(long)]
    pub context: Option<String>,
    /// How often to look again for kinds the server does not serve yet (a CRD installed
    /// later), 1s to 1h: their metrics appear once it does.
    #[arg(long, default_value = "30s", value_parser = discovery_interval)]
    pub discovery_interval: Duration,
}

fn discovery_interval(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if d < Duration::from_secs(1) || d > Duration::from_secs(3600) {
        return Err(format!("must be between 1s and 1h, not {text}"));
    }
    Ok(d)
}

/// A configuration error located in the file.
#[derive(Debug, thiserror::Error)]
#[error("{file}{}: {message}", location.map(|(l, c)| format!(":{l}:{c}")).unwrap_or_default())]
pub struct FileError {
    /// The file.
    pub file: String,
    /// Line and column, when known.
    pub location: Option<(u64, u64)>,
    /// What is wrong, naming the field.
    pub message: String,
}

/// Read and check `path`.
pub fn load(path: &std::path::Path) -> Result<Config, FileError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| FileError {
        file: file.clone(),
        location: None,
        message: format!("cannot read: {e}"),
    })?;
    parse(&text, &file)
}

/// Parse and check `text`; `file` names it in errors.
pub fn parse(text: &str, file: &str) -> Result<Config, FileError> {
    let raw: CustomResourceStateMetrics = serde_saphyr::from_str(text).map_err(|e| FileError {
        file: file.to_string(),
        location: e.location().map(|l| (l.line(), l.column())),
        message: first_line(&e.to_string()),
    })?;
    Config::new(raw).map_err(|e| FileError {
        file: file.to_string(),
        location: locate(text, &e.field),
        message: e.to_string(),
    })
}

fn first_line(s: &str) -> String {
    let l = s.lines().next().unwrap_or_default();
    l.strip_prefix("error: ").unwrap_or(l).to_string()
}

/// The line and column of `field` (`spec.resources[0].metrics[1].each.type`) in the YAML
/// `text`, as far as the path can be followed (the deepest node found).
fn locate(text: &str, field: &str) -> Option<(u64, u64)> {
    let doc: serde_saphyr::Spanned<Located> = serde_saphyr::from_str(text).ok()?;
    let mut node = &doc;
    let mut best = (doc.referenced.line(), doc.referenced.column());
    for step in steps(field) {
        let next = match (&node.value, step) {
            (Located::Map(m), Step::Key(k)) => m.iter().find(|(key, _)| *key == k).map(|(_, v)| v),
            (Located::List(l), Step::Index(i)) => l.get(i),
            _ => None,
        };
        let Some(next) = next else { break };
        node = next;
        best = (node.referenced.line(), node.referenced.column());
    }
    Some(best)
}

/// A YAML document with the location of every node.
#[derive(Debug)]
enum Located {
    Map(Vec<(String, serde_saphyr::Spanned<Located>)>),
    List(Vec<serde_saphyr::Spanned<Located>>),
    Scalar,
}

impl<'de> serde::Deserialize<'de> for Located {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Located;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any YAML value")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> Result<Located, A::Error> {
                let mut m = vec![];
                while let Some((k, v)) =
                    a.next_entry::<serde_json::Value, serde_saphyr::Spanned<Located>>()?
                {
                    let k = match k {
                        serde_json::Value::String(s) => s,
                        other => other.to_string(),
                    };
                    m.push((k, v));
                }
                Ok(Located::Map(m))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Located, A::Error> {
                let mut l = vec![];
                while let Some(v) = a.next_element::<serde_saphyr::Spanned<Located>>()? {
                    l.push(v);
                }
                Ok(Located::List(l))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Located, E> {
                Ok(Located::Scalar)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Located, E> {
                Ok(Located::Scalar)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Located, E> {
                Ok(Located::Scalar)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Located, E> {
                Ok(Located::Scalar)
            }
            fn visit_str<E>(self, _: &str) -> Result<Located, E> {
                Ok(Located::Scalar)
            }
            fn visit_unit<E>(self) -> Result<Located, E> {
                Ok(Located::Scalar)
            }
            fn visit_none<E>(self) -> Result<Located, E> {
                Ok(Located::Scalar)
            }
        }
        d.deserialize_any(V)
    }
}

enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// `spec.resources[0].metrics` → `spec`, `resources`, 0, `metrics`.
fn steps(field: &str) -> Vec<Step<'_>> {
    let mut out = vec![];
    for part in field.split('.') {
        let (key, mut rest) = part.split_once('[').map_or((part, ""), |(k, r)| (k, r));
        if !key.is_empty() {
            out.push(Step::Key(key));
        }
        while let Some((i, r)) = rest.split_once(']') {
            if let Ok(i) = i.parse() {
                out.push(Step::Index(i));
            }
            rest = r.strip_prefix('[').unwrap_or(r);
        }
    }
    out
}

/// How the informer for a resource entry is described in messages.
fn describe(r: &Resource) -> String {
    match &r.source {
        Some(uri) => crwatch_forward::event::redact_uri(uri),
        None => r.group_version_kind.to_string(),
    }
}

/// An informer over a non-Kubernetes source URI.
fn source_informer(uri: &str, store: Store<DynamicObject>) -> anyhow::Result<Informer<DynamicObject>> {
    let scheme = uri.split("://").next().unwrap_or_default().to_ascii_lowercase();
    match scheme.as_str() {
        #[cfg(feature = "file")]
        "file" => Ok(Informer::with_store(
            crwatch::source::file::FileSource::from_url(uri)?,
            store,
        )),
        #[cfg(feature = "postgres")]
        "postgres" | "postgresql" => Ok(Informer::with_store(
            crwatch::source::postgres::PostgresSource::from_url(uri)?,
            store,
        )),
        #[cfg(feature = "mysql")]
        "mysql" | "mariadb" => Ok(Informer::with_store(
            crwatch::source::mysql::MysqlSource::from_url(uri)?,
            store,
        )),
        #[cfg(feature = "http")]
        "http" | "https" => {
            let s = crwatch::source::http::HttpSource::new(uri);
            s.validate()?;
            Ok(Informer::with_store(s, store))
        }
        other => {
            drop(store);
            anyhow::bail!(
                "unsupported source scheme {other:?}: use file://, postgres://, mysql:// or https:// (each needs its cargo feature)"
            )
        }
    }
}

/// The `groupVersionKind` (and `resourcePlural`) of `r` among the server's types.
fn find<'a>(types: &'a [ResourceType], r: &Resource) -> Option<&'a ResourceType> {
    let gvk = &r.group_version_kind;
    types
        .iter()
        .filter(|t| t.group == gvk.group && t.version == gvk.version && t.kind == gvk.kind)
        .find(|t| r.resource_plural.as_deref().is_none_or(|p| p == t.plural))
}

/// What the server lacks for entry `i`, in the words of a warning.
fn missing(i: usize, r: &Resource) -> String {
    let gvk = &r.group_version_kind;
    format!(
        "spec.resources[{i}]: the server has no resource of kind {} in {}{}; is its CustomResourceDefinition installed? (kubectl get crd)",
        gvk.kind,
        if gvk.group.is_empty() {
            "the core group".to_string()
        } else {
            format!("{}/{}", gvk.group, gvk.version)
        },
        r.resource_plural
            .as_deref()
            .map(|p| format!(" with plural {p:?}"))
            .unwrap_or_default(),
    )
}

/// The stores of a configuration's entries (one each, in order, what the [`Collector`]
/// reads), the informers filling them (not started), and the Kubernetes entries whose kind the
/// server does not serve yet: their stores stay empty until [`Plan::discover`] finds them, as
/// kube-state-metrics serves a custom resource once its CRD appears.
pub struct Plan {
    /// One store per entry of `spec.resources`.
    pub stores: Vec<Store<DynamicObject>>,
    /// The informers to start, with the entry each fills.
    pub informers: Vec<(usize, Informer<DynamicObject>)>,
    /// Entries waiting for their kind to be served.
    pub pending: Vec<usize>,
    client: Option<kube::Client>,
    namespace: Option<String>,
}

impl Plan {
    /// Plan `config`'s entries: sources as given, Kubernetes kinds through one discovery.
    pub async fn new(
        config: &Config,
        file: &str,
        conn: &Connection,
        namespace: Option<&str>,
    ) -> anyhow::Result<Plan> {
        let mut plan = Plan {
            stores: vec![],
            informers: vec![],
            pending: vec![],
            client: None,
            namespace: namespace.map(str::to_string),
        };
        let mut types = vec![];
        for (i, r) in config.resources().iter().enumerate() {
            let store = Store::new();
            plan.stores.push(store.clone());
            if let Some(uri) = &r.source {
                let inf = source_informer(uri, store)
                    .with_context(|| format!("{file}: spec.resources[{i}].source {}", describe(r)))?;
                plan.informers.push((i, inf));
                continue;
            }
            if plan.client.is_none() {
                let (client, _, url) = crate::connect_with_url(conn).await?;
                types = crwatch::discovery::discover(&client)
                    .await
                    .map_err(|e| explain_kube(e, &url))?;
                plan.client = Some(client);
            }
            match find(&types, r) {
                Some(rt) => {
                    let inf = plan.kube_informer(rt, store)?;
                    plan.informers.push((i, inf));
                }
                None => plan.pending.push(i),
            }
        }
        Ok(plan)
    }

    fn kube_informer(
        &self,
        rt: &ResourceType,
        store: Store<DynamicObject>,
    ) -> anyhow::Result<Informer<DynamicObject>> {
        let client = self
            .client
            .clone()
            .ok_or_else(|| anyhow::anyhow!("no Kubernetes connection"))?;
        let ns = if rt.namespaced {
            self.namespace.as_deref()
        } else {
            None
        };
        let source = crwatch::source::kube::KubeSource::dynamic(client, &rt.api_resource(), ns);
        Ok(Informer::with_store(source, store))
    }

    /// Discover again and take the pending entries the server now serves: their informers
    /// (not started), filling the stores the collector already reads.
    pub async fn discover(
        &mut self,
        config: &Config,
    ) -> anyhow::Result<Vec<(usize, Informer<DynamicObject>)>> {
        let Some(client) = &self.client else {
            return Ok(vec![]);
        };
        let types = crwatch::discovery::discover(client).await?;
        let mut found = vec![];
        let mut still = vec![];
        for i in std::mem::take(&mut self.pending) {
            let r = &config.resources()[i];
            match find(&types, r).map(|rt| self.kube_informer(rt, self.stores[i].clone())) {
                Some(Ok(inf)) => found.push((i, inf)),
                _ => still.push(i),
            }
        }
        self.pending = still;
        Ok(found)
    }
}

/// The informers running, with the entry each fills.
type Running = std::sync::Arc<std::sync::Mutex<Vec<(usize, Informer<DynamicObject>)>>>;

/// Start `found` and add it to the informers readiness waits for.
fn start(running: &Running, cancel: &CancellationToken, found: Vec<(usize, Informer<DynamicObject>)>) {
    let mut running = running.lock().unwrap_or_else(|p| p.into_inner());
    for (i, inf) in found {
        inf.start(cancel.child_token());
        running.push((i, inf));
    }
}

/// Run `crwatch metrics` until SIGTERM or Ctrl-C.
pub async fn run(args: MetricsArgs) -> anyhow::Result<()> {
    let file = args.config.display().to_string();
    let config = load(&args.config)?;
    if args.check {
        println!(
            "{file}: configuration is valid: {} resource(s), {} metric(s): {}",
            config.resources().len(),
            config.metric_names().len(),
            config.metric_names().join(", ")
        );
        return Ok(());
    }
    let conn = Connection {
        kubeconfig: args.kubeconfig.clone(),
        context: args.context.clone(),
    };
    let mut plan = Plan::new(&config, &file, &conn, args.namespace.as_deref()).await?;
    let names: Vec<String> = config.resources().iter().map(describe).collect();
    let families = config.metric_names().len();
    let config = std::sync::Arc::new(config);
    let collector = Collector::new((*config).clone(), plan.stores.clone())?;

    let cancel = CancellationToken::new();
    // The informers running, with their entries: readiness waits for each to list.
    let running: Running = Default::default();
    start(&running, &cancel, std::mem::take(&mut plan.informers));
    for &i in &plan.pending {
        eprintln!(
            "crwatch metrics: warning: {file}: {}; looking again every {}, its metrics appear once it is served",
            missing(i, &config.resources()[i]),
            humantime::format_duration(args.discovery_interval)
        );
    }
    let ready = crwatch::health::Readiness::default();
    {
        let running = running.clone();
        let names = names.clone();
        // As kube-state-metrics: ready once what is served has listed; kinds not served yet
        // do not hold readiness back.
        ready.add_check(move || {
            let running = running.lock().unwrap_or_else(|p| p.into_inner());
            let waiting: Vec<&str> = running
                .iter()
                .filter(|(_, inf)| !inf.has_synced())
                .map(|(i, _)| names[*i].as_str())
                .collect();
            if waiting.is_empty() {
                Ok(())
            } else {
                Err(format!("not synced yet: {}", waiting.join(", ")))
            }
        });
    }
    ready.set(true);
    if !plan.pending.is_empty() {
        let config = config.clone();
        let running = running.clone();
        let cancel = cancel.clone();
        let names = names.clone();
        let every = args.discovery_interval;
        tokio::spawn(async move {
            while !plan.pending.is_empty() {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(every) => {}
                }
                match plan.discover(&config).await {
                    Ok(found) => {
                        for (i, _) in &found {
                            eprintln!("crwatch metrics: {} is served now: watching it", names[*i]);
                        }
                        start(&running, &cancel, found);
                    }
                    Err(e) => {
                        tracing::warn!(error = format!("{e:#}"), "discovery failed; trying again later")
                    }
                }
            }
        });
    }
    let router = collector.router().merge(crwatch::health::probes_router(ready));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| {
            format!(
                "listening on {} (another process on that port? pass --listen)",
                args.listen
            )
        })?;
    let local = listener.local_addr()?;
    let stop = cancel.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
    });
    eprintln!(
        "crwatch metrics: serving {} metric famil{} of {} on http://{local}/metrics",
        families,
        if families == 1 { "y" } else { "ies" },
        names.join(", "),
    );
    // Say once when every informer has listed, or what is still missing after a while.
    let started: Vec<(usize, Informer<DynamicObject>)> =
        running.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let synced = futures::future::join_all(
        started
            .iter()
            .map(|(_, i)| i.wait_synced(Duration::from_secs(30))),
    );
    tokio::select! {
        r = synced => {
            let waiting: Vec<&str> = r.iter().zip(&started).filter(|(r, _)| r.is_err()).map(|(_, (i, _))| names[*i].as_str()).collect();
            if !waiting.is_empty() {
                eprintln!(
                    "crwatch metrics: warning: not listed after 30s: {} (check RBAC and connectivity; CRWATCH_LOG=warn shows why); /readyz stays 503 until they are",
                    waiting.join(", ")
                );
            }
        }
        () = crwatch::manager::shutdown_signal() => {
            cancel.cancel();
            let _ = server.await;
            return Ok(());
        }
    }
    crwatch::manager::shutdown_signal().await;
    cancel.cancel();
    server
        .await
        .context("the HTTP server task failed")?
        .context("serving HTTP")?;
    Ok(())
}
