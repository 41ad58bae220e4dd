//! `cargo xtask setup`: install what a fresh machine lacks, and nothing else.
//!
//! Every step checks first, so running it again installs nothing. On Debian it
//! installs with apt and cargo; elsewhere it prints the equivalent steps.

use std::{path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::{
    cmd::{self, privileged},
    toolchain::{self, BPF_LINKER_VERSION, Route},
};

/// What the caller is about to do; tests need more tools than a build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Build,
    /// The end-to-end tests, on this kernel and in the VM.
    Test,
}

/// Debian packages the end-to-end tests use, and why.
const TEST_PACKAGES: &[(&str, &str)] = &[
    (
        "iproute2",
        "network namespaces, veth and nstat for the end-to-end tests",
    ),
    (
        "nftables",
        "dropping a peer's packets in the end-to-end tests",
    ),
    ("procps", "sysctl in the end-to-end tests"),
    (
        "bpftool",
        "checking that no kalive program is left in the kernel; per-program costs",
    ),
    (
        "prometheus",
        "a real Prometheus scraping kalive --metrics in the tests, and promtool",
    ),
    ("curl", "scraping /metrics in the tests"),
    (
        "socat",
        "the client and server of docs/guide.md, whose commands a test runs",
    ),
    (
        "bpftrace",
        "the peer `cargo xtask bench` compares kalive with (and its smoke run in the tests)",
    ),
    (
        "systemd",
        "systemd-analyze verify on deploy/systemd/kalive.service in the tests",
    ),
    (
        "python3-venv",
        "a virtual environment for kubernetes-validate, which checks deploy/kubernetes offline",
    ),
];

/// The Kubernetes schema validator the tests run on deploy/kubernetes (a
/// Python package bundling every Kubernetes version's schema: offline once
/// installed), and its version.
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";

/// Where the validator is installed: a virtual environment of its own.
#[must_use]
pub fn tools_dir() -> std::path::PathBuf {
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    Path::new(&home).join(".local/share/kalive/tools")
}

/// The validator's executable.
#[must_use]
pub fn kubernetes_validate() -> std::path::PathBuf {
    tools_dir().join("bin/kubernetes-validate")
}

/// Installs the validator if it is not there at its version.
fn ensure_kubernetes_validate() -> Result<()> {
    let version = KUBERNETES_VALIDATE.rsplit('=').next().unwrap_or_default();
    let installed = cmd::output(Command::new(kubernetes_validate()).arg("--version"))
        .is_ok_and(|v| v.contains(version));
    if installed {
        return Ok(());
    }
    let dir = tools_dir();
    eprintln!(
        "setup: installing {KUBERNETES_VALIDATE} in {}: the tests validate deploy/kubernetes with it",
        dir.display()
    );
    cmd::run(Command::new("python3").args(["-m", "venv"]).arg(&dir))?;
    cmd::run(Command::new(dir.join("bin/pip")).args(["install", "--quiet", KUBERNETES_VALIDATE]))
}

/// And what `vm-test` needs on top.
const VM_PACKAGES: &[(&str, &str)] = &[
    (
        "qemu-system-x86",
        "booting a second kernel for the end-to-end tests",
    ),
    ("busybox-static", "the init of the test VM"),
    ("kmod", "depmod for the test VM's kernel modules"),
];

/// `cargo xtask setup`: everything, for the tests too.
pub fn run() -> Result<()> {
    let route = ensure(Purpose::Test)?;
    eprintln!(
        "setup: everything is installed; BPF compiler: {}",
        route.describe()
    );
    Ok(())
}

