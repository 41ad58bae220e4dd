//! Reading kernel structures at offsets the loader discovered.
//!
//! Kernel pointers are plain `u64` addresses here and every read goes through
//! `bpf_probe_read_kernel`: the same code then works whether a hook hands over a
//! BTF-typed pointer (tp_btf, fentry) or a bare number (raw_tp, kprobe).

use aya_ebpf::helpers::{
    bpf_get_current_task, bpf_probe_read_kernel_buf,
    generated::bpf_probe_read_kernel as bpf_probe_read_kernel_raw,
};
use kalive_common::{Layout, MISSING, Settings};

use crate::emit::jiffies32;

/// Filled in by the loader from the running kernel; see [`Layout`].
#[unsafe(no_mangle)]
pub(crate) static LAYOUT: Layout = zeroed_layout();

/// Filled in by the loader from the command line; see [`Settings`].
#[unsafe(no_mangle)]
pub(crate) static SETTINGS: Settings = Settings {
    state_changes: 0,
    filter_pids: 0,
    filter_ports: 0,
    timer_start_does: 0,
    live_acks: 0,
    test_skip_callbacks: 0,
    test_defer_callback_end: 0,
    test_skip_write_callbacks: 0,
    test_skip_probing_callbacks: 0,
    test_skip_probing_run: 0,
    pad: [0; 6],
    started_ns: 0,
};

/// The placeholder the loader always overrides.
const fn zeroed_layout() -> Layout {
    // SAFETY: `Layout` is integers only; all-zero is a valid value.
    unsafe { core::mem::zeroed() }
}

/// One value from [`LAYOUT`]. The volatile read keeps the compiler from folding
/// the placeholder into the code; the verifier still sees a constant, because the
/// global lives in a frozen read-only map.
macro_rules! layout {
    ($field:ident) => {
        // SAFETY: reading a field of a static.
        unsafe { core::ptr::read_volatile(&raw const $crate::kernel::LAYOUT.$field) }
    };
}
pub(crate) use layout;

/// One value from [`SETTINGS`].
macro_rules! setting {
    ($field:ident) => {
        // SAFETY: reading a field of a static.
        unsafe { core::ptr::read_volatile(&raw const $crate::kernel::SETTINGS.$field) }
    };
}
pub(crate) use setting;

/// Reads a `T` at `addr + off`; all-zero when the read faults.
///
/// The helper's result is not checked: on a fault it zeroes the destination
/// itself (`bpf_probe_read_kernel_common()`), so the value is right either way,
/// and the verifier is spared a branch per read (a path to explore for each).
#[inline(always)]
pub(crate) fn read<T: Default>(addr: u64, off: u32) -> T {
    let mut value = T::default();
    // SAFETY: the helper checks the kernel address and writes exactly
    // `size_of::<T>()` bytes of plain data into `value` (zeros on a fault).
    unsafe {
        bpf_probe_read_kernel_raw(
            (&raw mut value).cast(),
            size_of::<T>() as u32,
            (addr + u64::from(off)) as *const core::ffi::c_void,
        );
    }
    value
}

/// `x` as a plain number to the verifier. A BTF-typed pointer (a tp_btf or
/// fentry argument) stays one through arithmetic; copied by the helper, it
/// is a number, which a global function takes (6.1's verifier refuses it
/// any pointer but the context).
#[inline(always)]
pub(crate) fn plain(x: u64) -> u64 {
    let copy = x;
    read(&raw const copy as u64, 0)
}

/// Zeroes `*p` eight bytes at a time. `write_bytes` or `Default` on a record or
/// map value becomes a call to `memset`, a function of the object's own: on
/// kernels before 6.4 the verifier's precision tracking gives up at any such
/// call it meets on its way back, and marks every number precise, so that
/// no two paths through the rest of the program look alike (6.1 took 11 s on
/// the program that begins keepalive callbacks). The stores are volatile so
/// that the compiler does not make them a `memset` again.
///
/// # Safety
/// `p` is valid for writes of a `T`, and all-zero is a valid `T`.
#[inline(always)]
pub(crate) unsafe fn zero<T>(p: *mut T) {
    const { assert!(size_of::<T>() % 8 == 0 && align_of::<T>() >= 8) };
    let words = p.cast::<u64>();
    let mut i = 0;
    while i < size_of::<T>() / 8 {
        // SAFETY: within `*p`, aligned.
        unsafe { words.add(i).write_volatile(0) };
        i += 1;
    }
}

