//! Keepalive probes found late: the programs saw none of their timer
//! callbacks, and found them at the socket's next keepalive timer (or close)
//! because the kernel's count was ahead, or because the counters say probes
//! left and were answered. They send one record for all of them (the last
//! probe's, with how many in `cause`); users get one per probe, and with
//! [`FLAG_EACH_ANSWERED`] the inferred answer before each.

use kalive_common::{AckSeen, FLAG_EACH_ANSWERED, FLAG_LATE, IDLE_NONE, Kind, Record};

/// `record`, or for a late probe standing for several, one record per probe:
/// each one keepalive interval (`hz` jiffies a second) before the next;
/// numbered up to the last, or each numbered 1 after an answer to the one
/// before.
pub fn expand(record: Record, hz: u64) -> impl Iterator<Item = Record> {
    let late = record.kind() == Some(Kind::ProbeSent) && record.flags & FLAG_LATE != 0;
    let each_answered = late && record.flags & FLAG_EACH_ANSWERED != 0;
    let count = match (late, each_answered) {
        (false, _) => 1,
        (true, false) => record.cause.clamp(1, record.probes.max(1)),
        (true, true) => record.cause.max(1),
    };
    let jiffies_ns = move |j: u32| u64::from(j) * 1_000_000_000 / hz.max(1);
    let intvl_ns = jiffies_ns(record.keepintvl);
    (0..count)
        .rev()
        .flat_map(move |before| {
            let mut r = record;
            if !late {
                return [Some(r), None];
            }
            r.flags &= !FLAG_EACH_ANSWERED;
            r.ts_ns = record.ts_ns.saturating_sub(u64::from(before) * intvl_ns);
            r.cause = 0;
            if !each_answered {
                r.probes = record.probes - before;
                if record.idle != IDLE_NONE {
                    r.idle = record
                        .idle
                        .saturating_sub(u32::from(before) * record.keepintvl);
                }
                return [Some(r), None];
            }
            // Each numbered 1, as silent as the last (since the answer to the
            // one before), and that answer written before it.
            let answer = Record {
                kind: Kind::ProbeAcked as u8,
                flags: r.flags & !FLAG_LATE,
                ts_ns: r.ts_ns.saturating_sub(jiffies_ns(record.idle)),
                probes: 0,
                idle: if before + 1 == count {
                    record.error
                } else {
                    record.keepintvl
                },
                next: 0,
                error: 0,
                cause: AckSeen::Inferred as u8,
                ..r
            };
            r.probes = 1;
            r.error = 0;
            [Some(answer), Some(r)]
        })
        .flatten()
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
    fn each_answered_one_by_one() {
        let mut r = Record::zeroed(Kind::ProbeSent);
        r.flags = FLAG_LATE | FLAG_EACH_ANSWERED;
        r.cause = 3;
        r.probes = 1;
        r.keepintvl = 250;
        // Answered 50 jiffies (200 ms) after each: silent for 200 at each.
        r.idle = 200;
        // The peer was silent for 300 before the first answer.
        r.error = 300;
        r.ts_ns = 10_000_000_000;
        let got: Vec<_> = expand(r, 250)
            .map(|r| {
                (
                    r.kind(),
                    r.probes,
                    r.ts_ns,
                    r.idle,
                    r.cause,
                    r.flags,
                    r.error,
                )
            })
            .collect();
        let (sent, acked) = (Some(Kind::ProbeSent), Some(Kind::ProbeAcked));
        let inferred = AckSeen::Inferred as u8;
        assert_eq!(
            got,
            [
                (acked, 0, 7_200_000_000, 300, inferred, 0, 0),
                (sent, 1, 8_000_000_000, 200, 0, FLAG_LATE, 0),
                (acked, 0, 8_200_000_000, 250, inferred, 0, 0),
                (sent, 1, 9_000_000_000, 200, 0, FLAG_LATE, 0),
                (acked, 0, 9_200_000_000, 250, inferred, 0, 0),
                (sent, 1, 10_000_000_000, 200, 0, FLAG_LATE, 0),
            ]
        );
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
