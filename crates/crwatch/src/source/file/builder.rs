//! Configuring a file source: the builder with its range-checked settings, and the
//! `file://…?mode=raw&include=…` spec the CLI takes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::*;

impl FileSource {
    /// A source from a spec as the CLI takes it: `file://` + a path (absolute, or relative
    /// like `file://./conf`), and optional query parameters:
    ///
    /// | parameter | meaning |
    /// | --- | --- |
    /// | `mode=documents\|raw` | [`Mode`] |
    /// | `include=GLOB`, `exclude=GLOB` | repeatable or comma-separated |
    /// | `defaultExcludes=false` | do not skip hidden and editor files |
    /// | `kind=Kind` or `Kind.group` | only these kinds (repeatable) |
    /// | `namespace=NS` | namespace for documents without one |
    /// | `debounce=100ms` | inotify debounce |
    /// | `poll=2s` | poll instead of inotify |
    /// | `maxFiles=N`, `maxFileSize=8Mi`, `maxContentSize=1Mi` | limits (bytes take `Ki`, `Mi`, `Gi`) |
    ///
    /// ```
    /// use crwatch::source::Source;
    /// use crwatch::source::file::FileSource;
    /// let dir = tempfile::tempdir()?;
    /// let spec = format!("file://{}?mode=raw&include=*.conf,*.ini&poll=500ms", dir.path().display());
    /// let source = FileSource::from_url(&spec)?;
    /// assert!(source.describe().starts_with("file:"));
    /// assert!(FileSource::from_url("file://./no/such/dir").is_err());
    /// assert!(FileSource::from_url("http://example.com").is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_url(spec: &str) -> Result<Self, FileSourceError> {
        let bad = |reason: String| FileSourceError::Spec {
            spec: spec.to_string(),
            reason,
        };
        let rest = spec
            .strip_prefix("file://")
            .or_else(|| spec.strip_prefix("file:"))
            .ok_or_else(|| {
                bad("it must start with file:// (e.g. file://./conf or file:///etc/app)".into())
            })?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let path = percent_decode(path).map_err(bad)?;
        if path.is_empty() {
            return Err(bad("the path is empty (e.g. file://./conf)".into()));
        }
        let mut b = FileSource::builder(&path);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v).map_err(bad)?;
            let list = || v.split(',').filter(|s| !s.is_empty()).map(str::to_string);
            b = match k {
                "mode" => match v.as_str() {
                    "documents" | "docs" => b.mode(Mode::Documents),
                    "raw" => b.mode(Mode::Raw),
                    _ => return Err(bad(format!("mode={v}: use mode=documents or mode=raw"))),
                },
                "include" => list().fold(b, |b, g| b.include(g)),
                "exclude" => list().fold(b, |b, g| b.exclude(g)),
                "defaultExcludes" | "default_excludes" => b.default_excludes(parse_bool(&v).map_err(bad)?),
                "kind" => list().fold(b, |b, k| b.kind(k)),
                "namespace" => b.namespace(v),
                "debounce" => b.debounce(parse_duration(&v).map_err(bad)?),
                "poll" => b.poll(if v.is_empty() {
                    DEFAULT_POLL_INTERVAL
                } else {
                    parse_duration(&v).map_err(bad)?
                }),
                "maxFiles" | "max_files" => b.max_files(
                    v.parse()
                        .map_err(|_| bad(format!("maxFiles={v}: use a whole number")))?,
                ),
                "maxFileSize" | "max_file_size" => b.max_file_size(parse_bytes(&v).map_err(bad)?),
                "maxContentSize" | "max_content_size" => b.max_content_size(parse_bytes(&v).map_err(bad)?),
                other => {
                    return Err(bad(format!(
                        "unknown parameter {other:?}; known: mode, include, exclude, defaultExcludes, kind, namespace, debounce, poll, maxFiles, maxFileSize, maxContentSize"
                    )));
                }
            };
        }
        b.build()
    }
}

/// Settings of a [`FileSource`]; [`build`](Self::build) checks them.
#[derive(Debug, Clone)]
pub struct FileSourceBuilder {
    path: PathBuf,
    mode: Mode,
    include: Vec<String>,
    exclude: Vec<String>,
    default_excludes: bool,
    debounce: Duration,
    poll: Option<Duration>,
    fallback_poll: Duration,
    max_files: usize,
    max_file_size: u64,
    max_content_size: u64,
    channel_capacity: usize,
    kinds: Vec<String>,
    namespace: Option<String>,
    fail_watch: bool,
}

