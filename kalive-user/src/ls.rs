//! `kalive ls`: every TCP socket of every network namespace, with its
//! owner, settings, timer and when a dead peer would be found (docs/ls.md).
//! Read by kalive's `iter/tcp` program, or without BPF through the socket
//! diagnostics ([`crate::sockdiag`]). Both read the namespace of the task
//! that asks: one read per namespace, from a thread that joined it.

use std::{
    collections::HashMap,
    fmt::Write as _,
    fs::{self, File},
    io::{BufReader, BufWriter, IsTerminal as _, Read, Write as _},
    net::IpAddr,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    thread,
};

use anyhow::{Context as _, Result, anyhow};
use aya::programs::Iter;
use kalive_common::{
    AF_INET6, FileEntry, OwnerSource, SockEntry, TcpState, dead,
    event::{Errno, Family},
};
use nix::sched::{CloneFlags, setns};
use serde::Serialize;

use crate::{
    btf,
    clock::WallClock,
    container::Attribution,
    kernel, layout,
    loader::object::{self, Filters},
    owners, sockdiag,
    timings::Timings,
};

/// How `kalive ls` writes its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One JSON object per line.
    Json,
    /// Aligned columns with a header, the worst protected first, and a summary.
    Text,
}

/// `kalive ls`: a snapshot of every TCP connection's protection against a
/// dead peer (owner, keepalive settings, timer, and when the kernel would
/// find a dead peer), then exit.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Output format [default: text on a terminal, json otherwise]
    #[arg(long, value_enum)]
    format: Option<Format>,

    /// Only sockets held by this process (repeatable)
    #[arg(short, long = "pid", value_name = "PID", value_parser = crate::parse_pid)]
    pids: Vec<u32>,

    /// Only sockets with this local or remote port (repeatable)
    #[arg(short = 'P', long = "port", value_name = "PORT", value_parser = crate::parse_port)]
    ports: Vec<u16>,

    /// Also listening sockets (accepted connections inherit their keepalive)
    #[arg(long)]
    listening: bool,

    /// Read sockets without loading BPF: the kernel's socket diagnostics (as
    /// ss reads them) and socket options read through a holder's descriptor.
    /// What kalive does when it may not load BPF. It cannot tell a setting
    /// set on the socket to the sysctl's value from the sysctl's, and it
    /// estimates when a retransmission episode began
    #[arg(long)]
    no_bpf: bool,

    /// Mark connections a middlebox that forgets flows idle this long would
    /// forget before keepalive sends anything (`over_budget`)
    #[arg(long, value_name = "SECONDS", allow_negative_numbers = true,
          value_parser = parse_budget)]
    idle_budget: Option<u64>,
}

pub fn parse_budget(value: &str) -> Result<u64, String> {
    match value.parse::<u64>() {
        Ok(0) => Err("an idle budget of 0 s forgets every flow at once".to_owned()),
        Ok(s) if s <= 365 * 86_400 => Ok(s),
        _ => Err(format!(
            "{value:?} is not a number of seconds (1 to a year)"
        )),
    }
}

pub const EXAMPLES: &str = "\
EXAMPLES:
    sudo kalive ls                      # every connection, the worst protected first
    sudo kalive ls --idle-budget 350    # which an AWS NLB (350 s idle) would forget first
    sudo kalive ls -P 5432              # connections to or from port 5432
    sudo kalive ls --format json | jq 'select(.keepalive == false)'
    kalive ls                           # without root: its own user's, and says what it missed

Fields and the kernel's rules behind DEAD AFTER: docs/ls.md";

/// How the sockets are read.
enum Reader {
    /// Kalive's `iter/tcp` program (and the object it belongs to), and
    /// whether its `iter/task_file` program is loaded to find the holders
    /// (else they come from `/proc`).
    Bpf(aya::Ebpf, bool),
    /// The kernel's socket diagnostics and `getsockopt()` ([`sockdiag`]).
    Diag,
}

/// Loads the TCP iterator (and the descriptors' when it can), when this
/// process may.
fn bpf_reader(hz: u32) -> Result<Reader> {
    // SAFETY: no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if let Some(why) = crate::privs::missing_to_start(&crate::privs::effective()?, root) {
        anyhow::bail!(
            "{}",
            why.replace("BPF tracing programs", "the BPF socket iterator")
                .replace("sudo kalive", "sudo kalive ls")
        );
    }
    let mut t = Timings::start();
    let kernel_btf = btf::KernelBtf::open(Path::new(btf::VMLINUX))?;
    let tracefs = kernel::tracefs()?;
    // No kallsyms: the iterators read no timer's function.
    let layout = layout::discover(&kernel_btf, &tracefs, hz)?;
    t.step("layout");
    let btf = aya::Btf::from_sys_fs().context("reading the kernel's BTF")?;
    t.step("btf");
    let mut ebpf = object::load(
        &btf,
        &layout,
        object::settings(&Filters::default(), false, false, 0),
        1 << 12,
        1024,
    )?;
    t.step("object");
    let iter: &mut Iter = object::program(&mut ebpf, "tcp_sockets")?.try_into()?;
    iter.load("tcp", &btf).context("loading the TCP iterator")?;
    t.step("iter/tcp");
    let files: &mut Iter = object::program(&mut ebpf, "socket_files")?.try_into()?;
    let files = match files.load("task_file", &btf) {
        Ok(()) => true,
        Err(err) => {
            log::info!("holders from /proc: loading the descriptors' iterator: {err:#}");
            false
        }
    };
    t.step("iter/task_file");
    log::info!("iterators loaded in {t}");
    Ok(Reader::Bpf(ebpf, files))
}

/// What a pass could not see, said on stderr at the end.
#[derive(Debug, Default)]
pub struct Unseen {
    namespaces: Vec<String>,
    settings: usize,
}

