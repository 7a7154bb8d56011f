// SPDX-License-Identifier: GPL-2.0
//! lru_mirror_test: page aging of memory accessed only through a secondary
//! MMU, using the project's software secondary MMU (`rust/lru_mirror.rs`,
//! a Rust module on the Rust mmu_notifier abstraction) instead of KVM.
//!
//! In its own memcg, the test faults in 64 MiB of anonymous 4 KiB pages,
//! mirrors them in the device, makes them old, accesses every other page
//! only through the device (`ACCESS` ioctl: the device's accessed bits, never
//! the host PTE's) and forces an aging pass. It checks promotion with 0x8 on
//! and off, with the fast-only op failing, and with the op absent (NULL);
//! that an answer that is both "young" and "failed" (two subscribers, one
//! failing; a THP range answered only in part) keeps the page young;
//! that invalidations make the device forget pages; that reclaim keeps the
//! device-accessed pages when the fast-only op fails (needs swap: the test
//! puts swap on `/dev/ram0`); that bad ioctls are rejected and change
//! nothing; and that closing, exiting and `rmmod` while mirrored are clean.
//!
//! `--mirror-exit` and `--mirror-hold` run child processes for the last two.

use mglru_selftest::aging::{self, Pass};
use mglru_selftest::features::{self, caps};
use mglru_selftest::kvm::{Backing, HostMem, PAGE_SIZE};
use mglru_selftest::lru_mirror::{self, Mirror, Stats};
use mglru_selftest::memcg::Memcg;
use mglru_selftest::pagemap::{self, PageState};
use mglru_selftest::{bail, ktap::Ktap, module, sys, Context, Result};
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};

const MEMCG: &str = "lru-mirror";
const MEM: usize = 64 << 20;
const ALL_CAPS: u32 = caps::CORE | caps::MM_WALK | caps::NONLEAF_YOUNG | caps::SECONDARY_MMU_WALK;
const NO_SECONDARY: u32 = ALL_CAPS & !caps::SECONDARY_MMU_WALK;
const SWAP_DEV: &str = "/dev/ram0";

/// Faulted-in memory mirrored by an open device.
struct Setup {
    mem: HostMem,
    dev: Mirror,
}

impl Setup {
    fn new(flags: u64) -> Result<Self> {
        let mem = HostMem::new(MEM, Backing::Anon4k)?;
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

    /// Measures an aging pass after the device accessed the even pages.
    fn measure(&self, cg: &Memcg, mask: u32) -> Result<(Pass, Stats)> {
        features::set_lru_gen_caps(mask)?;
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
    // 6.12 asks secondary MMUs through clear_young() during aging.
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
    // Every failed entry takes 6.12's path: clear_young() finds the pages.
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
    let mem = HostMem::new(MEM, Backing::Thp)?;
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
    let mem = HostMem::new(LEN, Backing::Anon4k)?;
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
    let mem = HostMem::new(1 << 20, Backing::Anon4k)?;
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
    match std::env::args().nth(1).as_deref() {
        Some("--mirror-exit") => {
            if let Err(e) = child_exit() {
                eprintln!("mirror-exit: {e:#}");
                std::process::exit(1);
            }
        }
        Some("--mirror-fork-race") => {
            if let Err(e) = child_fork_race() {
                eprintln!("mirror-fork-race: {e:#}");
                std::process::exit(1);
            }
        }
        Some("--mirror-hold") => {
            let code = match child_hold() {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("mirror-hold: {e:#}");
                    1
                }
            };
            std::process::exit(code);
        }
        _ => {}
    }

    let mut t = Ktap::new(15);
    let (guard, cg) = match aging::enter_sandbox(MEMCG) {
        Ok(v) => v,
        Err(e) => Ktap::skip_all(&format!("no memcg/lru_gen to test with: {e:#}")),
    };
    let watch = sys::DmesgWatch::start().ok();
    t.check("module_loads_dev_node_0600", module_loads());
    t.check(
        "aging_0x8_promotes_device_accessed",
        with_secondary_walk(&t, &cg),
    );
    t.check("aging_without_0x8_is_6_12", without_secondary_walk(&t, &cg));
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
    drop(cg);
    drop(guard);
    t.finish();
}
