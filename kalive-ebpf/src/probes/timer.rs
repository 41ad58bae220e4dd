//! TCP's timers: the keepalive timer (`tcp_keepalive_timer`) and the write timer
//! (`tcp_write_timer`) when it runs the persist timer, which probes a zero window.
//!
//! The records are made the same way whatever the backend; only how the kernel's
//! steps are seen differs:
//! - a timer callback begins and ends: `timer:timer_expire_entry`/`exit` (all
//!   timers, filtered on the function), or a hook on the callback function;
//! - a probe leaves: the callback re-arms its own timer with a higher
//!   `icsk_probes_out` (`timer:timer_start` while the callback runs), or
//!   `tcp_write_wakeup()` returns inside a keepalive callback, or
//!   `tcp_send_probe0()` returns;
//! - a zero window opens: the write timer is armed for anything but the persist
//!   timer (`timer_start`, or `tcp_rearm_rto()`).
//!
//! The timer tracepoints fire for every timer in the system, so the first thing
//! each does is the cheap filter on the timer's function.

use kalive_common::{
    AckSeen, FLAG_UNSENT, Kind, TIMER_START_KEEPALIVE_PROBES, TIMER_START_ZERO_WINDOW_OPEN,
    TIMER_START_ZERO_WINDOW_PROBES,
};

use super::{Args, hook};
use crate::{
    emit::{
        answered, caught_up, emit, jiffies32, keepalive_armed, missed_answered, now_ns, probing,
        zero_window_not_probing, zero_window_probed_again, zero_window_probing,
    },
    kernel::{ICSK_TIME_PROBE0, Sock, layout, plain, setting, timer_expires, timer_function},
    maps::{
        CALLBACK, Callback, DEFERRED, KEEPALIVE, KEEPALIVE_DEFERRED, SEEN_CLOSE, SEEN_PROBE,
        SEEN_REARM, TEST_PROBING_CALLBACKS, WRITE,
    },
};

use super::state::{TCP_CLOSE, TCP_LISTEN, TCP_SYN_SENT, is_reset, killed_by, report_kill};

/// Which of TCP's timers `timer` is, and its socket.
fn tcp_timer(timer: u64) -> Option<(u8, Sock)> {
    if timer == 0 {
        return None;
    }
    let function = timer_function(timer);
    if function == layout!(keepalive_timer_fn) {
        Some((KEEPALIVE, Sock::of_keepalive_timer(timer)))
    } else if function == layout!(write_timer_fn) {
        Some((WRITE, Sock::of_write_timer(timer)))
    } else {
        None
    }
}

/// A keepalive or write timer callback begins on this CPU. Inlined: where
/// `kind` is known (a function hook's), a write timer's program then holds
/// none of the keepalive's global functions, which the verifier checks
/// whether or not they can be reached.
#[inline(always)]
pub(crate) fn callback_begin(kind: u8, timer: u64, sk: Sock) {
    let Some(cb) = CALLBACK.get_ptr_mut(0) else {
        return;
    };
    if setting!(test_defer_callback_end) != 0 {
        deferred_end(sk.0);
    }
    // Tests: a keepalive callback as if the kernel had not run its programs
    // (nor those of the hooks inside it: the slot keeps the timer, with no
    // socket); a write-timer callback as if it ran later, in process context
    // (the socket was locked: tcp_release_cb()).
    let skip = if kind == KEEPALIVE {
        let n = setting!(test_skip_callbacks);
        (n != 0 && sk.probes_out() == n - 1) || test_skip_probing(sk)
    } else {
        let n = setting!(test_skip_write_callbacks);
        n != 0 && sk.backoff() >= n - 1
    };
    if skip {
        // SAFETY: this CPU's slot.
        unsafe {
            (*cb).timer = if kind == KEEPALIVE { timer } else { 0 };
            (*cb).sk = 0;
        }
        return;
    }
    let pending = if kind == WRITE { sk.pending() } else { 0 };
    if kind == KEEPALIVE {
        // An ACK since the last probe is found here, at the latest one
        // interval after it (tcp_keepalive_timer() re-arms one apart).
        // Probes whose own callbacks went unseen, answered since ...
        let (sk, timer) = (plain(sk.0), plain(timer));
        kalive_missed_answered(sk, timer);
        kalive_answered(sk);
        // ... or still out, found one interval later.
        kalive_caught_up(sk, timer);
        kalive_keepalive_deferred(sk);
    } else if pending != ICSK_TIME_PROBE0 {
        // The write timer fires for something else than the persist timer
        // (or for nothing: tcp_ack_probe() clears it without stopping it): a
        // window kalive saw shut is open.
        zero_window_not_probing(sk);
    }
    // SAFETY: this CPU's slot; timer callbacks do not nest on one CPU.
    unsafe {
        (*cb).timer = timer;
        (*cb).sk = sk.0;
        (*cb).kind = kind;
        (*cb).probes_before = sk.probes_out();
        (*cb).pending = pending;
        (*cb).state_before = sk.state();
        (*cb).seen = 0;
        (*cb).began = jiffies32();
        (*cb).expires = timer_expires(timer) as u32;
    }
}

