//! `tcp:tcp_probe` (the peer answered) and `tcp:tcp_destroy_sock` (forget the socket).

use aya_ebpf::helpers::bpf_get_socket_cookie;
use kalive_common::{AckSeen, Kind};

use super::{Args, hook};
use crate::{
    emit::{
        answered, answered_at, emit, forget_owner, forget_probing, forget_zero_window, jiffies32,
        zero_window_not_probing,
    },
    kernel::{ICSK_TIME_PROBE0, Segment, Sock},
};

// TP_PROTO(struct sock *sk, const struct sk_buff *skb): every segment received on
// an established socket, before tcp_ack() resets icsk_probes_out.
hook!("tcp_probe", tcp_probe, tcp_probe_raw, segment);

fn segment<const BTF: bool>(args: Args) {
    let sk = Sock(args.get(0));
    let probing_zero_window = sk.pending() == ICSK_TIME_PROBE0;
    if !probing_zero_window {
        // If it was probing before, the previous ACK opened the window.
        zero_window_not_probing(sk);
    }
    if sk.probes_out() == 0 {
        return;
    }
    // Zero-window probes share icsk_probes_out; they are not keepalive.
    if probing_zero_window {
        return;
    }
    // The answer to a probe is a bare ACK, which tcp_ack() always processes. A
    // data segment acking nothing new may take the fast path that skips
    // tcp_ack() and leaves the probes counted; an RST ends the connection
    // (reported when it closes). A bare FIN still answers.
    let seg = Segment::of(args.get(1));
    if seg.payload
        || seg.flags & Segment::ACK == 0
        || seg.flags & (Segment::RST | Segment::SYN) != 0
    {
        return;
    }
    // Not before the kernel has accepted it (this hook runs before it checks):
    // a segment it will drop is no answer; one it is unsure of is left to the
    // next keepalive timer, which reads the kernel's verdict.
    if !sk.accepts(&seg) {
        return;
    }
    let cookie = if BTF {
        // SAFETY: tp_btf hands over the trusted `struct sock *` the helper needs.
        unsafe { bpf_get_socket_cookie(args.get(0) as *mut core::ffi::c_void) }
    } else {
        0
    };
    // The ACK being processed answers the probes: none are unanswered after it.
    answered_at(sk, jiffies32());
    emit(Kind::ProbeAcked, sk, cookie, None, |r| {
        r.probes = 0;
        r.cause = AckSeen::Segment as u8;
    });
}

// TP_PROTO(struct sock *sk)
hook!(
    "tcp_destroy_sock",
    tcp_destroy_sock,
    tcp_destroy_sock_raw,
    destroy
);

fn destroy<const BTF: bool>(args: Args) {
    let sk = Sock(args.get(0));
    answered(sk, AckSeen::Close);
    forget_probing(sk);
    forget_owner(sk);
    forget_zero_window(sk);
}
