//! `tcp_peer`: a TCP client/server for kalive's end-to-end tests.
//!
//! It is not a separate binary: every test binary becomes it when started with
//! `KALIVE_TEST_PEER=1` (see [`ENTRY`]), so the helper is always built together
//! with, and from the same sources as, the tests that use it. Tests run it inside
//! a network namespace (`ip netns exec NS <test binary> ARGS`); it names itself
//! `tcp_peer`, reports what the tests need to know about its sockets as
//! `key=value` lines on stdout, and takes commands on stdin, so that a test
//! decides when each step happens.
//!
//! ```text
//! tcp_peer pair ADDR      listen, connect, accept; on `close`: close both
//! tcp_peer serve ADDR [--idle S --intvl S --cnt N] [--fork-accept] [--rcvbuf B]
//!     accept one connection and hold it, not reading until `read`;
//!     stdin: `send N`, `read`, `shutdown` (a FIN), `abort`
//! tcp_peer client ADDR [--idle S] [--intvl S] [--cnt N] [--user-timeout MS]
//!                      [--before-connect] [--no-cookie] [--thread] [--comm NAME]
//!                      [--fork handoff|share] [--no-keepalive] [--sndbuf B]
//!                      [--comm-hex HEX] [--hold] [--no-read] [--late-error MS]
//!     connect; set the keepalive options after `go` (or before connecting),
//!     SO_KEEPALIVE first and TCP_KEEPIDLE last;
//!     then read until the connection fails and print `recv_error errno=N`
//!     (`recv_eof` at the peer's FIN; with `--hold`, then wait in CLOSE_WAIT
//!     for an error; with `--no-read`, only wait for an error, never read;
//!     `--late-error`: take the error, which clears it, MS after it shows).
//!     stdin: `disable` (SO_KEEPALIVE off), `burst N` (TCP_KEEPIDLE N times),
//!     `send` (one byte), `child send` (one byte, from the forked child),
//!     `fill` (send until the send buffer is full)
//! tcp_peer churn ADDR SECS
//!     for SECS seconds: connect to itself at ADDR, turn keepalive on, close;
//!     then print `churned N`
//! tcp_peer syn ADDR --syncnt N [--user-timeout MS]
//!     connect without waiting (TCP_SYNCNT N first), print
//!     `connecting cookie=.. pid=.. local=.. peer=..`, then wait for the
//!     connect's outcome and print `connect_error errno=N` (0: connected)
//! tcp_peer orphan ADDR
//!     connect and report it; on `go` send one byte and close the socket,
//!     which the kernel keeps (an orphan) while the byte is unacknowledged;
//!     print `closed`, then wait for stdin to end
//! tcp_peer workloads ADDR N
//!     listen at ADDR; on each `wave`: fork N processes, each named `wK` (K
//!     counting on across waves), connecting to it with a 1 s keepalive and
//!     exiting after its first probe is answered; print `wave done`
//! ```

