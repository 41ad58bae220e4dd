//! Cgroups a test makes under the cgroup v2 hierarchy, laid out as container
//! runtimes lay theirs out, and removes when dropped.

use std::{
    fs,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// Where cgroup v2 is mounted: `/sys/fs/cgroup` on a host with v2 only,
/// `/sys/fs/cgroup/unified` on a hybrid one.
///
/// # Errors
/// When no cgroup2 file system is mounted.
pub fn mount() -> Result<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    mounts
        .lines()
        .find_map(|line| {
            let mut fields = line.split_whitespace();
            let (_, dir, kind) = (fields.next()?, fields.next()?, fields.next()?);
            (kind == "cgroup2").then(|| PathBuf::from(dir))
        })
        .context("no cgroup2 file system is mounted")
}

/// A tree of cgroups under a directory of the test's own at the top of the
/// hierarchy; removed, deepest first, on drop (its processes killed first).
pub struct Tree {
    root: PathBuf,
}

impl Tree {
    /// An empty tree named `name` (made unique by the test's pid).
    ///
    /// # Errors
    /// When the directory cannot be made.
    pub fn new(name: &str) -> Result<Self> {
        let root = mount()?.join(format!("{name}-{}", std::process::id()));
        if root.exists() {
            remove(&root)?;
        }
        fs::create_dir(&root).with_context(|| format!("making {}", root.display()))?;
        Ok(Self { root })
    }

    /// Makes cgroup `path` (relative, `/`-separated) and its parents; its
    /// directory.
    ///
    /// # Errors
    /// When a directory cannot be made.
    pub fn make(&self, path: &str) -> Result<PathBuf> {
        let dir = self.root.join(path.trim_start_matches('/'));
        fs::create_dir_all(&dir).with_context(|| format!("making {}", dir.display()))?;
        Ok(dir)
    }

    /// The path a process in `dir` reads in `/proc/PID/cgroup`.
    #[must_use]
    pub fn path_of(&self, dir: &Path) -> String {
        let mount = self.root.parent().unwrap_or(Path::new("/"));
        format!(
            "/{}",
            dir.strip_prefix(mount).unwrap_or(dir).to_string_lossy()
        )
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        if let Err(err) = remove(&self.root) {
            eprintln!("removing the test's cgroups: {err:#}");
        }
    }
}

/// Kills every process in the cgroups under `dir` and removes them.
fn remove(dir: &Path) -> Result<()> {
    let mut dirs = Vec::new();
    collect(dir, &mut dirs);
    // Deepest first.
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for d in &dirs {
        // cgroup.kill (5.14) kills the whole subtree's processes at once.
        let _ = fs::write(d.join("cgroup.kill"), "1");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for d in &dirs {
        loop {
            match fs::remove_dir(d) {
                Ok(()) => break,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => break,
                // Busy while its killed processes exit.
                Err(err) if Instant::now() < deadline => {
                    let _ = err;
                    thread::sleep(Duration::from_millis(20));
                }
                Err(err) => bail!("removing {}: {err}", d.display()),
            }
        }
    }
    Ok(())
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                collect(&entry.path(), out);
            }
        }
    }
    out.push(dir.to_owned());
}
