//! The engines against real servers: one PostgreSQL and one MariaDB per test binary (started
//! from the Debian binaries by `crwatch-testsupport`), each test with its own databases.

use std::time::Duration;

use crwatch_testsupport::mariadb::MariaDb;
use crwatch_testsupport::postgres::Postgres;
use database_operator::engine::{
    ConnectOptions, Engine, EngineError, ErrorKind, UserChange, check_login, version_matches,
};
use database_operator::naming::{database_name, role_name, role_suffix};
use database_operator::password::Password;
use database_operator::types::DatabaseEngine::{self, MySQL, PostgreSQL};
use sqlx::Connection as _;
use tokio::sync::OnceCell;

static POSTGRES: OnceCell<Postgres> = OnceCell::const_new();
static MARIADB: OnceCell<MariaDb> = OnceCell::const_new();

/// Where a shared test server is.
struct Server {
    kind: DatabaseEngine,
    admin_url: String,
    admin_password: String,
    host: &'static str,
    port: u16,
}

async fn server(kind: DatabaseEngine) -> Server {
    let (admin_url, admin_password, host, port) = match kind {
        PostgreSQL => {
            let pg = POSTGRES
                .get_or_init(|| async { Postgres::start().await.expect("start PostgreSQL") })
                .await;
            (pg.admin_url(), pg.password(), pg.host(), pg.port())
        }
        MySQL => {
            let db = MARIADB
                .get_or_init(|| async { MariaDb::start().await.expect("start MariaDB") })
                .await;
            (db.admin_url(), db.password(), db.host(), db.port())
        }
    };
    Server {
        kind,
        admin_url,
        admin_password: admin_password.to_string(),
        host,
        port,
    }
}

/// A connection to a test server of either kind.
enum Conn {
    Postgres(sqlx::PgConnection),
    MySql(sqlx::MySqlConnection),
}

impl Conn {
    /// Run `sql` as a simple query (which may hold several statements).
    async fn run(&mut self, sql: &str) -> Result<(), sqlx::Error> {
        match self {
            Conn::Postgres(conn) => sqlx::raw_sql(sql).execute(conn).await.map(|_| ()),
            Conn::MySql(conn) => sqlx::raw_sql(sql).execute(conn).await.map(|_| ()),
        }
    }

    /// Run `sql` as a prepared statement, as the engines do.
    async fn run_prepared(&mut self, sql: &str) -> Result<(), sqlx::Error> {
        match self {
            Conn::Postgres(conn) => sqlx::query(sql).persistent(false).execute(conn).await.map(|_| ()),
            Conn::MySql(conn) => sqlx::query(sql).persistent(false).execute(conn).await.map(|_| ()),
        }
    }

    /// The first (text) column of the rows `sql` returns.
    async fn strings(&mut self, sql: &str) -> Vec<String> {
        match self {
            Conn::Postgres(conn) => sqlx::query_scalar(sql).fetch_all(conn).await,
            Conn::MySql(conn) => sqlx::query_scalar(sql).fetch_all(conn).await,
        }
        .unwrap()
    }

    async fn close(self) -> Result<(), sqlx::Error> {
        match self {
            Conn::Postgres(conn) => conn.close().await,
            Conn::MySql(conn) => conn.close().await,
        }
    }
}

/// MariaDB's databases (only those the user has privileges on).
const MARIADB_DATABASES: &str = "SELECT CONVERT(SCHEMA_NAME USING utf8mb4) FROM information_schema.SCHEMATA";

impl Server {
    fn engine(&self) -> Engine {
        let options = ConnectOptions {
            connect_timeout: Duration::from_secs(10),
            max_connections: 4,
        };
        Engine::connect_with(self.kind, &self.admin_url, &options).expect("valid admin URL")
    }

    async fn login(&self, database: &str, user: &str, password: &Password) -> Result<(), EngineError> {
        check_login(self.kind, self.host, self.port, database, user, password).await
    }