/// Runs `kalive ls`.
///
/// # Errors
/// When the kernel's sockets cannot be read.
pub fn run(args: &Args) -> Result<()> {
    let mut lister = Lister::new(args.no_bpf)?;
    let query = Query {
        pids: args.pids.clone(),
        ports: args.ports.clone(),
        listening: args.listening,
        idle_budget: args.idle_budget,
    };
    let mut out = Output::new(args.format);
    let unseen = match lister.pass(&query, |c| out.push(c)) {
        Ok(unseen) => unseen,
        // A closed stdout (`kalive ls | head`) ends the listing, quietly.
        Err(err) if broken_pipe(&err) => return Ok(()),
        Err(err) => return Err(err),
    };
    unseen.say();
    match out.finish(args.idle_budget) {
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        done => Ok(done?),
    }
}

fn broken_pipe(err: &anyhow::Error) -> bool {
    err.downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}

/// Which connections a pass lists, as `kalive ls`'s options say.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub pids: Vec<u32>,
    pub ports: Vec<u16>,
    pub listening: bool,
    /// `--idle-budget`, seconds.
    pub idle_budget: Option<u64>,
}

/// Lists every namespace's TCP sockets, pass after pass (`kalive ls` makes
/// one; the metrics agent one per interval).
pub struct Lister {
    reader: Reader,
    hz: u32,
}

impl Lister {
    /// With kalive's TCP iterator, unless `no_bpf` or it cannot be loaded
    /// (said on stderr): then with the socket diagnostics.
    ///
    /// # Errors
    /// When the kernel's HZ cannot be found.
    pub fn new(no_bpf: bool) -> Result<Self> {
        let hz = kernel::hz().context("finding the kernel's HZ")?;
        let reader = if no_bpf {
            Reader::Diag
        } else {
            match bpf_reader(hz) {
                Ok(reader) => reader,
                Err(err) => {
                    eprintln!(
                        "kalive: {err:#}; listing with the kernel's socket diagnostics and \
                         getsockopt() instead (see `kalive ls --help`)"
                    );
                    Reader::Diag
                }
            }
        };
        Ok(Self { reader, hz })
    }

    /// One pass: every connection `query` selects, to `sink` as it is read.
    /// Returns what the pass could not see.
    ///
    /// # Errors
    /// When the kernel's sockets cannot be read, or `sink` fails (its error
    /// is returned as is: an [`std::io::Error`]).
    pub fn pass(
        &mut self,
        query: &Query,
        mut sink: impl FnMut(Connection) -> std::io::Result<()>,
    ) -> Result<Unseen> {
        let hz = self.hz;
        let own_ns = fs::metadata("/proc/self/ns/net").map(|m| m.ino()).ok();
        let (mut tcp, files) = match &mut self.reader {
            Reader::Bpf(ebpf, files) => {
                let (mut tcp, mut descriptors) = (None, None);
                for (name, program) in ebpf.programs_mut() {
                    match name {
                        "tcp_sockets" => tcp = Some(<&mut Iter>::try_from(program)?),
                        "socket_files" if *files => {
                            descriptors = Some(<&mut Iter>::try_from(program)?);
                        }
                        _ => {}
                    }
                }
                (
                    Some(tcp.context("program tcp_sockets missing from the BPF object")?),
                    descriptors,
                )
            }
            Reader::Diag => (None, None),
        };
        let mut holders = owners::Sockets::scan_with(HolderScan(files));
        let clock = WallClock::now();
        let mut unseen = Unseen::default();
        let mut containers: HashMap<u32, Option<Attribution>> = HashMap::new();
        let budget_ms = query.idle_budget.map(|s| s.saturating_mul(1000));
        for ns in namespaces() {
            let own = Some(ns.inode) == own_ns;
            let (listed, sysctls) = match read_namespace(tcp.as_deref_mut(), &ns, own, hz) {
                Ok(listed) => listed,
                // Namespaces come and go (`ip netns add` makes the file before
                // it mounts the namespace on it, `del` unmounts it first).
                Err(err) if !still(&ns.path, ns.inode) => {
                    log::info!("namespace {} went away: {err:#}", ns.inode);
                    continue;
                }
                Err(err) if err.downcast_ref::<Unjoinable>().is_some() => {
                    unseen.namespaces.push(format!("{} ({err:#})", ns.inode));
                    continue;
                }
                Err(err) => return Err(err),
            };
            for mut e in listed {
                let state = TcpState::from_kernel(e.state);
                let (sport, dport) = (u16::from_be(e.sport), u16::from_be(e.dport));
                let held = holders
                    .holders(e.ino)
                    .map(<[_]>::to_vec)
                    .unwrap_or_default();
                if (state == TcpState::Listen && !query.listening)
                    || (!query.ports.is_empty()
                        && !query.ports.iter().any(|&p| p == sport || p == dport))
                    || (!query.pids.is_empty() && !held.iter().any(|h| query.pids.contains(&h.pid)))
                {
                    continue;
                }
                let known = match &sysctls {
                    Some(sysctls) => settings_via_holders(&mut e, &held, sysctls, hz),
                    None => Known::ALL,
                };
                if !known.settings {
                    unseen.settings += 1;
                }
                let mut c = record(&e, state, &held, hz, budget_ms, &clock, known);
                if let Some(pid) = c.pid
                    && let Some(place) = containers
                        .entry(pid)
                        .or_insert_with(|| Attribution::of_pid(pid))
                {
                    c.place.clone_from(place);
                }
                sink(c)?;
            }
        }
        Ok(unseen)
    }
}

/// The TCP sockets of `ns` as `tcp` (the TCP iterator) reads them, or
/// without it the socket diagnostics (`own`: this process's namespace), and
/// then the namespace's sysctls: the settings are read later, for the
/// sockets that pass the filters only (each read duplicates a holder's
/// descriptor).
fn read_namespace(
    tcp: Option<&mut Iter>,
    ns: &Namespace,
    own: bool,
    hz: u32,
) -> Result<(Vec<SockEntry>, Option<sockdiag::Sysctls>)> {
    if let Some(iter) = tcp {
        return Ok((sockets_in(iter, ns)?, None));
    }
    let netns = u32::try_from(ns.inode).unwrap_or(0);
    let (found, sysctls) = in_namespace(ns, own, || {
        let sysctls = sockdiag::Sysctls::read()?;
        let boot_ns = WallClock::boot_now_ns();
        let mut found = Vec::new();
        sockdiag::dump(|r| {
            found.push(sockdiag::entry(r, netns, &sysctls, hz, boot_ns));
        })?;
        Ok((found, sysctls))
    })?;
    Ok((found, Some(sysctls)))
}

