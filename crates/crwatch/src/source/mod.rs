//! Sources: where objects come from. Every source yields the same event shape (modelled on
//! kube-runtime's watcher events: `Init`, `InitApply`, `InitDone`, `Apply`, `Delete`, plus
//! `Progress` for "healthy, and everything up to here was delivered"), so objects from the
//! Kubernetes API, files, database rows or HTTP resources run through one store, informer,
//! queue and controller.
//!
//! Sources outside Kubernetes yield [`kube::api::DynamicObject`]s in one common shape, built
//! with [`object::ObjectBuilder`]: `apiVersion`, `kind`, `metadata` (name, namespace, labels,
//! uid, resourceVersion from the source's own versioning) and the body.

#[cfg(feature = "file")]
pub mod file;
#[cfg(feature = "http")]
pub mod http;
pub mod kube;
#[cfg(feature = "mysql")]
pub mod mysql;
pub mod object;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub mod sql;
#[cfg(feature = "webhook")]
pub mod webhook;
#[cfg(feature = "xds")]
pub mod xds;

use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

/// What a source tells its informer.
///
/// A (re)list is `Init`, any number of `InitApply`, then `InitDone`: the informer replaces its
/// store with exactly the objects between `Init` and `InitDone` and tells its handlers what
/// differs (added, modified with a diff, deleted with the last known object, deleted and added
/// again when the uid changed). `Apply` and `Delete` are single changes.
#[derive(Debug, Clone, PartialEq)]
pub enum Event<K> {
    /// A complete list starts.
    Init,
    /// One object of the list in progress.
    InitApply(K),
    /// The list is complete: everything not listed is gone.
    InitDone,
    /// An object was added or modified.
    Apply(K),
    /// An object was deleted (its last state, as the source knew it).
    Delete(K),
    /// The source is connected and healthy, and every change up to `checkpoint` was delivered.
    /// A source that can resume ([`Source::resume`]) sends one after each change it delivers
    /// (and on bookmarks), so a snapshot of the store plus the latest checkpoint is consistent.
    /// Others send it whenever they confirm they are up to date (a poll, a heartbeat).
    Progress(Option<Checkpoint>),
}

/// Where a source was, so it can resume there instead of listing everything again.
///
/// ```
/// use crwatch::source::Checkpoint;
/// let cp = Checkpoint::new("1234").with_identity("kube-system-uid");
/// assert_eq!(cp.resource_version, "1234");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Checkpoint {
    /// The source's own version (a Kubernetes resourceVersion, a change-log sequence number).
    pub resource_version: String,
    /// Which server history the version belongs to (for Kubernetes: the uid of the
    /// `kube-system` namespace). A source whose identity changed relists instead of resuming.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
}

impl Checkpoint {
    /// A checkpoint at `resource_version`, of an unknown server identity.
    pub fn new(resource_version: impl Into<String>) -> Self {
        Checkpoint {
            resource_version: resource_version.into(),
            identity: None,
        }
    }

    /// The same checkpoint, tied to a server identity.
    pub fn with_identity(mut self, identity: impl Into<String>) -> Self {
        self.identity = Some(identity.into());
        self
    }
}

/// A source failed for a while; it retries by itself (with backoff) and keeps going.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{source_name}: {message}")]
pub struct SourceError {
    /// Which source, e.g. `databases.stable.example.com/v1 in all namespaces`.
    pub source_name: String,
    /// What went wrong (never a response body or a secret).
    pub message: String,
    /// Whether the source will relist (410 Gone, a restarted server) rather than resume.
    pub relist: bool,
    /// What kind of failure, for programs that word it for people (as kubectl does).
    pub kind: ErrorKind,
}

/// What kind of failure a [`SourceError`] is.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The server answered with an error status.
    Server {
        /// The HTTP status code.
        code: u16,
        /// The status reason (`Forbidden`, `NotFound`, ...), empty when the server gave none.
        reason: String,
        /// The server's own message.
        message: String,
    },
    /// No answer: connecting, TLS, or the stream broke off.
    Transport {
        /// Whether the connection was refused.
        refused: bool,
        /// The innermost cause.
        cause: String,
    },
    /// Anything else (bad data, a local problem).
    #[default]
    Other,
    /// One object could not be decoded into the source's type; it was skipped and the source
    /// goes on (this is no failure of the source itself).
    Undecodable(Box<Undecodable>),
}

/// An object the source's type cannot hold (a CRD's objects that no longer match the Rust
/// type, a value the server accepted but the type rejects), named but never shown: `error`
/// says where and what kind of value was wrong, not the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undecodable {
    /// Its apiVersion.
    pub api_version: String,
    /// Its kind.
    pub kind: String,
    /// Its namespace (`None` when cluster-scoped).
    pub namespace: Option<String>,
    /// Its name.
    pub name: String,
    /// Its uid, when it had one.
    pub uid: Option<String>,
    /// Whether it came as a deletion (the object is gone).
    pub deleted: bool,
    /// Why: a path into the object and what was wrong there (`data.a: invalid type: integer,
    /// expected a string`), free of the object's values.
    pub error: String,
}

impl Undecodable {
    /// Name `object` (or a Table row's `object`) from its apiVersion, kind and metadata;
    /// `api_version` and `kind` stand in where it has none (list items).
    pub fn of(
        object: &serde_json::Value,
        api_version: &str,
        kind: &str,
        deleted: bool,
        error: String,
    ) -> Self {
        let o = match object.get("object") {
            Some(inner) if object.get("metadata").is_none() => inner,
            _ => object,
        };
        let text = |p: &str| {
            o.pointer(p)
                .and_then(serde_json::Value::as_str)
                .filter(|s| !s.is_empty())
        };
        Undecodable {
            api_version: text("/apiVersion").unwrap_or(api_version).to_string(),
            kind: text("/kind").unwrap_or(kind).to_string(),
            namespace: text("/metadata/namespace").map(str::to_string),
            name: text("/metadata/name").unwrap_or_default().to_string(),
            uid: text("/metadata/uid").map(str::to_string),
            deleted,
            error,
        }
    }
}

