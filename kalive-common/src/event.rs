//! The record users read, typed: what `kalive` writes (JSON through serde, or a
//! line of text) and what its tests and benchmarks read back. The schema is
//! documented in `docs/events.md`.
//!
//! An [`Event`] is a time, [`What`] happened (the kind and the fields only it
//! has, declared with [`crate::Kind`]) and the [`Socket`] it happened to.

use std::{fmt, net::IpAddr, sync::LazyLock};

use jiff::Timestamp;
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

pub use crate::what::What;
pub use crate::{AckSeen, Cause, Kind, OwnerSource, RetryLimit, TcpState};

/// One record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// When it happened (the kernel's clock), to the microsecond.
    #[serde(with = "micros")]
    pub ts: Timestamp,
    /// The kind, as `"event"`, and its own fields.
    #[serde(flatten)]
    pub what: What,
    /// The socket it happened to; `None` for `events_lost`, which is written
    /// with each of the socket's keys null, so that every record has them.
    #[serde(flatten, serialize_with = "socket_or_nulls")]
    pub socket: Option<Socket>,
}

impl Event {
    #[must_use]
    pub const fn kind(&self) -> Kind {
        self.what.kind()
    }

    /// Whether the record is whole: every kind but `events_lost` is about a
    /// socket. (Reading a record, serde takes a socket it cannot read as none.)
    #[must_use]
    pub const fn is_whole(&self) -> bool {
        self.socket.is_some() != matches!(self.what, What::EventsLost { .. })
    }
}

/// A record's first keys only, for a reader that needs no more and reads
/// hundreds of thousands of lines a second (the benchmark): several times
/// cheaper to read than [`Event`], whose flattened parts serde buffers. The
/// keys and their types are [`Event`]'s.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Head {
    #[serde(with = "micros")]
    pub ts: Timestamp,
    pub event: Kind,
    /// `events_lost`'s count.
    #[serde(default)]
    pub count: Option<u64>,
    /// `probe_sent`'s `late`.
    #[serde(default)]
    pub late: Option<bool>,
}

/// The socket a record is about, and the keepalive settings in effect.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Socket {
    /// The owning process; `None` when unknown.
    pub pid: Option<u32>,
    /// Its command name (invalid UTF-8 replaced, byte by byte).
    pub comm: Option<String>,
    /// How the owner was learned.
    pub owner: OwnerSource,
    /// More than one live process used the socket; `pid` is the last one.
    pub shared: bool,
    /// The owner's cgroup path (cgroup v2, else the v1 path naming its
    /// container); `None` when unknown.
    pub cgroup: Option<String>,
    /// The owner's container (64 hex digits); `None` outside a container.
    pub container_id: Option<String>,
    /// The owner's Kubernetes pod UID; `None` outside a pod.
    pub pod_uid: Option<String>,
    pub family: Family,
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
    /// Inode of the socket's network namespace.
    pub netns: u32,
    /// The socket cookie; `None` when the kernel has not assigned one.
    pub cookie: Option<u64>,
    /// The TCP state after the event.
    pub state: TcpState,
    /// Unanswered probes (`icsk_probes_out`).
    pub probes: u8,
    /// Time since the peer's last ACK; `None` when the socket has no peer.
    pub idle_ms: Option<u64>,
    pub keepidle_ms: u64,
    pub keepintvl_ms: u64,
    pub keepcnt: u8,
    /// `TCP_USER_TIMEOUT`; 0 when unset.
    pub user_timeout_ms: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Ipv4,
    Ipv6,
}

/// An errno value, written by its symbolic name (`ETIMEDOUT`), or `E<number>`
/// for one the C library does not name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Errno(pub u32);

impl Errno {
    fn named(self) -> Option<nix::errno::Errno> {
        let errno = nix::errno::Errno::from_raw(i32::try_from(self.0).ok()?);
        (errno != nix::errno::Errno::UnknownErrno).then_some(errno)
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.named() {
            // nix's variant names are the C library's.
            Some(errno) => write!(f, "{errno:?}"),
            None => write!(f, "E{}", self.0),
        }
    }
}

