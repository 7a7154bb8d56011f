// SPDX-License-Identifier: GPL-2.0
//! lru_mirror_test: page aging of memory accessed only through a secondary
//! MMU, using the project's software secondary MMU (`rust/lru_mirror.rs`,
//! a Rust module on the Rust mmu_notifier abstraction) instead of KVM.
//!
//! In its own memcg, the test faults in 64 MiB of anonymous 4 KiB pages,
//! mirrors them in the device, puts them all on the LRU lists (the last pages
//! faulted in wait in per-CPU LRU batches, which aging on 7.x skips), makes
//! them old, accesses every other page only through the device (`ACCESS`
//! ioctl: the device's accessed bits, never the host PTE's) and forces an
//! aging pass. It checks promotion with 0x8 on and off (the base kernel's
//! own path), with the fast-only op failing, and with the op absent (NULL);
//! that an answer that is both "young" and "failed" (two subscribers, one
//! failing; a THP range answered only in part) keeps the page young;
//! that invalidations make the device forget pages; that reclaim keeps the
//! device-accessed pages when the fast-only op fails (needs swap: the test
//! puts swap on `/dev/ram0`); that bad ioctls are rejected and change
//! nothing, one at a time and from many threads at once while a mirror is
//! live; that the file's other ioctls answer while a long `MIRROR` faults
//! in; that closing, exiting and `rmmod` while mirrored are clean; and that
//! a module whose init registers a notifier and leaks it, registers a misc
//! device that the loading process tries to open, and fails
//! (`rust/mmu_notifier_init_leak.rs`) is refused both the registration and
//! the open files, so the process that loaded it exits cleanly.
//!
//! `--mirror-exit`, `--mirror-fork-race`, `--mirror-hold` and `--init-leak`
//! run child processes for the last four.

use clap::{CommandFactory, Parser};
use mglru_selftest::aging::{self, Pass};
use mglru_selftest::features::{self, caps};
use mglru_selftest::kvm::{Backing, HostMem, PAGE_SIZE};
use mglru_selftest::lru_mirror::{self, Mirror, Stats};
use mglru_selftest::memcg::Memcg;
use mglru_selftest::pagemap::{self, PageState};
use mglru_selftest::{bail, ktap::Ktap, module, sys, Context, Result};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const MEMCG: &str = "lru-mirror";
const MEM: usize = 64 << 20;
const ALL_CAPS: u32 = caps::CORE | caps::MM_WALK | caps::NONLEAF_YOUNG | caps::SECONDARY_MMU_WALK;
const NO_SECONDARY: u32 = ALL_CAPS & !caps::SECONDARY_MMU_WALK;
const SWAP_DEV: &str = "/dev/ram0";
/// Most threads the concurrent bad-ioctl case runs.
const MAX_THREADS: u32 = 64;

/// The software secondary MMU `lru_mirror`: aging promotes pages accessed
/// only through it, with 0x8 on and off and its fast-only op failing; bad
/// ioctls, one at a time and from many threads at once, are rejected and
/// change nothing. Exit status: 0 pass, 1 fail, 4 skip, 2 usage error.
#[derive(Parser, Debug)]
#[command(name = "lru_mirror_test", version, about, long_about = None)]
#[command(group(clap::ArgGroup::new("child").multiple(false)))]
struct Opts {
    /// Threads sharing one mirrored file in the concurrent bad-ioctl case.
    #[arg(short = 't', long, default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(2..=64))]
    threads: u32,
    /// Threads with a file of their own (mirroring, unmirroring) beside them.
    #[arg(short = 'o', long = "own-fd-threads", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(0..=64))]
    own_fd_threads: u32,
    /// Seconds the concurrent bad-ioctl case runs.
    #[arg(short = 'd', long = "duration", default_value_t = 3,
          value_parser = clap::value_parser!(u64).range(1..=600))]
    secs: u64,
    /// Internal: child that exits while mirrored.
    #[arg(long = "mirror-exit", hide = true, group = "child")]
    mirror_exit: bool,
    /// Internal: child whose exit races a forked grandchild's close.
    #[arg(long = "mirror-fork-race", hide = true, group = "child")]
    mirror_fork_race: bool,
    /// Internal: child that mirrors and waits for stdin to close.
    #[arg(long = "mirror-hold", hide = true, group = "child")]
    mirror_hold: bool,
    /// Internal: child that loads the init-leak module, opening its device
    /// meanwhile, then exits.
    #[arg(long = "init-leak", hide = true, group = "child")]
    init_leak: bool,
}

impl Opts {
    /// Cross-option checks clap cannot do; exits 2 like clap does.
    fn validate(&self) {
        if self.threads + self.own_fd_threads > MAX_THREADS {
            Opts::command()
                .error(
                    clap::error::ErrorKind::ValueValidation,
                    format!(
                        "--threads {} plus --own-fd-threads {} is more than {MAX_THREADS} threads",
                        self.threads, self.own_fd_threads
                    ),
                )
                .exit();
        }
    }
}

/// Faulted-in memory mirrored by an open device.
struct Setup {
    mem: HostMem,
    dev: Mirror,
}

impl Setup {
    fn new(flags: u64) -> Result<Self> {
        let mut mem = HostMem::new(MEM, Backing::Anon4k)?;
        mem.fill(0x6d69_7272);
        let dev = Mirror::open()?;
        // MIRROR gives up with EAGAIN when invalidations (compaction, khugepaged) keep racing
        // with it; that is its contract, so try again a few times.
        let mut tries = 0;
        loop {
            match dev.mirror(mem.as_ptr() as usize, mem.len(), flags) {
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) && tries < 5 => tries += 1,
                r => break r.context("LRU_MIRROR MIRROR")?,
            }
        }
        // The last pages faulted in wait in per-CPU LRU batches, off the LRU
        // lists. Since 7.x the aging walk skips such folios (get_pfn_folio():
        // folio_lru_gen() < 0), asking neither their PTEs nor a secondary MMU
        // about them; 6.12 asked. The cases' counts are exact only with all of
        // them on the lists (`expect_on_lru()` checks it before measuring).
        sys::drain_lru_batches()?;
        Ok(Self { mem, dev })
    }

    fn addr(&self, page: usize) -> usize {
        self.mem.as_ptr() as usize + page * PAGE_SIZE
    }

    fn pages(&self) -> usize {
        self.mem.pages()
    }

    /// Accesses every other page (the even ones) through the device.
    fn access_even(&self) -> Result<u64> {
        let mut n = 0;
        for i in (0..self.pages()).step_by(2) {
            n += self.dev.access(self.addr(i), PAGE_SIZE)?;
        }
        Ok(n)
    }

    /// Fails unless every mirrored page is on an LRU list, where an aging
    /// pass looks at it.
    fn expect_on_lru(&self) -> Result<()> {
        expect_on_lru(self.addr(0), self.pages())
    }

    /// Measures an aging pass after the device accessed the even pages.
    fn measure(&self, cg: &Memcg, mask: u32) -> Result<(Pass, Stats)> {
        features::set_lru_gen_caps(mask)?;
        // Checked before the passes that make the pages old: the heap the
        // check touches is old by the measured pass, and nothing before it
        // takes a mirrored page off its LRU list.
        self.expect_on_lru()?;
        let half = (self.pages() / 2) as u64;
        let mut before = Stats::default();
        let pass = aging::measured_pass(cg, half, half, || {
            before = self.dev.stats()?;
            let n = self.access_even()?;
            if n != half {
                bail!("device accessed {n} of {half} pages");
            }
            Ok(())
        })?;
        Ok((pass, self.dev.stats()?.since(&before)))
    }
}

/// Fails unless each of the `pages` pages at `addr` is on an LRU list: the
/// precondition of the exact counts (see [`Setup::new`]).
fn expect_on_lru(addr: usize, pages: usize) -> Result<()> {
    let off = pagemap::off_lru(addr, pages)?;
    if !off.is_empty() {
        bail!(
            "{} of {pages} mirrored pages are not on an LRU list before aging \
             (aging skips them), first at page {}",
            off.len(),
            off[0]
        );
    }
    Ok(())
}

