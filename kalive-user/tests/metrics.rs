//! `--metrics`: kalive's records as Prometheus counters, scraped over HTTP as
//! Prometheus would, checked against the records and the kernel's counters.

mod support;

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use support::{Family, Kalive, connect, free_addr, scrape};

const DEADLINE: Duration = Duration::from_secs(30);

/// `program` on `PATH`, if it is there.
fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| std::path::Path::new(dir).join(program))
        .find(|path| path.is_file())
}

/// The value of sample `name` with exactly `labels`, if there is one.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric, rest) = series.split_once('{').unwrap_or((series, "}"));
        if metric != name {
            return None;
        }
        // An empty label is no label, as Prometheus stores it (a workload
        // outside a container has container_id="" and pod_uid="").
        let mut got: Vec<(String, String)> = rest
            .trim_end_matches('}')
            .split(',')
            .filter(|kv| !kv.is_empty())
            .filter_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                Some((k.to_owned(), v.trim_matches('"').to_owned()))
            })
            .filter(|(_, v)| !v.is_empty())
            .collect();
        got.sort();
        let mut want: Vec<(String, String)> = labels
            .iter()
            .map(|&(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        want.sort();
        (got == want).then(|| value.parse().ok()).flatten()
    })
}

/// A real Prometheus (Debian's package), scraping `target` every second,
/// with its data in a directory of its own; stopped on drop.
struct Prometheus {
    child: support::KillOnDrop,
    addr: String,
    dir: std::path::PathBuf,
}

