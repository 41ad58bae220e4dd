//! The BPF object `cargo xtask build-ebpf` built, embedded at compile time, and
//! what is filled in before any of its programs runs: the kernel's layout and
//! the user's settings in read-only globals, the filters in maps.

use anyhow::{Context as _, Result, anyhow};
use aya::{Btf, Ebpf, EbpfLoader, maps::HashMap};
use kalive_common::{Layout, Settings};

/// The object, as `cargo xtask build-ebpf` left it.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("KALIVE_BPF_OBJECT"));

/// What the user filters on; empty means everything.
#[derive(Debug, Default, Clone)]
pub struct Filters {
    pub pids: Vec<u32>,
    pub ports: Vec<u16>,
}

/// The programs' settings: what to report, whether to filter, and what the
/// `timer_start` tracepoint does for the function hooks that are missing.
pub fn settings(
    filters: &Filters,
    state_changes: bool,
    live_acks: bool,
    timer_start_does: u8,
) -> Settings {
    let skip_probing = test_count("KALIVE_TEST_SKIP_PROBING_CALLBACKS").saturating_sub(1);
    Settings {
        state_changes: u8::from(state_changes),
        filter_pids: u8::from(!filters.pids.is_empty()),
        filter_ports: u8::from(!filters.ports.is_empty()),
        timer_start_does,
        live_acks: u8::from(live_acks),
        test_skip_callbacks: test_count("KALIVE_TEST_SKIP_CALLBACKS"),
        test_defer_callback_end: u8::from(
            std::env::var_os("KALIVE_TEST_DEFER_CALLBACK_END").is_some(),
        ),
        test_skip_write_callbacks: test_count("KALIVE_TEST_SKIP_WRITE_CALLBACKS"),
        test_skip_probing_callbacks: skip_probing,
        test_skip_probing_run: std::env::var("KALIVE_TEST_SKIP_PROBING_RUN")
            .ok()
            .and_then(|n| n.parse::<u8>().ok())
            .unwrap_or(1)
            .clamp(1, skip_probing.saturating_sub(1).max(1)),
        pad: [0; 6],
        started_ns: boot_ns(),
    }
}

/// For tests: `KALIVE_TEST_SKIP_CALLBACKS=N` makes the programs ignore every
/// keepalive timer callback that begins with N probes out, as when the kernel
/// does not run them (seen on 6.18 while another program attaches to the timer
/// tracepoints). The probes those callbacks send must still be reported.
/// `KALIVE_TEST_SKIP_WRITE_CALLBACKS=N`: every write-timer callback that
/// begins with a backoff of N or more. `KALIVE_TEST_SKIP_PROBING_CALLBACKS=N`:
/// every N-th keepalive callback of a socket that will probe, whose
/// probe is then answered unseen; with `KALIVE_TEST_SKIP_PROBING_RUN=R`, the
/// last R of every N (several in a row). Returns N + 1, or 0 when unset.
fn test_count(variable: &str) -> u8 {
    std::env::var(variable)
        .ok()
        .and_then(|n| n.parse::<u8>().ok())
        .map_or(0, |n| n.saturating_add(1))
}

/// `CLOCK_BOOTTIME` now, the clock of the programs' timestamps.
fn boot_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).map_or(0, |t| {
        u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000_000
            + u64::try_from(t.tv_nsec()).unwrap_or(0)
    })
}

/// The object, with the layout and settings in its read-only globals, a
/// ring buffer of `ring_size` bytes and per-socket maps of `max_sockets`.
pub fn load(
    btf: &Btf,
    layout: &Layout,
    settings: Settings,
    ring_size: u32,
    max_sockets: u32,
) -> Result<Ebpf> {
    EbpfLoader::new()
        .btf(Some(btf))
        .override_global("LAYOUT", layout, true)
        .override_global("SETTINGS", &settings, true)
        .map_max_entries("EVENTS", ring_size)
        .map_max_entries("OWNERS", max_sockets)
        .map_max_entries("PROBING", max_sockets)
        .load(OBJECT)
        .context("loading kalive's BPF object")
}

/// Fills the pid and port filter maps.
pub fn fill_filters(ebpf: &mut Ebpf, filters: &Filters) -> Result<()> {
    let pids = ebpf
        .map_mut("PIDS")
        .ok_or_else(|| anyhow!("map PIDS missing from the BPF object"))?;
    let mut pids: HashMap<_, u32, u8> = HashMap::try_from(pids)?;
    for &pid in &filters.pids {
        pids.insert(pid, 1, 0).context("filling the pid filter")?;
    }
    let ports = ebpf
        .map_mut("PORTS")
        .ok_or_else(|| anyhow!("map PORTS missing from the BPF object"))?;
    let mut ports: HashMap<_, u16, u8> = HashMap::try_from(ports)?;
    for &port in &filters.ports {
        ports
            .insert(port, 1, 0)
            .context("filling the port filter")?;
    }
    Ok(())
}

/// Takes map `name` out of the loaded object.
pub fn take_map(ebpf: &mut Ebpf, name: &str) -> Result<aya::maps::Map> {
    ebpf.take_map(name)
        .ok_or_else(|| anyhow!("map {name} missing from the BPF object"))
}

