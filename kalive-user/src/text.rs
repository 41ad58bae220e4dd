//! The text format: aligned columns under a header, one line per event, for
//! a terminal.

use std::{fmt::Write as _, net::IpAddr};

use kalive_common::event::{AckSeen, Event, What};

/// The width of the EVENT column: the longest event name
/// (`zero_window_probe_sent`).
const EVENT: usize = 22;

/// The text format's columns.
pub static HEADER: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "{:<15} {:<EVENT$} {:>7} {:<15} {:<21} {:<21} {:<11} {:>6} {:>7} {:<14} DETAIL",
        "TIME", "EVENT", "PID", "COMM", "LOCAL", "REMOTE", "STATE", "PROBES", "IDLE", "KEEPALIVE"
    )
});

/// One event as a line of text under [`HEADER`].
pub fn line(event: &Event) -> String {
    // RFC 3339 with microseconds; HH:MM:SS.micros is enough on a terminal.
    let ts = format!("{:.6}", event.ts);
    let time = ts.get(11..26).unwrap_or(&ts);
    let name = event.kind().name();
    let detail = detail(event);
    let Some(s) = &event.socket else {
        return format!(
            "{time:<15} {name:<EVENT$} {:>7} {:<15} {:<21} {:<21} {:<11} {:>6} {:>7} {:<14} {detail}",
            "-", "-", "-", "-", "-", "-", "-", "-"
        );
    };
    let pid = s.pid.map_or_else(|| "-".to_owned(), |p| p.to_string());
    let comm = s
        .comm
        .as_deref()
        .map_or_else(|| "-".to_owned(), |c| text_safe(c.as_bytes()));
    let local = endpoint(s.saddr, s.sport);
    let remote = endpoint(s.daddr, s.dport);
    let idle = s.idle_ms.map_or_else(|| "-".to_owned(), seconds);
    let mut keepalive = format!(
        "{}/{}/{}",
        seconds(s.keepidle_ms),
        seconds(s.keepintvl_ms),
        s.keepcnt
    );
    if s.user_timeout_ms != 0 {
        let _ = write!(keepalive, " ut={}", seconds(u64::from(s.user_timeout_ms)));
    }
    format!(
        "{time:<15} {name:<EVENT$} {pid:>7} {comm:<15} {local:<21} {remote:<21} {:<11} {:>6} {idle:>7} {keepalive:<14} {detail}",
        s.state.name(),
        s.probes,
    )
}

/// The text format's last column: what only this kind says.
fn detail(event: &Event) -> String {
    match &event.what {
        What::KeepaliveSet { enabled: true } => "enabled".to_owned(),
        What::KeepaliveSet { enabled: false } => "disabled".to_owned(),
        What::ProbeSent {
            next_ms,
            late: false,
            sent: true,
        } => format!("next in {}", seconds(*next_ms)),
        What::ProbeSent {
            next_ms,
            late: true,
            ..
        } => {
            format!("next in {}, found late", seconds(*next_ms))
        }
        What::ProbeSent {
            next_ms,
            sent: false,
            ..
        } => format!(
            "not sent (local congestion), again in {}",
            seconds(*next_ms)
        ),
        What::ProbeAcked {
            seen_at: AckSeen::Segment | AckSeen::Unknown,
        } => "peer answered".to_owned(),
        What::ProbeAcked { seen_at } => format!("peer answered (seen at {})", seen_at.name()),
        What::KeepaliveTimeout {
            error,
            cause,
            dead_ms,
        }
        | What::ZeroWindowTimeout {
            error,
            cause,
            dead_ms,
        } => format!("{error} ({}){}", cause.name(), silent(*dead_ms)),
        What::RetransmitTimeout {
            error,
            cause,
            retries,
            limit,
            max_retries,
            dead_ms,
        }
        | What::SynTimeout {
            error,
            cause,
            retries,
            limit,
            max_retries,
            dead_ms,
        } => {
            let limit = match max_retries {
                Some(n) => format!("{}={n}", limit.name()),
                None => limit.name().to_owned(),
            };
            format!(
                "{error} ({}: {retries} retries, {limit}){}",
                cause.name(),
                silent(*dead_ms)
            )
        }
        What::KeepaliveDeferred { unacked, next_ms } => format!(
            "no probe: {unacked} unacked, retransmission decides; next in {}",
            seconds(*next_ms)
        ),
        What::StateChange { old_state } => {
            let new = event.socket.as_ref().map_or("-", |s| s.state.name());
            format!("{} -> {new}", old_state.name())
        }
        What::EventsLost { count } => format!("{count} records lost"),
        What::ZeroWindowProbeSent {
            backoff, next_ms, ..
        } => format!("window 0, backoff {backoff}, next in {}", seconds(*next_ms)),
        What::ZeroWindowOpen { snd_wnd } => format!("window {snd_wnd}"),
    }
}

/// How long a killed connection's peer had been silent, if known.
fn silent(dead_ms: Option<u64>) -> String {
    dead_ms.map_or_else(String::new, |ms| format!(", dead {}", seconds(ms)))
}

/// Milliseconds as a short duration: `1s`, `2.5s`, `0.25s`.
pub fn seconds(ms: u64) -> String {
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
pub fn text_safe(bytes: &[u8]) -> String {
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

#[cfg(test)]
mod tests {
    use kalive_common::Kind;

    #[test]
    fn every_event_name_fits_its_column() {
        let longest = Kind::ALL.iter().map(|k| k.name().len()).max();
        assert_eq!(longest, Some(super::EVENT));
    }
}
