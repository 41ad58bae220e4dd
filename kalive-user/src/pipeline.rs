//! The record pipeline: ring buffer bytes are decoded into a [`Record`],
//! completed with what only userspace can learn (an owner from `/proc`, a
//! cookie), filtered where the kernel could not, turned into a typed event and
//! written; and what became of them is tallied for the summary at exit.

use std::{
    collections::{HashMap, HashSet},
    fmt::Write as _,
    io::{self, Write},
    time::Duration,
};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use kalive_common::{FLAG_LATE, FLAG_SHARED, Kind, OWNER_PROCFS, Owner, Record};
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::Signal,
};

use crate::{
    clock::WallClock, container, event::Decoder, gaps, kernel_count::KeepaliveCounts, late,
    loader::Tracer, output::Writer, owners,
};

pub struct Stream<W: Write> {
    pub writer: Writer<W>,
    /// `--metrics`: every record counted there too.
    pub metrics: Option<std::sync::Arc<crate::metrics::Metrics>>,
    pub decoder: Decoder,
    pub tracer: Tracer,
    /// Who holds which socket, per the last `/proc` scan.
    pub sockets: owners::Sockets,
    /// Owners' cgroups, containers and pods.
    pub containers: container::Cache,
    /// `--pid` values, for records the kernel could not filter.
    pub pids: HashSet<u32>,
    /// The kernel's count of keepalive probes at start, without filters (with
    /// them, records are not all the kernel's probes).
    pub kernel_counts: Option<KeepaliveCounts>,
    pub tally: Tally,
}

/// What became of the records.
#[derive(Debug, Default)]
pub struct Tally {
    written: u64,
    /// Lost records reported so far.
    lost: u64,
    /// Records of a size or version this kalive does not know, skipped.
    undecodable: u64,
    /// Keepalive probes with no record, from gaps in probe numbers.
    gaps: gaps::ProbeGaps,
    /// Runs of kalive's programs the kernel skipped (recursion protection).
    skipped: u64,
    /// Keepalive probes found after their own timer callback went unseen.
    late: u64,
    /// Keepalive probes found to have left, unseen, that could not be numbered.
    unnumbered: u64,
    /// `probe_sent` records per network namespace.
    recorded: HashMap<u32, u64>,
    /// Keepalive probes the kernel counted beyond those recorded, in the
    /// namespaces compared at exit.
    kernel_unrecorded: u64,
}

impl Tally {
    /// The record in `bytes`; one that cannot be decoded is counted (the
    /// first is said on stderr), never fatal.
    fn decode(&mut self, bytes: &[u8]) -> Option<Record> {
        let why = match Record::decode(bytes) {
            Ok(record) if record.kind().is_some() => return Some(record),
            Ok(record) => format!("record of unknown kind {}", record.kind),
            Err(err) => err.to_string(),
        };
        if self.undecodable == 0 {
            say!("skipping records it cannot decode: {why}");
        }
        self.undecodable += 1;
        None
    }

    /// The line kalive ends with.
    pub fn summary(&self) -> String {
        let mut line = format!(
            "stopped: {} records written, {} lost",
            self.written, self.lost
        );
        if self.lost > 0 {
            line.push_str(
                " (the ring buffer was full at times: a larger --ring-size rides out bursts)",
            );
        }
        if self.undecodable > 0 {
            let _ = write!(
                line,
                ", {} skipped as undecodable (kalive's BPF object and binary disagree)",
                self.undecodable
            );
        }
        if self.skipped > 0 {
            let _ = write!(
                line,
                "; the kernel skipped {} runs of kalive's programs (records they would \
                 have made are recovered where kalive can)",
                self.skipped
            );
        }
        if self.late > 0 {
            let _ = write!(
                line,
                "; {} keepalive probes were found late (no program ran for their timer \
                 callbacks; reported with \"late\": true and the time their timer gives)",
                self.late
            );
        }
        // Each way of finding them is a lower bound; the kernel's count covers
        // the others when it is higher.
        let found = self.gaps.unseen + self.unnumbered;
        let unreported = found.max(self.kernel_unrecorded);
        if unreported > 0 {
            let mut why = Vec::new();
            if self.gaps.unseen > 0 {
                why.push("gaps in their sockets' probe numbers".to_owned());
            }
            if self.unnumbered > 0 {
                why.push(format!(
                    "{} found with no program run for their timer callbacks, and answered, \
                     but with their numbers unknown",
                    self.unnumbered
                ));
            }
            if self.kernel_unrecorded > found {
                why.push(format!(
                    "the kernel counted {} more than kalive recorded: TcpExtTCPKeepAlive, per \
                     network namespace",
                    self.kernel_unrecorded
                ));
            }
            let _ = write!(
                line,
                "; {unreported} keepalive probes had no record ({})",
                why.join("; ")
            );
        }
        line
    }
}

