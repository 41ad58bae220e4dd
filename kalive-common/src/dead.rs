//! When the kernel would find a dead peer, by its own rules: what `kalive ls`
//! predicts (`dead_after_ms`). Work in progress for the `kalive ls` issue:
//! keepalive only so far (retransmission and the persist timer to come).
//!
//! `tcp_keepalive_timer()`: at each callback, `elapsed` is the time since the
//! peer was last heard from. Once it reaches `keepidle`, the connection is
//! killed when `TCP_USER_TIMEOUT` is set, `elapsed` has reached it and a probe
//! is out, or when it is not set and `keepcnt` probes are out; otherwise a
//! probe leaves and the timer is re-armed one `keepintvl` later. Before
//! `keepidle`, the timer is re-armed for the rest of it.

/// A connection's keepalive, as the kernel has it now (milliseconds).
#[derive(Clone, Copy, Debug)]
pub struct Keepalive {
    pub keepidle_ms: u64,
    pub keepintvl_ms: u64,
    pub keepcnt: u32,
    /// `TCP_USER_TIMEOUT`, 0 when unset.
    pub user_timeout_ms: u64,
    /// Since the peer was last heard from (the kernel's keepalive idle).
    pub idle_ms: u64,
    /// Until the keepalive timer fires next.
    pub timer_ms: u64,
    /// Probes out, unanswered.
    pub probes: u32,
}

/// What would close the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// `keepcnt` unanswered probes.
    ProbesExhausted,
    /// `TCP_USER_TIMEOUT` passed with a probe out.
    UserTimeout,
}

/// If the peer went silent now: how long until keepalive closes the
/// connection, and why. It always does: each probe brings the count or the
/// user timeout closer.
#[must_use]
pub fn keepalive(k: &Keepalive) -> (u64, Verdict) {
    let mut t = k.timer_ms;
    let mut probes = k.probes;
    // Each turn either probes (at most keepcnt of them, or until the user
    // timeout) or waits out keepidle once: bounded.
    loop {
        let elapsed = k.idle_ms + t;
        if elapsed < k.keepidle_ms {
            t += k.keepidle_ms - elapsed;
            continue;
        }
        if k.user_timeout_ms != 0 {
            if elapsed >= k.user_timeout_ms && probes > 0 {
                return (t, Verdict::UserTimeout);
            }
        } else if probes >= k.keepcnt {
            return (t, Verdict::ProbesExhausted);
        }
        probes += 1;
        t += k.keepintvl_ms.max(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(idle: u64, intvl: u64, cnt: u32) -> Keepalive {
        Keepalive {
            keepidle_ms: idle,
            keepintvl_ms: intvl,
            keepcnt: cnt,
            user_timeout_ms: 0,
            idle_ms: 0,
            timer_ms: idle,
            probes: 0,
        }
    }

    #[test]
    fn linux_defaults_take_two_hours_and_eleven_minutes() {
        // 7200 s idle, then 9 probes 75 s apart, killed at the 10th callback.
        let got = keepalive(&k(7_200_000, 75_000, 9));
        assert_eq!(got, (7_200_000 + 9 * 75_000, Verdict::ProbesExhausted));
    }

    #[test]
    fn probes_then_the_count() {
        // Probes at 1 s and 2 s; the third callback finds 2 out.
        assert_eq!(
            keepalive(&k(1000, 1000, 2)),
            (3000, Verdict::ProbesExhausted)
        );
    }

    #[test]
    fn mid_probing_counts_what_is_out() {
        let mut s = k(1000, 1000, 3);
        s.probes = 2;
        s.idle_ms = 2500;
        s.timer_ms = 500;
        // One more probe at +500 ms, killed one interval later.
        assert_eq!(keepalive(&s), (1500, Verdict::ProbesExhausted));
    }

    #[test]
    fn the_user_timeout_wins_over_a_far_count() {
        let mut s = k(1000, 1000, 100);
        s.user_timeout_ms = 2500;
        // Probes at 1 s and 2 s; at 3 s the peer has been silent 3 s >= 2.5 s.
        assert_eq!(keepalive(&s), (3000, Verdict::UserTimeout));
    }

    #[test]
    fn a_user_timeout_needs_a_probe_out() {
        let mut s = k(5000, 1000, 9);
        s.user_timeout_ms = 1000;
        // Silent past the user timeout already, but no probe is out until
        // keepidle: the first probe at 5 s, killed at 6 s.
        assert_eq!(keepalive(&s), (6000, Verdict::UserTimeout));
    }

    #[test]
    fn recently_heard_waits_out_keepidle_first() {
        let mut s = k(10_000, 1000, 1);
        s.idle_ms = 4000;
        s.timer_ms = 6000;
        assert_eq!(keepalive(&s), (7000, Verdict::ProbesExhausted));
    }
}
