// SPDX-License-Identifier: GPL-2.0
//! Timing helpers for the measurements the selftests print.

use std::time::{Duration, Instant};

/// Runs `f` and returns its result with the wall time it took.
pub fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let r = f();
    (r, start.elapsed())
}

/// Summary statistics of a set of durations.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stats {
    /// Number of samples.
    pub n: usize,
    /// Arithmetic mean.
    pub mean: Duration,
    /// Median (lower middle for an even count).
    pub median: Duration,
    /// Smallest sample.
    pub min: Duration,
    /// Largest sample.
    pub max: Duration,
}

impl Stats {
    /// Statistics of `samples`; `None` when there are none.
    pub fn of(samples: &[Duration]) -> Option<Stats> {
        if samples.is_empty() {
            return None;
        }
        let mut s = samples.to_vec();
        s.sort();
        let total: Duration = s.iter().sum();
        Some(Stats {
            n: s.len(),
            mean: total / s.len() as u32,
            median: s[(s.len() - 1) / 2],
            min: s[0],
            max: s[s.len() - 1],
        })
    }
}

/// Milliseconds as a float, for printing.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_basic() {
        let d = |ms| Duration::from_millis(ms);
        let s = Stats::of(&[d(3), d(1), d(2), d(10)]).unwrap();
        assert_eq!(s.n, 4);
        assert_eq!(s.min, d(1));
        assert_eq!(s.max, d(10));
        assert_eq!(s.median, d(2));
        assert_eq!(s.mean, d(4));
        assert!(Stats::of(&[]).is_none());
    }
}
