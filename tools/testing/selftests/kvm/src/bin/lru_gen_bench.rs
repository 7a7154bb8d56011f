// SPDX-License-Identifier: GPL-2.0
//! MGLRU aging of KVM guest memory: 0x8 off (6.12's per-page clear_young()
//! under mmu_lock), 0x8 on (batched fast-only answers) and the floor (the
//! same number of pages of a plain process, no secondary MMU), side by side
//! in one run on one kernel.
//!
//! A benchmark, not a test: it never asserts timings. For every point
//! (guest memory per vCPU x vCPUs) it measures, with n repetitions
//! interleaved (on, off, on, off, ...):
//!
//! - the aging-pass time and ns per page, and the pass's accuracy (touched
//!   pages promoted, untouched ones not);
//! - the guest's round time to re-fault a quarter of its memory and touch all
//!   of it, with aging passes looping on another CPU (0x8 on, off) or not;
//! - the guest's own per-page write latency (`rdtsc` in the guest) of the
//!   re-faulted pages during those rounds: p50, p99, max;
//! - then the floor, in the same memcg kind, after the VM is gone.
//!
//! Prints a table with mean ± stddev and each ratio's 95 % confidence
//! interval ("not significant" when it includes 1), and writes JSON plus
//! gnuplot data files for `scripts/bench.sh`.

use anyhow::{Context, Result};
use clap::Parser;
use mglru_selftest::aging::{self, Pass};
use mglru_selftest::features::{self, caps};
use mglru_selftest::kvm::{Access, Backing, HostMem, TouchVm, MAX_DATA, PAGE_SIZE};
use mglru_selftest::memcg::Memcg;
use mglru_selftest::timing::{ms, timed, Ratio, Stats};
use mglru_selftest::units::parse_size;
use serde_json::{json, Value};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const MEMCG: &str = "lru-gen-bench";
const ON: u32 = caps::CORE | caps::MM_WALK | caps::NONLEAF_YOUNG | caps::SECONDARY_MMU_WALK;
const OFF: u32 = ON & !caps::SECONDARY_MMU_WALK;

/// Benchmark of MGLRU aging over KVM guest memory: 0x8 off vs on vs a plain
/// process of the same size. Exit status 0 when every point was measured.
#[derive(Parser, Debug)]
#[command(name = "lru_gen_bench", version, about, long_about = None)]
struct Opts {
    /// Guest memory per vCPU, comma separated (K/M/G suffixes).
    #[arg(short = 'm', long, default_value = "64M,256M,1G", value_delimiter = ',',
          value_parser = parse_size)]
    mem_per_vcpu: Vec<usize>,
    /// vCPU counts, comma separated.
    #[arg(short = 'v', long, default_value = "1,2,4", value_delimiter = ',',
          value_parser = clap::value_parser!(u32).range(1..=16))]
    vcpus: Vec<u32>,
    /// Repetitions per column and point (aging passes, and rounds).
    #[arg(short = 'n', long, default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(2..=100))]
    repeat: u32,
    /// The guest (and the floor process) touches every STRIDE-th page.
    #[arg(short = 's', long, default_value_t = 2,
          value_parser = clap::value_parser!(u32).range(1..=512))]
    stride: u32,
    /// Largest total guest memory to run (points above it are skipped and
    /// reported); default: what the 32-bit guest can address.
    #[arg(long, value_parser = parse_size)]
    max_total: Option<usize>,
    /// Also measure THP accuracy (on and off) at this memory per vCPU with
    /// 2 vCPUs; 0 or "off" disables.
    #[arg(long, default_value = "256M", value_parser = parse_size_or_off)]
    thp_point: usize,
    /// Guest memory the re-fault rounds write (a quarter of it re-faulted
    /// each round), at most; aging still walks all of it. Keeps the rounds of
    /// the 1 GiB points from dominating the run time.
    #[arg(long, default_value = "128M", value_parser = parse_size)]
    round_mem: usize,
    /// Also run the nested-heavy point: a 1-vCPU VM of this size whose
    /// nested (L2) guest maps all of its memory through shadow SPTEs; 0 or
    /// "off" disables.
    #[arg(long, default_value = "64M", value_parser = parse_size_or_off)]
    nested_point: usize,
    /// Directory for bench.json and the plot data.
    #[arg(short = 'o', long, default_value = "results")]
    out: PathBuf,
}

