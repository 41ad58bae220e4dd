//! Building and sending [`Record`]s: the part every producer shares.

use aya_ebpf::helpers::{
    bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_jiffies64, bpf_ktime_get_boot_ns,
};
use kalive_common::{FLAG_KEEPALIVE, FLAG_USER_TIMEOUT, IDLE_NONE, Kind, Owner, Record};

use crate::{
    kernel::{Sock, netns_ino},
    maps::{EVENTS, LOST, OWNERS},
};

/// TCP states in which the socket has a peer whose silence can be measured.
fn connected(state: u8) -> bool {
    // ESTABLISHED, FIN_WAIT1, FIN_WAIT2, CLOSE_WAIT, LAST_ACK, CLOSING
    matches!(state, 1 | 4 | 5 | 8 | 9 | 11)
}

/// Jiffies now, truncated like the kernel's `tcp_jiffies32`.
pub(crate) fn jiffies32() -> u32 {
    // SAFETY: no preconditions.
    unsafe { bpf_jiffies64() as u32 }
}

/// The current task's process, as an owner.
pub(crate) fn current_owner() -> Owner {
    Owner {
        pid: (bpf_get_current_pid_tgid() >> 32) as u32,
        pad: 0,
        comm: bpf_get_current_comm().unwrap_or_default(),
    }
}

/// Remembers `owner` as the owner of `sk`.
pub(crate) fn learn_owner(sk: Sock, owner: &Owner) {
    let _ = OWNERS.insert(&sk.0, owner, 0);
}

pub(crate) fn forget_owner(sk: Sock) {
    let _ = OWNERS.remove(&sk.0);
}

/// Sends a `kind` record about `sk`, filled with everything the socket says
/// about itself, then adjusted by `extra`. `cookie` is 0 when the hook could not
/// ask the kernel to assign one; the socket's own field is used then.
#[inline(always)]
pub(crate) fn emit(kind: Kind, sk: Sock, cookie: u64, extra: impl FnOnce(&mut Record)) {
    let Some(mut entry) = EVENTS.reserve::<Record>(0) else {
        count_lost();
        return;
    };
    let r = entry.write(Record::zeroed(kind));
    // SAFETY: no preconditions.
    r.ts_ns = unsafe { bpf_ktime_get_boot_ns() };
    r.cookie = if cookie != 0 { cookie } else { sk.cookie() };
    r.family = sk.family();
    r.state = sk.state();
    r.sport = sk.sport();
    r.dport = sk.dport();
    sk.addrs(r.family, &mut r.saddr, &mut r.daddr);
    let net = sk.net();
    r.netns = netns_ino(net);
    r.ino = sk.ino();
    r.probes = sk.probes_out();
    r.backoff = sk.backoff();
    let (idle, intvl, cnt) = sk.keepalive_config(net);
    r.keepidle = idle;
    r.keepintvl = intvl;
    r.keepcnt = cnt;
    r.user_timeout_ms = sk.user_timeout_ms();
    if r.user_timeout_ms != 0 {
        r.flags |= FLAG_USER_TIMEOUT;
    }
    if sk.keepalive_on() {
        r.flags |= FLAG_KEEPALIVE;
    }
    r.idle = if connected(r.state) {
        jiffies32().wrapping_sub(sk.rcv_tstamp())
    } else {
        IDLE_NONE
    };
    r.snd_wnd = sk.snd_wnd();
    // SAFETY: the value is copied out at once.
    if let Some(owner) = unsafe { OWNERS.get(&sk.0) } {
        r.pid = owner.pid;
        r.comm = owner.comm;
    }
    extra(r);
    entry.submit(0);
}

fn count_lost() {
    if let Some(lost) = LOST.get_ptr_mut(0) {
        // SAFETY: this CPU's slot. Not atomic (the BPF target has no atomic
        // read-modify-write in Rust's core): only a failed reservation in a
        // program nested from an interrupt at this very instruction could be
        // miscounted.
        unsafe { *lost += 1 };
    }
}
