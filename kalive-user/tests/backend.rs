//! End to end: choosing how to hook the kernel. Which backends run depends on
//! the kernel, so each test checks what kalive says against what it does: a
//! backend either runs or is refused with a reason, and `auto` keeps the first
//! that runs. `KALIVE_EXPECT_BACKENDS` (set by `cargo xtask vm-test`, whose
//! kernel allows all three) lists backends that must run.

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    sync::{OnceLock, mpsc},
    thread,
    time::Duration,
};

mod support;

const BACKENDS: [&str; 3] = ["fentry", "kprobe", "tracepoint"];

/// Runs kalive until it says it is tracing (then stops it) or exits. Returns
/// its stderr and whether it ran.
fn try_backend(backend: &str) -> (String, bool) {
    try_backend_with(backend, "warn")
}

/// `try_backend` with this `RUST_LOG`.
fn try_backend_with(backend: &str, log: &str) -> (String, bool) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kalive"))
        .args(["--format", "json", "--backend", backend])
        .env_remove("KALIVE_BACKEND")
        .env("RUST_LOG", log)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning kalive");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut text = String::new();
    while let Ok(line) = rx.recv_timeout(support::START_DEADLINE) {
        text.push_str(&line);
        text.push('\n');
        if line.starts_with("kalive: tracing") {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(i32::try_from(child.id()).expect("pid"), libc::SIGINT) };
            let status = child.wait().expect("wait");
            assert!(status.success(), "a clean stop: {status:?}\n{text}");
            return (text, true);
        }
    }
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(1), "a runtime failure: {text}");
    (text, false)
}

/// Each backend tried once, in `BACKENDS` order: its stderr and whether it ran.
/// Shared by the tests of this binary: every start verifies kalive's programs,
/// which takes seconds on an emulated CPU.
fn outcomes() -> &'static [(String, bool)] {
    static OUTCOMES: OnceLock<Vec<(String, bool)>> = OnceLock::new();
    OUTCOMES.get_or_init(|| {
        let _alone = support::alone();
        BACKENDS.iter().map(|b| try_backend(b)).collect()
    })
}

fn runs(backend: &str) -> bool {
    BACKENDS
        .iter()
        .position(|b| *b == backend)
        .is_some_and(|i| outcomes()[i].1)
}

