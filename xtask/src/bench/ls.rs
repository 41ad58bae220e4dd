//! `kalive ls` over many connections: wall time and peak RSS, with BPF and
//! without (`--no-bpf`), against `ss -tionp` on the same sockets.

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    Spread,
    load::{Connections, Pair},
};

/// One size: `connections` idle connections between two namespaces (their
/// client ends, and the server ends waiting in the listeners' queues).
#[derive(Debug, Clone)]
pub struct LsRun {
    pub connections: usize,
    /// Sockets `kalive ls` listed (the whole host).
    pub listed: usize,
    pub bpf: Measured,
    pub no_bpf: Measured,
    /// `ss -tionp` in the client's namespace, then in the server's.
    pub ss: Measured,
}

/// Wall time and peak RSS, per run.
#[derive(Debug, Clone, Default)]
pub struct Measured {
    pub wall_ms: Vec<f64>,
    pub rss_kib: Vec<u64>,
}

impl Measured {
    pub fn wall(&self) -> Spread {
        Spread::of(&self.wall_ms)
    }

    #[expect(clippy::cast_precision_loss, reason = "values far below 2^52")]
    pub fn max_rss_mib(&self) -> f64 {
        self.rss_kib.iter().copied().max().unwrap_or(0) as f64 / 1024.0
    }
}

/// Runs `command`, counting its stdout lines: (wall time, peak RSS in KiB,
/// lines).
fn measured(mut command: Command) -> Result<(Duration, u64, usize)> {
    let start = Instant::now();
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {command:?}"))?;
    let out = child.stdout.take().expect("piped");
    let counter = thread::spawn(move || BufReader::new(out).lines().count());
    let pid = libc::pid_t::try_from(child.id())?;
    let mut status = 0;
    // SAFETY: all-zero is a valid rusage.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: our own child; `status` and `usage` are valid for writes.
    let rc = unsafe { libc::wait4(pid, &raw mut status, 0, &raw mut usage) };
    let wall = start.elapsed();
    if rc != pid {
        bail!(
            "waiting for {command:?}: {}",
            std::io::Error::last_os_error()
        );
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("{command:?} failed (wait status {status})");
    }
    let lines = counter
        .join()
        .map_err(|_| anyhow::anyhow!("counting lines"))?;
    Ok((wall, u64::try_from(usage.ru_maxrss).unwrap_or(0), lines))
}

/// `kalive ls` and `ss` over `n` connections, `rounds` times each,
/// interleaved.
pub fn run(kalive: &Path, n: usize, rounds: usize) -> Result<LsRun> {
    let pair = Pair::new()?;
    // Keepalive an hour away: nothing probes while the snapshots are taken.
    let conns = Connections::open(&pair, n, 3600, 60, 5)?;
    let mut r = LsRun {
        connections: n,
        listed: 0,
        bpf: Measured::default(),
        no_bpf: Measured::default(),
        ss: Measured::default(),
    };
    for _ in 0..rounds {
        for (no_bpf, into) in [(false, &mut r.bpf), (true, &mut r.no_bpf)] {
            let mut command = Command::new(kalive);
            command.args(["ls", "--format", "json"]);
            if no_bpf {
                command.arg("--no-bpf");
            }
            let (wall, rss, lines) = measured(command)?;
            into.wall_ms.push(wall.as_secs_f64() * 1e3);
            into.rss_kib.push(rss);
            if lines < 2 * n {
                bail!("kalive ls listed {lines} sockets, fewer than {n} connections' two ends");
            }
            r.listed = lines;
        }
        let (mut wall, mut rss) = (Duration::ZERO, 0);
        for ns in [&pair.client, &pair.server] {
            let mut command = Command::new("ip");
            command.args(["netns", "exec", ns.name(), "ss", "-tionp"]);
            let (w, peak, _) = measured(command)?;
            wall += w;
            rss = rss.max(peak);
        }
        r.ss.wall_ms.push(wall.as_secs_f64() * 1e3);
        r.ss.rss_kib.push(rss);
    }
    conns.close()?;
    Ok(r)
}
