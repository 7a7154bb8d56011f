// SPDX-License-Identifier: GPL-2.0
//! lru_gen_aging_test: multi-gen LRU aging of memory used through KVM's TDP
//! MMU, with and without capability 0x8 (`LRU_GEN_SECONDARY_MMU_WALK`).
//!
//! The test runs in its own memcg. A guest touches every other page of its
//! memory (or every other huge page for THP) after all of it was made old by
//! two aging passes; a third pass, forced through `/sys/kernel/debug/lru_gen`,
//! must move the touched pages, and only those, into the generation it fills.
//! The guest runs with paging off, so its accesses go through exactly one
//! translation, the TDP (NPT) page table, and QEMU/TCG flushes its nested TLB
//! on every VMRUN: the accessed bits seen by KVM are exact, which is why the
//! fractions can be asserted tightly.
//!
//! Pages are counted per generation (the kernel does not expose a page's
//! generation), so host-side noise — the test's own stack and heap pages that
//! happen to be young — counts as "untouched promoted"; it is a few pages.
//!
//! The walk stats of `lru_gen_full` (`C` fast-only queries, `S` young
//! answers, `E` failed answers) must move with 0x8 and stay 0 without it.
//!
//! The last case ages in a loop while vCPUs fault in fresh memory, memory is
//! discarded, the memslot is deleted and re-added, VMs are torn down and a
//! child process exits with its VM alive; the kernel log must stay clean.
//!
//! `--vm-child` is used internally: it runs such a child process.

use mglru_selftest::features::{self, caps, CapsGuard};
use mglru_selftest::kvm::{Access, Backing, TouchVm, PAGE_SIZE};
use mglru_selftest::lru_gen::{self, WalkStats};
use mglru_selftest::memcg::Memcg;
use mglru_selftest::timing::{ms, timed};
use mglru_selftest::{bail, ktap::Ktap, sys, Context, Result};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

const MEMCG: &str = "lru-gen-aging";
const NID: u32 = 0;
const MEM: usize = 64 << 20;
const HUGE_PAGES: usize = (2 << 20) / PAGE_SIZE;
const MIN_TOUCHED: f64 = 0.95;
const MAX_UNTOUCHED: f64 = 0.05;
const ALL_CAPS: u32 = caps::CORE | caps::MM_WALK | caps::NONLEAF_YOUNG | caps::SECONDARY_MMU_WALK;
const NO_SECONDARY: u32 = ALL_CAPS & !caps::SECONDARY_MMU_WALK;

/// One measured aging pass.
struct Pass {
    /// Pages the guest touched (in 4 KiB pages).
    touched: u64,
    /// Pages it did not touch.
    untouched: u64,
    /// Pages the pass moved into the generation it filled.
    promoted: u64,
    /// Wall time of the pass (the debugfs write).
    time: Duration,
    /// The pass's page-table walk stats.
    walk: WalkStats,
}

impl Pass {
    fn touched_fraction(&self) -> f64 {
        self.promoted.min(self.touched) as f64 / self.touched as f64
    }

    /// Upper bound: every promoted page beyond the touched ones counts.
    fn untouched_fraction(&self) -> f64 {
        self.promoted.saturating_sub(self.touched) as f64 / self.untouched.max(1) as f64
    }

    fn counter(&self, letter: char) -> Result<u64> {
        self.walk
            .get(letter)
            .with_context(|| format!("lru_gen_full lacks walk stat {letter:?}: {:?}", self.walk))
    }

    fn describe(&self) -> String {
        format!(
            "touched {}/{} promoted ({:.1}%), untouched promoted <= {:.2}%, pass {:.1} ms, \
             walk stats {:?}",
            self.promoted.min(self.touched),
            self.touched,
            100.0 * self.touched_fraction(),
            100.0 * self.untouched_fraction(),
            ms(self.time),
            self.walk.counters
        )
    }