fn expected() -> Vec<String> {
    std::env::var("KALIVE_EXPECT_BACKENDS")
        .map(|v| v.split(',').map(str::to_owned).collect())
        .unwrap_or_default()
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn each_backend_runs_or_says_why_not() {
    for (backend, (stderr, ran)) in BACKENDS.iter().zip(outcomes()) {
        let (stderr, ran) = (stderr.as_str(), *ran);
        if ran {
            assert!(
                stderr.contains(&format!("with the {backend} backend")),
                "{stderr}"
            );
        } else {
            let prefix = format!("kalive: the {backend} backend cannot run here: ");
            let reason = stderr
                .lines()
                .find_map(|l| l.strip_prefix(&prefix))
                .unwrap_or_else(|| panic!("no reason given:\n{stderr}"));
            assert!(reason.len() > 10, "{stderr}");
            assert!(
                !expected().iter().any(|e| e == backend),
                "{backend} must run on this kernel:\n{stderr}"
            );
        }
    }
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn auto_keeps_the_first_backend_that_runs() {
    let runs: Vec<bool> = outcomes().iter().map(|&(_, ran)| ran).collect();
    let first = BACKENDS[runs
        .iter()
        .position(|&r| r)
        .expect("tracepoint runs anywhere")];
    let (stderr, ran) = {
        let _alone = support::alone();
        try_backend("auto")
    };
    assert!(ran, "{stderr}");
    assert!(
        stderr.contains(&format!("with the {first} backend")),
        "{stderr}"
    );
    for (backend, &runs) in BACKENDS.iter().zip(&runs) {
        let passed_over = stderr.contains(&format!("not using the {backend} backend: "));
        let before =
            BACKENDS.iter().position(|b| b == backend) < BACKENDS.iter().position(|b| *b == first);
        assert_eq!(passed_over, before && !runs, "{backend}:\n{stderr}");
    }
}

/// A function backend on a kernel where a hooked function was inlined: that
/// part falls back to the timer tracepoints, says so, and the records stay the
/// same. (Where no function backend runs, there is nothing to fall back from.)
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn an_inlined_function_falls_back_per_hook() {
    for backend in ["fentry", "kprobe"] {
        if !runs(backend) {
            eprintln!("the {backend} backend does not run here: nothing to fall back from");
            continue;
        }
        let mut kalive = support::Kalive::start_with_env(
            &["--backend", backend],
            &[("KALIVE_PRETEND_INLINED", "tcp_write_wakeup")],
        );
        let stderr = kalive.stderr();
        assert!(
            stderr.contains(
                "keepalive probes seen through the timer tracepoints: tcp_write_wakeup is inlined"
            ),
            "{stderr}"
        );
        assert!(
            stderr.contains(&format!("with the {backend} backend")),
            "{stderr}"
        );
        let mut c = support::connect(
            &format!("inl{}", &backend[..1]),
            support::Family::V4,
            &["--idle", "1", "--intvl", "1", "--cnt", "2"],
        );
        c.net.kill_server();
        c.client.send("go");
        assert_eq!(c.client.expect("recv_error"), "recv_error errno=110");
        let cookie = c.info.cookie;
        kalive.wait_until(Duration::from_secs(30), |rs| {
            rs.iter()
                .any(|r| r["cookie"] == cookie && r["event"] == "keepalive_timeout")
        });
        let events: Vec<(String, u64)> = kalive
            .socket(cookie)
            .iter()
            .filter(|r| r["event"] != "keepalive_set")
            .map(|r| {
                (
                    r["event"].as_str().expect("event").to_owned(),
                    r["probes"].as_u64().expect("probes"),
                )
            })
            .collect();
        let want = [
            ("probe_sent", 1),
            ("probe_sent", 2),
            ("keepalive_timeout", 2),
        ];
        assert_eq!(
            events,
            want.map(|(e, p)| (e.to_owned(), p)),
            "{}",
            kalive.dump()
        );
        c.server.close_stdin();
    }
}

/// `RUST_LOG=info` says where start-up time went, step by step, and the steps
/// add up to the total (`cargo xtask bench` reads this line).
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn start_up_says_where_the_time_goes() {
    let _alone = support::alone();
    let (stderr, ran) = try_backend_with("auto", "info");
    assert!(ran, "{stderr}");
    let line = stderr
        .lines()
        .find_map(|l| l.split_once("start-up took ").map(|(_, rest)| rest))
        .unwrap_or_else(|| panic!("no start-up line:\n{stderr}"));
    let (total, steps) = line.split_once(" ms: ").expect("total, then steps");
    let total: f64 = total.parse().expect("total ms");
    let steps: Vec<(&str, f64)> = steps
        .split(", ")
        .map(|step| {
            let (name, ms) = step.rsplit_once(' ').expect("name ms");
            (name, ms.parse().expect("ms"))
        })
        .collect();
    for want in ["BTF", "kallsyms", "layout", "object", "verifier", "attach"] {
        assert!(steps.iter().any(|&(n, _)| n == want), "{want}: {line}");
    }
    let sum: f64 = steps.iter().map(|&(_, ms)| ms).sum();
    // Each step is rounded to 0.1 ms.
    let rounding = 0.05 * f64::from(u32::try_from(steps.len()).expect("few steps"));
    assert!((sum - total).abs() <= rounding + 0.1, "{line}");
    assert!(total > 0.0, "{line}");
}

/// Every BPF program loaded in the kernel: id -> name, as bpftool lists them.
fn programs() -> std::collections::HashMap<u64, String> {
    let out = support::sh("bpftool", &["-j", "prog", "show"]);
    let list: serde_json::Value = serde_json::from_str(&out).expect("bpftool's JSON");
    list.as_array()
        .expect("a list")
        .iter()
        .filter_map(|p| Some((p["id"].as_u64()?, p["name"].as_str()?.to_owned())))
        .collect()
}

/// The programs a kalive started with `args` loads (it runs alone: no other
/// kalive loads any meanwhile).
fn programs_of_kalive(args: &[&str]) -> Vec<String> {
    let before = programs();
    let kalive = support::Kalive::start(args);
    let mine = programs()
        .into_iter()
        .filter(|(id, _)| !before.contains_key(id))
        .map(|(_, name)| name)
        .collect();
    drop(kalive);
    mine
}

/// By default no program of kalive's runs per segment received or per send or
/// receive (`tcp_probe`, `sock_send_length`/`sock_recv_length`,
/// `tcp_sendmsg`/`tcp_recvmsg`); `--live-acks` adds them.
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn no_program_runs_per_segment_unless_asked() {
    // bpftool truncates names to 15 characters.
    let per_packet = |name: &str| {
        ["tcp_probe", "sock_send_lengt", "sock_recv_lengt"]
            .iter()
            .any(|p| name.starts_with(p))
            || name.contains("tcp_sendmsg")
            || name.contains("tcp_recvmsg")
    };
    let default = programs_of_kalive(&[]);
    assert!(!default.is_empty(), "no programs found for kalive");
    assert!(
        !default.iter().any(|p| per_packet(p)),
        "per-packet programs by default: {default:?}"
    );
    let live = programs_of_kalive(&["--live-acks"]);
    assert!(
        live.iter().any(|p| p.starts_with("tcp_probe")),
        "--live-acks without tcp_probe: {live:?}"
    );
}
