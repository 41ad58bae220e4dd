//! Records shared by the BPF programs (`kalive-ebpf`) and the loader (`kalive-user`).
//!
//! Everything here is `#[repr(C)]` plain data: the programs write it into the ring
//! buffer or read it from globals, userspace reads it back byte for byte. The `user`
//! feature adds what only userspace needs (decoding, `aya::Pod`).
#![cfg_attr(not(any(test, feature = "event")), no_std)]

#[cfg(feature = "user")]
mod user;
#[cfg(feature = "user")]
pub use user::DecodeError;

/// Bumped whenever the layout of [`Record`] changes.
pub const RECORD_VERSION: u8 = 6;

#[macro_use]
mod declare;
#[cfg(feature = "event")]
pub mod dead;
#[cfg(feature = "event")]
pub mod event;

kinds! {
    /// What a [`Record`] reports. Each kind's number (what the programs write),
    /// name (what users read) and payload (the fields only it has, in
    /// [`event::What`] with the `event` feature) are declared here, once.
    pub enum Kind {
        /// A TCP socket changed state (only with `--state-changes`).
        StateChange = 1 => "state_change" { old_state: TcpState },
        /// Keepalive was enabled, disabled or re-configured by `setsockopt`.
        KeepaliveSet = 2 => "keepalive_set" { enabled: bool },
        /// The keepalive timer sent a probe, or (`sent` false) tried to and
        /// could not: the kernel counts both.
        ProbeSent = 3 => "probe_sent" { next_ms: u64, late: bool, sent: bool },
        /// The peer answered while keepalive probes were out.
        ProbeAcked = 4 => "probe_acked" { seen_at: AckSeen },
        /// The keepalive timer killed the connection, `dead_ms` after the
        /// peer was last heard from.
        KeepaliveTimeout = 5 => "keepalive_timeout" { error: Errno, cause: Cause, dead_ms: Option<u64> },
        /// Records the kernel could not deliver; made by userspace from the
        /// programs' lost-record counters, never by a program.
        EventsLost = 6 => "events_lost" { count: u64 },
        /// The persist timer probed a zero window (`tcp_send_probe0`).
        ZeroWindowProbeSent = 7 => "zero_window_probe_sent" { backoff: u8, next_ms: u64, snd_wnd: u32 },
        /// The peer opened its window again: zero-window probing ended.
        ZeroWindowOpen = 8 => "zero_window_open" { snd_wnd: u32 },
        /// Zero-window probing killed the connection.
        ZeroWindowTimeout = 9 => "zero_window_timeout" { error: Errno, cause: Cause, dead_ms: Option<u64> },
        /// The retransmission timer gave up on data the peer never
        /// acknowledged: after `retries` retransmissions, by `limit`.
        RetransmitTimeout = 10 => "retransmit_timeout" {
            error: Errno, cause: Cause, retries: u8, limit: RetryLimit,
            max_retries: Option<u8>, dead_ms: Option<u64>,
        },
        /// A `connect()` gave up: its SYN was never answered.
        SynTimeout = 11 => "syn_timeout" {
            error: Errno, cause: Cause, retries: u8, limit: RetryLimit,
            max_retries: Option<u8>, dead_ms: Option<u64>,
        },
        /// The keepalive timer found data in flight after keepidle of silence
        /// and did not probe: the retransmission timer decides instead. Once
        /// per silence of a socket.
        KeepaliveDeferred = 12 => "keepalive_deferred" { unacked: u32, next_ms: u64 },
    }
}

numbered! {
    /// A TCP state, as `include/net/tcp_states.h` numbers and names it.
    pub enum TcpState {
        /// Not a kernel state: a number this kalive does not know.
        Unknown = 0 => "UNKNOWN",
        Established = 1 => "ESTABLISHED",
        SynSent = 2 => "SYN_SENT",
        SynRecv = 3 => "SYN_RECV",
        FinWait1 = 4 => "FIN_WAIT1",
        FinWait2 = 5 => "FIN_WAIT2",
        TimeWait = 6 => "TIME_WAIT",
        Close = 7 => "CLOSE",
        CloseWait = 8 => "CLOSE_WAIT",
        LastAck = 9 => "LAST_ACK",
        Listen = 10 => "LISTEN",
        Closing = 11 => "CLOSING",
        NewSynRecv = 12 => "NEW_SYN_RECV",
        BoundInactive = 13 => "BOUND_INACTIVE",
    }
}