/// Copies a command name as two words (see [`zero`]: a `[u8; 16]`
/// assignment between maps became a `memmove` call).
#[inline(always)]
pub(crate) fn copy_comm(to: &mut [u8; 16], from: &[u8; 16]) {
    let (to, from) = (to.as_mut_ptr().cast::<u64>(), from.as_ptr().cast::<u64>());
    // SAFETY: 16 bytes each; unaligned reads and writes, volatile for the
    // reason above.
    unsafe {
        to.write_volatile(from.read_unaligned());
        to.add(1).write_volatile(from.add(1).read_unaligned());
    }
}

/// The inode number behind `struct socket *socket`, 0 for none (an orphan).
pub(crate) fn socket_ino(socket: u64) -> u64 {
    if socket == 0 {
        return 0;
    }
    let file: u64 = read(socket, layout!(socket_file));
    if file == 0 {
        return 0;
    }
    let inode: u64 = read(file, layout!(file_inode));
    if inode == 0 {
        return 0;
    }
    read(inode, layout!(inode_ino))
}

/// A `struct sock *` (which is also the `inet_connection_sock` and `tcp_sock`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sock(pub(crate) u64);

impl Sock {
    /// The socket whose keepalive timer is `timer`.
    pub(crate) fn of_keepalive_timer(timer: u64) -> Self {
        Self(timer - u64::from(layout!(keepalive_timer)))
    }

    /// Its keepalive timer (`sk_timer`).
    pub(crate) fn keepalive_timer(self) -> u64 {
        self.0 + u64::from(layout!(keepalive_timer))
    }

    /// The socket whose write timer (`icsk_retransmit_timer`) is `timer`.
    pub(crate) fn of_write_timer(timer: u64) -> Self {
        Self(timer - u64::from(layout!(write_timer)))
    }

    /// A TCP socket: `IPPROTO_TCP` and `SOCK_STREAM` (a raw socket may carry
    /// `IPPROTO_TCP` too, but is no `tcp_sock`).
    pub(crate) fn is_tcp(self) -> bool {
        read::<u16>(self.0, layout!(sk_protocol)) == kalive_common::IPPROTO_TCP
            && read::<u16>(self.0, layout!(sk_type)) == SOCK_STREAM
    }

    pub(crate) fn family(self) -> u16 {
        read(self.0, layout!(skc_family))
    }

    pub(crate) fn state(self) -> u8 {
        read(self.0, layout!(skc_state))
    }

    /// Local port, network byte order.
    pub(crate) fn sport(self) -> u16 {
        read(self.0, layout!(inet_sport))
    }

    /// Remote port, network byte order.
    pub(crate) fn dport(self) -> u16 {
        read(self.0, layout!(skc_dport))
    }

    /// Fills `saddr`/`daddr` for the socket's family, reading straight into
    /// them (no copy through the stack).
    pub(crate) fn addrs(self, family: u16, saddr: &mut [u8; 16], daddr: &mut [u8; 16]) {
        let (s, d, len) = if family == kalive_common::AF_INET6 {
            (layout!(skc_v6_rcv_saddr), layout!(skc_v6_daddr), 16)
        } else {
            (layout!(skc_rcv_saddr), layout!(skc_daddr), 4)
        };
        // SAFETY: the helper checks the kernel addresses; a fault leaves zeros.
        unsafe {
            let _ =
                bpf_probe_read_kernel_buf((self.0 + u64::from(s)) as *const u8, &mut saddr[..len]);
            let _ =
                bpf_probe_read_kernel_buf((self.0 + u64::from(d)) as *const u8, &mut daddr[..len]);
        }
    }

    /// The cookie, if the kernel assigned one already (reading cannot assign it).
    pub(crate) fn cookie(self) -> u64 {
        read(self.0, layout!(skc_cookie))
    }

    /// `struct net *`
    pub(crate) fn net(self) -> u64 {
        read(self.0, layout!(skc_net))
    }

    pub(crate) fn err(self) -> u32 {
        read(self.0, layout!(sk_err))
    }

    fn flag(self, bit: u32) -> bool {
        let flags: u64 = read(self.0, layout!(skc_flags));
        flags >> bit & 1 == 1
    }

