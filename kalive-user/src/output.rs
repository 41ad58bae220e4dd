//! Writing records: one JSON object per line, or aligned text columns.
//!
//! Stdout carries records only. Each record is formatted into a reused buffer,
//! so the hot path does not allocate. The schema is documented in
//! `docs/events.md`.

use std::{
    fmt::Write as _,
    io::{self, Write},
    net::IpAddr,
};

use kalive_common::{
    CAUSE_PEER_RESET, CAUSE_PROBES_EXHAUSTED, CAUSE_RETRIES_EXHAUSTED, CAUSE_USER_TIMEOUT, Kind,
    OWNER_PROCFS, Record,
};

use crate::clock::{WallClock, write_rfc3339};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One JSON object per line.
    Json,
    /// Aligned columns with a header.
    Text,
}

/// User-facing name of an event kind.
#[must_use]
pub const fn event_name(kind: Kind) -> &'static str {
    match kind {
        Kind::StateChange => "state_change",
        Kind::KeepaliveSet => "keepalive_set",
        Kind::ProbeSent => "probe_sent",
        Kind::ProbeAcked => "probe_acked",
        Kind::KeepaliveTimeout => "keepalive_timeout",
        Kind::EventsLost => "events_lost",
        Kind::ZeroWindowProbeSent => "zero_window_probe_sent",
        Kind::ZeroWindowOpen => "zero_window_open",
        Kind::ZeroWindowTimeout => "zero_window_timeout",
    }
}

/// The kernel's name for a TCP state (`include/net/tcp_states.h`).
#[must_use]
pub const fn state_name(state: u8) -> &'static str {
    match state {
        1 => "ESTABLISHED",
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        12 => "NEW_SYN_RECV",
        13 => "BOUND_INACTIVE",
        _ => "UNKNOWN",
    }
}

/// The symbolic name of the errors a killed connection can carry: the timeout,
/// a reset, or an ICMP error the kernel kept (`sk_err_soft`).
#[must_use]
pub fn errno_name(errno: u32) -> String {
    let name = match errno {
        110 => "ETIMEDOUT",
        104 => "ECONNRESET",
        113 => "EHOSTUNREACH",
        112 => "EHOSTDOWN",
        101 => "ENETUNREACH",
        100 => "ENETDOWN",
        111 => "ECONNREFUSED",
        103 => "ECONNABORTED",
        13 => "EACCES",
        64 => "ENONET",
        92 => "ENOPROTOOPT",
        95 => "EOPNOTSUPP",
        71 => "EPROTO",
        90 => "EMSGSIZE",
        32 => "EPIPE",
        other => return format!("E{other}"),
    };
    name.to_owned()
}

/// How the owner was learned: from the process using the socket (`kernel`), from
/// `/proc/PID/fd` (`procfs`), or not at all.
#[must_use]
pub const fn owner_name(record: &Record) -> &'static str {
    match (record.owner_pid(), record.owner) {
        (None, _) => "unknown",
        (Some(_), OWNER_PROCFS) => "procfs",
        (Some(_), _) => "kernel",
    }
}

/// Why keepalive killed the connection.
#[must_use]
pub const fn timeout_cause(record: &Record) -> &'static str {
    match record.cause {
        CAUSE_USER_TIMEOUT => "user_timeout",
        CAUSE_PEER_RESET => "peer_reset",
        CAUSE_PROBES_EXHAUSTED => "probes_exhausted",
        CAUSE_RETRIES_EXHAUSTED => "retries_exhausted",
        _ => "unknown",
    }
}

pub struct Writer<W: Write> {
    out: W,
    format: Format,
    clock: WallClock,
    hz: u64,
    line: String,
    wrote_header: bool,
}

impl<W: Write> Writer<W> {
    /// `hz` converts the kernel's jiffies to milliseconds.
    pub fn new(out: W, format: Format, clock: WallClock, hz: u32) -> Self {
        Self {
            out,
            format,
            clock,
            hz: u64::from(hz.max(1)),
            line: String::new(),
            wrote_header: false,
        }
    }

    /// Formats one record into the output buffer. Records of an unknown kind are
    /// the decoder's business and never reach here.
    ///
    /// # Errors
    /// When writing to the output fails (for example a closed pipe).
    pub fn record(&mut self, record: &Record) -> io::Result<()> {
        let Some(kind) = record.kind() else {
            return Ok(());
        };
        self.begin();
        match self.format {
            Format::Json => self.json(kind, record),
            Format::Text => self.text(kind, record),
        }
        self.end()
    }

