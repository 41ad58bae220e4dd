//! Writing records: one JSON object per line, or aligned text columns.
//!
//! Stdout carries records only. Each record is serialised into a reused
//! buffer and written with one call. The schema is documented in
//! `docs/events.md`.

use std::io::{self, Write};

use kalive_common::event::Event;

use crate::text;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One JSON object per line.
    Json,
    /// Aligned columns with a header.
    Text,
    /// No records on stdout (with --metrics: an agent).
    None,
}

pub struct Writer<W: Write> {
    out: W,
    format: Format,
    line: Vec<u8>,
    wrote_header: bool,
}

impl<W: Write> Writer<W> {
    pub const fn new(out: W, format: Format) -> Self {
        Self {
            out,
            format,
            line: Vec::new(),
            wrote_header: false,
        }
    }

    /// Writes one event: serde's JSON, or a line of text.
    ///
    /// # Errors
    /// When writing to the output fails (for example a closed pipe).
    pub fn event(&mut self, event: &Event) -> io::Result<()> {
        self.line.clear();
        match self.format {
            Format::None => return Ok(()),
            Format::Json => {
                serde_json::to_writer(&mut self.line, event).map_err(io::Error::from)?;
            }
            Format::Text => {
                if !self.wrote_header {
                    self.wrote_header = true;
                    self.line.extend_from_slice(text::HEADER.as_bytes());
                    self.line.push(b'\n');
                }
                self.line.extend_from_slice(text::line(event).as_bytes());
            }
        }
        self.line.push(b'\n');
        self.out.write_all(&self.line)
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
}

#[cfg(test)]
mod tests {
    use kalive_common::{
        AF_INET, CAUSE_PEER_RESET, CAUSE_PROBES_EXHAUSTED, CAUSE_RETRIES_EXHAUSTED,
        CAUSE_USER_TIMEOUT, FLAG_KEEPALIVE, FLAG_USER_TIMEOUT, IDLE_NONE, Kind, OWNER_PROCFS,
        Record,
    };

    use super::*;
    use crate::{clock::WallClock, event::Decoder};

    const HZ: u32 = 250;

