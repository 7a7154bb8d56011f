// SPDX-License-Identifier: GPL-2.0
//! The swapping guest: a KVM guest in a memcg whose `memory.high` pushes
//! its memory to swap, writing a pattern and verifying it after swap-in,
//! memslot changes and discards of the neighbouring memory.
//!
//! The guest's own check cannot see a stale SPTE: a guest that still maps
//! a page reclaim freed writes and reads that page and passes. So after
//! each of its checks the host reads every page through its own mapping
//! and compares it with an [`Image`] of what the guest wrote and the host
//! discarded. A page the guest reached only through a stale SPTE is still
//! swapped out in the host's page table, so the host's read swaps in what
//! swap holds; in a sound run the guest's check faulted nearly every page
//! back in, and only the few reclaimed since come from swap.

use super::ChildCtx;
use crate::shared::Rng;
use anyhow::Result;
use mglru_selftest::kvm::{Access, Backing, TouchVm, PAGE_SIZE};
use mglru_selftest::pagemap::{self, PageState};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Where the guest moves its data memslot to and back.
pub(super) const MOVED_GPA: u64 = 0x4000_0000;
/// Host mismatches printed per check (all are counted).
const MISMATCHES_SHOWN: usize = 8;

/// What the host must find in the first dword of a data page (the only
/// one the guest writes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Exactly this: the guest wrote it and nothing discarded it since.
    Is(u32),
    /// This or 0: the guest wrote it while the host discarded parts of
    /// the range (`MADV_DONTNEED`: the next access faults in a zero page).
    IsOrZero(u32),
}

impl Expect {
    fn admits(self, found: u32) -> bool {
        match self {
            Expect::Is(v) => found == v,
            Expect::IsOrZero(v) => found == v || found == 0,
        }
    }
}

impl std::fmt::Display for Expect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Expect::Is(v) => write!(f, "{v:#x}"),
            Expect::IsOrZero(v) => write!(f, "{v:#x} or 0"),
        }
    }
}

/// A data page whose host view is not what the [`Image`] expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct HostMismatch {
    page: usize,
    found: u32,
    expected: Expect,
}

/// The guest's data memory as the host must see it, page by page: what
/// the guest's writes and the host's discards left there.
struct Image(Vec<Expect>);

impl Image {
    /// Fresh anonymous memory: zeros.
    fn new(pages: usize) -> Self {
        Image(vec![Expect::Is(0); pages])
    }

    /// What [`Access::Pattern`]`(seed)` writes over `first..first+count`,
    /// as `TouchVm::touch_with` and `verify_pattern_with` number it: page
    /// `first + i` holds `seed + i` (wrapping), however the pages are
    /// split over the vCPUs.
    fn pattern(&mut self, first: usize, count: usize, seed: u32) {
        for (i, e) in self.0[first..first + count].iter_mut().enumerate() {
            *e = Expect::Is(seed.wrapping_add(i as u32));
        }
    }

    /// [`Access::Write`]`(value)` over `first..first+count` while the host
    /// discarded parts of it: a page discarded after the vCPU wrote it
    /// reads 0.
    fn written_while_discarding(&mut self, first: usize, count: usize, value: u32) {
        self.0[first..first + count].fill(Expect::IsOrZero(value));
    }

    /// The pages whose first dword, as `read` returns it, the image does
    /// not admit.
    fn mismatches(&self, mut read: impl FnMut(usize) -> u32) -> Vec<HostMismatch> {
        self.0
            .iter()
            .enumerate()
            .filter_map(|(page, &expected)| {
                let found = read(page);
                (!expected.admits(found)).then_some(HostMismatch {
                    page,
                    found,
                    expected,
                })
            })
            .collect()
    }
}