    /// A connection to `database` as `user`.
    async fn connect_as(&self, database: &str, user: &str, password: &Password) -> Result<Conn, sqlx::Error> {
        Ok(match self.kind {
            PostgreSQL => {
                let options = sqlx::postgres::PgConnectOptions::new()
                    .host(self.host)
                    .port(self.port)
                    .database(database)
                    .username(user)
                    .password(password.expose());
                Conn::Postgres(sqlx::PgConnection::connect_with(&options).await?)
            }
            MySQL => {
                let options = sqlx::mysql::MySqlConnectOptions::new()
                    .host(self.host)
                    .port(self.port)
                    .database(database)
                    .username(user)
                    .password(password.expose());
                Conn::MySql(sqlx::MySqlConnection::connect_with(&options).await?)
            }
        })
    }

    /// A connection as the administrator.
    async fn connect_admin(&self) -> Conn {
        match self.kind {
            PostgreSQL => Conn::Postgres(sqlx::PgConnection::connect(&self.admin_url).await.unwrap()),
            MySQL => Conn::MySql(sqlx::MySqlConnection::connect(&self.admin_url).await.unwrap()),
        }
    }

    /// Run `statements` as `user` in `database`, returning the first error's text.
    async fn run_as(
        &self,
        database: &str,
        user: &str,
        password: &Password,
        statements: &[&str],
    ) -> Result<(), String> {
        let result = async {
            let mut conn = self.connect_as(database, user, password).await?;
            for sql in statements {
                conn.run(sql).await?;
            }
            conn.close().await
        };
        result.await.map_err(|e| e.to_string())
    }

    /// The databases `user` can see (MariaDB's SHOW DATABASES lists only those it has
    /// privileges on).
    async fn visible_databases(&self, user: &str, password: &Password, database: &str) -> Vec<String> {
        assert_eq!(self.kind, MySQL);
        let mut conn = self.connect_as(database, user, password).await.unwrap();
        let names = conn.strings(MARIADB_DATABASES).await;
        conn.close().await.unwrap();
        names
    }

    /// The first (text) column of the rows `postgres_sql` or `mariadb_sql` returns, as the
    /// administrator.
    async fn admin_strings(&self, postgres_sql: &str, mariadb_sql: &str) -> Vec<String> {
        let mut conn = self.connect_admin().await;
        let names = conn
            .strings(match self.kind {
                PostgreSQL => postgres_sql,
                MySQL => mariadb_sql,
            })
            .await;
        conn.close().await.unwrap();
        names
    }

    /// All database names on the server, as the administrator sees them.
    async fn all_databases(&self) -> Vec<String> {
        self.admin_strings("SELECT datname::text FROM pg_database", MARIADB_DATABASES)
            .await
    }

    /// All role / user names on the server.
    async fn all_roles(&self) -> Vec<String> {
        self.admin_strings(
            "SELECT rolname::text FROM pg_roles",
            "SELECT CONVERT(User USING utf8mb4) FROM mysql.user",
        )
        .await
    }

    /// The administrator's own database, which users must not reach.
    fn admin_database(&self) -> &'static str {
        match self.kind {
            PostgreSQL => "postgres",
            MySQL => "mysql",
        }
    }
}

/// A database name for `test` on `kind`, as the operator would derive it.
fn db_name(kind: DatabaseEngine, test: &str, name: &str) -> String {
    database_name(kind, test, name)
}

