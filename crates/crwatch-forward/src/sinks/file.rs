//! File sink: each change as one JSON line, to stdout or to a size-rotated file. Its writer,
//! [`JsonlWriter`], also writes the forwarder's dead-letter files.

use std::ffi::OsString;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::bail;
use futures::future::BoxFuture;
use serde::{Deserialize, Deserializer};

use crate::sink::{Delivery, Sink, SinkError};

/// Default `maxSize`: 100Mi.
pub const DEFAULT_MAX_SIZE: u64 = 100 * 1024 * 1024;
/// Default `maxFiles`.
pub const DEFAULT_MAX_FILES: usize = 5;

/// The `file` section of a sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FileConfig {
    /// The file to append to; `-` means stdout (no rotation).
    pub path: PathBuf,
    /// Rotate before a write would take the file past this many bytes: an integer or a
    /// Kubernetes quantity (`512Ki`, `10Mi`, `100M`), 1Ki to 1Ti. Default 100Mi.
    #[serde(default = "default_max_size", deserialize_with = "deserialize_max_size")]
    pub max_size: u64,
    /// Rotated files kept (`path.1` newest … `path.N` oldest), 0 to 1000. Default 5.
    #[serde(
        default = "default_max_files",
        deserialize_with = "crate::config::bounds::max_files"
    )]
    pub max_files: usize,
    /// fsync after every line: survives power loss, costs a disk flush per change. Default false.
    #[serde(default)]
    pub fsync: bool,
    /// Create the file's missing directories (mode 0700). Default false: a missing directory
    /// is an error, so a typo in the path never creates a tree somewhere unexpected.
    #[serde(default)]
    pub create_directories: bool,
}

fn default_max_size() -> u64 {
    DEFAULT_MAX_SIZE
}

fn default_max_files() -> usize {
    DEFAULT_MAX_FILES
}

/// `maxSize`: a byte count within [`crate::config::bounds::FILE_SIZE`].
fn deserialize_max_size<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    crate::config::bounds::file_size(deserialize_size(deserializer)?)
}

/// Deserialize a byte count given as an integer or a quantity string (see [`parse_quantity`]).
pub fn deserialize_size<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    struct Visitor;
    impl serde::de::Visitor<'_> for Visitor {
        type Value = u64;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a byte count or a quantity such as 10Mi")
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v).map_err(|_| E::custom(format!("size {v} is negative")))
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<u64, E> {
            parse_quantity(v).map_err(E::custom)
        }
    }
    deserializer.deserialize_any(Visitor)
}

/// Parse a byte count written as a Kubernetes quantity: digits with an optional fraction and a
/// binary (`Ki`, `Mi`, `Gi`, `Ti`, `Pi`, `Ei`) or decimal (`k`, `M`, `G`, `T`, `P`, `E`) suffix.
/// Fractions round up to whole bytes, as Kubernetes does.
pub fn parse_quantity(text: &str) -> Result<u64, String> {
    let invalid = || format!("invalid size {text:?}: expected bytes or a quantity such as 512Ki, 10Mi, 100M");
    let s = text.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    let multiplier: u128 = match suffix {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        "E" => 1_000_000_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        "Ei" => 1 << 60,
        _ => return Err(invalid()),
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') || fraction.len() > 18 {
        return Err(invalid());
    }
    let digits = |d: &str| {
        if d.is_empty() {
            Ok(0)
        } else {
            d.parse::<u128>().map_err(|_| invalid())
        }
    };
    let scale = 10u128.pow(fraction.len() as u32);
    let too_large = || format!("size {text:?} is too large");
    let (whole, fraction) = (digits(whole)?, digits(fraction)?);
    let scaled = whole
        .checked_mul(scale)
        .and_then(|w| w.checked_add(fraction))
        .and_then(|m| m.checked_mul(multiplier))
        .ok_or_else(too_large)?;
    u64::try_from(scaled.div_ceil(scale)).map_err(|_| too_large())
}

/// Appends JSON values as lines to stdout or to a file rotated by size. Safe to share between
/// tasks: lines never interleave.
pub struct JsonlWriter {
    /// `None` for stdout.
    path: Option<PathBuf>,
    /// An owned guard can move into `spawn_blocking`, so file I/O never blocks the runtime.
    state: Arc<tokio::sync::Mutex<Output>>,
}

impl fmt::Debug for JsonlWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.path {
            Some(path) => f
                .debug_struct("JsonlWriter")
                .field("path", path)
                .finish_non_exhaustive(),
            None => f.write_str("JsonlWriter(stdout)"),
        }
    }
}

