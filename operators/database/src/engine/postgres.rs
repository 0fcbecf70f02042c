//! The PostgreSQL engine (PostgreSQL 13 or later, for `DROP DATABASE ... WITH (FORCE)`).
//!
//! * Databases are owned by the administrator; `CONNECT` and `TEMPORARY` are revoked from
//!   `PUBLIC`, so only the database's own roles (granted `ALL` on it) can connect.
//! * Each user is a `LOGIN` role with no other attributes, granted `ALL` on its database and
//!   `ALL` on that database's `public` schema (which PostgreSQL 15 no longer opens to
//!   everyone), so it can create tables. Objects belong to the role that created them; when a
//!   role is dropped they are reassigned to the administrator, not dropped.
//! * Roles carry a comment `managed by database-operator for database <name>`, set in the same
//!   transaction that creates them; [`PostgresEngine::list_users`] and
//!   [`PostgresEngine::drop_user`] act only on roles with that comment, so a role someone else
//!   made is never dropped, whatever its name or whatever `status.users` says.
//! * Passwords are sent as SCRAM-SHA-256 verifiers computed here ([`crate::password`]).
//!   `CREATE ROLE ... PASSWORD $1` is not possible (utility statements take no parameters), and
//!   the alternatives (`format('%L')` in a `DO` block, an escaped literal of the clear
//!   password) would put the password itself into statements the server may log.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool};
use sqlx::{ConnectOptions as _, Connection as _};

use super::{
    ConnectOptions, EngineError, ErrorContext, ErrorKind, UserChange, encode_path_segment, pool_options,
};
use crate::naming::{POSTGRES_MAX_IDENTIFIER, role_suffix};
use crate::password::{Password, postgres_scram_verifier, scram_verifier_matches};
use crate::types::DatabaseEngine;

/// Quote `name` as a PostgreSQL identifier: in double quotes, with `"` doubled. The only way
/// names reach SQL text in this engine.
///
/// Refuses what PostgreSQL would not keep as given: the empty name, NUL (which no PostgreSQL
/// string can hold) and names over 63 bytes, which the server would silently truncate, so
/// `DROP DATABASE` of a long name could drop another database whose name is its first 63
/// bytes.
///
/// ```
/// use database_operator::engine::postgres::quote_ident;
/// assert_eq!(quote_ident("users").unwrap(), r#""users""#);
/// assert_eq!(quote_ident(r#"x"; DROP DATABASE postgres; --"#).unwrap(), r#""x""; DROP DATABASE postgres; --""#);
/// assert!(quote_ident("").is_err());
/// assert!(quote_ident(&"x".repeat(64)).is_err());
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
    if name.len() > POSTGRES_MAX_IDENTIFIER {
        return Err(invalid("longer than 63 bytes; PostgreSQL would truncate it"));
    }
    Ok(format!("\"{}\"", name.replace('"', "\"\"")))
}

/// Quote `value` as a PostgreSQL string literal that means `value` whatever
/// `standard_conforming_strings` is: `'...'` with `'` doubled, or, when `value` contains a
/// backslash, an escape string `E'...'` with `\` doubled too. Refuses NUL.
///
/// ```
/// use database_operator::engine::postgres::quote_literal;
/// assert_eq!(quote_literal("it's").unwrap(), "'it''s'");
/// assert_eq!(quote_literal(r"a\b").unwrap(), r"E'a\\b'");
/// ```
pub fn quote_literal(value: &str) -> Result<String, ErrorKind> {
    if value.contains('\0') {
        return Err(ErrorKind::Other("a string literal cannot contain NUL".into()));
    }
    let doubled = value.replace('\'', "''");
    if value.contains('\\') {
        Ok(format!("E'{}'", doubled.replace('\\', "\\\\")))
    } else {
        Ok(format!("'{doubled}'"))
    }
}

