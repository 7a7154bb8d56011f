// SPDX-License-Identifier: GPL-2.0
//! The orchestrator's chaos threads: forced aging passes per memcg, the 0x8
//! toggle, proactive reclaim and the batches of `lru_mirror` users with
//! the module reloaded between them. Each holds the checkpoint gate for
//! reading around each operation.

use crate::children::{collect, spawn_child, wait_ready, Kid, READY_WAIT};
use crate::opts::Opts;
use crate::shared::{Live, Rng, Shared};
use anyhow::{bail, Context, Result};
use mglru_selftest::aging::NID;
use mglru_selftest::features::{self, caps};
use mglru_selftest::lru_mirror;
use mglru_selftest::memcg::Memcg;
use mglru_selftest::{lru_gen, module, sys};
use std::time::{Duration, Instant};

/// Forced aging passes on one memcg, back to back. Reading `lru_gen` costs
/// as much as a small pass, so the loop predicts `max_seq` (each pass adds
/// one) and reads it back every 8th pass, or when the kernel says the
/// prediction ran ahead (`EINVAL`: someone else's pass did not happen, or
/// ours was a no-op). Passes are counted from what it reads back: how far
/// `max_seq` moved, by this thread or by reclaim. Every 16th read checks the
/// walk stats of the generation the last pass filled.
///
/// With `live`: the passes between two reads also count as "with a
/// secondary MMU mapping the memcg" if it was mapped all that time (the
/// same odd [`Live`] snapshot before the first read and after the second);
/// a change of `live` forces a read, so that little is lost at the edges.
pub fn aging_loop(sh: &Shared, path: &str, id: u32, live: Option<&Live>) {
    let read_max = || -> Result<u64> {
        lru_gen::read()
            .and_then(|all| lru_gen::lruvec_in(&all, path, NID).map(|(_, n)| n.max_seq()))?
            .context("no generations")
    };
    let snap = || live.map(Live::snap);
    let mut errors = 0;
    let mut reads = 0u64;
    let (mut seen, mut next) = (None::<u64>, 0u64);
    // The `live` snapshot taken before the read that gave `seen`.
    let mut from = None::<u64>;
    let mut since_read = 0;
    while !sh.stopping() {
        let _g = sh.gate.read().unwrap();
        if live.is_some() && snap() != from {
            since_read = 8;
        }
        if seen.is_none() || since_read >= 8 {
            let before = snap();
            match read_max() {
                Ok(m) => {
                    if let Some(old) = seen {
                        let moved = m.saturating_sub(old);
                        sh.count("aging passes", moved);
                        sh.count(&format!("aging passes on {path}"), moved);
                        if let (Some(a), Some(b)) = (from, snap()) {
                            if a == b && a & 1 == 1 {
                                sh.count(
                                    &format!("aging passes on {path}, secondary MMU mapped"),
                                    moved,
                                );
                            }
                        }
                    }
                    reads += 1;
                    if reads.is_multiple_of(16) && m > 0 {
                        match walk_stats_consistent(path, m - 1) {
                            Ok(true) => sh.count("walk-stat checks", 1),
                            Ok(false) => {}
                            Err(e) => sh.violation("counters", format!("{e:#}")),
                        }
                    }
                    seen = Some(m);
                    from = before;
                    next = m;
                    since_read = 0;
                }
                Err(e) => {
                    sh.violation("aging", format!("{path}: reading max_seq: {e:#}"));
                    errors += 1;
                    if errors > 10 {
                        return;
                    }
                    drop(_g);
                    sh.sleep(Duration::from_millis(100));
                    continue;
                }
            }
        }
        match lru_gen::age(id, NID, next, true, true) {
            Ok(()) => {
                next += 1;
                since_read += 1;
            }
            // The prediction ran ahead of max_seq: read it back.
            Err(e) if sys::errno_of(&e) == Some(libc::EINVAL) => since_read = 8,
            Err(e) => {
                sh.violation("aging", format!("aging {path} from {next}: {e:#}"));
                errors += 1;
                if errors > 10 {
                    return;
                }
            }
        }
    }
}

