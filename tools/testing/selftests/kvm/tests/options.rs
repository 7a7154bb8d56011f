// SPDX-License-Identifier: GPL-2.0
//! Bad command-line options of the KVM selftests and benchmark, on the host
//! (`cargo test`): each binary exits with status 2 and an `error:` line on
//! stderr that names the option, and prints nothing on stdout (where a test
//! would have printed its KTAP header, the benchmark its progress). Each
//! parses and checks these options before anything else, so none of this
//! touches the system (no `/dev/kvm`, no cgroup); the timeout catches a
//! binary that started instead.
//!
//! `kvm_smoke_test` takes no options but rejects any it is given;
//! `lru_gen_exact_test`'s `--compare` file is checked in the VM (it is
//! read before anything is set up there, see `make check-base`).

use mglru_selftest::usage::{expect_usage_errors, name, run};

const AGING: &str = env!("CARGO_BIN_EXE_lru_gen_aging_test");
const SMOKE: &str = env!("CARGO_BIN_EXE_kvm_smoke_test");
const BENCH: &str = env!("CARGO_BIN_EXE_lru_gen_bench");
const EXACT: &str = env!("CARGO_BIN_EXE_lru_gen_exact_test");
const STRESS: &str = env!("CARGO_BIN_EXE_lru_gen_stress");
const SCENARIO: &str = env!("CARGO_BIN_EXE_guest_scenario");

#[test]
fn unknown_options_and_stray_arguments() {
    let mut cases: Vec<(&str, &[&str], &[&str])> = Vec::new();
    for bin in [AGING, BENCH, EXACT, STRESS, SMOKE, SCENARIO] {
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
            &[
                "--mem-per-vcpu",
                "--vcpus",
                "--repeat",
                "--stride",
                "--as-base",
                "merge",
            ][..],
        ),
        (
            STRESS,
            &[
                "--duration",
                "--checkpoint-every",
                "--guest-mem",
                "--min-passes",
                "--vcpu-cpus",
            ][..],
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

/// `merge` takes the series' and the base run's bench.json; the measuring
/// options do not go with it, and the floor process's subcommand needs
/// its numbers.
#[test]
fn lru_gen_bench_merge_usage() {
    expect_usage_errors(&[
        (BENCH, &["merge"], &["SERIES", "BASE"]),
        (BENCH, &["merge", "a.json"], &["BASE"]),
        (BENCH, &["merge", "a", "b", "c"], &["'c'"]),
        (BENCH, &["merge", "a", "b", "-o"], &["--out"]),
        (BENCH, &["-n", "3", "merge", "a", "b"], &["merge"]),
        (BENCH, &["merge", "a", "b", "-n", "3"], &["-n"]),
        (BENCH, &["floor-child", "1x", "2"], &["'1x'"]),
    ]);
}

/// A merge of files that are not there fails (exit 1) naming the file,
/// before writing anything.
#[test]
fn lru_gen_bench_merge_of_missing_files_fails() {
    let dir = std::env::temp_dir().join(format!("bench-merge-{}", std::process::id()));
    let out = dir.join("out");
    let r = run(
        BENCH,
        &[
            "merge",
            "/nonexistent/series.json",
            "/nonexistent/base.json",
            "-o",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, Some(1), "{:?}", r.stderr);
    assert!(
        r.stderr.contains("/nonexistent/series.json"),
        "{:?}",
        r.stderr
    );
    assert!(!out.exists());
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
        // An accepted value: only the bad option is named.
        (
            STRESS,
            &["--vcpu-cpus", "any", "-d", "0"],
            &["--duration", "'0'"],
        ),
        (
            STRESS,
            &["--vcpu-cpus", "x"],
            &["--vcpu-cpus", "'x' is not a CPU number"],
        ),
        (
            STRESS,
            &["--vcpu-cpus", "0,-1"],
            &["'-1' is not a CPU number"],
        ),
        (
            STRESS,
            &["--vcpu-cpus", "0,,1"],
            &["'' is not a CPU number"],
        ),
        (
            STRESS,
            &["--vcpu-cpus", "0-1"],
            &["'0-1' is not a CPU number"],
        ),
        (
            STRESS,
            &["--vcpu-cpus", "anyway"],
            &["'anyway' is not a CPU number"],
        ),
        (
            STRESS,
            &["--vcpu-cpus", "64"],
            &["--vcpu-cpus", "CPU 64 is above 63"],
        ),
    ]);
}

#[test]
fn lru_gen_stress_rejects_a_cpu_it_may_not_use() {
    let allowed = mglru_selftest::kvm::allowed_cpus().expect("sched_getaffinity");
    let Some(c) = (0..64).find(|c| !allowed.contains(c)) else {
        // Every CPU below 64 is usable: the bound is tested by "64" above.
        return;
    };
    let arg = c.to_string();
    let msg = format!("CPU {c} is not one this process may run on");
    expect_usage_errors(&[(STRESS, &["--vcpu-cpus", &arg][..], &[msg.as_str()][..])]);
}

/// `guest_scenario`'s subcommands check their options before anything is
/// set up (no QEMU, no cgroup).
#[test]
fn guest_scenario_bad_options() {
    let with = |extra: &'static [&'static str]| -> Vec<&'static str> {
        let mut v = vec!["run", "-o", "/nonexistent/scenario"];
        v.extend_from_slice(extra);
        v
    };
    let cases: Vec<(Vec<&str>, &[&str])> = vec![
        (vec!["run", "-o", "x"], &["--modes"]),
        (vec!["run", "--modes", "on"], &["--out"]),
        (with(&["--modes", "on,fast"]), &["--modes", "fast"]),
        (
            with(&["--modes", "on", "--hot-share", "1.5"]),
            &["--hot-share", "1.5"],
        ),
        (
            with(&["--modes", "on", "--set-share=-0.1"]),
            &["--set-share"],
        ),
        (
            with(&["--modes", "on", "--hot-share", "1"]),
            &["--hot-share", "(0, 1)"],
        ),
        (
            with(&["--modes", "on", "--guest-mem", "64"]),
            &["--guest-mem", "64"],
        ),
        (with(&["--modes", "on", "--value", "0"]), &["--value"]),
        (with(&["--modes", "on", "--phase", "0"]), &["--phase"]),
        (
            with(&["--modes", "on", "--reclaim-period", "5"]),
            &["--reclaim-period"],
        ),
        (vec!["report", "-o", "x"], &["RUNS"]),
        (
            with(&["--modes", "on", "--cold", "300"]),
            &["--guest-mem", "--cold"],
        ),
        (with(&["--modes", "on,off,on"]), &["--modes", "twice"]),
        (vec!["smoke", "--bogus"], &["--bogus"]),
    ];
    let cases: Vec<(&str, &[&str], &[&str])> =
        cases.iter().map(|(a, w)| (SCENARIO, &a[..], *w)).collect();
    expect_usage_errors(&cases);
}

/// A report of files that are not run files fails (exit 1) naming the
/// file, and writes nothing.
#[test]
fn guest_scenario_report_of_bad_files_fails() {
    let dir = std::env::temp_dir().join(format!("scenario-report-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.json");
    std::fs::write(&bad, "{\"mode\": \"on\"}").unwrap();
    let out = dir.join("out");
    for f in ["/nonexistent/run.json", bad.to_str().unwrap()] {
        let r = run(SCENARIO, &["report", "-o", out.to_str().unwrap(), f]);
        assert_eq!(r.code, Some(1), "report {f}: {:?}", r.stderr);
        assert!(r.stderr.contains(f), "report {f}: {:?}", r.stderr);
        assert!(!out.join("scenario.json").exists());
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
