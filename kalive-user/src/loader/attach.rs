//! Loading and attaching one backend's programs. Any failure fails the
//! backend as a whole: its programs are detached when `Ebpf` drops.

use std::{fmt, path::Path, time::Duration};

use anyhow::{Context as _, Result, bail};
use aya::{
    Btf, Ebpf,
    programs::{
        BtfTracePoint, CgroupAttachMode, CgroupSockopt, Program, RawTracePoint, TracePoint,
    },
};
use kalive_common::Layout;

use super::{
    backend::Backend,
    hooks::{
        self, CGROUP_SETSOCKOPT, CLASSIC_TRACEPOINTS, COMMON_TRACEPOINTS, Hook, LIVE_ACKS, Plan,
        TIMER_EXPIRE_ENTRY, TIMER_EXPIRE_EXIT, TIMER_START, Tracepoint, USE_FUNCTIONS,
        USE_TRACEPOINTS,
    },
    object::{self, Filters, program},
};
use crate::{btf::KernelBtf, kernel::Symbols, timings::timed};

/// Where the kprobe PMU says its perf event type; aya's attach reads it.
const KPROBE_PMU: &str = "/sys/bus/event_source/devices/kprobe/type";

/// Everything a backend needs to start.
pub struct Config<'a> {
    pub layout: &'a Layout,
    pub kernel_btf: &'a KernelBtf,
    /// The kernel's BTF as aya has it (for `tp_btf` and function hooks).
    pub btf: &'a Btf,
    pub symbols: &'a Symbols,
    pub filters: &'a Filters,
    pub state_changes: bool,
    /// `--live-acks`: the per-segment and per-send/receive hooks too.
    pub live_acks: bool,
    pub ring_size: u32,
    /// Entries of the per-socket maps (`OWNERS`, `PROBING`).
    pub max_sockets: u32,
    /// Skip `tp_btf` and use `raw_tp` for every tracepoint (to exercise the
    /// fallback).
    pub raw_only: bool,
    /// Treat these functions as inlined (to exercise the per-hook fallback).
    pub pretend_inlined: Vec<String>,
}

/// What got attached, for the start-up lines.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Attached {
    pub tp_btf: usize,
    pub raw_tp: usize,
    pub tracepoint: usize,
    /// cgroup programs (`cgroup/setsockopt`).
    pub cgroup: usize,
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
            "{} function, {} tp_btf, {} raw_tp, {} tracepoint, {} cgroup",
            self.functions, self.tp_btf, self.raw_tp, self.tracepoint, self.cgroup
        )
    }
}

