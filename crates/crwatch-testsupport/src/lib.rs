//! Real database and message servers for tests, started from Debian's binaries on free loopback
//! ports in temporary directories and stopped (and their data removed) when dropped.
//!
//! Each server type has `start()`; tests that share one server per test binary keep it in a
//! `tokio::sync::OnceCell` and give each test its own database, subject or exchange.

pub mod mariadb;
pub mod mosquitto;
pub mod nats;
pub mod otlp;
pub mod postgres;
pub mod process;
pub mod python;
pub mod rabbitmq;
pub mod redis;

pub use process::{free_port, wait_for_tcp};
