//! `--metrics ADDR`: kalive's records as Prometheus counters, a periodic
//! `kalive ls` pass as gauges, and kalive's own cost, served at `/metrics`
//! (the `prometheus-client` crate encodes them, in the `OpenMetrics` text
//! format for clients that ask for it, Prometheus's classic one otherwise;
//! `tiny_http` serves them from a thread of their own).
//!
//! Labels are by workload, never by address or port: `comm`, `container_id`,
//! `pod_uid`, `netns`. The number of label sets is capped
//! (`--metrics-max-series`): records of a workload past the cap are counted
//! under every label `"_other"`, so that the totals stay right, and
//! `kalive_metrics_capped_records_total` counts them; a pass's connections
//! past the cap likewise, counted by `kalive_metrics_capped_connections`.

use std::{
    collections::{HashMap, HashSet},
    fs,
    net::{SocketAddr, TcpListener},
    os::fd::{AsFd as _, OwnedFd},
    sync::{Arc, Mutex, PoisonError},
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result};
use kalive_common::event::{Cause, Event, What};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _, prometheus_text, text},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::{ConstGauge, Gauge},
        histogram::Histogram,
    },
    registry::{Metric, Registry, Unit},
};

use crate::ls::{self, Connection};

/// A workload: what a series is about. An empty value is an unknown one (or
/// none: no container).
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Workload {
    pub comm: String,
    pub container_id: String,
    pub pod_uid: String,
    pub netns: String,
}

impl Workload {
    fn other() -> Self {
        Self {
            comm: OTHER.to_owned(),
            container_id: OTHER.to_owned(),
            pod_uid: OTHER.to_owned(),
            netns: OTHER.to_owned(),
        }
    }
}

/// A workload, and why its connection ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Ended {
    #[prometheus(flatten)]
    pub workload: Workload,
    pub cause: String,
}

/// A workload's connections with keepalive `"on"`, `"off"`, or `"unknown"`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Protected {
    #[prometheus(flatten)]
    pub workload: Workload,
    pub keepalive: String,
}

/// Workloads with series of their own, at most `cap`; past it, `_other`.
struct Capped {
    known: HashSet<Workload>,
    cap: usize,
}

impl Capped {
    /// `w` itself, or `_other` (and false) past the cap.
    fn admit(&mut self, w: Workload) -> (Workload, bool) {
        if self.known.contains(&w) {
            return (w, true);
        }
        if self.known.len() < self.cap {
            self.known.insert(w.clone());
            return (w, true);
        }
        (Workload::other(), false)
    }
}

/// Every metric kalive serves.
pub struct Metrics {
    registry: Registry,
    probes_sent: Family<Workload, Counter>,
    probes_answered: Family<Workload, Counter>,
    keepalive_kills: Family<Ended, Counter>,
    zero_window_probes: Family<Workload, Counter>,
    zero_window_kills: Family<Ended, Counter>,
    retransmit_kills: Family<Ended, Counter>,
    syn_kills: Family<Ended, Counter>,
    keepalive_deferred: Family<Workload, Counter>,
    records_lost: Counter,
    runs_skipped: Counter,
    capped: Counter,
    workloads: Mutex<Capped>,
    cap: usize,
    pass_errors: Counter,
    /// The last `kalive ls` pass's gauges.
    pass: Arc<Mutex<Option<Pass>>>,
    /// kalive's programs, for their run time.
    programs: Arc<Mutex<Vec<(String, OwnedFd)>>>,
}

const OTHER: &str = "_other";

/// A new metric, registered in `registry` as `name` with `help`.
fn registered<M: Metric + Clone + Default>(registry: &mut Registry, name: &str, help: &str) -> M {
    let metric = M::default();
    registry.register(name, help, metric.clone());
    metric
}

