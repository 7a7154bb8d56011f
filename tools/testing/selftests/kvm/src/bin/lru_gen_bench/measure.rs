// SPDX-License-Identifier: GPL-2.0
//! The measurements: for each point a VM and the floor process exist
//! together, and the columns of each repetition run in an order rotated
//! by the repetition (r = 0: on, off, floor; r = 1: off, floor, on; ...),
//! so that a drift over the run (page cache, host load, the TCG JIT's
//! caches) spreads over every column instead of biasing the one measured
//! last.

use crate::floor::Floor;
use crate::model::{key, Column, Hold, Mode, Point, Rounds, Stall};
use crate::Opts;
use anyhow::{Context, Result};
use mglru_selftest::aging;
use mglru_selftest::features::{self, caps};
use mglru_selftest::kvm::{Access, Backing, TouchVm, PAGE_SIZE};
use mglru_selftest::memcg::Memcg;
use mglru_selftest::probe::{self, Probe};
use mglru_selftest::timing::timed;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

/// 6.12's capabilities (the base kernel's default): the series' 0x8 off.
pub const OFF: u32 = caps::CORE | caps::MM_WALK | caps::NONLEAF_YOUNG;
pub const ON: u32 = OFF | caps::SECONDARY_MMU_WALK;
/// The floor's capabilities, on both kernels: without a secondary MMU 0x8
/// changes nothing, and the same mask keeps floor(series)/floor(base) a
/// pure comparison of the two boots.
pub const FLOOR_CAPS: u32 = OFF;

/// An aging-pass column: a capability mask over the VM, or the floor.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PassCol {
    Vm(&'static str, u32),
    Floor,
}

impl PassCol {
    fn key(self) -> &'static str {
        match self {
            PassCol::Vm(k, _) => k,
            PassCol::Floor => key::FLOOR,
        }
    }
}