/// Where a pass finds the holders of sockets: the `iter/task_file` program
/// when it is loaded (one record a socket descriptor), else `/proc` (one
/// `readlink()` a descriptor: a third of a listing's time at 50k
/// connections), as from the first scan that finds the iterator's process
/// ids are not this process's.
struct HolderScan<'a>(Option<&'a mut Iter>);

impl owners::Scan for HolderScan<'_> {
    fn scan(&mut self) -> owners::Held {
        if let Some(iter) = self.0.as_deref_mut() {
            match socket_files(iter) {
                Ok(Some(held)) => return held,
                Ok(None) => {
                    log::info!(
                        "holders from /proc: kalive is in a PID namespace of its own, and the \
                         descriptors' iterator numbers processes as the host does"
                    );
                    self.0 = None;
                }
                Err(err) => log::warn!("{err:#}; reading /proc instead"),
            }
        }
        owners::Procfs.scan()
    }
}

/// Every socket descriptor of every process, as `iter` (loaded for
/// `task_file`) reads them, by socket inode; `None` when its process ids are
/// not this process's (it runs in a PID namespace of its own).
///
/// # Errors
/// When the iterator cannot be read.
fn socket_files(iter: &mut Iter) -> Result<Option<owners::Held>> {
    let link = iter
        .attach()
        .context("attaching the descriptors' iterator")?;
    let link = iter.take_link(link)?;
    let file = link
        .into_file()
        .context("creating the descriptors' iterator")?;
    let me = std::process::id();
    let mut held = owners::Held::new();
    let mut comms: HashMap<u32, Vec<u8>> = HashMap::new();
    let mut foreign = false;
    each(BufReader::with_capacity(1 << 16, file), |e: FileEntry| {
        foreign |= e.reader != me;
        let comm = comms
            .entry(e.pid)
            .or_insert_with(|| owners::comm_of(Path::new(&format!("/proc/{}", e.pid))));
        held.entry(e.ino).or_default().push(owners::Holder {
            pid: e.pid,
            fd: i32::try_from(e.fd).unwrap_or(i32::MAX),
            comm: comm.clone(),
        });
    })
    .context("reading the descriptors' iterator")?;
    Ok((!foreign).then_some(held))
}

/// Without BPF: `e`'s settings through one of its holders' descriptors, if
/// one can be duplicated. Returns what is known.
fn settings_via_holders(
    e: &mut SockEntry,
    held: &[owners::Holder],
    sysctls: &sockdiag::Sysctls,
    hz: u32,
) -> Known {
    let settings = held.iter().find_map(|h| {
        let fd = owners::socket_via_fd(h.pid, h.fd, e.ino).ok()?;
        sockdiag::Settings::of(&fd).ok()
    });
    if let Some(settings) = &settings {
        sockdiag::apply(e, settings, sysctls, hz);
    }
    Known {
        settings: settings.is_some(),
        exact: false,
    }
}

impl Unseen {
    /// Says on stderr what the pass could not see.
    pub fn say(&self) {
        if !self.namespaces.is_empty() {
            eprintln!(
                "kalive: {} network namespace(s) not listed (joining one needs \
                 CAP_SYS_ADMIN): {}",
                self.namespaces.len(),
                self.namespaces.join(", ")
            );
        }
        if self.settings > 0 {
            eprintln!(
                "kalive: the keepalive settings of {} socket(s) are not known (null): no \
                 descriptor of theirs could be duplicated (pidfd_getfd needs CAP_SYS_PTRACE, \
                 or the same user)",
                self.settings
            );
        }
    }
}

/// Where the records go. JSON is written as each socket is read (a host's
/// worth of records is never held); text is sorted first, the worst
/// protected first (no prediction, then the slowest), and summed up.
enum Output {
    Json(BufWriter<std::io::Stdout>),
    Text(Vec<Connection>),
}

impl Output {
    fn new(format: Option<Format>) -> Self {
        let stdout = std::io::stdout();
        let terminal = stdout.is_terminal();
        match format.unwrap_or(if terminal { Format::Text } else { Format::Json }) {
            Format::Json => Self::Json(BufWriter::with_capacity(1 << 16, stdout)),
            Format::Text => Self::Text(Vec::new()),
        }
    }

    fn push(&mut self, c: Connection) -> std::io::Result<()> {
        match self {
            Self::Json(out) => {
                serde_json::to_writer(&mut *out, &c)?;
                out.write_all(b"\n")
            }
            Self::Text(all) => {
                all.push(c);
                Ok(())
            }
        }
    }

    fn finish(self, budget: Option<u64>) -> std::io::Result<()> {
        let mut out = match self {
            Self::Json(mut out) => return out.flush(),
            Self::Text(mut all) => {
                all.sort_by_key(|c| {
                    (
                        c.dead_after_ms.is_some(),
                        std::cmp::Reverse(c.dead_after_ms),
                    )
                });
                let mut out = std::io::stdout().lock();
                out.write_all(table(&all).as_bytes())?;
                writeln!(out, "{}", summary(&all, budget))?;
                out
            }
        };
        out.flush()
    }
}

