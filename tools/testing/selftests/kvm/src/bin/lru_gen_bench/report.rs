// SPDX-License-Identifier: GPL-2.0
//! Tables and plot data from a [`Run`]: one table per point with every
//! column side by side and the ratios with their 95 % intervals, a
//! summary over the points, and a sentence per ratio saying where it is
//! and is not significant.

use crate::model::{key, Column, Point, Rounds, Run, PASS_ORDER, ROUND_ORDER, STALL_MS};
use anyhow::Result;
use mglru_selftest::timing::{Moments, Ratio};
use std::fmt::Write as _;
use std::path::Path;

/// A markdown table.
fn table(head: &[String], rows: &[Vec<String>]) -> Vec<String> {
    let line = |cells: &[String]| format!("| {} |", cells.join(" | "));
    let mut out = vec![line(head), line(&vec!["---".to_string(); head.len()])];
    out.extend(rows.iter().map(|r| line(r)));
    out
}

fn mean_sd(v: &[f64]) -> String {
    match Moments::of(v) {
        Some(m) if m.n > 1 => format!("{} ± {}", sig(m.mean), sig(m.sd)),
        Some(m) => sig(m.mean),
        None => "n/a".into(),
    }
}

/// Three significant digits (all integer digits from 100 up), no
/// exponent.
fn sig(x: f64) -> String {
    if !x.is_finite() {
        return "n/a".into();
    }
    if x == 0.0 {
        return "0".into();
    }
    let decimals = (2 - x.abs().log10().floor() as i32).clamp(0, 6) as usize;
    format!("{x:.decimals$}")
}

/// `v`'s columns in the display order `order`.
fn in_order<'a, T>(v: &'a [(String, T)], order: &[&str]) -> Vec<(&'a str, &'a T)> {
    let mut out: Vec<(&str, &T)> = v.iter().map(|(k, t)| (k.as_str(), t)).collect();
    out.sort_by_key(|(k, _)| order.iter().position(|o| o == k).unwrap_or(order.len()));
    out
}

fn pct(v: &[f64]) -> String {
    Moments::of(v).map_or("n/a".into(), |m| format!("{:.2}%", 100.0 * m.mean))
}

fn ratio_of(a: &[f64], b: &[f64]) -> Option<Ratio> {
    Ratio::of_samples(a, b)
}

fn ratio_name(run: &Run, (a, b): (&str, &str)) -> String {
    format!("{}/{}", run.label(a), run.label(b))
}

/// The ratios of `specs` whose columns both exist (`get` gives a column's
/// samples).
fn ratios<'a>(
    specs: &[(&'a str, &'a str)],
    get: impl Fn(&str) -> Option<&'a [f64]>,
) -> Vec<((&'a str, &'a str), Option<Ratio>)> {
    specs
        .iter()
        .filter_map(|&(a, b)| Some(((a, b), ratio_of(get(a)?, get(b)?))))
        .collect()
}

fn describe(r: Option<Ratio>) -> String {
    r.map_or("n/a".into(), |r| r.describe())
}

