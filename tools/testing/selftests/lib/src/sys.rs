// SPDX-License-Identifier: GPL-2.0
//! Small file helpers for sysfs, procfs and debugfs.

use anyhow::{Context, Result};
use std::fs;
use std::io::Write;
use std::path::Path;

/// Reads a whole file as text.
pub fn read(path: impl AsRef<Path>) -> Result<String> {
    let path = path.as_ref();
    fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// Reads a file and trims surrounding whitespace (sysfs values end in '\n').
pub fn read_trimmed(path: impl AsRef<Path>) -> Result<String> {
    Ok(read(path)?.trim().to_owned())
}

/// Writes `value` with a single write(2), as sysfs and debugfs expect.
///
/// The kernel's error (e.g. `EINVAL`) is kept as the `io::Error` source so
/// callers can inspect it with [`errno_of`].
pub fn write(path: impl AsRef<Path>, value: &str) -> Result<()> {
    let path = path.as_ref();
    let mut f = fs::OpenOptions::new()
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    f.write_all(value.as_bytes())
        .with_context(|| format!("writing {:?} to {}", value, path.display()))
}

/// The errno of the I/O error at the root of `err`, if any.
pub fn errno_of(err: &anyhow::Error) -> Option<i32> {
    err.chain()
        .find_map(|e| e.downcast_ref::<std::io::Error>())
        .and_then(|e| e.raw_os_error())
}

/// The kernel log as text (needs root: `/dev/kmsg` is read non-blocking).
pub fn dmesg() -> Result<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg")
        .context("opening /dev/kmsg")?;
    let mut out = String::new();
    let mut buf = vec![0u8; 8192];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let rec = String::from_utf8_lossy(&buf[..n]);
                // "prio,seq,usec,flags;message\n continuation..."
                if let Some((_, msg)) = rec.split_once(';') {
                    out.push_str(msg.lines().next().unwrap_or(""));
                    out.push('\n');
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            // A record overwritten while reading: skip it.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(e) => return Err(e).context("reading /dev/kmsg"),
        }
    }
    Ok(out)
}

/// Lines of a kernel log that indicate a kernel bug: warnings, BUGs, oopses,
/// lockdep and RCU reports.
pub fn kernel_bug_lines(log: &str) -> Vec<&str> {
    const MARKERS: &[&str] = &[
        "WARNING:",
        "BUG:",
        "BUG ",
        "Oops",
        "Call Trace:",
        "possible circular locking",
        "possible recursive locking",
        "inconsistent lock state",
        "suspicious RCU usage",
        "rcu_sched self-detected stall",
        "general protection fault",
        "Kernel panic",
        "kernel BUG at",
        // The debug flavour's checkers (KASAN and KFENCE also say "BUG:").
        "KASAN",
        "KFENCE",
        "UBSAN",
        "suspected memory leak",
        "list_add corruption",
        "list_del corruption",
        "detected stalls",
        "lock held when returning",
        "soft lockup",
        "blocked for more than",
    ];
    log.lines()
        .filter(|l| MARKERS.iter().any(|m| l.contains(m)))
        .collect()
}

/// Remembers how far the kernel log went, to check later that a test added
/// no kernel warnings.
pub struct DmesgWatch {
    seen: usize,
}

impl DmesgWatch {
    /// Starts watching from the current end of the log.
    pub fn start() -> Result<Self> {
        Ok(Self {
            seen: dmesg()?.lines().count(),
        })
    }

    /// The warning/BUG lines logged since [`DmesgWatch::start`].
    pub fn new_bug_lines(&self) -> Result<Vec<String>> {
        let log = dmesg()?;
        let new: String = log.lines().skip(self.seen).collect::<Vec<_>>().join("\n");
        Ok(kernel_bug_lines(&new)
            .into_iter()
            .map(str::to_owned)
            .collect())
    }

    /// Fails, listing them, if the kernel logged warnings or BUGs since
    /// [`DmesgWatch::start`].
    pub fn expect_clean(&self) -> Result<()> {
        let bugs = self.new_bug_lines()?;
        if !bugs.is_empty() {
            anyhow::bail!("kernel log gained: {bugs:#?}");
        }
        Ok(())
    }
}

/// Fails unless at least 90 % of `bytes` of the calling process's anonymous
/// memory are THPs (the PMD-mapped cases need them); `what` names the memory.
pub fn expect_thp_backed(bytes: usize, what: &str) -> Result<()> {
    let huge = anon_huge_bytes()?;
    if huge < (bytes as u64) * 9 / 10 {
        anyhow::bail!(
            "only {} of the {} MiB of {what} are THPs; the PMD case needs them",
            huge >> 20,
            bytes >> 20
        );
    }
    Ok(())
}

/// `AnonHugePages` of the calling process (`/proc/self/smaps_rollup`), in
/// bytes: how much of its anonymous memory is mapped by THPs.
pub fn anon_huge_bytes() -> Result<u64> {
    let text = read("/proc/self/smaps_rollup")?;
    let line = text
        .lines()
        .find(|l| l.starts_with("AnonHugePages:"))
        .context("smaps_rollup lacks AnonHugePages")?;
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .context("malformed AnonHugePages")?
        .parse()
        .context("parsing AnonHugePages")?;
    Ok(kb * 1024)
}

/// Drains every CPU's LRU batches, so that each page faulted in so far is
/// on an LRU list (aged and evictable) rather than waiting in some CPU's
/// `folio_batch`: `mbind(2)` with `MPOL_MF_MOVE` calls `lru_cache_disable()`,
/// which drains all CPUs (`__lru_add_drain_all(true)`), before it looks at
/// the range. Applies the default policy to one page of its own.
pub fn drain_lru_batches() -> Result<()> {
    const MPOL_DEFAULT: libc::c_long = 0;
    const MPOL_MF_MOVE: libc::c_long = 1 << 1;
    // SAFETY: a fresh anonymous page, given the default policy and
    // unmapped here; no Rust reference points into it.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).context("mmap");
        }
        let r = libc::syscall(
            libc::SYS_mbind,
            p,
            4096usize,
            MPOL_DEFAULT,
            std::ptr::null::<libc::c_ulong>(),
            0usize,
            MPOL_MF_MOVE,
        );
        let err = std::io::Error::last_os_error();
        libc::munmap(p, 4096);
        if r != 0 {
            return Err(err).context("mbind(MPOL_MF_MOVE) to drain the LRU batches");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bug_lines_found() {
        let log = "ok line\nWARNING: CPU: 0 PID: 1 at mm/vmscan.c:1 foo\nfine\nBUG: KASAN: x\n";
        assert_eq!(kernel_bug_lines(log).len(), 2);
        assert!(kernel_bug_lines("all quiet\nkvm: loaded\n").is_empty());
    }
}
