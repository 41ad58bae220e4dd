//! `syscalls:sys_enter_setsockopt` / `sys_exit_setsockopt`: keepalive enabled,
//! disabled or re-configured, reported once the call succeeded, with the
//! resulting configuration. Classic tracepoints: they fire only for setsockopt.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext,
};
use kalive_common::{AckSeen, Kind};

use crate::{
    emit::{answered, emit, learn_owner},
    kernel::{layout, sock_of_fd},
    maps::SETSOCKOPT,
};

const SOL_SOCKET: u64 = 1;
const SO_KEEPALIVE: u64 = 9;
const SOL_TCP: u64 = 6;
const TCP_KEEPIDLE: u64 = 4;
const TCP_KEEPINTVL: u64 = 5;
const TCP_KEEPCNT: u64 = 6;
const TCP_USER_TIMEOUT: u64 = 18;

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
    // The caller owns the socket; the record names the caller even if the map
    // of owners is full.
    let owner = learn_owner(sk);
    // An answer not noticed yet comes first: turning keepalive off stops the
    // timer that would notice it.
    answered(sk, AckSeen::Setsockopt);
    emit(Kind::KeepaliveSet, sk, 0, Some(&owner), |r| {
        r.fd = fd as i32
    });
    0
}