impl Metrics {
    /// With at most `cap` workloads labelled apart.
    #[must_use]
    pub fn new(cap: usize) -> Self {
        let mut root = Registry::default();
        let pass = Arc::new(Mutex::new(None));
        let programs = Arc::new(Mutex::new(Vec::new()));
        // The process's own, under the names every client library gives them.
        root.register_collector(Box::new(Cost {
            programs: Arc::clone(&programs),
        }));
        let registry = root.sub_registry_with_prefix("kalive");
        let probes_sent = registered(registry, "keepalive_probes_sent", "Keepalive probes sent");
        let probes_answered = registered(
            registry,
            "keepalive_probes_answered",
            "Keepalive probes the peer answered",
        );
        let keepalive_kills = registered(
            registry,
            "keepalive_kills",
            "Connections keepalive ended, by cause (probes_exhausted, user_timeout, peer_reset, ...)",
        );
        let zero_window_probes = registered(
            registry,
            "zero_window_probes_sent",
            "Zero-window probes the persist timer sent",
        );
        let zero_window_kills = registered(
            registry,
            "zero_window_kills",
            "Connections the persist timer or a zero window ended, by cause",
        );
        let retransmit_kills = registered(
            registry,
            "retransmit_kills",
            "Connections the retransmission timer ended (data in flight never acknowledged), \
             by cause",
        );
        let syn_kills = registered(
            registry,
            "syn_kills",
            "Connects that gave up on an unanswered SYN, by cause",
        );
        let keepalive_deferred = registered(
            registry,
            "keepalive_deferred",
            "Silences in which the keepalive timer found data in flight and left \
             detection to the retransmission timer",
        );
        let records_lost = registered(
            registry,
            "records_lost",
            "Records the kernel's ring buffer had no room for",
        );
        let runs_skipped = registered(
            registry,
            "program_runs_skipped",
            "Runs of kalive's BPF programs the kernel skipped (recursion protection)",
        );
        let capped = registered(
            registry,
            "metrics_capped_records",
            "Records counted under the workload _other because the number of workloads \
             reached --metrics-max-series",
        );
        let pass_errors = registered(
            registry,
            "connections_pass_errors",
            "Passes over the connections that failed (said on stderr); the gauges are \
             then the last good pass's",
        );
        registry.register_collector(Box::new(PassGauges(Arc::clone(&pass))));
        Self {
            registry: root,
            probes_sent,
            probes_answered,
            keepalive_kills,
            zero_window_probes,
            zero_window_kills,
            retransmit_kills,
            syn_kills,
            keepalive_deferred,
            records_lost,
            runs_skipped,
            capped,
            workloads: Mutex::new(Capped {
                known: HashSet::new(),
                cap,
            }),
            cap,
            pass_errors,
            pass,
            programs,
        }
    }

    /// The workload an event counts under: its own, or `_other` past the cap.
    fn workload(&self, event: &Event) -> Workload {
        let Some(s) = event.socket.as_ref() else {
            return self.admit(Workload::default());
        };
        self.admit(Workload {
            comm: s.comm.clone().unwrap_or_default(),
            container_id: s.container_id.clone().unwrap_or_default(),
            pod_uid: s.pod_uid.clone().unwrap_or_default(),
            netns: s.netns.to_string(),
        })
    }

    fn admit(&self, w: Workload) -> Workload {
        let (w, admitted) = self
            .workloads
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .admit(w);
        if !admitted {
            self.capped.inc();
        }
        w
    }

    /// Counts one record.
    pub fn observe(&self, event: &Event) {
        match &event.what {
            What::ProbeSent { sent: true, .. } => {
                self.probes_sent.get_or_create(&self.workload(event)).inc();
            }
            What::ProbeAcked { .. } => {
                self.probes_answered
                    .get_or_create(&self.workload(event))
                    .inc();
            }
            What::KeepaliveTimeout { cause, .. } => {
                self.ended(&self.keepalive_kills, event, *cause);
            }
            What::ZeroWindowProbeSent { .. } => {
                self.zero_window_probes
                    .get_or_create(&self.workload(event))
                    .inc();
            }
            What::ZeroWindowTimeout { cause, .. } => {
                self.ended(&self.zero_window_kills, event, *cause);
            }
            What::RetransmitTimeout { cause, .. } => {
                self.ended(&self.retransmit_kills, event, *cause);
            }
            What::SynTimeout { cause, .. } => self.ended(&self.syn_kills, event, *cause),
            What::KeepaliveDeferred { .. } => {
                self.keepalive_deferred
                    .get_or_create(&self.workload(event))
                    .inc();
            }
            What::EventsLost { count } => {
                self.records_lost.inc_by(*count);
            }
            What::ProbeSent { .. }
            | What::StateChange { .. }
            | What::KeepaliveSet { .. }
            | What::ZeroWindowOpen { .. } => {}
        }
    }

