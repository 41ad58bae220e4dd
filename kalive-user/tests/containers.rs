//! Container and pod attribution: clients run in cgroups laid out as
//! containerd in Kubernetes and Docker lay theirs out (cgroup v2, systemd
//! driver), and their records, `kalive ls`'s, and the metrics' labels name
//! the container and the pod.

mod support;

use std::{
    process::Command,
    time::{Duration, Instant},
};

use kalive_testkit::cgroup::Tree;
use serde_json::Value;
use support::{Family, Kalive, connect, connect_from, free_addr, scrape};

const DEADLINE: Duration = Duration::from_secs(30);
const CONTAINERD: &str = "3f0c1e5d9b7a4c2e8f6d0b1a3c5e7f9d2b4a6c8e0f1d3b5a7c9e2f4d6b8a0c1e";
const DOCKER: &str = "9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b";
const POD: &str = "6a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";

/// Whether the exposition has a sample of `name` with all of `labels`.
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let rest = series.strip_prefix(name)?.strip_prefix('{')?;
        labels
            .iter()
            .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
            .then(|| value.parse().ok())
            .flatten()
    })
}

/// This process's cgroup v2 path, which its helpers inherit.
fn own_cgroup() -> String {
    std::fs::read_to_string("/proc/self/cgroup")
        .expect("/proc/self/cgroup")
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("a cgroup v2 line")
        .to_owned()
}

/// `kalive ls` for process `pid`: its records.
fn ls(pid: u32) -> Vec<Value> {
    let out = kalive_testkit::output(Command::new(env!("CARGO_BIN_EXE_kalive")).args([
        "ls",
        "--format",
        "json",
        "--pid",
        &pid.to_string(),
    ]))
    .expect("kalive ls");
    out.lines()
        .map(|l| serde_json::from_str(l).expect("a JSON record"))
        .collect()
}

/// A client in a Kubernetes pod's container, one in a Docker container, and
/// one on the host: each record, each `kalive ls` record and each series
/// says which (and the host's, none).
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn records_and_metrics_name_the_container_and_the_pod() {
    // Made first, dropped last: after the processes in it.
    let tree = Tree::new("kalive-test-containers").expect("cgroups");
    let kubepods = tree
        .make(&format!(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{CONTAINERD}.scope",
            POD.replace('-', "_")
        ))
        .expect("pod cgroup");
    let docker = tree
        .make(&format!("system.slice/docker-{DOCKER}.scope"))
        .expect("docker cgroup");
    let addr = free_addr();
    let mut kalive = Kalive::start(&["--metrics", &addr, "--metrics-interval", "1"]);
    let ka = ["--idle", "1", "--intvl", "1", "--cnt", "9"];
    let mut pod = connect_from("cpod", Family::V4, &ka, Some(&kubepods));
    let mut dock = connect_from("cdock", Family::V6, &ka, Some(&docker));
    let mut host = connect("chost", Family::V4, &ka);
    for c in [&mut pod, &mut dock, &mut host] {
        c.client.send("go");
        c.client.expect("configured");
    }
    let cookies = [pod.info.cookie, dock.info.cookie, host.info.cookie];
    kalive.wait_until(DEADLINE, |rs| {
        cookies.iter().all(|&cookie| {
            rs.iter()
                .any(|r| r["cookie"] == cookie && r["event"] == "probe_sent")
        })
    });
    let expected = [
        (
            &pod,
            Value::from(tree.path_of(&kubepods)),
            Value::from(CONTAINERD),
            Value::from(POD),
        ),
        (
            &dock,
            Value::from(tree.path_of(&docker)),
            Value::from(DOCKER),
            Value::Null,
        ),
        (&host, Value::from(own_cgroup()), Value::Null, Value::Null),
    ];
    for (c, cgroup, container_id, pod_uid) in &expected {
        let records = kalive.socket(c.info.cookie);
        let probe = records
            .iter()
            .find(|r| r["event"] == "probe_sent")
            .expect("a probe");
        assert_eq!(
            (&probe["cgroup"], &probe["container_id"], &probe["pod_uid"]),
            (cgroup, container_id, pod_uid),
            "{probe}"
        );
        // The keepalive_set record, from setsockopt() in the process.
        for r in &records {
            assert_eq!(&r["container_id"], container_id, "{r}");
        }
        let listed = ls(c.info.pid);
        let conn = listed
            .iter()
            .find(|r| r["cookie"] == c.info.cookie)
            .unwrap_or_else(|| panic!("not listed: {listed:#?}"));
        assert_eq!(
            (&conn["cgroup"], &conn["container_id"], &conn["pod_uid"]),
            (cgroup, container_id, pod_uid),
            "{conn}"
        );
    }

    let netns = |c: &support::Connection| c.net.client.inode().expect("inode").to_string();
    metrics_name_them(&addr, &netns(&pod), &netns(&dock));
}

/// The metrics at `addr` count the pod's (in `pod_ns`) and the Docker
/// container's (in `dock_ns`) probes by container and pod, and the
/// connections gauges of the agent's own pass (every second) too.
fn metrics_name_them(addr: &str, pod_ns: &str, dock_ns: &str) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let text = scrape(addr);
        let probes = value(
            &text,
            "kalive_keepalive_probes_sent_total",
            &[
                ("comm", "tcp_peer"),
                ("container_id", CONTAINERD),
                ("pod_uid", POD),
                ("netns", pod_ns),
            ],
        );
        let docker_probes = value(
            &text,
            "kalive_keepalive_probes_sent_total",
            &[
                ("container_id", DOCKER),
                ("pod_uid", ""),
                ("netns", dock_ns),
            ],
        );
        let pod_connections = value(
            &text,
            "kalive_connections",
            &[
                ("container_id", CONTAINERD),
                ("pod_uid", POD),
                ("netns", pod_ns),
                ("keepalive", "on"),
            ],
        );
        let docker_connections = value(
            &text,
            "kalive_connections",
            &[
                ("container_id", DOCKER),
                ("netns", dock_ns),
                ("keepalive", "on"),
            ],
        );
        if probes.is_some_and(|p| p >= 1.0)
            && docker_probes.is_some_and(|p| p >= 1.0)
            && pod_connections == Some(1.0)
            && docker_connections == Some(1.0)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "probes {probes:?}/{docker_probes:?}, connections \
             {pod_connections:?}/{docker_connections:?}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