    /// `SO_KEEPALIVE` is on (`SOCK_KEEPOPEN`).
    pub(crate) fn keepalive_on(self) -> bool {
        self.flag(layout!(sock_keepopen_bit))
    }

    /// Orphaned: the application closed it (`SOCK_DEAD`).
    pub(crate) fn orphan(self) -> bool {
        self.flag(layout!(sock_dead_bit))
    }

    /// Inode of the socket (`socket:[N]`), 0 for an orphan.
    pub(crate) fn ino(self) -> u64 {
        socket_ino(read(self.0, layout!(sk_socket)))
    }

    pub(crate) fn probes_out(self) -> u8 {
        read(self.0, layout!(icsk_probes_out))
    }

    /// `icsk_pending`: which write timer is armed (`ICSK_TIME_*`).
    pub(crate) fn pending(self) -> u8 {
        read(self.0, layout!(icsk_pending))
    }

    pub(crate) fn backoff(self) -> u8 {
        read(self.0, layout!(icsk_backoff))
    }

    /// Jiffies when zero-window probing started, 0 when not probing.
    pub(crate) fn probes_tstamp(self) -> u32 {
        read(self.0, layout!(icsk_probes_tstamp))
    }

    /// `TCP_USER_TIMEOUT` in milliseconds, 0 when unset.
    pub(crate) fn user_timeout_ms(self) -> u32 {
        read(self.0, layout!(icsk_user_timeout))
    }

    /// Whether the kernel will take `seg`, a bare ACK arriving on this
    /// established socket, as an acknowledgment (and so reset
    /// `icsk_probes_out`): in its receive window (`tcp_sequence()`), not failing
    /// PAWS, acking nothing older than `snd_una` nor newer than `snd_nxt`
    /// (`tcp_ack()`). Options other than a timestamp leave it unknown: false.
    pub(crate) fn accepts(self, seg: &Segment) -> bool {
        if seg.other_options {
            return false;
        }
        let una: u32 = read(self.0, layout!(tcp_snd_una));
        let nxt: u32 = read(self.0, layout!(tcp_snd_nxt));
        // una <= ack <= nxt, in sequence space.
        if (seg.ack.wrapping_sub(una) as i32) < 0 || (nxt.wrapping_sub(seg.ack) as i32) < 0 {
            return false;
        }
        let rcv_nxt: u32 = read(self.0, layout!(tcp_rcv_nxt));
        let wup: u32 = read(self.0, layout!(tcp_rcv_wup));
        let wnd: u32 = read(self.0, layout!(tcp_rcv_wnd));
        let end = seg.seq.wrapping_add(u32::from(seg.flags & Segment::FIN));
        // The window's right edge: rcv_nxt + tcp_receive_window().
        let window = wup.wrapping_add(wnd).wrapping_sub(rcv_nxt);
        let right = if (window as i32) < 0 {
            rcv_nxt
        } else {
            wup.wrapping_add(wnd)
        };
        if (end.wrapping_sub(wup) as i32) < 0 || (right.wrapping_sub(seg.seq) as i32) < 0 {
            return false;
        }
        // PAWS (tcp_paws_check()): older than the last timestamp by more than
        // one; a ts_recent of 0 is not checked.
        if seg.timestamped {
            let recent: u32 = read(self.0, layout!(tcp_ts_recent));
            if recent != 0 && recent.wrapping_sub(seg.tsval) as i32 > 1 {
                return false;
            }
        }
        true
    }

    /// Whether the peer has been silent for the socket's keepalive idle time
    /// or longer, by the kernel's measure (`keepalive_time_elapsed()`): what
    /// `tcp_keepalive_timer()` asks before it probes.
    pub(crate) fn silent_for_keepidle(self) -> bool {
        let (idle, _, _) = self.keepalive_config(self.net());
        jiffies32().wrapping_sub(self.last_heard()) >= idle
    }

    /// When the peer was last heard from (jiffies): the later of the last
    /// ACK (`rcv_tstamp`) and the last segment (`icsk_ack.lrcvtime`), as
    /// `keepalive_time_elapsed()` counts.
    pub(crate) fn last_heard(self) -> u32 {
        let ack = self.rcv_tstamp();
        let segment: u32 = read(self.0, layout!(icsk_lrcvtime));
        if (segment.wrapping_sub(ack) as i32) > 0 {
            segment
        } else {
            ack
        }
    }

