//! Shared pieces of the SQL sources ([`super::postgres`], [`super::mysql`]): the error type,
//! URL parameters and password redaction, range-checked settings, row keys and row hashes,
//! JSON value helpers, the polling diff (known keys and versions) and the bounded event channel
//! that gives the consumer backpressure.

use std::collections::HashMap;
use std::time::Duration;

use kube::api::DynamicObject;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::object::{ObjectBuilder, stable_uid};
use super::{Event, EventStream, SourceError};

/// Why a SQL source could not be built or could not read its table. Messages say what to do
/// next and never contain a password.
#[derive(Debug, thiserror::Error)]
pub enum SqlSourceError {
    /// The URL could not be understood.
    #[error("invalid source URL {url}: {reason}")]
    InvalidUrl {
        /// The URL with any password replaced by `***`.
        url: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// A setting is outside its allowed range.
    #[error("{name}={value} is out of range: expected {expected}")]
    InvalidSetting {
        /// The setting (as in the URL).
        name: &'static str,
        /// The value given.
        value: String,
        /// The allowed range.
        expected: String,
    },
    /// The table or view does not exist (or the user cannot see it).
    #[error(
        "{relation} does not exist or is not visible to this user: check the schema and table names and the user's privileges"
    )]
    NoSuchRelation {
        /// `schema.table`.
        relation: String,
    },
    /// No key columns were given and the table has no primary key.
    #[error("{relation} has no primary key: pass key=COLUMN (several: key=A,B)")]
    NoPrimaryKey {
        /// `schema.table`, or `query`.
        relation: String,
    },
    /// A named column is not among the relation's columns.
    #[error("{relation} has no column {column:?} (used as {role}): columns are {available}")]
    NoSuchColumn {
        /// `schema.table`, or `query`.
        relation: String,
        /// The missing column.
        column: String,
        /// Where it was named (`key`, `updated_at`).
        role: &'static str,
        /// The columns there are.
        available: String,
    },
    /// The configuration cannot work (e.g. LISTEN/NOTIFY on a query).
    #[error("{0}")]
    Unsupported(String),
    /// A database call failed.
    #[error("{what} on {target}: {source}")]
    Database {
        /// What the source was doing.
        what: String,
        /// The server and database (no password).
        target: String,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
}

impl SqlSourceError {
    pub(crate) fn db(what: impl Into<String>, target: &str) -> impl FnOnce(sqlx::Error) -> Self {
        let what = what.into();
        let target = target.to_string();
        move |source| SqlSourceError::Database { what, target, source }
    }
}

/// A bound for a duration setting: `name` must lie in `min..=max`.
pub(crate) fn check_duration(
    name: &'static str,
    value: Duration,
    min: Duration,
    max: Duration,
) -> Result<Duration, SqlSourceError> {
    if value < min || value > max {
        return Err(SqlSourceError::InvalidSetting {
            name,
            value: format!("{value:?}"),
            expected: format!("{min:?} to {max:?}"),
        });
    }
    Ok(value)
}

/// A bound for a count setting: `name` must lie in `min..=max`.
pub(crate) fn check_count(name: &'static str, value: u64, min: u64, max: u64) -> Result<u64, SqlSourceError> {
    if value < min || value > max {
        return Err(SqlSourceError::InvalidSetting {
            name,
            value: value.to_string(),
            expected: format!("{min} to {max}"),
        });
    }
    Ok(value)
}

/// Parse `2s`, `500ms`, `1m`, `1h` or a plain number of seconds.
///
/// ```
/// # use std::time::Duration;
/// # use crwatch::source::sql::parse_duration;
/// assert_eq!(parse_duration("2s"), Some(Duration::from_secs(2)));
/// assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
/// assert_eq!(parse_duration("1.5"), Some(Duration::from_millis(1500)));
/// assert_eq!(parse_duration("soon"), None);
/// ```
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, factor) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num.trim().parse().ok()?;
    let secs = v * factor;
    if !(0.0..=1e9).contains(&secs) {
        return None;
    }
    Some(Duration::from_secs_f64(secs))
}