    /// An `events_lost` record: `count` records the kernel could not deliver.
    ///
    /// # Errors
    /// When writing to the output fails.
    pub fn lost(&mut self, ts_boot_ns: u64, count: u64) -> io::Result<()> {
        self.begin();
        let name = event_name(Kind::EventsLost);
        match self.format {
            Format::Json => {
                let l = &mut self.line;
                l.push_str("{\"ts\":\"");
                write_rfc3339(l, self.clock.unix_ns(ts_boot_ns));
                let _ = write!(
                    l,
                    "\",\"event\":\"{name}\",\"pid\":null,\"comm\":null,\"owner\":null,\"shared\":null,\"family\":null,\
                     \"saddr\":null,\"sport\":null,\"daddr\":null,\"dport\":null,\"netns\":null,\
                     \"cookie\":null,\"state\":null,\"probes\":null,\"idle_ms\":null,\
                     \"keepidle_ms\":null,\"keepintvl_ms\":null,\"keepcnt\":null,\
                     \"user_timeout_ms\":null,\"count\":{count}}}"
                );
            }
            Format::Text => {
                let time = self.time_of_day(ts_boot_ns);
                let _ = write!(
                    self.line,
                    "{time:<15} {name:<17} {:>7} {:<15} {:<21} {:<21} {:<11} {:>6} {:>7} {:<14} {count} records lost",
                    "-", "-", "-", "-", "-", "-", "-", "-"
                );
            }
        }
        self.end()
    }

    /// # Errors
    /// When the output cannot be flushed.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    #[cfg(test)]
    pub fn into_inner(self) -> W {
        self.out
    }

    fn begin(&mut self) {
        self.line.clear();
        if self.format == Format::Text && !self.wrote_header {
            self.wrote_header = true;
            let _ = writeln!(
                self.line,
                "{:<15} {:<17} {:>7} {:<15} {:<21} {:<21} {:<11} {:>6} {:>7} {:<14} DETAIL",
                "TIME",
                "EVENT",
                "PID",
                "COMM",
                "LOCAL",
                "REMOTE",
                "STATE",
                "PROBES",
                "IDLE",
                "KEEPALIVE"
            );
        }
    }

    fn end(&mut self) -> io::Result<()> {
        self.line.push('\n');
        self.out.write_all(self.line.as_bytes())
    }

    fn ms(&self, jiffies: u32) -> u64 {
        u64::from(jiffies) * 1000 / self.hz
    }

    fn json(&mut self, kind: Kind, r: &Record) {
        let idle = r.idle_jiffies().map(|j| self.ms(j));
        let (keepidle, keepintvl) = (self.ms(r.keepidle), self.ms(r.keepintvl));
        let next = self.ms(r.next);
        let l = &mut self.line;
        l.push_str("{\"ts\":\"");
        write_rfc3339(l, self.clock.unix_ns(r.ts_ns));
        l.push_str("\",\"event\":\"");
        l.push_str(event_name(kind));
        l.push('"');
        match r.owner_pid() {
            Some(pid) => {
                let _ = write!(l, ",\"pid\":{pid},\"comm\":");
                json_string(l, r.owner_comm().unwrap_or_default());
            }
            None => l.push_str(",\"pid\":null,\"comm\":null"),
        }
        let _ = write!(
            l,
            ",\"owner\":\"{}\",\"shared\":{}",
            owner_name(r),
            r.shared()
        );
        let _ = write!(
            l,
            ",\"family\":\"{}\",\"saddr\":\"{}\",\"sport\":{},\"daddr\":\"{}\",\"dport\":{},\"netns\":{}",
            if r.is_ipv6() { "ipv6" } else { "ipv4" },
            r.saddr(),
            r.local_port(),
            r.daddr(),
            r.remote_port(),
            r.netns,
        );
        if r.cookie == 0 {
            l.push_str(",\"cookie\":null");
        } else {
            let _ = write!(l, ",\"cookie\":{}", r.cookie);
        }
        let _ = write!(
            l,
            ",\"state\":\"{}\",\"probes\":{}",
            state_name(r.state),
            r.probes
        );
        match idle {
            Some(ms) => {
                let _ = write!(l, ",\"idle_ms\":{ms}");
            }
            None => l.push_str(",\"idle_ms\":null"),
        }
        let _ = write!(
            l,
            ",\"keepidle_ms\":{keepidle},\"keepintvl_ms\":{keepintvl},\"keepcnt\":{},\"user_timeout_ms\":{}",
            r.keepcnt, r.user_timeout_ms
        );
        match kind {
            Kind::KeepaliveSet => {
                let _ = write!(l, ",\"enabled\":{}", r.keepalive_enabled());
            }
            Kind::ProbeSent => {
                let _ = write!(l, ",\"next_ms\":{next}");
            }
            Kind::KeepaliveTimeout | Kind::ZeroWindowTimeout => {
                let _ = write!(
                    l,
                    ",\"error\":\"{}\",\"cause\":\"{}\"",
                    errno_name(r.error),
                    timeout_cause(r)
                );
            }
            Kind::StateChange => {
                let _ = write!(l, ",\"old_state\":\"{}\"", state_name(r.old_state));
            }
            Kind::ZeroWindowProbeSent => {
                let _ = write!(
                    l,
                    ",\"backoff\":{},\"next_ms\":{next},\"snd_wnd\":{}",
                    r.backoff, r.snd_wnd
                );
            }
            Kind::ZeroWindowOpen => {
                let _ = write!(l, ",\"snd_wnd\":{}", r.snd_wnd);
            }
            Kind::ProbeAcked | Kind::EventsLost => {}
        }
        l.push('}');
    }

