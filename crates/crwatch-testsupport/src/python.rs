//! The Python interpreter of the tests' protocol clients that crwatch did not write (grpcio with
//! Envoy's `xds-protos`, the official MCP SDK), in a virtual environment made by `scripts/pyenv`
//! from PyPI on first use and shared by every test binary.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};
use tokio::sync::OnceCell;

static PYTHON: OnceCell<PathBuf> = OnceCell::const_new();

/// The venv's `python`, creating or updating the venv first (`scripts/pyenv` locks, so test
/// binaries running in parallel install once).
pub async fn python() -> anyhow::Result<PathBuf> {
    PYTHON
        .get_or_try_init(|| async {
            let root = workspace_root();
            let script = root.join("scripts/pyenv");
            let out = tokio::task::spawn_blocking(move || Command::new(&script).output())
                .await
                .context("scripts/pyenv task")?
                .context("running scripts/pyenv")?;
            if !out.status.success() {
                bail!(
                    "scripts/pyenv failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let path = String::from_utf8(out.stdout).context("scripts/pyenv output")?;
            Ok(PathBuf::from(path.trim()))
        })
        .await
        .cloned()
}

/// The workspace's root directory (this crate lives in `crates/crwatch-testsupport`).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}
