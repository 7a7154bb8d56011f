// SPDX-License-Identifier: GPL-2.0
//! Bad command-line options of the mm selftests, on the host (`cargo test`):
//! each binary exits with status 2 and an `error:` line on stderr that names
//! the option, and prints nothing on stdout, where a test that started would
//! have printed its KTAP header. Option parsing comes first in every binary,
//! so none of this touches the system; the timeout catches a binary that
//! started testing instead.

use mglru_selftest::usage::{expect_usage_errors, name, run};

const SMOKE: &str = env!("CARGO_BIN_EXE_mglru_smoke_test");
const CAPS: &str = env!("CARGO_BIN_EXE_lru_gen_caps_test");
const MIRROR: &str = env!("CARGO_BIN_EXE_lru_mirror_test");
const DEBUGFS: &str = env!("CARGO_BIN_EXE_lru_gen_debugfs_test");
const ALL: [&str; 4] = [SMOKE, CAPS, MIRROR, DEBUGFS];

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