impl Serialize for Errno {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Errno {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        /// Name -> number, for every number the C library names (Linux's stay
        /// below 4096, `MAX_ERRNO`).
        static NAMES: LazyLock<std::collections::HashMap<String, u32>> = LazyLock::new(|| {
            (1..4096)
                .map(Errno)
                .filter(|e| e.named().is_some())
                .map(|e| (e.to_string(), e.0))
                .collect()
        });
        let name = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        if let Some(&number) = NAMES.get(name.as_ref()) {
            return Ok(Self(number));
        }
        name.strip_prefix('E')
            .and_then(|n| n.parse().ok())
            .map(Self)
            .ok_or_else(|| de::Error::custom(format!("{name:?} is not an errno name")))
    }
}

/// RFC 3339 in UTC with exactly six fractional digits:
/// `2026-11-22T08:15:02.123456Z`.
pub mod micros {
    use super::{Deserialize as _, Deserializer, Serializer, Timestamp, de};

    /// # Errors
    /// When the serializer fails.
    pub fn serialize<S: Serializer>(ts: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{ts:.6}"))
    }

    /// # Errors
    /// When the value is not such a time.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        text.parse::<Timestamp>().map_err(de::Error::custom)
    }
}

/// The socket's keys in the order [`Socket`] writes them, learned from serde
/// itself so that they cannot drift from the type.
static SOCKET_KEYS: LazyLock<Vec<String>> = LazyLock::new(|| {
    let sample = Socket {
        pid: None,
        comm: None,
        owner: OwnerSource::Unknown,
        shared: false,
        cgroup: None,
        container_id: None,
        pod_uid: None,
        family: Family::Ipv4,
        saddr: IpAddr::from([0, 0, 0, 0]),
        sport: 0,
        daddr: IpAddr::from([0, 0, 0, 0]),
        dport: 0,
        netns: 0,
        cookie: None,
        state: TcpState::Unknown,
        probes: 0,
        idle_ms: None,
        keepidle_ms: 0,
        keepintvl_ms: 0,
        keepcnt: 0,
        user_timeout_ms: 0,
    };
    match serde_json::to_value(sample) {
        Ok(serde_json::Value::Object(map)) => map.keys().cloned().collect(),
        _ => unreachable!("a struct serialises to a JSON object"),
    }
});

