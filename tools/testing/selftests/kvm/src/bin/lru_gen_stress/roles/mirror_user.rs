// SPDX-License-Identifier: GPL-2.0
//! One `lru_mirror` user of a batch (the orchestrator's mirror thread
//! spawns the batch, lets it run and collects it).

use super::{ChildCtx, USER_MEM};
use crate::shared::{retry_eagain, Rng};
use anyhow::{bail, Context, Result};
use mglru_selftest::kvm::{Backing, HostMem, PAGE_SIZE};
use mglru_selftest::lru_mirror::{self, Mirror};
use std::time::Duration;

/// Mirror, access through the device, discard and touch on the host until
/// stdin closes (the parent collects the batch), then leave one of three
/// ways: unmirror, close with a live mirror or exit with one.
pub fn role_mirror_user(seed: u64) -> Result<()> {
    let mut cx = ChildCtx::new(seed);
    let mut mem = HostMem::new(USER_MEM, Backing::Anon4k)?;
    let pages = mem.pages();
    mem.fill(0x6d69_7272);
    let dev = Mirror::open()?;
    let flags = if cx.rng.chance(20) {
        lru_mirror::MIRROR_NO_FAST_OP
    } else {
        0
    };
    // MIRROR gives up with EAGAIN when invalidations (reclaim under
    // memory.high) keep racing with its fault-in: retry.
    retry_eagain(|| {
        let r = dev.mirror(mem.as_ptr() as usize, mem.len(), flags);
        if r.as_ref()
            .is_err_and(|e| e.raw_os_error() == Some(libc::EAGAIN))
        {
            cx.count("mirror MIRROR busy (EAGAIN, retried)", 1);
        }
        r
    })
    .context("MIRROR")?;
    cx.count("mirror users", 1);
    let knob = random_knob(&mut cx.rng);
    match dev.config(knob) {
        Ok(()) => cx.count("mirror knob changes", 1),
        Err(e) => println!("VIOLATION mirror: CONFIG {knob:#x} failed: {e}"),
    }
    cx.ready();
    let mut last = dev.stats()?;
    while !cx.stopping() {
        let len = cx.rng.range(1, pages as u64 / 2) as usize;
        let first = cx.rng.range(0, (pages - len) as u64) as usize;
        let addr = mem.as_ptr() as usize + first * PAGE_SIZE;
        // The failure knobs live in the device file: switch them at random
        // while aging asks this mirror.
        if cx.rng.chance(25) {
            let knob = random_knob(&mut cx.rng);
            match dev.config(knob) {
                Ok(()) => cx.count("mirror knob changes", 1),
                Err(e) => println!("VIOLATION mirror: CONFIG {knob:#x} failed: {e}"),
            }
        }
        match cx.rng.range(0, 3) {
            0 | 1 => match dev.access(addr, len * PAGE_SIZE) {
                Ok(_) => cx.count("mirror device accesses", 1),
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                    cx.count("mirror device accesses busy", 1)
                }
                Err(e) => println!("VIOLATION mirror: ACCESS of {len} pages failed: {e}"),
            },
            2 => {
                mem.discard(first, len)?;
                cx.count("mirror host MADV_DONTNEED", 1);
            }
            _ => {
                for i in first..first + len {
                    mem.write_at(i * PAGE_SIZE, &[1])?;
                }
                cx.count("mirror host touches", 1);
            }
        }
        let s = dev.stats()?;
        if let Err(e) = mirror_stats_consistent(&last, &s) {
            println!("VIOLATION counters: {e:#}");
        }
        last = s;
        std::thread::sleep(Duration::from_millis(cx.rng.range(0, 20)));
    }
    let s = dev.stats()?;
    cx.count("mirror pages asked fast-only under chaos", s.fast_pages);
    cx.count("mirror pages answered failed under chaos", s.fast_failed);
    cx.count(
        "mirror clear_young() young answers under chaos",
        s.slow_young,
    );
    match cx.rng.range(0, 2) {
        0 => {
            dev.unmirror().context("UNMIRROR")?;
            cx.count("mirror users: unmirror and close", 1);
        }
        1 => cx.count("mirror users: close with a live mirror", 1),
        _ => {
            cx.count("mirror users: exit with a live mirror", 1);
            cx.report();
            std::process::exit(0);
        }
    }
    drop(dev);
    cx.report();
    Ok(())
}

/// A failure knob for the device: `FAIL_FAST`, `FAIL_AFTER k`,
/// `SLOW_INVALIDATE` or off.
fn random_knob(rng: &mut Rng) -> u64 {
    match rng.range(0, 3) {
        0 => lru_mirror::CONFIG_FAIL_FAST,
        1 => lru_mirror::config_fail_after(rng.range(1, 300) as u16),
        2 => lru_mirror::CONFIG_SLOW_INVALIDATE,
        _ => 0,
    }
}

/// The module's counters only grow (per load) and answers never exceed
/// questions.
fn mirror_stats_consistent(a: &lru_mirror::Stats, b: &lru_mirror::Stats) -> Result<()> {
    let grew = [
        ("fast_calls", a.fast_calls, b.fast_calls),
        ("fast_pages", a.fast_pages, b.fast_pages),
        ("fast_young", a.fast_young, b.fast_young),
        ("fast_failed", a.fast_failed, b.fast_failed),
        ("slow_calls", a.slow_calls, b.slow_calls),
        ("slow_young", a.slow_young, b.slow_young),
        ("invalidations", a.invalidations, b.invalidations),
        ("releases", a.releases, b.releases),
    ];
    for (n, x, y) in grew {
        if y < x {
            bail!("lru_mirror counter {n} went back from {x} to {y}");
        }
    }
    if b.fast_young + b.fast_failed > b.fast_pages || b.fast_calls > b.fast_pages {
        bail!("lru_mirror answered more than it was asked: {b:?}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_stats_checks() {
        let a = lru_mirror::Stats {
            fast_calls: 1,
            fast_pages: 10,
            fast_young: 4,
            ..Default::default()
        };
        let mut b = a;
        b.fast_pages = 20;
        assert!(mirror_stats_consistent(&a, &b).is_ok());
        b.fast_young = 3;
        assert!(mirror_stats_consistent(&a, &b).is_err());
        b.fast_young = 15;
        b.fast_failed = 6;
        assert!(mirror_stats_consistent(&a, &b).is_err());
    }
}
