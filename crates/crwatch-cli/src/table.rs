//! Tables as kubectl prints them: the server-side `meta.k8s.io/v1` Table (for lists and, with
//! `-w`, for every watch event), or the same printer columns computed client-side (from the
//! CRD's `additionalPrinterColumns`) when a server sends plain objects; columns aligned with
//! three spaces between them.

use serde_json::Value;

/// One printer column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Header as the server names it (printed upper-case).
    pub name: String,
    /// `string`, `integer`, `number`, `boolean` or `date`.
    pub type_: String,
    /// 0 for the default view, more for `-o wide` only.
    pub priority: i64,
    /// Where the value sits in the object (client-side columns only; `None` for the columns of
    /// a server-side Table, whose rows carry their cells).
    pub json_path: Option<String>,
}

/// Rows of cells, printed aligned.
#[derive(Debug, Default, Clone)]
pub struct Grid {
    widths: Vec<usize>,
}

impl Grid {
    /// A grid whose first columns are at least `widths` wide (e.g. room for `MODIFIED`).
    pub fn with_min_widths(widths: Vec<usize>) -> Self {
        Grid { widths }
    }

    /// Format `rows` (the first is usually the header), remembering column widths so later
    /// rows (watch events) line up with earlier ones where they fit.
    pub fn format(&mut self, rows: &[Vec<String>]) -> Vec<String> {
        for row in rows {
            for (i, cell) in row.iter().enumerate() {
                let w = cell.chars().count();
                match self.widths.get_mut(i) {
                    Some(cur) => *cur = (*cur).max(w),
                    None => self.widths.push(w),
                }
            }
        }
        rows.iter()
            .map(|row| {
                let mut line = String::new();
                for (i, cell) in row.iter().enumerate() {
                    if i + 1 == row.len() {
                        line.push_str(cell);
                    } else {
                        let pad = self.widths[i].saturating_sub(cell.chars().count()) + 3;
                        line.push_str(cell);
                        line.extend(std::iter::repeat_n(' ', pad));
                    }
                }
                line
            })
            .collect()
    }
}

/// A cell value as kubectl prints it (strings bare, null empty, others as JSON).
pub fn cell_text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A table row: the namespace of its object (if any) and its cells.
pub type Row = (Option<String>, Vec<String>);

/// Columns and rows of a server-side Table (`columnDefinitions`, `rows[].cells`), filtered to
/// priority 0 unless `wide`; each row with the namespace of its object (from `rows[].object`).
pub fn from_server_table(table: &Value, wide: bool) -> (Vec<String>, Vec<Row>) {
    let columns = server_columns(table).unwrap_or_default();
    let header = visible(&columns, wide)
        .map(|(_, c)| c.name.to_uppercase())
        .collect();
    let rows = table["rows"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|r| {
                    let ns = r["object"]["metadata"]["namespace"].as_str().map(str::to_string);
                    let cells = r["cells"].as_array().map(Vec::as_slice).unwrap_or_default();
                    (ns, row_cells(cells, &columns, wide))
                })
                .collect()
        })
        .unwrap_or_default();
    (header, rows)
}

/// Whether `v` is a `meta.k8s.io` Table (what servers answer to the Table `Accept` header).
pub fn is_table(v: &Value) -> bool {
    v["kind"] == "Table"
        && v["apiVersion"]
            .as_str()
            .is_some_and(|a| a.starts_with("meta.k8s.io/"))
}

/// The columns of a server-side Table (`columnDefinitions`), or `None` when it carries none
/// (servers send them only with the first event of a watch).
pub fn server_columns(table: &Value) -> Option<Vec<Column>> {
    let defs = table["columnDefinitions"].as_array()?;
    Some(
        defs.iter()
            .map(|d| Column {
                name: d["name"].as_str().unwrap_or("").to_string(),
                type_: d["type"].as_str().unwrap_or("string").to_string(),
                priority: d["priority"].as_i64().unwrap_or(0),
                json_path: None,
            })
            .collect(),
    )
}

/// The columns shown (priority 0 unless `wide`), with their index among all columns.
pub fn visible(columns: &[Column], wide: bool) -> impl Iterator<Item = (usize, &Column)> {
    columns
        .iter()
        .enumerate()
        .filter(move |(_, c)| wide || c.priority == 0)
}

/// The shown cells of a server-side row whose cells follow `columns`.
pub fn row_cells(cells: &[Value], columns: &[Column], wide: bool) -> Vec<String> {
    visible(columns, wide)
        .map(|(i, _)| cells.get(i).map(cell_text).unwrap_or_default())
        .collect()
}

/// The client-side columns of a custom resource version (NAME first, then the CRD's
/// additionalPrinterColumns), or NAME and AGE when there are none.
pub fn crd_columns(crd: Option<&Value>, version: &str) -> Vec<Column> {
    let mut cols = vec![Column {
        name: "Name".into(),
        type_: "string".into(),
        priority: 0,
        json_path: Some(".metadata.name".into()),
    }];
    let printer = crd
        .and_then(|c| c["spec"]["versions"].as_array())
        .and_then(|vs| vs.iter().find(|v| v["name"] == version))
        .and_then(|v| v["additionalPrinterColumns"].as_array().cloned());
    match printer {
        Some(pcs) => cols.extend(pcs.iter().map(|c| Column {
            name: c["name"].as_str().unwrap_or("").to_string(),
            type_: c["type"].as_str().unwrap_or("string").to_string(),
            priority: c["priority"].as_i64().unwrap_or(0),
            json_path: c["jsonPath"].as_str().map(str::to_string),
        })),
        None => cols.push(Column {
            name: "Age".into(),
            type_: "date".into(),
            priority: 0,
            json_path: Some(".metadata.creationTimestamp".into()),
        }),
    }
    cols
}

