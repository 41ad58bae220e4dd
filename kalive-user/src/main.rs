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
mod container;
mod event;
mod gaps;
mod kernel;
mod kernel_count;
mod late;
mod layout;
mod loader;
mod ls;
mod metrics;
mod output;
mod owners;
mod pipeline;
mod privs;
mod sockdiag;
mod text;
mod timings;

use std::{
    io::{self, IsTerminal as _},
    path::Path,
    process::ExitCode,
    sync::Arc,
};

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    clock::WallClock,
    event::Decoder,
    loader::{Choice, Filters, Tracer},
    output::{Format, Writer},
    pipeline::{Stream, Tally},
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
    sudo kalive --live-acks          # answers to probes at once (costs per segment)
    sudo kalive --ring-size 8388608  # more room for bursts of records
    sudo kalive --user kalive        # run as this user once attached (default: nobody)
    sudo kalive ls                   # every connection's protection against a dead peer";

/// Streams what the kernel does with TCP keepalive, socket by socket: keepalive
/// configured, probes sent and answered, connections killed by keepalive.
#[derive(Debug, Parser)]
#[command(name = "kalive", version, after_help = EXAMPLES, args_conflicts_with_subcommands = true)]
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

    /// Report an answer to a keepalive probe the moment it arrives, and a shared
    /// socket's owner as the last process that sent or received on it. Costs a
    /// program run for every TCP segment received and every send and receive
    /// (about 5% of a busy loopback request/response loop's throughput; see
    /// BENCHMARKS.md). Without it answers come at the socket's next keepalive
    /// timer (up to one keepalive interval later), with `ts` the kernel's time
    /// of the answer.
    #[arg(long)]
    live_acks: bool,

    /// Size of the kernel's ring buffer for records, in bytes: a power of two, at
    /// least the page size. Larger rides out bigger bursts.
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 20, value_parser = parse_ring_size)]
    ring_size: u32,

    /// Sockets whose owners and probes the kernel-side maps follow at once
    /// (1024-4194304). Above it the least recently used are forgotten: owners
    /// come from /proc again (slower), and a probe the programs did not see
    /// leave may go unreported. Each socket costs about 200 bytes of kernel
    /// memory, allocated at start.
    #[arg(long, value_name = "N", default_value_t = 65536, value_parser = parse_max_sockets)]
    max_sockets: u32,

    /// Once its programs are attached, kalive runs as this user, keeping only
    /// the capabilities it still needs [default: nobody when started as root]
    #[arg(long, value_name = "NAME", value_parser = User::lookup)]
    user: Option<User>,

    /// Serve Prometheus metrics at ADDR, path /metrics (for example
    /// 0.0.0.0:9464): counters of the records, gauges of every connection
    /// (see --metrics-interval) and kalive's own cost, by workload (comm,
    /// container, pod, network namespace). With --format none, an agent that
    /// writes no records
    #[arg(long, value_name = "ADDR", value_parser = parse_metrics_addr)]
    metrics: Option<std::net::SocketAddr>,

    /// The most workloads (comm, container, pod, network namespace) the
    /// metrics label apart since kalive started; records of more are counted
    /// under the workload "_other"
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    metrics_max_series: u32,

    /// With --metrics: how often to list every connection for the
    /// connections gauges, in seconds (a `kalive ls` pass; 0: never)
    #[arg(long, value_name = "SECONDS", default_value_t = 30, requires = "metrics",
          value_parser = clap::value_parser!(u64).range(0..=86_400))]
    metrics_interval: u64,

    /// With --metrics: also count the connections a middlebox that forgets
    /// flows idle this long would forget before keepalive sends anything
    #[arg(long, value_name = "SECONDS", requires = "metrics", allow_negative_numbers = true,
          value_parser = ls::parse_budget)]
    idle_budget: Option<u64>,

    #[command(subcommand)]
    command: Option<Command>,
}

fn parse_metrics_addr(value: &str) -> Result<std::net::SocketAddr, String> {
    value.parse().map_err(|_| {
        format!("{value:?} is not an address and port to serve metrics on (like 0.0.0.0:9464)")
    })
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// A snapshot of every TCP connection's protection against a dead peer:
    /// owner, keepalive settings, pending timer, and when the kernel would
    /// find a dead peer
    #[command(after_help = ls::EXAMPLES)]
    Ls(ls::Args),
}

