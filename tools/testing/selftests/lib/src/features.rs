// SPDX-License-Identifier: GPL-2.0
//! Checks of what the running kernel provides.

use crate::sys;
use anyhow::{bail, Context, Result};
use std::path::Path;

/// Path of the MGLRU capability mask.
pub const LRU_GEN_ENABLED: &str = "/sys/kernel/mm/lru_gen/enabled";

/// MGLRU capability bits of `/sys/kernel/mm/lru_gen/enabled`.
pub mod caps {
    /// `LRU_GEN_CORE`: the multi-gen LRU itself.
    pub const CORE: u32 = 0x1;
    /// `LRU_GEN_MM_WALK`: page-table walks during aging.
    pub const MM_WALK: u32 = 0x2;
    /// `LRU_GEN_NONLEAF_YOUNG`: non-leaf PMD accessed bits.
    pub const NONLEAF_YOUNG: u32 = 0x4;
    /// `LRU_GEN_SECONDARY_MMU_WALK`: secondary MMUs take part in aging.
    pub const SECONDARY_MMU_WALK: u32 = 0x8;
}

/// The `uname -r` of the running kernel.
pub fn kernel_release() -> Result<String> {
    sys::read_trimmed("/proc/sys/kernel/osrelease")
}

/// Parses the text of `/sys/kernel/mm/lru_gen/enabled` (`0x0007\n`).
pub fn parse_caps(text: &str) -> Result<u32> {
    let t = text.trim();
    let hex = t
        .strip_prefix("0x")
        .with_context(|| format!("lru_gen caps {t:?} do not start with 0x"))?;
    if hex.is_empty() || hex.len() > 8 {
        bail!("lru_gen caps {t:?} are not a 32-bit hex number");
    }
    u32::from_str_radix(hex, 16).with_context(|| format!("lru_gen caps {t:?} are not hex"))
}

/// The current MGLRU capability mask.
pub fn lru_gen_caps() -> Result<u32> {
    parse_caps(&sys::read(LRU_GEN_ENABLED)?)
}

/// Writes `value` (e.g. `"y"`, `"0x0007"`) to the capability mask.
pub fn write_lru_gen_enabled(value: &str) -> Result<()> {
    sys::write(LRU_GEN_ENABLED, value)
}

/// Sets the capability mask to exactly `mask` and checks that it stuck.
pub fn set_lru_gen_caps(mask: u32) -> Result<()> {
    write_lru_gen_enabled(&format!("0x{mask:x}"))?;
    let now = lru_gen_caps()?;
    if now != mask {
        bail!("wrote lru_gen caps 0x{mask:04x}, read back 0x{now:04x}");
    }
    Ok(())
}

/// Restores the capability mask it saw at creation when dropped.
pub struct CapsGuard {
    saved: u32,
}

impl CapsGuard {
    /// Remembers the current mask.
    pub fn save() -> Result<Self> {
        Ok(Self {
            saved: lru_gen_caps()?,
        })
    }

    /// The mask saved at creation.
    pub fn saved(&self) -> u32 {
        self.saved
    }
}

impl Drop for CapsGuard {
    fn drop(&mut self) {
        let _ = write_lru_gen_enabled(&format!("0x{:x}", self.saved));
    }
}

/// A module parameter (`/sys/module/<module>/parameters/<param>`), if the
/// module is loaded or built in and has it.
pub fn module_param(module: &str, param: &str) -> Option<String> {
    sys::read_trimmed(format!("/sys/module/{module}/parameters/{param}")).ok()
}

/// Interprets a boolean module parameter (`Y`, `N`, `1`, `0`).
pub fn param_is_true(v: &str) -> bool {
    matches!(v, "Y" | "y" | "1")
}

/// Whether `/proc/cpuinfo` lists `flag` for the first CPU.
pub fn cpu_has_flag(flag: &str) -> Result<bool> {
    let info = sys::read("/proc/cpuinfo")?;
    Ok(info
        .lines()
        .find(|l| l.starts_with("flags"))
        .map(|l| l.split_whitespace().any(|f| f == flag))
        .unwrap_or(false))
}

/// The `CONFIG_LOCALVERSION` of the series' kernels (default and debug
/// flavours: `-mglru-secondary`, `-mglru-secondary-debug`).
pub const SERIES_LOCALVERSION: &str = "-mglru-secondary";

/// Whether the kernel release `rel` is one of the series' builds.
pub fn is_series_release(rel: &str) -> bool {
    rel.contains(SERIES_LOCALVERSION)
}

