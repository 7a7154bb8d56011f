// SPDX-License-Identifier: GPL-2.0
//! Quiet checkpoints: with the chaos threads of this process paused, what
//! was touched only through a secondary MMU since the last pass must be
//! promoted by the next one, page by page.
//!
//! After the measured pass both secondary MMUs are detached and every older
//! generation is evicted, so `/proc/self/pagemap` shows a page the pass
//! missed as swapped out; control pages touched after the pass show that
//! the eviction is not blind. The checkpoints cycle through the [`Mode`]s
//! and check the walk's and the mirror's counters against what was touched.
//! On 7.x each checkpoint ends by discarding its memory, so that the next
//! one does not refault what it evicted (see [`fresh_pages_v7`]).

use crate::loops::{ensure_loaded, walk_cqse};
use crate::opts::Opts;
use crate::shared::{retry_eagain, Abi, Rng, Shared};
use anyhow::{bail, Context, Result};
use mglru_selftest::aging::{self, NID};
use mglru_selftest::features::{self, caps};
use mglru_selftest::kvm::{Access, Backing, HostMem, TouchVm, PAGE_SIZE};
use mglru_selftest::lru_mirror::{self, Mirror};
use mglru_selftest::memcg::Memcg;
use mglru_selftest::pagemap::{self, PageState};
use mglru_selftest::{lru_gen, sys};
use std::time::{Duration, Instant};

/// Checkpoint VM and mirror sizes.
const CKPT_VM: usize = 8 << 20;
const CKPT_MIRROR: usize = 4 << 20;
/// Least number of checkpoint mirror pages left untouched (the eviction
/// and control checks need some on each side).
const MIN_UNTOUCHED: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// 0x8 on, the mirror answers fast.
    On,
    /// 0x8 off: 6.12's per-page `clear_young()` only.
    Off,
    /// 0x8 on, the mirror's fast-only op fails every page.
    FailAll,
    /// 0x8 on, the mirror answers the first k pages of a batch, fails the rest.
    FailAfter(u16),
}

impl Mode {
    /// The mode of the `n`th checkpoint: the four in turn.
    fn of(n: u64, rng: &mut Rng) -> Mode {
        match n % 4 {
            0 => Mode::On,
            1 => Mode::Off,
            2 => Mode::FailAll,
            _ => Mode::FailAfter(rng.range(1, 256) as u16),
        }
    }
    /// Also the count `checkpoints: NAME` of the report.
    pub fn name(self) -> &'static str {
        match self {
            Mode::On => "0x8 on",
            Mode::Off => "0x8 off",
            Mode::FailAll => "0x8 on, mirror fails every page",
            Mode::FailAfter(_) => "0x8 on, mirror fails after k pages",
        }
    }
    /// The violation kind of this mode's problems.
    fn kind(self) -> &'static str {
        match self {
            Mode::On | Mode::Off => "checkpoint",
            _ => "fallback",
        }
    }
    /// The mirror device's failure knob in this mode.
    fn knob(self) -> u64 {
        match self {
            Mode::FailAll => lru_mirror::CONFIG_FAIL_FAST,
            Mode::FailAfter(k) => lru_mirror::config_fail_after(k),
            _ => 0,
        }
    }
}

/// The checkpoint's own memory: a VM and a mirrored range, in the
/// orchestrator's memcg, which nothing else touches.
pub struct Ckpt {
    vm: TouchVm,
    mem: HostMem,
}

impl Ckpt {
    /// Creates the checkpoint VM and range and has KVM map the VM's memory.
    pub fn new(sh: &Shared) -> Result<Self> {
        let mut ck = Ckpt {
            vm: TouchVm::new(CKPT_VM, 1, Backing::Anon4k)?,
            mem: HostMem::new(CKPT_MIRROR, Backing::Anon4k)?,
        };
        ck.map(sh)?;
        Ok(ck)
    }