use std::{
    io::{self, BufRead as _, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    process::ExitCode,
};

/// Runs before `main` (an ELF constructor): when `KALIVE_TEST_PEER=1`, this
/// process is the helper, not a test binary; it runs and exits. glibc passes
/// constructors `argc`/`argv`, which std may not have captured yet.
#[used]
#[unsafe(link_section = ".init_array")]
static ENTRY: extern "C" fn(libc::c_int, *const *const libc::c_char) = entry;

extern "C" fn entry(count: libc::c_int, vector: *const *const libc::c_char) {
    // SAFETY: a NUL-terminated name; reading the environment before main is fine.
    let flag = unsafe { libc::getenv(c"KALIVE_TEST_PEER".as_ptr()) };
    // SAFETY: getenv returned NULL or a NUL-terminated string.
    if flag.is_null() || unsafe { std::ffi::CStr::from_ptr(flag) } != c"1" {
        return;
    }
    let args: Vec<String> = (1..usize::try_from(count).unwrap_or(0))
        .map(|i| {
            // SAFETY: argv holds argc NUL-terminated strings.
            unsafe { std::ffi::CStr::from_ptr(*vector.add(i)) }
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    // SAFETY: PR_SET_NAME with a NUL-terminated name of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"tcp_peer".as_ptr()) };
    let code = match run(&args) {
        ExitCode::SUCCESS => 0,
        _ => 1,
    };
    std::process::exit(code);
}

fn run(args: &[String]) -> ExitCode {
    // A test's container: the helper moves itself into the cgroup first,
    // through the cgroup.procs the test opened for it (`ip netns exec`
    // mounts a /sys of the namespace's, without the cgroup file systems).
    if let Some(fd) = std::env::var("KALIVE_TEST_CGROUP_FD")
        .ok()
        .and_then(|fd| fd.parse::<RawFd>().ok())
    {
        // SAFETY: the descriptor the test left open for this process.
        let mut procs = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        if let Err(err) = std::io::Write::write_all(&mut procs, b"0") {
            eprintln!("tcp_peer: joining the test's cgroup: {err}");
            return ExitCode::FAILURE;
        }
    }
    let result = match args.first().map(String::as_str) {
        Some("pair") => pair(&args[1..]),
        Some("serve") => serve(&args[1..]),
        Some("client") => client(&args[1..]),
        Some("churn") => churn(&args[1..]),
        Some("workloads") => workloads(&args[1..]),
        Some("syn") => syn(&args[1..]),
        Some("orphan") => orphan(&args[1..]),
        _ => Err(io::Error::other(
            "usage: tcp_peer pair|serve|client|churn|workloads|syn ADDR ...",
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("tcp_peer: {err}");
            ExitCode::FAILURE
        }
    }
}

fn addr(args: &[String]) -> io::Result<SocketAddr> {
    args.first()
        .ok_or_else(|| io::Error::other("missing address"))?
        .parse()
        .map_err(io::Error::other)
}

/// `pair ADDR`: listen on ADDR (port 0 picks one), connect to it, accept; print
/// both sockets; on `close` close the client, wait for the server to see EOF,
/// close the server, and exit.
fn pair(args: &[String]) -> io::Result<()> {
    let listener = TcpListener::bind(addr(args)?)?;
    let client = TcpStream::connect(listener.local_addr()?)?;
    let (server, _) = listener.accept()?;
    report("client", &client, true)?;
    report("server", &server, true)?;
    wait_for("close")?;
    drop(client);
    let n = (&server).read(&mut [0u8; 1])?;
    assert_eq!(n, 0, "the client sent nothing, so the server reads EOF");
    drop(server);
    println!("closed");
    Ok(())
}

/// `serve ADDR [--idle S --intvl S --cnt N] [--fork-accept]`: accept one
/// connection, report it, and hold it without reading until stdin closes.
/// Keepalive options are set on the listener (accepted sockets inherit them).
/// With `--fork-accept` a child (`tcp_acceptor`) accepts while the parent, which
/// made the listener, waits. stdin: `send N` writes N small messages 100 ms
/// apart; `abort` closes the connection with a reset (`SO_LINGER` 0).
fn serve(args: &[String]) -> io::Result<()> {
    let (ka, opts) = Keepalive::parse(&args[1..])?;
    let listener = TcpListener::bind(addr(args)?)?;
    if ka.any() {
        configure(listener.as_raw_fd(), &ka, true)?;
    }
    // Accepted sockets inherit the listener's buffer size.
    if let Some(size) = opts.rcvbuf {
        setsockopt(
            listener.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            size,
        )?;
    }
    println!("listening");
    io::stdout().flush()?;
    if opts.fork_accept {
        // SAFETY: single-threaded here; the child only runs this function's code.
        match unsafe { libc::fork() } {
            -1 => return Err(io::Error::last_os_error()),
            0 => set_comm(b"tcp_acceptor"),
            child => {
                println!("forked child={child}");
                io::stdout().flush()?;
                // The parent holds the listener until the test is done.
                let _ = io::stdin().lock().read_to_end(&mut Vec::new());
                return Ok(());
            }
        }
    }
    let (server, _) = listener.accept()?;
    report("server", &server, true)?;
    let mut server = Some(server);
    for line in io::stdin().lock().lines() {
        let line = line?;
        let words: Vec<&str> = line.split_whitespace().collect();
        match (words.as_slice(), server.as_mut()) {
            (["send", n], Some(stream)) => {
                for _ in 0..n.parse::<u32>().map_err(io::Error::other)? {
                    stream.write_all(b"data")?;
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                println!("sent");
            }
            // Read everything from now on: the window opens and stays open.
            (["read"], Some(stream)) => {
                let reader = stream.try_clone()?;
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 65536];
                    while (&reader).read(&mut buf).is_ok_and(|n| n > 0) {}
                });
                println!("reading");
            }
            // Send a FIN (shutdown(SHUT_WR)), keep the socket.
            (["shutdown"], Some(stream)) => {
                stream.shutdown(std::net::Shutdown::Write)?;
                println!("shut");
            }
            (["abort"], Some(stream)) => {
                kalive_testkit::sockopt::reset_on_close(stream.as_raw_fd()).expect("SO_LINGER");
                server = None;
                println!("aborted");
            }
            _ => println!("unknown command {line:?}"),
        }
        io::stdout().flush()?;
    }
    Ok(())
}

#[derive(Default)]
struct Keepalive {
    idle: Option<i32>,
    intvl: Option<i32>,
    cnt: Option<i32>,
    user_timeout: Option<i32>,
}

impl Keepalive {
    const fn any(&self) -> bool {
        self.idle.is_some() || self.intvl.is_some() || self.cnt.is_some()
    }

    /// Keepalive flags and the other options, from `args`.
    fn parse(args: &[String]) -> io::Result<(Self, Options)> {
        let mut ka = Self::default();
        let mut opts = Options::default();
        let mut rest = args.iter();
        while let Some(flag) = rest.next() {
            let mut value = || -> io::Result<&String> {
                rest.next()
                    .ok_or_else(|| io::Error::other(format!("{flag} needs a value")))
            };
            let number = |v: &String| v.parse::<i32>().map_err(io::Error::other);
            match flag.as_str() {
                "--idle" => ka.idle = Some(number(value()?)?),
                "--intvl" => ka.intvl = Some(number(value()?)?),
                "--cnt" => ka.cnt = Some(number(value()?)?),
                "--user-timeout" => ka.user_timeout = Some(number(value()?)?),
                "--before-connect" => opts.before_connect = true,
                "--no-cookie" => opts.no_cookie = true,
                "--thread" => opts.thread = true,
                "--fork-accept" => opts.fork_accept = true,
                "--comm" => opts.comm = Some(value()?.clone().into_bytes()),
                // Any bytes, control characters and invalid UTF-8 included.
                "--comm-hex" => {
                    let hex = value()?;
                    let bytes = (0..hex.len())
                        .step_by(2)
                        .map(|i| u8::from_str_radix(hex.get(i..i + 2).unwrap_or("?"), 16))
                        .collect::<Result<Vec<u8>, _>>()
                        .map_err(io::Error::other)?;
                    opts.comm = Some(bytes);
                }
                "--no-keepalive" => opts.no_keepalive = true,
                "--hold" => opts.hold = true,
                "--no-read" => opts.no_read = true,
                "--late-error" => {
                    opts.late_error_ms = value()?.parse().map_err(io::Error::other)?;
                }
                "--sndbuf" => opts.sndbuf = Some(number(value()?)?),
                "--rcvbuf" => opts.rcvbuf = Some(number(value()?)?),
                "--fork" => opts.fork = Some(value()?.clone()),
                other => return Err(io::Error::other(format!("unknown flag {other}"))),
            }
        }
        Ok((ka, opts))
    }
}

#[derive(Default)]
#[expect(
    clippy::struct_excessive_bools,
    reason = "independent command-line switches"
)]
struct Options {
    before_connect: bool,
    /// Do not ask for the socket's cookie (which would assign one).
    no_cookie: bool,
    /// Do the socket's work in a thread named `worker`.
    thread: bool,
    fork_accept: bool,
    /// Name this process so (`PR_SET_NAME`).
    comm: Option<Vec<u8>>,
    /// `handoff`: after configuring, fork; the parent exits, the child
    /// (`tcp_child`) keeps the socket. `share`: both keep it.
    fork: Option<String>,
    /// `go` sets only the `TCP_*` options given, not `SO_KEEPALIVE`.
    no_keepalive: bool,
    /// `SO_SNDBUF` (client) and `SO_RCVBUF` (server).
    sndbuf: Option<i32>,
    rcvbuf: Option<i32>,
    /// After the peer's FIN, keep the socket (`CLOSE_WAIT`) until it fails.
    hold: bool,
    /// Never read: what the peer sends stays queued until the socket fails.
    no_read: bool,
    /// Take a failed socket's error (which clears it) only this long after
    /// the failure shows.
    late_error_ms: u64,
}