impl<W: Write> Stream<W> {
    /// Writes records as the kernel makes them until SIGINT or SIGTERM (or a
    /// closed stdout), then what the kernel already made, and the summary.
    ///
    /// # Errors
    /// When the ring buffer cannot be polled or the output fails otherwise
    /// than by closing.
    pub async fn follow(
        mut self,
        events: RingBuf<MapData>,
        mut sigint: Signal,
        mut sigterm: Signal,
    ) -> anyhow::Result<()> {
        // SAFETY: the ring buffer owns its map fd, which stays open and
        // unchanged until the `AsyncFd` (and with it the ring buffer) is dropped.
        let mut events = unsafe { AsyncFd::register_with_interest(events, Interest::READABLE) }
            .map_err(|err| err.into_parts().1)
            .context("polling the ring buffer")?;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let result = loop {
            let step = tokio::select! {
                guard = events.readable_mut() => {
                    let mut guard = guard?;
                    let step = self.drain(guard.get_inner_mut());
                    guard.clear_ready();
                    step
                }
                _ = tick.tick() => Ok(()),
                _ = sigint.recv() => break Ok(()),
                _ = sigterm.recv() => break Ok(()),
            };
            if let Err(err) = step.and_then(|()| self.check_counters()) {
                break Err(err);
            }
        };
        // Deliver what the kernel already produced, then stop.
        let result = result
            .and_then(|()| self.drain(events.get_mut()))
            .and_then(|()| self.check_counters());
        if let Some(start) = &self.kernel_counts {
            self.tally.kernel_unrecorded =
                start.unrecorded(&KeepaliveCounts::read(false), &self.tally.recorded);
        }
        say!("{}", self.tally.summary());
        match result {
            // A closed stdout (`kalive | head -1`) is a clean stop, not an error.
            Err(err) if err.kind() == io::ErrorKind::BrokenPipe => Ok(()),
            other => other.context("writing records"),
        }
    }

    /// Writes every record waiting in the ring buffer.
    pub fn drain(&mut self, ring: &mut RingBuf<MapData>) -> io::Result<()> {
        while let Some(item) = ring.next() {
            self.handle(&item)?;
        }
        self.writer.flush()
    }

    /// Decodes, completes and writes one record from the ring buffer.
    fn handle(&mut self, bytes: &[u8]) -> io::Result<()> {
        let Some(record) = self.tally.decode(bytes) else {
            return Ok(());
        };
        for record in late::expand(record, self.decoder.hz()) {
            self.handle_one(record)?;
        }
        Ok(())
    }

    /// [`Self::handle`] for one record after [`late::expand`].
    fn handle_one(&mut self, mut record: Record) -> io::Result<()> {
        let write = self.complete(&mut record);
        // With --pid, a socket's records stop when another process uses it:
        // gaps would not mean what they say. Keyed by the cookie: a socket's
        // memory is reused by the next one at once. A socket with none (no
        // holder to assign one through) is not followed.
        if let Some(kind) = record.kind().filter(|_| self.pids.is_empty())
            && record.cookie != 0
        {
            let before = self.tally.gaps.unseen;
            if self.tally.gaps.see(kind, record.cookie, record.probes) > 0 && before == 0 {
                say!(
                    "some keepalive probes have no record (gaps in their sockets' \
                     probe numbers); the count is in the summary at exit"
                );
            }
        }
        if record.kind() == Some(Kind::ProbeSent) && self.kernel_counts.is_some() {
            *self.tally.recorded.entry(record.netns).or_default() += 1;
        }
        if record.kind() == Some(Kind::ProbeSent) && record.flags & FLAG_LATE != 0 {
            if self.tally.late == 0 {
                say!(
                    "some keepalive probes were found late: no program of kalive's ran for \
                     their timer callbacks (reported with \"late\": true; the count is in \
                     the summary at exit)"
                );
            }
            self.tally.late += 1;
        }
        if write && let Some(mut event) = self.decoder.event(&record) {
            if let Some(socket) = &mut event.socket
                && let Some(pid) = socket.pid
                && let Some(c) = self.containers.get(pid)
            {
                socket.cgroup.clone_from(&c.cgroup);
                socket.container_id.clone_from(&c.container_id);
                socket.pod_uid.clone_from(&c.pod_uid);
            }
            if let Some(metrics) = &self.metrics {
                metrics.observe(&event);
            }
            self.writer.event(&event)?;
            self.tally.written += 1;
        }
        Ok(())
    }

