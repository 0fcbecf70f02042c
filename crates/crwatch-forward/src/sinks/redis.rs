//! The Redis Streams sink (skeleton: being written; every delivery fails as retryable until then).

use futures::future::BoxFuture;
use serde::Deserialize;

use crate::sink::{Delivery, Sink, SinkError};

/// The `redis` section of a sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RedisConfig {
    /// Broker URL.
    pub url: String,
}

/// Delivers changes to Redis Streams.
pub struct RedisSink;

impl RedisSink {
    /// Connect to the broker.
    pub async fn connect(_config: &RedisConfig) -> anyhow::Result<Self> {
        anyhow::bail!("the redis sink is not implemented yet")
    }
}

impl Sink for RedisSink {
    fn deliver<'a>(&'a self, _delivery: &'a Delivery) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async { Err(SinkError::Retryable("not implemented".into())) })
    }
}