/// A size, or 0 / "off" for none.
fn parse_size_or_off(s: &str) -> Result<usize, String> {
    match s.trim() {
        "0" | "off" => Ok(0),
        t => parse_size(t),
    }
}

#[derive(Default)]
struct Column {
    passes: Vec<Duration>,
    touched: Vec<f64>,
    untouched: Vec<f64>,
    asked_per_call: Vec<f64>,
    /// Pages the fast-only op failed per pass (`e`), where counted.
    failed: Vec<u64>,
}

impl Column {
    fn add(&mut self, p: &Pass) {
        self.passes.push(p.time);
        self.touched.push(p.touched_fraction());
        self.untouched.push(p.untouched_fraction());
        if let Ok(e) = p.counter('e') {
            self.failed.push(e);
        }
        if let (Ok(c), Ok(q)) = (p.counter('c'), p.counter('q')) {
            if c > 0 {
                self.asked_per_call.push(q as f64 / c as f64);
            }
        }
    }
}

#[derive(Default)]
struct Rounds {
    times: Vec<Duration>,
    /// Guest write latency of the re-faulted pages, in ns.
    lat: Vec<f64>,
    passes: u64,
}

struct Point {
    mem_per_vcpu: usize,
    vcpus: u32,
    pages: u64,
    on: Column,
    off: Column,
    floor: Column,
    /// Indexed like `STATES`.
    rounds: [Rounds; 3],
    thp: Option<[Column; 2]>,
    secs: f64,
}

/// The nested-heavy point: 0x8 on/off passes over a VM whose L2 guest
/// maps all of its memory (accessed state in shadow SPTEs, aged through
/// rmaps under `mmu_lock`), and L1's re-fault rounds with aging looping.
struct NestedPoint {
    bytes: usize,
    pages: u64,
    on: Column,
    off: Column,
    /// Indexed like `STATES`.
    rounds: [Rounds; 3],
    secs: f64,
}

const STATES: [(&str, Option<u32>); 3] = [("none", None), ("on", Some(ON)), ("off", Some(OFF))];

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

/// The `q`-quantile (0..=1) of sorted `v`, nearest rank.
fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let i = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

fn size(b: usize) -> String {
    if b >= 1 << 30 && b.is_multiple_of(1 << 30) {
        format!("{}G", b >> 30)
    } else {
        format!("{}M", b >> 20)
    }
}

fn progress(start: Instant, what: &str) {
    eprintln!("[{:7.1}s] {what}", start.elapsed().as_secs_f64());
}

/// Interleaved measured passes, 0x8 on then off, `n` times; before each,
/// `touch(vm, count, stride)` reads every `stride`-th page (`count` pages).
fn passes(
    o: &Opts,
    vm: &mut TouchVm,
    cg: &Memcg,
    on: &mut Column,
    off: &mut Column,
    touch: impl Fn(&mut TouchVm, usize, usize) -> Result<()>,
) -> Result<()> {
    let pages = vm.mem.pages();
    let stride = o.stride as usize;
    let count = pages.div_ceil(stride);
    for _ in 0..o.repeat {
        for (mask, col) in [(ON, &mut *on), (OFF, &mut *off)] {
            features::set_lru_gen_caps(mask)?;
            let p = aging::measured_pass(cg, count as u64, (pages - count) as u64, || {
                touch(vm, count, stride)
            })?;
            col.add(&p);
        }
    }
    Ok(())
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
    out: &mut Rounds,
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
    out.times.push(t);
    out.passes += passes.load(Ordering::Relaxed);
    out.lat
        .extend(lat[first..first + q].iter().map(|&c| c as f64 * 1e6 / khz));
    Ok(())
}

