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
    if !(addr as u64).is_multiple_of(PAGE_SIZE) {
        bail!("pagemap address {addr:#x} not page aligned");
    }
    let f = std::fs::File::open("/proc/self/pagemap").context("opening /proc/self/pagemap")?;
    let mut buf = vec![0u8; pages * 8];
    f.read_exact_at(&mut buf, addr as u64 / PAGE_SIZE * 8)
        .context("reading /proc/self/pagemap")?;
    Ok(buf
        .chunks_exact(8)
        .map(|c| decode(u64::from_le_bytes(c.try_into().unwrap())))
        .collect())
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
}
