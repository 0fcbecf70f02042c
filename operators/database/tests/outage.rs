//! A server that goes away and comes back: while it is down, operations fail with transient
//! errors (within the connect timeout, not hanging); once it is back, the same engine works
//! again and the data is still there. Each test starts its own server, since it stops it.

use std::time::{Duration, Instant};

use crwatch_testsupport::mariadb::MariaDb;
use crwatch_testsupport::postgres::Postgres;
use database_operator::engine::{ConnectOptions, Engine, ErrorKind, UserChange, check_login};
use database_operator::naming::{database_name, role_name};
use database_operator::password::Password;
use database_operator::types::DatabaseEngine::{self, MySQL, PostgreSQL};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The same server, however it was started.
trait TestDb {
    fn admin_url(&self) -> String;
    fn port(&self) -> u16;
    fn stop(&mut self);
    async fn restart(&mut self) -> anyhow::Result<()>;
}

impl TestDb for Postgres {
    fn admin_url(&self) -> String {
        Postgres::admin_url(self)
    }
    fn port(&self) -> u16 {
        Postgres::port(self)
    }
    fn stop(&mut self) {
        Postgres::stop(self)
    }
    async fn restart(&mut self) -> anyhow::Result<()> {
        Postgres::restart(self).await
    }
}

impl TestDb for MariaDb {
    fn admin_url(&self) -> String {
        MariaDb::admin_url(self)
    }
    fn port(&self) -> u16 {
        MariaDb::port(self)
    }
    fn stop(&mut self) {
        MariaDb::stop(self)
    }
    async fn restart(&mut self) -> anyhow::Result<()> {
        MariaDb::restart(self).await
    }
}

async fn down_and_up(kind: DatabaseEngine, server: &mut impl TestDb) {
    let options = ConnectOptions {
        connect_timeout: CONNECT_TIMEOUT,
        max_connections: 2,
    };
    let engine = Engine::connect_with(kind, &server.admin_url(), &options).unwrap();
    let db = database_name(kind, "outage", "db");
    let role = role_name(kind, &db, "app");
    let password = Password::generate();
    assert!(engine.ensure_database(&db).await.unwrap());
    assert_eq!(
        engine.ensure_user(&role, &password, &db).await.unwrap(),
        UserChange::Created
    );

    server.stop();
    // Pooled connections are dead now; every operation must say "transient", promptly.
    let started = Instant::now();
    let errors = [
        engine.ensure_database(&db).await.map(|_| ()).unwrap_err(),
        engine.database_exists(&db).await.map(|_| ()).unwrap_err(),
        engine
            .ensure_user(&role, &password, &db)
            .await
            .map(|_| ())
            .unwrap_err(),
        engine.server_version().await.map(|_| ()).unwrap_err(),
        check_login(kind, "127.0.0.1", server.port(), &db, &role, &password)
            .await
            .unwrap_err(),
    ];
    for err in &errors {
        assert!(err.is_transient(), "{err}");
        assert!(matches!(err.kind, ErrorKind::Unreachable(_)), "{err}");
        assert!(!err.to_string().contains(password.expose()));
    }
    assert!(
        started.elapsed() < 5 * (CONNECT_TIMEOUT + Duration::from_secs(1)),
        "each failure is bounded by the connect timeout ({:?})",
        started.elapsed()
    );

    server.restart().await.unwrap();
    // The same engine recovers: its pool replaces the dead connections.
    assert!(
        !engine.ensure_database(&db).await.unwrap(),
        "the database survived the restart"
    );
    assert_eq!(
        engine.ensure_user(&role, &password, &db).await.unwrap(),
        UserChange::Unchanged
    );
    check_login(kind, "127.0.0.1", server.port(), &db, &role, &password)
        .await
        .unwrap();
    assert!(engine.drop_user(&role, &db).await.unwrap());
    assert!(engine.drop_database(&db).await.unwrap());
    engine.close().await;
}

#[tokio::test]
async fn postgres_down_and_up() {
    let mut pg = Postgres::start().await.unwrap();
    down_and_up(PostgreSQL, &mut pg).await;
}

#[tokio::test]
async fn mariadb_down_and_up() {
    let mut db = MariaDb::start().await.unwrap();
    down_and_up(MySQL, &mut db).await;
}