impl TcpState {
    /// The state `number` names; [`Self::Unknown`] for one this kalive does not know.
    #[must_use]
    pub const fn from_kernel(number: u8) -> Self {
        match Self::from_u8(number) {
            Some(state) => state,
            None => Self::Unknown,
        }
    }

    /// States in which the socket has a peer whose silence can be measured.
    #[must_use]
    pub const fn connected(self) -> bool {
        matches!(
            self,
            Self::Established
                | Self::FinWait1
                | Self::FinWait2
                | Self::CloseWait
                | Self::LastAck
                | Self::Closing
        )
    }
}

numbered! {
    /// [`Record::cause`]: why a connection was killed.
    pub enum Cause {
        /// Not a kill, or a cause this kalive does not know.
        Unknown = 0 => "unknown",
        /// `TCP_KEEPCNT` probes went unanswered.
        ProbesExhausted = 1 => "probes_exhausted",
        /// `TCP_USER_TIMEOUT` passed with a probe out.
        UserTimeout = 2 => "user_timeout",
        /// The peer reset the connection while keepalive probes were out
        /// (typically: it rebooted and answered a probe with RST).
        PeerReset = 3 => "peer_reset",
        /// The retry limit was reached: `tcp_retries2` zero-window probes or
        /// retransmissions (`tcp_orphan_retries` for an orphan), or
        /// `tcp_syn_retries` (`TCP_SYNCNT`) SYNs.
        RetriesExhausted = 4 => "retries_exhausted",
    }
}

numbered! {
    /// [`Record::limit`]: which limit ended a retransmitting connection.
    pub enum RetryLimit {
        Unknown = 0 => "unknown",
        /// The namespace's `net.ipv4.tcp_retries2`: a time budget, that of as
        /// many retransmissions doubling from 200 ms.
        Retries2 = 1 => "tcp_retries2",
        /// `net.ipv4.tcp_orphan_retries`, for a socket its process closed.
        OrphanRetries = 2 => "tcp_orphan_retries",
        /// `net.ipv4.tcp_syn_retries` (plus `tcp_syn_linear_timeouts`).
        SynRetries = 3 => "tcp_syn_retries",
        /// The socket's `TCP_SYNCNT`.
        SynCount = 4 => "TCP_SYNCNT",
        /// The socket's `TCP_USER_TIMEOUT`.
        UserTimeout = 5 => "TCP_USER_TIMEOUT",
    }
}

numbered! {
    /// [`Kind::ProbeAcked`] (in [`Record::cause`]): where kalive noticed that
    /// the kernel took an ACK as the answer to its probes (`icsk_probes_out`
    /// back to 0).
    pub enum AckSeen {
        /// Not said (an older producer).
        Unknown = 0 => "unknown",
        /// The segment itself, as it arrived (`--live-acks`).
        Segment = 1 => "segment",
        /// The socket's next keepalive timer: up to one `keepintvl` later.
        KeepaliveTimer = 2 => "keepalive_timer",
        /// The socket closing or being destroyed.
        Close = 3 => "close",
        /// A keepalive `setsockopt()` on the socket (which may stop the timer).
        Setsockopt = 4 => "setsockopt",
        /// Not seen: the answer came between a probe and the next one, whose
        /// timer callback no program saw; told by the socket's count of bare
        /// ACKs received. Its time is estimated: the probe's, plus as long as
        /// the peer took to answer the next.
        Inferred = 5 => "inferred",
    }
}

numbered! {
    /// [`Owner::source`] and [`Record::owner`]: how a socket's owner was learned.
    pub enum OwnerSource {
        /// No owner known.
        Unknown = 0 => "unknown",
        /// Learned by a program, from the process using the socket.
        Kernel = 1 => "kernel",
        /// Found by userspace in `/proc/PID/fd`.
        Procfs = 2 => "procfs",
    }
}

