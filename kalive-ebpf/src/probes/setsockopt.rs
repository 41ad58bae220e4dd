//! Keepalive enabled, disabled or re-configured by `setsockopt()`, reported
//! with the resulting configuration.
//!
//! Preferred: a `cgroup/setsockopt` program on the root of the cgroup v2
//! hierarchy. It runs only for `setsockopt()` calls, before the kernel applies
//! the option, so it applies the kernel's own checks to the value and reports
//! the configuration the call leaves. Else: `syscalls:sys_enter_setsockopt` /
//! `sys_exit_setsockopt`, after the call succeeded; but with any syscall
//! tracepoint enabled every syscall on the host takes the kernel's slow path
//! (measured: about 30 ns more per syscall).

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_retval, bpf_probe_read_kernel},
    macros::{cgroup_sockopt, tracepoint},
    programs::{SockoptContext, TracePointContext},
};
use kalive_common::{AckSeen, FLAG_KEEPALIVE, FLAG_USER_TIMEOUT, Kind, Record};

use crate::{
    emit::{answered, emit, forget_armed, learn_owner},
    kernel::{Sock, layout, sock_of_fd},
    maps::SETSOCKOPT,
};

const SOL_SOCKET: u64 = 1;
const SO_KEEPALIVE: u64 = 9;
const SOL_TCP: u64 = 6;
const TCP_KEEPIDLE: u64 = 4;
const TCP_KEEPINTVL: u64 = 5;
const TCP_KEEPCNT: u64 = 6;
const TCP_USER_TIMEOUT: u64 = 18;
/// `MAX_TCP_KEEPIDLE`, `MAX_TCP_KEEPINTVL` (seconds), `MAX_TCP_KEEPCNT`.
const MAX_TCP_KEEPIDLE: u32 = 32767;
const MAX_TCP_KEEPINTVL: u32 = 32767;
const MAX_TCP_KEEPCNT: u32 = 127;

/// `cgroup/setsockopt`: a keepalive option about to be set on a TCP socket.
/// Always lets the call through (returns 1).
#[cgroup_sockopt(setsockopt)]
pub fn cgroup_setsockopt(ctx: SockoptContext) -> i32 {
    keepalive_option(&ctx);
    1
}

fn keepalive_option(ctx: &SockoptContext) {
    // SAFETY: the context the kernel hands a cgroup/setsockopt program.
    let opt = unsafe { &*ctx.sockopt };
    let (level, optname) = (opt.level as u64, opt.optname as u64);
    if !matches!(
        (level, optname),
        (SOL_SOCKET, SO_KEEPALIVE)
            | (
                SOL_TCP,
                TCP_KEEPIDLE | TCP_KEEPINTVL | TCP_KEEPCNT | TCP_USER_TIMEOUT
            )
    ) {
        return;
    }
    // SAFETY: reading the union's pointer members, as the kernel fills them.
    let (optval, end) = unsafe {
        (
            opt.__bindgen_anon_2.optval.cast::<u8>(),
            opt.__bindgen_anon_3.optval_end.cast::<u8>(),
        )
    };
    // The socket's address, as a number for the layout's offsets: the
    // verifier forbids arithmetic on the context's socket pointer, so it is
    // read from the kernel's context (`struct bpf_sockopt_kern`, whose first
    // member is the socket, as in `struct bpf_sockopt`).
    // SAFETY: a read the helper checks; on a fault it yields an error.
    let sk = unsafe { bpf_probe_read_kernel(ctx.sockopt.cast::<u64>().cast_const()) }.unwrap_or(0);
    // The kernel wants an int (sock_setsockopt(), do_tcp_setsockopt()).
    if opt.optlen < 4 || sk == 0 || optval.wrapping_add(4) > end {
        return;
    }
    // SAFETY: the four bytes were just checked to be within the buffer.
    let val = unsafe { core::ptr::read_unaligned(optval.cast::<i32>()) };
    let sk = Sock(sk);
    if !sk.is_tcp() {
        return;
    }
    // A program of a cgroup below the root ran first and refused the call
    // (the kernel runs the rest of the chain, then fails it with EPERM).
    // SAFETY: no preconditions.
    if unsafe { bpf_get_retval() } < 0 {
        return;
    }
    // What the kernel will set, and whether it refuses the value (EINVAL).
    let hz = layout!(hz);
    let seconds = |max: u32| u32::try_from(val).ok().filter(|&v| (1..=max).contains(&v));
    let set = match optname {
        SO_KEEPALIVE if level == SOL_SOCKET => Setting::Enabled(val != 0),
        TCP_KEEPIDLE => match seconds(MAX_TCP_KEEPIDLE) {
            Some(v) => Setting::Idle(v * hz),
            None => return,
        },
        TCP_KEEPINTVL => match seconds(MAX_TCP_KEEPINTVL) {
            Some(v) => Setting::Interval(v * hz),
            None => return,
        },
        TCP_KEEPCNT => match seconds(MAX_TCP_KEEPCNT) {
            Some(v) => Setting::Count(v as u8),
            None => return,
        },
        _ => match u32::try_from(val) {
            Ok(v) => Setting::UserTimeout(v),
            Err(_) => return,
        },
    };
    keepalive_set(sk, |r| match set {
        Setting::Enabled(true) => r.flags |= FLAG_KEEPALIVE,
        Setting::Enabled(false) => r.flags &= !FLAG_KEEPALIVE,
        Setting::Idle(v) => r.keepidle = v,
        Setting::Interval(v) => r.keepintvl = v,
        Setting::Count(v) => r.keepcnt = v,
        Setting::UserTimeout(v) => {
            r.user_timeout_ms = v;
            if v == 0 {
                r.flags &= !FLAG_USER_TIMEOUT;
            } else {
                r.flags |= FLAG_USER_TIMEOUT;
            }
        }
    });
}

