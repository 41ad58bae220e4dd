//! Kernel records to typed events: the one place that knows how a [`Record`]'s
//! raw fields (jiffies, network byte order, NUL-padded names, numbers) become
//! what users read ([`Event`]).

use kalive_common::{
    DEAD_NONE, FLAG_LATE, FLAG_UNSENT, RETRIES_NONE, Record,
    event::{
        AckSeen, Cause, Errno, Event, Family, Kind, OwnerSource, RetryLimit, Socket, TcpState, What,
    },
};

use crate::clock::WallClock;

/// Turns records into events, with the kernel's HZ and the boot-to-wall-clock
/// offset sampled at start-up.
#[derive(Debug, Clone, Copy)]
pub struct Decoder {
    clock: WallClock,
    hz: u64,
}

impl Decoder {
    /// `hz` converts the kernel's jiffies to milliseconds.
    #[must_use]
    pub fn new(clock: WallClock, hz: u32) -> Self {
        Self {
            clock,
            hz: u64::from(hz.max(1)),
        }
    }

    /// The event a program's record reports; `None` for a kind this kalive does
    /// not know (the pipeline counts those as undecodable before they get here).
    #[must_use]
    pub fn event(&self, r: &Record) -> Option<Event> {
        let what = self.what(r.kind()?, r);
        Some(Event {
            ts: self.clock.timestamp(r.ts_ns),
            what,
            socket: Some(self.socket(r)),
        })
    }

    /// `count` records the kernel could not deliver, noticed at `ts_boot_ns`.
    #[must_use]
    pub fn lost(&self, ts_boot_ns: u64, count: u64) -> Event {
        Event {
            ts: self.clock.timestamp(ts_boot_ns),
            what: What::EventsLost { count },
            socket: None,
        }
    }

    /// The kernel's HZ.
    #[must_use]
    pub const fn hz(&self) -> u64 {
        self.hz
    }

    fn ms(&self, jiffies: u32) -> u64 {
        u64::from(jiffies) * 1000 / self.hz
    }

    fn what(&self, kind: Kind, r: &Record) -> What {
        let kill = || {
            (
                Errno(r.error),
                Cause::from_u8(r.cause).unwrap_or(Cause::Unknown),
                (r.dead_ms != DEAD_NONE).then_some(u64::from(r.dead_ms)),
            )
        };
        let limit = RetryLimit::from_u8(r.limit).unwrap_or(RetryLimit::Unknown);
        let max_retries = (r.max_retries != RETRIES_NONE).then_some(r.max_retries);
        match kind {
            Kind::StateChange => What::StateChange {
                old_state: TcpState::from_kernel(r.old_state),
            },
            Kind::KeepaliveSet => What::KeepaliveSet {
                enabled: r.keepalive_enabled(),
            },
            Kind::ProbeSent => What::ProbeSent {
                next_ms: self.ms(r.next),
                late: r.flags & FLAG_LATE != 0,
                sent: r.flags & FLAG_UNSENT == 0,
            },
            Kind::ProbeAcked => What::ProbeAcked {
                seen_at: AckSeen::from_u8(r.cause).unwrap_or(AckSeen::Unknown),
            },
            Kind::KeepaliveTimeout => {
                let (error, cause, dead_ms) = kill();
                What::KeepaliveTimeout {
                    error,
                    cause,
                    dead_ms,
                }
            }
            // Made by userspace ([`Self::lost`]); a program never writes one.
            Kind::EventsLost => What::EventsLost { count: 0 },
            Kind::ZeroWindowProbeSent => What::ZeroWindowProbeSent {
                backoff: r.backoff,
                next_ms: self.ms(r.next),
                snd_wnd: r.snd_wnd,
            },
            Kind::ZeroWindowOpen => What::ZeroWindowOpen { snd_wnd: r.snd_wnd },
            Kind::ZeroWindowTimeout => {
                let (error, cause, dead_ms) = kill();
                What::ZeroWindowTimeout {
                    error,
                    cause,
                    dead_ms,
                }
            }
            Kind::RetransmitTimeout => {
                let (error, cause, dead_ms) = kill();
                What::RetransmitTimeout {
                    error,
                    cause,
                    retries: r.retries,
                    limit,
                    max_retries,
                    dead_ms,
                }
            }
            Kind::SynTimeout => {
                let (error, cause, dead_ms) = kill();
                What::SynTimeout {
                    error,
                    cause,
                    retries: r.retries,
                    limit,
                    max_retries,
                    dead_ms,
                }
            }
            Kind::KeepaliveDeferred => What::KeepaliveDeferred {
                unacked: r.unacked,
                next_ms: self.ms(r.next),
            },
        }
    }