/// The comment that marks a role as created by this operator for `database`.
pub fn role_comment(database: &str) -> String {
    format!("managed by database-operator for database {database}")
}

/// How long [`PostgresEngine::lock_database`] waits for an idle holder of a database's lock
/// before ending its session.
const LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);

/// The advisory lock key text of database `name` (hashed by the server).
fn lock_key(name: &str) -> String {
    format!("database-operator/database/{name}")
}

/// Give the lock of [`PostgresEngine::lock_database`] back; a connection that cannot is closed,
/// which releases it too (it must not go back to the pool holding the lock).
async fn unlock_database(mut conn: sqlx::pool::PoolConnection<sqlx::Postgres>, name: &str) {
    let unlocked = sqlx::query("SELECT pg_advisory_unlock(hashtextextended($1, 0))")
        .bind(lock_key(name))
        .execute(&mut *conn)
        .await;
    if unlocked.is_err() {
        let _ = sqlx::Connection::close(conn.detach()).await;
    }
}

/// A PostgreSQL server, through a small pool of administrator connections.
#[derive(Clone)]
pub struct PostgresEngine {
    pool: PgPool,
    /// Shared, not copied: the options are large and the engine is cloned freely.
    options: Arc<PgConnectOptions>,
    connect_timeout: Duration,
    ctx: ErrorContext,
}

// By hand: the connect options hold the password.
impl fmt::Debug for PostgresEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.ctx.fmt_engine(f, "PostgresEngine")
    }
}

impl PostgresEngine {
    /// See [`super::Engine::connect_with`].
    pub fn connect(admin_url: &str, options: &ConnectOptions) -> Result<Self, EngineError> {
        let ctx = ErrorContext::for_admin_url(
            DatabaseEngine::PostgreSQL,
            admin_url,
            &["postgres", "postgresql"],
            5432,
        )?;
        let pg_options = ctx
            .driver_options::<PgConnectOptions>(admin_url)?
            .application_name("database-operator")
            // Statements hold password verifiers; keep them out of the operator's logs.
            .disable_statement_logging();
        let pool = pool_options(options).connect_lazy_with(pg_options.clone());
        Ok(PostgresEngine {
            pool,
            options: Arc::new(pg_options),
            connect_timeout: options.connect_timeout,
            ctx,
        })
    }

    /// See [`super::Engine::server`].
    pub fn server(&self) -> &str {
        &self.ctx.server
    }

    /// See [`super::Engine::connection_string`].
    pub fn connection_string(&self, database: &str) -> String {
        format!(
            "postgresql://{}/{}",
            self.ctx.server,
            encode_path_segment(database)
        )
    }

