// SPDX-License-Identifier: GPL-2.0
//! The orchestrator's chaos threads: forced aging passes per memcg, the 0x8
//! toggle, proactive reclaim and the batches of `lru_mirror` users with
//! the module reloaded between them. Each holds the checkpoint gate for
//! reading around each operation.

use crate::children::{collect, spawn_child, wait_ready, Kid, READY_WAIT};
use crate::opts::Opts;
use crate::shared::{Abi, Live, Rng, Shared};
use anyhow::{bail, Context, Result};
use mglru_selftest::aging::NID;
use mglru_selftest::features::{self, caps};
use mglru_selftest::lru_mirror;
use mglru_selftest::memcg::Memcg;
use mglru_selftest::{lru_gen, module, sys};
use std::time::{Duration, Instant};

/// Forced aging passes on one memcg, back to back. Reading `lru_gen` costs
/// as much as a small pass, so the loop predicts `max_seq` (each pass adds
/// one) and reads it back every [`READ_EVERY`]th pass, or after an `EINVAL`
/// (see [`classify_einval`]) or, on 7.x, an `EEXIST` (see
/// [`classify_eexist`]). Passes are counted from what it reads back:
/// how far `max_seq` moved, by this thread or by reclaim. Every 16th read
/// checks the walk stats of the generation the last pass filled.
///
/// With `live`: the passes between two reads also count as "with a
/// secondary MMU mapping the memcg" if it was mapped all that time (the
/// same odd [`Live`] snapshot before the first read and after the second);
/// a change of `live` forces a read, so that little is lost at the edges.
///
/// The memcg outlives the loop (`run` removes the memcgs only after every
/// chaos thread ended), so a memcg that cannot be read is a violation too.
pub fn aging_loop(sh: &Shared, path: &str, id: u32, live: Option<&Live>) {
    let mut a = Ager {
        sh,
        path,
        id,
        live,
        errors: 0,
        reads: 0,
        seen: None,
        from: None,
        next: 0,
        fresh: false,
        since_read: 0,
        joined: None,
        backoff: false,
    };
    while !sh.stopping() {
        let _g = sh.gate.read().unwrap();
        if live.is_some() && a.snap() != a.from {
            a.since_read = READ_EVERY;
        }
        if a.seen.is_none() || a.since_read >= READ_EVERY {
            if let Err(e) = a.read_back() {
                if a.failed(format!("{path}: reading max_seq: {e:#}")) {
                    return;
                }
                drop(_g);
                sh.sleep(Duration::from_millis(100));
                continue;
            }
        }
        if !a.age() {
            return;
        }
        if std::mem::take(&mut a.backoff) {
            // Another ager is walking this memcg: let it finish.
            drop(_g);
            sh.sleep(Duration::from_millis(50));
        }
    }
}

/// Passes between two reads of `max_seq` in [`aging_loop`].
const READ_EVERY: u32 = 8;
/// Errors after which [`aging_loop`] gives up on its memcg.
const MAX_ERRORS: u32 = 10;
/// On 7.x, how long every forced pass may fail with `EEXIST` while
/// `max_seq` stays put before the loop calls the pass it joined lost (a
/// walk takes seconds at worst on the debug kernel).
const JOINED_PASS_LIMIT: Duration = Duration::from_secs(60);

/// The state of one [`aging_loop`].
struct Ager<'a> {
    sh: &'a Shared,
    path: &'a str,
    id: u32,
    live: Option<&'a Live>,
    errors: u32,
    reads: u64,
    /// `max_seq` at the last read.
    seen: Option<u64>,
    /// The `live` snapshot taken before the read that gave `seen`.
    from: Option<u64>,
    /// The `max_seq` the next write names.
    next: u64,
    /// `next` is `seen`: no write since the read.
    fresh: bool,
    since_read: u32,
    /// 7.x: `max_seq` as read back after an `EEXIST` that found it still
    /// at what was written (another ager's pass running), and since when;
    /// cleared once a pass of this loop succeeds or `max_seq` moves.
    joined: Option<(u64, Instant)>,
    /// Sleep a little outside the gate before the next write.
    backoff: bool,
}

