//! Network namespaces that are deleted when dropped, with the kernel's own
//! counters and settings read from inside them.

use std::{
    fs::File,
    os::unix::fs::MetadataExt as _,
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
};

use anyhow::{Context as _, Result, anyhow};
use nix::sched::{CloneFlags, setns};

use crate::output;

/// A network namespace with loopback up, deleted on drop (with every socket
/// still in it).
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// A fresh namespace named `kalive-TAG-PID-N`.
    ///
    /// # Errors
    /// When `ip netns add` fails.
    pub fn new(tag: &str) -> Result<Self> {
        static COUNT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "kalive-{tag}-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        );
        output(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's inode number, as the kernel reports it (`net->ns.inum`).
    ///
    /// # Errors
    /// When its file in `/run/netns` is gone.
    pub fn inode(&self) -> Result<u64> {
        let path = format!("/run/netns/{}", self.name);
        Ok(std::fs::metadata(&path).with_context(|| path)?.ino())
    }

    /// `ip -n NS ARGS`; its stdout.
    ///
    /// # Errors
    /// When `ip` fails.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        output(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    /// A command that runs inside the namespace.
    #[must_use]
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Runs `program ARGS` inside the namespace; its stdout.
    ///
    /// # Errors
    /// When the program fails.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String> {
        output(self.command(program).args(args))
    }

    /// `nft ARGS` inside the namespace.
    ///
    /// # Errors
    /// When `nft` fails.
    pub fn nft(&self, args: &[&str]) -> Result<String> {
        self.exec("nft", args)
    }

    /// A kernel SNMP/netstat counter of this namespace, as `nstat` names it
    /// (`TcpExtTCPKeepAlive`).
    ///
    /// # Errors
    /// When `nstat` fails or does not know the counter.
    pub fn counter(&self, name: &str) -> Result<u64> {
        // -a: absolute values, -s: leave nstat's history alone, -z: print zeros.
        let out = self.exec("nstat", &["-asz", name])?;
        out.lines()
            .find_map(|line| {
                let mut fields = line.split_whitespace();
                (fields.next()? == name).then(|| fields.next()?.parse().ok())?
            })
            .ok_or_else(|| anyhow!("no {name} in nstat output:\n{out}"))
    }

    /// A sysctl of this namespace (`net.ipv4.tcp_keepalive_time`).
    ///
    /// # Errors
    /// When `sysctl` fails.
    pub fn sysctl(&self, key: &str) -> Result<String> {
        Ok(self.exec("sysctl", &["-n", key])?.trim().to_owned())
    }

    /// Sets a sysctl of this namespace.
    ///
    /// # Errors
    /// When `sysctl` fails.
    pub fn set_sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.exec("sysctl", &["-q", "-w", &format!("{key}={value}")])
            .map(drop)
    }

    /// Runs `f` on a thread inside this namespace; threads it spawns are inside
    /// too, and so are the sockets they create.
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> thread::JoinHandle<Result<T>> {
        let path = format!("/run/netns/{}", self.name);
        thread::spawn(move || {
            let ns = File::open(&path).with_context(|| format!("opening {path}"))?;
            // Only this thread's network namespace changes.
            setns(ns, CloneFlags::CLONE_NEWNET).context("setns")?;
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs root (creates a namespace): run by `cargo xtask test`.
    #[test]
    #[ignore = "needs root: run with `cargo xtask test`"]
    fn a_namespace_has_its_own_counters_and_is_gone_on_drop() {
        let ns = Netns::new("testkit").expect("a namespace");
        let name = ns.name().to_owned();
        assert_eq!(ns.counter("TcpExtTCPKeepAlive").expect("nstat"), 0);
        ns.set_sysctl("net.ipv4.tcp_keepalive_time", "77")
            .expect("sysctl");
        assert_eq!(
            ns.sysctl("net.ipv4.tcp_keepalive_time").expect("sysctl"),
            "77"
        );
        assert_ne!(ns.inode().expect("inode"), 0);
        assert!(ns.counter("NoSuchCounter").is_err());
        let inside = ns
            .run(|| Ok(std::fs::metadata("/proc/thread-self/ns/net")?.ino()))
            .join()
            .expect("the thread")
            .expect("its namespace");
        assert_eq!(inside, ns.inode().expect("inode"));
        drop(ns);
        let list = output(Command::new("ip").args(["netns", "list"])).expect("ip");
        assert!(!list.contains(&name), "{list}");
    }
}
