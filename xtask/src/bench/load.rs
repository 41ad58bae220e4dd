//! Load for the benchmarks, in network namespaces of their own: a loopback
//! request/response loop (many timer arms per second), and many idle
//! keepalive connections to a peer that stops answering.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};

use kalive_testkit::sockopt::Keepalive;

use crate::cmd::KillOnDrop;

pub use kalive_testkit::Netns;

/// A global sysctl raised for a while, restored on drop.
pub struct Sysctl {
    path: String,
    old: String,
}

impl Sysctl {
    /// Raises `/proc/sys/KEY` to at least `value`.
    pub fn raise(key: &str, value: usize) -> Result<Self> {
        let path = format!("/proc/sys/{key}");
        let old = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let current: usize = old
            .trim()
            .parse()
            .with_context(|| format!("{path}: {old}"))?;
        if value > current {
            std::fs::write(&path, value.to_string()).with_context(|| format!("writing {path}"))?;
        }
        Ok(Self { path, old })
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.path, self.old.trim());
    }
}

/// Size of each request and each response.
const MESSAGE: usize = 64;

/// `conns` loopback connections in `ns`, each a client thread sending a small
/// request and waiting for the echo, for `secs`. Returns transactions per second.
pub fn request_response(ns: &Netns, conns: usize, secs: Duration) -> Result<f64> {
    ns.run(move || {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let go_rx = Arc::new(std::sync::Mutex::new(go_rx));
        let mut threads = Vec::new();
        for _ in 0..conns {
            let client = TcpStream::connect(addr)?;
            let (server, _) = listener.accept()?;
            client.set_nodelay(true)?;
            server.set_nodelay(true)?;
            threads.push(thread::spawn(move || echo(server)));
            let (stop, done, go) = (Arc::clone(&stop), Arc::clone(&done), Arc::clone(&go_rx));
            threads.push(thread::spawn(move || {
                // Wait for the start, then ping-pong until told to stop.
                drop(go.lock().map(|rx| rx.recv()));
                let n = ping(client, &stop);
                done.fetch_add(n, Ordering::Relaxed);
            }));
        }
        let start = Instant::now();
        for _ in 0..conns {
            go_tx.send(())?;
        }
        thread::sleep(secs);
        stop.store(true, Ordering::Relaxed);
        let elapsed = start.elapsed();
        for t in threads {
            t.join().map_err(|_| anyhow!("a load thread panicked"))?;
        }
        #[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
        Ok(done.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64())
    })
    .join()
    .map_err(|_| anyhow!("the load thread panicked"))?
}

fn ping(mut s: TcpStream, stop: &AtomicBool) -> u64 {
    let mut buf = [7u8; MESSAGE];
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        if s.write_all(&buf).is_err() || s.read_exact(&mut buf).is_err() {
            break;
        }
        n += 1;
    }
    let _ = s.shutdown(std::net::Shutdown::Write);
    n
}

fn echo(mut s: TcpStream) {
    let mut buf = [0u8; MESSAGE];
    while s.read_exact(&mut buf).is_ok() {
        if s.write_all(&buf).is_err() {
            break;
        }
    }
}

/// Two namespaces joined by a veth pair: idle keepalive connections from the
/// client to a server that can be made to stop answering.
pub struct Pair {
    pub client: Netns,
    pub server: Netns,
    pub addr: SocketAddr,
}

/// The server's ports: one (client address, server address, port) tuple has
/// room for 64k connections, so 100k take two.
pub const SERVER_PORTS: [u16; 2] = [7000, 7001];

impl Pair {
    pub fn new() -> Result<Self> {
        let client = Netns::new("c")?;
        let server = Netns::new("s")?;
        let peer = format!("kbs{}", std::process::id());
        client.ip(&["link", "add", "eth0", "type", "veth", "peer", "name", &peer])?;
        client.ip(&["link", "set", &peer, "netns", server.name()])?;
        server.ip(&["link", "set", &peer, "name", "eth0"])?;
        client.ip(&["addr", "add", "10.78.0.1/24", "dev", "eth0"])?;
        server.ip(&["addr", "add", "10.78.0.2/24", "dev", "eth0"])?;
        client.ip(&["link", "set", "eth0", "up"])?;
        server.ip(&["link", "set", "eth0", "up"])?;
        // Room for 64k connections per server port from one address, and for
        // their handshakes.
        client.set_sysctl("net.ipv4.ip_local_port_range", "1024 65535")?;
        server.set_sysctl("net.core.somaxconn", "65535")?;
        server.set_sysctl("net.ipv4.tcp_max_syn_backlog", "65535")?;
        Ok(Self {
            client,
            server,
            addr: SocketAddr::from(([10, 78, 0, 2], SERVER_PORTS[0])),
        })
    }

