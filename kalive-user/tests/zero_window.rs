//! End to end: zero-window probing by the persist timer, against a peer that
//! stops reading, with the kernel's `TcpExtTCPWinProbe` as the oracle.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{Family, Kalive, Peer, Stuck, Topology, sh_sysctl, stuck};

const DEADLINE: Duration = Duration::from_secs(30);

fn of<'a>(records: &'a [Value], cookie: u64, event: &str) -> Vec<&'a Value> {
    records
        .iter()
        .filter(|r| r["cookie"] == cookie && r["event"] == event)
        .collect()
}

fn num(r: &Value, key: &str) -> u64 {
    r[key].as_u64().unwrap_or_else(|| panic!("{key} in {r}"))
}

/// Every record of the socket names it and its owner; the zero-window records
/// are returned. None is a keepalive probe or timeout: the two share
/// `icsk_probes_out`. (`TCP_USER_TIMEOUT` is a keepalive setting too, so setting
/// it makes a `keepalive_set`.)
fn zero_window_records<'a>(records: &[&'a Value], s: &Stuck) -> Vec<&'a Value> {
    for r in records {
        assert_eq!(r["pid"], s.info.pid, "{r}");
        assert_eq!(r["comm"], "tcp_peer", "{r}");
        assert_eq!(r["sport"], s.info.local.port(), "{r}");
        assert_eq!(r["dport"], s.info.peer.port(), "{r}");
        let event = r["event"].as_str().expect("event");
        assert!(
            event == "keepalive_set" || event.starts_with("zero_window_"),
            "no keepalive probe or timeout: {r}"
        );
    }
    records
        .iter()
        .copied()
        .filter(|r| r["event"] != "keepalive_set")
        .collect()
}

/// The peer is alive: every probe is answered (with a zero window), the probes
/// back off exponentially, and when the peer reads, probing ends.
fn answered_then_open(tag: &str, family: Family) {
    let mut kalive = Kalive::shared();
    let mut s = stuck(tag, family, &[], |_| {});
    let cookie = s.info.cookie;
    kalive.wait_until(DEADLINE, |rs| {
        of(rs, cookie, "zero_window_probe_sent").len() >= 3
    });
    s.server.send("read");
    s.server.expect("reading");
    kalive.wait_until(DEADLINE, |rs| {
        !of(rs, cookie, "zero_window_open").is_empty()
    });
    let records = zero_window_records(&kalive.socket(cookie), &s);
    let open = records
        .iter()
        .position(|r| r["event"] == "zero_window_open")
        .expect("open");
    let (last, probes) = records[..=open].split_last().expect("records");
    assert!(num(last, "snd_wnd") > 0, "{last}");
    for (i, p) in probes.iter().enumerate() {
        assert_eq!(p["event"], "zero_window_probe_sent", "{p}");
        // Each probe was answered before the next: one out at a time.
        assert_eq!(num(p, "probes"), 1, "{p}");
        assert_eq!(num(p, "snd_wnd"), 0, "{p}");
        assert_eq!(num(p, "backoff"), i as u64 + 1, "{p}");
    }
    for pair in probes.windows(2) {
        // The interval doubles; seen a moment after the timer was armed (the
        // function backends), it may read one jiffy short.
        let (before, after) = (num(pair[0], "next_ms"), num(pair[1], "next_ms"));
        assert!(
            (2 * before).abs_diff(after) <= 10,
            "backoff doubles: {before} -> {after}"
        );
    }
    // Every probe the kernel counted has its record. Not only those before the
    // window opened: while the client sends what it held back, the 4 KiB
    // window can shut again for longer than a probe interval (a reader that
    // falls behind, as on a slow VM), and probing resumes.
    settle(&mut kalive, &s);
}