    fn time_of_day(&self, ts_boot_ns: u64) -> String {
        let mut ts = String::new();
        write_rfc3339(&mut ts, self.clock.unix_ns(ts_boot_ns));
        // HH:MM:SS.micros is enough on a terminal.
        ts.get(11..26).unwrap_or(&ts).to_owned()
    }

    fn text(&mut self, kind: Kind, r: &Record) {
        let time = self.time_of_day(r.ts_ns);
        let pid = r
            .owner_pid()
            .map_or_else(|| "-".to_owned(), |p| p.to_string());
        let comm = r.owner_comm().map_or_else(|| "-".to_owned(), text_safe);
        let local = endpoint(r.saddr(), r.local_port());
        let remote = endpoint(r.daddr(), r.remote_port());
        let idle = r
            .idle_jiffies()
            .map_or_else(|| "-".to_owned(), |j| seconds(self.ms(j)));
        let mut keepalive = format!(
            "{}/{}/{}",
            seconds(self.ms(r.keepidle)),
            seconds(self.ms(r.keepintvl)),
            r.keepcnt
        );
        if r.user_timeout_ms != 0 {
            let _ = write!(keepalive, " ut={}", seconds(u64::from(r.user_timeout_ms)));
        }
        let detail = match kind {
            Kind::KeepaliveSet => if r.keepalive_enabled() {
                "enabled"
            } else {
                "disabled"
            }
            .to_owned(),
            Kind::ProbeSent => format!("next in {}", seconds(self.ms(r.next))),
            Kind::ProbeAcked => "peer answered".to_owned(),
            Kind::KeepaliveTimeout | Kind::ZeroWindowTimeout => {
                format!("{} ({})", errno_name(r.error), timeout_cause(r))
            }
            Kind::StateChange => format!("{} -> {}", state_name(r.old_state), state_name(r.state)),
            Kind::EventsLost => String::new(),
            Kind::ZeroWindowProbeSent => format!(
                "window 0, backoff {}, next in {}",
                r.backoff,
                seconds(self.ms(r.next))
            ),
            Kind::ZeroWindowOpen => format!("window {}", r.snd_wnd),
        };
        let _ = write!(
            self.line,
            "{time:<15} {:<17} {pid:>7} {comm:<15} {local:<21} {remote:<21} {:<11} {:>6} {idle:>7} {keepalive:<14} {detail}",
            event_name(kind),
            state_name(r.state),
            r.probes,
        );
    }
}

/// Milliseconds as a short duration: `1s`, `2.5s`, `0.25s`.
fn seconds(ms: u64) -> String {
    let (s, frac) = (ms / 1000, ms % 1000);
    if frac == 0 {
        format!("{s}s")
    } else {
        let frac = format!("{frac:03}");
        format!("{s}.{}s", frac.trim_end_matches('0'))
    }
}

