// SPDX-License-Identifier: GPL-2.0
//! `/proc/self/pagemap`: which pages of a range are present or swapped out,
//! and (with `/proc/kpageflags`) their folios' flags.

use anyhow::{bail, Context, Result};
use std::os::unix::fs::FileExt;

const PAGE_SIZE: u64 = 4096;
const PRESENT: u64 = 1 << 63;
const SWAPPED: u64 = 1 << 62;

/// State of one virtual page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageState {
    /// Mapped in memory.
    Present,
    /// Swapped out.
    Swapped,
    /// Neither (never touched, or discarded).
    None,
}

/// Decodes one pagemap entry.
pub fn decode(entry: u64) -> PageState {
    if entry & PRESENT != 0 {
        PageState::Present
    } else if entry & SWAPPED != 0 {
        PageState::Swapped
    } else {
        PageState::None
    }
}

/// States of the `pages` pages starting at `addr` in this process.
pub fn states(addr: usize, pages: usize) -> Result<Vec<PageState>> {
    Ok(entries(addr, pages)?.into_iter().map(decode).collect())
}

const PFN_MASK: u64 = (1 << 55) - 1;
const KPF_COMPOUND_HEAD: u64 = 1 << 15;
const KPF_COMPOUND_TAIL: u64 = 1 << 16;
const KPF_LRU: u64 = 1 << 5;

/// Raw pagemap entries of the `pages` pages at `addr` (PFNs need root).
fn entries(addr: usize, pages: usize) -> Result<Vec<u64>> {
    if !(addr as u64).is_multiple_of(PAGE_SIZE) {
        bail!("pagemap address {addr:#x} not page aligned");
    }
    let f = std::fs::File::open("/proc/self/pagemap").context("opening /proc/self/pagemap")?;
    let mut buf = vec![0u8; pages * 8];
    f.read_exact_at(&mut buf, addr as u64 / PAGE_SIZE * 8)
        .context("reading /proc/self/pagemap")?;
    Ok(buf
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .collect())
}

/// Whether the `n` pages (a power of two) at `addr`, `n`-page aligned, are
/// exactly one large folio: present, physically contiguous, a compound head
/// followed by `n - 1` tails (`/proc/kpageflags`), and the page after them
/// in physical memory not a tail of the same folio. Needs root.
pub fn is_one_folio(addr: usize, n: usize) -> Result<bool> {
    if n < 2 || !n.is_power_of_two() || !(addr as u64).is_multiple_of(n as u64 * PAGE_SIZE) {
        bail!("{n} pages at {addr:#x}: not an aligned power-of-two folio size");
    }
    let e = entries(addr, n)?;
    if e.iter().any(|&x| x & PRESENT == 0) {
        return Ok(false);
    }
    let pfn0 = e[0] & PFN_MASK;
    if pfn0 == 0 {
        bail!("pagemap shows no PFNs: reading them needs CAP_SYS_ADMIN");
    }
    if e.iter()
        .enumerate()
        .any(|(i, &x)| x & PFN_MASK != pfn0 + i as u64)
    {
        return Ok(false);
    }
    let f = std::fs::File::open("/proc/kpageflags").context("opening /proc/kpageflags")?;
    let mut buf = vec![0u8; (n + 1) * 8];
    f.read_exact_at(&mut buf, pfn0 * 8)
        .context("reading /proc/kpageflags")?;
    let flags: Vec<u64> = buf
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    Ok(folio_flags_match(&flags, n))
}