    /// Segments the socket sent (`segs_out`), and those with data
    /// (`data_segs_out`): the others are keepalive probes, bare ACKs, window
    /// updates.
    pub(crate) fn segs_out(self) -> (u32, u32) {
        (
            read(self.0, layout!(tcp_segs_out)),
            read(self.0, layout!(tcp_data_segs_out)),
        )
    }

    /// Segments the socket received without data: ACKs, such as the answers
    /// to keepalive probes (`segs_in - data_segs_in`).
    pub(crate) fn bare_segs_in(self) -> u32 {
        let all: u32 = read(self.0, layout!(tcp_segs_in));
        let data: u32 = read(self.0, layout!(tcp_data_segs_in));
        all.wrapping_sub(data)
    }

    /// `tcp_sock.rcv_nxt`: the next sequence number expected from the peer.
    pub(crate) fn rcv_nxt(self) -> u32 {
        read(self.0, layout!(tcp_rcv_nxt))
    }

    /// `tcp_sock.rcv_tstamp`: jiffies of the last ACK from the peer.
    pub(crate) fn rcv_tstamp(self) -> u32 {
        read(self.0, layout!(tcp_rcv_tstamp))
    }

    pub(crate) fn snd_wnd(self) -> u32 {
        read(self.0, layout!(tcp_snd_wnd))
    }

    /// Segments in flight (`packets_out`).
    pub(crate) fn packets_out(self) -> u32 {
        read(self.0, layout!(tcp_packets_out))
    }

    /// `icsk_retransmits`: retransmissions in this episode.
    pub(crate) fn retransmits(self) -> u8 {
        read(self.0, layout!(icsk_retransmits))
    }

    /// `icsk_syn_retries`: `TCP_SYNCNT`, 0 for the namespace's sysctl.
    pub(crate) fn syn_retries(self) -> u8 {
        read(self.0, layout!(icsk_syn_retries))
    }

    /// Milliseconds since `retrans_stamp` (the episode's first transmission
    /// retransmitted; a connect's first SYN) on the TCP clock, if it is set.
    pub(crate) fn since_retrans_stamp_ms(self) -> Option<u32> {
        let stamp: u32 = read(self.0, layout!(tcp_retrans_stamp));
        if stamp == 0 {
            return None;
        }
        // SAFETY: no preconditions. CLOCK_MONOTONIC: the TCP clock.
        let now_ns = unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() };
        let bit = layout!(tcp_usec_ts_bit);
        let usec = bit != MISSING && (read::<u8>(self.0, bit / 8) >> (bit % 8)) & 1 == 1;
        Some(if usec {
            ((now_ns / 1000) as u32).wrapping_sub(stamp) / 1000
        } else {
            ((now_ns / 1_000_000) as u32).wrapping_sub(stamp)
        })
    }

    /// Effective (idle, interval, count): the socket's value, or the namespace's
    /// sysctl when the socket has none (`keepalive_time_when()` and friends).
    pub(crate) fn keepalive_config(self, net: u64) -> (u32, u32, u8) {
        let mut idle: u32 = read(self.0, layout!(tcp_keepalive_time));
        let mut intvl: u32 = read(self.0, layout!(tcp_keepalive_intvl));
        let mut cnt: u8 = read(self.0, layout!(tcp_keepalive_probes));
        if net != 0 {
            if idle == 0 {
                idle = read(net, layout!(net_keepalive_time));
            }
            if intvl == 0 {
                intvl = read(net, layout!(net_keepalive_intvl));
            }
            if cnt == 0 {
                cnt = read(net, layout!(net_keepalive_probes));
            }
        }
        (idle, intvl, cnt)
    }
}

const SOCK_STREAM: u16 = 1;

/// `icsk_pending` while the persist timer probes a zero window.
pub(crate) const ICSK_TIME_PROBE0: u8 = 3;

/// `net->ns.inum`
pub(crate) fn netns_ino(net: u64) -> u32 {
    if net == 0 {
        return 0;
    }
    read(net, layout!(net_ns_inum))
}

