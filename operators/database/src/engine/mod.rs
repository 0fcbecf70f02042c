//! Database engines: creating and dropping databases and their users on a PostgreSQL or
//! MariaDB server through an administrator connection.
//!
//! [`Engine`] is an enum over the two implementations ([`postgres::PostgresEngine`],
//! [`mysql::MySqlEngine`]) with the same operations, all idempotent: `ensure_*` creates what is
//! missing and fixes what differs, `drop_*` succeeds when there is nothing to drop.
//!
//! # Safety of the SQL
//!
//! Identifiers cannot be bound as parameters, so each engine has exactly one quoting
//! function ([`postgres::quote_ident`], [`mysql::quote_ident`]) through which every name
//! goes, whatever it is; it refuses names the server would silently truncate or cannot store.
//! (MariaDB's `GRANT ... ON db.*` additionally treats `_`, `%` and `\` in the name as a
//! pattern; [`mysql::quote_grant_database`] escapes those before quoting.)
//! Values are bound as parameters wherever the server allows. Passwords are never sent at all:
//! the engines send the hash the server stores (a SCRAM-SHA-256 verifier, a
//! `mysql_native_password` hash; see [`crate::password`]) as a quoted literal, since neither
//! server takes parameters in `CREATE ROLE`/`CREATE USER`. Every statement goes through the
//! extended (prepared) protocol, which executes exactly one statement, and statement logging
//! is off.
//!
//! # Errors
//!
//! [`EngineError`] says which server, which operation and what happened, and whether retrying
//! can help ([`EngineError::is_transient`]). It never contains a password or a URL with one.

pub mod mysql;
pub mod postgres;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::password::Password;
use crate::types::DatabaseEngine;

pub use mysql::MySqlEngine;
pub use postgres::PostgresEngine;

/// How the engines connect.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// How long getting a connection may take (connect, TLS, authentication, or waiting for a
    /// free pooled one). Default 5 s.
    pub connect_timeout: Duration,
    /// Pooled connections to the server, at most. Default 4.
    pub max_connections: u32,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            connect_timeout: Duration::from_secs(5),
            max_connections: 4,
        }
    }
}

/// What [`Engine::ensure_user`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UserChange {
    /// The user did not exist and was created.
    Created,
    /// The user existed with another password, which was replaced.
    PasswordChanged,
    /// The user existed with this password; privileges were (re)granted.
    Unchanged,
}

/// A connection to one database server as its administrator.
///
/// ```no_run
/// # async fn demo() -> Result<(), database_operator::engine::EngineError> {
/// use database_operator::engine::Engine;
/// use database_operator::password::Password;
/// use database_operator::types::DatabaseEngine;
///
/// let engine = Engine::connect(DatabaseEngine::PostgreSQL, "postgresql://postgres:pw@db:5432/postgres")?;
/// engine.ensure_database("default_my_app_db_f6476640").await?;
/// engine
///     .ensure_user("appuser_fe56c46b", &Password::generate(), "default_my_app_db_f6476640")
///     .await?;
/// println!("{}", engine.connection_string("default_my_app_db_f6476640"));
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub enum Engine {
    /// A PostgreSQL server.
    Postgres(PostgresEngine),
    /// A MariaDB server.
    MySql(MySqlEngine),
}

/// Calls the same method on whichever engine this is.
macro_rules! dispatch {
    ($self:ident, $engine:ident => $call:expr) => {
        match $self {
            Engine::Postgres($engine) => $call,
            Engine::MySql($engine) => $call,
        }
    };
}

impl Engine {
    /// An engine for the server at `admin_url` (`postgresql://user:password@host:port/db` or
    /// `mysql://user:password@host:port/`) with default [`ConnectOptions`]. Connections are
    /// made when first needed, so this fails only for a malformed URL; an unreachable server
    /// shows up as a transient error of the first operation.
    pub fn connect(kind: DatabaseEngine, admin_url: &str) -> Result<Self, EngineError> {
        Self::connect_with(kind, admin_url, &ConnectOptions::default())
    }

