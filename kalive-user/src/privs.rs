//! Privileges: what kalive needs to start, checked before anything is loaded,
//! and what it gives up once its programs are attached.
//!
//! After attaching, kalive switches to an unprivileged user and keeps three
//! capabilities: `CAP_BPF`, to read its counters and tell its programs about
//! owners (kernels before 6.5 refuse every `bpf()` call without it when
//! unprivileged BPF is disabled); `CAP_SYS_PTRACE` and `CAP_DAC_READ_SEARCH`,
//! to find the owners of sockets in other users' `/proc/PID/fd` (a directory
//! only its owner may list) and take a descriptor with `pidfd_getfd` for a
//! socket's cookie.

use std::fs;

use anyhow::{Context as _, Result, bail};
use caps::{CapSet, Capability, CapsHashSet};
use nix::{
    sys::prctl,
    unistd::{self, Gid, Uid},
};

/// Capabilities kept after attaching, and why.
pub const KEPT: &[(Capability, &str)] = &[
    (Capability::CAP_BPF, "reading its maps"),
    (Capability::CAP_DAC_READ_SEARCH, "listing /proc/PID/fd"),
    (Capability::CAP_SYS_PTRACE, "finding socket owners in /proc"),
];

/// Kept too by an agent whose metrics list every connection each interval:
/// `kalive ls` joins each network namespace to read its sockets.
pub const KEPT_FOR_CONNECTIONS: (Capability, &str) = (
    Capability::CAP_SYS_ADMIN,
    "joining network namespaces to list connections",
);

/// This thread's effective capabilities.
///
/// # Errors
/// When the kernel does not say (`capget`).
pub fn effective() -> Result<CapsHashSet> {
    caps::read(None, CapSet::Effective).context("reading the effective capabilities")
}

/// What is missing to load and attach tracing programs: `CAP_BPF` and
/// `CAP_PERFMON` (`CAP_SYS_ADMIN` covers both), as one line saying how to run.
#[must_use]
pub fn missing_to_start(caps: &CapsHashSet, root: bool) -> Option<String> {
    let has = |cap| caps.contains(&cap) || caps.contains(&Capability::CAP_SYS_ADMIN);
    let missing: Vec<String> = [Capability::CAP_BPF, Capability::CAP_PERFMON]
        .into_iter()
        .filter(|&cap| !has(cap))
        .map(|cap| cap.to_string())
        .collect();
    if missing.is_empty() {
        return None;
    }
    let how = if root {
        "this root has lost them (a container or capsh?); run kalive where root has them"
    } else {
        "run it as root (sudo kalive)"
    };
    Some(format!(
        "missing {} to load BPF tracing programs: {how}",
        missing.join(" and ")
    ))
}

/// Whom to become after attaching (`--user`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl User {
    /// Looks `name` up in the user database.
    ///
    /// # Errors
    /// When there is no such user.
    pub fn lookup(name: &str) -> Result<Self, String> {
        if name.contains('\0') {
            return Err(format!("{name:?} is not a user name"));
        }
        match unistd::User::from_name(name) {
            Ok(Some(user)) => Ok(Self {
                name: name.to_owned(),
                uid: user.uid.as_raw(),
                gid: user.gid.as_raw(),
            }),
            Ok(None) => Err(format!("no user {name:?} on this system")),
            Err(err) => Err(format!("looking up user {name:?}: {err}")),
        }
    }

    /// `nobody`; where the user database has no such entry (a minimal
    /// container or initramfs), the kernel's overflow ids (65534), which
    /// own nothing either.
    #[must_use]
    pub fn nobody() -> Self {
        Self::lookup("nobody").unwrap_or_else(|_| {
            let id = |file: &str| {
                fs::read_to_string(file)
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                    .unwrap_or(65534)
            };
            let uid = id("/proc/sys/kernel/overflowuid");
            Self {
                name: format!("uid {uid}"),
                uid,
                gid: id("/proc/sys/kernel/overflowgid"),
            }
        })
    }
}

/// What [`drop_to`] did, for the start-up line.
#[derive(Debug)]
pub struct Dropped {
    pub user: Option<String>,
    pub kept: Vec<(Capability, &'static str)>,
}

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(user) = &self.user {
            write!(f, "running as {user}, ")?;
        }
        if self.kept.is_empty() {
            return f.write_str("without capabilities");
        }
        f.write_str("keeping ")?;
        for (i, (cap, why)) in self.kept.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(f, "{sep}{cap} ({why})")?;
        }
        Ok(())
    }
}