/// [`Record::flags`]: `SO_KEEPALIVE` is on (`SOCK_KEEPOPEN`).
pub const FLAG_KEEPALIVE: u8 = 1 << 0;
/// [`Record::flags`]: the socket has `TCP_USER_TIMEOUT` set.
pub const FLAG_USER_TIMEOUT: u8 = 1 << 1;
/// [`Record::flags`]: more than one live process used the socket; `pid` is the
/// last one.
pub const FLAG_SHARED: u8 = 1 << 2;
/// [`Record::flags`]: the pid filter could not be applied in the kernel (owner
/// not known yet); userspace applies it once it has found the owner.
pub const FLAG_UNFILTERED: u8 = 1 << 3;
/// [`Record::flags`] of a [`Kind::ProbeSent`]: the probe's own timer callback
/// went unseen; the probe was found at the socket's next keepalive timer or
/// its close, and its time is the one the timer says it left at. Its
/// [`Record::cause`] says how many probes it stands for: this one and those
/// before it, one `keepintvl` apart (userspace writes one record for each).
pub const FLAG_LATE: u8 = 1 << 4;
/// [`Record::flags`] of a [`Kind::ProbeSent`]: the keepalive timer tried to
/// send a probe and could not (`tcp_write_wakeup()` > 0: local congestion, a
/// full device queue). The kernel counts it (`TcpExtTCPKeepAlive`) but not in
/// `icsk_probes_out`, and tries again in 500 ms (`TCP_RESOURCE_PROBE_INTERVAL`).
pub const FLAG_UNSENT: u8 = 1 << 5;
/// [`Record::flags`] of a late [`Kind::ProbeSent`]: each probe it stands for
/// (as many as its [`Record::cause`], one `keepintvl` apart, the last at its
/// time) left after the peer answered the one before, so is numbered 1, and
/// [`Record::idle`] is the silence at each (since that answer). Userspace
/// writes the answer before each as a `probe_acked` with
/// [`AckSeen::Inferred`]; [`Record::error`] holds the silence before the
/// first of them (jiffies, or [`IDLE_NONE`]). Set only with [`FLAG_LATE`].
pub const FLAG_EACH_ANSWERED: u8 = 1 << 6;

/// [`OwnerSource::Unknown`] as the programs write it.
pub const OWNER_UNKNOWN: u8 = OwnerSource::Unknown as u8;
/// [`OwnerSource::Kernel`] as the programs write it.
pub const OWNER_KERNEL: u8 = OwnerSource::Kernel as u8;
/// [`OwnerSource::Procfs`] as the programs write it.
pub const OWNER_PROCFS: u8 = OwnerSource::Procfs as u8;

/// [`Cause::Unknown`] as the programs write it: not a kill.
pub const CAUSE_NONE: u8 = Cause::Unknown as u8;
/// [`Cause::ProbesExhausted`] as the programs write it.
pub const CAUSE_PROBES_EXHAUSTED: u8 = Cause::ProbesExhausted as u8;
/// [`Cause::UserTimeout`] as the programs write it.
pub const CAUSE_USER_TIMEOUT: u8 = Cause::UserTimeout as u8;
/// [`Cause::PeerReset`] as the programs write it.
pub const CAUSE_PEER_RESET: u8 = Cause::PeerReset as u8;
/// [`Cause::RetriesExhausted`] as the programs write it.
pub const CAUSE_RETRIES_EXHAUSTED: u8 = Cause::RetriesExhausted as u8;

/// [`RetryLimit`]s as the programs write them.
pub const LIMIT_RETRIES2: u8 = RetryLimit::Retries2 as u8;
pub const LIMIT_ORPHAN_RETRIES: u8 = RetryLimit::OrphanRetries as u8;
pub const LIMIT_SYN_RETRIES: u8 = RetryLimit::SynRetries as u8;
pub const LIMIT_SYNCNT: u8 = RetryLimit::SynCount as u8;
pub const LIMIT_USER_TIMEOUT: u8 = RetryLimit::UserTimeout as u8;

