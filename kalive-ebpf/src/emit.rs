//! Building and sending [`Record`]s, and knowing who owns a socket: the parts
//! every producer shares.

use aya_ebpf::helpers::{bpf_get_current_pid_tgid, bpf_jiffies64, bpf_ktime_get_boot_ns};
use kalive_common::{
    AckSeen, FLAG_EACH_ANSWERED, FLAG_KEEPALIVE, FLAG_LATE, FLAG_SHARED, FLAG_UNFILTERED,
    FLAG_USER_TIMEOUT, IDLE_NONE, Kind, OWNER_KERNEL, Owner, RECORD_VERSION, Record, TcpState,
};

use crate::{
    kernel::{
        ICSK_TIME_PROBE0, Sock, copy_comm, current_process_comm, layout, netns_ino, setting,
        timer_expires, zero,
    },
    maps::{
        EVENTS, EXITED, LATE_NOTE, LOST, LateNote, OWNERS, PIDS, PORTS, PROBING, Probing,
        UNNUMBERED, ZERO_WINDOW, ZERO_WINDOW_LAST,
    },
};

/// Jiffies now, truncated like the kernel's `tcp_jiffies32`.
pub(crate) fn jiffies32() -> u32 {
    // SAFETY: no preconditions.
    unsafe { bpf_jiffies64() as u32 }
}

pub(crate) fn now_ns() -> u64 {
    // SAFETY: no preconditions.
    unsafe { bpf_ktime_get_boot_ns() }
}

/// `jiffies` as nanoseconds.
fn jiffies_ns(jiffies: u32) -> u64 {
    u64::from(jiffies) * 1_000_000_000 / u64::from(layout!(hz)).max(1)
}

/// `CLOCK_BOOTTIME` (the records' clock) at `jiffies`, a time past.
fn boot_ns_at(jiffies: u32) -> u64 {
    now_ns().saturating_sub(jiffies_ns(jiffies32().wrapping_sub(jiffies)))
}

/// The owner of `sk` (whose inode is `ino`), unless the entry is stale: the
/// socket memory was reused, or the owner exited after it was learned.
pub(crate) fn owner_of(sk: Sock, ino: u64) -> Option<&'static Owner> {
    // SAFETY: map values stay valid while the program runs.
    let owner = unsafe { OWNERS.get(&sk.0) }?;
    if owner.ino != ino {
        return None;
    }
    // SAFETY: as above.
    if let Some(&exited) = unsafe { EXITED.get(&owner.pid) }
        && exited > owner.learned_ns
    {
        return None;
    }
    Some(owner)
}

/// The current process uses `sk`: it owns it from now on. Returns the owner.
pub(crate) fn learn_owner(sk: Sock) -> Owner {
    let ino = sk.ino();
    let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let previous = owner_of(sk, ino).copied();
    if let Some(previous) = previous
        && previous.pid == pid
        && previous.source == OWNER_KERNEL
    {
        return previous;
    }
    let owner = Owner {
        pid,
        source: OWNER_KERNEL,
        // Another live process used it before this one: both hold it.
        shared: previous.map_or(0, |p| u8::from(p.pid != pid) | p.shared),
        pad: 0,
        learned_ns: now_ns(),
        ino,
        comm: current_process_comm(),
    };
    let _ = OWNERS.insert(&sk.0, &owner, 0);
    owner
}

pub(crate) fn forget_owner(sk: Sock) {
    let _ = OWNERS.remove(&sk.0);
}

/// The current process exits: owners it was are stale from now.
pub(crate) fn process_exited() {
    let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let _ = EXITED.insert(&pid, &now_ns(), 0);
}

/// Notes that keepalive probe number `probes` left `sk` at `sent_ns` (its
/// record's time), to tell an answer later (see [`PROBING`]).
pub(crate) fn probing(sk: Sock, probes: u8, sent_ns: u64) {
    let silent_since = sk.rcv_tstamp();
    update_probing(sk, |p| {
        p.probes = probes;
        p.silent_since = silent_since;
        p.known = 1;
        p.sent_ns = sent_ns;
    });
}