// What a keepalive callback's beginning looks into, each a global function:
// the verifier checks it once, on its own, with any socket address, and its
// caller sees a call that returns a number. Inlined (or as static functions,
// checked again for each path of the caller that reaches them), their record
// sites multiplied each other's paths: 6.1's verifier took 11 s of every
// start on the program that begins keepalive callbacks, under the VM's
// emulation. The socket is a plain address: a global function takes no
// BTF-typed pointer on 6.1, and kalive reads sockets through
// `bpf_probe_read_kernel` anyway.

#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn kalive_missed_answered(sk: u64, timer: u64) -> i32 {
    missed_answered(Sock(sk), timer);
    0
}

#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn kalive_answered(sk: u64) -> i32 {
    answered(Sock(sk), AckSeen::KeepaliveTimer);
    0
}

#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn kalive_caught_up(sk: u64, timer: u64) -> i32 {
    caught_up(Sock(sk), timer);
    0
}

#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn kalive_keepalive_deferred(sk: u64) -> i32 {
    keepalive_deferred(Sock(sk));
    0
}

/// The keepalive callback of `sk` begins: with data in flight after keepidle
/// of silence, it will not probe but re-arm keepidle later
/// (`tcp_keepalive_timer()`: "It is alive without keepalive"), and the
/// retransmission timer decides. Reported once per silence.
fn keepalive_deferred(sk: Sock) {
    let unacked = sk.packets_out();
    if unacked == 0 || !sk.keepalive_on() {
        return;
    }
    let state = u64::from(sk.state());
    if state == TCP_CLOSE || state == TCP_SYN_SENT || state == TCP_LISTEN {
        return;
    }
    let heard = sk.last_heard();
    let (keepidle, _, _) = sk.keepalive_config(sk.net());
    if jiffies32().wrapping_sub(heard) < keepidle {
        return;
    }
    // SAFETY: the value is copied out at once.
    if unsafe { KEEPALIVE_DEFERRED.get(&sk.0) }.copied() == Some(heard) {
        return;
    }
    let _ = KEEPALIVE_DEFERRED.insert(&sk.0, &heard, 0);
    emit(Kind::KeepaliveDeferred, sk, 0, None, |r| {
        r.unacked = unacked;
        r.next = keepidle;
    });
}

/// Tests only: whether to ignore this keepalive callback of `sk`, one of the
/// last `run` of every `n` to begin after keepidle of silence.
fn test_skip_probing(sk: Sock) -> bool {
    let n = setting!(test_skip_probing_callbacks);
    if n == 0 || !sk.silent_for_keepidle() {
        return false;
    }
    let count = match TEST_PROBING_CALLBACKS.get_ptr_mut(&sk.0) {
        // SAFETY: a valid element; one socket's callbacks do not overlap.
        Some(count) => unsafe {
            *count += 1;
            *count
        },
        None => {
            let _ = TEST_PROBING_CALLBACKS.insert(&sk.0, &1, 0);
            1
        }
    };
    let left = u32::from(n) - count % u32::from(n);
    left == u32::from(n) || left < u32::from(setting!(test_skip_probing_run))
}

/// The callback of `timer` (or, when the hook cannot tell, 0: whichever ran)
/// ends. (Not an `Option`: as the argument of a BPF function call, `None`
/// leaves its value's register unset, which the verifier refuses to read.)
pub(crate) fn callback_end(timer: u64) {
    let Some(cb) = CALLBACK.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot.
    let cb = unsafe { &mut *cb };
    let defer = setting!(test_defer_callback_end) != 0;
    if defer {
        deferred_end(0);
    }
    if timer != 0 && timer != cb.timer {
        return;
    }
    if cb.sk != 0 && cb.kind == KEEPALIVE {
        // Where the callback left its timer, if it re-armed it.
        let sk = Sock(cb.sk);
        let expires = timer_expires(cb.timer) as u32;
        if expires != cb.expires && sk.keepalive_on() {
            keepalive_armed(sk, expires);
        }
    }
    if cb.sk != 0 {
        if defer && cb.kind == KEEPALIVE {
            if let Some(later) = DEFERRED.get_ptr_mut(0) {
                // SAFETY: this CPU's slot.
                unsafe { *later = (*cb, u64::from(jiffies32())) };
            }
        } else {
            unseen(cb);
        }
    }
    cb.timer = 0;
    cb.sk = 0;
}