/// `url` with the password (in the user info or a `password=` parameter) replaced by `***`.
///
/// ```
/// # use crwatch::source::sql::redact_url;
/// assert_eq!(redact_url("postgres://app:s3cret@db:5432/shop?table=t"), "postgres://app:***@db:5432/shop?table=t");
/// assert_eq!(redact_url("mysql://db/x?password=pw&table=t"), "mysql://db/x?password=***&table=t");
/// ```
pub fn redact_url(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let mut out = String::with_capacity(url.len());
    match base.split_once("://") {
        Some((scheme, rest)) => {
            let auth_end = rest.find('/').unwrap_or(rest.len());
            let (authority, path) = rest.split_at(auth_end);
            out.push_str(scheme);
            out.push_str("://");
            match authority.rsplit_once('@') {
                Some((userinfo, host)) => {
                    match userinfo.split_once(':') {
                        Some((user, _)) => {
                            out.push_str(user);
                            out.push_str(":***");
                        }
                        None => out.push_str(userinfo),
                    }
                    out.push('@');
                    out.push_str(host);
                }
                None => out.push_str(authority),
            }
            out.push_str(path);
        }
        None => out.push_str(base),
    }
    if let Some(q) = query {
        out.push('?');
        let parts: Vec<String> = q
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => pair.to_string(),
            })
            .collect();
        out.push_str(&parts.join("&"));
    }
    out
}

/// Decode `%XX` escapes (and `+` as a space) in a URL query component.
pub(crate) fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("bad percent escape in {s:?}"))?;
                out.push(hex);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} is not UTF-8 after decoding"))
}

/// A source URL split into the driver's URL (with the driver's own parameters kept) and the
/// source's parameters (decoded).
pub(crate) struct SplitUrl {
    pub driver_url: String,
    pub params: Vec<(String, String)>,
}

impl SplitUrl {
    /// Split off the parameters named in `ours`.
    pub(crate) fn parse(url: &str, ours: &[&str]) -> Result<SplitUrl, SqlSourceError> {
        let invalid = |reason: String| SqlSourceError::InvalidUrl {
            url: redact_url(url),
            reason,
        };
        let (base, query) = match url.split_once('?') {
            Some((b, q)) => (b, q),
            None => (url, ""),
        };
        let mut kept = vec![];
        let mut params = vec![];
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let key = percent_decode(k).map_err(invalid)?;
            if ours.contains(&key.as_str()) {
                params.push((key, percent_decode(v).map_err(invalid)?));
            } else {
                kept.push(pair);
            }
        }
        let mut driver_url = base.to_string();
        if !kept.is_empty() {
            driver_url.push('?');
            driver_url.push_str(&kept.join("&"));
        }
        Ok(SplitUrl { driver_url, params })
    }

    /// The last value of parameter `name`.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A boolean URL parameter (`true/false/1/0/yes/no`).
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
pub(crate) fn parse_bool(url: &str, name: &str, v: &str) -> Result<bool, SqlSourceError> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(SqlSourceError::InvalidUrl {
            url: redact_url(url),
            reason: format!("{name}={v:?}: expected true or false"),
        }),
    }
}

/// A comma-separated column list (`key=a,b`); a backslash escapes a comma or a backslash.
pub(crate) fn split_columns(v: &str) -> Vec<String> {
    let mut out = vec![];
    let mut cur = String::new();
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n)
                }
            }
            ',' => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out.into_iter().filter(|c| !c.is_empty()).collect()
}

/// The object name of a row: its key, or for a composite key the parts joined with `,` (a
/// `,` or `\` inside a part is escaped with `\`, so different keys never share a name).
///
/// ```
/// # use crwatch::source::sql::key_name;
/// assert_eq!(key_name(&["42"]), "42");
/// assert_eq!(key_name(&["eu", "7"]), "eu,7");
/// assert_eq!(key_name(&["a,b", "c\\"]), "a\\,b,c\\\\");
/// ```
pub fn key_name<S: AsRef<str>>(parts: &[S]) -> String {
    if let [one] = parts {
        return one.as_ref().to_string();
    }
    let mut out = String::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        for c in p.as_ref().chars() {
            if c == ',' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
    }
    out
}

