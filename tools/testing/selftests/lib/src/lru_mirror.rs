// SPDX-License-Identifier: GPL-2.0
//! Userspace side of `/dev/lru_mirror` (the project's software secondary MMU,
//! `rust/lru_mirror.rs`): ioctl numbers and argument structs, redefined here
//! as a C program would from a uapi header, and a small RAII handle.

use anyhow::{Context, Result};
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;

/// Device node.
pub const DEV: &str = "/dev/lru_mirror";
/// Module name.
pub const MODULE: &str = "lru_mirror";

/// `MIRROR` argument.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct MirrorArgs {
    /// First address (page aligned).
    pub start: u64,
    /// Length in bytes (page aligned).
    pub len: u64,
    /// [`MIRROR_NO_FAST_OP`] or 0.
    pub flags: u64,
}

/// `ACCESS` argument.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct AccessArgs {
    /// First address (page aligned).
    pub start: u64,
    /// Length in bytes (page aligned).
    pub len: u64,
}

/// `STATS` result: the module's per-op counters.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub fast_calls: u64,
    pub fast_pages: u64,
    pub fast_young: u64,
    pub fast_failed: u64,
    pub slow_calls: u64,
    pub slow_young: u64,
    pub test_young_calls: u64,
    pub invalidations: u64,
    pub invalidated_pages: u64,
    pub releases: u64,
    pub mapped_pages: u64,
    pub accessed_pages: u64,
}

impl Stats {
    /// Counter-wise `self - earlier` (`mapped_pages` is a level, kept as is).
    pub fn since(&self, earlier: &Stats) -> Stats {
        Stats {
            fast_calls: self.fast_calls - earlier.fast_calls,
            fast_pages: self.fast_pages - earlier.fast_pages,
            fast_young: self.fast_young - earlier.fast_young,
            fast_failed: self.fast_failed - earlier.fast_failed,
            slow_calls: self.slow_calls - earlier.slow_calls,
            slow_young: self.slow_young - earlier.slow_young,
            test_young_calls: self.test_young_calls - earlier.test_young_calls,
            invalidations: self.invalidations - earlier.invalidations,
            invalidated_pages: self.invalidated_pages - earlier.invalidated_pages,
            releases: self.releases - earlier.releases,
            mapped_pages: self.mapped_pages,
            accessed_pages: self.accessed_pages - earlier.accessed_pages,
        }
    }
}

/// `MirrorArgs::flags`: register without `test_clear_young_fast_only()`.
pub const MIRROR_NO_FAST_OP: u64 = 1;
/// `CONFIG` flag: the fast-only op answers "failed".
pub const CONFIG_FAIL_FAST: u64 = 1;
/// `CONFIG` flag: ranges of more than `k` pages are answered for their first
/// `k` pages (clearing what is young there), then "failed"; `k` goes in
/// bits 32..47 (see [`config_fail_after`]).
pub const CONFIG_FAIL_AFTER: u64 = 2;
/// `CONFIG` flag: invalidations that hit the mirror spin for a while after
/// unmapping (widens race windows).
pub const CONFIG_SLOW_INVALIDATE: u64 = 4;

/// The `CONFIG` argument that makes the fast-only op fail after `pages`
/// pages of a range.
pub const fn config_fail_after(pages: u16) -> u64 {
    CONFIG_FAIL_AFTER | (pages as u64) << 32
}
/// Largest mirror the module accepts.
pub const MAX_MIRROR: u64 = 1 << 30;

const IOC_WRITE: u32 = 1;
const IOC_READ: u32 = 2;
const TYPE: u32 = b'm' as u32;

/// `_IOC(dir, type, nr, size)` as the kernel encodes it on x86.
pub const fn ioc(dir: u32, ty: u32, nr: u32, size: usize) -> u32 {
    (dir << 30) | ((size as u32) << 16) | (ty << 8) | nr
}

/// `_IOW('m', 0x40, MirrorArgs)`.
pub const MIRROR: u32 = ioc(IOC_WRITE, TYPE, 0x40, std::mem::size_of::<MirrorArgs>());
/// `_IO('m', 0x41)`.
pub const UNMIRROR: u32 = ioc(0, TYPE, 0x41, 0);
/// `_IOW('m', 0x42, AccessArgs)`.
pub const ACCESS: u32 = ioc(IOC_WRITE, TYPE, 0x42, std::mem::size_of::<AccessArgs>());
/// `_IOW('m', 0x43, u64)`.
pub const CONFIG: u32 = ioc(IOC_WRITE, TYPE, 0x43, 8);
/// `_IOR('m', 0x44, Stats)`.
pub const STATS: u32 = ioc(IOC_READ, TYPE, 0x44, std::mem::size_of::<Stats>());

