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
    /// Sample standard deviation (0 for a single sample).
    pub stddev: Duration,
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
        let mean = total / s.len() as u32;
        let var = if s.len() > 1 {
            let m = mean.as_secs_f64();
            s.iter().map(|x| (x.as_secs_f64() - m).powi(2)).sum::<f64>() / (s.len() - 1) as f64
        } else {
            0.0
        };
        Some(Stats {
            n: s.len(),
            mean,
            stddev: Duration::from_secs_f64(var.sqrt()),
            median: s[(s.len() - 1) / 2],
            min: s[0],
            max: s[s.len() - 1],
        })
    }
}

/// Two-sided 95 % quantile of Student's t distribution with `df` degrees
/// of freedom (table for small `df`, the normal quantile beyond 30).
pub fn t95(df: usize) -> f64 {
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => f64::INFINITY,
        1..=30 => T[df - 1],
        _ => 1.960,
    }
}

/// The ratio of two means, `a / b`, with its 95 % confidence interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ratio {
    /// `mean(a) / mean(b)`.
    pub value: f64,
    /// Lower bound of the 95 % interval.
    pub lo: f64,
    /// Upper bound of the 95 % interval.
    pub hi: f64,
}

impl Ratio {
    /// `a.mean / b.mean` with a 95 % interval from the delta method (the
    /// relative standard errors of both means add in quadrature) and
    /// Student's t with Welch–Satterthwaite degrees of freedom. `None` when
    /// either side has fewer than two samples or a zero mean.
    pub fn of(a: &Stats, b: &Stats) -> Option<Ratio> {
        let (ma, mb) = (a.mean.as_secs_f64(), b.mean.as_secs_f64());
        if a.n < 2 || b.n < 2 || ma <= 0.0 || mb <= 0.0 {
            return None;
        }
        let va = a.stddev.as_secs_f64().powi(2) / a.n as f64;
        let vb = b.stddev.as_secs_f64().powi(2) / b.n as f64;
        let value = ma / mb;
        let rel = (va / (ma * ma) + vb / (mb * mb)).sqrt();
        let df = if va + vb > 0.0 {
            (va + vb).powi(2) / (va * va / (a.n - 1) as f64 + vb * vb / (b.n - 1) as f64)
        } else {
            (a.n + b.n - 2) as f64
        };
        let half = t95(df.floor().max(1.0) as usize) * rel * value;
        Some(Ratio {
            value,
            lo: value - half,
            hi: value + half,
        })
    }

    /// Whether the interval includes 1, i.e. no significant difference.
    pub fn includes_one(&self) -> bool {
        self.lo <= 1.0 && 1.0 <= self.hi
    }

    /// `"0.52x [0.47, 0.57]"`, with `" (not significant)"` when the interval
    /// includes 1.
    pub fn describe(&self) -> String {
        format!(
            "{:.2}x [{:.2}, {:.2}]{}",
            self.value,
            self.lo,
            self.hi,
            if self.includes_one() {
                " (not significant)"
            } else {
                ""
            }
        )
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
        // Sample standard deviation of 1, 2, 3, 10: sqrt(50/3).
        let sd = s.stddev.as_secs_f64() * 1e3;
        assert!((sd - (50.0f64 / 3.0).sqrt()).abs() < 1e-6, "{sd}");
        assert_eq!(Stats::of(&[d(5)]).unwrap().stddev, Duration::ZERO);
    }

    #[test]
    fn t_quantiles() {
        assert_eq!(t95(4), 2.776);
        assert_eq!(t95(30), 2.042);
        assert_eq!(t95(1000), 1.960);
        assert!(t95(0).is_infinite());
    }

    #[test]
    fn ratio_interval() {
        let d = |ms| Duration::from_millis(ms);
        let a = Stats::of(&[d(50), d(52), d(48), d(50), d(50)]).unwrap();
        let b = Stats::of(&[d(100), d(104), d(96), d(100), d(100)]).unwrap();
        let r = Ratio::of(&a, &b).unwrap();
        assert!((r.value - 0.5).abs() < 1e-9);
        assert!(r.lo < 0.5 && r.hi > 0.5 && r.hi < 1.0, "{r:?}");
        assert!(!r.includes_one());
        assert!(r.describe().starts_with("0.50x ["));
        // Overlapping noisy samples: the interval includes 1.
        let c = Stats::of(&[d(90), d(110), d(100), d(95), d(105)]).unwrap();
        let r = Ratio::of(&c, &b).unwrap();
        assert!(r.includes_one(), "{r:?}");
        assert!(r.describe().ends_with("(not significant)"));
        // Identical constant samples: a zero-width interval at 1.
        let r = Ratio::of(&b, &b).unwrap();
        assert!(r.includes_one());
        assert!(Ratio::of(&Stats::of(&[d(1)]).unwrap(), &b).is_none());
    }
}
