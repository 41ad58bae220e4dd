//! Finding a compiler that can build `kalive-ebpf` for `bpfel-unknown-none`, and a
//! `bpf-linker` that matches its LLVM.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use crate::cmd;

/// The bpf-linker release line kalive is built with.
pub const BPF_LINKER_VERSION: &str = "0.13";

/// How the BPF object gets its `core` library.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// A rustup nightly with `rust-src`: `core` is built with `-Z build-std=core`.
    Nightly { toolchain: String, llvm_major: u32 },
    /// A rustc that ships a prebuilt `core` for `bpfel-unknown-none` (on Debian:
    /// `rustc-web` + `libstd-rust-web-dev-bpf`).
    Prebuilt { rustc: PathBuf, llvm_major: u32 },
}

impl Route {
    pub const fn llvm_major(&self) -> u32 {
        match self {
            Self::Nightly { llvm_major, .. } | Self::Prebuilt { llvm_major, .. } => *llvm_major,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Self::Nightly { toolchain, .. } => {
                format!("rustup {toolchain} with rust-src (-Z build-std=core)")
            }
            Self::Prebuilt { rustc, .. } => {
                format!(
                    "{} with a prebuilt core for bpfel-unknown-none",
                    rustc.display()
                )
            }
        }
    }
}

/// Route 1 if present, else route 2, else `None`.
pub fn detect() -> Option<Route> {
    nightly().or_else(prebuilt)
}

fn nightly() -> Option<Route> {
    let toolchain = "nightly";
    let components = cmd::output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        toolchain,
    ]))
    .ok()?;
    if !components.lines().any(|c| c.starts_with("rust-src")) {
        return None;
    }
    let version =
        cmd::output(Command::new("rustup").args(["run", toolchain, "rustc", "-vV"])).ok()?;
    Some(Route::Nightly {
        toolchain: toolchain.to_owned(),
        llvm_major: llvm_major(&version)?,
    })
}

/// The system rustc (or `KALIVE_BPF_RUSTC`), when its sysroot has a prebuilt
/// `core` for the BPF target.
fn prebuilt() -> Option<Route> {
    let rustc = env::var_os("KALIVE_BPF_RUSTC")
        .map_or_else(|| PathBuf::from("/usr/bin/rustc"), PathBuf::from);
    let sysroot = cmd::output(Command::new(&rustc).args(["--print", "sysroot"])).ok()?;
    let lib = Path::new(sysroot.trim()).join("lib/rustlib/bpfel-unknown-none/lib");
    let has_core = fs::read_dir(lib).ok()?.flatten().any(|entry| {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        name.starts_with("libcore-") && name.ends_with(".rlib")
    });
    if !has_core {
        return None;
    }
    let version = cmd::output(Command::new(&rustc).arg("-vV")).ok()?;
    Some(Route::Prebuilt {
        llvm_major: llvm_major(&version)?,
        rustc,
    })
}

/// `LLVM version: 22.1.8` in `rustc -vV` -> 22.
fn llvm_major(rustc_vv: &str) -> Option<u32> {
    rustc_vv
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version: "))?
        .split('.')
        .next()?
        .trim()
        .parse()
        .ok()
}

/// What is wrong with the installed `bpf-linker`, if anything.
pub fn bpf_linker_problem(llvm_major: u32) -> Option<String> {
    let Ok(version) = cmd::output(Command::new("bpf-linker").arg("--version")) else {
        return Some("bpf-linker is not installed".to_owned());
    };
    let version = version.trim().trim_start_matches("bpf-linker ").to_owned();
    if !version.starts_with(&format!("{BPF_LINKER_VERSION}.")) {
        return Some(format!(
            "bpf-linker {version} is installed, kalive needs {BPF_LINKER_VERSION}.x"
        ));
    }
    match bpf_linker_llvm() {
        Some(major) if major == llvm_major => None,
        Some(major) => Some(format!(
            "bpf-linker {version} uses LLVM {major}, the BPF compiler uses LLVM {llvm_major}"
        )),
        None => Some(format!(
            "cannot tell which LLVM bpf-linker {version} uses; rebuilding it for LLVM {llvm_major}"
        )),
    }
}

/// The LLVM major version bpf-linker is linked against: from the shared library
/// it loads, or from the features cargo recorded when it installed it.
fn bpf_linker_llvm() -> Option<u32> {
    let path = cmd::which("bpf-linker")?;
    if let Ok(ldd) = cmd::output(Command::new("ldd").arg(&path)) {
        for word in ldd.split_whitespace() {
            // libLLVM.so.22.1 or libLLVM-22.so
            let digits = word
                .strip_prefix("libLLVM.so.")
                .or_else(|| word.strip_prefix("libLLVM-"));
            if let Some(major) = digits.and_then(|d| d.split(['.', '-']).next()?.parse().ok()) {
                return Some(major);
            }
        }
    }
    let home = env::var_os("CARGO_HOME").map_or_else(
        || PathBuf::from(env::var_os("HOME").unwrap_or_default()).join(".cargo"),
        PathBuf::from,
    );
    let crates = fs::read_to_string(home.join(".crates2.json")).ok()?;
    let entry = crates.split("\"bpf-linker ").nth(1)?;
    let features = entry.split("\"features\":[").nth(1)?.split(']').next()?;
    features.split(',').find_map(|f| {
        f.trim()
            .trim_matches('"')
            .strip_prefix("llvm-")?
            .parse()
            .ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_llvm_major_from_rustc_vv() {
        let vv = "rustc 1.96.0 (ac68faa20 2026-05-25)\nbinary: rustc\nhost: x86_64-unknown-linux-gnu\nLLVM version: 22.1.8\n";
        assert_eq!(llvm_major(vv), Some(22));
        assert_eq!(llvm_major("rustc 1.0\n"), None);
    }
}