/// The version of a row: the first 16 hex digits of a SHA-256 over its column values (as
/// text, NULL distinct from any text), so an unchanged row keeps its resourceVersion.
pub(crate) fn row_hash(values: &[Option<String>]) -> String {
    let mut h = Sha256::new();
    for v in values {
        match v {
            None => h.update([0u8]),
            Some(s) => {
                h.update([1u8]);
                h.update((s.len() as u64).to_le_bytes());
                h.update(s.as_bytes());
            }
        }
    }
    let digest = h.finalize();
    hex::encode(&digest[..8])
}

/// Standard base64 (with padding) of `bytes`.
pub(crate) fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// An integer from its text, as a JSON number (a string when it does not fit 64 bits).
pub(crate) fn int_value(s: &str) -> Value {
    if let Ok(i) = s.parse::<i64>() {
        return Value::from(i);
    }
    if let Ok(u) = s.parse::<u64>() {
        return Value::from(u);
    }
    Value::String(s.to_string())
}

/// A float from its text: a JSON number when finite, else the text (`NaN`, `Infinity`).
pub(crate) fn float_value(s: &str) -> Value {
    s.parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map(Value::Number)
        .unwrap_or_else(|| Value::String(s.to_string()))
}

/// A JSON document from its text (the text itself when it does not parse).
pub(crate) fn json_value(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.to_string()))
}

/// Bytes from hex text (optionally `\x`-prefixed, as PostgreSQL prints bytea) as base64.
pub(crate) fn hex_to_base64(s: &str) -> Value {
    let h = s.strip_prefix("\\x").unwrap_or(s);
    match hex::decode(h) {
        Ok(bytes) => Value::String(base64(&bytes)),
        Err(_) => Value::String(s.to_string()),
    }
}

/// A timestamp with an offset (`2024-01-02 03:04:05.6+00`) as RFC 3339 in UTC (`...Z`).
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
pub(crate) fn timestamptz_value(s: &str) -> Value {
    match chrono::DateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f%#z") {
        Ok(t) => Value::String(
            t.with_timezone(&chrono::Utc)
                .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        ),
        Err(_) => Value::String(s.to_string()),
    }
}

/// A UTC timestamp without an offset in its text (MySQL `TIMESTAMP` read with `time_zone =
/// '+00:00'`) as RFC 3339 (`...Z`).
#[cfg_attr(not(feature = "mysql"), allow(dead_code))]
pub(crate) fn utc_timestamp_value(s: &str) -> Value {
    match chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f") {
        Ok(t) => Value::String(t.and_utc().to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)),
        Err(_) => Value::String(s.to_string()),
    }
}

/// A timestamp without a time zone as ISO 8601 without an offset (`2024-01-02T03:04:05`):
/// the column has no offset, and appending `Z` would invent one.
pub(crate) fn naive_timestamp_value(s: &str) -> Value {
    match chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f") {
        Ok(_) => Value::String(s.replacen(' ', "T", 1)),
        Err(_) => Value::String(s.to_string()),
    }
}

/// How rows become objects: `apiVersion`, kind `Row`, the namespace, and the uid's source.
#[derive(Debug, Clone)]
pub(crate) struct RowShape {
    pub api_version: &'static str,
    pub namespace: String,
    pub uid_source: String,
}

impl RowShape {
    /// The object of a row.
    pub(crate) fn object(&self, name: &str, rv: &str, data: Map<String, Value>) -> DynamicObject {
        ObjectBuilder::new(self.api_version, "Row", name)
            .namespace(self.namespace.clone())
            .uid(stable_uid(&self.uid_source, name))
            .resource_version(rv)
            .field("data", Value::Object(data))
            .build()
    }

    /// A deleted row: its identity and last known version (the row itself is gone).
    pub(crate) fn tombstone(&self, name: &str, rv: Option<&str>) -> DynamicObject {
        let b = ObjectBuilder::new(self.api_version, "Row", name)
            .namespace(self.namespace.clone())
            .uid(stable_uid(&self.uid_source, name));
        match rv {
            Some(rv) => b.resource_version(rv).build(),
            None => b.build(),
        }
    }
}

