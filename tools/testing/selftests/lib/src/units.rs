// SPDX-License-Identifier: GPL-2.0
//! Parsers for command-line values of the selftests.

/// Parses a byte size: digits with an optional `K`, `M` or `G` suffix
/// (powers of 1024, case-insensitive). Must be a positive multiple of 4 KiB.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let (digits, shift) = match t.char_indices().last() {
        Some((i, c)) if c.eq_ignore_ascii_case(&'k') => (&t[..i], 10),
        Some((i, c)) if c.eq_ignore_ascii_case(&'m') => (&t[..i], 20),
        Some((i, c)) if c.eq_ignore_ascii_case(&'g') => (&t[..i], 30),
        _ => (t, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{s:?} is not a size (e.g. 4096, 512K, 64M, 1G)"));
    }
    let n: usize = digits.parse().map_err(|_| format!("{s:?} is too large"))?;
    let bytes = n
        .checked_mul(1usize << shift)
        .ok_or_else(|| format!("{s:?} is too large"))?;
    if bytes == 0 || bytes % 4096 != 0 {
        return Err(format!("{s:?} is not a positive multiple of 4 KiB"));
    }
    Ok(bytes)
}

/// Parses a fraction in `(0, 1]`.
pub fn parse_fraction(s: &str) -> Result<f64, String> {
    let f: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number"))?;
    if !(f > 0.0 && f <= 1.0) {
        return Err(format!("{s:?} is not in (0, 1]"));
    }
    Ok(f)
}

/// Parses a duration: digits with an optional `s`, `m` or `h` suffix
/// (seconds without one). Must be positive and at most a day.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let t = s.trim();
    let (digits, mult) = match t.char_indices().last() {
        Some((i, 's')) => (&t[..i], 1),
        Some((i, 'm')) => (&t[..i], 60),
        Some((i, 'h')) => (&t[..i], 3600),
        _ => (t, 1),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{s:?} is not a duration (e.g. 90, 90s, 20m, 1h)"));
    }
    let secs = digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .filter(|&n| n > 0 && n <= 86_400)
        .ok_or_else(|| format!("{s:?} is not between 1s and 24h"))?;
    Ok(std::time::Duration::from_secs(secs))
}

/// The stride that touches about `fraction` of the pages: every
/// `round(1 / fraction)`-th page.
pub fn stride_for(fraction: f64) -> usize {
    ((1.0 / fraction).round() as usize).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        use std::time::Duration;
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration(" 20m "), Ok(Duration::from_secs(1200)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        for bad in [
            "",
            "0",
            "0s",
            "m",
            "-5",
            "1.5m",
            "5x",
            "25h",
            "99999999999999999999",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("512K"), Ok(512 << 10));
        assert_eq!(parse_size("64m"), Ok(64 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        for bad in [
            "",
            "M",
            "0",
            "0M",
            "100",
            "12X",
            "-4K",
            "1.5M",
            "99999999999999999999G",
            " K",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn fractions() {
        assert_eq!(parse_fraction("0.5"), Ok(0.5));
        assert_eq!(parse_fraction("1"), Ok(1.0));
        for bad in ["0", "-0.5", "1.01", "nan", "x", ""] {
            assert!(parse_fraction(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(stride_for(0.5), 2);
        assert_eq!(stride_for(1.0), 1);
        assert_eq!(stride_for(0.25), 4);
        assert_eq!(stride_for(0.3), 3);
    }
}
