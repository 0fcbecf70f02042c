//! MySQL and MariaDB tables, views and queries as a polled source (feature `mysql`): each row
//! becomes a `mysql.crwatch.io/v1` `Row` named by its key, kept current by polling an
//! updated-at column (`WHERE col >= last - overlap`; deletes found by comparing the key set
//! every Nth poll) or by comparing row hashes on every poll (deletes found on each scan).
//!
//! Objects have the shape of the PostgreSQL source's (see [`super::postgres`]): namespace
//! `database.table` (or a given one), name = the key (composite keys joined with `,`, see
//! [`super::sql::key_name`]), uid = [`super::object::stable_uid`], resourceVersion = a hash of
//! the row, and `data: {column: value}`: integers, floats and booleans (`TINYINT(1)` holding 0
//! or 1) as JSON numbers and booleans, `DECIMAL` as a string (exact), `TIMESTAMP` as RFC 3339
//! in UTC, `DATETIME` as ISO 8601 without an offset, binary strings and blobs as base64, `JSON`
//! as JSON (MariaDB stores JSON as text, which stays a string), `BIT` as a number, NULL as
//! null, anything else as its text.
//!
//! Each poll is one consistent-snapshot, read-only transaction (REPEATABLE READ). Identifiers
//! enter SQL only through [`quote_ident`]; values only as bind parameters. A query is taken as
//! given and wrapped as a derived table (`SELECT ... FROM (<query>) AS q`): pass only trusted
//! text.
//!
//! ```no_run
//! use crwatch::informer::Informer;
//! use crwatch::source::mysql::MysqlSource;
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let source = MysqlSource::from_url("mysql://app@db.internal/shop?table=orders&updated_at=updated_at")?;
//! let informer = Informer::new(source);
//! informer.start(tokio_util::sync::CancellationToken::new());
//! informer.wait_synced(std::time::Duration::from_secs(120)).await?;
//! # Ok(()) }
//! ```

use std::collections::HashSet;
use std::str::FromStr;
use std::time::Duration;

use futures::TryStreamExt;
use kube::api::DynamicObject;
use serde_json::{Map, Value};
use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions, MySqlRow};
use sqlx::{Column, Executor, Row, Statement, TypeInfo};

use super::sql::{
    Backoff, Closed, Emitter, Known, RawRow, RowShape, SplitUrl, SqlSourceError, check_buffer, check_count,
    check_duration, float_value, hex_to_base64, int_value, json_value, key_name, naive_timestamp_value,
    parse_duration, redact_url, row_hash, split_columns, utc_timestamp_value,
};
use super::{Event, EventStream, Source};

/// The `apiVersion` of rows from MySQL and MariaDB.
pub const API_VERSION: &str = "mysql.crwatch.io/v1";

/// The shortest polling interval.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// The longest polling interval.
pub const MAX_INTERVAL: Duration = Duration::from_secs(24 * 3600);
/// The default polling interval (as the CLI's).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);

/// Quote a MySQL identifier: wrap it in backticks and double any backtick inside, so any name
/// is taken literally. The only way the MySQL source puts a name into SQL.
///
/// ```
/// use crwatch::source::mysql::quote_ident;
/// assert_eq!(quote_ident("orders"), "`orders`");
/// assert_eq!(quote_ident("we`ird"), "`we``ird`");
/// ```
pub fn quote_ident(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('`');
    for c in name.chars() {
        if c == '`' {
            out.push('`');
        }
        out.push(c);
    }
    out.push('`');
    out
}

/// What is watched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Relation {
    /// A table or view in a database (schema).
    Table {
        /// The database.
        database: String,
        /// The table.
        table: String,
    },
    /// A query (trusted text), wrapped as a derived table.
    Query(String),
}

impl Relation {
    fn display(&self) -> String {
        match self {
            Relation::Table { database, table } => format!("{database}.{table}"),
            Relation::Query(_) => "query".to_string(),
        }
    }