    /// Faults the checkpoint VM's memory back in through its vCPU, so that
    /// KVM maps the checkpoint memcg between checkpoints too (its aging
    /// loop then ages memory a secondary MMU maps).
    fn map(&mut self, sh: &Shared) -> Result<()> {
        let pages = self.vm.mem.pages();
        self.vm.touch_all(0, pages, Access::Write(0x636b))?;
        sh.ckpt_live.set(true);
        Ok(())
    }
}

/// Runs checkpoints in this thread until `--duration` after `start`: the
/// first after `--checkpoint-every` (at most half the duration), each next
/// one `--checkpoint-every` after the end of the previous one; then, at the
/// end, one of each mode that did not run yet. Each holds the gate for
/// writing.
pub fn run_checkpoints(
    sh: &Shared,
    ck: &mut Ckpt,
    cg: &Memcg,
    o: &Opts,
    start: Instant,
    rng: &mut Rng,
) {
    let mut n = 0u64;
    let end = start + o.duration;
    let mut next = Instant::now() + o.checkpoint_every.min(o.duration / 2);
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(100));
        if Instant::now() < next {
            continue;
        }
        gated_checkpoint(sh, ck, cg, Mode::of(n, rng), rng);
        n += 1;
        next = Instant::now() + o.checkpoint_every;
    }
    while n < 4 {
        gated_checkpoint(sh, ck, cg, Mode::of(n, rng), rng);
        n += 1;
    }
}

/// One checkpoint with the chaos threads paused; its failure is a
/// violation.
fn gated_checkpoint(sh: &Shared, ck: &mut Ckpt, cg: &Memcg, mode: Mode, rng: &mut Rng) {
    let w = sh.gate.write().unwrap();
    if let Err(e) = checkpoint(sh, ck, cg, mode, rng) {
        sh.violation("checkpoint", format!("{}: {e:#}", mode.name()));
    }
    drop(w);
}

/// Pages touched through the secondary MMUs only, between the passes.
struct Touched {
    /// Guest pages, a map of all of them.
    v: Vec<bool>,
    /// Mirror pages, a map of all of them.
    m: Vec<bool>,
    /// How many of each.
    nv: u64,
    nm: u64,
}

/// The measured pass: the generation it filled, its walk stats and what
/// the mirror counted meanwhile.
struct Measured {
    seq: u64,
    c: u64,
    q: u64,
    s: u64,
    e: u64,
    d: lru_mirror::Stats,
}

/// Untouched pages touched through the secondary MMUs after the pass: no
/// pass promoted them, so the eviction must take them.
struct Controls {
    v: Vec<usize>,
    m: Vec<usize>,
}

fn checkpoint(sh: &Shared, ck: &mut Ckpt, cg: &Memcg, mode: Mode, rng: &mut Rng) -> Result<()> {
    let started = Instant::now();
    sh.ckpt_live.set(false);
    let module = sh.module.lock().unwrap();
    let dev = open_device(sh, mode)?;
    let maddr = ck.mem.as_ptr() as usize;
    make_all_old(ck, &dev, cg)?;
    let t = touch_subsets(ck, &dev, rng)?;
    let p = measured_pass(sh, &dev, cg)?;
    let mut bad = counter_problems(mode, &p, t.nv, t.nm);
    let ctl = touch_controls(ck, &dev, &t)?;
    if ctl.v.is_empty() || ctl.m.is_empty() {
        bad.push(format!(
            "{} guest and {} mirror control pages: each side needs one",
            ctl.v.len(),
            ctl.m.len()
        ));
    }
    detach_and_evict(ck, &dev, cg, p.seq)?;
    let vstate = pagemap::states(ck.vm.mem.as_ptr() as usize, t.v.len())?;
    let mstate = pagemap::states(maddr, t.m.len())?;
    let (evicted, untouched) = promotion_problems(&t, &ctl, &vstate, &mstate, &mut bad);
    if sh.abi == Abi::V7 {
        if evicted < untouched {
            // The tiers' refault and protection counts say whether 7.x's
            // working-set protection kept them (see `fresh_pages_v7`).
            print_tiers(cg);
        }
        fresh_pages_v7(ck, &t)?;
    }
    dev.config(0).context("CONFIG 0")?;
    drop(dev);
    drop(module);
    // KVM maps the checkpoint memcg again until the next checkpoint.
    ck.map(sh)?;
    let k = match mode {
        Mode::FailAfter(k) => format!(", k {k}"),
        _ => String::new(),
    };
    let (nv, nm, d) = (t.nv, t.nm, &p.d);
    println!(
        "# checkpoint ({}{k}, {:.1} s): {nv} guest + {nm} mirror pages touched through secondary MMUs, all promoted: {}; \
         {evicted}/{untouched} untouched evicted; C={} Q={} S={} E={}; mirror fast {}/{} young, {} failed, fallback {} young",
        mode.name(),
        started.elapsed().as_secs_f64(),
        if bad.is_empty() { "yes" } else { "NO" },
        p.c,
        p.q,
        p.s,
        p.e,
        d.fast_young,
        d.fast_pages,
        d.fast_failed,
        d.slow_young
    );
    for b in bad {
        sh.violation(mode.kind(), format!("{}: {b}", mode.name()));
    }
    sh.count(&format!("checkpoints: {}", mode.name()), 1);
    sh.count("checkpoint pages checked", (t.v.len() + t.m.len()) as u64);
    Ok(())
}

