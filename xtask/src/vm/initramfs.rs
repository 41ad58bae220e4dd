//! The VM's initramfs: its init script, the test binaries and kalive with
//! the host libraries they load, the tools the tests run, and the kernel's
//! network modules, in the `newc` cpio format the kernel unpacks.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::{self, Write as _},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, anyhow};

use super::{TestBinary, kernel::Kernel};
use crate::cmd;

/// The init script: mounts and modules, then jobs from the host until it says
/// `done` (or, for `--script`, that script). It asks with `KALIVE-VM next`;
/// the host answers `BACKEND TEST PATH` on the serial console; each result is
/// one `KALIVE-VM result` line, with the test's output before it when it
/// fails. A failure is a failure: nothing runs twice. /tmp stays on the
/// initramfs: the checkout, and so the test binaries, may live under it.
fn init_script(script: bool) -> String {
    let mut s = String::from(
        "#!/bin/busybox sh\n\
         /bin/busybox mkdir -p /busybox\n\
         /bin/busybox --install -s /busybox\n\
         export PATH=/usr/sbin:/usr/bin:/sbin:/bin:/busybox\n\
         mount -t proc proc /proc\n\
         mount -t sysfs sysfs /sys\n\
         mount -t devtmpfs dev /dev\n\
         mount -t tmpfs run /run\n\
         mount -t cgroup2 cgroup2 /sys/fs/cgroup\n\
         mount -t tracefs tracefs /sys/kernel/tracing\n\
         ip link set lo up\n\
         modprobe veth\n\
         modprobe nf_tables\n\
         stty -echo\n\
         echo \"KALIVE-VM kernel $(uname -r)\"\n\
         export RUST_BACKTRACE=1 KALIVE_EXPECT_BACKENDS=fentry,kprobe,tracepoint KALIVE_TEST_SLOW=1\n",
    );
    if script {
        s.push_str("sh /debug.sh\necho KALIVE-VM done\npoweroff -f\n");
        return s;
    }
    s.push_str(
        "while :; do\n\
         echo 'KALIVE-VM next'\n\
         read -r backend name path || break\n\
         [ \"$backend\" = done ] && break\n\
         start=$(date +%s)\n\
         if KALIVE_BACKEND=$backend \"$path\" --include-ignored --test-threads 2 > /tmp/out 2>&1; \
         then r=pass; else r=fail; cat /tmp/out; fi\n\
         echo \"KALIVE-VM result backend=$backend test=$name $r $(( $(date +%s) - start ))s\"\n\
         done\n\
         echo KALIVE-VM done\n\
         poweroff -f\n",
    );
    s
}

/// Files of the initramfs: archive path -> what goes there.
#[derive(Default)]
struct Archive {
    entries: BTreeMap<PathBuf, Entry>,
}

enum Entry {
    Dir,
    File { source: PathBuf, mode: u32 },
    Inline { data: Vec<u8>, mode: u32 },
    Symlink(PathBuf),
}

impl Archive {
    /// A host file at the same path (its real one: /bin is a link to usr/bin
    /// on merged-/usr systems, and the archive has the same links).
    fn host_file(&mut self, path: &Path) -> Result<()> {
        let real =
            fs::canonicalize(path).with_context(|| format!("resolving {}", path.display()))?;
        let mode = fs::metadata(&real)?.permissions().mode();
        self.add(
            &real,
            Entry::File {
                source: real.clone(),
                mode,
            },
        );
        Ok(())
    }

    /// A host executable and the shared libraries it loads.
    fn host_program(&mut self, path: &Path) -> Result<()> {
        self.host_file(path)?;
        let ldd = cmd::output(Command::new("ldd").arg(path)).unwrap_or_default();
        for line in ldd.lines() {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
            // "/lib64/ld-linux-x86-64.so.2 (0x...)"
            let lib = line
                .split("=>")
                .last()
                .and_then(|rest| rest.split_whitespace().next());
            if let Some(lib) = lib.filter(|l| l.starts_with('/')) {
                let lib = Path::new(lib);
                self.host_file(lib)?;
                // Libraries are looked up by the name they were linked with,
                // which may be a link to the file: keep the link too, in its
                // directory's real place.
                if let (Ok(target), Some(dir), Some(name)) =
                    (fs::read_link(lib), lib.parent(), lib.file_name())
                {
                    self.add(&fs::canonicalize(dir)?.join(name), Entry::Symlink(target));
                }
            }
        }
        Ok(())
    }