/// Aligned columns, one connection a line, with a header.
fn table(all: &[Connection]) -> String {
    let mut rows = vec![[
        "STATE".to_owned(),
        "LOCAL".to_owned(),
        "PEER".to_owned(),
        "PROCESS".to_owned(),
        "KEEPALIVE".to_owned(),
        "IDLE".to_owned(),
        "DEAD AFTER".to_owned(),
        "BY".to_owned(),
    ]];
    let endpoint = |a: IpAddr, p: u16| match a {
        IpAddr::V4(a) => format!("{a}:{p}"),
        IpAddr::V6(a) => format!("[{a}]:{p}"),
    };
    for c in all {
        rows.push([
            c.state.name().to_owned(),
            endpoint(c.saddr, c.sport),
            endpoint(c.daddr, c.dport),
            c.pid.map_or_else(
                || "-".to_owned(),
                |pid| format!("{pid}/{}", c.comm.as_deref().unwrap_or("")),
            ),
            match (c.keepalive, c.keepidle_ms, c.keepintvl_ms, c.keepcnt) {
                (Some(true), Some(idle), Some(intvl), Some(cnt)) => {
                    format!("{}/{}/{cnt}", duration(idle), duration(intvl))
                }
                (Some(false), ..) => "off".to_owned(),
                _ => "?".to_owned(),
            },
            c.idle_ms.map_or_else(|| "-".to_owned(), duration),
            match c.dead_after_ms {
                Some(ms) => duration(ms),
                None if c.unknown() => "?".to_owned(),
                None => "never".to_owned(),
            },
            c.detected_by.unwrap_or("-").to_owned(),
        ]);
    }
    let widths: Vec<usize> = (0..8)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut text = String::new();
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, &w)| format!("{cell:<w$}"))
            .collect();
        text.push_str(line.join("  ").trim_end());
        text.push('\n');
    }
    text
}

/// The line after the table: how many connections, how many without
/// keepalive, how many would take over an hour to find a dead peer (or never
/// would), and how many are over the budget.
fn summary(all: &[Connection], budget: Option<u64>) -> String {
    let off = all.iter().filter(|c| c.keepalive == Some(false)).count();
    let slow = all
        .iter()
        .filter(|c| !c.unknown() && c.dead_after_ms.is_none_or(|ms| ms > 3_600_000))
        .count();
    let mut line = format!(
        "{} connections: {off} without keepalive, {slow} would take over an hour to find \
         a dead peer (or never would)",
        all.len()
    );
    let unknown = all.iter().filter(|c| c.unknown()).count();
    if unknown > 0 {
        let _ = write!(line, ", {unknown} not known");
    }
    if let Some(budget) = budget {
        let over = all.iter().filter(|c| c.over_budget == Some(true)).count();
        let _ = write!(line, ", {over} over the {budget} s idle budget");
    }
    line
}

/// Milliseconds, shortly: `350ms`, `75s`, `10m`, `2h11m15s`.
fn duration(ms: u64) -> String {
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let s = ms / 1000;
    let (h, m, s) = (s / 3600, s / 60 % 60, s % 60);
    let mut out = String::new();
    if h > 0 {
        let _ = write!(out, "{h}h");
    }
    if m > 0 {
        let _ = write!(out, "{m}m");
    }
    if s > 0 || out.is_empty() {
        let _ = write!(out, "{s}s");
    }
    out
}

/// Where an effective keepalive setting comes from: the socket's own option,
/// or its namespace's sysctl (which a sysctl change reaches).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Socket,
    Sysctl,
}

/// Where each of the three keepalive settings comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Sources {
    pub keepidle: Source,
    pub keepintvl: Source,
    pub keepcnt: Source,
}

/// A process holding the socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Holding {
    pub pid: u32,
    pub fd: i32,
    pub comm: String,
}

/// One connection in `kalive ls`'s snapshot.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Connection {
    /// When the kernel's socket was read: the time the times below count
    /// from (`dead_after_ms` after it, the connection would be closed).
    #[serde(serialize_with = "kalive_common::event::micros::serialize")]
    pub ts: jiff::Timestamp,
    pub family: Family,
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
    pub netns: u32,
    pub cookie: u64,
    pub state: TcpState,
    /// The first holder (lowest pid); `null` when no process holds it.
    pub pid: Option<u32>,
    pub comm: Option<String>,
    /// How the owner was learned, as in the stream: `"procfs"` (every
    /// holder, from `/proc/PID/fd`), or `"unknown"` when no process holds it.
    pub owner: OwnerSource,
    /// More than one process holds it (all in `holders`).
    pub shared: bool,
    /// The first holder's cgroup, container and pod, as in the stream (set
    /// by the pass, which reads each process's once).
    #[serde(flatten)]
    pub place: Attribution,
    pub holders: Vec<Holding>,
    /// Closed by its process with data or a FIN unacknowledged: the kernel
    /// still owns it (`SOCK_DEAD`), and no process will see its end.
    pub orphan: bool,
    /// What this record cannot say: `"pid"`, `"comm"` (no process holds
    /// the socket), `"cookie"` (the kernel gave none); without BPF, the settings when no holder's descriptor
    /// could be read (and so `dead_after_ms`), and `"from"` when a setting
    /// equals its sysctl (set on the socket or not, `getsockopt()` cannot
    /// tell). A field named here is `null` or a best guess, never a fact.
    pub missing: Vec<&'static str>,
    /// The effective settings: `null` when not known (see `missing`).
    pub keepalive: Option<bool>,
    pub keepidle_ms: Option<u64>,
    pub keepintvl_ms: Option<u64>,
    pub keepcnt: Option<u8>,
    pub user_timeout_ms: Option<u32>,
    pub from: Option<Sources>,
    /// The pending TCP timer: `"retransmit"`, `"zero_window"` (the persist
    /// timer), `"loss_probe"`, `"reorder"`, `"keepalive"`, or `"none"`.
    pub timer: &'static str,
    /// When it fires.
    pub timer_ms: Option<u64>,
    /// Unanswered probes (keepalive, or window probes); for the
    /// retransmission timer, retransmissions.
    pub probes: u8,
    /// Segments in flight: while there are any, keepalive does not probe.
    pub unacked: u32,
    /// An error an ICMP message reported and the kernel kept (the socket's
    /// soft error): what a timeout will return instead of `ETIMEDOUT`.
    /// `null` when none, and without BPF (not known: `missing`).
    pub soft_error: Option<Errno>,
    /// The kernel's keepalive idle: since the later of the last segment and
    /// the last ACK received.
    pub idle_ms: Option<u64>,
    /// If the peer went silent now, how long until the kernel closes the
    /// connection (keepalive only so far; `null` otherwise).
    pub dead_after_ms: Option<u64>,
    pub detected_by: Option<&'static str>,
    /// With `--idle-budget S`: a middlebox that forgets flows idle for S
    /// seconds would forget this one before keepalive sends anything.
    pub over_budget: Option<bool>,
}