/// [`Record::idle`] when the socket has no peer (not connected): no idle time.
pub const IDLE_NONE: u32 = u32::MAX;
/// [`Record::dead_ms`] when not known.
pub const DEAD_NONE: u32 = u32::MAX;
/// [`Record::max_retries`] when no count applies (a user timeout).
pub const RETRIES_NONE: u8 = u8::MAX;

/// One event, as the programs emit it. Addresses and ports are in network byte
/// order and times in jiffies, exactly as the kernel keeps them; userspace
/// converts. The layout has no implicit padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    pub version: u8,
    /// A [`Kind`] as `u8`.
    pub kind: u8,
    /// `AF_INET` or `AF_INET6`.
    pub family: u16,
    /// TCP state after the event (`TCP_ESTABLISHED` = 1, ...).
    pub state: u8,
    /// TCP state before the event, for [`Kind::StateChange`].
    pub old_state: u8,
    /// `icsk_probes_out` after the event: unanswered probes.
    pub probes: u8,
    /// `FLAG_*` bits.
    pub flags: u8,
    /// Local port, network byte order.
    pub sport: u16,
    /// Remote port, network byte order.
    pub dport: u16,
    /// Process (tgid) owning the socket; 0 when unknown.
    pub pid: u32,
    /// Inode of the socket's network namespace.
    pub netns: u32,
    /// Effective `TCP_KEEPCNT`.
    pub keepcnt: u8,
    /// `icsk_backoff`.
    pub backoff: u8,
    /// A `CAUSE_*` value: why a connection was killed; for
    /// [`Kind::ProbeAcked`], an [`AckSeen`].
    pub cause: u8,
    /// An `OWNER_*` value: how `pid`/`comm` were learned.
    pub owner: u8,
    /// `bpf_ktime_get_boot_ns()` at the event.
    pub ts_ns: u64,
    /// Socket cookie (`sock_gen_cookie`); 0 when the kernel has not assigned one.
    pub cookie: u64,
    /// Inode of the socket (`socket:[ino]` in `/proc/PID/fd`); 0 for orphans.
    pub ino: u64,
    /// The `struct sock *`: how userspace names the socket to the programs
    /// (the key of their map of owners). Never printed.
    pub sk: u64,
    /// Effective `TCP_KEEPIDLE`, jiffies.
    pub keepidle: u32,
    /// Effective `TCP_KEEPINTVL`, jiffies.
    pub keepintvl: u32,
    /// `TCP_USER_TIMEOUT`, milliseconds; 0 when unset.
    pub user_timeout_ms: u32,
    /// Jiffies since the last ACK from the peer (`rcv_tstamp`), or [`IDLE_NONE`].
    pub idle: u32,
    /// [`Kind::ProbeSent`]: jiffies until the timer fires next.
    pub next: u32,
    /// [`Kind::KeepaliveTimeout`]: `sk_err` (an errno). A late
    /// [`Kind::ProbeSent`] with [`FLAG_EACH_ANSWERED`]: see there.
    pub error: u32,
    /// [`Kind::KeepaliveSet`]: the caller's file descriptor; -1 otherwise.
    pub fd: i32,
    /// `snd_wnd`: the peer's advertised window.
    pub snd_wnd: u32,
    /// IPv4 in the first 4 bytes, or IPv6.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Owner's command name, NUL padded; empty when unknown.
    pub comm: [u8; 16],
    /// Kills: how long the peer had been silent (since it was last heard
    /// from; for a SYN, since the first was sent), ms; [`DEAD_NONE`].
    pub dead_ms: u32,
    /// Segments in flight (`packets_out`).
    pub unacked: u32,
    /// Retransmission kills: `icsk_retransmits`, the [`RetryLimit`] that
    /// ended it, and that limit's count ([`RETRIES_NONE`] for a time).
    pub retries: u8,
    pub limit: u8,
    pub max_retries: u8,
    pub pad: [u8; 5],
}

