//! Durable `--state`: every change the store commits is written to an embedded ACID database
//! (redb) by one writer thread that commits in groups, and a write is acknowledged only once
//! its group is on disk (see [`crate::store::Store::sync`]). The database also keeps the newest
//! revision (so revisions never go backwards or repeat across restarts, deletes included) and
//! the server's identity (CA, serving certificate, token, ports), so clients reconnect after a
//! restart without new credentials.
//!
//! Guarantees and limits:
//! - **kill -9 / power loss:** every acknowledged write survives (redb commits with
//!   `Durability::Immediate`, which fsyncs). Changes committed in memory but not yet on disk
//!   were never shown to any client (responses and watch events wait for durability), so the
//!   revision a restarted server continues from is never below one a client saw.
//! - **SIGTERM:** the writer drains what was committed before it stops.
//! - **Disk errors:** the batch is retried with backoff (1 s → 30 s); waiting requests get a 500
//!   `storage error` instead of an acknowledgement, and the error is logged once per change of
//!   cause.
//! - **Memory:** changes waiting for the writer are bounded by the writes in flight (each
//!   request waits for its own change), each at most the request size limit; the writer takes
//!   at most [`BATCH_BYTES`] per transaction.
//! - **Bad data:** objects are stored as the JSON the server accepted and parsed back without a
//!   recursion limit on a thread with a large stack; a record that still cannot be parsed is
//!   reported by key and skipped, never blocks the start.
//! - The file is created owner-only (0600): it holds Secrets and the bearer token.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde_json::Value;

use crate::registry::GroupResource;
use crate::store::ObjKey;

/// Objects by `(group, resource, namespace, name)`, as JSON.
const OBJECTS: TableDefinition<(&str, &str, &str, &str), &[u8]> = TableDefinition::new("objects");
/// Server-wide values: `revision` (decimal), `identity` (JSON).
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// Most bytes of object JSON written in one transaction (more waits for the next).
pub const BATCH_BYTES: usize = 64 * 1024 * 1024;

/// Stack for threads that parse or serialize stored objects: nesting depth is limited by the
/// request parser, not by a recursion limit here, so give deep objects room.
const DEEP_STACK: usize = 256 * 1024 * 1024;

/// Opening, reading or writing the state database failed.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct StateError {
    /// What went wrong and what to do.
    pub message: String,
}

fn err(path: &Path, what: impl std::fmt::Display) -> StateError {
    StateError {
        message: format!("state file {}: {what}", path.display()),
    }
}

/// What a state file held at start.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Every object, by resource, in its stored form (each parsed only while it is read).
    pub objects: Vec<crate::store::LoadedObject>,
    /// The newest revision ever handed out (0 for a new file).
    pub revision: u64,
    /// The server identity kept from the last run, as JSON.
    pub identity: Option<Value>,
    /// Records that could not be parsed (reported, skipped).
    pub skipped: usize,
}

/// One change for the writer.
pub(crate) enum Record {
    /// Store (or replace) an object at this revision.
    Put {
        rev: u64,
        gr: GroupResource,
        key: ObjKey,
        object: Arc<crate::store::Stored>,
    },
    /// Remove an object at this revision.
    Delete {
        rev: u64,
        gr: GroupResource,
        key: ObjKey,
    },
    /// Set a server-wide value.
    Meta { key: &'static str, value: Vec<u8> },
    /// Reply once everything sent before is on disk.
    Flush(tokio::sync::oneshot::Sender<Result<(), String>>),
    /// Write what is queued, then close the file (another server may open it next).
    Close,
}

/// Called by the writer after each durable commit with the newest durable revision, or with
/// the error that keeps the batch from committing.
pub(crate) type OnDurable = Box<dyn Fn(Result<u64, String>) + Send>;

/// The open state database: a channel to its writer thread.
pub struct StateDb {
    tx: mpsc::Sender<Record>,
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
    path: PathBuf,
}

/// Parse JSON without a recursion limit (the caller runs on a thread with a large stack).
fn parse_deep(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    de.disable_recursion_limit();
    let v = serde::Deserialize::deserialize(&mut de)?;
    de.end()?;
    Ok(v)
}

/// Run `f` on a thread with a large stack (deeply nested objects parse, serialize and drop
/// recursively).
fn on_deep_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    std::thread::Builder::new()
        .name("crwatch-state-load".into())
        .stack_size(DEEP_STACK)
        .spawn(f)
        .map_err(|e| format!("starting a thread: {e}"))?
        .join()
        .map_err(|_| "the loader thread panicked".to_string())
}

/// Create the file owner-only, or make an existing one owner-only.
fn private_file(path: &Path) -> Result<(), StateError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| err(path, format!("creating its directory: {e}")))?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path).map_err(|e| err(path, e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| err(path, format!("making it owner-only: {e}")))?;
    }
    Ok(())
}