/// `client ADDR [keepalive flags] [options]`: see the module's documentation.
fn churn(args: &[String]) -> io::Result<()> {
    let [addr, secs] = args else {
        return Err(io::Error::other("churn ADDR SECS"));
    };
    let addr: SocketAddr = addr.parse().map_err(io::Error::other)?;
    let secs: u64 = secs.parse().map_err(io::Error::other)?;
    let listener = TcpListener::bind(addr)?;
    // std listens with a backlog of 128: a burst overflows it, and each
    // dropped SYN stalls its connect() for the 1 s SYN retransmission (the
    // churn rate fell tenfold). Listening again only raises the backlog.
    // SAFETY: a valid listening descriptor.
    if unsafe { libc::listen(listener.as_raw_fd(), 4096) } != 0 {
        return Err(io::Error::last_os_error());
    }
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            drop(conn);
        }
    });
    let end = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    // A few threads, each closing with a reset (no TIME_WAIT to wait out).
    let threads: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || -> io::Result<u64> {
                let mut n = 0;
                while std::time::Instant::now() < end {
                    let s = TcpStream::connect(addr)?;
                    let fd = s.as_raw_fd();
                    setsockopt(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1)?;
                    kalive_testkit::sockopt::reset_on_close(fd)?;
                    drop(s);
                    n += 1;
                }
                Ok(n)
            })
        })
        .collect();
    let mut n = 0;
    for t in threads {
        n += t
            .join()
            .map_err(|_| io::Error::other("a churn thread panicked"))??;
    }
    println!("churned {n}");
    Ok(())
}

