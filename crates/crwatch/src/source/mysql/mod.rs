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

mod poll;

use std::str::FromStr;
use std::time::Duration;

use kube::api::DynamicObject;
use sqlx::mysql::MySqlConnectOptions;

use super::sql::{
    SplitUrl, SqlSourceError, check_buffer, check_count, check_duration, parse_duration, redact_url,
    split_columns,
};
use super::{EventStream, Source};

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

    fn table_sql(&self) -> String {
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
        tokio::spawn(poll::run(*self, em));
        stream
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
