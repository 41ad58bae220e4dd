//! Kernel timestamps (`bpf_ktime_get_boot_ns`, i.e. `CLOCK_BOOTTIME`) to wall-clock
//! time.

use jiff::Timestamp;

/// Converts `CLOCK_BOOTTIME` nanoseconds to Unix time.
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    /// `CLOCK_REALTIME - CLOCK_BOOTTIME`, in nanoseconds.
    offset_ns: i128,
}

impl WallClock {
    /// Samples both clocks; the tightest of a few bracketed readings wins.
    #[must_use]
    pub fn now() -> Self {
        let mut best: Option<(i128, i128)> = None;
        for _ in 0..5 {
            let before = clock_ns(libc::CLOCK_BOOTTIME);
            let real = clock_ns(libc::CLOCK_REALTIME);
            let after = clock_ns(libc::CLOCK_BOOTTIME);
            let width = after - before;
            let offset = real - (before + width / 2);
            if best.is_none_or(|(w, _)| width < w) {
                best = Some((width, offset));
            }
        }
        Self {
            offset_ns: best.map_or(0, |(_, offset)| offset),
        }
    }

    #[cfg(test)]
    pub const fn with_offset(offset_ns: i128) -> Self {
        Self { offset_ns }
    }

    /// Unix time in nanoseconds for a kernel boot-time timestamp.
    #[must_use]
    pub fn unix_ns(&self, boot_ns: u64) -> i128 {
        i128::from(boot_ns) + self.offset_ns
    }

    /// The wall-clock time of a kernel boot-time timestamp.
    #[must_use]
    pub fn timestamp(&self, boot_ns: u64) -> Timestamp {
        Timestamp::from_nanosecond(self.unix_ns(boot_ns)).unwrap_or(Timestamp::MAX)
    }

    /// Boot time, in nanoseconds, now.
    #[must_use]
    pub fn boot_now_ns() -> u64 {
        u64::try_from(clock_ns(libc::CLOCK_BOOTTIME)).unwrap_or(0)
    }
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; both clocks exist on Linux.
    let rc = unsafe { libc::clock_gettime(clock, &raw mut ts) };
    debug_assert_eq!(rc, 0);
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fmt(unix_ns: i128) -> String {
        let ts = WallClock::with_offset(unix_ns).timestamp(0);
        // As `kalive_common::event` writes it.
        format!("{ts:.6}")
    }

    #[test]
    fn formats_known_instants() {
        assert_eq!(fmt(0), "1970-01-01T00:00:00.000000Z");
        // 2000-02-29 (a leap day in a century leap year) 12:34:56.789012345
        assert_eq!(fmt(951_827_696_789_012_345), "2000-02-29T12:34:56.789012Z");
        assert_eq!(
            fmt(4_102_444_799_999_999_000),
            "2099-12-31T23:59:59.999999Z"
        );
        assert_eq!(fmt(-1_000), "1969-12-31T23:59:59.999999Z");
    }

    #[test]
    fn boot_time_maps_to_now() {
        let clock = WallClock::now();
        let unix = clock.unix_ns(WallClock::boot_now_ns());
        let real = clock_ns(libc::CLOCK_REALTIME);
        assert!(
            (unix - real).abs() < 50_000_000,
            "off by {} ns",
            unix - real
        );
        assert_eq!(WallClock::with_offset(5).unix_ns(10), 15);
    }
}