fn pass_block(run: &Run, p: &Point, out: &mut Vec<String>) {
    let cols = in_order(&p.pass, &PASS_ORDER);
    if cols.is_empty() {
        return;
    }
    let mut head = vec![format!("aging pass, n = {}", run.repeat)];
    head.extend(cols.iter().map(|(k, _)| run.label(k)));
    let row = |name: &str, f: &dyn Fn(&Column) -> String| {
        let mut r = vec![name.to_string()];
        r.extend(cols.iter().map(|(_, c)| f(c)));
        r
    };
    let mut rows = vec![
        row("time (ms), mean ± sd", &|c| mean_sd(&c.pass_ms)),
        row("ns per page", &|c| {
            c.moments().map_or("n/a".into(), |m| {
                format!("{:.0}", m.mean * 1e6 / p.pages as f64)
            })
        }),
        row("touched promoted", &|c| pct(&c.touched)),
        row("untouched promoted (at most)", &|c| pct(&c.untouched)),
    ];
    if cols.iter().any(|(_, c)| !c.pages_per_call.is_empty()) {
        rows.push(row("pages per fast-only call", &|c| {
            Moments::of(&c.pages_per_call).map_or("-".into(), |m| format!("{:.0}", m.mean))
        }));
    }
    if cols.iter().any(|(_, c)| c.failed.iter().any(|&f| f > 0)) {
        rows.push(row("pages failed fast-only, per pass", &|c| {
            if c.failed.is_empty() {
                "-".into()
            } else {
                format!("{:?}", c.failed)
            }
        }));
    }
    if !p.thp.is_empty() {
        rows.push(row("THP touched / untouched promoted", &|_| "".into()));
        let last = rows.len() - 1;
        for (i, (k, _)) in cols.iter().enumerate() {
            if let Some(t) = p.thp.iter().find(|(tk, _)| tk == k).map(|(_, t)| t) {
                rows[last][i + 1] = format!("{} / {}", pct(&t.touched), pct(&t.untouched));
            }
        }
    }
    if cols
        .iter()
        .any(|(k, _)| p.hold.iter().any(|(hk, _)| hk == k))
    {
        let hold = |k: &str| p.hold.iter().find(|(hk, _)| hk == k).map(|(_, h)| h);
        let mut r1 = vec!["PTE lock on sec. MMUs, per table: p50 / p99 / max (µs)".to_string()];
        let mut r2 = vec!["  notifier calls per table (tables, passes)".to_string()];
        for (k, _) in &cols {
            match hold(k) {
                Some(h) => {
                    r1.push(format!(
                        "{} / {} / {}",
                        sig(h.p50_us),
                        sig(h.p99_us),
                        sig(h.max_us)
                    ));
                    r2.push(format!(
                        "{:.0} ({}, {})",
                        h.calls_per_table, h.tables, h.passes
                    ));
                }
                None => {
                    r1.push("-".into());
                    r2.push("-".into());
                }
            }
        }
        rows.push(r1);
        rows.push(r2);
    }
    out.extend(table(&head, &rows));
    let rs = ratios(run.mode.pass_ratios(), |k| {
        p.col(k).map(|c| c.pass_ms.as_slice())
    });
    if !rs.is_empty() {
        out.push(format!(
            "pass-time ratios: {}",
            rs.iter()
                .map(|(s, r)| format!("{} {}", ratio_name(run, *s), describe(*r)))
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
}

fn rounds_block(run: &Run, p: &Point, out: &mut Vec<String>) {
    let cols = in_order(&p.rounds, &ROUND_ORDER);
    if cols.is_empty() {
        return;
    }
    let mut head = vec![format!(
        "re-fault rounds, {} vCPU(s) over {} MiB",
        p.round_vcpus, p.round_mib
    )];
    head.extend(cols.iter().map(|(k, _)| run.label(k)));
    let row = |name: &str, f: &dyn Fn(&Rounds) -> String| {
        let mut r = vec![name.to_string()];
        r.extend(cols.iter().map(|(_, c)| f(c)));
        r
    };
    let rows = vec![
        row("round (ms), mean ± sd", &|r| mean_sd(&r.round_ms)),
        row("aging passes meanwhile", &|r| r.aging_passes.to_string()),
        row("write p50 / p99 / p99.9 (µs)", &|r| {
            format!(
                "{} / {} / {}",
                sig(r.stall.p50_us),
                sig(r.stall.p99_us),
                sig(r.stall.p999_us)
            )
        }),
        row("worst write (ms)", &|r| sig(r.stall.max_us / 1e3)),
        row(&format!("writes > {STALL_MS} ms (of all)"), &|r| {
            format!("{} of {}", r.stall.over, r.stall.n)
        }),
        row("worst write per repetition (ms)", &|r| {
            r.stall
                .rep_max_us
                .iter()
                .map(|x| sig(x / 1e3))
                .collect::<Vec<_>>()
                .join(", ")
        }),
    ];
    out.extend(table(&head, &rows));
    let rs = ratios(run.mode.round_ratios(), |k| {
        p.round(k).map(|r| r.round_ms.as_slice())
    });
    if !rs.is_empty() {
        out.push(format!(
            "round-time ratios: {}",
            rs.iter()
                .map(|(s, r)| format!("{} {}", ratio_name(run, *s), describe(*r)))
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
}

/// Where each ratio of `specs` is significant, over `pts`, in a sentence.
fn significance(
    run: &Run,
    what: &str,
    specs: &[(&str, &str)],
    pts: &[&Point],
    get: impl Fn(&Point, &str) -> Option<Vec<f64>>,
) -> Vec<String> {
    let mut out = Vec::new();
    for &(a, b) in specs {
        let rs: Vec<(String, Ratio)> = pts
            .iter()
            .filter_map(|p| Some((p.label(), ratio_of(&get(p, a)?, &get(p, b)?)?)))
            .collect();
        if rs.is_empty() {
            continue;
        }
        let ns: Vec<&str> = rs
            .iter()
            .filter(|(_, r)| r.includes_one())
            .map(|(l, _)| l.as_str())
            .collect();
        let lo = rs
            .iter()
            .map(|(_, r)| r.value)
            .fold(f64::INFINITY, f64::min);
        let hi = rs.iter().map(|(_, r)| r.value).fold(0.0, f64::max);
        let mut s = format!(
            "{what} {}: {:.2}x–{:.2}x, significant at {} of {} points",
            ratio_name(run, (a, b)),
            lo,
            hi,
            rs.len() - ns.len(),
            rs.len()
        );
        if !ns.is_empty() {
            let _ = write!(s, " (not significant: {})", ns.join(", "));
        }
        out.push(s + ".");
    }
    out
}

fn summary(run: &Run, out: &mut Vec<String>) {
    let pts: Vec<&Point> = run.points.iter().collect();
    if pts.is_empty() {
        return;
    }
    let keys: Vec<&str> = PASS_ORDER
        .into_iter()
        .filter(|k| pts.iter().any(|p| p.col(k).is_some()))
        .collect();
    let specs: Vec<(&str, &str)> = run
        .mode
        .pass_ratios()
        .iter()
        .copied()
        .filter(|(a, b)| keys.contains(a) && keys.contains(b))
        .collect();
    let mut head = vec!["aging pass (ms)".to_string()];
    head.extend(keys.iter().map(|k| run.label(k)));
    head.extend(specs.iter().map(|s| ratio_name(run, *s)));
    let rows: Vec<Vec<String>> = pts
        .iter()
        .map(|p| {
            let mut r = vec![p.label()];
            r.extend(
                keys.iter()
                    .map(|k| p.col(k).map_or("-".into(), |c| mean_sd(&c.pass_ms))),
            );
            r.extend(specs.iter().map(|&(a, b)| match (p.col(a), p.col(b)) {
                (Some(x), Some(y)) => describe(ratio_of(&x.pass_ms, &y.pass_ms)),
                _ => "-".into(),
            }));
            r
        })
        .collect();
    out.push(String::new());
    out.push(format!(
        "## summary: aging pass, mean ± sd of {} (ratios: 95 % interval, log scale)",
        run.repeat
    ));
    out.extend(table(&head, &rows));
    out.extend(significance(
        run,
        "aging pass",
        run.mode.pass_ratios(),
        &pts,
        |p, k| p.col(k).map(|c| c.pass_ms.clone()),
    ));
    out.extend(significance(
        run,
        "re-fault round",
        run.mode.round_ratios(),
        &pts,
        |p, k| p.round(k).map(|r| r.round_ms.clone()),
    ));
}

/// Every table of `run`, as lines.
pub fn tables(run: &Run) -> Vec<String> {
    let mut out = vec![format!(
        "# lru_gen_bench ({} run): {}{}; n = {} repetitions per column, the columns interleaved \
         in a rotating order; mean ± sd; ratios of means with their 95 % interval on the log \
         scale (Welch df), n.s. = the interval includes 1 (not significant)",
        run.mode.name(),
        run.kernel,
        run.base_kernel
            .as_ref()
            .map_or(String::new(), |b| format!(" and {b}")),
        run.repeat
    )];
    out.extend(run.notes.iter().map(|n| format!("NOTE: {n}")));
    for p in run.points.iter() {
        out.push(String::new());
        out.push(format!(
            "## {} vCPU(s): {} MiB, {} pages, {:.0} s",
            p.label(),
            p.total_mib(),
            p.pages,
            p.seconds
        ));
        pass_block(run, p, &mut out);
        rounds_block(run, p, &mut out);
    }
    if let Some(p) = &run.nested {
        out.push(String::new());
        out.push(format!(
            "## nested-heavy VM: {} MiB x 1 vCPU, its L2 guest maps all of it; {:.0} s",
            p.total_mib(),
            p.seconds
        ));
        pass_block(run, p, &mut out);
        rounds_block(run, p, &mut out);
    }
    summary(run, &mut out);
    out.extend(run.skipped.iter().map(|s| format!("skipped: {s}")));
    out
}

/// gnuplot data: the aging-pass time per GiB (mean and the 95 % interval
/// of the mean) against total guest memory, one block per vCPU count; and
/// the write-latency CDFs of the largest 2-vCPU point (else the largest).
pub fn write_plot_data(run: &Run, dir: &Path) -> Result<()> {
    let keys: Vec<&str> = [key::BASE, key::OFF, key::ON, key::FLOOR]
        .into_iter()
        .filter(|k| run.points.iter().any(|p| p.col(k).is_some()))
        .collect();
    let mut s = String::new();
    writeln!(
        s,
        "# aging pass, ms per GiB of guest memory: mean and the 95 % interval of the mean"
    )?;
    writeln!(s, "# columns: {}", keys.join(" "))?;
    writeln!(
        s,
        "# labels: {}",
        keys.iter()
            .map(|k| run.label(k))
            .collect::<Vec<_>>()
            .join("|")
    )?;
    writeln!(s, "# vcpus total_mib then per column: mean lo hi")?;
    let mut vcpus: Vec<u32> = run.points.iter().map(|p| p.vcpus).collect();
    vcpus.sort();
    vcpus.dedup();
    for v in vcpus {
        write!(s, "\n\n# vcpus {v}\n")?;
        for p in run.points.iter().filter(|p| p.vcpus == v) {
            let gib = p.pages as f64 * 4096.0 / (1u64 << 30) as f64;
            write!(s, "{v} {}", p.total_mib())?;
            for k in &keys {
                let m = p.col(k).and_then(Column::moments);
                let (mean, (lo, hi)) = m.map_or((f64::NAN, (f64::NAN, f64::NAN)), |m| {
                    (m.mean, m.mean_ci95().unwrap_or((m.mean, m.mean)))
                });
                write!(s, " {:.3} {:.3} {:.3}", mean / gib, lo / gib, hi / gib)?;
            }
            writeln!(s)?;
        }
    }
    std::fs::write(dir.join("bench-pass.dat"), s)?;
    let cdf = run
        .points
        .iter()
        .filter(|p| p.vcpus == 2)
        .max_by_key(|p| p.pages)
        .or_else(|| run.points.iter().max_by_key(|p| p.pages));
    if let Some(p) = cdf {
        let mut s = String::new();
        writeln!(
            s,
            "# guest write latency of re-faulted pages, {} vCPUs: us cumulative_fraction",
            p.label()
        )?;
        writeln!(
            s,
            "# labels: {}",
            in_order(&p.rounds, &ROUND_ORDER)
                .iter()
                .map(|(k, _)| run.label(k))
                .collect::<Vec<_>>()
                .join("|")
        )?;
        for (k, r) in in_order(&p.rounds, &ROUND_ORDER) {
            write!(s, "\n\n# {k}\n")?;
            for (x, f) in &r.stall.cdf {
                writeln!(s, "{x:.3} {f:.6}")?;
            }
        }
        std::fs::write(dir.join("bench-latency.dat"), s)?;
        std::fs::write(
            dir.join("bench-latency.title"),
            format!("{} vCPUs", p.label()),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{merge, tests::run, Mode};

    #[test]
    fn three_significant_digits() {
        let v: Vec<String> = [0.0, 0.00123, 1.5, 12.345, 123.4, 45678.9, f64::NAN]
            .iter()
            .map(|&x| sig(x))
            .collect();
        assert_eq!(v, ["0", "0.00123", "1.50", "12.3", "123", "45679", "n/a"]);
    }

    #[test]
    fn series_table_has_its_columns_and_ratios() {
        let s = run(
            Mode::Series,
            "6.12.117-mglru-secondary",
            &[key::ON, key::OFF, key::FLOOR],
            &[key::NONE, key::ON, key::OFF],
            1.0,
        );
        let t = tables(&s).join("\n");
        assert!(
            t.contains("| aging pass, n = 3 | 0x8 off | 0x8 on | floor |"),
            "{t}"
        );
        assert!(t.contains("0x8 off/0x8 on 1.09x ["), "{t}");
        assert!(t.contains("0x8 on/floor"), "{t}");
        assert!(!t.contains("base"), "{t}");
        // Identical round samples: 1.00x, not significant.
        assert!(t.contains("0x8 on/0x8 off 1.00x [0.80, 1.25] n.s."), "{t}");
        assert!(t.contains("writes > 10 ms (of all) | 1 of 3 |"), "{t}");
        assert!(
            t.contains("| worst write per repetition (ms) | 0.00100 |"),
            "{t}"
        );
        assert!(t.contains(
            "aging pass 0x8 off/0x8 on: 1.09x–1.09x, significant at 0 of 1 points \
             (not significant: 64M x 1)."
        ));
    }

    #[test]
    fn merged_table_names_the_kernels() {
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
            2.0,
        );
        let t = tables(&merge(&s, &b).unwrap()).join("\n");
        assert!(
            t.contains("| base(6.12.117) | 0x8 off | 0x8 on | floor | floor(base boot) |"),
            "{t}"
        );
        for r in [
            "base(6.12.117)/0x8 on",
            "0x8 off/0x8 on",
            "0x8 on/floor",
            "base(6.12.117)/0x8 off",
            "floor/floor(base boot)",
            "0x8 on/base(6.12.117)",
            "no aging/no aging(base boot)",
        ] {
            assert!(t.contains(r), "{r} missing: {t}");
        }
        // The base run's floor was twice as slow: the drift control says so.
        assert!(t.contains("floor/floor(base boot) 0.5"), "{t}");
        let dir = std::env::temp_dir().join(format!("lru_gen_bench-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        write_plot_data(&merge(&s, &b).unwrap(), &dir).unwrap();
        let dat = std::fs::read_to_string(dir.join("bench-pass.dat")).unwrap();
        assert!(dat.contains("# columns: base off on floor\n"), "{dat}");
        let row = dat.lines().find(|l| l.starts_with("1 64 ")).unwrap();
        assert_eq!(row.split(' ').count(), 2 + 3 * 4, "{row}");
        let lat = std::fs::read_to_string(dir.join("bench-latency.dat")).unwrap();
        let blocks: Vec<&str> = lat
            .lines()
            .filter(|l| l.starts_with("# ") && !l.contains(':'))
            .collect();
        assert_eq!(
            blocks,
            ["# none_base_boot", "# none", "# base", "# off", "# on"]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