/// One keepalive option as the kernel will store it (times in jiffies).
#[derive(Clone, Copy)]
enum Setting {
    Enabled(bool),
    Idle(u32),
    Interval(u32),
    Count(u8),
    UserTimeout(u32),
}

fn field(ctx: &TracePointContext, off: u32) -> u64 {
    // SAFETY: `off` is a field offset from this tracepoint's format in tracefs.
    unsafe { ctx.read_at::<u64>(off as usize) }.unwrap_or(u64::MAX)
}

#[tracepoint]
pub fn sys_enter_setsockopt(ctx: TracePointContext) -> u32 {
    let level = field(&ctx, layout!(setsockopt_level)) & 0xffff_ffff;
    let optname = field(&ctx, layout!(setsockopt_optname)) & 0xffff_ffff;
    let keepalive = match level {
        SOL_SOCKET => optname == SO_KEEPALIVE,
        SOL_TCP => matches!(
            optname,
            TCP_KEEPIDLE | TCP_KEEPINTVL | TCP_KEEPCNT | TCP_USER_TIMEOUT
        ),
        _ => false,
    };
    if keepalive {
        let fd = field(&ctx, layout!(setsockopt_fd)) as u32;
        let _ = SETSOCKOPT.insert(&bpf_get_current_pid_tgid(), &fd, 0);
    }
    0
}

#[tracepoint]
pub fn sys_exit_setsockopt(ctx: TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    // SAFETY: the value is copied out at once.
    let Some(&fd) = (unsafe { SETSOCKOPT.get(&id) }) else {
        return 0;
    };
    let _ = SETSOCKOPT.remove(&id);
    if field(&ctx, layout!(setsockopt_ret)) != 0 {
        return 0;
    }
    let Some(sk) = sock_of_fd(fd) else {
        return 0;
    };
    if !sk.is_tcp() {
        return 0;
    }
    keepalive_set(sk, |r| r.fd = fd as i32);
    0
}

/// Reports that the calling process configured keepalive on `sk`: the record
/// as the socket reads, then `extra`.
#[inline(always)]
fn keepalive_set(sk: Sock, extra: impl FnOnce(&mut Record)) {
    // The caller owns the socket; the record names the caller even if the map
    // of owners is full.
    let owner = learn_owner(sk);
    // An answer not noticed yet comes first: turning keepalive off stops the
    // timer that would notice it.
    answered(sk, AckSeen::Setsockopt);
    // The kernel re-arms or stops the timer where kalive does not look.
    forget_armed(sk);
    emit(Kind::KeepaliveSet, sk, 0, Some(&owner), extra);
}
