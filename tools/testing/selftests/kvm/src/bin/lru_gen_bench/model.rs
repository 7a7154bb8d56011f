// SPDX-License-Identifier: GPL-2.0
//! What the bench measured, as plain data: each point's columns with every
//! sample, written to and read back from `bench.json`, and the merge of a
//! run on the series' kernel with one on the pristine base kernel.
//!
//! Every table and plot is made from this model, so a run's own output and
//! a merge of two runs come from the same code.

use anyhow::{bail, Context, Result};
use mglru_selftest::aging::Pass;
use mglru_selftest::timing::Moments;
use serde_json::{json, Map, Value};

/// Column keys (JSON object keys and table lookups).
pub mod key {
    /// Series' kernel, capability 0x8 set.
    pub const ON: &str = "on";
    /// Series' kernel, 0x8 clear (0x7).
    pub const OFF: &str = "off";
    /// The base kernel at its default capabilities (0x7).
    pub const BASE: &str = "base";
    /// A plain process of the same size (no secondary MMU).
    pub const FLOOR: &str = "floor";
    /// The floor measured on the base kernel's boot (in a merge).
    pub const FLOOR_BASE: &str = "floor_base_boot";
    /// Re-fault rounds without aging.
    pub const NONE: &str = "none";
    /// Re-fault rounds without aging on the base kernel's boot (merge).
    pub const NONE_BASE: &str = "none_base_boot";
}

/// Display order of the aging-pass columns.
pub const PASS_ORDER: [&str; 5] = [key::BASE, key::OFF, key::ON, key::FLOOR, key::FLOOR_BASE];
/// Display order of the re-fault-round columns.
pub const ROUND_ORDER: [&str; 5] = [key::NONE_BASE, key::NONE, key::BASE, key::OFF, key::ON];

/// Which kernel(s) a run's columns come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The series' kernel: 0x8 on, off, floor.
    Series,
    /// A kernel without 0x8 (the base kernel): base, floor.
    Base,
    /// A series run and a base run side by side.
    Merged,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Series => "series",
            Mode::Base => "base",
            Mode::Merged => "merged",
        }
    }

    fn parse(s: &str) -> Result<Mode> {
        Ok(match s {
            "series" => Mode::Series,
            "base" => Mode::Base,
            "merged" => Mode::Merged,
            _ => bail!("unknown mode {s:?}"),
        })
    }

    /// The aging-pass ratios (numerator, denominator) this mode reports,
    /// where both columns exist.
    pub fn pass_ratios(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Mode::Series => &[(key::OFF, key::ON), (key::ON, key::FLOOR)],
            Mode::Base => &[(key::BASE, key::FLOOR)],
            Mode::Merged => &[
                (key::BASE, key::ON),
                (key::OFF, key::ON),
                (key::ON, key::FLOOR),
                (key::BASE, key::OFF),
                (key::FLOOR, key::FLOOR_BASE),
            ],
        }
    }

    /// The re-fault-round ratios this mode reports.
    pub fn round_ratios(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Mode::Series => &[(key::ON, key::OFF), (key::ON, key::NONE)],
            Mode::Base => &[(key::BASE, key::NONE)],
            Mode::Merged => &[
                (key::ON, key::OFF),
                (key::ON, key::NONE),
                (key::ON, key::BASE),
                (key::OFF, key::BASE),
                (key::NONE, key::NONE_BASE),
            ],
        }
    }
}

/// One column of measured aging passes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Column {
    /// Pass times (ms), in measurement order.
    pub pass_ms: Vec<f64>,
    /// Fraction of touched pages each pass promoted.
    pub touched: Vec<f64>,
    /// Upper bound of the fraction of untouched pages each pass promoted.
    pub untouched: Vec<f64>,
    /// Pages asked per fast-only call (walk stats `Q`/`C`), where any.
    pub pages_per_call: Vec<f64>,
    /// Pages the fast-only op failed per pass (walk stat `E`), where
    /// printed (the series' kernel).
    pub failed: Vec<u64>,
}

impl Column {
    pub fn add(&mut self, p: &Pass) {
        self.pass_ms.push(p.time.as_secs_f64() * 1e3);
        self.touched.push(p.touched_fraction());
        self.untouched.push(p.untouched_fraction());
        if let Ok(e) = p.counter('e') {
            self.failed.push(e);
        }
        if let (Ok(c), Ok(q)) = (p.counter('c'), p.counter('q')) {
            if c > 0 {
                self.pages_per_call.push(q as f64 / c as f64);
            }
        }
    }