/// Up to the first 64 bytes of the file, if it can be read.
fn file_start(path: &Path) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut buf = Vec::with_capacity(64);
    std::fs::File::open(path)
        .ok()?
        .take(64)
        .read_to_end(&mut buf)
        .ok()?;
    Some(buf)
}

/// A state file from before the database (one JSON document): its objects and revision.
fn read_legacy(path: &Path, bytes: Vec<u8>) -> Result<Loaded, StateError> {
    let doc = on_deep_stack(move || parse_deep(&bytes).map_err(|e| e.to_string()))
        .map_err(|e| err(path, e))?
        .map_err(|e| err(path, format!("not a crwatch-apiserver state file: {e}")))?;
    let objects = doc
        .get("objects")
        .and_then(Value::as_array)
        .ok_or_else(|| err(path, "not a crwatch-apiserver state file: missing \"objects\""))?;
    let parsed = objects
        .iter()
        .filter_map(|o| {
            let s = |k: &str| o.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
            let obj = o.get("object").filter(|v| v.is_object())?;
            Some(crate::store::LoadedObject::new(
                GroupResource {
                    group: s("group"),
                    resource: s("resource"),
                },
                obj,
            ))
        })
        .collect();
    let revision = doc.get("revision").and_then(Value::as_u64).unwrap_or(0);
    let mut loaded = Loaded {
        objects: parsed,
        revision,
        ..Loaded::default()
    };
    // The JSON document lost the objects' revisions only if it was edited; keep the larger.
    for o in &loaded.objects {
        loaded.revision = loaded.revision.max(o.stored.rv());
    }
    Ok(loaded)
}

fn open_db(path: &Path) -> Result<Database, StateError> {
    // A server that stopped in this process a moment ago may still be closing the file.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut builder = Database::builder();
        // Only the writer uses the database after start; a small cache is enough.
        builder.set_cache_size(16 * 1024 * 1024);
        match builder.create(path) {
            Ok(db) => return Ok(db),
            Err(redb::DatabaseError::DatabaseAlreadyOpen) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(err(
                    path,
                    "in use by another crwatch-apiserver (stop it, or give this one its own --state)",
                ));
            }
            Err(e) => return Err(err(path, format!("not a crwatch-apiserver state file: {e}"))),
        }
    }
}