/// Indices of the `pages` pages at `addr` that are not on an LRU list: not
/// present, or present with `KPF_LRU` clear in `/proc/kpageflags` (e.g. a
/// folio still waiting in a CPU's LRU batch, see
/// [`crate::sys::drain_lru_batches`], or isolated). Needs root.
///
/// It reads through a small buffer on the stack: memory it faulted in would
/// go through this CPU's LRU batch and push the folios waiting there onto
/// the lists, hiding what it looks for.
pub fn off_lru(addr: usize, pages: usize) -> Result<Vec<usize>> {
    const CHUNK: usize = 256;
    if !(addr as u64).is_multiple_of(PAGE_SIZE) {
        bail!("pagemap address {addr:#x} not page aligned");
    }
    let pm = std::fs::File::open("/proc/self/pagemap").context("opening /proc/self/pagemap")?;
    let kf = std::fs::File::open("/proc/kpageflags").context("opening /proc/kpageflags")?;
    let mut buf = [0u8; CHUNK * 8];
    let mut off = Vec::new();
    for first in (0..pages).step_by(CHUNK) {
        let n = (pages - first).min(CHUNK);
        let chunk = &mut buf[..n * 8];
        pm.read_exact_at(chunk, (addr as u64 / PAGE_SIZE + first as u64) * 8)
            .context("reading /proc/self/pagemap")?;
        for (i, c) in chunk.chunks_exact(8).enumerate() {
            let entry = u64::from_le_bytes(c.try_into().unwrap());
            let flags = match pfn_of(entry)? {
                Some(pfn) => {
                    let mut f = [0u8; 8];
                    kf.read_exact_at(&mut f, pfn * 8)
                        .context("reading /proc/kpageflags")?;
                    u64::from_le_bytes(f)
                }
                None => 0,
            };
            if !on_lru(entry, flags) {
                off.push(first + i);
            }
        }
    }
    Ok(off)
}

/// The PFN of a pagemap entry, `None` if the page is not present; an error
/// if it is present but the PFN is hidden (reading PFNs needs root).
fn pfn_of(entry: u64) -> Result<Option<u64>> {
    if entry & PRESENT == 0 {
        return Ok(None);
    }
    match entry & PFN_MASK {
        0 => bail!("pagemap shows no PFNs: reading them needs CAP_SYS_ADMIN"),
        pfn => Ok(Some(pfn)),
    }
}

/// Whether a page with pagemap entry `entry` and kpageflags `flags` is on an
/// LRU list.
fn on_lru(entry: u64, flags: u64) -> bool {
    entry & PRESENT != 0 && flags & KPF_LRU != 0
}

/// `flags` are the kpageflags of `n + 1` consecutive PFNs: one folio of
/// exactly `n` pages starts at the first.
fn folio_flags_match(flags: &[u64], n: usize) -> bool {
    flags.len() == n + 1
        && flags[0] & KPF_COMPOUND_HEAD != 0
        && flags[1..n].iter().all(|&f| f & KPF_COMPOUND_TAIL != 0)
        && flags[n] & KPF_COMPOUND_TAIL == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_entries() {
        assert_eq!(decode(PRESENT | 0x1234), PageState::Present);
        assert_eq!(decode(SWAPPED | 0x55), PageState::Swapped);
        assert_eq!(decode(0), PageState::None);
        assert_eq!(decode(1 << 61), PageState::None);
    }

    #[test]
    fn lru_membership() {
        assert!(on_lru(PRESENT | 0x1234, KPF_LRU));
        assert!(on_lru(PRESENT | 0x1234, KPF_LRU | KPF_COMPOUND_HEAD));
        assert!(!on_lru(PRESENT | 0x1234, KPF_COMPOUND_HEAD));
        assert!(!on_lru(SWAPPED | 0x55, KPF_LRU));
        assert!(!on_lru(0, KPF_LRU));
        assert_eq!(pfn_of(PRESENT | 0x1234).unwrap(), Some(0x1234));
        assert_eq!(pfn_of(SWAPPED | 0x55).unwrap(), None);
        assert!(pfn_of(PRESENT).is_err());
    }

    #[test]
    fn folio_flags() {
        let (h, t) = (KPF_COMPOUND_HEAD, KPF_COMPOUND_TAIL);
        assert!(folio_flags_match(&[h, t, t, t, h], 4));
        assert!(folio_flags_match(&[h, t, t, t, 0], 4));
        // Larger than 4 pages, a tail missing, not a head, wrong length.
        assert!(!folio_flags_match(&[h, t, t, t, t], 4));
        assert!(!folio_flags_match(&[h, t, 0, t, 0], 4));
        assert!(!folio_flags_match(&[t, t, t, t, 0], 4));
        assert!(!folio_flags_match(&[h, t, t, t], 4));
    }
}
