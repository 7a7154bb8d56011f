// SPDX-License-Identifier: GPL-2.0
//! lru_gen_aging_test: multi-gen LRU aging of memory used through KVM's TDP
//! MMU, with and without capability 0x8 (`LRU_GEN_SECONDARY_MMU_WALK`).
//!
//! The test runs in its own memcg. A guest touches a known subset of its
//! memory after all of it was made old by two aging passes; a third pass,
//! forced through `/sys/kernel/debug/lru_gen`, must move the touched pages,
//! and only those, into the generation it fills. The guest runs with paging
//! off, so its accesses go through exactly one translation, the TDP (NPT)
//! page table, and QEMU/TCG flushes its nested TLB on every VMRUN: the
//! accessed bits KVM sees are exact, which is why accuracy is asserted
//! tightly (>= 95 % / <= 5 %).
//!
//! Measured side by side in one run, with 0x8 set and clear:
//! 1. accuracy (above), plus the `c`/`s`/`e` walk counters of `lru_gen_full`;
//! 2. aging cost: mean wall time of an aging pass over the VM's memcg;
//! 3. vCPU overhead: guest time to re-fault and touch its memory while aging
//!    passes loop concurrently, relative to no aging.
//!
//! 4. a VM that ran a nested SVM guest once (so KVM has shadow pages and
//!    rmaps for it from then on) must still be aged fast: only the few
//!    pages the nested guest's shadow pages map may fail; its pass time with
//!    0x8 on and off is reported with the ratio's 95 % interval.
//!
//! Times are reported (table, `--json`), never asserted.
//!
//! Gating: fast-only aging is only guaranteed on x86 with the TDP MMU.
//! `tdp_mmu` off or no KVM: SKIP with the reason. Capability 0x8 missing:
//! FAIL on this project's kernel, SKIP on any other.
//!
//! `--vm-child` is used internally (a process that exits with a live VM).

use clap::{CommandFactory, Parser, ValueEnum};
use mglru_selftest::aging::{self, age_once, Pass, MIN_TOUCHED};
use mglru_selftest::features::{self, caps};
use mglru_selftest::kvm::{Access, Backing, TouchVm, MAX_DATA, NESTED_RESERVED_PAGES, PAGE_SIZE};
use mglru_selftest::lru_gen;
use mglru_selftest::memcg::Memcg;
use mglru_selftest::timing::{ms, timed, Ratio, Stats};
use mglru_selftest::units::{parse_fraction, parse_size, stride_for};
use mglru_selftest::{bail, ktap::Ktap, sys, Context, Result};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

const MEMCG: &str = "lru-gen-aging";
const HUGE_PAGES: usize = (2 << 20) / PAGE_SIZE;
const ALL_CAPS: u32 = caps::CORE | caps::MM_WALK | caps::NONLEAF_YOUNG | caps::SECONDARY_MMU_WALK;
const NO_SECONDARY: u32 = ALL_CAPS & !caps::SECONDARY_MMU_WALK;
/// Guest memory the test VM (2 GiB) can afford.
const MAX_TOTAL: usize = 1 << 30;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum BackingOpt {
    /// Anonymous memory, 4 KiB pages.
    Anon,
    /// Anonymous memory with transparent huge pages (2 MiB NPT mappings).
    Thp,
}

impl From<BackingOpt> for Backing {
    fn from(b: BackingOpt) -> Self {
        match b {
            BackingOpt::Anon => Backing::Anon4k,
            BackingOpt::Thp => Backing::Thp,
        }
    }
}

/// MGLRU aging of KVM guest memory with and without capability 0x8.
///
/// Asserts accuracy (touched pages promoted, untouched not), the walk
/// counters and race safety; measures aging pass time and vCPU overhead
/// with 0x8 set and clear, side by side. Exit status: 0 pass, 1 fail,
/// 4 skip, 2 usage error.
#[derive(Parser, Debug)]
#[command(name = "lru_gen_aging_test", version, about, long_about = None)]
struct Opts {
    /// Number of vCPUs.
    #[arg(short = 'v', long, default_value_t = 2,
          value_parser = clap::value_parser!(u32).range(1..=8))]
    vcpus: u32,
    /// Guest memory per vCPU (K/M/G suffixes, multiple of 4K; 2M with THP).
    #[arg(short = 'b', long = "bytes-per-vcpu", default_value = "32M", value_parser = parse_size)]
    bytes_per_vcpu: usize,
    /// Backing of the guest memory.
    #[arg(short = 's', long, value_enum, default_value_t = BackingOpt::Anon)]
    backing: BackingOpt,
    /// Fraction of pages the guest touches (every round(1/F)-th page).
    #[arg(short = 'f', long = "touch-fraction", default_value = "0.5", value_parser = parse_fraction)]
    touch_fraction: f64,
    /// Aging passes per 0x8 state for the pass-time measurement.
    #[arg(short = 'n', long, default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    passes: u32,
    /// Guest re-fault-and-touch rounds per state for the vCPU overhead.
    #[arg(short = 'i', long, default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    iterations: u32,
    /// Perf mode: measure only (accuracy reported as diagnostics, not
    /// test points; no race and THP cases) and loop aging while vCPUs run.
    #[arg(short = 'p', long)]
    perf: bool,
    /// Report accuracy as diagnostics (WARNING when a check fails) instead
    /// of test points.
    #[arg(short = 'w', long = "warn-only")]
    warn_only: bool,
    /// Write the results as JSON to this file.
    #[arg(short = 'o', long)]
    json: Option<PathBuf>,
    /// Internal: run as the child that exits with a live VM.
    #[arg(long = "vm-child", hide = true)]
    vm_child: bool,
}

