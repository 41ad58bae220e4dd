//! Loading the embedded BPF object with the kernel's layout and the user's
//! settings, and attaching a backend's hooks.
//!
//! Backends are interchangeable producers of the same records; they differ in
//! how they see TCP's timers at work:
//! - `fentry`: BPF trampolines on the kernel functions (cheapest);
//! - `kprobe`: kprobes and kretprobes on the same functions, but the timer
//!   callbacks' beginning and end, which must never go unseen, from the timer
//!   tracepoints (see [`Piece::kprobe`]);
//! - `tracepoint`: the timer tracepoints, which fire for every timer in the
//!   system (works where neither of the others is allowed).
//!
//! All share the TCP, socket, scheduler and syscall tracepoints. A function the
//! compiler inlined cannot be hooked: that part falls back to the timer
//! tracepoints, per hook, not all or nothing.

use std::{
    fmt,
    mem::MaybeUninit,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd},
    path::Path,
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, FEntry, FExit, KProbe, RawTracePoint, TracePoint},
};
use aya_obj::generated::{bpf_cmd, bpf_prog_info};
use kalive_common::{
    Layout, Owner, Settings, TIMER_START_KEEPALIVE_PROBES, TIMER_START_ZERO_WINDOW_OPEN,
    TIMER_START_ZERO_WINDOW_PROBES,
};

use crate::{btf::KernelBtf, kernel::Symbols, timings::timed};

/// The object `cargo xtask build-ebpf` built, embedded at compile time.
static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("KALIVE_BPF_OBJECT"));

/// How kalive hooks the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    Fentry,
    Kprobe,
    Tracepoint,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Fentry => "fentry",
            Self::Kprobe => "kprobe",
            Self::Tracepoint => "tracepoint",
        })
    }
}

/// `--backend`: one, or the first of fentry, kprobe, tracepoint that runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Choice {
    Auto,
    Fentry,
    Kprobe,
    Tracepoint,
}

impl Choice {
    const fn backends(self) -> &'static [Backend] {
        match self {
            Self::Auto => &[Backend::Fentry, Backend::Kprobe, Backend::Tracepoint],
            Self::Fentry => &[Backend::Fentry],
            Self::Kprobe => &[Backend::Kprobe],
            Self::Tracepoint => &[Backend::Tracepoint],
        }
    }
}

/// Where the kprobe PMU says its perf event type; aya's attach reads it.
const KPROBE_PMU: &str = "/sys/bus/event_source/devices/kprobe/type";

/// Kernel functions the `fentry` and `kprobe` backends hook.
pub const FUNCTIONS: &[&str] = &[
    "tcp_keepalive_timer",
    "tcp_write_timer",
    "tcp_write_wakeup",
    "tcp_send_probe0",
    "tcp_rearm_rto",
    "tcp_sendmsg",
    "tcp_recvmsg",
];

/// One thing a function backend watches, the hooks that do it, and what the
/// timer tracepoints do instead when the functions cannot be hooked.
struct Piece {
    what: &'static str,
    /// (function, fentry program, fexit program) per hook; kprobe programs are
    /// `kprobe_FUNCTION` and `kretprobe_FUNCTION`.
    hooks: &'static [Hook],
    /// Whether the kprobe backend hooks the functions too. Not the timer
    /// callbacks: the kernel skips a kprobe program, and says nothing before
    /// 6.7, while any kprobe or classic tracepoint program runs on the CPU or a
    /// map syscall is under way (`bpf_prog_active`); a timer interrupting
    /// kalive's own `sys_exit_setsockopt` program would go unseen. The timer
    /// tracepoints (`tp_btf`/`raw_tp`) are skipped only when they fire inside
    /// themselves, which callbacks run from softirq never do; what the kprobes
    /// inside a callback miss is then found when it ends.
    kprobe: bool,
    /// `TIMER_START_*` bits, or 0 for the callback brackets (then
    /// `timer_expire_entry`/`exit`).
    fallback: u8,
}

#[derive(Clone, Copy)]
struct Hook {
    function: &'static str,
    /// fentry on entry, fexit on return; both may be wanted.
    entry: bool,
    exit: bool,
}

