//! `kalive ls` against real sockets in namespaces of the test's own.

mod support;

use std::process::Command;

use serde_json::Value;
use support::{Family, connect};

/// `kalive ls` as JSON, one record a line.
fn ls(args: &[&str]) -> Vec<Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_kalive"))
        .arg("ls")
        .args(["--format", "json"])
        .args(args)
        .output()
        .expect("kalive ls");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON record"))
        .collect()
}

/// A connection with its own keepalive settings, and the server's accepted
/// end with none: each listed with its effective settings, where they come
/// from, its holder and namespace, and when a dead peer would be found.
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn lists_a_connection_with_its_settings_and_prediction_ipv4() {
    lists_a_connection("lsset4", Family::V4);
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn lists_a_connection_with_its_settings_and_prediction_ipv6() {
    lists_a_connection("lsset6", Family::V6);
}

fn lists_a_connection(tag: &str, family: Family) {
    let _alone = support::alone();
    let mut c = connect(tag, family, &["--idle", "7", "--intvl", "3", "--cnt", "4"]);
    c.client.send("go");
    c.client.expect("configured");
    let port = c.info.local.port().to_string();
    let records = ls(&["-P", &port]);
    let client = records
        .iter()
        .find(|r| r["cookie"] == c.info.cookie)
        .unwrap_or_else(|| panic!("the client's socket in {records:#?}"));
    assert_eq!(client["state"], "ESTABLISHED");
    assert_eq!(client["family"], family.json());
    assert_eq!(client["saddr"], c.info.local.ip().to_string());
    assert_eq!(client["daddr"], c.info.peer.ip().to_string());
    assert_eq!(client["pid"], c.info.pid);
    assert_eq!(client["netns"], c.net.client.inode().expect("inode"));
    assert_eq!(client["keepalive"], true);
    assert_eq!(
        (
            &client["keepidle_ms"],
            &client["keepintvl_ms"],
            &client["keepcnt"]
        ),
        (&Value::from(7000), &Value::from(3000), &Value::from(4))
    );
    for key in ["keepidle", "keepintvl", "keepcnt"] {
        assert_eq!(client["from"][key], "socket", "{client}");
    }
    // Silent from now: the first probe keepidle after the peer was last
    // heard from, then four, three seconds apart.
    let idle = client["idle_ms"].as_u64().expect("idle");
    assert_eq!(client["timer"], "keepalive", "{client}");
    let due = client["timer_ms"].as_u64().expect("when");
    assert!((7000 - idle).abs_diff(due) <= 100, "{client}");
    let dead = client["dead_after_ms"].as_u64().expect("a prediction");
    assert!(idle < 2000, "{client}");
    assert!(
        (7000 + 12_000 - idle).abs_diff(dead) <= 100,
        "{dead} ms for {idle} ms idle: {client}"
    );
    // The server's end: keepalive off, its namespace's defaults.
    let server = records
        .iter()
        .find(|r| r["dport"] == c.info.local.port())
        .unwrap_or_else(|| panic!("the server's socket in {records:#?}"));
    assert_eq!(server["keepalive"], false, "{server}");
    assert_eq!(server["keepidle_ms"], 7_200_000, "{server}");
    assert_eq!(server["from"]["keepidle"], "sysctl", "{server}");
    assert!(server["dead_after_ms"].is_null(), "{server}");
    // A sysctl change in the server's namespace reaches what comes from it
    // there, and nothing that is the socket's own.
    c.net
        .server
        .set_sysctl("net.ipv4.tcp_keepalive_time", "600")
        .expect("sysctl");
    let records = ls(&["-P", &port]);
    let server = records
        .iter()
        .find(|r| r["dport"] == c.info.local.port())
        .expect("the server's socket");
    assert_eq!(server["keepidle_ms"], 600_000, "{server}");
    let client = records
        .iter()
        .find(|r| r["cookie"] == c.info.cookie)
        .expect("the client's socket");
    assert_eq!(client["keepidle_ms"], 7000, "{client}");
    c.server.close_stdin();
}

/// Data in flight to a silent peer: the retransmission timer is pending, with
/// the segments in flight; keepalive does not probe meanwhile.
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn data_in_flight_shows_the_retransmission_timer() {
    let _alone = support::alone();
    let mut c = connect(
        "lsrto",
        Family::V4,
        &["--idle", "7", "--intvl", "3", "--cnt", "4"],
    );
    c.client.send("go");
    c.client.expect("configured");
    c.net.mute_server();
    c.client.send("send");
    c.client.expect("sent true");
    let port = c.info.local.port().to_string();
    let records = ls(&["-P", &port]);
    let client = records
        .iter()
        .find(|r| r["cookie"] == c.info.cookie)
        .unwrap_or_else(|| panic!("the client's socket in {records:#?}"));
    assert_eq!(client["timer"], "retransmit", "{client}");
    assert!(client["unacked"].as_u64() >= Some(1), "{client}");
    // Due within the first RTO (1 s at most with no RTT measured yet, less
    // with one: the handshake was measured).
    assert!(client["timer_ms"].as_u64() <= Some(1000), "{client}");
    c.server.close_stdin();
}

/// The prediction is right: the client's peer goes silent just before
/// `kalive ls`, and the client gets its error `dead_after_ms` after the
/// snapshot, within 1 s. `prepare` runs before the peer is muted; `then`
/// after (data to send into the silence).
fn predicted(
    tag: &str,
    client_args: &[&str],
    prepare: impl FnOnce(&mut support::Connection),
    then: impl FnOnce(&mut support::Connection),
    detected_by: &str,
) {
    let _alone = support::alone();
    let mut c = connect(tag, Family::V4, client_args);
    prepare(&mut c);
    c.client.send("go");
    c.client.expect("configured");
    c.net.mute_server();
    then(&mut c);
    let port = c.info.local.port().to_string();
    let records = ls(&["-P", &port]);
    let client = records
        .iter()
        .find(|r| r["cookie"] == c.info.cookie)
        .unwrap_or_else(|| panic!("the client's socket in {records:#?}"));
    assert_eq!(client["detected_by"], detected_by, "{client}");
    let dead = client["dead_after_ms"].as_i64().expect("a prediction");
    assert_eq!(c.client.expect("recv_error"), "recv_error errno=110");
    let died = jiff::Timestamp::now().as_microsecond();
    // From when kalive read the socket.
    let read = support::ts_micros(client);
    let off_ms = (died - read) / 1000 - dead;
    eprintln!("{tag}: died {off_ms} ms after the predicted {dead} ms");
    assert!(
        off_ms.abs() <= 1000,
        "died {off_ms} ms off the predicted {dead} ms: {client}"
    );
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn the_prediction_is_right_for_keepalive_by_count() {
    predicted(
        "lsdcnt",
        &["--idle", "2", "--intvl", "1", "--cnt", "3"],
        |_| {},
        |_| {},
        "keepalive",
    );
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn the_prediction_is_right_for_keepalive_by_user_timeout() {
    // The count would take 2 + 9 s; the user timeout ends it at the callback
    // after 3.5 s of silence with a probe out (4 s).
    predicted(
        "lsduto",
        &[
            "--idle",
            "2",
            "--intvl",
            "1",
            "--cnt",
            "9",
            "--user-timeout",
            "3500",
        ],
        |_| {},
        |_| {},
        "keepalive_user_timeout",
    );
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn the_prediction_is_right_with_data_in_flight() {
    // Keepalive is on and would take 30 s; with data in flight the
    // retransmission timer decides: tcp_retries2 = 3 gives up after a 3 s
    // budget from the first retransmission, at the firing past it.
    predicted(
        "lsdrto",
        &["--idle", "20", "--intvl", "5", "--cnt", "2"],
        |c| {
            c.net
                .client
                .set_sysctl("net.ipv4.tcp_retries2", "3")
                .expect("sysctl");
        },
        |c| {
            c.client.send("send");
            c.client.expect("sent true");
        },
        "retransmit",
    );
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn the_prediction_is_right_with_data_in_flight_and_a_user_timeout() {
    predicted(
        "lsdrtu",
        &["--idle", "20", "--user-timeout", "2500"],
        |_| {},
        |c| {
            c.client.send("send");
            c.client.expect("sent true");
        },
        "retransmit_user_timeout",
    );
}