    /// [`connect`](Self::connect) with explicit options.
    pub fn connect_with(
        kind: DatabaseEngine,
        admin_url: &str,
        options: &ConnectOptions,
    ) -> Result<Self, EngineError> {
        Ok(match kind {
            DatabaseEngine::PostgreSQL => Engine::Postgres(PostgresEngine::connect(admin_url, options)?),
            DatabaseEngine::MySQL => Engine::MySql(MySqlEngine::connect(admin_url, options)?),
        })
    }

    /// Which engine this is.
    pub fn kind(&self) -> DatabaseEngine {
        match self {
            Engine::Postgres(_) => DatabaseEngine::PostgreSQL,
            Engine::MySql(_) => DatabaseEngine::MySQL,
        }
    }

    /// The server as `host:port`, for messages.
    pub fn server(&self) -> &str {
        dispatch!(self, e => e.server())
    }

    /// `postgresql://host:port/<database>` or `mysql://host:port/<database>`: where the
    /// database is, without credentials.
    pub fn connection_string(&self, database: &str) -> String {
        dispatch!(self, e => e.connection_string(database))
    }

    /// The server's version string (`15.4 (Debian 15.4-1)`, `10.11.6-MariaDB-0+deb12u1`).
    pub async fn server_version(&self) -> Result<String, EngineError> {
        dispatch!(self, e => e.server_version().await)
    }

    /// Whether the database `name` exists.
    pub async fn database_exists(&self, name: &str) -> Result<bool, EngineError> {
        dispatch!(self, e => e.database_exists(name).await)
    }

    /// Create the database `name` unless it exists, and make sure only its own users may
    /// connect to it (PostgreSQL grants `CONNECT` to everyone by default). Returns whether it
    /// was created.
    pub async fn ensure_database(&self, name: &str) -> Result<bool, EngineError> {
        dispatch!(self, e => e.ensure_database(name).await)
    }

    /// Drop the database `name` with all its data, closing other sessions using it first.
    /// Returns whether there was one to drop. Users are not dropped; see
    /// [`drop_user`](Self::drop_user).
    pub async fn drop_database(&self, name: &str) -> Result<bool, EngineError> {
        dispatch!(self, e => e.drop_database(name).await)
    }

    /// Create the login `role` with `password` unless it exists, set the password if it
    /// differs, mark the role as belonging to `database` and grant it all privileges on
    /// `database` (and, on PostgreSQL, on its `public` schema) and nothing else. The database
    /// must exist.
    pub async fn ensure_user(
        &self,
        role: &str,
        password: &Password,
        database: &str,
    ) -> Result<UserChange, EngineError> {
        dispatch!(self, e => e.ensure_user(role, password, database).await)
    }

    /// Drop the login `role` of `database`, ending its sessions. Objects it owns in
    /// `database` (PostgreSQL) go to the administrator, so no data is lost. Returns whether
    /// there was one to drop.
    pub async fn drop_user(&self, role: &str, database: &str) -> Result<bool, EngineError> {
        dispatch!(self, e => e.drop_user(role, database).await)
    }

    /// The logins this operator created for `database`, sorted: names ending in
    /// [`crate::naming::role_suffix`] of `database` that (PostgreSQL) carry the operator's
    /// comment for `database` or (MariaDB) exist for host `%`.
    pub async fn list_users(&self, database: &str) -> Result<Vec<String>, EngineError> {
        dispatch!(self, e => e.list_users(database).await)
    }

    /// Bytes the database `name` uses (PostgreSQL: `pg_database_size`; MariaDB: data and
    /// index length of its tables). An error of kind [`ErrorKind::NotFound`] if it does not
    /// exist.
    pub async fn database_size(&self, name: &str) -> Result<u64, EngineError> {
        dispatch!(self, e => e.database_size(name).await)
    }

    /// Close the pooled connections (operations afterwards fail).
    pub async fn close(&self) {
        dispatch!(self, e => e.close().await)
    }
}

/// Log in to `database` on `host:port` as `user` with `password` and run `SELECT 1`: whether
/// the credentials work (for tests and readiness checks).
pub async fn check_login(
    kind: DatabaseEngine,
    host: &str,
    port: u16,
    database: &str,
    user: &str,
    password: &Password,
) -> Result<(), EngineError> {
    let ctx = ErrorContext {
        engine: kind,
        server: format!("{host}:{port}"),
    };
    let op = format!("log in to {database:?} as {user:?}");
    match kind {
        DatabaseEngine::PostgreSQL => {
            let options = postgres::login_options(host, port, database, user, password);
            ctx.log_in::<sqlx::PgConnection>(&op, &options).await
        }
        DatabaseEngine::MySQL => {
            let options = mysql::login_options(host, port, database, user, password);
            ctx.log_in::<sqlx::MySqlConnection>(&op, &options).await
        }
    }
}

