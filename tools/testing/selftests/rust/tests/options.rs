// SPDX-License-Identifier: GPL-2.0
//! Bad command-line options of the Rust-for-Linux selftest, on the host
//! (`cargo test`): a usage error, nothing started (see
//! `mglru_selftest::usage`).

use mglru_selftest::usage::{expect_usage_errors, name, run};

const DOCTESTS: &str = env!("CARGO_BIN_EXE_rust_doctests_test");

#[test]
fn unknown_options_and_stray_arguments_are_usage_errors() {
    expect_usage_errors(&[
        (DOCTESTS, &["--bogus"], &["--bogus"]),
        (DOCTESTS, &["-x"], &["-x"]),
        (DOCTESTS, &["extra"], &["extra"]),
        (DOCTESTS, &["--", "-v"], &["-v"]),
    ]);
}

#[test]
fn help_exits_0() {
    let r = run(DOCTESTS, &["--help"]);
    assert_eq!(r.code, Some(0), "{} --help: {:?}", name(DOCTESTS), r.stderr);
    assert!(
        r.stdout.contains("Usage:"),
        "{} --help: {:?}",
        name(DOCTESTS),
        r.stdout
    );
}
