//! `crwatch get`: list resources as kubectl does (server-side Table with the CRD's printer
//! columns, or JSON / YAML / JSON lines / names), and with `-w` keep watching, printing only
//! real changes (a relist after a reconnect or 410 Gone prints what changed, never repeats),
//! optionally with the field-level diff of each modification.

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::Context;
use crwatch::diff::Diff;
use crwatch::source::Source;
use crwatch::source::kube::KubeSource;
use futures::StreamExt;
use kube::Client;
use kube::api::{Api, DynamicObject, GetParams, ListParams};
use kube::core::TypeMeta;
use serde_json::{Value, json};

use crate::args::{GetArgs, Output};
use crate::resolve::{ResourceType, discover, resolve};
use crate::table::{Column, Grid, cells, crd_columns, from_server_table};
use crate::{Connection, connect};

const TABLE_ACCEPT: &str = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json";

/// An error the API server returned, printed as kubectl prints it:
/// `Error from server (NotFound): databases.stable.example.com "x" not found`.
#[derive(Debug)]
pub struct ServerError {
    /// The Status reason, e.g. `NotFound`.
    pub reason: String,
    /// The Status message.
    pub message: String,
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Error from server ({}): {}", self.reason, self.message)
    }
}

impl std::error::Error for ServerError {}

fn server_error(e: kube::Error, what: &str) -> anyhow::Error {
    match e {
        kube::Error::Api(s) => ServerError {
            reason: if s.reason.is_empty() {
                s.code.to_string()
            } else {
                s.reason.clone()
            },
            message: s.message.clone(),
        }
        .into(),
        other => anyhow::Error::new(other).context(what.to_string()),
    }
}

/// Where to look: the resolved type, its namespace scope and the API path.
struct Target {
    rt: ResourceType,
    /// `None`: all namespaces (or a cluster-scoped type).
    namespace: Option<String>,
    all_namespaces: bool,
    api: Api<DynamicObject>,
}

impl Target {
    fn show_namespace(&self) -> bool {
        self.all_namespaces && self.rt.namespaced
    }
}

/// Run `crwatch get` with its arguments.
pub async fn run(args: GetArgs) -> anyhow::Result<()> {
    let conn = Connection {
        kubeconfig: args.kubeconfig.clone(),
        context: args.context.clone(),
    };
    let (client, default_ns) = connect(&conn).await?;
    let types = discover(&client).await?;
    let rt = resolve(&types, &args.resource)?;
    let namespace = match (rt.namespaced, args.all_namespaces) {
        (false, _) | (true, true) => None,
        (true, false) => Some(args.namespace.clone().unwrap_or(default_ns)),
    };
    let ar = rt.api_resource();
    let api = match &namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    };
    let target = Target {
        rt,
        namespace,
        all_namespaces: args.all_namespaces,
        api,
    };
    if args.watch || args.watch_only {
        watch(&client, &target, &args).await
    } else {
        list(&client, &target, &args).await
    }
}

fn list_params(args: &GetArgs) -> ListParams {
    let mut lp = ListParams::default();
    if let Some(l) = &args.selector {
        lp = lp.labels(l);
    }
    if let Some(f) = &args.field_selector {
        lp = lp.fields(f);
    }
    lp
}

fn request(target: &Target, args: &GetArgs) -> anyhow::Result<http::Request<Vec<u8>>> {
    let req = kube::core::Request::new(target.api.resource_url());
    match &args.name {
        Some(name) => req.get(name, &GetParams::default()),
        None => req.list(&list_params(args)),
    }
    .context("building the request")
}

