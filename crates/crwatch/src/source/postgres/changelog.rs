//! The change log behind LISTEN/NOTIFY: the SQL that installs (and removes) a trigger, its
//! function, a per-table change-log table and a small state table, and the names they get.
//!
//! The trigger writes one log row per changed key (`I`, `U`, `D`; `T` for TRUNCATE) with a
//! `bigserial` id and the writing transaction's id (`xid`), then notifies the channel with a
//! payload of only the log id, the operation and the transaction id (never the row or the key, so NOTIFY's
//! 8000-byte payload limit and long keys never fail a writer's transaction). The source reads
//! the log, not the payloads: ids are not assigned in commit order, so it tracks the oldest
//! transaction that was still running at its last read (`pg_snapshot_xmin`) and re-reads every
//! log row from there (deduplicating what it applied). Nothing committed is skipped, whatever
//! the order in which concurrent writers commit, and whether or not a notification was lost.

use sha2::{Digest, Sha256};

use super::schema::quote_ident;

/// The objects one watched table's change log consists of, and the SQL to create or drop them.
///
/// Names are derived from the table (`crwatch_<10 hex digits>_...`, in the table's schema), so
/// every table has its own log, and any source watching the table finds it.
///
/// ```
/// use crwatch::source::postgres::ChangeLog;
/// let log = ChangeLog::new("public", "orders", &["id".to_string()]);
/// assert!(log.install_sql().contains("CREATE TRIGGER"));
/// assert!(log.uninstall_sql().contains("DROP TABLE IF EXISTS"));
/// assert!(log.channel().starts_with("crwatch_"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeLog {
    schema: String,
    table: String,
    key: Vec<String>,
    tag: String,
}

impl ChangeLog {
    /// The change log of `schema.table`, keyed by the `key` columns.
    pub fn new(schema: &str, table: &str, key: &[String]) -> Self {
        let mut h = Sha256::new();
        h.update(schema.as_bytes());
        h.update([0u8]);
        h.update(table.as_bytes());
        let tag = hex::encode(&h.finalize()[..5]);
        ChangeLog {
            schema: schema.to_string(),
            table: table.to_string(),
            key: key.to_vec(),
            tag,
        }
    }

    /// The NOTIFY channel (`crwatch_<hex>`).
    pub fn channel(&self) -> String {
        format!("crwatch_{}", self.tag)
    }

    /// The change-log table's name (unquoted; in the watched table's schema).
    pub fn log_table(&self) -> String {
        format!("crwatch_{}_log", self.tag)
    }

    /// The state table's name (one row: an incarnation id and how far the log was pruned).
    pub fn state_table(&self) -> String {
        format!("crwatch_{}_state", self.tag)
    }

    /// The trigger function's name.
    pub fn function(&self) -> String {
        format!("crwatch_{}_fn", self.tag)
    }

