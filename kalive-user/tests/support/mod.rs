//! Shared pieces of the end-to-end tests: network namespaces, the `kalive`
//! process, and the `tcp_peer` helper. Every guard cleans up on drop, so a failing
//! test leaves no namespace, program or process behind. Every wait has a deadline.
#![allow(
    dead_code,
    reason = "each test binary uses a different part of this module"
)]

pub mod peer;

use std::{
    cell::RefCell,
    io::{BufRead as _, BufReader, Write as _},
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    rc::{Rc, Weak},
    sync::{
        Arc, Condvar, Mutex, OnceLock, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard,
        atomic::{AtomicBool, Ordering},
        mpsc::{self, Receiver, RecvTimeoutError},
    },
    thread,
    time::{Duration, Instant},
};

use kalive_common::event::Event;
use serde_json::Value;

/// Runs a command and panics with its output when it fails.
pub fn sh(program: &str, args: &[&str]) -> String {
    kalive_testkit::output(Command::new(program).args(args)).unwrap_or_else(|err| panic!("{err:#}"))
}

pub use kalive_testkit::Netns;

/// Whether the tests run under emulation (`KALIVE_TEST_SLOW`, set by the
/// VM's init), where starting kalive takes seconds: timings that must leave
/// room for that are longer there.
#[allow(dead_code, reason = "not every test binary has such timings")]
#[must_use]
pub fn slow() -> bool {
    std::env::var_os("KALIVE_TEST_SLOW").is_some()
}

/// Microseconds since the Unix epoch of a record's `ts`
/// (`2026-11-22T00:51:22.893509Z`).
pub fn ts_micros(record: &Value) -> i64 {
    let ts = record["ts"].as_str().expect("ts");
    ts.parse::<jiff::Timestamp>()
        .unwrap_or_else(|err| panic!("ts {ts}: {err}"))
        .as_microsecond()
}

/// Two namespaces, a client and a server, joined by a veth pair, with IPv4 and
/// IPv6 addresses. Both are deleted on drop.
pub struct Topology {
    pub client: Netns,
    pub server: Netns,
}

impl Topology {
    pub const CLIENT_V4: &str = "10.77.0.1";
    pub const SERVER_V4: &str = "10.77.0.2";
    pub const CLIENT_V6: &str = "fd77::1";
    pub const SERVER_V6: &str = "fd77::2";

    pub fn new(tag: &str) -> Self {
        let client = Netns::new(&format!("{tag}-c")).expect("a network namespace");
        let server = Netns::new(&format!("{tag}-s")).expect("a network namespace");
        // Created directly inside the namespaces: no name clash between tests.
        sh(
            "ip",
            &[
                "link",
                "add",
                "veth0",
                "netns",
                client.name(),
                "type",
                "veth",
                "peer",
                "name",
                "veth0",
                "netns",
                server.name(),
            ],
        );
        for (ns, v4, v6) in [
            (&client, Self::CLIENT_V4, Self::CLIENT_V6),
            (&server, Self::SERVER_V4, Self::SERVER_V6),
        ] {
            ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", "veth0"])
                .expect("ip");
            ns.ip(&["addr", "add", &format!("{v6}/64"), "dev", "veth0", "nodad"])
                .expect("ip");
            ns.ip(&["link", "set", "veth0", "up"]).expect("ip");
        }
        // Static neighbours: no neighbour discovery, which right after the link
        // comes up can hold the first IPv6 packets back for a second.
        let mac = |ns: &Netns| {
            let line = ns.ip(&["-br", "link", "show", "veth0"]).expect("ip");
            line.split_whitespace()
                .nth(2)
                .expect("MAC address")
                .to_owned()
        };
        let (client_mac, server_mac) = (mac(&client), mac(&server));
        for (ns, peer_v4, peer_v6, peer_mac) in [
            (&client, Self::SERVER_V4, Self::SERVER_V6, &server_mac),
            (&server, Self::CLIENT_V4, Self::CLIENT_V6, &client_mac),
        ] {
            for addr in [peer_v4, peer_v6] {
                ns.ip(&[
                    "neigh",
                    "replace",
                    addr,
                    "lladdr",
                    peer_mac,
                    "dev",
                    "veth0",
                    "nud",
                    "permanent",
                ])
                .expect("ip");
            }
        }
        Self { client, server }
    }

