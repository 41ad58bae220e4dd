//! The tracers under test as child processes, and what the kernel says about
//! them: their BPF programs' run time, their CPU time and memory.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader},
    os::fd::{FromRawFd as _, OwnedFd},
    path::Path,
    process::{Child, ChildStdout, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use serde_json::Value;

use crate::cmd;

/// What runs beside the load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tracer {
    None,
    /// kalive with its default hooks, on this backend.
    Kalive(String),
    /// kalive with `--live-acks` (per-segment and per-send/receive hooks).
    KaliveLive(String),
    /// kalive as an agent: `--format none --metrics` at [`AGENT_ADDR`], its
    /// connections pass every 30 s (the default).
    KaliveAgent(String),
    Bpftrace,
}

/// Where the agent serves its metrics.
pub const AGENT_ADDR: &str = "127.0.0.1:19464";

impl std::fmt::Display for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => f.write_str("no tracer"),
            Self::Kalive(backend) => write!(f, "kalive ({backend})"),
            Self::KaliveLive(backend) => write!(f, "kalive ({backend}, --live-acks)"),
            Self::KaliveAgent(backend) => write!(f, "kalive ({backend}, --metrics agent)"),
            Self::Bpftrace => f.write_str("bpftrace script"),
        }
    }
}

/// CPU time every core spent busy so far (`/proc/stat`: user, nice, system,
/// irq, softirq, steal), in nanoseconds: what the load and everything it made
/// the kernel do cost, BPF programs included.
pub fn busy_ns() -> Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat").context("/proc/stat")?;
    let line = stat
        .lines()
        .next()
        .ok_or_else(|| anyhow!("empty /proc/stat"))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy: u64 = [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| ticks.get(i))
        .sum();
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|v| u64::try_from(v).ok())
        .unwrap_or(100);
    Ok(busy * 1_000_000_000 / hz)
}

/// The bpftrace script, beside the benchmark's sources.
pub const PEER_SCRIPT: &str = include_str!("peer.bt");

/// A running tracer, stopped (SIGINT, then SIGKILL) on drop.
pub struct Running {
    child: Child,
    tracer: Tracer,
    /// stdout, when asked for.
    pub stdout: Option<ChildStdout>,
    /// Everything it wrote on stderr so far is sent here.
    pub stderr: mpsc::Receiver<String>,
    pub started: Duration,
    /// What it said on stderr before it was ready.
    pub said: String,
}

