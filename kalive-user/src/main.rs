//! `kalive`: what the Linux kernel does with TCP keepalive, socket by socket.

mod btf;
mod clock;
mod kernel;
mod layout;
mod loader;
mod output;
mod procfs;
mod sockets;
mod timings;

use std::{
    collections::HashSet,
    io::{self, IsTerminal as _, Write},
    path::Path,
    process::ExitCode,
    time::Duration,
};

use anyhow::{Context as _, Result};
use aya::maps::{MapData, RingBuf};
use clap::Parser;
use kalive_common::{FLAG_SHARED, Kind, OWNER_PROCFS, Owner, Record};
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
};

use crate::{
    clock::WallClock,
    loader::{Choice, Filters, Tracer},
    output::{Format, Writer},
    timings::Timings,
};

const EXAMPLES: &str = "\
EXAMPLES:
    sudo kalive                      # stream keepalive events as a table
    sudo kalive --format json        # one JSON object per line
    sudo kalive --format json | jq 'select(.event == \"keepalive_timeout\")'
    sudo kalive -p 1234 -p 5678      # sockets of these processes only
    sudo kalive --port 5432          # sockets with local or remote port 5432
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

    /// How to hook the kernel: auto tries fentry, then kprobe, then tracepoint
    #[arg(long, value_enum, env = "KALIVE_BACKEND", default_value = "auto")]
    backend: Choice,

    /// Only sockets owned by this process (repeatable: any of them)
    #[arg(short, long = "pid", value_name = "PID", value_parser = parse_pid)]
    pids: Vec<u32>,

    /// Only sockets with this local or remote port (repeatable: any of them).
    /// With --pid too, a socket must match both.
    #[arg(short = 'P', long = "port", value_name = "PORT", value_parser = parse_port)]
    ports: Vec<u16>,

    /// Also report every TCP state change (`state_change` records; noisy on busy hosts)
    #[arg(long)]
    state_changes: bool,

    /// Size of the kernel's ring buffer for records, in bytes: a power of two, at
    /// least the page size. Larger rides out bigger bursts.
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 20, value_parser = parse_ring_size)]
    ring_size: u32,
}

fn parse_pid(value: &str) -> Result<u32, String> {
    match value.parse::<u32>() {
        Ok(0) => Err("pid 0 is not a process".to_owned()),
        Ok(pid) if i32::try_from(pid).is_ok() => Ok(pid),
        _ => Err(format!("{value:?} is not a process id")),
    }
}

