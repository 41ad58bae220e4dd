//! Which backend runs, and the hooks each one attaches: the kernel functions
//! and tracepoints kalive watches, in the order they must be attached.

use std::fmt;

use anyhow::{Context as _, Result, bail};
use kalive_common::{
    TIMER_START_KEEPALIVE_PROBES, TIMER_START_ZERO_WINDOW_OPEN, TIMER_START_ZERO_WINDOW_PROBES,
};

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
    pub const fn backends(self) -> &'static [Backend] {
        match self {
            Self::Auto => &[Backend::Fentry, Backend::Kprobe, Backend::Tracepoint],
            Self::Fentry => &[Backend::Fentry],
            Self::Kprobe => &[Backend::Kprobe],
            Self::Tracepoint => &[Backend::Tracepoint],
        }
    }
}

/// The oldest kernel kalive runs on: BPF ring buffers arrived in 5.8 (fentry,
/// `tp_btf` and BTF in `/sys` before that).
const OLDEST: (u32, u32) = (5, 8);

/// Refuses a kernel older than [`OLDEST`] before anything is loaded.
///
/// # Errors
/// When the kernel is too old, or its release cannot be read.
pub fn check_release(choice: Choice) -> Result<()> {
    // SAFETY: uname fills the struct it is given.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: a valid struct to fill.
    if unsafe { libc::uname(&raw mut uts) } != 0 {
        return Err(std::io::Error::last_os_error()).context("uname");
    }
    // SAFETY: uname NUL-terminates the release.
    let release = unsafe { std::ffi::CStr::from_ptr(uts.release.as_ptr()) }.to_string_lossy();
    let version = parse_release(&release)
        .with_context(|| format!("cannot tell the kernel version from {release:?}"))?;
    if version < OLDEST {
        let who = match choice.backends() {
            [backend] => format!("the {backend} backend needs"),
            _ => "kalive needs".to_owned(),
        };
        bail!(
            "Linux {release} is too old: {who} {}.{} or newer (BPF ring buffer)",
            OLDEST.0,
            OLDEST.1
        );
    }
    Ok(())
}

/// "6.18.44-fc" -> (6, 18).
fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts
        .next()?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .ok()?;
    Some((major, minor))
}

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
pub struct Hook {
    pub function: &'static str,
    /// fentry on entry, fexit on return; both may be wanted.
    pub entry: bool,
    pub exit: bool,
}

const fn hook(function: &'static str, entry: bool, exit: bool) -> Hook {
    Hook {
        function,
        entry,
        exit,
    }
}

impl Hook {
    /// Whether `backend` hooks the entry of this function: a kretprobe sees
    /// only the return value, so its kprobe keeps the arguments for it.
    pub fn entry(&self, backend: Backend) -> bool {
        self.entry || (backend == Backend::Kprobe && self.exit)
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
pub const USE_TRACEPOINTS: &[&str] = &["sock_send_length", "sock_recv_length"];
pub const USE_FUNCTIONS: &[Hook] = &[
    hook("tcp_sendmsg", true, false),
    hook("tcp_recvmsg", true, false),
];

/// Tracepoints every backend uses, attached as `tp_btf` (program `name`) or
/// else `raw_tp` (`name_raw`). In this order, so that what ends a piece of state
/// is in place before what starts it: a callback that begins while kalive
/// attaches must not leave its per-CPU note behind, and no socket may be
/// destroyed unseen after its owner was noted.
pub const COMMON_TRACEPOINTS: &[&str] = &[
    "tcp_destroy_sock",
    "sched_process_exit",
    "inet_sock_set_state",
    "tcp_probe",
];

/// Classic tracepoints: (category, name); the program has the same name. Exit
/// before entry, for the same reason.
pub const CLASSIC_TRACEPOINTS: &[(&str, &str)] = &[
    ("syscalls", "sys_exit_setsockopt"),
    ("syscalls", "sys_enter_setsockopt"),
    ("syscalls", "sys_exit_accept"),
    ("syscalls", "sys_exit_accept4"),
];

/// Which of a backend's pieces use function hooks, and what the timer
/// tracepoints do instead for the others.
#[derive(Default)]
pub struct Plan {
    pub functions: Vec<Hook>,
    pub timer_start_does: u8,
    pub timer_brackets: bool,
    /// Pieces watched by the timer tracepoints instead, and why.
    pub fallbacks: Vec<(&'static str, String)>,
}

/// Decides, before loading, which pieces `backend` watches with function
/// hooks; `unhookable` says why a function cannot be hooked, if it cannot.
pub fn plan(backend: Backend, unhookable: impl Fn(&str) -> Option<String>) -> Plan {
    let mut plan = Plan::default();
    for piece in PIECES {
        if backend == Backend::Kprobe && !piece.kprobe {
            plan.timer_start_does |= piece.fallback;
            plan.timer_brackets |= piece.fallback == 0;
            continue;
        }
        let blocked = match backend {
            Backend::Tracepoint => Some("the tracepoint backend hooks no function".to_owned()),
            _ => piece.hooks.iter().find_map(|h| unhookable(h.function)),
        };
        match blocked {
            None => plan.functions.extend_from_slice(piece.hooks),
            Some(why) => {
                plan.timer_start_does |= piece.fallback;
                plan.timer_brackets |= piece.fallback == 0;
                if backend != Backend::Tracepoint {
                    plan.fallbacks.push((piece.what, why));
                }
            }
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::parse_release;

    #[test]
    fn reads_major_and_minor() {
        assert_eq!(parse_release("6.18.44-fc-v769"), Some((6, 18)));
        assert_eq!(parse_release("2.6.78-fc-v769"), Some((2, 6)));
        assert_eq!(parse_release("5.8.0"), Some((5, 8)));
        assert_eq!(parse_release("6.1"), Some((6, 1)));
        assert_eq!(parse_release("junk"), None);
    }
}