impl Opts {
    fn total(&self) -> usize {
        self.bytes_per_vcpu * self.vcpus as usize
    }

    /// Cross-option checks clap cannot do; exits 2 like clap does.
    fn validate(&self) {
        let mut cmd = Opts::command();
        if self.total() > MAX_TOTAL.min(MAX_DATA) {
            cmd.error(
                clap::error::ErrorKind::ValueValidation,
                format!(
                    "--vcpus x --bytes-per-vcpu = {} MiB of guest memory is more than the \
                     test VM can hold ({} MiB)",
                    self.total() >> 20,
                    MAX_TOTAL >> 20
                ),
            )
            .exit();
        }
        if self.backing == BackingOpt::Thp && !self.bytes_per_vcpu.is_multiple_of(2 << 20) {
            cmd.error(
                clap::error::ErrorKind::ValueValidation,
                "with --backing thp, --bytes-per-vcpu must be a multiple of 2M",
            )
            .exit();
        }
    }

    fn stride(&self) -> usize {
        let s = stride_for(self.touch_fraction);
        match self.backing {
            BackingOpt::Anon => s,
            // One page per touched huge page, every s-th huge page.
            BackingOpt::Thp => s * HUGE_PAGES,
        }
    }

    fn unit(&self) -> usize {
        match self.backing {
            BackingOpt::Anon => 1,
            BackingOpt::Thp => HUGE_PAGES,
        }
    }
}

/// Has vCPU 0 touch every `stride`-th page after all pages were made old,
/// and measures the aging pass that follows with `mask` as the capability
/// mask. `unit` is how many 4 KiB pages one touch makes young.
fn measure(vm: &mut TouchVm, cg: &Memcg, mask: u32, stride: usize, unit: usize) -> Result<Pass> {
    features::set_lru_gen_caps(mask)?;
    let pages = vm.mem.pages();
    let count = pages.div_ceil(stride);
    let touched = ((count * unit) as u64).min(pages as u64);
    aging::measured_pass(cg, touched, pages as u64 - touched, || {
        vm.touch(0, 0, count, stride, Access::Read)
    })
}

/// A VM whose memory the guest wrote once, so every page is mapped by the
/// host page table and the TDP MMU.
fn faulted_vm(bytes: usize, vcpus: usize, backing: Backing) -> Result<TouchVm> {
    let mut vm = TouchVm::new(bytes, vcpus, backing)?;
    let pages = vm.mem.pages();
    vm.touch_all(0, pages, Access::Write(0x6167_6521))?;
    if backing == Backing::Thp {
        sys::expect_thp_backed(bytes, "guest memory")?;
    }
    Ok(vm)
}

/// Least average number of pages asked per fast-only call: the walkers ask
/// once per PTE table (512 pages on x86) or THP, so even with a few sparse
/// tables of the test's own process in the memcg the average is far above
/// this; one call per page (the unbatched design) gives 1.
const MIN_PAGES_PER_CALL: u64 = 32;

/// The walk stats of a 0x8 pass: every mapped page asked, in batches, none
/// failed, and young answers found.
fn check_batched(p: &Pass, pages: u64) -> Result<()> {
    let (c, q, s, e) = (
        p.counter('c')?,
        p.counter('q')?,
        p.counter('s')?,
        p.counter('e')?,
    );
    if e != 0 {
        bail!("{e} pages failed fast-only with the TDP MMU and no nested guest");
    }
    if q < pages {
        bail!("{q} pages asked fast-only for {pages} mapped guest pages");
    }
    if c == 0 || c * MIN_PAGES_PER_CALL > q {
        bail!("{c} fast-only calls for {q} pages: fewer than {MIN_PAGES_PER_CALL} pages per call");
    }
    if s == 0 {
        bail!("no fast-only call found a young page: {}", p.describe());
    }
    Ok(())
}

fn check_on(p: &Pass, pages: u64) -> Result<()> {
    p.check_fractions()?;
    check_batched(p, pages)
}

fn check_off(p: &Pass, series: bool) -> Result<()> {
    // 6.12 already asks secondary MMUs during aging, through the locked
    // clear_young(): the same pages are promoted, only differently.
    p.check_fractions()?;
    // Unpatched kernels have no fast-only counters at all.
    if series {
        for letter in ['c', 'q', 's', 'e'] {
            p.expect_counter(letter, 0)?;
        }
    }
    Ok(())
}

