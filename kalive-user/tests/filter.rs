//! End to end: `--pid` and `--port` let through exactly the records of matching
//! sockets, while other keepalive sockets are active, and apply in the kernel.

mod support;

use std::{collections::HashSet, time::Duration};

use serde_json::Value;
use support::{Kalive, Peer, SocketInfo, Topology};

const DEADLINE: Duration = Duration::from_secs(30);

/// A keepalive client (1 s, answered) and its server, on `port`.
struct Pair {
    server: Peer,
    client: Peer,
    info: SocketInfo,
}

fn pair(net: &Topology, port: u16, configure_now: bool) -> Pair {
    let listen = format!("{}:{port}", Topology::SERVER_V4);
    let mut server = Peer::spawn(&net.server, &["serve", &listen]);
    server.expect("listening");
    let mut client = Peer::spawn(
        &net.client,
        &[
            "client", &listen, "--idle", "1", "--intvl", "1", "--cnt", "5",
        ],
    );
    let info = client.socket("connected");
    server.socket("server");
    if configure_now {
        client.send("go");
        client.expect("configured");
    }
    Pair {
        server,
        client,
        info,
    }
}

/// Cookies of the sockets with at least `n` probe records.
fn probed(records: &[Value], n: usize) -> HashSet<u64> {
    let mut counts = std::collections::HashMap::new();
    for r in records {
        if matches!(r["event"].as_str(), Some("probe_sent" | "probe_acked")) {
            *counts.entry(r["cookie"].as_u64().unwrap_or(0)).or_insert(0) += 1;
        }
    }
    counts
        .into_iter()
        .filter(|&(_, c)| c >= n)
        .map(|(k, _)| k)
        .collect()
}

fn cookies(records: &[Value]) -> HashSet<u64> {
    records
        .iter()
        .filter(|r| r["event"] != "events_lost")
        .map(|r| r["cookie"].as_u64().expect("cookie"))
        .collect()
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn pid_and_port_filters() {
    let net = Topology::new("filter");
    let mut a = pair(&net, 17771, false);
    let mut b = pair(&net, 17772, false);
    let mut c = pair(&net, 17773, false);
    let (pa, pc) = (a.info.pid.to_string(), c.info.pid.to_string());

    let mut by_pid = Kalive::start(&["--pid", &pa]);
    let mut by_port = Kalive::start(&["--port", "17772"]);
    let mut by_pids = Kalive::start(&["--pid", &pa, "--pid", &pc]);
    let mut by_ports = Kalive::start(&["-P", "17771", "-P", "17773"]);
    let mut pid_and_port = Kalive::start(&["--pid", &pa, "--port", "17772"]);
    for p in [&mut a, &mut b, &mut c] {
        p.client.send("go");
    }
    let (ka, kb, kc) = (a.info.cookie, b.info.cookie, c.info.cookie);
    assert_eq!(HashSet::from([ka, kb, kc]).len(), 3);

    let cases: [(&mut Kalive, &[u64]); 4] = [
        (&mut by_pid, &[ka]),
        (&mut by_port, &[kb]),
        (&mut by_pids, &[ka, kc]),
        (&mut by_ports, &[ka, kc]),
    ];
    for (kalive, want) in cases {
        kalive.wait_until(DEADLINE, |rs| {
            want.iter().all(|k| probed(rs, 2).contains(k))
        });
        // Only the matching sockets, though all three probed all along.
        let want: HashSet<u64> = want.iter().copied().collect();
        assert_eq!(cookies(&kalive.records), want, "{}", kalive.dump());
        assert!(
            kalive.records.iter().any(|r| r["event"] == "keepalive_set"
                && want.contains(&r["cookie"].as_u64().expect("cookie"))),
            "configuration records pass the filters too"
        );
    }
    // Different flags AND: A's pid with B's port is nobody.
    assert!(pid_and_port.stop().success());
    pid_and_port.drain();
    assert!(pid_and_port.records.is_empty(), "{}", pid_and_port.dump());
    for p in [a, b, c] {
        drop(p.client);
        let mut server = p.server;
        server.close_stdin();
    }
}

/// Records that the filters exclude never reach the ring buffer: a burst that
/// would overflow a 4 KiB ring many times over leaves no trace.
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn filtered_out_records_cost_no_ring_space() {
    let net = Topology::new("cost");
    let mut p = pair(&net, 17774, true);
    let mut kalive = Kalive::start(&["--port", "1", "--ring-size", "4096"]);
    p.client.send("burst 20000");
    assert_eq!(p.client.expect("burst done"), "burst done failed=0");
    assert!(kalive.stop().success());
    kalive.drain();
    assert!(kalive.records.is_empty(), "{}", kalive.dump());
    p.server.close_stdin();
}

/// A socket that existed before kalive, whose owner only /proc can tell: with
/// `--pid` it is reported once its owner is found, and another such socket is
/// not.
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn pid_filter_applies_to_owners_found_later() {
    let net = Topology::new("later");
    let mut mine = pair(&net, 17775, true);
    let mut other = pair(&net, 17776, true);
    let mut kalive = Kalive::start(&["--pid", &mine.info.pid.to_string()]);
    let port = mine.info.local.port();
    kalive.wait_until(DEADLINE, |rs| {
        rs.iter()
            .filter(|r| r["sport"] == port && r["event"] == "probe_acked")
            .count()
            >= 2
    });
    for r in &kalive.records {
        assert_eq!(r["pid"], mine.info.pid, "{r}");
        assert_eq!(r["sport"], port, "{r}");
    }
    for p in [&mut mine, &mut other] {
        p.server.close_stdin();
    }
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn a_pid_that_does_not_exist_yet_is_noted() {
    let pid = (4_000_000..4_194_304)
        .find(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
        .expect("a free pid");
    let mut kalive = Kalive::start(&["--pid", &pid.to_string()]);
    assert!(
        kalive.stderr().contains(&format!("no process {pid} now")),
        "{}",
        kalive.stderr()
    );
    let status = kalive.stop();
    assert!(status.success(), "{status:?}: {}", kalive.stderr());
}
