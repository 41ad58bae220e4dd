//! Records shared by the BPF programs (`kalive-ebpf`) and the loader (`kalive-user`).
//!
//! Everything here is `#[repr(C)]` plain data: the programs write it into the ring
//! buffer or read it from globals, userspace reads it back byte for byte. The `user`
//! feature adds what only userspace needs (decoding, `aya::Pod`).
#![cfg_attr(not(test), no_std)]

#[cfg(feature = "user")]
mod user;
#[cfg(feature = "user")]
pub use user::DecodeError;

/// Bumped whenever the layout of [`Record`] changes.
pub const RECORD_VERSION: u8 = 1;

/// What a [`Record`] reports.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(Hash))]
pub enum Kind {
    /// `sock:inet_sock_set_state`: a TCP socket changed state.
    StateChange = 1,
}

impl Kind {
    pub const ALL: [Self; 1] = [Self::StateChange];

    #[must_use]
    pub const fn from_u8(value: u8) -> Option<Self> {
        match value {
            1 => Some(Self::StateChange),
            _ => None,
        }
    }
}

/// One event, as the programs emit it. Addresses and ports are in network byte
/// order, exactly as the kernel keeps them; userspace converts.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    pub version: u8,
    /// A [`Kind`] as `u8`.
    pub kind: u8,
    /// `AF_INET` or `AF_INET6`.
    pub family: u16,
    /// TCP state after the event (`TCP_ESTABLISHED` = 1, ...).
    pub state: u8,
    /// TCP state before the event, for [`Kind::StateChange`].
    pub old_state: u8,
    /// Network byte order.
    pub sport: u16,
    /// Network byte order.
    pub dport: u16,
    pub pad: u16,
    /// Process (tgid) owning the socket; 0 when unknown.
    pub pid: u32,
    /// Inode of the socket's network namespace.
    pub netns: u32,
    pub pad2: u32,
    /// `bpf_ktime_get_boot_ns()` at the event.
    pub ts_ns: u64,
    /// Socket cookie (`sock_gen_cookie`); 0 when the kernel has not assigned one.
    pub cookie: u64,
    /// IPv4 in the first 4 bytes, or IPv6.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Owner's command name, NUL padded; empty when unknown.
    pub comm: [u8; 16],
}

// The layout has no implicit padding: every byte the program writes is one the
// reader expects.
const _: () = assert!(Record::SIZE == 88 && core::mem::offset_of!(Record, ts_ns) == 24);

impl Record {
    pub const SIZE: usize = core::mem::size_of::<Self>();

    /// An all-zero record of the current version.
    #[must_use]
    pub const fn zeroed(kind: Kind) -> Self {
        Self {
            version: RECORD_VERSION,
            kind: kind as u8,
            family: 0,
            state: 0,
            old_state: 0,
            sport: 0,
            dport: 0,
            pad: 0,
            pid: 0,
            netns: 0,
            pad2: 0,
            ts_ns: 0,
            cookie: 0,
            saddr: [0; 16],
            daddr: [0; 16],
            comm: [0; 16],
        }
    }
}

/// Byte offsets into kernel structures, read from the running kernel's BTF at
/// start-up and handed to the programs as a read-only global. Rust BPF programs
/// have no CO-RE relocations, so nothing here is known at compile time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Layout {
    /// `sock.__sk_common.skc_family` (u16)
    pub skc_family: u32,
    /// `sock.__sk_common.skc_num`: local port, host order (u16)
    pub skc_num: u32,
    /// `sock.__sk_common.skc_dport`: remote port, network order (u16)
    pub skc_dport: u32,
    /// `sock.__sk_common.skc_rcv_saddr` (u32)
    pub skc_rcv_saddr: u32,
    /// `sock.__sk_common.skc_daddr` (u32)
    pub skc_daddr: u32,
    /// `sock.__sk_common.skc_v6_rcv_saddr` (16 bytes)
    pub skc_v6_rcv_saddr: u32,
    /// `sock.__sk_common.skc_v6_daddr` (16 bytes)
    pub skc_v6_daddr: u32,
    /// `sock.__sk_common.skc_net`: `struct net *`
    pub skc_net: u32,
    /// `sock.sk_protocol` (u16)
    pub sk_protocol: u32,
    /// `net.ns.inum` (u32)
    pub net_ns_inum: u32,
}

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
pub const IPPROTO_TCP: u16 = 6;

/// The process that owns a socket, as the programs learned it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Owner {
    /// Thread group id (the process id users know).
    pub pid: u32,
    pub pad: u32,
    /// The owner's command name, NUL padded.
    pub comm: [u8; 16],
}
