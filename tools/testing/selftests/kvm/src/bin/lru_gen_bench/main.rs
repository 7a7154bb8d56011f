// SPDX-License-Identifier: GPL-2.0
//! MGLRU aging of KVM guest memory, side by side in one run on one kernel:
//! on the series' kernel 0x8 on (batched fast-only answers), 0x8 off
//! (6.12's per-page clear_young() under mmu_lock) and the floor (the same
//! number of pages of a plain process, no secondary MMU); on a kernel
//! without 0x8 (the pristine base kernel) its own aging ("base", 0x7) and
//! the floor. `lru_gen_bench merge` puts a run of each into one table.
//!
//! A benchmark, not a test: it never asserts timings. For every point
//! (guest memory per vCPU x vCPUs) it measures, with n repetitions whose
//! columns run in a rotating order (see `measure`):
//!
//! - the aging-pass time and ns per page, and the pass's accuracy (touched
//!   pages promoted, untouched ones not), the VM and the floor process
//!   both alive;
//! - the guest's round time to re-fault a quarter of its memory and touch all
//!   of it, with aging passes looping on another CPU or not;
//! - the guest's own per-page write latency (`rdtsc` in the guest) of the
//!   re-faulted pages during those rounds: p50, p99, p99.9, max, writes
//!   over 10 ms, and each repetition's worst write.
//!
//! Prints one table per point with mean ± stddev and each ratio's 95 %
//! interval (log scale; "n.s." when it includes 1), and writes JSON plus
//! gnuplot data files for `scripts/bench.sh`.

mod floor;
mod measure;
mod model;
mod report;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use measure::{progress, Plan};
use mglru_selftest::aging;
use mglru_selftest::features;
use mglru_selftest::kvm::{MAX_DATA, MAX_DATA_SVM};

/// `--max-total`'s default: guest memory plus an equal floor process in
/// `make bench`'s 10 GiB test VM.
const DEFAULT_MAX_TOTAL: usize = 4 << 30;
use mglru_selftest::memcg::Memcg;
use mglru_selftest::units::parse_size;
use model::{Mode, Run};
use std::path::{Path, PathBuf};
use std::time::Instant;

const MEMCG: &str = "lru-gen-bench";
const FLOOR_MEMCG: &str = "lru-gen-bench-floor";

/// Benchmark of MGLRU aging over KVM guest memory: 0x8 off vs on vs a plain
/// process of the same size (on a kernel without 0x8: its aging vs the
/// plain process). Exit status 0 when every point was measured.
#[derive(Parser, Debug)]
#[command(name = "lru_gen_bench", version, about, long_about = None,
          args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    opts: Opts,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Merges a run on the series' kernel and one on the base kernel (their
    /// bench.json) into one table per point with both kernels' columns, and
    /// writes OUT/bench.json, bench.md and the plot data.
    Merge {
        /// bench.json of the run on the series' kernel.
        series: PathBuf,
        /// bench.json of the run on the base kernel.
        base: PathBuf,
        /// Directory for the merged bench.json, bench.md and plot data.
        #[arg(short = 'o', long, default_value = "results")]
        out: PathBuf,
    },
    /// The floor process (started by the bench itself).
    #[command(hide = true)]
    FloorChild { bytes: usize, stride: usize },
}

#[derive(clap::Args, Debug)]
pub struct Opts {
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
    pub repeat: u32,
    /// The guest (and the floor process) touches every STRIDE-th page.
    #[arg(short = 's', long, default_value_t = 2,
          value_parser = clap::value_parser!(u32).range(1..=512))]
    pub stride: u32,
    /// Largest total guest memory to run (points above it are skipped and
    /// reported); default 4 GiB, what `make bench`'s 10 GiB test VM holds
    /// next to the floor process (the guest addresses up to 16 GiB).
    #[arg(long, value_parser = parse_size)]
    max_total: Option<usize>,
    /// Also measure THP accuracy (every column but the floor) at this
    /// memory per vCPU with 2 vCPUs; 0 or "off" disables.
    #[arg(long, default_value = "256M", value_parser = parse_size_or_off)]
    pub thp_point: usize,
    /// Guest memory the re-fault rounds write (a quarter of it re-faulted
    /// each round), at most; aging still walks all of it. Keeps the rounds of
    /// the 1 GiB points from dominating the run time.
    #[arg(long, default_value = "128M", value_parser = parse_size)]
    pub round_mem: usize,
    /// Also run the nested-heavy point: a 1-vCPU VM of this size whose
    /// nested (L2) guest maps all of its memory through shadow SPTEs; 0 or
    /// "off" disables.
    #[arg(long, default_value = "64M", value_parser = parse_size_or_off)]
    nested_point: usize,
    /// Extra aging passes per VM column with `testmod/lru_gen_probe.ko`
    /// timing, per PTE table, the notifier calls made under its PTE lock
    /// (after the timed passes: the probe slows every call); 0 disables.
    #[arg(long, default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(0..=100))]
    pub hold_passes: u32,
    /// Measure only what the base kernel has (columns "base" at 0x7 and the
    /// floor) even on a kernel with 0x8: to try the base mode on the
    /// series' kernel. A merge labels such a column "as-base".
    #[arg(long)]
    as_base: bool,
    /// Directory for bench.json, bench.md and the plot data.
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

