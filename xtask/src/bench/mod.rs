//! `cargo xtask bench`: what kalive costs the host, how much it carries, how
//! fast it reports, how fast it starts. Results go to `BENCHMARKS.md`.
//!
//! The machine is noisy, so every comparison is a ratio between runs
//! interleaved in the same invocation, repeated, given as min/median/max.

mod load;
mod ls;
mod scrape;

pub use load::hold;
pub use ls::measure_child;
mod procs;
mod report;

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use jiff::Timestamp;
use kalive_common::event::{Head, Kind};

use crate::{cmd, run, setup::Purpose, workspace};

use self::{
    load::{Connections, Netns, Pair},
    procs::{BpfStats, Prog, Running, Tracer},
};

struct Options {
    /// A smoke run: small and short, and its invariants are checked.
    quick: bool,
    out: PathBuf,
    /// The command line, for the report.
    command: String,
}

/// How much of everything.
#[derive(Debug, Clone)]
struct Plan {
    rounds: usize,
    load_secs: Duration,
    conns: usize,
    sizes: Vec<usize>,
    capacity_secs: Duration,
    startups: usize,
    /// `kalive ls` at these numbers of connections, this many times each.
    ls_sizes: Vec<usize>,
    ls_rounds: usize,
    /// The metrics agent: connections, workloads (label sets), scrapes.
    scrape: (usize, usize, usize),
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                rounds: 2,
                load_secs: Duration::from_secs(1),
                conns: 8,
                sizes: vec![500],
                capacity_secs: Duration::from_secs(3),
                startups: 3,
                ls_sizes: vec![500],
                ls_rounds: 1,
                scrape: (500, 50, 5),
            }
        } else {
            Self {
                rounds: 7,
                load_secs: Duration::from_secs(3),
                conns: 32,
                sizes: vec![1_000, 10_000, 50_000, 100_000],
                capacity_secs: Duration::from_secs(10),
                startups: 11,
                ls_sizes: vec![1_000, 10_000, 50_000],
                ls_rounds: 5,
                scrape: (10_000, 1_000, 20),
            }
        }
    }
}

/// min, median, max.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

impl Spread {
    /// # Panics
    /// On no values.
    #[must_use]
    pub fn of(values: &[f64]) -> Self {
        assert!(!values.is_empty(), "a spread of nothing");
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let mid = v.len() / 2;
        let median = if v.len() % 2 == 1 {
            v[mid]
        } else {
            f64::midpoint(v[mid - 1], v[mid])
        };
        Self {
            min: v[0],
            median,
            max: v[v.len() - 1],
        }
    }
}

/// The `q` quantile (0..=1) of sorted `values`, nearest rank.
#[must_use]
pub fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    #[expect(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "a rank within a slice's length, from a fraction in 0..=1"
    )]
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

pub struct HotPath {
    pub tracers: Vec<Tracer>,
    /// Transactions/s per tracer, per round.
    pub tps: Vec<Vec<f64>>,
    pub conns: usize,
    pub secs: Duration,
}

pub struct Costs {
    pub tracer: Tracer,
    pub programs: Vec<Prog>,
    pub transactions: f64,
    /// CPU time all cores spent busy during the loop (the loop, the kernel's
    /// work for it, and the programs).
    pub busy_ns: u64,
}

pub struct Capacity {
    pub sockets: usize,
    pub secs: Duration,
    pub kernel_probes: u64,
    /// Packets the client's veth dropped (local congestion).
    pub veth_drops: u64,
    /// Probes kalive found missing from its records (gaps in probe numbers).
    pub unreported: u64,
    /// Probes kalive found late (their timer callbacks went unseen).
    pub late: u64,
    /// kalive's programs the kernel skipped, and how often.
    pub recursion_misses: Vec<(String, u64)>,
    pub delivered_probes: u64,
    pub records: u64,
    pub lost: u64,
    pub cpu: Duration,
    pub peak_rss: u64,
    /// The ring buffer kalive was given, MiB.
    pub ring_mib: u32,
    /// Microseconds from `ts` to the line being read, probes only, sorted.
    pub latency_us: Vec<u64>,
}

