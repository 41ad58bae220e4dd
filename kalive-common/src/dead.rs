//! When the kernel would find a dead peer, by its own rules: what `kalive ls`
//! predicts (`dead_after_ms`), for each mechanism that can end a connection
//! whose peer went silent: keepalive ([`keepalive`]), and the write timer
//! ([`write_timer`]): retransmission of data in flight, the persist timer on
//! a zero window, SYN retransmission.
//!
//! `tcp_keepalive_timer()`: at each callback, `elapsed` is the time since the
//! peer was last heard from. Once it reaches `keepidle`, the connection is
//! killed when `TCP_USER_TIMEOUT` is set, `elapsed` has reached it and a probe
//! is out, or when it is not set and `keepcnt` probes are out; otherwise a
//! probe leaves and the timer is re-armed one `keepintvl` later. Before
//! `keepidle`, the timer is re-armed for the rest of it.
//!
//! The write timer (`tcp_retransmit_timer()`, `tcp_probe_timer()`): each
//! firing first checks a budget (below), then retransmits (or probes the
//! window) and re-arms with a doubled timeout, capped at the RTO maximum and
//! clamped to what is left of `TCP_USER_TIMEOUT`. The budgets, from
//! `tcp_write_timeout()` and `retransmits_timed_out()`:
//! - data in flight: the time since the episode's first retransmission
//!   (`retrans_stamp`) reaches `TCP_USER_TIMEOUT` when set, else the time
//!   `tcp_retries2` doubling retransmissions from 200 ms would take
//!   (`tcp_model_timeout()`): about 924.6 s for the default 15. Not a count:
//!   with a larger RTO fewer retransmissions fit in it. An orphan (closed by
//!   its process) uses `tcp_orphan_retries` (0 means 8 while its RTO is under
//!   the maximum);
//! - a SYN: `TCP_SYNCNT` or `tcp_syn_retries` retransmissions (plus the
//!   linear ones, `tcp_syn_linear_timeouts`, 6.5 on), or the same time budget
//!   from a 1 s base;
//! - a zero window (the persist timer): `tcp_retries2` unanswered probes, or
//!   `TCP_USER_TIMEOUT` since the first probe of the episode;
//! - a window shrunk to zero with data in flight (`tcp_rtx_probe0_timed_out()`):
//!   silent and retransmitting for twice the RTO maximum, or the user timeout.
//!
//! What the simulation cannot see: timers fire late by the timer wheel's
//! granularity (up to an eighth of the delay), and each lateness delays what
//! follows; a local send failure re-arms after 500 ms without backoff; an
//! orphan can be reaped at any time under memory pressure.

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

/// Which rule of the write timer applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Data in flight: `tcp_retries2`.
    Retransmit { retries2: u32 },
    /// Data in flight on a socket its process closed: `tcp_orphan_retries`.
    Orphan { orphan_retries: u32 },
    /// Data in flight and the peer's window shrunk to zero; `idle_ms` is since
    /// the peer was last heard from.
    ShrunkWindow { idle_ms: u64 },
    /// A SYN out: `retries` (`TCP_SYNCNT` or `tcp_syn_retries`), `linear`
    /// (`tcp_syn_linear_timeouts`, 0 before 6.5), and the initial RTO.
    Syn {
        retries: u32,
        linear: u32,
        timeout_init_ms: u64,
    },
    /// The persist timer probing a zero window: `tcp_retries2`, or for an
    /// orphan `tcp_orphan_retries`.
    ZeroWindow {
        retries2: u32,
        orphan_retries: Option<u32>,
    },
}

/// A connection's write timer, as the kernel has it now (milliseconds).
#[derive(Clone, Copy, Debug)]
pub struct WriteTimer {
    pub phase: Phase,
    /// Until the pending timer fires.
    pub timer_ms: u64,
    /// `icsk_retransmits`: retransmissions in this episode.
    pub retransmits: u32,
    /// `icsk_probes_out`: window probes out (the persist timer).
    pub probes: u32,
    /// `icsk_backoff`.
    pub backoff: u32,
    /// `icsk_rto`, and its maximum (`TCP_RTO_MAX`, or per socket from 6.15).
    pub rto_ms: u64,
    pub rto_max_ms: u64,
    /// Since `retrans_stamp`: the episode's first retransmission (the first
    /// SYN for a connect); `None` when there was none.
    pub since_stamp_ms: Option<u64>,
    /// Since `icsk_probes_tstamp`: the first window probe of the episode.
    pub since_probes_ms: Option<u64>,
    /// `TCP_USER_TIMEOUT`, 0 when unset.
    pub user_timeout_ms: u64,
    /// A router reported the peer's host or network unreachable (ICMP, kept
    /// as the socket's soft error): each retransmission draws the same answer,
    /// which reverts its backoff (RFC 6069, `tcp_ld_RTO_revert()`), so
    /// retransmissions stay one base RTO apart.
    pub unreachable: bool,
    /// The kernel's HZ, and `jiffies` now: timers fire on the timer wheel's
    /// ticks, late by up to its granularity at their delay.
    pub hz: u64,
    pub now_jiffies: u64,
}

