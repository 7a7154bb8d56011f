// SPDX-License-Identifier: GPL-2.0

//! mmu_notifier_init_leak: a module whose init leaks an MMU notifier registration and fails.
//!
//! Its init registers a notifier on the address space of the process that loads it, leaks the
//! registration with `mem::forget()` (safe code) and returns an error. A module whose init fails
//! is freed whatever its references, so such a registration would leave the process's notifier
//! list pointing into freed module memory, and the process's exit would call into it. The
//! abstraction refuses to register before the module is live, which `lru_mirror_test` checks:
//! the init fails with `ECANCELED` if the registration was refused (`ENODEV`), with
//! `ENOTRECOVERABLE` if it was leaked, and with the registration's error otherwise; and the
//! loading process must exit cleanly.

use kernel::{
    bindings,
    mm::mmu_notifier::{MmuNotifierOps, Registration},
    prelude::*,
};

module! {
    type: InitLeak,
    name: "mmu_notifier_init_leak",
    author: "mglru-secondary developers",
    description: "Leaks an MMU notifier registration from a failing init (a test)",
    license: "GPL",
}

/// A notifier whose operations live in this module's memory.
struct Leaked;

#[vtable]
impl MmuNotifierOps for Leaked {
    const OWNER: &'static ThisModule = &THIS_MODULE;

    fn release(&self) {
        pr_info!("release() of the registration leaked by the init\n");
    }
}

struct InitLeak;

impl kernel::Module for InitLeak {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        match KBox::pin_init(Registration::new_for_current(Leaked), GFP_KERNEL) {
            Ok(reg) => {
                core::mem::forget(reg);
                pr_err!("registered a notifier from init and leaked it\n");
                Err(Error::from_errno(-(bindings::ENOTRECOVERABLE as i32)))
            }
            Err(e) if e == ENODEV => {
                pr_info!("registration refused while the module is coming up\n");
                Err(Error::from_errno(-(bindings::ECANCELED as i32)))
            }
            Err(e) => Err(e),
        }
    }
}
