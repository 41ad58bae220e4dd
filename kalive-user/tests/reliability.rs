//! End to end: failing cleanly, exiting cleanly, and running with as little
//! privilege as the job allows.

use std::{
    collections::BTreeSet,
    fs,
    io::{BufRead as _, BufReader},
    os::unix::process::ExitStatusExt as _,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

mod support;

use support::{Family, Kalive, connect};

const KALIVE: &str = env!("CARGO_BIN_EXE_kalive");

/// Runs `program args` (kalive somewhere in it) to its end; returns the exit
/// code and stderr.
fn run(program: &str, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(program)
        .args(args)
        .env_remove("KALIVE_BACKEND")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap_or_else(|err| panic!("running {program}: {err}"));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A refusal: exit code 1 and a single line, starting "kalive: ".
fn assert_one_line_error(code: Option<i32>, stderr: &str, says: &str) {
    assert_eq!(code, Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line:\n{stderr}");
    assert!(lines[0].starts_with("kalive: "), "{stderr}");
    assert!(lines[0].contains(says), "{says:?} in:\n{stderr}");
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn without_privileges_it_says_which_are_missing() {
    let _alone = support::alone();
    let (code, stderr) = run(
        "setpriv",
        &[
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            KALIVE,
        ],
    );
    assert_one_line_error(
        code,
        &stderr,
        "missing CAP_BPF and CAP_PERFMON to load BPF tracing programs: run it as root (sudo kalive)",
    );
    // Root that lost one of them (a container, capsh).
    let (code, stderr) = run(
        "capsh",
        &[
            "--drop=cap_perfmon,cap_sys_admin",
            "--",
            "-c",
            &format!("exec {KALIVE}"),
        ],
    );
    assert_one_line_error(code, &stderr, "missing CAP_PERFMON to load");
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn without_btf_it_says_so() {
    let _alone = support::alone();
    let script = format!("mount -t tmpfs none /sys/kernel/btf && exec {KALIVE}");
    let (code, stderr) = run("unshare", &["--mount", "sh", "-c", &script]);
    assert_one_line_error(
        code,
        &stderr,
        "/sys/kernel/btf/vmlinux not found: this kernel was built without BTF",
    );
}

/// Both places tracefs may be, hidden: kalive mounts it itself, or says how.
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn without_tracefs_it_mounts_it_or_says_how() {
    let _alone = support::alone();
    let hide = "for m in /sys/kernel/debug/tracing /sys/kernel/tracing /sys/kernel/debug; do \
                umount -l $m 2>/dev/null; done; \
                if [ -d /sys/kernel/debug ]; then mount -t tmpfs none /sys/kernel/debug; fi";
    // Unable to mount (no CAP_SYS_ADMIN): one line that says how.
    let script = format!("{hide}; exec capsh --drop=cap_sys_admin -- -c 'exec {KALIVE}'");
    let (code, stderr) = run("unshare", &["--mount", "sh", "-c", &script]);
    assert_one_line_error(
        code,
        &stderr,
        "tracefs is not mounted and mounting it failed (Operation not permitted (os error 1)): \
         run `mount -t tracefs tracefs /sys/kernel/tracing`",
    );
    // Able to: it mounts it, says so, and runs.
    let script = format!("{hide}; exec {KALIVE} --format json");
    let mut child = Command::new("unshare")
        .args(["--mount", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("unshare");
    let mut said = String::new();
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    while let Some(Ok(line)) = lines.next() {
        said.push_str(&line);
        said.push('\n');
        if line.starts_with("kalive: tracing") {
            break;
        }
    }
    // SAFETY: signalling our own child (exec'd into kalive).
    unsafe { libc::kill(i32::try_from(child.id()).expect("pid"), libc::SIGINT) };
    assert!(child.wait().expect("wait").success(), "{said}");
    assert!(
        said.contains("kalive: mounted tracefs at /sys/kernel/tracing (it was not mounted)"),
        "{said}"
    );
    assert!(said.contains("kalive: tracing"), "{said}");
}

/// `setarch --uname-2.6` makes the kernel say it is 2.6.x.
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn a_kernel_too_old_is_refused() {
    let _alone = support::alone();
    let (code, stderr) = run("setarch", &["x86_64", "--uname-2.6", KALIVE]);
    assert_one_line_error(code, &stderr, "is too old: kalive needs 5.8 or newer");
    let (code, stderr) = run(
        "setarch",
        &["x86_64", "--uname-2.6", KALIVE, "--backend", "fentry"],
    );
    assert_one_line_error(
        code,
        &stderr,
        "is too old: the fentry backend needs 5.8 or newer",
    );
}

/// BPF objects (`prog_id`, `map_id`, `link_id`) a process holds descriptors of.
fn bpf_objects(pid: u32) -> BTreeSet<(String, u64)> {
    let mut ids = BTreeSet::new();
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return ids;
    };
    for fd in fds.flatten() {
        let Ok(info) = fs::read_to_string(fd.path()) else {
            continue;
        };
        for line in info.lines() {
            for kind in ["prog", "map", "link"] {
                if let Some(id) = line.strip_prefix(&format!("{kind}_id:"))
                    && let Ok(id) = id.trim().parse()
                {
                    ids.insert((kind.to_owned(), id));
                }
            }
        }
    }
    ids
}

/// Whether the kernel still has BPF object `kind` `id`.
fn exists(kind: &str, id: u64) -> bool {
    Command::new("bpftool")
        .args([kind, "show", "id", &id.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("bpftool")
        .success()
}

/// SIGINT, SIGTERM and a crash (SIGKILL): nothing kalive loaded outlives it,
/// and nothing is pinned.
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn every_exit_leaves_nothing_in_the_kernel() {
    let _alone = support::alone();
    let pinned = || -> Vec<String> {
        fs::read_dir("/sys/fs/bpf")
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let pinned_before = pinned();
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGKILL] {
        let mut kalive = Kalive::start(&[]);
        let objects = bpf_objects(kalive.pid());
        for kind in ["prog", "map", "link"] {
            assert!(
                objects.iter().any(|(k, _)| k == kind),
                "kalive holds no {kind}: {objects:?}"
            );
        }
        let status = kalive.stop_with(sig);
        if sig == libc::SIGKILL {
            assert_eq!(status.signal(), Some(libc::SIGKILL));
        } else {
            assert!(status.success(), "signal {sig}: {status:?}");
            kalive.stderr_line("kalive: stopped: ");
        }
        // The kernel frees them once the last descriptor closes (maps after
        // an RCU grace period).
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left: Vec<_> = objects.iter().filter(|(k, id)| exists(k, *id)).collect();
            if left.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "after signal {sig}, still in the kernel: {left:?}"
            );
            thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(pinned(), pinned_before, "nothing pinned");
    }
}

/// kalive streaming the records of process `pid`, its stdout and stderr piped.
fn kalive_for(pid: u32) -> support::KillOnDrop {
    support::KillOnDrop(
        Command::new(KALIVE)
            .args(["--format", "json", "--pid", &pid.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kalive"),
    )
}

/// `kalive | head -1`: once its reader is gone, kalive stops quietly with 0.
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn a_closed_stdout_is_a_quiet_stop() {
    // Alone: once, with the other tests running, kalive did not stop within
    // the deadline. It was idle, not blocked: its ring buffer was empty and
    // nothing was counted lost, so the burst's records never reached it. The
    // likely cause, seen since (see `support::Kalive`): other tests' kalives
    // starting and stopping meanwhile make a running kalive miss events.
    let _alone = support::alone();
    let mut c = connect("head", Family::V4, &[]);
    let mut child = kalive_for(c.info.pid);
    let rx = support::line_channel(child.0.stderr.take().expect("stderr"));
    let mut said = Vec::new();
    while !said
        .last()
        .is_some_and(|l: &String| l.starts_with("kalive: tracing"))
    {
        said.push(
            rx.recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("kalive did not start: {said:?}")),
        );
    }
    let mut stdout = BufReader::new(child.0.stdout.take().expect("stdout"));
    // Records until the first line, as `head -1` reads.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut first = String::new();
    c.client.send("go");
    c.client.expect("configured");
    stdout.read_line(&mut first).expect("a line");
    assert!(first.contains("keepalive_set"), "{first}");
    drop(stdout);
    // More records, into the closed pipe.
    c.client.send("burst 100");
    c.client.expect("burst done");
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "kalive kept running");
        thread::sleep(Duration::from_millis(20));
    };
    // The rest of stderr, to its end.
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(5)) {
        said.push(line);
    }
    assert!(status.success(), "{status:?}: {said:?}");
    let unexpected: Vec<&String> = said
        .iter()
        .filter(|l| {
            !(l.starts_with("kalive: not using")
                || l.starts_with("kalive: running as")
                || l.starts_with("kalive: tracing")
                || l.starts_with("kalive: stopped: "))
        })
        .collect();
    assert!(unexpected.is_empty(), "quiet: {said:?}");
    c.server.close_stdin();
}

/// `kalive 2>&- ` or a stderr reader that went away: what kalive would say is
/// lost, nothing else. It streams, and stops with 0 on SIGINT.
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn a_closed_stderr_changes_nothing() {
    let _alone = support::alone();
    let mut c = connect("nostderr", Family::V4, &[]);
    let mut child = kalive_for(c.info.pid);
    // Its read end closed before kalive says a word: every line on stderr
    // meets EPIPE.
    drop(child.0.stderr.take());
    let kalive = child.0.id();
    let rx = support::line_channel(child.0.stdout.take().expect("stdout"));
    // With nothing on stderr to say so, kalive shows it is attached by
    // leaving root, which it does once every program is attached.
    let deadline = Instant::now() + Duration::from_secs(30);
    while fs::read_to_string(format!("/proc/{kalive}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(str::to_owned))
        .is_some_and(|uid| uid.split_whitespace().nth(1) == Some("0"))
    {
        if let Some(status) = child.0.try_wait().expect("wait") {
            panic!("kalive exited before attaching: {status:?}");
        }
        assert!(Instant::now() < deadline, "kalive did not attach");
        thread::sleep(Duration::from_millis(50));
    }
    c.client.send("go");
    c.client.expect("configured");
    let first = rx.recv_timeout(Duration::from_secs(30));
    assert!(
        first.as_ref().is_ok_and(|l| l.contains("keepalive_set")),
        "a record after stderr closed: {first:?} (exit: {:?})",
        child.0.try_wait()
    );
    support::signal(&child.0, libc::SIGINT);
    let status = support::wait_timeout(&mut child.0, Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
    c.server.close_stdin();
}

/// Capabilities in a `/proc/PID/status` line, as a bit set.
fn caps(status: &str, key: &str) -> u64 {
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .expect(key)
        .trim();
    u64::from_str_radix(hex, 16).expect("hex")
}

/// Started as root, kalive runs as nobody with three capabilities once
/// attached, in every thread, for good; and keeps streaming, owners found in
/// /proc included. Its output holds no kernel addresses.
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn it_drops_privileges_and_keeps_streaming() {
    let _alone = support::alone();
    let mut kalive = Kalive::start(&[]);
    let said = kalive.stderr_line("kalive: running as");
    assert_eq!(
        said,
        "kalive: running as nobody, keeping CAP_BPF (reading its maps), CAP_DAC_READ_SEARCH \
         (listing /proc/PID/fd), CAP_SYS_PTRACE (finding socket owners in /proc)"
    );
    let kept = (1u64 << 39) | (1 << 19) | (1 << 2);
    let tasks = fs::read_dir(format!("/proc/{}/task", kalive.pid())).expect("tasks");
    for task in tasks.flatten() {
        let status = fs::read_to_string(task.path().join("status")).expect("status");
        let uid = status.lines().find(|l| l.starts_with("Uid:")).expect("Uid");
        assert_eq!(
            uid.split_whitespace().skip(1).collect::<Vec<_>>(),
            ["65534"; 4]
        );
        for key in ["CapEff:", "CapPrm:", "CapBnd:"] {
            assert_eq!(caps(&status, key), kept, "{key}\n{status}");
        }
        for key in ["CapInh:", "CapAmb:"] {
            assert_eq!(caps(&status, key), 0, "{key}");
        }
        assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    }

    // A socket handed to a forked child whose parent exits: only /proc knows
    // its owner now, which nobody could not read without the capabilities.
    let mut c = connect(
        "priv",
        Family::V4,
        &[
            "--idle", "1", "--intvl", "1", "--cnt", "3", "--fork", "handoff",
        ],
    );
    c.client.send("go");
    c.client.expect("configured");
    let child = support::forked_child(&mut c.client);
    assert!(c.client.wait().success(), "the parent exits");
    c.net.mute_server();
    let cookie = c.info.cookie;
    kalive.wait_until(Duration::from_secs(30), |rs| {
        rs.iter()
            .any(|r| r["cookie"] == cookie && r["event"] == "keepalive_timeout")
    });
    let probes: Vec<_> = kalive
        .socket(cookie)
        .into_iter()
        .filter(|r| r["event"] == "probe_sent")
        .collect();
    assert_eq!(probes.len(), 3, "{}", kalive.dump());
    for r in probes {
        assert_eq!(r["pid"], child.0, "{r}");
        assert_eq!(r["comm"], "tcp_child", "{r}");
    }
    // No kernel address anywhere: kernel pointers are 0xffff8... and up.
    for r in &kalive.records {
        let line = r.to_string();
        for word in line.split(|c: char| !c.is_ascii_alphanumeric()) {
            if let Ok(n) = word.parse::<u64>() {
                assert!(n < 0xffff_8000_0000_0000, "a kernel address? {line}");
            }
            assert!(!word.to_ascii_lowercase().contains("ffff8"), "{line}");
        }
    }
    c.server.close_stdin();
}

/// `--user root` keeps the user (still dropping capabilities); an unknown user
/// is a usage error before anything is loaded.
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn user_is_chosen() {
    let _alone = support::alone();
    let kalive = Kalive::start(&["--user", "root"]);
    let said = kalive.stderr_line("kalive: keeping");
    assert!(said.starts_with("kalive: keeping CAP_BPF"), "{said}");
    let status = fs::read_to_string(format!("/proc/{}/status", kalive.pid())).expect("status");
    assert!(status.contains("Uid:\t0\t0\t0\t0"), "{status}");
    let (code, stderr) = run(KALIVE, &["--user", "no-such-user-kalive"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("no user \"no-such-user-kalive\""),
        "{stderr}"
    );
}

/// A process name with control characters and invalid UTF-8 (the kernel takes
/// any bytes) comes out as valid JSON: escaped controls, U+FFFD for bad bytes.
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn odd_process_names_are_valid_json() {
    let _alone = support::alone();
    let mut kalive = Kalive::start(&[]);
    // "a\x01b\x1b[31m\xff\xfez\""
    let mut c = connect(
        "comm",
        Family::V4,
        &["--comm-hex", "6101621b5b33316dfffe7a22"],
    );
    c.client.send("go");
    c.client.expect("configured");
    let cookie = c.info.cookie;
    // Kalive::wait_until parses every line as JSON, or fails.
    kalive.wait_until(Duration::from_secs(30), |rs| {
        rs.iter()
            .any(|r| r["cookie"] == cookie && r["event"] == "keepalive_set")
    });
    let r = kalive
        .records
        .iter()
        .find(|r| r["cookie"] == cookie && r["event"] == "keepalive_set")
        .expect("a record");
    assert_eq!(r["comm"], "a\u{1}b\u{1b}[31m\u{fffd}\u{fffd}z\"", "{r}");
    c.server.close_stdin();
}
