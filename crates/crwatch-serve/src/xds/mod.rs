//! The xDS server behind `crwatch serve`: Envoy's `AggregatedDiscoveryService` (state of the
//! world and delta) over the objects of crwatch informers, as Istio's MCP-over-xDS resources.
