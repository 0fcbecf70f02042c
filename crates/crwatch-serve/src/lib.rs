//! Distribution of what crwatch watches: one upstream watch (any crwatch source) fanned out to
//! many subscribers.
//!
//! - [`xds`]: Envoy's aggregated discovery service (state of the world and delta) serving
//!   Istio's MCP-over-xDS resources (`crwatch serve`).
//! - [`mcp`]: a Model Context Protocol server for AI agents (`crwatch mcp`).

pub mod mcp;
mod slots;
pub mod xds;