const _: () = assert!(Record::SIZE == 152 && core::mem::offset_of!(Record, ts_ns) == 24);

impl Record {
    pub const SIZE: usize = core::mem::size_of::<Self>();

    /// An all-zero record of the current version.
    #[must_use]
    pub const fn zeroed(kind: Kind) -> Self {
        Self {
            version: RECORD_VERSION,
            kind: kind as u8,
            family: 0,
            state: 0,
            old_state: 0,
            probes: 0,
            flags: 0,
            sport: 0,
            dport: 0,
            pid: 0,
            netns: 0,
            keepcnt: 0,
            backoff: 0,
            cause: CAUSE_NONE,
            owner: OWNER_UNKNOWN,
            ts_ns: 0,
            cookie: 0,
            ino: 0,
            sk: 0,
            keepidle: 0,
            keepintvl: 0,
            user_timeout_ms: 0,
            idle: IDLE_NONE,
            next: 0,
            error: 0,
            fd: -1,
            snd_wnd: 0,
            saddr: [0; 16],
            daddr: [0; 16],
            comm: [0; 16],
            dead_ms: DEAD_NONE,
            unacked: 0,
            retries: 0,
            limit: 0,
            max_retries: RETRIES_NONE,
            pad: [0; 5],
        }
    }
}

/// One TCP socket as the `iter/tcp` program reads it for `kalive ls` (or as
/// the socket diagnostics describe it, without BPF): its identity, its
/// keepalive and its write timer as the kernel has them. Settings
/// are raw: 0 means the namespace's sysctl (also given) applies.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockEntry {
    pub sk: u64,
    pub cookie: u64,
    pub ino: u64,
    pub netns: u32,
    pub state: u8,
    pub keepalive: u8,
    pub probes: u8,
    pub keepcnt: u8,
    pub keepidle: u32,
    pub keepintvl: u32,
    pub net_keepidle: u32,
    pub net_keepintvl: u32,
    pub net_keepcnt: u8,
    pub pad: [u8; 3],
    pub user_timeout_ms: u32,
    /// Jiffies: now, the last ACK, the last segment received.
    pub now: u32,
    pub rcv_tstamp: u32,
    pub lrcvtime: u32,
    /// The keepalive timer's expiry (jiffies), when `timer_pending`.
    pub timer_expires: u32,
    pub family: u16,
    /// Ports, network order.
    pub sport: u16,
    pub dport: u16,
    pub timer_pending: u8,
    /// `icsk_pending`: the write timer armed (`ICSK_TIME_*`).
    pub write_timer: u8,
    /// Segments in flight.
    pub packets_out: u32,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// When the write timer (`icsk_retransmit_timer`) is due, jiffies.
    pub write_expires: u32,
    /// The write timer's state: `icsk_retransmits`, `icsk_backoff`,
    /// `icsk_syn_retries` (`TCP_SYNCNT`, 0 for the sysctl), whether the
    /// process closed the socket (`SOCK_DEAD`), and the namespace's
    /// `tcp_retries2`, `tcp_orphan_retries`, `tcp_syn_retries` and
    /// `tcp_syn_linear_timeouts` (0 before 6.5).
    pub retransmits: u8,
    pub backoff: u8,
    pub syn_retries: u8,
    pub orphan: u8,
    pub net_retries2: u8,
    pub net_orphan_retries: u8,
    pub net_syn_retries: u8,
    pub net_syn_linear: u8,
    /// `icsk_rto` and `icsk_rto_max` (0 before 6.15: 120 s), jiffies.
    pub rto: u32,
    pub rto_max: u32,
    /// `retrans_stamp`: the first retransmission of the episode (the first
    /// SYN for a connect), ms (µs when `usec_ts`) on the TCP clock
    /// (`CLOCK_MONOTONIC`); 0 when none.
    pub retrans_stamp: u32,
    /// `icsk_probes_tstamp`: the first window probe of the episode, jiffies.
    pub probes_tstamp: u32,
    /// The peer's window.
    pub snd_wnd: u32,
    pub usec_ts: u8,
    /// `sk_err_soft`, when it fits (errnos do); 0 for none.
    pub soft_error: u8,
    pub pad2: [u8; 2],
    /// `CLOCK_MONOTONIC` now, µs: the TCP clock.
    pub mono_us: u64,
    /// `CLOCK_BOOTTIME` now, ns: the records' clock (when it was read).
    pub boot_ns: u64,
}

