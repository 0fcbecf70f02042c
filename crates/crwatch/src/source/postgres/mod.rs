//! PostgreSQL tables, views and queries as a source (feature `postgres`): each row becomes a
//! `postgres.crwatch.io/v1` `Row` named by its key, kept current through LISTEN/NOTIFY on a
//! change log (nothing lost across reconnects, resumable from a checkpoint) or by polling
//! (an updated-at column or row hashes) where triggers are not allowed.
//!
//! # Objects
//!
//! ```yaml
//! apiVersion: postgres.crwatch.io/v1
//! kind: Row
//! metadata:
//!   namespace: public.orders      # schema.table, or .namespace(...)
//!   name: "42"                    # the key; composite keys joined with "," (see sql::key_name)
//!   uid: 0b5e...                  # stable_uid(source, key): the same across restarts
//!   resourceVersion: 9f2c61d0a1b2c3d4   # a hash of the row: unchanged rows keep it
//! data: {id: 42, total: "12.50", paid_at: "2024-05-01T10:00:00Z", doc: {...}, tags: [...], note: null}
//! ```
//!
//! Column values: integers, floats and booleans as JSON numbers and booleans; `numeric` and
//! `money` as strings (exact); `timestamptz` as RFC 3339 in UTC; `timestamp` (no time zone) as
//! ISO 8601 without an offset; `bytea` as base64; `json`/`jsonb` as JSON; arrays as JSON arrays
//! (numeric elements as strings); NULL as null; anything else (text, uuid, date, interval in
//! ISO 8601, enums, ...) as its text. Deletes carry the row's identity, not its data (the row
//! is gone when the source learns of it).
//!
//! # Modes
//!
//! * **notify** (the default for tables): a trigger writes every changed key to a change log
//!   and notifies; the source reads the log and fetches changed rows by key (see
//!   [`ChangeLog`]). The trigger is installed only when asked ([`PostgresSource::install_trigger`]);
//!   otherwise [`PostgresSource::install_sql`] gives a DBA the exact SQL, and
//!   [`PostgresSource::uninstall`] removes it all. After a reconnect the source listens first,
//!   then reads the log from where it was, so nothing slips between; when its position was
//!   pruned from the log (bounded retention), or the table was truncated, it lists again.
//!   It sends `Progress(Some(checkpoint))` after each batch and supports [`Source::resume`].
//! * **poll**: every interval (default 2 s), either the rows whose updated-at column is at or
//!   after the last seen value minus an overlap (deletes found by comparing the key set every
//!   Nth poll), or every row compared by hash (deletes found on each scan).
//!
//! # SQL
//!
//! Identifiers only ever enter SQL through [`quote_ident`]; values only as bind parameters. A
//! query (`PostgresSource::query`) is taken as given and wrapped as a subquery
//! (`SELECT ... FROM (<query>) AS q`): pass only trusted text.
//!
//! ```no_run
//! use crwatch::informer::Informer;
//! use crwatch::source::postgres::PostgresSource;
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let source = PostgresSource::from_url("postgres://app@db.internal/shop?table=orders&mode=notify")?
//!     .install_trigger(true);
//! let informer = Informer::new(source);
//! informer.start(tokio_util::sync::CancellationToken::new());
//! informer.wait_synced(std::time::Duration::from_secs(120)).await?;
//! println!("{} orders", informer.store().len());
//! # Ok(()) }
//! ```

mod changelog;
mod notify;
mod poll;
mod schema;

use std::str::FromStr;
use std::time::Duration;

use kube::api::DynamicObject;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

pub use changelog::ChangeLog;
pub use schema::{Relation, quote_ident};

use super::sql::{
    SplitUrl, SqlSourceError, check_buffer, check_count, check_duration, parse_bool, parse_duration,
    redact_url, split_columns,
};
use super::{Checkpoint, EventStream, Source};

/// The `apiVersion` of rows from PostgreSQL.
pub const API_VERSION: &str = "postgres.crwatch.io/v1";

/// How the source learns of changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// LISTEN/NOTIFY on a trigger-fed change log (tables only).
    Notify,
    /// Poll the rows whose `column` (timestamp, timestamptz or date) changed since the last
    /// poll, minus an overlap; compare the key set every Nth poll for deletes.
    PollUpdatedAt {
        /// The updated-at column.
        column: String,
    },
    /// Poll every row and compare hashes (finds every change and delete on each scan).
    PollHash,
}

/// Polling interval bounds and default (`interval=`).
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// The longest polling interval.
pub const MAX_INTERVAL: Duration = Duration::from_secs(24 * 3600);
/// The default polling interval (as the CLI's).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);