    /// Packets the client's end of the veth dropped on the way out.
    pub fn client_tx_dropped(&self) -> Result<u64> {
        let out = self
            .client
            .exec("ip", &["-s", "-j", "link", "show", "eth0"])?;
        let links: serde_json::Value = serde_json::from_str(&out).context("ip -j")?;
        links[0]["stats64"]["tx"]["dropped"]
            .as_u64()
            .ok_or_else(|| anyhow!("no tx drop count in {out}"))
    }

    /// A process in the client namespace until dropped.
    pub fn client_process(&self) -> Result<KillOnDrop> {
        let child = self
            .client
            .command("sleep")
            .arg("infinity")
            .stdin(std::process::Stdio::null())
            .spawn()
            .context("a process in the client namespace")?;
        Ok(KillOnDrop(child))
    }

    /// The server stops answering: everything to its ports is dropped.
    pub fn mute_server(&self) -> Result<()> {
        self.server.exec("nft", &["add table inet kbench"])?;
        self.server.exec(
            "nft",
            &["add chain inet kbench input { type filter hook input priority 0; }"],
        )?;
        let [a, b] = SERVER_PORTS;
        let rule = format!("add rule inet kbench input tcp dport {{ {a}, {b} }} drop");
        self.server.exec("nft", &[&rule]).map(drop)
    }
}

/// Connections per holder process: what its hard descriptor limit allows
/// (20000 here, which only `CAP_SYS_RESOURCE` could raise).
fn per_holder() -> usize {
    let hard = fd_limit().map_or(1024, |l| l.rlim_max);
    usize::try_from(hard.saturating_sub(256))
        .unwrap_or(usize::MAX)
        .clamp(256, 50_000)
}

fn fd_limit() -> Result<libc::rlimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit with a valid struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getrlimit");
    }
    Ok(limit)
}

/// The soft descriptor limit up to the hard one (no privilege needed).
fn raise_fd_limit() -> Result<()> {
    let mut limit = fd_limit()?;
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: setrlimit with a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit) } != 0 {
        return Err(std::io::Error::last_os_error()).context("setrlimit");
    }
    Ok(())
}

/// Open keepalive connections, held by child processes in the client
/// namespace. The server never accepts them: handshakes complete into its
/// accept queue, which answers probes until the server is muted, and needs no
/// descriptors. Closing resets them.
pub struct Connections {
    holders: Vec<Holder>,
    _listener: thread::JoinHandle<Result<()>>,
    stop_listener: mpsc::Sender<()>,
}

/// A connection holder process, and its stdout (one line per command).
struct Holder {
    child: Child,
    out: BufReader<std::process::ChildStdout>,
}

impl Holder {
    /// Sends `command` and waits for the holder's answer, which must be `done`.
    fn ask(&mut self, command: &str) -> Result<()> {
        let stdin = self.child.stdin.as_mut().expect("piped");
        writeln!(stdin, "{command}")?;
        stdin.flush()?;
        let mut line = String::new();
        self.out.read_line(&mut line)?;
        if line.trim() != "done" {
            bail!("a connection holder failed {command:?}: {line:?}");
        }
        Ok(())
    }
}

impl Connections {
    /// `n` connections from the client side of `pair`, each with keepalive
    /// after `idle` s, probing every `intvl` s, `cnt` probes before giving up.
    pub fn open(pair: &Pair, n: usize, idle: u32, intvl: u32, cnt: u32) -> Result<Self> {
        Self::open_in(pair, n, per_holder(), idle, intvl, cnt, false)
    }

