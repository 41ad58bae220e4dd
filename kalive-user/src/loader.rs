//! Loading the embedded BPF object, handing it the kernel's layout and the
//! user's settings and filters, attaching every hook.

use std::fmt;

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, RawTracePoint, TracePoint},
};
use kalive_common::{Layout, Owner, Settings};

/// The object `cargo xtask build-ebpf` built, embedded at compile time.
static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("KALIVE_BPF_OBJECT"));

/// A kernel tracepoint kalive hooks. Each has a `tp_btf` program `name` and a
/// `raw_tp` twin `name_raw` in the object.
struct Hook {
    name: &'static str,
    /// `None`: required. `Some(why)`: kalive runs without it, saying what is lost.
    optional: Option<&'static str>,
}

const fn required(name: &'static str) -> Hook {
    Hook {
        name,
        optional: None,
    }
}

/// Attached in this order, so that what ends a piece of state is in place before
/// what starts it: a callback that begins while kalive attaches must not leave
/// its per-CPU note behind, and no socket may be destroyed unseen after its
/// owner was noted.
const BTF_TRACEPOINTS: &[Hook] = &[
    required("timer_expire_exit"),
    required("tcp_destroy_sock"),
    required("sched_process_exit"),
    required("inet_sock_set_state"),
    required("tcp_probe"),
    Hook {
        name: "sock_send_length",
        optional: Some(
            "a socket shared by several processes is attributed to the last that configured, connected or accepted it, not the last that used it (6.3+)",
        ),
    },
    Hook {
        name: "sock_recv_length",
        optional: Some("as for sock_send_length (6.3+)"),
    },
    required("timer_start"),
    required("timer_expire_entry"),
];

/// Classic tracepoints: (category, name); the program has the same name. Exit
/// before entry, for the same reason.
const CLASSIC_TRACEPOINTS: &[(&str, &str)] = &[
    ("syscalls", "sys_exit_setsockopt"),
    ("syscalls", "sys_enter_setsockopt"),
    ("syscalls", "sys_exit_accept"),
    ("syscalls", "sys_exit_accept4"),
];

/// How each kind of hook got attached, for the start-up line.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Attached {
    pub tp_btf: usize,
    pub raw_tp: usize,
    pub tracepoint: usize,
    /// Optional hooks this kernel lacks, and what that costs.
    pub skipped: Vec<(&'static str, &'static str)>,
}

impl fmt::Display for Attached {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} tp_btf, {} raw_tp, {} tracepoint",
            self.tp_btf, self.raw_tp, self.tracepoint
        )
    }
}

/// What the user filters on; empty means everything.
#[derive(Debug, Default, Clone)]
pub struct Filters {
    pub pids: Vec<u32>,
    pub ports: Vec<u16>,
}

/// Loaded and attached programs. Dropping it detaches everything: nothing is
/// pinned, so nothing outlives the process.
pub struct Tracer {
    _ebpf: Ebpf,
    lost: PerCpuArray<MapData, u64>,
    owners_full: PerCpuArray<MapData, u64>,
    owners: HashMap<MapData, u64, Owner>,
    pub attached: Attached,
}

