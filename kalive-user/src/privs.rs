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

use std::{ffi::CString, fs};

use anyhow::{Context as _, Result, bail};

pub const CAP_DAC_READ_SEARCH: u32 = 2;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_SYS_PTRACE: u32 = 19;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

/// Capabilities kept after attaching, and why.
pub const KEPT: &[(u32, &str, &str)] = &[
    (CAP_BPF, "CAP_BPF", "reading its maps"),
    (
        CAP_DAC_READ_SEARCH,
        "CAP_DAC_READ_SEARCH",
        "listing /proc/PID/fd",
    ),
    (
        CAP_SYS_PTRACE,
        "CAP_SYS_PTRACE",
        "finding socket owners in /proc",
    ),
];

/// This process's effective capabilities, as a bit set.
///
/// # Errors
/// When `/proc/self/status` cannot be read.
pub fn effective() -> Result<u64> {
    status_caps("CapEff")
}

fn status_caps(key: &str) -> Result<u64> {
    let status = fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .map(str::trim)
        .with_context(|| format!("no {key} in /proc/self/status"))?;
    u64::from_str_radix(hex, 16).with_context(|| format!("{key}: {hex}"))
}

/// What is missing to load and attach tracing programs: `CAP_BPF` and
/// `CAP_PERFMON` (`CAP_SYS_ADMIN` covers both), as one line saying how to run.
#[must_use]
pub fn missing_to_start(caps: u64, root: bool) -> Option<String> {
    let has = |cap: u32| caps & (1 << cap) != 0 || caps & (1 << CAP_SYS_ADMIN) != 0;
    let missing: Vec<&str> = [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")]
        .into_iter()
        .filter(|&(cap, _)| !has(cap))
        .map(|(_, name)| name)
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
        let c = CString::new(name).map_err(|_| format!("{name:?} is not a user name"))?;
        // SAFETY: getpwnam with a NUL-terminated name; the result is copied out
        // at once (kalive has no other threads yet).
        let pw = unsafe { libc::getpwnam(c.as_ptr()) };
        if pw.is_null() {
            return Err(format!("no user {name:?} on this system"));
        }
        // SAFETY: a non-NULL passwd entry.
        let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
        Ok(Self {
            name: name.to_owned(),
            uid,
            gid,
        })
    }
}

impl User {
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
    pub kept: Vec<&'static str>,
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
        for (i, (_, name, why)) in KEPT
            .iter()
            .filter(|(_, n, _)| self.kept.contains(n))
            .enumerate()
        {
            let sep = if i == 0 { "" } else { ", " };
            write!(f, "{sep}{name} ({why})")?;
        }
        Ok(())
    }
}

/// Becomes `user` (when given) and gives up every capability but those in
/// [`KEPT`] that this process has, for good: permitted, effective, inheritable,
/// ambient and bounding sets, and no new privileges on exec. Call it while the
/// process has a single thread: capabilities are per thread.
///
/// # Errors
/// When a step fails; kalive then stops rather than run with more than it says.
pub fn drop_to(user: Option<&User>) -> Result<Dropped> {
    let had = effective()?;
    let keep: u64 = KEPT
        .iter()
        .filter(|&&(cap, _, _)| had & (1 << cap) != 0)
        .fold(0, |set, &(cap, _, _)| set | (1 << cap));
    let last_cap: u32 = fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40);
    // SAFETY: prctl/set*id calls with plain integer arguments throughout.
    unsafe {
        if had & (1 << 8) != 0 {
            // CAP_SETPCAP: empty the bounding set but for what is kept.
            for cap in 0..=last_cap {
                if keep & (1 << cap) == 0 {
                    libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0);
                }
            }
        }
        if let Some(user) = user {
            if libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0 {
                return os_error("prctl(PR_SET_KEEPCAPS)");
            }
            if libc::setgroups(0, std::ptr::null()) != 0 {
                return os_error("setgroups");
            }
            if libc::setresgid(user.gid, user.gid, user.gid) != 0 {
                return os_error("setresgid");
            }
            if libc::setresuid(user.uid, user.uid, user.uid) != 0 {
                return os_error("setresuid");
            }
        }
    }
    capset(keep)?;
    // SAFETY: prctl with plain integer arguments.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        );
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return os_error("prctl(PR_SET_NO_NEW_PRIVS)");
        }
    }
    if effective()? != keep {
        bail!("capabilities still effective after dropping them");
    }
    Ok(Dropped {
        user: user.map(|u| u.name.clone()),
        kept: KEPT
            .iter()
            .filter(|&&(cap, _, _)| keep & (1 << cap) != 0)
            .map(|&(_, name, _)| name)
            .collect(),
    })
}

fn os_error<T>(what: &str) -> Result<T> {
    Err(std::io::Error::last_os_error()).with_context(|| format!("dropping privileges: {what}"))
}

/// Sets this thread's permitted and effective capabilities to `caps`, and
/// the inheritable set to none.
fn capset(caps: u64) -> Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    #[allow(clippy::cast_possible_truncation)] // the two 32-bit halves
    let half = |shift: u32| (caps >> shift) as u32;
    let data = [0, 32].map(|shift| Data {
        effective: half(shift),
        permitted: half(shift),
        inheritable: 0,
    });
    // SAFETY: capset(2) with a v3 header and two data structs, as it expects.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &raw mut header, data.as_ptr()) };
    if rc != 0 {
        return os_error("capset");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn says_what_is_missing_and_how_to_run() {
        let all = (1 << CAP_BPF) | (1 << CAP_PERFMON);
        assert_eq!(missing_to_start(all, true), None);
        assert_eq!(missing_to_start(1 << CAP_SYS_ADMIN, true), None);
        assert_eq!(
            missing_to_start(0, false).as_deref(),
            Some(
                "missing CAP_BPF and CAP_PERFMON to load BPF tracing programs: \
                 run it as root (sudo kalive)"
            )
        );
        let line = missing_to_start(1 << CAP_BPF, true).expect("missing");
        assert!(line.starts_with("missing CAP_PERFMON to load"), "{line}");
    }

    #[test]
    fn names_what_it_kept() {
        let d = Dropped {
            user: Some("nobody".to_owned()),
            kept: vec!["CAP_BPF", "CAP_SYS_PTRACE"],
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