impl FileSourceBuilder {
    pub(super) fn new(path: &Path) -> Self {
        FileSourceBuilder {
            path: path.to_path_buf(),
            mode: Mode::Documents,
            include: vec![],
            exclude: vec![],
            default_excludes: true,
            debounce: DEFAULT_DEBOUNCE,
            poll: None,
            fallback_poll: DEFAULT_POLL_INTERVAL,
            max_files: DEFAULT_MAX_FILES,
            max_file_size: DEFAULT_MAX_FILE_SIZE,
            max_content_size: DEFAULT_MAX_CONTENT_SIZE,
            channel_capacity: DEFAULT_CHANNEL_CAPACITY,
            kinds: vec![],
            namespace: None,
            fail_watch: false,
        }
    }

    /// Documents (default) or raw files.
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// Only files matching this glob (repeatable). A pattern without `/` matches a file name
    /// at any depth (`*.yaml`); one with `/` matches the path from the root
    /// (`conf/**/*.json`). The first call replaces the default (`*.yaml`, `*.yml`, `*.json`
    /// for documents, everything for raw files).
    pub fn include(mut self, glob: impl Into<String>) -> Self {
        self.include.push(glob.into());
        self
    }

    /// Skip files and directories matching this glob (repeatable), besides
    /// [`DEFAULT_EXCLUDES`].
    pub fn exclude(mut self, glob: impl Into<String>) -> Self {
        self.exclude.push(glob.into());
        self
    }

    /// Whether [`DEFAULT_EXCLUDES`] (hidden files, editor temporary and swap files) apply
    /// (default true). `..`-prefixed entries (Kubernetes mount internals) are always skipped.
    pub fn default_excludes(mut self, on: bool) -> Self {
        self.default_excludes = on;
        self
    }

    /// Only documents of this kind (`Deployment`) or kind and group (`Deployment.apps`);
    /// repeatable. Useful because a store keys objects by namespace and name only.
    pub fn kind(mut self, kind: impl Into<String>) -> Self {
        self.kinds.push(kind.into());
        self
    }

    /// The namespace of documents that have none (as `kubectl apply -n` would).
    pub fn namespace(mut self, ns: impl Into<String>) -> Self {
        self.namespace = Some(ns.into());
        self
    }

    /// How long a path must be quiet before it is read (default 100 ms, 5 ms to 60 s): lets
    /// editors and copy tools finish writing.
    pub fn debounce(mut self, d: Duration) -> Self {
        self.debounce = d;
        self
    }

    /// Poll every `interval` (10 ms to 24 h) instead of using inotify: for network
    /// filesystems and other places without change notification.
    pub fn poll(mut self, interval: Duration) -> Self {
        self.poll = Some(interval);
        self.fallback_poll = interval;
        self
    }

    /// The polling interval used when inotify cannot be set up (default 2 s).
    pub fn fallback_poll_interval(mut self, interval: Duration) -> Self {
        self.fallback_poll = interval;
        self
    }

    /// At most this many files (default 100,000; 1 to 10,000,000).
    pub fn max_files(mut self, n: usize) -> Self {
        self.max_files = n;
        self
    }

    /// Document files larger than this are not parsed (default 8 MiB; 1 byte to 1 GiB).
    pub fn max_file_size(mut self, bytes: u64) -> Self {
        self.max_file_size = bytes;
        self
    }

    /// Raw files larger than this keep only their hash (default 1 MiB; 0 to 64 MiB).
    pub fn max_content_size(mut self, bytes: u64) -> Self {
        self.max_content_size = bytes;
        self
    }

    /// Events buffered towards the consumer before the source waits (default 1024; 1 to
    /// 1,000,000).
    pub fn channel_capacity(mut self, n: usize) -> Self {
        self.channel_capacity = n;
        self
    }

    /// Testing aid: act as if inotify could not be set up (exhausted watches or instances, a
    /// filesystem without it), to exercise the automatic fallback to polling.
    #[doc(hidden)]
    pub fn simulate_watch_failure(mut self) -> Self {
        self.fail_watch = true;
        self
    }