/// Where `Tracer::start` spends its time.
#[derive(Debug, Default, Clone, Copy)]
pub struct Times {
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
    pub fn parts(&self) -> [(&'static str, Duration); 4] {
        [
            ("backends passed over", self.passed_over),
            ("object", self.object),
            ("verifier", self.verifier),
            ("attach", self.attach),
        ]
    }
}

/// Loads the object and attaches `backend`'s hooks.
pub fn start_backend(
    backend: Backend,
    config: &Config<'_>,
    times: &mut Times,
) -> Result<(Ebpf, Attached)> {
    // Decided before loading: the programs learn what the timer tracepoints
    // must do from a read-only global.
    let Plan {
        functions,
        timer_start_does,
        timer_brackets,
        fallbacks,
    } = hooks::plan(backend, |function| unhookable(backend, function, config));
    // Known without loading anything (an object costs tens of ms).
    if backend == Backend::Kprobe && !Path::new(KPROBE_PMU).exists() {
        bail!("`{KPROBE_PMU}`: no such file");
    }
    let settings = object::settings(
        config.filters,
        config.state_changes,
        config.live_acks,
        timer_start_does,
    );
    let mut ebpf = timed(&mut times.object, || {
        object::load(
            config.btf,
            config.layout,
            settings,
            config.ring_size,
            config.max_sockets,
        )
    })?;
    // Filters are in place before the first program runs.
    object::fill_filters(&mut ebpf, config.filters)?;
    let mut a = Attacher {
        ebpf,
        btf: config.btf,
        raw_only: config.raw_only,
        attached: Attached {
            fallbacks,
            ..Attached::default()
        },
        times,
    };
    a.preflight(backend, &functions)?;

    // Ends of state first (see COMMON_TRACEPOINTS), then the timers.
    if timer_brackets {
        a.tracepoint(&TIMER_EXPIRE_EXIT)?;
    }
    for tracepoint in COMMON_TRACEPOINTS {
        a.tracepoint(tracepoint)?;
    }
    // setsockopt(): a cgroup program, which runs for setsockopt() only; else
    // the syscall tracepoints, which slow down every syscall on the host (any
    // enabled syscall tracepoint sends them all down the kernel's slow path).
    // With the cgroup program the accept() tracepoints go too: an accepted
    // socket's owner is then found in /proc when a record needs it.
    match a.cgroup_setsockopt() {
        Ok(()) => {}
        Err(err) => {
            log::warn!(
                "cgroup/setsockopt: {err:#}; using the setsockopt and accept syscall tracepoints, which slow down every syscall on this host"
            );
            for &(category, name) in CLASSIC_TRACEPOINTS {
                a.classic(category, name)?;
            }
        }
    }
    let mut functions = functions;
    // Per segment and per send/receive: only when asked (see LIVE_TRACEPOINTS).
    if config.live_acks {
        a.tracepoint(&LIVE_ACKS)?;
    }
    if config.live_acks && !a.use_tracepoints() {
        let usable = USE_FUNCTIONS
            .iter()
            .all(|h| h.hooked_by(backend) && unhookable(backend, h.function, config).is_none());
        if usable {
            functions.extend_from_slice(USE_FUNCTIONS);
        } else {
            a.attached.missing.push(
                "no sock:sock_send_length tracepoint (6.3+): a socket shared by several \
                 processes is attributed to the last that configured, connected or \
                 accepted it, not the last that used it"
                    .to_owned(),
            );
        }
    }
    a.functions(backend, &functions)?;
    if timer_start_does != 0 {
        a.tracepoint(&TIMER_START)?;
    }
    if timer_brackets {
        a.tracepoint(&TIMER_EXPIRE_ENTRY)?;
    }
    Ok((a.ebpf, a.attached))
}

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup` on a unified
/// system, `/sys/fs/cgroup/unified` on a hybrid one), from
/// `/proc/self/mountinfo`.
fn cgroup2_root() -> Result<std::path::PathBuf> {
    let mountinfo =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    mountinfo
        .lines()
        .find_map(|line| {
            let (mount, fs) = line.split_once(" - ")?;
            if fs.split_whitespace().next()? != "cgroup2" {
                return None;
            }
            // Field 5: the mount point (octal escapes for spaces and the like).
            let point = mount.split_whitespace().nth(4)?;
            Some(std::path::PathBuf::from(unescape(point)))
        })
        .ok_or_else(|| anyhow::anyhow!("no cgroup v2 hierarchy is mounted"))
}

/// `/proc/self/mountinfo` escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut rest = field;
    while let Some(at) = rest.find('\\') {
        out.push_str(&rest[..at]);
        let code = rest
            .get(at + 1..at + 4)
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        if let Some(byte) = code {
            out.push(char::from(byte));
            rest = &rest[at + 4..];
        } else {
            out.push('\\');
            rest = &rest[at + 1..];
        }
    }
    out.push_str(rest);
    out
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

/// One backend's programs on their way in, and what got attached.
struct Attacher<'a> {
    ebpf: Ebpf,
    btf: &'a Btf,
    raw_only: bool,
    attached: Attached,
    times: &'a mut Times,
}

impl Attacher<'_> {
    /// Tries what a kernel may refuse before anything is attached: a backend
    /// passed over then costs no detaching (RCU grace periods, tens of ms each).
    fn preflight(&mut self, backend: Backend, functions: &[Hook]) -> Result<()> {
        for h in functions {
            for program in [h.exit(backend), h.entry(backend)].into_iter().flatten() {
                self.load_function(h.function, program)?;
            }
        }
        Ok(())
    }

    /// Who used a socket last: the tracepoints, if this kernel has them all.
    fn use_tracepoints(&mut self) -> bool {
        let mut all = true;
        for tracepoint in USE_TRACEPOINTS {
            if let Err(err) = self.tracepoint(tracepoint) {
                log::info!("{}: {err:#}", tracepoint.name);
                all = false;
            }
        }
        all
    }

    /// The function hooks, returns before entries: a callback's end must be
    /// watched before its start.
    fn functions(&mut self, backend: Backend, functions: &[Hook]) -> Result<()> {
        if backend == Backend::Kprobe && withheld("kprobes") {
            log::warn!("kprobes: none attached ({WITHHOLD})");
            return Ok(());
        }
        let exits = functions.iter().filter_map(|h| Some((h, h.exit(backend)?)));
        let entries = functions
            .iter()
            .filter_map(|h| Some((h, h.entry(backend)?)));
        for (h, program) in exits.chain(entries) {
            self.load_function(h.function, program)?;
            self.attach_function(h.function, program)?;
            self.attached.functions += 1;
        }
        Ok(())
    }

    /// Loads a function hook's program (the verifier runs), unless it is loaded.
    fn load_function(&mut self, function: &str, name: &str) -> Result<()> {
        let (kind, _) = name.split_once('_').unwrap_or((name, ""));
        let (btf, verifier) = (self.btf, &mut self.times.verifier);
        let started = std::time::Instant::now();
        match program(&mut self.ebpf, name)? {
            Program::FEntry(p) if p.fd().is_err() => timed(verifier, || p.load(function, btf)),
            Program::FExit(p) if p.fd().is_err() => timed(verifier, || p.load(function, btf)),
            Program::KProbe(p) if p.fd().is_err() => timed(verifier, || p.load()),
            Program::FEntry(_) | Program::FExit(_) | Program::KProbe(_) => return Ok(()),
            _ => bail!("program {name} does not hook a function"),
        }
        .with_context(|| format!("loading {kind}/{function}"))?;
        log::debug!(
            "{kind}/{function}: loaded (verified) in {:.1} ms",
            started.elapsed().as_secs_f64() * 1000.0
        );
        Ok(())
    }

    /// Attaches a loaded function hook.
    fn attach_function(&mut self, function: &str, name: &str) -> Result<()> {
        let (kind, _) = name.split_once('_').unwrap_or((name, ""));
        let attach = &mut self.times.attach;
        match program(&mut self.ebpf, name)? {
            Program::FEntry(p) => timed(attach, || p.attach()).map(drop),
            Program::FExit(p) => timed(attach, || p.attach()).map(drop),
            Program::KProbe(p) => timed(attach, || p.attach(function, 0)).map(drop),
            _ => bail!("program {name} does not hook a function"),
        }
        .with_context(|| format!("attaching {kind}/{function}"))
    }

    /// Attaches the `cgroup/setsockopt` program to the root of the cgroup v2
    /// hierarchy: every process's `setsockopt()` calls.
    fn cgroup_setsockopt(&mut self) -> Result<()> {
        if withheld(CGROUP_SETSOCKOPT) {
            bail!("not attached ({WITHHOLD})");
        }
        let root = cgroup2_root()?;
        // The hierarchy's own root (inode 1), not a subtree bind-mounted or
        // seen through a cgroup namespace: else calls elsewhere go unseen.
        let ino = std::os::unix::fs::MetadataExt::ino(
            &std::fs::metadata(&root).with_context(|| format!("{}", root.display()))?,
        );
        if ino != 1 {
            bail!(
                "{} is not the root of the cgroup v2 hierarchy (inode {ino}, not 1: a subtree, \
                 or a cgroup namespace)",
                root.display()
            );
        }
        let cgroup = std::fs::File::open(&root)
            .with_context(|| format!("opening the cgroup v2 root {}", root.display()))?;
        let program: &mut CgroupSockopt = program(&mut self.ebpf, CGROUP_SETSOCKOPT)?.try_into()?;
        timed(&mut self.times.verifier, || program.load()).context("loading cgroup/setsockopt")?;
        timed(&mut self.times.attach, || {
            // A link (5.7+) always lets other programs in, and takes no flags.
            program.attach(&cgroup, CgroupAttachMode::Single)
        })
        .with_context(|| format!("attaching cgroup/setsockopt to {}", root.display()))?;
        self.attached.cgroup += 1;
        Ok(())
    }

    /// Attaches a classic tracepoint; the program has its name.
    fn classic(&mut self, category: &str, name: &str) -> Result<()> {
        let program: &mut TracePoint = program(&mut self.ebpf, name)?.try_into()?;
        timed(&mut self.times.verifier, || program.load())
            .with_context(|| format!("loading tracepoint {category}:{name}"))?;
        timed(&mut self.times.attach, || program.attach(category, name))
            .with_context(|| format!("attaching tracepoint {category}:{name}"))?;
        self.attached.tracepoint += 1;
        Ok(())
    }

    /// Attaches `tracepoint` as `tp_btf`, or else as `raw_tp`.
    fn tracepoint(&mut self, t: &Tracepoint) -> Result<()> {
        let tracepoint = t.name;
        if withheld(tracepoint) {
            log::warn!("{tracepoint}: not attached ({WITHHOLD})");
            return Ok(());
        }
        let btf_error = if self.raw_only {
            None
        } else {
            match self.tp_btf(t) {
                Ok(()) => {
                    self.attached.tp_btf += 1;
                    return Ok(());
                }
                Err(err) => Some(err),
            }
        };
        self.raw_tp(t).with_context(|| match &btf_error {
            Some(err) => format!("tp_btf failed too: {err:#}"),
            None => "tp_btf skipped".to_owned(),
        })?;
        if let Some(err) = btf_error {
            log::warn!("tp_btf/{tracepoint}: {err:#}; using raw_tp/{tracepoint}");
        }
        self.attached.raw_tp += 1;
        Ok(())
    }

    fn tp_btf(&mut self, t: &Tracepoint) -> Result<()> {
        let tracepoint = t.name;
        let program: &mut BtfTracePoint = program(&mut self.ebpf, t.tp_btf)?.try_into()?;
        let btf = self.btf;
        let started = std::time::Instant::now();
        timed(&mut self.times.verifier, || program.load(tracepoint, btf))
            .with_context(|| format!("loading tp_btf/{tracepoint}"))?;
        log::debug!(
            "tp_btf/{tracepoint}: loaded (verified) in {:.1} ms",
            started.elapsed().as_secs_f64() * 1000.0
        );
        timed(&mut self.times.attach, || program.attach())
            .with_context(|| format!("attaching tp_btf/{tracepoint}"))?;
        Ok(())
    }

    fn raw_tp(&mut self, t: &Tracepoint) -> Result<()> {
        let tracepoint = t.name;
        let program: &mut RawTracePoint = program(&mut self.ebpf, t.raw_tp)?.try_into()?;
        timed(&mut self.times.verifier, || program.load())
            .with_context(|| format!("loading raw_tp/{tracepoint}"))?;
        timed(&mut self.times.attach, || program.attach(tracepoint))
            .with_context(|| format!("attaching raw_tp/{tracepoint}"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::unescape;

    #[test]
    fn mount_points_unescaped() {
        assert_eq!(unescape("/sys/fs/cgroup"), "/sys/fs/cgroup");
        assert_eq!(unescape("/mnt/a\\040b"), "/mnt/a b");
        assert_eq!(unescape("/odd\\x"), "/odd\\x");
    }
}
