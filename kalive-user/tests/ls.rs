//! `kalive ls` against real sockets in namespaces of the test's own. The
//! tests run side by side: `kalive ls` attaches nothing (its iterator runs
//! only when read), and each test finds its own sockets by cookie, pid or a
//! port of its own.

mod support;

use std::process::Command;

use serde_json::Value;
use support::{Family, connect};

/// `kalive ls` as JSON, one record a line.
fn ls(args: &[&str]) -> Vec<Value> {
    ls_via(Via::Bpf, args)
}

/// How `kalive ls` reads the sockets.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Via {
    /// Its BPF iterator.
    Bpf,
    /// `--no-bpf`: the socket diagnostics and `getsockopt()`.
    Diag,
}

/// One `kalive ls` at a time in this binary: the tests run side by side, and
/// several loading BPF at once on two cores took seconds each, long enough
/// for a connection to die before its snapshot.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn ls_via(via: Via, args: &[&str]) -> Vec<Value> {
    let _one = one_at_a_time();
    ls_now(via, args)
}

/// [`ls_via`] for a caller that holds [`one_at_a_time`].
fn ls_now(via: Via, args: &[&str]) -> Vec<Value> {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kalive"));
    command.arg("ls").args(["--format", "json"]);
    if via == Via::Diag {
        command.arg("--no-bpf");
    }
    let out = command.args(args).output().expect("kalive ls");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    records(&out.stdout)
}

fn records(stdout: &[u8]) -> Vec<Value> {
    std::str::from_utf8(stdout)
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
    lists_a_connection("lsset4", Family::V4, Via::Bpf);
}