    /// Counts a kill in `kills`, under its workload and `cause`.
    fn ended(&self, kills: &Family<Ended, Counter>, event: &Event, cause: Cause) {
        kills
            .get_or_create(&Ended {
                workload: self.workload(event),
                cause: cause.name().to_owned(),
            })
            .inc();
    }

    /// Program runs the kernel skipped, `n` more.
    pub fn skipped(&self, n: u64) {
        self.runs_skipped.inc_by(n);
    }

    /// kalive's loaded programs, by name, for their run time.
    pub fn programs(&self, programs: Vec<(String, OwnedFd)>) {
        *self.programs.lock().unwrap_or_else(PoisonError::into_inner) = programs;
    }

    /// Takes a `kalive ls` pass's gauges.
    pub fn pass(&self, pass: Pass) {
        *self.pass.lock().unwrap_or_else(PoisonError::into_inner) = Some(pass);
    }

    /// The exposition in the `OpenMetrics` text format.
    ///
    /// # Errors
    /// Never in practice (writing to a string).
    pub fn encode(&self) -> Result<String> {
        let mut out = String::new();
        text::encode(&mut out, &self.registry).context("encoding the metrics")?;
        Ok(out)
    }

    /// The exposition in Prometheus's classic text format (0.0.4).
    ///
    /// # Errors
    /// Never in practice (writing to a string).
    pub fn encode_classic(&self) -> Result<String> {
        let mut out = String::new();
        prometheus_text::encode(&mut out, &self.registry).context("encoding the metrics")?;
        Ok(out)
    }

    /// Runs a `kalive ls` pass every `interval` from a thread of its own, for
    /// as long as kalive runs, each pass's gauges replacing the last's.
    /// `idle_budget` (seconds) adds the connections over it.
    ///
    /// # Errors
    /// When the thread cannot start.
    pub fn watch_connections(
        self: &Arc<Self>,
        mut lister: ls::Lister,
        interval: Duration,
        idle_budget: Option<u64>,
    ) -> Result<()> {
        let metrics = Arc::clone(self);
        let query = ls::Query {
            idle_budget,
            ..ls::Query::default()
        };
        thread::Builder::new()
            .name("connections".to_owned())
            .spawn(move || {
                let mut said = false;
                loop {
                    let started = std::time::Instant::now();
                    let mut pass = Pass::new(metrics.cap, idle_budget.is_some());
                    match lister.pass(&query, |c| {
                        pass.add(&c);
                        Ok(())
                    }) {
                        Ok(unseen) => {
                            if !said {
                                unseen.say();
                                said = true;
                            }
                            pass.seconds = started.elapsed().as_secs_f64();
                            pass.at = std::time::SystemTime::now()
                                .duration_since(std::time::UNIX_EPOCH)
                                .map_or(0.0, |d| d.as_secs_f64());
                            metrics.pass(pass);
                        }
                        // The last pass's gauges stay, and say when it was.
                        Err(err) => {
                            metrics.pass_errors.inc();
                            eprintln!("kalive: listing the connections: {err:#}");
                        }
                    }
                    thread::sleep(interval.saturating_sub(started.elapsed()));
                }
            })
            .context("starting the connections thread")?;
        Ok(())
    }
}

