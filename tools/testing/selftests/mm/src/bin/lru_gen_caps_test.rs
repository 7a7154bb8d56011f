// SPDX-License-Identifier: GPL-2.0
//! lru_gen_caps_test: `/sys/kernel/mm/lru_gen/enabled` with the series'
//! capability 0x8 (`LRU_GEN_SECONDARY_MMU_WALK`).
//!
//! Every capability bit toggles on its own; `y`/`Y` set all four (`0x000f`),
//! `n`/`N` clear them; numeric masks in any base `kstrtouint()` takes set
//! exactly their bits; every invalid write fails with `EINVAL` and leaves
//! the mask as it was; the kernel boots with all four set. The mask in force
//! before the test is restored.

use clap::Parser;
use mglru_selftest::features::{self, caps, CapsGuard};
use mglru_selftest::{bail, ktap::Ktap, sys, Result};

const ALL: u32 = caps::CORE | caps::MM_WALK | caps::NONLEAF_YOUNG | caps::SECONDARY_MMU_WALK;
const BITS: [(u32, &str); 4] = [
    (caps::CORE, "core"),
    (caps::MM_WALK, "mm_walk"),
    (caps::NONLEAF_YOUNG, "nonleaf_young"),
    (caps::SECONDARY_MMU_WALK, "secondary_mmu_walk"),
];

/// Writes that must be rejected, with why.
const INVALID: &[(&str, &str)] = &[
    ("0x10", "bit 4 is no capability"),
    ("0x1f", "known bits plus an unknown one"),
    ("16", "decimal unknown bit"),
    ("0x80000000", "top bit"),
    ("-1", "negative"),
    ("\n", "empty line"),
    ("4294967296", "overflows 32 bits"),
    ("0x100000000", "overflows 32 bits (hex)"),
    ("99999999999999999999999", "overflows everything"),
    ("0x3x", "trailing garbage"),
    ("7 ", "trailing space"),
    (" 7", "leading space"),
    ("0x", "prefix only"),
    ("08", "bad octal digit"),
    ("yes", "word starting with y"),
    ("no", "word starting with n"),
    ("nonsense", "garbage starting with n"),
    ("y1", "y with trailing garbage"),
    ("on", "not y/n"),
    ("true", "not y/n"),
];

fn expect_caps(want: u32, after: &str) -> Result<()> {
    let got = features::lru_gen_caps()?;
    if got != want {
        bail!("after {after}: caps 0x{got:04x}, expected 0x{want:04x}");
    }
    Ok(())
}

fn write_ok(value: &str, want: u32) -> Result<()> {
    features::write_lru_gen_enabled(value)?;
    expect_caps(want, &format!("writing {value:?}"))
}

fn bits_toggle_independently(t: &Ktap) -> Result<()> {
    for (bit, name) in BITS {
        write_ok(&format!("0x{ALL:x}"), ALL)?;
        write_ok(&format!("0x{:x}", ALL & !bit), ALL & !bit)?;
        write_ok(&format!("0x{ALL:x}"), ALL)?;
        write_ok("0", 0)?;
        write_ok(&format!("{bit}"), bit)?;
        write_ok("0", 0)?;
        t.diag(&format!("0x{bit:x} ({name}) toggles alone"));
    }
    Ok(())
}

fn y_and_n() -> Result<()> {
    for (v, want) in [
        ("n", 0),
        ("y", ALL),
        ("N\n", 0),
        ("Y\n", ALL),
        ("n\n", 0),
        ("y\n", ALL),
    ] {
        write_ok(v, want)?;
    }
    let text = sys::read(features::LRU_GEN_ENABLED)?;
    if text != "0x000f\n" {
        bail!("after y the file reads {text:?}, expected \"0x000f\\n\"");
    }
    Ok(())
}

fn numeric_bases() -> Result<()> {
    for (v, want) in [
        ("0xf", 0xf),
        ("15", 0xf),
        ("017", 0xf),
        ("0x0b\n", 0xb),
        ("9", 0x9),
        ("0", 0),
    ] {
        write_ok(v, want)?;
    }
    Ok(())
}

