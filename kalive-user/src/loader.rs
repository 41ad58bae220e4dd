//! Loading the embedded BPF object, handing it the kernel's layout and the
//! user's settings, attaching every hook.

use std::fmt;

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, RawTracePoint, TracePoint},
};
use kalive_common::{Layout, Settings};

/// The object `cargo xtask build-ebpf` built, embedded at compile time.
static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("KALIVE_BPF_OBJECT"));

/// A kernel tracepoint kalive hooks: each has a `tp_btf` program `name` and a
/// `raw_tp` twin `name_raw` in the object. Attached in this order, so that what
/// ends a piece of state is in place before what starts it: a callback that
/// begins while kalive attaches must not leave its per-CPU note behind, and no
/// socket may be destroyed unseen after its owner was noted.
const BTF_TRACEPOINTS: &[&str] = &[
    "timer_expire_exit",
    "tcp_destroy_sock",
    "inet_sock_set_state",
    "tcp_probe",
    "timer_start",
    "timer_expire_entry",
];

/// Classic tracepoints: (category, name); the program has the same name. Exit
/// before entry, for the same reason.
const CLASSIC_TRACEPOINTS: &[(&str, &str)] = &[
    ("syscalls", "sys_exit_setsockopt"),
    ("syscalls", "sys_enter_setsockopt"),
];

/// How each kind of hook got attached, for the start-up line.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Attached {
    pub tp_btf: usize,
    pub raw_tp: usize,
    pub tracepoint: usize,
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

/// Loaded and attached programs. Dropping it detaches everything: nothing is
/// pinned, so nothing outlives the process.
pub struct Tracer {
    _ebpf: Ebpf,
    lost: PerCpuArray<MapData, u64>,
    pub attached: Attached,
}

impl Tracer {
    /// `ring_size` is the ring buffer's size in bytes. `raw_only` skips `tp_btf` and uses `raw_tp` for every tracepoint (to exercise
    /// the fallback).
    ///
    /// Returns the tracer and the ring buffer its programs write records to.
    ///
    /// # Errors
    /// When the kernel refuses a map or program, or a tracepoint is missing.
    pub fn start(
        layout: &Layout,
        settings: Settings,
        ring_size: u32,
        raw_only: bool,
    ) -> Result<(Self, RingBuf<MapData>)> {
        let btf = Btf::from_sys_fs().context("parsing the kernel's BTF")?;
        let mut ebpf = EbpfLoader::new()
            .btf(Some(&btf))
            .override_global("LAYOUT", layout, true)
            .override_global("SETTINGS", &settings, true)
            .map_max_entries("EVENTS", ring_size)
            .load(OBJECT)
            .context("loading kalive's BPF object")?;

        let mut attached = Attached::default();
        for &tracepoint in BTF_TRACEPOINTS {
            let btf_error = if raw_only {
                None
            } else {
                match attach_tp_btf(&mut ebpf, tracepoint, &btf) {
                    Ok(()) => {
                        attached.tp_btf += 1;
                        continue;
                    }
                    Err(err) => Some(err),
                }
            };
            attach_raw_tp(&mut ebpf, tracepoint).with_context(|| match &btf_error {
                Some(err) => format!("tp_btf failed too: {err:#}"),
                None => "tp_btf skipped".to_owned(),
            })?;
            if let Some(err) = btf_error {
                log::warn!("tp_btf/{tracepoint}: {err:#}; using raw_tp/{tracepoint}");
            }
            attached.raw_tp += 1;
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

        let events = RingBuf::try_from(take_map(&mut ebpf, "EVENTS")?)?;
        let lost = PerCpuArray::try_from(take_map(&mut ebpf, "LOST")?)?;
        let tracer = Self {
            _ebpf: ebpf,
            lost,
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
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::programs::Program> {
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing from the BPF object"))
}

fn take_map(ebpf: &mut Ebpf, name: &str) -> Result<aya::maps::Map> {
    ebpf.take_map(name)
        .ok_or_else(|| anyhow!("map {name} missing from the BPF object"))
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