impl Ager<'_> {
    fn snap(&self) -> Option<u64> {
        self.live.map(Live::snap)
    }

    /// Counts a violation; whether the loop should give up.
    fn failed(&mut self, msg: String) -> bool {
        self.sh.violation("aging", msg);
        self.errors += 1;
        self.errors > MAX_ERRORS
    }

    /// Reads `max_seq` back, counts the passes since the last read and
    /// every 16th time checks the walk stats of the last pass.
    fn read_back(&mut self) -> Result<u64> {
        let before = self.snap();
        let m = lru_gen::read()
            .and_then(|all| lru_gen::lruvec_in(&all, self.path, NID).map(|(_, n)| n.max_seq()))?
            .context("no generations")?;
        let (sh, path) = (self.sh, self.path);
        if let Some(old) = self.seen {
            let moved = m.saturating_sub(old);
            sh.count("aging passes", moved);
            sh.count(&format!("aging passes on {path}"), moved);
            if let (Some(a), Some(b)) = (self.from, self.snap()) {
                if a == b && a & 1 == 1 {
                    sh.count(
                        &format!("aging passes on {path}, secondary MMU mapped"),
                        moved,
                    );
                }
            }
        }
        self.reads += 1;
        if self.reads.is_multiple_of(16) && m > 0 {
            match walk_stats_consistent(path, m - 1) {
                Ok(true) => sh.count("walk-stat checks", 1),
                Ok(false) => {}
                Err(e) => sh.violation("counters", format!("{e:#}")),
            }
        }
        self.seen = Some(m);
        self.from = before;
        self.next = m;
        self.fresh = true;
        self.since_read = 0;
        Ok(m)
    }

    /// One forced pass from the predicted `max_seq`; false: give up.
    fn age(&mut self) -> bool {
        let written = self.next;
        let err = match lru_gen::age(self.id, NID, written, true, true) {
            Ok(()) => {
                self.next += 1;
                self.fresh = false;
                self.since_read += 1;
                self.joined = None;
                return true;
            }
            Err(e) => e,
        };
        let path = self.path;
        let errno = sys::errno_of(&err);
        if self.sh.abi == Abi::V7 {
            return match errno {
                Some(libc::EEXIST) => self.eexist(written),
                Some(libc::EINVAL) => self.einval_v7(written),
                _ => !self.failed(format!("aging {path} from {written}: {err:#}")),
            };
        }
        if errno != Some(libc::EINVAL) {
            return !self.failed(format!("aging {path} from {written}: {err:#}"));
        }
        // Read max_seq back at once, still inside the gate: no checkpoint
        // pass can come between.
        let fresh = self.fresh;
        let now = match self.read_back() {
            Ok(m) => m,
            Err(e) => {
                self.sh.count(EINVAL_UNEXPLAINED, 1);
                return !self.failed(format!(
                    "{path}: EINVAL aging from {written}, and max_seq cannot be read back \
                     (the memcg outlives this loop): {e:#}"
                ));
            }
        };
        match classify_einval(written, fresh, now) {
            Ok(cause) => {
                self.sh.count(cause.name(), 1);
                true
            }
            Err(why) => {
                self.sh.count(EINVAL_UNEXPLAINED, 1);
                !self.failed(format!("{path} (memcg id {}): {why}", self.id))
            }
        }
    }

    /// 7.x: `EEXIST` from a write of `written`: the pass was left to
    /// another ager. Reads `max_seq` back at once (inside the gate) and
    /// accepts it per [`classify_eexist`]; the next write names the
    /// `max_seq` read. `max_seq` must not stay put for
    /// [`JOINED_PASS_LIMIT`] of such answers.
    fn eexist(&mut self, written: u64) -> bool {
        let path = self.path;
        let now = match self.read_back() {
            Ok(m) => m,
            Err(e) => {
                self.sh.count(EEXIST_UNEXPLAINED, 1);
                return !self.failed(format!(
                    "{path}: EEXIST aging from {written}, and max_seq cannot be read back \
                     (the memcg outlives this loop): {e:#}"
                ));
            }
        };
        let cause = match classify_eexist(written, now) {
            Ok(c) => c,
            Err(why) => {
                self.sh.count(EEXIST_UNEXPLAINED, 1);
                return !self.failed(format!("{path} (memcg id {}): {why}", self.id));
            }
        };
        self.sh.count(cause.name(), 1);
        if cause == Eexist::PassRunning {
            self.backoff = true;
            match self.joined {
                Some((seq, since)) if seq == now => {
                    if since.elapsed() > JOINED_PASS_LIMIT {
                        self.joined = None;
                        return !self.failed(format!(
                            "{path} (memcg id {}): every forced pass from max_seq {now} failed \
                             with EEXIST for {:?}: the pass another ager walks never \
                             creates generation {}",
                            self.id,
                            JOINED_PASS_LIMIT,
                            now + 1
                        ));
                    }
                }
                _ => self.joined = Some((now, Instant::now())),
            }
        } else {
            self.joined = None;
        }
        true
    }

    /// 7.x: `EINVAL` from a write of `written`. run_aging() fails so only
    /// for a `seq` above `max_seq`, and this loop never names one: after a
    /// pass of its own `max_seq` is above what it wrote, after an `EEXIST`
    /// it writes the `max_seq` it read. So no race explains it (nor a
    /// memcg that is gone: the memcgs outlive the loop).
    fn einval_v7(&mut self, written: u64) -> bool {
        let path = self.path;
        let now = self
            .read_back()
            .map_or_else(|e| format!("cannot be read back: {e:#}"), |m| m.to_string());
        self.sh.count(EINVAL_UNEXPLAINED, 1);
        !self.failed(format!(
            "{path} (memcg id {}): EINVAL aging from {written} (max_seq now {now}): 7.x fails \
             only for a seq above max_seq, which this loop never writes",
            self.id
        ))
    }
}

