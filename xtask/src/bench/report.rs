//! `BENCHMARKS.md`: the measurements, against the targets. Notes written by
//! hand below the marker line are kept from one run to the next.

use std::{fmt::Write as _, fs, path::Path, process::Command};

use anyhow::{Context as _, Result};

use crate::cmd;

use super::{Capacity, Results, Spread, ls::LsRun, procs::Tracer, quantile, scrape::ScrapeRun};

const NOTES_MARKER: &str = "<!-- Notes below this line are kept by `cargo xtask bench`. -->";

pub fn write(path: &Path, command: &str, r: &Results) -> Result<()> {
    let notes = fs::read_to_string(path)
        .ok()
        .and_then(|old| old.split_once(NOTES_MARKER).map(|(_, n)| n.to_owned()))
        .unwrap_or_else(|| "\n\n## Notes\n\n(none yet)\n".to_owned());
    let mut md = String::new();
    header(&mut md, command, r);
    hot_path(&mut md, r);
    capacity(&mut md, &r.capacity);
    latency(&mut md, r);
    startup(&mut md, r);
    ls(&mut md, &r.ls);
    scrape(&mut md, &r.scrape);
    md.push_str(NOTES_MARKER);
    md.push_str(&notes);
    fs::write(path, md).with_context(|| format!("writing {}", path.display()))
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "**missed**" }
}

fn header(md: &mut String, command: &str, r: &Results) {
    let date = cmd::output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))
        .map(|out| out.trim().to_owned())
        .unwrap_or_default();
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map_or("?", |l| l.trim_start_matches([' ', '\t', ':']));
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib / (1024 * 1024));
    let _ = writeln!(
        md,
        "# Benchmarks\n\n\
         Written by `{command}` on {date}.\n\n\
         Machine: Linux {}, {cpu}, {cores} cores, {mem_gib} GiB. The machine is shared \
         and noisy: comparisons are ratios between runs interleaved in one invocation, \
         repeated, as min / median / max.\n",
        kernel.trim()
    );
    md.push_str("| backend | runs here |\n|---|---|\n");
    for (b, result) in &r.backends {
        let runs = match result {
            Ok(()) => "yes".to_owned(),
            Err(why) => format!("no: {}", why.replace('|', "\\|")),
        };
        let _ = writeln!(md, "| {b} | {runs} |");
    }
    let _ = writeln!(
        md,
        "\nBackends that do not run here are not measured here. Capacity, latency and \
         start-up use the `{}` backend.\n",
        r.backend
    );
}

fn ratio(s: Spread) -> String {
    format!("{:.3} / {:.3} / {:.3}", s.min, s.median, s.max)
}

fn hot_path(md: &mut String, r: &Results) {
    let h = &r.hot;
    let _ = writeln!(
        md,
        "## 1. Cost on the hot path\n\n\
         A loopback request/response loop in a network namespace of its own: {} \
         connections, each a client thread sending 64 bytes and waiting for the echo \
         (TCP_NODELAY), for {} s per run; every send arms the retransmit timer and \
         every segment passes `tcp_probe`. {} rounds, each running every \
         configuration once in a rotated order; each ratio is to the baseline of \
         its round. The bpftrace script (`xtask/src/bench/peer.bt`) does kalive's \
         job on the same tracepoints.\n",
        h.conns,
        h.secs.as_secs_f64(),
        h.tps.first().map_or(0, Vec::len)
    );
    md.push_str(
        "| configuration | transactions/s (median) | ratio to baseline (min / median / max) |\n\
         |---|---|---|\n",
    );
    let ratios: Vec<Vec<f64>> = h
        .tps
        .iter()
        .map(|tps| {
            tps.iter()
                .zip(&h.tps[0])
                .map(|(t, base)| t / base)
                .collect()
        })
        .collect();
    for ((tracer, tps), ratios) in h.tracers.iter().zip(&h.tps).zip(&ratios) {
        let _ = writeln!(
            md,
            "| {tracer} | {:.0} | {} |",
            Spread::of(tps).median,
            ratio(Spread::of(ratios))
        );
    }
    let median = |t: &Tracer| {
        h.tracers
            .iter()
            .position(|x| x == t)
            .map(|i| Spread::of(&ratios[i]).median)
    };
    let bpftrace = median(&Tracer::Bpftrace);
    md.push('\n');
    for tracer in h.tracers.iter().filter(|t| {
        matches!(
            t,
            Tracer::Kalive(_) | Tracer::KaliveLive(_) | Tracer::KaliveAgent(_)
        )
    }) {
        let k = median(tracer).unwrap_or(0.0);
        let _ = writeln!(
            md,
            "- Target: {tracer} keeps >= 99% of the baseline: median {:.1}%, {}.",
            k * 100.0,
            verdict(k >= 0.99)
        );
        if let Some(b) = bpftrace {
            let _ = writeln!(
                md,
                "- Target: {tracer} costs less than the bpftrace script: {:.1}% vs {:.1}% \
                 of the baseline, {}.",
                k * 100.0,
                b * 100.0,
                verdict(k > b)
            );
        }
    }
    program_costs(md, r);
}

