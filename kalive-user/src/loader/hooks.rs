//! The hooks each backend attaches: the kernel functions and tracepoints
//! kalive watches, the program that runs at each, in the order they must be
//! attached, and what the timer tracepoints do for a hook that is missing.

use kalive_common::{
    TIMER_START_KEEPALIVE_PROBES, TIMER_START_ZERO_WINDOW_OPEN, TIMER_START_ZERO_WINDOW_PROBES,
};

use super::backend::Backend;

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
/// timer tracepoints do instead when the functions cannot be hooked. A backend
/// that has no program for one of the hooks leaves the piece to the timer
/// tracepoints by design.
struct Piece {
    what: &'static str,
    hooks: &'static [Hook],
    /// `TIMER_START_*` bits, or 0 for the callback brackets (then
    /// `timer_expire_entry`/`exit`).
    fallback: u8,
}

/// A kernel function the function backends hook, and the program each runs
/// there; `None` where that end of the call is not watched.
#[derive(Debug, Clone, Copy)]
pub struct Hook {
    pub function: &'static str,
    fentry: Option<&'static str>,
    fexit: Option<&'static str>,
    /// On entry; also when only the return is watched: a kretprobe sees only
    /// the return value, so its kprobe keeps the arguments for it.
    kprobe: Option<&'static str>,
    kretprobe: Option<&'static str>,
}

impl Hook {
    const fn on(function: &'static str) -> Self {
        Self {
            function,
            fentry: None,
            fexit: None,
            kprobe: None,
            kretprobe: None,
        }
    }

    const fn fentry(self, program: &'static str) -> Self {
        Self {
            fentry: Some(program),
            ..self
        }
    }

    const fn fexit(self, program: &'static str) -> Self {
        Self {
            fexit: Some(program),
            ..self
        }
    }

    const fn kprobe(self, program: &'static str) -> Self {
        Self {
            kprobe: Some(program),
            ..self
        }
    }

    const fn kretprobe(self, program: &'static str) -> Self {
        Self {
            kretprobe: Some(program),
            ..self
        }
    }

    /// The program `backend` runs when the function is called, if any.
    pub const fn entry(&self, backend: Backend) -> Option<&'static str> {
        match backend {
            Backend::Fentry => self.fentry,
            Backend::Kprobe => self.kprobe,
            Backend::Tracepoint => None,
        }
    }

    /// The program `backend` runs when the function returns, if any.
    pub const fn exit(&self, backend: Backend) -> Option<&'static str> {
        match backend {
            Backend::Fentry => self.fexit,
            Backend::Kprobe => self.kretprobe,
            Backend::Tracepoint => None,
        }
    }

    /// Whether `backend` has a program for this hook.
    pub const fn hooked_by(&self, backend: Backend) -> bool {
        self.entry(backend).is_some() || self.exit(backend).is_some()
    }
}

const PIECES: &[Piece] = &[
    // No kprobes on the timer callbacks: the kernel skips a kprobe program,
    // and says nothing before 6.7, while any kprobe or classic tracepoint
    // program runs on the CPU or a map syscall is under way
    // (`bpf_prog_active`); a timer interrupting kalive's own
    // `sys_exit_setsockopt` program would go unseen. The timer tracepoints
    // (`tp_btf`/`raw_tp`) are skipped only when they fire inside themselves,
    // which callbacks run from softirq never do; what the kprobes inside a
    // callback miss is then found when it ends.
    Piece {
        what: "timer callbacks",
        hooks: &[
            Hook::on("tcp_keepalive_timer")
                .fentry("fentry_tcp_keepalive_timer")
                .fexit("fexit_tcp_keepalive_timer"),
            Hook::on("tcp_write_timer")
                .fentry("fentry_tcp_write_timer")
                .fexit("fexit_tcp_write_timer"),
        ],
        fallback: 0,
    },
    Piece {
        what: "keepalive probes",
        hooks: &[Hook::on("tcp_write_wakeup")
            .fexit("fexit_tcp_write_wakeup")
            .kprobe("kprobe_tcp_write_wakeup")
            .kretprobe("kretprobe_tcp_write_wakeup")],
        fallback: TIMER_START_KEEPALIVE_PROBES,
    },
    Piece {
        what: "zero-window probes",
        hooks: &[Hook::on("tcp_send_probe0")
            .fexit("fexit_tcp_send_probe0")
            .kprobe("kprobe_tcp_send_probe0")
            .kretprobe("kretprobe_tcp_send_probe0")],
        fallback: TIMER_START_ZERO_WINDOW_PROBES,
    },
    Piece {
        what: "zero windows opening",
        hooks: &[Hook::on("tcp_rearm_rto")
            .fentry("fentry_tcp_rearm_rto")
            .kprobe("kprobe_tcp_rearm_rto")],
        fallback: TIMER_START_ZERO_WINDOW_OPEN,
    },
];