/// Print the current state once.
async fn list(client: &Client, target: &Target, args: &GetArgs) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let mut req = request(target, args)?;
    if matches!(args.output, Output::Table | Output::Wide) {
        req.headers_mut()
            .insert(http::header::ACCEPT, http::HeaderValue::from_static(TABLE_ACCEPT));
        let text = client
            .request_text(req)
            .await
            .map_err(|e| server_error(e, "listing"))?;
        let table: Value = serde_json::from_str(&text).context("decoding the server's Table")?;
        let (header, rows) = from_server_table(&table, args.output == Output::Wide);
        if rows.is_empty() {
            eprintln!("{}", no_resources(target));
            return Ok(());
        }
        let show_ns = target.show_namespace();
        let mut grid_rows = vec![];
        grid_rows.push(with_ns(show_ns, "NAMESPACE".into(), header));
        for (ns, cells) in rows {
            grid_rows.push(with_ns(show_ns, ns.unwrap_or_default(), cells));
        }
        for line in Grid::default().format(&grid_rows) {
            writeln!(out, "{line}")?;
        }
        return Ok(());
    }
    let text = client
        .request_text(req)
        .await
        .map_err(|e| server_error(e, "listing"))?;
    let got: Value = serde_json::from_str(&text).context("decoding the server's answer")?;
    let single = args.name.is_some();
    let items: Vec<Value> = if single {
        vec![got]
    } else {
        got["items"].as_array().cloned().unwrap_or_default()
    };
    let items: Vec<Value> = items.into_iter().map(|o| typed(o, &target.rt)).collect();
    if items.is_empty() && !single && args.output != Output::Json && args.output != Output::Yaml {
        eprintln!("{}", no_resources(target));
        return Ok(());
    }
    let whole = || {
        if single {
            items[0].clone()
        } else {
            json!({"apiVersion": "v1", "kind": "List", "items": items, "metadata": {"resourceVersion": ""}})
        }
    };
    match args.output {
        Output::Json => writeln!(out, "{}", serde_json::to_string_pretty(&whole())?)?,
        Output::Yaml => write!(out, "{}", to_yaml(&whole())?)?,
        Output::Jsonl => {
            for o in &items {
                writeln!(out, "{}", serde_json::to_string(o)?)?;
            }
        }
        Output::Name => {
            for o in &items {
                writeln!(out, "{}", name_of(o, &target.rt))?;
            }
        }
        Output::Table | Output::Wide => {}
    }
    Ok(())
}

fn with_ns(show: bool, ns: String, mut cells: Vec<String>) -> Vec<String> {
    if show {
        cells.insert(0, ns);
    }
    cells
}

fn no_resources(target: &Target) -> String {
    match &target.namespace {
        Some(ns) => format!("No resources found in {ns} namespace."),
        None => "No resources found".into(),
    }
}

fn to_yaml(v: &Value) -> anyhow::Result<String> {
    serde_saphyr::to_string(v).context("writing YAML")
}

/// The object with `apiVersion` and `kind` set (list items often come without them).
fn typed(mut o: Value, rt: &ResourceType) -> Value {
    if let Some(m) = o.as_object_mut() {
        let ar = rt.api_resource();
        m.entry("apiVersion").or_insert_with(|| json!(ar.api_version));
        m.entry("kind").or_insert_with(|| json!(ar.kind));
    }
    o
}

/// `kind.group/name` (`kind/name` for the core group), as `kubectl get -o name` prints it.
pub fn name_of(o: &Value, rt: &ResourceType) -> String {
    let name = o["metadata"]["name"].as_str().unwrap_or("");
    let kind = rt.kind.to_lowercase();
    if rt.group.is_empty() {
        format!("{kind}/{name}")
    } else {
        format!("{kind}.{}/{name}", rt.group)
    }
}

/// A change the watch prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Added,
    Modified,
    Deleted,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Added => "ADDED",
            Kind::Modified => "MODIFIED",
            Kind::Deleted => "DELETED",
        }
    }
}

struct Change {
    kind: Kind,
    object: Value,
    diff: Option<Diff>,
}

/// The watch's view of the world: the last state of every object, so relists print only what
/// really changed.
#[derive(Default)]
struct Tracker {
    objects: BTreeMap<String, Value>,
}

fn key(o: &Value) -> String {
    format!(
        "{}/{}",
        o["metadata"]["namespace"].as_str().unwrap_or(""),
        o["metadata"]["name"].as_str().unwrap_or("")
    )
}

fn same_version(a: &Value, b: &Value) -> bool {
    let (ra, rb) = (
        &a["metadata"]["resourceVersion"],
        &b["metadata"]["resourceVersion"],
    );
    !ra.is_null() && ra == rb
}

impl Tracker {
    fn apply(&mut self, o: Value) -> Option<Change> {
        match self.objects.insert(key(&o), o.clone()) {
            None => Some(Change {
                kind: Kind::Added,
                object: o,
                diff: None,
            }),
            Some(old) if same_version(&old, &o) => None,
            Some(old) => Some(Change {
                kind: Kind::Modified,
                diff: Some(Diff::between(&old, &o)),
                object: o,
            }),
        }
    }

    fn delete(&mut self, o: Value) -> Option<Change> {
        self.objects.remove(&key(&o)).map(|_| Change {
            kind: Kind::Deleted,
            object: o,
            diff: None,
        })
    }

    /// Replace everything with a fresh list; the changes against what was known.
    fn replace(&mut self, objs: Vec<Value>) -> Vec<Change> {
        let mut fresh: BTreeMap<String, Value> = objs.into_iter().map(|o| (key(&o), o)).collect();
        let mut changes = vec![];
        let gone: Vec<String> = self
            .objects
            .keys()
            .filter(|k| !fresh.contains_key(*k))
            .cloned()
            .collect();
        for k in gone {
            if let Some(o) = self.objects.remove(&k) {
                changes.push(Change {
                    kind: Kind::Deleted,
                    object: o,
                    diff: None,
                });
            }
        }
        for (_, o) in std::mem::take(&mut fresh) {
            changes.extend(self.apply(o));
        }
        changes
    }
}

