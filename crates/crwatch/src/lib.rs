//! `crwatch`: the controller runtime. Sources feed an indexed cache; shared informers fan
//! changes out to handlers; controllers turn them into keys on a rate-limited workqueue and
//! reconcile them; a manager runs it all with leader election, metrics and health probes.

pub mod api;
pub mod client;
pub mod conditions;
pub mod controller;
pub mod diff;
pub mod discovery;
pub mod events;
pub mod finalizer;
pub mod health;
pub mod informer;
pub mod json;
pub mod ksm;
pub mod leader;
pub mod manager;
pub mod metrics;
pub mod projection;
pub mod queue;
pub mod retry;
pub mod ryow;
pub mod shard;
pub mod source;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;
#[cfg(feature = "tls-client")]
pub mod tls;
pub mod trace;
#[cfg(feature = "xds")]
pub mod xds;

/// What crwatch's exported macros refer to; not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use schemars;
    pub use serde_json;
}