impl Prometheus {
    fn scraping(target: &str) -> Self {
        let binary = which("prometheus")
            .expect("prometheus is not installed: `cargo xtask setup` installs it");
        let dir = std::env::temp_dir().join(format!("kalive-prom-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a directory");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: kalive\n    \
                 static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .expect("config");
        let addr = free_addr();
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus");
        Self {
            child: support::KillOnDrop(child),
            addr,
            dir,
        }
    }

    /// Waits until an instant `query` gives exactly one series, of value
    /// `expected` (Prometheus's latest scrape may be older than the kill).
    fn expect(&self, query: &str, expected: f64, deadline: std::time::Instant) {
        loop {
            let out = Command::new("curl")
                .args(["--silent", "--fail", "--get", "--data-urlencode"])
                .arg(format!("query={query}"))
                .arg(format!("http://{}/api/v1/query", self.addr))
                .output()
                .expect("curl");
            let answer = serde_json::from_slice::<serde_json::Value>(&out.stdout).ok();
            let value = answer
                .as_ref()
                .and_then(|a| match a["data"]["result"].as_array() {
                    Some(series) if series.len() == 1 => {
                        series[0]["value"][1].as_str()?.parse().ok()
                    }
                    _ => None,
                });
            if value == Some(expected) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "Prometheus: {query} is not {expected}: {}",
                String::from_utf8_lossy(&out.stdout)
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.0.kill();
        let _ = self.child.0.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A connection killed by keepalive: its probes and its kill are counted
/// under its process's comm and namespace, as many probes as the kernel sent
/// there and as the records say; the exposition is valid `OpenMetrics`
/// (`promtool check metrics`), and a real Prometheus scraping kalive holds
/// the same values.
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn the_records_are_counted_by_workload_and_cause() {
    let addr = free_addr();
    let mut kalive = Kalive::start(&["--metrics", &addr]);
    let prometheus = Prometheus::scraping(&addr);
    let mut c = connect(
        "mkill",
        Family::V4,
        &["--idle", "1", "--intvl", "1", "--cnt", "2"],
    );
    let ns = c.net.client.inode().expect("inode").to_string();
    let probes0 = c.net.client.counter("TcpExtTCPKeepAlive").expect("nstat");
    c.client.send("go");
    c.client.expect("configured");
    c.net.mute_server();
    assert_eq!(c.client.expect("recv_error"), "recv_error errno=110");
    let cookie = c.info.cookie;
    kalive.wait_until(DEADLINE, |rs| {
        rs.iter()
            .any(|r| r["cookie"] == cookie && r["event"] == "keepalive_timeout")
    });
    let probes = c.net.client.counter("TcpExtTCPKeepAlive").expect("nstat") - probes0;
    let records = kalive.socket(cookie);
    let sent = records
        .iter()
        .filter(|r| r["event"] == "probe_sent")
        .count();
    assert_eq!(
        u64::try_from(sent).ok(),
        Some(probes),
        "records: {records:#?}"
    );

    let text = scrape(&addr);
    let workload = [("comm", "tcp_peer"), ("netns", ns.as_str())];
    #[expect(clippy::cast_precision_loss, reason = "a handful of probes")]
    let probes = probes as f64;
    assert_eq!(
        sample(&text, "kalive_keepalive_probes_sent_total", &workload),
        Some(probes),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "kalive_keepalive_kills_total",
            &[
                ("comm", "tcp_peer"),
                ("netns", ns.as_str()),
                ("cause", "probes_exhausted")
            ]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(sample(&text, "kalive_records_lost_total", &[]), Some(0.0));
    // What a real Prometheus scraping kalive holds.
    {
        let deadline = std::time::Instant::now() + DEADLINE;
        let selector = format!("{{comm=\"tcp_peer\",netns=\"{ns}\"}}");
        prometheus.expect(
            &format!("kalive_keepalive_probes_sent_total{selector}"),
            probes,
            deadline,
        );
        let kills = format!(
            "kalive_keepalive_kills_total{{comm=\"tcp_peer\",netns=\"{ns}\",cause=\"probes_exhausted\"}}"
        );
        prometheus.expect(&kills, 1.0, deadline);
    }
    // curl asks for no format in particular: the classic one (no EOF).
    assert!(!text.contains("# EOF"), "{text}");
    // Asked for OpenMetrics, as Prometheus asks: that, ending with EOF.
    let openmetrics = kalive_testkit::output(Command::new("curl").args([
        "--silent",
        "--fail",
        "--header",
        "Accept: application/openmetrics-text; version=1.0.0",
        &format!("http://{addr}/metrics"),
    ]))
    .expect("curl");
    assert!(openmetrics.ends_with("# EOF\n"), "{openmetrics}");
    assert!(
        openmetrics.contains("# TYPE kalive_keepalive_probes_sent counter"),
        "{openmetrics}"
    );
    {
        let promtool =
            which("promtool").expect("promtool is not installed: `cargo xtask setup` installs it");
        let mut check = Command::new(promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("promtool");
        std::io::Write::write_all(&mut check.stdin.take().expect("stdin"), text.as_bytes())
            .expect("to promtool");
        let out = check.wait_with_output().expect("promtool");
        assert!(
            out.status.success(),
            "promtool check metrics: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A zero-window scenario: the peer keeps its window shut past the client's
/// `TCP_USER_TIMEOUT`. Its probes are counted as the kernel counts them
/// (`TcpExtTCPWinProbe`), and its kill by cause, in the exposition and in
/// a real Prometheus.
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn zero_window_probes_and_kills_are_counted() {
    let addr = free_addr();
    let mut kalive = Kalive::start(&["--metrics", &addr]);
    let prometheus = Prometheus::scraping(&addr);
    let mut s = support::stuck("mzw", Family::V4, &["--user-timeout", "3000"], |_| {});
    let ns = s.net.client.inode().expect("inode").to_string();
    assert_eq!(s.client.expect("recv_error"), "recv_error errno=110");
    let cookie = s.info.cookie;
    kalive.wait_until(DEADLINE, |rs| {
        rs.iter()
            .any(|r| r["cookie"] == cookie && r["event"] == "zero_window_timeout")
    });
    let probes = s.net.client.counter("TcpExtTCPWinProbe").expect("nstat") - s.winprobes0;
    assert!(probes > 0, "the kernel sent no window probe");
    #[expect(clippy::cast_precision_loss, reason = "a handful of probes")]
    let probes = probes as f64;
    let text = scrape(&addr);
    let workload = [("comm", "tcp_peer"), ("netns", ns.as_str())];
    assert_eq!(
        sample(&text, "kalive_zero_window_probes_sent_total", &workload),
        Some(probes),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "kalive_zero_window_kills_total",
            &[
                ("comm", "tcp_peer"),
                ("netns", ns.as_str()),
                ("cause", "user_timeout")
            ]
        ),
        Some(1.0),
        "{text}"
    );
    let deadline = std::time::Instant::now() + DEADLINE;
    prometheus.expect(
        &format!("kalive_zero_window_probes_sent_total{{comm=\"tcp_peer\",netns=\"{ns}\"}}"),
        probes,
        deadline,
    );
    prometheus.expect(
        &format!(
            "kalive_zero_window_kills_total{{comm=\"tcp_peer\",netns=\"{ns}\",cause=\"user_timeout\"}}"
        ),
        1.0,
        deadline,
    );
}

/// The retransmission timer's kills, by cause: a connection writing to a
/// silent peer (keepalive on, deferred: counted too), and a connect whose
/// SYN gets no answer.
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn retransmission_and_syn_kills_are_counted() {
    let addr = free_addr();
    let mut kalive = Kalive::start(&["--metrics", &addr]);
    let mut c = connect(
        "mrto",
        Family::V4,
        &[
            "--idle",
            "1",
            "--intvl",
            "1",
            "--cnt",
            "9",
            "--before-connect",
        ],
    );
    c.client.expect("configured");
    c.net
        .client
        .set_sysctl("net.ipv4.tcp_retries2", "3")
        .expect("sysctl");
    c.net.mute_server();
    c.client.send("send");
    c.client.expect("sent true");
    let syn_net = support::Topology::new("msyn");
    syn_net.kill_server();
    let mut syn = support::Peer::spawn(
        &syn_net.client,
        &["syn", &Family::V4.server_addr(), "--syncnt", "1"],
    );
    let syn_cookie = syn.socket("connecting").cookie;
    assert_eq!(c.client.expect("recv_error"), "recv_error errno=110");
    assert_eq!(syn.expect("connect_error"), "connect_error errno=110");
    let cookie = c.info.cookie;
    kalive.wait_until(DEADLINE, |rs| {
        rs.iter()
            .any(|r| r["cookie"] == cookie && r["event"] == "retransmit_timeout")
            && rs
                .iter()
                .any(|r| r["cookie"] == syn_cookie && r["event"] == "syn_timeout")
    });
    let text = scrape(&addr);
    let ns = c.net.client.inode().expect("inode").to_string();
    let workload = [("comm", "tcp_peer"), ("netns", ns.as_str())];
    let cause = |ns| {
        [
            ("comm", "tcp_peer"),
            ("netns", ns),
            ("cause", "retries_exhausted"),
        ]
    };
    assert_eq!(
        sample(&text, "kalive_retransmit_kills_total", &cause(ns.as_str())),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "kalive_keepalive_deferred_total", &workload),
        Some(1.0),
        "{text}"
    );
    let syn_ns = syn_net.client.inode().expect("inode").to_string();
    assert_eq!(
        sample(&text, "kalive_syn_kills_total", &cause(syn_ns.as_str())),
        Some(1.0),
        "{text}"
    );
    c.server.close_stdin();
}

/// The connections gauges come from a `kalive ls` pass each interval, each
/// pass replacing the last: a client with keepalive past the idle budget, one
/// without keepalive (that would never find its peer dead), and the second
/// gone at a later pass. kalive's own cost is there too, its programs' run
/// time once `kernel.bpf_stats_enabled` is on.
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn connection_gauges_follow_each_pass() {
    let addr = free_addr();
    let stats = BpfStats::enable();
    let _kalive = Kalive::start(&[
        "--metrics",
        &addr,
        "--metrics-interval",
        "1",
        "--idle-budget",
        "350",
    ]);
    let mut slow = connect("mslow", Family::V4, &["--idle", "400"]);
    let mut off = connect("moff", Family::V4, &["--no-keepalive"]);
    for c in [&mut slow, &mut off] {
        c.client.send("go");
        c.client.expect("configured");
    }
    let ns = |c: &support::Connection| c.net.client.inode().expect("inode").to_string();
    let (slow_ns, off_ns) = (ns(&slow), ns(&off));
    let client = |ns: &str, keepalive: &'static str| {
        [
            ("comm", "tcp_peer".to_owned()),
            ("netns", ns.to_owned()),
            ("keepalive", keepalive.to_owned()),
        ]
    };
    let get = |text: &str, name: &str, l: &[(&'static str, String)]| {
        let l: Vec<(&str, &str)> = l.iter().map(|(k, v)| (*k, v.as_str())).collect();
        sample(text, name, &l)
    };
    let workload = |ns: &str| [("comm", "tcp_peer".to_owned()), ("netns", ns.to_owned())];
    let text = scrape_until(&addr, "both clients counted", &|text| {
        get(text, "kalive_connections", &client(&slow_ns, "on")) == Some(1.0)
            && get(text, "kalive_connections", &client(&off_ns, "off")) == Some(1.0)
    });
    assert_eq!(
        get(
            &text,
            "kalive_connections_over_idle_budget",
            &workload(&slow_ns)
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        get(
            &text,
            "kalive_connections_never_detecting_dead_peer",
            &workload(&off_ns)
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        get(
            &text,
            "kalive_connections_never_detecting_dead_peer",
            &workload(&slow_ns)
        ),
        None,
        "keepalive on: found in 400 s + 9 x 75 s:\n{text}"
    );
    // The slow client's prediction, 400 s of idle then 9 probes 75 s apart.
    let within = |le: &str| {
        sample(
            &text,
            "kalive_connections_dead_after_seconds_bucket",
            &[("le", le)],
        )
        .expect("a bucket")
    };
    assert!(within("1800") - within("900") >= 1.0, "{text}");
    assert!(
        sample(&text, "process_resident_memory_bytes", &[]).is_some_and(|b| b > 1e6),
        "{text}"
    );
    assert!(
        sample(&text, "process_cpu_seconds_total", &[]).is_some(),
        "{text}"
    );
    if stats.on {
        // timer_start runs for every timer the host arms.
        assert!(
            sample(
                &text,
                "kalive_bpf_program_runs_total",
                &[("program", "timer_start")]
            )
            .is_some_and(|n| n > 0.0),
            "{text}"
        );
    }
    // Gone at the next pass.
    off.client.close_stdin();
    off.server.close_stdin();
    drop(off);
    scrape_until(&addr, "the closed client no longer counted", &|text| {
        get(text, "kalive_connections", &client(&off_ns, "off")).is_none()
    });
}

/// The label cap under a churn of workloads: 10,000 short-lived processes,
/// each of its own name and each with a keepalive probe to count, against a
/// cap of 50. The probe counter never has more than 50 workloads and
/// `_other`, its total is the probe records' total (the cap loses nothing),
/// what the cap folded in is counted, and kalive's resident memory stays flat from the second wave
/// of 1,000 to the tenth.
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn the_label_cap_holds_under_a_churn_of_workloads() {
    const WAVES: u32 = 10;
    const PER_WAVE: u32 = 1000;
    let addr = free_addr();
    let mut kalive = Kalive::start(&[
        "--metrics",
        &addr,
        "--metrics-max-series",
        "50",
        "--metrics-interval",
        "1",
    ]);
    let net = support::Topology::new("mcap");
    let mut peer = support::Peer::spawn(
        &net.client,
        &["workloads", "127.0.0.1:0", &PER_WAVE.to_string()],
    );
    let rss = || sample(&scrape(&addr), "process_resident_memory_bytes", &[]).expect("RSS");
    let mut after_second = 0.0;
    for wave in 1..=WAVES {
        peer.send("wave");
        peer.expect("wave done");
        if wave == 2 {
            after_second = rss();
        }
    }
    // Every probe record counted, under its workload or _other: the
    // counters' total is the records' (the records of the kernel's probes
    // that kalive has, which is not all of them for sockets this short-lived:
    // see docs/events.md's known limits).
    let sent = |rs: &[serde_json::Value]| {
        rs.iter()
            .filter(|r| r["event"] == "probe_sent" && r["sent"] == true)
            .count()
    };
    let total = |text: &str| -> usize {
        text.lines()
            .filter(|l| l.starts_with("kalive_keepalive_probes_sent_total{"))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<usize>().ok())
            .sum()
    };
    kalive.wait_until(DEADLINE, |rs| {
        sent(rs) >= usize::try_from(WAVES * PER_WAVE * 9 / 10).unwrap_or(usize::MAX)
            && total(&scrape(&addr)) == sent(rs)
    });
    let text = scrape(&addr);
    let series = text
        .lines()
        .filter(|l| l.starts_with("kalive_keepalive_probes_sent_total{"))
        .count();
    // The cap is over every series, this namespace's workloads and others'.
    assert!(series <= 51, "{series} series:\n{text}");
    assert!(
        sample(
            &text,
            "kalive_keepalive_probes_sent_total",
            &[
                ("comm", "_other"),
                ("container_id", "_other"),
                ("pod_uid", "_other"),
                ("netns", "_other")
            ]
        )
        .is_some_and(|n| n >= f64::from((WAVES - 1) * PER_WAVE)),
        "{text}"
    );
    assert!(
        sample(&text, "kalive_metrics_capped_records_total", &[])
            .is_some_and(|n| n >= f64::from((WAVES - 1) * PER_WAVE)),
        "{text}"
    );
    let growth = rss() - after_second;
    assert!(
        growth < 2.0 * 1024.0 * 1024.0,
        "kalive's RSS grew by {growth} bytes over {} workloads",
        (WAVES - 2) * PER_WAVE
    );
    drop(kalive);
}

/// `/metrics` from `addr` once `holds` holds of it (`what`, if it never does).
fn scrape_until(addr: &str, what: &str, holds: &dyn Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let text = scrape(addr);
        if holds(&text) {
            return text;
        }
        assert!(std::time::Instant::now() < deadline, "{what}:\n{text}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `kernel.bpf_stats_enabled` on for the test, back as it was on drop.
struct BpfStats {
    was: String,
    on: bool,
}

impl BpfStats {
    const PATH: &str = "/proc/sys/kernel/bpf_stats_enabled";

    fn enable() -> Self {
        let was = std::fs::read_to_string(Self::PATH).unwrap_or_default();
        let on = std::fs::write(Self::PATH, "1").is_ok();
        Self { was, on }
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        if self.on {
            let _ = std::fs::write(Self::PATH, self.was.trim());
        }
    }
}

/// An agent: `--format none` writes no records and serves the metrics; any
/// other path is a 404.
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn an_agent_writes_nothing_and_serves_metrics() {
    let _alone = support::alone();
    let addr = free_addr();
    let mut child = support::KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_kalive"))
            .args(["--format", "none", "--metrics", &addr])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("kalive"),
    );
    let deadline = std::time::Instant::now() + DEADLINE;
    let text = loop {
        let out = Command::new("curl")
            .args(["--silent", "--fail", &format!("http://{addr}/metrics")])
            .output()
            .expect("curl");
        if out.status.success() {
            break String::from_utf8(out.stdout).expect("utf-8");
        }
        assert!(std::time::Instant::now() < deadline, "no metrics served");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        text.contains("# TYPE kalive_records_lost_total counter"),
        "{text}"
    );
    let missing = Command::new("curl")
        .args([
            "--silent",
            "--output",
            "/dev/null",
            "--write-out",
            "%{http_code}",
            &format!("http://{addr}/"),
        ])
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&missing.stdout), "404");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(i32::try_from(child.0.id()).expect("pid"), libc::SIGINT) };
    let out = child.0.wait().expect("kalive");
    assert!(out.success(), "{out:?}");
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut child.0.stdout.take().expect("stdout"), &mut stdout)
        .expect("stdout");
    assert_eq!(stdout, "", "no records on stdout");
}

/// A metrics address that is taken is one line and exit 1, before anything
/// is loaded.
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn a_taken_metrics_address_is_one_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_kalive"))
        .args(["--metrics", &addr])
        .output()
        .expect("kalive");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(&format!("kalive: --metrics {addr}: binding")),
        "{stderr}"
    );
    assert!(stderr.contains("in use"), "{stderr}");
}