    fn check_fractions(&self) -> Result<()> {
        if self.touched_fraction() < MIN_TOUCHED || self.untouched_fraction() > MAX_UNTOUCHED {
            bail!(
                "expected >= {:.0}% touched and <= {:.0}% untouched promoted: {}",
                100.0 * MIN_TOUCHED,
                100.0 * MAX_UNTOUCHED,
                self.describe()
            );
        }
        Ok(())
    }
}

/// Forces one aging pass on the memcg; returns the `max_seq` it started
/// from (the generation it filled) and its wall time.
fn age_once(cg: &Memcg) -> Result<(u64, Duration)> {
    let id = cg.lru_gen_id()?;
    let max = lru_gen::node_of(&cg.path(), NID)?
        .max_seq()
        .context("no generations")?;
    let (r, t) = timed(|| lru_gen::age(id, NID, max, true, true));
    r.with_context(|| format!("aging memcg {} from max_seq {max}", cg.path()))?;
    Ok((max, t))
}

/// Makes all pages old, has vCPU 0 read `count` pages `stride` pages apart,
/// then measures one aging pass with `mask` as the capability mask.
fn measure(vm: &mut TouchVm, cg: &Memcg, mask: u32, stride: usize, unit: usize) -> Result<Pass> {
    features::set_lru_gen_caps(mask)?;
    let pages = vm.mem.pages();
    let count = pages / stride;
    age_once(cg)?;
    age_once(cg)?;
    vm.touch(0, 0, count, stride, Access::Read)?;
    let before = lru_gen::node_full_of(&cg.path(), NID)?;
    let (seq, time) = age_once(cg)?;
    let after = lru_gen::node_full_of(&cg.path(), NID)?;
    let gen_before = before.gen(seq).map_or(0, |g| g.anon);
    let gen_after = after
        .gen(seq)
        .with_context(|| format!("generation {seq} vanished"))?;
    let touched = (count * unit) as u64;
    Ok(Pass {
        touched,
        untouched: pages as u64 - touched,
        promoted: gen_after.anon.saturating_sub(gen_before),
        time,
        walk: gen_after.walk.clone().unwrap_or_default(),
    })
}

fn tdp_mmu_on() -> Result<()> {
    match features::module_param("kvm", "tdp_mmu") {
        Some(v) if features::param_is_true(&v) => Ok(()),
        Some(v) => bail!("kvm.tdp_mmu is {v}: the fast-only path needs the TDP MMU"),
        None => bail!("/sys/module/kvm/parameters/tdp_mmu missing (kvm not loaded?)"),
    }
}

fn secondary_cap_present() -> Result<()> {
    features::write_lru_gen_enabled("y")?;
    let c = features::lru_gen_caps()?;
    if c & caps::SECONDARY_MMU_WALK == 0 {
        bail!("\"y\" gave caps 0x{c:04x}, without 0x8 (kernel lacks the series?)");
    }
    Ok(())
}

fn anon_huge_bytes() -> Result<u64> {
    let text = sys::read("/proc/self/smaps_rollup")?;
    let line = text
        .lines()
        .find(|l| l.starts_with("AnonHugePages:"))
        .context("smaps_rollup lacks AnonHugePages")?;
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .context("malformed AnonHugePages")?
        .parse()
        .context("parsing AnonHugePages")?;
    Ok(kb * 1024)
}

/// A VM whose memory was written once by the guest (so every page is
/// mapped by the host page table and the TDP MMU).
fn faulted_vm(backing: Backing) -> Result<TouchVm> {
    let mut vm = TouchVm::new(MEM, 2, backing)?;
    let pages = vm.mem.pages();
    vm.touch_all(0, pages, Access::Write(0x6167_6521))?;
    if backing == Backing::Thp {
        let huge = anon_huge_bytes()?;
        if huge < (MEM as u64) * 9 / 10 {
            bail!(
                "only {} MiB of the {} MiB guest memory are THPs; the PMD case needs them",
                huge >> 20,
                MEM >> 20
            );
        }
    }
    Ok(vm)
}