async fn lifecycle(kind: DatabaseEngine) {
    let server = server(kind).await;
    let engine = server.engine();
    let db = db_name(kind, "lifecycle", "my-app-db");
    let other_db = db_name(kind, "lifecycle", "other-db");
    let alice = role_name(kind, &db, "alice");
    let bob = role_name(kind, &db, "bob");
    let mallory = role_name(kind, &other_db, "mallory");
    let (alice_pw, bob_pw, mallory_pw) = (Password::generate(), Password::generate(), Password::generate());

    assert!(version_matches(
        match kind {
            PostgreSQL => "15",
            MySQL => "10.11",
        },
        &engine.server_version().await.unwrap()
    ));

    // Everything twice: the second round must find everything in place and change nothing.
    for round in 0..2 {
        let first = round == 0;
        assert_eq!(engine.ensure_database(&db).await.unwrap(), first, "round {round}");
        assert_eq!(engine.ensure_database(&other_db).await.unwrap(), first);
        assert!(engine.database_exists(&db).await.unwrap());
        let want = if first {
            UserChange::Created
        } else {
            UserChange::Unchanged
        };
        assert_eq!(engine.ensure_user(&alice, &alice_pw, &db).await.unwrap(), want);
        assert_eq!(engine.ensure_user(&bob, &bob_pw, &db).await.unwrap(), want);
        assert_eq!(
            engine
                .ensure_user(&mallory, &mallory_pw, &other_db)
                .await
                .unwrap(),
            want
        );
        assert_eq!(
            engine.list_users(&db).await.unwrap(),
            [alice.clone(), bob.clone()]
        );
        assert_eq!(
            engine.list_users(&other_db).await.unwrap(),
            std::slice::from_ref(&mallory)
        );
    }

    // Users log in to their database and can create tables there.
    server.login(&db, &alice, &alice_pw).await.unwrap();
    let table = format!("t_{}", kind.as_str().to_lowercase());
    server
        .run_as(
            &db,
            &alice,
            &alice_pw,
            &[
                &format!("CREATE TABLE {table} (id integer primary key, name varchar(40))"),
                &format!("INSERT INTO {table} VALUES (1, 'one')"),
            ],
        )
        .await
        .unwrap();
    // ... and not into another Database's database. (PostgreSQL lets every role connect to
    // its `postgres` database unless the DBA revoked that; the operator leaves it alone.)
    let mut forbidden = vec![(&other_db, &alice, &alice_pw), (&db, &mallory, &mallory_pw)];
    let admin_db = server.admin_database().to_string();
    if kind == MySQL {
        forbidden.push((&admin_db, &alice, &alice_pw));
    }
    for (database, user, password) in forbidden {
        let err = server.login(database, user, password).await.unwrap_err();
        assert!(!err.is_transient(), "{err}");
        assert!(matches!(err.kind, ErrorKind::Rejected { .. }), "{err}");
    }
    if kind == MySQL {
        let visible = server.visible_databases(&alice, &alice_pw, &db).await;
        assert!(visible.contains(&db), "{visible:?}");
        assert!(!visible.contains(&other_db), "{visible:?}");
        assert!(!visible.iter().any(|d| d == "mysql"), "{visible:?}");
    }
    // Wrong password: refused, permanently, and the message holds no password.
    let err = server.login(&db, &alice, &bob_pw).await.unwrap_err();
    assert!(!err.is_transient(), "{err}");
    assert!(!err.to_string().contains(bob_pw.expose()));

    // Size: there is something in there now.
    let size = engine.database_size(&db).await.unwrap();
    assert!(size > 0, "{size}");

    // New password: the old one stops working.
    let alice_pw2 = Password::generate();
    assert_eq!(
        engine.ensure_user(&alice, &alice_pw2, &db).await.unwrap(),
        UserChange::PasswordChanged
    );
    assert_eq!(
        engine.ensure_user(&alice, &alice_pw2, &db).await.unwrap(),
        UserChange::Unchanged
    );
    server.login(&db, &alice, &alice_pw).await.unwrap_err();
    server.login(&db, &alice, &alice_pw2).await.unwrap();

    // Dropping a user: it can no longer log in, its data stays, the others are untouched.
    assert!(engine.drop_user(&alice, &db).await.unwrap());
    assert!(!engine.drop_user(&alice, &db).await.unwrap(), "idempotent");
    server.login(&db, &alice, &alice_pw2).await.unwrap_err();
    assert_eq!(engine.list_users(&db).await.unwrap(), std::slice::from_ref(&bob));
    assert!(!server.all_roles().await.contains(&alice));
    if kind == PostgreSQL {
        // Alice's table now belongs to the administrator; bob was never granted it.
        let err = server
            .run_as(&db, &bob, &bob_pw, &[&format!("SELECT * FROM {table}")])
            .await
            .unwrap_err();
        assert!(err.contains("permission denied"), "{err}");
    } else {
        server
            .run_as(&db, &bob, &bob_pw, &[&format!("SELECT * FROM {table}")])
            .await
            .unwrap();
    }

    // Roles that are not this database's are refused, whatever the caller says.
    for foreign in [server_admin_role(kind), mallory.as_str()] {
        let err = engine.drop_user(foreign, &db).await.unwrap_err();
        assert!(!err.is_transient());
        assert!(
            server.all_roles().await.iter().any(|r| r == foreign),
            "{foreign} survives"
        );
    }

    // Dropping the database (with bob still connected, on PostgreSQL).
    assert!(engine.drop_database(&db).await.unwrap());
    assert!(!engine.drop_database(&db).await.unwrap(), "idempotent");
    assert!(!engine.database_exists(&db).await.unwrap());
    let err = engine.database_size(&db).await.unwrap_err();
    assert!(matches!(err.kind, ErrorKind::NotFound(_)), "{err}");
    // A user of a dropped database can still be dropped.
    assert!(engine.drop_user(&bob, &db).await.unwrap());
    assert_eq!(engine.list_users(&db).await.unwrap(), Vec::<String>::new());
    // The other database was not touched.
    server.login(&other_db, &mallory, &mallory_pw).await.unwrap();
    assert!(engine.drop_user(&mallory, &other_db).await.unwrap());
    assert!(engine.drop_database(&other_db).await.unwrap());
    engine.close().await;
}

