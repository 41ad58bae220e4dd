//! Keepalive probes found late: the programs saw none of their timer
//! callbacks, and found them at the socket's next keepalive timer (or close)
//! because the kernel's count was ahead. They send one record for all of them
//! (the last probe's, with how many in `cause`); users get one per probe.

use kalive_common::{FLAG_LATE, IDLE_NONE, Kind, Record};

/// `record`, or for a late probe standing for several, one record per probe:
/// numbered up to the last, each one keepalive interval (`hz` jiffies a
/// second) before the next.
pub fn expand(record: Record, hz: u64) -> impl Iterator<Item = Record> {
    let late = record.kind() == Some(Kind::ProbeSent) && record.flags & FLAG_LATE != 0;
    let count = if late {
        record.cause.clamp(1, record.probes.max(1))
    } else {
        1
    };
    let intvl_ns = u64::from(record.keepintvl) * 1_000_000_000 / hz.max(1);
    (0..count).rev().map(move |before| {
        let mut r = record;
        if late {
            r.probes = record.probes - before;
            r.ts_ns = record.ts_ns.saturating_sub(u64::from(before) * intvl_ns);
            if record.idle != IDLE_NONE {
                r.idle = record
                    .idle
                    .saturating_sub(u32::from(before) * record.keepintvl);
            }
            r.cause = 0;
        }
        r
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_record_per_probe_one_interval_apart() {
        let mut r = Record::zeroed(Kind::ProbeSent);
        r.flags = FLAG_LATE;
        r.cause = 3;
        r.probes = 5;
        r.keepintvl = 250;
        r.idle = 1250;
        r.ts_ns = 10_000_000_000;
        let got: Vec<_> = expand(r, 250)
            .map(|r| (r.probes, r.ts_ns, r.idle, r.cause))
            .collect();
        assert_eq!(
            got,
            [
                (3, 8_000_000_000, 750, 0),
                (4, 9_000_000_000, 1000, 0),
                (5, 10_000_000_000, 1250, 0)
            ]
        );
    }

    #[test]
    fn others_pass_unchanged() {
        let mut r = Record::zeroed(Kind::ProbeSent);
        r.probes = 2;
        r.cause = 3;
        let got: Vec<_> = expand(r, 250).collect();
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].probes, got[0].cause), (2, 3));
        let mut acked = Record::zeroed(Kind::ProbeAcked);
        acked.flags = FLAG_LATE;
        acked.cause = 2;
        assert_eq!(expand(acked, 250).count(), 1);
    }

    #[test]
    fn an_unknown_silence_stays_unknown() {
        let mut r = Record::zeroed(Kind::ProbeSent);
        r.flags = FLAG_LATE;
        r.cause = 2;
        r.probes = 2;
        r.keepintvl = 250;
        r.idle = IDLE_NONE;
        let got: Vec<_> = expand(r, 250).map(|r| r.idle).collect();
        assert_eq!(got, [IDLE_NONE, IDLE_NONE]);
    }

    #[test]
    fn never_below_probe_one() {
        let mut r = Record::zeroed(Kind::ProbeSent);
        r.flags = FLAG_LATE;
        r.cause = 9;
        r.probes = 2;
        let got: Vec<_> = expand(r, 250).map(|r| r.probes).collect();
        assert_eq!(got, [1, 2]);
    }
}
