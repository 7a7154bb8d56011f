// SPDX-License-Identifier: GPL-2.0
//! Timing helpers for the measurements the selftests print, and the
//! statistics of their comparisons: means with their 95 % intervals and
//! ratios of means with 95 % intervals taken on the log scale.

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
        let secs: Vec<f64> = s.iter().map(Duration::as_secs_f64).collect();
        let sd = Moments::of(&secs).map_or(0.0, |m| m.sd);
        Some(Stats {
            n: s.len(),
            mean,
            stddev: Duration::from_secs_f64(sd),
            median: s[(s.len() - 1) / 2],
            min: s[0],
            max: s[s.len() - 1],
        })
    }

    /// The count, mean and standard deviation in seconds.
    pub fn moments(&self) -> Moments {
        Moments {
            n: self.n,
            mean: self.mean.as_secs_f64(),
            sd: self.stddev.as_secs_f64(),
        }
    }
}

/// Count, mean and sample standard deviation of plain numbers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Moments {
    /// Number of samples.
    pub n: usize,
    /// Arithmetic mean.
    pub mean: f64,
    /// Sample standard deviation (n − 1 in the denominator; 0 for one
    /// sample).
    pub sd: f64,
}

impl Moments {
    /// Moments of `samples`; `None` when there are none or one is not
    /// finite.
    pub fn of(samples: &[f64]) -> Option<Moments> {
        if samples.is_empty() || samples.iter().any(|x| !x.is_finite()) {
            return None;
        }
        let n = samples.len();
        let mean = samples.iter().sum::<f64>() / n as f64;
        let var = if n > 1 {
            samples.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64
        } else {
            0.0
        };
        Some(Moments {
            n,
            mean,
            sd: var.sqrt(),
        })
    }

    /// The 95 % interval of the mean, `mean ± t(0.975, n − 1)·sd/√n`;
    /// `None` for fewer than two samples.
    pub fn mean_ci95(&self) -> Option<(f64, f64)> {
        if self.n < 2 {
            return None;
        }
        let half = t95((self.n - 1) as f64) * self.sd / (self.n as f64).sqrt();
        Some((self.mean - half, self.mean + half))
    }
}

/// `ln Γ(x)` for `x > 0` (Lanczos, g = 7, 9 terms: about 15 digits).
fn ln_gamma(x: f64) -> f64 {
    const G: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Γ(x)Γ(1 − x) = π / sin(πx).
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let t = x + 7.5;
    let a = G[1..]
        .iter()
        .enumerate()
        .fold(G[0], |a, (i, g)| a + g / (x + (i + 1) as f64));
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// The regularized incomplete beta function `I_x(a, b)`, by its continued
/// fraction (modified Lentz), on the side where it converges fast.
fn inc_beta(a: f64, b: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let front =
        (ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln()).exp();
    if x > (a + 1.0) / (a + b + 2.0) {
        return 1.0 - inc_beta(b, a, 1.0 - x);
    }
    const TINY: f64 = 1e-300;
    let (mut c, mut d) = (1.0, 1.0 - (a + b) * x / (a + 1.0));
    d = 1.0 / if d.abs() < TINY { TINY } else { d };
    let mut f = d;
    for m in 1..500 {
        let m = m as f64;
        for num in [
            m * (b - m) * x / ((a + 2.0 * m - 1.0) * (a + 2.0 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2.0 * m) * (a + 2.0 * m + 1.0)),
        ] {
            d = 1.0 + num * d;
            d = 1.0 / if d.abs() < TINY { TINY } else { d };
            c = 1.0 + num / c;
            c = if c.abs() < TINY { TINY } else { c };
            f *= c * d;
        }
        if (c * d - 1.0).abs() < 1e-15 {
            break;
        }
    }
    front * f / a
}

/// Student's t cumulative distribution function with `df` (> 0, not
/// necessarily whole) degrees of freedom.
pub fn t_cdf(t: f64, df: f64) -> f64 {
    let tail = 0.5 * inc_beta(df / 2.0, 0.5, df / (df + t * t));
    if t > 0.0 {
        1.0 - tail
    } else {
        tail
    }
}

/// The `p`-quantile (0.5 ≤ p < 1) of Student's t with `df` degrees of
/// freedom, by bisection on [`t_cdf`]: Welch–Satterthwaite degrees of
/// freedom are fractional, and rounding them down to use a table would
/// widen every interval.
pub fn t_quantile(p: f64, df: f64) -> f64 {
    if df.is_nan() || df <= 0.0 {
        return f64::INFINITY;
    }
    let mut hi = 1.0;
    while t_cdf(hi, df) < p {
        hi *= 2.0;
        if hi > 1e12 {
            return f64::INFINITY;
        }
    }
    let mut lo = 0.0;
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if t_cdf(mid, df) < p {
            lo = mid;
        } else {
            hi = mid;
        }
        if hi - lo < 1e-12 * hi {
            break;
        }
    }
    0.5 * (lo + hi)
}

