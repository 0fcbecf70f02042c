//! The gateway operator: `GatewayRoute` and `AIGateway` resources (`gateway.crwatch.io/v1alpha1`)
//! rendered into a real nginx's configuration, checked with `nginx -t` and reloaded gracefully.
//!
//! * [`types`]: the resources; [`crd`]: their CRDs as YAML; [`validate`]: rules beyond the
//!   schema.
//! * [`plan`]: from cached objects to what nginx serves (references, conflicts, verdicts).
//! * [`render`]: the nginx configuration; [`nginx`]: test, swap, reload, adopt.
//! * [`engine`]: one serialized sync step; [`controller`]: statuses, Events, probes; [`run`]:
//!   the operator process.
//! * [`loadgen`] and [`backend`]: a load generator that counts failures, and small local HTTP
//!   backends, for the demo, the tests and the benchmark.

pub mod backend;
pub mod controller;
pub mod crd;
pub mod engine;
pub mod loadgen;
pub mod nginx;
pub mod plan;
pub mod render;
pub mod run;
pub mod types;
pub mod validate;