/// Loads the module, opens a device with the mode's failure knob and sets
/// the lru_gen capabilities of the mode (all, or all but 0x8).
fn open_device(sh: &Shared, mode: Mode) -> Result<Mirror> {
    ensure_loaded(sh)?;
    let dev = Mirror::open()?;
    dev.config(mode.knob()).context("CONFIG")?;
    let all = caps::CORE | caps::MM_WALK | caps::NONLEAF_YOUNG | caps::SECONDARY_MMU_WALK;
    features::set_lru_gen_caps(if mode == Mode::Off {
        all & !caps::SECONDARY_MMU_WALK
    } else {
        all
    })?;
    Ok(dev)
}

/// Everything present and mapped by both secondary MMUs (this faults back
/// what the last checkpoint evicted), then everything old (two passes).
fn make_all_old(ck: &mut Ckpt, dev: &Mirror, cg: &Memcg) -> Result<()> {
    let (vpages, mpages) = (ck.vm.mem.pages(), ck.mem.pages());
    let maddr = ck.mem.as_ptr() as usize;
    ck.mem.fill(0x636b_7074);
    ck.vm.touch_all(0, vpages, Access::Write(0x636b))?;
    retry_eagain(|| dev.mirror(maddr, ck.mem.len(), 0)).context("MIRROR")?;
    access_all(dev, maddr, mpages, "all")?;
    sys::drain_lru_batches()?;
    aging::age_once(cg)?;
    aging::age_once(cg)?;
    Ok(())
}

/// Touches subsets through the secondary MMUs only: the guest reads every
/// 2nd to 5th page, the device accesses random ranges.
fn touch_subsets(ck: &mut Ckpt, dev: &Mirror, rng: &mut Rng) -> Result<Touched> {
    let (vpages, mpages) = (ck.vm.mem.pages(), ck.mem.pages());
    let maddr = ck.mem.as_ptr() as usize;
    let vstride = rng.range(2, 5) as usize;
    let vfirst = rng.range(0, vstride as u64 - 1) as usize;
    let vtouched = strided(vfirst, vstride, vpages);
    ck.vm
        .touch(0, vfirst, vtouched.len(), vstride, Access::Read)?;
    let (ranges, m) = mirror_ranges(mpages, rng);
    for &(first, len) in &ranges {
        access_all(dev, maddr + first * PAGE_SIZE, len, "subset")?;
    }
    Ok(Touched {
        nv: vtouched.len() as u64,
        v: vt_of(&vtouched, vpages),
        nm: m.iter().filter(|&&t| t).count() as u64,
        m,
    })
}

