//! Persistent snapshots: a store's objects plus the source checkpoint they are current to,
//! written atomically (temporary file, fsync, rename, fsync of the directory) and readable only
//! by the owner, so an informer (or the forwarder, with what its sinks acknowledged) resumes
//! where it stopped instead of listing everything again, and a crash leaves either the old or
//! the new snapshot, never half of one.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::source::Checkpoint;

/// The snapshot file format this crate writes.
pub const FORMAT_VERSION: u32 = 1;

/// Objects and the checkpoint they are current to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot<K> {
    /// The file format (see [`FORMAT_VERSION`]).
    pub format: u32,
    /// Where the source was; `None` when the objects are not current to any (a relist was
    /// under way): the source then lists again and the list is diffed against the objects.
    pub checkpoint: Option<Checkpoint>,
    /// The objects.
    pub objects: Vec<K>,
}

impl<K> Snapshot<K> {
    /// A snapshot of `objects` current to `checkpoint`.
    pub fn new(checkpoint: Option<Checkpoint>, objects: Vec<K>) -> Self {
        Snapshot {
            format: FORMAT_VERSION,
            checkpoint,
            objects,
        }
    }
}

/// Reading or writing a snapshot failed.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The file could not be read or written.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The file is not a snapshot this version understands.
    #[error("snapshot {path} is unreadable ({reason}); remove it to start with a fresh list")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// A snapshot on disk.
///
/// ```
/// use crwatch::source::Checkpoint;
/// use crwatch::store::snapshot::{Snapshot, SnapshotFile};
/// use k8s_openapi::api::core::v1::ConfigMap;
///
/// let dir = tempfile::tempdir()?;
/// let file = SnapshotFile::new(dir.path().join("configmaps.json"));
/// assert!(file.load::<ConfigMap>()?.is_none());
/// file.save(&Snapshot::new(Some(Checkpoint::new("42")), vec![ConfigMap::default()]))?;
/// let back = file.load::<ConfigMap>()?.unwrap();
/// assert_eq!(back.checkpoint.unwrap().resource_version, "42");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct SnapshotFile {
    path: PathBuf,
}

impl SnapshotFile {
    /// A snapshot kept at `path` (its directory must exist).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        SnapshotFile { path: path.into() }
    }

    /// Where it is kept.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The snapshot, or `None` when there is none yet.
    pub fn load<K: DeserializeOwned>(&self) -> Result<Option<Snapshot<K>>, SnapshotError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(SnapshotError::Io {
                    action: "reading",
                    path: self.path.clone(),
                    source,
                });
            }
        };
        let snapshot: Snapshot<K> = crate::json::from_slice(&bytes).map_err(|e| SnapshotError::Format {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        if snapshot.format != FORMAT_VERSION {
            return Err(SnapshotError::Format {
                path: self.path.clone(),
                reason: format!("format {}, this crwatch reads {FORMAT_VERSION}", snapshot.format),
            });
        }
        Ok(Some(snapshot))
    }

    /// Replace the snapshot atomically.
    pub fn save<K: Serialize>(&self, snapshot: &Snapshot<K>) -> Result<(), SnapshotError> {
        let bytes = serde_json::to_vec(snapshot).map_err(|e| SnapshotError::Format {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        write_private(&self.path, &bytes)
    }
}

/// Write `bytes` to `path` atomically, readable and writable by the owner only (0600): a
/// temporary file beside it, fsync, rename over, fsync of the directory. A crash leaves either
/// the old or the new content.
///
/// ```
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("state");
/// crwatch::store::snapshot::write_private(&path, b"hello")?;
/// assert_eq!(std::fs::read(&path)?, b"hello");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), SnapshotError> {
    let io = |action: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| SnapshotError::Io { action, path, source }
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut f = options.open(&tmp).map_err(io("creating", &tmp))?;
        // A file left by an older run may have wider permissions: narrow them.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(std::fs::Permissions::from_mode(0o600))
                .map_err(io("restricting", &tmp))?;
        }
        f.write_all(bytes).map_err(io("writing", &tmp))?;
        f.sync_all().map_err(io("syncing", &tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io("replacing", path))?;
    // The rename itself must survive a crash.
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_owner_only_and_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snap.json");
        std::fs::write(&path, "old").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        let file = SnapshotFile::new(&path);
        let err = file.load::<serde_json::Value>().unwrap_err();
        assert!(err.to_string().contains("remove it"), "{err}");
        file.save(&Snapshot::new(None, vec![serde_json::json!({"a": 1})]))
            .unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let back = file.load::<serde_json::Value>().unwrap().unwrap();
        assert_eq!(back.objects, vec![serde_json::json!({"a": 1})]);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary file left"
        );
    }
}