/// Interleaved measured passes over a plain process's memory of `pages`.
fn floor(o: &Opts, cg: &Memcg, bytes: usize, col: &mut Column) -> Result<()> {
    let mut mem = HostMem::new(bytes, Backing::Anon4k)?;
    mem.fill(0x666c_6f6f);
    let pages = mem.pages();
    let stride = o.stride as usize;
    let count = pages.div_ceil(stride);
    features::set_lru_gen_caps(ON)?;
    for _ in 0..o.repeat {
        let p = aging::measured_pass(cg, count as u64, (pages - count) as u64, || {
            for i in (0..pages).step_by(stride) {
                mem.read_u32_at(i * PAGE_SIZE)?;
            }
            Ok(())
        })?;
        col.add(&p);
    }
    Ok(())
}

fn thp_accuracy(o: &Opts, cg: &Memcg, bytes: usize) -> Result<[Column; 2]> {
    let mut vm = TouchVm::new(bytes, 2, Backing::Thp)?;
    let pages = vm.mem.pages();
    vm.touch_all(0, pages, Access::Write(0x7468_7021))?;
    let huge = (2 << 20) / PAGE_SIZE;
    // Every other THP, through one page each.
    let count = pages.div_ceil(2 * huge);
    let touched = (count * huge).min(pages) as u64;
    let mut cols = [Column::default(), Column::default()];
    for _ in 0..o.repeat.min(3) {
        for (k, mask) in [ON, OFF].into_iter().enumerate() {
            features::set_lru_gen_caps(mask)?;
            let p = aging::measured_pass(cg, touched, pages as u64 - touched, || {
                vm.touch(0, 0, count, 2 * huge, Access::Read)
            })?;
            cols[k].add(&p);
        }
    }
    Ok(cols)
}

fn run_point(o: &Opts, cg: &Memcg, m: usize, v: u32, start: Instant) -> Result<Point> {
    let t0 = Instant::now();
    let total = m * v as usize;
    let label = format!("{} x {} vCPUs", size(m), v);
    let mut pt = Point {
        mem_per_vcpu: m,
        vcpus: v,
        pages: (total / PAGE_SIZE) as u64,
        on: Column::default(),
        off: Column::default(),
        floor: Column::default(),
        rounds: Default::default(),
        thp: None,
        secs: 0.0,
    };
    {
        let mut vm = TouchVm::new(total, v as usize, Backing::Anon4k)?;
        let pages = vm.mem.pages();
        progress(start, &format!("{label}: faulting in {} MiB", total >> 20));
        vm.touch_all(0, pages, Access::Write(0x6265_6e63))?;
        progress(
            start,
            &format!("{label}: aging passes, 0x8 on/off x {}", o.repeat),
        );
        passes(
            o,
            &mut vm,
            cg,
            &mut pt.on,
            &mut pt.off,
            |vm, count, stride| vm.touch(0, 0, count, stride, Access::Read),
        )?;
        // Leave a CPU of the test VM to the aging thread.
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let nv = (v as usize).min(cpus.saturating_sub(1)).max(1);
        let khz = vm.tsc_khz()? as f64;
        progress(
            start,
            &format!(
                "{label}: re-fault rounds on {nv} vCPUs over {} MiB, aging none/on/off x {}",
                (pages.min(o.round_mem / PAGE_SIZE) * PAGE_SIZE) >> 20,
                o.repeat
            ),
        );
        let window = pages.min(o.round_mem / PAGE_SIZE).max(4);
        for r in 0..o.repeat as usize {
            for (k, (_, mask)) in STATES.iter().enumerate() {
                round(&mut vm, cg, r, nv, window, *mask, &mut pt.rounds[k], khz)?;
            }
        }
    }
    progress(
        start,
        &format!("{label}: floor, plain process of {} MiB", total >> 20),
    );
    floor(o, cg, total, &mut pt.floor)?;
    if o.thp_point != 0 && m == o.thp_point && v == 2 {
        progress(start, &format!("{label}: THP accuracy"));
        pt.thp = Some(thp_accuracy(o, cg, total)?);
    }
    for r in &mut pt.rounds {
        r.lat.sort_by(f64::total_cmp);
    }
    pt.secs = t0.elapsed().as_secs_f64();
    progress(start, &format!("{label}: done in {:.0}s", pt.secs));
    Ok(pt)
}