pub struct Startup {
    /// From exec to "tracing" on stderr.
    pub total: Vec<Duration>,
    /// kalive's own breakdown, per run: (step, ms).
    pub steps: Vec<Vec<(String, f64)>>,
}

pub struct Results {
    pub backends: Vec<(String, Result<(), String>)>,
    pub hot: HotPath,
    pub costs: Vec<Costs>,
    pub capacity: Vec<Capacity>,
    pub startup: Startup,
    pub backend: String,
    pub ls: Vec<ls::LsRun>,
    pub scrape: scrape::ScrapeRun,
}

/// `cargo xtask bench [--quick] [--out FILE]`: builds kalive and measures it.
pub fn run(root: &Path, quick: bool, out: Option<PathBuf>) -> Result<()> {
    let out = out.unwrap_or_else(|| {
        if quick {
            workspace::target_dir(root).join("bench-quick.md")
        } else {
            root.join("BENCHMARKS.md")
        }
    });
    let kalive = run::build_release(root, Purpose::Test)?;
    let command = if quick {
        "cargo xtask bench --quick"
    } else {
        "cargo xtask bench"
    };
    measure(
        &kalive,
        &Options {
            quick,
            out,
            command: command.to_owned(),
        },
    )
}

/// `cargo xtask bench --capacity N...`: only the capacity runs, their table
/// on stdout.
pub fn capacity_only(root: &Path, sizes: &[usize]) -> Result<()> {
    if !cmd::is_root() {
        bail!("the benchmarks load BPF programs and make network namespaces: run as root");
    }
    let kalive = run::build_release(root, Purpose::Test)?;
    let secs = Plan::new(false).capacity_secs;
    let mut runs = Vec::new();
    for &n in sizes {
        runs.push(capacity_run(&kalive, "tracepoint", n, secs)?);
    }
    let mut md = String::new();
    report::capacity(&mut md, &runs);
    print!("{md}");
    Ok(())
}

/// `cargo xtask bench --ls N...`: only the `kalive ls` runs, their table on
/// stdout.
pub fn ls_only(root: &Path, sizes: &[usize]) -> Result<()> {
    if !cmd::is_root() {
        bail!("the benchmarks load BPF programs and make network namespaces: run as root");
    }
    let kalive = run::build_release(root, Purpose::Test)?;
    let rounds = Plan::new(false).ls_rounds;
    let mut runs = Vec::new();
    for &n in sizes {
        runs.push(ls::run(&kalive, n, rounds)?);
    }
    let mut md = String::new();
    report::ls(&mut md, &runs);
    print!("{md}");
    Ok(())
}

/// Runs everything in `plan` and writes the report.
fn measure(kalive: &Path, opts: &Options) -> Result<()> {
    if !cmd::is_root() {
        bail!("the benchmarks load BPF programs and make network namespaces: run as root");
    }
    let plan = Plan::new(opts.quick);
    eprintln!("bench: {plan:?}");

    let backends = runnable_backends(kalive);
    let runnable: Vec<String> = backends
        .iter()
        .filter(|(_, r)| r.is_ok())
        .map(|(b, _)| b.clone())
        .collect();
    let Some(backend) = runnable.first().cloned() else {
        bail!("no kalive backend runs here: {backends:?}");
    };
    let bpftrace = cmd::which("bpftrace").is_some();
    if !bpftrace {
        eprintln!("bench: bpftrace is not installed; `cargo xtask setup` installs it");
    }

    let mut tracers = vec![Tracer::None];
    tracers.extend(runnable.iter().cloned().map(Tracer::Kalive));
    tracers.push(Tracer::KaliveLive(backend.clone()));
    tracers.push(Tracer::KaliveAgent(backend.clone()));
    if bpftrace {
        tracers.push(Tracer::Bpftrace);
    }
    let hot = hot_path(kalive, &tracers, &plan)?;
    let mut costs = Vec::new();
    for tracer in tracers.iter().filter(|t| **t != Tracer::None) {
        costs.push(program_costs(kalive, tracer, &plan)?);
    }
    let mut capacity = Vec::new();
    for &n in &plan.sizes {
        capacity.push(capacity_run(kalive, &backend, n, plan.capacity_secs)?);
    }
    let startup = startup(kalive, plan.startups)?;
    let mut ls_runs = Vec::new();
    for &n in &plan.ls_sizes {
        ls_runs.push(ls::run(kalive, n, plan.ls_rounds)?);
    }
    let (n, workloads, scrapes) = plan.scrape;
    let scrape = scrape::run(kalive, &backend, n, workloads, scrapes)?;
    let results = Results {
        scrape,
        backends,
        hot,
        costs,
        capacity,
        startup,
        backend,
        ls: ls_runs,
    };
    report::write(&opts.out, &opts.command, &results)?;
    eprintln!("bench: wrote {}", opts.out.display());
    if opts.quick {
        check(&results)?;
    }
    Ok(())
}