fn read_all(path: &Path, db: &Database) -> Result<Loaded, StateError> {
    let txn = db.begin_read().map_err(|e| err(path, e))?;
    let mut loaded = Loaded::default();
    match txn.open_table(META) {
        Ok(meta) => {
            if let Some(v) = meta.get("revision").map_err(|e| err(path, e))? {
                loaded.revision = std::str::from_utf8(v.value())
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| err(path, "the stored revision is not a number"))?;
            }
            if let Some(v) = meta.get("identity").map_err(|e| err(path, e))? {
                loaded.identity = serde_json::from_slice(v.value()).ok();
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(err(path, e)),
    }
    match txn.open_table(OBJECTS) {
        Ok(objects) => {
            for row in objects.iter().map_err(|e| err(path, e))? {
                let (k, v) = row.map_err(|e| err(path, e))?;
                let (group, resource, ns, name) = k.value();
                match parse_deep(v.value()) {
                    Ok(obj) if obj.is_object() => {
                        loaded.revision = loaded.revision.max(crate::store::rv_of(&obj));
                        loaded.objects.push(crate::store::LoadedObject::new(
                            GroupResource {
                                group: group.to_string(),
                                resource: resource.to_string(),
                            },
                            &obj,
                        ));
                    }
                    Ok(_) | Err(_) => {
                        // Never print the content: it may be a Secret.
                        tracing::error!(
                            group,
                            resource,
                            namespace = ns,
                            name,
                            "state file {}: a stored object is not valid JSON; skipped",
                            path.display()
                        );
                        loaded.skipped += 1;
                    }
                }
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(err(path, e)),
    }
    Ok(loaded)
}

fn write_import(path: &Path, db: &Database, old: &Loaded) -> Result<(), StateError> {
    let mut txn = db.begin_write().map_err(|e| err(path, e))?;
    txn.set_durability(redb::Durability::Immediate)
        .map_err(|e| err(path, e))?;
    {
        let mut t = txn.open_table(OBJECTS).map_err(|e| err(path, e))?;
        for o in &old.objects {
            let (gr, (ns, name)) = (&o.gr, &o.key);
            t.insert(
                (
                    gr.group.as_str(),
                    gr.resource.as_str(),
                    ns.as_str(),
                    name.as_str(),
                ),
                o.stored.text().as_bytes(),
            )
            .map_err(|e| err(path, e))?;
        }
        let mut m = txn.open_table(META).map_err(|e| err(path, e))?;
        m.insert("revision", old.revision.to_string().as_bytes())
            .map_err(|e| err(path, e))?;
    }
    txn.commit().map_err(|e| err(path, e))
}

/// An opened state database, read but not yet written to.
pub struct Opened {
    db: Database,
    path: PathBuf,
}

impl StateDb {
    /// Open (or create) the state file and read everything in it. A state file of the older
    /// single-JSON format is imported and kept beside as `<file>.json-backup`.
    pub fn open(path: &Path) -> Result<(Opened, Loaded), StateError> {
        // Only the start of the file tells the formats apart (a database may be gigabytes).
        let legacy = match file_start(path) {
            Some(b) if b.iter().find(|c| !c.is_ascii_whitespace()) == Some(&b'{') => {
                Some(std::fs::read(path).map_err(|e| err(path, e))?)
            }
            Some(b) if !b.is_empty() && !b.starts_with(b"redb") => {
                return Err(err(
                    path,
                    "not a crwatch-apiserver state file (neither its database nor the older JSON format)",
                ));
            }
            _ => None,
        };
        let imported = match legacy {
            Some(bytes) => {
                let loaded = read_legacy(path, bytes)?;
                let backup = PathBuf::from(format!("{}.json-backup", path.display()));
                std::fs::rename(path, &backup).map_err(|e| err(path, format!("moving it aside: {e}")))?;
                Some(loaded)
            }
            None => None,
        };
        private_file(path)?;
        let owned = path.to_path_buf();
        let (db, loaded) = on_deep_stack(move || -> Result<_, StateError> {
            let db = open_db(&owned)?;
            let loaded = match imported {
                Some(old) => {
                    // Written before anything else uses the file.
                    write_import(&owned, &db, &old)?;
                    tracing::warn!(
                        "state file {}: imported {} objects from the older JSON format",
                        owned.display(),
                        old.objects.len()
                    );
                    old
                }
                None => read_all(&owned, &db)?,
            };
            Ok((db, loaded))
        })
        .map_err(|e| err(path, e))??;
        Ok((
            Opened {
                db,
                path: path.to_path_buf(),
            },
            loaded,
        ))
    }

    /// The state file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queue a change; never blocks (the caller holds the store's lock).
    pub(crate) fn send(&self, record: Record) {
        // The writer ends only after the last sender is gone, so a send cannot fail while the
        // store (which owns this) exists; if it did, the change would simply never become
        // durable and its request would get no acknowledgement.
        let _ = self.tx.send(record);
    }

    /// Keep the server identity (CA, serving certificate, token, ports) for the next start.
    pub fn save_identity(&self, identity: &Value) {
        self.send(Record::Meta {
            key: "identity",
            value: identity.to_string().into_bytes(),
        });
    }

    /// Wait until everything queued so far is on disk.
    pub async fn flush(&self) -> Result<(), StateError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(Record::Flush(tx));
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(err(&self.path, e)),
            Err(_) => Err(err(&self.path, "the writer stopped")),
        }
    }
}

impl StateDb {
    /// Write what is queued, close the file and wait for that (a few milliseconds: one commit).
    /// Changes committed afterwards are never acknowledged (their requests get a storage
    /// error): the server is stopping.
    pub fn close(&self) {
        self.send(Record::Close);
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

impl Drop for StateDb {
    fn drop(&mut self) {
        self.close();
    }
}

impl Opened {
    /// Start the writer thread. `on_durable` hears of every durable revision (and of errors).
    pub(crate) fn start(self, on_durable: OnDurable) -> Result<StateDb, StateError> {
        let (tx, rx) = mpsc::channel();
        let Opened { db, path } = self;
        let p = path.clone();
        let thread = std::thread::Builder::new()
            .name("crwatch-state".into())
            .stack_size(DEEP_STACK)
            .spawn(move || writer(db, &p, rx, on_durable))
            .map_err(|e| err(&path, format!("starting its writer: {e}")))?;
        Ok(StateDb {
            tx,
            thread: std::sync::Mutex::new(Some(thread)),
            path,
        })
    }
}

/// A record ready to write: objects already serialized, so batches are sized in bytes.
enum Prepared {
    Put {
        rev: u64,
        gr: GroupResource,
        key: ObjKey,
        bytes: Vec<u8>,
    },
    Delete {
        rev: u64,
        gr: GroupResource,
        key: ObjKey,
    },
    Meta {
        key: &'static str,
        value: Vec<u8>,
    },
    Flush(tokio::sync::oneshot::Sender<Result<(), String>>),
    Close,
}

impl Prepared {
    fn from(r: Record) -> Self {
        match r {
            Record::Put { rev, gr, key, object } => Prepared::Put {
                rev,
                gr,
                key,
                // The stored text: the bytes serializing the object's value gives.
                bytes: object.text().as_bytes().to_vec(),
            },
            Record::Delete { rev, gr, key } => Prepared::Delete { rev, gr, key },
            Record::Meta { key, value } => Prepared::Meta { key, value },
            Record::Flush(reply) => Prepared::Flush(reply),
            Record::Close => Prepared::Close,
        }
    }

    fn size(&self) -> usize {
        match self {
            Prepared::Put { bytes, .. } => bytes.len(),
            Prepared::Meta { value, .. } => value.len(),
            _ => 64,
        }
    }
}

/// A batch of records turned into one durable transaction; the newest revision in it.
fn commit(db: &Database, batch: &[Prepared]) -> Result<Option<u64>, String> {
    let mut txn = db.begin_write().map_err(|e| e.to_string())?;
    txn.set_durability(redb::Durability::Immediate)
        .map_err(|e| e.to_string())?;
    let mut newest = None;
    {
        let mut objects = txn.open_table(OBJECTS).map_err(|e| e.to_string())?;
        let mut meta = txn.open_table(META).map_err(|e| e.to_string())?;
        for r in batch {
            match r {
                Prepared::Put { rev, gr, key, bytes } => {
                    objects
                        .insert(
                            (
                                gr.group.as_str(),
                                gr.resource.as_str(),
                                key.0.as_str(),
                                key.1.as_str(),
                            ),
                            bytes.as_slice(),
                        )
                        .map_err(|e| e.to_string())?;
                    newest = Some(*rev);
                }
                Prepared::Delete { rev, gr, key } => {
                    objects
                        .remove((
                            gr.group.as_str(),
                            gr.resource.as_str(),
                            key.0.as_str(),
                            key.1.as_str(),
                        ))
                        .map_err(|e| e.to_string())?;
                    newest = Some(*rev);
                }
                Prepared::Meta { key, value } => {
                    meta.insert(*key, value.as_slice()).map_err(|e| e.to_string())?;
                }
                Prepared::Flush(_) | Prepared::Close => {}
            }
        }
        if let Some(rev) = newest {
            meta.insert("revision", rev.to_string().as_bytes())
                .map_err(|e| e.to_string())?;
        }
    }
    txn.commit().map_err(|e| e.to_string())?;
    Ok(newest)
}

/// The writer thread: take what is queued (up to [`BATCH_BYTES`]), commit it in one durable
/// transaction, report the newest durable revision, answer flushes; retry a failed commit with
/// backoff until it succeeds.
fn writer(db: Database, path: &Path, rx: mpsc::Receiver<Record>, on_durable: OnDurable) {
    let mut backoff = Duration::from_secs(1);
    let mut last_error: Option<String> = None;
    let mut closing = false;
    while !closing && let Ok(first) = rx.recv() {
        let mut batch = vec![Prepared::from(first)];
        let mut bytes = batch[0].size();
        while bytes < BATCH_BYTES && !matches!(batch.last(), Some(Prepared::Close)) {
            match rx.try_recv() {
                Ok(r) => {
                    let r = Prepared::from(r);
                    bytes += r.size();
                    batch.push(r);
                }
                Err(_) => break,
            }
        }
        loop {
            match commit(&db, &batch) {
                Ok(newest) => {
                    if last_error.take().is_some() {
                        tracing::warn!("state file {}: writing again", path.display());
                    }
                    backoff = Duration::from_secs(1);
                    if let Some(rev) = newest {
                        on_durable(Ok(rev));
                    }
                    for r in batch.drain(..) {
                        match r {
                            Prepared::Flush(reply) => {
                                let _ = reply.send(Ok(()));
                            }
                            Prepared::Close => closing = true,
                            _ => {}
                        }
                    }
                    break;
                }
                Err(e) => {
                    if last_error.as_deref() != Some(e.as_str()) {
                        tracing::error!(
                            "state file {}: writing failed ({e}); changes are kept in memory and retried, writes wait",
                            path.display()
                        );
                        last_error = Some(e.clone());
                    }
                    on_durable(Err(e.clone()));
                    // Flushes waiting for this batch hear of the error (once); the changes stay.
                    let (flushes, rest): (Vec<_>, Vec<_>) =
                        batch.drain(..).partition(|r| matches!(r, Prepared::Flush(_)));
                    batch = rest;
                    for r in flushes {
                        if let Prepared::Flush(reply) = r {
                            let _ = reply.send(Err(e.clone()));
                        }
                    }
                    if batch.iter().any(|r| matches!(r, Prepared::Close)) {
                        // Stopping: what cannot be written was never acknowledged.
                        closing = true;
                        break;
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }
    on_durable(Err("the server is stopping".into()));
}
