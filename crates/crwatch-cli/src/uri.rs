//! `crwatch get URI`: sources outside Kubernetes (a directory of files, a PostgreSQL or MySQL
//! table, an HTTP endpoint) with the same table, `-o`, `-w` and `--diff` output as Kubernetes
//! resources, through the same informer and printer.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use crwatch::informer::Informer;
use crwatch::source::Source;
use kube::api::DynamicObject;
use serde_json::Value;

use crate::args::{GetArgs, Output};
use crate::get::{Embed, Printer, Seen, follow_informer, print_items};
use crate::resolve::ResourceType;
use crate::table::Column;

/// Whether `crwatch get` was given a source URI rather than a Kubernetes resource name.
///
/// ```
/// assert!(crwatch_cli::uri::is_uri("file://./conf"));
/// assert!(crwatch_cli::uri::is_uri("postgres://app@db/shop?table=orders"));
/// assert!(!crwatch_cli::uri::is_uri("databases.stable.example.com"));
/// ```
pub fn is_uri(resource: &str) -> bool {
    resource.contains("://")
}

/// Poll interval of database sources in the CLI when the URL and `--interval` say nothing.
const CLI_DB_INTERVAL: Duration = Duration::from_secs(2);

/// The source a URI names, and what its objects are called (for `-o name` and messages).
async fn source_of(args: &GetArgs) -> anyhow::Result<(Box<dyn Source<DynamicObject>>, ResourceType)> {
    let uri = args.resource.as_str();
    let scheme = uri.split("://").next().unwrap_or_default().to_ascii_lowercase();
    let interval = args.interval.map(Duration::from);
    #[cfg(feature = "xds")]
    if scheme == "xds" {
        return xds(uri);
    }
    let (source, api_version, kind): (Box<dyn Source<DynamicObject>>, &str, &str) = match scheme.as_str() {
        #[cfg(feature = "file")]
        "file" => {
            let s = crwatch::source::file::FileSource::from_url(uri)?;
            (
                Box::new(s),
                crwatch::source::file::RAW_API_VERSION,
                crwatch::source::file::RAW_KIND,
            )
        }
        #[cfg(feature = "postgres")]
        "postgres" | "postgresql" => (
            Box::new(postgres(args, interval).await?),
            "postgres.crwatch.io/v1",
            "Row",
        ),
        #[cfg(feature = "mysql")]
        "mysql" | "mariadb" => {
            let mut s = crwatch::source::mysql::MysqlSource::from_url(uri)?;
            if let Some(i) = interval.or_else(|| (!uri.contains("interval=")).then_some(CLI_DB_INTERVAL)) {
                s = s.interval(i)?;
            }
            (Box::new(s), "mysql.crwatch.io/v1", "Row")
        }
        #[cfg(feature = "http")]
        "http" | "https" => {
            let mut s = crwatch::source::http::HttpSource::new(uri);
            if let Some(p) = &args.items {
                s = s.items(p);
            }
            if let Some(k) = &args.key {
                s = s.key(k);
            }
            if let Some(i) = interval {
                s = s.interval(i);
            }
            s.validate()?;
            (Box::new(s), "http.crwatch.io/v1", "Item")
        }
        other => anyhow::bail!(
            "unknown source scheme {other:?}: use file://, postgres://, mysql://, https:// or xds:// (each needs its cargo feature)"
        ),
    };
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let rt = ResourceType {
        group: group.to_string(),
        version: version.to_string(),
        kind: kind.to_string(),
        plural: format!("{}s", kind.to_lowercase()),
        singular: kind.to_lowercase(),
        short_names: vec![],
        namespaced: true,
        preferred: true,
    };
    Ok((source, rt))
}

/// How long `crwatch get xds://…` waits for the server's first response before it takes the
/// type as empty (a server with no object of the type sends nothing).
#[cfg(feature = "xds")]
const CLI_XDS_INITIAL_FETCH: Duration = Duration::from_secs(3);

/// `xds://HOST:PORT/<group>/<version>/<Kind>[?names=…&tls=…&ca_file=…&token_file=…]`: a
/// remote `crwatch serve` through the delta-xDS client source; its objects are the served
/// objects themselves, so they print with their own kind.
#[cfg(feature = "xds")]
fn xds(uri: &str) -> anyhow::Result<(Box<dyn Source<DynamicObject>>, ResourceType)> {
    let source = crwatch::source::xds::XdsSource::from_url(uri)?.initial_fetch_timeout(CLI_XDS_INITIAL_FETCH);
    let t = crwatch::xds::TypeUrl::parse(source.type_url())?;
    let rt = ResourceType {
        group: t.group.clone(),
        version: t.version.clone(),
        kind: t.kind.clone(),
        plural: format!("{}s", t.kind.to_lowercase()),
        singular: t.kind.to_lowercase(),
        short_names: vec![],
        namespaced: true,
        preferred: true,
    };
    Ok((Box::new(source), rt))
}

