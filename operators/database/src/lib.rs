//! The `Database` operator: the custom resource's types and CRD, the validation the admission
//! webhook and the reconciler share, the names a `Database` gets on a server, and the engines
//! that create databases and users on PostgreSQL and MariaDB.
//!
//! * [`types`]: `Database`, its spec and status; [`crd`]: the CRD as YAML.
//! * [`validate`]: the rules beyond the schema, with field paths.
//! * [`naming`]: server-side database and login names, collision-free.
//! * [`engine`]: PostgreSQL and MariaDB, safe SQL, classified errors.
//! * [`password`]: generated passwords and the hashes the servers store.
//! * [`quantity`]: Kubernetes quantities as bytes.

pub mod certs;
pub mod config;
pub mod controller;
pub mod crd;
pub mod engine;
pub mod naming;
pub mod password;
pub mod quantity;
pub mod run;
pub mod types;
pub mod validate;
pub mod webhook;

pub use types::{Database, DatabaseSpec, DatabaseStatus};