    /// Makes the client's RTO floor 300 ms toward the server (a host route
    /// with `rto_min`, which `ip` locks), for a connection made after this. Tests of
    /// a retransmission budget use it: with the RTO at the default 200 ms
    /// floor (204 ms on a veth: 200 + SRTT/8, in jiffies), the firing
    /// before the kill lands less than 200 ms short of the
    /// `tcp_model_timeout()` budget (80 ms at `tcp_retries2` 4), which counts 200 ms doublings, and a
    /// timer run a little late moves the kill a whole doubling earlier. At
    /// 304 ms the budget of `tcp_retries2` 3 (3 s) falls between firings at
    /// 1.8 s and 4.3 s after the first retransmission, that of 4 (6.2 s)
    /// between 4.3 s and 9.1 s.
    pub fn raise_rto_min(&self) {
        for (family, server) in [("-4", Self::SERVER_V4), ("-6", Self::SERVER_V6)] {
            self.client
                .ip(&[
                    family, "route", "replace", server, "dev", "veth0", "rto_min", "300ms",
                ])
                .expect("ip route");
        }
    }

    /// Lets the server's packets through again.
    pub fn revive_server(&self) {
        self.client
            .nft(&["delete", "table", "inet", "kalive_test"])
            .expect("nft");
    }

    /// Drops every packet the server sends to the client.
    pub fn mute_server(&self) {
        self.server_output_drops(&[
            &["ip", "daddr", Self::CLIENT_V4],
            &["ip6", "daddr", Self::CLIENT_V6],
        ]);
    }

    /// Drops every IPv4 packet the server sends to the client but those that
    /// carry `mark` (`SO_MARK`). Undone by [`Self::unmute_server`].
    pub fn mute_server_but_marked(&self, mark: u32) {
        let mark = mark.to_string();
        self.server_output_drops(&[&["ip", "daddr", Self::CLIENT_V4, "meta", "mark", "!=", &mark]]);
    }

    /// A table of the server's output with a rule dropping what each of
    /// `matches` matches.
    fn server_output_drops(&self, matches: &[&[&str]]) {
        let ns = &self.server;
        ns.nft(&["add", "table", "inet", "kalive_test"])
            .expect("nft");
        ns.nft(&[
            "add",
            "chain",
            "inet",
            "kalive_test",
            "output",
            "{ type filter hook output priority 0; policy accept; }",
        ])
        .expect("nft");
        for m in matches {
            let mut rule = vec!["add", "rule", "inet", "kalive_test", "output"];
            rule.extend_from_slice(m);
            rule.push("drop");
            ns.nft(&rule).expect("nft");
        }
    }

    pub fn unmute_server(&self) {
        self.server
            .nft(&["delete", "table", "inet", "kalive_test"])
            .expect("nft");
    }

    /// Drops every packet the client receives from the server: a dead peer, as
    /// far as the client can tell.
    pub fn kill_server(&self) {
        let ns = &self.client;
        ns.nft(&["add", "table", "inet", "kalive_test"])
            .expect("nft");
        ns.nft(&[
            "add",
            "chain",
            "inet",
            "kalive_test",
            "input",
            "{ type filter hook input priority 0; policy accept; }",
        ])
        .expect("nft");
        ns.nft(&[
            "add",
            "rule",
            "inet",
            "kalive_test",
            "input",
            "ip",
            "saddr",
            Self::SERVER_V4,
            "drop",
        ])
        .expect("nft");
        ns.nft(&[
            "add",
            "rule",
            "inet",
            "kalive_test",
            "input",
            "ip6",
            "saddr",
            Self::SERVER_V6,
            "drop",
        ])
        .expect("nft");
    }
}