/// Becomes `user` (when given) and gives up every capability but those in
/// `kept` (see [`KEPT`]) that this process has, for good: permitted, effective, inheritable,
/// ambient and bounding sets, and no new privileges on exec. Call it while the
/// process has a single thread: capabilities are per thread.
///
/// # Errors
/// When a step fails; kalive then stops rather than run with more than it says.
pub fn drop_to(user: Option<&User>, kept: &[(Capability, &'static str)]) -> Result<Dropped> {
    let had = effective()?;
    let keep: CapsHashSet = kept
        .iter()
        .map(|&(cap, _)| cap)
        .filter(|cap| had.contains(cap))
        .collect();
    if had.contains(&Capability::CAP_SETPCAP) {
        // Empty the bounding set but for what is kept. A capability this
        // kernel does not know is refused: there is nothing to drop then.
        for &cap in caps::all().difference(&keep) {
            let _ = caps::drop(None, CapSet::Bounding, cap);
        }
    }
    if let Some(user) = user {
        let (uid, gid) = (Uid::from_raw(user.uid), Gid::from_raw(user.gid));
        prctl::set_keepcaps(true).context("dropping privileges: prctl(PR_SET_KEEPCAPS)")?;
        unistd::setgroups(&[]).context("dropping privileges: setgroups")?;
        unistd::setresgid(gid, gid, gid).context("dropping privileges: setresgid")?;
        unistd::setresuid(uid, uid, uid).context("dropping privileges: setresuid")?;
    }
    // Effective first: it may never hold more than the permitted set.
    for set in [CapSet::Effective, CapSet::Permitted] {
        caps::set(None, set, &keep).context("dropping privileges: capset")?;
    }
    caps::clear(None, CapSet::Inheritable).context("dropping privileges: capset")?;
    // Empty already: the kernel keeps no ambient capability outside the
    // inheritable set.
    let _ = caps::clear(None, CapSet::Ambient);
    prctl::set_no_new_privs().context("dropping privileges: prctl(PR_SET_NO_NEW_PRIVS)")?;
    if effective()? != keep {
        bail!("capabilities still effective after dropping them");
    }
    Ok(Dropped {
        user: user.map(|u| u.name.clone()),
        kept: kept
            .iter()
            .filter(|(cap, _)| keep.contains(cap))
            .copied()
            .collect(),
    })
}

/// Gives up `cap` in this thread only (effective and permitted sets): threads
/// started before keep it, threads started after do not have it.
///
/// # Errors
/// When the kernel refuses (`capset`).
pub fn drop_in_this_thread(cap: Capability) -> Result<()> {
    for set in [CapSet::Effective, CapSet::Permitted] {
        caps::drop(None, set, cap).context("dropping a capability: capset")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn says_what_is_missing_and_how_to_run() {
        let set = |caps: &[Capability]| caps.iter().copied().collect::<CapsHashSet>();
        let all = set(&[Capability::CAP_BPF, Capability::CAP_PERFMON]);
        assert_eq!(missing_to_start(&all, true), None);
        assert_eq!(
            missing_to_start(&set(&[Capability::CAP_SYS_ADMIN]), true),
            None
        );
        assert_eq!(
            missing_to_start(&set(&[]), false).as_deref(),
            Some(
                "missing CAP_BPF and CAP_PERFMON to load BPF tracing programs: \
                 run it as root (sudo kalive)"
            )
        );
        let line = missing_to_start(&set(&[Capability::CAP_BPF]), true).expect("missing");
        assert!(line.starts_with("missing CAP_PERFMON to load"), "{line}");
    }

    #[test]
    fn names_what_it_kept() {
        let d = Dropped {
            user: Some("nobody".to_owned()),
            kept: vec![KEPT[0], KEPT[2]],
        };
        assert_eq!(
            d.to_string(),
            "running as nobody, keeping CAP_BPF (reading its maps), CAP_SYS_PTRACE \
             (finding socket owners in /proc)"
        );
    }

    #[test]
    fn nobody_exists_one_way_or_another() {
        let nobody = User::nobody();
        assert_ne!(nobody.uid, 0);
        assert!(
            nobody.name == "nobody" || nobody.name.starts_with("uid "),
            "{nobody:?}"
        );
    }

    #[test]
    fn unknown_users_are_refused() {
        assert!(User::lookup("no-such-user-kalive").is_err());
        assert_eq!(User::lookup("root").map(|u| u.uid), Ok(0));
    }
}