/// Reports an answer to `sk`'s keepalive probes if the kernel took one since
/// the last probe kalive reported (`icsk_probes_out` went down), noticed at
/// `seen_at`. The record's time is the kernel's of the last ACK
/// (`rcv_tstamp`, to the jiffy), and `idle` how long the peer had been silent
/// before it.
pub(crate) fn answered(sk: Sock, seen_at: AckSeen) {
    // SAFETY: the value is copied out at once.
    let Some(&Probing {
        probes: reported,
        known: 1,
        silent_since,
        sent_ns,
        ..
    }) = (unsafe { PROBING.get(&sk.0) })
    else {
        return;
    };
    let answer = sk.rcv_tstamp();
    // tcp_ack() zeroes the count and stamps the time together; a changed time
    // also tells an answer followed by probes whose callbacks went unseen.
    if reported == 0 || (sk.probes_out() >= reported && answer == silent_since) {
        return;
    }
    // Kept, with no probe out: probes after this one are numbered from 1.
    answered_at(sk, answer);
    // Not before the probe it answers, whatever the tick's lag.
    let ts = boot_ns_at(answer).max(sent_ns);
    emit(Kind::ProbeAcked, sk, 0, None, |r| {
        r.ts_ns = ts;
        r.idle = answer.wrapping_sub(silent_since);
        r.cause = seen_at as u8;
    });
}

/// Reports the keepalive probes `sk` sent that kalive has no record of: the
/// kernel counts them in `icsk_probes_out` beyond the last one reported, when
/// their timer callbacks went unseen (on 6.18 the kernel was seen not to run
/// the timer tracepoints' programs for some callbacks, and count no skip).
/// The last left when its timer says: the keepalive timer is re-armed one
/// `keepintvl` after each probe, so at the timer's `expires` minus that.
/// `keepalive_timer` is the socket's timer.
///
/// One record for all of them, the last one's, with how many there are in
/// `cause`: userspace writes one per probe, each one interval before the next
/// (one record here keeps the programs small for the verifier).
pub(crate) fn caught_up(sk: Sock, keepalive_timer: u64) {
    let probes = sk.probes_out();
    // A closed socket's count was looked at as it closed; an orphan's
    // keepalive timer only ends its FIN_WAIT2 linger and sends no probe.
    if probes == 0
        || !sk.keepalive_on()
        || sk.orphan()
        || !TcpState::from_kernel(sk.state()).connected()
    {
        return;
    }
    // Zero-window probes count there too (and keepalive never probes while
    // they run): the count is keepalive's only while the persist timer is not
    // probing and was not seen probing.
    // SAFETY: only presence is checked.
    if sk.pending() == ICSK_TIME_PROBE0 || unsafe { ZERO_WINDOW.get(&sk.0) }.is_some() {
        return;
    }
    // SAFETY: the value is copied out at once.
    let reported = match unsafe { PROBING.get(&sk.0) } {
        Some(&Probing {
            probes, known: 1, ..
        }) => probes,
        // Nothing known of this socket's probes (none reported yet, or the
        // entry was evicted): only a first probe is certain to be unreported.
        _ if probes == 1 && sk.pending() == 0 => 0,
        _ => return,
    };
    if probes <= reported {
        return;
    }
    let (idle, intvl, _) = sk.keepalive_config(sk.net());
    let last = (timer_expires(keepalive_timer) as u32).wrapping_sub(intvl);
    // A probe leaves only after `keepidle` of silence. A count left over from
    // probes long answered by data (which may skip tcp_ack() and leave it) is
    // no new probe: kalive, started since, never saw its probes.
    if (last.wrapping_sub(sk.last_heard()) as i32) < idle as i32 {
        return;
    }
    let ts = boot_ns_at(last);
    probing(sk, probes, ts);
    let started = setting!(started_ns);
    if ts < started {
        // Sent before kalive watched: not kalive's to report.
        return;
    }
    // Only those sent since kalive watched.
    let intvl_ns = jiffies_ns(intvl);
    let watched = if intvl_ns == 0 {
        1
    } else {
        (ts - started) / intvl_ns + 1
    };
    let missing = u64::from(probes - reported).min(watched) as u8;
    let heard = sk.last_heard();
    emit(Kind::ProbeSent, sk, 0, None, |r| {
        r.ts_ns = ts;
        r.next = intvl;
        r.idle = last.wrapping_sub(heard);
        r.flags |= FLAG_LATE;
        r.cause = missing;
    });
}

