//! `kalive ls` without BPF: the kernel's socket diagnostics
//! (`NETLINK_SOCK_DIAG`) list a namespace's TCP sockets with their timer and
//! `tcp_info`, as `ss` reads them; the keepalive settings, which they do not
//! carry, come from `getsockopt()` on a descriptor duplicated from a process
//! that holds the socket (`pidfd_getfd`), and the namespace's defaults from
//! its sysctls. What this path cannot know exactly is said in each record
//! (`missing`) and in the docs: whether a setting is the socket's own when it
//! equals the sysctl, and when a retransmission episode began (estimated from
//! the RTO's backoff).

use std::{
    fs,
    net::IpAddr,
    os::fd::{AsFd as _, OwnedFd},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use kalive_common::SockEntry;
use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::{
    SockDiagMessage,
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{
        ExtensionFlags, InetRequest, InetResponse, SocketId, StateFlags, Timer,
        nlas::{Nla, TcpInfo},
    },
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_SOCK_DIAG};
use nix::sys::socket::{getsockopt, sockopt};

/// Hands `each` the TCP sockets of the calling thread's network namespace,
/// both families, as the kernel answers (none kept: a response is large):
/// every state but `TIME_WAIT` and requests (no `tcp_sock` behind them).
///
/// # Errors
/// When the netlink socket cannot be opened or the kernel answers an error.
pub fn dump(mut each: impl FnMut(&InetResponse)) -> Result<()> {
    for family in [AF_INET, AF_INET6] {
        dump_family(family, &mut each).with_context(|| {
            format!(
                "reading the {} TCP sockets (NETLINK_SOCK_DIAG)",
                if family == AF_INET { "IPv4" } else { "IPv6" }
            )
        })?;
    }
    Ok(())
}

fn dump_family(family: u8, each: &mut impl FnMut(&InetResponse)) -> Result<()> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut states = StateFlags::all();
    // (Requests, NEW_SYN_RECV, are not among the flags.)
    states.remove(StateFlags::TIME_WAIT);
    let mut request = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::INFO,
            states,
            socket_id: if family == AF_INET {
                SocketId::new_v4()
            } else {
                SocketId::new_v6()
            },
        })
        .into(),
    );
    request.finalize();
    let mut buf = vec![0; request.buffer_len()];
    request.serialize(&mut buf);
    socket.send(&buf, 0)?;

    let mut receive = vec![0u8; 1 << 16];
    loop {
        let size = socket.recv(&mut &mut receive[..], 0)?;
        let mut offset = 0;
        while offset < size {
            let message = NetlinkMessage::<SockDiagMessage>::deserialize(&receive[offset..size])
                .context("decoding the kernel's answer")?;
            let length = message.header.length as usize;
            match message.payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => each(&r),
                NetlinkPayload::Done(_) => return Ok(()),
                NetlinkPayload::Error(err) => bail!("the kernel answered {err:?}"),
                _ => {}
            }
            if length == 0 {
                break;
            }
            offset += length;
        }
    }
}

/// A namespace's TCP defaults, as its sysctls say (read from a thread in it:
/// `/proc/sys/net` is the reader's namespace's).
#[derive(Debug, Clone, Copy, Default)]
pub struct Sysctls {
    pub keepalive_time: u32,
    pub keepalive_intvl: u32,
    pub keepalive_probes: u8,
    pub retries2: u8,
    pub orphan_retries: u8,
    pub syn_retries: u8,
    /// 0 before 6.5, which has no linear SYN timeouts.
    pub syn_linear_timeouts: u8,
}

impl Sysctls {
    /// # Errors
    /// When a sysctl every kernel kalive runs on has cannot be read.
    pub fn read() -> Result<Self> {
        let read = |name: &str| -> Result<u32> {
            let path = format!("/proc/sys/net/ipv4/{name}");
            let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
            text.trim()
                .parse()
                .with_context(|| format!("{path}: {text:?} is not a number"))
        };
        let small = |name: &str| -> Result<u8> { Ok(u8::try_from(read(name)?).unwrap_or(u8::MAX)) };
        Ok(Self {
            keepalive_time: read("tcp_keepalive_time")?,
            keepalive_intvl: read("tcp_keepalive_intvl")?,
            keepalive_probes: small("tcp_keepalive_probes")?,
            retries2: small("tcp_retries2")?,
            orphan_retries: small("tcp_orphan_retries")?,
            syn_retries: small("tcp_syn_retries")?,
            syn_linear_timeouts: small("tcp_syn_linear_timeouts").unwrap_or(0),
        })
    }
}