/// Tests only: the end of a deferred keepalive callback, looked at from the
/// end of a later timer callback on this CPU, once a tenth of a second passed;
/// or, when `before` is its socket, now: its next callback begins (a real
/// callback ends before its timer can fire again).
fn deferred_end(before: u64) {
    let Some(later) = DEFERRED.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot.
    let (cb, ended) = unsafe { &mut *later };
    let hz = u64::from(layout!(hz));
    if cb.sk == 0
        || (cb.sk != before && u64::from(jiffies32().wrapping_sub(*ended as u32)) < hz / 10)
    {
        return;
    }
    unseen(cb);
    cb.sk = 0;
}

/// Reports what the callback did that no hook inside it saw. The kernel skips a
/// program that fires while the same program runs on this CPU (its recursion
/// protection): `inet_sock_set_state` or a function's exit hook running in
/// process context, interrupted by the tick that runs this callback; on the
/// kprobe backend, any kprobe while another kprobe or classic tracepoint
/// program runs (`bpf_prog_active`). Not `timer_start`: it fires only from
/// `enqueue_timer()` with interrupts off. The timer callbacks themselves run
/// only in softirq, so their programs never nest (for callbacks the kernel ran
/// no program for at all, see `caught_up()`).
///
/// The callback may have freed the socket. Its memory stays a TCP socket (the
/// slab is `SLAB_TYPESAFE_BY_RCU`) and reads cannot fault; a socket allocated
/// anew in it has sent no probe and has no error, so it is never reported.
fn unseen(cb: &mut Callback) {
    let sk = Sock(cb.sk);
    if cb.seen & SEEN_CLOSE == 0
        && u64::from(cb.state_before) != TCP_CLOSE
        && u64::from(sk.state()) == TCP_CLOSE
    {
        let err = sk.err();
        // A reset is never the callback's doing: another CPU processed it (or
        // an abort) after the callback released the socket, and reported it.
        if is_reset(err) {
            return;
        }
        if let Some(kill) = killed_by(sk, u64::from(cb.state_before), err, cb) {
            report_kill(sk, 0, kill, err);
        }
        return;
    }
    if cb.seen & (SEEN_REARM | SEEN_PROBE) != 0
        || sk.probes_out() <= cb.probes_before
        || (cb.kind == WRITE && cb.pending != ICSK_TIME_PROBE0)
    {
        return;
    }
    // The timer was re-armed from when the callback ran, not from now.
    probe_left(cb.kind, cb.timer, sk, cb.began);
}

/// The callback of `timer` (a `kind` timer of `sk`) sent a probe.
fn probe_left(kind: u8, timer: u64, sk: Sock, now: u32) {
    if kind == KEEPALIVE {
        let next = (timer_expires(timer) as u32).wrapping_sub(now);
        let at = now_ns();
        probing(sk, sk.probes_out(), at);
        emit(Kind::ProbeSent, sk, 0, None, |r| {
            r.ts_ns = at;
            r.next = next;
        });
    } else {
        // tcp_probe_timer() -> tcp_send_probe0()
        zero_window_probe(sk, 0);
    }
}

/// Marks that a hook inside the callback running on this CPU, if it is
/// `sk`'s, saw `what`.
fn seen(sk: Sock, what: u8) {
    if let Some(cb) = CALLBACK.get_ptr_mut(0) {
        // SAFETY: this CPU's slot.
        unsafe {
            if (*cb).sk == sk.0 {
                (*cb).seen |= what;
            }
        }
    }
}

/// `tcp_write_wakeup(sk, ...)` returned `ret`. Inside a keepalive callback, that
/// is the keepalive probe; `ret <= 0` means the kernel counts it and re-arms one
/// interval later (`tcp_keepalive_timer()`).
pub(crate) fn write_wakeup_returned(sk: Sock, ret: i64, cookie: u64) {
    let Some(cb) = CALLBACK.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot.
    let cb = unsafe { &mut *cb };
    if cb.kind != KEEPALIVE || cb.sk != sk.0 {
        return;
    }
    cb.seen |= SEEN_PROBE;
    if ret > 0 {
        probe_not_sent(sk, cookie);
        return;
    }
    let probes = sk.probes_out().wrapping_add(1);
    let at = now_ns();
    probing(sk, probes, at);
    emit(Kind::ProbeSent, sk, cookie, None, |r| {
        r.ts_ns = at;
        r.probes = probes;
        r.next = r.keepintvl;
    });
}

/// `tcp_send_probe0(sk)` returned: a zero-window probe left, unless probing
/// turned out not to be needed (then `icsk_probes_out` is 0).
pub(crate) fn send_probe0_returned(sk: Sock, cookie: u64) {
    if sk.probes_out() == 0 || sk.pending() != ICSK_TIME_PROBE0 {
        return;
    }
    zero_window_probe(sk, cookie);
}

