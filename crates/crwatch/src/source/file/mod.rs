//! Files and directories as a source: YAML/JSON documents as resources, or raw files as
//! `file.crwatch.io/v1` `File` objects, watched with inotify (debounced) or by polling.
//!
//! A [`FileSource`] walks a directory (recursively, with include/exclude globs) or watches one
//! file, and yields the common [`Event`](super::Event) shape: a complete list on start
//! (`Init`, `InitApply`…, `InitDone`), then `Apply`/`Delete` for documents that changed,
//! appeared or vanished, and `Progress(None)` after each batch ("healthy and up to date").
//!
//! * **Documents** ([`Mode::Documents`], the default): every YAML document (multi-document
//!   files included) or JSON object (or `List`/`items`) is one resource, identified by group,
//!   kind, namespace and name. Its own metadata is kept; it gets the annotation
//!   `file.crwatch.io/path` (the file, relative to the root), a `uid` (a stable one from
//!   [`stable_uid`](super::object::stable_uid) when it has none) and a `resourceVersion` from
//!   its content (the first 16 hex digits of the SHA-256 of its canonical JSON), so an
//!   unchanged file produces no change.
//! * **Raw** ([`Mode::Raw`]): every file is a `File` named by its relative path, with
//!   `data: {path, size, sha256, content}` (`contentBase64` for binary files; only the hash
//!   above [`FileSourceBuilder::max_content_size`]).
//!
//! What it copes with: editors' atomic saves (write a temporary file, rename it over),
//! vim's backup-and-rewrite and its `4913` probe, partial writes (debounced; a file that does
//! not parse keeps its last good version and is reported until it parses again), directories
//! moved in and out, Kubernetes ConfigMap/Secret mounts (the `..data` symlink swap; paths are
//! reported as the user sees them, `..`-prefixed entries are ignored), symlinks within the
//! root, inotify queue overflows (a full rescan emitted as a new list, which the informer
//! diffs), and filesystems without inotify (polling, also used automatically when the watcher
//! cannot be created).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use crwatch::source::{Event, Source};
//! use crwatch::source::file::FileSource;
//! use futures::StreamExt;
//!
//! let dir = tempfile::tempdir()?;
//! std::fs::write(dir.path().join("app.yaml"), "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: app}\ndata: {mode: fast}\n")?;
//! let source = FileSource::new(dir.path())?;
//! let mut events = Box::new(source).events();
//! assert!(matches!(events.next().await, Some(Ok(Event::Init))));
//! let Some(Ok(Event::InitApply(cm))) = events.next().await else { panic!() };
//! assert_eq!(cm.metadata.name.as_deref(), Some("app"));
//! assert_eq!(cm.data["data"]["mode"], "fast");
//! assert!(matches!(events.next().await, Some(Ok(Event::InitDone))));
//! # Ok(()) }
//! ```

mod engine;
mod parse;
mod scan;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use kube::api::DynamicObject;
use notify::event::{AccessKind, AccessMode, EventKind};

pub use parse::{PATH_ANNOTATION, RAW_API_VERSION, RAW_KIND};
pub use scan::DEFAULT_EXCLUDES;

use super::{EventStream, Source, SourceError};

/// Default debounce: events for a path are held this long after its last change.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(100);
/// Default polling interval (for [`FileSourceBuilder::poll`] without a value, and when inotify
/// is unavailable).
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(2);
/// Default limit on the number of files watched.
pub const DEFAULT_MAX_FILES: usize = 100_000;
/// Default limit on the size of a document file that is parsed (8 MiB).
pub const DEFAULT_MAX_FILE_SIZE: u64 = 8 << 20;
/// Default limit on the content kept for a raw file (1 MiB); larger files keep only their hash.
pub const DEFAULT_MAX_CONTENT_SIZE: u64 = 1 << 20;
/// Default capacity of the channel to the consumer (events wait there; the source waits when
/// it is full).
pub const DEFAULT_CHANNEL_CAPACITY: usize = 1024;

const DEBOUNCE_RANGE: (Duration, Duration) = (Duration::from_millis(5), Duration::from_secs(60));
const POLL_RANGE: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(86_400));
const MAX_FILES_RANGE: (usize, usize) = (1, 10_000_000);
const MAX_FILE_SIZE_RANGE: (u64, u64) = (1, 1 << 30);
const MAX_CONTENT_SIZE_RANGE: (u64, u64) = (0, 64 << 20);
const CHANNEL_RANGE: (usize, usize) = (1, 1_000_000);

/// What a file becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Each YAML document / JSON object is a resource (default include: `*.yaml`, `*.yml`,
    /// `*.json`).
    #[default]
    Documents,
    /// Each file is a `file.crwatch.io/v1` `File` (default include: every file).
    Raw,
}