impl Running {
    /// Starts `tracer` (nothing for `Tracer::None`) and returns once its
    /// programs are attached. `args` go to kalive.
    pub fn start(
        tracer: &Tracer,
        kalive: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        keep_stdout: bool,
    ) -> Result<Option<Self>> {
        let mut cmd = match tracer {
            Tracer::None => return Ok(None),
            Tracer::Kalive(backend) | Tracer::KaliveLive(backend) => {
                let mut cmd = Command::new(kalive);
                cmd.args(["--format", "json", "--backend", backend])
                    .args(args);
                if matches!(tracer, Tracer::KaliveLive(_)) {
                    cmd.arg("--live-acks");
                }
                cmd
            }
            Tracer::KaliveAgent(backend) => {
                let mut cmd = Command::new(kalive);
                cmd.args([
                    "--format",
                    "none",
                    "--metrics",
                    AGENT_ADDR,
                    "--backend",
                    backend,
                ])
                .args(args);
                cmd
            }
            Tracer::Bpftrace => {
                let mut cmd = Command::new("bpftrace");
                cmd.args(["-e", PEER_SCRIPT]);
                cmd
            }
        };
        cmd.envs(env.iter().copied())
            .env_remove("KALIVE_BACKEND")
            .stdin(Stdio::null())
            .stdout(if keep_stdout || *tracer == Tracer::Bpftrace {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stderr(Stdio::piped());
        let start = Instant::now();
        let mut child = cmd.spawn().with_context(|| format!("starting {tracer}"))?;
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().expect("piped");
        let err_tx = tx.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if err_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut stdout = child.stdout.take();
        if *tracer == Tracer::Bpftrace {
            // bpftrace says "ready" from BEGIN, once attached; its output
            // afterwards is read and thrown away.
            let out = stdout.take().expect("piped");
            thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if line == "ready" && tx.send("ready".to_owned()).is_err() {
                        break;
                    }
                }
            });
        } else {
            // The stderr thread's sender is the only one: when the tracer
            // exits, waiting ends.
            drop(tx);
        }
        let mut running = Self {
            child,
            tracer: tracer.clone(),
            stdout,
            stderr: rx,
            started: Duration::ZERO,
            said: String::new(),
        };
        let ready = |line: &str| match tracer {
            Tracer::Kalive(_) | Tracer::KaliveLive(_) | Tracer::KaliveAgent(_) => {
                line.starts_with("kalive: tracing")
            }
            _ => line == "ready",
        };
        let mut said = String::new();
        loop {
            match running.stderr.recv_timeout(Duration::from_mins(1)) {
                Ok(line) if ready(&line) => break,
                Ok(line) => {
                    said.push_str(&line);
                    said.push('\n');
                }
                Err(_) => bail!("{tracer} did not start:\n{said}"),
            }
        }
        running.started = start.elapsed();
        running.said = said;
        Ok(Some(running))
    }

    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("a pid")
    }

    /// CPU time so far, summed over its threads (`schedstat`: nanoseconds,
    /// where `stat` counts clock ticks).
    pub fn cpu(&self) -> Result<Duration> {
        let mut ns = 0u64;
        for task in std::fs::read_dir(format!("/proc/{}/task", self.pid()))? {
            let stat = std::fs::read_to_string(task?.path().join("schedstat"))?;
            ns += stat
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| anyhow!("odd schedstat: {stat}"))?;
        }
        Ok(Duration::from_nanos(ns))
    }

    /// Peak resident memory so far (`VmHWM`), in bytes.
    pub fn peak_rss(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| anyhow!("no VmHWM"))?;
        Ok(kib * 1024)
    }

    /// SIGINT, and SIGKILL if it has not exited within 10 s.
    pub fn stop(mut self) -> Result<()> {
        self.signal_and_wait()
    }

    fn signal_and_wait(&mut self) -> Result<()> {
        if self.child.try_wait()?.is_some() {
            return Ok(());
        }
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.pid(), libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(20));
        }
        self.child.kill()?;
        self.child.wait()?;
        // bpftrace 0.17 sometimes does, after a run; it is not what is measured.
        if self.tracer == Tracer::Bpftrace {
            eprintln!("bench: bpftrace ignored SIGINT for 10 s; killed it");
            return Ok(());
        }
        bail!("{} ignored SIGINT for 10 s", self.tracer)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.signal_and_wait();
    }
}

/// One BPF program's counters (`kernel.bpf_stats_enabled`).
#[derive(Debug, Clone, Default)]
pub struct Prog {
    pub name: String,
    pub run_time_ns: u64,
    pub run_cnt: u64,
    /// Runs the kernel skipped because the program was already running on
    /// that CPU (a timer interrupting it in process context).
    pub recursion_misses: u64,
}

/// Every loaded BPF program, by id (bpftool).
pub fn programs() -> Result<BTreeMap<u64, Prog>> {
    let out = cmd::output(Command::new("bpftool").args(["-j", "prog", "show"]))?;
    let list: Value = serde_json::from_str(&out).context("bpftool's JSON")?;
    let mut progs = BTreeMap::new();
    for p in list
        .as_array()
        .ok_or_else(|| anyhow!("bpftool: not a list"))?
    {
        let Some(id) = p["id"].as_u64() else { continue };
        progs.insert(
            id,
            Prog {
                name: p["name"].as_str().unwrap_or("?").to_owned(),
                run_time_ns: p["run_time_ns"].as_u64().unwrap_or(0),
                run_cnt: p["run_cnt"].as_u64().unwrap_or(0),
                recursion_misses: p["recursion_misses"].as_u64().unwrap_or(0),
            },
        );
    }
    Ok(progs)
}

/// Run-time statistics for every BPF program while this lives
/// (`BPF_ENABLE_STATS`: the kernel turns them off when the descriptor closes,
/// even if we crash).
pub struct BpfStats(
    #[expect(
        dead_code,
        reason = "held, never read: closing it turns the statistics off"
    )]
    OwnedFd,
);

impl BpfStats {
    pub fn enable() -> Result<Self> {
        const BPF_ENABLE_STATS: libc::c_long = 32;
        const BPF_STATS_RUN_TIME: u32 = 0;
        let mut attr = [0u8; 128];
        attr[..4].copy_from_slice(&BPF_STATS_RUN_TIME.to_ne_bytes());
        // SAFETY: bpf(2) with a zeroed attribute buffer of the size given.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_ENABLE_STATS,
                attr.as_mut_ptr(),
                attr.len(),
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("BPF_ENABLE_STATS");
        }
        // SAFETY: the kernel just gave us this descriptor.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(i32::try_from(fd)?) }))
    }
}