fn aging_with_secondary_walk(t: &Ktap, vm: &mut TouchVm, cg: &Memcg) -> Result<Pass> {
    let p = measure(vm, cg, ALL_CAPS, 2, 1)?;
    t.diag(&format!("4K, caps 0x{ALL_CAPS:04x}: {}", p.describe()));
    p.check_fractions()?;
    let (c, s, e) = (p.counter('c')?, p.counter('s')?, p.counter('e')?);
    if c < vm.mem.pages() as u64 {
        bail!(
            "{c} fast-only queries for {} mapped guest pages",
            vm.mem.pages()
        );
    }
    if e != 0 {
        bail!("{e} fast-only queries failed with the TDP MMU and no nested guest");
    }
    if (s as f64) < MIN_TOUCHED * p.touched as f64
        || s as f64 > p.touched as f64 + MAX_UNTOUCHED * p.untouched as f64
    {
        bail!("{s} young answers for {} touched pages", p.touched);
    }
    Ok(p)
}

fn aging_without_secondary_walk(t: &Ktap, vm: &mut TouchVm, cg: &Memcg) -> Result<Pass> {
    let p = measure(vm, cg, NO_SECONDARY, 2, 1)?;
    t.diag(&format!("4K, caps 0x{NO_SECONDARY:04x}: {}", p.describe()));
    // 6.12 already asks secondary MMUs during aging, through the locked
    // clear_young(): the same pages are promoted, only slower.
    p.check_fractions()?;
    for letter in ['c', 's', 'e'] {
        let v = p.counter(letter)?;
        if v != 0 {
            bail!("walk stat {letter} is {v} with 0x8 clear: the fast-only path ran");
        }
    }
    Ok(p)
}

fn aging_thp_with_secondary_walk(t: &Ktap, cg: &Memcg) -> Result<()> {
    let mut vm = faulted_vm(Backing::Thp)?;
    // One page in every other 2 MiB region: the whole THP is young.
    let p = measure(&mut vm, cg, ALL_CAPS, 2 * HUGE_PAGES, HUGE_PAGES)?;
    t.diag(&format!("THP, caps 0x{ALL_CAPS:04x}: {}", p.describe()));
    p.check_fractions()?;
    let (s, e) = (p.counter('s')?, p.counter('e')?);
    let huge_touched = p.touched / HUGE_PAGES as u64;
    if e != 0 || (s as f64) < MIN_TOUCHED * huge_touched as f64 {
        bail!("{s} young and {e} failed answers for {huge_touched} touched THPs");
    }
    Ok(())
}

/// Runs a child process that creates a VM, touches its memory and exits
/// with the VM still alive, so the mm goes away under the notifier.
fn vm_child() -> Result<()> {
    let mut vm = TouchVm::new(8 << 20, 1, Backing::Anon4k)?;
    let pages = vm.mem.pages();
    vm.touch_all(0, pages, Access::Write(7))?;
    std::process::exit(0);
}

fn spawn_vm_child() -> Result<()> {
    let exe = std::env::current_exe().context("current_exe")?;
    let st = std::process::Command::new(exe)
        .arg("--vm-child")
        .status()
        .context("running --vm-child")?;
    if !st.success() {
        bail!("--vm-child failed: {st}");
    }
    Ok(())
}