/// The count of `EEXIST`s from forced passes (7.x) that no benign race
/// explains (each also a violation).
pub const EEXIST_UNEXPLAINED: &str = "aging EEXIST: unexplained";

/// The benign causes of an `EEXIST` from a forced pass on 7.x.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eexist {
    /// `max_seq` is still what was written: the write joined the walk of
    /// another ager (reclaim, kswapd), which creates the generation when it
    /// finishes the mm list (try_to_inc_max_seq() returns false to every
    /// walker but the last), or found that walk just finished.
    PassRunning,
    /// `max_seq` is past what was written by the read back: that other
    /// pass finished, or `max_seq` had moved before the write (a pass from
    /// the newer `max_seq` then raced the same way).
    PassFinished,
}

impl Eexist {
    /// Its count in the report.
    pub fn name(self) -> &'static str {
        match self {
            Eexist::PassRunning => "aging EEXIST: another ager's pass still running",
            Eexist::PassFinished => "aging EEXIST: another ager's pass finished before the re-read",
        }
    }
}

/// Why `+ memcg_id nid written 1 1` failed with `EEXIST` on 7.x, given
/// `max_seq` read back right after (`now`); `Err` when no benign race
/// explains it.
///
/// run_aging() (7.x mm/vmscan.c) runs try_to_inc_max_seq() from the
/// current `max_seq`, which is at least `written` (else `EINVAL`), and
/// answers `EEXIST` when that returns false: the generation is another
/// walker's to create. `max_seq` never goes back, so it is at least
/// `written` when read back. Whether the other walker does create it is
/// checked over time by the loop (`max_seq` must move within
/// [`JOINED_PASS_LIMIT`]).
fn classify_eexist(written: u64, now: u64) -> Result<Eexist, String> {
    if now == written {
        Ok(Eexist::PassRunning)
    } else if now > written {
        Ok(Eexist::PassFinished)
    } else {
        Err(format!(
            "EEXIST aging from {written}, max_seq read back {now}: below what was written, \
             which the kernel accepted as at most max_seq"
        ))
    }
}

/// The count of `EINVAL`s from forced passes that no benign race explains
/// (each also a violation).
pub const EINVAL_UNEXPLAINED: &str = "aging EINVAL: unexplained";