fn parse_port(value: &str) -> Result<u16, String> {
    match value.parse::<u16>() {
        Ok(0) => Err("port 0 is not a port a connection uses".to_owned()),
        Ok(port) => Ok(port),
        Err(_) => Err(format!("{value:?} is not a port (1-65535)")),
    }
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
    let timings = Timings::start();
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
    match runtime.block_on(run(cli, timings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("kalive: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli, mut timings: Timings) -> Result<()> {
    // Before anything else: a signal during start-up is a clean stop too.
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let stdout = io::stdout();
    let format = cli.format.unwrap_or(if stdout.is_terminal() {
        Format::Text
    } else {
        Format::Json
    });

    timings.step("arguments");
    let kernel_btf = btf::KernelBtf::open(Path::new(btf::VMLINUX))?;
    timings.step("BTF");
    let tracefs = kernel::tracefs()?;
    let hz = kernel::hz().context("finding the kernel's HZ")?;
    timings.step("tracefs and HZ");
    let symbols = kernel::Symbols::read(loader::FUNCTIONS)?;
    timings.step("kallsyms");
    let layout = layout::discover(&kernel_btf, &symbols, &tracefs, hz)?;
    timings.step("layout");
    for &pid in &cli.pids {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("kalive: no process {pid} now; its sockets are reported if it appears");
        }
    }
    let filters = Filters {
        pids: cli.pids,
        ports: cli.ports,
    };
    // Sockets that exist already: their owners come from procfs.
    let sockets = procfs::Sockets::scan();
    timings.step("/proc scan");
    let config = loader::Config {
        layout: &layout,
        kernel_btf: &kernel_btf,
        symbols: &symbols,
        filters: &filters,
        state_changes: cli.state_changes,
        ring_size: cli.ring_size,
        // Undocumented: exercise the raw_tp fallback (tests).
        raw_only: std::env::var_os("KALIVE_RAW_TRACEPOINTS").is_some_and(|v| v == "1"),
        // Undocumented: exercise the per-hook fallback of the function backends.
        pretend_inlined: std::env::var("KALIVE_PRETEND_INLINED")
            .map(|v| v.split(',').map(str::to_owned).collect())
            .unwrap_or_default(),
    };
    let (tracer, events) = Tracer::start(cli.backend, &config)?;
    timings.step("load");
    timings.split_last(&tracer.times.parts());
    for (backend, why) in &tracer.passed_over {
        eprintln!("kalive: not using the {backend} backend: {why}");
    }
    for (what, why) in &tracer.attached.fallbacks {
        eprintln!("kalive: {what} seen through the timer tracepoints: {why}");
    }
    for what in &tracer.attached.missing {
        eprintln!("kalive: {what}");
    }
    log::info!("start-up took {timings}");
    eprintln!(
        "kalive: tracing TCP keepalive with the {} backend ({}; HZ={hz}). Ctrl-C to stop.",
        tracer.backend, tracer.attached
    );

    let mut stream = Stream {
        writer: Writer::new(stdout.lock(), format, WallClock::now(), hz),
        tracer,
        sockets,
        pids: filters.pids.iter().copied().collect(),
        lost_reported: 0,
        owners_full_reported: false,
    };
    // SAFETY: the ring buffer owns its map fd, which stays open and unchanged
    // until the `AsyncFd` (and with it the ring buffer) is dropped.
    let mut events = unsafe { AsyncFd::register_with_interest(events, Interest::READABLE) }
        .map_err(|err| err.into_parts().1)
        .context("polling the ring buffer")?;
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
        if let Err(err) = step.and_then(|()| stream.check_counters()) {
            break Err(err);
        }
    };
    // Deliver what the kernel already produced, then stop.
    let result = result
        .and_then(|()| stream.drain(events.get_mut()))
        .and_then(|()| stream.check_counters());
    match result {
        // A closed stdout (`kalive | head -1`) is a clean stop, not an error.
        Err(err) if err.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing records"),
    }
}

struct Stream<W: Write> {
    writer: Writer<W>,
    tracer: Tracer,
    /// Who holds which socket, per the last `/proc` scan.
    sockets: procfs::Sockets,
    /// `--pid` values, for records the kernel could not filter.
    pids: HashSet<u32>,
    /// Lost records already reported.
    lost_reported: u64,
    owners_full_reported: bool,
}

impl<W: Write> Stream<W> {
    /// Writes every record waiting in the ring buffer.
    fn drain(&mut self, ring: &mut RingBuf<MapData>) -> io::Result<()> {
        while let Some(item) = ring.next() {
            match Record::decode(&item) {
                Ok(mut record) => {
                    if self.complete(&mut record) {
                        self.writer.record(&record)?;
                    }
                }
                Err(err) => log::warn!("skipping a record: {err}"),
            }
        }
        self.writer.flush()
    }

    /// Fills in what the programs could not know, and applies the pid filter
    /// where the kernel could not. Returns whether to write the record.
    fn complete(&mut self, record: &mut Record) -> bool {
        if record.owner_pid().is_none() && record.ino != 0 {
            self.owner_from_procfs(record);
        }
        if record.cookie == 0 {
            self.assign_cookie(record);
        }
        !record.unfiltered()
            || record
                .owner_pid()
                .is_some_and(|pid| self.pids.contains(&pid))
    }

    /// The owner of a socket the programs know no owner for: whoever holds it in
    /// `/proc`. The programs are told, so later records carry it.
    fn owner_from_procfs(&mut self, record: &mut Record) {
        let Some(holders) = self.sockets.holders(record.ino) else {
            return;
        };
        // Several processes hold it: which one used it last only the kernel can
        // tell; name the first, and say it is shared.
        let Some(first) = holders.iter().min_by_key(|h| h.pid) else {
            return;
        };
        let shared = holders.iter().any(|h| h.pid != first.pid);
        let mut comm = [0u8; 16];
        let len = first.comm.len().min(15);
        comm[..len].copy_from_slice(&first.comm[..len]);
        let owner = Owner {
            pid: first.pid,
            source: OWNER_PROCFS,
            shared: u8::from(shared),
            pad: 0,
            learned_ns: WallClock::boot_now_ns(),
            ino: record.ino,
            comm,
        };
        record.pid = owner.pid;
        record.comm = owner.comm;
        record.owner = OWNER_PROCFS;
        if shared {
            record.flags |= FLAG_SHARED;
        }
        if let Err(err) = self.tracer.set_owner(record.sk, &owner) {
            log::debug!(
                "cannot tell the programs the owner of socket {}: {err:#}",
                record.ino
            );
        }
    }

    /// A socket the kernel has assigned no cookie yet gets one through a
    /// descriptor of its owner: the caller's for `keepalive_set`, else one found
    /// in `/proc`.
    fn assign_cookie(&mut self, record: &mut Record) {
        if record.ino == 0 {
            return;
        }
        let via = match (record.kind(), record.owner_pid()) {
            (Some(Kind::KeepaliveSet), Some(pid)) if record.fd >= 0 => Some((pid, record.fd)),
            _ => self
                .sockets
                .holders(record.ino)
                .and_then(|holders| holders.first())
                .map(|h| (h.pid, h.fd)),
        };
        if let Some((pid, fd)) = via {
            match sockets::cookie_via_fd(pid, fd, record.ino) {
                Ok(cookie) => record.cookie = cookie,
                Err(err) => log::debug!("no cookie for socket {}: {err}", record.ino),
            }
        }
    }

    /// Reports records the programs could not deliver since the last check, and
    /// (once) a full map of owners.
    fn check_counters(&mut self) -> io::Result<()> {
        let lost = self.tracer.lost().map_err(io::Error::other)?;
        if lost > self.lost_reported {
            let now = WallClock::boot_now_ns();
            self.writer.lost(now, lost - self.lost_reported)?;
            self.lost_reported = lost;
            self.writer.flush()?;
        }
        if !self.owners_full_reported && self.tracer.owners_full().map_err(io::Error::other)? > 0 {
            self.owners_full_reported = true;
            eprintln!(
                "kalive: the kernel's map of socket owners is full; owners of more sockets \
                 come from /proc scans (slower, and not filtered in the kernel)"
            );
        }
        Ok(())
    }
}
