// SPDX-License-Identifier: GPL-2.0
//! lru_gen_stress: aging under chaos, with invariants checked while it runs.
//!
//! For `--duration`, concurrently:
//! - forced aging passes in a loop over the test's memcgs;
//! - `0x8` of `/sys/kernel/mm/lru_gen/enabled` toggled at random;
//! - a KVM guest (its own process, in a memcg whose `memory.high` makes it
//!   swap to `/dev/ram0`) writing a pattern, verifying it after swap-in,
//!   while the host `MADV_DONTNEED`s another part of its memory and the VMM
//!   deletes, re-adds and moves the memslot;
//! - VM create/destroy cycles and processes that exit, or are killed, with
//!   live VMs;
//! - `lru_mirror` users mirroring, accessing, discarding and exiting (with
//!   or without unmirroring, or killed), the module unloaded and reloaded
//!   between batches of users, and its failure knobs switched at random;
//! - proactive reclaim (`memory.reclaim`) on top of the `memory.high` limits.
//!
//! At quiet checkpoints (the chaos threads of this process pause, the
//! mirror thread only between batches of users, so no mirror user runs
//! during one; the guest and churn children keep running in their own
//! memcgs) it checks, page by page,
//! that what was touched only through a secondary MMU since the last pass
//! is promoted by the next one: after the pass it evicts every older
//! generation and reads `/proc/self/pagemap`, so a page the pass missed is
//! swapped out. The checkpoints cycle through 0x8 on, 0x8 off, the mirror's
//! fast-only op failing every page (fallback to `clear_young()`), and
//! failing part of each batch, and check the walk's and the mirror's
//! counters against what was touched. At the end: no kernel report
//! (KASAN, lockdep, RCU, WARN, BUG, kmemleak), the module unloads (no
//! subscription or reference left), no VM left in KVM's debugfs.
//!
//! The child processes are this binary again (`--role`); they report
//! `COUNT name n` and `VIOLATION kind: text` lines on stdout and stop when
//! their stdin closes. The guest and the mirror users first print `READY`
//! once a secondary MMU maps their memory (for the count of passes that
//! aged memory some secondary MMU mapped).
//!
//! The modules: [`opts`] the command line; [`roles`] the child processes
//! and [`children`] the orchestrator's side of their protocol; [`loops`]
//! the orchestrator's chaos threads; [`checkpoint`] the quiet checkpoints;
//! [`setup`] skips, swap and the kernel's report facilities; [`report`]
//! the KTAP cases and verdicts; [`shared`] what the threads share.

mod checkpoint;
mod children;
mod loops;
mod opts;
mod report;
mod roles;
mod setup;
mod shared;

use anyhow::Result;
use checkpoint::Ckpt;
use children::{collect, spawn_child, wait_ready, Kid, READY_WAIT};
use clap::Parser;
use mglru_selftest::aging;
use mglru_selftest::features::{self, Flavor};
use mglru_selftest::kvm;
use mglru_selftest::memcg::Memcg;
use opts::Opts;
use report::{Outcome, Report};
use roles::USER_MEM;
use setup::Watch;
use shared::{Abi, Live, Rng, Shared};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const CG_GUEST: &str = "stress-guest";
const CG_MIRROR: &str = "stress-mirror";
const CG_CHURN: &str = "stress-churn";
const CG_CKPT: &str = "stress-ckpt";

fn main() {
    let o = Opts::parse();
    if let Err(e) = opts::vcpu_cpus(&o).and_then(|c| kvm::set_vcpu_cpus(&c)) {
        eprintln!("error: --vcpu-cpus: {e:#}");
        std::process::exit(2);
    }
    if let Some(role) = &o.role {
        if let Err(e) = roles::run_role(role, &o) {
            println!("VIOLATION child: {role}: {e:#}");
            std::process::exit(1);
        }
        std::process::exit(0);
    }
    let seed = o.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    // Skips exit here, before the plan.
    let pre = setup::preflight();
    let mut r = Report::new();
    // The checkpoint VM's programs, run by this process: a few MiB each.
    kvm::set_run_limit(Duration::from_secs(110));
    let cpus = kvm::vcpu_cpus();
    let on = if cpus.is_empty() {
        "any CPU".to_string()
    } else {
        format!("CPU {cpus:?}")
    };
    r.t.diag(&format!(
        "lru_gen_stress: {:?} of chaos, checkpoints every {:?}, guest code on {on}, seed {seed} \
         (rerun with --seed {seed})",
        o.duration, o.checkpoint_every
    ));
    if let Err(e) = pre.and_then(|flavor| run(&o, seed, flavor, &mut r)) {
        r.t.diag(&format!("the run failed: {e:#}"));
        r.fail_rest(&format!("not checked, the run failed: {e:#}"));
    }
    r.t.finish();
}

/// The run's memcgs: the chaos children's and the checkpoints' (the
/// sandbox this process runs in). They outlive every thread of the run.
struct Memcgs {
    guest: Memcg,
    mirror: Memcg,
    churn: Memcg,
    ckpt: Memcg,
}

