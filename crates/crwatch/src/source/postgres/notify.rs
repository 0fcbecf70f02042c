//! Notify mode of the PostgreSQL source: LISTEN on the change log's channel, then list (or
//! resume), then on every notification (and every keep-alive tick, as a safety net) read the
//! change log from the source's position and fetch the changed rows by key.
//!
//! The position is a transaction id watermark `W`: every transaction older than `W` had
//! finished when the source last read the log, so each read takes the log rows of
//! transactions `>= W` (skipping ids already applied) and then moves `W` to the oldest
//! transaction still running at the start of that read. Rows are fetched in their current
//! state, so applying a key twice or out of order is harmless. After a reconnect the source
//! listens before it reads, so no change slips between the read and the first notification.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use sqlx::Row;
use sqlx::postgres::{PgListener, PgPool};

use super::PostgresSource;
use super::changelog::ChangeLog;
use super::schema::{Relation, Shape};
use crate::source::sql::Stop;
use crate::source::sql::{Backoff, Emitter, RowShape, SqlSourceError, key_name};
use crate::source::{Checkpoint, Event};

/// How often the log is pruned (by any source watching the table).
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// How long a keep-alive `SELECT 1` may take before the connection counts as dead.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Keys fetched per query.
const FETCH_CHUNK: usize = 500;

struct Notifier {
    src: PostgresSource,
    pool: PgPool,
    listen_pool: PgPool,
    em: Emitter,
    rows: RowShape,
    shape: Option<(Shape, ChangeLog)>,
    installed: bool,
    /// The transaction-id watermark; `None`: list first.
    watermark: Option<i64>,
    incarnation: Option<String>,
    /// Log ids applied whose transaction is `>= watermark` (they are read again), with it.
    applied: HashMap<i64, i64>,
    last_prune: Option<Instant>,
}

pub(crate) async fn run(src: PostgresSource, em: Emitter) {
    let rows = RowShape {
        api_version: super::API_VERSION,
        namespace: src.row_namespace(),
        uid_source: format!("{} {}", src.target, src.relation.display()),
    };
    let mut n = Notifier {
        pool: src.pool(2),
        listen_pool: src.pool(1),
        src,
        em,
        rows,
        shape: None,
        installed: false,
        watermark: None,
        incarnation: None,
        applied: HashMap::new(),
        last_prune: None,
    };
    let mut backoff = Backoff::new();
    loop {
        match n.session(&mut backoff).await {
            Stop::Closed => break,
            Stop::Failed(msg) => {
                if n.em.error(msg, false).await.is_err() {
                    break;
                }
            }
        }
        if n.em.sleep(backoff.next_delay()).await.is_err() {
            break;
        }
    }
    n.pool.close().await;
    n.listen_pool.close().await;
}