    pub fn moments(&self) -> Option<Moments> {
        Moments::of(&self.pass_ms)
    }

    fn to_json(&self, pages: u64) -> Value {
        let m = self.moments();
        json!({
            "pass_ms": self.pass_ms,
            "mean_ms": m.map(|m| m.mean),
            "stddev_ms": m.map(|m| m.sd),
            "ci95_ms": m.and_then(|m| m.mean_ci95()).map(|(lo, hi)| [lo, hi]),
            "ns_per_page": m.map(|m| m.mean * 1e6 / pages.max(1) as f64),
            "touched_promoted": self.touched,
            "untouched_promoted": self.untouched,
            "pages_per_call": self.pages_per_call,
            "failed": self.failed,
        })
    }

    fn from_json(v: &Value) -> Result<Column> {
        Ok(Column {
            pass_ms: floats(v, "pass_ms")?,
            touched: floats(v, "touched_promoted")?,
            untouched: floats(v, "untouched_promoted")?,
            pages_per_call: floats(v, "pages_per_call")?,
            failed: floats(v, "failed")?.into_iter().map(|x| x as u64).collect(),
        })
    }
}

/// The guest's write latency to re-faulted pages in one column of rounds:
/// the distribution pooled over the repetitions, and each repetition's
/// worst write (so that one outlier shows as one).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stall {
    /// Writes timed.
    pub n: usize,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    /// Writes that took longer than [`STALL_MS`].
    pub over: u64,
    /// The worst write of each repetition (µs), in measurement order.
    pub rep_max_us: Vec<f64>,
    /// The CDF, `(µs, fraction of writes ≤ it)`, thinned to about
    /// [`CDF_POINTS`] points plus the [`CDF_TAIL`] slowest writes exactly.
    pub cdf: Vec<(f64, f64)>,
}

/// A write slower than this counts as a stall.
pub const STALL_MS: f64 = 10.0;
const CDF_POINTS: usize = 200;
const CDF_TAIL: usize = 32;

/// The `q`-quantile (0..=1) of sorted `v`, nearest rank.
pub fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let i = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

impl Stall {
    /// From the pooled latencies (ns, any order) and each repetition's
    /// worst write (ns).
    pub fn of(lat_ns: &[f64], rep_max_ns: &[f64]) -> Stall {
        let mut v: Vec<f64> = lat_ns.iter().map(|x| x / 1e3).collect();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let step = (n / CDF_POINTS).max(1);
        let cdf = v
            .iter()
            .enumerate()
            .filter(|&(i, _)| i % step == 0 || i + CDF_TAIL >= n)
            // Rounded: bench.json is committed, and nobody reads a CDF to
            // the nanosecond.
            .map(|(i, &x)| {
                let f = (i + 1) as f64 / n as f64;
                ((x * 1e3).round() / 1e3, (f * 1e6).round() / 1e6)
            })
            .collect();
        Stall {
            n,
            p50_us: quantile(&v, 0.5),
            p99_us: quantile(&v, 0.99),
            p999_us: quantile(&v, 0.999),
            max_us: quantile(&v, 1.0),
            over: v.iter().filter(|&&x| x > STALL_MS * 1e3).count() as u64,
            rep_max_us: rep_max_ns.iter().map(|x| x / 1e3).collect(),
            cdf,
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "n": self.n,
            "p50_us": self.p50_us,
            "p99_us": self.p99_us,
            "p99_9_us": self.p999_us,
            "max_us": self.max_us,
            "over_10ms": self.over,
            "rep_max_us": self.rep_max_us,
            "cdf_us": self.cdf.iter().map(|&(x, f)| [x, f]).collect::<Vec<_>>(),
        })
    }

    fn from_json(v: &Value) -> Result<Stall> {
        let cdf = arr(v, "cdf_us")?
            .iter()
            .map(|p| match p.as_array().map(|a| a.as_slice()) {
                Some([x, f]) => Ok((num(x)?, num(f)?)),
                _ => bail!("cdf_us entry {p} is not [us, fraction]"),
            })
            .collect::<Result<_>>()?;
        Ok(Stall {
            n: float(v, "n")? as usize,
            p50_us: float(v, "p50_us")?,
            p99_us: float(v, "p99_us")?,
            p999_us: float(v, "p99_9_us")?,
            max_us: float(v, "max_us")?,
            over: float(v, "over_10ms")? as u64,
            rep_max_us: floats(v, "rep_max_us")?,
            cdf,
        })
    }
}

