// SPDX-License-Identifier: GPL-2.0
//! The environment of a run: the skip decisions, swap, and the kernel's
//! report facilities (kernel log, lockdep, kmemleak, KVM's debugfs) read
//! before the run and checked after it. None of these checks may pass for
//! want of its facility on the series' flavours.

use crate::shared::Shared;
use anyhow::{bail, Context, Result};
use mglru_selftest::features::{self, Flavor};
use mglru_selftest::ktap::Ktap;
use mglru_selftest::{lru_mirror, module, sys};
use std::process::Command;
use std::time::Duration;

const SWAP_DEV: &str = "/dev/ram0";
/// KVM's debugfs directory: one `<pid>-<fd>` directory per VM.
const KVM_DEBUGFS: &str = "/sys/kernel/debug/kvm";
/// What x86's generic KASAN prints at boot (arch/x86/mm/kasan_init_64.c).
const KASAN_BANNER: &str = "KernelAddressSanitizer initialized";
const LOCKDEP_STATS: &str = "/proc/lockdep_stats";
const KMEMLEAK: &str = "/sys/kernel/debug/kmemleak";

/// Every skip decision, made before the KTAP plan: no `/dev/kvm` (outside
/// `vm-run`, whose kernels and QEMU always have it) and not the series'
/// kernel skip; the series' kernel lacking what the test needs is an error
/// (reported as failures under the plan).
pub fn preflight() -> Result<Option<Flavor>> {
    let flavor = features::flavor()?;
    if !features::exists("/dev/kvm") {
        if matches!(flavor, Some(Flavor::Default | Flavor::Debug)) {
            bail!("no /dev/kvm on vm-run's {flavor:?} kernel (CONFIG_KVM_AMD, QEMU -cpu max)");
        }
        Ktap::skip_all("no /dev/kvm");
    }
    let has = match features::has_secondary_mmu_walk() {
        Ok(h) => h,
        Err(e) if features::is_series_kernel()? => {
            return Err(e.context("probing lru_gen capability 0x8"))
        }
        Err(_) => false,
    };
    let mirror_ko = module::project_module(lru_mirror::MODULE);
    for (ok, what) in [
        (has, "lru_gen capability 0x8".to_string()),
        (
            mirror_ko.exists(),
            format!("lru_mirror module ({})", mirror_ko.display()),
        ),
    ] {
        if let Some(why) = features::series_feature(ok, &what)? {
            Ktap::skip_all(&why);
        }
    }
    Ok(flavor)
}

/// What the running kernel must and does provide for the report checks.
pub struct Kernel {
    /// One of the series' flavours: lockdep (and KVM's debugfs) must be
    /// there; the debug one also has KASAN and kmemleak.
    series_flavor: bool,
    /// Whether kmemleak is there (checked then).
    pub kmemleak: bool,
}

/// Checks that the kernel is `vm-run`'s flavour and, on the debug one,
/// that KASAN, kmemleak and page poisoning are on: a check whose facility is missing there
/// fails rather than passing having checked nothing.
pub fn check_kernel(flavor: Option<Flavor>) -> Result<Kernel> {
    let series_flavor = matches!(flavor, Some(Flavor::Default | Flavor::Debug));
    if series_flavor {
        features::check_kernel_matches_flavor(flavor, &features::kernel_release()?)?;
    }
    let kmemleak = features::exists(KMEMLEAK);
    if flavor == Some(Flavor::Debug) {
        if !sys::dmesg()?.contains(KASAN_BANNER) {
            bail!("the debug kernel did not log {KASAN_BANNER:?} at boot: no KASAN");
        }
        if !kmemleak {
            bail!("no {KMEMLEAK} on the debug kernel (DEBUG_KMEMLEAK, configs/debug.config)");
        }
        // Page poisoning: asked for on the command line (vm-run) and known
        // to the kernel (PAGE_POISONING; else the parameter is "unknown").
        let cmdline = sys::read("/proc/cmdline")?;
        let unknown = sys::dmesg()?
            .lines()
            .any(|l| l.contains("Unknown kernel command line") && l.contains("page_poison"));
        if !cmdline.split_whitespace().any(|w| w == "page_poison=1") || unknown {
            bail!(
                "the debug kernel does not poison freed pages (page_poison=1 on {cmdline:?}, \
                 PAGE_POISONING in configs/debug.config)"
            );
        }
    }
    Ok(Kernel {
        series_flavor,
        kmemleak,
    })
}