pub(crate) fn parse_pid(value: &str) -> Result<u32, String> {
    match value.parse::<u32>() {
        Ok(0) => Err("pid 0 is not a process".to_owned()),
        Ok(pid) if i32::try_from(pid).is_ok() => Ok(pid),
        _ => Err(format!("{value:?} is not a process id")),
    }
}

pub(crate) fn parse_port(value: &str) -> Result<u16, String> {
    match value.parse::<u16>() {
        Ok(0) => Err("port 0 is not a port a connection uses".to_owned()),
        Ok(port) => Ok(port),
        Err(_) => Err(format!("{value:?} is not a port (1-65535)")),
    }
}

fn parse_max_sockets(value: &str) -> Result<u32, String> {
    match value.parse::<u32>() {
        Ok(n) if (1024..=1 << 22).contains(&n) => Ok(n),
        Ok(n) => Err(format!("{n} is not between 1024 and 4194304")),
        Err(_) => Err(format!("{value:?} is not a number of sockets")),
    }
}

/// A power of two, at least a page: what `BPF_MAP_TYPE_RINGBUF` accepts.
fn parse_ring_size(value: &str) -> Result<u32, String> {
    let size: u32 = value
        .parse()
        .map_err(|_| format!("{value:?} is not a number of bytes"))?;
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|p| u32::try_from(p).ok())
        .unwrap_or(4096);
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
    if cli.format == Some(Format::None) && cli.metrics.is_none() {
        use clap::CommandFactory as _;
        Cli::command()
            .error(
                clap::error::ErrorKind::MissingRequiredArgument,
                "--format none writes no records: it is for an agent serving --metrics ADDR",
            )
            .exit();
    }
    if cli.idle_budget.is_some() && cli.metrics_interval == 0 {
        use clap::CommandFactory as _;
        Cli::command()
            .error(
                clap::error::ErrorKind::ArgumentConflict,
                "--idle-budget counts connections in the --metrics-interval pass, which 0 turns off",
            )
            .exit();
    }
    if let Some(Command::Ls(args)) = &cli.command {
        return match ls::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                say!("{err:#}");
                ExitCode::FAILURE
            }
        };
    }
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

/// What start-up reads of the running kernel.
struct Kernel {
    btf: btf::KernelBtf,
    /// The same BTF, as aya has it.
    aya_btf: aya::Btf,
    layout: kalive_common::Layout,
    symbols: kernel::Symbols,
    hz: u32,
}

impl Kernel {
    fn read(timings: &mut Timings) -> Result<Self> {
        // The kernel renders /proc/kallsyms slowly (tens of ms, in the
        // kernel): read on a thread of its own while aya parses the BTF and
        // the layout is found; the "kallsyms" step is what is left to wait.
        let kallsyms = std::thread::spawn(|| kernel::Symbols::read(loader::FUNCTIONS));
        let btf = btf::KernelBtf::open(Path::new(btf::VMLINUX))?;
        timings.step("BTF");
        let tracefs = kernel::tracefs()?;
        let hz = kernel::hz().context("finding the kernel's HZ")?;
        timings.step("tracefs and HZ");
        let aya_btf = aya::Btf::from_sys_fs().context("parsing the kernel's BTF")?;
        timings.step("aya BTF");
        let mut layout = layout::discover(&btf, &tracefs, hz)?;
        timings.step("layout");
        let symbols = kallsyms
            .join()
            .map_err(|_| anyhow::anyhow!("reading /proc/kallsyms panicked"))??;
        layout::add_timer_fns(&mut layout, &symbols)
            .context("reading the running kernel's layout")?;
        timings.step("kallsyms");
        Ok(Self {
            btf,
            aya_btf,
            layout,
            symbols,
            hz,
        })
    }
}

