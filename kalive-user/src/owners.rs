//! Owners of sockets, found from userspace where the programs could not learn
//! them: which processes hold a socket, from `/proc/PID/fd` (sockets opened
//! before kalive started, or a child that inherited a socket and never used
//! it), and a socket's cookie, through a duplicate of its owner's descriptor.

use std::{
    collections::HashMap,
    fs, io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
    time::{Duration, Instant},
};

use nix::{
    dir::Dir,
    fcntl::{OFlag, readlinkat},
    sys::stat::{Mode, fstat},
};

/// A process holding a socket, through descriptor `fd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    pub fd: i32,
    /// The process's command name (its main thread's), raw bytes.
    pub comm: Vec<u8>,
}

/// Socket inode -> processes holding them: what a scan finds.
pub type Held = HashMap<u64, Vec<Holder>>;

/// Where a scan looks for the holders of sockets.
pub trait Scan {
    fn scan(&mut self) -> Held;
}

/// Every process's `/proc/PID/fd`: one `readlink()` a descriptor.
#[derive(Debug, Default)]
pub struct Procfs;

impl Scan for Procfs {
    fn scan(&mut self) -> Held {
        scan_dir(Path::new("/proc"))
    }
}

/// Socket inode -> processes holding it, from the last scan of `S`.
#[derive(Debug)]
pub struct Sockets<S: Scan = Procfs> {
    source: S,
    holders: HashMap<u64, Vec<Holder>>,
    scanned_at: Option<Instant>,
    /// How long the last scan took: scans are spaced by ten times that.
    last_cost: Duration,
    scans: u64,
    seen_alive: Liveness,
}

/// How long a process seen alive is taken to be alive without looking again.
const ALIVE_FOR: Duration = Duration::from_millis(20);

/// Never rescan more often than this, however cheap a scan is.
const MIN_INTERVAL: Duration = Duration::from_millis(250);

impl Sockets {
    /// Scans `/proc` now.
    #[must_use]
    pub fn scan() -> Self {
        Self::scan_with(Procfs)
    }
}

impl<S: Scan> Sockets<S> {
    /// Scans `source` now.
    pub fn scan_with(source: S) -> Self {
        let mut sockets = Self {
            source,
            holders: HashMap::new(),
            scanned_at: None,
            last_cost: Duration::ZERO,
            scans: 0,
            seen_alive: Liveness::default(),
        };
        sockets.rescan();
        sockets
    }

    /// Who holds socket `ino`, among live processes. On a miss, or when a
    /// holder the last scan found has exited since (a parent that handed the
    /// socket to a child), rescans `/proc` unless the last scan is recent
    /// (scans are rate limited to at most 10% of a CPU).
    pub fn holders(&mut self, ino: u64) -> Option<&[Holder]> {
        let stale = match self.holders.get(&ino) {
            None => true,
            Some(list) => list.iter().any(|h| !self.seen_alive.check(h.pid)),
        };
        if stale && self.may_rescan() {
            self.rescan();
        }
        let list = self.holders.get_mut(&ino)?;
        list.retain(|h| self.seen_alive.check(h.pid));
        (!list.is_empty()).then_some(list.as_slice())
    }

    /// Number of scans so far.
    #[cfg(test)]
    pub const fn scans(&self) -> u64 {
        self.scans
    }

    fn may_rescan(&self) -> bool {
        self.scanned_at
            .is_none_or(|at| at.elapsed() >= MIN_INTERVAL.max(self.last_cost * 10))
    }

    fn rescan(&mut self) {
        let start = Instant::now();
        self.holders = self.source.scan();
        self.seen_alive.0.clear();
        self.last_cost = start.elapsed();
        self.scanned_at = Some(Instant::now());
        self.scans += 1;
    }
}

/// Processes seen alive, and when: a listing asks about the same few
/// holders for every socket, and each look is a `stat()` of `/proc`.
#[derive(Debug, Default)]
struct Liveness(HashMap<u32, Instant>);

impl Liveness {
    /// Whether `pid` still exists (seen within [`ALIVE_FOR`], or now).
    fn check(&mut self, pid: u32) -> bool {
        let now = Instant::now();
        if self
            .0
            .get(&pid)
            .is_some_and(|&at| now.duration_since(at) < ALIVE_FOR)
        {
            return true;
        }
        let alive = Path::new(&format!("/proc/{pid}")).exists();
        if alive {
            self.0.insert(pid, now);
        } else {
            self.0.remove(&pid);
        }
        alive
    }
}

/// Every `socket:[N]` link under `root/PID/fd/`.
fn scan_dir(root: &Path) -> Held {
    let mut holders = Held::new();
    let Ok(procs) = fs::read_dir(root) else {
        return holders;
    };
    for proc in procs.flatten() {
        let Some(pid) = proc
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let dir = proc.path();
        // A process may exit while we look: skip whatever is gone. Each link
        // is read relative to the open `fd` directory (one path component to
        // look up, not five).
        let Ok(mut fd_dir) = Dir::open(
            &dir.join("fd"),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) else {
            continue;
        };
        let fds: Vec<i32> = fd_dir
            .iter()
            .flatten()
            .filter_map(|entry| entry.file_name().to_str().ok()?.parse().ok())
            .collect();
        let mut comm: Option<Vec<u8>> = None;
        for fd in fds {
            let Ok(link) = readlinkat(&fd_dir, fd.to_string().as_str()) else {
                continue;
            };
            let Some(ino) = socket_inode(link.as_encoded_bytes()) else {
                continue;
            };
            let comm = comm.get_or_insert_with(|| comm_of(&dir)).clone();
            holders
                .entry(ino)
                .or_default()
                .push(Holder { pid, fd, comm });
        }
    }
    holders
}