/// The fast-only counters of generation `seq` of `path`: answers within
/// questions, at most 512 pages per call (`LRU_GEN_SECONDARY_BATCH`).
/// `Ok(false)`: nothing to check, the generation is gone (aged out). The
/// series' kernel prints `C`, `Q`, `S` and `E` for every generation but the
/// youngest (with `LRU_GEN_STATS`, in both flavours; 0 while 0x8 is off),
/// so a listed generation without them is an error.
fn walk_stats_consistent(path: &str, seq: u64) -> Result<bool> {
    let node = lru_gen::node_full_of(path, NID)?;
    let Some(g) = node.gen(seq) else {
        return Ok(false);
    };
    let (c, q, s, e) = walk_cqse(g.walk.as_ref())
        .with_context(|| format!("{path} generation {seq} (max_seq {:?})", node.max_seq()))?;
    if s > q || e > q || c > q || q > 512 * c {
        bail!("{path} generation {seq}: walk stats inconsistent: C={c} Q={q} S={s} E={e}");
    }
    Ok(true)
}

/// The `C`, `Q`, `S` and `E` walk stats of a generation; an error if any
/// is missing.
pub fn walk_cqse(w: Option<&lru_gen::WalkStats>) -> Result<(u64, u64, u64, u64)> {
    let g = |l: char| {
        w.and_then(|w| w.get(l))
            .with_context(|| format!("lru_gen_full lacks walk stat {l:?}: {w:?}"))
    };
    Ok((g('c')?, g('q')?, g('s')?, g('e')?))
}

/// Flips 0x8 of `/sys/kernel/mm/lru_gen/enabled` every 20-300 ms.
pub fn toggle_loop(sh: &Shared, rng: &mut Rng) {
    while !sh.stopping() {
        sh.sleep(rng.ms(20, 300));
        let _g = sh.gate.read().unwrap();
        let r = features::lru_gen_caps()
            .and_then(|c| features::set_lru_gen_caps(c ^ caps::SECONDARY_MMU_WALK));
        match r {
            Ok(()) => sh.count("0x8 toggles", 1),
            Err(e) => sh.violation("toggle", format!("{e:#}")),
        }
    }
}

/// Proactive reclaim (`memory.reclaim`, 1-8 MiB) of a random memcg of
/// `cgs` every 0.2-1.5 s, on top of their `memory.high`.
pub fn reclaim_loop(sh: &Shared, cgs: &[&Memcg], rng: &mut Rng) {
    while !sh.stopping() {
        sh.sleep(rng.ms(200, 1500));
        let _g = sh.gate.read().unwrap();
        let cg = cgs[rng.range(0, cgs.len() as u64 - 1) as usize];
        match cg.try_reclaim(rng.range(1, 8) << 20) {
            Ok(true) => sh.count("memory.reclaim writes: all reclaimed", 1),
            Ok(false) => sh.count("memory.reclaim writes: EAGAIN (not all reclaimed)", 1),
            Err(e) => sh.violation("reclaim", format!("{}: {e:#}", cg.path())),
        }
    }
}

/// Loads `lru_mirror` unless it is loaded (the caller holds
/// [`Shared::module`]).
pub fn ensure_loaded(sh: &Shared) -> Result<()> {
    if !module::is_loaded(lru_mirror::MODULE) {
        module::load(&module::project_module(lru_mirror::MODULE), "")?;
        sh.count("lru_mirror loads", 1);
    }
    Ok(())
}

/// Unloads `lru_mirror`, retrying while a reference is being dropped (an
/// exiting process's file, a deferred notifier free); fails after 10 s.
pub fn unload_mirror() -> Result<()> {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        match module::unload(lru_mirror::MODULE) {
            Ok(()) => return Ok(()),
            Err(e)
                if Instant::now() < end
                    && matches!(sys::errno_of(&e), Some(libc::EAGAIN) | Some(libc::EBUSY)) =>
            {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => {
                let refs = sys::read_trimmed(format!("/sys/module/{}/refcnt", lru_mirror::MODULE))
                    .unwrap_or_default();
                return Err(e).with_context(|| {
                    format!("lru_mirror still referenced (refcnt {refs}) after all users exited")
                });
            }
        }
    }
}