    fn decoder() -> Decoder {
        Decoder::new(WallClock::with_offset(1_000_000_000), HZ)
    }

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
        let mut w = Writer::new(Vec::new(), format);
        for r in records {
            w.event(&decoder().event(r).expect("a known kind"))
                .expect("write to a Vec");
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
            "{\"ts\":\"1970-01-01T00:00:01.001500Z\",\"event\":\"probe_sent\",\"next_ms\":1000,\
             \"late\":false,\"sent\":true,\"pid\":4242,\"comm\":\"curl\",\"owner\":\"kernel\",\"shared\":false,\"cgroup\":null,\
             \"container_id\":null,\"pod_uid\":null,\"family\":\"ipv4\",\
             \"saddr\":\"10.0.0.1\",\"sport\":40000,\"daddr\":\"10.0.0.2\",\"dport\":80,\
             \"netns\":4026531840,\"cookie\":77,\"state\":\"ESTABLISHED\",\"probes\":2,\
             \"idle_ms\":2000,\"keepidle_ms\":1000,\"keepintvl_ms\":1000,\"keepcnt\":2,\
             \"user_timeout_ms\":0}\n"
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

        let mut late = sample(Kind::ProbeSent);
        late.flags |= kalive_common::FLAG_LATE;
        assert_eq!(json(&late)["late"], true);
        let mut unsent = sample(Kind::ProbeSent);
        unsent.flags |= kalive_common::FLAG_UNSENT;
        unsent.next = 125;
        let v = json(&unsent);
        assert_eq!(
            (v["sent"].as_bool(), v["next_ms"].as_u64()),
            (Some(false), Some(500))
        );
        assert!(
            render(Format::Text, &[unsent]).contains("not sent (local congestion), again in 0.5s")
        );

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
    fn retransmission_kills_say_which_limit_and_how_long_the_peer_was_silent() {
        let mut rto = sample(Kind::RetransmitTimeout);
        rto.error = 113;
        rto.cause = CAUSE_RETRIES_EXHAUSTED;
        rto.retries = 3;
        rto.limit = kalive_common::LIMIT_RETRIES2;
        rto.max_retries = 3;
        rto.dead_ms = 3012;
        let v = json(&rto);
        assert_eq!(
            (
                v["error"].as_str(),
                v["cause"].as_str(),
                v["retries"].as_u64(),
                v["limit"].as_str(),
                v["max_retries"].as_u64(),
                v["dead_ms"].as_u64()
            ),
            (
                Some("EHOSTUNREACH"),
                Some("retries_exhausted"),
                Some(3),
                Some("tcp_retries2"),
                Some(3),
                Some(3012)
            )
        );
        assert!(
            render(Format::Text, &[rto]).contains(
                "EHOSTUNREACH (retries_exhausted: 3 retries, tcp_retries2=3), dead 3.012s"
            ),
            "{}",
            render(Format::Text, &[rto])
        );
        let mut syn = sample(Kind::SynTimeout);
        syn.cause = CAUSE_USER_TIMEOUT;
        syn.limit = kalive_common::LIMIT_USER_TIMEOUT;
        let v = json(&syn);
        // No count for a time limit, and an unknown silence: null.
        assert!(v["max_retries"].is_null() && v["dead_ms"].is_null(), "{v}");
        assert_eq!(v["limit"], "TCP_USER_TIMEOUT");

        let mut deferred = sample(Kind::KeepaliveDeferred);
        deferred.unacked = 2;
        deferred.next = 250;
        let v = json(&deferred);
        assert_eq!(
            (v["unacked"].as_u64(), v["next_ms"].as_u64()),
            (Some(2), Some(1000))
        );
        assert!(render(Format::Text, &[deferred]).contains("no probe: 2 unacked"));

        let mut keepalive = sample(Kind::KeepaliveTimeout);
        keepalive.dead_ms = 4000;
        assert_eq!(json(&keepalive)["dead_ms"], 4000);
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
        let mut w = Writer::new(Vec::new(), Format::Json);
        w.event(&decoder().lost(5_000, 12)).expect("write");
        let out = String::from_utf8(w.into_inner()).expect("utf-8");
        let v: serde_json::Value = serde_json::from_str(&out).expect("valid JSON");
        let probe = json(&sample(Kind::ProbeAcked));
        // probe_acked's own key (seen_at) aside.
        for key in probe.as_object().expect("object").keys() {
            assert!(
                v.get(key).is_some() || key == "seen_at",
                "events_lost lacks {key}: {v}"
            );
        }
        assert_eq!(
            (v["event"].as_str(), v["count"].as_u64()),
            (Some("events_lost"), Some(12))
        );
    }

    #[test]
    fn json_strings_are_escaped_and_always_valid() {
        let mut r = sample(Kind::ProbeSent);
        r.pid = 7;
        r.comm[..13].copy_from_slice(b"a \"q\" \\ \x01\n\xc3\xa9\xff");
        let out = render(Format::Json, &[r]);
        assert!(
            out.contains(",\"comm\":\"a \\\"q\\\" \\\\ \\u0001\\n\u{e9}\u{fffd}\","),
            "{out}"
        );
        assert!(
            serde_json::from_str::<serde_json::Value>(&out).is_ok(),
            "{out}"
        );
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
        assert_eq!(text::text_safe(b"a\x1bb\xff"), "a\\x1bb\\xff");
        assert_eq!(
            (text::seconds(1000), text::seconds(2500), text::seconds(250)),
            ("1s".into(), "2.5s".into(), "0.25s".into())
        );
    }

    #[test]
    fn text_names_both_states_of_a_change_and_counts_losses() {
        let mut change = sample(Kind::StateChange);
        change.old_state = 2;
        let out = render(Format::Text, &[change]);
        assert!(out.contains("SYN_SENT -> ESTABLISHED"), "{out}");
        let mut w = Writer::new(Vec::new(), Format::Text);
        w.event(&decoder().lost(0, 5)).expect("write");
        let out = String::from_utf8(w.into_inner()).expect("utf-8");
        assert!(
            out.lines()
                .nth(1)
                .is_some_and(|l| l.ends_with(" 5 records lost")),
            "{out}"
        );
    }
}