// No hidden padding: the program writes it whole.
const _: () = assert!(core::mem::size_of::<SockEntry>() == 168);

/// A socket descriptor as the `iter/task_file` program finds it for `kalive
/// ls`: which process holds which socket, through which descriptor (what
/// `/proc/PID/fd` says, without a `readlink()` a descriptor).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileEntry {
    /// Thread group id (the process id users know).
    pub pid: u32,
    pub fd: u32,
    /// The socket's inode number.
    pub ino: u64,
    /// The process reading the iterator, as the kernel numbers it: when it
    /// is not the id the reader knows itself by, the reader is in a PID
    /// namespace of its own, and these ids are not its.
    pub reader: u32,
    pub pad: u32,
}

const _: () = assert!(core::mem::size_of::<FileEntry>() == 24);

/// The process that owns a socket: the value of the programs' map of owners,
/// keyed by `struct sock *`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Owner {
    /// Thread group id (the process id users know).
    pub pid: u32,
    /// `OWNER_KERNEL` or `OWNER_PROCFS`.
    pub source: u8,
    /// Another live process used the socket before `pid` did.
    pub shared: u8,
    pub pad: u16,
    /// `bpf_ktime_get_boot_ns()` when learned: an owner that exited later is stale.
    pub learned_ns: u64,
    /// The socket's inode when learned: a different inode means the `struct
    /// sock` was freed and reused, and the entry is stale.
    pub ino: u64,
    /// The process's command name (its main thread's), NUL padded.
    pub comm: [u8; 16],
}