impl WriteTimer {
    fn jiffy_ms(&self) -> u64 {
        (1000 / self.hz.max(1)).max(1)
    }

    /// When a timer armed at `t` (ms from now) for `delay_ms` fires: the
    /// wheel (`calc_wheel_index()`) puts it in the bucket after its expiry at
    /// the granularity of its level (1 jiffy under 63, 8 under 504, 64
    /// under 4032, ...), so that it never fires early.
    fn fire(&self, t: u64, delay_ms: u64) -> u64 {
        let hz = self.hz.max(1);
        let clk = self.now_jiffies + t * hz / 1000;
        let delta = (delay_ms * hz).div_ceil(1000).max(1);
        let level = (1..8u64)
            .find(|&n| delta < 63 << (3 * (n - 1)))
            .map_or(7, |n| n - 1);
        let shift = 3 * level;
        let bucket = ((clk + delta) >> shift).saturating_add(1) << shift;
        (bucket - self.now_jiffies) * 1000 / hz
    }
}

/// What would close the connection: the mechanism, and the limit it reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// `keepcnt` unanswered probes.
    ProbesExhausted,
    /// `TCP_USER_TIMEOUT` passed with a probe out.
    UserTimeout,
    /// Retransmission: the `tcp_retries2` time budget.
    RetriesExhausted,
    /// Retransmission: `TCP_USER_TIMEOUT`.
    RetransmitUserTimeout,
    /// An orphan's retransmission: `tcp_orphan_retries`.
    OrphanRetriesExhausted,
    /// A zero window held against retransmissions (`tcp_rtx_probe0_timed_out`).
    ShrunkWindow,
    /// SYN retransmission: the count or its time budget.
    SynRetriesExhausted,
    /// SYN retransmission: `TCP_USER_TIMEOUT`.
    SynUserTimeout,
    /// The persist timer: `tcp_retries2` unanswered window probes.
    WindowProbesExhausted,
    /// The persist timer: `TCP_USER_TIMEOUT` since the first window probe.
    WindowUserTimeout,
}

const RTO_MIN_MS: u64 = 200;

/// `tcp_model_timeout()`: how long `boundary` retransmissions doubling from
/// `base_ms` take, capped at `rto_max_ms` each.
#[must_use]
pub fn model_timeout(boundary: u32, base_ms: u64, rto_max_ms: u64) -> u64 {
    let thresh = (rto_max_ms / base_ms.max(1)).max(1).ilog2();
    if boundary <= thresh {
        ((2u64 << boundary) - 1) * base_ms
    } else {
        ((2u64 << thresh) - 1) * base_ms + u64::from(boundary - thresh) * rto_max_ms
    }
}

/// `tcp_orphan_retries()` (without a pending soft error).
fn orphan_retries(sysctl: u32, alive: bool) -> u32 {
    if sysctl == 0 && alive { 8 } else { sysctl }
}