/// Prints watch changes in the chosen format.
struct Printer {
    output: Output,
    rt: ResourceType,
    columns: Vec<Column>,
    show_ns: bool,
    diff: bool,
    grid: Grid,
    header_done: bool,
}

impl Printer {
    fn print(&mut self, changes: &[Change]) -> std::io::Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut out = std::io::stdout().lock();
        match self.output {
            Output::Table | Output::Wide => {
                let mut rows = vec![];
                if !self.header_done {
                    let mut h = vec!["EVENT".to_string()];
                    if self.show_ns {
                        h.push("NAMESPACE".into());
                    }
                    h.extend(self.columns.iter().map(|c| c.name.to_uppercase()));
                    rows.push(h);
                }
                for c in changes {
                    let mut r = vec![c.kind.as_str().to_string()];
                    if self.show_ns {
                        r.push(
                            c.object["metadata"]["namespace"]
                                .as_str()
                                .unwrap_or("")
                                .to_string(),
                        );
                    }
                    r.extend(cells(&c.object, &self.columns));
                    rows.push(r);
                }
                let lines = self.grid.format(&rows);
                let mut lines = lines.into_iter();
                if !self.header_done {
                    if let Some(h) = lines.next() {
                        writeln!(out, "{h}")?;
                    }
                    self.header_done = true;
                }
                for (c, line) in changes.iter().zip(lines) {
                    writeln!(out, "{line}")?;
                    self.print_diff(&mut out, c)?;
                }
            }
            Output::Name => {
                for c in changes {
                    writeln!(out, "{}", name_of(&c.object, &self.rt))?;
                    self.print_diff(&mut out, c)?;
                }
            }
            Output::Json => {
                for c in changes {
                    writeln!(out, "{}", serde_json::to_string_pretty(&c.object)?)?;
                }
            }
            Output::Yaml => {
                for c in changes {
                    let y = to_yaml(&c.object).map_err(std::io::Error::other)?;
                    write!(out, "---\n{y}")?;
                }
            }
            Output::Jsonl => {
                for c in changes {
                    let mut line = json!({"type": c.kind.as_str(), "object": c.object});
                    if let (true, Some(d)) = (self.diff, &c.diff) {
                        line["diff"] = serde_json::to_value(d)?;
                    }
                    writeln!(out, "{}", serde_json::to_string(&line)?)?;
                }
            }
        }
        out.flush()
    }

    fn print_diff(&self, out: &mut impl Write, c: &Change) -> std::io::Result<()> {
        let (true, Some(diff)) = (self.diff, &c.diff) else {
            return Ok(());
        };
        for (group, lines) in diff_groups(diff) {
            writeln!(out, "    {group}:")?;
            for l in lines {
                writeln!(out, "      {l}")?;
            }
        }
        Ok(())
    }
}

/// The changes of `diff` grouped by top-level field: `spec` first, then `status`, then the
/// others in order of appearance.
pub fn diff_groups(diff: &Diff) -> Vec<(String, Vec<String>)> {
    let mut groups: Vec<(String, Vec<String>)> = vec![("spec".into(), vec![]), ("status".into(), vec![])];
    for c in diff {
        let top = c.path.split(['.', '[']).next().unwrap_or("").to_string();
        let line = c.to_string();
        match groups.iter_mut().find(|(g, _)| *g == top) {
            Some((_, lines)) => lines.push(line),
            None => groups.push((top, vec![line])),
        }
    }
    groups.retain(|(_, l)| !l.is_empty());
    groups
}

fn to_value(mut o: DynamicObject, rt: &ResourceType) -> Value {
    let ar = rt.api_resource();
    o.types = Some(TypeMeta {
        api_version: ar.api_version,
        kind: ar.kind,
    });
    o.metadata.managed_fields = None;
    serde_json::to_value(&o).unwrap_or(Value::Null)
}

/// The printer columns for watch rows, from the CRD (NAME and AGE for other kinds).
async fn watch_columns(client: &Client, target: &Target, wide: bool) -> Vec<Column> {
    let crd = if target.rt.group.is_empty() {
        None
    } else {
        let path = format!(
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{}",
            target.rt.full_name()
        );
        match http::Request::get(path).body(vec![]) {
            Ok(req) => client.request::<Value>(req).await.ok(),
            Err(_) => None,
        }
    };
    crd_columns(crd.as_ref(), &target.rt.version)
        .into_iter()
        .filter(|c| wide || c.priority == 0)
        .collect()
}

