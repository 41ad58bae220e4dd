//! `kalive`: what the Linux kernel does with TCP keepalive, socket by socket.

mod btf;
mod clock;
mod loader;
mod output;

use std::{
    io::{self, IsTerminal as _},
    path::Path,
    process::ExitCode,
};

use anyhow::{Context as _, Result};
use clap::Parser;
use kalive_common::Record;
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
};

use crate::{
    clock::WallClock,
    loader::Tracer,
    output::{Format, Writer},
};

const EXAMPLES: &str = "\
EXAMPLES:
    sudo kalive                      # stream events as a table
    sudo kalive --format json        # one JSON object per line
    sudo kalive --format json | jq 'select(.event == \"state_change\")'";

/// Streams TCP keepalive activity per socket, attributed to the owning process.
#[derive(Debug, Parser)]
#[command(name = "kalive", version, after_help = EXAMPLES)]
struct Cli {
    /// Output format [default: text on a terminal, json otherwise]
    #[arg(long, value_enum)]
    format: Option<Format>,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .target(env_logger::Target::Stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("kalive: starting the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("kalive: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    let stdout = io::stdout();
    let format = cli.format.unwrap_or(if stdout.is_terminal() {
        Format::Text
    } else {
        Format::Json
    });

    let kernel = btf::KernelBtf::open(Path::new(btf::VMLINUX))?;
    let layout = btf::layout(&kernel)?;
    let tracer = Tracer::start(&layout)?;
    // SAFETY: the ring buffer owns its map fd, which stays open and unchanged
    // until the `AsyncFd` (and with it the ring buffer) is dropped.
    let mut events = unsafe { AsyncFd::register_with_interest(tracer.events, Interest::READABLE) }
        .map_err(|err| err.into_parts().1)
        .context("polling the ring buffer")?;
    let mut writer = Writer::new(stdout.lock(), format, WallClock::now());
    eprintln!("kalive: tracing TCP sockets (tp_btf). Ctrl-C to stop.");
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;

    loop {
        tokio::select! {
            guard = events.readable_mut() => {
                let mut guard = guard?;
                let ring = guard.get_inner_mut();
                while let Some(item) = ring.next() {
                    match Record::decode(&item) {
                        Ok(record) => {
                            if let Err(err) = writer.record(&record) {
                                return closed_or(err);
                            }
                        }
                        Err(err) => log::warn!("skipping a record: {err}"),
                    }
                }
                guard.clear_ready();
                if let Err(err) = writer.flush() {
                    return closed_or(err);
                }
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }
    // Drain what the kernel already produced, then stop.
    let ring = events.get_mut();
    while let Some(item) = ring.next() {
        if let Ok(record) = Record::decode(&item)
            && let Err(err) = writer.record(&record)
        {
            return closed_or(err);
        }
    }
    writer.flush().or_else(closed_or)
}

/// A closed stdout (`kalive | head -1`) is a clean stop, not an error.
fn closed_or(err: io::Error) -> Result<()> {
    if err.kind() == io::ErrorKind::BrokenPipe {
        Ok(())
    } else {
        Err(err).context("writing records")
    }
}