/// If the peer went silent now: how long until the write timer closes the
/// connection, and why. Always: every rule is bounded.
#[must_use]
pub fn write_timer(timer: &WriteTimer) -> (u64, Verdict) {
    if let Phase::ZeroWindow {
        retries2,
        orphan_retries: orphan,
    } = timer.phase
    {
        return persist(timer, retries2, orphan);
    }
    let user = timer.user_timeout_ms;
    let max = timer.rto_max_ms.max(1);
    // Times are relative to now: the stamp is in the past.
    let mut t = timer.timer_ms;
    let mut stamp: Option<i128> = timer.since_stamp_ms.map(|s| -i128::from(s));
    let mut n = timer.retransmits;
    let reverting = timer.unreachable && !matches!(timer.phase, Phase::Syn { .. });
    // Reverted, the RTO is back at its base: the backoff undone.
    let mut rto = if reverting {
        (timer.rto_ms >> timer.backoff.min(16)).clamp(1, max)
    } else {
        timer.rto_ms.clamp(1, max)
    };
    let since = |t: u64, stamp: Option<i128>| stamp.map_or(0, |s| i128::from(t) - s);
    // Each firing doubles the RTO up to the maximum, and every budget is a
    // time or a count: a bounded loop. The bound is a guard.
    for _ in 0..100_000 {
        let elapsed = since(t, stamp);
        let timed_out = |budget: u64| n > 0 && elapsed >= i128::from(budget);
        let verdict = match timer.phase {
            Phase::Retransmit { retries2 } => {
                let budget = model_timeout(retries2, RTO_MIN_MS, max);
                match user {
                    0 => timed_out(budget).then_some(Verdict::RetriesExhausted),
                    user => timed_out(user).then_some(Verdict::RetransmitUserTimeout),
                }
            }
            Phase::Orphan { orphan_retries: o } => {
                let budget = model_timeout(orphan_retries(o, rto < max), RTO_MIN_MS, max);
                match user {
                    0 => timed_out(budget).then_some(Verdict::OrphanRetriesExhausted),
                    user => timed_out(user).then_some(Verdict::RetransmitUserTimeout),
                }
            }
            Phase::ShrunkWindow { idle_ms } => {
                let mut timeout = 2 * max;
                if user != 0 {
                    timeout = timeout.min(user);
                }
                let silent = idle_ms + t;
                if user != 0 && elapsed > i128::from(user) {
                    Some(Verdict::RetransmitUserTimeout)
                } else {
                    (silent > timeout && elapsed > i128::from(timeout))
                        .then_some(Verdict::ShrunkWindow)
                }
            }
            Phase::Syn {
                retries,
                linear,
                timeout_init_ms,
            } => {
                if n >= retries + linear {
                    Some(Verdict::SynRetriesExhausted)
                } else if user != 0 {
                    timed_out(user).then_some(Verdict::SynUserTimeout)
                } else {
                    timed_out(model_timeout(retries, timeout_init_ms, max))
                        .then_some(Verdict::SynRetriesExhausted)
                }
            }
            Phase::ZeroWindow { .. } => unreachable!("handled above"),
        };
        if let Some(verdict) = verdict {
            return (t, verdict);
        }
        // Retransmits; the first retransmission stamps the episode.
        n += 1;
        let stamp_at = *stamp.get_or_insert(i128::from(t));
        let linear = match timer.phase {
            Phase::Syn { linear, .. } => n <= linear,
            _ => false,
        };
        if !linear && !reverting {
            rto = (rto * 2).min(max);
        }
        let next = if user == 0 {
            rto
        } else {
            let remaining = i128::from(user) - (i128::from(t) - stamp_at);
            if remaining <= 0 {
                timer.jiffy_ms()
            } else {
                rto.min(u64::try_from(remaining).unwrap_or(u64::MAX))
            }
        };
        t = timer.fire(t, next);
    }
    (t, Verdict::RetriesExhausted)
}

