//! `crwatch get`: list resources as kubectl does (server-side Table with the printer columns,
//! or JSON / YAML / JSON lines / names), and with `-w` keep watching, printing only real
//! changes (a relist after a reconnect or 410 Gone prints what changed, never repeats),
//! optionally with the field-level diff of each modification.
//!
//! The watch asks the server for Tables with the full object embedded (`includeObject=Object`,
//! as `kubectl get -w` does), so every row has the columns of the initial list, built-in kinds
//! included, while the objects feed the diffs. A server that answers with plain objects gets
//! its columns computed client-side from the CRD.
//!
//! On a terminal, long lists show a spinner on stderr and events are coloured (never with
//! `NO_COLOR`); output is flushed after every event, piped or not.

use std::future::Future;
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use crwatch::diff::{Diff, FieldChange, Op};
use crwatch::informer::{AsyncHandler, Change as InformerChange, Informer};
use crwatch::source::kube::{Columns, KubeSource, TableRow};
use crwatch::source::{ErrorKind, SourceError};
use futures::future::BoxFuture;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use kube::Client;
use kube::api::{Api, DynamicObject, GetParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::args::{GetArgs, Output};
use crate::resolve::{ResourceType, discover, resolve};
use crate::table::{Column, Grid, cells, crd_columns, is_table, row_cells, server_columns, visible};
use crate::{Connection, connect};

const TABLE_ACCEPT: &str = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json";
/// Lists that take longer than this show a spinner (on a terminal).
const PROGRESS_DELAY: Duration = Duration::from_millis(250);

pub use crate::errors::{ConnectError, ServerError};
use crate::errors::{explain, explain_any, explain_source};

/// The server URL the connection flags lead to (for error messages).
async fn cluster_url(conn: &Connection) -> Option<String> {
    let options = KubeConfigOptions {
        context: conn.context.clone(),
        ..Default::default()
    };
    let config = match &conn.kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path).ok()?;
            kube::Config::from_custom_kubeconfig(kc, &options).await.ok()?
        }
        None if conn.context.is_some() => kube::Config::from_kubeconfig(&options).await.ok()?,
        None => kube::Config::infer().await.ok()?,
    };
    Some(config.cluster_url.to_string())
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

    /// `databases.stable.example.com in namespace default`, for the spinner.
    fn describe(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{} in namespace {ns}", self.rt.full_name()),
            None => self.rt.full_name(),
        }
    }
}

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// It appeared.
    Added,
    /// It changed.
    Modified,
    /// It went away.
    Deleted,
}

impl ChangeKind {
    /// `ADDED`, `MODIFIED` or `DELETED`, as watch events name them.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Added => "ADDED",
            ChangeKind::Modified => "MODIFIED",
            ChangeKind::Deleted => "DELETED",
        }
    }
}

/// What a watch tells a program that embeds it (the demo), besides printing.
#[derive(Debug, Clone)]
pub enum WatchReport {
    /// The initial list is done (and printed, unless `--watch-only`).
    Synced,
    /// A change was printed (and flushed).
    Printed {
        /// What happened.
        kind: ChangeKind,
        /// The object as printed (the last known state for deletions).
        object: Value,
    },
}

/// Hooks for programs that run the watch in process (the demo): a stop signal besides Ctrl-C,
/// and a report of every printed change.
#[derive(Debug, Default, Clone)]
pub struct Embed {
    /// Ends the watch (successfully) when cancelled.
    pub stop: CancellationToken,
    /// Receives a [`WatchReport`] after the initial sync and after every printed change.
    pub reports: Option<tokio::sync::mpsc::UnboundedSender<WatchReport>>,
    /// The embedding program handles Ctrl-C (and ends the watch through `stop`).
    pub external_ctrl_c: bool,
    /// Least widths of columns by header (`NAME`, `PHASE`), so rows printed before wider
    /// values arrive line up with them (a script knows its values in advance).
    pub min_widths: Vec<(String, usize)>,
}

impl Embed {
    fn report(&self, r: WatchReport) {
        if let Some(tx) = &self.reports {
            // The embedding program may stop listening; the watch goes on regardless.
            let _ = tx.send(r);
        }
    }
}