fn races(t: &Ktap, cg: &Memcg) -> Result<()> {
    const ROUNDS: u32 = 4;
    const RACE_MEM: usize = 16 << 20;
    features::set_lru_gen_caps(ALL_CAPS)?;
    let watch = sys::DmesgWatch::start()?;
    let stop = AtomicBool::new(false);
    let passes = AtomicU64::new(0);
    let result = std::thread::scope(|s| {
        let ager = s.spawn(|| -> Result<()> {
            while !stop.load(Ordering::Relaxed) {
                age_once(cg)?;
                passes.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        });
        let work = (|| -> Result<()> {
            for round in 0..ROUNDS {
                let mut vm = TouchVm::new(RACE_MEM, 2, Backing::Anon4k)?;
                let pages = vm.mem.pages();
                // vCPUs fault in fresh memory while aging walks it.
                vm.touch_all(0, pages, Access::Write(round))?;
                // Invalidation (zap) against aging, then fault back in.
                vm.mem.discard(0, pages / 2)?;
                vm.touch_all(0, pages, Access::Read)?;
                // Memslot deletion and re-creation against aging.
                vm.set_data_slot(false)?;
                vm.set_data_slot(true)?;
                let value = 0x100 + round;
                vm.touch_all(0, pages, Access::Write(value))?;
                let wrong = (0..pages)
                    .filter(|&i| vm.mem.read_page_u32(i) != value)
                    .count();
                if wrong != 0 {
                    bail!("round {round}: {wrong} pages lack the guest's write");
                }
                // mm exit with a live VM, then VM teardown, both under aging.
                spawn_vm_child()?;
                drop(vm);
            }
            Ok(())
        })();
        stop.store(true, Ordering::Relaxed);
        let aged = ager
            .join()
            .map_err(|_| anyhow::anyhow!("aging thread panicked"))?;
        work.and(aged)
    });
    result?;
    let n = passes.load(Ordering::Relaxed);
    t.diag(&format!("{ROUNDS} rounds raced {n} aging passes"));
    if n < u64::from(ROUNDS) {
        bail!("only {n} aging passes ran concurrently");
    }
    let bugs = watch.new_bug_lines()?;
    if !bugs.is_empty() {
        bail!("kernel log gained: {bugs:#?}");
    }
    Ok(())
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("--vm-child") {
        if let Err(e) = vm_child() {
            eprintln!("vm child: {e:#}");
            std::process::exit(1);
        }
    }

    let mut t = Ktap::new(6);
    let setup = (|| -> Result<(CapsGuard, Memcg)> {
        let guard = CapsGuard::save()?;
        let cg = Memcg::create(MEMCG)?;
        cg.enter()?;
        Ok((guard, cg))
    })();
    let (guard, cg) = match setup {
        Ok(v) => v,
        Err(e) => Ktap::skip_all(&format!("no memcg/lru_gen to test with: {e:#}")),
    };
    let watch = sys::DmesgWatch::start().ok();

    t.check("kvm_tdp_mmu_enabled", tdp_mmu_on());
    t.check("lru_gen_y_sets_secondary_mmu_walk", secondary_cap_present());

    match faulted_vm(Backing::Anon4k) {
        Ok(mut vm) => {
            let on = aging_with_secondary_walk(&t, &mut vm, &cg);
            let off = aging_without_secondary_walk(&t, &mut vm, &cg);
            if let (Ok(on), Ok(off)) = (&on, &off) {
                t.diag(&format!(
                    "pass time 0x8 on/off: {:.1}/{:.1} ms = {:.2}x",
                    ms(on.time),
                    ms(off.time),
                    on.time.as_secs_f64() / off.time.as_secs_f64()
                ));
            }
            t.check("aging_4k_secondary_walk_promotes_touched", on.map(drop));
            t.check("aging_4k_without_0x8_is_6_12", off.map(drop));
        }
        Err(e) => {
            let why = format!("{e:#}");
            t.fail("aging_4k_secondary_walk_promotes_touched", &why);
            t.fail("aging_4k_without_0x8_is_6_12", &why);
        }
    }
    t.check(
        "aging_thp_secondary_walk_promotes_touched",
        aging_thp_with_secondary_walk(&t, &cg),
    );
    let mut race = races(&t, &cg);
    if let (Ok(()), Some(w)) = (&race, &watch) {
        match w.new_bug_lines() {
            Ok(b) if !b.is_empty() => race = Err(anyhow::anyhow!("kernel log gained: {b:#?}")),
            Err(e) => race = Err(e),
            _ => {}
        }
    }
    t.check("aging_races_faults_memslots_teardown", race);
    // finish() exits: leave the memcg and restore the caps first.
    drop(cg);
    drop(guard);
    t.finish();
}
