//! Hand-made TCP segments, for tests of what the kernel accepts: a raw IPv4
//! socket that sees the TCP segments its namespace receives, and sends bare
//! ACKs built here (the kernel adds the IP header).

use std::{
    io,
    mem::size_of,
    net::Ipv4Addr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// A TCP segment seen arriving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    /// Bytes of data after the TCP header.
    pub payload: usize,
    /// The timestamp option's (`TSval`, `TSecr`), when it comes first in the
    /// aligned form (`NOP NOP TS`).
    pub timestamps: Option<(u32, u32)>,
}

/// The TCP ACK flag.
pub const ACK: u8 = 0x10;

pub struct RawTcp {
    fd: OwnedFd,
}

impl RawTcp {
    /// Opens the socket in the calling thread's network namespace (see
    /// `Netns::run`); what it sends carries `mark` (`SO_MARK`), for a firewall
    /// rule to let through.
    ///
    /// # Errors
    /// Without `CAP_NET_RAW` and `CAP_NET_ADMIN`.
    pub fn open(mark: u32) -> Result<Self> {
        // SAFETY: plain socket(2); the descriptor is owned at once.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_TCP) };
        if fd < 0 {
            return Err(io::Error::last_os_error()).context("a raw TCP socket");
        }
        // SAFETY: a descriptor just returned and owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        set(&fd, libc::SOL_SOCKET, libc::SO_MARK, &mark).context("SO_MARK")?;
        let timeout = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        set(&fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &timeout).context("SO_RCVTIMEO")?;
        Ok(Self { fd })
    }

    /// The next segment received that `wanted` accepts, before `deadline`.
    ///
    /// # Errors
    /// At the deadline, or when the socket fails.
    pub fn next(&self, deadline: Instant, wanted: impl Fn(&Seen) -> bool) -> Result<Seen> {
        while Instant::now() < deadline {
            if let Some(seen) = self.recv()?
                && wanted(&seen)
            {
                return Ok(seen);
            }
        }
        bail!("no such TCP segment before the deadline")
    }

    /// Every segment already received that `wanted` accepts, waiting at most
    /// `quiet` for more.
    ///
    /// # Errors
    /// When the socket fails.
    pub fn drain(&self, quiet: Duration, wanted: impl Fn(&Seen) -> bool) -> Result<Vec<Seen>> {
        let mut all = Vec::new();
        let mut until = Instant::now() + quiet;
        while Instant::now() < until {
            if let Some(seen) = self.recv()? {
                if wanted(&seen) {
                    all.push(seen);
                }
                until = Instant::now() + quiet;
            }
        }
        Ok(all)
    }

    fn recv(&self) -> Result<Option<Seen>> {
        let mut buf = [0u8; 2048];
        // SAFETY: recv(2) into a buffer of the length given.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let err = io::Error::last_os_error();
            return match err.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(None),
                _ => Err(err).context("recv on the raw socket"),
            };
        }
        Ok(parse(&buf[..usize::try_from(n).unwrap_or(0)]))
    }

    /// Sends a bare ACK from `src:sport` to `dst:dport` with these numbers,
    /// and a timestamp option when `timestamps` (`TSval`, `TSecr`) is given.
    ///
    /// # Errors
    /// When the kernel refuses it.
    pub fn send_ack(
        &self,
        (src, sport): (Ipv4Addr, u16),
        (dst, dport): (Ipv4Addr, u16),
        (seq, ack): (u32, u32),
        timestamps: Option<(u32, u32)>,
    ) -> Result<()> {
        let segment = ack_segment((src, sport), (dst, dport), (seq, ack), timestamps);
        let to = libc::sockaddr_in {
            sin_family: libc::sa_family_t::try_from(libc::AF_INET).unwrap_or(2),
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from(dst).to_be(),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: sendto(2) with a buffer and an address of the lengths given.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                segment.as_ptr().cast(),
                segment.len(),
                0,
                (&raw const to).cast(),
                libc::socklen_t::try_from(size_of::<libc::sockaddr_in>()).unwrap_or(16),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error()).context("sending a raw segment");
        }
        Ok(())
    }
}

