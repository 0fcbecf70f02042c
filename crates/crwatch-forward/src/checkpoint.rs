//! What every sink has acknowledged, per watched stream: the objects as last delivered and the
//! resourceVersion to resume from. Changes enter in watch order with the number of sinks that
//! must acknowledge them; the committed state only advances over a prefix of fully acknowledged
//! changes, so a restart from the checkpoint file never skips a change (it may repeat some,
//! which is what at-least-once means; event ids are stable so consumers can drop repeats).

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crwatch::source::Checkpoint;
use serde::{Deserialize, Serialize};

use crate::Error;
use serde_json::Value;

/// An object as the forwarder last saw (or delivered) it.
#[derive(Debug, Clone, PartialEq)]
pub struct Known {
    /// `metadata.uid`.
    pub uid: String,
    /// `metadata.resourceVersion`.
    pub resource_version: String,
    /// The object (without managedFields).
    pub object: Arc<Value>,
}

/// One stream's state: objects by `namespace/name` and where to resume the watch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamState {
    /// The resourceVersion up to which every change is reflected in `objects`; `None` until the
    /// first list completed.
    pub resource_version: Option<String>,
    /// Which server history `resource_version` belongs to (for Kubernetes, the `kube-system`
    /// namespace's uid): a server with another identity is relisted, not resumed.
    pub identity: Option<String>,
    /// Objects by `namespace/name` (`name` for cluster-scoped ones).
    pub objects: BTreeMap<String, Known>,
}

/// A state change that takes effect once all its sinks acknowledged it.
#[derive(Debug, Clone)]
pub enum Op {
    /// The object now looks like this.
    Upsert(String, Known),
    /// The object is gone.
    Remove(String),
    /// Nothing changed in the objects (a bookmark, or the end of a relist).
    Nothing,
    /// A relist starts: forget the resume point until it completes.
    ForgetResume,
}

/// A change waiting for acknowledgements.
#[derive(Debug)]
struct Pending {
    seq: u64,
    remaining: usize,
    op: Op,
    /// Where the stream may resume after this change; `None` for changes (whose checkpoint
    /// follows them) and inside a relist, where objects arrive in no particular order and only
    /// the list's own checkpoint may be resumed from.
    checkpoint: Option<Checkpoint>,
    /// Released when the change is committed: bounds how many changes are held in memory.
    _permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// A handle to acknowledge one change for one sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    stream: usize,
    seq: u64,
}

#[derive(Default)]
struct Inner {
    committed: Vec<StreamState>,
    pending: Vec<VecDeque<Pending>>,
    next_seq: u64,
}

/// Tracks acknowledgements and holds the committed state of every stream.
pub struct Committer {
    keys: Vec<String>,
    permits: Arc<tokio::sync::Semaphore>,
    inner: Mutex<Inner>,
    dirty: AtomicBool,
    path: Option<PathBuf>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FileObject<'a> {
    uid: std::borrow::Cow<'a, str>,
    resource_version: std::borrow::Cow<'a, str>,
    object: std::borrow::Cow<'a, Value>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FileStream<'a> {
    resource_version: Option<String>,
    /// Absent in files written before identities were kept: such a checkpoint resumes by
    /// resourceVersion alone (a restarted server is still found by its versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    identity: Option<String>,
    #[serde(borrow)]
    objects: BTreeMap<String, FileObject<'a>>,
}

#[derive(Serialize, Deserialize)]
struct File<'a> {
    version: u32,
    #[serde(borrow)]
    streams: BTreeMap<String, FileStream<'a>>,
}

const FORMAT_VERSION: u32 = 1;

