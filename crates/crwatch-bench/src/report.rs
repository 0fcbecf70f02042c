//! The suite's results: rows of samples for both peers, the printed table of medians and
//! ratios, and the `--json` file with every sample and the machine the run was on.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{Value, json};

/// One row of the table: every sample of both peers and how to print them.
///
/// Row names are stable across versions of the suite so runs can be compared; the object
/// count is a separate field (the table prints a section per size).
pub struct Row {
    pub label: String,
    /// The number of cached objects the row was measured at, if it depends on it.
    pub objects: Option<usize>,
    pub unit: &'static str,
    /// Throughputs: a higher figure is better (the table marks these rows).
    pub higher_is_better: bool,
    pub crwatch: Vec<f64>,
    /// `None`: kube-runtime has no counterpart (`note` says why).
    pub kube: Option<Vec<f64>>,
    pub note: Option<&'static str>,
}

impl Row {
    /// A row measured for both peers; lower is better.
    pub fn new(label: impl Into<String>, unit: &'static str) -> Self {
        Row {
            label: label.into(),
            objects: None,
            unit,
            higher_is_better: false,
            crwatch: vec![],
            kube: Some(vec![]),
            note: None,
        }
    }

    /// A row measured at `n` objects.
    pub fn at(mut self, n: usize) -> Self {
        self.objects = Some(n);
        self
    }

    /// Marks a throughput row.
    pub fn higher(mut self) -> Self {
        self.higher_is_better = true;
        self
    }

    /// A row kube-runtime has no counterpart for.
    pub fn crwatch_only(mut self, why: &'static str) -> Self {
        self.kube = None;
        self.note = Some(why);
        self
    }

    pub fn push_kube(&mut self, v: f64) {
        if let Some(k) = &mut self.kube {
            k.push(v);
        }
    }

    fn kube_median(&self) -> Option<f64> {
        self.kube.as_ref().map(|k| median(k))
    }

    /// crwatch / kube-runtime, when both medians are usable (a zero or missing peer figure
    /// has no meaningful ratio).
    fn ratio(&self) -> Option<f64> {
        let (c, k) = (median(&self.crwatch), self.kube_median()?);
        (c.is_finite() && k.is_finite() && k > 0.0).then(|| c / k)
    }
}

/// The median of `xs` (NaN for none).
pub fn median(xs: &[f64]) -> f64 {
    let mut xs = xs.to_vec();
    xs.sort_by(f64::total_cmp);
    match xs.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => xs[n / 2],
        n => (xs[n / 2 - 1] + xs[n / 2]) / 2.0,
    }
}

/// Bytes as MiB.
pub fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn fmt_value(v: f64, unit: &str) -> String {
    if !v.is_finite() {
        return "—".into();
    }
    match unit {
        "s" => format!("{v:.2} s"),
        // Latencies span µs to seconds: three significant digits.
        "ms" if v < 1.0 => format!("{v:.3} ms"),
        "ms" if v < 10.0 => format!("{v:.2} ms"),
        "ms" => format!("{v:.1} ms"),
        "×" => format!("{v:.2}×"),
        "M/s" => format!("{v:.2} M/s"),
        "/s" => format!("{v:.0}/s"),
        unit => format!("{v:.1} {unit}"),
    }
}

/// The table: a section per object count, medians, and crwatch / kube-runtime ratios.
pub fn table(rows: &[Row], title: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "\n{title}\n");
    let _ = writeln!(
        out,
        "{:<52} {:>13} {:>13}   ratio (crwatch / kube-runtime)",
        "benchmark (↑: higher is better)", "crwatch", "kube-runtime"
    );
    let mut section = None;
    for row in rows {
        if row.objects != section {
            section = row.objects;
            if let Some(n) = section {
                let _ = writeln!(out, "-- {n} objects");
            } else {
                let _ = writeln!(out, "--");
            }
        }
        let label = if row.higher_is_better {
            format!("{} ↑", row.label)
        } else {
            row.label.clone()
        };
        let kube = row
            .kube_median()
            .map_or_else(|| "n/a".to_string(), |k| fmt_value(k, row.unit));
        let ratio = match (row.ratio(), row.note) {
            (Some(r), _) => format!("{r:.2}"),
            (None, Some(note)) => note.to_string(),
            (None, None) => "—".to_string(),
        };
        let _ = writeln!(
            out,
            "{:<52} {:>13} {:>13}   {ratio}",
            label,
            fmt_value(median(&row.crwatch), row.unit),
            kube
        );
    }
    out
}

/// What the run ran on, for the JSON file and the README.
pub fn machine() -> Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string());
    let mem_total = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .map(|v| v.trim().to_string());
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    json!({
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "cpu": model,
        "memory": mem_total,
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
        "os": std::env::consts::OS,
        "arch": std::env::consts::ARCH,
        "build": if cfg!(debug_assertions) { "debug" } else { "release" },
        "commit": commit,
    })
}

/// One line describing the machine, for the end of the table.
pub fn machine_line(m: &Value) -> String {
    format!(
        "{} cores ({}), {}, Linux {}, {} build",
        m["cores"],
        m["cpu"].as_str().unwrap_or("unknown CPU"),
        m["memory"].as_str().unwrap_or("unknown memory"),
        m["kernel"].as_str().unwrap_or("?"),
        m["build"].as_str().unwrap_or("?"),
    )
}

/// Writes every row with all its samples, medians and ratio, the options and the machine.
pub fn write_json(path: &Path, rows: &[Row], options: Value, machine: Value) -> Result<()> {
    let num = |v: f64| if v.is_finite() { json!(v) } else { Value::Null };
    let rows: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "name": r.label,
                "objects": r.objects,
                "unit": r.unit,
                "higher_is_better": r.higher_is_better,
                "crwatch": {"median": num(median(&r.crwatch)), "samples": r.crwatch},
                "kube_runtime": r.kube.as_ref().map(|k| json!({"median": num(median(k)), "samples": k})),
                "ratio": r.ratio(),
                "note": r.note,
            })
        })
        .collect();
    let doc = json!({
        "suite": "crwatch-bench",
        "options": options,
        "machine": machine,
        "rows": rows,
    });
    let text = serde_json::to_string_pretty(&doc)?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_ratio_guard_zero() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0]), 2.5);
        assert!(median(&[]).is_nan());
        let mut row = Row::new("lag", "ms");
        row.crwatch.push(1.0);
        row.push_kube(0.0);
        assert_eq!(row.ratio(), None, "a zero peer figure has no ratio");
        let text = table(&[row], "t");
        assert!(text.contains("lag"), "{text}");
    }
}