/// Notes that `sk`'s probes were answered at `when` (jiffies): none is out.
/// (Kept rather than removed, so that a probe found later is known to be
/// numbered from 1; see [`caught_up`].)
pub(crate) fn answered_at(sk: Sock, when: u32) {
    update_probing(sk, |p| {
        p.probes = 0;
        p.silent_since = when;
        p.known = 1;
    });
}

/// Sets `sk`'s entry in [`PROBING`]: in place when it has one. (An update
/// of an LRU map takes a new element and frees the old one lazily, per CPU:
/// at 50k sockets probing every second, that churn had entries evicted from a
/// map with room for all of them, and the probes those entries vouched for
/// went unreported.)
fn update_probing(sk: Sock, change: impl FnOnce(&mut Probing)) {
    if let Some(slot) = PROBING.get_ptr_mut(&sk.0) {
        // SAFETY: a valid element; a racing writer stores as recent a value.
        change(unsafe { &mut *slot });
    } else {
        let mut value = core::mem::MaybeUninit::<Probing>::uninit();
        // SAFETY: zeroed in place (all-zero is a valid `Probing`), then used.
        let value = unsafe {
            zero(value.as_mut_ptr());
            value.assume_init_mut()
        };
        change(value);
        let _ = PROBING.insert(&sk.0, value, 0);
    }
}

/// Notes that a callback kalive saw left `sk`'s keepalive timer armed to
/// fire at `expires`, and what the socket had sent and received then (see
/// [`missed_answered`]).
pub(crate) fn keepalive_armed(sk: Sock, expires: u32) {
    let (segs_out, data_segs_out) = sk.segs_out();
    let (probes, bare_in, rcv_nxt) = (sk.probes_out(), sk.bare_segs_in(), sk.rcv_nxt());
    update_probing(sk, |p| {
        p.armed = expires;
        p.probes_then = probes;
        p.segs_out = segs_out;
        p.data_segs_out = data_segs_out;
        p.bare_segs_in = bare_in;
        p.rcv_nxt = rcv_nxt;
    });
}

/// Forgets where `sk`'s keepalive timer was left: a keepalive `setsockopt()`
/// re-arms or stops it where kalive does not look.
pub(crate) fn forget_armed(sk: Sock) {
    if let Some(slot) = PROBING.get_ptr_mut(&sk.0) {
        // SAFETY: a valid element.
        unsafe { (*slot).armed = 0 };
    }
}