fn module_loads() -> Result<()> {
    if module::is_loaded(lru_mirror::MODULE) {
        module::unload(lru_mirror::MODULE)?;
    }
    module::load(&module::project_module(lru_mirror::MODULE), "")?;
    let md = std::fs::metadata(lru_mirror::DEV).context("device node")?;
    if md.mode() & 0o7777 != 0o600 {
        bail!(
            "{} has mode {:o}, expected 600",
            lru_mirror::DEV,
            md.mode() & 0o7777
        );
    }
    Ok(())
}

fn with_secondary_walk(t: &Ktap, cg: &Memcg) -> Result<()> {
    let s = Setup::new(0)?;
    let (p, st) = s.measure(cg, ALL_CAPS)?;
    t.diag(&format!("0x{ALL_CAPS:04x}: {} device {st:?}", p.describe()));
    p.check_fractions()?;
    let pages = s.pages() as u64;
    if st.fast_pages < pages || st.fast_young != pages / 2 || st.fast_failed != 0 {
        bail!("device counters disagree: {st:?} for {pages} mirrored pages");
    }
    // One call per PTE table: 512 pages on x86, fewer in the process's
    // sparse tables; one call per page would give 1.
    if st.fast_calls * 32 > st.fast_pages {
        bail!("fast-only calls are not batched: {st:?}");
    }
    if p.counter('s')? != pages / 2
        || p.counter('e')? != 0
        || p.counter('c')? != st.fast_calls
        || p.counter('q')? != st.fast_pages
    {
        bail!(
            "walk stats disagree with the device {st:?}: {}",
            p.describe()
        );
    }
    Ok(())
}

fn without_secondary_walk(t: &Ktap, cg: &Memcg) -> Result<()> {
    let s = Setup::new(0)?;
    let (p, st) = s.measure(cg, NO_SECONDARY)?;
    t.diag(&format!(
        "0x{NO_SECONDARY:04x}: {} device {st:?}",
        p.describe()
    ));
    // The base kernel asks secondary MMUs through clear_young() during aging:
    // 6.12 per page, 7.3 per run of PTEs mapping one folio (4 KiB folios
    // here, so per page too).
    p.check_fractions()?;
    if st.fast_calls != 0 || st.slow_young != s.pages() as u64 / 2 {
        bail!("with 0x8 clear the fast-only op ran or clear_young() missed pages: {st:?}");
    }
    p.expect_counter('c', 0)?;
    Ok(())
}

fn fast_failing(t: &Ktap, cg: &Memcg) -> Result<()> {
    let s = Setup::new(0)?;
    s.dev.config(lru_mirror::CONFIG_FAIL_FAST)?;
    let (p, st) = s.measure(cg, ALL_CAPS)?;
    t.diag(&format!(
        "0x{ALL_CAPS:04x} + FAIL_FAST: {} device {st:?}",
        p.describe()
    ));
    // Every failed entry takes the base kernel's path: clear_young() finds
    // the pages.
    p.check_fractions()?;
    if st.fast_pages == 0 || st.fast_failed != st.fast_pages || st.fast_young != 0 {
        bail!("fast-only op did not fail as configured: {st:?}");
    }
    if st.slow_young != s.pages() as u64 / 2 {
        bail!(
            "clear_young() fallback saw {} young pages: {st:?}",
            st.slow_young
        );
    }
    if p.counter('e')? != p.counter('q')? {
        bail!("walk stats do not count the failures: {}", p.describe());
    }
    Ok(())
}

/// Two fast subscribers on one mm: device A accessed the pages, device B
/// (the same range, a second open file) fails every fast-only query. Each
/// answer is then "young" (A, whose accessed state is now cleared) and
/// "failed" (B): the walk must count the page young, not conclude from the
/// slow fallback alone, which can no longer see what A cleared.
fn young_and_failed_from_two_subscribers(t: &Ktap, cg: &Memcg) -> Result<()> {
    let s = Setup::new(0)?;
    let other = Mirror::open()?;
    other
        .mirror(s.addr(0), s.mem.len(), 0)
        .context("second MIRROR of the same range")?;
    other.config(lru_mirror::CONFIG_FAIL_FAST)?;
    let before_b = other.stats()?;
    let (p, st) = s.measure(cg, ALL_CAPS)?;
    let sb = other.stats()?.since(&before_b);
    t.diag(&format!(
        "A young + B failing: {} device A {st:?} device B {sb:?}",
        p.describe()
    ));
    let half = s.pages() as u64 / 2;
    if st.fast_young != half || sb.fast_failed == 0 || sb.fast_young != 0 {
        bail!("devices did not answer as set up: A {st:?}, B {sb:?}");
    }
    if p.counter('s')? != half || p.counter('e')? != p.counter('q')? {
        bail!(
            "walk stats should count {half} young and every asked page failed: {}",
            p.describe()
        );
    }
    p.check_fractions()
}

/// A THP whose fast-only batch is answered for its first pages only: the
/// device clears the accessed state it finds there, then fails the rest of
/// the batch (`FAIL_AFTER`), as a secondary MMU does when part of a 2 MiB
/// range is mapped by a structure that needs its lock. The THPs the device accessed (in their first
/// pages) must still be promoted.
fn young_and_failed_mid_range(t: &Ktap, cg: &Memcg) -> Result<()> {
    const HUGE: usize = 2 << 20;
    const HUGE_PAGES: usize = HUGE / PAGE_SIZE;
    let mut mem = HostMem::new(MEM, Backing::Thp)?;
    mem.fill(0x7468_7021);
    sys::expect_thp_backed(MEM, "mirrored memory")?;
    let dev = Mirror::open()?;
    let base = mem.as_ptr() as usize;
    dev.mirror(base, MEM, 0).context("LRU_MIRROR MIRROR")?;
    dev.config(lru_mirror::config_fail_after((HUGE_PAGES / 2) as u16))?;
    features::set_lru_gen_caps(ALL_CAPS)?;
    let thps = MEM / HUGE;
    let touched = (thps / 2 * HUGE_PAGES) as u64;
    let mut before = Stats::default();
    let p = aging::measured_pass(cg, touched, (MEM / PAGE_SIZE) as u64 - touched, || {
        before = dev.stats()?;
        // The first page of every other THP, inside the answered part.
        for i in (0..thps).step_by(2) {
            dev.access(base + i * HUGE, PAGE_SIZE)?;
        }
        Ok(())
    })?;
    let st = dev.stats()?.since(&before);
    t.diag(&format!(
        "THP, fast-only answers stop after {} pages: {} device {st:?}",
        HUGE_PAGES / 2,
        p.describe()
    ));
    if st.fast_young < (thps / 2) as u64 || st.fast_failed < (thps * HUGE_PAGES / 2) as u64 {
        bail!("the device did not answer young-and-failed per THP: {st:?}");
    }
    p.check_fractions()
}

fn null_fast_op(t: &Ktap, cg: &Memcg) -> Result<()> {
    let s = Setup::new(lru_mirror::MIRROR_NO_FAST_OP)?;
    let (p, st) = s.measure(cg, ALL_CAPS)?;
    t.diag(&format!("NO_FAST_OP: {} device {st:?}", p.describe()));
    p.check_fractions()?;
    if st.fast_calls != 0 {
        bail!(
            "the fast-only op is NULL but was called {} times",
            st.fast_calls
        );
    }
    p.expect_counter('c', 0)?;
    if st.slow_calls == 0 {
        bail!("clear_young() was never called: {st:?}");
    }
    Ok(())
}