/// The time aging spent asking secondary MMUs per PTE table (inside the
/// table's PTE lock), from `lru_gen_probe` samples of one column: the
/// series' fast-only call, or 6.12's per-page `clear_young()` calls summed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Hold {
    /// Passes measured and tables sampled in them.
    pub passes: u32,
    pub tables: usize,
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    pub mean_us: f64,
    /// Notifier calls per table, on average.
    pub calls_per_table: f64,
}

impl Hold {
    pub fn of(s: &[mglru_selftest::probe::Sample], passes: u32) -> Hold {
        let mut us: Vec<f64> = s.iter().map(|x| x.ns as f64 / 1e3).collect();
        us.sort_by(f64::total_cmp);
        let n = us.len().max(1) as f64;
        Hold {
            passes,
            tables: us.len(),
            p50_us: quantile(&us, 0.5),
            p99_us: quantile(&us, 0.99),
            max_us: quantile(&us, 1.0),
            mean_us: us.iter().sum::<f64>() / n,
            calls_per_table: s.iter().map(|x| x.calls as f64).sum::<f64>() / n,
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "passes": self.passes,
            "tables": self.tables,
            "p50_us": self.p50_us,
            "p99_us": self.p99_us,
            "max_us": self.max_us,
            "mean_us": self.mean_us,
            "calls_per_table": self.calls_per_table,
        })
    }

    fn from_json(v: &Value) -> Result<Hold> {
        Ok(Hold {
            passes: float(v, "passes")? as u32,
            tables: float(v, "tables")? as usize,
            p50_us: float(v, "p50_us")?,
            p99_us: float(v, "p99_us")?,
            max_us: float(v, "max_us")?,
            mean_us: float(v, "mean_us")?,
            calls_per_table: float(v, "calls_per_table")?,
        })
    }
}

/// One column of re-fault rounds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rounds {
    /// Round times (ms), in measurement order.
    pub round_ms: Vec<f64>,
    /// Aging passes that completed during the rounds.
    pub aging_passes: u64,
    pub stall: Stall,
}

impl Rounds {
    fn to_json(&self) -> Value {
        let m = Moments::of(&self.round_ms);
        json!({
            "round_ms": self.round_ms,
            "mean_ms": m.map(|m| m.mean),
            "stddev_ms": m.map(|m| m.sd),
            "aging_passes": self.aging_passes,
            "latency": self.stall.to_json(),
        })
    }

    fn from_json(v: &Value) -> Result<Rounds> {
        Ok(Rounds {
            round_ms: floats(v, "round_ms")?,
            aging_passes: float(v, "aging_passes")? as u64,
            stall: Stall::from_json(v.get("latency").context("no latency")?).context("latency")?,
        })
    }
}

/// One point of the grid (or the nested-heavy point).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Point {
    pub mem_per_vcpu_mib: u64,
    pub vcpus: u32,
    /// Guest pages (4 KiB).
    pub pages: u64,
    pub seconds: f64,
    /// vCPUs that wrote in the re-fault rounds, and the memory they wrote.
    pub round_vcpus: u32,
    pub round_mib: u64,
    /// Aging-pass columns, keyed by [`key`].
    pub pass: Vec<(String, Column)>,
    /// Re-fault-round columns.
    pub rounds: Vec<(String, Rounds)>,
    /// THP accuracy columns (empty when not measured).
    pub thp: Vec<(String, Column)>,
    /// PTE-lock time spent on secondary MMUs per table, per VM column
    /// (empty when not measured).
    pub hold: Vec<(String, Hold)>,
}

fn find<'a, T>(v: &'a [(String, T)], k: &str) -> Option<&'a T> {
    v.iter().find(|(n, _)| n == k).map(|(_, t)| t)
}