/// The command name of the process at `dir` (`/proc/PID`), without its
/// newline; empty when it is gone.
#[must_use]
pub fn comm_of(dir: &Path) -> Vec<u8> {
    let mut c = fs::read(dir.join("comm")).unwrap_or_default();
    if c.last() == Some(&b'\n') {
        c.pop();
    }
    c
}

/// `socket:[12345]` -> 12345
fn socket_inode(link: &[u8]) -> Option<u64> {
    let digits = link.strip_prefix(b"socket:[")?.strip_suffix(b"]")?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// The cookie of the socket behind descriptor `fd` of process `pid`, checked to
/// be socket inode `ino`. `SO_COOKIE` assigns a cookie when the socket has none
/// yet, which a BPF program reading the socket cannot do; later records then
/// carry it. Needs what [`socket_via_fd`] needs (nix has no `SO_COOKIE`,
/// hence the raw call).
pub fn cookie_via_fd(pid: u32, fd: i32, ino: u64) -> io::Result<u64> {
    let dup = socket_via_fd(pid, fd, ino)?;
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

/// A descriptor of the socket behind descriptor `fd` of process `pid`,
/// checked to be socket inode `ino`. Needs `CAP_SYS_PTRACE` over `pid`, or
/// to be its user (`pidfd_getfd`; nix has no wrapper, hence the raw calls).
pub fn socket_via_fd(pid: u32, fd: i32, ino: u64) -> io::Result<OwnedFd> {
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
    let st = fstat(&dup)?;
    if st.st_ino != ino {
        return Err(io::Error::other(format!(
            "descriptor {fd} of {pid} is inode {}, not socket {ino}",
            st.st_ino
        )));
    }
    Ok(dup)
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
    fn parses_socket_links() {
        assert_eq!(socket_inode(b"socket:[4026]"), Some(4026));
        assert_eq!(socket_inode(b"pipe:[4026]"), None);
        assert_eq!(socket_inode(b"/dev/null"), None);
        assert_eq!(socket_inode(b"socket:[x]"), None);
    }

    #[test]
    fn finds_our_own_socket() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
        let ino = fs::metadata(format!("/proc/self/fd/{fd}"))
            .expect("fd")
            .ino();
        let mut sockets = Sockets::scan();
        let holders = sockets.holders(ino).expect("found").to_vec();
        let me = std::process::id();
        assert!(
            holders.iter().any(|h| h.pid == me && h.fd == fd),
            "{holders:?}"
        );
        let comm = fs::read_to_string("/proc/self/comm").expect("comm");
        assert!(holders.iter().all(|h| h.comm == comm.trim_end().as_bytes()));
    }

    #[test]
    fn rescans_on_a_miss_but_not_too_often() {
        let mut sockets = Sockets::scan();
        assert_eq!(sockets.scans(), 1);
        // Inode 1 is never a socket: a miss, but the scan just happened.
        assert!(sockets.holders(1).is_none());
        assert_eq!(sockets.scans(), 1);
        std::thread::sleep(MIN_INTERVAL.max(sockets.last_cost * 10));
        assert!(sockets.holders(1).is_none());
        assert_eq!(sockets.scans(), 2);
        // A socket opened since the last scan is found by the rescan.
        std::thread::sleep(MIN_INTERVAL.max(sockets.last_cost * 10));
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
        let ino = fs::metadata(format!("/proc/self/fd/{fd}"))
            .expect("fd")
            .ino();
        assert!(sockets.holders(ino).is_some());
        assert_eq!(sockets.scans(), 3);
    }

    #[test]
    fn a_holder_that_exited_is_not_named_and_sends_for_a_rescan() {
        let mut sockets = Sockets::scan();
        // No process has this pid (above the kernel's PID_MAX_LIMIT).
        let gone = Holder {
            pid: 4_194_305,
            fd: 3,
            comm: b"parent".to_vec(),
        };
        let me = Holder {
            pid: std::process::id(),
            fd: 4,
            comm: b"child".to_vec(),
        };
        sockets.holders.insert(1, vec![gone.clone(), me.clone()]);
        // Too soon to rescan: the dead holder is only left out.
        assert_eq!(sockets.holders(1), Some(&[me][..]));
        assert_eq!(sockets.scans(), 1);
        sockets.holders.insert(1, vec![gone]);
        std::thread::sleep(MIN_INTERVAL.max(sockets.last_cost * 10));
        // Rescanned: inode 1 is no socket, and nobody is named.
        assert_eq!(sockets.holders(1), None);
        assert_eq!(sockets.scans(), 2);
    }

    #[test]
    fn a_process_seen_alive_is_looked_at_again_after_a_while() {
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .expect("sleep");
        let mut live = Liveness::default();
        assert!(live.check(child.id()));
        child.kill().expect("kill");
        child.wait().expect("reaped");
        std::thread::sleep(ALIVE_FOR);
        assert!(
            !live.check(child.id()),
            "seen alive too long ago to be trusted"
        );
        // Nor is a process that was never there taken to be alive.
        assert!(!live.check(4_194_305));
    }

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
