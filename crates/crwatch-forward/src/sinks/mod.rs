//! The sink implementations, one file each, each behind its cargo feature (`file` always
//! provides [`file::JsonlWriter`], which writes dead-letter files).

#[cfg(feature = "amqp")]
pub mod amqp;
pub mod file;
#[cfg(feature = "mqtt")]
pub mod mqtt;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "webhook")]
pub mod webhook;
