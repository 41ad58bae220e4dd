//! `kalive ls` (work in progress, issue 16): every TCP socket of every network
//! namespace, read by kalive's `iter/tcp` program. A TCP iterator walks the
//! namespace of the task that creates it: one read per namespace, from a
//! thread that joined it.

use std::{
    collections::HashMap,
    fs::{self, File},
    io::Read as _,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    thread,
};

use anyhow::{Context as _, Result, anyhow};
use aya::programs::Iter;
use kalive_common::SockEntry;
use nix::sched::{CloneFlags, setns};

/// A network namespace, and a file that opens it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    pub inode: u64,
    pub path: PathBuf,
}

/// The network namespaces processes use, and those named in `/run/netns`
/// (which may have no process): each once.
#[must_use]
pub fn namespaces() -> Vec<Namespace> {
    let mut seen: HashMap<u64, PathBuf> = HashMap::new();
    let named = fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path());
    let used = fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.parse::<u32>().is_ok())
        })
        .map(|e| e.path().join("ns/net"));
    for path in named.chain(used) {
        // A process may exit, a name may go: skipped.
        if let Ok(meta) = fs::metadata(&path) {
            seen.entry(meta.ino()).or_insert(path);
        }
    }
    let mut all: Vec<_> = seen
        .into_iter()
        .map(|(inode, path)| Namespace { inode, path })
        .collect();
    all.sort_by_key(|n| n.inode);
    all
}

/// The TCP sockets of `ns`, as `iter` (loaded for `tcp`) reads them.
///
/// # Errors
/// When the namespace cannot be joined or the iterator read.
pub fn sockets_in(iter: &mut Iter, ns: &Namespace) -> Result<Vec<SockEntry>> {
    let path = ns.path.clone();
    thread::scope(|scope| {
        scope
            .spawn(move || -> Result<Vec<SockEntry>> {
                let file =
                    File::open(&path).with_context(|| format!("opening {}", path.display()))?;
                // Only this thread's namespace changes.
                setns(file, CloneFlags::CLONE_NEWNET)
                    .with_context(|| format!("joining {}", path.display()))?;
                let link = iter.attach().context("attaching the TCP iterator")?;
                let link = iter.take_link(link)?;
                let mut bytes = Vec::new();
                link.into_file()
                    .context("creating the TCP iterator")?
                    .read_to_end(&mut bytes)
                    .context("reading the TCP iterator")?;
                Ok(entries(&bytes))
            })
            .join()
            .map_err(|_| anyhow!("the namespace reader panicked"))?
    })
}

/// The records in what the iterator wrote.
fn entries(bytes: &[u8]) -> Vec<SockEntry> {
    bytes
        .chunks_exact(size_of::<SockEntry>())
        // SAFETY: plain data, written whole by the program.
        .map(|c| unsafe { c.as_ptr().cast::<SockEntry>().read_unaligned() })
        .collect()
}

/// Whether `path` still opens namespace `inode`.
#[must_use]
pub fn still(path: &Path, inode: u64) -> bool {
    fs::metadata(path).is_ok_and(|m| m.ino() == inode)
}

#[cfg(test)]
mod tests {
    use std::{
        net::{TcpListener, TcpStream},
        os::fd::AsRawFd as _,
    };

    use kalive_testkit::Netns;

    use super::*;
    use crate::loader::object::tests::loaded_tcp_iterator;

    /// Needs root: a socket in a namespace of the test's own is listed with
    /// that namespace, and the host's namespace is listed too.
    #[test]
    #[ignore = "needs root"]
    fn lists_sockets_namespace_by_namespace() {
        let ns = Netns::new("lsns").expect("netns");
        let port = ns
            .run(|| {
                let listener = TcpListener::bind("127.0.0.1:0")?;
                let client = TcpStream::connect(listener.local_addr()?)?;
                kalive_testkit::sockopt::Keepalive {
                    idle: Some(11),
                    intvl: None,
                    cnt: None,
                    user_timeout: None,
                }
                .apply(client.as_raw_fd(), true)?;
                let port = client.local_addr()?.port();
                // Kept open until the test ends.
                std::mem::forget((listener, client));
                Ok(port)
            })
            .join()
            .expect("thread")
            .expect("sockets");
        let inode = ns.inode().expect("inode");
        let all = namespaces();
        let ours = all
            .iter()
            .find(|n| n.inode == inode)
            .expect("our namespace listed");
        let host = fs::metadata("/proc/self/ns/net").expect("ns").ino();
        assert!(all.iter().any(|n| n.inode == host), "{all:?}");

        let (mut ebpf, hz) = loaded_tcp_iterator();
        let iter: &mut Iter = ebpf
            .program_mut("tcp_sockets")
            .expect("program")
            .try_into()
            .expect("iter");
        let entries = sockets_in(iter, ours).expect("read");
        let client = entries
            .iter()
            .find(|e| e.sport == port.to_be())
            .unwrap_or_else(|| panic!("port {port} not among {entries:?}"));
        assert_eq!(u64::from(client.netns), inode);
        assert_eq!((client.keepalive, client.keepidle), (1, 11 * hz));
        // And nothing from another namespace.
        assert!(entries.iter().all(|e| u64::from(e.netns) == inode));
    }
}