/// An open `/dev/lru_mirror`; closing it drops the mirror.
pub struct Mirror {
    file: File,
}

impl Mirror {
    /// Opens the device (`ENODEV` while the module's init runs).
    pub fn open() -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(DEV)
            .with_context(|| format!("opening {DEV}"))?;
        Ok(Self { file })
    }

    /// The file descriptor (for tests that pass it on or close it by hand).
    pub fn raw_fd(&self) -> i32 {
        self.file.as_raw_fd()
    }

    /// Raw `ioctl(2)`; `Err` carries the errno as an `io::Error`.
    pub fn ioctl(&self, cmd: u32, arg: usize) -> std::io::Result<i64> {
        // SAFETY: the kernel validates `arg` (copy_{from,to}_user); callers pass
        // pointers to live values of the type `cmd` names, or test bad ones.
        let r = unsafe { libc::ioctl(self.file.as_raw_fd(), cmd as _, arg) };
        if r < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(r as i64)
        }
    }

    /// Mirrors `[start, start + len)`. While it faults the range in, the
    /// file is "mirroring": `MIRROR`, `ACCESS` and `UNMIRROR` on it fail
    /// with `EBUSY` (another `MIRROR` also once it has a mirror). It may
    /// also fail with `ENOMEM`, `EFAULT`, `EAGAIN` (invalidations kept
    /// racing with it), `EINTR` (a signal) or `ENODEV` (forced unload),
    /// leaving the file without a mirror.
    pub fn mirror(&self, start: usize, len: usize, flags: u64) -> std::io::Result<()> {
        let a = MirrorArgs {
            start: start as u64,
            len: len as u64,
            flags,
        };
        self.ioctl(MIRROR, &a as *const _ as usize).map(drop)
    }

    /// Drops the mirror (`EINVAL` without one, `EBUSY` while mirroring).
    pub fn unmirror(&self) -> std::io::Result<()> {
        self.ioctl(UNMIRROR, 0).map(drop)
    }

    /// Accesses `[start, start + len)` through the device; returns the
    /// number of pages accessed.
    pub fn access(&self, start: usize, len: usize) -> std::io::Result<u64> {
        let a = AccessArgs {
            start: start as u64,
            len: len as u64,
        };
        self.ioctl(ACCESS, &a as *const _ as usize)
            .map(|n| n as u64)
    }

    /// Sets the module's knobs.
    pub fn config(&self, flags: u64) -> std::io::Result<()> {
        self.ioctl(CONFIG, &flags as *const u64 as usize).map(drop)
    }

    /// Reads the counters.
    pub fn stats(&self) -> Result<Stats> {
        let mut s = Stats::default();
        self.ioctl(STATS, &mut s as *mut Stats as usize)
            .context("LRU_MIRROR STATS")?;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_kernel_encoding() {
        // Values computed with the kernel's _IOW/_IOR/_IO macros.
        assert_eq!(MIRROR, 0x4018_6d40);
        assert_eq!(UNMIRROR, 0x0000_6d41);
        assert_eq!(ACCESS, 0x4010_6d42);
        assert_eq!(CONFIG, 0x4008_6d43);
        assert_eq!(STATS, 0x8060_6d44);
        assert_eq!(std::mem::size_of::<Stats>(), 12 * 8);
    }

    #[test]
    fn fail_after_encoding() {
        assert_eq!(config_fail_after(256), 0x0000_0100_0000_0002);
        assert_eq!(config_fail_after(1), 0x0000_0001_0000_0002);
    }

    #[test]
    fn stats_since_subtracts_counters_keeps_levels() {
        let a = Stats {
            fast_calls: 10,
            mapped_pages: 5,
            ..Default::default()
        };
        let b = Stats {
            fast_calls: 25,
            mapped_pages: 3,
            ..Default::default()
        };
        let d = b.since(&a);
        assert_eq!(d.fast_calls, 15);
        assert_eq!(d.mapped_pages, 3);
    }
}