/// The persist timer (`tcp_probe_timer()`, `tcp_send_probe0()`).
fn persist(timer: &WriteTimer, retries2: u32, orphan: Option<u32>) -> (u64, Verdict) {
    let user = timer.user_timeout_ms;
    let max = timer.rto_max_ms.max(1);
    let base = timer.rto_ms.max(RTO_MIN_MS);
    let mut t = timer.timer_ms;
    let mut first: Option<i128> = timer.since_probes_ms.map(|s| -i128::from(s));
    let (mut probes, mut backoff) = (timer.probes, timer.backoff);
    let backed_off = |b: u32| base.checked_shl(b.min(10)).unwrap_or(u64::MAX).min(max);
    for _ in 0..100_000 {
        match first {
            None => first = Some(i128::from(t)),
            Some(f) if user != 0 && i128::from(t) - f >= i128::from(user) => {
                return (t, Verdict::WindowUserTimeout);
            }
            Some(_) => {}
        }
        let mut max_probes = retries2;
        if let Some(o) = orphan {
            let alive = backed_off(backoff) < max;
            max_probes = orphan_retries(o, alive);
            if !alive && backoff >= max_probes {
                return (t, Verdict::WindowProbesExhausted);
            }
        }
        if probes >= max_probes {
            return (t, Verdict::WindowProbesExhausted);
        }
        probes += 1;
        if backoff < retries2 {
            backoff += 1;
        }
        let mut when = backed_off(backoff);
        if user != 0
            && let Some(f) = first
        {
            let remaining = i128::from(user) - (i128::from(t) - f);
            let floor = 2 * timer.jiffy_ms();
            when = when.min(u64::try_from(remaining).unwrap_or(0).max(floor));
        }
        t = timer.fire(t, when);
    }
    (t, Verdict::WindowProbesExhausted)
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

    fn w(phase: Phase, rto_ms: u64) -> WriteTimer {
        WriteTimer {
            phase,
            timer_ms: rto_ms,
            retransmits: 0,
            probes: 0,
            backoff: 0,
            rto_ms,
            rto_max_ms: 120_000,
            since_stamp_ms: None,
            since_probes_ms: None,
            user_timeout_ms: 0,
            unreachable: false,
            hz: 250,
            // Aligned to every level of the wheel: each timer is late by
            // exactly one granule of its level.
            now_jiffies: 1 << 30,
        }
    }

    #[test]
    fn the_model_timeout_of_the_defaults_is_924_6_seconds() {
        assert_eq!(model_timeout(15, 200, 120_000), 924_600);
        assert_eq!(model_timeout(3, 200, 120_000), 3000);
        // SYN: base 1 s, 6 retries.
        assert_eq!(model_timeout(6, 1000, 120_000), 127_000);
    }

    #[test]
    fn three_retries_die_at_the_firing_past_three_seconds() {
        // In jiffies (4 ms) from an aligned now: the first RTO at 50 sets the
        // stamp; +100 lands in the 8-jiffy bucket after 150 (152), +200 in
        // the one after 352 (360), +400 after 760 (768): 2872 ms after the
        // stamp, under 3 s; +800 in the 64-jiffy bucket after 1568 (1600):
        // past it.
        let (at, verdict) = write_timer(&w(Phase::Retransmit { retries2: 3 }, 200));
        assert_eq!(verdict, Verdict::RetriesExhausted);
        assert_eq!(at, 1600 * 4);
    }

    #[test]
    fn the_default_fifteen_fit_because_timers_fire_late() {
        // Without the wheel's lateness the 16th firing would come 0.2 s short
        // of 924.6 s and the 17th, two minutes later, would kill.
        let (at, verdict) = write_timer(&w(Phase::Retransmit { retries2: 15 }, 200));
        assert_eq!(verdict, Verdict::RetriesExhausted);
        assert!((924_600..940_000).contains(&at), "{at}");
    }

    #[test]
    fn an_unreachable_host_keeps_retransmissions_one_rto_apart() {
        // Each retransmission's ICMP error undoes its backoff: the stamp at
        // 200 ms, then every 200 ms until 3 s after it.
        let mut s = w(Phase::Retransmit { retries2: 3 }, 200);
        s.unreachable = true;
        let (at, verdict) = write_timer(&s);
        assert_eq!(verdict, Verdict::RetriesExhausted);
        assert!((3200..=3300).contains(&at), "{at}");
        // Listed between a retransmission and its answer: the base RTO.
        s.backoff = 1;
        s.rto_ms = 400;
        assert_eq!(write_timer(&s), (at, Verdict::RetriesExhausted));
    }

    #[test]
    fn a_user_timeout_replaces_the_retries() {
        let mut s = w(Phase::Retransmit { retries2: 15 }, 200);
        s.user_timeout_ms = 2000;
        // Stamp at 200; 632, 1464; then clamped to what is left (736 ms).
        let (at, verdict) = write_timer(&s);
        assert_eq!(verdict, Verdict::RetransmitUserTimeout);
        assert!((2200..2300).contains(&at), "{at}");
    }

    #[test]
    fn mid_episode_counts_from_the_stamp() {
        let mut s = w(Phase::Retransmit { retries2: 3 }, 1600);
        s.retransmits = 3;
        s.since_stamp_ms = Some(2800);
        s.timer_ms = 100;
        // 2900 ms since the stamp at this firing (jiffy 25): under 3 s; the
        // next, 800 jiffies later in the bucket after 825 (832), kills.
        let (at, verdict) = write_timer(&s);
        assert_eq!(verdict, Verdict::RetriesExhausted);
        assert_eq!(at, 832 * 4);
    }

    #[test]
    fn syn_retries_count_the_linear_ones() {
        let syn = |linear| Phase::Syn {
            retries: 2,
            linear,
            timeout_init_ms: 1000,
        };
        // 6.1: 1, 2, 4 s apart: the time budget (7 s) at the third firing.
        let (at, verdict) = write_timer(&w(syn(0), 1000));
        assert_eq!(verdict, Verdict::SynRetriesExhausted);
        assert!((7000..7400).contains(&at), "{at}");
        // 6.5 on, 4 linear: six retransmissions 1 s apart, then the count.
        let (at, _) = write_timer(&w(syn(4), 1000));
        assert!((6000..6400).contains(&at) || at > 6000, "{at}");
    }

    #[test]
    fn the_persist_timer_gives_up_after_retries2_probes() {
        let z = Phase::ZeroWindow {
            retries2: 3,
            orphan_retries: None,
        };
        // Probes at jiffy 50, 152, 360 (as the retransmissions above); the
        // firing at 768 finds three out and aborts.
        let (at, verdict) = write_timer(&w(z, 200));
        assert_eq!(verdict, Verdict::WindowProbesExhausted);
        assert_eq!(at, 768 * 4);
    }

    #[test]
    fn the_persist_timer_honours_the_user_timeout() {
        let mut s = w(
            Phase::ZeroWindow {
                retries2: 15,
                orphan_retries: None,
            },
            200,
        );
        s.user_timeout_ms = 1000;
        let (at, verdict) = write_timer(&s);
        assert_eq!(verdict, Verdict::WindowUserTimeout);
        assert!((1200..1300).contains(&at), "{at}");
    }
}
