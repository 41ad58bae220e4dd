//! `sock:inet_sock_set_state`: who connected a socket, and how keepalive killed it.
//!
//! `TP_PROTO(const struct sock *sk, const int oldstate, const int newstate)`

use aya_ebpf::helpers::bpf_get_socket_cookie;
use kalive_common::{IPPROTO_TCP, Kind};

use super::{Args, tracepoint};
use crate::{
    emit::{emit, learn_owner},
    kernel::{Sock, setting},
    maps::CALLBACK,
};

const TCP_SYN_SENT: u64 = 2;
const TCP_CLOSE: u64 = 7;

tracepoint!(
    "inet_sock_set_state",
    inet_sock_set_state,
    inet_sock_set_state_raw,
    set_state
);

fn set_state<const BTF: bool>(args: Args) {
    let sk = Sock(args.get(0));
    if sk.protocol() != IPPROTO_TCP {
        return;
    }
    let old = args.get(1) & 0xff;
    let new = args.get(2) & 0xff;
    let cookie = if BTF {
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

    // tcp_keepalive_timer() -> tcp_write_err() -> tcp_done(): the socket closes
    // inside its own keepalive callback, with the error the application will see.
    // (An orphan in FIN_WAIT2 also closes there, but with no error.)
    if new == TCP_CLOSE
        && let Some(cb) = CALLBACK.get(0)
        && cb.sk == sk.0
    {
        let err = sk.err();
        let sport = cb.sport;
        if err != 0 {
            // The tracepoint fires before the state is stored and after the port
            // is released: report the state and port as they are and were.
            emit(Kind::KeepaliveTimeout, sk, cookie, |r| {
                r.error = err;
                r.state = new as u8;
                r.sport = sport;
            });
        }
    }

    if setting!(state_changes) != 0 {
        emit(Kind::StateChange, sk, cookie, |r| {
            r.old_state = old as u8;
            r.state = new as u8;
        });
    }
}
