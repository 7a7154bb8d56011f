// SPDX-License-Identifier: GPL-2.0
//! Host memory that backs a guest.

use super::PAGE_SIZE;
use anyhow::{bail, Context, Result};

/// How the data memory is backed on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backing {
    /// Anonymous memory, 4 KiB pages (`MADV_NOHUGEPAGE`).
    Anon4k,
    /// Anonymous memory with transparent huge pages (`MADV_HUGEPAGE`).
    Thp,
}

/// An anonymous host mapping, unmapped when dropped.
///
/// Invariant: `ptr..ptr+len` is a private anonymous mapping owned by `self`.
pub struct HostMem {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by `HostMem`, not tied to the
// thread that made it.
unsafe impl Send for HostMem {}
// SAFETY: through `&HostMem` the host only reads the memory (volatile dword
// reads, `read_u32_at`) or hands out the address (for the guest, madvise,
// pagemap and devices, which the kernel mediates); host writes (`write_at`,
// `fill`) need `&mut HostMem`, so no two Rust threads race on the memory.
unsafe impl Sync for HostMem {}

impl HostMem {
    /// Maps `len` bytes (rounded up to 2 MiB alignment for THP).
    pub fn new(len: usize, backing: Backing) -> Result<Self> {
        const HUGE: usize = 2 << 20;
        if len == 0 || !len.is_multiple_of(PAGE_SIZE) {
            bail!("memory size {len} is not a positive multiple of {PAGE_SIZE}");
        }
        // Over-allocate so the THP case can be 2 MiB aligned.
        let map_len = len + HUGE;
        // SAFETY: anonymous private mapping with no address hint; the result
        // is checked against MAP_FAILED below.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).context("mmap guest memory");
        }
        let start = raw as usize;
        let aligned = (start + HUGE - 1) & !(HUGE - 1);
        // SAFETY: both ranges lie inside the mapping just created and are
        // not used afterwards.
        unsafe {
            if aligned > start {
                libc::munmap(raw, aligned - start);
            }
            let tail = start + map_len - (aligned + len);
            if tail > 0 {
                libc::munmap((aligned + len) as *mut libc::c_void, tail);
            }
        }
        let mem = Self {
            ptr: aligned as *mut u8,
            len,
        };
        let advice = match backing {
            Backing::Anon4k => libc::MADV_NOHUGEPAGE,
            Backing::Thp => libc::MADV_HUGEPAGE,
        };
        // SAFETY: the range is our own mapping.
        if unsafe { libc::madvise(mem.ptr.cast(), len, advice) } != 0 {
            return Err(std::io::Error::last_os_error()).context("madvise guest memory");
        }
        Ok(mem)
    }

    /// Start of the mapping.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (never, by construction).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of 4 KiB pages.
    pub fn pages(&self) -> usize {
        self.len / PAGE_SIZE
    }

    /// First dword of page `i`, read from the host side.
    pub fn read_page_u32(&self, i: usize) -> u32 {
        assert!(i < self.pages());
        self.read_u32_at(i * PAGE_SIZE)
            .expect("page start is in bounds and aligned")
    }

    /// Drops pages `first..first+count` (`MADV_DONTNEED`): the host page
    /// table entries go away, which invalidates the secondary MMU's
    /// mappings, and the next access faults in a fresh zero page.
    pub fn discard(&self, first: usize, count: usize) -> Result<()> {
        if first + count > self.pages() {
            bail!(
                "discard of pages {first}..{} beyond {}",
                first + count,
                self.pages()
            );
        }
        // SAFETY: the range lies inside our own mapping (checked above);
        // nothing holds Rust references into it.
        let r = unsafe {
            libc::madvise(
                self.ptr.add(first * PAGE_SIZE).cast(),
                count * PAGE_SIZE,
                libc::MADV_DONTNEED,
            )
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error()).context("madvise(MADV_DONTNEED)");
        }
        Ok(())
    }

    /// Writes `bytes` at byte `offset` from the host side (a plain copy:
    /// `&mut self`, so no other thread of this process accesses the memory
    /// meanwhile).
    pub fn write_at(&mut self, offset: usize, bytes: &[u8]) -> Result<()> {
        if offset
            .checked_add(bytes.len())
            .is_none_or(|end| end > self.len)
        {
            bail!(
                "write of {} bytes at {offset:#x} beyond {:#x}",
                bytes.len(),
                self.len
            );
        }
        // SAFETY: in bounds (checked above) of our own mapping; nothing holds
        // Rust references into it and `&mut self` excludes the other host
        // accessors for the duration of the copy.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.add(offset), bytes.len()) };
        Ok(())
    }

    /// Reads the `u32` at byte `offset` (4-byte aligned) from the host side.
    pub fn read_u32_at(&self, offset: usize) -> Result<u32> {
        if !offset.is_multiple_of(4) || offset + 4 > self.len {
            bail!(
                "read of u32 at {offset:#x} unaligned or beyond {:#x}",
                self.len
            );
        }
        // SAFETY: in bounds and aligned (checked above); volatile because the
        // guest writes it behind our back.
        Ok(unsafe { std::ptr::read_volatile(self.ptr.add(offset).cast::<u32>()) })
    }

    /// Writes the first dword of every page from the host side (faults the
    /// whole range in through the host page table). `&mut self`, like
    /// [`HostMem::write_at`]: host writes never race each other.
    pub fn fill(&mut self, value: u32) {
        for i in 0..self.pages() {
            // SAFETY: as in `read_page_u32`.
            unsafe { std::ptr::write_volatile(self.ptr.add(i * PAGE_SIZE).cast::<u32>(), value) }
        }
    }
}

impl Drop for HostMem {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the range this object owns.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}
