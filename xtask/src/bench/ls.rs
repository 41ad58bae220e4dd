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

/// Runs `command` through `xtask bench-measure` (see [`measure_child`]):
/// (wall time, peak RSS in KiB, lines on stdout).
fn measured(command: &[&str]) -> Result<(Duration, u64, usize)> {
    // This binary, as the connection holders run it (see `load`).
    let exe = format!("/proc/{}/exe", std::process::id());
    let out = Command::new(exe)
        .arg("bench-measure")
        .args(command)
        .stderr(Stdio::null())
        .output()
        .with_context(|| format!("measuring {command:?}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let fields: Vec<u64> = text
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .with_context(|| format!("bench-measure {command:?} printed {text:?}"))?;
    let &[wall_us, rss_kib, lines] = fields.as_slice() else {
        bail!("bench-measure {command:?} printed {text:?}");
    };
    if !out.status.success() {
        bail!("{command:?} failed: {}", out.status);
    }
    Ok((
        Duration::from_micros(wall_us),
        rss_kib,
        usize::try_from(lines)?,
    ))
}

/// `xtask bench-measure COMMAND...`: runs it, counting the lines it prints,
/// and prints its wall time (µs), peak RSS (KiB, `ru_maxrss`) and the count.
/// From a process of its own: a child's `ru_maxrss` counts the memory of
/// the process it was forked from (the kernel keeps the high-water mark
/// across `exec`), which for the benchmark, after the capacity runs, is
/// hundreds of MiB.
///
/// # Errors
/// When the command cannot be run or fails.
pub fn measure_child(command: &[std::ffi::OsString]) -> Result<()> {
    let (program, args) = command.split_first().context("no command")?;
    let start = Instant::now();
    let mut child = Command::new(program)
        .args(args)
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
    let lines = counter
        .join()
        .map_err(|_| anyhow::anyhow!("counting lines"))?;
    println!("{} {} {lines}", wall.as_micros(), usage.ru_maxrss);
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("{command:?} failed (wait status {status})");
    }
    Ok(())
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
            let kalive = kalive.to_str().context("a UTF-8 path")?;
            let mut command = vec![kalive, "ls", "--format", "json"];
            if no_bpf {
                command.push("--no-bpf");
            }
            let (wall, rss, lines) = measured(&command)?;
            into.wall_ms.push(wall.as_secs_f64() * 1e3);
            into.rss_kib.push(rss);
            if lines < 2 * n {
                bail!("kalive ls listed {lines} sockets, fewer than {n} connections' two ends");
            }
            r.listed = lines;
        }
        let (mut wall, mut rss) = (Duration::ZERO, 0);
        for ns in [&pair.client, &pair.server] {
            let (w, peak, _) = measured(&["ip", "netns", "exec", ns.name(), "ss", "-tionp"])?;
            wall += w;
            rss = rss.max(peak);
        }
        r.ss.wall_ms.push(wall.as_secs_f64() * 1e3);
        r.ss.rss_kib.push(rss);
    }
    conns.close()?;
    Ok(r)
}
