// SPDX-License-Identifier: GPL-2.0
//! What the orchestrator's threads share: the stop flag, the checkpoint
//! gate, the tally of counts and violations, and whether a secondary MMU
//! maps each memcg; plus the seeded random choices every process makes.

use anyhow::Result;
use mglru_selftest::features;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

/// How often [`retry_eagain`] retries.
const EAGAIN_TRIES: u32 = 20;

/// xorshift64*: reproducible from the printed seed, no dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    pub fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(self.range(lo, hi))
    }
}

/// What the run counted and the invariant violations it found.
#[derive(Default)]
pub struct Tally {
    pub counts: BTreeMap<String, u64>,
    pub violations: Vec<(String, String)>,
}

impl Tally {
    /// Count `what`, 0 if it never happened.
    pub fn get(&self, what: &str) -> u64 {
        self.counts.get(what).copied().unwrap_or(0)
    }
}

/// Whether a secondary MMU maps a memcg's pages now: bit 0 the state, the
/// rest counts the changes, so two equal odd snapshots mean "mapped all
/// the time in between" (one load per snapshot, no lock).
#[derive(Default)]
pub struct Live(AtomicU64);

impl Live {
    pub fn set(&self, on: bool) {
        let _ = self
            .0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |s| {
                ((s & 1 == 1) != on).then_some(s + 1)
            });
    }
    pub fn snap(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// What `lru_gen` debugfs does with a forced pass and an eviction, which
/// mm/vmscan.c changed between the bases (the series changes neither).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Abi {
    /// 6.12: run_aging() returns 0 for a stale `max_seq` (a no-op) and for
    /// a pass that joined another ager's walk (which creates the
    /// generation), `EINVAL` for one above `max_seq`.
    #[default]
    V6,
    /// 7.x: run_aging() runs a pass from the current `max_seq` for any
    /// `seq` up to it and answers `EEXIST` when try_to_inc_max_seq() leaves
    /// the generation to another ager (it joined that ager's walk, or the
    /// walk had just finished); `EINVAL` only above `max_seq`. Eviction
    /// protects `PG_workingset` folios while their tier refaults more than
    /// tier 0 (the PID controller's tiers, see the checkpoints).
    V7,
}

impl Abi {
    /// The semantics of kernel release `rel`: 7.x's from major version 7.
    pub fn of_release(rel: &str) -> Result<Abi> {
        Ok(if features::release_major(rel)? >= 7 {
            Abi::V7
        } else {
            Abi::V6
        })
    }
}

/// State shared by the orchestrator's threads.
#[derive(Default)]
pub struct Shared {
    /// The running kernel's `lru_gen` debugfs semantics.
    pub abi: Abi,
    pub stop: AtomicBool,
    /// Chaos threads hold it for reading around each operation (the mirror
    /// thread around a whole batch of users); a checkpoint holds it for
    /// writing.
    pub gate: RwLock<()>,
    /// Serializes loading/unloading `lru_mirror` and the knob.
    pub module: Mutex<()>,
    pub tally: Mutex<Tally>,
    /// Secondary MMUs mapping the guest's memcg (from the guest's `READY`
    /// on), the mirror users' (while a batch of users is mirrored) and the
    /// checkpoints' (the checkpoint VM, between checkpoints).
    pub guest_live: Live,
    pub mirror_live: Live,
    pub ckpt_live: Live,
}

impl Shared {
    pub fn count(&self, what: &str, n: u64) {
        *self
            .tally
            .lock()
            .unwrap()
            .counts
            .entry(what.to_owned())
            .or_default() += n;
    }
    pub fn violation(&self, kind: &str, msg: String) {
        let mut t = self.tally.lock().unwrap();
        if t.violations.len() < 1000 {
            println!("# VIOLATION {kind}: {msg}");
        }
        t.violations.push((kind.to_owned(), msg));
    }
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
    /// Sleeps `d`, or less if the run is stopping.
    pub fn sleep(&self, d: Duration) {
        let end = Instant::now() + d;
        while !self.stopping() && Instant::now() < end {
            std::thread::sleep((end - Instant::now()).min(Duration::from_millis(50)));
        }
    }
}

/// Retries `f` while it fails with `EAGAIN` (an invalidation raced with
/// `MIRROR`'s fault-in), at most [`EAGAIN_TRIES`] times: the mirror users
/// and the checkpoint alike.
pub fn retry_eagain<T>(mut f: impl FnMut() -> std::io::Result<T>) -> std::io::Result<T> {
    let mut tries = 0;
    loop {
        match f() {
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) && tries < EAGAIN_TRIES => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            r => return r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_reproducible_and_in_range() {
        let (mut a, mut b) = (Rng::new(42), Rng::new(42));
        for _ in 0..1000 {
            let x = a.range(3, 7);
            assert_eq!(x, b.range(3, 7));
            assert!((3..=7).contains(&x));
        }
    }

    #[test]
    fn abi_follows_the_major_version() {
        assert_eq!(
            Abi::of_release("6.12.117-mglru-secondary").unwrap(),
            Abi::V6
        );
        assert_eq!(
            Abi::of_release("6.12.117-mglru-secondary-debug").unwrap(),
            Abi::V6
        );
        assert_eq!(Abi::of_release("7.3.4-mglru-secondary").unwrap(), Abi::V7);
        assert_eq!(Abi::of_release("8.0.1").unwrap(), Abi::V7);
        assert!(Abi::of_release("mglru").is_err());
    }

    #[test]
    fn live_snapshots_see_every_change() {
        let l = Live::default();
        let off = l.snap();
        assert_eq!(off & 1, 0);
        l.set(true);
        let on = l.snap();
        assert_eq!(on & 1, 1);
        l.set(true);
        assert_eq!(l.snap(), on, "setting the same state is no change");
        // Off and on again in between: not "mapped all the time".
        l.set(false);
        l.set(true);
        assert_ne!(l.snap(), on);
        assert_eq!(l.snap() & 1, 1);
    }

    #[test]
    fn retry_eagain_retries_only_eagain_and_gives_up() {
        let mut calls = 0;
        let r = retry_eagain(|| {
            calls += 1;
            if calls < 3 {
                Err(std::io::Error::from_raw_os_error(libc::EAGAIN))
            } else {
                Ok(calls)
            }
        });
        assert_eq!(r.unwrap(), 3);
        let mut calls = 0;
        let r: std::io::Result<()> = retry_eagain(|| {
            calls += 1;
            Err(std::io::Error::from_raw_os_error(libc::EINVAL))
        });
        assert!(r.is_err());
        assert_eq!(calls, 1, "EINVAL is not retried");
    }
}