    fn from_sql(&self) -> String {
        match self {
            Relation::Table { database, table } => {
                format!("{}.{}", quote_ident(database), quote_ident(table))
            }
            Relation::Query(q) => format!("({q})"),
        }
    }
}

/// How changes are found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Rows whose `column` (DATETIME, TIMESTAMP or DATE) is at or after the last seen value
    /// minus the overlap; the key set compared every Nth poll for deletes.
    PollUpdatedAt {
        /// The updated-at column.
        column: String,
    },
    /// Every row compared by hash on each poll.
    PollHash,
}

/// A MySQL or MariaDB table, view or query as a polled source of `Row` objects. See the
/// [module docs](self).
#[derive(Debug, Clone)]
pub struct MysqlSource {
    options: MySqlConnectOptions,
    target: String,
    relation: Relation,
    key: Option<Vec<String>>,
    namespace: Option<String>,
    mode: Mode,
    interval: Duration,
    overlap: Duration,
    delete_scan_every: u64,
    buffer: usize,
}

const URL_PARAMS: &[&str] = &[
    "table",
    "query",
    "key",
    "namespace",
    "mode",
    "interval",
    "updated_at",
    "overlap",
    "delete_scan_every",
    "password_file",
    "buffer",
];

impl MysqlSource {
    /// The table or view `database.table` (polled by hash; key from the primary key).
    ///
    /// ```
    /// use crwatch::source::mysql::MysqlSource;
    /// use sqlx::mysql::MySqlConnectOptions;
    /// let s = MysqlSource::table(MySqlConnectOptions::new().host("db").username("app"), "shop", "orders");
    /// assert!(s.describe_target().ends_with("shop.orders"));
    /// ```
    pub fn table(options: MySqlConnectOptions, database: &str, table: &str) -> Self {
        let options = options.database(database);
        Self::new(
            options,
            Relation::Table {
                database: database.to_string(),
                table: table.to_string(),
            },
        )
    }

    /// The rows of `query` (trusted text, wrapped as a derived table), keyed by `key`.
    pub fn query(options: MySqlConnectOptions, query: &str, key: &[&str]) -> Self {
        let mut s = Self::new(options, Relation::Query(query.to_string()));
        s.key = Some(key.iter().map(|k| k.to_string()).collect());
        s
    }

    fn new(options: MySqlConnectOptions, relation: Relation) -> Self {
        // UTC, so TIMESTAMP values read as UTC (sqlx's default, made explicit).
        let options = options.timezone(Some("+00:00".to_string()));
        let target = format!(
            "mysql://{}@{}:{}/{}",
            options.get_username(),
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or("")
        );
        MysqlSource {
            options,
            target,
            relation,
            key: None,
            namespace: None,
            mode: Mode::PollHash,
            interval: DEFAULT_INTERVAL,
            overlap: Duration::from_secs(5),
            delete_scan_every: 5,
            buffer: 1024,
        }
    }