/// A tracepoint every backend may use, attached as `tp_btf` or, where that
/// fails, as `raw_tp`, and the program for each.
#[derive(Debug, Clone, Copy)]
pub struct Tracepoint {
    pub name: &'static str,
    pub tp_btf: &'static str,
    pub raw_tp: &'static str,
}

const fn tracepoint(name: &'static str, tp_btf: &'static str, raw_tp: &'static str) -> Tracepoint {
    Tracepoint {
        name,
        tp_btf,
        raw_tp,
    }
}

/// The timer tracepoints: the callbacks' beginning and end, and timers being
/// armed, for what the function hooks do not watch.
pub const TIMER_EXPIRE_ENTRY: Tracepoint = tracepoint(
    "timer_expire_entry",
    "timer_expire_entry",
    "timer_expire_entry_raw",
);
pub const TIMER_EXPIRE_EXIT: Tracepoint = tracepoint(
    "timer_expire_exit",
    "timer_expire_exit",
    "timer_expire_exit_raw",
);
pub const TIMER_START: Tracepoint = tracepoint("timer_start", "timer_start", "timer_start_raw");

/// With `--live-acks`, the owner of a socket shared by several processes is the
/// last that sends or receives on it: these tracepoints (6.3+), else these
/// functions. Without it, the last that connected, accepted or configured it,
/// or the holder `/proc` shows.
pub const USE_TRACEPOINTS: &[Tracepoint] = &[
    tracepoint(
        "sock_send_length",
        "sock_send_length",
        "sock_send_length_raw",
    ),
    tracepoint(
        "sock_recv_length",
        "sock_recv_length",
        "sock_recv_length_raw",
    ),
];
pub const USE_FUNCTIONS: &[Hook] = &[
    Hook::on("tcp_sendmsg")
        .fentry("fentry_tcp_sendmsg")
        .kprobe("kprobe_tcp_sendmsg"),
    Hook::on("tcp_recvmsg")
        .fentry("fentry_tcp_recvmsg")
        .kprobe("kprobe_tcp_recvmsg"),
];

/// Tracepoints every backend uses. In this order, so that what ends a piece of
/// state is in place before what starts it: a callback that begins while
/// kalive attaches must not leave its per-CPU note behind, and no socket may
/// be destroyed unseen after its owner was noted.
pub const COMMON_TRACEPOINTS: &[Tracepoint] = &[
    tracepoint(
        "tcp_destroy_sock",
        "tcp_destroy_sock",
        "tcp_destroy_sock_raw",
    ),
    tracepoint(
        "sched_process_exit",
        "sched_process_exit",
        "sched_process_exit_raw",
    ),
    tracepoint(
        "inet_sock_set_state",
        "inet_sock_set_state",
        "inet_sock_set_state_raw",
    ),
];