/// What a run measures on its kernel.
pub struct Plan {
    /// Aging-pass columns of a grid point.
    pub pass: Vec<PassCol>,
    /// Re-fault-round states: aging looping under a mask, or none.
    pub rounds: Vec<(&'static str, Option<u32>)>,
    /// The VM-only columns (THP accuracy, the nested-heavy point).
    pub vm: Vec<PassCol>,
}

impl Plan {
    pub fn new(mode: Mode) -> Plan {
        match mode {
            Mode::Base => Plan {
                pass: vec![PassCol::Vm(key::BASE, OFF), PassCol::Floor],
                rounds: vec![(key::NONE, None), (key::BASE, Some(OFF))],
                vm: vec![PassCol::Vm(key::BASE, OFF)],
            },
            _ => Plan {
                pass: vec![
                    PassCol::Vm(key::ON, ON),
                    PassCol::Vm(key::OFF, OFF),
                    PassCol::Floor,
                ],
                rounds: vec![
                    (key::NONE, None),
                    (key::ON, Some(ON)),
                    (key::OFF, Some(OFF)),
                ],
                vm: vec![PassCol::Vm(key::ON, ON), PassCol::Vm(key::OFF, OFF)],
            },
        }
    }
}

/// The column indices of repetition `r` out of `k` columns: `0..k`
/// rotated left by `r`.
pub fn rotation(k: usize, r: usize) -> impl Iterator<Item = usize> {
    (0..k).map(move |i| (i + r) % k)
}

pub fn progress(start: Instant, what: &str) {
    eprintln!("[{:7.1}s] {what}", start.elapsed().as_secs_f64());
}

/// Measured passes of `cols`, `o.repeat` times in rotating order. Before
/// each VM pass `touch(vm, count, stride)` reads every `stride`-th page
/// (`count` pages); before each floor pass the floor process does.
fn passes(
    o: &Opts,
    cols: &[PassCol],
    vm: &mut TouchVm,
    cg: &Memcg,
    mut floor: Option<(&mut Floor, &Memcg)>,
    touch: impl Fn(&mut TouchVm, usize, usize) -> Result<()>,
) -> Result<Vec<(String, Column)>> {
    let pages = vm.mem.pages();
    let stride = o.stride as usize;
    let count = pages.div_ceil(stride);
    let (t, u) = (count as u64, (pages - count) as u64);
    let mut out: Vec<(String, Column)> = cols
        .iter()
        .map(|c| (c.key().to_owned(), Column::default()))
        .collect();
    for r in 0..o.repeat as usize {
        for i in rotation(cols.len(), r) {
            let p = match cols[i] {
                PassCol::Vm(_, mask) => {
                    features::set_lru_gen_caps(mask)?;
                    aging::measured_pass(cg, t, u, || touch(vm, count, stride))?
                }
                PassCol::Floor => {
                    let (f, fcg) = floor.as_mut().context("no floor process")?;
                    features::set_lru_gen_caps(FLOOR_CAPS)?;
                    aging::measured_pass(fcg, t, u, || f.touch())?
                }
            };
            out[i].1.add(&p);
        }
    }
    Ok(out)
}

/// The PTE lock's hold time spent on secondary MMUs, per table: `n`
/// passes per VM column of `cols` (rotating) with `lru_gen_probe` timing
/// the notifier calls. Separate from the timed passes: the probe's traps
/// slow every call, 6.12's per-page ones most.
fn hold_times(
    n: u32,
    cols: &[PassCol],
    vm: &mut TouchVm,
    cg: &Memcg,
    stride: usize,
    touch: impl Fn(&mut TouchVm, usize, usize) -> Result<()>,
) -> Result<Vec<(String, Hold)>> {
    let vm_cols: Vec<(&'static str, u32)> = cols
        .iter()
        .filter_map(|c| match *c {
            PassCol::Vm(k, mask) => Some((k, mask)),
            PassCol::Floor => None,
        })
        .collect();
    if n == 0 || vm_cols.is_empty() {
        return Ok(Vec::new());
    }
    let count = vm.mem.pages().div_ceil(stride);
    let probe = Probe::load(probe::Mode::Time)
        .context("loading lru_gen_probe (--hold-passes 0 to skip)")?;
    let mut samples: Vec<Vec<probe::Sample>> = vec![Vec::new(); vm_cols.len()];
    for r in 0..n as usize {
        for i in rotation(vm_cols.len(), r) {
            features::set_lru_gen_caps(vm_cols[i].1)?;
            touch(vm, count, stride)?;
            probe.clear()?;
            aging::age_once(cg)?;
            samples[i].extend(probe.samples()?);
        }
    }
    Ok(vm_cols
        .iter()
        .zip(samples)
        .map(|(&(k, _), s)| (k.to_owned(), Hold::of(&s, n)))
        .collect())
}

/// Re-fault rounds accumulating into one column.
#[derive(Default)]
struct RoundAcc {
    round_ms: Vec<f64>,
    lat_ns: Vec<f64>,
    rep_max_ns: Vec<f64>,
    passes: u64,
}

/// One re-fault round of the first `nv` vCPUs over the first `pages` pages
/// of guest memory: a quarter of them discarded on the host, then every one
/// written by the guest, timed per page; with aging passes (over all guest
/// memory) looping meanwhile under `mask` (None: no aging).
#[allow(clippy::too_many_arguments)]
fn round(
    vm: &mut TouchVm,
    cg: &Memcg,
    r: usize,
    nv: usize,
    pages: usize,
    mask: Option<u32>,
    acc: &mut RoundAcc,
    khz: f64,
) -> Result<()> {
    if let Some(m) = mask {
        features::set_lru_gen_caps(m)?;
    }
    let q = pages / 4;
    let first = (r % 4) * q;
    vm.mem.discard(first, q)?;
    let stop = AtomicBool::new(false);
    let passes = AtomicU64::new(0);
    let (res, t) = std::thread::scope(|s| {
        let ager = mask.map(|_| {
            s.spawn(|| -> Result<()> {
                while !stop.load(Ordering::Relaxed) {
                    aging::age_once(cg)?;
                    passes.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            })
        });
        let (res, t) = timed(|| vm.timed_write_with(nv, 0, pages));
        stop.store(true, Ordering::Relaxed);
        let aged = ager.map_or(Ok(()), |a| {
            a.join()
                .map_err(|_| anyhow::anyhow!("aging thread panicked"))?
        });
        (res.and_then(|l| aged.map(|()| l)), t)
    });
    let lat = res?;
    acc.round_ms.push(t.as_secs_f64() * 1e3);
    acc.passes += passes.load(Ordering::Relaxed);
    let ns: Vec<f64> = lat[first..first + q]
        .iter()
        .map(|&c| c as f64 * 1e6 / khz)
        .collect();
    acc.rep_max_ns
        .push(ns.iter().copied().fold(f64::NAN, f64::max));
    acc.lat_ns.extend(ns);
    Ok(())
}

/// `o.repeat` rounds of every state of `plan`, in rotating order; `before`
/// runs before each round.
#[allow(clippy::too_many_arguments)]
fn rounds(
    o: &Opts,
    plan: &Plan,
    vm: &mut TouchVm,
    cg: &Memcg,
    nv: usize,
    window: usize,
    khz: f64,
    mut before: impl FnMut(&mut TouchVm) -> Result<()>,
) -> Result<Vec<(String, Rounds)>> {
    let mut accs: Vec<RoundAcc> = plan.rounds.iter().map(|_| RoundAcc::default()).collect();
    for r in 0..o.repeat as usize {
        for i in rotation(plan.rounds.len(), r) {
            before(vm)?;
            round(vm, cg, r, nv, window, plan.rounds[i].1, &mut accs[i], khz)?;
        }
    }
    Ok(plan
        .rounds
        .iter()
        .zip(accs)
        .map(|((k, _), a)| {
            (
                k.to_string(),
                Rounds {
                    round_ms: a.round_ms,
                    aging_passes: a.passes,
                    stall: Stall::of(&a.lat_ns, &a.rep_max_ns),
                },
            )
        })
        .collect())
}

fn thp_accuracy(o: &Opts, plan: &Plan, cg: &Memcg, bytes: usize) -> Result<Vec<(String, Column)>> {
    let mut vm = TouchVm::new(bytes, 2, Backing::Thp)?;
    let pages = vm.mem.pages();
    vm.touch_all(0, pages, Access::Write(0x7468_7021))?;
    let huge = (2 << 20) / PAGE_SIZE;
    // Every other THP, through one page each.
    let count = pages.div_ceil(2 * huge);
    let touched = (count * huge).min(pages) as u64;
    let mut out: Vec<(String, Column)> = plan
        .vm
        .iter()
        .map(|c| (c.key().to_owned(), Column::default()))
        .collect();
    for r in 0..o.repeat.min(3) as usize {
        for i in rotation(plan.vm.len(), r) {
            let PassCol::Vm(_, mask) = plan.vm[i] else {
                continue;
            };
            features::set_lru_gen_caps(mask)?;
            let p = aging::measured_pass(cg, touched, pages as u64 - touched, || {
                vm.touch(0, 0, count, 2 * huge, Access::Read)
            })?;
            out[i].1.add(&p);
        }
    }
    Ok(out)
}

fn size(b: usize) -> String {
    if b >= 1 << 30 && b.is_multiple_of(1 << 30) {
        format!("{}G", b >> 30)
    } else {
        format!("{}M", b >> 20)
    }
}

/// Names of `cols` for progress lines.
fn names(cols: &[PassCol]) -> String {
    cols.iter().map(|c| c.key()).collect::<Vec<_>>().join("/")
}

/// One grid point: `v` vCPUs of `m` bytes each.
pub fn run_point(
    o: &Opts,
    plan: &Plan,
    cg: &Memcg,
    floor_cg: &Memcg,
    m: usize,
    v: u32,
    start: Instant,
) -> Result<Point> {
    let t0 = Instant::now();
    let total = m * v as usize;
    let label = format!("{} x {} vCPUs", size(m), v);
    let mut pt = Point {
        mem_per_vcpu_mib: (m >> 20) as u64,
        vcpus: v,
        pages: (total / PAGE_SIZE) as u64,
        ..Default::default()
    };
    let mut vm = TouchVm::new(total, v as usize, Backing::Anon4k)?;
    let pages = vm.mem.pages();
    progress(start, &format!("{label}: faulting in {} MiB", total >> 20));
    vm.touch_all(0, pages, Access::Write(0x6265_6e63))?;
    progress(
        start,
        &format!("{label}: floor process of {} MiB", total >> 20),
    );
    let mut floor = Floor::spawn(floor_cg, total, o.stride as usize)?;
    progress(
        start,
        &format!(
            "{label}: aging passes, {} x {} rotating",
            names(&plan.pass),
            o.repeat
        ),
    );
    pt.pass = passes(
        o,
        &plan.pass,
        &mut vm,
        cg,
        Some((&mut floor, floor_cg)),
        |vm, count, stride| vm.touch(0, 0, count, stride, Access::Read),
    )?;
    drop(floor);
    if o.hold_passes > 0 {
        progress(
            start,
            &format!(
                "{label}: PTE lock hold times, {} x {} with lru_gen_probe",
                names(&plan.vm),
                o.hold_passes
            ),
        );
    }
    pt.hold = hold_times(
        o.hold_passes,
        &plan.pass,
        &mut vm,
        cg,
        o.stride as usize,
        |vm, count, stride| vm.touch(0, 0, count, stride, Access::Read),
    )?;
    // Leave a CPU of the test VM to the aging thread.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let nv = (v as usize).min(cpus.saturating_sub(1)).max(1);
    let khz = vm.tsc_khz()? as f64;
    let window = pages.min(o.round_mem / PAGE_SIZE).max(4);
    (pt.round_vcpus, pt.round_mib) = (nv as u32, ((window * PAGE_SIZE) >> 20) as u64);
    progress(
        start,
        &format!(
            "{label}: re-fault rounds on {nv} vCPUs over {} MiB, aging {} x {} rotating",
            pt.round_mib,
            plan.rounds
                .iter()
                .map(|r| r.0)
                .collect::<Vec<_>>()
                .join("/"),
            o.repeat
        ),
    );
    pt.rounds = rounds(o, plan, &mut vm, cg, nv, window, khz, |_| Ok(()))?;
    drop(vm);
    if o.thp_point != 0 && m == o.thp_point && v == 2 {
        progress(
            start,
            &format!("{label}: THP accuracy, {} rotating", names(&plan.vm)),
        );
        pt.thp = thp_accuracy(o, plan, cg, total)?;
    }
    pt.seconds = t0.elapsed().as_secs_f64();
    progress(start, &format!("{label}: done in {:.0}s", pt.seconds));
    Ok(pt)
}

/// The nested-heavy point: a 1-vCPU VM whose L2 guest maps all of its
/// memory (accessed state in shadow SPTEs, aged through rmaps under
/// `mmu_lock`). Before every pass L2 alone reads every `stride`-th page,
/// so what the pass finds young is in shadow SPTEs only; before every
/// round L2 reads all memory again, so the shadow MMU maps it all while
/// aging loops and L1 re-faults. No floor: the grid's points have it.
pub fn run_nested_point(
    o: &Opts,
    plan: &Plan,
    cg: &Memcg,
    bytes: usize,
    start: Instant,
) -> Result<Point> {
    let t0 = Instant::now();
    let label = format!("nested-heavy {}", size(bytes));
    let mut vm = TouchVm::new_with_svm(bytes, 1, Backing::Anon4k)?;
    let pages = vm.mem.pages();
    progress(start, &format!("{label}: L1 faults in, L2 maps all of it"));
    vm.touch_all(0, pages, Access::Write(0x6e65_7374))?;
    vm.run_nested_read(0, 0, pages, 1)?;
    let mut pt = Point {
        mem_per_vcpu_mib: (bytes >> 20) as u64,
        vcpus: 1,
        pages: pages as u64,
        ..Default::default()
    };
    progress(
        start,
        &format!(
            "{label}: aging passes, {} x {} rotating",
            names(&plan.vm),
            o.repeat
        ),
    );
    pt.pass = passes(o, &plan.vm, &mut vm, cg, None, |vm, count, stride| {
        vm.run_nested_read(0, 0, count, stride)
    })?;
    let khz = vm.tsc_khz()? as f64;
    let window = pages.min(o.round_mem / PAGE_SIZE).max(4);
    (pt.round_vcpus, pt.round_mib) = (1, ((window * PAGE_SIZE) >> 20) as u64);
    progress(
        start,
        &format!(
            "{label}: L1 re-fault rounds over {} MiB, rotating x {}",
            pt.round_mib, o.repeat
        ),
    );
    pt.rounds = rounds(o, plan, &mut vm, cg, 1, window, khz, |vm| {
        vm.run_nested_read(0, 0, pages, 1)
    })?;
    pt.seconds = t0.elapsed().as_secs_f64();
    progress(start, &format!("{label}: done in {:.0}s", pt.seconds));
    Ok(pt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_shifts_the_order_by_the_repetition() {
        let cols = ["on", "off", "floor"];
        let order = |r| rotation(3, r).map(|i| cols[i]).collect::<Vec<_>>();
        assert_eq!(order(0), ["on", "off", "floor"]);
        assert_eq!(order(1), ["off", "floor", "on"]);
        assert_eq!(order(2), ["floor", "on", "off"]);
        assert_eq!(order(3), order(0));
        // Over k repetitions every column is measured once in each slot.
        for slot in 0..3 {
            let mut seen: Vec<usize> = (0..3).map(|r| rotation(3, r).nth(slot).unwrap()).collect();
            seen.sort();
            assert_eq!(seen, [0, 1, 2]);
        }
        assert_eq!(rotation(1, 5).collect::<Vec<_>>(), [0]);
    }

    #[test]
    fn plans() {
        let s = Plan::new(Mode::Series);
        assert_eq!(names(&s.pass), "on/off/floor");
        assert_eq!(
            s.rounds.iter().map(|r| r.0).collect::<Vec<_>>(),
            ["none", "on", "off"]
        );
        let b = Plan::new(Mode::Base);
        assert_eq!(names(&b.pass), "base/floor");
        assert_eq!(b.rounds, [(key::NONE, None), (key::BASE, Some(0x7))]);
        assert_eq!((ON, OFF, FLOOR_CAPS), (0xf, 0x7, 0x7));
    }
}
