// SPDX-License-Identifier: GPL-2.0
//! Measured aging passes: make a memcg's pages old, let something touch a
//! known subset, force one aging pass and count what it promoted.
//!
//! The kernel does not expose a page's generation, so pages are counted per
//! generation: the pass started from `max_seq` fills generation `max_seq`
//! with the pages it found young. Host-side noise (the test's own stack and
//! heap pages that happen to be young) counts as "untouched promoted"; it is
//! a few pages.

use crate::features::CapsGuard;
use crate::lru_gen::{self, WalkStats};
use crate::memcg::Memcg;
use crate::timing::{ms, timed};
use anyhow::{bail, Context, Result};
use std::time::Duration;

/// Node the tests age (the test VM has one).
pub const NID: u32 = 0;
/// Least fraction of touched pages a pass must promote.
pub const MIN_TOUCHED: f64 = 0.95;
/// Largest fraction of untouched pages a pass may promote.
pub const MAX_UNTOUCHED: f64 = 0.05;

/// One measured aging pass.
#[derive(Debug, Clone)]
pub struct Pass {
    /// Pages that were touched (4 KiB pages).
    pub touched: u64,
    /// Pages that were not.
    pub untouched: u64,
    /// Pages the pass moved into the generation it filled.
    pub promoted: u64,
    /// Wall time of the pass (the debugfs write).
    pub time: Duration,
    /// The pass's page-table walk stats from `lru_gen_full`.
    pub walk: WalkStats,
}

impl Pass {
    /// Fraction of touched pages promoted.
    pub fn touched_fraction(&self) -> f64 {
        self.promoted.min(self.touched) as f64 / self.touched.max(1) as f64
    }

    /// Upper bound of the fraction of untouched pages promoted: every
    /// promoted page beyond the touched ones counts.
    pub fn untouched_fraction(&self) -> f64 {
        self.promoted.saturating_sub(self.touched) as f64 / self.untouched.max(1) as f64
    }

    /// Walk stat `letter` of the pass (see [`WalkStats`]).
    pub fn counter(&self, letter: char) -> Result<u64> {
        self.walk
            .get(letter)
            .with_context(|| format!("lru_gen_full lacks walk stat {letter:?}: {:?}", self.walk))
    }

    /// One line for KTAP diagnostics.
    pub fn describe(&self) -> String {
        format!(
            "touched {}/{} promoted ({:.1}%), untouched promoted <= {:.2}%, pass {:.1} ms, \
             walk stats {:?}",
            self.promoted.min(self.touched),
            self.touched,
            100.0 * self.touched_fraction(),
            100.0 * self.untouched_fraction(),
            ms(self.time),
            self.walk.counters
        )
    }

    /// Fails unless at least [`MIN_TOUCHED`] of the touched and at most
    /// [`MAX_UNTOUCHED`] of the untouched pages were promoted.
    pub fn check_fractions(&self) -> Result<()> {
        if self.touched_fraction() < MIN_TOUCHED || self.untouched_fraction() > MAX_UNTOUCHED {
            bail!(
                "expected >= {:.0}% touched and <= {:.0}% untouched promoted: {}",
                100.0 * MIN_TOUCHED,
                100.0 * MAX_UNTOUCHED,
                self.describe()
            );
        }
        Ok(())
    }

    /// Fails unless walk stat `letter` is `want`.
    pub fn expect_counter(&self, letter: char, want: u64) -> Result<()> {
        let got = self.counter(letter)?;
        if got != want {
            bail!(
                "walk stat {letter} is {got}, expected {want}: {}",
                self.describe()
            );
        }
        Ok(())
    }
}

/// Remembers the MGLRU capability mask (restored when the guard drops) and
/// moves the calling process into a fresh memcg `name`: the sandbox every
/// aging test runs in. Drop the memcg before the guard.
pub fn enter_sandbox(name: &str) -> Result<(CapsGuard, Memcg)> {
    let guard = CapsGuard::save()?;
    let cg = Memcg::create(name)?;
    cg.enter()?;
    Ok((guard, cg))
}

/// Forces one aging pass on the memcg (node [`NID`]); returns the
/// `max_seq` it started from (the generation it filled) and its wall time.
pub fn age_once(cg: &Memcg) -> Result<(u64, Duration)> {
    let all = lru_gen::read()?;
    let (id, node) = lru_gen::lruvec_in(&all, &cg.path(), NID)?;
    let max = node.max_seq().context("no generations")?;
    let (r, t) = timed(|| lru_gen::age(id, NID, max, true, true));
    r.with_context(|| format!("aging memcg {} from max_seq {max}", cg.path()))?;
    Ok((max, t))
}

/// Makes every page of the memcg old (two passes), runs `touch`, then
/// measures one pass. `touched` and `untouched` are what `touch` touches and
/// leaves alone, in 4 KiB pages.
pub fn measured_pass(
    cg: &Memcg,
    touched: u64,
    untouched: u64,
    touch: impl FnOnce() -> Result<()>,
) -> Result<Pass> {
    age_once(cg)?;
    age_once(cg)?;
    touch()?;
    let before = lru_gen::node_full_of(&cg.path(), NID)?;
    let (seq, time) = age_once(cg)?;
    let after = lru_gen::node_full_of(&cg.path(), NID)?;
    let gen_before = before.gen(seq).map_or(0, |g| g.anon);
    let gen_after = after
        .gen(seq)
        .with_context(|| format!("generation {seq} vanished"))?;
    Ok(Pass {
        touched,
        untouched,
        promoted: gen_after.anon.saturating_sub(gen_before),
        time,
        walk: gen_after.walk.clone().unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pass(touched: u64, untouched: u64, promoted: u64) -> Pass {
        Pass {
            touched,
            untouched,
            promoted,
            time: Duration::from_millis(1),
            walk: WalkStats::default(),
        }
    }

    #[test]
    fn fractions_attribute_excess_to_untouched() {
        let p = pass(100, 900, 145);
        assert_eq!(p.touched_fraction(), 1.0);
        assert_eq!(p.untouched_fraction(), 45.0 / 900.0);
        assert!(p.check_fractions().is_ok());
        assert!(pass(100, 900, 94).check_fractions().is_err());
        assert!(pass(100, 900, 146).check_fractions().is_err());
        assert!(pass(100, 0, 100).check_fractions().is_ok());
        assert!(pass(100, 900, 1).counter('c').is_err());
    }
}