/// A setting or a spec that cannot work, and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum FileSourceError {
    /// A numeric or duration setting out of its range.
    #[error("file source setting {setting} = {value} is out of range: use a value from {min} to {max}")]
    OutOfRange {
        /// The setting (builder method / URL parameter).
        setting: &'static str,
        /// The value given.
        value: String,
        /// The smallest allowed value.
        min: String,
        /// The largest allowed value.
        max: String,
    },
    /// An include or exclude pattern that is not a glob.
    #[error(
        "file source glob {pattern:?} is invalid ({source}); globs look like `*.yaml` or `conf/**/*.json`"
    )]
    Glob {
        /// The pattern.
        pattern: String,
        /// Why.
        #[source]
        source: globset::Error,
    },
    /// The path to watch does not exist or cannot be resolved.
    #[error("cannot watch {path}: {source}; check that it exists and is readable")]
    Root {
        /// The path as given.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A `file://` spec that cannot be understood.
    #[error("invalid file source spec {spec:?}: {reason}")]
    Spec {
        /// The spec.
        spec: String,
        /// What is wrong, and the expected form.
        reason: String,
    },
}

/// A problem found while watching, as shown by [`FileSourceHandle::problems`] and reported as
/// an `Err(SourceError)` on the event stream (the source keeps going).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileError {
    /// A file that does not parse or holds an invalid document.
    #[error("{path}: {message}; its last good version (if any) is kept until the file is fixed")]
    Invalid {
        /// Relative path.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A file or directory that cannot be read.
    #[error("{path}: cannot read ({message}); check its permissions")]
    Read {
        /// Relative path.
        path: String,
        /// The I/O error.
        message: String,
    },
    /// A document file too large to parse.
    #[error(
        "{path}: {size} bytes is more than the {limit}-byte parse limit; its last good version (if any) is kept: shrink the file or raise max_file_size"
    )]
    TooLarge {
        /// Relative path.
        path: String,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// Two files define the same resource; the first by path order wins.
    #[error(
        "{key} is defined in {winner} and again in {path}; using {winner} (first by path order): remove or rename one"
    )]
    Duplicate {
        /// The resource (`Kind.group namespace/name`).
        key: String,
        /// The file whose copy is ignored.
        path: String,
        /// The file whose copy is used.
        winner: String,
    },
    /// More files than the limit.
    #[error(
        "{root} has more than {limit} matching files; the rest are ignored: narrow the include globs or raise max_files"
    )]
    TooManyFiles {
        /// The watched root.
        root: String,
        /// The limit.
        limit: usize,
    },
    /// The watcher reported an error (a full rescan follows).
    #[error("watching {root}: {message}; rescanning everything")]
    Watch {
        /// The watched root.
        root: String,
        /// The watcher's error.
        message: String,
    },
}

impl FileError {
    /// The file the problem is about, if it is about one.
    pub fn path(&self) -> Option<&str> {
        match self {
            FileError::Invalid { path, .. }
            | FileError::Read { path, .. }
            | FileError::TooLarge { path, .. }
            | FileError::Duplicate { path, .. } => Some(path),
            FileError::TooManyFiles { .. } | FileError::Watch { .. } => None,
        }
    }
}

/// Settings, resolved and checked.
#[derive(Debug)]
pub(crate) struct Config {
    /// The canonical directory watched (for a single file: its directory).
    root: PathBuf,
    /// The path as given, for messages.
    shown: String,
    name: String,
    uid_source: String,
    mode: Mode,
    filter: scan::Filter,
    debounce: Duration,
    poll: Option<Duration>,
    fallback_poll: Duration,
    max_files: usize,
    max_file_size: u64,
    max_content_size: u64,
    channel_capacity: usize,
    kinds: Vec<String>,
    namespace: Option<String>,
    /// Testing aid: behave as if inotify could not be set up.
    fail_watch: bool,
}

#[derive(Debug, Default)]
pub(crate) struct Pending {
    paths: Vec<PathBuf>,
    rescan: bool,
    errors: Vec<String>,
}

/// Cap on paths queued between batches; beyond it the next batch is a full rescan.
const MAX_PENDING_PATHS: usize = 50_000;

impl Pending {
    fn is_empty(&self) -> bool {
        self.paths.is_empty() && !self.rescan && self.errors.is_empty()
    }

    fn add_path(&mut self, p: PathBuf) {
        if self.rescan {
            return;
        }
        if self.paths.len() >= MAX_PENDING_PATHS {
            self.paths = vec![];
            self.rescan = true;
        } else {
            self.paths.push(p);
        }
    }