    /// [`Self::open`], `per` connections to a holder, each holder named apart
    /// (`h0`, `h1`, ...) when `named`: a workload of its own in the metrics.
    pub fn open_in(
        pair: &Pair,
        n: usize,
        per: usize,
        idle: u32,
        intvl: u32,
        cnt: u32,
        named: bool,
    ) -> Result<Self> {
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop_listener, stop_rx) = mpsc::channel::<()>();
        let listener = pair.server.run(move || {
            let listeners = SERVER_PORTS
                .iter()
                .map(|&port| listen(port))
                .collect::<Result<Vec<_>>>()?;
            ready_tx.send(())?;
            // Listening until told: the connections live in their queues.
            let _ = stop_rx.recv();
            drop(listeners);
            Ok(())
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .context("the server did not start listening")?;
        // This very binary, through the kernel's link to it: `cargo xtask
        // test` rebuilds xtask's binary while this one runs (its tests need it
        // with other features), and the path then names a deleted file.
        let exe = format!("/proc/{}/exe", std::process::id());
        let mut conns = Self {
            holders: Vec::new(),
            _listener: listener,
            stop_listener,
        };
        // Each holder connects to one port, in turn: no port has more than
        // its share of the connections.
        let mut left = n;
        let mut ports = SERVER_PORTS.iter().cycle();
        while left > 0 {
            let share = left.min(per.min(per_holder()));
            left -= share;
            let mut addr = pair.addr;
            addr.set_port(*ports.next().expect("cycle"));
            let mut command = Command::new("ip");
            command
                .args(["netns", "exec", pair.client.name()])
                .arg(&exe)
                .args(["bench-hold", &addr.to_string()])
                .args([share, idle as usize, intvl as usize, cnt as usize].map(|v| v.to_string()));
            if named {
                command.arg(format!("--comm=h{}", conns.holders.len()));
            }
            let mut child = command
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .context("starting a connection holder")?;
            let mut out = BufReader::new(child.stdout.take().expect("piped"));
            let mut line = String::new();
            out.read_line(&mut line)?;
            conns.holders.push(Holder { child, out });
            if line.trim() != "ready" {
                bail!("a connection holder failed: {line:?}");
            }
        }
        Ok(conns)
    }

    /// Sets every connection's keepalive idle time to `secs` (`TCP_KEEPIDLE`;
    /// on a connection idle longer than that, its timer fires at once).
    pub fn set_idle(&mut self, secs: u32) -> Result<()> {
        for holder in &mut self.holders {
            holder.ask(&format!("idle {secs}"))?;
        }
        Ok(())
    }

    /// Resets every connection; returns once the holders have exited.
    pub fn close(mut self) -> Result<()> {
        for Holder { mut child, .. } in self.holders.drain(..) {
            drop(child.stdin.take());
            let status = child.wait()?;
            if !status.success() {
                bail!("a connection holder failed ({status})");
            }
        }
        Ok(())
    }
}

impl Drop for Connections {
    fn drop(&mut self) {
        for holder in &mut self.holders {
            let _ = holder.child.kill();
            let _ = holder.child.wait();
        }
        let _ = self.stop_listener.send(());
    }
}

/// `cargo xtask bench-hold ADDR N IDLE INTVL CNT` (run by the benchmark in the
/// client namespace): opens N keepalive connections to ADDR, says "ready",
/// holds them until stdin closes, then resets them. A line `idle S` on stdin
/// sets their `TCP_KEEPIDLE` to S seconds; it answers `done`.
pub fn hold(
    addr: SocketAddr,
    n: usize,
    idle: i32,
    intvl: i32,
    cnt: i32,
    comm: Option<&str>,
) -> Result<()> {
    if let Some(comm) = comm {
        let name = std::ffi::CString::new(comm).context("a process name without NUL")?;
        // SAFETY: PR_SET_NAME with a NUL-terminated name (truncated to 15 bytes).
        unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
    }
    raise_fd_limit()?;
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        let s = TcpStream::connect(addr).context("connecting")?;
        let fd = s.as_raw_fd();
        Keepalive {
            idle: Some(idle),
            intvl: Some(intvl),
            cnt: Some(cnt),
            user_timeout: None,
        }
        .apply(fd, true)
        .context("setting keepalive")?;
        clients.push(s);
    }
    println!("ready");
    std::io::stdout().flush()?;
    for line in std::io::stdin().lines() {
        let line = line?;
        let idle: i32 = line
            .strip_prefix("idle ")
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("unknown command {line:?}"))?;
        let keepalive = Keepalive {
            idle: Some(idle),
            intvl: None,
            cnt: None,
            user_timeout: None,
        };
        for s in &clients {
            keepalive
                .apply(s.as_raw_fd(), false)
                .context("TCP_KEEPIDLE")?;
        }
        println!("done");
        std::io::stdout().flush()?;
    }
    for s in &clients {
        kalive_testkit::sockopt::reset_on_close(s.as_raw_fd()).context("SO_LINGER")?;
    }
    Ok(())
}

/// A listener with a backlog for tens of thousands of handshakes.
fn listen(port: u16) -> Result<TcpListener> {
    let listener = TcpListener::bind(("0.0.0.0", port)).context("binding the server")?;
    // SAFETY: listen(2) on a bound socket we own.
    if unsafe { libc::listen(listener.as_raw_fd(), 65535) } != 0 {
        return Err(std::io::Error::last_os_error()).context("listen");
    }
    Ok(listener)
}
