// SPDX-License-Identifier: GPL-2.0

//! mmu_notifier_init_leak: a module whose init hands out what could outlive it, then fails.
//!
//! A module whose init fails is freed whatever its references. Its init
//!
//! - registers an MMU notifier on the address space of the process that loads it and leaks the
//!   registration with `mem::forget()` (safe code): the process's exit would call into freed
//!   module memory;
//! - registers `/dev/mmu_notifier_init_leak` for [`OPEN_WINDOW_MS`] while the loading process
//!   tries to open it, then drops it: a file opened meanwhile would outlive the module, and
//!   closing it would run `release` in freed memory.
//!
//! The abstractions refuse both until the module is live (`ENODEV`), which `lru_mirror_test`
//! checks: the init fails with `ECANCELED` if both were refused, with `ENOTRECOVERABLE` if the
//! registration was leaked, with `EOWNERDEAD` if a file was opened, and with the registration's
//! error otherwise; and the loading process must exit cleanly. (Upstream's misc device
//! abstraction, on 7.x, does not refuse opens while the init runs: there the device's `open`
//! refuses them itself, as `lru_mirror`'s does, so the check covers the MMU notifier abstraction
//! and the module's own `open`.)
//!
//! Refusing opens narrows the window but does not close it: a refused open still runs code that
//! reads this module's memory after `misc_deregister()` has stopped waiting for it (see
//! [`wait_for_opens`]). The real rule for a module with a misc device is to have no fallible step
//! after registering it; this module breaks it on purpose, so before its init returns the error
//! it waits until no open holds a reference on the module any more.

use core::sync::atomic::{AtomicBool, Ordering};
use kernel::{
    bindings,
    miscdevice::{MiscDevice, MiscDeviceRegistration},
    mm::mmu_notifier::{MmuNotifierOps, Registration},
    new_condvar, new_mutex,
    prelude::*,
    sync::{CondVar, CondVarTimeoutResult, Mutex},
    time::msecs_to_jiffies,
};

// 7.x's `module!` takes `authors`, 6.12's `author`.
#[cfg(not(mglru_upstream_api))]
module! {
    type: InitLeak,
    name: "mmu_notifier_init_leak",
    author: "mglru-secondary developers",
    description: "Leaks an MMU notifier registration and opens a file from a failing init (a test)",
    license: "GPL",
}

#[cfg(mglru_upstream_api)]
module! {
    type: InitLeak,
    name: "mmu_notifier_init_leak",
    authors: ["mglru-secondary developers"],
    description: "Leaks an MMU notifier registration and opens a file from a failing init (a test)",
    license: "GPL",
}

/// How long the init keeps its device registered for the loading process to try opening it.
const OPEN_WINDOW_MS: u32 = 1000;

/// How long the failing init waits, at most, for opens of its device to let go of the module.
const DRAIN_MS: u32 = 1000;

/// How often it looks.
const DRAIN_STEP_MS: u32 = 10;

/// A notifier whose operations live in this module's memory.
struct Leaked;

#[vtable]
impl MmuNotifierOps for Leaked {
    // With the upstream API, `#[vtable]` names this module (`OwnerModule`).
    #[cfg(not(mglru_upstream_api))]
    const OWNER: &'static ThisModule = &THIS_MODULE;

    fn release(&self) {
        pr_info!("release() of the registration leaked by the init\n");
    }
}

/// Set when a file of the device is opened: during the init, that must not happen.
static OPENED: AtomicBool = AtomicBool::new(false);

/// A misc device whose file operations live in this module's memory.
struct Probe;

impl Probe {
    fn opened() -> Result {
        OPENED.store(true, Ordering::Relaxed);
        pr_err!("a file was opened while the init runs\n");
        Ok(())
    }
}

/// The series' own misc device abstraction (6.12) refuses opens until the module is live.
#[cfg(not(mglru_upstream_api))]
#[vtable]
impl MiscDevice for Probe {
    type Ptr = ();
    const OWNER: &'static ThisModule = &THIS_MODULE;

    fn open() -> Result {
        Self::opened()
    }
}

/// Upstream's does not: `open` refuses them itself (a file opened by a failing init would be
/// released in freed memory). That does not make the failing init safe by itself: see
/// [`wait_for_opens`].
#[cfg(mglru_upstream_api)]
#[vtable]
impl MiscDevice for Probe {
    type Ptr = ();

    fn open(_file: &kernel::fs::File, _misc: &MiscDeviceRegistration<Self>) -> Result {
        if !kernel::module::this_module::<InitLeak>().init_done() {
            return Err(ENODEV);
        }
        Self::opened()
    }
}

/// Something to sleep on: nobody wakes it, the timeout does.
#[pin_data]
struct Sleeper {
    #[pin]
    lock: Mutex<()>,
    #[pin]
    cv: CondVar,
}

