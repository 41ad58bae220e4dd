//! `docs/guide.md` runs: every `sh` block, in order, in one shell (so that a
//! background process started in one block is there in the next), with the
//! `kalive` under test on `PATH`; a `text` block right after one is what it
//! printed, checked line by line for shape (numbers, and runs of spaces, may
//! differ). So the guide cannot go stale.

mod support;

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

const GUIDE: &str = include_str!("../../docs/guide.md");
const NAMESPACES: [&str; 3] = ["ka-client", "ka-lb", "ka-server"];

/// The guide's steps: each `sh` block and the `text` block after it, if any.
fn steps(guide: &str) -> Vec<(String, Option<String>)> {
    let mut blocks: Vec<(String, String)> = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in guide.lines() {
        match (&mut current, line.strip_prefix("```")) {
            (None, Some(info)) => current = Some((info.trim().to_owned(), String::new())),
            (Some(_), Some("")) => blocks.extend(current.take()),
            (Some((_, body)), _) => {
                body.push_str(line);
                body.push('\n');
            }
            (None, None) => {}
        }
    }
    let mut steps = Vec::new();
    let mut blocks = blocks.into_iter().peekable();
    while let Some((info, body)) = blocks.next() {
        if info != "sh" {
            continue;
        }
        let output = blocks
            .next_if(|(info, _)| info == "text")
            .map(|(_, body)| body);
        steps.push((body, output));
    }
    steps
}

/// A line's shape: durations (`502ms`, `1s`, `2m5s`, `10.008s`) as `D`,
/// hexadecimal numbers as `H`, other runs of digits as `N`, runs of spaces as
/// one.
fn shape(line: &str) -> String {
    let words: Vec<String> = line
        .split_whitespace()
        .map(|word| {
            if is_duration(word) {
                return "D".to_owned();
            }
            // An address in a program's message (socat's buffer).
            if word.starts_with("0x") {
                return "H".to_owned();
            }
            let mut out = String::new();
            let mut digits = false;
            for c in word.chars() {
                if c.is_ascii_digit() {
                    if !digits {
                        out.push('N');
                    }
                    digits = true;
                } else {
                    out.push(c);
                    digits = false;
                }
            }
            out
        })
        .collect();
    words.join(" ")
}

fn is_duration(word: &str) -> bool {
    word.starts_with(|c: char| c.is_ascii_digit())
        && word.ends_with(['s', 'm', 'h'])
        && word
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'h' | 'm' | 's'))
}

/// Removes what the guide makes, whatever happened to it.
struct Cleanup(u32);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Ok(group) = i32::try_from(self.0) {
            // SAFETY: signalling the shell's process group this test made.
            unsafe { libc::kill(-group, libc::SIGKILL) };
        }
        for ns in NAMESPACES {
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            }
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

#[test]
fn the_guide_has_commands_and_outputs() {
    let steps = steps(GUIDE);
    assert!(steps.len() >= 8, "{} steps", steps.len());
    assert!(
        steps.iter().filter(|(_, out)| out.is_some()).count() >= 5,
        "outputs shown"
    );
    assert_eq!(
        shape("ESTABLISHED  10.81.1.2:51724   13s 502ms 10s/2s/2 1m5s"),
        "ESTABLISHED N.N.N.N:N D D Ns/Ns/N D"
    );
}

/// The guide, run. `KALIVE_GUIDE_SHOW=1` prints what each step printed (to
/// refresh the guide's outputs).
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn the_guide_runs_as_written() {
    let _alone = support::alone();
    let kalive = Path::new(env!("CARGO_BIN_EXE_kalive"));
    let dir = std::env::temp_dir().join(format!("kalive-guide-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a directory");
    let path = format!(
        "{}:{}",
        kalive.parent().expect("a directory").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut shell = Command::new("bash")
        .args(["--noprofile", "--norc"])
        .current_dir(&dir)
        .env("PATH", path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0)
        .spawn()
        .expect("bash");
    let _cleanup = Cleanup(shell.id());
    let mut stdin = shell.stdin.take().expect("stdin");
    let (tx, lines) = mpsc::channel();
    let stdout = shell.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap_or_default()).is_err() {
                break;
            }
        }
    });
    writeln!(stdin, "exec 2>&1; set -e").expect("to bash");
    let show = std::env::var_os("KALIVE_GUIDE_SHOW").is_some();
    for (i, (commands, expected)) in steps(GUIDE).into_iter().enumerate() {
        let marker = format!("__kalive_guide_step_{i}_done__");
        writeln!(stdin, "{commands}echo {marker}").expect("to bash");
        let mut printed = Vec::new();
        loop {
            match lines.recv_timeout(Duration::from_mins(1)) {
                Ok(line) if line == marker => break,
                Ok(line) => printed.push(line),
                Err(err) => panic!(
                    "step {i} did not finish ({err}: a command failed, or hung):\n{commands}\nit \
                     printed:\n{}",
                    printed.join("\n")
                ),
            }
        }
        if show {
            eprintln!("--- step {i}:\n{}", printed.join("\n"));
        }
        let Some(expected) = expected else {
            continue;
        };
        let got: Vec<String> = printed.iter().map(|l| shape(l)).collect();
        for line in expected.lines() {
            if show && !got.contains(&shape(line)) {
                eprintln!("step {i}: no line shaped like {line:?}");
                continue;
            }
            assert!(
                got.contains(&shape(line)),
                "step {i}:\n{commands}\nthe guide shows\n  {line}\nwhich has no line of that \
                 shape in what it printed:\n{}",
                printed.join("\n")
            );
        }
    }
    drop(stdin);
    let _ = shell.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
