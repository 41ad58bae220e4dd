//! `cargo xtask vm-test`: the end-to-end suite on a second kernel, in QEMU.
//!
//! Boots Debian's `linux-image-6.1.0-*-cloud-amd64-unsigned` kernel under TCG
//! (`-accel tcg -cpu max`; no KVM needed) with an initramfs that carries
//! everything the tests run: busybox for the init script, the test binaries and
//! `kalive`, `ip`/`nstat`/`nft`/`sysctl` with their libraries, and the kernel's
//! network modules (veth, `nf_tables`).
//!
//! The suite is one job per (backend, test binary). Emulation is bound by the
//! CPU (most of it is the verifier checking kalive's programs at each start),
//! so as many VMs boot as the host has cores, and each takes the next job from
//! a shared queue: the VM's init asks for one on the serial console, runs it and
//! reports the result there, until the host answers `done`.

mod initramfs;
mod kernel;
mod qemu;

use std::{
    collections::{BTreeMap, VecDeque},
    fs,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Mutex, PoisonError},
    thread,
};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::{build_ebpf, cmd, setup::Purpose};

/// Backends the suite runs against by default: the two the host (kprobes
/// compiled out, fentry refused) cannot run. The tracepoint backend runs the
/// whole suite on the host; `--backend tracepoint` runs it here too, and the
/// `backend` tests check that all three start on this kernel. (All three took
/// over 40 minutes of emulation on 2026-12-01, past CI's half hour.)
const BACKENDS: [&str; 2] = ["fentry", "kprobe"];

/// Test targets the VM does not run: the command-line tests need no kernel,
/// and the reliability tests (privileges, bad environments, exits) do not
/// depend on the backend and need tools (setpriv, capsh, unshare, setarch)
/// the VM does not carry; the churn test needs thousands of connections a
/// second, which an emulated CPU does not make; the guide's commands need
/// socat and bash; the metrics tests need curl and Prometheus (and count in
/// userspace what the other tests check the backends deliver), and so do the
/// container tests (attribution reads /proc, whatever the backend); the
/// deployment tests need setpriv, systemd-analyze and the Kubernetes
/// validator.
const SKIP_TESTS: &[&str] = &[
    "cli",
    "reliability",
    "churn",
    "guide",
    "metrics",
    "containers",
    "deploy",
];

/// Test targets that do not trace (`kalive ls` reads sockets with an
/// iterator, whatever the backend): run once, with the first backend.
const ONE_BACKEND: &[&str] = &["ls"];

/// How long each test binary takes in the VM, roughly (relative; seconds under
/// TCG on 2026-11-30, keepalive and backend remeasured on 2026-12-01, a
/// slower day: 620 and 185): the queue starts with the longest, so that VMs
/// finish together. A binary not listed counts as the shortest.
const WEIGHTS: &[(&str, u32)] = &[
    ("keepalive", 300),
    ("backend", 90),
    ("ls", 60),
    ("filter", 55),
    ("owner", 50),
    ("zero_window", 40),
    ("timeouts", 40),
    ("state_change", 25),
];

/// At most this many VMs at once (each takes a host core and 2 GiB).
const MAX_VMS: usize = 4;

/// A test binary: its target name and path.
struct TestBinary {
    name: String,
    path: PathBuf,
}

/// What to run in the VM.
#[derive(Debug, Default)]
pub struct Options {
    /// Backends; empty: all.
    pub backends: Vec<String>,
    /// Test targets; empty: all.
    pub tests: Vec<String>,
    /// A script to run instead of the suite (debugging).
    pub script: Option<PathBuf>,
}

/// One test binary run against one backend, in whichever VM asks first.
#[derive(Debug, Clone)]
struct Job {
    backend: String,
    test: String,
    path: PathBuf,
}

/// The jobs, longest first.
fn jobs(tests: &[TestBinary], backends: &[&str]) -> VecDeque<Job> {
    let weight = |name: &str| {
        WEIGHTS
            .iter()
            .find_map(|&(n, w)| (n == name).then_some(w))
            .unwrap_or(0)
    };
    let mut jobs: Vec<Job> = tests
        .iter()
        .flat_map(|t| {
            let once = ONE_BACKEND.contains(&t.name.as_str());
            let backends = if once { &backends[..1] } else { backends };
            backends.iter().map(|b| Job {
                backend: (*b).to_owned(),
                test: t.name.clone(),
                path: t.path.clone(),
            })
        })
        .collect();
    // Stable: backends stay in their order within a weight.
    jobs.sort_by_key(|j| std::cmp::Reverse(weight(&j.test)));
    jobs.into()
}

/// `cargo xtask vm-test`: builds what the suite needs and runs it.
pub fn run(root: &Path, options: &Options) -> Result<()> {
    build_ebpf::build(root, Purpose::Test)?;
    suite(root, options)
}

