// SPDX-License-Identifier: GPL-2.0
//! Host-side checks of the selftest binaries' command lines, for their
//! `tests/options.rs` (`cargo test`): a bad option must be a usage error
//! (exit status 2, an `error:` line on stderr naming the option, nothing
//! on stdout, where a test that started would have printed its KTAP
//! header).  Every binary parses its options before anything else, so
//! none of this touches the system; a timeout catches a binary that
//! started instead.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What a run of a binary gave.
pub struct Run {
    /// Exit status (`None`: killed by a signal).
    pub code: Option<i32>,
    /// What it printed on stdout.
    pub stdout: String,
    /// What it printed on stderr.
    pub stderr: String,
}

/// Runs `bin` with `args`; kills it and panics if it is still running after
/// 30 s (rejecting options takes milliseconds).
pub fn run(bin: &str, args: &[&str]) -> Run {
    let mut child = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {bin}: {e}"));
    // Read both pipes while it runs: a binary that prints more than a pipe
    // holds must not look like one that started its test.
    let drain = |p: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut p) = p {
                let _ = p.read_to_string(&mut text);
            }
            text
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = child.try_wait().expect("waiting for the child") {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{bin} {args:?} still ran after 30 s: it did not reject its options");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stdout = out.join().expect("stdout reader");
    let stderr = err.join().expect("stderr reader");
    Run {
        code: status.code(),
        stdout,
        stderr,
    }
}

/// The file name of `bin`.
pub fn name(bin: &str) -> &str {
    bin.rsplit('/').next().unwrap_or(bin)
}

/// Checks that `bin args` is a usage error naming each of `names`; returns
/// what was wrong.
pub fn usage_error(bin: &str, args: &[&str], names: &[&str]) -> Option<String> {
    let r = run(bin, args);
    let mut why = Vec::new();
    if r.code != Some(2) {
        why.push(format!("exit status {:?}, expected 2", r.code));
    }
    if !r.stderr.contains("error:") {
        why.push("no \"error:\" on stderr".to_string());
    }
    for n in names {
        if !r.stderr.contains(n) {
            why.push(format!("stderr does not name {n:?}"));
        }
    }
    if !r.stdout.is_empty() {
        why.push(format!("stdout not empty (did it start?): {:?}", r.stdout));
    }
    (!why.is_empty()).then(|| {
        format!(
            "{} {args:?}: {}; stderr: {:?}",
            name(bin),
            why.join(", "),
            r.stderr
        )
    })
}

/// Runs every case and fails listing all that went wrong.
pub fn expect_usage_errors(cases: &[(&str, &[&str], &[&str])]) {
    let bad: Vec<String> = cases
        .iter()
        .filter_map(|(bin, args, names)| usage_error(bin, args, names))
        .collect();
    assert!(bad.is_empty(), "\n{}", bad.join("\n"));
}