/// A PostgreSQL source as the CLI wants it: without `mode=` and `--install-trigger`, changes
/// arrive by LISTEN/NOTIFY when the trigger is installed, and by polling (said on stderr)
/// when it is not.
#[cfg(feature = "postgres")]
async fn postgres(
    args: &GetArgs,
    interval: Option<Duration>,
) -> anyhow::Result<crwatch::source::postgres::PostgresSource> {
    use crwatch::source::postgres::{Mode, PostgresSource};
    let uri = args.resource.as_str();
    let mut s = PostgresSource::from_url(uri)?;
    let mode_given = uri.contains("mode=") || uri.contains("updated_at=");
    if args.install_trigger {
        anyhow::ensure!(
            matches!(s.get_mode(), Mode::Notify),
            "--install-trigger works with mode=notify, not with polling"
        );
        s = s.install_trigger(true);
    } else if !mode_given && matches!(s.get_mode(), Mode::Notify) {
        let installed = s
            .is_installed()
            .await
            .with_context(|| format!("checking for the change-log trigger on {}", s.describe_target()))?;
        if !installed {
            let every = interval.unwrap_or(CLI_DB_INTERVAL);
            eprintln!(
                "crwatch: no change-log trigger on {}: polling every {} (install it with --install-trigger, or use mode=poll)",
                s.describe_target(),
                humantime::format_duration(every)
            );
            s = s.mode(Mode::PollHash);
        }
    }
    if let Some(i) = interval.or_else(|| (!uri.contains("interval=")).then_some(CLI_DB_INTERVAL)) {
        s = s.interval(i)?;
    }
    Ok(s)
}

/// The URI without a password (`postgres://app:secret@db/x` → `postgres://app@db/x`).
///
/// ```
/// assert_eq!(crwatch_cli::uri::redact("postgres://app:secret@db/x?table=t"), "postgres://app@db/x?table=t");
/// assert_eq!(crwatch_cli::uri::redact("file://./conf"), "file://./conf");
/// ```
pub fn redact(uri: &str) -> String {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return uri.to_string();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    match authority.rsplit_once('@') {
        Some((user, host)) => {
            let user = user.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}@{host}{tail}")
        }
        None => uri.to_string(),
    }
}

/// A source's object as `get` prints it.
fn seen_of(o: &DynamicObject) -> Seen {
    Seen::object(serde_json::to_value(o).unwrap_or(Value::Null))
}

/// Columns for objects of sources outside Kubernetes: NAME, then KIND when the source mixes
/// kinds (YAML documents), then up to six scalar fields of `data` (a row's columns, an
/// item's fields), as the first object has them.
fn columns_for(objects: &[Arc<DynamicObject>]) -> Vec<Column> {
    let col = |name: &str, path: String| Column {
        name: name.to_string(),
        type_: "string".into(),
        priority: 0,
        json_path: Some(path),
    };
    let mut cols = vec![col("Name", ".metadata.name".into())];
    let kinds: std::collections::BTreeSet<_> = objects
        .iter()
        .filter_map(|o| o.types.as_ref().map(|t| t.kind.as_str()))
        .collect();
    if kinds.len() > 1 || kinds.iter().any(|k| !matches!(*k, "Row" | "Item" | "File")) {
        cols.push(col("Kind", ".kind".into()));
    }
    if let Some(first) = objects.first()
        && let Some(Value::Object(data)) = first.data.get("data")
    {
        let simple = |k: &str| {
            !k.is_empty()
                && k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        };
        let name = first.metadata.name.as_deref().unwrap_or_default();
        // The key column already is NAME; binary or nested values do not fit a cell.
        let shown = data.iter().filter(|(k, v)| {
            simple(k)
                && !v.is_object()
                && !v.is_array()
                && !matches!(k.as_str(), "content" | "contentBase64")
                && v.as_str().map_or_else(|| v.to_string(), str::to_string) != name
        });
        for (k, _) in shown.take(6) {
            let header = match k.to_uppercase() {
                h if h == "NAME" || h == "KIND" => format!("DATA.{h}"),
                h => h,
            };
            cols.push(col(&header, format!(".data.{k}")));
        }
    }
    cols
}

/// Run `crwatch get URI`.
pub async fn run(args: &GetArgs, embed: Embed) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.name.is_none() && args.selector.is_none() && args.field_selector.is_none(),
        "a source URI takes no NAME, -l or --field-selector: the URI itself says what to watch"
    );
    let (source, rt) = source_of(args).await?;
    let informer: Informer<DynamicObject> = Informer::new(source);
    let table = matches!(args.output, Output::Table | Output::Wide);
    let store = informer.store();
    let columns = async move { columns_for(&store.list()) };
    let describe = redact(&args.resource);
    if args.watch || args.watch_only {
        let printer = Printer::new(args, rt, true);
        let stop = embed.stop.clone();
        return tokio::select! {
            r = follow_informer(informer, seen_of, &describe, table.then_some(columns), printer, args, &embed) => r,
            _ = stop.cancelled() => Ok(()),
            _ = ctrl_c() => Ok(()),
        };
    }
    let cancel = tokio_util::sync::CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    informer.start(cancel.clone());
    wait_synced(&informer, &describe).await?;
    let cols = if table { Some(columns.await) } else { None };
    let items: Vec<Seen> = informer.store().list().iter().map(|o| seen_of(o)).collect();
    print_items(
        items,
        cols,
        args,
        &rt,
        true,
        &format!("No objects found in {describe}"),
    )
}

async fn ctrl_c() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Wait for the first complete list, or fail with the source's first error after a while.
async fn wait_synced(informer: &Informer<DynamicObject>, describe: &str) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if informer.has_synced() {
            return Ok(());
        }
        let health = informer.health();
        if let (Some(e), Some(for_)) = (health.last_error, health.unhealthy_for)
            && (for_ >= Duration::from_secs(5) || tokio::time::Instant::now() >= deadline)
        {
            anyhow::bail!("{describe}: {e}");
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{describe}: no complete list within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