/// The measured pass, its walk stats and the mirror's counters over it.
fn measured_pass(sh: &Shared, dev: &Mirror, cg: &Memcg) -> Result<Measured> {
    let before = dev.stats()?;
    let (seq, _) = aging::age_once(cg)?;
    let d = dev.stats()?.since(&before);
    sh.count("aging passes in checkpoints", 3);
    let node = lru_gen::node_full_of(&cg.path(), NID)?;
    let walk = node
        .gen(seq)
        .with_context(|| format!("generation {seq} of the measured pass is not listed"))?
        .walk
        .as_ref();
    let (c, q, s, e) = walk_cqse(walk).with_context(|| format!("generation {seq}"))?;
    Ok(Measured { seq, c, q, s, e, d })
}

/// What is wrong with the measured pass's counters in `mode`, given `nv`
/// guest and `nm` mirror pages touched: they must match exactly.
fn counter_problems(mode: Mode, p: &Measured, nv: u64, nm: u64) -> Vec<String> {
    let (c, q, s, e, d) = (p.c, p.q, p.s, p.e, &p.d);
    let mut bad = Vec::new();
    if mode == Mode::Off {
        if c + q + s + e != 0 || d.fast_calls != 0 {
            bad.push(format!(
                "0x8 off but the fast-only op ran: C={c} Q={q} S={s} E={e}, mirror {d:?}"
            ));
        }
        if d.slow_young != nm {
            bad.push(format!(
                "clear_young() found {} young mirror pages, {nm} touched",
                d.slow_young
            ));
        }
        return bad;
    }
    if s > q || e > q || c > q || q == 0 {
        bad.push(format!("walk stats inconsistent: C={c} Q={q} S={s} E={e}"));
    }
    let fast_mirror = if mode == Mode::FailAll {
        0
    } else {
        d.fast_young
    };
    // The guest's code page and the page tables its walks read (code
    // memslot, 5 pages) are young too, its log page is not.
    if s < nv + fast_mirror || s > nv + fast_mirror + 8 {
        bad.push(format!(
            "S={s} young answers, but {nv} guest pages touched and the mirror answered {fast_mirror}"
        ));
    }
    if d.fast_young + d.slow_young != nm {
        bad.push(format!(
            "mirror: {} fast + {} fallback young answers, {nm} pages touched ({d:?})",
            d.fast_young, d.slow_young
        ));
    }
    if mode == Mode::FailAll
        && (d.fast_young != 0 || d.fast_failed != d.fast_pages || d.fast_pages == 0 || e == 0)
    {
        bad.push(format!("FAIL_FAST: the mirror answered: E={e}, {d:?}"));
    }
    if let Mode::FailAfter(k) = mode {
        // The mirror answers the first k pages it is asked of each call
        // and fails the rest: at least asked - calls * k, which is > 0
        // unless every call asked k pages or fewer (a walk that resumed
        // mid-table), and then E must show them too.
        let least = d.fast_pages.saturating_sub(d.fast_calls * u64::from(k));
        if d.fast_failed < least || (least > 0 && e < least) {
            bad.push(format!(
                "FAIL_AFTER {k}: E={e}, the mirror failed {} pages, at least {least} \
                 expected: {d:?}",
                d.fast_failed
            ));
        }
    }
    if mode == Mode::On && d.slow_young != 0 {
        bad.push(format!(
            "0x8 on, nothing failed, yet the fallback found young pages: {d:?}"
        ));
    }
    bad
}

/// Negative controls: up to 8 untouched pages of each side, touched
/// through the secondary MMUs only now, after the pass.
fn touch_controls(ck: &mut Ckpt, dev: &Mirror, t: &Touched) -> Result<Controls> {
    let maddr = ck.mem.as_ptr() as usize;
    let v: Vec<usize> = (0..t.v.len())
        .filter(|&i| !t.v[i])
        .step_by(97)
        .take(8)
        .collect();
    for &i in &v {
        ck.vm.touch(0, i, 1, 1, Access::Read)?;
    }
    let m: Vec<usize> = (0..t.m.len())
        .filter(|&i| !t.m[i])
        .step_by(53)
        .take(8)
        .collect();
    for &i in &m {
        access_all(dev, maddr + i * PAGE_SIZE, 1, "control")?;
    }
    Ok(Controls { v, m })
}