fn server_admin_role(kind: DatabaseEngine) -> &'static str {
    match kind {
        PostgreSQL => "postgres",
        MySQL => "admin",
    }
}

#[tokio::test]
async fn postgres_lifecycle() {
    lifecycle(PostgreSQL).await;
}

#[tokio::test]
async fn mariadb_lifecycle() {
    lifecycle(MySQL).await;
}

/// Names full of quotes, semicolons and comments go through the quoting layer as names: the
/// objects are created with exactly those names and dropped again, and nothing else happens.
async fn hostile_names(kind: DatabaseEngine) {
    let server = server(kind).await;
    let engine = server.engine();
    let (before_dbs, before_roles) = (server.all_databases().await, server.all_roles().await);
    let databases = [
        r#"x"; DROP DATABASE postgres; --"#,
        "x`; DROP DATABASE mysql; --",
        "'; DROP TABLE users; --",
        "données ü 名前",
        r"back\slash",
    ];
    for (i, db) in databases.iter().enumerate() {
        assert!(engine.ensure_database(db).await.unwrap(), "{db}");
        assert!(!engine.ensure_database(db).await.unwrap(), "{db}");
        assert!(engine.database_exists(db).await.unwrap(), "{db}");
        let all = server.all_databases().await;
        assert!(
            all.iter().any(|d| d == db),
            "{db:?} created under its own name: {all:?}"
        );
        // A hostile role name too, with the suffix the MariaDB engine insists on.
        let role = format!("r{i}\"`'; DROP ROLE x; --{}", role_suffix(db));
        let password = Password::new("it's a \"test\" \\ ; -- ü");
        assert_eq!(
            engine.ensure_user(&role, &password, db).await.unwrap(),
            UserChange::Created
        );
        assert_eq!(
            engine.ensure_user(&role, &password, db).await.unwrap(),
            UserChange::Unchanged
        );
        server.login(db, &role, &password).await.unwrap();
        assert_eq!(engine.list_users(db).await.unwrap(), std::slice::from_ref(&role));
        assert!(engine.drop_user(&role, db).await.unwrap());
        assert!(engine.drop_database(db).await.unwrap(), "{db}");
        assert!(!engine.database_exists(db).await.unwrap());
    }
    // Other tests create and drop their own objects meanwhile; what existed before that is
    // the server's own (the administrator, its database, the system schemas) must remain.
    let (after_dbs, after_roles) = (server.all_databases().await, server.all_roles().await);
    let own_dbs: Vec<&String> = before_dbs
        .iter()
        .filter(|d| !d.contains('_') || d.ends_with("_schema"))
        .collect();
    assert!(own_dbs.iter().any(|d| *d == server.admin_database()));
    for own in own_dbs {
        assert!(after_dbs.contains(own), "{own} survived");
    }
    let own = server_admin_role(kind);
    assert!(before_roles.iter().any(|r| r == own) && after_roles.iter().any(|r| r == own));
    for db in databases {
        assert!(!after_dbs.iter().any(|d| d == db));
    }
    engine.close().await;
}

#[tokio::test]
async fn postgres_hostile_names() {
    hostile_names(PostgreSQL).await;
}

#[tokio::test]
async fn mariadb_hostile_names() {
    hostile_names(MySQL).await;
}