/// Reports the keepalive probes `sk` sent, and the peer answered, in callbacks
/// for which the kernel ran no program of kalive's: at the next callback,
/// which `timer` (the keepalive timer) begins, the kernel's count is back to 0
/// and [`caught_up`] finds nothing. (Seen on this 6.18 machine: for a whole
/// timer softirq at a time, no BPF program ran, where ftrace saw every event.)
///
/// Each keepalive callback re-arms the timer, and kalive notes where each
/// callback it sees leaves it: a callback for another expiry followed
/// callbacks it did not see. One that probed re-armed the timer one
/// `keepintvl` after it ran (late by up to the timer wheel's granularity);
/// one that did not, for the rest of `keepidle`, 50 ms later (socket locked)
/// or half a second later (probe not sent). So `k` unseen callbacks that each
/// probed end `k` intervals (and a little) after the last expiry seen. The
/// socket's counters must agree: `k` more segments without data sent and
/// none with data, no data received, and an ACK since the last of those
/// probes (not before it: a re-arm for the rest of `keepidle` can end at the
/// same place when the peer was heard from at just the wrong time, and the
/// bare segments can be the socket's answers to the peer's own probes).
/// Cases that fit less well are left unreported, not guessed; probes known to
/// have left whose numbers are not known are counted ([`UNNUMBERED`]).
///
/// Inlined into the global function that calls it (`kalive_missed_answered`):
/// a call inside it would be one the 6.1 verifier's precision tracking
/// gives up at (see [`zero`](crate::kernel::zero)); as a function of its
/// own it took 6.7 s of 6.1's verifier under the VM's emulation.
#[inline(always)]
pub(crate) fn missed_answered(sk: Sock, timer: u64) {
    let Some(slot) = PROBING.get_ptr_mut(&sk.0) else {
        return;
    };
    // SAFETY: a valid element (read field by field: a copy would take a
    // stack slot for each, and this runs deep in the callback's calls); its
    // expiry is used up.
    let p = unsafe { &*slot };
    let armed = p.armed;
    // SAFETY: as above.
    unsafe { (*slot).armed = 0 };
    let expires = timer_expires(timer) as u32;
    // Probes still counted are caught_up()'s.
    if armed == 0 || armed == expires || sk.probes_out() != 0 {
        return;
    }
    let (idle, intvl, _) = sk.keepalive_config(sk.net());
    let gap = expires.wrapping_sub(armed);
    if intvl == 0 || (gap as i32) < intvl as i32 {
        return;
    }
    let k = gap / intvl;
    // A callback runs late by the wheel's granularity at that delay: an
    // eighth of it at most, and a few jiffies for the softirq itself.
    if k > 16 || gap - k * intvl > k * (intvl / 8 + 4) {
        return;
    }
    // The last left one interval before this callback was due.
    let last = expires.wrapping_sub(intvl);
    let (segs_out, data_segs_out) = sk.segs_out();
    let answer = sk.rcv_tstamp();
    if data_segs_out != p.data_segs_out
        || segs_out.wrapping_sub(p.segs_out) < k
        || sk.rcv_nxt() != p.rcv_nxt
        || (answer.wrapping_sub(last) as i32) < 0
    {
        return;
    }
    let ts = boot_ns_at(last);
    if ts < setting!(started_ns) {
        return;
    }
    let reported = if p.known != 0 {
        p.probes
    } else {
        p.probes_then
    };
    let silent_since = p.silent_since;
    let silence_known = p.known != 0;
    // With keepidle no longer than keepintvl, a callback one interval after a
    // probe probes whether or not that one was answered, and a live peer
    // answers each probe with its own ACK within the interval: with `a` ACKs,
    // the last `a` probes (of the one reported, if out, and the unseen ones)
    // were each answered before the next left. (The last was: no probe is
    // out.) The kernel numbers a probe after an answer 1.
    let answers = sk.bare_segs_in().wrapping_sub(p.bare_segs_in);
    let chain = k + u32::from(reported > 0);
    let each = if idle <= intvl {
        answers.max(1).min(chain)
    } else {
        1
    };
    // Unless the socket sent more than its probes (its ACKs of the peer's own
    // probes, say): then some ACKs were not answers, and which probes they
    // answered is not known. One unseen probe is numbered after the reported
    // one, answered or not; several cannot be numbered: counted, not reported.
    if each > 1 && k > 1 && segs_out.wrapping_sub(p.segs_out) != k {
        unnumbered(k);
        return;
    }
    // Each answered probe but the last was answered as long after it as the
    // last was (`rcv_tstamp`), and the next left keepidle after that at the
    // earliest: the silence at each probe after an answer.
    let after_answer = intvl
        .saturating_sub(answer.wrapping_sub(last))
        .max(idle)
        .min(intvl);
    let silence = move |at: u32| {
        if silence_known {
            at.wrapping_sub(silent_since)
        } else {
            IDLE_NONE
        }
    };
    // The unseen probes: unless the reported one was answered too, the first
    // `k - each + 1` numbered after it (the last of them answered when
    // `each` > 1) ...
    let numbered = if reported > 0 && each == chain {
        0
    } else {
        k + 1 - each
    };
    let at = last.wrapping_sub((k - numbered) * intvl);
    let numbered_probes = reported.saturating_add(numbered as u8);
    // ... and the others each numbered 1, after the answer to the one before.
    let answered_each = k - numbered;
    let answered = last
        .wrapping_sub(answered_each.saturating_sub(1) * intvl)
        .wrapping_sub(after_answer);
    // Numbered after the last reported; answered() next reports the answer.
    let (probes, since) = if answered_each > 0 {
        (1, last.wrapping_sub(after_answer))
    } else {
        (numbered_probes, silent_since)
    };
    // The records' values go through this CPU's note (`LATE_NOTE`), packed:
    // carried in registers across the record-making path, the verifier
    // tracked each through it (6.1: 3.2 s under the VM's emulation, 0.56 s
    // through the note).
    let numbered_at = if numbered > 0 { boot_ns_at(at) } else { 0 };
    let numbered_fields =
        u64::from(silence(at)) << 32 | u64::from(numbered_probes) << 8 | u64::from(numbered as u8);
    let each_fields = u64::from(silence(answered)) << 32 | u64::from(after_answer);
    let each_count = answered_each as u8;
    let Some(note) = LATE_NOTE.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot; a program that interrupted this one and
    // wrote it has finished with it.
    unsafe {
        *note = LateNote {
            ts,
            numbered_at,
            numbered: numbered_fields,
            each: each_fields,
            each_count,
            pad: [0; 3],
            intvl,
        };
    }
    emit_and(
        Kind::ProbeSent,
        sk,
        0,
        None,
        |r| late_record(r, false),
        // A copy of the first, with `next` and `FLAG_LATE`.
        (numbered_at != 0 && answered_each > 0).then_some(|r: &mut Record| late_record(r, true)),
    );
    update_probing(sk, |p| {
        p.probes = probes;
        p.silent_since = since;
        p.known = 1;
    });
}

