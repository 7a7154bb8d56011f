// SPDX-License-Identifier: GPL-2.0
//! Running a vCPU until its program ends, with a time limit and CPU pinning.

use super::DONE_PORT;
use anyhow::{bail, Context, Result};
use kvm_ioctls::{VcpuExit, VcpuFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The guest's registers, for an error message: where its program was
/// (`rip`), how far its loop got (`rcx` pages left, `rsi` the page
/// address, `rdx` the pattern value) and what it read (`rax`).
fn reg_dump(vcpu: &VcpuFd) -> String {
    match vcpu.get_regs() {
        Ok(r) => format!(
            "rip {:#x} rax {:#x} rcx {:#x} rdx {:#x} rsi {:#x} rdi {:#x} rbx {:#x} rflags {:#x}",
            r.rip, r.rax, r.rcx, r.rdx, r.rsi, r.rdi, r.rbx, r.rflags
        ),
        Err(e) => format!("registers unreadable: {e}"),
    }
}

/// Longest one guest program may run, in milliseconds (0: no limit); see
/// [`set_run_limit`].
static RUN_LIMIT_MS: AtomicU64 = AtomicU64::new(0);

/// Makes every later guest run of this process fail, with the guest's
/// registers, once it has run for `limit` without finishing
/// (`Duration::ZERO`: no limit, the default): a vCPU that never leaves its
/// program (a guest livelock) is reported with where it is instead of
/// hanging its process.  It cannot catch a vCPU thread stuck in the kernel
/// itself, outside `KVM_RUN`'s signal checks.
pub fn set_run_limit(limit: Duration) {
    let ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
    RUN_LIMIT_MS.store(ms, Ordering::Relaxed);
}

/// CPU mask the threads that run guest programs are pinned to while they
/// do (0: none); see [`set_vcpu_cpus`].
static VCPU_CPUS: AtomicU64 = AtomicU64::new(0);

/// Runs every later guest program of this process only on `cpus` (CPU
/// numbers below 64 that this process may use): the thread running it is
/// pinned for the run and gets its own CPU mask back afterwards.  An empty
/// list lifts the pinning.
pub fn set_vcpu_cpus(cpus: &[usize]) -> Result<()> {
    let mut mask = 0u64;
    for &c in cpus {
        check_cpu(c)?;
        mask |= 1 << c;
    }
    VCPU_CPUS.store(mask, Ordering::Relaxed);
    Ok(())
}

/// The CPUs [`set_vcpu_cpus`] set, to pass on to child processes.
pub fn vcpu_cpus() -> Vec<usize> {
    let mask = VCPU_CPUS.load(Ordering::Relaxed);
    (0..64).filter(|c| mask & (1 << c) != 0).collect()
}

fn get_affinity() -> Result<libc::cpu_set_t> {
    // SAFETY: zero is a valid cpu_set_t.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid cpu_set_t of the size passed; pid 0 is the
    // calling thread.
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) } != 0 {
        return Err(std::io::Error::last_os_error()).context("sched_getaffinity");
    }
    Ok(set)
}

fn set_affinity(set: &libc::cpu_set_t) -> Result<()> {
    // SAFETY: `set` is a valid cpu_set_t of the size passed; pid 0 is the
    // calling thread.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(set), set) } != 0 {
        return Err(std::io::Error::last_os_error()).context("sched_setaffinity");
    }
    Ok(())
}

/// The CPUs below 64 the calling thread may run on, in order.
pub fn allowed_cpus() -> Result<Vec<usize>> {
    let set = get_affinity()?;
    // SAFETY: c < 64 < CPU_SETSIZE, inside `set`.
    Ok((0..64)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect())
}

/// Fails unless `c` is a CPU below 64 that the calling thread may run on
/// (online and in its cpuset), i.e. one [`set_vcpu_cpus`] can take.
pub fn check_cpu(c: usize) -> Result<()> {
    if c >= 64 {
        bail!("CPU {c} is above 63 (the most this test can pin to)");
    }
    if !allowed_cpus()?.contains(&c) {
        bail!("CPU {c} is not one this process may run on (offline or outside its cpuset)");
    }
    Ok(())
}

/// While alive, pins the calling thread to the [`set_vcpu_cpus`] mask;
/// restores the thread's previous mask on drop.
struct Pin {
    old: libc::cpu_set_t,
}

impl Pin {
    fn new() -> Result<Option<Self>> {
        let cpus = vcpu_cpus();
        if cpus.is_empty() {
            return Ok(None);
        }
        let old = get_affinity()?;
        // SAFETY: zero is a valid cpu_set_t.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        for c in cpus {
            // SAFETY: c < 64 < CPU_SETSIZE, inside `set`.
            unsafe { libc::CPU_SET(c, &mut set) };
        }
        set_affinity(&set)?;
        Ok(Some(Pin { old }))
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        // A thread left pinned only runs slower, but say so (once).
        if let Err(e) = set_affinity(&self.old) {
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| eprintln!("kvm: restoring a vCPU thread's CPU mask: {e:#}"));
        }
    }
}

extern "C" fn watchdog_tick(_: libc::c_int) {}

