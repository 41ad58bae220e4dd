//! Which backend runs: the user's choice, and whether this kernel is new
//! enough for any.

use std::fmt;

use anyhow::{Context as _, Result, bail};
use aya::util::KernelVersion;
use nix::sys::utsname::uname;

/// How kalive hooks the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    Fentry,
    Kprobe,
    Tracepoint,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Fentry => "fentry",
            Self::Kprobe => "kprobe",
            Self::Tracepoint => "tracepoint",
        })
    }
}

/// `--backend`: one, or the first of fentry, kprobe, tracepoint that runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Choice {
    Auto,
    Fentry,
    Kprobe,
    Tracepoint,
}

impl Choice {
    pub const fn backends(self) -> &'static [Backend] {
        match self {
            Self::Auto => &[Backend::Fentry, Backend::Kprobe, Backend::Tracepoint],
            Self::Fentry => &[Backend::Fentry],
            Self::Kprobe => &[Backend::Kprobe],
            Self::Tracepoint => &[Backend::Tracepoint],
        }
    }
}

/// The oldest kernel kalive runs on: BPF ring buffers arrived in 5.8 (fentry,
/// `tp_btf` and BTF in `/sys` before that).
const OLDEST: (u8, u8) = (5, 8);

/// Refuses a kernel older than [`OLDEST`] before anything is loaded.
///
/// # Errors
/// When the kernel is too old, or its version cannot be told.
pub fn check_release(choice: Choice) -> Result<()> {
    // The release the kernel names itself by (`uname -r`): its major and minor
    // are the version on distribution kernels too, and it is what a user sees.
    // aya's reading (which prefers the distribution's patch level) only where
    // the release says nothing.
    let release = uname()
        .map(|uts| uts.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let version = match parse_release(&release) {
        Some(version) => version,
        None => KernelVersion::current()
            .ok()
            .and_then(|v| parse_release(&v.to_string()))
            .context("cannot tell the kernel version")?,
    };
    if version >= (u32::from(OLDEST.0), u32::from(OLDEST.1)) {
        return Ok(());
    }
    bail!(too_old(&release, choice))
}

/// "6.18.44-fc-v769" as (6, 18).
fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts
        .next()?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .ok()?;
    Some((major, minor))
}

fn too_old(release: &str, choice: Choice) -> String {
    let who = match choice.backends() {
        [backend] => format!("the {backend} backend needs"),
        _ => "kalive needs".to_owned(),
    };
    format!(
        "Linux {release} is too old: {who} {}.{} or newer (BPF ring buffer)",
        OLDEST.0, OLDEST.1
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kernel_too_old_is_named_with_what_needs_more() {
        assert_eq!(
            too_old("2.6.78-fc", Choice::Auto),
            "Linux 2.6.78-fc is too old: kalive needs 5.8 or newer (BPF ring buffer)"
        );
        assert_eq!(
            too_old("5.4.0", Choice::Fentry),
            "Linux 5.4.0 is too old: the fentry backend needs 5.8 or newer (BPF ring buffer)"
        );
        // The machine running the tests runs kalive.
        check_release(Choice::Auto).expect("a kernel kalive runs on");
        assert_eq!(parse_release("6.18.44-fc-v769"), Some((6, 18)));
        assert_eq!(parse_release("2.6.78-fc-v769"), Some((2, 6)));
        assert_eq!(parse_release("6.1.0-57-cloud-amd64"), Some((6, 1)));
        assert_eq!(parse_release("6.1"), Some((6, 1)));
        assert_eq!(parse_release("junk"), None);
    }
}