#[expect(
    clippy::ref_option,
    reason = "serde's serialize_with hands over a reference to the field"
)]
fn socket_or_nulls<S: Serializer>(socket: &Option<Socket>, s: S) -> Result<S::Ok, S::Error> {
    match socket {
        Some(socket) => socket.serialize(s),
        None => s.collect_map(SOCKET_KEYS.iter().map(|key| (key, ()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn socket() -> Socket {
        Socket {
            pid: Some(4242),
            comm: Some("curl".to_owned()),
            owner: OwnerSource::Kernel,
            shared: false,
            cgroup: Some("/kubepods.slice/cri-containerd-0a.scope".to_owned()),
            container_id: Some("0a".repeat(32)),
            pod_uid: Some("0f3b6c1e-2a4d-4e8f-9b7a-1c2d3e4f5a6b".to_owned()),
            family: Family::Ipv4,
            saddr: IpAddr::from([10, 0, 0, 1]),
            sport: 40000,
            daddr: IpAddr::from([10, 0, 0, 2]),
            dport: 80,
            netns: 4_026_531_840,
            cookie: Some(77),
            state: TcpState::Established,
            probes: 2,
            idle_ms: Some(2000),
            keepidle_ms: 1000,
            keepintvl_ms: 1000,
            keepcnt: 2,
            user_timeout_ms: 0,
        }
    }

    fn what(kind: Kind) -> What {
        match kind {
            Kind::StateChange => What::StateChange {
                old_state: TcpState::SynSent,
            },
            Kind::KeepaliveSet => What::KeepaliveSet { enabled: true },
            Kind::ProbeSent => What::ProbeSent {
                next_ms: 1000,
                late: false,
                sent: true,
            },
            Kind::ProbeAcked => What::ProbeAcked {
                seen_at: AckSeen::KeepaliveTimer,
            },
            Kind::KeepaliveTimeout => What::KeepaliveTimeout {
                error: Errno(110),
                cause: Cause::ProbesExhausted,
                dead_ms: Some(4000),
            },
            Kind::EventsLost => What::EventsLost { count: 3 },
            Kind::ZeroWindowProbeSent => What::ZeroWindowProbeSent {
                backoff: 3,
                next_ms: 832,
                snd_wnd: 0,
            },
            Kind::ZeroWindowOpen => What::ZeroWindowOpen { snd_wnd: 65535 },
            Kind::ZeroWindowTimeout => What::ZeroWindowTimeout {
                error: Errno(4000),
                cause: Cause::RetriesExhausted,
                dead_ms: None,
            },
            Kind::RetransmitTimeout => What::RetransmitTimeout {
                error: Errno(113),
                cause: Cause::RetriesExhausted,
                retries: 3,
                limit: RetryLimit::Retries2,
                max_retries: Some(3),
                dead_ms: Some(3012),
            },
            Kind::SynTimeout => What::SynTimeout {
                error: Errno(110),
                cause: Cause::UserTimeout,
                retries: 1,
                limit: RetryLimit::UserTimeout,
                max_retries: None,
                dead_ms: Some(2000),
            },
            Kind::KeepaliveDeferred => What::KeepaliveDeferred {
                unacked: 2,
                next_ms: 1000,
            },
        }
    }

    #[test]
    fn every_kind_reads_back_as_written() {
        for &kind in Kind::ALL {
            let event = Event {
                ts: Timestamp::from_microsecond(1_001_500).expect("in range"),
                what: what(kind),
                socket: (kind != Kind::EventsLost).then(socket),
            };
            assert_eq!(event.kind(), kind);
            let json = serde_json::to_string(&event).expect("serialises");
            assert!(
                json.starts_with(&format!(
                    "{{\"ts\":\"1970-01-01T00:00:01.001500Z\",\"event\":\"{}\"",
                    kind.name()
                )),
                "{json}"
            );
            let back: Event = serde_json::from_str(&json).expect(&json);
            assert_eq!(back, event, "{json}");
            let head: Head = serde_json::from_str(&json).expect(&json);
            assert_eq!((head.ts, head.event), (event.ts, kind));
            if let What::EventsLost { count } = event.what {
                assert_eq!(head.count, Some(count));
            }
            assert!(back.is_whole(), "{json}");
        }
    }

    #[test]
    fn socket_keys_keep_their_order() {
        let value = serde_json::to_value(socket()).expect("serialises");
        let keys: Vec<&str> = value
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            [
                "pid",
                "comm",
                "owner",
                "shared",
                "cgroup",
                "container_id",
                "pod_uid",
                "family",
                "saddr",
                "sport",
                "daddr",
                "dport",
                "netns",
                "cookie",
                "state",
                "probes",
                "idle_ms",
                "keepidle_ms",
                "keepintvl_ms",
                "keepcnt",
                "user_timeout_ms"
            ]
        );
        assert_eq!(*SOCKET_KEYS, keys);
    }

    #[test]
    fn events_lost_has_every_socket_key_null() {
        let event = Event {
            ts: Timestamp::UNIX_EPOCH,
            what: What::EventsLost { count: 12 },
            socket: None,
        };
        let value = serde_json::to_value(&event).expect("serialises");
        let sample = serde_json::to_value(socket()).expect("serialises");
        for key in sample.as_object().expect("object").keys() {
            assert!(value[key].is_null(), "{key}: {value}");
        }
        assert_eq!(value["count"], 12);
    }

    #[test]
    fn errnos_by_name() {
        assert_eq!(Errno(110).to_string(), "ETIMEDOUT");
        assert_eq!(Errno(13).to_string(), "EACCES");
        assert_eq!(Errno(4000).to_string(), "E4000");
        let e: Errno = serde_json::from_str("\"ECONNRESET\"").expect("a name");
        assert_eq!(e, Errno(104));
        for e in [Errno(0), Errno(110), Errno(4000), Errno(70000)] {
            let json = serde_json::to_string(&e).expect("serialises");
            assert_eq!(serde_json::from_str::<Errno>(&json).expect(&json), e);
        }
        assert!(serde_json::from_str::<Errno>("\"ENOTANERRNO\"").is_err());
    }
}