/// Run `crwatch get` with its arguments.
pub async fn run(args: GetArgs) -> anyhow::Result<()> {
    if crate::uri::is_uri(&args.resource) {
        return match crate::uri::run(&args, Embed::default()).await {
            Err(e) if is_broken_pipe(&e) => Ok(()),
            other => other,
        };
    }
    let conn = Connection {
        kubeconfig: args.kubeconfig.clone(),
        context: args.context.clone(),
    };
    let (client, default_ns) = connect(&conn).await?;
    match run_with(&client, default_ns, &args, Embed::default()).await {
        Err(mut e) => {
            if is_broken_pipe(&e) {
                return Ok(());
            }
            if let Some(c) = e.downcast_mut::<ConnectError>()
                && c.url.is_none()
            {
                c.url = cluster_url(&conn).await;
            }
            Err(e)
        }
        Ok(()) => Ok(()),
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Run `crwatch get` against a connected client (`default_ns` for namespaced types without
/// `-n`); with `-w` until Ctrl-C or `embed.stop`.
pub async fn run_with(
    client: &Client,
    default_ns: String,
    args: &GetArgs,
    embed: Embed,
) -> anyhow::Result<()> {
    let types = discover(client).await.map_err(explain_any)?;
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
        watch(client, &target, args, &embed).await
    } else {
        list(client, &target, args).await
    }
}

/// Label and field selectors (a NAME becomes `metadata.name=NAME` for watches).
struct Selectors {
    labels: Option<String>,
    fields: Option<String>,
}

impl Selectors {
    fn of(args: &GetArgs, name_as_field: bool) -> Self {
        let name = args.name.as_ref().filter(|_| name_as_field);
        let fields = match (&args.field_selector, name) {
            (Some(f), Some(n)) => Some(format!("{f},metadata.name={n}")),
            (Some(f), None) => Some(f.clone()),
            (None, Some(n)) => Some(format!("metadata.name={n}")),
            (None, None) => None,
        };
        Selectors {
            labels: args.selector.clone(),
            fields,
        }
    }
}

/// Ask for a Table (`includeObject=Object` embeds the full object in each row).
fn as_table(mut req: http::Request<Vec<u8>>, include_object: bool) -> http::Request<Vec<u8>> {
    req.headers_mut()
        .insert(http::header::ACCEPT, http::HeaderValue::from_static(TABLE_ACCEPT));
    if include_object {
        let uri = req.uri().to_string();
        let sep = if uri.contains('?') { '&' } else { '?' };
        if let Ok(u) = format!("{uri}{sep}includeObject=Object").parse() {
            *req.uri_mut() = u;
        }
    }
    req
}

/// An object as the watch knows it: the object and, when the server rendered it, its cells.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Seen {
    object: Value,
    cells: Option<Vec<Value>>,
}

impl Seen {
    /// An object printed with client-side columns.
    pub(crate) fn object(object: Value) -> Self {
        Seen { object, cells: None }
    }
}

/// The object with `apiVersion` and `kind` set (list items often come without them) and
/// without managedFields (noise, as kubectl hides them).
fn typed(mut o: Value, rt: &ResourceType) -> Value {
    if let Some(m) = o.as_object_mut() {
        let ar = rt.api_resource();
        m.entry("apiVersion").or_insert_with(|| json!(ar.api_version));
        m.entry("kind").or_insert_with(|| json!(ar.kind));
    }
    if let Some(meta) = o.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
    }
    o
}

/// The objects a list answer or a watch event carries: the rows of a Table, else the object
/// (or list items) itself.
fn seen_in(v: Value, rt: &ResourceType) -> Vec<Seen> {
    if is_table(&v) {
        let rows = match v {
            Value::Object(mut m) => m.remove("rows"),
            _ => None,
        };
        let rows = match rows {
            Some(Value::Array(rows)) => rows,
            _ => vec![],
        };
        rows.into_iter()
            .map(|mut row| Seen {
                object: typed(row["object"].take(), rt),
                cells: match row["cells"].take() {
                    Value::Array(c) => Some(c),
                    _ => None,
                },
            })
            .collect()
    } else if let Some(items) = v.get("items").and_then(Value::as_array) {
        items
            .iter()
            .map(|o| Seen {
                object: typed(o.clone(), rt),
                cells: None,
            })
            .collect()
    } else {
        vec![Seen {
            object: typed(v, rt),
            cells: None,
        }]
    }
}

/// A spinner on stderr with the count of objects listed, shown only on a terminal and only
/// once listing takes longer than [`PROGRESS_DELAY`].
struct ListProgress {
    what: String,
    enabled: bool,
    started: Instant,
    count: usize,
    bar: Option<ProgressBar>,
}

impl ListProgress {
    fn new(what: String, enabled: bool) -> Self {
        ListProgress {
            what,
            enabled,
            started: Instant::now(),
            count: 0,
            bar: None,
        }
    }

    fn message(&self) -> String {
        format!("listing {}: {} so far", self.what, self.count)
    }

    fn show(&mut self) {
        if !self.enabled {
            return;
        }
        if self.bar.is_none() {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{spinner} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(Duration::from_millis(100));
            self.bar = Some(bar);
        }
        if let Some(bar) = &self.bar {
            bar.set_message(self.message());
        }
    }

    fn set(&mut self, count: usize) {
        self.count = count;
        if self.bar.is_some() || self.started.elapsed() >= PROGRESS_DELAY {
            self.show();
        }
    }