/// Fills in a record of [`missed_answered`]'s from its note: the first
/// (the numbered probes, or those each numbered 1 when none is), or with
/// `second` the copy for those each numbered 1.
#[inline(always)]
fn late_record(r: &mut Record, second: bool) {
    let Some(note) = LATE_NOTE.get_ptr(0) else {
        return;
    };
    // SAFETY: this CPU's slot, written just before the records.
    let n = unsafe { &*note };
    r.next = n.intvl;
    r.flags |= FLAG_LATE;
    if second || n.numbered_at == 0 {
        each_numbered_1(r, n.ts, n.each, n.each_count);
    } else {
        r.ts_ns = n.numbered_at;
        r.idle = (n.numbered >> 32) as u32;
        r.probes = (n.numbered >> 8) as u8;
        r.cause = n.numbered as u8;
    }
}

/// Fills in the record of probes each numbered 1 after an answer (see
/// [`FLAG_EACH_ANSWERED`]): `count` of them, the last at `ts_ns`; `silences`
/// holds the silence before the first answer (high 32 bits) and at each probe.
#[inline(always)]
fn each_numbered_1(r: &mut Record, ts_ns: u64, silences: u64, count: u8) {
    r.ts_ns = ts_ns;
    r.probes = 1;
    r.error = (silences >> 32) as u32;
    r.idle = silences as u32;
    r.flags |= FLAG_EACH_ANSWERED;
    r.cause = count;
}

