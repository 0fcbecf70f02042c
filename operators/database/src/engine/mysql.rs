//! The MariaDB engine (serving `engine: MySQL`; MariaDB 10.4 or later).
//!
//! * Databases are created with `utf8mb4`. MariaDB shows a user only the databases it has
//!   privileges on, so users of one database neither see nor reach another.
//! * Each user is the account `'<role>'@'%'` with `ALL PRIVILEGES ON <database>.*` and nothing
//!   else, the database name escaped so that its `_` are not wildcards
//!   ([`quote_grant_database`]). Tables have no owners in MariaDB, so dropping a user loses no data.
//! * Accounts cannot carry comments in MariaDB, so [`MySqlEngine::list_users`] finds a
//!   database's users by the name suffix [`crate::naming::role_suffix`] (a SHA-256 prefix of
//!   the database name, which nobody picks by accident), and [`MySqlEngine::drop_user`] refuses
//!   names without it.
//! * Passwords are sent as `mysql_native_password` hashes computed here ([`crate::password`]):
//!   `CREATE USER ... IDENTIFIED BY ?` is a syntax error in a prepared statement (verified on
//!   10.11), and the clear password in a literal would reach the server's logs.
//! * Sessions wait at most 30 s for metadata locks (`lock_wait_timeout`, default one year),
//!   so a `DROP DATABASE` behind an application's open transaction fails (transiently) instead
//!   of hanging.

use std::fmt;

use sqlx::mysql::{MySqlConnectOptions, MySqlDatabaseError, MySqlPool};
use sqlx::{ConnectOptions as _, Executor as _};

use super::{
    ConnectOptions, EngineError, ErrorContext, ErrorKind, UserChange, encode_path_segment, pool_options,
};
use crate::naming::role_suffix;
use crate::password::{Password, mariadb_native_hash};
use crate::types::DatabaseEngine;

/// The host part of every account this engine creates: any host.
pub const ACCOUNT_HOST: &str = "%";

/// Quote `name` as a MariaDB identifier: in backticks, with `` ` `` doubled. The only way names
/// reach SQL text in this engine; it works whatever `sql_mode` says (`ANSI_QUOTES` changes only
/// `"`). Account names are quoted the same way (`` `role`@`%` ``).
///
/// Refuses the empty name and NUL. Over-long names need no check here: MariaDB refuses them
/// (it does not truncate).
///
/// ```
/// use database_operator::engine::mysql::quote_ident;
/// assert_eq!(quote_ident("users").unwrap(), "`users`");
/// assert_eq!(quote_ident("x`; DROP DATABASE mysql; --").unwrap(), "`x``; DROP DATABASE mysql; --`");
/// assert!(quote_ident("").is_err());
/// ```
pub fn quote_ident(name: &str) -> Result<String, ErrorKind> {
    let invalid = |reason: &str| ErrorKind::InvalidName {
        name: name.to_string(),
        reason: reason.to_string(),
    };
    if name.is_empty() {
        return Err(invalid("empty"));
    }
    if name.contains('\0') {
        return Err(invalid("contains NUL"));
    }
    Ok(format!("`{}`", name.replace('`', "``")))
}

/// Quote `value` as a MariaDB string literal: `'...'` with `'` doubled. Refuses backslashes
/// and NUL, because what a backslash means depends on `NO_BACKSLASH_ESCAPES` in the session's
/// `sql_mode`; the only literals this engine writes are password hashes (`*` and hex digits).
///
/// ```
/// use database_operator::engine::mysql::quote_literal;
/// assert_eq!(quote_literal("it's").unwrap(), "'it''s'");
/// assert!(quote_literal(r"a\b").is_err());
/// ```
pub fn quote_literal(value: &str) -> Result<String, ErrorKind> {
    if value.contains(['\\', '\0']) {
        return Err(ErrorKind::Other(
            "a MariaDB string literal here cannot contain a backslash or NUL".into(),
        ));
    }
    Ok(format!("'{}'", value.replace('\'', "''")))
}

/// Quote the database `name` for `GRANT ... ON <db>.*`, where `_` and `%` are wildcards and
/// `\` escapes them: all three are escaped, so the grant covers exactly `name`. (Unescaped,
/// a grant on `a_b` would also cover a database `axb`.)
///
/// ```
/// use database_operator::engine::mysql::quote_grant_database;
/// assert_eq!(quote_grant_database("my_db").unwrap(), r"`my\_db`");
/// ```
pub fn quote_grant_database(name: &str) -> Result<String, ErrorKind> {
    let escaped = name.replace('\\', "\\\\").replace('_', "\\_").replace('%', "\\%");
    quote_ident(&escaped)
}