/// List, then watch, printing changes until interrupted.
async fn watch(client: &Client, target: &Target, args: &GetArgs) -> anyhow::Result<()> {
    let mut source = KubeSource::from_api(target.api.clone(), target.namespace.as_deref());
    if let Some(l) = &args.selector {
        source = source.labels(l);
    }
    let fields = match (&args.field_selector, &args.name) {
        (Some(f), Some(n)) => Some(format!("{f},metadata.name={n}")),
        (Some(f), None) => Some(f.clone()),
        (None, Some(n)) => Some(format!("metadata.name={n}")),
        (None, None) => None,
    };
    if let Some(f) = &fields {
        source = source.fields(f);
    }
    let columns = if matches!(args.output, Output::Table | Output::Wide) {
        watch_columns(client, target, args.output == Output::Wide).await
    } else {
        vec![]
    };
    let mut printer = Printer {
        output: args.output,
        rt: target.rt.clone(),
        columns,
        show_ns: target.show_namespace(),
        diff: args.diff,
        grid: Grid::with_min_widths(vec![Kind::Modified.as_str().len()]),
        header_done: false,
    };
    let mut events = Box::new(source).events();
    let mut tracker = Tracker::default();
    let mut buffer: Option<Vec<Value>> = None;
    let mut synced = false;
    let mut interrupted = false;
    loop {
        let next = tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            next = events.next() => next,
        };
        let Some(next) = next else {
            anyhow::bail!("the watch ended");
        };
        use kube::runtime::watcher::Event;
        let changes = match next {
            Err(e) => {
                if !interrupted {
                    eprintln!("crwatch: watch interrupted ({}); reconnecting", e.message);
                }
                interrupted = true;
                continue;
            }
            Ok(Event::Init) => {
                if synced {
                    eprintln!("crwatch: relisting to catch up after a reconnect");
                }
                buffer = Some(vec![]);
                continue;
            }
            Ok(Event::InitApply(o)) => {
                buffer.get_or_insert_with(Vec::new).push(to_value(o, &target.rt));
                continue;
            }
            Ok(Event::InitDone) => {
                let objs = buffer.take().unwrap_or_default();
                let changes = tracker.replace(objs);
                let first = !synced;
                synced = true;
                if interrupted {
                    eprintln!("crwatch: reconnected; {} change(s) since", changes.len());
                    interrupted = false;
                }
                if first && args.watch_only { vec![] } else { changes }
            }
            Ok(Event::Apply(o)) => {
                if interrupted {
                    eprintln!("crwatch: reconnected");
                    interrupted = false;
                }
                tracker.apply(to_value(o, &target.rt)).into_iter().collect()
            }
            Ok(Event::Delete(o)) => tracker.delete(to_value(o, &target.rt)).into_iter().collect(),
        };
        if let Err(e) = printer.print(&changes) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(());
            }
            return Err(e).context("writing to stdout");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(name: &str, rv: &str, size: &str) -> Value {
        json!({"metadata": {"name": name, "namespace": "ns", "resourceVersion": rv}, "spec": {"size": size}})
    }

    #[test]
    fn relists_report_only_real_changes() {
        let mut t = Tracker::default();
        let first = t.replace(vec![obj("a", "1", "1Gi"), obj("b", "2", "1Gi")]);
        assert_eq!(
            first.iter().map(|c| c.kind).collect::<Vec<_>>(),
            [Kind::Added, Kind::Added]
        );
        assert!(
            t.replace(vec![obj("a", "1", "1Gi"), obj("b", "2", "1Gi")])
                .is_empty()
        );
        let again = t.replace(vec![obj("a", "3", "2Gi"), obj("c", "4", "1Gi")]);
        let kinds: Vec<_> = again.iter().map(|c| (c.kind, key(&c.object))).collect();
        assert_eq!(
            kinds,
            [
                (Kind::Deleted, "ns/b".to_string()),
                (Kind::Modified, "ns/a".to_string()),
                (Kind::Added, "ns/c".to_string())
            ]
        );
        assert_eq!(
            again[1].diff.as_ref().map(|d| d.to_string()).as_deref(),
            Some("spec.size: \"1Gi\" → \"2Gi\"")
        );
        assert!(t.apply(obj("a", "3", "2Gi")).is_none());
        assert!(t.delete(obj("zz", "9", "")).is_none());
    }

    #[test]
    fn diffs_are_grouped_spec_then_status() {
        let d = Diff::between(
            &json!({"status": {"phase": "A"}, "spec": {"size": "1"}, "metadata": {"labels": {"x": "1"}}}),
            &json!({"status": {"phase": "B"}, "spec": {"size": "2"}, "metadata": {"labels": {"x": "2"}}}),
        );
        let g = diff_groups(&d);
        let names: Vec<&str> = g.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["spec", "status", "metadata"]);
        assert_eq!(g[0].1, ["spec.size: \"1\" → \"2\""]);
    }
}
