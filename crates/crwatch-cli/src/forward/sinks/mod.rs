//! The sink implementations, one file each.

pub mod amqp;
pub mod file;
pub mod nats;
pub mod webhook;