    fn add(&mut self, path: &Path, entry: Entry) {
        let path = &real_dir(path);
        let mut parent = path.parent();
        while let Some(dir) = parent.filter(|d| *d != Path::new("/")) {
            self.entries.entry(dir.to_path_buf()).or_insert(Entry::Dir);
            parent = dir.parent();
        }
        self.entries.insert(path.clone(), entry);
    }

    /// Writes the archive in the `newc` cpio format the kernel unpacks.
    fn write(&self, out: &Path) -> Result<()> {
        let mut w = io::BufWriter::new(fs::File::create(out)?);
        let mut ino = 1u32;
        let mut entry = |w: &mut io::BufWriter<fs::File>,
                         name: &str,
                         mode: u32,
                         data: &[u8]|
         -> io::Result<()> {
            let header = format!(
                "070701{ino:08X}{mode:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}",
                0,
                0,
                1,
                0,
                data.len(),
                0,
                0,
                0,
                0,
                name.len() + 1,
                0
            );
            ino += 1;
            w.write_all(header.as_bytes())?;
            w.write_all(name.as_bytes())?;
            w.write_all(&[0])?;
            w.write_all(&vec![0; pad4(header.len() + name.len() + 1)])?;
            w.write_all(data)?;
            w.write_all(&vec![0; pad4(data.len())])
        };
        // Links last: the kernel unpacks in order, and a link may only be
        // followed once what it points to exists.
        let (links, rest): (Vec<_>, Vec<_>) = self
            .entries
            .iter()
            .partition(|(_, e)| matches!(e, Entry::Symlink(_)));
        for (path, e) in rest.into_iter().chain(links) {
            let name = path
                .strip_prefix("/")
                .unwrap_or(path)
                .to_string_lossy()
                .into_owned();
            match e {
                Entry::Dir => entry(&mut w, &name, 0o040_755, &[])?,
                Entry::File { source, mode } => {
                    let data = fs::read(source)
                        .with_context(|| format!("reading {}", source.display()))?;
                    entry(&mut w, &name, 0o100_000 | (mode & 0o7777), &data)?;
                }
                Entry::Inline { data, mode } => entry(&mut w, &name, 0o100_000 | mode, data)?,
                Entry::Symlink(target) => {
                    entry(
                        &mut w,
                        &name,
                        0o120_777,
                        target.as_os_str().as_encoded_bytes(),
                    )?;
                }
            }
        }
        entry(&mut w, "TRAILER!!!", 0, &[])?;
        w.flush()?;
        Ok(())
    }
}

/// `path` with a leading `/bin`, `/sbin`, `/lib` or `/lib64` replaced by what
/// it links to on the host (merged /usr): the archive makes the same links,
/// and nothing may be unpacked through one.
fn real_dir(path: &Path) -> PathBuf {
    let mut parts = path.components();
    let (Some(root), Some(top)) = (parts.next(), parts.next()) else {
        return path.to_path_buf();
    };
    let top_path = Path::new(root.as_os_str()).join(top);
    if ["/bin", "/sbin", "/lib", "/lib64"]
        .iter()
        .any(|t| Path::new(t) == top_path)
        && parts.clone().next().is_some()
        && let Ok(target) = fs::read_link(&top_path)
    {
        return Path::new("/").join(target).join(parts.as_path());
    }
    path.to_path_buf()
}

const fn pad4(len: usize) -> usize {
    (4 - len % 4) % 4
}