/// Evaluate the simple JSONPath subset printer columns use: `.a.b`, `.a[0].b`, `.a['x.y']`.
pub fn eval<'a>(obj: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = obj;
    let mut rest = path
        .trim()
        .trim_start_matches('{')
        .trim_end_matches('}')
        .trim_start_matches('$');
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            cur = cur.get(&r[..end])?;
            rest = &r[end..];
        } else if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']')?;
            let key = &r[..end];
            let quoted = key.trim_matches(|c| c == '\'' || c == '"');
            cur = match key.parse::<usize>() {
                Ok(i) => cur.get(i)?,
                Err(_) => cur.get(quoted)?,
            };
            rest = &r[end + 1..];
        } else {
            return None;
        }
    }
    Some(cur)
}

/// A duration in seconds as kubectl prints ages: `45s`, `3m12s`, `12m`, `5h3m`, `3d4h`, `40d`.
pub fn human_duration(secs: i64) -> String {
    let s = secs.max(0);
    let (m, h, d) = (s / 60, s / 3600, s / 86400);
    if s < 120 {
        format!("{s}s")
    } else if m < 10 {
        if s % 60 == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{}s", s % 60)
        }
    } else if h < 3 {
        format!("{m}m")
    } else if h < 8 {
        if m % 60 == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{}m", m % 60)
        }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 24 * 8 {
        if h % 24 == 0 {
            format!("{d}d")
        } else {
            format!("{d}d{}h", h % 24)
        }
    } else if d < 365 * 2 {
        format!("{d}d")
    } else {
        format!("{}y", d / 365)
    }
}

/// The cells of `obj` for `columns` (dates as ages). A column without a JSONPath (a server
/// column, for an object the server sent without cells) shows the name if it is the NAME
/// column and nothing otherwise.
pub fn cells(obj: &Value, columns: &[Column]) -> Vec<String> {
    columns
        .iter()
        .map(|c| {
            let v = match &c.json_path {
                Some(p) => eval(obj, p),
                None if c.name.eq_ignore_ascii_case("name") => obj.pointer("/metadata/name"),
                None => None,
            };
            match (c.type_.as_str(), v) {
                ("date", Some(Value::String(ts))) => chrono::DateTime::parse_from_rfc3339(ts)
                    .map(|t| human_duration((chrono::Utc::now() - t.to_utc()).num_seconds()))
                    .unwrap_or_else(|_| ts.clone()),
                (_, Some(v)) => cell_text(v),
                (_, None) => String::new(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn grid_aligns_with_three_spaces() {
        let mut g = Grid::default();
        let lines = g.format(&[
            vec!["NAME".into(), "ENGINE".into(), "AGE".into()],
            vec!["my-app-db".into(), "PostgreSQL".into(), "5s".into()],
        ]);
        assert_eq!(
            lines,
            ["NAME        ENGINE       AGE", "my-app-db   PostgreSQL   5s"]
        );
        assert_eq!(
            g.format(&[vec!["x".into(), "y".into(), "z".into()]]),
            ["x           y            z"]
        );
    }

    #[test]
    fn jsonpath_subset_and_ages() {
        let o = json!({"a": {"b": [{"c": 1}], "x.y": "z"}});
        assert_eq!(eval(&o, ".a.b[0].c"), Some(&json!(1)));
        assert_eq!(eval(&o, ".a['x.y']"), Some(&json!("z")));
        assert_eq!(eval(&o, ".a.missing"), None);
        assert_eq!(human_duration(45), "45s");
        assert_eq!(human_duration(192), "3m12s");
        assert_eq!(human_duration(720), "12m");
        assert_eq!(human_duration(5 * 3600 + 180), "5h3m");
        assert_eq!(human_duration(3 * 86400 + 4 * 3600), "3d4h");
    }

    #[test]
    fn server_tables_filter_by_priority() {
        let t = json!({
            "kind": "Table", "apiVersion": "meta.k8s.io/v1",
            "columnDefinitions": [{"name": "Name", "priority": 0}, {"name": "Extra", "priority": 1}],
            "rows": [{"cells": ["a", true], "object": {"metadata": {"namespace": "ns"}}}],
        });
        assert!(is_table(&t));
        assert!(!is_table(
            &json!({"kind": "Table", "apiVersion": "example.com/v1"})
        ));
        let (h, rows) = from_server_table(&t, false);
        assert_eq!(h, ["NAME"]);
        assert_eq!(rows, [(Some("ns".to_string()), vec!["a".to_string()])]);
        let (h, rows) = from_server_table(&t, true);
        assert_eq!(h, ["NAME", "EXTRA"]);
        assert_eq!(rows[0].1, ["a", "true"]);
        // Watch events after the first carry no column definitions.
        assert_eq!(server_columns(&json!({"columnDefinitions": null})), None);
    }

    #[test]
    fn server_columns_fall_back_to_the_name_for_objects_without_cells() {
        let cols = server_columns(&json!({"columnDefinitions": [
            {"name": "Name", "type": "string"}, {"name": "Data", "type": "string"}]}))
        .unwrap_or_default();
        assert_eq!(
            cells(&json!({"metadata": {"name": "x"}}), &cols),
            ["x".to_string(), String::new()]
        );
        assert_eq!(row_cells(&[json!("x"), json!(2)], &cols, false), ["x", "2"]);
    }
}
