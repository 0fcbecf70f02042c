//! Sources: where objects come from. Every source yields the same event shape (kube-runtime's
//! watcher events: `Init`, `InitApply`, `InitDone`, `Apply`, `Delete`), so objects from the
//! Kubernetes API, files, database rows or HTTP resources run through one store, informer,
//! queue and controller.

pub mod kube;

use futures::stream::BoxStream;

pub use kube_runtime_event::Event;

/// The event type every source yields (re-exported from kube-runtime's watcher).
mod kube_runtime_event {
    pub use ::kube::runtime::watcher::Event;
}

/// A source failed for a while; it retries by itself (with backoff) and keeps going.
#[derive(Debug, thiserror::Error)]
#[error("{source_name}: {message}")]
pub struct SourceError {
    /// Which source, e.g. `databases.stable.example.com/v1 in all namespaces`.
    pub source_name: String,
    /// What went wrong.
    pub message: String,
    /// Whether the source will relist (410 Gone and similar) rather than resume.
    pub relist: bool,
}

/// A stream of source events. Errors are reported and the stream goes on.
pub type EventStream<K> = BoxStream<'static, Result<Event<K>, SourceError>>;

/// Anything that can feed an informer.
pub trait Source<K>: Send + 'static {
    /// A human name for logs and metrics.
    fn describe(&self) -> String;
    /// Start producing events. Called once per informer run.
    fn events(self: Box<Self>) -> EventStream<K>;
}
