//! Socket options as the tests' peer and the benchmark's connection holders
//! set them.

use std::{io, os::fd::RawFd};

/// Sets an `int` socket option.
///
/// # Errors
/// What `setsockopt(2)` says.
pub fn set_int(fd: RawFd, level: i32, name: i32, value: i32) -> io::Result<()> {
    #[expect(clippy::cast_possible_truncation, reason = "4 bytes")]
    const LEN: libc::socklen_t = size_of::<i32>() as libc::socklen_t;
    // SAFETY: `value` is a valid int for the duration of the call.
    let rc = unsafe { libc::setsockopt(fd, level, name, (&raw const value).cast(), LEN) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `SO_LINGER` on with a zero timeout: `close()` then resets the connection
/// (RST) instead of closing it in order.
///
/// # Errors
/// What `setsockopt(2)` says.
pub fn reset_on_close(fd: RawFd) -> io::Result<()> {
    #[expect(clippy::cast_possible_truncation, reason = "8 bytes")]
    const LEN: libc::socklen_t = size_of::<libc::linger>() as libc::socklen_t;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: `linger` is valid for the duration of the call.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            LEN,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A socket's keepalive settings; `None` leaves the kernel's (the namespace's
/// sysctls).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Keepalive {
    /// `TCP_KEEPIDLE`, seconds.
    pub idle: Option<i32>,
    /// `TCP_KEEPINTVL`, seconds.
    pub intvl: Option<i32>,
    /// `TCP_KEEPCNT`.
    pub cnt: Option<i32>,
    /// `TCP_USER_TIMEOUT`, milliseconds.
    pub user_timeout: Option<i32>,
}

impl Keepalive {
    /// The options, in the order they are set: `TCP_KEEPIDLE` last. On a
    /// connection already idle longer than the new idle time, setting it makes
    /// the kernel probe at once and re-arm at the interval in effect then: with
    /// the interval set first, that is the new one, not the old (75 s by
    /// default).
    #[must_use]
    pub fn options(&self) -> [(i32, Option<i32>); 4] {
        [
            (libc::TCP_KEEPINTVL, self.intvl),
            (libc::TCP_KEEPCNT, self.cnt),
            (libc::TCP_USER_TIMEOUT, self.user_timeout),
            (libc::TCP_KEEPIDLE, self.idle),
        ]
    }

    /// `SO_KEEPALIVE` on (when `enable`), then [`Self::options`].
    ///
    /// # Errors
    /// The first `setsockopt(2)` that fails.
    pub fn apply(&self, fd: RawFd, enable: bool) -> io::Result<()> {
        if enable {
            set_int(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1)?;
        }
        for (name, value) in self.options() {
            if let Some(value) = value {
                set_int(fd, libc::IPPROTO_TCP, name, value)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::{net::TcpListener, os::fd::AsRawFd as _};

    use super::*;

    fn get_int(fd: RawFd, level: i32, name: i32) -> i32 {
        let mut value = 0i32;
        let mut len = libc::socklen_t::try_from(size_of::<i32>()).expect("4 fits");
        // SAFETY: `value` and `len` are valid for writing during the call.
        let rc =
            unsafe { libc::getsockopt(fd, level, name, (&raw mut value).cast(), &raw mut len) };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
        value
    }

    #[test]
    fn idle_is_set_last_and_everything_lands() {
        let ka = Keepalive {
            idle: Some(7),
            intvl: Some(3),
            cnt: Some(4),
            user_timeout: Some(2500),
        };
        assert_eq!(ka.options().last().map(|o| o.0), Some(libc::TCP_KEEPIDLE));
        let socket = TcpListener::bind("127.0.0.1:0").expect("a socket");
        let fd = socket.as_raw_fd();
        ka.apply(fd, true).expect("setsockopt");
        assert_eq!(get_int(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE), 1);
        assert_eq!(get_int(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE), 7);
        assert_eq!(get_int(fd, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL), 3);
        assert_eq!(get_int(fd, libc::IPPROTO_TCP, libc::TCP_KEEPCNT), 4);
        assert_eq!(get_int(fd, libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT), 2500);
        assert!(set_int(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, -1).is_err());
    }

    #[test]
    fn reset_on_close_sets_a_zero_linger() {
        let socket = TcpListener::bind("127.0.0.1:0").expect("a socket");
        let fd = socket.as_raw_fd();
        reset_on_close(fd).expect("setsockopt");
        let mut linger = libc::linger {
            l_onoff: 0,
            l_linger: 9,
        };
        let mut len = libc::socklen_t::try_from(size_of::<libc::linger>()).expect("fits");
        // SAFETY: `linger` and `len` are valid for writing during the call.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&raw mut linger).cast(),
                &raw mut len,
            )
        };
        assert_eq!(rc, 0);
        assert_eq!((linger.l_onoff, linger.l_linger), (1, 0));
    }
}