enum Output {
    Stdout,
    File(RotatingFile),
}

struct RotatingFile {
    path: PathBuf,
    max_size: u64,
    max_files: usize,
    fsync: bool,
    /// `None` after a failed rotation; the next write reopens.
    file: Option<File>,
    /// Bytes in the current file.
    size: u64,
}

impl JsonlWriter {
    /// Open `path` for appending (`-` means stdout, which never rotates), creating its parent
    /// directories. An existing file is continued and its size counts towards `max_size`.
    /// Before a line would take the file past `max_size` bytes, it becomes `path.1` (older ones
    /// shift up to `path.<max_files>`, the oldest is removed; `max_files` 0 keeps none); a line
    /// longer than `max_size` still goes into a file of its own. With `fsync`, every line is
    /// synced to disk before `write` returns.
    ///
    /// The file's directory must exist unless `create_directories` is set; then missing
    /// directories are created with mode 0700. The file is created with mode 0600.
    pub fn open(
        path: impl AsRef<Path>,
        max_size: u64,
        max_files: usize,
        fsync: bool,
        create_directories: bool,
    ) -> io::Result<Self> {
        let path = path.as_ref();
        if path == Path::new("-") {
            return Ok(Self {
                path: None,
                state: Arc::new(tokio::sync::Mutex::new(Output::Stdout)),
            });
        }
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            ensure_directory(parent, create_directories)?;
        }
        let mut file = RotatingFile {
            path: path.to_path_buf(),
            max_size,
            max_files,
            fsync,
            file: None,
            size: 0,
        };
        file.reopen()?;
        Ok(Self {
            path: Some(path.to_path_buf()),
            state: Arc::new(tokio::sync::Mutex::new(Output::File(file))),
        })
    }

    /// The file written to, `None` for stdout.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Append `value` as one line and flush it (and fsync, if configured). After an error the
    /// file holds no partial line, so the caller may simply retry.
    pub async fn write(&self, value: &serde_json::Value) -> io::Result<()> {
        // Compact JSON escapes newlines inside strings, so one value is exactly one line.
        let mut line = serde_json::to_vec(value)?;
        line.push(b'\n');
        let mut output = self.state.clone().lock_owned().await;
        tokio::task::spawn_blocking(move || output.write_line(&line))
            .await
            .map_err(io::Error::other)?
    }
}

impl Output {
    fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        match self {
            Output::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(line)?;
                out.flush()
            }
            Output::File(file) => file.write_line(line),
        }
    }
}

impl RotatingFile {
    fn reopen(&mut self) -> io::Result<()> {
        let mut options = OpenOptions::new();
        options.create(true).append(true);
        // Changes carry whole objects, Secrets included: readable by the owner only.
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options.open(&self.path)?;
        self.size = file.metadata()?.len();
        self.file = Some(file);
        Ok(())
    }

    fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        if self.file.is_none() {
            self.reopen()?;
        }
        let len = line.len() as u64;
        // An empty file takes any line, so an oversized line cannot rotate forever.
        if self.size > 0 && self.size.saturating_add(len) > self.max_size {
            self.rotate()?;
        }
        let Some(file) = self.file.as_mut() else {
            return Err(io::Error::other("rotated file was not reopened"));
        };
        // `File` has no user-space buffer: once `write_all` returns, the line is in the kernel.
        if let Err(e) = file.write_all(line) {
            // Drop a partial line, so a retry does not leave a corrupt line behind.
            let _ = file.set_len(self.size);
            return Err(e);
        }
        self.size += len;
        if self.fsync {
            file.sync_data()?;
        }
        Ok(())
    }

    /// `path` → `path.1` → … → `path.<max_files>`; the oldest is removed.
    fn rotate(&mut self) -> io::Result<()> {
        self.file = None;
        let numbered = |n: usize| {
            let mut name = OsString::from(self.path.as_os_str());
            name.push(format!(".{n}"));
            PathBuf::from(name)
        };
        if self.max_files == 0 {
            remove_if_exists(&self.path)?;
        } else {
            remove_if_exists(&numbered(self.max_files))?;
            for n in (1..self.max_files).rev() {
                rename_if_exists(&numbered(n), &numbered(n + 1))?;
            }
            std::fs::rename(&self.path, numbered(1))?;
        }
        if self.fsync {
            sync_parent_dir(&self.path)?;
        }
        self.reopen()
    }
}

