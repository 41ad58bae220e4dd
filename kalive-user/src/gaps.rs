//! Keepalive probes that have no record, found as gaps in each socket's probe
//! numbers (`icsk_probes_out` counts them: 1, 2, 3, ... until an answer).
//!
//! Whatever the cause (a record lost with a full ring buffer, or a probe the
//! programs did not see), a `probe_sent` numbered 3 after one numbered 1 means
//! probe 2 went unreported, and kalive says so instead of staying silent; so
//! does an answer when no probe was reported since the last one. Both are
//! lower bounds.

use std::collections::HashMap;

use kalive_common::Kind;

/// Sockets followed at most; past that the table starts over, which can only
/// miss gaps, never invent them.
const CAPACITY: usize = 1 << 16;

#[derive(Debug, Default)]
pub struct ProbeGaps {
    /// Socket (its cookie) -> the probe number of its last record.
    last: HashMap<u64, u8>,
    /// Probes found missing so far.
    pub unseen: u64,
}

impl ProbeGaps {
    /// Takes note of a record of `kind` about the socket whose cookie is `sk` with `probes`
    /// unanswered probes; returns how many probes it shows were never reported.
    pub fn see(&mut self, kind: Kind, sk: u64, probes: u8) -> u64 {
        match kind {
            // Configured: the count starts over.
            Kind::KeepaliveSet => {
                self.note(sk, probes);
                0
            }
            // Answered: the programs report an answer only while probes are
            // out, so an answer with none seen since the count last started over
            // means at least one went unreported. Then it starts over.
            Kind::ProbeAcked => {
                let missing = u64::from(self.last.get(&sk) == Some(&0));
                self.note(sk, 0);
                self.unseen += missing;
                missing
            }
            Kind::ProbeSent => {
                let missing = match self.last.get(&sk) {
                    Some(&last) if probes > last.saturating_add(1) => probes - last - 1,
                    _ => 0,
                };
                self.note(sk, probes);
                self.unseen += u64::from(missing);
                u64::from(missing)
            }
            Kind::KeepaliveTimeout
            | Kind::ZeroWindowTimeout
            | Kind::RetransmitTimeout
            | Kind::SynTimeout => {
                self.last.remove(&sk);
                0
            }
            _ => 0,
        }
    }

    fn note(&mut self, sk: u64, probes: u8) {
        if self.last.len() >= CAPACITY && !self.last.contains_key(&sk) {
            self.last.clear();
        }
        self.last.insert(sk, probes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_probe_numbers_skipped() {
        let mut g = ProbeGaps::default();
        assert_eq!(g.see(Kind::KeepaliveSet, 1, 0), 0);
        assert_eq!(g.see(Kind::ProbeSent, 1, 1), 0);
        assert_eq!(g.see(Kind::ProbeAcked, 1, 0), 0);
        // An answer to a probe never reported.
        assert_eq!(g.see(Kind::ProbeAcked, 1, 0), 1);
        // Probe 1 after the answer went unreported.
        assert_eq!(g.see(Kind::ProbeSent, 1, 2), 1);
        assert_eq!(g.see(Kind::ProbeSent, 1, 3), 0);
        assert_eq!(g.see(Kind::ProbeSent, 1, 6), 2);
        assert_eq!(g.unseen, 4);
        // A socket first seen mid-way proves nothing.
        assert_eq!(g.see(Kind::ProbeSent, 2, 5), 0);
        // Repeats and timeouts are not gaps.
        assert_eq!(g.see(Kind::ProbeSent, 2, 5), 0);
        assert_eq!(g.see(Kind::KeepaliveTimeout, 1, 6), 0);
        assert_eq!(g.see(Kind::ProbeSent, 1, 9), 0);
        assert_eq!(g.see(Kind::ProbeAcked, 3, 0), 0);
        assert_eq!(g.unseen, 4);
    }

    #[test]
    fn a_full_table_starts_over() {
        let mut g = ProbeGaps::default();
        for sk in 0..CAPACITY as u64 {
            g.see(Kind::KeepaliveSet, sk, 0);
        }
        g.see(Kind::KeepaliveSet, u64::MAX, 0);
        assert_eq!(g.last.len(), 1);
        assert_eq!(g.see(Kind::ProbeSent, 0, 4), 0, "forgotten, not invented");
    }
}