impl Notifier {
    fn failed(&self, what: &str) -> impl Fn(sqlx::Error) -> Stop + '_ {
        let what = what.to_string();
        move |e| Stop::Failed(format!("{what} on {}: {e}", self.src.target))
    }

    /// One connected stretch: returns why it ended.
    async fn session(&mut self, backoff: &mut Backoff) -> Stop {
        match self.session_inner(backoff).await {
            Ok(never) => match never {},
            Err(stop) => stop,
        }
    }

    async fn session_inner(&mut self, backoff: &mut Backoff) -> Result<std::convert::Infallible, Stop> {
        let (_, log) = self.prepare().await?;
        let mut listener = PgListener::connect_with(&self.listen_pool)
            .await
            .map_err(self.failed("connecting the listener"))?;
        listener
            .listen(&log.channel())
            .await
            .map_err(self.failed("LISTEN"))?;
        // Listening before reading: whatever commits from here on is notified.
        if let Some(cp) = self.src.resume.take() {
            self.try_resume(&cp).await?;
        }
        self.catch_up().await?;
        backoff.reset();
        let mut tick = tokio::time::interval(self.src.keepalive);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = self.em.closed() => return Err(Stop::Closed),
                n = listener.try_recv() => {
                    match n {
                        // A change this source has applied already (one notification per
                        // changed row arrives after the read that covered the whole batch).
                        Ok(Some(n)) if self.already_applied(n.payload()) => continue,
                        Ok(Some(_)) => {}
                        // The connection was lost and is back (LISTEN again): read the log.
                        Ok(None) => {}
                        Err(e) => return Err(Stop::Failed(format!(
                            "the listener's connection to {} failed: {e}; reconnecting", self.src.target))),
                    }
                    self.catch_up().await?;
                }
                _ = tick.tick() => {
                    match tokio::time::timeout(KEEPALIVE_TIMEOUT, sqlx::query("SELECT 1").execute(&mut listener)).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return Err(Stop::Failed(format!(
                            "keep-alive on {} failed: {e}; reconnecting", self.src.target))),
                        Err(_) => return Err(Stop::Failed(format!(
                            "keep-alive on {} got no answer in {KEEPALIVE_TIMEOUT:?}; reconnecting", self.src.target))),
                    }
                    self.catch_up().await?;
                    self.maybe_prune().await?;
                }
            }
        }
    }

    /// Whether a notification (`{"id":..,"op":..,"xid":..}`) is for a log row already applied:
    /// its transaction is older than the watermark, or its id was applied.
    fn already_applied(&self, payload: &str) -> bool {
        #[derive(serde::Deserialize)]
        struct Payload {
            id: i64,
            xid: i64,
        }
        let (Some(w), Ok(p)) = (self.watermark, serde_json::from_str::<Payload>(payload)) else {
            return false;
        };
        p.xid < w || self.applied.contains_key(&p.id)
    }

    /// Resolve the table, install the change log when asked, and check it is there.
    async fn prepare(&mut self) -> Result<(Shape, ChangeLog), Stop> {
        if self.shape.is_none() {
            let Relation::Table { schema, table } = &self.src.relation else {
                return Err(SqlSourceError::Unsupported(
                    "notify mode needs a table: poll a query instead (mode=poll)".into(),
                )
                .into());
            };
            let shape = Shape::discover(
                &self.pool,
                &self.src.target,
                &self.src.relation,
                self.src.key.as_deref(),
            )
            .await?;
            let log = ChangeLog::new(schema, table, &shape.key_names());
            self.shape = Some((shape, log));
        }
        let Some((shape, log)) = self.shape.clone() else {
            return Err(Stop::Failed("no table".into()));
        };
        if self.src.install && !self.installed {
            sqlx::raw_sql(&log.install_sql())
                .execute(&self.pool)
                .await
                .map_err(self.failed("installing the change log and trigger"))?;
            self.installed = true;
        }
        let probe = format!("SELECT incarnation FROM {}", log.state_sql());
        if let Err(e) = sqlx::query(&probe).fetch_optional(&self.pool).await {
            let missing = e
                .as_database_error()
                .and_then(|d| d.code())
                .is_some_and(|c| c == "42P01");
            if missing {
                return Err(Stop::Failed(format!(
                    "the change log of {} is not installed: pass install_trigger=true, or have a DBA run \
                     PostgresSource::install_sql()'s SQL (or switch to mode=poll)",
                    self.src.relation.display()
                )));
            }
            return Err(self.failed("reading the change log's state")(e));
        }
        Ok((shape, log))
    }

    /// Start after `cp` when it belongs to this change log and its position is still there.
    async fn try_resume(&mut self, cp: &Checkpoint) -> Result<(), Stop> {
        let Ok(w) = cp.resource_version.parse::<i64>() else {
            return Ok(());
        };
        let (incarnation, pruned) = self.state().await?;
        if cp.identity.as_deref() == Some(incarnation.as_str()) && pruned <= w {
            self.watermark = Some(w);
            self.incarnation = Some(incarnation);
            self.applied.clear();
        }
        Ok(())
    }

    async fn state(&self) -> Result<(String, i64), Stop> {
        let Some((_, log)) = &self.shape else {
            return Err(Stop::Failed("no table".into()));
        };
        let sql = format!("SELECT incarnation, pruned_below FROM {}", log.state_sql());
        let row: Option<(String, i64)> = sqlx::query_as(&sql)
            .fetch_optional(&self.pool)
            .await
            .map_err(self.failed("reading the change log's state"))?;
        row.ok_or_else(|| {
            Stop::Failed(format!(
                "the change log state table {} is empty: install the change log again",
                log.state_table()
            ))
        })
    }

    /// A complete list in one REPEATABLE READ snapshot; the watermark is that snapshot's
    /// oldest running transaction.
    async fn relist(&mut self) -> Result<(), Stop> {
        let Some((shape, log)) = self.shape.clone() else {
            return Err(Stop::Failed("no table".into()));
        };
        let mut tx = self.pool.begin().await.map_err(self.failed("connecting"))?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await
            .map_err(self.failed("starting a snapshot"))?;
        let (xmin,): (i64,) = sqlx::query_as("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
            .fetch_one(&mut *tx)
            .await
            .map_err(self.failed("reading the snapshot"))?;
        let sql = format!("SELECT incarnation FROM {}", log.state_sql());
        let (incarnation,): (String,) = sqlx::query_as(&sql)
            .fetch_one(&mut *tx)
            .await
            .map_err(self.failed("reading the change log's state"))?;
        self.em.send(Event::Init).await?;
        let snapshot = shape.snapshot_sql();
        let mut stream = sqlx::query(&snapshot).fetch(&mut *tx);
        while let Some(row) = stream.try_next().await.map_err(self.failed("listing rows"))? {
            if let Some(raw) = shape.read_row(&row, 0).map_err(self.failed("reading a row"))? {
                let obj = self.rows.object(&raw.name, &raw.rv, shape.data(&raw.values));
                self.em.send(Event::InitApply(obj)).await?;
            }
        }
        drop(stream);
        tx.commit().await.map_err(self.failed("ending the snapshot"))?;
        self.em.send(Event::InitDone).await?;
        self.watermark = Some(xmin);
        self.incarnation = Some(incarnation);
        self.applied.clear();
        self.progress().await
    }

    async fn progress(&self) -> Result<(), Stop> {
        if let (Some(w), Some(inc)) = (self.watermark, &self.incarnation) {
            let cp = Checkpoint::new(w.to_string()).with_identity(inc.clone());
            self.em.send(Event::Progress(Some(cp))).await?;
        }
        Ok(())
    }

    /// Read the log from the watermark and deliver the changed rows; list again when the
    /// position is gone (pruned, reinstalled) or the table was truncated.
    async fn catch_up(&mut self) -> Result<(), Stop> {
        let Some(w) = self.watermark else {
            return self.relist().await;
        };
        let Some((shape, log)) = self.shape.clone() else {
            return Err(Stop::Failed("no table".into()));
        };
        // The oldest running transaction, read before the log: everything older is in it.
        let (xmin,): (i64,) = sqlx::query_as("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
            .fetch_one(&self.pool)
            .await
            .map_err(self.failed("reading the snapshot"))?;
        let (incarnation, pruned) = self.state().await?;
        if self.incarnation.as_deref() != Some(incarnation.as_str()) || pruned > w {
            tracing::info!(source = %self.em.name, "change-log position gone (pruned or reinstalled); listing again");
            return self.relist().await;
        }
        let sql = format!(
            "SELECT id, xid, op::text, key::text FROM {} WHERE xid >= $1 ORDER BY id",
            log.log_sql()
        );
        let entries: Vec<(i64, i64, String, Option<String>)> = sqlx::query_as(&sql)
            .bind(w)
            .fetch_all(&self.pool)
            .await
            .map_err(self.failed("reading the change log"))?;
        let mut keys = BTreeSet::new();
        let mut new_ids = vec![];
        for (id, xid, op, key) in entries {
            if self.applied.contains_key(&id) {
                continue;
            }
            if op == "T" {
                tracing::info!(source = %self.em.name, "table truncated; listing again");
                return self.relist().await;
            }
            if let Some(k) = key {
                keys.insert(k);
            }
            new_ids.push((id, xid));
        }
        let keys: Vec<String> = keys.into_iter().collect();
        for chunk in keys.chunks(FETCH_CHUNK) {
            self.fetch(&shape, chunk).await?;
        }
        self.applied.extend(new_ids);
        let w = w.max(xmin);
        self.watermark = Some(w);
        self.applied.retain(|_, xid| *xid >= w);
        self.progress().await
    }

    /// Deliver the current state of `keys` (JSON arrays of key texts).
    async fn fetch(&self, shape: &Shape, keys: &[String]) -> Result<(), Stop> {
        let arg = format!("[{}]", keys.join(","));
        let rows = sqlx::query(&shape.fetch_sql())
            .bind(arg)
            .fetch_all(&self.pool)
            .await
            .map_err(self.failed("fetching changed rows"))?;
        let nk = shape.key.len();
        for row in &rows {
            let found: bool = row.try_get(nk).map_err(self.failed("reading a row"))?;
            if found {
                if let Some(raw) = shape
                    .read_row(row, nk + 1)
                    .map_err(self.failed("reading a row"))?
                {
                    let obj = self.rows.object(&raw.name, &raw.rv, shape.data(&raw.values));
                    self.em.send(Event::Apply(obj)).await?;
                }
            } else {
                let mut parts = Vec::with_capacity(nk);
                for i in 0..nk {
                    match row
                        .try_get::<Option<String>, _>(i)
                        .map_err(self.failed("reading a key"))?
                    {
                        Some(p) => parts.push(p),
                        None => break,
                    }
                }
                if parts.len() == nk {
                    let obj = self.rows.tombstone(&key_name(&parts), None);
                    self.em.send(Event::Delete(obj)).await?;
                }
            }
        }
        Ok(())
    }

    /// Bounded retention, about once a minute.
    async fn maybe_prune(&mut self) -> Result<(), Stop> {
        if self.last_prune.is_some_and(|t| t.elapsed() < PRUNE_EVERY) {
            return Ok(());
        }
        self.last_prune = Some(Instant::now());
        let Some((_, log)) = &self.shape else {
            return Ok(());
        };
        let result = sqlx::query(&log.prune_sql())
            .bind(self.src.retention_age.as_secs_f64())
            .bind(i64::try_from(self.src.retention_rows).unwrap_or(i64::MAX))
            .execute(&self.pool)
            .await;
        if let Err(e) = result {
            // Not fatal: the log grows until pruning works (e.g. the user may not DELETE).
            self.em
                .error(
                    format!(
                        "pruning the change log {} on {} failed: {e}; grant DELETE on it or prune it elsewhere",
                        log.log_table(),
                        self.src.target
                    ),
                    false,
                )
                .await?;
        }
        Ok(())
    }
}

/// Prune a table's change log now; the number of state rows updated (1 when rows were deleted).
pub(crate) async fn prune_now(
    pool: &PgPool,
    log: &ChangeLog,
    max_age: Duration,
    max_rows: u64,
) -> Result<u64, sqlx::Error> {
    let r = sqlx::query(&log.prune_sql())
        .bind(max_age.as_secs_f64())
        .bind(i64::try_from(max_rows).unwrap_or(i64::MAX))
        .execute(pool)
        .await?;
    Ok(r.rows_affected())
}
