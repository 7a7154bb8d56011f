// SPDX-License-Identifier: GPL-2.0
//! KUnit results (KTAP) as the kernel logs them at boot.

/// Result of one KUnit suite or case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KtapResult {
    /// Suite or case name.
    pub name: String,
    /// `ok` (a `# SKIP` counts as ok with `skipped`).
    pub ok: bool,
    /// Marked `# SKIP`.
    pub skipped: bool,
    /// Nesting: 0 for suites, 1 for their cases (indentation / 4).
    pub depth: usize,
}

/// Strips the `[    1.234567] ` timestamp that `dmesg` puts before a line.
fn strip_timestamp(line: &str) -> &str {
    match line.strip_prefix('[').and_then(|r| r.split_once("] ")) {
        Some((ts, rest)) if ts.trim().parse::<f64>().is_ok() => rest,
        _ => line,
    }
}

/// Every `ok`/`not ok` line of the log.
pub fn results(log: &str) -> Vec<KtapResult> {
    let mut out = Vec::new();
    for raw in log.lines() {
        let line = strip_timestamp(raw);
        let indent = line.len() - line.trim_start().len();
        let l = line.trim();
        let (ok, rest) = if let Some(r) = l.strip_prefix("not ok ") {
            (false, r)
        } else if let Some(r) = l.strip_prefix("ok ") {
            (true, r)
        } else {
            continue;
        };
        let mut it = rest.splitn(2, ' ');
        let (Some(num), Some(tail)) = (it.next(), it.next()) else {
            continue;
        };
        if num.parse::<u32>().is_err() {
            continue;
        }
        let (name, directive) = match tail.split_once(" # ") {
            Some((n, d)) => (n, d),
            None => (tail, ""),
        };
        out.push(KtapResult {
            name: name.trim().to_owned(),
            ok,
            skipped: directive.trim_start().starts_with("SKIP"),
            depth: indent / 4,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "\
[    2.100000] KTAP version 1
[    2.100001] 1..1
[    2.100002]     KTAP version 1
[    2.100003]     # Subtest: rust_doctests_kernel
[    2.100004]     1..3
[    2.200000]     ok 1 rust_doctest_kernel_sync_arc_rs_0
[    2.200001]     not ok 2 rust_doctest_kernel_mm_mmu_notifier_rs_0
[    2.200002]     ok 3 rust_doctest_kernel_miscdevice_rs_0 # SKIP not here
[    2.300000] # rust_doctests_kernel: pass:1 fail:1 skip:1 total:3
[    2.300001] not ok 1 rust_doctests_kernel
random line ok 5 nothing
";

    #[test]
    fn parses_suites_and_cases() {
        let r = results(LOG);
        assert_eq!(r.len(), 4);
        assert_eq!(r[0].name, "rust_doctest_kernel_sync_arc_rs_0");
        assert!(r[0].ok && !r[0].skipped && r[0].depth == 1);
        assert!(!r[1].ok);
        assert!(r[2].ok && r[2].skipped);
        assert_eq!(r[3].name, "rust_doctests_kernel");
        assert_eq!(r[3].depth, 0);
        assert!(!r[3].ok);
    }

    #[test]
    fn ignores_non_ktap() {
        assert!(results("hello\n[ 1.0] ok go\nok x y\n").is_empty());
    }
}