/// Kernel facts the programs need, discovered by the loader at start-up from the
/// running kernel (BTF, kallsyms, tracefs) and handed over as a read-only global.
/// Rust BPF programs have no CO-RE relocations, so nothing here is known at
/// compile time. Offsets are in bytes from the start of the named structure.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Layout {
    /// Address of `tcp_keepalive_timer` (`timer_list.function` of keepalive timers).
    pub keepalive_timer_fn: u64,
    /// Address of `tcp_write_timer`: retransmission and zero-window probes.
    pub write_timer_fn: u64,
    /// The kernel's HZ: jiffies per second.
    pub hz: u32,

    // struct sock (sock_common is at its start)
    pub skc_family: u32,
    pub skc_state: u32,
    /// `inet_sock.inet_sport`: local port, network order. Unlike `skc_num` it is
    /// not cleared when the socket closes.
    pub inet_sport: u32,
    /// Remote port, network order.
    pub skc_dport: u32,
    pub skc_rcv_saddr: u32,
    pub skc_daddr: u32,
    pub skc_v6_rcv_saddr: u32,
    pub skc_v6_daddr: u32,
    /// `possible_net_t`: a `struct net *`.
    pub skc_net: u32,
    pub skc_cookie: u32,
    pub skc_flags: u32,
    pub sk_protocol: u32,
    pub sk_type: u32,
    pub sk_err: u32,
    pub sk_socket: u32,
    /// The keepalive `timer_list` inside the socket: `sock.sk_timer` up to 6.18,
    /// `inet_connection_sock.icsk_keepalive_timer` from 6.19.
    pub keepalive_timer: u32,
    /// Bit number of `SOCK_KEEPOPEN` in `sk_flags` (`enum sock_flags`).
    pub sock_keepopen_bit: u32,
    /// Bit number of `SOCK_DEAD` (orphaned socket) in `sk_flags`.
    pub sock_dead_bit: u32,

    // struct inet_connection_sock
    pub icsk_probes_out: u32,
    pub icsk_backoff: u32,
    /// Which write timer is armed (`ICSK_TIME_*`).
    pub icsk_pending: u32,
    pub icsk_user_timeout: u32,
    /// When zero-window probing started (jiffies), 0 when not probing.
    pub icsk_probes_tstamp: u32,
    /// `icsk_ack.lrcvtime`: jiffies of the last segment received.
    pub icsk_lrcvtime: u32,
    /// `sock.sk_err_soft`: an error an ICMP message reported, which a
    /// timeout returns instead of `ETIMEDOUT`.
    pub sk_err_soft: u32,
    /// `icsk_retransmit_timer`: the write timer, whose function is `tcp_write_timer`.
    pub write_timer: u32,

    // struct tcp_sock
    /// Its size: `kalive ls`'s iterator copies a socket whole, in one read.
    pub tcp_sock_size: u32,
    pub tcp_keepalive_time: u32,
    pub tcp_keepalive_intvl: u32,
    pub tcp_keepalive_probes: u32,
    pub tcp_rcv_tstamp: u32,
    pub tcp_snd_wnd: u32,
    /// What the kernel checks an incoming ACK against (`tcp_sequence()`,
    /// `tcp_ack()`, PAWS), for `--live-acks`.
    pub tcp_snd_una: u32,
    pub tcp_snd_nxt: u32,
    pub tcp_rcv_nxt: u32,
    pub tcp_rcv_wup: u32,
    pub tcp_rcv_wnd: u32,
    pub tcp_ts_recent: u32,
    /// Segments sent, and those with data: the difference counts keepalive
    /// probes (and bare ACKs), for probes whose callbacks no program saw.
    pub tcp_segs_out: u32,
    pub tcp_data_segs_out: u32,
    /// The same for segments received: the difference counts bare ACKs,
    /// such as the answers to keepalive probes.
    pub tcp_segs_in: u32,
    pub tcp_data_segs_in: u32,
    /// Segments in flight (`kalive ls`).
    pub tcp_packets_out: u32,
    /// What `kalive ls` predicts a dead peer's detection from: the write
    /// timer's retransmissions, RTO and its maximum (6.15 on, else
    /// [`MISSING`]), `TCP_SYNCNT`, the first retransmission's time, and
    /// whether that time is in microseconds (a bit offset: a bitfield;
    /// 6.7 on, else [`MISSING`]).
    pub icsk_retransmits: u32,
    pub icsk_rto: u32,
    pub icsk_rto_max: u32,
    pub icsk_syn_retries: u32,
    pub tcp_retrans_stamp: u32,
    pub tcp_usec_ts_bit: u32,

    // struct net
    pub net_ns_inum: u32,
    pub net_keepalive_time: u32,
    pub net_keepalive_intvl: u32,
    pub net_keepalive_probes: u32,
    pub net_tcp_retries2: u32,
    pub net_tcp_orphan_retries: u32,
    pub net_tcp_syn_retries: u32,
    /// 6.5 on, else [`MISSING`].
    pub net_tcp_syn_linear_timeouts: u32,

    // struct sk_buff: the TCP header is at head + transport_header
    pub skb_len: u32,
    pub skb_head: u32,
    pub skb_transport_header: u32,

    // struct timer_list
    pub timer_function: u32,
    pub timer_expires: u32,
    /// `timer_list.entry.pprev`: not NULL while the timer is pending.
    pub timer_pprev: u32,

    // the file behind a descriptor: task -> files -> fdt -> fd[n] -> private_data
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdt_max_fds: u32,
    pub fdt_fd: u32,
    pub file_private_data: u32,
    pub file_inode: u32,
    pub inode_ino: u32,
    /// `inode.i_mode`: `S_IFSOCK` for a socket (`kalive ls`'s holders).
    pub inode_mode: u32,
    pub socket_sk: u32,
    pub socket_file: u32,

    // the current process: task -> group_leader -> comm; task -> signal -> live
    pub task_group_leader: u32,
    pub task_comm: u32,
    pub task_tgid: u32,
    pub task_signal: u32,
    pub signal_live: u32,

    // classic tracepoints syscalls:sys_{enter,exit}_setsockopt, from tracefs
    pub setsockopt_fd: u32,
    pub setsockopt_level: u32,
    pub setsockopt_optname: u32,
    pub setsockopt_ret: u32,
    /// `ret` of `syscalls:sys_exit_accept` and `sys_exit_accept4`: the new descriptor.
    pub accept_ret: u32,
    pub accept4_ret: u32,
    pub pad: u32,
}

