//! `--metrics ADDR`: kalive's records as Prometheus counters, served at
//! `/metrics` in the `OpenMetrics` text format (the `prometheus-client` crate
//! encodes them; `tiny_http` serves them from a thread of their own).
//!
//! Labels are by workload, never by address or port: `comm` and `netns`. The
//! number of label sets is capped (`--metrics-max-series`): records of a
//! workload past the cap are counted under `comm="_other"`, `netns="_other"`,
//! so that the totals stay right, and `kalive_metrics_capped_records_total`
//! counts them.

use std::{
    collections::HashSet,
    fmt::Write as _,
    net::{SocketAddr, TcpListener},
    sync::{Arc, Mutex, PoisonError},
    thread,
};

use anyhow::{Context as _, Result};
use kalive_common::event::{Event, What};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

/// A workload: what a series is about.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Workload {
    pub comm: String,
    pub netns: String,
}

/// A workload, and why its connection ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Ended {
    pub comm: String,
    pub netns: String,
    pub cause: String,
}

/// Every metric kalive serves.
pub struct Metrics {
    registry: Registry,
    probes_sent: Family<Workload, Counter>,
    probes_answered: Family<Workload, Counter>,
    keepalive_kills: Family<Ended, Counter>,
    zero_window_probes: Family<Workload, Counter>,
    zero_window_kills: Family<Ended, Counter>,
    records_lost: Counter,
    runs_skipped: Counter,
    capped: Counter,
    /// The workloads with series of their own, at most `cap`.
    workloads: Mutex<HashSet<Workload>>,
    cap: usize,
}

const OTHER: &str = "_other";

impl Metrics {
    /// With at most `cap` workloads labelled apart.
    #[must_use]
    pub fn new(cap: usize) -> Self {
        let mut registry = Registry::with_prefix("kalive");
        let probes_sent = Family::default();
        registry.register(
            "keepalive_probes_sent",
            "Keepalive probes sent",
            probes_sent.clone(),
        );
        let probes_answered = Family::default();
        registry.register(
            "keepalive_probes_answered",
            "Keepalive probes the peer answered",
            probes_answered.clone(),
        );
        let keepalive_kills = Family::default();
        registry.register(
            "keepalive_kills",
            "Connections keepalive ended, by cause (probes_exhausted, user_timeout, peer_reset, ...)",
            keepalive_kills.clone(),
        );
        let zero_window_probes = Family::default();
        registry.register(
            "zero_window_probes_sent",
            "Zero-window probes the persist timer sent",
            zero_window_probes.clone(),
        );
        let zero_window_kills = Family::default();
        registry.register(
            "zero_window_kills",
            "Connections the persist timer or a zero window ended, by cause",
            zero_window_kills.clone(),
        );
        let records_lost = Counter::default();
        registry.register(
            "records_lost",
            "Records the kernel's ring buffer had no room for",
            records_lost.clone(),
        );
        let runs_skipped = Counter::default();
        registry.register(
            "program_runs_skipped",
            "Runs of kalive's BPF programs the kernel skipped (recursion protection)",
            runs_skipped.clone(),
        );
        let capped = Counter::default();
        registry.register(
            "metrics_capped_records",
            "Records counted under the workload _other because the number of workloads \
             reached --metrics-max-series",
            capped.clone(),
        );
        Self {
            registry,
            probes_sent,
            probes_answered,
            keepalive_kills,
            zero_window_probes,
            zero_window_kills,
            records_lost,
            runs_skipped,
            capped,
            workloads: Mutex::new(HashSet::new()),
            cap,
        }
    }

    /// The workload an event counts under: its own, or `_other` past the cap.
    fn workload(&self, event: &Event) -> Workload {
        let socket = event.socket.as_ref();
        self.workload_of(
            socket.and_then(|s| s.comm.as_deref()),
            socket.map_or(0, |s| s.netns),
        )
    }

