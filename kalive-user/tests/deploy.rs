//! The deployment files under deploy/: the `DaemonSet` validates against the
//! Kubernetes schema (offline, kubernetes-validate), the systemd unit passes
//! `systemd-analyze verify`, and kalive runs as each of them runs it: with
//! exactly their arguments and no capability but theirs, it starts, lists
//! connections and serves its metrics.

mod support;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(30);

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path)
}

/// The validator `cargo xtask setup` installs (its path from `cargo xtask
/// test`), else one on `PATH`.
fn kubernetes_validate() -> PathBuf {
    std::env::var_os("KALIVE_KUBERNETES_VALIDATE")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .or_else(|| {
            std::env::var_os("PATH")?
                .to_str()?
                .split(':')
                .map(|dir| Path::new(dir).join("kubernetes-validate"))
                .find(|p| p.is_file())
        })
        .expect("kubernetes-validate is not installed: `cargo xtask setup` installs it")
}

/// The manifests' documents as JSON (read by the validator's own YAML
/// library, in its environment).
fn manifests() -> Vec<Value> {
    let validator = kubernetes_validate();
    // The validator's environment has PyYAML (the validator reads YAML).
    let python = Some(validator.with_file_name("python"))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("python3"));
    let out = kalive_testkit::output(Command::new(python).args([
        "-c",
        "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
        deploy("kubernetes/daemonset.yaml").to_str().expect("utf-8"),
    ]))
    .expect("reading the manifests");
    serde_json::from_str(&out).expect("JSON")
}

#[test]
#[ignore = "needs the tools `cargo xtask setup` installs: run with `cargo xtask test`"]
fn the_daemonset_validates_against_the_kubernetes_schema() {
    let out = Command::new(kubernetes_validate())
        .arg("--strict")
        .arg(deploy("kubernetes/daemonset.yaml"))
        .output()
        .expect("kubernetes-validate");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("passed for resource daemonset/kalive"),
        "{said}"
    );
    assert!(!said.contains("WARN"), "{said}");
}

/// The unit as installed, its `ExecStart` pointing at the binary under test
/// (`systemd-analyze verify` checks that the program exists).
#[test]
#[ignore = "needs the tools `cargo xtask setup` installs: run with `cargo xtask test`"]
fn the_unit_passes_systemd_analyze_verify() {
    let unit = std::fs::read_to_string(deploy("systemd/kalive.service")).expect("the unit");
    assert!(unit.contains("ExecStart=/usr/local/bin/kalive "), "{unit}");
    let dir = std::env::temp_dir().join(format!("kalive-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("kalive.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/kalive", env!("CARGO_BIN_EXE_kalive")),
    )
    .expect("writing the unit");
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("systemd-analyze");
    let _ = std::fs::remove_dir_all(&dir);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // It warns about unknown keys and bad values, and still exits 0.
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
}

/// The `DaemonSet`'s container: its arguments and added capabilities.
fn daemonset_runs() -> (Vec<String>, Vec<String>) {
    let docs = manifests();
    let ds = docs
        .iter()
        .find(|d| d["kind"] == "DaemonSet")
        .expect("a DaemonSet");
    let container = &ds["spec"]["template"]["spec"]["containers"][0];
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .expect("a list")
            .iter()
            .map(|s| s.as_str().expect("a string").to_owned())
            .collect()
    };
    let caps = &container["securityContext"]["capabilities"];
    assert_eq!(strings(&caps["drop"]), ["ALL"]);
    let added = strings(&caps["add"])
        .into_iter()
        .map(|c| c.to_lowercase())
        .collect();
    (strings(&container["args"]), added)
}

/// The unit's arguments and capability bounding set.
fn unit_runs() -> (Vec<String>, Vec<String>) {
    let unit = std::fs::read_to_string(deploy("systemd/kalive.service")).expect("the unit");
    let value = |key: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("no {key}"))
            .to_owned()
    };
    let exec = value("ExecStart");
    let mut words = exec.split_whitespace().map(str::to_owned);
    assert_eq!(words.next().as_deref(), Some("/usr/local/bin/kalive"));
    // What the sandboxing settings take out of the bounding set as well
    // (systemd.exec(5)).
    let taken: Vec<&str> = [
        ("ProtectKernelLogs=yes", &["syslog"][..]),
        ("ProtectKernelModules=yes", &["sys_module"]),
        ("ProtectClock=yes", &["sys_time", "wake_alarm"]),
        ("PrivateDevices=yes", &["mknod", "sys_rawio"]),
    ]
    .iter()
    .filter(|(setting, _)| unit.lines().any(|l| l.trim() == *setting))
    .flat_map(|(_, caps)| caps.iter().copied())
    .collect();
    let caps = value("CapabilityBoundingSet")
        .split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_lowercase())
        .filter(|c| !taken.contains(&c.as_str()))
        .collect();
    (words.collect(), caps)
}