/// Runs the suite in the VMs; fails if any test fails on any backend.
pub fn suite(root: &Path, options: &Options) -> Result<()> {
    let dir = root.join("target/vm");
    fs::create_dir_all(&dir)?;
    let kernel = kernel::fetch(&dir)?;
    eprintln!("vm-test: kernel {}", kernel.version);
    let mut tests = build_tests(root)?;
    if !options.tests.is_empty() {
        tests.retain(|t| options.tests.contains(&t.name));
    }
    let backends: Vec<&str> = if options.backends.is_empty() {
        BACKENDS.to_vec()
    } else {
        options.backends.iter().map(String::as_str).collect()
    };
    let initrd = dir.join("initrd.cpio");
    initramfs::build(&initrd, &kernel, &tests, options.script.as_deref())?;
    if options.script.is_some() {
        let log = dir.join("serial.log");
        qemu::boot(&kernel, &initrd, &log, &Mutex::new(VecDeque::new()), true)?;
        return Ok(());
    }

    let queue = Mutex::new(jobs(&tests, &backends));
    let expected = queue.lock().unwrap_or_else(PoisonError::into_inner).len();
    let cores = thread::available_parallelism().map_or(1, usize::from);
    let vms = cores.clamp(1, MAX_VMS).min(expected.max(1));
    eprintln!("vm-test: {expected} jobs in {vms} VMs (qemu TCG, one host core each)");
    let logs: Vec<PathBuf> = (0..vms)
        .map(|i| dir.join(format!("serial-{i}.log")))
        .collect();
    let mut results = BTreeMap::new();
    thread::scope(|scope| -> Result<()> {
        let running: Vec<_> = logs
            .iter()
            .map(|log| scope.spawn(|| qemu::boot(&kernel, &initrd, log, &queue, false)))
            .collect();
        for vm in running {
            let done = vm.join().map_err(|_| anyhow!("a VM's thread panicked"))??;
            results.extend(done);
        }
        Ok(())
    })?;

    let mut failed = Vec::new();
    let logs: Vec<String> = logs.iter().map(|l| l.display().to_string()).collect();
    eprintln!(
        "vm-test: results on Linux {} (full logs: {})",
        kernel.version,
        logs.join(", ")
    );
    for ((backend, test), passed) in &results {
        eprintln!(
            "  {:<11} {:<14} {}",
            backend,
            test,
            if *passed { "pass" } else { "FAIL" }
        );
        if !passed {
            failed.push(format!("{test} ({backend})"));
        }
    }
    if results.len() != expected {
        bail!(
            "the VMs reported {} of {expected} results; see {}",
            results.len(),
            logs.join(", ")
        );
    }
    if !failed.is_empty() {
        bail!(
            "failed in the VM: {}; see {}",
            failed.join(", "),
            logs.join(", ")
        );
    }
    Ok(())
}

/// Builds the end-to-end test binaries (release: TCG is slow enough) and
/// returns those the VM runs.
fn build_tests(root: &Path) -> Result<Vec<TestBinary>> {
    let out = cmd::output(
        cmd::cargo(root)
            .args([
                "test",
                "--release",
                "--no-run",
                "--package",
                "kalive-user",
                "--tests",
                "--message-format=json-render-diagnostics",
            ])
            // cargo's progress and diagnostics, as it goes.
            .stderr(Stdio::inherit()),
    )
    .context("building the test binaries")?;
    let mut tests = Vec::new();
    for line in out.lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let is_test = message["reason"] == "compiler-artifact"
            && message["profile"]["test"] == true
            && message["target"]["kind"][0] == "test";
        if let (true, Some(name), Some(path)) = (
            is_test,
            message["target"]["name"].as_str(),
            message["executable"].as_str(),
        ) && !SKIP_TESTS.contains(&name)
        {
            tests.push(TestBinary {
                name: name.to_owned(),
                path: PathBuf::from(path),
            });
        }
    }
    tests.sort_by(|a, b| a.name.cmp(&b.name));
    if tests.is_empty() {
        bail!("cargo built no test binaries");
    }
    Ok(tests)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_start_with_the_longest() {
        let tests = ["state_change", "keepalive", "unknown", "ls"].map(|name| TestBinary {
            name: name.to_owned(),
            path: PathBuf::from(format!("/t/{name}")),
        });
        let order: Vec<(String, String)> = jobs(&tests, &["a", "b"])
            .into_iter()
            .map(|j| (j.test, j.backend))
            .collect();
        let want = [
            ("keepalive", "a"),
            ("keepalive", "b"),
            ("ls", "a"),
            ("state_change", "a"),
            ("state_change", "b"),
            ("unknown", "a"),
            ("unknown", "b"),
        ]
        .map(|(t, b)| (t.to_owned(), b.to_owned()));
        assert_eq!(order, want);
    }
}
