//! Facts about the running kernel that are not in BTF: function addresses
//! (kallsyms), HZ (kernel config, or measured), and tracefs (classic tracepoint
//! formats).

use std::{
    collections::HashMap,
    fs,
    io::{BufRead as _, BufReader, Read as _},
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use nix::mount::{MsFlags, mount};

/// Addresses of kernel symbols from `/proc/kallsyms`, read in one pass. A
/// symbol that is missing there is not a function of its own: the compiler
/// inlined it into its callers, and nothing can hook it.
#[derive(Debug, Default)]
pub struct Symbols(HashMap<String, u64>);

impl Symbols {
    /// Looks up `names`.
    ///
    /// # Errors
    /// When `/proc/kallsyms` cannot be read.
    pub fn read(names: &[&str]) -> Result<Self> {
        let file = fs::File::open("/proc/kallsyms").context("opening /proc/kallsyms")?;
        let mut reader = BufReader::with_capacity(1 << 16, file);
        let mut line = String::new();
        let mut found = HashMap::new();
        while reader.read_line(&mut line)? != 0 {
            // "ffffffff8208b950 t tcp_keepalive_timer" (module symbols add " [mod]")
            let mut fields = line.split_ascii_whitespace();
            if let (Some(addr), Some(_kind), Some(sym)) =
                (fields.next(), fields.next(), fields.next())
                && names.contains(&sym)
                && let Ok(addr) = u64::from_str_radix(addr, 16)
            {
                found.insert(sym.to_owned(), addr);
                // The kernel renders this file slowly: stop once all are found.
                if found.len() == names.len() {
                    break;
                }
            }
            line.clear();
        }
        Ok(Self(found))
    }

    /// Whether `name` is a function of its own (not inlined away).
    #[must_use]
    pub fn has(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    /// The address of `name`.
    ///
    /// # Errors
    /// When the symbol is missing, or addresses are hidden (`kernel.kptr_restrict`).
    pub fn address(&self, name: &str) -> Result<u64> {
        match self.0.get(name) {
            None => Err(anyhow!("{name} not found in /proc/kallsyms")),
            Some(0) => bail!(
                "/proc/kallsyms hides addresses (kernel.kptr_restrict); kalive needs them: \
                 run it as root with CAP_SYSLOG (a container or unit must grant SYSLOG), and \
                 kernel.kptr_restrict at most 1"
            ),
            Some(&addr) => Ok(addr),
        }
    }
}

/// The kernel's HZ: from its config (`/boot/config-RELEASE` or
/// `/proc/config.gz`), else measured by watching `jiffies` advance.
///
/// # Errors
/// When neither the config nor `/proc/timer_list` is readable.
pub fn hz() -> Result<u32> {
    if let Some(hz) = config().as_deref().and_then(hz_from_config) {
        return Ok(hz);
    }
    measure_hz()
}

fn config() -> Option<String> {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    if let Ok(text) = fs::read_to_string(format!("/boot/config-{}", release.trim())) {
        return Some(text);
    }
    let gz = fs::File::open("/proc/config.gz").ok()?;
    let mut text = String::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_string(&mut text)
        .ok()?;
    Some(text)
}

fn hz_from_config(config: &str) -> Option<u32> {
    config
        .lines()
        .find_map(|line| line.strip_prefix("CONFIG_HZ="))
        .and_then(|hz| hz.trim().parse().ok())
}

/// Counts jiffies over a short interval and snaps to the HZ values Linux offers.
fn measure_hz() -> Result<u32> {
    let jiffies = || -> Result<u64> {
        let text = fs::read_to_string("/proc/timer_list").context("reading /proc/timer_list")?;
        text.lines()
            .find_map(|l| l.strip_prefix("jiffies: "))
            .and_then(|j| j.trim().parse().ok())
            .ok_or_else(|| anyhow!("no jiffies in /proc/timer_list"))
    };
    let (j0, t0) = (jiffies()?, Instant::now());
    thread::sleep(Duration::from_millis(200));
    let (j1, t1) = (jiffies()?, Instant::now());
    #[expect(clippy::cast_precision_loss, reason = "a few hundred jiffies")]
    let rate = (j1 - j0) as f64 / (t1 - t0).as_secs_f64();
    Ok(snap_hz(rate))
}

fn snap_hz(rate: f64) -> u32 {
    [100u32, 250, 300, 1000]
        .into_iter()
        .min_by(|a, b| {
            (f64::from(*a) - rate)
                .abs()
                .total_cmp(&(f64::from(*b) - rate).abs())
        })
        .unwrap_or(250)
}

/// Where tracefs is mounted; mounts it at `/sys/kernel/tracing` when it is not.
///
/// # Errors
/// When tracefs is not mounted and cannot be.
pub fn tracefs() -> Result<PathBuf> {
    for path in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
        if Path::new(path).join("events").is_dir() {
            return Ok(PathBuf::from(path));
        }
    }
    let mounted = mount(
        Some("tracefs"),
        "/sys/kernel/tracing",
        Some("tracefs"),
        MsFlags::empty(),
        None::<&str>,
    );
    if let Err(errno) = mounted {
        bail!(
            "tracefs is not mounted and mounting it failed ({}): run `mount -t tracefs tracefs /sys/kernel/tracing`",
            std::io::Error::from(errno)
        );
    }
    say!("mounted tracefs at /sys/kernel/tracing (it was not mounted)");
    Ok(PathBuf::from("/sys/kernel/tracing"))
}

/// Byte offset of `field` in the records of classic tracepoint `group/name`.
///
/// # Errors
/// When the tracepoint or the field does not exist.
pub fn tracepoint_field(tracefs: &Path, group: &str, name: &str, field: &str) -> Result<u32> {
    let path = tracefs.join("events").join(group).join(name).join("format");
    let format = fs::read_to_string(&path)
        .with_context(|| format!("tracepoint {group}:{name} not found ({})", path.display()))?;
    format_field_offset(&format, field)
        .ok_or_else(|| anyhow!("tracepoint {group}:{name} has no field {field}"))
}

/// `field:int level; offset:24; size:8; signed:0;` -> 24 (tab separated)
fn format_field_offset(format: &str, field: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        let decl = line.trim().strip_prefix("field:")?;
        let (decl, rest) = decl.split_once(';')?;
        let name = decl.rsplit([' ', '*']).next()?;
        if name != field {
            return None;
        }
        rest.split(';')
            .find_map(|part| part.trim().strip_prefix("offset:"))?
            .parse()
            .ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tracepoint_formats() {
        let format = "name: sys_enter_setsockopt\nformat:\n\
            \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
            \tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;\n\
            \tfield:int fd;\toffset:16;\tsize:8;\tsigned:0;\n\
            \tfield:char * optval;\toffset:40;\tsize:8;\tsigned:0;\n";
        assert_eq!(format_field_offset(format, "fd"), Some(16));
        assert_eq!(format_field_offset(format, "optval"), Some(40));
        assert_eq!(format_field_offset(format, "level"), None);
    }

    #[test]
    fn missing_tracepoints_are_named() {
        let dir = std::env::temp_dir();
        let err = tracepoint_field(&dir, "syscalls", "sys_enter_nope", "fd").expect_err("missing");
        assert!(
            err.to_string()
                .contains("syscalls:sys_enter_nope not found"),
            "{err}"
        );
    }

    #[test]
    fn reads_hz_from_config_and_snaps_measurements() {
        assert_eq!(
            hz_from_config("# x\nCONFIG_HZ_250=y\nCONFIG_HZ=250\n"),
            Some(250)
        );
        assert_eq!(hz_from_config("CONFIG_HZ_250=y\n"), None);
        assert_eq!(snap_hz(247.3), 250);
        assert_eq!(snap_hz(1003.0), 1000);
        assert_eq!(snap_hz(99.0), 100);
    }

    #[test]
    #[ignore = "needs root (/proc/timer_list): run with `cargo xtask test`"]
    fn finds_this_kernels_facts() {
        // Measured and configured HZ agree on the test machine.
        assert_eq!(hz().expect("hz"), measure_hz().expect("measured hz"));
    }
}