fn set<T>(fd: &OwnedFd, level: i32, name: i32, value: &T) -> io::Result<()> {
    // SAFETY: setsockopt(2) with a value of the length given.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            std::ptr::from_ref(value).cast(),
            libc::socklen_t::try_from(size_of::<T>()).unwrap_or(0),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// An IPv4 packet carrying TCP, as a raw socket receives it.
fn parse(packet: &[u8]) -> Option<Seen> {
    let ihl = usize::from(packet.first()? & 0x0f) * 4;
    if packet.get(9) != Some(&6) {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([*packet.get(2)?, *packet.get(3)?]));
    let tcp = packet.get(ihl..total.min(packet.len()))?;
    let word = |at: usize| -> Option<u32> {
        Some(u32::from_be_bytes(tcp.get(at..at + 4)?.try_into().ok()?))
    };
    let doff = usize::from(tcp.get(12)? >> 4) * 4;
    let addr = |at: usize| -> Option<Ipv4Addr> {
        Some(Ipv4Addr::from(
            <[u8; 4]>::try_from(packet.get(at..at + 4)?).ok()?,
        ))
    };
    let timestamps = match tcp.get(20..32) {
        Some([1, 1, 8, 10, ..]) if doff >= 32 => Some((word(24)?, word(28)?)),
        _ => None,
    };
    Some(Seen {
        timestamps,
        src: addr(12)?,
        dst: addr(16)?,
        sport: u16::from_be_bytes([*tcp.first()?, *tcp.get(1)?]),
        dport: u16::from_be_bytes([*tcp.get(2)?, *tcp.get(3)?]),
        seq: word(4)?,
        ack: word(8)?,
        flags: *tcp.get(13)?,
        payload: tcp.len().saturating_sub(doff),
    })
}

/// A TCP header with only ACK set (20 bytes, 32 with timestamps), its
/// checksum over the IPv4 pseudo-header.
fn ack_segment(
    (src, sport): (Ipv4Addr, u16),
    (dst, dport): (Ipv4Addr, u16),
    (seq, ack): (u32, u32),
    timestamps: Option<(u32, u32)>,
) -> Vec<u8> {
    let mut h = vec![0u8; 20];
    h[0..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h[4..8].copy_from_slice(&seq.to_be_bytes());
    h[8..12].copy_from_slice(&ack.to_be_bytes());
    h[13] = ACK;
    h[14..16].copy_from_slice(&65535u16.to_be_bytes());
    if let Some((tsval, tsecr)) = timestamps {
        h.extend_from_slice(&[1, 1, 8, 10]);
        h.extend_from_slice(&tsval.to_be_bytes());
        h.extend_from_slice(&tsecr.to_be_bytes());
    }
    let len = u8::try_from(h.len()).unwrap_or(20);
    h[12] = (len / 4) << 4;
    let mut pseudo = Vec::with_capacity(12 + h.len());
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, 6, 0, len]);
    pseudo.extend_from_slice(&h);
    h[16..18].copy_from_slice(&checksum(&pseudo).to_be_bytes());
    h
}

/// The Internet checksum (RFC 1071) of `bytes`.
fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_of_rfc1071_example() {
        // RFC 1071, section 3: the sum of these words is 0xddf2.
        assert_eq!(
            checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            !0xddf2
        );
    }

    #[test]
    fn a_built_segment_checks_and_reads_back() {
        let (src, dst) = (Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 1));
        let seg = ack_segment((src, 7777), (dst, 40000), (100, 200), Some((5, 6)));
        // A receiver sums header and checksum to all ones.
        let mut all = Vec::new();
        all.extend_from_slice(&src.octets());
        all.extend_from_slice(&dst.octets());
        all.extend_from_slice(&[0, 6, 0, 32]);
        all.extend_from_slice(&seg);
        assert_eq!(checksum(&all), 0);
        let mut packet = vec![0x45, 0, 0, 52, 0, 0, 0, 0, 64, 6, 0, 0];
        packet.extend_from_slice(&src.octets());
        packet.extend_from_slice(&dst.octets());
        packet.extend_from_slice(&seg);
        let seen = parse(&packet).expect("a TCP segment");
        assert_eq!(
            seen,
            Seen {
                src,
                dst,
                sport: 7777,
                dport: 40000,
                seq: 100,
                ack: 200,
                flags: ACK,
                payload: 0,
                timestamps: Some((5, 6)),
            }
        );
    }
}
