//! Finds the BPF object that `cargo xtask build-ebpf` produced, so that `kalive`
//! can embed it. Without it the build stops with one line saying what to run.

use std::{env, path::PathBuf};

fn main() {
    println!("cargo::rerun-if-env-changed=KALIVE_BPF_OBJECT");
    let object = env::var_os("KALIVE_BPF_OBJECT").map_or_else(
        || {
            let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
            let root = manifest
                .parent()
                .expect("kalive-user lives in the workspace");
            root.join("target/ebpf/bpfel-unknown-none/release/kalive")
        },
        PathBuf::from,
    );
    println!("cargo::rerun-if-changed={}", object.display());
    if !object.is_file() {
        println!(
            "cargo::error=BPF object {} not found: run `cargo xtask build-ebpf` first",
            object.display()
        );
        return;
    }
    println!("cargo::rustc-env=KALIVE_BPF_OBJECT={}", object.display());
}