/// What a smoke run must show whatever the machine: every measurement made,
/// and no record missing.
fn check(r: &Results) -> Result<()> {
    for (tracer, tps) in r.hot.tracers.iter().zip(&r.hot.tps) {
        if tps.iter().any(|&t| t <= 0.0) {
            bail!("no transactions with {tracer}");
        }
    }
    for c in &r.costs {
        if c.programs.iter().all(|p| p.run_cnt == 0) {
            bail!("{}: no program ran (bpf_stats)", c.tracer);
        }
    }
    for c in &r.capacity {
        if c.kernel_probes == 0 {
            bail!("{} sockets: the kernel sent no keepalive probes", c.sockets);
        }
        if c.delivered_probes != c.kernel_probes || c.lost != 0 {
            bail!(
                "{} sockets: {} probe_sent records for {} probes the kernel counted ({} lost)",
                c.sockets,
                c.delivered_probes,
                c.kernel_probes,
                c.lost
            );
        }
    }
    if r.startup.steps.iter().any(Vec::is_empty) {
        bail!("kalive gave no start-up breakdown");
    }
    Ok(())
}

/// Which backends start here, and why the others do not.
fn runnable_backends(kalive: &Path) -> Vec<(String, Result<(), String>)> {
    ["fentry", "kprobe", "tracepoint"]
        .into_iter()
        .map(|b| {
            let result = Running::start(&Tracer::Kalive(b.to_owned()), kalive, &[], &[], false)
                .map(drop)
                .map_err(|err| {
                    let text = format!("{err:#}");
                    text.lines()
                        .find_map(|l| l.strip_prefix("kalive: "))
                        .unwrap_or(&text)
                        .to_owned()
                });
            eprintln!("bench: backend {b}: {result:?}");
            (b.to_owned(), result)
        })
        .collect()
}

/// Interleaved rounds of the request/response loop beside each tracer.
fn hot_path(kalive: &Path, tracers: &[Tracer], plan: &Plan) -> Result<HotPath> {
    let ns = Netns::new("rr")?;
    let mut tps = vec![Vec::new(); tracers.len()];
    // Warm up: the first run of anything is slower.
    load::request_response(&ns, plan.conns, plan.load_secs)?;
    for round in 0..plan.rounds {
        for k in 0..tracers.len() {
            let i = (k + round) % tracers.len();
            let running = Running::start(&tracers[i], kalive, &[], &[], false)?;
            let t = load::request_response(&ns, plan.conns, plan.load_secs)?;
            if let Some(r) = running {
                r.stop()?;
            }
            eprintln!("bench: hot path round {round}: {}: {t:.0} tps", tracers[i]);
            tps[i].push(t);
        }
    }
    Ok(HotPath {
        tracers: tracers.to_vec(),
        tps,
        conns: plan.conns,
        secs: plan.load_secs,
    })
}