/// The nested-heavy point (see [`NestedPoint`]). Before every pass L2
/// alone reads every `stride`-th page, so what the pass finds young is in
/// shadow SPTEs only; before every round L2 reads all memory again, so the
/// shadow MMU maps it all while aging loops and L1 re-faults.
fn run_nested_point(o: &Opts, cg: &Memcg, bytes: usize, start: Instant) -> Result<NestedPoint> {
    let t0 = Instant::now();
    let label = format!("nested-heavy {}", size(bytes));
    let mut vm = TouchVm::new_with_svm(bytes, 1, Backing::Anon4k)?;
    let pages = vm.mem.pages();
    progress(start, &format!("{label}: L1 faults in, L2 maps all of it"));
    vm.touch_all(0, pages, Access::Write(0x6e65_7374))?;
    vm.run_nested_read(0, 0, pages, 1)?;
    let mut pt = NestedPoint {
        bytes,
        pages: pages as u64,
        on: Column::default(),
        off: Column::default(),
        rounds: Default::default(),
        secs: 0.0,
    };
    progress(
        start,
        &format!("{label}: aging passes, 0x8 on/off x {}", o.repeat),
    );
    passes(
        o,
        &mut vm,
        cg,
        &mut pt.on,
        &mut pt.off,
        |vm, count, stride| vm.run_nested_read(0, 0, count, stride),
    )?;
    let khz = vm.tsc_khz()? as f64;
    let window = pages.min(o.round_mem / PAGE_SIZE).max(4);
    progress(
        start,
        &format!(
            "{label}: L1 re-fault rounds over {} MiB, aging none/on/off x {}",
            (window * PAGE_SIZE) >> 20,
            o.repeat
        ),
    );
    for r in 0..o.repeat as usize {
        for (k, (_, mask)) in STATES.iter().enumerate() {
            vm.run_nested_read(0, 0, pages, 1)?;
            round(&mut vm, cg, r, 1, window, *mask, &mut pt.rounds[k], khz)?;
        }
    }
    for r in &mut pt.rounds {
        r.lat.sort_by(f64::total_cmp);
    }
    pt.secs = t0.elapsed().as_secs_f64();
    progress(start, &format!("{label}: done in {:.0}s", pt.secs));
    Ok(pt)
}

fn stats_of(v: &[Duration]) -> Option<Stats> {
    Stats::of(v)
}

fn ms_sd(v: &[Duration]) -> String {
    stats_of(v).map_or("n/a".into(), |s| {
        format!("{:.1} ± {:.1}", ms(s.mean), ms(s.stddev))
    })
}

fn ratio(a: &[Duration], b: &[Duration]) -> Option<Ratio> {
    Ratio::of(&stats_of(a)?, &stats_of(b)?)
}

fn ratio_str(r: Option<Ratio>) -> String {
    r.map_or("n/a".into(), |r| r.describe())
}

fn ns_per_page(v: &[Duration], pages: u64) -> f64 {
    stats_of(v).map_or(f64::NAN, |s| s.mean.as_secs_f64() * 1e9 / pages as f64)
}

fn pct(v: &[f64]) -> String {
    format!("{:.2}%", 100.0 * mean(v))
}