/// Each program's runs and time per transaction, and the share of the CPU.
fn program_costs(md: &mut String, r: &Results) {
    md.push_str(
        "\n### Per-program cost\n\n\
         `BPF_ENABLE_STATS` (what `kernel.bpf_stats_enabled` and bpftop use) during one \
         more run of the same loop: run count and run time of each program, as the \
         kernel counts them.\n",
    );
    for c in &r.costs {
        let total_ns: u64 = c.programs.iter().map(|p| p.run_time_ns).sum();
        let share = per(total_ns, 1.0) / per(c.busy_ns, 1.0).max(1.0);
        let _ = writeln!(
            md,
            "\n{}: {:.0} transactions; BPF time per transaction **{:.0} ns**, \
             **{:.2}%** of the CPU time the machine spent busy during the loop \
             ({:.0} ns per transaction).\n",
            c.tracer,
            c.transactions,
            per(total_ns, c.transactions),
            share * 100.0,
            per(c.busy_ns, c.transactions)
        );
        if let Tracer::Kalive(_) = c.tracer {
            let per_segment = c
                .programs
                .iter()
                .filter(|p| per(p.run_cnt, c.transactions) >= 1.0)
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>();
            let _ = writeln!(
                md,
                "- Target: BPF time <= 1% of the CPU: {:.2}%, {}.\n\
                 - Target: no program runs once or more per transaction: {}.\n",
                share * 100.0,
                verdict(share <= 0.01),
                if per_segment.is_empty() {
                    "none does, met".to_owned()
                } else {
                    format!("{} do, missed", per_segment.join(", "))
                }
            );
        }
        md.push_str(
            "| program | runs | ns/run | runs/transaction | ns/transaction |\n|---|---|---|---|---|\n",
        );
        let mut programs = c.programs.clone();
        programs.sort_by_key(|p| std::cmp::Reverse(p.run_time_ns));
        for p in &programs {
            #[expect(clippy::cast_precision_loss, reason = "values far below 2^52")]
            let runs = p.run_cnt as f64;
            let _ = writeln!(
                md,
                "| {} | {} | {:.0} | {:.2} | {:.0} |",
                p.name,
                p.run_cnt,
                per(p.run_time_ns, runs),
                runs / c.transactions.max(1.0),
                per(p.run_time_ns, c.transactions)
            );
        }
    }
    md.push('\n');
}

#[expect(clippy::cast_precision_loss, reason = "values far below 2^52")]
fn per(total: u64, n: f64) -> f64 {
    if n > 0.0 { total as f64 / n } else { 0.0 }
}