fn invalidation_forgets(t: &Ktap, cg: &Memcg) -> Result<()> {
    let s = Setup::new(0)?;
    let n = s.pages();
    features::set_lru_gen_caps(ALL_CAPS)?;
    aging::age_once(cg)?;
    let all = s.dev.access(s.addr(0), MEM)?;
    if all != n as u64 {
        bail!("device accessed {all} of {n} pages");
    }
    let before = s.dev.stats()?;
    // Discard the first half; unmap the last quarter.
    s.mem.discard(0, n / 2)?;
    // SAFETY: the last quarter of our own mapping; nothing refers to it.
    let r = unsafe { libc::munmap(s.addr(3 * n / 4) as *mut libc::c_void, MEM / 4) };
    if r != 0 {
        return Err(std::io::Error::last_os_error()).context("munmap");
    }
    let inv = s.dev.stats()?.since(&before);
    if inv.invalidated_pages != (n / 2 + n / 4) as u64 || inv.mapped_pages != (n / 4) as u64 {
        bail!("invalidations did not unmap 3/4 of the mirror: {inv:?}");
    }
    // Fault the discarded half back in from the host side: new pages the
    // device does not map and never accessed.
    for i in 0..n / 2 {
        // SAFETY: inside the still-mapped first half of our mapping.
        unsafe { std::ptr::write_volatile(s.addr(i) as *mut u32, 1) };
    }
    let b = s.dev.stats()?;
    aging::age_once(cg)?;
    let d = s.dev.stats()?.since(&b);
    t.diag(&format!("after discard + munmap + refault: {d:?}"));
    if d.fast_young != (n / 4) as u64 {
        bail!(
            "{} young answers; only the {} still-mapped accessed pages may be young",
            d.fast_young,
            n / 4
        );
    }
    // Dropping `s` unmaps the whole range; munmap() of the already unmapped
    // quarter is fine.
    Ok(())
}

/// `MIRROR` racing with `MADV_DONTNEED` of parts of its range (the device's
/// invalidations slowed down to widen the window): whenever both stop, every
/// page the device maps must still be mapped by the host. A device page
/// whose host mapping was zapped is the stale mapping a secondary MMU must
/// never have.
fn mirror_races_invalidation(t: &Ktap) -> Result<()> {
    const LEN: usize = 2 << 20;
    const ROUNDS: usize = 30;
    let mut mem = HostMem::new(LEN, Backing::Anon4k)?;
    mem.fill(1);
    let n = mem.pages();
    let base = mem.as_ptr() as usize;
    let dev = Mirror::open()?;
    dev.config(lru_mirror::CONFIG_SLOW_INVALIDATE)?;
    let (mut mirrored, mut busy, mut zaps, mut checked, mut stale) = (0, 0, 0u64, 0, 0);
    for round in 0..ROUNDS {
        let stop = std::sync::atomic::AtomicBool::new(false);
        let (zapped, last) = std::thread::scope(|s| -> Result<(u64, bool)> {
            let zapper = s.spawn(|| -> Result<u64> {
                let mut k = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    mem.discard((k as usize * 37 + round) % (n - 8), 8)?;
                    k += 1;
                    // Leave MIRROR windows to succeed in, not only to fail.
                    std::thread::sleep(std::time::Duration::from_micros(200));
                }
                Ok(k)
            });
            let mut ok = false;
            for i in 0..4 {
                match dev.mirror(base, LEN, 0) {
                    Ok(()) => {
                        mirrored += 1;
                        ok = true;
                    }
                    Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                        busy += 1;
                        ok = false;
                    }
                    Err(e) => {
                        stop.store(true, std::sync::atomic::Ordering::Relaxed);
                        return Err(e).context("MIRROR while racing");
                    }
                }
                if ok && i < 3 {
                    dev.unmirror()?;
                    ok = false;
                }
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let k = zapper
                .join()
                .map_err(|_| anyhow::anyhow!("zapper panicked"))??;
            Ok((k, ok))
        })?;
        zaps += zapped;
        if !last {
            continue;
        }
        // Quiet: nothing changes the range now.
        let states = pagemap::states(base, n)?;
        for (i, st) in states.iter().enumerate() {
            if dev.access(base + i * PAGE_SIZE, PAGE_SIZE)? == 1 && *st != PageState::Present {
                stale += 1;
            }
        }
        checked += 1;
        dev.unmirror()?;
    }
    t.diag(&format!(
        "{mirrored} mirrors ({busy} gave up with EAGAIN) raced {zaps} MADV_DONTNEEDs; \
         {checked} quiet checks of {n} pages found {stale} stale device mappings"
    ));
    if checked < ROUNDS / 4 {
        bail!("only {checked} of {ROUNDS} rounds ended with a mirror; too few checks");
    }
    if stale != 0 {
        bail!("the device mapped {stale} pages whose host mapping was gone");
    }
    Ok(())
}