/// Makes sure a BPF compiler route, a matching bpf-linker and (for tests) the test
/// tools are present, installing what is missing. Returns the route to build with.
pub fn ensure(purpose: Purpose) -> Result<Route> {
    let debian = Path::new("/etc/debian_version").exists() && cmd::which("apt-get").is_some();
    let mut apt: Vec<(String, String)> = Vec::new();

    let route = toolchain::detect();
    if route.is_none() {
        for pkg in ["rustc-web", "libstd-rust-web-dev-bpf"] {
            apt.push((
                pkg.to_owned(),
                "a rustc with a prebuilt core for bpfel-unknown-none (no nightly with rust-src here)".to_owned(),
            ));
        }
    }
    let packages: &[&[(&str, &str)]] = match purpose {
        Purpose::Build => &[],
        Purpose::Test => &[TEST_PACKAGES, VM_PACKAGES],
    };
    for &(pkg, why) in packages.iter().copied().flatten() {
        if !dpkg_installed(pkg) {
            apt.push((pkg.to_owned(), why.to_owned()));
        }
    }
    if !debian {
        let missing_tool = packages
            .iter()
            .copied()
            .flatten()
            .any(|(p, _)| cmd::which(tool_of(p)).is_none());
        if route.is_none() || missing_tool {
            print_manual_steps();
            bail!("this is not a Debian machine: install the above by hand, then run this again");
        }
    } else if !apt.is_empty() {
        apt_install(&apt)?;
    }

    if purpose == Purpose::Test {
        ensure_kubernetes_validate()?;
    }

    let route = match route {
        Some(route) => route,
        None => toolchain::detect().context(
            "rustc-web and libstd-rust-web-dev-bpf are installed but /usr/bin/rustc has no \
             core for bpfel-unknown-none; see `cargo xtask setup --help`",
        )?,
    };

    let llvm = route.llvm_major();
    if let Some(problem) = toolchain::bpf_linker_problem(llvm) {
        eprintln!("setup: {problem}");
        if !debian {
            print_manual_steps();
            bail!(
                "install bpf-linker {BPF_LINKER_VERSION} built for LLVM {llvm}, then run this again"
            );
        }
        let dev: Vec<(String, String)> = [
            format!("llvm-{llvm}-dev"),
            format!("libpolly-{llvm}-dev"),
            "libzstd-dev".to_owned(),
            "zlib1g-dev".to_owned(),
        ]
        .into_iter()
        .filter(|pkg| !dpkg_installed(pkg))
        .map(|pkg| (pkg, format!("building bpf-linker against LLVM {llvm}")))
        .collect();
        if !dev.is_empty() {
            apt_install(&dev)?;
        }
        install_bpf_linker(llvm)?;
        if let Some(problem) = toolchain::bpf_linker_problem(llvm) {
            bail!("after installing bpf-linker: {problem}");
        }
    }
    Ok(route)
}

/// The command a test package provides, to check for it off Debian.
fn tool_of(package: &str) -> &str {
    match package {
        "iproute2" => "ip",
        "nftables" => "nft",
        "procps" => "sysctl",
        "qemu-system-x86" => "qemu-system-x86_64",
        "busybox-static" => "busybox",
        "kmod" => "depmod",
        "bpftool" => "bpftool",
        "prometheus" => "promtool",
        "systemd" => "systemd-analyze",
        "python3-venv" => "python3",
        other => other,
    }
}

fn dpkg_installed(pkg: &str) -> bool {
    cmd::output(Command::new("dpkg-query").args(["-W", "-f=${db:Status-Abbrev}", pkg]))
        .is_ok_and(|status| status.starts_with("ii"))
}

/// `apt-get update` once, then install `pkgs`, saying why each is needed.
fn apt_install(pkgs: &[(String, String)]) -> Result<()> {
    for (pkg, why) in pkgs {
        eprintln!("setup: installing {pkg}: {why}");
    }
    cmd::run(privileged("apt-get").args(["update", "-q"]))?;
    cmd::run(
        privileged("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(pkgs.iter().map(|(pkg, _)| pkg))
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn install_bpf_linker(llvm: u32) -> Result<()> {
    eprintln!(
        "setup: installing bpf-linker {BPF_LINKER_VERSION} for LLVM {llvm} (links the BPF object; a few minutes)"
    );
    cmd::run(
        Command::new("cargo")
            .args(["install", "bpf-linker", "--force", "--no-default-features"])
            .arg("--version")
            .arg(format!("~{BPF_LINKER_VERSION}"))
            .arg("--features")
            .arg(format!("llvm-{llvm}"))
            .env("LLVM_PREFIX", format!("/usr/lib/llvm-{llvm}")),
    )
}

pub fn print_manual_steps() {
    eprintln!(
        "\
kalive needs, to build its BPF object, one of:
  1. a rustup nightly with rust-src:
       rustup toolchain install nightly --component rust-src
  2. a rustc that ships a prebuilt core for bpfel-unknown-none (Debian: apt-get
     install rustc-web libstd-rust-web-dev-bpf)
and bpf-linker {BPF_LINKER_VERSION} built against the same LLVM major version as that rustc:
       LLVM_PREFIX=/usr/lib/llvm-<N> cargo install bpf-linker --version '~{BPF_LINKER_VERSION}' \\
           --no-default-features --features llvm-<N>
     (needs the LLVM <N> development files, polly, zstd and zlib headers)
The end-to-end tests also need: ip (iproute2), nstat (iproute2), nft (nftables),
sysctl (procps), bpftool, promtool and prometheus, curl, socat, bpftrace,
systemd-analyze, and {KUBERNETES_VALIDATE} in a virtual environment at
~/.local/share/kalive/tools (python3 -m venv; pip install); `vm-test` also needs
qemu-system-x86_64, a static busybox and depmod."
    );
}