/// `v` sorted into `order` (keys not in it last, in their order).
fn ordered<T>(mut v: Vec<(String, T)>, order: &[&str]) -> Vec<(String, T)> {
    v.sort_by_key(|(k, _)| order.iter().position(|o| o == k).unwrap_or(order.len()));
    v
}

impl Point {
    pub fn col(&self, k: &str) -> Option<&Column> {
        find(&self.pass, k)
    }

    pub fn round(&self, k: &str) -> Option<&Rounds> {
        find(&self.rounds, k)
    }

    pub fn total_mib(&self) -> u64 {
        self.mem_per_vcpu_mib * self.vcpus as u64
    }

    /// `"64M x 2"`.
    pub fn label(&self) -> String {
        let m = self.mem_per_vcpu_mib;
        if m >= 1024 && m.is_multiple_of(1024) {
            format!("{}G x {}", m / 1024, self.vcpus)
        } else {
            format!("{m}M x {}", self.vcpus)
        }
    }

    fn same_point(&self, o: &Point) -> bool {
        (self.mem_per_vcpu_mib, self.vcpus, self.pages) == (o.mem_per_vcpu_mib, o.vcpus, o.pages)
    }

    fn to_json(&self) -> Value {
        let cols = |v: &[(String, Column)]| {
            Value::Object(
                v.iter()
                    .map(|(k, c)| (k.clone(), c.to_json(self.pages)))
                    .collect::<Map<_, _>>(),
            )
        };
        json!({
            "mem_per_vcpu_mib": self.mem_per_vcpu_mib,
            "vcpus": self.vcpus,
            "total_mib": self.total_mib(),
            "pages": self.pages,
            "seconds": self.seconds,
            "round_vcpus": self.round_vcpus,
            "round_mib": self.round_mib,
            "pass": cols(&self.pass),
            "rounds": Value::Object(
                self.rounds.iter().map(|(k, r)| (k.clone(), r.to_json())).collect()
            ),
            "thp": cols(&self.thp),
            "hold": Value::Object(
                self.hold.iter().map(|(k, h)| (k.clone(), h.to_json())).collect()
            ),
        })
    }

