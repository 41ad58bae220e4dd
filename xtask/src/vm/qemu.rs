//! One VM: qemu under TCG, its serial console the channel jobs and results
//! go through; qemu dies with xtask.

use std::{
    collections::{BTreeMap, VecDeque},
    fs,
    io::{self, BufRead as _, BufReader, Write as _},
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Child, Command, Stdio},
    sync::{Mutex, PoisonError},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use super::{Job, kernel::Kernel};
use crate::cmd::KillOnDrop;

/// The whole run, boot to power-off.
const DEADLINE: Duration = Duration::from_mins(40);

/// Boots a VM, copies its serial console to `log`, feeds it jobs from `queue`
/// and returns each `(backend, test) -> passed` it reported. With `echo`, the
/// console is also shown (`--script`).
pub fn boot(
    kernel: &Kernel,
    initrd: &Path,
    log: &Path,
    queue: &Mutex<VecDeque<Job>>,
    echo: bool,
) -> Result<BTreeMap<(String, String), bool>> {
    let name = log
        .file_stem()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let mut qemu = command(kernel, initrd);
    let mut child = spawn_tied(&mut qemu)
        .context("starting qemu-system-x86_64 (apt-get install qemu-system-x86)")?;
    let mut console = child.stdin.take().expect("piped");
    let stdout = child.stdout.take().expect("piped");
    // Killed and reaped however this ends.
    let child = KillOnDrop(child);
    let start = Instant::now();
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut log_file = io::BufWriter::new(fs::File::create(log)?);
    let mut results = BTreeMap::new();
    let mut done = false;
    // The console since the VM asked for its current job: shown when it fails.
    let mut job_lines: Vec<String> = Vec::new();
    loop {
        let left = DEADLINE.saturating_sub(start.elapsed());
        let Ok(line) = rx.recv_timeout(left) else {
            break;
        };
        writeln!(log_file, "{line}")?;
        if echo {
            eprintln!("vm: {line}");
        }
        job_lines.push(line.clone());
        if let Some(rest) = line.split("KALIVE-VM result ").nth(1) {
            let field = |key: &str| {
                rest.split_whitespace()
                    .find_map(|kv| kv.strip_prefix(key))
                    .unwrap_or_default()
                    .to_owned()
            };
            let passed = rest.split_whitespace().any(|w| w == "pass");
            eprintln!("vm-test: {name}: {rest}");
            if !passed {
                show_failure(&name, &job_lines);
            }
            job_lines.clear();
            results.insert((field("backend="), field("test=")), passed);
        } else if line.contains("KALIVE-VM next") {
            job_lines.clear();
            let job = queue
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop_front();
            let answer = match job {
                Some(job) => format!("{} {} {}\n", job.backend, job.test, job.path.display()),
                None => "done\n".to_owned(),
            };
            console.write_all(answer.as_bytes())?;
            console.flush()?;
        } else if line.contains("KALIVE-VM kernel") {
            eprintln!(
                "vm-test: {name}: booted in {:.1}s",
                start.elapsed().as_secs_f64()
            );
        } else if line.contains("KALIVE-VM done") {
            done = true;
        }
    }
    log_file.flush()?;
    drop(child);
    if !done {
        // The job it was running, if any: how far it got.
        if !job_lines.is_empty() {
            show_failure(&name, &job_lines);
        }
        if start.elapsed() >= DEADLINE {
            eprintln!("vm-test: {name}: the VM did not finish within {DEADLINE:?}");
        } else {
            eprintln!(
                "vm-test: {name}: the VM stopped before the suite finished (a kernel panic?)"
            );
        }
    }
    Ok(results)
}