    /// Check the settings and resolve the path.
    pub fn build(self) -> Result<FileSource, FileSourceError> {
        check("debounce", self.debounce, DEBOUNCE_RANGE, |d| format!("{d:?}"))?;
        if let Some(p) = self.poll {
            check("poll", p, POLL_RANGE, |d| format!("{d:?}"))?;
        }
        check("fallback_poll_interval", self.fallback_poll, POLL_RANGE, |d| {
            format!("{d:?}")
        })?;
        check("max_files", self.max_files, MAX_FILES_RANGE, |n| n.to_string())?;
        check("max_file_size", self.max_file_size, MAX_FILE_SIZE_RANGE, |n| {
            n.to_string()
        })?;
        check(
            "max_content_size",
            self.max_content_size,
            MAX_CONTENT_SIZE_RANGE,
            |n| n.to_string(),
        )?;
        check("channel_capacity", self.channel_capacity, CHANNEL_RANGE, |n| {
            n.to_string()
        })?;

        let root_err = |source| FileSourceError::Root {
            path: self.path.clone(),
            source,
        };
        let meta = std::fs::metadata(&self.path).map_err(root_err)?;
        let (root, single) = if meta.is_dir() {
            (std::fs::canonicalize(&self.path).map_err(root_err)?, None)
        } else {
            // One file: watch its directory (atomic saves replace the file, ConfigMap mounts
            // swap `..data` beside it) and keep its name as given (it may be a symlink).
            let name = self
                .path
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| root_err(std::io::Error::other("the file name is not UTF-8")))?
                .to_string();
            let parent = match self.path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            };
            (std::fs::canonicalize(parent).map_err(root_err)?, Some(name))
        };
        let include = if self.include.is_empty() {
            match self.mode {
                Mode::Documents => vec!["*.yaml".into(), "*.yml".into(), "*.json".into()],
                Mode::Raw => vec!["*".into()],
            }
        } else {
            self.include.clone()
        };
        let mut exclude = self.exclude.clone();
        if self.default_excludes {
            exclude.extend(DEFAULT_EXCLUDES.iter().map(|s| s.to_string()));
        }
        let globs = |v: &[String]| {
            scan::glob_set(v).map_err(|(pattern, source)| FileSourceError::Glob { pattern, source })
        };
        let filter = scan::Filter::new(globs(&include)?, globs(&exclude)?, single.clone());
        let shown = self.path.display().to_string();
        let watched = match &single {
            Some(s) => root.join(s),
            None => root.clone(),
        };
        let name = match self.mode {
            Mode::Documents => format!("file:{}", watched.display()),
            Mode::Raw => format!("file:{} (raw)", watched.display()),
        };
        let cfg = Config {
            uid_source: format!("file:{}", watched.display()),
            root,
            shown,
            name,
            mode: self.mode,
            filter,
            debounce: self.debounce,
            poll: self.poll,
            fallback_poll: self.fallback_poll,
            max_files: self.max_files,
            max_file_size: self.max_file_size,
            max_content_size: self.max_content_size,
            channel_capacity: self.channel_capacity,
            kinds: self.kinds,
            namespace: self.namespace,
            fail_watch: self.fail_watch,
        };
        Ok(FileSource {
            cfg: Arc::new(cfg),
            shared: Arc::new(Shared::default()),
        })
    }
}

fn check<T: PartialOrd + Copy>(
    setting: &'static str,
    value: T,
    (min, max): (T, T),
    show: impl Fn(T) -> String,
) -> Result<(), FileSourceError> {
    if value < min || value > max {
        return Err(FileSourceError::OutOfRange {
            setting,
            value: show(value),
            min: show(min),
            max: show(max),
        });
    }
    Ok(())
}

pub(super) fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent-escape at {:?}", &s[i..]))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "percent-escapes do not decode to UTF-8".to_string())
}

fn parse_bool(v: &str) -> Result<bool, String> {
    match v {
        "true" | "1" | "yes" | "" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(format!("{v:?} is not a boolean: use true or false")),
    }
}

pub(super) fn parse_duration(v: &str) -> Result<Duration, String> {
    let err = || format!("{v:?} is not a duration: use e.g. 250ms, 2s, 5m or 1h");
    let split = v
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .ok_or_else(err)?;
    let (n, unit) = v.split_at(split);
    let n: f64 = n.parse().map_err(|_| err())?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(err()),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| err())
}

pub(super) fn parse_bytes(v: &str) -> Result<u64, String> {
    let err = || format!("{v:?} is not a size: use bytes or e.g. 512Ki, 8Mi, 1Gi");
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (n, unit) = v.split_at(split);
    let n: u64 = n.parse().map_err(|_| err())?;
    let mult = match unit {
        "" => 1,
        "Ki" | "K" | "k" => 1 << 10,
        "Mi" | "M" => 1 << 20,
        "Gi" | "G" => 1 << 30,
        _ => return Err(err()),
    };
    n.checked_mul(mult).ok_or_else(err)
}
