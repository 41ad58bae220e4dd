//! Reading kernel structures at offsets discovered by the loader.

use aya_ebpf::helpers::bpf_probe_read_kernel;
use kalive_common::Layout;

/// Offsets filled in by the loader from the running kernel's BTF. The loader
/// always overrides this; a zeroed layout would make every read land on the
/// start of the structure.
#[unsafe(no_mangle)]
static LAYOUT: Layout = Layout {
    skc_family: 0,
    skc_num: 0,
    skc_dport: 0,
    skc_rcv_saddr: 0,
    skc_daddr: 0,
    skc_v6_rcv_saddr: 0,
    skc_v6_daddr: 0,
    skc_net: 0,
    sk_protocol: 0,
    net_ns_inum: 0,
};

/// Reads one offset from [`LAYOUT`]. The volatile read keeps the compiler from
/// folding the placeholder zeros into the code.
macro_rules! offset {
    ($field:ident) => {
        // SAFETY: reading a field of a static.
        unsafe { core::ptr::read_volatile(&raw const $crate::kernel::LAYOUT.$field) }
    };
}

/// Reads a `T` at `base + off` in kernel memory; zero when the read faults.
#[inline(always)]
pub(crate) fn read<T: Default>(base: *const u8, off: u32) -> T {
    // SAFETY: bpf_probe_read_kernel checks the address; a fault yields Err.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(off as usize).cast::<T>()) }
        .unwrap_or_default()
}

/// A `struct sock *`.
#[derive(Clone, Copy)]
pub(crate) struct Sock(pub(crate) *const u8);

impl Sock {
    pub(crate) fn family(self) -> u16 {
        read(self.0, offset!(skc_family))
    }

    pub(crate) fn protocol(self) -> u16 {
        read(self.0, offset!(sk_protocol))
    }

    /// Local port, network byte order.
    pub(crate) fn sport(self) -> u16 {
        read::<u16>(self.0, offset!(skc_num)).to_be()
    }

    /// Remote port, network byte order.
    pub(crate) fn dport(self) -> u16 {
        read(self.0, offset!(skc_dport))
    }

    /// Fills `saddr`/`daddr` for the socket's family.
    pub(crate) fn addrs(self, family: u16, saddr: &mut [u8; 16], daddr: &mut [u8; 16]) {
        if family == kalive_common::AF_INET6 {
            *saddr = read(self.0, offset!(skc_v6_rcv_saddr));
            *daddr = read(self.0, offset!(skc_v6_daddr));
        } else {
            let s: [u8; 4] = read(self.0, offset!(skc_rcv_saddr));
            let d: [u8; 4] = read(self.0, offset!(skc_daddr));
            saddr[..4].copy_from_slice(&s);
            daddr[..4].copy_from_slice(&d);
        }
    }

    /// Inode number of the socket's network namespace.
    pub(crate) fn netns(self) -> u32 {
        let net: *const u8 = read::<usize>(self.0, offset!(skc_net)) as *const u8;
        if net.is_null() {
            return 0;
        }
        read(net, offset!(net_ns_inum))
    }
}
