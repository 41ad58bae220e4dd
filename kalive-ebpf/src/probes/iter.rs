//! `kalive ls`: a BPF TCP iterator that writes one
//! [`SockEntry`] per TCP socket of the reading task's network namespace.

use aya_ebpf::{
    helpers::generated::{
        bpf_get_current_pid_tgid, bpf_get_socket_cookie, bpf_ktime_get_boot_ns, bpf_ktime_get_ns,
        bpf_probe_read_kernel, bpf_seq_write,
    },
    macros::map,
    maps::PerCpuArray,
};
use kalive_common::{FileEntry, MISSING, SockEntry};

use crate::{
    emit::jiffies32,
    kernel::{Sock, layout, netns_ino, read, socket_ino},
};

/// `struct bpf_iter_meta`: the seq_file to write to, and the session
/// (an iterator's read from open to close).
#[repr(C)]
pub(crate) struct IterMeta {
    seq: u64,
    session_id: u64,
}

/// `struct bpf_iter__tcp`: each member 8 bytes.
#[repr(C)]
pub(crate) struct IterTcp {
    meta: *const IterMeta,
    sk_common: *mut core::ffi::c_void,
}

const TCP_TIME_WAIT: u8 = 6;
const TCP_NEW_SYN_RECV: u8 = 12;

/// The entry being written (168 bytes, too many for the stack beside the
/// helpers' frames), and what its namespace's values were read for.
#[repr(C)]
struct Slot {
    entry: SockEntry,
    /// The iterator session (`bpf_iter_meta.session_id`) and `struct net *`
    /// the namespace's sysctls in `entry` were read in and from: every
    /// socket of a session is in the reading task's namespace, and a new
    /// session reads them again (a sysctl may have changed since the last).
    session: u64,
    net: u64,
}

#[map]
static ENTRY: PerCpuArray<Slot> = PerCpuArray::with_max_entries(1, 0);

/// Room for a copy of a `tcp_sock` (2304 bytes on 6.18, 2200 or so on 6.1).
const COPY: usize = 4096;

/// The socket being read, copied in one read: one probe read a field was
/// most of a listing's time in the kernel (some forty a socket).
#[map]
static SOCKET: PerCpuArray<[u8; COPY]> = PerCpuArray::with_max_entries(1, 0);

/// A socket's copy.
struct Copied<'a>(&'a [u8; COPY]);

