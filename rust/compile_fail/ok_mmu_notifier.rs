// SPDX-License-Identifier: GPL-2.0
//! Control: the notifier of the compile-fail cases, owning its data, failing only through
//! `range.would_block()` and answering fast-only batches within the call (with `clear_young()`),
//! compiles, and so does registering it.
use kernel::mm::mmu_notifier::{
    InvalidateRange, MmuNotifierOps, Registration, WouldBlock, YoungBatch,
};
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

    fn clear_young(&self, _start: usize, _end: usize) -> bool {
        false
    }

    fn test_clear_young_fast_only(&self, batch: &mut YoungBatch<'_>) {
        for i in batch.asked() {
            if self.0 == 0 {
                batch.set_young(i);
            } else {
                batch.set_failed(i);
            }
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