fn invalid_writes_rejected(t: &Ktap) -> Result<()> {
    // A distinctive mask that every rejected write must leave alone.
    let keep = caps::CORE | caps::MM_WALK | caps::SECONDARY_MMU_WALK;
    write_ok(&format!("0x{keep:x}"), keep)?;
    let mut bad = Vec::new();
    for (value, why) in INVALID {
        match features::write_lru_gen_enabled(value) {
            Ok(()) => bad.push(format!("{value:?} ({why}) was accepted")),
            Err(e) if sys::errno_of(&e) == Some(libc::EINVAL) => {}
            Err(e) => bad.push(format!("{value:?} ({why}) failed with {e:#}, not EINVAL")),
        }
        if let Err(e) = expect_caps(keep, &format!("rejected {value:?}")) {
            bad.push(format!("{e:#}"));
            write_ok(&format!("0x{keep:x}"), keep)?;
        }
    }
    t.diag(&format!("{} invalid writes tried", INVALID.len()));
    if !bad.is_empty() {
        bail!("{}", bad.join("; "));
    }
    Ok(())
}

/// `/sys/kernel/mm/lru_gen/enabled` with capability 0x8: bits toggle alone,
/// y/n, numeric masks, invalid writes rejected. Exit status: 0 pass, 1 fail,
/// 4 skip, 2 usage error.
#[derive(Parser, Debug)]
#[command(name = "lru_gen_caps_test", version, about, long_about = None)]
struct Opts {}

/// Where the test VM's init saved `enabled` at boot, before any test ran.
const AT_BOOT: &str = "/run/lru_gen_enabled_at_boot";

/// With `CONFIG_LRU_GEN_ENABLED=y` (the project's config), every capability
/// the kernel knows starts enabled, 0x8 included: the static keys of
/// `lru_gen_caps` are all true at boot. `text` is what the test VM's init
/// read from `enabled` before any test ran.
fn boot_default(t: &Ktap, text: &str) -> Result<()> {
    t.diag(&format!("enabled at boot: {}", text.trim()));
    if text != "0x000f\n" {
        bail!("booted with {text:?}, expected \"0x000f\\n\" (CONFIG_LRU_GEN_ENABLED=y)");
    }
    Ok(())
}

fn main() {
    let _ = Opts::parse();
    if !features::exists(features::LRU_GEN_ENABLED) {
        Ktap::lacks(&format!(
            "no {} (CONFIG_LRU_GEN)",
            features::LRU_GEN_ENABLED
        ));
    }
    let guard = match CapsGuard::save() {
        Ok(g) => g,
        Err(e) => Ktap::bail_out(&format!("reading {}: {e:#}", features::LRU_GEN_ENABLED)),
    };
    // Every case is about the series' capability ABI (bit 0x8, y = 0x000f):
    // decided before the plan.
    let series = features::has_secondary_mmu_walk()
        .and_then(|h| features::series_feature(h, "lru_gen capability 0x8"));
    if let Ok(Some(why)) = &series {
        Ktap::skip_all(why);
    }
    let mut t = Ktap::new(5);
    t.diag(&format!("caps at start: 0x{:04x}", guard.saved()));
    if let Err(e) = series {
        t.diag(&format!("{e:#}")); // the cases below fail and say why
    }
    match sys::read(AT_BOOT) {
        Ok(text) => {
            t.check("boot_default_is_0x000f", boot_default(&t, &text));
        }
        // Only the project's test VM records the boot value.
        Err(e) => t.skip("boot_default_is_0x000f", &format!("not the test VM: {e:#}")),
    }
    t.check(
        "each_cap_bit_toggles_independently",
        bits_toggle_independently(&t),
    );
    t.check("y_sets_0x000f_n_clears", y_and_n());
    t.check("numeric_masks_in_any_base", numeric_bases());
    t.check(
        "invalid_writes_einval_and_unchanged",
        invalid_writes_rejected(&t),
    );
    drop(guard);
    t.finish();
}