impl Connection {
    /// Whether the prediction is not known (not "never").
    fn unknown(&self) -> bool {
        self.missing.contains(&"dead_after_ms")
    }
}

/// Jiffies from `now` to `expires`; 0 for a timer already due (timers fire
/// late, and one read as it fires is overdue by a few jiffies).
fn until(expires: u32, now: u32) -> u32 {
    u32::try_from(expires.wrapping_sub(now).cast_signed()).unwrap_or(0)
}

/// The pending TCP timer's name and when it fires (ms), given when the
/// keepalive timer fires if pending. The write timer, when armed, fires
/// before the keepalive timer can matter (keepalive does not probe while
/// segments are in flight).
fn pending_timer(
    e: &SockEntry,
    state: TcpState,
    keepalive_ms: Option<u64>,
    hz: u32,
) -> (&'static str, Option<u64>) {
    let write = match e.write_timer {
        1 => Some("retransmit"),
        3 => Some("zero_window"),
        5 => Some("loss_probe"),
        6 => Some("reorder"),
        _ => None,
    };
    match (write, keepalive_ms) {
        (Some(name), _) => (
            name,
            Some(u64::from(until(e.write_expires, e.now)) * 1000 / u64::from(hz.max(1))),
        ),
        (None, Some(at)) if state.connected() => ("keepalive", Some(at)),
        _ => ("none", None),
    }
}

/// What a socket's entry says for certain.
#[derive(Debug, Clone, Copy)]
pub struct Known {
    /// The keepalive settings (without BPF: a holder's descriptor gave them).
    pub settings: bool,
    /// Read from the kernel's socket as it is (BPF), not through the socket
    /// diagnostics: where each setting comes from, when a retransmission
    /// episode began, the timers to the jiffy.
    pub exact: bool,
}

impl Known {
    pub const ALL: Self = Self {
        settings: true,
        exact: true,
    };
}

/// One socket's record; `budget_ms` is `--idle-budget`.
fn record(
    e: &SockEntry,
    state: TcpState,
    held: &[owners::Holder],
    hz: u32,
    budget_ms: Option<u64>,
    clock: &WallClock,
    known: Known,
) -> Connection {
    let ms = |jiffies: u32| u64::from(jiffies) * 1000 / u64::from(hz.max(1));
    let ipv6 = e.family == AF_INET6;
    let addr = |a: &[u8; 16]| -> IpAddr {
        if ipv6 {
            IpAddr::from(*a)
        } else {
            IpAddr::from([a[0], a[1], a[2], a[3]])
        }
    };
    let from = |raw: u32| {
        if raw != 0 {
            Source::Socket
        } else {
            Source::Sysctl
        }
    };
    let pick = |raw: u32, net: u32| if raw != 0 { raw } else { net };
    let keepidle_ms = ms(pick(e.keepidle, e.net_keepidle));
    let keepintvl_ms = ms(pick(e.keepintvl, e.net_keepintvl));
    let keepcnt = if e.keepcnt != 0 {
        e.keepcnt
    } else {
        e.net_keepcnt
    };
    let heard = if e.lrcvtime.wrapping_sub(e.rcv_tstamp).cast_signed() > 0 {
        e.lrcvtime
    } else {
        e.rcv_tstamp
    };
    let idle = state.connected().then(|| ms(e.now.wrapping_sub(heard)));
    let timer_ms = (e.timer_pending != 0).then(|| ms(until(e.timer_expires, e.now)));
    let keepalive = e.keepalive != 0;
    let settings = known.settings;
    let timer = pending_timer(e, state, timer_ms, hz);
    let (dead_after_ms, detected_by) = if known.settings {
        prediction(
            e,
            state,
            idle,
            timer_ms,
            dead::Keepalive {
                keepidle_ms,
                keepintvl_ms,
                keepcnt: u32::from(keepcnt),
                user_timeout_ms: u64::from(e.user_timeout_ms),
                idle_ms: idle.unwrap_or(0),
                timer_ms: timer_ms.unwrap_or(0),
                probes: u32::from(e.probes),
            },
            hz,
        )
        .unzip()
    } else {
        (None, None)
    };
    let holders = holdings(held);
    Connection {
        ts: clock.timestamp(e.boot_ns),
        family: if ipv6 { Family::Ipv6 } else { Family::Ipv4 },
        saddr: addr(&e.saddr),
        sport: u16::from_be(e.sport),
        daddr: addr(&e.daddr),
        dport: u16::from_be(e.dport),
        netns: e.netns,
        cookie: e.cookie,
        state,
        pid: holders.first().map(|h| h.pid),
        comm: holders.first().map(|h| h.comm.clone()),
        owner: [OwnerSource::Procfs, OwnerSource::Unknown][usize::from(holders.is_empty())],
        shared: holders
            .iter()
            .any(|h| Some(h.pid) != holders.first().map(|f| f.pid)),
        place: Attribution::default(),
        missing: missing(&holders, e, known, budget_ms.is_some()),
        holders,
        orphan: e.orphan != 0,
        keepalive: settings.then_some(keepalive),
        keepidle_ms: settings.then_some(keepidle_ms),
        keepintvl_ms: settings.then_some(keepintvl_ms),
        keepcnt: settings.then_some(keepcnt),
        user_timeout_ms: settings.then_some(e.user_timeout_ms),
        from: settings.then(|| Sources {
            keepidle: from(e.keepidle),
            keepintvl: from(e.keepintvl),
            keepcnt: from(u32::from(e.keepcnt)),
        }),
        timer: timer.0,
        timer_ms: timer.1,
        probes: probes(e, timer.0),
        unacked: e.packets_out,
        soft_error: (e.soft_error != 0).then_some(Errno(u32::from(e.soft_error))),
        idle_ms: idle,
        dead_after_ms,
        detected_by,
        // The first probe leaves keepidle into the silence.
        over_budget: budget_ms
            .filter(|_| settings)
            .map(|budget| !keepalive || keepidle_ms > budget),
    }
}