/// Two-sided 95 % quantile of Student's t distribution with `df` degrees
/// of freedom (`t(0.975, df)`); infinite for `df` ≤ 0.
pub fn t95(df: f64) -> f64 {
    t_quantile(0.975, df)
}

/// Welch–Satterthwaite degrees of freedom of a sum of independent
/// variance terms `(v_i, n_i)`, where `v_i` is the variance of group i's
/// mean estimate (`s_i²/n_i`, or a relative version of it) and `n_i` its
/// sample count: `(Σ v_i)² / Σ v_i²/(n_i − 1)`. `None` when every term is
/// zero or a group has fewer than two samples.
pub fn welch_df(terms: &[(f64, usize)]) -> Option<f64> {
    if terms.iter().any(|&(_, n)| n < 2) {
        return None;
    }
    let sum: f64 = terms.iter().map(|&(v, _)| v).sum();
    let den: f64 = terms.iter().map(|&(v, n)| v * v / (n - 1) as f64).sum();
    (sum > 0.0 && den > 0.0).then(|| sum * sum / den)
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
    /// Degrees of freedom of the t quantile used.
    pub df: f64,
}

impl Ratio {
    /// `a.mean / b.mean` with its 95 % interval (see [`Ratio::of_moments`]).
    pub fn of(a: &Stats, b: &Stats) -> Option<Ratio> {
        Ratio::of_moments(&a.moments(), &b.moments())
    }

    /// The same for plain samples.
    pub fn of_samples(a: &[f64], b: &[f64]) -> Option<Ratio> {
        Ratio::of_moments(&Moments::of(a)?, &Moments::of(b)?)
    }

    /// `a.mean / b.mean` with a 95 % interval taken on the log scale, where
    /// a ratio's sampling distribution is near symmetric (a symmetric
    /// interval around the ratio itself reaches zero when the spread is
    /// large): `exp(ln(mA/mB) ± t·se)`, where by the delta method
    /// `se² = sA²/(nA·mA²) + sB²/(nB·mB²)` (the *relative* variances of the
    /// two means) and `t` is Student's 97.5 % quantile with the
    /// Welch–Satterthwaite degrees of freedom of those same two terms.
    /// `None` when either side has fewer than two samples or a mean that
    /// is not positive.
    pub fn of_moments(a: &Moments, b: &Moments) -> Option<Ratio> {
        if a.n < 2
            || b.n < 2
            || a.mean.is_nan()
            || a.mean <= 0.0
            || b.mean.is_nan()
            || b.mean <= 0.0
        {
            return None;
        }
        let ra = a.sd * a.sd / (a.n as f64 * a.mean * a.mean);
        let rb = b.sd * b.sd / (b.n as f64 * b.mean * b.mean);
        // Both constant: no spread to weigh; the pooled count.
        let df = welch_df(&[(ra, a.n), (rb, b.n)]).unwrap_or((a.n + b.n - 2) as f64);
        let value = a.mean / b.mean;
        let half = t95(df) * (ra + rb).sqrt();
        Some(Ratio {
            value,
            lo: value * (-half).exp(),
            hi: value * half.exp(),
            df,
        })
    }