/// `workloads ADDR N`: see the module's documentation.
fn workloads(args: &[String]) -> io::Result<()> {
    let [addr, n] = args else {
        return Err(io::Error::other("workloads ADDR N"));
    };
    let addr: SocketAddr = addr.parse().map_err(io::Error::other)?;
    let n: u32 = n.parse().map_err(io::Error::other)?;
    let listener = TcpListener::bind(addr)?;
    // SAFETY: a valid listening descriptor; room for a whole wave.
    if unsafe { libc::listen(listener.as_raw_fd(), 4096) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let addr = listener.local_addr()?;
    let SocketAddr::V4(v4) = addr else {
        return Err(io::Error::other("workloads: IPv4 only"));
    };
    // Built before forking: a child makes only system calls.
    let sin = libc::sockaddr_in {
        sin_family: libc::sa_family_t::try_from(libc::AF_INET).map_err(io::Error::other)?,
        sin_port: v4.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*v4.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    let mut next = 0u32;
    for line in io::stdin().lock().lines() {
        if line? != "wave" {
            continue;
        }
        let mut children = Vec::new();
        for _ in 0..n {
            let mut name = [0u8; 16];
            let text = format!("w{next}");
            name[..text.len()].copy_from_slice(text.as_bytes());
            next += 1;
            // SAFETY: the child makes system calls only, then _exit()s.
            match unsafe { libc::fork() } {
                0 => unsafe { workload_child(&name, &sin) },
                -1 => return Err(io::Error::last_os_error()),
                pid => children.push(pid),
            }
            // Accepted and dropped: the kernel answers probes all the same.
            drop(listener.accept()?);
        }
        for pid in children {
            // SAFETY: reaping a child of this process.
            unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
        }
        println!("wave done");
    }
    Ok(())
}

/// A forked workload: named `name`, connected to `sin` with keepalive after
/// 1 s, gone 1.5 s later (its first probe answered).
///
/// # Safety
/// Only in a child just forked: it makes system calls and `_exit()`s.
unsafe fn workload_child(name: &[u8; 16], sin: &libc::sockaddr_in) -> ! {
    // SAFETY: system calls on this process's own descriptors and memory.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, name.as_ptr());
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        let one: libc::c_int = 1;
        let on = (&raw const one).cast();
        #[expect(clippy::cast_possible_truncation, reason = "4")]
        let len = size_of::<libc::c_int>() as libc::socklen_t;
        libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE, on, len);
        libc::setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, on, len);
        libc::setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, on, len);
        let addr = std::ptr::from_ref(sin).cast();
        #[expect(clippy::cast_possible_truncation, reason = "16")]
        let addr_len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let code = i32::from(libc::connect(fd, addr, addr_len) != 0);
        let wait = libc::timespec {
            tv_sec: 1,
            tv_nsec: 500_000_000,
        };
        libc::nanosleep(&raw const wait, std::ptr::null_mut());
        libc::_exit(code)
    }
}

