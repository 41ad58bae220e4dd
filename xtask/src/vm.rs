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

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    fs,
    io::{self, BufRead as _, BufReader, Write as _},
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Mutex, PoisonError},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::{build_ebpf, cmd, setup::Purpose};

/// The kernel the suite runs on, as Debian packages it.
const PACKAGE_PATTERN: &str = r"^linux-image-6\.1\.0-[0-9]+-cloud-amd64-unsigned$";

/// Backends the suite runs against; all must work on this kernel.
const BACKENDS: [&str; 3] = ["fentry", "kprobe", "tracepoint"];

/// Test targets the VM does not run: the command-line tests need no kernel,
/// and the reliability tests (privileges, bad environments, exits) do not
/// depend on the backend and need tools (setpriv, capsh, unshare, setarch)
/// the VM does not carry; the churn test needs thousands of connections a
/// second, which an emulated CPU does not make.
const SKIP_TESTS: &[&str] = &["cli", "reliability", "churn"];

/// How long each test binary takes in the VM, roughly (relative; seconds under
/// TCG on 2026-11-30): the queue starts with the longest, so that VMs finish
/// together. A binary not listed counts as the shortest.
const WEIGHTS: &[(&str, u32)] = &[
    ("keepalive", 130),
    ("backend", 90),
    ("filter", 55),
    ("owner", 50),
    ("zero_window", 40),
    ("state_change", 25),
];

/// At most this many VMs at once (each takes a host core and 2 GiB).
const MAX_VMS: usize = 4;

