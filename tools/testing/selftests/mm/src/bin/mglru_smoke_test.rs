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

/// Forced aging sorts pages by their accessed bits: a pass finds the pages
/// just faulted in (young PTEs) and puts them in the generation it fills; a
/// second pass, with nothing touched, leaves them there; a third, after the
/// process wrote every page, moves them into the generation it fills. Each
/// within 10 % of the buffer (other pages of the memcg: the stack, libc).
fn lru_gen_force_aging() -> Result<()> {
    const BYTES: usize = 8 << 20;
    const PAGES: u64 = (BYTES / 4096) as u64;
    let cg = Memcg::create("mglru-smoke")?;
    cg.enter()?;
    let path = cg.path();
    let mut buf = vec![1u8; BYTES];
    std::hint::black_box(&mut buf);
    sys::drain_lru_batches()?;
    let anon = |n: &lru_gen::Node, seq: u64| n.gen(seq).map_or(0, |g| g.anon);
    let (_, a1) = lru_gen::age_memcg(&path, 0).context("first forced pass")?;
    let filled = a1.max_seq().context("no generations")? - 1;
    let (_, a2) = lru_gen::age_memcg(&path, 0).context("second forced pass")?;
    for i in (0..BYTES).step_by(4096) {
        buf[i] = 2;
    }
    std::hint::black_box(&mut buf);
    let (_, a3) = lru_gen::age_memcg(&path, 0).context("third forced pass")?;
    let (most, least) = (PAGES * 9 / 10, PAGES / 10);
    let mut bad = Vec::new();
    if anon(&a1, filled) < most {
        bad.push(format!(
            "pass 1 found {} of the {PAGES} pages just faulted in",
            anon(&a1, filled)
        ));
    }
    if anon(&a2, filled + 1) > least || anon(&a2, filled) < most {
        bad.push(format!(
            "pass 2 (nothing touched) promoted {} pages and left {} in generation {filled}",
            anon(&a2, filled + 1),
            anon(&a2, filled)
        ));
    }
    if anon(&a3, filled + 2) < most {
        bad.push(format!(
            "pass 3 found {} of the {PAGES} pages written since pass 2",
            anon(&a3, filled + 2)
        ));
    }
    drop(buf);
    if !bad.is_empty() {
        bail!("{}", bad.join("; "));
    }
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