/// `orphan ADDR`: see the module's documentation.
fn orphan(args: &[String]) -> io::Result<()> {
    let mut stream = TcpStream::connect(addr(args)?)?;
    report("connected", &stream, true)?;
    wait_for("go")?;
    stream.write_all(b"o")?;
    drop(stream);
    println!("closed");
    io::stdout().flush()?;
    for line in io::stdin().lock().lines() {
        line?;
    }
    Ok(())
}

/// `syn ADDR --syncnt N [--user-timeout MS]`: see the module's documentation.
fn syn(args: &[String]) -> io::Result<()> {
    let peer = addr(args)?;
    let mut syncnt = None;
    let mut user_timeout = None;
    let mut rest = args[1..].iter();
    while let Some(flag) = rest.next() {
        let value = rest
            .next()
            .ok_or_else(|| io::Error::other(format!("{flag} needs a value")))?;
        match flag.as_str() {
            "--syncnt" => syncnt = Some(value.parse::<i32>().map_err(io::Error::other)?),
            "--user-timeout" => {
                user_timeout = Some(value.parse::<i32>().map_err(io::Error::other)?);
            }
            _ => return Err(io::Error::other(format!("unknown option {flag}"))),
        }
    }
    let domain = if peer.is_ipv6() {
        libc::AF_INET6
    } else {
        libc::AF_INET
    };
    // SAFETY: plain socket(2); the result is checked.
    let fd = unsafe {
        libc::socket(
            domain,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    let stream = TcpStream::from(unsafe { OwnedFd::from_raw_fd(fd) });
    if let Some(n) = syncnt {
        setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_SYNCNT, n)?;
    }
    if let Some(ms) = user_timeout {
        setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, ms)?;
    }
    match connect(fd, peer) {
        Err(err) if err.raw_os_error() == Some(libc::EINPROGRESS) => {}
        other => other?,
    }
    println!(
        "connecting cookie={} pid={} local={} peer={peer}",
        cookie(&stream)?,
        std::process::id(),
        stream.local_addr()?,
    );
    io::stdout().flush()?;
    let mut fds = [libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    }];
    // SAFETY: `fds` is one valid pollfd.
    while unsafe { libc::poll(fds.as_mut_ptr(), 1, -1) } < 1 {}
    let errno = stream
        .take_error()?
        .and_then(|err| err.raw_os_error())
        .unwrap_or(0);
    println!("connect_error errno={errno}");
    io::stdout().flush()
}

