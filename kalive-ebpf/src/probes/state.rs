//! `sock:inet_sock_set_state`: who connected a socket, and how keepalive ended it.
//!
//! `TP_PROTO(const struct sock *sk, const int oldstate, const int newstate)`.
//! It fires from `inet_sk_state_store()`, after a closing socket has released its
//! port and before the new state is stored.

use aya_ebpf::helpers::bpf_get_socket_cookie;
use kalive_common::{
    AckSeen, CAUSE_PEER_RESET, CAUSE_PROBES_EXHAUSTED, CAUSE_RETRIES_EXHAUSTED, CAUSE_USER_TIMEOUT,
    DEAD_NONE, IDLE_NONE, Kind, LIMIT_ORPHAN_RETRIES, LIMIT_RETRIES2, LIMIT_SYN_RETRIES,
    LIMIT_SYNCNT, LIMIT_USER_TIMEOUT, MISSING, RETRIES_NONE, TcpState,
};

use super::{Args, hook};
use crate::{
    emit::{answered, caught_up, emit, forget_probing, forget_zero_window, jiffies32, learn_owner},
    kernel::{ICSK_TIME_PROBE0, Sock, layout, read, setting},
    maps::{CALLBACK, Callback, KEEPALIVE, KILL_NOTE, KillNote, SEEN_CLOSE, ZERO_WINDOW},
};

// The tracepoint's states, as u64 arguments.
pub(crate) const TCP_SYN_SENT: u64 = TcpState::SynSent as u64;
const TCP_FIN_WAIT2: u64 = TcpState::FinWait2 as u64;
pub(crate) const TCP_CLOSE: u64 = TcpState::Close as u64;
pub(crate) const TCP_LISTEN: u64 = TcpState::Listen as u64;
const ECONNRESET: u32 = 104;
const EPIPE: u32 = 32;
const ETIMEDOUT: u32 = 110;
const ECONNABORTED: u32 = 103;

/// Whether `err` is what `tcp_reset()` gives: `ECONNRESET`, or `EPIPE` in
/// `CLOSE_WAIT` (`tcp_disconnect()`, an abort, gives `ECONNRESET` too). Never
/// `tcp_write_err()`'s, which is `ETIMEDOUT` or a soft error from ICMP.
pub(crate) const fn is_reset(err: u32) -> bool {
    err == ECONNRESET || err == EPIPE
}

hook!(
    "inet_sock_set_state",
    inet_sock_set_state,
    inet_sock_set_state_raw,
    set_state
);

fn set_state<const BTF: bool>(args: Args) {
    let sk = Sock(args.get(0));
    if !sk.is_tcp() {
        return;
    }
    let old = args.get(1) & 0xff;
    let new = args.get(2) & 0xff;
    // Not for a connection being cloned from its listener: the kernel sets its
    // cookie itself (on some kernels after this tracepoint).
    let cookie = if BTF && old != TCP_LISTEN {
        // SAFETY: with tp_btf the argument is the tracepoint's own trusted
        // `struct sock *`, as the helper requires. It assigns a cookie if the
        // socket has none yet, so every later record can carry it.
        unsafe { bpf_get_socket_cookie(args.get(0) as *mut core::ffi::c_void) }
    } else {
        0
    };

    // connect() moves CLOSE -> SYN_SENT in the caller's context: it owns the socket.
    if old == TCP_CLOSE && new == TCP_SYN_SENT {
        learn_owner(sk);
    }

    if new == TCP_CLOSE {
        // An answer the keepalive timer has not noticed yet, before the close.
        answered(sk, AckSeen::Close);
        // Probes whose callbacks went unseen, before what ends the socket.
        caught_up(sk, sk.keepalive_timer());
        forget_probing(sk);
        let err = sk.err();
        let killed = match CALLBACK.get_ptr_mut(0) {
            // SAFETY: this CPU's slot.
            Some(cb) => killed_by(sk, old, err, unsafe { &mut *cb }),
            None => None,
        };
        forget_zero_window(sk);
        if let Some(kill) = killed {
            report_kill(sk, cookie, kill, err);
        }
    }

    if setting!(state_changes) != 0 {
        emit(Kind::StateChange, sk, cookie, None, |r| {
            r.old_state = old as u8;
            r.state = new as u8;
            // A connection being cloned from its listener: some kernels (6.1)
            // give it its own cookie only after this, so what it carries now
            // may be the listener's.
            if old == TCP_LISTEN {
                r.cookie = 0;
            }
        });
    }
}

