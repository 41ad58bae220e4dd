//! `kalive ls` (work in progress, issue 16): every TCP socket of every network
//! namespace, read by kalive's `iter/tcp` program. A TCP iterator walks the
//! namespace of the task that creates it: one read per namespace, from a
//! thread that joined it.

use std::{
    collections::HashMap,
    fs::{self, File},
    io::{Read as _, Write as _},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    thread,
};

use anyhow::{Context as _, Result, anyhow};
use aya::programs::Iter;
use kalive_common::{AF_INET6, SockEntry, TcpState, dead};
use nix::sched::{CloneFlags, setns};
use serde_json::{Value, json};

use crate::{
    btf, kernel, layout,
    loader::{
        self,
        object::{self, Filters},
    },
    output::Format,
    owners,
};

/// `kalive ls`: a snapshot of every TCP connection's protection against a
/// dead peer, then exit (work in progress: keepalive only so far).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Output format [default: text on a terminal, json otherwise]
    #[arg(long, value_enum)]
    format: Option<Format>,

    /// Only sockets held by this process (repeatable)
    #[arg(short, long = "pid", value_name = "PID")]
    pids: Vec<u32>,

    /// Only sockets with this local or remote port (repeatable)
    #[arg(short = 'P', long = "port", value_name = "PORT")]
    ports: Vec<u16>,

    /// Also listening sockets (accepted connections inherit their keepalive)
    #[arg(long)]
    listening: bool,
}

/// Runs `kalive ls`.
///
/// # Errors
/// When the kernel's sockets cannot be read.
pub fn run(args: &Args) -> Result<()> {
    let kernel_btf = btf::KernelBtf::open(Path::new(btf::VMLINUX))?;
    let tracefs = kernel::tracefs()?;
    let hz = kernel::hz().context("finding the kernel's HZ")?;
    let symbols = kernel::Symbols::read(loader::FUNCTIONS)?;
    let layout = layout::discover(&kernel_btf, &symbols, &tracefs, hz)?;
    let btf = aya::Btf::from_sys_fs().context("reading the kernel's BTF")?;
    let mut ebpf = object::load(
        &btf,
        &layout,
        object::settings(&Filters::default(), false, false, 0),
        1 << 12,
        1024,
    )?;
    let iter: &mut Iter = object::program(&mut ebpf, "tcp_sockets")?.try_into()?;
    iter.load("tcp", &btf).context("loading the TCP iterator")?;
    let mut holders = owners::Sockets::scan();
    let mut out = std::io::stdout().lock();
    for ns in namespaces() {
        let entries = match sockets_in(iter, &ns) {
            Ok(entries) => entries,
            Err(err) if !still(&ns.path, ns.inode) => {
                log::info!("namespace {} went away: {err:#}", ns.inode);
                continue;
            }
            Err(err) => return Err(err),
        };
        for e in entries {
            let state = TcpState::from_kernel(e.state);
            if state == TcpState::Listen && !args.listening {
                continue;
            }
            let (sport, dport) = (u16::from_be(e.sport), u16::from_be(e.dport));
            if !args.ports.is_empty() && !args.ports.iter().any(|&p| p == sport || p == dport) {
                continue;
            }
            let held = holders
                .holders(e.ino)
                .map(<[_]>::to_vec)
                .unwrap_or_default();
            if !args.pids.is_empty() && !held.iter().any(|h| args.pids.contains(&h.pid)) {
                continue;
            }
            let record = record(&e, state, &held, hz);
            writeln!(out, "{record}")?;
        }
    }
    let _ = args.format;
    Ok(())
}

/// One socket's record.
fn record(e: &SockEntry, state: TcpState, held: &[owners::Holder], hz: u32) -> Value {
    let ms = |jiffies: u32| u64::from(jiffies) * 1000 / u64::from(hz.max(1));
    let (family, len) = if e.family == AF_INET6 {
        ("ipv6", 16)
    } else {
        ("ipv4", 4)
    };
    let addr = |a: &[u8; 16]| -> String {
        if len == 4 {
            std::net::Ipv4Addr::new(a[0], a[1], a[2], a[3]).to_string()
        } else {
            std::net::Ipv6Addr::from(*a).to_string()
        }
    };
    let own = |raw: u32| if raw != 0 { "socket" } else { "sysctl" };
    let pick = |raw: u32, net: u32| if raw != 0 { raw } else { net };
    let keepidle = pick(e.keepidle, e.net_keepidle);
    let keepintvl = pick(e.keepintvl, e.net_keepintvl);
    let keepcnt = if e.keepcnt != 0 {
        e.keepcnt
    } else {
        e.net_keepcnt
    };
    let heard = if e.lrcvtime.wrapping_sub(e.rcv_tstamp).cast_signed() > 0 {
        e.lrcvtime
    } else {
        e.rcv_tstamp
    };
    let idle = state.connected().then(|| ms(e.now.wrapping_sub(heard)));
    let timer_ms = (e.timer_pending != 0).then(|| ms(e.timer_expires.wrapping_sub(e.now)));
    // Keepalive alone decides while nothing is in flight; the rest is to come.
    let (dead_after, detected_by) = match (
        e.keepalive != 0,
        e.packets_out,
        e.write_timer,
        idle,
        timer_ms,
    ) {
        (true, 0, 0, Some(idle_ms), Some(timer_ms)) => {
            let (after, verdict) = dead::keepalive(&dead::Keepalive {
                keepidle_ms: ms(keepidle),
                keepintvl_ms: ms(keepintvl),
                keepcnt: u32::from(keepcnt),
                user_timeout_ms: u64::from(e.user_timeout_ms),
                idle_ms,
                timer_ms,
                probes: u32::from(e.probes),
            });
            (
                Some(after),
                Some(format!("keepalive_{verdict:?}").to_lowercase()),
            )
        }
        _ => (None, None),
    };
    let holders: Vec<Value> = held
        .iter()
        .map(|h| json!({"pid": h.pid, "fd": h.fd, "comm": String::from_utf8_lossy(&h.comm)}))
        .collect();
    json!({
        "family": family,
        "saddr": addr(&e.saddr),
        "sport": u16::from_be(e.sport),
        "daddr": addr(&e.daddr),
        "dport": u16::from_be(e.dport),
        "netns": e.netns,
        "cookie": e.cookie,
        "state": state.name(),
        "holders": holders,
        "keepalive": e.keepalive != 0,
        "keepidle_ms": ms(keepidle),
        "keepintvl_ms": ms(keepintvl),
        "keepcnt": keepcnt,
        "user_timeout_ms": e.user_timeout_ms,
        "from": {"keepidle": own(e.keepidle), "keepintvl": own(e.keepintvl), "keepcnt": own(u32::from(e.keepcnt))},
        "keepalive_timer_ms": timer_ms,
        "probes": e.probes,
        "unacked": e.packets_out,
        "idle_ms": idle,
        "dead_after_ms": dead_after,
        "detected_by": detected_by,
    })
}

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