/// Names the server could not keep as given are refused before anything is sent.
#[tokio::test]
async fn postgres_refuses_names_it_would_truncate() {
    let server = server(PostgreSQL).await;
    let engine = server.engine();
    let long = "x".repeat(64);
    for result in [
        engine.ensure_database(&long).await.map(|_| ()),
        engine.drop_database(&long).await.map(|_| ()),
        engine.ensure_database("nul\0byte").await.map(|_| ()),
        engine.ensure_database("").await.map(|_| ()),
    ] {
        let err = result.unwrap_err();
        assert!(matches!(err.kind, ErrorKind::InvalidName { .. }), "{err}");
        assert!(!err.is_transient());
    }
    assert!(
        !server
            .all_databases()
            .await
            .iter()
            .any(|d| d.starts_with("xxxxxxxx"))
    );
}

#[tokio::test]
async fn mariadb_refuses_overlong_names() {
    let server = server(MySQL).await;
    let engine = server.engine();
    let err = engine.ensure_database(&"x".repeat(65)).await.unwrap_err();
    assert!(!err.is_transient(), "{err}");
    assert!(matches!(err.kind, ErrorKind::Rejected { .. }), "{err}");
}

/// A grant on `a_b` must not cover `axb`: in MariaDB's GRANT, `_` is a wildcard unless escaped.
async fn grants_cover_exactly_one_database(kind: DatabaseEngine) {
    let server = server(kind).await;
    let engine = server.engine();
    let (db, lookalike) = ("wild_a_b", "wild_axb");
    let role = format!("u{}", role_suffix(db));
    let password = Password::generate();
    engine.ensure_database(db).await.unwrap();
    engine.ensure_database(lookalike).await.unwrap();
    engine.ensure_user(&role, &password, db).await.unwrap();
    server.login(db, &role, &password).await.unwrap();
    let err = server.login(lookalike, &role, &password).await.unwrap_err();
    assert!(matches!(err.kind, ErrorKind::Rejected { .. }), "{err}");
    if kind == MySQL {
        let visible = server.visible_databases(&role, &password, db).await;
        assert!(!visible.iter().any(|d| d == lookalike), "{visible:?}");
    }
    engine.drop_user(&role, db).await.unwrap();
    engine.drop_database(db).await.unwrap();
    engine.drop_database(lookalike).await.unwrap();
}

#[tokio::test]
async fn postgres_grants_cover_exactly_one_database() {
    grants_cover_exactly_one_database(PostgreSQL).await;
}

#[tokio::test]
async fn mariadb_grants_cover_exactly_one_database() {
    grants_cover_exactly_one_database(MySQL).await;
}

/// The SCRAM verifier computed here equals what PostgreSQL computes itself for the same
/// password (it applies SASLprep, as libpq does), including passwords SASLprep changes.
#[tokio::test]
async fn postgres_verifiers_agree_with_the_server() {
    let server = server(PostgreSQL).await;
    let mut admin = sqlx::PgConnection::connect(&server.admin_url).await.unwrap();
    let role = "verifier_check";
    sqlx::raw_sql(&format!("DROP ROLE IF EXISTS {role}; CREATE ROLE {role}"))
        .execute(&mut admin)
        .await
        .unwrap();
    for text in [
        "plain",
        "pässwörd",
        "\u{FB01}ne\u{00A0}print",
        "名前パスワード",
        "\u{0007}bell",
        "it's",
    ] {
        // The server hashes a clear-text password itself (test only: this logs it).
        let literal = database_operator::engine::postgres::quote_literal(text).unwrap();
        sqlx::raw_sql(&format!("ALTER ROLE {role} PASSWORD {literal}"))
            .execute(&mut admin)
            .await
            .unwrap();
        let stored: String = sqlx::query_scalar("SELECT rolpassword FROM pg_authid WHERE rolname = $1")
            .bind(role)
            .fetch_one(&mut admin)
            .await
            .unwrap();
        assert!(
            database_operator::password::scram_verifier_matches(&stored, &Password::new(text)),
            "{text:?}: {stored}"
        );
        assert!(!database_operator::password::scram_verifier_matches(
            &stored,
            &Password::new("other")
        ));
    }
    sqlx::raw_sql(&format!("DROP ROLE {role}"))
        .execute(&mut admin)
        .await
        .unwrap();
    admin.close().await.unwrap();
}

