//! What a watched PostgreSQL relation looks like: its columns and their types (from the
//! catalog), its key, the one identifier-quoting function, the generated SELECTs (snapshot,
//! fetch by key, updated-at window, key scan) and the conversion of column text to JSON.

use serde_json::{Map, Value};
use sqlx::postgres::{PgPool, PgRow};
use sqlx::{Column, Executor, Row, Statement};

use crate::source::sql::{
    RawRow, SqlSourceError, float_value, hex_to_base64, int_value, json_value, key_name,
    naive_timestamp_value, row_hash, timestamptz_value,
};

/// Quote a PostgreSQL identifier: wrap it in double quotes and double any double quote inside,
/// so any name (`we"ird`, `select`, `Mixed Case`) is taken literally. The only way the
/// PostgreSQL source puts a name into SQL.
///
/// ```
/// use crwatch::source::postgres::quote_ident;
/// assert_eq!(quote_ident("orders"), "\"orders\"");
/// assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
/// ```
pub fn quote_ident(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for c in name.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// What is watched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Relation {
    /// A table or a view (`schema.table`).
    Table {
        /// Its schema (`public` by default).
        schema: String,
        /// Its name.
        table: String,
    },
    /// A query, taken as given and wrapped as a subquery (`SELECT ... FROM (<query>) AS q`):
    /// it must be one SELECT without a trailing semicolon, and is run with the source's
    /// privileges, so only ever pass trusted text.
    Query(String),
}

impl Relation {
    /// `schema.table` (as written, unquoted), or `query`.
    pub fn display(&self) -> String {
        match self {
            Relation::Table { schema, table } => format!("{schema}.{table}"),
            Relation::Query(_) => "query".to_string(),
        }
    }

    /// The FROM item: the quoted table, or the query in parentheses.
    pub(crate) fn table_sql(&self) -> String {
        match self {
            Relation::Table { schema, table } => format!("{}.{}", quote_ident(schema), quote_ident(table)),
            Relation::Query(q) => format!("({q})"),
        }
    }
}

/// How a column's text becomes JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Bool,
    Int,
    Float,
    Json,
    Bytea,
    TimestampTz,
    Timestamp,
    /// Arrays are read as `to_jsonb(...)`; numeric arrays as text arrays first (no precision
    /// loss).
    Array {
        numeric: bool,
    },
    /// numeric, money, text, uuid, date, enums, ...: the text as is.
    Text,
}

impl Kind {
    fn of(nsp: &str, typname: &str, category: &str, elem: &str) -> Kind {
        if category == "A" {
            return Kind::Array {
                numeric: elem == "numeric" || elem == "money",
            };
        }
        if nsp != "pg_catalog" {
            return Kind::Text;
        }
        match typname {
            "bool" => Kind::Bool,
            "int2" | "int4" | "int8" | "oid" => Kind::Int,
            "float4" | "float8" => Kind::Float,
            "json" | "jsonb" => Kind::Json,
            "bytea" => Kind::Bytea,
            "timestamptz" => Kind::TimestampTz,
            "timestamp" => Kind::Timestamp,
            _ => Kind::Text,
        }
    }

    fn convert(self, s: &str) -> Value {
        match self {
            Kind::Bool => match s {
                "t" | "true" => Value::Bool(true),
                "f" | "false" => Value::Bool(false),
                other => Value::String(other.to_string()),
            },
            Kind::Int => int_value(s),
            Kind::Float => float_value(s),
            Kind::Json | Kind::Array { .. } => json_value(s),
            Kind::Bytea => hex_to_base64(s),
            Kind::TimestampTz => timestamptz_value(s),
            Kind::Timestamp => naive_timestamp_value(s),
            Kind::Text => Value::String(s.to_string()),
        }
    }
}

/// One column.
#[derive(Debug, Clone)]
pub(crate) struct Col {
    pub name: String,
    pub kind: Kind,
    /// The type as a quoted, schema-qualified name, for casts of key text back to the type.
    pub type_sql: String,
    /// Whether the type is a date/time type (for updated-at polling).
    pub datetime: bool,
}

/// The watched relation, resolved against the catalog.
#[derive(Debug, Clone)]
pub(crate) struct Shape {
    pub relation: Relation,
    pub cols: Vec<Col>,
    /// Indexes into `cols` of the key columns.
    pub key: Vec<usize>,
}

