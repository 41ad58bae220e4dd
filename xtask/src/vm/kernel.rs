//! The kernel the VMs boot: Debian's 6.1 cloud kernel, fetched with apt.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Result, anyhow};

use crate::cmd;

/// The kernel the suite runs on, as Debian packages it.
const PACKAGE_PATTERN: &str = r"^linux-image-6\.1\.0-[0-9]+-cloud-amd64-unsigned$";

pub struct Kernel {
    pub version: String,
    /// The extracted package.
    pub root: PathBuf,
}

impl Kernel {
    pub fn vmlinuz(&self) -> PathBuf {
        self.root.join(format!("boot/vmlinuz-{}", self.version))
    }

    pub fn modules(&self) -> PathBuf {
        self.root.join("lib/modules").join(&self.version)
    }
}

/// The newest 6.1 cloud kernel package, downloaded and unpacked once.
pub fn fetch(dir: &Path) -> Result<Kernel> {
    let search =
        cmd::output(Command::new("apt-cache").args(["search", "--names-only", PACKAGE_PATTERN]))?;
    let package = search
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .max_by_key(|name| abi(name))
        .ok_or_else(|| anyhow!("no package matches {PACKAGE_PATTERN} (apt-get update?)"))?
        .to_owned();
    let version = package
        .strip_prefix("linux-image-")
        .and_then(|v| v.strip_suffix("-unsigned"))
        .ok_or_else(|| anyhow!("unexpected package name {package}"))?
        .to_owned();
    let root = dir.join(format!("kernel-{version}"));
    let kernel = Kernel { version, root };
    if kernel.vmlinuz().is_file() && kernel.modules().join("modules.dep").is_file() {
        return Ok(kernel);
    }
    let deb = find_deb(dir, &package);
    let deb = if let Some(deb) = deb {
        deb
    } else {
        eprintln!("vm-test: downloading {package}");
        cmd::run(Command::new("apt-get").current_dir(dir).args([
            "-q",
            "-o",
            "APT::Sandbox::User=root",
            "download",
            &package,
        ]))?;
        find_deb(dir, &package).ok_or_else(|| anyhow!("apt-get download left no {package} .deb"))?
    };
    cmd::run(
        Command::new("dpkg-deb")
            .arg("-x")
            .arg(&deb)
            .arg(&kernel.root),
    )?;
    // The package leaves modules.dep to its postinst.
    cmd::run(
        Command::new("depmod")
            .arg("-b")
            .arg(&kernel.root)
            .arg(&kernel.version),
    )?;
    Ok(kernel)
}

/// `linux-image-6.1.0-56-cloud-amd64-unsigned` -> 56
fn abi(package: &str) -> u32 {
    package
        .strip_prefix("linux-image-6.1.0-")
        .and_then(|rest| rest.split('-').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn find_deb(dir: &Path, package: &str) -> Option<PathBuf> {
    fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{package}_")))
                && p.extension().is_some_and(|e| e == "deb")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_newest_abi() {
        assert_eq!(abi("linux-image-6.1.0-56-cloud-amd64-unsigned"), 56);
        assert_eq!(abi("linux-image-6.1.0-9-cloud-amd64-unsigned"), 9);
        assert_eq!(abi("linux-image-foo"), 0);
    }
}