    /// Whether the interval includes 1, i.e. no significant difference.
    pub fn includes_one(&self) -> bool {
        self.lo <= 1.0 && 1.0 <= self.hi
    }

    /// `"0.52x [0.47, 0.57]"`, with `" n.s."` (not significant) when the
    /// interval includes 1.
    pub fn describe(&self) -> String {
        format!(
            "{:.2}x [{:.2}, {:.2}]{}",
            self.value,
            self.lo,
            self.hi,
            if self.includes_one() { " n.s." } else { "" }
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

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

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
    fn moments_and_mean_interval() {
        let m = Moments::of(&[1.0, 2.0, 3.0, 10.0]).unwrap();
        assert_eq!((m.n, m.mean), (4, 4.0));
        assert!(close(m.sd, (50.0f64 / 3.0).sqrt(), 1e-12));
        // 4 ± t(0.975, 3)·sd/2, t = 3.182446.
        let (lo, hi) = m.mean_ci95().unwrap();
        assert!(close(hi - 4.0, 3.182446 * m.sd / 2.0, 1e-5), "{hi}");
        assert!(close(4.0 - lo, hi - 4.0, 1e-12));
        assert!(Moments::of(&[1.0]).unwrap().mean_ci95().is_none());
        assert!(Moments::of(&[]).is_none());
        assert!(Moments::of(&[1.0, f64::NAN]).is_none());
    }

    #[test]
    fn t_quantiles_match_the_table() {
        // Two-sided 95 % values of any t table (e.g. NIST/SEMATECH
        // e-Handbook of Statistical Methods, 1.3.6.7.2), 3 decimals.
        for (df, t) in [
            (1.0, 12.706),
            (2.0, 4.303),
            (4.0, 2.776),
            (8.0, 2.306),
            (10.0, 2.228),
            (30.0, 2.042),
            (100.0, 1.984),
        ] {
            assert!(close(t95(df), t, 5e-4), "t95({df}) = {}", t95(df));
        }
        assert!(close(t95(1e9), 1.959964, 1e-5));
        // Fractional df lie between their neighbours.
        assert!(t95(4.5) < t95(4.0) && t95(4.5) > t95(5.0));
        assert!(t95(0.0).is_infinite() && t95(f64::NAN).is_infinite());
        assert!(close(t_cdf(0.0, 3.0), 0.5, 1e-15));
        // df = 1 is the Cauchy distribution: F(1) = 3/4.
        assert!(close(t_cdf(1.0, 1.0), 0.75, 1e-12));
        assert!(close(t_cdf(-1.0, 1.0), 0.25, 1e-12));
    }

    /// A published Welch test with R's full output (R's `t.test()`, whose
    /// default is Welch's): ts1 = 11 9 10 11 10 12 9 11 12 9 and ts2 = 11 13
    /// 10 13 12 9 11 12 12 11 give "t = -1.8325, df = 17.9, p-value =
    /// 0.08356", 95 % interval of the difference [-2.1469104, 0.1469104]
    /// (a Cross Validated answer on Welch's t-test confidence interval in
    /// Python, as quoted at boxhoidap.com). Checks `welch_df` (on the absolute variances of
    /// the means, as there), `t_cdf` and the fractional-df `t95`.
    #[test]
    fn welch_matches_r_t_test() {
        let a = Moments::of(&[11.0, 9.0, 10.0, 11.0, 10.0, 12.0, 9.0, 11.0, 12.0, 9.0]).unwrap();
        let b = Moments::of(&[11.0, 13.0, 10.0, 13.0, 12.0, 9.0, 11.0, 12.0, 12.0, 11.0]).unwrap();
        let (va, vb) = (a.sd * a.sd / a.n as f64, b.sd * b.sd / b.n as f64);
        let se = (va + vb).sqrt();
        let t = (a.mean - b.mean) / se;
        let df = welch_df(&[(va, a.n), (vb, b.n)]).unwrap();
        assert!(close(t, -1.8325, 5e-5), "t {t}");
        assert!(close(df, 17.9, 0.05), "df {df}");
        assert!(close(2.0 * t_cdf(t, df), 0.08356, 5e-6), "p");
        let half = t95(df) * se;
        assert!(close(a.mean - b.mean - half, -2.1469104, 1e-6), "{half}");
        assert!(close(a.mean - b.mean + half, 0.1469104, 1e-6), "{half}");
        assert!(welch_df(&[(0.0, 5), (0.0, 5)]).is_none());
        assert!(welch_df(&[(1.0, 1), (1.0, 5)]).is_none());
    }

    #[test]
    fn ratio_interval_is_log_symmetric() {
        // b = 2a sample by sample: equal relative variances, so the
        // Welch df of the relative terms is exactly 2(n − 1) = 8 (t table:
        // 2.306). a: mean 50, s² = 2, so each relative term is
        // 2/(5·50²) = 1.6e-4 and se = √3.2e-4 = 0.0178885; the interval
        // is 0.5·exp(∓2.306004·0.0178885) = [0.47980, 0.52106].
        let a = [50.0, 52.0, 48.0, 50.0, 50.0];
        let b: Vec<f64> = a.iter().map(|x| 2.0 * x).collect();
        let r = Ratio::of_samples(&a, &b).unwrap();
        assert!(close(r.value, 0.5, 1e-12));
        assert!(close(r.df, 8.0, 1e-9), "{r:?}");
        assert!(
            close(r.lo, 0.47980, 5e-5) && close(r.hi, 0.52106, 5e-5),
            "{r:?}"
        );
        assert!(close(r.lo * r.hi, r.value * r.value, 1e-12));
        assert!(!r.includes_one());
        assert_eq!(r.describe(), "0.50x [0.48, 0.52]");
        // The inverse ratio has the inverse interval.
        let inv = Ratio::of_samples(&b, &a).unwrap();
        assert!(close(inv.lo, 1.0 / r.hi, 1e-12) && close(inv.hi, 1.0 / r.lo, 1e-12));
        // Duration input agrees with plain samples.
        let d = |x: &f64| Duration::from_millis(*x as u64);
        let (sa, sb): (Vec<_>, Vec<_>) = (a.iter().map(d).collect(), b.iter().map(d).collect());
        let rs = Ratio::of(&Stats::of(&sa).unwrap(), &Stats::of(&sb).unwrap()).unwrap();
        assert!(close(rs.lo, r.lo, 1e-6) && close(rs.hi, r.hi, 1e-6));
    }

    /// The audit's case: n = 5 with ~40 % spread gave [0.058, 0.747]
    /// around 0.40 from a symmetric interval; the log-scale one stays
    /// positive and the df comes from the relative terms.
    #[test]
    fn ratio_interval_with_large_spread_stays_positive() {
        let a = [60.0, 100.0, 140.0, 60.0, 140.0];
        let b = [250.0, 240.0, 260.0, 255.0, 245.0];
        let r = Ratio::of_samples(&a, &b).unwrap();
        assert!(close(r.value, 0.4, 1e-12));
        assert!(r.lo > 0.2 && r.hi < 0.8 && r.lo * r.hi > 0.0, "{r:?}");
        assert!(close(r.lo * r.hi, 0.16, 1e-12));
        // a dominates the relative variance: df near its own n − 1 = 4.
        assert!(r.df > 4.0 && r.df < 4.1, "{r:?}");
        // Overlapping noisy samples: the interval includes 1.
        let c = [90.0, 110.0, 100.0, 95.0, 105.0];
        let e = [100.0, 104.0, 96.0, 100.0, 100.0];
        let r = Ratio::of_samples(&c, &e).unwrap();
        assert!(r.includes_one(), "{r:?}");
        assert!(r.describe().ends_with(" n.s."));
        // Identical constant samples: a zero-width interval at 1.
        let r = Ratio::of_samples(&e[..1].repeat(3), &e[..1].repeat(3)).unwrap();
        assert!(r.includes_one() && r.lo == 1.0 && r.hi == 1.0);
        assert!(Ratio::of_samples(&[1.0], &e).is_none());
        assert!(Ratio::of_samples(&[0.0, 0.0], &e).is_none());
    }
}
