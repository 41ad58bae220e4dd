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
//! tcp_peer pair ADDR          listen, connect, accept; on `close`: close both
//! tcp_peer serve ADDR         accept one connection and hold it, never reading;
//!                             stdin: `send N`, `abort`
//! tcp_peer client ADDR [--idle S] [--intvl S] [--cnt N] [--user-timeout MS]
//!                      [--before-connect]
//!     connect; set the keepalive options after `go` (or before connecting);
//!     then read until the connection fails and print `recv_error errno=N`.
//!     stdin: `disable` turns SO_KEEPALIVE off; `burst N` sets TCP_KEEPIDLE N times.
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
    let result = match args.first().map(String::as_str) {
        Some("pair") => pair(&args[1..]),
        Some("serve") => serve(&args[1..]),
        Some("client") => client(&args[1..]),
        _ => Err(io::Error::other(
            "usage: tcp_peer pair|serve|client ADDR ...",
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
    report("client", &client)?;
    report("server", &server)?;
    wait_for("close")?;
    drop(client);
    let n = (&server).read(&mut [0u8; 1])?;
    assert_eq!(n, 0, "the client sent nothing, so the server reads EOF");
    drop(server);
    println!("closed");
    Ok(())
}

/// `serve ADDR`: accept one connection, report it, and hold it without reading
/// until stdin closes. stdin: `send N` writes N small messages 100 ms apart;
/// `abort` closes the connection without telling the peer anything the test
/// lets through (`SO_LINGER` 0: a reset, which the test drops).
fn serve(args: &[String]) -> io::Result<()> {
    let listener = TcpListener::bind(addr(args)?)?;
    println!("listening");
    io::stdout().flush()?;
    let (server, _) = listener.accept()?;
    report("server", &server)?;
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
            (["abort"], Some(stream)) => {
                let linger = libc::linger {
                    l_onoff: 1,
                    l_linger: 0,
                };
                // SAFETY: `linger` is valid for the duration of the call.
                let rc = unsafe {
                    libc::setsockopt(
                        stream.as_raw_fd(),
                        libc::SOL_SOCKET,
                        libc::SO_LINGER,
                        (&raw const linger).cast(),
                        libc::socklen_t::try_from(size_of::<libc::linger>()).expect("small"),
                    )
                };
                assert_eq!(rc, 0, "SO_LINGER");
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
    before_connect: bool,
}

fn client(args: &[String]) -> io::Result<()> {
    let peer = addr(args)?;
    let mut ka = Keepalive::default();
    let mut rest = args[1..].iter();
    while let Some(flag) = rest.next() {
        let mut value = || -> io::Result<i32> {
            rest.next()
                .ok_or_else(|| io::Error::other(format!("{flag} needs a value")))?
                .parse()
                .map_err(io::Error::other)
        };
        match flag.as_str() {
            "--idle" => ka.idle = Some(value()?),
            "--intvl" => ka.intvl = Some(value()?),
            "--cnt" => ka.cnt = Some(value()?),
            "--user-timeout" => ka.user_timeout = Some(value()?),
            "--before-connect" => ka.before_connect = true,
            other => return Err(io::Error::other(format!("unknown flag {other}"))),
        }
    }

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
    if ka.before_connect {
        configure(fd, &ka)?;
    }
    connect(fd, peer)?;
    let stream = TcpStream::from(owned);
    report("connected", &stream)?;
    if !ka.before_connect {
        wait_for("go")?;
        configure(fd, &ka)?;
    }
    println!("configured");
    io::stdout().flush()?;

    // Commands arrive while the main thread blocks in recv().
    std::thread::spawn(move || {
        for line in io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["disable"] => {
                    let result = setsockopt(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 0);
                    println!("disabled {result:?}");
                }
                // `burst N`: N keepalive re-configurations as fast as possible.
                ["burst", n] => {
                    let n: i32 = n.parse().unwrap_or(0);
                    let failed = (0..n)
                        .filter(|i| {
                            setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 100 + i % 2)
                                .is_err()
                        })
                        .count();
                    println!("burst done failed={failed}");
                }
                _ => println!("unknown command {line:?}"),
            }
            let _ = io::stdout().flush();
        }
    });

    // Read (and drop) whatever the server sends, until the connection ends.
    let mut buf = [0u8; 4096];
    loop {
        match (&stream).read(&mut buf) {
            Ok(0) => {
                println!("recv_eof");
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

/// `SO_KEEPALIVE`, then each `TCP_*` option given, in this order.
fn configure(fd: RawFd, ka: &Keepalive) -> io::Result<()> {
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1)?;
    for (opt, value) in [
        (libc::TCP_KEEPIDLE, ka.idle),
        (libc::TCP_KEEPINTVL, ka.intvl),
        (libc::TCP_KEEPCNT, ka.cnt),
        (libc::TCP_USER_TIMEOUT, ka.user_timeout),
    ] {
        if let Some(value) = value {
            setsockopt(fd, libc::IPPROTO_TCP, opt, value)?;
        }
    }
    Ok(())
}

fn setsockopt(fd: RawFd, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: `value` is a valid int for the duration of the call.
    let rc = unsafe { libc::setsockopt(fd, level, name, (&raw const value).cast(), 4) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

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

fn report(role: &str, stream: &TcpStream) -> io::Result<()> {
    println!(
        "{role} cookie={} pid={} local={} peer={}",
        cookie(stream)?,
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
fn cookie(stream: &TcpStream) -> io::Result<u64> {
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
