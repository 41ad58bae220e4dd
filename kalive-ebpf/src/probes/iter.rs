//! `kalive ls` (work in progress): a BPF TCP iterator that writes one
//! [`SockEntry`] per TCP socket of the reading task's network namespace.

use aya_ebpf::helpers::generated::bpf_seq_write;
use kalive_common::SockEntry;

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

#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/tcp")]
pub extern "C" fn tcp_sockets(ctx: *const IterTcp) -> i32 {
    // SAFETY: the context the kernel hands an iter/tcp program.
    let (meta, sk) = unsafe { ((*ctx).meta, (*ctx).sk_common) };
    if sk == 0 || meta.is_null() {
        return 0;
    }
    // SAFETY: meta is a valid kernel pointer for the program's run.
    let seq = unsafe { (*meta).seq };
    let sk = Sock(sk);
    let net = sk.net();
    let (idle, intvl, cnt) = (
        read::<u32>(sk.0, layout!(tcp_keepalive_time)),
        read::<u32>(sk.0, layout!(tcp_keepalive_intvl)),
        read::<u8>(sk.0, layout!(tcp_keepalive_probes)),
    );
    let timer = sk.keepalive_timer();
    let family = sk.family();
    let mut entry = SockEntry {
        sk: sk.0,
        cookie: sk.cookie(),
        ino: sk.ino(),
        netns: netns_ino(net),
        state: sk.state(),
        keepalive: u8::from(sk.keepalive_on()),
        probes: sk.probes_out(),
        keepcnt: cnt,
        keepidle: idle,
        keepintvl: intvl,
        net_keepidle: read(net, layout!(net_keepalive_time)),
        net_keepintvl: read(net, layout!(net_keepalive_intvl)),
        net_keepcnt: read(net, layout!(net_keepalive_probes)),
        pad: [0; 3],
        user_timeout_ms: sk.user_timeout_ms(),
        now: jiffies32(),
        rcv_tstamp: sk.rcv_tstamp(),
        lrcvtime: read(sk.0, layout!(icsk_lrcvtime)),
        timer_expires: read::<u64>(timer, layout!(timer_expires)) as u32,
        family,
        sport: sk.sport(),
        dport: sk.dport(),
        timer_pending: u8::from(read::<u64>(timer, layout!(timer_pprev)) != 0),
        write_timer: sk.pending(),
        packets_out: read(sk.0, layout!(tcp_packets_out)),
        saddr: [0; 16],
        daddr: [0; 16],
        write_expires: read::<u64>(
            sk.0 + u64::from(layout!(write_timer)),
            layout!(timer_expires),
        ) as u32,
    };
    let (saddr, daddr) = (&mut entry.saddr, &mut entry.daddr);
    sk.addrs(family, saddr, daddr);
    // SAFETY: the seq_file the kernel handed this run; `entry` is plain data.
    unsafe {
        bpf_seq_write(
            seq as *mut _,
            (&raw const entry).cast(),
            size_of::<SockEntry>() as u32,
        );
    }
    0
}
