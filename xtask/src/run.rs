//! `cargo xtask run -- ARGS`: build everything in release mode and run
//! `kalive` as root.
//!
//! Its stdout is kalive's: everything before kalive starts (installing,
//! building) goes to stderr (see `cmd`).

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};

use crate::{build_ebpf, cmd, setup::Purpose, workspace};

/// `cargo xtask run -- ARGS`: exits with kalive's exit code.
pub fn run(root: &Path, args: &[OsString]) -> Result<()> {
    let kalive = build_release(root, Purpose::Build)?;
    // Not through cmd::run: kalive's stdout is ours.
    let mut kalive = cmd::privileged(&kalive);
    let status = kalive
        .args(args)
        .status()
        .with_context(|| format!("running {}", cmd::describe(&kalive)))?;
    match status.code() {
        Some(0) | None => Ok(()),
        Some(code) => std::process::exit(code),
    }
}

/// Builds the BPF object and the release `kalive`; returns its path.
pub fn build_release(root: &Path, purpose: Purpose) -> Result<PathBuf> {
    build_ebpf::build(root, purpose)?;
    cmd::run(cmd::cargo(root).args(["build", "--release", "--package", "kalive-user"]))?;
    Ok(workspace::target_dir(root).join("release/kalive"))
}
