//! End to end: a real TCP connection in a fresh network namespace, and the state
//! transitions kalive streams for it with `--state-changes`
//! (`sock:inet_sock_set_state`).

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{Kalive, Netns, Peer};

fn transitions(records: &[&Value]) -> Vec<(String, String)> {
    records
        .iter()
        .map(|r| {
            (
                r["old_state"].as_str().expect("old_state").to_owned(),
                r["state"].as_str().expect("state").to_owned(),
            )
        })
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|&(a, b)| (a.to_owned(), b.to_owned()))
        .collect()
}

fn connection_lifecycle(addr: &str, family: &str) {
    let ns = Netns::new("state").expect("a network namespace");
    let mut kalive = Kalive::start(&["--state-changes"]);
    let mut peer = Peer::spawn(&ns, &["pair", addr]);
    let client = peer.socket("client");
    let server = peer.socket("server");
    peer.send("close");
    peer.expect("closed");
    assert!(peer.wait().success());

    let closed = |cookie: u64| {
        move |records: &[Value]| {
            records
                .iter()
                .any(|r| r["cookie"].as_u64() == Some(cookie) && r["state"] == "CLOSE")
        }
    };
    kalive.wait_until(Duration::from_secs(10), closed(client.cookie));
    kalive.wait_until(Duration::from_secs(10), closed(server.cookie));

    let client_records = kalive.socket(client.cookie);
    assert!(
        client_records.iter().all(|r| r["event"] == "state_change"),
        "no keepalive on this socket, so only state changes: {}",
        kalive.dump()
    );
    assert_eq!(
        transitions(&client_records),
        pairs(&[
            ("CLOSE", "SYN_SENT"),
            ("SYN_SENT", "ESTABLISHED"),
            ("ESTABLISHED", "FIN_WAIT1"),
            ("FIN_WAIT1", "FIN_WAIT2"),
            ("FIN_WAIT2", "CLOSE"),
        ]),
        "client records:\n{}",
        kalive.dump()
    );
    // The accepted socket is cloned from the listener (LISTEN -> SYN_RECV)
    // before some kernels give it its own cookie: that record has none.
    let clone = kalive
        .records
        .iter()
        .find(|r| {
            // Some kernels (6.1) set its remote end only after this, too.
            r["old_state"] == "LISTEN"
                && r["state"] == "SYN_RECV"
                && r["netns"] == ns.inode().expect("the namespace inode")
        })
        .expect("the clone's state change");
    assert!(clone["cookie"].is_null(), "{clone}");
    assert_eq!(clone["sport"], server.local.port());
    let server_records = kalive.socket(server.cookie);
    assert_eq!(
        transitions(&server_records),
        pairs(&[
            ("SYN_RECV", "ESTABLISHED"),
            ("ESTABLISHED", "CLOSE_WAIT"),
            ("CLOSE_WAIT", "LAST_ACK"),
            ("LAST_ACK", "CLOSE"),
        ]),
        "server records:\n{}",
        kalive.dump()
    );

    // The established client record names both ends, the namespace, and the
    // process that called connect() -- even though the SYN-ACK that completed the
    // handshake was processed in softirq.
    let established = client_records
        .iter()
        .find(|r| r["state"] == "ESTABLISHED")
        .expect("established");
    assert_eq!(established["event"], "state_change");
    assert_eq!(established["family"], family);
    assert_eq!(established["saddr"], client.local.ip().to_string());
    assert_eq!(established["sport"], client.local.port());
    assert_eq!(established["daddr"], client.peer.ip().to_string());
    assert_eq!(established["dport"], client.peer.port());
    assert_eq!(
        established["netns"],
        ns.inode().expect("the namespace inode")
    );
    assert_eq!(established["pid"], client.pid);
    assert_eq!(established["comm"], "tcp_peer");
    let ts = established["ts"].as_str().expect("ts");
    assert!(
        ts.len() == "2026-01-01T00:00:00.000000Z".len() && ts.ends_with('Z'),
        "{ts}"
    );

    assert!(kalive.stop().success(), "stderr:\n{}", kalive.stderr());
}

/// Without `--state-changes` a connection without keepalive produces nothing,
/// while one with keepalive (opened after it) is reported.
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn no_state_changes_by_default() {
    let ns = Netns::new("quiet").expect("a network namespace");
    let mut kalive = Kalive::start(&[]);
    let mut pair = Peer::spawn(&ns, &["pair", "127.0.0.1:0"]);
    let quiet = [pair.socket("client").cookie, pair.socket("server").cookie];
    pair.send("close");
    pair.expect("closed");
    assert!(pair.wait().success());

    let mut server = Peer::spawn(&ns, &["serve", "127.0.0.1:7777"]);
    server.expect("listening");
    let mut client = Peer::spawn(&ns, &["client", "127.0.0.1:7777", "--idle", "5"]);
    let keepalive = client.socket("connected").cookie;
    client.send("go");
    kalive.wait_until(Duration::from_secs(10), |records| {
        records.iter().filter(|r| r["cookie"] == keepalive).count() == 2
    });
    // Records leave the ring buffer in the order they were made: the quiet
    // sockets' would have come first.
    for cookie in quiet {
        assert!(kalive.socket(cookie).is_empty(), "{}", kalive.dump());
    }
    // Only this test's namespace: a connection a previous test left closing
    // (its namespace deleted, its timers still running) may still probe.
    let inode = ns.inode().expect("the namespace inode");
    assert!(
        kalive
            .records
            .iter()
            .filter(|r| r["netns"] == inode)
            .all(|r| r["event"] == "keepalive_set"),
        "{}",
        kalive.dump()
    );
    server.close_stdin();
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn ipv4_connection_lifecycle() {
    connection_lifecycle("127.0.0.1:0", "ipv4");
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn ipv6_connection_lifecycle() {
    connection_lifecycle("[::1]:0", "ipv6");
}
