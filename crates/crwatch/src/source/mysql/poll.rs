//! Polling of a MySQL/MariaDB relation: its columns and key (from the server), the generated
//! SELECTs (snapshot, updated-at window, key scan, fetch by key) with identifiers quoted by
//! [`quote_ident`] and values bound, the conversion of column text to JSON, and the poll loop
//! (one consistent-snapshot, read-only transaction per poll).

use std::collections::HashSet;
use std::time::Duration;

use futures::TryStreamExt;
use serde_json::{Map, Value};
use sqlx::mysql::{MySqlPool, MySqlPoolOptions, MySqlRow};
use sqlx::{Column, Executor, Row, Statement, TypeInfo};

use super::{API_VERSION, Mode, MysqlSource, Relation, quote_ident};
use crate::source::Event;
use crate::source::sql::{
    Emitter, Known, Poll, RawRow, RowShape, SqlSourceError, Stop, float_value, hex_to_base64, int_value,
    json_value, key_name, naive_timestamp_value, poll_forever, row_hash, utc_timestamp_value,
};

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
        let probe = format!("SELECT * FROM {} AS q", relation.table_sql());
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
            self.relation.table_sql()
        )
    }

    fn updated_sql(&self, col: usize) -> String {
        let q = format!("q.{}", quote_ident(&self.cols[col].name));
        format!(
            "SELECT {}, CAST({q} AS CHAR) FROM {} AS q \
             WHERE {q} >= (CAST(? AS DATETIME(6)) - INTERVAL ? MICROSECOND) ORDER BY {q}",
            self.select_list(),
            self.relation.table_sql()
        )
    }

    fn keys_sql(&self) -> String {
        let ks: Vec<String> = self.key.iter().map(|&k| self.col_expr(k)).collect();
        format!("SELECT {} FROM {} AS q", ks.join(", "), self.relation.table_sql())
    }

    /// The rows of `n` keys (bound as texts, key after key).
    fn fetch_sql(&self, n: usize) -> String {
        let ks: Vec<String> = self.key.iter().map(|&k| self.col_expr(k)).collect();
        let one = format!("({})", vec!["?"; self.key.len()].join(", "));
        format!(
            "SELECT {} FROM {} AS q WHERE ({}) IN ({})",
            self.select_list(),
            self.relation.table_sql(),
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

pub(super) async fn run(src: MysqlSource, em: Emitter) {
    let rows = RowShape {
        api_version: API_VERSION,
        namespace: src.namespace.clone().unwrap_or_else(|| src.relation.display()),
        uid_source: format!("{} {}", src.target, src.relation.display()),
    };
    let pool = MySqlPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .acquire_timeout(Duration::from_secs(10))
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
                    shape.relation.table_sql()
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
                if self.polls.is_multiple_of(self.src.delete_scan_every) {
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
}
