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

/// One record of the kernel log: its sequence number and first line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KmsgRecord {
    /// The record's sequence number (consecutive, never reused).
    pub seq: u64,
    /// The message (continuation lines dropped).
    pub msg: String,
}

/// Parses one `/dev/kmsg` record: `prio,seq,usec,flags[,...];message\n`
/// followed by ` KEY=value` continuation lines.
pub fn parse_kmsg_record(rec: &str) -> Option<KmsgRecord> {
    let (head, msg) = rec.split_once(';')?;
    let seq = head.split(',').nth(1)?.parse().ok()?;
    Some(KmsgRecord {
        seq,
        msg: msg.lines().next().unwrap_or("").to_owned(),
    })
}

/// The kernel log's records still in the ring buffer, oldest first (needs
/// root: `/dev/kmsg` is read non-blocking).
pub fn kmsg_records() -> Result<Vec<KmsgRecord>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg")
        .context("opening /dev/kmsg")?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 8192];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if let Some(r) = parse_kmsg_record(&String::from_utf8_lossy(&buf[..n])) {
                    out.push(r);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            // Records overwritten while reading: the next read returns the
            // oldest one left (the gap shows in the sequence numbers).
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(e) => return Err(e).context("reading /dev/kmsg"),
        }
    }
    Ok(out)
}

/// The kernel log as text, one record a line.
pub fn dmesg() -> Result<String> {
    Ok(kmsg_records()?.into_iter().map(|r| r.msg + "\n").collect())
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
        // Page poisoning (debug flavour): a freed page was written, e.g.
        // by a guest through a stale SPTE.
        "pagealloc: memory corruption",
        "pagealloc: single bit error",
        "corrupted page details",
    ];
    log.lines()
        .filter(|l| MARKERS.iter().any(|m| l.contains(m)))
        .collect()
}

/// Remembers how far the kernel log went (by sequence number), to check
/// later that a test added no kernel warnings.
pub struct DmesgWatch {
    next_seq: u64,
}

/// The records of `log` from sequence number `from` on; an error if some
/// of them already left the ring buffer (the check would be blind).
pub fn records_since(log: Vec<KmsgRecord>, from: u64) -> Result<Vec<KmsgRecord>> {
    if let Some(first) = log.first() {
        if first.seq > from {
            anyhow::bail!(
                "kernel log records {from}..{} were overwritten before they were read \
                 (ring buffer too small for this test: raise log_buf_len)",
                first.seq
            );
        }
    }
    Ok(log.into_iter().filter(|r| r.seq >= from).collect())
}

impl DmesgWatch {
    /// Starts watching from the current end of the log.
    pub fn start() -> Result<Self> {
        let log = kmsg_records()?;
        Ok(Self {
            next_seq: log.last().map_or(0, |r| r.seq + 1),
        })
    }

    /// The warning/BUG lines logged since [`DmesgWatch::start`].
    pub fn new_bug_lines(&self) -> Result<Vec<String>> {
        let new = records_since(kmsg_records()?, self.next_seq)?;
        Ok(new
            .into_iter()
            .filter(|r| !kernel_bug_lines(&r.msg).is_empty())
            .map(|r| r.msg)
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

    #[test]
    fn kmsg_records_parsed() {
        let r = parse_kmsg_record("6,1234,5678901,-;kvm: loaded\n SUBSYSTEM=x\n").unwrap();
        assert_eq!(r.seq, 1234);
        assert_eq!(r.msg, "kvm: loaded");
        // Newer kernels append fields after the flags.
        let r = parse_kmsg_record("4,7,1,c,caller=T1;WARNING: at x\n").unwrap();
        assert_eq!((r.seq, r.msg.as_str()), (7, "WARNING: at x"));
        assert!(parse_kmsg_record("no separator").is_none());
        assert!(parse_kmsg_record("6,x,1,-;msg").is_none());
        assert!(parse_kmsg_record("6;msg").is_none());
    }

    fn rec(seq: u64, msg: &str) -> KmsgRecord {
        KmsgRecord {
            seq,
            msg: msg.into(),
        }
    }

    #[test]
    fn records_since_detects_lost_records() {
        let log = vec![rec(10, "a"), rec(11, "b"), rec(12, "c")];
        let got = records_since(log.clone(), 11).unwrap();
        assert_eq!(got, vec![rec(11, "b"), rec(12, "c")]);
        assert!(records_since(log.clone(), 13).unwrap().is_empty());
        assert_eq!(records_since(log.clone(), 10).unwrap().len(), 3);
        // Record 9 was logged after start() but overwritten since.
        assert!(records_since(log, 9).is_err());
        assert!(records_since(vec![], 5).unwrap().is_empty());
    }
}
