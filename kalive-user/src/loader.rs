//! Loading the embedded BPF object, handing it the kernel's layout, attaching it.

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{MapData, RingBuf},
    programs::BtfTracePoint,
};
use kalive_common::Layout;

/// The object `cargo xtask build-ebpf` built, embedded at compile time.
static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("KALIVE_BPF_OBJECT"));

/// (program name in the object, tracepoint name)
const TP_BTF: &[(&str, &str)] = &[("inet_sock_set_state", "inet_sock_set_state")];

/// Loaded and attached programs. Dropping it detaches everything: nothing is
/// pinned, so nothing outlives the process.
pub struct Tracer {
    _ebpf: Ebpf,
    pub events: RingBuf<MapData>,
}

impl Tracer {
    /// # Errors
    /// When the kernel refuses a map or program, or a tracepoint is missing.
    pub fn start(layout: &Layout) -> Result<Self> {
        let btf = Btf::from_sys_fs().context("parsing the kernel's BTF")?;
        let mut ebpf = EbpfLoader::new()
            .btf(Some(&btf))
            .override_global("LAYOUT", layout, true)
            .load(OBJECT)
            .context("loading kalive's BPF object")?;

        for &(name, tracepoint) in TP_BTF {
            let program: &mut BtfTracePoint = ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("program {name} missing from the BPF object"))?
                .try_into()?;
            program
                .load(tracepoint, &btf)
                .with_context(|| format!("loading tp_btf/{tracepoint}"))?;
            program
                .attach()
                .with_context(|| format!("attaching tp_btf/{tracepoint}"))?;
        }

        let events = ebpf
            .take_map("EVENTS")
            .ok_or_else(|| anyhow!("map EVENTS missing from the BPF object"))?;
        let events = RingBuf::try_from(events)?;
        Ok(Self {
            _ebpf: ebpf,
            events,
        })
    }
}