/// Lines a child writes to a pipe, collected by a thread.
pub fn line_channel(pipe: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// How long kalive may take to start (see [`Kalive::start`]).
pub const START_DEADLINE: Duration = Duration::from_secs(90);

/// A `kalive --format json` a test reads records from: its own (stopped, with
/// SIGINT then SIGKILL, on drop), or a view of the one the test binary shares.
///
/// Why share: on this project's 6.18 host, while another BPF program was
/// attached to or detached from `timer:timer_start` (another kalive starting
/// or stopping), kalive was seen to miss whole timer callbacks, no hook of it
/// running and no skip counted (2026-11-30; see the closing notes). Tests that
/// each started and stopped their own kalive made each other miss probes. So
/// tests with default arguments share one kalive, started once; a test that
/// needs its own runs alone (the [`KERNEL`] lock, taken for writing).
pub struct Kalive {
    source: Source,
    /// Every record read so far (for a view: since it was made).
    pub records: Vec<Value>,
}

enum Source {
    Own {
        child: Child,
        stdout: Receiver<String>,
        stderr: Arc<Mutex<String>>,
        _alone: Rc<RwLockWriteGuard<'static, ()>>,
    },
    Shared {
        /// Records of the shared kalive already copied into `records`.
        next: usize,
        _kernel: RwLockReadGuard<'static, ()>,
    },
}

/// The kalive a test binary shares, started by the first test that asks
/// ([`Kalive::shared`]) and stopped when the binary exits.
struct SharedKalive {
    child: Mutex<Option<Child>>,
    pid: u32,
    /// Every line it wrote, parsed; or why a line was not JSON.
    records: Mutex<Result<Vec<Value>, String>>,
    arrived: Condvar,
    closed: AtomicBool,
    stderr: Arc<Mutex<String>>,
}

static SHARED: OnceLock<SharedKalive> = OnceLock::new();

/// Spawns kalive and waits until it says it is tracing. Returns it with its
/// stdout lines and its stderr so far (kept up to date).
fn spawn_kalive(
    args: &[&str],
    env: &[(&str, &str)],
) -> (Child, Receiver<String>, Arc<Mutex<String>>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kalive"))
        .args(["--format", "json"])
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning kalive");
    let stdout = line_channel(child.stdout.take().expect("stdout"));
    let stderr_lines = line_channel(child.stderr.take().expect("stderr"));
    let stderr = Arc::new(Mutex::new(String::new()));
    let (ready_tx, ready_rx) = mpsc::channel();
    {
        let stderr = Arc::clone(&stderr);
        thread::spawn(move || {
            for line in stderr_lines {
                let ready = line.starts_with("kalive: tracing");
                {
                    let mut all = stderr.lock().expect("stderr lock");
                    all.push_str(&line);
                    all.push('\n');
                }
                if ready {
                    let _ = ready_tx.send(());
                }
            }
        });
    }
    // Seconds on an emulated CPU, where the verifier's checks of kalive's
    // programs take most of it.
    if ready_rx.recv_timeout(START_DEADLINE).is_err() {
        let status = child.try_wait().ok().flatten();
        let said = stderr.lock().expect("stderr lock").clone();
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "kalive did not start tracing within {START_DEADLINE:?} (exit: {status:?}); \
             stderr:\n{said}"
        );
    }
    (child, stdout, stderr)
}

/// Stops the shared kalive as the test binary exits (`atexit`), so that the
/// next binary starts with none of its programs attached.
extern "C" fn stop_shared() {
    if let Some(shared) = SHARED.get()
        && let Some(mut child) = shared
            .child
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    {
        signal(&child, libc::SIGINT);
        let _ = wait_timeout(&mut child, Duration::from_secs(10));
    }
}

impl Kalive {
    /// A view of the kalive this test binary shares (default arguments), from
    /// now on. Tests holding one run together.
    pub fn shared() -> Self {
        if SHARED.get().is_none() {
            // Started while no test reads records, since starting can make a
            // running kalive miss callbacks (see the type's documentation).
            let _alone = alone();
            if SHARED.get().is_none() {
                let (child, stdout, stderr) = spawn_kalive(&[], &[]);
                let pid = child.id();
                // SAFETY: registering a plain function to run at exit.
                unsafe { libc::atexit(stop_shared) };
                let _ = SHARED.set(SharedKalive {
                    child: Mutex::new(Some(child)),
                    pid,
                    records: Mutex::new(Ok(Vec::new())),
                    arrived: Condvar::new(),
                    closed: AtomicBool::new(false),
                    stderr,
                });
                thread::spawn(move || file_shared_records(stdout));
            }
        }
        let kernel = shared();
        let next = shared_kalive()
            .records
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map_or(0, Vec::len);
        Self {
            source: Source::Shared {
                next,
                _kernel: kernel,
            },
            records: Vec::new(),
        }
    }