/// A socket's keepalive settings as `getsockopt()` gives them: effective
/// values (the socket's own, or its namespace's sysctl).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub keepalive: bool,
    pub keepidle_s: u32,
    pub keepintvl_s: u32,
    pub keepcnt: u8,
    pub user_timeout_ms: u32,
    pub syn_retries: u8,
}

impl Settings {
    /// Of the socket behind `fd`.
    ///
    /// # Errors
    /// When `getsockopt()` fails (not a TCP socket).
    pub fn of(fd: &OwnedFd) -> Result<Self> {
        let fd = fd.as_fd();
        // Both counts are at most 255 in the kernel.
        let count = |v: i64| u8::try_from(v).unwrap_or(u8::MAX);
        Ok(Self {
            keepalive: getsockopt(&fd, sockopt::KeepAlive)?,
            keepidle_s: getsockopt(&fd, sockopt::TcpKeepIdle)?,
            keepintvl_s: getsockopt(&fd, sockopt::TcpKeepInterval)?,
            keepcnt: count(i64::from(getsockopt(&fd, sockopt::TcpKeepCount)?)),
            user_timeout_ms: getsockopt(&fd, sockopt::TcpUserTimeout)?,
            syn_retries: count(i64::from(syncnt(&fd)?)),
        })
    }
}

/// `TCP_SYNCNT` (nix has no wrapper).
fn syncnt(fd: &std::os::fd::BorrowedFd<'_>) -> Result<i32> {
    use std::os::fd::AsRawFd as _;
    let mut value: libc::c_int = 0;
    let mut len = libc::socklen_t::try_from(size_of::<libc::c_int>()).unwrap_or(4);
    // SAFETY: an int-sized option into an int, with its size.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_SYNCNT,
            (&raw mut value).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(value)
}

/// An arbitrary "now" for the jiffies and clock fields of the entries made
/// here: only differences from it are read.
const NOW_JIFFIES: u32 = 1 << 30;
const NOW_US: u64 = 1 << 40;

/// The entry [`crate::ls`] makes a record of, from what the diagnostics say
/// of a socket, its namespace (`netns`, `sysctls`) and `boot_ns`, when it
/// was read. Its settings, read later for the sockets listed, go in with
/// [`apply`].
#[must_use]
pub fn entry(r: &InetResponse, netns: u32, sysctls: &Sysctls, hz: u32, boot_ns: u64) -> SockEntry {
    let hz64 = u64::from(hz.max(1));
    let jiffies =
        |d: Duration| u32::try_from(d.as_millis() * u128::from(hz64) / 1000).unwrap_or(u32::MAX);
    let ms_jiffies = |ms: u32| u32::try_from(u64::from(ms) * hz64 / 1000).unwrap_or(u32::MAX);
    let id = &r.header.socket_id;
    let octets = |a: IpAddr| -> [u8; 16] {
        let mut out = [0; 16];
        match a {
            IpAddr::V4(a) => out[..4].copy_from_slice(&a.octets()),
            IpAddr::V6(a) => out = a.octets(),
        }
        out
    };
    let cookie = {
        let lo = u32::from_ne_bytes([id.cookie[0], id.cookie[1], id.cookie[2], id.cookie[3]]);
        let hi = u32::from_ne_bytes([id.cookie[4], id.cookie[5], id.cookie[6], id.cookie[7]]);
        u64::from(lo) | (u64::from(hi) << 32)
    };
    let info: Option<&TcpInfo> = r.nlas.iter().find_map(|n| match n {
        Nla::TcpInfo(info) => Some(info),
        _ => None,
    });
    let mut e = SockEntry {
        cookie,
        ino: u64::from(r.header.inode),
        netns,
        state: r.header.state,
        family: u16::from(r.header.family),
        sport: id.source_port.to_be(),
        dport: id.destination_port.to_be(),
        saddr: octets(id.source_address),
        daddr: octets(id.destination_address),
        net_keepidle: sysctls.keepalive_time.saturating_mul(hz),
        net_keepintvl: sysctls.keepalive_intvl.saturating_mul(hz),
        net_keepcnt: sysctls.keepalive_probes,
        net_retries2: sysctls.retries2,
        net_orphan_retries: sysctls.orphan_retries,
        net_syn_retries: sysctls.syn_retries,
        net_syn_linear: sysctls.syn_linear_timeouts,
        now: NOW_JIFFIES,
        mono_us: NOW_US,
        boot_ns,
        // A socket no process has a descriptor of has no inode.
        orphan: u8::from(r.header.inode == 0),
        ..SockEntry::default()
    };
    if let Some(info) = info {
        e.probes = info.probes;
        e.retransmits = info.retransmits;
        e.backoff = info.backoff;
        e.rto = u32::try_from(u64::from(info.rto) * hz64 / 1_000_000).unwrap_or(u32::MAX);
        e.packets_out = info.unacked;
        e.snd_wnd = info.snd_wnd;
        e.rcv_tstamp = NOW_JIFFIES.wrapping_sub(ms_jiffies(info.last_ack_recv));
        e.lrcvtime = NOW_JIFFIES.wrapping_sub(ms_jiffies(info.last_data_recv));
    }
    match r.header.timer {
        Some(Timer::KeepAlive(d)) => {
            e.timer_pending = 1;
            e.timer_expires = NOW_JIFFIES.wrapping_add(jiffies(d));
        }
        Some(Timer::Retransmit(d, _)) => {
            e.write_timer = 1;
            e.write_expires = NOW_JIFFIES.wrapping_add(jiffies(d));
        }
        Some(Timer::Probe(d)) => {
            e.write_timer = 3;
            e.write_expires = NOW_JIFFIES.wrapping_add(jiffies(d));
        }
        _ => {}
    }
    if e.write_timer == 1 && e.retransmits > 0 {
        let since = episode_ms(
            u64::from(e.rto) * 1000 / hz64,
            u64::from(e.write_expires.wrapping_sub(NOW_JIFFIES)) * 1000 / hz64,
            u32::from(e.retransmits),
            e.state == 2,
        );
        // retrans_stamp, on a TCP clock in ms whose now is NOW_US.
        e.retrans_stamp =
            u32::try_from((NOW_US / 1000).saturating_sub(since) % (1 << 32)).unwrap_or(0);
    }
    e
}

