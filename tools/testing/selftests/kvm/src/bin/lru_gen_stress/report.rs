// SPDX-License-Identifier: GPL-2.0
//! The KTAP cases and the verdict of a run: each case fails on the
//! violations of its kinds and when the operations it depends on never
//! happened; the counts are printed as diagnostics.

use crate::loops::{Eexist, Einval, EEXIST_UNEXPLAINED, EINVAL_UNEXPLAINED};
use crate::shared::Tally;
use crate::{CG_CHURN, CG_CKPT, CG_GUEST, CG_MIRROR};
use anyhow::{bail, Result};
use mglru_selftest::ktap::Ktap;
use std::time::Duration;

/// The KTAP cases, in order, and the kinds of violation each one fails on
/// (a kind no case lists fails `chaos_ran_every_operation`).
pub const CASES: [(&str, &[&str]); 7] = [
    (
        "chaos_ran_every_operation",
        &["aging", "toggle", "reclaim", "module", "mirror", "child"],
    ),
    (
        "secondary_only_pages_promoted_at_checkpoints",
        &["checkpoint"],
    ),
    ("fallback_loses_no_accessed_state", &["fallback"]),
    ("guest_data_intact_across_swap", &["integrity"]),
    ("counters_consistent", &["counters"]),
    ("no_kernel_reports", &[]),
    ("teardown_complete", &["teardown"]),
];

/// Counts that must not be zero: every kind of chaos must have happened.
const NEEDED: [&str; 17] = [
    "aging passes",
    "0x8 toggles",
    "guest pattern verifications",
    "VMs created and destroyed",
    "churn memslot cycles",
    "mirror users",
    "lru_mirror unloads",
    "mirror knob changes",
    "mirror pages answered failed under chaos",
    "lru_mirror refcount back to 0 after a batch",
    "processes killed with a live VM",
    "processes exited with a live VM",
    "VMs on THPs",
    "guest host MADV_DONTNEED (vCPUs running)",
    "memory.reclaim writes: all reclaimed",
    "guest pattern pages read back from swap",
    "walk-stat checks",
];

/// The KTAP plan of [`CASES`], reported in that order.
pub struct Report {
    pub t: Ktap,
    done: usize,
}

impl Report {
    pub fn new() -> Self {
        Report {
            t: Ktap::new(CASES.len()),
            done: 0,
        }
    }
    fn check(&mut self, name: &str, r: Result<()>) {
        assert_eq!(CASES[self.done].0, name, "KTAP cases out of order");
        self.t.check(name, r);
        self.done += 1;
    }
    /// Fails every case not reported yet.
    pub fn fail_rest(&mut self, why: &str) {
        for (name, _) in &CASES[self.done..] {
            self.t.fail(name, why);
        }
        self.done = CASES.len();
    }
}

/// What a finished run hands over for its verdict.
pub struct Outcome {
    pub tally: Tally,
    pub elapsed: Duration,
    pub min_passes: u64,
    /// Lockdep at the start (`None`: this kernel has none).
    pub lockdep: Option<bool>,
    pub kmemleak: bool,
    /// Kernel reports during the run (log, lockdep, kmemleak).
    pub kernel_reports: Vec<String>,
}