/// A PostgreSQL table, view or query as a source of `Row` objects. See the [module
/// docs](self).
#[derive(Debug, Clone)]
pub struct PostgresSource {
    pub(crate) options: PgConnectOptions,
    pub(crate) target: String,
    pub(crate) relation: Relation,
    pub(crate) key: Option<Vec<String>>,
    pub(crate) namespace: Option<String>,
    pub(crate) mode: Mode,
    pub(crate) install: bool,
    pub(crate) interval: Duration,
    pub(crate) overlap: Duration,
    pub(crate) delete_scan_every: u64,
    pub(crate) keepalive: Duration,
    pub(crate) retention_age: Duration,
    pub(crate) retention_rows: u64,
    pub(crate) buffer: usize,
    pub(crate) resume: Option<Checkpoint>,
}

/// The parameters `from_url` takes for itself (the rest go to the driver, e.g. `sslmode`).
const URL_PARAMS: &[&str] = &[
    "table",
    "schema",
    "query",
    "key",
    "namespace",
    "mode",
    "interval",
    "updated_at",
    "overlap",
    "delete_scan_every",
    "install_trigger",
    "keepalive",
    "retention",
    "retention_rows",
    "password_file",
    "buffer",
];

impl PostgresSource {
    /// The table or view `schema.table` on the server `options` points at (notify mode, key
    /// from the primary key).
    ///
    /// ```
    /// use crwatch::source::postgres::PostgresSource;
    /// use sqlx::postgres::PgConnectOptions;
    /// let opts = PgConnectOptions::new().host("db").username("app").database("shop");
    /// let s = PostgresSource::table(opts, "public", "orders");
    /// assert!(s.describe_target().contains("public.orders"));
    /// ```
    pub fn table(options: PgConnectOptions, schema: &str, table: &str) -> Self {
        Self::new(
            options,
            Relation::Table {
                schema: schema.to_string(),
                table: table.to_string(),
            },
            Mode::Notify,
        )
    }

    /// The rows of `query` (trusted text, wrapped as a subquery), keyed by `key` columns,
    /// polled by hash (change the mode with [`Self::mode`]; notify needs a table).
    pub fn query(options: PgConnectOptions, query: &str, key: &[&str]) -> Self {
        let mut s = Self::new(options, Relation::Query(query.to_string()), Mode::PollHash);
        s.key = Some(key.iter().map(|k| k.to_string()).collect());
        s
    }

    fn new(options: PgConnectOptions, relation: Relation, mode: Mode) -> Self {
        let options = options.application_name("crwatch").options([
            ("TimeZone", "UTC"),
            ("DateStyle", "ISO"),
            ("IntervalStyle", "iso_8601"),
            ("bytea_output", "hex"),
            ("extra_float_digits", "1"),
        ]);
        let target = format!(
            "postgres://{}@{}:{}/{}",
            options.get_username(),
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or("")
        );
        PostgresSource {
            options,
            target,
            relation,
            key: None,
            namespace: None,
            mode,
            install: false,
            interval: DEFAULT_INTERVAL,
            overlap: Duration::from_secs(5),
            delete_scan_every: 5,
            keepalive: Duration::from_secs(15),
            retention_age: Duration::from_secs(24 * 3600),
            retention_rows: 1_000_000,
            buffer: 1024,
            resume: None,
        }
    }