// Two u64 and 86 u32: no hidden padding.
const _: () = assert!(core::mem::size_of::<Layout>() == 2 * 8 + 86 * 4);

/// A [`Layout`] offset for a member this kernel does not have.
pub const MISSING: u32 = u32::MAX;

/// What the user asked for, handed to the programs as a read-only global.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// Emit [`Kind::StateChange`] records.
    pub state_changes: u8,
    /// Only records of sockets owned by a pid in the programs' `PIDS` map.
    pub filter_pids: u8,
    /// Only records of sockets with a local or remote port in `PORTS`.
    pub filter_ports: u8,
    /// `TIMER_START_*` bits: what the `timer:timer_start` tracepoint detects,
    /// because the backend has no function hook for it.
    pub timer_start_does: u8,
    /// `--live-acks`: the per-segment hook (`tcp_probe`) reports answers as
    /// they arrive; otherwise they are noticed at the next keepalive timer.
    pub live_acks: u8,
    /// For tests only (`KALIVE_TEST_SKIP_CALLBACKS`): the programs ignore
    /// every keepalive timer callback that begins with `n - 1` probes out, as
    /// if the kernel had not run them; 0 (always, outside tests) for none.
    pub test_skip_callbacks: u8,
    /// For tests only (`KALIVE_TEST_DEFER_CALLBACK_END`): the end of a
    /// keepalive timer callback is looked at a tenth of a second late, as if
    /// it had taken that long after the callback released the socket (a
    /// window other CPUs can close sockets in).
    pub test_defer_callback_end: u8,
    /// For tests only (`KALIVE_TEST_SKIP_WRITE_CALLBACKS`): the programs see
    /// no write-timer callback that begins with `icsk_backoff` `n - 1` or
    /// more, as when the timer found the socket locked and its work ran later
    /// from `tcp_release_cb()`, in no callback; 0 for none.
    pub test_skip_write_callbacks: u8,
    /// For tests only (`KALIVE_TEST_SKIP_PROBING_CALLBACKS`): the programs
    /// ignore every n-th keepalive timer callback of each socket that begins
    /// after keepidle of silence, which is one that probes: as when
    /// the kernel runs no program for a callback, whose probe is then answered
    /// before the next; 0 for none.
    pub test_skip_probing_callbacks: u8,
    /// For tests only (`KALIVE_TEST_SKIP_PROBING_RUN`): with
    /// `test_skip_probing_callbacks`, ignore the last `n` of every run of
    /// that many (at least 1, less than the run): several in a row.
    pub test_skip_probing_run: u8,
    /// Keeps `started_ns` aligned without hidden padding (never read).
    pub pad: [u8; 6],
    /// `CLOCK_BOOTTIME` when kalive loaded its programs: a probe found late
    /// whose time is before this was sent before kalive watched.
    pub started_ns: u64,
}

// Sixteen bytes of u8 (six of them explicit padding) and a u64.
const _: () = assert!(core::mem::size_of::<Settings>() == 16 + 8);

/// [`Settings::timer_start_does`]: keepalive probes (else: `tcp_write_wakeup` returns).
pub const TIMER_START_KEEPALIVE_PROBES: u8 = 1 << 0;
/// Zero-window probes (else: `tcp_send_probe0` returns).
pub const TIMER_START_ZERO_WINDOW_PROBES: u8 = 1 << 1;
/// The window opening (else: `tcp_rearm_rto` is called).
pub const TIMER_START_ZERO_WINDOW_OPEN: u8 = 1 << 2;
/// Everything: the tracepoint backend.
pub const TIMER_START_ALL: u8 =
    TIMER_START_KEEPALIVE_PROBES | TIMER_START_ZERO_WINDOW_PROBES | TIMER_START_ZERO_WINDOW_OPEN;

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
pub const IPPROTO_TCP: u16 = 6;
