// SPDX-License-Identifier: GPL-2.0
//! The swapping guest: a KVM guest in a memcg whose `memory.high` pushes
//! its memory to swap, writing a pattern and verifying it after swap-in,
//! memslot changes and discards of the neighbouring memory.

use super::ChildCtx;
use crate::shared::Rng;
use anyhow::Result;
use mglru_selftest::kvm::{Access, Backing, TouchVm, PAGE_SIZE};
use mglru_selftest::pagemap::{self, PageState};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Where the guest moves its data memslot to and back.
pub(super) const MOVED_GPA: u64 = 0x4000_0000;

/// Pattern region (first half of the guest's memory: written, swapped out
/// under `memory.high`, verified by the guest after swap-in) and discard
/// region (second half: written by the guest, dropped by the host).
pub fn role_guest(seed: u64, mem: usize) -> Result<()> {
    let mut cx = ChildCtx::new(seed);
    let mut vm = TouchVm::new(mem, 2, Backing::Anon4k)?;
    let pages = vm.mem.pages();
    let (pat, disc) = (pages / 2, pages - pages / 2);
    let mut round: u32 = 0;
    while !cx.stopping() {
        round += 1;
        let pseed = round.wrapping_mul(0x0101_0000) | 1;
        vm.touch_with(2, 0, pat, Access::Pattern(pseed))?;
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
        cx.report();
    }
    cx.report();
    Ok(())
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