fn remove_if_exists(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn rename_if_exists(from: &Path, to: &Path) -> io::Result<()> {
    match std::fs::rename(from, to) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Renames are durable only once their directory is synced.
fn sync_parent_dir(path: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        let parent = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        File::open(parent)?.sync_all()?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Check that `dir` exists (or create it, and its missing parents, with mode 0700 when
/// `create` is set).
pub fn ensure_directory(dir: &Path, create: bool) -> io::Result<()> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::NotADirectory,
            format!("{} is not a directory", dir.display()),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
            let mut builder = std::fs::DirBuilder::new();
            builder.recursive(true);
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
            builder.create(dir)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "directory {} does not exist: create it, writable by the user crwatch runs as",
                dir.display()
            ),
        )),
        Err(e) => Err(e),
    }
}

/// Writes each change's CloudEvent as a JSON line.
#[derive(Debug)]
pub struct FileSink {
    writer: JsonlWriter,
}

impl FileSink {
    /// Validate the configuration and open the file (or stdout).
    pub fn open(config: &FileConfig) -> anyhow::Result<Self> {
        if config.max_size == 0 {
            bail!("maxSize must be greater than zero");
        }
        let writer = JsonlWriter::open(
            &config.path,
            config.max_size,
            config.max_files,
            config.fsync,
            config.create_directories,
        )
        .map_err(|e| {
            let hint = if e.kind() == io::ErrorKind::NotFound {
                " (or set createDirectories: true)"
            } else {
                ""
            };
            anyhow::anyhow!("opening {}: {e}{hint}", config.path.display())
        })?;
        Ok(Self { writer })
    }

    async fn send(&self, delivery: &Delivery) -> Result<(), SinkError> {
        self.writer.write(&delivery.event).await.map_err(|e| {
            let target = self
                .writer
                .path()
                .map_or("stdout".into(), |p| p.display().to_string());
            SinkError::Retryable(format!("writing {target}: {e}"))
        })
    }
}

impl Sink for FileSink {
    fn deliver<'a>(&'a self, delivery: &'a Delivery) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(self.send(delivery))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use serde_json::json;

    use crate::sink::TemplateVars;

    fn lines(path: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn numbered(path: &Path, n: usize) -> PathBuf {
        PathBuf::from(format!("{}.{n}", path.display()))
    }

    #[test]
    fn config_and_quantities() {
        let c: FileConfig = serde_saphyr::from_str("path: /tmp/x.jsonl\n").unwrap();
        assert_eq!((c.max_size, c.max_files, c.fsync), (100 * 1024 * 1024, 5, false));
        let c: FileConfig =
            serde_saphyr::from_str("path: x\nmaxSize: 10Mi\nmaxFiles: 2\nfsync: true\n").unwrap();
        assert_eq!((c.max_size, c.max_files, c.fsync), (10 << 20, 2, true));
        let c: FileConfig = serde_saphyr::from_str("path: x\nmaxSize: 4096\n").unwrap();
        assert_eq!(c.max_size, 4096);
        assert!(serde_saphyr::from_str::<FileConfig>("path: x\nmaxSize: -1\n").is_err());
        assert!(serde_saphyr::from_str::<FileConfig>("path: x\nmaxSize: 10MB\n").is_err());
        assert!(serde_saphyr::from_str::<FileConfig>("path: x\nmax_size: 1\n").is_err());

        assert_eq!(parse_quantity("100M"), Ok(100_000_000));
        assert_eq!(parse_quantity("512Ki"), Ok(524_288));
        assert_eq!(parse_quantity("1.5Gi"), Ok(3 << 29));
        assert_eq!(parse_quantity("0.5"), Ok(1));
        assert_eq!(parse_quantity("1k"), Ok(1000));
        assert_eq!(parse_quantity("16Ei"), Err("size \"16Ei\" is too large".into()));
        for bad in ["", "Mi", "1..2", "1.2.3Mi", "1 Mi", "1K", "1e3", "x"] {
            assert!(parse_quantity(bad).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn rotates_before_a_write_would_exceed_max_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/dir/events.jsonl");
        // Each value below serializes to a 10-byte line: {"n":123}\n
        let w = JsonlWriter::open(&path, 20, 2, true, true).unwrap();
        for n in 100..107 {
            w.write(&json!({ "n": n })).await.unwrap();
        }
        // Two lines fill a file exactly; the third starts a new one. 7 lines: 2+2+2+1, the
        // oldest pair removed because only 2 rotated files are kept.
        assert_eq!(lines(&path), [json!({"n": 106})]);
        assert_eq!(lines(&numbered(&path, 1)), [json!({"n": 104}), json!({"n": 105})]);
        assert_eq!(lines(&numbered(&path, 2)), [json!({"n": 102}), json!({"n": 103})]);
        assert!(!numbered(&path, 3).exists());

        // A line larger than max_size gets a file of its own.
        let big = json!({ "s": "x".repeat(50) });
        w.write(&big).await.unwrap();
        assert_eq!(lines(&path), std::slice::from_ref(&big));
        assert_eq!(lines(&numbered(&path, 1)), [json!({"n": 106})]);
        w.write(&json!({ "n": 200 })).await.unwrap();
        assert_eq!(lines(&path), [json!({"n": 200})]);
        assert_eq!(lines(&numbered(&path, 1)), [big]);
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_missing_directory_is_refused_unless_asked_and_nothing_is_world_readable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing/sub/events.jsonl");
        let err = JsonlWriter::open(&path, 100, 1, false, false).unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
        assert!(!dir.path().join("missing").exists(), "nothing created");
        let w = JsonlWriter::open(&path, 100, 1, false, true).unwrap();
        w.write(&json!({"n": 1})).await.unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.path().join("missing")), 0o700);
        assert_eq!(mode(&dir.path().join("missing/sub")), 0o700);
        assert_eq!(mode(&path), 0o600);
        let config: FileConfig =
            serde_saphyr::from_str(&format!("path: {}/nope/x.jsonl\n", dir.path().display())).unwrap();
        let err = FileSink::open(&config).unwrap_err();
        assert!(format!("{err:#}").contains("does not exist"), "{err:#}");
        assert!(format!("{err:#}").contains("createDirectories: true"), "{err:#}");
    }

    #[tokio::test]
    async fn zero_max_files_keeps_no_rotated_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dead.jsonl");
        let w = JsonlWriter::open(&path, 10, 0, false, false).unwrap();
        w.write(&json!({ "n": 1 })).await.unwrap();
        w.write(&json!({ "n": 2 })).await.unwrap();
        assert_eq!(lines(&path), [json!({"n": 2})]);
        assert!(!numbered(&path, 1).exists());
    }