    fn socket(&self, r: &Record) -> Socket {
        let pid = r.owner_pid();
        Socket {
            pid,
            comm: r.owner_comm().map(lossy),
            owner: match pid {
                None => OwnerSource::Unknown,
                Some(_) => OwnerSource::from_u8(r.owner)
                    .filter(|&o| o != OwnerSource::Unknown)
                    .unwrap_or(OwnerSource::Kernel),
            },
            shared: r.shared(),
            // Filled in by the pipeline, which keeps the cache.
            cgroup: None,
            container_id: None,
            pod_uid: None,
            family: if r.is_ipv6() {
                Family::Ipv6
            } else {
                Family::Ipv4
            },
            saddr: r.saddr(),
            sport: r.local_port(),
            daddr: r.daddr(),
            dport: r.remote_port(),
            netns: r.netns,
            cookie: (r.cookie != 0).then_some(r.cookie),
            state: TcpState::from_kernel(r.state),
            probes: r.probes,
            idle_ms: r.idle_jiffies().map(|j| self.ms(j)),
            keepidle_ms: self.ms(r.keepidle),
            keepintvl_ms: self.ms(r.keepintvl),
            keepcnt: r.keepcnt,
            user_timeout_ms: r.user_timeout_ms,
        }
    }
}

/// A kernel name as text: valid UTF-8 kept, each byte of invalid UTF-8 replaced
/// by U+FFFD.
fn lossy(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        for _ in chunk.invalid() {
            out.push('\u{fffd}');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use kalive_common::{AF_INET6, OWNER_KERNEL, OWNER_PROCFS};

    use super::*;

    #[test]
    fn owner_says_how_it_was_learned() {
        let decoder = Decoder::new(WallClock::with_offset(0), 250);
        let mut r = Record::zeroed(Kind::ProbeSent);
        let owner = |r: &Record| decoder.event(r).and_then(|e| e.socket).map(|s| s.owner);
        assert_eq!(owner(&r), Some(OwnerSource::Unknown));
        r.pid = 7;
        r.owner = OWNER_KERNEL;
        assert_eq!(owner(&r), Some(OwnerSource::Kernel));
        r.owner = OWNER_PROCFS;
        assert_eq!(owner(&r), Some(OwnerSource::Procfs));
    }

    #[test]
    fn units_and_byte_orders() {
        let decoder = Decoder::new(WallClock::with_offset(1_000_000_000), 250);
        let mut r = Record::zeroed(Kind::ZeroWindowProbeSent);
        r.family = AF_INET6;
        r.sport = 8080u16.to_be();
        r.next = 208;
        r.ts_ns = 1_500_000;
        r.comm[..3].copy_from_slice(b"a\xffb");
        r.pid = 1;
        let event = decoder.event(&r).expect("a known kind");
        assert_eq!(event.ts.as_microsecond(), 1_001_500);
        let socket = event.socket.expect("a socket");
        assert_eq!((socket.family, socket.sport), (Family::Ipv6, 8080));
        assert_eq!(socket.comm.as_deref(), Some("a\u{fffd}b"));
        assert_eq!(socket.idle_ms, None);
        assert!(matches!(
            event.what,
            What::ZeroWindowProbeSent { next_ms: 832, .. }
        ));
        r.kind = 200;
        assert_eq!(decoder.event(&r), None);
    }
}