/// Prints the counts and reports every case.
pub fn finish(r: &mut Report, run: Outcome) {
    let tally = &run.tally;
    let c = |k: &str| tally.get(k);
    let t = &mut r.t;
    t.diag(&format!("ran {:.0} s; counts:", run.elapsed.as_secs_f64()));
    for (k, v) in &tally.counts {
        t.diag(&format!("  {k}: {v}"));
    }
    if run.lockdep.is_none() {
        t.diag("no lockdep in this kernel: its reports are not checked");
    }
    if !run.kmemleak {
        t.diag("no kmemleak in this kernel: leaks are not checked");
    }
    let mut chaos = violations(tally, "chaos_ran_every_operation");
    chaos.extend(unknown_violations(tally));
    r.check(
        "chaos_ran_every_operation",
        verdict(chaos, chaos_shortfall(tally, run.min_passes)),
    );
    let passes = c("aging passes");
    let (pg, pm, pk, pc) = secondary_passes(tally);
    r.t.diag(&format!(
        "{passes} aging passes ({:.1}/s), {} checkpoints, {} guest pages verified after swap-in, \
         {} guest pages host-verified in {} checks ({} of them read back from swap by the host)",
        passes as f64 / run.elapsed.as_secs_f64(),
        tally
            .counts
            .iter()
            .filter(|(k, _)| k.starts_with("checkpoints:"))
            .map(|(_, v)| v)
            .sum::<u64>(),
        c("guest pattern pages read back from swap"),
        c("guest pages host-verified"),
        c("guest host checks"),
        c("guest pages host-verified from swap")
    ));
    r.t.diag(&format!(
        "{} aging passes while a secondary MMU mapped the memcg (--min-passes {}): \
         guest {pg}, mirror users {pm}, checkpoint VM {pk}, checkpoints {pc}",
        pg + pm + pk + pc,
        run.min_passes
    ));
    r.t.diag(&format!(
        "aging EINVAL by cause: {} another ager's pass still running, {} it finished before \
         the re-read, {} unexplained (violations)",
        c(Einval::PassRunning.name()),
        c(Einval::PassFinished.name()),
        c(EINVAL_UNEXPLAINED)
    ));
    r.t.diag(&format!(
        "aging EEXIST (7.x) by cause: {} another ager's pass still running, {} it finished \
         before the re-read, {} unexplained (violations)",
        c(Eexist::PassRunning.name()),
        c(Eexist::PassFinished.name()),
        c(EEXIST_UNEXPLAINED)
    ));
    let ck_on = c("checkpoints: 0x8 on") + c("checkpoints: 0x8 off");
    r.check(
        "secondary_only_pages_promoted_at_checkpoints",
        verdict(
            violations(tally, "secondary_only_pages_promoted_at_checkpoints"),
            (ck_on == 0).then(|| "no checkpoint ran".into()),
        ),
    );
    let ck_fail = c("checkpoints: 0x8 on, mirror fails every page")
        + c("checkpoints: 0x8 on, mirror fails after k pages");
    r.check(
        "fallback_loses_no_accessed_state",
        verdict(
            violations(tally, "fallback_loses_no_accessed_state"),
            (ck_fail == 0).then(|| "no failure checkpoint ran".into()),
        ),
    );
    r.check(
        "guest_data_intact_across_swap",
        verdict(
            violations(tally, "guest_data_intact_across_swap"),
            guest_data_shortfall(tally),
        ),
    );
    r.check(
        "counters_consistent",
        verdict(violations(tally, "counters_consistent"), None),
    );
    r.check(
        "no_kernel_reports",
        verdict(run.kernel_reports.clone(), None),
    );
    r.check(
        "teardown_complete",
        verdict(violations(tally, "teardown_complete"), None),
    );
}

/// The violation kinds case `name` fails on.
fn kinds_of(name: &str) -> &'static [&'static str] {
    CASES
        .iter()
        .find(|(n, _)| *n == name)
        .map_or(&[], |(_, k)| k)
}

/// The violations case `case` fails on.
fn violations(tally: &Tally, case: &str) -> Vec<String> {
    let kinds = kinds_of(case);
    tally
        .violations
        .iter()
        .filter(|(k, _)| kinds.contains(&k.trim()))
        .map(|(k, m)| format!("{k}: {m}"))
        .collect()
}

/// Violations of a kind no case checks: they still fail the run.
fn unknown_violations(tally: &Tally) -> Vec<String> {
    tally
        .violations
        .iter()
        .filter(|(k, _)| !CASES.iter().any(|(_, ks)| ks.contains(&k.trim())))
        .map(|(k, m)| format!("violation of unknown kind {k}: {m}"))
        .collect()
}

/// Passes that aged memory some secondary MMU mapped: the guest's memcg
/// once its VM ran, the mirror users' while a batch was mirrored, the
/// checkpoints' memcg while the checkpoint VM mapped it (between
/// checkpoints) and the checkpoints' own passes.
fn secondary_passes(tally: &Tally) -> (u64, u64, u64, u64) {
    let mapped = |n: &str| tally.get(&format!("aging passes on /{n}, secondary MMU mapped"));
    (
        mapped(CG_GUEST),
        mapped(CG_MIRROR),
        mapped(CG_CKPT),
        tally.get("aging passes in checkpoints"),
    )
}