/// Each program's run time and count under the request/response loop.
fn program_costs(kalive: &Path, tracer: &Tracer, plan: &Plan) -> Result<Costs> {
    let ns = Netns::new("cost")?;
    let before = procs::programs()?;
    let running = Running::start(tracer, kalive, &[], &[], false)?;
    let ids: Vec<u64> = procs::programs()?
        .into_keys()
        .filter(|id| !before.contains_key(id))
        .collect();
    let stats = BpfStats::enable()?;
    let start = procs::programs()?;
    let busy_before = procs::busy_ns()?;
    let tps = load::request_response(&ns, plan.conns, plan.load_secs)?;
    let busy_ns = procs::busy_ns()?.saturating_sub(busy_before);
    let end = procs::programs()?;
    drop(stats);
    if let Some(r) = running {
        r.stop()?;
    }
    let programs = ids
        .iter()
        .filter_map(|id| {
            let (a, b) = (start.get(id)?, end.get(id)?);
            Some(Prog {
                name: b.name.clone(),
                run_time_ns: b.run_time_ns - a.run_time_ns,
                run_cnt: b.run_cnt - a.run_cnt,
                recursion_misses: b.recursion_misses - a.recursion_misses,
            })
        })
        .collect();
    Ok(Costs {
        tracer: tracer.clone(),
        programs,
        transactions: tps * plan.load_secs.as_secs_f64(),
        busy_ns,
    })
}

/// How long the capacity runs' peer answers every socket's probes.
pub const ANSWERED: Duration = Duration::from_secs(3);

/// The ring buffer the capacity runs give kalive from 50k sockets on.
pub const BIG_RING: u32 = 32 << 20;