    /// Fills in what the programs could not know, and applies the pid filter
    /// where the kernel could not. Returns whether to write the record.
    fn complete(&mut self, record: &mut Record) -> bool {
        if record.owner_pid().is_none() && record.ino != 0 {
            self.owner_from_procfs(record);
        }
        if record.cookie == 0 {
            self.assign_cookie(record);
        }
        !record.unfiltered()
            || record
                .owner_pid()
                .is_some_and(|pid| self.pids.contains(&pid))
    }

    /// The owner of a socket the programs know no owner for: whoever holds it in
    /// `/proc`. The programs are told, so later records carry it.
    fn owner_from_procfs(&mut self, record: &mut Record) {
        let Some(holders) = self.sockets.holders(record.ino) else {
            return;
        };
        // Several processes hold it: which one used it last only the kernel can
        // tell; name the first, and say it is shared.
        let Some(first) = holders.iter().min_by_key(|h| h.pid) else {
            return;
        };
        let shared = holders.iter().any(|h| h.pid != first.pid);
        let mut comm = [0u8; 16];
        let len = first.comm.len().min(15);
        comm[..len].copy_from_slice(&first.comm[..len]);
        let owner = Owner {
            pid: first.pid,
            source: OWNER_PROCFS,
            shared: u8::from(shared),
            pad: 0,
            learned_ns: WallClock::boot_now_ns(),
            ino: record.ino,
            comm,
        };
        record.pid = owner.pid;
        record.comm = owner.comm;
        record.owner = OWNER_PROCFS;
        if shared {
            record.flags |= FLAG_SHARED;
        }
        if let Err(err) = self.tracer.set_owner(record.sk, &owner) {
            log::debug!(
                "cannot tell the programs the owner of socket {}: {err:#}",
                record.ino
            );
        }
    }

    /// A socket the kernel has assigned no cookie yet gets one through a
    /// descriptor of its owner: the caller's for `keepalive_set`, else one found
    /// in `/proc`.
    fn assign_cookie(&mut self, record: &mut Record) {
        if record.ino == 0 {
            return;
        }
        let via = match (record.kind(), record.owner_pid()) {
            (Some(Kind::KeepaliveSet), Some(pid)) if record.fd >= 0 => Some((pid, record.fd)),
            _ => self
                .sockets
                .holders(record.ino)
                .and_then(|holders| holders.first())
                .map(|h| (h.pid, h.fd)),
        };
        if let Some((pid, fd)) = via {
            match owners::cookie_via_fd(pid, fd, record.ino) {
                Ok(cookie) => record.cookie = cookie,
                Err(err) => log::debug!("no cookie for socket {}: {err}", record.ino),
            }
        }
    }