    /// See [`super::Engine::server_version`].
    pub async fn server_version(&self) -> Result<String, EngineError> {
        sqlx::query_scalar("SELECT current_setting('server_version')")
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.error("read server version", e))
    }

    /// See [`super::Engine::database_exists`].
    pub async fn database_exists(&self, name: &str) -> Result<bool, EngineError> {
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.error(format_args!("look up database {name:?}"), e))
    }

    /// See [`super::Engine::ensure_database`].
    pub async fn ensure_database(&self, name: &str) -> Result<bool, EngineError> {
        let op = format!("create database {name:?}");
        let q = quote_ident(name).map_err(|k| self.ctx.error(&op, k))?;
        let mut conn = self.lock_database(name, &op).await?;
        let result = async {
            let mut created = false;
            let exists: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                    .bind(name)
                    .fetch_one(&mut *conn)
                    .await?;
            if !exists {
                // Not in a transaction: CREATE DATABASE cannot run in one.
                let create = format!("CREATE DATABASE {q}");
                match sqlx::query(&create).persistent(false).execute(&mut *conn).await {
                    Ok(_) => created = true,
                    // Created concurrently since we looked (42P04), or so concurrently that
                    // the catalog's unique index caught it (23505): it exists now.
                    Err(e) if matches!(sqlstate(&e).as_deref(), Some("42P04" | "23505")) => {}
                    Err(e) => return Err(e),
                }
            }
            let revoke = format!("REVOKE ALL ON DATABASE {q} FROM PUBLIC");
            sqlx::query(&revoke).persistent(false).execute(&mut *conn).await?;
            Ok(created)
        }
        .await;
        unlock_database(conn, name).await;
        result.map_err(|e| self.error(&op, e))
    }

    /// See [`super::Engine::drop_database`].
    pub async fn drop_database(&self, name: &str) -> Result<bool, EngineError> {
        let op = format!("drop database {name:?}");
        let q = quote_ident(name).map_err(|k| self.ctx.error(&op, k))?;
        // After the lock, a CREATE DATABASE a killed predecessor left running has finished
        // (see `lock_database`), so what is dropped now stays dropped.
        let mut conn = self.lock_database(name, &op).await?;
        let result = async {
            let exists: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                    .bind(name)
                    .fetch_one(&mut *conn)
                    .await?;
            if !exists {
                return Ok(false);
            }
            // FORCE terminates the other sessions connected to it (PostgreSQL 13+).
            let drop = format!("DROP DATABASE IF EXISTS {q} WITH (FORCE)");
            sqlx::query(&drop).persistent(false).execute(&mut *conn).await?;
            Ok(true)
        }
        .await;
        unlock_database(conn, name).await;
        result.map_err(|e| self.error(&op, e))
    }

    /// A pooled connection holding the session advisory lock of database `name`, taken by
    /// everything that creates or drops it. A predecessor killed in the middle of
    /// `CREATE DATABASE` leaves its server process running the statement to the end, holding
    /// this lock until it notices its client is gone; without the lock, a cleanup that ran
    /// meanwhile found no database, removed the finalizer, and the database appeared
    /// afterwards, owned by nothing (found by `crwatch::testing`: killed right before its
    /// 5th write while another worker was creating a database that was then deleted).
    async fn lock_database(
        &self,
        name: &str,
        op: &str,
    ) -> Result<sqlx::pool::PoolConnection<sqlx::Postgres>, EngineError> {
        let mut conn = self.pool.acquire().await.map_err(|e| self.error(op, e))?;
        let waiting = std::time::Instant::now();
        loop {
            let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
                .bind(lock_key(name))
                .fetch_one(&mut *conn)
                .await
                .map_err(|e| self.error(op, e))?;
            if got {
                return Ok(conn);
            }
            // The holder is a predecessor (one reconcile per Database at a time here). One
            // still running a statement is waited for; one idle for this long is a client
            // that is gone without its server process knowing (a crashed node: no FIN, and
            // TCP keepalive takes hours), and would hold the lock until then: end it.
            if waiting.elapsed() >= LOCK_PATIENCE {
                sqlx::query(
                    "SELECT pg_terminate_backend(a.pid) FROM pg_locks l \
                     JOIN pg_stat_activity a ON a.pid = l.pid \
                     WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
                     AND l.classid::bigint = (hashtextextended($1, 0) >> 32) & 4294967295 \
                     AND l.objid::bigint = hashtextextended($1, 0) & 4294967295 \
                     AND a.state LIKE 'idle%' AND a.pid <> pg_backend_pid()",
                )
                .bind(lock_key(name))
                .execute(&mut *conn)
                .await
                .map_err(|e| self.error(op, e))?;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
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
        let q_role = quote_ident(role).map_err(fail)?;
        let q_db = quote_ident(database).map_err(fail)?;
        if !self.database_exists(database).await? {
            return Err(fail(ErrorKind::NotFound(format!("database {database:?}"))));
        }
        let existing = self.role_comment_of(role).await?;
        let change = match &existing {
            None => UserChange::Created,
            Some(_) => match self.stored_verifier(role).await? {
                Some(verifier) if scram_verifier_matches(&verifier, password) => UserChange::Unchanged,
                _ => UserChange::PasswordChanged,
            },
        };
        if let Some(comment) = existing.as_ref().and_then(|c| c.as_deref())
            && comment != role_comment(database)
        {
            return Err(fail(ErrorKind::Other(format!(
                "role {role:?} exists and belongs to something else (its comment: {comment:?})"
            ))));
        }
        let verifier = quote_literal(&postgres_scram_verifier(password)).map_err(fail)?;
        let comment = quote_literal(&role_comment(database)).map_err(fail)?;
        let mut statements = Vec::new();
        match change {
            UserChange::Created => statements.push(format!(
                "CREATE ROLE {q_role} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION \
                 NOBYPASSRLS PASSWORD {verifier}"
            )),
            UserChange::PasswordChanged => {
                statements.push(format!("ALTER ROLE {q_role} WITH LOGIN PASSWORD {verifier}"))
            }
            UserChange::Unchanged => statements.push(format!("ALTER ROLE {q_role} WITH LOGIN")),
        }
        statements.push(format!("COMMENT ON ROLE {q_role} IS {comment}"));
        statements.push(format!("GRANT ALL PRIVILEGES ON DATABASE {q_db} TO {q_role}"));
        // One transaction: a role exists with its comment and grant, or not at all.
        let result: Result<(), sqlx::Error> = async {
            let mut tx = self.pool.begin().await?;
            for sql in &statements {
                sqlx::query(sql).persistent(false).execute(&mut *tx).await?;
            }
            tx.commit().await
        }
        .await;
        match result {
            Ok(()) => {}
            // Created concurrently since we looked; the next attempt takes the ALTER path.
            Err(e) if sqlstate(&e).as_deref() == Some("42710") => {
                return Err(fail(ErrorKind::Rejected {
                    code: "42710".into(),
                    message: format!("role {role:?} was created concurrently"),
                    transient: true,
                }));
            }
            Err(e) => return Err(self.error(&op, e)),
        }
        // Schema privileges live in the database itself.
        let mut conn = self.connect_to(database, &op).await?;
        let result = async {
            let public: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'public')")
                    .fetch_one(&mut conn)
                    .await?;
            if public {
                sqlx::query(&format!("GRANT ALL ON SCHEMA public TO {q_role}"))
                    .persistent(false)
                    .execute(&mut conn)
                    .await?;
            }
            Ok::<_, sqlx::Error>(())
        }
        .await;
        let _ = conn.close().await;
        result.map_err(|e| self.error(&op, e))?;
        Ok(change)
    }

    /// See [`super::Engine::drop_user`]. Refuses (permanently) to drop a role that does not
    /// carry this operator's comment for `database`.
    pub async fn drop_user(&self, role: &str, database: &str) -> Result<bool, EngineError> {
        let op = format!("drop user {role:?} of database {database:?}");
        let fail = |k| self.ctx.error(&op, k);
        let q_role = quote_ident(role).map_err(fail)?;
        let Some(comment) = self.role_comment_of(role).await? else {
            return Ok(false);
        };
        if comment.as_deref() != Some(role_comment(database).as_str()) {
            return Err(fail(ErrorKind::Other(format!(
                "role {role:?} was not created by this operator for database {database:?}; not dropping it"
            ))));
        }
        sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1")
            .bind(role)
            .execute(&self.pool)
            .await
            .map_err(|e| self.error(&op, e))?;
        if self.database_exists(database).await? {
            // What it owns in its database goes to the administrator; DROP OWNED then removes
            // its privileges there and on the database itself.
            let mut conn = self.connect_to(database, &op).await?;
            let result = async {
                for sql in [
                    format!("REASSIGN OWNED BY {q_role} TO CURRENT_USER"),
                    format!("DROP OWNED BY {q_role}"),
                ] {
                    sqlx::query(&sql).persistent(false).execute(&mut conn).await?;
                }
                Ok::<_, sqlx::Error>(())
            }
            .await;
            let _ = conn.close().await;
            result.map_err(|e| self.error(&op, e))?;
        }
        // Privileges on shared objects and anything in the administrator's database.
        self.execute(&format!("DROP OWNED BY {q_role}"))
            .await
            .map_err(|e| self.error(&op, e))?;
        self.execute(&format!("DROP ROLE IF EXISTS {q_role}"))
            .await
            .map_err(|e| self.error(&op, e))?;
        Ok(true)
    }

    /// See [`super::Engine::list_users`].
    pub async fn list_users(&self, database: &str) -> Result<Vec<String>, EngineError> {
        sqlx::query_scalar(
            "SELECT rolname::text FROM pg_roles \
             WHERE right(rolname, $1) = $2 AND shobj_description(oid, 'pg_authid') = $3 \
             ORDER BY rolname",
        )
        .bind(role_suffix(database).chars().count() as i32)
        .bind(role_suffix(database))
        .bind(role_comment(database))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.error(format_args!("list users of database {database:?}"), e))
    }

    /// See [`super::Engine::database_size`].
    pub async fn database_size(&self, name: &str) -> Result<u64, EngineError> {
        let op = format!("measure database {name:?}");
        let size: Option<i64> =
            sqlx::query_scalar("SELECT pg_database_size(datname) FROM pg_database WHERE datname = $1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| self.error(&op, e))?;
        match size {
            Some(bytes) => Ok(u64::try_from(bytes).unwrap_or(0)),
            None => Err(self
                .ctx
                .error(&op, ErrorKind::NotFound(format!("database {name:?}")))),
        }
    }

    /// See [`super::Engine::close`].
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// `None` if `role` does not exist, else its comment (`None` if it has none).
    async fn role_comment_of(&self, role: &str) -> Result<Option<Option<String>>, EngineError> {
        let row: Option<(Option<String>,)> =
            sqlx::query_as("SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = $1")
                .bind(role)
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| self.error(format_args!("look up role {role:?}"), e))?;
        Ok(row.map(|(comment,)| comment))
    }

    /// The stored password verifier of `role`, or `None` if it has none or the administrator
    /// may not read `pg_authid` (not a superuser): then the password is simply set again.
    async fn stored_verifier(&self, role: &str) -> Result<Option<String>, EngineError> {
        let result: Result<Option<Option<String>>, sqlx::Error> =
            sqlx::query_scalar("SELECT rolpassword FROM pg_authid WHERE rolname = $1")
                .bind(role)
                .fetch_optional(&self.pool)
                .await;
        match result {
            Ok(verifier) => Ok(verifier.flatten()),
            Err(e) if sqlstate(&e).as_deref() == Some("42501") => Ok(None),
            Err(e) => Err(self.error(format_args!("read password of role {role:?}"), e)),
        }
    }

    /// See [`super::execute`].
    async fn execute(&self, sql: &str) -> Result<(), sqlx::Error> {
        super::execute(&self.pool, sql).await
    }

    /// A connection to `database` as the administrator (for per-database privileges).
    async fn connect_to(&self, database: &str, op: &str) -> Result<PgConnection, EngineError> {
        let options = (*self.options).clone().database(database);
        self.ctx
            .connect_within(op, &options, self.connect_timeout, || {
                format!("no connection to {database:?} within the connect timeout")
            })
            .await
    }

    fn error(&self, operation: impl fmt::Display, e: sqlx::Error) -> EngineError {
        self.ctx.sql_error(operation, e)
    }
}