/// One row as read: its object name, version and column values as text.
#[derive(Debug, Clone)]
pub(crate) struct RawRow {
    pub name: String,
    pub rv: String,
    pub values: Vec<Option<String>>,
}

/// What a polling source knows: each row's name and version. Compares a scan with it.
#[derive(Debug, Default)]
pub(crate) struct Known {
    pub rows: HashMap<String, String>,
}

impl Known {
    /// Remember `row`; whether it is new or changed.
    pub(crate) fn update(&mut self, name: &str, rv: &str) -> bool {
        match self.rows.get(name) {
            Some(old) if old == rv => false,
            _ => {
                self.rows.insert(name.to_string(), rv.to_string());
                true
            }
        }
    }

    /// Forget every row not in `present`; the forgotten ones (name, last version).
    pub(crate) fn retain_present(
        &mut self,
        present: &std::collections::HashSet<String>,
    ) -> Vec<(String, String)> {
        let gone: Vec<(String, String)> = self
            .rows
            .iter()
            .filter(|(k, _)| !present.contains(*k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (k, _) in &gone {
            self.rows.remove(k);
        }
        gone
    }
}

/// The consumer went away: the source stops.
#[derive(Debug)]
pub(crate) struct Closed;

/// The sending half of a source's bounded event channel.
#[derive(Clone)]
pub(crate) struct Emitter {
    tx: mpsc::Sender<Result<Event<DynamicObject>, SourceError>>,
    pub name: String,
}

impl Emitter {
    /// Send one event, waiting while the consumer is behind (backpressure).
    pub(crate) async fn send(&self, ev: Event<DynamicObject>) -> Result<(), Closed> {
        self.tx.send(Ok(ev)).await.map_err(|_| Closed)
    }

    /// Report an error (the source keeps going).
    pub(crate) async fn error(&self, message: impl Into<String>, relist: bool) -> Result<(), Closed> {
        let mut e = SourceError::new(self.name.clone(), message);
        e.relist = relist;
        self.tx.send(Err(e)).await.map_err(|_| Closed)
    }

    /// Resolves when the consumer has dropped the stream.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) async fn closed(&self) {
        self.tx.closed().await
    }

    /// Sleep for `d`, or return `Err(Closed)` early when the consumer went away.
    pub(crate) async fn sleep(&self, d: Duration) -> Result<(), Closed> {
        tokio::select! {
            _ = self.tx.closed() => Err(Closed),
            _ = tokio::time::sleep(d) => Ok(()),
        }
    }
}

/// A bounded channel of `capacity` events: the emitter for the source's task and the stream
/// for the informer.
pub(crate) fn channel(name: String, capacity: usize) -> (Emitter, EventStream<DynamicObject>) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let stream = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|ev| (ev, rx)) });
    (Emitter { tx, name }, Box::pin(stream))
}

/// Reconnect backoff of the SQL sources: client-go's 800 ms doubling to 30 s, with up to 20 %
/// jitter; [`Backoff::reset`] after a success.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    next: Duration,
}

impl Backoff {
    const INITIAL: Duration = Duration::from_millis(800);
    const MAX: Duration = Duration::from_secs(30);

    pub(crate) fn new() -> Self {
        Backoff { next: Self::INITIAL }
    }

    /// The next pause.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        base + base.mul_f64(rand::random::<f64>() * 0.2)
    }

    /// Start again from the initial pause.
    pub(crate) fn reset(&mut self) {
        self.next = Self::INITIAL;
    }
}

/// The buffer between a source and its consumer (events), range-checked.
pub(crate) fn check_buffer(n: usize) -> Result<usize, SqlSourceError> {
    check_count("buffer", n as u64, 1, 1_000_000).map(|n| n as usize)
}

/// What one poll failed on: the database (report, retry) or the consumer (stop).
pub(crate) enum Stop {
    Closed,
    Failed(String),
}

impl From<Closed> for Stop {
    fn from(_: Closed) -> Self {
        Stop::Closed
    }
}

impl From<SqlSourceError> for Stop {
    fn from(e: SqlSourceError) -> Self {
        Stop::Failed(e.to_string())
    }
}

