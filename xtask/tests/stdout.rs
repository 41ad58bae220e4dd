//! `cargo xtask run -- --format json | jq` must see kalive's records and
//! nothing else: what xtask and the commands it runs print before kalive
//! starts (apt-get, `cargo install bpf-linker`, cargo builds) goes to stderr.
//!
//! These run the real xtask on a made-up machine: its PATH holds only
//! stand-ins for the tools xtask runs, and each stand-in that does work
//! prints to stdout, as apt-get and build scripts do. So the path a fresh
//! machine takes (installing with apt-get, building bpf-linker) runs here
//! without installing anything, and any child whose stdout reaches xtask's
//! stdout shows up in what the test reads.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Output},
};

/// What the stand-in kalive writes on stdout for `--format json`.
const RECORD: &str = "{\"event\":\"stand-in\",\"args\":\"--format json\"}\n";

/// A directory with stand-ins for everything xtask runs; removed on drop.
struct Machine {
    dir: PathBuf,
}

impl Machine {
    /// With `installed`, the BPF compiler and bpf-linker are there already;
    /// without, the stand-in apt-get and cargo install them.
    fn new(name: &str, installed: bool) -> Self {
        let dir = std::env::temp_dir().join(format!("kalive-xtask-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let machine = Self { dir };
        let (bin, state) = (machine.path("bin"), machine.path("state"));
        let core_dir = machine.path("sysroot/lib/rustlib/bpfel-unknown-none/lib");
        for dir in [&bin, &state, &core_dir, &machine.path("home")] {
            fs::create_dir_all(dir).expect("a directory");
        }
        let core = core_dir.join("libcore-0123.rlib");
        let linker = state.join("bpf-linker");
        if installed {
            fs::write(&core, "").expect("core");
            fs::write(&linker, "").expect("bpf-linker");
        }
        let (core, linker, sysroot) = (
            core.display(),
            linker.display(),
            machine.path("sysroot").display().to_string(),
        );
        let tools = [
            // A rustc with a prebuilt core for the BPF target once
            // libstd-rust-web-dev-bpf is installed (KALIVE_BPF_RUSTC).
            (
                "rustc",
                format!(
                    "case \"$1\" in\n\
                     --print) echo {sysroot} ;;\n\
                     -vV) echo 'rustc 1.0.0 (stand-in)'; echo 'LLVM version: 99.1.0' ;;\n\
                     *) exit 1 ;;\n\
                     esac"
                ),
            ),
            (
                "bpf-linker",
                format!("[ -e {linker} ] || exit 127\necho 'bpf-linker 0.13.9'"),
            ),
            (
                "ldd",
                "echo '\tlibLLVM.so.99.1 => /usr/lib/libLLVM.so.99.1 (0x00007f0000000000)'"
                    .to_owned(),
            ),
            // Nothing is installed.
            ("dpkg-query", "printf 'un '\nexit 1".to_owned()),
            (
                "apt-get",
                format!(
                    "echo \"apt-get says on stdout: $*\"\n\
                     for pkg; do [ \"$pkg\" = libstd-rust-web-dev-bpf ] && : > {core}; done\n\
                     exit 0"
                ),
            ),
            (
                "cargo",
                format!(
                    "echo \"cargo says on stdout: $*\"\n\
                     [ \"$1\" = install ] && : > {linker}\n\
                     exit 0"
                ),
            ),
            ("sudo", "exec \"$@\"".to_owned()),
            // `python3 -m venv DIR` makes DIR/bin/pip, which says what it
            // installs on stdout, as pip does.
            (
                "python3",
                "[ \"$1 $2\" = '-m venv' ] || exit 1\n\
                 /bin/mkdir -p \"$3/bin\"\n\
                 printf '#!/bin/sh\\necho \"pip says on stdout: $*\"\\n' > \"$3/bin/pip\"\n\
                 /bin/chmod +x \"$3/bin/pip\""
                    .to_owned(),
            ),
        ];
        for (tool, script) in tools {
            script_file(&bin.join(tool), &script);
        }
        fs::create_dir_all(machine.path("target/release")).expect("target");
        script_file(
            &machine.path("target/release/kalive"),
            "echo 'kalive: tracing' >&2\nprintf '{\"event\":\"stand-in\",\"args\":\"%s\"}\\n' \"$*\"",
        );
        machine
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// Runs `xtask ARGS` on this machine.
    fn xtask(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_xtask"))
            .args(args)
            .env_clear()
            .env("PATH", self.path("bin"))
            .env("HOME", self.path("home"))
            .env("CARGO_TARGET_DIR", self.path("target"))
            .env("KALIVE_BPF_RUSTC", self.path("bin/rustc"))
            .output()
            .expect("running xtask")
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn script_file(path: &Path, body: &str) {
    fs::write(path, format!("#!/bin/sh\n{body}\n")).expect("a script");
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// stdout and stderr, for a failing assertion.
fn said(out: &Output) -> String {
    format!(
        "{}\n--- stdout:\n{}--- stderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn assert_said(out: &Output, lines: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    for line in lines {
        assert!(
            stderr.contains(line),
            "no {line:?} on stderr: {}",
            said(out)
        );
    }
}

/// Does the stand-in machine install with apt-get? xtask does only on Debian.
fn debian() -> bool {
    Path::new("/etc/debian_version").exists()
}

#[test]
fn run_writes_only_kalives_records_on_stdout() {
    let machine = Machine::new("run", true);
    let out = machine.xtask(&["run", "--", "--format", "json"]);
    assert!(out.status.success(), "{}", said(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        RECORD,
        "{}",
        said(&out)
    );
    assert_said(
        &out,
        &[
            "cargo says on stdout: build --package kalive-ebpf",
            "cargo says on stdout: build --release --package kalive-user",
            "kalive: tracing",
        ],
    );
}

#[test]
fn run_on_a_fresh_machine_writes_only_kalives_records_on_stdout() {
    let machine = Machine::new("fresh-run", false);
    let out = machine.xtask(&["run", "--", "--format", "json"]);
    if !debian() {
        // It says what to install, on stderr, and stops.
        assert!(!out.status.success(), "{}", said(&out));
        assert!(out.stdout.is_empty(), "{}", said(&out));
        assert_said(&out, &["this is not a Debian machine"]);
        return;
    }
    assert!(out.status.success(), "{}", said(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        RECORD,
        "{}",
        said(&out)
    );
    assert_said(
        &out,
        &[
            "apt-get says on stdout: update",
            "apt-get says on stdout: install -y -q --no-install-recommends rustc-web libstd-rust-web-dev-bpf",
            "apt-get says on stdout: install -y -q --no-install-recommends llvm-99-dev",
            "cargo says on stdout: install bpf-linker",
            "cargo says on stdout: build --package kalive-ebpf",
            "cargo says on stdout: build --release --package kalive-user",
        ],
    );
}

/// `setup` (the test tools too) and `build-ebpf` write nothing on stdout.
#[test]
fn setup_and_build_ebpf_write_nothing_on_stdout() {
    for (name, args, installs) in [
        ("setup", ["setup"], "apt-get says on stdout: install"),
        (
            "setup-validator",
            ["setup"],
            "pip says on stdout: install --quiet kubernetes-validate",
        ),
        (
            "build-ebpf",
            ["build-ebpf"],
            "cargo says on stdout: build --package kalive-ebpf",
        ),
    ] {
        let machine = Machine::new(name, false);
        let out = machine.xtask(&args);
        assert!(out.stdout.is_empty(), "{}", said(&out));
        if debian() {
            assert!(out.status.success(), "{}", said(&out));
            assert_said(&out, &[installs]);
        }
    }
}