/// Logins with non-ASCII passwords set through the engine, by libpq (`psql`), which applies
/// SASLprep like the server. (sqlx's client does not normalise passwords, so it is not used
/// for the ones SASLprep changes.)
#[tokio::test]
async fn postgres_unicode_passwords_log_in_with_libpq() {
    let server = server(PostgreSQL).await;
    let engine = server.engine();
    let db = db_name(PostgreSQL, "unicode", "pw");
    engine.ensure_database(&db).await.unwrap();
    for (i, text) in ["pässwörd", "\u{FB01}ne\u{00A0}print", "名前パスワード"]
        .iter()
        .enumerate()
    {
        let role = role_name(PostgreSQL, &db, &format!("u{i}"));
        let password = Password::new(*text);
        engine.ensure_user(&role, &password, &db).await.unwrap();
        let psql = |password: &str| {
            let mut cmd = tokio::process::Command::new("psql");
            cmd.args(["-X", "-w", "-q", "-t", "-h", server.host, "-d", &db, "-U", &role])
                .args(["-p", &server.port.to_string(), "-c", "SELECT 1"])
                .env("PGPASSWORD", password)
                .env("PGCONNECT_TIMEOUT", "10")
                .kill_on_drop(true);
            async move {
                cmd.output()
                    .await
                    .expect("psql (apt-get install postgresql-client)")
            }
        };
        let ok = psql(text).await;
        assert!(
            ok.status.success(),
            "{text:?}: {}",
            String::from_utf8_lossy(&ok.stderr)
        );
        assert!(!psql("wrong").await.status.success());
        assert_eq!(
            engine.ensure_user(&role, &password, &db).await.unwrap(),
            UserChange::Unchanged
        );
        engine.drop_user(&role, &db).await.unwrap();
    }
    engine.drop_database(&db).await.unwrap();
}

#[tokio::test]
async fn connection_strings_hold_no_password() {
    for kind in [PostgreSQL, MySQL] {
        let server = server(kind).await;
        let engine = server.engine();
        let cs = engine.connection_string("default_my_app_db_f6476640");
        assert!(!cs.contains(&server.admin_password), "{cs}");
        assert!(!format!("{engine:?}").contains(&server.admin_password));
        assert_eq!(
            cs,
            format!(
                "{}://127.0.0.1:{}/default_my_app_db_f6476640",
                if kind == PostgreSQL { "postgresql" } else { "mysql" },
                server.port
            )
        );
    }
}

#[tokio::test]
async fn wrong_admin_credentials_are_permanent_and_not_echoed() {
    for kind in [PostgreSQL, MySQL] {
        let server = server(kind).await;
        let url = server
            .admin_url
            .replace(&server.admin_password, "not-the-password");
        let engine = Engine::connect(kind, &url).unwrap();
        let err = engine.server_version().await.unwrap_err();
        assert!(!err.is_transient(), "{err}");
        assert!(!err.to_string().contains("not-the-password"), "{err}");
        assert!(!format!("{err:?}").contains("not-the-password"), "{err:?}");
    }
}

#[tokio::test]
async fn unreachable_servers_are_transient() {
    let port = crwatch_testsupport::free_port().unwrap();
    for (kind, url) in [
        (
            PostgreSQL,
            format!("postgresql://postgres:s3cret@127.0.0.1:{port}/postgres"),
        ),
        (MySQL, format!("mysql://admin:s3cret@127.0.0.1:{port}/")),
    ] {
        let options = ConnectOptions {
            connect_timeout: Duration::from_millis(500),
            max_connections: 1,
        };
        let engine = Engine::connect_with(kind, &url, &options).unwrap();
        let started = std::time::Instant::now();
        let err = engine.ensure_database("x").await.unwrap_err();
        assert!(err.is_transient(), "{err}");
        assert!(matches!(err.kind, ErrorKind::Unreachable(_)), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "bounded by the connect timeout"
        );
        assert!(!err.to_string().contains("s3cret"));
        assert!(err.to_string().contains(&format!("127.0.0.1:{port}")), "{err}");
    }
}

/// The engines send every statement as a prepared statement (`sqlx::query`), which both
/// servers execute as exactly one statement: a second one smuggled in is a syntax error, not a
/// second command. (Defence in depth behind the quoting.)
#[tokio::test]
async fn prepared_statements_refuse_a_second_statement() {
    for kind in [PostgreSQL, MySQL] {
        let mut conn = server(kind).await.connect_admin().await;
        let err = conn.run_prepared("SELECT 1; SELECT 2").await.unwrap_err();
        assert!(matches!(err, sqlx::Error::Database(_)), "{kind}: {err}");
    }
}