/// `` `role`@`%` ``.
fn account(role: &str) -> Result<String, ErrorKind> {
    Ok(format!("{}@{}", quote_ident(role)?, quote_ident(ACCOUNT_HOST)?))
}

/// A MariaDB server, through a small pool of administrator connections.
#[derive(Clone)]
pub struct MySqlEngine {
    pool: MySqlPool,
    ctx: ErrorContext,
}

// By hand: the pool's options hold the password.
impl fmt::Debug for MySqlEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.ctx.fmt_engine(f, "MySqlEngine")
    }
}

impl MySqlEngine {
    /// See [`super::Engine::connect_with`].
    pub fn connect(admin_url: &str, options: &ConnectOptions) -> Result<Self, EngineError> {
        let ctx = ErrorContext::for_admin_url(DatabaseEngine::MySQL, admin_url, &["mysql", "mariadb"], 3306)?;
        // sqlx knows only the mysql scheme.
        let normalized = admin_url.replacen("mariadb://", "mysql://", 1);
        let my_options = ctx
            .driver_options::<MySqlConnectOptions>(&normalized)?
            // Statements hold password hashes; keep them out of the operator's logs.
            .disable_statement_logging();
        let pool = pool_options::<sqlx::MySql>(options)
            .after_connect(|conn, _meta| {
                Box::pin(async move {
                    conn.execute("SET SESSION lock_wait_timeout = 30").await?;
                    Ok(())
                })
            })
            .connect_lazy_with(my_options);
        Ok(MySqlEngine { pool, ctx })
    }

    /// See [`super::Engine::server`].
    pub fn server(&self) -> &str {
        &self.ctx.server
    }

    /// See [`super::Engine::connection_string`].
    pub fn connection_string(&self, database: &str) -> String {
        format!("mysql://{}/{}", self.ctx.server, encode_path_segment(database))
    }