fn swap_on() -> Result<bool> {
    let swaps = sys::read("/proc/swaps")?;
    if swaps.lines().count() > 1 {
        return Ok(false);
    }
    if !features::exists(SWAP_DEV) {
        bail!("{SWAP_DEV} missing: the kernel config provides brd (CONFIG_BLK_DEV_RAM)");
    }
    for (cmd, args) in [("mkswap", vec![SWAP_DEV]), ("swapon", vec![SWAP_DEV])] {
        let out = Command::new(cmd)
            .args(&args)
            .output()
            .with_context(|| format!("running {cmd}"))?;
        if !out.status.success() {
            bail!("{cmd} {SWAP_DEV}: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    Ok(true)
}

fn swap_off() {
    let _ = Command::new("swapoff").arg(SWAP_DEV).status();
}

/// Reclaim half the mirrored memory after the device accessed every other
/// page; with `fail` the fast-only op answers "failed" throughout, so only
/// the slow fallbacks (aging walk, eviction look-around) can see the
/// accesses.
fn reclaim_keeps_device_accessed(t: &Ktap, cg: &Memcg, fail: bool) -> Result<()> {
    let added = swap_on()?;
    let r = (|| -> Result<()> {
        let s = Setup::new(0)?;
        let n = s.pages();
        features::set_lru_gen_caps(ALL_CAPS)?;
        s.dev.config(if fail {
            lru_mirror::CONFIG_FAIL_FAST
        } else {
            0
        })?;
        aging::age_once(cg)?;
        aging::age_once(cg)?;
        s.access_even()?;
        let before = s.dev.stats()?;
        cg.reclaim((MEM / 2) as u64)?;
        let st = s.dev.stats()?.since(&before);
        let states = pagemap::states(s.addr(0), n)?;
        let out = |parity: usize| {
            (parity..n)
                .step_by(2)
                .filter(|&i| states[i] != PageState::Present)
                .count()
        };
        let (acc_out, untouched_out) = (out(0), out(1));
        t.diag(&format!(
            "reclaim of {} MiB with fast-only {}: {acc_out}/{} device-accessed and \
             {untouched_out}/{} untouched pages left memory; device {st:?}",
            MEM >> 21,
            if fail { "failing" } else { "working" },
            n / 2,
            n / 2
        ));
        if untouched_out < n / 8 {
            bail!("reclaim freed only {untouched_out} untouched pages; the test needs pressure");
        }
        if acc_out as f64 > aging::MAX_UNTOUCHED * (n / 2) as f64 {
            bail!("{acc_out} device-accessed pages were reclaimed");
        }
        if fail && (st.fast_failed == 0 || st.fast_young != 0) {
            bail!("the fast-only op did not fail during reclaim: {st:?}");
        }
        if !fail && (st.fast_young == 0 || st.fast_failed != 0) {
            bail!("reclaim did not see the accesses through the fast-only op: {st:?}");
        }
        Ok(())
    })();
    if added {
        swap_off();
    }
    r
}

fn invalid_ioctls(t: &Ktap) -> Result<()> {
    let mut mem = HostMem::new(1 << 20, Backing::Anon4k)?;
    mem.fill(1);
    let base = mem.as_ptr() as usize;
    let dev = Mirror::open()?;
    // Before any mirror.
    let bad = std::cell::RefCell::new(Vec::new());
    let expect = |what: &str, r: std::io::Result<()>, errno: i32| match r {
        Err(e) if e.raw_os_error() == Some(errno) => {}
        other => bad
            .borrow_mut()
            .push(format!("{what}: {other:?}, expected errno {errno}")),
    };
    expect(
        "access without mirror",
        dev.access(base, PAGE_SIZE).map(drop),
        libc::EINVAL,
    );
    expect("unmirror without mirror", dev.unmirror(), libc::EINVAL);
    let start0 = dev.stats()?;
    let cases: &[(&str, usize, usize, u64, i32)] = &[
        ("unaligned start", base + 1, PAGE_SIZE, 0, libc::EINVAL),
        ("unaligned length", base, PAGE_SIZE + 1, 0, libc::EINVAL),
        ("zero length", base, 0, 0, libc::EINVAL),
        (
            "overflowing end",
            usize::MAX & !(PAGE_SIZE - 1),
            2 * PAGE_SIZE,
            0,
            libc::EINVAL,
        ),
        (
            "too long",
            base,
            (lru_mirror::MAX_MIRROR as usize) + PAGE_SIZE,
            0,
            libc::EINVAL,
        ),
        (
            "kernel address",
            0xffff_8880_0000_0000,
            PAGE_SIZE,
            0,
            libc::EINVAL,
        ),
        ("unknown flags", base, PAGE_SIZE, 0x2, libc::EINVAL),
        ("no VMA there", 0x1000, PAGE_SIZE, 0, libc::EFAULT),
        (
            "range beyond the VMA",
            base,
            (1 << 20) + (64 << 20),
            0,
            libc::EFAULT,
        ),
    ];
    for &(what, start, len, flags, errno) in cases {
        expect(what, dev.mirror(start, len, flags), errno);
    }
    expect(
        "bad argument pointer",
        dev.ioctl(lru_mirror::MIRROR, 0x10).map(drop),
        libc::EFAULT,
    );
    expect(
        "unknown command",
        dev.ioctl(0x6d7f, 0).map(drop),
        libc::ENOTTY,
    );
    expect("unknown config bits", dev.config(0x8), libc::EINVAL);
    expect(
        "FAIL_FAST with FAIL_AFTER",
        dev.config(lru_mirror::config_fail_after(8) | lru_mirror::CONFIG_FAIL_FAST),
        libc::EINVAL,
    );
    expect(
        "FAIL_AFTER of 0 pages",
        dev.config(lru_mirror::CONFIG_FAIL_AFTER),
        libc::EINVAL,
    );
    expect(
        "page count without FAIL_AFTER",
        dev.config(lru_mirror::config_fail_after(8) & !lru_mirror::CONFIG_FAIL_AFTER),
        libc::EINVAL,
    );
    expect(
        "bits above the page count",
        dev.config(lru_mirror::config_fail_after(8) | 1 << 48),
        libc::EINVAL,
    );
    let after0 = dev.stats()?;
    if after0 != start0 || after0.mapped_pages != 0 {
        bad.borrow_mut().push(format!(
            "rejected mirrors changed state: {start0:?} -> {after0:?}"
        ));
    }
    // With a mirror of the first half.
    dev.mirror(base, 1 << 19, 0).context("valid mirror")?;
    let start1 = dev.stats()?;
    expect("second mirror", dev.mirror(base, PAGE_SIZE, 0), libc::EBUSY);
    expect(
        "access outside",
        dev.access(base + (1 << 19), PAGE_SIZE).map(drop),
        libc::EINVAL,
    );
    expect(
        "access straddling",
        dev.access(base + (1 << 19) - PAGE_SIZE, 2 * PAGE_SIZE)
            .map(drop),
        libc::EINVAL,
    );
    expect(
        "access unaligned",
        dev.access(base + 8, PAGE_SIZE).map(drop),
        libc::EINVAL,
    );
    expect("access empty", dev.access(base, 0).map(drop), libc::EINVAL);
    expect(
        "stats to a bad pointer",
        dev.ioctl(lru_mirror::STATS, 0x10).map(drop),
        libc::EFAULT,
    );
    let after1 = dev.stats()?;
    if after1 != start1 || after1.mapped_pages != 128 {
        bad.borrow_mut().push(format!(
            "rejected ioctls changed state: {start1:?} -> {after1:?}"
        ));
    }
    t.diag(&format!("{} invalid ioctls tried", cases.len() + 16));
    let bad = bad.into_inner();
    if !bad.is_empty() {
        bail!("{}", bad.join("; "));
    }
    Ok(())
}

/// `MIRROR` registers and faults in without holding the file's lock (the
/// file is "mirroring"): while it faults in 1 GiB, `ACCESS` and another
/// `MIRROR` on the same file fail with `EBUSY` at once and `STATS` works,
/// instead of all of them waiting for the whole fault-in.
fn ioctls_answer_while_mirroring(t: &Ktap) -> Result<()> {
    let len = lru_mirror::MAX_MIRROR as usize;
    let pages = (len / PAGE_SIZE) as u64;
    // Untouched: MIRROR faults every page in (read faults map the zero page,
    // so this costs page tables, not 1 GiB).
    let mem = HostMem::new(len, Backing::Anon4k)?;
    let base = mem.as_ptr() as usize;
    let dev = Mirror::open()?;
    let started = AtomicBool::new(false);
    let done = AtomicBool::new(false);
    let (mirrored, polled) = std::thread::scope(|s| {
        let poller = s.spawn(|| {
            let mut seen: BTreeMap<String, u64> = BTreeMap::new();
            let mut odd = Vec::new();
            let mut busy = false;
            let mut slowest = Duration::ZERO;
            let mut note = |what: String| *seen.entry(what).or_default() += 1;
            loop {
                let finished = done.load(Ordering::Acquire);
                let t0 = Instant::now();
                let r = dev.access(base, PAGE_SIZE);
                let dt = t0.elapsed();
                started.store(true, Ordering::Release);
                match r {
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                        slowest = slowest.max(dt);
                        note("ACCESS while mirroring: EBUSY".into());
                        busy = true;
                        let second = dev.mirror(base, PAGE_SIZE, 0);
                        match second {
                            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                                note("second MIRROR: EBUSY".into())
                            }
                            r => odd.push(format!("second MIRROR: {r:?}, expected EBUSY")),
                        }
                        // Nothing mapped yet, or everything if MIRROR just ended.
                        match dev.stats() {
                            Ok(st) if st.mapped_pages == 0 || st.mapped_pages == pages => {
                                note("STATS while mirroring: ok".into())
                            }
                            r => odd.push(format!("STATS while mirroring: {r:?}")),
                        }
                    }
                    // Before MIRROR got the file: no mirror yet.
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) && !busy => {
                        note("ACCESS before: EINVAL".into())
                    }
                    Ok(1) => {
                        note("ACCESS after: 1 page".into());
                        break;
                    }
                    r => {
                        odd.push(format!("ACCESS: {r:?} (seen EBUSY: {busy})"));
                        break;
                    }
                }
                if finished {
                    break;
                }
            }
            (seen, odd, slowest)
        });
        while !started.load(Ordering::Acquire) {
            std::hint::spin_loop();
        }
        let t0 = Instant::now();
        let r = dev.mirror(base, len, 0);
        let took = t0.elapsed();
        done.store(true, Ordering::Release);
        ((r, took), poller.join())
    });
    let (r, took) = mirrored;
    let (seen, mut bad, slowest) = polled.map_err(|_| anyhow::anyhow!("poller panicked"))?;
    t.diag(&format!(
        "MIRROR of {} MiB took {:.0} ms: {r:?}; slowest EBUSY answer {} us",
        len >> 20,
        took.as_secs_f64() * 1e3,
        slowest.as_micros()
    ));
    for (k, v) in &seen {
        t.diag(&format!("  {k}: {v}"));
    }
    match r {
        Ok(()) => {}
        // Invalidations kept racing with the fault-in: the mirror's contract.
        Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
            bail!("MIRROR of 1 GiB gave up (EAGAIN): nothing measured")
        }
        Err(e) => bail!("MIRROR of 1 GiB: {e}"),
    }
    if !seen.contains_key("ACCESS while mirroring: EBUSY") {
        bad.push(format!(
            "no ACCESS answered while the {:.0} ms MIRROR ran: it holds the file's lock",
            took.as_secs_f64() * 1e3
        ));
    }
    if !seen.contains_key("ACCESS after: 1 page") {
        bad.push("ACCESS never saw the mirror".into());
    }
    let st = dev.stats()?;
    if st.mapped_pages != pages {
        bad.push(format!("after MIRROR: {st:?}"));
    }
    if !bad.is_empty() {
        bail!("{}", bad.join("; "));
    }
    Ok(())
}