    /// [`Self::workload`] for process `comm` (unknown: empty) in `netns`.
    fn workload_of(&self, comm: Option<&str>, netns: u32) -> Workload {
        let workload = Workload {
            comm: comm.unwrap_or_default().to_owned(),
            netns: netns.to_string(),
        };
        let mut known = self
            .workloads
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if known.contains(&workload) {
            return workload;
        }
        if known.len() < self.cap {
            known.insert(workload.clone());
            return workload;
        }
        self.capped.inc();
        Workload {
            comm: OTHER.to_owned(),
            netns: OTHER.to_owned(),
        }
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
                let w = self.workload(event);
                self.keepalive_kills
                    .get_or_create(&Ended {
                        comm: w.comm,
                        netns: w.netns,
                        cause: cause.name().to_owned(),
                    })
                    .inc();
            }
            What::ZeroWindowProbeSent { .. } => {
                self.zero_window_probes
                    .get_or_create(&self.workload(event))
                    .inc();
            }
            What::ZeroWindowTimeout { cause, .. } => {
                let w = self.workload(event);
                self.zero_window_kills
                    .get_or_create(&Ended {
                        comm: w.comm,
                        netns: w.netns,
                        cause: cause.name().to_owned(),
                    })
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

    /// Program runs the kernel skipped, `n` more.
    pub fn skipped(&self, n: u64) {
        self.runs_skipped.inc_by(n);
    }

    /// The exposition.
    ///
    /// # Errors
    /// Never in practice (writing to a string).
    pub fn encode(&self) -> Result<String> {
        let mut text = String::new();
        encode(&mut text, &self.registry).context("encoding the metrics")?;
        Ok(text)
    }
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
                        match metrics.encode() {
                            Ok(text) => {
                                let (text, kind) = if openmetrics {
                                    (
                                        text,
                                        "application/openmetrics-text; version=1.0.0; \
                                         charset=utf-8",
                                    )
                                } else {
                                    (classic(&text), "text/plain; version=0.0.4; charset=utf-8")
                                };
                                tiny_http::Response::from_string(text).with_header(
                                    tiny_http::Header::from_bytes("Content-Type", kind)
                                        .expect("a valid header"),
                                )
                            }
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

/// The classic Prometheus text format (0.0.4) of an `OpenMetrics` exposition
/// from `prometheus-client`, for clients that do not ask for `OpenMetrics`:
/// a counter's `HELP` and `TYPE` name its `_total` samples, and there is no
/// `# EOF`. (kalive's metrics are counters and have no units.)
fn classic(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let lines: Vec<&str> = openmetrics.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if line == "# EOF" || line.starts_with("# UNIT ") {
            i += 1;
            continue;
        }
        // A family: its HELP and TYPE lines, then its samples.
        if let Some(help) = line.strip_prefix("# HELP ") {
            let (name, text) = help.split_once(' ').unwrap_or((help, ""));
            let counter = lines
                .get(i + 1)
                .is_some_and(|next| *next == format!("# TYPE {name} counter"));
            let name = if counter {
                format!("{name}_total")
            } else {
                name.to_owned()
            };
            let _ = writeln!(out, "# HELP {name} {text}");
            if counter {
                let _ = writeln!(out, "# TYPE {name} counter");
                i += 1;
            }
            i += 1;
            continue;
        }
        out.push_str(line);
        out.push('\n');
        i += 1;
    }
    out
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
        let om = "# HELP kalive_records_lost Records lost.\n# TYPE kalive_records_lost counter\n\
                  kalive_records_lost_total 3\n# EOF\n";
        assert_eq!(
            classic(om),
            "# HELP kalive_records_lost_total Records lost.\n\
             # TYPE kalive_records_lost_total counter\nkalive_records_lost_total 3\n"
        );
    }

    fn workload(m: &Metrics, comm: &str) -> Workload {
        m.workload_of(Some(comm), 7)
    }

    #[test]
    fn past_the_cap_workloads_are_counted_as_other() {
        let m = Metrics::new(2);
        assert_eq!(workload(&m, "a").comm, "a");
        assert_eq!(workload(&m, "b").comm, "b");
        assert_eq!(workload(&m, "a").comm, "a", "known ones stay");
        let other = workload(&m, "c");
        assert_eq!(
            (other.comm.as_str(), other.netns.as_str()),
            ("_other", "_other")
        );
        assert_eq!(m.capped.get(), 1);
    }
}
