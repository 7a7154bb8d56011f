// SPDX-License-Identifier: GPL-2.0
//! Control: the notifier of the compile-fail cases, owning its data and failing only through
//! `range.would_block()`, compiles, and so does registering it.
use kernel::mm::mmu_notifier::{InvalidateRange, MmuNotifierOps, Registration, WouldBlock};
use kernel::prelude::*;

module! {
    type: M,
    name: "cf_ok",
    license: "GPL",
}

struct Owning(u64);

#[vtable]
impl MmuNotifierOps for Owning {
    const OWNER: &'static ThisModule = &THIS_MODULE;

    fn invalidate_range_start<'r>(
        &self,
        range: &InvalidateRange<'r>,
    ) -> Result<(), WouldBlock<'r>> {
        let _ = self.0;
        match range.would_block() {
            Some(token) if range.start() == 0 => Err(token),
            _ => Ok(()),
        }
    }
}

struct M;

impl kernel::Module for M {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        // Registering instantiates the operations table (and its const checks).
        let _ = KBox::pin_init(Registration::new_for_current(Owning(0)), GFP_KERNEL);
        Ok(M)
    }
}
