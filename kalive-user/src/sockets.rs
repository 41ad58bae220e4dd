//! Asking the kernel about a socket from userspace, through a duplicate of its
//! owner's descriptor.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

/// The cookie of the socket behind descriptor `fd` of process `pid`, checked to
/// be socket inode `ino`. `SO_COOKIE` assigns a cookie when the socket has none
/// yet, which a BPF program reading the socket cannot do; later records then
/// carry it. Needs `CAP_SYS_PTRACE` over `pid` (`pidfd_getfd`).
pub fn cookie_via_fd(pid: u32, fd: i32, ino: u64) -> io::Result<u64> {
    let pidfd = syscall_fd(
        // SAFETY: pidfd_open(pid, 0) has no memory arguments.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_open,
                libc::pid_t::try_from(pid).map_err(io::Error::other)?,
                0,
            )
        },
    )?;
    let dup = syscall_fd(
        // SAFETY: pidfd_getfd(pidfd, fd, 0) has no memory arguments.
        unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) },
    )?;
    // SAFETY: an all-zero stat is a valid value to be overwritten.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `dup` is open; `st` is writable.
    if unsafe { libc::fstat(dup.as_raw_fd(), &raw mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if st.st_ino != ino {
        return Err(io::Error::other(format!(
            "descriptor {fd} of {pid} is inode {}, not socket {ino}",
            st.st_ino
        )));
    }
    let mut cookie = 0u64;
    let mut len: libc::socklen_t = 8;
    // SAFETY: `dup` is open; `cookie`/`len` are valid for writes of 8/4 bytes.
    let rc = unsafe {
        libc::getsockopt(
            dup.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

fn syscall_fd(rc: libc::c_long) -> io::Result<OwnedFd> {
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(rc).map_err(io::Error::other)?;
    // SAFETY: the syscall returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use std::{
        net::{TcpListener, TcpStream},
        os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    };

    use super::*;

    #[test]
    fn reads_and_assigns_the_cookie_of_our_own_socket() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let stream = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let fd = stream.as_raw_fd();
        let ino = std::fs::metadata(format!("/proc/self/fd/{fd}"))
            .expect("fd")
            .ino();
        let cookie = cookie_via_fd(std::process::id(), fd, ino).expect("cookie");
        assert_ne!(cookie, 0);
        // Stable: asking again returns the same id.
        assert_eq!(
            cookie_via_fd(std::process::id(), fd, ino).expect("cookie"),
            cookie
        );
        // A descriptor that is not that socket is refused.
        assert!(cookie_via_fd(std::process::id(), fd, ino + 1).is_err());
    }
}
