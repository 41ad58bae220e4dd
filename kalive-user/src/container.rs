//! Which container and Kubernetes pod a process runs in, read from its cgroup
//! (`/proc/PID/cgroup`), as the container runtimes name them:
//!
//! | runtime | cgroup v2 (systemd driver) | cgroupfs driver (v1 or v2) |
//! |---|---|---|
//! | Docker | `docker-<id>.scope` | `/docker/<id>` |
//! | containerd (CRI) | `cri-containerd-<id>.scope`, or `…slice:cri-containerd:<id>` | `/kubepods/…/pod<uid>/<id>` |
//! | CRI-O | `crio-<id>.scope` | `/kubepods/…/pod<uid>/crio-<id>` |
//! | Podman | `libpod-<id>.scope` | `/libpod_parent/libpod-<id>` |
//!
//! where `<id>` is the container id (64 hex digits), and a pod's cgroup is
//! `kubepods[-<qos>]-pod<uid, with _ for ->.slice` (systemd driver) or
//! `pod<uid>` under `kubepods` (cgroupfs driver). A runtime's helper beside
//! its container (`crio-conmon-<id>`, `libpod-conmon-<id>`) is no container.

use std::{
    collections::HashMap,
    fs,
    time::{Duration, Instant},
};

use serde::Serialize;

/// Where a process runs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Attribution {
    /// Its cgroup: the cgroup v2 path, or on a host with only v1
    /// hierarchies (or where only a v1 path names the container), that one.
    pub cgroup: Option<String>,
    /// The container id, 64 hex digits; `None` outside a container.
    pub container_id: Option<String>,
    /// The Kubernetes pod's UID; `None` outside a pod.
    pub pod_uid: Option<String>,
}

