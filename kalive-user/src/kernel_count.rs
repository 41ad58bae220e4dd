//! The kernel's own count of keepalive probes, `TcpExtTCPKeepAlive`, per
//! network namespace. At exit, more probes counted in a namespace than kalive
//! recorded there are probes with no record, whatever kalive missed them for:
//! the summary says so. It counts every try (a probe the device queue refused
//! too), as kalive's `probe_sent` records do.

use std::{
    collections::HashMap,
    fs::{self, File},
    os::unix::fs::MetadataExt as _,
    path::Path,
    thread,
};

use nix::sched::{CloneFlags, setns};

/// Namespace (inode, as records carry it) -> `TcpExtTCPKeepAlive`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct KeepaliveCounts(HashMap<u32, u64>);

impl KeepaliveCounts {
    /// The count of every namespace a process is in (its
    /// `/proc/PID/net/netstat`); with `named`, also of those in `/run/netns`
    /// with no process, read from a thread that joins them (which takes
    /// `CAP_SYS_ADMIN`). A namespace that cannot be read is left out.
    pub fn read(named: bool) -> Self {
        let mut counts = HashMap::new();
        if let Ok(dir) = fs::read_dir("/proc") {
            for entry in dir.flatten() {
                let name = entry.file_name();
                if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
                    continue;
                }
                let proc = entry.path();
                let Ok(ns) = fs::metadata(proc.join("ns/net")) else {
                    continue;
                };
                // The kernel's namespace numbers (`ns.inum`) are 32-bit.
                let Ok(ino) = u32::try_from(ns.ino()) else {
                    continue;
                };
                if counts.contains_key(&ino) {
                    continue;
                }
                if let Some(n) = fs::read_to_string(proc.join("net/netstat"))
                    .ok()
                    .as_deref()
                    .and_then(keepalive_probes)
                {
                    counts.insert(ino, n);
                }
            }
        }
        if named && let Ok(dir) = fs::read_dir("/run/netns") {
            for entry in dir.flatten() {
                let path = entry.path();
                let Ok(meta) = fs::metadata(&path) else {
                    continue;
                };
                let Ok(ino) = u32::try_from(meta.ino()) else {
                    continue;
                };
                if counts.contains_key(&ino) {
                    continue;
                }
                if let Some(n) = read_in(&path) {
                    counts.insert(ino, n);
                }
            }
        }
        Self(counts)
    }

    /// Probes the kernel counted since `self` (at start) to `now` beyond those
    /// `recorded` (per namespace), in the namespaces read both times. A lower
    /// bound: namespaces made since, or gone by now, are not compared.
    pub fn unrecorded(&self, now: &Self, recorded: &HashMap<u32, u64>) -> u64 {
        self.0
            .iter()
            .filter_map(|(ns, &then)| {
                let counted = now.0.get(ns)?.checked_sub(then)?;
                Some(counted.saturating_sub(recorded.get(ns).copied().unwrap_or(0)))
            })
            .sum()
    }
}

/// `TcpExtTCPKeepAlive` in the text of a `/proc/net/netstat`: a line of
/// names after `TcpExt:`, then a line of values.
fn keepalive_probes(netstat: &str) -> Option<u64> {
    let mut lines = netstat.lines();
    while let Some(names) = lines.next() {
        let values = lines.next()?;
        let (Some(names), Some(values)) = (
            names.strip_prefix("TcpExt:"),
            values.strip_prefix("TcpExt:"),
        ) else {
            continue;
        };
        let at = names.split_whitespace().position(|n| n == "TCPKeepAlive")?;
        return values.split_whitespace().nth(at)?.parse().ok();
    }
    None
}

/// The count in the namespace `path` opens, read from a thread that joins it.
fn read_in(path: &Path) -> Option<u64> {
    let ns = File::open(path).ok()?;
    thread::spawn(move || {
        setns(&ns, CloneFlags::CLONE_NEWNET).ok()?;
        keepalive_probes(&fs::read_to_string("/proc/thread-self/net/netstat").ok()?)
    })
    .join()
    .ok()
    .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NETSTAT: &str = "TcpExt: SyncookiesSent TCPKeepAlive TCPWinProbe\n\
                           TcpExt: 0 42 7\n\
                           IpExt: InNoRoutes InTruncatedPkts\n\
                           IpExt: 0 0\n";

    #[test]
    fn finds_the_keepalive_counter() {
        assert_eq!(keepalive_probes(NETSTAT), Some(42));
        assert_eq!(keepalive_probes("IpExt: A\nIpExt: 1\n"), None);
        assert_eq!(keepalive_probes("TcpExt: A B\nTcpExt: 1 2\n"), None);
    }

    #[test]
    fn more_counted_than_recorded_is_unrecorded() {
        let start = KeepaliveCounts(HashMap::from([(1, 10), (2, 5), (3, 0)]));
        // Namespace 3 is gone, 4 is new: neither is compared.
        let now = KeepaliveCounts(HashMap::from([(1, 20), (2, 9), (4, 100)]));
        let recorded = HashMap::from([(1, 7), (2, 6), (4, 1)]);
        // 10 counted, 7 recorded in 1; 4 counted, 6 recorded in 2.
        assert_eq!(start.unrecorded(&now, &recorded), 3);
    }
}