/// Swap on [`SWAP_DEV`] unless some swap is on already.
pub fn swap_on() -> Result<()> {
    if sys::read("/proc/swaps")?.lines().count() > 1 {
        return Ok(());
    }
    for (cmd, arg) in [("mkswap", SWAP_DEV), ("swapon", SWAP_DEV)] {
        let out = Command::new(cmd)
            .arg(arg)
            .output()
            .with_context(|| format!("running {cmd}"))?;
        if !out.status.success() {
            bail!("{cmd} {arg}: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    Ok(())
}

pub fn swap_off() {
    let _ = Command::new("swapoff").arg(SWAP_DEV).status();
}

/// KVM's debugfs directories of VMs (`<pid>-<fd>`); an error if KVM's
/// debugfs cannot be read (the "no VM left" check would be blind).
fn kvm_vm_dirs() -> Result<Vec<String>> {
    let mut dirs = Vec::new();
    for e in std::fs::read_dir(KVM_DEBUGFS).with_context(|| format!("reading {KVM_DEBUGFS}"))? {
        let n = e
            .with_context(|| format!("reading {KVM_DEBUGFS}"))?
            .file_name()
            .to_string_lossy()
            .into_owned();
        if n.contains('-') && n.starts_with(|c: char| c.is_ascii_digit()) {
            dirs.push(n);
        }
    }
    Ok(dirs)
}

/// Whether lockdep still checks (`debug_locks` in /proc/lockdep_stats: it
/// turns itself off after its first report). `Ok(None)`: this kernel has
/// no lockdep, an error where it must have it (`required`: the series'
/// flavours, whose config has `PROVE_LOCKING`).
fn lockdep_on(required: bool) -> Result<Option<bool>> {
    if !required && !features::exists(LOCKDEP_STATS) {
        return Ok(None);
    }
    let text = sys::read(LOCKDEP_STATS)
        .context("lockdep must be on (PROVE_LOCKING, configs/mglru-secondary.config)")?;
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("debug_locks:"))
        .with_context(|| format!("{LOCKDEP_STATS} has no debug_locks line"))?;
    let v: u64 = line
        .split(':')
        .nth(1)
        .unwrap_or("")
        .trim()
        .parse()
        .with_context(|| format!("{LOCKDEP_STATS}: {line:?}"))?;
    Ok(Some(v != 0))
}

/// The kernel's report facilities as they were before the run.
pub struct Watch {
    kernel: Kernel,
    /// Lockdep at the start: `None` if this kernel has none.
    pub lockdep: Option<bool>,
    dmesg: sys::DmesgWatch,
    vm_dirs_before: Vec<String>,
}

impl Watch {
    /// Fails if the kernel log already has a report (from boot:
    /// `DEBUG_VM_PGTABLE`, lockdep), which would also have switched lockdep
    /// off and made "no report" meaningless, or if lockdep is off; then
    /// remembers where the log, kmemleak and KVM's debugfs are.
    pub fn start(kernel: Kernel) -> Result<Watch> {
        let boot = sys::kernel_bug_lines(&sys::dmesg()?)
            .into_iter()
            .map(str::to_owned)
            .collect::<Vec<_>>();
        if !boot.is_empty() {
            bail!("the kernel log has reports before the run: {boot:#?}");
        }
        let lockdep = lockdep_on(kernel.series_flavor)?;
        if lockdep == Some(false) {
            bail!("lockdep is off before the run (debug_locks 0)");
        }
        let dmesg = sys::DmesgWatch::start()?;
        if kernel.kmemleak {
            // Forget what boot left behind; report only what this run leaks.
            sys::write(KMEMLEAK, "clear")?;
        }
        Ok(Watch {
            kernel,
            lockdep,
            dmesg,
            vm_dirs_before: kvm_vm_dirs()?,
        })
    }

    pub fn kmemleak(&self) -> bool {
        self.kernel.kmemleak
    }

    /// The checkpoint VM (this process's) must show in KVM's debugfs, or
    /// "no VM directory left" at the end could not fail.
    pub fn check_vm_visible(&self) -> Result<()> {
        let me = format!("{}-", std::process::id());
        let dirs = kvm_vm_dirs()?;
        if !dirs
            .iter()
            .any(|d| d.starts_with(&me) && !self.vm_dirs_before.contains(d))
        {
            bail!("the checkpoint VM has no directory {me}<fd> in {KVM_DEBUGFS} ({dirs:?})");
        }
        Ok(())
    }

    /// No VM directory of the run may be left in KVM's debugfs.
    pub fn check_no_vm_left(&self, sh: &Shared) {
        match kvm_vm_dirs() {
            Ok(dirs) => {
                let left: Vec<String> = dirs
                    .into_iter()
                    .filter(|d| !self.vm_dirs_before.contains(d))
                    .collect();
                if !left.is_empty() {
                    sh.violation("teardown", format!("VMs left in KVM's debugfs: {left:?}"));
                }
            }
            Err(e) => sh.violation("teardown", format!("{e:#}")),
        }
    }

    /// kmemleak's reports after two scans (it reports an object only once
    /// it was seen unreferenced twice and is older than 5 s), or why it
    /// could not scan; nothing without kmemleak.
    pub fn scan_kmemleak(&self, sh: &Shared) -> Vec<String> {
        if !self.kernel.kmemleak {
            return Vec::new();
        }
        let scan = || -> Result<String> {
            for _ in 0..2 {
                std::thread::sleep(Duration::from_secs(6));
                sys::write(KMEMLEAK, "scan")?;
            }
            sys::read(KMEMLEAK)
        };
        match scan() {
            Ok(text) => {
                sh.count("kmemleak scans", 2);
                text.lines()
                    .filter(|l| l.contains("unreferenced object"))
                    .map(str::to_owned)
                    .collect()
            }
            Err(e) => vec![format!("kmemleak: {e:#}")],
        }
    }

    /// Every kernel report since the start: new bug lines in the log,
    /// lockdep switched off, then `kmemleak` (what [`Watch::scan_kmemleak`]
    /// found).
    pub fn reports(&self, kmemleak: Vec<String>) -> Vec<String> {
        let mut bugs = match self.dmesg.new_bug_lines() {
            Ok(b) => b,
            Err(e) => vec![format!("reading the kernel log: {e:#}")],
        };
        match lockdep_on(self.kernel.series_flavor) {
            Ok(Some(false)) => {
                bugs.push("lockdep switched itself off (debug_locks 0) during the run".into())
            }
            Ok(_) => {}
            Err(e) => bugs.push(format!("{e:#}")),
        }
        bugs.extend(kmemleak);
        bugs
    }
}