    /// Await `fut`, showing the spinner if it takes past the delay.
    async fn wait<F: Future>(&mut self, fut: F) -> F::Output {
        if !self.enabled || self.bar.is_some() {
            return fut.await;
        }
        let deadline = tokio::time::Instant::from_std(self.started + PROGRESS_DELAY);
        let mut fut = std::pin::pin!(fut);
        tokio::select! {
            out = &mut fut => out,
            _ = tokio::time::sleep_until(deadline) => {
                self.show();
                fut.await
            }
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

impl Drop for ListProgress {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Whether to colour stdout: a terminal, `NO_COLOR` unset (or empty), `TERM` not `dumb`.
pub fn colour_for(stream_is_terminal: bool) -> bool {
    stream_is_terminal
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        && std::env::var_os("TERM").is_none_or(|t| t != "dumb")
}

/// ANSI escapes used for colours.
pub mod ansi {
    /// Green (ADDED, new values).
    pub const GREEN: &str = "\x1b[32m";
    /// Yellow (MODIFIED).
    pub const YELLOW: &str = "\x1b[33m";
    /// Red (DELETED, old values).
    pub const RED: &str = "\x1b[31m";
    /// Dim (headers of diff groups, narration).
    pub const DIM: &str = "\x1b[2m";
    /// Back to normal.
    pub const RESET: &str = "\x1b[0m";
}

/// Print the current state once.
async fn list(client: &Client, target: &Target, args: &GetArgs) -> anyhow::Result<()> {
    let table = matches!(args.output, Output::Table | Output::Wide);
    let mut progress = ListProgress::new(target.describe(), std::io::stderr().is_terminal());
    let (columns, items) = match &args.name {
        Some(name) => {
            let req = kube::core::Request::new(target.api.resource_url())
                .get(name, &GetParams::default())
                .context("building the request")?;
            let req = if table { as_table(req, false) } else { req };
            let got: Value = match crwatch::source::kube::engine::request_json(client, req).await {
                Err(kube::Error::SerdeError(e)) => {
                    return Err(anyhow::Error::new(e).context("decoding the server's answer"));
                }
                other => other.map_err(|e| explain(e, "getting"))?,
            };
            let columns = if is_table(&got) {
                server_columns(&got)
            } else {
                None
            };
            (columns, seen_in(got, &target.rt))
        }
        None => {
            // Printing once needs each row's metadata only, not its object (kubectl asks the
            // same); a watch keeps whole objects for its diffs.
            let (informer, columns) = informer_for(client, target, &Selectors::of(args, false), table, false);
            let cancel = CancellationToken::new();
            let _stop = cancel.clone().drop_guard();
            let errors = Arc::new(FirstError::default());
            informer.add_async_handler(errors.clone());
            informer.start(cancel.clone());
            loop {
                if informer.has_synced() {
                    break;
                }
                if let Some(e) = errors.take_fatal() {
                    return Err(explain_source(e));
                }
                progress.set(informer.stats().listed.load(Ordering::Relaxed) as usize);
                let _ = progress
                    .wait(tokio::time::timeout(Duration::from_millis(50), errors.notified()))
                    .await;
            }
            let columns = if table {
                columns.lock().ok().and_then(|c| c.clone())
            } else {
                None
            };
            let columns =
                columns.map(|c| server_columns(&json!({"columnDefinitions": c})).unwrap_or_default());
            let items = informer.store().list().iter().map(|r| seen_of(r)).collect();
            (columns, items)
        }
    };
    progress.finish();
    let columns = match (table, columns) {
        (false, _) => None,
        (true, Some(c)) => Some(c),
        (true, None) => Some(watch_columns(client, target).await),
    };
    let single = args.name.is_some();
    let items = if single {
        SingleOrList::Single(items)
    } else {
        SingleOrList::List(items)
    };
    print_seen(
        items,
        columns,
        args,
        &target.rt,
        target.show_namespace(),
        &no_resources(target),
    )
}

/// Print listed objects once.
pub(crate) fn print_items(
    items: Vec<Seen>,
    columns: Option<Vec<Column>>,
    args: &GetArgs,
    rt: &ResourceType,
    show_ns: bool,
    empty: &str,
) -> anyhow::Result<()> {
    print_seen(SingleOrList::List(items), columns, args, rt, show_ns, empty)
}

enum SingleOrList {
    Single(Vec<Seen>),
    List(Vec<Seen>),
}

fn print_seen(
    items: SingleOrList,
    columns: Option<Vec<Column>>,
    args: &GetArgs,
    rt: &ResourceType,
    show_ns: bool,
    empty: &str,
) -> anyhow::Result<()> {
    let (single, items) = match items {
        SingleOrList::Single(i) => (true, i),
        SingleOrList::List(i) => (false, i),
    };
    let mut out = std::io::stdout().lock();
    if items.is_empty() && !single && !matches!(args.output, Output::Json | Output::Yaml) {
        eprintln!("{empty}");
        return Ok(());
    }
    let wide = args.output == Output::Wide;
    match args.output {
        Output::Table | Output::Wide => {
            let columns = columns.unwrap_or_default();
            let header = visible(&columns, wide)
                .map(|(_, c)| c.name.to_uppercase())
                .collect();
            let mut rows = vec![with_ns(show_ns, "NAMESPACE".into(), header)];
            for s in &items {
                let ns = s.object["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
                rows.push(with_ns(show_ns, ns, row_of(s, &columns, wide)));
            }
            for line in Grid::default().format(&rows) {
                writeln!(out, "{line}")?;
            }
        }
        Output::Json | Output::Yaml => {
            let objects: Vec<Value> = items.into_iter().map(|s| s.object).collect();
            let whole = match (single, objects.first()) {
                (true, Some(o)) => o.clone(),
                _ => {
                    json!({"apiVersion": "v1", "kind": "List", "items": objects, "metadata": {"resourceVersion": ""}})
                }
            };
            if args.output == Output::Json {
                writeln!(out, "{}", serde_json::to_string_pretty(&whole)?)?;
            } else {
                write!(out, "{}", to_yaml(&whole)?)?;
            }
        }
        Output::Jsonl => {
            for s in &items {
                writeln!(out, "{}", serde_json::to_string(&s.object)?)?;
            }
        }
        Output::Name => {
            for s in &items {
                writeln!(out, "{}", name_of(&s.object, rt))?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

/// The shown cells of an object: the server's when it sent them, else computed client-side.
fn row_of(s: &Seen, columns: &[Column], wide: bool) -> Vec<String> {
    match &s.cells {
        Some(c) => row_cells(c, columns, wide),
        None => {
            let shown: Vec<Column> = visible(columns, wide).map(|(_, c)| c.clone()).collect();
            cells(&s.object, &shown)
        }
    }
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

pub(crate) struct Change {
    kind: ChangeKind,
    seen: Seen,
    diff: Option<Diff>,
}

/// Prints watch changes in the chosen format.
pub(crate) struct Printer {
    output: Output,
    rt: ResourceType,
    /// Every column (the shown ones are picked by priority).
    columns: Vec<Column>,
    show_ns: bool,
    diff: bool,
    colour: bool,
    grid: Grid,
    header_done: bool,
}

impl Printer {
    /// A printer for `get`'s arguments (columns come with the first list).
    pub(crate) fn new(args: &GetArgs, rt: ResourceType, show_ns: bool) -> Self {
        Printer {
            output: args.output,
            rt,
            columns: vec![],
            show_ns,
            diff: args.diff,
            colour: colour_for(std::io::stdout().is_terminal()),
            grid: Grid::with_min_widths(vec![ChangeKind::Modified.as_str().len()]),
            header_done: false,
        }
    }

    /// The header cells of a table.
    fn header(&self) -> Vec<String> {
        let mut h = vec!["EVENT".to_string()];
        if self.show_ns {
            h.push("NAMESPACE".into());
        }
        let wide = self.output == Output::Wide;
        h.extend(visible(&self.columns, wide).map(|(_, c)| c.name.to_uppercase()));
        h
    }

    /// Least widths of the table's columns: room for `MODIFIED`, and the `hints` by header.
    fn min_widths(&self, hints: &[(String, usize)]) -> Vec<usize> {
        self.header()
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let hint = hints.iter().find(|(n, _)| n == h).map_or(0, |(_, w)| *w);
                let event = if i == 0 {
                    ChangeKind::Modified.as_str().len()
                } else {
                    0
                };
                hint.max(event)
            })
            .collect()
    }

    fn print(&mut self, changes: &[Change]) -> std::io::Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut out = std::io::stdout().lock();
        let wide = self.output == Output::Wide;
        match self.output {
            Output::Table | Output::Wide => {
                let mut rows = vec![];
                if !self.header_done {
                    rows.push(self.header());
                }
                for c in changes {
                    let mut r = vec![c.kind.as_str().to_string()];
                    if self.show_ns {
                        let ns = c.seen.object["metadata"]["namespace"].as_str().unwrap_or("");
                        r.push(ns.to_string());
                    }
                    r.extend(row_of(&c.seen, &self.columns, wide));
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
                    writeln!(out, "{}", self.event_line(c.kind, &line))?;
                    self.print_diff(&mut out, c)?;
                    out.flush()?;
                }
            }
            Output::Name => {
                for c in changes {
                    writeln!(out, "{}", name_of(&c.seen.object, &self.rt))?;
                    self.print_diff(&mut out, c)?;
                    out.flush()?;
                }
            }
            Output::Json => {
                for c in changes {
                    writeln!(out, "{}", serde_json::to_string_pretty(&c.seen.object)?)?;
                    out.flush()?;
                }
            }
            Output::Yaml => {
                for c in changes {
                    let y = to_yaml(&c.seen.object).map_err(std::io::Error::other)?;
                    write!(out, "---\n{y}")?;
                    out.flush()?;
                }
            }
            Output::Jsonl => {
                for c in changes {
                    let mut line = json!({"type": c.kind.as_str(), "object": c.seen.object});
                    if let (true, Some(d)) = (self.diff, &c.diff) {
                        line["diff"] = serde_json::to_value(d)?;
                    }
                    writeln!(out, "{}", serde_json::to_string(&line)?)?;
                    out.flush()?;
                }
            }
        }
        out.flush()
    }

    /// The row with its event word coloured (the line starts with it).
    fn event_line(&self, kind: ChangeKind, line: &str) -> String {
        if !self.colour {
            return line.to_string();
        }
        let colour = match kind {
            ChangeKind::Added => ansi::GREEN,
            ChangeKind::Modified => ansi::YELLOW,
            ChangeKind::Deleted => ansi::RED,
        };
        let word = kind.as_str();
        let rest = line.strip_prefix(word).unwrap_or(line);
        format!("{colour}{word}{}{rest}", ansi::RESET)
    }

    fn print_diff(&self, out: &mut impl Write, c: &Change) -> std::io::Result<()> {
        let (true, Some(diff)) = (self.diff, &c.diff) else {
            return Ok(());
        };
        for (group, changes) in grouped(diff) {
            if self.colour {
                writeln!(out, "    {}{group}:{}", ansi::DIM, ansi::RESET)?;
            } else {
                writeln!(out, "    {group}:")?;
            }
            for ch in changes {
                writeln!(out, "      {}", diff_line(ch, self.colour))?;
            }
        }
        Ok(())
    }
}

/// One diff line: `path: old → new`, `+ path: new`, `- path: old`; with colour, old values
/// red and new ones green (the text without the escapes is the same).
pub fn diff_line(c: &FieldChange, colour: bool) -> String {
    if !colour {
        return c.to_string();
    }
    // Long values shortened around the difference, as the plain rendering does.
    let (old, new) = c.short_values();
    let show = |v: Option<String>| v.unwrap_or_else(|| "null".to_owned());
    let (g, r, d, x) = (ansi::GREEN, ansi::RED, ansi::DIM, ansi::RESET);
    match c.op {
        Op::Changed => format!("{}: {r}{}{x} {d}→{x} {g}{}{x}", c.path, show(old), show(new)),
        Op::Added => format!("{g}+ {}: {}{x}", c.path, show(new)),
        Op::Removed => format!("{r}- {}: {}{x}", c.path, show(old)),
    }
}

/// The changes of `diff` grouped by top-level field: `spec` first, then `status`, then the
/// others in order of appearance.
fn grouped(diff: &Diff) -> Vec<(String, Vec<&FieldChange>)> {
    let mut groups: Vec<(String, Vec<&FieldChange>)> =
        vec![("spec".into(), vec![]), ("status".into(), vec![])];
    for c in diff {
        let top = c.path.split(['.', '[']).next().unwrap_or("").to_string();
        match groups.iter_mut().find(|(g, _)| *g == top) {
            Some((_, lines)) => lines.push(c),
            None => groups.push((top, vec![c])),
        }
    }
    groups.retain(|(_, l)| !l.is_empty());
    groups
}

/// The changes of `diff` grouped by top-level field: `spec` first, then `status`, then the
/// others in order of appearance; each change as its `Display` line.
pub fn diff_groups(diff: &Diff) -> Vec<(String, Vec<String>)> {
    grouped(diff)
        .into_iter()
        .map(|(g, cs)| (g, cs.iter().map(|c| c.to_string()).collect()))
        .collect()
}

/// Client-side printer columns, for servers that send plain objects instead of Tables: the
/// CRD's (NAME and AGE for other kinds).
async fn watch_columns(client: &Client, target: &Target) -> Vec<Column> {
    let crd = crd_of(client, target).await;
    crd_columns(crd.as_ref(), &target.rt.version)
}

/// The CustomResourceDefinition behind `target` (`None` for built-in kinds, or when it cannot
/// be read).
async fn crd_of(client: &Client, target: &Target) -> Option<Value> {
    if target.rt.group.is_empty() {
        return None;
    }
    let path = format!(
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{}",
        target.rt.full_name()
    );
    let req = http::Request::get(path).body(vec![]).ok()?;
    crwatch::source::kube::engine::request_json(client, req)
        .await
        .ok()
}

/// The informer `get` reads from: Table rows with their objects for table output (as
/// `kubectl get -w` asks), whole objects otherwise; and the Table's column definitions.
fn informer_for(
    client: &Client,
    target: &Target,
    sel: &Selectors,
    table: bool,
    objects: bool,
) -> (Informer<TableRow>, Columns) {
    let ar = target.rt.api_resource();
    let mut source = KubeSource::<DynamicObject>::dynamic(client.clone(), &ar, target.namespace.as_deref());
    if let Some(l) = &sel.labels {
        source = source.labels(l);
    }
    if let Some(f) = &sel.fields {
        source = source.fields(f);
    }
    let source = match (table, objects) {
        (true, true) => source.tables(),
        (true, false) => source.tables_metadata(),
        (false, _) => source.rows(),
    };
    let columns = source.columns();
    (Informer::new(source), columns)
}

/// A row as `get` prints it.
fn seen_of(row: &TableRow) -> Seen {
    Seen {
        object: serde_json::to_value(&row.object).unwrap_or(Value::Null),
        cells: row.cells.clone(),
    }
}

/// Remembers the first error that should end a command still waiting for its first list
/// (anything but a busy or failing server, which may recover).
#[derive(Default)]
struct FirstError {
    fatal: std::sync::Mutex<Option<SourceError>>,
    notify: tokio::sync::Notify,
}

impl FirstError {
    fn take_fatal(&self) -> Option<SourceError> {
        self.fatal.lock().ok()?.take()
    }

    async fn notified(&self) {
        self.notify.notified().await
    }
}

impl AsyncHandler<TableRow> for FirstError {
    fn handle(&self, _change: InformerChange<TableRow>) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    fn on_error(&self, error: &SourceError) {
        if !error.kind.is_transient()
            && !matches!(error.kind, ErrorKind::Other)
            && let Ok(mut f) = self.fatal.lock()
        {
            f.get_or_insert_with(|| error.clone());
            self.notify.notify_one();
        }
    }
}

/// What the informer tells the printing loop.
pub(crate) enum Msg {
    /// A relist starts: its changes are printed together when it is done.
    Relist,
    RelistDone,
    Change(Change),
    /// The source is up to date.
    Progress,
    Error(SourceError),
}

/// Turns the informer's changes into printable ones, in order, with backpressure.
pub(crate) struct ToPrinter<K> {
    tx: tokio::sync::mpsc::Sender<Msg>,
    seen: fn(&K) -> Seen,
}

impl<K: Send + Sync + 'static> AsyncHandler<K> for ToPrinter<K> {
    fn handle(&self, change: InformerChange<K>) -> BoxFuture<'_, ()> {
        let seen = self.seen;
        let msg = match change {
            InformerChange::Added(r) => Msg::Change(Change {
                kind: ChangeKind::Added,
                seen: seen(&r),
                diff: None,
            }),
            InformerChange::Updated { new, diff, .. } => Msg::Change(Change {
                kind: ChangeKind::Modified,
                seen: seen(&new),
                diff: Some(diff),
            }),
            InformerChange::Deleted(r) => Msg::Change(Change {
                kind: ChangeKind::Deleted,
                seen: seen(&r),
                diff: None,
            }),
            InformerChange::Relist => Msg::Relist,
            InformerChange::RelistDone => Msg::RelistDone,
            _ => Msg::Progress,
        };
        Box::pin(async move {
            // The printing loop is gone only when the command ends.
            let _ = self.tx.send(msg).await;
        })
    }

    fn on_error(&self, error: &SourceError) {
        // A note; dropped when the printer is far behind (the next one says the same).
        let _ = self.tx.try_send(Msg::Error(error.clone()));
    }
}

/// Stderr notes about the connection: the outage once, then its cause again each time the
/// cause changes (refused, then a certificate the client does not trust, then 401...), never
/// once per retry.
#[derive(Default)]
struct Notes {
    interrupted: bool,
    /// What the last printed note blamed, during this outage.
    cause: Option<String>,
}

impl Notes {
    fn error(&mut self, e: &SourceError) {
        if let Some(line) = self.note(e) {
            eprintln!("{line}");
        }
    }

    /// The line to print for `e`, if any.
    fn note(&mut self, e: &SourceError) -> Option<String> {
        let cause = cause_key(e);
        let line = if e.relist {
            Some(format!("crwatch: {}", e.message))
        } else if !self.interrupted {
            Some(format!(
                "crwatch: watch interrupted ({}); reconnecting",
                e.message
            ))
        } else if self.cause.as_deref() != Some(cause.as_str()) {
            Some(format!("crwatch: still reconnecting: {}", e.message))
        } else {
            None
        };
        self.cause = Some(cause);
        self.interrupted = true;
        line
    }

    fn reconnected(&mut self, changes: Option<usize>) {
        self.cause = None;
        if std::mem::take(&mut self.interrupted) {
            match changes {
                Some(n) => eprintln!("crwatch: reconnected; {n} change(s) since"),
                None => eprintln!("crwatch: reconnected"),
            }
        }
    }
}

/// What an error blames, to tell a new cause from the same one again: the server's code and
/// reason, the transport's innermost cause, or the message.
fn cause_key(e: &SourceError) -> String {
    match &e.kind {
        ErrorKind::Server { code, reason, .. } => format!("{code} {reason}"),
        ErrorKind::Transport { cause, .. } => cause.clone(),
        _ => e.message.clone(),
    }
}

/// List, then watch, printing changes until interrupted (Ctrl-C or `embed.stop`).
async fn watch(client: &Client, target: &Target, args: &GetArgs, embed: &Embed) -> anyhow::Result<()> {
    let stop = embed.stop.clone();
    let ctrl_c = async {
        if embed.external_ctrl_c {
            std::future::pending::<()>().await;
        }
        // An error means no signal handling: then only `stop` ends the watch.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        _ = ctrl_c => Ok(()),
        _ = stop.cancelled() => Ok(()),
        r = follow(client, target, args, embed) => match r {
            Err(e) if is_broken_pipe(&e) => Ok(()),
            other => other,
        },
    }
}

/// Changes buffered by the printing loop before it waits for the informer (bounded: the
/// informer then waits, and the watch with it).
const PRINT_QUEUE: usize = 1024;

async fn follow(client: &Client, target: &Target, args: &GetArgs, embed: &Embed) -> anyhow::Result<()> {
    let table = matches!(args.output, Output::Table | Output::Wide);
    let (informer, columns) = informer_for(client, target, &Selectors::of(args, true), table, true);
    if args.diff
        && let Some(crd) = crd_of(client, target).await
    {
        // List items named by the CRD's list-map keys: `spec.ports[name=http].port`.
        informer.set_list_keys(crwatch::diff::ListKeys::from_crd(&crd, &target.rt.version));
    }
    let printer = Printer::new(args, target.rt.clone(), target.show_namespace());
    let server_columns_of = move || {
        columns
            .lock()
            .ok()
            .and_then(|c| c.clone())
            .and_then(|c| server_columns(&json!({ "columnDefinitions": c })))
    };
    let columns = async {
        match server_columns_of() {
            Some(c) => c,
            None => watch_columns(client, target).await,
        }
    };
    follow_informer(
        informer,
        seen_of,
        &target.describe(),
        table.then_some(columns),
        printer,
        args,
        embed,
    )
    .await
}

/// Print an informer's changes until it ends: the first (re)list as one batch, then each
/// change as it comes; relists after a reconnect print only what differs. `columns` gives
/// the table's columns once the first list is in (`None`: not a table).
pub(crate) async fn follow_informer<K, F>(
    informer: Informer<K>,
    seen: fn(&K) -> Seen,
    describe: &str,
    columns: Option<F>,
    mut printer: Printer,
    args: &GetArgs,
    embed: &Embed,
) -> anyhow::Result<()>
where
    K: kube::Resource + Clone + serde::Serialize + Send + Sync + 'static,
    F: Future<Output = Vec<Column>>,
{
    let (tx, mut rx) = tokio::sync::mpsc::channel(PRINT_QUEUE);
    informer.add_async_handler(ToPrinter { tx, seen });
    let cancel = CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    informer.start(cancel.clone());
    let mut columns = columns.map(Box::pin);
    let mut notes = Notes::default();
    let mut synced = false;
    let mut relist: Option<Vec<Change>> = None;
    let mut progress = ListProgress::new(describe.to_string(), std::io::stderr().is_terminal());
    loop {
        let msg = if synced {
            rx.recv().await
        } else {
            progress.set(informer.stats().listed.load(Ordering::Relaxed) as usize);
            match progress
                .wait(tokio::time::timeout(Duration::from_millis(100), rx.recv()))
                .await
            {
                Ok(m) => m,
                Err(_) => continue,
            }
        };
        let Some(msg) = msg else {
            anyhow::bail!("the watch of {describe} ended");
        };
        match msg {
            Msg::Error(e) if !synced && !e.kind.is_transient() && !matches!(e.kind, ErrorKind::Other) => {
                progress.finish();
                return Err(explain_source(e));
            }
            Msg::Error(e) => notes.error(&e),
            Msg::Relist => relist = Some(vec![]),
            Msg::Change(c) => match relist.as_mut() {
                Some(batch) => batch.push(c),
                None => {
                    notes.reconnected(None);
                    print(&mut printer, vec![c], embed)?;
                }
            },
            Msg::Progress => notes.reconnected(None),
            Msg::RelistDone => {
                let changes = relist.take().unwrap_or_default();
                progress.finish();
                if let Some(cols) = columns.take() {
                    printer.columns = cols.await;
                    printer.grid = Grid::with_min_widths(printer.min_widths(&embed.min_widths));
                }
                let first = !synced;
                synced = true;
                notes.reconnected(Some(changes.len()));
                if !(first && args.watch_only) {
                    print(&mut printer, changes, embed)?;
                }
                if first {
                    embed.report(WatchReport::Synced);
                }
            }
        }
    }
}

fn print(printer: &mut Printer, changes: Vec<Change>, embed: &Embed) -> anyhow::Result<()> {
    printer.print(&changes).context("writing to stdout")?;
    for c in changes {
        embed.report(WatchReport::Printed {
            kind: c.kind,
            object: c.seen.object,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn strip_ansi(s: &str) -> String {
        let mut out = String::new();
        let mut chars = s.chars();
        while let Some(c) = chars.next() {
            if c == '\x1b' {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    }

    #[test]
    fn coloured_diff_lines_read_the_same_without_escapes() {
        let d = Diff::between(
            &json!({"spec": {"size": "1Gi", "users": [{"username": "a"}], "gone": 1}}),
            &json!({"spec": {"size": "2Gi", "users": [{"username": "a"}, {"username": "b"}]}}),
        );
        assert_eq!(d.len(), 3);
        for c in &d {
            let coloured = diff_line(c, true);
            assert!(coloured.contains('\x1b'), "{coloured:?}");
            assert_eq!(strip_ansi(&coloured), c.to_string());
            assert_eq!(diff_line(c, false), c.to_string());
        }
    }

    #[test]
    fn table_rows_carry_their_object_and_cells() {
        let rt = ResourceType {
            group: String::new(),
            version: "v1".into(),
            kind: "ConfigMap".into(),
            plural: "configmaps".into(),
            singular: "configmap".into(),
            short_names: vec![],
            namespaced: true,
            preferred: true,
        };
        let t = json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "rows": [
            {"cells": ["a", 2, "5s"], "object": {"metadata": {"name": "a", "managedFields": []}, "data": {"k": "v"}}}]});
        let seen = seen_in(t, &rt);
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].cells, Some(vec![json!("a"), json!(2), json!("5s")]));
        assert_eq!(
            seen[0].object,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}, "data": {"k": "v"}})
        );
        let plain = seen_in(json!({"items": [{"metadata": {"name": "b"}}]}), &rt);
        assert_eq!(plain[0].cells, None);
        assert_eq!(plain[0].object["kind"], "ConfigMap");
    }

    #[test]
    fn connection_errors_name_the_server() {
        let refused = ConnectError {
            url: Some("https://127.0.0.1:1/".into()),
            refused: true,
            cause: "Connection refused (os error 111)".into(),
        };
        assert_eq!(
            refused.to_string(),
            "The connection to the server 127.0.0.1:1 was refused - did you specify the right host or port?"
        );
        let other = ConnectError {
            url: Some("https://nowhere.invalid:6443/".into()),
            refused: false,
            cause: "dns error".into(),
        };
        assert_eq!(
            other.to_string(),
            "Unable to connect to the server https://nowhere.invalid:6443: dns error"
        );
    }

    #[test]
    fn a_failing_watch_says_each_new_cause_once() {
        let err = |kind: ErrorKind, message: &str| SourceError {
            source_name: "s".into(),
            message: message.into(),
            relist: false,
            kind,
        };
        let refused = err(
            ErrorKind::Transport {
                refused: true,
                cause: "Connection refused (os error 111)".into(),
            },
            "watch failed: Connection refused (os error 111)",
        );
        let ca = err(
            ErrorKind::Transport {
                refused: false,
                cause: "tls: failed to verify certificate: x509: certificate signed by unknown authority"
                    .into(),
            },
            "watch failed: tls: failed to verify certificate: x509: certificate signed by unknown authority",
        );
        let unauthorized = err(
            ErrorKind::Server {
                code: 401,
                reason: "Unauthorized".into(),
                message: "Unauthorized".into(),
            },
            "watch failed: Unauthorized (401)",
        );
        let mut notes = Notes::default();
        assert_eq!(
            notes.note(&refused).unwrap(),
            "crwatch: watch interrupted (watch failed: Connection refused (os error 111)); reconnecting"
        );
        assert_eq!(notes.note(&refused), None);
        assert!(
            notes
                .note(&ca)
                .unwrap()
                .contains("still reconnecting: watch failed: tls: failed to verify")
        );
        assert_eq!(notes.note(&ca), None);
        assert!(notes.note(&unauthorized).unwrap().ends_with("Unauthorized (401)"));
        notes.reconnected(None);
        assert!(notes.note(&unauthorized).unwrap().contains("watch interrupted"));
    }
}
