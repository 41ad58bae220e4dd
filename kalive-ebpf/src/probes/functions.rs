//! Hooks on the kernel functions themselves: the fentry/fexit backend (BPF
//! trampolines, the cheapest) and the kprobe/kretprobe backend (the most widely
//! available). Both only call the shared bodies in `timer` and `emit`, so they
//! produce the same records as the tracepoint backend; they save running a
//! program for every timer in the system.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_socket_cookie},
    macros::{fentry, fexit, kprobe, kretprobe},
    programs::{FEntryContext, FExitContext, ProbeContext, RetProbeContext},
};

use super::timer::{
    callback_begin, callback_end, rto_rearmed, send_probe0_returned, write_wakeup_returned,
};
use crate::{
    emit::learn_owner,
    kernel::Sock,
    maps::{KEEPALIVE, STASH_SEND_PROBE0, STASH_WRITE_WAKEUP, WRITE},
};

/// The cookie of a BTF-typed `struct sock *` argument (assigned if it had none).
fn cookie(sk: u64) -> u64 {
    // SAFETY: fentry/fexit arguments are trusted BTF pointers, as the helper
    // requires.
    unsafe { bpf_get_socket_cookie(sk as *mut core::ffi::c_void) }
}

/// A process uses a keepalive socket (`tcp_sendmsg`, `tcp_recvmsg`): for
/// kernels without `sock:sock_send_length` (before 6.3).
fn used(sk: Sock) {
    if sk.keepalive_on() && sk.is_tcp() {
        learn_owner(sk);
    }
}

// fentry/fexit. void tcp_keepalive_timer(struct timer_list *t)
#[fentry(function = "tcp_keepalive_timer")]
pub fn fentry_tcp_keepalive_timer(ctx: FEntryContext) -> i32 {
    let timer: u64 = ctx.arg(0);
    callback_begin(KEEPALIVE, timer, Sock::of_keepalive_timer(timer));
    0
}

#[fexit(function = "tcp_keepalive_timer")]
pub fn fexit_tcp_keepalive_timer(ctx: FExitContext) -> i32 {
    callback_end(ctx.arg(0));
    0
}

// void tcp_write_timer(struct timer_list *t)
#[fentry(function = "tcp_write_timer")]
pub fn fentry_tcp_write_timer(ctx: FEntryContext) -> i32 {
    let timer: u64 = ctx.arg(0);
    callback_begin(WRITE, timer, Sock::of_write_timer(timer));
    0
}

#[fexit(function = "tcp_write_timer")]
pub fn fexit_tcp_write_timer(ctx: FExitContext) -> i32 {
    callback_end(ctx.arg(0));
    0
}

// int tcp_write_wakeup(struct sock *sk, int mib): the return value follows the
// two arguments.
#[fexit(function = "tcp_write_wakeup")]
pub fn fexit_tcp_write_wakeup(ctx: FExitContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    let ret: i32 = ctx.arg(2);
    write_wakeup_returned(Sock(sk), i64::from(ret), cookie(sk));
    0
}

// void tcp_send_probe0(struct sock *sk)
#[fexit(function = "tcp_send_probe0")]
pub fn fexit_tcp_send_probe0(ctx: FExitContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    send_probe0_returned(Sock(sk), cookie(sk));
    0
}

// void tcp_rearm_rto(struct sock *sk)
#[fentry(function = "tcp_rearm_rto")]
pub fn fentry_tcp_rearm_rto(ctx: FEntryContext) -> i32 {
    rto_rearmed(Sock(ctx.arg(0)));
    0
}

// int tcp_sendmsg(struct sock *sk, ...), int tcp_recvmsg(struct sock *sk, ...)
#[fentry(function = "tcp_sendmsg")]
pub fn fentry_tcp_sendmsg(ctx: FEntryContext) -> i32 {
    used(Sock(ctx.arg(0)));
    0
}

#[fentry(function = "tcp_recvmsg")]
pub fn fentry_tcp_recvmsg(ctx: FEntryContext) -> i32 {
    used(Sock(ctx.arg(0)));
    0
}

// kprobe/kretprobe: the same, with arguments from registers. A kretprobe sees
// only the return value, so the entry keeps what the return needs. The timer
// callbacks themselves are bracketed by the timer tracepoints on this backend
// (the loader's `Piece::kprobe` says why).

fn arg(ctx: &ProbeContext, n: usize) -> u64 {
    ctx.arg::<u64>(n).unwrap_or(0)
}

/// Only its calls from a keepalive callback matter, which run in softirq and so
/// cannot interleave on a CPU: a per-CPU slot carries the socket to the return.
#[kprobe]
pub fn kprobe_tcp_write_wakeup(ctx: ProbeContext) -> u32 {
    if let Some(slot) = STASH_WRITE_WAKEUP.get_ptr_mut(0) {
        // SAFETY: this CPU's slot.
        unsafe { *slot = arg(&ctx, 0) };
    }
    0
}

#[kretprobe]
pub fn kretprobe_tcp_write_wakeup(ctx: RetProbeContext) -> u32 {
    let Some(slot) = STASH_WRITE_WAKEUP.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's slot; taken, so a nested call cannot reuse it.
    let sk = unsafe { core::mem::replace(&mut *slot, 0) };
    if sk != 0 {
        let ret: i64 = ctx.ret();
        write_wakeup_returned(Sock(sk), ret, 0);
    }
    0
}

/// Also called in process context (a deferred write timer), which may be
/// preempted: the socket is kept per thread.
#[kprobe]
pub fn kprobe_tcp_send_probe0(ctx: ProbeContext) -> u32 {
    let _ = STASH_SEND_PROBE0.insert(&bpf_get_current_pid_tgid(), &arg(&ctx, 0), 0);
    0
}

#[kretprobe]
pub fn kretprobe_tcp_send_probe0(_ctx: RetProbeContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    // SAFETY: the value is copied out at once.
    if let Some(&sk) = unsafe { STASH_SEND_PROBE0.get(&id) } {
        let _ = STASH_SEND_PROBE0.remove(&id);
        send_probe0_returned(Sock(sk), 0);
    }
    0
}

#[kprobe]
pub fn kprobe_tcp_rearm_rto(ctx: ProbeContext) -> u32 {
    rto_rearmed(Sock(arg(&ctx, 0)));
    0
}

#[kprobe]
pub fn kprobe_tcp_sendmsg(ctx: ProbeContext) -> u32 {
    used(Sock(arg(&ctx, 0)));
    0
}

#[kprobe]
pub fn kprobe_tcp_recvmsg(ctx: ProbeContext) -> u32 {
    used(Sock(arg(&ctx, 0)));
    0
}