fn client(args: &[String]) -> io::Result<()> {
    let peer = addr(args)?;
    let (ka, opts) = Keepalive::parse(&args[1..])?;
    if let Some(comm) = &opts.comm {
        set_comm(comm);
    }
    if opts.thread {
        return std::thread::Builder::new()
            .name("worker".to_owned())
            .spawn(move || client_socket(peer, &ka, &opts))?
            .join()
            .map_err(|_| io::Error::other("worker thread panicked"))?;
    }
    client_socket(peer, &ka, &opts)
}

fn client_socket(peer: SocketAddr, ka: &Keepalive, opts: &Options) -> io::Result<()> {
    let domain = if peer.is_ipv6() {
        libc::AF_INET6
    } else {
        libc::AF_INET
    };
    // SAFETY: plain socket(2); the result is checked.
    let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    if let Some(size) = opts.sndbuf {
        setsockopt(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, size)?;
    }
    if opts.before_connect {
        configure(fd, ka, !opts.no_keepalive)?;
    }
    connect(fd, peer)?;
    let stream = TcpStream::from(owned);
    report("connected", &stream, !opts.no_cookie)?;
    if !opts.before_connect {
        wait_for("go")?;
        configure(fd, ka, !opts.no_keepalive)?;
    }
    println!("configured");
    io::stdout().flush()?;

    // `child send` commands go to a forked child through this pipe.
    let mut to_child: Option<std::fs::File> = None;
    match opts.fork.as_deref() {
        None => {}
        Some(mode @ ("handoff" | "share")) => {
            let mut fds = [0; 2];
            // SAFETY: `fds` has room for two descriptors.
            if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: single-threaded here (no command thread yet).
            match unsafe { libc::fork() } {
                -1 => return Err(io::Error::last_os_error()),
                0 => {
                    set_comm(b"tcp_child");
                    // SAFETY: the read end of the pipe made above, owned here.
                    let from_parent = unsafe { std::fs::File::from_raw_fd(fds[0]) };
                    std::thread::spawn(move || {
                        for line in io::BufReader::new(from_parent).lines() {
                            if line.is_ok_and(|l| l == "send") {
                                let sent = (&*stream_clone(fd)).write_all(b"c");
                                println!("child sent {}", sent.is_ok());
                                let _ = io::stdout().flush();
                            }
                        }
                    });
                    return read_until_closed(&stream, None);
                }
                child => {
                    println!("forked child={child}");
                    io::stdout().flush()?;
                    if mode == "handoff" {
                        // Leave the socket to the child; skip destructors so
                        // nothing is flushed or closed twice.
                        // SAFETY: ends this process at once.
                        unsafe { libc::_exit(0) };
                    }
                    // SAFETY: the write end of the pipe made above, owned here.
                    to_child = Some(unsafe { std::fs::File::from_raw_fd(fds[1]) });
                }
            }
        }
        Some(other) => return Err(io::Error::other(format!("unknown fork mode {other}"))),
    }

    // Commands arrive while this thread blocks in recv().
    std::thread::spawn(move || commands(fd, to_child));
    if opts.no_read {
        return wait_for_error(&stream, opts.late_error_ms);
    }
    read_until_closed(&stream, opts.hold.then_some(opts.late_error_ms))
}