/// A polling source: one poll, where its events go, and how often.
pub(crate) trait Poll {
    /// Bring the consumer up to date with the table once.
    fn poll_once(&mut self) -> impl std::future::Future<Output = Result<(), Stop>> + Send;
    /// Where events go.
    fn emitter(&self) -> &Emitter;
    /// The pause between polls that succeeded.
    fn interval(&self) -> std::time::Duration;
}

/// Poll until the consumer goes away: `Progress` after each good poll, the error and a
/// growing backoff after each failed one.
pub(crate) async fn poll_forever<P: Poll>(p: &mut P) {
    let mut backoff = Backoff::new();
    loop {
        let delay = match p.poll_once().await {
            Ok(()) => {
                backoff.reset();
                if p.emitter().send(Event::Progress(None)).await.is_err() {
                    break;
                }
                p.interval()
            }
            Err(Stop::Closed) => break,
            Err(Stop::Failed(msg)) => {
                if p.emitter().error(msg, false).await.is_err() {
                    break;
                }
                backoff.next_delay()
            }
        };
        if p.emitter().sleep(delay).await.is_err() {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_rfc_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    #[test]
    fn urls_lose_their_passwords() {
        assert_eq!(
            redact_url("postgresql://u:p%40ss@h/db"),
            "postgresql://u:***@h/db"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(
            redact_url("postgres://h/db?Password=x"),
            "postgres://h/db?Password=***"
        );
        assert_eq!(redact_url("not a url"), "not a url");
    }

    #[test]
    fn split_url_keeps_driver_parameters() {
        let s = SplitUrl::parse(
            "postgres://h/db?sslmode=disable&table=a%20b&key=x",
            &["table", "key"],
        )
        .unwrap();
        assert_eq!(s.driver_url, "postgres://h/db?sslmode=disable");
        assert_eq!(s.get("table"), Some("a b"));
        assert_eq!(s.get("key"), Some("x"));
        assert!(SplitUrl::parse("postgres://h/db?table=%zz", &["table"]).is_err());
    }

    #[test]
    fn values_convert_faithfully() {
        assert_eq!(int_value("-9223372036854775808"), Value::from(i64::MIN));
        assert_eq!(int_value("18446744073709551615"), Value::from(u64::MAX));
        assert_eq!(float_value("NaN"), Value::from("NaN"));
        assert_eq!(float_value("1.5"), Value::from(1.5));
        assert_eq!(hex_to_base64("\\x666f6f"), Value::from("Zm9v"));
        assert_eq!(
            timestamptz_value("2024-01-02 03:04:05.25+00"),
            Value::from("2024-01-02T03:04:05.250Z")
        );
        assert_eq!(
            timestamptz_value("2024-01-02 05:04:05+02"),
            Value::from("2024-01-02T03:04:05Z")
        );
        assert_eq!(timestamptz_value("infinity"), Value::from("infinity"));
        assert_eq!(
            naive_timestamp_value("2024-01-02 03:04:05"),
            Value::from("2024-01-02T03:04:05")
        );
        assert_eq!(json_value("{\"a\":[1]}"), serde_json::json!({"a": [1]}));
    }

    #[test]
    fn columns_split_with_escapes() {
        assert_eq!(split_columns("a,b"), vec!["a", "b"]);
        assert_eq!(split_columns("a\\,b,c"), vec!["a,b", "c"]);
    }

    #[test]
    fn row_hash_separates_null_and_text() {
        assert_ne!(row_hash(&[None]), row_hash(&[Some(String::new())]));
        assert_ne!(
            row_hash(&[Some("ab".into()), Some("c".into())]),
            row_hash(&[Some("a".into()), Some("bc".into())])
        );
        assert_eq!(row_hash(&[Some("x".into())]).len(), 16);
    }

    #[test]
    fn settings_are_range_checked() {
        assert!(
            check_duration(
                "interval",
                Duration::from_millis(10),
                Duration::from_millis(100),
                Duration::from_secs(3600)
            )
            .is_err()
        );
        assert!(check_count("n", 0, 1, 10).is_err());
        assert_eq!(check_count("n", 5, 1, 10).unwrap(), 5);
    }
}