/// Whether a server reporting `server_version` provides the `wanted` version of the spec:
/// `15` matches `15.4 (Debian ...)`, `10.11` matches `10.11.6-MariaDB`, `10` matches
/// `10.11.6-MariaDB` but `10.1` does not.
///
/// ```
/// use database_operator::engine::version_matches;
/// assert!(version_matches("15", "15.18 (Debian 15.18-0+deb12u1)"));
/// assert!(version_matches("10.11", "10.11.19-MariaDB-0+deb12u1"));
/// assert!(!version_matches("10.1", "10.11.19-MariaDB"));
/// assert!(!version_matches("16", "15.18"));
/// ```
pub fn version_matches(wanted: &str, server_version: &str) -> bool {
    let numeric: String = server_version
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let have: Vec<&str> = numeric.split('.').collect();
    let want: Vec<&str> = wanted.split('.').collect();
    want.len() <= have.len() && want.iter().zip(&have).all(|(w, h)| w == h)
}

/// An operation on a database server that failed.
#[derive(Debug, thiserror::Error)]
#[error("{engine} server {server}: {operation}: {kind}")]
pub struct EngineError {
    /// Which engine.
    pub engine: DatabaseEngine,
    /// Which server (`host:port`).
    pub server: String,
    /// What was being done (`create database "x"`).
    pub operation: String,
    /// What went wrong.
    pub kind: ErrorKind,
}

impl EngineError {
    /// Whether trying again later can succeed without anyone changing anything: the server is
    /// unreachable, starting up or shutting down, overloaded, or the operation hit a lock,
    /// deadlock or a session it had to wait for.
    pub fn is_transient(&self) -> bool {
        self.kind.is_transient()
    }
}

/// What went wrong in an [`EngineError`].
#[derive(Debug, thiserror::Error)]
pub enum ErrorKind {
    /// No connection could be made or kept (refused, timed out, reset, TLS failed). Transient.
    #[error("server unreachable: {0}")]
    Unreachable(String),
    /// The server refused the operation.
    #[error("{message} (SQLSTATE {code})")]
    Rejected {
        /// SQLSTATE (PostgreSQL) or SQLSTATE and error number (MariaDB, `42000/1064`).
        code: String,
        /// The server's message.
        message: String,
        /// Whether retrying can help (lock timeouts, deadlocks, shutdown in progress, too
        /// many connections).
        transient: bool,
    },
    /// A name the server cannot take as it is (empty, too long, containing NUL). Permanent.
    #[error("invalid name {name:?}: {reason}")]
    InvalidName {
        /// The name.
        name: String,
        /// Why.
        reason: String,
    },
    /// The administrator URL is malformed. Permanent.
    #[error("invalid administrator URL: {0}")]
    InvalidUrl(String),
    /// The database (or role) operated on does not exist. Permanent.
    #[error("{0} does not exist")]
    NotFound(String),
    /// Anything else (an unexpected reply). Permanent.
    #[error("{0}")]
    Other(String),
}

impl ErrorKind {
    /// See [`EngineError::is_transient`].
    pub fn is_transient(&self) -> bool {
        match self {
            ErrorKind::Unreachable(_) => true,
            ErrorKind::Rejected { transient, .. } => *transient,
            _ => false,
        }
    }
}

/// The context (`engine`, `server`, `operation`) an [`EngineError`] needs; each engine keeps
/// one and fills in the operation.
#[derive(Clone, Debug)]
pub(crate) struct ErrorContext {
    pub(crate) engine: DatabaseEngine,
    pub(crate) server: String,
}

/// The operation of everything that goes wrong with the administrator URL.
const PARSE_ADMIN_URL: &str = "parse administrator URL";