/// The SQLSTATE of an error the server reported.
fn sqlstate(e: &sqlx::Error) -> Option<String> {
    match e {
        sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
        _ => None,
    }
}

/// Transient: connection exceptions (08), insufficient resources (53), shutdown and startup
/// (57P01-57P03), cancelled statements (57014), serialization failures and deadlocks (40001,
/// 40P01), objects in use and lock timeouts (55006, 55P03). Everything else is permanent.
pub(super) fn classify_database_error(db: &dyn sqlx::error::DatabaseError) -> ErrorKind {
    let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
    let transient = code.starts_with("08")
        || code.starts_with("53")
        || matches!(
            code.as_str(),
            // 23505 from DDL is a race on a system catalog with another session (a concurrent
            // CREATE of the same role or database): the next attempt sees the winner's result.
            "57P01" | "57P02" | "57P03" | "57014" | "40001" | "40P01" | "55006" | "55P03" | "23505"
        );
    ErrorKind::Rejected {
        code,
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
) -> PgConnectOptions {
    PgConnectOptions::new()
        .host(host)
        .port(port)
        .database(database)
        .username(user)
        .password(password.expose())
        .application_name("database-operator")
        .disable_statement_logging()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Undo `quote_ident` the way PostgreSQL's lexer reads a quoted identifier.
    fn unquote_ident(quoted: &str) -> Option<String> {
        let inner = quoted.strip_prefix('"')?.strip_suffix('"')?;
        let mut out = String::new();
        let mut chars = inner.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '"' {
                // Inside, a quote must be doubled; a lone one would end the identifier.
                if chars.next() != Some('"') {
                    return None;
                }
            }
            out.push(c);
        }
        Some(out)
    }

    /// Undo `quote_literal` the way PostgreSQL reads `'...'` (standard_conforming_strings on)
    /// and `E'...'` literals (only `\\` and `''` appear in ours).
    fn unquote_literal(quoted: &str) -> Option<String> {
        let (escape, body) = match quoted.strip_prefix("E'") {
            Some(rest) => (true, rest),
            None => (false, quoted.strip_prefix('\'')?),
        };
        let body = body.strip_suffix('\'')?;
        let mut out = String::new();
        let mut chars = body.chars();
        while let Some(c) = chars.next() {
            match c {
                '\'' if chars.next() != Some('\'') => return None,
                '\\' if escape => out.push(chars.next()?),
                '\\' => out.push('\\'),
                c => out.push(c),
            }
        }
        Some(out)
    }

    #[test]
    fn identifiers() {
        assert_eq!(quote_ident("a").unwrap(), "\"a\"");
        assert_eq!(quote_ident("A b").unwrap(), "\"A b\"");
        assert_eq!(quote_ident("\"").unwrap(), "\"\"\"\"");
        assert_eq!(quote_ident("名前").unwrap(), "\"名前\"");
        assert!(quote_ident(&"x".repeat(63)).is_ok());
        // 21 three-byte characters are 63 bytes; 22 are 66.
        assert!(quote_ident(&"名".repeat(21)).is_ok());
        assert!(quote_ident(&"名".repeat(22)).is_err());
        assert!(quote_ident("a\0b").is_err());
    }

    #[test]
    fn literals() {
        assert_eq!(quote_literal("").unwrap(), "''");
        assert_eq!(
            quote_literal("'; DROP ROLE x; --").unwrap(),
            "'''; DROP ROLE x; --'"
        );
        assert_eq!(quote_literal(r"\'").unwrap(), r"E'\\'''");
        assert!(quote_literal("\0").is_err());
    }

    proptest! {
        #[test]
        fn quoted_identifiers_read_back_as_themselves(name in "\\PC{1,20}|[\"'`;\\\\ -]{1,10}") {
            prop_assume!(name.len() <= 63);
            let quoted = quote_ident(&name).unwrap();
            prop_assert_eq!(unquote_ident(&quoted), Some(name));
        }

        #[test]
        fn quoted_literals_read_back_as_themselves(value in "\\PC{0,20}|[\"'`;\\\\ -]{0,10}") {
            let quoted = quote_literal(&value).unwrap();
            prop_assert_eq!(unquote_literal(&quoted), Some(value));
        }
    }
}