/// Runs kalive with `args` as root with only `caps` (setpriv empties the
/// bounding set but for them), waits for its metrics (port 9464, as the
/// files say) to show a pass over the connections, and stops it.
fn runs_as_given(what: &str, args: &[String], caps: &[String]) {
    let _alone = support::alone();
    // A namespace to join (in /run/netns, with no process in it).
    let _net = support::Topology::new("deploy");
    assert!(
        args.windows(2)
            .any(|w| w[0] == "--metrics" && w[1] == "0.0.0.0:9464"),
        "{what}: {args:?}"
    );
    // The same address on a port free now (9464 may be taken here).
    let port = std::net::TcpListener::bind("0.0.0.0:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let args: Vec<String> = args
        .iter()
        .map(|a| {
            if a == "0.0.0.0:9464" {
                format!("0.0.0.0:{port}")
            } else {
                a.clone()
            }
        })
        .collect();
    let url = format!("http://127.0.0.1:{port}/metrics");
    let bounding = caps.iter().fold("-all".to_owned(), |all, c| all + ",+" + c);
    let mut child = support::KillOnDrop(
        Command::new("setpriv")
            .arg(format!("--bounding-set={bounding}"))
            .arg(env!("CARGO_BIN_EXE_kalive"))
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("setpriv"),
    );
    let stderr = support::line_channel(child.0.stderr.take().expect("stderr"));
    let deadline = Instant::now() + DEADLINE;
    let text = loop {
        let out = Command::new("curl")
            .args(["--silent", "--fail", &url])
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.contains("\nkalive_connections_pass_duration_seconds ") {
            break text;
        }
        if let Ok(Some(status)) = child.0.try_wait() {
            let said: Vec<String> = stderr.try_iter().collect();
            panic!("{what}: kalive exited ({status}):\n{}", said.join("\n"));
        }
        assert!(Instant::now() < deadline, "{what}: no pass in:\n{text}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        text.contains("\nkalive_records_lost_total 0\n"),
        "{what}:\n{text}"
    );
    // CAP_SYS_ADMIN in the thread that lists connections only, not in the
    // one that serves HTTP, nor the main one.
    let caps = thread_caps(child.0.id());
    let admin = |name: &str| {
        let (_, eff) = caps
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("{what}: no thread {name}: {caps:?}"));
        eff & (1 << 21) != 0
    };
    assert!(admin("connections"), "{what}: {caps:?}");
    assert!(!admin("metrics"), "{what}: {caps:?}");
    assert!(!admin("kalive"), "{what}: {caps:?}");
    support::signal(&child.0, libc::SIGTERM);
    let status = support::wait_timeout(&mut child.0, DEADLINE);
    // Until its stderr closes: every line it wrote.
    let said: Vec<String> = stderr.iter().collect();
    assert!(status.success(), "{what}: {status}:\n{}", said.join("\n"));
    // It joined every namespace it found: nothing left unlisted for want of
    // a capability.
    assert!(
        !said.iter().any(|l| l.contains("not listed")),
        "{what}:\n{}",
        said.join("\n")
    );
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.0.stdout.take().expect("stdout"), &mut out)
        .expect("stdout");
    assert_eq!(out, "", "{what}: --format none writes nothing");
}

/// Each thread of process `pid`: its name and effective capabilities.
fn thread_caps(pid: u32) -> Vec<(String, u64)> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("tasks")
        .flatten()
        .filter_map(|task| {
            let name = std::fs::read_to_string(task.path().join("comm")).ok()?;
            let status = std::fs::read_to_string(task.path().join("status")).ok()?;
            let eff = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
            Some((
                name.trim().to_owned(),
                u64::from_str_radix(eff.trim(), 16).ok()?,
            ))
        })
        .collect()
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn kalive_runs_as_the_daemonset_runs_it() {
    let (args, caps) = daemonset_runs();
    runs_as_given("the DaemonSet", &args, &caps);
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn kalive_runs_as_the_unit_runs_it() {
    let (args, caps) = unit_runs();
    runs_as_given("the unit", &args, &caps);
}
