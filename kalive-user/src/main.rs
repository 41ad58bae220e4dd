//! `kalive`: what the Linux kernel does with TCP keepalive, socket by socket.

/// A line on stderr, led by "kalive: ". It never fails: when stderr is closed
/// (`kalive 2>&1 | head -1`) there is no one left to tell.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "kalive: {}", format_args!($($arg)*));
    }};
}

mod btf;
mod clock;
mod gaps;
mod kernel;
mod layout;
mod loader;
mod output;
mod owners;
mod privs;
mod timings;

use std::{
    collections::HashSet,
    fmt::Write as _,
    io::{self, IsTerminal as _, Write},
    path::Path,
    process::ExitCode,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
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
    privs::User,
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
    sudo kalive --ring-size 8388608  # more room for bursts of records
    sudo kalive --user kalive        # run as this user once attached (default: nobody)";

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

    /// Once its programs are attached, kalive runs as this user, keeping only
    /// the capabilities it still needs [default: nobody when started as root]
    #[arg(long, value_name = "NAME", value_parser = User::lookup)]
    user: Option<User>,
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
            say!("starting the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli, timings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            say!("{err:#}");
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

    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    preflight(root, cli.backend)?;
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
            say!("no process {pid} now; its sockets are reported if it appears");
        }
    }
    let filters = Filters {
        pids: cli.pids,
        ports: cli.ports,
    };
    // Sockets that exist already: their owners come from procfs.
    let sockets = owners::Sockets::scan();
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
    announce(&tracer);
    // Attached: what only loading needed goes now.
    drop_privileges(cli.user, root)?;
    log::info!("start-up took {timings}");
    say!(
        "tracing TCP keepalive with the {} backend ({}; HZ={hz}). Ctrl-C to stop.",
        tracer.backend,
        tracer.attached
    );

    let mut stream = Stream {
        writer: Writer::new(stdout.lock(), format, WallClock::now(), hz),
        tracer,
        sockets,
        pids: filters.pids.iter().copied().collect(),
        tally: Tally::default(),
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
    say!("{}", stream.tally.summary());
    match result {
        // A closed stdout (`kalive | head -1`) is a clean stop, not an error.
        Err(err) if err.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing records"),
    }
}

/// Says which backends were passed over, and what falls back or is missing.
fn announce(tracer: &Tracer) {
    for (backend, why) in &tracer.passed_over {
        say!("not using the {backend} backend: {why}");
    }
    for (what, why) in &tracer.attached.fallbacks {
        say!("{what} seen through the timer tracepoints: {why}");
    }
    for what in &tracer.attached.missing {
        say!("{what}");
    }
}

/// Becomes `user` (`nobody` by default when root, or uid 65534 where there is
/// no such user; root itself means no switch) with only the capabilities
/// kalive still needs, and says so.
fn drop_privileges(user: Option<User>, root: bool) -> Result<()> {
    let user = match user {
        Some(user) => Some(user),
        None if root => Some(User::nobody()),
        None => None,
    };
    let dropped = privs::drop_to(user.as_ref().filter(|u| u.uid != 0))?;
    say!("{dropped}");
    Ok(())
}

/// What kalive needs to run here, checked before anything is loaded: each
/// failure is one line saying what is missing.
fn preflight(root: bool, backend: Choice) -> Result<()> {
    if let Some(why) = privs::missing_to_start(&privs::effective()?, root) {
        bail!(why);
    }
    loader::check_release(backend)
}

struct Stream<W: Write> {
    writer: Writer<W>,
    tracer: Tracer,
    /// Who holds which socket, per the last `/proc` scan.
    sockets: owners::Sockets,
    /// `--pid` values, for records the kernel could not filter.
    pids: HashSet<u32>,
    tally: Tally,
    owners_full_reported: bool,
}

/// What became of the records.
#[derive(Debug, Default)]
struct Tally {
    written: u64,
    /// Lost records reported so far.
    lost: u64,
    /// Records of a size or version this kalive does not know, skipped.
    undecodable: u64,
    /// Keepalive probes with no record, from gaps in probe numbers.
    gaps: gaps::ProbeGaps,
    /// Runs of kalive's programs the kernel skipped (recursion protection).
    skipped: u64,
}

impl Tally {
    /// The record in `bytes`; one that cannot be decoded is counted (the
    /// first is said on stderr), never fatal.
    fn decode(&mut self, bytes: &[u8]) -> Option<Record> {
        match Record::decode(bytes) {
            Ok(record) => Some(record),
            Err(err) => {
                if self.undecodable == 0 {
                    say!("skipping records it cannot decode: {err}");
                }
                self.undecodable += 1;
                None
            }
        }
    }

    /// The line kalive ends with.
    fn summary(&self) -> String {
        let mut line = format!(
            "stopped: {} records written, {} lost",
            self.written, self.lost
        );
        if self.lost > 0 {
            line.push_str(
                " (the ring buffer was full at times: a larger --ring-size rides out bursts)",
            );
        }
        if self.undecodable > 0 {
            let _ = write!(
                line,
                ", {} skipped as undecodable (kalive's BPF object and binary disagree)",
                self.undecodable
            );
        }
        if self.skipped > 0 {
            let _ = write!(
                line,
                "; the kernel skipped {} runs of kalive's programs (records they would \
                 have made are recovered where kalive can)",
                self.skipped
            );
        }
        if self.gaps.unseen > 0 {
            let _ = write!(
                line,
                "; {} keepalive probes had no record (gaps in their sockets' probe numbers)",
                self.gaps.unseen
            );
        }
        line
    }
}

impl<W: Write> Stream<W> {
    /// Writes every record waiting in the ring buffer.
    fn drain(&mut self, ring: &mut RingBuf<MapData>) -> io::Result<()> {
        while let Some(item) = ring.next() {
            self.handle(&item)?;
        }
        self.writer.flush()
    }

    /// Decodes, completes and writes one record from the ring buffer.
    fn handle(&mut self, bytes: &[u8]) -> io::Result<()> {
        let Some(mut record) = self.tally.decode(bytes) else {
            return Ok(());
        };
        // With --pid, a socket's records stop when another process uses it:
        // gaps would not mean what they say.
        if let Some(kind) = record.kind().filter(|_| self.pids.is_empty()) {
            let before = self.tally.gaps.unseen;
            if self.tally.gaps.see(kind, record.sk, record.probes) > 0 && before == 0 {
                say!(
                    "some keepalive probes have no record (gaps in their sockets' \
                     probe numbers); the count is in the summary at exit"
                );
            }
        }
        if self.complete(&mut record) {
            self.writer.record(&record)?;
            self.tally.written += 1;
        }
        Ok(())
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
            match owners::cookie_via_fd(pid, fd, record.ino) {
                Ok(cookie) => record.cookie = cookie,
                Err(err) => log::debug!("no cookie for socket {}: {err}", record.ino),
            }
        }
    }

    /// Reports records the programs could not deliver since the last check, and
    /// (once) a full map of owners.
    fn check_counters(&mut self) -> io::Result<()> {
        let lost = self.tracer.lost().map_err(io::Error::other)?;
        if lost > self.tally.lost {
            let now = WallClock::boot_now_ns();
            self.writer.lost(now, lost - self.tally.lost)?;
            self.tally.written += 1;
            self.tally.lost = lost;
            self.writer.flush()?;
        }
        let skipped = self.tracer.skipped().map_err(io::Error::other)?;
        if skipped > self.tally.skipped {
            if self.tally.skipped == 0 {
                say!(
                    "the kernel skipped runs of kalive's programs (a hook fired inside \
                     itself on a CPU); records they would have made are recovered where \
                     kalive can; the count is in the summary at exit"
                );
            }
            self.tally.skipped = skipped;
        }
        if !self.owners_full_reported && self.tracer.owners_full().map_err(io::Error::other)? > 0 {
            self.owners_full_reported = true;
            say!(
                "the kernel's map of socket owners is full; owners of more sockets \
                 come from /proc scans (slower, and not filtered in the kernel)"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Tally;

    #[test]
    fn undecodable_records_are_counted_and_summed_up() {
        let mut tally = Tally::default();
        assert!(tally.decode(&[0u8; 7]).is_none());
        assert!(tally.decode(&[0xffu8; 4096]).is_none());
        assert_eq!(tally.undecodable, 2);
        tally.written = 10;
        tally.lost = 3;
        assert_eq!(
            tally.summary(),
            "stopped: 10 records written, 3 lost (the ring buffer was full at times: a larger \
             --ring-size rides out bursts), 2 skipped as undecodable (kalive's BPF object and \
             binary disagree)"
        );
        assert_eq!(
            Tally::default().summary(),
            "stopped: 0 records written, 0 lost"
        );
        let mut tally = Tally::default();
        tally.gaps.see(kalive_common::Kind::KeepaliveSet, 7, 0);
        tally.gaps.see(kalive_common::Kind::ProbeSent, 7, 3);
        assert_eq!(
            tally.summary(),
            "stopped: 0 records written, 0 lost; 2 keepalive probes had no record (gaps in \
             their sockets' probe numbers)"
        );
        tally.skipped = 4;
        assert_eq!(
            tally.summary(),
            "stopped: 0 records written, 0 lost; the kernel skipped 4 runs of kalive's \
             programs (records they would have made are recovered where kalive can); 2 \
             keepalive probes had no record (gaps in their sockets' probe numbers)"
        );
    }
}