    /// See [`super::Engine::server_version`].
    pub async fn server_version(&self) -> Result<String, EngineError> {
        sqlx::query_scalar("SELECT VERSION()")
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.error("read server version", e))
    }

    /// See [`super::Engine::database_exists`].
    pub async fn database_exists(&self, name: &str) -> Result<bool, EngineError> {
        let found: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?")
                .bind(name)
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| self.error(format_args!("look up database {name:?}"), e))?;
        Ok(found.is_some())
    }

    /// See [`super::Engine::ensure_database`].
    pub async fn ensure_database(&self, name: &str) -> Result<bool, EngineError> {
        let op = format!("create database {name:?}");
        let q = quote_ident(name).map_err(|k| self.ctx.error(&op, k))?;
        if self.database_exists(name).await? {
            return Ok(false);
        }
        self.execute(&format!(
            "CREATE DATABASE IF NOT EXISTS {q} CHARACTER SET utf8mb4"
        ))
        .await
        .map_err(|e| self.error(&op, e))?;
        Ok(true)
    }

    /// See [`super::Engine::drop_database`].
    pub async fn drop_database(&self, name: &str) -> Result<bool, EngineError> {
        let op = format!("drop database {name:?}");
        let q = quote_ident(name).map_err(|k| self.ctx.error(&op, k))?;
        if !self.database_exists(name).await? {
            return Ok(false);
        }
        let sessions: Vec<u64> = sqlx::query_scalar(
            // PROCESSLIST.ID is a signed BIGINT in MariaDB: cast it to what it is.
            "SELECT CAST(ID AS UNSIGNED) FROM information_schema.PROCESSLIST WHERE DB = ? AND ID <> CONNECTION_ID()",
        )
        .bind(name)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.error(&op, e))?;
        self.kill_sessions(&sessions, &op).await?;
        self.execute(&format!("DROP DATABASE IF EXISTS {q}"))
            .await
            .map_err(|e| self.error(&op, e))?;
        Ok(true)
    }

    /// See [`super::Engine::ensure_user`].
    pub async fn ensure_user(
        &self,
        role: &str,
        password: &Password,
        database: &str,
    ) -> Result<UserChange, EngineError> {
        let op = format!("ensure user {role:?} of database {database:?}");
        let fail = |k| self.ctx.error(&op, k);
        let q_account = account(role).map_err(fail)?;
        let q_db = quote_grant_database(database).map_err(fail)?;
        if !self.database_exists(database).await? {
            return Err(fail(ErrorKind::NotFound(format!("database {database:?}"))));
        }
        let hash = mariadb_native_hash(password);
        let q_hash = quote_literal(&hash).map_err(fail)?;
        let stored: Option<String> = sqlx::query_scalar(
            "SELECT CONVERT(authentication_string USING utf8mb4) FROM mysql.user WHERE User = ? AND Host = ?",
        )
        .bind(role)
        .bind(ACCOUNT_HOST)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.error(&op, e))?;
        let change = match stored {
            None => UserChange::Created,
            Some(stored) if stored == hash => UserChange::Unchanged,
            Some(_) => UserChange::PasswordChanged,
        };
        match change {
            UserChange::Created => {
                match self
                    .execute(&format!(
                        "CREATE USER {q_account} IDENTIFIED BY PASSWORD {q_hash}"
                    ))
                    .await
                {
                    Ok(()) => {}
                    // ER_CANNOT_USER: created concurrently; the next attempt takes the ALTER path.
                    Err(e) if error_number(&e) == Some(1396) => {
                        return Err(fail(ErrorKind::Rejected {
                            code: "HY000/1396".into(),
                            message: format!("user {role:?} was created concurrently"),
                            transient: true,
                        }));
                    }
                    Err(e) => return Err(self.error(&op, e)),
                }
            }
            UserChange::PasswordChanged => self
                .execute(&format!("ALTER USER {q_account} IDENTIFIED BY PASSWORD {q_hash}"))
                .await
                .map_err(|e| self.error(&op, e))?,
            UserChange::Unchanged => {}
        }
        self.execute(&format!("GRANT ALL PRIVILEGES ON {q_db}.* TO {q_account}"))
            .await
            .map_err(|e| self.error(&op, e))?;
        Ok(change)
    }

    /// See [`super::Engine::drop_user`]. Refuses (permanently) names without the suffix of
    /// `database`.
    pub async fn drop_user(&self, role: &str, database: &str) -> Result<bool, EngineError> {
        let op = format!("drop user {role:?} of database {database:?}");
        let fail = |k| self.ctx.error(&op, k);
        let q_account = account(role).map_err(fail)?;
        if !role.ends_with(&role_suffix(database)) {
            return Err(fail(ErrorKind::Other(format!(
                "user {role:?} was not created by this operator for database {database:?}; not dropping it"
            ))));
        }
        let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM mysql.user WHERE User = ? AND Host = ?")
            .bind(role)
            .bind(ACCOUNT_HOST)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.error(&op, e))?;
        if exists.is_none() {
            return Ok(false);
        }
        // DROP USER leaves running sessions alone; end them so access stops now.
        let sessions: Vec<u64> =
            // MariaDB reports PROCESSLIST.ID as a signed BIGINT: cast it to what it is.
            sqlx::query_scalar("SELECT CAST(ID AS UNSIGNED) FROM information_schema.PROCESSLIST WHERE USER = ?")
                .bind(role)
                .fetch_all(&self.pool)
                .await
                .map_err(|e| self.error(&op, e))?;
        self.kill_sessions(&sessions, &op).await?;
        // Removes the account's privileges with it.
        self.execute(&format!("DROP USER IF EXISTS {q_account}"))
            .await
            .map_err(|e| self.error(&op, e))?;
        Ok(true)
    }

    /// See [`super::Engine::list_users`].
    pub async fn list_users(&self, database: &str) -> Result<Vec<String>, EngineError> {
        let suffix = role_suffix(database);
        sqlx::query_scalar(
            "SELECT CONVERT(User USING utf8mb4) FROM mysql.user \
             WHERE Host = ? AND RIGHT(User, ?) = ? ORDER BY User",
        )
        .bind(ACCOUNT_HOST)
        .bind(suffix.chars().count() as i64)
        .bind(&suffix)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.error(format_args!("list users of database {database:?}"), e))
    }

    /// See [`super::Engine::database_size`].
    pub async fn database_size(&self, name: &str) -> Result<u64, EngineError> {
        let op = format!("measure database {name:?}");
        if !self.database_exists(name).await? {
            return Err(self
                .ctx
                .error(op, ErrorKind::NotFound(format!("database {name:?}"))));
        }
        sqlx::query_scalar(
            "SELECT CAST(COALESCE(SUM(DATA_LENGTH + INDEX_LENGTH), 0) AS UNSIGNED) \
             FROM information_schema.TABLES WHERE TABLE_SCHEMA = ?",
        )
        .bind(name)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| self.error(&op, e))
    }

    /// See [`super::Engine::close`].
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// End sessions by id; ones that ended by themselves meanwhile are fine.
    async fn kill_sessions(&self, ids: &[u64], op: &str) -> Result<(), EngineError> {
        for id in ids {
            // `id` is a number, so formatting it cannot inject anything.
            match self.execute(&format!("KILL CONNECTION {id}")).await {
                // ER_NO_SUCH_THREAD
                Err(e) if error_number(&e) == Some(1094) => {}
                Err(e) => return Err(self.error(op, e)),
                Ok(()) => {}
            }
        }
        Ok(())
    }

    /// See [`super::execute`].
    async fn execute(&self, sql: &str) -> Result<(), sqlx::Error> {
        super::execute(&self.pool, sql).await
    }

    fn error(&self, operation: impl fmt::Display, e: sqlx::Error) -> EngineError {
        self.ctx.sql_error(operation, e)
    }
}