pub fn build(
    out: &Path,
    kernel: &Kernel,
    tests: &[TestBinary],
    script: Option<&Path>,
) -> Result<()> {
    let mut a = Archive::default();
    // Merged /usr: the same top-level links as the host.
    for top in ["/bin", "/sbin", "/lib", "/lib64"] {
        if let Ok(target) = fs::read_link(top) {
            a.add(Path::new(top), Entry::Symlink(target));
        }
    }
    for dir in ["/proc", "/sys", "/dev", "/tmp", "/run", "/etc"] {
        a.add(Path::new(dir), Entry::Dir);
    }
    a.add(Path::new("/var/run"), Entry::Symlink(PathBuf::from("/run")));
    // The kernel loads modules for nft through /sbin/modprobe.
    a.add(
        Path::new("/sbin/modprobe"),
        Entry::Symlink(PathBuf::from("/bin/busybox")),
    );
    a.host_file(Path::new("/bin/busybox"))
        .context("busybox (apt-get install busybox-static)")?;
    for tool in ["ip", "nstat", "nft", "sysctl", "ss", "tc"] {
        let path = cmd::which(tool).ok_or_else(|| anyhow!("{tool} is not installed"))?;
        a.host_program(&path)?;
    }
    for etc in ["/etc/protocols", "/etc/services"] {
        if Path::new(etc).exists() {
            a.host_file(Path::new(etc))?;
        }
    }
    let kalive = tests[0]
        .path
        .parent()
        .and_then(|deps| deps.parent())
        .map(|release| release.join("kalive"))
        .ok_or_else(|| anyhow!("no release directory"))?;
    a.host_program(&kalive)?;
    for test in tests {
        a.host_program(&test.path)?;
    }

    // The kernel's config (kalive reads HZ from it) and network modules.
    let modules = Path::new("/lib/modules").join(&kernel.version);
    a.add(
        &Path::new("/boot").join(format!("config-{}", kernel.version)),
        Entry::File {
            source: kernel.root.join(format!("boot/config-{}", kernel.version)),
            mode: 0o644,
        },
    );
    // The network modules (veth, nf_tables, ...) and what they depend on.
    let mut module_files = BTreeSet::new();
    let deps = fs::read_to_string(kernel.modules().join("modules.dep"))?;
    for line in deps.lines() {
        let Some((module, needs)) = line.split_once(':') else {
            continue;
        };
        if module.starts_with("kernel/net/") || module.ends_with("/veth.ko") {
            for rel in std::iter::once(module).chain(needs.split_whitespace()) {
                module_files.insert(kernel.modules().join(rel));
            }
        }
    }
    for entry in fs::read_dir(kernel.modules())? {
        let path = entry?.path();
        if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("modules."))
        {
            module_files.insert(path);
        }
    }
    for source in module_files {
        let rel = source.strip_prefix(kernel.modules())?;
        a.add(
            &modules.join(rel),
            Entry::File {
                source,
                mode: 0o644,
            },
        );
    }
    a.add(
        Path::new("/init"),
        Entry::Inline {
            data: init_script(script.is_some()).into_bytes(),
            mode: 0o755,
        },
    );
    if let Some(script) = script {
        a.add(
            Path::new("/debug.sh"),
            Entry::File {
                source: script.to_path_buf(),
                mode: 0o755,
            },
        );
    }
    for tool in ["bpftool"] {
        if let Some(path) = cmd::which(tool) {
            a.host_program(&path)?;
        }
    }
    a.write(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_newc_archives() {
        let dir = std::env::temp_dir().join(format!("kalive-cpio-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("dir");
        let mut a = Archive::default();
        a.add(
            Path::new("/a/b"),
            Entry::Inline {
                data: b"hi".to_vec(),
                mode: 0o644,
            },
        );
        a.add(Path::new("/l"), Entry::Symlink(PathBuf::from("a")));
        let out = dir.join("x.cpio");
        a.write(&out).expect("write");
        let bytes = fs::read(&out).expect("read");
        let _ = fs::remove_dir_all(&dir);
        // Every header is 110 bytes of "070701" and hex; names NUL-terminated;
        // everything 4-byte aligned; ends with TRAILER!!!.
        assert!(bytes.starts_with(b"070701"));
        assert_eq!(bytes.len() % 4, 0);
        let text = String::from_utf8_lossy(&bytes);
        for name in ["a\0", "a/b\0", "l\0", "TRAILER!!!\0"] {
            assert!(text.contains(name), "{name:?} in {text:?}");
        }
        let data_at = text.find("a/b\0").expect("entry") + 4;
        assert_eq!(&bytes[data_at + pad4(110 + 4)..][..2], b"hi");
    }
}