impl Tracer {
    /// Returns the tracer and the ring buffer its programs write records to.
    /// `ring_size` is the ring buffer's size in bytes. `raw_only` skips `tp_btf`
    /// and uses `raw_tp` for every tracepoint (to exercise the fallback).
    ///
    /// # Errors
    /// When the kernel refuses a map or program, or a tracepoint is missing.
    pub fn start(
        layout: &Layout,
        filters: &Filters,
        state_changes: bool,
        ring_size: u32,
        raw_only: bool,
    ) -> Result<(Self, RingBuf<MapData>)> {
        let settings = Settings {
            state_changes: u8::from(state_changes),
            filter_pids: u8::from(!filters.pids.is_empty()),
            filter_ports: u8::from(!filters.ports.is_empty()),
            pad: [0; 5],
        };
        let btf = Btf::from_sys_fs().context("parsing the kernel's BTF")?;
        let mut ebpf = EbpfLoader::new()
            .btf(Some(&btf))
            .override_global("LAYOUT", layout, true)
            .override_global("SETTINGS", &settings, true)
            .map_max_entries("EVENTS", ring_size)
            .load(OBJECT)
            .context("loading kalive's BPF object")?;

        // Filters are in place before the first program runs.
        let mut pids: HashMap<_, u32, u8> = HashMap::try_from(map(&mut ebpf, "PIDS")?)?;
        for &pid in &filters.pids {
            pids.insert(pid, 1, 0).context("filling the pid filter")?;
        }
        let mut ports: HashMap<_, u16, u8> = HashMap::try_from(map(&mut ebpf, "PORTS")?)?;
        for &port in &filters.ports {
            ports
                .insert(port, 1, 0)
                .context("filling the port filter")?;
        }

        let mut attached = Attached::default();
        for hook in BTF_TRACEPOINTS {
            match attach(&mut ebpf, hook.name, &btf, raw_only) {
                Ok(true) => attached.tp_btf += 1,
                Ok(false) => attached.raw_tp += 1,
                Err(err) => match hook.optional {
                    Some(why) => {
                        log::info!("{}: {err:#}", hook.name);
                        attached.skipped.push((hook.name, why));
                    }
                    None => return Err(err),
                },
            }
        }
        for &(category, name) in CLASSIC_TRACEPOINTS {
            let program: &mut TracePoint = program(&mut ebpf, name)?.try_into()?;
            program
                .load()
                .with_context(|| format!("loading tracepoint {category}:{name}"))?;
            program
                .attach(category, name)
                .with_context(|| format!("attaching tracepoint {category}:{name}"))?;
            attached.tracepoint += 1;
        }

        let events = RingBuf::try_from(map(&mut ebpf, "EVENTS")?)?;
        let tracer = Self {
            lost: PerCpuArray::try_from(map(&mut ebpf, "LOST")?)?,
            owners_full: PerCpuArray::try_from(map(&mut ebpf, "OWNERS_FULL")?)?,
            owners: HashMap::try_from(map(&mut ebpf, "OWNERS")?)?,
            _ebpf: ebpf,
            attached,
        };
        Ok((tracer, events))
    }

    /// Records the programs could not deliver so far, summed over CPUs.
    ///
    /// # Errors
    /// When the map cannot be read.
    pub fn lost(&self) -> Result<u64> {
        Ok(self.lost.get(&0, 0)?.iter().sum())
    }

    /// Owners the programs could not remember because their map was full.
    ///
    /// # Errors
    /// When the map cannot be read.
    pub fn owners_full(&self) -> Result<u64> {
        Ok(self.owners_full.get(&0, 0)?.iter().sum())
    }

    /// Tells the programs who owns socket `sk` (found in procfs), so that the
    /// next records carry it and the pid filter applies in the kernel.
    ///
    /// # Errors
    /// When the map is full.
    pub fn set_owner(&mut self, sk: u64, owner: &Owner) -> Result<()> {
        self.owners.insert(sk, owner, 0)?;
        Ok(())
    }
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::programs::Program> {
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing from the BPF object"))
}

fn map(ebpf: &mut Ebpf, name: &str) -> Result<aya::maps::Map> {
    ebpf.take_map(name)
        .ok_or_else(|| anyhow!("map {name} missing from the BPF object"))
}

/// Attaches `tracepoint` as `tp_btf`, or else as `raw_tp`. Returns whether
/// `tp_btf` was used.
fn attach(ebpf: &mut Ebpf, tracepoint: &str, btf: &Btf, raw_only: bool) -> Result<bool> {
    let btf_error = if raw_only {
        None
    } else {
        match attach_tp_btf(ebpf, tracepoint, btf) {
            Ok(()) => return Ok(true),
            Err(err) => Some(err),
        }
    };
    attach_raw_tp(ebpf, tracepoint).with_context(|| match &btf_error {
        Some(err) => format!("tp_btf failed too: {err:#}"),
        None => "tp_btf skipped".to_owned(),
    })?;
    if let Some(err) = btf_error {
        log::warn!("tp_btf/{tracepoint}: {err:#}; using raw_tp/{tracepoint}");
    }
    Ok(false)
}

fn attach_tp_btf(ebpf: &mut Ebpf, tracepoint: &str, btf: &Btf) -> Result<()> {
    let program: &mut BtfTracePoint = program(ebpf, tracepoint)?.try_into()?;
    program
        .load(tracepoint, btf)
        .with_context(|| format!("loading tp_btf/{tracepoint}"))?;
    program
        .attach()
        .with_context(|| format!("attaching tp_btf/{tracepoint}"))?;
    Ok(())
}

fn attach_raw_tp(ebpf: &mut Ebpf, tracepoint: &str) -> Result<()> {
    let name = format!("{tracepoint}_raw");
    let program: &mut RawTracePoint = program(ebpf, &name)?.try_into()?;
    program
        .load()
        .with_context(|| format!("loading raw_tp/{tracepoint}"))?;
    program
        .attach(tracepoint)
        .with_context(|| format!("attaching raw_tp/{tracepoint}"))?;
    Ok(())
}
