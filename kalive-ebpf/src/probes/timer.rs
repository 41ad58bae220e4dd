//! TCP's timers, seen through `timer:timer_expire_entry`, `timer_start` and
//! `timer_expire_exit`: the keepalive timer (`tcp_keepalive_timer`) and the write
//! timer (`tcp_write_timer`) when it runs the persist timer, which probes a zero
//! window.
//!
//! A callback that sends a probe increments `icsk_probes_out` and re-arms its own
//! timer, which fires `timer_start` while the callback is still running.
//! Comparing `icsk_probes_out` at callback entry and at that re-arm tells whether
//! a probe left. These tracepoints fire for every timer in the system, so the
//! first thing each does is the cheap filter on the timer's function.

use kalive_common::Kind;

use super::{Args, hook};
use crate::{
    emit::{emit, jiffies32, zero_window_probed},
    kernel::{ICSK_TIME_PROBE0, Sock, layout, timer_expires, timer_function},
    maps::{CALLBACK, KEEPALIVE, WRITE},
};

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

// TP_PROTO(struct timer_list *timer, unsigned long baseclk)
hook!(
    "timer_expire_entry",
    timer_expire_entry,
    timer_expire_entry_raw,
    expire_entry
);

fn expire_entry<const BTF: bool>(args: Args) {
    let timer = args.get(0);
    let Some((kind, sk)) = tcp_timer(timer) else {
        return;
    };
    let Some(cb) = CALLBACK.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot; timer callbacks do not nest on one CPU.
    unsafe {
        (*cb).timer = timer;
        (*cb).sk = sk.0;
        (*cb).kind = kind;
        (*cb).probes_before = sk.probes_out();
        (*cb).pending = if kind == WRITE { sk.pending() } else { 0 };
    }
}

// TP_PROTO(struct timer_list *timer). The callback may have freed the socket:
// nothing here reads it.
hook!(
    "timer_expire_exit",
    timer_expire_exit,
    timer_expire_exit_raw,
    expire_exit
);

fn expire_exit<const BTF: bool>(args: Args) {
    let timer = args.get(0);
    let Some(cb) = CALLBACK.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot.
    unsafe {
        if (*cb).timer == timer {
            (*cb).timer = 0;
            (*cb).sk = 0;
        }
    }
}

// 6.x: TP_PROTO(struct timer_list *timer, unsigned long bucket_expiry); older
// kernels add arguments after `timer`. Only `timer` is used.
hook!("timer_start", timer_start, timer_start_raw, start);

fn start<const BTF: bool>(args: Args) {
    let timer = args.get(0);
    let Some((kind, sk)) = tcp_timer(timer) else {
        return;
    };
    let pending = if kind == WRITE { sk.pending() } else { 0 };
    // The write timer armed for something else than the persist timer: if the
    // socket was probing a zero window, the window opened (tcp_ack_probe()).
    if kind == WRITE && pending != ICSK_TIME_PROBE0 {
        zero_window_probed(sk, false);
        return;
    }
    let Some(cb) = CALLBACK.get(0) else {
        return;
    };
    // Only a re-arm from inside the timer's own callback is its verdict.
    if cb.timer != timer {
        return;
    }
    let probes = sk.probes_out();
    if probes <= cb.probes_before {
        // Not idle long enough yet, busy, the socket was locked, or the
        // probe could not be sent: no probe.
        return;
    }
    let next = (timer_expires(timer) as u32).wrapping_sub(jiffies32());
    if kind == KEEPALIVE {
        emit(Kind::ProbeSent, sk, 0, None, |r| r.next = next);
    } else {
        // tcp_probe_timer() -> tcp_send_probe0()
        zero_window_probed(sk, true);
        emit(Kind::ZeroWindowProbeSent, sk, 0, None, |r| r.next = next);
    }
}