/// The current process's command name: its main thread's, as `ps` shows it
/// (a worker thread may have renamed itself).
pub(crate) fn current_process_comm() -> [u8; 16] {
    // SAFETY: no preconditions; returns the current task's address.
    let task = unsafe { bpf_get_current_task() };
    let leader: u64 = read(task, layout!(task_group_leader));
    read(if leader != 0 { leader } else { task }, layout!(task_comm))
}

/// Whether the current task is the last live thread of its process, as it
/// exits (`signal->live` has dropped to 0).
pub(crate) fn current_process_dead() -> bool {
    // SAFETY: no preconditions; returns the current task's address.
    let task = unsafe { bpf_get_current_task() };
    let signal: u64 = read(task, layout!(task_signal));
    signal != 0 && read::<i32>(signal, layout!(signal_live)) == 0
}

/// The socket behind the current task's descriptor `fd`, if it is one:
/// `current->files->fdt->fd[fd]->private_data->sk`.
pub(crate) fn sock_of_fd(fd: u32) -> Option<Sock> {
    // SAFETY: no preconditions; returns the current task's address.
    let task = unsafe { bpf_get_current_task() };
    let files: u64 = read(task, layout!(task_files));
    if files == 0 {
        return None;
    }
    let fdt: u64 = read(files, layout!(files_fdt));
    if fdt == 0 {
        return None;
    }
    let max_fds: u32 = read(fdt, layout!(fdt_max_fds));
    if fd >= max_fds {
        return None;
    }
    let array: u64 = read(fdt, layout!(fdt_fd));
    let file: u64 = read(array + u64::from(fd) * 8, 0);
    if file == 0 {
        return None;
    }
    let socket: u64 = read(file, layout!(file_private_data));
    if socket == 0 {
        return None;
    }
    let sk: u64 = read(socket, layout!(socket_sk));
    (sk != 0).then_some(Sock(sk))
}

/// TCP header flags of a received segment, and whether it carries data.
#[derive(Clone, Copy)]
pub(crate) struct Segment {
    pub(crate) flags: u8,
    pub(crate) payload: bool,
    pub(crate) seq: u32,
    pub(crate) ack: u32,
    /// Whether it has a timestamp in the aligned form every stack sends (`NOP
    /// NOP TS` first), and its TSval. (Not an `Option`: `None` leaves the
    /// value's register unset, which the verifier refuses to copy.)
    pub(crate) timestamped: bool,
    pub(crate) tsval: u32,
    /// Options other than that: what the kernel will make of the segment is not
    /// known here.
    pub(crate) other_options: bool,
}

impl Segment {
    pub(crate) const FIN: u8 = 0x01;
    pub(crate) const SYN: u8 = 0x02;
    pub(crate) const RST: u8 = 0x04;
    pub(crate) const ACK: u8 = 0x10;

    /// Reads the segment in `skb` (`tcp_hdr(skb)`, as `tcp_probe` does).
    pub(crate) fn of(skb: u64) -> Self {
        let head: u64 = read(skb, layout!(skb_head));
        let offset: u16 = read(skb, layout!(skb_transport_header));
        let th = head + u64::from(offset);
        // Bytes 4-11: sequence and acknowledgment numbers; 12: data offset in
        // 32-bit words (high nibble); 13: flags.
        let [seq, ack, word]: [u32; 3] = read(th, 4);
        let [doff, flags, ..] = word.to_ne_bytes();
        let header = u32::from(doff >> 4) * 4;
        let len: u32 = read(skb, layout!(skb_len));
        let (mut timestamped, mut tsval, mut other_options) = (false, 0, false);
        if header > 20 {
            let [kind, value]: [u32; 2] = read(th, 20);
            // NOP NOP TIMESTAMP(8) length 10, in network order.
            if kind == u32::from_ne_bytes([1, 1, 8, 10]) && header >= 32 {
                timestamped = true;
                tsval = u32::from_be(value);
            } else {
                other_options = true;
            }
        }
        Self {
            flags,
            payload: len > header,
            seq: u32::from_be(seq),
            ack: u32::from_be(ack),
            timestamped,
            tsval,
            other_options,
        }
    }
}

/// `timer_list.function`
pub(crate) fn timer_function(timer: u64) -> u64 {
    read(timer, layout!(timer_function))
}

/// `timer_list.expires`, jiffies.
pub(crate) fn timer_expires(timer: u64) -> u64 {
    read(timer, layout!(timer_expires))
}
