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

use anyhow::{bail, Context, Result};
use clap::Parser;
use mglru_selftest::aging::{self, NID};
use mglru_selftest::features::{self, caps, Flavor};
use mglru_selftest::ktap::Ktap;
use mglru_selftest::kvm::{self, Access, Backing, HostMem, TouchVm, PAGE_SIZE};
use mglru_selftest::lru_mirror::{self, Mirror};
use mglru_selftest::memcg::Memcg;
use mglru_selftest::pagemap::{self, PageState};
use mglru_selftest::units::{parse_duration, parse_size};
use mglru_selftest::{lru_gen, module, sys};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

const SWAP_DEV: &str = "/dev/ram0";
const CG_GUEST: &str = "stress-guest";
const CG_MIRROR: &str = "stress-mirror";
const CG_CHURN: &str = "stress-churn";
const CG_CKPT: &str = "stress-ckpt";
/// Checkpoint VM and mirror sizes.
const CKPT_VM: usize = 8 << 20;
const CKPT_MIRROR: usize = 4 << 20;
/// Memory of each mirror user and each churn VM.
const USER_MEM: usize = 4 << 20;
const CHURN_VM: usize = 4 << 20;
/// Where the guest child moves its data memslot to and back.
const MOVED_GPA: u64 = 0x4000_0000;
/// Least number of checkpoint mirror pages left untouched (the eviction
/// and control checks need some on each side).
const MIN_UNTOUCHED: usize = 16;
/// How often the checkpoint retries `MIRROR`/`ACCESS` on `EAGAIN`.
const EAGAIN_TRIES: u32 = 20;
/// KVM's debugfs directory: one `<pid>-<fd>` directory per VM.
const KVM_DEBUGFS: &str = "/sys/kernel/debug/kvm";
/// What x86's generic KASAN prints at boot (arch/x86/mm/kasan_init_64.c).
const KASAN_BANNER: &str = "KernelAddressSanitizer initialized";
const LOCKDEP_STATS: &str = "/proc/lockdep_stats";
/// The first stdout line of a child whose secondary MMU maps its memory.
const READY: &str = "READY";
/// How long a child may take to get ready.
const READY_WAIT: Duration = Duration::from_secs(120);

/// The KTAP cases, in order, and the kinds of violation each one fails on
/// (a kind no case lists fails `chaos_ran_every_operation`).
const CASES: [(&str, &[&str]); 7] = [
    (
        "chaos_ran_every_operation",
        &["aging", "toggle", "reclaim", "module", "mirror", "child"],
    ),
    (
        "secondary_only_pages_promoted_at_checkpoints",
        &["checkpoint"],
    ),
    ("fallback_loses_no_accessed_state", &["fallback"]),
    ("guest_data_intact_across_swap", &["integrity"]),
    ("counters_consistent", &["counters"]),
    ("no_kernel_reports", &[]),
    ("teardown_complete", &["teardown"]),
];

#[derive(Parser, Debug)]
#[command(about = "MGLRU aging under chaos (KVM, lru_mirror, swap, 0x8 toggling) with invariants")]
struct Opts {
    /// How long the chaos runs (e.g. 90s, 20m).
    #[arg(short = 'd', long, default_value = "90s", value_parser = parse_duration)]
    duration: Duration,
    /// Time between quiet checkpoints.
    #[arg(short = 'c', long = "checkpoint-every", default_value = "15s",
          value_parser = parse_duration)]
    checkpoint_every: Duration,
    /// Guest memory of the swapping KVM guest (its memcg gets 3/4 of it).
    #[arg(short = 'g', long = "guest-mem", default_value = "32M", value_parser = parse_guest_mem)]
    guest_mem: usize,
    /// Seed of the random choices (default: from the clock; printed).
    #[arg(short = 's', long)]
    seed: Option<u64>,
    /// Fail unless at least this many aging passes ran.
    #[arg(long = "min-passes", default_value_t = 0)]
    min_passes: u64,
    /// CPUs that run guest code (every vCPU of every VM, children's
    /// included): comma-separated CPU numbers (e.g. 1 or 0,1; no ranges),
    /// or `any` for wherever the scheduler puts them.  Default: the last
    /// CPU this process may use, when it may use two or more — QEMU 7.2's
    /// multi-threaded TCG corrupts nested guests' state when they run on
    /// both of its vCPUs (Documentation/testing.md, "Nested guests under
    /// QEMU TCG"); aging, reclaim and invalidations still run on every CPU.
    #[arg(long = "vcpu-cpus", value_parser = parse_cpu_choice)]
    vcpu_cpus: Option<CpuChoice>,
    /// Internal: run as a child process of this role.
    #[arg(long, hide = true, value_parser = ["guest", "churn", "vm-exit", "vm-kill", "mirror-user"])]
    role: Option<String>,
}

/// Where guest code runs (`--vcpu-cpus`).
#[derive(Debug, Clone, PartialEq, Eq)]
enum CpuChoice {
    /// Wherever the scheduler puts it.
    Any,
    /// Only on these CPUs.
    List(Vec<usize>),
}