fn thp_accuracy(t: &Ktap, cg: &Memcg) -> Result<()> {
    let mut vm = faulted_vm(64 << 20, 2, Backing::Thp)?;
    let p = measure(&mut vm, cg, ALL_CAPS, 2 * HUGE_PAGES, HUGE_PAGES)?;
    t.diag(&format!(
        "THP 64 MiB, caps 0x{ALL_CAPS:04x}: {}",
        p.describe()
    ));
    p.check_fractions()?;
    let (s, e) = (p.counter('s')?, p.counter('e')?);
    if e != 0 || (s as f64) < MIN_TOUCHED * p.touched as f64 {
        bail!(
            "{s} pages answered young and {e} failed for {} touched pages",
            p.touched
        );
    }
    check_batched(&p, vm.mem.pages() as u64)
}

/// One fast-only call covers a PTE table's worth of pages, and a table can
/// mix memslots, addresses in no memslot, and VMAs: 8 MiB of guest memory
/// in two memslots with a 256 KiB hole at 1.25 MiB (in the middle of the
/// first table), the second memslot straddling three table boundaries, and
/// a VMA boundary (MADV_DONTFORK) inside the third table. The guest reads
/// every other page of both memslots and the host every other page of the
/// hole: exactly those pages must be promoted, with no failed answer.
fn batch_edges(t: &Ktap, cg: &Memcg) -> Result<()> {
    const MIB: usize = (1 << 20) / PAGE_SIZE;
    let mut vm = TouchVm::new(8 << 20, 1, Backing::Anon4k)?;
    let pages = vm.mem.pages();
    let (a, hole, b) = ((0, 5 * MIB / 4), (5 * MIB / 4, MIB / 4), (3 * MIB / 2, 0));
    let b = (b.0, pages - b.0);
    // SAFETY: a range inside our own guest memory mapping; MADV_DONTFORK
    // only changes what fork() copies, and splits the VMA.
    let r = unsafe {
        libc::madvise(
            vm.mem.as_ptr().add((5 * MIB + MIB / 16) * PAGE_SIZE) as *mut libc::c_void,
            MIB / 2 * PAGE_SIZE,
            libc::MADV_DONTFORK,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error()).context("madvise(MADV_DONTFORK)");
    }
    vm.set_data_slots(&[a, b])?;
    for (first, count) in [a, b] {
        vm.touch(0, first, count, 1, Access::Write(0x6564_6765))?;
    }
    // The hole: faulted in by the host only.
    for i in hole.0..hole.0 + hole.1 {
        vm.mem.write_at(i * PAGE_SIZE, &7u32.to_ne_bytes())?;
    }
    features::set_lru_gen_caps(ALL_CAPS)?;
    let touched = (a.1.div_ceil(2) + b.1.div_ceil(2) + hole.1.div_ceil(2)) as u64;
    let p = aging::measured_pass(cg, touched, pages as u64 - touched, || {
        for (first, count) in [a, b] {
            vm.touch(0, first, count.div_ceil(2), 2, Access::Read)?;
        }
        for i in (hole.0..hole.0 + hole.1).step_by(2) {
            vm.mem.read_u32_at(i * PAGE_SIZE)?;
        }
        Ok(())
    })?;
    t.diag(&format!(
        "memslots {a:?} + {b:?}, hole {hole:?}, VMA split at 5.06 MiB: {}",
        p.describe()
    ));
    p.check_fractions()?;
    check_batched(&p, pages as u64)
}

/// A VM that once ran a nested guest keeps shadow pages, and with them
/// rmaps, for its lifetime. Only gfns that shadow pages map need mmu_lock to
/// be aged; the TDP MMU's part must still be answered fast, so at most the
/// few pages L2 used may fail. Reports the pass time of such a VM with 0x8
/// on and off (6.12's path), side by side.
fn nested_vm_ages_fast(t: &Ktap, o: &Opts, cg: &Memcg) -> Result<()> {
    match features::module_param("kvm_amd", "nested") {
        Some(v) if features::param_is_true(&v) => {}
        v => bail!("kvm_amd.nested is {v:?}; the test kernel runs nested SVM guests"),
    }
    let mut vm = TouchVm::new_with_svm(64 << 20, 1, Backing::Anon4k)?;
    let pages = vm.mem.pages();
    vm.touch_all(0, pages, Access::Write(0x6e65_7374))?;
    let misses = vm.debugfs_stat("mmu_cache_miss")?;
    vm.run_nested_once(0, 0x4c32_4f4b)?;
    // Shadow pages are counted as misses of the shadow page cache.
    let shadow = vm.debugfs_stat("mmu_cache_miss")? - misses;
    if shadow == 0 {
        bail!("the nested run built no shadow pages (mmu_cache_miss unchanged)");
    }
    let on = measure(&mut vm, cg, ALL_CAPS, 2, 1)?;
    let off = measure(&mut vm, cg, NO_SECONDARY, 2, 1)?;
    t.diag(&format!(
        "nested VM ({shadow} shadow pages): 0x8 on: {}",
        on.describe()
    ));
    t.diag(&format!("nested VM: 0x8 off: {}", off.describe()));
    let [a, b] = pass_times(o, &mut vm, cg)?;
    if let (Some(sa), Some(sb)) = (Stats::of(&a), Stats::of(&b)) {
        t.diag(&format!(
            "nested VM pass time (n={}): 0x8 on {:.1} ± {:.1} ms, off {:.1} ± {:.1} ms, \
             on/off {}",
            sa.n,
            ms(sa.mean),
            ms(sa.stddev),
            ms(sb.mean),
            ms(sb.stddev),
            Ratio::of(&sa, &sb).map_or("n/a".into(), |r| r.describe())
        ));
    }
    on.check_fractions()?;
    check_off(&off, true)?;
    let (q, s, e) = (on.counter('q')?, on.counter('s')?, on.counter('e')?);
    if e > NESTED_RESERVED_PAGES as u64 {
        bail!(
            "{e} of {q} pages asked fast-only failed; shadow pages map at most the \
             {NESTED_RESERVED_PAGES} pages the nested guest used"
        );
    }
    if (s as f64) < MIN_TOUCHED * on.touched as f64 {
        bail!(
            "only {s} fast-only young answers for {} touched pages",
            on.touched
        );
    }
    Ok(())
}