/// The major version of a kernel release (`7` of `7.3.4-mglru-secondary`).
pub fn release_major(rel: &str) -> Result<u32> {
    rel.split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("cannot parse the kernel release {rel:?}"))
}

/// Whether the series on this kernel release brings its own
/// `kernel::miscdevice`: the 6.12 series does (6.12 has none); on 7.x the
/// misc device abstraction is upstream's, which the series does not change.
pub fn series_has_own_miscdevice(rel: &str) -> Result<bool> {
    Ok(release_major(rel)? < 7)
}

/// The kernel flavour `scripts/vm-run` booted (`MGLRU_FLAVOR` in the
/// test VM's environment), if the test runs under it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    /// The series (`make run`, `make check`, `make bench`).
    Default,
    /// The series under the kernel's sanitizers (`make stress`).
    Debug,
    /// The pristine base kernel, 6.12.117 or 7.3.4 (`make check-base`).
    Base,
}

/// Parses a `MGLRU_FLAVOR` value.
pub fn parse_flavor(v: &str) -> Result<Flavor> {
    match v {
        "default" => Ok(Flavor::Default),
        "debug" => Ok(Flavor::Debug),
        "base" => Ok(Flavor::Base),
        _ => bail!("MGLRU_FLAVOR={v:?} is not default, debug or base"),
    }
}

/// The flavour the VM was booted with: `Ok(None)` outside `vm-run` (a
/// user's own kernel, e.g. kselftest's `run_tests`), an error for an
/// unknown value.
pub fn flavor() -> Result<Option<Flavor>> {
    match std::env::var("MGLRU_FLAVOR") {
        Ok(v) => parse_flavor(&v).map(Some),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(e) => bail!("MGLRU_FLAVOR: {e}"),
    }
}

/// Whether the series' interfaces must be present: always on the
/// flavours that build the series, never on base; outside `vm-run`,
/// when the release says it is one of the series' builds.
pub fn expects_series(flavor: Option<Flavor>, rel: &str) -> bool {
    match flavor {
        Some(Flavor::Default | Flavor::Debug) => true,
        Some(Flavor::Base) => false,
        None => is_series_release(rel),
    }
}

/// Whether the running kernel must have what the series adds (see
/// [`expects_series`]); an unknown `MGLRU_FLAVOR` is an error.
pub fn is_series_kernel() -> Result<bool> {
    Ok(expects_series(flavor()?, &kernel_release()?))
}

/// Checks that the running kernel is the one the flavour built: the
/// series' release (`-mglru-secondary`, `-debug` on debug) or base's
/// (`-base`).  Outside `vm-run` only that it is one of the series' builds.
pub fn check_kernel_matches_flavor(flavor: Option<Flavor>, rel: &str) -> Result<()> {
    let ok = match flavor {
        Some(Flavor::Default) => is_series_release(rel) && !rel.ends_with("-debug"),
        Some(Flavor::Debug) => is_series_release(rel) && rel.ends_with("-debug"),
        Some(Flavor::Base) => rel.ends_with("-base") && !is_series_release(rel),
        None => is_series_release(rel),
    };
    if !ok {
        bail!("running {rel}, which is not the {flavor:?} flavour's kernel");
    }
    Ok(())
}

/// Whether MGLRU capability 0x8 exists: unpatched kernels ignore unknown
/// bits of a write, so set it and read it back (the mask is restored).
pub fn has_secondary_mmu_walk() -> Result<bool> {
    let before = lru_gen_caps()?;
    write_lru_gen_enabled(&format!("0x{:x}", before | caps::SECONDARY_MMU_WALK))?;
    let after = lru_gen_caps()?;
    write_lru_gen_enabled(&format!("0x{before:x}"))?;
    Ok(after & caps::SECONDARY_MMU_WALK != 0)
}

/// For a case that needs what the series adds (`what`): `Ok(None)` if the
/// kernel has it, `Ok(Some(reason))` to skip on a kernel that is not the
/// series' (e.g. `make check-base`), and an error if a series kernel lacks
/// it (never skipped there).
pub fn series_feature(has: bool, what: &str) -> Result<Option<String>> {
    if has {
        return Ok(None);
    }
    let rel = kernel_release()?;
    if expects_series(flavor()?, &rel) {
        bail!("{rel} is the series' kernel but lacks {what}");
    }
    Ok(Some(format!("{rel} is not the series' kernel: no {what}")))
}

