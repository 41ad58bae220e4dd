//! A TCP client/server for kalive's end-to-end tests, run inside a test's network
//! namespace (`ip netns exec NS tcp_peer ...`). It reports what the tests need to
//! know about its sockets (cookie, ports) as `key=value` lines on stdout, and
//! waits for commands on stdin, so a test decides when each step happens.

use std::{
    io::{self, BufRead as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    process::ExitCode,
};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("pair") => pair(&args[1..]),
        _ => Err(io::Error::other("usage: tcp_peer pair ADDR")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("tcp_peer: {err}");
            ExitCode::FAILURE
        }
    }
}

/// `pair ADDR`: listen on ADDR (port 0 picks one), connect to it, accept; print
/// both sockets; on `close` from stdin close the client, wait for the server to
/// see EOF, close the server, and exit.
fn pair(args: &[String]) -> io::Result<()> {
    let addr: SocketAddr = args
        .first()
        .ok_or_else(|| io::Error::other("pair needs an address"))?
        .parse()
        .map_err(io::Error::other)?;
    let listener = TcpListener::bind(addr)?;
    let client = TcpStream::connect(listener.local_addr()?)?;
    let (server, _) = listener.accept()?;
    report("client", &client)?;
    report("server", &server)?;
    wait_for("close")?;
    drop(client);
    let mut buf = [0u8; 1];
    let n = io::Read::read(&mut &server, &mut buf)?;
    assert_eq!(n, 0, "the client sent nothing, so the server reads EOF");
    drop(server);
    println!("closed");
    Ok(())
}

fn report(role: &str, stream: &TcpStream) -> io::Result<()> {
    let local = stream.local_addr()?;
    let peer = stream.peer_addr()?;
    println!(
        "{role} cookie={} pid={} local={local} peer={peer}",
        cookie(stream)?,
        std::process::id()
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
