//! Running the programs xtask is made of: each one's status checked, its
//! output captured when it is wanted, and every error naming the command.
//!
//! xtask's stdout is kalive's alone: `cargo xtask run -- --format json | jq`
//! must see kalive's records and nothing else. So what a child prints and
//! xtask does not capture goes to xtask's stderr, the stdout of apt-get and
//! cargo included.

use std::{
    env,
    ffi::OsStr,
    io,
    path::{Path, PathBuf},
    process::{Child, Command},
};

use anyhow::{Context as _, Result, bail};

/// Runs `cmd` to the end, its stdout sent to xtask's stderr; fails unless it
/// exits 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .stdout(io::stderr())
        .status()
        .with_context(|| format!("running {}", describe(cmd)))?;
    if !status.success() {
        bail!("{} failed ({status})", describe(cmd));
    }
    Ok(())
}

/// Runs `cmd` and returns its stdout; fails unless it exits 0, with what it
/// said on stderr. Its stderr is captured too, unless `cmd` says otherwise.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("running {}", describe(cmd)))?;
    if !out.status.success() {
        let said = String::from_utf8_lossy(&out.stderr);
        let said = said.trim();
        if said.is_empty() {
            bail!("{} failed ({})", describe(cmd), out.status);
        }
        bail!("{} failed ({}): {said}", describe(cmd), out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `cargo`, in the workspace at `root`.
pub fn cargo(root: &Path) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root);
    cmd
}

/// `program`, through sudo when not root.
pub fn privileged(program: impl AsRef<OsStr>) -> Command {
    if is_root() {
        Command::new(program)
    } else {
        let mut cmd = Command::new("sudo");
        cmd.arg(program);
        cmd
    }
}

pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail and has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Where `program` is on `PATH`.
pub fn which(program: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
}

/// The command line of `cmd` as a shell would take it: program and
/// arguments, quoted where needed (not its environment or directory).
pub fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|word| quote(&word.to_string_lossy()))
        .collect::<Vec<_>>()
        .join(" ")
}

fn quote(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:,+@%~".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// A child killed and reaped on drop, however the code holding it returns.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_commands_as_a_shell_would_take_them() {
        let mut cmd = Command::new("apt-cache");
        cmd.args(["search", "--names-only", r"^linux-image-6\.1$", "it's", ""])
            .env("X", "1")
            .current_dir("/");
        assert_eq!(
            describe(&cmd),
            r"apt-cache search --names-only '^linux-image-6\.1$' 'it'\''s' ''"
        );
    }

    #[test]
    fn errors_name_the_command_and_what_it_said() {
        let err = output(Command::new("sh").args(["-c", "echo out; echo oops >&2; exit 3"]))
            .expect_err("exit 3");
        assert_eq!(
            format!("{err:#}"),
            "sh -c 'echo out; echo oops >&2; exit 3' failed (exit status: 3): oops"
        );
        let err = run(&mut Command::new("/nonexistent/kalive-xtask")).expect_err("no program");
        assert!(
            format!("{err:#}").starts_with("running /nonexistent/kalive-xtask: "),
            "{err:#}"
        );
        assert_eq!(
            output(Command::new("sh").args(["-c", "echo out; echo said >&2"])).expect("exit 0"),
            "out\n"
        );
    }
}