/// The client's stdin commands (see the module's documentation).
fn commands(fd: RawFd, mut to_child: Option<std::fs::File>) {
    for line in io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["disable"] => {
                let result = setsockopt(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 0);
                println!("disabled {result:?}");
            }
            // `set OPTION VALUE`: one keepalive option, any value (the kernel
            // may refuse it).
            ["set", option, value] => {
                let value: i32 = value.parse().unwrap_or(i32::MIN);
                let (level, name) = match *option {
                    "keepalive" => (libc::SOL_SOCKET, libc::SO_KEEPALIVE),
                    "keepidle" => (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE),
                    "keepintvl" => (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL),
                    "keepcnt" => (libc::IPPROTO_TCP, libc::TCP_KEEPCNT),
                    _ => (libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT),
                };
                let result = setsockopt(fd, level, name, value);
                println!(
                    "set {} {}",
                    option,
                    if result.is_ok() { "ok" } else { "refused" }
                );
            }
            // `burst N`: N keepalive re-configurations as fast as possible.
            ["burst", n] => {
                let n: i32 = n.parse().unwrap_or(0);
                let failed = (0..n)
                    .filter(|i| {
                        setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 100 + i % 2).is_err()
                    })
                    .count();
                println!("burst done failed={failed}");
            }
            ["send"] => {
                let sent = (&*stream_clone(fd)).write_all(b"p");
                println!("sent {}", sent.is_ok());
            }
            // Send until the send buffer is full (the peer's window closed).
            ["fill"] => {
                let chunk = [b'f'; 1024];
                let mut total = 0usize;
                loop {
                    // SAFETY: `chunk` is valid for its length.
                    let n = unsafe {
                        libc::send(fd, chunk.as_ptr().cast(), chunk.len(), libc::MSG_DONTWAIT)
                    };
                    match usize::try_from(n) {
                        Ok(n) => total += n,
                        Err(_) => break,
                    }
                }
                let err = io::Error::last_os_error();
                println!(
                    "filled bytes={total} until={}",
                    err.raw_os_error().unwrap_or(0)
                );
            }
            ["child", "send"] => {
                let relayed = to_child.as_mut().map(|pipe| writeln!(pipe, "send"));
                println!("relayed {}", relayed.is_some_and(|r| r.is_ok()));
            }
            _ => println!("unknown command {line:?}"),
        }
        let _ = io::stdout().flush();
    }
}

/// A `TcpStream` view of `fd` that does not close it.
fn stream_clone(fd: RawFd) -> std::mem::ManuallyDrop<TcpStream> {
    // SAFETY: `fd` stays open for the life of the process; ManuallyDrop keeps
    // this view from closing it.
    std::mem::ManuallyDrop::new(unsafe { TcpStream::from_raw_fd(fd) })
}

/// Waits until the socket fails (`poll()` says `POLLERR` or `POLLHUP`), then
/// `late_ms` longer, and prints its error (`SO_ERROR`) as `recv_error errno=N`.
fn wait_for_error(stream: &TcpStream, late_ms: u64) -> io::Result<()> {
    let mut fds = [libc::pollfd {
        fd: stream.as_raw_fd(),
        events: 0,
        revents: 0,
    }];
    // SAFETY: `fds` is one valid pollfd.
    while unsafe { libc::poll(fds.as_mut_ptr(), 1, -1) } < 1 {}
    std::thread::sleep(std::time::Duration::from_millis(late_ms));
    let errno = stream
        .take_error()?
        .and_then(|err| err.raw_os_error())
        .unwrap_or(0);
    println!("recv_error errno={errno}");
    io::stdout().flush()
}

