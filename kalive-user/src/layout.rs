//! Everything the programs need to know about the running kernel, gathered into
//! one [`Layout`]: structure offsets from BTF, function addresses from kallsyms,
//! tracepoint formats from tracefs. A missing piece is a clear error naming it.

use std::path::Path;

use anyhow::{Context as _, Result};
use kalive_common::{Layout, MISSING};

use crate::{
    btf::KernelBtf,
    kernel::{self, Symbols},
};

const PTR: usize = size_of::<usize>();

/// `hz` is the kernel's HZ.
///
/// Longer than most functions on purpose: one line per field of [`Layout`],
/// in its order, so that a field missing here fails to compile right here.
///
/// # Errors
/// When the running kernel lacks a structure member or tracepoint kalive
/// reads, or a member changed size.
pub fn discover(btf: &KernelBtf, tracefs: &Path, hz: u32) -> Result<Layout> {
    let sock = |path: &str, size| btf.offset("sock", path, size);
    let icsk = |path: &str, size| btf.offset("inet_connection_sock", path, size);
    let tcp = |path: &str, size| btf.offset("tcp_sock", path, size);
    let net = |path: &str, size| btf.offset("net", path, size);
    let syscall = |tp: &str, field: &str| kernel::tracepoint_field(tracefs, "syscalls", tp, field);

    let keepalive_timer = keepalive_timer(btf)?;

    Ok::<_, anyhow::Error>(Layout {
        // From kallsyms, by `add_timer_fns()`; `kalive ls` needs none.
        keepalive_timer_fn: 0,
        write_timer_fn: 0,
        hz,

        skc_family: sock("__sk_common.skc_family", 2)?,
        skc_state: sock("__sk_common.skc_state", 1)?,
        inet_sport: btf.offset("inet_sock", "inet_sport", 2)?,
        skc_dport: sock("__sk_common.skc_dport", 2)?,
        skc_rcv_saddr: sock("__sk_common.skc_rcv_saddr", 4)?,
        skc_daddr: sock("__sk_common.skc_daddr", 4)?,
        skc_v6_rcv_saddr: sock("__sk_common.skc_v6_rcv_saddr", 16)?,
        skc_v6_daddr: sock("__sk_common.skc_v6_daddr", 16)?,
        skc_net: sock("__sk_common.skc_net", PTR)?,
        skc_cookie: sock("__sk_common.skc_cookie", 8)?,
        skc_flags: sock("__sk_common.skc_flags", PTR)?,
        sk_protocol: sock("sk_protocol", 2)?,
        sk_type: sock("sk_type", 2)?,
        sk_err: sock("sk_err", 4)?,
        sk_socket: sock("sk_socket", PTR)?,
        keepalive_timer,
        sock_keepopen_bit: btf.enum_value("sock_flags", "SOCK_KEEPOPEN")?,
        sock_dead_bit: btf.enum_value("sock_flags", "SOCK_DEAD")?,

        icsk_probes_out: icsk("icsk_probes_out", 1)?,
        icsk_backoff: icsk("icsk_backoff", 1)?,
        icsk_pending: icsk("icsk_pending", 1)?,
        icsk_user_timeout: icsk("icsk_user_timeout", 4)?,
        icsk_probes_tstamp: icsk("icsk_probes_tstamp", 4)?,
        icsk_lrcvtime: icsk("icsk_ack.lrcvtime", 4)?,
        sk_err_soft: sock("sk_err_soft", 4)?,
        write_timer: btf
            .field("inet_connection_sock", "icsk_retransmit_timer")?
            .offset,

        tcp_sock_size: btf.struct_size("tcp_sock")?,
        tcp_keepalive_time: tcp("keepalive_time", 4)?,
        tcp_keepalive_intvl: tcp("keepalive_intvl", 4)?,
        tcp_keepalive_probes: tcp("keepalive_probes", 1)?,
        tcp_rcv_tstamp: tcp("rcv_tstamp", 4)?,
        tcp_snd_wnd: tcp("snd_wnd", 4)?,
        tcp_snd_una: tcp("snd_una", 4)?,
        tcp_snd_nxt: tcp("snd_nxt", 4)?,
        tcp_rcv_nxt: tcp("rcv_nxt", 4)?,
        tcp_rcv_wup: tcp("rcv_wup", 4)?,
        tcp_rcv_wnd: tcp("rcv_wnd", 4)?,
        tcp_ts_recent: tcp("rx_opt.ts_recent", 4)?,
        tcp_segs_out: tcp("segs_out", 4)?,
        tcp_data_segs_out: tcp("data_segs_out", 4)?,
        tcp_segs_in: tcp("segs_in", 4)?,
        tcp_data_segs_in: tcp("data_segs_in", 4)?,
        tcp_packets_out: tcp("packets_out", 4)?,
        icsk_retransmits: icsk("icsk_retransmits", 1)?,
        icsk_rto: icsk("icsk_rto", 4)?,
        icsk_rto_max: icsk("icsk_rto_max", 4).unwrap_or(MISSING),
        icsk_syn_retries: icsk("icsk_syn_retries", 1)?,
        tcp_retrans_stamp: tcp("retrans_stamp", 4)?,
        tcp_usec_ts_bit: btf.bit_offset("tcp_sock", "tcp_usec_ts").unwrap_or(MISSING),

        net_ns_inum: net("ns.inum", 4)?,
        net_keepalive_time: net("ipv4.sysctl_tcp_keepalive_time", 4)?,
        net_keepalive_intvl: net("ipv4.sysctl_tcp_keepalive_intvl", 4)?,
        net_keepalive_probes: net("ipv4.sysctl_tcp_keepalive_probes", 1)?,
        net_tcp_retries2: net("ipv4.sysctl_tcp_retries2", 1)?,
        net_tcp_orphan_retries: net("ipv4.sysctl_tcp_orphan_retries", 1)?,
        net_tcp_syn_retries: net("ipv4.sysctl_tcp_syn_retries", 1)?,
        net_tcp_syn_linear_timeouts: net("ipv4.sysctl_tcp_syn_linear_timeouts", 1)
            .unwrap_or(MISSING),

        skb_len: btf.offset("sk_buff", "len", 4)?,
        skb_head: btf.offset("sk_buff", "head", PTR)?,
        skb_transport_header: btf.offset("sk_buff", "transport_header", 2)?,

        timer_function: btf.offset("timer_list", "function", PTR)?,
        timer_expires: btf.offset("timer_list", "expires", PTR)?,
        timer_pprev: btf.offset("timer_list", "entry.pprev", PTR)?,

        task_files: btf.offset("task_struct", "files", PTR)?,
        files_fdt: btf.offset("files_struct", "fdt", PTR)?,
        fdt_max_fds: btf.offset("fdtable", "max_fds", 4)?,
        fdt_fd: btf.offset("fdtable", "fd", PTR)?,
        file_private_data: btf.offset("file", "private_data", PTR)?,
        file_inode: btf.offset("file", "f_inode", PTR)?,
        inode_ino: btf.offset("inode", "i_ino", PTR)?,
        inode_mode: btf.offset("inode", "i_mode", 2)?,
        socket_sk: btf.offset("socket", "sk", PTR)?,
        socket_file: btf.offset("socket", "file", PTR)?,

        task_group_leader: btf.offset("task_struct", "group_leader", PTR)?,
        task_comm: btf.offset("task_struct", "comm", 16)?,
        task_tgid: btf.offset("task_struct", "tgid", 4)?,
        task_signal: btf.offset("task_struct", "signal", PTR)?,
        signal_live: btf.offset("signal_struct", "live", 4)?,

        setsockopt_fd: syscall("sys_enter_setsockopt", "fd")?,
        setsockopt_level: syscall("sys_enter_setsockopt", "level")?,
        setsockopt_optname: syscall("sys_enter_setsockopt", "optname")?,
        setsockopt_ret: syscall("sys_exit_setsockopt", "ret")?,
        accept_ret: syscall("sys_exit_accept", "ret")?,
        accept4_ret: syscall("sys_exit_accept4", "ret")?,
        pad: 0,
    })
    .context("reading the running kernel's layout")
}