/// `tcp_rearm_rto(sk)`: the write timer is armed for retransmission.
pub(crate) fn rto_rearmed(sk: Sock) {
    if sk.pending() != ICSK_TIME_PROBE0 {
        zero_window_not_probing(sk);
    }
}

fn zero_window_probe(sk: Sock, cookie: u64) {
    let timer = sk.0 + u64::from(layout!(write_timer));
    let next = (timer_expires(timer) as u32).wrapping_sub(jiffies32());
    zero_window_probing(sk);
    seen(sk, SEEN_PROBE);
    emit(Kind::ZeroWindowProbeSent, sk, cookie, None, |r| {
        r.next = next
    });
}

// TP_PROTO(struct timer_list *timer, unsigned long baseclk)
hook!(
    "timer_expire_entry",
    timer_expire_entry,
    timer_expire_entry_raw,
    expire_entry
);

fn expire_entry<const BTF: bool>(args: Args) {
    let timer = args.get(0);
    if let Some((kind, sk)) = tcp_timer(timer) {
        callback_begin(kind, timer, sk);
    }
}

// TP_PROTO(struct timer_list *timer)
hook!(
    "timer_expire_exit",
    timer_expire_exit,
    timer_expire_exit_raw,
    expire_exit
);

fn expire_exit<const BTF: bool>(args: Args) {
    callback_end(args.get(0));
}

// 6.x: TP_PROTO(struct timer_list *timer, unsigned long bucket_expiry); older
// kernels add arguments after `timer`. Only `timer` is used. Attached only when
// a backend lacks a function hook for something it detects.
hook!("timer_start", timer_start, timer_start_raw, start);

fn start<const BTF: bool>(args: Args) {
    let timer = args.get(0);
    let Some((kind, sk)) = tcp_timer(timer) else {
        return;
    };
    let does = setting!(timer_start_does);
    let pending = if kind == WRITE { sk.pending() } else { 0 };
    // The write timer armed for something else than the persist timer (every
    // send arms it: the hot path ends here): if the socket was probing a zero
    // window, the window opened (tcp_ack_probe()).
    if kind == WRITE && pending != ICSK_TIME_PROBE0 {
        if does & TIMER_START_ZERO_WINDOW_OPEN != 0 {
            zero_window_not_probing(sk);
        }
        return;
    }
    let Some(cb) = CALLBACK.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot.
    let cb = unsafe { &mut *cb };
    // Tests: the re-arm of a callback ignored as unseen is unseen too.
    if cb.timer == timer && cb.sk == 0 {
        return;
    }
    // Armed outside its callback (connect, accept, a keepalive setsockopt()):
    // noted here; a callback's own re-arm is noted as it ends.
    if kind == KEEPALIVE && cb.timer != timer && sk.keepalive_on() {
        keepalive_armed(sk, timer_expires(timer) as u32);
    }
    let wanted = if kind == KEEPALIVE {
        TIMER_START_KEEPALIVE_PROBES
    } else {
        TIMER_START_ZERO_WINDOW_PROBES
    };
    if does & wanted == 0 {
        return;
    }
    // Only a re-arm from inside the timer's own callback is its verdict; but a
    // write timer that found its socket locked runs later in process context
    // (tcp_release_cb()), and a socket already probing shows whether it did.
    if cb.timer != timer {
        if kind == WRITE && zero_window_probed_again(sk) {
            zero_window_probe(sk, 0);
        }
        return;
    }
    cb.seen |= SEEN_REARM;
    if sk.probes_out() <= cb.probes_before {
        // Not idle long enough yet, busy, the socket was locked, or the
        // probe could not be sent: no probe numbered. The last is told by the
        // retry half a second later, after keepidle of silence (a re-arm for
        // the rest of keepidle comes before that; one because the socket was
        // locked comes 50 ms later; one while data is in flight, keepidle
        // later, and keepidle is at least a second).
        if kind == KEEPALIVE
            && (timer_expires(timer) as u32).wrapping_sub(jiffies32()) == u32::from(layout!(hz)) / 2
            && sk.silent_for_keepidle()
        {
            probe_not_sent(sk, 0);
        }
        return;
    }
    probe_left(kind, timer, sk, jiffies32());
}

/// The keepalive timer of `sk` tried to send a probe and could not
/// (`tcp_write_wakeup()` > 0: local congestion). The kernel counts the attempt
/// in `TcpExtTCPKeepAlive`, not in `icsk_probes_out`, and tries again in half a
/// second (`TCP_RESOURCE_PROBE_INTERVAL`).
fn probe_not_sent(sk: Sock, cookie: u64) {
    let hz = u32::from(layout!(hz));
    emit(Kind::ProbeSent, sk, cookie, None, |r| {
        r.next = hz / 2;
        r.flags |= FLAG_UNSENT;
    });
}