fn report(pts: &[Point]) -> Vec<String> {
    let mut out = Vec::new();
    out.push(
        "aging pass (ms, mean ± sd) | off/on | on/floor | ns/page off, on, floor | pages/call on"
            .into(),
    );
    for p in pts {
        out.push(format!(
            "{:>4} x {}: off {} | on {} | floor {} | off/on {} | on/floor {} | {:.0}, {:.0}, {:.0} | {:.0}",
            size(p.mem_per_vcpu),
            p.vcpus,
            ms_sd(&p.off.passes),
            ms_sd(&p.on.passes),
            ms_sd(&p.floor.passes),
            ratio_str(ratio(&p.off.passes, &p.on.passes)),
            ratio_str(ratio(&p.on.passes, &p.floor.passes)),
            ns_per_page(&p.off.passes, p.pages),
            ns_per_page(&p.on.passes, p.pages),
            ns_per_page(&p.floor.passes, p.pages),
            mean(&p.on.asked_per_call),
        ));
    }
    out.push("accuracy (touched promoted / untouched promoted), mean over passes".into());
    for p in pts {
        let mut line = format!(
            "{:>4} x {}: 4K on {} / {} | off {} / {} | floor {} / {}",
            size(p.mem_per_vcpu),
            p.vcpus,
            pct(&p.on.touched),
            pct(&p.on.untouched),
            pct(&p.off.touched),
            pct(&p.off.untouched),
            pct(&p.floor.touched),
            pct(&p.floor.untouched)
        );
        if let Some([on, off]) = &p.thp {
            line += &format!(
                " | THP on {} / {} | off {} / {}",
                pct(&on.touched),
                pct(&on.untouched),
                pct(&off.touched),
                pct(&off.untouched)
            );
        }
        out.push(line);
    }
    out.push("guest re-fault round (ms) none | on | off | on/off | on/none ; write latency of re-faulted pages p50/p99/max (us) on vs off".into());
    for p in pts {
        let [none, on, off] = &p.rounds;
        out.push(format!(
            "{:>4} x {}: {} | {} | {} | {} | {} ; on {} vs off {} (none {}); passes on {} off {}",
            size(p.mem_per_vcpu),
            p.vcpus,
            ms_sd(&none.times),
            ms_sd(&on.times),
            ms_sd(&off.times),
            ratio_str(ratio(&on.times, &off.times)),
            ratio_str(ratio(&on.times, &none.times)),
            latency(on),
            latency(off),
            latency(none),
            on.passes,
            off.passes
        ));
    }
    out
}

fn latency(r: &Rounds) -> String {
    format!(
        "{:.1}/{:.1}/{:.0}",
        quantile(&r.lat, 0.5) / 1e3,
        quantile(&r.lat, 0.99) / 1e3,
        quantile(&r.lat, 1.0) / 1e3
    )
}

fn report_nested(p: &NestedPoint) -> Vec<String> {
    let [none, on, off] = &p.rounds;
    vec![
        format!(
            "nested-heavy VM ({} x 1 vCPU, L2 maps all of it): aging pass (ms) off {} | on {} | \
             off/on {} | pages/call on {:.0} | pages failed per on pass {:?}",
            size(p.bytes),
            ms_sd(&p.off.passes),
            ms_sd(&p.on.passes),
            ratio_str(ratio(&p.off.passes, &p.on.passes)),
            mean(&p.on.asked_per_call),
            p.on.failed
        ),
        format!(
            "nested-heavy VM accuracy: on {} / {} | off {} / {}",
            pct(&p.on.touched),
            pct(&p.on.untouched),
            pct(&p.off.touched),
            pct(&p.off.untouched)
        ),
        format!(
            "nested-heavy VM L1 re-fault round (ms) none {} | on {} | off {} | on/off {} ; \
             write latency p50/p99/max (us) on {} vs off {} (none {}); passes on {} off {}",
            ms_sd(&none.times),
            ms_sd(&on.times),
            ms_sd(&off.times),
            ratio_str(ratio(&on.times, &off.times)),
            latency(on),
            latency(off),
            latency(none),
            on.passes,
            off.passes
        ),
    ]
}

fn dur_json(v: &[Duration]) -> Value {
    let s = stats_of(v);
    json!({
        "samples_ms": v.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
        "mean_ms": s.as_ref().map(|s| ms(s.mean)),
        "stddev_ms": s.as_ref().map(|s| ms(s.stddev)),
    })
}

fn ratio_json(r: Option<Ratio>) -> Value {
    r.map_or(
        Value::Null,
        |r| json!({"value": r.value, "lo": r.lo, "hi": r.hi, "significant": !r.includes_one()}),
    )
}

fn col_json(c: &Column, pages: u64) -> Value {
    json!({
        "pass": dur_json(&c.passes),
        "ns_per_page": ns_per_page(&c.passes, pages),
        "touched_promoted": mean(&c.touched),
        "untouched_promoted": mean(&c.untouched),
        "pages_per_call": if c.asked_per_call.is_empty() { Value::Null } else { json!(mean(&c.asked_per_call)) },
    })
}