/// Unanswered probes; for the retransmission timer, its retransmissions (as
/// ss counts them).
fn probes(e: &SockEntry, timer: &str) -> u8 {
    if matches!(timer, "retransmit" | "loss_probe" | "reorder") {
        e.retransmits
    } else {
        e.probes
    }
}

/// The processes holding a socket, by pid and descriptor.
fn holdings(held: &[owners::Holder]) -> Vec<Holding> {
    let mut holders: Vec<Holding> = held
        .iter()
        .map(|h| Holding {
            pid: h.pid,
            fd: h.fd,
            comm: String::from_utf8_lossy(&h.comm).into_owned(),
        })
        .collect();
    holders.sort_by_key(|h| (h.pid, h.fd));
    holders
}

/// The fields of a record that are not facts (see [`Connection::missing`]).
fn missing(holders: &[Holding], e: &SockEntry, known: Known, budget: bool) -> Vec<&'static str> {
    let mut missing = Vec::new();
    if holders.is_empty() {
        missing.extend(["pid", "comm"]);
    }
    if e.cookie == 0 {
        missing.push("cookie");
    }
    if !known.settings {
        missing.extend([
            "keepalive",
            "keepidle_ms",
            "keepintvl_ms",
            "keepcnt",
            "user_timeout_ms",
            "from",
            "dead_after_ms",
            "detected_by",
        ]);
        if budget {
            missing.push("over_budget");
        }
    } else if !known.exact && (e.keepidle == 0 || e.keepintvl == 0 || e.keepcnt == 0) {
        missing.push("from");
    }
    if !known.exact {
        missing.push("soft_error");
    }
    missing
}

/// If the peer went silent now: how long until the kernel closes the
/// connection, and which mechanism would (`None`: never). The write timer
/// decides while it runs; keepalive, with its settings in `keepalive`,
/// while nothing is in flight (it does not probe while segments are).
fn prediction(
    e: &SockEntry,
    state: TcpState,
    idle: Option<u64>,
    keepalive_timer_ms: Option<u64>,
    keepalive: dead::Keepalive,
    hz: u32,
) -> Option<(u64, &'static str)> {
    if let Some(w) = write_timer(e, state, idle, hz) {
        let (after, verdict) = dead::write_timer(&w);
        return Some((after, detector(verdict)));
    }
    let on = e.keepalive != 0 && e.packets_out == 0 && idle.is_some();
    (on && keepalive_timer_ms.is_some()).then(|| {
        let (after, verdict) = dead::keepalive(&keepalive);
        (after, detector(verdict))
    })
}

/// `detected_by`: the mechanism that would find a dead peer, and the limit.
fn detector(verdict: dead::Verdict) -> &'static str {
    use dead::Verdict as V;
    match verdict {
        V::ProbesExhausted => "keepalive",
        V::UserTimeout => "keepalive_user_timeout",
        V::RetriesExhausted => "retransmit",
        V::RetransmitUserTimeout => "retransmit_user_timeout",
        V::OrphanRetriesExhausted => "orphan_retransmit",
        V::ShrunkWindow => "zero_window_retransmit",
        V::SynRetriesExhausted => "syn",
        V::SynUserTimeout => "syn_user_timeout",
        V::WindowProbesExhausted => "zero_window",
        V::WindowUserTimeout => "zero_window_user_timeout",
    }
}

/// The write timer's state, when it decides: data in flight (retransmission,
/// or a window shrunk to zero), a SYN out, or a zero window (the persist
/// timer). `idle` is since the peer was last heard from.
fn write_timer(
    e: &SockEntry,
    state: TcpState,
    idle: Option<u64>,
    hz: u32,
) -> Option<dead::WriteTimer> {
    use dead::Phase;
    let ms = |jiffies: u32| u64::from(jiffies) * 1000 / u64::from(hz.max(1));
    let until = ms(until(e.write_expires, e.now));
    let rto_ms = ms(e.rto);
    let (phase, timer_ms) = match (e.write_timer, state) {
        (1, TcpState::SynSent) => (
            Phase::Syn {
                retries: u32::from(if e.syn_retries != 0 {
                    e.syn_retries
                } else {
                    e.net_syn_retries
                }),
                linear: u32::from(e.net_syn_linear),
                timeout_init_ms: 1000,
            },
            until,
        ),
        (3, _) => (
            Phase::ZeroWindow {
                retries2: u32::from(e.net_retries2),
                orphan_retries: (e.orphan != 0).then_some(u32::from(e.net_orphan_retries)),
            },
            until,
        ),
        // The retransmission timer, or the loss probe or reorder timer that
        // comes before it (then the first RTO is about one RTO later).
        (1 | 5 | 6, _) if e.packets_out > 0 => {
            let phase = if e.orphan != 0 {
                Phase::Orphan {
                    orphan_retries: u32::from(e.net_orphan_retries),
                }
            } else if e.snd_wnd == 0 {
                Phase::ShrunkWindow {
                    idle_ms: idle.unwrap_or(0),
                }
            } else {
                Phase::Retransmit {
                    retries2: u32::from(e.net_retries2),
                }
            };
            (
                phase,
                if e.write_timer == 1 {
                    until
                } else {
                    until + rto_ms
                },
            )
        }
        _ => return None,
    };
    // retrans_stamp is on the TCP clock (CLOCK_MONOTONIC), in ms or µs.
    // The kernel keeps it in 32 bits, wrapping.
    let low = |clock: u64| u32::try_from(clock % (1 << 32)).unwrap_or(0);
    let since_stamp_ms = (e.retrans_stamp != 0).then(|| {
        if e.usec_ts != 0 {
            u64::from(low(e.mono_us).wrapping_sub(e.retrans_stamp)) / 1000
        } else {
            u64::from(low(e.mono_us / 1000).wrapping_sub(e.retrans_stamp))
        }
    });
    Some(dead::WriteTimer {
        phase,
        timer_ms,
        retransmits: u32::from(e.retransmits),
        probes: u32::from(e.probes),
        backoff: u32::from(e.backoff),
        rto_ms,
        rto_max_ms: if e.rto_max == 0 {
            120_000
        } else {
            ms(e.rto_max)
        },
        since_stamp_ms,
        since_probes_ms: (e.probes_tstamp != 0).then(|| ms(e.now.wrapping_sub(e.probes_tstamp))),
        user_timeout_ms: u64::from(e.user_timeout_ms),
        unreachable: matches!(
            i32::from(e.soft_error),
            libc::EHOSTUNREACH | libc::ENETUNREACH
        ),
        hz: u64::from(hz),
        now_jiffies: u64::from(e.now),
    })
}