    #[tokio::test]
    async fn reopening_continues_the_file_and_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        JsonlWriter::open(&path, 30, 3, false, false)
            .unwrap()
            .write(&json!({ "n": 100 }))
            .await
            .unwrap();
        let w = JsonlWriter::open(&path, 30, 3, false, false).unwrap();
        w.write(&json!({ "n": 101 })).await.unwrap();
        w.write(&json!({ "n": 102 })).await.unwrap();
        assert_eq!(
            lines(&path),
            [json!({"n": 100}), json!({"n": 101}), json!({"n": 102})]
        );
        // The size carried over: the fourth line rotates.
        w.write(&json!({ "n": 103 })).await.unwrap();
        assert_eq!(lines(&path), [json!({"n": 103})]);
        assert_eq!(lines(&numbered(&path, 1)).len(), 3);
    }

    #[tokio::test]
    async fn concurrent_writes_produce_whole_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let w = Arc::new(JsonlWriter::open(&path, DEFAULT_MAX_SIZE, 1, false, false).unwrap());
        let tasks: Vec<_> = (0..50)
            .map(|n| {
                let w = w.clone();
                tokio::spawn(async move { w.write(&json!({ "n": n, "text": "a\nb \"c\"" })).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let mut seen: Vec<i64> = lines(&path).iter().map(|v| v["n"].as_i64().unwrap()).collect();
        seen.sort();
        assert_eq!(seen, (0..50).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn file_sink_writes_the_event_and_stdout_mode_constructs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let sink =
            FileSink::open(&serde_saphyr::from_str(&format!("path: {}\n", path.display())).unwrap()).unwrap();
        let event = json!({"specversion": "1.0", "id": "u:1", "data": {"object": {}}});
        let delivery = Delivery {
            id: "u:1".into(),
            event: Arc::new(event.clone()),
            vars: Arc::new(TemplateVars::default()),
        };
        sink.deliver(&delivery).await.unwrap();
        assert_eq!(lines(&path), [event]);

        let stdout = FileSink::open(&serde_saphyr::from_str("path: '-'\n").unwrap()).unwrap();
        assert!(stdout.writer.path().is_none());
        // A zero size is refused while parsing, at the value.
        assert!(serde_saphyr::from_str::<FileConfig>("path: x\nmaxSize: 0\n").is_err());
    }
}
