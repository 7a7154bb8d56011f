// SPDX-License-Identifier: GPL-2.0
//! Control: the notifier of the compile-fail cases, owning its data, failing only through
//! `range.would_block()`, answering fast-only batches within the call (with `clear_young()`,
//! answering while iterating over `asked()`) and keeping only owned data in `self`, compiles,
//! and so does registering it.
use kernel::mm::mmu_notifier::{
    InvalidateRange, MmuNotifierOps, Registration, WouldBlock, YoungBatch,
};
use kernel::new_spinlock;
use kernel::prelude::*;
use kernel::sync::SpinLock;

module! {
    type: M,
    name: "cf_ok",
    license: "GPL",
}

#[pin_data]
struct Owning {
    id: u64,
    /// Start of the last batch asked: owned data can be kept.
    #[pin]
    last: SpinLock<Option<usize>>,
}

#[vtable]
impl MmuNotifierOps for Owning {
    const OWNER: &'static ThisModule = &THIS_MODULE;

    fn invalidate_range_start<'r>(
        &self,
        range: &InvalidateRange<'r>,
    ) -> Result<(), WouldBlock<'r>> {
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
            if self.id == 0 {
                batch.set_young(i);
            } else {
                batch.set_failed(i);
            }
        }
        *self.last.lock() = Some(batch.start());
    }
}

struct M;

impl kernel::Module for M {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        // Registering instantiates the operations table (and its const checks). (Only built,
        // never loaded: from a module's init, registering is refused with `ENODEV`.)
        let data = try_pin_init!(Owning {
            id: 0,
            last <- new_spinlock!(None),
        }? Error);
        let _ = KBox::pin_init(Registration::new_for_current(data), GFP_KERNEL);
        Ok(M)
    }
}