/// Detaches both secondary MMUs, so that eviction cannot ask them (its
/// folio_referenced() and look-around would keep a page that is young
/// there, hiding a page the pass missed): unmirror, and delete the memslot
/// (KVM zaps its SPTEs). Then evicts every generation older than the
/// pass's `seq`: a touched page the pass did not promote is swapped out.
/// The memslot comes back either way.
fn detach_and_evict(ck: &mut Ckpt, dev: &Mirror, cg: &Memcg, seq: u64) -> Result<()> {
    dev.unmirror().context("UNMIRROR")?;
    ck.vm.set_data_slot(false)?;
    let evict = lru_gen::evict(cg.lru_gen_id()?, NID, seq - 1, 200, 1 << 30)
        .with_context(|| format!("evicting up to generation {}", seq - 1));
    ck.vm.set_data_slot(true)?;
    evict
}

/// 7.x: drops the checkpoint's memory (`MADV_DONTNEED`, which also frees
/// the swapped-out pages' swap slots and shadows), so that the next
/// checkpoint faults in fresh pages instead of refaulting what this one
/// evicted. 7.x's eviction protects `PG_workingset` folios (tier 3 of
/// sort_folio()) while that tier refaults more than tier 0
/// (get_tier_idx()), and restores `PG_workingset` on a recent refault
/// (lru_gen_refault()). The untouched pages are tier 3 by eviction (the
/// make-old pass promoted their second access), so refaulting the ~2000
/// evicted pages right after a checkpoint made tier 3's refaults dominate
/// and the next checkpoint's eviction moved every untouched page one
/// generation up (protected) instead of evicting it, blind. Fresh pages
/// leave that tier only the orchestrator's own few refaults, below the
/// controller's threshold (`MIN_LRU_BATCH`, 64). On 6.12 a promotion
/// clears `PG_workingset` (folio_update_gen() clears `LRU_REFS_FLAGS`), so
/// the untouched pages are tier 0 at eviction, which is never protected:
/// the checkpoints refault their pages there as before.
fn fresh_pages_v7(ck: &mut Ckpt, t: &Touched) -> Result<()> {
    ck.vm
        .mem
        .discard(0, t.v.len())
        .context("discarding the VM's memory")?;
    ck.mem
        .discard(0, t.m.len())
        .context("discarding the mirrored range")?;
    Ok(())
}

/// Prints the checkpoint memcg's `lru_gen_full` block: per generation and
/// tier, what was refaulted, evicted and protected.
fn print_tiers(cg: &Memcg) {
    let text = match sys::read(lru_gen::LRU_GEN_FULL_DEBUGFS) {
        Ok(t) => t,
        Err(e) => return println!("# reading {}: {e:#}", lru_gen::LRU_GEN_FULL_DEBUGFS),
    };
    let path = cg.path();
    let mut on = false;
    for l in text.lines() {
        if l.starts_with("memcg") {
            on = l.split_whitespace().nth(2) == Some(path.as_str());
        }
        if on {
            println!("# {l}");
        }
    }
}

