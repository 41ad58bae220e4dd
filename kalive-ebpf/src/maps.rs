//! Maps shared by all programs.

use aya_ebpf::{
    macros::map,
    maps::{HashMap, RingBuf},
};
use kalive_common::Owner;

/// Records for userspace. Resized by the loader before load.
#[map]
pub(crate) static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Socket cookie -> the process that owns the socket, learned in process context.
#[map]
pub(crate) static OWNERS: HashMap<u64, Owner> = HashMap::with_max_entries(65536, 0);
