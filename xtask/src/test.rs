//! `cargo xtask test`: everything CI checks, in the order that fails fastest.

use std::{env, ffi::OsString, path::Path, time::Instant};

use anyhow::{Context as _, Result};

use crate::{bench, build_ebpf, cmd, setup::Purpose, vm};

/// `cargo xtask test -- ARGS`: ARGS go to the test binaries.
pub fn run(root: &Path, args: &[OsString]) -> Result<()> {
    let start = Instant::now();
    // CI has a time limit: each stage says when it ended.
    let stage = |name: &str| {
        eprintln!(
            "test: {name} done at {:.0} s",
            start.elapsed().as_secs_f64()
        );
    };
    // Everything the VM suite needs too: it runs last.
    build_ebpf::build(root, Purpose::Test)?;
    stage("build-ebpf");
    cargo(root, &["fmt", "--all", "--", "--check"])?;
    let userspace = [
        "--package",
        "kalive-common",
        "--package",
        "kalive-testkit",
        "--package",
        "kalive-user",
        "--package",
        "xtask",
    ];
    let mut clippy = vec!["clippy"];
    clippy.extend(userspace);
    clippy.extend(["--all-targets", "--all-features", "--", "-D", "warnings"]);
    cargo(root, &clippy)?;
    stage("clippy");

    // End-to-end tests need root; they are `#[ignore]`d for plain `cargo test`.
    let mut cmd = cmd::cargo(root);
    cmd.arg("test")
        .args(userspace)
        // The end-to-end tests mostly wait on kernel timers: run more at once.
        .args([
            "--all-features",
            "--",
            "--include-ignored",
            "--test-threads",
            "6",
        ])
        .args(args);
    cmd.env(
        "KALIVE_KUBERNETES_VALIDATE",
        crate::setup::kubernetes_validate(),
    );
    if !cmd::is_root() {
        cmd.env("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER", "sudo -E");
    }
    cmd::run(&mut cmd).context("running the tests")?;
    stage("tests");
    // The benchmarks, small: they keep working, and nothing is lost under load.
    bench::run(root, true, None)?;
    stage("bench (quick)");
    // The same end-to-end suite on a second kernel, per backend. Skipped only
    // when asked, and then said.
    if env::var_os("KALIVE_SKIP_VM").is_some_and(|v| v == "1") {
        eprintln!("test: KALIVE_SKIP_VM=1: not running the suite in the 6.1 VM");
        return Ok(());
    }
    vm::suite(root, &vm::Options::default())?;
    stage("the VM suite");
    Ok(())
}

fn cargo(root: &Path, args: &[&str]) -> Result<()> {
    cmd::run(cmd::cargo(root).args(args))
}