    /// Reports records the programs could not deliver since the last check, and
    /// (once) a full map of owners.
    pub fn check_counters(&mut self) -> io::Result<()> {
        let lost = self.tracer.lost().map_err(io::Error::other)?;
        if lost > self.tally.lost {
            let now = WallClock::boot_now_ns();
            let event = self.decoder.lost(now, lost - self.tally.lost);
            if let Some(metrics) = &self.metrics {
                metrics.observe(&event);
            }
            self.writer.event(&event)?;
            self.tally.written += 1;
            self.tally.lost = lost;
            self.writer.flush()?;
        }
        let unnumbered = self.tracer.unnumbered().map_err(io::Error::other)?;
        if unnumbered > self.tally.unnumbered {
            if self.tally.unnumbered == 0 && self.tally.gaps.unseen == 0 {
                say!(
                    "some keepalive probes have no record (no program ran for their timer \
                     callbacks, and they were answered, but their numbers are not known); \
                     the count is in the summary at exit"
                );
            }
            self.tally.unnumbered = unnumbered;
        }
        let skipped = self.tracer.skipped().map_err(io::Error::other)?;
        if skipped > self.tally.skipped {
            if self.tally.skipped == 0 {
                say!(
                    "the kernel skipped runs of kalive's programs (a hook fired inside \
                     itself on a CPU); records they would have made are recovered where \
                     kalive can; the count is in the summary at exit"
                );
            }
            if let Some(metrics) = &self.metrics {
                metrics.skipped(skipped - self.tally.skipped);
            }
            self.tally.skipped = skipped;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use kalive_common::Record;

    use super::Tally;

    #[test]
    fn undecodable_records_are_counted_and_summed_up() {
        let mut tally = Tally::default();
        assert!(tally.decode(&[0u8; 7]).is_none());
        assert!(tally.decode(&[0xffu8; 4096]).is_none());
        let mut unknown = Record::zeroed(kalive_common::Kind::ProbeSent);
        unknown.kind = 200;
        assert!(tally.decode(unknown.as_bytes()).is_none());
        assert_eq!(tally.undecodable, 3);
        tally.written = 10;
        tally.lost = 3;
        assert_eq!(
            tally.summary(),
            "stopped: 10 records written, 3 lost (the ring buffer was full at times: a larger \
             --ring-size rides out bursts), 3 skipped as undecodable (kalive's BPF object and \
             binary disagree)"
        );
        assert_eq!(
            Tally::default().summary(),
            "stopped: 0 records written, 0 lost"
        );
        let mut tally = Tally::default();
        tally.gaps.see(kalive_common::Kind::KeepaliveSet, 7, 0);
        tally.gaps.see(kalive_common::Kind::ProbeSent, 7, 3);
        assert_eq!(
            tally.summary(),
            "stopped: 0 records written, 0 lost; 2 keepalive probes had no record (gaps in \
             their sockets' probe numbers)"
        );
        tally.skipped = 4;
        assert_eq!(
            tally.summary(),
            "stopped: 0 records written, 0 lost; the kernel skipped 4 runs of kalive's \
             programs (records they would have made are recovered where kalive can); 2 \
             keepalive probes had no record (gaps in their sockets' probe numbers)"
        );
        tally.skipped = 0;
        tally.late = 1;
        assert_eq!(
            tally.summary(),
            "stopped: 0 records written, 0 lost; 1 keepalive probes were found late (no \
             program ran for their timer callbacks; reported with \"late\": true and the time \
             their timer gives); 2 keepalive probes had no record (gaps in their sockets' \
             probe numbers)"
        );
        tally.late = 0;
        tally.unnumbered = 3;
        assert_eq!(
            tally.summary(),
            "stopped: 0 records written, 0 lost; 5 keepalive probes had no record (gaps in \
             their sockets' probe numbers; 3 found with no program run for their timer \
             callbacks, and answered, but with their numbers unknown)"
        );
        let mut tally = Tally {
            unnumbered: 2,
            ..Tally::default()
        };
        assert_eq!(
            tally.summary(),
            "stopped: 0 records written, 0 lost; 2 keepalive probes had no record (2 found \
             with no program run for their timer callbacks, and answered, but with their \
             numbers unknown)"
        );
        tally.kernel_unrecorded = 5;
        assert_eq!(
            tally.summary(),
            "stopped: 0 records written, 0 lost; 5 keepalive probes had no record (2 found \
             with no program run for their timer callbacks, and answered, but with their \
             numbers unknown; the kernel counted 5 more than kalive recorded: \
             TcpExtTCPKeepAlive, per network namespace)"
        );
        tally.kernel_unrecorded = 1;
        assert!(tally.summary().ends_with("numbers unknown)"));
    }
}