impl Memcgs {
    /// `memory.high`, not `memory.max`: reclaim (to swap) without the OOM
    /// killer, whose report would be a kernel log entry of its own.
    fn create(o: &Opts, ckpt: Memcg) -> Result<Self> {
        let guest = Memcg::create(CG_GUEST)?;
        guest.write("memory.high", &(o.guest_mem * 3 / 4).to_string())?;
        let mirror = Memcg::create(CG_MIRROR)?;
        mirror.write("memory.high", &(USER_MEM * 2).to_string())?;
        let churn = Memcg::create(CG_CHURN)?;
        Ok(Memcgs {
            guest,
            mirror,
            churn,
            ckpt,
        })
    }
}

fn run(o: &Opts, seed: u64, flavor: Option<Flavor>, r: &mut Report) -> Result<()> {
    let kernel = setup::check_kernel(flavor)?;
    let (guard, ckpt_cg) = aging::enter_sandbox(CG_CKPT)?;
    setup::swap_on()?;
    let watch = Watch::start(kernel)?;
    let cgs = Memcgs::create(o, ckpt_cg)?;
    let sh = Shared {
        abi: Abi::of_release(&features::kernel_release()?)?,
        ..Default::default()
    };
    r.t.diag(&format!(
        "lru_gen debugfs semantics: {:?} (a forced pass joining another ager's {})",
        sh.abi,
        match sh.abi {
            Abi::V6 => "returns 0",
            Abi::V7 => "fails with EEXIST",
        }
    ));
    let mut rng = Rng::new(seed);
    let mut ck = Ckpt::new(&sh)?;
    watch.check_vm_visible()?;
    let start = Instant::now();
    let mut guest = Kid::new(spawn_child("guest", &cgs.guest, rng.next(), o)?);
    let churn = Kid::new(spawn_child("churn", &cgs.churn, rng.next(), o)?);
    if wait_ready(&sh, "guest", &mut guest, READY_WAIT) {
        sh.guest_live.set(true);
    }
    // Let the children create their VMs before the memcgs are aged.
    std::thread::sleep(Duration::from_millis(500));
    chaos(&sh, o, &cgs, &mut ck, &guest.eof, start, &mut rng)?;
    collect(&sh, "guest", guest, Duration::from_secs(120), false);
    collect(&sh, "churn", churn, Duration::from_secs(120), false);
    let elapsed = start.elapsed();

    drop(ck);
    teardown(&sh, &watch);
    let leaks = watch.scan_kmemleak(&sh);
    drop(cgs);
    drop(guard);
    setup::swap_off();
    let kernel_reports = watch.reports(leaks);
    report::finish(
        r,
        Outcome {
            tally: sh.tally.into_inner().unwrap(),
            elapsed,
            min_passes: o.min_passes,
            lockdep: watch.lockdep,
            kmemleak: watch.kmemleak(),
            kernel_reports,
        },
    );
    Ok(())
}

/// The chaos threads of this process (aging per memcg, 0x8 toggle,
/// reclaim, mirror batches) with the checkpoints in this thread until
/// `--duration` after `start`, then stops them.
fn chaos(
    sh: &Shared,
    o: &Opts,
    cgs: &Memcgs,
    ck: &mut Ckpt,
    guest_eof: &AtomicBool,
    start: Instant,
    rng: &mut Rng,
) -> Result<()> {
    let aged: Vec<(String, u32, Option<&Live>)> = [
        (&cgs.guest, Some(&sh.guest_live)),
        (&cgs.mirror, Some(&sh.mirror_live)),
        (&cgs.churn, None),
        (&cgs.ckpt, Some(&sh.ckpt_live)),
    ]
    .iter()
    .map(|(c, l)| Ok((c.path(), c.lru_gen_id()?, *l)))
    .collect::<Result<_>>()?;
    std::thread::scope(|s| {
        // The guest's memcg stops counting as mapped once the guest is gone.
        s.spawn(move || {
            while !sh.stopping() {
                if guest_eof.load(Ordering::SeqCst) {
                    sh.guest_live.set(false);
                    break;
                }
                sh.sleep(Duration::from_millis(100));
            }
        });
        for (path, id, live) in &aged {
            s.spawn(move || loops::aging_loop(sh, path, *id, *live));
        }
        let mut r1 = Rng::new(rng.next());
        s.spawn(move || loops::toggle_loop(sh, &mut r1));
        let mut r2 = Rng::new(rng.next());
        let (gc, cc) = (&cgs.guest, &cgs.churn);
        s.spawn(move || loops::reclaim_loop(sh, &[gc, cc], &mut r2));
        let mut r3 = Rng::new(rng.next());
        let mc = &cgs.mirror;
        s.spawn(move || loops::mirror_loop(sh, mc, o, &mut r3));
        checkpoint::run_checkpoints(sh, ck, &cgs.ckpt, o, start, rng);
        sh.stop.store(true, Ordering::Relaxed);
    });
    Ok(())
}

/// With every child and the checkpoint VM gone: the module unloads (no
/// file, subscription or reference left) and no VM of the run is left in
/// KVM's debugfs.
fn teardown(sh: &Shared, watch: &Watch) {
    {
        let _m = sh.module.lock().unwrap();
        if mglru_selftest::module::is_loaded(mglru_selftest::lru_mirror::MODULE) {
            match loops::unload_mirror() {
                Ok(()) => sh.count("lru_mirror unloads", 1),
                Err(e) => sh.violation("teardown", format!("{e:#}")),
            }
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    watch.check_no_vm_left(sh);
}
