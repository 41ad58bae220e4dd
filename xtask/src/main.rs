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
mod build_ebpf;
mod cmd;
mod run;
mod setup;
mod test;
mod toolchain;
mod vm;
mod workspace;

use std::{ffi::OsString, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

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
        /// Only the capacity runs, at these numbers of sockets; their table
        /// goes to stdout (for looking into one size).
        #[arg(long, value_name = "SOCKETS")]
        capacity: Vec<usize>,
        /// Only the `kalive ls` runs, at these numbers of connections; their
        /// table goes to stdout.
        #[arg(long, value_name = "CONNECTIONS")]
        ls: Vec<usize>,
    },
    /// (The benchmark's connection holder; see `bench::load::hold`.)
    #[command(hide = true)]
    BenchHold {
        addr: std::net::SocketAddr,
        n: usize,
        idle: i32,
        intvl: i32,
        cnt: i32,
        /// The holder's process name (a workload of its own in the metrics).
        #[arg(long)]
        comm: Option<String>,
    },
    /// (The benchmark's measurer: runs a command from a small process, so that
    /// its peak RSS is its own; see `bench::ls`.)
    #[command(hide = true)]
    BenchMeasure {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<OsString>,
    },
    /// Run the whole test suite: formatting, clippy, unit and end-to-end tests (as root).
    Test {
        /// Extra arguments for the test binaries (a name filter, ...).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
}

fn main() -> ExitCode {
    let root = workspace::root();
    let result = match Cli::parse().command {
        Cmd::Setup => setup::run(),
        Cmd::BuildEbpf => build_ebpf::run(&root),
        Cmd::Run { args } => run::run(&root, &args),
        Cmd::VmTest {
            backends,
            tests,
            script,
        } => vm::run(
            &root,
            &vm::Options {
                backends,
                tests,
                script,
            },
        ),
        Cmd::Test { args } => test::run(&root, &args),
        Cmd::BenchMeasure { command } => bench::measure_child(&command),
        Cmd::BenchHold {
            addr,
            n,
            idle,
            intvl,
            cnt,
            comm,
        } => bench::hold(addr, n, idle, intvl, cnt, comm.as_deref()),
        Cmd::Bench {
            quick,
            out,
            capacity,
            ls,
        } => {
            if !ls.is_empty() {
                bench::ls_only(&root, &ls)
            } else if capacity.is_empty() {
                bench::run(&root, quick, out)
            } else {
                bench::capacity_only(&root, &capacity)
            }
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: {err:#}");
            ExitCode::FAILURE
        }
    }
}