/// Installs [`watchdog_tick`] for `SIGUSR2`, once per process.  With
/// `SA_RESTART`, other system calls interrupted by a tick are restarted;
/// `KVM_RUN` is not (it returns `EINTR`), which is what the watchdog needs.
fn install_tick_handler() -> Result<()> {
    static INSTALL: std::sync::OnceLock<std::result::Result<(), String>> =
        std::sync::OnceLock::new();
    INSTALL
        .get_or_init(|| {
            // SAFETY: the handler does nothing (async-signal-safe); the
            // sigaction struct is zero-initialised plain data, then filled.
            let r = unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = watchdog_tick as extern "C" fn(libc::c_int) as libc::sighandler_t;
                sa.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut sa.sa_mask);
                libc::sigaction(libc::SIGUSR2, &sa, std::ptr::null_mut())
            };
            if r != 0 {
                return Err(format!(
                    "sigaction(SIGUSR2): {}",
                    std::io::Error::last_os_error()
                ));
            }
            Ok(())
        })
        .clone()
        .map_err(|e| anyhow::anyhow!(e))
}

/// A periodic `SIGUSR2` to the calling thread, interrupting `KVM_RUN`
/// (`EINTR`) so that [`run_until`] can check its deadline; deleted on drop.
///
/// Invariant: `timer` is a live POSIX timer created by [`Watchdog::arm`].
struct Watchdog {
    timer: libc::timer_t,
}

impl Watchdog {
    /// Arms a watchdog ticking every `tick` for the calling thread.
    fn arm(tick: Duration) -> Result<Self> {
        install_tick_handler()?;
        // SAFETY: zero is a valid bit pattern for sigevent; the fields set
        // ask for SIGUSR2 to this thread (SIGEV_THREAD_ID).
        let mut sev: libc::sigevent = unsafe { std::mem::zeroed() };
        sev.sigev_notify = libc::SIGEV_THREAD_ID;
        sev.sigev_signo = libc::SIGUSR2;
        // SAFETY: gettid() has no preconditions.
        sev.sigev_notify_thread_id = unsafe { libc::gettid() };
        let mut timer: libc::timer_t = std::ptr::null_mut();
        // SAFETY: `sev` and `timer` are valid for the call.
        if unsafe { libc::timer_create(libc::CLOCK_MONOTONIC, &mut sev, &mut timer) } != 0 {
            return Err(std::io::Error::last_os_error()).context("timer_create");
        }
        let w = Watchdog { timer };
        let ts = libc::timespec {
            tv_sec: tick.as_secs() as libc::time_t,
            tv_nsec: tick.subsec_nanos() as libc::c_long,
        };
        let spec = libc::itimerspec {
            it_interval: ts,
            it_value: ts,
        };
        // SAFETY: `w.timer` is live (invariant), `spec` valid.
        if unsafe { libc::timer_settime(w.timer, 0, &spec, std::ptr::null_mut()) } != 0 {
            return Err(std::io::Error::last_os_error()).context("timer_settime");
        }
        Ok(w)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        // SAFETY: `self.timer` is live (invariant) and deleted once.  A
        // tick already queued stays pending after timer_delete(); it is
        // harmless: the handler stays installed (SA_RESTART, so other
        // calls restart) and run_until's loop retries an EINTR'd KVM_RUN.
        unsafe { libc::timer_delete(self.timer) };
    }
}

/// Runs the vCPU until the guest writes to [`DONE_PORT`].
pub(super) fn run_until_done(vcpu: &mut VcpuFd) -> Result<()> {
    run_until(vcpu, &[]).map(drop)
}

/// Runs the vCPU until the guest writes to [`DONE_PORT`] or one of `also`;
/// returns the port.
pub(super) fn run_until(vcpu: &mut VcpuFd, also: &[u16]) -> Result<u16> {
    let _pin = Pin::new()?;
    let limit = Duration::from_millis(RUN_LIMIT_MS.load(Ordering::Relaxed));
    let _watchdog = if limit.is_zero() {
        None
    } else {
        Some(Watchdog::arm(
            (limit / 10).clamp(Duration::from_millis(100), Duration::from_secs(5)),
        )?)
    };
    let start = Instant::now();
    loop {
        if !limit.is_zero() && start.elapsed() > limit {
            bail!(
                "the guest program did not finish in {limit:?} ({})",
                reg_dump(vcpu)
            );
        }
        match vcpu.run() {
            Ok(VcpuExit::IoOut(DONE_PORT, _)) => return Ok(DONE_PORT),
            Ok(VcpuExit::IoOut(port, _)) if also.contains(&port) => return Ok(port),
            Ok(VcpuExit::IoOut(port, _)) => {
                bail!(
                    "guest wrote to unexpected port {port:#x} ({})",
                    reg_dump(vcpu)
                )
            }
            Ok(VcpuExit::Intr) => continue,
            Ok(other) => {
                let what = format!("{other:?}");
                bail!("unexpected vCPU exit {what} ({})", reg_dump(vcpu))
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
            Err(e) => return Err(e).context("KVM_RUN"),
        }
    }
}