/// Counts `n` keepalive probes the programs know left but cannot number:
/// userspace counts them with the probes that have no record.
fn unnumbered(n: u32) {
    if let Some(count) = UNNUMBERED.get_ptr_mut(0) {
        // SAFETY: this CPU's slot.
        unsafe { *count += u64::from(n) };
    }
}

/// Forgets the probes of a socket that closes, is destroyed, or whose answer
/// was reported as it arrived.
pub(crate) fn forget_probing(sk: Sock) {
    let _ = PROBING.remove(&sk.0);
}

/// Notes that `sk` probes a zero window.
pub(crate) fn zero_window_probing(sk: Sock) {
    let state = u16::from(sk.probes_out()) | u16::from(sk.backoff()) << 8;
    let _ = ZERO_WINDOW.insert(&sk.0, &state, 0);
    if let Some(last) = ZERO_WINDOW_LAST.get_ptr_mut(0) {
        // SAFETY: a valid slot; a racing writer stores a time as recent. No
        // preconditions for the helper.
        unsafe { *last = bpf_jiffies64() };
    }
}

/// `sk` is seen not probing a zero window: if it was, the peer opened its
/// window, which is reported.
pub(crate) fn zero_window_not_probing(sk: Sock) {
    // Probes are at most TCP_RTO_MAX (120 s) apart: without one for twice that,
    // no socket on this host is probing, and the map need not be searched.
    let last = ZERO_WINDOW_LAST.get(0).copied().unwrap_or(0);
    // SAFETY: no preconditions.
    let now = unsafe { bpf_jiffies64() };
    if last == 0 || now.wrapping_sub(last) > 240 * u64::from(layout!(hz)) {
        return;
    }
    // SAFETY: only presence is checked.
    if unsafe { ZERO_WINDOW.get(&sk.0) }.is_some() {
        let _ = ZERO_WINDOW.remove(&sk.0);
        emit(Kind::ZeroWindowOpen, sk, 0, None, |_| {});
    }
}

/// Whether the persist timer of `sk`, already probing, probed again since the
/// last probe kalive saw: a probe counts or backs off; an ACK of a still-shut
/// window resets `icsk_probes_out` but not `icsk_backoff`.
pub(crate) fn zero_window_probed_again(sk: Sock) -> bool {
    // SAFETY: the value is copied out at once.
    let Some(&state) = (unsafe { ZERO_WINDOW.get(&sk.0) }) else {
        return false;
    };
    let (probes, backoff) = (state as u8, (state >> 8) as u8);
    sk.backoff() > backoff || sk.probes_out() > probes
}

/// Forgets a socket that closes or is destroyed.
pub(crate) fn forget_zero_window(sk: Sock) {
    let _ = ZERO_WINDOW.remove(&sk.0);
}

/// Whether `--port` lets a socket with these ports (network order) through.
fn ports_match(sport: u16, dport: u16) -> bool {
    if setting!(filter_ports) == 0 {
        return true;
    }
    // SAFETY: only presence is checked.
    unsafe {
        PORTS.get(&u16::from_be(sport)).is_some() || PORTS.get(&u16::from_be(dport)).is_some()
    }
}

/// Sends a `kind` record about `sk`, filled with everything the socket says
/// about itself, then adjusted by `extra` — unless the user's filters exclude
/// it, which costs no ring buffer space. `cookie` is 0 when the hook could not
/// ask the kernel to assign one; the socket's own field is used then. `owner`
/// overrides the map of owners (the caller of `setsockopt()` owns its socket).
#[inline(always)]
pub(crate) fn emit(
    kind: Kind,
    sk: Sock,
    cookie: u64,
    owner: Option<&Owner>,
    extra: impl FnOnce(&mut Record),
) {
    emit_and(kind, sk, cookie, owner, extra, None::<fn(&mut Record)>);
}