#[expect(clippy::cast_precision_loss, reason = "values far below 2^52")]
fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// The capacity section, for `runs`.
pub fn capacity(md: &mut String, runs: &[Capacity]) {
    md.push_str(
        "## 2. Capacity\n\n\
         N idle connections between two network namespaces, opened with \
         keepalive after an hour, every 1 s, 120 probes; once all are open, \
         their keepalive idle time is set to 1 s, the server answers every \
         probe for 3 s, then its namespace drops everything to its port, so \
         every socket probes every second, unanswered. kalive runs \
         with `--port` on the server's ports (two: one client address has room \
         for 64k connections per port) and JSON output into a pipe the \
         benchmark reads; from 50k sockets on with `--ring-size` 32 MiB (about \
         two seconds of records at 100k sockets) and `--max-sockets` twice the \
         sockets. \
         Probes are the client namespace's `TcpExtTCPKeepAlive` \
         delta over the run (opening, probing answered and unanswered, reset); delivered are the \
         `probe_sent` records for them. The kernel counts attempts: a probe the \
         client's veth drops (its backlog full) is counted, not sent, and TCP \
         retries it in 500 ms; kalive reports such a try with `\"sent\": false`. \
         The benchmark raises `net.core.netdev_max_backlog` for the run \
         and reports the veth's drops. CPU and peak RSS (VmHWM) are kalive's \
         (RSS counts the pages of the ring buffer kalive has read, and the kernel \
         maps a ring's data twice in a row, for records that wrap: the target is \
         64 MiB plus twice the ring).\n\n\
         \"Gaps\" are the probes kalive itself reports as having no record, in its \
         summary at exit: gaps in sockets' probe numbers, probes found without their \
         numbers, or the kernel's count in the client namespace beyond kalive's records \
         (a process stays in that namespace until kalive stops, as on a host, so that \
         kalive can read it at exit). The target is every probe delivered, or missing \
         and counted as such. \"Late\" are the delivered \
         probes it found only at the socket's next timer, because none of its \
         programs ran for their own timer callback.\n\n\
         | sockets | probing for | probes (kernel) | veth drops | `probe_sent` delivered | late | gaps | all records | `events_lost` | CPU ms per 1k records | peak RSS MiB | targets |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for c in runs {
        // Every probe delivered, or missing and counted in kalive's summary.
        let complete = c.delivered_probes + c.unreported == c.kernel_probes && c.lost == 0;
        #[expect(clippy::cast_precision_loss, reason = "values far below 2^52")]
        let rss = c.peak_rss as f64 / f64::from(1 << 20);
        let cpu_us = u64::try_from(c.cpu.as_micros()).unwrap_or(u64::MAX);
        #[expect(clippy::cast_precision_loss, reason = "values far below 2^52")]
        let per_k = per(cpu_us, c.records as f64 / 1000.0) / 1000.0;
        let _ = writeln!(
            md,
            "| {} | {} s | {} | {} | {} | {} | {} | {} | {} | {:.2} | {:.1} | all delivered or counted: {}; RSS < {} MiB: {} |",
            c.sockets,
            c.secs.as_secs(),
            c.kernel_probes,
            c.veth_drops,
            c.delivered_probes,
            c.late,
            c.unreported,
            c.records,
            c.lost,
            per_k,
            rss,
            verdict(complete),
            64 + 2 * c.ring_mib,
            verdict(rss < f64::from(64 + 2 * c.ring_mib))
        );
    }
    md.push('\n');
    for c in runs {
        if c.recursion_misses.is_empty() {
            let _ = writeln!(
                md,
                "- {} sockets: no run of kalive's programs was skipped by the kernel's \
                 recursion protection (bpftool `recursion_misses`).",
                c.sockets
            );
        } else {
            let misses: Vec<String> = c
                .recursion_misses
                .iter()
                .map(|(name, n)| format!("{name} {n}"))
                .collect();
            let _ = writeln!(
                md,
                "- {} sockets: runs the kernel skipped (recursion): {}.",
                c.sockets,
                misses.join(", ")
            );
        }
    }
    md.push('\n');
}

fn latency(md: &mut String, r: &Results) {
    md.push_str(
        "## 3. Latency\n\n\
         From a probe's kernel timestamp (`ts`) to the benchmark reading its line \
         from kalive's stdout, for every `probe_sent` of the capacity runs but the \
         late ones (found at the socket's next timer: a keepintvl late by design). \
         Target: \
         p99 < 10 ms under the 10k-socket load.\n\n\
         | sockets | records | p50 ms | p99 ms | max ms | target |\n|---|---|---|---|---|---|\n",
    );
    for c in &r.capacity {
        let p99 = quantile(&c.latency_us, 0.99);
        let target = if c.sockets == 10_000 {
            verdict(p99 < 10_000)
        } else {
            "-"
        };
        let _ = writeln!(
            md,
            "| {} | {} | {:.2} | {:.2} | {:.2} | {target} |",
            c.sockets,
            c.latency_us.len(),
            ms(quantile(&c.latency_us, 0.5)),
            ms(p99),
            ms(c.latency_us.last().copied().unwrap_or(0))
        );
    }
    md.push('\n');
}