fn size(b: usize) -> String {
    if b >= 1 << 30 && b.is_multiple_of(1 << 30) {
        format!("{}G", b >> 30)
    } else {
        format!("{}M", b >> 20)
    }
}

fn usage_error(msg: String) -> ! {
    // A usage error like clap's own: message, exit 2, nothing touched.
    <Cli as clap::CommandFactory>::command()
        .error(clap::error::ErrorKind::ValueValidation, msg)
        .exit()
}

/// Prints `run`'s tables and writes `bench.json`, `bench.md` and the plot
/// data into `dir`.
fn write_results(run: &Run, dir: &Path) -> Result<()> {
    let lines = report::tables(run);
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("bench.json");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&run.to_json(&lines))? + "\n",
    )
    .with_context(|| format!("writing {}", path.display()))?;
    std::fs::write(dir.join("bench.md"), lines.join("\n") + "\n")?;
    report::write_plot_data(run, dir)?;
    for l in &lines {
        println!("{l}");
    }
    println!("results written to {}", path.display());
    Ok(())
}

fn read_run(path: &Path) -> Result<Run> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    Run::from_json(&v).with_context(|| format!("{}", path.display()))
}

/// Series mode where the kernel has 0x8; base mode where it does not and
/// is not the series' (a series kernel without 0x8 is an error), or when
/// asked. Also whether base mode was forced onto a kernel with 0x8.
fn mode(as_base: bool) -> Result<(Mode, bool)> {
    let has = features::has_secondary_mmu_walk()?;
    if as_base {
        return Ok((Mode::Base, has));
    }
    match features::series_feature(has, "lru_gen capability 0x8")? {
        None => Ok((Mode::Series, false)),
        Some(_) => Ok((Mode::Base, false)),
    }
}

fn bench(o: &Opts) -> Result<()> {
    if o.mem_per_vcpu
        .iter()
        .any(|&m| m == 0 || !m.is_multiple_of(2 << 20))
    {
        usage_error("--mem-per-vcpu sizes must be non-zero multiples of 2M".into());
    }
    if o.nested_point != 0
        && (!o.nested_point.is_multiple_of(2 << 20) || o.nested_point > MAX_DATA_SVM)
    {
        usage_error(format!(
            "--nested-point must be 0/off or a multiple of 2M up to {}M (a nested VM's limit)",
            MAX_DATA_SVM >> 20
        ));
    }
    if o.max_total.is_some_and(|m| m > MAX_DATA) {
        usage_error(format!(
            "--max-total must be at most {}M, what the guest addresses",
            MAX_DATA >> 20
        ));
    }
    let max_total = o.max_total.unwrap_or(DEFAULT_MAX_TOTAL);
    std::fs::create_dir_all(&o.out).with_context(|| format!("creating {}", o.out.display()))?;
    let start = Instant::now();
    let (guard, cg) = aging::enter_sandbox(MEMCG)?;
    let floor_cg = Memcg::create(FLOOR_MEMCG)?;
    let (mode, forced) = mode(o.as_base)?;
    let plan = Plan::new(mode);
    let mut run = Run::new(mode, features::kernel_release()?);
    run.forced_base = forced;
    (run.repeat, run.stride, run.round_mem_mib) = (o.repeat, o.stride, (o.round_mem >> 20) as u64);
    progress(
        start,
        &format!(
            "{} mode on {} (saved caps 0x{:x})",
            mode.name(),
            run.kernel,
            guard.saved()
        ),
    );
    for &v in &o.vcpus {
        for &m in &o.mem_per_vcpu {
            let total = m * v as usize;
            if total > max_total {
                let why = format!(
                    "{} x {v}: {} MiB of guest memory exceeds {} MiB ({})",
                    size(m),
                    total >> 20,
                    max_total >> 20,
                    if o.max_total.is_some() {
                        "--max-total"
                    } else {
                        "the default --max-total"
                    }
                );
                progress(start, &format!("SKIP {why}"));
                run.skipped.push(why);
                continue;
            }
            run.points
                .push(measure::run_point(o, &plan, &cg, &floor_cg, m, v, start)?);
        }
    }
    if o.nested_point != 0 {
        run.nested = Some(measure::run_nested_point(
            o,
            &plan,
            &cg,
            o.nested_point,
            start,
        )?);
    }
    // Both memcgs move this process back to the root when dropped.
    drop(floor_cg);
    drop(cg);
    drop(guard);
    run.seconds = start.elapsed().as_secs_f64();
    write_results(&run, &o.out)?;
    println!("bench took {:.0}s", run.seconds);
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        None => bench(&cli.opts),
        Some(Cmd::Merge { series, base, out }) => {
            let m = model::merge(&read_run(&series)?, &read_run(&base)?)?;
            write_results(&m, &out)
        }
        Some(Cmd::FloorChild { bytes, stride }) => floor::child_main(bytes, stride),
    }
}