/// Puts a socket's settings, as `getsockopt()` gave them, into its entry:
/// raw, as the kernel keeps them (0 when the sysctl applies; a value set on
/// the socket equal to the sysctl's reads as the sysctl's).
pub fn apply(e: &mut SockEntry, s: &Settings, sysctls: &Sysctls, hz: u32) {
    let own = |value: u32, net: u32| if value == net { 0 } else { value * hz };
    e.keepalive = u8::from(s.keepalive);
    e.keepidle = own(s.keepidle_s, sysctls.keepalive_time);
    e.keepintvl = own(s.keepintvl_s, sysctls.keepalive_intvl);
    e.keepcnt = if s.keepcnt == sysctls.keepalive_probes {
        0
    } else {
        s.keepcnt
    };
    e.user_timeout_ms = s.user_timeout_ms;
    e.syn_retries = if s.syn_retries == sysctls.syn_retries {
        0
    } else {
        s.syn_retries
    };
}

/// How long ago a retransmission episode began, estimated from the RTO's
/// backoff (the diagnostics do not carry `retrans_stamp`): `retransmits`
/// firings so far, each doubling the RTO, the last one `rto_ms - left_ms`
/// ago. The episode's stamp is the first retransmission's; a SYN's, the
/// first SYN's (one interval more). Exact unless the RTO hit its maximum or
/// was clamped to a user timeout.
#[must_use]
pub fn episode_ms(rto_ms: u64, left_ms: u64, retransmits: u32, syn: bool) -> u64 {
    let mut since = rto_ms.saturating_sub(left_ms);
    let mut interval = rto_ms;
    let earlier = if syn {
        retransmits
    } else {
        retransmits.saturating_sub(1)
    };
    for _ in 0..earlier.min(64) {
        interval /= 2;
        since += interval;
    }
    since
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_episode_is_walked_back_through_the_backoff() {
        // Three retransmissions from a 200 ms RTO: at 0, 400, 1200 ms after
        // the first; now 1600 ms RTO, 1000 ms left: the last 600 ms ago.
        assert_eq!(episode_ms(1600, 1000, 3, false), 600 + 800 + 400);
        // One: the stamp is that firing.
        assert_eq!(episode_ms(400, 100, 1, false), 300);
        // A SYN's stamp is the first SYN, an interval before the first
        // retransmission.
        assert_eq!(episode_ms(2000, 2000, 1, true), 1000);
    }
}