fn rounds_json(rounds: &[Rounds; 3]) -> Value {
    let m: serde_json::Map<String, Value> = STATES
        .iter()
        .zip(rounds)
        .map(|((name, _), r)| {
            (
                name.to_string(),
                json!({
                    "round": dur_json(&r.times),
                    "aging_passes": r.passes,
                    "latency_us": {
                        "n": r.lat.len(),
                        "p50": quantile(&r.lat, 0.5) / 1e3,
                        "p99": quantile(&r.lat, 0.99) / 1e3,
                        "max": quantile(&r.lat, 1.0) / 1e3,
                    },
                }),
            )
        })
        .collect();
    Value::Object(m)
}

fn nested_json(p: &NestedPoint) -> Value {
    json!({
        "total_mib": p.bytes >> 20,
        "vcpus": 1,
        "pages": p.pages,
        "seconds": p.secs,
        "off": col_json(&p.off, p.pages),
        "on": col_json(&p.on, p.pages),
        "failed_per_on_pass": p.on.failed,
        "off_over_on": ratio_json(ratio(&p.off.passes, &p.on.passes)),
        "rounds": rounds_json(&p.rounds),
        "round_on_over_off": ratio_json(ratio(&p.rounds[1].times, &p.rounds[2].times)),
    })
}

fn point_json(p: &Point) -> Value {
    json!({
        "mem_per_vcpu_mib": p.mem_per_vcpu >> 20,
        "vcpus": p.vcpus,
        "total_mib": (p.mem_per_vcpu * p.vcpus as usize) >> 20,
        "pages": p.pages,
        "seconds": p.secs,
        "off": col_json(&p.off, p.pages),
        "on": col_json(&p.on, p.pages),
        "floor": col_json(&p.floor, p.pages),
        "off_over_on": ratio_json(ratio(&p.off.passes, &p.on.passes)),
        "on_over_floor": ratio_json(ratio(&p.on.passes, &p.floor.passes)),
        "rounds": rounds_json(&p.rounds),
        "round_on_over_off": ratio_json(ratio(&p.rounds[1].times, &p.rounds[2].times)),
        "thp": p.thp.as_ref().map(|[on, off]| json!({
            "on": col_json(on, p.pages), "off": col_json(off, p.pages)
        })),
    })
}

/// gnuplot data: pass time per GiB against total memory, one block per
/// vCPU count; and the latency CDFs of the largest point with 2 vCPUs.
fn write_plot_data(o: &Opts, pts: &[Point]) -> Result<()> {
    let mut f = std::fs::File::create(o.out.join("bench-pass.dat"))?;
    writeln!(
        f,
        "# vcpus total_mib off_ms_per_gib on_ms_per_gib floor_ms_per_gib off_sd on_sd floor_sd"
    )?;
    let mut vcpus: Vec<u32> = pts.iter().map(|p| p.vcpus).collect();
    vcpus.sort();
    vcpus.dedup();
    for v in vcpus {
        writeln!(f, "\n\n# vcpus {v}")?;
        for p in pts.iter().filter(|p| p.vcpus == v) {
            let gib = (p.pages as f64 * PAGE_SIZE as f64) / (1u64 << 30) as f64;
            let per = |c: &Column| {
                stats_of(&c.passes).map_or((f64::NAN, f64::NAN), |s| {
                    (ms(s.mean) / gib, ms(s.stddev) / gib)
                })
            };
            let (a, b, c) = (per(&p.off), per(&p.on), per(&p.floor));
            writeln!(
                f,
                "{v} {} {:.3} {:.3} {:.3} {:.3} {:.3} {:.3}",
                (p.pages as usize * PAGE_SIZE) >> 20,
                a.0,
                b.0,
                c.0,
                a.1,
                b.1,
                c.1
            )?;
        }
    }
    let cdf = pts
        .iter()
        .filter(|p| p.vcpus == 2)
        .max_by_key(|p| p.pages)
        .or_else(|| pts.iter().max_by_key(|p| p.pages));
    if let Some(p) = cdf {
        let mut f = std::fs::File::create(o.out.join("bench-latency.dat"))?;
        writeln!(
            f,
            "# guest write latency of re-faulted pages, {} x {} vCPUs: us cumulative_fraction",
            size(p.mem_per_vcpu),
            p.vcpus
        )?;
        for (name, r) in STATES.iter().map(|s| s.0).zip(&p.rounds) {
            writeln!(f, "\n\n# {name}")?;
            let n = r.lat.len();
            // At most ~2000 points per curve, always including the tail.
            let step = (n / 2000).max(1);
            for (i, v) in r.lat.iter().enumerate() {
                if i % step == 0 || i + 1 == n {
                    writeln!(f, "{:.3} {:.6}", v / 1e3, (i + 1) as f64 / n as f64)?;
                }
            }
        }
        std::fs::write(
            o.out.join("bench-latency.title"),
            format!("{} x {} vCPUs", size(p.mem_per_vcpu), p.vcpus),
        )?;
    }
    Ok(())
}

