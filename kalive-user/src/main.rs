//! `kalive`: what the Linux kernel does with TCP keepalive, socket by socket.

mod btf;
mod clock;
mod kernel;
mod layout;
mod loader;
mod output;
mod sockets;

use std::{
    io::{self, IsTerminal as _, Write},
    path::Path,
    process::ExitCode,
    time::Duration,
};

use anyhow::{Context as _, Result};
use aya::maps::{MapData, RingBuf};
use clap::Parser;
use kalive_common::{Kind, Record, Settings};
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
    sudo kalive                      # stream keepalive events as a table
    sudo kalive --format json        # one JSON object per line
    sudo kalive --format json | jq 'select(.event == \"keepalive_timeout\")'
    sudo kalive --state-changes      # also every TCP state change
    sudo kalive --ring-size 8388608  # more room for bursts of records";

/// Streams what the kernel does with TCP keepalive, socket by socket: keepalive
/// configured, probes sent and answered, connections killed by keepalive.
#[derive(Debug, Parser)]
#[command(name = "kalive", version, after_help = EXAMPLES)]
struct Cli {
    /// Output format [default: text on a terminal, json otherwise]
    #[arg(long, value_enum)]
    format: Option<Format>,

    /// Also report every TCP state change (`state_change` records; noisy on busy hosts)
    #[arg(long)]
    state_changes: bool,

    /// Size of the kernel's ring buffer for records, in bytes: a power of two, at
    /// least the page size. Larger rides out bigger bursts.
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 20, value_parser = parse_ring_size)]
    ring_size: u32,
}

/// A power of two, at least a page: what `BPF_MAP_TYPE_RINGBUF` accepts.
fn parse_ring_size(value: &str) -> Result<u32, String> {
    let size: u32 = value
        .parse()
        .map_err(|_| format!("{value:?} is not a number of bytes"))?;
    // SAFETY: sysconf has no preconditions.
    let page = u32::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    if !size.is_power_of_two() || size < page {
        return Err(format!(
            "{size} is not a power of two of at least {page} (the page size)"
        ));
    }
    Ok(size)
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

    let kernel_btf = btf::KernelBtf::open(Path::new(btf::VMLINUX))?;
    let tracefs = kernel::tracefs()?;
    let layout = layout::discover(&kernel_btf, &tracefs)?;
    let hz = kernel::hz().context("finding the kernel's HZ")?;
    let settings = Settings {
        state_changes: u8::from(cli.state_changes),
        pad: [0; 7],
    };
    // Undocumented: exercise the raw_tp fallback (tests).
    let raw_only = std::env::var_os("KALIVE_RAW_TRACEPOINTS").is_some_and(|v| v == "1");
    let (tracer, events) = Tracer::start(&layout, settings, cli.ring_size, raw_only)?;
    eprintln!(
        "kalive: tracing TCP keepalive ({}; HZ={hz}). Ctrl-C to stop.",
        tracer.attached
    );

    let mut stream = Stream {
        writer: Writer::new(stdout.lock(), format, WallClock::now(), hz),
        lost_reported: 0,
    };
    // SAFETY: the ring buffer owns its map fd, which stays open and unchanged
    // until the `AsyncFd` (and with it the ring buffer) is dropped.
    let mut events = unsafe { AsyncFd::register_with_interest(events, Interest::READABLE) }
        .map_err(|err| err.into_parts().1)
        .context("polling the ring buffer")?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));

    let result = loop {
        let step = tokio::select! {
            guard = events.readable_mut() => {
                let mut guard = guard?;
                let step = stream.drain(guard.get_inner_mut());
                guard.clear_ready();
                step
            }
            _ = tick.tick() => Ok(()),
            _ = sigint.recv() => break Ok(()),
            _ = sigterm.recv() => break Ok(()),
        };
        if let Err(err) = step.and_then(|()| stream.check_lost(&tracer)) {
            break Err(err);
        }
    };
    // Deliver what the kernel already produced, then stop.
    let result = result
        .and_then(|()| stream.drain(events.get_mut()))
        .and_then(|()| stream.check_lost(&tracer));
    match result {
        // A closed stdout (`kalive | head -1`) is a clean stop, not an error.
        Err(err) if err.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing records"),
    }
}

struct Stream<W: Write> {
    writer: Writer<W>,
    /// Lost records already reported.
    lost_reported: u64,
}

impl<W: Write> Stream<W> {
    /// Writes every record waiting in the ring buffer.
    fn drain(&mut self, ring: &mut RingBuf<MapData>) -> io::Result<()> {
        while let Some(item) = ring.next() {
            match Record::decode(&item) {
                Ok(mut record) => {
                    complete(&mut record);
                    self.writer.record(&record)?;
                }
                Err(err) => log::warn!("skipping a record: {err}"),
            }
        }
        self.writer.flush()
    }

    /// Reports records the programs could not deliver since the last check.
    fn check_lost(&mut self, tracer: &Tracer) -> io::Result<()> {
        let lost = tracer.lost().map_err(io::Error::other)?;
        if lost > self.lost_reported {
            let now = WallClock::boot_now_ns();
            self.writer.lost(now, lost - self.lost_reported)?;
            self.lost_reported = lost;
            self.writer.flush()?;
        }
        Ok(())
    }
}

/// Fills in what the programs could not: a `keepalive_set` on a socket that has
/// no cookie yet gets one through the caller's descriptor.
fn complete(record: &mut Record) {
    if record.cookie == 0
        && record.kind() == Some(Kind::KeepaliveSet)
        && let Some(pid) = record.owner_pid()
        && record.fd >= 0
        && record.ino != 0
    {
        match sockets::cookie_via_fd(pid, record.fd, record.ino) {
            Ok(cookie) => record.cookie = cookie,
            Err(err) => log::debug!("no cookie for socket {}: {err}", record.ino),
        }
    }
}
