//! `kalive ls`: a BPF TCP iterator that writes one
//! [`SockEntry`] per TCP socket of the reading task's network namespace.

use aya_ebpf::{
    helpers::generated::{bpf_ktime_get_boot_ns, bpf_ktime_get_ns, bpf_seq_write},
    macros::map,
    maps::PerCpuArray,
};
use kalive_common::{MISSING, SockEntry};

use crate::{
    emit::jiffies32,
    kernel::{Sock, layout, netns_ino, read},
};

/// `struct bpf_iter_meta`: the seq_file to write to first.
#[repr(C)]
pub(crate) struct IterMeta {
    seq: u64,
}

/// `struct bpf_iter__tcp`: each member 8 bytes.
#[repr(C)]
pub(crate) struct IterTcp {
    meta: *const IterMeta,
    sk_common: u64,
}

const TCP_TIME_WAIT: u8 = 6;
const TCP_NEW_SYN_RECV: u8 = 12;

/// The entry being written: 168 bytes, too many for the stack beside the
/// helpers' frames.
#[map]
static ENTRY: PerCpuArray<SockEntry> = PerCpuArray::with_max_entries(1, 0);

#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/tcp")]
pub extern "C" fn tcp_sockets(ctx: *const IterTcp) -> i32 {
    // SAFETY: the context the kernel hands an iter/tcp program.
    let (meta, sk) = unsafe { ((*ctx).meta, (*ctx).sk_common) };
    if sk == 0 || meta.is_null() {
        return 0;
    }
    let sk = Sock(sk);
    // A TIME_WAIT socket (`inet_timewait_sock`) or a request
    // (`request_sock`) is no `tcp_sock`: nothing below is in it, and no peer
    // can go silent on it.
    let state = sk.state();
    if state == TCP_TIME_WAIT || state == TCP_NEW_SYN_RECV {
        return 0;
    }
    let Some(e) = ENTRY.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's slot, which no other program uses; `meta` is a valid
    // kernel pointer for the program's run.
    let (e, seq) = unsafe { (&mut *e, (*meta).seq) };
    let net = sk.net();
    let timer = sk.keepalive_timer();
    let family = sk.family();
    e.sk = sk.0;
    e.cookie = sk.cookie();
    e.ino = sk.ino();
    e.netns = netns_ino(net);
    e.state = state;
    e.keepalive = u8::from(sk.keepalive_on());
    e.probes = sk.probes_out();
    e.keepcnt = read(sk.0, layout!(tcp_keepalive_probes));
    e.keepidle = read(sk.0, layout!(tcp_keepalive_time));
    e.keepintvl = read(sk.0, layout!(tcp_keepalive_intvl));
    e.net_keepidle = read(net, layout!(net_keepalive_time));
    e.net_keepintvl = read(net, layout!(net_keepalive_intvl));
    e.net_keepcnt = read(net, layout!(net_keepalive_probes));
    e.user_timeout_ms = sk.user_timeout_ms();
    e.now = jiffies32();
    e.rcv_tstamp = sk.rcv_tstamp();
    e.lrcvtime = read(sk.0, layout!(icsk_lrcvtime));
    e.timer_expires = read::<u64>(timer, layout!(timer_expires)) as u32;
    e.family = family;
    e.sport = sk.sport();
    e.dport = sk.dport();
    e.timer_pending = u8::from(read::<u64>(timer, layout!(timer_pprev)) != 0);
    e.write_timer = sk.pending();
    e.packets_out = read(sk.0, layout!(tcp_packets_out));
    e.saddr = [0; 16];
    e.daddr = [0; 16];
    sk.addrs(family, &mut e.saddr, &mut e.daddr);
    e.write_expires = read::<u64>(
        sk.0 + u64::from(layout!(write_timer)),
        layout!(timer_expires),
    ) as u32;
    e.retransmits = read(sk.0, layout!(icsk_retransmits));
    e.backoff = sk.backoff();
    e.syn_retries = read(sk.0, layout!(icsk_syn_retries));
    e.orphan = u8::from(sk.orphan());
    e.net_retries2 = read(net, layout!(net_tcp_retries2));
    e.net_orphan_retries = read(net, layout!(net_tcp_orphan_retries));
    e.net_syn_retries = read(net, layout!(net_tcp_syn_retries));
    // Members some kernels lack.
    let linear = layout!(net_tcp_syn_linear_timeouts);
    e.net_syn_linear = if linear == MISSING {
        0
    } else {
        read(net, linear)
    };
    e.rto = read(sk.0, layout!(icsk_rto));
    let rto_max = layout!(icsk_rto_max);
    e.rto_max = if rto_max == MISSING {
        0
    } else {
        read(sk.0, rto_max)
    };
    e.retrans_stamp = read(sk.0, layout!(tcp_retrans_stamp));
    e.probes_tstamp = read(sk.0, layout!(icsk_probes_tstamp));
    e.snd_wnd = read(sk.0, layout!(tcp_snd_wnd));
    let soft: u32 = read(sk.0, layout!(sk_err_soft));
    e.soft_error = u8::try_from(soft).unwrap_or(u8::MAX);
    let usec_bit = layout!(tcp_usec_ts_bit);
    e.usec_ts = if usec_bit == MISSING {
        0
    } else {
        (read::<u8>(sk.0, usec_bit / 8) >> (usec_bit % 8)) & 1
    };
    // SAFETY: no preconditions.
    e.mono_us = unsafe { bpf_ktime_get_ns() } / 1000;
    // SAFETY: no preconditions.
    e.boot_ns = unsafe { bpf_ktime_get_boot_ns() };
    // SAFETY: the seq_file the kernel handed this run; `e` is plain data.
    unsafe {
        bpf_seq_write(
            seq as *mut _,
            (&raw const *e).cast(),
            size_of::<SockEntry>() as u32,
        );
    }
    0
}