    /// A source from a URL, as the CLI takes it:
    /// `mysql://user[:password]@host[:port]/database?table=orders` (or `mariadb://`) with
    /// `table` or `query` (trusted text; needs `key`), `key=A,B`, `namespace`, `mode=poll`,
    /// `updated_at=COLUMN` (else rows are compared by hash), `interval` (default 2s),
    /// `overlap` (5s), `delete_scan_every` (5), `password_file`, `buffer` (1024). Other
    /// parameters (`ssl-mode`, ...) go to the driver. Without a password in the URL or a file,
    /// `MYSQL_PWD` is used. The password never appears in [`Source::describe`] or in errors.
    ///
    /// ```
    /// use crwatch::source::mysql::MysqlSource;
    /// let s = MysqlSource::from_url("mysql://app:secret@db/shop?table=orders&interval=1s").unwrap();
    /// assert!(!s.describe_target().contains("secret"));
    /// assert!(MysqlSource::from_url("mysql://app:secret@db/shop?table=t&interval=1ms").is_err());
    /// ```
    pub fn from_url(url: &str) -> Result<Self, SqlSourceError> {
        let invalid = |reason: String| SqlSourceError::InvalidUrl {
            url: redact_url(url),
            reason,
        };
        let driver = if let Some(rest) = url.strip_prefix("mariadb://") {
            format!("mysql://{rest}")
        } else if url.starts_with("mysql://") {
            url.to_string()
        } else {
            return Err(invalid("expected mysql:// or mariadb://".into()));
        };
        let split = SplitUrl::parse(&driver, URL_PARAMS)?;
        let mut options =
            MySqlConnectOptions::from_str(&split.driver_url).map_err(|e| invalid(format!("{e}")))?;
        let has_password = driver
            .split_once("://")
            .and_then(|(_, rest)| rest.split(['/', '?']).next())
            .and_then(|auth| auth.rsplit_once('@'))
            .is_some_and(|(userinfo, _)| userinfo.contains(':'));
        if let Some(file) = split.get("password_file") {
            let pw =
                std::fs::read_to_string(file).map_err(|e| invalid(format!("password_file {file}: {e}")))?;
            options = options.password(pw.trim_end_matches(['\r', '\n']));
        } else if !has_password && let Ok(pw) = std::env::var("MYSQL_PWD") {
            options = options.password(&pw);
        }
        let database = options.get_database().unwrap_or("").to_string();
        let mut s = match (split.get("table"), split.get("query")) {
            (Some(t), None) if !t.is_empty() => {
                if database.is_empty() {
                    return Err(invalid(
                        "name the database in the path: mysql://host/DATABASE?table=...".into(),
                    ));
                }
                Self::table(options, &database, t)
            }
            (None, Some(q)) if !q.is_empty() => Self::new(options, Relation::Query(q.to_string())),
            _ => {
                return Err(invalid(
                    "pass exactly one of table=NAME or query=SELECT...".into(),
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
        match split.get("mode") {
            None | Some("poll") => {}
            Some(m) => {
                return Err(invalid(format!(
                    "mode={m:?}: MySQL sources only poll (mode=poll)"
                )));
            }
        }
        if let Some(c) = split.get("updated_at") {
            s.mode = Mode::PollUpdatedAt {
                column: c.to_string(),
            };
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
        if let Some(d) = dur("interval")? {
            s = s.interval(d)?;
        }
        if let Some(d) = dur("overlap")? {
            s = s.overlap(d)?;
        }
        if let Some(n) = num("delete_scan_every")? {
            s = s.delete_scan_every(n)?;
        }
        if let Some(n) = num("buffer")? {
            s = s.buffer(usize::try_from(n).unwrap_or(usize::MAX))?;
        }
        Ok(s)
    }

    /// Key columns (default: the table's primary key).
    pub fn key(mut self, columns: &[&str]) -> Self {
        self.key = Some(columns.iter().map(|c| c.to_string()).collect());
        self
    }

    /// The objects' namespace (default `database.table`, or `query`).
    pub fn namespace(mut self, namespace: &str) -> Self {
        self.namespace = Some(namespace.to_string());
        self
    }

    /// How changes are found (default: by hash).
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// The polling interval (100 ms to 24 h; default 2 s).
    pub fn interval(mut self, every: Duration) -> Result<Self, SqlSourceError> {
        self.interval = check_duration("interval", every, MIN_INTERVAL, MAX_INTERVAL)?;
        Ok(self)
    }

    /// How far before the last seen updated-at value each poll starts (0 to 1 h; default 5 s).
    pub fn overlap(mut self, overlap: Duration) -> Result<Self, SqlSourceError> {
        self.overlap = check_duration("overlap", overlap, Duration::ZERO, Duration::from_secs(3600))?;
        Ok(self)
    }

    /// In updated-at polling, compare the key set every `n`th poll (1 to 10000; default 5).
    pub fn delete_scan_every(mut self, n: u64) -> Result<Self, SqlSourceError> {
        self.delete_scan_every = check_count("delete_scan_every", n, 1, 10_000)?;
        Ok(self)
    }

    /// Events buffered towards the consumer (1 to 1e6; default 1024).
    pub fn buffer(mut self, events: usize) -> Result<Self, SqlSourceError> {
        self.buffer = check_buffer(events)?;
        Ok(self)
    }

    /// The server, database and relation, without a password.
    pub fn describe_target(&self) -> String {
        format!("{} {}", self.target, self.relation.display())
    }
}

impl Source<DynamicObject> for MysqlSource {
    fn describe(&self) -> String {
        let mode = match &self.mode {
            Mode::PollUpdatedAt { column } => format!("poll by {column}"),
            Mode::PollHash => "poll by hash".to_string(),
        };
        format!("{} ({mode})", self.describe_target())
    }

    fn events(self: Box<Self>) -> EventStream<DynamicObject> {
        let (em, stream) = super::sql::channel(self.describe(), self.buffer);
        tokio::spawn(run(*self, em));
        stream
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Bool,
    Int,
    Float,
    Json,
    Binary,
    Timestamp,
    Datetime,
    Bit,
    Text,
}

impl Kind {
    fn of(type_name: &str) -> Kind {
        match type_name {
            "BOOLEAN" => Kind::Bool,
            "TINYINT" | "SMALLINT" | "INT" | "MEDIUMINT" | "BIGINT" | "TINYINT UNSIGNED"
            | "SMALLINT UNSIGNED" | "INT UNSIGNED" | "MEDIUMINT UNSIGNED" | "BIGINT UNSIGNED" | "YEAR" => {
                Kind::Int
            }
            "FLOAT" | "DOUBLE" => Kind::Float,
            "JSON" => Kind::Json,
            "BINARY" | "VARBINARY" | "TINYBLOB" | "BLOB" | "MEDIUMBLOB" | "LONGBLOB" | "GEOMETRY" => {
                Kind::Binary
            }
            "TIMESTAMP" => Kind::Timestamp,
            "DATETIME" => Kind::Datetime,
            "BIT" => Kind::Bit,
            _ => Kind::Text,
        }
    }

    /// The expression that reads column `q` as text.
    fn expr(self, q: &str) -> String {
        match self {
            Kind::Binary => format!("HEX({q})"),
            Kind::Bit => format!("CAST(CAST({q} AS UNSIGNED) AS CHAR)"),
            _ => format!("CAST({q} AS CHAR)"),
        }
    }

    fn convert(self, s: &str) -> Value {
        match self {
            Kind::Bool => match s {
                "0" => Value::Bool(false),
                "1" => Value::Bool(true),
                other => int_value(other),
            },
            Kind::Int | Kind::Bit => int_value(s),
            Kind::Float => float_value(s),
            Kind::Json => json_value(s),
            Kind::Binary => hex_to_base64(s),
            Kind::Timestamp => utc_timestamp_value(s),
            Kind::Datetime => naive_timestamp_value(s),
            Kind::Text => Value::String(s.to_string()),
        }
    }
}

#[derive(Debug, Clone)]
struct Col {
    name: String,
    kind: Kind,
    datetime: bool,
}

#[derive(Debug, Clone)]
struct Shape {
    relation: Relation,
    cols: Vec<Col>,
    key: Vec<usize>,
}

fn col_index(
    cols: &[Col],
    name: &str,
    relation: &Relation,
    role: &'static str,
) -> Result<usize, SqlSourceError> {
    cols.iter()
        .position(|c| c.name == name)
        .ok_or_else(|| SqlSourceError::NoSuchColumn {
            relation: relation.display(),
            column: name.to_string(),
            role,
            available: cols
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

impl Shape {
    async fn discover(
        pool: &MySqlPool,
        target: &str,
        relation: &Relation,
        key: Option<&[String]>,
    ) -> Result<Shape, SqlSourceError> {
        if let Relation::Table { database, table } = relation {
            let (n,): (i64,) = sqlx::query_as(
                "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
            )
            .bind(database)
            .bind(table)
            .fetch_one(pool)
            .await
            .map_err(SqlSourceError::db("looking up the table", target))?;
            if n == 0 {
                return Err(SqlSourceError::NoSuchRelation {
                    relation: relation.display(),
                });
            }
        }
        let probe = format!("SELECT * FROM {} AS q", relation.from_sql());
        let stmt = pool.prepare(&probe).await.map_err(SqlSourceError::db(
            format!("describing {}", relation.display()),
            target,
        ))?;
        let cols: Vec<Col> = stmt
            .columns()
            .iter()
            .map(|c| {
                let t = c.type_info().name();
                Col {
                    name: c.name().to_string(),
                    kind: Kind::of(t),
                    datetime: matches!(t, "DATETIME" | "TIMESTAMP" | "DATE"),
                }
            })
            .collect();
        let key_names: Vec<String> = match (key, relation) {
            (Some(k), _) if !k.is_empty() => k.to_vec(),
            (_, Relation::Table { database, table }) => {
                let rows: Vec<(String,)> = sqlx::query_as(
                    "SELECT CAST(COLUMN_NAME AS CHAR) FROM information_schema.KEY_COLUMN_USAGE \
                     WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND CONSTRAINT_NAME = 'PRIMARY' \
                     ORDER BY ORDINAL_POSITION",
                )
                .bind(database)
                .bind(table)
                .fetch_all(pool)
                .await
                .map_err(SqlSourceError::db("reading the primary key", target))?;
                rows.into_iter().map(|r| r.0).collect()
            }
            _ => vec![],
        };
        if key_names.is_empty() {
            return Err(SqlSourceError::NoPrimaryKey {
                relation: relation.display(),
            });
        }
        let mut key_idx = vec![];
        for k in &key_names {
            key_idx.push(col_index(&cols, k, relation, "key")?);
        }
        Ok(Shape {
            relation: relation.clone(),
            cols,
            key: key_idx,
        })
    }

    fn col_expr(&self, i: usize) -> String {
        let c = &self.cols[i];
        c.kind.expr(&format!("q.{}", quote_ident(&c.name)))
    }

    fn select_list(&self) -> String {
        let mut parts: Vec<String> = (0..self.cols.len()).map(|i| self.col_expr(i)).collect();
        for &k in &self.key {
            parts.push(self.col_expr(k));
        }
        parts.join(", ")
    }

    fn snapshot_sql(&self) -> String {
        format!(
            "SELECT {} FROM {} AS q",
            self.select_list(),
            self.relation.from_sql()
        )
    }

    fn updated_sql(&self, col: usize) -> String {
        let q = format!("q.{}", quote_ident(&self.cols[col].name));
        format!(
            "SELECT {}, CAST({q} AS CHAR) FROM {} AS q \
             WHERE {q} >= (CAST(? AS DATETIME(6)) - INTERVAL ? MICROSECOND) ORDER BY {q}",
            self.select_list(),
            self.relation.from_sql()
        )
    }

    fn keys_sql(&self) -> String {
        let ks: Vec<String> = self.key.iter().map(|&k| self.col_expr(k)).collect();
        format!("SELECT {} FROM {} AS q", ks.join(", "), self.relation.from_sql())
    }

    /// The rows of `n` keys (bound as texts, key after key).
    fn fetch_sql(&self, n: usize) -> String {
        let ks: Vec<String> = self.key.iter().map(|&k| self.col_expr(k)).collect();
        let one = format!("({})", vec!["?"; self.key.len()].join(", "));
        format!(
            "SELECT {} FROM {} AS q WHERE ({}) IN ({})",
            self.select_list(),
            self.relation.from_sql(),
            ks.join(", "),
            vec![one; n].join(", ")
        )
    }

    fn read_row(&self, row: &MySqlRow) -> Result<Option<RawRow>, sqlx::Error> {
        let n = self.cols.len();
        let mut values = Vec::with_capacity(n);
        for i in 0..n {
            values.push(row.try_get::<Option<String>, _>(i)?);
        }
        let mut key = Vec::with_capacity(self.key.len());
        for i in 0..self.key.len() {
            match row.try_get::<Option<String>, _>(n + i)? {
                Some(k) => key.push(k),
                None => return Ok(None),
            }
        }
        Ok(Some(RawRow {
            name: key_name(&key),
            rv: row_hash(&values),
            values,
        }))
    }

    fn data(&self, values: &[Option<String>]) -> Map<String, Value> {
        let mut m = Map::with_capacity(self.cols.len());
        for (c, v) in self.cols.iter().zip(values) {
            m.insert(
                c.name.clone(),
                match v {
                    None => Value::Null,
                    Some(s) => c.kind.convert(s),
                },
            );
        }
        m
    }
}

enum Stop {
    Closed,
    Failed(String),
}

impl From<Closed> for Stop {
    fn from(_: Closed) -> Self {
        Stop::Closed
    }
}

impl From<SqlSourceError> for Stop {
    fn from(e: SqlSourceError) -> Self {
        Stop::Failed(e.to_string())
    }
}

struct Poller {
    src: MysqlSource,
    pool: MySqlPool,
    em: Emitter,
    shape: Option<(Shape, Option<usize>)>,
    rows: RowShape,
    known: Known,
    listed: bool,
    watermark: String,
    polls: u64,
}

/// The watermark before any row: older than any DATETIME.
const EPOCH: &str = "1000-01-01 00:00:00";

async fn run(src: MysqlSource, em: Emitter) {
    let rows = RowShape {
        api_version: API_VERSION,
        namespace: src.namespace.clone().unwrap_or_else(|| src.relation.display()),
        uid_source: format!("{} {}", src.target, src.relation.display()),
    };
    let pool = MySqlPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .acquire_timeout(Duration::from_secs(30))
        .connect_lazy_with(src.options.clone());
    let mut p = Poller {
        src,
        pool,
        em,
        shape: None,
        rows,
        known: Known::default(),
        listed: false,
        watermark: EPOCH.to_string(),
        polls: 0,
    };
    let mut backoff = Backoff::new();
    loop {
        let delay = match p.poll().await {
            Ok(()) => {
                backoff.reset();
                if p.em.send(Event::Progress(None)).await.is_err() {
                    break;
                }
                p.src.interval
            }
            Err(Stop::Closed) => break,
            Err(Stop::Failed(msg)) => {
                if p.em.error(msg, false).await.is_err() {
                    break;
                }
                backoff.next_delay()
            }
        };
        if p.em.sleep(delay).await.is_err() {
            break;
        }
    }
    p.pool.close().await;
}

impl Poller {
    fn failed(&self, what: &str) -> impl Fn(sqlx::Error) -> Stop + '_ {
        let what = what.to_string();
        move |e| Stop::Failed(format!("{what} on {}: {e}", self.src.target))
    }

    async fn poll(&mut self) -> Result<(), Stop> {
        if self.shape.is_none() {
            let shape = Shape::discover(
                &self.pool,
                &self.src.target,
                &self.src.relation,
                self.src.key.as_deref(),
            )
            .await?;
            let col = match &self.src.mode {
                Mode::PollUpdatedAt { column } => {
                    let i = col_index(&shape.cols, column, &shape.relation, "updated_at")?;
                    if !shape.cols[i].datetime {
                        return Err(Stop::Failed(format!(
                            "updated_at column {column:?} of {} must be a DATETIME, TIMESTAMP or DATE: \
                             use another column or poll by hash (leave out updated_at)",
                            shape.relation.display()
                        )));
                    }
                    Some(i)
                }
                Mode::PollHash => None,
            };
            self.shape = Some((shape, col));
        }
        let Some((shape, col)) = self.shape.clone() else {
            return Ok(());
        };
        let mut conn = self.pool.acquire().await.map_err(self.failed("connecting"))?;
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await
            .map_err(self.failed("starting a snapshot"))?;
        conn.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
            .await
            .map_err(self.failed("starting a snapshot"))?;
        let result = self.poll_in(&mut conn, &shape, col).await;
        match &result {
            Ok(()) => {
                conn.execute("COMMIT")
                    .await
                    .map_err(self.failed("ending the snapshot"))?;
            }
            Err(_) => {
                // A broken connection is dropped with the error; a sound one is cleaned up.
                let _ = conn.execute("ROLLBACK").await;
            }
        }
        result
    }

    async fn poll_in(
        &mut self,
        conn: &mut sqlx::pool::PoolConnection<sqlx::MySql>,
        shape: &Shape,
        col: Option<usize>,
    ) -> Result<(), Stop> {
        if !self.listed {
            if let Some(c) = col {
                let sql = format!(
                    "SELECT CAST(MAX(q.{}) AS CHAR) FROM {} AS q",
                    quote_ident(&shape.cols[c].name),
                    shape.relation.from_sql()
                );
                let (max,): (Option<String>,) = sqlx::query_as(&sql)
                    .fetch_one(&mut **conn)
                    .await
                    .map_err(self.failed("reading the newest updated_at"))?;
                self.watermark = max.unwrap_or_else(|| EPOCH.to_string());
            }
            self.em.send(Event::Init).await?;
            self.known = Known::default();
            let sql = shape.snapshot_sql();
            let mut stream = sqlx::query(&sql).fetch(&mut **conn);
            while let Some(row) = stream.try_next().await.map_err(self.failed("listing rows"))? {
                if let Some(raw) = shape.read_row(&row).map_err(self.failed("reading a row"))? {
                    self.known.update(&raw.name, &raw.rv);
                    let obj = self.rows.object(&raw.name, &raw.rv, shape.data(&raw.values));
                    self.em.send(Event::InitApply(obj)).await?;
                }
            }
            drop(stream);
            self.em.send(Event::InitDone).await?;
            self.listed = true;
            return Ok(());
        }
        match col {
            None => {
                let rows = sqlx::query(&shape.snapshot_sql())
                    .fetch_all(&mut **conn)
                    .await
                    .map_err(self.failed("scanning rows"))?;
                let mut present = HashSet::with_capacity(rows.len());
                for row in &rows {
                    if let Some(raw) = shape.read_row(row).map_err(self.failed("reading a row"))? {
                        if self.known.update(&raw.name, &raw.rv) {
                            let obj = self.rows.object(&raw.name, &raw.rv, shape.data(&raw.values));
                            self.em.send(Event::Apply(obj)).await?;
                        }
                        present.insert(raw.name);
                    }
                }
                for (name, rv) in self.known.retain_present(&present) {
                    self.em
                        .send(Event::Delete(self.rows.tombstone(&name, Some(&rv))))
                        .await?;
                }
            }
            Some(c) => {
                let overlap = i64::try_from(self.src.overlap.as_micros()).unwrap_or(i64::MAX);
                let rows = sqlx::query(&shape.updated_sql(c))
                    .bind(&self.watermark)
                    .bind(overlap)
                    .fetch_all(&mut **conn)
                    .await
                    .map_err(self.failed("reading changed rows"))?;
                let width = shape.cols.len() + shape.key.len();
                for row in &rows {
                    if let Some(raw) = shape.read_row(row).map_err(self.failed("reading a row"))?
                        && self.known.update(&raw.name, &raw.rv)
                    {
                        let obj = self.rows.object(&raw.name, &raw.rv, shape.data(&raw.values));
                        self.em.send(Event::Apply(obj)).await?;
                    }
                    if let Some(w) = row
                        .try_get::<Option<String>, _>(width)
                        .map_err(self.failed("reading a row"))?
                    {
                        self.watermark = w;
                    }
                }
                self.polls += 1;
                if self.polls % self.src.delete_scan_every == 0 {
                    self.scan_keys(conn, shape).await?;
                }
            }
        }
        Ok(())
    }

    async fn scan_keys(
        &mut self,
        conn: &mut sqlx::pool::PoolConnection<sqlx::MySql>,
        shape: &Shape,
    ) -> Result<(), Stop> {
        let keys = sqlx::query(&shape.keys_sql())
            .fetch_all(&mut **conn)
            .await
            .map_err(self.failed("scanning keys"))?;
        let mut present = HashSet::with_capacity(keys.len());
        let mut unknown: Vec<Vec<String>> = vec![];
        for row in &keys {
            let mut parts = Vec::with_capacity(shape.key.len());
            for i in 0..shape.key.len() {
                match row
                    .try_get::<Option<String>, _>(i)
                    .map_err(self.failed("reading a key"))?
                {
                    Some(p) => parts.push(p),
                    None => break,
                }
            }
            if parts.len() != shape.key.len() {
                continue;
            }
            let name = key_name(&parts);
            if !self.known.rows.contains_key(&name) {
                unknown.push(parts);
            }
            present.insert(name);
        }
        for (name, rv) in self.known.retain_present(&present) {
            self.em
                .send(Event::Delete(self.rows.tombstone(&name, Some(&rv))))
                .await?;
        }
        // Rows the updated-at window missed (a NULL or old value): fetch them by key.
        for chunk in unknown.chunks(200) {
            let sql = shape.fetch_sql(chunk.len());
            let mut q = sqlx::query(&sql);
            for parts in chunk {
                for p in parts {
                    q = q.bind(p);
                }
            }
            let rows = q
                .fetch_all(&mut **conn)
                .await
                .map_err(self.failed("fetching rows by key"))?;
            for row in &rows {
                if let Some(raw) = shape.read_row(row).map_err(self.failed("reading a row"))?
                    && self.known.update(&raw.name, &raw.rv)
                {
                    let obj = self.rows.object(&raw.name, &raw.rv, shape.data(&raw.values));
                    self.em.send(Event::Apply(obj)).await?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("a`b"), "`a``b`");
        assert_eq!(quote_ident("``"), "``````");
        let shape = Shape {
            relation: Relation::Table {
                database: "d`b".into(),
                table: "t`".into(),
            },
            cols: vec![
                Col {
                    name: "i`d".into(),
                    kind: Kind::Int,
                    datetime: false,
                },
                Col {
                    name: "b".into(),
                    kind: Kind::Binary,
                    datetime: false,
                },
            ],
            key: vec![0],
        };
        assert_eq!(
            shape.snapshot_sql(),
            "SELECT CAST(q.`i``d` AS CHAR), HEX(q.`b`), CAST(q.`i``d` AS CHAR) FROM `d``b`.`t``` AS q"
        );
        assert!(
            shape
                .fetch_sql(2)
                .ends_with("WHERE (CAST(q.`i``d` AS CHAR)) IN ((?), (?))")
        );
    }

    #[test]
    fn urls_are_checked_and_redacted() {
        let e = MysqlSource::from_url("mysql://u:pw@h/db")
            .unwrap_err()
            .to_string();
        assert!(e.contains("table=") && !e.contains("pw@"), "{e}");
        let e = MysqlSource::from_url("mysql://u:pw@h/?table=t")
            .unwrap_err()
            .to_string();
        assert!(e.contains("database"), "{e}");
        let s = MysqlSource::from_url("mariadb://u:pw@h:3307/db?table=t&key=a,b&updated_at=u").unwrap();
        assert_eq!(s.mode, Mode::PollUpdatedAt { column: "u".into() });
        assert_eq!(s.key, Some(vec!["a".to_string(), "b".to_string()]));
        assert!(!s.describe().contains("pw"));
    }
}
