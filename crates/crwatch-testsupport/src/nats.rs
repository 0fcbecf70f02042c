//! nats: to be written.