/// A VM whose nested guest maps most of its memory: L2 read every page of
/// its 64 MiB once, so the shadow MMU maps all of it (rmaps) next to the TDP
/// MMU. Then L2 alone reads every other page: that accessed state is in the
/// shadow SPTEs only, so a pass must consult the rmaps to promote those
/// pages. With 0x8 the fast-only op must answer for the whole batch, the
/// shadow part under one `mmu_lock` trylock per batch, instead of failing
/// every shadow-mapped page onto the per-page `clear_young()` fallback: at
/// most one batch may fail (a trylock that lost to a concurrent writer), and
/// the young answers must come from the fast op. With 0x8 clear the same
/// pages are promoted through 6.12's path.
fn nested_heavy_vm_ages_fast(t: &Ktap, cg: &Memcg) -> Result<()> {
    /// A trylock that fails fails one batch (a PTE table's pages).
    const ONE_BATCH: u64 = 512;
    let mut vm = TouchVm::new_with_svm(64 << 20, 1, Backing::Anon4k)?;
    let pages = vm.mem.pages();
    vm.touch_all(0, pages, Access::Write(0x6865_6176))?;
    let before = vm.debugfs_stat("pages_4k")?;
    vm.run_nested_read(0, 0, pages, 1)?;
    let shadow = vm.debugfs_stat("pages_4k")?.saturating_sub(before);
    t.diag(&format!(
        "nested guest mapped {shadow} of {pages} pages through shadow SPTEs"
    ));
    if shadow < pages as u64 / 2 {
        bail!("the nested guest maps {shadow} of {pages} pages, want at least half");
    }
    let count = pages / 2;
    let mut pass = |mask: u32| -> Result<Pass> {
        features::set_lru_gen_caps(mask)?;
        aging::measured_pass(cg, count as u64, (pages - count) as u64, || {
            vm.run_nested_read(0, 0, count, 2)
        })
    };
    let on = pass(ALL_CAPS)?;
    let off = pass(NO_SECONDARY)?;
    t.diag(&format!("nested-heavy VM: 0x8 on: {}", on.describe()));
    t.diag(&format!("nested-heavy VM: 0x8 off: {}", off.describe()));
    on.check_fractions()?;
    check_off(&off, true)?;
    let (q, s, e) = (on.counter('q')?, on.counter('s')?, on.counter('e')?);
    if q < pages as u64 {
        bail!("{q} pages asked fast-only for {pages} mapped guest pages");
    }
    if e > ONE_BATCH {
        bail!(
            "{e} of {q} pages asked fast-only failed: the shadow-mapped pages went to the \
             per-page locked fallback (at most one batch, {ONE_BATCH}, may fail)"
        );
    }
    if (s as f64) < MIN_TOUCHED * on.touched as f64 {
        bail!(
            "only {s} fast-only young answers for {} pages the nested guest read",
            on.touched
        );
    }
    Ok(())
}

/// Mean aging pass time per 0x8 state, passes interleaved (on, off, on, ...)
/// so that drift hits both alike. Before each pass the guest touches its
/// subset, so every pass has the same work.
fn pass_times(o: &Opts, vm: &mut TouchVm, cg: &Memcg) -> Result<[Vec<Duration>; 2]> {
    let pages = vm.mem.pages();
    let stride = o.stride();
    let count = pages.div_ceil(stride);
    let mut times = [Vec::new(), Vec::new()];
    for _ in 0..o.passes {
        for (k, mask) in [ALL_CAPS, NO_SECONDARY].into_iter().enumerate() {
            features::set_lru_gen_caps(mask)?;
            let p = aging::measured_pass(cg, count as u64, (pages - count) as u64, || {
                vm.touch(0, 0, count, stride, Access::Read)
            })?;
            p.check_fractions().with_context(|| {
                format!("timed pass {} with caps 0x{mask:04x}", times[k].len() + 1)
            })?;
            times[k].push(p.time);
        }
    }
    Ok(times)
}