/// The module of the init-leak case.
const INIT_LEAK_MODULE: &str = "mmu_notifier_init_leak";
/// The device node its init registers for a moment.
const INIT_LEAK_DEV: &str = "/dev/mmu_notifier_init_leak";

/// What the init-leak child's opener saw while the module was loading.
#[derive(Default)]
struct OpenProbe {
    /// Opens that failed with `ENODEV`: the device was there, the module
    /// not live yet.
    refused: u64,
    /// Files that were opened: they would outlive the module.
    opened: Vec<std::fs::File>,
    /// Errors other than `ENOENT` (no device yet, or no more).
    other: Vec<String>,
}

/// Tries to open the init-leak module's device every millisecond until
/// `stop`.
fn probe_opens(stop: &AtomicBool) -> OpenProbe {
    let mut p = OpenProbe::default();
    while !stop.load(Ordering::Relaxed) {
        match std::fs::File::open(INIT_LEAK_DEV) {
            Ok(f) => p.opened.push(f),
            Err(e) => match e.raw_os_error() {
                Some(libc::ENOENT) => {}
                Some(libc::ENODEV) => p.refused += 1,
                _ if p.other.len() < 4 => p.other.push(e.to_string()),
                _ => {}
            },
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    p
}

/// Child: load the init-leak module, whose init registers an MMU notifier
/// on this process's address space and leaks it, then registers a device
/// for a second, which a thread of this process keeps trying to open, and
/// fails. Prints how many opens were refused (for the parent's diagnostic).
/// Exit status 0 if the init reported both refused (`ECANCELED`) and some
/// open was refused (`ENODEV`), 1 if it registered and leaked the notifier
/// (`ENOTRECOVERABLE`: the module is now freed with its notifier on our mm),
/// 3 if a file was opened (`EOWNERDEAD`: closing it runs `release` in the
/// freed module), 4 if no open reached the device, 2 otherwise. Then the
/// process exits, which calls `release()` of every notifier still registered
/// on its mm.
fn child_init_leak() -> i32 {
    let ko = module::project_module(INIT_LEAK_MODULE);
    let stop = AtomicBool::new(false);
    let (loaded, probe) = std::thread::scope(|s| {
        let opener = s.spawn(|| probe_opens(&stop));
        let loaded = module::load(&ko, "");
        stop.store(true, Ordering::Relaxed);
        (loaded, opener.join())
    });
    let Ok(probe) = probe else {
        eprintln!("init-leak: the opener thread panicked");
        return 2;
    };
    println!("{} opens of {INIT_LEAK_DEV}", probe.refused);
    let opened = probe.opened.len();
    // On a kernel that let them open, this runs release() in the freed
    // module; the parent watches the kernel log.
    drop(probe.opened);
    if opened != 0 {
        eprintln!("init-leak: {opened} files of {INIT_LEAK_DEV} opened while the init ran");
        return 3;
    }
    if !probe.other.is_empty() {
        eprintln!("init-leak: opening {INIT_LEAK_DEV}: {:?}", probe.other);
        return 2;
    }
    match loaded {
        Ok(()) => {
            eprintln!("init-leak: {} loaded, but its init must fail", ko.display());
            2
        }
        Err(e) => match sys::errno_of(&e) {
            Some(libc::ECANCELED) if probe.refused == 0 => {
                eprintln!("init-leak: no open reached {INIT_LEAK_DEV} while the init ran");
                4
            }
            Some(libc::ECANCELED) => 0,
            Some(libc::ENOTRECOVERABLE) => {
                eprintln!("init-leak: the init registered a notifier and leaked it");
                1
            }
            Some(libc::EOWNERDEAD) => {
                eprintln!("init-leak: the init saw a file opened");
                3
            }
            _ => {
                eprintln!("init-leak: {e:#}");
                2
            }
        },
    }
}

/// A registration that a failing module init leaks (`mem::forget()`, safe
/// code) would outlive the module: a module whose init fails is freed
/// whatever its references, and the loading process's exit would then call
/// into freed memory. So would a file of a misc device that the init
/// registered, opened while the init ran: closing it runs `release` in the
/// freed module. The abstractions refuse both until the module is live, so
/// the init cannot leak either: the child that loads the module (and tries
/// to open its device meanwhile) exits promptly, the module is gone and the
/// kernel log stays clean.
fn init_failure_leak_harmless(t: &Ktap) -> Result<()> {
    let ko = module::project_module(INIT_LEAK_MODULE);
    if !ko.exists() {
        bail!(
            "{} is missing (rust/Kbuild builds it with the series)",
            ko.display()
        );
    }
    let watch = sys::DmesgWatch::start()?;
    let mut child = Command::new(std::env::current_exe()?)
        .arg("--init-leak")
        .stdout(Stdio::piped())
        .spawn()
        .context("spawning --init-leak")?;
    // An exit that calls into a freed module oopses and may never finish.
    let deadline = Instant::now() + Duration::from_secs(60);
    let st = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let bugs = watch.new_bug_lines().unwrap_or_default();
            bail!("the --init-leak child did not exit within 60 s; kernel log: {bugs:#?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut out = String::new();
    if let Some(mut o) = child.stdout.take() {
        o.read_to_string(&mut out)?;
    }
    watch.expect_clean()?;
    match st.code() {
        Some(0) => {}
        Some(1) => bail!("the module's init registered and leaked a notifier (it must be refused)"),
        Some(3) => {
            bail!("a file of {INIT_LEAK_DEV} was opened while the init ran (must be refused)")
        }
        Some(4) => bail!("no open of {INIT_LEAK_DEV} reached the device while the init ran"),
        _ => bail!("--init-leak child: {st}"),
    }
    if module::is_loaded(INIT_LEAK_MODULE) {
        bail!("{INIT_LEAK_MODULE} is loaded although its init failed");
    }
    t.diag(&format!(
        "a failing init's registration and {} were refused (ENODEV); its process exited cleanly",
        out.trim()
    ));
    Ok(())
}

/// What one thread of the concurrent case saw: how often each operation
/// ended how, and every outcome that was not the documented one.
#[derive(Default)]
struct Tally {
    counts: BTreeMap<String, u64>,
    unexpected: Vec<String>,
}

impl Tally {
    fn note(&mut self, op: &str, r: &std::io::Result<i64>) {
        let how = match r {
            Ok(_) => "ok".to_string(),
            Err(e) => errno_name(e.raw_os_error().unwrap_or(0)),
        };
        *self.counts.entry(format!("{op}: {how}")).or_default() += 1;
    }

    fn odd(&mut self, msg: String) {
        // The first few are enough to debug; the count is in the totals.
        if self.unexpected.len() < 8 {
            self.unexpected.push(msg);
        }
        *self.counts.entry("unexpected".into()).or_default() += 1;
    }

    /// Expects `r` to fail with `errno`.
    fn errno(&mut self, op: &str, r: std::io::Result<i64>, errno: i32) {
        self.note(op, &r);
        match r {
            Err(e) if e.raw_os_error() == Some(errno) => {}
            r => self.odd(format!("{op}: {r:?}, expected {}", errno_name(errno))),
        }
    }

    /// Expects `r` to succeed with `want`.
    fn ok(&mut self, op: &str, r: std::io::Result<i64>, want: i64) -> bool {
        self.note(op, &r);
        match r {
            Ok(v) if v == want => true,
            r => {
                self.odd(format!("{op}: {r:?}, expected Ok({want})"));
                false
            }
        }
    }

    fn add(&mut self, other: Tally) {
        for (k, v) in other.counts {
            *self.counts.entry(k).or_default() += v;
        }
        for u in other.unexpected {
            if self.unexpected.len() < 16 {
                self.unexpected.push(u);
            }
        }
    }
}

fn errno_name(e: i32) -> String {
    match e {
        libc::EINVAL => "EINVAL".into(),
        libc::EFAULT => "EFAULT".into(),
        libc::EBUSY => "EBUSY".into(),
        libc::EAGAIN => "EAGAIN".into(),
        libc::ENOTTY => "ENOTTY".into(),
        libc::ENOMEM => "ENOMEM".into(),
        libc::EINTR => "EINTR".into(),
        e => format!("errno {e}"),
    }
}

/// xorshift64: a cheap per-thread sequence of operations.
struct Rng(u64);

impl Rng {
    fn next(&mut self, below: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % below as u64) as usize
    }
}

/// The mirrored range of the concurrent case and what its threads share.
struct Storm<'a> {
    dev: &'a Mirror,
    base: usize,
    pages: usize,
    /// A read-only page: STATS cannot write its result there.
    read_only: usize,
    /// Pages valid ACCESSes hit (only multiples of 4 in the first half).
    hit: &'a [AtomicBool],
    /// Sum of what the valid ACCESSes returned.
    accessed: &'a AtomicU64,
    deadline: Instant,
}

/// A bad argument pointer: below every mapping.
const BAD_PTR: usize = 0x10;

impl Storm<'_> {
    fn page(&self, i: usize) -> usize {
        self.base + i * PAGE_SIZE
    }

    /// A thread on the shared, mirrored file: every operation but `ACCESS`
    /// and `STATS` with good arguments is bad. Bad `ACCESS` ranges aim at
    /// pages no valid one hits (2 mod 4, and the last page), so one that
    /// wrongly took effect shows in the young pages at the end.
    fn shared_thread(&self, seed: u64) -> Tally {
        let mut t = Tally::default();
        let mut rng = Rng(seed);
        let (n, dev) = (self.pages, self.dev);
        let mut last_accessed = 0;
        while Instant::now() < self.deadline {
            let odd_page = 4 * rng.next(n / 4) + 2;
            match rng.next(20) {
                0..=4 => {
                    let p = 4 * rng.next(n / 8);
                    if t.ok("ACCESS valid", access(dev, self.page(p), PAGE_SIZE), 1) {
                        self.hit[p].store(true, Ordering::Relaxed);
                        self.accessed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                5 => t.errno(
                    "MIRROR while mirrored",
                    mirror(dev, self.base, n * PAGE_SIZE, 0),
                    libc::EBUSY,
                ),
                6 => t.errno(
                    "MIRROR unaligned",
                    mirror(dev, self.base + 8, PAGE_SIZE, 0),
                    libc::EINVAL,
                ),
                7 => t.errno(
                    "MIRROR unknown flags",
                    mirror(dev, self.base, PAGE_SIZE, 0x2),
                    libc::EINVAL,
                ),
                8 => t.errno(
                    "MIRROR bad pointer",
                    dev.ioctl(lru_mirror::MIRROR, BAD_PTR),
                    libc::EFAULT,
                ),
                9 => t.errno(
                    "ACCESS unaligned",
                    access(dev, self.page(odd_page) + 8, PAGE_SIZE),
                    libc::EINVAL,
                ),
                10 => t.errno(
                    "ACCESS empty",
                    access(dev, self.page(odd_page), 0),
                    libc::EINVAL,
                ),
                11 => {
                    let (start, len) = match rng.next(3) {
                        0 => (self.page(n - 1), 2 * PAGE_SIZE),
                        1 => (self.page(n), PAGE_SIZE),
                        _ => (usize::MAX & !(PAGE_SIZE - 1), 2 * PAGE_SIZE),
                    };
                    t.errno(
                        "ACCESS beyond the mirror",
                        access(dev, start, len),
                        libc::EINVAL,
                    )
                }
                12 => t.errno(
                    "ACCESS bad pointer",
                    dev.ioctl(lru_mirror::ACCESS, BAD_PTR),
                    libc::EFAULT,
                ),
                13 => {
                    let flags = match rng.next(3) {
                        0 => lru_mirror::CONFIG_FAIL_FAST | 0x8,
                        1 => lru_mirror::CONFIG_FAIL_FAST | lru_mirror::config_fail_after(8),
                        _ => lru_mirror::config_fail_after(8) | 1 << 63,
                    };
                    t.errno(
                        "CONFIG bad bits",
                        dev.ioctl(lru_mirror::CONFIG, &flags as *const u64 as usize),
                        libc::EINVAL,
                    )
                }
                14 => t.errno(
                    "CONFIG bad pointer",
                    dev.ioctl(lru_mirror::CONFIG, BAD_PTR),
                    libc::EFAULT,
                ),
                15 => t.errno(
                    "STATS bad pointer",
                    dev.ioctl(lru_mirror::STATS, BAD_PTR),
                    libc::EFAULT,
                ),
                16 => t.errno(
                    "STATS to a read-only page",
                    dev.ioctl(lru_mirror::STATS, self.read_only),
                    libc::EFAULT,
                ),
                17 => t.errno("unknown command", dev.ioctl(0x6d7f, 0), libc::ENOTTY),
                _ => {
                    // Counters stay consistent while the storm runs: the
                    // mirror keeps every page, nothing released it, and
                    // accesses only add up.
                    let mut st = Stats::default();
                    let r = dev.ioctl(lru_mirror::STATS, &mut st as *mut Stats as usize);
                    if t.ok("STATS valid", r, 0) {
                        if st.mapped_pages != n as u64
                            || st.releases != 0
                            || st.invalidations != 0
                            || st.accessed_pages < last_accessed
                        {
                            t.odd(format!(
                                "STATS mid-storm: {st:?} (mirror of {n} pages, accessed \
                                 was {last_accessed})"
                            ));
                        }
                        last_accessed = st.accessed_pages;
                    }
                }
            }
        }
        t
    }

    /// A thread with files of its own: mirrors the same range, is refused
    /// a second mirror, accesses, sets valid and invalid knobs, unmirrors,
    /// and reopens its file now and then; checks its file's counters
    /// before each close.
    fn own_thread(&self, seed: u64) -> Result<Tally> {
        let mut t = Tally::default();
        let mut rng = Rng(seed);
        let (n, len) = (self.pages, self.pages * PAGE_SIZE);
        while Instant::now() < self.deadline {
            let dev = Mirror::open()?;
            let (mut mirrors, mut accessed) = (0u64, 0u64);
            for _ in 0..1 + rng.next(16) {
                t.errno("own: UNMIRROR unmirrored", unmirror(&dev), libc::EINVAL);
                t.errno(
                    "own: ACCESS unmirrored",
                    access(&dev, self.base, PAGE_SIZE),
                    libc::EINVAL,
                );
                let r = mirror(&dev, self.base, len, 0);
                t.note("own: MIRROR", &r);
                match r {
                    Ok(_) => {}
                    // The documented answer to invalidations racing MIRROR.
                    Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => continue,
                    r => {
                        t.odd(format!("own: MIRROR: {r:?}"));
                        continue;
                    }
                }
                mirrors += 1;
                t.errno(
                    "own: MIRROR again",
                    mirror(&dev, self.base, PAGE_SIZE, 0),
                    libc::EBUSY,
                );
                if t.ok("own: ACCESS all", access(&dev, self.base, len), n as i64) {
                    accessed += n as u64;
                }
                let knob = [lru_mirror::CONFIG_FAIL_FAST, 0][rng.next(2)];
                t.ok("own: CONFIG valid", config(&dev, knob), 0);
                t.errno("own: CONFIG unknown bit", config(&dev, 0x10), libc::EINVAL);
                t.ok("own: CONFIG 0", config(&dev, 0), 0);
                t.ok("own: UNMIRROR", unmirror(&dev), 0);
            }
            let st = dev.stats()?;
            // One release per mirror (UNMIRROR unregisters, which releases).
            if st.releases != mirrors || st.accessed_pages != accessed || st.mapped_pages != 0 {
                t.odd(format!(
                    "own file after {mirrors} mirrors and {accessed} accessed pages: {st:?}"
                ));
            }
        }
        Ok(t)
    }
}

fn mirror(dev: &Mirror, start: usize, len: usize, flags: u64) -> std::io::Result<i64> {
    dev.mirror(start, len, flags).map(|()| 0)
}

fn unmirror(dev: &Mirror) -> std::io::Result<i64> {
    dev.unmirror().map(|()| 0)
}

fn access(dev: &Mirror, start: usize, len: usize) -> std::io::Result<i64> {
    dev.access(start, len).map(|n| n as i64)
}

fn config(dev: &Mirror, flags: u64) -> std::io::Result<i64> {
    dev.config(flags).map(|()| 0)
}

/// Many threads hammer one live mirror's file with bad ioctls (and some
/// good ones), while others mirror the same memory through files of their
/// own. Every bad ioctl must fail with its documented errno, the kernel log
/// stay clean, and afterwards the mirror be what the valid operations alone
/// make it: every page still mapped, exactly the pages valid `ACCESS`es hit
/// young for the device (an aging pass with 0x8 finds exactly those), the
/// failure knobs off (the pass finds no failed page), and the counters the
/// sums of the valid operations.
fn concurrent_bad_ioctls(t: &Ktap, cg: &Memcg, o: &Opts) -> Result<()> {
    const LEN: usize = 4 << 20;
    let watch = sys::DmesgWatch::start()?;
    let base_ref = refcnt()?;
    let mut mem = HostMem::new(LEN, Backing::Anon4k)?;
    mem.fill(0x636f_6e63);
    let mut ro = HostMem::new(PAGE_SIZE, Backing::Anon4k)?;
    ro.fill(0);
    // SAFETY: our own one-page mapping; nothing holds references into it.
    if unsafe { libc::mprotect(ro.as_ptr().cast(), PAGE_SIZE, libc::PROT_READ) } != 0 {
        return Err(std::io::Error::last_os_error()).context("mprotect");
    }
    let n = mem.pages();
    let base = mem.as_ptr() as usize;
    let dev = Mirror::open()?;
    let mut tries = 0;
    loop {
        match dev.mirror(base, LEN, 0) {
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) && tries < 5 => tries += 1,
            r => break r.context("LRU_MIRROR MIRROR")?,
        }
    }
    let start = dev.stats()?;
    let hit: Vec<AtomicBool> = (0..n).map(|_| AtomicBool::new(false)).collect();
    let accessed = AtomicU64::new(0);
    let storm = Storm {
        dev: &dev,
        base,
        pages: n,
        read_only: ro.as_ptr() as usize,
        hit: &hit,
        accessed: &accessed,
        deadline: Instant::now() + Duration::from_secs(o.secs),
    };
    let began = Instant::now();
    let mut total = std::thread::scope(|s| -> Result<Tally> {
        let storm = &storm;
        let shared: Vec<_> = (0..o.threads as u64)
            .map(|k| s.spawn(move || storm.shared_thread(0x9e37_79b9_7f4a_7c15 ^ (k + 1) << 8)))
            .collect();
        let own: Vec<_> = (0..o.own_fd_threads as u64)
            .map(|k| s.spawn(move || storm.own_thread(0x2545_f491_4f6c_dd1d ^ (k + 1) << 8)))
            .collect();
        let mut total = Tally::default();
        for h in shared {
            total.add(h.join().map_err(|_| anyhow::anyhow!("thread panicked"))?);
        }
        for h in own {
            total.add(h.join().map_err(|_| anyhow::anyhow!("thread panicked"))??);
        }
        Ok(total)
    })?;
    let secs = began.elapsed().as_secs_f64();
    let calls: u64 = total
        .counts
        .iter()
        .filter(|(k, _)| *k != "unexpected")
        .map(|(_, v)| v)
        .sum();
    t.diag(&format!(
        "{} threads on one mirrored file, {} with their own, {secs:.1} s: {calls} ioctls",
        o.threads, o.own_fd_threads
    ));
    for (k, v) in &total.counts {
        t.diag(&format!("  {k}: {v}"));
    }
    let mut bad = std::mem::take(&mut total.unexpected);
    // Every kind of bad ioctl ran, or the storm tested less than it claims.
    for op in [
        "MIRROR while mirrored: EBUSY",
        "MIRROR unaligned: EINVAL",
        "MIRROR unknown flags: EINVAL",
        "MIRROR bad pointer: EFAULT",
        "ACCESS unaligned: EINVAL",
        "ACCESS empty: EINVAL",
        "ACCESS beyond the mirror: EINVAL",
        "ACCESS bad pointer: EFAULT",
        "CONFIG bad bits: EINVAL",
        "CONFIG bad pointer: EFAULT",
        "STATS bad pointer: EFAULT",
        "STATS to a read-only page: EFAULT",
        "unknown command: ENOTTY",
        "ACCESS valid: ok",
        "STATS valid: ok",
    ] {
        if !total.counts.contains_key(op) {
            bad.push(format!("no \"{op}\" in {secs:.1} s"));
        }
    }
    if o.own_fd_threads > 0 && !total.counts.contains_key("own: UNMIRROR: ok") {
        bad.push("no own-file thread ever mirrored".into());
    }
    // The mirror after the storm: the valid ACCESSes' sum, nothing else.
    let st = dev.stats()?.since(&start);
    let want = accessed.load(Ordering::Relaxed);
    if st.accessed_pages != want
        || st.mapped_pages != n as u64
        || st.invalidations != 0
        || st.releases != 0
    {
        bad.push(format!(
            "after the storm: {st:?}; expected {want} accessed pages, {n} mapped, \
             no invalidation or release"
        ));
    }
    // Young for the device: exactly the pages valid ACCESSes hit. An aging
    // pass with 0x8 asks the device about every page on an LRU list (all of
    // them, once the per-CPU batches are drained, see Setup::new) and clears
    // what it reports; a failure knob that slipped through would fail pages.
    sys::drain_lru_batches()?;
    if let Err(e) = expect_on_lru(base, n) {
        bad.push(format!("{e:#}"));
    }
    features::set_lru_gen_caps(ALL_CAPS)?;
    let young = hit.iter().filter(|h| h.load(Ordering::Relaxed)).count() as u64;
    let before = dev.stats()?;
    aging::age_once(cg)?;
    let pass = dev.stats()?.since(&before);
    t.diag(&format!(
        "{young} distinct pages accessed; the aging pass after: {pass:?}"
    ));
    if pass.fast_young != young || pass.fast_failed != 0 || pass.fast_pages < n as u64 {
        bad.push(format!(
            "aging found {} young and {} failed of {} asked pages; expected {young} young, \
             0 failed, >= {n} asked",
            pass.fast_young, pass.fast_failed, pass.fast_pages
        ));
    }
    if access(&dev, base, LEN).ok() != Some(n as i64) {
        bad.push("the mirror no longer maps every page".into());
    }
    drop(dev);
    let mut left = refcnt()?;
    for _ in 0..100 {
        if left == base_ref {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        left = refcnt()?;
    }
    if left != base_ref {
        bad.push(format!(
            "module refcnt {left} after every file closed, expected {base_ref}"
        ));
    }
    watch.expect_clean()?;
    if !bad.is_empty() {
        bail!("{}", bad.join("; "));
    }
    Ok(())
}

/// Child: mirror, access, exit with the mirror alive (mm exits first).
fn child_exit() -> Result<()> {
    let s = Setup::new(0)?;
    s.access_even()?;
    std::process::exit(0);
}

/// Child: mirror, fork a grandchild that inherits the file, close our own
/// copy and exit while the grandchild closes the last one: the exit path
/// (`exit_mmap()`) and the grandchild's unregistering both call `release()`,
/// possibly at the same time.
fn child_fork_race() -> Result<()> {
    let s = Setup::new(0)?;
    s.access_even()?;
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe() returns.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error()).context("pipe");
    }
    // SAFETY: this child process is single-threaded, so fork() is safe; the
    // grandchild only uses async-signal-safe calls before _exit().
    match unsafe { libc::fork() } {
        -1 => Err(std::io::Error::last_os_error()).context("fork"),
        0 => {
            let mut b = 0u8;
            // SAFETY: reading one byte into `b` from our pipe; then closing
            // the inherited device file (the last reference) and leaving.
            unsafe {
                libc::read(fds[0], (&mut b as *mut u8).cast(), 1);
                libc::close(s.dev.raw_fd());
                libc::_exit(0);
            }
        }
        _ => {
            drop(s.dev);
            // SAFETY: writing one byte from a local to our pipe.
            unsafe { libc::write(fds[1], b"x".as_ptr().cast(), 1) };
            std::process::exit(0);
        }
    }
}