    fn from_json(v: &Value) -> Result<Point> {
        let cols = |name: &str| -> Result<Vec<(String, Column)>> {
            obj(v, name)?
                .iter()
                .map(|(k, c)| Ok((k.clone(), Column::from_json(c).context(k.clone())?)))
                .collect()
        };
        let rounds = obj(v, "rounds")?
            .iter()
            .map(|(k, r)| Ok((k.clone(), Rounds::from_json(r).context(k.clone())?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Point {
            mem_per_vcpu_mib: float(v, "mem_per_vcpu_mib")? as u64,
            vcpus: float(v, "vcpus")? as u32,
            pages: float(v, "pages")? as u64,
            seconds: float(v, "seconds")?,
            round_vcpus: float(v, "round_vcpus")? as u32,
            round_mib: float(v, "round_mib")? as u64,
            pass: ordered(cols("pass")?, &PASS_ORDER),
            rounds: ordered(rounds, &ROUND_ORDER),
            thp: ordered(cols("thp")?, &PASS_ORDER),
            // Absent in runs from before it was measured.
            hold: match v.get("hold") {
                None => Vec::new(),
                Some(_) => ordered(
                    obj(v, "hold")?
                        .iter()
                        .map(|(k, h)| Ok((k.clone(), Hold::from_json(h).context(k.clone())?)))
                        .collect::<Result<Vec<_>>>()?,
                    &PASS_ORDER,
                ),
            },
        })
    }
}

/// One run of the bench (or a merge of two).
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub mode: Mode,
    /// `uname -r` of the kernel measured (the series' one in a merge).
    pub kernel: String,
    /// `uname -r` of the base run's kernel (merge only).
    pub base_kernel: Option<String>,
    /// Base mode forced (`--as-base`) on a kernel that has 0x8.
    pub forced_base: bool,
    pub repeat: u32,
    pub stride: u32,
    pub round_mem_mib: u64,
    pub seconds: f64,
    pub points: Vec<Point>,
    pub nested: Option<Point>,
    /// Points not measured, with why.
    pub skipped: Vec<String>,
    /// What a reader must know (a merge's caveats).
    pub notes: Vec<String>,
}

impl Run {
    pub fn new(mode: Mode, kernel: String) -> Run {
        Run {
            mode,
            kernel,
            base_kernel: None,
            forced_base: false,
            repeat: 0,
            stride: 0,
            round_mem_mib: 0,
            seconds: 0.0,
            points: Vec::new(),
            nested: None,
            skipped: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// The kernel the `base` column ran on.
    pub fn base_kernel(&self) -> Option<&str> {
        match self.mode {
            Mode::Series => None,
            Mode::Base => Some(&self.kernel),
            Mode::Merged => self.base_kernel.as_deref(),
        }
    }

    /// Column label for tables and plots. A label that names a kernel is
    /// only used for a column measured on it: the base column says
    /// `as-base` when it ran on another kernel (`--as-base`).
    pub fn label(&self, k: &str) -> String {
        match k {
            key::ON => "0x8 on".into(),
            key::OFF => "0x8 off".into(),
            key::FLOOR => "floor".into(),
            key::FLOOR_BASE => "floor(base boot)".into(),
            key::NONE => "no aging".into(),
            key::NONE_BASE => "no aging(base boot)".into(),
            key::BASE => match self.base_kernel() {
                Some(rel) if is_base_release(rel) && !self.forced_base => {
                    format!("base({})", rel.split('-').next().unwrap_or(rel))
                }
                _ => "as-base(0x7)".into(),
            },
            other => other.into(),
        }
    }

    pub fn to_json(&self, table: &[String]) -> Value {
        json!({
            "mode": self.mode.name(),
            "kernel": self.kernel,
            "base_kernel": self.base_kernel,
            "forced_base": self.forced_base,
            "repeat": self.repeat,
            "stride": self.stride,
            "round_mem_mib": self.round_mem_mib,
            "seconds": self.seconds,
            "points": self.points.iter().map(Point::to_json).collect::<Vec<_>>(),
            "nested_heavy": self.nested.as_ref().map(Point::to_json),
            "skipped": self.skipped,
            "notes": self.notes,
            "table": table,
        })
    }

    pub fn from_json(v: &Value) -> Result<Run> {
        let mode = Mode::parse(
            v.get("mode")
                .and_then(Value::as_str)
                .context("no \"mode\": not a bench.json of this version")?,
        )?;
        let strings = |name: &str| -> Result<Vec<String>> {
            arr(v, name)?
                .iter()
                .map(|s| s.as_str().map(str::to_owned).context("not a string"))
                .collect()
        };
        Ok(Run {
            mode,
            kernel: string(v, "kernel")?,
            base_kernel: v
                .get("base_kernel")
                .and_then(Value::as_str)
                .map(str::to_owned),
            forced_base: v
                .get("forced_base")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            repeat: float(v, "repeat")? as u32,
            stride: float(v, "stride")? as u32,
            round_mem_mib: float(v, "round_mem_mib")? as u64,
            seconds: float(v, "seconds")?,
            points: arr(v, "points")?
                .iter()
                .enumerate()
                .map(|(i, p)| Point::from_json(p).with_context(|| format!("point {i}")))
                .collect::<Result<_>>()?,
            nested: match v.get("nested_heavy") {
                None | Some(Value::Null) => None,
                Some(p) => Some(Point::from_json(p).context("nested_heavy")?),
            },
            skipped: strings("skipped")?,
            notes: strings("notes")?,
        })
    }
}

/// Whether `rel` is the base flavour's release (`…-base`).
pub fn is_base_release(rel: &str) -> bool {
    rel.ends_with("-base") && !mglru_selftest::features::is_series_release(rel)
}

/// Renames columns `from → to` of `v` (the base run's into a merge).
fn renamed<T: Clone>(v: &[(String, T)], names: &[(&str, &str)]) -> Vec<(String, T)> {
    v.iter()
        .map(|(k, t)| {
            let k = names
                .iter()
                .find(|(from, _)| from == k)
                .map_or(k.as_str(), |(_, to)| to);
            (k.to_owned(), t.clone())
        })
        .collect()
}

fn merge_point(s: &Point, b: &Point) -> Point {
    let pass_names = [(key::FLOOR, key::FLOOR_BASE)];
    let round_names = [(key::NONE, key::NONE_BASE)];
    let mut p = s.clone();
    p.seconds = s.seconds + b.seconds;
    p.pass.extend(renamed(&b.pass, &pass_names));
    p.pass = ordered(p.pass, &PASS_ORDER);
    p.rounds.extend(renamed(&b.rounds, &round_names));
    p.rounds = ordered(p.rounds, &ROUND_ORDER);
    p.thp.extend(b.thp.iter().cloned());
    p.thp = ordered(p.thp, &PASS_ORDER);
    p.hold.extend(b.hold.iter().cloned());
    p.hold = ordered(p.hold, &PASS_ORDER);
    p
}

/// A series run and a base run side by side: the base run's `base` column
/// joins the series' `on`, `off` and `floor`, its floor and no-aging
/// rounds become `floor_base_boot` and `none_base_boot` (drift controls
/// between the two boots). Points measured in only one run are listed as
/// skipped. Both runs must use the same repetitions, stride and rounds.
pub fn merge(series: &Run, base: &Run) -> Result<Run> {
    if series.mode != Mode::Series {
        bail!(
            "the first file is a {} run, not one on the series' kernel",
            series.mode.name()
        );
    }
    if base.mode != Mode::Base {
        bail!(
            "the second file is a {} run, not one on the base kernel",
            base.mode.name()
        );
    }
    for (what, a, b) in [
        ("repetitions", series.repeat as u64, base.repeat as u64),
        ("stride", series.stride as u64, base.stride as u64),
        ("round memory", series.round_mem_mib, base.round_mem_mib),
    ] {
        if a != b {
            bail!("the runs differ in {what}: {a} (series) vs {b} (base)");
        }
    }
    let mut m = Run::new(Mode::Merged, series.kernel.clone());
    m.base_kernel = Some(base.kernel.clone());
    m.forced_base = base.forced_base;
    m.repeat = series.repeat;
    m.stride = series.stride;
    m.round_mem_mib = series.round_mem_mib;
    m.seconds = series.seconds + base.seconds;
    m.skipped = series.skipped.clone();
    m.skipped.extend(
        base.skipped
            .iter()
            .filter(|s| !series.skipped.contains(s))
            .cloned(),
    );
    if base.forced_base || !is_base_release(&base.kernel) {
        m.notes.push(format!(
            "the base column ran on {} (with 0x8 clear{}), not on the pristine base kernel",
            base.kernel,
            if base.forced_base { ", --as-base" } else { "" }
        ));
    }
    for s in &series.points {
        match base.points.iter().find(|b| b.same_point(s)) {
            Some(b) => {
                if b.round_vcpus != s.round_vcpus || b.round_mib != s.round_mib {
                    m.notes.push(format!(
                        "{}: the rounds differ ({} vCPUs over {} MiB on the series, {} over {} \
                         on base): compare their columns with care",
                        s.label(),
                        s.round_vcpus,
                        s.round_mib,
                        b.round_vcpus,
                        b.round_mib
                    ));
                }
                m.points.push(merge_point(s, b));
            }
            None => m
                .skipped
                .push(format!("{}: only in the series run", s.label())),
        }
    }
    for b in &base.points {
        if !series.points.iter().any(|s| s.same_point(b)) {
            m.skipped
                .push(format!("{}: only in the base run", b.label()));
        }
    }
    m.nested = match (&series.nested, &base.nested) {
        (Some(s), Some(b)) if s.same_point(b) => Some(merge_point(s, b)),
        (Some(s), _) => {
            m.notes
                .push("the nested-heavy point has no base column (not in the base run)".into());
            Some(s.clone())
        }
        (None, _) => None,
    };
    Ok(m)
}

fn obj<'a>(v: &'a Value, name: &str) -> Result<&'a Map<String, Value>> {
    v.get(name)
        .and_then(Value::as_object)
        .with_context(|| format!("no object {name:?}"))
}

fn arr<'a>(v: &'a Value, name: &str) -> Result<&'a Vec<Value>> {
    v.get(name)
        .and_then(Value::as_array)
        .with_context(|| format!("no array {name:?}"))
}