    /// A source from a URL, as the CLI takes it:
    /// `postgres://user[:password]@host[:port]/db?table=orders` (or `postgresql://`) with
    ///
    /// | parameter | meaning |
    /// | --- | --- |
    /// | `table`, `schema` | the table or view (`schema` defaults to `public`) |
    /// | `query` | a query instead (trusted text, wrapped as a subquery; needs `key`) |
    /// | `key` | key column(s), comma-separated (default: the primary key) |
    /// | `namespace` | the objects' namespace (default `schema.table`, or `query`) |
    /// | `mode` | `notify` (tables' default) or `poll` (queries' default) |
    /// | `updated_at` | poll by this column instead of by row hash |
    /// | `interval`, `overlap` | polling interval (default 2s) and updated-at overlap (5s) |
    /// | `delete_scan_every` | compare key sets every Nth updated-at poll (default 5) |
    /// | `install_trigger` | `true`: install the change log and trigger |
    /// | `keepalive` | listener health check and log re-read period (default 15s) |
    /// | `retention`, `retention_rows` | change-log bounds (default 24h, 1000000 rows) |
    /// | `password_file` | read the password from this file |
    /// | `buffer` | events buffered towards the consumer (default 1024) |
    ///
    /// Other parameters (`sslmode`, `sslrootcert`, ...) go to the driver. Without a password in
    /// the URL or a file, `PGPASSWORD` or `~/.pgpass` is used. The password never appears in
    /// [`Source::describe`] or in errors.
    ///
    /// ```
    /// use crwatch::source::postgres::{Mode, PostgresSource};
    /// let s = PostgresSource::from_url("postgres://app:secret@db/shop?table=orders&mode=poll&interval=5s").unwrap();
    /// assert_eq!(s.get_mode(), &Mode::PollHash);
    /// assert!(!s.describe_target().contains("secret"));
    /// let err = PostgresSource::from_url("postgres://app:secret@db/shop?interval=1s").unwrap_err();
    /// assert!(err.to_string().contains("table=") && !err.to_string().contains("secret"));
    /// ```
    pub fn from_url(url: &str) -> Result<Self, SqlSourceError> {
        let invalid = |reason: String| SqlSourceError::InvalidUrl {
            url: redact_url(url),
            reason,
        };
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(invalid("expected postgres:// or postgresql://".into()));
        }
        let split = SplitUrl::parse(url, URL_PARAMS)?;
        let mut options =
            PgConnectOptions::from_str(&split.driver_url).map_err(|e| invalid(format!("{e}")))?;
        if let Some(file) = split.get("password_file") {
            let pw =
                std::fs::read_to_string(file).map_err(|e| invalid(format!("password_file {file}: {e}")))?;
            options = options.password(pw.trim_end_matches(['\r', '\n']));
        }
        let schema = split.get("schema").unwrap_or("public");
        let mut s = match (split.get("table"), split.get("query")) {
            (Some(t), None) if !t.is_empty() => Self::table(options, schema, t),
            (None, Some(q)) if !q.is_empty() => {
                let mut s = Self::new(options, Relation::Query(q.to_string()), Mode::PollHash);
                s.key = Some(vec![]);
                s
            }
            _ => {
                return Err(invalid(
                    "pass exactly one of table=NAME (with schema=NAME, default public) or query=SELECT..."
                        .into(),
                ));
            }
        };
        if let Some(k) = split.get("key") {
            s.key = Some(split_columns(k));
        }
        if matches!(s.relation, Relation::Query(_)) && s.key.as_ref().is_none_or(|k| k.is_empty()) {
            return Err(invalid("a query needs key=COLUMN (several: key=A,B)".into()));
        }
        if let Some(ns) = split.get("namespace") {
            s.namespace = Some(ns.to_string());
        }
        let dur = |name: &str| -> Result<Option<Duration>, SqlSourceError> {
            split
                .get(name)
                .map(|v| {
                    parse_duration(v)
                        .ok_or_else(|| invalid(format!("{name}={v:?}: expected e.g. 2s, 500ms, 1m")))
                })
                .transpose()
        };
        let num = |name: &str| -> Result<Option<u64>, SqlSourceError> {
            split
                .get(name)
                .map(|v| {
                    v.parse::<u64>()
                        .map_err(|_| invalid(format!("{name}={v:?}: expected a whole number")))
                })
                .transpose()
        };
        match (split.get("mode"), split.get("updated_at")) {
            (Some("notify"), None) => s = s.mode(Mode::Notify),
            (Some("notify"), Some(_)) => return Err(invalid("updated_at= needs mode=poll".into())),
            (Some("poll") | None, Some(col)) => {
                s = s.mode(Mode::PollUpdatedAt {
                    column: col.to_string(),
                })
            }
            (Some("poll"), None) => s = s.mode(Mode::PollHash),
            (None, None) => {}
            (Some(m), _) => return Err(invalid(format!("mode={m:?}: expected notify or poll"))),
        }
        if let Some(v) = split.get("install_trigger") {
            s = s.install_trigger(parse_bool(url, "install_trigger", v)?);
        }
        if let Some(d) = dur("interval")? {
            s = s.interval(d)?;
        }
        if let Some(d) = dur("overlap")? {
            s = s.overlap(d)?;
        }
        if let Some(n) = num("delete_scan_every")? {
            s = s.delete_scan_every(n)?;
        }
        if let Some(d) = dur("keepalive")? {
            s = s.keepalive(d)?;
        }
        let age = dur("retention")?.unwrap_or(s.retention_age);
        let rows = num("retention_rows")?.unwrap_or(s.retention_rows);
        s = s.retention(age, rows)?;
        if let Some(n) = num("buffer")? {
            s = s.buffer(usize::try_from(n).unwrap_or(usize::MAX))?;
        }
        if s.mode == Mode::Notify && matches!(s.relation, Relation::Query(_)) {
            return Err(invalid(
                "mode=notify needs table=NAME (a query can only be polled)".into(),
            ));
        }
        Ok(s)
    }

    /// Key columns (default: the table's primary key). Composite keys name rows `a,b`.
    pub fn key(mut self, columns: &[&str]) -> Self {
        self.key = Some(columns.iter().map(|c| c.to_string()).collect());
        self
    }

    /// The objects' namespace (default `schema.table`, or `query`).
    pub fn namespace(mut self, namespace: &str) -> Self {
        self.namespace = Some(namespace.to_string());
        self
    }

    /// How changes are found (notify needs a table; see [`Mode`]).
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// The mode in use.
    pub fn get_mode(&self) -> &Mode {
        &self.mode
    }

    /// Install the change log and trigger at start (needs the rights to; off by default). When
    /// off, the source expects them installed ([`Self::install_sql`]) and reports until they are.
    pub fn install_trigger(mut self, install: bool) -> Self {
        self.install = install;
        self
    }

    /// The polling interval (100 ms to 24 h; default 2 s).
    pub fn interval(mut self, every: Duration) -> Result<Self, SqlSourceError> {
        self.interval = check_duration("interval", every, MIN_INTERVAL, MAX_INTERVAL)?;
        Ok(self)
    }

    /// How far before the last seen updated-at value each poll starts (0 to 1 h; default 5 s),
    /// to catch transactions that committed late with an earlier timestamp.
    pub fn overlap(mut self, overlap: Duration) -> Result<Self, SqlSourceError> {
        self.overlap = check_duration("overlap", overlap, Duration::ZERO, Duration::from_secs(3600))?;
        Ok(self)
    }

    /// In updated-at polling, compare the key set for deletes every `n`th poll (1 to 10000;
    /// default 5).
    pub fn delete_scan_every(mut self, n: u64) -> Result<Self, SqlSourceError> {
        self.delete_scan_every = check_count("delete_scan_every", n, 1, 10_000)?;
        Ok(self)
    }

    /// How often the listener's connection is checked (`SELECT 1`, a dead one is replaced) and
    /// the change log re-read as a safety net (1 s to 10 min; default 15 s).
    pub fn keepalive(mut self, every: Duration) -> Result<Self, SqlSourceError> {
        self.keepalive = check_duration(
            "keepalive",
            every,
            Duration::from_secs(1),
            Duration::from_secs(600),
        )?;
        Ok(self)
    }

    /// Change-log retention: rows older than `max_age` (1 min to 30 days; default 24 h) or
    /// beyond the newest `max_rows` (1000 to 1e9; default 1e6) are deleted about once a minute.
    /// A source whose position was deleted lists again.
    pub fn retention(mut self, max_age: Duration, max_rows: u64) -> Result<Self, SqlSourceError> {
        self.retention_age = check_duration(
            "retention",
            max_age,
            Duration::from_secs(60),
            Duration::from_secs(30 * 24 * 3600),
        )?;
        self.retention_rows = check_count("retention_rows", max_rows, 1000, 1_000_000_000)?;
        Ok(self)
    }

    /// Events buffered towards the consumer before the source waits (1 to 1e6; default 1024).
    pub fn buffer(mut self, events: usize) -> Result<Self, SqlSourceError> {
        self.buffer = check_buffer(events)?;
        Ok(self)
    }

    /// The server, database and relation, without a password.
    pub fn describe_target(&self) -> String {
        format!("{} {}", self.target, self.relation.display())
    }

    pub(crate) fn pool(&self, max: u32) -> PgPool {
        PgPoolOptions::new()
            .max_connections(max)
            .min_connections(0)
            .acquire_timeout(Duration::from_secs(10))
            .connect_lazy_with(self.options.clone())
    }

    async fn changelog(&self, pool: &PgPool) -> Result<ChangeLog, SqlSourceError> {
        let Relation::Table { schema, table } = &self.relation else {
            return Err(SqlSourceError::Unsupported(
                "a change log needs a table: a query can only be polled".into(),
            ));
        };
        let shape = schema::Shape::discover(pool, &self.target, &self.relation, self.key.as_deref()).await?;
        Ok(ChangeLog::new(schema, table, &shape.key_names()))
    }

    /// The exact SQL that installs the change log and trigger for this table (for a DBA).
    pub async fn install_sql(&self) -> Result<String, SqlSourceError> {
        let pool = self.pool(1);
        let log = self.changelog(&pool).await;
        pool.close().await;
        Ok(log?.install_sql())
    }

    /// Whether this table's change log and trigger are installed (so changes can arrive by
    /// LISTEN/NOTIFY); `false` for a query, which can only be polled.
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
    /// use crwatch::source::postgres::{Mode, PostgresSource};
    /// let mut s = PostgresSource::from_url("postgres://app@db/shop?table=orders")?;
    /// if !s.is_installed().await? {
    ///     s = s.mode(Mode::PollHash); // no trigger: poll instead
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn is_installed(&self) -> Result<bool, SqlSourceError> {
        let Relation::Table { .. } = &self.relation else {
            return Ok(false);
        };
        let pool = self.pool(1);
        let result = async {
            let log = self.changelog(&pool).await?;
            // The qualified, quoted names go in as values: to_regclass parses them itself.
            let (state, function) = (log.state_sql(), log.function());
            let row: (bool, bool) = sqlx::query_as(
                "SELECT to_regclass($1) IS NOT NULL,                  EXISTS (SELECT 1 FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid WHERE p.proname = $2)",
            )
            .bind(&state)
            .bind(&function)
            .fetch_one(&pool)
            .await
            .map_err(SqlSourceError::db("looking for the change log", &self.target))?;
            Ok(row.0 && row.1)
        }
        .await;
        pool.close().await;
        result
    }

    /// Install the change log and trigger now (what `install_trigger(true)` does at start).
    pub async fn install(&self) -> Result<(), SqlSourceError> {
        let pool = self.pool(1);
        let result = async {
            let log = self.changelog(&pool).await?;
            sqlx::raw_sql(&log.install_sql())
                .execute(&pool)
                .await
                .map_err(SqlSourceError::db("installing the change log", &self.target))?;
            Ok(())
        }
        .await;
        pool.close().await;
        result
    }

    /// Remove the triggers, their function, the change log and its state table.
    pub async fn uninstall(&self) -> Result<(), SqlSourceError> {
        let pool = self.pool(1);
        let result = async {
            let log = self.changelog(&pool).await?;
            sqlx::raw_sql(&log.uninstall_sql())
                .execute(&pool)
                .await
                .map_err(SqlSourceError::db("removing the change log", &self.target))?;
            Ok(())
        }
        .await;
        pool.close().await;
        result
    }

    /// Prune the change log now with the given bounds (no range check: `0, 0` deletes every
    /// entry of finished transactions), as every notify source does about once a minute with
    /// its retention. For maintenance jobs and tests; returns whether anything was deleted.
    pub async fn prune_change_log(&self, max_age: Duration, max_rows: u64) -> Result<bool, SqlSourceError> {
        let pool = self.pool(1);
        let result = async {
            let log = self.changelog(&pool).await?;
            notify::prune_now(&pool, &log, max_age, max_rows)
                .await
                .map_err(SqlSourceError::db("pruning the change log", &self.target))
        }
        .await;
        pool.close().await;
        Ok(result? > 0)
    }

    pub(crate) fn row_namespace(&self) -> String {
        self.namespace.clone().unwrap_or_else(|| match &self.relation {
            Relation::Table { schema, table } => format!("{schema}.{table}"),
            Relation::Query(_) => "query".to_string(),
        })
    }
}

impl Source<DynamicObject> for PostgresSource {
    fn describe(&self) -> String {
        let mode = match &self.mode {
            Mode::Notify => "notify".to_string(),
            Mode::PollUpdatedAt { column } => format!("poll by {column}"),
            Mode::PollHash => "poll by hash".to_string(),
        };
        format!("{} ({mode})", self.describe_target())
    }

    /// Resumes from a change-log checkpoint in notify mode (polling sources list again).
    fn resume(&mut self, checkpoint: &Checkpoint) -> bool {
        if self.mode != Mode::Notify || checkpoint.resource_version.parse::<i64>().is_err() {
            return false;
        }
        self.resume = Some(checkpoint.clone());
        true
    }

    fn events(self: Box<Self>) -> EventStream<DynamicObject> {
        let (em, stream) = super::sql::channel(self.describe(), self.buffer);
        let this = *self;
        tokio::spawn(async move {
            match this.mode.clone() {
                Mode::Notify => notify::run(this, em).await,
                Mode::PollHash => poll::run(this, None, em).await,
                Mode::PollUpdatedAt { column } => poll::run(this, Some(column), em).await,
            }
        });
        stream
    }
}