/// Sleeps for about `ms` milliseconds; a signal ends it early.
fn sleep_ms(ms: u32) -> Result {
    let s = KBox::pin_init(
        pin_init!(Sleeper {
            lock <- new_mutex!(()),
            cv <- new_condvar!(),
        }),
        GFP_KERNEL,
    )?;
    let mut guard = s.lock.lock();
    let mut left = msecs_to_jiffies(ms);
    // Spurious wake-ups sleep again for what is left.
    while let CondVarTimeoutResult::Woken { jiffies } =
        s.cv.wait_interruptible_timeout(&mut guard, left)
    {
        left = jiffies;
    }
    Ok(())
}

/// Sleeps about `ms` milliseconds; signals do not end it.
fn msleep(ms: u32) {
    // SAFETY: `msleep()` has no requirement but a context that may sleep: the init is one.
    unsafe { bindings::msleep(ms) }
}

/// The module's reference count, `module_refcount()`. The kernel crate has no safe way to read it.
#[cfg(CONFIG_MODULE_UNLOAD)]
fn refcount(module: &ThisModule) -> i32 {
    let m = module.as_ptr();
    if m.is_null() {
        // Built in: no count (this module never is).
        return 0;
    }
    // SAFETY: `m` is not NULL, so by the requirement of `ThisModule::from_ptr` it is the
    // `THIS_MODULE` of the module whose code uses `module` (here this module's, which its init was
    // given): that code is running, and a module's `struct module` lives as long as its code.
    // `module_refcount()` only reads `refcnt` (`atomic_read()`).
    unsafe { bindings::module_refcount(m) }
}

/// Waits, at most [`DRAIN_MS`], until no open of the device holds a reference on the module: until
/// its count is `baseline`, what it was before the device was registered.
///
/// Dropping the device's registration (`misc_deregister()`, under `misc_mtx`) waits for a running
/// `misc_open()`, and with it this module's `open`, but not for what follows: when an open fails
/// (the module's `open` refuses it while the init runs), `do_dentry_open()` puts the module
/// reference that `misc_open()` took (`fops_get()`) with `fops_put()`, which reads the file
/// operations' `owner` from this module's memory after `misc_mtx` is released. An init that fails
/// has its module freed as soon as it returns, so it must not return before that reference is put.
/// Every open that found the device took its reference before the deregistration, so once the
/// count is back to `baseline` none can read the module any more (what is left of the last
/// `module_put()`, its tracepoint, runs under RCU, which `do_init_module()` waits for with
/// `synchronize_rcu()` before it frees the module). A file that was really opened keeps its
/// reference until it is closed: after [`DRAIN_MS`] the init gives up waiting, with a warning
/// (then the test has failed anyway: such a file outlives the module).
#[cfg(CONFIG_MODULE_UNLOAD)]
fn wait_for_opens(module: &ThisModule, baseline: i32) {
    let mut waited = 0;
    while refcount(module) != baseline {
        if waited >= DRAIN_MS {
            pr_warn!(
                "an open of the device still holds the module after {} ms\n",
                DRAIN_MS
            );
            return;
        }
        msleep(DRAIN_STEP_MS);
        waited += DRAIN_STEP_MS;
    }
}

#[cfg(not(CONFIG_MODULE_UNLOAD))]
fn refcount(_module: &ThisModule) -> i32 {
    0
}

/// Without module unloading there are no module references to wait for (`module_put()` does
/// nothing): nothing to do. The project's kernels have `CONFIG_MODULE_UNLOAD`.
#[cfg(not(CONFIG_MODULE_UNLOAD))]
fn wait_for_opens(_module: &ThisModule, _baseline: i32) {}

fn errno(e: u32) -> Error {
    Error::from_errno(-(e as i32))
}

struct InitLeak;

impl kernel::Module for InitLeak {
    fn init(module: &'static ThisModule) -> Result<Self> {
        // The init's own reference: no open holds one yet.
        let baseline = refcount(module);
        match KBox::pin_init(Registration::new_for_current(Leaked), GFP_KERNEL) {
            Ok(reg) => {
                core::mem::forget(reg);
                pr_err!("registered a notifier from init and leaked it\n");
                return Err(errno(bindings::ENOTRECOVERABLE));
            }
            Err(e) if e == ENODEV => {
                pr_info!("registration refused while the module is coming up\n");
            }
            Err(e) => return Err(e),
        }
        #[cfg(not(mglru_upstream_api))]
        let dev = MiscDeviceRegistration::<Probe>::register(
            kernel::c_str!("mmu_notifier_init_leak"),
            0o600,
        );
        // Upstream's has no mode option: devtmpfs gives the node 0600.
        #[cfg(mglru_upstream_api)]
        let dev =
            MiscDeviceRegistration::<Probe>::register(kernel::miscdevice::MiscDeviceOptions {
                name: c"mmu_notifier_init_leak",
            });
        let dev = KBox::pin_init(dev, GFP_KERNEL)?;
        let slept = sleep_ms(OPEN_WINDOW_MS);
        // Waits for a running open (`misc_mtx`); files that were opened stay open.
        drop(dev);
        // Every path from here fails the init: let refused opens finish with the module first.
        wait_for_opens(module, baseline);
        slept?;
        if OPENED.load(Ordering::Relaxed) {
            return Err(errno(bindings::EOWNERDEAD));
        }
        pr_info!("no file was opened while the module is coming up\n");
        Err(errno(bindings::ECANCELED))
    }
}
