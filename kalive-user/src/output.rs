//! Writing records: one JSON object per line, or aligned text columns.
//!
//! Stdout carries records only. Each record is formatted into a reused buffer,
//! so the hot path does not allocate.

use std::{
    fmt::Write as _,
    io::{self, Write},
};

use kalive_common::{Kind, Record};

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

pub struct Writer<W: Write> {
    out: W,
    format: Format,
    clock: WallClock,
    line: String,
    wrote_header: bool,
}

impl<W: Write> Writer<W> {
    pub const fn new(out: W, format: Format, clock: WallClock) -> Self {
        Self {
            out,
            format,
            clock,
            line: String::new(),
            wrote_header: false,
        }
    }

    /// Formats one record into the output buffer.
    ///
    /// # Errors
    /// When writing to the output fails (for example a closed pipe).
    pub fn record(&mut self, record: &Record) -> io::Result<()> {
        let Some(kind) = record.kind() else {
            return Ok(());
        };
        self.line.clear();
        match self.format {
            Format::Json => self.json(kind, record),
            Format::Text => {
                if !self.wrote_header {
                    self.wrote_header = true;
                    self.text_header();
                }
                self.text(kind, record);
            }
        }
        self.line.push('\n');
        self.out.write_all(self.line.as_bytes())
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

    fn json(&mut self, kind: Kind, r: &Record) {
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
            ",\"family\":\"{}\",\"saddr\":\"{}\",\"sport\":{},\"daddr\":\"{}\",\"dport\":{},\"netns\":{},\"cookie\":{},\"state\":\"{}\"",
            if r.is_ipv6() { "ipv6" } else { "ipv4" },
            r.saddr(),
            r.local_port(),
            r.daddr(),
            r.remote_port(),
            r.netns,
            r.cookie,
            state_name(r.state),
        );
        if kind == Kind::StateChange {
            let _ = write!(l, ",\"old_state\":\"{}\"", state_name(r.old_state));
        }
        l.push('}');
    }

    fn text_header(&mut self) {
        let _ = writeln!(
            self.line,
            "{:<15} {:<16} {:>7} {:<16} {:<47} {:<47} STATE",
            "TIME", "EVENT", "PID", "COMM", "LOCAL", "REMOTE"
        );
    }

    fn text(&mut self, kind: Kind, r: &Record) {
        let mut ts = String::new();
        write_rfc3339(&mut ts, self.clock.unix_ns(r.ts_ns));
        // Time of day is enough on a terminal: HH:MM:SS.micros
        let time = ts.get(11..26).unwrap_or(&ts);
        let pid = r
            .owner_pid()
            .map_or_else(|| "-".to_owned(), |p| p.to_string());
        let comm = r.owner_comm().map_or_else(|| "-".to_owned(), text_safe);
        let local = endpoint(r.saddr(), r.local_port());
        let remote = endpoint(r.daddr(), r.remote_port());
        let state = match kind {
            Kind::StateChange => format!("{}->{}", state_name(r.old_state), state_name(r.state)),
        };
        let _ = write!(
            self.line,
            "{time:<15} {:<16} {pid:>7} {comm:<16} {local:<47} {remote:<47} {state}",
            event_name(kind)
        );
    }
}

fn endpoint(addr: std::net::IpAddr, port: u16) -> String {
    match addr {
        std::net::IpAddr::V4(a) => format!("{a}:{port}"),
        std::net::IpAddr::V6(a) => format!("[{a}]:{port}"),
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
    use super::*;

    fn sample() -> Record {
        let mut r = Record::zeroed(Kind::StateChange);
        r.ts_ns = 1_500_000;
        r.family = kalive_common::AF_INET;
        r.saddr[..4].copy_from_slice(&[10, 0, 0, 1]);
        r.daddr[..4].copy_from_slice(&[10, 0, 0, 2]);
        r.sport = 40000u16.to_be();
        r.dport = 80u16.to_be();
        r.netns = 4_026_531_840;
        r.cookie = 77;
        r.old_state = 2;
        r.state = 1;
        r
    }

    fn render(format: Format, records: &[Record]) -> String {
        let mut w = Writer::new(Vec::new(), format, WallClock::with_offset(1_000_000_000));
        for r in records {
            w.record(r).expect("write to a Vec");
        }
        String::from_utf8(w.into_inner()).expect("utf-8")
    }

    #[test]
    fn json_record_has_every_field() {
        let mut r = sample();
        r.pid = 4242;
        r.comm[..4].copy_from_slice(b"curl");
        assert_eq!(
            render(Format::Json, &[r]),
            "{\"ts\":\"1970-01-01T00:00:01.001500Z\",\"event\":\"state_change\",\"pid\":4242,\
             \"comm\":\"curl\",\"family\":\"ipv4\",\"saddr\":\"10.0.0.1\",\"sport\":40000,\
             \"daddr\":\"10.0.0.2\",\"dport\":80,\"netns\":4026531840,\"cookie\":77,\
             \"state\":\"ESTABLISHED\",\"old_state\":\"SYN_SENT\"}\n"
        );
    }

    #[test]
    fn unknown_owner_is_null_not_the_running_task() {
        let out = render(Format::Json, &[sample()]);
        assert!(out.contains("\"pid\":null,\"comm\":null"), "{out}");
    }

    #[test]
    fn json_strings_are_escaped_and_always_valid() {
        let mut s = String::new();
        json_string(&mut s, b"a \"q\" \\ \x01\n\xc3\xa9\xff");
        assert_eq!(s, "\"a \\\"q\\\" \\\\ \\u0001\\n\u{e9}\u{fffd}\"");
    }

    #[test]
    fn text_has_a_header_then_one_line_per_record() {
        let out = render(Format::Text, &[sample(), sample()]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert!(lines[0].starts_with("TIME"), "{out}");
        assert!(lines[1].contains("10.0.0.1:40000") && lines[1].contains("SYN_SENT->ESTABLISHED"));
        assert_eq!(text_safe(b"a\x1bb\xff"), "a\\x1bb\\xff");
    }
}