async fn run(cli: Cli, mut timings: Timings) -> Result<()> {
    // Before anything else: a signal during start-up is a clean stop too.
    let sigint = signal(SignalKind::interrupt())?;
    let sigterm = signal(SignalKind::terminate())?;
    let stdout = io::stdout();
    let format = cli.format.unwrap_or(if stdout.is_terminal() {
        Format::Text
    } else {
        Format::Json
    });

    let root = nix::unistd::geteuid().is_root();
    preflight(root, cli.backend)?;
    // Bound before anything is loaded: a taken address is a one-line error.
    let endpoint = cli.metrics.map(metrics::Endpoint::bind).transpose()?;
    timings.step("arguments");
    let Kernel {
        btf: kernel_btf,
        aya_btf,
        layout,
        symbols,
        hz,
    } = Kernel::read(&mut timings)?;
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
        btf: &aya_btf,
        symbols: &symbols,
        filters: &filters,
        state_changes: cli.state_changes,
        live_acks: cli.live_acks,
        ring_size: cli.ring_size,
        max_sockets: cli.max_sockets,
        // Undocumented: exercise the raw_tp fallback (tests).
        raw_only: std::env::var_os("KALIVE_RAW_TRACEPOINTS").is_some_and(|v| v == "1"),
        // Undocumented: exercise the per-hook fallback of the function backends.
        pretend_inlined: std::env::var("KALIVE_PRETEND_INLINED")
            .map(|v| v.split(',').map(str::to_owned).collect())
            .unwrap_or_default(),
    };
    let (tracer, events) = Tracer::start(cli.backend, &config)?;
    // Only loading needed it: its ~12 MiB go now.
    drop(aya_btf);
    timings.step("load");
    timings.split_last(&tracer.times.parts());
    // The kernel's count of probes, to find at exit any that kalive has no
    // record of: read once tracing, so that every probe it counts from now on
    // is one kalive should record (namespaces without a process are read
    // while kalive may still join them). Without filters only: with them,
    // records are not all the kernel's probes.
    let kernel_counts = (filters.pids.is_empty() && filters.ports.is_empty())
        .then(|| kernel_count::KeepaliveCounts::read(root));
    timings.step("kernel's probe counts");
    announce(&tracer);
    // The connections gauges' pass: its iterator loaded while kalive may.
    let lister = (cli.metrics.is_some() && cli.metrics_interval > 0)
        .then(|| ls::Lister::new(false))
        .transpose()?;
    timings.step("connections lister");
    // Attached: what only loading needed goes now.
    drop_privileges(cli.user, root, lister.is_some())?;
    log::info!("start-up took {timings}");
    say!(
        "tracing TCP keepalive with the {} backend ({}; HZ={hz}). Ctrl-C to stop.",
        tracer.backend,
        tracer.attached
    );

    let metrics = endpoint
        .map(|endpoint| -> Result<_> {
            let metrics = Arc::new(metrics::Metrics::new(cli.metrics_max_series as usize));
            metrics.programs(tracer.program_fds());
            if let Some(lister) = lister {
                metrics.watch_connections(
                    lister,
                    std::time::Duration::from_secs(cli.metrics_interval),
                    cli.idle_budget,
                )?;
                // Only the connections thread joins namespaces: the others
                // (this one, the HTTP server's, started next) do without.
                privs::drop_in_this_thread(privs::KEPT_FOR_CONNECTIONS.0)?;
            }
            endpoint.serve(Arc::clone(&metrics))?;
            Ok(metrics)
        })
        .transpose()?;
    let stream = Stream {
        writer: Writer::new(stdout.lock(), format),
        metrics,
        decoder: Decoder::new(WallClock::now(), hz),
        tracer,
        sockets,
        containers: container::Cache::new(),
        pids: filters.pids.iter().copied().collect(),
        kernel_counts,
        tally: Tally::default(),
    };
    stream.follow(events, sigint, sigterm).await
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
fn drop_privileges(user: Option<User>, root: bool, connections: bool) -> Result<()> {
    let user = match user {
        Some(user) => Some(user),
        None if root => Some(User::nobody()),
        None => None,
    };
    let mut kept = privs::KEPT.to_vec();
    if connections {
        kept.push(privs::KEPT_FOR_CONNECTIONS);
    }
    let dropped = privs::drop_to(user.as_ref().filter(|u| u.uid != 0), &kept)?;
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