/// `n` idle connections with keepalive 1 s/1 s to a peer that stops
/// answering: every socket probes every second.
fn capacity_run(kalive: &Path, backend: &str, n: usize, secs: Duration) -> Result<Capacity> {
    eprintln!("bench: capacity: {n} sockets");
    // Room in the receive backlog for a second's probes: else the veth drops
    // bursts, TCP retries those probes in 500 ms without counting them, and the
    // kernel's TCPKeepAlive (which counts attempts) runs ahead of the probes
    // that left. What is still dropped is reported.
    let _backlog = load::Sysctl::raise("net/core/netdev_max_backlog", 2 * n)?;
    let pair = Pair::new()?;
    // A process in the client namespace for as long as kalive runs, as on a
    // host: kalive reads the namespace's count of probes at exit through it.
    let keeper = pair.client_process()?;
    let mut args: Vec<String> = load::SERVER_PORTS
        .iter()
        .flat_map(|p| ["--port".to_owned(), p.to_string()])
        .collect();
    // At 50k sockets and more, probing every second, a burst of records
    // outgrows the default 1 MiB ring while userspace is behind: room for
    // about two seconds of them, as a user at that scale would give; and
    // maps that follow twice as many sockets.
    let big = n >= 50_000;
    if big {
        args.extend(["--ring-size".to_owned(), BIG_RING.to_string()]);
        args.extend(["--max-sockets".to_owned(), (2 * n).to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let before = procs::programs()?;
    let mut running = Running::start(
        &Tracer::Kalive(backend.to_owned()),
        kalive,
        &args,
        &[],
        true,
    )?
    .expect("kalive");
    let stdout = running.stdout.take().expect("piped");
    let probes = Arc::new(AtomicU64::new(0));
    let reader = {
        let probes = Arc::clone(&probes);
        thread::spawn(move || tally(BufReader::new(stdout), &probes))
    };
    let kernel_before = pair.client.counter("TcpExtTCPKeepAlive")?;
    let cpu_before = running.cpu()?;
    // Opened idle for an hour, so that none probes while the others open
    // (at 100k that takes minutes); then all at once after a second, answered
    // for a few seconds, and unanswered for `secs`. Probes far longer than the
    // run: no connection times out.
    let mut conns = Connections::open(&pair, n, 3600, 1, 120)?;
    conns.set_idle(1)?;
    thread::sleep(ANSWERED);
    pair.mute_server()?;
    thread::sleep(secs);
    conns.close()?;
    let kernel_probes = pair.client.counter("TcpExtTCPKeepAlive")? - kernel_before;
    let veth_drops = pair.client_tx_dropped()?;
    // Until kalive has written every probe (or stops making progress).
    let mut last = (probes.load(Ordering::Relaxed), Instant::now());
    while probes.load(Ordering::Relaxed) < kernel_probes
        && last.1.elapsed() < Duration::from_secs(3)
    {
        thread::sleep(Duration::from_millis(50));
        let now = probes.load(Ordering::Relaxed);
        if now != last.0 {
            last = (now, Instant::now());
        }
    }
    let cpu = running.cpu()?.saturating_sub(cpu_before);
    let recursion_misses = procs::programs()?
        .into_iter()
        .filter(|(id, _)| !before.contains_key(id))
        .map(|(_, p)| (p.name, p.recursion_misses))
        .filter(|&(_, n)| n > 0)
        .collect();
    let peak_rss = running.peak_rss()?;
    let stderr = std::mem::replace(&mut running.stderr, std::sync::mpsc::channel().1);
    running.stop()?;
    drop(keeper);
    let (mut unreported, mut late) = (0, 0);
    for line in stderr.try_iter() {
        eprintln!("bench: {line}");
        // "...; N keepalive probes had no record (...)" in kalive's summary.
        if let Some((before, _)) = line.split_once(" keepalive probes had no record")
            && let Some(n) = before.rsplit(' ').next()
        {
            unreported = n.parse().unwrap_or(0);
        }
        if let Some((before, _)) = line.split_once(" keepalive probes were found late")
            && let Some(n) = before.rsplit(' ').next()
        {
            late = n.parse().unwrap_or(0);
        }
    }
    let tally = reader
        .join()
        .map_err(|_| anyhow!("the reader panicked"))??;
    let mut latency_us = tally.latency_us;
    latency_us.sort_unstable();
    Ok(Capacity {
        sockets: n,
        secs,
        kernel_probes,
        veth_drops,
        recursion_misses,
        unreported,
        late,
        delivered_probes: tally
            .events
            .get(Kind::ProbeSent.name())
            .copied()
            .unwrap_or(0),
        records: tally.events.values().sum(),
        lost: tally.lost,
        cpu,
        peak_rss,
        // kalive's default ring is 1 MiB.
        ring_mib: if big { BIG_RING >> 20 } else { 1 },
        latency_us,
    })
}

#[derive(Default)]
struct Tally {
    events: BTreeMap<&'static str, u64>,
    lost: u64,
    latency_us: Vec<u64>,
}

/// Counts kalive's records by event (each read as kalive's own record `Head`),
/// and how late each probe arrives. One thread only takes lines off the pipe
/// and notes when: kalive's records come in bursts (thousands of sockets probe
/// in the same jiffy), and a reader that parsed as it read would fall behind
/// in a burst, fill the pipe and stall kalive, which then loses records and
/// shows the reader's delay as its own (measured: 500 sockets, p50 1.3-1.9 ms
/// read by string search, 6 ms parsing every line with serde as it came).
fn tally(input: impl BufRead + Send + 'static, probes: &AtomicU64) -> Result<Tally> {
    let (tx, rx) = std::sync::mpsc::channel::<(Timestamp, String)>();
    let taker = thread::spawn(move || -> Result<()> {
        for line in input.lines() {
            let line = line.context("reading kalive's output")?;
            if tx.send((Timestamp::now(), line)).is_err() {
                break;
            }
        }
        Ok(())
    });
    let mut t = Tally::default();
    for (read, line) in rx {
        let head: Head =
            serde_json::from_str(&line).with_context(|| format!("not a record: {line}"))?;
        match head.event {
            Kind::ProbeSent => {
                probes.fetch_add(1, Ordering::Relaxed);
                // A late probe is found at the socket's next timer, by design.
                if head.late != Some(true) {
                    let delay = read.as_microsecond() - head.ts.as_microsecond();
                    t.latency_us.push(u64::try_from(delay).unwrap_or(0));
                }
            }
            Kind::EventsLost => t.lost += head.count.unwrap_or(0),
            _ => {}
        }
        *t.events.entry(head.event.name()).or_default() += 1;
    }
    taker
        .join()
        .map_err(|_| anyhow!("the line taker panicked"))??;
    Ok(t)
}

/// Exec to attached, `runs` times, with kalive's own breakdown.
fn startup(kalive: &Path, runs: usize) -> Result<Startup> {
    let mut s = Startup {
        total: Vec::new(),
        steps: Vec::new(),
    };
    for _ in 0..runs {
        let running = Running::start(
            &Tracer::Kalive("auto".to_owned()),
            kalive,
            &[],
            &[("RUST_LOG", "info")],
            false,
        )?
        .expect("kalive");
        s.total.push(running.started);
        s.steps.push(parse_steps(&running.said).unwrap_or_default());
        running.stop()?;
    }
    Ok(s)
}

/// "start-up took 182.2 ms: BTF 1.5, kallsyms 28.5, ..." as (step, ms).
fn parse_steps(stderr: &str) -> Option<Vec<(String, f64)>> {
    let line = stderr
        .lines()
        .find_map(|l| l.split_once("start-up took ").map(|(_, r)| r))?;
    let (_, steps) = line.split_once(" ms: ")?;
    steps
        .split(", ")
        .map(|step| {
            let (name, ms) = step.rsplit_once(' ')?;
            Some((name.to_owned(), ms.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_and_quantiles() {
        assert_eq!(
            Spread::of(&[3.0, 1.0, 2.0]),
            Spread {
                min: 1.0,
                median: 2.0,
                max: 3.0
            }
        );
        assert!((Spread::of(&[4.0, 1.0, 2.0, 3.0]).median - 2.5).abs() < 1e-9);
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(quantile(&v, 0.5), 50);
        assert_eq!(quantile(&v, 0.99), 99);
        assert_eq!(quantile(&v, 1.0), 100);
        assert_eq!(quantile(&[], 0.5), 0);
    }

    #[test]
    fn reads_kalive_lines() {
        let lost =
            "{\"ts\":\"2026-11-22T03:50:14.364912Z\",\"event\":\"events_lost\",\"count\":12}";
        let probe = "{\"ts\":\"2026-11-22T03:50:14.364912Z\",\"event\":\"probe_sent\",\"next_ms\":1000,\
            \"pid\":1,\"comm\":\"x\",\"owner\":\"kernel\",\"shared\":false,\"family\":\"ipv4\",\
            \"saddr\":\"10.0.0.1\",\"sport\":1,\"daddr\":\"10.0.0.2\",\"dport\":2,\"netns\":3,\
            \"cookie\":4,\"state\":\"ESTABLISHED\",\"probes\":1,\"idle_ms\":5,\"keepidle_ms\":6,\
            \"keepintvl_ms\":7,\"keepcnt\":8,\"user_timeout_ms\":0}";
        let tally = tally(
            std::io::Cursor::new(format!("{lost}\n{probe}\n")),
            &AtomicU64::new(0),
        )
        .expect("tally");
        assert_eq!(tally.lost, 12);
        assert_eq!(tally.events["probe_sent"], 1);
        assert_eq!(tally.latency_us.len(), 1);
        // Read now, sent on 2026-11-22.
        assert!(tally.latency_us[0] > 0);
        let late = probe.replace("\"next_ms\":1000,", "\"next_ms\":1000,\"late\":true,");
        let tally = super::tally(
            std::io::Cursor::new(format!("{late}\n")),
            &AtomicU64::new(0),
        )
        .expect("tally");
        assert_eq!(tally.events["probe_sent"], 1);
        assert!(
            tally.latency_us.is_empty(),
            "a late probe is late by design"
        );
        assert!(
            super::tally(
                std::io::Cursor::new("not json\n".to_owned()),
                &AtomicU64::new(0)
            )
            .is_err()
        );
    }

    #[test]
    fn reads_start_up_steps() {
        let stderr = "[x INFO kalive] start-up took 182.2 ms: BTF 1.5, aya BTF 15.3, load 7.3\n";
        assert_eq!(
            parse_steps(stderr),
            Some(vec![
                ("BTF".to_owned(), 1.5),
                ("aya BTF".to_owned(), 15.3),
                ("load".to_owned(), 7.3)
            ])
        );
        assert_eq!(parse_steps("nothing"), None);
    }
}
