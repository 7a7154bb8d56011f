// SPDX-License-Identifier: GPL-2.0
//! `guest_scenario report`: the runs of every mode side by side, per phase
//! and metric: mean ± stddev, and the ratios of the means with their 95 %
//! intervals (log scale, Welch; "n.s." when the interval includes 1).

use anyhow::{bail, Context, Result};
use mglru_selftest::timing::{Moments, Ratio};
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Column order of the table.
const MODES: [(&str, &str); 3] = [
    ("base", "base kernel"),
    ("off", "0x8 off"),
    ("on", "0x8 on"),
];
/// Ratios printed (numerator, denominator).
const RATIOS: [(&str, &str); 3] = [("on", "base"), ("on", "off"), ("off", "base")];

/// One reported metric of a phase.
struct Metric {
    key: &'static str,
    label: &'static str,
    /// JSON pointer into a phase object; several are summed.
    paths: &'static [&'static str],
    /// Only in this phase (None: both).
    phase: Option<&'static str>,
}

const METRICS: &[Metric] = &[
    Metric {
        key: "throughput",
        label: "throughput (req/s)",
        paths: &["/load/throughput"],
        phase: None,
    },
    Metric {
        key: "p50_us",
        label: "latency p50 (us)",
        paths: &["/load/all/p50_us"],
        phase: None,
    },
    Metric {
        key: "p99_us",
        label: "latency p99 (us)",
        paths: &["/load/all/p99_us"],
        phase: None,
    },
    Metric {
        key: "max_us",
        label: "latency max (us)",
        paths: &["/load/all/max_us"],
        phase: None,
    },
    Metric {
        key: "hot_p99_us",
        label: "hot-set p99 (us)",
        paths: &["/load/hot/p99_us"],
        phase: None,
    },
    Metric {
        key: "cold_p99_us",
        label: "cold-set p99 (us)",
        paths: &["/load/cold/p99_us"],
        phase: None,
    },
    Metric {
        key: "refault_anon",
        label: "memcg workingset_refault_anon",
        paths: &["/memcg/workingset_refault_anon"],
        phase: None,
    },
    Metric {
        key: "pgmajfault",
        label: "memcg pgmajfault",
        paths: &["/memcg/pgmajfault"],
        phase: None,
    },
    Metric {
        key: "pswpin",
        label: "host pswpin (pages)",
        paths: &["/vmstat/pswpin"],
        phase: None,
    },
    Metric {
        key: "pswpout",
        label: "host pswpout (pages)",
        paths: &["/vmstat/pswpout"],
        phase: None,
    },
    Metric {
        key: "aging_passes",
        label: "aging passes",
        paths: &["/aging/passes"],
        phase: None,
    },
    Metric {
        key: "walks_seen",
        label: "aging walks sampled",
        paths: &["/aging/walks_seen"],
        phase: None,
    },
    Metric {
        key: "walk_c",
        label: "walk C (fast-only calls)",
        paths: &["/aging/counters/c"],
        phase: None,
    },
    Metric {
        key: "walk_q",
        label: "walk Q (pages asked)",
        paths: &["/aging/counters/q"],
        phase: None,
    },
    Metric {
        key: "walk_s",
        label: "walk S (answered young)",
        paths: &["/aging/counters/s"],
        phase: None,
    },
    Metric {
        key: "walk_e",
        label: "walk E (failed)",
        paths: &["/aging/counters/e"],
        phase: None,
    },
    Metric {
        key: "walk_y",
        label: "walk Y (young entries)",
        paths: &["/aging/counters/y"],
        phase: None,
    },
    Metric {
        key: "qemu_sys_ms",
        label: "QEMU system CPU (ms)",
        paths: &["/qemu_sys_ms"],
        phase: None,
    },
    Metric {
        key: "reclaim_cpu_ms",
        label: "memory.reclaim writer CPU (ms)",
        paths: &["/reclaimer/cpu_ms"],
        phase: Some("proactive"),
    },
    Metric {
        key: "set_limit_cpu_ms",
        label: "memory.max writer CPU (ms)",
        paths: &["/set_limit_cpu_ms"],
        phase: Some("limit"),
    },
    Metric {
        key: "psi_some_ms",
        label: "memcg memory stall, some (ms)",
        paths: &["/psi_some_ms"],
        phase: None,
    },
    Metric {
        key: "guest_pgmajfault",
        label: "guest pgmajfault",
        paths: &["/guest_vmstat/pgmajfault"],
        phase: None,
    },
    Metric {
        key: "guest_pgscan",
        label: "guest pgscan",
        paths: &["/guest_vmstat/pgscan_kswapd", "/guest_vmstat/pgscan_direct"],
        phase: None,
    },
];

