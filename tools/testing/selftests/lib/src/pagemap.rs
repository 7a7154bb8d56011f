// SPDX-License-Identifier: GPL-2.0
//! `/proc/self/pagemap`: which pages of a range are present or swapped out.

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