/// A network namespace, and a file that opens it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    pub inode: u64,
    pub path: PathBuf,
}

/// The network namespaces processes use, and those named in `/run/netns`
/// (which may have no process): each once.
#[must_use]
pub fn namespaces() -> Vec<Namespace> {
    let mut seen: HashMap<u64, PathBuf> = HashMap::new();
    let named = fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path());
    let used = fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.parse::<u32>().is_ok())
        })
        .map(|e| e.path().join("ns/net"));
    for path in named.chain(used) {
        // A process may exit, a name may go or not be mounted yet: skipped.
        if let Ok(meta) = fs::metadata(&path)
            && is_namespace(&path)
        {
            seen.entry(meta.ino()).or_insert(path);
        }
    }
    let mut all: Vec<_> = seen
        .into_iter()
        .map(|(inode, path)| Namespace { inode, path })
        .collect();
    all.sort_by_key(|n| n.inode);
    all
}

/// The TCP sockets of `ns`, as `iter` (loaded for `tcp`) reads them.
///
/// # Errors
/// When the namespace cannot be joined or the iterator read.
pub fn sockets_in(iter: &mut Iter, ns: &Namespace) -> Result<Vec<SockEntry>> {
    in_namespace(ns, false, || {
        let link = iter.attach().context("attaching the TCP iterator")?;
        let link = iter.take_link(link)?;
        let file = link.into_file().context("creating the TCP iterator")?;
        entries(BufReader::with_capacity(1 << 16, file)).context("reading the TCP iterator")
    })
}

/// Runs `read` in network namespace `ns`: from a thread that joins it (only
/// that thread's namespace changes), or here when it is this process's own
/// (`own`: joining one's own namespace still needs `CAP_SYS_ADMIN`).
///
/// # Errors
/// When the namespace cannot be joined, or `read` fails.
fn in_namespace<T: Send>(
    ns: &Namespace,
    own: bool,
    read: impl FnOnce() -> Result<T> + Send,
) -> Result<T> {
    if own {
        return read();
    }
    let path = ns.path.clone();
    thread::scope(|scope| {
        scope
            .spawn(move || -> Result<T> {
                let joined = File::open(&path)
                    .map_err(|e| e.to_string())
                    .and_then(|file| {
                        setns(file, CloneFlags::CLONE_NEWNET).map_err(|e| e.to_string())
                    });
                if let Err(why) = joined {
                    return Err(Unjoinable(format!("joining {}: {why}", path.display())).into());
                }
                read()
            })
            .join()
            .map_err(|_| anyhow!("the namespace reader panicked"))?
    })
}

/// The records the TCP iterator writes, read as they come (no copy of them
/// all as bytes: 168 bytes a socket).
fn entries(from: impl Read) -> std::io::Result<Vec<SockEntry>> {
    let mut all = Vec::new();
    each(from, |e| all.push(e))?;
    Ok(all)
}

/// Each record of type `T` an iterator program writes, to `f`.
fn each<T: Copy>(mut from: impl Read, mut f: impl FnMut(T)) -> std::io::Result<()> {
    let mut buf = vec![0u8; size_of::<T>()];
    loop {
        match from.read_exact(&mut buf) {
            // SAFETY: `T` is one of the programs' plain-data records, written
            // whole.
            Ok(()) => f(unsafe { buf.as_ptr().cast::<T>().read_unaligned() }),
            Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(err) => return Err(err),
        }
    }
}

/// A namespace this process may not join (or that is no namespace now).
#[derive(Debug)]
struct Unjoinable(String);

impl std::fmt::Display for Unjoinable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unjoinable {}

/// Whether `path` still opens namespace `inode`: the same inode, on the
/// namespace filesystem (a name in `/run/netns` is a plain file until a
/// namespace is mounted on it, and again once it is unmounted).
#[must_use]
pub fn still(path: &Path, inode: u64) -> bool {
    fs::metadata(path).is_ok_and(|m| m.ino() == inode) && is_namespace(path)
}

fn is_namespace(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
}

#[cfg(test)]
mod tests {
    const CLOCK: WallClock = WallClock::with_offset(0);

    /// A name in `/run/netns` is a plain file until `ip netns add` mounts the
    /// namespace on it (and again once `del` unmounts it): not joined, and
    /// not an error, when namespaces come and go.
    #[test]
    fn only_the_namespace_filesystem_is_a_namespace() {
        assert!(is_namespace(Path::new("/proc/self/ns/net")));
        let file = std::env::temp_dir().join(format!("kalive-not-ns-{}", std::process::id()));
        fs::write(&file, b"").expect("a file");
        let inode = fs::metadata(&file).expect("metadata").ino();
        assert!(!still(&file, inode), "a plain file is no namespace");
        fs::remove_file(&file).expect("removed");
    }
    use std::{
        net::{TcpListener, TcpStream},
        os::fd::AsRawFd as _,
    };

    use kalive_testkit::Netns;

    use super::*;
    use crate::loader::object::tests::loaded_tcp_iterator;

