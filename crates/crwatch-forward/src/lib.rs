//! `crwatch-forward`: the forwarding engine behind `crwatch forward`. Changes of Kubernetes
//! resources (and of crwatch's other sources: HTTP endpoints, pushed webhooks, tables) go to
//! sinks (HTTP webhooks, NATS, AMQP, JSON-lines files) as CloudEvents 1.0, at least once, in
//! order per object, resuming from a checkpoint.
//!
//! The flow: one [`Informer`](crwatch::informer::Informer) per [`stream`] (crwatch's one
//! list/watch engine: resume, relist on 410 Gone or a restarted server, diff against what
//! was committed) → [`pipeline`] (filters, bounded per-sink queues split into per-object
//! lanes, retries, dead letters) → [`sink`]s; acknowledgements flow back to the
//! [`checkpoint`] committer, which advances the resume point only over changes every sink
//! acknowledged.
//!
//! Sinks are cargo features: `webhook` and `file` (default), `nats`, `amqp`; sources other
//! than Kubernetes too: `source-http`, `source-webhook`, `source-postgres`.
//!
//! ```no_run
//! use crwatch_forward::{ForwardConfig, Forwarder};
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! // A non-Kubernetes source needs no API server (with the `source-http` feature).
//! let config = ForwardConfig::parse(
//!     "resources:\n  - source: https://api.example.com/items\n    interval: 10s\n\
//!      sinks:\n  - name: out\n    file: {path: \"-\"}\n",
//!     "forward.yaml",
//! )?;
//! let forwarder = Forwarder::start(config, "forward.yaml", None).await?;
//! tokio::signal::ctrl_c().await?;
//! println!("{}", forwarder.shutdown().await?);
//! # Ok(()) }
//! ```

pub mod checkpoint;
pub mod config;
pub mod event;
pub mod forwarder;
pub mod metrics;
pub mod pipeline;
pub mod secret;
pub mod sink;
pub mod sinks;
pub mod stream;

use std::net::SocketAddr;
use std::path::PathBuf;

pub use config::{ConfigError, ForwardConfig};
pub use forwarder::{Forwarder, Kubernetes, Undelivered, check_resources, check_server};

/// Why the forwarder could not start (or save its checkpoint).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is wrong: fix the file at the location given.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A sink could not be set up (unreadable secret, invalid URL, a broker refusing).
    #[error("sink {sink:?}: {message}")]
    Sink {
        /// The sink's name.
        sink: String,
        /// What went wrong.
        message: String,
    },
    /// A non-Kubernetes source could not be set up.
    #[error("{stream}: {message}")]
    Source {
        /// The stream (the source URI without credentials).
        stream: String,
        /// What went wrong.
        message: String,
    },
    /// The checkpoint file cannot be read or written.
    #[error("checkpoint {}: {message}", path.display())]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// What went wrong and what to do.
        message: String,
    },
    /// `/metrics` or the probes cannot be served.
    #[error("serving {what} on {addr}: {message} (choose another address, or \"off\")")]
    Serve {
        /// `metrics` or `probes`.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// What went wrong.
        message: String,
    },
}