/// What ended a connection: the record's kind and cause and, for the
/// retransmission timer's kills, the limit that did (`LIMIT_*`) and its count
/// (`RETRIES_NONE` for a time).
#[derive(Clone, Copy)]
pub(crate) struct Kill {
    pub(crate) kind: Kind,
    pub(crate) cause: u8,
    pub(crate) limit: u8,
    pub(crate) max_retries: u8,
}

impl Kill {
    const fn of(kind: Kind, cause: u8) -> Self {
        Self {
            kind,
            cause,
            limit: 0,
            max_retries: RETRIES_NONE,
        }
    }
}

/// Whether a timer's verdict closes `sk` (whose state was `old`), and which:
/// keepalive, zero-window probing, or the retransmission timer (a SYN's, for
/// a connect). `err` is its `sk_err`, read once by the caller and reported as
/// read: read again later, it could be another socket's (a closed socket's
/// memory is reused at once). `cb` is the timer callback running on this CPU.
pub(crate) fn killed_by(sk: Sock, old: u64, err: u32, cb: &mut Callback) -> Option<Kill> {
    if err == 0 {
        return None;
    }
    // tcp_keepalive_timer() or tcp_write_timer() -> tcp_write_err() ->
    // tcp_done(): the socket closes inside its own timer's callback.
    if cb.sk == sk.0 && cb.seen & SEEN_CLOSE == 0 {
        // Nothing else in this callback is its verdict.
        cb.seen |= SEEN_CLOSE;
        if cb.kind == KEEPALIVE {
            // An orphan in FIN_WAIT2 also closes there, on its linger
            // timeout, which is no keepalive verdict.
            if old == TCP_FIN_WAIT2 && sk.orphan() {
                return None;
            }
            let cause = if sk.user_timeout_ms() != 0 {
                CAUSE_USER_TIMEOUT
            } else {
                CAUSE_PROBES_EXHAUSTED
            };
            return Some(Kill::of(Kind::KeepaliveTimeout, cause));
        }
        if cb.pending == ICSK_TIME_PROBE0 {
            return Some(Kill::of(Kind::ZeroWindowTimeout, zero_window_cause(sk)));
        }
        // The write timer's other verdict: the retransmission timer gave up.
        return Some(retransmit_kill(sk, old));
    }
    // The write timer found the socket locked by its application and left its
    // work to tcp_release_cb(): the persist timer gives up in process context,
    // in no callback. A timeout (not a reset) of a socket kalive saw probing a
    // zero window is that.
    // SAFETY: only presence is checked.
    if !is_reset(err) && unsafe { ZERO_WINDOW.get(&sk.0) }.is_some() {
        return Some(Kill::of(Kind::ZeroWindowTimeout, zero_window_cause(sk)));
    }
    // So does the retransmission timer, or its callback ran no program of
    // kalive's: a socket that retransmitted (`icsk_retransmits`, which an
    // acknowledgment zeroes, and keepalive and the persist timer only act
    // with nothing in flight) closing with a timeout's error, neither a
    // reset nor an abort (`tcp_abort()`). For a connect, only ETIMEDOUT: an
    // ICMP error ends one at once with its own (EHOSTUNREACH), and that is no
    // timeout.
    if !is_reset(err)
        && err != ECONNABORTED
        && sk.retransmits() > 0
        && (old != TCP_SYN_SENT || err == ETIMEDOUT)
    {
        return Some(retransmit_kill(sk, old));
    }
    // tcp_reset(): the peer answered with RST while keepalive probes were out
    // (not zero-window probes): a rebooted peer answering a probe.
    if is_reset(err)
        && sk.keepalive_on()
        && sk.probes_out() > 0
        && sk.pending() != ICSK_TIME_PROBE0
        // Silent for keepidle: its last probe left at most an interval ago,
        // unanswered. Data the fast path takes without tcp_ack() leaves
        // icsk_probes_out as it was; a reset soon after such data ends a
        // connection that was talking, not one keepalive found dead.
        && sk.silent_for_keepidle()
    {
        return Some(Kill::of(Kind::KeepaliveTimeout, CAUSE_PEER_RESET));
    }
    None
}