fn startup(md: &mut String, r: &Results) {
    let s = &r.startup;
    let totals: Vec<f64> = s.total.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    let total = Spread::of(&totals);
    let _ = writeln!(
        md,
        "## 4. Start-up\n\n\
         From exec to kalive saying it is tracing (every program attached), `--backend \
         auto`, {} runs: min / median / max **{:.0} / {:.0} / {:.0} ms**. Target \
         < 300 ms: {}.\n\n\
         Where the time goes, per kalive's `RUST_LOG=info` line (medians, ms); \
         \"backends passed over\" is the time spent finding that fentry and kprobe \
         cannot run, \"load\" the rest of starting the backend:\n\n\
         | step | ms |\n|---|---|",
        s.total.len(),
        total.min,
        total.median,
        total.max,
        verdict(total.median < 300.0)
    );
    let names: Vec<&str> = s
        .steps
        .first()
        .map(|steps| steps.iter().map(|(n, _)| n.as_str()).collect())
        .unwrap_or_default();
    for name in names {
        let values: Vec<f64> = s
            .steps
            .iter()
            .filter_map(|steps| steps.iter().find(|(n, _)| n == name).map(|&(_, v)| v))
            .collect();
        if !values.is_empty() {
            let _ = writeln!(md, "| {name} | {:.1} |", Spread::of(&values).median);
        }
    }
    md.push('\n');
}

/// `kalive ls` against `ss -tionp`.
pub fn ls(md: &mut String, runs: &[LsRun]) {
    md.push_str(
        "## 5. `kalive ls`\n\n\
         N idle connections between two network namespaces (keepalive an hour \
         away). `kalive ls --format json` lists every TCP socket on the host, in \
         every namespace (each connection's two ends, the server's still in the \
         listeners' queues, and the host's own); `--no-bpf` reads them through \
         the socket diagnostics and `getsockopt()` instead of the BPF iterator. \
         The peer a user would otherwise run is `ss -tionp`, in the client's \
         namespace and then in the server's (the sum; it gives neither the \
         settings nor a prediction). Wall time from exec to exit (start-up \
         included: BTF, loading the iterator), min / median / max of the rounds; \
         peak RSS (`ru_maxrss`), the largest. Targets: under 1 s and 64 MiB at \
         50k connections.\n\n\
         | connections | sockets listed | `kalive ls` ms | RSS MiB | `--no-bpf` ms | RSS MiB | `ss -tionp` ms | RSS MiB | targets |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    for r in runs {
        let (bpf, diag, ss) = (r.bpf.wall(), r.no_bpf.wall(), r.ss.wall());
        let target = if r.connections >= 50_000 {
            verdict(bpf.median < 1000.0 && r.bpf.max_rss_mib() < 64.0)
        } else {
            "-"
        };
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} / {:.0} / {:.0} | {:.1} | {:.0} / {:.0} / {:.0} | {:.1} | {:.0} / {:.0} / {:.0} | {:.1} | {target} |",
            r.connections,
            r.listed,
            bpf.min,
            bpf.median,
            bpf.max,
            r.bpf.max_rss_mib(),
            diag.min,
            diag.median,
            diag.max,
            r.no_bpf.max_rss_mib(),
            ss.min,
            ss.median,
            ss.max,
            r.ss.max_rss_mib(),
        );
    }
    md.push('\n');
}

/// The metrics agent's `/metrics` at scale.
fn scrape(md: &mut String, r: &ScrapeRun) {
    let t = r.scrape();
    #[expect(clippy::cast_precision_loss, reason = "KiB and bytes far below 2^52")]
    let (rss_mib, kib) = (r.rss_kib as f64 / 1024.0, r.bytes as f64 / 1024.0);
    let _ = writeln!(
        md,
        "## 6. The metrics agent\n\n\
         `kalive --format none --metrics ADDR --metrics-interval 5` beside {} \
         connections held by {} processes named apart, each connection probing \
         every second once idle (answered): {} workloads with counters of their \
         own, and the connections gauges of its pass. `/metrics` fetched over \
         HTTP, one request at a time, in the classic text format. The hot path \
         with the agent running is in section 1.\n\n\
         | scrape ms (min / median / max of {}) | size | samples | kalive RSS | connections pass |\n\
         |---|---|---|---|---|\n\
         | {:.1} / {:.1} / {:.1} | {kib:.0} KiB | {} | {rss_mib:.1} MiB | {:.0} ms |\n",
        r.connections,
        r.workloads,
        r.workloads,
        r.scrape_ms.len(),
        t.min,
        t.median,
        t.max,
        r.samples,
        r.pass_s * 1e3,
    );
}
