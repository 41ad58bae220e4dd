//! Userspace-only parts: decoding what the programs wrote, and `aya::Pod` so the
//! loader can hand [`Layout`] to the programs.

use core::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use crate::{
    AF_INET6, FLAG_KEEPALIVE, FLAG_SHARED, FLAG_UNFILTERED, FLAG_USER_TIMEOUT, IDLE_NONE, Kind,
    Layout, Owner, RECORD_VERSION, Record, Settings,
};

// SAFETY: `Layout` is `#[repr(C)]`, has no padding and only integer fields, so any
// bit pattern is valid.
unsafe impl aya::Pod for Layout {}
// SAFETY: as above: `#[repr(C)]`, explicit padding, integers only.
unsafe impl aya::Pod for Settings {}
// SAFETY: as above.
unsafe impl aya::Pod for Owner {}

/// Why bytes from the ring buffer are not a [`Record`] this build understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// The item is not the size of a [`Record`].
    Size { got: usize, want: usize },
    /// The record carries another layout version.
    Version { got: u8, want: u8 },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Size { got, want } => write!(f, "record of {got} bytes, expected {want}"),
            Self::Version { got, want } => write!(f, "record version {got}, expected {want}"),
        }
    }
}

impl core::error::Error for DecodeError {}

impl Record {
    /// Reads a record from a ring buffer item; never panics on foreign input.
    ///
    /// # Errors
    /// When the item has the wrong size or version.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() != Self::SIZE {
            return Err(DecodeError::Size {
                got: bytes.len(),
                want: Self::SIZE,
            });
        }
        // SAFETY: the length was checked, `Record` is plain `#[repr(C)]` data for
        // which every bit pattern is valid, and `read_unaligned` has no alignment
        // requirement.
        let record = unsafe { bytes.as_ptr().cast::<Self>().read_unaligned() };
        if record.version != RECORD_VERSION {
            return Err(DecodeError::Version {
                got: record.version,
                want: RECORD_VERSION,
            });
        }
        Ok(record)
    }

    #[must_use]
    pub const fn kind(&self) -> Option<Kind> {
        Kind::from_u8(self.kind)
    }

    #[must_use]
    pub const fn is_ipv6(&self) -> bool {
        self.family == AF_INET6
    }

    #[must_use]
    pub fn saddr(&self) -> IpAddr {
        self.addr(&self.saddr)
    }

    #[must_use]
    pub fn daddr(&self) -> IpAddr {
        self.addr(&self.daddr)
    }

    fn addr(&self, raw: &[u8; 16]) -> IpAddr {
        if self.is_ipv6() {
            IpAddr::V6(Ipv6Addr::from(*raw))
        } else {
            IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
        }
    }

    /// Local port, host byte order.
    #[must_use]
    pub const fn local_port(&self) -> u16 {
        u16::from_be(self.sport)
    }

    /// Remote port, host byte order.
    #[must_use]
    pub const fn remote_port(&self) -> u16 {
        u16::from_be(self.dport)
    }

    /// The owner's pid, if known.
    #[must_use]
    pub const fn owner_pid(&self) -> Option<u32> {
        if self.pid == 0 { None } else { Some(self.pid) }
    }

    /// The owner's command name without NUL padding; raw kernel bytes, not
    /// necessarily UTF-8.
    #[must_use]
    pub fn owner_comm(&self) -> Option<&[u8]> {
        self.owner_pid()?;
        let len = self
            .comm
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.comm.len());
        Some(&self.comm[..len])
    }

    /// `SO_KEEPALIVE` is on.
    #[must_use]
    pub const fn keepalive_enabled(&self) -> bool {
        self.flags & FLAG_KEEPALIVE != 0
    }

    /// `TCP_USER_TIMEOUT` is set on the socket.
    #[must_use]
    pub const fn has_user_timeout(&self) -> bool {
        self.flags & FLAG_USER_TIMEOUT != 0
    }

    /// More than one live process used the socket; `pid` is the last one.
    #[must_use]
    pub const fn shared(&self) -> bool {
        self.flags & FLAG_SHARED != 0
    }

    /// The kernel could not apply the pid filter (owner unknown there).
    #[must_use]
    pub const fn unfiltered(&self) -> bool {
        self.flags & FLAG_UNFILTERED != 0
    }

    /// Jiffies since the peer's last ACK, when the socket has a peer.
    #[must_use]
    pub const fn idle_jiffies(&self) -> Option<u32> {
        if self.idle == IDLE_NONE {
            None
        } else {
            Some(self.idle)
        }
    }

    /// The record's bytes, as a program would have written them.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: `Record` is `#[repr(C)]` plain data; its padding is explicit.
        unsafe { core::slice::from_raw_parts(core::ptr::from_ref(self).cast::<u8>(), Self::SIZE) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Kind;

    #[test]
    fn decode_round_trips() {
        let mut record = Record::zeroed(Kind::ProbeSent);
        record.cookie = 42;
        record.comm[..4].copy_from_slice(b"curl");
        assert_eq!(Record::decode(record.as_bytes()), Ok(record));
    }

    #[test]
    fn accessors_convert_byte_order_and_families() {
        let mut record = Record::zeroed(Kind::ProbeSent);
        record.family = crate::AF_INET;
        record.saddr[..4].copy_from_slice(&[10, 0, 0, 1]);
        record.daddr[..4].copy_from_slice(&[10, 0, 0, 2]);
        record.sport = 8080u16.to_be();
        record.dport = 443u16.to_be();
        assert_eq!(record.saddr().to_string(), "10.0.0.1");
        assert_eq!(record.daddr().to_string(), "10.0.0.2");
        assert_eq!((record.local_port(), record.remote_port()), (8080, 443));
        assert_eq!(record.owner_comm(), None);

        record.family = AF_INET6;
        record.daddr = Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0x0a00, 0x0002).octets();
        assert_eq!(record.daddr().to_string(), "::ffff:10.0.0.2");

        record.pid = 7;
        record.comm[..3].copy_from_slice(b"a b");
        assert_eq!(record.owner_comm(), Some(&b"a b"[..]));
    }

    #[test]
    fn decode_rejects_wrong_size_and_version() {
        let record = Record::zeroed(Kind::ProbeSent);
        let bytes = record.as_bytes();
        assert_eq!(
            Record::decode(&bytes[1..]),
            Err(DecodeError::Size {
                got: Record::SIZE - 1,
                want: Record::SIZE
            })
        );
        let mut other = record;
        other.version = RECORD_VERSION + 1;
        assert_eq!(
            Record::decode(other.as_bytes()),
            Err(DecodeError::Version {
                got: RECORD_VERSION + 1,
                want: RECORD_VERSION
            })
        );
    }
}