    /// Starts a kalive of this test's own and waits until it says it is
    /// tracing. The test runs alone until it is dropped.
    pub fn start(args: &[&str]) -> Self {
        Self::start_with_env(args, &[])
    }

    /// [`Self::start`] with extra environment variables for kalive.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        let alone = alone();
        let (child, stdout, stderr) = spawn_kalive(args, env);
        Self {
            source: Source::Own {
                child,
                stdout,
                stderr,
                _alone: alone,
            },
            records: Vec::new(),
        }
    }

    pub fn stderr(&self) -> String {
        let stderr = match &self.source {
            Source::Own { stderr, .. } => stderr,
            Source::Shared { .. } => &shared_kalive().stderr,
        };
        stderr.lock().expect("stderr lock").clone()
    }

    /// Reads records until `done(records)` holds; panics at the deadline with
    /// what was seen. `done` is asked after each batch of lines, not each line.
    pub fn wait_until(&mut self, timeout: Duration, done: impl Fn(&[Value]) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            let open = self.pull(deadline.saturating_duration_since(Instant::now()));
            if done(&self.records) {
                return;
            }
            let status = if open { None } else { Some(self.exit_status()) };
            assert!(
                open,
                "kalive exited ({status:?}); records so far:\n{}\nstderr:\n{}",
                self.dump(),
                self.stderr()
            );
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?}; records so far:\n{}\nstderr:\n{}",
                self.dump(),
                self.stderr()
            );
        }
    }

    /// Waits up to `wait` for records, and takes every record there is.
    /// Returns whether kalive may still write more.
    fn pull(&mut self, wait: Duration) -> bool {
        match &mut self.source {
            Source::Own { stdout, .. } => {
                let mut lines = Vec::new();
                let open = match stdout.recv_timeout(wait) {
                    Ok(line) => {
                        lines.push(line);
                        while let Ok(line) = stdout.try_recv() {
                            lines.push(line);
                        }
                        true
                    }
                    Err(RecvTimeoutError::Timeout) => true,
                    Err(RecvTimeoutError::Disconnected) => false,
                };
                for line in lines {
                    match record(&line) {
                        Ok((_, value)) => self.records.push(value),
                        Err(err) => panic!("{err}"),
                    }
                }
                open
            }
            Source::Shared { next, .. } => {
                let shared = shared_kalive();
                let mut all = shared
                    .records
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if all.as_ref().is_ok_and(|list| list.len() == *next)
                    && !shared.closed.load(Ordering::SeqCst)
                {
                    all = shared
                        .arrived
                        .wait_timeout(all, wait)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
                let list = match all.as_ref() {
                    Ok(list) => list,
                    Err(why) => panic!("{why}"),
                };
                self.records.extend_from_slice(&list[*next..]);
                *next = list.len();
                drop(all);
                !shared.closed.load(Ordering::SeqCst)
            }
        }
    }

    fn exit_status(&mut self) -> Option<ExitStatus> {
        match &mut self.source {
            Source::Own { child, .. } => child.try_wait().ok().flatten(),
            Source::Shared { .. } => None,
        }
    }

    /// Reads every record kalive wrote until it exited (after [`Self::stop`]).
    pub fn drain(&mut self) {
        assert!(
            matches!(self.source, Source::Own { .. }),
            "the shared kalive runs until the test binary exits"
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.pull(deadline.saturating_duration_since(Instant::now()))
            && Instant::now() < deadline
        {}
    }

    /// Records of one socket, by cookie.
    pub fn socket(&self, cookie: u64) -> Vec<&Value> {
        self.records
            .iter()
            .filter(|r| r["cookie"].as_u64() == Some(cookie))
            .collect()
    }

    pub fn dump(&self) -> String {
        self.records
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// SIGINT, then the exit status (SIGKILL after 10 s).
    pub fn stop(&mut self) -> ExitStatus {
        self.stop_with(libc::SIGINT)
    }

    /// Signal `sig`, then the exit status (SIGKILL after 10 s). Not for the
    /// shared kalive.
    pub fn stop_with(&mut self, sig: i32) -> ExitStatus {
        let Source::Own { child, .. } = &mut self.source else {
            panic!("the shared kalive runs until the test binary exits");
        };
        signal(child, sig);
        wait_timeout(child, Duration::from_secs(10))
    }

    pub fn pid(&self) -> u32 {
        match &self.source {
            Source::Own { child, .. } => child.id(),
            Source::Shared { .. } => shared_kalive().pid,
        }
    }

    /// Waits (up to 10 s) until stderr has a line containing `text`; returns it.
    pub fn stderr_line(&self, text: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(line) = self.stderr().lines().find(|l| l.contains(text)) {
                return line.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "no {text:?} on stderr:\n{}",
                self.stderr()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

fn shared_kalive() -> &'static SharedKalive {
    SHARED.get().expect("the shared kalive was started")
}

/// A line kalive wrote, read as the typed record it must be (kalive's own
/// `Event`) and as JSON for the tests to look into; or why it is neither.
pub fn record(line: &str) -> Result<(Event, Value), String> {
    kalive_testkit::records::parse_with_json(line).map_err(|err| format!("{err:#}"))
}

/// Files the shared kalive's records as they come, for every view to read.
fn file_shared_records(stdout: Receiver<String>) {
    let shared = shared_kalive();
    for line in stdout {
        let mut records = shared
            .records
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Ok(list) = records.as_mut() {
            match record(&line) {
                Ok((_, value)) => list.push(value),
                Err(err) => *records = Err(err),
            }
        }
        drop(records);
        shared.arrived.notify_all();
    }
    shared.closed.store(true, Ordering::SeqCst);
    shared.arrived.notify_all();
}

impl Drop for Kalive {
    fn drop(&mut self) {
        if let Source::Own { child, .. } = &mut self.source
            && child.try_wait().ok().flatten().is_none()
        {
            signal(child, libc::SIGINT);
            let _ = wait_timeout(child, Duration::from_secs(10));
        }
    }
}

pub fn signal(child: &Child, sig: i32) {
    let pid = i32::try_from(child.id()).expect("pid fits");
    // SAFETY: sending a signal to our own child.
    unsafe { libc::kill(pid, sig) };
}

pub fn wait_timeout(child: &mut Child, timeout: Duration) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("waiting for a child") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return child.wait().expect("waiting for a killed child");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// The `tcp_peer` helper (this test binary in its helper role, see `peer.rs`),
/// running in a namespace; killed on drop.
pub struct Peer {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    pub pid: u32,
}

/// `command` run as uid and gid 65534 (std drops root's supplementary
/// groups with the uid): from root, the change of uid drops every
/// capability (no setpriv needed, which the VM does not carry).
pub fn as_nobody(mut command: Command) -> Command {
    use std::os::unix::process::CommandExt as _;
    command.gid(65534).uid(65534);
    command
}

/// What `tcp_peer` reported about one of its sockets.
#[derive(Debug, Clone)]
pub struct SocketInfo {
    pub cookie: u64,
    pub pid: u32,
    pub local: std::net::SocketAddr,
    pub peer: std::net::SocketAddr,
}

impl Peer {
    pub fn spawn(ns: &Netns, args: &[&str]) -> Self {
        let exe = std::env::current_exe().expect("test binary path");
        Self::spawn_with(ns.command(exe.to_str().expect("utf-8 path")), args)
    }

    /// [`Self::spawn`], the helper in cgroup `cgroup` (a directory of the
    /// cgroup file system), which it joins before anything else.
    pub fn spawn_in_cgroup(ns: &Netns, cgroup: &std::path::Path, args: &[&str]) -> Self {
        use std::os::{fd::AsRawFd as _, unix::process::CommandExt as _};
        let exe = std::env::current_exe().expect("test binary path");
        let mut command = ns.command(exe.to_str().expect("utf-8 path"));
        // Opened here: the helper's /sys is its namespace's (see peer.rs).
        let procs = std::fs::OpenOptions::new()
            .write(true)
            .open(cgroup.join("cgroup.procs"))
            .expect("opening cgroup.procs");
        let fd = procs.as_raw_fd();
        command.env("KALIVE_TEST_CGROUP_FD", fd.to_string());
        // SAFETY: fcntl is async-signal-safe; the descriptor stays open in
        // this process until the child has been spawned.
        unsafe {
            command.pre_exec(move || {
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let peer = Self::spawn_with(command, args);
        drop(procs);
        peer
    }

    /// `tcp_peer` as another user (uid and gid 65534, no capabilities), in
    /// this process's namespace.
    pub fn spawn_as_nobody(args: &[&str]) -> Self {
        let exe = std::env::current_exe().expect("test binary path");
        Self::spawn_with(as_nobody(Command::new(exe)), args)
    }

    /// `command` (which execs the helper) with `args`.
    fn spawn_with(mut command: Command, args: &[&str]) -> Self {
        let mut child = command
            .args(args)
            .env("KALIVE_TEST_PEER", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawning tcp_peer");
        let lines = line_channel(child.stdout.take().expect("stdout"));
        let stdin = child.stdin.take();
        // `ip netns exec` and setpriv exec the helper: the pid is the helper's.
        let pid = child.id();
        Self {
            child,
            stdin,
            lines,
            pid,
        }
    }

    /// Waits for a line starting with `prefix`.
    pub fn expect(&mut self, prefix: &str) -> String {
        loop {
            match self.lines.recv_timeout(Duration::from_secs(30)) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(_) => {}
                Err(err) => panic!(
                    "tcp_peer did not print {prefix:?} ({err}; exit: {:?})",
                    self.child.try_wait()
                ),
            }
        }
    }

    /// Closes the helper's stdin (a `serve` helper then exits).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Waits for `ROLE cookie=.. pid=.. local=.. peer=..`.
    pub fn socket(&mut self, role: &str) -> SocketInfo {
        let line = self.expect(&format!("{role} "));
        let field = |key: &str| {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
                .unwrap_or_else(|| panic!("{key} missing in {line:?}"))
                .to_owned()
        };
        SocketInfo {
            cookie: field("cookie").parse().expect("cookie"),
            pid: field("pid").parse().expect("pid"),
            local: field("local").parse().expect("local"),
            peer: field("peer").parse().expect("peer"),
        }
    }

    pub fn send(&mut self, command: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{command}").expect("writing to tcp_peer");
    }

    pub fn wait(&mut self) -> ExitStatus {
        wait_timeout(&mut self.child, Duration::from_secs(30))
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
    /// An IPv6 socket talking to an IPv4 peer (`::ffff:a.b.c.d`).
    Mapped,
}

impl Family {
    pub fn server_addr(self) -> String {
        match self {
            Self::V4 => format!("{}:7777", Topology::SERVER_V4),
            Self::V6 => format!("[{}]:7777", Topology::SERVER_V6),
            Self::Mapped => format!("[::ffff:{}]:7777", Topology::SERVER_V4),
        }
    }

    pub fn listen_addr(self) -> String {
        match self {
            Self::V4 | Self::Mapped => format!("{}:7777", Topology::SERVER_V4),
            Self::V6 => format!("[{}]:7777", Topology::SERVER_V6),
        }
    }

    pub const fn json(self) -> &'static str {
        match self {
            Self::V4 => "ipv4",
            Self::V6 | Self::Mapped => "ipv6",
        }
    }
}

/// Tests share the kernel. Those that read the shared kalive run together
/// (read); one that starts or stops a kalive of its own, or any other BPF
/// program, runs alone (write): see [`Kalive`] for why.
pub static KERNEL: RwLock<()> = RwLock::new(());

pub fn shared() -> RwLockReadGuard<'static, ()> {
    KERNEL.read().unwrap_or_else(PoisonError::into_inner)
}

thread_local! {
    static ALONE: RefCell<Weak<RwLockWriteGuard<'static, ()>>> = const { RefCell::new(Weak::new()) };
}

/// Runs this test alone until every clone of the result is dropped; a test
/// that already does so gets another clone (it may start several kalives).
pub fn alone() -> Rc<RwLockWriteGuard<'static, ()>> {
    ALONE.with(|held| {
        if let Some(guard) = held.borrow().upgrade() {
            return guard;
        }
        let guard = Rc::new(KERNEL.write().unwrap_or_else(PoisonError::into_inner));
        *held.borrow_mut() = Rc::downgrade(&guard);
        guard
    })
}

/// A server holding one connection, and a client connected to it.
pub struct Connection {
    pub net: Topology,
    pub server: Peer,
    pub client: Peer,
    pub info: SocketInfo,
}

pub fn connect(tag: &str, family: Family, client_args: &[&str]) -> Connection {
    connect_from(tag, family, client_args, None)
}

/// [`connect`], the client in cgroup `cgroup` when given.
pub fn connect_from(
    tag: &str,
    family: Family,
    client_args: &[&str],
    cgroup: Option<&std::path::Path>,
) -> Connection {
    connect_on(Topology::new(tag), family, client_args, cgroup)
}

/// [`connect_from`] over `net`, a topology the test prepared.
pub fn connect_on(
    net: Topology,
    family: Family,
    client_args: &[&str],
    cgroup: Option<&std::path::Path>,
) -> Connection {
    let mut server = Peer::spawn(&net.server, &["serve", &family.listen_addr()]);
    server.expect("listening");
    let addr = family.server_addr();
    let mut args = vec!["client", addr.as_str()];
    args.extend_from_slice(client_args);
    let mut client = match cgroup {
        Some(cgroup) => Peer::spawn_in_cgroup(&net.client, cgroup, &args),
        None => Peer::spawn(&net.client, &args),
    };
    let info = client.socket("connected");
    server.socket("server");
    Connection {
        net,
        server,
        client,
        info,
    }
}

/// A child the test spawned itself, killed on drop if it still runs (a test
/// that fails must not leave kalive, and its programs, behind).
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A process the test did not spawn itself (a helper's forked child), killed on
/// drop.
pub struct Reap(pub u32);

impl Drop for Reap {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.0) {
            // SAFETY: signalling a process this test made.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// `forked child=PID` from a helper: the child's pid, reaped on drop.
pub fn forked_child(peer: &mut Peer) -> Reap {
    let line = peer.expect("forked child=");
    Reap(
        line.trim_start_matches("forked child=")
            .parse()
            .expect("child pid"),
    )
}

pub struct Stuck {
    pub net: Topology,
    pub server: Peer,
    pub client: Peer,
    pub info: SocketInfo,
    /// The client namespace's `TcpExtTCPWinProbe` before the window shut:
    /// every probe of this connection counts from here.
    pub winprobes0: u64,
}

/// A client whose peer advertises a zero window: the server never reads (4 KiB
/// receive buffer) and the client sends until its 4 KiB send buffer is full.
/// `client_args` are extra options for the client (set at `go`).
pub fn stuck(
    tag: &str,
    family: Family,
    client_args: &[&str],
    before_fill: impl FnOnce(&Topology),
) -> Stuck {
    let net = Topology::new(tag);
    // Answer every probe: the out-of-window probe is otherwise answered at most
    // every 500 ms.
    sh_sysctl(&net.server, "net.ipv4.tcp_invalid_ratelimit=0");
    let listen = family.listen_addr();
    let mut server = Peer::spawn(&net.server, &["serve", &listen, "--rcvbuf", "4096"]);
    server.expect("listening");
    let target = family.server_addr();
    let mut args = vec![
        "client",
        target.as_str(),
        "--no-keepalive",
        "--sndbuf",
        "4096",
    ];
    args.extend_from_slice(client_args);
    let mut client = Peer::spawn(&net.client, &args);
    let info = client.socket("connected");
    server.socket("server");
    client.send("go");
    client.expect("configured");
    before_fill(&net);
    let winprobes0 = net.client.counter("TcpExtTCPWinProbe").expect("nstat");
    client.send("fill");
    assert!(
        client.expect("filled").ends_with("until=11"),
        "send until EAGAIN"
    );
    Stuck {
        net,
        server,
        client,
        info,
        winprobes0,
    }
}

pub fn sh_sysctl(ns: &Netns, setting: &str) {
    sh(
        "ip",
        &["netns", "exec", ns.name(), "sysctl", "-q", "-w", setting],
    );
}

/// An address on loopback no one listens on now.
pub fn free_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").to_string()
}

/// `/metrics` from `addr`, as a scraper gets it.
pub fn scrape(addr: &str) -> String {
    kalive_testkit::output(Command::new("curl").args([
        "--silent",
        "--show-error",
        "--fail",
        "--max-time",
        "10",
        &format!("http://{addr}/metrics"),
    ]))
    .expect("curl")
}