/// qemu for `kernel` and `initrd`, its serial console on stdin and stdout.
fn command(kernel: &Kernel, initrd: &Path) -> Command {
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args([
        "-accel",
        // One host thread for both vCPUs: with one each (thread=multi), two
        // vCPUs on a two-core host starve each other into soft lockups.
        "tcg,thread=single",
        "-cpu",
        "max",
        "-smp",
        "2",
        "-m",
        "2048",
    ])
    .arg("-kernel")
    .arg(kernel.vmlinuz())
    .arg("-initrd")
    .arg(initrd)
    .args([
        "-append",
        "console=ttyS0 panic=-1 quiet mitigations=off softlockup_panic=1",
    ])
    .args([
        "-nographic",
        "-no-reboot",
        "-nodefaults",
        "-serial",
        "stdio",
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::piped());
    qemu
}

/// Prints a failed job's failures, so that a CI log names the failing test
/// and its message without the VM's log file.
fn show_failure(name: &str, lines: &[String]) {
    for line in failure_excerpt(lines) {
        eprintln!("vm-test: {name}: | {line}");
    }
}

/// What of a failed job's console to show: libtest's `failures:` section on
/// (each failing test's output, message and backtrace, then their names),
/// or the last lines when there is none (a crash). A long one keeps its
/// first and last lines, where the first and the last failure's messages
/// are.
fn failure_excerpt(lines: &[String]) -> Vec<String> {
    const HALF: usize = 100;
    let from = lines
        .iter()
        .position(|l| l.trim_end() == "failures:")
        .unwrap_or_else(|| lines.len().saturating_sub(40));
    let shown = &lines[from..];
    if shown.len() <= 2 * HALF {
        return shown.to_vec();
    }
    let mut excerpt = shown[..HALF].to_vec();
    excerpt.push(format!(
        "... {} lines left out (the VM's log has them)",
        shown.len() - 2 * HALF
    ));
    excerpt.extend_from_slice(&shown[shown.len() - HALF..]);
    excerpt
}

/// Spawns `cmd` so that it is killed when the thread that spawned it ends,
/// the whole of xtask with it (`PR_SET_PDEATHSIG`): a `cargo xtask vm-test`
/// stopped by a signal, even SIGKILL, leaves no qemu running at full CPU.
/// Spawn from a thread that lives as long as the child should.
fn spawn_tied(cmd: &mut Command) -> io::Result<Child> {
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the closure runs in the child between fork and exec and calls
    // only async-signal-safe functions (prctl, getppid).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before the line above took effect.
            if libc::getppid() != parent {
                return Err(io::Error::other("xtask exited while starting it"));
            }
            Ok(())
        })
    };
    cmd.spawn()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_owned).collect()
    }

    #[test]
    fn a_failed_job_shows_its_failures() {
        let console = lines(
            "running 2 tests\ntest a ... ok\ntest b ... FAILED\n\nfailures:\n\n---- b stdout ----\nassertion failed\n\nfailures:\n    b\n\ntest result: FAILED.",
        );
        let excerpt = failure_excerpt(&console);
        assert_eq!(excerpt.first().map(String::as_str), Some("failures:"));
        assert!(
            excerpt.iter().any(|l| l == "assertion failed"),
            "{excerpt:?}"
        );
        assert!(!excerpt.iter().any(|l| l == "test a ... ok"), "{excerpt:?}");
    }

    #[test]
    fn a_crash_shows_the_last_lines() {
        let console: Vec<String> = (0..100).map(|i| format!("line {i}")).collect();
        let excerpt = failure_excerpt(&console);
        assert_eq!(excerpt.len(), 40);
        assert_eq!(excerpt[39], "line 99");
    }

    #[test]
    fn a_long_failure_keeps_its_beginning_and_end() {
        let mut console = lines("failures:");
        console.extend((0..300).map(|i| format!("line {i}")));
        let excerpt = failure_excerpt(&console);
        assert_eq!(excerpt.len(), 201);
        assert_eq!(excerpt[0], "failures:");
        assert_eq!(
            excerpt[100],
            "... 101 lines left out (the VM's log has them)"
        );
        assert_eq!(excerpt[200], "line 299");
    }

    /// The child of a thread that ends is killed: so is qemu when xtask is
    /// stopped, which ends every thread.
    #[test]
    fn a_tied_child_dies_with_its_spawner() {
        let spawner = thread::spawn(|| spawn_tied(Command::new("sleep").arg("60")).expect("sleep"));
        let mut child = spawner.join().expect("spawner");
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break status;
            }
            assert!(Instant::now() < deadline, "sleep outlived its spawner");
            thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL)
        );
    }
}