impl Shape {
    /// Resolve `relation` (columns, types, key) on `pool`.
    pub(crate) async fn discover(
        pool: &PgPool,
        target: &str,
        relation: &Relation,
        key: Option<&[String]>,
    ) -> Result<Shape, SqlSourceError> {
        let oid = match relation {
            Relation::Table { schema, table } => {
                let row: Option<(i64,)> = sqlx::query_as(
                    "SELECT c.oid::bigint FROM pg_catalog.pg_class c \
                     JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                     WHERE n.nspname = $1 AND c.relname = $2",
                )
                .bind(schema)
                .bind(table)
                .fetch_optional(pool)
                .await
                .map_err(SqlSourceError::db("looking up the table", target))?;
                match row {
                    Some((oid,)) => Some(oid),
                    None => {
                        return Err(SqlSourceError::NoSuchRelation {
                            relation: relation.display(),
                        });
                    }
                }
            }
            Relation::Query(_) => None,
        };
        let probe = format!("SELECT * FROM {} AS q", relation.table_sql());
        let stmt = pool.prepare(&probe).await.map_err(SqlSourceError::db(
            format!("describing {}", relation.display()),
            target,
        ))?;
        let mut names = vec![];
        let mut oids = vec![];
        for c in stmt.columns() {
            names.push(c.name().to_string());
            oids.push(c.type_info().oid().map(|o| i64::from(o.0)).unwrap_or(25));
        }
        let types: Vec<(i64, String, String, String, String)> = sqlx::query_as(
            "SELECT t.oid::bigint, n.nspname::text, t.typname::text, t.typcategory::text, \
                    coalesce(e.typname::text, '') \
             FROM pg_catalog.pg_type t \
             JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace \
             LEFT JOIN pg_catalog.pg_type e ON e.oid = t.typelem AND t.typcategory = 'A' \
             WHERE t.oid::bigint = ANY($1)",
        )
        .bind(&oids)
        .fetch_all(pool)
        .await
        .map_err(SqlSourceError::db("reading column types", target))?;
        let mut cols = Vec::with_capacity(names.len());
        for (name, oid) in names.iter().zip(&oids) {
            let (nsp, typname, category, elem) = types
                .iter()
                .find(|t| t.0 == *oid)
                .map(|t| (t.1.as_str(), t.2.as_str(), t.3.as_str(), t.4.as_str()))
                .unwrap_or(("pg_catalog", "text", "S", ""));
            cols.push(Col {
                name: name.clone(),
                kind: Kind::of(nsp, typname, category, elem),
                type_sql: format!("{}.{}", quote_ident(nsp), quote_ident(typname)),
                datetime: nsp == "pg_catalog" && matches!(typname, "timestamptz" | "timestamp" | "date"),
            });
        }
        let key_names: Vec<String> = match (key, oid) {
            (Some(k), _) if !k.is_empty() => k.to_vec(),
            (_, Some(oid)) => {
                let rows: Vec<(String,)> = sqlx::query_as(
                    "SELECT a.attname::text FROM pg_catalog.pg_index i \
                     JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
                     WHERE i.indrelid::bigint = $1 AND i.indisprimary \
                     ORDER BY array_position(i.indkey::int2[], a.attnum)",
                )
                .bind(oid)
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

    /// The column's index, or an error naming the columns there are.
    pub(crate) fn index_of(&self, name: &str, role: &'static str) -> Result<usize, SqlSourceError> {
        col_index(&self.cols, name, &self.relation, role)
    }

    /// The key columns' names.
    pub(crate) fn key_names(&self) -> Vec<String> {
        self.key.iter().map(|&i| self.cols[i].name.clone()).collect()
    }

    /// The select list: every column as text (arrays and numeric arrays as JSON text), then
    /// the key columns as text.
    fn select_list(&self) -> String {
        let mut parts: Vec<String> = self
            .cols
            .iter()
            .map(|c| {
                let q = format!("q.{}", quote_ident(&c.name));
                match c.kind {
                    Kind::Array { numeric: true } => format!("to_jsonb({q}::text[])::text"),
                    Kind::Array { numeric: false } => format!("to_jsonb({q})::text"),
                    _ => format!("{q}::text"),
                }
            })
            .collect();
        for &k in &self.key {
            parts.push(format!("q.{}::text", quote_ident(&self.cols[k].name)));
        }
        parts.join(", ")
    }

    /// Every row.
    pub(crate) fn snapshot_sql(&self) -> String {
        format!(
            "SELECT {} FROM {} AS q",
            self.select_list(),
            self.relation.table_sql()
        )
    }

    /// The rows of the keys in `$1` (a JSON array of arrays of key texts), preceded by each
    /// requested key (as this session prints it) and whether its row exists.
    pub(crate) fn fetch_sql(&self) -> String {
        let norm: Vec<String> = self
            .key
            .iter()
            .enumerate()
            .map(|(i, &c)| format!("CAST(v.v->>{i} AS {})::text AS k{i}", self.cols[c].type_sql))
            .collect();
        let knames: Vec<String> = (0..self.key.len()).map(|i| format!("k.k{i}")).collect();
        let on: Vec<String> = self
            .key
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                format!(
                    "q.{} = CAST(k.k{i} AS {})",
                    quote_ident(&self.cols[c].name),
                    self.cols[c].type_sql
                )
            })
            .collect();
        let first_key = quote_ident(&self.cols[self.key[0]].name);
        format!(
            "SELECT {}, q.{first_key} IS NOT NULL AS found, {} \
             FROM (SELECT DISTINCT {} FROM jsonb_array_elements($1::jsonb) AS v(v)) AS k \
             LEFT JOIN {} AS q ON {}",
            knames.join(", "),
            self.select_list(),
            norm.join(", "),
            self.relation.table_sql(),
            on.join(" AND "),
        )
    }

    /// The rows whose `col` is at or after `$1` (text of the column's type; `-infinity` for
    /// all) minus `$2` seconds, oldest first, each followed by its `col` as text.
    pub(crate) fn updated_sql(&self, col: usize) -> String {
        let c = &self.cols[col];
        let q = format!("q.{}", quote_ident(&c.name));
        format!(
            "SELECT {}, {q}::text FROM {} AS q \
             WHERE {q} >= CAST($1::text AS {}) - make_interval(secs => $2::float8) \
             ORDER BY {q}",
            self.select_list(),
            self.relation.table_sql(),
            c.type_sql
        )
    }

    /// Every row's key (as text).
    pub(crate) fn keys_sql(&self) -> String {
        let ks: Vec<String> = self
            .key
            .iter()
            .map(|&k| format!("q.{}::text", quote_ident(&self.cols[k].name)))
            .collect();
        format!("SELECT {} FROM {} AS q", ks.join(", "), self.relation.table_sql())
    }

    /// Read one row of [`Self::snapshot_sql`] (or of a query that selects the same list from
    /// column `offset` on). `None` when a key column is NULL (such a row has no name).
    pub(crate) fn read_row(&self, row: &PgRow, offset: usize) -> Result<Option<RawRow>, sqlx::Error> {
        let n = self.cols.len();
        let mut values = Vec::with_capacity(n);
        for i in 0..n {
            values.push(row.try_get::<Option<String>, _>(offset + i)?);
        }
        let mut key = Vec::with_capacity(self.key.len());
        for i in 0..self.key.len() {
            match row.try_get::<Option<String>, _>(offset + n + i)? {
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

    /// The `data` of a row: column name to JSON value.
    pub(crate) fn data(&self, values: &[Option<String>]) -> Map<String, Value> {
        let mut m = Map::with_capacity(self.cols.len());
        for (c, v) in self.cols.iter().zip(values) {
            let v = match v {
                None => Value::Null,
                Some(s) => c.kind.convert(s),
            };
            m.insert(c.name.clone(), v);
        }
        m
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> Shape {
        let col = |name: &str, kind| Col {
            name: name.to_string(),
            kind,
            type_sql: "\"pg_catalog\".\"int4\"".to_string(),
            datetime: false,
        };
        Shape {
            relation: Relation::Table {
                schema: "pub\"lic".into(),
                table: "we\"ird".into(),
            },
            cols: vec![col("i\"d", Kind::Int), col("v", Kind::Array { numeric: true })],
            key: vec![0],
        }
    }

    #[test]
    fn identifiers_are_quoted_everywhere() {
        let s = shape();
        assert_eq!(
            s.snapshot_sql(),
            "SELECT q.\"i\"\"d\"::text, to_jsonb(q.\"v\"::text[])::text, q.\"i\"\"d\"::text \
             FROM \"pub\"\"lic\".\"we\"\"ird\" AS q"
        );
        assert!(
            s.fetch_sql()
                .contains("q.\"i\"\"d\" = CAST(k.k0 AS \"pg_catalog\".\"int4\")")
        );
        assert_eq!(quote_ident(""), "\"\"");
        assert_eq!(quote_ident("a\"\"b"), "\"a\"\"\"\"b\"");
    }

    #[test]
    fn kinds_convert_text() {
        assert_eq!(Kind::of("pg_catalog", "numeric", "N", ""), Kind::Text);
        assert_eq!(
            Kind::of("pg_catalog", "_numeric", "A", "numeric"),
            Kind::Array { numeric: true }
        );
        assert_eq!(Kind::Bool.convert("t"), Value::Bool(true));
        assert_eq!(Kind::Text.convert("12.50"), Value::from("12.50"));
    }
}