/// Pattern region (first half of the guest's memory: written, swapped out
/// under `memory.high`, verified by the guest after swap-in) and discard
/// region (second half: written by the guest, dropped by the host); after
/// each verification the host checks all of it against the [`Image`].
pub fn role_guest(seed: u64, mem: usize) -> Result<()> {
    let mut cx = ChildCtx::new(seed);
    let mut vm = TouchVm::new(mem, 2, Backing::Anon4k)?;
    let pages = vm.mem.pages();
    let mut image = Image::new(pages);
    let (pat, disc) = (pages / 2, pages - pages / 2);
    let mut round: u32 = 0;
    while !cx.stopping() {
        round += 1;
        let pseed = round.wrapping_mul(0x0101_0000) | 1;
        vm.touch_with(2, 0, pat, Access::Pattern(pseed))?;
        image.pattern(0, pat, pseed);
        if round == 1 {
            // KVM maps the pattern half now.
            cx.ready();
        }
        cx.count("guest pattern writes", 1);
        // Let reclaim push pattern pages out while the rest churns: the
        // host discards parts of the other half while the vCPUs write it
        // (invalidations racing with faults and aging).
        for _ in 0..3 {
            if cx.stopping() {
                break;
            }
            let discards = write_while_discarding(&mut vm, pat, disc, round, &mut cx.rng)?;
            image.written_while_discarding(pat, disc, round);
            cx.count("guest host MADV_DONTNEED (vCPUs running)", discards);
            vm.touch_with(1, pat, disc, Access::Read)?;
        }
        change_memslot(&mut cx, &mut vm)?;
        // The pages the guest reads back from swap now.
        let out = pagemap::states(vm.mem.as_ptr() as usize, pat)?
            .iter()
            .filter(|&&st| st == PageState::Swapped)
            .count();
        cx.count("guest pattern pages read back from swap", out as u64);
        if let Some(m) = vm.verify_pattern_with(2, 0, pat, pseed)? {
            // The host's view of the page tells a guest that wrote or
            // read the wrong page from a page whose data was lost.
            println!(
                "VIOLATION integrity: round {round}: guest page {} read {:#x}, expected {:#x} \
                 (host sees {:#x}; memslot at {:#x})",
                m.page,
                m.found,
                m.expected,
                vm.mem.read_page_u32(m.page),
                vm.data_gpa()
            );
            cx.report();
            std::process::exit(1);
        }
        cx.count("guest pattern verifications", 1);
        cx.count("guest pages verified", pat as u64);
        if !host_check(&mut cx, &vm, &image, round)? {
            cx.report();
            std::process::exit(1);
        }
        cx.report();
    }
    cx.report();
    Ok(())
}

/// Reads every data page through the host's mapping (no vCPU runs now)
/// and compares it with `image`; prints the mismatches as violations and
/// returns whether there were none.
fn host_check(cx: &mut ChildCtx, vm: &TouchVm, image: &Image, round: u32) -> Result<bool> {
    let pages = vm.mem.pages();
    let swapped = pagemap::states(vm.mem.as_ptr() as usize, pages)?
        .iter()
        .filter(|&&st| st == PageState::Swapped)
        .count();
    let bad = image.mismatches(|i| vm.mem.read_page_u32(i));
    cx.count("guest host checks", 1);
    cx.count("guest pages host-verified", pages as u64);
    cx.count("guest pages host-verified from swap", swapped as u64);
    for m in bad.iter().take(MISMATCHES_SHOWN) {
        println!(
            "VIOLATION integrity: round {round}: the host reads guest page {} as {:#x}, \
             expected {} ({} of {pages} pages differ; the guest's own check passed; memslot at \
             {:#x})",
            m.page,
            m.found,
            m.expected,
            bad.len(),
            vm.data_gpa()
        );
    }
    Ok(bad.is_empty())
}