impl Attribution {
    /// What `/proc/PID/cgroup`'s `content` says.
    #[must_use]
    pub fn parse(content: &str) -> Self {
        // Lines are `hierarchy-id:controllers:path`; cgroup v2's is `0::path`.
        let mut v2 = None;
        let mut v1_named = None;
        let mut v1_first = None;
        for line in content.lines() {
            let mut parts = line.splitn(3, ':');
            let (Some(id), Some(controllers), Some(path)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if id == "0" && controllers.is_empty() {
                v2 = Some(path);
            } else {
                if v1_named.is_none() && container_id(path).is_some() {
                    v1_named = Some(path);
                }
                v1_first.get_or_insert(path);
            }
        }
        // A v2 path that names no container, beside v1 ones that do (a
        // runtime that places its containers in the v1 hierarchies only).
        let path = match (v2, v1_named) {
            (Some(p), Some(named)) if container_id(p).is_none() => Some(named),
            (Some(p), _) => Some(p),
            (None, named) => named.or(v1_first),
        };
        let Some(path) = path else {
            return Self::default();
        };
        Self {
            cgroup: Some(path.to_owned()),
            container_id: container_id(path),
            pod_uid: pod_uid(path),
        }
    }

    /// Process `pid`'s, `None` when it cannot be read (the process is gone).
    #[must_use]
    pub fn of_pid(pid: u32) -> Option<Self> {
        fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .ok()
            .map(|c| Self::parse(&c))
    }
}

/// The container id a cgroup path names: its innermost component that is one.
fn container_id(path: &str) -> Option<String> {
    path.rsplit('/').find_map(|component| {
        let name = component.strip_suffix(".scope").unwrap_or(component);
        // containerd's systemd driver: `<pod slice>:cri-containerd:<id>`.
        let name = name.rsplit(':').next().unwrap_or(name);
        let id = [
            "docker-",
            "cri-containerd-",
            "crio-",
            "libpod-",
            "containerd-",
        ]
        .iter()
        .find_map(|prefix| name.strip_prefix(prefix))
        .unwrap_or(name);
        is_container_id(id).then(|| id.to_owned())
    })
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The pod UID a cgroup path under `kubepods` names.
fn pod_uid(path: &str) -> Option<String> {
    // Seen from a cgroup namespace of its own (a pod's: kalive's DaemonSet),
    // a path outside it starts with `/..` and may not name `kubepods`.
    let mut under_kubepods = path.starts_with("/..");
    for component in path.split('/') {
        if component.starts_with("kubepods") {
            under_kubepods = true;
        }
        if !under_kubepods {
            continue;
        }
        // Systemd driver: `kubepods-burstable-pod<uid>.slice`, the UID's
        // dashes written as underscores (a dash nests slices); containerd
        // may append `:cri-containerd:<id>`.
        let component = component.split(':').next().unwrap_or(component);
        let name = component.strip_suffix(".slice").unwrap_or(component);
        let uid = match name.rfind("-pod") {
            Some(at) if name.starts_with("kubepods") => &name[at + 4..],
            _ => match name.strip_prefix("pod") {
                Some(uid) => uid,
                None => continue,
            },
        };
        let uid = uid.replace('_', "-");
        if is_uid(&uid) {
            return Some(uid);
        }
    }
    None
}

/// A UUID as Kubernetes writes one: 8-4-4-4-12 hex digits.
fn is_uid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Processes' containers, each read once a second at most: records about a
/// process come in bursts, and a process rarely changes cgroup. A pid reused
/// within the second by a process in another cgroup would be misattributed
/// for the rest of it.
pub struct Cache {
    by_pid: HashMap<u32, (Instant, Option<Attribution>)>,
}

/// How long a process's container is taken as known.
const FRESH: Duration = Duration::from_secs(1);
/// Entries kept at most (a churn of processes cannot grow it past this).
const MAX: usize = 4096;

impl Default for Cache {
    fn default() -> Self {
        Self::new()
    }
}

impl Cache {
    #[must_use]
    pub fn new() -> Self {
        Self {
            by_pid: HashMap::new(),
        }
    }

    /// Process `pid`'s container; `None` when it cannot be read.
    pub fn get(&mut self, pid: u32) -> Option<&Attribution> {
        let now = Instant::now();
        let fresh = self
            .by_pid
            .get(&pid)
            .is_some_and(|(at, _)| now.duration_since(*at) < FRESH);
        if !fresh {
            if self.by_pid.len() >= MAX {
                self.by_pid
                    .retain(|_, (at, _)| now.duration_since(*at) < FRESH);
                if self.by_pid.len() >= MAX {
                    self.by_pid.clear();
                }
            }
            self.by_pid.insert(pid, (now, Attribution::of_pid(pid)));
        }
        self.by_pid.get(&pid).and_then(|(_, c)| c.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4c3f8a2b9d1e0f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a";
    const UID: &str = "0f3b6c1e-2a4d-4e8f-9b7a-1c2d3e4f5a6b";

    fn parse(path: &str) -> Attribution {
        Attribution::parse(&format!("0::{path}\n"))
    }

    #[test]
    fn host_process() {
        let c = parse("/user.slice/user-0.slice/session-1.scope");
        assert_eq!(
            c,
            Attribution {
                cgroup: Some("/user.slice/user-0.slice/session-1.scope".into()),
                container_id: None,
                pod_uid: None,
            }
        );
    }

    #[test]
    fn docker_systemd_and_cgroupfs() {
        let c = parse(&format!("/system.slice/docker-{ID}.scope"));
        assert_eq!(c.container_id.as_deref(), Some(ID));
        assert_eq!(c.pod_uid, None);
        assert_eq!(
            parse(&format!("/docker/{ID}")).container_id.as_deref(),
            Some(ID)
        );
    }

    #[test]
    fn containerd_in_kubernetes() {
        let underscored = UID.replace('-', "_");
        let path = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{underscored}.slice/cri-containerd-{ID}.scope"
        );
        let c = parse(&path);
        assert_eq!(c.container_id.as_deref(), Some(ID));
        assert_eq!(c.pod_uid.as_deref(), Some(UID));
        assert_eq!(c.cgroup.as_deref(), Some(path.as_str()));
        // Guaranteed QoS: no QoS slice.
        let c = parse(&format!(
            "/kubepods.slice/kubepods-pod{underscored}.slice/cri-containerd-{ID}.scope"
        ));
        assert_eq!(c.pod_uid.as_deref(), Some(UID));
        // containerd's own form, and the cgroupfs driver's.
        let c = parse(&format!(
            "/system.slice/containerd.service/kubepods-besteffort-pod{underscored}.slice:cri-containerd:{ID}"
        ));
        assert_eq!(c.container_id.as_deref(), Some(ID));
        assert_eq!(c.pod_uid.as_deref(), Some(UID));
        let c = parse(&format!("/kubepods/burstable/pod{UID}/{ID}"));
        assert_eq!(c.container_id.as_deref(), Some(ID));
        assert_eq!(c.pod_uid.as_deref(), Some(UID));
    }

    #[test]
    fn seen_from_a_cgroup_namespace() {
        // kalive in a pod of its own, the workload in another, cgroupfs driver.
        let c = parse(&format!("/../../../besteffort/pod{UID}/{ID}"));
        assert_eq!(c.container_id.as_deref(), Some(ID));
        assert_eq!(c.pod_uid.as_deref(), Some(UID));
        // Systemd driver.
        let c = parse(&format!(
            "/../../kubepods-besteffort-pod{}.slice/cri-containerd-{ID}.scope",
            UID.replace('-', "_")
        ));
        assert_eq!(c.pod_uid.as_deref(), Some(UID));
        assert_eq!(c.container_id.as_deref(), Some(ID));
    }

    #[test]
    fn crio_and_podman_not_their_helpers() {
        let crio = parse(&format!(
            "/kubepods.slice/kubepods-pod{}.slice/crio-{ID}.scope",
            UID.replace('-', "_")
        ));
        assert_eq!(crio.container_id.as_deref(), Some(ID));
        assert_eq!(crio.pod_uid.as_deref(), Some(UID));
        assert_eq!(
            parse(&format!("/machine.slice/libpod-{ID}.scope"))
                .container_id
                .as_deref(),
            Some(ID)
        );
        assert_eq!(
            parse(&format!("/machine.slice/libpod-conmon-{ID}.scope")).container_id,
            None
        );
        assert_eq!(
            parse(&format!("/system.slice/crio-conmon-{ID}.scope")).container_id,
            None
        );
    }

    #[test]
    fn a_pod_slice_outside_kubepods_is_no_pod() {
        assert_eq!(parse(&format!("/system.slice/pod{UID}")).pod_uid, None);
        assert_eq!(
            parse("/kubepods.slice/kubepods-podnot-a-uid.slice").pod_uid,
            None
        );
        // Not 64 hex digits.
        assert_eq!(parse("/system.slice/docker-abc.scope").container_id, None);
        assert_eq!(
            parse(&format!("/docker/{}", ID.to_uppercase())).container_id,
            None
        );
    }

    #[test]
    fn v1_hierarchies() {
        // Docker on a cgroup v1 host, systemd's v2 hierarchy beside.
        let content = format!(
            "12:memory:/docker/{ID}\n11:cpu,cpuacct:/docker/{ID}\n1:name=systemd:/docker/{ID}\n0::/system.slice/docker.service\n"
        );
        let c = Attribution::parse(&content);
        assert_eq!(c.container_id.as_deref(), Some(ID));
        assert_eq!(c.cgroup, Some(format!("/docker/{ID}")));
        // v1 only.
        let c = Attribution::parse(
            "4:memory:/user.slice\n1:name=systemd:/user.slice/session-2.scope\n",
        );
        assert_eq!(c.cgroup.as_deref(), Some("/user.slice"));
        assert_eq!(c.container_id, None);
        // Where v2 names the container, v2 it is.
        let content = format!("4:memory:/\n0::/system.slice/docker-{ID}.scope\n");
        assert_eq!(
            Attribution::parse(&content).cgroup,
            Some(format!("/system.slice/docker-{ID}.scope"))
        );
        assert_eq!(Attribution::parse(""), Attribution::default());
    }

    #[test]
    fn this_process() {
        let c = Attribution::of_pid(std::process::id()).expect("readable");
        assert!(c.cgroup.is_some_and(|p| p.starts_with('/')));
        assert!(Attribution::of_pid(u32::MAX).is_none());
    }
}