/// The whole run, boot to power-off.
const DEADLINE: Duration = Duration::from_mins(40);

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
    let kernel = fetch_kernel(&dir)?;
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
    build_initramfs(&initrd, &kernel, &tests, options.script.as_deref())?;
    if options.script.is_some() {
        let log = dir.join("serial.log");
        boot(&kernel, &initrd, &log, &Mutex::new(VecDeque::new()), true)?;
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
            .map(|log| scope.spawn(|| boot(&kernel, &initrd, log, &queue, false)))
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

struct Kernel {
    version: String,
    /// The extracted package.
    root: PathBuf,
}

impl Kernel {
    fn vmlinuz(&self) -> PathBuf {
        self.root.join(format!("boot/vmlinuz-{}", self.version))
    }

    fn modules(&self) -> PathBuf {
        self.root.join("lib/modules").join(&self.version)
    }
}

/// The newest 6.1 cloud kernel package, downloaded and unpacked once.
fn fetch_kernel(dir: &Path) -> Result<Kernel> {
    let search =
        cmd::output(Command::new("apt-cache").args(["search", "--names-only", PACKAGE_PATTERN]))?;
    let package = search
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .max_by_key(|name| abi(name))
        .ok_or_else(|| anyhow!("no package matches {PACKAGE_PATTERN} (apt-get update?)"))?
        .to_owned();
    let version = package
        .strip_prefix("linux-image-")
        .and_then(|v| v.strip_suffix("-unsigned"))
        .ok_or_else(|| anyhow!("unexpected package name {package}"))?
        .to_owned();
    let root = dir.join(format!("kernel-{version}"));
    let kernel = Kernel { version, root };
    if kernel.vmlinuz().is_file() && kernel.modules().join("modules.dep").is_file() {
        return Ok(kernel);
    }
    let deb = find_deb(dir, &package);
    let deb = if let Some(deb) = deb {
        deb
    } else {
        eprintln!("vm-test: downloading {package}");
        cmd::run(Command::new("apt-get").current_dir(dir).args([
            "-q",
            "-o",
            "APT::Sandbox::User=root",
            "download",
            &package,
        ]))?;
        find_deb(dir, &package).ok_or_else(|| anyhow!("apt-get download left no {package} .deb"))?
    };
    cmd::run(
        Command::new("dpkg-deb")
            .arg("-x")
            .arg(&deb)
            .arg(&kernel.root),
    )?;
    // The package leaves modules.dep to its postinst.
    cmd::run(
        Command::new("depmod")
            .arg("-b")
            .arg(&kernel.root)
            .arg(&kernel.version),
    )?;
    Ok(kernel)
}

/// `linux-image-6.1.0-56-cloud-amd64-unsigned` -> 56
fn abi(package: &str) -> u32 {
    package
        .strip_prefix("linux-image-6.1.0-")
        .and_then(|rest| rest.split('-').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn find_deb(dir: &Path, package: &str) -> Option<PathBuf> {
    fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{package}_")))
                && p.extension().is_some_and(|e| e == "deb")
        })
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

/// The init script: mounts and modules, then jobs from the host until it says
/// `done` (or, for `--script`, that script). It asks with `KALIVE-VM next`;
/// the host answers `BACKEND TEST PATH` on the serial console; each result is
/// one `KALIVE-VM result` line, with the test's output before it when it
/// fails. A failure is a failure: nothing runs twice. /tmp stays on the
/// initramfs: the checkout, and so the test binaries, may live under it.
fn init_script(script: bool) -> String {
    let mut s = String::from(
        "#!/bin/busybox sh\n\
         /bin/busybox mkdir -p /busybox\n\
         /bin/busybox --install -s /busybox\n\
         export PATH=/usr/sbin:/usr/bin:/sbin:/bin:/busybox\n\
         mount -t proc proc /proc\n\
         mount -t sysfs sysfs /sys\n\
         mount -t devtmpfs dev /dev\n\
         mount -t tmpfs run /run\n\
         ip link set lo up\n\
         modprobe veth\n\
         modprobe nf_tables\n\
         stty -echo\n\
         echo \"KALIVE-VM kernel $(uname -r)\"\n\
         export RUST_BACKTRACE=1 KALIVE_EXPECT_BACKENDS=fentry,kprobe,tracepoint\n",
    );
    if script {
        s.push_str("sh /debug.sh\necho KALIVE-VM done\npoweroff -f\n");
        return s;
    }
    s.push_str(
        "while :; do\n\
         echo 'KALIVE-VM next'\n\
         read -r backend name path || break\n\
         [ \"$backend\" = done ] && break\n\
         start=$(date +%s)\n\
         if KALIVE_BACKEND=$backend \"$path\" --include-ignored --test-threads 2 > /tmp/out 2>&1; \
         then r=pass; else r=fail; cat /tmp/out; fi\n\
         echo \"KALIVE-VM result backend=$backend test=$name $r $(( $(date +%s) - start ))s\"\n\
         done\n\
         echo KALIVE-VM done\n\
         poweroff -f\n",
    );
    s
}

/// Files of the initramfs: archive path -> what goes there.
#[derive(Default)]
struct Archive {
    entries: BTreeMap<PathBuf, Entry>,
}

enum Entry {
    Dir,
    File { source: PathBuf, mode: u32 },
    Inline { data: Vec<u8>, mode: u32 },
    Symlink(PathBuf),
}

impl Archive {
    /// A host file at the same path (its real one: /bin is a link to usr/bin
    /// on merged-/usr systems, and the archive has the same links).
    fn host_file(&mut self, path: &Path) -> Result<()> {
        let real =
            fs::canonicalize(path).with_context(|| format!("resolving {}", path.display()))?;
        let mode = fs::metadata(&real)?.permissions().mode();
        self.add(
            &real,
            Entry::File {
                source: real.clone(),
                mode,
            },
        );
        Ok(())
    }

    /// A host executable and the shared libraries it loads.
    fn host_program(&mut self, path: &Path) -> Result<()> {
        self.host_file(path)?;
        let ldd = cmd::output(Command::new("ldd").arg(path)).unwrap_or_default();
        for line in ldd.lines() {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
            // "/lib64/ld-linux-x86-64.so.2 (0x...)"
            let lib = line
                .split("=>")
                .last()
                .and_then(|rest| rest.split_whitespace().next());
            if let Some(lib) = lib.filter(|l| l.starts_with('/')) {
                let lib = Path::new(lib);
                self.host_file(lib)?;
                // Libraries are looked up by the name they were linked with,
                // which may be a link to the file: keep the link too, in its
                // directory's real place.
                if let (Ok(target), Some(dir), Some(name)) =
                    (fs::read_link(lib), lib.parent(), lib.file_name())
                {
                    self.add(&fs::canonicalize(dir)?.join(name), Entry::Symlink(target));
                }
            }
        }
        Ok(())
    }

    fn add(&mut self, path: &Path, entry: Entry) {
        let path = &real_dir(path);
        let mut parent = path.parent();
        while let Some(dir) = parent.filter(|d| *d != Path::new("/")) {
            self.entries.entry(dir.to_path_buf()).or_insert(Entry::Dir);
            parent = dir.parent();
        }
        self.entries.insert(path.clone(), entry);
    }

    /// Writes the archive in the `newc` cpio format the kernel unpacks.
    fn write(&self, out: &Path) -> Result<()> {
        let mut w = io::BufWriter::new(fs::File::create(out)?);
        let mut ino = 1u32;
        let mut entry = |w: &mut io::BufWriter<fs::File>,
                         name: &str,
                         mode: u32,
                         data: &[u8]|
         -> io::Result<()> {
            let header = format!(
                "070701{ino:08X}{mode:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}",
                0,
                0,
                1,
                0,
                data.len(),
                0,
                0,
                0,
                0,
                name.len() + 1,
                0
            );
            ino += 1;
            w.write_all(header.as_bytes())?;
            w.write_all(name.as_bytes())?;
            w.write_all(&[0])?;
            w.write_all(&vec![0; pad4(header.len() + name.len() + 1)])?;
            w.write_all(data)?;
            w.write_all(&vec![0; pad4(data.len())])
        };
        // Links last: the kernel unpacks in order, and a link may only be
        // followed once what it points to exists.
        let (links, rest): (Vec<_>, Vec<_>) = self
            .entries
            .iter()
            .partition(|(_, e)| matches!(e, Entry::Symlink(_)));
        for (path, e) in rest.into_iter().chain(links) {
            let name = path
                .strip_prefix("/")
                .unwrap_or(path)
                .to_string_lossy()
                .into_owned();
            match e {
                Entry::Dir => entry(&mut w, &name, 0o040_755, &[])?,
                Entry::File { source, mode } => {
                    let data = fs::read(source)
                        .with_context(|| format!("reading {}", source.display()))?;
                    entry(&mut w, &name, 0o100_000 | (mode & 0o7777), &data)?;
                }
                Entry::Inline { data, mode } => entry(&mut w, &name, 0o100_000 | mode, data)?,
                Entry::Symlink(target) => {
                    entry(
                        &mut w,
                        &name,
                        0o120_777,
                        target.as_os_str().as_encoded_bytes(),
                    )?;
                }
            }
        }
        entry(&mut w, "TRAILER!!!", 0, &[])?;
        w.flush()?;
        Ok(())
    }
}

/// `path` with a leading `/bin`, `/sbin`, `/lib` or `/lib64` replaced by what
/// it links to on the host (merged /usr): the archive makes the same links,
/// and nothing may be unpacked through one.
fn real_dir(path: &Path) -> PathBuf {
    let mut parts = path.components();
    let (Some(root), Some(top)) = (parts.next(), parts.next()) else {
        return path.to_path_buf();
    };
    let top_path = Path::new(root.as_os_str()).join(top);
    if ["/bin", "/sbin", "/lib", "/lib64"]
        .iter()
        .any(|t| Path::new(t) == top_path)
        && parts.clone().next().is_some()
        && let Ok(target) = fs::read_link(&top_path)
    {
        return Path::new("/").join(target).join(parts.as_path());
    }
    path.to_path_buf()
}

const fn pad4(len: usize) -> usize {
    (4 - len % 4) % 4
}

fn build_initramfs(
    out: &Path,
    kernel: &Kernel,
    tests: &[TestBinary],
    script: Option<&Path>,
) -> Result<()> {
    let mut a = Archive::default();
    // Merged /usr: the same top-level links as the host.
    for top in ["/bin", "/sbin", "/lib", "/lib64"] {
        if let Ok(target) = fs::read_link(top) {
            a.add(Path::new(top), Entry::Symlink(target));
        }
    }
    for dir in ["/proc", "/sys", "/dev", "/tmp", "/run", "/etc"] {
        a.add(Path::new(dir), Entry::Dir);
    }
    a.add(Path::new("/var/run"), Entry::Symlink(PathBuf::from("/run")));
    // The kernel loads modules for nft through /sbin/modprobe.
    a.add(
        Path::new("/sbin/modprobe"),
        Entry::Symlink(PathBuf::from("/bin/busybox")),
    );
    a.host_file(Path::new("/bin/busybox"))
        .context("busybox (apt-get install busybox-static)")?;
    for tool in ["ip", "nstat", "nft", "sysctl"] {
        let path = cmd::which(tool).ok_or_else(|| anyhow!("{tool} is not installed"))?;
        a.host_program(&path)?;
    }
    for etc in ["/etc/protocols", "/etc/services"] {
        if Path::new(etc).exists() {
            a.host_file(Path::new(etc))?;
        }
    }
    let kalive = tests[0]
        .path
        .parent()
        .and_then(|deps| deps.parent())
        .map(|release| release.join("kalive"))
        .ok_or_else(|| anyhow!("no release directory"))?;
    a.host_program(&kalive)?;
    for test in tests {
        a.host_program(&test.path)?;
    }

    // The kernel's config (kalive reads HZ from it) and network modules.
    let modules = Path::new("/lib/modules").join(&kernel.version);
    a.add(
        &Path::new("/boot").join(format!("config-{}", kernel.version)),
        Entry::File {
            source: kernel.root.join(format!("boot/config-{}", kernel.version)),
            mode: 0o644,
        },
    );
    // The network modules (veth, nf_tables, ...) and what they depend on.
    let mut module_files = BTreeSet::new();
    let deps = fs::read_to_string(kernel.modules().join("modules.dep"))?;
    for line in deps.lines() {
        let Some((module, needs)) = line.split_once(':') else {
            continue;
        };
        if module.starts_with("kernel/net/") || module.ends_with("/veth.ko") {
            for rel in std::iter::once(module).chain(needs.split_whitespace()) {
                module_files.insert(kernel.modules().join(rel));
            }
        }
    }
    for entry in fs::read_dir(kernel.modules())? {
        let path = entry?.path();
        if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("modules."))
        {
            module_files.insert(path);
        }
    }
    for source in module_files {
        let rel = source.strip_prefix(kernel.modules())?;
        a.add(
            &modules.join(rel),
            Entry::File {
                source,
                mode: 0o644,
            },
        );
    }
    a.add(
        Path::new("/init"),
        Entry::Inline {
            data: init_script(script.is_some()).into_bytes(),
            mode: 0o755,
        },
    );
    if let Some(script) = script {
        a.add(
            Path::new("/debug.sh"),
            Entry::File {
                source: script.to_path_buf(),
                mode: 0o755,
            },
        );
    }
    for tool in ["bpftool"] {
        if let Some(path) = cmd::which(tool) {
            a.host_program(&path)?;
        }
    }
    a.write(out)
}

/// Boots a VM, copies its serial console to `log`, feeds it jobs from `queue`
/// and returns each `(backend, test) -> passed` it reported. With `echo`, the
/// console is also shown (`--script`).
fn boot(
    kernel: &Kernel,
    initrd: &Path,
    log: &Path,
    queue: &Mutex<VecDeque<Job>>,
    echo: bool,
) -> Result<BTreeMap<(String, String), bool>> {
    let name = log
        .file_stem()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
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
    loop {
        let left = DEADLINE.saturating_sub(start.elapsed());
        let Ok(line) = rx.recv_timeout(left) else {
            break;
        };
        writeln!(log_file, "{line}")?;
        if echo {
            eprintln!("vm: {line}");
        }
        if let Some(rest) = line.split("KALIVE-VM result ").nth(1) {
            let field = |key: &str| {
                rest.split_whitespace()
                    .find_map(|kv| kv.strip_prefix(key))
                    .unwrap_or_default()
                    .to_owned()
            };
            let passed = rest.split_whitespace().any(|w| w == "pass");
            eprintln!("vm-test: {name}: {rest}");
            results.insert((field("backend="), field("test=")), passed);
        } else if line.contains("KALIVE-VM next") {
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

/// A child killed and reaped on drop.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn jobs_start_with_the_longest() {
        let tests = ["state_change", "keepalive", "unknown"].map(|name| TestBinary {
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
            ("state_change", "a"),
            ("state_change", "b"),
            ("unknown", "a"),
            ("unknown", "b"),
        ]
        .map(|(t, b)| (t.to_owned(), b.to_owned()));
        assert_eq!(order, want);
    }

    #[test]
    fn picks_the_newest_abi() {
        assert_eq!(abi("linux-image-6.1.0-56-cloud-amd64-unsigned"), 56);
        assert_eq!(abi("linux-image-6.1.0-9-cloud-amd64-unsigned"), 9);
        assert_eq!(abi("linux-image-foo"), 0);
    }

    #[test]
    fn writes_newc_archives() {
        let dir = std::env::temp_dir().join(format!("kalive-cpio-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("dir");
        let mut a = Archive::default();
        a.add(
            Path::new("/a/b"),
            Entry::Inline {
                data: b"hi".to_vec(),
                mode: 0o644,
            },
        );
        a.add(Path::new("/l"), Entry::Symlink(PathBuf::from("a")));
        let out = dir.join("x.cpio");
        a.write(&out).expect("write");
        let bytes = fs::read(&out).expect("read");
        let _ = fs::remove_dir_all(&dir);
        // Every header is 110 bytes of "070701" and hex; names NUL-terminated;
        // everything 4-byte aligned; ends with TRAILER!!!.
        assert!(bytes.starts_with(b"070701"));
        assert_eq!(bytes.len() % 4, 0);
        let text = String::from_utf8_lossy(&bytes);
        for name in ["a\0", "a/b\0", "l\0", "TRAILER!!!\0"] {
            assert!(text.contains(name), "{name:?} in {text:?}");
        }
        let data_at = text.find("a/b\0").expect("entry") + 4;
        assert_eq!(&bytes[data_at + pad4(110 + 4)..][..2], b"hi");
    }
}
