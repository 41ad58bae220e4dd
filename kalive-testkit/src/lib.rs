//! What kalive's end-to-end tests (`kalive-user/tests`) and its benchmarks
//! (`cargo xtask bench`) share: network namespaces that clean up after
//! themselves, keepalive socket options set in the order that does not surprise
//! the kernel, and kalive's records read back into its own typed `Event`.
//!
//! Dev-only: nothing here ships in `kalive`.

pub mod cgroup;
mod netns;
pub mod raw;
pub mod records;
pub mod sockopt;

pub use netns::Netns;

use std::process::Command;

use anyhow::{Context as _, Result, ensure};

/// Runs a command to completion; its stdout, or an error that names the
/// command and carries its stderr.
///
/// # Errors
/// When the command cannot start or exits unsuccessfully.
pub fn output(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().with_context(|| format!("running {shown}"))?;
    ensure!(
        out.status.success(),
        "{shown} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