const fn hook(function: &'static str, entry: bool, exit: bool) -> Hook {
    Hook {
        function,
        entry,
        exit,
    }
}

const PIECES: &[Piece] = &[
    Piece {
        what: "timer callbacks",
        hooks: &[
            hook("tcp_keepalive_timer", true, true),
            hook("tcp_write_timer", true, true),
        ],
        kprobe: false,
        fallback: 0,
    },
    Piece {
        what: "keepalive probes",
        hooks: &[hook("tcp_write_wakeup", false, true)],
        kprobe: true,
        fallback: TIMER_START_KEEPALIVE_PROBES,
    },
    Piece {
        what: "zero-window probes",
        hooks: &[hook("tcp_send_probe0", false, true)],
        kprobe: true,
        fallback: TIMER_START_ZERO_WINDOW_PROBES,
    },
    Piece {
        what: "zero windows opening",
        hooks: &[hook("tcp_rearm_rto", true, false)],
        kprobe: true,
        fallback: TIMER_START_ZERO_WINDOW_OPEN,
    },
];

/// The owner of a socket shared by several processes is the last that sends
/// or receives on it: these tracepoints (6.3+), else these functions.
const USE_TRACEPOINTS: &[&str] = &["sock_send_length", "sock_recv_length"];
const USE_FUNCTIONS: &[Hook] = &[
    hook("tcp_sendmsg", true, false),
    hook("tcp_recvmsg", true, false),
];

/// Tracepoints every backend uses, attached as `tp_btf` (program `name`) or
/// else `raw_tp` (`name_raw`). In this order, so that what ends a piece of state
/// is in place before what starts it: a callback that begins while kalive
/// attaches must not leave its per-CPU note behind, and no socket may be
/// destroyed unseen after its owner was noted.
const COMMON_TRACEPOINTS: &[&str] = &[
    "tcp_destroy_sock",
    "sched_process_exit",
    "inet_sock_set_state",
    "tcp_probe",
];

/// Classic tracepoints: (category, name); the program has the same name. Exit
/// before entry, for the same reason.
const CLASSIC_TRACEPOINTS: &[(&str, &str)] = &[
    ("syscalls", "sys_exit_setsockopt"),
    ("syscalls", "sys_enter_setsockopt"),
    ("syscalls", "sys_exit_accept"),
    ("syscalls", "sys_exit_accept4"),
];

/// What got attached, for the start-up lines.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Attached {
    pub tp_btf: usize,
    pub raw_tp: usize,
    pub tracepoint: usize,
    /// fentry/fexit or kprobe/kretprobe programs.
    pub functions: usize,
    /// Pieces a function backend watches with the timer tracepoints instead,
    /// and why.
    pub fallbacks: Vec<(&'static str, String)>,
    /// What this kernel cannot provide, and what that costs.
    pub missing: Vec<String>,
}

impl fmt::Display for Attached {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} function, {} tp_btf, {} raw_tp, {} tracepoint",
            self.functions, self.tp_btf, self.raw_tp, self.tracepoint
        )
    }
}

/// What the user filters on; empty means everything.
#[derive(Debug, Default, Clone)]
pub struct Filters {
    pub pids: Vec<u32>,
    pub ports: Vec<u16>,
}

/// Everything a backend needs to start.
pub struct Config<'a> {
    pub layout: &'a Layout,
    pub kernel_btf: &'a KernelBtf,
    pub symbols: &'a Symbols,
    pub filters: &'a Filters,
    pub state_changes: bool,
    pub ring_size: u32,
    /// Skip `tp_btf` and use `raw_tp` for every tracepoint (to exercise the
    /// fallback).
    pub raw_only: bool,
    /// Treat these functions as inlined (to exercise the per-hook fallback).
    pub pretend_inlined: Vec<String>,
}

/// Where `Tracer::start` spends its time.
#[derive(Debug, Default, Clone, Copy)]
pub struct Times {
    /// aya's parse of the kernel's BTF.
    pub btf: Duration,
    /// The object: ELF, relocations, maps.
    pub object: Duration,
    /// Program loads: mostly the verifier.
    pub verifier: Duration,
    pub attach: Duration,
    /// Backends tried first that could not run.
    pub passed_over: Duration,
}