/// What one `kalive ls` pass found, as gauges.
pub struct Pass {
    connections: Family<Protected, Gauge>,
    over_budget: Option<Family<Workload, Gauge>>,
    undetected: Family<Workload, Gauge>,
    dead_after: Histogram,
    capped: i64,
    seconds: f64,
    /// When it ended, Unix seconds.
    at: f64,
    workloads: Capped,
}

/// `dead_after`'s buckets, seconds: from the fastest keepalive a user would
/// set to the default two hours and more.
const DEAD_AFTER_BUCKETS: [f64; 12] = [
    10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0, 7875.0, 14400.0,
];

impl Pass {
    /// An empty one, with at most `cap` workloads labelled apart, and the
    /// connections over an idle budget if `budget`.
    #[must_use]
    pub fn new(cap: usize, budget: bool) -> Self {
        Self {
            connections: Family::default(),
            over_budget: budget.then(Family::default),
            undetected: Family::default(),
            dead_after: Histogram::new(DEAD_AFTER_BUCKETS),
            capped: 0,
            seconds: 0.0,
            at: 0.0,
            workloads: Capped {
                known: HashSet::new(),
                cap,
            },
        }
    }

    /// Counts connection `c`.
    pub fn add(&mut self, c: &Connection) {
        let (workload, admitted) = self.workloads.admit(Workload {
            comm: c.comm.clone().unwrap_or_default(),
            container_id: c.place.container_id.clone().unwrap_or_default(),
            pod_uid: c.place.pod_uid.clone().unwrap_or_default(),
            netns: c.netns.to_string(),
        });
        if !admitted {
            self.capped += 1;
        }
        let keepalive = match c.keepalive {
            Some(true) => "on",
            Some(false) => "off",
            None => "unknown",
        };
        self.connections
            .get_or_create(&Protected {
                workload: workload.clone(),
                keepalive: keepalive.to_owned(),
            })
            .inc();
        if let Some(over) = &self.over_budget
            && c.over_budget == Some(true)
        {
            over.get_or_create(&workload).inc();
        }
        match c.dead_after_ms {
            #[expect(clippy::cast_precision_loss, reason = "ms to s, far below 2^52")]
            Some(ms) => self.dead_after.observe(ms as f64 / 1000.0),
            // Keepalive off and nothing in flight (not an orphan closing, nor
            // a connection the peer closed already).
            None if c.keepalive == Some(false)
                && c.state == kalive_common::TcpState::Established =>
            {
                self.undetected.get_or_create(&workload).inc();
            }
            None => {}
        }
    }
}

/// The last pass's gauges, encoded on each scrape (none before the first).
#[derive(Debug)]
struct PassGauges(Arc<Mutex<Option<Pass>>>);

impl std::fmt::Debug for Pass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pass")
            .field("seconds", &self.seconds)
            .finish_non_exhaustive()
    }
}

impl Collector for PassGauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let pass = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(pass) = pass.as_ref() else {
            return Ok(());
        };
        pass.connections.encode(encoder.encode_descriptor(
            "connections",
            "TCP connections at the last pass, by workload and whether keepalive is on",
            None,
            pass.connections.metric_type(),
        )?)?;
        if let Some(over) = &pass.over_budget {
            over.encode(encoder.encode_descriptor(
                "connections_over_idle_budget",
                "Connections a middlebox forgetting flows idle for --idle-budget would forget \
                 before keepalive sends anything, at the last pass",
                None,
                over.metric_type(),
            )?)?;
        }
        pass.undetected.encode(encoder.encode_descriptor(
            "connections_never_detecting_dead_peer",
            "Connections that would wait forever on a dead peer (keepalive off, nothing in \
             flight), at the last pass",
            None,
            pass.undetected.metric_type(),
        )?)?;
        pass.dead_after.encode(encoder.encode_descriptor(
            "connections_dead_after",
            "How long each connection would take to find its peer dead if it went silent now, \
             at the last pass (a snapshot, replaced each pass: query it without rate())",
            Some(&Unit::Seconds),
            pass.dead_after.metric_type(),
        )?)?;
        let capped = ConstGauge::new(pass.capped);
        capped.encode(encoder.encode_descriptor(
            "metrics_capped_connections",
            "Connections of the last pass counted under the workload _other because the \
             number of workloads reached --metrics-max-series",
            None,
            capped.metric_type(),
        )?)?;
        let at = ConstGauge::new(pass.at);
        at.encode(encoder.encode_descriptor(
            "connections_pass_timestamp",
            "When the last pass that succeeded ended, Unix time (the gauges above are its)",
            Some(&Unit::Seconds),
            at.metric_type(),
        )?)?;
        let seconds = ConstGauge::new(pass.seconds);
        seconds.encode(encoder.encode_descriptor(
            "connections_pass_duration",
            "How long the last pass over every connection took",
            Some(&Unit::Seconds),
            seconds.metric_type(),
        )?)?;
        Ok(())
    }
}

