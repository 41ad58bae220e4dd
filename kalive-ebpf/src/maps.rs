//! Maps shared by all programs.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use kalive_common::Owner;

/// Records for userspace. Resized by the loader before load.
#[map]
pub(crate) static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Records that did not fit in [`EVENTS`], per CPU. Userspace reports them.
#[map]
pub(crate) static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Socket (`struct sock *`) -> the process that owns it, learned in process
/// context (or found by userspace in procfs). Removed when the socket is
/// destroyed; LRU, so that entries whose removal went unseen (a skipped
/// program) age out instead of filling it. An entry for reused memory is told
/// stale by its inode ([`Owner::ino`]); an evicted one is found again in procfs.
#[map]
pub(crate) static OWNERS: LruHashMap<u64, Owner> = LruHashMap::with_max_entries(65536, 0);

/// Process (tgid) -> when its last thread exited (`bpf_ktime_get_boot_ns`). An
/// owner learned before its process exited is stale: another process (a child it
/// handed the socket to) holds the socket now.
#[map]
pub(crate) static EXITED: LruHashMap<u32, u64> = LruHashMap::with_max_entries(16384, 0);

/// `--pid` values; used when `Settings::filter_pids` is set.
#[map]
pub(crate) static PIDS: HashMap<u32, u8> = HashMap::with_max_entries(1024, 0);

/// `--port` values, host byte order; used when `Settings::filter_ports` is set.
#[map]
pub(crate) static PORTS: HashMap<u16, u8> = HashMap::with_max_entries(1024, 0);

/// The TCP timer callback (keepalive or write timer) running on this CPU, if any.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct Callback {
    /// `struct timer_list *` of the running callback; 0 when none.
    pub(crate) timer: u64,
    /// Its socket.
    pub(crate) sk: u64,
    /// `icsk_probes_out` when the callback started.
    pub(crate) probes_before: u8,
    /// [`KEEPALIVE`] or [`WRITE`].
    pub(crate) kind: u8,
    /// `icsk_pending` when the callback started: which write timer fired.
    pub(crate) pending: u8,
    /// `sk_state` when the callback started.
    pub(crate) state_before: u8,
    /// What the hooks inside the callback saw: [`SEEN_REARM`], [`SEEN_PROBE`],
    /// [`SEEN_CLOSE`]. What none saw is looked for when the callback ends.
    pub(crate) seen: u8,
    pub(crate) pad: [u8; 3],
    /// Jiffies when the callback began.
    pub(crate) began: u32,
    /// The timer's `expires` then (truncated): a different one at its end
    /// means the callback re-armed it.
    pub(crate) expires: u32,
    pub(crate) pad2: u32,
}

/// [`Callback::seen`]: the callback re-armed its own timer (`timer_start`).
pub(crate) const SEEN_REARM: u8 = 1;
/// [`Callback::seen`]: a probe of the callback's socket was reported.
pub(crate) const SEEN_PROBE: u8 = 2;
/// [`Callback::seen`]: the callback's socket closed (`inet_sock_set_state`).
pub(crate) const SEEN_CLOSE: u8 = 4;

/// [`Callback::kind`]: `tcp_keepalive_timer`.
pub(crate) const KEEPALIVE: u8 = 1;
/// [`Callback::kind`]: `tcp_write_timer`.
pub(crate) const WRITE: u8 = 2;

#[map]
pub(crate) static CALLBACK: PerCpuArray<Callback> = PerCpuArray::with_max_entries(1, 0);

/// Tests only (`Settings::test_defer_callback_end`): a keepalive callback
/// whose end is looked at later, and when it ended (jiffies).
#[map]
pub(crate) static DEFERRED: PerCpuArray<(Callback, u64)> = PerCpuArray::with_max_entries(1, 0);

/// A socket's keepalive as kalive last saw it: its probes, and its timer.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(crate) struct Probing {
    /// The keepalive probe kalive last reported (`icsk_probes_out` then); 0
    /// after an answer.
    pub(crate) probes: u8,
    /// Whether `probes` and `silent_since` are known: a probe or an answer
    /// was reported (an entry made when the timer was armed has neither).
    pub(crate) known: u8,
    pub(crate) pad: [u8; 2],
    /// When the peer was last heard from then (`rcv_tstamp`), or when the
    /// answer came.
    pub(crate) silent_since: u32,
    /// `expires` of the keepalive timer as a callback kalive saw left it
    /// (jiffies, truncated); 0 when unknown. Used once: a callback for
    /// another expiry followed callbacks no program of kalive's ran for.
    pub(crate) armed: u32,
    /// Then: `icsk_probes_out`, ...
    pub(crate) probes_then: u8,
    pub(crate) pad2: [u8; 3],
    /// ... the segments sent and those with data
    /// ([`Sock::segs_out`](crate::kernel::Sock::segs_out)), ...
    pub(crate) segs_out: u32,
    pub(crate) data_segs_out: u32,
    /// ... the segments received without data
    /// ([`Sock::bare_segs_in`](crate::kernel::Sock::bare_segs_in)), ...
    pub(crate) bare_segs_in: u32,
    /// ... and the next sequence number expected (`rcv_nxt`).
    pub(crate) rcv_nxt: u32,
    /// The record time (`CLOCK_BOOTTIME`) of the probe `probes`: its answer
    /// is not reported before it. (The answer's time comes from jiffies,
    /// which can lag the clock by ticks: seen 12.7 ms under QEMU's TCG.)
    pub(crate) sent_ns: u64,
}