impl Times {
    /// As `Timings` parts.
    #[must_use]
    pub fn parts(&self) -> [(&'static str, Duration); 5] {
        [
            ("aya BTF", self.btf),
            ("backends passed over", self.passed_over),
            ("object", self.object),
            ("verifier", self.verifier),
            ("attach", self.attach),
        ]
    }
}

/// Loaded and attached programs. Dropping it detaches everything: nothing is
/// pinned, so nothing outlives the process.
pub struct Tracer {
    ebpf: Ebpf,
    lost: PerCpuArray<MapData, u64>,
    owners_full: PerCpuArray<MapData, u64>,
    owners: HashMap<MapData, u64, Owner>,
    pub backend: Backend,
    pub attached: Attached,
    /// Backends tried first that could not run here, and why.
    pub passed_over: Vec<(Backend, String)>,
    pub times: Times,
}

impl Tracer {
    /// Starts the chosen backend, or for `auto` the first that loads and
    /// attaches every hook it needs. Returns the tracer and the ring buffer its
    /// programs write records to.
    ///
    /// # Errors
    /// When no backend of the choice can run; the error says why for each.
    pub fn start(choice: Choice, config: &Config<'_>) -> Result<(Self, RingBuf<MapData>)> {
        let mut times = Times::default();
        let btf = timed(&mut times.btf, Btf::from_sys_fs).context("parsing the kernel's BTF")?;
        let mut passed_over = Vec::new();
        for &backend in choice.backends() {
            let mut tried = Times::default();
            match start_backend(backend, config, &btf, &mut tried) {
                Ok((ebpf, attached)) => {
                    let (mut tracer, events) = Self::new(ebpf, backend, attached)?;
                    tracer.passed_over = passed_over;
                    tracer.times = Times {
                        btf: times.btf,
                        passed_over: times.passed_over,
                        ..tried
                    };
                    return Ok((tracer, events));
                }
                Err(err) => {
                    times.passed_over += tried.object + tried.verifier + tried.attach;
                    passed_over.push((backend, explain(backend, &err)));
                }
            }
        }
        if let [(backend, why)] = passed_over.as_slice() {
            bail!("the {backend} backend cannot run here: {why}");
        }
        let reasons: Vec<String> = passed_over
            .iter()
            .map(|(b, why)| format!("{b}: {why}"))
            .collect();
        bail!("no backend can run here ({})", reasons.join("; "))
    }

    fn new(
        mut ebpf: Ebpf,
        backend: Backend,
        attached: Attached,
    ) -> Result<(Self, RingBuf<MapData>)> {
        let events = RingBuf::try_from(map(&mut ebpf, "EVENTS")?)?;
        let tracer = Self {
            lost: PerCpuArray::try_from(map(&mut ebpf, "LOST")?)?,
            owners_full: PerCpuArray::try_from(map(&mut ebpf, "OWNERS_FULL")?)?,
            owners: HashMap::try_from(map(&mut ebpf, "OWNERS")?)?,
            ebpf,
            backend,
            attached,
            passed_over: Vec::new(),
            times: Times::default(),
        };
        Ok((tracer, events))
    }

    /// Records the programs could not deliver so far, summed over CPUs.
    ///
    /// # Errors
    /// When the map cannot be read.
    pub fn lost(&self) -> Result<u64> {
        Ok(self.lost.get(&0, 0)?.iter().sum())
    }

    /// Runs of kalive's programs the kernel skipped, summed: its recursion
    /// protection skips a program that fires while it already runs on the CPU
    /// (in process context, interrupted by a softirq that fires it again).
    ///
    /// # Errors
    /// When the kernel does not say.
    pub fn skipped(&self) -> Result<u64> {
        let mut sum = 0;
        for (name, program) in self.ebpf.programs() {
            // Programs of backends passed over are not loaded.
            let Ok(fd) = program.fd() else { continue };
            sum += recursion_misses(fd.as_fd()).with_context(|| format!("program {name}"))?;
        }
        Ok(sum)
    }

    /// Owners the programs could not remember because their map was full.
    ///
    /// # Errors
    /// When the map cannot be read.
    pub fn owners_full(&self) -> Result<u64> {
        Ok(self.owners_full.get(&0, 0)?.iter().sum())
    }

