//! Which backend runs: the user's choice, and whether this kernel is new
//! enough for any.

use std::fmt;

use anyhow::{Context as _, Result, bail};

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
const OLDEST: (u32, u32) = (5, 8);

/// Refuses a kernel older than [`OLDEST`] before anything is loaded.
///
/// # Errors
/// When the kernel is too old, or its release cannot be read.
pub fn check_release(choice: Choice) -> Result<()> {
    // SAFETY: uname fills the struct it is given.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: a valid struct to fill.
    if unsafe { libc::uname(&raw mut uts) } != 0 {
        return Err(std::io::Error::last_os_error()).context("uname");
    }
    // SAFETY: uname NUL-terminates the release.
    let release = unsafe { std::ffi::CStr::from_ptr(uts.release.as_ptr()) }.to_string_lossy();
    let version = parse_release(&release)
        .with_context(|| format!("cannot tell the kernel version from {release:?}"))?;
    if version < OLDEST {
        let who = match choice.backends() {
            [backend] => format!("the {backend} backend needs"),
            _ => "kalive needs".to_owned(),
        };
        bail!(
            "Linux {release} is too old: {who} {}.{} or newer (BPF ring buffer)",
            OLDEST.0,
            OLDEST.1
        );
    }
    Ok(())
}

/// "6.18.44-fc" -> (6, 18).
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

#[cfg(test)]
mod tests {
    use super::parse_release;

    #[test]
    fn reads_major_and_minor() {
        assert_eq!(parse_release("6.18.44-fc-v769"), Some((6, 18)));
        assert_eq!(parse_release("2.6.78-fc-v769"), Some((2, 6)));
        assert_eq!(parse_release("5.8.0"), Some((5, 8)));
        assert_eq!(parse_release("6.1"), Some((6, 1)));
        assert_eq!(parse_release("junk"), None);
    }
}