/// Has two vCPUs write `value` over the `disc` pages from `first` while a
/// host thread `MADV_DONTNEED`s random parts of them; returns how many
/// discards succeeded.
fn write_while_discarding(
    vm: &mut TouchVm,
    first: usize,
    disc: usize,
    value: u32,
    rng: &mut Rng,
) -> Result<u64> {
    let base = vm.mem.as_ptr() as usize;
    let mut r = Rng::new(rng.next());
    let done = AtomicBool::new(false);
    std::thread::scope(|s| -> Result<u64> {
        let h = s.spawn(|| {
            let mut n = 0u64;
            while !done.load(Ordering::Relaxed) {
                let len = r.range(1, disc as u64 / 4) as usize;
                let from = first + r.range(0, (disc - len) as u64) as usize;
                // SAFETY: the range lies inside the VM's data mapping,
                // which outlives this scope; nothing holds Rust references
                // into it (the guest and volatile accesses only).
                let rc = unsafe {
                    libc::madvise(
                        (base + from * PAGE_SIZE) as *mut libc::c_void,
                        len * PAGE_SIZE,
                        libc::MADV_DONTNEED,
                    )
                };
                if rc == 0 {
                    n += 1;
                }
                std::thread::sleep(Duration::from_millis(r.range(1, 20)));
            }
            n
        });
        let res = vm.touch_with(2, first, disc, Access::Write(value));
        done.store(true, Ordering::Relaxed);
        let n = h
            .join()
            .map_err(|_| anyhow::anyhow!("discard thread panicked"))?;
        res.map(|()| n)
    })
}

/// Deletes and re-adds the data memslot, moves it, or leaves it (between
/// vCPU runs: a vCPU touching a deleted memslot would exit to userspace).
fn change_memslot(cx: &mut ChildCtx, vm: &mut TouchVm) -> Result<()> {
    match cx.rng.range(0, 3) {
        0 => {
            vm.set_data_slot(false)?;
            vm.set_data_slot(true)?;
            cx.count("guest memslot delete+re-add", 1);
        }
        1 => {
            let to = if vm.data_gpa() == 0 { MOVED_GPA } else { 0 };
            vm.move_data_slot(to)?;
            cx.count("guest memslot moves", 1);
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_pattern_is_seed_plus_page_from_first() {
        let mut im = Image::new(8);
        im.pattern(2, 4, u32::MAX - 1);
        let want = [0, 0, u32::MAX - 1, u32::MAX, 0, 1, 0, 0];
        assert!(im.mismatches(|i| want[i]).is_empty());
        // What the guest's own check expects of each page: rdx starts at
        // seed + (lo - first) for a vCPU's share lo..hi and counts up.
        let (first, seed) = (2usize, u32::MAX - 1);
        for lo in first..first + 4 {
            let rdx = seed.wrapping_add((lo - first) as u32);
            assert_eq!(im.0[lo], Expect::Is(rdx));
        }
    }

    #[test]
    fn image_finds_wrong_values_and_admits_discarded_zeros() {
        let mut im = Image::new(6);
        im.pattern(0, 3, 0x100);
        im.written_while_discarding(3, 3, 7);
        // Written, discarded (zero) and written again: all fine.
        let good = [0x100, 0x101, 0x102, 7, 0, 7];
        assert!(im.mismatches(|i| good[i]).is_empty());
        // A pattern page zeroed (discarded or lost), a pattern page from an
        // earlier round, and a page of the discard half from another round.
        let bad = [0x100, 0, 0x102, 7, 6, 7];
        assert_eq!(
            im.mismatches(|i| bad[i]),
            vec![
                HostMismatch {
                    page: 1,
                    found: 0,
                    expected: Expect::Is(0x101)
                },
                HostMismatch {
                    page: 4,
                    found: 6,
                    expected: Expect::IsOrZero(7)
                },
            ]
        );
        assert_eq!(Expect::IsOrZero(7).to_string(), "0x7 or 0");
        // A later pattern over the discard half makes zeros wrong again.
        im.pattern(3, 3, 0x200);
        assert_eq!(im.mismatches(|i| good[i]).len(), 3);
    }
}