    /// Tells the programs who owns socket `sk` (found in procfs), so that the
    /// next records carry it and the pid filter applies in the kernel.
    ///
    /// # Errors
    /// When the map is full.
    pub fn set_owner(&mut self, sk: u64, owner: &Owner) -> Result<()> {
        self.owners.insert(sk, owner, 0)?;
        Ok(())
    }
}

/// The error, led by what it means for users, for the two ways backends are
/// commonly refused.
fn explain(backend: Backend, err: &anyhow::Error) -> String {
    let detail = format!("{err:#}");
    let meaning = match backend {
        Backend::Fentry if detail.contains("Operation not permitted") => {
            "the kernel refuses fentry/fexit programs (EPERM: lockdown or a security policy)"
        }
        Backend::Kprobe if detail.contains("devices/kprobe") => {
            "this kernel has no kprobes (no kprobe PMU: CONFIG_KPROBES is off)"
        }
        _ => return detail,
    };
    format!("{meaning}; {detail}")
}

/// Why `function` cannot be hooked by `backend`, if it cannot.
fn unhookable(backend: Backend, function: &str, config: &Config<'_>) -> Option<String> {
    if !config.symbols.has(function) || config.pretend_inlined.iter().any(|f| f == function) {
        return Some(format!(
            "{function} is inlined into its callers on this kernel"
        ));
    }
    if backend == Backend::Fentry && !config.kernel_btf.has_func(function) {
        return Some(format!("{function} is not in the kernel's BTF"));
    }
    None
}

/// Which of a backend's pieces use function hooks, and what the timer
/// tracepoints do instead for the others.
#[derive(Default)]
struct Plan {
    functions: Vec<Hook>,
    timer_start_does: u8,
    timer_brackets: bool,
}

fn plan(backend: Backend, config: &Config<'_>, attached: &mut Attached) -> Plan {
    let mut plan = Plan::default();
    for piece in PIECES {
        if backend == Backend::Kprobe && !piece.kprobe {
            plan.timer_start_does |= piece.fallback;
            plan.timer_brackets |= piece.fallback == 0;
            continue;
        }
        let blocked = match backend {
            Backend::Tracepoint => Some("the tracepoint backend hooks no function".to_owned()),
            _ => piece
                .hooks
                .iter()
                .find_map(|h| unhookable(backend, h.function, config)),
        };
        match blocked {
            None => plan.functions.extend_from_slice(piece.hooks),
            Some(why) => {
                plan.timer_start_does |= piece.fallback;
                plan.timer_brackets |= piece.fallback == 0;
                if backend != Backend::Tracepoint {
                    attached.fallbacks.push((piece.what, why));
                }
            }
        }
    }
    plan
}

/// Loads the object and attaches `backend`'s hooks; any failure fails the
/// backend as a whole (its programs are detached when `Ebpf` drops).
fn start_backend(
    backend: Backend,
    config: &Config<'_>,
    btf: &Btf,
    times: &mut Times,
) -> Result<(Ebpf, Attached)> {
    let mut attached = Attached::default();
    // Decided before loading: the programs learn what the timer tracepoints
    // must do from a read-only global.
    let Plan {
        functions: mut use_functions,
        timer_start_does,
        timer_brackets,
    } = plan(backend, config, &mut attached);

    let mut ebpf = timed(&mut times.object, || {
        load_object(config, timer_start_does, btf)
    })?;

    // Filters are in place before the first program runs.
    fill_filters(&mut ebpf, config.filters)?;
    preflight(&mut ebpf, backend, &use_functions, btf, times)?;

    // Ends of state first (see COMMON_TRACEPOINTS), then the timers.
    let raw_only = config.raw_only;
    if timer_brackets {
        attach_tracepoint(
            &mut ebpf,
            "timer_expire_exit",
            btf,
            raw_only,
            &mut attached,
            times,
        )?;
    }
    for &tracepoint in COMMON_TRACEPOINTS {
        attach_tracepoint(&mut ebpf, tracepoint, btf, raw_only, &mut attached, times)?;
    }
    for &(category, name) in CLASSIC_TRACEPOINTS {
        attach_classic(&mut ebpf, category, name, times)?;
        attached.tracepoint += 1;
    }

    // Who used a socket last.
    let mut use_tracepoints = true;
    for &tracepoint in USE_TRACEPOINTS {
        if let Err(err) =
            attach_tracepoint(&mut ebpf, tracepoint, btf, raw_only, &mut attached, times)
        {
            log::info!("{tracepoint}: {err:#}");
            use_tracepoints = false;
        }
    }
    if !use_tracepoints {
        let usable = backend != Backend::Tracepoint
            && USE_FUNCTIONS
                .iter()
                .all(|h| unhookable(backend, h.function, config).is_none());
        if usable {
            use_functions.extend_from_slice(USE_FUNCTIONS);
        } else {
            attached.missing.push(
                "no sock:sock_send_length tracepoint (6.3+): a socket shared by several \
                 processes is attributed to the last that configured, connected or \
                 accepted it, not the last that used it"
                    .to_owned(),
            );
        }
    }

    // Returns before entries: a callback's end must be watched before its start.
    let kprobes_withheld = backend == Backend::Kprobe && withheld("kprobes");
    if kprobes_withheld {
        log::warn!("kprobes: none attached ({WITHHOLD})");
    }
    for exits_first in [true, false] {
        for h in &use_functions {
            let wanted = if exits_first {
                h.exit
            } else {
                function_entry(backend, h)
            };
            if wanted && !kprobes_withheld {
                load_function(&mut ebpf, backend, h.function, !exits_first, btf, times)?;
                attach_function(&mut ebpf, backend, h.function, !exits_first, times)?;
                attached.functions += 1;
            }
        }
    }
    if timer_start_does != 0 {
        attach_tracepoint(
            &mut ebpf,
            "timer_start",
            btf,
            raw_only,
            &mut attached,
            times,
        )?;
    }
    if timer_brackets {
        attach_tracepoint(
            &mut ebpf,
            "timer_expire_entry",
            btf,
            raw_only,
            &mut attached,
            times,
        )?;
    }
    Ok((ebpf, attached))
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::programs::Program> {
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing from the BPF object"))
}

fn map(ebpf: &mut Ebpf, name: &str) -> Result<aya::maps::Map> {
    ebpf.take_map(name)
        .ok_or_else(|| anyhow!("map {name} missing from the BPF object"))
}

/// The object, with the layout and settings in its read-only globals.
fn load_object(config: &Config<'_>, timer_start_does: u8, btf: &Btf) -> Result<Ebpf> {
    let settings = Settings {
        state_changes: u8::from(config.state_changes),
        filter_pids: u8::from(!config.filters.pids.is_empty()),
        filter_ports: u8::from(!config.filters.ports.is_empty()),
        timer_start_does,
        pad: [0; 4],
    };
    EbpfLoader::new()
        .btf(Some(btf))
        .override_global("LAYOUT", config.layout, true)
        .override_global("SETTINGS", &settings, true)
        .map_max_entries("EVENTS", config.ring_size)
        .load(OBJECT)
        .context("loading kalive's BPF object")
}

/// Fills the pid and port filter maps.
fn fill_filters(ebpf: &mut Ebpf, filters: &Filters) -> Result<()> {
    let pids = ebpf
        .map_mut("PIDS")
        .ok_or_else(|| anyhow!("map PIDS missing from the BPF object"))?;
    let mut pids: HashMap<_, u32, u8> = HashMap::try_from(pids)?;
    for &pid in &filters.pids {
        pids.insert(pid, 1, 0).context("filling the pid filter")?;
    }
    let ports = ebpf
        .map_mut("PORTS")
        .ok_or_else(|| anyhow!("map PORTS missing from the BPF object"))?;
    let mut ports: HashMap<_, u16, u8> = HashMap::try_from(ports)?;
    for &port in &filters.ports {
        ports
            .insert(port, 1, 0)
            .context("filling the port filter")?;
    }
    Ok(())
}

/// Tries what a kernel may refuse before anything is attached: a backend
/// passed over then costs no detaching (RCU grace periods, tens of ms each).
fn preflight(
    ebpf: &mut Ebpf,
    backend: Backend,
    functions: &[Hook],
    btf: &Btf,
    times: &mut Times,
) -> Result<()> {
    if backend == Backend::Kprobe && !Path::new(KPROBE_PMU).exists() {
        bail!("`{KPROBE_PMU}`: no such file");
    }
    for h in functions {
        for (entry, wanted) in [(false, h.exit), (true, function_entry(backend, h))] {
            if wanted {
                load_function(ebpf, backend, h.function, entry, btf, times)?;
            }
        }
    }
    Ok(())
}

/// Whether `backend` hooks the entry of `h`: a kretprobe sees only the
/// return value, so its kprobe keeps the arguments for it.
fn function_entry(backend: Backend, h: &Hook) -> bool {
    h.entry || (backend == Backend::Kprobe && h.exit)
}

/// The program for a function hook: fentry/fexit, or kprobe/kretprobe.
fn function_program(backend: Backend, function: &str, entry: bool) -> String {
    let kind = match (backend, entry) {
        (Backend::Fentry, true) => "fentry",
        (Backend::Fentry, false) => "fexit",
        (_, true) => "kprobe",
        (_, false) => "kretprobe",
    };
    format!("{kind}_{function}")
}

/// Loads a function hook's program (the verifier runs), unless it is loaded.
fn load_function(
    ebpf: &mut Ebpf,
    backend: Backend,
    function: &str,
    entry: bool,
    btf: &Btf,
    times: &mut Times,
) -> Result<()> {
    let name = function_program(backend, function, entry);
    let p = program(ebpf, &name)?;
    let loaded = match (backend, &mut *p) {
        (Backend::Fentry, aya::programs::Program::FEntry(p)) => p.fd().is_ok(),
        (Backend::Fentry, aya::programs::Program::FExit(p)) => p.fd().is_ok(),
        (Backend::Kprobe, aya::programs::Program::KProbe(p)) => p.fd().is_ok(),
        _ => false,
    };
    if loaded {
        return Ok(());
    }
    let (kind, _) = name.split_once('_').unwrap_or((&name, ""));
    match (backend, entry) {
        (Backend::Fentry, true) => {
            let p: &mut FEntry = p.try_into()?;
            timed(&mut times.verifier, || p.load(function, btf))
        }
        (Backend::Fentry, false) => {
            let p: &mut FExit = p.try_into()?;
            timed(&mut times.verifier, || p.load(function, btf))
        }
        (Backend::Kprobe, _) => {
            let p: &mut KProbe = p.try_into()?;
            timed(&mut times.verifier, || p.load())
        }
        (Backend::Tracepoint, _) => bail!("the tracepoint backend hooks no function"),
    }
    .with_context(|| format!("loading {kind}/{function}"))
}

/// Attaches a loaded function hook.
fn attach_function(
    ebpf: &mut Ebpf,
    backend: Backend,
    function: &str,
    entry: bool,
    times: &mut Times,
) -> Result<()> {
    let name = function_program(backend, function, entry);
    let (kind, _) = name.split_once('_').unwrap_or((&name, ""));
    let kind = kind.to_owned();
    let p = program(ebpf, &name)?;
    match backend {
        Backend::Fentry if entry => {
            let p: &mut FEntry = p.try_into()?;
            timed(&mut times.attach, || p.attach()).map(drop)
        }
        Backend::Fentry => {
            let p: &mut FExit = p.try_into()?;
            timed(&mut times.attach, || p.attach()).map(drop)
        }
        Backend::Kprobe => {
            let p: &mut KProbe = p.try_into()?;
            timed(&mut times.attach, || p.attach(function, 0)).map(drop)
        }
        Backend::Tracepoint => bail!("the tracepoint backend hooks no function"),
    }
    .with_context(|| format!("attaching {kind}/{function}"))
}

/// Attaches a classic tracepoint; the program has its name.
fn attach_classic(ebpf: &mut Ebpf, category: &str, name: &str, times: &mut Times) -> Result<()> {
    let program: &mut TracePoint = program(ebpf, name)?.try_into()?;
    timed(&mut times.verifier, || program.load())
        .with_context(|| format!("loading tracepoint {category}:{name}"))?;
    timed(&mut times.attach, || program.attach(category, name))
        .with_context(|| format!("attaching tracepoint {category}:{name}"))?;
    Ok(())
}

/// Attaches `tracepoint` as `tp_btf`, or else as `raw_tp`.
fn attach_tracepoint(
    ebpf: &mut Ebpf,
    tracepoint: &str,
    btf: &Btf,
    raw_only: bool,
    attached: &mut Attached,
    times: &mut Times,
) -> Result<()> {
    if withheld(tracepoint) {
        log::warn!("{tracepoint}: not attached ({WITHHOLD})");
        return Ok(());
    }
    let btf_error = if raw_only {
        None
    } else {
        match attach_tp_btf(ebpf, tracepoint, btf, times) {
            Ok(()) => {
                attached.tp_btf += 1;
                return Ok(());
            }
            Err(err) => Some(err),
        }
    };
    attach_raw_tp(ebpf, tracepoint, times).with_context(|| match &btf_error {
        Some(err) => format!("tp_btf failed too: {err:#}"),
        None => "tp_btf skipped".to_owned(),
    })?;
    if let Some(err) = btf_error {
        log::warn!("tp_btf/{tracepoint}: {err:#}; using raw_tp/{tracepoint}");
    }
    attached.raw_tp += 1;
    Ok(())
}

/// For tests: tracepoints (comma-separated) left unattached, as if the kernel
/// skipped every run of their programs (its recursion protection skips runs
/// that fire while the same program runs on the CPU). Records must still come.
/// `kprobes`, on the kprobe backend: no kprobe at all, as when every kprobe
/// program in a timer callback is skipped because the callback interrupted
/// another kprobe or classic tracepoint program (`bpf_prog_active`).
const WITHHOLD: &str = "KALIVE_TEST_WITHHOLD";

fn withheld(tracepoint: &str) -> bool {
    std::env::var(WITHHOLD).is_ok_and(|list| list.split(',').any(|t| t == tracepoint))
}

fn attach_tp_btf(ebpf: &mut Ebpf, tracepoint: &str, btf: &Btf, times: &mut Times) -> Result<()> {
    let program: &mut BtfTracePoint = program(ebpf, tracepoint)?.try_into()?;
    timed(&mut times.verifier, || program.load(tracepoint, btf))
        .with_context(|| format!("loading tp_btf/{tracepoint}"))?;
    timed(&mut times.attach, || program.attach())
        .with_context(|| format!("attaching tp_btf/{tracepoint}"))?;
    Ok(())
}

fn attach_raw_tp(ebpf: &mut Ebpf, tracepoint: &str, times: &mut Times) -> Result<()> {
    let name = format!("{tracepoint}_raw");
    let program: &mut RawTracePoint = program(ebpf, &name)?.try_into()?;
    timed(&mut times.verifier, || program.load())
        .with_context(|| format!("loading raw_tp/{tracepoint}"))?;
    timed(&mut times.attach, || program.attach(tracepoint))
        .with_context(|| format!("attaching raw_tp/{tracepoint}"))?;
    Ok(())
}

/// `recursion_misses` of the program `fd` (`BPF_OBJ_GET_INFO_BY_FD`; aya does
/// not expose it). 0 on kernels older than 5.12, which do not count them.
fn recursion_misses(fd: BorrowedFd<'_>) -> Result<u64> {
    #[repr(C)]
    struct InfoByFd {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let mut info = MaybeUninit::<bpf_prog_info>::zeroed();
    let mut attr = InfoByFd {
        bpf_fd: u32::try_from(fd.as_raw_fd())?,
        info_len: u32::try_from(size_of::<bpf_prog_info>())?,
        info: info.as_mut_ptr() as u64,
    };
    // SAFETY: `attr` is the command's attribute, `info` the buffer it names,
    // as large as it says; both outlive the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_OBJ_GET_INFO_BY_FD as libc::c_long,
            &raw mut attr,
            size_of::<InfoByFd>(),
        )
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error()).context("BPF_OBJ_GET_INFO_BY_FD");
    }
    // SAFETY: all-zero is a valid `bpf_prog_info` (integers only), and the
    // kernel wrote a valid one over it.
    Ok(unsafe { info.assume_init() }.recursion_misses)
}
