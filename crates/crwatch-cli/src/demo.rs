//! `crwatch demo`: to be written.

/// Run the demo.
pub async fn run(_args: crate::args::DemoArgs) -> anyhow::Result<()> {
    anyhow::bail!("crwatch demo is not written yet")
}
