//! `crwatch forward`: route changes of chosen resources to sinks (HTTP webhook, NATS, AMQP,
//! files) as CloudEvents, at least once, in order per object, resuming from a checkpoint.

pub mod sink;
pub mod sinks;

/// Run `crwatch forward`.
pub async fn run(_args: crate::args::ForwardArgs) -> anyhow::Result<()> {
    anyhow::bail!("crwatch forward is not written yet")
}