/// Waits until the kernel's count of window probes has stopped moving and
/// kalive has reported as many (with a deadline), and checks that the two
/// agree exactly.
fn settle(kalive: &mut Kalive, s: &Stuck) {
    let cookie = s.info.cookie;
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let counted = s.net.client.counter("TcpExtTCPWinProbe").expect("nstat") - s.winprobes0;
        kalive.wait_until(DEADLINE, |rs| {
            of(rs, cookie, "zero_window_probe_sent").len() as u64 >= counted
        });
        std::thread::sleep(Duration::from_millis(500));
        let again = s.net.client.counter("TcpExtTCPWinProbe").expect("nstat") - s.winprobes0;
        if again == counted {
            let reported = of(&kalive.records, cookie, "zero_window_probe_sent").len();
            assert_eq!(reported as u64, counted, "records:\n{}", kalive.dump());
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the kernel kept probing: {again} probes"
        );
    }
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn answered_then_open_ipv4() {
    answered_then_open("zwopen4", Family::V4);
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn answered_then_open_ipv6() {
    answered_then_open("zwopen6", Family::V6);
}

/// `TCP_USER_TIMEOUT` counts from the first probe: the peer answers, but keeps
/// its window shut for longer than that.
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn user_timeout_while_probing() {
    let mut kalive = Kalive::shared();
    let mut s = stuck("zwut", Family::V4, &["--user-timeout", "3000"], |_| {});
    let winprobes0 = s.winprobes0;
    let aborts0 = s
        .net
        .client
        .counter("TcpExtTCPAbortOnTimeout")
        .expect("nstat");
    let records = killed_by_user_timeout(&mut kalive, &mut s);
    let ns = &s.net.client;
    let (last, probes) = records.split_last().expect("records");
    assert_eq!(last["user_timeout_ms"], 3000);
    assert!(
        probes
            .iter()
            .all(|p| p["event"] == "zero_window_probe_sent")
    );
    let first = probes.first().expect("a probe");
    let waited = support::ts_micros(last) - support::ts_micros(first);
    assert!(
        waited >= 2_900_000,
        "killed {waited} us after the first probe"
    );
    assert_eq!(
        ns.counter("TcpExtTCPWinProbe").expect("nstat") - winprobes0,
        probes.len() as u64,
        "records:\n{}",
        kalive.dump()
    );
    assert_eq!(
        ns.counter("TcpExtTCPAbortOnTimeout").expect("nstat") - aborts0,
        1
    );
}

/// The write timer that finds its socket locked by the application leaves its
/// work to `tcp_release_cb()`, which runs it in process context, in no timer
/// callback: the persist timer's verdict too. Here kalive sees the write
/// timer's callbacks only until the backoff reaches 2 (its first two probes),
/// as if the later ones had gone that way: the kill is still reported.
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn user_timeout_outside_the_callback() {
    let mut kalive = Kalive::start_with_env(&[], &[("KALIVE_TEST_SKIP_WRITE_CALLBACKS", "2")]);
    let mut s = stuck("zwrel", Family::V4, &["--user-timeout", "3000"], |_| {});
    killed_by_user_timeout(&mut kalive, &mut s);
}

/// The client of `s` fails with ETIMEDOUT; returns its zero-window records,
/// the last of which says `TCP_USER_TIMEOUT` killed it.
fn killed_by_user_timeout(kalive: &mut Kalive, s: &mut Stuck) -> Vec<Value> {
    assert_eq!(s.client.expect("recv_error"), "recv_error errno=110");
    let cookie = s.info.cookie;
    kalive.wait_until(DEADLINE, |rs| {
        !of(rs, cookie, "zero_window_timeout").is_empty()
    });
    let records: Vec<Value> = zero_window_records(&kalive.socket(cookie), s)
        .into_iter()
        .cloned()
        .collect();
    let last = records.last().expect("records");
    assert_eq!(
        last["event"],
        "zero_window_timeout",
        "records:\n{}",
        kalive.dump()
    );
    assert_eq!(last["error"], "ETIMEDOUT");
    assert_eq!(last["cause"], "user_timeout");
    records
}

/// The peer dies while its window is shut: `tcp_retries2` unanswered probes,
/// then the connection is aborted (no RST).
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn dead_peer_exhausts_retries() {
    let mut kalive = Kalive::shared();
    let mut s = stuck("zwdead", Family::V4, &[], |net| {
        sh_sysctl(&net.client, "net.ipv4.tcp_retries2=2");
    });
    let ns = &s.net.client;
    let winprobes0 = s.winprobes0;
    let aborts0 = ns.counter("TcpExtTCPAbortOnTimeout").expect("nstat");
    // Probing has started (the peer advertised its zero window); then it dies.
    let cookie = s.info.cookie;
    kalive.wait_until(DEADLINE, |rs| {
        !of(rs, cookie, "zero_window_probe_sent").is_empty()
    });
    s.net.kill_server();
    assert_eq!(s.client.expect("recv_error"), "recv_error errno=110");
    kalive.wait_until(DEADLINE, |rs| {
        !of(rs, cookie, "zero_window_timeout").is_empty()
    });
    let records = zero_window_records(&kalive.socket(cookie), &s);
    let summary: Vec<(&str, u64)> = records
        .iter()
        .map(|r| (r["event"].as_str().expect("event"), num(r, "probes")))
        .collect();
    // Probes answered before the peer died went out one at a time; then two
    // went unanswered, and at the next turn the timer gave up.
    let (answered, dead) = summary.split_at(summary.len() - 3);
    assert!(!answered.is_empty(), "records:\n{}", kalive.dump());
    assert!(
        answered.iter().all(|&r| r == ("zero_window_probe_sent", 1)),
        "{summary:?}"
    );
    let want = [
        ("zero_window_probe_sent", 1),
        ("zero_window_probe_sent", 2),
        ("zero_window_timeout", 2),
    ];
    assert_eq!(dead, want, "records:\n{}", kalive.dump());
    let last = records.last().expect("records");
    assert_eq!(last["error"], "ETIMEDOUT");
    assert_eq!(last["cause"], "retries_exhausted");
    let sent = records.len() as u64 - 1;
    assert_eq!(
        ns.counter("TcpExtTCPWinProbe").expect("nstat") - winprobes0,
        sent,
        "records:\n{}",
        kalive.dump()
    );
    assert_eq!(
        ns.counter("TcpExtTCPAbortOnTimeout").expect("nstat") - aborts0,
        1
    );
}

/// Zero-window probes count in the same kernel field as keepalive probes
/// (`icsk_probes_out`), and the keepalive timer keeps firing (without probing)
/// while the window is shut. Keepalive probes answered first, then a shut
/// window and a peer gone silent: the zero-window probes must not be taken for
/// keepalive probes whose callbacks went unseen (`probe_sent` with `late`).
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn zero_window_probes_are_not_keepalive_probes() {
    let mut kalive = Kalive::shared();
    let net = Topology::new("zwka");
    sh_sysctl(&net.server, "net.ipv4.tcp_invalid_ratelimit=0");
    let listen = Family::V4.listen_addr();
    let mut server = Peer::spawn(&net.server, &["serve", &listen, "--rcvbuf", "4096"]);
    server.expect("listening");
    let target = Family::V4.server_addr();
    let mut client = Peer::spawn(
        &net.client,
        &[
            "client", &target, "--sndbuf", "4096", "--idle", "1", "--intvl", "1", "--cnt", "60",
        ],
    );
    let info = client.socket("connected");
    server.socket("server");
    client.send("go");
    client.expect("configured");
    let cookie = info.cookie;
    // A keepalive probe answered: kalive knows none is out.
    kalive.wait_until(DEADLINE, |rs| !of(rs, cookie, "probe_acked").is_empty());
    client.send("fill");
    assert!(
        client.expect("filled").ends_with("until=11"),
        "send until EAGAIN"
    );
    kalive.wait_until(DEADLINE, |rs| {
        !of(rs, cookie, "zero_window_probe_sent").is_empty()
    });
    // The peer goes silent: zero-window probes pile up in the count while the
    // keepalive timer fires every second.
    let killed = jiff::Timestamp::now().as_microsecond();
    net.kill_server();
    kalive.wait_until(DEADLINE, |rs| {
        of(rs, cookie, "zero_window_probe_sent")
            .iter()
            .any(|r| support::ts_micros(r) > killed && num(r, "probes") >= 1)
    });
    // Keepalive callbacks with a probe unanswered for longer than the idle
    // time (1 s), where the count could be misread.
    std::thread::sleep(Duration::from_millis(3500));
    kalive.wait_until(DEADLINE, |_| true);
    let late: Vec<_> = of(&kalive.records, cookie, "probe_sent")
        .into_iter()
        .filter(|r| r["late"] == true)
        .collect();
    assert!(
        late.is_empty(),
        "zero-window probes taken for keepalive probes: {late:?}"
    );
    server.close_stdin();
}