/// After the eviction: every touched page present (promoted), every
/// control and every other untouched page swapped out (else the check is
/// blind). Adds what is wrong to `bad`; returns the untouched pages
/// evicted and all untouched pages.
fn promotion_problems(
    t: &Touched,
    ctl: &Controls,
    vstate: &[PageState],
    mstate: &[PageState],
    bad: &mut Vec<String>,
) -> (usize, usize) {
    let lost_v: Vec<usize> = (0..t.v.len())
        .filter(|&i| t.v[i] && vstate[i] != PageState::Present)
        .collect();
    let lost_m: Vec<usize> = (0..t.m.len())
        .filter(|&i| t.m[i] && mstate[i] != PageState::Present)
        .collect();
    if !lost_v.is_empty() || !lost_m.is_empty() {
        bad.push(format!(
            "touched but not promoted (evicted): {} of {} guest pages (first {:?}), {} of {} mirror pages (first {:?})",
            lost_v.len(),
            t.nv,
            lost_v.first(),
            lost_m.len(),
            t.nm,
            lost_m.first()
        ));
    }
    let kept_ctl = ctl
        .v
        .iter()
        .filter(|&&i| vstate[i] != PageState::Swapped)
        .count()
        + ctl
            .m
            .iter()
            .filter(|&&i| mstate[i] != PageState::Swapped)
            .count();
    if kept_ctl != 0 {
        bad.push(format!(
            "{kept_ctl} of {} control pages (touched after the pass) were not evicted: the check is blind",
            ctl.v.len() + ctl.m.len()
        ));
    }
    // Per side: every untouched page must have been evicted (nothing
    // promoted it), or the eviction did not reach what the check needs.
    let mut evicted = 0;
    let mut untouched = 0;
    for (side, st, t) in [("guest", vstate, &t.v), ("mirror", mstate, &t.m)] {
        let kept: Vec<usize> = (0..t.len())
            .filter(|&i| !t[i] && st[i] != PageState::Swapped)
            .collect();
        let u = t.iter().filter(|&&x| !x).count();
        if u == 0 || !kept.is_empty() {
            bad.push(format!(
                "eviction swapped out {} of {u} untouched {side} pages (first kept: {:?}): \
                 the check would be blind",
                u - kept.len(),
                kept.first()
            ));
        }
        evicted += u - kept.len();
        untouched += u;
    }
    (evicted, untouched)
}

/// `touched` (page indices) as a map of `pages` flags.
fn vt_of(touched: &[usize], pages: usize) -> Vec<bool> {
    let mut v = vec![false; pages];
    touched.iter().for_each(|&i| v[i] = true);
    v
}

/// Pages `first, first+stride, ...` below `pages`.
fn strided(first: usize, stride: usize, pages: usize) -> Vec<usize> {
    (first..pages).step_by(stride).collect()
}

/// `ACCESS` of `pages` pages from `addr` through the checkpoint's device,
/// which must reach every one of them: the touched set is what the device
/// accessed, so a page the mirror lost (an invalidation) is an error, not a
/// page the pass may miss.
fn access_all(dev: &Mirror, addr: usize, pages: usize, what: &str) -> Result<()> {
    let n = retry_eagain(|| dev.access(addr, pages * PAGE_SIZE))
        .with_context(|| format!("ACCESS {what}"))?;
    if n != pages as u64 {
        bail!("ACCESS {what}: the device accessed {n} of {pages} pages (the mirror lost some)");
    }
    Ok(())
}

