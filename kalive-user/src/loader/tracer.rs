//! The running tracer: the first backend of the user's choice that starts,
//! its maps, and the counters kalive reports from them.

use std::os::fd::AsFd as _;

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf,
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
};
use kalive_common::Owner;

use super::{
    attach::{self, Attached, Config, Times},
    backend::{Backend, Choice},
    bpf_info::recursion_misses,
    object::take_map,
};

/// Loaded and attached programs. Dropping it detaches everything: nothing is
/// pinned, so nothing outlives the process.
pub struct Tracer {
    ebpf: Ebpf,
    lost: PerCpuArray<MapData, u64>,
    unnumbered: PerCpuArray<MapData, u64>,
    owners: HashMap<MapData, u64, Owner>,
    pub backend: Backend,
    pub attached: Attached,
    /// Backends tried first that could not run here, and why.
    pub passed_over: Vec<(Backend, String)>,
    pub times: Times,
}

impl Tracer {
    /// Starts the chosen backend, or for `auto` the first that loads and
    /// attaches every hook it needs. Returns the tracer and the ring buffer its
    /// programs write records to.
    ///
    /// # Errors
    /// When no backend of the choice can run; the error says why for each.
    pub fn start(choice: Choice, config: &Config<'_>) -> Result<(Self, RingBuf<MapData>)> {
        let mut times = Times::default();
        let mut passed_over = Vec::new();
        for &backend in choice.backends() {
            let mut tried = Times::default();
            match attach::start_backend(backend, config, &mut tried) {
                Ok((ebpf, attached)) => {
                    let (mut tracer, events) = Self::new(ebpf, backend, attached)?;
                    tracer.passed_over = passed_over;
                    tracer.times = Times {
                        passed_over: times.passed_over,
                        ..tried
                    };
                    return Ok((tracer, events));
                }
                Err(err) => {
                    times.passed_over += tried.object + tried.verifier + tried.attach;
                    passed_over.push((backend, explain(backend, &err)));
                }
            }
        }
        if let [(backend, why)] = passed_over.as_slice() {
            bail!("the {backend} backend cannot run here: {why}");
        }
        let reasons: Vec<String> = passed_over
            .iter()
            .map(|(b, why)| format!("{b}: {why}"))
            .collect();
        bail!("no backend can run here ({})", reasons.join("; "))
    }

    fn new(
        mut ebpf: Ebpf,
        backend: Backend,
        attached: Attached,
    ) -> Result<(Self, RingBuf<MapData>)> {
        let events = RingBuf::try_from(take_map(&mut ebpf, "EVENTS")?)?;
        let tracer = Self {
            lost: PerCpuArray::try_from(take_map(&mut ebpf, "LOST")?)?,
            unnumbered: PerCpuArray::try_from(take_map(&mut ebpf, "UNNUMBERED")?)?,
            owners: HashMap::try_from(take_map(&mut ebpf, "OWNERS")?)?,
            ebpf,
            backend,
            attached,
            passed_over: Vec::new(),
            times: Times::default(),
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

    /// Keepalive probes the programs found had left (their callbacks unseen)
    /// but could not number, so did not report, summed over CPUs.
    ///
    /// # Errors
    /// When the map cannot be read.
    pub fn unnumbered(&self) -> Result<u64> {
        Ok(self.unnumbered.get(&0, 0)?.iter().sum())
    }

    /// Runs of kalive's programs the kernel skipped, summed: its recursion
    /// protection skips a program that fires while it already runs on the CPU
    /// (in process context, interrupted by a softirq that fires it again).
    ///
    /// # Errors
    /// When the kernel does not say.
    pub fn skipped(&self) -> Result<u64> {
        let mut sum = 0;
        for (name, program) in self.ebpf.programs() {
            // Programs of backends passed over are not loaded.
            let Ok(fd) = program.fd() else { continue };
            sum += recursion_misses(fd.as_fd()).with_context(|| format!("program {name}"))?;
        }
        Ok(sum)
    }

    /// Each loaded program's name and a descriptor of its own (for its run
    /// time, read by the metrics).
    #[must_use]
    pub fn program_fds(&self) -> Vec<(String, std::os::fd::OwnedFd)> {
        self.ebpf
            .programs()
            .filter_map(|(name, program)| {
                let fd = program.fd().ok()?.as_fd().try_clone_to_owned().ok()?;
                Some((name.to_owned(), fd))
            })
            .collect()
    }

    /// Tells the programs who owns socket `sk` (found in procfs), so that the
    /// next records carry it and the pid filter applies in the kernel.
    ///
    /// # Errors
    /// When the map cannot be written.
    pub fn set_owner(&mut self, sk: u64, owner: &Owner) -> Result<()> {
        self.owners.insert(sk, owner, 0)?;
        Ok(())
    }
}

/// The error, led by what it means for users, for the two ways backends are
/// commonly refused.
fn explain(backend: Backend, err: &anyhow::Error) -> String {
    let detail = format!("{err:#}");
    let meaning = match backend {
        Backend::Fentry if detail.contains("Operation not permitted") => {
            "the kernel refuses fentry/fexit programs (EPERM: lockdown or a security policy)"
        }
        Backend::Kprobe if detail.contains("devices/kprobe") => {
            "this kernel has no kprobes (no kprobe PMU: CONFIG_KPROBES is off)"
        }
        _ => return detail,
    };
    format!("{meaning}; {detail}")
}
