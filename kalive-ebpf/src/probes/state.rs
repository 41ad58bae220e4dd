//! `sock:inet_sock_set_state`: TCP state transitions.
//!
//! `TP_PROTO(const struct sock *sk, const int oldstate, const int newstate)`

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_socket_cookie,
        bpf_ktime_get_boot_ns,
    },
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use kalive_common::{IPPROTO_TCP, Kind, Owner, Record};

use crate::{
    kernel::Sock,
    maps::{EVENTS, OWNERS},
};

const TCP_SYN_SENT: i32 = 2;
const TCP_CLOSE: i32 = 7;

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> i32 {
    let raw: *mut core::ffi::c_void = ctx.arg(0);
    let sk = Sock(raw.cast_const().cast());
    if sk.protocol() != IPPROTO_TCP {
        return 0;
    }
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    // SAFETY: `raw` is the tracepoint's own `struct sock *` (a trusted BTF pointer),
    // which is what the helper requires. It assigns the cookie if there is none yet.
    let cookie = unsafe { bpf_get_socket_cookie(raw) };

    // connect() moves CLOSE -> SYN_SENT in the caller's context: the caller owns it.
    if old == TCP_CLOSE && new == TCP_SYN_SENT {
        let owner = Owner {
            pid: (bpf_get_current_pid_tgid() >> 32) as u32,
            pad: 0,
            comm: bpf_get_current_comm().unwrap_or_default(),
        };
        let _ = OWNERS.insert(&cookie, &owner, 0);
    }

    if let Some(mut entry) = EVENTS.reserve::<Record>(0) {
        let mut record = Record::zeroed(Kind::StateChange);
        record.ts_ns = unsafe { bpf_ktime_get_boot_ns() };
        record.cookie = cookie;
        record.family = sk.family();
        record.sport = sk.sport();
        record.dport = sk.dport();
        sk.addrs(record.family, &mut record.saddr, &mut record.daddr);
        record.netns = sk.netns();
        record.old_state = old as u8;
        record.state = new as u8;
        // SAFETY: the value is copied out before the map entry can change.
        if let Some(owner) = unsafe { OWNERS.get(&cookie) } {
            record.pid = owner.pid;
            record.comm = owner.comm;
        }
        entry.write(record);
        entry.submit(0);
    }

    if new == TCP_CLOSE {
        let _ = OWNERS.remove(&cookie);
    }
    0
}
