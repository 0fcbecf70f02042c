//! The MQTT sink (skeleton: being written; every delivery fails as retryable until then).

use futures::future::BoxFuture;
use serde::Deserialize;

use crate::sink::{Delivery, Sink, SinkError};

/// The `mqtt` section of a sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MqttConfig {
    /// Broker URL.
    pub url: String,
}

/// Delivers changes to MQTT.
pub struct MqttSink;

impl MqttSink {
    /// Connect to the broker.
    pub async fn connect(_config: &MqttConfig) -> anyhow::Result<Self> {
        anyhow::bail!("the mqtt sink is not implemented yet")
    }
}

impl Sink for MqttSink {
    fn deliver<'a>(&'a self, _delivery: &'a Delivery) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async { Err(SinkError::Retryable("not implemented".into())) })
    }
}