    fn q(&self, name: &str) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(name))
    }

    pub(crate) fn log_sql(&self) -> String {
        self.q(&self.log_table())
    }

    pub(crate) fn state_sql(&self) -> String {
        self.q(&self.state_table())
    }

    fn table_sql(&self) -> String {
        self.q(&self.table)
    }

    fn row_trigger(&self) -> String {
        format!("crwatch_{}_row", self.tag)
    }

    fn truncate_trigger(&self) -> String {
        format!("crwatch_{}_truncate", self.tag)
    }

    /// The SQL that installs the change log (one transaction; safe to run again; needs the
    /// right to create tables and functions in the schema and triggers on the table). Give it
    /// to a DBA when the source must not install it itself.
    pub fn install_sql(&self) -> String {
        let log = self.log_sql();
        let state = self.state_sql();
        let func = self.q(&self.function());
        let table = self.table_sql();
        let keys = |rec: &str| {
            self.key
                .iter()
                .map(|k| format!("{rec}.{}::text", quote_ident(k)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let raw_keys = |rec: &str| {
            self.key
                .iter()
                .map(|k| format!("{rec}.{}", quote_ident(k)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let channel = self.channel();
        let body = format!(
            "DECLARE\n  log_id bigint;\n  log_op \"char\";\nBEGIN\n\
             \x20 IF TG_OP = 'TRUNCATE' THEN\n\
             \x20   INSERT INTO {log} (op) VALUES ('T') RETURNING id INTO log_id;\n\
             \x20   PERFORM pg_notify('{channel}', json_build_object('id', log_id, 'op', 'T', 'xid', pg_current_xact_id()::text::bigint)::text);\n\
             \x20   RETURN NULL;\n\
             \x20 END IF;\n\
             \x20 IF TG_OP <> 'INSERT' THEN\n\
             \x20   log_op := CASE TG_OP WHEN 'DELETE' THEN 'D' ELSE 'U' END;\n\
             \x20   INSERT INTO {log} (op, key) VALUES (log_op, jsonb_build_array({old})) RETURNING id INTO log_id;\n\
             \x20   PERFORM pg_notify('{channel}', json_build_object('id', log_id, 'op', log_op, 'xid', pg_current_xact_id()::text::bigint)::text);\n\
             \x20 END IF;\n\
             \x20 IF TG_OP = 'INSERT' OR (TG_OP = 'UPDATE' AND ROW({old_raw}) IS DISTINCT FROM ROW({new_raw})) THEN\n\
             \x20   log_op := CASE TG_OP WHEN 'INSERT' THEN 'I' ELSE 'U' END;\n\
             \x20   INSERT INTO {log} (op, key) VALUES (log_op, jsonb_build_array({new})) RETURNING id INTO log_id;\n\
             \x20   PERFORM pg_notify('{channel}', json_build_object('id', log_id, 'op', log_op, 'xid', pg_current_xact_id()::text::bigint)::text);\n\
             \x20 END IF;\n\
             \x20 RETURN NULL;\nEND\n",
            old = keys("OLD"),
            new = keys("NEW"),
            old_raw = raw_keys("OLD"),
            new_raw = raw_keys("NEW"),
        );
        // A dollar-quote tag that occurs nowhere in the body (quoted names are arbitrary).
        let mut tag = format!("crwatch_{}", self.tag);
        while body.contains(&format!("${tag}$")) {
            tag.push('x');
        }
        let idx_xid = quote_ident(&format!("crwatch_{}_log_xid", self.tag));
        let idx_at = quote_ident(&format!("crwatch_{}_log_at", self.tag));
        let row_trigger = quote_ident(&self.row_trigger());
        let truncate_trigger = quote_ident(&self.truncate_trigger());
        format!(
            "BEGIN;\n\
             CREATE TABLE IF NOT EXISTS {log} (\n\
             \x20 id bigserial PRIMARY KEY,\n\
             \x20 xid bigint NOT NULL DEFAULT (pg_current_xact_id()::text::bigint),\n\
             \x20 at timestamptz NOT NULL DEFAULT now(),\n\
             \x20 op \"char\" NOT NULL,\n\
             \x20 key jsonb\n);\n\
             CREATE INDEX IF NOT EXISTS {idx_xid} ON {log} (xid);\n\
             CREATE INDEX IF NOT EXISTS {idx_at} ON {log} (at);\n\
             CREATE TABLE IF NOT EXISTS {state} (\n\
             \x20 singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),\n\
             \x20 incarnation text NOT NULL DEFAULT gen_random_uuid()::text,\n\
             \x20 pruned_below bigint NOT NULL DEFAULT 0\n);\n\
             INSERT INTO {state} DEFAULT VALUES ON CONFLICT DO NOTHING;\n\
             CREATE OR REPLACE FUNCTION {func}() RETURNS trigger LANGUAGE plpgsql AS ${tag}$\n{body}${tag}$;\n\
             DROP TRIGGER IF EXISTS {row_trigger} ON {table};\n\
             CREATE TRIGGER {row_trigger} AFTER INSERT OR UPDATE OR DELETE ON {table} FOR EACH ROW EXECUTE FUNCTION {func}();\n\
             DROP TRIGGER IF EXISTS {truncate_trigger} ON {table};\n\
             CREATE TRIGGER {truncate_trigger} AFTER TRUNCATE ON {table} FOR EACH STATEMENT EXECUTE FUNCTION {func}();\n\
             COMMIT;\n"
        )
    }

    /// The SQL that removes the triggers, the function, the change log and the state table
    /// (one transaction; safe to run again).
    pub fn uninstall_sql(&self) -> String {
        format!(
            "BEGIN;\n\
             DROP TRIGGER IF EXISTS {rt} ON {table};\n\
             DROP TRIGGER IF EXISTS {tt} ON {table};\n\
             DROP FUNCTION IF EXISTS {func}();\n\
             DROP TABLE IF EXISTS {log};\n\
             DROP TABLE IF EXISTS {state};\n\
             COMMIT;\n",
            rt = quote_ident(&self.row_trigger()),
            tt = quote_ident(&self.truncate_trigger()),
            table = self.table_sql(),
            func = self.q(&self.function()),
            log = self.log_sql(),
            state = self.state_sql(),
        )
    }

    /// Delete log rows older than `$1` seconds or beyond the newest `$2`, but only whole
    /// finished transactions, and record the first transaction kept (`pruned_below`), so a
    /// source whose position was pruned relists.
    pub(crate) fn prune_sql(&self) -> String {
        let log = self.log_sql();
        format!(
            "WITH cutoff AS (\n\
             \x20 SELECT least(pg_snapshot_xmin(pg_current_snapshot())::text::bigint,\n\
             \x20   coalesce((SELECT min(l.xid) FROM {log} l WHERE l.at >= now() - make_interval(secs => $1::float8)\n\
             \x20     AND l.id > (SELECT coalesce(max(m.id), 0) FROM {log} m) - $2::bigint), 9223372036854775807)) AS c\n\
             ), gone AS (\n\
             \x20 DELETE FROM {log} WHERE xid < (SELECT c FROM cutoff) RETURNING 1\n\
             )\n\
             UPDATE {state} SET pruned_below = greatest(pruned_below, (SELECT c FROM cutoff))\n\
             WHERE EXISTS (SELECT 1 FROM gone)",
            state = self.state_sql(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_stay_quoted() {
        let log = ChangeLog::new(
            "s\"x",
            "we\"ird$crwatch$",
            &["k\"ey".to_string(), "b".to_string()],
        );
        let sql = log.install_sql();
        assert!(sql.contains("ON \"s\"\"x\".\"we\"\"ird$crwatch$\""));
        assert!(sql.contains("NEW.\"k\"\"ey\"::text, NEW.\"b\"::text"));
        assert!(sql.contains("ROW(OLD.\"k\"\"ey\", OLD.\"b\")"));
        assert_ne!(
            ChangeLog::new("a", "b", &[]).channel(),
            ChangeLog::new("a\0b", "", &[]).channel()
        );
    }
}