/// The benign causes of an `EINVAL` from a forced pass on 6.12 (on 7.x
/// there is none: [`Ager::einval_v7`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Einval {
    /// `max_seq` is still one below what was written: the previous write,
    /// of `max_seq` itself, joined a pass another ager (reclaim, kswapd)
    /// was walking, so run_aging() returned 0 without creating the
    /// generation (try_to_inc_max_seq() leaves that to the walker that
    /// finishes the mm list), and that pass has not finished.
    PassRunning,
    /// `max_seq` reached what was written between the write and the read
    /// back: the same race, and the other ager's pass just finished. The
    /// next write names the `max_seq` just read, so if the `EINVAL` had
    /// another cause it comes again there, unexplained.
    PassFinished,
}

impl Einval {
    /// Its count in the report.
    pub fn name(self) -> &'static str {
        match self {
            Einval::PassRunning => "aging EINVAL: another ager's pass still running",
            Einval::PassFinished => "aging EINVAL: another ager's pass finished before the re-read",
        }
    }
}

/// Why `+ memcg_id nid written 1 1` failed with `EINVAL`, given whether
/// `written` was `max_seq` just read (`fresh`) and `max_seq` read back
/// right after (`now`); `Err` when no benign race explains it.
///
/// 6.12's run_aging() (mm/vmscan.c) fails with `EINVAL` only for `seq > max_seq`
/// (an older `seq` is a no-op that returns 0); run_cmd() also for a node
/// without memory, a memcg id that is gone and an out-of-range
/// swappiness. `max_seq` never goes back, and every accepted write named at
/// most `max_seq`, so the prediction runs at most one ahead: a benign
/// `EINVAL` finds `max_seq` at `written - 1` then, and at least that when
/// read back. A fresh `max_seq` can only be stale by being lower, which
/// is accepted, so its `EINVAL` is never this race.
fn classify_einval(written: u64, fresh: bool, now: u64) -> Result<Einval, String> {
    if fresh {
        return Err(format!(
            "EINVAL aging from max_seq {written} just read (now {now}): not a stale max_seq"
        ));
    }
    if now + 1 == written {
        Ok(Einval::PassRunning)
    } else if now >= written {
        Ok(Einval::PassFinished)
    } else {
        Err(format!(
            "EINVAL aging from {written}, max_seq read back {now}: below {}, which the \
             last accepted write implied",
            written - 1
        ))
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
    fn einval_is_benign_only_one_past_a_predicted_max_seq() {
        // The previous write joined another ager's pass for 9.
        assert_eq!(classify_einval(10, false, 9), Ok(Einval::PassRunning));
        // That pass finished (or more) before the read back.
        assert_eq!(classify_einval(10, false, 10), Ok(Einval::PassFinished));
        assert_eq!(classify_einval(10, false, 12), Ok(Einval::PassFinished));
        // max_seq behind what an accepted write implied: went back, or
        // another lruvec.
        assert!(classify_einval(10, false, 8).is_err());
        assert!(classify_einval(10, false, 0).is_err());
        // A max_seq just read is never ahead of the kernel's.
        assert!(classify_einval(10, true, 10).is_err());
        assert!(classify_einval(10, true, 9).is_err());
        assert!(classify_einval(10, true, 11).is_err());
        assert!(classify_einval(0, true, 0).is_err());
    }

    #[test]
    fn eexist_is_benign_only_at_or_past_what_was_written() {
        // The write joined another ager's walk of max_seq 10.
        assert_eq!(classify_eexist(10, 10), Ok(Eexist::PassRunning));
        // That pass (or one from a newer max_seq) finished before the read.
        assert_eq!(classify_eexist(10, 11), Ok(Eexist::PassFinished));
        assert_eq!(classify_eexist(10, 13), Ok(Eexist::PassFinished));
        // max_seq below what the kernel accepted: it went back, or the
        // write reached another lruvec.
        assert!(classify_eexist(10, 9).is_err());
        assert!(classify_eexist(1, 0).is_err());
    }

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