/// `--vcpu-cpus`: `any`, or a comma-separated list of CPUs this process may
/// run on.
fn parse_cpu_choice(s: &str) -> Result<CpuChoice, String> {
    if s == "any" {
        return Ok(CpuChoice::Any);
    }
    let cpus = s
        .split(',')
        .map(|w| {
            w.parse::<usize>()
                .map_err(|_| format!("'{w}' is not a CPU number (want e.g. 1, 0,1 or any)"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    for &c in &cpus {
        kvm::check_cpu(c).map_err(|e| format!("{e:#}"))?;
    }
    Ok(CpuChoice::List(cpus))
}

/// The CPUs guest code runs on: `--vcpu-cpus`, or by default the last CPU
/// this process may use when it may use two or more (none: any).
fn vcpu_cpus(o: &Opts) -> Result<Vec<usize>> {
    Ok(match &o.vcpu_cpus {
        Some(CpuChoice::Any) => Vec::new(),
        Some(CpuChoice::List(l)) => l.clone(),
        None => default_vcpu_cpus(&kvm::allowed_cpus()?),
    })
}

/// The default of `--vcpu-cpus` given the CPUs this process may use: the
/// last one when there are two or more, else no pinning.
fn default_vcpu_cpus(allowed: &[usize]) -> Vec<usize> {
    match allowed {
        [_, .., last] => vec![*last],
        _ => Vec::new(),
    }
}

/// `--guest-mem`: a size from 1 MiB to 1 GiB.
fn parse_guest_mem(s: &str) -> Result<usize, String> {
    let b = parse_size(s)?;
    if !(1 << 20..=1 << 30).contains(&b) {
        return Err(format!("{s:?} is not between 1M and 1G"));
    }
    Ok(b)
}

/// xorshift64*: reproducible from the printed seed, no dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(self.range(lo, hi))
    }
}

/// What the run counted and the invariant violations it found.
#[derive(Default)]
struct Tally {
    counts: BTreeMap<String, u64>,
    violations: Vec<(String, String)>,
}

/// Whether a secondary MMU maps a memcg's pages now: bit 0 the state, the
/// rest counts the changes, so two equal odd snapshots mean "mapped all
/// the time in between" (one load per snapshot, no lock).
#[derive(Default)]
struct Live(AtomicU64);

impl Live {
    fn set(&self, on: bool) {
        let _ = self
            .0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |s| {
                ((s & 1 == 1) != on).then_some(s + 1)
            });
    }
    fn snap(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// State shared by the orchestrator's threads.
struct Shared {
    stop: AtomicBool,
    /// Chaos threads hold it for reading around each operation (the mirror
    /// thread around a whole batch of users); a checkpoint holds it for
    /// writing.
    gate: RwLock<()>,
    /// Serializes loading/unloading `lru_mirror` and the knob.
    module: Mutex<()>,
    tally: Mutex<Tally>,
    /// Secondary MMUs mapping the guest's memcg (from the guest's `READY`
    /// on), the mirror users' (while a batch of users is mirrored) and the
    /// checkpoints' (the checkpoint VM, between checkpoints).
    guest_live: Live,
    mirror_live: Live,
    ckpt_live: Live,
}

impl Shared {
    fn count(&self, what: &str, n: u64) {
        *self
            .tally
            .lock()
            .unwrap()
            .counts
            .entry(what.to_owned())
            .or_default() += n;
    }
    fn violation(&self, kind: &str, msg: String) {
        let mut t = self.tally.lock().unwrap();
        if t.violations.len() < 1000 {
            println!("# VIOLATION {kind}: {msg}");
        }
        t.violations.push((kind.to_owned(), msg));
    }
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
    /// Sleeps `d`, or less if the run is stopping.
    fn sleep(&self, d: Duration) {
        let end = Instant::now() + d;
        while !self.stopping() && Instant::now() < end {
            std::thread::sleep((end - Instant::now()).min(Duration::from_millis(50)));
        }
    }
}

// ---------------------------------------------------------------------------
// Child processes.

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

/// The swapping guest: pattern region (first half of its memory: written,
/// swapped out under `memory.high`, verified by the guest after swap-in) and
/// discard region (second half: written by the guest, dropped by the host).
fn role_guest(seed: u64, mem: usize) -> Result<()> {
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
            let base = vm.mem.as_ptr() as usize;
            let mut r = Rng::new(cx.rng.next());
            let done = AtomicBool::new(false);
            let discards = std::thread::scope(|s| -> Result<u64> {
                let h = s.spawn(|| {
                    let mut n = 0u64;
                    while !done.load(Ordering::Relaxed) {
                        let len = r.range(1, disc as u64 / 4) as usize;
                        let first = pat + r.range(0, (disc - len) as u64) as usize;
                        // SAFETY: the range lies inside the VM's data
                        // mapping, which outlives this scope; nothing holds
                        // Rust references into it (the guest and volatile
                        // accesses only).
                        let rc = unsafe {
                            libc::madvise(
                                (base + first * PAGE_SIZE) as *mut libc::c_void,
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
                let res = vm.touch_with(2, pat, disc, Access::Write(round));
                done.store(true, Ordering::Relaxed);
                let n = h
                    .join()
                    .map_err(|_| anyhow::anyhow!("discard thread panicked"))?;
                res.map(|()| n)
            })?;
            cx.count("guest host MADV_DONTNEED (vCPUs running)", discards);
            vm.touch_with(1, pat, disc, Access::Read)?;
        }
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

/// VM create/destroy cycles with memslot churn, and processes exiting or
/// killed with live VMs.
fn role_churn(seed: u64) -> Result<()> {
    let mut cx = ChildCtx::new(seed);
    let me = std::env::current_exe()?;
    while !cx.stopping() {
        // Every other VM on THPs: 2 MiB host mappings and huge SPTEs, split
        // by the memslot changes below.
        let thp = cx.rng.chance(50);
        let backing = if thp { Backing::Thp } else { Backing::Anon4k };
        let mut vm = TouchVm::new(CHURN_VM, 1, backing)?;
        cx.count("VMs created and destroyed", 1);
        if thp {
            cx.count("VMs on THPs", 1);
        }
        let pages = vm.mem.pages();
        let s = cx.rng.next() as u32 | 1;
        let kind = if thp { "THP" } else { "4K" };
        vm.touch_with(1, 0, pages, Access::Pattern(s))
            .with_context(|| format!("churn VM ({kind}): writing the pattern"))?;
        vm.set_data_slot(false)?;
        vm.set_data_slot(true)?;
        vm.move_data_slot(MOVED_GPA)?;
        if let Some(m) = vm
            .verify_pattern_with(1, 0, pages, s)
            .with_context(|| format!("churn VM ({kind}): verifying after the memslot moved"))?
        {
            println!(
                "VIOLATION integrity: churn VM ({kind}) page {} read {:#x}, expected {:#x} \
                 (host sees {:#x})",
                m.page,
                m.found,
                m.expected,
                vm.mem.read_page_u32(m.page)
            );
        }
        if thp {
            // Partial discard: splits the THP under the VM's feet.
            vm.mem.discard(1, 1)?;
        }
        cx.count("churn memslot cycles", 1);
        drop(vm);
        cx.report();
        if cx.rng.chance(30) {
            let kill = cx.rng.chance(50);
            let mut c = Command::new(&me)
                .args(["--role", if kill { "vm-kill" } else { "vm-exit" }])
                .args(vcpu_cpus_args())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .spawn()?;
            if kill {
                // Kill it only once its vCPU ran (it says so), while the
                // vCPU keeps running.
                let mut b = [0u8; 1];
                let ran = c
                    .stdout
                    .take()
                    .is_some_and(|mut o| o.read_exact(&mut b).is_ok());
                std::thread::sleep(cx.rng.ms(0, 50));
                let _ = c.kill();
                let st = c.wait()?;
                if ran && st.signal() == Some(libc::SIGKILL) {
                    cx.count("processes killed with a live VM", 1);
                } else {
                    println!("VIOLATION child: vm-kill child ended on its own ({st}, ran: {ran})");
                }
                continue;
            }
            let st = c.wait()?;
            if st.success() {
                cx.count("processes exited with a live VM", 1);
            } else {
                println!("VIOLATION child: vm-exit child failed: {st}");
            }
        }
    }
    cx.report();
    Ok(())
}

/// Creates a VM, touches its memory, and exits (or keeps touching until
/// killed) without closing anything.
fn role_vm_exit(until_killed: bool) -> Result<()> {
    use std::io::Write;
    let mut vm = TouchVm::new(CHURN_VM, 1, Backing::Anon4k)?;
    let pages = vm.mem.pages();
    vm.touch_with(1, 0, pages, Access::Write(0x5eed))?;
    if !until_killed {
        std::process::exit(0);
    }
    std::io::stdout().write_all(b"r")?;
    std::io::stdout().flush()?;
    loop {
        vm.touch_with(1, 0, pages, Access::Write(0x5eed))?;
    }
}

/// One `lru_mirror` user: mirror, access through the device, discard and
/// touch on the host until its stdin closes (the parent collects its
/// batch), then leave one of three ways.
fn role_mirror_user(seed: u64) -> Result<()> {
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

fn run_role(role: &str, o: &Opts) -> Result<()> {
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
        "guest" => role_guest(seed, o.guest_mem),
        "churn" => role_churn(seed),
        "vm-exit" => role_vm_exit(false),
        "vm-kill" => role_vm_exit(true),
        "mirror-user" => role_mirror_user(seed),
        _ => bail!("unknown role {role}"),
    }
}

/// `--vcpu-cpus` for a child process: the CPUs this one's guests run on.
fn vcpu_cpus_args() -> [String; 2] {
    let cpus = kvm::vcpu_cpus();
    let list = if cpus.is_empty() {
        "any".to_string()
    } else {
        let l: Vec<String> = cpus.iter().map(|c| c.to_string()).collect();
        l.join(",")
    };
    ["--vcpu-cpus".to_string(), list]
}

/// Starts this binary as a child of `role`, inside memcg `cg` (moved there
/// before exec, so that everything it allocates is charged there).
fn spawn_child(role: &str, cg: &Memcg, seed: u64, o: &Opts) -> Result<Child> {
    let procs = format!(
        "{}/{}/cgroup.procs",
        mglru_selftest::memcg::CGROUP_ROOT,
        &cg.path()[1..]
    );
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(["--role", role, "--seed", &seed.to_string()])
        .args(["--guest-mem", &o.guest_mem.to_string()])
        .args(vcpu_cpus_args())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    // Opened here (close-on-exec), written by the child between fork and
    // exec: "0" moves the writer itself.
    let procs_file = std::fs::OpenOptions::new()
        .write(true)
        .open(&procs)
        .with_context(|| format!("opening {procs}"))?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&procs_file);
    // SAFETY: the closure only calls write(2), which is async-signal-safe,
    // on a descriptor that stays open until spawn() returns (`procs_file`
    // lives past it), and allocates nothing.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(move || {
            if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("spawning the {role} child into {procs}"));
    drop(procs_file);
    child
}

/// A child process whose stdout a thread reads from spawn to EOF, so that
/// a chatty child (every cycle rewrites its counts) never blocks on a full
/// pipe; [`collect`] takes what it read.
struct Kid {
    child: Child,
    /// Returns the child's whole stdout but its `READY` line, at EOF.
    drain: Option<std::thread::JoinHandle<String>>,
    /// Gets a message when the child prints `READY`.
    ready: std::sync::mpsc::Receiver<()>,
    /// Set once the child's stdout closed (it exited or was killed).
    eof: Arc<AtomicBool>,
}

impl Kid {
    fn new(mut child: Child) -> Self {
        let (tx, ready) = std::sync::mpsc::channel();
        let eof = Arc::new(AtomicBool::new(false));
        let eof2 = Arc::clone(&eof);
        let drain = child.stdout.take().map(|mut out| {
            std::thread::spawn(move || {
                let mut text = String::new();
                let mut line = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    match out.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            for &b in &buf[..n] {
                                if b != b'\n' {
                                    line.push(b);
                                    continue;
                                }
                                let l = String::from_utf8_lossy(&line).into_owned();
                                line.clear();
                                if l == READY {
                                    let _ = tx.send(());
                                } else {
                                    text.push_str(&l);
                                    text.push('\n');
                                }
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(_) => break,
                    }
                }
                text.push_str(&String::from_utf8_lossy(&line));
                eof2.store(true, Ordering::SeqCst);
                text
            })
        });
        Self {
            child,
            drain,
            ready,
            eof,
        }
    }
}

/// Waits up to `wait_for` for the child's `READY` line; whether it came. A
/// child that does not get ready in time is killed (a violation); one that
/// exits first was not ready.
fn wait_ready(sh: &Shared, role: &str, kid: &mut Kid, wait_for: Duration) -> bool {
    match kid.ready.recv_timeout(wait_for) {
        Ok(()) => true,
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => false,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            let _ = kid.child.kill();
            sh.violation(
                "child",
                format!("{role} child not ready (no {READY}) in {wait_for:?}; killed"),
            );
            false
        }
    }
}

/// Collects a finished (or stopped) child's report into the tally; `killed`:
/// the caller sent it SIGKILL, so that is how it may end.
fn collect(sh: &Shared, role: &str, kid: Kid, wait_for: Duration, killed: bool) {
    let Kid {
        mut child, drain, ..
    } = kid;
    drop(child.stdin.take());
    let end = Instant::now() + wait_for;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    // The child is gone, so its stdout is closed (unless a grandchild
    // inherited it: the roles' own children get their own pipes or none).
    let text = drain.and_then(|d| d.join().ok()).unwrap_or_default();
    // Counts are cumulative: the last line of each wins.
    let mut counts = BTreeMap::new();
    for line in BufReader::new(text.as_bytes())
        .lines()
        .map_while(Result::ok)
    {
        if let Some(rest) = line.strip_prefix("COUNT ") {
            if let Some((name, n)) = rest.rsplit_once(' ') {
                counts.insert(name.to_owned(), n.parse().unwrap_or(0));
            }
        } else if let Some(rest) = line.strip_prefix("VIOLATION ") {
            let (kind, msg) = rest.split_once(':').unwrap_or(("child", rest));
            sh.violation(kind, format!("{role}:{msg}"));
        }
    }
    for (name, n) in counts {
        sh.count(&name, n);
    }
    match status {
        None => sh.violation(
            "child",
            format!("{role} child did not stop in {wait_for:?}; killed"),
        ),
        Some(s) if killed && s.signal() == Some(libc::SIGKILL) => {}
        Some(s) if !s.success() => sh.violation("child", format!("{role} child failed: {s}")),
        _ => {}
    }
}

// ---------------------------------------------------------------------------
// The orchestrator's chaos threads.

fn lru_id(cg: &Memcg) -> Result<u32> {
    cg.lru_gen_id()
}

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
fn aging_loop(sh: &Shared, path: &str, id: u32, live: Option<&Live>) {
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
fn walk_cqse(w: Option<&lru_gen::WalkStats>) -> Result<(u64, u64, u64, u64)> {
    let g = |l: char| {
        w.and_then(|w| w.get(l))
            .with_context(|| format!("lru_gen_full lacks walk stat {l:?}: {w:?}"))
    };
    Ok((g('c')?, g('q')?, g('s')?, g('e')?))
}

fn toggle_loop(sh: &Shared, rng: &mut Rng) {
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

fn reclaim_loop(sh: &Shared, cgs: &[&Memcg], rng: &mut Rng) {
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

fn ensure_loaded(sh: &Shared) -> Result<()> {
    if !module::is_loaded(lru_mirror::MODULE) {
        module::load(&module::project_module(lru_mirror::MODULE), "")?;
        sh.count("lru_mirror loads", 1);
    }
    Ok(())
}

/// Unloads `lru_mirror`, retrying while a reference is being dropped (an
/// exiting process's file, a deferred notifier free); fails after 10 s.
fn unload_mirror() -> Result<()> {
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

fn random_knob(rng: &mut Rng) -> u64 {
    match rng.range(0, 3) {
        0 => lru_mirror::CONFIG_FAIL_FAST,
        1 => lru_mirror::config_fail_after(rng.range(1, 300) as u16),
        2 => lru_mirror::CONFIG_SLOW_INVALIDATE,
        _ => 0,
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
/// random), the module reloaded between batches.
fn mirror_loop(sh: &Shared, cg: &Memcg, o: &Opts, rng: &mut Rng) {
    while !sh.stopping() {
        let _g = sh.gate.read().unwrap();
        let _m = sh.module.lock().unwrap();
        if let Err(e) = ensure_loaded(sh) {
            sh.violation("module", format!("loading lru_mirror: {e:#}"));
            return;
        }
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
        // No user left: no file and no subscription may hold the module
        // (a subscription's reference goes once its SRCU-deferred free ran).
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            match mirror_refcnt() {
                Ok(0) => {
                    sh.count("lru_mirror refcount back to 0 after a batch", 1);
                    break;
                }
                Ok(r) if Instant::now() >= end => {
                    sh.violation(
                        "teardown",
                        format!("lru_mirror refcnt {r} 10 s after all users exited"),
                    );
                    break;
                }
                Ok(_) => std::thread::sleep(Duration::from_millis(50)),
                Err(e) => {
                    sh.violation("mirror", format!("{e:#}"));
                    break;
                }
            }
        }
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

// ---------------------------------------------------------------------------
// Checkpoints.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// 0x8 on, the mirror answers fast.
    On,
    /// 0x8 off: 6.12's per-page `clear_young()` only.
    Off,
    /// 0x8 on, the mirror's fast-only op fails every page.
    FailAll,
    /// 0x8 on, the mirror answers the first k pages of a batch, fails the rest.
    FailAfter(u16),
}

impl Mode {
    fn of(n: u64, rng: &mut Rng) -> Mode {
        match n % 4 {
            0 => Mode::On,
            1 => Mode::Off,
            2 => Mode::FailAll,
            _ => Mode::FailAfter(rng.range(1, 256) as u16),
        }
    }
    fn name(self) -> &'static str {
        match self {
            Mode::On => "0x8 on",
            Mode::Off => "0x8 off",
            Mode::FailAll => "0x8 on, mirror fails every page",
            Mode::FailAfter(_) => "0x8 on, mirror fails after k pages",
        }
    }
}

/// The checkpoint's own memory: a VM and a mirrored range, in the
/// orchestrator's memcg, which nothing else touches.
struct Ckpt {
    vm: TouchVm,
    mem: HostMem,
}

/// `touched` (page indices) as a map of `pages` flags.
fn vt_of(touched: &[usize], pages: usize) -> Vec<bool> {
    let mut v = vec![false; pages];
    touched.iter().for_each(|&i| v[i] = true);
    v
}

/// Pages `first, first+stride, ...` below `pages`.
fn strided(first: usize, stride: usize, pages: usize) -> Vec<usize> {
    (first..pages).step_by(stride).collect()
}

/// Retries `f` while it fails with `EAGAIN` (an invalidation raced with
/// `MIRROR`'s fault-in), at most [`EAGAIN_TRIES`] times, as the mirror
/// users do.
fn retry_eagain<T>(mut f: impl FnMut() -> std::io::Result<T>) -> std::io::Result<T> {
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

/// `ACCESS` of `pages` pages from `addr` through the checkpoint's device,
/// which must reach every one of them: the touched set is what the device
/// accessed, so a page the mirror lost (an invalidation) is an error, not a
/// page the pass may miss.
fn access_all(dev: &Mirror, addr: usize, pages: usize, what: &str) -> Result<()> {
    let n = retry_eagain(|| dev.access(addr, pages * PAGE_SIZE))
        .with_context(|| format!("ACCESS {what}"))?;
    if n != pages as u64 {
        bail!("ACCESS {what}: the device accessed {n} of {pages} pages (the mirror lost some)");
    }
    Ok(())
}

/// Ranges `(first, len)` of the mirror's `pages` pages for the checkpoint
/// to access: 1-6 random ranges of up to a quarter each, drawn again in
/// the rare case that they leave fewer than [`MIN_UNTOUCHED`] pages alone.
fn mirror_ranges(pages: usize, rng: &mut Rng) -> (Vec<(usize, usize)>, Vec<bool>) {
    loop {
        let mut touched = vec![false; pages];
        let ranges: Vec<(usize, usize)> = (0..rng.range(1, 6))
            .map(|_| {
                let len = rng.range(1, pages as u64 / 4) as usize;
                let first = rng.range(0, (pages - len) as u64) as usize;
                touched[first..first + len].fill(true);
                (first, len)
            })
            .collect();
        if touched.iter().filter(|&&t| !t).count() >= MIN_UNTOUCHED {
            return (ranges, touched);
        }
    }
}

/// Faults the checkpoint VM's memory back in through its vCPU, so that KVM
/// maps the checkpoint memcg between checkpoints too (its aging loop then
/// ages memory a secondary MMU maps).
fn ckpt_map(sh: &Shared, ck: &mut Ckpt) -> Result<()> {
    let pages = ck.vm.mem.pages();
    ck.vm.touch_all(0, pages, Access::Write(0x636b))?;
    sh.ckpt_live.set(true);
    Ok(())
}

fn checkpoint(sh: &Shared, ck: &mut Ckpt, cg: &Memcg, mode: Mode, rng: &mut Rng) -> Result<()> {
    let started = Instant::now();
    sh.ckpt_live.set(false);
    let _m = sh.module.lock().unwrap();
    ensure_loaded(sh)?;
    let dev = Mirror::open()?;
    let knob = match mode {
        Mode::FailAll => lru_mirror::CONFIG_FAIL_FAST,
        Mode::FailAfter(k) => lru_mirror::config_fail_after(k),
        _ => 0,
    };
    dev.config(knob).context("CONFIG")?;
    let all = caps::CORE | caps::MM_WALK | caps::NONLEAF_YOUNG | caps::SECONDARY_MMU_WALK;
    features::set_lru_gen_caps(if mode == Mode::Off {
        all & !caps::SECONDARY_MMU_WALK
    } else {
        all
    })?;

    // Everything present and mapped by both secondary MMUs (this faults back
    // what the last checkpoint evicted), then everything old.
    let (vpages, mpages) = (ck.vm.mem.pages(), ck.mem.pages());
    let maddr = ck.mem.as_ptr() as usize;
    ck.mem.fill(0x636b_7074);
    ck.vm.touch_all(0, vpages, Access::Write(0x636b))?;
    retry_eagain(|| dev.mirror(maddr, ck.mem.len(), 0)).context("MIRROR")?;
    access_all(&dev, maddr, mpages, "all")?;
    sys::drain_lru_batches()?;
    aging::age_once(cg)?;
    aging::age_once(cg)?;

    // Touch subsets through the secondary MMUs only.
    let vstride = rng.range(2, 5) as usize;
    let vfirst = rng.range(0, vstride as u64 - 1) as usize;
    let vtouched = strided(vfirst, vstride, vpages);
    ck.vm
        .touch(0, vfirst, vtouched.len(), vstride, Access::Read)?;
    let (ranges, mtouched) = mirror_ranges(mpages, rng);
    for &(first, len) in &ranges {
        access_all(&dev, maddr + first * PAGE_SIZE, len, "subset")?;
    }
    let nm = mtouched.iter().filter(|&&t| t).count() as u64;

    // The measured pass.
    let before = dev.stats()?;
    let (seq, _) = aging::age_once(cg)?;
    let d = dev.stats()?.since(&before);
    sh.count("aging passes in checkpoints", 3);
    let node = lru_gen::node_full_of(&cg.path(), NID)?;
    let walk = node
        .gen(seq)
        .with_context(|| format!("generation {seq} of the measured pass is not listed"))?
        .walk
        .as_ref();
    let (c, q, s, e) = walk_cqse(walk).with_context(|| format!("generation {seq}"))?;
    let nv = vtouched.len() as u64;
    let mut bad = Vec::new();
    match mode {
        Mode::Off => {
            if c + q + s + e != 0 || d.fast_calls != 0 {
                bad.push(format!(
                    "0x8 off but the fast-only op ran: C={c} Q={q} S={s} E={e}, mirror {d:?}"
                ));
            }
            if d.slow_young != nm {
                bad.push(format!(
                    "clear_young() found {} young mirror pages, {nm} touched",
                    d.slow_young
                ));
            }
        }
        _ => {
            if s > q || e > q || c > q || q == 0 {
                bad.push(format!("walk stats inconsistent: C={c} Q={q} S={s} E={e}"));
            }
            let fast_mirror = if mode == Mode::FailAll {
                0
            } else {
                d.fast_young
            };
            // The guest's code page is young too, its log page is not.
            if s < nv + fast_mirror || s > nv + fast_mirror + 8 {
                bad.push(format!("S={s} young answers, but {nv} guest pages touched and the mirror answered {fast_mirror}"));
            }
            if d.fast_young + d.slow_young != nm {
                bad.push(format!(
                    "mirror: {} fast + {} fallback young answers, {nm} pages touched ({d:?})",
                    d.fast_young, d.slow_young
                ));
            }
            if mode == Mode::FailAll
                && (d.fast_young != 0
                    || d.fast_failed != d.fast_pages
                    || d.fast_pages == 0
                    || e == 0)
            {
                bad.push(format!("FAIL_FAST: the mirror answered: E={e}, {d:?}"));
            }
            if let Mode::FailAfter(k) = mode {
                // The mirror answers the first k pages it is asked of each
                // call and fails the rest: at least asked - calls * k, which
                // is > 0 unless every call asked k pages or fewer (a walk
                // that resumed mid-table), and then E must show them too.
                let least = d.fast_pages.saturating_sub(d.fast_calls * u64::from(k));
                if d.fast_failed < least || (least > 0 && e < least) {
                    bad.push(format!(
                        "FAIL_AFTER {k}: E={e}, the mirror failed {} pages, at least {least} \
                         expected: {d:?}",
                        d.fast_failed
                    ));
                }
            }
            if mode == Mode::On && d.slow_young != 0 {
                bad.push(format!(
                    "0x8 on, nothing failed, yet the fallback found young pages: {d:?}"
                ));
            }
        }
    }

    // Negative controls: a few untouched pages, touched through the
    // secondary MMUs only now, after the pass.
    let vt = vt_of(&vtouched, vpages);
    let vctl: Vec<usize> = (0..vpages)
        .filter(|&i| !vt[i])
        .step_by(97)
        .take(8)
        .collect();
    for &i in &vctl {
        ck.vm.touch(0, i, 1, 1, Access::Read)?;
    }
    let mctl: Vec<usize> = (0..mpages)
        .filter(|&i| !mtouched[i])
        .step_by(53)
        .take(8)
        .collect();
    for &i in &mctl {
        access_all(&dev, maddr + i * PAGE_SIZE, 1, "control")?;
    }
    if vctl.is_empty() || mctl.is_empty() {
        bad.push(format!(
            "{} guest and {} mirror control pages: each side needs one",
            vctl.len(),
            mctl.len()
        ));
    }
    // Detach both secondary MMUs, so that eviction cannot ask them (its
    // folio_referenced() and look-around would keep a page that is young
    // there, hiding a page the pass missed): unmirror, and delete the
    // memslot (KVM zaps its SPTEs). The controls show it worked: nothing
    // promoted them, so they must be evicted.
    dev.unmirror().context("UNMIRROR")?;
    ck.vm.set_data_slot(false)?;
    // Evict every generation older than the pass's: a touched page the pass
    // did not promote is swapped out now.
    let evict = lru_gen::evict(lru_id(cg)?, NID, seq - 1, 200, 1 << 30)
        .with_context(|| format!("evicting up to generation {}", seq - 1));
    ck.vm.set_data_slot(true)?;
    evict?;
    let vstate = pagemap::states(ck.vm.mem.as_ptr() as usize, vpages)?;
    let mstate = pagemap::states(maddr, mpages)?;
    let lost_v: Vec<usize> = (0..vpages)
        .filter(|&i| vt[i] && vstate[i] != PageState::Present)
        .collect();
    let lost_m: Vec<usize> = (0..mpages)
        .filter(|&i| mtouched[i] && mstate[i] != PageState::Present)
        .collect();
    if !lost_v.is_empty() || !lost_m.is_empty() {
        bad.push(format!(
            "touched but not promoted (evicted): {} of {nv} guest pages (first {:?}), {} of {nm} mirror pages (first {:?})",
            lost_v.len(),
            lost_v.first(),
            lost_m.len(),
            lost_m.first()
        ));
    }
    let kept_ctl = vctl
        .iter()
        .filter(|&&i| vstate[i] != PageState::Swapped)
        .count()
        + mctl
            .iter()
            .filter(|&&i| mstate[i] != PageState::Swapped)
            .count();
    if kept_ctl != 0 {
        bad.push(format!(
            "{kept_ctl} of {} control pages (touched after the pass) were not evicted: the check is blind",
            vctl.len() + mctl.len()
        ));
    }
    // Per side: every untouched page must have been evicted (nothing
    // promoted it), or the eviction did not reach what the check needs.
    let mut evicted = 0;
    let mut untouched = 0;
    for (side, st, t) in [("guest", &vstate, &vt), ("mirror", &mstate, &mtouched)] {
        let kept: Vec<usize> = (0..t.len())
            .filter(|&i| !t[i] && st[i] != PageState::Swapped)
            .collect();
        let u = t.iter().filter(|&&x| !x).count();
        if u == 0 || !kept.is_empty() {
            bad.push(format!(
                "eviction swapped out {} of {u} untouched {side} pages (first kept: {:?}): \
                 the check would be blind",
                u - kept.len(),
                kept.first()
            ));
        }
        evicted += u - kept.len();
        untouched += u;
    }
    dev.config(0).context("CONFIG 0")?;
    drop(dev);
    drop(_m);
    // KVM maps the checkpoint memcg again until the next checkpoint.
    ckpt_map(sh, ck)?;
    let k = match mode {
        Mode::FailAfter(k) => format!(", k {k}"),
        _ => String::new(),
    };
    println!(
        "# checkpoint ({}{k}, {:.1} s): {nv} guest + {nm} mirror pages touched through secondary MMUs, all promoted: {}; \
         {evicted}/{untouched} untouched evicted; C={c} Q={q} S={s} E={e}; mirror fast {}/{} young, {} failed, fallback {} young",
        mode.name(),
        started.elapsed().as_secs_f64(),
        if bad.is_empty() { "yes" } else { "NO" },
        d.fast_young,
        d.fast_pages,
        d.fast_failed,
        d.slow_young
    );
    let kind = match mode {
        Mode::On | Mode::Off => "checkpoint",
        _ => "fallback",
    };
    for b in bad {
        sh.violation(kind, format!("{}: {b}", mode.name()));
    }
    sh.count(&format!("checkpoints: {}", mode.name()), 1);
    sh.count("checkpoint pages checked", (vpages + mpages) as u64);
    Ok(())
}

// ---------------------------------------------------------------------------

fn swap_on() -> Result<()> {
    if sys::read("/proc/swaps")?.lines().count() > 1 {
        return Ok(());
    }
    for (cmd, arg) in [("mkswap", SWAP_DEV), ("swapon", SWAP_DEV)] {
        let out = Command::new(cmd)
            .arg(arg)
            .output()
            .with_context(|| format!("running {cmd}"))?;
        if !out.status.success() {
            bail!("{cmd} {arg}: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    Ok(())
}

/// KVM's debugfs directories of VMs (`<pid>-<fd>`); an error if KVM's
/// debugfs cannot be read (the "no VM left" check would be blind).
fn kvm_vm_dirs() -> Result<Vec<String>> {
    let mut dirs = Vec::new();
    for e in std::fs::read_dir(KVM_DEBUGFS).with_context(|| format!("reading {KVM_DEBUGFS}"))? {
        let n = e
            .with_context(|| format!("reading {KVM_DEBUGFS}"))?
            .file_name()
            .to_string_lossy()
            .into_owned();
        if n.contains('-') && n.starts_with(|c: char| c.is_ascii_digit()) {
            dirs.push(n);
        }
    }
    Ok(dirs)
}

const KMEMLEAK: &str = "/sys/kernel/debug/kmemleak";

/// Whether lockdep still checks (`debug_locks` in /proc/lockdep_stats: it
/// turns itself off after its first report). `Ok(None)`: this kernel has
/// no lockdep, an error where it must have it (`required`: the series'
/// flavours, whose config has `PROVE_LOCKING`).
fn lockdep_on(required: bool) -> Result<Option<bool>> {
    if !required && !features::exists(LOCKDEP_STATS) {
        return Ok(None);
    }
    let text = sys::read(LOCKDEP_STATS)
        .context("lockdep must be on (PROVE_LOCKING, configs/mglru-secondary.config)")?;
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("debug_locks:"))
        .with_context(|| format!("{LOCKDEP_STATS} has no debug_locks line"))?;
    let v: u64 = line
        .split(':')
        .nth(1)
        .unwrap_or("")
        .trim()
        .parse()
        .with_context(|| format!("{LOCKDEP_STATS}: {line:?}"))?;
    Ok(Some(v != 0))
}

/// Every skip decision, made before the KTAP plan: no `/dev/kvm` (outside
/// `vm-run`, whose kernels and QEMU always have it) and not the series'
/// kernel skip; the series' kernel lacking what the test needs is an error
/// (reported as failures under the plan).
fn preflight() -> Result<Option<Flavor>> {
    let flavor = features::flavor()?;
    if !features::exists("/dev/kvm") {
        if matches!(flavor, Some(Flavor::Default | Flavor::Debug)) {
            bail!("no /dev/kvm on vm-run's {flavor:?} kernel (CONFIG_KVM_AMD, QEMU -cpu max)");
        }
        Ktap::skip_all("no /dev/kvm");
    }
    let has = match features::has_secondary_mmu_walk() {
        Ok(h) => h,
        Err(e) if features::is_series_kernel()? => {
            return Err(e.context("probing lru_gen capability 0x8"))
        }
        Err(_) => false,
    };
    let mirror_ko = module::project_module(lru_mirror::MODULE);
    for (ok, what) in [
        (has, "lru_gen capability 0x8".to_string()),
        (
            mirror_ko.exists(),
            format!("lru_mirror module ({})", mirror_ko.display()),
        ),
    ] {
        if let Some(why) = features::series_feature(ok, &what)? {
            Ktap::skip_all(&why);
        }
    }
    Ok(flavor)
}

/// The KTAP plan of [`CASES`], reported in that order.
struct Report {
    t: Ktap,
    done: usize,
}

impl Report {
    fn check(&mut self, name: &str, r: Result<()>) {
        assert_eq!(CASES[self.done].0, name, "KTAP cases out of order");
        self.t.check(name, r);
        self.done += 1;
    }
    /// Fails every case not reported yet.
    fn fail_rest(&mut self, why: &str) {
        for (name, _) in &CASES[self.done..] {
            self.t.fail(name, why);
        }
        self.done = CASES.len();
    }
}

/// The violation kinds case `name` fails on.
fn kinds_of(name: &str) -> &'static [&'static str] {
    CASES
        .iter()
        .find(|(n, _)| *n == name)
        .map_or(&[], |(_, k)| k)
}

fn main() {
    let o = Opts::parse();
    if let Err(e) = vcpu_cpus(&o).and_then(|c| kvm::set_vcpu_cpus(&c)) {
        eprintln!("error: --vcpu-cpus: {e:#}");
        std::process::exit(2);
    }
    if let Some(role) = &o.role {
        if let Err(e) = run_role(role, &o) {
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
    let pre = preflight();
    let mut r = Report {
        t: Ktap::new(CASES.len()),
        done: 0,
    };
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

fn run(o: &Opts, seed: u64, flavor: Option<Flavor>, r: &mut Report) -> Result<()> {
    // The series' flavours have lockdep (and KVM's debugfs); the debug one
    // also KASAN and kmemleak: a check whose facility is missing there
    // fails rather than passing having checked nothing.
    let series_flavor = matches!(flavor, Some(Flavor::Default | Flavor::Debug));
    if series_flavor {
        features::check_kernel_matches_flavor(flavor, &features::kernel_release()?)?;
    }
    let kmemleak = features::exists(KMEMLEAK);
    if flavor == Some(Flavor::Debug) {
        if !sys::dmesg()?.contains(KASAN_BANNER) {
            bail!("the debug kernel did not log {KASAN_BANNER:?} at boot: no KASAN");
        }
        if !kmemleak {
            bail!("no {KMEMLEAK} on the debug kernel (DEBUG_KMEMLEAK, configs/debug.config)");
        }
    }
    let (guard, ckpt_cg) = aging::enter_sandbox(CG_CKPT)?;
    swap_on()?;
    // A report before the run (boot: DEBUG_VM_PGTABLE, lockdep) would also
    // switch lockdep off and make "no report" meaningless: fail at once.
    let boot = sys::kernel_bug_lines(&sys::dmesg()?)
        .into_iter()
        .map(str::to_owned)
        .collect::<Vec<_>>();
    if !boot.is_empty() {
        bail!("the kernel log has reports before the run: {boot:#?}");
    }
    let lockdep = lockdep_on(series_flavor)?;
    if lockdep == Some(false) {
        bail!("lockdep is off before the run (debug_locks 0)");
    }
    let watch = sys::DmesgWatch::start()?;
    if kmemleak {
        // Forget what boot left behind; report only what this run leaks.
        sys::write(KMEMLEAK, "clear")?;
    }
    let vm_dirs_before = kvm_vm_dirs()?;
    let guest_cg = Memcg::create(CG_GUEST)?;
    // memory.high, not memory.max: reclaim (to swap) without the OOM killer,
    // whose report would be a kernel log entry of its own.
    guest_cg.write("memory.high", &(o.guest_mem * 3 / 4).to_string())?;
    let mirror_cg = Memcg::create(CG_MIRROR)?;
    mirror_cg.write("memory.high", &(USER_MEM * 2).to_string())?;
    let churn_cg = Memcg::create(CG_CHURN)?;

    let sh = Shared {
        stop: AtomicBool::new(false),
        gate: RwLock::new(()),
        module: Mutex::new(()),
        tally: Mutex::new(Tally::default()),
        guest_live: Live::default(),
        mirror_live: Live::default(),
        ckpt_live: Live::default(),
    };
    let mut rng = Rng::new(seed);
    let mut ck = Ckpt {
        vm: TouchVm::new(CKPT_VM, 1, Backing::Anon4k)?,
        mem: HostMem::new(CKPT_MIRROR, Backing::Anon4k)?,
    };
    ckpt_map(&sh, &mut ck)?;
    // The checkpoint VM must show in KVM's debugfs, or "no VM directory
    // left" at the end could not fail.
    let me = format!("{}-", std::process::id());
    let dirs = kvm_vm_dirs()?;
    if !dirs
        .iter()
        .any(|d| d.starts_with(&me) && !vm_dirs_before.contains(d))
    {
        bail!("the checkpoint VM has no directory {me}<fd> in {KVM_DEBUGFS} ({dirs:?})");
    }
    let start = Instant::now();
    let mut guest = Kid::new(spawn_child("guest", &guest_cg, rng.next(), o)?);
    let churn = Kid::new(spawn_child("churn", &churn_cg, rng.next(), o)?);
    if wait_ready(&sh, "guest", &mut guest, READY_WAIT) {
        sh.guest_live.set(true);
    }
    // Let the children create their VMs before the memcgs are aged.
    std::thread::sleep(Duration::from_millis(500));
    let cgs: Vec<(String, u32, Option<&Live>)> = [
        (&guest_cg, Some(&sh.guest_live)),
        (&mirror_cg, Some(&sh.mirror_live)),
        (&churn_cg, None),
        (&ckpt_cg, Some(&sh.ckpt_live)),
    ]
    .iter()
    .map(|(c, l)| Ok((c.path(), lru_id(c)?, *l)))
    .collect::<Result<_>>()?;

    let guest_eof = Arc::clone(&guest.eof);
    std::thread::scope(|s| {
        let sh = &sh;
        let cgs = &cgs;
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
        for (path, id, live) in cgs {
            s.spawn(move || aging_loop(sh, path, *id, *live));
        }
        let mut r1 = Rng::new(rng.next());
        s.spawn(move || toggle_loop(sh, &mut r1));
        let mut r2 = Rng::new(rng.next());
        let (gc, cc) = (&guest_cg, &churn_cg);
        s.spawn(move || reclaim_loop(sh, &[gc, cc], &mut r2));
        let mut r3 = Rng::new(rng.next());
        let mc = &mirror_cg;
        s.spawn(move || mirror_loop(sh, mc, o, &mut r3));

        // Checkpoints in this thread, until the time is up: the first after
        // --checkpoint-every (at most half the duration), each next one
        // --checkpoint-every after the end of the previous one.
        let mut n = 0u64;
        let end = start + o.duration;
        let mut next = Instant::now() + o.checkpoint_every.min(o.duration / 2);
        while Instant::now() < end {
            std::thread::sleep(Duration::from_millis(100));
            if Instant::now() < next {
                continue;
            }
            let mode = Mode::of(n, &mut rng);
            let w = sh.gate.write().unwrap();
            if let Err(e) = checkpoint(sh, &mut ck, &ckpt_cg, mode, &mut rng) {
                sh.violation("checkpoint", format!("{}: {e:#}", mode.name()));
            }
            drop(w);
            n += 1;
            next = Instant::now() + o.checkpoint_every;
        }
        // A last checkpoint at the end if none of some mode ran yet.
        while n < 4 {
            let mode = Mode::of(n, &mut rng);
            let w = sh.gate.write().unwrap();
            if let Err(e) = checkpoint(sh, &mut ck, &ckpt_cg, mode, &mut rng) {
                sh.violation("checkpoint", format!("{}: {e:#}", mode.name()));
            }
            drop(w);
            n += 1;
        }
        sh.stop.store(true, Ordering::Relaxed);
    });
    collect(&sh, "guest", guest, Duration::from_secs(120), false);
    collect(&sh, "churn", churn, Duration::from_secs(120), false);
    let elapsed = start.elapsed();

    // Teardown checks.
    drop(ck);
    {
        let _m = sh.module.lock().unwrap();
        if module::is_loaded(lru_mirror::MODULE) {
            match unload_mirror() {
                Ok(()) => sh.count("lru_mirror unloads", 1),
                Err(e) => sh.violation("teardown", format!("{e:#}")),
            }
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    match kvm_vm_dirs() {
        Ok(dirs) => {
            let left: Vec<String> = dirs
                .into_iter()
                .filter(|d| !vm_dirs_before.contains(d))
                .collect();
            if !left.is_empty() {
                sh.violation("teardown", format!("VMs left in KVM's debugfs: {left:?}"));
            }
        }
        Err(e) => sh.violation("teardown", format!("{e:#}")),
    }
    // Problems of the kernel-report checks themselves.
    let mut report_errors = Vec::new();
    let mut leaks = String::new();
    if kmemleak {
        // Two scans: kmemleak reports an object only once it was seen
        // unreferenced twice (and is older than 5 s).
        let scan = || -> Result<String> {
            for _ in 0..2 {
                std::thread::sleep(Duration::from_secs(6));
                sys::write(KMEMLEAK, "scan")?;
            }
            sys::read(KMEMLEAK)
        };
        match scan() {
            Ok(text) => {
                leaks = text;
                sh.count("kmemleak scans", 2);
            }
            Err(e) => report_errors.push(format!("kmemleak: {e:#}")),
        }
    }
    drop(guest_cg);
    drop(mirror_cg);
    drop(churn_cg);
    drop(ckpt_cg);
    drop(guard);
    let _ = Command::new("swapoff").arg(SWAP_DEV).status();

    let tally = sh.tally.into_inner().unwrap();
    let c = |k: &str| tally.counts.get(k).copied().unwrap_or(0);
    let t = &mut r.t;
    t.diag(&format!("ran {:.0} s; counts:", elapsed.as_secs_f64()));
    for (k, v) in &tally.counts {
        t.diag(&format!("  {k}: {v}"));
    }
    if lockdep.is_none() {
        t.diag("no lockdep in this kernel: its reports are not checked");
    }
    if !kmemleak {
        t.diag("no kmemleak in this kernel: leaks are not checked");
    }
    let vio = |case: &str| -> Vec<String> {
        let kinds = kinds_of(case);
        tally
            .violations
            .iter()
            .filter(|(k, _)| kinds.contains(&k.trim()))
            .map(|(k, m)| format!("{k}: {m}"))
            .collect()
    };
    // A violation of a kind no case checks still fails the run.
    let unknown: Vec<String> = tally
        .violations
        .iter()
        .filter(|(k, _)| !CASES.iter().any(|(_, ks)| ks.contains(&k.trim())))
        .map(|(k, m)| format!("violation of unknown kind {k}: {m}"))
        .collect();
    let verdict = |v: Vec<String>, extra: Option<String>| -> Result<()> {
        let mut all = v;
        all.extend(extra);
        if all.is_empty() {
            Ok(())
        } else {
            bail!(
                "{} violation(s): {}",
                all.len(),
                all.iter().take(10).cloned().collect::<Vec<_>>().join("; ")
            )
        }
    };

    // Every kind of chaos must actually have happened.
    let needed = [
        "aging passes",
        "0x8 toggles",
        "guest pattern verifications",
        "VMs created and destroyed",
        "churn memslot cycles",
        "mirror users",
        "lru_mirror unloads",
        "mirror knob changes",
        "mirror pages answered failed under chaos",
        "lru_mirror refcount back to 0 after a batch",
        "processes killed with a live VM",
        "processes exited with a live VM",
        "VMs on THPs",
        "guest host MADV_DONTNEED (vCPUs running)",
        "memory.reclaim writes: all reclaimed",
        "guest pattern pages read back from swap",
        "walk-stat checks",
    ];
    let missing: Vec<&str> = needed.iter().copied().filter(|k| c(k) == 0).collect();
    let passes = c("aging passes");
    // The goal counts passes that aged memory some secondary MMU mapped:
    // the guest's memcg once its VM ran, the mirror users' while a batch
    // was mirrored, the checkpoints' memcg while the checkpoint VM mapped
    // it (between checkpoints) and the checkpoints' own passes.
    let mapped = |n: &str| c(&format!("aging passes on /{n}, secondary MMU mapped"));
    let (pg, pm, pk, pc) = (
        mapped(CG_GUEST),
        mapped(CG_MIRROR),
        mapped(CG_CKPT),
        c("aging passes in checkpoints"),
    );
    let secondary = pg + pm + pk + pc;
    // Every memcg must have been aged.
    let unaged: Vec<&str> = [CG_GUEST, CG_MIRROR, CG_CHURN, CG_CKPT]
        .into_iter()
        .filter(|n| c(&format!("aging passes on /{n}")) == 0)
        .collect();
    let few = if !unaged.is_empty() {
        Some(format!("memcgs never aged: {unaged:?}"))
    } else {
        (secondary < o.min_passes).then(|| {
            format!(
                "{secondary} aging passes while a secondary MMU mapped the memcg < --min-passes {}",
                o.min_passes
            )
        })
    };
    let mut chaos = vio("chaos_ran_every_operation");
    chaos.extend(unknown);
    r.check(
        "chaos_ran_every_operation",
        verdict(
            chaos,
            (!missing.is_empty())
                .then(|| format!("never happened: {missing:?}"))
                .or(few),
        ),
    );
    let t = &mut r.t;
    t.diag(&format!(
        "{passes} aging passes ({:.1}/s), {} checkpoints, {} guest pages verified after swap-in",
        passes as f64 / elapsed.as_secs_f64(),
        tally
            .counts
            .iter()
            .filter(|(k, _)| k.starts_with("checkpoints:"))
            .map(|(_, v)| v)
            .sum::<u64>(),
        c("guest pattern pages read back from swap")
    ));
    t.diag(&format!(
        "{secondary} aging passes while a secondary MMU mapped the memcg (--min-passes {}): \
         guest {pg}, mirror users {pm}, checkpoint VM {pk}, checkpoints {pc}",
        o.min_passes
    ));
    let ck_on = c("checkpoints: 0x8 on") + c("checkpoints: 0x8 off");
    r.check(
        "secondary_only_pages_promoted_at_checkpoints",
        verdict(
            vio("secondary_only_pages_promoted_at_checkpoints"),
            (ck_on == 0).then(|| "no checkpoint ran".into()),
        ),
    );
    let ck_fail = c("checkpoints: 0x8 on, mirror fails every page")
        + c("checkpoints: 0x8 on, mirror fails after k pages");
    r.check(
        "fallback_loses_no_accessed_state",
        verdict(
            vio("fallback_loses_no_accessed_state"),
            (ck_fail == 0).then(|| "no failure checkpoint ran".into()),
        ),
    );
    r.check(
        "guest_data_intact_across_swap",
        verdict(
            vio("guest_data_intact_across_swap"),
            (c("guest pattern pages read back from swap") == 0)
                .then(|| "no pattern page was swapped out: the check saw no swap".into()),
        ),
    );
    r.check(
        "counters_consistent",
        verdict(vio("counters_consistent"), None),
    );
    let mut bugs = match watch.new_bug_lines() {
        Ok(b) => b,
        Err(e) => vec![format!("reading the kernel log: {e:#}")],
    };
    match lockdep_on(series_flavor) {
        Ok(Some(false)) => {
            bugs.push("lockdep switched itself off (debug_locks 0) during the run".into())
        }
        Ok(_) => {}
        Err(e) => bugs.push(format!("{e:#}")),
    }
    bugs.extend(report_errors);
    let leak_lines = leaks
        .lines()
        .filter(|l| l.contains("unreferenced object"))
        .map(str::to_owned);
    bugs.extend(leak_lines);
    r.check("no_kernel_reports", verdict(bugs, None));
    r.check("teardown_complete", verdict(vio("teardown_complete"), None));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vcpu_cpus_default_is_the_last_cpu_of_two_or_more() {
        assert_eq!(default_vcpu_cpus(&[]), Vec::<usize>::new());
        assert_eq!(default_vcpu_cpus(&[0]), Vec::<usize>::new());
        assert_eq!(default_vcpu_cpus(&[3]), Vec::<usize>::new());
        assert_eq!(default_vcpu_cpus(&[0, 1]), vec![1]);
        assert_eq!(default_vcpu_cpus(&[0, 2, 5]), vec![5]);
    }

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
    fn mirror_ranges_leave_pages_untouched() {
        for seed in 1..2000 {
            let mut rng = Rng::new(seed);
            let (ranges, touched) = mirror_ranges(1024, &mut rng);
            assert!((1..=6).contains(&ranges.len()));
            let mut t = vec![false; 1024];
            for &(f, l) in &ranges {
                assert!(l >= 1 && f + l <= 1024);
                t[f..f + l].fill(true);
            }
            assert_eq!(t, touched);
            assert!(touched.iter().filter(|&&x| !x).count() >= MIN_UNTOUCHED);
        }
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

    /// Every violation kind this file reports is one some KTAP case checks
    /// (the run also fails on an unknown one, see `run`).
    #[test]
    fn every_violation_kind_has_a_case() {
        let src = include_str!("lru_gen_stress.rs");
        let known = |k: &str| CASES.iter().any(|(_, ks)| ks.contains(&k));
        let mut seen = 0;
        for (pat, end) in [("violation(\"", '"'), ("\"VIOLATION ", ':')] {
            for (i, _) in src.match_indices(pat) {
                let rest = &src[i + pat.len()..];
                let kind = &rest[..rest.find(end).unwrap()];
                if kind.chars().all(|c| c.is_ascii_lowercase()) {
                    assert!(known(kind), "violation kind {kind:?} has no KTAP case");
                    seen += 1;
                }
            }
        }
        assert!(seen > 20, "found only {seen} violation sites");
        // The checkpoint's kinds are chosen by mode.
        assert!(known("checkpoint") && known("fallback"));
    }

    #[test]
    fn strided_pages() {
        assert_eq!(strided(1, 3, 10), vec![1, 4, 7]);
        assert_eq!(strided(0, 2, 5), vec![0, 2, 4]);
    }
}
