//! The keepalive timer, seen through `timer:timer_expire_entry`, `timer_start`
//! and `timer_expire_exit`.
//!
//! `tcp_keepalive_timer()` runs as the socket's keepalive timer callback. When it
//! sends a probe it increments `icsk_probes_out` and re-arms itself
//! (`inet_csk_reset_keepalive_timer`), which fires `timer_start` while the
//! callback is still running. Comparing `icsk_probes_out` at callback entry and at
//! that re-arm tells whether a probe left. These tracepoints fire for every timer
//! in the system, so the first thing each does is the cheap filter.

use kalive_common::Kind;

use super::{Args, hook};
use crate::{
    emit::{emit, jiffies32},
    kernel::{Sock, layout, timer_expires, timer_function},
    maps::CALLBACK,
};

fn is_keepalive_timer(timer: u64) -> bool {
    timer != 0 && timer_function(timer) == layout!(keepalive_timer_fn)
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
    if !is_keepalive_timer(timer) {
        return;
    }
    let Some(cb) = CALLBACK.get_ptr_mut(0) else {
        return;
    };
    let sk = Sock::of_keepalive_timer(timer);
    // SAFETY: this CPU's slot; timer callbacks do not nest on one CPU.
    unsafe {
        (*cb).timer = timer;
        (*cb).sk = sk.0;
        (*cb).probes_before = sk.probes_out();
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
    if !is_keepalive_timer(timer) {
        return;
    }
    let Some(cb) = CALLBACK.get(0) else {
        return;
    };
    // Re-armed from inside its own callback: the callback decided something.
    if cb.timer != timer {
        return;
    }
    let sk = Sock(cb.sk);
    let probes = sk.probes_out();
    if probes <= cb.probes_before {
        // Not idle long enough yet, busy, or the socket was locked: no probe.
        return;
    }
    let next = (timer_expires(timer) as u32).wrapping_sub(jiffies32());
    emit(Kind::ProbeSent, sk, 0, None, |r| r.next = next);
}