/// Why memcg-based aging cannot be tested here, if it cannot: no
/// multi-gen LRU, no `lru_gen` debugfs file, or no cgroup v2 memory
/// controller.  Decided before a test's plan; once these exist, a failure
/// to set up a memcg is a failure, not a skip.
pub fn memcg_aging_missing() -> Option<String> {
    if !exists(LRU_GEN_ENABLED) {
        return Some(format!("no {LRU_GEN_ENABLED} (CONFIG_LRU_GEN)"));
    }
    if !exists(crate::lru_gen::LRU_GEN_DEBUGFS) {
        return Some(format!(
            "no {} (debugfs not mounted?)",
            crate::lru_gen::LRU_GEN_DEBUGFS
        ));
    }
    match sys::read("/sys/fs/cgroup/cgroup.controllers") {
        Ok(c) if c.split_whitespace().any(|w| w == "memory") => None,
        Ok(_) => Some("the cgroup v2 root has no memory controller".into()),
        Err(e) => Some(format!("no cgroup v2 at /sys/fs/cgroup: {e:#}")),
    }
}

/// Whether a path exists (feature files in sysfs/debugfs).
pub fn exists(path: &str) -> bool {
    Path::new(path).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_majors() {
        assert_eq!(release_major("6.12.117-mglru-secondary").unwrap(), 6);
        assert_eq!(release_major("7.3.4-base").unwrap(), 7);
        assert!(release_major("").is_err());
        assert!(release_major("x.1").is_err());
        assert!(series_has_own_miscdevice("6.12.117-base").unwrap());
        assert!(!series_has_own_miscdevice("7.3.4-mglru-secondary").unwrap());
    }

    #[test]
    fn caps_parse() {
        assert_eq!(parse_caps("0x0007\n").unwrap(), 7);
        assert_eq!(parse_caps("0x000f").unwrap(), 0xf);
        assert_eq!(parse_caps("0x0000").unwrap(), 0);
        assert!(parse_caps("7").is_err());
        assert!(parse_caps("0x").is_err());
        assert!(parse_caps("0xzz").is_err());
        assert!(parse_caps("0x123456789").is_err());
    }

    #[test]
    fn series_releases() {
        assert!(is_series_release("6.12.117-mglru-secondary"));
        assert!(is_series_release("6.12.117-mglru-secondary-debug"));
        assert!(!is_series_release("6.12.117-base"));
        assert!(!is_series_release("6.1.0-28-amd64"));
    }

    #[test]
    fn flavors() {
        assert_eq!(parse_flavor("default").unwrap(), Flavor::Default);
        assert_eq!(parse_flavor("debug").unwrap(), Flavor::Debug);
        assert_eq!(parse_flavor("base").unwrap(), Flavor::Base);
        assert!(parse_flavor("").is_err());
        assert!(parse_flavor("Debug").is_err());
        // The flavour decides, not the release string: a series kernel
        // with another LOCALVERSION must still have the series' features.
        assert!(expects_series(Some(Flavor::Default), "6.12.117"));
        assert!(expects_series(
            Some(Flavor::Debug),
            "6.12.117-mglru-secondary-debug"
        ));
        assert!(!expects_series(Some(Flavor::Base), "6.12.117-base"));
        assert!(expects_series(None, "6.12.117-mglru-secondary"));
        assert!(!expects_series(None, "6.1.0-28-amd64"));
    }

    #[test]
    fn kernel_flavor_match() {
        let d = Some(Flavor::Default);
        assert!(check_kernel_matches_flavor(d, "6.12.117-mglru-secondary").is_ok());
        assert!(check_kernel_matches_flavor(d, "6.12.117-mglru-secondary-debug").is_err());
        assert!(check_kernel_matches_flavor(d, "6.12.117-base").is_err());
        assert!(check_kernel_matches_flavor(d, "6.1.0-28-amd64").is_err());
        let g = Some(Flavor::Debug);
        assert!(check_kernel_matches_flavor(g, "6.12.117-mglru-secondary-debug").is_ok());
        assert!(check_kernel_matches_flavor(g, "6.12.117-mglru-secondary").is_err());
        let b = Some(Flavor::Base);
        assert!(check_kernel_matches_flavor(b, "6.12.117-base").is_ok());
        assert!(check_kernel_matches_flavor(b, "6.12.117-mglru-secondary").is_err());
        assert!(check_kernel_matches_flavor(None, "6.12.117-mglru-secondary").is_ok());
        assert!(check_kernel_matches_flavor(None, "6.1.0-28-amd64").is_err());
    }

    #[test]
    fn bool_params() {
        assert!(param_is_true("Y"));
        assert!(param_is_true("1"));
        assert!(!param_is_true("N"));
        assert!(!param_is_true("0"));
    }
}