/// `--live-acks`: every segment received on an established socket, to report
/// an answer to a keepalive probe the moment it arrives (and a zero window
/// opening). Without it, answers are noticed at the socket's next keepalive
/// timer, its close or its next keepalive `setsockopt()`, and no kalive program
/// runs per segment or per send/receive.
pub const LIVE_ACKS: Tracepoint = tracepoint("tcp_probe", "tcp_probe", "tcp_probe_raw");

/// Classic tracepoints: (category, name); the program has the same name. Exit
/// before entry, for the same reason.
pub const CLASSIC_TRACEPOINTS: &[(&str, &str)] = &[
    ("syscalls", "sys_exit_setsockopt"),
    ("syscalls", "sys_enter_setsockopt"),
    ("syscalls", "sys_exit_accept"),
    ("syscalls", "sys_exit_accept4"),
];

/// The `cgroup/setsockopt` program, preferred to the classic tracepoints.
pub const CGROUP_SETSOCKOPT: &str = "cgroup_setsockopt";

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
        // Without a program for every hook the timer tracepoints watch the
        // piece by design: nothing to say.
        let why = if piece.hooks.iter().all(|h| h.hooked_by(backend)) {
            match piece.hooks.iter().find_map(|h| unhookable(h.function)) {
                None => {
                    plan.functions.extend_from_slice(piece.hooks);
                    continue;
                }
                why => why,
            }
        } else {
            None
        };
        plan.timer_start_does |= piece.fallback;
        plan.timer_brackets |= piece.fallback == 0;
        plan.fallbacks.extend(why.map(|why| (piece.what, why)));
    }
    plan
}

/// Every program the tables above may ask `backend` for, on any kernel.
#[cfg(test)]
pub fn programs(backend: Backend) -> Vec<&'static str> {
    let tracepoints = [
        TIMER_EXPIRE_ENTRY,
        TIMER_EXPIRE_EXIT,
        TIMER_START,
        LIVE_ACKS,
    ]
    .iter()
    .chain(COMMON_TRACEPOINTS)
    .chain(USE_TRACEPOINTS)
    .flat_map(|t| [t.tp_btf, t.raw_tp]);
    let classic = CLASSIC_TRACEPOINTS
        .iter()
        .map(|&(_, name)| name)
        .chain([CGROUP_SETSOCKOPT]);
    let functions = PIECES
        .iter()
        .flat_map(|p| p.hooks)
        .chain(USE_FUNCTIONS)
        .flat_map(|h| [h.entry(backend), h.exit(backend)])
        .flatten();
    tracepoints.chain(classic).chain(functions).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `unhookable` finds a function in kallsyms only if kalive looked it up.
    #[test]
    fn every_hooked_function_is_looked_up() {
        for h in PIECES.iter().flat_map(|p| p.hooks).chain(USE_FUNCTIONS) {
            assert!(
                FUNCTIONS.contains(&h.function),
                "{} not in FUNCTIONS",
                h.function
            );
        }
    }

    #[test]
    fn backends_leave_to_the_timer_tracepoints_what_they_cannot_hook() {
        let all = |_: &str| None;
        let p = plan(Backend::Fentry, all);
        assert_eq!(p.functions.len(), 5);
        assert_eq!((p.timer_start_does, p.timer_brackets), (0, false));
        let p = plan(Backend::Kprobe, all);
        assert_eq!(p.functions.len(), 3);
        assert_eq!((p.timer_start_does, p.timer_brackets), (0, true));
        assert!(p.fallbacks.is_empty(), "by design: nothing to say");
        let p = plan(Backend::Tracepoint, all);
        assert!(p.functions.is_empty());
        assert!(p.timer_brackets && p.fallbacks.is_empty());
        let inlined = |f: &str| (f == "tcp_write_wakeup").then(|| "inlined".to_owned());
        let p = plan(Backend::Fentry, inlined);
        assert_eq!(p.timer_start_does, TIMER_START_KEEPALIVE_PROBES);
        assert_eq!(p.fallbacks, [("keepalive probes", "inlined".to_owned())]);
    }
}
