//! Resource-name resolution as kubectl does it; it lives in [`crwatch::discovery`] (the
//! forwarder and the CLI share it) and is re-exported here for `crwatch get`.

pub use crwatch::discovery::*;