fn num(v: &Value) -> Result<f64> {
    // serde_json writes NaN as null.
    match v {
        Value::Null => Ok(f64::NAN),
        v => v.as_f64().with_context(|| format!("{v} is not a number")),
    }
}

fn float(v: &Value, name: &str) -> Result<f64> {
    num(v.get(name).with_context(|| format!("no {name:?}"))?).context(name.to_owned())
}

fn floats(v: &Value, name: &str) -> Result<Vec<f64>> {
    arr(v, name)?
        .iter()
        .map(num)
        .collect::<Result<_>>()
        .context(name.to_owned())
}

fn string(v: &Value, name: &str) -> Result<String> {
    v.get(name)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .with_context(|| format!("no string {name:?}"))
}

#[cfg(test)]
pub mod tests {
    use super::*;

    pub fn column(ms: &[f64]) -> Column {
        Column {
            pass_ms: ms.to_vec(),
            touched: vec![1.0; ms.len()],
            untouched: vec![0.0; ms.len()],
            pages_per_call: Vec::new(),
            failed: Vec::new(),
        }
    }

    pub fn rounds(ms: &[f64], lat_ns: &[f64]) -> Rounds {
        Rounds {
            round_ms: ms.to_vec(),
            aging_passes: 3,
            stall: Stall::of(lat_ns, &[lat_ns[0]]),
        }
    }