impl std::fmt::Display for Undecodable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ", self.kind)?;
        if let Some(ns) = &self.namespace {
            write!(f, "{ns}/")?;
        }
        write!(f, "{}", self.name)?;
        if let Some(uid) = &self.uid {
            write!(f, " (uid {uid})")?;
        }
        write!(f, " could not be decoded and was skipped: {}", self.error)
    }
}

/// A serde message without the offending value: serde's `invalid type: string "hunter2",
/// expected i32` names the value, and a Secret's or any object's values must not reach logs
/// or Events; the kind of value (`string`), the expectation and field names stay.
///
/// ```
/// use crwatch::source::redact_decode_message;
/// assert_eq!(
///     redact_decode_message("invalid type: string \"hunter2\", expected i32 at line 1 column 9"),
///     "invalid type: string, expected i32"
/// );
/// assert_eq!(redact_decode_message("missing field `spec`"), "missing field `spec`");
/// assert_eq!(redact_decode_message("unknown variant `s3cr3t`, expected `A` or `B`"), "unknown variant, expected `A` or `B`");
/// assert_eq!(redact_decode_message("bad value \"s3cr3t\" here"), "bad value … here");
/// ```
pub fn redact_decode_message(message: &str) -> String {
    // serde_json appends the position; the path the caller adds says more.
    let message = match message.rfind(" at line ") {
        Some(i) if message[i..].contains(" column ") => &message[..i],
        _ => message,
    };
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = message.strip_prefix(prefix) {
            // `<kind> <value>, expected <what>`: keep the kind words before the value.
            let (unexpected, expected) = match rest.find(", expected ") {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, ""),
            };
            let kind = unexpected
                .find(['`', '"'])
                .map_or(unexpected, |i| &unexpected[..i])
                .trim_end();
            return format!("{prefix}{kind}{expected}");
        }
    }
    if let Some(rest) = message.strip_prefix("unknown variant `")
        && let Some(end) = rest.find('`')
    {
        return format!("unknown variant{}", &rest[end + 1..]);
    }
    // Field names come from the type, not the object.
    if [
        "missing field `",
        "unknown field `",
        "duplicate field `",
        "invalid length ",
    ]
    .iter()
    .any(|p| message.starts_with(p))
    {
        return message.to_string();
    }
    // Anything else (a type's own message) may quote the value: drop every quoted part.
    let mut out = String::with_capacity(message.len());
    let mut quote: Option<char> = None;
    for c in message.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '`' => {
                quote = Some(c);
                out.push('…');
            }
            None => out.push(c),
        }
    }
    out
}

impl ErrorKind {
    /// Whether retrying can help before a source first synced: a server that is busy or
    /// failing (429, 5xx) may recover; a refusal (401, 403, 404) or an unreachable server is
    /// better reported at once to someone waiting at a terminal. An undecodable object counts
    /// as transient: the source skipped it and goes on, so it is no reason to give up.
    pub fn is_transient(&self) -> bool {
        matches!(self, ErrorKind::Server { code, .. } if *code == 429 || *code >= 500)
            || matches!(self, ErrorKind::Undecodable(_))
    }
}

impl SourceError {
    /// An error of `source_name` that the source retries by resuming.
    pub fn new(source_name: impl Into<String>, message: impl Into<String>) -> Self {
        SourceError {
            source_name: source_name.into(),
            message: message.into(),
            relist: false,
            kind: ErrorKind::Other,
        }
    }

    /// The same error, of `kind`.
    pub fn with_kind(mut self, kind: ErrorKind) -> Self {
        self.kind = kind;
        self
    }
}

/// A stream of source events. Errors are reported and the stream goes on; the stream ends only
/// when the source cannot go on at all.
pub type EventStream<K> = BoxStream<'static, Result<Event<K>, SourceError>>;

/// Anything that can feed an informer.
pub trait Source<K>: Send + 'static {
    /// A human name for logs and metrics.
    fn describe(&self) -> String;

    /// Start after `checkpoint` instead of with a complete list, when this source can (the
    /// informer calls this before [`Source::events`] when it starts from a snapshot). Returns
    /// whether it will; a source that cannot (the default) lists first, and the informer diffs
    /// that list against the snapshot, so handlers still see exactly what changed meanwhile.
    fn resume(&mut self, checkpoint: &Checkpoint) -> bool {
        let _ = checkpoint;
        false
    }

    /// List and watch only the slots of `ring` this replica is interested in, if the source
    /// can ask its server to (KEP-5866); returns whether it will try. The default cannot.
    fn shard(&mut self, ring: &crate::shard::ShardRing) -> bool {
        let _ = ring;
        false
    }

    /// Start producing events. Called once per informer run.
    fn events(self: Box<Self>) -> EventStream<K>;
}

/// A boxed source is a source (for programs that pick the source at run time).
impl<K: 'static> Source<K> for Box<dyn Source<K>> {
    fn describe(&self) -> String {
        (**self).describe()
    }

    fn resume(&mut self, checkpoint: &Checkpoint) -> bool {
        (**self).resume(checkpoint)
    }

    fn shard(&mut self, ring: &crate::shard::ShardRing) -> bool {
        (**self).shard(ring)
    }

    fn events(self: Box<Self>) -> EventStream<K> {
        let inner: Box<dyn Source<K>> = *self;
        inner.events()
    }
}