/// Keepalive probes the programs know left, in callbacks no program ran for,
/// but cannot number (see `missed_answered`): userspace counts them with the
/// probes that have no record.
#[map]
pub(crate) static UNNUMBERED: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Socket (`struct sock *`) -> its [`Probing`]. A lower `icsk_probes_out`
/// than the probe reported means the kernel took an ACK as the answer
/// (`tcp_ack()` resets it). LRU: an entry lost to eviction loses one answer.
#[map]
pub(crate) static PROBING: LruHashMap<u64, Probing> = LruHashMap::with_max_entries(65536, 0);

/// Tests only (`Settings::test_skip_probing_callbacks`): socket -> its
/// keepalive callbacks that began after keepidle of silence.
#[map]
pub(crate) static TEST_PROBING_CALLBACKS: LruHashMap<u64, u32> =
    LruHashMap::with_max_entries(1024, 0);

/// Sockets probing a zero window (`struct sock *`), to report when it opens.
#[map]
/// The value is `icsk_probes_out | icsk_backoff << 8` at its last probe.
pub(crate) static ZERO_WINDOW: LruHashMap<u64, u16> = LruHashMap::with_max_entries(16384, 0);

/// `[0]`: jiffies of the last zero-window probe on this host. When there was
/// none for longer than probes can be apart, no socket is probing and the
/// per-segment check is skipped.
#[map]
pub(crate) static ZERO_WINDOW_LAST: Array<u64> = Array::with_max_entries(1, 0);

/// kprobe backend: the socket of the `tcp_write_wakeup()` running on this CPU.
#[map]
pub(crate) static STASH_WRITE_WAKEUP: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// kprobe backend: thread (`pid_tgid`) -> the socket of its `tcp_send_probe0()`.
#[map]
pub(crate) static STASH_SEND_PROBE0: LruHashMap<u64, u64> = LruHashMap::with_max_entries(1024, 0);

/// Thread (`pid_tgid`) -> the descriptor of its keepalive `setsockopt()` in
/// flight, from syscall entry to exit. LRU: a thread killed mid-call leaves an
/// entry that ages out.
#[map]
pub(crate) static SETSOCKOPT: LruHashMap<u64, u32> = LruHashMap::with_max_entries(4096, 0);

/// Sockets whose keepalive timer was reported deferred by data in flight
/// (`struct sock *`) -> when their peer was last heard from: one record per
/// silence. Not removed at close: a socket allocated anew in the same memory
/// starts another silence, at another time. LRU: bounded.
#[map]
pub(crate) static KEEPALIVE_DEFERRED: LruHashMap<u64, u32> = LruHashMap::with_max_entries(16384, 0);

/// A kill's own fields, from where they are decided to the record, per CPU.
/// Through map memory they reach the record as values the verifier does not
/// know: carried in registers, each combination of kind, cause and limit
/// would be verified through the whole record-making path on its own (it
/// doubled the programs' verification time).
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct KillNote {
    pub(crate) kind: u8,
    pub(crate) cause: u8,
    pub(crate) limit: u8,
    pub(crate) max_retries: u8,
    pub(crate) retries: u8,
    pub(crate) pad: [u8; 3],
    pub(crate) error: u32,
    pub(crate) idle: u32,
    pub(crate) dead_ms: u32,
    pub(crate) pad2: u32,
}

#[map]
pub(crate) static KILL_NOTE: PerCpuArray<KillNote> = PerCpuArray::with_max_entries(1, 0);

/// What `missed_answered()` found, from where it is worked out to its
/// records, per CPU (see [`KillNote`]: carried in registers through the
/// record-making path of two records, these values took 6.1's verifier
/// 3.3 s under the VM's emulation).
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct LateNote {
    /// The last unseen probe's time, and the first numbered one's (0: none
    /// numbered after the reported one).
    pub(crate) ts: u64,
    pub(crate) numbered_at: u64,
    /// The numbered probes' silence (high 32 bits), number and count.
    pub(crate) numbered: u64,
    /// The probes each numbered 1: the silence before the first answer
    /// (high 32 bits) and at each probe.
    pub(crate) each: u64,
    pub(crate) each_count: u8,
    pub(crate) pad: [u8; 3],
    pub(crate) intvl: u32,
}

#[map]
pub(crate) static LATE_NOTE: PerCpuArray<LateNote> = PerCpuArray::with_max_entries(1, 0);