/// Ranges `(first, len)` of the mirror's `pages` pages for the checkpoint
/// to access: 1-6 random ranges of up to a quarter each, drawn again in
/// the rare case that they leave fewer than [`MIN_UNTOUCHED`] pages alone.
fn mirror_ranges(pages: usize, rng: &mut Rng) -> (Vec<(usize, usize)>, Vec<bool>) {
    loop {
        let mut touched = vec![false; pages];
        let ranges: Vec<(usize, usize)> = (0..rng.range(1, 6))
            .map(|_| {
                let len = rng.range(1, pages as u64 / 4) as usize;
                let first = rng.range(0, (pages - len) as u64) as usize;
                touched[first..first + len].fill(true);
                (first, len)
            })
            .collect();
        if touched.iter().filter(|&&t| !t).count() >= MIN_UNTOUCHED {
            return (ranges, touched);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_ranges_leave_pages_untouched() {
        for seed in 1..2000 {
            let mut rng = Rng::new(seed);
            let (ranges, touched) = mirror_ranges(1024, &mut rng);
            assert!((1..=6).contains(&ranges.len()));
            let mut t = vec![false; 1024];
            for &(f, l) in &ranges {
                assert!(l >= 1 && f + l <= 1024);
                t[f..f + l].fill(true);
            }
            assert_eq!(t, touched);
            assert!(touched.iter().filter(|&&x| !x).count() >= MIN_UNTOUCHED);
        }
    }

    #[test]
    fn strided_pages() {
        assert_eq!(strided(1, 3, 10), vec![1, 4, 7]);
        assert_eq!(strided(0, 2, 5), vec![0, 2, 4]);
    }

    fn pass(c: u64, q: u64, s: u64, e: u64, d: lru_mirror::Stats) -> Measured {
        Measured {
            seq: 5,
            c,
            q,
            s,
            e,
            d,
        }
    }

    #[test]
    fn counters_must_match_what_was_touched() {
        let none = lru_mirror::Stats::default();
        // 0x8 off: no fast-only call, clear_young() finds the touched pages.
        let off = lru_mirror::Stats {
            slow_young: 7,
            ..none
        };
        assert!(counter_problems(Mode::Off, &pass(0, 0, 0, 0, off), 10, 7).is_empty());
        assert_eq!(
            counter_problems(Mode::Off, &pass(1, 512, 0, 0, off), 10, 7).len(),
            1
        );
        assert_eq!(
            counter_problems(Mode::Off, &pass(0, 0, 0, 0, off), 10, 8).len(),
            1
        );
        // 0x8 on: S covers the guest's touched pages, the mirror's fast
        // answers and at most 8 more (the code and page-table pages).
        let on = lru_mirror::Stats {
            fast_calls: 2,
            fast_pages: 1024,
            fast_young: 7,
            ..none
        };
        assert!(counter_problems(Mode::On, &pass(3, 3072, 18, 0, on), 10, 7).is_empty());
        assert!(!counter_problems(Mode::On, &pass(3, 3072, 16, 0, on), 10, 7).is_empty());
        assert!(!counter_problems(Mode::On, &pass(3, 3072, 26, 0, on), 10, 7).is_empty());
        let fell_back = lru_mirror::Stats {
            slow_young: 1,
            fast_young: 6,
            ..on
        };
        assert!(!counter_problems(Mode::On, &pass(3, 3072, 17, 0, fell_back), 10, 7).is_empty());
        // FAIL_FAST: every asked page failed, the fallback found them all.
        let failed = lru_mirror::Stats {
            fast_calls: 2,
            fast_pages: 1024,
            fast_failed: 1024,
            slow_young: 7,
            ..none
        };
        assert!(
            counter_problems(Mode::FailAll, &pass(3, 3072, 11, 1024, failed), 10, 7).is_empty()
        );
        assert!(!counter_problems(Mode::FailAll, &pass(3, 3072, 11, 0, failed), 10, 7).is_empty());
        // FAIL_AFTER 100: at least 1024 - 2 * 100 pages failed.
        let after = lru_mirror::Stats {
            fast_calls: 2,
            fast_pages: 1024,
            fast_young: 3,
            fast_failed: 824,
            slow_young: 4,
            ..none
        };
        let k = Mode::FailAfter(100);
        assert!(counter_problems(k, &pass(3, 3072, 13, 824, after), 10, 7).is_empty());
        assert!(!counter_problems(k, &pass(3, 3072, 13, 800, after), 10, 7).is_empty());
    }

    #[test]
    fn promotion_needs_touched_present_and_untouched_evicted() {
        use PageState::{Present as P, Swapped as S};
        let t = Touched {
            v: vec![true, false, false],
            m: vec![false, true, false],
            nv: 1,
            nm: 1,
        };
        let ctl = Controls {
            v: vec![1],
            m: vec![0],
        };
        let mut bad = Vec::new();
        assert_eq!(
            promotion_problems(&t, &ctl, &[P, S, S], &[S, P, S], &mut bad),
            (4, 4)
        );
        assert!(bad.is_empty(), "{bad:?}");
        // A touched page swapped out: the pass missed it.
        promotion_problems(&t, &ctl, &[S, S, S], &[S, P, S], &mut bad);
        assert_eq!(bad.len(), 1, "{bad:?}");
        // A control page kept: the eviction is blind (and an untouched
        // page kept).
        bad.clear();
        promotion_problems(&t, &ctl, &[P, P, S], &[S, P, S], &mut bad);
        assert_eq!(bad.len(), 2, "{bad:?}");
    }
}