impl Committer {
    /// A committer for the streams named `keys` (a key says what is watched: resource,
    /// namespace, selectors), starting from the checkpoint at `path` when it exists. Streams
    /// the file does not know (or knows under other selectors) start empty.
    ///
    /// At most `max_in_flight` changes wait for acknowledgements at a time; [`Committer::enqueue`]
    /// waits for room. This bound holds even when one sink lane is stuck on one object while
    /// other lanes keep acknowledging later changes, which cannot be committed past it.
    ///
    /// The checkpoint's directory must exist: it is never created (a typo in the path would
    /// otherwise create a tree somewhere unexpected).
    pub fn open(keys: Vec<String>, path: Option<PathBuf>, max_in_flight: usize) -> Result<Self, Error> {
        let mut committed = vec![StreamState::default(); keys.len()];
        if let Some(path) = &path {
            let failed = |message: String| Error::Checkpoint {
                path: path.clone(),
                message,
            };
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                crate::sinks::file::ensure_directory(dir, false).map_err(|e| failed(e.to_string()))?;
            }
            match std::fs::read(path) {
                Ok(bytes) => {
                    let file: File<'_> = serde_json::from_slice(&bytes).map_err(|e| {
                        failed(format!("unreadable ({e}); remove it to start with a fresh list"))
                    })?;
                    if file.version != FORMAT_VERSION {
                        return Err(failed(format!(
                            "format {}, this crwatch reads {FORMAT_VERSION}",
                            file.version
                        )));
                    }
                    for (i, key) in keys.iter().enumerate() {
                        if let Some(s) = file.streams.get(key) {
                            committed[i] = StreamState {
                                resource_version: s.resource_version.clone(),
                                identity: s.identity.clone(),
                                objects: s
                                    .objects
                                    .iter()
                                    .map(|(k, o)| {
                                        let known = Known {
                                            uid: o.uid.to_string(),
                                            resource_version: o.resource_version.to_string(),
                                            object: Arc::new(o.object.clone().into_owned()),
                                        };
                                        (k.clone(), known)
                                    })
                                    .collect(),
                            };
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(failed(format!("reading: {e}"))),
            }
        }
        let pending = keys.iter().map(|_| VecDeque::new()).collect();
        Ok(Self {
            keys,
            // tokio refuses (panics) beyond MAX_PERMITS; the configuration's bounds stay far below.
            permits: Arc::new(tokio::sync::Semaphore::new(
                max_in_flight.clamp(1, tokio::sync::Semaphore::MAX_PERMITS),
            )),
            inner: Mutex::new(Inner {
                committed,
                pending,
                next_seq: 0,
            }),
            dirty: AtomicBool::new(false),
            path,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (every update is one push or one
        // pop), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The committed state of stream `stream` (where it resumes).
    pub fn committed(&self, stream: usize) -> StreamState {
        self.lock().committed[stream].clone()
    }

    /// Record a change of `stream` that `sinks` sinks must acknowledge (0 commits it as soon as
    /// everything before it is committed), waiting while `max_in_flight` changes are pending.
    pub async fn enqueue(
        &self,
        stream: usize,
        op: Op,
        checkpoint: Option<Checkpoint>,
        sinks: usize,
    ) -> Ticket {
        // The semaphore is never closed, so acquiring fails only if it were; then run unbounded
        // rather than lose the change.
        let permit = self.permits.clone().acquire_owned().await.ok();
        let mut inner = self.lock();
        let seq = inner.next_seq;
        inner.next_seq += 1;
        inner.pending[stream].push_back(Pending {
            seq,
            remaining: sinks,
            op,
            checkpoint,
            _permit: permit,
        });
        let ticket = Ticket { stream, seq };
        if sinks == 0 {
            self.advance(&mut inner, stream);
        }
        ticket
    }

    /// One sink acknowledged the change.
    pub fn ack(&self, ticket: Ticket) {
        let mut inner = self.lock();
        let queue = &mut inner.pending[ticket.stream];
        // Sequence numbers rise along the queue, so the entry is found by binary search.
        if let Ok(i) = queue.binary_search_by_key(&ticket.seq, |p| p.seq) {
            queue[i].remaining = queue[i].remaining.saturating_sub(1);
        }
        self.advance(&mut inner, ticket.stream);
    }

    fn advance(&self, inner: &mut Inner, stream: usize) {
        let Inner {
            committed, pending, ..
        } = inner;
        let state = &mut committed[stream];
        let queue = &mut pending[stream];
        while queue.front().is_some_and(|p| p.remaining == 0) {
            let Some(p) = queue.pop_front() else { break };
            match p.op {
                Op::Upsert(key, known) => {
                    state.objects.insert(key, known);
                }
                Op::Remove(key) => {
                    state.objects.remove(&key);
                }
                Op::Nothing => {}
                Op::ForgetResume => state.resource_version = None,
            }
            if let Some(cp) = p.checkpoint {
                state.resource_version = Some(cp.resource_version);
                state.identity = cp.identity;
            }
            self.dirty.store(true, Ordering::SeqCst);
        }
    }

    /// Changes not yet acknowledged by every sink, per stream.
    pub fn pending_per_stream(&self) -> Vec<usize> {
        self.lock()
            .pending
            .iter()
            .map(|q| q.iter().filter(|p| p.remaining > 0).count())
            .collect()
    }

    /// Changes not yet acknowledged by every sink, over all streams.
    pub fn in_flight(&self) -> usize {
        self.lock().pending.iter().map(VecDeque::len).sum()
    }

    /// Write the checkpoint file if something was committed since the last write.
    pub fn save_if_dirty(&self) -> Result<(), Error> {
        let Some(path) = &self.path else { return Ok(()) };
        if !self.dirty.swap(false, Ordering::SeqCst) {
            return Ok(());
        }
        // Cloning is cheap (objects are shared), so the lock is not held while serializing.
        let snapshot = self.lock().committed.clone();
        let result = write_file(path, &self.keys, &snapshot);
        if result.is_err() {
            self.dirty.store(true, Ordering::SeqCst);
        }
        result
    }
}

fn write_file(path: &Path, keys: &[String], streams: &[StreamState]) -> Result<(), Error> {
    let file = File {
        version: FORMAT_VERSION,
        streams: keys
            .iter()
            .zip(streams)
            .map(|(key, s)| {
                let objects = s
                    .objects
                    .iter()
                    .map(|(k, o)| {
                        let fo = FileObject {
                            uid: o.uid.as_str().into(),
                            resource_version: o.resource_version.as_str().into(),
                            object: std::borrow::Cow::Borrowed(&*o.object),
                        };
                        (k.clone(), fo)
                    })
                    .collect();
                (
                    key.clone(),
                    FileStream {
                        resource_version: s.resource_version.clone(),
                        identity: s.identity.clone(),
                        objects,
                    },
                )
            })
            .collect(),
    };
    let failed = |message: String| Error::Checkpoint {
        path: path.to_path_buf(),
        message,
    };
    let bytes = serde_json::to_vec(&file).map_err(|e| failed(format!("encoding: {e}")))?;
    // Temporary file, fsync, rename, fsync of the directory, mode 0600: it holds whole
    // objects, Secrets included.
    crwatch::store::snapshot::write_private(path, &bytes).map_err(|e| failed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cp(rv: &str) -> Option<Checkpoint> {
        Some(Checkpoint::new(rv))
    }

    fn known(rv: &str) -> Known {
        Known {
            uid: "u".into(),
            resource_version: rv.into(),
            object: Arc::new(json!({"rv": rv})),
        }
    }

    #[tokio::test]
    async fn commits_only_a_fully_acknowledged_prefix() {
        let c = Committer::open(vec!["s".into()], None, 10).unwrap();
        let t1 = c.enqueue(0, Op::Upsert("a".into(), known("1")), cp("1"), 2).await;
        let t2 = c.enqueue(0, Op::Upsert("b".into(), known("2")), cp("2"), 1).await;
        c.ack(t2);
        assert_eq!(c.committed(0).resource_version, None, "t1 is still out");
        c.ack(t1);
        assert_eq!(c.committed(0).resource_version, None, "t1 needs two sinks");
        c.ack(t1);
        let s = c.committed(0);
        assert_eq!(s.resource_version.as_deref(), Some("2"));
        assert_eq!(s.objects.len(), 2);
        c.enqueue(0, Op::Remove("a".into()), cp("3"), 0).await;
        assert_eq!(c.committed(0).objects.keys().collect::<Vec<_>>(), vec!["b"]);
        assert_eq!(c.in_flight(), 0);
    }

    #[tokio::test]
    async fn enqueue_waits_while_too_many_changes_are_pending() {
        let c = Arc::new(Committer::open(vec!["s".into()], None, 2).unwrap());
        let t1 = c.enqueue(0, Op::Nothing, cp("1"), 1).await;
        c.enqueue(0, Op::Nothing, cp("2"), 1).await;
        let c2 = c.clone();
        let third = tokio::spawn(async move { c2.enqueue(0, Op::Nothing, cp("3"), 0).await });
        tokio::task::yield_now().await;
        assert!(!third.is_finished(), "a third change waits for room");
        c.ack(t1);
        third.await.unwrap();
        assert_eq!(c.committed(0).resource_version.as_deref(), Some("1"));
    }

    #[tokio::test]
    async fn relist_changes_do_not_move_the_resume_point() {
        let c = Committer::open(vec!["s".into()], None, 10).unwrap();
        c.enqueue(0, Op::Upsert("a".into(), known("9")), None, 0).await;
        assert_eq!(c.committed(0).resource_version, None);
        c.enqueue(0, Op::Nothing, cp("10"), 0).await;
        assert_eq!(c.committed(0).resource_version.as_deref(), Some("10"));
    }

    #[tokio::test]
    async fn the_file_round_trips_and_unknown_streams_start_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cp.json");
        let c = Committer::open(vec!["s".into(), "t".into()], Some(path.clone()), 10).unwrap();
        c.enqueue(0, Op::Upsert("ns/a".into(), known("5")), cp("5"), 0)
            .await;
        c.save_if_dirty().unwrap();
        let again = Committer::open(vec!["s".into(), "other".into()], Some(path.clone()), 10).unwrap();
        assert_eq!(again.committed(0), c.committed(0));
        assert_eq!(again.committed(1), StreamState::default());
        std::fs::write(&path, b"{not json").unwrap();
        let err = Committer::open(vec!["s".into()], Some(path), 10).err().unwrap();
        assert!(format!("{err:#}").contains("remove it"), "{err:#}");
        let missing = dir.path().join("nope/cp.json");
        let err = Committer::open(vec!["s".into()], Some(missing), 10)
            .err()
            .unwrap();
        assert!(err.to_string().contains("does not exist"), "{err}");
    }

    #[tokio::test]
    async fn identities_are_kept_and_old_files_without_them_still_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cp.json");
        let c = Committer::open(vec!["s".into()], Some(path.clone()), 10).unwrap();
        let at = Checkpoint::new("7").with_identity("cluster-a");
        c.enqueue(0, Op::Nothing, Some(at), 0).await;
        c.save_if_dirty().unwrap();
        let again = Committer::open(vec!["s".into()], Some(path.clone()), 10).unwrap();
        assert_eq!(again.committed(0).identity.as_deref(), Some("cluster-a"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let old = r#"{"version":1,"streams":{"s":{"resourceVersion":"9","objects":{}}}}"#;
        std::fs::write(&path, old).unwrap();
        let old = Committer::open(vec!["s".into()], Some(path), 10).unwrap();
        assert_eq!(old.committed(0).resource_version.as_deref(), Some("9"));
        assert_eq!(old.committed(0).identity, None);
    }
}
