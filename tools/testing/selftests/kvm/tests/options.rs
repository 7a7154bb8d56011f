// SPDX-License-Identifier: GPL-2.0
//! Bad command-line options of the KVM selftests and benchmark, on the host
//! (`cargo test`): each binary exits with status 2 and an `error:` line on
//! stderr that names the option, and prints nothing on stdout (where a test
//! would have printed its KTAP header, the benchmark its progress). Each
//! parses and checks these options before anything else, so none of this
//! touches the system (no `/dev/kvm`, no cgroup); the timeout catches a
//! binary that started instead.
//!
//! Not covered: `kvm_smoke_test` reads no options at all (it would run its
//! test whatever it is given), and `lru_gen_exact_test` checks its
//! `--compare` file only after entering a memcg and turning swap on.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const AGING: &str = env!("CARGO_BIN_EXE_lru_gen_aging_test");
const BENCH: &str = env!("CARGO_BIN_EXE_lru_gen_bench");
const EXACT: &str = env!("CARGO_BIN_EXE_lru_gen_exact_test");
const STRESS: &str = env!("CARGO_BIN_EXE_lru_gen_stress");

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
fn unknown_options_and_stray_arguments() {
    let mut cases: Vec<(&str, &[&str], &[&str])> = Vec::new();
    for bin in [AGING, BENCH, EXACT, STRESS] {
        cases.push((bin, &["--bogus"], &["--bogus"]));
        cases.push((bin, &["-x"], &["-x"]));
        cases.push((bin, &["extra"], &["extra"]));
    }
    for bin in [AGING, BENCH] {
        cases.push((bin, &["-v"], &["--vcpus"]));
    }
    expect_usage_errors(&cases);
}

#[test]
fn help_exits_0_and_lists_the_options() {
    for (bin, opts) in [
        (
            AGING,
            &[
                "--vcpus",
                "--bytes-per-vcpu",
                "--backing",
                "--touch-fraction",
            ][..],
        ),
        (
            BENCH,
            &["--mem-per-vcpu", "--vcpus", "--repeat", "--stride"][..],
        ),
    ] {
        let r = run(bin, &["--help"]);
        assert_eq!(r.code, Some(0), "{} --help: {:?}", name(bin), r.stderr);
        for o in opts {
            assert!(r.stdout.contains(o), "{} --help lacks {o}", name(bin));
        }
    }
}

#[test]
fn lru_gen_aging_test_bad_values() {
    expect_usage_errors(&[
        (AGING, &["-v", "0"], &["--vcpus", "'0'"]),
        (AGING, &["-v", "9"], &["--vcpus", "'9'"]),
        (AGING, &["--vcpus=two"], &["--vcpus", "two"]),
        (AGING, &["-b", "12x"], &["--bytes-per-vcpu", "12x"]),
        (AGING, &["-b", "0"], &["--bytes-per-vcpu"]),
        (AGING, &["-b", "100"], &["--bytes-per-vcpu", "4 KiB"]),
        (AGING, &["-b", "1.5M"], &["--bytes-per-vcpu"]),
        (
            AGING,
            &["-b", "99999999999G"],
            &["--bytes-per-vcpu", "too large"],
        ),
        (AGING, &["-f", "0"], &["--touch-fraction", "(0, 1]"]),
        (AGING, &["-f", "1.5"], &["--touch-fraction"]),
        (
            AGING,
            &["-f", "half"],
            &["--touch-fraction", "not a number"],
        ),
        (AGING, &["-f", "nan"], &["--touch-fraction"]),
        (AGING, &["-n", "0"], &["--passes"]),
        (AGING, &["-n", "1001"], &["--passes"]),
        (AGING, &["-i", "0"], &["--iterations"]),
        (AGING, &["-s", "hugetlb"], &["--backing", "hugetlb"]),
        (AGING, &["-o"], &["--json"]),
    ]);
}

#[test]
fn lru_gen_aging_test_contradictory_options() {
    expect_usage_errors(&[
        // THP backing needs whole 2 MiB pages per vCPU.
        (
            AGING,
            &["-s", "thp", "-b", "3M"],
            &["--backing thp", "--bytes-per-vcpu", "2M"],
        ),
        (
            AGING,
            &["--backing", "thp", "--bytes-per-vcpu", "4K"],
            &["--bytes-per-vcpu"],
        ),
        // Each in range; together more guest memory than the test VM has.
        (
            AGING,
            &["-v", "8", "-b", "256M"],
            &["guest memory", "1024 MiB"],
        ),
        (AGING, &["-v", "2", "-b", "1G"], &["guest memory"]),
    ]);
}

/// The total-memory check names no option: a user of `-v 8 -b 256M` is not
/// told which option to change.
#[test]
fn lru_gen_aging_test_total_memory_error_names_the_options() {
    expect_usage_errors(&[(
        AGING,
        &["-v", "8", "-b", "256M"],
        &["--vcpus", "--bytes-per-vcpu"],
    )]);
}

#[test]
fn lru_gen_bench_bad_values() {
    expect_usage_errors(&[
        (BENCH, &["-m", "12x"], &["--mem-per-vcpu", "12x"]),
        (BENCH, &["-m", "64M,12x"], &["--mem-per-vcpu", "12x"]),
        (BENCH, &["-m", "64M,,1G"], &["--mem-per-vcpu"]),
        (BENCH, &["-v", "0"], &["--vcpus", "'0'"]),
        (BENCH, &["-v", "1,2,17"], &["--vcpus", "'17'"]),
        (BENCH, &["-n", "1"], &["--repeat", "'1'"]),
        (BENCH, &["-n", "101"], &["--repeat"]),
        (BENCH, &["-s", "0"], &["--stride"]),
        (BENCH, &["-s", "513"], &["--stride"]),
        (BENCH, &["--max-total", "1.5G"], &["--max-total"]),
        (BENCH, &["--thp-point", "5x"], &["--thp-point", "5x"]),
        (BENCH, &["--round-mem", "0"], &["--round-mem"]),
        (BENCH, &["-o"], &["--out"]),
    ]);
}

/// Sizes clap accepts but the benchmark cannot use (guest memory comes in
/// 2 MiB pieces): a usage error like the others.
#[test]
fn lru_gen_bench_mem_not_2m_is_a_usage_error() {
    expect_usage_errors(&[
        (BENCH, &["-m", "3M"], &["--mem-per-vcpu", "2M"]),
        (BENCH, &["-m", "64M,1028K"], &["--mem-per-vcpu", "2M"]),
    ]);
}

#[test]
fn lru_gen_exact_test_missing_values() {
    expect_usage_errors(&[
        (EXACT, &["-o"], &["--map-out"]),
        (EXACT, &["--compare"], &["--compare"]),
        (EXACT, &["-c", "a.json", "-c", "b.json"], &["--compare"]),
    ]);
}

#[test]
fn lru_gen_stress_bad_values() {
    expect_usage_errors(&[
        (STRESS, &["-d", "0"], &["--duration", "'0'"]),
        (STRESS, &["-d", "5x"], &["--duration", "5x"]),
        (STRESS, &["-d", "25h"], &["--duration", "25h"]),
        (STRESS, &["-c", "1.5m"], &["--checkpoint-every", "1.5m"]),
        (STRESS, &["-g", "12x"], &["--guest-mem", "12x"]),
        (STRESS, &["-g", "100"], &["--guest-mem"]),
        (STRESS, &["-s", "x"], &["--seed", "'x'"]),
        (STRESS, &["--min-passes", "-1"], &["-1"]),
        (STRESS, &["--role", "bogus"], &["--role", "bogus"]),
    ]);
}
