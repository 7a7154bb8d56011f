// SPDX-License-Identifier: GPL-2.0
//! rust_doctests_test: the kernel crate's Rust doctests, run as the KUnit
//! suite `rust_doctests_kernel` at boot (`CONFIG_RUST_KERNEL_DOCTESTS`),
//! passed — in particular those of the series' abstractions
//! (`kernel::mm::mmu_notifier`; on 6.12 also `kernel::miscdevice`).

use mglru_selftest::kunit::{self, KtapResult};
use mglru_selftest::{bail, features, ktap::Ktap, sys, Result};

const SUITE: &str = "rust_doctests_kernel";

fn check_suite(results: &[KtapResult], t: &Ktap) -> Result<()> {
    let suite = results
        .iter()
        .find(|r| r.name == SUITE && r.depth == 0)
        .ok_or_else(|| anyhow::anyhow!("no {SUITE} result in the kernel log (KUnit not run?)"))?;
    let failed: Vec<_> = results
        .iter()
        .filter(|r| r.depth == 1 && r.name.starts_with("rust_doctest_kernel") && !r.ok)
        .map(|r| r.name.as_str())
        .collect();
    let n = results
        .iter()
        .filter(|r| r.depth == 1 && r.name.starts_with("rust_doctest_kernel"))
        .count();
    t.diag(&format!("{SUITE}: {n} doctests, {} failed", failed.len()));
    if !suite.ok || !failed.is_empty() {
        bail!("{SUITE} failed: {failed:?}");
    }
    Ok(())
}

fn check_cases(results: &[KtapResult], t: &Ktap, file: &str) -> Result<()> {
    let cases: Vec<_> = results
        .iter()
        .filter(|r| r.depth == 1 && r.name.contains(file))
        .collect();
    if cases.is_empty() {
        bail!("no doctest of {file} ran");
    }
    for c in &cases {
        if !c.ok || c.skipped {
            bail!("{} did not pass: {c:?}", c.name);
        }
    }
    t.diag(&format!("{file}: {} doctests passed", cases.len()));
    Ok(())
}

/// The kernel crate's Rust doctests (KUnit at boot) passed. Exit status:
/// 0 pass, 1 fail, 4 skip, 2 usage error.
#[derive(clap::Parser, Debug)]
#[command(name = "rust_doctests_test", version, about, long_about = None)]
struct Opts {}

fn main() {
    let _ = <Opts as clap::Parser>::parse();
    let log = match sys::dmesg() {
        Ok(l) => l,
        Err(e) => Ktap::bail_out(&format!("cannot read the kernel log: {e:#}")),
    };
    // The series adds kernel::mm::mmu_notifier on both bases and, on 6.12
    // only, kernel::miscdevice (7.x has upstream's, without doctests, which
    // the series leaves alone). Unpatched kernels (make check-base) have
    // neither file's doctests; the series' kernels must have them.
    let mut files = vec![("mmu_notifier_doctests_passed", "mm_mmu_notifier_rs")];
    match features::kernel_release().and_then(|r| features::series_has_own_miscdevice(&r)) {
        Ok(true) => files.push(("miscdevice_doctests_passed", "miscdevice_rs")),
        Ok(false) => {}
        Err(e) => Ktap::bail_out(&format!("{e:#}")),
    }
    let mut t = Ktap::new(1 + files.len());
    let results = kunit::results(&log);
    t.check("rust_doctests_kernel_passed", check_suite(&results, &t));
    for (name, file) in files {
        let present = results
            .iter()
            .any(|r| r.depth == 1 && r.name.contains(file));
        match features::series_feature(present, &format!("{file} doctests")) {
            Ok(Some(why)) => t.skip(name, &why),
            Ok(None) => {
                t.check(name, check_cases(&results, &t, file));
            }
            Err(e) => t.fail(name, &format!("{e:#}")),
        }
    }
    t.finish();
}