const PHASES: [&str; 2] = ["limit", "proactive"];

fn value_of(phase: &Value, m: &Metric) -> Option<f64> {
    let mut sum = 0.0;
    for p in m.paths {
        sum += phase.pointer(p)?.as_f64()?;
    }
    Some(sum)
}

fn phase_of<'a>(run: &'a Value, name: &str) -> Option<&'a Value> {
    run["phases"].as_array()?.iter().find(|p| p["name"] == name)
}

/// Samples of `metric` in `phase` for `mode` (runs lacking it are left out).
fn samples(runs: &[Value], mode: &str, phase: &str, m: &Metric) -> Vec<f64> {
    runs.iter()
        .filter(|r| r["mode"] == mode)
        .filter_map(|r| value_of(phase_of(r, phase)?, m))
        .collect()
}

fn fmt_num(v: f64) -> String {
    if v.abs() >= 100.0 || v == 0.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// The table as JSON rows and as Markdown.
pub fn table(runs: &[Value]) -> (Vec<Value>, String) {
    let modes: Vec<(&str, &str)> = MODES
        .iter()
        .copied()
        .filter(|(m, _)| runs.iter().any(|r| r["mode"] == *m))
        .collect();
    let ratios: Vec<(&str, &str)> = RATIOS
        .iter()
        .copied()
        .filter(|(a, b)| modes.iter().any(|m| m.0 == *a) && modes.iter().any(|m| m.0 == *b))
        .collect();
    let mut md = String::from("| phase | metric |");
    for (_, title) in &modes {
        let _ = write!(md, " {title} |");
    }
    for (a, b) in &ratios {
        let _ = write!(md, " {a}/{b} |");
    }
    md.push('\n');
    md += &"|---".repeat(2 + modes.len() + ratios.len());
    md += "|\n";
    let mut rows = Vec::new();
    for phase in PHASES {
        for m in METRICS {
            if m.phase.is_some_and(|p| p != phase) {
                continue;
            }
            let per_mode: Vec<(&str, Vec<f64>)> = modes
                .iter()
                .map(|(k, _)| (*k, samples(runs, k, phase, m)))
                .collect();
            if per_mode.iter().all(|(_, s)| s.is_empty()) {
                continue;
            }
            let _ = write!(md, "| {phase} | {} |", m.label);
            let mut cols = serde_json::Map::new();
            for (k, s) in &per_mode {
                match Moments::of(s) {
                    Some(mo) => {
                        let _ = write!(
                            md,
                            " {} ± {} (n={}) |",
                            fmt_num(mo.mean),
                            fmt_num(mo.sd),
                            mo.n
                        );
                        cols.insert(
                            k.to_string(),
                            json!({"n": mo.n, "mean": mo.mean, "sd": mo.sd, "samples": s}),
                        );
                    }
                    None => md += " – |",
                }
            }
            let mut rj = serde_json::Map::new();
            for (a, b) in &ratios {
                let sa = &per_mode.iter().find(|x| x.0 == *a).unwrap().1;
                let sb = &per_mode.iter().find(|x| x.0 == *b).unwrap().1;
                match Ratio::of_samples(sa, sb) {
                    Some(r) => {
                        let _ = write!(md, " {} |", r.describe());
                        rj.insert(
                            format!("{a}/{b}"),
                            json!({"value": r.value, "lo": r.lo, "hi": r.hi, "significant": !r.includes_one()}),
                        );
                    }
                    None => md += " – |",
                }
            }
            md.push('\n');
            rows.push(json!({"phase": phase, "metric": m.key, "label": m.label, "modes": cols, "ratios": rj}));
        }
    }
    (rows, md)
}

/// gnuplot data: one block per plotted metric, one line per phase with
/// mean, lower and upper 95 % bound of the mean for each mode.
fn dat(rows: &[Value], modes: &[(&str, &str)]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# labels: {}",
        modes.iter().map(|m| m.1).collect::<Vec<_>>().join("|")
    );
    for key in ["throughput", "p99_us", "qemu_sys_ms", "refault_anon"] {
        let _ = writeln!(s, "# metric {key}");
        for phase in PHASES {
            let Some(r) = rows
                .iter()
                .find(|r| r["phase"] == phase && r["metric"] == key)
            else {
                continue;
            };
            let _ = write!(s, "{phase}");
            for (m, _) in modes {
                let c = &r["modes"][*m];
                let (mean, sd, n) = (c["mean"].as_f64(), c["sd"].as_f64(), c["n"].as_u64());
                match (mean, sd, n) {
                    (Some(mean), Some(sd), Some(n)) => {
                        let (lo, hi) = Moments {
                            n: n as usize,
                            mean,
                            sd,
                        }
                        .mean_ci95()
                        .unwrap_or((mean, mean));
                        let _ = write!(s, " {mean} {} {hi}", lo.max(0.0));
                    }
                    _ => s += " NaN NaN NaN",
                }
            }
            s.push('\n');
        }
        s += "\n\n";
    }
    s
}

