// SPDX-License-Identifier: GPL-2.0
//! Smoke test of the test kernel: it is the project's kernel, out-of-tree
//! Rust modules load and unload, and MGLRU's sysfs and debugfs interfaces
//! work (an aging pass can be forced on a memcg).

use clap::Parser;
use mglru_selftest::{
    bail, features, ktap::Ktap, lru_gen, memcg::Memcg, module, sys, Context, Result,
};

/// Smoke test of the test kernel: it is the project's, out-of-tree Rust
/// modules load, forced aging works. Exit status: 0 pass, 1 fail, 4 skip,
/// 2 usage error.
#[derive(Parser, Debug)]
#[command(name = "mglru_smoke_test", version, about, long_about = None)]
struct Opts {}

/// The VM booted the kernel of the flavour it was asked for (outside
/// `vm-run`: one of the series' builds).
fn kernel_is_ours() -> Result<()> {
    features::check_kernel_matches_flavor(features::flavor()?, &features::kernel_release()?)
}

fn rust_module_loads() -> Result<()> {
    let name = "mglru_smoke";
    let ko = module::project_module(name);
    if module::is_loaded(name) {
        module::unload(name)?;
    }
    let watch = sys::DmesgWatch::start()?;
    module::load(&ko, "")?;
    if !module::is_loaded(name) {
        bail!("{name} not in /sys/module after finit_module");
    }
    let state = sys::read_trimmed(format!("/sys/module/{name}/initstate"))?;
    if state != "live" {
        bail!("{name} initstate is {state}");
    }
    module::unload(name)?;
    if module::is_loaded(name) {
        bail!("{name} still loaded after delete_module");
    }
    let log = sys::dmesg()?;
    for msg in ["mglru_smoke: loaded", "mglru_smoke: unloaded"] {
        if !log.contains(msg) {
            bail!("kernel log lacks {msg:?}");
        }
    }
    watch.expect_clean()?;
    Ok(())
}

fn lru_gen_enabled() -> Result<()> {
    let caps = features::lru_gen_caps()?;
    if caps & features::caps::CORE == 0 {
        bail!("MGLRU core not enabled (caps 0x{caps:04x})");
    }
    Ok(())
}

fn lru_gen_force_aging() -> Result<()> {
    const BYTES: usize = 8 << 20;
    let cg = Memcg::create("mglru-smoke")?;
    cg.enter()?;
    // Anonymous memory charged to the memcg, so its lruvec is not empty.
    let buf = vec![1u8; BYTES];
    std::hint::black_box(&buf);
    let (before, after) = lru_gen::age_memcg(&cg.path(), 0).context("forced aging")?;
    if after.total_anon() < (BYTES / 4096 / 2) as u64 {
        bail!(
            "memcg holds {} anon pages after aging, expected about {}",
            after.total_anon(),
            BYTES / 4096
        );
    }
    let youngest_before = before.youngest().unwrap().anon;
    let youngest_after = after.youngest().unwrap().anon;
    // Nothing touched the buffer between faulting it and aging, so the
    // newly created generation must not have taken the buffer's pages.
    if youngest_after > youngest_before / 2 + 64 {
        bail!("untouched pages were promoted: youngest gen had {youngest_before}, now {youngest_after}");
    }
    drop(buf);
    Ok(())
}

fn main() {
    let _ = Opts::parse();
    // The out-of-tree modules need the series' Rust bindings: on base
    // (make check-base) that case is skipped; the rest is 6.12's and runs
    // everywhere.  An unknown MGLRU_FLAVOR fails the kernel check.
    let series = features::is_series_kernel();
    let mut t = Ktap::new(4);
    t.check("kernel_is_project_kernel", kernel_is_ours());
    match series {
        Ok(true) => {
            t.check("rust_oot_module_load_unload", rust_module_loads());
        }
        Ok(false) => t.skip(
            "rust_oot_module_load_unload",
            &format!(
                "{} is not the series' kernel: no Rust mmu_notifier/misc-device bindings",
                features::kernel_release().unwrap_or_default()
            ),
        ),
        Err(e) => {
            t.check("rust_oot_module_load_unload", Err(e));
        }
    }
    t.check("lru_gen_enabled", lru_gen_enabled());
    t.check("lru_gen_force_aging", lru_gen_force_aging());
    t.finish();
}