    /// Takes in what the (debounced) watcher saw.
    fn absorb(&mut self, result: notify_debouncer_full::DebounceEventResult) {
        match result {
            Ok(events) => {
                for ev in events {
                    // Opens and reads (ours included) change nothing.
                    if let EventKind::Access(kind) = ev.kind
                        && kind != AccessKind::Close(AccessMode::Write)
                    {
                        continue;
                    }
                    if ev.need_rescan() {
                        self.rescan = true;
                        self.paths = vec![];
                    }
                    for p in &ev.paths {
                        self.add_path(p.clone());
                    }
                }
            }
            Err(errors) => {
                for e in errors {
                    if self.errors.len() < 16 {
                        self.errors.push(e.to_string());
                    }
                }
                self.rescan = true;
                self.paths = vec![];
            }
        }
    }
}

/// State shared between the source's thread and its handles.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
    paused: AtomicBool,
    problems: Mutex<Vec<FileError>>,
    errors_total: AtomicU64,
    batches: AtomicU64,
    files: AtomicUsize,
    objects: AtomicUsize,
    polling: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn push(&self, f: impl FnOnce(&mut Pending)) {
        f(&mut lock(&self.pending));
        self.wake.notify_all();
    }

    /// Waits up to `timeout` for something to do, and takes it.
    fn take(&self, timeout: Duration) -> Pending {
        let mut p = lock(&self.pending);
        if p.is_empty() {
            p = match self.wake.wait_timeout(p, timeout) {
                Ok((g, _)) => g,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        std::mem::take(&mut *p)
    }
}

/// Files and directories as a [`Source`] of [`DynamicObject`]s. See the [module
/// docs](self) for what it yields and copes with.
///
/// ```
/// use crwatch::source::file::{FileSource, Mode};
/// use std::time::Duration;
/// let dir = tempfile::tempdir()?;
/// let source = FileSource::builder(dir.path())
///     .include("*.yaml")
///     .exclude("drafts/**")
///     .debounce(Duration::from_millis(200))
///     .build()?;
/// let handle = source.handle(); // keep it: problems, counters, rescans
/// let raw = FileSource::builder(dir.path()).mode(Mode::Raw).max_content_size(4096).build()?;
/// assert!(FileSource::builder(dir.path()).debounce(Duration::ZERO).build().is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct FileSource {
    cfg: Arc<Config>,
    shared: Arc<Shared>,
}

/// A view on a running (or not yet started) [`FileSource`]: its current problems, counters,
/// and a way to force a full rescan. Cheap to clone; get it before handing the source to an
/// informer.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use crwatch::source::{Event, Source};
/// use crwatch::source::file::{FileError, FileSource};
/// use futures::StreamExt;
///
/// let dir = tempfile::tempdir()?;
/// std::fs::write(dir.path().join("bad.yaml"), "kind: [")?;
/// let source = FileSource::new(dir.path())?;
/// let handle = source.handle();
/// let mut events = Box::new(source).events();
/// while let Some(ev) = events.next().await {
///     if matches!(ev, Ok(Event::InitDone)) {
///         break;
///     }
/// }
/// // What the CLI shows: which file, what is wrong, what happens meanwhile.
/// let problems = handle.problems();
/// assert!(matches!(&problems[..], [FileError::Invalid { path, .. }] if path == "bad.yaml"));
/// assert!(problems[0].to_string().contains("last good version"));
/// assert_eq!(handle.error_count(), 1);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct FileSourceHandle {
    shared: Arc<Shared>,
}

impl FileSourceHandle {
    /// The problems as they stand now (files that do not parse, duplicates, limits), in path
    /// order. A file leaves the list when it parses again or is deleted.
    pub fn problems(&self) -> Vec<FileError> {
        lock(&self.shared.problems).clone()
    }

    /// How many problems were reported since start (every report counts).
    pub fn error_count(&self) -> u64 {
        self.shared.errors_total.load(Ordering::Relaxed)
    }

    /// Files currently watched.
    pub fn files(&self) -> usize {
        self.shared.files.load(Ordering::Relaxed)
    }

    /// Objects currently delivered (after resolving duplicates).
    pub fn objects(&self) -> usize {
        self.shared.objects.load(Ordering::Relaxed)
    }

    /// Whether the source polls (asked for, or inotify was unavailable).
    pub fn is_polling(&self) -> bool {
        self.shared.polling.load(Ordering::Relaxed)
    }

    /// Scans and batches completed (each ends with `Progress`); tests and health checks can
    /// wait for it to move.
    pub fn batches(&self) -> u64 {
        self.shared.batches.load(Ordering::Relaxed)
    }

    /// Read everything again and emit it as a new list (`Init` … `InitDone`), which the
    /// informer diffs against what it has: what a watcher overflow does.
    pub fn rescan(&self) {
        self.shared.push(|p| {
            p.rescan = true;
            p.paths = vec![];
        });
    }