/// Reads (and drops) whatever the server sends, until the connection ends.
/// With `hold` (`Some(late_ms)`), the end of the peer's data (its FIN) is not
/// the end: the socket is kept in `CLOSE_WAIT` until it fails
/// ([`wait_for_error`]).
fn read_until_closed(stream: &TcpStream, hold: Option<u64>) -> io::Result<()> {
    let mut buf = [0u8; 4096];
    loop {
        match (&*stream).read(&mut buf) {
            Ok(0) => {
                println!("recv_eof");
                io::stdout().flush()?;
                if let Some(late_ms) = hold {
                    return wait_for_error(stream, late_ms);
                }
                break;
            }
            Ok(_) => {}
            Err(err) => {
                println!("recv_error errno={}", err.raw_os_error().unwrap_or(0));
                break;
            }
        }
    }
    io::stdout().flush()
}

fn set_comm(name: &[u8]) {
    let name = std::ffi::CString::new(name).expect("no NUL in a comm");
    // SAFETY: PR_SET_NAME with a NUL-terminated name (truncated to 15 bytes).
    unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
}

/// `SO_KEEPALIVE` (unless not `keepalive`), then each `TCP_*` option given, in
/// this order: `TCP_KEEPIDLE` last. Setting the idle time re-arms the timer
/// (`tcp_sock_set_keepidle_locked()`), at once when the connection has been
/// idle longer already (a slow machine between `connect()` and `go`): the
/// probe then leaves at once and the timer is re-armed for the interval in
/// force at that moment. Set before the interval, that would be the default
/// 75 s, which setting the interval afterwards does not shorten.
fn configure(fd: RawFd, ka: &Keepalive, keepalive: bool) -> io::Result<()> {
    kalive_testkit::sockopt::Keepalive {
        idle: ka.idle,
        intvl: ka.intvl,
        cnt: ka.cnt,
        user_timeout: ka.user_timeout,
    }
    .apply(fd, keepalive)
}

use kalive_testkit::sockopt::set_int as setsockopt;

fn connect(fd: RawFd, peer: SocketAddr) -> io::Result<()> {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match peer {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in.
            let sin = unsafe { &mut *(&raw mut storage).cast::<libc::sockaddr_in>() };
            sin.sin_family = libc::sa_family_t::try_from(libc::AF_INET).expect("small");
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from(*a.ip()).to_be();
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in6.
            let sin6 = unsafe { &mut *(&raw mut storage).cast::<libc::sockaddr_in6>() };
            sin6.sin6_family = libc::sa_family_t::try_from(libc::AF_INET6).expect("small");
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            size_of::<libc::sockaddr_in6>()
        }
    };
    // SAFETY: `storage` holds a sockaddr of `len` bytes.
    let rc = unsafe {
        libc::connect(
            fd,
            (&raw const storage).cast(),
            libc::socklen_t::try_from(len).expect("small"),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `ROLE cookie=.. pid=.. local=.. peer=..`; cookie 0 when not asked (asking
/// assigns one).
fn report(role: &str, stream: &TcpStream, with_cookie: bool) -> io::Result<()> {
    println!(
        "{role} cookie={} pid={} local={} peer={}",
        if with_cookie { cookie(stream)? } else { 0 },
        std::process::id(),
        stream.local_addr()?,
        stream.peer_addr()?
    );
    io::stdout().flush()
}

/// Blocks until `command` arrives on stdin.
fn wait_for(command: &str) -> io::Result<()> {
    for line in io::stdin().lock().lines() {
        if line?.trim() == command {
            return Ok(());
        }
    }
    Err(io::Error::other(format!("stdin closed before {command}")))
}

/// The kernel's socket cookie (`SO_COOKIE`), the id kalive reports.
pub fn cookie(stream: &TcpStream) -> io::Result<u64> {
    let mut value = 0u64;
    let mut len: libc::socklen_t = 8;
    // SAFETY: the fd is open for the duration of the call; value/len are valid.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            (&raw mut value).cast(),
            &raw mut len,
        )
    };
    if rc == 0 {
        Ok(value)
    } else {
        Err(io::Error::last_os_error())
    }
}