/// [`emit`], then, with `and`, a second record: a copy of the first adjusted
/// by `and` (the socket is read, and the filters applied, once: a second
/// [`emit`] would cost the verifier all of it again).
#[inline(always)]
pub(crate) fn emit_and(
    kind: Kind,
    sk: Sock,
    cookie: u64,
    owner: Option<&Owner>,
    extra: impl FnOnce(&mut Record),
    and: Option<impl FnOnce(&mut Record)>,
) {
    let (sport, dport) = (sk.sport(), sk.dport());
    if !ports_match(sport, dport) {
        return;
    }
    let ino = sk.ino();
    let owner = owner.or_else(|| owner_of(sk, ino));
    let mut flags = 0;
    if setting!(filter_pids) != 0 {
        match owner {
            // SAFETY: only presence is checked.
            Some(o) if unsafe { PIDS.get(&o.pid) }.is_none() => return,
            Some(_) => {}
            // Userspace finds the owner in procfs and applies the filter.
            None => flags |= FLAG_UNFILTERED,
        }
    }

    let Some(mut entry) = EVENTS.reserve::<Record>(0) else {
        count(&LOST);
        if and.is_some() {
            count(&LOST);
        }
        return;
    };
    // Filled in place: a record built on the stack and copied would cost a
    // stack frame as large as the record, and BPF stacks are small.
    let p = entry.as_mut_ptr();
    // SAFETY: `p` is the reserved, writable, properly sized entry; all-zero is
    // a valid `Record`.
    let r = unsafe {
        zero(p);
        &mut *p
    };
    r.version = RECORD_VERSION;
    r.kind = kind as u8;
    r.fd = -1;
    r.ts_ns = now_ns();
    r.cookie = if cookie != 0 { cookie } else { sk.cookie() };
    r.family = sk.family();
    r.state = sk.state();
    r.sport = sport;
    r.dport = dport;
    sk.addrs(r.family, &mut r.saddr, &mut r.daddr);
    let net = sk.net();
    r.netns = netns_ino(net);
    r.ino = ino;
    r.sk = sk.0;
    r.probes = sk.probes_out();
    r.backoff = sk.backoff();
    let (idle, intvl, cnt) = sk.keepalive_config(net);
    r.keepidle = idle;
    r.keepintvl = intvl;
    r.keepcnt = cnt;
    r.user_timeout_ms = sk.user_timeout_ms();
    if r.user_timeout_ms != 0 {
        flags |= FLAG_USER_TIMEOUT;
    }
    if sk.keepalive_on() {
        flags |= FLAG_KEEPALIVE;
    }
    r.idle = if TcpState::from_kernel(r.state).connected() {
        jiffies32().wrapping_sub(sk.last_heard())
    } else {
        IDLE_NONE
    };
    r.snd_wnd = sk.snd_wnd();
    if let Some(owner) = owner {
        r.pid = owner.pid;
        copy_comm(&mut r.comm, &owner.comm);
        r.owner = owner.source;
        if owner.shared != 0 {
            flags |= FLAG_SHARED;
        }
    }
    r.flags = flags;
    extra(r);
    if let Some(and) = and {
        if let Some(mut second) = EVENTS.reserve::<Record>(0) {
            // SAFETY: both are reserved, writable, properly sized entries.
            let copy = unsafe {
                core::ptr::copy_nonoverlapping(p.cast_const(), second.as_mut_ptr(), 1);
                &mut *second.as_mut_ptr()
            };
            and(copy);
            entry.submit(0);
            second.submit(0);
            return;
        }
        count(&LOST);
    }
    entry.submit(0);
}

fn count(counter: &aya_ebpf::maps::PerCpuArray<u64>) {
    if let Some(slot) = counter.get_ptr_mut(0) {
        // SAFETY: this CPU's slot. Not atomic (the BPF target has no atomic
        // read-modify-write in Rust's core): only a program nested from an
        // interrupt at this very instruction could be miscounted.
        unsafe { *slot += 1 };
    }
}
