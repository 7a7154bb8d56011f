// SPDX-License-Identifier: GPL-2.0
//! The child processes: this binary again, run with `--role`.
//!
//! Each reports `COUNT name n` and `VIOLATION kind: text` lines on stdout
//! and stops when its stdin closes (the orchestrator's side is
//! [`crate::children`]). The guest and the mirror users first print
//! [`READY`] once a secondary MMU maps their memory.

mod churn;
mod guest;
mod mirror_user;

use crate::opts::Opts;
use crate::shared::Rng;
use anyhow::{bail, Result};
use mglru_selftest::kvm;
use std::collections::BTreeMap;
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The first stdout line of a child whose secondary MMU maps its memory.
pub const READY: &str = "READY";
/// Memory of each mirror user.
pub const USER_MEM: usize = 4 << 20;

/// A child's side of the protocol: counts and violations on stdout, stop
/// when stdin closes.
struct ChildCtx {
    counts: BTreeMap<&'static str, u64>,
    stop: Arc<AtomicBool>,
    rng: Rng,
}

impl ChildCtx {
    fn new(seed: u64) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            let mut stdin = std::io::stdin();
            while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
            s.store(true, Ordering::Relaxed);
        });
        Self {
            counts: BTreeMap::new(),
            stop,
            rng: Rng::new(seed ^ u64::from(std::process::id()) << 32),
        }
    }
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
    fn count(&mut self, what: &'static str, n: u64) {
        *self.counts.entry(what).or_default() += n;
    }
    /// Tells the parent (first stdout line) that a secondary MMU maps this
    /// child's memory now.
    fn ready(&self) {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{READY}");
        let _ = out.flush();
    }
    /// Prints the counts so far (cumulative: the parent keeps the last
    /// value of each, so a child killed later still reported them).
    fn report(&self) {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        for (k, v) in &self.counts {
            let _ = writeln!(out, "COUNT {k} {v}");
        }
        let _ = out.flush();
    }
}

/// Runs this process as a child of `role`.
pub fn run_role(role: &str, o: &Opts) -> Result<()> {
    let seed = o.seed.unwrap_or(1);
    // A guest program that livelocks is reported with the guest's
    // registers while the chaos runs, instead of surfacing only as a child
    // that will not stop at the end.  Generous limits: a churn VM's
    // program covers 4 MiB (well under a second normally), the guest's run
    // covers up to half its memory with swap-in, about 7 s per call for 32
    // MiB on the debug kernel (2026-12-01), so 110 s per 32 MiB.
    let limit = if role == "guest" {
        Duration::from_secs(110) * o.guest_mem.div_ceil(32 << 20) as u32
    } else {
        Duration::from_secs(60)
    };
    kvm::set_run_limit(limit);
    match role {
        "guest" => guest::role_guest(seed, o.guest_mem),
        "churn" => churn::role_churn(seed),
        "vm-exit" => churn::role_vm_exit(false),
        "vm-kill" => churn::role_vm_exit(true),
        "mirror-user" => mirror_user::role_mirror_user(seed),
        _ => bail!("unknown role {role}"),
    }
}