fn main() -> Result<()> {
    let o = Opts::parse();
    if o.mem_per_vcpu
        .iter()
        .any(|&m| m == 0 || !m.is_multiple_of(2 << 20))
    {
        // A usage error like clap's own: message, exit 2, nothing touched.
        <Opts as clap::CommandFactory>::command()
            .error(
                clap::error::ErrorKind::ValueValidation,
                "--mem-per-vcpu sizes must be non-zero multiples of 2M",
            )
            .exit();
    }
    if o.nested_point != 0 && (!o.nested_point.is_multiple_of(2 << 20) || o.nested_point > MAX_DATA)
    {
        <Opts as clap::CommandFactory>::command()
            .error(
                clap::error::ErrorKind::ValueValidation,
                format!(
                    "--nested-point must be 0/off or a multiple of 2M up to {}M",
                    MAX_DATA >> 20
                ),
            )
            .exit();
    }
    let max_total = o.max_total.unwrap_or(MAX_DATA);
    std::fs::create_dir_all(&o.out).with_context(|| format!("creating {}", o.out.display()))?;
    let start = Instant::now();
    let (guard, cg) = aging::enter_sandbox(MEMCG)?;
    let mut pts = Vec::new();
    let mut skipped = Vec::new();
    for &v in &o.vcpus {
        for &m in &o.mem_per_vcpu {
            let total = m * v as usize;
            if total > max_total {
                let why = format!(
                    "{} x {v} vCPUs: {} MiB of guest memory exceeds the {} MiB the bench's 32-bit guest can address",
                    size(m),
                    total >> 20,
                    max_total >> 20
                );
                progress(start, &format!("SKIP {why}"));
                skipped.push(why);
                continue;
            }
            pts.push(run_point(&o, &cg, m, v, start)?);
        }
    }
    let nested = if o.nested_point == 0 {
        None
    } else {
        Some(run_nested_point(&o, &cg, o.nested_point, start)?)
    };
    drop(cg);
    drop(guard);
    let mut lines = report(&pts);
    if let Some(n) = &nested {
        lines.extend(report_nested(n));
    }
    for l in &lines {
        println!("{l}");
    }
    for s in &skipped {
        println!("skipped: {s}");
    }
    let total_secs = start.elapsed().as_secs_f64();
    println!("bench took {total_secs:.0}s");
    let doc = json!({
        "kernel": features::kernel_release().unwrap_or_default(),
        "repeat": o.repeat,
        "stride": o.stride,
        "round_mem_mib": o.round_mem >> 20,
        "seconds": total_secs,
        "points": pts.iter().map(point_json).collect::<Vec<_>>(),
        "nested_heavy": nested.as_ref().map(nested_json),
        "skipped": skipped,
        "table": lines,
    });
    let path = o.out.join("bench.json");
    std::fs::write(&path, serde_json::to_string_pretty(&doc)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    write_plot_data(&o, &pts)?;
    println!("results written to {}", path.display());
    Ok(())
}
