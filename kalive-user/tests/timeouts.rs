//! End to end: connections the retransmission timer ends, with data in
//! flight or with a SYN out, while keepalive is on and cannot help. Each
//! record is checked against what the test did, the kernel's counters
//! (`nstat` in the client's namespace), what the application saw, and what
//! `kalive ls` predicted just before.

mod support;

use std::{process::Command, time::Duration};

use serde_json::Value;
use support::{Family, Kalive, Netns, Peer, sh};

/// Long enough for a timeout of a few seconds on a loaded machine.
const DEADLINE: Duration = Duration::from_secs(50);

/// Under emulation (`KALIVE_TEST_SLOW`, set by the VM) kalive ls takes
/// seconds to load its iterator, longer than some connections here live: the
/// limits there are one retry or twice the time longer, so that the listing
/// comes before the kill the tests compare it with.
/// The `kalive ls` record of the socket `cookie`, whose local port is `port`.
fn ls_socket(port: u16, cookie: u64) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_kalive"))
        .args(["ls", "--format", "json", "-P", &port.to_string()])
        .output()
        .expect("kalive ls");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::str::from_utf8(&out.stdout)
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("a JSON record"))
        .find(|r| r["cookie"] == cookie)
        .unwrap_or_else(|| {
            panic!(
                "socket {cookie} in {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
}

fn number(record: &Value, key: &str) -> i64 {
    record[key]
        .as_i64()
        .unwrap_or_else(|| panic!("{key} in {record}"))
}

/// The kill's `dead_ms` is what `kalive ls` predicted: the silence it saw
/// plus the time it said detection would take, within 1 s.
fn assert_predicted(kill: &Value, ls: &Value, silence_before_ls: i64) {
    let predicted = silence_before_ls + number(ls, "dead_after_ms");
    let dead = number(kill, "dead_ms");
    eprintln!("dead after {dead} ms, predicted {predicted} ms");
    assert!(
        (dead - predicted).abs() <= 1000,
        "dead_ms {dead}, predicted {predicted}:\nls: {ls}\nkill: {kill}"
    );
}

/// The records of `cookie` once its `kind` record is in, with that one.
fn until_killed<'a>(kalive: &'a mut Kalive, cookie: u64, kind: &str) -> (Vec<&'a Value>, Value) {
    kalive.wait_until(DEADLINE, |rs| {
        rs.iter()
            .any(|r| r["cookie"] == cookie && r["event"] == kind)
    });
    let records = kalive.socket(cookie);
    let kills: Vec<&Value> = records
        .iter()
        .copied()
        .filter(|r| r["event"] == kind)
        .collect();
    assert_eq!(kills.len(), 1, "one {kind}: {records:#?}");
    let kill = kills[0].clone();
    (records, kill)
}

/// Data in flight to a silent peer, keepalive on with a 1 s idle: the
/// keepalive timer defers (no probe) and the retransmission timer ends the
/// connection, with `tcp_retries2` or `TCP_USER_TIMEOUT`.
/// Returns the kill, the listing, and how many times the retransmission
/// timer fired (`TcpExtTCPTimeouts`).
fn data_in_flight(tag: &str, extra: &[&str], retries2: &str) -> (Value, Value, u64) {
    let mut kalive = Kalive::shared();
    let mut args = vec![
        "--idle",
        "1",
        "--intvl",
        "1",
        "--cnt",
        "9",
        "--before-connect",
    ];
    args.extend_from_slice(extra);
    // The budget off the firings (see `raise_rto_min`).
    let net = support::Topology::new(tag);
    net.raise_rto_min();
    let mut c = support::connect_on(net, Family::V4, &args, None);
    c.client.expect("configured");
    let ns = &c.net.client;
    ns.set_sysctl("net.ipv4.tcp_retries2", retries2)
        .expect("sysctl");
    let (aborts0, timeouts0) = (
        ns.counter("TcpExtTCPAbortOnTimeout").expect("nstat"),
        ns.counter("TcpExtTCPTimeouts").expect("nstat"),
    );
    c.net.mute_server();
    c.client.send("send");
    c.client.expect("sent true");
    // On a slow machine (the VM) the connection may have been idle for
    // keepidle already, and probed: before the data, which is allowed.
    let (sent, probes0) = (
        jiff::Timestamp::now().as_microsecond(),
        ns.counter("TcpExtTCPKeepAlive").expect("nstat"),
    );
    let ls = ls_socket(c.info.local.port(), c.info.cookie);
    assert_eq!(ls["unacked"], 1, "data in flight when listed: {ls}");
    assert_eq!(
        c.client.expect("recv_error"),
        "recv_error errno=110",
        "the application sees ETIMEDOUT"
    );
    let (records, kill) = until_killed(&mut kalive, c.info.cookie, "retransmit_timeout");

    // Keepalive was on and could not help: it deferred, once, and did not
    // probe while the data was in flight.
    assert!(
        records
            .iter()
            .all(|r| r["event"] != "probe_sent" || support::ts_micros(r) < sent),
        "{records:#?}"
    );
    let deferred: Vec<&&Value> = records
        .iter()
        .filter(|r| r["event"] == "keepalive_deferred")
        .collect();
    assert_eq!(deferred.len(), 1, "{records:#?}");
    assert_eq!(deferred[0]["unacked"], 1, "{}", deferred[0]);
    assert_eq!(deferred[0]["next_ms"], 1000, "{}", deferred[0]);
    assert!(number(deferred[0], "idle_ms") >= 1000, "{}", deferred[0]);
    assert_eq!(
        ns.counter("TcpExtTCPKeepAlive").expect("nstat") - probes0,
        0,
        "no keepalive probe with data in flight"
    );
    assert_eq!(
        ns.counter("TcpExtTCPAbortOnTimeout").expect("nstat") - aborts0,
        1,
        "one abort on timeout, as one record"
    );

    // The record names the socket, its owner and its keepalive settings.
    assert_eq!(kill["pid"], c.info.pid, "{kill}");
    assert_eq!(kill["comm"], "tcp_peer", "{kill}");
    assert_eq!(kill["sport"], c.info.local.port(), "{kill}");
    assert_eq!(kill["state"], "CLOSE", "{kill}");
    assert_eq!(kill["error"], "ETIMEDOUT", "{kill}");
    assert_eq!(
        (kill["keepidle_ms"].as_u64(), kill["keepcnt"].as_u64()),
        (Some(1000), Some(9)),
        "{kill}"
    );
    assert_eq!(kill["dead_ms"], kill["idle_ms"], "{kill}");
    assert_predicted(&kill, &ls, number(&ls, "idle_ms"));
    let timeouts = ns.counter("TcpExtTCPTimeouts").expect("nstat") - timeouts0;
    c.server.close_stdin();
    (kill, ls, timeouts)
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn retries_exhausted_while_keepalive_waits() {
    let retries2 = if support::slow() { "4" } else { "3" };
    let (kill, ls, timeouts) = data_in_flight("rtoret", &[], retries2);
    assert_eq!(ls["detected_by"], "retransmit", "{ls}");
    assert_eq!(kill["cause"], "retries_exhausted", "{kill}");
    // tcp_retries2 is a time budget: that of 3 retransmissions doubling from
    // 200 ms (3 s; 6.2 s for 4), passed at the 4th firing (the 5th) with the
    // test's 304 ms RTO. Every firing of the timer retransmits but the last,
    // which gives up.
    assert_eq!(kill["retries"], timeouts - 1, "{kill}");
    assert!(number(&kill, "retries") >= 3, "{kill}");
    assert_eq!(kill["max_retries"].to_string(), retries2, "{kill}");
    assert_eq!(kill["limit"], "tcp_retries2", "{kill}");
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn user_timeout_while_keepalive_waits() {
    // tcp_retries2 would take 12.6 s; the user timeout ends it after 4 s
    // (time enough for kalive ls to list it first in the VM, whose emulated
    // CPU takes seconds to load its iterator).
    let user_timeout = if support::slow() { "8000" } else { "4000" };
    let (kill, ls, timeouts) = data_in_flight("rtouto", &["--user-timeout", user_timeout], "5");
    assert_eq!(ls["detected_by"], "retransmit_user_timeout", "{ls}");
    assert_eq!(kill["cause"], "user_timeout", "{kill}");
    assert_eq!(kill["limit"], "TCP_USER_TIMEOUT", "{kill}");
    assert!(kill["max_retries"].is_null(), "{kill}");
    assert_eq!(kill["user_timeout_ms"].to_string(), user_timeout, "{kill}");
    assert_eq!(kill["retries"], timeouts - 1, "{kill}");
}

/// A client and a server on two networks, and a router between them.
struct Routed {
    client: Netns,
    router: Netns,
    server: Netns,
}

impl Routed {
    const SERVER: &str = "10.79.2.1";

    fn new(tag: &str) -> Self {
        let client = Netns::new(&format!("{tag}-c")).expect("a network namespace");
        let router = Netns::new(&format!("{tag}-r")).expect("a network namespace");
        let server = Netns::new(&format!("{tag}-s")).expect("a network namespace");
        for (ns, net, host) in [(&client, 1, 1), (&server, 2, 1)] {
            sh(
                "ip",
                &[
                    "link",
                    "add",
                    "veth0",
                    "netns",
                    ns.name(),
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &format!("veth{net}"),
                    "netns",
                    router.name(),
                ],
            );
            let ip = |args: &[&str]| ns.ip(args).expect("ip");
            ip(&[
                "addr",
                "add",
                &format!("10.79.{net}.{host}/24"),
                "dev",
                "veth0",
            ]);
            ip(&["link", "set", "veth0", "up"]);
            ip(&[
                "route",
                "add",
                "default",
                "via",
                &format!("10.79.{net}.254"),
            ]);
            let veth = format!("veth{net}");
            router
                .ip(&["addr", "add", &format!("10.79.{net}.254/24"), "dev", &veth])
                .expect("ip");
            router.ip(&["link", "set", &veth, "up"]).expect("ip");
        }
        router
            .set_sysctl("net.ipv4.ip_forward", "1")
            .expect("sysctl");
        // An ICMP error for every retransmission, none held back.
        router
            .set_sysctl("net.ipv4.icmp_ratelimit", "0")
            .expect("sysctl");
        Self {
            client,
            router,
            server,
        }
    }

    /// The router answers what the client sends the server with ICMP host
    /// unreachable: the server's host is gone, as far as the router knows.
    fn lose_the_server(&self) {
        let nft = |args: &[&str]| self.router.nft(args).expect("nft");
        nft(&["add", "table", "ip", "kalive_test"]);
        nft(&[
            "add",
            "chain",
            "ip",
            "kalive_test",
            "forward",
            "{ type filter hook forward priority 0; policy accept; }",
        ]);
        nft(&[
            "add",
            "rule",
            "ip",
            "kalive_test",
            "forward",
            "ip",
            "daddr",
            Self::SERVER,
            "reject",
            "with",
            "icmp",
            "type",
            "host-unreachable",
        ]);
    }
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn icmp_host_unreachable_is_the_error_the_application_sees() {
    let mut kalive = Kalive::shared();
    let net = Routed::new("rtoicmp");
    // A 6.2 s budget (12.6 s under emulation): time enough for kalive ls.
    net.client
        .set_sysctl(
            "net.ipv4.tcp_retries2",
            if support::slow() { "5" } else { "4" },
        )
        .expect("sysctl");
    let mut server = Peer::spawn(&net.server, &["serve", &format!("{}:7777", Routed::SERVER)]);
    server.expect("listening");
    let mut client = Peer::spawn(
        &net.client,
        &[
            "client",
            &format!("{}:7777", Routed::SERVER),
            "--idle",
            "1",
            "--intvl",
            "1",
            "--cnt",
            "9",
            "--before-connect",
        ],
    );
    let info = client.socket("connected");
    assert_eq!(info.local.ip().to_string(), "10.79.1.1");
    server.socket("server");
    client.expect("configured");
    let aborts0 = net
        .client
        .counter("TcpExtTCPAbortOnTimeout")
        .expect("nstat");
    net.lose_the_server();
    client.send("send");
    client.expect("sent true");
    // Listed once the router's first answer is in (to the first
    // retransmission, 200 ms after the data): from then on the listing knows
    // the host is unreachable.
    let deadline = std::time::Instant::now() + Duration::from_secs(6);
    let ls = loop {
        let ls = ls_socket(info.local.port(), info.cookie);
        if ls["soft_error"] == "EHOSTUNREACH" {
            break ls;
        }
        assert!(ls["soft_error"].is_null(), "{ls}");
        assert!(std::time::Instant::now() < deadline, "no ICMP error: {ls}");
    };
    assert_eq!(
        client.expect("recv_error"),
        "recv_error errno=113",
        "the application sees EHOSTUNREACH"
    );
    let (_, kill) = until_killed(&mut kalive, info.cookie, "retransmit_timeout");
    assert_eq!(kill["error"], "EHOSTUNREACH", "{kill}");
    assert_eq!(kill["cause"], "retries_exhausted", "{kill}");
    assert_eq!(kill["limit"], "tcp_retries2", "{kill}");
    assert_eq!(kill["pid"], info.pid, "{kill}");
    assert_eq!(
        net.client
            .counter("TcpExtTCPAbortOnTimeout")
            .expect("nstat")
            - aborts0,
        1
    );
    // The ICMP errors revert the backoff (RFC 6069): retransmissions stay
    // one RTO apart, which the prediction follows (the same budget without
    // them would end at 12.6 s, after fewer).
    assert!(number(&kill, "retries") > 5, "{kill}");
    assert_predicted(&kill, &ls, number(&ls, "idle_ms"));
    server.close_stdin();
    drop(net.router);
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn a_connect_that_gets_no_answer() {
    let mut kalive = Kalive::shared();
    let net = support::Topology::new("syncnt");
    // The server's answers (a RST: nothing listens) never arrive.
    net.kill_server();
    let aborts0 = net
        .client
        .counter("TcpExtTCPAbortOnTimeout")
        .expect("nstat");
    let mut client = Peer::spawn(
        &net.client,
        &["syn", &Family::V4.server_addr(), "--syncnt", "2"],
    );
    let info = client.socket("connecting");
    let connecting = jiff::Timestamp::now();
    let ls = ls_socket(info.local.port(), info.cookie);
    assert_eq!(ls["state"], "SYN_SENT", "{ls}");
    assert_eq!(ls["detected_by"], "syn", "{ls}");
    assert_eq!(
        client.expect("connect_error"),
        "connect_error errno=110",
        "connect() fails with ETIMEDOUT"
    );
    let (records, kill) = until_killed(&mut kalive, info.cookie, "syn_timeout");
    assert_eq!(kill["error"], "ETIMEDOUT", "{kill}");
    assert_eq!(kill["cause"], "retries_exhausted", "{kill}");
    assert_eq!(kill["limit"], "TCP_SYNCNT", "{kill}");
    assert_eq!(kill["max_retries"], 2, "{kill}");
    // Two SYN retransmissions at least (more from 6.5: tcp_syn_linear_timeouts
    // adds retransmissions 1 s apart within the same time budget).
    assert!(number(&kill, "retries") >= 2, "{kill}");
    assert!(kill["idle_ms"].is_null(), "no peer was ever heard: {kill}");
    assert_eq!(kill["pid"], info.pid, "{kill}");
    assert!(
        !records.iter().any(|r| r["event"] == "retransmit_timeout"),
        "{records:#?}"
    );
    assert_eq!(
        net.client
            .counter("TcpExtTCPAbortOnTimeout")
            .expect("nstat")
            - aborts0,
        1
    );
    // Silent since the first SYN: from before the listing to the kill.
    let listed = support::ts_micros(&ls);
    let before_ls = (listed - connecting.as_microsecond()) / 1000;
    assert_predicted(&kill, &ls, before_ls.max(0));
}

/// A connection its process closed with data unacknowledged: the kernel
/// keeps it (an orphan, in `FIN_WAIT1`) and gives up by
/// `tcp_orphan_retries`, with no process to tell.
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn an_orphan_gives_up_by_tcp_orphan_retries() {
    let mut kalive = Kalive::shared();
    let net = support::Topology::new("rtoorph");
    net.client
        .set_sysctl("net.ipv4.tcp_orphan_retries", "2")
        .expect("sysctl");
    let mut server = Peer::spawn(&net.server, &["serve", &Family::V4.listen_addr()]);
    server.expect("listening");
    let mut client = Peer::spawn(&net.client, &["orphan", &Family::V4.server_addr()]);
    let info = client.socket("connected");
    server.socket("server");
    let aborts0 = net
        .client
        .counter("TcpExtTCPAbortOnTimeout")
        .expect("nstat");
    net.mute_server();
    client.send("go");
    client.expect("closed");
    let (_, kill) = until_killed(&mut kalive, info.cookie, "retransmit_timeout");
    assert_eq!(kill["error"], "ETIMEDOUT", "{kill}");
    assert_eq!(kill["cause"], "retries_exhausted", "{kill}");
    assert_eq!(kill["limit"], "tcp_orphan_retries", "{kill}");
    assert_eq!(kill["max_retries"], 2, "{kill}");
    assert!(number(&kill, "retries") >= 2, "{kill}");
    assert_eq!(
        net.client
            .counter("TcpExtTCPAbortOnTimeout")
            .expect("nstat")
            - aborts0,
        1
    );
    client.close_stdin();
    server.close_stdin();
}