/// The retransmission timer gave up on `sk` (in state `old`): why, by
/// `tcp_write_timeout()`'s rules. A SYN: its count (`TCP_SYNCNT`, else
/// `tcp_syn_retries`, plus `tcp_syn_linear_timeouts` from 6.5), then the user
/// timeout, then the time those retries would take. Data: the user timeout
/// when set, else the time `tcp_retries2` retries would take
/// (`tcp_orphan_retries` for an orphan: 0 means 8 while the RTO is under its
/// maximum).
fn retransmit_kill(sk: Sock, old: u64) -> Kill {
    let net = sk.net();
    let user_timeout = sk.user_timeout_ms() != 0;
    if old == TCP_SYN_SENT {
        let own = sk.syn_retries();
        let (limit, retries) = if own != 0 {
            (LIMIT_SYNCNT, own)
        } else {
            (
                LIMIT_SYN_RETRIES,
                read::<u8>(net, layout!(net_tcp_syn_retries)),
            )
        };
        let linear_at = layout!(net_tcp_syn_linear_timeouts);
        let linear = if linear_at == MISSING {
            0
        } else {
            read::<u8>(net, linear_at)
        };
        let counted = u16::from(sk.retransmits()) >= u16::from(retries) + u16::from(linear);
        if user_timeout && !counted {
            return Kill {
                kind: Kind::SynTimeout,
                cause: CAUSE_USER_TIMEOUT,
                limit: LIMIT_USER_TIMEOUT,
                max_retries: RETRIES_NONE,
            };
        }
        return Kill {
            kind: Kind::SynTimeout,
            cause: CAUSE_RETRIES_EXHAUSTED,
            limit,
            max_retries: retries,
        };
    }
    if user_timeout {
        return Kill {
            kind: Kind::RetransmitTimeout,
            cause: CAUSE_USER_TIMEOUT,
            limit: LIMIT_USER_TIMEOUT,
            max_retries: RETRIES_NONE,
        };
    }
    let (limit, retries) = if sk.orphan() {
        let mut retries: u8 = read(net, layout!(net_tcp_orphan_retries));
        let rto: u32 = read(sk.0, layout!(icsk_rto));
        let rto_max_at = layout!(icsk_rto_max);
        let rto_max = if rto_max_at == MISSING {
            120 * layout!(hz)
        } else {
            read(sk.0, rto_max_at)
        };
        if retries == 0 && rto < rto_max {
            retries = 8;
        }
        (LIMIT_ORPHAN_RETRIES, retries)
    } else {
        (LIMIT_RETRIES2, read::<u8>(net, layout!(net_tcp_retries2)))
    };
    Kill {
        kind: Kind::RetransmitTimeout,
        cause: CAUSE_RETRIES_EXHAUSTED,
        limit,
        max_retries: retries,
    }
}

/// Reports that `kill` ends `sk`, which closes now (or has just closed, when
/// the close itself went unseen).
pub(crate) fn report_kill(sk: Sock, cookie: u64, kill: Kill, err: u32) {
    let Some(note) = KILL_NOTE.get_ptr_mut(0) else {
        return;
    };
    // Kills come only from connected states: silent this long while
    // connected; a connect, since its first SYN.
    let syn = kill.kind == Kind::SynTimeout;
    let idle = jiffies32().wrapping_sub(sk.last_heard());
    let dead_ms = if syn {
        sk.since_retrans_stamp_ms().unwrap_or(DEAD_NONE)
    } else {
        (u64::from(idle) * 1000 / u64::from(layout!(hz)).max(1)) as u32
    };
    // SAFETY: this CPU's slot; a program that interrupted this one and
    // reported a kill of its own has finished with it.
    unsafe {
        *note = KillNote {
            kind: kill.kind as u8,
            cause: kill.cause,
            limit: kill.limit,
            max_retries: kill.max_retries,
            retries: sk.retransmits(),
            pad: [0; 3],
            error: err,
            idle: if syn { IDLE_NONE } else { idle },
            dead_ms,
            pad2: 0,
        };
    }
    // The kind is the note's (see `KillNote`).
    emit(Kind::KeepaliveTimeout, sk, cookie, None, |r| {
        r.state = TCP_CLOSE as u8;
        if let Some(note) = KILL_NOTE.get_ptr(0) {
            // SAFETY: this CPU's slot, written above.
            let n = unsafe { &*note };
            r.kind = n.kind;
            r.error = n.error;
            r.cause = n.cause;
            r.idle = n.idle;
            r.dead_ms = n.dead_ms;
            r.retries = n.retries;
            r.limit = n.limit;
            r.max_retries = n.max_retries;
        }
    });
}

/// tcp_probe_timer(): the user timeout, counted from the first probe
/// (`icsk_probes_tstamp`), is checked before the number of probes.
fn zero_window_cause(sk: Sock) -> u8 {
    let user_timeout = u64::from(sk.user_timeout_ms());
    let started = sk.probes_tstamp();
    if user_timeout != 0 && started != 0 {
        let elapsed = u64::from(jiffies32().wrapping_sub(started));
        if elapsed * 1000 >= user_timeout * u64::from(layout!(hz)) {
            return CAUSE_USER_TIMEOUT;
        }
    }
    CAUSE_RETRIES_EXHAUSTED
}