impl Copied<'_> {
    /// The `T` at offset `off`; all-zero past the copy (a member this
    /// kernel lacks, [`MISSING`], among them).
    #[inline(always)]
    fn at<T: Copy + Default>(&self, off: u32) -> T {
        let off = off as usize;
        if off > COPY - size_of::<T>() {
            return T::default();
        }
        // SAFETY: within the copy, checked above; `T` is plain data.
        unsafe { self.0.as_ptr().add(off).cast::<T>().read_unaligned() }
    }

    fn flag(&self, bit: u32) -> u8 {
        let flags: u64 = self.at(layout!(skc_flags));
        (flags >> bit & 1) as u8
    }

    /// An address of `family`, in the first 4 or 16 bytes.
    fn addr(&self, family: u16, v4: u32, v6: u32) -> [u8; 16] {
        if family == kalive_common::AF_INET6 {
            return self.at(v6);
        }
        let a: [u8; 4] = self.at(v4);
        let mut addr = [0; 16];
        addr[..4].copy_from_slice(&a);
        addr
    }
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/tcp")]
pub extern "C" fn tcp_sockets(ctx: *const IterTcp) -> i32 {
    // SAFETY: the context the kernel hands an iter/tcp program.
    let (meta, ctx_sk) = unsafe { ((*ctx).meta, (*ctx).sk_common) };
    if ctx_sk.is_null() || meta.is_null() {
        return 0;
    }
    let sk = Sock(ctx_sk as u64);
    // A TIME_WAIT socket (`inet_timewait_sock`) or a request
    // (`request_sock`) is no `tcp_sock`: nothing below is in it, and no peer
    // can go silent on it.
    let state = sk.state();
    if state == TCP_TIME_WAIT || state == TCP_NEW_SYN_RECV {
        return 0;
    }
    let (Some(slot), Some(copy)) = (ENTRY.get_ptr_mut(0), SOCKET.get_ptr_mut(0)) else {
        return 0;
    };
    // SAFETY: this CPU's slots, which no other program uses; `meta` is a
    // valid kernel pointer for the program's run.
    let (slot, copy, seq, session) =
        unsafe { (&mut *slot, &mut *copy, (*meta).seq, (*meta).session_id) };
    let size = (layout!(tcp_sock_size) as usize).min(COPY);
    // SAFETY: the helper checks the kernel address and writes at most `size`
    // bytes (<= COPY) into the copy; a fault leaves zeros.
    unsafe {
        bpf_probe_read_kernel(copy.as_mut_ptr().cast(), size as u32, sk.0 as *const _);
    }
    let c = Copied(copy);
    let net: u64 = c.at(layout!(skc_net));
    // Every socket of a session is in the reading task's namespace: its
    // sysctls are read once a session.
    let e = &mut slot.entry;
    if session != slot.session || net != slot.net {
        slot.session = session;
        slot.net = net;
        e.netns = netns_ino(net);
        e.net_keepidle = read(net, layout!(net_keepalive_time));
        e.net_keepintvl = read(net, layout!(net_keepalive_intvl));
        e.net_keepcnt = read(net, layout!(net_keepalive_probes));
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
    }
    let family: u16 = c.at(layout!(skc_family));
    let timer = layout!(keepalive_timer);
    let write_timer = layout!(write_timer);
    e.sk = sk.0;
    // The kernel makes a socket's cookie when first asked (as SO_COOKIE
    // does): the same key the stream's records carry.
    // SAFETY: `ctx_sk` is the iterator's own BTF-typed socket, not NULL.
    e.cookie = unsafe { bpf_get_socket_cookie(ctx_sk) };
    e.ino = socket_ino(c.at(layout!(sk_socket)));
    e.state = state;
    e.keepalive = c.flag(layout!(sock_keepopen_bit));
    e.probes = c.at(layout!(icsk_probes_out));
    e.keepcnt = c.at(layout!(tcp_keepalive_probes));
    e.keepidle = c.at(layout!(tcp_keepalive_time));
    e.keepintvl = c.at(layout!(tcp_keepalive_intvl));
    e.user_timeout_ms = c.at(layout!(icsk_user_timeout));
    e.now = jiffies32();
    e.rcv_tstamp = c.at(layout!(tcp_rcv_tstamp));
    e.lrcvtime = c.at(layout!(icsk_lrcvtime));
    e.timer_expires = c.at::<u64>(timer + layout!(timer_expires)) as u32;
    e.family = family;
    e.sport = c.at(layout!(inet_sport));
    e.dport = c.at(layout!(skc_dport));
    e.timer_pending = u8::from(c.at::<u64>(timer + layout!(timer_pprev)) != 0);
    e.write_timer = c.at(layout!(icsk_pending));
    e.packets_out = c.at(layout!(tcp_packets_out));
    e.saddr = c.addr(family, layout!(skc_rcv_saddr), layout!(skc_v6_rcv_saddr));
    e.daddr = c.addr(family, layout!(skc_daddr), layout!(skc_v6_daddr));
    e.write_expires = c.at::<u64>(write_timer + layout!(timer_expires)) as u32;
    e.retransmits = c.at(layout!(icsk_retransmits));
    e.backoff = c.at(layout!(icsk_backoff));
    e.syn_retries = c.at(layout!(icsk_syn_retries));
    e.orphan = c.flag(layout!(sock_dead_bit));
    e.rto = c.at(layout!(icsk_rto));
    let rto_max = layout!(icsk_rto_max);
    e.rto_max = if rto_max == MISSING { 0 } else { c.at(rto_max) };
    e.retrans_stamp = c.at(layout!(tcp_retrans_stamp));
    e.probes_tstamp = c.at(layout!(icsk_probes_tstamp));
    e.snd_wnd = c.at(layout!(tcp_snd_wnd));
    let soft: u32 = c.at(layout!(sk_err_soft));
    e.soft_error = u8::try_from(soft).unwrap_or(u8::MAX);
    let usec_bit = layout!(tcp_usec_ts_bit);
    e.usec_ts = if usec_bit == MISSING {
        0
    } else {
        (c.at::<u8>(usec_bit / 8) >> (usec_bit % 8)) & 1
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

/// `struct bpf_iter__task_file`: each member 8 bytes.
#[repr(C)]
pub(crate) struct IterTaskFile {
    meta: *const IterMeta,
    task: u64,
    fd: u64,
    file: u64,
}

/// `S_IFMT` and `S_IFSOCK` of `inode.i_mode`.
const S_IFMT: u16 = 0o170_000;
const S_IFSOCK: u16 = 0o140_000;

/// Every socket descriptor of every process, for `kalive ls`: one
/// [`FileEntry`] each (the kernel visits a thread only when its descriptor
/// table is not its process's).
#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/task_file")]
pub extern "C" fn socket_files(ctx: *const IterTaskFile) -> i32 {
    // SAFETY: the context the kernel hands an iter/task_file program.
    let (meta, task, fd, file) = unsafe { ((*ctx).meta, (*ctx).task, (*ctx).fd, (*ctx).file) };
    if task == 0 || file == 0 || meta.is_null() {
        return 0;
    }
    let inode: u64 = read(file, layout!(file_inode));
    if inode == 0 || read::<u16>(inode, layout!(inode_mode)) & S_IFMT != S_IFSOCK {
        return 0;
    }
    let entry = FileEntry {
        pid: read(task, layout!(task_tgid)),
        fd: fd as u32,
        ino: read(inode, layout!(inode_ino)),
        // SAFETY: no preconditions.
        reader: (unsafe { bpf_get_current_pid_tgid() } >> 32) as u32,
        pad: 0,
    };
    // SAFETY: `meta` is a valid kernel pointer for the program's run; the
    // seq_file it holds is the one to write to; `entry` is plain data.
    unsafe {
        bpf_seq_write(
            (*meta).seq as *mut _,
            (&raw const entry).cast(),
            size_of::<FileEntry>() as u32,
        );
    }
    0
}