/// Why the chaos fell short, if it did: a kind of operation that never
/// happened, a memcg never aged, or fewer passes with a secondary MMU
/// mapping the memcg than `--min-passes`.
fn chaos_shortfall(tally: &Tally, min_passes: u64) -> Option<String> {
    let missing: Vec<&str> = NEEDED
        .iter()
        .copied()
        .filter(|k| tally.get(k) == 0)
        .collect();
    if !missing.is_empty() {
        return Some(format!("never happened: {missing:?}"));
    }
    let unaged: Vec<&str> = [CG_GUEST, CG_MIRROR, CG_CHURN, CG_CKPT]
        .into_iter()
        .filter(|n| tally.get(&format!("aging passes on /{n}")) == 0)
        .collect();
    if !unaged.is_empty() {
        return Some(format!("memcgs never aged: {unaged:?}"));
    }
    let (pg, pm, pk, pc) = secondary_passes(tally);
    let secondary = pg + pm + pk + pc;
    (secondary < min_passes).then(|| {
        format!(
            "{secondary} aging passes while a secondary MMU mapped the memcg < --min-passes {min_passes}"
        )
    })
}

/// Why the guest data check saw too little, if it did: no pattern page
/// was swapped out before a guest verification, or the host never read
/// the guest's memory back after one.
fn guest_data_shortfall(tally: &Tally) -> Option<String> {
    if tally.get("guest pattern pages read back from swap") == 0 {
        Some("no pattern page was swapped out: the check saw no swap".into())
    } else if tally.get("guest pages host-verified") == 0 {
        Some("the host never read the guest's memory back after a guest verification".into())
    } else {
        None
    }
}

/// A case's result: its violations and what else failed it.
fn verdict(v: Vec<String>, extra: Option<String>) -> Result<()> {
    let mut all = v;
    all.extend(extra);
    if all.is_empty() {
        Ok(())
    } else {
        bail!(
            "{} violation(s): {}",
            all.len(),
            all.iter().take(10).cloned().collect::<Vec<_>>().join("; ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The source files of this binary, read at test time.
    fn sources() -> Vec<(String, String)> {
        fn walk(dir: &std::path::Path, out: &mut Vec<(String, String)>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    walk(&p, out);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    let text = std::fs::read_to_string(&p).unwrap();
                    out.push((p.display().to_string(), text));
                }
            }
        }
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/bin/lru_gen_stress");
        let mut out = Vec::new();
        walk(&dir, &mut out);
        out
    }

    /// Every violation kind this binary reports is one some KTAP case
    /// checks (the run also fails on an unknown one, see `finish`).
    #[test]
    fn every_violation_kind_has_a_case() {
        let known = |k: &str| CASES.iter().any(|(_, ks)| ks.contains(&k));
        let mut seen = 0;
        let files = sources();
        assert!(files.len() >= 8, "found only {} source files", files.len());
        for (file, src) in &files {
            for (pat, end) in [("violation(\"", '"'), ("\"VIOLATION ", ':')] {
                for (i, _) in src.match_indices(pat) {
                    let rest = &src[i + pat.len()..];
                    let kind = &rest[..rest.find(end).unwrap()];
                    if kind.chars().all(|c| c.is_ascii_lowercase()) {
                        assert!(
                            known(kind),
                            "{file}: violation kind {kind:?} has no KTAP case"
                        );
                        seen += 1;
                    }
                }
            }
        }
        assert!(seen > 20, "found only {seen} violation sites");
        // The checkpoint's kinds are chosen by mode.
        assert!(known("checkpoint") && known("fallback"));
    }

    #[test]
    fn chaos_falls_short_until_everything_ran() {
        let mut t = Tally::default();
        assert!(chaos_shortfall(&t, 0).unwrap().contains("never happened"));
        for k in NEEDED {
            t.counts.insert(k.to_owned(), 1);
        }
        assert!(chaos_shortfall(&t, 0).unwrap().contains("never aged"));
        for n in [CG_GUEST, CG_MIRROR, CG_CHURN, CG_CKPT] {
            t.counts.insert(format!("aging passes on /{n}"), 5);
        }
        assert_eq!(chaos_shortfall(&t, 0), None);
        t.counts.insert("aging passes in checkpoints".into(), 12);
        assert!(chaos_shortfall(&t, 13).is_some());
        assert_eq!(chaos_shortfall(&t, 12), None);
    }
}