impl ErrorContext {
    /// The context for the server `admin_url` names, once it is a URL with one of `schemes`
    /// and a host (`default_port` where it names no port).
    pub(crate) fn for_admin_url(
        engine: DatabaseEngine,
        admin_url: &str,
        schemes: &[&str],
        default_port: u16,
    ) -> Result<Self, EngineError> {
        let unparsed = ErrorContext {
            engine,
            server: "(unknown)".into(),
        };
        let url = parse_admin_url(admin_url, schemes, |reason| {
            unparsed.error(PARSE_ADMIN_URL, ErrorKind::InvalidUrl(reason))
        })?;
        Ok(ErrorContext {
            engine,
            server: host_port(&url, default_port),
        })
    }

    /// The driver's connect options parsed from the administrator URL `url`.
    pub(crate) fn driver_options<O: FromStr>(&self, url: &str) -> Result<O, EngineError> {
        O::from_str(url).map_err(|_| {
            // The driver's message may quote the URL; say only that it refused it.
            self.error(
                PARSE_ADMIN_URL,
                ErrorKind::InvalidUrl("rejected by the driver".into()),
            )
        })
    }

    pub(crate) fn error(&self, operation: impl fmt::Display, kind: ErrorKind) -> EngineError {
        EngineError {
            engine: self.engine,
            server: self.server.clone(),
            operation: operation.to_string(),
            kind,
        }
    }

    /// An error from sqlx, classified by this engine's rules ([`classify`]).
    pub(crate) fn sql_error(&self, operation: impl fmt::Display, error: sqlx::Error) -> EngineError {
        let classify_database = match self.engine {
            DatabaseEngine::PostgreSQL => postgres::classify_database_error,
            DatabaseEngine::MySQL => mysql::classify_database_error,
        };
        self.error(operation, classify(error, classify_database))
    }

    /// The engine's `Debug` output: its type `name` and the server, nothing from the pool's
    /// options (they hold the password).
    pub(crate) fn fmt_engine(&self, f: &mut fmt::Formatter<'_>, name: &str) -> fmt::Result {
        f.debug_struct(name)
            .field("server", &self.server)
            .finish_non_exhaustive()
    }

    /// A connection with `options`, or an unreachable error saying `timed_out` after `timeout`.
    pub(crate) async fn connect_within<C: sqlx::Connection>(
        &self,
        operation: &str,
        options: &C::Options,
        timeout: Duration,
        timed_out: impl FnOnce() -> String,
    ) -> Result<C, EngineError> {
        match tokio::time::timeout(timeout, C::connect_with(options)).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(self.sql_error(operation, e)),
            Err(_) => Err(self.error(operation, ErrorKind::Unreachable(timed_out()))),
        }
    }

    /// Log in with `options` (within 10 s) and run `SELECT 1`: [`check_login`] for either engine.
    async fn log_in<C>(&self, operation: &str, options: &C::Options) -> Result<(), EngineError>
    where
        C: sqlx::Connection,
        for<'c> &'c mut C: sqlx::Executor<'c, Database = C::Database>,
        for<'q> <C::Database as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, C::Database>,
    {
        let timeout = Duration::from_secs(10);
        let mut conn: C = self
            .connect_within(operation, options, timeout, || "login timed out".into())
            .await?;
        let result = sqlx::query("SELECT 1").execute(&mut conn).await;
        let _ = conn.close().await;
        result.map(|_| ()).map_err(|e| self.sql_error(operation, e))
    }
}

/// The pool settings of both engines: at most `max_connections` (and at least one), none made
/// before they are needed or kept for more than a minute unused, each checked before use, and
/// waiting for one bounded by the connect timeout.
pub(crate) fn pool_options<DB: sqlx::Database>(options: &ConnectOptions) -> sqlx::pool::PoolOptions<DB> {
    sqlx::pool::PoolOptions::new()
        .max_connections(options.max_connections.max(1))
        .min_connections(0)
        .acquire_timeout(options.connect_timeout)
        .idle_timeout(Some(Duration::from_secs(60)))
        .test_before_acquire(true)
}

/// Run one statement built from quoted parts on `pool`: prepared (so exactly one statement)
/// and not cached, and outside any transaction.
pub(crate) async fn execute<DB>(pool: &sqlx::Pool<DB>, sql: &str) -> Result<(), sqlx::Error>
where
    DB: sqlx::Database + sqlx::database::HasStatementCache,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
{
    sqlx::query(sql).persistent(false).execute(pool).await.map(|_| ())
}