fn endpoint(addr: IpAddr, port: u16) -> String {
    match addr {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

/// Kernel strings for a terminal: control characters and invalid UTF-8 escaped.
fn text_safe(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

/// Appends `bytes` as a JSON string. Valid UTF-8 is kept; control characters are
/// escaped; each byte of invalid UTF-8 becomes U+FFFD, so the output is always
/// valid JSON.
pub fn json_string(out: &mut String, bytes: &[u8]) {
    out.push('"');
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if u32::from(c) < 0x20 || c == '\u{7f}' => {
                    let _ = write!(out, "\\u{:04x}", u32::from(c));
                }
                c => out.push(c),
            }
        }
        for _ in chunk.invalid() {
            out.push('\u{fffd}');
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use kalive_common::{AF_INET, FLAG_KEEPALIVE, FLAG_USER_TIMEOUT, IDLE_NONE};

    use super::*;

    const HZ: u32 = 250;

    fn sample(kind: Kind) -> Record {
        let mut r = Record::zeroed(kind);
        r.ts_ns = 1_500_000;
        r.family = AF_INET;
        r.saddr[..4].copy_from_slice(&[10, 0, 0, 1]);
        r.daddr[..4].copy_from_slice(&[10, 0, 0, 2]);
        r.sport = 40000u16.to_be();
        r.dport = 80u16.to_be();
        r.netns = 4_026_531_840;
        r.cookie = 77;
        r.state = 1;
        r.probes = 2;
        r.idle = 500; // 2 s at HZ=250
        r.keepidle = 250;
        r.keepintvl = 250;
        r.keepcnt = 2;
        r.next = 250;
        r.flags = FLAG_KEEPALIVE;
        r
    }

    fn render(format: Format, records: &[Record]) -> String {
        let mut w = Writer::new(
            Vec::new(),
            format,
            WallClock::with_offset(1_000_000_000),
            HZ,
        );
        for r in records {
            w.record(r).expect("write to a Vec");
        }
        String::from_utf8(w.into_inner()).expect("utf-8")
    }

    fn json(record: &Record) -> serde_json::Value {
        serde_json::from_str(&render(Format::Json, &[*record])).expect("valid JSON")
    }

    #[test]
    fn probe_sent_has_every_field_in_order() {
        let mut r = sample(Kind::ProbeSent);
        r.pid = 4242;
        r.comm[..4].copy_from_slice(b"curl");
        assert_eq!(
            render(Format::Json, &[r]),
            "{\"ts\":\"1970-01-01T00:00:01.001500Z\",\"event\":\"probe_sent\",\"pid\":4242,\
             \"comm\":\"curl\",\"owner\":\"kernel\",\"shared\":false,\"family\":\"ipv4\",\"saddr\":\"10.0.0.1\",\"sport\":40000,\
             \"daddr\":\"10.0.0.2\",\"dport\":80,\"netns\":4026531840,\"cookie\":77,\
             \"state\":\"ESTABLISHED\",\"probes\":2,\"idle_ms\":2000,\"keepidle_ms\":1000,\
             \"keepintvl_ms\":1000,\"keepcnt\":2,\"user_timeout_ms\":0,\"next_ms\":1000}\n"
        );
    }

    #[test]
    fn kind_specific_fields() {
        let set = json(&sample(Kind::KeepaliveSet));
        assert_eq!(set["enabled"], true);
        let mut off = sample(Kind::KeepaliveSet);
        off.flags = 0;
        assert_eq!(json(&off)["enabled"], false);

        let mut timeout = sample(Kind::KeepaliveTimeout);
        timeout.error = 110;
        timeout.cause = CAUSE_PROBES_EXHAUSTED;
        let v = json(&timeout);
        assert_eq!(
            (v["error"].as_str(), v["cause"].as_str()),
            (Some("ETIMEDOUT"), Some("probes_exhausted"))
        );
        timeout.flags |= FLAG_USER_TIMEOUT;
        timeout.user_timeout_ms = 2500;
        timeout.cause = CAUSE_USER_TIMEOUT;
        let v = json(&timeout);
        assert_eq!(
            (v["cause"].as_str(), v["user_timeout_ms"].as_u64()),
            (Some("user_timeout"), Some(2500))
        );
        timeout.error = 104;
        timeout.cause = CAUSE_PEER_RESET;
        let v = json(&timeout);
        assert_eq!(
            (v["error"].as_str(), v["cause"].as_str()),
            (Some("ECONNRESET"), Some("peer_reset"))
        );
        timeout.error = 13;
        assert_eq!(json(&timeout)["error"], "EACCES");

        let mut zw = sample(Kind::ZeroWindowProbeSent);
        zw.backoff = 3;
        zw.next = 208;
        let v = json(&zw);
        assert_eq!(
            (
                v["backoff"].as_u64(),
                v["next_ms"].as_u64(),
                v["snd_wnd"].as_u64()
            ),
            (Some(3), Some(832), Some(0))
        );
        let mut zw = sample(Kind::ZeroWindowTimeout);
        zw.error = 110;
        zw.cause = CAUSE_RETRIES_EXHAUSTED;
        assert_eq!(json(&zw)["cause"], "retries_exhausted");
        let mut open = sample(Kind::ZeroWindowOpen);
        open.snd_wnd = 65535;
        assert_eq!(json(&open)["snd_wnd"], 65535);

        let acked = json(&sample(Kind::ProbeAcked));
        assert!(acked.get("next_ms").is_none() && acked.get("error").is_none());
    }

    #[test]
    fn unknown_owner_cookie_and_idle_are_null() {
        let mut r = sample(Kind::KeepaliveSet);
        r.cookie = 0;
        r.idle = IDLE_NONE;
        let v = json(&r);
        for key in ["pid", "comm", "cookie", "idle_ms"] {
            assert!(v[key].is_null(), "{key}: {v}");
        }
        assert_eq!(
            (v["owner"].as_str(), v["shared"].as_bool()),
            (Some("unknown"), Some(false))
        );
    }

    #[test]
    fn owner_says_how_it_was_learned() {
        let mut r = sample(Kind::ProbeSent);
        r.pid = 7;
        r.owner = kalive_common::OWNER_KERNEL;
        assert_eq!(json(&r)["owner"], "kernel");
        r.owner = OWNER_PROCFS;
        r.flags |= kalive_common::FLAG_SHARED;
        let v = json(&r);
        assert_eq!(
            (v["owner"].as_str(), v["shared"].as_bool()),
            (Some("procfs"), Some(true))
        );
    }

    #[test]
    fn events_lost_has_the_common_keys() {
        let mut w = Writer::new(Vec::new(), Format::Json, WallClock::with_offset(0), HZ);
        w.lost(5_000, 12).expect("write");
        let out = String::from_utf8(w.into_inner()).expect("utf-8");
        let v: serde_json::Value = serde_json::from_str(&out).expect("valid JSON");
        let probe = json(&sample(Kind::ProbeAcked));
        for key in probe.as_object().expect("object").keys() {
            assert!(v.get(key).is_some(), "events_lost lacks {key}: {v}");
        }
        assert_eq!(
            (v["event"].as_str(), v["count"].as_u64()),
            (Some("events_lost"), Some(12))
        );
    }

    #[test]
    fn json_strings_are_escaped_and_always_valid() {
        let mut s = String::new();
        json_string(&mut s, b"a \"q\" \\ \x01\n\xc3\xa9\xff");
        assert_eq!(s, "\"a \\\"q\\\" \\\\ \\u0001\\n\u{e9}\u{fffd}\"");
    }

    #[test]
    fn text_has_a_header_then_aligned_lines() {
        let mut timeout = sample(Kind::KeepaliveTimeout);
        timeout.error = 110;
        timeout.cause = CAUSE_PROBES_EXHAUSTED;
        let out = render(Format::Text, &[sample(Kind::ProbeSent), timeout]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert!(
            lines[0].starts_with("TIME") && lines[0].ends_with("DETAIL"),
            "{out}"
        );
        assert!(
            lines[1].contains("10.0.0.1:40000") && lines[1].contains("next in 1s"),
            "{out}"
        );
        assert!(lines[2].contains("ETIMEDOUT (probes_exhausted)"), "{out}");
        let detail = lines[0].find("DETAIL").expect("column");
        assert_eq!(lines[1].find("next in"), Some(detail), "{out}");
        assert_eq!(text_safe(b"a\x1bb\xff"), "a\\x1bb\\xff");
        assert_eq!(
            (seconds(1000), seconds(2500), seconds(250)),
            ("1s".into(), "2.5s".into(), "0.25s".into())
        );
    }
}
