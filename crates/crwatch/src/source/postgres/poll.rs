//! Polling mode of the PostgreSQL source, for databases where triggers are not allowed: by an
//! updated-at column (`WHERE col >= last - overlap`, the key set compared every Nth poll for
//! deletes), or by row hash (every row on each poll; deletes found on each scan). Each poll is
//! one REPEATABLE READ, READ ONLY transaction, so it sees one consistent state.

use std::collections::HashSet;

use futures::TryStreamExt;
use sqlx::Row;
use sqlx::postgres::PgPool;

use super::PostgresSource;
use super::schema::Shape;
use crate::source::Event;
use crate::source::sql::{Emitter, Known, Poll, RowShape, Stop, key_name, poll_forever};

struct Poller {
    src: PostgresSource,
    pool: PgPool,
    em: Emitter,
    updated_at: Option<String>,
    shape: Option<(Shape, Option<usize>)>,
    rows: RowShape,
    known: Known,
    listed: bool,
    watermark: String,
    polls: u64,
}

pub(crate) async fn run(src: PostgresSource, updated_at: Option<String>, em: Emitter) {
    let rows = RowShape {
        api_version: super::API_VERSION,
        namespace: src.row_namespace(),
        uid_source: format!("{} {}", src.target, src.relation.display()),
    };
    let mut p = Poller {
        pool: src.pool(1),
        src,
        em,
        updated_at,
        shape: None,
        rows,
        known: Known::default(),
        listed: false,
        watermark: "-infinity".to_string(),
        polls: 0,
    };
    poll_forever(&mut p).await;
    p.pool.close().await;
}

impl Poll for Poller {
    fn poll_once(&mut self) -> impl std::future::Future<Output = Result<(), Stop>> + Send {
        self.poll()
    }

    fn emitter(&self) -> &Emitter {
        &self.em
    }

    fn interval(&self) -> std::time::Duration {
        self.src.interval
    }
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
            let col = match &self.updated_at {
                Some(c) => {
                    let i = shape.index_of(c, "updated_at")?;
                    if !shape.cols[i].datetime {
                        return Err(Stop::Failed(format!(
                            "updated_at column {c:?} of {} must be a timestamp, timestamptz or date: \
                             use another column or poll by hash (leave out updated_at)",
                            shape.relation.display()
                        )));
                    }
                    Some(i)
                }
                None => None,
            };
            self.shape = Some((shape, col));
        }
        let Some((shape, col)) = self.shape.clone() else {
            return Ok(());
        };
        let mut tx = self.pool.begin().await.map_err(self.failed("connecting"))?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await
            .map_err(self.failed("starting a snapshot"))?;
        if !self.listed {
            // The first poll (and one after a failure mid-list) is a complete list.
            if let Some(c) = col {
                let max_sql = format!(
                    "SELECT max(q.{})::text FROM {} AS q",
                    super::quote_ident(&shape.cols[c].name),
                    shape.relation.table_sql()
                );
                let (max,): (Option<String>,) = sqlx::query_as(&max_sql)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(self.failed("reading the newest updated_at"))?;
                self.watermark = max.unwrap_or_else(|| "-infinity".to_string());
            }
            self.em.send(Event::Init).await?;
            self.known = Known::default();
            let sql = shape.snapshot_sql();
            let mut stream = sqlx::query(&sql).fetch(&mut *tx);
            while let Some(row) = stream.try_next().await.map_err(self.failed("listing rows"))? {
                if let Some(raw) = shape.read_row(&row, 0).map_err(self.failed("reading a row"))? {
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
                let sql = shape.snapshot_sql();
                let rows = sqlx::query(&sql)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(self.failed("scanning rows"))?;
                let mut present = HashSet::with_capacity(rows.len());
                for row in &rows {
                    if let Some(raw) = shape.read_row(row, 0).map_err(self.failed("reading a row"))? {
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
                let sql = shape.updated_sql(c);
                let rows = sqlx::query(&sql)
                    .bind(&self.watermark)
                    .bind(self.src.overlap.as_secs_f64())
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(self.failed("reading changed rows"))?;
                let width = shape.cols.len() + shape.key.len();
                for row in &rows {
                    if let Some(raw) = shape.read_row(row, 0).map_err(self.failed("reading a row"))?
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
                if self.polls.is_multiple_of(self.src.delete_scan_every) {
                    self.scan_keys(&shape, &mut tx).await?;
                }
            }
        }
        tx.commit().await.map_err(self.failed("ending the snapshot"))?;
        Ok(())
    }

    /// Compare the key set: rows gone are deleted; rows not yet known (a NULL or old
    /// updated-at) are fetched and added.
    async fn scan_keys(
        &mut self,
        shape: &Shape,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    ) -> Result<(), Stop> {
        let keys = sqlx::query(&shape.keys_sql())
            .fetch_all(&mut **tx)
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
        for chunk in unknown.chunks(500) {
            let keys = serde_json::to_string(chunk).map_err(|e| Stop::Failed(e.to_string()))?;
            let rows = sqlx::query(&shape.fetch_sql())
                .bind(keys)
                .fetch_all(&mut **tx)
                .await
                .map_err(self.failed("fetching rows by key"))?;
            for row in &rows {
                let found: bool = row
                    .try_get(shape.key.len())
                    .map_err(self.failed("reading a row"))?;
                if !found {
                    continue;
                }
                if let Some(raw) = shape
                    .read_row(row, shape.key.len() + 1)
                    .map_err(self.failed("reading a row"))?
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