    /// An established IPv4 connection at HZ=250 (jiffies are 4 ms), silent
    /// for 10 s, with keepalive `on`, keepidle `idle` s of its own (0: the
    /// sysctl's 7200 s) and the sysctls' interval and count.
    fn established(on: bool, idle: u32) -> SockEntry {
        SockEntry {
            state: 1,
            keepalive: u8::from(on),
            keepidle: idle * 250,
            net_keepidle: 7200 * 250,
            net_keepintvl: 75 * 250,
            net_keepcnt: 9,
            now: 100_000,
            rcv_tstamp: 100_000 - 2500,
            lrcvtime: 100_000 - 2600,
            timer_pending: u8::from(on),
            // Due keepidle after the peer was last heard from.
            timer_expires: 100_000 - 2500 + if idle != 0 { idle } else { 7200 } * 250,
            family: 2,
            saddr: [10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            sport: 40000u16.to_be(),
            ..SockEntry::default()
        }
    }

    #[test]
    fn effective_settings_say_where_they_come_from() {
        let c = record(
            &established(true, 600),
            TcpState::Established,
            &[],
            250,
            None,
            &CLOCK,
            Known::ALL,
        );
        assert_eq!(
            (c.keepidle_ms, c.keepintvl_ms, c.keepcnt),
            (Some(600_000), Some(75_000), Some(9))
        );
        assert_eq!(
            c.from,
            Some(Sources {
                keepidle: Source::Socket,
                keepintvl: Source::Sysctl,
                keepcnt: Source::Sysctl,
            })
        );
        assert_eq!(c.idle_ms, Some(10_000), "the later of segment and ACK");
        assert_eq!(
            (c.saddr.to_string(), c.sport),
            ("10.0.0.1".to_owned(), 40000)
        );
        assert_eq!((c.pid, c.over_budget), (None, None));
    }

    #[test]
    fn text_has_a_column_each_and_a_summary() {
        let on = record(
            &established(true, 600),
            TcpState::Established,
            &[],
            250,
            Some(350_000),
            &CLOCK,
            Known::ALL,
        );
        let off = record(
            &established(false, 0),
            TcpState::Established,
            &[],
            250,
            Some(350_000),
            &CLOCK,
            Known::ALL,
        );
        let text = table(&[off.clone(), on.clone()]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("STATE"), "{text}");
        assert!(
            lines[1].contains(" off ") && lines[1].contains(" never"),
            "{text}"
        );
        assert!(lines[2].contains(" 10m/1m15s/9 "), "{text}");
        assert_eq!(
            summary(&[off, on], Some(350)),
            "2 connections: 1 without keepalive, 1 would take over an hour to find a dead \
             peer (or never would), 2 over the 350 s idle budget"
        );
        assert_eq!(duration(7_875_000), "2h11m15s");
        assert_eq!(duration(350), "350ms");
        assert_eq!(duration(0), "0ms");
    }

    #[test]
    fn the_pending_timer_and_when() {
        let at = |e: &SockEntry| {
            let c = record(e, TcpState::Established, &[], 250, None, &CLOCK, Known::ALL);
            (c.timer, c.timer_ms)
        };
        // Due 600 s after the peer was heard from, 10 s ago.
        assert_eq!(at(&established(true, 600)), ("keepalive", Some(590_000)));
        assert_eq!(at(&established(false, 0)), ("none", None));
        let mut in_flight = established(true, 600);
        in_flight.packets_out = 2;
        in_flight.write_timer = 1;
        in_flight.write_expires = in_flight.now + 50;
        assert_eq!(at(&in_flight), ("retransmit", Some(200)));
        in_flight.write_timer = 3;
        assert_eq!(at(&in_flight).0, "zero_window");
        // Overdue by two jiffies (read as it fires): due now, not in 2^32.
        in_flight.write_expires = in_flight.now.wrapping_sub(2);
        assert_eq!(at(&in_flight), ("zero_window", Some(0)));
        let mut overdue = established(true, 600);
        overdue.timer_expires = overdue.now.wrapping_sub(3);
        assert_eq!(at(&overdue), ("keepalive", Some(0)));
    }

    #[test]
    fn over_budget_when_keepalive_would_not_probe_in_time() {
        let budget = Some(350_000);
        let over = |on, idle| {
            record(
                &established(on, idle),
                TcpState::Established,
                &[],
                250,
                budget,
                &CLOCK,
                Known::ALL,
            )
            .over_budget
        };
        // AWS NLB's 350 s: a 600 s keepidle comes too late, 300 s in time,
        // and without keepalive nothing ever comes.
        assert_eq!(over(true, 600), Some(true));
        assert_eq!(over(true, 300), Some(false));
        assert_eq!(over(false, 300), Some(true));
        assert_eq!(over(true, 0), Some(true), "the sysctl's two hours");
    }

    /// Needs root: a socket in a namespace of the test's own is listed with
    /// that namespace, and the host's namespace is listed too.
    #[test]
    #[ignore = "needs root"]
    fn lists_sockets_namespace_by_namespace() {
        let ns = Netns::new("lsns").expect("netns");
        let port = ns
            .run(|| {
                let listener = TcpListener::bind("127.0.0.1:0")?;
                let client = TcpStream::connect(listener.local_addr()?)?;
                kalive_testkit::sockopt::Keepalive {
                    idle: Some(11),
                    intvl: None,
                    cnt: None,
                    user_timeout: None,
                }
                .apply(client.as_raw_fd(), true)?;
                let port = client.local_addr()?.port();
                // Kept open until the test ends.
                std::mem::forget((listener, client));
                Ok(port)
            })
            .join()
            .expect("thread")
            .expect("sockets");
        let inode = ns.inode().expect("inode");
        let all = namespaces();
        let ours = all
            .iter()
            .find(|n| n.inode == inode)
            .expect("our namespace listed");
        let host = fs::metadata("/proc/self/ns/net").expect("ns").ino();
        assert!(all.iter().any(|n| n.inode == host), "{all:?}");

        let (mut ebpf, hz) = loaded_tcp_iterator();
        let iter: &mut Iter = ebpf
            .program_mut("tcp_sockets")
            .expect("program")
            .try_into()
            .expect("iter");
        let entries = sockets_in(iter, ours).expect("read");
        let client = entries
            .iter()
            .find(|e| e.sport == port.to_be())
            .unwrap_or_else(|| panic!("port {port} not among {entries:?}"));
        assert_eq!(u64::from(client.netns), inode);
        assert_eq!((client.keepalive, client.keepidle), (1, 11 * hz));
        // And nothing from another namespace.
        assert!(entries.iter().all(|e| u64::from(e.netns) == inode));
    }
}
