//! The metrics agent at scale: `/metrics` scraped with `connections`
//! connections held by `workloads` processes named apart (as many label sets,
//! each with probes counted and connections gauged): how long a scrape takes,
//! how large it is, kalive's resident memory, and its connections pass.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    Spread,
    load::{Connections, Pair},
    procs::{AGENT_ADDR, Running, Tracer},
};

#[derive(Debug, Clone)]
pub struct ScrapeRun {
    pub connections: usize,
    pub workloads: usize,
    pub scrape_ms: Vec<f64>,
    pub bytes: usize,
    /// Samples in the exposition.
    pub samples: usize,
    pub rss_kib: u64,
    /// The connections pass, as kalive reports it.
    pub pass_s: f64,
}

impl ScrapeRun {
    pub fn scrape(&self) -> Spread {
        Spread::of(&self.scrape_ms)
    }
}

/// `GET /metrics` from the agent: the body.
fn scrape() -> Result<String> {
    let mut s = TcpStream::connect(AGENT_ADDR).context("connecting to the agent")?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: kalive\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").context("an HTTP response")?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        bail!("the agent answered {head:?}");
    }
    Ok(body.to_owned())
}

/// The sum of the samples of `name` (any labels).
fn total(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

fn series(text: &str, name: &str) -> usize {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .count()
}

pub fn run(
    kalive: &Path,
    backend: &str,
    n: usize,
    workloads: usize,
    scrapes: usize,
) -> Result<ScrapeRun> {
    let pair = Pair::new()?;
    // A probe a second once idle, answered: every workload has its counters.
    let conns = Connections::open_in(&pair, n, n.div_ceil(workloads), 1, 1, 100, true)?;
    let max = (2 * workloads + 100).to_string();
    let agent = Running::start(
        &Tracer::KaliveAgent(backend.to_owned()),
        kalive,
        &["--metrics-interval", "5", "--metrics-max-series", &max],
        &[],
        false,
    )?
    .context("the agent")?;
    // Until the pass and the counters hold every workload.
    let deadline = Instant::now() + Duration::from_mins(2);
    let text = loop {
        let text = scrape()?;
        #[expect(clippy::cast_precision_loss, reason = "thousands")]
        let listed = total(&text, "kalive_connections") >= n as f64;
        if listed && series(&text, "kalive_keepalive_probes_sent_total") >= workloads {
            break text;
        }
        if Instant::now() > deadline {
            bail!("the agent did not count {n} connections of {workloads} workloads:\n{text}");
        }
        thread::sleep(Duration::from_millis(500));
    };
    let mut scrape_ms = Vec::new();
    let mut text = text;
    for _ in 0..scrapes {
        let start = Instant::now();
        text = scrape()?;
        scrape_ms.push(start.elapsed().as_secs_f64() * 1e3);
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid()))?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmRSS")?;
    let run = ScrapeRun {
        connections: n,
        workloads,
        scrape_ms,
        bytes: text.len(),
        samples: text.lines().filter(|l| !l.starts_with('#')).count(),
        rss_kib,
        pass_s: total(&text, "kalive_connections_pass_duration_seconds"),
    };
    agent.stop()?;
    conns.close()?;
    Ok(run)
}