    /// Testing aid: drop watcher events from now on, as an overflowing inotify queue would.
    /// [`resume_watching`](Self::resume_watching) then recovers the way an overflow does.
    #[doc(hidden)]
    pub fn pause_watching(&self) {
        self.shared.paused.store(true, Ordering::SeqCst);
    }

    /// Testing aid: take watcher events again, after a full rescan (the overflow recovery).
    #[doc(hidden)]
    pub fn resume_watching(&self) {
        self.shared.push(|p| {
            p.rescan = true;
            p.paths = vec![];
        });
        self.shared.paused.store(false, Ordering::SeqCst);
    }
}

impl FileSource {
    /// A source over `path` (a directory, recursively, or one file) with default settings.
    pub fn new(path: impl AsRef<Path>) -> Result<Self, FileSourceError> {
        Self::builder(path).build()
    }

    /// Configure a source over `path`.
    pub fn builder(path: impl AsRef<Path>) -> FileSourceBuilder {
        FileSourceBuilder {
            path: path.as_ref().to_path_buf(),
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

    /// A handle for problems, counters and rescans (see [`FileSourceHandle`]).
    pub fn handle(&self) -> FileSourceHandle {
        FileSourceHandle {
            shared: self.shared.clone(),
        }
    }
}

impl Source<DynamicObject> for FileSource {
    fn describe(&self) -> String {
        self.cfg.name.clone()
    }

    fn events(self: Box<Self>) -> EventStream<DynamicObject> {
        let (tx, rx) = tokio::sync::mpsc::channel(self.cfg.channel_capacity);
        let (cfg, shared) = (self.cfg.clone(), self.shared.clone());
        let name = cfg.name.clone();
        let spawned = std::thread::Builder::new()
            .name("crwatch-file".into())
            .spawn(move || engine::run(cfg, shared, tx));
        if let Err(e) = spawned {
            let err = SourceError::new(name, format!("cannot start the file watcher thread: {e}"));
            return Box::pin(futures::stream::iter([Err(err)]));
        }
        Box::pin(futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|e| (e, rx))
        }))
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

fn percent_decode(s: &str) -> Result<String, String> {
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

fn parse_duration(v: &str) -> Result<Duration, String> {
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

fn parse_bytes(v: &str) -> Result<u64, String> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{Event as NEvent, Flag};
    use notify_debouncer_full::DebouncedEvent;

    #[test]
    fn spec_parsing() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("-1s").is_err());
        assert_eq!(parse_bytes("8Mi").unwrap(), 8 << 20);
        assert!(parse_bytes("99999999999999999999Gi").is_err());
        assert_eq!(percent_decode("a%2Ab").unwrap(), "a*b");
        assert!(percent_decode("%zz").is_err());
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        assert!(FileSource::from_url(&format!("file://{d}?debounce=0ms")).is_err());
        assert!(FileSource::from_url(&format!("file://{d}?maxContentSize=1Gi")).is_err());
        assert!(FileSource::from_url(&format!("file://{d}?what=1")).is_err());
        assert!(FileSource::from_url(&format!("file://{d}?include=[")).is_err());
        let s = FileSource::from_url(&format!("file://{d}?mode=raw&poll=1s&kind=A,B")).unwrap();
        assert_eq!(s.cfg.mode, Mode::Raw);
        assert_eq!(s.cfg.poll, Some(Duration::from_secs(1)));
        assert_eq!(s.cfg.kinds, vec!["A".to_string(), "B".to_string()]);
    }

    #[test]
    fn rescan_flag_and_watcher_errors_force_a_full_rescan() {
        let mut p = Pending::default();
        let ev = |e: NEvent| DebouncedEvent::new(e, std::time::Instant::now());
        p.absorb(Ok(vec![ev(
            NEvent::new(EventKind::Any).add_path("/x/a.yaml".into())
        )]));
        assert_eq!(p.paths.len(), 1);
        assert!(!p.rescan);
        let open = EventKind::Access(AccessKind::Open(notify::event::AccessMode::Any));
        p.absorb(Ok(vec![ev(NEvent::new(open).add_path("/x/b.yaml".into()))]));
        assert_eq!(p.paths.len(), 1, "opens are not changes");
        p.absorb(Ok(vec![ev(NEvent::new(EventKind::Other).set_flag(Flag::Rescan))]));
        assert!(p.rescan && p.paths.is_empty());
        let mut p = Pending::default();
        p.absorb(Err(vec![notify::Error::generic("queue overflow")]));
        assert!(p.rescan);
        assert_eq!(p.errors.len(), 1);
        // A flood of paths degrades to one rescan instead of unbounded memory.
        let mut p = Pending::default();
        for i in 0..(MAX_PENDING_PATHS + 10) {
            p.add_path(format!("/x/{i}").into());
        }
        assert!(p.rescan && p.paths.is_empty());
    }
}