/// `guest_scenario report`.
pub fn report(out: &Path, files: &[PathBuf]) -> Result<()> {
    let mut runs = Vec::new();
    for f in files {
        let v: Value = serde_json::from_str(
            &std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?,
        )
        .with_context(|| format!("parsing {}", f.display()))?;
        if !v["mode"].is_string() || !v["phases"].is_array() {
            bail!("{} is not a guest_scenario run file", f.display());
        }
        runs.push(v);
    }
    let (rows, md) = table(&runs);
    let modes: Vec<(&str, &str)> = MODES
        .iter()
        .copied()
        .filter(|(m, _)| runs.iter().any(|r| r["mode"] == *m))
        .collect();
    std::fs::create_dir_all(out)?;
    let mut releases: Vec<String> = runs
        .iter()
        .filter_map(|r| r["kernel_release"].as_str().map(str::to_owned))
        .collect();
    releases.sort();
    releases.dedup();
    let doc = json!({
        "kernels": releases,
        "table": rows,
        "runs": runs,
    });
    std::fs::write(
        out.join("scenario.json"),
        serde_json::to_string_pretty(&doc)? + "\n",
    )?;
    let mut head = format!("Kernels: {}. Runs per mode:", releases.join(", "));
    for (m, t) in &modes {
        let _ = write!(
            head,
            " {t} {}",
            runs.iter().filter(|r| r["mode"] == *m).count()
        );
    }
    let text = format!("{head}\n\n{md}");
    std::fs::write(out.join("scenario.md"), &text)?;
    std::fs::write(out.join("scenario.dat"), dat(&rows, &modes))?;
    println!("{text}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(mode: &str, tp: f64, passes: u64) -> Value {
        json!({"mode": mode, "phases": [
            {"name": "limit", "load": {"throughput": tp, "all": {"p99_us": 10}}, "aging": {"passes": passes, "counters": {}}, "set_limit_cpu_ms": 1.0},
            {"name": "proactive", "load": {"throughput": tp * 2.0}, "aging": {"passes": passes}, "reclaimer": {"cpu_ms": 5.0}}
        ]})
    }

    #[test]
    fn table_has_modes_ratios_and_phase_only_metrics() {
        let runs = vec![
            run("on", 100.0, 3),
            run("on", 110.0, 3),
            run("base", 50.0, 1),
            run("base", 55.0, 2),
        ];
        let (rows, md) = table(&runs);
        assert!(md.contains("| base kernel | 0x8 on | on/base |"), "{md}");
        assert!(!md.contains("0x8 off"));
        let tp = rows
            .iter()
            .find(|r| r["phase"] == "limit" && r["metric"] == "throughput")
            .unwrap();
        assert_eq!(tp["modes"]["on"]["mean"], 105.0);
        let r = tp["ratios"]["on/base"]["value"].as_f64().unwrap();
        assert!((r - 105.0 / 52.5).abs() < 1e-9);
        assert!(rows
            .iter()
            .any(|r| r["phase"] == "proactive" && r["metric"] == "reclaim_cpu_ms"));
        assert!(!rows
            .iter()
            .any(|r| r["phase"] == "limit" && r["metric"] == "reclaim_cpu_ms"));
        assert!(!rows
            .iter()
            .any(|r| r["phase"] == "proactive" && r["metric"] == "set_limit_cpu_ms"));
        // A metric no run has is left out; one with no spread has no ratio
        // interval problems (constant samples).
        assert!(!rows.iter().any(|r| r["metric"] == "walk_c"));
        let p = rows
            .iter()
            .find(|r| r["phase"] == "limit" && r["metric"] == "p99_us")
            .unwrap();
        assert_eq!(p["ratios"]["on/base"]["value"], 1.0);
    }

    #[test]
    fn dat_blocks() {
        let runs = vec![
            run("on", 100.0, 3),
            run("on", 110.0, 3),
            run("off", 50.0, 1),
            run("off", 55.0, 2),
        ];
        let (rows, _) = table(&runs);
        let d = dat(&rows, &[("off", "0x8 off"), ("on", "0x8 on")]);
        assert!(
            d.starts_with("# labels: 0x8 off|0x8 on\n# metric throughput\nlimit 52.5 "),
            "{d}"
        );
        assert_eq!(d.matches("# metric").count(), 4);
    }
}