    /// A run of `mode` with one 64M x 1 point whose columns are `pass`
    /// (times scaled by `scale`) and `round`.
    pub fn run(mode: Mode, kernel: &str, pass: &[&str], round: &[&str], scale: f64) -> Run {
        let mut r = Run::new(mode, kernel.into());
        (r.repeat, r.stride, r.round_mem_mib, r.seconds) = (3, 2, 128, 10.0);
        let ms = |k: usize| [10.0 + k as f64, 11.0 + k as f64, 12.0 + k as f64].map(|x| x * scale);
        r.points.push(Point {
            mem_per_vcpu_mib: 64,
            vcpus: 1,
            pages: 16384,
            seconds: 5.0,
            round_vcpus: 1,
            round_mib: 64,
            pass: pass
                .iter()
                .enumerate()
                .map(|(i, k)| (k.to_string(), column(&ms(i))))
                .collect(),
            rounds: round
                .iter()
                .map(|k| {
                    (
                        k.to_string(),
                        rounds(&[100.0, 110.0, 90.0], &[1e3, 2e3, 2e7]),
                    )
                })
                .collect(),
            thp: Vec::new(),
            hold: ordered(
                pass.iter()
                    .filter(|k| **k != key::FLOOR)
                    .map(|k| {
                        let calls = if *k == key::ON { 1 } else { 512 };
                        let s: Vec<mglru_selftest::probe::Sample> = (1..=4)
                            .map(|i| mglru_selftest::probe::Sample {
                                ns: i * 1000 * calls,
                                calls: calls as u32,
                                op: mglru_selftest::probe::Op::Page,
                            })
                            .collect();
                        (k.to_string(), Hold::of(&s, 2))
                    })
                    .collect(),
                &PASS_ORDER,
            ),
        });
        r
    }

    #[test]
    fn hold_summarises_samples_and_survives_json() {
        let h = Hold::of(
            &[1000u64, 3000, 2000, 500_000].map(|ns| mglru_selftest::probe::Sample {
                ns,
                calls: 2,
                op: mglru_selftest::probe::Op::Fast,
            }),
            3,
        );
        assert_eq!((h.tables, h.passes), (4, 3));
        assert_eq!((h.p50_us, h.max_us, h.calls_per_table), (2.0, 500.0, 2.0));
        assert_eq!(Hold::from_json(&h.to_json()).unwrap(), h);
        let r = run(
            Mode::Series,
            "6.12.117-mglru-secondary",
            &["on", "off", "floor"],
            &["none"],
            1.0,
        );
        let back = Run::from_json(&r.to_json(&[])).unwrap();
        assert_eq!(back.points[0].hold, r.points[0].hold);
        assert_eq!(back.points[0].hold.len(), 2);
    }