/// The module's reference count: each open file and each registered
/// notifier subscription holds one.
fn mirror_refcnt() -> Result<u64> {
    sys::read_trimmed(format!("/sys/module/{}/refcnt", lru_mirror::MODULE))?
        .parse()
        .context("parsing refcnt")
}

/// Batches of mirror users (each switching its device's failure knobs at
/// random), the module reloaded between batches. The gate is held for a
/// whole batch, so no user runs during a checkpoint.
pub fn mirror_loop(sh: &Shared, cg: &Memcg, o: &Opts, rng: &mut Rng) {
    while !sh.stopping() {
        let _g = sh.gate.read().unwrap();
        let _m = sh.module.lock().unwrap();
        if let Err(e) = ensure_loaded(sh) {
            sh.violation("module", format!("loading lru_mirror: {e:#}"));
            return;
        }
        mirror_batch(sh, cg, o, rng);
        wait_unreferenced(sh);
        if rng.chance(70) {
            match unload_mirror() {
                Ok(()) => sh.count("lru_mirror unloads", 1),
                Err(e) => {
                    sh.violation("teardown", format!("{e:#}"));
                    return;
                }
            }
        }
    }
}

/// One batch: 1-3 users spawned, run for 1.5-5 s once ready, then
/// collected (a quarter of them killed first).
fn mirror_batch(sh: &Shared, cg: &Memcg, o: &Opts, rng: &mut Rng) {
    let n = rng.range(1, 3);
    let mut users = Vec::new();
    for _ in 0..n {
        match spawn_child("mirror-user", cg, rng.next(), o) {
            Ok(c) => users.push(Kid::new(c)),
            Err(e) => sh.violation("child", format!("{e:#}")),
        }
    }
    // Each user mirrors before it says READY and keeps its mirror until
    // it is collected: the memcg counts as mapped once all users got
    // ready (if one did), until the first is collected.
    let mut ready = false;
    for u in &mut users {
        ready |= wait_ready(sh, "mirror-user", u, READY_WAIT);
    }
    sh.mirror_live.set(ready);
    // Long enough that most of the mirror memcg's passes run while a
    // mirror maps it (only those count for --min-passes).
    std::thread::sleep(rng.ms(1500, 5000));
    sh.mirror_live.set(false);
    for mut u in users {
        let kill = rng.chance(25);
        if kill {
            let _ = u.child.kill();
            sh.count("mirror users killed", 1);
        }
        // Generous: under memory.high a debug kernel throttles hard.
        collect(sh, "mirror-user", u, Duration::from_secs(300), kill);
    }
}

/// With no user left, no file and no subscription may hold the module (a
/// subscription's reference goes once its SRCU-deferred free ran): its
/// reference count must be back to 0 within 10 s.
fn wait_unreferenced(sh: &Shared) {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        match mirror_refcnt() {
            Ok(0) => {
                sh.count("lru_mirror refcount back to 0 after a batch", 1);
                return;
            }
            Ok(r) if Instant::now() >= end => {
                sh.violation(
                    "teardown",
                    format!("lru_mirror refcnt {r} 10 s after all users exited"),
                );
                return;
            }
            Ok(_) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => {
                sh.violation("mirror", format!("{e:#}"));
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walk_stats_must_be_complete() {
        let full = lru_gen::WalkStats::parse(&["9t", "3y", "0f", "0a", "2c", "600q", "5s", "1e"]);
        assert_eq!(walk_cqse(full.as_ref()).unwrap(), (2, 600, 5, 1));
        // 6.12's four columns, "no data" markers, no stats line at all.
        let old = lru_gen::WalkStats::parse(&["9t", "3y", "0f", "0a"]);
        assert!(walk_cqse(old.as_ref()).is_err());
        let none = lru_gen::WalkStats::parse(&["0x", "0x"]);
        assert!(walk_cqse(none.as_ref()).is_err());
        assert!(walk_cqse(None).is_err());
    }
}
