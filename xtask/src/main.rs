//! `cargo xtask`: kalive's build, run and test commands.
//!
//! ```text
//! cargo xtask setup        install what this machine lacks (idempotent)
//! cargo xtask build-ebpf   compile the BPF object
//! cargo xtask run -- ARGS  build everything and run kalive as root
//! cargo xtask test         the whole test suite, as CI runs it
//! cargo xtask bench        measure kalive's cost and capacity (BENCHMARKS.md)
//! ```

mod bench;
mod cmd;
mod setup;
mod toolchain;
mod vm;

use std::{
    env,
    ffi::OsString,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};

use crate::setup::Purpose;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build, run and test kalive")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what this machine lacks to build and test kalive (idempotent).
    Setup,
    /// Compile the BPF programs (`kalive-ebpf`) into the object `kalive` embeds.
    BuildEbpf,
    /// Build everything in release mode and run `kalive` as root.
    Run {
        /// Arguments for kalive, after `--`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Run the end-to-end suite on a second kernel (Debian's 6.1) in QEMU, once per
    /// backend (fentry, kprobe, tracepoint).
    VmTest {
        /// Only these backends (default: fentry, kprobe and tracepoint).
        #[arg(long = "backend")]
        backends: Vec<String>,
        /// Only these test targets (default: all but cli).
        #[arg(long = "test")]
        tests: Vec<String>,
        /// Debugging: boot the same VM and run this shell script instead.
        #[arg(long)]
        script: Option<PathBuf>,
    },
    /// Measure what kalive costs the host, how much it carries, how fast it
    /// reports and starts; write the results to BENCHMARKS.md (as root).
    Bench {
        /// A short smoke run that also checks nothing was lost.
        #[arg(long)]
        quick: bool,
        /// Where to write the results [default: BENCHMARKS.md; with --quick,
        /// target/bench-quick.md].
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// (The benchmark's connection holder; see `bench::load::hold`.)
    #[command(hide = true)]
    BenchHold {
        addr: std::net::SocketAddr,
        n: usize,
        idle: i32,
        intvl: i32,
        cnt: i32,
    },
    /// Run the whole test suite: formatting, clippy, unit and end-to-end tests (as root).
    Test {
        /// Extra arguments for the test binaries (a name filter, ...).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cmd: Cmd) -> Result<()> {
    let root = workspace_root();
    match cmd {
        Cmd::Setup => {
            let route = setup::ensure(Purpose::Test)?;
            eprintln!(
                "setup: everything is installed; BPF compiler: {}",
                route.describe()
            );
            Ok(())
        }
        Cmd::BuildEbpf => build_ebpf(&root, Purpose::Build).map(drop),
        Cmd::Run { args } => {
            let kalive = build_release(&root, Purpose::Build)?;
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
        Cmd::VmTest {
            backends,
            tests,
            script,
        } => {
            build_ebpf(&root, Purpose::Test)?;
            vm::run(
                &root,
                &vm::Options {
                    backends,
                    tests,
                    script,
                },
            )
        }
        Cmd::Test { args } => test(&root, &args),
        Cmd::BenchHold {
            addr,
            n,
            idle,
            intvl,
            cnt,
        } => bench::hold(addr, n, idle, intvl, cnt),
        Cmd::Bench { quick, out } => {
            let out = out.unwrap_or_else(|| {
                if quick {
                    target_dir(&root).join("bench-quick.md")
                } else {
                    root.join("BENCHMARKS.md")
                }
            });
            let kalive = build_release(&root, Purpose::Test)?;
            let command = if quick {
                "cargo xtask bench --quick"
            } else {
                "cargo xtask bench"
            };
            bench::run(
                &kalive,
                &bench::Options {
                    quick,
                    out,
                    command: command.to_owned(),
                },
            )
        }
    }
}

/// Tests: everything CI checks, in the order that fails fastest.
fn test(root: &Path, args: &[OsString]) -> Result<()> {
    // Everything the VM suite needs too: it runs last.
    build_ebpf(root, Purpose::Test)?;
    cargo(root, &["fmt", "--all", "--", "--check"])?;
    let userspace = [
        "--package",
        "kalive-common",
        "--package",
        "kalive-user",
        "--package",
        "xtask",
    ];
    let mut clippy = vec!["clippy"];
    clippy.extend(userspace);
    clippy.extend(["--all-targets", "--all-features", "--", "-D", "warnings"]);
    cargo(root, &clippy)?;

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
    if !cmd::is_root() {
        cmd.env("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER", "sudo -E");
    }
    cmd::run(&mut cmd).context("running the tests")?;
    // The benchmarks, small: they keep working, and nothing is lost under load.
    let kalive = build_release(root, Purpose::Test)?;
    bench::run(
        &kalive,
        &bench::Options {
            quick: true,
            out: target_dir(root).join("bench-quick.md"),
            command: "cargo xtask bench --quick".to_owned(),
        },
    )?;
    // The same end-to-end suite on a second kernel, per backend. Skipped only
    // when asked, and then said.
    if env::var_os("KALIVE_SKIP_VM").is_some_and(|v| v == "1") {
        eprintln!("test: KALIVE_SKIP_VM=1: not running the suite in the 6.1 VM");
        return Ok(());
    }
    vm::run(root, &vm::Options::default())
}

/// Builds the BPF object and the release `kalive`; returns its path.
fn build_release(root: &Path, purpose: Purpose) -> Result<PathBuf> {
    build_ebpf(root, purpose)?;
    cargo(root, &["build", "--release", "--package", "kalive-user"])?;
    Ok(target_dir(root).join("release/kalive"))
}

fn build_ebpf(root: &Path, purpose: Purpose) -> Result<PathBuf> {
    let route = setup::ensure(purpose)?;
    eprintln!("build-ebpf: {}", route.describe());
    let object = toolchain::build_ebpf(root, &route)?;
    eprintln!("build-ebpf: {}", object.display());
    Ok(object)
}

fn cargo(root: &Path, args: &[&str]) -> Result<()> {
    cmd::run(cmd::cargo(root).args(args))
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace root")
        .to_path_buf()
}

fn target_dir(root: &Path) -> PathBuf {
    env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from)
}