/// Fills in the timer functions' addresses, which [`discover`] leaves 0: the
/// tracer reads kallsyms on another thread meanwhile, and `kalive ls` reads
/// no timer's function (kallsyms took more than a third of its start).
///
/// # Errors
/// When a function is missing or its address hidden.
pub fn add_timer_fns(layout: &mut Layout, symbols: &Symbols) -> Result<()> {
    layout.keepalive_timer_fn = symbols.address("tcp_keepalive_timer")?;
    layout.write_timer_fn = symbols.address("tcp_write_timer")?;
    Ok(())
}

/// Where the keepalive timer is: it moved from `sock.sk_timer` into
/// `inet_connection_sock` in 6.19.
fn keepalive_timer(btf: &KernelBtf) -> Result<u32> {
    Ok(
        if btf.has_field("inet_connection_sock", "icsk_keepalive_timer") {
            btf.field("inet_connection_sock", "icsk_keepalive_timer")?
                .offset
        } else {
            btf.field("sock", "sk_timer")?.offset
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[ignore = "needs root (kallsyms addresses, tracefs): run with `cargo xtask test`"]
    fn discovers_this_kernel() {
        let btf = KernelBtf::open(Path::new(crate::btf::VMLINUX)).expect("btf");
        let tracefs = kernel::tracefs().expect("tracefs");
        let symbols = Symbols::read(&["tcp_keepalive_timer", "tcp_write_timer"]).expect("kallsyms");
        let mut layout = discover(&btf, &tracefs, 250).expect("layout");
        add_timer_fns(&mut layout, &symbols).expect("timer functions");
        assert_eq!(
            layout.keepalive_timer_fn,
            symbols.address("tcp_keepalive_timer").expect("sym")
        );
        assert_ne!(layout.write_timer_fn, 0);
        assert!(layout.skc_v6_daddr > layout.skc_daddr);
        // tcp_sock embeds inet_connection_sock embeds sock, all at offset 0.
        assert!(layout.tcp_keepalive_time > layout.icsk_probes_out);
        assert_eq!(
            layout.sock_keepopen_bit, 3,
            "SOCK_KEEPOPEN has been 3 since 2.6"
        );
        assert!(layout.setsockopt_level > layout.setsockopt_fd);
    }
}