/// kalive's own cost, read on each scrape: its CPU time and memory (as
/// `process_*`, the names every client library gives them), and where the
/// kernel counts it (`kernel.bpf_stats_enabled`), its programs' run time.
#[derive(Debug)]
struct Cost {
    programs: Arc<Mutex<Vec<(String, OwnedFd)>>>,
}

impl Collector for Cost {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some((cpu, rss)) = own_usage() {
            let cpu = ConstCounter::new(cpu);
            cpu.encode(encoder.encode_descriptor(
                "process_cpu",
                "CPU time kalive's process used, user and system",
                Some(&Unit::Seconds),
                cpu.metric_type(),
            )?)?;
            let rss = ConstGauge::new(rss);
            rss.encode(encoder.encode_descriptor(
                "process_resident_memory",
                "kalive's resident memory",
                Some(&Unit::Bytes),
                rss.metric_type(),
            )?)?;
        }
        let stats =
            fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").is_ok_and(|v| v.trim() == "1");
        if !stats {
            return Ok(());
        }
        let programs = self.programs.lock().unwrap_or_else(PoisonError::into_inner);
        let mut time: HashMap<&str, (f64, u64)> = HashMap::new();
        for (name, fd) in programs.iter() {
            if let Ok(info) = crate::loader::bpf_info::prog_info(fd.as_fd()) {
                let entry = time.entry(name.as_str()).or_default();
                #[expect(clippy::cast_precision_loss, reason = "ns to s")]
                {
                    entry.0 += info.run_time_ns as f64 / 1e9;
                }
                entry.1 += info.run_cnt;
            }
        }
        let mut sorted: Vec<_> = time.into_iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(b.0));
        {
            let mut family = encoder.encode_descriptor(
                "kalive_bpf_program_run",
                "Time kalive's BPF programs ran, by program (kernel.bpf_stats_enabled)",
                Some(&Unit::Seconds),
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for (name, (seconds, _)) in &sorted {
                ConstCounter::new(*seconds).encode(family.encode_family(&Program {
                    program: (*name).to_owned(),
                })?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "kalive_bpf_program_runs",
            "Runs of kalive's BPF programs, by program (kernel.bpf_stats_enabled)",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (name, (_, runs)) in &sorted {
            ConstCounter::new(*runs).encode(family.encode_family(&Program {
                program: (*name).to_owned(),
            })?)?;
        }
        Ok(())
    }
}

/// A BPF program's label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Program {
    program: String,
}

/// This process's CPU time (s) and resident memory (bytes), from `/proc`.
fn own_usage() -> Option<(f64, i64)> {
    let stat = fs::read_to_string("/proc/self/stat").ok()?;
    // After the command name, which may hold spaces: state is field 3, utime
    // and stime fields 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: no preconditions.
    let (tck, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let statm = fs::read_to_string("/proc/self/statm").ok()?;
    let resident: i64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    #[expect(clippy::cast_precision_loss, reason = "ticks to s")]
    Some((ticks as f64 / tck as f64, resident * page))
}

/// The metrics endpoint: bound before anything is loaded (an address that is
/// taken is a one-line error then), served once kalive runs.
pub struct Endpoint {
    listener: TcpListener,
}

impl Endpoint {
    /// Binds `addr`.
    ///
    /// # Errors
    /// When the address is taken or cannot be bound.
    pub fn bind(addr: SocketAddr) -> Result<Self> {
        let listener =
            TcpListener::bind(addr).with_context(|| format!("--metrics {addr}: binding"))?;
        Ok(Self { listener })
    }

    /// Serves `metrics` at `/metrics` from a thread of its own, for as long
    /// as kalive runs.
    ///
    /// # Errors
    /// When the server cannot start.
    pub fn serve(self, metrics: Arc<Metrics>) -> Result<()> {
        let server = tiny_http::Server::from_listener(self.listener, None)
            .map_err(|err| anyhow::anyhow!("--metrics: {err}"))?;
        thread::Builder::new()
            .name("metrics".to_owned())
            .spawn(move || {
                for request in server.incoming_requests() {
                    // Prometheus asks for OpenMetrics; other clients (curl,
                    // promtool) get the classic text format.
                    let openmetrics = request.headers().iter().any(|h| {
                        h.field.equiv("Accept")
                            && h.value.as_str().contains("application/openmetrics-text")
                    });
                    let response = if request.url() == "/metrics" {
                        let (text, kind) = if openmetrics {
                            (
                                metrics.encode(),
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            )
                        } else {
                            (metrics.encode_classic(), prometheus_text::CONTENT_TYPE)
                        };
                        match text {
                            Ok(text) => tiny_http::Response::from_string(text).with_header(
                                tiny_http::Header::from_bytes("Content-Type", kind)
                                    .expect("a valid header"),
                            ),
                            Err(err) => tiny_http::Response::from_string(format!("{err:#}"))
                                .with_status_code(500),
                        }
                    } else {
                        tiny_http::Response::from_string("kalive serves /metrics\n")
                            .with_status_code(404)
                    };
                    // A scraper that went away: nothing to do.
                    let _ = request.respond(response);
                }
            })
            .context("starting the metrics thread")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_counters_are_there_from_the_start_and_end_with_eof() {
        let m = Metrics::new(10);
        let text = m.encode().expect("encoded");
        assert!(
            text.contains(
                "# HELP kalive_records_lost Records the kernel's ring buffer had no room for."
            ),
            "{text}"
        );
        assert!(
            text.contains("# TYPE kalive_records_lost counter\nkalive_records_lost_total 0\n"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn the_classic_format_names_counters_by_their_samples() {
        let m = Metrics::new(10);
        let text = m.encode_classic().expect("encoded");
        assert!(
            text.contains(
                "# HELP kalive_records_lost_total Records the kernel's ring buffer had no room \
                 for.\n# TYPE kalive_records_lost_total counter\nkalive_records_lost_total 0\n"
            ),
            "{text}"
        );
        assert!(!text.contains("# EOF"), "{text}");
    }

    #[test]
    fn own_cost_is_there() {
        let m = Metrics::new(10);
        let text = m.encode().expect("encoded");
        assert!(
            text.contains("# TYPE process_cpu_seconds counter\n"),
            "{text}"
        );
        let rss: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
            .expect("an RSS sample")
            .parse()
            .expect("a number");
        assert!(rss > 1e6, "{rss}");
    }

    fn workload(m: &Metrics, comm: &str) -> Workload {
        m.admit(Workload {
            comm: comm.to_owned(),
            netns: "7".to_owned(),
            ..Workload::default()
        })
    }

    #[test]
    fn past_the_cap_workloads_are_counted_as_other() {
        let m = Metrics::new(2);
        assert_eq!(workload(&m, "a").comm, "a");
        assert_eq!(workload(&m, "b").comm, "b");
        assert_eq!(workload(&m, "a").comm, "a", "known ones stay");
        assert_eq!(workload(&m, "c"), Workload::other());
        assert_eq!(m.capped.get(), 1);
    }
}
