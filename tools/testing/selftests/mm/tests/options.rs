// SPDX-License-Identifier: GPL-2.0
//! Bad command-line options of the mm selftests, on the host (`cargo test`):
//! each binary exits with status 2 and an `error:` line on stderr that names
//! the option, and prints nothing on stdout, where a test that started would
//! have printed its KTAP header. Option parsing comes first in every binary,
//! so none of this touches the system; the timeout catches a binary that
//! started testing instead.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SMOKE: &str = env!("CARGO_BIN_EXE_mglru_smoke_test");
const CAPS: &str = env!("CARGO_BIN_EXE_lru_gen_caps_test");
const MIRROR: &str = env!("CARGO_BIN_EXE_lru_mirror_test");
const DEBUGFS: &str = env!("CARGO_BIN_EXE_lru_gen_debugfs_test");
const ALL: [&str; 4] = [SMOKE, CAPS, MIRROR, DEBUGFS];

/// What a run of a binary gave.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `bin` with `args`; kills it and panics if it is still running after
/// 30 s (rejecting options takes milliseconds).
fn run(bin: &str, args: &[&str]) -> Run {
    let mut child = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {bin}: {e}"));
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
    let mut stdout = String::new();
    let mut stderr = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    Run {
        code: status.code(),
        stdout,
        stderr,
    }
}

fn name(bin: &str) -> &str {
    bin.rsplit('/').next().unwrap_or(bin)
}

/// Checks that `bin args` is a usage error naming each of `names`; returns
/// what was wrong.
fn usage_error(bin: &str, args: &[&str], names: &[&str]) -> Option<String> {
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
fn expect_usage_errors(cases: &[(&str, &[&str], &[&str])]) {
    let bad: Vec<String> = cases
        .iter()
        .filter_map(|(bin, args, names)| usage_error(bin, args, names))
        .collect();
    assert!(bad.is_empty(), "\n{}", bad.join("\n"));
}

#[test]
fn unknown_options_are_usage_errors() {
    let mut cases: Vec<(&str, &[&str], &[&str])> = Vec::new();
    for bin in ALL {
        cases.push((bin, &["--bogus"], &["--bogus"]));
        cases.push((bin, &["-x"], &["-x"]));
        cases.push((bin, &["--vcpus", "2"], &["--vcpus"]));
    }
    expect_usage_errors(&cases);
}

#[test]
fn stray_arguments_are_usage_errors() {
    let mut cases: Vec<(&str, &[&str], &[&str])> = Vec::new();
    for bin in ALL {
        cases.push((bin, &["extra"], &["extra"]));
        cases.push((bin, &["--", "-v"], &["-v"]));
    }
    expect_usage_errors(&cases);
}

#[test]
fn help_exits_0_and_lists_the_options() {
    for bin in ALL {
        let r = run(bin, &["--help"]);
        assert_eq!(r.code, Some(0), "{} --help: {:?}", name(bin), r.stderr);
        assert!(r.stdout.contains("Usage:"), "{}: {}", name(bin), r.stdout);
        assert!(r.stdout.contains("--help"), "{}: {}", name(bin), r.stdout);
    }
    let r = run(MIRROR, &["--help"]);
    for opt in ["--threads", "--own-fd-threads", "--duration"] {
        assert!(r.stdout.contains(opt), "lru_mirror_test --help lacks {opt}");
    }
    // The child modes are internal.
    assert!(!r.stdout.contains("--mirror-hold"), "{}", r.stdout);
}

#[test]
fn lru_mirror_test_bad_numbers() {
    expect_usage_errors(&[
        (MIRROR, &["-t", "0"], &["--threads", "'0'"]),
        (MIRROR, &["-t", "1"], &["--threads"]),
        (MIRROR, &["--threads", "65"], &["--threads", "'65'"]),
        (MIRROR, &["-t", "eight"], &["--threads", "eight"]),
        (MIRROR, &["-t", "-3"], &["-3"]),
        (MIRROR, &["-t"], &["--threads"]),
        (MIRROR, &["-o", "65"], &["--own-fd-threads"]),
        (MIRROR, &["--own-fd-threads=x"], &["--own-fd-threads"]),
        (MIRROR, &["-d", "0"], &["--duration", "'0'"]),
        (MIRROR, &["-d", "601"], &["--duration"]),
        (MIRROR, &["-d", "1.5"], &["--duration", "1.5"]),
        (MIRROR, &["--duration", "3s"], &["--duration", "3s"]),
        (MIRROR, &["-d", "99999999999999999999999"], &["--duration"]),
    ]);
}

#[test]
fn lru_mirror_test_contradictory_options() {
    expect_usage_errors(&[
        // Each is in range; together they are more threads than allowed.
        (
            MIRROR,
            &["-t", "40", "-o", "30"],
            &["--threads", "--own-fd-threads"],
        ),
        (
            MIRROR,
            &["--threads=64", "--own-fd-threads=1"],
            &["--threads", "--own-fd-threads"],
        ),
        // Checked before a child mode runs, too.
        (
            MIRROR,
            &["--mirror-hold", "-t", "64", "-o", "64"],
            &["--threads"],
        ),
        // One internal child mode at a time.
        (
            MIRROR,
            &["--mirror-exit", "--mirror-hold"],
            &["--mirror-exit", "--mirror-hold"],
        ),
        (MIRROR, &["-t", "8", "-t", "9"], &["--threads"]),
    ]);
}