/// MariaDB's error number of an error the server reported.
fn error_number(e: &sqlx::Error) -> Option<u16> {
    match e {
        sqlx::Error::Database(db) => db.try_downcast_ref::<MySqlDatabaseError>().map(|e| e.number()),
        _ => None,
    }
}

/// Transient: too many connections (1040, 1203), out of resources (1041), shutdown in
/// progress (1053), network errors (1152-1161), lock wait timeout (1205), deadlock (1213),
/// interrupted or killed (1317, 1927), idle disconnect (4031). Everything else is permanent.
pub(super) fn classify_database_error(db: &dyn sqlx::error::DatabaseError) -> ErrorKind {
    let number = db.try_downcast_ref::<MySqlDatabaseError>().map(|e| e.number());
    let sqlstate = db
        .code()
        .map(|c| c.into_owned())
        .unwrap_or_else(|| "HY000".into());
    let transient = matches!(
        number,
        Some(1040 | 1041 | 1053 | 1152..=1161 | 1203 | 1205 | 1213 | 1317 | 1927 | 4031)
    );
    ErrorKind::Rejected {
        code: match number {
            Some(n) => format!("{sqlstate}/{n}"),
            None => sqlstate,
        },
        message: db.message().to_string(),
        transient,
    }
}

/// The options of [`super::check_login`].
pub(super) fn login_options(
    host: &str,
    port: u16,
    database: &str,
    user: &str,
    password: &Password,
) -> MySqlConnectOptions {
    MySqlConnectOptions::new()
        .host(host)
        .port(port)
        .database(database)
        .username(user)
        .password(password.expose())
        .disable_statement_logging()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Undo `quote_ident` the way MariaDB's lexer reads a backtick-quoted identifier.
    fn unquote_ident(quoted: &str) -> Option<String> {
        let inner = quoted.strip_prefix('`')?.strip_suffix('`')?;
        let mut out = String::new();
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            if c == '`' && chars.next() != Some('`') {
                return None;
            }
            out.push(c);
        }
        Some(out)
    }

    #[test]
    fn identifiers_and_accounts() {
        assert_eq!(quote_ident("`").unwrap(), "````");
        assert_eq!(quote_ident("a'b\"c").unwrap(), "`a'b\"c`");
        assert!(quote_ident("a\0").is_err());
        assert_eq!(account("appuser_12345678").unwrap(), "`appuser_12345678`@`%`");
        assert_eq!(quote_grant_database(r"a_b%c\d`").unwrap(), r"`a\_b\%c\\d```");
    }

    #[test]
    fn literals() {
        assert_eq!(quote_literal("*ABCDEF").unwrap(), "'*ABCDEF'");
        assert_eq!(quote_literal("'").unwrap(), "''''");
        assert!(quote_literal("\\").is_err());
        assert!(quote_literal("\0").is_err());
    }

    proptest! {
        #[test]
        fn quoted_identifiers_read_back_as_themselves(name in "\\PC{1,20}|[\"'`;\\\\ -]{1,10}") {
            let quoted = quote_ident(&name).unwrap();
            prop_assert_eq!(unquote_ident(&quoted), Some(name));
        }
    }
}