/// Program `name` of the loaded object.
pub fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::programs::Program> {
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing from the BPF object"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::loader::{backend::Backend, hooks};

    /// A misspelt program name in the hook tables would fail only when that
    /// backend, fallback or kernel came along: check them all here, no root
    /// needed.
    #[test]
    fn every_program_the_hook_tables_name_is_in_the_object() {
        let object = aya_obj::Object::parse(OBJECT).expect("kalive's BPF object parses");
        let mut missing = Vec::new();
        for backend in [Backend::Fentry, Backend::Kprobe, Backend::Tracepoint] {
            for name in hooks::programs(backend) {
                if !object.programs.contains_key(name) {
                    missing.push(format!("{backend}: {name}"));
                }
            }
        }
        let mut have: Vec<&String> = object.programs.keys().collect();
        have.sort();
        assert!(
            missing.is_empty(),
            "not in the BPF object: {missing:?}; it has {have:?}"
        );
    }

    /// Kalive's object loaded for this kernel with its `iter/tcp` program
    /// loaded (needs root), and HZ.
    pub(crate) fn loaded_tcp_iterator() -> (aya::Ebpf, u32) {
        use std::path::Path;

        use aya::programs::Iter;

        let kernel_btf = crate::btf::KernelBtf::open(Path::new(crate::btf::VMLINUX)).expect("btf");
        let tracefs = crate::kernel::tracefs().expect("tracefs");
        let hz = crate::kernel::hz().expect("hz");
        let symbols = crate::kernel::Symbols::read(crate::loader::FUNCTIONS).expect("kallsyms");
        let mut layout = crate::layout::discover(&kernel_btf, &tracefs, hz).expect("layout");
        crate::layout::add_timer_fns(&mut layout, &symbols).expect("timer functions");
        let btf = aya::Btf::from_sys_fs().expect("btf");
        let mut ebpf = load(
            &btf,
            &layout,
            settings(&Filters::default(), false, false, 0),
            1 << 20,
            1024,
        )
        .expect("load");
        let iter: &mut Iter = program(&mut ebpf, "tcp_sockets")
            .expect("program")
            .try_into()
            .expect("an iterator");
        iter.load("tcp", &btf).expect("loading iter/tcp");
        (ebpf, hz)
    }

    /// `kalive ls`: the `iter/tcp` program loads on this
    /// kernel and lists a socket with its own keepalive settings, raw.
    #[test]
    #[ignore = "needs root"]
    fn the_tcp_iterator_lists_a_socket_with_its_settings() {
        use std::{
            io::Read as _,
            net::{TcpListener, TcpStream},
            os::fd::AsRawFd as _,
        };

        use aya::programs::Iter;
        use kalive_common::SockEntry;

        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        kalive_testkit::sockopt::Keepalive {
            idle: Some(7),
            intvl: Some(3),
            cnt: Some(4),
            user_timeout: None,
        }
        .apply(client.as_raw_fd(), true)
        .expect("keepalive");
        let local = client.local_addr().expect("local").port();

        let (mut ebpf, hz) = loaded_tcp_iterator();
        let iter: &mut Iter = program(&mut ebpf, "tcp_sockets")
            .expect("program")
            .try_into()
            .expect("an iterator");
        let link = iter.attach().expect("attach");
        let link = iter.take_link(link).expect("link");
        let mut bytes = Vec::new();
        link.into_file()
            .expect("iterator file")
            .read_to_end(&mut bytes)
            .expect("reading the iterator");
        let entries: Vec<SockEntry> = bytes
            .chunks_exact(size_of::<SockEntry>())
            // SAFETY: plain data, written whole by the program.
            .map(|c| unsafe { c.as_ptr().cast::<SockEntry>().read_unaligned() })
            .collect();
        let ours = entries
            .iter()
            .find(|e| e.sport == local.to_be() && e.family == kalive_common::AF_INET)
            .unwrap_or_else(|| panic!("port {local} not among {} sockets", entries.len()));
        assert_eq!(ours.state, 1, "ESTABLISHED");
        assert!(ours.ino != 0 && ours.netns != 0, "{ours:?}");
        assert_eq!(
            (ours.keepalive, ours.keepidle, ours.keepintvl, ours.keepcnt),
            (1, 7 * hz, 3 * hz, 4)
        );
        assert_eq!(ours.saddr[..4], [127, 0, 0, 1]);
        assert_eq!(ours.timer_pending, 1, "the keepalive timer is armed");
        // Setting TCP_KEEPIDLE re-arms it keepidle after the peer was last
        // heard from.
        let heard = if ours.lrcvtime.wrapping_sub(ours.rcv_tstamp).cast_signed() > 0 {
            ours.lrcvtime
        } else {
            ours.rcv_tstamp
        };
        assert_eq!(ours.timer_expires, heard.wrapping_add(7 * hz), "{ours:?}");
        assert_eq!(ours.packets_out, 0);
        drop(client);
    }
}
