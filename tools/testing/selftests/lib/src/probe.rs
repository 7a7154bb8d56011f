// SPDX-License-Identifier: GPL-2.0
//! The `lru_gen_probe` test module (`testmod/lru_gen_probe.c`): kretprobes
//! on the MMU notifier aging entry points.
//!
//! - [`Mode::Time`]: the time MGLRU spends asking secondary MMUs per PTE
//!   table, i.e. inside the walk's PTE lock: one sample per table, summing
//!   the fast-only call(s) of the series or 6.12's per-page `clear_young()`
//!   calls for that table.
//! - [`Mode::Shift`]: a fault injection that shifts every fast-only answer by
//!   one page, for `lru_gen_exact_test` to catch.
//!
//! The module is loaded for the lifetime of a [`Probe`] and unloaded when it
//! is dropped.

use crate::module;
use crate::sys;
use anyhow::{bail, Context, Result};

const NAME: &str = "lru_gen_probe";
const DEBUGFS: &str = "/sys/kernel/debug/lru_gen_probe";

/// What the loaded module does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Time the notifier calls per PTE table.
    Time,
    /// Shift fast-only answers by one page.
    Shift,
}

/// Which entry point a [`Sample`] timed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `test_clear_young_fast_only()`: the series' batch.
    Fast,
    /// `clear_young()`: 6.12's per-page question (and the series' fallback).
    Page,
}

/// The notifier time of one PTE table in one walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    /// Summed duration of the calls, in ns (probe overhead included).
    pub ns: u64,
    /// How many calls were summed.
    pub calls: u32,
    pub op: Op,
}

/// Parses `hold_ns`: one `<ns> <calls> <fast|page>` line per sample.
pub fn parse_samples(text: &str) -> Result<Vec<Sample>> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let [ns, calls, op] = f[..] else {
                bail!("hold_ns line {l:?}: want <ns> <calls> <op>");
            };
            let op = match op {
                "fast" => Op::Fast,
                "page" => Op::Page,
                _ => bail!("hold_ns line {l:?}: unknown op {op:?}"),
            };
            Ok(Sample {
                ns: ns.parse().with_context(|| format!("hold_ns line {l:?}"))?,
                calls: calls
                    .parse()
                    .with_context(|| format!("hold_ns line {l:?}"))?,
                op,
            })
        })
        .collect()
}

/// The loaded module (unloaded on drop).
pub struct Probe {
    mode: Mode,
}

impl Probe {
    /// Loads the module in `mode`. Fails if it is loaded already (another
    /// user's samples or injection would mix with ours).
    pub fn load(mode: Mode) -> Result<Probe> {
        if module::is_loaded(NAME) {
            bail!("{NAME} is loaded already");
        }
        let param = match mode {
            Mode::Time => "mode=time",
            Mode::Shift => "mode=shift",
        };
        module::load(&module::project_testmod(NAME), param)?;
        Ok(Probe { mode })
    }

    /// The module's counters (`stats`), e.g. `shifted`, `dropped`.
    pub fn stat(&self, key: &str) -> Result<i64> {
        let text = sys::read(format!("{DEBUGFS}/stats"))?;
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
            .with_context(|| format!("{DEBUGFS}/stats has no {key}: {text:?}"))?
            .split_whitespace()
            .next()
            .unwrap_or("")
            .parse()
            .with_context(|| format!("{DEBUGFS}/stats: {key}"))
    }

    /// Empties the sample buffer.
    pub fn clear(&self) -> Result<()> {
        sys::write(format!("{DEBUGFS}/hold_ns"), "clear")
    }

    /// The samples since the last [`Probe::clear`]; fails if some were
    /// dropped (the buffer was full), as the distribution would be biased.
    pub fn samples(&self) -> Result<Vec<Sample>> {
        if self.mode != Mode::Time {
            bail!("{NAME} was loaded with {:?}, not Time", self.mode);
        }
        let s = parse_samples(&sys::read(format!("{DEBUGFS}/hold_ns"))?)?;
        let dropped = self.stat("dropped")?;
        if dropped != 0 {
            bail!("{NAME} dropped {dropped} samples (buffer full)");
        }
        Ok(s)
    }
}

impl Probe {
    /// Unloads the module, retrying while it is busy (an open debugfs
    /// file); fails if it stays loaded: an injection left behind would
    /// change every later test of the boot.
    pub fn unload(self) -> Result<()> {
        std::mem::forget(self);
        for _ in 0..50 {
            if module::unload(NAME).is_ok() || !module::is_loaded(NAME) {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        bail!("{NAME} is still loaded after 5 s of delete_module")
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        if module::unload(NAME).is_err() && module::is_loaded(NAME) {
            eprintln!("# WARNING: {NAME} could not be unloaded");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_parse() {
        let s = parse_samples("1200 1 fast\n90000 512 page\n\n").unwrap();
        assert_eq!(
            s,
            [
                Sample {
                    ns: 1200,
                    calls: 1,
                    op: Op::Fast
                },
                Sample {
                    ns: 90000,
                    calls: 512,
                    op: Op::Page
                }
            ]
        );
        assert!(parse_samples("12 1").is_err());
        assert!(parse_samples("12 1 slow").is_err());
        assert!(parse_samples("x 1 fast").is_err());
        assert_eq!(parse_samples("").unwrap(), []);
    }
}