/// Turn a sqlx error into an [`ErrorKind`], with `classify_database` deciding for errors the
/// server reported. Messages are sqlx's, which never contain connection credentials.
pub(crate) fn classify(
    error: sqlx::Error,
    classify_database: impl FnOnce(&dyn sqlx::error::DatabaseError) -> ErrorKind,
) -> ErrorKind {
    match error {
        sqlx::Error::Database(db) => classify_database(db.as_ref()),
        sqlx::Error::Io(e) => ErrorKind::Unreachable(e.to_string()),
        sqlx::Error::Tls(e) => ErrorKind::Unreachable(format!("TLS: {e}")),
        sqlx::Error::PoolTimedOut => {
            ErrorKind::Unreachable("no connection within the connect timeout".into())
        }
        sqlx::Error::PoolClosed => ErrorKind::Other("the engine was closed".into()),
        sqlx::Error::WorkerCrashed => ErrorKind::Unreachable("connection worker crashed".into()),
        sqlx::Error::Protocol(e) => ErrorKind::Unreachable(format!("protocol error: {e}")),
        // Configuration errors can quote parts of the URL; say only what kind it is.
        sqlx::Error::Configuration(_) => ErrorKind::InvalidUrl("rejected by the driver".into()),
        other => ErrorKind::Other(other.to_string()),
    }
}

/// Host and port of a URL, with IPv6 hosts in brackets, for messages and connection strings.
pub(crate) fn host_port(url: &url::Url, default_port: u16) -> String {
    let host = match url.host() {
        Some(url::Host::Ipv6(addr)) => format!("[{addr}]"),
        Some(host) => host.to_string(),
        None => "localhost".to_string(),
    };
    format!("{host}:{}", url.port().unwrap_or(default_port))
}

/// Parse an administrator URL, checking its scheme, and never echoing it (it holds a password).
pub(crate) fn parse_admin_url(
    admin_url: &str,
    schemes: &[&str],
    context: impl Fn(String) -> EngineError,
) -> Result<url::Url, EngineError> {
    let url = url::Url::parse(admin_url).map_err(|e| context(format!("not a URL ({e})")))?;
    if !schemes.contains(&url.scheme()) {
        return Err(context(format!(
            "scheme {:?} is not one of {}",
            url.scheme(),
            schemes.join(", ")
        )));
    }
    if url.host().is_none() {
        return Err(context("no host".into()));
    }
    Ok(url)
}

/// `name` percent-encoded for a URL path segment.
pub(crate) fn encode_path_segment(name: &str) -> String {
    url::form_urlencoded::byte_serialize(name.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_kinds() {
        assert!(ErrorKind::Unreachable("refused".into()).is_transient());
        assert!(
            ErrorKind::Rejected {
                code: "40P01".into(),
                message: "deadlock".into(),
                transient: true
            }
            .is_transient()
        );
        assert!(!ErrorKind::NotFound("database \"x\"".into()).is_transient());
        assert!(!ErrorKind::InvalidUrl("x".into()).is_transient());
    }

    #[test]
    fn urls_are_checked_without_echoing_them() {
        let ctx = ErrorContext {
            engine: DatabaseEngine::PostgreSQL,
            server: "(unparsed)".into(),
        };
        let fail = |reason: String| ctx.error("parse URL", ErrorKind::InvalidUrl(reason));
        for bad in [
            "postgres://u:s3cr3t@",
            "http://u:s3cr3t@h/",
            "u:s3cr3t@host",
            "mysql://u:s3cr3t@h/",
        ] {
            let err = parse_admin_url(bad, &["postgres", "postgresql"], fail).unwrap_err();
            assert!(!err.to_string().contains("s3cr3t"), "{err}");
        }
        let url = parse_admin_url("postgresql://u:s3cr3t@[::1]/db", &["postgresql"], fail).unwrap();
        assert_eq!(host_port(&url, 5432), "[::1]:5432");
    }

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(encode_path_segment("default_db_1234"), "default_db_1234");
        assert_eq!(encode_path_segment("a b/c?d#e"), "a%20b%2Fc%3Fd%23e");
    }
}