/// vCPUs used for the overhead measurement: all of them, but leave one
/// CPU of the test VM to the aging thread, so that what is measured is
/// interference through KVM, not competition for a CPU.
fn overhead_vcpus(o: &Opts) -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    (o.vcpus as usize).min(cpus.saturating_sub(1)).max(1)
}

/// Guest time per round to re-fault a quarter of its memory (discarded on
/// the host first, so vCPUs take TDP MMU faults) and touch all of it, with
/// aging passes looping on another thread under `mask` (None: no aging).
/// Returns (mean round time, aging passes completed).
fn vcpu_rounds(
    o: &Opts,
    vm: &mut TouchVm,
    cg: &Memcg,
    mask: Option<u32>,
) -> Result<(Duration, u64)> {
    if let Some(m) = mask {
        features::set_lru_gen_caps(m)?;
    }
    let nv = overhead_vcpus(o);
    let pages = vm.mem.pages();
    let stop = AtomicBool::new(false);
    let passes = AtomicU64::new(0);
    std::thread::scope(|s| {
        let ager = mask.map(|_| {
            s.spawn(|| -> Result<()> {
                while !stop.load(Ordering::Relaxed) {
                    age_once(cg)?;
                    passes.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            })
        });
        let rounds = (|| -> Result<Vec<Duration>> {
            let mut v = Vec::new();
            for r in 0..o.iterations as usize {
                let q = pages / 4;
                vm.mem.discard((r % 4) * q, q)?;
                let value = ROUND_SEED.wrapping_add(r as u32);
                let (res, t) = timed(|| vm.touch_with(nv, 0, pages, Access::Write(value)));
                res?;
                v.push(t);
                // Every page, re-faulted or not, holds what the guest just
                // wrote: aging lost no write and left no stale mapping.
                if let Some(i) = (0..pages).find(|&i| vm.mem.read_page_u32(i) != value) {
                    bail!(
                        "round {r}: page {i} holds {:#x}, the guest wrote {value:#x}",
                        vm.mem.read_page_u32(i)
                    );
                }
            }
            Ok(v)
        })();
        stop.store(true, Ordering::Relaxed);
        if let Some(a) = ager {
            a.join()
                .map_err(|_| anyhow::anyhow!("aging thread panicked"))??;
        }
        let rounds = rounds?;
        let mean = Stats::of(&rounds).context("no rounds")?.mean;
        Ok((mean, passes.load(Ordering::Relaxed)))
    })
}

/// What the re-fault rounds write (plus the round number): not a value any
/// other step writes.
const ROUND_SEED: u32 = 0x726f_0000;

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
    // Pages asked and failed fast-only over all passes: memslot deletion
    // invalidates the VM's roots, and zapping them freezes their SPTEs, but
    // aging walks valid roots only, so nothing fails while that happens.
    let (asked, failed) = (AtomicU64::new(0), AtomicU64::new(0));
    std::thread::scope(|s| {
        let ager = s.spawn(|| -> Result<()> {
            while !stop.load(Ordering::Relaxed) {
                let (seq, _) = age_once(cg)?;
                passes.fetch_add(1, Ordering::Relaxed);
                let node = lru_gen::node_full_of(&cg.path(), aging::NID)?;
                if let Some(w) = node.gen(seq).and_then(|g| g.walk.as_ref()) {
                    asked.fetch_add(w.get('q').unwrap_or(0), Ordering::Relaxed);
                    failed.fetch_add(w.get('e').unwrap_or(0), Ordering::Relaxed);
                }
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
    })?;
    let n = passes.load(Ordering::Relaxed);
    let (q, e) = (
        asked.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
    );
    t.diag(&format!(
        "{ROUNDS} rounds raced {n} aging passes: {q} pages asked fast-only, {e} failed"
    ));
    if n < u64::from(ROUNDS) {
        bail!("only {n} aging passes ran concurrently");
    }
    if q == 0 {
        bail!("no page was asked fast-only during the races");
    }
    // A cmpxchg that loses three times in a row to vCPU faults fails its
    // page; a whole frozen root (up to 512 pages per table) must not.
    if e * 100 > q {
        bail!("{e} of {q} pages asked fast-only failed while roots were invalidated");
    }
    watch.expect_clean()?;
    Ok(())
}

fn pass_json(p: &Pass) -> Value {
    json!({
        "touched_pages": p.touched,
        "untouched_pages": p.untouched,
        "promoted_pages": p.promoted,
        "touched_promoted_fraction": p.touched_fraction(),
        "untouched_promoted_fraction_max": p.untouched_fraction(),
        "pass_ms": ms(p.time),
        "walk_stats": p.walk.counters.iter().map(|(c, v)| (c.to_string(), json!(v)))
            .collect::<serde_json::Map<_, _>>(),
    })
}

fn stats_json(s: &Stats) -> Value {
    json!({"n": s.n, "mean_ms": ms(s.mean), "median_ms": ms(s.median),
           "min_ms": ms(s.min), "max_ms": ms(s.max)})
}

/// Everything measured, for the table and the JSON file.
#[derive(Default)]
struct Results {
    on: Option<Pass>,
    off: Option<Pass>,
    pass_on: Option<Stats>,
    pass_off: Option<Stats>,
    vcpu_none: Option<Duration>,
    vcpu_on: Option<(Duration, u64)>,
    vcpu_off: Option<(Duration, u64)>,
}

fn pct(x: f64) -> String {
    format!("{:.1} %", 100.0 * x)
}

fn table(o: &Opts, r: &Results) -> Vec<String> {
    let mut rows = vec![
        format!(
            "summary: {} vCPU(s) ({} in the overhead rounds), {} MiB {:?} guest memory, \
             {:.0} % touched, {} passes, {} rounds",
            o.vcpus,
            overhead_vcpus(o),
            o.total() >> 20,
            o.backing,
            100.0 / stride_for(o.touch_fraction) as f64,
            o.passes,
            o.iterations
        ),
        format!(
            "{:<36} {:>12} {:>12} {:>8}",
            "", "0x8 on", "0x8 off", "on/off"
        ),
    ];
    let row = |name: &str, on: String, off: String, ratio: String| {
        format!("{name:<36} {on:>12} {off:>12} {ratio:>8}")
    };
    if let (Some(a), Some(b)) = (&r.on, &r.off) {
        rows.push(row(
            "touched pages promoted",
            pct(a.touched_fraction()),
            pct(b.touched_fraction()),
            String::new(),
        ));
        rows.push(row(
            "untouched pages promoted (max)",
            pct(a.untouched_fraction()),
            pct(b.untouched_fraction()),
            String::new(),
        ));
        let c = |p: &Pass, l| p.counter(l).map_or("-".into(), |v| v.to_string());
        rows.push(row(
            "fast-only calls c / pages q / young s",
            format!("{} / {} / {}", c(a, 'c'), c(a, 'q'), c(a, 's')),
            format!("{} / {} / {}", c(b, 'c'), c(b, 'q'), c(b, 's')),
            String::new(),
        ));
    }
    if let (Some(a), Some(b)) = (&r.pass_on, &r.pass_off) {
        rows.push(row(
            "aging pass, mean (ms)",
            format!("{:.1}", ms(a.mean)),
            format!("{:.1}", ms(b.mean)),
            format!("{:.2}x", ms(a.mean) / ms(b.mean)),
        ));
        rows.push(row(
            "aging passes per second",
            format!("{:.2}", 1e3 / ms(a.mean)),
            format!("{:.2}", 1e3 / ms(b.mean)),
            String::new(),
        ));
    }
    if let (Some(none), Some((on, pon)), Some((off, poff))) = (r.vcpu_none, r.vcpu_on, r.vcpu_off) {
        rows.push(row(
            "guest round, aging looping (ms)",
            format!("{:.1}", ms(on)),
            format!("{:.1}", ms(off)),
            format!("{:.2}x", ms(on) / ms(off)),
        ));
        let label = format!("  vs. no aging ({:.1} ms)", ms(none));
        rows.push(row(
            &label,
            format!("{:.2}x", ms(on) / ms(none)),
            format!("{:.2}x", ms(off) / ms(none)),
            String::new(),
        ));
        rows.push(row(
            "  aging passes during the rounds",
            pon.to_string(),
            poff.to_string(),
            String::new(),
        ));
    }
    rows
}

/// One paragraph in plain words.
fn reading(r: &Results) -> String {
    // 6.12's KVM takes mmu_lock for write in clear_young(); 7.x's x86 KVM
    // ages without it (upstream's lockless aging since 6.15).
    let locked = features::kernel_release()
        .and_then(|rel| features::release_major(&rel))
        .map(|m| m < 7)
        .unwrap_or(true);
    let mut s = String::new();
    if let (Some(a), Some(b)) = (&r.on, &r.off) {
        s += &format!(
            "Aging found {} of the pages the guest used with 0x8 and {} without it, and \
             wrongly kept at most {} of the unused ones",
            pct(a.touched_fraction()),
            pct(b.touched_fraction()),
            pct(a.untouched_fraction().max(b.untouched_fraction()))
        );
        s += if (a.touched_fraction() - b.touched_fraction()).abs() < 0.05 {
            if locked {
                ": the fast-only path is as accurate as 6.12's locked clear_young(), which \
                 already asks KVM during aging. "
            } else {
                ": the batched fast-only path is as accurate as the base kernel's per-folio \
                 lockless clear_young(), which already asks KVM during aging. "
            }
        } else {
            ": the two paths disagree, which deserves a look (see the walk stats). "
        };
    }
    if let (Some(a), Some(b)) = (&r.pass_on, &r.pass_off) {
        s += &format!(
            "An aging pass took {:.1} ms with 0x8 and {:.1} ms without ({:.2}x); ",
            ms(a.mean),
            ms(b.mean),
            ms(a.mean) / ms(b.mean)
        );
    }
    if let (Some(none), Some((on, _)), Some((off, _))) = (r.vcpu_none, r.vcpu_on, r.vcpu_off) {
        let (ron, roff) = (ms(on) / ms(none), ms(off) / ms(none));
        s += &format!(
            "while aging looped, the guest needed {ron:.2}x its undisturbed time per round \
             with 0x8 and {roff:.2}x without. "
        );
        s += if roff > ron * 1.1 {
            if locked {
                "Without 0x8 every aged page takes KVM's mmu_lock for write, which the \
                 guest's page faults must wait for; with 0x8 aging takes no KVM lock. "
            } else {
                "Without 0x8 KVM is asked once per folio, i.e. per 4 KiB page for small \
                 folios (lockless, but each call walks KVM's page tables from the top); \
                 with 0x8 once per PTE table, so aging costs the guest's CPUs less. "
            }
        } else if ron > roff * 1.1 {
            "Here the fast-only path disturbed the guest more, which neither the lock nor \
             the batch predicts: treat the vCPU numbers of this run with suspicion (noise, \
             CPU contention). "
        } else {
            "The two are within 10 % of each other: in this run the guest's slowdown comes \
             from aging itself (CPU time, memory traffic), not from how KVM is asked. "
        };
    }
    s += "Times come from a QEMU/TCG guest running nested KVM: compare the columns, not the \
          absolute values.";
    s
}

fn write_json(o: &Opts, r: &Results, path: &PathBuf) -> Result<()> {
    let v = json!({
        "test": "lru_gen_aging_test",
        "kernel": features::kernel_release().unwrap_or_default(),
        "options": {
            "vcpus": o.vcpus, "bytes_per_vcpu": o.bytes_per_vcpu,
            "backing": format!("{:?}", o.backing).to_lowercase(),
            "touch_fraction": 1.0 / stride_for(o.touch_fraction) as f64,
            "passes": o.passes, "iterations": o.iterations, "perf": o.perf,
        },
        "accuracy": {
            "on": r.on.as_ref().map(pass_json),
            "off": r.off.as_ref().map(pass_json),
        },
        "aging_pass": {
            "on": r.pass_on.as_ref().map(stats_json),
            "off": r.pass_off.as_ref().map(stats_json),
        },
        "vcpu_round_ms": {
            "no_aging": r.vcpu_none.map(ms),
            "on": r.vcpu_on.map(|(d, _)| ms(d)),
            "off": r.vcpu_off.map(|(d, _)| ms(d)),
            "aging_passes_on": r.vcpu_on.map(|(_, n)| n),
            "aging_passes_off": r.vcpu_off.map(|(_, n)| n),
        },
        "reading": reading(r),
    });
    std::fs::write(path, serde_json::to_string_pretty(&v)? + "\n")
        .with_context(|| format!("writing {}", path.display()))
}

/// Where fast-only aging is not guaranteed (no KVM, not the TDP MMU, no
/// memcg aging): skips with the reason, before the plan, or fails on the
/// project's test VM, whose kernels have all of it.
fn environment() {
    if !features::exists("/dev/kvm") {
        Ktap::lacks("no /dev/kvm");
    }
    match features::module_param("kvm", "tdp_mmu") {
        Some(v) if features::param_is_true(&v) => {}
        Some(v) => Ktap::lacks(&format!(
            "kvm.tdp_mmu is {v}: fast-only aging is only guaranteed with the TDP MMU"
        )),
        None => Ktap::lacks("kvm.tdp_mmu unknown (not x86 KVM): fast-only aging not guaranteed"),
    }
    if let Some(why) = features::memcg_aging_missing() {
        Ktap::lacks(&why);
    }
}

/// `Ok(None)` on the series' kernel (`y` sets 0x8), `Ok(Some(reason))` on
/// a kernel without the series (`make check-base`): only the 0x8-clear
/// cases run there; an error if a series kernel lacks it.
fn gate() -> Result<Option<String>> {
    features::write_lru_gen_enabled("y")?;
    let c = features::lru_gen_caps()?;
    features::series_feature(c & caps::SECONDARY_MMU_WALK != 0, "lru_gen capability 0x8")
        .with_context(|| format!("\"y\" gave caps 0x{c:04x}"))
}

fn main() {
    let o = Opts::parse();
    if o.vm_child {
        if let Err(e) = vm_child() {
            eprintln!("vm child: {e:#}");
            std::process::exit(1);
        }
    }
    o.validate();
    environment();

    // Accuracy is a test point unless only measured (--perf, --warn-only):
    // then it is a diagnostic, never an "ok" that could not fail.
    let assert_accuracy = !(o.perf || o.warn_only);
    let planned = if o.perf { 3 } else { 8 } + if assert_accuracy { 2 } else { 0 };
    let mut t = Ktap::new(planned);
    let (guard, cg) = match aging::enter_sandbox(MEMCG) {
        Ok(v) => v,
        Err(e) => Ktap::bail_out(&format!("setting up the memcg sandbox: {e:#}")),
    };
    let watch = sys::DmesgWatch::start().ok();
    // On a kernel without the series, only what 6.12 has runs.
    let base = match gate() {
        Ok(None) => {
            t.ok("lru_gen_y_sets_secondary_mmu_walk");
            None
        }
        Ok(Some(why)) => {
            t.skip("lru_gen_y_sets_secondary_mmu_walk", &why);
            Some(why)
        }
        Err(e) => {
            t.fail("lru_gen_y_sets_secondary_mmu_walk", &format!("{e:#}"));
            None
        }
    };
    let series = base.is_none();

    let mut r = Results::default();
    let accuracy_name = |on: bool| {
        format!(
            "accuracy_{}_{}",
            if o.backing == BackingOpt::Thp {
                "thp"
            } else {
                "4k"
            },
            if on { "0x8_on" } else { "0x8_off_is_base" }
        )
    };
    match faulted_vm(o.total(), o.vcpus as usize, o.backing.into()) {
        Ok(mut vm) => {
            let pages = vm.mem.pages() as u64;
            let on = if series {
                measure(&mut vm, &cg, ALL_CAPS, o.stride(), o.unit())
            } else {
                Err(anyhow::anyhow!("no 0x8"))
            };
            let off = measure(&mut vm, &cg, NO_SECONDARY, o.stride(), o.unit());
            for (flag, res) in [(true, &on), (false, &off)] {
                let name = accuracy_name(flag);
                if flag && !series {
                    if assert_accuracy {
                        t.skip(&name, base.as_deref().unwrap_or_default());
                    }
                    continue;
                }
                let verdict = res
                    .as_ref()
                    .map_err(|e| anyhow::anyhow!("{e:#}"))
                    .and_then(|p| {
                        t.diag(&format!("{name}: {}", p.describe()));
                        if flag {
                            check_on(p, pages)
                        } else {
                            check_off(p, series)
                        }
                    });
                if assert_accuracy {
                    t.check(&name, verdict);
                } else if let Err(e) = verdict {
                    t.diag(&format!("WARNING: {name} (not asserted): {e:#}"));
                }
            }
            r.on = on.ok();
            r.off = off.ok();
            if let Some(why) = &base {
                // Both measure 0x8 set against clear.
                t.skip("timed_passes_accurate_0x8_on_and_off", why);
                t.skip("guest_writes_intact_with_aging_looping", why);
            }
            if series {
                let cost = pass_times(&o, &mut vm, &cg).map(|[a, b]| {
                    r.pass_on = Stats::of(&a);
                    r.pass_off = Stats::of(&b);
                });
                t.check("timed_passes_accurate_0x8_on_and_off", cost);
                let overhead = (|| -> Result<()> {
                    let none = vcpu_rounds(&o, &mut vm, &cg, None)?;
                    r.vcpu_none = Some(none.0);
                    r.vcpu_on = Some(vcpu_rounds(&o, &mut vm, &cg, Some(ALL_CAPS))?);
                    r.vcpu_off = Some(vcpu_rounds(&o, &mut vm, &cg, Some(NO_SECONDARY))?);
                    Ok(())
                })();
                t.check("guest_writes_intact_with_aging_looping", overhead);
            }
        }
        Err(e) => {
            let why = format!("{e:#}");
            if assert_accuracy {
                for name in [accuracy_name(true), accuracy_name(false)] {
                    t.fail(&name, &why);
                }
            }
            t.fail("timed_passes_accurate_0x8_on_and_off", &why);
            t.fail("guest_writes_intact_with_aging_looping", &why);
        }
    }
    for line in table(&o, &r) {
        t.diag(&line);
    }
    t.diag(&format!("reading: {}", reading(&r)));
    if let Some(path) = &o.json {
        if let Err(e) = write_json(&o, &r, path) {
            t.diag(&format!("WARNING: {e:#}"));
        } else {
            t.diag(&format!("results written to {}", path.display()));
        }
    }

    if let (false, Some(why)) = (o.perf, &base) {
        for name in [
            "accuracy_thp_0x8_on",
            "batch_spans_memslots_holes_and_vmas",
            "nested_guest_vm_still_ages_fast",
            "nested_heavy_vm_ages_shadow_pages_fast",
            "aging_races_faults_memslots_teardown",
        ] {
            t.skip(name, why);
        }
    } else if !o.perf {
        t.check("accuracy_thp_0x8_on", thp_accuracy(&t, &cg));
        t.check("batch_spans_memslots_holes_and_vmas", batch_edges(&t, &cg));
        t.check(
            "nested_guest_vm_still_ages_fast",
            nested_vm_ages_fast(&t, &o, &cg),
        );
        t.check(
            "nested_heavy_vm_ages_shadow_pages_fast",
            nested_heavy_vm_ages_fast(&t, &cg),
        );
        let mut race = races(&t, &cg);
        if let (Ok(()), Some(w)) = (&race, &watch) {
            race = w.expect_clean();
        }
        t.check("aging_races_faults_memslots_teardown", race);
    }
    // finish() exits: leave the memcg and restore the caps first.
    drop(cg);
    drop(guard);
    t.finish();
}