/// The same without BPF (as without root): the same settings, holder and
/// prediction.
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn lists_a_connection_with_its_settings_and_prediction_without_bpf() {
    lists_a_connection("lssetd", Family::V4, Via::Diag);
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn lists_a_connection_with_its_settings_and_prediction_ipv6() {
    lists_a_connection("lsset6", Family::V6, Via::Bpf);
}

fn lists_a_connection(tag: &str, family: Family, via: Via) {
    // Under emulation (`KALIVE_TEST_SLOW`, set by the VM) setting up and
    // listing took over 6 s: a longer idle there keeps the listing before
    // the first probe.
    let idle_s: u64 = if support::slow() { 14 } else { 7 };
    let idle_arg = idle_s.to_string();
    let keepidle_ms = idle_s * 1000;
    let mut c = connect(
        tag,
        family,
        &["--idle", &idle_arg, "--intvl", "3", "--cnt", "4"],
    );
    c.client.send("go");
    c.client.expect("configured");
    let port = c.info.local.port().to_string();
    let records = ls_via(via, &["-P", &port]);
    let client = records
        .iter()
        .find(|r| r["cookie"] == c.info.cookie)
        .unwrap_or_else(|| panic!("the client's socket in {records:#?}"));
    assert_eq!(client["state"], "ESTABLISHED");
    assert_eq!(client["family"], family.json());
    assert_eq!(client["saddr"], c.info.local.ip().to_string());
    assert_eq!(client["daddr"], c.info.peer.ip().to_string());
    assert_eq!(client["pid"], c.info.pid);
    assert_eq!(
        (&client["owner"], &client["shared"]),
        (&Value::from("procfs"), &Value::from(false))
    );
    assert_eq!(client["netns"], c.net.client.inode().expect("inode"));
    assert_eq!(client["keepalive"], true);
    assert_eq!(
        (
            &client["keepidle_ms"],
            &client["keepintvl_ms"],
            &client["keepcnt"]
        ),
        (
            &Value::from(keepidle_ms),
            &Value::from(3000),
            &Value::from(4)
        )
    );
    for key in ["keepidle", "keepintvl", "keepcnt"] {
        assert_eq!(client["from"][key], "socket", "{client}");
    }
    // Silent from now: the first probe keepidle after the peer was last
    // heard from, then four, three seconds apart.
    let idle = client["idle_ms"].as_u64().expect("idle");
    assert_eq!(client["timer"], "keepalive", "{client}");
    let due = client["timer_ms"].as_u64().expect("when");
    assert!((keepidle_ms - idle).abs_diff(due) <= 100, "{client}");
    let dead = client["dead_after_ms"].as_u64().expect("a prediction");
    // Read before the first probe (under load, kalive ls can take seconds).
    assert!(idle < keepidle_ms - 1000, "{client}");
    assert!(
        (keepidle_ms + 12_000 - idle).abs_diff(dead) <= 100,
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
    let records = ls_via(via, &["-P", &port]);
    let server = records
        .iter()
        .find(|r| r["dport"] == c.info.local.port())
        .expect("the server's socket");
    assert_eq!(server["keepidle_ms"], 600_000, "{server}");
    let client = records
        .iter()
        .find(|r| r["cookie"] == c.info.cookie)
        .expect("the client's socket");
    assert_eq!(client["keepidle_ms"], keepidle_ms, "{client}");
    c.server.close_stdin();
}

/// Data in flight to a silent peer: the retransmission timer is pending, with
/// the segments in flight; keepalive does not probe meanwhile.
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn data_in_flight_shows_the_retransmission_timer() {
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
    // The first retransmissions (200 ms, then 400 ms later).
    std::thread::sleep(std::time::Duration::from_millis(900));
    let port = c.info.local.port().to_string();
    let records = ls(&["-P", &port]);
    let client = records
        .iter()
        .find(|r| r["cookie"] == c.info.cookie)
        .unwrap_or_else(|| panic!("the client's socket in {records:#?}"));
    assert_eq!(client["timer"], "retransmit", "{client}");
    assert!(client["unacked"].as_u64() >= Some(1), "{client}");
    // Retransmissions, for the retransmission timer.
    assert!(client["probes"].as_u64() >= Some(1), "{client}");
    // Due within the current RTO: the first (200 ms here, the handshake's
    // round trip measured; 1 s at most without one), doubled at each
    // retransmission.
    let retransmissions = client["probes"].as_u64().expect("probes");
    assert!(
        client["timer_ms"].as_u64() <= Some(1000 << retransmissions.min(7)),
        "{client}"
    );
    c.server.close_stdin();
}

/// The keepalive idle (s) of the prediction tests: long enough that a
/// connection is listed before it dies, which under emulation (the VM) can
/// take seconds of setting up and starting kalive ls.
fn idle() -> &'static str {
    if support::slow() { "10" } else { "4" }
}

/// `tcp_retries2` of the prediction tests with data in flight: the kill
/// comes about 6 s after the first retransmission (3), or 12 s (4) under
/// emulation, for the same reason.
fn retries2() -> &'static str {
    if support::slow() { "4" } else { "3" }
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
    via: Via,
) {
    // A 300 ms RTO floor keeps the retransmission budgets off the firings
    // (see `raise_rto_min`); keepalive does not depend on it.
    let net = support::Topology::new(tag);
    net.raise_rto_min();
    let mut c = support::connect_on(net, Family::V4, client_args, None);
    prepare(&mut c);
    c.client.send("go");
    c.client.expect("configured");
    // Muted just before the snapshot: no other test's kalive ls in between.
    let one = one_at_a_time();
    c.net.mute_server();
    then(&mut c);
    let port = c.info.local.port().to_string();
    let records = ls_now(via, &["-P", &port]);
    drop(one);
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
        &["--idle", idle(), "--intvl", "1", "--cnt", "3"],
        |_| {},
        |_| {},
        "keepalive",
        Via::Bpf,
    );
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn the_prediction_is_right_for_keepalive_by_user_timeout() {
    // The count would take idle + 9 s; the user timeout ends it at the
    // callback after idle + 1.5 s of silence with a probe out (idle + 2 s).
    predicted(
        "lsduto",
        &[
            "--idle",
            idle(),
            "--intvl",
            "1",
            "--cnt",
            "9",
            "--user-timeout",
            if support::slow() { "11500" } else { "5500" },
        ],
        |_| {},
        |_| {},
        "keepalive_user_timeout",
        Via::Bpf,
    );
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn the_prediction_is_right_with_data_in_flight() {
    // Keepalive is on and would take 30 s; with data in flight the
    // retransmission timer decides: tcp_retries2 = 3 gives up after a 3 s
    // budget from the first retransmission, at the firing past it (the 4th,
    // 4.3 s after the first with the tests' 304 ms RTO).
    predicted(
        "lsdrto",
        &["--idle", "20", "--intvl", "5", "--cnt", "2"],
        |c| {
            c.net
                .client
                .set_sysctl("net.ipv4.tcp_retries2", retries2())
                .expect("sysctl");
        },
        |c| {
            c.client.send("send");
            c.client.expect("sent true");
        },
        "retransmit",
        Via::Bpf,
    );
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn the_prediction_is_right_with_data_in_flight_and_a_user_timeout() {
    predicted(
        "lsdrtu",
        &[
            "--idle",
            "20",
            "--user-timeout",
            if support::slow() { "10000" } else { "5000" },
        ],
        |_| {},
        |c| {
            c.client.send("send");
            c.client.expect("sent true");
        },
        "retransmit_user_timeout",
        Via::Bpf,
    );
}

/// The record of `cookie` among `records`.
fn find(records: &[Value], cookie: u64) -> &Value {
    records
        .iter()
        .find(|r| r["cookie"] == cookie)
        .unwrap_or_else(|| panic!("socket {cookie} in {records:#?}"))
}

/// A connection whose client is configured (after `go`).
fn configured(tag: &str, family: Family, args: &[&str]) -> support::Connection {
    let mut c = connect(tag, family, args);
    c.client.send("go");
    c.client.expect("configured");
    c
}

/// `--idle-budget`: a middlebox forgetting flows idle for 10 s would forget
/// the connection whose first probe comes after 30 s of silence and the one
/// without keepalive, not the one probing after 5 s.
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn the_idle_budget_marks_what_a_middlebox_would_forget() {
    let over = configured("lsbov", Family::V4, &["--idle", "30"]);
    let under = configured("lsbun", Family::V4, &["--idle", "5"]);
    let off = configured("lsbof", Family::V4, &["--no-keepalive"]);
    let pids: Vec<String> = [&over, &under, &off]
        .iter()
        .map(|c| c.info.pid.to_string())
        .collect();
    let mut args = vec!["--idle-budget", "10"];
    for pid in &pids {
        args.extend(["-p", pid.as_str()]);
    }
    let records = ls(&args);
    assert_eq!(records.len(), 3, "the three clients only: {records:#?}");
    assert_eq!(find(&records, over.info.cookie)["over_budget"], true);
    assert_eq!(find(&records, under.info.cookie)["over_budget"], false);
    let without = find(&records, off.info.cookie);
    assert_eq!(
        (&without["keepalive"], &without["over_budget"]),
        (&Value::from(false), &Value::from(true))
    );
    assert!(without["dead_after_ms"].is_null(), "never: {without}");
    // Text: the worst protected first, and the summary.
    let out = Command::new(env!("CARGO_BIN_EXE_kalive"))
        .args(["ls", "--format", "text"])
        .args(&args)
        .output()
        .expect("kalive ls");
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "{text}");
    assert!(
        lines[1].contains(" off ") && lines[1].contains("never"),
        "{text}"
    );
    assert_eq!(
        lines[4],
        "3 connections: 1 without keepalive, 1 would take over an hour to find a dead peer \
         (or never would), 2 over the 10 s idle budget"
    );
}

/// Accepted connections inherit the listener's keepalive settings; with
/// `--listening` the listener is listed too, its settings its own.
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn accepted_connections_inherit_the_listeners_settings() {
    let net = support::Topology::new("lsinh");
    let family = Family::V4;
    let mut server = support::Peer::spawn(
        &net.server,
        &[
            "serve",
            &family.listen_addr(),
            "--idle",
            "9",
            "--intvl",
            "4",
            "--cnt",
            "3",
        ],
    );
    server.expect("listening");
    let mut client = support::Peer::spawn(
        &net.client,
        &["client", &family.server_addr(), "--no-keepalive"],
    );
    let info = client.socket("connected");
    server.socket("server");
    let server_ns = net.server.inode().expect("inode");
    let records: Vec<Value> = ls(&["--listening", "-P", "7777"])
        .into_iter()
        .filter(|r| r["netns"] == server_ns)
        .collect();
    let listener = records
        .iter()
        .find(|r| r["state"] == "LISTEN")
        .unwrap_or_else(|| panic!("the listener in {records:#?}"));
    let accepted = records
        .iter()
        .find(|r| r["state"] == "ESTABLISHED" && r["dport"] == info.local.port())
        .unwrap_or_else(|| panic!("the accepted socket in {records:#?}"));
    for r in [listener, accepted] {
        assert_eq!(r["keepalive"], true, "{r}");
        assert_eq!(
            (&r["keepidle_ms"], &r["keepintvl_ms"], &r["keepcnt"]),
            (&Value::from(9000), &Value::from(4000), &Value::from(3)),
            "{r}"
        );
        assert_eq!(r["from"]["keepidle"], "socket", "{r}");
    }
    assert!(listener["dead_after_ms"].is_null(), "{listener}");
    assert!(accepted["dead_after_ms"].is_u64(), "{accepted}");
    // Without --listening, no listener.
    assert!(
        ls(&["-P", "7777"]).iter().all(|r| r["state"] != "LISTEN"),
        "a listener without --listening"
    );
    client.close_stdin();
}

/// A socket two processes hold (a fork after connect) lists both; in two
/// namespaces, each connection with its own; `-p` keeps one process's.
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn shared_sockets_and_namespaces_and_filters() {
    let mut shared = connect("lsshr", Family::V4, &["--idle", "8", "--fork", "share"]);
    shared.client.send("go");
    shared.client.expect("configured");
    let _child = support::forked_child(&mut shared.client);
    let other = configured("lsoth", Family::V6, &["--idle", "6"]);
    let records = ls(&["-P", "7777"]);
    let s = find(&records, shared.info.cookie);
    let holders: Vec<u64> = s["holders"]
        .as_array()
        .expect("holders")
        .iter()
        .map(|h| h["pid"].as_u64().expect("pid"))
        .collect();
    assert_eq!(holders.len(), 2, "parent and child: {s}");
    assert!(holders.contains(&u64::from(shared.info.pid)), "{s}");
    assert_eq!(s["pid"], holders[0], "the first holder: {s}");
    assert_eq!(
        (&s["owner"], &s["shared"]),
        (&Value::from("procfs"), &Value::from(true)),
        "{s}"
    );
    assert_eq!(s["netns"], shared.net.client.inode().expect("inode"));
    let o = find(&records, other.info.cookie);
    assert_eq!(o["netns"], other.net.client.inode().expect("inode"));
    assert_eq!(
        (&o["family"], &o["keepidle_ms"]),
        (&Value::from("ipv6"), &Value::from(6000))
    );
    assert_ne!(s["netns"], o["netns"]);
    // A filter by process: only that process's socket.
    let pid = other.info.pid.to_string();
    let mine = ls(&["-p", &pid]);
    assert_eq!(mine.len(), 1, "{mine:#?}");
    assert_eq!(mine[0]["cookie"], other.info.cookie);
}

/// kalive in a PID namespace of its own (a container without the host's
/// PIDs): the holders it names are numbered as it sees them, as `/proc`
/// does there, not as the kernel numbers them from the host.
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn in_a_pid_namespace_of_its_own_the_holders_are_its_pids() {
    use std::{
        io::{BufRead as _, BufReader, Write as _},
        process::Stdio,
    };
    let _one = one_at_a_time();
    let out = std::env::temp_dir().join(format!("kalive-ls-pidns-{}", std::process::id()));
    // The shell is the namespace's first process: when it exits, the
    // kernel ends the pair with it. The pair reads the test's stdin (a
    // background job's is /dev/null otherwise).
    let script = r#"exec 3<&0
KALIVE_TEST_PEER=1 "$0" pair 127.0.0.1:0 <&3 >"$1" &
while ! grep -q server "$1" 2>/dev/null; do sleep 0.05; done
cat "$1"
"$2" ls --format json"#;
    let mut shell = Command::new("unshare")
        .args(["-p", "-f", "--mount-proc", "sh", "-c", script])
        .arg(std::env::current_exe().expect("the test binary"))
        .arg(&out)
        .arg(env!("CARGO_BIN_EXE_kalive"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("unshare");
    let mut lines = BufReader::new(shell.stdout.take().expect("piped")).lines();
    let client = lines.next().expect("the pair's client").expect("a line");
    let field = |name: &str| {
        client
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(name))
            .unwrap_or_else(|| panic!("{name} in {client:?}"))
            .to_owned()
    };
    let (cookie, pid) = (field("cookie="), field("pid="));
    let rest: Vec<String> = lines.map(|l| l.expect("a line")).collect();
    writeln!(shell.stdin.as_mut().expect("piped"), "close").ok();
    let done = shell.wait_with_output().expect("unshare");
    let _ = std::fs::remove_file(&out);
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let records: Vec<Value> = rest
        .iter()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("a JSON record"))
        .collect();
    let cookie: u64 = cookie.parse().expect("a cookie");
    let r = find(&records, cookie);
    // The namespace's own numbering: the shell is 1, the pair a small number.
    assert_eq!(r["pid"].to_string(), pid, "{r}");
    assert!(pid.parse::<u32>().expect("a pid") < 100, "{pid}");
    assert_eq!(r["comm"], "tcp_peer", "{r}");
    assert_eq!(r["holders"][0]["pid"].to_string(), pid, "{r}");
}

/// An IPv6 socket talking to an IPv4 peer: listed as IPv6 with the mapped
/// addresses, as the stream names it.
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn mapped_ipv4_is_listed_as_ipv6() {
    let c = configured("lsmap", Family::Mapped, &["--idle", "5"]);
    let records = ls(&["-p", &c.info.pid.to_string()]);
    let r = find(&records, c.info.cookie);
    assert_eq!(r["family"], "ipv6", "{r}");
    assert_eq!(
        r["daddr"],
        format!("::ffff:{}", support::Topology::SERVER_V4),
        "{r}"
    );
    assert_eq!(r["keepidle_ms"], 5000, "{r}");
}

/// The settings are what `getsockopt()` returns in the process that set
/// them (this test's own), and the socket is the one `ss -tie` shows (its
/// cookie and inode), with the same timer.
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn settings_match_getsockopt_and_ss() {
    settings_match(Via::Bpf);
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn settings_match_getsockopt_and_ss_without_bpf() {
    settings_match(Via::Diag);
}

fn settings_match(via: Via) {
    use std::{
        net::{TcpListener, TcpStream},
        os::fd::AsRawFd as _,
    };
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let stream = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
    let _accepted = listener.accept().expect("accept");
    let fd = stream.as_raw_fd();
    kalive_testkit::sockopt::Keepalive {
        idle: Some(11),
        intvl: Some(6),
        cnt: Some(5),
        user_timeout: Some(4321),
    }
    .apply(fd, true)
    .expect("keepalive");
    let get = |level, name| {
        let mut value: libc::c_int = 0;
        let mut len = libc::socklen_t::try_from(size_of::<libc::c_int>()).expect("small");
        // SAFETY: an int-sized option into an int.
        let rc =
            unsafe { libc::getsockopt(fd, level, name, (&raw mut value).cast(), &raw mut len) };
        assert_eq!(rc, 0, "getsockopt");
        u64::try_from(value).expect("not negative")
    };
    let port = stream.local_addr().expect("local").port();
    let records = ls_via(
        via,
        &[
            "-p",
            &std::process::id().to_string(),
            "-P",
            &port.to_string(),
        ],
    );
    let cookie = support::peer::cookie(&stream).expect("SO_COOKIE");
    let r = records
        .iter()
        .find(|r| r["cookie"] == cookie)
        .unwrap_or_else(|| panic!("this test's socket in {records:#?}"));
    assert_eq!(
        r["keepalive"],
        get(libc::SOL_SOCKET, libc::SO_KEEPALIVE) == 1
    );
    assert_eq!(
        r["keepidle_ms"],
        get(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE) * 1000
    );
    assert_eq!(
        r["keepintvl_ms"],
        get(libc::IPPROTO_TCP, libc::TCP_KEEPINTVL) * 1000
    );
    assert_eq!(r["keepcnt"], get(libc::IPPROTO_TCP, libc::TCP_KEEPCNT));
    assert_eq!(
        r["user_timeout_ms"],
        get(libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT)
    );
    assert_eq!(
        r["comm"],
        std::fs::read_to_string("/proc/self/comm")
            .expect("comm")
            .trim()
    );
    // ss: the same socket (cookie, as sk:HEX) and the keepalive timer.
    let ss = kalive_testkit::output(Command::new("ss").args([
        "-tien",
        "state",
        "established",
        "sport",
        "=",
        &format!(":{port}"),
    ]))
    .expect("ss");
    let cookie = format!("sk:{cookie:x}");
    assert!(ss.contains(&cookie), "{cookie} in {ss}");
    assert!(ss.contains("timer:(keepalive,"), "{ss}");
    assert_eq!(r["timer"], "keepalive", "{r}");
}

/// A socket its process closed with data unacknowledged (an orphan) is still
/// listed: no holder, what is missing said, and the orphan's retransmission
/// rule (`tcp_orphan_retries`) as the one that ends it.
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn an_orphan_says_what_is_missing() {
    let mut c = configured("lsorph", Family::V4, &["--idle", "30"]);
    c.net.mute_server();
    c.client.send("send");
    c.client.expect("sent true");
    let port = c.info.local.port();
    drop(c.client);
    // By cookie: every test's client is 10.77.0.1, in a namespace of its own,
    // and two can have the same port.
    let records = ls(&["-P", &port.to_string()]);
    let r = records
        .iter()
        .find(|r| r["cookie"] == c.info.cookie)
        .unwrap_or_else(|| panic!("the orphan in {records:#?}"));
    assert_eq!(r["state"], "FIN_WAIT1", "{r}");
    assert_eq!(r["owner"], "unknown", "{r}");
    assert_eq!(r["orphan"], true, "{r}");
    assert!(
        r["pid"].is_null() && r["holders"] == Value::Array(vec![]),
        "{r}"
    );
    assert_eq!(r["missing"], serde_json::json!(["pid", "comm"]), "{r}");
    assert_eq!(r["detected_by"], "orphan_retransmit", "{r}");
    c.server.close_stdin();
}

/// A connection closed first on this side waits in `TIME_WAIT`: no process's
/// socket and no peer to lose (the kernel keeps only a small
/// `inet_timewait_sock`), so not listed, though listed while it was open.
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn time_wait_is_not_listed() {
    use std::net::{TcpListener, TcpStream};
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let stream = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
    let (accepted, _) = listener.accept().expect("accept");
    let port = stream.local_addr().expect("local").port().to_string();
    let open = ls(&["-P", &port]);
    assert_eq!(open.len(), 2, "both ends: {open:#?}");
    drop(stream);
    drop(accepted);
    // The FINs cross (on another CPU, under load, later): until ss sees it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        // Either end: another test's kalive ls may hold a duplicate of the
        // client's descriptor (for its cookie) as it is closed, and the
        // close then takes effect after the server's.
        let ss = kalive_testkit::output(
            Command::new("ss").args(["-tan", &format!("( sport = :{port} or dport = :{port} )")]),
        )
        .expect("ss");
        if ss.contains("TIME-WAIT") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no TIME-WAIT: {ss}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let records = ls(&["-P", &port]);
    assert!(
        records.iter().all(|r| r["state"] != "TIME_WAIT"),
        "{records:#?}"
    );
}

/// Without BPF the prediction is made from the socket diagnostics: the
/// keepalive timer and `tcp_info` ...
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn the_prediction_without_bpf_is_right_for_keepalive() {
    predicted(
        "lsdcntd",
        &["--idle", idle(), "--intvl", "1", "--cnt", "3"],
        |_| {},
        |_| {},
        "keepalive",
        Via::Diag,
    );
}

/// ... and with data in flight, where the retransmission episode's start is
/// estimated from the RTO's backoff.
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn the_prediction_without_bpf_is_right_with_data_in_flight() {
    predicted(
        "lsdrtod",
        &["--idle", "20", "--intvl", "5", "--cnt", "2"],
        |c| {
            c.net
                .client
                .set_sysctl("net.ipv4.tcp_retries2", retries2())
                .expect("sysctl");
        },
        |c| {
            c.client.send("send");
            c.client.expect("sent true");
            // Two retransmissions already (0.3 s and 0.9 s after the send):
            // the estimate has a past to walk.
            std::thread::sleep(std::time::Duration::from_millis(1200));
        },
        "retransmit",
        Via::Diag,
    );
}

/// Without root: kalive ls reads what it may (the sockets of its namespace,
/// the settings of its user's), lists them, and says on stderr what it
/// could not see: no BPF, and the settings of another user's socket.
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn without_root_it_lists_what_it_can_and_says_what_it_cannot() {
    use std::net::TcpListener;
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port().to_string();
    let mut client = support::Peer::spawn_as_nobody(&[
        "client",
        &format!("127.0.0.1:{port}"),
        "--idle",
        "9",
        "--intvl",
        "4",
        "--cnt",
        "3",
    ]);
    let info = client.socket("connected");
    let (accepted, _) = listener.accept().expect("accept");
    client.send("go");
    client.expect("configured");
    let out = support::as_nobody(Command::new(env!("CARGO_BIN_EXE_kalive")))
        .args(["ls", "--format", "json", "-P", &port])
        .output()
        .expect("kalive ls as nobody");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let records = records(&out.stdout);
    let mine = find(&records, info.cookie);
    assert_eq!(mine["pid"], info.pid, "{mine}");
    assert_eq!(
        (
            &mine["keepidle_ms"],
            &mine["keepintvl_ms"],
            &mine["keepcnt"]
        ),
        (&Value::from(9000), &Value::from(4000), &Value::from(3)),
        "{mine}"
    );
    assert!(mine["dead_after_ms"].is_u64(), "{mine}");
    // The accepted end is this test's (root's): listed, its settings not.
    let theirs = records
        .iter()
        .find(|r| r["dport"] == info.local.port())
        .unwrap_or_else(|| panic!("the accepted end in {records:#?}"));
    assert!(theirs["keepalive"].is_null(), "{theirs}");
    assert!(theirs["dead_after_ms"].is_null(), "{theirs}");
    let missing = theirs["missing"].as_array().expect("missing");
    for field in ["keepalive", "keepidle_ms", "dead_after_ms"] {
        assert!(missing.contains(&Value::from(field)), "{field}: {theirs}");
    }
    assert!(
        stderr.contains("missing CAP_BPF and CAP_PERFMON")
            && stderr.contains("listing with the kernel's socket diagnostics"),
        "{stderr}"
    );
    assert!(
        stderr.contains("the keepalive settings of 1 socket(s) are not known"),
        "{stderr}"
    );
    drop(accepted);
}

/// A reader that stops early (`kalive ls | head`) ends the listing quietly:
/// exit 0, nothing on stderr.
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn a_closed_stdout_is_a_quiet_end() {
    use std::{net::TcpListener, process::Stdio};
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let _held: Vec<_> = (0..50)
        .map(|_| std::net::TcpStream::connect(addr).expect("connect"))
        .collect();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kalive"))
        .args(["ls", "--format", "json", "--listening"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kalive ls");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("kalive ls");
    assert!(out.status.success(), "{:?}", out.status);
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
}