/// Child: mirror, tell the parent, wait until stdin closes.
fn child_hold() -> Result<()> {
    let _s = Setup::new(0)?;
    println!("mirrored");
    std::io::stdout().flush()?;
    let mut sink = Vec::new();
    std::io::stdin().read_to_end(&mut sink)?;
    Ok(())
}

/// Runs this test binary as a child in mode `arg` and waits for it.
fn run_child(arg: &str) -> Result<()> {
    let st = Command::new(std::env::current_exe()?)
        .arg(arg)
        .status()
        .with_context(|| format!("running {arg}"))?;
    if !st.success() {
        bail!("{arg} child failed: {st}");
    }
    Ok(())
}

fn close_and_exit_clean(t: &Ktap) -> Result<()> {
    let watch = sys::DmesgWatch::start()?;
    {
        let s = Setup::new(0)?;
        s.access_even()?;
        drop(s.dev); // close while mirrored
    }
    run_child("--mirror-exit")?;
    watch.expect_clean()?;
    t.diag("closed a mirrored fd; a process exited while mirrored");
    Ok(())
}

/// `release()` can be called twice, concurrently (exit and unregister race);
/// it must be idempotent. Many rounds of exiting while a forked child closes
/// the file leave dmesg clean and the module unreferenced.
fn exit_and_close_race_clean(t: &Ktap) -> Result<()> {
    const ROUNDS: usize = 20;
    let watch = sys::DmesgWatch::start()?;
    let base = refcnt()?;
    for _ in 0..ROUNDS {
        run_child("--mirror-fork-race")?;
    }
    // The grandchildren are not ours to wait for: wait for their closes.
    let mut left = refcnt()?;
    for _ in 0..100 {
        if left == base {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        left = refcnt()?;
    }
    if left != base {
        bail!("module refcnt {left} after the races, expected {base}");
    }
    watch.expect_clean()?;
    t.diag(&format!(
        "{ROUNDS} rounds of exit racing a forked child's close: clean"
    ));
    Ok(())
}

fn refcnt() -> Result<u32> {
    sys::read_trimmed(format!("/sys/module/{}/refcnt", lru_mirror::MODULE))?
        .parse()
        .context("parsing refcnt")
}

fn rmmod_while_mirrored(t: &Ktap) -> Result<()> {
    let watch = sys::DmesgWatch::start()?;
    let base = refcnt()?;
    let mut child = Command::new(std::env::current_exe()?)
        .arg("--mirror-hold")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("spawning --mirror-hold")?;
    let mut line = [0u8; 9];
    child
        .stdout
        .as_mut()
        .context("child stdout")?
        .read_exact(&mut line)
        .context("waiting for the child to mirror")?;
    let held = refcnt()?;
    let busy = module::unload(lru_mirror::MODULE);
    drop(child.stdin.take());
    let st = child.wait()?;
    // The open file pins the module (fops owner), and so does the mirror's
    // MMU notifier registration (MmuNotifierOps::OWNER).
    if held != base + 2 {
        bail!(
            "refcnt {held} while a file is open and mirrored, expected {}",
            base + 2
        );
    }
    match busy {
        Ok(()) => bail!("rmmod succeeded while a process mirrored"),
        Err(e) if matches!(sys::errno_of(&e), Some(libc::EAGAIN) | Some(libc::EBUSY)) => {}
        Err(e) => bail!("rmmod failed oddly: {e:#}"),
    }
    if !st.success() {
        bail!("--mirror-hold child failed: {st}");
    }
    if refcnt()? != base {
        bail!(
            "refcnt {} after the child exited, expected {base}",
            refcnt()?
        );
    }
    module::unload(lru_mirror::MODULE).context("rmmod after the child exited")?;
    watch.expect_clean()?;
    t.diag(&format!(
        "refcnt {base} -> {held} while mirrored (file + registration); rmmod refused, then clean"
    ));
    Ok(())
}

fn main() {
    let o = Opts::parse();
    o.validate();
    if o.mirror_exit {
        if let Err(e) = child_exit() {
            eprintln!("mirror-exit: {e:#}");
            std::process::exit(1);
        }
    }
    if o.mirror_fork_race {
        if let Err(e) = child_fork_race() {
            eprintln!("mirror-fork-race: {e:#}");
            std::process::exit(1);
        }
    }
    if o.mirror_hold {
        let code = match child_hold() {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("mirror-hold: {e:#}");
                1
            }
        };
        std::process::exit(code);
    }
    if o.init_leak {
        std::process::exit(child_init_leak());
    }

    // lru_mirror is built on the series' Rust bindings: none on another
    // kernel (make check-base); on the series' kernel it must be there.
    let ko = module::project_module(lru_mirror::MODULE);
    if let Ok(Some(why)) = features::series_feature(ko.exists(), "lru_mirror module") {
        Ktap::skip_all(&why);
    }
    if let Some(why) = features::memcg_aging_missing() {
        Ktap::lacks(&why);
    }
    let mut t = Ktap::new(18);
    let (guard, cg) = match aging::enter_sandbox(MEMCG) {
        Ok(v) => v,
        Err(e) => Ktap::bail_out(&format!("setting up the memcg sandbox: {e:#}")),
    };
    let watch = sys::DmesgWatch::start().ok();
    t.check("module_loads_dev_node_0600", module_loads());
    t.check(
        "aging_0x8_promotes_device_accessed",
        with_secondary_walk(&t, &cg),
    );
    t.check("aging_without_0x8_is_base", without_secondary_walk(&t, &cg));
    t.check("fast_only_failed_falls_back", fast_failing(&t, &cg));
    t.check(
        "young_and_failed_two_subscribers_stays_young",
        young_and_failed_from_two_subscribers(&t, &cg),
    );
    t.check(
        "young_and_failed_mid_thp_range_stays_young",
        young_and_failed_mid_range(&t, &cg),
    );
    t.check("null_fast_op_never_called", null_fast_op(&t, &cg));
    t.check("invalidation_forgets_pages", invalidation_forgets(&t, &cg));
    t.check(
        "reclaim_keeps_device_accessed_fast_only",
        reclaim_keeps_device_accessed(&t, &cg, false),
    );
    t.check(
        "reclaim_keeps_device_accessed_when_fast_fails",
        reclaim_keeps_device_accessed(&t, &cg, true),
    );
    t.check("invalid_ioctls_rejected_unchanged", invalid_ioctls(&t));
    t.check(
        "ioctls_answer_while_mirroring",
        ioctls_answer_while_mirroring(&t),
    );
    t.check(
        "concurrent_bad_ioctls_while_mirrored",
        concurrent_bad_ioctls(&t, &cg, &o),
    );
    t.check(
        "mirror_racing_invalidation_never_stale",
        mirror_races_invalidation(&t),
    );
    let mut clean = close_and_exit_clean(&t);
    if let (Ok(()), Some(w)) = (&clean, &watch) {
        clean = w.expect_clean();
    }
    t.check("close_and_exit_while_mirrored_clean", clean);
    t.check(
        "exit_racing_close_release_twice_clean",
        exit_and_close_race_clean(&t),
    );
    t.check(
        "rmmod_refused_while_mirrored_then_clean",
        rmmod_while_mirrored(&t),
    );
    t.check(
        "failing_init_cannot_leak_registration",
        init_failure_leak_harmless(&t),
    );
    drop(cg);
    drop(guard);
    t.finish();
}
