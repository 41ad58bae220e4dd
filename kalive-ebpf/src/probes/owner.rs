//! Learning who owns a socket, in process context: the process that accepts it,
//! and the last process that sends or receives on it; and noticing when an
//! owner exits. (`connect()` and `setsockopt()` teach it too: see `state` and
//! `setsockopt`.)

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};

use super::{Args, hook};
use crate::{
    emit::{learn_owner, process_exited},
    kernel::{Sock, current_process_dead, layout, sock_of_fd},
};

fn accepted(ctx: &TracePointContext, ret_offset: u32) {
    // SAFETY: `ret_offset` is the `ret` field's offset from tracefs.
    let ret: i64 = unsafe { ctx.read_at(ret_offset as usize) }.unwrap_or(-1);
    let Ok(fd) = u32::try_from(ret) else {
        return;
    };
    if let Some(sk) = sock_of_fd(fd)
        && sk.is_tcp()
    {
        learn_owner(sk);
    }
}

/// `accept()` returned a new descriptor: the caller owns the connection (not the
/// process that created the listener).
#[tracepoint]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    accepted(&ctx, layout!(accept_ret));
    0
}

#[tracepoint]
pub fn sys_exit_accept4(ctx: TracePointContext) -> u32 {
    accepted(&ctx, layout!(accept4_ret));
    0
}

// TP_PROTO(struct sock *sk, int ret, int flags), 6.3+: every send and receive,
// in the caller's context. Only keepalive sockets need an owner; checking that
// first keeps the cost on every other socket to two reads.
hook!(
    "sock_send_length",
    sock_send_length,
    sock_send_length_raw,
    used
);
hook!(
    "sock_recv_length",
    sock_recv_length,
    sock_recv_length_raw,
    used
);

fn used<const BTF: bool>(args: Args) {
    let sk = Sock(args.get(0));
    if sk.keepalive_on() && sk.is_tcp() {
        learn_owner(sk);
    }
}

// 6.1: TP_PROTO(struct task_struct *p); later kernels add `group_dead`. In
// do_exit(), after `signal->live` was decremented, in the exiting task.
hook!(
    "sched_process_exit",
    sched_process_exit,
    sched_process_exit_raw,
    exited
);

fn exited<const BTF: bool>(_args: Args) {
    if current_process_dead() {
        process_exited();
    }
}