    #[test]
    fn stall_distribution() {
        // 1000 writes of 1..=1000 µs and one of 20 ms.
        let mut lat: Vec<f64> = (1..=1000).map(|i| i as f64 * 1e3).collect();
        lat.push(20e6);
        let s = Stall::of(&lat, &[1e6, 20e6, 0.5e6]);
        assert_eq!(s.n, 1001);
        assert_eq!(s.p50_us, 501.0);
        assert_eq!(s.p99_us, 991.0);
        assert_eq!(s.p999_us, 1000.0);
        assert_eq!(s.max_us, 20e3);
        assert_eq!(s.over, 1);
        assert_eq!(s.rep_max_us, vec![1e3, 20e3, 500.0]);
        // The CDF ends at the slowest write with fraction 1, and keeps
        // the tail exactly.
        assert_eq!(*s.cdf.last().unwrap(), (20e3, 1.0));
        assert!(s.cdf.len() <= CDF_POINTS + CDF_TAIL + 1);
        assert!(s
            .cdf
            .windows(2)
            .all(|w| w[0].0 <= w[1].0 && w[0].1 < w[1].1));
        let empty = Stall::of(&[], &[]);
        assert_eq!((empty.n, empty.over), (0, 0));
        assert!(empty.max_us.is_nan());
    }

    #[test]
    fn json_round_trip() {
        let mut r = run(
            Mode::Series,
            "6.12.117-mglru-secondary",
            &[key::ON, key::OFF, key::FLOOR],
            &[key::NONE, key::ON, key::OFF],
            1.0,
        );
        r.points[0].thp = vec![(key::ON.into(), column(&[1.0, 2.0]))];
        r.points[0].pass[0].1.pages_per_call = vec![446.0, 450.0];
        r.points[0].pass[0].1.failed = vec![0, 0];
        r.nested = Some(r.points[0].clone());
        r.skipped.push("1G x 4: too big".into());
        let back = Run::from_json(&r.to_json(&["table".into()])).unwrap();
        // Columns come back in display order.
        let mut want = r.clone();
        for p in want.points.iter_mut().chain(want.nested.iter_mut()) {
            p.pass = ordered(p.pass.clone(), &PASS_ORDER);
            p.rounds = ordered(p.rounds.clone(), &ROUND_ORDER);
        }
        assert_eq!(back, want);
        let keys: Vec<&str> = back.points[0]
            .pass
            .iter()
            .map(|(k, _)| k.as_str())
            .collect();
        assert_eq!(keys, [key::OFF, key::ON, key::FLOOR]);
        assert!(Run::from_json(&json!({"kernel": "x"})).is_err());
    }

    #[test]
    fn merge_puts_both_kernels_side_by_side() {
        let s = run(
            Mode::Series,
            "6.12.117-mglru-secondary",
            &[key::ON, key::OFF, key::FLOOR],
            &[key::NONE, key::ON, key::OFF],
            1.0,
        );
        let b = run(
            Mode::Base,
            "6.12.117-base",
            &[key::BASE, key::FLOOR],
            &[key::NONE, key::BASE],
            1.0,
        );
        let m = merge(&s, &b).unwrap();
        assert_eq!(m.mode, Mode::Merged);
        assert!(m.notes.is_empty(), "{:?}", m.notes);
        let p = &m.points[0];
        let keys: Vec<&str> = p.pass.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [key::BASE, key::OFF, key::ON, key::FLOOR, key::FLOOR_BASE]
        );
        let keys: Vec<&str> = p.rounds.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [key::NONE_BASE, key::NONE, key::BASE, key::OFF, key::ON]
        );
        // The base run's floor is its own column, not the series' one.
        assert_eq!(p.col(key::FLOOR_BASE), b.points[0].col(key::FLOOR));
        assert_eq!(p.col(key::FLOOR), s.points[0].col(key::FLOOR));
        assert_eq!(m.label(key::BASE), "base(6.12.117)");
        // Wrong order, or a forced base run: refused, or said.
        assert!(merge(&b, &s).is_err());
        let mut forced = b.clone();
        forced.kernel = "6.12.117-mglru-secondary".into();
        forced.forced_base = true;
        let m = merge(&s, &forced).unwrap();
        assert_eq!(m.notes.len(), 1, "{:?}", m.notes);
        assert_eq!(m.label(key::BASE), "as-base(0x7)");
        let mut other = b.clone();
        other.repeat = 5;
        assert!(merge(&s, &other).is_err());
        // A point only one run has is listed, not merged.
        let mut more = b.clone();
        more.points[0].vcpus = 2;
        let m = merge(&s, &more).unwrap();
        assert!(m.points.is_empty());
        assert_eq!(m.skipped.len(), 2, "{:?}", m.skipped);
    }
}
