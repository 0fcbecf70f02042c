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

mod builder;
mod engine;
mod error;
mod parse;
mod scan;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use kube::api::DynamicObject;
use notify::event::{AccessKind, AccessMode, EventKind};

pub use builder::FileSourceBuilder;
pub use error::{FileError, FileSourceError};
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
        FileSourceBuilder::new(path.as_ref())
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

#[cfg(test)]
mod tests {
    use super::builder::{parse_bytes, parse_duration, percent_decode};
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
