//! MySQL source tests (being written).
