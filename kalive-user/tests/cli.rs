//! The command line: usage errors are caught before anything is loaded (no root
//! needed to run these), with exit code 2 and a message naming the problem.

use std::process::{Command, Output};

fn kalive(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kalive"))
        .args(args)
        .output()
        .expect("running kalive")
}

fn assert_usage_error(args: &[&str], needle: &str) {
    let out = kalive(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    assert!(stderr.contains(needle), "{args:?}: {stderr}");
    assert!(out.stdout.is_empty(), "stdout carries records only");
}

#[test]
fn bad_values_are_usage_errors() {
    assert_usage_error(&["--format", "xml"], "invalid value 'xml'");
    assert_usage_error(&["--ring-size", "1000"], "not a power of two");
    assert_usage_error(&["--ring-size", "2048"], "at least");
    assert_usage_error(&["--ring-size", "lots"], "not a number");
    assert_usage_error(&["--max-sockets", "100"], "not between 1024 and 4194304");
    assert_usage_error(&["--max-sockets", "many"], "not a number of sockets");
    assert_usage_error(&["--no-such-flag"], "unexpected argument");
    assert_usage_error(&["--pid", "abc"], "not a process id");
    assert_usage_error(&["--pid", "0"], "pid 0 is not a process");
    assert_usage_error(&["--pid", "-5"], "");
    assert_usage_error(&["--port", "70000"], "not a port (1-65535)");
    assert_usage_error(&["--port", "0"], "port 0");
    assert_usage_error(&["--port", "http"], "not a port");
}

#[test]
fn bad_metrics_values_are_usage_errors() {
    assert_usage_error(&["--metrics", "9464"], "not an address and port");
    assert_usage_error(&["--metrics", "localhost:abc"], "not an address and port");
    assert_usage_error(&["--format", "none"], "--format none writes no records");
    assert_usage_error(&["--metrics-max-series", "0"], "0 is not in 1..=100000");
    assert_usage_error(&["ls", "--format", "none"], "invalid value 'none'");
    let addr = ["--metrics", "127.0.0.1:9464"];
    assert_usage_error(
        &[&addr[..], &["--metrics-interval", "abc"]].concat(),
        "invalid value 'abc'",
    );
    assert_usage_error(
        &[&addr[..], &["--metrics-interval", "-1"]].concat(),
        "unexpected argument",
    );
    assert_usage_error(
        &[&addr[..], &["--metrics-interval", "86401"]].concat(),
        "not in 0..=86400",
    );
    assert_usage_error(
        &[&addr[..], &["--idle-budget", "0"]].concat(),
        "forgets every flow",
    );
    assert_usage_error(
        &[&addr[..], &["--idle-budget", "-5"]].concat(),
        "not a number of seconds",
    );
    assert_usage_error(
        &[
            &addr[..],
            &["--metrics-interval", "0", "--idle-budget", "350"],
        ]
        .concat(),
        "which 0 turns off",
    );
    // They mean something only for an agent.
    assert_usage_error(&["--metrics-interval", "10"], "--metrics <ADDR>");
    assert_usage_error(&["--idle-budget", "350"], "--metrics <ADDR>");
}

#[test]
fn bad_ls_values_are_usage_errors() {
    assert_usage_error(&["ls", "--idle-budget", "-1"], "not a number of seconds");
    assert_usage_error(&["ls", "--idle-budget", "abc"], "not a number of seconds");
    assert_usage_error(&["ls", "--idle-budget", "0"], "forgets every flow");
    assert_usage_error(&["ls", "--idle-budget"], "a value is required");
    assert_usage_error(&["ls", "--pid", "0"], "pid 0 is not a process");
    assert_usage_error(&["ls", "--port", "http"], "not a port");
    assert_usage_error(&["ls", "--format", "xml"], "invalid value 'xml'");
}

#[test]
fn help_lists_examples() {
    let out = kalive(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("EXAMPLES:") && help.contains("--ring-size"),
        "{help}"
    );
}
