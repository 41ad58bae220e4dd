//! `cargo xtask build-ebpf`: compile `kalive-ebpf` into the object `kalive`
//! embeds, with whichever compiler route `setup` found or installed.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result};

use crate::{
    cmd,
    setup::{self, Purpose},
    toolchain::Route,
};

/// `cargo xtask build-ebpf`.
pub fn run(root: &Path) -> Result<()> {
    build(root, Purpose::Build).map(drop)
}

/// Installs what is missing for `purpose`, builds the BPF object and returns
/// its path.
pub fn build(root: &Path, purpose: Purpose) -> Result<PathBuf> {
    let route = setup::ensure(purpose)?;
    eprintln!("build-ebpf: {}", route.describe());
    let object = compile(root, &route)?;
    eprintln!("build-ebpf: {}", object.display());
    Ok(object)
}

/// Builds `kalive-ebpf` and returns the object's path.
fn compile(root: &Path, route: &Route) -> Result<PathBuf> {
    let target = "bpfel-unknown-none";
    let target_dir = root.join("target/ebpf");
    let mut cmd = match route {
        Route::Nightly { toolchain, .. } => {
            let mut cmd = Command::new("rustup");
            cmd.args(["run", toolchain, "cargo"]);
            cmd
        }
        Route::Prebuilt { rustc, .. } => {
            let mut cmd = Command::new("cargo");
            cmd.env("RUSTC", rustc)
                // aya-ebpf uses `asm_experimental_arch`; allow it for that crate only.
                .env("RUSTC_BOOTSTRAP", "aya_ebpf");
            cmd
        }
    };
    cmd.current_dir(root)
        .args([
            "build",
            "--package",
            "kalive-ebpf",
            "--bins",
            "--release",
            "--target",
            target,
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            [
                format!("--cfg=bpf_target_arch=\"{}\"", env::consts::ARCH),
                "-Cdebuginfo=2".to_owned(),
                "-Clink-arg=--btf".to_owned(),
            ]
            .join("\x1f"),
        );
    if matches!(route, Route::Nightly { .. }) {
        cmd.args(["-Z", "build-std=core"]);
    }
    cmd::run(&mut cmd).context("building kalive-ebpf")?;
    Ok(target_dir.join(target).join("release/kalive"))
}
